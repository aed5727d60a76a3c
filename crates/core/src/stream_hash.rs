//! SHA-256 of an upload computed while it streams in, so that the upload's
//! audit event (which carries the hash) can be stored before the client is
//! told "done" without reading the file back.
//!
//! Writes arrive in order over FTP; SFTP clients pipeline requests, so a few
//! may arrive ahead of their turn: those are parked (bounded) until the gap
//! fills. Anything else (an overlapping rewrite, a truncation, a resume that
//! keeps bytes this upload never saw) turns streaming off, and the commit
//! reads the file back instead.
//!
//! A stream may also follow only the start of an upload (`until`): the
//! rest is read back from where it stopped, after the client has its
//! answer (`durable_uploads = false`), so the hash is off the reply's path.

use std::collections::BTreeMap;

use std::sync::atomic::Ordering;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

/// Chunks at least this large are hashed on the blocking pool, in parallel
/// with their write to disk; smaller ones inline (cheaper than the hop).
const OFFLOAD_MIN: usize = 64 * 1024;
/// Most bytes one upload parks ahead of the next expected offset.
const PARK_MAX: usize = 4 << 20;
/// Most chunks one upload parks (an SFTP client has at most 64 requests in
/// flight in our dispatcher).
const PARK_CHUNKS: usize = 64;
/// Most bytes all uploads together park; beyond it, an upload that would
/// park stops streaming and is read back at commit instead.
const PARK_TOTAL_MAX: usize = 64 << 20;

/// Bytes parked by every upload of the process.
static PARKED_TOTAL: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

enum Feed {
    Idle(Box<Sha256>),
    Running(JoinHandle<Box<Sha256>>),
    /// Out with a writer that digests its bytes itself ([`StreamHash::lend`]).
    Lent,
    Off,
}

/// The hash of an upload, lent to the one writer that digests the next
/// bytes in order on its own thread; returned with [`StreamHash::give_back`].
pub(crate) struct Lent {
    /// The hasher and how many bytes it digested while lent.
    hasher: std::sync::Arc<std::sync::Mutex<(Box<Sha256>, u64)>>,
    /// The offset the lent hash stands at.
    at: u64,
}

impl Lent {
    /// Digests `data` (the bytes at the offset the hash stands at).
    pub(crate) fn digester(&self) -> dropgate_vfs::Inspect {
        let hasher = self.hasher.clone();
        Box::new(move |data: &[u8]| {
            if let Ok(mut h) = hasher.lock() {
                h.0.update(data);
                h.1 += data.len() as u64;
            }
        })
    }
}

/// What [`StreamHash::finish`] has for the committed content.
pub(crate) enum Hashed {
    /// The hex digest of all of it.
    Done(String),
    /// The hash of its first `.1` bytes, to be continued from the file.
    Upto(Box<Sha256>, u64),
    /// Nothing usable: read all of it back.
    Nothing,
}

struct State {
    /// The offset the hash has reached.
    next: u64,
    /// Bytes from this offset on are not followed (left to a read-back).
    until: u64,
    feed: Feed,
    parked: BTreeMap<u64, Bytes>,
    parked_bytes: usize,
}

/// The running hash of one upload.
pub(crate) struct StreamHash {
    /// Boxed: an upload (which holds this) lives in protocol handle tables.
    state: Box<Mutex<State>>,
}

impl StreamHash {
    /// Hashes from offset 0; `enabled: false` when the upload keeps bytes
    /// it does not write itself (resume, append).
    #[cfg(test)]
    pub(crate) fn new(enabled: bool) -> StreamHash {
        StreamHash::until(enabled, u64::MAX)
    }

    /// Hashes from offset 0 (`enabled: false` when the upload keeps bytes it
    /// does not write itself: resume, append), and stops following the
    /// upload once it has hashed `until` bytes or more.
    pub(crate) fn until(enabled: bool, until: u64) -> StreamHash {
        StreamHash {
            state: Box::new(Mutex::new(State {
                next: 0,
                until,
                feed: if enabled {
                    Feed::Idle(Box::new(Sha256::new()))
                } else {
                    Feed::Off
                },
                parked: BTreeMap::new(),
                parked_bytes: 0,
            })),
        }
    }

    /// Takes the bytes written at `offset`.
    pub(crate) async fn feed(&self, offset: u64, data: &Bytes) {
        if data.is_empty() {
            return;
        }
        let mut st = self.state.lock().await;
        match st.feed {
            Feed::Off => return,
            Feed::Lent => {
                st.stop();
                return;
            }
            _ => {}
        }
        if offset < st.next {
            st.stop();
            return;
        }
        if offset >= st.until {
            // Past what is followed: read back from `next` at the end.
            return;
        }
        if offset > st.next {
            let total = PARKED_TOTAL.fetch_add(data.len(), Ordering::AcqRel) + data.len();
            if st.parked_bytes + data.len() > PARK_MAX
                || st.parked.len() >= PARK_CHUNKS
                || total > PARK_TOTAL_MAX
                || st.parked.contains_key(&offset)
            {
                PARKED_TOTAL.fetch_sub(data.len(), Ordering::AcqRel);
                st.stop();
            } else {
                st.parked_bytes += data.len();
                // A copy: a slice would keep the client's whole frame
                // buffer alive while it waits.
                st.parked.insert(offset, Bytes::copy_from_slice(data));
            }
            return;
        }
        st.advance(data.clone()).await;
        while let Some((&off, _)) = st.parked.first_key_value() {
            if off > st.next {
                break;
            }
            let Some((off, chunk)) = st.parked.pop_first() else {
                break;
            };
            st.parked_bytes -= chunk.len();
            PARKED_TOTAL.fetch_sub(chunk.len(), Ordering::AcqRel);
            if off < st.next {
                st.stop();
                return;
            }
            st.advance(chunk).await;
        }
    }

    /// Lends the hash to a caller about to write (and digest) the bytes at
    /// `offset`, one write at a time, if that is where the hash stands and
    /// nothing is parked. `None`: feed the bytes through [`StreamHash::feed`].
    /// While lent, anything fed meanwhile turns streaming off (the commit
    /// then reads the file back), so a misuse costs time, never a wrong hash.
    pub(crate) async fn lend(&self, offset: u64) -> Option<Lent> {
        let mut st = self.state.lock().await;
        if offset != st.next || !st.parked.is_empty() || offset >= st.until {
            return None;
        }
        let hasher = st.take().await?;
        st.feed = Feed::Lent;
        Some(Lent {
            hasher: std::sync::Arc::new(std::sync::Mutex::new((hasher, 0))),
            at: offset,
        })
    }

    /// Takes the lent hash back after `written` bytes were written, or turns
    /// streaming off when the write failed (`written` is `None`) or the
    /// writer did not digest exactly those bytes.
    pub(crate) async fn give_back(&self, lent: Lent, written: Option<u64>) {
        let mut st = self.state.lock().await;
        if !matches!(st.feed, Feed::Lent) || st.next != lent.at {
            st.stop();
            return;
        }
        let hasher = std::sync::Arc::try_unwrap(lent.hasher)
            .ok()
            .and_then(|m| m.into_inner().ok());
        match (hasher, written) {
            // Only if the writer digested exactly what it wrote.
            (Some((h, digested)), Some(n)) if digested == n => {
                st.next += n;
                st.feed = Feed::Idle(h);
            }
            _ => st.stop(),
        }
    }

    /// Bytes at `offset` are written without the stream seeing them: what
    /// it hashed stays valid unless they rewrite some of it, and the rest
    /// is read back from where it stands.
    pub(crate) async fn skip(&self, offset: u64) {
        let mut st = self.state.lock().await;
        if offset < st.next {
            st.stop();
        }
    }

    /// The upload changed in a way the stream does not follow.
    pub(crate) async fn stop(&self) {
        self.state.lock().await.stop();
    }

    /// The digest of everything written so far and how many bytes that is,
    /// if the stream followed all of it (nothing parked, not turned off):
    /// for an upload's event prepared before its commit. Takes the hash: a
    /// later [`StreamHash::finish`] has `Nothing` (the file is read back).
    pub(crate) async fn finish_whole(&self) -> Option<(String, u64)> {
        let mut st = self.state.lock().await;
        if !st.parked.is_empty() || st.next >= st.until {
            return None;
        }
        let hasher = st.take().await?;
        Some((hex::encode(hasher.finalize()), st.next))
    }

    /// What the stream has for the committed content of `size` bytes: its
    /// digest if it covered all of them, else the hash of the part it did
    /// cover (every byte below `next` is as the stream saw it: a write or
    /// truncation there turned it off).
    pub(crate) async fn finish(&self, size: u64) -> Hashed {
        let mut st = self.state.lock().await;
        if st.next > size {
            return Hashed::Nothing;
        }
        let complete = st.next == size && st.parked.is_empty();
        let Some(hasher) = st.take().await else {
            return Hashed::Nothing;
        };
        if complete {
            Hashed::Done(hex::encode(hasher.finalize()))
        } else {
            Hashed::Upto(hasher, st.next)
        }
    }
}

impl Drop for State {
    fn drop(&mut self) {
        PARKED_TOTAL.fetch_sub(self.parked_bytes, Ordering::AcqRel);
    }
}

impl State {
    fn stop(&mut self) {
        if let Feed::Running(job) = std::mem::replace(&mut self.feed, Feed::Off) {
            job.abort();
        }
        self.parked.clear();
        PARKED_TOTAL.fetch_sub(self.parked_bytes, Ordering::AcqRel);
        self.parked_bytes = 0;
    }

    async fn take(&mut self) -> Option<Box<Sha256>> {
        match std::mem::replace(&mut self.feed, Feed::Off) {
            Feed::Idle(h) => Some(h),
            Feed::Running(job) => job.await.ok(),
            Feed::Lent | Feed::Off => None,
        }
    }

    async fn advance(&mut self, data: Bytes) {
        let Some(mut hasher) = self.take().await else {
            self.stop();
            return;
        };
        self.next += data.len() as u64;
        self.feed = if data.len() >= OFFLOAD_MIN {
            Feed::Running(tokio::task::spawn_blocking(move || {
                hasher.update(&data);
                hasher
            }))
        } else {
            hasher.update(&data);
            Feed::Idle(hasher)
        };
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn digest(data: &[u8]) -> String {
        hex::encode(Sha256::digest(data))
    }

    fn done(hashed: Hashed) -> Option<String> {
        match hashed {
            Hashed::Done(d) => Some(d),
            Hashed::Upto(..) | Hashed::Nothing => None,
        }
    }

    #[tokio::test]
    async fn a_stream_until_a_limit_is_continued_from_where_it_stopped() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 11) as u8).collect();
        let h = StreamHash::until(true, 1 << 20);
        let mut off = 0usize;
        for (i, chunk) in data.chunks(300_000).enumerate() {
            if i % 2 == 0 {
                // Past the limit nothing is lent.
                let lent = write_lent(&h, off as u64, chunk).await;
                assert_eq!(lent, off < 1 << 20, "at {off}");
                if !lent {
                    h.feed(off as u64, &Bytes::copy_from_slice(chunk)).await;
                }
            } else {
                h.feed(off as u64, &Bytes::copy_from_slice(chunk)).await;
            }
            off += chunk.len();
        }
        // Four 300,000-byte chunks reach past 1 MiB; the rest was not followed.
        let Hashed::Upto(mut hasher, at) = h.finish(data.len() as u64).await else {
            panic!("expected a partial hash");
        };
        assert_eq!(at, 1_200_000);
        hasher.update(&data[at as usize..]);
        assert_eq!(hex::encode(hasher.finalize()), digest(&data));

        // A rewrite below where the stream stopped still turns it off.
        let h = StreamHash::until(true, 4);
        h.feed(0, &Bytes::from_static(b"hello")).await;
        h.feed(5, &Bytes::from_static(b" world")).await;
        h.feed(1, &Bytes::from_static(b"E")).await;
        assert!(matches!(h.finish(11).await, Hashed::Nothing));
    }

    #[tokio::test]
    async fn in_order_and_pipelined_writes_hash_like_the_file() {
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7) as u8).collect();
        let h = StreamHash::new(true);
        // Chunks of mixed sizes, some arriving ahead of their turn.
        let mut chunks = Vec::new();
        let mut off = 0usize;
        for (i, size) in [100usize, 70_000, 32_768, 200_000, 5]
            .iter()
            .cycle()
            .enumerate()
        {
            if off >= data.len() {
                break;
            }
            let end = (off + size).min(data.len());
            chunks.push((off as u64, Bytes::copy_from_slice(&data[off..end]), i));
            off = end;
        }
        // Swap neighbours pairwise: every other chunk arrives early.
        for pair in chunks.chunks_mut(2) {
            pair.reverse();
        }
        for (off, chunk, _) in &chunks {
            h.feed(*off, chunk).await;
        }
        assert_eq!(done(h.finish(data.len() as u64).await), Some(digest(&data)));
    }

    /// Simulates a writer that digests the bytes on its own thread.
    async fn write_lent(h: &StreamHash, offset: u64, data: &[u8]) -> bool {
        let Some(lent) = h.lend(offset).await else {
            return false;
        };
        let digest = lent.digester();
        let owned = data.to_vec();
        tokio::task::spawn_blocking(move || digest(&owned))
            .await
            .unwrap();
        h.give_back(lent, Some(data.len() as u64)).await;
        true
    }

    #[tokio::test]
    async fn a_lent_hash_digests_in_order_writes() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 13) as u8).collect();
        let h = StreamHash::new(true);
        let mut off = 0usize;
        // Lent and fed chunks may alternate.
        for (i, chunk) in data.chunks(700_001).enumerate() {
            if i % 2 == 0 {
                assert!(write_lent(&h, off as u64, chunk).await);
            } else {
                h.feed(off as u64, &Bytes::copy_from_slice(chunk)).await;
            }
            off += chunk.len();
        }
        assert_eq!(done(h.finish(data.len() as u64).await), Some(digest(&data)));
    }

    #[tokio::test]
    async fn a_lent_hash_is_not_trusted_after_misuse() {
        // Not where the hash stands: not lent.
        let h = StreamHash::new(true);
        assert!(h.lend(5).await.is_none());
        // A failed write turns streaming off.
        let h = StreamHash::new(true);
        let lent = h.lend(0).await.unwrap();
        h.give_back(lent, None).await;
        assert_eq!(done(h.finish(0).await), None);
        // Bytes fed while the hash is out turn streaming off.
        let h = StreamHash::new(true);
        let lent = h.lend(0).await.unwrap();
        h.feed(0, &Bytes::from_static(b"abc")).await;
        (lent.digester())(b"abc");
        h.give_back(lent, Some(3)).await;
        assert_eq!(done(h.finish(3).await), None);
        // A writer that digested less than it wrote is not trusted.
        let h = StreamHash::new(true);
        let lent = h.lend(0).await.unwrap();
        (lent.digester())(b"ab");
        h.give_back(lent, Some(3)).await;
        assert_eq!(done(h.finish(3).await), None);
        // Finishing while the hash is out reads back instead.
        let h = StreamHash::new(true);
        let _lent = h.lend(0).await.unwrap();
        assert_eq!(done(h.finish(0).await), None);
        // Disabled from the start: never lent.
        assert!(StreamHash::new(false).lend(0).await.is_none());
    }

    #[tokio::test]
    async fn parking_is_bounded() {
        // Zero-length writes cost nothing and change nothing.
        let h = StreamHash::new(true);
        for off in 1..10_000u64 {
            h.feed(off, &Bytes::new()).await;
        }
        assert!(h.state.lock().await.parked.is_empty());
        // More early chunks than a client can have in flight: streaming stops
        // (the commit reads back) instead of holding them.
        let h = StreamHash::new(true);
        for off in 1..=(PARK_CHUNKS as u64 + 1) {
            h.feed(off * 10, &Bytes::from_static(b"x")).await;
        }
        let st = h.state.lock().await;
        assert!(matches!(st.feed, Feed::Off));
        assert!(st.parked.is_empty() && st.parked_bytes == 0);
    }

    #[tokio::test]
    async fn rewrites_and_short_files_fall_back() {
        let h = StreamHash::new(true);
        h.feed(0, &Bytes::from_static(b"hello")).await;
        h.feed(0, &Bytes::from_static(b"HELLO")).await;
        assert_eq!(done(h.finish(5).await), None);

        let h = StreamHash::new(true);
        h.feed(0, &Bytes::from_static(b"hello")).await;
        assert_eq!(
            done(h.finish(4).await),
            None,
            "truncated: not what was streamed"
        );

        let h = StreamHash::new(true);
        h.feed(10, &Bytes::from_static(b"gap")).await;
        // A hole never filled: nothing streamed, all of it read back.
        assert!(matches!(h.finish(13).await, Hashed::Upto(_, 0)));

        let h = StreamHash::new(false);
        h.feed(0, &Bytes::from_static(b"x")).await;
        assert_eq!(done(h.finish(1).await), None);

        let h = StreamHash::new(true);
        assert_eq!(done(h.finish(0).await), Some(digest(b"")));
    }
}

//! Moving bytes over a data connection: downloads (zero-copy `sendfile` for
//! local files in binary mode over clear-text connections; TLS ones copy
//! through rustls and end with `close_notify`), uploads (large reused
//! buffers, one disk write in flight while the next buffer fills, or, for a
//! page-cache chunk copied in place, while the kernel buffers it; past the
//! first chunk a clear-text socket wakes us every half MiB, not every
//! segment; over TLS an end without `close_notify` is a truncation and
//! fails with 426), and
//! listings streamed straight from the directory reader.
//!
//! A transfer is a [`TransferTask`] the connection polls beside its control
//! channel, so ABOR, STAT and NOOP are served while it runs; it ends with a
//! [`TransferOutcome`].

use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use dropgate_core::store::Permission;
use dropgate_core::vfs::{DirStream, Metadata, VirtualPath};
use dropgate_core::{Download, ErrorClass, FsError, Session, Upload};
use dropgate_ftps::ControlTls;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter, Interest};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::ascii;
use crate::data::{DataSetup, DataStream};
use crate::error::TransferError;
use crate::listing::{self, EntryRights, ListFormat};
use crate::reply::{Reply, push_escaped};

/// Most bytes one `sendfile` call may move.
const SENDFILE_CHUNK: u64 = 4 << 20;
/// The same under a download rate limit: small enough for a smooth rate.
const THROTTLED_CHUNK: u64 = 64 << 10;
/// Read size of the download fallback (TLS, ASCII, non-local storage).
const COPY_CHUNK: usize = 1 << 20;
/// Upload buffer size (a second buffer only for uploads larger than one).
const UPLOAD_CHUNK: usize = 1 << 20;
/// Once a clear-text upload has filled a whole chunk, its data socket wakes
/// the reader only when this much has arrived (or the end): see
/// [`DataStream::set_low_water`]. Measured on 1 GiB FTP uploads into the
/// page cache: 128 KiB helped little, 512 KiB and 1 MiB alike (session 35).
const LOW_WATER: usize = 512 << 10;
/// How long a read waits for [`LOW_WATER`] before taking the mark down: the
/// bytes of a client that sends slower than that (about 260 MB/s) or
/// pauses are read within 2-3 ms (tokio's timer counts whole
/// milliseconds). The mark goes up again at the next chunk, so a slow
/// client costs that delay once a chunk, while its bytes keep arriving in
/// the socket's buffer.
const LOW_WATER_PATIENCE: Duration = Duration::from_millis(2);
/// Listing output buffer.
const LISTING_BUFFER: usize = 64 * 1024;
/// How long answering an upload's TLS `close_notify` may take.
const TLS_CLOSE_WAIT: Duration = Duration::from_secs(5);
/// How long an upload waits for its commit question's answer before it
/// wakes to make sure it was seen (see `client_still_there`).
const GATE_GUARD: Duration = Duration::from_secs(1);

/// How a transfer ended.
pub(crate) enum TransferOutcome {
    /// Complete: the final reply (226), and an upload's data connection,
    /// closed only once that reply is sent ([`Closing`]).
    Done(Reply, Closing),
    /// Failed: the reply that says why (425, 426, 451, 452, 552, ...).
    Failed(Reply),
    /// Stopped by ABOR, a disconnect or the end of the session.
    Aborted,
}

/// An upload's data connection, already at its end (the client closed it),
/// kept through the commit and until the 226 is sent; dropping it closes it.
/// Closing a clear-text TCP socket on loopback runs the peer's side of the
/// FIN in the same call (about 10 us, 5% of the server's CPU on 4 KiB
/// uploads; docs/benchmarks.md, session 27): after the reply, it overlaps
/// the client's next command instead of delaying the answer. A TLS data
/// connection has sent its `close_notify` and FIN already (`receive_into`),
/// so only its descriptor is closed later. `None` for downloads
/// and listings, whose close is the client's end of file and so precedes
/// the 226 (RFC 959).
pub(crate) type Closing = Option<DataStream>;

/// A transfer, polled by the connection's own task rather than spawned.
///
/// A spawned transfer cost two thread hand-offs per file on a multi-threaded
/// runtime (the spawn wakes an idle worker; the end wakes the connection
/// through a join handle), which was most of a small download's server time.
/// Polled in place, the connection still reads its control channel between
/// polls, and nothing is lost: one session never transfers two files at once.
///
/// A panic inside the transfer ends it with 451 instead of taking the
/// connection down. Dropped before it finished (the connection ended), it
/// moves to a task of its own to wind down, as a spawned transfer would: an
/// upload's abort, an audit record.
pub(crate) struct TransferTask {
    future: Option<Pin<Box<dyn Future<Output = TransferOutcome> + Send>>>,
}

impl TransferTask {
    pub(crate) fn new(future: impl Future<Output = TransferOutcome> + Send + 'static) -> Self {
        TransferTask {
            future: Some(Box::pin(future)),
        }
    }
}

impl Future for TransferTask {
    type Output = TransferOutcome;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<TransferOutcome> {
        let Some(future) = self.future.as_mut() else {
            // Finished already; the connection never polls it again.
            return Poll::Pending;
        };
        let outcome = match std::panic::catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(cx)))
        {
            Ok(Poll::Pending) => return Poll::Pending,
            Ok(Poll::Ready(outcome)) => outcome,
            Err(_) => {
                tracing::error!("transfer panicked");
                TransferOutcome::Failed(Reply::new(451, "Local error in processing."))
            }
        };
        self.future = None;
        Poll::Ready(outcome)
    }
}

impl Drop for TransferTask {
    fn drop(&mut self) {
        if let Some(future) = self.future.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(future);
        }
    }
}

/// What to listen to while a transfer runs.
pub(crate) struct TransferControl {
    /// Cancelled by ABOR, disconnect, shutdown or admin kick.
    pub(crate) abort: CancellationToken,
    /// Bytes moved so far (STAT during a transfer).
    pub(crate) progress: Arc<AtomicU64>,
    /// A data connection silent for this long fails the transfer.
    pub(crate) idle: Duration,
    /// Asks the connection whether the client is still there before an
    /// upload is committed (answer `false`: abort).
    pub(crate) commit_gate: Arc<CommitGate>,
}

/// An upload's question to its connection before the commit: is the client
/// still there? Asked and answered inside polls of the connection's own
/// task, with no waker: the connection polls the transfer and then
/// [`CommitGate::asked`] in the same pass, answers, and polls the transfer
/// again at once. A channel would have the task wake itself, and tokio
/// reschedules a self-woken task as a yield, which wakes an idle worker that
/// may steal it: a thread hop before every upload's 226
/// (docs/benchmarks.md, session 22).
#[derive(Default)]
pub(crate) struct CommitGate(AtomicU8);

const GATE_IDLE: u8 = 0;
const GATE_ASKED: u8 = 1;
const GATE_ALIVE: u8 = 2;
const GATE_GONE: u8 = 3;

impl CommitGate {
    /// Whether the transfer waits for an answer.
    pub(crate) fn asked(&self) -> bool {
        self.0.load(Ordering::Acquire) == GATE_ASKED
    }

    /// Answers the question asked, if any.
    pub(crate) fn answer(&self, alive: bool) {
        let to = if alive { GATE_ALIVE } else { GATE_GONE };
        let _ = self
            .0
            .compare_exchange(GATE_ASKED, to, Ordering::AcqRel, Ordering::Acquire);
    }

    fn ask(&self) {
        self.0.store(GATE_ASKED, Ordering::Release);
    }

    /// The answer, once given (the gate is then ready for another question).
    fn answered(&self) -> Option<bool> {
        match self.0.load(Ordering::Acquire) {
            GATE_ALIVE | GATE_GONE => {
                let alive = self.0.swap(GATE_IDLE, Ordering::AcqRel) == GATE_ALIVE;
                Some(alive)
            }
            _ => None,
        }
    }
}

/// A listing's source.
pub(crate) enum ListSource {
    /// A folder's entries, streamed.
    Dir {
        path: VirtualPath,
        entries: DirStream,
    },
    /// One entry (the argument named a file).
    One { path: VirtualPath, meta: Metadata },
}

/// One transfer to run.
pub(crate) enum Work {
    /// RETR: `offset` from REST.
    Download {
        download: Download,
        offset: u64,
        ascii: bool,
    },
    /// STOR, STOU, APPE: `done` is the 226 text.
    Upload {
        upload: Upload,
        ascii: bool,
        done: String,
    },
    /// LIST, NLST, MLSD.
    Listing {
        source: ListSource,
        format: ListFormat,
        session: Session,
    },
}

/// Opens the data connection and runs `work` over it.
pub(crate) async fn run(
    setup: DataSetup,
    local_ip: IpAddr,
    tls: Option<ControlTls>,
    work: Work,
    ctl: TransferControl,
) -> TransferOutcome {
    let stream = tokio::select! {
        biased;
        _ = ctl.abort.cancelled() => Err(TransferError::Aborted),
        r = setup.open(local_ip, tls.as_ref(), matches!(work, Work::Upload { .. })) => r.map_err(TransferError::from),
    };
    match work {
        Work::Download {
            download,
            offset,
            ascii,
        } => {
            let result = match stream {
                Ok(s) => send_file(s, &download, offset, ascii, &ctl).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => {
                    download.finish(None);
                    TransferOutcome::Done(Reply::new(226, "Transfer complete."), None)
                }
                Err(e) => {
                    download.finish(Some(&e.to_string()));
                    failed(e)
                }
            }
        }
        Work::Upload {
            upload,
            ascii,
            done,
        } => {
            let result = match stream {
                Ok(s) => receive_file(s, &upload, ascii, &ctl).await,
                Err(e) => Err(e),
            };
            let (last, closing) = match result {
                Ok(received) => received,
                Err(e) => {
                    upload.abort(&e.to_string()).await;
                    return failed(e);
                }
            };
            // The data connection's end means the end of the file, unless
            // the client died (then its control connection closed as well).
            if !client_still_there(&ctl).await {
                upload.abort("control connection closed").await;
                return TransferOutcome::Aborted;
            }
            // The last chunk is written by the commit's own blocking call
            // (durable uploads whose event is synced beside the commit: just
            // before it).
            let committed = match last {
                Some((pos, data)) => upload.commit_last(pos, data).await,
                None => upload.commit().await,
            };
            match committed {
                Ok(_) => TransferOutcome::Done(Reply::new(226, done), Some(closing)),
                Err(e) => failed(TransferError::Fs(e)),
            }
        }
        Work::Listing {
            source,
            format,
            session,
        } => {
            let result = match stream {
                Ok(s) => send_listing(s, source, format, &session, &ctl).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => TransferOutcome::Done(Reply::new(226, "Directory send OK."), None),
                Err(e) => failed(e),
            }
        }
    }
}

fn failed(e: TransferError) -> TransferOutcome {
    match e {
        TransferError::Aborted => TransferOutcome::Aborted,
        e => {
            tracing::debug!(error = %e, "transfer failed");
            TransferOutcome::Failed(e.reply())
        }
    }
}

async fn client_still_there(ctl: &TransferControl) -> bool {
    ctl.commit_gate.ask();
    loop {
        // The connection may be stopping this very transfer (ABOR, a
        // disconnect: it then polls it on its own): never wait without
        // watching the abort. No waker for the answer (see [`CommitGate`]);
        // the timer only guards against a poll that left the question
        // unseen, which would otherwise hang the upload: it then costs a
        // second, and says so.
        tokio::select! {
            biased;
            _ = ctl.abort.cancelled() => return false,
            alive = std::future::poll_fn(|_| match ctl.commit_gate.answered() {
                Some(alive) => Poll::Ready(alive),
                None => Poll::Pending,
            }) => return alive,
            () = tokio::time::sleep(GATE_GUARD) => {
                tracing::warn!("an upload's commit question went unanswered for a second; asking again");
            }
        }
    }
}

/// Awaits data-socket I/O, giving up on abort or when the socket stays idle.
async fn net<T>(
    ctl: &TransferControl,
    io: impl Future<Output = io::Result<T>>,
) -> Result<T, TransferError> {
    tokio::select! {
        biased;
        _ = ctl.abort.cancelled() => Err(TransferError::Aborted),
        r = tokio::time::timeout(ctl.idle, io) => match r {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(TransferError::Data(e)),
            Err(_) => Err(TransferError::Data(io::Error::new(io::ErrorKind::TimedOut, "data connection idle"))),
        },
    }
}

/// Waits for the account's download rate, giving up on abort: at a low
/// limit one chunk's wait lasts seconds, and ABOR must not wait it out.
async fn paced(ctl: &TransferControl, wait: impl Future<Output = ()>) -> Result<(), TransferError> {
    tokio::select! {
        biased;
        _ = ctl.abort.cancelled() => Err(TransferError::Aborted),
        () = wait => Ok(()),
    }
}

/// Awaits storage I/O, giving up on abort.
async fn disk<T>(
    ctl: &TransferControl,
    io: impl Future<Output = Result<T, FsError>>,
) -> Result<T, TransferError> {
    tokio::select! {
        biased;
        _ = ctl.abort.cancelled() => Err(TransferError::Aborted),
        r = io => r.map_err(TransferError::Fs),
    }
}

async fn send_file(
    mut stream: DataStream,
    download: &Download,
    offset: u64,
    ascii: bool,
    ctl: &TransferControl,
) -> Result<(), TransferError> {
    let len = download.len();
    if offset < len {
        match (&stream, ascii, download.reader().local_file()) {
            (DataStream::Plain(tcp), false, Some(file)) => {
                send_zero_copy(tcp, file, offset, len, download, ctl).await?
            }
            _ => send_copy(&mut stream, download, offset, ascii, ctl).await?,
        }
    }
    net(ctl, stream.shutdown()).await
}

/// `sendfile(2)` from the page cache straight into the socket, driven by
/// tokio's readiness so the socket stays non-blocking.
async fn send_zero_copy(
    tcp: &TcpStream,
    file: &std::fs::File,
    offset: u64,
    len: u64,
    download: &Download,
    ctl: &TransferControl,
) -> Result<(), TransferError> {
    let mut pos = offset;
    let chunk = if download.is_throttled() {
        THROTTLED_CHUNK
    } else {
        SENDFILE_CHUNK
    };
    // Bytes taken from the account's rate limit and not sent yet.
    let mut paid = 0u64;
    // tokio learns that a new socket is writable only from its reactor's
    // next look at epoll: waiting for that put a trip through the scheduler
    // before every small download's bytes. A fresh connection's buffer is
    // empty, so the first `sendfile` goes straight to the non-blocking
    // socket; what it could not send (a partial send, EAGAIN) waits for
    // readiness, which `try_io` clears when it is stale.
    let mut first = true;
    while pos < len {
        if !first {
            net(ctl, tcp.writable()).await?;
        }
        if paid == 0 {
            paid = (len - pos).min(chunk);
            paced(ctl, download.throttle(paid)).await?;
        }
        let want = usize::try_from(paid.min(len - pos)).unwrap_or(usize::MAX);
        let mut send =
            || rustix::fs::sendfile(tcp, file, Some(&mut pos), want).map_err(io::Error::from);
        let sent = if std::mem::take(&mut first) {
            send()
        } else {
            tcp.try_io(Interest::WRITABLE, send)
        };
        match sent {
            // The file shrank after it was opened: send what there is.
            Ok(0) => break,
            Ok(n) => {
                paid = paid.saturating_sub(n as u64);
                download.add_bytes(n as u64);
                ctl.progress.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(TransferError::Data(e)),
        }
    }
    Ok(())
}

/// Positioned reads and writes, with the next read running while the
/// current chunk is written; converts line ends in ASCII mode.
async fn send_copy(
    stream: &mut DataStream,
    download: &Download,
    offset: u64,
    ascii: bool,
    ctl: &TransferControl,
) -> Result<(), TransferError> {
    let reader = download.reader().clone();
    let len = download.len();
    let read = |at: u64| {
        let reader = reader.clone();
        async move {
            if at >= len {
                return Ok(Bytes::new());
            }
            let want = usize::try_from((len - at).min(COPY_CHUNK as u64)).unwrap_or(COPY_CHUNK);
            reader.read_at(at, want).await.map_err(FsError::from)
        }
    };
    let mut to_net = ascii.then(ascii::ToNetwork::default);
    let mut converted = Vec::new();
    let mut pos = offset;
    let mut chunk = disk(ctl, read(pos)).await?;
    while !chunk.is_empty() {
        let next = pos + chunk.len() as u64;
        let out: &[u8] = match to_net.as_mut() {
            Some(conv) => {
                converted.clear();
                conv.convert(&chunk, &mut converted);
                &converted
            }
            None => &chunk,
        };
        paced(ctl, download.throttle(chunk.len() as u64)).await?;
        let (written, following) =
            tokio::join!(net(ctl, stream.write_all(out)), disk(ctl, read(next)));
        written?;
        download.add_bytes(chunk.len() as u64);
        ctl.progress
            .fetch_add(chunk.len() as u64, Ordering::Relaxed);
        chunk = following?;
        pos = next;
    }
    Ok(())
}

/// After a refused write (quota, full disk), how long and how much of what
/// the client is still sending is read and dropped, so that it finishes
/// sending and reads the 552/452 reply instead of a connection reset.
const DRAIN_TIME: Duration = Duration::from_secs(15);
const DRAIN_BYTES: u64 = 1 << 30;

/// Receives an upload; returns its last chunk unwritten (with its offset),
/// for the commit to write, and the data connection, at its end, to be
/// closed after the reply ([`Closing`]).
async fn receive_file(
    mut stream: DataStream,
    upload: &Upload,
    ascii: bool,
    ctl: &TransferControl,
) -> Result<(Option<(u64, Bytes)>, DataStream), TransferError> {
    match receive_into(&mut stream, upload, ascii, ctl).await {
        Ok(last) => Ok((last, stream)),
        Err(TransferError::Fs(e))
            if matches!(e.class(), ErrorClass::QuotaExceeded | ErrorClass::NoSpace) =>
        {
            stream.set_low_water(1);
            drain(&mut stream, ctl).await;
            Err(TransferError::Fs(e))
        }
        Err(e) => Err(e),
    }
}

/// Reads and drops what the client still sends, within the drain limits.
async fn drain(stream: &mut DataStream, ctl: &TransferControl) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        while total < DRAIN_BYTES {
            match net(ctl, stream.read(&mut buf)).await {
                Ok(0) | Err(_) => return,
                Ok(n) => total += n as u64,
            }
        }
    })
    .await;
}

async fn receive_into(
    stream: &mut DataStream,
    upload: &Upload,
    ascii: bool,
    ctl: &TransferControl,
) -> Result<Option<(u64, Bytes)>, TransferError> {
    let mut from_net = ascii.then(ascii::FromNetwork::default);
    let mut pos = upload.initial_len();
    // `fill` allocates each buffer on first use: a file that fits in one
    // chunk (most small uploads) never needs the second.
    let mut current = BytesMut::new();
    let mut next = BytesMut::new();
    // Off for the first chunk: most uploads fit in one, and their ends
    // should not wait out the patience.
    let mut low_water = LowWater::Down;
    let mut eof = fill(stream, &mut current, ctl, &mut low_water).await?;
    loop {
        let data = match from_net.as_mut() {
            Some(conv) => {
                let mut v = Vec::with_capacity(current.len() + 1);
                conv.convert(&current, &mut v);
                if eof {
                    conv.finish(&mut v);
                }
                current.clear();
                Bytes::from(v)
            }
            None => current.split().freeze(),
        };
        let n = data.len() as u64;
        if eof {
            // TLS: the client ended with close_notify; answer with ours
            // (clients such as Python's `unwrap()` wait for it). Best effort:
            // the bytes are all here whatever happens to the socket now.
            if matches!(stream, DataStream::Tls(_)) {
                let _ = tokio::time::timeout(TLS_CLOSE_WAIT, stream.shutdown()).await;
            }
            return Ok((n > 0).then_some((pos, data)));
        }
        // One disk write in flight while the next buffer fills. A
        // page-cache chunk is copied in place (`write_next_at`): then the
        // fill starts after it, the kernel's socket buffer taking what
        // arrives meanwhile, and an ABOR waits for that copy.
        low_water.raise(stream);
        let (_, at_end) = tokio::try_join!(
            disk(ctl, upload.write_next(pos, data)),
            fill(stream, &mut next, ctl, &mut low_water)
        )?;
        pos += n;
        eof = at_end;
        std::mem::swap(&mut current, &mut next);
    }
}

/// Whether an upload's data socket holds its reader back until
/// [`LOW_WATER`] bytes have arrived.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum LowWater {
    Down,
    Up,
}

impl LowWater {
    fn raise(&mut self, stream: &DataStream) {
        if *self == LowWater::Down && stream.set_low_water(LOW_WATER) {
            *self = LowWater::Up;
        }
    }

    fn lower(&mut self, stream: &DataStream) {
        // Should the kernel refuse, the mark stays up and every read keeps
        // its patience (and tries again): never a wait without a bound.
        if *self == LowWater::Up && stream.set_low_water(1) {
            *self = LowWater::Down;
        }
    }
}

/// Reads until `buf` holds a full chunk or the client closes; `true` at EOF.
/// Counts the bytes received in the transfer's progress (what STAT shows).
async fn fill(
    stream: &mut DataStream,
    buf: &mut BytesMut,
    ctl: &TransferControl,
    low_water: &mut LowWater,
) -> Result<bool, TransferError> {
    // Reclaims the allocation once the previous chunk's write dropped it.
    buf.reserve(UPLOAD_CHUNK);
    while buf.len() < UPLOAD_CHUNK {
        let n = match *low_water {
            LowWater::Down => net(ctl, stream.read_buf(buf)).await?,
            LowWater::Up => {
                let patient = async {
                    match tokio::time::timeout(LOW_WATER_PATIENCE, stream.read_buf(buf)).await {
                        Ok(r) => r.map(Some),
                        Err(_) => Ok(None),
                    }
                };
                match net(ctl, patient).await? {
                    Some(n) => n,
                    None => {
                        // Slow or paused: read what comes, from the next
                        // read on.
                        low_water.lower(stream);
                        continue;
                    }
                }
            }
        };
        if n == 0 {
            return Ok(true);
        }
        ctl.progress.fetch_add(n as u64, Ordering::Relaxed);
    }
    Ok(false)
}

async fn send_listing(
    stream: DataStream,
    source: ListSource,
    format: ListFormat,
    session: &Session,
    ctl: &TransferControl,
) -> Result<(), TransferError> {
    let mut out = BufWriter::with_capacity(LISTING_BUFFER, stream);
    write_listing(
        &mut out, source, format, session, false, &ctl.abort, ctl.idle,
    )
    .await?;
    net(ctl, out.flush()).await?;
    net(ctl, out.shutdown()).await
}

/// Writes a listing entry by entry to `out` (a buffered data connection,
/// or the control connection for STAT, where `escape` protects line ends).
pub(crate) async fn write_listing<W: AsyncWrite + Unpin>(
    out: &mut W,
    source: ListSource,
    format: ListFormat,
    session: &Session,
    escape: bool,
    abort: &CancellationToken,
    idle: Duration,
) -> Result<(), TransferError> {
    let mut w = ListingWriter {
        out,
        format,
        session,
        escape,
        abort,
        idle,
        now: SystemTime::now(),
        line: Vec::with_capacity(256),
    };
    match source {
        ListSource::One { path, meta } => {
            let name = path.file_name().unwrap_or("/").to_owned();
            w.entry(Some(&path), &name, &meta).await?;
        }
        ListSource::Dir { path, mut entries } => loop {
            let next = tokio::select! {
                biased;
                _ = abort.cancelled() => return Err(TransferError::Aborted),
                e = entries.next() => e,
            };
            match next {
                None => break,
                Some(Ok(entry)) => {
                    let child = path.join(&entry.name).ok();
                    w.entry(child.as_ref(), &entry.name, &entry.meta).await?;
                }
                // An entry that vanished or cannot be read: leave it out.
                Some(Err(e)) => tracing::debug!(error = %e, "listing entry skipped"),
            }
        },
    }
    Ok(())
}

/// Formats and writes listing lines, reusing one line buffer.
struct ListingWriter<'a, W> {
    out: &'a mut W,
    format: ListFormat,
    session: &'a Session,
    escape: bool,
    abort: &'a CancellationToken,
    idle: Duration,
    now: SystemTime,
    line: Vec<u8>,
}

impl<W: AsyncWrite + Unpin> ListingWriter<'_, W> {
    async fn entry(
        &mut self,
        path: Option<&VirtualPath>,
        name: &str,
        meta: &Metadata,
    ) -> Result<(), TransferError> {
        // A name with a line break (made on disk by other means; no protocol
        // here accepts one) would forge extra entries for mirror clients:
        // show `?` instead, as vsftpd does.
        let shown;
        let name = if name.contains(['\r', '\n']) {
            shown = name.replace(['\r', '\n'], "?");
            shown.as_str()
        } else {
            name
        };
        let text = match self.format {
            ListFormat::Long => listing::long_line(name, meta, self.now),
            ListFormat::Names => name.to_owned(),
            ListFormat::Machine(facts) => {
                let rights = match (facts.perm, path) {
                    (true, Some(p)) => entry_rights(self.session, p),
                    _ => EntryRights::default(),
                };
                listing::facts_line(name, meta, facts, rights)
            }
        };
        self.line.clear();
        if self.escape {
            push_escaped(&mut self.line, &text);
        } else {
            self.line.extend_from_slice(text.as_bytes());
        }
        self.line.extend_from_slice(b"\r\n");
        tokio::select! {
            biased;
            _ = self.abort.cancelled() => Err(TransferError::Aborted),
            r = tokio::time::timeout(self.idle, self.out.write_all(&self.line)) => match r {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(TransferError::Data(e)),
                Err(_) => Err(TransferError::Data(io::Error::new(io::ErrorKind::TimedOut, "listing stalled"))),
            },
        }
    }
}

/// What the account may do with `path`, for the MLSx `perm` fact.
pub(crate) fn entry_rights(session: &Session, path: &VirtualPath) -> EntryRights {
    let can = |p| session.allows(path, p);
    EntryRights {
        list: can(Permission::List),
        download: can(Permission::Download),
        upload: can(Permission::Upload),
        overwrite: can(Permission::Overwrite),
        delete: can(Permission::Delete),
        rename: can(Permission::Rename),
        mkdir: can(Permission::Mkdir),
        rmdir: can(Permission::Rmdir),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn control() -> TransferControl {
        TransferControl {
            abort: CancellationToken::new(),
            progress: Arc::new(AtomicU64::new(0)),
            idle: Duration::from_secs(30),
            commit_gate: Arc::new(CommitGate::default()),
        }
    }

    #[test]
    fn the_gate_takes_one_answer_per_question() {
        let gate = CommitGate::default();
        gate.answer(true);
        assert!(!gate.asked(), "an answer without a question is dropped");
        assert_eq!(gate.answered(), None);
        for alive in [true, false] {
            gate.ask();
            assert!(gate.asked());
            assert_eq!(gate.answered(), None);
            gate.answer(alive);
            assert!(!gate.asked());
            assert_eq!(gate.answered(), Some(alive));
            assert_eq!(gate.answered(), None, "taken once");
        }
    }

    /// Nobody polls the upload right after it asks (the connection's rule
    /// broken): the guard wakes it, so the answer given later is seen
    /// within a second instead of never.
    #[tokio::test]
    async fn an_unseen_question_costs_a_second_not_a_hang() {
        let ctl = Arc::new(control());
        let started = tokio::time::Instant::now();
        let waiting = tokio::spawn({
            let ctl = ctl.clone();
            async move { client_still_there(&ctl).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(ctl.commit_gate.asked());
        ctl.commit_gate.answer(false);
        let alive = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the guard wakes the upload")
            .unwrap();
        assert!(!alive);
        assert!(started.elapsed() >= GATE_GUARD - Duration::from_millis(100));
    }

    #[tokio::test]
    async fn an_abort_ends_the_wait_at_once() {
        let ctl = Arc::new(control());
        let waiting = tokio::spawn({
            let ctl = ctl.clone();
            async move { client_still_there(&ctl).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let started = tokio::time::Instant::now();
        ctl.abort.cancel();
        let alive = waiting.await.unwrap();
        assert!(!alive, "an aborted upload is not committed");
        assert!(started.elapsed() < GATE_GUARD / 2);
    }
}

//! The audit journal of a gateway on SQLite. With uploads answered from
//! the page cache (`durable_uploads = false`), an operation's event is appended to a
//! local file (one `write(2)`, a few microseconds) before the client hears
//! "done", and the audit writer stores it in the database a moment later,
//! in batches. Measured on a small FTP upload, storing each event by
//! itself before the reply took 0.12-0.13 ms of the reply (twice per file
//! with lftp's `MFMT`), more than half of what dropgate took beyond
//! Pure-FTPd per file (docs/benchmarks.md, session 18).
//!
//! The guarantee is the one that mode's database commits give
//! (`synchronous = NORMAL`): a crash of the process loses nothing, since the
//! kernel holds what was written; a power cut can lose the last events.
//! Files left by an earlier run (a crash, or events the store and the spool
//! both refused) are moved into the spool at start and stored from there;
//! every event keeps its key, so one stored twice is kept once.
//!
//! A gateway whose uploads are durable (`durable_uploads = true`) journals
//! too: its other events as above, and a completed upload's event synced
//! (`fdatasync`) *beside* the upload's own syncs, on another thread, instead
//! of a fourth flush after them (SQLite's commit). The reply waits for both.
//! Should the upload's commit then fail, a void line naming the event's key
//! follows it in the same file (synced): an earlier run's file is read back
//! without its voided events. A power cut during the commit can leave an
//! upload's event whose client was never told "done" (as a cut connection
//! after the commit can today); never a reported upload without its event.
//!
//! Hand-written because no crate does this small thing: an append-only
//! file of JSON lines, rotated at [`ROTATE_AT`], each file removed once all
//! its events are stored.

use std::collections::BTreeMap;
use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use dropgate_store::KeyedEvent;

use crate::audit::lock;

/// A file is closed for appends and a new one started beyond this size, so
/// that a stored file can be removed while the gateway runs.
const ROTATE_AT: u64 = 1 << 20;

/// An append-only journal of events in one folder.
pub(crate) struct Journal {
    dir: PathBuf,
    /// This run's file names start with it (the start time), so files of an
    /// earlier run are told apart and sort before this run's.
    run: String,
    state: Mutex<State>,
    /// Set after an append failed (logged once), cleared by the next that
    /// works.
    failing: AtomicBool,
}

#[derive(Default)]
struct State {
    /// The file appended to; `None` before the first event and after a
    /// failed append.
    current: Option<Current>,
    /// `<run>.lock`, locked (`flock`) from the first file on: while this
    /// process lives, no other (a restart overlapping a draining stop)
    /// takes its files as an earlier run's.
    alive: Option<File>,
    next_generation: u64,
    /// Per file of this run (by generation): events appended and not yet
    /// stored. A file leaves the map (and the disk) when it is closed and
    /// its count is zero.
    unstored: BTreeMap<u64, u64>,
}

struct Current {
    generation: u64,
    file: Arc<JournalFile>,
    len: u64,
}

/// One file of the journal, shared with the events appended to it that
/// still have to be synced or voided (after the file has rotated too).
pub(crate) struct JournalFile {
    file: File,
    /// Bytes written by appends so far (all of them complete).
    written: AtomicU64,
    /// Bytes known to be on disk; held while a sync runs, so that callers
    /// waiting behind it find their bytes synced by it (a group commit).
    synced: Mutex<u64>,
    /// Set once a sync failed: the kernel reports a write-back error once
    /// per open file, so a later sync could succeed without the lost
    /// bytes. No sync of this file succeeds again, and appends move on.
    sync_failed: AtomicBool,
    /// Set when an append wrote part of its line: the file may end in a
    /// torn line, which a void line must not be glued to.
    torn: AtomicBool,
    /// Whether the folder holding this (new) file has been synced, so that
    /// the file's name outlives a power cut; done with its first sync.
    named: AtomicBool,
    /// The journal's folder, synced with the first sync.
    dir: PathBuf,
    /// `fdatasync` calls made (tests: a group commit makes fewer).
    syncs: AtomicU64,
}

impl JournalFile {
    /// Returns once the file's first `end` bytes are on disk: at most one
    /// `fdatasync` per call, none if another call's covered them. Blocking.
    pub(crate) fn sync_upto(&self, end: u64) -> io::Result<()> {
        let mut synced = lock(&self.synced);
        if self.sync_failed.load(Ordering::Acquire) {
            return Err(io::Error::other(
                "an earlier sync of this journal file failed",
            ));
        }
        if *synced >= end {
            return Ok(());
        }
        // Every append up to here is complete: the sync covers them all.
        let target = self.written.load(Ordering::Acquire);
        self.sync_data()?;
        *synced = target.max(end);
        Ok(())
    }

    /// `fdatasync`, and the first time, the folder (and its parent, which
    /// may have been created with it): a new file's name is not made
    /// durable by syncing the file.
    fn sync_data(&self) -> io::Result<()> {
        self.syncs.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.file.sync_data() {
            self.sync_failed.store(true, Ordering::Release);
            return Err(e);
        }
        if !self.named.load(Ordering::Acquire) {
            for dir in [Some(self.dir.as_path()), self.dir.parent()]
                .into_iter()
                .flatten()
            {
                File::open(dir)?.sync_all()?;
            }
            self.named.store(true, Ordering::Release);
        }
        Ok(())
    }
}

/// An event appended to the journal.
pub(crate) struct Appended {
    /// The file's generation, for [`Journal::stored`].
    pub(crate) generation: u64,
    /// The file, to sync it or void the event in it.
    pub(crate) file: Arc<JournalFile>,
    /// Where the event's line ends in it.
    pub(crate) end: u64,
}

/// A line that takes back the event with this key, written after it in the
/// same file (its upload failed after the event was synced).
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Void {
    void: String,
}

impl Journal {
    /// A journal in `dir` (created with the first event).
    pub(crate) fn new(dir: PathBuf) -> Journal {
        let start = chrono::Utc::now().timestamp_micros().max(0);
        Journal {
            dir,
            run: format!("{start:020}"),
            state: Mutex::new(State::default()),
            failing: AtomicBool::new(false),
        }
    }

    fn path(&self, generation: u64) -> PathBuf {
        self.dir.join(format!("{}-{generation:06}.jsonl", self.run))
    }

    /// Appends `event` and returns where (the generation to hand to
    /// [`Journal::stored`] once it is in the store). On an error nothing of
    /// it counts as journaled (the caller stores it before answering).
    pub(crate) fn append(&self, event: &KeyedEvent) -> io::Result<Appended> {
        let r = self.try_append(event);
        match &r {
            Ok(_) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(dir = %self.dir.display(), "the audit journal takes events again");
                }
            }
            Err(e) => {
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(dir = %self.dir.display(), error = %e,
                        "cannot append to the audit journal; events are stored before their reply until it works again");
                }
            }
        }
        r
    }

    fn try_append(&self, event: &KeyedEvent) -> io::Result<Appended> {
        let mut line = serde_json::to_vec(event).map_err(io::Error::other)?;
        line.push(b'\n');
        let mut st = lock(&self.state);
        if st
            .current
            .as_ref()
            .is_none_or(|c| c.len >= ROTATE_AT || c.file.sync_failed.load(Ordering::Acquire))
        {
            self.rotate(&mut st)?;
        }
        let Some(cur) = st.current.as_mut() else {
            return Err(io::Error::other("no journal file"));
        };
        // One write per line (O_APPEND; a regular file takes it whole
        // unless the disk is full): a void line written meanwhile from
        // another thread lands before or after it.
        if let Err(e) = (&cur.file.file).write_all(&line) {
            // The file may now end in a torn line: later events go to a
            // new file, so none of them is glued to it.
            cur.file.torn.store(true, Ordering::Release);
            self.close_current(&mut st);
            return Err(e);
        }
        cur.len += line.len() as u64;
        let end = cur
            .file
            .written
            .fetch_add(line.len() as u64, Ordering::AcqRel)
            + line.len() as u64;
        let appended = Appended {
            generation: cur.generation,
            file: cur.file.clone(),
            end,
        };
        *st.unstored.entry(appended.generation).or_default() += 1;
        Ok(appended)
    }

    /// Takes back the event with `key` appended to `file` (its upload
    /// failed): a void line after it, synced, so that no later start stores
    /// it; and counts it as stored. Blocking.
    pub(crate) fn void(&self, appended: &Appended, key: &str) -> io::Result<()> {
        let file = &appended.file;
        let result = (|| {
            // After a torn line, a newline first: the void line is then a
            // line of its own (the torn one is read as unreadable).
            let mut line = if file.torn.load(Ordering::Acquire) {
                b"\n".to_vec()
            } else {
                Vec::new()
            };
            serde_json::to_writer(
                &mut line,
                &Void {
                    void: key.to_owned(),
                },
            )
            .map_err(io::Error::other)?;
            line.push(b'\n');
            (&file.file).write_all(&line)?;
            file.sync_data()
        })();
        self.stored(&[appended.generation]);
        result
    }

    /// Starts a new file for appends.
    fn rotate(&self, st: &mut State) -> io::Result<()> {
        self.close_current(st);
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)?;
        if st.alive.is_none() {
            // Locked before it has its name: a `<run>.lock` another process
            // finds unlocked is one whose process is gone.
            let temp = self.dir.join(format!("{}.lock.tmp", self.run));
            let f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(&temp)?;
            f.try_lock().map_err(io::Error::other)?;
            std::fs::rename(&temp, self.dir.join(format!("{}.lock", self.run)))?;
            st.alive = Some(f);
        }
        let generation = st.next_generation;
        st.next_generation += 1;
        let file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .mode(0o600)
            .open(self.path(generation))?;
        st.current = Some(Current {
            generation,
            file: Arc::new(JournalFile {
                file,
                written: AtomicU64::new(0),
                synced: Mutex::new(0),
                sync_failed: AtomicBool::new(false),
                torn: AtomicBool::new(false),
                named: AtomicBool::new(false),
                dir: self.dir.clone(),
                syncs: AtomicU64::new(0),
            }),
            len: 0,
        });
        Ok(())
    }

    /// Closes the current file for appends; removed at once if everything
    /// in it is stored.
    fn close_current(&self, st: &mut State) {
        if let Some(cur) = st.current.take()
            && st.unstored.get(&cur.generation).is_none_or(|n| *n == 0)
        {
            st.unstored.remove(&cur.generation);
            self.remove(cur.generation);
        }
    }

    fn remove(&self, generation: u64) {
        if let Err(e) = std::fs::remove_file(self.path(generation))
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(error = %e, "cannot remove a stored audit journal file");
        }
    }

    /// Counts events (one entry each) as stored; a closed file whose events
    /// are all stored is removed.
    pub(crate) fn stored(&self, generations: &[u64]) {
        if generations.is_empty() {
            return;
        }
        let mut st = lock(&self.state);
        let current = st.current.as_ref().map(|c| c.generation);
        for g in generations {
            let Some(n) = st.unstored.get_mut(g) else {
                continue;
            };
            *n = n.saturating_sub(1);
            if *n == 0 && Some(*g) != current {
                st.unstored.remove(g);
                self.remove(*g);
            }
        }
    }

    /// At a graceful stop, after the writer's last batch: removes every
    /// file whose events are all stored. One holding events the store and
    /// the spool refused stays for the next start.
    pub(crate) fn finish(&self) {
        let mut st = lock(&self.state);
        self.close_current(&mut st);
        let done: Vec<u64> = st
            .unstored
            .iter()
            .filter(|(_, n)| **n == 0)
            .map(|(g, _)| *g)
            .collect();
        for g in done {
            st.unstored.remove(&g);
            self.remove(g);
        }
        if st.unstored.is_empty()
            && let Some(alive) = st.alive.take()
        {
            drop(alive);
            let _ = std::fs::remove_file(self.dir.join(format!("{}.lock", self.run)));
        }
    }

    /// Files an earlier run left, oldest first: of runs other than this
    /// one whose process is gone (its `<run>.lock` can be locked, or there
    /// is none: a run names its lock file only once it holds the lock). The
    /// lock files of such runs are removed once they have no file left.
    pub(crate) fn earlier(&self) -> Vec<PathBuf> {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let names: Vec<String> = rd
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        let run_of = |name: &str| name.split(['-', '.']).next().unwrap_or_default().to_owned();
        let mut gone = std::collections::HashMap::new();
        let mut is_gone = |run: &str| {
            *gone.entry(run.to_owned()).or_insert_with(|| {
                match File::open(self.dir.join(format!("{run}.lock"))) {
                    Ok(f) => f.try_lock().is_ok(),
                    Err(e) => e.kind() == io::ErrorKind::NotFound,
                }
            })
        };
        let mut files = Vec::new();
        for name in &names {
            let run = run_of(name);
            if run == self.run || !is_gone(&run) {
                continue;
            }
            if name.ends_with(".jsonl") {
                files.push(self.dir.join(name));
            } else if name.ends_with(".lock")
                && !names
                    .iter()
                    .any(|n| n.ends_with(".jsonl") && run_of(n) == run)
            {
                let _ = std::fs::remove_file(self.dir.join(name));
            }
        }
        files.sort();
        files
    }
}

/// What [`read_batches`] found in a journal file.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ReadBack {
    /// Events handed over by this call.
    pub(crate) events: usize,
    /// Complete lines (newline included) that did not parse: not what a
    /// power cut leaves (another version's format, a damaged disk), so the
    /// file is kept for a person to look at.
    pub(crate) unreadable: usize,
    /// The last line lacks its newline and did not parse: the end of a
    /// file cut by a power cut (or zeros where its last blocks were).
    pub(crate) torn_end: bool,
}

/// Reads a journal file in batches of at most `max` events, handing each to
/// `each`. `done` counts the file's lines already handed over: a call that
/// failed midway (the spool full) goes on from there the next time instead
/// of handing the first batches over twice.
pub(crate) fn read_batches(
    path: &Path,
    max: usize,
    done: &mut usize,
    mut each: impl FnMut(Vec<KeyedEvent>) -> io::Result<()>,
) -> io::Result<ReadBack> {
    let voided = voided_keys(path)?;
    let mut reader = BufReader::new(File::open(path)?);
    let mut found = ReadBack {
        events: 0,
        unreadable: 0,
        torn_end: false,
    };
    let mut batch = Vec::with_capacity(max.min(256));
    let mut line = Vec::new();
    let mut index = 0;
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        // A void line, or the empty line a void line after a torn one
        // leaves: no event.
        if line == b"\n" || void_key(&line).is_some() {
            index += 1;
            continue;
        }
        match serde_json::from_slice::<KeyedEvent>(&line) {
            // Lines handed over before are still read, to count bad ones.
            Ok(e) if index >= *done && !e.key.as_ref().is_some_and(|k| voided.contains(k)) => {
                batch.push(e)
            }
            Ok(_) => {}
            // Each line was written whole, newline included, in one
            // write: a complete line that does not parse is not a power
            // cut's work.
            Err(_) if line.ends_with(b"\n") => found.unreadable += 1,
            // Only the last line can lack its newline.
            Err(_) => found.torn_end = true,
        }
        index += 1;
        if batch.len() >= max {
            found.events += batch.len();
            each(std::mem::take(&mut batch))?;
            *done = index;
        }
    }
    if !batch.is_empty() {
        found.events += batch.len();
        each(batch)?;
    }
    *done = index;
    Ok(found)
}

/// The keys a journal file's void lines take back (few: one per upload
/// whose commit failed after its event was synced).
fn voided_keys(path: &Path) -> io::Result<std::collections::HashSet<String>> {
    let mut voided = std::collections::HashSet::new();
    let mut reader = BufReader::new(File::open(path)?);
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Ok(voided);
        }
        voided.extend(void_key(&line));
    }
}

/// The key a void line takes back; `None` for any other line.
fn void_key(line: &[u8]) -> Option<String> {
    // Cheap test first: most lines are events.
    if !line.starts_with(b"{\"void\"") {
        return None;
    }
    serde_json::from_slice::<Void>(line).ok().map(|v| v.void)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn event(path: &str) -> KeyedEvent {
        KeyedEvent::new(crate::rules::tests::upload(path))
    }

    fn files(dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
            .map(|rd| rd.map(|e| e.unwrap().path()).collect())
            .unwrap_or_default();
        v.retain(|p| p.extension().is_some_and(|x| x == "jsonl"));
        v.sort();
        v
    }

    #[test]
    fn a_file_goes_once_its_events_are_stored_and_appends_have_moved_on() {
        let tmp = tempfile::tempdir().unwrap();
        let j = Journal::new(tmp.path().join("journal"));
        let g0 = j.append(&event("/a")).unwrap().generation;
        assert_eq!(files(&j.dir).len(), 1);
        // Stored, but still the file being appended to: kept.
        j.stored(&[g0]);
        assert_eq!(files(&j.dir).len(), 1);
        // Fill the file past the rotation size: the next append opens a
        // second file; the first goes once its last event is stored.
        let pad = "x".repeat(4096);
        let mut gens = Vec::new();
        while lock(&j.state).current.as_ref().unwrap().len < ROTATE_AT {
            gens.push(j.append(&event(&pad)).unwrap().generation);
        }
        let g1 = j.append(&event("/b")).unwrap().generation;
        assert_ne!(g1, g0);
        assert_eq!(files(&j.dir).len(), 2);
        let (last, rest) = gens.split_last().unwrap();
        j.stored(rest);
        assert_eq!(
            files(&j.dir).len(),
            2,
            "one event of the first file is not stored"
        );
        j.stored(&[*last]);
        assert_eq!(files(&j.dir), vec![j.path(g1)]);
        // A graceful stop removes what is stored and keeps what is not.
        j.finish();
        assert_eq!(files(&j.dir), vec![j.path(g1)]);
        j.stored(&[g1]);
        j.finish();
        assert!(files(&j.dir).is_empty());
        assert!(
            std::fs::read_dir(&j.dir).unwrap().next().is_none(),
            "the lock file goes with the last file"
        );
    }

    #[test]
    fn an_earlier_runs_file_is_read_back_in_batches_without_its_torn_end() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("journal");
        let before = Journal::new(dir.clone());
        let written: Vec<KeyedEvent> = (0..5).map(|i| event(&format!("/f{i}"))).collect();
        for e in &written {
            before.append(e).unwrap();
        }
        // A power cut in the middle of the next line.
        let path = before.path(0);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(br#"{"key":"0192","time":"20"#).unwrap();

        std::thread::sleep(std::time::Duration::from_millis(2));
        let now = Journal::new(dir.clone());
        now.append(&event("/this-run")).unwrap();
        // While the earlier run's process holds its lock (a stop still
        // draining), its files are not taken.
        assert!(now.earlier().is_empty());
        drop(before);
        assert_eq!(now.earlier(), vec![path.clone()]);
        // The spool refuses the second batch: the first is not handed over
        // again by the next call.
        let mut batches = Vec::new();
        let mut done = 0;
        let full = read_batches(&path, 2, &mut done, |b| {
            if !batches.is_empty() {
                return Err(io::Error::other("audit spool full"));
            }
            batches.push(b);
            Ok(())
        });
        assert!(full.is_err());
        assert_eq!(done, 2);
        let found = read_batches(&path, 2, &mut done, |b| {
            batches.push(b);
            Ok(())
        })
        .unwrap();
        assert_eq!(
            found,
            ReadBack {
                events: 3,
                unreadable: 0,
                torn_end: true
            }
        );
        assert_eq!(done, 6);
        assert_eq!(batches.iter().map(Vec::len).collect::<Vec<_>>(), [2, 2, 1]);
        let keys: Vec<_> = batches.concat().into_iter().map(|e| e.key).collect();
        let want: Vec<_> = written.into_iter().map(|e| e.key).collect();
        assert_eq!(keys, want);
    }

    #[test]
    fn a_voided_event_is_not_read_back_and_its_file_goes_when_the_rest_is_stored() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("journal");
        let before = Journal::new(dir.clone());
        let kept = event("/kept");
        let failed = event("/failed");
        let a = before.append(&kept).unwrap();
        let b = before.append(&failed).unwrap();
        assert_eq!(a.generation, b.generation);
        assert!(b.end > a.end);
        // Synced up to the second line: one call covers both (the first
        // sync also syncs the new file's folder).
        b.file.sync_upto(b.end).unwrap();
        a.file.sync_upto(a.end).unwrap();
        assert_eq!(*lock(&a.file.synced), b.end);
        assert_eq!(a.file.syncs.load(Ordering::Relaxed), 1);
        assert!(a.file.named.load(Ordering::Relaxed));
        before.void(&b, failed.key.as_deref().unwrap()).unwrap();
        before.append(&event("/after")).unwrap();
        let path = before.path(a.generation);
        let body = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = body.lines().collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(
            lines[2],
            format!(r#"{{"void":"{}"}}"#, failed.key.as_deref().unwrap()),
            "the void line sits between"
        );

        // A crash now: the next start reads the file without /failed.
        std::thread::sleep(std::time::Duration::from_millis(2));
        let now = Journal::new(dir.clone());
        drop(before);
        assert_eq!(now.earlier(), vec![path.clone()]);
        let mut read = Vec::new();
        let found = read_batches(&path, 256, &mut 0, |batch| {
            read.extend(batch.into_iter().filter_map(|e| e.event.path));
            Ok(())
        })
        .unwrap();
        assert_eq!(read, ["/kept", "/after"]);
        assert_eq!(
            found,
            ReadBack {
                events: 2,
                unreadable: 0,
                torn_end: false
            }
        );

        // Without a crash, the voided event counts as stored: the file goes
        // once the others are stored and appends moved on.
        let j = Journal::new(tmp.path().join("again"));
        let x = j.append(&event("/x")).unwrap();
        let y = j.append(&event("/y")).unwrap();
        j.void(&y, "whatever").unwrap();
        j.stored(&[x.generation]);
        j.finish();
        assert!(files(&j.dir).is_empty());
    }

    #[test]
    fn after_a_failed_sync_no_sync_of_that_file_succeeds_and_appends_move_on() {
        let tmp = tempfile::tempdir().unwrap();
        let j = Journal::new(tmp.path().join("journal"));
        let a = j.append(&event("/a")).unwrap();
        // What a failed fdatasync leaves (the kernel reports a write-back
        // error once, so a second call could wrongly succeed).
        a.file.sync_failed.store(true, Ordering::Release);
        assert!(a.file.sync_upto(a.end).is_err());
        let b = j.append(&event("/b")).unwrap();
        assert_ne!(b.generation, a.generation, "a new file");
        b.file.sync_upto(b.end).unwrap();
        // A void line after a torn append is a line of its own.
        b.file.torn.store(true, Ordering::Release);
        j.void(&b, "k").unwrap();
        let body = std::fs::read_to_string(j.path(b.generation)).unwrap();
        assert!(body.ends_with("\n\n{\"void\":\"k\"}\n"), "{body:?}");
        assert_eq!(voided_keys(&j.path(b.generation)).unwrap().len(), 1);
    }

    #[test]
    fn a_bad_line_before_the_end_is_not_taken_for_a_torn_end() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("1-000000.jsonl");
        let mut body = serde_json::to_vec(&event("/a")).unwrap();
        body.extend(b"\n{\"from\":\"another version\"}\n");
        body.extend(serde_json::to_vec(&event("/b")).unwrap());
        // A complete last line that does not parse is no torn end either.
        body.extend(b"\n{\"from\":\"another version\"}\n");
        std::fs::write(&path, body).unwrap();
        let mut paths = Vec::new();
        let found = read_batches(&path, 256, &mut 0, |b| {
            paths.extend(b.into_iter().map(|e| e.event.path));
            Ok(())
        })
        .unwrap();
        assert_eq!(
            found,
            ReadBack {
                events: 2,
                unreadable: 2,
                torn_end: false
            }
        );
        assert_eq!(paths, [Some("/a".to_owned()), Some("/b".to_owned())]);
    }
}

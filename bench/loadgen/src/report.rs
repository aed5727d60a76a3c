//! Counting while the load runs, and the report at its end.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use crate::Protocol;

/// Error messages kept in full (per protocol, and without a protocol).
const KEEP_MESSAGES: usize = 10;

/// What a timed step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    /// Connect, (TLS,) authenticate, set up: a new logged-in session.
    Login,
    /// The session's folder.
    Mkdir,
    /// One file up, acknowledged by the server.
    Upload,
    /// One folder listing.
    List,
    /// One file down, to its end.
    Download,
    /// One file removed.
    Delete,
    /// The session's folder removed at the end.
    Rmdir,
    /// QUIT / SSH disconnect.
    Logout,
}

impl Op {
    /// Lower-case name, as in the report.
    pub fn name(self) -> &'static str {
        match self {
            Op::Login => "login",
            Op::Mkdir => "mkdir",
            Op::Upload => "upload",
            Op::List => "list",
            Op::Download => "download",
            Op::Delete => "delete",
            Op::Rmdir => "rmdir",
            Op::Logout => "logout",
        }
    }
}

/// Latencies of one operation on one protocol.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Latency {
    /// Successful operations.
    pub count: u64,
    /// Median.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Slowest.
    pub max: Duration,
}

impl Latency {
    fn of(samples: &mut [u64]) -> Latency {
        if samples.is_empty() {
            return Latency::default();
        }
        samples.sort_unstable();
        // Nearest rank: the smallest sample with at least q of them at or below it.
        let at = |q: f64| {
            let i = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1;
            Duration::from_micros(samples[i])
        };
        Latency {
            count: samples.len() as u64,
            p50: at(0.50),
            p99: at(0.99),
            max: at(1.0),
        }
    }
}

/// What happened on one protocol.
#[derive(Debug, Clone, Default)]
pub struct ProtocolReport {
    /// Sessions (workers) that ran on this protocol.
    pub sessions: u64,
    /// Bytes uploaded (acknowledged).
    pub bytes_up: u64,
    /// Bytes downloaded.
    pub bytes_down: u64,
    /// Failed steps (each ends its connection; the session logs in again).
    pub errors: u64,
    /// Downloads whose length or SHA-256 differ from what was uploaded.
    pub corrupted: u64,
    /// The first error and corruption messages.
    pub messages: Vec<String>,
    /// Latency (and count) of each successful operation.
    pub ops: BTreeMap<Op, Latency>,
}

impl ProtocolReport {
    /// Successful operations of one kind.
    pub fn count(&self, op: Op) -> u64 {
        self.ops.get(&op).map_or(0, |l| l.count)
    }
}

/// The outcome of a run.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// From the first session's start to the last one's end.
    pub elapsed: Duration,
    /// Per protocol (only those that had sessions).
    pub protocols: BTreeMap<Protocol, ProtocolReport>,
    /// Errors that belong to no protocol (a session task that panicked or
    /// overran the run's time limit).
    pub other_errors: Vec<String>,
}

impl Report {
    /// Errors of all protocols, and the others.
    pub fn errors(&self) -> u64 {
        self.protocols.values().map(|p| p.errors).sum::<u64>() + self.other_errors.len() as u64
    }

    /// Corrupted downloads, all protocols.
    pub fn corrupted(&self) -> u64 {
        self.protocols.values().map(|p| p.corrupted).sum()
    }

    /// No error and no corrupted file.
    pub fn clean(&self) -> bool {
        self.errors() == 0 && self.corrupted() == 0
    }

    /// Successful operations of one kind, all protocols.
    pub fn count(&self, op: Op) -> u64 {
        self.protocols.values().map(|p| p.count(op)).sum()
    }
}

fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 10.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.0}")
    }
}

fn mib(b: u64) -> String {
    format!("{:.1}", b as f64 / (1024.0 * 1024.0))
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.elapsed.as_secs_f64().max(0.001);
        writeln!(f, "elapsed {secs:.1} s")?;
        writeln!(
            f,
            "{:<6} {:>8} {:>7} {:>8} {:>8} {:>9} {:>7} {:>9} {:>9} {:>7} {:>9}",
            "proto",
            "sessions",
            "logins",
            "listings",
            "uploads",
            "downloads",
            "deletes",
            "MiB up",
            "MiB down",
            "errors",
            "corrupted"
        )?;
        for (proto, p) in &self.protocols {
            writeln!(
                f,
                "{:<6} {:>8} {:>7} {:>8} {:>8} {:>9} {:>7} {:>9} {:>9} {:>7} {:>9}",
                proto.name(),
                p.sessions,
                p.count(Op::Login),
                p.count(Op::List),
                p.count(Op::Upload),
                p.count(Op::Download),
                p.count(Op::Delete),
                mib(p.bytes_up),
                mib(p.bytes_down),
                p.errors,
                p.corrupted
            )?;
        }
        let total_up: u64 = self.protocols.values().map(|p| p.bytes_up).sum();
        let total_down: u64 = self.protocols.values().map(|p| p.bytes_down).sum();
        writeln!(
            f,
            "total: {} ops/s, {} MiB/s up, {} MiB/s down, {} errors, {} corrupted",
            format_args!(
                "{:.0}",
                self.protocols
                    .values()
                    .flat_map(|p| p.ops.values())
                    .map(|l| l.count)
                    .sum::<u64>() as f64
                    / secs
            ),
            format_args!("{:.1}", total_up as f64 / secs / 1048576.0),
            format_args!("{:.1}", total_down as f64 / secs / 1048576.0),
            self.errors(),
            self.corrupted()
        )?;
        writeln!(f)?;
        writeln!(
            f,
            "{:<6} {:<9} {:>8} {:>9} {:>9} {:>9}",
            "proto", "op", "count", "p50 ms", "p99 ms", "max ms"
        )?;
        for (proto, p) in &self.protocols {
            for (op, l) in &p.ops {
                writeln!(
                    f,
                    "{:<6} {:<9} {:>8} {:>9} {:>9} {:>9}",
                    proto.name(),
                    op.name(),
                    l.count,
                    ms(l.p50),
                    ms(l.p99),
                    ms(l.max)
                )?;
            }
        }
        let messages: Vec<&String> = self
            .protocols
            .values()
            .flat_map(|p| p.messages.iter())
            .chain(self.other_errors.iter())
            .collect();
        if !messages.is_empty() {
            writeln!(f)?;
            writeln!(f, "first errors:")?;
            for m in messages {
                writeln!(f, "  {m}")?;
            }
        }
        Ok(())
    }
}

#[derive(Default)]
struct Acc {
    sessions: u64,
    bytes_up: u64,
    bytes_down: u64,
    errors: u64,
    corrupted: u64,
    messages: Vec<String>,
    /// Microseconds of each successful operation.
    samples: BTreeMap<Op, Vec<u64>>,
}

/// Shared counters (a lock taken per step, never across an await).
#[derive(Default)]
pub(crate) struct Stats {
    per: Mutex<BTreeMap<Protocol, Acc>>,
    other: Mutex<Vec<String>>,
}

impl Stats {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<Protocol, Acc>> {
        // Counters stay consistent even if a holder panicked.
        self.per.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn session(&self, p: Protocol) {
        self.lock().entry(p).or_default().sessions += 1;
    }

    pub(crate) fn done(&self, p: Protocol, op: Op, took: Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.lock()
            .entry(p)
            .or_default()
            .samples
            .entry(op)
            .or_default()
            .push(us);
    }

    pub(crate) fn bytes(&self, p: Protocol, up: u64, down: u64) {
        let mut g = self.lock();
        let a = g.entry(p).or_default();
        a.bytes_up += up;
        a.bytes_down += down;
    }

    pub(crate) fn error(&self, p: Option<Protocol>, message: String) {
        match p {
            Some(p) => {
                let mut g = self.lock();
                let a = g.entry(p).or_default();
                a.errors += 1;
                if a.messages.len() < KEEP_MESSAGES {
                    a.messages.push(message);
                }
            }
            None => self
                .other
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(message),
        }
    }

    pub(crate) fn corrupted(&self, p: Protocol, message: String) {
        let mut g = self.lock();
        let a = g.entry(p).or_default();
        a.corrupted += 1;
        if a.messages.len() < KEEP_MESSAGES {
            a.messages.push(format!("CORRUPTED {message}"));
        }
    }

    pub(crate) fn report(&self, elapsed: Duration) -> Report {
        let mut g = self.lock();
        let protocols = g
            .iter_mut()
            .map(|(proto, a)| {
                let ops = a
                    .samples
                    .iter_mut()
                    .map(|(op, s)| (*op, Latency::of(s)))
                    .collect();
                (
                    *proto,
                    ProtocolReport {
                        sessions: a.sessions,
                        bytes_up: a.bytes_up,
                        bytes_down: a.bytes_down,
                        errors: a.errors,
                        corrupted: a.corrupted,
                        messages: a.messages.clone(),
                        ops,
                    },
                )
            })
            .collect();
        Report {
            elapsed,
            protocols,
            other_errors: self.other.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let mut s: Vec<u64> = (1..=1000).rev().collect();
        let l = Latency::of(&mut s);
        assert_eq!(l.count, 1000);
        assert_eq!(l.p50, Duration::from_micros(500));
        assert_eq!(l.p99, Duration::from_micros(990));
        assert_eq!(l.max, Duration::from_micros(1000));
        assert_eq!(Latency::of(&mut []), Latency::default());
    }

    #[test]
    fn counts_errors_and_renders() {
        let st = Stats::default();
        st.session(Protocol::Sftp);
        st.done(Protocol::Sftp, Op::Upload, Duration::from_millis(3));
        st.bytes(Protocol::Sftp, 10, 0);
        st.error(Some(Protocol::Sftp), "boom".into());
        st.corrupted(Protocol::Sftp, "bad".into());
        st.error(None, "task".into());
        let r = st.report(Duration::from_secs(1));
        assert_eq!((r.errors(), r.corrupted(), r.clean()), (2, 1, false));
        assert_eq!(r.count(Op::Upload), 1);
        let text = r.to_string();
        assert!(text.contains("boom") && text.contains("CORRUPTED bad") && text.contains("task"));
    }
}

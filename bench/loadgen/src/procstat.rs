//! A server process's resident memory and open descriptors, from Linux
//! `/proc` (what the issue's "memory back near its baseline, descriptors
//! back to baseline" is measured with).

use std::collections::BTreeMap;
use std::io;
use std::time::{Duration, Instant};

/// One look at a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcSample {
    /// Resident set size (`VmRSS`), bytes.
    pub rss: u64,
    /// Entries of `/proc/<pid>/fd`.
    pub fds: usize,
}

impl std::fmt::Display for ProcSample {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "RSS {:.1} MiB, {} open descriptors",
            self.rss as f64 / (1024.0 * 1024.0),
            self.fds
        )
    }
}

/// Reads `VmRSS` and counts the open descriptors of `pid`.
pub fn sample(pid: u32) -> io::Result<ProcSample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| io::Error::other(format!("no VmRSS in /proc/{pid}/status")))?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count();
    Ok(ProcSample {
        rss: kib * 1024,
        fds,
    })
}

/// The open descriptors of `pid` by kind: `socket`, `pipe`,
/// `anon_inode:[eventfd]`..., or the file's path; to tell what stayed open.
pub fn descriptors(pid: u32) -> io::Result<BTreeMap<String, usize>> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        // A descriptor closed between the listing and the readlink is skipped.
        let Ok(target) = std::fs::read_link(entry?.path()) else {
            continue;
        };
        let t = target.to_string_lossy();
        let kind = match t.split_once(":[") {
            Some((k @ ("socket" | "pipe"), _)) => k.to_owned(),
            _ => t.into_owned(),
        };
        *out.entry(kind).or_insert(0) += 1;
    }
    Ok(out)
}

/// What `after` has more of than `before` (kind, extra count).
pub fn descriptors_added(
    before: &BTreeMap<String, usize>,
    after: &BTreeMap<String, usize>,
) -> Vec<(String, usize)> {
    after
        .iter()
        .filter_map(|(k, &n)| {
            let b = before.get(k).copied().unwrap_or(0);
            (n > b).then(|| (k.clone(), n - b))
        })
        .collect()
}

/// Samples `pid` every 250 ms until its RSS is at most `max_rss` and its
/// descriptors at most `max_fds`, or `limit` has passed: the last sample and
/// whether both bounds were met.
pub fn settle(
    pid: u32,
    max_rss: u64,
    max_fds: usize,
    limit: Duration,
) -> io::Result<(ProcSample, bool)> {
    let until = Instant::now() + limit;
    loop {
        let s = sample(pid)?;
        let ok = s.rss <= max_rss && s.fds <= max_fds;
        if ok || Instant::now() >= until {
            return Ok((s, ok));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_this_process() {
        let s = sample(std::process::id()).ok();
        assert!(s.is_some_and(|s| s.rss > 0 && s.fds >= 3), "{s:?}");
        let before = descriptors(std::process::id()).unwrap_or_default();
        let f = std::fs::File::open("/proc/self/status").ok();
        let after = descriptors(std::process::id()).unwrap_or_default();
        // Other tests of this binary run on other threads meanwhile and open
        // sockets and files of their own (even this one, through `sample`):
        // what this test opened must be among what was added.
        let status = "/proc/self/status".replace("self", &std::process::id().to_string());
        let added = descriptors_added(&before, &after);
        assert!(
            added.iter().any(|(k, n)| *k == status && *n >= 1),
            "{added:?}"
        );
        drop(f);
    }
}

//! Listing formats: `ls -l` lines for LIST and STAT, names for NLST, and
//! RFC 3659 fact lines for MLSD and MLST. Pure functions over metadata; the
//! streaming lives in `transfer`.

use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use dropgate_core::vfs::{FileKind, Metadata};

use crate::parse::Facts;

/// How far back a time is shown with its clock time rather than its year
/// (what `ls` does: about six months).
const RECENT: Duration = Duration::from_secs(182 * 24 * 3600);

/// Which listing a data connection carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ListFormat {
    /// LIST: `ls -l` lines.
    Long,
    /// NLST: names only.
    Names,
    /// MLSD: fact lines.
    Machine(Facts),
}

/// What the account may do with an entry, for the `perm` fact.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct EntryRights {
    pub(crate) list: bool,
    pub(crate) download: bool,
    pub(crate) upload: bool,
    pub(crate) overwrite: bool,
    pub(crate) delete: bool,
    pub(crate) rename: bool,
    pub(crate) mkdir: bool,
    pub(crate) rmdir: bool,
}

/// One `ls -l` line (without line end):
/// `-rw-r--r--    1 ftp      ftp          1234 Mar  4 12:00 name`.
pub(crate) fn long_line(name: &str, meta: &Metadata, now: SystemTime) -> String {
    let kind = match meta.kind {
        FileKind::Dir => 'd',
        FileKind::Symlink => 'l',
        FileKind::File | FileKind::Other => '-',
    };
    let mut mode = String::with_capacity(10);
    mode.push(kind);
    for shift in [6u32, 3, 0] {
        let bits = (meta.mode >> shift) & 7;
        mode.push(if bits & 4 != 0 { 'r' } else { '-' });
        mode.push(if bits & 2 != 0 { 'w' } else { '-' });
        mode.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    format!(
        "{mode} {nlink:>4} ftp      ftp      {size:>12} {time} {name}",
        nlink = meta.nlink.max(1),
        size = meta.size,
        time = ls_time(meta.modified, now),
    )
}

/// `Mar  4 12:00` for recent times, `Mar  4  2023` for old or future ones.
pub(crate) fn ls_time(t: SystemTime, now: SystemTime) -> String {
    let dt: DateTime<Utc> = t.into();
    let recent = match now.duration_since(t) {
        Ok(age) => age < RECENT,
        // Up to an hour in the future still counts as recent (clock skew).
        Err(e) => e.duration() < Duration::from_secs(3600),
    };
    if recent {
        dt.format("%b %e %H:%M").to_string()
    } else {
        dt.format("%b %e  %Y").to_string()
    }
}

/// `YYYYMMDDHHMMSS` (UTC), the MDTM reply and the `modify` fact.
pub(crate) fn timeval(t: SystemTime) -> String {
    let dt: DateTime<Utc> = t.into();
    dt.format("%Y%m%d%H%M%S").to_string()
}

/// The facts of one entry followed by `; name` (no line ending), e.g.
/// `type=file;size=3;modify=20240101120000;perm=adfrw;unique=1f; a.txt`.
pub(crate) fn facts_line(name: &str, meta: &Metadata, facts: Facts, rights: EntryRights) -> String {
    let mut s = String::with_capacity(96 + name.len());
    if facts.kind {
        s.push_str(if meta.is_dir() {
            "type=dir;"
        } else if meta.is_file() {
            "type=file;"
        } else {
            "type=OS.unix=other;"
        });
    }
    if facts.size && !meta.is_dir() {
        s.push_str(&format!("size={};", meta.size));
    }
    if facts.modify {
        s.push_str(&format!("modify={};", timeval(meta.modified)));
    }
    if facts.perm {
        s.push_str("perm=");
        s.push_str(&perm_fact(meta.is_dir(), rights));
        s.push(';');
    }
    if facts.unique {
        s.push_str(&format!("unique={:x};", meta.unique));
    }
    s.push(' ');
    s.push_str(name);
    s
}

/// RFC 3659 `perm` letters from what the account may do.
pub(crate) fn perm_fact(is_dir: bool, r: EntryRights) -> String {
    let mut p = String::new();
    let mut add = |on: bool, c: char| {
        if on {
            p.push(c);
        }
    };
    if is_dir {
        add(r.upload, 'c');
        add(r.rmdir, 'd');
        add(r.list, 'e');
        add(r.rename, 'f');
        add(r.list, 'l');
        add(r.mkdir, 'm');
        add(r.delete, 'p');
    } else {
        add(r.overwrite, 'a');
        add(r.delete, 'd');
        add(r.rename, 'f');
        add(r.download, 'r');
        add(r.overwrite, 'w');
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(kind: FileKind, size: u64, mode: u32, modified: SystemTime) -> Metadata {
        Metadata {
            kind,
            size,
            modified,
            accessed: modified,
            mode,
            nlink: 1,
            unique: 0x2a,
        }
    }

    // 2024-03-04 12:05:09 UTC
    const T: u64 = 1_709_553_909;

    #[test]
    fn ls_line_recent_and_old() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(T);
        let now = t + Duration::from_secs(3600);
        assert_eq!(
            long_line("a b.txt", &meta(FileKind::File, 1234, 0o100644, t), now),
            "-rw-r--r--    1 ftp      ftp              1234 Mar  4 12:05 a b.txt"
        );
        let later = t + Duration::from_secs(400 * 24 * 3600);
        assert_eq!(
            long_line("dir", &meta(FileKind::Dir, 4096, 0o40755, t), later),
            "drwxr-xr-x    1 ftp      ftp              4096 Mar  4  2024 dir"
        );
    }

    #[test]
    fn future_times_show_the_year() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(T);
        assert_eq!(ls_time(t, t - Duration::from_secs(60)), "Mar  4 12:05");
        assert_eq!(
            ls_time(t, t - Duration::from_secs(86400 * 30)),
            "Mar  4  2024"
        );
        let two_digit_day = t + Duration::from_secs(10 * 86400);
        assert_eq!(ls_time(two_digit_day, two_digit_day), "Mar 14 12:05");
    }

    #[test]
    fn mdtm_timeval() {
        assert_eq!(
            timeval(SystemTime::UNIX_EPOCH + Duration::from_secs(T)),
            "20240304120509"
        );
    }

    #[test]
    fn facts() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(T);
        let all = EntryRights {
            list: true,
            download: true,
            upload: true,
            overwrite: true,
            delete: true,
            rename: true,
            mkdir: true,
            rmdir: true,
        };
        assert_eq!(
            facts_line(
                "x.bin",
                &meta(FileKind::File, 3, 0o100644, t),
                Facts::ALL,
                all
            ),
            "type=file;size=3;modify=20240304120509;perm=adfrw;unique=2a; x.bin"
        );
        assert_eq!(
            facts_line("d", &meta(FileKind::Dir, 4096, 0o40755, t), Facts::ALL, all),
            "type=dir;modify=20240304120509;perm=cdeflmp;unique=2a; d"
        );
        let read_only = EntryRights {
            list: true,
            download: true,
            ..EntryRights::default()
        };
        assert_eq!(
            facts_line(
                "x",
                &meta(FileKind::File, 3, 0o100644, t),
                Facts {
                    size: true,
                    perm: true,
                    ..Facts::NONE
                },
                read_only
            ),
            "size=3;perm=r; x"
        );
    }
}

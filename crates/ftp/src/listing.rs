//! Listing formats: `ls -l` lines for LIST and STAT, names for NLST, and
//! RFC 3659 fact lines for MLSD and MLST. Pure functions over metadata; the
//! streaming lives in `transfer`.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Datelike, Timelike, Utc};
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
    let dt = utc(t);
    let recent = match now.duration_since(t) {
        Ok(age) => age < RECENT,
        // Up to an hour in the future still counts as recent (clock skew).
        Err(e) => e.duration() < Duration::from_secs(3600),
    };
    let Some(year) = four_digit_year(&dt) else {
        let pattern = if recent { "%b %e %H:%M" } else { "%b %e  %Y" };
        return dt.format(pattern).to_string();
    };
    let mut s = String::with_capacity(12);
    s.push_str(MONTHS[dt.month0() as usize]);
    s.push(' ');
    if dt.day() < 10 {
        s.push(' ');
        push_digits(&mut s, dt.day(), 1);
    } else {
        push_digits(&mut s, dt.day(), 2);
    }
    if recent {
        s.push(' ');
        push_digits(&mut s, dt.hour(), 2);
        s.push(':');
        push_digits(&mut s, dt.minute(), 2);
    } else {
        s.push_str("  ");
        push_digits(&mut s, year, 4);
    }
    s
}

/// `YYYYMMDDHHMMSS` (UTC), the MDTM reply and the `modify` fact.
pub(crate) fn timeval(t: SystemTime) -> String {
    let mut s = String::with_capacity(14);
    push_timeval(&mut s, t);
    s
}

/// [`timeval`] appended to `out`. Listings call these once per entry and
/// every MFMT once, so they are written digit by digit: chrono's `format`
/// parses its pattern again on every call (about 2,000 instructions, most
/// of a small upload's MFMT reply). Years beyond four digits, which no
/// fixed-width field can hold, keep chrono's way of writing them.
pub(crate) fn push_timeval(out: &mut String, t: SystemTime) {
    let dt = utc(t);
    let Some(year) = four_digit_year(&dt) else {
        let _ = write!(out, "{}", dt.format("%Y%m%d%H%M%S"));
        return;
    };
    push_digits(out, year, 4);
    for part in [dt.month(), dt.day(), dt.hour(), dt.minute(), dt.second()] {
        push_digits(out, part, 2);
    }
}

/// `t` in UTC. chrono's own conversion panics beyond its range (about
/// 262,000 years either way), which a file's time on disk can be: such
/// times show as chrono's first or last instant.
fn utc(t: SystemTime) -> DateTime<Utc> {
    let (secs, nanos) = match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => (i64::try_from(d.as_secs()).ok(), d.subsec_nanos()),
        Err(e) => {
            let d = e.duration();
            let secs = i64::try_from(d.as_secs()).ok().map(|s| -s);
            match d.subsec_nanos() {
                0 => (secs, 0),
                n => (secs.and_then(|s| s.checked_sub(1)), 1_000_000_000 - n),
            }
        }
    };
    secs.and_then(|s| DateTime::from_timestamp(s, nanos))
        .unwrap_or(if t < SystemTime::UNIX_EPOCH {
            DateTime::<Utc>::MIN_UTC
        } else {
            DateTime::<Utc>::MAX_UTC
        })
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

fn four_digit_year(dt: &DateTime<Utc>) -> Option<u32> {
    u32::try_from(dt.year()).ok().filter(|y| *y <= 9999)
}

/// `value`'s last `width` decimal digits, zero-padded.
fn push_digits(out: &mut String, value: u32, width: u32) {
    for place in (0..width).rev() {
        let digit = value / 10u32.pow(place) % 10;
        out.push(char::from(b'0' + digit as u8));
    }
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
        let _ = write!(s, "size={};", meta.size);
    }
    if facts.modify {
        s.push_str("modify=");
        push_timeval(&mut s, meta.modified);
        s.push(';');
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
    fn times_written_by_hand_match_chrono() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(T);
        let mut times = vec![
            SystemTime::UNIX_EPOCH,
            SystemTime::UNIX_EPOCH - Duration::from_secs(1),
            // 9999-12-31 23:59:59 and one second later (a five-digit year).
            SystemTime::UNIX_EPOCH + Duration::from_secs(253_402_300_799),
            SystemTime::UNIX_EPOCH + Duration::from_secs(253_402_300_800),
        ];
        // Every month and day-of-month width, recent and old, both sides of now.
        for step in 0..800u64 {
            times.push(now - Duration::from_secs(step * 86_400 + step * 3_671));
            times.push(now + Duration::from_secs(step * 37));
        }
        for t in times {
            let dt: DateTime<Utc> = t.into();
            assert_eq!(utc(t), dt);
            assert_eq!(timeval(t), dt.format("%Y%m%d%H%M%S").to_string(), "{dt}");
            let recent = match now.duration_since(t) {
                Ok(age) => age < RECENT,
                Err(e) => e.duration() < Duration::from_secs(3600),
            };
            let pattern = if recent { "%b %e %H:%M" } else { "%b %e  %Y" };
            assert_eq!(ls_time(t, now), dt.format(pattern).to_string(), "{dt}");
        }
    }

    #[test]
    fn times_beyond_chronos_range_do_not_panic() {
        let far = Duration::from_secs(1 << 50);
        let late = SystemTime::UNIX_EPOCH + far;
        assert_eq!(utc(late), DateTime::<Utc>::MAX_UTC);
        assert!(timeval(late).starts_with("+262"), "{}", timeval(late));
        assert!(!ls_time(late, SystemTime::UNIX_EPOCH).is_empty());
        let early = SystemTime::UNIX_EPOCH - far;
        assert_eq!(utc(early), DateTime::<Utc>::MIN_UTC);
        assert!(!timeval(early).is_empty());
        let just_before = SystemTime::UNIX_EPOCH - Duration::from_millis(1500);
        assert_eq!(utc(just_before).timestamp_millis(), -1500);
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

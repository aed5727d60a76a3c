//! Turning core metadata into SFTP attributes and `ls -l` long names. Pure.

use std::time::{SystemTime, UNIX_EPOCH};

use dropgate_vfs::{FileKind, Metadata};

use crate::codec::Attrs;

const S_IFMT: u32 = 0o170000;

/// The file-type bits for a kind, for backends that report only permissions.
fn type_bits(kind: FileKind) -> u32 {
    match kind {
        FileKind::File => 0o100000,
        FileKind::Dir => 0o040000,
        FileKind::Symlink => 0o120000,
        FileKind::Other => 0o010000,
    }
}

/// Seconds since the epoch, clamped into the v3 32-bit field.
fn epoch_secs(t: SystemTime) -> u32 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs().min(u64::from(u32::MAX)) as u32)
        .unwrap_or(0)
}

/// The mode with file-type bits always present.
fn full_mode(meta: &Metadata) -> u32 {
    if meta.mode & S_IFMT == 0 {
        meta.mode | type_bits(meta.kind)
    } else {
        meta.mode
    }
}

/// SFTP attributes of an entry. Owner ids are left out on purpose: they are
/// host uids that mean nothing inside the jail.
pub(crate) fn attrs_of(meta: &Metadata) -> Attrs {
    Attrs {
        size: Some(meta.size),
        uid_gid: None,
        permissions: Some(full_mode(meta)),
        times: Some((epoch_secs(meta.accessed), epoch_secs(meta.modified))),
        extended: Vec::new(),
    }
}

/// `drwxr-xr-x`-style mode string (BSD `strmode`, as OpenSSH uses).
fn mode_string(mode: u32) -> String {
    let kind = match mode & S_IFMT {
        0o040000 => 'd',
        0o120000 => 'l',
        0o010000 => 'p',
        0o140000 => 's',
        0o020000 => 'c',
        0o060000 => 'b',
        _ => '-',
    };
    let mut s = String::with_capacity(10);
    s.push(kind);
    let bit = |m: u32, c: char| if mode & m != 0 { c } else { '-' };
    let special = |x: u32, special: u32, set_x: char, set_nox: char| match (
        mode & x != 0,
        mode & special != 0,
    ) {
        (true, true) => set_x,
        (false, true) => set_nox,
        (true, false) => 'x',
        (false, false) => '-',
    };
    s.push(bit(0o400, 'r'));
    s.push(bit(0o200, 'w'));
    s.push(special(0o100, 0o4000, 's', 'S'));
    s.push(bit(0o040, 'r'));
    s.push(bit(0o020, 'w'));
    s.push(special(0o010, 0o2000, 's', 'S'));
    s.push(bit(0o004, 'r'));
    s.push(bit(0o002, 'w'));
    s.push(special(0o001, 0o1000, 't', 'T'));
    s
}

/// (year, month 1-12, day 1-31) of a day count since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    // Howard Hinnant's algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// `%b %e %H:%M` for the last six months, else `%b %e  %Y` (UTC), as `ls -l`.
fn ls_date(mtime: u64, now: u64) -> String {
    let days = (mtime / 86_400) as i64;
    let (y, m, d) = civil_from_days(days);
    let month = MONTHS[(m as usize).saturating_sub(1) % 12];
    let recent = mtime <= now && now - mtime < 365 * 86_400 / 2;
    if recent {
        let secs = mtime % 86_400;
        format!("{month} {d:>2} {:02}:{:02}", secs / 3600, secs % 3600 / 60)
    } else {
        format!("{month} {d:>2}  {y}")
    }
}

/// The `ls -l` line OpenSSH's server sends as a NAME entry's longname.
pub(crate) fn long_name(name: &str, meta: &Metadata, owner: &str, now: SystemTime) -> String {
    let mtime = meta
        .modified
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let now = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!(
        "{} {:>3} {:<8} {:<8} {:>8} {} {}",
        mode_string(full_mode(meta)),
        meta.nlink,
        owner,
        owner,
        meta.size,
        ls_date(mtime, now),
        name
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn meta(kind: FileKind, mode: u32, size: u64, mtime: u64) -> Metadata {
        Metadata {
            kind,
            size,
            modified: UNIX_EPOCH + Duration::from_secs(mtime),
            accessed: UNIX_EPOCH + Duration::from_secs(mtime + 1),
            mode,
            nlink: 1,
            unique: 0,
        }
    }

    #[test]
    fn mode_strings() {
        assert_eq!(mode_string(0o100644), "-rw-r--r--");
        assert_eq!(mode_string(0o040755), "drwxr-xr-x");
        assert_eq!(mode_string(0o120777), "lrwxrwxrwx");
        assert_eq!(mode_string(0o104755), "-rwsr-xr-x");
        assert_eq!(mode_string(0o102644), "-rw-r-Sr--");
        assert_eq!(mode_string(0o041777), "drwxrwxrwt");
    }

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        // 2024-03-05 14:07:09 UTC
        let t = 1_709_647_629;
        assert_eq!(ls_date(t, t + 3600), "Mar  5 14:07");
        assert_eq!(ls_date(t, t + 400 * 86_400), "Mar  5  2024");
        // Future timestamps show the year too, as ls does.
        assert_eq!(ls_date(t, t - 10), "Mar  5  2024");
    }

    #[test]
    fn long_name_matches_openssh_layout() {
        let now = UNIX_EPOCH + Duration::from_secs(1_709_647_629 + 60);
        let m = meta(FileKind::File, 0o100644, 1234, 1_709_647_629);
        assert_eq!(
            long_name("a.txt", &m, "alice", now),
            "-rw-r--r--   1 alice    alice        1234 Mar  5 14:07 a.txt"
        );
        let d = meta(FileKind::Dir, 0o755, 4096, 1_709_647_629);
        assert!(
            long_name("sub", &d, "bob", now)
                .starts_with("drwxr-xr-x   1 bob      bob          4096 ")
        );
    }

    #[test]
    fn attrs_carry_size_mode_times() {
        let m = meta(FileKind::Dir, 0o755, 7, 100);
        let a = attrs_of(&m);
        assert_eq!(a.size, Some(7));
        assert_eq!(a.permissions, Some(0o040755));
        assert_eq!(a.times, Some((101, 100)));
        assert_eq!(a.uid_gid, None);
    }
}

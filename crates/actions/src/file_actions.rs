//! Move, copy and retention: file actions inside an account's home, done
//! through a core [`Session`] so the jail, the quota and (for move and
//! copy) the account's permissions hold exactly as for the partner.

use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use dropgate_core::vfs::{VfsError, VirtualPath, WriteStart};
use dropgate_core::{FsError, Session};

/// Why a file action did not complete.
#[derive(Debug, thiserror::Error)]
pub enum FileActionError {
    /// The target template does not give a valid path.
    #[error("target path: {0}")]
    BadTarget(String),
    /// The event has no file to act on.
    #[error("the event names no file")]
    NoSource,
    /// The operation failed.
    #[error("{0}")]
    Fs(#[from] FsError),
}

impl FileActionError {
    /// Failures retrying cannot fix (the file is gone, the target exists,
    /// the template is wrong, permissions refuse).
    pub fn is_permanent(&self) -> bool {
        match self {
            FileActionError::BadTarget(_) | FileActionError::NoSource => true,
            FileActionError::Fs(e) => matches!(
                e,
                FsError::Denied
                    | FsError::Vfs(VfsError::NotFound)
                    | FsError::Vfs(VfsError::AlreadyExists)
                    | FsError::Vfs(VfsError::InvalidName(_))
                    | FsError::Vfs(VfsError::PermissionDenied)
                    | FsError::Vfs(VfsError::IsADirectory)
            ),
        }
    }
}

/// The placeholders of SPEC 8 filled in: `{name}`, `{dir}`, `{path}`,
/// `{date}` (UTC `YYYY-MM-DD` of the event), `{username}`.
pub fn expand_target(
    template: &str,
    source: &VirtualPath,
    username: &str,
    time: DateTime<Utc>,
) -> Result<VirtualPath, FileActionError> {
    let name = source.file_name().unwrap_or_default();
    let dir = source.parent();
    let date = time.format("%Y-%m-%d").to_string();
    let mut out = String::with_capacity(template.len() + 32);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open..];
        let Some(close) = after.find('}') else {
            return Err(FileActionError::BadTarget(format!(
                "unclosed placeholder in {template:?}"
            )));
        };
        let value = match &after[1..close] {
            "name" => name,
            "dir" => dir.as_str(),
            "path" => source.as_str(),
            "date" => &date,
            "username" => username,
            other => {
                return Err(FileActionError::BadTarget(format!(
                    "unknown placeholder {{{other}}}"
                )));
            }
        };
        out.push_str(value);
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    if !out.starts_with('/') {
        return Err(FileActionError::BadTarget(format!(
            "{out:?} is not absolute"
        )));
    }
    VirtualPath::parse(&out).map_err(|e| FileActionError::BadTarget(e.to_string()))
}

/// Checks a target template when a rule is saved (placeholders known,
/// absolute, a valid path once filled in).
pub fn validate_target(template: &str) -> Result<(), String> {
    let sample = VirtualPath::parse("/in/file.csv").map_err(|e| e.to_string())?;
    expand_target(template, &sample, "user", Utc::now())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Creates every missing folder above `path`.
async fn create_parents(session: &Session, path: &VirtualPath) -> Result<(), FsError> {
    let mut missing = Vec::new();
    let mut dir = path.parent();
    while !dir.is_root() {
        match session.metadata(&dir).await {
            Ok(m) if m.is_dir() => break,
            Ok(_) => return Err(FsError::Vfs(VfsError::NotADirectory)),
            Err(FsError::Vfs(VfsError::NotFound)) => {
                missing.push(dir.clone());
                dir = dir.parent();
            }
            Err(e) => return Err(e),
        }
    }
    for d in missing.into_iter().rev() {
        match session.create_dir(&d).await {
            Ok(()) | Err(FsError::Vfs(VfsError::AlreadyExists)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Moves `source` to `target` (never over an existing file).
pub async fn move_file(
    session: &Session,
    source: &VirtualPath,
    target: &VirtualPath,
) -> Result<String, FileActionError> {
    if source == target {
        return Ok(format!("{source} is already in place"));
    }
    create_parents(session, target).await?;
    session.rename(source, target, false).await?;
    Ok(format!("moved {source} to {target}"))
}

/// Copies `source` to `target` (never over an existing file), streaming.
pub async fn copy_file(
    session: &Session,
    source: &VirtualPath,
    target: &VirtualPath,
) -> Result<String, FileActionError> {
    create_parents(session, target).await?;
    let download = session.open_download(source).await?;
    let upload = session
        .open_upload(target, WriteStart::Truncate, true)
        .await?;
    let reader = download.reader().clone();
    let len = reader.len();
    let mut off = 0u64;
    while off < len {
        let chunk = match reader.read_at(off, 1 << 20).await {
            Ok(c) => c,
            Err(e) => {
                download.finish(Some("read failed"));
                upload.abort("read failed").await;
                return Err(FsError::from(e).into());
            }
        };
        if chunk.is_empty() {
            break;
        }
        let n = chunk.len() as u64;
        download.add_bytes(n);
        if let Err(e) = upload.write_at(off, chunk).await {
            download.finish(Some("write failed"));
            upload.abort("write failed").await;
            return Err(e.into());
        }
        off += n;
    }
    download.finish(None);
    let size = upload.commit().await?;
    Ok(format!("copied {source} to {target} ({size} bytes)"))
}

/// What a retention pass did in one home.
#[derive(Debug, Default, Clone, Copy)]
pub struct Swept {
    /// Files removed.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Files that could not be removed.
    pub errors: u64,
}

/// Deletes regular files below `root` last modified before `older_than`
/// ago. Symbolic links are neither followed nor removed; folders stay.
pub async fn sweep(
    session: &Session,
    root: &VirtualPath,
    older_than: Duration,
) -> Result<Swept, FileActionError> {
    let cutoff = SystemTime::now()
        .checked_sub(older_than)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let mut swept = Swept::default();
    match session.symlink_metadata(root).await {
        Ok(m) if m.is_dir() => {}
        // Nothing to clean in this home.
        Ok(_) | Err(FsError::Vfs(VfsError::NotFound)) => return Ok(swept),
        Err(e) => return Err(e.into()),
    }
    // Depth-first with an explicit stack: a deep tree cannot overflow it,
    // and only one folder's listing is open at a time.
    let mut folders = vec![root.clone()];
    while let Some(dir) = folders.pop() {
        let mut entries = match session.list(&dir).await {
            Ok(s) => s,
            Err(_) => {
                swept.errors += 1;
                continue;
            }
        };
        // Old files go as they are listed (removing entries already read
        // does not disturb the listing): a folder of a million old files
        // is never held in memory.
        while let Some(entry) = entries.next().await {
            let Ok(entry) = entry else {
                swept.errors += 1;
                continue;
            };
            let Ok(path) = dir.join(&entry.name) else {
                continue;
            };
            // The listing follows links; look at the entry itself.
            let Ok(own) = session.symlink_metadata(&path).await else {
                continue;
            };
            if own.is_dir() {
                folders.push(path);
            } else if own.is_file() && own.modified < cutoff {
                // Decided again at the removal, on a path reached without
                // following links: a folder swapped for a symlink since the
                // listing cannot point the removal elsewhere.
                match session.remove_if_older(&path, cutoff).await {
                    Ok(Some(size)) => {
                        swept.files += 1;
                        swept.bytes += size;
                    }
                    Ok(None) | Err(FsError::Vfs(VfsError::NotFound)) => {}
                    Err(_) => swept.errors += 1,
                }
            }
        }
    }
    Ok(swept)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_fill_in_and_stay_in_the_jail() {
        let src = VirtualPath::parse("/inbox/a b.csv").expect("path");
        let t = DateTime::parse_from_rfc3339("2026-12-02T10:00:00Z")
            .expect("time")
            .with_timezone(&Utc);
        let p = expand_target("/processed/{date}/{name}", &src, "alice", t).expect("ok");
        assert_eq!(p.as_str(), "/processed/2026-12-02/a b.csv");
        let p =
            expand_target("/by-user/{username}{dir}/{name}.done", &src, "alice", t).expect("ok");
        assert_eq!(p.as_str(), "/by-user/alice/inbox/a b.csv.done");
        assert!(expand_target("/x/{nope}", &src, "a", t).is_err());
        assert!(expand_target("relative/{name}", &src, "a", t).is_err());
        assert!(expand_target("/x/{name", &src, "a", t).is_err());
        // `..` cannot climb out: the result is a jailed virtual path.
        if let Ok(p) = expand_target("/../../etc/{name}", &src, "a", t) {
            assert_eq!(p.as_str(), "/etc/a b.csv");
        }
        assert!(validate_target("/processed/{date}/{name}").is_ok());
        assert!(validate_target("/processed/{when}").is_err());
    }
}

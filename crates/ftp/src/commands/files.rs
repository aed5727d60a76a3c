//! DELE, RNFR, RNTO, MKD, RMD, SIZE, MDTM, MFMT, HASH.

use std::io;
use std::time::SystemTime;

use dropgate_core::store::Permission;
use dropgate_core::vfs::VirtualPath;
use dropgate_core::{FsError, Session};
use sha2::{Digest, Sha256};

use crate::connection::{Connection, Flow};
use crate::error::fs_reply;
use crate::listing::timeval;
use crate::reply::{Reply, quote_path};

/// Read size when hashing a file that has no local descriptor.
const HASH_CHUNK: usize = 1 << 20;

impl Connection {
    /// Resolves `arg`, or sends the refusal and returns `None`.
    async fn path_or_reply(&mut self, arg: &str) -> io::Result<Option<VirtualPath>> {
        match self.resolve(arg) {
            Ok(p) => Ok(Some(p)),
            Err(r) => {
                self.send(r).await?;
                Ok(None)
            }
        }
    }

    /// Sends `ok` or the reply for `err`.
    async fn done(&mut self, result: Result<Reply, FsError>) -> io::Result<Flow> {
        let reply = result.unwrap_or_else(|e| fs_reply(&e));
        self.send(reply).await?;
        Ok(Flow::Continue)
    }

    pub(super) async fn dele(&mut self, session: &Session, arg: &str) -> io::Result<Flow> {
        let Some(path) = self.path_or_reply(arg).await? else {
            return Ok(Flow::Continue);
        };
        let r = session
            .remove_file(&path)
            .await
            .map(|()| Reply::new(250, "File deleted."));
        self.done(r).await
    }

    pub(super) async fn rnfr(&mut self, session: &Session, arg: &str) -> io::Result<Flow> {
        let Some(path) = self.path_or_reply(arg).await? else {
            return Ok(Flow::Continue);
        };
        let exists = match session.symlink_metadata(&path).await {
            Ok(_) => Ok(()),
            // The parent may not be listed, but the account may rename here:
            // RNTO will tell.
            Err(FsError::Denied) if session.allows(&path, Permission::Rename) => Ok(()),
            Err(e) => Err(e),
        };
        match exists {
            Ok(()) => {
                self.rename_from = Some(path);
                self.reply(350, "Ready for RNTO.").await
            }
            Err(e) => self.done(Err(e)).await,
        }
    }

    pub(super) async fn rnto(&mut self, session: &Session, arg: &str) -> io::Result<Flow> {
        let Some(from) = self.rename_from.take() else {
            return self.reply(503, "RNFR required first.").await;
        };
        let Some(to) = self.path_or_reply(arg).await? else {
            return Ok(Flow::Continue);
        };
        // FTP renames replace an existing target (as vsftpd does).
        let r = session
            .rename(&from, &to, true)
            .await
            .map(|()| Reply::new(250, "Rename successful."));
        self.done(r).await
    }

    pub(super) async fn mkd(&mut self, session: &Session, arg: &str) -> io::Result<Flow> {
        let Some(path) = self.path_or_reply(arg).await? else {
            return Ok(Flow::Continue);
        };
        let r = session
            .create_dir(&path)
            .await
            .map(|()| Reply::new(257, format!("\"{}\" created", quote_path(path.as_str()))));
        self.done(r).await
    }

    pub(super) async fn rmd(&mut self, session: &Session, arg: &str) -> io::Result<Flow> {
        let Some(path) = self.path_or_reply(arg).await? else {
            return Ok(Flow::Continue);
        };
        let r = session
            .remove_dir(&path)
            .await
            .map(|()| Reply::new(250, "Directory removed."));
        self.done(r).await
    }

    /// SIZE: the stored size, also in ASCII mode (as vsftpd).
    pub(super) async fn size(&mut self, session: &Session, arg: &str) -> io::Result<Flow> {
        let Some(path) = self.path_or_reply(arg).await? else {
            return Ok(Flow::Continue);
        };
        let r = session.metadata(&path).await.map(|m| {
            if m.is_file() {
                Reply::new(213, m.size.to_string())
            } else {
                Reply::new(550, "Could not get file size.")
            }
        });
        self.done(r).await
    }

    pub(super) async fn mdtm(&mut self, session: &Session, arg: &str) -> io::Result<Flow> {
        let Some(path) = self.path_or_reply(arg).await? else {
            return Ok(Flow::Continue);
        };
        let r = session
            .metadata(&path)
            .await
            .map(|m| Reply::new(213, timeval(m.modified)));
        self.done(r).await
    }

    pub(super) async fn mfmt(
        &mut self,
        session: &Session,
        modified: SystemTime,
        arg: &str,
    ) -> io::Result<Flow> {
        let Some(path) = self.path_or_reply(arg).await? else {
            return Ok(Flow::Continue);
        };
        let r = session
            .set_times(&path, None, Some(modified))
            .await
            .map(|()| Reply::new(213, format!("Modify={}; {}", timeval(modified), arg)));
        self.done(r).await
    }

    /// HASH: SHA-256 of the whole file (needs `download`, like reading it).
    pub(super) async fn hash(&mut self, session: &Session, arg: &str) -> io::Result<Flow> {
        let Some(path) = self.path_or_reply(arg).await? else {
            return Ok(Flow::Continue);
        };
        let download = match session.open_download(&path).await {
            Ok(d) => d,
            Err(e) => return self.done(Err(e)).await,
        };
        let len = download.len();
        let kicked = session.cancelled();
        let digest = tokio::select! {
            d = sha256_of(&download) => d,
            _ = self.shutdown.cancelled() => Err(FsError::Closed),
            _ = kicked.cancelled() => Err(FsError::Closed),
        };
        match digest {
            Ok(hex) => {
                download.finish(None);
                self.reply(213, format!("SHA-256 0-{len} {hex} {arg}"))
                    .await
            }
            Err(e) => {
                download.finish(Some(&e.to_string()));
                self.done(Err(e)).await
            }
        }
    }
}

/// SHA-256 of a download's content, off the async threads.
async fn sha256_of(download: &dropgate_core::Download) -> Result<String, FsError> {
    let reader = download.reader().clone();
    let len = reader.len();
    if reader.local_file().is_some() {
        return tokio::task::spawn_blocking(move || -> Result<String, FsError> {
            use std::os::unix::fs::FileExt;
            let Some(file) = reader.local_file() else {
                return Err(FsError::Closed);
            };
            let mut hasher = Sha256::new();
            let mut buf = vec![0u8; HASH_CHUNK];
            let mut pos = 0u64;
            while pos < len {
                let want =
                    usize::try_from((len - pos).min(HASH_CHUNK as u64)).unwrap_or(HASH_CHUNK);
                let n = file
                    .read_at(&mut buf[..want], pos)
                    .map_err(|e| FsError::from(dropgate_core::vfs::VfsError::from(e)))?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                pos += n as u64;
            }
            Ok(hex::encode(hasher.finalize()))
        })
        .await
        .map_err(|e| FsError::from(dropgate_core::vfs::VfsError::Io(io::Error::other(e))))?;
    }
    let mut hasher = Sha256::new();
    let mut pos = 0u64;
    while pos < len {
        let want = usize::try_from((len - pos).min(HASH_CHUNK as u64)).unwrap_or(HASH_CHUNK);
        let chunk = reader.read_at(pos, want).await?;
        if chunk.is_empty() {
            break;
        }
        hasher.update(&chunk);
        pos += chunk.len() as u64;
    }
    Ok(hex::encode(hasher.finalize()))
}

//! PWD, CWD, CDUP.

use std::io;

use dropgate_core::store::Permission;
use dropgate_core::{ErrorClass, FsError, Session};

use crate::connection::{Connection, Flow};
use crate::error::fs_reply;
use crate::reply::{Reply, quote_path};

/// Every permission: having any of them on a folder makes it a place the
/// account may go to.
const ANY: [Permission; 9] = [
    Permission::List,
    Permission::Download,
    Permission::Upload,
    Permission::Overwrite,
    Permission::Delete,
    Permission::Rename,
    Permission::Mkdir,
    Permission::Rmdir,
    Permission::Chtimes,
];

impl Connection {
    pub(super) async fn pwd(&mut self) -> io::Result<Flow> {
        let text = format!(
            "\"{}\" is the current directory",
            quote_path(self.cwd.as_str())
        );
        self.reply(257, text).await
    }

    /// CWD (and CDUP as `CWD ..`).
    ///
    /// Looking a folder up needs `list` on its parent; a drop box such as
    /// `{"/": [], "/inbox": ["upload"]}` must still be enterable, so when the
    /// parent may not be listed but the account has rights on the folder
    /// itself, the folder is checked by listing it (with `list` there) or
    /// taken on trust (the account's rights there are its own business;
    /// every later command checks again). The home root is always enterable.
    pub(super) async fn cwd(&mut self, session: &Session, arg: &str) -> io::Result<Flow> {
        let path = match self.resolve(arg) {
            Ok(p) => p,
            Err(r) => return self.send(r).await.map(|()| Flow::Continue),
        };
        // The home itself always exists and shows nothing by being entered.
        let outcome = if path.is_root() {
            Ok(())
        } else {
            match session.metadata(&path).await {
                Ok(m) if m.is_dir() => Ok(()),
                Ok(_) => Err(Reply::new(550, "Not a directory.")),
                Err(FsError::Denied) if session.allows(&path, Permission::List) => session
                    .list(&path)
                    .await
                    .map(drop)
                    .map_err(|e| fs_reply(&e)),
                Err(FsError::Denied) if ANY.iter().any(|p| session.allows(&path, *p)) => Ok(()),
                Err(e) if e.class() == ErrorClass::WrongKind => {
                    Err(Reply::new(550, "Not a directory."))
                }
                Err(e) => Err(fs_reply(&e)),
            }
        };
        match outcome {
            Ok(()) => {
                self.cwd = path;
                self.reply(250, "Directory successfully changed.").await
            }
            Err(r) => self.send(r).await.map(|()| Flow::Continue),
        }
    }
}

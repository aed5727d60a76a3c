//! RETR, STOR, APPE, STOU, LIST, NLST, MLSD (over a data connection) and
//! MLST, `STAT <path>` (over the control connection).
//!
//! Everything that can be refused (path, permission, quota, missing file)
//! is checked here, before 150; the bytes then move in a transfer task.

use std::io;

use dropgate_core::vfs::{VirtualPath, WriteStart};
use dropgate_core::{ErrorClass, FsError, Session};
use tokio::io::{AsyncWriteExt, BufWriter};

use crate::connection::{Connection, Flow};
use crate::error::{TransferError, fs_reply};
use crate::listing::{ListFormat, facts_line};
use crate::parse::TransferType;
use crate::reply::{Reply, push_escaped};
use crate::transfer::{ListSource, Work, entry_rights, write_listing};

/// How many names STOU tries.
const STOU_ATTEMPTS: u32 = 100;

/// STOR or APPE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StoreKind {
    /// STOR: replace (or resume at REST).
    Replace,
    /// APPE: append.
    Append,
}

/// LIST, NLST or MLSD.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Listing {
    Long,
    Names,
    Machine,
}

impl Connection {
    /// The data connection prepared by PASV/PORT, or 425.
    async fn take_data(&mut self) -> io::Result<Option<crate::data::DataSetup>> {
        match self.data.take() {
            Some(d) => Ok(Some(d)),
            None => {
                self.send(Reply::new(425, "Use PORT or PASV first."))
                    .await?;
                Ok(None)
            }
        }
    }

    fn mode_name(&self) -> &'static str {
        match self.transfer_type {
            TransferType::Ascii => "ASCII",
            TransferType::Binary => "BINARY",
        }
    }

    pub(super) async fn retr(&mut self, session: &Session, arg: &str) -> io::Result<Flow> {
        let offset = std::mem::take(&mut self.rest);
        if self.data.is_none() {
            return self.reply(425, "Use PORT or PASV first.").await;
        }
        if self.refuse_clear_data().await? {
            return Ok(Flow::Continue);
        }
        let path = match self.resolve(arg) {
            Ok(p) => p,
            Err(r) => return self.send(r).await.map(|()| Flow::Continue),
        };
        let download = match session.open_download(&path).await {
            Ok(d) => d,
            Err(e) => return self.send(fs_reply(&e)).await.map(|()| Flow::Continue),
        };
        let len = download.len();
        if offset > len {
            download.finish(Some("restart offset past the end"));
            return self
                .reply(554, "Restart position past the end of the file.")
                .await;
        }
        let Some(setup) = self.take_data().await? else {
            return Ok(Flow::Continue);
        };
        let name = path.file_name().unwrap_or("/").to_owned();
        let text = format!(
            "Opening {} mode data connection for {name} ({len} bytes).",
            self.mode_name()
        );
        self.send(Reply::new(150, text)).await?;
        let ascii = self.transfer_type == TransferType::Ascii;
        self.start_running(
            "RETR",
            setup,
            Work::Download {
                download,
                offset,
                ascii,
            },
        );
        Ok(Flow::Continue)
    }

    /// STOR and APPE. 226 is sent only once the upload is committed.
    pub(super) async fn store(
        &mut self,
        session: &Session,
        arg: &str,
        kind: StoreKind,
    ) -> io::Result<Flow> {
        let offset = std::mem::take(&mut self.rest);
        if self.data.is_none() {
            return self.reply(425, "Use PORT or PASV first.").await;
        }
        if self.refuse_clear_data().await? {
            return Ok(Flow::Continue);
        }
        let path = match self.resolve(arg) {
            Ok(p) => p,
            Err(r) => return self.send(r).await.map(|()| Flow::Continue),
        };
        let start = match (kind, offset) {
            (StoreKind::Append, _) => WriteStart::Append,
            (StoreKind::Replace, 0) => WriteStart::Truncate,
            (StoreKind::Replace, n) => WriteStart::ResumeAt(n),
        };
        let upload = match session.open_upload(&path, start, false).await {
            Ok(u) => u,
            Err(e) => return self.send(fs_reply(&e)).await.map(|()| Flow::Continue),
        };
        self.start_upload(
            upload,
            "Ok to send data.".to_owned(),
            "Transfer complete.".to_owned(),
            kind_name(kind),
        )
        .await
    }

    /// STOU: a new file under a name nobody uses (the argument, if any, is
    /// the preferred name).
    pub(super) async fn stou(&mut self, session: &Session, base: Option<&str>) -> io::Result<Flow> {
        self.rest = 0;
        if self.data.is_none() {
            return self.reply(425, "Use PORT or PASV first.").await;
        }
        if self.refuse_clear_data().await? {
            return Ok(Flow::Continue);
        }
        let base = base.unwrap_or("stou");
        let mut last_err = None;
        for attempt in 0..STOU_ATTEMPTS {
            let name = if attempt == 0 {
                base.to_owned()
            } else {
                format!("{base}.{attempt}")
            };
            let path = match self.resolve(&name) {
                Ok(p) => p,
                Err(r) => return self.send(r).await.map(|()| Flow::Continue),
            };
            match session.open_upload(&path, WriteStart::Truncate, true).await {
                Ok(upload) => {
                    let shown = path.file_name().unwrap_or_default().to_owned();
                    return self
                        .start_upload(
                            upload,
                            format!("FILE: {shown}"),
                            format!("Transfer complete (FILE: {shown})."),
                            "STOU",
                        )
                        .await;
                }
                Err(e) if e.class() == ErrorClass::Exists => last_err = Some(e),
                Err(e) => return self.send(fs_reply(&e)).await.map(|()| Flow::Continue),
            }
        }
        let e = last_err.unwrap_or(FsError::Denied);
        self.send(fs_reply(&e)).await.map(|()| Flow::Continue)
    }

    async fn start_upload(
        &mut self,
        upload: dropgate_core::Upload,
        opening: String,
        done: String,
        command: &'static str,
    ) -> io::Result<Flow> {
        let Some(setup) = self.data.take() else {
            upload.abort("no data connection").await;
            return self.reply(425, "Use PORT or PASV first.").await;
        };
        if let Err(e) = self.send(Reply::new(150, opening)).await {
            upload.abort("control connection failed").await;
            return Err(e);
        }
        let ascii = self.transfer_type == TransferType::Ascii;
        self.start_running(
            command,
            setup,
            Work::Upload {
                upload,
                ascii,
                done,
            },
        );
        Ok(Flow::Continue)
    }

    /// LIST, NLST, MLSD.
    pub(super) async fn list(
        &mut self,
        session: &Session,
        arg: Option<&str>,
        kind: Listing,
    ) -> io::Result<Flow> {
        self.rest = 0;
        if self.data.is_none() {
            return self.reply(425, "Use PORT or PASV first.").await;
        }
        if self.refuse_clear_data().await? {
            return Ok(Flow::Continue);
        }
        let path = match arg
            .map(|a| self.resolve(a))
            .unwrap_or_else(|| Ok(self.cwd.clone()))
        {
            Ok(p) => p,
            Err(r) => return self.send(r).await.map(|()| Flow::Continue),
        };
        let source = match listing_source(session, &path, kind != Listing::Machine).await {
            Ok(s) => s,
            Err(r) => return self.send(r).await.map(|()| Flow::Continue),
        };
        let Some(setup) = self.take_data().await? else {
            return Ok(Flow::Continue);
        };
        self.send(Reply::new(150, "Here comes the directory listing."))
            .await?;
        let format = match kind {
            Listing::Long => ListFormat::Long,
            Listing::Names => ListFormat::Names,
            Listing::Machine => ListFormat::Machine(self.facts),
        };
        let command = match kind {
            Listing::Long => "LIST",
            Listing::Names => "NLST",
            Listing::Machine => "MLSD",
        };
        self.start_running(
            command,
            setup,
            Work::Listing {
                source,
                format,
                session: session.clone(),
            },
        );
        Ok(Flow::Continue)
    }
}

/// A folder's entries, or (when `allow_file`) the one file `path` names.
async fn listing_source(
    session: &Session,
    path: &VirtualPath,
    allow_file: bool,
) -> Result<ListSource, Reply> {
    match session.list(path).await {
        Ok(entries) => Ok(ListSource::Dir {
            path: path.clone(),
            entries,
        }),
        Err(e) if e.class() == ErrorClass::WrongKind => {
            if !allow_file {
                return Err(Reply::new(501, "Not a directory."));
            }
            match session.metadata(path).await {
                Ok(meta) => Ok(ListSource::One {
                    path: path.clone(),
                    meta,
                }),
                Err(e) => Err(fs_reply(&e)),
            }
        }
        Err(e) => Err(fs_reply(&e)),
    }
}

impl Connection {
    /// MLST: one entry's facts over the control connection.
    pub(super) async fn mlst(&mut self, session: &Session, arg: Option<&str>) -> io::Result<Flow> {
        let path = match arg
            .map(|a| self.resolve(a))
            .unwrap_or_else(|| Ok(self.cwd.clone()))
        {
            Ok(p) => p,
            Err(r) => return self.send(r).await.map(|()| Flow::Continue),
        };
        let meta = match session.metadata(&path).await {
            Ok(m) => m,
            Err(e) => return self.send(fs_reply(&e)).await.map(|()| Flow::Continue),
        };
        let facts = facts_line(
            path.as_str(),
            &meta,
            self.facts,
            entry_rights(session, &path),
        );
        let lines = vec![
            format!("Listing {}", path.as_str()),
            format!(" {facts}"),
            "End".to_owned(),
        ];
        self.send(Reply::multi(250, lines)).await?;
        Ok(Flow::Continue)
    }

    /// `STAT <path>`: an `ls -l` listing over the control connection, streamed.
    pub(super) async fn stat_path(&mut self, session: &Session, arg: &str) -> io::Result<Flow> {
        let path = match self.resolve(arg) {
            Ok(p) => p,
            Err(r) => return self.send(r).await.map(|()| Flow::Continue),
        };
        let source = match listing_source(session, &path, true).await {
            Ok(s) => s,
            Err(r) => return self.send(r).await.map(|()| Flow::Continue),
        };
        let mut head = b"213-Status of ".to_vec();
        push_escaped(&mut head, path.as_str());
        head.extend_from_slice(b":\r\n");
        let idle = self.control.write_timeout();
        let abort = self.shutdown.child_token();
        let result = {
            let mut out = BufWriter::with_capacity(64 * 1024, self.control.stream_mut());
            let r = async {
                out.write_all(&head).await.map_err(TransferError::Data)?;
                write_listing(
                    &mut out,
                    source,
                    ListFormat::Long,
                    session,
                    true,
                    &abort,
                    idle,
                )
                .await?;
                out.flush().await.map_err(TransferError::Data)
            };
            tokio::time::timeout(idle * 4, r).await.unwrap_or_else(|_| {
                Err(TransferError::Data(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "STAT stalled",
                )))
            })
        };
        match result {
            Ok(()) => self.reply(213, "End of status.").await,
            Err(TransferError::Data(e)) => Err(e),
            Err(other) => Err(io::Error::other(other.to_string())),
        }
    }
}

fn kind_name(kind: StoreKind) -> &'static str {
    match kind {
        StoreKind::Replace => "STOR",
        StoreKind::Append => "APPE",
    }
}

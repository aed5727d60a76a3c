//! AUTH, PBSZ, PROT, CCC: FTPS on the control connection (RFC 4217). The
//! decisions are in [`crate::security`]; this does the upgrade.

use std::io;

use dropgate_core::vfs::VirtualPath;

use crate::connection::{Connection, Flow, Login};
use crate::control::ControlStream;
use crate::reply::Reply;
use crate::security::{AuthDecision, TLS_HANDSHAKE_TIMEOUT};

impl Connection {
    /// `AUTH TLS|SSL`: 234, then the TLS handshake on the control
    /// connection. Whatever the client pipelined after `AUTH` in the clear
    /// is dropped unread, and so is any earlier login state: a session
    /// starts over under TLS (RFC 2228: the user must log in again).
    pub(super) async fn auth(&mut self, mechanism: String) -> io::Result<Flow> {
        let control = match self.security.auth(&mechanism) {
            AuthDecision::Refuse(reply) => return self.send(reply).await.map(|()| Flow::Continue),
            AuthDecision::Upgrade(control) => control,
        };
        self.send(Reply::new(
            234,
            format!("Proceed with negotiation ({mechanism})."),
        ))
        .await?;
        // Commands that waited for a transfer were sent in the clear too.
        self.deferred.clear();
        let acceptor = control.clone();
        let upgrade = self.control.upgrade(|plain| async move {
            let tls = acceptor.accept_control(plain).await?;
            Ok(Box::new(tls) as ControlStream)
        });
        let result = tokio::select! {
            _ = self.shutdown.cancelled() => return Ok(Flow::Close),
            r = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, upgrade) => r,
        };
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::debug!(error = %e, peer = %self.peer, "AUTH TLS handshake failed");
                return Ok(Flow::Close);
            }
            Err(_) => {
                tracing::debug!(peer = %self.peer, "AUTH TLS handshake timed out");
                return Ok(Flow::Close);
            }
        }
        self.security.secured(&mechanism, control);
        // Dropping a session records its logout.
        self.login = Login::Pending(None);
        self.cwd = VirtualPath::root();
        self.rest = 0;
        self.rename_from = None;
        self.data = None;
        Ok(Flow::Continue)
    }

    pub(super) async fn pbsz(&mut self, size: u64) -> io::Result<Flow> {
        let reply = self.security.pbsz(size);
        self.send(reply).await.map(|()| Flow::Continue)
    }

    pub(super) async fn prot(&mut self, level: char) -> io::Result<Flow> {
        let reply = self.security.prot(level);
        self.send(reply).await.map(|()| Flow::Continue)
    }

    pub(super) async fn ccc(&mut self) -> io::Result<Flow> {
        let reply = self.security.ccc();
        self.send(reply).await.map(|()| Flow::Continue)
    }

    /// Under `tls = required`, a transfer over a clear-text data connection
    /// is refused before 150; the prepared data connection is dropped.
    pub(super) async fn refuse_clear_data(&mut self) -> io::Result<bool> {
        match self.security.data_tls() {
            Ok(_) => Ok(false),
            Err(reply) => {
                self.data = None;
                self.send(reply).await?;
                Ok(true)
            }
        }
    }
}

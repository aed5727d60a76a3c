//! USER, PASS, REIN, QUIT.

use std::io;

use dropgate_core::vfs::VirtualPath;
use dropgate_core::{AuthError, Credential};

use crate::connection::{Connection, Flow, Login};
use crate::parse::{Facts, TransferType};
use crate::reply::Reply;

impl Connection {
    pub(super) async fn user(&mut self, name: String) -> io::Result<Flow> {
        if let Err(reply) = self.security.login_allowed() {
            return self.refuse_if_anonymous(reply).await;
        }
        self.login = Login::Pending(Some(name));
        self.reply(331, "Please specify the password.").await
    }

    pub(super) async fn pass(&mut self, password: String) -> io::Result<Flow> {
        // `tls = required`: no credential is ever looked at in the clear.
        if let Err(reply) = self.security.login_allowed() {
            self.login = Login::Pending(None);
            return self.refuse_if_anonymous(reply).await;
        }
        let Login::Pending(Some(name)) = std::mem::replace(&mut self.login, Login::Pending(None))
        else {
            return self
                .refuse_if_anonymous(Reply::new(503, "Login with USER first."))
                .await;
        };
        let protocol = self.security.protocol();
        let result = self
            .ctx
            .gateway
            .authenticate(protocol, &name, Credential::Password(&password), self.peer)
            .await;
        match result {
            Ok(session) => {
                tracing::debug!(user = %name, peer = %self.peer, "login");
                self.login = Login::Done(session);
                self.cwd = VirtualPath::root();
                self.reply(230, "Login successful.").await
            }
            // One reply for every reason (the reason is in the audit log).
            Err(AuthError::Failed) => {
                self.refuse_if_anonymous(Reply::new(530, "Login incorrect."))
                    .await
            }
            Err(AuthError::Banned) => {
                self.send(Reply::new(
                    421,
                    "Too many failed logins from your address; try again later.",
                ))
                .await?;
                Ok(Flow::Close)
            }
            Err(AuthError::Unavailable) => {
                self.send(Reply::new(
                    421,
                    "Service not available, closing control connection.",
                ))
                .await?;
                Ok(Flow::Close)
            }
        }
    }

    /// REIN: back to the state right after the greeting (logs out). A TLS
    /// control connection stays TLS; `PROT` starts over.
    pub(super) async fn rein(&mut self) -> io::Result<Flow> {
        self.login = Login::Pending(None);
        self.login_deadline = tokio::time::Instant::now() + self.ctx.gateway.login_grace();
        self.security.rein();
        self.cwd = VirtualPath::root();
        self.transfer_type = TransferType::Binary;
        self.rest = 0;
        self.rename_from = None;
        self.data = None;
        self.epsv_all = false;
        self.facts = Facts::ALL;
        self.refusals = 0;
        self.reply(220, "Ready for new user.").await
    }

    pub(super) async fn quit(&mut self) -> io::Result<Flow> {
        self.send(Reply::new(221, "Goodbye.")).await?;
        Ok(Flow::Close)
    }
}

//! The russh handler of one SSH connection: authentication through core,
//! session channels, the `sftp` subsystem, and refusing everything else
//! (there is never a shell, an exec, a pty or a forwarding).

use crate::budget::ConnectionBudget;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use dropgate_core::store::Protocol;
use dropgate_core::{AuthError, Credential, Gateway, Session};
use russh::server::{Auth, Handle, Msg, PublicKeyOffer, VerifiedPublicKey};
use russh::{
    Channel, ChannelId, ChannelMsg, ChannelOpenFailure, Disconnect, MethodKind, MethodSet,
};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::dispatcher;

/// What a client that asks for a shell or a command reads on stderr.
const NO_SHELL: &[u8] = b"dropgate: shell access is not available, use SFTP\r\n";
/// Session channels one connection may have open at once.
const MAX_CHANNELS: usize = 8;
/// After asking russh to disconnect, how long before the socket is cut.
const KILL_DELAY: Duration = Duration::from_secs(2);

/// State one connection shares between its accept task and its handler.
pub(crate) struct ConnShared {
    pub(crate) peer: SocketAddr,
    /// Set once a login succeeded (ends the login grace timer's interest).
    pub(crate) authenticated: AtomicBool,
    /// Cancelled when the connection has ended: stops every task it spawned.
    pub(crate) end: CancellationToken,
    /// Cancelled when something asked to end the connection (the accept
    /// task then stops waiting for it after a while).
    pub(crate) closing: CancellationToken,
    /// Cancelling it makes the socket fail: the last resort to end a
    /// connection whose russh loop does not react to a disconnect request.
    pub(crate) kill: CancellationToken,
    /// Request bytes its channels may queue (see `budget`).
    pub(crate) budget: ConnectionBudget,
}

impl ConnShared {
    pub(crate) fn new(peer: SocketAddr, budget: ConnectionBudget) -> Arc<Self> {
        Arc::new(ConnShared {
            peer,
            budget,
            authenticated: AtomicBool::new(false),
            end: CancellationToken::new(),
            closing: CancellationToken::new(),
            kill: CancellationToken::new(),
        })
    }
}

/// What tasks of a connection need to end it.
#[derive(Clone)]
pub(crate) struct ConnControl {
    pub(crate) peer: SocketAddr,
    pub(crate) end: CancellationToken,
    closing: CancellationToken,
    kill: CancellationToken,
    handle: Handle,
    pub(crate) budget: ConnectionBudget,
}

impl ConnControl {
    pub(crate) fn new(shared: &ConnShared, handle: Handle) -> Self {
        ConnControl {
            peer: shared.peer,
            end: shared.end.clone(),
            closing: shared.closing.clone(),
            kill: shared.kill.clone(),
            handle,
            budget: shared.budget.clone(),
        }
    }

    /// Disconnects the whole SSH connection: politely first, then by cutting
    /// the socket if russh has not finished within [`KILL_DELAY`].
    pub(crate) async fn drop_connection(&self, reason: Disconnect, message: &str) {
        self.closing.cancel();
        let kill = self.kill.clone();
        tokio::spawn(async move {
            tokio::time::sleep(KILL_DELAY).await;
            kill.cancel();
        });
        // The request queue is bounded; never wait on it longer than the kill.
        let _ = tokio::time::timeout(
            KILL_DELAY,
            self.handle
                .disconnect(reason, message.to_owned(), String::new()),
        )
        .await;
    }
}

/// A failed attempt. Both methods stay on offer: by default russh drops a
/// method after its first failure, which would make a wrong password look
/// different from a wrong key and stop clients from retrying a mistyped one
/// (the attempt cap still applies).
fn reject() -> Auth {
    Auth::Reject {
        proceed_with_methods: Some(auth_methods()),
        partial_success: false,
    }
}

/// The only authentication methods there are.
pub(crate) fn auth_methods() -> MethodSet {
    MethodSet::from(&[MethodKind::PublicKey, MethodKind::Password][..])
}

/// How a held session channel is put to use.
enum ChannelStart {
    Sftp(Session, ConnControl),
}

/// russh handler of one connection.
pub(crate) struct SshHandler {
    gateway: Arc<Gateway>,
    conn: Arc<ConnShared>,
    /// The logged-in session (after a successful authentication).
    session: Option<Session>,
    /// Open session channels; a sender while the channel waits for its
    /// request (subsystem/exec/shell), `None` once it is in use.
    channels: HashMap<ChannelId, Option<oneshot::Sender<ChannelStart>>>,
}

impl SshHandler {
    pub(crate) fn new(gateway: Arc<Gateway>, conn: Arc<ConnShared>) -> Self {
        SshHandler {
            gateway,
            conn,
            session: None,
            channels: HashMap::new(),
        }
    }

    async fn login(&mut self, user: &str, credential: Credential<'_>, method: &str) -> Auth {
        if self.session.is_some() {
            return reject();
        }
        match self
            .gateway
            .authenticate(Protocol::Sftp, user, credential, self.conn.peer)
            .await
        {
            Ok(session) => {
                tracing::info!(user = %session.username(), peer = %self.conn.peer, method, "SFTP login");
                self.session = Some(session);
                Auth::Accept
            }
            // One generic rejection whatever the reason (core logs which).
            Err(AuthError::Failed) => reject(),
            Err(AuthError::Unavailable) => {
                tracing::warn!(peer = %self.conn.peer, "login refused: user store or storage unavailable");
                reject()
            }
            // A banned source gets no more tries on this connection either.
            Err(AuthError::Banned) => {
                tracing::info!(peer = %self.conn.peer, "login refused: source banned; closing");
                self.conn.closing.cancel();
                self.conn.kill.cancel();
                reject()
            }
        }
    }

    /// Refuses an exec or shell request with a clear message and exit status 1.
    fn refuse_shell(
        &mut self,
        channel: ChannelId,
        session: &mut russh::server::Session,
    ) -> Result<(), russh::Error> {
        // Dropping the sender ends the task holding the channel.
        self.channels.insert(channel, None);
        session.channel_success(channel)?;
        session.extended_data(channel, 1, Bytes::from_static(NO_SHELL))?;
        session.exit_status_request(channel, 1)?;
        session.eof(channel)?;
        session.close(channel)?;
        Ok(())
    }
}

/// Holds a session channel until its request arrives; anything the client
/// sends before that is drained (never left to fill russh's channel buffer,
/// which would stall the connection's whole loop) and discarded.
async fn hold_channel(
    channel: Channel<Msg>,
    mut start: oneshot::Receiver<ChannelStart>,
    end: CancellationToken,
) {
    let (mut rx, tx) = channel.split();
    loop {
        tokio::select! {
            // Biased: the start signal is sent before the client even learns
            // the subsystem was accepted, so it always wins over its first data.
            biased;
            s = &mut start => {
                match s {
                    Ok(ChannelStart::Sftp(session, control)) => dispatcher::serve(rx, tx, session, control).await,
                    Err(_) => {}
                }
                return;
            }
            m = rx.wait() => if matches!(m, None | Some(ChannelMsg::Close)) { return },
            () = end.cancelled() => return,
        }
    }
}

impl russh::server::Handler for SshHandler {
    type Error = russh::Error;

    async fn auth_password(&mut self, user: &str, password: &str) -> Result<Auth, Self::Error> {
        Ok(self
            .login(user, Credential::Password(password), "password")
            .await)
    }

    /// Every offered key is welcome to prove itself: answering here whether
    /// the key belongs to the account would tell who exists.
    async fn auth_publickey_offered(
        &mut self,
        _user: &str,
        _offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(Auth::Accept)
    }

    /// Called after russh verified the signature.
    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        let Ok(line) = key.public_key.to_openssh() else {
            return Ok(reject());
        };
        Ok(self
            .login(user, Credential::PublicKey(&line), "publickey")
            .await)
    }

    async fn auth_succeeded(
        &mut self,
        session: &mut russh::server::Session,
    ) -> Result<(), Self::Error> {
        self.conn.authenticated.store(true, Ordering::Release);
        if let Some(core) = &self.session {
            // An administrator ending the session ends the connection.
            let kicked = core.cancelled();
            let control = ConnControl::new(&self.conn, session.handle());
            tokio::spawn(async move {
                tokio::select! {
                    () = kicked.cancelled() => {
                        tracing::info!(peer = %control.peer, "session ended by an administrator");
                        control.drop_connection(Disconnect::ByApplication, "session ended by the administrator").await;
                    }
                    () = control.end.cancelled() => {}
                }
            });
        }
        Ok(())
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: russh::server::ChannelOpenHandle,
        _session: &mut russh::server::Session,
    ) -> Result<(), Self::Error> {
        if self.session.is_none() || self.channels.len() >= MAX_CHANNELS {
            reply.reject(ChannelOpenFailure::ResourceShortage).await;
            return Ok(());
        }
        let (start, started) = oneshot::channel();
        self.channels.insert(channel.id(), Some(start));
        tokio::spawn(hold_channel(channel, started, self.conn.end.clone()));
        reply.accept().await;
        Ok(())
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut russh::server::Session,
    ) -> Result<(), Self::Error> {
        let waiting = self.channels.get_mut(&channel).and_then(Option::take);
        if name == "sftp"
            && let (Some(start), Some(core)) = (waiting, self.session.clone())
        {
            let control = ConnControl::new(&self.conn, session.handle());
            if start.send(ChannelStart::Sftp(core, control)).is_ok() {
                session.channel_success(channel)?;
                return Ok(());
            }
        }
        tracing::debug!(peer = %self.conn.peer, subsystem = name, "subsystem refused");
        session.channel_failure(channel)?;
        session.close(channel)?;
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        _data: &[u8],
        session: &mut russh::server::Session,
    ) -> Result<(), Self::Error> {
        tracing::debug!(peer = %self.conn.peer, "exec refused");
        self.refuse_shell(channel, session)
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut russh::server::Session,
    ) -> Result<(), Self::Error> {
        tracing::debug!(peer = %self.conn.peer, "shell refused");
        self.refuse_shell(channel, session)
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut russh::server::Session,
    ) -> Result<(), Self::Error> {
        // Refused, channel kept: an interactive `ssh host` goes on to ask
        // for a shell, and that refusal carries the message on stderr.
        tracing::debug!(peer = %self.conn.peer, "pty refused");
        session.channel_failure(channel)
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single_connection: bool,
        _x11_auth_protocol: &str,
        _x11_auth_cookie: &str,
        _x11_screen_number: u32,
        session: &mut russh::server::Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        _variable_name: &str,
        _variable_value: &str,
        session: &mut russh::server::Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut russh::server::Session,
    ) -> Result<(), Self::Error> {
        self.channels.remove(&channel);
        Ok(())
    }
}

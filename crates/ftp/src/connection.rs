//! One control connection from greeting to goodbye: the session state, the
//! event loop, and the rules that apply to every command (login gate,
//! commands allowed during a transfer, idle timeout, shutdown and kick).
//!
//! A transfer is a future this loop polls beside the control connection
//! (see [`TransferTask`]), so ABOR, STAT, NOOP and QUIT are served at once
//! while it runs. Other commands sent during a transfer wait for its end.

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use dropgate_core::vfs::VirtualPath;
use dropgate_core::{Gateway, Session};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::FtpConfig;
use crate::control::{ControlChannel, ControlStream, LineError};
use crate::data::DataSetup;
use crate::error::parse_reply;
use crate::parse::{self, Command, Facts, TransferType};
use crate::passive::{AdvertisedAddress, PassivePortPool};
use crate::reply::Reply;
use crate::security::ChannelSecurity;
use crate::transfer::{TransferOutcome, TransferTask};

/// Refused or unknown commands before login that end the connection.
const MAX_REFUSALS: u32 = 10;
/// Commands a client may queue while a transfer runs.
const MAX_DEFERRED: usize = 32;
/// How long a stopping transfer may take to wind down (abort an upload).
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest idle limit honoured (0 in the configuration means no limit;
/// this keeps deadline arithmetic far from overflow).
const NO_IDLE_LIMIT: Duration = Duration::from_secs(365 * 24 * 3600);

/// What every connection of one listener shares.
pub(crate) struct ServerContext {
    pub(crate) gateway: Arc<Gateway>,
    pub(crate) config: FtpConfig,
    pub(crate) pool: PassivePortPool,
    pub(crate) advertised: AdvertisedAddress,
}

impl ServerContext {
    /// How long a session (or a data connection) may stay silent.
    pub(crate) fn idle_limit(&self) -> Duration {
        match self.config.idle_timeout {
            Duration::ZERO => NO_IDLE_LIMIT,
            d => d.min(NO_IDLE_LIMIT),
        }
    }
}

/// Whether the connection goes on after a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flow {
    Continue,
    Close,
}

/// Login state.
pub(crate) enum Login {
    /// Not logged in; the name from USER, waiting for PASS.
    Pending(Option<String>),
    /// Logged in.
    Done(Session),
}

/// The transfer in progress.
pub(crate) struct Running {
    /// Poll it only beside [`gate_asked`] (right after it, in the same pass)
    /// or once `abort` is cancelled: an upload's commit question has no
    /// waker, so a poll that leaves it unanswered leaves it waiting.
    pub(crate) transfer: TransferTask,
    pub(crate) abort: CancellationToken,
    pub(crate) progress: Arc<AtomicU64>,
    /// The command that started it (for STAT).
    pub(crate) command: &'static str,
    /// Where an upload asks whether the client is still there.
    pub(crate) gate: Arc<crate::transfer::CommitGate>,
}

impl Drop for Running {
    /// However the connection ends, its transfer stops too (an unfinished
    /// one winds down in a task of its own: see [`TransferTask`]).
    fn drop(&mut self) {
        self.abort.cancel();
    }
}

/// Something the loop reacts to.
enum Event {
    Line(Bytes),
    Closed,
    TooLong,
    Idle,
    LoginGrace,
    Shutdown,
    Kicked,
    TransferDone(TransferOutcome),
    CommitCheck,
    PassiveExpired,
}

/// One control connection.
pub(crate) struct Connection {
    pub(crate) ctx: Arc<ServerContext>,
    pub(crate) control: ControlChannel,
    /// The client's address (data connections must come from its IP).
    pub(crate) peer: SocketAddr,
    /// Our end of the control connection (passive listeners bind here,
    /// active connections start here).
    pub(crate) local: SocketAddr,
    /// The address the client connected to: `local`, or the balancer's
    /// front end a PROXY header named (what PASV advertises).
    pub(crate) front: IpAddr,
    pub(crate) shutdown: CancellationToken,
    /// The FTPS seam: AUTH/PBSZ/PROT state.
    pub(crate) security: ChannelSecurity,
    pub(crate) login: Login,
    pub(crate) cwd: VirtualPath,
    pub(crate) transfer_type: TransferType,
    /// Offset from REST for the next transfer.
    pub(crate) rest: u64,
    /// Source of a rename (RNFR), waiting for RNTO.
    pub(crate) rename_from: Option<VirtualPath>,
    /// What the last PASV/EPSV/PORT/EPRT prepared.
    pub(crate) data: Option<DataSetup>,
    /// After `EPSV ALL` only EPSV may set up data connections (RFC 2428).
    pub(crate) epsv_all: bool,
    /// MLST/MLSD facts chosen by `OPTS MLST`.
    pub(crate) facts: Facts,
    /// Refused or unknown commands before login.
    pub(crate) refusals: u32,
    pub(crate) running: Option<Running>,
    /// Commands received during a transfer, run after it.
    pub(crate) deferred: VecDeque<Bytes>,
    /// QUIT arrived during a transfer: say goodbye after it.
    quit_after_transfer: bool,
    /// When the session counts as idle.
    idle_deadline: Instant,
    /// A client not logged in by then is disconnected, whatever it sends
    /// (NOOP, FEAT and refused commands do not keep it alive).
    pub(crate) login_deadline: Instant,
}

impl Connection {
    /// A connection over `stream` (plain TCP, or TLS already handshaken by
    /// the implicit listener, as `security` says).
    pub(crate) fn new(
        ctx: Arc<ServerContext>,
        stream: ControlStream,
        security: ChannelSecurity,
        peer: SocketAddr,
        local: SocketAddr,
        front: IpAddr,
        shutdown: CancellationToken,
    ) -> Connection {
        let idle = ctx.idle_limit();
        let ctx_login_grace = ctx.gateway.login_grace();
        Connection {
            control: ControlChannel::new(
                stream,
                idle.clamp(Duration::from_secs(10), Duration::from_secs(300)),
            ),
            ctx,
            peer,
            local,
            front,
            shutdown,
            security,
            login: Login::Pending(None),
            cwd: VirtualPath::root(),
            transfer_type: TransferType::Binary,
            rest: 0,
            rename_from: None,
            data: None,
            epsv_all: false,
            facts: Facts::ALL,
            refusals: 0,
            running: None,
            deferred: VecDeque::new(),
            quit_after_transfer: false,
            idle_deadline: Instant::now() + idle,
            login_deadline: Instant::now() + ctx_login_grace,
        }
    }

    /// Runs the connection to its end.
    pub(crate) async fn serve(mut self) {
        let banner = Reply::new(220, self.ctx.config.banner.clone());
        if self.send(banner).await.is_err() {
            return;
        }
        let goodbye = loop {
            let event = self.next_event().await;
            let step = match event {
                Event::Line(line) => self.on_line(line).await,
                Event::TransferDone(outcome) => self.on_transfer_done(outcome).await,
                Event::CommitCheck => {
                    // A client that said QUIT ended the file on purpose.
                    let alive = self.quit_after_transfer || !self.control.closed_now().await;
                    if let Some(r) = &self.running {
                        r.gate.answer(alive);
                    }
                    Ok(Flow::Continue)
                }
                Event::PassiveExpired => {
                    self.data = None;
                    Ok(Flow::Continue)
                }
                Event::Closed => {
                    // After QUIT the transfer may still finish (RFC 959 4.1.1);
                    // otherwise a vanished client's transfer is aborted below.
                    if self.quit_after_transfer {
                        self.finish_quietly().await;
                    }
                    break None;
                }
                Event::TooLong => {
                    let _ = self.send(Reply::new(500, "Command line too long.")).await;
                    self.stop_transfer().await;
                    self.control.close_draining(Duration::from_secs(1)).await;
                    return;
                }
                Event::Idle => break Some(Reply::new(421, "Timeout.")),
                Event::LoginGrace => {
                    tracing::info!(peer = %self.peer, "FTP login grace time exceeded");
                    break Some(Reply::new(421, "Login timeout."));
                }
                Event::Shutdown => break Some(Reply::new(421, "Server shutting down.")),
                Event::Kicked => {
                    break Some(Reply::new(421, "Session closed by the administrator."));
                }
            };
            match step {
                Ok(Flow::Continue) => {}
                Ok(Flow::Close) => break None,
                Err(e) => {
                    tracing::debug!(error = %e, peer = %self.peer, "control connection failed");
                    break None;
                }
            }
        };
        self.stop_transfer().await;
        if let Some(reply) = goodbye {
            let _ = self.send(reply).await;
        }
        self.control.close().await;
        // Dropping the session records the logout.
    }

    async fn next_event(&mut self) -> Event {
        let Connection {
            shutdown,
            login,
            running,
            control,
            idle_deadline,
            login_deadline,
            data,
            ..
        } = self;
        // A prepared passive listener nobody used expires (its port is freed).
        let passive_deadline = match data {
            Some(DataSetup::Passive(p)) => Some(p.deadline()),
            _ => None,
        };
        let kicked = match login {
            Login::Done(s) => Some(s.cancelled()),
            Login::Pending(_) => None,
        };
        let logging_in = kicked.is_none();
        let transferring = running.is_some();
        let (transfer, gate) = match running {
            Some(Running { transfer, gate, .. }) => (Some(transfer), Some(&**gate)),
            None => (None, None),
        };
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => Event::Shutdown,
            _ = async { match &kicked { Some(t) => t.cancelled().await, None => std::future::pending().await } } => Event::Kicked,
            done = async {
                match transfer {
                    Some(t) => t.await,
                    None => std::future::pending().await,
                }
            }, if transferring => Event::TransferDone(done),
            // Right after the transfer, in the same pass: see CommitGate.
            () = gate_asked(gate), if transferring => Event::CommitCheck,
            line = control.read_line() => match line {
                Ok(Some(l)) => Event::Line(l),
                Ok(None) => Event::Closed,
                Err(LineError::TooLong) => Event::TooLong,
                Err(LineError::Io(e)) => {
                    tracing::debug!(error = %e, "control read failed");
                    Event::Closed
                }
            },
            _ = tokio::time::sleep_until(*idle_deadline), if !transferring => Event::Idle,
            _ = tokio::time::sleep_until(*login_deadline), if logging_in => Event::LoginGrace,
            _ = sleep_until_maybe(passive_deadline), if passive_deadline.is_some() => Event::PassiveExpired,
        }
    }

    fn touch(&mut self) {
        self.idle_deadline = Instant::now() + self.ctx.idle_limit();
    }

    async fn on_line(&mut self, line: Bytes) -> io::Result<Flow> {
        let flow = if self.running.is_some() {
            self.on_line_during_transfer(line).await
        } else {
            self.execute(&line).await
        };
        // Idle time counts from the reply, not from the command: a slow
        // login or HASH is not the client's idleness.
        self.touch();
        flow
    }

    /// Runs one command line.
    async fn execute(&mut self, line: &[u8]) -> io::Result<Flow> {
        match parse::parse(line) {
            Ok(cmd) => self.dispatch(cmd).await,
            Err(e) => {
                let reply = parse_reply(&e);
                self.refuse_if_anonymous(reply).await
            }
        }
    }

    /// While a transfer runs only ABOR, STAT, NOOP and QUIT act; the rest waits.
    async fn on_line_during_transfer(&mut self, line: Bytes) -> io::Result<Flow> {
        match parse::parse(&line) {
            Ok(Command::Abor) => self.abort_transfer().await,
            Ok(Command::Noop) => self.reply(200, "NOOP ok.").await,
            Ok(Command::Stat(None)) => {
                let text = match &self.running {
                    Some(r) => format!(
                        "Status: {} in progress, {} bytes so far.",
                        r.command,
                        r.progress.load(std::sync::atomic::Ordering::Relaxed)
                    ),
                    None => "Status: no transfer.".to_owned(),
                };
                self.reply(213, text).await
            }
            Ok(Command::Quit) => {
                self.quit_after_transfer = true;
                Ok(Flow::Continue)
            }
            _ if self.deferred.len() < MAX_DEFERRED => {
                self.deferred.push_back(line);
                Ok(Flow::Continue)
            }
            _ => {
                self.reply(503, "Transfer in progress; command ignored.")
                    .await
            }
        }
    }

    async fn on_transfer_done(&mut self, outcome: TransferOutcome) -> io::Result<Flow> {
        self.running = None;
        self.touch();
        match outcome {
            TransferOutcome::Done(reply, closing) => {
                self.send(reply).await?;
                drop(closing);
            }
            TransferOutcome::Failed(reply) => self.send(reply).await?,
            TransferOutcome::Aborted => {
                self.send(Reply::new(426, "Connection closed; transfer aborted."))
                    .await?
            }
        }
        self.after_transfer().await
    }

    /// Says goodbye if QUIT was waiting, else runs the commands that waited.
    async fn after_transfer(&mut self) -> io::Result<Flow> {
        if self.quit_after_transfer {
            self.send(Reply::new(221, "Goodbye.")).await?;
            return Ok(Flow::Close);
        }
        while self.running.is_none() {
            let Some(line) = self.deferred.pop_front() else {
                break;
            };
            if self.execute(&line).await? == Flow::Close {
                return Ok(Flow::Close);
            }
        }
        Ok(Flow::Continue)
    }

    /// ABOR: stop the running transfer, then 426 + 226 (RFC 959 4.1.3).
    async fn abort_transfer(&mut self) -> io::Result<Flow> {
        self.data = None;
        self.rest = 0;
        let Some(running) = self.running.take() else {
            return self.reply(225, "No transfer to abort.").await;
        };
        running.abort.cancel();
        let outcome = finish(running).await;
        self.touch();
        match outcome {
            TransferOutcome::Aborted => {
                self.send(Reply::new(426, "Connection closed; transfer aborted."))
                    .await?
            }
            // It completed (or failed) before the abort took effect.
            TransferOutcome::Done(r, closing) => {
                self.send(r).await?;
                drop(closing);
            }
            TransferOutcome::Failed(r) => self.send(r).await?,
        }
        self.send(Reply::new(226, "Abort successful.")).await?;
        self.after_transfer().await
    }

    /// Lets a running transfer end by itself (nobody to reply to), answering
    /// its commit check; shutdown or a kick still stop it.
    async fn finish_quietly(&mut self) {
        let Some(mut running) = self.running.take() else {
            return;
        };
        let kicked = self.session().map(|s| s.cancelled());
        loop {
            let Running { transfer, gate, .. } = &mut running;
            // Biased: the gate right after the transfer (see CommitGate).
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => break,
                _ = async { match &kicked { Some(t) => t.cancelled().await, None => std::future::pending().await } } => break,
                _ = transfer => return,
                () = gate_asked(Some(&**gate)) => gate.answer(true),
            }
        }
        running.abort.cancel();
        let _ = finish(running).await;
    }

    /// Stops a running transfer without replying (disconnect, shutdown, kick).
    async fn stop_transfer(&mut self) {
        self.data = None;
        if let Some(running) = self.running.take() {
            running.abort.cancel();
            let _ = finish(running).await;
        }
    }

    /// Sends a reply.
    pub(crate) async fn send(&mut self, reply: Reply) -> io::Result<()> {
        self.control.send(&reply).await
    }

    /// Sends a one-line reply and continues.
    pub(crate) async fn reply(
        &mut self,
        code: u16,
        text: impl Into<std::borrow::Cow<'static, str>>,
    ) -> io::Result<Flow> {
        self.send(Reply::new(code, text)).await?;
        Ok(Flow::Continue)
    }

    /// Sends `reply`; before login it also counts as a refusal, and too many
    /// refusals end the connection.
    pub(crate) async fn refuse_if_anonymous(&mut self, reply: Reply) -> io::Result<Flow> {
        self.send(reply).await?;
        if matches!(self.login, Login::Pending(_)) {
            self.refusals += 1;
            if self.refusals >= MAX_REFUSALS {
                self.send(Reply::new(421, "Too many failed commands; closing."))
                    .await?;
                return Ok(Flow::Close);
            }
        }
        Ok(Flow::Continue)
    }

    /// The logged-in session, if any.
    pub(crate) fn session(&self) -> Option<Session> {
        match &self.login {
            Login::Done(s) => Some(s.clone()),
            Login::Pending(_) => None,
        }
    }

    /// Resolves a client path against the current folder.
    pub(crate) fn resolve(&self, arg: &str) -> Result<VirtualPath, Reply> {
        VirtualPath::resolve(&self.cwd, arg).map_err(|e| crate::error::fs_reply(&e.into()))
    }

    /// Starts `run` as the connection's transfer.
    pub(crate) fn start_running(
        &mut self,
        command: &'static str,
        setup: DataSetup,
        work: crate::transfer::Work,
    ) {
        let abort = CancellationToken::new();
        let progress = Arc::new(AtomicU64::new(0));
        let gate = Arc::new(crate::transfer::CommitGate::default());
        let ctl = crate::transfer::TransferControl {
            abort: abort.clone(),
            progress: progress.clone(),
            idle: self.ctx.idle_limit(),
            commit_gate: gate.clone(),
        };
        let local_ip = self.local.ip();
        // Callers refused clear-text data under `tls = required` before 150.
        let tls = self.security.data_tls().ok().flatten();
        let transfer = TransferTask::new(crate::transfer::run(setup, local_ip, tls, work, ctl));
        self.running = Some(Running {
            transfer,
            abort,
            progress,
            command,
            gate,
        });
    }
}

/// Ready when the running upload has asked its commit question. Polled
/// right after the transfer in the same pass, so it needs no waker: only
/// that poll of the transfer can ask.
async fn gate_asked(gate: Option<&crate::transfer::CommitGate>) {
    std::future::poll_fn(|_| {
        if gate.is_some_and(|g| g.asked()) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await
}

async fn sleep_until_maybe(deadline: Option<std::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

/// Waits for a cancelled transfer to wind down (bounded).
async fn finish(mut running: Running) -> TransferOutcome {
    // Polled without the commit gate: only a cancelled transfer may be.
    debug_assert!(running.abort.is_cancelled());
    match tokio::time::timeout(STOP_TIMEOUT, &mut running.transfer).await {
        Ok(outcome) => outcome,
        Err(_) => {
            // Already told to stop; dropping `running` lets it finish its
            // bookkeeping (a commit's fsync, an abort's cleanup) in a task
            // of its own.
            tracing::warn!("transfer did not stop in time; detaching it");
            TransferOutcome::Aborted
        }
    }
}

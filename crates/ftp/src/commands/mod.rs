//! Command handlers, grouped by what they touch: login, navigation, file
//! operations, data-channel set-up, transfers, and server information.
//! Each handler applies one parsed [`Command`] and sends its reply.

mod datachan;
mod files;
mod info;
mod login;
mod navigate;
mod tls;
mod transfers;

use std::io;

use crate::connection::{Connection, Flow};
use crate::parse::Command;
use crate::reply::Reply;

impl Connection {
    /// Applies one command (no transfer is running).
    pub(crate) async fn dispatch(&mut self, cmd: Command) -> io::Result<Flow> {
        if let Command::Unknown(verb) = &cmd {
            if verb == "PROXY" {
                // A PROXY header reaches the command parser only from a
                // source not in `trusted_proxies` (or with proxy_protocol
                // off): someone claiming another address. Never believed;
                // the connection ends. (A v2 header ends it by itself: its
                // signature contains QUIT.)
                tracing::warn!(peer = %self.peer, "PROXY header from an untrusted source refused");
                self.reply(421, "PROXY header not accepted from this address.")
                    .await?;
                return Ok(Flow::Close);
            }
            tracing::debug!(%verb, "unknown command");
            return self
                .refuse_if_anonymous(Reply::new(500, "Unknown command."))
                .await;
        }
        // Anything but RNTO breaks an RNFR/RNTO pair.
        if !matches!(cmd, Command::Rnto(_)) {
            self.rename_from = None;
        }
        let Some(session) = self.session() else {
            if !cmd.allowed_before_login() {
                return self
                    .refuse_if_anonymous(Reply::new(530, "Please login with USER and PASS."))
                    .await;
            }
            return self.pre_login(cmd).await;
        };
        match cmd {
            Command::User(_) => self.reply(530, "Can't change to another user.").await,
            Command::Pass(_) => self.reply(230, "Already logged in.").await,
            Command::Acct => self.reply(202, "ACCT command superfluous.").await,
            Command::Rein => self.rein().await,
            Command::Quit => self.quit().await,

            Command::Pwd => self.pwd().await,
            Command::Cwd(path) => self.cwd(&session, &path).await,
            Command::Cdup => self.cwd(&session, "..").await,

            Command::Dele(path) => self.dele(&session, &path).await,
            Command::Rnfr(path) => self.rnfr(&session, &path).await,
            Command::Rnto(path) => self.rnto(&session, &path).await,
            Command::Mkd(path) => self.mkd(&session, &path).await,
            Command::Rmd(path) => self.rmd(&session, &path).await,
            Command::Size(path) => self.size(&session, &path).await,
            Command::Mdtm(path) => self.mdtm(&session, &path).await,
            Command::Mfmt { modified, path } => self.mfmt(&session, modified, &path).await,
            Command::Hash(path) => self.hash(&session, &path).await,

            Command::Port(addr) => self.port(addr.into(), "PORT").await,
            Command::Eprt(addr) => self.port(addr, "EPRT").await,
            Command::Pasv => self.pasv().await,
            Command::Epsv(arg) => self.epsv(arg).await,

            Command::Retr(path) => self.retr(&session, &path).await,
            Command::Stor(path) => {
                self.store(&session, &path, transfers::StoreKind::Replace)
                    .await
            }
            Command::Appe(path) => {
                self.store(&session, &path, transfers::StoreKind::Append)
                    .await
            }
            Command::Stou(base) => self.stou(&session, base.as_deref()).await,
            Command::Rest(offset) => {
                self.rest = offset;
                self.reply(350, format!("Restart position accepted ({offset})."))
                    .await
            }
            Command::Abor => {
                // No transfer runs here (ABOR during one is handled by the loop).
                self.data = None;
                self.rest = 0;
                self.reply(225, "No transfer to abort.").await
            }
            Command::Allo => self.reply(202, "ALLO command ignored.").await,
            Command::List(path) => {
                self.list(&session, path.as_deref(), transfers::Listing::Long)
                    .await
            }
            Command::Nlst(path) => {
                self.list(&session, path.as_deref(), transfers::Listing::Names)
                    .await
            }
            Command::Mlsd(path) => {
                self.list(&session, path.as_deref(), transfers::Listing::Machine)
                    .await
            }
            Command::Mlst(path) => self.mlst(&session, path.as_deref()).await,
            Command::Stat(Some(path)) => self.stat_path(&session, &path).await,

            other => self.common(other).await,
        }
    }

    /// Commands allowed before login.
    async fn pre_login(&mut self, cmd: Command) -> io::Result<Flow> {
        match cmd {
            Command::User(name) => self.user(name).await,
            Command::Pass(password) => self.pass(password).await,
            Command::Quit => self.quit().await,
            other => self.common(other).await,
        }
    }

    /// Commands that behave the same before and after login.
    async fn common(&mut self, cmd: Command) -> io::Result<Flow> {
        match cmd {
            Command::Feat => self.feat().await,
            Command::Opts(opts) => self.opts(opts).await,
            Command::Syst => self.reply(215, "UNIX Type: L8").await,
            Command::Noop => self.reply(200, "NOOP ok.").await,
            Command::Help => self.help().await,
            Command::SiteHelp => self.reply(214, "SITE commands: HELP").await,
            Command::SiteOther => self.reply(500, "Unknown SITE command.").await,
            Command::Stat(None) => self.stat_server().await,
            Command::Type(t) => self.set_type(t).await,
            Command::Mode(m) => self.set_mode(m).await,
            Command::Stru(s) => self.set_stru(s).await,
            Command::Auth(mechanism) => self.auth(mechanism).await,
            Command::Pbsz(size) => self.pbsz(size).await,
            Command::Prot(level) => self.prot(level).await,
            Command::Ccc => self.ccc().await,
            // Everything else was handled by the caller; reaching here is a
            // command that needs a login.
            _ => {
                self.refuse_if_anonymous(Reply::new(530, "Please login with USER and PASS."))
                    .await
            }
        }
    }
}

//! PASV, EPSV, PORT, EPRT: preparing the data connection.
//!
//! Passive listeners accept only the control connection's IP; active
//! connections go only to the client's own IP at an unprivileged port
//! (no FTP bounce), and start from our end of the control connection.

use std::io;
use std::net::{IpAddr, SocketAddr};

use crate::connection::{Connection, Flow};
use crate::data::{DataSetup, PASSIVE_WAIT};
use crate::parse::EpsvArg;
use crate::passive::{BindError, Holder, PendingPassive, same_host};
use crate::reply::Reply;

impl Connection {
    /// Binds a passive listener and stores it as the next data connection.
    /// Returns the port, or sends 425 and returns `None`.
    async fn open_passive(&mut self) -> io::Result<Option<u16>> {
        // A previous listener is dropped here: its port goes back to the pool.
        self.data = None;
        let holder = Holder {
            source: self.peer.ip(),
            account: self
                .session()
                .map(|s| s.username().to_owned())
                .unwrap_or_default(),
        };
        match self.ctx.pool.bind(self.local.ip(), &holder) {
            Ok((listener, lease)) => {
                let port = lease.port();
                let pending = PendingPassive::new(listener, lease, self.peer.ip(), PASSIVE_WAIT)
                    .admitted_by(self.ctx.gateway.admission().clone())
                    .behind(self.ctx.gateway.proxy_policy());
                self.data = Some(DataSetup::Passive(pending));
                Ok(Some(port))
            }
            Err(BindError::HolderFull) => {
                tracing::warn!(peer = %self.peer, account = %holder.account, "passive port share used up");
                self.send(Reply::new(
                    425,
                    "Too many passive connections pending from this client.",
                ))
                .await?;
                Ok(None)
            }
            Err(e) => {
                tracing::warn!(error = %e, "no passive port");
                self.send(Reply::new(425, "Can't open passive connection."))
                    .await?;
                Ok(None)
            }
        }
    }

    pub(super) async fn pasv(&mut self) -> io::Result<Flow> {
        if self.epsv_all {
            return self.reply(503, "EPSV ALL in effect; use EPSV.").await;
        }
        let Some(ip) = self.ctx.advertised.resolve(self.front).await else {
            return self.reply(425, "PASV needs IPv4; use EPSV.").await;
        };
        let Some(port) = self.open_passive().await? else {
            return Ok(Flow::Continue);
        };
        let [a, b, c, d] = ip.octets();
        let text = format!(
            "Entering Passive Mode ({a},{b},{c},{d},{},{}).",
            port >> 8,
            port & 0xff
        );
        self.reply(227, text).await
    }

    pub(super) async fn epsv(&mut self, arg: EpsvArg) -> io::Result<Flow> {
        let v4 = self.front.to_canonical().is_ipv4();
        match arg {
            EpsvArg::All => {
                self.epsv_all = true;
                return self.reply(200, "EPSV ALL ok.").await;
            }
            EpsvArg::V4 if !v4 => {
                return self
                    .reply(522, "Network protocol not supported, use (2).")
                    .await;
            }
            EpsvArg::V6 if v4 => {
                return self
                    .reply(522, "Network protocol not supported, use (1).")
                    .await;
            }
            _ => {}
        }
        let Some(port) = self.open_passive().await? else {
            return Ok(Flow::Continue);
        };
        self.reply(229, format!("Entering Extended Passive Mode (|||{port}|)"))
            .await
    }

    /// PORT and EPRT.
    pub(super) async fn port(&mut self, to: SocketAddr, verb: &'static str) -> io::Result<Flow> {
        if !self.ctx.config.active_mode {
            return self
                .reply(502, "Active mode is disabled; use PASV or EPSV.")
                .await;
        }
        if self.epsv_all {
            return self.reply(503, "EPSV ALL in effect; use EPSV.").await;
        }
        if let Err(why) = vet_active_target(to, self.peer.ip(), self.local.ip()) {
            tracing::warn!(peer = %self.peer, target = %to, "{verb} refused: {why}");
            return self.reply(504, format!("{verb} refused: {why}.")).await;
        }
        self.data = Some(DataSetup::Active(to));
        self.reply(200, format!("{verb} command successful.")).await
    }
}

/// The FTP bounce rule: only the client's own IP, only ports from 1024, and
/// the control connection's address family.
fn vet_active_target(to: SocketAddr, client: IpAddr, local: IpAddr) -> Result<(), &'static str> {
    if !same_host(to.ip(), client) {
        return Err("only the client's own address is allowed");
    }
    if to.port() < 1024 {
        return Err("privileged ports are not allowed");
    }
    if to.ip().to_canonical().is_ipv4() != local.to_canonical().is_ipv4() {
        return Err("address family differs from the control connection");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn bounce_rules() {
        let client: IpAddr = "127.0.0.1".parse().unwrap();
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(vet_active_target("127.0.0.1:5000".parse().unwrap(), client, local).is_ok());
        assert!(vet_active_target("127.0.0.2:5000".parse().unwrap(), client, local).is_err());
        assert!(vet_active_target("10.0.0.1:5000".parse().unwrap(), client, local).is_err());
        assert!(vet_active_target("127.0.0.1:1023".parse().unwrap(), client, local).is_err());
        assert!(vet_active_target("127.0.0.1:21".parse().unwrap(), client, local).is_err());
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        assert!(vet_active_target("127.0.0.1:5000".parse().unwrap(), mapped, mapped).is_ok());
        let v6: IpAddr = "::1".parse().unwrap();
        assert!(vet_active_target("[::1]:5000".parse().unwrap(), v6, v6).is_ok());
        assert!(vet_active_target("127.0.0.1:5000".parse().unwrap(), v6, v6).is_err());
    }
}

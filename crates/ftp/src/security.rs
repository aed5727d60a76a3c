//! FTPS (RFC 4217): `AUTH`, `PBSZ`, `PROT`, `CCC`, the `tls = required`
//! policy, and which protocol a login counts as.
//!
//! This type only decides; the connection does the I/O:
//!
//! - `AUTH TLS`/`AUTH SSL`: [`ChannelSecurity::auth`] hands out a fresh
//!   [`ControlTls`] (from `FtpsTls::control_session`, so a certificate
//!   reload applies to every later session), the connection replies 234 and
//!   swaps the control stream for a TLS one with
//!   [`ControlChannel::upgrade`](crate::control::ControlChannel::upgrade),
//!   which drops every byte pipelined before the handshake (no STARTTLS
//!   command injection). [`ChannelSecurity::secured`] records it;
//!   [`ChannelSecurity::protocol`] then says `Ftps`.
//! - The implicit listener handshakes before the greeting and starts with
//!   [`ChannelSecurity::implicit`] (data protected by default, as vsftpd).
//! - `PROT P`: [`DataSetup::open`](crate::data::DataSetup::open) wraps the
//!   data connection with `ControlTls::accept_data` (`accept_upload` for
//!   uploads: no TLS 1.3 tickets the client would never read), which with
//!   `require_session_reuse` refuses a handshake that did not resume this
//!   control session (425). `sendfile` stays on plain data connections.
//!
//! Reply codes chosen: `USER`/`PASS` before TLS under `tls = required`:
//! `530 Please use AUTH TLS.`; transfers under `PROT C` when TLS is
//! required: `521 Data connections must be encrypted.`; `PBSZ` before
//! `AUTH`: 503; `AUTH` on a TLS connection: 503; `CCC`: 533 (502 without
//! TLS); `REIN` keeps the TLS control connection (it cannot be unwrapped
//! safely, the same reason `CCC` is refused) and resets `PROT`. `AUTH`
//! after a clear-text login logs the session out (RFC 2228).

use std::sync::Arc;

use dropgate_core::store::Protocol;
use dropgate_ftps::{ControlTls, FtpsTls};

use crate::reply::Reply;
use crate::{FtpConfig, TlsMode};

/// How long a control connection's TLS handshake may take (after `AUTH
/// TLS`, or before the greeting on the implicit listener).
pub(crate) const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Data channel protection level (`PROT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Protection {
    /// `PROT C`: data in the clear.
    #[default]
    Clear,
    /// `PROT P`: data over TLS.
    Private,
}

/// What `AUTH` decided.
pub(crate) enum AuthDecision {
    /// Reply 234, then handshake the control connection with this.
    Upgrade(ControlTls),
    /// Refused with this reply; the connection stays as it is.
    Refuse(Reply),
}

/// TLS state of one control connection.
pub(crate) struct ChannelSecurity {
    /// The listener's certificate (`None`: no TLS here).
    tls: Option<Arc<FtpsTls>>,
    mode: TlsMode,
    /// This connection's TLS session, once the control connection is TLS.
    control: Option<ControlTls>,
    /// What `PROT` chose.
    protection: Protection,
    /// Implicit FTPS: data is protected unless the client says `PROT C`.
    implicit: bool,
}

impl ChannelSecurity {
    /// A connection of an explicit listener, in the clear until `AUTH`.
    pub(crate) fn new(config: &FtpConfig) -> ChannelSecurity {
        ChannelSecurity {
            tls: config.tls.clone(),
            mode: config.tls_mode,
            control: None,
            protection: Protection::Clear,
            implicit: false,
        }
    }

    /// A connection of the implicit listener, TLS from the first byte.
    pub(crate) fn implicit(config: &FtpConfig, control: ControlTls) -> ChannelSecurity {
        ChannelSecurity {
            tls: config.tls.clone(),
            mode: config.tls_mode,
            control: Some(control),
            protection: Protection::Private,
            implicit: true,
        }
    }

    /// Which protocol a login on this connection is audited and permitted as.
    pub(crate) fn protocol(&self) -> Protocol {
        if self.control.is_some() {
            Protocol::Ftps
        } else {
            Protocol::Ftp
        }
    }

    /// Whether the control connection is TLS.
    pub(crate) fn is_tls(&self) -> bool {
        self.control.is_some()
    }

    /// Whether `AUTH TLS` is offered (FEAT lists it).
    pub(crate) fn auth_offered(&self) -> bool {
        self.tls.is_some() && self.mode != TlsMode::Off && self.control.is_none()
    }

    /// Whether FEAT lists `PBSZ` and `PROT`.
    pub(crate) fn prot_offered(&self) -> bool {
        self.auth_offered() || self.control.is_some()
    }

    /// `AUTH <mechanism>`.
    pub(crate) fn auth(&mut self, mechanism: &str) -> AuthDecision {
        let known = matches!(mechanism, "TLS" | "SSL" | "TLS-C" | "TLS-P");
        if !known {
            return AuthDecision::Refuse(Reply::new(504, "Unknown AUTH mechanism."));
        }
        if self.control.is_some() {
            return AuthDecision::Refuse(Reply::new(503, "Already using TLS."));
        }
        match &self.tls {
            Some(tls) if self.mode != TlsMode::Off => AuthDecision::Upgrade(tls.control_session()),
            _ => AuthDecision::Refuse(Reply::new(502, "TLS is not available on this listener.")),
        }
    }

    /// Records a completed `AUTH` handshake. `AUTH SSL` and `AUTH TLS-P`
    /// imply protected data (as the drafts before RFC 4217 had it).
    pub(crate) fn secured(&mut self, mechanism: &str, control: ControlTls) {
        self.control = Some(control);
        self.protection = match mechanism {
            "SSL" | "TLS-P" => Protection::Private,
            _ => Protection::Clear,
        };
    }

    /// `USER`/`PASS`: refused in the clear when TLS is required.
    pub(crate) fn login_allowed(&self) -> Result<(), Reply> {
        if self.mode == TlsMode::Required && self.control.is_none() {
            return Err(Reply::new(530, "Please use AUTH TLS."));
        }
        Ok(())
    }

    /// `PBSZ n`: TLS has no protection buffer, so any size is answered with
    /// `PBSZ=0` (RFC 4217 section 9). Before `AUTH` it is out of sequence
    /// (503); a listener without TLS keeps the old lenient answer.
    pub(crate) fn pbsz(&self, _size: u64) -> Reply {
        if self.control.is_none() && self.auth_offered() {
            return Reply::new(503, "PBSZ needs AUTH TLS first.");
        }
        Reply::new(200, "PBSZ=0")
    }

    /// `PROT C|S|E|P`.
    pub(crate) fn prot(&mut self, level: char) -> Reply {
        match level {
            // RFC 2228's 534: refused by policy, at the command, rather than
            // accepted and then refused at each transfer.
            'C' if self.mode == TlsMode::Required => Reply::new(
                534,
                "PROT C not allowed: data connections must be encrypted.",
            ),
            'C' => {
                self.protection = Protection::Clear;
                Reply::new(200, "Protection level set to C.")
            }
            'P' if self.control.is_some() => {
                self.protection = Protection::Private;
                Reply::new(200, "Protection level set to P.")
            }
            'P' => Reply::new(536, "PROT P needs TLS on the control connection."),
            'S' | 'E' => Reply::new(536, "Protection level not supported."),
            _ => Reply::new(504, "Unknown protection level."),
        }
    }

    /// `CCC`: the control connection never goes back to the clear.
    pub(crate) fn ccc(&self) -> Reply {
        if self.control.is_some() {
            Reply::new(533, "Command channel stays encrypted.")
        } else {
            Reply::new(502, "CCC not available: no TLS on the control connection.")
        }
    }

    /// `REIN`: the TLS control connection stays, `PROT` starts over.
    pub(crate) fn rein(&mut self) {
        self.protection = if self.implicit {
            Protection::Private
        } else {
            Protection::Clear
        };
    }

    /// The TLS session data connections must use: `Ok(None)` in the clear,
    /// `Ok(Some)` under `PROT P`, or the refusal when TLS is required and
    /// the client chose `PROT C`.
    pub(crate) fn data_tls(&self) -> Result<Option<ControlTls>, Reply> {
        match (self.protection, &self.control) {
            (Protection::Private, Some(c)) => Ok(Some(c.clone())),
            _ if self.mode == TlsMode::Required => {
                Err(Reply::new(521, "Data connections must be encrypted."))
            }
            _ => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn config(tls: Option<Arc<FtpsTls>>, mode: TlsMode) -> FtpConfig {
        FtpConfig {
            listen: Vec::new(),
            passive_ports: 1..=1,
            passive_address: None,
            active_mode: false,
            idle_timeout: std::time::Duration::from_secs(1),
            banner: String::new(),
            tls,
            tls_mode: mode,
            implicit_tls: false,
        }
    }

    fn tls(dir: &std::path::Path) -> Arc<FtpsTls> {
        FtpsTls::load(dropgate_ftps::TlsSettings {
            cert: None,
            key: None,
            data_dir: dir.to_path_buf(),
            require_session_reuse: true,
            tls12_only: false,
        })
        .unwrap()
    }

    fn refused(d: AuthDecision) -> u16 {
        match d {
            AuthDecision::Refuse(r) => r.code(),
            AuthDecision::Upgrade(_) => 234,
        }
    }

    #[test]
    fn without_tls() {
        let mut s = ChannelSecurity::new(&config(None, TlsMode::Optional));
        assert_eq!(refused(s.auth("TLS")), 502);
        assert_eq!(refused(s.auth("SSL")), 502);
        assert_eq!(refused(s.auth("KERBEROS")), 504);
        assert_eq!(s.pbsz(0).code(), 200);
        assert_eq!(s.prot('C').code(), 200);
        assert_eq!(s.prot('P').code(), 536);
        assert_eq!(s.prot('X').code(), 504);
        assert_eq!(s.ccc().code(), 502);
        assert_eq!(s.protocol(), Protocol::Ftp);
        assert!(!s.auth_offered() && !s.prot_offered());
        assert!(s.login_allowed().is_ok());
        assert!(s.data_tls().unwrap().is_none());
    }

    #[test]
    fn off_refuses_auth_even_with_a_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = ChannelSecurity::new(&config(Some(tls(dir.path())), TlsMode::Off));
        assert_eq!(refused(s.auth("TLS")), 502);
        assert!(!s.auth_offered());
    }

    #[test]
    fn explicit_sequence() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = ChannelSecurity::new(&config(Some(tls(dir.path())), TlsMode::Required));
        assert!(s.auth_offered());
        assert_eq!(s.login_allowed().unwrap_err().code(), 530);
        assert_eq!(s.pbsz(0).code(), 503);
        assert_eq!(s.prot('P').code(), 536);
        assert_eq!(s.data_tls().unwrap_err().code(), 521);
        let AuthDecision::Upgrade(control) = s.auth("TLS") else {
            panic!("AUTH TLS refused");
        };
        s.secured("TLS", control);
        assert_eq!(s.protocol(), Protocol::Ftps);
        assert!(s.login_allowed().is_ok());
        assert_eq!(refused(s.auth("TLS")), 503);
        assert_eq!(s.pbsz(0).code(), 200);
        assert_eq!(s.data_tls().unwrap_err().code(), 521, "PROT C by default");
        assert_eq!(s.prot('P').code(), 200);
        assert!(s.data_tls().unwrap().is_some());
        assert_eq!(s.prot('S').code(), 536);
        assert_eq!(s.ccc().code(), 533);
        s.rein();
        assert_eq!(s.protocol(), Protocol::Ftps);
        assert_eq!(s.data_tls().unwrap_err().code(), 521);
    }

    #[test]
    fn auth_ssl_implies_prot_p_and_implicit_defaults_to_it() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(Some(tls(dir.path())), TlsMode::Optional);
        let mut s = ChannelSecurity::new(&cfg);
        let AuthDecision::Upgrade(control) = s.auth("SSL") else {
            panic!("AUTH SSL refused");
        };
        s.secured("SSL", control.clone());
        assert!(s.data_tls().unwrap().is_some());
        let mut s = ChannelSecurity::implicit(&cfg, control);
        assert!(s.data_tls().unwrap().is_some());
        assert_eq!(refused(s.auth("TLS")), 503);
        assert_eq!(s.prot('C').code(), 200);
        assert!(s.data_tls().unwrap().is_none());
        s.rein();
        assert!(s.data_tls().unwrap().is_some());
    }
}

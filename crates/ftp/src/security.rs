//! The seam where FTPS plugs in: `AUTH`, `PBSZ` and `PROT`, and which
//! protocol a login counts as.
//!
//! Plain FTP has no TLS, so today `AUTH` is refused (502) and only `PROT C`
//! is accepted. The FTPS work extends this one type with an
//! `Option<dropgate_ftps::ControlTls>` (from `FtpsTls::control_session`,
//! one per control connection) and a `tls = off|optional|required` policy:
//!
//! - `AUTH TLS`/`AUTH SSL`: reply 234, then
//!   [`ControlChannel::take_stream`](crate::control::ControlChannel::take_stream)
//!   (which drops commands pipelined before the handshake), hand the boxed
//!   stream to `ControlTls::accept_control`, and box the TLS stream into a
//!   new `ControlChannel`. [`ChannelSecurity::protocol`] then says `Ftps`.
//! - `PROT P`: [`DataSetup::open`](crate::data::DataSetup::open) wraps the
//!   TCP stream with `ControlTls::accept_data` into a new
//!   [`DataStream`](crate::data::DataStream) variant (zero-copy `sendfile`
//!   stays on the plain variant only).
//! - The implicit-FTPS listener does the control handshake before
//!   `Connection::new`, which already takes any boxed stream.
//!
//! Nothing else in the connection needs to know.

use dropgate_core::store::Protocol;

use crate::reply::Reply;

/// Data channel protection level (`PROT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Protection {
    /// `PROT C`: data in the clear.
    #[default]
    Clear,
}

/// TLS state of one control connection.
#[derive(Debug, Default)]
pub(crate) struct ChannelSecurity {
    /// What `PROT` chose.
    protection: Protection,
}

impl ChannelSecurity {
    /// Which protocol a login on this connection is audited and permitted as.
    pub(crate) fn protocol(&self) -> Protocol {
        Protocol::Ftp
    }

    /// Current data protection.
    #[allow(dead_code)] // Read by the FTPS data channel.
    pub(crate) fn protection(&self) -> Protection {
        self.protection
    }

    /// `AUTH <mechanism>`.
    pub(crate) fn auth(&mut self, mechanism: &str) -> Reply {
        match mechanism {
            "TLS" | "SSL" | "TLS-C" | "TLS-P" => {
                Reply::new(502, "TLS is not available on this listener.")
            }
            _ => Reply::new(504, "Unknown AUTH mechanism."),
        }
    }

    /// `PBSZ n`: TLS has no protection buffer, so any size is answered with
    /// `PBSZ=0` (RFC 4217 section 9).
    pub(crate) fn pbsz(&mut self, _size: u64) -> Reply {
        Reply::new(200, "PBSZ=0")
    }

    /// `PROT C|S|E|P`.
    pub(crate) fn prot(&mut self, level: char) -> Reply {
        match level {
            'C' => {
                self.protection = Protection::Clear;
                Reply::new(200, "Protection level set to C.")
            }
            'P' => Reply::new(536, "PROT P needs TLS on the control connection."),
            'S' | 'E' => Reply::new(536, "Protection level not supported."),
            _ => Reply::new(504, "Unknown protection level."),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_tls() {
        let mut s = ChannelSecurity::default();
        assert_eq!(s.auth("TLS").code(), 502);
        assert_eq!(s.auth("SSL").code(), 502);
        assert_eq!(s.auth("KERBEROS").code(), 504);
        assert_eq!(s.pbsz(0).code(), 200);
        assert_eq!(s.prot('C').code(), 200);
        assert_eq!(s.prot('P').code(), 536);
        assert_eq!(s.prot('X').code(), 504);
        assert_eq!(s.protocol(), Protocol::Ftp);
    }
}

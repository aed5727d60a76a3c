//! FEAT, OPTS, HELP, STAT (server status), TYPE, MODE, STRU.

use std::io;

use crate::connection::{Connection, Flow, Login};
use crate::parse::{Opts, TransferType};
use crate::reply::Reply;

impl Connection {
    pub(super) async fn feat(&mut self) -> io::Result<Flow> {
        let mut lines = vec!["Features:".to_owned()];
        if self.security.auth_offered() {
            lines.push(" AUTH SSL".to_owned());
            lines.push(" AUTH TLS".to_owned());
        }
        lines.extend([
            " EPRT".to_owned(),
            " EPSV".to_owned(),
            " HASH SHA-256*".to_owned(),
            " MDTM".to_owned(),
        ]);
        // MFMT only where the storage keeps the times it is given.
        if self.ctx.gateway.storage().capabilities().set_times {
            lines.push(" MFMT".to_owned());
        }
        lines.extend([
            format!(" MLST {}", self.facts.feat_list()),
            " PASV".to_owned(),
        ]);
        if self.security.prot_offered() {
            lines.push(" PBSZ".to_owned());
            lines.push(" PROT".to_owned());
        }
        lines.extend([
            " REST STREAM".to_owned(),
            " SIZE".to_owned(),
            " TVFS".to_owned(),
            " UTF8".to_owned(),
            "End".to_owned(),
        ]);
        self.send(Reply::multi(211, lines)).await?;
        Ok(Flow::Continue)
    }

    pub(super) async fn opts(&mut self, opts: Opts) -> io::Result<Flow> {
        match opts {
            // Names are always UTF-8 (RFC 2640); OFF changes nothing.
            Opts::Utf8(_) => self.reply(200, "Always in UTF8 mode.").await,
            Opts::Mlst(facts) => {
                self.facts = facts;
                self.reply(200, format!("MLST OPTS {}", facts.selected_list()))
                    .await
            }
            Opts::Hash(None) => self.reply(200, "SHA-256").await,
            Opts::Hash(Some(alg)) if alg == "SHA-256" => self.reply(200, "SHA-256").await,
            Opts::Hash(Some(_)) => {
                self.reply(501, "Unknown hash algorithm; only SHA-256.")
                    .await
            }
            Opts::Unknown(_) => self.reply(501, "Option not understood.").await,
        }
    }

    pub(super) async fn help(&mut self) -> io::Result<Flow> {
        let lines = vec![
            "The following commands are recognized.".to_owned(),
            " ABOR ACCT ALLO APPE AUTH CCC  CDUP CWD  DELE EPRT EPSV FEAT HASH HELP LIST"
                .to_owned(),
            " MDTM MFMT MKD  MLSD MLST MODE NLST NOOP OPTS PASS PASV PBSZ PORT PROT PWD".to_owned(),
            " QUIT REIN REST RETR RMD  RNFR RNTO SITE SIZE STAT STOR STOU STRU SYST TYPE"
                .to_owned(),
            " USER XCUP XCWD XMKD XPWD XRMD".to_owned(),
            "Help OK.".to_owned(),
        ];
        self.send(Reply::multi(214, lines)).await?;
        Ok(Flow::Continue)
    }

    /// STAT without argument: the session's status.
    pub(super) async fn stat_server(&mut self) -> io::Result<Flow> {
        let mut lines = vec![
            "FTP server status:".to_owned(),
            format!("     Connected to {}", self.peer.ip()),
        ];
        match &self.login {
            Login::Done(s) => lines.push(format!("     Logged in as {}", s.username())),
            Login::Pending(_) => lines.push("     Not logged in".to_owned()),
        }
        if self.security.is_tls() {
            lines.push("     Control connection is encrypted (TLS)".to_owned());
            if matches!(self.security.data_tls(), Ok(Some(_))) {
                lines.push("     Data connections will be encrypted".to_owned());
            }
        }
        lines.push(
            match self.transfer_type {
                TransferType::Ascii => "     TYPE: ASCII",
                TransferType::Binary => "     TYPE: BINARY",
            }
            .to_owned(),
        );
        lines.push(format!(
            "     Session timeout in seconds is {}",
            self.ctx.config.idle_timeout.as_secs()
        ));
        lines.push(
            match &self.data {
                Some(crate::data::DataSetup::Passive(_)) => "     Passive data connection prepared",
                Some(crate::data::DataSetup::Active(_)) => "     Active data connection prepared",
                None => "     No data connection",
            }
            .to_owned(),
        );
        lines.push("End of status".to_owned());
        self.send(Reply::multi(211, lines)).await?;
        Ok(Flow::Continue)
    }

    pub(super) async fn set_type(&mut self, t: TransferType) -> io::Result<Flow> {
        self.transfer_type = t;
        match t {
            TransferType::Ascii => self.reply(200, "Switching to ASCII mode.").await,
            TransferType::Binary => self.reply(200, "Switching to Binary mode.").await,
        }
    }

    pub(super) async fn set_mode(&mut self, mode: char) -> io::Result<Flow> {
        match mode {
            'S' => self.reply(200, "Mode set to S.").await,
            'B' | 'C' => self.reply(504, "Only stream mode is supported.").await,
            _ => self.reply(501, "Unknown mode.").await,
        }
    }

    pub(super) async fn set_stru(&mut self, stru: char) -> io::Result<Flow> {
        match stru {
            'F' => self.reply(200, "Structure set to F.").await,
            'R' | 'P' => self.reply(504, "Only file structure is supported.").await,
            _ => self.reply(501, "Unknown structure.").await,
        }
    }
}

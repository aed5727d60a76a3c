//! The FTP command parser: one control line in, one [`Command`] out.
//!
//! Pure (no I/O, no state), so every byte rule is unit-tested here: verbs are
//! case-insensitive, the argument is everything after the first space (file
//! names may start or end with spaces), Telnet IAC noise before a verb (the
//! IP/DM pair clients send ahead of `ABOR`) is dropped, and RFC 2640's
//! `CR NUL` inside a path name stands for a CR.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, SystemTime};

use chrono::{NaiveDate, NaiveDateTime};

/// Longest verb we look at; anything longer is unknown.
const MAX_VERB: usize = 8;

/// `TYPE` argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TransferType {
    /// `TYPE A`: line endings converted.
    Ascii,
    /// `TYPE I` / `TYPE L 8`: byte for byte.
    Binary,
}

/// `EPSV` argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EpsvArg {
    /// No argument: the control connection's family.
    Any,
    /// `EPSV 1`.
    V4,
    /// `EPSV 2`.
    V6,
    /// `EPSV ALL`: from now on only EPSV.
    All,
}

/// The MLST/MLSD facts a client can select with `OPTS MLST`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Facts {
    pub(crate) kind: bool,
    pub(crate) size: bool,
    pub(crate) modify: bool,
    pub(crate) perm: bool,
    pub(crate) unique: bool,
}

impl Facts {
    /// Every fact (the default selection).
    pub(crate) const ALL: Facts = Facts {
        kind: true,
        size: true,
        modify: true,
        perm: true,
        unique: true,
    };
    /// No fact.
    pub(crate) const NONE: Facts = Facts {
        kind: false,
        size: false,
        modify: false,
        perm: false,
        unique: false,
    };

    /// The FEAT line part: `type*;size*;...` with `*` on selected facts.
    pub(crate) fn feat_list(self) -> String {
        let mark = |on: bool| if on { "*" } else { "" };
        format!(
            "type{};size{};modify{};perm{};unique{};",
            mark(self.kind),
            mark(self.size),
            mark(self.modify),
            mark(self.perm),
            mark(self.unique)
        )
    }

    /// The selected facts, `type;size;` form (the `OPTS MLST` reply).
    pub(crate) fn selected_list(self) -> String {
        let mut s = String::new();
        for (on, name) in [
            (self.kind, "type"),
            (self.size, "size"),
            (self.modify, "modify"),
            (self.perm, "perm"),
            (self.unique, "unique"),
        ] {
            if on {
                s.push_str(name);
                s.push(';');
            }
        }
        s
    }
}

/// `OPTS` argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Opts {
    /// `OPTS UTF8 ON|OFF` (also `UTF-8`).
    Utf8(bool),
    /// `OPTS MLST fact;fact;` (unknown facts ignored, as RFC 3659 says).
    Mlst(Facts),
    /// `OPTS HASH [alg]`: ask (None) or select an algorithm.
    Hash(Option<String>),
    /// Anything else.
    Unknown(String),
}

/// One parsed control command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Command {
    User(String),
    Pass(String),
    Acct,
    Quit,
    Rein,
    Pwd,
    Cwd(String),
    Cdup,
    /// `LIST [flags] [path]`: flags such as `-la` are dropped.
    List(Option<String>),
    Nlst(Option<String>),
    Mlsd(Option<String>),
    Mlst(Option<String>),
    Stat(Option<String>),
    Retr(String),
    Stor(String),
    Stou(Option<String>),
    Appe(String),
    Rest(u64),
    Abor,
    Allo,
    Dele(String),
    Rnfr(String),
    Rnto(String),
    Mkd(String),
    Rmd(String),
    Size(String),
    Mdtm(String),
    Mfmt {
        modified: SystemTime,
        path: String,
    },
    Hash(String),
    Type(TransferType),
    /// `MODE S` is the only one accepted; others get 504.
    Mode(char),
    /// `STRU F` is the only one accepted; others get 504.
    Stru(char),
    Port(SocketAddrV4),
    Pasv,
    Eprt(SocketAddr),
    Epsv(EpsvArg),
    Feat,
    Opts(Opts),
    Syst,
    Noop,
    Help,
    /// `SITE HELP`.
    SiteHelp,
    /// Any other `SITE` subcommand.
    SiteOther,
    /// `AUTH TLS|SSL|...` (the mechanism, upper-cased).
    Auth(String),
    /// `PBSZ n`.
    Pbsz(u64),
    /// `PROT C|S|E|P`.
    Prot(char),
    /// `CCC` (clear the command channel; always refused).
    Ccc,
    /// A verb we do not know (upper-cased, possibly truncated).
    Unknown(String),
}

impl Command {
    /// Commands served before login (everything else gets 530).
    pub(crate) fn allowed_before_login(&self) -> bool {
        matches!(
            self,
            Command::User(_)
                | Command::Pass(_)
                | Command::Auth(_)
                | Command::Pbsz(_)
                | Command::Prot(_)
                | Command::Ccc
                | Command::Feat
                | Command::Opts(_)
                | Command::Syst
                | Command::Noop
                | Command::Help
                | Command::Quit
        )
    }
}

/// Why a line is not a valid command; each maps to one reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ParseError {
    /// The command needs an argument (501).
    #[error("{0} needs an argument")]
    MissingArgument(&'static str),
    /// The argument is malformed (501).
    #[error("bad argument to {0}")]
    BadArgument(&'static str),
    /// A well-formed parameter we do not implement (504).
    #[error("{0} parameter not implemented")]
    Unsupported(&'static str),
    /// EPRT/EPSV with a network protocol other than 1 or 2 (522).
    #[error("network protocol not supported")]
    NetworkProtocol,
    /// The argument is not UTF-8 (501).
    #[error("argument is not valid UTF-8")]
    NotUtf8,
    /// An empty line (500).
    #[error("empty command")]
    Empty,
}

/// Parses one control line (without its CR LF).
pub(crate) fn parse(line: &[u8]) -> Result<Command, ParseError> {
    let line = strip_telnet(line);
    let (verb, arg) = match line.iter().position(|&b| b == b' ') {
        Some(i) => (&line[..i], Some(&line[i + 1..])),
        None => (line, None),
    };
    if verb.is_empty() {
        return Err(ParseError::Empty);
    }
    if verb.len() > MAX_VERB || !verb.iter().all(u8::is_ascii_alphabetic) {
        let shown: String = verb
            .iter()
            .take(MAX_VERB)
            .map(|&b| char::from(b).to_ascii_uppercase())
            .collect();
        return Ok(Command::Unknown(shown));
    }
    let verb = String::from_utf8_lossy(verb).to_ascii_uppercase();
    let arg = match arg {
        Some(a) => Some(decode_arg(a)?),
        None => None,
    };
    // An empty argument ("CWD ") is the same as none.
    let arg = arg.filter(|a| !a.is_empty());
    let need = |name: &'static str| arg.clone().ok_or(ParseError::MissingArgument(name));

    Ok(match verb.as_str() {
        "USER" => Command::User(need("USER")?),
        "PASS" => Command::Pass(arg.unwrap_or_default()),
        "ACCT" => Command::Acct,
        "QUIT" => Command::Quit,
        "REIN" => Command::Rein,
        "PWD" | "XPWD" => Command::Pwd,
        "CWD" | "XCWD" => Command::Cwd(need("CWD")?),
        "CDUP" | "XCUP" => Command::Cdup,
        "LIST" => Command::List(arg.and_then(|a| strip_list_flags(&a))),
        "NLST" => Command::Nlst(arg.and_then(|a| strip_list_flags(&a))),
        "MLSD" => Command::Mlsd(arg),
        "MLST" => Command::Mlst(arg),
        "STAT" => Command::Stat(arg.and_then(|a| strip_list_flags(&a))),
        "RETR" => Command::Retr(need("RETR")?),
        "STOR" => Command::Stor(need("STOR")?),
        "STOU" => Command::Stou(arg),
        "APPE" => Command::Appe(need("APPE")?),
        "REST" => {
            let a = need("REST")?;
            Command::Rest(
                a.trim()
                    .parse::<u64>()
                    .map_err(|_| ParseError::BadArgument("REST"))?,
            )
        }
        "ABOR" => Command::Abor,
        "ALLO" => Command::Allo,
        "DELE" => Command::Dele(need("DELE")?),
        "RNFR" => Command::Rnfr(need("RNFR")?),
        "RNTO" => Command::Rnto(need("RNTO")?),
        "MKD" | "XMKD" => Command::Mkd(need("MKD")?),
        "RMD" | "XRMD" => Command::Rmd(need("RMD")?),
        "SIZE" => Command::Size(need("SIZE")?),
        "MDTM" => Command::Mdtm(need("MDTM")?),
        "MFMT" => parse_mfmt(&need("MFMT")?)?,
        "HASH" => Command::Hash(need("HASH")?),
        "TYPE" => Command::Type(parse_type(&need("TYPE")?)?),
        "MODE" => Command::Mode(single_letter(&need("MODE")?, "MODE")?),
        "STRU" => Command::Stru(single_letter(&need("STRU")?, "STRU")?),
        "PORT" => Command::Port(parse_port(&need("PORT")?)?),
        "PASV" => Command::Pasv,
        "EPRT" => Command::Eprt(parse_eprt(&need("EPRT")?)?),
        "EPSV" => Command::Epsv(parse_epsv(arg.as_deref())?),
        "FEAT" => Command::Feat,
        "OPTS" => Command::Opts(parse_opts(&need("OPTS")?)),
        "SYST" => Command::Syst,
        "NOOP" => Command::Noop,
        "HELP" => Command::Help,
        "SITE" => {
            let a = need("SITE")?;
            if a.trim().eq_ignore_ascii_case("HELP") {
                Command::SiteHelp
            } else {
                Command::SiteOther
            }
        }
        "AUTH" => Command::Auth(need("AUTH")?.trim().to_ascii_uppercase()),
        "PBSZ" => Command::Pbsz(
            need("PBSZ")?
                .trim()
                .parse::<u64>()
                .map_err(|_| ParseError::BadArgument("PBSZ"))?,
        ),
        "PROT" => Command::Prot(single_letter(&need("PROT")?, "PROT")?),
        "CCC" => Command::Ccc,
        _ => Command::Unknown(verb),
    })
}

/// Drops Telnet commands in front of the verb: `IAC x` pairs (IP, DM, ...)
/// and a lone DM left behind when the urgent byte was read in line.
fn strip_telnet(mut line: &[u8]) -> &[u8] {
    loop {
        match line {
            [0xff, _, rest @ ..] => line = rest,
            [0xf2, rest @ ..] => line = rest,
            _ => return line,
        }
    }
}

/// Decodes an argument: `CR NUL` is a CR (RFC 2640); the rest must be UTF-8.
fn decode_arg(raw: &[u8]) -> Result<String, ParseError> {
    let mut bytes = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        bytes.push(raw[i]);
        if raw[i] == b'\r' && raw.get(i + 1) == Some(&0) {
            i += 1;
        }
        i += 1;
    }
    String::from_utf8(bytes).map_err(|_| ParseError::NotUtf8)
}

/// `-la dir` -> `dir`; `-a` -> none. Leading words that start with `-` are
/// `ls` options (as vsftpd and ProFTPD treat them).
fn strip_list_flags(arg: &str) -> Option<String> {
    let mut rest = arg;
    while rest.starts_with('-') {
        match rest.find(' ') {
            Some(i) => rest = rest[i + 1..].trim_start_matches(' '),
            None => return None,
        }
    }
    if rest.is_empty() {
        None
    } else {
        Some(rest.to_owned())
    }
}

fn parse_type(arg: &str) -> Result<TransferType, ParseError> {
    let words: Vec<String> = arg
        .split_ascii_whitespace()
        .map(str::to_ascii_uppercase)
        .collect();
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    match words.as_slice() {
        ["A"] | ["A", "N"] => Ok(TransferType::Ascii),
        ["I"] | ["L", "8"] | ["L8"] => Ok(TransferType::Binary),
        ["A" | "E", _] | ["E"] | ["L", _] => Err(ParseError::Unsupported("TYPE")),
        _ => Err(ParseError::BadArgument("TYPE")),
    }
}

fn single_letter(arg: &str, verb: &'static str) -> Result<char, ParseError> {
    let mut chars = arg.trim().chars();
    match (chars.next(), chars.next()) {
        (Some(c), None) if c.is_ascii_alphabetic() => Ok(c.to_ascii_uppercase()),
        _ => Err(ParseError::BadArgument(verb)),
    }
}

/// `h1,h2,h3,h4,p1,p2`.
fn parse_port(arg: &str) -> Result<SocketAddrV4, ParseError> {
    let bad = || ParseError::BadArgument("PORT");
    let nums: Vec<u8> = arg
        .trim()
        .split(',')
        .map(|n| n.trim().parse::<u8>())
        .collect::<Result<_, _>>()
        .map_err(|_| bad())?;
    let [a, b, c, d, p1, p2] = nums.as_slice() else {
        return Err(bad());
    };
    Ok(SocketAddrV4::new(
        Ipv4Addr::new(*a, *b, *c, *d),
        u16::from(*p1) << 8 | u16::from(*p2),
    ))
}

/// `<d>proto<d>addr<d>port<d>` (RFC 2428), any printable delimiter.
fn parse_eprt(arg: &str) -> Result<SocketAddr, ParseError> {
    let bad = || ParseError::BadArgument("EPRT");
    let arg = arg.trim();
    let delim = arg.chars().next().ok_or_else(bad)?;
    if !(33..=126).contains(&(delim as u32)) {
        return Err(bad());
    }
    let parts: Vec<&str> = arg.split(delim).collect();
    // "", proto, addr, port, ""
    let ["", proto, addr, port, ""] = parts.as_slice() else {
        return Err(bad());
    };
    let port: u16 = port.parse().map_err(|_| bad())?;
    let ip: IpAddr = match *proto {
        "1" => IpAddr::V4(addr.parse().map_err(|_| bad())?),
        "2" => IpAddr::V6(addr.parse().map_err(|_| bad())?),
        _ => return Err(ParseError::NetworkProtocol),
    };
    Ok(SocketAddr::new(ip, port))
}

fn parse_epsv(arg: Option<&str>) -> Result<EpsvArg, ParseError> {
    match arg.map(str::trim) {
        None | Some("") => Ok(EpsvArg::Any),
        Some("1") => Ok(EpsvArg::V4),
        Some("2") => Ok(EpsvArg::V6),
        Some(a) if a.eq_ignore_ascii_case("ALL") => Ok(EpsvArg::All),
        Some(a) if a.bytes().all(|b| b.is_ascii_digit()) => Err(ParseError::NetworkProtocol),
        Some(_) => Err(ParseError::BadArgument("EPSV")),
    }
}

fn parse_opts(arg: &str) -> Opts {
    let (name, value) = match arg.trim().split_once(' ') {
        Some((n, v)) => (n, Some(v.trim())),
        None => (arg.trim(), None),
    };
    let name = name.to_ascii_uppercase();
    match (name.as_str(), value) {
        ("UTF8" | "UTF-8", Some(v)) if v.eq_ignore_ascii_case("ON") => Opts::Utf8(true),
        ("UTF8" | "UTF-8", Some(v)) if v.eq_ignore_ascii_case("OFF") => Opts::Utf8(false),
        ("UTF8" | "UTF-8", None) => Opts::Utf8(true),
        ("MLST", v) => {
            let mut facts = Facts::NONE;
            for f in v.unwrap_or("").split(';').map(str::trim) {
                match f.to_ascii_lowercase().as_str() {
                    "type" => facts.kind = true,
                    "size" => facts.size = true,
                    "modify" => facts.modify = true,
                    "perm" => facts.perm = true,
                    "unique" => facts.unique = true,
                    _ => {}
                }
            }
            Opts::Mlst(facts)
        }
        ("HASH", v) => Opts::Hash(v.map(str::to_ascii_uppercase)),
        _ => Opts::Unknown(name),
    }
}

/// `MFMT YYYYMMDDHHMMSS[.sss] path`.
fn parse_mfmt(arg: &str) -> Result<Command, ParseError> {
    let bad = || ParseError::BadArgument("MFMT");
    let (time, path) = arg
        .split_once(' ')
        .ok_or(ParseError::MissingArgument("MFMT"))?;
    if path.is_empty() {
        return Err(ParseError::MissingArgument("MFMT"));
    }
    let modified = parse_timeval(time).ok_or_else(bad)?;
    Ok(Command::Mfmt {
        modified,
        path: path.to_owned(),
    })
}

/// RFC 3659 `time-val` (UTC): `YYYYMMDDHHMMSS` with optional `.fraction`.
pub(crate) fn parse_timeval(s: &str) -> Option<SystemTime> {
    let (whole, frac) = match s.split_once('.') {
        Some((w, f)) => (w, Some(f)),
        None => (s, None),
    };
    if whole.len() != 14 || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // By hand where the fields are a valid date and time (chrono's parser
    // reads its pattern again on every call, once per MFMT); chrono decides
    // the rest (a leap second's `60`, or a refusal).
    let field = |at: usize, len: usize| whole.get(at..at + len)?.parse::<u32>().ok();
    let by_hand = (|| {
        let year = i32::try_from(field(0, 4)?).ok()?;
        NaiveDate::from_ymd_opt(year, field(4, 2)?, field(6, 2)?)?.and_hms_opt(
            field(8, 2)?,
            field(10, 2)?,
            field(12, 2)?,
        )
    })();
    let t = match by_hand {
        Some(t) => t,
        None => NaiveDateTime::parse_from_str(whole, "%Y%m%d%H%M%S").ok()?,
    }
    .and_utc();
    let mut nanos = 0u32;
    if let Some(f) = frac {
        if f.is_empty() || f.len() > 9 || !f.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        nanos = format!("{f:0<9}").parse().ok()?;
    }
    let secs = u64::try_from(t.timestamp()).ok()?;
    SystemTime::UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn p(s: &[u8]) -> Result<Command, ParseError> {
        parse(s)
    }

    #[test]
    fn verbs_are_case_insensitive_and_aliases_map() {
        assert_eq!(p(b"user alice"), Ok(Command::User("alice".into())));
        assert_eq!(p(b"PwD"), Ok(Command::Pwd));
        assert_eq!(p(b"XPWD"), Ok(Command::Pwd));
        assert_eq!(p(b"xcwd /a"), Ok(Command::Cwd("/a".into())));
        assert_eq!(p(b"XCUP"), Ok(Command::Cdup));
        assert_eq!(p(b"XMKD d"), Ok(Command::Mkd("d".into())));
        assert_eq!(p(b"XRMD d"), Ok(Command::Rmd("d".into())));
        assert_eq!(p(b"FROB x"), Ok(Command::Unknown("FROB".into())));
        assert_eq!(
            p(b"AAAAAAAAAAAAAAAAAAA"),
            Ok(Command::Unknown("AAAAAAAA".into()))
        );
        assert_eq!(p(b"12 x"), Ok(Command::Unknown("12".into())));
        assert_eq!(p(b""), Err(ParseError::Empty));
        assert_eq!(p(b" CWD x"), Err(ParseError::Empty));
    }

    #[test]
    fn arguments_keep_spaces_after_the_first() {
        assert_eq!(
            p(b"STOR  lead and trail "),
            Ok(Command::Stor(" lead and trail ".into()))
        );
        assert_eq!(p(b"PASS pass word"), Ok(Command::Pass("pass word".into())));
        assert_eq!(p(b"PASS"), Ok(Command::Pass(String::new())));
        assert_eq!(p(b"CWD"), Err(ParseError::MissingArgument("CWD")));
        assert_eq!(p(b"CWD "), Err(ParseError::MissingArgument("CWD")));
        assert_eq!(p(b"RETR"), Err(ParseError::MissingArgument("RETR")));
    }

    #[test]
    fn utf8_and_rfc2640_cr_nul() {
        assert_eq!(
            p("STOR données-日本.txt".as_bytes()),
            Ok(Command::Stor("données-日本.txt".into()))
        );
        assert_eq!(p(b"STOR a\r\0b"), Ok(Command::Stor("a\rb".into())));
        assert_eq!(
            p(b"STOR a\0b"),
            Ok(Command::Stor("a\0b".into())),
            "a lone NUL is left for the canonicalizer to refuse"
        );
        assert_eq!(p(b"STOR \xff\xfe"), Err(ParseError::NotUtf8));
    }

    #[test]
    fn telnet_noise_before_abor() {
        assert_eq!(p(b"\xff\xf4\xff\xf2ABOR"), Ok(Command::Abor));
        assert_eq!(p(b"\xff\xf4\xf2ABOR"), Ok(Command::Abor));
        assert_eq!(p(b"\xff\xf4ABOR"), Ok(Command::Abor));
    }

    #[test]
    fn list_flags_are_dropped() {
        assert_eq!(p(b"LIST"), Ok(Command::List(None)));
        assert_eq!(p(b"LIST -la"), Ok(Command::List(None)));
        assert_eq!(p(b"LIST -a -l"), Ok(Command::List(None)));
        assert_eq!(
            p(b"LIST -la /in box"),
            Ok(Command::List(Some("/in box".into())))
        );
        assert_eq!(p(b"LIST dir"), Ok(Command::List(Some("dir".into()))));
        assert_eq!(p(b"NLST -l"), Ok(Command::Nlst(None)));
        assert_eq!(p(b"STAT -la x"), Ok(Command::Stat(Some("x".into()))));
        assert_eq!(p(b"STAT"), Ok(Command::Stat(None)));
        assert_eq!(p(b"MLSD"), Ok(Command::Mlsd(None)));
    }

    #[test]
    fn type_mode_stru() {
        assert_eq!(p(b"TYPE I"), Ok(Command::Type(TransferType::Binary)));
        assert_eq!(p(b"type i"), Ok(Command::Type(TransferType::Binary)));
        assert_eq!(p(b"TYPE L 8"), Ok(Command::Type(TransferType::Binary)));
        assert_eq!(p(b"TYPE A"), Ok(Command::Type(TransferType::Ascii)));
        assert_eq!(p(b"TYPE A N"), Ok(Command::Type(TransferType::Ascii)));
        assert_eq!(p(b"TYPE E"), Err(ParseError::Unsupported("TYPE")));
        assert_eq!(p(b"TYPE A T"), Err(ParseError::Unsupported("TYPE")));
        assert_eq!(p(b"TYPE X"), Err(ParseError::BadArgument("TYPE")));
        assert_eq!(p(b"MODE s"), Ok(Command::Mode('S')));
        assert_eq!(p(b"STRU F"), Ok(Command::Stru('F')));
        assert_eq!(p(b"MODE SS"), Err(ParseError::BadArgument("MODE")));
    }

    #[test]
    fn port_and_eprt() {
        assert_eq!(
            p(b"PORT 127,0,0,1,4,1"),
            Ok(Command::Port(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 1025)))
        );
        assert_eq!(p(b"PORT 127,0,0,1,4"), Err(ParseError::BadArgument("PORT")));
        assert_eq!(
            p(b"PORT 256,0,0,1,4,1"),
            Err(ParseError::BadArgument("PORT"))
        );
        assert_eq!(
            p(b"EPRT |1|127.0.0.2|5000|"),
            Ok(Command::Eprt("127.0.0.2:5000".parse().unwrap()))
        );
        assert_eq!(
            p(b"EPRT |2|::1|5000|"),
            Ok(Command::Eprt("[::1]:5000".parse().unwrap()))
        );
        assert_eq!(
            p(b"EPRT !1!10.0.0.1!21!"),
            Ok(Command::Eprt("10.0.0.1:21".parse().unwrap()))
        );
        assert_eq!(p(b"EPRT |3|x|1|"), Err(ParseError::NetworkProtocol));
        assert_eq!(p(b"EPRT |1|::1|1|"), Err(ParseError::BadArgument("EPRT")));
        assert_eq!(
            p(b"EPRT |1|1.2.3.4|99999|"),
            Err(ParseError::BadArgument("EPRT"))
        );
        assert_eq!(p(b"EPSV"), Ok(Command::Epsv(EpsvArg::Any)));
        assert_eq!(p(b"EPSV 2"), Ok(Command::Epsv(EpsvArg::V6)));
        assert_eq!(p(b"EPSV all"), Ok(Command::Epsv(EpsvArg::All)));
        assert_eq!(p(b"EPSV 3"), Err(ParseError::NetworkProtocol));
    }

    #[test]
    fn rest_opts_mfmt_auth() {
        assert_eq!(p(b"REST 100"), Ok(Command::Rest(100)));
        assert_eq!(p(b"REST -1"), Err(ParseError::BadArgument("REST")));
        assert_eq!(p(b"OPTS UTF8 ON"), Ok(Command::Opts(Opts::Utf8(true))));
        assert_eq!(p(b"opts utf-8 off"), Ok(Command::Opts(Opts::Utf8(false))));
        assert_eq!(
            p(b"OPTS MLST type;size;x;"),
            Ok(Command::Opts(Opts::Mlst(Facts {
                kind: true,
                size: true,
                ..Facts::NONE
            })))
        );
        assert_eq!(p(b"OPTS MLST"), Ok(Command::Opts(Opts::Mlst(Facts::NONE))));
        assert_eq!(
            p(b"OPTS HASH sha-256"),
            Ok(Command::Opts(Opts::Hash(Some("SHA-256".into()))))
        );
        assert_eq!(
            p(b"OPTS FOO"),
            Ok(Command::Opts(Opts::Unknown("FOO".into())))
        );
        let want = SystemTime::UNIX_EPOCH + Duration::from_secs(1_704_110_400);
        assert_eq!(
            p(b"MFMT 20240101120000 a b.txt"),
            Ok(Command::Mfmt {
                modified: want,
                path: "a b.txt".into()
            })
        );
        assert_eq!(
            p(b"MFMT 20240101120000.5 x"),
            Ok(Command::Mfmt {
                modified: want + Duration::from_millis(500),
                path: "x".into()
            })
        );
        assert_eq!(p(b"MFMT 2024 x"), Err(ParseError::BadArgument("MFMT")));
        assert_eq!(
            p(b"MFMT 20240101120000"),
            Err(ParseError::MissingArgument("MFMT"))
        );
        assert_eq!(p(b"AUTH tls"), Ok(Command::Auth("TLS".into())));
        assert_eq!(p(b"PBSZ 0"), Ok(Command::Pbsz(0)));
        assert_eq!(p(b"PROT p"), Ok(Command::Prot('P')));
        assert_eq!(p(b"CCC"), Ok(Command::Ccc));
        assert_eq!(p(b"SITE help"), Ok(Command::SiteHelp));
        assert_eq!(p(b"SITE CHMOD 777 x"), Ok(Command::SiteOther));
    }

    #[test]
    fn timevals_read_by_hand_match_chrono() {
        let by_chrono = |s: &str| {
            let t = NaiveDateTime::parse_from_str(s, "%Y%m%d%H%M%S").ok()?;
            let secs = u64::try_from(t.and_utc().timestamp()).ok()?;
            SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(secs))
        };
        for s in [
            "20240101120000",
            "19700101000000",
            "19691231235959",
            "99991231235959",
            "00000101000000",
            "20240229235959",
            "20230229000000",
            "20241301000000",
            "20240100000000",
            "20240431000000",
            "20240101240000",
            "20240101236000",
            "20240101235960",
            "20240101235961",
            "00000000000000",
        ] {
            assert_eq!(parse_timeval(s), by_chrono(s), "{s}");
        }
    }

    #[test]
    fn facts_lists() {
        assert_eq!(Facts::ALL.feat_list(), "type*;size*;modify*;perm*;unique*;");
        let f = Facts {
            size: true,
            modify: true,
            ..Facts::NONE
        };
        assert_eq!(f.feat_list(), "type;size*;modify*;perm;unique;");
        assert_eq!(f.selected_list(), "size;modify;");
    }

    #[test]
    fn pre_login_set() {
        assert!(p(b"USER a").unwrap().allowed_before_login());
        assert!(p(b"FEAT").unwrap().allowed_before_login());
        assert!(p(b"AUTH TLS").unwrap().allowed_before_login());
        assert!(!p(b"LIST").unwrap().allowed_before_login());
        assert!(!p(b"PASV").unwrap().allowed_before_login());
        assert!(!p(b"CWD /").unwrap().allowed_before_login());
    }
}

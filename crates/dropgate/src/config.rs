//! `dropgate.toml`: every key defaulted (SPEC section 3), overridable by
//! `DROPGATE_<SECTION>__<KEY>` environment variables, relative paths resolved
//! against the config file's folder. Layering is figment's; this module only
//! declares the shape, validates values, and names the key when one is wrong.

use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// A config problem: one line naming the key (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct ConfigError(String);

impl ConfigError {
    /// `msg` on one line: control characters a key, a value or a path
    /// brought in (a TOML key may hold `\n`) are shown escaped.
    fn new(msg: impl AsRef<str>) -> ConfigError {
        let mut line = String::new();
        for c in msg.as_ref().chars() {
            if c.is_control() {
                line.extend(c.escape_default());
            } else {
                line.push(c);
            }
        }
        ConfigError(line)
    }
}

fn bad(key: &str, msg: impl std::fmt::Display) -> ConfigError {
    ConfigError::new(format!("config key `{key}`: {msg}"))
}

/// Top-level keys; environment variables outside these are not ours
/// (`DROPGATE_CONFIG`, test variables) and are ignored.
const SECTIONS: &[&str] = &[
    "data_dir", "database", "storage", "ftp", "ftps", "sftp", "admin", "cluster", "events",
    "limits",
];

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct Config {
    pub(crate) data_dir: PathBuf,
    pub(crate) database: DatabaseConfig,
    pub(crate) storage: StorageConfig,
    pub(crate) ftp: FtpSection,
    pub(crate) ftps: FtpsSection,
    pub(crate) sftp: SftpSection,
    pub(crate) admin: AdminSection,
    pub(crate) cluster: ClusterSection,
    pub(crate) events: EventsSection,
    pub(crate) limits: LimitsSection,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct DatabaseConfig {
    /// Empty: `sqlite://<data_dir>/dropgate.db`.
    pub(crate) url: String,
    pub(crate) max_connections: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Backend {
    Local,
    S3,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum UploadModeSetting {
    Atomic,
    AtomicResume,
    Direct,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct StorageConfig {
    pub(crate) backend: Backend,
    /// Empty: `<data_dir>/files`.
    pub(crate) root: PathBuf,
    pub(crate) upload_mode: UploadModeSetting,
    pub(crate) durable_uploads: bool,
    pub(crate) s3: S3Section,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct S3Section {
    pub(crate) bucket: String,
    pub(crate) prefix: String,
    pub(crate) region: String,
    pub(crate) endpoint: String,
    pub(crate) path_style: bool,
    pub(crate) access_key_id: String,
    pub(crate) secret_access_key: String,
}

/// `listen` may be one address or a list.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub(crate) enum Listen {
    One(String),
    Many(Vec<String>),
}

impl Listen {
    fn addrs(&self, key: &str) -> Result<Vec<SocketAddr>, ConfigError> {
        let list: Vec<&String> = match self {
            Listen::One(s) if s.is_empty() => vec![],
            Listen::One(s) => vec![s],
            Listen::Many(v) => v.iter().collect(),
        };
        list.into_iter()
            .map(|s| {
                s.parse::<SocketAddr>().map_err(|_| {
                    bad(
                        key,
                        format!("{s:?} is not an address like 0.0.0.0:2121 or [::]:2121"),
                    )
                })
            })
            .collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum TlsSetting {
    Off,
    Optional,
    Required,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct FtpSection {
    pub(crate) enabled: bool,
    pub(crate) listen: Listen,
    pub(crate) passive_ports: String,
    pub(crate) passive_address: String,
    pub(crate) active_mode: bool,
    pub(crate) tls: TlsSetting,
    pub(crate) idle_timeout_secs: u64,
    pub(crate) banner: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct FtpsSection {
    pub(crate) implicit_listen: Listen,
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
    pub(crate) require_session_reuse: bool,
    /// Hold data channels to TLS 1.2 (for clients that break on TLS 1.3 resumption).
    pub(crate) data_tls12_only: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct SftpSection {
    pub(crate) enabled: bool,
    pub(crate) listen: Listen,
    pub(crate) host_keys: Vec<PathBuf>,
    pub(crate) legacy_algorithms: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct AdminSection {
    pub(crate) enabled: bool,
    pub(crate) listen: Listen,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct ClusterSection {
    pub(crate) node_name: String,
    pub(crate) proxy_protocol: bool,
    pub(crate) trusted_proxies: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct EventsSection {
    pub(crate) allowed_webhook_hosts: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct LimitsSection {
    pub(crate) max_connections: usize,
    pub(crate) max_connections_per_ip: usize,
    pub(crate) login_failures_before_ban: u32,
    pub(crate) ban_window_secs: u64,
    pub(crate) ban_secs: u64,
    pub(crate) login_grace_secs: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("data"),
            database: DatabaseConfig::default(),
            storage: StorageConfig::default(),
            ftp: FtpSection::default(),
            ftps: FtpsSection::default(),
            sftp: SftpSection::default(),
            admin: AdminSection::default(),
            cluster: ClusterSection::default(),
            events: EventsSection::default(),
            limits: LimitsSection::default(),
        }
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: String::new(),
            max_connections: 16,
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            backend: Backend::Local,
            root: PathBuf::new(),
            upload_mode: UploadModeSetting::Atomic,
            durable_uploads: true,
            s3: S3Section::default(),
        }
    }
}

impl Default for S3Section {
    fn default() -> Self {
        S3Section {
            bucket: String::new(),
            prefix: String::new(),
            region: "us-east-1".into(),
            endpoint: String::new(),
            path_style: false,
            access_key_id: String::new(),
            secret_access_key: String::new(),
        }
    }
}

impl Default for FtpSection {
    fn default() -> Self {
        FtpSection {
            enabled: true,
            listen: Listen::One("0.0.0.0:2121".into()),
            passive_ports: "50000-50100".into(),
            passive_address: String::new(),
            active_mode: true,
            tls: TlsSetting::Optional,
            idle_timeout_secs: 300,
            banner: "dropgate ready".into(),
        }
    }
}

impl Default for FtpsSection {
    fn default() -> Self {
        FtpsSection {
            implicit_listen: Listen::One(String::new()),
            cert: PathBuf::new(),
            key: PathBuf::new(),
            require_session_reuse: true,
            data_tls12_only: false,
        }
    }
}

impl Default for SftpSection {
    fn default() -> Self {
        SftpSection {
            enabled: true,
            listen: Listen::One("0.0.0.0:2222".into()),
            host_keys: Vec::new(),
            legacy_algorithms: false,
        }
    }
}

impl Default for AdminSection {
    fn default() -> Self {
        AdminSection {
            enabled: true,
            listen: Listen::One("127.0.0.1:8080".into()),
        }
    }
}

impl Default for LimitsSection {
    fn default() -> Self {
        LimitsSection {
            max_connections: 2000,
            max_connections_per_ip: 50,
            login_failures_before_ban: 10,
            ban_window_secs: 600,
            ban_secs: 1800,
            login_grace_secs: 60,
        }
    }
}

/// The validated configuration with every path made absolute and every
/// derived default filled in.
#[derive(Debug, Clone)]
pub(crate) struct Effective {
    pub(crate) raw: Config,
    pub(crate) config_file: Option<PathBuf>,
    pub(crate) data_dir: PathBuf,
    pub(crate) database_url: String,
    pub(crate) storage_root: PathBuf,
    pub(crate) ftp_listen: Vec<SocketAddr>,
    pub(crate) passive_ports: RangeInclusive<u16>,
    pub(crate) implicit_ftps_listen: Vec<SocketAddr>,
    pub(crate) sftp_listen: Vec<SocketAddr>,
    pub(crate) admin_listen: Vec<SocketAddr>,
    pub(crate) node_name: String,
    /// `[cluster] proxy_protocol` on: the trusted proxies' networks.
    pub(crate) proxy_policy: Option<Vec<ipnet::IpNet>>,
}

/// Finds the config file: `--config`, else `$DROPGATE_CONFIG`, else
/// `./dropgate.toml` if it exists, else none (built-in defaults).
pub(crate) fn locate(explicit: Option<&Path>) -> Result<Option<PathBuf>, ConfigError> {
    if let Some(p) = explicit {
        if !p.is_file() {
            return Err(ConfigError::new(format!(
                "config file {} does not exist",
                p.display()
            )));
        }
        return Ok(Some(p.to_path_buf()));
    }
    if let Some(p) = std::env::var_os("DROPGATE_CONFIG").filter(|v| !v.is_empty()) {
        let p = PathBuf::from(p);
        if !p.is_file() {
            return Err(ConfigError::new(format!(
                "DROPGATE_CONFIG: config file {} does not exist",
                p.display()
            )));
        }
        return Ok(Some(p));
    }
    let local = PathBuf::from("dropgate.toml");
    Ok(local.is_file().then_some(local))
}

/// Loads defaults, then the file, then the environment.
pub(crate) fn load(file: Option<&Path>) -> Result<Effective, ConfigError> {
    let mut fig = Figment::from(Serialized::defaults(Config::default()));
    if let Some(f) = file {
        fig = fig.merge(Toml::file_exact(f));
    }
    fig = fig.merge(
        Env::prefixed("DROPGATE_")
            .split("__")
            // The filter may see the key before or after `__` becomes `.`.
            .filter(|k| {
                let first = k
                    .as_str()
                    .split("__")
                    .next()
                    .unwrap_or("")
                    .split('.')
                    .next()
                    .unwrap_or("");
                SECTIONS.contains(&first.to_ascii_lowercase().as_str())
            }),
    );
    let raw: Config = fig.extract().map_err(|e| {
        let first = e
            .into_iter()
            .next()
            .map(describe_figment)
            .unwrap_or_else(|| "invalid configuration".into());
        ConfigError::new(first)
    })?;
    resolve(raw, file)
}

/// Loads defaults, then `text` as the config file's content; no
/// environment, paths relative to the working directory. What the config
/// loader's fuzz target drives (it includes this file on its own).
#[allow(dead_code)]
pub(crate) fn from_toml_str(text: &str) -> Result<Effective, ConfigError> {
    let raw: Config = Figment::from(Serialized::defaults(Config::default()))
        .merge(Toml::string(text))
        .extract()
        .map_err(|e| {
            ConfigError::new(
                e.into_iter()
                    .next()
                    .map(describe_figment)
                    .unwrap_or_else(|| "invalid configuration".into()),
            )
        })?;
    resolve(raw, None)
}

/// One line naming the key, without figment's provider noise.
fn describe_figment(e: figment::Error) -> String {
    let key = e.path.join(".");
    // TOML parse errors carry a multi-line excerpt; the first line says where.
    let what = e
        .kind
        .to_string()
        .lines()
        .next()
        .unwrap_or("invalid value")
        .to_owned();
    let origin = e
        .metadata
        .as_ref()
        .map(|m| m.name.to_string())
        .unwrap_or_default();
    if key.is_empty() {
        format!("configuration: {what}")
    } else if origin.is_empty() {
        format!("config key `{key}`: {what}")
    } else {
        format!("config key `{key}`: {what} (from {origin})")
    }
}

fn resolve(raw: Config, file: Option<&Path>) -> Result<Effective, ConfigError> {
    let base = match file.and_then(|f| f.parent()) {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::env::current_dir()
            .map_err(|e| ConfigError::new(format!("cannot read the working directory: {e}")))?,
    };
    let base = std::fs::canonicalize(&base).unwrap_or(base);
    let abs = |p: &Path| {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            base.join(p)
        }
    };

    if raw.data_dir.as_os_str().is_empty() {
        return Err(bad("data_dir", "must not be empty"));
    }
    let data_dir = abs(&raw.data_dir);
    let database_url = if raw.database.url.is_empty() {
        format!("sqlite://{}", data_dir.join("dropgate.db").display())
    } else if let Some(path) = raw.database.url.strip_prefix("sqlite://") {
        let (path, query) = path
            .split_once('?')
            .map_or((path, None), |(p, q)| (p, Some(q)));
        if path.is_empty() {
            return Err(bad("database.url", "sqlite:// needs a file path"));
        }
        let p = abs(Path::new(path));
        match query {
            Some(q) => format!("sqlite://{}?{q}", p.display()),
            None => format!("sqlite://{}", p.display()),
        }
    } else if raw.database.url.starts_with("postgres://")
        || raw.database.url.starts_with("postgresql://")
    {
        raw.database.url.clone()
    } else {
        return Err(bad(
            "database.url",
            "must start with sqlite:// or postgres://",
        ));
    };
    if raw.database.max_connections == 0 {
        return Err(bad("database.max_connections", "must be at least 1"));
    }
    if raw.storage.backend == Backend::S3 {
        validate_s3(&raw.storage.s3)?;
    }
    let storage_root = if raw.storage.root.as_os_str().is_empty() {
        data_dir.join("files")
    } else {
        abs(&raw.storage.root)
    };
    let ftp_listen = raw.ftp.listen.addrs("ftp.listen")?;
    let passive_ports = parse_port_range(&raw.ftp.passive_ports).ok_or_else(|| {
        bad(
            "ftp.passive_ports",
            format!(
                "{:?} is not a range like \"50000-50100\" (1024-65535)",
                raw.ftp.passive_ports
            ),
        )
    })?;
    if !raw.ftp.passive_address.is_empty()
        && (raw.ftp.passive_address.contains(char::is_whitespace)
            || raw
                .ftp
                .passive_address
                .parse::<std::net::Ipv6Addr>()
                .is_ok())
    {
        return Err(bad(
            "ftp.passive_address",
            "must be an IPv4 address or a DNS name",
        ));
    }
    if raw.ftp.idle_timeout_secs == 0 {
        return Err(bad("ftp.idle_timeout_secs", "must be at least 1"));
    }
    if raw.ftp.banner.contains(['\r', '\n']) {
        return Err(bad("ftp.banner", "must be a single line"));
    }
    let implicit_ftps_listen = raw.ftps.implicit_listen.addrs("ftps.implicit_listen")?;
    if raw.ftps.cert.as_os_str().is_empty() != raw.ftps.key.as_os_str().is_empty() {
        return Err(bad(
            "ftps.cert",
            "ftps.cert and ftps.key must be given together",
        ));
    }
    let sftp_listen = raw.sftp.listen.addrs("sftp.listen")?;
    let admin_listen = raw.admin.listen.addrs("admin.listen")?;
    let mut trusted_proxies = Vec::with_capacity(raw.cluster.trusted_proxies.len());
    for (i, cidr) in raw.cluster.trusted_proxies.iter().enumerate() {
        let net = cidr
            .parse::<ipnet::IpNet>()
            .or_else(|_| cidr.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
        match net {
            Ok(net) if net.prefix_len() == 0 => {
                return Err(bad(
                    &format!("cluster.trusted_proxies[{i}]"),
                    format!(
                        "{cidr:?} would let any client claim any address; list the load balancers"
                    ),
                ));
            }
            Ok(net) => trusted_proxies.push(net),
            Err(_) => {
                return Err(bad(
                    &format!("cluster.trusted_proxies[{i}]"),
                    format!("{cidr:?} is not a CIDR"),
                ));
            }
        }
    }
    // Without a trusted proxy every header would be refused: a setting that
    // cannot work is an error, not a silent no-op.
    if raw.cluster.proxy_protocol && trusted_proxies.is_empty() {
        return Err(bad(
            "cluster.trusted_proxies",
            "must name the load balancers when cluster.proxy_protocol = true",
        ));
    }
    let proxy_policy = raw.cluster.proxy_protocol.then_some(trusted_proxies);
    if raw.limits.max_connections == 0 {
        return Err(bad("limits.max_connections", "must be at least 1"));
    }
    if raw.limits.max_connections_per_ip == 0 {
        return Err(bad("limits.max_connections_per_ip", "must be at least 1"));
    }
    if raw.limits.login_failures_before_ban > 0 && raw.limits.ban_window_secs == 0 {
        return Err(bad("limits.ban_window_secs", "must be at least 1"));
    }
    if raw.limits.login_failures_before_ban > 0 && raw.limits.ban_secs == 0 {
        return Err(bad("limits.ban_secs", "must be at least 1"));
    }
    const TEN_YEARS: u64 = 10 * 365 * 24 * 3600;
    if raw.limits.ban_secs > TEN_YEARS {
        return Err(bad(
            "limits.ban_secs",
            "must be at most 315360000 (ten years)",
        ));
    }
    if raw.limits.ban_window_secs > TEN_YEARS {
        return Err(bad(
            "limits.ban_window_secs",
            "must be at most 315360000 (ten years)",
        ));
    }
    if raw.limits.login_grace_secs > 24 * 3600 {
        return Err(bad("limits.login_grace_secs", "must be at most 86400"));
    }
    if raw.limits.login_grace_secs == 0 {
        return Err(bad("limits.login_grace_secs", "must be at least 1"));
    }
    let node_name = if raw.cluster.node_name.is_empty() {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "dropgate".into())
    } else {
        raw.cluster.node_name.clone()
    };
    let mut raw = raw;
    raw.ftps.cert = if raw.ftps.cert.as_os_str().is_empty() {
        PathBuf::new()
    } else {
        abs(&raw.ftps.cert)
    };
    raw.ftps.key = if raw.ftps.key.as_os_str().is_empty() {
        PathBuf::new()
    } else {
        abs(&raw.ftps.key)
    };
    raw.sftp.host_keys = raw.sftp.host_keys.iter().map(|p| abs(p)).collect();
    Ok(Effective {
        raw,
        config_file: file.map(Path::to_path_buf),
        data_dir,
        database_url,
        storage_root,
        ftp_listen,
        passive_ports,
        implicit_ftps_listen,
        sftp_listen,
        admin_listen,
        node_name,
        proxy_policy,
    })
}

/// `[storage.s3]` when it is used: a bucket, an endpoint that is a URL,
/// both keys or neither, and a prefix of plain names.
fn validate_s3(s3: &S3Section) -> Result<(), ConfigError> {
    if s3.bucket.trim().is_empty() {
        return Err(bad(
            "storage.s3.bucket",
            "must be set when storage.backend = \"s3\"",
        ));
    }
    let is_url = s3.endpoint.starts_with("http://") || s3.endpoint.starts_with("https://");
    if !s3.endpoint.is_empty() && !is_url {
        return Err(bad(
            "storage.s3.endpoint",
            format!("{:?} is not an http:// or https:// URL", s3.endpoint),
        ));
    }
    if s3.access_key_id.is_empty() != s3.secret_access_key.is_empty() {
        return Err(bad(
            "storage.s3.access_key_id",
            "access_key_id and secret_access_key are set together or not at all (empty: the AWS credential chain)",
        ));
    }
    if s3.region.is_empty() {
        return Err(bad("storage.s3.region", "must not be empty"));
    }
    let prefix = s3.prefix.trim_matches('/');
    if !prefix.is_empty()
        && prefix
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == ".." || c.contains(['\\', '\0']))
    {
        return Err(bad(
            "storage.s3.prefix",
            format!("{:?} must be plain names separated by /", s3.prefix),
        ));
    }
    Ok(())
}

fn parse_port_range(s: &str) -> Option<RangeInclusive<u16>> {
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    let (a, b) = (a.trim().parse::<u16>().ok()?, b.trim().parse::<u16>().ok()?);
    (a >= 1024 && a <= b).then_some(a..=b)
}

/// Hides a password inside a database URL.
pub(crate) fn mask_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s + 3 => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:****{}", &url[..s + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

impl Effective {
    /// The effective configuration as TOML, secrets masked.
    pub(crate) fn to_masked_toml(&self) -> String {
        let mut c = self.raw.clone();
        c.data_dir = self.data_dir.clone();
        c.database.url = mask_url(&self.database_url);
        c.storage.root = self.storage_root.clone();
        if !c.storage.s3.secret_access_key.is_empty() {
            c.storage.s3.secret_access_key = "****".into();
        }
        c.cluster.node_name = self.node_name.clone();
        let body = toml::to_string_pretty(&c).unwrap_or_else(|e| format!("# cannot render: {e}\n"));
        let source = match &self.config_file {
            Some(f) => format!("# effective configuration from {} and the environment\n", f.display()),
            None => "# effective configuration: built-in defaults and the environment (no config file)\n".into(),
        };
        format!("{source}{body}")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Found by the config_toml fuzz target: a quoted table name with an
    /// escaped newline made the refusal two lines.
    #[test]
    fn refusals_stay_on_one_line_whatever_the_key_holds() {
        let e = from_toml_str("[\"ftp\\nx\\ty\"]\nlisten = 1\n").unwrap_err();
        let line = e.to_string();
        assert!(!line.contains('\n') && !line.contains('\t'), "{line:?}");
        assert!(line.contains(r"ftp\nx\ty"), "{line:?}");
        let e = locate(Some(Path::new("/no/such\ndir/dropgate.toml"))).unwrap_err();
        assert_eq!(
            e.to_string(),
            r"config file /no/such\ndir/dropgate.toml does not exist"
        );
    }

    #[test]
    fn port_ranges() {
        assert_eq!(parse_port_range("50000-50100"), Some(50000..=50100));
        assert_eq!(parse_port_range("60000"), Some(60000..=60000));
        assert_eq!(parse_port_range("100-200"), None);
        assert_eq!(parse_port_range("5-"), None);
        assert_eq!(parse_port_range("60001-60000"), None);
    }

    #[test]
    fn masks_passwords() {
        assert_eq!(
            mask_url("postgres://u:secret@h:5432/db"),
            "postgres://u:****@h:5432/db"
        );
        assert_eq!(mask_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(mask_url("sqlite:///x/y.db"), "sqlite:///x/y.db");
    }
}

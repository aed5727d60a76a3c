//! Webhook delivery: one signed `POST`, with an address policy that holds for the address
//! actually connected to.
//!
//! SSRF defence, in order:
//! 1. the URL must be `http`/`https` with a host and no credentials ([`validate_url`]);
//! 2. an IP-literal host is checked here, before anything is sent (reqwest connects to
//!    literals without asking a resolver);
//! 3. a host name is resolved once, by our own resolver plugged into reqwest, which checks
//!    every address and hands reqwest only checked ones, so nothing resolves the name a
//!    second time between the check and the connect;
//! 4. redirects are never followed and environment proxies are ignored (a proxy would
//!    connect on our behalf to an address we never checked).
//!
//! Hosts in `[events] allowed_webhook_hosts` skip the address policy (an operator's own
//! receiver on the LAN or on loopback).

use std::collections::HashSet;
use std::error::Error as StdError;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use sha2::Sha256;

const USER_AGENT: &str = concat!("dropgate/", env!("CARGO_PKG_VERSION"));

/// How much of a response body is read: enough to let a small answer finish (so the
/// connection can be reused), never enough for a hostile receiver to fill our memory.
const MAX_RESPONSE_BODY: usize = 4 * 1024;

/// Cloud metadata services reached by name. They resolve to link-local or private
/// addresses anyway; refusing the names too keeps the reason obvious in the error.
const METADATA_HOSTS: &[&str] = &[
    "metadata",
    "metadata.google.internal",
    "metadata.goog",
    "instance-data",
    "instance-data.ec2.internal",
];

const HEADER_DELIVERY: HeaderName = HeaderName::from_static("x-dropgate-delivery");
const HEADER_EVENT: HeaderName = HeaderName::from_static("x-dropgate-event");
const HEADER_SIGNATURE: HeaderName = HeaderName::from_static("x-dropgate-signature");

/// Why a delivery attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// The URL is not an `http`/`https` URL with a host and without credentials.
    #[error("invalid webhook URL: {0}")]
    InvalidUrl(String),
    /// The address policy refused the target: it is, or resolves to, a loopback, private,
    /// link-local or otherwise non-public address, and its host is not allowed.
    #[error("webhook target refused: {0}")]
    Refused(String),
    /// The receiver answered with a redirect (3xx); redirects are never followed.
    #[error("webhook receiver answered {0} (a redirect, which is never followed)")]
    Redirect(u16),
    /// The receiver answered with a status that is neither 2xx nor 3xx.
    #[error("webhook receiver answered {0}")]
    Status(u16),
    /// No complete answer within the rule's timeout.
    #[error("webhook delivery timed out")]
    Timeout,
    /// Name resolution, TCP, TLS or HTTP failed before a status arrived.
    #[error("webhook connection failed: {0}")]
    Connect(String),
    /// The client or the request could not be built (configuration, header values).
    #[error("webhook client error: {0}")]
    Build(String),
}

impl WebhookError {
    /// True when retrying the same delivery cannot succeed: the URL is malformed or the
    /// address policy refuses it (the policy changes only with the configuration).
    pub fn is_permanent(&self) -> bool {
        matches!(self, WebhookError::InvalidUrl(_) | WebhookError::Refused(_))
    }
}

/// Sends webhook deliveries. Cheap to clone: clones share the connection pool.
#[derive(Clone)]
pub struct WebhookClient {
    /// reqwest client with our resolver, no redirects, no proxy, aws-lc-rs TLS.
    http: reqwest::Client,
    /// Hosts exempt from the address policy, shared with the resolver.
    allowed: Arc<AllowedHosts>,
}

impl std::fmt::Debug for WebhookClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookClient")
            .field("allowed", &self.allowed)
            .finish_non_exhaustive()
    }
}

impl WebhookClient {
    /// `allowed_hosts`: host names (case-insensitive, exact match on the URL's host; IP
    /// literals allowed too) that may resolve to private or loopback addresses
    /// (`[events] allowed_webhook_hosts`).
    pub fn new(allowed_hosts: &[String]) -> Result<Self, WebhookError> {
        let allowed = Arc::new(AllowedHosts::new(allowed_hosts)?);
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls_config()?)
            .dns_resolver(Arc::new(CheckedResolver {
                allowed: Arc::clone(&allowed),
            }))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .user_agent(USER_AGENT)
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(4)
            .build()
            .map_err(|e| WebhookError::Build(error_chain(&e)))?;
        Ok(Self { http, allowed })
    }

    /// POSTs `body` (JSON) to `url` with headers `Content-Type: application/json`,
    /// `X-Dropgate-Delivery: delivery_id`, `X-Dropgate-Event: trigger`,
    /// `X-Dropgate-Signature: signature(secret, body)` and `User-Agent: dropgate/<version>`.
    /// `Ok(status)` only for 2xx; a 3xx is [`WebhookError::Redirect`] and is not followed.
    pub async fn deliver(
        &self,
        url: &str,
        secret: &str,
        timeout: Duration,
        delivery_id: &str,
        trigger: &str,
        body: &[u8],
    ) -> Result<u16, WebhookError> {
        let url = parse_url(url).map_err(WebhookError::InvalidUrl)?;
        self.check_host(&url)?;

        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(HEADER_DELIVERY, header_value("delivery id", delivery_id)?);
        headers.insert(HEADER_EVENT, header_value("trigger", trigger)?);
        let signature = signature(secret, body);
        headers.insert(HEADER_SIGNATURE, header_value("signature", &signature)?);

        let mut response = self
            .http
            .post(url)
            .timeout(timeout)
            .headers(headers)
            .body(body.to_vec())
            .send()
            .await
            .map_err(send_error)?;
        let status = response.status().as_u16();

        // Read (and discard) at most a few KiB; whatever is left closes with the connection.
        let mut read = 0;
        while read < MAX_RESPONSE_BODY {
            match response.chunk().await {
                Ok(Some(chunk)) => read += chunk.len(),
                Ok(None) | Err(_) => break,
            }
        }

        match status {
            200..=299 => Ok(status),
            300..=399 => Err(WebhookError::Redirect(status)),
            _ => Err(WebhookError::Status(status)),
        }
    }

    /// The checks that must happen before reqwest sees the URL: IP literals (reqwest never
    /// resolves them) and names refused by name.
    fn check_host(&self, url: &Url) -> Result<(), WebhookError> {
        let host = url
            .host_str()
            .ok_or_else(|| WebhookError::InvalidUrl("URL has no host".into()))?;
        match literal_ip(host) {
            Some(ip) => {
                if self.allowed.ips.contains(&ip) {
                    return Ok(());
                }
                match refusal_reason(ip) {
                    Some(reason) => Err(WebhookError::Refused(format!("{ip} is {reason}"))),
                    None => Ok(()),
                }
            }
            None => check_name(&self.allowed, host).map_err(|r| WebhookError::Refused(r.0)),
        }
    }
}

/// `"sha256="` + lowercase hex HMAC-SHA256 of `body` with `secret`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Validates a webhook URL at rule-creation time: `http` or `https`, has a host, no
/// `user:password@` credentials. The error names the problem (never repeats the URL).
pub fn validate_url(url: &str) -> Result<(), String> {
    parse_url(url).map(|_| ())
}

fn parse_url(url: &str) -> Result<Url, String> {
    let parsed = Url::parse(url).map_err(|e| format!("not a valid URL: {e}"))?;
    match parsed.scheme() {
        "http" | "https" => {}
        other => return Err(format!("scheme must be http or https, not {other:?}")),
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err("URL has no host".into());
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("URL must not contain credentials (user:password@)".into());
    }
    Ok(parsed)
}

/// Why `ip` may not be a webhook target, or `None` for a publicly routable address.
///
/// Refused: unspecified, loopback, private, shared (CGNAT), link-local (cloud metadata),
/// multicast, broadcast and reserved, documentation and benchmarking ranges, IPv6
/// unique-local and site-local, every IPv6 address outside global unicast, and IPv6 forms
/// that embed a refused IPv4 address (mapped, translated, NAT64, 6to4).
pub fn refusal_reason(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => ipv4_refusal(v4),
        IpAddr::V6(v6) => ipv6_refusal(v6),
    }
}

fn ipv4_refusal(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    let reason = match (a, b, c) {
        _ if ip.is_unspecified() => "unspecified",
        (0, _, _) => "in 0.0.0.0/8 (this network)",
        (10, _, _) => "private (10.0.0.0/8)",
        (100, 64..=127, _) => "shared address space (100.64.0.0/10, CGNAT)",
        (127, _, _) => "loopback",
        (169, 254, _) => "link-local (169.254.0.0/16, cloud metadata)",
        (172, 16..=31, _) => "private (172.16.0.0/12)",
        (192, 0, 0) => "reserved for protocol assignments (192.0.0.0/24)",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "reserved for documentation",
        (192, 88, 99) => "the deprecated 6to4 relay anycast range",
        (192, 168, _) => "private (192.168.0.0/16)",
        (198, 18..=19, _) => "reserved for benchmarking (198.18.0.0/15)",
        (224..=239, _, _) => "multicast",
        _ if ip.is_broadcast() => "broadcast",
        (240..=255, _, _) => "reserved (240.0.0.0/4)",
        _ => return None,
    };
    Some(reason)
}

fn ipv6_refusal(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    let embedded = Ipv4Addr::from((u32::from(s[6]) << 16) | u32::from(s[7]));
    let reason = match s {
        _ if ip.is_unspecified() => "unspecified",
        _ if ip.is_loopback() => "loopback",
        // ::ffff:a.b.c.d (mapped) and ::ffff:0:a.b.c.d (translated) reach that IPv4 address.
        [0, 0, 0, 0, 0, 0xffff, _, _] | [0, 0, 0, 0, 0xffff, 0, _, _] => {
            return ipv4_refusal(embedded);
        }
        // ::a.b.c.d, deprecated since 2006: nothing legitimate uses it.
        [0, 0, 0, 0, 0, 0, _, _] => "IPv4-compatible (deprecated)",
        // NAT64 well-known prefix: a DNS64 resolver answers public hosts with these.
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => return ipv4_refusal(embedded),
        [0x64, 0xff9b, 1, ..] => "local-use NAT64 (64:ff9b:1::/48)",
        [0x100, 0, 0, 0, ..] => "discard-only (100::/64)",
        // 6to4 embeds the IPv4 address in the second and third segments.
        [0x2002, hi, lo, ..] => {
            let v4 = Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
            return ipv4_refusal(v4).map(|_| "6to4 for a refused IPv4 address");
        }
        [0x2001, 0, ..] => "Teredo (2001::/32)",
        [0x2001, 2, 0, ..] => "reserved for benchmarking (2001:2::/48)",
        [0x2001, 0x10..=0x2f, ..] => "ORCHID (2001:10::/28, 2001:20::/28)",
        [0x2001, 0xdb8, ..] => "reserved for documentation (2001:db8::/32)",
        [0x3fff, 0..=0x0fff, ..] => "reserved for documentation (3fff::/20)",
        [0xfc00..=0xfdff, ..] => "unique-local (fc00::/7)",
        [0xfe80..=0xfebf, ..] => "link-local (fe80::/10)",
        [0xfec0..=0xfeff, ..] => "site-local (fec0::/10, deprecated)",
        [0xff00..=0xffff, ..] => "multicast",
        [0x2000..=0x3fff, ..] => return None,
        _ => "outside global unicast (2000::/3)",
    };
    Some(reason)
}

/// A refusal raised inside the resolver; found again in reqwest's error chain.
#[derive(Debug)]
struct AddressRefused(String);

impl std::fmt::Display for AddressRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl StdError for AddressRefused {}

/// Hosts exempt from the address policy, normalised the way URL hosts are.
#[derive(Debug, Default)]
struct AllowedHosts {
    /// Lowercase names without a trailing dot (IDNA names in their `xn--` form).
    names: HashSet<String>,
    /// IP literals, matched against IP-literal URL hosts only.
    ips: HashSet<IpAddr>,
}

impl AllowedHosts {
    fn new(hosts: &[String]) -> Result<Self, WebhookError> {
        let mut allowed = Self::default();
        for entry in hosts {
            let invalid =
                || WebhookError::Build(format!("invalid allowed_webhook_hosts entry {entry:?}"));
            let entry = entry.trim();
            if entry.is_empty() || entry.contains(['/', '@', '?', '#']) {
                return Err(invalid());
            }
            // A bare IPv6 address is not a URL host (it needs brackets there).
            if let Ok(ip) = entry.parse::<IpAddr>() {
                allowed.ips.insert(ip);
                continue;
            }
            // Parse as a URL host so the entry is normalised exactly as the URLs are
            // (case, IDNA, IPv4 forms such as 127.1, brackets around IPv6).
            let url = Url::parse(&format!("http://{entry}/")).map_err(|_| invalid())?;
            if url.port().is_some() {
                return Err(invalid());
            }
            let host = url.host_str().ok_or_else(invalid)?;
            match literal_ip(host) {
                Some(ip) => allowed.ips.insert(ip),
                None => allowed.names.insert(normalise_name(host)),
            };
        }
        Ok(allowed)
    }
}

fn normalise_name(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// The IP address a URL host denotes, if it is a literal (`host_str` keeps IPv6 brackets).
fn literal_ip(host: &str) -> Option<IpAddr> {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    bare.parse().ok()
}

/// Refusals by name alone, before any resolution. Other names (`localhost` included) are
/// judged by the addresses they resolve to.
fn check_name(allowed: &AllowedHosts, host: &str) -> Result<(), AddressRefused> {
    let name = normalise_name(host);
    if allowed.names.contains(&name) {
        return Ok(());
    }
    if METADATA_HOSTS.contains(&name.as_str()) {
        return Err(AddressRefused(format!(
            "{name} is a cloud metadata service"
        )));
    }
    Ok(())
}

/// The only resolver reqwest uses: resolves once and returns only addresses that passed the
/// policy, so the address checked is the address connected to.
struct CheckedResolver {
    allowed: Arc<AllowedHosts>,
}

impl Resolve for CheckedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allowed = Arc::clone(&self.allowed);
        let host = name.as_str().to_owned();
        Box::pin(async move {
            check_name(&allowed, &host)?;
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let addrs = check_resolved(&allowed, &host, addrs)?;
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// Every resolved address must pass: a mix of public and private answers is refused rather
/// than filtered, since it is either a misconfiguration or DNS rebinding.
fn check_resolved(
    allowed: &AllowedHosts,
    host: &str,
    addrs: Vec<SocketAddr>,
) -> Result<Vec<SocketAddr>, AddressRefused> {
    if allowed.names.contains(&normalise_name(host)) {
        return Ok(addrs);
    }
    let refused: Vec<String> = addrs
        .iter()
        .filter_map(|a| refusal_reason(a.ip()).map(|r| format!("{} ({r})", a.ip())))
        .collect();
    if refused.is_empty() {
        Ok(addrs)
    } else {
        Err(AddressRefused(format!(
            "{host} resolves to {}",
            refused.join(", ")
        )))
    }
}

fn tls_config() -> Result<rustls::ClientConfig, WebhookError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| WebhookError::Build(format!("TLS configuration: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

fn header_value(what: &str, value: &str) -> Result<HeaderValue, WebhookError> {
    HeaderValue::from_str(value)
        .map_err(|_| WebhookError::Build(format!("{what} is not a valid header value")))
}

fn send_error(err: reqwest::Error) -> WebhookError {
    // The URL can carry a token in its path or query: keep it out of messages and logs.
    let err = err.without_url();
    let mut source: Option<&(dyn StdError + 'static)> = Some(&err);
    while let Some(e) = source {
        if let Some(refused) = e.downcast_ref::<AddressRefused>() {
            return WebhookError::Refused(refused.0.clone());
        }
        source = e.source();
    }
    if err.is_timeout() {
        WebhookError::Timeout
    } else if err.is_builder() {
        WebhookError::Build(error_chain(&err))
    } else {
        WebhookError::Connect(error_chain(&err))
    }
}

/// An error and its sources, joined: reqwest's own message alone ("error sending request")
/// says nothing about the cause.
fn error_chain(err: &(dyn StdError + 'static)) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        let text = e.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = e.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(addr: &str) -> bool {
        let ip: IpAddr = addr.parse().expect("test address parses");
        refusal_reason(ip).is_some()
    }

    #[test]
    fn address_policy_table() {
        let table: &[(&str, bool)] = &[
            // IPv4
            ("0.0.0.0", true),
            ("0.1.2.3", true),
            ("10.0.0.1", true),
            ("10.255.255.255", true),
            ("100.64.0.1", true),
            ("100.127.255.254", true),
            ("100.100.100.200", true), // Alibaba metadata
            ("100.63.255.255", false),
            ("100.128.0.0", false),
            ("127.0.0.1", true),
            ("127.255.255.254", true),
            ("169.254.169.254", true),
            ("169.254.0.1", true),
            ("172.15.255.255", false),
            ("172.16.0.1", true),
            ("172.31.255.255", true),
            ("172.32.0.0", false),
            ("192.0.0.170", true),
            ("192.0.2.1", true),
            ("192.88.99.1", true),
            ("192.168.1.1", true),
            ("192.169.0.1", false),
            ("198.18.0.1", true),
            ("198.19.255.255", true),
            ("198.20.0.1", false),
            ("198.51.100.7", true),
            ("203.0.113.9", true),
            ("224.0.0.1", true),
            ("239.255.255.250", true),
            ("240.0.0.1", true),
            ("255.255.255.255", true),
            ("1.1.1.1", false),
            ("8.8.8.8", false),
            ("93.184.216.34", false),
            // IPv6
            ("::", true),
            ("::1", true),
            ("::ffff:127.0.0.1", true),
            ("::ffff:169.254.169.254", true),
            ("::ffff:10.1.2.3", true),
            ("::ffff:0:127.0.0.1", true),
            ("::ffff:8.8.8.8", false),
            ("::127.0.0.1", true),
            ("::8.8.8.8", true),
            ("64:ff9b::127.0.0.1", true),
            ("64:ff9b::a9fe:a9fe", true),
            ("64:ff9b::192.168.0.1", true),
            ("64:ff9b::8.8.8.8", false),
            ("64:ff9b:1::8.8.8.8", true),
            ("100::1", true),
            ("2002:7f00:1::", true),
            ("2002:a9fe:a9fe::1", true),
            ("2002:808:808::1", false),
            ("2001::1", true),
            ("2001:db8::1", true),
            ("2001:2::1", true),
            ("2001:10::1", true),
            ("3fff::1", true),
            ("fc00::1", true),
            ("fd00:ec2::254", true), // AWS IMDS over IPv6
            ("fe80::1", true),
            ("febf::1", true),
            ("fec0::1", true),
            ("ff02::1", true),
            ("4000::1", true),
            ("2606:4700:4700::1111", false),
            ("2001:4860:4860::8888", false),
            ("2a00:1450:4001::1", false),
        ];
        for (addr, want_refused) in table {
            assert_eq!(refused(addr), *want_refused, "{addr}");
        }
    }

    #[test]
    fn signature_matches_rfc4231_case_2() {
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn validate_url_names_the_problem() {
        assert!(validate_url("https://erp.example/hooks/drop").is_ok());
        assert!(validate_url("http://127.0.0.1:8080/x?y=1").is_ok());
        assert!(
            validate_url("ftp://erp.example/")
                .expect_err("ftp refused")
                .contains("scheme")
        );
        assert!(
            validate_url("file:///etc/passwd")
                .expect_err("file refused")
                .contains("scheme")
        );
        let creds =
            validate_url("https://user:hunter2@erp.example/").expect_err("credentials refused");
        assert!(creds.contains("credentials"));
        assert!(!creds.contains("hunter2"));
        assert!(validate_url("https://user@erp.example/").is_err());
        assert!(validate_url("not a url").is_err());
        assert!(validate_url("http://").is_err());
    }

    #[test]
    fn allowed_hosts_are_normalised_like_url_hosts() {
        let allowed = AllowedHosts::new(&[
            "Receiver.LAN".to_owned(),
            "127.1".to_owned(),
            "[::1]".to_owned(),
            "fd00::5".to_owned(),
        ])
        .expect("valid entries");
        assert!(allowed.names.contains("receiver.lan"));
        assert!(allowed.ips.contains(&IpAddr::from([127, 0, 0, 1])));
        assert!(allowed.ips.contains(&IpAddr::V6(Ipv6Addr::LOCALHOST)));
        assert!(
            allowed
                .ips
                .contains(&"fd00::5".parse::<IpAddr>().expect("parses"))
        );
        for bad in ["", "host:8080", "http://host", "a/b", "user@host"] {
            assert!(AllowedHosts::new(&[bad.to_owned()]).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn mixed_resolution_is_refused_not_filtered() {
        let allowed = AllowedHosts::default();
        let public: SocketAddr = "93.184.216.34:0".parse().expect("parses");
        let private: SocketAddr = "10.0.0.1:0".parse().expect("parses");
        assert!(check_resolved(&allowed, "x.example", vec![public]).is_ok());
        let err = check_resolved(&allowed, "x.example", vec![public, private])
            .expect_err("mixed answer refused");
        assert!(err.0.contains("10.0.0.1"));
        let allowed = AllowedHosts::new(&["X.example".to_owned()]).expect("valid");
        assert!(check_resolved(&allowed, "x.example.", vec![private]).is_ok());
    }

    #[tokio::test]
    async fn resolver_refuses_private_answers_unless_allowed() {
        let name: Name = "localhost".parse().expect("valid name");
        let resolver = CheckedResolver {
            allowed: Arc::new(AllowedHosts::default()),
        };
        let err = match resolver.resolve(name).await {
            Ok(addrs) => panic!("resolved to {:?}", addrs.collect::<Vec<_>>()),
            Err(err) => err,
        };
        assert!(err.downcast_ref::<AddressRefused>().is_some(), "{err}");

        let resolver = CheckedResolver {
            allowed: Arc::new(AllowedHosts::new(&["localhost".to_owned()]).expect("valid")),
        };
        let name: Name = "localhost".parse().expect("valid name");
        let addrs: Vec<SocketAddr> = resolver.resolve(name).await.expect("allowed").collect();
        assert!(!addrs.is_empty());
        assert!(addrs.iter().all(|a| a.ip().is_loopback()));
    }

    #[test]
    fn names_refused_by_name() {
        let allowed = AllowedHosts::default();
        for name in [
            "metadata.google.internal",
            "Metadata.Google.Internal.",
            "metadata",
        ] {
            assert!(check_name(&allowed, name).is_err(), "{name}");
        }
        assert!(check_name(&allowed, "erp.example").is_ok());
        let allowed = AllowedHosts::new(&["metadata".to_owned()]).expect("valid");
        assert!(check_name(&allowed, "metadata").is_ok());
    }
}

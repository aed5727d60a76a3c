//! Webhook delivery against real receivers on 127.0.0.1 (ephemeral ports). Every other
//! target used here is refused before any connection, so no traffic leaves loopback.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dropgate_actions::webhook::{WebhookClient, WebhookError, signature};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const SECRET: &str = "s3cr3t-for-tests";
const BODY: &[u8] =
    br#"{"id":"d-1","event":"upload","path":"/inbox/r\u00e9sum\u00e9.pdf","size":42}"#;
const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
struct Recorded {
    request_line: String,
    /// Lowercase header names.
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

/// How the test receiver answers.
#[derive(Clone)]
enum Reply {
    /// Status code and extra header lines.
    Status(u16, Vec<String>),
    /// Read the request, then hold the connection without a word.
    Never,
}

/// A minimal HTTP/1.1 receiver that records every request and counts connections.
struct Receiver {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<Recorded>>>,
    connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    async fn start(reply: Reply) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        let addr = listener.local_addr().expect("receiver address");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn({
            let requests = Arc::clone(&requests);
            let connections = Arc::clone(&connections);
            async move {
                while let Ok((stream, _)) = listener.accept().await {
                    connections.fetch_add(1, Ordering::SeqCst);
                    tokio::spawn(serve(stream, reply.clone(), Arc::clone(&requests)));
                }
            }
        });
        Self {
            addr,
            requests,
            connections,
            task,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().expect("requests lock").clone()
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

async fn serve(mut stream: TcpStream, reply: Reply, requests: Arc<Mutex<Vec<Recorded>>>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default().to_owned();
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < length {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    requests.lock().expect("requests lock").push(Recorded {
        request_line,
        headers,
        body,
    });
    match reply {
        Reply::Status(code, extra) => {
            let mut response =
                format!("HTTP/1.1 {code} Test\r\nContent-Length: 2\r\nConnection: close\r\n");
            for line in extra {
                response.push_str(&line);
                response.push_str("\r\n");
            }
            response.push_str("\r\nok");
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        }
        Reply::Never => tokio::time::sleep(Duration::from_secs(60)).await,
    }
}

fn client(allowed: &[&str]) -> WebhookClient {
    let allowed: Vec<String> = allowed.iter().map(|s| (*s).to_owned()).collect();
    WebhookClient::new(&allowed).expect("webhook client builds")
}

async fn deliver(client: &WebhookClient, url: &str) -> Result<u16, WebhookError> {
    client
        .deliver(url, SECRET, TIMEOUT, "d-1", "upload", BODY)
        .await
}

#[tokio::test]
async fn delivers_signed_request_to_allowed_loopback() {
    let receiver = Receiver::start(Reply::Status(200, vec![])).await;
    let client = client(&["127.0.0.1"]);

    let status = deliver(&client, &receiver.url("/hooks/drop?x=1"))
        .await
        .expect("delivered");
    assert_eq!(status, 200);

    let requests = receiver.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.request_line, "POST /hooks/drop?x=1 HTTP/1.1");
    assert_eq!(request.body, BODY, "body bytes arrive unchanged");
    let header = |name: &str| {
        request
            .headers
            .get(name)
            .unwrap_or_else(|| panic!("header {name} missing"))
            .as_str()
    };
    assert_eq!(header("content-type"), "application/json");
    assert_eq!(header("x-dropgate-delivery"), "d-1");
    assert_eq!(header("x-dropgate-event"), "upload");
    assert_eq!(
        header("user-agent"),
        concat!("dropgate/", env!("CARGO_PKG_VERSION"))
    );

    // Verify the signature the way a receiver would.
    let hex_mac = header("x-dropgate-signature")
        .strip_prefix("sha256=")
        .expect("sha256= prefix");
    let mac_bytes = hex::decode(hex_mac).expect("hex signature");
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("hmac key");
    mac.update(&request.body);
    mac.verify_slice(&mac_bytes).expect("signature verifies");
    assert_eq!(header("x-dropgate-signature"), signature(SECRET, BODY));
    assert!(!request.headers.values().any(|v| v.contains(SECRET)));
}

#[tokio::test]
async fn allowed_localhost_name_is_delivered() {
    let receiver = Receiver::start(Reply::Status(204, vec![])).await;
    let client = client(&["LocalHost"]);
    let url = format!("http://localhost:{}/", receiver.addr.port());
    assert_eq!(deliver(&client, &url).await.expect("delivered"), 204);
    assert_eq!(receiver.requests().len(), 1);
}

#[tokio::test]
async fn loopback_is_refused_without_allowance() {
    let receiver = Receiver::start(Reply::Status(200, vec![])).await;
    // An allowance for another host does not cover these.
    for client in [client(&[]), client(&["receiver.example", "127.0.0.2"])] {
        for url in [
            receiver.url("/"),
            format!("http://localhost:{}/", receiver.addr.port()),
            format!("http://LocalHost:{}/", receiver.addr.port()),
            format!("http://127.1:{}/", receiver.addr.port()),
            format!("http://2130706433:{}/", receiver.addr.port()),
        ] {
            let err = deliver(&client, &url).await.expect_err("refused");
            assert!(
                matches!(err, WebhookError::Refused(_)),
                "{url}: want Refused, got {err:?}"
            );
            assert!(err.is_permanent());
            assert!(!err.to_string().contains(SECRET));
        }
    }
    assert_eq!(receiver.connections(), 0, "the receiver saw nothing");
    assert!(receiver.requests().is_empty());
}

#[tokio::test]
async fn private_targets_are_refused_before_connecting() {
    let client = client(&["localhost"]);
    let started = Instant::now();
    for url in [
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:169.254.169.254]/",
        "http://[::ffff:a9fe:a9fe]/latest/meta-data/",
        "http://[64:ff9b::a9fe:a9fe]/",
        "http://[::1]/",
        "http://[fe80::1]/",
        "http://[fd00:ec2::254]/",
        "http://10.0.0.1/",
        "http://172.16.5.4:8080/",
        "http://192.168.1.1/",
        "http://100.64.0.1/",
        "http://0.0.0.0/",
        "http://0/",
        "https://127.0.0.1/",
        "http://metadata.google.internal/computeMetadata/v1/",
    ] {
        let err = deliver(&client, url).await.expect_err("refused");
        assert!(
            matches!(err, WebhookError::Refused(_)),
            "{url}: want Refused, got {err:?}"
        );
    }
    // Refusals are decided locally: nothing waited on a connection.
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn invalid_urls_are_permanent_errors() {
    let client = client(&[]);
    for url in [
        "ftp://127.0.0.1/",
        "file:///etc/passwd",
        "http://user:pw@example.com/",
        "nonsense",
    ] {
        let err = deliver(&client, url).await.expect_err("invalid");
        assert!(matches!(err, WebhookError::InvalidUrl(_)), "{url}: {err:?}");
        assert!(err.is_permanent());
    }
}

#[tokio::test]
async fn redirect_is_reported_and_never_followed() {
    let target = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind redirect target");
    let target_addr = target.local_addr().expect("target address");
    let target_accepts = Arc::new(AtomicUsize::new(0));
    let target_task = tokio::spawn({
        let accepts = Arc::clone(&target_accepts);
        async move {
            while target.accept().await.is_ok() {
                accepts.fetch_add(1, Ordering::SeqCst);
            }
        }
    });

    let receiver = Receiver::start(Reply::Status(
        302,
        vec![format!("Location: http://{target_addr}/stolen")],
    ))
    .await;
    let client = client(&["127.0.0.1"]);
    let err = deliver(&client, &receiver.url("/"))
        .await
        .expect_err("a redirect is a failure");
    assert!(matches!(err, WebhookError::Redirect(302)), "{err:?}");
    assert!(!err.is_permanent());

    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(receiver.requests().len(), 1);
    assert_eq!(
        target_accepts.load(Ordering::SeqCst),
        0,
        "the redirect target was never contacted"
    );
    target_task.abort();
}

#[tokio::test]
async fn server_error_is_a_status_error() {
    let receiver = Receiver::start(Reply::Status(500, vec![])).await;
    let client = client(&["127.0.0.1"]);
    let err = deliver(&client, &receiver.url("/"))
        .await
        .expect_err("500 fails");
    assert!(matches!(err, WebhookError::Status(500)), "{err:?}");
    assert!(!err.is_permanent());
}

#[tokio::test]
async fn silent_receiver_times_out() {
    let receiver = Receiver::start(Reply::Never).await;
    let client = client(&["127.0.0.1"]);
    let timeout = Duration::from_millis(500);
    let started = Instant::now();
    let err = client
        .deliver(&receiver.url("/"), SECRET, timeout, "d-2", "upload", BODY)
        .await
        .expect_err("no answer");
    let elapsed = started.elapsed();
    assert!(matches!(err, WebhookError::Timeout), "{err:?}");
    assert!(elapsed >= timeout, "{elapsed:?}");
    assert!(elapsed < timeout + Duration::from_secs(2), "{elapsed:?}");
    assert_eq!(receiver.requests().len(), 1, "the request itself arrived");
}

#[tokio::test]
async fn https_to_a_plain_listener_fails_the_handshake() {
    // Exercises the aws-lc-rs TLS client: a listener answering plain HTTP to a ClientHello.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut hello = [0u8; 512];
            let _ = stream.read(&mut hello).await;
            let _ = stream
                .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                .await;
        }
    });
    let client = client(&["127.0.0.1"]);
    let err = deliver(&client, &format!("https://{addr}/"))
        .await
        .expect_err("not TLS");
    assert!(matches!(err, WebhookError::Connect(_)), "{err:?}");
    assert!(!err.to_string().contains(SECRET));
    task.abort();
}

//! A real S3-compatible endpoint on loopback for the S3 backend's tests:
//! `moto_server` (PyPI `moto[server]`, installed by `scripts/test`) started
//! on an ephemeral port and killed when the handle drops.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A running `moto_server`.
pub struct Moto {
    child: Child,
    port: u16,
}

impl Moto {
    /// Starts one (`DROPGATE_MOTO` names the program; default
    /// `moto_server` on PATH). Panics, failing the test, when it cannot run:
    /// the S3 tests are never skipped.
    pub fn start() -> Moto {
        let program = std::env::var("DROPGATE_MOTO").unwrap_or_else(|_| "moto_server".into());
        let found = Command::new("sh")
            .arg("-c")
            .arg("command -v \"$0\" >/dev/null")
            .arg(&program)
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            found,
            "{program} is required: pip install 'moto[server]' (scripts/test does)"
        );
        // Through a shell that stops moto when its stdin closes, which
        // happens when this process ends however it ends: a handle kept in
        // a static is never dropped, and moto must not outlive the tests.
        let mut child = Command::new("sh")
            .arg("-c")
            .arg("\"$0\" -H 127.0.0.1 -p 0 </dev/null & pid=$!; read _; kill $pid; wait $pid")
            .arg(&program)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {program}: {e}"));
        // Werkzeug prints "* Running on http://127.0.0.1:PORT" on stderr.
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if !sent && let Some(rest) = line.split("http://127.0.0.1:").nth(1) {
                    let port: String = rest.chars().take_while(char::is_ascii_digit).collect();
                    if let Ok(port) = port.parse::<u16>() {
                        let _ = tx.send(port);
                        sent = true;
                    }
                }
                // Keep draining so moto never blocks on a full pipe.
            }
        });
        let port = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(p) => p,
            Err(_) => {
                let _ = child.kill();
                panic!("{program} did not report its port within 30 s");
            }
        };
        let moto = Moto { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto did not accept connections");
            std::thread::sleep(Duration::from_millis(50));
        }
        moto
    }

    /// One moto for the whole test binary (started on first use; it stops
    /// when the binary ends). Tests separate themselves by bucket.
    pub fn shared() -> &'static Moto {
        static SHARED: std::sync::OnceLock<Moto> = std::sync::OnceLock::new();
        SHARED.get_or_init(Moto::start)
    }

    /// Its endpoint URL (`http://127.0.0.1:PORT`).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Creates a new, empty bucket with a unique name and returns the name.
    pub fn bucket(&self) -> String {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "dropgate-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        // moto takes an unsigned bucket creation.
        let status = self.request("PUT", &format!("/{name}"));
        assert!(status == 200, "creating bucket {name}: HTTP {status}");
        name
    }

    /// The keys of the multipart uploads begun in `bucket` and neither
    /// completed nor aborted (ListMultipartUploads).
    pub fn unfinished_uploads(&self, bucket: &str) -> Vec<String> {
        let (status, body) = self.request_body("GET", &format!("/{bucket}?uploads"));
        assert!(
            status == 200,
            "listing uploads of {bucket}: HTTP {status}: {body}"
        );
        body.split("<Key>")
            .skip(1)
            .filter_map(|rest| rest.split("</Key>").next())
            .map(str::to_owned)
            .collect()
    }

    /// One plain HTTP/1.1 request without a body; the response's status.
    fn request(&self, method: &str, path: &str) -> u16 {
        self.request_body(method, path).0
    }

    /// One plain HTTP/1.1 request without a body; the response's status
    /// and body.
    fn request_body(&self, method: &str, path: &str) -> (u16, String) {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to moto");
        s.set_read_timeout(Some(Duration::from_secs(30))).ok();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        )
        .expect("write to moto");
        let mut response = String::new();
        let _ = s.read_to_string(&mut response);
        let status = response
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (status, body)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        // Closing the shell's stdin stops moto, then the shell.
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

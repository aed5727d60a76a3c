//! Starts the real `dropgate serve` on ephemeral loopback ports in a scratch
//! folder and talks to it with real clients (curl, OpenSSH) — the same way an
//! operator and a partner would.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running gateway; stopped (SIGTERM) on drop.
pub struct Gateway {
    pub dir: tempfile::TempDir,
    child: Child,
    pub addrs: HashMap<String, SocketAddr>,
    pub log: Arc<Mutex<String>>,
    pub admin_password: String,
}

impl Gateway {
    pub fn start(extra_toml: &str) -> Gateway {
        Gateway::start_in(tempfile::tempdir().unwrap(), extra_toml)
    }

    /// Starts (or restarts) the gateway in `dir`, keeping its data.
    pub fn start_in(dir: tempfile::TempDir, extra_toml: &str) -> Gateway {
        Gateway::start_wrapped(dir, extra_toml, &[])
    }

    /// Starts the gateway through `wrapper` (a command that runs the rest of
    /// its arguments in its own place, like `prlimit --nofile=N:N`).
    pub fn start_wrapped(dir: tempfile::TempDir, extra_toml: &str, wrapper: &[&str]) -> Gateway {
        Gateway::start_full(dir, extra_toml, wrapper, &[])
    }

    /// Starts the gateway with environment overrides (`DROPGATE_FTP__…`),
    /// for settings the harness's own file already names.
    pub fn start_env(dir: tempfile::TempDir, extra_toml: &str, env: &[(&str, &str)]) -> Gateway {
        Gateway::start_full(dir, extra_toml, &[], env)
    }

    /// A further node on the same store as `first`: it finds the first
    /// admin there, so it gets the first node's admin password file.
    pub fn start_next_node(first: &Gateway, extra_toml: &str, env: &[(&str, &str)]) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("data")).unwrap();
        std::fs::copy(
            first.dir.path().join("data/initial-admin-password"),
            dir.path().join("data/initial-admin-password"),
        )
        .unwrap();
        Gateway::start_full(dir, extra_toml, &[], env)
    }

    fn start_full(
        dir: tempfile::TempDir,
        extra_toml: &str,
        wrapper: &[&str],
        env: &[(&str, &str)],
    ) -> Gateway {
        std::fs::write(
            dir.path().join("dropgate.toml"),
            format!(
                "[ftp]\nlisten = \"127.0.0.1:0\"\npassive_ports = \"46000-46999\"\n\
                 [sftp]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n{extra_toml}"
            ),
        )
        .unwrap();
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(env!("CARGO_BIN_EXE_dropgate"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_dropgate")),
        };
        let mut child = command
            .arg("serve")
            .current_dir(dir.path())
            .env_remove("DROPGATE_CONFIG")
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        let addrs = loop {
            let text = log.lock().unwrap().clone();
            if text.contains("dropgate started") {
                break parse_listeners(&text);
            }
            assert!(Instant::now() < deadline, "gateway did not start:\n{text}");
            std::thread::sleep(Duration::from_millis(100));
        };
        let admin_password =
            std::fs::read_to_string(dir.path().join("data/initial-admin-password"))
                .unwrap()
                .trim()
                .to_owned();
        Gateway {
            dir,
            child,
            addrs,
            log,
            admin_password,
        }
    }

    /// Waits (up to 5 s) until the server's log contains `needle`: the log
    /// is read by another thread, which may lag behind what a client saw.
    pub fn wait_log(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.log.lock().unwrap().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "log never said {needle:?}:\n{}",
                self.log.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn addr(&self, protocol: &str) -> SocketAddr {
        self.addrs[protocol]
    }

    pub fn home(&self, user: &str) -> PathBuf {
        self.dir.path().join("data/files").join(user)
    }

    /// A bearer token for the first admin.
    pub fn token(&self) -> String {
        let body = format!(
            r#"{{"username":"admin","password":"{}"}}"#,
            self.admin_password
        );
        let (status, v) = self.api("POST", "/api/v1/auth/token", None, Some(&body));
        assert_eq!(status, 200, "{v}");
        v["token"].as_str().unwrap().to_owned()
    }

    /// One REST call with curl: (status, JSON body or Null).
    pub fn api(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> (u16, serde_json::Value) {
        let url = format!("http://{}{}", self.addr("admin"), path);
        let mut c = Command::new("curl");
        c.args(["-s", "-o", "-", "-w", "\n%{http_code}", "-X", method, &url]);
        if let Some(t) = token {
            c.args(["-H", &format!("Authorization: Bearer {t}")]);
        }
        if let Some(b) = body {
            c.args(["-H", "Content-Type: application/json", "--data-binary", b]);
        }
        let out = c.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (json, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        let v = serde_json::from_str(json).unwrap_or(serde_json::Value::Null);
        (code.trim().parse().unwrap_or(0), v)
    }

    /// Creates an account over REST (`POST /api/v1/users`), asserting 201.
    pub fn create_user(&self, token: &str, body: &serde_json::Value) -> serde_json::Value {
        let (status, user) = self.api(
            "POST",
            "/api/v1/users",
            Some(token),
            Some(&body.to_string()),
        );
        assert_eq!(status, 201, "{user}");
        user
    }

    /// Waits until `pred` holds for the audit events (newest first).
    pub fn wait_events(
        &self,
        token: &str,
        query: &str,
        pred: impl Fn(&[serde_json::Value]) -> bool,
    ) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let (status, v) =
                self.api("GET", &format!("/api/v1/events?{query}"), Some(token), None);
            assert_eq!(status, 200);
            let items = v["items"].as_array().cloned().unwrap_or_default();
            if pred(&items) {
                return items;
            }
            assert!(
                Instant::now() < deadline,
                "events never matched: {items:#?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Gateway {
    /// Stops the server with SIGTERM and waits (at most 60 s) for it to
    /// exit: (exit code, how long it took, its folder).
    pub fn terminate(mut self) -> (Option<i32>, Duration, tempfile::TempDir) {
        let started = Instant::now();
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let code = loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                break status.code();
            }
            if started.elapsed() > Duration::from_secs(60) {
                let _ = self.child.kill();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let took = started.elapsed();
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        std::mem::forget(self);
        (code, took, dir)
    }

    /// Kills the server with SIGKILL (no shutdown at all) and hands back its
    /// folder for a restart.
    pub fn kill9(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let dir = tempfile::tempdir().unwrap();
        let dir = std::mem::replace(&mut self.dir, dir);
        std::mem::forget(self);
        dir
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(8);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
    }
}

fn parse_listeners(log: &str) -> HashMap<String, SocketAddr> {
    let mut out = HashMap::new();
    for line in log.lines().filter(|l| l.contains("listening protocol=")) {
        let proto = line
            .split("protocol=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .unwrap();
        let addr = line
            .split("address=")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .unwrap();
        out.insert(proto.to_owned(), addr.parse().unwrap());
    }
    out
}

pub use dropgate_testkit::require_tool;

/// An ed25519 key pair made with ssh-keygen: (private key path, public line).
pub fn ssh_key(dir: &Path, name: &str) -> (PathBuf, String) {
    require_tool("ssh-keygen", "openssh-client");
    let key = dir.join(name);
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&key)
        .status()
        .unwrap();
    assert!(st.success());
    let public = std::fs::read_to_string(key.with_extension("pub"))
        .unwrap()
        .trim()
        .to_owned();
    (key, public)
}

/// OpenSSH `sftp -b` with a key; returns the process output.
pub fn sftp_batch(addr: SocketAddr, user: &str, key: &Path, batch: &str) -> Output {
    require_tool("sftp", "openssh-client");
    let mut child = sftp_command(addr, user, key)
        .args(["-b", "-"])
        .arg(format!("{user}@{}", addr.ip()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    // A client that gave up before reading its batch (the server refused or
    // was killed) closes the pipe: its exit status and stderr say why, so a
    // broken pipe here is not the test's failure.
    if let Err(e) = child.stdin.take().unwrap().write_all(batch.as_bytes()) {
        assert_eq!(
            e.kind(),
            std::io::ErrorKind::BrokenPipe,
            "writing sftp's batch: {e}"
        );
    }
    child.wait_with_output().unwrap()
}

pub fn sftp_command(addr: SocketAddr, _user: &str, key: &Path) -> Command {
    let mut c = Command::new("sftp");
    c.args(["-P", &addr.port().to_string(), "-i"])
        .arg(key)
        .args(SSH_TEST_OPTIONS)
        .args(["-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes"]);
    c
}

/// What every OpenSSH client of these tests is told: a throwaway server
/// key, a time limit, quiet.
const SSH_TEST_OPTIONS: [&str; 8] = [
    "-o",
    "StrictHostKeyChecking=no",
    "-o",
    "UserKnownHostsFile=/dev/null",
    "-o",
    "ConnectTimeout=20",
    "-o",
    "LogLevel=ERROR",
];

/// An OpenSSH `sftp` password login (one try, through sshpass) from the
/// local address `local`, running `commands`.
pub fn sftp_password(
    addr: SocketAddr,
    local: &str,
    user: &str,
    password: &str,
    commands: &str,
) -> Output {
    sftp_password_with(addr, local, user, password, commands, &[])
}

/// [`sftp_password`] with `options` ahead of the tests' usual ones
/// (OpenSSH keeps the first value it is given, so these win: e.g.
/// `StrictHostKeyChecking=yes` with a known-hosts file of the test's own).
pub fn sftp_password_with(
    addr: SocketAddr,
    local: &str,
    user: &str,
    password: &str,
    commands: &str,
    options: &[&str],
) -> Output {
    require_tool("sshpass", "sshpass");
    require_tool("sftp", "openssh-client");
    let mut child = Command::new("sshpass")
        // Not `-b`: batch mode turns password authentication off.
        .args(["-p", password, "sftp", "-P", &addr.port().to_string()])
        .args(options)
        .args(SSH_TEST_OPTIONS)
        .args([
            "-o",
            "PreferredAuthentications=password",
            "-o",
            "PubkeyAuthentication=no",
            "-o",
            "NumberOfPasswordPrompts=1",
            "-o",
        ])
        .arg(format!("BindAddress={local}"))
        .arg(format!("{user}@{}", addr.ip()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(commands.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// curl for FTP/SFTP transfers; returns the output.
pub fn curl(args: &[&str]) -> Output {
    require_tool("curl", "curl");
    Command::new("curl")
        .args(["-s", "-S", "--max-time", "60"])
        .args(args)
        .output()
        .unwrap()
}

/// A PostgreSQL cluster of the test's own on an ephemeral port, run as the
/// `postgres` user; stopped (immediately) on drop.
pub struct PrivatePostgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
}

impl PrivatePostgres {
    pub fn start() -> PrivatePostgres {
        require_tool("runuser", "util-linux");
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL server binaries in /usr/lib/postgresql")
            .flatten()
            .map(|e| e.path().join("bin"))
            .find(|b| b.join("initdb").exists())
            .expect("initdb");
        let dir = tempfile::tempdir().unwrap();
        pg_ok(
            "chown",
            &Command::new("chown")
                .arg("postgres:postgres")
                .arg(dir.path())
                .output()
                .unwrap(),
        );
        let data = dir.path().join("data");
        let out = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(bin.join("initdb"))
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
            .arg(&data)
            .output()
            .unwrap();
        pg_ok("initdb", &out);
        let port = port_below_the_ephemeral_range();
        let pg = PrivatePostgres { dir, bin, port };
        pg.pg_ctl_start();
        pg
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub fn pg_ctl(&self, args: &[&str]) -> Output {
        Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(args)
            .output()
            .unwrap()
    }

    pub fn pg_ctl_start(&self) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("log");
        let out = self.pg_ctl(&["-w", "-o", &options, "-l", log.to_str().unwrap(), "start"]);
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}\nserver log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    pub fn stop(&self) {
        pg_ok(
            "pg_ctl stop",
            &self.pg_ctl(&["-w", "-m", "immediate", "stop"]),
        );
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = self.pg_ctl(&["-w", "-m", "immediate", "stop"]);
    }
}

/// A free port for a server process that binds it itself, and again after
/// a restart: below the kernel's ephemeral range, so that no other test's
/// outgoing connection (whose source ports come from that range) can take
/// it between our check and its bind, or while it is down. A port taken
/// from `bind(":0")` and released did get taken that way (CI, session 43).
fn port_below_the_ephemeral_range() -> u16 {
    let low: u32 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    let (from, to) = (low / 2, low);
    let mut seed = 1 | std::process::id()
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
    for _ in 0..1000 {
        // xorshift: a different port each try.
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        let port = (from + seed % (to - from)) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port between {from} and {to}");
}

fn pg_ok(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A TCP connection from `local` (127.0.0.x) to `addr`, blocking.
pub fn connect_from(local: &str, addr: SocketAddr) -> std::net::TcpStream {
    let local: std::net::IpAddr = local.parse().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    let stream = rt.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(local, 0)).unwrap();
        socket.connect(addr).await.unwrap()
    });
    let std = stream.into_std().unwrap();
    std.set_nonblocking(false).unwrap();
    std.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    std
}

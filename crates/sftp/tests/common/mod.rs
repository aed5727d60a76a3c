//! Shared set-up for the SFTP integration tests: a real gateway and SFTP
//! listener on 127.0.0.1, client keys, and running real client programs
//! with timeouts.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use dropgate_core::Direction;
use dropgate_core::store::{EventKind, EventQuery, Outcome, User};
use dropgate_sftp::{SftpConfig, SftpServer};
use dropgate_testkit::{HomeFiles, TestGateway};
use sha2::Digest;
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

/// Every client command gets at most this long.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A running SFTP listener over a test gateway.
pub struct Harness {
    pub tg: TestGateway,
    pub addr: SocketAddr,
    pub port: u16,
    pub fingerprints: Vec<String>,
    pub shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
    /// Where host keys live (kept across restarts by the tests that want that).
    pub data_dir: tempfile::TempDir,
    /// Scratch space for client-side files and keys.
    pub work: tempfile::TempDir,
}

pub fn config(data_dir: &Path) -> SftpConfig {
    SftpConfig {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        host_keys: Vec::new(),
        data_dir: data_dir.to_owned(),
        legacy_algorithms: false,
        idle_timeout: Duration::from_secs(60),
    }
}

impl Harness {
    pub async fn start() -> Harness {
        Self::start_with(TestGateway::new().await).await
    }

    /// A listener over a gateway whose homes are on the storage under test
    /// (`DROPGATE_TEST_STORAGE`: local disk or S3); reach them through
    /// [`Harness::files`].
    pub async fn start_on_storage_under_test() -> Harness {
        Self::start_with(TestGateway::on_storage_under_test(|_| {}).await).await
    }

    pub async fn start_with(tg: TestGateway) -> Harness {
        Self::start_configured(tg, |_| {}).await
    }

    pub async fn start_configured(tg: TestGateway, tweak: impl FnOnce(&mut SftpConfig)) -> Harness {
        init_tracing();
        let data_dir = tempfile::tempdir().unwrap();
        let mut cfg = config(data_dir.path());
        tweak(&mut cfg);
        let server = SftpServer::bind(cfg, tg.gateway.clone()).await.unwrap();
        let addr = server.local_addrs()[0];
        let fingerprints = server.host_key_fingerprints();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(server.run(shutdown.clone()));
        Harness {
            tg,
            addr,
            port: addr.port(),
            fingerprints,
            shutdown,
            task: Some(task),
            data_dir,
            work: tempfile::tempdir().unwrap(),
        }
    }

    /// Stops the listener and waits (bounded) until it returned.
    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(15), task)
                .await
                .expect("server stops")
                .unwrap();
        }
    }

    pub fn work(&self, name: &str) -> PathBuf {
        self.work.path().join(name)
    }

    /// The on-disk home of an account.
    pub fn home(&self, user: &str) -> PathBuf {
        self.tg.home(user)
    }

    /// An account's home on whatever storage the gateway uses.
    pub async fn files(&self, user: &str) -> HomeFiles {
        self.tg.files(user).await
    }

    /// What the gateway's storage can do, as a comma-separated list of
    /// capability names (for client scripts that expect the documented
    /// refusals where a capability is missing).
    pub fn capability_list(&self) -> String {
        let c = self.tg.capabilities();
        [
            ("random_writes", c.random_writes),
            ("links", c.links),
            ("set_times", c.set_times),
            ("resize", c.resize),
            ("stable_reads", c.stable_reads),
        ]
        .iter()
        .filter(|(_, has)| *has)
        .map(|(name, _)| *name)
        .collect::<Vec<_>>()
        .join(",")
    }

    /// Bytes of the upload of `path` in progress, if any.
    pub fn uploading(&self, path: &str) -> Option<u64> {
        self.tg
            .gateway
            .sessions()
            .list()
            .into_iter()
            .filter_map(|s| s.transfer)
            .find(|t| t.path == path && t.direction == Direction::Upload)
            .map(|t| t.bytes)
    }

    /// Creates an account with a password and a fresh ed25519 key; returns the key file.
    pub async fn user_with_key(&self, name: &str, password: &str) -> PathBuf {
        let (key, line) = keygen(self.work.path(), &format!("{name}_key")).await;
        let mut user = User::new(name);
        user.public_keys = vec![line];
        self.tg.add_user_with(user, Some(password)).await;
        key
    }

    /// OpenSSH options for non-interactive key logins to this server.
    pub fn ssh_opts(&self, key: &Path) -> Vec<String> {
        let mut v = base_ssh_opts();
        v.extend([
            "-o".into(),
            "BatchMode=yes".into(),
            "-i".into(),
            key.display().to_string(),
        ]);
        v
    }

    /// Waits until an upload event for `path` with a hash is stored; returns the hash.
    pub async fn upload_sha256(&self, user: &str, path: &str) -> String {
        for _ in 0..100 {
            self.tg.flush_events().await;
            let q = EventQuery {
                username: Some(user.into()),
                kind: Some(EventKind::Upload),
                limit: 100,
                ..Default::default()
            };
            let events = self.tg.store.query_events(&q).await.unwrap();
            if let Some(e) = events.iter().find(|e| {
                e.path.as_deref() == Some(path) && e.outcome == Outcome::Ok && e.sha256.is_some()
            }) {
                return e.sha256.clone().unwrap();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no upload event with a hash for {path}");
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub fn base_ssh_opts() -> Vec<String> {
    [
        "-F",
        "/dev/null",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "LogLevel=ERROR",
        "-o",
        "ConnectTimeout=20",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// `ssh-keygen -t ed25519`: returns the private key path and the public key line.
pub async fn keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    let key = dir.join(name);
    let out = run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&key))
    .await;
    assert!(
        out.status.success(),
        "ssh-keygen: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    (key, line.trim().to_owned())
}

/// Runs a command to completion (stdin closed) within [`CLIENT_TIMEOUT`].
pub async fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null());
    output(cmd).await
}

/// Runs a command with `input` on stdin within [`CLIENT_TIMEOUT`].
pub async fn run_with_input(cmd: &mut Command, input: &[u8]) -> Output {
    use tokio::io::AsyncWriteExt;
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("spawn");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input).await.unwrap();
    drop(stdin);
    tokio::time::timeout(CLIENT_TIMEOUT, child.wait_with_output())
        .await
        .expect("command timed out")
        .unwrap()
}

async fn output(cmd: &mut Command) -> Output {
    cmd.kill_on_drop(true);
    tokio::time::timeout(CLIENT_TIMEOUT, cmd.output())
        .await
        .expect("command timed out")
        .expect("spawn")
}

pub fn text(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Makes sure python3 can import paramiko, installing it with pip if needed.
pub fn require_paramiko() {
    static READY: OnceLock<()> = OnceLock::new();
    READY.get_or_init(|| {
        let has = |py: &str| {
            std::process::Command::new(py)
                .args(["-c", "import paramiko"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        if has("python3") {
            return;
        }
        let pip = std::process::Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "paramiko"])
            .status()
            .is_ok_and(|s| s.success());
        if !pip {
            // A python without pip (Debian's own): the packaged module.
            let _ = std::process::Command::new("sh")
                .args([
                    "-c",
                    "apt-get install -y --no-install-recommends python3-paramiko >/dev/null 2>&1",
                ])
                .status();
        }
        assert!(
            has("python3"),
            "paramiko is required (pip install paramiko) and could not be installed"
        );
    });
}

/// Runs a Python script (`python3 - args…`, script on stdin).
pub async fn python(script: &str, args: &[String]) -> Output {
    require_paramiko();
    let mut cmd = Command::new("python3");
    cmd.arg("-").args(args);
    run_with_input(&mut cmd, script.as_bytes()).await
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(data))
}

/// Files in a folder whose names start with the atomic-upload temp prefix.
pub fn temporaries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(dropgate_core::vfs::TEMP_PREFIX))
                .collect()
        })
        .unwrap_or_default()
}

/// Polls `cond` every 20 ms for up to `secs` seconds.
pub async fn wait_for(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    for _ in 0..secs * 50 {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cond()
}

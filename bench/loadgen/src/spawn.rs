//! Starts a `dropgate serve` of its own for a load run (the binary's
//! `--spawn` mode): a scratch folder with a configuration that admits the
//! load, the accounts made with `dropgate user add`, loopback listeners on
//! ephemeral ports read back from the server's log.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running server; stopped with SIGTERM on drop.
pub struct Server {
    child: Child,
    /// The folder with `dropgate.toml`, `data/` and `serve.log`.
    pub dir: PathBuf,
    /// The FTP listener (explicit FTPS too).
    pub ftp: SocketAddr,
    /// The SFTP listener.
    pub sftp: SocketAddr,
    /// The generated certificate to trust for FTPS.
    pub cert: PathBuf,
}

impl Server {
    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the server (SIGTERM) and waits up to 30 s for it to exit.
    pub fn stop(mut self) -> Option<std::process::ExitStatus> {
        self.terminate()
    }

    fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let until = Instant::now() + Duration::from_secs(30);
        while Instant::now() < until {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        self.child.wait().ok()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.terminate();
        }
    }
}

/// The configuration a load of `sessions` sessions needs: every client is
/// 127.0.0.1, so the per-address limit (default 50) and the total (default
/// 2,000) are lifted well above the sessions (a session's old connection
/// may still be closing on the server when its next one arrives).
/// `ban_threshold` sets `[limits] login_failures_before_ban` (`None`: the
/// server's default, 10).
pub fn config_toml(sessions: usize, passive_ports: &str, ban_threshold: Option<u32>) -> String {
    let max = (sessions * 2 + 100).max(2000);
    let ban = ban_threshold
        .map(|n| format!("login_failures_before_ban = {n}\n"))
        .unwrap_or_default();
    format!(
        "data_dir = \"data\"\n\
         [ftp]\nlisten = \"127.0.0.1:0\"\npassive_ports = \"{passive_ports}\"\n\
         [sftp]\nlisten = \"127.0.0.1:0\"\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\
         [limits]\nmax_connections = {max}\nmax_connections_per_ip = {max}\n{ban}"
    )
}

/// Writes `config` into `dir/dropgate.toml`, adds `users` with
/// `dropgate user add NAME --password-stdin`, starts `dropgate serve`
/// (log in `dir/serve.log`) and waits up to 60 s for its listeners.
pub fn start(
    bin: &Path,
    dir: &Path,
    config: &str,
    users: &[(String, String)],
) -> Result<Server, String> {
    let conf = dir.join("dropgate.toml");
    std::fs::write(&conf, config).map_err(|e| format!("{}: {e}", conf.display()))?;
    for (user, password) in users {
        let mut child = Command::new(bin)
            .arg("--config")
            .arg(&conf)
            .args(["user", "add", user, "--password-stdin"])
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("{}: {e}", bin.display()))?;
        if let Some(mut stdin) = child.stdin.take() {
            writeln!(stdin, "{password}").map_err(|e| format!("user add {user}: {e}"))?;
        }
        let out = child
            .wait_with_output()
            .map_err(|e| format!("user add {user}: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "user add {user}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    let log_path = dir.join("serve.log");
    let mut child = Command::new(bin)
        .arg("--config")
        .arg(&conf)
        .arg("serve")
        .current_dir(dir)
        .env(
            "RUST_LOG",
            std::env::var("LOADGEN_SERVER_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{}: {e}", bin.display()))?;
    let stderr = child.stderr.take().ok_or("no stderr pipe")?;
    let mut log_file =
        std::fs::File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
    let seen = Arc::new(Mutex::new(String::new()));
    let sink = seen.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = writeln!(log_file, "{line}");
            let mut s = sink.lock().unwrap_or_else(|p| p.into_inner());
            // Only the start-up lines are needed here.
            if s.len() < 64 * 1024 {
                s.push_str(&line);
                s.push('\n');
            }
        }
    });
    let until = Instant::now() + Duration::from_secs(60);
    let text = loop {
        let text = seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if text.contains("dropgate started") && text.contains("protocol=\"sftp\"") {
            break text;
        }
        if let Ok(Some(st)) = child.try_wait() {
            return Err(format!("dropgate serve exited ({st}):\n{text}"));
        }
        if Instant::now() > until {
            let _ = child.kill();
            return Err(format!("dropgate serve did not start in 60 s:\n{text}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let listener = |proto: &str| {
        text.lines()
            .filter(|l| l.contains("listening") && l.contains(&format!("protocol=\"{proto}\"")))
            .find_map(|l| {
                l.split("address=")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
    };
    let (Some(ftp), Some(sftp)) = (listener("ftp"), listener("sftp")) else {
        let _ = child.kill();
        return Err(format!("no FTP or SFTP listener in the log:\n{text}"));
    };
    Ok(Server {
        child,
        dir: dir.to_path_buf(),
        ftp,
        sftp,
        cert: dir.join("data").join("ftps-cert.pem"),
    })
}

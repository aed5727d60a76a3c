//! Command actions: one program run from an argv (never a shell), with a cleared
//! environment, in its own process group, bounded in time and in captured output.

use std::io;
use std::process::{ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use rustix::process::{Pid, Signal, kill_process_group};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio::time::Instant;

/// The only `PATH` a command sees; everything else comes from the caller's `env`.
pub const COMMAND_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// Captured stdout and stderr together, in bytes, before the truncation marker.
pub const MAX_OUTPUT: usize = 64 * 1024;

const TRUNCATED_MARKER: &str = "\n[truncated]";

/// How long output is still read once the process group is gone: only a process that left
/// the group (setsid) can hold a pipe open past that, and it is not waited for.
const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// What one run of a command action produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandOutcome {
    /// The exit code; `None` when the command was killed by a signal (or by the timeout).
    pub exit_code: Option<i32>,
    /// stdout and stderr interleaved as they arrived, lossy UTF-8, at most [`MAX_OUTPUT`]
    /// bytes of it followed by `[truncated]` when there was more.
    pub output: String,
    /// The command outlived its timeout and its process group was killed.
    pub timed_out: bool,
}

/// Checks an argv at rule-creation time: non-empty, absolute `argv[0]`, no NUL bytes.
pub fn validate_argv(argv: &[String]) -> Result<(), String> {
    let Some(program) = argv.first() else {
        return Err("argv must not be empty".into());
    };
    if !program.starts_with('/') {
        return Err(format!("argv[0] must be an absolute path, not {program:?}"));
    }
    if let Some(i) = argv.iter().position(|a| a.contains('\0')) {
        return Err(format!("argv[{i}] contains a NUL byte"));
    }
    Ok(())
}

/// Runs `argv` (no shell) with stdin from `/dev/null` and an environment holding only
/// `PATH` ([`COMMAND_PATH`]) and `env`. The command runs in its own process group; when it
/// exits, times out, or this future is dropped, the whole group is killed with SIGKILL, so
/// nothing it started in the background in its process group outlives it (a
/// child that starts a session of its own with `setsid` escapes the group).
///
/// Errors: `InvalidInput` for a bad argv or environment name, or the spawn error.
pub async fn run_command(
    argv: &[String],
    env: &[(String, String)],
    timeout: Duration,
) -> io::Result<CommandOutcome> {
    validate_argv(argv).map_err(|m| io::Error::new(io::ErrorKind::InvalidInput, m))?;
    validate_env(env).map_err(|m| io::Error::new(io::ErrorKind::InvalidInput, m))?;
    let deadline = Instant::now() + timeout;

    let mut command = Command::new(&argv[0]);
    command
        .args(&argv[1..])
        .env_clear()
        .env("PATH", COMMAND_PATH)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = command.spawn()?;
    // Declared after `child` so it drops first: the group is killed while the leader is not
    // yet reaped, so its pid (the group id) cannot have been reused.
    let mut group = ProcessGroup::of(child.id());

    let output = Mutex::new(OutputBuffer::default());
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let pumps = async {
        tokio::join!(pump(stdout, &output), pump(stderr, &output));
    };
    tokio::pin!(pumps);

    let mut pumps_done = false;
    let status: Option<ExitStatus> = loop {
        tokio::select! {
            status = child.wait() => break Some(status?),
            () = &mut pumps, if !pumps_done => pumps_done = true,
            () = tokio::time::sleep_until(deadline) => break None,
        }
    };

    let timed_out = status.is_none();
    // On timeout: all of it (the leader is not reaped yet, so the group id is still its).
    // On exit: whatever it left running in the group. The leader is reaped by now, but Linux
    // does not reuse a pid while it names a live group, and if the group is empty the id
    // would have to be recycled within these few instructions to hit someone else.
    group.kill();
    let status = match status {
        Some(status) => status,
        None => child.wait().await?,
    };
    if !pumps_done {
        // The writers are dead; the pipes end as soon as the kernel has closed them.
        let _ = tokio::time::timeout(DRAIN_GRACE, &mut pumps).await;
    }

    let output = std::mem::take(
        &mut *output
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    )
    .into_string();
    Ok(CommandOutcome {
        exit_code: if timed_out { None } else { status.code() },
        output,
        timed_out,
    })
}

fn validate_env(env: &[(String, String)]) -> Result<(), String> {
    for (name, value) in env {
        if name.is_empty() || name.contains(['=', '\0']) {
            return Err(format!("invalid environment variable name {name:?}"));
        }
        if value.contains('\0') {
            return Err(format!("environment variable {name} contains a NUL byte"));
        }
    }
    Ok(())
}

/// The child's process group (its pid, since it was started with `process_group(0)`);
/// killed at most once.
struct ProcessGroup(Option<Pid>);

impl ProcessGroup {
    fn of(pid: Option<u32>) -> Self {
        Self(
            pid.and_then(|p| i32::try_from(p).ok())
                .and_then(Pid::from_raw),
        )
    }

    fn kill(&mut self) {
        if let Some(pgid) = self.0.take() {
            // ESRCH: every member has already exited.
            if let Err(e) = kill_process_group(pgid, Signal::KILL)
                && e != rustix::io::Errno::SRCH
            {
                tracing::warn!(pgid = pgid.as_raw_nonzero().get(), error = %e, "killing a command's process group failed");
            }
        }
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Captured output shared by the stdout and stderr readers.
#[derive(Default)]
struct OutputBuffer {
    bytes: Vec<u8>,
    truncated: bool,
}

impl OutputBuffer {
    fn push(&mut self, chunk: &[u8]) {
        let room = MAX_OUTPUT - self.bytes.len();
        if chunk.len() > room {
            self.truncated = true;
        }
        self.bytes
            .extend_from_slice(&chunk[..chunk.len().min(room)]);
    }

    fn into_string(self) -> String {
        let mut text = String::from_utf8_lossy(&self.bytes).into_owned();
        if self.truncated {
            text.push_str(TRUNCATED_MARKER);
        }
        text
    }
}

/// Reads one pipe to its end, keeping what fits and discarding the rest, so the child never
/// blocks on a full pipe.
async fn pump(pipe: Option<impl AsyncRead + Unpin>, output: &Mutex<OutputBuffer>) {
    let Some(mut pipe) = pipe else { return };
    let mut chunk = vec![0u8; 8192];
    loop {
        match pipe.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => output
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(&chunk[..n]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_argv_rules() {
        assert!(validate_argv(&["/bin/true".into()]).is_ok());
        assert!(validate_argv(&[]).is_err());
        assert!(validate_argv(&["true".into()]).is_err());
        assert!(validate_argv(&["./bin/true".into()]).is_err());
        assert!(validate_argv(&["/bin/echo".into(), "a\0b".into()]).is_err());
    }

    #[test]
    fn output_buffer_truncates_with_marker() {
        let mut buf = OutputBuffer::default();
        buf.push(&[b'a'; MAX_OUTPUT - 1]);
        buf.push(b"bc");
        buf.push(b"more");
        let text = buf.into_string();
        assert_eq!(text.len(), MAX_OUTPUT + TRUNCATED_MARKER.len());
        assert!(text.ends_with("b\n[truncated]"));
    }
}

//! Command actions run for real, through /bin/sh given as an argv (our code adds no shell).

use std::io::ErrorKind;
use std::time::{Duration, Instant};

use dropgate_actions::command::{MAX_OUTPUT, run_command, validate_argv};

const TIMEOUT: Duration = Duration::from_secs(10);

fn sh(script: &str) -> Vec<String> {
    vec!["/bin/sh".into(), "-c".into(), script.into()]
}

fn event_env() -> Vec<(String, String)> {
    vec![
        ("DROPGATE_EVENT_PATH".into(), "/inbox/a file.csv".into()),
        ("DROPGATE_EVENT_TRIGGER".into(), "upload".into()),
    ]
}

#[tokio::test]
async fn event_environment_reaches_the_child_and_nothing_else() {
    // cargo sets CARGO_PKG_NAME for this test process (and HOME is usually set): the
    // child must see neither, only PATH and the event variables.
    let outcome = run_command(
        &sh(r#"echo "$DROPGATE_EVENT_PATH|$DROPGATE_EVENT_TRIGGER|$PATH|${HOME-unset}|${CARGO_PKG_NAME-unset}""#),
        &event_env(),
        TIMEOUT,
    )
    .await
    .expect("runs");
    assert_eq!(
        outcome.output,
        "/inbox/a file.csv|upload|/usr/local/bin:/usr/bin:/bin|unset|unset\n"
    );
    assert_eq!(outcome.exit_code, Some(0));
    assert!(!outcome.timed_out);
}

#[tokio::test]
async fn exit_code_and_both_streams_are_reported() {
    let outcome = run_command(&sh("echo out; echo err >&2; exit 7"), &[], TIMEOUT)
        .await
        .expect("runs");
    assert_eq!(outcome.exit_code, Some(7));
    assert!(!outcome.timed_out);
    assert!(outcome.output.contains("out\n"), "{:?}", outcome.output);
    assert!(outcome.output.contains("err\n"), "{:?}", outcome.output);
}

#[tokio::test]
async fn stdin_is_dev_null() {
    let outcome = run_command(&sh("wc -c"), &[], TIMEOUT).await.expect("runs");
    assert_eq!(outcome.output.trim(), "0");
}

#[tokio::test]
async fn hanging_command_and_its_background_children_are_killed() {
    let started = Instant::now();
    let outcome = run_command(
        &sh("sleep 100 & echo $!; sleep 100"),
        &[],
        Duration::from_secs(1),
    )
    .await
    .expect("runs");
    let elapsed = started.elapsed();
    assert!(outcome.timed_out);
    assert_eq!(outcome.exit_code, None);
    assert!(elapsed >= Duration::from_secs(1), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");

    let grandchild: i32 = outcome
        .output
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("grandchild pid in {:?}", outcome.output));
    assert!(
        process_is_gone(grandchild).await,
        "grandchild {grandchild} still runs"
    );
}

#[tokio::test]
async fn background_children_do_not_outlive_a_finished_command() {
    let outcome = run_command(&sh("sleep 100 & echo $!"), &[], TIMEOUT)
        .await
        .expect("runs");
    assert_eq!(outcome.exit_code, Some(0));
    assert!(!outcome.timed_out);
    let grandchild: i32 = outcome.output.trim().parse().expect("grandchild pid");
    assert!(
        process_is_gone(grandchild).await,
        "grandchild {grandchild} still runs"
    );
}

#[tokio::test]
async fn dropping_the_future_kills_the_group() {
    let pid_file =
        std::env::temp_dir().join(format!("dropgate-actions-{}.pid", std::process::id()));
    let script = format!("sleep 100 & echo $! > {}; sleep 100", pid_file.display());
    let argv = sh(&script);
    let run = run_command(&argv, &[], TIMEOUT);
    // Give up on it long before its timeout.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), run)
            .await
            .is_err()
    );
    let pid = std::fs::read_to_string(&pid_file).expect("pid file written");
    let _ = std::fs::remove_file(&pid_file);
    let grandchild: i32 = pid.trim().parse().expect("grandchild pid");
    assert!(
        process_is_gone(grandchild).await,
        "grandchild {grandchild} still runs"
    );
}

#[tokio::test]
async fn relative_or_empty_argv_is_refused() {
    for argv in [vec!["sh".to_owned(), "-c".into(), "true".into()], vec![]] {
        let err = run_command(&argv, &[], TIMEOUT).await.expect_err("refused");
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
    }
    assert!(validate_argv(&["bin/true".into()]).is_err());
    assert!(validate_argv(&["/bin/true".into(), "nul\0".into()]).is_err());
    assert!(validate_argv(&["/bin/true".into()]).is_ok());

    let bad_env = vec![("A=B".to_owned(), "x".to_owned())];
    let err = run_command(&["/bin/true".into()], &bad_env, TIMEOUT)
        .await
        .expect_err("refused");
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
}

#[tokio::test]
async fn missing_program_is_a_spawn_error() {
    let err = run_command(&["/nonexistent/dropgate-test".into()], &[], TIMEOUT)
        .await
        .expect_err("no such program");
    assert_eq!(err.kind(), ErrorKind::NotFound);
}

#[tokio::test]
async fn output_is_truncated_at_64_kib_and_both_pipes_are_drained() {
    // 300 KB on each stream: more than any pipe buffer, so an unread pipe would block the
    // child until the timeout.
    let outcome = run_command(
        &sh("head -c 300000 /dev/zero | tr '\\0' o; head -c 300000 /dev/zero | tr '\\0' e >&2; exit 3"),
        &[],
        TIMEOUT,
    )
    .await
    .expect("runs");
    assert!(!outcome.timed_out);
    assert_eq!(outcome.exit_code, Some(3));
    assert!(outcome.output.ends_with("\n[truncated]"));
    assert_eq!(outcome.output.len(), MAX_OUTPUT + "\n[truncated]".len());
}

/// True once `pid` has exited. A killed orphan can stay a zombie when this container's
/// init does not reap: it is dead all the same, so state Z (or X) counts as gone.
async fn process_is_gone(pid: i32) -> bool {
    for _ in 0..50 {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => return true,
            Ok(stat) => {
                let state = stat
                    .rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().next());
                if matches!(state, Some("Z" | "X")) {
                    return true;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

//! The dispatcher: claims due deliveries from the outbox, runs their
//! rule's action, and records each attempt; also fires schedule rules.
//!
//! Deliveries are claimed with a lease (on PostgreSQL with `SKIP LOCKED`),
//! so with several nodes each runs on one of them; a node that restarts
//! frees its own leases first, so what it was doing resumes at once.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use dropgate_core::Gateway;
use dropgate_core::rules::schedule_delivery;
use dropgate_core::store::{
    AttemptResult, Delivery, DeliveryStatus, EventRule, RuleAction, Trigger,
};
use dropgate_core::vfs::VirtualPath;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::command::run_command;
use crate::file_actions::{self, FileActionError};
use crate::webhook::WebhookClient;

/// Deliveries claimed at a time.
const CLAIM_BATCH: u32 = 32;
/// Deliveries running at once on this node.
const CONCURRENCY: usize = 16;
/// How long a claim lasts unless renewed; a delivery whose node died is
/// retried after it. Running attempts renew it every [`RENEW_EVERY`], so an
/// action may run longer than this without another node starting it again.
const LEASE: Duration = Duration::from_secs(120);
/// How often a running attempt renews its lease.
const RENEW_EVERY: Duration = Duration::from_secs(30);
/// How often the outbox is looked at without a wake-up (retries that came
/// due, deliveries stored by other nodes) and schedules are checked.
const POLL: Duration = Duration::from_secs(1);
/// How often rules are reloaded for changes made on other nodes.
const RELOAD_EVERY: Duration = Duration::from_secs(10);
/// Finished deliveries are kept this long.
const KEEP_FINISHED: chrono::TimeDelta = chrono::TimeDelta::days(30);
/// Retries stop this long after the event.
const GIVE_UP_AFTER: chrono::TimeDelta = chrono::TimeDelta::hours(24);
/// Most bytes of output or error text kept per attempt.
const MAX_TEXT: usize = 64 * 1024;

/// Runs event-rule actions for one node.
pub struct Dispatcher {
    gateway: Arc<Gateway>,
    webhooks: WebhookClient,
    node: String,
    running: Arc<Semaphore>,
}

/// The wait before the retry that follows `attempts` failed attempts:
/// 1 s, 2 s, 4 s … at most 60 s.
pub fn backoff(attempts: u32) -> Duration {
    let exp = attempts.saturating_sub(1).min(6);
    Duration::from_secs((1u64 << exp).min(60))
}

impl Dispatcher {
    /// A dispatcher for `gateway`'s node; `allowed_webhook_hosts` from
    /// `[events]`.
    pub fn new(
        gateway: Arc<Gateway>,
        allowed_webhook_hosts: &[String],
    ) -> Result<Dispatcher, crate::webhook::WebhookError> {
        let node = gateway.node_name().to_owned();
        Ok(Dispatcher {
            gateway,
            webhooks: WebhookClient::new(allowed_webhook_hosts)?,
            node,
            running: Arc::new(Semaphore::new(CONCURRENCY)),
        })
    }

    /// Runs until `shutdown`; then waits for running attempts to record
    /// their outcome (bounded by their own timeouts).
    pub async fn run(self, shutdown: CancellationToken) {
        let store = self.gateway.store().clone();
        match store.release_leases(&self.node).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deliveries = n, "resuming deliveries of the previous run"),
            Err(e) => tracing::warn!(error = %e, "could not release this node's leases"),
        }
        let wake = self.gateway.deliveries_notify().clone();
        let mut last_reload = tokio::time::Instant::now();
        let mut last_prune: Option<tokio::time::Instant> = None;
        let this = Arc::new(self);
        loop {
            if last_reload.elapsed() >= RELOAD_EVERY {
                if let Err(e) = this.gateway.reload_rules().await {
                    tracing::warn!(error = %e, "could not reload event rules");
                }
                last_reload = tokio::time::Instant::now();
            }
            this.fire_schedules().await;
            this.dispatch_due().await;
            if last_prune.is_none_or(|t| t.elapsed() >= Duration::from_secs(3600)) {
                last_prune = Some(tokio::time::Instant::now());
                if let Err(e) = store.prune_deliveries(Utc::now() - KEEP_FINISHED).await {
                    tracing::warn!(error = %e, "could not prune old deliveries");
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = wake.notified() => {}
                () = tokio::time::sleep(POLL) => {}
            }
        }
        // Let running attempts record their outcome.
        let _ = tokio::time::timeout(
            Duration::from_secs(10),
            this.running.acquire_many(CONCURRENCY as u32),
        )
        .await;
    }

    /// Claims and starts due deliveries while there are free slots.
    async fn dispatch_due(self: &Arc<Self>) {
        loop {
            let free = self.running.available_permits().min(CLAIM_BATCH as usize) as u32;
            if free == 0 {
                return;
            }
            let claimed = match self
                .gateway
                .store()
                .claim_deliveries(&self.node, Utc::now(), LEASE, free)
                .await
            {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "could not claim deliveries");
                    return;
                }
            };
            let n = claimed.len();
            for d in claimed {
                let Ok(permit) = self.running.clone().acquire_owned().await else {
                    return;
                };
                let this = self.clone();
                tokio::spawn(async move {
                    this.attempt(d).await;
                    drop(permit);
                });
            }
            if n < free as usize {
                return;
            }
        }
    }

    /// One attempt of one delivery, recorded.
    async fn attempt(&self, d: Delivery) {
        let rule = self
            .gateway
            .rules()
            .snapshot()
            .iter()
            .find(|r| r.rule.id == d.rule_id)
            .map(|r| r.rule.clone());
        let outcome = match &rule {
            None => Outcome::permanent("the rule was deleted".into()),
            Some(r) if !r.enabled => Outcome::permanent("the rule is disabled".into()),
            Some(r) => self.execute_leased(r, &d).await,
        };
        let attempts = d.attempts.saturating_add(1);
        let now = Utc::now();
        let retry_at = now + chrono::TimeDelta::from_std(backoff(attempts)).unwrap_or_default();
        let status = match outcome.result {
            Ok(()) => DeliveryStatus::Succeeded,
            Err(true) => DeliveryStatus::Failed,
            Err(false) if retry_at > d.created_at + GIVE_UP_AFTER => DeliveryStatus::Failed,
            Err(false) => DeliveryStatus::Pending,
        };
        let result = AttemptResult {
            status,
            error: outcome.error.map(|e| truncate(e, MAX_TEXT)),
            output: outcome.output.map(|o| truncate(o, MAX_TEXT)),
            next_attempt_at: if status == DeliveryStatus::Pending {
                retry_at
            } else {
                now
            },
        };
        let rule_name = rule.as_ref().map(|r| r.name.as_str()).unwrap_or("");
        match status {
            DeliveryStatus::Succeeded => {
                tracing::info!(delivery = %d.id, rule = %rule_name, attempts, "event action succeeded")
            }
            DeliveryStatus::Pending => tracing::warn!(
                delivery = %d.id, rule = %rule_name, attempts,
                error = result.error.as_deref().unwrap_or(""),
                "event action failed; will retry"
            ),
            DeliveryStatus::Failed => tracing::error!(
                delivery = %d.id, rule = %rule_name, attempts,
                error = result.error.as_deref().unwrap_or(""),
                "event action failed; giving up"
            ),
        }
        // The outcome must not be lost to a passing store outage: retry
        // briefly, then leave it to the lease (the attempt runs again).
        for wait in [0u64, 1, 2, 4] {
            tokio::time::sleep(Duration::from_secs(wait)).await;
            match self
                .gateway
                .store()
                .finish_attempt(&d.id, &self.node, &result)
                .await
            {
                Ok(true) => return,
                Ok(false) => {
                    tracing::warn!(delivery = %d.id, "lease lost before the outcome was recorded");
                    return;
                }
                Err(e) => tracing::warn!(error = %e, "could not record a delivery attempt"),
            }
        }
    }

    /// Runs the action while renewing the delivery's lease. If the lease is
    /// lost (the store was unreachable for longer than the lease), the
    /// attempt is abandoned: another node may have started it.
    async fn execute_leased(&self, rule: &EventRule, d: &Delivery) -> Outcome {
        let run = self.execute(rule, d);
        tokio::pin!(run);
        let mut renew = tokio::time::interval(RENEW_EVERY);
        renew.tick().await;
        let mut last_renewed = tokio::time::Instant::now();
        loop {
            tokio::select! {
                outcome = &mut run => return outcome,
                _ = renew.tick() => {
                    let until = Utc::now() + chrono::TimeDelta::from_std(LEASE).unwrap_or_default();
                    match self.gateway.store().renew_lease(&d.id, &self.node, until).await {
                        Ok(true) => last_renewed = tokio::time::Instant::now(),
                        Ok(false) => return Outcome::failed("lease lost to another node".into(), false),
                        Err(e) => {
                            tracing::warn!(error = %e, delivery = %d.id, "could not renew a delivery's lease");
                            if last_renewed.elapsed() >= LEASE {
                                return Outcome::failed("lease lost (store unreachable)".into(), false);
                            }
                        }
                    }
                }
            }
        }
    }

    async fn execute(&self, rule: &EventRule, d: &Delivery) -> Outcome {
        let body: serde_json::Value = serde_json::from_str(&d.body).unwrap_or_default();
        match &rule.action {
            RuleAction::Webhook {
                url,
                secret,
                timeout_secs,
            } => {
                let r = self
                    .webhooks
                    .deliver(
                        url,
                        secret,
                        Duration::from_secs(*timeout_secs),
                        &d.id,
                        d.trigger.as_str(),
                        d.body.as_bytes(),
                    )
                    .await;
                match r {
                    Ok(status) => Outcome::ok(Some(format!("HTTP {status}"))),
                    Err(e) => Outcome::failed(e.to_string(), e.is_permanent()),
                }
            }
            RuleAction::Command { argv, timeout_secs } => {
                let env = event_env(&body);
                match run_command(argv, &env, Duration::from_secs(*timeout_secs)).await {
                    Ok(o) if o.timed_out => Outcome {
                        result: Err(false),
                        error: Some(format!("killed after {timeout_secs} s")),
                        output: Some(o.output),
                    },
                    Ok(o) if o.exit_code == Some(0) => Outcome::ok(Some(o.output)),
                    Ok(o) => Outcome {
                        result: Err(false),
                        error: Some(match o.exit_code {
                            Some(c) => format!("exit status {c}"),
                            None => "killed by a signal".into(),
                        }),
                        output: Some(o.output),
                    },
                    Err(e) => Outcome::failed(
                        format!("could not start {:?}: {e}", argv.first()),
                        e.kind() == std::io::ErrorKind::InvalidInput,
                    ),
                }
            }
            RuleAction::Move { to } | RuleAction::Copy { to } => {
                let copy = matches!(rule.action, RuleAction::Copy { .. });
                match self.file_action(&body, to, copy).await {
                    Ok(done) => Outcome::ok(Some(done)),
                    Err(e) => Outcome::failed(e.to_string(), e.is_permanent()),
                }
            }
            RuleAction::Retention {
                path,
                older_than_days,
            } => self.retention(rule, path, *older_than_days).await,
        }
    }

    async fn file_action(
        &self,
        body: &serde_json::Value,
        template: &str,
        copy: bool,
    ) -> Result<String, FileActionError> {
        let username = body["username"].as_str().unwrap_or_default();
        // After a rename the file lives at its new name.
        let source = body["target_path"]
            .as_str()
            .or_else(|| body["path"].as_str())
            .ok_or(FileActionError::NoSource)?;
        let source = VirtualPath::parse(source).map_err(|_| FileActionError::NoSource)?;
        let time = body["time"]
            .as_str()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_else(Utc::now);
        let target = file_actions::expand_target(template, &source, username, time)?;
        let session = self.gateway.action_session(username, false).await?;
        if copy {
            file_actions::copy_file(&session, &source, &target).await
        } else {
            file_actions::move_file(&session, &source, &target).await
        }
    }

    async fn retention(&self, rule: &EventRule, path: &str, days: u64) -> Outcome {
        let Ok(root) = VirtualPath::parse(path) else {
            return Outcome::failed(format!("invalid path {path:?}"), true);
        };
        let older_than = Duration::from_secs(days.saturating_mul(86_400));
        let (mut files, mut bytes, mut errors, mut homes) = (0u64, 0u64, 0u64, 0u64);
        // The rule's accounts, or every account a page at a time.
        let mut offset = 0u64;
        loop {
            let page = if rule.filter.usernames.is_empty() {
                match self.gateway.store().list_users(500, offset).await {
                    Ok((page, _)) => page.into_iter().map(|u| u.username).collect(),
                    Err(e) => return Outcome::failed(format!("listing accounts: {e}"), false),
                }
            } else if offset == 0 {
                rule.filter.usernames.clone()
            } else {
                Vec::new()
            };
            if page.is_empty() {
                break;
            }
            offset += page.len() as u64;
            for username in page {
                let session = match self.gateway.action_session(&username, true).await {
                    Ok(s) => s,
                    Err(_) => {
                        errors += 1;
                        continue;
                    }
                };
                match file_actions::sweep(&session, &root, older_than).await {
                    Ok(s) => {
                        homes += 1;
                        files += s.files;
                        bytes += s.bytes;
                        errors += s.errors;
                    }
                    Err(_) => errors += 1,
                }
            }
        }
        let summary = format!(
            "deleted {files} files ({bytes} bytes) older than {days} days below {root} in {homes} homes; {errors} errors"
        );
        if errors > 0 {
            Outcome {
                result: Err(true),
                error: Some(format!("{errors} files or homes could not be cleaned")),
                output: Some(summary),
            }
        } else {
            Outcome::ok(Some(summary))
        }
    }

    /// Stores a delivery for every schedule rule whose period has passed;
    /// with several nodes, the store lets one of them win each run.
    async fn fire_schedules(&self) {
        let rules = self.gateway.rules().snapshot();
        if !rules
            .iter()
            .any(|r| r.rule.enabled && r.rule.trigger == Trigger::Schedule)
        {
            return;
        }
        let store = self.gateway.store();
        let marks = match store.schedule_marks().await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "could not read schedules");
                return;
            }
        };
        let now = Utc::now();
        for r in rules.iter().map(|r| &r.rule) {
            if !r.enabled || r.trigger != Trigger::Schedule || r.every_secs == 0 {
                continue;
            }
            let last = marks.iter().find(|(id, _)| *id == r.id).and_then(|m| m.1);
            let period =
                chrono::TimeDelta::seconds(i64::try_from(r.every_secs).unwrap_or(i64::MAX / 1000));
            if last.is_some_and(|t| t + period > now) {
                continue;
            }
            let d = schedule_delivery(r, &self.node, now);
            match store.fire_schedule(r.id, last, &d).await {
                Ok(true) => self.gateway.deliveries_notify().notify_one(),
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, rule = %r.name, "could not fire a schedule"),
            }
        }
    }
}

/// What one attempt came to.
struct Outcome {
    /// `Err(permanent)` on failure.
    result: Result<(), bool>,
    error: Option<String>,
    output: Option<String>,
}

impl Outcome {
    fn ok(output: Option<String>) -> Outcome {
        Outcome {
            result: Ok(()),
            error: None,
            output,
        }
    }

    fn failed(error: String, permanent: bool) -> Outcome {
        Outcome {
            result: Err(permanent),
            error: Some(error),
            output: None,
        }
    }

    fn permanent(error: String) -> Outcome {
        Outcome::failed(error, true)
    }
}

/// The event as `DROPGATE_EVENT_*` variables (`DROPGATE_EVENT_PATH`, …).
pub fn event_env(body: &serde_json::Value) -> Vec<(String, String)> {
    let Some(map) = body.as_object() else {
        return Vec::new();
    };
    map.iter()
        .filter_map(|(k, v)| {
            let value = match v {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Number(n) => n.to_string(),
                serde_json::Value::Bool(b) => b.to_string(),
                _ => return None,
            };
            // Our own keys are plain snake_case; the variable names follow.
            let key = k.to_ascii_uppercase();
            if !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return None;
            }
            // Values never carry NUL: names and paths cannot hold one.
            if value.contains('\0') {
                return None;
            }
            Some((format!("DROPGATE_EVENT_{key}"), value))
        })
        .collect()
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str(" [truncated]");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_minute() {
        let secs: Vec<u64> = (1..=9).map(|a| backoff(a).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
    }

    #[test]
    fn event_variables() {
        let body = serde_json::json!({"id": "d1", "event": "upload", "path": "/a b", "size": 3, "x": null});
        let mut env = event_env(&body);
        env.sort();
        assert_eq!(
            env,
            vec![
                ("DROPGATE_EVENT_EVENT".into(), "upload".into()),
                ("DROPGATE_EVENT_ID".into(), "d1".into()),
                ("DROPGATE_EVENT_PATH".into(), "/a b".into()),
                ("DROPGATE_EVENT_SIZE".into(), "3".into()),
            ]
        );
    }
}

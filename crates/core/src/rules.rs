//! Event rules in memory: which stored rules an audited event matches, and
//! the delivery (webhook body) each match becomes.
//!
//! The audit writer asks [`Rules::deliveries_for`] for every batch it stores
//! and writes the deliveries in the same transaction as the events (the
//! outbox), so matching must be cheap and must not touch the store: rules
//! are compiled once per change and read through an `Arc` snapshot.

use std::sync::{Arc, RwLock};

use chrono::{DateTime, SecondsFormat, Utc};
use dropgate_store::{
    Delivery, Event, EventKind, EventRule, Outcome, RuleAction, Store, StoreResult, Trigger,
};
use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};
use serde::Serialize;

/// The protocol name of operations that event actions perform (a move or
/// copy rule, retention): audited, but never matched by rules, so an
/// action cannot trigger itself (a copy rule on `/**` would loop forever).
pub const ACTIONS_PROTOCOL: &str = "actions";

/// The rules of the store, compiled.
#[derive(Default)]
pub struct Rules {
    current: RwLock<Arc<Vec<CompiledRule>>>,
}

/// A rule with its globs compiled.
pub struct CompiledRule {
    /// The stored rule.
    pub rule: EventRule,
    globs: Option<GlobSet>,
}

impl CompiledRule {
    /// Compiles `rule`; fails (naming the glob) if a glob is invalid.
    pub fn new(rule: EventRule) -> Result<CompiledRule, String> {
        let globs = if rule.filter.path_globs.is_empty() {
            None
        } else {
            let mut set = GlobSetBuilder::new();
            for g in &rule.filter.path_globs {
                set.add(compile_glob(g)?);
            }
            Some(set.build().map_err(|e| e.to_string())?)
        };
        Ok(CompiledRule { rule, globs })
    }

    /// Whether this rule takes `event` (triggered as `trigger`).
    pub fn matches(&self, trigger: Trigger, event: &Event) -> bool {
        let r = &self.rule;
        if !r.enabled || r.trigger != trigger {
            return false;
        }
        let f = &r.filter;
        if !f.usernames.is_empty() && !f.usernames.contains(&event.username) {
            return false;
        }
        if !f.protocols.is_empty() && !f.protocols.contains(&event.protocol) {
            return false;
        }
        match &self.globs {
            None => true,
            Some(set) => [&event.path, &event.target_path]
                .into_iter()
                .flatten()
                .any(|p| set.is_match(p)),
        }
    }
}

/// `*` and `?` stay within one folder, `**` crosses folders; a glob must be
/// an absolute virtual path.
pub fn compile_glob(glob: &str) -> Result<Glob, String> {
    if !glob.starts_with('/') {
        return Err(format!("glob {glob:?} must start with /"));
    }
    GlobBuilder::new(glob)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
        .map_err(|e| format!("glob {glob:?}: {}", e.kind()))
}

/// The trigger an audited event fires, if any.
pub fn trigger_of(event: &Event) -> Option<Trigger> {
    if event.protocol == ACTIONS_PROTOCOL {
        return None;
    }
    let ok = event.outcome == Outcome::Ok;
    Some(match event.kind {
        EventKind::Upload if ok => Trigger::Upload,
        EventKind::Download if ok => Trigger::Download,
        EventKind::Delete if ok => Trigger::Delete,
        EventKind::Rename if ok => Trigger::Rename,
        EventKind::Mkdir if ok => Trigger::Mkdir,
        EventKind::Rmdir if ok => Trigger::Rmdir,
        EventKind::Login if !ok => Trigger::LoginFailed,
        EventKind::QuotaExceeded => Trigger::QuotaExceeded,
        EventKind::AccountChanged => Trigger::AccountChanged,
        _ => return None,
    })
}

/// The webhook body of SPEC 8 (also what command actions get as variables).
#[derive(Debug, Serialize)]
pub struct EventBody<'a> {
    /// The delivery id.
    pub id: &'a str,
    /// The trigger.
    pub event: &'a str,
    /// RFC 3339, UTC.
    pub time: String,
    /// The node that saw the event.
    pub node: &'a str,
    /// The account.
    pub username: &'a str,
    /// `ftp`, `ftps`, `sftp`, `admin`.
    pub protocol: &'a str,
    /// The client's address.
    pub remote_addr: &'a str,
    /// The path acted on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<&'a str>,
    /// A rename's new path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_path: Option<&'a str>,
    /// Bytes (uploads and downloads).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Content hash (uploads).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<&'a str>,
    /// Detail (why a login failed, what changed in an account).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<&'a str>,
    /// Schedule deliveries: the rule that fired.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<&'a str>,
}

/// RFC 3339 with seconds and a `Z`.
pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The delivery of `rule` for `event`.
pub fn delivery_for(rule: &EventRule, trigger: Trigger, event: &Event) -> Delivery {
    let mut d = Delivery::new(rule.id, trigger, String::new(), event.time);
    let body = EventBody {
        id: &d.id,
        event: trigger.as_str(),
        time: rfc3339(event.time),
        node: &event.node,
        username: &event.username,
        protocol: &event.protocol,
        remote_addr: &event.remote_addr,
        path: event.path.as_deref(),
        target_path: event.target_path.as_deref(),
        size: event.bytes,
        sha256: event.sha256.as_deref(),
        message: event.message.as_deref(),
        rule: None,
    };
    d.body = serde_json::to_string(&body).unwrap_or_default();
    d
}

/// The delivery of one run of a schedule rule.
pub fn schedule_delivery(rule: &EventRule, node: &str, now: DateTime<Utc>) -> Delivery {
    let mut d = Delivery::new(rule.id, Trigger::Schedule, String::new(), now);
    let body = EventBody {
        id: &d.id,
        event: Trigger::Schedule.as_str(),
        time: rfc3339(now),
        node,
        username: "",
        protocol: "",
        remote_addr: "",
        path: match &rule.action {
            RuleAction::Retention { path, .. } => Some(path),
            _ => None,
        },
        target_path: None,
        size: None,
        sha256: None,
        message: None,
        rule: Some(&rule.name),
    };
    d.body = serde_json::to_string(&body).unwrap_or_default();
    d
}

impl Rules {
    /// The rules as last loaded.
    pub fn snapshot(&self) -> Arc<Vec<CompiledRule>> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Reloads every rule from the store. A rule whose globs no longer
    /// compile (stored by a newer version) is skipped with a warning.
    pub async fn reload(&self, store: &Store) -> StoreResult<()> {
        let rules = store.list_rules().await?;
        let compiled: Vec<CompiledRule> = rules
            .into_iter()
            .filter_map(|r| {
                let name = r.name.clone();
                CompiledRule::new(r)
                    .map_err(|e| tracing::warn!(rule = %name, error = %e, "event rule skipped"))
                    .ok()
            })
            .collect();
        let next = Arc::new(compiled);
        match self.current.write() {
            Ok(mut g) => *g = next,
            Err(poisoned) => *poisoned.into_inner() = next,
        }
        Ok(())
    }

    /// The deliveries `events` cause under the current rules.
    pub fn deliveries_for<'a>(&self, events: impl IntoIterator<Item = &'a Event>) -> Vec<Delivery> {
        let rules = self.snapshot();
        if rules.is_empty() {
            return Vec::new();
        }
        let mut out = Vec::new();
        for e in events {
            let Some(trigger) = trigger_of(e) else {
                continue;
            };
            for r in rules.iter().filter(|r| r.matches(trigger, e)) {
                out.push(delivery_for(&r.rule, trigger, e));
            }
        }
        out
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use dropgate_store::RuleFilter;

    fn rule(trigger: Trigger, globs: &[&str]) -> CompiledRule {
        CompiledRule::new(EventRule {
            id: 1,
            name: "r".into(),
            enabled: true,
            trigger,
            every_secs: 0,
            filter: RuleFilter {
                path_globs: globs.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            },
            action: RuleAction::Move { to: "/x".into() },
            created_at: Utc::now(),
            updated_at: Utc::now(),
        })
        .expect("valid rule")
    }

    /// A completed upload of `path` by alice (also for other modules' tests).
    pub(crate) fn upload(path: &str) -> Event {
        Event {
            id: 0,
            time: Utc::now(),
            kind: EventKind::Upload,
            username: "alice".into(),
            protocol: "sftp".into(),
            remote_addr: "127.0.0.1:5".into(),
            path: Some(path.into()),
            target_path: None,
            bytes: Some(3),
            duration_ms: None,
            outcome: Outcome::Ok,
            sha256: Some("ab".into()),
            message: None,
            node: "n".into(),
            session_id: None,
        }
    }

    #[test]
    fn globs_stay_in_folders_unless_double_star() {
        let r = rule(Trigger::Upload, &["/inbox/*.csv"]);
        assert!(r.matches(Trigger::Upload, &upload("/inbox/a.csv")));
        assert!(!r.matches(Trigger::Upload, &upload("/inbox/sub/a.csv")));
        assert!(!r.matches(Trigger::Upload, &upload("/outbox/a.csv")));
        let r = rule(Trigger::Upload, &["/inbox/**"]);
        assert!(r.matches(Trigger::Upload, &upload("/inbox/sub/a.csv")));
        assert!(!r.matches(Trigger::Download, &upload("/inbox/a.csv")));
        assert!(compile_glob("inbox/*").is_err());
        assert!(CompiledRule::new(rule(Trigger::Upload, &[]).rule).is_ok());
    }

    #[test]
    fn failed_or_action_events_trigger_nothing() {
        let mut e = upload("/a");
        assert_eq!(trigger_of(&e), Some(Trigger::Upload));
        e.outcome = Outcome::Failed;
        assert_eq!(trigger_of(&e), None);
        e.outcome = Outcome::Ok;
        e.protocol = ACTIONS_PROTOCOL.into();
        assert_eq!(trigger_of(&e), None);
        e.protocol = "ftp".into();
        e.kind = EventKind::Login;
        e.outcome = Outcome::Denied;
        assert_eq!(trigger_of(&e), Some(Trigger::LoginFailed));
    }

    #[test]
    fn body_carries_the_delivery_id() {
        let r = rule(Trigger::Upload, &[]);
        let d = delivery_for(&r.rule, Trigger::Upload, &upload("/a.txt"));
        let v: serde_json::Value = serde_json::from_str(&d.body).expect("json");
        assert_eq!(v["id"], d.id.as_str());
        assert_eq!(v["event"], "upload");
        assert_eq!(v["sha256"], "ab");
        assert_eq!(v["size"], 3);
        assert!(v.get("target_path").is_none());
    }
}

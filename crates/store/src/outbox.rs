//! Event rules (SPEC 8) and their deliveries: the outbox.
//!
//! A delivery is written in the same transaction as the audit event whose
//! rule it matched ([`Store::insert_events_with_deliveries`]), so nothing the
//! gateway acknowledged can have its action forgotten by a crash. Dispatchers
//! claim due deliveries with a lease ([`Store::claim_deliveries`]); on
//! PostgreSQL with `FOR UPDATE SKIP LOCKED`, so with several nodes each
//! delivery runs on one of them.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{
    Db, EventKind, FieldError, KeyedEvent, Outcome, Protocol, Store, StoreError, StoreResult,
    from_ms, on_pool, to_i64, to_ms, to_u64,
};

/// What makes a rule run (SPEC 8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// A file was uploaded (completed).
    Upload,
    /// A file was downloaded (completed).
    Download,
    /// A file was deleted.
    Delete,
    /// A file or folder was renamed.
    Rename,
    /// A folder was created.
    Mkdir,
    /// A folder was removed.
    Rmdir,
    /// A login failed.
    LoginFailed,
    /// An operation was refused by the account's quota.
    QuotaExceeded,
    /// An account was created, changed or deleted.
    AccountChanged,
    /// Every `every_secs` seconds.
    Schedule,
}

impl Trigger {
    /// Every trigger, in the order of SPEC 8.
    pub const ALL: [Trigger; 10] = [
        Trigger::Upload,
        Trigger::Download,
        Trigger::Delete,
        Trigger::Rename,
        Trigger::Mkdir,
        Trigger::Rmdir,
        Trigger::LoginFailed,
        Trigger::QuotaExceeded,
        Trigger::AccountChanged,
        Trigger::Schedule,
    ];

    /// snake_case name (the `X-Dropgate-Event` header).
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Upload => "upload",
            Trigger::Download => "download",
            Trigger::Delete => "delete",
            Trigger::Rename => "rename",
            Trigger::Mkdir => "mkdir",
            Trigger::Rmdir => "rmdir",
            Trigger::LoginFailed => "login_failed",
            Trigger::QuotaExceeded => "quota_exceeded",
            Trigger::AccountChanged => "account_changed",
            Trigger::Schedule => "schedule",
        }
    }

    /// Parses the snake_case name.
    pub fn parse(s: &str) -> Option<Trigger> {
        Trigger::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// Which events a rule takes; an empty list matches anything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuleFilter {
    /// Accounts.
    pub usernames: Vec<String>,
    /// Globs on the event's path (`*` within a folder, `**` across folders).
    pub path_globs: Vec<String>,
    /// `ftp`, `ftps`, `sftp`.
    pub protocols: Vec<String>,
}

/// What a rule does (SPEC 8). The webhook secret is stored but never shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RuleAction {
    /// A signed `POST` of the event.
    Webhook {
        /// `http://` or `https://` target.
        url: String,
        /// HMAC-SHA256 key for `X-Dropgate-Signature`.
        #[serde(default)]
        secret: String,
        /// Per attempt.
        #[serde(default = "default_timeout")]
        timeout_secs: u64,
    },
    /// A program run with the event in `DROPGATE_EVENT_*` variables.
    Command {
        /// Program (absolute path) and arguments; never a shell string.
        argv: Vec<String>,
        /// Killed after this long.
        #[serde(default = "default_timeout")]
        timeout_secs: u64,
    },
    /// Moves the event's file inside the account's home.
    Move {
        /// Target path with placeholders.
        to: String,
    },
    /// Copies the event's file inside the account's home.
    Copy {
        /// Target path with placeholders.
        to: String,
    },
    /// Deletes files older than `older_than_days` below `path` (schedule rules).
    Retention {
        /// Folder in each matching account's home.
        path: String,
        /// Age in days (by modification time).
        older_than_days: u64,
    },
}

fn default_timeout() -> u64 {
    10
}

impl RuleAction {
    /// The `type` name.
    pub fn kind(&self) -> &'static str {
        match self {
            RuleAction::Webhook { .. } => "webhook",
            RuleAction::Command { .. } => "command",
            RuleAction::Move { .. } => "move",
            RuleAction::Copy { .. } => "copy",
            RuleAction::Retention { .. } => "retention",
        }
    }

    /// How long one attempt may take at most (bounds a delivery's lease).
    pub fn timeout(&self) -> Duration {
        match self {
            RuleAction::Webhook { timeout_secs, .. } | RuleAction::Command { timeout_secs, .. } => {
                Duration::from_secs(*timeout_secs)
            }
            RuleAction::Move { .. } | RuleAction::Copy { .. } => Duration::from_secs(3600),
            RuleAction::Retention { .. } => Duration::from_secs(6 * 3600),
        }
    }
}

/// An event rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRule {
    /// Assigned by the store.
    pub id: i64,
    /// Unique.
    pub name: String,
    /// Disabled rules match nothing and run nothing.
    pub enabled: bool,
    /// What makes it run.
    pub trigger: Trigger,
    /// Schedule rules: the period.
    pub every_secs: u64,
    /// Which events.
    pub filter: RuleFilter,
    /// What it does.
    pub action: RuleAction,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it was last changed.
    pub updated_at: DateTime<Utc>,
}

impl EventRule {
    /// Checks what the store itself depends on (the rest is the caller's).
    pub fn validate(&self) -> Result<(), FieldError> {
        if self.name.trim().is_empty() || self.name.len() > 128 {
            return Err(FieldError::new("name", "1 to 128 bytes, not blank"));
        }
        Ok(())
    }
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Waiting for its (next) attempt.
    Pending,
    /// An attempt succeeded.
    Succeeded,
    /// Gave up (24 hours of failures, or a failure retrying cannot help).
    Failed,
}

impl DeliveryStatus {
    /// snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Succeeded => "succeeded",
            DeliveryStatus::Failed => "failed",
        }
    }

    /// Parses the snake_case name.
    pub fn parse(s: &str) -> Option<DeliveryStatus> {
        match s {
            "pending" => Some(DeliveryStatus::Pending),
            "succeeded" => Some(DeliveryStatus::Succeeded),
            "failed" => Some(DeliveryStatus::Failed),
            _ => None,
        }
    }
}

/// One run (with its retries) of one rule for one event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// Random; the webhook's `X-Dropgate-Delivery` and the body's `id`.
    pub id: String,
    /// The rule it runs.
    pub rule_id: i64,
    /// The rule's trigger when it matched.
    pub trigger: Trigger,
    /// The event as the webhook body (JSON text, SPEC 8).
    pub body: String,
    /// Where it stands.
    pub status: DeliveryStatus,
    /// Attempts made.
    pub attempts: u32,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// A command's captured output, or what a file action did.
    pub output: Option<String>,
    /// When the next attempt is due.
    pub next_attempt_at: DateTime<Utc>,
    /// When the event happened.
    pub created_at: DateTime<Utc>,
    /// When it succeeded or was given up.
    pub finished_at: Option<DateTime<Utc>>,
}

impl Delivery {
    /// A new pending delivery with a fresh random id, due now.
    pub fn new(rule_id: i64, trigger: Trigger, body: String, now: DateTime<Utc>) -> Delivery {
        Delivery {
            id: new_delivery_id(),
            rule_id,
            trigger,
            body,
            status: DeliveryStatus::Pending,
            attempts: 0,
            last_error: None,
            output: None,
            next_attempt_at: now,
            created_at: now,
            finished_at: None,
        }
    }
}

/// 128 random bits, hex.
pub fn new_delivery_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// The result of one attempt.
#[derive(Debug, Clone)]
pub struct AttemptResult {
    /// `Pending` (retry at `next_attempt_at`), `Succeeded` or `Failed`.
    pub status: DeliveryStatus,
    /// Why it failed.
    pub error: Option<String>,
    /// Captured output.
    pub output: Option<String>,
    /// When to retry (pending only).
    pub next_attempt_at: DateTime<Utc>,
}

/// Filters for listing deliveries, newest first.
#[derive(Debug, Clone, Default)]
pub struct DeliveryQuery {
    /// Only this rule's.
    pub rule_id: Option<i64>,
    /// Only this status.
    pub status: Option<DeliveryStatus>,
    /// Page size.
    pub limit: u32,
}

#[derive(sqlx::FromRow)]
struct RuleRow {
    id: i64,
    name: String,
    enabled: bool,
    trigger_kind: String,
    every_secs: i64,
    filter: String,
    action: String,
    created_at: i64,
    updated_at: i64,
}

impl RuleRow {
    fn into_rule(self) -> StoreResult<EventRule> {
        Ok(EventRule {
            id: self.id,
            name: self.name,
            enabled: self.enabled,
            trigger: Trigger::parse(&self.trigger_kind)
                .ok_or(StoreError::Corrupt("event_rules.trigger_kind"))?,
            every_secs: to_u64(self.every_secs),
            filter: serde_json::from_str(&self.filter)
                .map_err(|_| StoreError::Corrupt("event_rules.filter"))?,
            action: serde_json::from_str(&self.action)
                .map_err(|_| StoreError::Corrupt("event_rules.action"))?,
            created_at: from_ms(self.created_at),
            updated_at: from_ms(self.updated_at),
        })
    }
}

#[derive(sqlx::FromRow)]
struct DeliveryRow {
    id: String,
    rule_id: i64,
    trigger_kind: String,
    body: String,
    status: String,
    attempts: i64,
    last_error: Option<String>,
    output: Option<String>,
    next_attempt_at: i64,
    created_at: i64,
    finished_at: Option<i64>,
}

impl DeliveryRow {
    fn into_delivery(self) -> StoreResult<Delivery> {
        Ok(Delivery {
            id: self.id,
            rule_id: self.rule_id,
            trigger: Trigger::parse(&self.trigger_kind)
                .ok_or(StoreError::Corrupt("event_deliveries.trigger_kind"))?,
            body: self.body,
            status: DeliveryStatus::parse(&self.status)
                .ok_or(StoreError::Corrupt("event_deliveries.status"))?,
            attempts: u32::try_from(self.attempts).unwrap_or(u32::MAX),
            last_error: self.last_error,
            output: self.output,
            next_attempt_at: from_ms(self.next_attempt_at),
            created_at: from_ms(self.created_at),
            finished_at: self.finished_at.map(from_ms),
        })
    }
}

fn rules_from(rows: Vec<RuleRow>) -> StoreResult<Vec<EventRule>> {
    rows.into_iter().map(RuleRow::into_rule).collect()
}

fn deliveries_from(rows: Vec<DeliveryRow>) -> StoreResult<Vec<Delivery>> {
    rows.into_iter().map(DeliveryRow::into_delivery).collect()
}

fn to_json<T: Serialize>(v: &T, what: &'static str) -> StoreResult<String> {
    serde_json::to_string(v).map_err(|_| StoreError::Corrupt(what))
}

const EVENT_COLUMNS: &str = "INSERT INTO events (ts, kind, username, protocol, remote_addr, path, target_path, bytes, \
    duration_ms, outcome, sha256, message, node, session_id, event_key) ";
/// Most events one statement inserts: 15 bindings a row stays well below
/// SQLite's 32,766 (the bundled SQLite's; a system SQLite before 3.32 would
/// allow 999, so the `sqlite` feature must stay bundled) and PostgreSQL's
/// 65,535 parameters (and the writer's batches are no larger).
const EVENTS_PER_STATEMENT: usize = 256;
const INSERT_DELIVERY: &str = "INSERT INTO event_deliveries (id, rule_id, trigger_kind, body, status, attempts, \
    last_error, output, next_attempt_at, created_at, finished_at) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT (id) DO NOTHING";

/// Inserts `$events` (at most [`EVENTS_PER_STATEMENT`]) with one statement
/// on `$conn`, of database `$db`, each kept once per key. One statement
/// instead of one per event: every statement is a round trip to SQLite's
/// connection thread (two thread wake-ups), which at a few hundred small
/// uploads a second cost more CPU than the inserts themselves.
///
/// The rows are padded to a power of two, so that batches use at most nine
/// texts and each stays prepared: preparing the text anew for every batch
/// took a third of SQLite's work per event (docs/benchmarks.md, session 27).
/// A padding row is all `NULL` and the statement's `WHERE` drops it before
/// it reaches the table: it costs fifteen `NULL` bindings, where a copy of
/// a real event (as before session 33) cost its text copied into SQLite
/// and a probe of the key's index (30-40% of the rows bound were padding in
/// that session's profile).
macro_rules! insert_events {
    ($db:ty, $conn:expr, $events:expr) => {{
        let events: &[KeyedEvent] = $events;
        debug_assert!(!events.is_empty() && events.len() <= EVENTS_PER_STATEMENT);
        let rows = events.len().next_power_of_two();
        let question_marks = <$db as Placeholders>::QUESTION_MARKS;
        let kept = kept_events_sql(rows, question_marks);
        let mut q = match kept {
            Some(sql) => sqlx::query::<$db>(sql),
            // Not reached (the callers send at most `EVENTS_PER_STATEMENT`):
            // a text of its own rather than a kept one with fewer rows.
            None => sqlx::query::<$db>(sqlx::AssertSqlSafe(events_text(rows, question_marks))),
        };
        let padding = std::iter::repeat_with(EventRow::default).take(rows - events.len());
        for r in events.iter().map(EventRow::of).chain(padding) {
            q = q
                .bind(r.ts)
                .bind(r.kind)
                .bind(r.username)
                .bind(r.protocol)
                .bind(r.remote_addr)
                .bind(r.path)
                .bind(r.target_path)
                .bind(r.bytes)
                .bind(r.duration_ms)
                .bind(r.outcome)
                .bind(r.sha256)
                .bind(r.message)
                .bind(r.node)
                .bind(r.session_id)
                .bind(r.key);
        }
        q.persistent(kept.is_some()).execute($conn).await?;
    }};
}

/// An event's values as its `INSERT` binds them, text as `Arc<str>`: sqlx's
/// SQLite driver copies a bound `&str` or `&String` into a new `String`
/// inside a new `Arc` (two allocations a value, a third of all the
/// allocations of a small upload, docs/benchmarks.md session 33), where an
/// `Arc<str>` is moved in as it is (one). PostgreSQL's copies any text into
/// its buffer, so there the `Arc` is one allocation more than a `&str`: next
/// to a round trip to the server, nothing.
///
/// Every value is an `Option` so that a padding row is `EventRow::default()`:
/// all `NULL`, typed as the real rows (PostgreSQL declares each parameter's
/// type, and a kept statement's types must not change between executions).
#[derive(Default)]
struct EventRow {
    ts: Option<i64>,
    kind: Option<Arc<str>>,
    username: Option<Arc<str>>,
    protocol: Option<Arc<str>>,
    remote_addr: Option<Arc<str>>,
    path: Option<Arc<str>>,
    target_path: Option<Arc<str>>,
    bytes: Option<i64>,
    duration_ms: Option<i64>,
    outcome: Option<Arc<str>>,
    sha256: Option<Arc<str>>,
    message: Option<Arc<str>>,
    node: Option<Arc<str>>,
    session_id: Option<Arc<str>>,
    key: Option<Arc<str>>,
}

impl EventRow {
    fn of(k: &KeyedEvent) -> EventRow {
        let e = &k.event;
        let shared = SharedTexts::get();
        let some = |s: &str| Some(Arc::from(s));
        let text = |s: &Option<String>| s.as_deref().map(Arc::from);
        EventRow {
            ts: Some(to_ms(e.time)),
            kind: Some(shared.kind(e.kind)),
            username: some(&e.username),
            protocol: Some(shared.protocol(&e.protocol)),
            remote_addr: some(&e.remote_addr),
            path: text(&e.path),
            target_path: text(&e.target_path),
            bytes: e.bytes.map(to_i64),
            duration_ms: e.duration_ms.map(to_i64),
            outcome: Some(shared.outcome(e.outcome)),
            sha256: text(&e.sha256),
            message: text(&e.message),
            node: Some(shared.node(&e.node)),
            session_id: text(&e.session_id),
            key: text(&k.key),
        }
    }
}

/// The texts that most events repeat (kind, outcome, protocol, this node's
/// name), made once: binding one of them costs a reference count where a new
/// `Arc<str>` costs an allocation and its free, four of each per event.
struct SharedTexts {
    kinds: Vec<Arc<str>>,
    outcomes: Vec<Arc<str>>,
    protocols: Vec<Arc<str>>,
    /// The first node name seen: a process writes its own node's events
    /// (a spool taken over from another node's run keeps that node's name).
    node: std::sync::OnceLock<Arc<str>>,
}

impl SharedTexts {
    fn get() -> &'static SharedTexts {
        static TEXTS: std::sync::LazyLock<SharedTexts> = std::sync::LazyLock::new(|| SharedTexts {
            kinds: EventKind::ALL.map(|k| Arc::from(k.as_str())).to_vec(),
            outcomes: Outcome::ALL.map(|o| Arc::from(o.as_str())).to_vec(),
            protocols: Protocol::ALL.map(|p| Arc::from(p.as_str())).to_vec(),
            node: std::sync::OnceLock::new(),
        });
        &TEXTS
    }

    fn kind(&self, kind: EventKind) -> Arc<str> {
        self.kinds
            .get(kind as usize)
            .cloned()
            .unwrap_or_else(|| Arc::from(kind.as_str()))
    }

    fn outcome(&self, outcome: Outcome) -> Arc<str> {
        self.outcomes
            .get(outcome as usize)
            .cloned()
            .unwrap_or_else(|| Arc::from(outcome.as_str()))
    }

    fn protocol(&self, protocol: &str) -> Arc<str> {
        self.protocols
            .iter()
            .find(|p| ***p == *protocol)
            .cloned()
            .unwrap_or_else(|| Arc::from(protocol))
    }

    fn node(&self, node: &str) -> Arc<str> {
        let first = self.node.get_or_init(|| Arc::from(node));
        if **first == *node {
            first.clone()
        } else {
            Arc::from(node)
        }
    }
}

/// A batch of events and the deliveries they caused, on `$conn` (a pool or
/// a connection: anything with `begin()` that executes): one statement when
/// there are no deliveries and it fits in one (atomic by itself, where a
/// transaction costs two more round trips to SQLite's connection thread,
/// about 0.1 ms of every small upload's reply when one waits for it); else
/// one transaction.
macro_rules! insert_batch {
    ($db:ty, $conn:expr, $events:expr, $deliveries:expr) => {{
        let events: &[KeyedEvent] = $events;
        let deliveries: &[Delivery] = $deliveries;
        match (events, deliveries) {
            ([], []) => {}
            (_, []) if events.len() <= EVENTS_PER_STATEMENT => {
                insert_events!($db, $conn, events)
            }
            _ => {
                let mut tx = $conn.begin().await?;
                for chunk in events.chunks(EVENTS_PER_STATEMENT) {
                    insert_events!($db, &mut *tx, chunk);
                }
                for d in deliveries {
                    insert_delivery!(&mut *tx, d);
                }
                tx.commit().await?;
            }
        }
    }};
}

/// How a dialect writes the parameters of the long `VALUES` list.
trait Placeholders {
    /// `?` (by position) rather than `$n`. SQLite takes both, but sqlx binds
    /// a `$n` by looking its name up, and SQLite's lookup walks the whole
    /// list: quadratic in a statement of 3,840 parameters (measured: more
    /// work than preparing the text).
    const QUESTION_MARKS: bool;
}

impl Placeholders for sqlx::Sqlite {
    const QUESTION_MARKS: bool = true;
}

impl Placeholders for sqlx::Postgres {
    const QUESTION_MARKS: bool = false;
}

/// The kept text that inserts `rows` events, for a power of two up to
/// [`EVENTS_PER_STATEMENT`]; built once per dialect.
fn kept_events_sql(rows: usize, question_marks: bool) -> Option<&'static str> {
    static QUESTION: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    static NUMBERED: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    if !rows.is_power_of_two() || rows > EVENTS_PER_STATEMENT {
        return None;
    }
    let texts = if question_marks { &QUESTION } else { &NUMBERED };
    let texts = texts.get_or_init(|| {
        (0..=EVENTS_PER_STATEMENT.trailing_zeros())
            .map(|p| events_text(1 << p, question_marks))
            .collect()
    });
    texts
        .get(rows.trailing_zeros() as usize)
        .map(String::as_str)
}

/// `INSERT ... SELECT` from a `VALUES` list of `rows` rows, the all-`NULL`
/// ones (padding) left out by the `WHERE`, which an upsert from a `SELECT`
/// needs anyway (SQLite's parser: "INSERT ... SELECT ... ON CONFLICT" is
/// ambiguous without one).
fn events_text(rows: usize, question_marks: bool) -> String {
    const COLUMNS: usize = 15;
    let mut sql = String::from(EVENT_COLUMNS);
    sql.push_str("SELECT * FROM (VALUES ");
    for r in 0..rows {
        if r > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for c in 0..COLUMNS {
            if c > 0 {
                sql.push_str(", ");
            }
            if question_marks {
                sql.push('?');
            } else {
                sql.push('$');
                sql.push_str(&(r * COLUMNS + c + 1).to_string());
            }
        }
        sql.push(')');
    }
    sql.push_str(") AS v WHERE column1 IS NOT NULL ON CONFLICT (event_key) DO NOTHING");
    sql
}

/// Inserts one delivery on `$conn` (either dialect: the query type differs,
/// the text and the bindings do not).
macro_rules! insert_delivery {
    ($conn:expr, $d:expr) => {{
        let d: &Delivery = $d;
        sqlx::query(INSERT_DELIVERY)
            .bind(&d.id)
            .bind(d.rule_id)
            .bind(d.trigger.as_str())
            .bind(&d.body)
            .bind(d.status.as_str())
            .bind(i64::from(d.attempts))
            .bind(&d.last_error)
            .bind(&d.output)
            .bind(to_ms(d.next_attempt_at))
            .bind(to_ms(d.created_at))
            .bind(d.finished_at.map(to_ms))
            .execute($conn)
            .await?;
    }};
}

impl Store {
    // ---------------------------------------------------------------- rules

    /// Creates a rule (its `id` and times are assigned here).
    pub async fn create_rule(&self, rule: &EventRule) -> StoreResult<EventRule> {
        rule.validate()?;
        let now = Utc::now();
        const Q: &str = "INSERT INTO event_rules (name, enabled, trigger_kind, every_secs, filter, action, created_at, updated_at) \
            VALUES ($1, $2, $3, $4, $5, $6, $7, $7) RETURNING id";
        let filter = to_json(&rule.filter, "event_rules.filter")?;
        let action = to_json(&rule.action, "event_rules.action")?;
        let id: (i64,) = on_pool!(self, p => {
            sqlx::query_as(Q)
                .bind(&rule.name)
                .bind(rule.enabled)
                .bind(rule.trigger.as_str())
                .bind(to_i64(rule.every_secs))
                .bind(&filter)
                .bind(&action)
                .bind(to_ms(now))
                .fetch_one(p)
                .await
                .map_err(|e| dup_name(e, &rule.name))?
        });
        Ok(EventRule {
            id: id.0,
            created_at: from_ms(to_ms(now)),
            updated_at: from_ms(to_ms(now)),
            ..rule.clone()
        })
    }

    /// Every rule, by id.
    pub async fn list_rules(&self) -> StoreResult<Vec<EventRule>> {
        const Q: &str = "SELECT id, name, enabled, trigger_kind, every_secs, filter, action, created_at, updated_at \
            FROM event_rules ORDER BY id";
        let rows: Vec<RuleRow> = on_pool!(self, p => sqlx::query_as(Q).fetch_all(p).await?);
        rules_from(rows)
    }

    /// One rule.
    pub async fn get_rule(&self, id: i64) -> StoreResult<Option<EventRule>> {
        const Q: &str = "SELECT id, name, enabled, trigger_kind, every_secs, filter, action, created_at, updated_at \
            FROM event_rules WHERE id = $1";
        let row: Option<RuleRow> =
            on_pool!(self, p => sqlx::query_as(Q).bind(id).fetch_optional(p).await?);
        row.map(RuleRow::into_rule).transpose()
    }

    /// Replaces a rule's definition (not its id or creation time).
    pub async fn update_rule(&self, rule: &EventRule) -> StoreResult<EventRule> {
        rule.validate()?;
        let now = Utc::now();
        const Q: &str = "UPDATE event_rules SET name = $2, enabled = $3, trigger_kind = $4, every_secs = $5, \
            filter = $6, action = $7, updated_at = $8 WHERE id = $1";
        let filter = to_json(&rule.filter, "event_rules.filter")?;
        let action = to_json(&rule.action, "event_rules.action")?;
        let n = on_pool!(self, p => {
            sqlx::query(Q)
                .bind(rule.id)
                .bind(&rule.name)
                .bind(rule.enabled)
                .bind(rule.trigger.as_str())
                .bind(to_i64(rule.every_secs))
                .bind(&filter)
                .bind(&action)
                .bind(to_ms(now))
                .execute(p)
                .await
                .map_err(|e| dup_name(e, &rule.name))?
                .rows_affected()
        });
        if n == 0 {
            return Err(StoreError::NotFound(format!("event rule {}", rule.id)));
        }
        Ok(EventRule {
            updated_at: from_ms(to_ms(now)),
            ..rule.clone()
        })
    }

    /// Deletes a rule; its pending deliveries fail when their turn comes.
    pub async fn delete_rule(&self, id: i64) -> StoreResult<bool> {
        let n = on_pool!(self, p => {
            sqlx::query("DELETE FROM event_rules WHERE id = $1")
                .bind(id)
                .execute(p)
                .await?
                .rows_affected()
        });
        Ok(n > 0)
    }

    // ------------------------------------------------------------ the outbox

    /// Appends audit events and the deliveries they matched, in one
    /// transaction. Storing them again (the same event keys and delivery
    /// ids: a write that landed after its caller gave up on it, or a replay
    /// of the on-disk spool) leaves what is stored as it is.
    pub async fn insert_events_with_deliveries(
        &self,
        events: &[KeyedEvent],
        deliveries: &[Delivery],
    ) -> StoreResult<()> {
        on_pool!(self, p, D => insert_batch!(D, p, events, deliveries));
        Ok(())
    }

    /// A connection of its own for a caller that stores events one at a
    /// time (see [`EventConnection`]). With `synced`, its commits reach the
    /// disk as the store's do ([`Store::connect_synced`]); without, they may
    /// be lost to a power cut (never to a crash of this process), for events
    /// of operations that are not flushed to disk themselves: SQLite's
    /// `synchronous = NORMAL`, PostgreSQL's `synchronous_commit = off`.
    pub async fn event_connection(&self, synced: bool) -> StoreResult<EventConnection> {
        let mut conn = match &self.db {
            crate::Db::Sqlite(p) => EventConn::Sqlite(p.acquire().await?.detach()),
            crate::Db::Postgres(p) => EventConn::Postgres(p.acquire().await?.detach()),
        };
        if !synced {
            match &mut conn {
                EventConn::Sqlite(c) => {
                    sqlx::query("PRAGMA synchronous = NORMAL")
                        .execute(&mut *c)
                        .await?;
                }
                EventConn::Postgres(c) => {
                    sqlx::query("SET synchronous_commit = off")
                        .execute(&mut *c)
                        .await?;
                }
            }
        }
        Ok(EventConnection(conn))
    }

    /// Claims up to `limit` due deliveries for `node` until `now + lease`:
    /// no other dispatcher takes them before the lease ends.
    pub async fn claim_deliveries(
        &self,
        node: &str,
        now: DateTime<Utc>,
        lease: Duration,
        limit: u32,
    ) -> StoreResult<Vec<Delivery>> {
        let until = now + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::hours(1));
        const SQLITE: &str = "UPDATE event_deliveries SET lease_node = $1, lease_until = $2 WHERE id IN \
            (SELECT id FROM event_deliveries WHERE status = 'pending' AND next_attempt_at <= $3 \
            AND (lease_until IS NULL OR lease_until < $3) ORDER BY next_attempt_at LIMIT $4) \
            RETURNING id, rule_id, trigger_kind, body, status, attempts, last_error, output, next_attempt_at, created_at, finished_at";
        // Rows another node is claiming right now are skipped, not waited for.
        const POSTGRES: &str = "UPDATE event_deliveries SET lease_node = $1, lease_until = $2 WHERE id IN \
            (SELECT id FROM event_deliveries WHERE status = 'pending' AND next_attempt_at <= $3 \
            AND (lease_until IS NULL OR lease_until < $3) ORDER BY next_attempt_at LIMIT $4 FOR UPDATE SKIP LOCKED) \
            RETURNING id, rule_id, trigger_kind, body, status, attempts, last_error, output, next_attempt_at, created_at, finished_at";
        let rows: Vec<DeliveryRow> = match &self.db {
            Db::Sqlite(p) => {
                sqlx::query_as(SQLITE)
                    .bind(node)
                    .bind(to_ms(until))
                    .bind(to_ms(now))
                    .bind(i64::from(limit))
                    .fetch_all(p)
                    .await?
            }
            Db::Postgres(p) => {
                sqlx::query_as(POSTGRES)
                    .bind(node)
                    .bind(to_ms(until))
                    .bind(to_ms(now))
                    .bind(i64::from(limit))
                    .fetch_all(p)
                    .await?
            }
        };
        deliveries_from(rows)
    }

    /// Records an attempt of a delivery `node` holds; false if its lease
    /// was lost (another node may have taken it).
    pub async fn finish_attempt(
        &self,
        id: &str,
        node: &str,
        result: &AttemptResult,
    ) -> StoreResult<bool> {
        const Q: &str = "UPDATE event_deliveries SET status = $3, attempts = attempts + 1, last_error = $4, \
            output = $5, next_attempt_at = $6, finished_at = $7, lease_node = NULL, lease_until = NULL \
            WHERE id = $1 AND lease_node = $2";
        let finished = (result.status != DeliveryStatus::Pending).then(|| to_ms(Utc::now()));
        let n = on_pool!(self, p => {
            sqlx::query(Q)
                .bind(id)
                .bind(node)
                .bind(result.status.as_str())
                .bind(&result.error)
                .bind(&result.output)
                .bind(to_ms(result.next_attempt_at))
                .bind(finished)
                .execute(p)
                .await?
                .rows_affected()
        });
        Ok(n > 0)
    }

    /// Extends the lease `node` holds on a running delivery to `until`;
    /// false if it no longer holds it.
    pub async fn renew_lease(
        &self,
        id: &str,
        node: &str,
        until: DateTime<Utc>,
    ) -> StoreResult<bool> {
        const Q: &str = "UPDATE event_deliveries SET lease_until = $3 \
            WHERE id = $1 AND lease_node = $2 AND status = 'pending'";
        let n = on_pool!(self, p => {
            sqlx::query(Q)
                .bind(id)
                .bind(node)
                .bind(to_ms(until))
                .execute(p)
                .await?
                .rows_affected()
        });
        Ok(n > 0)
    }

    /// Frees the leases `node` held before it restarted: its deliveries
    /// resume at once instead of when the leases would have ended.
    pub async fn release_leases(&self, node: &str) -> StoreResult<u64> {
        const Q: &str = "UPDATE event_deliveries SET lease_node = NULL, lease_until = NULL \
            WHERE lease_node = $1 AND status = 'pending'";
        let n = on_pool!(self, p => {
            sqlx::query(Q).bind(node).execute(p).await?.rows_affected()
        });
        Ok(n)
    }

    /// Deliveries, newest first.
    pub async fn list_deliveries(&self, q: &DeliveryQuery) -> StoreResult<Vec<Delivery>> {
        const Q: &str = "SELECT id, rule_id, trigger_kind, body, status, attempts, last_error, output, \
            next_attempt_at, created_at, finished_at FROM event_deliveries \
            WHERE ($1 IS NULL OR rule_id = $1) AND ($2 IS NULL OR status = $2) \
            ORDER BY created_at DESC, id DESC LIMIT $3";
        let limit = i64::from(q.limit.clamp(1, 1000));
        let rows: Vec<DeliveryRow> = on_pool!(self, p => {
            sqlx::query_as(Q)
                .bind(q.rule_id)
                .bind(q.status.map(DeliveryStatus::as_str))
                .bind(limit)
                .fetch_all(p)
                .await?
        });
        deliveries_from(rows)
    }

    /// Removes finished deliveries older than `before`; returns how many.
    pub async fn prune_deliveries(&self, before: DateTime<Utc>) -> StoreResult<u64> {
        const Q: &str =
            "DELETE FROM event_deliveries WHERE status <> 'pending' AND created_at < $1";
        let n = on_pool!(self, p => {
            sqlx::query(Q).bind(to_ms(before)).execute(p).await?.rows_affected()
        });
        Ok(n)
    }

    /// Claims one run of a schedule rule: stores `delivery` if the rule last
    /// fired at `previous` (what the caller saw), so with several nodes only
    /// one of them wins each run. Returns whether this call won.
    pub async fn fire_schedule(
        &self,
        rule_id: i64,
        previous: Option<DateTime<Utc>>,
        delivery: &Delivery,
    ) -> StoreResult<bool> {
        const Q: &str = "UPDATE event_rules SET last_fired_at = $2 WHERE id = $1 AND enabled \
            AND (last_fired_at = $3 OR ($3 IS NULL AND last_fired_at IS NULL))";
        let won = on_pool!(self, p => {
            let mut tx = p.begin().await?;
            let n = sqlx::query(Q)
                .bind(rule_id)
                .bind(to_ms(delivery.created_at))
                .bind(previous.map(to_ms))
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if n == 1 {
                insert_delivery!(&mut *tx, delivery);
            }
            tx.commit().await?;
            n == 1
        });
        Ok(won)
    }

    /// When each schedule rule last fired.
    pub async fn schedule_marks(&self) -> StoreResult<Vec<(i64, Option<DateTime<Utc>>)>> {
        const Q: &str = "SELECT id, last_fired_at FROM event_rules WHERE trigger_kind = 'schedule'";
        let rows: Vec<(i64, Option<i64>)> =
            on_pool!(self, p => sqlx::query_as(Q).fetch_all(p).await?);
        Ok(rows
            .into_iter()
            .map(|(id, t)| (id, t.map(from_ms)))
            .collect())
    }
}

fn dup_name(e: sqlx::Error, name: &str) -> StoreError {
    match StoreError::from(e) {
        StoreError::Duplicate(_) => StoreError::Duplicate(format!("event rule {name:?}")),
        other => other,
    }
}

/// One connection taken out of the pool for storing lone audit events.
///
/// A pooled connection is pinged when it is lent and again when it comes
/// back: for SQLite, two more round trips to the connection's worker thread
/// around the one `INSERT` a small upload's reply waits for (about a tenth
/// of a millisecond on the benchmark machine). Kept by one caller, which
/// drops it after an error or an abandoned statement and takes a new one.
pub struct EventConnection(EventConn);

enum EventConn {
    Sqlite(sqlx::SqliteConnection),
    Postgres(sqlx::PgConnection),
}

impl EventConnection {
    /// [`Store::insert_events_with_deliveries`] on this connection: for a
    /// caller that stores batch after batch (the audit writer), whose pages
    /// and prepared statements then stay in this connection's caches. Through
    /// the pool, batches went round the idle connections in turn and each
    /// found its page cache invalidated by the others' writes: the right
    /// edge of the table and its four indexes read back every batch.
    pub async fn insert_events_with_deliveries(
        &mut self,
        events: &[KeyedEvent],
        deliveries: &[Delivery],
    ) -> StoreResult<()> {
        use sqlx::Connection as _;
        match &mut self.0 {
            EventConn::Sqlite(c) => insert_batch!(sqlx::Sqlite, c, events, deliveries),
            EventConn::Postgres(c) => insert_batch!(sqlx::Postgres, c, events, deliveries),
        }
        Ok(())
    }

    /// Stores one event, kept once per key (as
    /// [`Store::insert_events_with_deliveries`] does for a lone event).
    pub async fn insert_event(&mut self, event: &KeyedEvent) -> StoreResult<()> {
        self.insert_events_with_deliveries(std::slice::from_ref(event), &[])
            .await
    }
}

impl std::fmt::Debug for EventConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let dialect = match self.0 {
            EventConn::Sqlite(_) => "sqlite",
            EventConn::Postgres(_) => "postgres",
        };
        f.debug_tuple("EventConnection").field(&dialect).finish()
    }
}

#[cfg(test)]
mod event_connection_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::{Event, EventQuery};

    fn event(path: &str) -> KeyedEvent {
        KeyedEvent::new(Event {
            id: 0,
            time: Utc::now(),
            kind: EventKind::Setstat,
            username: "acme".into(),
            protocol: "ftp".into(),
            remote_addr: "127.0.0.1:1".into(),
            path: Some(path.into()),
            target_path: None,
            bytes: None,
            duration_ms: None,
            outcome: Outcome::Ok,
            sha256: None,
            message: None,
            node: "n".into(),
            session_id: None,
        })
    }

    #[test]
    fn shared_texts_are_the_names_they_stand_for() {
        let texts = SharedTexts::get();
        for (i, k) in EventKind::ALL.iter().enumerate() {
            assert_eq!(*k as usize, i, "EventKind::ALL is in declaration order");
            assert_eq!(&*texts.kind(*k), k.as_str());
        }
        for (i, o) in Outcome::ALL.iter().enumerate() {
            assert_eq!(*o as usize, i, "Outcome::ALL is in declaration order");
            assert_eq!(&*texts.outcome(*o), o.as_str());
        }
        for p in Protocol::ALL {
            assert!(Arc::ptr_eq(
                &texts.protocol(p.as_str()),
                &texts.protocol(p.as_str())
            ));
            assert_eq!(&*texts.protocol(p.as_str()), p.as_str());
        }
        assert_eq!(&*texts.protocol("gopher"), "gopher");
        // The first node name seen (by any test of this binary) is kept;
        // another one is still bound as itself.
        assert_eq!(&*texts.node("node-a"), "node-a");
        assert_eq!(&*texts.node("node-b"), "node-b");
        let kept = texts.node.get().cloned().unwrap();
        assert!(Arc::ptr_eq(&kept, &texts.node(&kept)));
        let row = EventRow::of(&event("/a"));
        assert_eq!(row.kind.as_deref(), Some("setstat"));
        assert_eq!(row.outcome.as_deref(), Some("ok"));
        assert_eq!(row.protocol.as_deref(), Some("ftp"));
        assert_eq!(row.node.as_deref(), Some("n"));
    }

    #[test]
    fn keys_are_unique_and_sort_in_the_order_they_were_made() {
        let keys: Vec<String> = (0..10_000).map(|_| event("/a").key.unwrap()).collect();
        for k in &keys {
            assert_eq!(k.len(), 32, "{k}");
            assert!(
                k.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            );
        }
        // Made within the same milliseconds, still strictly increasing:
        // the right edge of the unique index, and no two alike.
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
    }

    /// How the connection commits: SQLite's `synchronous` (2 FULL, 1
    /// NORMAL) or PostgreSQL's `synchronous_commit`.
    async fn commit_level(conn: &mut EventConnection) -> String {
        match &mut conn.0 {
            EventConn::Sqlite(c) => {
                let (n,): (i64,) = sqlx::query_as("PRAGMA synchronous")
                    .fetch_one(&mut *c)
                    .await
                    .unwrap();
                n.to_string()
            }
            EventConn::Postgres(c) => {
                let (s,): (String,) = sqlx::query_as("SHOW synchronous_commit")
                    .fetch_one(&mut *c)
                    .await
                    .unwrap();
                s
            }
        }
    }

    /// A synced connection commits as the store does; an unsynced one does
    /// not flush, and both store events once per key.
    async fn check(store: &Store, synced_level: &str, unsynced_level: &str) {
        let mut synced = store.event_connection(true).await.unwrap();
        let mut unsynced = store.event_connection(false).await.unwrap();
        assert_eq!(commit_level(&mut synced).await, synced_level);
        assert_eq!(commit_level(&mut unsynced).await, unsynced_level);
        let (a, b) = (event("/a"), event("/b"));
        synced.insert_event(&a).await.unwrap();
        unsynced.insert_event(&b).await.unwrap();
        // A late second landing of the same event keeps one row.
        unsynced.insert_event(&a).await.unwrap();
        let stored = store
            .query_events(&EventQuery {
                limit: 10,
                ..EventQuery::default()
            })
            .await
            .unwrap();
        let mut paths: Vec<_> = stored.iter().filter_map(|e| e.path.clone()).collect();
        paths.sort();
        assert_eq!(paths, ["/a", "/b"]);
    }

    #[tokio::test]
    async fn sqlite_event_connections_flush_only_when_synced() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let store = Store::connect_synced(&url, 2, true).await.unwrap();
        store.migrate().await.unwrap();
        check(&store, "2", "1").await;
    }

    #[tokio::test]
    async fn postgres_event_connections_flush_only_when_synced() {
        let Some(db) = crate::scratch::ScratchPostgres::create("dg_evconn").await else {
            eprintln!("DROPGATE_TEST_POSTGRES_URL not set: not run against PostgreSQL");
            return;
        };
        let store = Store::connect(db.url(), 2).await.unwrap();
        store.migrate().await.unwrap();
        check(&store, "on", "off").await;
        store.close().await;
        db.drop_database().await;
    }
}

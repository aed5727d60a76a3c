//! `/api/v1/event-rules` and `/api/v1/event-deliveries` (SPEC 8).
//!
//! A rule's JSON is exactly SPEC 8's; the webhook `secret` is write-only:
//! responses leave it out, and a `PUT` without one keeps the stored secret.
//! Every field is checked before anything is stored, with a 422 naming it
//! (`action.url`, `filter.path_globs`, …). A change is live at once on this
//! node and within seconds on the others.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use dropgate_actions::{command, file_actions, webhook};
use dropgate_core::rules::{CompiledRule, compile_glob};
use dropgate_core::store::{
    Delivery, DeliveryQuery, DeliveryStatus, EventRule, RuleAction, RuleFilter, Trigger,
    validate_username,
};
use dropgate_core::vfs::VirtualPath;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{JsonBody, QueryParams};

/// Longest period of a schedule rule: a year.
const MAX_EVERY_SECS: u64 = 366 * 86_400;
/// Longest webhook timeout.
const MAX_WEBHOOK_TIMEOUT: u64 = 300;
/// Longest command timeout.
const MAX_COMMAND_TIMEOUT: u64 = 3600;

/// A rule as sent (`POST`, `PUT`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = EventRuleInput)]
pub(crate) struct RuleInput {
    /// Unique, 1–128 bytes.
    #[schema(example = "notify-erp")]
    name: String,
    /// Default true.
    enabled: Option<bool>,
    /// `upload`, `download`, `delete`, `rename`, `mkdir`, `rmdir`,
    /// `login_failed`, `quota_exceeded`, `account_changed` or `schedule`.
    #[schema(example = "upload")]
    trigger: String,
    /// Trigger `schedule` only: the period in seconds (1 s to a year).
    every_secs: Option<u64>,
    /// Empty lists match anything.
    #[schema(value_type = Option<RuleFilterDoc>)]
    filter: Option<serde_json::Value>,
    /// What the rule does.
    #[schema(value_type = RuleActionDoc)]
    action: serde_json::Value,
    /// Ignored (read-only).
    #[serde(rename = "id")]
    #[schema(value_type = Option<i64>, read_only)]
    _id: Option<serde::de::IgnoredAny>,
    /// Ignored (read-only).
    #[serde(rename = "created_at")]
    #[schema(value_type = Option<String>, read_only)]
    _created_at: Option<serde::de::IgnoredAny>,
    /// Ignored (read-only).
    #[serde(rename = "updated_at")]
    #[schema(value_type = Option<String>, read_only)]
    _updated_at: Option<serde::de::IgnoredAny>,
}

/// Which events a rule takes.
#[derive(ToSchema)]
#[schema(as = RuleFilter)]
#[allow(dead_code)] // documentation only: the body is the store's RuleFilter
pub(crate) struct RuleFilterDoc {
    /// Accounts; empty: any.
    usernames: Vec<String>,
    /// Globs on the event's path (or a rename's target): `*` and `?`
    /// within one folder, `**` across folders, e.g. `/inbox/**`.
    path_globs: Vec<String>,
    /// `ftp`, `ftps`, `sftp`; empty: any.
    protocols: Vec<String>,
}

/// One of: `{"type": "webhook", "url", "secret", "timeout_secs"}`,
/// `{"type": "command", "argv": [...], "timeout_secs"}`,
/// `{"type": "move" | "copy", "to": "/processed/{date}/{name}"}`,
/// `{"type": "retention", "path", "older_than_days"}` (trigger `schedule`).
/// Placeholders in `to`: `{name}`, `{dir}`, `{path}`, `{date}`, `{username}`.
#[derive(ToSchema)]
#[schema(as = RuleAction)]
#[allow(dead_code)] // documentation only
pub(crate) struct RuleActionDoc {
    /// `webhook`, `command`, `move`, `copy` or `retention`.
    #[schema(example = "webhook")]
    r#type: String,
    /// Webhook: `http://` or `https://` target.
    url: Option<String>,
    /// Webhook: HMAC-SHA256 key of `X-Dropgate-Signature`. Write-only.
    #[schema(write_only)]
    secret: Option<String>,
    /// Webhook (1–300, default 10) and command (1–3600, default 10).
    timeout_secs: Option<u64>,
    /// Command: absolute program path and arguments; never a shell string.
    argv: Option<Vec<String>>,
    /// Move, copy: target path template inside the account's home.
    to: Option<String>,
    /// Retention: folder in each account's home.
    path: Option<String>,
    /// Retention: files last modified more than this many days ago go.
    older_than_days: Option<u64>,
}

/// A stored rule as answered (the secret left out).
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = EventRule)]
pub(crate) struct RuleView {
    id: i64,
    name: String,
    enabled: bool,
    #[schema(value_type = String)]
    trigger: Trigger,
    every_secs: u64,
    #[schema(value_type = RuleFilterDoc)]
    filter: RuleFilter,
    #[schema(value_type = RuleActionDoc)]
    action: serde_json::Value,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<EventRule> for RuleView {
    fn from(r: EventRule) -> RuleView {
        let mut action = serde_json::to_value(&r.action).unwrap_or_default();
        if let Some(obj) = action.as_object_mut() {
            obj.remove("secret");
        }
        RuleView {
            id: r.id,
            name: r.name,
            enabled: r.enabled,
            trigger: r.trigger,
            every_secs: r.every_secs,
            filter: r.filter,
            action,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

/// Every rule.
#[derive(Serialize, ToSchema)]
#[schema(as = EventRuleList)]
pub(crate) struct RuleList {
    items: Vec<RuleView>,
}

fn parse_filter(v: Option<serde_json::Value>) -> ApiResult<RuleFilter> {
    let Some(v) = v else {
        return Ok(RuleFilter::default());
    };
    let filter: RuleFilter = serde_json::from_value(v).map_err(|e| {
        let msg = e.to_string();
        let field = ["usernames", "path_globs", "protocols"]
            .into_iter()
            .find(|f| msg.contains(f))
            .map_or("filter".to_owned(), |f| format!("filter.{f}"));
        ApiError::invalid(field, msg)
    })?;
    for u in &filter.usernames {
        validate_username(u)
            .map_err(|e| ApiError::invalid("filter.usernames", format!("{u:?}: {}", e.message)))?;
    }
    for g in &filter.path_globs {
        compile_glob(g).map_err(|e| ApiError::invalid("filter.path_globs", e))?;
    }
    for p in &filter.protocols {
        if !["ftp", "ftps", "sftp"].contains(&p.as_str()) {
            return Err(ApiError::invalid(
                "filter.protocols",
                format!("{p:?} is not one of ftp, ftps, sftp"),
            ));
        }
    }
    Ok(filter)
}

/// Parses and checks `action`; `previous`: the stored action, whose secret
/// a webhook without one keeps.
fn parse_action(v: serde_json::Value, previous: Option<&RuleAction>) -> ApiResult<RuleAction> {
    let Some(obj) = v.as_object() else {
        return Err(ApiError::invalid("action", "must be an object"));
    };
    let kind = obj
        .get("type")
        .and_then(|t| t.as_str())
        .ok_or_else(|| ApiError::invalid("action.type", "missing"))?;
    let allowed: &[&str] = match kind {
        "webhook" => &["type", "url", "secret", "timeout_secs"],
        "command" => &["type", "argv", "timeout_secs"],
        "move" | "copy" => &["type", "to"],
        "retention" => &["type", "path", "older_than_days"],
        other => {
            return Err(ApiError::invalid(
                "action.type",
                format!("{other:?} is not one of webhook, command, move, copy, retention"),
            ));
        }
    };
    if let Some(k) = obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(ApiError::invalid(
            format!("action.{k}"),
            format!("unknown field for a {kind} action"),
        ));
    }
    let mut action: RuleAction = serde_json::from_value(v.clone()).map_err(|e| {
        let msg = e.to_string();
        let field = allowed
            .iter()
            .find(|f| msg.contains(*f))
            .map_or("action".to_owned(), |f| format!("action.{f}"));
        ApiError::invalid(field, msg)
    })?;
    match &mut action {
        RuleAction::Webhook {
            url,
            secret,
            timeout_secs,
        } => {
            webhook::validate_url(url).map_err(|e| ApiError::invalid("action.url", e))?;
            if secret.is_empty()
                && let Some(RuleAction::Webhook { secret: old, .. }) = previous
            {
                secret.clone_from(old);
            }
            if secret.is_empty() {
                return Err(ApiError::invalid(
                    "action.secret",
                    "required: receivers verify X-Dropgate-Signature with it",
                ));
            }
            if secret.len() > 1024 {
                return Err(ApiError::invalid("action.secret", "at most 1024 bytes"));
            }
            if !(1..=MAX_WEBHOOK_TIMEOUT).contains(timeout_secs) {
                return Err(ApiError::invalid(
                    "action.timeout_secs",
                    format!("1 to {MAX_WEBHOOK_TIMEOUT}"),
                ));
            }
        }
        RuleAction::Command { argv, timeout_secs } => {
            command::validate_argv(argv).map_err(|e| ApiError::invalid("action.argv", e))?;
            if !(1..=MAX_COMMAND_TIMEOUT).contains(timeout_secs) {
                return Err(ApiError::invalid(
                    "action.timeout_secs",
                    format!("1 to {MAX_COMMAND_TIMEOUT}"),
                ));
            }
        }
        RuleAction::Move { to } | RuleAction::Copy { to } => {
            file_actions::validate_target(to).map_err(|e| ApiError::invalid("action.to", e))?;
        }
        RuleAction::Retention {
            path,
            older_than_days,
        } => {
            if !path.starts_with('/') || VirtualPath::parse(path).is_err() {
                return Err(ApiError::invalid("action.path", "an absolute path"));
            }
            if !(1..=36_500).contains(older_than_days) {
                return Err(ApiError::invalid("action.older_than_days", "1 to 36500"));
            }
        }
    }
    Ok(action)
}

/// Builds and checks a rule from its JSON.
fn to_rule(input: RuleInput, previous: Option<&EventRule>) -> ApiResult<EventRule> {
    let name = input.name.trim().to_owned();
    if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "name",
            "1 to 128 bytes, not blank, no control characters",
        ));
    }
    let trigger = Trigger::parse(&input.trigger).ok_or_else(|| {
        ApiError::invalid(
            "trigger",
            format!(
                "{:?} is not one of {}",
                input.trigger,
                Trigger::ALL.map(Trigger::as_str).join(", ")
            ),
        )
    })?;
    let every_secs = input.every_secs.unwrap_or(0);
    if trigger == Trigger::Schedule {
        if !(1..=MAX_EVERY_SECS).contains(&every_secs) {
            return Err(ApiError::invalid(
                "every_secs",
                format!("a schedule needs a period of 1 to {MAX_EVERY_SECS} seconds"),
            ));
        }
    } else if every_secs != 0 {
        return Err(ApiError::invalid(
            "every_secs",
            "only for trigger \"schedule\"",
        ));
    }
    let filter = parse_filter(input.filter)?;
    let action = parse_action(input.action, previous.map(|r| &r.action))?;
    match (&action, trigger) {
        (RuleAction::Retention { .. }, t) if t != Trigger::Schedule => {
            return Err(ApiError::invalid(
                "trigger",
                "a retention action runs on trigger \"schedule\"",
            ));
        }
        (RuleAction::Move { .. } | RuleAction::Copy { .. }, t)
            if !matches!(t, Trigger::Upload | Trigger::Rename | Trigger::Download) =>
        {
            return Err(ApiError::invalid(
                "trigger",
                "move and copy act on the file of an upload, download or rename",
            ));
        }
        _ => {}
    }
    let rule = EventRule {
        id: previous.map_or(0, |r| r.id),
        name,
        enabled: input.enabled.unwrap_or(true),
        trigger,
        every_secs,
        filter,
        action,
        created_at: previous.map_or_else(Utc::now, |r| r.created_at),
        updated_at: Utc::now(),
    };
    CompiledRule::new(rule.clone()).map_err(|e| ApiError::invalid("filter.path_globs", e))?;
    Ok(rule)
}

async fn load(state: &AppState, id: i64) -> ApiResult<EventRule> {
    state
        .gateway
        .store()
        .get_rule(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("event rule {id}")))
}

/// Makes a change live on this node at once (other nodes reload within
/// seconds).
async fn reload(state: &AppState) {
    if let Err(e) = state.gateway.reload_rules().await {
        tracing::warn!(error = %e, "could not reload event rules");
    }
}

/// List every event rule.
#[utoipa::path(
    get,
    path = "/api/v1/event-rules",
    tag = "event-rules",
    responses(
        (status = 200, description = "Every rule (secrets left out)", body = RuleList),
        (status = 401, description = "Not authenticated", body = ErrorBody),
    )
)]
pub(crate) async fn list_rules(State(state): State<AppState>) -> ApiResult<Json<RuleList>> {
    let rules = state.gateway.store().list_rules().await?;
    Ok(Json(RuleList {
        items: rules.into_iter().map(RuleView::from).collect(),
    }))
}

/// Create an event rule.
#[utoipa::path(
    post,
    path = "/api/v1/event-rules",
    tag = "event-rules",
    request_body = RuleInput,
    responses(
        (status = 201, description = "Created", body = RuleView,
            headers(("Location" = String, description = "The new rule's URL"))),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 409, description = "The name is taken", body = ErrorBody),
        (status = 422, description = "A field is invalid; the message names it", body = ErrorBody),
    )
)]
pub(crate) async fn create_rule(
    State(state): State<AppState>,
    JsonBody(input): JsonBody<RuleInput>,
) -> ApiResult<Response> {
    let rule = to_rule(input, None)?;
    let rule = state.gateway.store().create_rule(&rule).await?;
    reload(&state).await;
    tracing::info!(rule = %rule.name, id = rule.id, "event rule created");
    let mut headers = HeaderMap::new();
    if let Ok(location) = HeaderValue::from_str(&format!("/api/v1/event-rules/{}", rule.id)) {
        headers.insert(header::LOCATION, location);
    }
    Ok((StatusCode::CREATED, headers, Json(RuleView::from(rule))).into_response())
}

/// Get one event rule.
#[utoipa::path(
    get,
    path = "/api/v1/event-rules/{id}",
    tag = "event-rules",
    params(("id" = i64, Path, description = "The rule's id")),
    responses(
        (status = 200, description = "The rule (secret left out)", body = RuleView),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 404, description = "No such rule", body = ErrorBody),
    )
)]
pub(crate) async fn get_rule(
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> ApiResult<Json<RuleView>> {
    Ok(Json(load(&state, id).await?.into()))
}

/// Replace an event rule (a webhook without `secret` keeps the stored one).
#[utoipa::path(
    put,
    path = "/api/v1/event-rules/{id}",
    tag = "event-rules",
    params(("id" = i64, Path, description = "The rule's id")),
    request_body = RuleInput,
    responses(
        (status = 200, description = "Replaced", body = RuleView),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 404, description = "No such rule", body = ErrorBody),
        (status = 409, description = "The name is taken", body = ErrorBody),
        (status = 422, description = "A field is invalid; the message names it", body = ErrorBody),
    )
)]
pub(crate) async fn replace_rule(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    JsonBody(input): JsonBody<RuleInput>,
) -> ApiResult<Json<RuleView>> {
    let previous = load(&state, id).await?;
    let rule = to_rule(input, Some(&previous))?;
    let rule = state.gateway.store().update_rule(&rule).await?;
    reload(&state).await;
    tracing::info!(rule = %rule.name, id, "event rule replaced");
    Ok(Json(rule.into()))
}

/// Delete an event rule; its pending deliveries fail when their turn comes.
#[utoipa::path(
    delete,
    path = "/api/v1/event-rules/{id}",
    tag = "event-rules",
    params(("id" = i64, Path, description = "The rule's id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 404, description = "No such rule", body = ErrorBody),
    )
)]
pub(crate) async fn delete_rule(
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> ApiResult<StatusCode> {
    if !state.gateway.store().delete_rule(id).await? {
        return Err(ApiError::NotFound(format!("event rule {id}")));
    }
    reload(&state).await;
    tracing::info!(id, "event rule deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// Filters of `GET /api/v1/event-deliveries`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct DeliveryParams {
    /// Only this rule's deliveries.
    rule: Option<i64>,
    /// `pending`, `succeeded` or `failed`.
    status: Option<String>,
    /// Page size, 1–1000 (default 100).
    limit: Option<u32>,
}

/// One delivery: a rule's action for one event, with its attempts.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = EventDelivery)]
pub(crate) struct DeliveryView {
    /// Also the webhook's `X-Dropgate-Delivery` and the body's `id`.
    id: String,
    rule_id: i64,
    /// The event, exactly as the webhook body sends it.
    #[schema(value_type = Object)]
    event: serde_json::Value,
    /// `pending`, `succeeded` or `failed`.
    #[schema(value_type = String)]
    status: DeliveryStatus,
    attempts: u32,
    last_error: Option<String>,
    /// A command's captured output, the HTTP status, or what a file action did.
    output: Option<String>,
    next_attempt_at: DateTime<Utc>,
    created_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
}

impl From<Delivery> for DeliveryView {
    fn from(d: Delivery) -> DeliveryView {
        DeliveryView {
            event: serde_json::from_str(&d.body).unwrap_or_default(),
            id: d.id,
            rule_id: d.rule_id,
            status: d.status,
            attempts: d.attempts,
            last_error: d.last_error,
            output: d.output,
            next_attempt_at: d.next_attempt_at,
            created_at: d.created_at,
            finished_at: d.finished_at,
        }
    }
}

/// Deliveries, newest first.
#[derive(Serialize, ToSchema)]
#[schema(as = EventDeliveryList)]
pub(crate) struct DeliveryList {
    items: Vec<DeliveryView>,
}

/// List deliveries of event rules, newest first.
#[utoipa::path(
    get,
    path = "/api/v1/event-deliveries",
    tag = "event-rules",
    params(DeliveryParams),
    responses(
        (status = 200, description = "Deliveries", body = DeliveryList),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 422, description = "A parameter is invalid", body = ErrorBody),
    )
)]
pub(crate) async fn list_deliveries(
    State(state): State<AppState>,
    QueryParams(p): QueryParams<DeliveryParams>,
) -> ApiResult<Json<DeliveryList>> {
    let status = match p.status.as_deref() {
        None | Some("") => None,
        Some(s) => Some(
            DeliveryStatus::parse(s)
                .ok_or_else(|| ApiError::invalid("status", "one of pending, succeeded, failed"))?,
        ),
    };
    let limit = p.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid("limit", "1 to 1000"));
    }
    let items = state
        .gateway
        .store()
        .list_deliveries(&DeliveryQuery {
            rule_id: p.rule,
            status,
            limit,
        })
        .await?;
    Ok(Json(DeliveryList {
        items: items.into_iter().map(DeliveryView::from).collect(),
    }))
}

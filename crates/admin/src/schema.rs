//! OpenAPI descriptions of the JSON the store's records serialize to.
//!
//! Responses are the store's own types (`User`, `Event`, `ApiKey`) and
//! core's `SessionSnapshot`, serialized as they are: their JSON is the
//! external contract (SPEC section 4) and this crate must not reshape it.
//! Those types know nothing of OpenAPI, so the shapes are described here; the
//! unit tests at the bottom serialize real values and check every key against
//! these descriptions, so the two cannot drift apart unnoticed.
// Documentation types: read by the OpenAPI derive, never built.
#![allow(dead_code)]

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Schema, Type};
use utoipa::openapi::{Ref, RefOr};
use utoipa::{PartialSchema, ToSchema};

/// A permission on a virtual path prefix; `*` is every permission.
#[derive(ToSchema)]
#[schema(as = Permission)]
pub(crate) enum PermissionDoc {
    #[schema(rename = "list")]
    List,
    #[schema(rename = "download")]
    Download,
    #[schema(rename = "upload")]
    Upload,
    #[schema(rename = "overwrite")]
    Overwrite,
    #[schema(rename = "delete")]
    Delete,
    #[schema(rename = "rename")]
    Rename,
    #[schema(rename = "mkdir")]
    Mkdir,
    #[schema(rename = "rmdir")]
    Rmdir,
    #[schema(rename = "chtimes")]
    Chtimes,
    #[schema(rename = "*")]
    All,
}

/// A file-transfer protocol.
#[derive(ToSchema)]
#[schema(as = Protocol)]
pub(crate) enum ProtocolDoc {
    #[schema(rename = "ftp")]
    Ftp,
    #[schema(rename = "ftps")]
    Ftps,
    #[schema(rename = "sftp")]
    Sftp,
}

/// A string schema with a pattern, for the hand-written schemas below.
fn string_schema(
    description: &str,
    pattern: &str,
    max_length: usize,
    example: &str,
) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(description))
        .pattern(Some(pattern))
        .max_length(Some(max_length))
        .examples([serde_json::Value::from(example)])
        .into()
}

/// Hand-written schemas: the derive cannot express `propertyNames` nor
/// attach a pattern to a bare string.
macro_rules! manual_schema {
    ($ty:ident, $name:literal, $schema:expr, [$($dep:ty),*]) => {
        pub(crate) struct $ty;
        impl PartialSchema for $ty {
            fn schema() -> RefOr<Schema> {
                $schema
            }
        }
        impl ToSchema for $ty {
            fn name() -> Cow<'static, str> {
                Cow::Borrowed($name)
            }
            fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
                $(
                    schemas.push((<$dep as ToSchema>::name().into_owned(), <$dep as PartialSchema>::schema()));
                    <$dep as ToSchema>::schemas(schemas);
                )*
                let _ = schemas;
            }
        }
    };
}

manual_schema!(
    PermissionMapDoc,
    "PermissionMap",
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .description(Some(
            "Virtual path prefix (absolute, without `..`) -> permissions; the longest matching prefix wins.",
        ))
        .property_names(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some("^/"))
                .max_length(Some(1024))
                .build(),
        ))
        .additional_properties(Some(
            ArrayBuilder::new().items(RefOr::Ref(Ref::from_schema_name(PermissionDoc::name()))),
        ))
        .examples([serde_json::json!({"/": ["list"], "/inbox": ["list", "upload"]})])
        .into(),
    [PermissionDoc]
);

manual_schema!(
    PublicKeyDoc,
    "PublicKey",
    string_schema(
        "An OpenSSH one-line public key: `type base64 [comment]`.",
        r"^(ssh-|ecdsa-sha2-|sk-)[!-~]+ [A-Za-z0-9+/=]+( [^\n]*)?$",
        16 * 1024,
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl acme@laptop",
    ),
    []
);

manual_schema!(
    CidrDoc,
    "Cidr",
    string_schema(
        "An IPv4 or IPv6 network in CIDR notation.",
        r"^[0-9A-Fa-f:.]+/[0-9]{1,3}$",
        64,
        "192.0.2.0/24",
    ),
    []
);

manual_schema!(
    HomeDoc,
    "Home",
    string_schema(
        "A folder below the storage root: relative, `/`-separated, no `.` or `..` segment, no backslash.",
        r"^[^/\\\x00]+(/[^/\\\x00]+)*$",
        512,
        "partners/acme",
    ),
    []
);

/// Storage limits; 0 means unlimited.
#[derive(ToSchema)]
#[schema(as = Quota)]
pub(crate) struct QuotaDoc {
    /// Total bytes the home may hold.
    max_bytes: u64,
    /// Total files the home may hold.
    max_files: u64,
}

/// What a home holds now, as the quota counts it.
#[derive(ToSchema)]
#[schema(as = Usage)]
pub(crate) struct UsageDoc {
    /// Bytes (each file once, however many hard links it has).
    bytes: u64,
    /// Files (every name of a regular file).
    files: u64,
}

/// Transfer rate limits in KiB/s; 0 means unlimited.
#[derive(ToSchema)]
#[schema(as = Bandwidth)]
pub(crate) struct BandwidthDoc {
    /// Upload limit.
    upload_kib_s: u64,
    /// Download limit.
    download_kib_s: u64,
}

/// A partner account (SPEC section 4). Never carries a password or hash.
#[derive(ToSchema)]
#[schema(as = User)]
pub(crate) struct UserDoc {
    /// 1–64 of `[A-Za-z0-9._-]`, not starting with `.` or `-`.
    #[schema(pattern = "^[A-Za-z0-9_][A-Za-z0-9._-]{0,63}$", example = "acme")]
    username: String,
    /// OpenSSH one-line public keys.
    public_keys: Vec<PublicKeyDoc>,
    /// Folder below the storage root.
    home: HomeDoc,
    /// Virtual path prefix -> permissions; the longest matching prefix wins.
    permissions: PermissionMapDoc,
    /// Disabled accounts cannot log in.
    enabled: bool,
    /// After this instant the account cannot log in.
    expires_at: Option<DateTime<Utc>>,
    /// Storage limits.
    quota: QuotaDoc,
    /// Rate limits.
    bandwidth: BandwidthDoc,
    /// Concurrent logged-in sessions, all protocols and nodes (0: unlimited).
    max_sessions: u64,
    /// What the home holds now, as the quota counts it (read-only).
    #[schema(read_only)]
    usage: UsageDoc,
    /// Source networks allowed to log in; empty: any.
    allowed_ips: Vec<CidrDoc>,
    /// Protocols allowed.
    protocols: Vec<ProtocolDoc>,
    /// Free text for operators.
    #[schema(max_length = 1024)]
    description: String,
    /// When the account was created.
    created_at: DateTime<Utc>,
    /// Last successful login.
    last_login_at: Option<DateTime<Utc>>,
}

/// A page of accounts, ordered by username.
#[derive(ToSchema)]
#[schema(as = UserList)]
pub(crate) struct UserListDoc {
    /// The accounts of this page.
    items: Vec<UserDoc>,
    /// How many accounts exist in all.
    total: u64,
}

/// What an audit event records.
#[derive(ToSchema)]
#[schema(as = EventKind)]
pub(crate) enum EventKindDoc {
    #[schema(rename = "login")]
    Login,
    #[schema(rename = "logout")]
    Logout,
    #[schema(rename = "upload")]
    Upload,
    #[schema(rename = "download")]
    Download,
    #[schema(rename = "delete")]
    Delete,
    #[schema(rename = "rename")]
    Rename,
    #[schema(rename = "mkdir")]
    Mkdir,
    #[schema(rename = "rmdir")]
    Rmdir,
    #[schema(rename = "setstat")]
    Setstat,
    #[schema(rename = "link")]
    Link,
}

/// Whether the audited operation succeeded.
#[derive(ToSchema)]
#[schema(as = Outcome)]
pub(crate) enum OutcomeDoc {
    #[schema(rename = "ok")]
    Ok,
    #[schema(rename = "failed")]
    Failed,
    #[schema(rename = "denied")]
    Denied,
}

/// One audit record (SPEC 5.6).
#[derive(ToSchema)]
#[schema(as = Event)]
pub(crate) struct EventDoc {
    /// Row id.
    id: i64,
    /// When it happened.
    time: DateTime<Utc>,
    /// What happened.
    kind: EventKindDoc,
    /// Who (as typed by the client, for failed logins).
    username: String,
    /// Over which protocol.
    protocol: String,
    /// From where (`ip:port`).
    remote_addr: String,
    /// The path acted on.
    path: Option<String>,
    /// The second path (rename/link target).
    target_path: Option<String>,
    /// Bytes moved.
    bytes: Option<u64>,
    /// How long it took.
    duration_ms: Option<u64>,
    /// Whether it worked.
    outcome: OutcomeDoc,
    /// SHA-256 of a completed upload's content, lower-case hex.
    sha256: Option<String>,
    /// Why it failed, or other detail.
    message: Option<String>,
    /// Which node handled it.
    node: String,
    /// The session it belongs to.
    session_id: Option<String>,
}

/// A page of audit events, newest first.
#[derive(ToSchema)]
#[schema(as = EventList)]
pub(crate) struct EventListDoc {
    /// The events of this page.
    items: Vec<EventDoc>,
    /// Pass as `cursor` to get the next (older) page; null on the last page.
    next_cursor: Option<String>,
}

/// An API key's public description (the key itself is shown once, at creation).
#[derive(ToSchema)]
#[schema(as = ApiKey)]
pub(crate) struct ApiKeyDoc {
    /// Public id (used to delete the key).
    id: String,
    /// The admin the key acts as.
    admin: String,
    /// Operator's note.
    description: String,
    /// When it was created.
    created_at: DateTime<Utc>,
    /// When it was last used.
    last_used_at: Option<DateTime<Utc>>,
}

/// Every API key.
#[derive(ToSchema)]
#[schema(as = ApiKeyList)]
pub(crate) struct ApiKeyListDoc {
    /// The keys, oldest first.
    items: Vec<ApiKeyDoc>,
}

/// Direction of a transfer.
#[derive(ToSchema)]
#[schema(as = Direction)]
pub(crate) enum DirectionDoc {
    #[schema(rename = "upload")]
    Upload,
    #[schema(rename = "download")]
    Download,
}

/// A transfer in progress.
#[derive(ToSchema)]
#[schema(as = Transfer)]
pub(crate) struct TransferDoc {
    /// Virtual path.
    path: String,
    /// Which way.
    direction: DirectionDoc,
    /// Bytes so far.
    bytes: u64,
    /// Seconds since it started.
    elapsed_secs: f64,
}

/// A live session.
#[derive(ToSchema)]
#[schema(as = Session)]
pub(crate) struct SessionDoc {
    /// Session id (for `DELETE /api/v1/sessions/{id}`).
    id: String,
    /// Account name.
    username: String,
    /// `ftp`, `ftps` or `sftp`.
    protocol: String,
    /// Client address (`ip:port`).
    remote_addr: String,
    /// The node serving it (`[cluster] node_name`).
    node: String,
    /// Login time.
    started_at: DateTime<Utc>,
    /// The current transfer, if any.
    transfer: Option<TransferDoc>,
}

/// Every live session of every node on this store, oldest first.
#[derive(ToSchema)]
#[schema(as = SessionList)]
pub(crate) struct SessionListDoc {
    /// The sessions.
    items: Vec<SessionDoc>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::BTreeSet;

    use dropgate_core::{Direction, SessionSnapshot, TransferSnapshot};
    use dropgate_store::{ApiKey, Event, EventKind, Outcome, Permission, Protocol, User};
    use serde_json::Value;
    use utoipa::ToSchema;
    use utoipa::openapi::RefOr;
    use utoipa::openapi::schema::Schema;

    use super::*;

    /// The property names of an object schema.
    fn properties<T: ToSchema>() -> BTreeSet<String> {
        match T::schema() {
            RefOr::T(Schema::Object(o)) => o.properties.keys().cloned().collect(),
            _ => panic!("{} is not an object schema", T::name()),
        }
    }

    /// The string values of an enum schema.
    fn variants<T: ToSchema>() -> BTreeSet<String> {
        let schema = serde_json::to_value(T::schema()).unwrap();
        schema["enum"]
            .as_array()
            .unwrap_or_else(|| panic!("{} is not an enum: {schema}", T::name()))
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    }

    fn keys(v: &Value) -> BTreeSet<String> {
        v.as_object().unwrap().keys().cloned().collect()
    }

    fn json_str<T: serde::Serialize>(v: T) -> String {
        serde_json::to_value(v)
            .unwrap()
            .as_str()
            .unwrap()
            .to_owned()
    }

    #[test]
    fn user_schema_matches_the_store_json() {
        let mut user = User::new("acme");
        user.expires_at = Some(Utc::now());
        user.last_login_at = Some(Utc::now());
        let v = serde_json::to_value(&user).unwrap();
        let mut served = keys(&v);
        served.insert("usage".to_owned()); // added by the API (users::UserView)
        assert_eq!(served, properties::<UserDoc>());
        assert_eq!(keys(&v["quota"]), properties::<QuotaDoc>());
        assert_eq!(keys(&v["bandwidth"]), properties::<BandwidthDoc>());
        let names: BTreeSet<String> = Permission::NAMES.iter().map(|s| (*s).to_owned()).collect();
        assert_eq!(names, variants::<PermissionDoc>());
        let protocols: BTreeSet<String> = Protocol::ALL.iter().map(json_str).collect();
        assert_eq!(protocols, variants::<ProtocolDoc>());
    }

    #[test]
    fn event_schema_matches_the_store_json() {
        let event = Event {
            id: 1,
            time: Utc::now(),
            kind: EventKind::Upload,
            username: "acme".into(),
            protocol: "ftp".into(),
            remote_addr: "127.0.0.1:1".into(),
            path: Some("/a".into()),
            target_path: None,
            bytes: Some(1),
            duration_ms: Some(1),
            outcome: Outcome::Ok,
            sha256: None,
            message: None,
            node: "n".into(),
            session_id: None,
        };
        assert_eq!(
            keys(&serde_json::to_value(&event).unwrap()),
            properties::<EventDoc>()
        );
        for name in variants::<EventKindDoc>() {
            assert!(EventKind::parse(&name).is_some(), "{name}");
        }
        let outcomes: BTreeSet<String> = [Outcome::Ok, Outcome::Failed, Outcome::Denied]
            .into_iter()
            .map(json_str)
            .collect();
        assert_eq!(outcomes, variants::<OutcomeDoc>());
    }

    #[test]
    fn api_key_and_session_schemas_match_their_json() {
        let key = ApiKey {
            id: "k".into(),
            admin: "admin".into(),
            description: String::new(),
            created_at: Utc::now(),
            last_used_at: None,
        };
        assert_eq!(
            keys(&serde_json::to_value(&key).unwrap()),
            properties::<ApiKeyDoc>()
        );
        let session = SessionSnapshot {
            id: "s".into(),
            username: "acme".into(),
            protocol: "ftp".into(),
            remote_addr: "127.0.0.1:1".into(),
            node: "n1".into(),
            started_at: Utc::now(),
            transfer: Some(TransferSnapshot {
                path: "/f".into(),
                direction: Direction::Upload,
                bytes: 1,
                elapsed_secs: 0.5,
            }),
        };
        let v = serde_json::to_value(&session).unwrap();
        assert_eq!(keys(&v), properties::<SessionDoc>());
        assert_eq!(keys(&v["transfer"]), properties::<TransferDoc>());
        let directions: BTreeSet<String> = [Direction::Upload, Direction::Download]
            .into_iter()
            .map(json_str)
            .collect();
        assert_eq!(directions, variants::<DirectionDoc>());
    }
}

-- dropgate schema, SQLite dialect. Times are Unix milliseconds (BIGINT) in both
-- dialects so one query set serves both; list-valued fields are JSON text.
CREATE TABLE users (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    username        TEXT    NOT NULL UNIQUE,
    password_hash   TEXT,
    home            TEXT    NOT NULL,
    enabled         BOOLEAN NOT NULL DEFAULT 1,
    expires_at      BIGINT,
    quota_max_bytes BIGINT  NOT NULL DEFAULT 0,
    quota_max_files BIGINT  NOT NULL DEFAULT 0,
    upload_kib_s    BIGINT  NOT NULL DEFAULT 0,
    download_kib_s  BIGINT  NOT NULL DEFAULT 0,
    allowed_ips     TEXT    NOT NULL DEFAULT '[]',
    protocols       TEXT    NOT NULL DEFAULT '["ftp","ftps","sftp"]',
    public_keys     TEXT    NOT NULL DEFAULT '[]',
    permissions     TEXT    NOT NULL DEFAULT '{"/":["*"]}',
    description     TEXT    NOT NULL DEFAULT '',
    created_at      BIGINT  NOT NULL,
    updated_at      BIGINT  NOT NULL,
    last_login_at   BIGINT
);

CREATE TABLE admins (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    username      TEXT   NOT NULL UNIQUE,
    password_hash TEXT   NOT NULL,
    created_at    BIGINT NOT NULL
);

CREATE TABLE api_keys (
    id           TEXT    PRIMARY KEY,
    admin_id     INTEGER NOT NULL REFERENCES admins(id) ON DELETE CASCADE,
    key_hash     TEXT    NOT NULL UNIQUE,
    description  TEXT    NOT NULL DEFAULT '',
    created_at   BIGINT  NOT NULL,
    last_used_at BIGINT
);

CREATE TABLE admin_tokens (
    token_hash TEXT    PRIMARY KEY,
    admin_id   INTEGER NOT NULL REFERENCES admins(id) ON DELETE CASCADE,
    created_at BIGINT  NOT NULL,
    expires_at BIGINT  NOT NULL
);

CREATE TABLE events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    ts          BIGINT NOT NULL,
    kind        TEXT   NOT NULL,
    username    TEXT   NOT NULL,
    protocol    TEXT   NOT NULL,
    remote_addr TEXT   NOT NULL,
    path        TEXT,
    target_path TEXT,
    bytes       BIGINT,
    duration_ms BIGINT,
    outcome     TEXT   NOT NULL,
    sha256      TEXT,
    message     TEXT,
    node        TEXT   NOT NULL DEFAULT '',
    session_id  TEXT
);
CREATE INDEX events_ts ON events (ts);
CREATE INDEX events_user ON events (username, id);
CREATE INDEX events_kind ON events (kind, id);

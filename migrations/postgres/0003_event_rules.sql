-- Event rules (SPEC 8) and their deliveries: the outbox. A delivery row is
-- written in the same transaction as the audit event that matched its rule.
CREATE TABLE event_rules (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name          TEXT    NOT NULL UNIQUE,
    enabled       BOOLEAN NOT NULL DEFAULT TRUE,
    trigger_kind  TEXT    NOT NULL,
    every_secs    BIGINT  NOT NULL DEFAULT 0,
    filter        TEXT    NOT NULL,
    action        TEXT    NOT NULL,
    created_at    BIGINT  NOT NULL,
    updated_at    BIGINT  NOT NULL,
    -- Schedule rules: when the last run was claimed (one node wins each run).
    last_fired_at BIGINT
);

CREATE TABLE event_deliveries (
    id              TEXT    PRIMARY KEY,
    rule_id         BIGINT  NOT NULL,
    trigger_kind    TEXT    NOT NULL,
    body            TEXT    NOT NULL,
    status          TEXT    NOT NULL,
    attempts        BIGINT  NOT NULL DEFAULT 0,
    last_error      TEXT,
    output          TEXT,
    next_attempt_at BIGINT  NOT NULL,
    lease_node      TEXT,
    lease_until     BIGINT,
    created_at      BIGINT  NOT NULL,
    finished_at     BIGINT
);
CREATE INDEX event_deliveries_due ON event_deliveries (status, next_attempt_at);
CREATE INDEX event_deliveries_rule ON event_deliveries (rule_id, created_at);
CREATE INDEX event_deliveries_created ON event_deliveries (created_at);

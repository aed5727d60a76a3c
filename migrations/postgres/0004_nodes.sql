-- Nodes sharing this store (GET /api/v1/nodes): each running `dropgate serve`
-- refreshes its row every few seconds and removes it when it stops cleanly;
-- a row not refreshed for a while is a node that is gone.
CREATE TABLE nodes (
    name         TEXT   PRIMARY KEY NOT NULL,
    version      TEXT   NOT NULL,
    started_at   BIGINT NOT NULL,
    last_seen_at BIGINT NOT NULL,
    -- JSON array of "protocol address" strings.
    listeners    TEXT   NOT NULL
);

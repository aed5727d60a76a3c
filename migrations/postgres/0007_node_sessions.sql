-- Live sessions of every node, for GET /api/v1/sessions and max_sessions
-- across nodes: each node replaces its row every few seconds with a JSON
-- array of its sessions (as the admin API lists them).
CREATE TABLE node_sessions (
    node       TEXT   PRIMARY KEY NOT NULL,
    sessions   TEXT   NOT NULL,
    updated_at BIGINT NOT NULL
);
-- DELETE /api/v1/sessions/{id} on a node that does not hold the session:
-- the holding node takes its requests every few seconds and ends them.
CREATE TABLE session_kicks (
    id           TEXT   PRIMARY KEY NOT NULL,
    node         TEXT   NOT NULL,
    requested_at BIGINT NOT NULL
);

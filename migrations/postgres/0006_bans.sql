-- Sources banned for failed logins, shared by every node on this store: a
-- node that bans a source writes it here, every node reads the active rows
-- every few seconds, and lifting a ban deletes the row. `source` is an IPv4
-- address or an IPv6 /64 in the form the admin API lists.
CREATE TABLE bans (
    source     TEXT    PRIMARY KEY NOT NULL,
    failures   BIGINT  NOT NULL,
    banned_at  BIGINT  NOT NULL,
    expires_at BIGINT  NOT NULL
);
CREATE INDEX bans_expires_at ON bans (expires_at);

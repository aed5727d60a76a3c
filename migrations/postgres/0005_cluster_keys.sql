-- Keys every node must present alike when dropgate generated them (SSH host
-- keys, the self-signed FTPS pair): the first node to start stores its own,
-- every other node takes the stored one. `value` is a JSON object mapping
-- file names in data_dir to their contents. Private keys: this table is as
-- sensitive as the key files themselves.
CREATE TABLE cluster_keys (
    name       TEXT   PRIMARY KEY NOT NULL,
    value      TEXT   NOT NULL,
    created_at BIGINT NOT NULL
);

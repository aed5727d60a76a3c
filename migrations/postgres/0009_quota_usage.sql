-- Storage in use per account, shared by the nodes when the homes are in one
-- bucket (S3): each node adds what its sessions changed and reads what the
-- others did. Written the first time an account with a quota logs in
-- (measured from its home), dropped when its quota or home changes or it is
-- deleted, so the next login measures again.
CREATE TABLE quota_usage (
    username TEXT PRIMARY KEY,
    bytes BIGINT NOT NULL,
    files BIGINT NOT NULL
);

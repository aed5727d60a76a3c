-- Concurrent logged-in sessions per account, all protocols (0: unlimited).
ALTER TABLE users ADD COLUMN max_sessions BIGINT NOT NULL DEFAULT 0;

-- Session rows, keyed by the storage key (hex SHA-256 of the session id).
-- Times are epoch milliseconds.
CREATE TABLE IF NOT EXISTS axess_sessions (
    skey       CHAR(64) NOT NULL PRIMARY KEY,
    payload    BYTEA NOT NULL,
    user_id    VARCHAR(255) NULL,
    tenant_id  VARCHAR(255) NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS axess_sessions_user ON axess_sessions (user_id, tenant_id);
CREATE INDEX IF NOT EXISTS axess_sessions_expires ON axess_sessions (expires_at);

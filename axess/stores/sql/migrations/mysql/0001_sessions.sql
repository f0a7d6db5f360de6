-- Session rows, keyed by the storage key (hex SHA-256 of the session id).
-- Times are epoch milliseconds. Binary collations: ids compare exactly, as
-- in every other backend. MySQL has no CREATE INDEX IF NOT EXISTS, so the
-- indexes are declared inline (the statement stays idempotent).
CREATE TABLE IF NOT EXISTS axess_sessions (
    skey       CHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    payload    LONGBLOB NOT NULL,
    user_id    VARCHAR(255) NULL,
    tenant_id  VARCHAR(255) NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (skey),
    KEY axess_sessions_user (user_id, tenant_id),
    KEY axess_sessions_expires (expires_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

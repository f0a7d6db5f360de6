-- Lockout counters (one row per lever key) and trusted origins (rows whose
-- key starts with "o:", alive until expires_at). Keys are lever-prefixed
-- SHA-256 hex digests. Times are epoch milliseconds; a row is dead (and
-- purged) once expires_at has passed.
CREATE TABLE IF NOT EXISTS axess_lockouts (
    lkey         VARCHAR(80) NOT NULL PRIMARY KEY,
    failures     INTEGER NOT NULL,
    window_start BIGINT NOT NULL,
    locked_until BIGINT NOT NULL,
    lockouts     INTEGER NOT NULL,
    expires_at   BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS axess_lockouts_expires ON axess_lockouts (expires_at);

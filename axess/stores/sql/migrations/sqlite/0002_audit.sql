-- The regulatory audit table. One row per event, keyed by the event id so
-- that redelivering an event (at-least-once) never duplicates it. Times are
-- epoch microseconds. archived_at / purge_at are set by the retention loop
-- once the row has been copied to the archive; only archived rows whose
-- purge_at has passed are ever deleted.
CREATE TABLE IF NOT EXISTS axess_audit_events (
    event_id       VARCHAR(64) NOT NULL PRIMARY KEY,
    time_us        BIGINT NOT NULL,
    tenant_id      VARCHAR(255) NULL,
    event_type     VARCHAR(64) NOT NULL,
    status         VARCHAR(16) NOT NULL,
    user_id        VARCHAR(255) NULL,
    session_prefix VARCHAR(64) NULL,
    ip             VARCHAR(64) NULL,
    user_agent     VARCHAR(512) NULL,
    request_id     VARCHAR(128) NULL,
    factor         VARCHAR(64) NULL,
    lever          VARCHAR(32) NULL,
    reason         VARCHAR(255) NULL,
    actor          VARCHAR(255) NULL,
    extras         TEXT NOT NULL,
    archived_at    BIGINT NULL,
    purge_at       BIGINT NULL
);
CREATE INDEX IF NOT EXISTS axess_audit_tenant_time ON axess_audit_events (tenant_id, time_us);
CREATE INDEX IF NOT EXISTS axess_audit_time ON axess_audit_events (time_us);
CREATE INDEX IF NOT EXISTS axess_audit_purge ON axess_audit_events (purge_at);

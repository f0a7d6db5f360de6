-- The regulatory audit table. One row per event, keyed by the event id so
-- that redelivering an event (at-least-once) never duplicates it. Times are
-- epoch microseconds. archived_at / purge_at are set by the retention loop
-- once the row has been copied to the archive; only archived rows whose
-- purge_at has passed are ever deleted. Binary collations: ids and tenants
-- compare exactly, as in every other backend. Indexes are declared inline
-- (MySQL has no CREATE INDEX IF NOT EXISTS).
CREATE TABLE IF NOT EXISTS axess_audit_events (
    event_id       VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
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
    extras         MEDIUMTEXT NOT NULL,
    archived_at    BIGINT NULL,
    purge_at       BIGINT NULL,
    PRIMARY KEY (event_id),
    KEY axess_audit_tenant_time (tenant_id, time_us),
    KEY axess_audit_time (time_us),
    KEY axess_audit_purge (purge_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

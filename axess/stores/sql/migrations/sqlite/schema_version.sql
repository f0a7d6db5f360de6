-- Bookkeeping table for versioned, forward-only migrations.
CREATE TABLE IF NOT EXISTS axess_schema_version (
    version    INTEGER PRIMARY KEY,
    applied_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP
);

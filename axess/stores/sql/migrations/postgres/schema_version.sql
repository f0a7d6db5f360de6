-- Bookkeeping table for versioned, forward-only migrations.
CREATE TABLE IF NOT EXISTS axess_schema_version (
    version    INTEGER PRIMARY KEY,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Bookkeeping table for versioned, forward-only migrations.
CREATE TABLE IF NOT EXISTS axess_schema_version (
    version    INTEGER NOT NULL PRIMARY KEY,
    applied_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
) ENGINE=InnoDB;

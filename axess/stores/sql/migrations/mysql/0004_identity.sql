-- Identity (tenants, users) and factors. Times are epoch milliseconds.
-- Identifiers are stored normalized (NFKC, casefolded): unique per tenant,
-- compared byte-wise (utf8mb4_bin). ip_allow / ip_deny / lockout_overrides
-- hold JSON text.
CREATE TABLE IF NOT EXISTS axess_tenants (
    tenant_id         VARCHAR(128) NOT NULL,
    slug              VARCHAR(128) NOT NULL,
    status            VARCHAR(16) NOT NULL,
    pepper            VARBINARY(255),
    ip_allow          TEXT NOT NULL,
    ip_deny           TEXT NOT NULL,
    lockout_overrides TEXT NOT NULL,
    created_at        BIGINT NOT NULL,
    PRIMARY KEY (tenant_id),
    UNIQUE KEY axess_tenants_slug (slug)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE TABLE IF NOT EXISTS axess_users (
    user_id       VARCHAR(128) NOT NULL,
    tenant_id     VARCHAR(128) NOT NULL,
    identifier    VARCHAR(320) NOT NULL,
    status        VARCHAR(16) NOT NULL,
    created_at    BIGINT NOT NULL,
    last_login_at BIGINT,
    PRIMARY KEY (user_id),
    UNIQUE KEY axess_users_identifier (tenant_id, identifier)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
-- One row per user with any factor; totp_secret is sealed (AES-GCM, the
-- user id as associated data); totp_last_step is the replay guard.
CREATE TABLE IF NOT EXISTS axess_factors (
    user_id        VARCHAR(128) NOT NULL,
    password_hash  TEXT,
    totp_secret    VARBINARY(1024),
    totp_last_step BIGINT,
    PRIMARY KEY (user_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
-- Recovery codes: keyed HMAC-SHA256 hex digests, deleted when used.
CREATE TABLE IF NOT EXISTS axess_recovery_codes (
    user_id   VARCHAR(128) NOT NULL,
    code_hash CHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    PRIMARY KEY (user_id, code_hash)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

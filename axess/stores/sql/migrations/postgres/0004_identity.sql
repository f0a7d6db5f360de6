-- Identity (tenants, users) and factors. Times are epoch milliseconds.
-- Identifiers are stored normalized (NFKC, casefolded): unique per tenant.
-- ip_allow / ip_deny / lockout_overrides hold JSON text.
CREATE TABLE IF NOT EXISTS axess_tenants (
    tenant_id         VARCHAR(128) NOT NULL PRIMARY KEY,
    slug              VARCHAR(128) NOT NULL UNIQUE,
    status            VARCHAR(16) NOT NULL,
    pepper            BYTEA,
    ip_allow          TEXT NOT NULL,
    ip_deny           TEXT NOT NULL,
    lockout_overrides TEXT NOT NULL,
    created_at        BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS axess_users (
    user_id       VARCHAR(128) NOT NULL PRIMARY KEY,
    tenant_id     VARCHAR(128) NOT NULL,
    identifier    VARCHAR(320) NOT NULL,
    status        VARCHAR(16) NOT NULL,
    created_at    BIGINT NOT NULL,
    last_login_at BIGINT,
    UNIQUE (tenant_id, identifier)
);
-- One row per user with any factor; totp_secret is sealed (AES-GCM, the
-- user id as associated data); totp_last_step is the replay guard.
CREATE TABLE IF NOT EXISTS axess_factors (
    user_id        VARCHAR(128) NOT NULL PRIMARY KEY,
    password_hash  TEXT,
    totp_secret    BYTEA,
    totp_last_step BIGINT
);
-- Recovery codes: keyed HMAC-SHA256 hex digests, deleted when used.
CREATE TABLE IF NOT EXISTS axess_recovery_codes (
    user_id   VARCHAR(128) NOT NULL,
    code_hash CHAR(64) NOT NULL,
    PRIMARY KEY (user_id, code_hash)
);

-- Fingerprint pepper version per tenant id (rows exist only once rotated;
-- absent = version 1). Kept apart from axess_tenants so tenants without a
-- record (apps with their own tenant table) can rotate too.
CREATE TABLE IF NOT EXISTS axess_tenant_peppers (
    tenant_id VARCHAR(128) NOT NULL PRIMARY KEY,
    version   BIGINT NOT NULL
);

-- Per-tenant usage, read on every submit and by workers enforcing running limits: the bytes each
-- record holds (its input's size plus its artifacts' sizes, kept by every write), and an index
-- that answers a tenant's queued and running counts and stored bytes without reading a row.
ALTER TABLE converto_conversions ADD COLUMN stored_bytes INTEGER NOT NULL DEFAULT 0;
UPDATE converto_conversions SET stored_bytes = input_size + COALESCE(
    (SELECT SUM(json_extract(a.value, '$.size')) FROM json_each(converto_conversions.artifacts) AS a), 0);
CREATE INDEX IF NOT EXISTS converto_conversions_tenant_usage
    ON converto_conversions (tenant, status, stored_bytes);

-- Operators' per-tenant limit overrides (`converto tenants set`): the fields set, as a JSON
-- object. Timestamps are INTEGER nanoseconds since the Unix epoch (UTC), as elsewhere.
CREATE TABLE IF NOT EXISTS converto_tenant_limits (
    tenant     TEXT    NOT NULL PRIMARY KEY,
    limits     TEXT    NOT NULL,
    updated_at INTEGER NOT NULL
);

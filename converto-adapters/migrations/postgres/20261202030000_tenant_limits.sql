-- Per-tenant usage, read on every submit and by workers enforcing running limits.
--
-- The bytes a record holds: its input's size plus its artifacts' sizes. A generated column, so
-- every write keeps it without the store's statements naming it; the function is immutable (it
-- reads only its arguments), as a generated column requires.
CREATE FUNCTION conversion_stored_bytes(input_size bigint, artifacts jsonb) RETURNS bigint
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN input_size + coalesce(
        (SELECT sum((a ->> 'size')::bigint) FROM jsonb_array_elements(artifacts) AS a), 0);

ALTER TABLE conversions ADD COLUMN stored_bytes bigint NOT NULL
    GENERATED ALWAYS AS (conversion_stored_bytes(input_size, artifacts)) STORED;

-- A tenant's queued and running counts and stored bytes, from this index alone (an index-only
-- scan over the tenant's own entries).
CREATE INDEX conversions_tenant_usage ON conversions (tenant, status) INCLUDE (stored_bytes);

-- Operators' per-tenant limit overrides (`converto tenants set`): the fields set, as an object.
CREATE TABLE tenant_limits (
    tenant     text        PRIMARY KEY,
    limits     jsonb       NOT NULL,
    updated_at timestamptz NOT NULL
);

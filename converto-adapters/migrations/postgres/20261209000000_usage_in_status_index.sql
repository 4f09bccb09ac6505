-- A tenant's usage (its queued and running counts and stored bytes) is read from the index of
-- its records by status (`conversions_tenant_status_created`), which now carries the stored
-- bytes, instead of an index of its own. Both lead with the tenant and the status; keeping two
-- cost one more entry in every row version, and every status change writes a new one (status
-- is indexed, so it is never a HOT update): three entries per conversion run through the
-- engine. The query is the same index-only scan over the tenant's entries.
DROP INDEX IF EXISTS conversions_tenant_status_created;
CREATE INDEX conversions_tenant_status_created ON conversions (tenant, status, created_at, id)
    INCLUDE (stored_bytes);
DROP INDEX IF EXISTS conversions_tenant_usage;

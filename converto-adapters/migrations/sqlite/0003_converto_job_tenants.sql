-- Fair scheduling across tenants: every job carries its conversion's tenant, and reserves take
-- turns between tenants (see `converto_core::queue` for the order). Jobs queued before this
-- migration belong to the 'default' tenant, as do conversions without one.
ALTER TABLE converto_jobs ADD COLUMN tenant TEXT NOT NULL DEFAULT 'default';

-- Reserves skip through this index to find the tenants with work, then walk each tenant's jobs
-- in delivery order. Partial, so dead letters never enter it. It replaces the global order.
CREATE INDEX IF NOT EXISTS converto_jobs_tenant_order
    ON converto_jobs (tenant, priority DESC, not_before, seq)
    WHERE state IN ('queued', 'leased');
DROP INDEX IF EXISTS converto_jobs_order;

-- Each tenant's turn count: how far through the rounds of deliveries it has been served. A
-- tenant without a row has count 0.
CREATE TABLE IF NOT EXISTS converto_job_tenants (
    tenant TEXT    NOT NULL PRIMARY KEY,
    turns  INTEGER NOT NULL DEFAULT 0 CHECK (turns >= 0)
);

-- Fair scheduling across tenants: every job carries its conversion's tenant, and reserves take
-- turns between tenants (see `converto_core::queue` for the order). Jobs queued before this
-- migration belong to the 'default' tenant, as do conversions without one.
ALTER TABLE jobs ADD COLUMN tenant text NOT NULL DEFAULT 'default';

-- The reserve statement skips through this index to find the tenants with work (one probe per
-- tenant), then walks each tenant's jobs in delivery order. Partial, like the index it replaces,
-- so dead letters never enter it.
CREATE INDEX jobs_tenant_reserve ON jobs (tenant, priority DESC, not_before, seq)
    WHERE state IN ('ready', 'leased');
DROP INDEX jobs_reserve;

-- Each tenant's turn count: how far through the rounds of deliveries it has been served. A
-- tenant without a row has count 0. Rows are small and one per tenant ever served.
CREATE TABLE job_tenants (
    tenant text   PRIMARY KEY,
    turns  bigint NOT NULL DEFAULT 0 CHECK (turns >= 0)
);

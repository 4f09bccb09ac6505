-- Reserves walk each tenant's ready jobs in an index that holds only ready jobs. The index it
-- replaces (`jobs_tenant_reserve`) held leased jobs too, for the leases that run out: every
-- reserve then read, and filtered out, each leased job ahead of the first ready one (a running
-- engine's whole concurrency and prefetch: about 600 rows at concurrency 512, two thirds of a
-- reserve's work), and every lease wrote a new entry into it. Jobs whose lease has run out are
-- found through `jobs_lease_expiry` instead, a range that is empty unless a worker died.
CREATE INDEX jobs_tenant_ready ON jobs (tenant, priority DESC, not_before, seq)
    WHERE state = 'ready';
DROP INDEX jobs_tenant_reserve;

-- converto's PostgreSQL schema. Table names are unqualified on purpose: the migrator and every
-- pooled connection run with `search_path` set to the configured schema (default `converto`),
-- so the same migrations can install converto into any schema of an existing database.

-- Conversion records: the columns the list filters use are real columns; the nested parts of
-- the record are JSONB.
CREATE TABLE conversions (
    id              uuid        PRIMARY KEY,
    tenant          text        NOT NULL,
    source_format   text        NOT NULL,
    target_format   text        NOT NULL,
    options         jsonb       NOT NULL,
    labels          jsonb       NOT NULL DEFAULT '{}'::jsonb,
    priority        integer     NOT NULL,
    status          text        NOT NULL
        CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    progress        jsonb,
    attempts        bigint      NOT NULL CHECK (attempts >= 0),
    error           jsonb,
    artifacts       jsonb       NOT NULL DEFAULT '[]'::jsonb,
    input_key       text        NOT NULL,
    input_name      text,
    input_size      bigint      NOT NULL CHECK (input_size >= 0),
    idempotency_key text,
    created_at      timestamptz NOT NULL,
    started_at      timestamptz,
    finished_at     timestamptz,
    updated_at      timestamptz NOT NULL,
    version         bigint      NOT NULL,
    -- NULL keys are distinct, so only records that carry a key are constrained.
    CONSTRAINT conversions_idempotency UNIQUE (tenant, idempotency_key)
);

-- Lists are newest first by id (UUIDv7 sorts by time), usually within one tenant or status.
CREATE INDEX conversions_tenant_id ON conversions (tenant, id DESC);
CREATE INDEX conversions_status_id ON conversions (status, id DESC);
CREATE INDEX conversions_labels ON conversions USING gin (labels jsonb_path_ops);

-- The job queue. `state` is 'ready' (deliverable from `not_before`), 'leased' (held until
-- `expires_at`, then deliverable again) or 'dead'. Acked jobs are deleted.
CREATE SEQUENCE jobs_seq;

CREATE TABLE jobs (
    id          uuid        PRIMARY KEY,
    priority    integer     NOT NULL,
    not_before  timestamptz NOT NULL,
    seq         bigint      NOT NULL DEFAULT nextval('jobs_seq'),
    deliveries  bigint      NOT NULL DEFAULT 0,
    state       text        NOT NULL DEFAULT 'ready' CHECK (state IN ('ready', 'leased', 'dead')),
    token       bigint,
    expires_at  timestamptz,
    error       jsonb,
    CHECK ((state = 'leased') = (token IS NOT NULL AND expires_at IS NOT NULL))
);

-- The reserve query walks this index in delivery order. It is partial so dead letters never
-- enter it, whatever their number.
CREATE INDEX jobs_reserve ON jobs (priority DESC, not_before, seq)
    WHERE state IN ('ready', 'leased');
-- When the next delayed job or lease comes due (the reservers' timer). The `token` terms are
-- implied by the CHECK above, so they select the same rows; they are there so that the reserve
-- query, which does not mention `token`, can never pick these indexes over `jobs_reserve`.
CREATE INDEX jobs_ready_due ON jobs (not_before) WHERE state = 'ready' AND token IS NULL;
CREATE INDEX jobs_lease_expiry ON jobs (expires_at) WHERE state = 'leased' AND token IS NOT NULL;

-- A queue table churns: every job is inserted, updated and deleted. Vacuum it early so dead
-- tuples do not pile up between autovacuum runs.
ALTER TABLE jobs SET (
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_analyze_scale_factor = 0.02
);

-- The latest progress event of each conversion (what `ProgressBus::latest` reads).
CREATE TABLE progress (
    id         uuid        PRIMARY KEY,
    event      jsonb       NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

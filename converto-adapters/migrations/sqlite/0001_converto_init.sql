-- converto's tables. Timestamps are INTEGER nanoseconds since the Unix epoch (UTC), so they
-- compare and sort as numbers and read back exactly.

CREATE TABLE IF NOT EXISTS converto_conversions (
    id              TEXT    NOT NULL PRIMARY KEY, -- UUIDv7, hyphenated lowercase: sorts by time
    tenant          TEXT    NOT NULL,
    source_format   TEXT    NOT NULL,
    target_format   TEXT    NOT NULL,
    options         TEXT    NOT NULL,             -- JSON
    labels          TEXT    NOT NULL,             -- JSON object of strings
    priority        INTEGER NOT NULL,
    status          TEXT    NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    progress        TEXT,                         -- JSON
    attempts        INTEGER NOT NULL,
    error           TEXT,                         -- JSON {code, message}
    artifacts       TEXT    NOT NULL,             -- JSON array
    input_key       TEXT    NOT NULL,
    input_name      TEXT,
    input_size      INTEGER NOT NULL,
    idempotency_key TEXT,
    created_at      INTEGER NOT NULL,
    started_at      INTEGER,
    finished_at     INTEGER,
    updated_at      INTEGER NOT NULL,
    version         INTEGER NOT NULL,
    UNIQUE (tenant, idempotency_key)
);

CREATE INDEX IF NOT EXISTS converto_conversions_tenant_id ON converto_conversions (tenant, id);
CREATE INDEX IF NOT EXISTS converto_conversions_status_id ON converto_conversions (status, id);
CREATE INDEX IF NOT EXISTS converto_conversions_updated ON converto_conversions (updated_at);
CREATE INDEX IF NOT EXISTS converto_conversions_created ON converto_conversions (created_at);
CREATE INDEX IF NOT EXISTS converto_conversions_formats ON converto_conversions (source_format, target_format);

CREATE TABLE IF NOT EXISTS converto_jobs (
    id            TEXT    NOT NULL PRIMARY KEY,   -- the conversion id
    priority      INTEGER NOT NULL,
    not_before    INTEGER NOT NULL,
    seq           INTEGER NOT NULL,               -- enqueue order, renewed on retry
    deliveries    INTEGER NOT NULL,
    state         TEXT    NOT NULL CHECK (state IN ('queued', 'leased', 'dead')),
    lease_token   INTEGER,
    lease_expires INTEGER,
    error_code    TEXT,                           -- why it was dead-lettered
    error_message TEXT
);

-- Delivery order among queued jobs.
CREATE INDEX IF NOT EXISTS converto_jobs_order ON converto_jobs (state, priority DESC, not_before, seq);
CREATE INDEX IF NOT EXISTS converto_jobs_due ON converto_jobs (state, not_before);
CREATE INDEX IF NOT EXISTS converto_jobs_leases ON converto_jobs (state, lease_expires);
CREATE INDEX IF NOT EXISTS converto_jobs_seq ON converto_jobs (seq);

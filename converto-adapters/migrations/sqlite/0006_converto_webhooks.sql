-- Webhooks (converto_core::webhook): registered endpoints, the tenants' signing secrets,
-- per-conversion subscriptions, messages (one per event and target; the delivery queue's job
-- id is the message id) and the last attempts of each conversion. Records that are read whole
-- are kept as JSON in `body`; the columns are what the statements select by.
CREATE TABLE IF NOT EXISTS converto_webhook_endpoints (
    id     TEXT NOT NULL PRIMARY KEY,
    tenant TEXT NOT NULL,
    body   TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS converto_webhook_endpoints_tenant
    ON converto_webhook_endpoints (tenant, id);

CREATE TABLE IF NOT EXISTS converto_webhook_tenant_secrets (
    tenant  TEXT NOT NULL PRIMARY KEY,
    secrets TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS converto_webhook_subscriptions (
    conversion_id TEXT NOT NULL PRIMARY KEY,
    body          TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS converto_webhook_messages (
    id            TEXT NOT NULL PRIMARY KEY,
    conversion_id TEXT NOT NULL,
    state         TEXT NOT NULL,
    body          TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS converto_webhook_attempts (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    conversion_id TEXT    NOT NULL,
    tenant        TEXT    NOT NULL,
    body          TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS converto_webhook_attempts_conversion
    ON converto_webhook_attempts (conversion_id, seq);
CREATE INDEX IF NOT EXISTS converto_webhook_messages_conversion ON converto_webhook_messages (conversion_id);

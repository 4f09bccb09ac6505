-- Webhooks (converto_core::webhook): registered endpoints, the tenants' signing secrets,
-- per-conversion subscriptions, messages (one per event and target; the delivery queue's job
-- id is the message id) and the last attempts of each conversion. Records read whole are kept
-- as JSON text in `body`; the columns are what the statements select by.
CREATE TABLE webhook_endpoints (
    id     text NOT NULL PRIMARY KEY,
    tenant text NOT NULL,
    body   text NOT NULL
);
CREATE INDEX webhook_endpoints_tenant ON webhook_endpoints (tenant, id);

CREATE TABLE webhook_tenant_secrets (
    tenant  text NOT NULL PRIMARY KEY,
    secrets text NOT NULL
);

CREATE TABLE webhook_subscriptions (
    conversion_id text NOT NULL PRIMARY KEY,
    body          text NOT NULL
);

CREATE TABLE webhook_messages (
    id            text NOT NULL PRIMARY KEY,
    conversion_id text NOT NULL,
    state         text NOT NULL,
    body          text NOT NULL
);
CREATE INDEX webhook_messages_conversion ON webhook_messages (conversion_id);

CREATE TABLE webhook_attempts (
    seq           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    conversion_id text   NOT NULL,
    tenant        text   NOT NULL,
    body          text   NOT NULL
);
CREATE INDEX webhook_attempts_conversion ON webhook_attempts (conversion_id, seq);

-- API keys of the HTTP service, kept as the SHA-256 of the key (hex); the key itself is never
-- stored.
CREATE TABLE api_keys (
    id         text        PRIMARY KEY,
    key_hash   text        NOT NULL UNIQUE,
    prefix     text        NOT NULL,
    tenant     text        NOT NULL,
    scopes     text        NOT NULL,  -- comma-separated: read,write,admin
    created_at timestamptz NOT NULL,
    expires_at timestamptz,
    revoked_at timestamptz
);

CREATE INDEX api_keys_created ON api_keys (created_at, id);

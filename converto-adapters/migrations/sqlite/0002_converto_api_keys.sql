-- API keys of the HTTP service, kept as the SHA-256 of the key (hex); the key itself is never
-- stored. Timestamps are INTEGER nanoseconds since the Unix epoch (UTC), as elsewhere.
CREATE TABLE IF NOT EXISTS converto_api_keys (
    id         TEXT    NOT NULL PRIMARY KEY,
    key_hash   TEXT    NOT NULL UNIQUE,
    prefix     TEXT    NOT NULL,
    tenant     TEXT    NOT NULL,
    scopes     TEXT    NOT NULL,            -- comma-separated: read,write,admin
    created_at INTEGER NOT NULL,
    expires_at INTEGER,
    revoked_at INTEGER
);

CREATE INDEX IF NOT EXISTS converto_api_keys_created ON converto_api_keys (created_at, id);

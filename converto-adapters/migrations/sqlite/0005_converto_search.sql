-- Search (see `converto_core::search`): a description and tags on every record, a full-text
-- index over the file name and description, a tag index, and indexes for every list order.

ALTER TABLE converto_conversions ADD COLUMN description TEXT;
-- A JSON array of lowercase tags, sorted and distinct.
ALTER TABLE converto_conversions ADD COLUMN tags TEXT NOT NULL DEFAULT '[]';
-- The words the full-text index holds (`converto_core::search::index_text`): the file name's
-- and the description's words, lowercased. Written by the store; indexed by the FTS table.
ALTER TABLE converto_conversions ADD COLUMN search_text TEXT NOT NULL DEFAULT '';
UPDATE converto_conversions SET search_text = lower(COALESCE(input_name, ''));

-- Full text: FTS5 over `search_text`, stemmed by the porter tokenizer (words as unicode61 splits
-- them, accents kept so every backend sees the same words), with prefix indexes for short
-- prefixes. External content: the text lives once, in converto_conversions, and the index
-- follows its rowid through the triggers below. (VACUUM may renumber the rowids of a table
-- without an INTEGER PRIMARY KEY; after one, run
-- `INSERT INTO converto_conversions_fts(converto_conversions_fts) VALUES ('rebuild')`.)
CREATE VIRTUAL TABLE IF NOT EXISTS converto_conversions_fts USING fts5(
    search_text,
    content = 'converto_conversions',
    content_rowid = 'rowid',
    tokenize = 'porter unicode61 remove_diacritics 0',
    prefix = '2 3'
);
INSERT INTO converto_conversions_fts (converto_conversions_fts) VALUES ('rebuild');

-- Tags: one row per tag of a record, so `tag IN (...)` is an index search. Tags never change
-- after a record is created; the triggers keep this table in step anyway.
CREATE TABLE IF NOT EXISTS converto_conversion_tags (
    tag    TEXT NOT NULL,
    tenant TEXT NOT NULL,
    id     TEXT NOT NULL,
    PRIMARY KEY (tag, tenant, id)
) WITHOUT ROWID;

CREATE TRIGGER IF NOT EXISTS converto_conversions_search_insert
AFTER INSERT ON converto_conversions BEGIN
    INSERT INTO converto_conversions_fts (rowid, search_text) VALUES (NEW.rowid, NEW.search_text);
    INSERT OR IGNORE INTO converto_conversion_tags (tag, tenant, id)
        SELECT value, NEW.tenant, NEW.id FROM json_each(NEW.tags);
END;

CREATE TRIGGER IF NOT EXISTS converto_conversions_search_delete
AFTER DELETE ON converto_conversions BEGIN
    INSERT INTO converto_conversions_fts (converto_conversions_fts, rowid, search_text)
        VALUES ('delete', OLD.rowid, OLD.search_text);
    DELETE FROM converto_conversion_tags
        WHERE tag IN (SELECT value FROM json_each(OLD.tags)) AND tenant = OLD.tenant AND id = OLD.id;
END;

CREATE TRIGGER IF NOT EXISTS converto_conversions_search_update
AFTER UPDATE OF search_text, tags, tenant, id ON converto_conversions BEGIN
    INSERT INTO converto_conversions_fts (converto_conversions_fts, rowid, search_text)
        VALUES ('delete', OLD.rowid, OLD.search_text);
    INSERT INTO converto_conversions_fts (rowid, search_text) VALUES (NEW.rowid, NEW.search_text);
    DELETE FROM converto_conversion_tags
        WHERE tag IN (SELECT value FROM json_each(OLD.tags)) AND tenant = OLD.tenant AND id = OLD.id;
    INSERT OR IGNORE INTO converto_conversion_tags (tag, tenant, id)
        SELECT value, NEW.tenant, NEW.id FROM json_each(NEW.tags);
END;

-- Every list order within a tenant, walked in either direction: by creation time, by finish
-- time (finished records only), and by creation time within a status.
CREATE INDEX IF NOT EXISTS converto_conversions_tenant_created
    ON converto_conversions (tenant, created_at, id);
CREATE INDEX IF NOT EXISTS converto_conversions_tenant_finished
    ON converto_conversions (tenant, finished_at, id) WHERE finished_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS converto_conversions_tenant_status_created
    ON converto_conversions (tenant, status, created_at, id);
-- The same orders across tenants (an embedder's engine lists without a tenant).
CREATE INDEX IF NOT EXISTS converto_conversions_finished
    ON converto_conversions (finished_at, id) WHERE finished_at IS NOT NULL;

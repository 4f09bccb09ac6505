-- Faster searches (see `list_query` in src/sqlite/store.rs):
-- * tags, and now labels, are indexed by the record's rowid, so that tag, label and full-text
--   matches meet as sets of integers, without reading the records they name;
-- * the full-text index keeps prefix indexes for prefixes of 2 to 8 characters, so a prefix
--   query reads one list of matches instead of merging every word that starts with it.
-- Like the full-text index, both tables follow the records' rowids, which VACUUM may renumber
-- (the table has no INTEGER PRIMARY KEY). converto never runs VACUUM; after one, rebuild them:
--   INSERT INTO converto_conversions_fts (converto_conversions_fts) VALUES ('rebuild');
--   DELETE FROM converto_conversion_tags; DELETE FROM converto_conversion_labels;
--   then the two INSERT ... SELECT statements below.

DROP TRIGGER IF EXISTS converto_conversions_search_insert;
DROP TRIGGER IF EXISTS converto_conversions_search_delete;
DROP TRIGGER IF EXISTS converto_conversions_search_update;

DROP TABLE IF EXISTS converto_conversion_tags;
CREATE TABLE converto_conversion_tags (
    tag    TEXT    NOT NULL,
    tenant TEXT    NOT NULL,
    r      INTEGER NOT NULL, -- converto_conversions.rowid
    PRIMARY KEY (tag, tenant, r)
) WITHOUT ROWID;
INSERT OR IGNORE INTO converto_conversion_tags (tag, tenant, r)
    SELECT t.value, c.tenant, c.rowid FROM converto_conversions AS c, json_each(c.tags) AS t;

-- Labels: one row per label of a record, so a label filter is an index search, as a tag filter
-- is, instead of parsing every record's JSON. Labels never change after a record is created;
-- the triggers keep this table in step anyway.
CREATE TABLE IF NOT EXISTS converto_conversion_labels (
    key    TEXT    NOT NULL,
    value  TEXT    NOT NULL,
    tenant TEXT    NOT NULL,
    r      INTEGER NOT NULL, -- converto_conversions.rowid
    PRIMARY KEY (key, value, tenant, r)
) WITHOUT ROWID;
INSERT OR IGNORE INTO converto_conversion_labels (key, value, tenant, r)
    SELECT l.key, l.value, c.tenant, c.rowid FROM converto_conversions AS c, json_each(c.labels) AS l;

DROP TABLE IF EXISTS converto_conversions_fts;
CREATE VIRTUAL TABLE converto_conversions_fts USING fts5(
    search_text,
    content = 'converto_conversions',
    content_rowid = 'rowid',
    tokenize = 'porter unicode61 remove_diacritics 0',
    prefix = '2 3 4 5 6 7 8'
);
INSERT INTO converto_conversions_fts (converto_conversions_fts) VALUES ('rebuild');

CREATE TRIGGER converto_conversions_search_insert
AFTER INSERT ON converto_conversions BEGIN
    INSERT INTO converto_conversions_fts (rowid, search_text) VALUES (NEW.rowid, NEW.search_text);
    INSERT OR IGNORE INTO converto_conversion_tags (tag, tenant, r)
        SELECT value, NEW.tenant, NEW.rowid FROM json_each(NEW.tags);
    INSERT OR IGNORE INTO converto_conversion_labels (key, value, tenant, r)
        SELECT key, value, NEW.tenant, NEW.rowid FROM json_each(NEW.labels);
END;

CREATE TRIGGER converto_conversions_search_delete
AFTER DELETE ON converto_conversions BEGIN
    INSERT INTO converto_conversions_fts (converto_conversions_fts, rowid, search_text)
        VALUES ('delete', OLD.rowid, OLD.search_text);
    DELETE FROM converto_conversion_tags
        WHERE tag IN (SELECT value FROM json_each(OLD.tags)) AND tenant = OLD.tenant AND r = OLD.rowid;
    DELETE FROM converto_conversion_labels
        WHERE (key, value) IN (SELECT key, value FROM json_each(OLD.labels))
        AND tenant = OLD.tenant AND r = OLD.rowid;
END;

CREATE TRIGGER converto_conversions_search_update
AFTER UPDATE OF search_text, tags, labels, tenant, id ON converto_conversions BEGIN
    INSERT INTO converto_conversions_fts (converto_conversions_fts, rowid, search_text)
        VALUES ('delete', OLD.rowid, OLD.search_text);
    INSERT INTO converto_conversions_fts (rowid, search_text) VALUES (NEW.rowid, NEW.search_text);
    DELETE FROM converto_conversion_tags
        WHERE tag IN (SELECT value FROM json_each(OLD.tags)) AND tenant = OLD.tenant AND r = OLD.rowid;
    INSERT OR IGNORE INTO converto_conversion_tags (tag, tenant, r)
        SELECT value, NEW.tenant, NEW.rowid FROM json_each(NEW.tags);
    DELETE FROM converto_conversion_labels
        WHERE (key, value) IN (SELECT key, value FROM json_each(OLD.labels))
        AND tenant = OLD.tenant AND r = OLD.rowid;
    INSERT OR IGNORE INTO converto_conversion_labels (key, value, tenant, r)
        SELECT key, value, NEW.tenant, NEW.rowid FROM json_each(NEW.labels);
END;

-- Tag and label filters through the full-text index (see `list_query` in src/sqlite/store.rs).
--
-- Tags and labels become words of a second column, `facets`, of the full-text index, so that
-- one FTS5 query intersects tag, label and text matches by merging sorted lists of rowids,
-- instead of SQL intersecting sets read from three places (a label and a word that each match
-- a quarter of the records took 5 ms to find that they never meet; now 0.5 ms). Each tag and
-- label is written twice, once for any tenant and once for the record's tenant, so a tenant's
-- rare tag stays rare however common other tenants make it:
--   g<tag>0             a tag, any tenant          t<tenant>x<tag>0           a tenant's tag
--   k<key>x<value>0     a label, any tenant        l<tenant>x<key>x<value>0   a tenant's label
-- where <...> is the upper-case hex of the text's UTF-8 bytes (the tokenizer folds it to lower
-- case). The words are letters and digits only, so unicode61 keeps each whole, and end in a
-- digit, so the porter stemmer, which only strips letter suffixes, leaves them as they are.
-- FTS5 compares the first 32,766 characters of a word: label filters longer than that are
-- checked against the record as well (`list_query`).
--
-- The index is contentless (the facets are not a column of converto_conversions): the triggers
-- below write each record's words, read from the view converto_conversion_search_words, and
-- delete them with the same words, read before the row changes or goes. The tag and label
-- tables that searches used before are gone.
--
-- Like the old index, this one follows the records' rowids, which VACUUM may renumber (the
-- table has no INTEGER PRIMARY KEY). converto never runs VACUUM; after one, rebuild the index:
--   INSERT INTO converto_conversions_fts (converto_conversions_fts) VALUES ('delete-all');
--   INSERT INTO converto_conversions_fts (rowid, search_text, facets)
--       SELECT r, search_text, facets FROM converto_conversion_search_words;

DROP TRIGGER IF EXISTS converto_conversions_search_insert;
DROP TRIGGER IF EXISTS converto_conversions_search_delete;
DROP TRIGGER IF EXISTS converto_conversions_search_update;
DROP TABLE IF EXISTS converto_conversion_tags;
DROP TABLE IF EXISTS converto_conversion_labels;
DROP TABLE IF EXISTS converto_conversions_fts;

-- What the index holds for each record: its rowid, its text, its facet words.
CREATE VIEW converto_conversion_search_words AS
SELECT c.rowid AS r, c.search_text AS search_text,
    (SELECT group_concat(word, ' ') FROM (
        SELECT 'g' || hex(value) || '0' AS word FROM json_each(c.tags)
        UNION ALL SELECT 't' || hex(c.tenant) || 'x' || hex(value) || '0' FROM json_each(c.tags)
        UNION ALL SELECT 'k' || hex(key) || 'x' || hex(value) || '0' FROM json_each(c.labels)
        UNION ALL SELECT 'l' || hex(c.tenant) || 'x' || hex(key) || 'x' || hex(value) || '0'
            FROM json_each(c.labels))) AS facets
FROM converto_conversions AS c;

CREATE VIRTUAL TABLE converto_conversions_fts USING fts5(
    search_text,
    facets,
    content = '',
    tokenize = 'porter unicode61 remove_diacritics 0',
    prefix = '2 3 4 5 6 7 8'
);
INSERT INTO converto_conversions_fts (rowid, search_text, facets)
    SELECT r, search_text, facets FROM converto_conversion_search_words;

CREATE TRIGGER converto_conversions_search_insert
AFTER INSERT ON converto_conversions BEGIN
    INSERT INTO converto_conversions_fts (rowid, search_text, facets)
        SELECT r, search_text, facets FROM converto_conversion_search_words WHERE r = NEW.rowid;
END;

-- Before the row goes, while the view still reads its words.
CREATE TRIGGER converto_conversions_search_delete
BEFORE DELETE ON converto_conversions BEGIN
    INSERT INTO converto_conversions_fts (converto_conversions_fts, rowid, search_text, facets)
        SELECT 'delete', r, search_text, facets FROM converto_conversion_search_words
        WHERE r = OLD.rowid;
END;

CREATE TRIGGER converto_conversions_search_unindex
BEFORE UPDATE OF search_text, tags, labels, tenant ON converto_conversions BEGIN
    INSERT INTO converto_conversions_fts (converto_conversions_fts, rowid, search_text, facets)
        SELECT 'delete', r, search_text, facets FROM converto_conversion_search_words
        WHERE r = OLD.rowid;
END;

CREATE TRIGGER converto_conversions_search_update
AFTER UPDATE OF search_text, tags, labels, tenant ON converto_conversions BEGIN
    INSERT INTO converto_conversions_fts (rowid, search_text, facets)
        SELECT r, search_text, facets FROM converto_conversion_search_words WHERE r = NEW.rowid;
END;

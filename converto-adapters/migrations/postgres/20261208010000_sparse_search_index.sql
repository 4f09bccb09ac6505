-- The full-text index keeps only records with words to find, like the tag and label indexes
-- (20261208000000_sparse_indexes.sql): a record submitted without a file name or description
-- (an embedder's bytes) wrote a placeholder entry for its empty `tsvector` in every row version.
-- A text search only matches records with words; the store's statements say `search <> ''`.
DROP INDEX IF EXISTS conversions_search;
CREATE INDEX conversions_search ON conversions USING gin (search) WHERE search <> ''::tsvector;

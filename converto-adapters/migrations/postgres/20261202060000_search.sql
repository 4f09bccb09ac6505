-- Search (see `converto_core::search`): a description and tags on every record, a full-text
-- index over the file name and description, a tag index, and indexes for every list order.

-- English stems without stop words: every word of a file name or description is findable (the
-- memory and SQLite stores drop none either). Numbers and other tokens stay as they are.
CREATE TEXT SEARCH DICTIONARY converto_english_stem (
    TEMPLATE = pg_catalog.snowball,
    LANGUAGE = english
);
CREATE TEXT SEARCH CONFIGURATION converto_search (COPY = pg_catalog.simple);
ALTER TEXT SEARCH CONFIGURATION converto_search
    ALTER MAPPING FOR asciiword, word, numword, asciihword, hword, hword_asciipart, hword_part,
        hword_numpart
    WITH converto_english_stem;

ALTER TABLE conversions ADD COLUMN description text;
-- Lowercase tags, sorted and distinct.
ALTER TABLE conversions ADD COLUMN tags text[] NOT NULL DEFAULT '{}';
-- The words of the file name and description (`converto_core::search::index_text`, split by the
-- store so every backend indexes the same words), stemmed.
ALTER TABLE conversions ADD COLUMN search tsvector NOT NULL DEFAULT ''::tsvector;
UPDATE conversions SET search = to_tsvector('converto_search'::regconfig,
    regexp_replace(lower(coalesce(input_name, '')), '[^[:alnum:]]+', ' ', 'g'));

CREATE INDEX conversions_search ON conversions USING gin (search);
CREATE INDEX conversions_tags ON conversions USING gin (tags);
-- Every list order within a tenant, walked in either direction: by creation time, by finish
-- time (finished records only), and by creation time within a status.
CREATE INDEX conversions_tenant_created ON conversions (tenant, created_at, id);
CREATE INDEX conversions_tenant_finished ON conversions (tenant, finished_at, id)
    WHERE finished_at IS NOT NULL;
CREATE INDEX conversions_tenant_status_created ON conversions (tenant, status, created_at, id);
-- The same orders across tenants (an embedder's engine lists without a tenant).
CREATE INDEX conversions_created ON conversions (created_at, id);
CREATE INDEX conversions_finished ON conversions (finished_at, id) WHERE finished_at IS NOT NULL;

-- Indexes that keep only the records they can find.
--
-- The tag and label indexes keep only the records that have tags or labels. A GIN index holds
-- a placeholder entry for every empty array or object, and every insert and every status
-- change (a new row version, as the status is indexed) wrote one into each, through the index's
-- pending list, whose head every writer locks in turn. A filter by tags or labels only ever
-- matches records that have some; the store says so in its statements (`tags <> '{}'`,
-- `labels <> '{}'`), which lets the planner use these indexes.
DROP INDEX IF EXISTS conversions_tags;
CREATE INDEX conversions_tags ON conversions USING gin (tags) WHERE tags <> '{}'::text[];
DROP INDEX IF EXISTS conversions_labels;
CREATE INDEX conversions_labels ON conversions USING gin (labels jsonb_path_ops)
    WHERE labels <> '{}'::jsonb;

-- Idempotency keys are unique within a tenant; most records have none, and a unique constraint
-- kept an entry for each of them, in every row version. The unique index now holds only the
-- records that have a key; the store's insert names it as its conflict target
-- (`ON CONFLICT (tenant, idempotency_key) WHERE idempotency_key IS NOT NULL`).
ALTER TABLE conversions DROP CONSTRAINT IF EXISTS conversions_idempotency;
CREATE UNIQUE INDEX conversions_idempotency ON conversions (tenant, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

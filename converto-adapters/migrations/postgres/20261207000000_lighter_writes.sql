-- `stored_bytes` becomes a plain column that the store writes with every insert and transition
-- (the record's input size plus its artifacts' sizes, computed where the record is built).
-- As a generated column it ran `conversion_stored_bytes`, an SQL function, for every row every
-- write touched: a tenth of the server's work in a busy engine. The values stay as they are.
ALTER TABLE conversions ALTER COLUMN stored_bytes DROP EXPRESSION;

-- Every list has sorted by created or finished time since the search migration, within a tenant
-- through `conversions_tenant_created` and its siblings; nothing reads `(tenant, id)` any more,
-- and each index is one more entry every insert and status change writes.
DROP INDEX IF EXISTS conversions_tenant_id;

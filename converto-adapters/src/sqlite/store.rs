use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::Utc;
use sqlx::error::ErrorKind;
use sqlx::sqlite::{Sqlite, SqlitePool, SqliteRow};
use sqlx::{QueryBuilder, Row};

use converto_core::conversion::{Conversion, NewConversion, Status, Transition};
use converto_core::store::{
    ConversionStore, Created, ListQuery, Page, StoreError, TenantUsage, transition_by_cas,
};
use converto_core::{ConversionId, Format, search};

use super::{SqliteError, from_nanos, query_error, to_nanos};

/// Every column of a record, in the order `decode` reads them by name.
pub(super) const COLUMNS: &str = "id, tenant, source_format, target_format, options, labels, priority, \
    status, progress, attempts, error, artifacts, input_key, input_name, input_size, \
    idempotency_key, created_at, started_at, finished_at, updated_at, version, description, tags";

/// How many times a transition re-reads and retries after losing a compare-and-set.
const CAS_TRIES: u32 = 64;

impl From<SqliteError> for StoreError {
    fn from(e: SqliteError) -> Self {
        StoreError::Backend(e.into())
    }
}

fn corrupt(column: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("column {column}: {e}"))
}

fn json<T: serde::Serialize>(field: &'static str, value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| corrupt(field, e))
}

fn int<T: TryInto<i64>>(field: &'static str, value: T) -> Result<i64, StoreError> {
    value
        .try_into()
        .map_err(|_| SqliteError::OutOfRange { field }.into())
}

fn column<'r, T>(row: &'r SqliteRow, name: &str) -> Result<T, StoreError>
where
    T: sqlx::Decode<'r, Sqlite> + sqlx::Type<Sqlite>,
{
    row.try_get(name).map_err(|e| corrupt(name, e))
}

fn parsed<T: FromStr>(row: &SqliteRow, name: &str) -> Result<T, StoreError>
where
    T::Err: std::fmt::Display,
{
    let text: String = column(row, name)?;
    text.parse().map_err(|e| corrupt(name, e))
}

fn from_json<T: serde::de::DeserializeOwned>(row: &SqliteRow, name: &str) -> Result<T, StoreError> {
    let text: String = column(row, name)?;
    serde_json::from_str(&text).map_err(|e| corrupt(name, e))
}

fn from_json_opt<T: serde::de::DeserializeOwned>(
    row: &SqliteRow,
    name: &str,
) -> Result<Option<T>, StoreError> {
    let text: Option<String> = column(row, name)?;
    text.map(|t| serde_json::from_str(&t).map_err(|e| corrupt(name, e)))
        .transpose()
}

fn unsigned<T: TryFrom<i64>>(row: &SqliteRow, name: &str) -> Result<T, StoreError> {
    let n: i64 = column(row, name)?;
    T::try_from(n).map_err(|_| corrupt(name, format!("{n} is out of range")))
}

fn decode(row: &SqliteRow) -> Result<Conversion, StoreError> {
    let format = |name: &str| -> Result<Format, StoreError> {
        let text: String = column(row, name)?;
        Format::new(&text).map_err(|e| corrupt(name, e))
    };
    let time_opt = |name: &str| -> Result<_, StoreError> {
        Ok(column::<Option<i64>>(row, name)?.map(from_nanos))
    };
    Ok(Conversion {
        id: parsed::<ConversionId>(row, "id")?,
        tenant: column(row, "tenant")?,
        source_format: format("source_format")?,
        target_format: format("target_format")?,
        options: from_json(row, "options")?,
        labels: from_json(row, "labels")?,
        priority: column(row, "priority")?,
        status: parsed::<Status>(row, "status")?,
        progress: from_json_opt(row, "progress")?,
        attempts: unsigned(row, "attempts")?,
        error: from_json_opt(row, "error")?,
        artifacts: from_json(row, "artifacts")?,
        input_key: column(row, "input_key")?,
        input_name: column(row, "input_name")?,
        input_size: unsigned(row, "input_size")?,
        idempotency_key: column(row, "idempotency_key")?,
        created_at: from_nanos(column(row, "created_at")?),
        started_at: time_opt("started_at")?,
        finished_at: time_opt("finished_at")?,
        updated_at: from_nanos(column(row, "updated_at")?),
        version: unsigned(row, "version")?,
        description: column(row, "description")?,
        tags: from_json(row, "tags")?,
    })
}

/// Conversion records in SQLite: one row each, with the fields filters use in indexed columns
/// and the nested ones (options, labels, progress, error, artifacts) as JSON text.
///
/// Transitions read the row, apply [`Transition::apply`] and write it back with
/// `UPDATE ... WHERE id = ? AND version = ?`; a writer that lost the race reads again, so the
/// status rules are checked against the state that actually wins.
#[derive(Debug, Clone)]
pub struct SqliteConversionStore {
    pool: SqlitePool,
    /// Status reads without the pool's thread hop (file databases only; see `read.rs`).
    pub(super) reader: Option<Arc<super::read::PointReader>>,
}

impl SqliteConversionStore {
    pub(super) fn new(pool: SqlitePool) -> Self {
        Self { pool, reader: None }
    }

    /// The same store, answering [`ConversionStore::get`] through `reader` when it can.
    pub(super) fn with_reader(mut self, reader: Option<super::read::PointReader>) -> Self {
        self.reader = reader.map(Arc::new);
        self
    }

    async fn find(&self, id: ConversionId) -> Result<Option<Conversion>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM converto_conversions WHERE id = ?"
        )))
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await
        .map_err(query_error("get"))?;
        row.as_ref().map(decode).transpose()
    }

    async fn find_by_key(&self, tenant: &str, key: &str) -> Result<Option<Conversion>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM converto_conversions WHERE tenant = ? AND idempotency_key = ?"
        )))
        .bind(tenant)
        .bind(key)
        .fetch_optional(&self.pool)
        .await
        .map_err(query_error("get by idempotency key"))?;
        row.as_ref().map(decode).transpose()
    }

    async fn insert(&self, c: &Conversion) -> Result<Result<(), sqlx::Error>, StoreError> {
        let query = sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO converto_conversions ({COLUMNS}, stored_bytes, search_text) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        )))
        .bind(c.id.to_string())
        .bind(&c.tenant)
        .bind(c.source_format.as_str())
        .bind(c.target_format.as_str())
        .bind(json("options", &c.options)?)
        .bind(json("labels", &c.labels)?)
        .bind(c.priority)
        .bind(c.status.as_str())
        .bind(
            c.progress
                .as_ref()
                .map(|p| json("progress", p))
                .transpose()?,
        )
        .bind(int("attempts", c.attempts)?)
        .bind(c.error.as_ref().map(|e| json("error", e)).transpose()?)
        .bind(json("artifacts", &c.artifacts)?)
        .bind(&c.input_key)
        .bind(&c.input_name)
        .bind(int("input_size", c.input_size)?)
        .bind(&c.idempotency_key)
        .bind(to_nanos(c.created_at))
        .bind(c.started_at.map(to_nanos))
        .bind(c.finished_at.map(to_nanos))
        .bind(to_nanos(c.updated_at))
        .bind(int("version", c.version)?)
        .bind(&c.description)
        .bind(json("tags", &c.tags)?)
        .bind(int("stored_bytes", TenantUsage::bytes_of(c))?)
        .bind(search::index_text(
            c.input_name.as_deref(),
            c.description.as_deref(),
        ));
        Ok(query.execute(&self.pool).await.map(|_| ()))
    }

    /// Writes the fields a transition changes, if the stored version is still `expected`.
    async fn compare_and_set(&self, next: &Conversion, expected: u64) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE converto_conversions SET status = ?, progress = ?, attempts = ?, error = ?, \
             artifacts = ?, started_at = ?, finished_at = ?, updated_at = ?, version = ?, \
             stored_bytes = ? WHERE id = ? AND version = ?",
        )
        .bind(next.status.as_str())
        .bind(
            next.progress
                .as_ref()
                .map(|p| json("progress", p))
                .transpose()?,
        )
        .bind(int("attempts", next.attempts)?)
        .bind(next.error.as_ref().map(|e| json("error", e)).transpose()?)
        .bind(json("artifacts", &next.artifacts)?)
        .bind(next.started_at.map(to_nanos))
        .bind(next.finished_at.map(to_nanos))
        .bind(to_nanos(next.updated_at))
        .bind(int("version", next.version)?)
        .bind(int("stored_bytes", TenantUsage::bytes_of(next))?)
        .bind(next.id.to_string())
        .bind(int("version", expected)?)
        .execute(&self.pool)
        .await
        .map_err(query_error("transition"))?;
        Ok(done.rows_affected() == 1)
    }
}

/// Whether `query` filters by tags, full text or labels: the filters [`list_query`] checks
/// row by row within a window first.
fn searches(query: &ListQuery) -> bool {
    !query.tags.is_empty() || !query.labels.is_empty() || !query.text_terms().is_empty()
}

/// The FTS5 query for full-text terms: each a quoted prefix, all required. Terms are runs of
/// letters and digits only (`search::query_terms`), so nothing in them is FTS5 syntax.
fn fts_query(terms: &[String]) -> String {
    terms
        .iter()
        .map(|t| format!("\"{t}\"*"))
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// How many rows of the list order a search looks at first, then how many the second time,
/// before it lets its tag and text matches drive the query (see [`list_query`]).
pub(crate) const SEARCH_WINDOWS: [usize; 2] = [256, 4096];

/// The statement [`ConversionStore::list`] runs, after `prefix` (e.g. `EXPLAIN QUERY PLAN `).
///
/// Every filter narrows an indexed walk: the tenant's rows in sort order
/// (`converto_conversions_tenant_created`, `_tenant_finished`, `_tenant_status_created`), tags
/// through `converto_conversion_tags`, full text through the FTS5 table; one row more than the
/// page tells whether another page follows.
///
/// A search (tags, full text or labels) runs in up to three steps, because no one plan is fast
/// for both broad and rare matches. With `window`, the statement walks only the first `window`
/// rows of the list order that pass the plain filters (tenant, status, formats, ranges, cursor),
/// and checks each against the tags, text and labels with an index probe: when a quarter of the
/// records match, a page is found after a few dozen rows instead of after reading and sorting
/// every match. If that fills the page (one row more than the limit), those are exactly the
/// first rows of the whole order (any earlier match would lie inside the window). Otherwise
/// the matches are rare, and the statement without `window` lets the tag index and the FTS
/// table find them, then sorts the few it found.
fn list_query(
    query: &ListQuery,
    prefix: &str,
    window: Option<usize>,
) -> Result<QueryBuilder<Sqlite>, StoreError> {
    let limit = query.effective_limit();
    let sort = query.sort;
    let key = if sort.by_finished() {
        "finished_at"
    } else {
        "created_at"
    };
    let (cmp, dir) = if sort.descending() {
        ("<", "DESC")
    } else {
        (">", "ASC")
    };
    let mut sql = QueryBuilder::<Sqlite>::new(format!(
        "{prefix}SELECT {COLUMNS} FROM converto_conversions WHERE "
    ));
    if window.is_some() {
        sql.push("rowid IN (SELECT rowid FROM converto_conversions WHERE 1 = 1");
    } else {
        sql.push("1 = 1");
    }
    if let Some(tenant) = &query.tenant {
        sql.push(" AND tenant = ").push_bind(tenant.clone());
    }
    if !query.statuses.is_empty() {
        sql.push(" AND status IN (");
        let mut list = sql.separated(", ");
        for status in &query.statuses {
            list.push_bind(status.as_str());
        }
        sql.push(")");
    }
    if let Some(format) = &query.source_format {
        sql.push(" AND source_format = ")
            .push_bind(format.as_str().to_owned());
    }
    if let Some(format) = &query.target_format {
        sql.push(" AND target_format = ")
            .push_bind(format.as_str().to_owned());
    }
    if let Some(t) = query.created_after {
        sql.push(" AND created_at >= ").push_bind(to_nanos(t));
    }
    if let Some(t) = query.created_before {
        sql.push(" AND created_at < ").push_bind(to_nanos(t));
    }
    if let Some(t) = query.finished_after {
        sql.push(" AND finished_at >= ").push_bind(to_nanos(t));
    }
    if let Some(t) = query.finished_before {
        sql.push(" AND finished_at < ").push_bind(to_nanos(t));
    }
    if let Some(t) = query.updated_before {
        sql.push(" AND updated_at < ").push_bind(to_nanos(t));
    }
    if sort.by_finished() {
        sql.push(" AND finished_at IS NOT NULL");
    }
    if let Some(cursor) = query.cursor {
        sql.push(format!(" AND ({key}, id) {cmp} ("))
            .push_bind(to_nanos(cursor.at))
            .push(", ")
            .push_bind(cursor.id.to_string())
            .push(")");
    }
    if let Some(window) = window {
        sql.push(format!(" ORDER BY {key} {dir}, id {dir} LIMIT "))
            .push_bind(int("window", window)?)
            .push(")");
    }
    for (key, value) in &query.labels {
        sql.push(" AND EXISTS (SELECT 1 FROM json_each(labels) WHERE json_each.key = ")
            .push_bind(key.clone())
            .push(" AND json_each.value = ")
            .push_bind(value.clone())
            .push(")");
    }
    if !query.tags.is_empty() {
        if window.is_some() {
            // A probe of the tag table's primary key for each row walked.
            sql.push(" AND EXISTS (SELECT 1 FROM converto_conversion_tags AS t WHERE t.tag IN (");
        } else {
            sql.push(" AND id IN (SELECT id FROM converto_conversion_tags WHERE tag IN (");
        }
        let mut list = sql.separated(", ");
        for tag in &query.tags {
            list.push_bind(tag.clone());
        }
        sql.push(")");
        if window.is_some() {
            sql.push(
                " AND t.tenant = converto_conversions.tenant AND t.id = converto_conversions.id",
            );
        } else if let Some(tenant) = &query.tenant {
            sql.push(" AND tenant = ").push_bind(tenant.clone());
        }
        sql.push(")");
    }
    let terms = query.text_terms();
    if !terms.is_empty() {
        // In a window too, the match set is read once (a doclist walk, 2 ms for 25,000 rows)
        // and probed per row: a correlated `MATCH` with a rowid constraint would run the whole
        // full-text query again for every row walked (measured: seconds for a broad term).
        sql.push(
            " AND rowid IN (SELECT rowid FROM converto_conversions_fts \
             WHERE converto_conversions_fts MATCH ",
        )
        .push_bind(fts_query(&terms))
        .push(")");
    }
    sql.push(format!(" ORDER BY {key} {dir}, id {dir} LIMIT "))
        .push_bind(int("limit", limit + 1)?);
    Ok(sql)
}

impl SqliteConversionStore {
    /// `EXPLAIN QUERY PLAN` of the statement [`ConversionStore::list`] runs for `query`: the
    /// plan's lines (`detail` column). For tests that check every search is served from an
    /// index.
    #[doc(hidden)]
    pub async fn explain_list(&self, query: &ListQuery) -> Result<Vec<String>, StoreError> {
        let mut plan = Vec::new();
        let windows = searches(query).then_some(SEARCH_WINDOWS[0]);
        for window in windows.into_iter().map(Some).chain([None]) {
            let rows = list_query(query, "EXPLAIN QUERY PLAN ", window)?
                .build()
                .fetch_all(&self.pool)
                .await
                .map_err(query_error("explain"))?;
            for row in &rows {
                plan.push(column::<String>(row, "detail")?);
            }
        }
        Ok(plan)
    }
}

#[async_trait]
impl ConversionStore for SqliteConversionStore {
    async fn create(&self, new: NewConversion) -> Result<Created, StoreError> {
        if let Some(key) = &new.idempotency_key
            && let Some(existing) = self.find_by_key(&new.tenant, key).await?
        {
            return Ok(Created {
                conversion: existing,
                created: false,
            });
        }
        let record = new.into_record(Utc::now());
        match self.insert(&record).await? {
            Ok(()) => Ok(Created {
                conversion: record,
                created: true,
            }),
            Err(sqlx::Error::Database(db)) if db.kind() == ErrorKind::UniqueViolation => {
                // Either the id exists, or a concurrent create took the idempotency key first.
                if let Some(key) = &record.idempotency_key
                    && let Some(existing) = self.find_by_key(&record.tenant, key).await?
                {
                    return Ok(Created {
                        conversion: existing,
                        created: false,
                    });
                }
                Err(StoreError::AlreadyExists { id: record.id })
            }
            Err(e) => Err(query_error("create")(e).into()),
        }
    }

    async fn get(&self, id: ConversionId) -> Result<Conversion, StoreError> {
        // A closed pool answers with its error, whatever the reader could still read.
        if let Some(reader) = &self.reader
            && !self.pool.is_closed()
            && let Some(found) = reader.get(id)
        {
            return found.ok_or(StoreError::NotFound { id });
        }
        self.find(id).await?.ok_or(StoreError::NotFound { id })
    }

    async fn list(&self, query: &ListQuery) -> Result<Page, StoreError> {
        let limit = query.effective_limit();
        let windows: &[usize] = if searches(query) {
            &SEARCH_WINDOWS
        } else {
            &[]
        };
        for &window in windows {
            let rows = list_query(query, "", Some(window))?
                .build()
                .fetch_all(&self.pool)
                .await
                .map_err(query_error("list"))?;
            if rows.len() > limit {
                let items = rows.iter().map(decode).collect::<Result<Vec<_>, _>>()?;
                return Ok(Page::from_overfetch(items, limit, query.sort));
            }
        }
        let rows = list_query(query, "", None)?
            .build()
            .fetch_all(&self.pool)
            .await
            .map_err(query_error("list"))?;
        let items = rows.iter().map(decode).collect::<Result<Vec<_>, _>>()?;
        Ok(Page::from_overfetch(items, limit, query.sort))
    }

    async fn transition(
        &self,
        id: ConversionId,
        transition: &Transition,
    ) -> Result<Conversion, StoreError> {
        let written = transition_by_cas(
            transition,
            Utc::now,
            CAS_TRIES,
            || self.get(id),
            |next, version| async move {
                Ok(self.compare_and_set(&next, version).await?.then_some(next))
            },
        )
        .await?;
        if let Some(next) = written {
            return Ok(next);
        }
        Err(SqliteError::Contended {
            id: id.to_string(),
            tries: CAS_TRIES,
        }
        .into())
    }

    async fn delete(&self, id: ConversionId) -> Result<Conversion, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM converto_conversions WHERE id = ? RETURNING {COLUMNS}"
        )))
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await
        .map_err(query_error("delete"))?;
        match row {
            Some(row) => decode(&row),
            None => Err(StoreError::NotFound { id }),
        }
    }

    async fn count_by_status(&self) -> Result<BTreeMap<Status, u64>, StoreError> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT status, COUNT(*) FROM converto_conversions GROUP BY status")
                .fetch_all(&self.pool)
                .await
                .map_err(query_error("count"))?;
        let mut counts = BTreeMap::new();
        for (status, n) in rows {
            let status = Status::from_str(&status).map_err(|e| corrupt("status", e))?;
            let n = u64::try_from(n).map_err(|_| corrupt("count", n))?;
            counts.insert(status, n);
        }
        Ok(counts)
    }

    async fn tenant_usage(&self, tenant: &str) -> Result<TenantUsage, StoreError> {
        // Answered from the `converto_conversions_tenant_usage` index alone.
        let (queued, running, bytes): (i64, i64, i64) = sqlx::query_as(
            "SELECT COUNT(CASE WHEN status = 'queued' THEN 1 END), \
                    COUNT(CASE WHEN status = 'running' THEN 1 END), \
                    COALESCE(SUM(stored_bytes), 0) \
             FROM converto_conversions WHERE tenant = ?",
        )
        .bind(tenant)
        .fetch_one(&self.pool)
        .await
        .map_err(query_error("usage"))?;
        let count = |n: i64| u64::try_from(n).map_err(|_| corrupt("usage", n));
        Ok(TenantUsage {
            queued: count(queued)?,
            running: count(running)?,
            stored_bytes: count(bytes)?,
        })
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(super::ping(&self.pool).await?)
    }
}

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::Utc;
use sqlx::Row;
use sqlx::error::ErrorKind;
use sqlx::sqlite::{Sqlite, SqlitePool, SqliteRow};

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

/// One argument of a [`Statement`].
#[derive(Debug)]
pub(super) enum Arg {
    /// A TEXT value.
    Text(String),
    /// An INTEGER value.
    Int(i64),
}

/// SQL with its `?` arguments, bound by the pool (sqlx) or by the direct reader (rusqlite,
/// `read.rs`): the same statement runs on either.
#[derive(Debug, Default)]
pub(super) struct Statement {
    pub(super) sql: String,
    pub(super) args: Vec<Arg>,
}

impl Statement {
    fn push(&mut self, sql: &str) -> &mut Self {
        self.sql.push_str(sql);
        self
    }

    fn text(&mut self, value: impl Into<String>) -> &mut Self {
        self.sql.push('?');
        self.args.push(Arg::Text(value.into()));
        self
    }

    fn int(&mut self, value: i64) -> &mut Self {
        self.sql.push('?');
        self.args.push(Arg::Int(value));
        self
    }

    /// `?, ?, ...` for each of `values`, as text.
    fn texts<'a>(&mut self, values: impl IntoIterator<Item = &'a str>) -> &mut Self {
        for (i, value) in values.into_iter().enumerate() {
            if i > 0 {
                self.sql.push_str(", ");
            }
            self.text(value);
        }
        self
    }

    /// The statement for the pool.
    fn query(&self) -> sqlx::query::Query<'_, Sqlite, sqlx::sqlite::SqliteArguments> {
        let mut query = sqlx::query(sqlx::AssertSqlSafe(self.sql.as_str()));
        for arg in &self.args {
            query = match arg {
                Arg::Text(value) => query.bind(value.as_str()),
                Arg::Int(value) => query.bind(*value),
            };
        }
        query
    }
}

/// The statement [`ConversionStore::list`] runs, after `prefix` (e.g. `EXPLAIN QUERY PLAN `).
///
/// Every filter narrows an indexed walk: the tenant's rows in sort order
/// (`converto_conversions_tenant_created`, `_tenant_finished`, `_tenant_status_created`), tags
/// and labels through `converto_conversion_tags` and `converto_conversion_labels`, full text
/// through the FTS5 table; one row more than the page tells whether another page follows.
///
/// A search (tags, full text or labels) runs in up to three steps, because no one plan is fast
/// for both broad and rare matches. With `window`, the statement walks only the first `window`
/// rows of the list order that pass the plain filters (tenant, status, formats, ranges, cursor),
/// and checks each against the tags and labels with an index probe, and against the text with
/// the full-text matches among the rowids of the window only (FTS5 seeks to a rowid range; the
/// window's rows were mostly created together, so their rowids are close): when a quarter of
/// the records match, a page is found after a few dozen rows instead of after reading and
/// sorting every match. If that fills the page (one row more than the limit), those are exactly
/// the first rows of the whole order (any earlier match would lie inside the window). Otherwise
/// the matches are rare, and the statement without `window` lets the tag, label and full-text
/// indexes find them, then sorts the few it found.
pub(super) fn list_query(
    query: &ListQuery,
    prefix: &str,
    window: Option<usize>,
) -> Result<Statement, StoreError> {
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
    let mut sql = Statement::default();
    sql.push(prefix);
    if window.is_some() {
        sql.push("WITH w AS MATERIALIZED (SELECT rowid AS r FROM converto_conversions WHERE 1 = 1");
    } else {
        sql.push(&format!(
            "SELECT {COLUMNS} FROM converto_conversions WHERE 1 = 1"
        ));
    }
    if let Some(tenant) = &query.tenant {
        sql.push(" AND tenant = ").text(tenant.as_str());
    }
    if !query.statuses.is_empty() {
        sql.push(" AND status IN (")
            .texts(query.statuses.iter().map(|s| s.as_str()))
            .push(")");
    }
    if let Some(format) = &query.source_format {
        sql.push(" AND source_format = ").text(format.as_str());
    }
    if let Some(format) = &query.target_format {
        sql.push(" AND target_format = ").text(format.as_str());
    }
    if let Some(t) = query.created_after {
        sql.push(" AND created_at >= ").int(to_nanos(t));
    }
    if let Some(t) = query.created_before {
        sql.push(" AND created_at < ").int(to_nanos(t));
    }
    if let Some(t) = query.finished_after {
        sql.push(" AND finished_at >= ").int(to_nanos(t));
    }
    if let Some(t) = query.finished_before {
        sql.push(" AND finished_at < ").int(to_nanos(t));
    }
    if let Some(t) = query.updated_before {
        sql.push(" AND updated_at < ").int(to_nanos(t));
    }
    if sort.by_finished() {
        sql.push(" AND finished_at IS NOT NULL");
    }
    if let Some(cursor) = query.cursor {
        sql.push(&format!(" AND ({key}, id) {cmp} ("))
            .int(to_nanos(cursor.at))
            .push(", ")
            .text(cursor.id.to_string())
            .push(")");
    }
    if let Some(window) = window {
        sql.push(&format!(" ORDER BY {key} {dir}, id {dir} LIMIT "))
            .int(int("window", window)?)
            .push(&format!(
                ") SELECT {COLUMNS} FROM converto_conversions AS c WHERE rowid IN (SELECT r FROM w)"
            ));
    }
    let terms = query.text_terms();
    if window.is_some() {
        // Per row of the window: a probe of the tag and label tables' primary keys, and the
        // full-text matches among the window's rowid range (read once).
        for (name, value) in &query.labels {
            sql.push(" AND EXISTS (SELECT 1 FROM converto_conversion_labels AS l WHERE l.key = ")
                .text(name.as_str())
                .push(" AND l.value = ")
                .text(value.as_str())
                .push(" AND l.tenant = c.tenant AND l.r = c.rowid)");
        }
        if !query.tags.is_empty() {
            sql.push(" AND EXISTS (SELECT 1 FROM converto_conversion_tags AS t WHERE t.tag IN (")
                .texts(query.tags.iter().map(String::as_str))
                .push(") AND t.tenant = c.tenant AND t.r = c.rowid)");
        }
        if !terms.is_empty() {
            sql.push(
                " AND rowid IN (SELECT rowid FROM converto_conversions_fts \
                 WHERE converto_conversions_fts MATCH ",
            )
            .text(fts_query(&terms))
            .push(" AND rowid >= (SELECT min(r) FROM w) AND rowid <= (SELECT max(r) FROM w))");
        }
    } else if searches(query) {
        // The rowids every kind of match allows, intersected as sets of integers before any
        // record is read: a label and a word that never meet cost two index reads, not a
        // record read for each match of either.
        sql.push(" AND rowid IN (");
        let mut first = true;
        let mut next = |sql: &mut Statement| {
            if !std::mem::take(&mut first) {
                sql.push(" INTERSECT ");
            }
        };
        for (name, value) in &query.labels {
            next(&mut sql);
            sql.push("SELECT r FROM converto_conversion_labels WHERE key = ")
                .text(name.as_str())
                .push(" AND value = ")
                .text(value.as_str());
            if let Some(tenant) = &query.tenant {
                sql.push(" AND tenant = ").text(tenant.as_str());
            }
        }
        if !query.tags.is_empty() {
            next(&mut sql);
            sql.push("SELECT r FROM converto_conversion_tags WHERE tag IN (")
                .texts(query.tags.iter().map(String::as_str))
                .push(")");
            if let Some(tenant) = &query.tenant {
                sql.push(" AND tenant = ").text(tenant.as_str());
            }
        }
        if !terms.is_empty() {
            next(&mut sql);
            sql.push(
                "SELECT rowid FROM converto_conversions_fts WHERE converto_conversions_fts MATCH ",
            )
            .text(fts_query(&terms));
        }
        sql.push(")");
    }
    sql.push(&format!(" ORDER BY {key} {dir}, id {dir} LIMIT "))
        .int(int("limit", limit + 1)?);
    Ok(sql)
}

/// Below how many records a tag or label filter lets its index drive a search at once, rather
/// than walking windows of the list order first (see [`ConversionStore::list`]).
const RARE: i64 = 2048;

/// How many records (up to [`RARE`]) the rarest tag or label filter of `query` names, or `None`
/// without such filters. A few index entries read per filter.
fn rarest_filter(query: &ListQuery) -> Option<Statement> {
    if query.tags.is_empty() && query.labels.is_empty() {
        return None;
    }
    let mut sql = Statement::default();
    sql.push("SELECT min(n) AS n FROM (SELECT 0 AS n WHERE 0");
    let tenant = |sql: &mut Statement| {
        if let Some(tenant) = &query.tenant {
            sql.push(" AND tenant = ").text(tenant.as_str());
        }
    };
    if !query.tags.is_empty() {
        sql.push(" UNION ALL SELECT count(*) FROM (SELECT 1 FROM converto_conversion_tags WHERE tag IN (")
            .texts(query.tags.iter().map(String::as_str))
            .push(")");
        tenant(&mut sql);
        sql.push(" LIMIT ").int(RARE).push(")");
    }
    for (name, value) in &query.labels {
        sql.push(" UNION ALL SELECT count(*) FROM (SELECT 1 FROM converto_conversion_labels WHERE key = ")
            .text(name.as_str())
            .push(" AND value = ")
            .text(value.as_str());
        tenant(&mut sql);
        sql.push(" LIMIT ").int(RARE).push(")");
    }
    sql.push(")");
    Some(sql)
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
                .query()
                .fetch_all(&self.pool)
                .await
                .map_err(query_error("explain"))?;
            for row in &rows {
                plan.push(column::<String>(row, "detail")?);
            }
        }
        Ok(plan)
    }

    /// What `statement` selects: made by `direct` on the reader's page-reading threads when
    /// they can answer, else by `from_rows` from the pool's rows.
    async fn read_or_pool<T: Send + 'static>(
        &self,
        statement: Statement,
        direct: super::read::Read<T>,
        from_rows: fn(&[SqliteRow]) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let statement = match &self.reader {
            // A closed pool answers with its error, whatever the reader could still read.
            Some(reader) if !self.pool.is_closed() => match reader.read(statement, direct).await {
                Ok(answer) => return Ok(answer),
                Err(declined) => declined,
            },
            _ => statement,
        };
        let rows = statement
            .query()
            .fetch_all(&self.pool)
            .await
            .map_err(query_error("list"))?;
        from_rows(&rows)
    }

    /// The integer (column `n`) `statement` selects.
    async fn integer(&self, statement: Statement) -> Result<i64, StoreError> {
        self.read_or_pool(statement, super::read::integer, |rows| match rows.first() {
            Some(row) => column::<i64>(row, "n"),
            None => Err(corrupt("n", "no row")),
        })
        .await
    }

    /// The records `statement` selects.
    async fn select(&self, statement: Statement) -> Result<Vec<Conversion>, StoreError> {
        self.read_or_pool(statement, super::read::records, |rows| {
            rows.iter().map(decode).collect()
        })
        .await
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
        // A rare tag or label finds its few records faster than any window would.
        let rare = match rarest_filter(query) {
            Some(statement) => self.integer(statement).await? < RARE,
            None => false,
        };
        let windows: &[usize] = if searches(query) && !rare {
            &SEARCH_WINDOWS
        } else {
            &[]
        };
        for &window in windows {
            let items = self.select(list_query(query, "", Some(window))?).await?;
            if items.len() > limit {
                return Ok(Page::from_overfetch(items, limit, query.sort));
            }
        }
        let items = self.select(list_query(query, "", None)?).await?;
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

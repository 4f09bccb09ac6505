use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
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
    /// Keeps the full-text index merged while the store lives (file databases only; see
    /// `merge.rs`).
    merger: Option<Arc<super::merge::IndexMerger>>,
}

impl SqliteConversionStore {
    pub(super) fn new(pool: SqlitePool) -> Self {
        Self {
            pool,
            reader: None,
            merger: None,
        }
    }

    /// The same store, merging its full-text index in the background while it lives.
    pub(super) fn with_merger(mut self) -> Self {
        self.merger = Some(Arc::new(super::merge::IndexMerger::start(
            self.pool.clone(),
        )));
        self
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

/// The FTS5 query for a search's tag, label and full-text filters, or `None` without any:
/// the tags OR-ed, each label and each text term required. Tags and labels are words of the
/// index's `facets` column (see [`facet_word`]); text terms are quoted prefixes in its
/// `search_text` column. Terms are runs of letters and digits only (`search::query_terms`) and
/// facet words letters and digits, so nothing in either is FTS5 syntax.
fn fts_match(query: &ListQuery) -> Option<String> {
    let parts = fts_parts(query);
    (!parts.is_empty()).then(|| parts.join(" AND "))
}

/// The parts [`fts_match`] ANDs: the tags (one part, OR-ed), each label, each text word.
fn fts_parts(query: &ListQuery) -> Vec<String> {
    let tenant = query.tenant.as_deref();
    let mut parts = Vec::new();
    if !query.tags.is_empty() {
        let tags = query
            .tags
            .iter()
            .map(|tag| format!("facets : \"{}\"", tag_word(tenant, tag)))
            .collect::<Vec<_>>();
        parts.push(format!("({})", tags.join(" OR ")));
    }
    for (key, value) in &query.labels {
        parts.push(format!("facets : \"{}\"", label_word(tenant, key, value)));
    }
    parts.extend(text_parts(query));
    parts
}

/// The FTS5 query for the full-text filter alone, or `None` without one.
fn text_match(query: &ListQuery) -> Option<String> {
    let parts = text_parts(query);
    (!parts.is_empty()).then(|| parts.join(" AND "))
}

/// A part of the FTS5 query for each word of the full-text filter: a prefix of the text.
fn text_parts(query: &ListQuery) -> Vec<String> {
    query
        .text_terms()
        .iter()
        .map(|term| format!("search_text : \"{term}\"*"))
        .collect()
}

/// How many characters of a word FTS5 compares: longer words that agree on these are one
/// word to it. Label filters with longer words are checked against the record as well.
const FTS_WORD_CHARS: usize = 32_766;

/// A facet word as migration `0008_converto_search_facets.sql` writes it: `kind`, then the hex
/// of each part's UTF-8 bytes, the parts joined by `x`, then `0`.
fn facet_word(kind: char, parts: &[&str]) -> String {
    let mut word = String::with_capacity(facet_word_chars(parts));
    word.push(kind);
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            word.push('x');
        }
        word.push_str(&hex::encode(part));
    }
    word.push('0');
    word
}

/// How many characters [`facet_word`] spells for `parts`: the kind, two hex digits a byte, an
/// `x` between parts, the final `0`.
fn facet_word_chars(parts: &[&str]) -> usize {
    let bytes: usize = parts.iter().map(|p| p.len()).sum();
    1 + 2 * bytes + parts.len().saturating_sub(1) + 1
}

/// The facet word of a tag: the tenant's own (`t`) when the search is a tenant's, else any
/// tenant's (`g`).
pub(super) fn tag_word(tenant: Option<&str>, tag: &str) -> String {
    match tenant {
        Some(tenant) => facet_word('t', &[tenant, tag]),
        None => facet_word('g', &[tag]),
    }
}

/// The facet word of a label: the tenant's own (`l`) or any tenant's (`k`).
fn label_word(tenant: Option<&str>, key: &str, value: &str) -> String {
    match tenant {
        Some(tenant) => facet_word('l', &[tenant, key, value]),
        None => facet_word('k', &[key, value]),
    }
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

/// Where a search statement's rows come from, besides the list order's plain filters.
#[derive(Debug, Clone, Copy)]
pub(super) enum Matches<'a> {
    /// No tag, label or text filter: the tenant's rows in list order.
    Every,
    /// The rowids in this JSON array: all the full-text index matches, when they are few.
    Rowids(&'a str),
    /// The full-text index's newest matches by rowid, with whether they prove to be the page
    /// (see [`newest_query`]).
    Newest,
    /// The full-text index's matches among the first `window` rows of the list order only;
    /// with all the matches' rowids (a JSON array) when they were gathered.
    Window(usize, Option<&'a str>),
    /// Every match of the full-text index.
    Indexed,
    /// The records of the query's finish-time range, fewer than [`FEW_IN_RANGE`], each
    /// checked (see [`range_count`]).
    Range,
    /// The matches of one rare part of the index query (the first index query), the first `n`
    /// of them in list order checked against the other parts (the second), with whether they
    /// prove to be the page (see [`ConversionStore::list`] and [`lead_estimate`]).
    Lead(&'a str, i64, &'a str),
}

/// The statement [`ConversionStore::list`] runs, after `prefix` (e.g. `EXPLAIN QUERY PLAN `).
///
/// The plain filters (tenant, status, formats, time ranges, cursor) narrow an indexed walk of
/// the tenant's rows in sort order (`converto_conversions_tenant_created`, `_tenant_finished`,
/// `_tenant_status_created`); tag, label and text filters are one query of the full-text index
/// ([`fts_match`]), which intersects them by merging its sorted lists of rowids. One row more
/// than the page tells whether another page follows.
///
/// A search runs in one of these ways, chosen by its order and by how many records its index
/// query matches (see [`ConversionStore::list`]), because no one plan is fast for both broad
/// and rare matches:
/// - [`Matches::Newest`]: by creation time, the index's newest matches by rowid, if the
///   statement can prove them the page (see [`newest_query`]).
/// - [`Matches::Rowids`]: few matches (fewer than [`rare_below`] the table's size), found
///   first. The statement reads the sort keys of those records, sorts them, and only then
///   reads the page's records whole.
/// - [`Matches::Window`]: many matches. The statement walks the list order, stopping after a
///   page, but only within its first `window` rows, and checks each row: its tags and labels
///   on the row, its text against the index's matches among the window's rowids (FTS5 seeks to
///   a rowid range; the window's rows were mostly created together, so their rowids are
///   close): when a quarter of the records match, a page is found after a few dozen rows. If
///   that fills the page (one row more than the limit), those are exactly the first rows of
///   the whole order (any earlier match would lie inside the window). When the search has
///   gathered every match's rowid (fewer than [`GATHERED`]), the walk checks rows against
///   those instead of asking the index again.
/// - [`Matches::Indexed`]: many matches, but not near the start of the order. Every match's
///   sort key is read, then the page's records.
/// - [`Matches::Lead`]: several parts (tags, a label, words), one far rarer than the others
///   (a rare word beside one every record has). The rare part's matches are read in list
///   order, and only the first of them are checked against the other parts, one rowid at a
///   time, instead of intersecting the parts in the index, which steps over every entry of the
///   common one (see [`lead_estimate`]).
pub(super) fn list_query(
    query: &ListQuery,
    prefix: &str,
    matches: Matches<'_>,
) -> Result<Statement, StoreError> {
    let limit = int("limit", query.effective_limit() + 1)?;
    let sort = query.sort;
    let key = if sort.by_finished() {
        "finished_at"
    } else {
        "created_at"
    };
    let (dir, back) = if sort.descending() {
        ("DESC", "ASC")
    } else {
        ("ASC", "DESC")
    };
    let order = format!(" ORDER BY c.{key} {dir}, c.id {dir}");
    let matcher = fts_match(query);
    let mut sql = Statement::default();
    sql.push(prefix);
    let matcher = match (matches, matcher) {
        (Matches::Every, _) | (_, None) => {
            sql.push(&format!(
                "SELECT {COLUMNS} FROM converto_conversions AS c WHERE 1 = 1"
            ));
            plain_filters(&mut sql, query)?;
            sql.push(&order).push(" LIMIT ").int(limit);
            return Ok(sql);
        }
        (_, Some(matcher)) => matcher,
    };
    // The page's rowids, in order; then their records, in the same order.
    let outer = |sql: &mut Statement| {
        sql.push(&format!(
            "SELECT {COLUMNS} FROM converto_conversions AS c WHERE c.rowid IN ("
        ));
    };
    match matches {
        Matches::Every => {}
        Matches::Newest => return newest_query(query, prefix, &matcher, limit),
        Matches::Rowids(rowids) => {
            outer(&mut sql);
            // CROSS JOIN: the few matches drive the query, not a walk of the list order.
            sql.push("SELECT c.rowid FROM json_each(")
                .text(rowids)
                .push(
                    ") AS m CROSS JOIN converto_conversions AS c ON c.rowid = m.value WHERE 1 = 1",
                );
            plain_filters(&mut sql, query)?;
        }
        Matches::Range => {
            // Read through the range's index (the planner might prefer a walk in list order or
            // by status, which would pass over every record outside the range).
            let index = match &query.tenant {
                Some(_) => "converto_conversions_tenant_finished",
                None => "converto_conversions_finished",
            };
            sql.push(&format!(
                "WITH w AS MATERIALIZED (SELECT c.rowid AS r FROM converto_conversions AS c INDEXED BY {index} WHERE c.finished_at IS NOT NULL"
            ));
            plain_filters(&mut sql, query)?;
            sql.push(") ");
            outer(&mut sql);
            sql.push(
                "SELECT c.rowid FROM w CROSS JOIN converto_conversions AS c ON c.rowid = w.r WHERE 1 = 1",
            );
            row_checks(&mut sql, query);
        }
        Matches::Lead(part, n, others) => {
            // The part's matches (at most GATHERED), the first `n` of them in list order, then
            // those of them the other parts match, asked of the index one rowid at a time (a
            // seek in each list). They are the page if the part's matches were all read, and
            // either fill the page or were all checked. A page without records is one row of
            // NULLs with the proof, as `newest_query`'s.
            sql.push("WITH m AS MATERIALIZED (SELECT rowid AS r FROM converto_conversions_fts(")
                .text(part)
                .push(") LIMIT ")
                .int(GATHERED)
                .push(&format!(
                    "), w AS MATERIALIZED (SELECT c.rowid AS r, c.{key} AS k, c.id AS i \
                     FROM m CROSS JOIN converto_conversions AS c ON c.rowid = m.r WHERE 1 = 1"
                ));
            plain_filters(&mut sql, query)?;
            sql.push(&order).push(" LIMIT ").int(n);
            sql.push(
                "), p AS MATERIALIZED (SELECT w.r AS r FROM w WHERE EXISTS \
                 (SELECT 1 FROM converto_conversions_fts(",
            )
            .text(others)
            .push(&format!(
                ") AS f WHERE f.rowid = w.r) ORDER BY w.k {dir}, w.i {dir} LIMIT "
            ))
            .int(limit)
            .push("), q AS MATERIALIZED (SELECT (SELECT count(*) FROM m) < ")
            .int(GATHERED)
            .push(" AND ((SELECT count(*) FROM p) = ")
            .int(limit)
            .push(" OR (SELECT count(*) FROM w) < ")
            .int(n)
            .push(&format!(
                ") AS proved) SELECT {COLUMNS}, q.proved AS proved FROM q \
                 LEFT JOIN converto_conversions AS c ON q.proved AND c.rowid IN (SELECT r FROM p) \
                 ORDER BY c.{key} {dir}, c.id {dir}"
            ));
            return Ok(sql);
        }
        Matches::Indexed => {
            outer(&mut sql);
            sql.push("SELECT c.rowid FROM converto_conversions_fts(")
                .text(matcher)
                .push(
                    ") AS m CROSS JOIN converto_conversions AS c ON c.rowid = m.rowid WHERE 1 = 1",
                );
            plain_filters(&mut sql, query)?;
        }
        Matches::Window(window, Some(rowids)) => {
            // Every match is known: walk the list order (its index alone, for the plain
            // filters it holds) and keep the rows among them.
            outer(&mut sql);
            sql.push("SELECT c.rowid FROM converto_conversions AS c WHERE 1 = 1");
            plain_filters(&mut sql, &walk_filters(query))?;
            // `+`: the rowids are checked, not looked up, or the planner would read every
            // match's record and sort them.
            sql.push(" AND +c.rowid IN (SELECT value FROM json_each(")
                .text(rowids)
                .push("))");
            // Within the window's length of the walk.
            sql.push(" AND (c.")
                .push(key)
                .push(", c.id) ")
                .push(if sort.descending() { ">=" } else { "<=" })
                .push(" (SELECT c.")
                .push(key)
                .push(", c.id FROM converto_conversions AS c WHERE 1 = 1");
            plain_filters(&mut sql, query)?;
            sql.push(&order)
                .push(" LIMIT 1 OFFSET ")
                .int(int("window", window.saturating_sub(1))?)
                .push(")");
        }
        Matches::Window(window, None) => {
            sql.push("WITH w AS MATERIALIZED (SELECT c.rowid AS r, c.")
                .push(key)
                .push(" AS k, c.id AS i FROM converto_conversions AS c WHERE 1 = 1");
            plain_filters(&mut sql, query)?;
            sql.push(&order)
                .push(" LIMIT ")
                .int(int("window", window)?)
                .push(") ");
            outer(&mut sql);
            sql.push("SELECT c.rowid FROM converto_conversions AS c WHERE 1 = 1");
            plain_filters(&mut sql, &walk_filters(query))?;
            // Within the window: up to its last row, in list order.
            let within = if sort.descending() { ">=" } else { "<=" };
            sql.push(&format!(
                " AND (c.{key}, c.id) {within} (SELECT k, i FROM w ORDER BY k {back}, i {back} LIMIT 1)"
            ));
            row_checks(&mut sql, query);
        }
    }
    sql.push(&order).push(" LIMIT ").int(limit).push(")");
    sql.push(&format!(" ORDER BY {key} {dir}, id {dir}"));
    Ok(sql)
}

/// `query` for a walk of the list order that a row of its own order bounds on the far side (a
/// window's or a page's last row): without the time range's bound on that side, which the row
/// already satisfies. SQLite bounds an index walk by one condition on each side; given both
/// `created_at >= ?` and `(created_at, id) >= (?, ?)`, it may take the first and walk every
/// record of the range (10 ms over 75,000 records for a range since 2020, against 0.8 ms).
fn walk_filters(query: &ListQuery) -> ListQuery {
    let mut walk = query.clone();
    let descending = walk.sort.descending();
    let (after, before) = sort_range(&mut walk);
    if descending {
        *after = None;
    } else {
        *before = None;
    }
    walk
}

/// The bounds of `query`'s time range on its sort key: `(after, before)`, of the creation time
/// or of the finish time.
fn sort_range(query: &mut ListQuery) -> (&mut Option<DateTime<Utc>>, &mut Option<DateTime<Utc>>) {
    if query.sort.by_finished() {
        (&mut query.finished_after, &mut query.finished_before)
    } else {
        (&mut query.created_after, &mut query.created_before)
    }
}

/// The conditions of `query`'s tags, labels and text on rows `c` drawn from a CTE `w` of their
/// rowids (`r`). Tags and labels are checked on the row itself: the rows may lie anywhere in
/// the table (finish order is not insertion order), so no rowid range of the index holds them
/// all; the text against the index's matches between the least and the greatest rowid of `w`.
fn row_checks(sql: &mut Statement, query: &ListQuery) {
    if !query.tags.is_empty() {
        sql.push(" AND EXISTS (SELECT 1 FROM json_each(c.tags) WHERE value IN (")
            .texts(query.tags.iter().map(String::as_str))
            .push("))");
    }
    for (name, value) in &query.labels {
        sql.push(" AND EXISTS (SELECT 1 FROM json_each(c.labels) AS l WHERE l.key = ")
            .text(name.as_str())
            .push(" AND l.value = ")
            .text(value.as_str())
            .push(")");
    }
    if let Some(text) = text_match(query) {
        sql.push(" AND c.rowid IN (SELECT rowid FROM converto_conversions_fts(")
            .text(text)
            .push(") WHERE rowid >= (SELECT min(r) FROM w) AND rowid <= (SELECT max(r) FROM w))");
    }
}

/// How many of the full-text index's newest matches [`newest_query`] reads, per row of the
/// page it looks for.
const NEWEST_PER_ROW: i64 = 4;

/// How many rows of the list order [`newest_query`] walks at most to prove its page.
const NEWEST_PROOF_ROWS: i64 = 4096;

/// A page sorted by creation time, found among the full-text index's first matches in rowid
/// order (`limit` being one more than the page), if they can be shown to be the page: each row
/// carries the proof in column `proved`, and a page without records is one row of NULLs (read
/// by [`super::read::proved_records`]).
///
/// Records are stored in about the order they were created, so the matches with the highest
/// rowids (FTS5 reads them first when asked in that order, and stops) are mostly the newest,
/// but not always: a record created a moment before another may be inserted after it. So the
/// statement proves its page. It reads the index's first `NEWEST_PER_ROW * limit` matches past
/// the cursor's record's rowid; the page is the best `limit` of those that pass the plain
/// filters. It is the page of all matches if the page is full and every record that passes the
/// plain filters and sorts before the page's last row lies inside the rowid range read (any
/// match there was read; a short page would claim that nothing follows it). That check walks
/// the list order's index up to the page's last row's creation time (so through any record
/// created in the same nanosecond too, which can only fail a proof that would have held), at
/// most [`NEWEST_PROOF_ROWS`] rows. A first page (no cursor) needs no check when the index had
/// no more matches than were read.
fn newest_query(
    query: &ListQuery,
    prefix: &str,
    matcher: &str,
    limit: i64,
) -> Result<Statement, StoreError> {
    let descending = query.sort.descending();
    let (dir, before, past, edge) = if descending {
        ("DESC", "<", ">=", "min")
    } else {
        ("ASC", ">", "<=", "max")
    };
    let order = format!(" ORDER BY c.created_at {dir}, c.id {dir}");
    let reads = limit.saturating_mul(NEWEST_PER_ROW);
    // The cursor's record bounds the rowids read, as the cursor bounds the order.
    let cursor_rowid = |sql: &mut Statement, cursor: &search::Cursor| {
        sql.push("(SELECT rowid FROM converto_conversions WHERE id = ")
            .text(cursor.id.to_string())
            .push(")");
    };
    let mut sql = Statement::default();
    sql.push(prefix)
        .push("WITH m AS MATERIALIZED (SELECT rowid AS r FROM converto_conversions_fts(")
        .text(matcher)
        .push(")");
    if let Some(cursor) = &query.cursor {
        sql.push(&format!(" WHERE rowid {before} "));
        cursor_rowid(&mut sql, cursor);
    }
    sql.push(&format!(" ORDER BY rowid {dir} LIMIT "))
        .int(reads)
        .push(
            "), p AS MATERIALIZED (SELECT c.rowid AS r, c.created_at AS k, c.id AS i \
             FROM m CROSS JOIN converto_conversions AS c ON c.rowid = m.r WHERE 1 = 1",
        );
    plain_filters(&mut sql, query)?;
    sql.push(&order).push(" LIMIT ").int(limit);
    // The walk's rowids: their count, and the lowest or highest, as the proof needs (each
    // aggregate costs about a fifth of the walk).
    let spread = match (descending, query.cursor.is_some()) {
        (true, false) => "min(r) AS lo",
        (false, false) => "max(r) AS hi",
        (_, true) => "min(r) AS lo, max(r) AS hi",
    };
    sql.push(&format!(
        "), s AS MATERIALIZED (SELECT (SELECT count(*) FROM m) AS read, \
         (SELECT {edge}(r) FROM m) AS edge, (SELECT count(*) FROM p) AS found), \
         v AS MATERIALIZED (SELECT count(*) AS n, {spread} FROM \
         (SELECT c.rowid AS r FROM converto_conversions AS c WHERE 1 = 1"
    ));
    plain_filters(&mut sql, &walk_filters(query))?;
    // Up to the page's last row's time: the walk may take in a few more rows created in the
    // same nanosecond, which only makes the proof stricter, and bounds the walk's index range
    // by a plain value instead of comparing a pair of values on every row (40% of the walk).
    sql.push(&format!(
        " AND c.created_at {past} (SELECT {edge}(k) FROM p)"
    ))
    .push(&order)
    .push(" LIMIT ")
    .int(NEWEST_PROOF_ROWS)
    .push(")), q AS MATERIALIZED (SELECT EXISTS (SELECT 1 FROM s, v WHERE ");
    // A first page from every match the index has.
    if query.cursor.is_none() {
        sql.push("s.read < ").int(reads).push(" OR ");
    }
    sql.push("(s.found = ")
        .int(limit)
        .push(" AND v.n < ")
        .int(NEWEST_PROOF_ROWS);
    if descending {
        sql.push(" AND v.lo >= s.edge");
    } else {
        sql.push(" AND v.hi <= s.edge");
    }
    // Past the cursor, the index was read from the cursor's record on: nothing between the
    // cursor and the page's last row may lie on the other side of it.
    if let Some(cursor) = &query.cursor {
        if descending {
            sql.push(" AND v.hi < ");
        } else {
            sql.push(" AND v.lo > ");
        }
        cursor_rowid(&mut sql, cursor);
    }
    // The page's records, each with the proof; without any, one row of NULLs with it.
    sql.push(&format!(
        ")) AS proved) SELECT {COLUMNS}, q.proved AS proved FROM q \
         LEFT JOIN converto_conversions AS c ON q.proved AND c.rowid IN (SELECT r FROM p) \
         ORDER BY c.created_at {dir}, c.id {dir}"
    ));
    Ok(sql)
}

/// ` AND ...` for each plain filter of `query` on the record `c`: tenant, statuses, formats,
/// time ranges, the finished-sort rule and the cursor; and, for a label whose facet word is
/// longer than FTS5 compares, the label itself.
fn plain_filters(sql: &mut Statement, query: &ListQuery) -> Result<(), StoreError> {
    let sort = query.sort;
    // SQLite bounds an index walk by one condition on each side. Past a cursor inside the
    // time range, the cursor bounds the walk on its side and the range's bound there follows
    // from it: leave that out, or SQLite may take it and walk every record between the range's
    // end and the cursor (5 ms for a page deep in a range of 75,000 records, against 20 us).
    // A cursor outside the range (not one this query gave) keeps both.
    let mut past_cursor = None;
    if let Some(cursor) = query.cursor {
        let mut q = query.clone();
        let (after, before) = sort_range(&mut q);
        let implied = if sort.descending() {
            before.take_if(|t| cursor.at < *t)
        } else {
            after.take_if(|t| cursor.at >= *t)
        };
        if implied.is_some() {
            past_cursor = Some(q);
        }
    }
    let query = past_cursor.as_ref().unwrap_or(query);
    if let Some(tenant) = &query.tenant {
        sql.push(" AND c.tenant = ").text(tenant.as_str());
    }
    if !query.statuses.is_empty() {
        sql.push(" AND c.status IN (")
            .texts(query.statuses.iter().map(|s| s.as_str()))
            .push(")");
    }
    if let Some(format) = &query.source_format {
        sql.push(" AND c.source_format = ").text(format.as_str());
    }
    if let Some(format) = &query.target_format {
        sql.push(" AND c.target_format = ").text(format.as_str());
    }
    if let Some(t) = query.created_after {
        sql.push(" AND c.created_at >= ").int(to_nanos(t));
    }
    if let Some(t) = query.created_before {
        sql.push(" AND c.created_at < ").int(to_nanos(t));
    }
    if let Some(t) = query.finished_after {
        sql.push(" AND c.finished_at >= ").int(to_nanos(t));
    }
    if let Some(t) = query.finished_before {
        sql.push(" AND c.finished_at < ").int(to_nanos(t));
    }
    if let Some(t) = query.updated_before {
        sql.push(" AND c.updated_at < ").int(to_nanos(t));
    }
    if sort.by_finished() {
        sql.push(" AND c.finished_at IS NOT NULL");
    }
    if let Some(cursor) = query.cursor {
        let (key, cmp) = match (sort.by_finished(), sort.descending()) {
            (true, true) => ("finished_at", "<"),
            (true, false) => ("finished_at", ">"),
            (false, true) => ("created_at", "<"),
            (false, false) => ("created_at", ">"),
        };
        sql.push(&format!(" AND (c.{key}, c.id) {cmp} ("))
            .int(to_nanos(cursor.at))
            .push(", ")
            .text(cursor.id.to_string())
            .push(")");
    }
    // The label's facet word (see `label_word`) is only measured, not spelled.
    let tenant = query.tenant.as_deref();
    for (name, value) in &query.labels {
        let chars = match tenant {
            Some(tenant) => facet_word_chars(&[tenant, name, value]),
            None => facet_word_chars(&[name, value]),
        };
        if chars > FTS_WORD_CHARS {
            sql.push(" AND EXISTS (SELECT 1 FROM json_each(c.labels) AS l WHERE l.key = ")
                .text(name.as_str())
                .push(" AND l.value = ")
                .text(value.as_str())
                .push(")");
        }
    }
    Ok(())
}

/// Below how many index matches a search reads them all and sorts them, rather than walking
/// windows of the list order first (see [`ConversionStore::list`]), whatever the table's size.
/// Between this and [`GATHERED`], the table's size decides (see [`rare_below`]).
const RARE: usize = 2048;

/// Below how many index matches reading and sorting them all costs less than walking windows of
/// a list order of `records` rows: about `sqrt(83 * records)`, at least [`RARE`] and at most
/// [`GATHERED`]. Reading the sort keys costs about the same for each match, while the walk to a
/// page's worth of matches grows with the records between two matches (`records / matches`),
/// so the two meet where `matches` grows as the root of `records`. Measured over 100,000
/// records, a page of 20 of 2,189 matches (`batch 42`, by finish time): 276 us to read and
/// sort their keys, 494 us to walk the window; the two costs meet near 2,900 matches.
fn rare_below(records: u64) -> usize {
    let crossover = (83.0 * records as f64).sqrt();
    (crossover as usize).clamp(RARE, GATHERED as usize)
}

/// The table's highest rowid, as text: about how many records it holds (rowids are handed out
/// in order and rarely reused), read from the end of the table's b-tree.
const RECORDS: &str = "SELECT CAST(max(rowid) AS TEXT) AS j FROM converto_conversions";

/// How many of the lead part's first matches in list order a search led by one part checks
/// against the whole query first, in pages (see [`ConversionStore::list`]); a check costs
/// about 6 us (a cursor on the index seeking each list to one rowid).
const LEAD_PAGES: usize = 1;

/// How many more index entries one part of a search must have than the rarest, in all, for
/// the rarest to lead (see [`lead_estimate`]): reading a match's sort key costs about 2,000
/// instructions, stepping over an entry of the index about 75 (measured over 100,000 records).
const LEAD_RATIO: u64 = 27;

/// How many of the newest rowids [`part_counts`] samples: each match read costs about 60 ns
/// (over 4,096 rowids, a word every record has took 300 us to count, against 500 us for the
/// whole index query).
const LEAD_SAMPLE: i64 = 512;

/// `[records, count, count, ...]` (JSON) in column `j`: the table's highest rowid (see
/// [`RECORDS`]), then how many matches each of `parts` has among the newest [`LEAD_SAMPLE`]
/// rowids, a sample that the index seeks to and reads alone.
fn part_counts(parts: &[String]) -> Statement {
    let mut sql = Statement::default();
    sql.push("SELECT json_array(t.n");
    for part in parts {
        sql.push(", (SELECT count(*) FROM converto_conversions_fts(")
            .text(part.as_str())
            .push(") WHERE rowid > t.n - ")
            .int(LEAD_SAMPLE)
            .push(")");
    }
    sql.push(") AS j FROM (SELECT max(rowid) AS n FROM converto_conversions) AS t");
    sql
}

/// Which part (its index) should lead a search, from [`part_counts`]' answer: the part with the
/// fewest matches, when the others' matches (estimated from the sample over the whole table)
/// outnumber its own [`LEAD_RATIO`] times. Then intersecting the parts in the index, which
/// steps over every entry of each, costs more than reading the rare part's matches in list
/// order and asking the index about the first few only. The estimate only picks the faster
/// way: either finds the same page.
fn lead_estimate(counts: &[Option<i64>]) -> Option<usize> {
    let (records, counts) = counts.split_first()?;
    let records = records.and_then(|n| u64::try_from(n).ok()).unwrap_or(0);
    let sample = LEAD_SAMPLE.unsigned_abs();
    let estimates = counts
        .iter()
        .map(|count| {
            let count = count.and_then(|n| u64::try_from(n).ok()).unwrap_or(0);
            count.saturating_mul(records.max(sample)) / sample
        })
        .collect::<Vec<_>>();
    let (lead, rarest) = estimates
        .iter()
        .copied()
        .enumerate()
        .min_by_key(|&(_, e)| e)?;
    let others: u64 = estimates.iter().sum::<u64>() - rarest;
    (others > rarest.saturating_mul(LEAD_RATIO)).then_some(lead)
}

/// How many elements a JSON array of integers has: one comma fewer, if any.
fn json_len(array: &str) -> usize {
    match array {
        "[]" => 0,
        _ => array.bytes().filter(|&b| b == b',').count() + 1,
    }
}

/// Below how many records in its finish-time range a search with tags, labels or text checks
/// every one of them rather than asking the full-text index first (see [`ConversionStore::list`]).
const FEW_IN_RANGE: usize = 512;

/// How many records lie in the query's finish-time range, if fewer than [`FEW_IN_RANGE`] (else
/// NULL), as text in column `j`; `None` when the query has no such range. The tenant's
/// `converto_conversions_tenant_finished` index (or without a tenant `_finished`) holds the
/// range alone, and the count is an upper bound of the records every filter lets through.
///
/// Only finish-time ranges: records are stored in about the order they were created, so the
/// full-text index's rowid order already follows a creation-time range, while finished records
/// may lie anywhere.
fn range_count(query: &ListQuery) -> Option<Statement> {
    if query.finished_after.is_none() && query.finished_before.is_none() {
        return None;
    }
    let mut sql = Statement::default();
    sql.push("SELECT CASE WHEN count(*) < ")
        .int(FEW_IN_RANGE as i64)
        .push(" THEN CAST(count(*) AS TEXT) END AS j FROM (SELECT 1 FROM converto_conversions AS c WHERE 1 = 1");
    if let Some(tenant) = &query.tenant {
        sql.push(" AND c.tenant = ").text(tenant.as_str());
    }
    // The finish-time indexes hold finished records only.
    sql.push(" AND c.finished_at IS NOT NULL");
    if let Some(t) = query.finished_after {
        sql.push(" AND c.finished_at >= ").int(to_nanos(t));
    }
    if let Some(t) = query.finished_before {
        sql.push(" AND c.finished_at < ").int(to_nanos(t));
    }
    sql.push(" LIMIT ").int(FEW_IN_RANGE as i64).push(")");
    Some(sql)
}

/// Below how many index matches a search gathers their rowids once, for the windows to check
/// rows against, rather than asking the index again for each window.
const GATHERED: i64 = 4096;

/// The rowids (a JSON array) of the records the full-text index query `matcher` matches, if
/// fewer than [`GATHERED`]; else NULL. Reads at most [`GATHERED`] of the index's matches.
fn gather_matches(matcher: &str) -> Statement {
    let mut sql = Statement::default();
    sql.push("SELECT CASE WHEN count(*) < ")
        .int(GATHERED)
        .push(" THEN json_group_array(rowid) END AS j FROM (SELECT rowid FROM converto_conversions_fts(")
        .text(matcher)
        .push(") LIMIT ")
        .int(GATHERED)
        .push(")");
    sql
}

impl SqliteConversionStore {
    /// `EXPLAIN QUERY PLAN` of the statement [`ConversionStore::list`] runs for `query`: the
    /// plan's lines (`detail` column). For tests that check every search is served from an
    /// index.
    #[doc(hidden)]
    pub async fn explain_list(&self, query: &ListQuery) -> Result<Vec<String>, StoreError> {
        let mut plan = Vec::new();
        let matcher = fts_match(query);
        let searched = matcher.is_some();
        let matcher = matcher.unwrap_or_default();
        let mut ways = if searched {
            vec![
                Matches::Newest,
                Matches::Rowids("[1, 2, 3]"),
                Matches::Window(SEARCH_WINDOWS[0], None),
                Matches::Window(SEARCH_WINDOWS[0], Some("[1, 2, 3]")),
                Matches::Indexed,
                Matches::Lead(&matcher, 84, &matcher),
            ]
        } else {
            vec![Matches::Every]
        };
        if searched && let Some(mut count) = range_count(query) {
            ways.push(Matches::Range);
            count.sql.insert_str(0, "EXPLAIN QUERY PLAN ");
            for row in &count
                .query()
                .fetch_all(&self.pool)
                .await
                .map_err(query_error("explain"))?
            {
                plan.push(column::<String>(row, "detail")?);
            }
        }
        for matches in ways {
            let rows = list_query(query, "EXPLAIN QUERY PLAN ", matches)?
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

    /// A search page (with one row more than the page, if there is one) led by the part of
    /// its index query with the fewest matches, when the others have far more (see
    /// [`lead_estimate`]) and it has fewer than [`GATHERED`]; `None` otherwise.
    ///
    /// Every match of the whole query is a match of each part, so the page's records are the
    /// first of the lead part's matches in list order that the whole query matches. The first
    /// [`LEAD_PAGES`] pages' worth of them are checked first ([`Matches::Lead`]); only if too
    /// few of those match are all of them checked.
    async fn lead_page(
        &self,
        query: &ListQuery,
        parts: &[String],
    ) -> Result<Option<Vec<Conversion>>, StoreError> {
        let Some(counts) = self.optional_text(part_counts(parts)).await? else {
            return Ok(None);
        };
        let counts: Vec<Option<i64>> =
            serde_json::from_str(&counts).map_err(|e| corrupt("part counts", e))?;
        let Some(lead) = lead_estimate(&counts) else {
            return Ok(None);
        };
        let Some(part) = parts.get(lead) else {
            return Ok(None);
        };
        // The lead part's matches are checked against the other parts only.
        let others = parts
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != lead)
            .map(|(_, p)| p.as_str())
            .collect::<Vec<_>>()
            .join(" AND ");
        // The first pages' worth, then (if too few of them match the others) all.
        let first = (query.effective_limit() + 1).saturating_mul(LEAD_PAGES);
        for n in [int("lead", first)?, GATHERED] {
            let lead = Matches::Lead(part, n, &others);
            if let Some(items) = self.proved(list_query(query, "", lead)?).await? {
                return Ok(Some(items));
            }
        }
        // The part has GATHERED matches or more.
        Ok(None)
    }

    /// [`rare_below`] for this table's size.
    async fn rare_below_here(&self) -> Result<usize, StoreError> {
        let mut statement = Statement::default();
        statement.push(RECORDS);
        let records = match self.optional_text(statement).await? {
            Some(n) => {
                let n = n.parse::<i64>().map_err(|e| corrupt("max(rowid)", e))?;
                u64::try_from(n).unwrap_or(0)
            }
            None => 0,
        };
        Ok(rare_below(records))
    }

    /// The text or NULL (column `j`) `statement` selects.
    async fn optional_text(&self, statement: Statement) -> Result<Option<String>, StoreError> {
        self.read_or_pool(statement, super::read::optional_text, |rows| {
            match rows.first() {
                Some(row) => column::<Option<String>>(row, "j"),
                None => Err(corrupt("j", "no row")),
            }
        })
        .await
    }

    /// The records a [`newest_query`] selects, or `None` if it could not prove them the page.
    async fn proved(&self, statement: Statement) -> Result<Option<Vec<Conversion>>, StoreError> {
        self.read_or_pool(statement, super::read::proved_records, |rows| {
            let mut items = Vec::with_capacity(rows.len());
            for row in rows {
                if !column::<bool>(row, "proved")? {
                    return Ok(None);
                }
                if column::<Option<String>>(row, "id")?.is_some() {
                    items.push(decode(row)?);
                }
            }
            Ok(Some(items))
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
        let page = |items| Ok(Page::from_overfetch(items, limit, query.sort));
        let Some(matcher) = fts_match(query) else {
            return page(self.select(list_query(query, "", Matches::Every)?).await?);
        };
        // A short finish-time range: its records are few, and checking each (its tags and
        // labels on the row, its text against the index's matches among their rowids) costs
        // less than gathering the index's matches, which may be many and mostly outside it.
        if let Some(count) = range_count(query) {
            match self.optional_text(count).await?.map(|n| n.parse::<usize>()) {
                Some(Ok(0)) => return page(Vec::new()),
                // Every record of the range is checked: the answer is whole.
                Some(Ok(_)) => {
                    return page(self.select(list_query(query, "", Matches::Range)?).await?);
                }
                Some(Err(e)) => return Err(corrupt("range count", e)),
                None => {}
            }
        }
        // By creation time, the index's newest matches are usually the page, and it can tell.
        if !query.sort.by_finished()
            && let Some(items) = self.proved(list_query(query, "", Matches::Newest)?).await?
        {
            return page(items);
        }
        // By finish time without text, the short window checks tags and labels on its rows
        // alone, which costs less than gathering broad matches; with text, it would ask the
        // index over the rowids of records finished together, which may lie far apart.
        let short_first = query.sort.by_finished() && text_match(query).is_none();
        if short_first {
            let window = Matches::Window(SEARCH_WINDOWS[0], None);
            let items = self.select(list_query(query, "", window)?).await?;
            if items.len() > limit {
                return page(items);
            }
        }
        // Several parts, one of them rare: its matches lead, and the index is asked about the
        // whole query only among the first of them, which costs less than intersecting the
        // parts in full when another part is common (a word every record has).
        let parts = fts_parts(query);
        if parts.len() > 1
            && let Some(items) = self.lead_page(query, &parts).await?
        {
            return page(items);
        }
        // Few matches: read and sort them all. Fewer than GATHERED: check windows against
        // them. The index stops counting at GATHERED.
        let gathered = self.optional_text(gather_matches(&matcher)).await?;
        if let Some(rowids) = &gathered {
            let count = json_len(rowids);
            let rare = count < RARE
                || (count < GATHERED as usize && count < self.rare_below_here().await?);
            if rare {
                return page(
                    self.select(list_query(query, "", Matches::Rowids(rowids))?)
                        .await?,
                );
            }
        }
        // Against gathered rowids, a walk costs little more for the longer window alone (and
        // the short one may have been walked already).
        let windows = if gathered.is_some() || short_first {
            &SEARCH_WINDOWS[1..]
        } else {
            &SEARCH_WINDOWS[..]
        };
        for &window in windows {
            let items = self
                .select(list_query(
                    query,
                    "",
                    Matches::Window(window, gathered.as_deref()),
                )?)
                .await?;
            if items.len() > limit {
                return page(items);
            }
        }
        let all = match &gathered {
            Some(rowids) => Matches::Rowids(rowids),
            None => Matches::Indexed,
        };
        page(self.select(list_query(query, "", all)?).await?)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Reading every match wins up to about the root of 83 times the records, within bounds.
    #[test]
    fn rare_matches_grow_with_the_root_of_the_records() {
        assert_eq!(rare_below(0), RARE);
        assert_eq!(rare_below(10_000), RARE);
        assert_eq!(rare_below(100_000), 2_880);
        assert_eq!(rare_below(150_000), 3_528);
        assert_eq!(rare_below(1_000_000), GATHERED as usize);
        assert_eq!(rare_below(u64::MAX), GATHERED as usize);
    }

    /// The rarest part leads only when the others, estimated from the newest rowids, have far
    /// more matches: a rare word beside one every record has, not a label beside a word that
    /// each match a twentieth and a quarter of the records.
    #[test]
    fn a_rare_part_leads_only_beside_far_commoner_ones() {
        let lead = |counts: &[Option<i64>]| lead_estimate(counts);
        assert_eq!(lead(&[Some(100_000), Some(512), Some(11)]), Some(1));
        assert_eq!(lead(&[Some(100_000), Some(26), Some(128)]), None);
        assert_eq!(lead(&[Some(100_000), Some(0), Some(512)]), Some(0));
        // A small table is its own sample.
        assert_eq!(lead(&[Some(50), Some(30), Some(1)]), Some(1));
        assert_eq!(lead(&[Some(50), Some(20), Some(1)]), None);
        assert_eq!(lead(&[Some(0), Some(0), Some(0)]), None);
        assert_eq!(lead(&[None, None, None]), None);
        assert_eq!(lead(&[Some(100_000)]), None);
        assert_eq!(lead(&[]), None);
    }

    /// The length `plain_filters` measures a label's facet word by is the word's length.
    #[test]
    fn facet_word_chars_is_the_words_length() {
        for parts in [
            &[][..],
            &["a"][..],
            &["Zürich 東京", "région", "Île-de-France"][..],
            &["", "", ""][..],
        ] {
            assert_eq!(
                facet_word_chars(parts),
                facet_word('l', parts).len(),
                "{parts:?}"
            );
        }
    }
}

//! [`PostgresConversionStore`]: conversion records in the `conversions` table.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Display;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use converto_core::conversion::{
    Artifact, Conversion, ErrorInfo, NewConversion, Progress, Status, Transition,
};
use converto_core::store::{
    ConversionStore, Created, ListQuery, Page, RecentRecords, StoreError, TenantUsage,
};
use converto_core::{ConversionId, Format, search};
use sqlx::PgPool;
use sqlx::postgres::PgRow;
use sqlx::types::Json;
use sqlx::{Postgres, QueryBuilder, Row};
use uuid::Uuid;

use super::batch::{Batcher, unique_passes};
use super::{PostgresError, Shared, now_micros, to_i64};

/// The columns of a record, in the order `decode` reads them by name.
macro_rules! columns {
    () => {
        "id, tenant, source_format, target_format, options, labels, priority, status, progress, \
         attempts, error, artifacts, input_key, input_name, input_size, idempotency_key, \
         created_at, started_at, finished_at, updated_at, version, description, tags"
    };
}

/// Inserts a batch of new records (no id twice), one row of the arrays each; a record whose
/// tenant already has its idempotency key is skipped. Returns the ids inserted. Tags travel as
/// JSON arrays (arrays of arrays must be rectangular in PostgreSQL).
const INSERT: &str = concat!(
    "INSERT INTO conversions (",
    columns!(),
    ", stored_bytes, search) SELECT id, tenant, source_format, target_format, options::jsonb, \
     labels::jsonb, priority, status, progress::jsonb, attempts, error::jsonb, \
     artifacts::jsonb, input_key, input_name, input_size, idempotency_key, created_at, \
     started_at, finished_at, updated_at, version, description, \
     ARRAY(SELECT jsonb_array_elements_text(tags::jsonb)), stored_bytes, \
     to_tsvector('converto_search'::regconfig, search) \
     FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], \
         $7::integer[], $8::text[], $9::text[], $10::bigint[], $11::text[], $12::text[], \
         $13::text[], $14::text[], $15::bigint[], $16::text[], $17::timestamptz[], \
         $18::timestamptz[], $19::timestamptz[], $20::timestamptz[], $21::bigint[], \
         $22::text[], $23::text[], $24::bigint[], $25::text[]) \
       AS v(id, tenant, source_format, target_format, options, labels, priority, status, \
            progress, attempts, error, artifacts, input_key, input_name, input_size, \
            idempotency_key, created_at, started_at, finished_at, updated_at, version, \
            description, tags, stored_bytes, search) \
     ON CONFLICT (tenant, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING \
     RETURNING id"
);
/// The records of a batch of reads ([`PostgresConversionStore::fetch`]).
const GET_MANY: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM conversions WHERE id = ANY($1::uuid[])"
);
const GET_BY_KEY: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM conversions WHERE tenant = $1 AND idempotency_key = $2"
);
const DELETE: &str = concat!(
    "DELETE FROM conversions WHERE id = $1 RETURNING ",
    columns!()
);
/// The compare-and-set of a batch of transitions, one row of the arrays per record (no record
/// twice): only the version read before applying the transition may be replaced. Returns the
/// ids written.
///
/// It is planned for every batch (see [`write_many`]): a join's best plan depends on how many
/// rows the batch holds and how large the table has grown, and a prepared statement's cached
/// generic plan knows neither.
const UPDATE_IF_VERSION: &str = "UPDATE conversions AS c SET status = v.status, \
     progress = v.progress::jsonb, attempts = v.attempts, error = v.error::jsonb, \
     artifacts = v.artifacts::jsonb, started_at = v.started_at, finished_at = v.finished_at, \
     updated_at = v.updated_at, version = v.next_version, stored_bytes = v.stored_bytes \
     FROM unnest($1::uuid[], $2::bigint[], $3::text[], $4::text[], $5::bigint[], $6::text[], \
         $7::text[], $8::timestamptz[], $9::timestamptz[], $10::timestamptz[], $11::bigint[], \
         $12::bigint[]) \
         AS v(id, version, status, progress, attempts, error, artifacts, started_at, \
              finished_at, updated_at, next_version, stored_bytes) \
     WHERE c.id = v.id AND c.version = v.version \
     RETURNING c.id";
/// One tenant's usage, an index-only scan of the tenant's entries in
/// `conversions_tenant_status_created` (which includes `stored_bytes`).
const TENANT_USAGE: &str = "SELECT count(*) FILTER (WHERE status = 'queued'), \
     count(*) FILTER (WHERE status = 'running'), coalesce(sum(stored_bytes), 0)::bigint \
     FROM conversions WHERE tenant = $1";
const COUNT_BY_STATUS: &str = "SELECT status, count(*) FROM conversions GROUP BY status";

/// How often a transition re-reads and retries when other writers keep winning the
/// compare-and-set. Each lost round means another writer made progress.
const CAS_ATTEMPTS: u32 = 32;

/// The most reads, or writes, one batch statement carries.
const BATCH_MAX: usize = 256;
/// How many batch statements of each kind (reads, writes) run at once.
const BATCH_LANES: usize = 2;

/// How many records the store keeps as the starting point of their next transition.
const RECENT_RECORDS: usize = 1024;

/// A transition's write, ready for [`UPDATE_IF_VERSION`]'s arrays.
struct Write {
    id: Uuid,
    version: i64,
    status: &'static str,
    progress: Option<String>,
    attempts: i64,
    error: Option<String>,
    artifacts: String,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    updated_at: DateTime<Utc>,
    next_version: i64,
    stored_bytes: i64,
}

impl Write {
    /// `next` written over `version`.
    fn new(next: &Conversion, version: u64) -> Result<Self, StoreError> {
        Ok(Self {
            id: *next.id.as_uuid(),
            version: to_i64("version", version)?,
            status: next.status.as_str(),
            progress: next.progress.as_ref().map(json).transpose()?,
            attempts: i64::from(next.attempts),
            error: next.error.as_ref().map(json).transpose()?,
            artifacts: json(&next.artifacts)?,
            started_at: next.started_at,
            finished_at: next.finished_at,
            updated_at: next.updated_at,
            next_version: to_i64("version", next.version)?,
            stored_bytes: to_i64("stored_bytes", TenantUsage::bytes_of(next))?,
        })
    }
}

/// A new record, ready for [`INSERT`]'s arrays.
struct Insert {
    id: Uuid,
    tenant: String,
    source_format: String,
    target_format: String,
    options: String,
    labels: String,
    priority: i32,
    status: &'static str,
    progress: Option<String>,
    attempts: i64,
    error: Option<String>,
    artifacts: String,
    input_key: String,
    input_name: Option<String>,
    input_size: i64,
    idempotency_key: Option<String>,
    created_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    updated_at: DateTime<Utc>,
    version: i64,
    description: Option<String>,
    tags: String,
    stored_bytes: i64,
    search: String,
}

impl Insert {
    fn new(r: &Conversion) -> Result<Self, StoreError> {
        Ok(Self {
            id: *r.id.as_uuid(),
            tenant: r.tenant.clone(),
            source_format: r.source_format.as_str().to_owned(),
            target_format: r.target_format.as_str().to_owned(),
            options: json(&r.options)?,
            labels: json(&r.labels)?,
            priority: r.priority,
            status: r.status.as_str(),
            progress: r.progress.as_ref().map(json).transpose()?,
            attempts: i64::from(r.attempts),
            error: r.error.as_ref().map(json).transpose()?,
            artifacts: json(&r.artifacts)?,
            input_key: r.input_key.clone(),
            input_name: r.input_name.clone(),
            input_size: to_i64("input_size", r.input_size)?,
            idempotency_key: r.idempotency_key.clone(),
            created_at: r.created_at,
            started_at: r.started_at,
            finished_at: r.finished_at,
            updated_at: r.updated_at,
            version: to_i64("version", r.version)?,
            description: r.description.clone(),
            tags: json(&r.tags)?,
            stored_bytes: to_i64("stored_bytes", TenantUsage::bytes_of(r))?,
            search: search::index_text(r.input_name.as_deref(), r.description.as_deref()),
        })
    }
}

/// What became of one insert of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Inserted {
    /// The record is stored.
    Yes,
    /// Its tenant already had a record with its idempotency key: nothing was stored.
    KeyTaken,
    /// A record with its id exists: nothing was stored.
    IdTaken,
}

/// Inserts a batch of new records, one statement per pass; should a pass fail on a taken id,
/// its records are inserted one by one to tell whose id it was.
async fn insert_many(pool: PgPool, rows: Vec<Insert>) -> Result<Vec<Inserted>, sqlx::Error> {
    let mut outcome = vec![Inserted::KeyTaken; rows.len()];
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    for pass in unique_passes(&ids) {
        match insert_pass(&pool, &rows, &pass).await {
            Ok(done) => {
                for &i in &pass {
                    if done.contains(&ids[i]) {
                        outcome[i] = Inserted::Yes;
                    }
                }
            }
            Err(sqlx::Error::Database(db)) if db.is_unique_violation() && pass.len() > 1 => {
                for &i in &pass {
                    outcome[i] = match insert_pass(&pool, &rows, &[i]).await {
                        Ok(done) if done.contains(&ids[i]) => Inserted::Yes,
                        Ok(_) => Inserted::KeyTaken,
                        Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
                            Inserted::IdTaken
                        }
                        Err(e) => return Err(e),
                    };
                }
            }
            // The idempotency constraint is the conflict target, so a unique violation can
            // only be the primary key.
            Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
                for &i in &pass {
                    outcome[i] = Inserted::IdTaken;
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(outcome)
}

/// One column of a batch statement's arrays: `rows[i].<field…>` for each index `i` of `pass`.
macro_rules! column {
    ($pass:expr, $rows:expr, $($f:tt)+) => {
        $pass.iter().map(|&i| { let r = &$rows[i]; r.$($f)+ }).collect::<Vec<_>>()
    };
}

/// One [`INSERT`] of the rows at `pass`; the ids inserted.
async fn insert_pass(
    pool: &PgPool,
    rows: &[Insert],
    pass: &[usize],
) -> Result<HashSet<Uuid>, sqlx::Error> {
    macro_rules! col {
        ($($f:tt)+) => { column!(pass, rows, $($f)+) };
    }
    let done: Vec<Uuid> = sqlx::query_scalar(INSERT)
        .bind(col!(id))
        .bind(col!(tenant.as_str()))
        .bind(col!(source_format.as_str()))
        .bind(col!(target_format.as_str()))
        .bind(col!(options.as_str()))
        .bind(col!(labels.as_str()))
        .bind(col!(priority))
        .bind(col!(status))
        .bind(col!(progress.as_deref()))
        .bind(col!(attempts))
        .bind(col!(error.as_deref()))
        .bind(col!(artifacts.as_str()))
        .bind(col!(input_key.as_str()))
        .bind(col!(input_name.as_deref()))
        .bind(col!(input_size))
        .bind(col!(idempotency_key.as_deref()))
        .bind(col!(created_at))
        .bind(col!(started_at))
        .bind(col!(finished_at))
        .bind(col!(updated_at))
        .bind(col!(version))
        .bind(col!(description.as_deref()))
        .bind(col!(tags.as_str()))
        .bind(col!(stored_bytes))
        .bind(col!(search.as_str()))
        .fetch_all(pool)
        .await?;
    Ok(done.into_iter().collect())
}

/// A JSON column's text.
fn json<T: serde::Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::backend(super::BACKEND, false, e))
}

/// Reads a batch of records: one answer per id asked, in order.
async fn fetch_many(
    pool: PgPool,
    ids: Vec<Uuid>,
) -> Result<Vec<Result<Option<Conversion>, StoreError>>, sqlx::Error> {
    let rows = sqlx::query(GET_MANY).bind(&ids).fetch_all(&pool).await?;
    let mut by_id = HashMap::with_capacity(rows.len());
    for row in &rows {
        if let Ok(id) = row.try_get::<Uuid, _>("id") {
            by_id.insert(id, row);
        }
    }
    Ok(ids
        .iter()
        .map(|id| by_id.get(id).map(|row| decode(row)).transpose())
        .collect())
}

/// Writes a batch of compare-and-sets: for each, whether it was written. A record named twice
/// is written in a second statement after the first (one `UPDATE … FROM` may change a row only
/// once); within a statement the records are locked in id order, as every batch locks them, so
/// concurrent batches never deadlock.
async fn write_many(pool: PgPool, writes: Vec<Write>) -> Result<Vec<bool>, sqlx::Error> {
    let mut written = vec![false; writes.len()];
    let ids: Vec<Uuid> = writes.iter().map(|w| w.id).collect();
    for pass in unique_passes(&ids) {
        macro_rules! col {
            ($($f:tt)+) => { column!(pass, writes, $($f)+) };
        }
        // Planned afresh for each batch (an unnamed statement: one more round trip, a few
        // dozen microseconds). A connection's cached generic plan is costed once, against
        // the table as it was when the connection first ran the statement a few times, and
        // is never revisited until the table is analyzed: a connection that met a new,
        // nearly empty table kept a hash join over a scan of the whole table (measured with
        // `auto_explain` in `engine postgres_c512`: 208 batches at 21 ms each, while the
        // index-driven plan took 7.5 ms for the same work).
        let done: Vec<Uuid> = sqlx::query_scalar(UPDATE_IF_VERSION)
            .persistent(false)
            .bind(col!(id))
            .bind(col!(version))
            .bind(col!(status))
            .bind(col!(progress.as_deref()))
            .bind(col!(attempts))
            .bind(col!(error.as_deref()))
            .bind(col!(artifacts.as_str()))
            .bind(col!(started_at))
            .bind(col!(finished_at))
            .bind(col!(updated_at))
            .bind(col!(next_version))
            .bind(col!(stored_bytes))
            .fetch_all(&pool)
            .await?;
        let done: HashSet<Uuid> = done.into_iter().collect();
        for &i in &pass {
            written[i] = done.contains(&ids[i]);
        }
    }
    Ok(written)
}

/// Conversion records in PostgreSQL.
///
/// Filtered columns (tenant, formats, status, timestamps, input name) are real columns; options,
/// labels, progress, error and artifacts are JSONB. Transitions read the record, apply
/// [`Transition::apply`] and write it back only if its version is unchanged, so of concurrent
/// writers exactly one wins and the others see the winner's result.
///
/// Concurrent reads of single records, and concurrent transitions' writes, are sent in
/// batches, one statement (and for writes one transaction and commit) for every call waiting
/// at the time: a busy engine's jobs share round trips and commits instead of queueing for
/// connections one call at a time (see the `batch` module). Each write still succeeds or fails
/// on its own record's version.
#[derive(Debug)]
pub struct PostgresConversionStore {
    shared: Shared,
    reads: Batcher<Uuid, Result<Option<Conversion>, StoreError>>,
    writes: Batcher<Write, bool>,
    inserts: Batcher<Insert, Inserted>,
    /// The records this store wrote last (see [`RecentRecords`]).
    recent: RecentRecords,
}

impl PostgresConversionStore {
    pub(super) fn new(shared: Shared) -> Self {
        let reads = Batcher::on_pool(&shared.pool, BATCH_MAX, BATCH_LANES, fetch_many);
        let writes = Batcher::on_pool(&shared.pool, BATCH_MAX, BATCH_LANES, write_many);
        let inserts = Batcher::on_pool(&shared.pool, BATCH_MAX, BATCH_LANES, insert_many);
        Self {
            shared,
            reads,
            writes,
            inserts,
            recent: RecentRecords::new(RECENT_RECORDS),
        }
    }

    async fn fetch(&self, id: ConversionId) -> Result<Option<Conversion>, StoreError> {
        self.reads.call(*id.as_uuid()).await?
    }
}

fn sql(e: sqlx::Error) -> StoreError {
    PostgresError::Sql(e).into()
}

fn corrupt(what: &str, e: impl Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

fn get<'r, T>(row: &'r PgRow, column: &str) -> Result<T, StoreError>
where
    T: sqlx::Decode<'r, Postgres> + sqlx::Type<Postgres>,
{
    row.try_get(column).map_err(|e| corrupt(column, e))
}

fn format_col(row: &PgRow, column: &str) -> Result<Format, StoreError> {
    let s: String = get(row, column)?;
    Format::new(&s).map_err(|e| corrupt(column, e))
}

fn u64_col(row: &PgRow, column: &str) -> Result<u64, StoreError> {
    let n: i64 = get(row, column)?;
    u64::try_from(n).map_err(|e| corrupt(column, e))
}

fn decode(row: &PgRow) -> Result<Conversion, StoreError> {
    let status: String = get(row, "status")?;
    let attempts = u64_col(row, "attempts")?;
    Ok(Conversion {
        id: ConversionId::from_uuid(get::<Uuid>(row, "id")?),
        tenant: get(row, "tenant")?,
        source_format: format_col(row, "source_format")?,
        target_format: format_col(row, "target_format")?,
        options: get::<Json<serde_json::Value>>(row, "options")?.0,
        labels: get::<Json<BTreeMap<String, String>>>(row, "labels")?.0,
        priority: get(row, "priority")?,
        status: status.parse().map_err(|e| corrupt("status", e))?,
        progress: get::<Option<Json<Progress>>>(row, "progress")?.map(|j| j.0),
        attempts: u32::try_from(attempts).map_err(|e| corrupt("attempts", e))?,
        error: get::<Option<Json<ErrorInfo>>>(row, "error")?.map(|j| j.0),
        artifacts: get::<Json<Vec<Artifact>>>(row, "artifacts")?.0,
        input_key: get(row, "input_key")?,
        input_name: get(row, "input_name")?,
        input_size: u64_col(row, "input_size")?,
        idempotency_key: get(row, "idempotency_key")?,
        created_at: get(row, "created_at")?,
        started_at: get(row, "started_at")?,
        finished_at: get(row, "finished_at")?,
        updated_at: get(row, "updated_at")?,
        version: u64_col(row, "version")?,
        description: get(row, "description")?,
        tags: get(row, "tags")?,
    })
}

/// The `tsquery` for full-text terms: each a quoted prefix, all required. Terms are runs of
/// letters and digits only (`search::query_terms`), so nothing in them is tsquery syntax.
fn ts_query(terms: &[String]) -> String {
    terms
        .iter()
        .map(|t| format!("'{t}':*"))
        .collect::<Vec<_>>()
        .join(" & ")
}

/// Whether a search walks windows of the list order first (see [`list_query`]): not when it
/// also asks for a range of the other time than the one it sorts by, as the window would then
/// filter its walk of the order and read far more rows than it keeps (measured: 70 ms for a
/// 1% tag within a 15% finish range over 100,000 records, 2 ms with the indexes combined).
fn windowed(query: &ListQuery) -> bool {
    let other_range = if query.sort.by_finished() {
        query.created_after.is_some() || query.created_before.is_some()
    } else {
        query.finished_after.is_some() || query.finished_before.is_some()
    };
    searches(query) && !other_range
}

/// How many rows of the list order a search looks at first, then how many the second time
/// (when [`worth_widening`] expects the wider window to fill the page), before it lets the
/// tag and text indexes drive the query (see [`list_query`]).
const SEARCH_WINDOWS: [i64; 2] = [256, 4096];

/// Whether a wider window is worth walking after a narrower one found `found` matches in
/// `before` rows: when the matches it is likely to hold, at the narrower window's rate, fill
/// the page and the extra row. Otherwise the matches are rare and the search goes straight to
/// the indexes, which it would reach anyway after reading the wider window in vain (measured:
/// a label and a word that never meet, 3.3 ms of 10 spent walking 4,096 rows). Skipping is
/// never wrong, only slower when the guess is: the indexes find every match.
fn worth_widening(before: i64, found: usize, wider: i64, limit: usize) -> bool {
    let expected = (found as u128).saturating_mul(u128::try_from(wider).unwrap_or(0));
    let needed = (limit as u128 + 1).saturating_mul(u128::try_from(before).unwrap_or(1));
    expected >= needed
}

/// Whether `query` filters by tags, full text or labels: the filters [`list_query`] checks row
/// by row within a window first.
fn searches(query: &ListQuery) -> bool {
    !query.tags.is_empty() || !query.labels.is_empty() || !query.text_terms().is_empty()
}

/// The statement [`ConversionStore::list`] runs, after `prefix` (e.g. `EXPLAIN `).
///
/// Every filter narrows an indexed walk: the tenant's rows in sort order
/// (`conversions_tenant_created`, `_tenant_finished`, `_tenant_status_created`), tags through
/// the GIN index on `tags`, full text through the GIN index on `search`; one row more than the
/// page tells whether another page follows.
///
/// A search (tags, full text or labels) runs in up to three steps, because no one plan is fast
/// for both broad and rare matches. With `window`, the statement takes only the first `window`
/// rows of the list order that pass the plain filters (tenant, status, formats, ranges,
/// cursor), walking a b-tree index in order, and checks the tags, text and labels on those:
/// when a quarter of the records match, a page is found among a few dozen rows instead of by
/// reading and sorting every match from the GIN indexes. If that fills the page (one row more
/// than the limit), those are exactly the first rows of the whole order (any earlier match
/// would lie inside the window). Otherwise the matches are rare and the statement without
/// `window` lets the GIN indexes find them (behind a `MATERIALIZED` fence when text meets tags
/// or labels), then sorts the few it found.
fn list_query(query: &ListQuery, prefix: &str, window: Option<i64>) -> QueryBuilder<Postgres> {
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
    // The last step of a search that combines text with tags or labels finds every match
    // first: without the fence, the planner may walk the list order's index and filter it, as
    // it takes the kinds to be independent and expects an early page, which reads every row
    // when they rarely or never meet (measured: 59 ms over 100,000 records for a label and a
    // word that never meet, 9 ms through the GIN indexes). Other searches are left to the
    // planner: without text, it finds broad matches faster by scanning the table.
    let fenced = window.is_none()
        && !query.text_terms().is_empty()
        && (!query.tags.is_empty() || !query.labels.is_empty());
    let mut qb: QueryBuilder<Postgres> = QueryBuilder::new(prefix);
    if window.is_some() {
        qb.push(format!(
            "SELECT {} FROM (SELECT * FROM conversions WHERE TRUE",
            columns!()
        ));
    } else if fenced {
        qb.push(format!(
            "WITH matches AS MATERIALIZED (SELECT {} FROM conversions WHERE TRUE",
            columns!()
        ));
    } else {
        qb.push(format!("SELECT {} FROM conversions WHERE TRUE", columns!()));
    }
    if let Some(tenant) = &query.tenant {
        qb.push(" AND tenant = ").push_bind(tenant.clone());
    }
    if !query.statuses.is_empty() {
        let statuses: Vec<String> = query
            .statuses
            .iter()
            .map(|s| s.as_str().to_owned())
            .collect();
        qb.push(" AND status = ANY(").push_bind(statuses).push(")");
    }
    if let Some(f) = &query.source_format {
        qb.push(" AND source_format = ")
            .push_bind(f.as_str().to_owned());
    }
    if let Some(f) = &query.target_format {
        qb.push(" AND target_format = ")
            .push_bind(f.as_str().to_owned());
    }
    if let Some(t) = query.created_after {
        qb.push(" AND created_at >= ").push_bind(t);
    }
    if let Some(t) = query.created_before {
        qb.push(" AND created_at < ").push_bind(t);
    }
    if let Some(t) = query.finished_after {
        qb.push(" AND finished_at >= ").push_bind(t);
    }
    if let Some(t) = query.finished_before {
        qb.push(" AND finished_at < ").push_bind(t);
    }
    if let Some(t) = query.updated_before {
        qb.push(" AND updated_at < ").push_bind(t);
    }
    if sort.by_finished() {
        qb.push(" AND finished_at IS NOT NULL");
    }
    if let Some(cursor) = query.cursor {
        qb.push(format!(" AND ({key}, id) {cmp} ("))
            .push_bind(cursor.at)
            .push(", ")
            .push_bind(*cursor.id.as_uuid())
            .push(")");
    }
    if let Some(window) = window {
        qb.push(format!(" ORDER BY {key} {dir}, id {dir} LIMIT "))
            .push_bind(window)
            .push(") AS conversions WHERE TRUE");
    }
    if !query.labels.is_empty() {
        // Containment of all of them at once uses the GIN index on labels.
        let labels: BTreeMap<String, String> = query.labels.iter().cloned().collect();
        if labels.len() == query.labels.len() {
            // The label index holds only records with labels (as any match has).
            qb.push(" AND labels <> '{}'::jsonb AND labels @> ")
                .push_bind(Json(labels));
        } else {
            // The same key asked for with two values: nothing can match.
            qb.push(" AND FALSE");
        }
    }
    if !query.tags.is_empty() {
        // The tag index holds only records with tags (as any match has).
        qb.push(" AND tags <> '{}'::text[] AND tags && ")
            .push_bind(query.tags.clone())
            .push("::text[]");
    }
    let terms = query.text_terms();
    if !terms.is_empty() {
        // In a window the text is checked row by row. A scalar subquery parses the query once
        // per statement: once PostgreSQL caches a generic plan for the prepared window, a bare
        // `to_tsquery($n)` is no longer folded into a constant and is parsed and stemmed again
        // for every row it checks (measured: 3.4 -> 2.0 ms for a window of 1,233 rows). The
        // statement without a window keeps the call in sight of the planner, which estimates
        // the text's selectivity from its value.
        let (open, close) = if window.is_some() {
            ("(SELECT to_tsquery('converto_search'::regconfig, ", "))")
        } else {
            ("to_tsquery('converto_search'::regconfig, ", ")")
        };
        // The text index holds only records with words (as any match has).
        qb.push(" AND search <> ''::tsvector AND search @@ ")
            .push(open)
            .push_bind(ts_query(&terms))
            .push(close);
    }
    if fenced {
        qb.push(format!(") SELECT {} FROM matches", columns!()));
    }
    // One extra row says whether there is a next page.
    qb.push(format!(" ORDER BY {key} {dir}, id {dir} LIMIT "))
        .push_bind(i64::try_from(limit + 1).unwrap_or(i64::MAX));
    qb
}

impl PostgresConversionStore {
    /// `EXPLAIN` of the statement [`ConversionStore::list`] runs for `query`: the plan's lines.
    /// For tests that check every search is served from an index.
    #[doc(hidden)]
    pub async fn explain_list(&self, query: &ListQuery) -> Result<Vec<String>, StoreError> {
        let mut plan = Vec::new();
        let windows = windowed(query).then_some(SEARCH_WINDOWS[0]);
        for window in windows.into_iter().map(Some).chain([None]) {
            let rows = list_query(query, "EXPLAIN ", window)
                .build()
                .fetch_all(&self.shared.pool)
                .await
                .map_err(sql)?;
            for row in &rows {
                plan.push(get::<String>(row, "QUERY PLAN")?);
            }
        }
        Ok(plan)
    }
}

#[async_trait]
impl ConversionStore for PostgresConversionStore {
    async fn create(&self, new: NewConversion) -> Result<Created, StoreError> {
        let record = new.into_record(now_micros());
        // Twice at most: the record an idempotency key named may be deleted between our insert
        // (which then did nothing) and our read of it; the second insert then succeeds.
        for _ in 0..2 {
            match self.inserts.call(Insert::new(&record)?).await? {
                Inserted::Yes => {
                    self.recent.keep(&record);
                    return Ok(Created {
                        conversion: record,
                        created: true,
                    });
                }
                Inserted::IdTaken => return Err(StoreError::AlreadyExists { id: record.id }),
                Inserted::KeyTaken => {}
            }
            // An idempotent replay: return the record the key already names.
            let existing = sqlx::query(GET_BY_KEY)
                .bind(&record.tenant)
                .bind(&record.idempotency_key)
                .fetch_optional(&self.shared.pool)
                .await
                .map_err(sql)?;
            if let Some(row) = existing {
                return Ok(Created {
                    conversion: decode(&row)?,
                    created: false,
                });
            }
        }
        Err(PostgresError::Contended {
            id: record.id,
            attempts: 2,
        }
        .into())
    }

    async fn get(&self, id: ConversionId) -> Result<Conversion, StoreError> {
        self.fetch(id).await?.ok_or(StoreError::NotFound { id })
    }

    async fn list(&self, query: &ListQuery) -> Result<Page, StoreError> {
        let limit = query.effective_limit();
        let windows: &[i64] = if windowed(query) {
            &SEARCH_WINDOWS
        } else {
            &[]
        };
        let mut found_before: Option<(i64, usize)> = None;
        for &window in windows {
            if let Some((before, found)) = found_before
                && !worth_widening(before, found, window, limit)
            {
                break;
            }
            let rows = list_query(query, "", Some(window))
                .build()
                .fetch_all(&self.shared.pool)
                .await
                .map_err(sql)?;
            if rows.len() > limit {
                let items = rows.iter().map(decode).collect::<Result<Vec<_>, _>>()?;
                return Ok(Page::from_overfetch(items, limit, query.sort));
            }
            found_before = Some((window, rows.len()));
        }
        let rows = list_query(query, "", None)
            .build()
            .fetch_all(&self.shared.pool)
            .await
            .map_err(sql)?;
        let items = rows.iter().map(decode).collect::<Result<Vec<_>, _>>()?;
        Ok(Page::from_overfetch(items, limit, query.sort))
    }

    async fn transition(
        &self,
        id: ConversionId,
        transition: &Transition,
    ) -> Result<Conversion, StoreError> {
        let written = self
            .recent
            .transition(
                id,
                transition,
                now_micros,
                CAS_ATTEMPTS,
                || async move { self.fetch(id).await?.ok_or(StoreError::NotFound { id }) },
                |next, version| async move {
                    let write = Write::new(&next, version)?;
                    let written = self.writes.call(write).await?;
                    Ok(written.then_some(next))
                },
            )
            .await?;
        if let Some(next) = written {
            return Ok(next);
        }
        Err(PostgresError::Contended {
            id,
            attempts: CAS_ATTEMPTS,
        }
        .into())
    }

    async fn delete(&self, id: ConversionId) -> Result<Conversion, StoreError> {
        self.recent.forget(id);
        let row = sqlx::query(DELETE)
            .bind(id.as_uuid())
            .fetch_optional(&self.shared.pool)
            .await
            .map_err(sql)?;
        row.as_ref()
            .map(decode)
            .transpose()?
            .ok_or(StoreError::NotFound { id })
    }

    async fn count_by_status(&self) -> Result<BTreeMap<Status, u64>, StoreError> {
        let rows: Vec<(String, i64)> = sqlx::query_as(COUNT_BY_STATUS)
            .fetch_all(&self.shared.pool)
            .await
            .map_err(sql)?;
        rows.into_iter()
            .map(|(status, n)| {
                let status: Status = status.parse().map_err(|e| corrupt("status", e))?;
                Ok((status, u64::try_from(n).unwrap_or(0)))
            })
            .collect()
    }

    async fn tenant_usage(&self, tenant: &str) -> Result<TenantUsage, StoreError> {
        let (queued, running, bytes): (i64, i64, i64) = sqlx::query_as(TENANT_USAGE)
            .bind(tenant)
            .fetch_one(&self.shared.pool)
            .await
            .map_err(sql)?;
        let n = |v: i64| u64::try_from(v).map_err(|_| corrupt("usage", v));
        Ok(converto_core::store::TenantUsage {
            queued: n(queued)?,
            running: n(running)?,
            stored_bytes: n(bytes)?,
        })
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.shared.pool)
            .await
            .map_err(sql)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wider_window_is_walked_only_when_its_likely_matches_fill_the_page() {
        // 20 a page: 21 rows wanted. At 2 in 256, 4,096 rows likely hold 32.
        assert!(worth_widening(256, 2, 4096, 20));
        // At 1 in 256, 16: short of a page, so the indexes answer at once.
        assert!(!worth_widening(256, 1, 4096, 20));
        assert!(!worth_widening(256, 0, 4096, 20));
        // A page of 100 needs 7 in 256.
        assert!(!worth_widening(256, 6, 4096, 100));
        assert!(worth_widening(256, 7, 4096, 100));
        // No overflow at the extremes.
        assert!(worth_widening(1, usize::MAX, i64::MAX, usize::MAX - 1));
        assert!(!worth_widening(i64::MAX, 0, 1, 0));
    }
}

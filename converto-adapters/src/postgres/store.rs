//! [`PostgresConversionStore`]: conversion records in the `conversions` table.

use std::collections::BTreeMap;
use std::fmt::Display;

use async_trait::async_trait;
use converto_core::conversion::{
    Artifact, Conversion, ErrorInfo, NewConversion, Progress, Status, Transition,
};
use converto_core::store::{
    ConversionStore, Created, ListQuery, Page, StoreError, transition_by_cas,
};
use converto_core::{ConversionId, Format, search};
use sqlx::postgres::PgRow;
use sqlx::types::Json;
use sqlx::{Postgres, QueryBuilder, Row};
use uuid::Uuid;

use super::{PostgresError, Shared, now_micros, to_i64};

/// The columns of a record, in the order `decode` reads them by name.
macro_rules! columns {
    () => {
        "id, tenant, source_format, target_format, options, labels, priority, status, progress, \
         attempts, error, artifacts, input_key, input_name, input_size, idempotency_key, \
         created_at, started_at, finished_at, updated_at, version, description, tags"
    };
}

const INSERT: &str = concat!(
    "INSERT INTO conversions (",
    columns!(),
    ", search) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, \
     $17, $18, $19, $20, $21, $22, $23, to_tsvector('converto_search'::regconfig, $24)) \
     ON CONFLICT (tenant, idempotency_key) DO NOTHING"
);
const GET: &str = concat!("SELECT ", columns!(), " FROM conversions WHERE id = $1");
const GET_BY_KEY: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM conversions WHERE tenant = $1 AND idempotency_key = $2"
);
const DELETE: &str = concat!(
    "DELETE FROM conversions WHERE id = $1 RETURNING ",
    columns!()
);
/// The compare-and-set: only the version read before applying the transition may be replaced.
const UPDATE_IF_VERSION: &str = "UPDATE conversions SET status = $3, progress = $4, \
     attempts = $5, error = $6, artifacts = $7, started_at = $8, finished_at = $9, \
     updated_at = $10, version = $11 WHERE id = $1 AND version = $2";
/// One tenant's usage, an index-only scan of `conversions_tenant_usage`.
const TENANT_USAGE: &str = "SELECT count(*) FILTER (WHERE status = 'queued'), \
     count(*) FILTER (WHERE status = 'running'), coalesce(sum(stored_bytes), 0)::bigint \
     FROM conversions WHERE tenant = $1";
const COUNT_BY_STATUS: &str = "SELECT status, count(*) FROM conversions GROUP BY status";

/// How often a transition re-reads and retries when other writers keep winning the
/// compare-and-set. Each lost round means another writer made progress.
const CAS_ATTEMPTS: u32 = 32;

/// Conversion records in PostgreSQL.
///
/// Filtered columns (tenant, formats, status, timestamps, input name) are real columns; options,
/// labels, progress, error and artifacts are JSONB. Transitions read the record, apply
/// [`Transition::apply`] and write it back only if its version is unchanged, so of concurrent
/// writers exactly one wins and the others see the winner's result.
#[derive(Debug)]
pub struct PostgresConversionStore {
    shared: Shared,
}

impl PostgresConversionStore {
    pub(super) fn new(shared: Shared) -> Self {
        Self { shared }
    }

    async fn fetch(&self, id: ConversionId) -> Result<Option<Conversion>, StoreError> {
        let row = sqlx::query(GET)
            .bind(id.as_uuid())
            .fetch_optional(&self.shared.pool)
            .await
            .map_err(sql)?;
        row.as_ref().map(decode).transpose()
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

/// The statement [`ConversionStore::list`] runs, after `prefix` (e.g. `EXPLAIN `).
///
/// Every filter narrows an indexed walk: the tenant's rows in sort order
/// (`conversions_tenant_created`, `_tenant_finished`, `_tenant_status_created`), tags through
/// the GIN index on `tags`, full text through the GIN index on `search`; one row more than the
/// page tells whether another page follows.
/// How many rows of the list order a search looks at first, then how many the second time,
/// before it lets the tag and text indexes drive the query (see [`list_query`]).
const SEARCH_WINDOWS: [i64; 2] = [256, 4096];

/// Whether `query` filters by tags, full text or labels: the filters [`list_query`] checks row
/// by row within a window first.
fn searches(query: &ListQuery) -> bool {
    !query.tags.is_empty() || !query.labels.is_empty() || !query.text_terms().is_empty()
}

/// The statement [`ConversionStore::list`] runs, after `prefix` (e.g. `EXPLAIN `).
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
            qb.push(" AND labels @> ").push_bind(Json(labels));
        } else {
            // The same key asked for with two values: nothing can match.
            qb.push(" AND FALSE");
        }
    }
    if !query.tags.is_empty() {
        qb.push(" AND tags && ")
            .push_bind(query.tags.clone())
            .push("::text[]");
    }
    let terms = query.text_terms();
    if !terms.is_empty() {
        qb.push(" AND search @@ to_tsquery('converto_search'::regconfig, ")
            .push_bind(ts_query(&terms))
            .push(")");
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
        let input_size = to_i64("input_size", record.input_size)?;
        let version = to_i64("version", record.version)?;
        // Twice at most: the record an idempotency key named may be deleted between our insert
        // (which then did nothing) and our read of it; the second insert then succeeds.
        for _ in 0..2 {
            let inserted = sqlx::query(INSERT)
                .bind(record.id.as_uuid())
                .bind(&record.tenant)
                .bind(record.source_format.as_str())
                .bind(record.target_format.as_str())
                .bind(Json(&record.options))
                .bind(Json(&record.labels))
                .bind(record.priority)
                .bind(record.status.as_str())
                .bind(record.progress.as_ref().map(Json))
                .bind(i64::from(record.attempts))
                .bind(record.error.as_ref().map(Json))
                .bind(Json(&record.artifacts))
                .bind(&record.input_key)
                .bind(&record.input_name)
                .bind(input_size)
                .bind(&record.idempotency_key)
                .bind(record.created_at)
                .bind(record.started_at)
                .bind(record.finished_at)
                .bind(record.updated_at)
                .bind(version)
                .bind(&record.description)
                .bind(&record.tags)
                .bind(search::index_text(
                    record.input_name.as_deref(),
                    record.description.as_deref(),
                ))
                .execute(&self.shared.pool)
                .await;
            match inserted {
                Ok(r) if r.rows_affected() == 1 => {
                    return Ok(Created {
                        conversion: record,
                        created: true,
                    });
                }
                Ok(_) => {}
                // The idempotency constraint is the conflict target, so a unique violation
                // can only be the primary key.
                Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
                    return Err(StoreError::AlreadyExists { id: record.id });
                }
                Err(e) => return Err(sql(e)),
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
        for &window in windows {
            let rows = list_query(query, "", Some(window))
                .build()
                .fetch_all(&self.shared.pool)
                .await
                .map_err(sql)?;
            if rows.len() > limit {
                let items = rows.iter().map(decode).collect::<Result<Vec<_>, _>>()?;
                return Ok(Page::from_overfetch(items, limit, query.sort));
            }
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
        let written = transition_by_cas(
            transition,
            now_micros,
            CAS_ATTEMPTS,
            || async move { self.fetch(id).await?.ok_or(StoreError::NotFound { id }) },
            |next, version| async move {
                let updated = sqlx::query(UPDATE_IF_VERSION)
                    .bind(id.as_uuid())
                    .bind(to_i64("version", version)?)
                    .bind(next.status.as_str())
                    .bind(next.progress.as_ref().map(Json))
                    .bind(i64::from(next.attempts))
                    .bind(next.error.as_ref().map(Json))
                    .bind(Json(&next.artifacts))
                    .bind(next.started_at)
                    .bind(next.finished_at)
                    .bind(next.updated_at)
                    .bind(to_i64("version", next.version)?)
                    .execute(&self.shared.pool)
                    .await
                    .map_err(sql)?;
                Ok((updated.rows_affected() == 1).then_some(next))
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

    async fn tenant_usage(
        &self,
        tenant: &str,
    ) -> Result<converto_core::store::TenantUsage, StoreError> {
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

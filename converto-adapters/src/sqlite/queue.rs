use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use sqlx::Row;
use sqlx::sqlite::SqlitePool;
use tokio::sync::Notify;

use converto_core::ConversionId;
use converto_core::conversion::ErrorInfo;
use converto_core::queue::{
    JobQueue, JobSpec, Lease, Look, QueueError, QueueStats, ReserveOptions, after, new_lease_token,
    wait_for_jobs,
};

use super::{BACKEND, SqliteError, from_nanos, query_error, to_nanos};

/// How often a waiting reserver looks at the table even when nothing in this process woke it.
///
/// Enqueues and retries made in this process wake reservers at once (an in-process [`Notify`]
/// shared by every queue on the same file), and delayed jobs and leases wake them with a timer
/// set to the next due time. Only a job enqueued by *another process* sharing the file has no way
/// to signal this one; this bounded re-check (one indexed read, no write lock) is what notices it.
const EXTERNAL_RECHECK: Duration = Duration::from_secs(1);

/// The lease guard shared by heartbeat, ack, retry and dead-letter: the job is leased, with this
/// token, and the lease has not run out.
const HELD: &str = "id = ? AND state = 'leased' AND lease_token = ? AND lease_expires > ?";

/// The next `?2` deliveries at time `?1` in the fair order of [`converto_core::queue`]:
///
/// - `live`: the tenants with a queued or leased job, found by skipping through the
///   `converto_jobs_tenant_order` index (one probe per tenant, however long their backlogs);
/// - `candidates`: each tenant's first `?2` deliverable jobs (queued and due, or leased with an
///   expired lease) in its own order, with the tenant's turn count;
/// - `ranked`: each candidate's turn (the count, lifted to the highest count minus one, plus its
///   place among its tenant's candidates);
///
/// then the first `?2` by turn, priority, not-before and enqueue order, each with its turn and
/// how many tenants had candidates (turn counts move only when two or more did). The tenants
/// in the JSON array `?3` are skipped ([`ReserveOptions::skip_tenants`]).
const FAIR_PICK: &str = "WITH RECURSIVE live(tenant) AS ( \
       SELECT (SELECT tenant FROM converto_jobs WHERE state IN ('queued', 'leased') \
               ORDER BY tenant LIMIT 1) \
       UNION ALL \
       SELECT (SELECT j.tenant FROM converto_jobs AS j \
               WHERE j.state IN ('queued', 'leased') AND j.tenant > live.tenant \
               ORDER BY j.tenant LIMIT 1) \
       FROM live WHERE live.tenant IS NOT NULL), \
     candidates AS ( \
       SELECT j.id, j.tenant, j.priority, j.not_before, j.seq, j.deliveries, \
              COALESCE(t.turns, 0) AS turns \
       FROM live \
       JOIN converto_jobs AS j ON j.id IN ( \
           SELECT c.id FROM converto_jobs AS c \
           WHERE c.tenant = live.tenant AND c.state IN ('queued', 'leased') \
             AND ((c.state = 'queued' AND c.not_before <= ?1) \
               OR (c.state = 'leased' AND c.lease_expires <= ?1)) \
           ORDER BY c.priority DESC, c.not_before, c.seq LIMIT ?2) \
       LEFT JOIN converto_job_tenants AS t ON t.tenant = live.tenant \
       WHERE live.tenant IS NOT NULL \
         AND live.tenant NOT IN (SELECT value FROM json_each(?3))), \
     ranked AS ( \
       SELECT id, tenant, priority, not_before, seq, deliveries, \
              MAX(turns, MAX(turns) OVER () - 1) - 1 + ROW_NUMBER() OVER ( \
                  PARTITION BY tenant ORDER BY priority DESC, not_before, seq) AS turn \
       FROM candidates) \
     SELECT id, tenant, priority, deliveries, turn, \
            (SELECT COUNT(DISTINCT tenant) FROM candidates) AS tenants \
     FROM ranked ORDER BY turn, priority DESC, not_before, seq LIMIT ?2";

/// One wake-up signal per database file in this process, so that two backends opened on the same
/// file (say an API and its workers) wake each other at once instead of at the next re-check.
fn shared_wake(path: PathBuf) -> Arc<Notify> {
    static WAKES: OnceLock<Mutex<HashMap<PathBuf, Weak<Notify>>>> = OnceLock::new();
    let mut wakes = WAKES.get_or_init(Default::default).lock();
    if let Some(wake) = wakes.get(&path).and_then(Weak::upgrade) {
        return wake;
    }
    wakes.retain(|_, w| w.strong_count() > 0);
    let wake = Arc::new(Notify::new());
    wakes.insert(path, Arc::downgrade(&wake));
    wake
}

impl From<SqliteError> for QueueError {
    fn from(e: SqliteError) -> Self {
        QueueError::Backend(e.into())
    }
}

fn out_of_range(field: &'static str) -> QueueError {
    SqliteError::OutOfRange { field }.into()
}

fn decode_id(text: &str) -> Result<ConversionId, QueueError> {
    text.parse()
        .map_err(|e| QueueError::backend(BACKEND, false, e))
}

/// A job queue in a SQLite table.
///
/// Each job is a row with its priority, not-before time, enqueue sequence number, delivery count,
/// state (`queued`, `leased` or `dead`), lease token, lease expiry and tenant. `reserve` picks
/// and leases jobs inside one `BEGIN IMMEDIATE` transaction, in the fair order of
/// [`converto_core::queue`] (tenants take turns, counted in `converto_job_tenants`; within a
/// tenant, highest priority first, then earliest not-before, then enqueue order); a lease that
/// ran out makes its job deliverable again, with the next attempt number. Every later call on a
/// lease checks its token and expiry in the same statement that changes the row.
#[derive(Debug)]
pub struct SqliteJobQueue {
    pool: SqlitePool,
    wake: Arc<Notify>,
}

impl SqliteJobQueue {
    /// A queue on `pool`; `database` (the file's canonical path, `None` in memory) picks the
    /// wake-up signal shared with every other queue on the same file in this process.
    pub(super) fn new(pool: SqlitePool, database: Option<PathBuf>) -> Self {
        let wake = match database {
            Some(path) => shared_wake(path),
            None => Arc::new(Notify::new()),
        };
        Self { pool, wake }
    }

    /// Leases up to `max` deliverable jobs; also says when the next job or lease comes due.
    async fn try_reserve(
        &self,
        max: usize,
        lease_for: Duration,
        options: &ReserveOptions,
    ) -> Result<(Vec<Lease>, Option<DateTime<Utc>>), QueueError> {
        let now_n = to_nanos(Utc::now());
        let max = i64::try_from(max).unwrap_or(i64::MAX);
        let skip = serde_json::to_string(&options.skipped())
            .map_err(|e| QueueError::backend(BACKEND, false, e))?;
        // A plain read first, so reservers on an idle queue never take the write lock.
        let (ready, next_due): (bool, Option<i64>) = sqlx::query_as(
            "SELECT \
               EXISTS (SELECT 1 FROM converto_jobs \
                       WHERE ((state = 'queued' AND not_before <= ?1) \
                          OR (state = 'leased' AND lease_expires <= ?1)) \
                         AND tenant NOT IN (SELECT value FROM json_each(?2))), \
               (SELECT MIN(due) FROM ( \
                  SELECT MIN(not_before) AS due FROM converto_jobs \
                      WHERE state = 'queued' AND not_before > ?1 \
                  UNION ALL \
                  SELECT MIN(lease_expires) AS due FROM converto_jobs WHERE state = 'leased'))",
        )
        .bind(now_n)
        .bind(&skip)
        .fetch_one(&self.pool)
        .await
        .map_err(query_error("reserve"))?;
        if !ready {
            return Ok((Vec::new(), next_due.map(from_nanos)));
        }
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(query_error("reserve"))?;
        // Measured once the write lock is held, so a wait for it does not shorten the lease.
        let now = Utc::now();
        let now_n = to_nanos(now);
        let expires_at = after(now, lease_for);
        let rows = sqlx::query(FAIR_PICK)
            .bind(now_n)
            .bind(max)
            .bind(&skip)
            .fetch_all(&mut *tx)
            .await
            .map_err(query_error("reserve"))?;
        let mut leases = Vec::with_capacity(rows.len());
        // Each tenant served, and the turn after its last job here.
        let mut served: HashMap<String, i64> = HashMap::new();
        let mut count_turns = false;
        for row in rows {
            let id: String = row.try_get("id").map_err(query_error("reserve"))?;
            let tenant: String = row.try_get("tenant").map_err(query_error("reserve"))?;
            let turn: i64 = row.try_get("turn").map_err(query_error("reserve"))?;
            let tenants: i64 = row.try_get("tenants").map_err(query_error("reserve"))?;
            count_turns = tenants > 1;
            let next = served.entry(tenant).or_insert(0);
            *next = (*next).max(turn + 1);
            let priority: i32 = row.try_get("priority").map_err(query_error("reserve"))?;
            let deliveries: i64 = row.try_get("deliveries").map_err(query_error("reserve"))?;
            let attempt = u32::try_from(deliveries + 1).map_err(|_| out_of_range("deliveries"))?;
            let token = new_lease_token();
            sqlx::query(
                "UPDATE converto_jobs SET state = 'leased', deliveries = deliveries + 1, \
                 lease_token = ?, lease_expires = ? WHERE id = ?",
            )
            .bind(i64::try_from(token).map_err(|_| out_of_range("lease token"))?)
            .bind(to_nanos(expires_at))
            .bind(&id)
            .execute(&mut *tx)
            .await
            .map_err(query_error("reserve"))?;
            leases.push(Lease {
                id: decode_id(&id)?,
                attempt,
                priority,
                token,
                expires_at,
            });
        }
        if count_turns {
            for (tenant, turns) in served {
                sqlx::query(
                    "INSERT INTO converto_job_tenants (tenant, turns) VALUES (?, ?) \
                     ON CONFLICT (tenant) DO UPDATE SET turns = MAX(turns, excluded.turns)",
                )
                .bind(tenant)
                .bind(turns)
                .execute(&mut *tx)
                .await
                .map_err(query_error("reserve"))?;
            }
        }
        tx.commit().await.map_err(query_error("reserve"))?;
        // Empty: another reserver took what was there. Look again at once rather than trust the
        // due time read before the race.
        let next_due = if leases.is_empty() {
            Some(now)
        } else {
            next_due.map(from_nanos)
        };
        Ok((leases, next_due))
    }

    /// Runs `sql` (an UPDATE or DELETE guarded by [`HELD`] binds that come last) for the lease.
    async fn on_held_lease(
        &self,
        operation: &'static str,
        lease: &Lease,
        query: sqlx::query::Query<'_, sqlx::Sqlite, sqlx::sqlite::SqliteArguments>,
    ) -> Result<(), QueueError> {
        let Ok(token) = i64::try_from(lease.token) else {
            // No token this queue hands out looks like that.
            return Err(QueueError::LeaseLost { id: lease.id });
        };
        let done = query
            .bind(lease.id.to_string())
            .bind(token)
            .bind(to_nanos(Utc::now()))
            .execute(&self.pool)
            .await
            .map_err(query_error(operation))?;
        if done.rows_affected() == 1 {
            Ok(())
        } else {
            Err(QueueError::LeaseLost { id: lease.id })
        }
    }
}

#[async_trait]
impl JobQueue for SqliteJobQueue {
    async fn enqueue(&self, job: JobSpec) -> Result<bool, QueueError> {
        let done = sqlx::query(
            "INSERT INTO converto_jobs \
               (id, priority, not_before, seq, deliveries, state, tenant) \
             VALUES (?, ?, ?, (SELECT COALESCE(MAX(seq), 0) + 1 FROM converto_jobs), ?, \
                     'queued', ?) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(job.id.to_string())
        .bind(job.priority)
        .bind(to_nanos(job.not_before))
        .bind(i64::from(job.attempts))
        .bind(&job.tenant)
        .execute(&self.pool)
        .await
        .map_err(query_error("enqueue"))?;
        let added = done.rows_affected() == 1;
        if added {
            self.wake.notify_waiters();
        }
        Ok(added)
    }

    async fn reserve_with(
        &self,
        max: usize,
        lease_for: Duration,
        wait: Duration,
        options: &ReserveOptions,
    ) -> Result<Vec<Lease>, QueueError> {
        let also = options.wake.as_deref();
        wait_for_jobs(&self.wake, also, wait, move || async move {
            let (reserved, next_due) = self.try_reserve(max.max(1), lease_for, options).await?;
            Ok(Look {
                reserved,
                next_due_in: next_due.map(|due| (due - Utc::now()).to_std().unwrap_or_default()),
                recheck_in: Some(EXTERNAL_RECHECK),
            })
        })
        .await
    }

    async fn heartbeat(&self, lease: &Lease, lease_for: Duration) -> Result<Lease, QueueError> {
        let expires_at = after(Utc::now(), lease_for);
        let sql = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE converto_jobs SET lease_expires = ? WHERE {HELD}"
        )))
        .bind(to_nanos(expires_at));
        self.on_held_lease("heartbeat", lease, sql).await?;
        Ok(Lease {
            expires_at,
            ..lease.clone()
        })
    }

    async fn ack(&self, lease: &Lease) -> Result<(), QueueError> {
        let sql = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM converto_jobs WHERE {HELD}"
        )));
        self.on_held_lease("ack", lease, sql).await
    }

    async fn retry(&self, lease: &Lease, not_before: DateTime<Utc>) -> Result<(), QueueError> {
        let sql = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE converto_jobs SET state = 'queued', not_before = ?, \
             seq = (SELECT COALESCE(MAX(seq), 0) + 1 FROM converto_jobs), \
             lease_token = NULL, lease_expires = NULL WHERE {HELD}"
        )))
        .bind(to_nanos(not_before));
        self.on_held_lease("retry", lease, sql).await?;
        self.wake.notify_waiters();
        Ok(())
    }

    async fn release(&self, lease: &Lease) -> Result<(), QueueError> {
        // Not-before and sequence number kept: the job is back in its old place.
        let sql = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE converto_jobs SET state = 'queued', deliveries = MAX(deliveries - 1, 0), \
             lease_token = NULL, lease_expires = NULL WHERE {HELD}"
        )));
        self.on_held_lease("release", lease, sql).await?;
        self.wake.notify_waiters();
        Ok(())
    }

    async fn dead_letter(&self, lease: &Lease, error: &ErrorInfo) -> Result<(), QueueError> {
        let sql = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE converto_jobs SET state = 'dead', lease_token = NULL, lease_expires = NULL, \
             error_code = ?, error_message = ? WHERE {HELD}"
        )))
        .bind(error.code.clone())
        .bind(error.message.clone());
        self.on_held_lease("dead-letter", lease, sql).await
    }

    async fn remove(&self, id: ConversionId) -> Result<bool, QueueError> {
        let done = sqlx::query("DELETE FROM converto_jobs WHERE id = ?")
            .bind(id.to_string())
            .execute(&self.pool)
            .await
            .map_err(query_error("remove"))?;
        Ok(done.rows_affected() > 0)
    }

    async fn contains(&self, id: ConversionId) -> Result<bool, QueueError> {
        let live: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM converto_jobs WHERE id = ? AND state <> 'dead')",
        )
        .bind(id.to_string())
        .fetch_one(&self.pool)
        .await
        .map_err(query_error("contains"))?;
        Ok(live)
    }

    async fn stats(&self) -> Result<QueueStats, QueueError> {
        let row = sqlx::query(
            "SELECT \
               COUNT(CASE WHEN (state = 'queued' AND not_before <= ?1) \
                            OR (state = 'leased' AND lease_expires <= ?1) THEN 1 END) AS ready, \
               COUNT(CASE WHEN state = 'queued' AND not_before > ?1 THEN 1 END) AS delayed, \
               COUNT(CASE WHEN state = 'leased' AND lease_expires > ?1 THEN 1 END) AS leased, \
               COUNT(CASE WHEN state = 'dead' THEN 1 END) AS dead \
             FROM converto_jobs",
        )
        .bind(to_nanos(Utc::now()))
        .fetch_one(&self.pool)
        .await
        .map_err(query_error("stats"))?;
        let count = |name: &str| -> Result<u64, QueueError> {
            let n: i64 = row.try_get(name).map_err(query_error("stats"))?;
            u64::try_from(n).map_err(|_| out_of_range("count"))
        };
        Ok(QueueStats {
            ready: count("ready")?,
            delayed: count("delayed")?,
            leased: count("leased")?,
            dead: count("dead")?,
        })
    }

    async fn ping(&self) -> Result<(), QueueError> {
        Ok(super::ping(&self.pool).await?)
    }
}

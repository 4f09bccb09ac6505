//! [`PostgresJobQueue`]: jobs in the `jobs` table, reserved with `FOR UPDATE SKIP LOCKED` in
//! the fair order of [`converto_core::queue`], tenants' turn counts in `job_tenants`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use converto_core::ConversionId;
use converto_core::conversion::ErrorInfo;
use converto_core::queue::{
    JobQueue, JobSpec, Lease, Look, QueueError, QueueStats, ReserveOptions, new_lease_token,
    wait_for_jobs,
};
use sqlx::PgPool;
use sqlx::types::Json;
use tokio::sync::{Notify, OnceCell};
use uuid::Uuid;

use super::batch::{Batcher, unique_passes};
use super::{ListenerTask, PostgresError, Shared, micros, start_listener};

/// Enqueues a batch of jobs (no id twice), and wakes the reservers (of every process) waiting
/// on this schema's channel, once for the batch; returns the ids inserted. The notification
/// also goes out for delayed jobs: a waiting reserver recomputes its timer.
///
/// One notification per statement matters beyond saving calls: a transaction that notifies
/// holds PostgreSQL's notification queue lock from its commit's start to its end, its disk
/// flush included, so notifying writers commit one at a time.
const ENQUEUE: &str = "WITH ins AS ( \
         INSERT INTO jobs (id, priority, not_before, deliveries, tenant) \
         SELECT * FROM unnest($1::uuid[], $2::integer[], $3::timestamptz[], $4::bigint[], \
                              $5::text[]) \
         ON CONFLICT (id) DO NOTHING RETURNING id) \
     SELECT coalesce(array_agg(ins.id), '{}') AS ids, pg_notify($6, '')::text AS n FROM ins";

/// The most jobs one enqueue statement carries.
const ENQUEUE_BATCH: usize = 256;
/// How many enqueue statements run at once.
const ENQUEUE_LANES: usize = 2;

/// Enqueues a batch of jobs in one statement per pass (a job named twice goes in a second):
/// for each, whether it was inserted.
async fn enqueue_many(
    pool: PgPool,
    channel: Arc<str>,
    jobs: Vec<JobSpec>,
) -> Result<Vec<bool>, sqlx::Error> {
    let ids: Vec<Uuid> = jobs.iter().map(|j| *j.id.as_uuid()).collect();
    let mut inserted = vec![false; jobs.len()];
    for pass in unique_passes(&ids) {
        let (done, _): (Vec<Uuid>, Option<String>) = sqlx::query_as(ENQUEUE)
            .bind(pass.iter().map(|&i| ids[i]).collect::<Vec<_>>())
            .bind(pass.iter().map(|&i| jobs[i].priority).collect::<Vec<_>>())
            .bind(pass.iter().map(|&i| jobs[i].not_before).collect::<Vec<_>>())
            .bind(
                pass.iter()
                    .map(|&i| i64::from(jobs[i].attempts))
                    .collect::<Vec<_>>(),
            )
            .bind(
                pass.iter()
                    .map(|&i| jobs[i].tenant.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(&*channel)
            .fetch_one(&pool)
            .await?;
        for &i in &pass {
            inserted[i] = done.contains(&ids[i]);
        }
    }
    Ok(inserted)
}

/// Whether some lease has run out: one probe of `jobs_lease_expiry` for an entry at or before
/// now. (Not for the index's first entry, `min(expires_at)`: acked jobs are deleted, and their
/// entries, dead until the queue's next vacuum, sit ahead of the live leases, which a search
/// for the first live entry steps over one by one.)
macro_rules! a_lease_lapsed {
    () => {
        "(SELECT expires_at FROM jobs WHERE state = 'leased' AND token IS NOT NULL \
              AND expires_at <= now() ORDER BY expires_at LIMIT 1) IS NOT NULL"
    };
}

/// The leased jobs whose lease has run out: a range of `jobs_lease_expiry`, empty unless a
/// worker died or stalled. The last term is a one-time [`a_lease_lapsed`] probe, so a reserve
/// looks no further when no lease has run out, whatever plan PostgreSQL picks for the rest.
macro_rules! lease_expired {
    () => {
        concat!(
            "state = 'leased' AND token IS NOT NULL AND expires_at <= now() AND ",
            a_lease_lapsed!()
        )
    };
}

/// Leases up to `N` deliverable jobs in the fair order of [`converto_core::queue`], in one
/// statement. `$1` holds one fresh token per row, `$2` the lease in microseconds, `$3` the
/// tenants to skip ([`ReserveOptions::skip_tenants`], usually none).
///
/// - `live`: the tenants with work: those with a ready job, found by skipping through the
///   `jobs_tenant_ready` index (one probe per tenant, however long their backlogs), and those
///   with a lease that has run out;
/// - `candidates`: each tenant's first `N` deliverable jobs, locked `FOR UPDATE SKIP LOCKED`,
///   so concurrent reservers never wait for or share a job, with the tenant's turn count: its
///   ready and due jobs, walked in `jobs_tenant_ready`, and its jobs whose lease has run out
///   ([`lease_expired`]). Leased jobs are not in that index, so a reserve never steps over the
///   jobs being worked on (see the migration `20261210000000_ready_jobs_index.sql`);
/// - `ranked`: each candidate's turn (the count, lifted to the highest count minus one, plus its
///   place among its tenant's candidates); `numbered`: the first `N` by turn, priority,
///   not-before and enqueue order;
/// - `served`: when two or more tenants had candidates, each tenant served moves to the turn
///   after its last job (never back, should a concurrent reserver have moved it further);
/// - `tenants`: how many tenants had work, returned on every row: when one, the queue tries
///   [`RESERVE_SOLO`] next time.
///
/// `N` is written into the statement (see [`reserve_sql`]) rather than bound: with a bound
/// limit PostgreSQL re-plans the statement on every call (its generic plan, which must guess the
/// limit, loses to a custom one), and planning cost more than running it. With a literal limit,
/// each batch size's prepared statement switches to its cached generic plan after five calls.
const RESERVE: &str = concat!(
    "WITH RECURSIVE ready_tenants AS ( \
         (SELECT tenant FROM jobs WHERE state = 'ready' ORDER BY tenant LIMIT 1) \
       UNION ALL \
         SELECT (SELECT j.tenant FROM jobs AS j \
                 WHERE j.state = 'ready' AND j.tenant > r.tenant \
                 ORDER BY j.tenant LIMIT 1) \
         FROM ready_tenants AS r WHERE r.tenant IS NOT NULL), \
     live AS ( \
         SELECT tenant FROM ready_tenants WHERE tenant IS NOT NULL \
       UNION \
         SELECT tenant FROM jobs WHERE ",
    lease_expired!(),
    "), \
     candidates AS ( \
         SELECT live.tenant, c.id, c.priority, c.not_before, c.seq, \
                coalesce(t.turns, 0) AS turns \
         FROM live \
         LEFT JOIN job_tenants AS t ON t.tenant = live.tenant \
         CROSS JOIN LATERAL ( \
             SELECT * FROM ( \
                 SELECT id, priority, not_before, seq FROM jobs \
                 WHERE tenant = live.tenant AND state = 'ready' AND not_before <= now() \
                 ORDER BY priority DESC, not_before, seq \
                 LIMIT {N} FOR UPDATE SKIP LOCKED) AS ready \
             UNION ALL \
             SELECT * FROM ( \
                 SELECT id, priority, not_before, seq FROM jobs \
                 WHERE tenant = live.tenant AND ",
    lease_expired!(),
    " \
                 ORDER BY priority DESC, not_before, seq \
                 LIMIT {N} FOR UPDATE SKIP LOCKED) AS expired) AS c \
         WHERE live.tenant <> ALL($3::text[])), \
     ranked AS ( \
         SELECT id, tenant, priority, not_before, seq, \
                greatest(turns, max(turns) OVER () - 1) - 1 + row_number() OVER ( \
                    PARTITION BY tenant ORDER BY priority DESC, not_before, seq) AS turn \
         FROM candidates), \
     numbered AS ( \
         SELECT id, tenant, turn, \
                row_number() OVER (ORDER BY turn, priority DESC, not_before, seq) AS n \
         FROM ranked ORDER BY turn, priority DESC, not_before, seq LIMIT {N}), \
     served AS ( \
         INSERT INTO job_tenants AS t (tenant, turns) \
         SELECT tenant, max(turn) + 1 FROM numbered \
         WHERE (SELECT count(DISTINCT tenant) FROM candidates) > 1 \
         GROUP BY tenant \
         ON CONFLICT (tenant) DO UPDATE SET turns = greatest(t.turns, EXCLUDED.turns)), \
     tenants AS (SELECT count(*) AS n FROM live) \
     UPDATE jobs AS j \
     SET state = 'leased', deliveries = j.deliveries + 1, token = ($1::bigint[])[numbered.n], \
         expires_at = now() + $2 * interval '1 microsecond' \
     FROM numbered, tenants WHERE j.id = numbered.id \
     RETURNING j.id, j.deliveries, j.priority, j.token, j.expires_at, numbered.n, \
         tenants.n AS tenants"
);

/// [`RESERVE`] when a single tenant has work, which is what it then does: that tenant's first
/// `N` ready and due jobs in delivery order, walked in `jobs_tenant_ready`, its turn count
/// untouched. It finds the lowest and the highest tenant with a ready job (two probes of
/// `jobs_tenant_ready`) and leases nothing unless they are the same, so it never serves one
/// tenant while another waits, and nothing while some lease has run out ([`a_lease_lapsed`]):
/// the queue then falls back to [`RESERVE`], which takes such jobs back in their place in the
/// delivery order. A walk of the ready jobs alone is what makes this statement cheap: taking
/// lapsed leases here too (the fair statement's union) cost one-job reserves 8% of their rate.
/// The fair statement's windows, sorts, join and upsert cost about three times the plain
/// claim's execution; this one about as much as the claim. `$1` and `$2` as in [`RESERVE`] (no
/// tenant is skipped).
const RESERVE_SOLO: &str = concat!(
    "WITH span AS MATERIALIZED ( \
         SELECT (SELECT tenant FROM jobs WHERE state = 'ready' ORDER BY tenant LIMIT 1) AS lo, \
                (SELECT tenant FROM jobs WHERE state = 'ready' \
                 ORDER BY tenant DESC LIMIT 1) AS hi, \
                ",
    a_lease_lapsed!(),
    " AS lapsed), \
     numbered AS ( \
         SELECT id, row_number() OVER (ORDER BY priority DESC, not_before, seq) AS n FROM ( \
             SELECT id, priority, not_before, seq FROM jobs \
             WHERE tenant = (SELECT lo FROM span WHERE lo = hi AND NOT lapsed) \
               AND state = 'ready' AND not_before <= now() \
             ORDER BY priority DESC, not_before, seq \
             LIMIT {N} FOR UPDATE SKIP LOCKED) AS c) \
     UPDATE jobs AS j \
     SET state = 'leased', deliveries = j.deliveries + 1, token = ($1::bigint[])[numbered.n], \
         expires_at = now() + $2 * interval '1 microsecond' \
     FROM numbered WHERE j.id = numbered.id \
     RETURNING j.id, j.deliveries, j.priority, j.token, j.expires_at, numbered.n, \
         1::bigint AS tenants"
);

/// A reserve statement ([`RESERVE`] or [`RESERVE_SOLO`]) for batches of `n` (already clamped to `1..=MAX_BATCH`: a number we
/// chose, never text from outside).
fn reserve_sql(statement: &str, n: usize) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(statement.replace("{N}", &n.to_string()))
}

/// Microseconds until the next delayed job or lease comes due (negative if one is due now but
/// locked by a concurrent reserver), or NULL when there is none. Both halves use an index.
const NEXT_DUE: &str = "SELECT (EXTRACT(EPOCH FROM (least( \
         (SELECT min(not_before) FROM jobs WHERE state = 'ready' AND token IS NULL), \
         (SELECT min(expires_at) FROM jobs WHERE state = 'leased' AND token IS NOT NULL)) \
         - now())) * 1000000)::bigint";

/// [`NEXT_DUE`] for a reserve that skips the tenants in `$1`: their due jobs and expired leases
/// are not news (they would make a waiting reserver look again at once, in a loop), so only the
/// others' count. Used only when some tenant is skipped; the due rows of skipped tenants are
/// filtered out one by one, a cost paid once per empty look, not per job.
const NEXT_DUE_SKIPPING: &str = "SELECT (EXTRACT(EPOCH FROM (least( \
         (SELECT min(not_before) FROM jobs WHERE state = 'ready' AND token IS NULL \
             AND (not_before > now() OR tenant <> ALL($1::text[]))), \
         (SELECT min(expires_at) FROM jobs WHERE state = 'leased' AND token IS NOT NULL \
             AND (expires_at > now() OR tenant <> ALL($1::text[])))) \
         - now())) * 1000000)::bigint";

/// The fence every lease holder's call passes: the job is leased, to this token, and the lease
/// has not run out.
macro_rules! fenced {
    () => {
        "id = $1 AND state = 'leased' AND token = $2 AND expires_at > now()"
    };
}

const HEARTBEAT: &str = concat!(
    "UPDATE jobs SET expires_at = now() + $3 * interval '1 microsecond' WHERE ",
    fenced!(),
    " RETURNING expires_at"
);
const ACK: &str = concat!("DELETE FROM jobs WHERE ", fenced!());
const ACK_MANY: &str = "DELETE FROM jobs AS j USING unnest($1::uuid[], $2::bigint[]) AS a(id, token) \
     WHERE j.id = a.id AND j.state = 'leased' AND j.token = a.token AND j.expires_at > now() \
     RETURNING j.id";
const RETRY: &str = concat!(
    "WITH u AS (UPDATE jobs SET state = 'ready', not_before = $3, seq = nextval('jobs_seq'), \
         token = NULL, expires_at = NULL WHERE ",
    fenced!(),
    " RETURNING id) SELECT u.id FROM u, pg_notify($4, '') AS n"
);
/// Hands a delivery back uncounted, in its old place (not-before and sequence kept), and wakes
/// the reservers.
const RELEASE: &str = concat!(
    "WITH u AS (UPDATE jobs SET state = 'ready', deliveries = greatest(deliveries - 1, 0), \
         token = NULL, expires_at = NULL WHERE ",
    fenced!(),
    " RETURNING id) SELECT u.id FROM u, pg_notify($3, '') AS n"
);
const DEAD_LETTER: &str = concat!(
    "UPDATE jobs SET state = 'dead', error = $3, token = NULL, expires_at = NULL WHERE ",
    fenced!(),
    " RETURNING id"
);
const REMOVE: &str = "DELETE FROM jobs WHERE id = $1";
const CONTAINS: &str = "SELECT EXISTS (SELECT 1 FROM jobs WHERE id = $1 AND state <> 'dead')";
const STATS: &str = "SELECT \
     count(*) FILTER (WHERE (state = 'ready' AND not_before <= now()) \
                         OR (state = 'leased' AND expires_at <= now())), \
     count(*) FILTER (WHERE state = 'ready' AND not_before > now()), \
     count(*) FILTER (WHERE state = 'leased' AND expires_at > now()), \
     count(*) FILTER (WHERE state = 'dead') \
     FROM jobs";

/// The most jobs one reserve leases.
const MAX_BATCH: usize = 1000;
/// Jobs enqueued or completed (acked or removed) between two maintenance runs over the
/// queue's tables.
const VACUUM_EVERY: u64 = 10_000;
/// What the maintenance runs, on the tables every delivery writes: a vacuum, and fresh
/// statistics for the planner (see [`PostgresJobQueue`]).
const VACUUM: &str = "VACUUM (ANALYZE, SKIP_LOCKED) jobs, job_tenants";

/// When a due job exists but another reserver holds it, look again this soon.
const LOCKED_RETRY: Duration = Duration::from_millis(5);
/// Slack after a due time, so the job is due when we look again.
const DUE_SLACK: Duration = Duration::from_millis(1);

/// A job queue in PostgreSQL.
///
/// Reservers lease jobs with one `UPDATE … FOR UPDATE SKIP LOCKED` statement, in the fair order
/// of [`converto_core::queue`] (tenants take turns), so concurrent reservers (in any number of
/// processes) never wait for or share a job. A reserver with
/// nothing to do sleeps until a `NOTIFY` from an enqueue or retry (received by one listening
/// connection per queue, started by the first waiting reserve) or until the next delayed job or
/// lease comes due. Acked jobs are deleted; dead letters stay, out of the reserve index.
///
/// Every delivery leaves dead row versions behind (the lease's update, the ack's delete), and
/// their index entries sit at the front of the reserve index, where every reserve starts its
/// walk: until a vacuum removes them, each reserve steps over all of them, and the queue slows
/// down in proportion to the jobs completed since. Autovacuum's thresholds (lowered for `jobs`
/// by the migrations) lag behind a busy queue, and it may be off, so the queue also vacuums its
/// two tables itself, in the background, after every 10,000 jobs it enqueued or completed
/// (acked or removed) in this process: reserves keep their fresh speed after any number of
/// completed jobs. (A transaction held open elsewhere still keeps the dead versions alive, as
/// it does for any vacuum.)
///
/// The same maintenance analyses the two tables. Without statistics, PostgreSQL takes a
/// tenant to hold half a percent of the jobs, and plans a reserve from a backlog as a bitmap
/// scan of all the tenant's jobs and a sort of them (which cannot stop early under
/// `FOR UPDATE SKIP LOCKED`) instead of a walk of `jobs_tenant_ready` that stops after the
/// batch: measured, 43 ms a reserve with 80,000 jobs queued instead of well under one.
#[derive(Debug)]
pub struct PostgresJobQueue {
    shared: Shared,
    channel: String,
    wake: Arc<Notify>,
    listener: OnceCell<ListenerTask>,
    /// Jobs enqueued or completed by this process, for the maintenance vacuum.
    changed: AtomicU64,
    /// A maintenance vacuum is running.
    vacuuming: Arc<AtomicBool>,
    /// The last reserve that leased anything saw a single tenant with work: try
    /// [`RESERVE_SOLO`] first.
    solo: AtomicBool,
    /// Concurrent enqueues, sent together.
    enqueues: Batcher<JobSpec, bool>,
}

#[derive(sqlx::FromRow)]
struct Reserved {
    id: Uuid,
    deliveries: i64,
    priority: i32,
    token: i64,
    expires_at: DateTime<Utc>,
    /// The place in the fair order.
    n: i64,
    /// How many tenants had ready or leased jobs (skipped ones included).
    tenants: i64,
}

fn sql(e: sqlx::Error) -> QueueError {
    PostgresError::Sql(e).into()
}

impl PostgresJobQueue {
    pub(super) fn new(shared: Shared) -> Self {
        let channel = shared.channel("jobs");
        let to = Arc::<str>::from(channel.as_str());
        let enqueues = Batcher::on_pool(
            &shared.queue_pool,
            ENQUEUE_BATCH,
            ENQUEUE_LANES,
            move |pool, jobs| enqueue_many(pool, Arc::clone(&to), jobs),
        );
        Self {
            shared,
            channel,
            enqueues,
            wake: Arc::new(Notify::new()),
            listener: OnceCell::new(),
            changed: AtomicU64::new(0),
            vacuuming: Arc::new(AtomicBool::new(false)),
            solo: AtomicBool::new(false),
        }
    }

    /// Counts `n` jobs enqueued or completed; every [`VACUUM_EVERY`], vacuums and analyses the
    /// queue's tables in the background (one run at a time; a failure is logged, the next
    /// threshold tries again).
    fn changed(&self, n: u64) {
        if n == 0 {
            return;
        }
        let before = self.changed.fetch_add(n, Ordering::Relaxed);
        if before / VACUUM_EVERY == (before + n) / VACUUM_EVERY
            || self.vacuuming.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let pool = self.shared.pool.clone();
        let vacuuming = Arc::clone(&self.vacuuming);
        tokio::spawn(async move {
            if let Err(e) = sqlx::raw_sql(VACUUM).execute(&pool).await {
                tracing::debug!(error = %e, "maintenance vacuum of the job queue failed");
            }
            vacuuming.store(false, Ordering::Release);
        });
    }

    /// Starts the listener that wakes waiting reservers, once; returns when it listens.
    async fn ensure_listener(&self) -> Result<(), QueueError> {
        self.listener
            .get_or_try_init(|| {
                let wake = Arc::clone(&self.wake);
                // A lost connection may have lost notifications too: wake everyone to look.
                start_listener(&self.shared.listen_pool, self.channel.clone(), move |_| {
                    wake.notify_waiters()
                })
            })
            .await?;
        Ok(())
    }

    /// One reserve: [`RESERVE_SOLO`] while the last reserve saw a single tenant with work (and
    /// no tenant is skipped), [`RESERVE`] otherwise or when the solo statement leased nothing
    /// (no due job, or a second tenant has work).
    async fn try_reserve(
        &self,
        max: usize,
        lease_for: Duration,
        skip: &[&str],
    ) -> Result<Vec<Lease>, QueueError> {
        let n = max.clamp(1, MAX_BATCH);
        let tokens: Vec<i64> = (0..n)
            // new_lease_token() stays below 2^63, so the conversion never fails.
            .map(|_| i64::try_from(new_lease_token()).unwrap_or(i64::MAX))
            .collect();
        let mut rows: Vec<Reserved> = Vec::new();
        if skip.is_empty() && self.solo.load(Ordering::Relaxed) {
            rows = sqlx::query_as(reserve_sql(RESERVE_SOLO, n))
                .bind(&tokens)
                .bind(micros(lease_for))
                .fetch_all(&self.shared.queue_pool)
                .await
                .map_err(sql)?;
            if rows.is_empty() {
                self.solo.store(false, Ordering::Relaxed);
            }
        }
        if rows.is_empty() {
            rows = sqlx::query_as(reserve_sql(RESERVE, n))
                .bind(&tokens)
                .bind(micros(lease_for))
                .bind(skip)
                .fetch_all(&self.shared.queue_pool)
                .await
                .map_err(sql)?;
            if skip.is_empty() && !rows.is_empty() {
                self.solo
                    .store(rows.iter().all(|r| r.tenants == 1), Ordering::Relaxed);
            }
        }
        rows.sort_by_key(|r| r.n);
        rows.into_iter()
            .map(|r| {
                Ok(Lease {
                    id: ConversionId::from_uuid(r.id),
                    attempt: u32::try_from(r.deliveries).unwrap_or(u32::MAX),
                    priority: r.priority,
                    token: u64::try_from(r.token).unwrap_or(0),
                    expires_at: r.expires_at,
                })
            })
            .collect()
    }

    /// How long until the next delayed job or lease comes due, if any.
    async fn next_due(&self, skip: &[&str]) -> Result<Option<Duration>, QueueError> {
        let query = if skip.is_empty() {
            sqlx::query_scalar(NEXT_DUE)
        } else {
            sqlx::query_scalar(NEXT_DUE_SKIPPING).bind(skip)
        };
        let us: Option<i64> = query
            .fetch_one(&self.shared.queue_pool)
            .await
            .map_err(sql)?;
        Ok(us.map(|us| {
            if us <= 0 {
                LOCKED_RETRY
            } else {
                Duration::from_micros(us.unsigned_abs()) + DUE_SLACK
            }
        }))
    }

    /// Acks many leases in one statement (the batched form of [`JobQueue::ack`]). Returns the
    /// ids whose lease was no longer held; those jobs were left alone.
    pub async fn ack_many(&self, leases: &[Lease]) -> Result<Vec<ConversionId>, QueueError> {
        if leases.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<Uuid> = leases.iter().map(|l| *l.id.as_uuid()).collect();
        let tokens: Vec<i64> = leases
            .iter()
            .map(|l| i64::try_from(l.token).unwrap_or(-1))
            .collect();
        // Planned for each batch, like the store's batched transitions (see `write_many` in
        // `store.rs`): a cached generic plan made while the table was small hashes a scan of
        // the whole table.
        let acked: Vec<Uuid> = sqlx::query_scalar(ACK_MANY)
            .persistent(false)
            .bind(ids)
            .bind(tokens)
            .fetch_all(&self.shared.queue_pool)
            .await
            .map_err(sql)?;
        self.changed(acked.len() as u64);
        Ok(leases
            .iter()
            .map(|l| l.id)
            .filter(|id| !acked.contains(id.as_uuid()))
            .collect())
    }

    /// The plans PostgreSQL would use for the reserve statements now (`EXPLAIN` output, one
    /// line per row: the fair statement's, then the single-tenant one's), for checking that
    /// reserves walk the `jobs_tenant_ready` index.
    pub async fn explain_reserve(&self, max: usize) -> Result<String, QueueError> {
        let n = max.clamp(1, MAX_BATCH);
        let mut lines: Vec<String> = Vec::new();
        for statement in [RESERVE, RESERVE_SOLO] {
            let statement = reserve_sql(statement, n).0;
            let mut query = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("EXPLAIN {statement}")))
                .bind(vec![1_i64; n])
                .bind(micros(Duration::from_secs(30)));
            if statement.contains("$3") {
                query = query.bind(Vec::<String>::new());
            }
            let plan: Vec<String> = query
                .fetch_all(&self.shared.queue_pool)
                .await
                .map_err(sql)?;
            lines.extend(plan);
        }
        Ok(lines.join("\n"))
    }

    fn token(lease: &Lease) -> i64 {
        // Tokens we hand out fit; anything else cannot match a stored token.
        i64::try_from(lease.token).unwrap_or(-1)
    }
}

#[async_trait]
impl JobQueue for PostgresJobQueue {
    async fn enqueue(&self, job: JobSpec) -> Result<bool, QueueError> {
        let inserted = self.enqueues.call(job).await?;
        if inserted {
            self.changed(1);
        }
        Ok(inserted)
    }

    async fn reserve_with(
        &self,
        max: usize,
        lease_for: Duration,
        wait: Duration,
        options: &ReserveOptions,
    ) -> Result<Vec<Lease>, QueueError> {
        let skip = options.skipped();
        let skip = skip.as_slice();
        if wait.is_zero() {
            return self.try_reserve(max, lease_for, skip).await;
        }
        self.ensure_listener().await?;
        let also = options.wake.as_deref();
        wait_for_jobs(&self.wake, also, wait, move || async move {
            let reserved = self.try_reserve(max, lease_for, skip).await?;
            let next_due_in = if reserved.is_empty() {
                self.next_due(skip).await?
            } else {
                None
            };
            Ok(Look {
                reserved,
                next_due_in,
                recheck_in: None,
            })
        })
        .await
    }

    async fn heartbeat(&self, lease: &Lease, lease_for: Duration) -> Result<Lease, QueueError> {
        let expires_at: Option<DateTime<Utc>> = sqlx::query_scalar(HEARTBEAT)
            .bind(lease.id.as_uuid())
            .bind(Self::token(lease))
            .bind(micros(lease_for))
            .fetch_optional(&self.shared.queue_pool)
            .await
            .map_err(sql)?;
        match expires_at {
            Some(expires_at) => Ok(Lease {
                expires_at,
                ..lease.clone()
            }),
            None => Err(QueueError::LeaseLost { id: lease.id }),
        }
    }

    async fn ack(&self, lease: &Lease) -> Result<(), QueueError> {
        let done = sqlx::query(ACK)
            .bind(lease.id.as_uuid())
            .bind(Self::token(lease))
            .execute(&self.shared.queue_pool)
            .await
            .map_err(sql)?;
        if done.rows_affected() == 1 {
            self.changed(1);
            Ok(())
        } else {
            Err(QueueError::LeaseLost { id: lease.id })
        }
    }

    async fn ack_many(&self, leases: &[Lease]) -> Result<Vec<ConversionId>, QueueError> {
        // The inherent method: one round trip for the whole batch.
        Self::ack_many(self, leases).await
    }

    fn batches_acks(&self) -> bool {
        true
    }

    async fn retry(&self, lease: &Lease, not_before: DateTime<Utc>) -> Result<(), QueueError> {
        let retried: Option<Uuid> = sqlx::query_scalar(RETRY)
            .bind(lease.id.as_uuid())
            .bind(Self::token(lease))
            .bind(not_before)
            .bind(&self.channel)
            .fetch_optional(&self.shared.queue_pool)
            .await
            .map_err(sql)?;
        retried
            .map(|_| ())
            .ok_or(QueueError::LeaseLost { id: lease.id })
    }

    async fn release(&self, lease: &Lease) -> Result<(), QueueError> {
        let released: Option<Uuid> = sqlx::query_scalar(RELEASE)
            .bind(lease.id.as_uuid())
            .bind(Self::token(lease))
            .bind(&self.channel)
            .fetch_optional(&self.shared.queue_pool)
            .await
            .map_err(sql)?;
        released
            .map(|_| ())
            .ok_or(QueueError::LeaseLost { id: lease.id })
    }

    async fn dead_letter(&self, lease: &Lease, error: &ErrorInfo) -> Result<(), QueueError> {
        let dead: Option<Uuid> = sqlx::query_scalar(DEAD_LETTER)
            .bind(lease.id.as_uuid())
            .bind(Self::token(lease))
            .bind(Json(error))
            .fetch_optional(&self.shared.queue_pool)
            .await
            .map_err(sql)?;
        dead.map(|_| ())
            .ok_or(QueueError::LeaseLost { id: lease.id })
    }

    async fn remove(&self, id: ConversionId) -> Result<bool, QueueError> {
        let done = sqlx::query(REMOVE)
            .bind(id.as_uuid())
            .execute(&self.shared.queue_pool)
            .await
            .map_err(sql)?;
        self.changed(done.rows_affected());
        Ok(done.rows_affected() > 0)
    }

    async fn contains(&self, id: ConversionId) -> Result<bool, QueueError> {
        sqlx::query_scalar(CONTAINS)
            .bind(id.as_uuid())
            .fetch_one(&self.shared.queue_pool)
            .await
            .map_err(sql)
    }

    async fn stats(&self) -> Result<QueueStats, QueueError> {
        let (ready, delayed, leased, dead): (i64, i64, i64, i64) = sqlx::query_as(STATS)
            .fetch_one(&self.shared.queue_pool)
            .await
            .map_err(sql)?;
        let n = |v: i64| u64::try_from(v).unwrap_or(0);
        Ok(QueueStats {
            ready: n(ready),
            delayed: n(delayed),
            leased: n(leased),
            dead: n(dead),
        })
    }

    async fn ping(&self) -> Result<(), QueueError> {
        sqlx::query("SELECT 1")
            .execute(&self.shared.queue_pool)
            .await
            .map_err(sql)?;
        Ok(())
    }
}

//! Fairness across tenants: how long one tenant's single job waits behind another tenant's
//! backlog, and what taking turns costs the reserve loop.
//!
//! ```text
//! cargo bench --bench fairness --features postgres,sqlite,redis
//! ```
//!
//! Every backend compiled in (memory always; SQLite, PostgreSQL and Redis with their features,
//! skipped with a message when their server cannot be reached; URLs as in the `queues` and
//! `redis_queue` benches) runs the same script on a fresh queue:
//!
//! 1. tenant A queues a backlog of 10,000 jobs;
//! 2. `S` worker slots (1, then 8) each reserve one of A's jobs and hold it;
//! 3. tenant B enqueues one job; then slots free one at a time (ack) and each reserves one job,
//!    until B's job is delivered. Reported: how many reservations that took (1 or 2 is fair: B
//!    waits for at most one slot to free; a queue ordered by priority and enqueue order alone
//!    takes 10,001 - S), and the time from B's enqueue to its delivery (queue time only: the
//!    jobs do no work);
//! 4. B enqueues another job, and one reserve of 8 follows: B's place in that batch;
//! 5. throughput over the remaining backlog: 500 × `reserve(1)` + `ack` with A alone, then 500
//!    more with B holding a backlog too (the tenants alternate, so every reserve moves a turn
//!    count), then `reserve(64)` + 64 `ack`s for 512 jobs.
//!
//! The plain queue throughput before and after fair scheduling is the `queues` bench's
//! (`reserve1_ack`, `reserve1_ack_x8`, `reserve64_ack_many`).

#[path = "common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use converto::ConversionId;
use converto::core::queue::{JobQueue, JobSpec, Lease};

const BACKLOG: usize = 10_000;
const LEASE: Duration = Duration::from_secs(600);
const NOW: Duration = Duration::ZERO;

async fn reserve(q: &dyn JobQueue, n: usize) -> Vec<Lease> {
    q.reserve(n, LEASE, NOW).await.expect("reserve")
}

/// Steps 2 to 5 of the module docs on a queue holding A's backlog; one line per figure.
async fn measure(name: &str, q: &dyn JobQueue, slots: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut held: std::collections::VecDeque<Lease> = std::collections::VecDeque::new();
    for _ in 0..slots {
        held.extend(reserve(q, 1).await);
    }
    let b = ConversionId::new();
    let t = Instant::now();
    assert!(
        q.enqueue(JobSpec::now(b, 0).for_tenant("tenant-b"))
            .await
            .expect("enqueue")
    );
    let mut reservations = 0;
    let waited = loop {
        if let Some(lease) = held.pop_front() {
            q.ack(&lease).await.expect("ack");
        }
        let got = reserve(q, 1).await;
        reservations += 1;
        let Some(lease) = got.into_iter().next() else {
            panic!("{name}: the queue ran dry before B's job came");
        };
        if lease.id == b {
            q.ack(&lease).await.expect("ack");
            break t.elapsed();
        }
        held.push_back(lease);
    };
    lines.push(format!(
        "{name:<9} slots={slots}: B's job came with reservation {reservations} after its \
         enqueue, {:.2} ms later",
        waited.as_secs_f64() * 1e3
    ));

    let b2 = ConversionId::new();
    assert!(
        q.enqueue(JobSpec::now(b2, 0).for_tenant("tenant-b"))
            .await
            .expect("enqueue")
    );
    let batch = reserve(q, 8).await;
    let place = batch.iter().position(|l| l.id == b2);
    lines.push(format!(
        "{name:<9} slots={slots}: reserve(8) right after B's next enqueue: B's job {}",
        match place {
            Some(i) => format!("is #{} of {}", i + 1, batch.len()),
            None => "is NOT in the batch".to_owned(),
        }
    ));
    held.extend(batch);
    for lease in held.drain(..) {
        q.ack(&lease).await.expect("ack");
    }

    if slots == 1 {
        // Jobs per second through reserve + ack, and the mean time of one reserve call.
        let cycle = async |batch: usize, jobs: usize| {
            let t = Instant::now();
            let mut reserving = Duration::ZERO;
            let (mut done, mut calls) = (0, 0);
            while done < jobs {
                let r = Instant::now();
                let leases = reserve(q, batch).await;
                reserving += r.elapsed();
                calls += 1;
                assert!(!leases.is_empty(), "{name}: backlog ran dry");
                for lease in &leases {
                    q.ack(lease).await.expect("ack");
                }
                done += leases.len();
            }
            format!(
                "{:>7.0} jobs/s, reserve {:>6.3} ms",
                done as f64 / t.elapsed().as_secs_f64(),
                reserving.as_secs_f64() * 1e3 / f64::from(calls)
            )
        };
        let alone = cycle(1, 500).await;
        common::fill(q, 1_000, 16, Some("tenant-b")).await;
        let shared = cycle(1, 500).await;
        let batched = cycle(64, 512).await;
        lines.push(format!(
            "{name:<9} reserve(1)+ack, A alone ready:         {alone}"
        ));
        lines.push(format!(
            "{name:<9} reserve(1)+ack, A and B taking turns:  {shared}"
        ));
        lines.push(format!(
            "{name:<9} reserve(64)+64 acks, A and B:          {batched}"
        ));
    }
    lines
}

/// Runs the script for each slot count, on a fresh queue from `make` each time.
async fn run(name: &str, make: impl AsyncFn() -> Option<Arc<dyn JobQueue>>) -> Vec<String> {
    let mut lines = Vec::new();
    for slots in [1, 8] {
        let Some(q) = make().await else {
            return lines;
        };
        let t = Instant::now();
        common::fill(q.as_ref(), BACKLOG, 16, Some("tenant-a")).await;
        eprintln!(
            "{name}: queued {BACKLOG} jobs for tenant A in {:.1} s",
            t.elapsed().as_secs_f64()
        );
        lines.extend(measure(name, q.as_ref(), slots).await);
    }
    lines
}

#[cfg(feature = "sqlite")]
async fn sqlite_lines(dir: &std::path::Path) -> Vec<String> {
    use converto::adapters::sqlite::SqliteBackend;
    let n = std::sync::atomic::AtomicUsize::new(0);
    run("sqlite", async || {
        let i = n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = dir.join(format!("fairness-{i}.db"));
        let backend = SqliteBackend::connect(path.to_string_lossy().into_owned())
            .await
            .expect("sqlite");
        Some(backend.queue() as Arc<dyn JobQueue>)
    })
    .await
}

#[cfg(feature = "postgres")]
async fn postgres_lines() -> Vec<String> {
    use converto::adapters::postgres::{PostgresBackend, PostgresConfig, sqlx};
    let url = common::postgres_url();
    let schemas = std::sync::Mutex::new(Vec::new());
    let backends = std::sync::Mutex::new(Vec::new());
    let connect = async || {
        let schema = common::throwaway_schema();
        let config = PostgresConfig::from_env_with_url(&url)
            .expect("CONVERTO_POSTGRES_* settings")
            .schema(schema.clone())
            .max_connections(18);
        match PostgresBackend::connect(config).await {
            Ok(pg) => {
                schemas.lock().expect("lock").push(schema);
                let q = pg.queue() as Arc<dyn JobQueue>;
                backends.lock().expect("lock").push(pg);
                Some(q)
            }
            Err(e) => {
                eprintln!("postgres SKIPPED: {e}; set CONVERTO_BENCH_POSTGRES_URL");
                None
            }
        }
    };
    let mut lines = run("postgres", &connect).await;
    if connect().await.is_some() {
        let pg = backends.lock().expect("lock").pop().expect("backend");
        for tenants in [1, 10] {
            lines.extend(postgres_before_after(&pg, tenants).await);
        }
        backends.lock().expect("lock").push(pg);
    }
    for pg in backends.into_inner().expect("lock") {
        pg.close().await;
    }
    if let Ok(admin) = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await
    {
        for schema in schemas.into_inner().expect("lock") {
            common::drop_schema(&admin, &schema).await;
        }
    }
    lines
}

/// The reserve statement before fair scheduling (global order: priority, not-before, enqueue
/// order), as it was in `postgres/queue.rs`, for the before/after comparison.
#[cfg(feature = "postgres")]
const GLOBAL_ORDER_RESERVE: &str = "WITH picked AS ( \
         SELECT id FROM jobs \
         WHERE state IN ('ready', 'leased') \
           AND ((state = 'ready' AND not_before <= now()) \
             OR (state = 'leased' AND expires_at <= now())) \
         ORDER BY priority DESC, not_before, seq \
         LIMIT {N} FOR UPDATE SKIP LOCKED), \
     numbered AS (SELECT id, row_number() OVER () AS n FROM picked) \
     UPDATE jobs AS j \
     SET state = 'leased', deliveries = j.deliveries + 1, token = ($1::bigint[])[numbered.n], \
         expires_at = now() + $2 * interval '1 microsecond' \
     FROM numbered WHERE j.id = numbered.id \
     RETURNING j.id, j.deliveries, j.priority, j.token, j.expires_at";

/// Reserve cost before and after fair scheduling, on one table holding a 10,000-job backlog of
/// one tenant (plus the old statement's index): rounds that alternate the old statement and
/// `JobQueue::reserve`, each followed by the same acks, so both see the same load.
#[cfg(feature = "postgres")]
async fn postgres_before_after(
    pg: &converto::adapters::postgres::PostgresBackend,
    tenants: usize,
) -> Vec<String> {
    use converto::adapters::postgres::sqlx;
    use sqlx::types::{Uuid, chrono};
    const ROUNDS: usize = 4;
    let q = pg.queue();
    for ddl in [
        "CREATE INDEX IF NOT EXISTS jobs_reserve ON jobs (priority DESC, not_before, seq) \
         WHERE state IN ('ready', 'leased')",
        "DELETE FROM jobs",
    ] {
        sqlx::query(ddl).execute(pg.pool()).await.expect("setup");
    }
    sqlx::query(
        "INSERT INTO jobs (id, priority, not_before, tenant) \
         SELECT gen_random_uuid(), 0, now() - interval '1 second', 'tenant-' || (i % $2) \
         FROM generate_series(1, $1) AS i",
    )
    .bind(BACKLOG as i64)
    .bind(tenants as i64)
    .execute(pg.pool())
    .await
    .expect("fill");
    sqlx::query("ANALYZE jobs")
        .execute(pg.pool())
        .await
        .expect("analyze");
    let mut token = 0_i64;
    let mut old_reserve = async |n: usize| -> Vec<Lease> {
        let tokens: Vec<i64> = (0..n as i64).map(|i| token + i + 1).collect();
        token += n as i64;
        let rows: Vec<(Uuid, i64, i32, i64, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
            sqlx::AssertSqlSafe(GLOBAL_ORDER_RESERVE.replace("{N}", &n.to_string())),
        )
        .bind(tokens)
        .bind(LEASE.as_micros() as i64)
        .fetch_all(pg.queue_pool())
        .await
        .expect("old reserve");
        rows.into_iter()
            .map(|(id, deliveries, priority, token, expires_at)| Lease {
                id: ConversionId::from_uuid(id),
                attempt: deliveries as u32,
                priority,
                token: token as u64,
                expires_at,
            })
            .collect()
    };
    let mut lines = Vec::new();
    for (batch, jobs) in [(1, 150), (64, 640)] {
        let (mut old_t, mut new_t) = (Duration::ZERO, Duration::ZERO);
        let (mut old_calls, mut new_calls) = (0_u32, 0_u32);
        for _ in 0..ROUNDS {
            let mut done = 0;
            while done < jobs {
                let t = Instant::now();
                let leases = old_reserve(batch).await;
                old_t += t.elapsed();
                old_calls += 1;
                assert!(!leases.is_empty());
                done += leases.len();
                assert!(q.ack_many(&leases).await.expect("ack").is_empty());
            }
            let mut done = 0;
            while done < jobs {
                let t = Instant::now();
                let leases = reserve(q.as_ref(), batch).await;
                new_t += t.elapsed();
                new_calls += 1;
                assert!(!leases.is_empty());
                done += leases.len();
                assert!(q.ack_many(&leases).await.expect("ack").is_empty());
            }
        }
        let ms = |d: Duration, calls: u32| d.as_secs_f64() * 1e3 / f64::from(calls);
        let per_s = |d: Duration| (ROUNDS * jobs) as f64 / d.as_secs_f64();
        lines.push(format!(
            "postgres  reserve({batch}) over a {BACKLOG}-job backlog of {tenants} tenant(s): \
             before {:.3} ms/call ({:.0} jobs/s of reserve time), after {:.3} ms/call \
             ({:.0} jobs/s)",
            ms(old_t, old_calls),
            per_s(old_t),
            ms(new_t, new_calls),
            per_s(new_t),
        ));
    }
    lines
}

#[cfg(feature = "redis")]
async fn redis_lines() -> Vec<String> {
    use converto::adapters::redis::{RedisBackend, RedisConfig};
    let url = std::env::var("CONVERTO_BENCH_REDIS_URL")
        .or_else(|_| std::env::var("CONVERTO_TEST_REDIS_URL"))
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let queues = std::sync::Mutex::new(Vec::new());
    let lines = run("redis", async || {
        let config = RedisConfig::new(url.clone())
            .key_prefix(format!("converto-bench:{}", ConversionId::new()));
        match RedisBackend::connect(config).await {
            Ok(backend) => {
                let q = backend.queue();
                queues.lock().expect("lock").push(Arc::clone(&q));
                Some(q as Arc<dyn JobQueue>)
            }
            Err(e) => {
                eprintln!("redis SKIPPED: {e}; set CONVERTO_BENCH_REDIS_URL");
                None
            }
        }
    })
    .await;
    for q in queues.into_inner().expect("lock") {
        q.purge().await.expect("purge");
    }
    lines
}

fn main() {
    // `cargo bench` passes `--bench`; this bench takes no other arguments.
    let rt = common::runtime();
    let mut lines = rt.block_on(run("memory", async || {
        Some(Arc::new(converto::core::memory::MemoryJobQueue::new()) as Arc<dyn JobQueue>)
    }));
    #[cfg(feature = "sqlite")]
    {
        let dir = std::env::temp_dir().join(format!("converto-fairness-{}", ConversionId::new()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        lines.extend(rt.block_on(sqlite_lines(&dir)));
        let _ = std::fs::remove_dir_all(&dir);
    }
    #[cfg(feature = "postgres")]
    lines.extend(rt.block_on(postgres_lines()));
    #[cfg(feature = "redis")]
    lines.extend(rt.block_on(redis_lines()));
    println!("\nfairness: tenant A holds {BACKLOG} queued jobs, tenant B enqueues one");
    for line in lines {
        println!("  {line}");
    }
}

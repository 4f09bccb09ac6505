//! Job queue throughput: no-op jobs through each `JobQueue` backend, beside a raw-SQL ceiling.
//!
//! ```text
//! cargo bench --bench queues --features postgres
//! ```
//!
//! Each backend is a section (a module with a `bench` function, listed in `main`), measured with
//! criterion (`thrpt` is jobs per second) and summarised at the end as jobs/s and as a fraction
//! of its ceiling. A backend whose server cannot be reached is skipped with a message.
//!
//! `CONVERTO_POSTGRES_QUEUE_SYNCHRONOUS_COMMIT=off` measures the queue (and the raw loops) with
//! asynchronous commits (`PostgresConfig::queue_synchronous_commit`).
//!
//! PostgreSQL (`CONVERTO_BENCH_POSTGRES_URL`, else `CONVERTO_TEST_POSTGRES_URL`, else
//! `postgres://postgres@127.0.0.1:5432/test`; a throwaway schema is created and dropped):
//! - `enqueue`: `JobQueue::enqueue` one job at a time (insert + notify);
//! - `reserve1_ack`: one consumer, `reserve(1)` then `ack`, one job at a time;
//! - `reserve1_ack_x8`: eight such consumers at once (a worker pool whose slots each reserve
//!   one job: how `converto worker` reserves);
//! - `reserve64_ack_each`: `reserve(64)`, then 64 single `ack`s;
//! - `reserve64_ack_many`: `reserve(64)`, then one `ack_many`;
//! - `reserve500_ack_many`: `reserve(500)`, then one `ack_many` (prefetch and batched
//!   completion, as graphile-worker's `localQueue` of 500 with batched completion);
//! - `raw_claim1_complete`, `raw_claim1_complete_x8`, `raw_claim64_complete`: the same loops as
//!   bare `SKIP LOCKED` SQL on a minimal table, over the queue's pool: the ceiling;
//! - `*_after_100k`: the one-at-a-time and batched loops again after 100,000 jobs were completed
//!   (deleted) with autovacuum off: the raw table keeps every dead tuple, the queue only vacuums
//!   its tables itself (every 10,000 completions, see `PostgresJobQueue`);
//! - `*_after_1m`: the same after 1,000,000 (with `CONVERTO_BENCH_QUEUE_1M=1`: it takes minutes).
//!
//! Each round of loops (fresh, after 100k, after 1m) starts with a `CHECKPOINT`, so the
//! checkpoints that filling rounds set off do not fall into some rounds and not others.
//!
//! Redis (feature `redis`; `CONVERTO_BENCH_REDIS_URL`, else `CONVERTO_TEST_REDIS_URL`, else
//! `redis://127.0.0.1:6379`; a fresh key prefix) and RabbitMQ (feature `rabbitmq`;
//! `CONVERTO_BENCH_RABBITMQ_URL`, else `CONVERTO_TEST_RABBITMQ_URL`, else
//! `amqp://guest:guest@127.0.0.1:5672/%2f`; fresh queues, deleted afterwards) run the same
//! loops through `dyn JobQueue`, so the three sit side by side in one run:
//!
//! ```text
//! cargo bench --bench queues --features postgres,redis,rabbitmq
//! ```
//!
//! - `enqueue`, `reserve1_ack`, `reserve1_ack_x8`, `reserve64_ack_each` as above;
//! - `enqueue_c64`: `enqueue` with 64 calls in flight.

#[path = "common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use criterion::{Criterion, SamplingMode, Throughput};

/// Throughput measured in this run, by `section/bench`, for the summary.
static MEASURED: Mutex<BTreeMap<String, (u64, Duration)>> = Mutex::new(BTreeMap::new());

fn record(name: &str, jobs: u64, took: Duration) {
    let mut m = MEASURED.lock().expect("results lock");
    let e = m.entry(name.to_owned()).or_default();
    e.0 += jobs;
    e.1 += took;
}

fn jobs_per_sec(name: &str) -> Option<f64> {
    let m = MEASURED.lock().expect("results lock");
    m.get(name)
        .map(|(jobs, took)| *jobs as f64 / took.as_secs_f64().max(1e-9))
}

#[cfg(feature = "postgres")]
mod postgres_queue {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use converto::adapters::postgres::sqlx;
    use converto::adapters::postgres::{PostgresBackend, PostgresConfig, PostgresJobQueue};
    use converto::queue::{JobQueue, JobSpec};
    use converto::{ConversionId, core::queue::Lease};
    use criterion::{BenchmarkGroup, Criterion, measurement::WallTime};

    use super::common::LEASE;
    use super::{SamplingMode, Throughput, common, record};

    /// Jobs per measured iteration.
    const ONE_BY_ONE: usize = 300;
    const BATCHED: usize = 1_920;
    /// Concurrent consumers in the `_x8` loops, as a worker pool's slots reserving one job each.
    const CONSUMERS: usize = 8;

    struct Bench {
        pg: PostgresBackend,
        queue: Arc<PostgresJobQueue>,
        admin: sqlx::PgPool,
        schema: String,
    }

    async fn setup() -> Option<Bench> {
        let url = common::postgres_url();
        let schema = common::throwaway_schema();
        // The URL, schema and pool size are the bench's; the rest (such as
        // CONVERTO_POSTGRES_QUEUE_SYNCHRONOUS_COMMIT) comes from the environment as in production.
        let config = PostgresConfig::from_env_with_url(&url)
            .expect("CONVERTO_POSTGRES_* settings")
            .schema(schema.clone())
            .max_connections(CONSUMERS as u32 + 2);
        let pg = match PostgresBackend::connect(config.clone()).await {
            Ok(pg) => pg,
            Err(e) => {
                eprintln!(
                    "postgres queue bench SKIPPED: cannot connect ({config:?}): {e}; set \
                     CONVERTO_BENCH_POSTGRES_URL"
                );
                return None;
            }
        };
        let admin = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect(&url)
            .await
            .expect("admin pool");
        for ddl in [
            "CREATE TABLE raw_jobs (id bigserial PRIMARY KEY, claimed boolean NOT NULL DEFAULT false)",
            "CREATE INDEX raw_jobs_ready ON raw_jobs (id) WHERE NOT claimed",
        ] {
            sqlx::query(ddl)
                .execute(pg.pool())
                .await
                .expect("raw table");
        }
        Some(Bench {
            queue: pg.queue(),
            pg,
            admin,
            schema,
        })
    }

    impl Bench {
        /// Puts `n` ready jobs in the queue in one statement (setup, not measured).
        async fn fill(&self, n: usize) {
            sqlx::query(
                "INSERT INTO jobs (id, priority, not_before) \
                 SELECT gen_random_uuid(), 0, now() - interval '1 second' \
                 FROM generate_series(1, $1)",
            )
            .bind(n as i64)
            .execute(self.pg.pool())
            .await
            .expect("fill");
        }

        async fn fill_raw(&self, n: usize) {
            sqlx::query("INSERT INTO raw_jobs (claimed) SELECT false FROM generate_series(1, $1)")
                .bind(n as i64)
                .execute(self.pg.queue_pool())
                .await
                .expect("fill raw");
        }

        async fn reserve(&self, n: usize) -> Vec<Lease> {
            self.queue
                .reserve(n, LEASE, Duration::ZERO)
                .await
                .expect("reserve")
        }

        /// Drains the queue one job at a time.
        async fn drain_one_by_one(&self) -> usize {
            let mut done = 0;
            loop {
                let leases = self.reserve(1).await;
                let Some(lease) = leases.first() else {
                    return done;
                };
                self.queue.ack(lease).await.expect("ack");
                done += 1;
            }
        }

        /// `CONSUMERS` one-at-a-time loops at once (a worker pool whose slots each reserve one
        /// job), over the queue or (`raw`) the bare SQL.
        async fn drain_concurrently(&self, raw: bool) -> usize {
            let drains = (0..CONSUMERS).map(|_| async move {
                if raw {
                    self.drain_raw(1).await
                } else {
                    self.drain_one_by_one().await
                }
            });
            futures::future::join_all(drains).await.into_iter().sum()
        }

        async fn drain_batched(&self, ack_many: bool) -> usize {
            self.drain_batches(64, ack_many).await
        }

        async fn drain_batches(&self, batch: usize, ack_many: bool) -> usize {
            let mut done = 0;
            loop {
                let leases = self.reserve(batch).await;
                if leases.is_empty() {
                    return done;
                }
                if ack_many {
                    let lost = self.queue.ack_many(&leases).await.expect("ack many");
                    assert!(lost.is_empty());
                } else {
                    for lease in &leases {
                        self.queue.ack(lease).await.expect("ack");
                    }
                }
                done += leases.len();
            }
        }

        async fn drain_raw(&self, batch: i64) -> usize {
            let mut done = 0;
            loop {
                let ids: Vec<i64> = sqlx::query_scalar(
                    "UPDATE raw_jobs SET claimed = true WHERE id IN ( \
                         SELECT id FROM raw_jobs WHERE NOT claimed ORDER BY id \
                         LIMIT $1 FOR UPDATE SKIP LOCKED) RETURNING id",
                )
                .bind(batch)
                .fetch_all(self.pg.queue_pool())
                .await
                .expect("claim");
                if ids.is_empty() {
                    return done;
                }
                if batch == 1 {
                    sqlx::query("DELETE FROM raw_jobs WHERE id = $1")
                        .bind(ids[0])
                        .execute(self.pg.queue_pool())
                        .await
                        .expect("complete");
                } else {
                    sqlx::query("DELETE FROM raw_jobs WHERE id = ANY($1)")
                        .bind(&ids)
                        .execute(self.pg.queue_pool())
                        .await
                        .expect("complete");
                }
                done += ids.len();
            }
        }

        async fn cleanup(&self) {
            self.pg.close().await;
            common::drop_schema(&self.admin, &self.schema).await;
        }
    }

    /// One measured loop: `fill` jobs (not timed), then time `drain`.
    fn drain_bench<F>(
        group: &mut BenchmarkGroup<'_, WallTime>,
        rt: &tokio::runtime::Runtime,
        b: &Bench,
        name: &str,
        jobs: usize,
        raw: bool,
        drain: F,
    ) where
        F: for<'a> Fn(&'a Bench) -> futures::future::BoxFuture<'a, usize>,
    {
        group.throughput(Throughput::Elements(jobs as u64));
        group.bench_function(name, |bencher| {
            bencher.to_async(rt).iter_custom(|iters| {
                let drain = &drain;
                async move {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        if raw {
                            b.fill_raw(jobs).await;
                        } else {
                            b.fill(jobs).await;
                        }
                        let t = Instant::now();
                        let done = drain(b).await;
                        let took = t.elapsed();
                        assert_eq!(done, jobs, "{name}: drained {done} of {jobs}");
                        record(&format!("postgres/{name}"), jobs as u64, took);
                        total += took;
                    }
                    total
                }
            });
        });
    }

    pub(super) fn bench(c: &mut Criterion) {
        use futures::FutureExt;

        let rt = super::common::runtime();
        let Some(b) = rt.block_on(setup()) else {
            return;
        };
        let mut group = c.benchmark_group("postgres");
        group
            .sample_size(10)
            .sampling_mode(SamplingMode::Flat)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(3));

        group.throughput(Throughput::Elements(ONE_BY_ONE as u64));
        group.bench_function("enqueue", |bencher| {
            bencher.to_async(&rt).iter_custom(|iters| {
                let b = &b;
                async move {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let t = Instant::now();
                        for _ in 0..ONE_BY_ONE {
                            b.queue
                                .enqueue(JobSpec::now(ConversionId::new(), 0))
                                .await
                                .expect("enqueue");
                        }
                        let took = t.elapsed();
                        record("postgres/enqueue", ONE_BY_ONE as u64, took);
                        total += took;
                        sqlx::query("DELETE FROM jobs")
                            .execute(b.pg.pool())
                            .await
                            .expect("clear");
                    }
                    total
                }
            });
        });

        let loops = |group: &mut BenchmarkGroup<'_, WallTime>, suffix: &str| {
            // Every round of loops starts from a checkpoint, so that one the filling rounds'
            // WAL set off (and its full-page writes) does not land in one round's figures and
            // not in another's. Needs a superuser or pg_checkpoint; skipped otherwise.
            rt.block_on(async {
                if let Err(e) = sqlx::query("CHECKPOINT").execute(b.pg.pool()).await {
                    eprintln!("no CHECKPOINT before the loops{suffix}: {e}");
                }
            });
            drain_bench(
                group,
                &rt,
                &b,
                &format!("reserve1_ack{suffix}"),
                ONE_BY_ONE,
                false,
                |b| b.drain_one_by_one().boxed(),
            );
            drain_bench(
                group,
                &rt,
                &b,
                &format!("reserve1_ack_x8{suffix}"),
                ONE_BY_ONE * 4,
                false,
                |b| b.drain_concurrently(false).boxed(),
            );
            drain_bench(
                group,
                &rt,
                &b,
                &format!("raw_claim1_complete_x8{suffix}"),
                ONE_BY_ONE * 4,
                true,
                |b| b.drain_concurrently(true).boxed(),
            );
            drain_bench(
                group,
                &rt,
                &b,
                &format!("reserve64_ack_each{suffix}"),
                BATCHED,
                false,
                |b| b.drain_batched(false).boxed(),
            );
            drain_bench(
                group,
                &rt,
                &b,
                &format!("reserve64_ack_many{suffix}"),
                BATCHED,
                false,
                |b| b.drain_batched(true).boxed(),
            );
            drain_bench(
                group,
                &rt,
                &b,
                &format!("reserve500_ack_many{suffix}"),
                BATCHED * 4,
                false,
                |b| b.drain_batches(500, true).boxed(),
            );
            drain_bench(
                group,
                &rt,
                &b,
                &format!("raw_claim1_complete{suffix}"),
                ONE_BY_ONE,
                true,
                |b| b.drain_raw(1).boxed(),
            );
            drain_bench(
                group,
                &rt,
                &b,
                &format!("raw_claim64_complete{suffix}"),
                BATCHED,
                true,
                |b| b.drain_raw(64).boxed(),
            );
        };
        loops(&mut group, "");

        // 100,000 completed jobs with autovacuum off: their dead tuples stay unless the queue
        // cleans up after itself (its maintenance vacuum), and the raw table keeps all of its.
        // With CONVERTO_BENCH_QUEUE_1M=1, 900,000 more, and the loops again.
        rt.block_on(async {
            for sql in [
                "ALTER TABLE jobs SET (autovacuum_enabled = false)",
                "ALTER TABLE raw_jobs SET (autovacuum_enabled = false)",
            ] {
                sqlx::query(sql).execute(b.pg.pool()).await.expect("alter");
            }
        });
        let complete = |n: usize| {
            rt.block_on(async {
                for _ in 0..n / 100_000 {
                    b.fill(100_000).await;
                    b.fill_raw(100_000).await;
                    assert_eq!(b.drain_batched(true).await, 100_000);
                    assert_eq!(b.drain_raw(64).await, 100_000);
                }
            })
        };
        complete(100_000);
        loops(&mut group, "_after_100k");
        if std::env::var("CONVERTO_BENCH_QUEUE_1M").is_ok_and(|v| v == "1") {
            complete(900_000);
            loops(&mut group, "_after_1m");
        }
        group.finish();
        rt.block_on(b.cleanup());
    }

    /// Jobs/s of each loop, and as a fraction of the raw `SKIP LOCKED` loop of the same shape.
    pub(super) fn summary() -> Vec<String> {
        let rate = |n: &str| super::jobs_per_sec(&format!("postgres/{n}"));
        let mut lines = Vec::new();
        if let Some(r) = rate("enqueue") {
            lines.push(format!(
                "postgres enqueue                   {r:>9.0} jobs/s"
            ));
        }
        for suffix in ["", "_after_100k", "_after_1m"] {
            for (name, ceiling) in [
                ("reserve1_ack", "raw_claim1_complete"),
                ("reserve1_ack_x8", "raw_claim1_complete_x8"),
                ("raw_claim1_complete_x8", "raw_claim1_complete_x8"),
                ("reserve64_ack_each", "raw_claim64_complete"),
                ("reserve64_ack_many", "raw_claim64_complete"),
                ("reserve500_ack_many", "raw_claim64_complete"),
                ("raw_claim1_complete", "raw_claim1_complete"),
                ("raw_claim64_complete", "raw_claim64_complete"),
            ] {
                let (name, ceiling) = (format!("{name}{suffix}"), format!("{ceiling}{suffix}"));
                if let (Some(r), Some(c)) = (rate(&name), rate(&ceiling)) {
                    lines.push(format!(
                        "postgres {name:<34} {r:>9.0} jobs/s  {:>5.1}% of {ceiling}",
                        100.0 * r / c
                    ));
                }
            }
        }
        for name in [
            "reserve1_ack",
            "reserve1_ack_x8",
            "reserve64_ack_many",
            "reserve500_ack_many",
        ] {
            for (suffix, what) in [("_after_100k", "100k"), ("_after_1m", "1m")] {
                if let (Some(fresh), Some(aged)) = (rate(name), rate(&format!("{name}{suffix}"))) {
                    lines.push(format!(
                        "postgres {name}: after {what} completed jobs {:.0}% of the fresh rate",
                        100.0 * aged / fresh
                    ));
                }
            }
        }
        lines
    }
}

/// The same loops for any `dyn JobQueue`, for the backends without a raw ceiling of their own.
#[cfg(any(feature = "redis", feature = "rabbitmq"))]
mod any_queue {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use converto::queue::JobQueue;
    use criterion::{Criterion, SamplingMode, Throughput};

    use super::common::{Ack, drain, fill};
    use super::record;

    const ONE_BY_ONE: usize = 300;
    const BATCHED: usize = 1_920;
    const CONSUMERS: usize = 8;
    /// The loops, in the order of the summary.
    pub(super) const LOOPS: [&str; 5] = [
        "enqueue",
        "enqueue_c64",
        "reserve1_ack",
        "reserve1_ack_x8",
        "reserve64_ack_each",
    ];

    async fn drain_x8(q: &Arc<dyn JobQueue>) -> usize {
        let tasks: Vec<_> = (0..CONSUMERS)
            .map(|_| {
                let q = Arc::clone(q);
                tokio::spawn(async move { drain(q.as_ref(), 1, Ack::Each).await })
            })
            .collect();
        let mut done = 0;
        for t in tasks {
            done += t.await.expect("consumer");
        }
        done
    }

    /// Runs every loop on `q` as criterion group `name`.
    pub(super) fn bench(
        c: &mut Criterion,
        rt: &tokio::runtime::Runtime,
        name: &str,
        q: Arc<dyn JobQueue>,
    ) {
        let mut group = c.benchmark_group(name);
        group
            .sample_size(10)
            .sampling_mode(SamplingMode::Flat)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(3));
        for (bench, in_flight) in [("enqueue", 1), ("enqueue_c64", 64)] {
            group.throughput(Throughput::Elements(ONE_BY_ONE as u64));
            group.bench_function(bench, |b| {
                b.to_async(rt).iter_custom(|iters| {
                    let q = Arc::clone(&q);
                    async move {
                        let mut total = Duration::ZERO;
                        for _ in 0..iters {
                            let t = Instant::now();
                            fill(q.as_ref(), ONE_BY_ONE, in_flight, None).await;
                            let took = t.elapsed();
                            record(&format!("{name}/{bench}"), ONE_BY_ONE as u64, took);
                            total += took;
                            assert_eq!(drain(q.as_ref(), 256, Ack::Each).await, ONE_BY_ONE);
                        }
                        total
                    }
                });
            });
        }
        for (bench, jobs, batch) in [
            ("reserve1_ack", ONE_BY_ONE, 1),
            ("reserve1_ack_x8", BATCHED, 0),
            ("reserve64_ack_each", BATCHED, 64),
        ] {
            group.throughput(Throughput::Elements(jobs as u64));
            group.bench_function(bench, |b| {
                b.to_async(rt).iter_custom(|iters| {
                    let q = Arc::clone(&q);
                    async move {
                        let mut total = Duration::ZERO;
                        for _ in 0..iters {
                            fill(q.as_ref(), jobs, 64, None).await;
                            let t = Instant::now();
                            let done = if batch == 0 {
                                drain_x8(&q).await
                            } else {
                                drain(q.as_ref(), batch, Ack::Each).await
                            };
                            let took = t.elapsed();
                            assert_eq!(done, jobs, "{bench}: drained {done} of {jobs}");
                            record(&format!("{name}/{bench}"), jobs as u64, took);
                            total += took;
                        }
                        total
                    }
                });
            });
        }
        group.finish();
    }
}

#[cfg(feature = "redis")]
mod redis_queue {
    use converto::ConversionId;
    use converto::adapters::redis::{RedisBackend, RedisConfig};
    use criterion::Criterion;

    pub(super) fn bench(c: &mut Criterion) {
        let rt = super::common::runtime();
        let url = super::common::redis_url();
        let config =
            RedisConfig::new(&url).key_prefix(format!("converto-bench:{}", ConversionId::new()));
        match rt.block_on(RedisBackend::connect(config)) {
            Ok(b) => super::any_queue::bench(c, &rt, "redis", b.queue()),
            // The prefix holds nothing once every loop drained its jobs.
            Err(e) => eprintln!(
                "redis queue bench SKIPPED: cannot reach {url}: {e}; set CONVERTO_BENCH_REDIS_URL"
            ),
        }
    }
}

#[cfg(feature = "rabbitmq")]
mod rabbitmq_queue {
    use converto::ConversionId;
    use converto::adapters::rabbitmq::{RabbitConfig, RabbitJobQueue};
    use criterion::Criterion;

    pub(super) fn bench(c: &mut Criterion) {
        let rt = super::common::runtime();
        let url = super::common::rabbitmq_url();
        let config = RabbitConfig::new(&url).queue_prefix(format!(
            "converto-bench.{}",
            ConversionId::new().as_uuid().simple()
        ));
        match rt.block_on(RabbitJobQueue::connect(config.clone())) {
            Ok(q) => {
                super::any_queue::bench(c, &rt, "rabbitmq", std::sync::Arc::new(q));
                rt.block_on(RabbitJobQueue::delete_layout(&config))
                    .expect("delete the bench's queues");
            }
            Err(e) => eprintln!(
                "rabbitmq queue bench SKIPPED: cannot reach {url}: {e}; set \
                 CONVERTO_BENCH_RABBITMQ_URL"
            ),
        }
    }
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let mut summary: Vec<String> = Vec::new();
    #[cfg(feature = "postgres")]
    {
        postgres_queue::bench(&mut c);
        summary.extend(postgres_queue::summary());
    }
    #[cfg(feature = "redis")]
    redis_queue::bench(&mut c);
    #[cfg(feature = "rabbitmq")]
    rabbitmq_queue::bench(&mut c);
    #[cfg(any(feature = "redis", feature = "rabbitmq"))]
    for backend in ["redis", "rabbitmq"] {
        for name in any_queue::LOOPS {
            if let Some(r) = jobs_per_sec(&format!("{backend}/{name}")) {
                summary.push(format!("{backend:<8} {name:<34} {r:>9.0} jobs/s"));
            }
        }
    }
    c.final_summary();
    if !summary.is_empty() {
        println!("\nqueue throughput (mean over every measured iteration):");
        for line in summary {
            println!("  {line}");
        }
    }
}

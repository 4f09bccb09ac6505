//! The PostgreSQL backends against a real server: the conformance suites, plus what only SQL
//! backends have (migrations in their own schema, the reserve query's index).
//!
//! The server is `CONVERTO_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`). Each backend gets a fresh schema, dropped at the
//! end of its test. When the server cannot be reached the tests fail if `CI=true`, and
//! otherwise skip with a message.
#![cfg(feature = "postgres")]

use std::sync::Arc;
use std::time::{Duration, Instant};

use converto_adapters::postgres::{PostgresBackend, PostgresConfig, PostgresError};
use converto_core::ConversionId;
use converto_core::memory::MemoryBlobStore;
use converto_core::progress::ProgressBus;
use converto_core::queue::{JobQueue, JobSpec};
use converto_core::store::ConversionStore;
use converto_core::testkit;
use parking_lot::Mutex;
use sqlx::postgres::{PgPool, PgPoolOptions};

const URL_VAR: &str = "CONVERTO_TEST_POSTGRES_URL";
const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// The test server, and the schemas handed out (dropped by [`TestDb::cleanup`]).
struct TestDb {
    url: String,
    admin: PgPool,
    schemas: Mutex<Vec<String>>,
}

/// Connects to the test server, or says why not: a failure on CI, a skip elsewhere.
async fn server() -> Option<TestDb> {
    let url = std::env::var(URL_VAR).unwrap_or_else(|_| DEFAULT_URL.to_owned());
    let shown = format!("{:?}", PostgresConfig::new(url.clone()));
    let connected = PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(5))
        .connect(&url)
        .await;
    match connected {
        Ok(admin) => Some(TestDb {
            url,
            admin,
            schemas: Mutex::new(Vec::new()),
        }),
        Err(e) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("PostgreSQL is unreachable ({shown}): {e}; set {URL_VAR} to a reachable server")
        }
        Err(e) => {
            eprintln!(
                "SKIPPED: PostgreSQL is unreachable ({shown}): {e}. Set {URL_VAR} to a server's \
                 URL to run these tests (with CI=true an unreachable server fails them)."
            );
            None
        }
    }
}

impl TestDb {
    fn fresh_schema(&self) -> String {
        let schema = format!("converto_test_{}", ConversionId::new().as_uuid().simple());
        self.schemas.lock().push(schema.clone());
        schema
    }

    fn config(&self, schema: &str) -> PostgresConfig {
        PostgresConfig::new(self.url.clone())
            .schema(schema)
            .max_connections(4)
    }

    /// A backend in a fresh schema.
    async fn backend(&self) -> PostgresBackend {
        let schema = self.fresh_schema();
        PostgresBackend::connect(self.config(&schema))
            .await
            .unwrap_or_else(|e| panic!("connect to {schema}: {e}"))
    }

    async fn cleanup(self) {
        let schemas = std::mem::take(&mut *self.schemas.lock());
        for schema in schemas {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
            )))
            .execute(&self.admin)
            .await
            .unwrap_or_else(|e| panic!("drop {schema}: {e}"));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_suite() {
    let Some(db) = server().await else { return };
    testkit::store::run_store_suite(async || {
        let store: Arc<dyn ConversionStore> = db.backend().await.store();
        store
    })
    .await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_suite() {
    let Some(db) = server().await else { return };
    testkit::queue::run_queue_suite(async || {
        let queue: Arc<dyn JobQueue> = db.backend().await.queue();
        queue
    })
    .await;
    db.cleanup().await;
}

/// The queue with `synchronous_commit = off` passes the same suite, and only its sessions run
/// so: the store's stay synchronous.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_suite_with_asynchronous_commits() {
    let Some(db) = server().await else { return };
    let connect = async || {
        let schema = db.fresh_schema();
        PostgresBackend::connect(db.config(&schema).queue_synchronous_commit(false))
            .await
            .unwrap_or_else(|e| panic!("connect to {schema}: {e}"))
    };
    let backend = connect().await;
    let store_setting: String = sqlx::query_scalar("SHOW synchronous_commit")
        .fetch_one(backend.pool())
        .await
        .expect("show");
    assert_eq!(store_setting, "on", "the store must stay synchronous");
    let queue_setting: String = sqlx::query_scalar("SHOW synchronous_commit")
        .fetch_one(backend.queue_pool())
        .await
        .expect("show");
    assert_eq!(queue_setting, "off");
    let search_path: String = sqlx::query_scalar("SHOW search_path")
        .fetch_one(backend.queue_pool())
        .await
        .expect("show");
    assert!(search_path.contains("converto_test_"), "{search_path}");
    let queue = backend.queue();
    let id = ConversionId::new();
    queue
        .enqueue(converto_core::queue::JobSpec::now(id, 0))
        .await
        .expect("enqueue");
    assert!(queue.contains(id).await.expect("contains"));
    testkit::queue::run_queue_suite(async || {
        let queue: Arc<dyn JobQueue> = connect().await.queue();
        queue
    })
    .await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_suite() {
    let Some(db) = server().await else { return };
    testkit::progress::run_progress_suite(async || {
        let bus: Arc<dyn ProgressBus> = db.backend().await.bus();
        bus
    })
    .await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_suite() {
    let Some(db) = server().await else { return };
    testkit::engine::run_engine_suite(async || {
        db.backend()
            .await
            .backends(Arc::new(MemoryBlobStore::new()))
    })
    .await;
    db.cleanup().await;
}

/// Two processes sharing a schema: an enqueue through one wakes a reserver waiting in the
/// other (NOTIFY crosses connections), and a progress event published by one reaches a
/// subscriber of the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_backends_on_one_schema_act_as_one() {
    let Some(db) = server().await else { return };
    let a = db.backend().await;
    let b = PostgresBackend::connect(db.config(&a.config().schema))
        .await
        .expect("second backend");
    let waiter = {
        let q = b.queue();
        tokio::spawn(async move {
            let t = Instant::now();
            let leases = q
                .reserve(1, Duration::from_secs(30), Duration::from_secs(20))
                .await
                .expect("reserve");
            (leases, t.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let id = ConversionId::new();
    a.queue()
        .enqueue(JobSpec::now(id, 0))
        .await
        .expect("enqueue");
    let (leases, waited) = waiter.await.expect("join");
    assert_eq!(leases.first().map(|l| l.id), Some(id));
    assert!(waited < Duration::from_secs(5), "not woken: {waited:?}");

    use futures::StreamExt;
    let mut sub = b.bus().subscribe(id).await.expect("subscribe");
    let event = converto_core::Event::Progress {
        id,
        attempt: 1,
        progress: converto_core::Progress::new(42, Some("meshing".into())),
    };
    a.bus().publish(event.clone()).await.expect("publish");
    let got = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("event in time");
    assert_eq!(got, Some(event.clone()));
    assert_eq!(b.bus().latest(id).await.expect("latest"), Some(event));
    db.cleanup().await;
}

/// The reserve statement keeps walking the partial `jobs_tenant_ready` index however many dead
/// letters (and deleted, acked rows) the table holds, and still reserves in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserve_uses_its_index_after_many_finished_jobs() {
    let Some(db) = server().await else { return };
    let pg = db.backend().await;
    let q = pg.queue();
    // 100,000 dead letters, and 20,000 acked jobs (deleted rows).
    sqlx::query(
        "INSERT INTO jobs (id, priority, not_before, state, error) \
         SELECT gen_random_uuid(), (i % 5)::int, now() - interval '1 hour', 'dead', \
                '{\"code\": \"x\", \"message\": \"y\"}'::jsonb \
         FROM generate_series(1, 100000) AS i",
    )
    .execute(pg.pool())
    .await
    .expect("dead rows");
    sqlx::query(
        "INSERT INTO jobs (id, priority, not_before) \
         SELECT gen_random_uuid(), 0, now() FROM generate_series(1, 20000)",
    )
    .execute(pg.pool())
    .await
    .expect("acked rows");
    sqlx::query("DELETE FROM jobs WHERE state = 'ready'")
        .execute(pg.pool())
        .await
        .expect("ack them");
    let mut live = Vec::new();
    for i in 0..50 {
        let id = ConversionId::new();
        live.push((i % 3, id));
        q.enqueue(JobSpec::now(id, i % 3)).await.expect("enqueue");
    }
    sqlx::query("ANALYZE jobs")
        .execute(pg.pool())
        .await
        .expect("analyze");

    for batch in [1, 64] {
        let plan = q.explain_reserve(batch).await.expect("explain");
        assert!(
            plan.contains("jobs_tenant_ready"),
            "reserve does not use the jobs_tenant_ready index:\n{plan}"
        );
        assert!(
            !plan.contains("Seq Scan on jobs"),
            "reserve scans the jobs table:\n{plan}"
        );
    }

    let t = Instant::now();
    let leases = q
        .reserve(64, Duration::from_secs(30), Duration::ZERO)
        .await
        .expect("reserve");
    assert_eq!(leases.len(), 50);
    assert!(
        leases.windows(2).all(|w| w[0].priority >= w[1].priority),
        "not in priority order"
    );
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "slow reserve: {:?}",
        t.elapsed()
    );
    let lost = q.ack_many(&leases).await.expect("ack many");
    assert!(lost.is_empty(), "{lost:?}");
    assert_eq!(q.ack_many(&leases[..2]).await.expect("again").len(), 2);
    let stats = q.stats().await.expect("stats");
    assert_eq!((stats.ready, stats.leased, stats.dead), (0, 0, 100_000));

    // A backlog: the planner walks the index in delivery order and stops after the batch,
    // instead of sorting every due job.
    sqlx::query(
        "INSERT INTO jobs (id, priority, not_before) \
         SELECT gen_random_uuid(), (i % 3)::int, now() - interval '1 minute' \
         FROM generate_series(1, 50000) AS i",
    )
    .execute(pg.pool())
    .await
    .expect("backlog");
    sqlx::query("ANALYZE jobs")
        .execute(pg.pool())
        .await
        .expect("analyze");
    let plan = q.explain_reserve(64).await.expect("explain");
    assert!(
        plan.contains("Index Scan using jobs_tenant_ready"),
        "a backlog is not reserved by walking jobs_tenant_ready:\n{plan}"
    );
    assert!(!plan.contains("Seq Scan on jobs"), "{plan}");
    let t = Instant::now();
    let leases = q
        .reserve(64, Duration::from_secs(30), Duration::ZERO)
        .await
        .expect("reserve");
    assert_eq!(leases.len(), 64);
    assert!(leases.iter().all(|l| l.priority == 2));
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "slow reserve: {:?}",
        t.elapsed()
    );
    db.cleanup().await;
}

/// Jobs in flight stay out of the reserves' way, and jobs whose lease ran out come back among
/// the ready ones in delivery order, for one tenant and for two (the single-tenant statement
/// declines while a lease has run out, and the fair one takes it back in its place). A
/// thousand long leases are held throughout: none of them is delivered again, and the reserve
/// plans walk `jobs_tenant_ready`, which leased jobs leave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_in_flight_are_skipped_and_expired_ones_come_back_in_order() {
    let Some(db) = server().await else { return };
    let pg = db.backend().await;
    let q = pg.queue();
    let long = Duration::from_secs(3600);
    // The held jobs outrank every other, so they sit at the front of any index in delivery order.
    let held: Vec<JobSpec> = (0..1_000)
        .map(|_| JobSpec::now(ConversionId::new(), 10))
        .collect();
    for chunk in held.chunks(250) {
        let done = futures::future::join_all(chunk.iter().map(|j| q.enqueue(j.clone()))).await;
        assert!(done.into_iter().all(|r| r.expect("enqueue")));
    }
    let mut in_flight = Vec::new();
    while in_flight.len() < held.len() {
        let got = q
            .reserve(1_000, long, Duration::ZERO)
            .await
            .expect("reserve");
        assert!(!got.is_empty(), "the held jobs were not all leased");
        in_flight.extend(got);
    }
    let held_ids: std::collections::HashSet<ConversionId> = held.iter().map(|j| j.id).collect();

    for tenants in [&["default"][..], &["default", "other"][..]] {
        // A job whose lease runs out at once, then ready jobs below and above its priority.
        let lapsed = ConversionId::new();
        q.enqueue(JobSpec::now(lapsed, 5).for_tenant(tenants[0]))
            .await
            .expect("enqueue");
        let short = q
            .reserve(1, Duration::from_millis(1), Duration::ZERO)
            .await
            .expect("reserve the short lease");
        assert_eq!(short.iter().map(|l| l.id).collect::<Vec<_>>(), [lapsed]);
        let (low, high) = (ConversionId::new(), ConversionId::new());
        q.enqueue(JobSpec::now(low, 1).for_tenant(tenants[tenants.len() - 1]))
            .await
            .expect("enqueue");
        q.enqueue(JobSpec::now(high, 7).for_tenant(tenants[0]))
            .await
            .expect("enqueue");
        // The expired lease counts as ready again once it has run out.
        let expired = async {
            while q.stats().await.expect("stats").ready < 3 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(60), expired)
            .await
            .expect("the short lease never ran out");

        let plan = q.explain_reserve(8).await.expect("explain");
        assert!(plan.contains("jobs_tenant_ready"), "{plan}");
        let mut got = Vec::new();
        loop {
            let leases = q.reserve(8, long, Duration::ZERO).await.expect("reserve");
            if leases.is_empty() {
                break;
            }
            got.extend(leases);
        }
        assert!(
            got.iter().all(|l| !held_ids.contains(&l.id)),
            "a held job came back"
        );
        let ids: Vec<ConversionId> = got.iter().map(|l| l.id).collect();
        if tenants.len() == 1 {
            assert_eq!(ids, [high, lapsed, low], "not in delivery order");
        } else {
            // Two tenants take turns: each one's best job first, then the rest.
            assert_eq!(ids.len(), 3, "{ids:?}");
            assert!(
                ids[..2].contains(&high) && ids[..2].contains(&low),
                "{ids:?}"
            );
            assert_eq!(ids[2], lapsed);
        }
        let again = got.iter().find(|l| l.id == lapsed).expect("the lapsed job");
        assert_eq!(again.attempt, 2, "the lapsed job's delivery is not counted");
        assert!(q.ack_many(&got).await.expect("ack").is_empty());
    }
    let stats = q.stats().await.expect("stats");
    assert_eq!((stats.ready, stats.leased), (0, 1_000));
    db.cleanup().await;
}

/// A backlog enqueued through the queue is reserved by walking `jobs_tenant_ready` in
/// delivery order, without anyone analysing the table (autovacuum may be off, as in the
/// benches, or lag behind a burst). Without statistics PostgreSQL takes `tenant = …` to match
/// half a percent of the jobs, and planned the reserve as a bitmap scan of the tenant's every
/// job and a sort of them all (the sort cannot stop early under `FOR UPDATE SKIP LOCKED`):
/// 43 ms a reserve with 80,000 jobs queued, 1,300 jobs/s through the engine. The queue's
/// maintenance (after every 10,000 jobs enqueued or completed) analyses its tables.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_enqueued_through_the_queue_is_reserved_in_index_order() {
    let Some(db) = server().await else { return };
    let pg = db.backend().await;
    let q = pg.queue();
    let jobs: Vec<JobSpec> = (0..20_000)
        .map(|i| JobSpec::now(ConversionId::new(), i % 3))
        .collect();
    for chunk in jobs.chunks(1_000) {
        let done = futures::future::join_all(chunk.iter().map(|j| q.enqueue(j.clone()))).await;
        assert!(done.into_iter().all(|r| r.expect("enqueue")));
    }
    // The maintenance runs in the background: wait until its statistics are there.
    let analysed = async {
        loop {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stats \
                 WHERE schemaname = current_schema() AND tablename = 'jobs' \
                   AND attname = 'tenant'",
            )
            .fetch_one(pg.pool())
            .await
            .expect("pg_stats");
            if n > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(120), analysed)
        .await
        .expect("the queue's maintenance never analysed the jobs table");
    let plan = q.explain_reserve(48).await.expect("explain");
    assert!(
        plan.contains("Index Scan using jobs_tenant_ready")
            && !plan.contains("Bitmap Index Scan on jobs_tenant_ready"),
        "a backlog is not reserved by walking jobs_tenant_ready:\n{plan}"
    );
    db.cleanup().await;
}

/// A tenant's usage is read from the index of its records by status alone, never by walking
/// the table or its heap (an index-only scan of `conversions_tenant_status_created`, which
/// carries the stored bytes). Sequential scans are off for the check: on a nearly empty table
/// the planner would rightly prefer one, and the question is whether an index covers the query.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_usage_reads_an_index() {
    let Some(db) = server().await else { return };
    let pg = db.backend().await;
    let mut tx = pg.pool().begin().await.expect("begin");
    sqlx::query("SET LOCAL enable_seqscan = off")
        .execute(&mut *tx)
        .await
        .expect("set");
    let plan: Vec<String> = sqlx::query_scalar(
        "EXPLAIN SELECT count(*) FILTER (WHERE status = 'queued'), \
         count(*) FILTER (WHERE status = 'running'), coalesce(sum(stored_bytes), 0)::bigint \
         FROM conversions WHERE tenant = 'acme'",
    )
    .fetch_all(&mut *tx)
    .await
    .expect("explain");
    tx.rollback().await.expect("rollback");
    let plan = plan.join("\n");
    assert!(
        plan.contains("Index Only Scan using conversions_tenant_status_created"),
        "tenant usage is not an index-only scan of the status index: {plan}"
    );
    db.cleanup().await;
}

/// Everything converto creates, its migrations table included, is inside the configured
/// schema; `public` is untouched; migrating again is a no-op.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_live_only_in_their_schema() {
    let Some(db) = server().await else { return };
    let tables_in = |schema: String| {
        let admin = db.admin.clone();
        async move {
            let mut names: Vec<String> = sqlx::query_scalar(
                "SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1",
            )
            .bind(schema)
            .fetch_all(&admin)
            .await
            .expect("tables");
            names.sort();
            names
        }
    };
    let public_before = tables_in("public".into()).await;
    let pg = db.backend().await;
    let schema = pg.config().schema.clone();
    assert_eq!(
        tables_in(schema.clone()).await,
        vec![
            "_converto_migrations",
            "api_keys",
            "conversions",
            "job_tenants",
            "jobs",
            "progress",
            "tenant_limits",
            "webhook_attempts",
            "webhook_endpoints",
            "webhook_messages",
            "webhook_subscriptions",
            "webhook_tenant_secrets"
        ]
    );
    assert_eq!(
        tables_in("public".into()).await,
        public_before,
        "public changed"
    );
    let elsewhere: Vec<String> = sqlx::query_scalar(
        "SELECT table_schema::text FROM information_schema.tables \
         WHERE table_name IN ('_converto_migrations', '_sqlx_migrations') \
           AND table_schema NOT LIKE 'converto%'",
    )
    .fetch_all(&db.admin)
    .await
    .expect("migration tables");
    assert!(
        elsewhere.is_empty(),
        "migrations table outside converto: {elsewhere:?}"
    );
    let applied: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM \"{schema}\"._converto_migrations WHERE success"
    )))
    .fetch_one(&db.admin)
    .await
    .expect("applied");
    assert!(applied >= 1);
    pg.migrate().await.expect("migrate again");
    let again = PostgresBackend::connect(db.config(&schema))
        .await
        .expect("reconnect");
    again.migrate().await.expect("migrate a third time");
    let applied_again: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM \"{schema}\"._converto_migrations"
    )))
    .fetch_one(&db.admin)
    .await
    .expect("applied");
    assert_eq!(applied_again, applied, "migrations ran twice");

    // Another schema is another converto: records do not leak between them.
    let other = db.backend().await;
    let c = pg
        .store()
        .create(testkit::store::sample("t"))
        .await
        .expect("create")
        .conversion;
    assert!(other.store().get(c.id).await.is_err());
    assert!(again.store().get(c.id).await.is_ok());
    db.cleanup().await;
}

/// Configuration mistakes are caught before connecting; an unreachable server is a temporary
/// error.
#[tokio::test]
async fn bad_configs_and_unreachable_servers() {
    let bad = PostgresConfig::new(DEFAULT_URL).schema("Robert'); DROP TABLE students;--");
    assert!(matches!(
        PostgresBackend::connect(bad).await,
        Err(PostgresError::InvalidConfig {
            field: "schema",
            ..
        })
    ));
    assert!(matches!(
        PostgresBackend::connect(PostgresConfig::new("postgres://u@h:notaport/db")).await,
        Err(PostgresError::InvalidUrl { .. })
    ));
    let unreachable = PostgresConfig::new("postgres://postgres@127.0.0.1:1/test")
        .acquire_timeout(Duration::from_secs(2));
    let err = PostgresBackend::connect(unreachable)
        .await
        .expect_err("port 1 answers");
    assert!(err.is_temporary(), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_store_suite() {
    let Some(db) = server().await else { return };
    testkit::keys::run_key_store_suite(async || {
        let keys: Arc<dyn converto_core::keys::KeyStore> = db.backend().await.keys();
        keys
    })
    .await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_store_suite() {
    let Some(db) = server().await else { return };
    testkit::tenants::run_tenant_store_suite(async || {
        let tenants: Arc<dyn converto_core::tenants::TenantStore> = db.backend().await.tenants();
        tenants
    })
    .await;
    db.cleanup().await;
}

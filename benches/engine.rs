//! Engine throughput end to end: no-op conversions through the whole engine (submit, reserve,
//! start, convert, store the artifact, succeed, ack, events) on each backend.
//!
//! ```text
//! cargo bench --bench engine                                   # in-memory backends
//! cargo bench --bench engine --features sqlite,postgres,redis  # and the others
//! cargo bench --bench engine --features postgres -- postgres   # only names containing "postgres"
//! ```
//!
//! Each case runs twice, on fresh backends each time, and prints one line per run:
//!
//! - `drain`: `N` conversions are submitted first (64 submissions in flight), then
//!   `run_workers` starts and drains them; jobs/s runs from the workers' start to the last
//!   success (how graphile-worker's bench times itself: its jobs are queued beforehand).
//! - `steady`: `run_workers` runs while the `N` conversions are submitted; jobs/s runs from the
//!   first submit to the last success, and the submit-to-start latency (from the call to
//!   `submit` to the converter starting) is printed at p50 and p99.
//!
//! Each line reads `engine <case> <mode> jobs/s <rate> p50_ms <p50> p99_ms <p99> submit/s
//! <rate>` (`-` for the latencies of a drain, whose jobs all waited in a full queue);
//! `benches/graphile.sh` reads the drain line. A case whose server cannot be reached is skipped
//! with a message.
//!
//! - `memory_c64`, `memory_c512`: in-memory store, queue, bus and blobs (`N` = 100,000 by
//!   default; the best of three runs each).
//! - `sqlite_c64`: SQLite store and queue (a temporary file), in-memory bus and blobs.
//! - `postgres_c64`, `postgres_c512`: PostgreSQL store, queue and bus (a throwaway schema,
//!   dropped afterwards; `CONVERTO_BENCH_POSTGRES_URL`, else `CONVERTO_TEST_POSTGRES_URL`, else
//!   `postgres://postgres@127.0.0.1:5432/test`), in-memory blobs. At concurrency 64 a no-op job
//!   spends its whole life waiting for commits, so the rate is 64 over one job's commit
//!   latencies; 512 slots let the batched statements fill.
//! - `redis_c64`: Redis queue and bus (`CONVERTO_BENCH_REDIS_URL`, else
//!   `CONVERTO_TEST_REDIS_URL`, else `redis://127.0.0.1:6379`; a fresh key prefix), in-memory
//!   store and blobs (Redis keeps no records).
//!
//! `CONVERTO_BENCH_JOBS` overrides `N` for every case. The engine runs with
//! `EngineConfig::default()` apart from the concurrency and a disabled sweeper, so the figures
//! are those of the default prefetch and batched acknowledgement; `CONVERTO_BENCH_PREFETCH` and
//! `CONVERTO_BENCH_ACK_BATCH` set `EngineConfig::prefetch` and `ack_batch` (0 and 1 turn them
//! off) to compare.
//!
//! The process allocates with mimalloc, as the `converto` binary (`serve`, `worker`) does: the
//! engine's figures are those of the program that runs it. With the system allocator (glibc),
//! the bench process spent 18% of its CPU in `malloc` and `free` at `postgres_c512`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use converto::{
    Backends, CancellationToken, ConversionId, ConvertContext, ConvertError, ConvertRequest,
    Converter, ConverterRegistry, Engine, EngineConfig, Format, Output, Route, Status, Submission,
    SubmitInput,
};
use futures::StreamExt;
use starts::Starts;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Start instants recorded by the converter, without a lock shared with the engine's.
mod starts {
    use std::sync::Mutex;
    use std::time::Instant;

    use converto::ConversionId;

    /// Each conversion's start, in the order they started.
    #[derive(Debug, Default)]
    pub(crate) struct Starts(Mutex<Vec<(ConversionId, Instant)>>);

    impl Starts {
        pub(crate) fn with_capacity(n: usize) -> Self {
            Self(Mutex::new(Vec::with_capacity(n)))
        }
        pub(crate) fn push(&self, id: ConversionId) {
            let now = Instant::now();
            if let Ok(mut v) = self.0.lock() {
                v.push((id, now));
            }
        }
        pub(crate) fn take(&self) -> Vec<(ConversionId, Instant)> {
            self.0
                .lock()
                .map(|mut v| std::mem::take(&mut *v))
                .unwrap_or_default()
        }
    }
}

#[derive(Debug)]
struct Noop {
    starts: Arc<Starts>,
    started: Arc<AtomicUsize>,
}

#[async_trait]
impl Converter for Noop {
    fn name(&self) -> &str {
        "noop"
    }
    fn routes(&self) -> Vec<Route> {
        vec![Route::new(fmt("txt"), fmt("out"))]
    }
    async fn convert(
        &self,
        request: &ConvertRequest,
        _: &ConvertContext,
    ) -> Result<Vec<Output>, ConvertError> {
        self.starts.push(request.id);
        self.started.fetch_add(1, Ordering::Relaxed);
        Ok(vec![Output::bytes(
            "out",
            fmt("out"),
            Bytes::from_static(b"ok"),
        )])
    }
}

fn fmt(s: &str) -> Format {
    Format::new(s).expect("format")
}

/// What one run measured.
struct Run {
    jobs: usize,
    /// From the first submit to the last one returned.
    submit_took: Duration,
    /// What jobs/s is measured over (see [`Mode`]).
    took: Duration,
    p50: Duration,
    p99: Duration,
}

/// How a run meets its jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Workers run while the jobs are submitted: jobs/s from the first submit to the last
    /// verdict, and a meaningful submit-to-start latency.
    Steady,
    /// Every job is submitted first, then `run_workers` starts and drains the queue: jobs/s from
    /// the workers' start to the last verdict (how graphile-worker's bench times itself).
    Drain,
}

/// Waits until `jobs` conversions have succeeded: first until every one started (a counter),
/// then for the verdicts, polling the store's counts at a pace that stays a small share of the
/// run (a count is not free on a database).
async fn wait_for_verdicts(engine: &Engine, started: &AtomicUsize, jobs: usize, since: Instant) {
    while started.load(Ordering::Relaxed) < jobs {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let store = Arc::clone(&engine.backends().store);
    loop {
        let counts = store.count_by_status().await.expect("count");
        if counts.get(&Status::Succeeded).copied().unwrap_or(0) as usize >= jobs {
            return;
        }
        let pace =
            (since.elapsed() / 500).clamp(Duration::from_millis(1), Duration::from_millis(20));
        tokio::time::sleep(pace).await;
    }
}

/// Submits `jobs` conversions to an engine on `backends` running `run_workers`, and waits until
/// all have succeeded.
async fn run_once(backends: Backends, jobs: usize, concurrency: usize, mode: Mode) -> Run {
    let starts = Arc::new(Starts::with_capacity(jobs));
    let started = Arc::new(AtomicUsize::new(0));
    let registry = ConverterRegistry::new().with(Arc::new(Noop {
        starts: Arc::clone(&starts),
        started: Arc::clone(&started),
    }));
    let mut config = EngineConfig::default()
        .concurrency(concurrency)
        .sweeper(Duration::ZERO, Duration::ZERO)
        .janitor(Duration::from_secs(3600), Duration::ZERO);
    if let Some(n) = env_usize("CONVERTO_BENCH_PREFETCH") {
        config = config.prefetch(n);
    }
    if let Some(n) = env_usize("CONVERTO_BENCH_ACK_BATCH") {
        let delay = config.ack_delay;
        config = config.ack_batch(n, delay);
    }
    let engine = Engine::builder()
        .backends(backends)
        .registry(registry)
        .config(config)
        .build()
        .expect("engine");
    let stop = CancellationToken::new();
    let spawn_workers = || {
        let (engine, stop) = (engine.clone(), stop.clone());
        tokio::spawn(async move { engine.run_workers(stop).await })
    };
    let workers = match mode {
        Mode::Steady => Some(spawn_workers()),
        Mode::Drain => None,
    };
    let start = Instant::now();
    let input = Bytes::from_static(b"x");
    let submitted: Vec<(ConversionId, Instant)> = futures::stream::iter(0..jobs)
        .map(|_| {
            let engine = &engine;
            let input = input.clone();
            async move {
                let at = Instant::now();
                let c = engine
                    .submit(
                        Submission::new(fmt("out"), SubmitInput::bytes(input, None))
                            .source(fmt("txt")),
                    )
                    .await
                    .expect("submit");
                (c.conversion.id, at)
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let submit_took = start.elapsed();
    // With workers held back, the drain is timed from their start: the queue is full.
    let (start, workers) = match workers {
        Some(w) => (start, w),
        None => (Instant::now(), spawn_workers()),
    };
    wait_for_verdicts(&engine, &started, jobs, start).await;
    let took = start.elapsed();
    stop.cancel();
    workers.await.expect("join").expect("workers");

    let submitted: std::collections::HashMap<ConversionId, Instant> =
        submitted.into_iter().collect();
    let mut latencies: Vec<Duration> = starts
        .take()
        .into_iter()
        .filter_map(|(id, at)| submitted.get(&id).map(|s| at.saturating_duration_since(*s)))
        .collect();
    latencies.sort_unstable();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Run {
        jobs,
        submit_took,
        took,
        p50: pct(0.50),
        p99: pct(0.99),
    }
}

fn print(case: &str, mode: Mode, run: &Run) {
    let ms = |d: Duration| format!("{:.2}", d.as_secs_f64() * 1e3);
    // Drained jobs all waited in a full queue: their start latency says nothing.
    let (p50, p99) = match mode {
        Mode::Steady => (ms(run.p50), ms(run.p99)),
        Mode::Drain => ("-".to_owned(), "-".to_owned()),
    };
    println!(
        "engine {case:<14} {:<6} jobs/s {:>9.0} p50_ms {p50:>8} p99_ms {p99:>8} submit/s {:>9.0}   ({} jobs in {:.2}s)",
        match mode {
            Mode::Steady => "steady",
            Mode::Drain => "drain",
        },
        run.jobs as f64 / run.took.as_secs_f64().max(1e-9),
        run.jobs as f64 / run.submit_took.as_secs_f64().max(1e-9),
        run.jobs,
        run.took.as_secs_f64(),
    );
}

fn env_usize(name: &str) -> Option<usize> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn jobs_or(default: usize) -> usize {
    env_usize("CONVERTO_BENCH_JOBS").unwrap_or(default)
}

#[cfg(feature = "postgres")]
async fn postgres_backends() -> Option<(Backends, impl AsyncFnOnce())> {
    use converto::adapters::postgres::{PostgresBackend, PostgresConfig, sqlx};
    let url = std::env::var("CONVERTO_BENCH_POSTGRES_URL")
        .or_else(|_| std::env::var("CONVERTO_TEST_POSTGRES_URL"))
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let schema = format!("converto_bench_{}", ConversionId::new().as_uuid().simple());
    let config = PostgresConfig::from_env_with_url(&url)
        .expect("CONVERTO_POSTGRES_* settings")
        .schema(schema.clone());
    let pg = match PostgresBackend::connect(config).await {
        Ok(pg) => pg,
        Err(e) => {
            eprintln!("engine postgres SKIPPED: cannot connect to {url}: {e}");
            return None;
        }
    };
    let backends = pg.backends(Arc::new(converto::memory::MemoryBlobStore::new()));
    let cleanup = async move || {
        pg.close().await;
        if let Ok(admin) = sqlx::PgPool::connect(&url).await {
            let drop = format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE");
            let _ = sqlx::query(sqlx::AssertSqlSafe(drop)).execute(&admin).await;
        }
    };
    Some((backends, cleanup))
}

/// Runs one case in both modes, each on fresh backends from `open` (the best of `best_of` runs
/// each), and prints a line per mode.
async fn case<F, Fut, C>(case: &str, jobs: usize, concurrency: usize, best_of: usize, open: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Option<(Backends, C)>>,
    C: AsyncFnOnce(),
{
    for mode in [Mode::Drain, Mode::Steady] {
        let mut best: Option<Run> = None;
        for _ in 0..best_of {
            let Some((backends, cleanup)) = open().await else {
                return;
            };
            let run = run_once(backends, jobs, concurrency, mode).await;
            cleanup().await;
            if best.as_ref().is_none_or(|b| run.took < b.took) {
                best = Some(run);
            }
        }
        if let Some(best) = best {
            print(case, mode, &best);
        }
    }
}

fn main() {
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let wanted = |case: &str| filter.is_empty() || filter.iter().any(|f| case.contains(f));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        for concurrency in [64, 512] {
            let name = format!("memory_c{concurrency}");
            if wanted(&name) {
                case(&name, jobs_or(100_000), concurrency, 3, || async {
                    Some((Backends::in_memory(), async || {}))
                })
                .await;
            }
        }
        #[cfg(feature = "sqlite")]
        if wanted("sqlite_c64") {
            case("sqlite_c64", jobs_or(10_000), 64, 1, sqlite_backends).await;
        }
        #[cfg(feature = "postgres")]
        for concurrency in [64, 512] {
            let name = format!("postgres_c{concurrency}");
            if wanted(&name) {
                case(&name, jobs_or(20_000), concurrency, 1, postgres_backends).await;
            }
        }
        #[cfg(feature = "redis")]
        if wanted("redis_c64") {
            case("redis_c64", jobs_or(20_000), 64, 1, redis_backends).await;
        }
    });
}

#[cfg(feature = "sqlite")]
async fn sqlite_backends() -> Option<(Backends, impl AsyncFnOnce())> {
    use converto::adapters::sqlite::SqliteBackend;
    let file = std::env::temp_dir().join(format!(
        "converto-bench-{}.db",
        ConversionId::new().as_uuid().simple()
    ));
    let db = SqliteBackend::connect(file.display().to_string())
        .await
        .expect("sqlite");
    let backends = Backends {
        store: db.store(),
        queue: db.queue(),
        bus: Arc::new(converto::memory::MemoryProgressBus::new()),
        blobs: Arc::new(converto::memory::MemoryBlobStore::new()),
    };
    let cleanup = async move || {
        db.close().await;
        for suffix in ["", "-wal", "-shm"] {
            let mut f = file.clone().into_os_string();
            f.push(suffix);
            let _ = std::fs::remove_file(f);
        }
    };
    Some((backends, cleanup))
}

#[cfg(feature = "redis")]
async fn redis_backends() -> Option<(Backends, impl AsyncFnOnce())> {
    use converto::adapters::redis::{RedisBackend, RedisConfig};
    let url = std::env::var("CONVERTO_BENCH_REDIS_URL")
        .or_else(|_| std::env::var("CONVERTO_TEST_REDIS_URL"))
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let config =
        RedisConfig::new(&url).key_prefix(format!("converto-bench:{}", ConversionId::new()));
    match RedisBackend::connect(config).await {
        Ok(r) => {
            let backends = Backends {
                store: Arc::new(converto::memory::MemoryConversionStore::new()),
                queue: r.queue(),
                bus: r.bus(),
                blobs: Arc::new(converto::memory::MemoryBlobStore::new()),
            };
            Some((backends, async || {}))
        }
        Err(e) => {
            eprintln!("engine redis SKIPPED: cannot reach {url}: {e}");
            None
        }
    }
}

//! The RabbitMQ queue against the queue conformance suite and the engine suite, on a real broker
//! (`CONVERTO_TEST_RABBITMQ_URL`, default `amqp://guest:guest@127.0.0.1:5672/%2f`), plus what
//! only a broker can get wrong: a process that dies with jobs it held, a removal reaching the
//! process that holds the job, and connections the broker drops (closed, or the broker
//! restarted).
//!
//! Each queue gets a fresh name prefix, so runs never see each other's queues; the queues and
//! the exchange are deleted afterwards. Without a broker the tests skip with a message, unless
//! `CI=true`, where they fail.
#![cfg(feature = "rabbitmq")]

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use converto_adapters::rabbitmq::{RabbitConfig, RabbitJobQueue};
use converto_core::ConversionId;
use converto_core::engine::Backends;
use converto_core::memory::{MemoryBlobStore, MemoryConversionStore, MemoryProgressBus};
use converto_core::queue::{JobQueue, JobSpec, Lease, QueueError};
use converto_core::testkit::{engine, queue, within};
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};

const URL_VAR: &str = "CONVERTO_TEST_RABBITMQ_URL";
const LEASE: Duration = Duration::from_secs(30);

/// The tests run one at a time: two of them drop every connection to the broker.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn url() -> String {
    std::env::var(URL_VAR).unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Queues with fresh prefixes, deleted by [`Fixture::cleanup`].
struct Fixture {
    prefixes: Mutex<Vec<String>>,
}

impl Fixture {
    /// `None` (after saying why) if there is no broker and this is not CI.
    async fn new() -> Option<Self> {
        let url = url();
        let reachable = async {
            let conn = Connection::connect(&url, ConnectionProperties::default()).await?;
            conn.close(200, "probe".into()).await
        };
        match tokio::time::timeout(Duration::from_secs(5), reachable).await {
            Ok(Ok(())) => Some(Self {
                prefixes: Mutex::new(Vec::new()),
            }),
            outcome => {
                let why = match outcome {
                    Ok(Err(e)) => e.to_string(),
                    _ => "timed out".to_owned(),
                };
                if in_ci() {
                    panic!("no RabbitMQ at {url} ({why}); set {URL_VAR} to a reachable broker");
                }
                eprintln!(
                    "SKIPPED: no RabbitMQ at {url} ({why}); set {URL_VAR} to run the RabbitMQ tests"
                );
                None
            }
        }
    }

    fn config(&self) -> RabbitConfig {
        let prefix = format!("converto-test.{}", uuid::Uuid::now_v7());
        self.prefixes.lock().expect("prefixes").push(prefix.clone());
        RabbitConfig::new(url()).queue_prefix(prefix)
    }

    async fn queue(&self) -> Arc<RabbitJobQueue> {
        self.queue_with(self.config()).await
    }

    async fn queue_with(&self, config: RabbitConfig) -> Arc<RabbitJobQueue> {
        Arc::new(RabbitJobQueue::connect(config).await.expect("connect"))
    }

    async fn cleanup(self) {
        drop(self);
    }
}

/// Deletes the test's queues and exchanges, also when a test failed: on a thread of its own,
/// since a test's runtime may be unwinding.
impl Drop for Fixture {
    fn drop(&mut self) {
        let prefixes =
            std::mem::take(&mut *self.prefixes.lock().unwrap_or_else(|e| e.into_inner()));
        if prefixes.is_empty() {
            return;
        }
        let deleted = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                for p in prefixes {
                    let config = RabbitConfig::new(url()).queue_prefix(p);
                    if let Err(e) = RabbitJobQueue::delete_layout(&config).await {
                        eprintln!("could not delete the test queues of {config:?}: {e}");
                    }
                }
            });
        })
        .join();
        if deleted.is_err() {
            eprintln!("deleting the test queues panicked");
        }
    }
}

/// Ready messages in a queue, as the broker counts them (held, unacknowledged ones are not).
async fn ready_in_broker(queue: &str) -> u32 {
    let conn = Connection::connect(&url(), ConnectionProperties::default())
        .await
        .expect("connect");
    let channel = conn.create_channel().await.expect("channel");
    let q = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("declare");
    let _ = conn.close(200, "count".into()).await;
    q.message_count()
}

/// Waits (generously) until `check` holds.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reserves until `n` leases came (generously).
async fn reserve_until(q: &RabbitJobQueue, n: usize, what: &str) -> Vec<Lease> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut got = Vec::new();
    while got.len() < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        got.extend(
            q.reserve(n - got.len(), LEASE, Duration::from_secs(1))
                .await
                .expect("reserve"),
        );
    }
    got
}

/// Runs `rabbitmqctl` with these arguments; `false` (after saying why) if it cannot, unless in
/// CI, where it must.
fn rabbitmqctl(args: &[&str]) -> bool {
    match Command::new("rabbitmqctl").args(args).output() {
        Ok(out) if out.status.success() => true,
        outcome => {
            let why = match outcome {
                Ok(out) => String::from_utf8_lossy(&out.stderr).into_owned(),
                Err(e) => e.to_string(),
            };
            assert!(!in_ci(), "rabbitmqctl {args:?} failed: {why}");
            eprintln!(
                "SKIPPED: rabbitmqctl {args:?} failed ({why}); run the test on the broker's host"
            );
            false
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_conforms() {
    let _serial = SERIAL.lock().await;
    let Some(fx) = Fixture::new().await else {
        return;
    };
    queue::run_queue_suite(async || fx.queue().await as Arc<dyn JobQueue>).await;
    fx.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_suite_on_rabbitmq_queue() {
    let _serial = SERIAL.lock().await;
    let Some(fx) = Fixture::new().await else {
        return;
    };
    engine::run_engine_suite(async || Backends {
        store: Arc::new(MemoryConversionStore::new()),
        queue: fx.queue().await,
        bus: Arc::new(MemoryProgressBus::new()),
        blobs: Arc::new(MemoryBlobStore::new()),
    })
    .await;
    fx.cleanup().await;
}

/// A process that dies holding jobs (one of them leased) gives them back through the broker: the
/// next process gets both, the leased one as its next attempt. A removal from an API-only
/// process (it consumes nothing) reaches the process that holds the job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_holders_jobs_go_to_the_next_process() {
    let _serial = SERIAL.lock().await;
    let Some(fx) = Fixture::new().await else {
        return;
    };
    let config = fx.config();
    let (leased, idle, removed) = (
        ConversionId::new(),
        ConversionId::new(),
        ConversionId::new(),
    );
    {
        let a = fx.queue_with(config.clone()).await;
        for id in [leased, idle, removed] {
            assert!(a.enqueue(JobSpec::now(id, 0)).await.expect("enqueue"));
        }
        let l = a.reserve(1, LEASE, Duration::ZERO).await.expect("reserve");
        assert_eq!((l[0].id, l[0].attempt), (leased, 1));
        // `a` is dropped here, as if its process died: its connection closes.
    }
    let api = fx.queue_with(config.clone().consume(false)).await;
    let b = fx.queue_with(config).await;
    let got = reserve_until(b.as_ref(), 3, "the dead holder's jobs").await;
    let attempts: std::collections::HashMap<_, _> = got.iter().map(|l| (l.id, l.attempt)).collect();
    assert_eq!(attempts.len(), 3);
    assert_eq!(
        attempts[&leased], 2,
        "a job leased by a dead process comes back as its next attempt"
    );
    assert!(attempts[&idle] >= 1);

    // Remove through the API-only process: the holder drops the job and its lease.
    let removed_lease = got.iter().find(|l| l.id == removed).expect("lease");
    api.remove(removed).await.expect("remove");
    eventually("the removal reaches the holder", || {
        let b = Arc::clone(&b);
        async move { !b.contains(removed).await.expect("contains") }
    })
    .await;
    assert!(matches!(
        b.ack(removed_lease).await,
        Err(QueueError::LeaseLost { .. })
    ));
    for l in got.iter().filter(|l| l.id != removed) {
        b.ack(l).await.expect("ack");
    }
    assert_eq!(b.stats().await.expect("stats"), Default::default());
    assert_eq!(api.stats().await.expect("stats").ready, 0);
    let jobs = b.jobs_queue().to_owned();
    drop(b);
    // Nothing was left behind in the broker (held messages would come back on close).
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(ready_in_broker(&jobs).await, 0, "acked jobs came back");
    drop(api);
    fx.cleanup().await;
}

/// The broker drops every connection, then restarts: the queue reconnects by itself, a lease
/// taken before stays valid (its job came back to this process), jobs enqueued before are
/// delivered after, and new work flows, all without a new queue object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_dropped_connections_and_a_broker_restart() {
    let _serial = SERIAL.lock().await;
    let Some(fx) = Fixture::new().await else {
        return;
    };
    let q = fx.queue().await;
    let before: Vec<ConversionId> = (0..3).map(|_| ConversionId::new()).collect();
    for id in &before {
        assert!(q.enqueue(JobSpec::now(*id, 0)).await.expect("enqueue"));
    }
    let held = q.reserve(1, LEASE, Duration::ZERO).await.expect("reserve");
    assert_eq!(held[0].id, before[0]);

    if !rabbitmqctl(&["close_all_connections", "converto test: dropped connection"]) {
        fx.cleanup().await;
        return;
    }
    eventually("the connection drop is noticed", || {
        let q = Arc::clone(&q);
        async move { !q.is_connected() }
    })
    .await;
    eventually("reconnected", || {
        let q = Arc::clone(&q);
        async move { q.ping().await.is_ok() }
    })
    .await;
    let held = q
        .heartbeat(&held[0], LEASE)
        .await
        .expect("the lease survived");
    let rest = within(
        30,
        "jobs enqueued before the drop",
        q.reserve(2, LEASE, Duration::from_secs(20)),
    )
    .await
    .expect("reserve");
    let mut ids: Vec<_> = rest.iter().map(|l| l.id).collect();
    ids.sort();
    assert_eq!(ids, before[1..].to_vec());
    assert!(
        rest.iter().all(|l| l.attempt == 1),
        "jobs held across a reconnect keep their attempt: {rest:?}"
    );
    q.ack(&held).await.expect("ack");
    // The retried job is held (delayed) through the restart; the others are acked.
    q.retry(&rest[0], chrono::Utc::now()).await.expect("retry");
    q.ack(&rest[1]).await.expect("ack");

    // A full broker restart: persistent messages in a durable queue survive it.
    let after = ConversionId::new();
    assert!(q.enqueue(JobSpec::now(after, 0)).await.expect("enqueue"));
    if !(rabbitmqctl(&["stop_app"]) && rabbitmqctl(&["start_app"])) {
        fx.cleanup().await;
        return;
    }
    eventually("reconnected after the restart", || {
        let q = Arc::clone(&q);
        async move { q.ping().await.is_ok() }
    })
    .await;
    let got = reserve_until(q.as_ref(), 2, "every job after the restart").await;
    let mut ids: Vec<_> = got.iter().map(|l| l.id).collect();
    ids.sort();
    let mut want = vec![rest[0].id, after];
    want.sort();
    assert_eq!(ids, want);
    for l in &got {
        q.ack(l).await.expect("ack");
    }
    // New work flows both ways after all this.
    let new = ConversionId::new();
    assert!(q.enqueue(JobSpec::now(new, 0)).await.expect("enqueue"));
    let l = q
        .reserve(1, LEASE, Duration::from_secs(10))
        .await
        .expect("reserve");
    assert_eq!(l[0].id, new);
    q.ack(&l[0]).await.expect("ack");
    assert_eq!(q.stats().await.expect("stats"), Default::default());
    let jobs = q.jobs_queue().to_owned();
    drop(q);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(ready_in_broker(&jobs).await, 0, "acked jobs came back");
    fx.cleanup().await;
}

//! The Redis queue and bus against the conformance suites and the engine suite, on a real
//! server (`CONVERTO_TEST_REDIS_URL`, default `redis://127.0.0.1:6379`), plus what only a shared,
//! networked backend can get wrong: several processes on one queue, and a dropped pub/sub
//! connection.
//!
//! Each backend gets a fresh key prefix, so runs never see each other's keys; the keys are
//! deleted afterwards. Without a server the tests skip with a message, unless `CI=true`, where
//! they fail.
#![cfg(feature = "redis")]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use converto_adapters::redis::{RedisBackend, RedisConfig};
use converto_core::ConversionId;
use converto_core::conversion::{Progress, Status};
use converto_core::engine::Backends;
use converto_core::memory::{MemoryBlobStore, MemoryConversionStore};
use converto_core::progress::{Event, ProgressBus};
use converto_core::queue::{JobQueue, JobSpec, QueueError};
use converto_core::testkit::{engine, progress, queue, within};
use futures::StreamExt;

const URL_VAR: &str = "CONVERTO_TEST_REDIS_URL";

/// The tests run one at a time: one of them drops every pub/sub connection on the server.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn url() -> String {
    std::env::var(URL_VAR).unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// Backends with fresh prefixes, cleaned up on drop.
struct Fixture {
    prefixes: Mutex<Vec<String>>,
}

impl Fixture {
    /// `None` (after saying why) if there is no server and this is not CI.
    async fn new() -> Option<Self> {
        let url = url();
        let reachable = async {
            let client = redis::Client::open(url.as_str())?;
            let mut conn = client.get_multiplexed_async_connection().await?;
            redis::cmd("PING").query_async::<()>(&mut conn).await
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
                if std::env::var("CI").is_ok_and(|v| v == "true") {
                    panic!("no Redis at {url} ({why}); set {URL_VAR} to a reachable server");
                }
                eprintln!(
                    "SKIPPED: no Redis at {url} ({why}); set {URL_VAR} to run the Redis tests"
                );
                None
            }
        }
    }

    fn config(&self) -> RedisConfig {
        let prefix = format!("converto-test:{}", uuid::Uuid::now_v7());
        self.prefixes.lock().expect("prefixes").push(prefix.clone());
        RedisConfig::new(url()).key_prefix(prefix)
    }

    async fn backend(&self) -> RedisBackend {
        self.backend_with(self.config()).await
    }

    async fn backend_with(&self, config: RedisConfig) -> RedisBackend {
        RedisBackend::connect(config).await.expect("connect")
    }

    async fn cleanup(self) {
        let prefixes = std::mem::take(&mut *self.prefixes.lock().expect("prefixes"));
        let client = redis::Client::open(url()).expect("url");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("connect");
        for prefix in prefixes {
            for pattern in [format!("{{{prefix}}}:*"), format!("{prefix}:*")] {
                let keys: Vec<String> = redis::cmd("KEYS")
                    .arg(pattern)
                    .query_async(&mut conn)
                    .await
                    .expect("keys");
                if !keys.is_empty() {
                    redis::cmd("DEL")
                        .arg(keys)
                        .query_async::<()>(&mut conn)
                        .await
                        .expect("del");
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_conforms() {
    let _serial = SERIAL.lock().await;
    let Some(fx) = Fixture::new().await else {
        return;
    };
    queue::run_queue_suite(async || fx.backend().await.queue() as Arc<dyn JobQueue>).await;
    fx.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_bus_conforms() {
    let _serial = SERIAL.lock().await;
    let Some(fx) = Fixture::new().await else {
        return;
    };
    progress::run_progress_suite(async || fx.backend().await.bus() as Arc<dyn ProgressBus>).await;
    fx.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_suite_on_redis_queue_and_bus() {
    let _serial = SERIAL.lock().await;
    let Some(fx) = Fixture::new().await else {
        return;
    };
    engine::run_engine_suite(async || {
        let backend = fx.backend().await;
        Backends {
            store: Arc::new(MemoryConversionStore::new()),
            queue: backend.queue(),
            bus: backend.bus(),
            blobs: Arc::new(MemoryBlobStore::new()),
        }
    })
    .await;
    fx.cleanup().await;
}

/// Two processes on one prefix behave as one queue: an enqueue on one wakes a reserver on the
/// other, and a lease one lets expire is delivered by the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_share_one_queue() {
    let _serial = SERIAL.lock().await;
    let Some(fx) = Fixture::new().await else {
        return;
    };
    let config = fx.config();
    let a = fx.backend_with(config.clone()).await.queue();
    let b = fx.backend_with(config).await.queue();

    let waiter = {
        let b = Arc::clone(&b);
        tokio::spawn(async move {
            let t = Instant::now();
            let l = b
                .reserve(1, Duration::from_millis(300), Duration::from_secs(20))
                .await;
            (l, t.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let id = ConversionId::new();
    assert!(a.enqueue(JobSpec::now(id, 0)).await.expect("enqueue"));
    let (leases, waited) = within(25, "woken reserver", waiter).await.expect("join");
    let first = leases.expect("reserve").remove(0);
    assert_eq!(first.id, id);
    assert!(waited < Duration::from_secs(2), "woken late: {waited:?}");

    let again = within(
        20,
        "redelivery",
        a.reserve(1, Duration::from_secs(30), Duration::from_secs(10)),
    )
    .await
    .expect("reserve");
    assert_eq!((again[0].id, again[0].attempt), (id, 2));
    assert!(matches!(
        b.ack(&first).await,
        Err(QueueError::LeaseLost { .. })
    ));
    assert!(a.ack_many(&again).await.expect("ack").is_empty());
    assert_eq!(a.stats().await.expect("stats"), Default::default());
    fx.cleanup().await;
}

/// Extreme priorities and not-before times keep their order (the ready set's member encoding).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extreme_priorities_and_times_keep_their_order() {
    let _serial = SERIAL.lock().await;
    let Some(fx) = Fixture::new().await else {
        return;
    };
    let q = fx.backend().await.queue();
    let ancient = chrono::DateTime::<Utc>::MIN_UTC;
    let epoch = chrono::DateTime::<Utc>::UNIX_EPOCH;
    let jobs = [
        (i32::MIN, Utc::now()),
        (-1, epoch),
        (0, Utc::now()),
        (0, ancient),
        (i32::MAX, Utc::now()),
        (i32::MAX, epoch),
        (1, Utc::now() - chrono::Duration::days(365 * 50)),
    ];
    let mut ids = Vec::new();
    for (priority, not_before) in jobs {
        let id = ConversionId::new();
        ids.push(id);
        assert!(
            q.enqueue(JobSpec {
                not_before,
                ..JobSpec::now(id, priority)
            })
            .await
            .expect("enqueue")
        );
    }
    let want = vec![ids[5], ids[4], ids[6], ids[3], ids[2], ids[1], ids[0]];
    let got: Vec<_> = q
        .reserve(10, Duration::from_secs(30), Duration::ZERO)
        .await
        .expect("reserve")
        .into_iter()
        .map(|l| (l.id, l.priority))
        .collect();
    let priorities = [i32::MAX, i32::MAX, 1, 0, 0, -1, i32::MIN];
    assert_eq!(got, want.into_iter().zip(priorities).collect::<Vec<_>>());
    fx.cleanup().await;
}

/// After the pub/sub connection drops, it comes back: waiting reservers still get new jobs, new
/// subscriptions work, and a subscriber still gets a terminal status published while it was down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_connection_loss_is_survived() {
    let _serial = SERIAL.lock().await;
    let Some(fx) = Fixture::new().await else {
        return;
    };
    let backend = fx.backend().await;
    let (q, bus) = (backend.queue(), backend.bus());
    let id = ConversionId::new();
    let mut sub = bus.subscribe(id).await.expect("subscribe");
    let waiter = {
        let q = Arc::clone(&q);
        tokio::spawn(async move {
            q.reserve(1, Duration::from_secs(30), Duration::from_secs(20))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;

    let client = redis::Client::open(url()).expect("url");
    let mut admin = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let killed: i64 = redis::cmd("CLIENT")
        .arg(&["KILL", "TYPE", "pubsub"])
        .query_async(&mut admin)
        .await
        .expect("client kill");
    assert!(killed >= 1, "no pub/sub connection to kill");
    // Published while the connection is (most likely) down.
    let done = Event::Status {
        id,
        status: Status::Succeeded,
        attempt: 1,
        error: None,
        at: Utc::now(),
    };
    bus.publish(done.clone()).await.expect("publish");
    let job = ConversionId::new();
    q.enqueue(JobSpec::now(job, 0)).await.expect("enqueue");

    let leases = within(15, "reserver after reconnect", waiter)
        .await
        .expect("join")
        .expect("reserve");
    assert_eq!(leases.first().map(|l| l.id), Some(job));
    let got = within(15, "terminal status after reconnect", async {
        loop {
            let e = sub.next().await.expect("stream ended");
            if e.is_terminal() {
                return e;
            }
        }
    })
    .await;
    assert_eq!(got, done);

    // A fresh subscription on the new connection receives live events.
    let other = ConversionId::new();
    let mut fresh = within(10, "subscribe after reconnect", bus.subscribe(other))
        .await
        .expect("subscribe");
    let p = Event::Progress {
        id: other,
        attempt: 1,
        progress: Progress::new(42, None),
    };
    bus.publish(p.clone()).await.expect("publish");
    assert_eq!(within(10, "live event", fresh.next()).await, Some(p));
    assert!(bus.ping().await.is_ok());
    fx.cleanup().await;
}

/// Keys live under the configured prefix only; progress keys expire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_stay_under_the_prefix_and_progress_expires() {
    let _serial = SERIAL.lock().await;
    let Some(fx) = Fixture::new().await else {
        return;
    };
    let config = fx.config().progress_ttl(Duration::from_secs(60));
    let prefix = config.key_prefix.clone();
    let backend = fx.backend_with(config).await;
    let id = ConversionId::new();
    backend
        .queue()
        .enqueue(JobSpec::now(id, 0))
        .await
        .expect("enqueue");
    backend
        .bus()
        .publish(Event::Progress {
            id,
            attempt: 1,
            progress: Progress::new(5, None),
        })
        .await
        .expect("publish");
    let client = redis::Client::open(url()).expect("url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let ttl: i64 = redis::cmd("TTL")
        .arg(format!("{prefix}:progress:{id}"))
        .query_async(&mut conn)
        .await
        .expect("ttl");
    assert!((1..=60).contains(&ttl), "progress ttl {ttl}");
    let job: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
        .arg(format!("{{{prefix}}}:queue:job:{id}"))
        .query_async(&mut conn)
        .await
        .expect("hgetall");
    assert_eq!(job.get("state").map(String::as_str), Some("r"));

    // A dead letter, then a purge: no queue key is left, the progress key stays.
    let q = backend.queue();
    let lease = q
        .reserve(1, Duration::from_secs(30), Duration::ZERO)
        .await
        .expect("reserve")
        .remove(0);
    q.dead_letter(&lease, &converto_core::ErrorInfo::new("bad", "input"))
        .await
        .expect("dead letter");
    assert!(
        q.enqueue(JobSpec::now(ConversionId::new(), 0))
            .await
            .expect("enqueue")
    );
    assert_eq!(q.purge().await.expect("purge"), 2);
    assert_eq!(q.stats().await.expect("stats"), Default::default());
    let left: Vec<String> = redis::cmd("KEYS")
        .arg(format!("*{prefix}*"))
        .query_async(&mut conn)
        .await
        .expect("keys");
    assert_eq!(left, vec![format!("{prefix}:progress:{id}")]);
    fx.cleanup().await;
}

#[tokio::test]
async fn connect_fails_fast_and_temporarily_without_a_server() {
    // Port 1 on loopback: nothing listens there.
    let config = RedisConfig::new("redis://127.0.0.1:1").connect_timeout(Duration::from_secs(2));
    let err = RedisBackend::connect(config)
        .await
        .expect_err("nothing listens on port 1");
    assert!(err.is_temporary(), "{err:?}");
}

/// A waiting reserver learns of a delayed job due before anything it is already timing, and
/// of a job made ready by another process while others are still queued behind a lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_reservers_learn_of_sooner_jobs() {
    let _serial = SERIAL.lock().await;
    let Some(fx) = Fixture::new().await else {
        return;
    };
    let q = fx.backend().await.queue();
    let later = ConversionId::new();
    q.enqueue(JobSpec {
        not_before: Utc::now() + chrono::Duration::hours(1),
        ..JobSpec::now(later, 0)
    })
    .await
    .expect("enqueue");
    let waiter = {
        let q = Arc::clone(&q);
        tokio::spawn(async move {
            let t = Instant::now();
            let l = q
                .reserve(1, Duration::from_secs(30), Duration::from_secs(20))
                .await;
            (l, t.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let soon = ConversionId::new();
    q.enqueue(JobSpec {
        not_before: Utc::now() + chrono::Duration::milliseconds(300),
        ..JobSpec::now(soon, 0)
    })
    .await
    .expect("enqueue");
    let (l, waited) = within(25, "sooner delayed job", waiter)
        .await
        .expect("join");
    let l = l.expect("reserve");
    assert_eq!(l.first().map(|l| l.id), Some(soon));
    assert!(waited < Duration::from_secs(3), "woken late: {waited:?}");
    // The same lease twice in one `ack_many`: the second is reported lost.
    let doubled = vec![l[0].clone(), l[0].clone()];
    assert_eq!(q.ack_many(&doubled).await.expect("ack_many"), vec![soon]);
    assert_eq!(q.stats().await.expect("stats").delayed, 1);
    fx.cleanup().await;
}

/// A second subscriber to a conversion already watched in this process gets only what is
/// published after it subscribed, though the first subscriber's backlog is still in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_subscriber_sees_nothing_from_before() {
    let _serial = SERIAL.lock().await;
    let Some(fx) = Fixture::new().await else {
        return;
    };
    let bus = fx.backend().await.bus();
    let id = ConversionId::new();
    let mut first = bus.subscribe(id).await.expect("subscribe");
    for round in 0..5u8 {
        for p in 0..20u8 {
            bus.publish(Event::Progress {
                id,
                attempt: u32::from(round),
                progress: Progress::new(p, None),
            })
            .await
            .expect("publish");
        }
        let mut late = bus.subscribe(id).await.expect("subscribe");
        let marker = Event::Status {
            id,
            status: Status::Running,
            attempt: 100 + u32::from(round),
            error: None,
            at: Utc::now(),
        };
        bus.publish(marker.clone()).await.expect("publish");
        assert_eq!(
            within(10, "late subscriber", late.next()).await,
            Some(marker),
            "round {round}: the late subscriber got an event from before it subscribed"
        );
    }
    let mut seen = 0;
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(300), first.next()).await {
        seen += 1;
    }
    assert!(
        seen >= 5,
        "the first subscriber lost its stream ({seen} events)"
    );
    fx.cleanup().await;
}

/// Jobs made ready before queues knew tenants (in the one `ready` set, their hashes without a
/// tenant) are delivered after an upgrade, as the default tenant's, beside new tenants' jobs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_queued_before_tenants_are_still_delivered() {
    let _serial = SERIAL.lock().await;
    let Some(fx) = Fixture::new().await else {
        return;
    };
    let config = fx.config();
    let prefix = config.key_prefix.clone();
    let q = fx.backend_with(config).await.queue();
    let old = ConversionId::new();
    let member = format!(
        "{:010}{:016}{:016}:{old}",
        2_147_483_647_i64 - 3,
        Utc::now().timestamp_micros() - 1_000_000,
        1
    );
    let client = redis::Client::open(url()).expect("url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    redis::cmd("HSET")
        .arg(format!("{{{prefix}}}:queue:job:{old}"))
        .arg(&[("prio", "3"), ("dlv", "0"), ("seq", "1"), ("state", "r")])
        .arg("rk")
        .arg(&member)
        .query_async::<()>(&mut conn)
        .await
        .expect("hset");
    redis::cmd("ZADD")
        .arg(format!("{{{prefix}}}:queue:ready"))
        .arg(0)
        .arg(&member)
        .query_async::<()>(&mut conn)
        .await
        .expect("zadd");
    assert_eq!(q.stats().await.expect("stats").ready, 1);
    let new = ConversionId::new();
    q.enqueue(JobSpec::now(new, 0).for_tenant("tenant-x"))
        .await
        .expect("enqueue");
    let leases = q
        .reserve(2, Duration::from_secs(30), Duration::ZERO)
        .await
        .expect("reserve");
    let mut got: Vec<_> = leases.iter().map(|l| (l.id, l.attempt)).collect();
    got.sort();
    let mut want = vec![(old, 1), (new, 1)];
    want.sort();
    assert_eq!(got, want);
    for lease in &leases {
        q.ack(lease).await.expect("ack");
    }
    assert_eq!(q.stats().await.expect("stats"), Default::default());
    fx.cleanup().await;
}

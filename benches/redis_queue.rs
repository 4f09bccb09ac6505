//! Redis job queue throughput: no-op jobs through `RedisJobQueue`.
//!
//! ```text
//! cargo bench --bench redis_queue --features redis
//! ```
//!
//! Server: `CONVERTO_BENCH_REDIS_URL`, else `CONVERTO_TEST_REDIS_URL`, else
//! `redis://127.0.0.1:6379`; the queue lives under a fresh `converto-bench:<id>` prefix and is
//! purged afterwards. Without a server the bench is skipped with a message. `thrpt` is jobs
//! per second:
//! - `enqueue1`: `enqueue` one job at a time (one script call and round trip each);
//! - `enqueue_c64`: `enqueue` with 64 calls in flight (pipelined on the multiplexed connection);
//! - `reserve1_ack`: one consumer, `reserve(1)` then `ack`, one job at a time;
//! - `reserve64_ack_each`: `reserve(64)`, then 64 concurrent single `ack`s;
//! - `reserve64_ack_many`: `reserve(64)`, then one `ack_many`;
//! - `cycle_c64`: the whole trip, timed end to end: enqueue (64 in flight), then
//!   `reserve(64)` + `ack_many` until the queue is empty.

use std::sync::Arc;
use std::time::{Duration, Instant};

use converto::adapters::redis::{RedisBackend, RedisConfig, RedisJobQueue};
use converto::core::ConversionId;
use converto::core::queue::{JobQueue, JobSpec};
use criterion::{Criterion, Throughput, criterion_main};
use futures::StreamExt;

const JOBS: usize = 2_000;
const LEASE: Duration = Duration::from_secs(60);

fn url() -> String {
    std::env::var("CONVERTO_BENCH_REDIS_URL")
        .or_else(|_| std::env::var("CONVERTO_TEST_REDIS_URL"))
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

async fn enqueue_all(q: &RedisJobQueue, jobs: usize, in_flight: usize) {
    futures::stream::iter(0..jobs)
        .map(|_| q.enqueue(JobSpec::now(ConversionId::new(), 0)))
        .buffer_unordered(in_flight)
        .for_each(|r| {
            assert!(r.expect("enqueue"));
            futures::future::ready(())
        })
        .await;
}

/// Drains the queue with `reserve(batch)`; acks each lease alone or all with `ack_many`.
async fn drain(q: &RedisJobQueue, batch: usize, ack_many: bool) -> usize {
    let mut done = 0;
    loop {
        let leases = q
            .reserve(batch, LEASE, Duration::ZERO)
            .await
            .expect("reserve");
        if leases.is_empty() {
            return done;
        }
        done += leases.len();
        if ack_many {
            assert!(q.ack_many(&leases).await.expect("ack_many").is_empty());
        } else if leases.len() == 1 {
            q.ack(&leases[0]).await.expect("ack");
        } else {
            for r in futures::future::join_all(leases.iter().map(|l| q.ack(l))).await {
                r.expect("ack");
            }
        }
    }
}

fn redis_queue(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let config =
        RedisConfig::new(url()).key_prefix(format!("converto-bench:{}", ConversionId::new()));
    let backend = match rt.block_on(RedisBackend::connect(config)) {
        Ok(b) => b,
        Err(e) => {
            eprintln!(
                "SKIPPED redis_queue: cannot reach Redis at {} ({e}); set CONVERTO_BENCH_REDIS_URL",
                url()
            );
            return;
        }
    };
    let q: Arc<RedisJobQueue> = backend.queue();

    let mut group = c.benchmark_group("redis_queue");
    group.sample_size(10);
    group.throughput(Throughput::Elements(JOBS as u64));

    for (name, in_flight) in [("enqueue1", 1), ("enqueue_c64", 64)] {
        group.bench_function(name, |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let q = Arc::clone(&q);
                async move {
                    let mut took = Duration::ZERO;
                    for _ in 0..iters {
                        let start = Instant::now();
                        enqueue_all(&q, JOBS, in_flight).await;
                        took += start.elapsed();
                        assert_eq!(drain(&q, 256, true).await, JOBS);
                    }
                    took
                }
            });
        });
    }

    for (name, batch, ack_many) in [
        ("reserve1_ack", 1, false),
        ("reserve64_ack_each", 64, false),
        ("reserve64_ack_many", 64, true),
    ] {
        group.bench_function(name, |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let q = Arc::clone(&q);
                async move {
                    let mut took = Duration::ZERO;
                    for _ in 0..iters {
                        enqueue_all(&q, JOBS, 64).await;
                        let start = Instant::now();
                        assert_eq!(drain(&q, batch, ack_many).await, JOBS);
                        took += start.elapsed();
                    }
                    took
                }
            });
        });
    }

    group.bench_function("cycle_c64", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let q = Arc::clone(&q);
            async move {
                let start = Instant::now();
                for _ in 0..iters {
                    enqueue_all(&q, JOBS, 64).await;
                    assert_eq!(drain(&q, 64, true).await, JOBS);
                }
                start.elapsed()
            }
        });
    });
    group.finish();

    let stats = rt.block_on(q.stats()).expect("stats");
    assert_eq!(stats, Default::default(), "the bench left jobs behind");
    rt.block_on(q.purge()).expect("purge");
}

#[allow(missing_docs)] // criterion_group! generates an undocumented function.
mod group {
    criterion::criterion_group!(benches, super::redis_queue);
    pub(crate) use benches as run;
}

criterion_main!(group::run);

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

#[path = "common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Ack, drain, fill};
use converto::adapters::redis::{RedisBackend, RedisConfig, RedisJobQueue};
use converto::core::ConversionId;
use converto::core::queue::JobQueue;
use criterion::{Criterion, Throughput, criterion_main};

const JOBS: usize = 2_000;

fn redis_queue(c: &mut Criterion) {
    let rt = common::runtime();
    let url = common::redis_url();
    let config =
        RedisConfig::new(&url).key_prefix(format!("converto-bench:{}", ConversionId::new()));
    let backend = match rt.block_on(RedisBackend::connect(config)) {
        Ok(b) => b,
        Err(e) => {
            eprintln!(
                "SKIPPED redis_queue: cannot reach Redis at {url} ({e}); set CONVERTO_BENCH_REDIS_URL"
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
                        fill(q.as_ref(), JOBS, in_flight, None).await;
                        took += start.elapsed();
                        assert_eq!(drain(q.as_ref(), 256, Ack::Many).await, JOBS);
                    }
                    took
                }
            });
        });
    }

    for (name, batch, ack) in [
        ("reserve1_ack", 1, Ack::Each),
        ("reserve64_ack_each", 64, Ack::Each),
        ("reserve64_ack_many", 64, Ack::Many),
    ] {
        group.bench_function(name, |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let q = Arc::clone(&q);
                async move {
                    let mut took = Duration::ZERO;
                    for _ in 0..iters {
                        fill(q.as_ref(), JOBS, 64, None).await;
                        let start = Instant::now();
                        assert_eq!(drain(q.as_ref(), batch, ack).await, JOBS);
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
                    fill(q.as_ref(), JOBS, 64, None).await;
                    assert_eq!(drain(q.as_ref(), 64, Ack::Many).await, JOBS);
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

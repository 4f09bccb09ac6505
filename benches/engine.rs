//! Engine throughput: no-op conversions through the whole engine (submit, reserve, start,
//! convert, succeed, ack, events) on the in-memory backends.
//!
//! `cargo bench --bench engine` prints jobs per second (criterion's "thrpt" in elements/s).
//! Input staging is not exercised: the no-op converter reads no input and returns a small
//! in-memory artifact, so this measures the scheduling overhead alone.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use converto::{
    CancellationToken, ConvertContext, ConvertError, ConvertRequest, Converter, ConverterRegistry,
    Engine, EngineConfig, Format, Output, Route, Status, Submission, SubmitInput,
};
use criterion::{Criterion, Throughput, criterion_main};

#[derive(Debug)]
struct Noop;

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
        _: &ConvertRequest,
        _: &ConvertContext,
    ) -> Result<Vec<Output>, ConvertError> {
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

/// Submits `jobs` conversions and waits until all have succeeded; returns the time taken.
async fn run_batch(jobs: usize, concurrency: usize) -> Duration {
    let registry = ConverterRegistry::new().with(Arc::new(Noop));
    let config = EngineConfig::default()
        .concurrency(concurrency)
        .reserve_batch(256)
        .sweeper(Duration::ZERO, Duration::ZERO);
    let engine = Engine::in_memory(registry, config);
    let stop = CancellationToken::new();
    let start = Instant::now();
    let workers = tokio::spawn({
        let (engine, stop) = (engine.clone(), stop.clone());
        async move { engine.run_workers(stop).await }
    });
    let input = Bytes::from_static(b"x");
    for _ in 0..jobs {
        engine
            .submit(
                Submission::new(fmt("out"), SubmitInput::bytes(input.clone(), None))
                    .source(fmt("txt")),
            )
            .await
            .expect("submit");
    }
    let store = Arc::clone(&engine.backends().store);
    loop {
        let counts = store.count_by_status().await.expect("count");
        if counts.get(&Status::Succeeded).copied().unwrap_or(0) as usize == jobs {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let took = start.elapsed();
    stop.cancel();
    workers.await.expect("join").expect("workers");
    took
}

fn engine_throughput(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("engine");
    group.sample_size(10);
    const JOBS: usize = 20_000;
    group.throughput(Throughput::Elements(JOBS as u64));
    for concurrency in [64, 512] {
        group.bench_function(format!("noop_memory_c{concurrency}"), |b| {
            b.to_async(&rt).iter_custom(|iters| async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += run_batch(JOBS, concurrency).await;
                }
                total
            });
        });
    }
    group.finish();
}

#[allow(missing_docs)] // criterion_group! generates an undocumented function.
mod group {
    criterion::criterion_group!(benches, super::engine_throughput);
    pub(crate) use benches as run;
}

criterion_main!(group::run);

//! What the queue benches share: their runtime, the servers' URLs, throwaway PostgreSQL
//! schemas, and the fill and drain loops through `dyn JobQueue`. A bench includes it with
//! `#[path = "common/mod.rs"] mod common;` and uses part of it.
#![allow(dead_code)]

use std::time::Duration;

use converto::ConversionId;
use converto::core::queue::{JobQueue, JobSpec};
use futures::StreamExt;

/// The lease of the jobs the loops reserve: longer than any loop runs.
pub(crate) const LEASE: Duration = Duration::from_secs(60);

/// A runtime with two worker threads, so every backend is measured on the same footing.
pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// A server's URL: `CONVERTO_BENCH_<NAME>_URL`, else the tests' `CONVERTO_TEST_<NAME>_URL`,
/// else `default`.
pub(crate) fn server_url(name: &str, default: &str) -> String {
    std::env::var(format!("CONVERTO_BENCH_{name}_URL"))
        .or_else(|_| std::env::var(format!("CONVERTO_TEST_{name}_URL")))
        .unwrap_or_else(|_| default.to_owned())
}

/// `CONVERTO_BENCH_POSTGRES_URL`, else `CONVERTO_TEST_POSTGRES_URL`, else the local server.
pub(crate) fn postgres_url() -> String {
    server_url("POSTGRES", "postgres://postgres@127.0.0.1:5432/test")
}

/// `CONVERTO_BENCH_REDIS_URL`, else `CONVERTO_TEST_REDIS_URL`, else the local server.
pub(crate) fn redis_url() -> String {
    server_url("REDIS", "redis://127.0.0.1:6379")
}

/// `CONVERTO_BENCH_RABBITMQ_URL`, else `CONVERTO_TEST_RABBITMQ_URL`, else the local server.
pub(crate) fn rabbitmq_url() -> String {
    server_url("RABBITMQ", "amqp://guest:guest@127.0.0.1:5672/%2f")
}

/// A fresh PostgreSQL schema name: each run's tables apart from every other's.
pub(crate) fn throwaway_schema() -> String {
    format!("converto_bench_{}", ConversionId::new().as_uuid().simple())
}

/// Drops a schema [`throwaway_schema`] named, with everything in it.
#[cfg(feature = "postgres")]
pub(crate) async fn drop_schema(admin: &converto::adapters::postgres::sqlx::PgPool, schema: &str) {
    use converto::adapters::postgres::sqlx;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
    )))
    .execute(admin)
    .await
    .expect("drop schema");
}

/// Enqueues `jobs` ready jobs (for `tenant`, else the default tenant), `in_flight` calls at
/// once; each must be added.
pub(crate) async fn fill(q: &dyn JobQueue, jobs: usize, in_flight: usize, tenant: Option<&str>) {
    futures::stream::iter(0..jobs)
        .map(|_| {
            let spec = JobSpec::now(ConversionId::new(), 0);
            q.enqueue(match tenant {
                Some(t) => spec.for_tenant(t),
                None => spec,
            })
        })
        .buffer_unordered(in_flight)
        .for_each(|added| {
            assert!(added.expect("enqueue"));
            futures::future::ready(())
        })
        .await;
}

/// How [`drain`] acknowledges a reserved batch.
#[derive(Clone, Copy)]
pub(crate) enum Ack {
    /// One `ack` per lease, all in flight at once.
    Each,
    /// One `ack_many` for the batch.
    Many,
}

/// Reserves `batch` jobs at a time and acknowledges them, until the queue is empty; returns
/// how many were done.
pub(crate) async fn drain(q: &dyn JobQueue, batch: usize, ack: Ack) -> usize {
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
        match ack {
            Ack::Many => assert!(q.ack_many(&leases).await.expect("ack_many").is_empty()),
            Ack::Each => {
                for r in futures::future::join_all(leases.iter().map(|l| q.ack(l))).await {
                    r.expect("ack");
                }
            }
        }
    }
}

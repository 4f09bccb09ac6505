//! The split deployment: two API processes and two worker processes of the real binary over
//! PostgreSQL (store) + Redis (queue and progress) + a shared blob directory. 1,000 conversions
//! are submitted over HTTP, one worker is killed with SIGKILL mid-run, and every conversion must
//! finish exactly once (one terminal status, one set of artifacts), readable from either API.
//!
//! Needs PostgreSQL and Redis: `CONVERTO_TEST_POSTGRES_URL` (default
//! postgres://postgres@127.0.0.1:5432/test) and `CONVERTO_TEST_REDIS_URL` (default
//! redis://127.0.0.1:6379). Unreachable servers fail the test when CI=true, else skip it.
#![cfg(all(
    feature = "postgres",
    feature = "redis",
    feature = "local",
    feature = "process"
))]

mod common;

use std::time::{Duration, Instant};

use common::{Proc, expect_succeeded_once, pg_and_redis_urls, reachable, skip_or_fail};
use futures::StreamExt;

const CONVERSIONS: usize = 1000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_deployment_survives_a_killed_worker() {
    let (pg, redis) = pg_and_redis_urls();
    if reachable(&pg, 5432).is_none() || reachable(&redis, 6379).is_none() {
        return skip_or_fail(
            "the split-deployment test",
            &format!(
                "PostgreSQL ({pg}) or Redis ({redis}) unreachable; set CONVERTO_TEST_POSTGRES_URL / CONVERTO_TEST_REDIS_URL"
            ),
        );
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let blobs = dir.path().join("blobs");
    let routes = common::slow_route(dir.path(), "0.05");
    let tag = uuid::Uuid::now_v7().simple().to_string();
    let env = vec![
        ("CONVERTO_POSTGRES_SCHEMA", format!("converto_split_{tag}")),
        ("CONVERTO_REDIS_KEY_PREFIX", format!("converto-split:{tag}")),
    ];
    let (blobs_arg, routes_arg) = (blobs.display().to_string(), routes.display().to_string());
    let data_arg = dir.path().join("data").display().to_string();
    let common = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "--data-dir",
            &data_arg,
            "--store",
            &pg,
            "--queue",
            &redis,
            "--progress",
            &redis,
            "--blobs",
            &blobs_arg,
            "--routes",
            &routes_arg,
            "--lease",
            "3",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let mut migrate = Proc::spawn(&common(&["migrate"]), &env, false);
    let migrated = migrate.child.wait().expect("migrate");
    assert!(migrated.success(), "converto migrate failed");

    let run = |extra: &[&str], serve: bool| Proc::spawn(&common(extra), &env, serve);
    let api_a = run(&["serve", "--no-workers", "--listen", "127.0.0.1:0"], true);
    let api_b = run(&["serve", "--no-workers", "--listen", "127.0.0.1:0"], true);
    let mut worker_1 = run(&["--concurrency", "4", "worker"], false);
    let _worker_2 = run(&["--concurrency", "4", "worker"], false);
    let (a, b) = (api_a.base().to_owned(), api_b.base().to_owned());

    let client = reqwest::Client::new();
    let ids: Vec<(usize, String)> = futures::stream::iter(0..CONVERSIONS)
        .map(|i| {
            let (client, a) = (client.clone(), a.clone());
            async move {
                let body = format!("job {i}").into_bytes();
                (
                    i,
                    common::submit(&client, &a, &format!("j{i}.txt"), body, "slowtxt").await,
                )
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;

    // Kill one worker once work is under way.
    common::wait_for_succeeded(&client, &b, 100, Duration::from_secs(120)).await;
    worker_1.kill9();

    // Every conversion finishes once, readable from either API node.
    let deadline = Instant::now() + Duration::from_secs(240);
    for (n, (i, id)) in ids.iter().enumerate() {
        let base = if n % 2 == 0 { &a } else { &b };
        expect_succeeded_once(&client, base, &blobs, id, &format!("job {i}"), deadline).await;
    }
    let live = common::listed(&client, &a, "queued,running").await;
    assert!(live.is_empty(), "records left live: {live:?}");
}

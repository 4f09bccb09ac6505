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
    let schema = format!("converto_split_{tag}");
    let env = vec![
        ("CONVERTO_POSTGRES_SCHEMA", schema.clone()),
        ("CONVERTO_REDIS_KEY_PREFIX", format!("converto-split:{tag}")),
    ];
    let (blobs_arg, routes_arg) = (blobs.display().to_string(), routes.display().to_string());
    let data_arg = dir.path().join("data").display().to_string();
    let fixed = [
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
    ];
    Proc::run_ok(&common::args(&fixed, &["migrate"]), &env);

    let run = |extra: &[&str], serve: bool| Proc::spawn(&common::args(&fixed, extra), &env, serve);
    let api_a = run(&["serve", "--no-workers", "--listen", "127.0.0.1:0"], true);
    let api_b = run(&["serve", "--no-workers", "--listen", "127.0.0.1:0"], true);
    let mut worker_1 = run(&["--concurrency", "4", "worker"], false);
    let _worker_2 = run(&["--concurrency", "4", "worker"], false);
    let (a, b) = (api_a.base().to_owned(), api_b.base().to_owned());

    let client = reqwest::Client::new();
    let ids = common::submit_jobs(&client, &a, CONVERSIONS, 16).await;

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
    drop((api_a, api_b, worker_1, _worker_2));
    common::drop_pg_schemas(&pg, &schema).await;
}

/// The split deployment with every setting but the store at its default (`serve --no-workers`
/// and `worker` over one PostgreSQL database): an `/events` stream opened on the API node
/// follows a conversion the worker process runs to its terminal status, and then ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_on_an_api_node_follow_a_worker_to_the_end_by_default() {
    let (pg, _) = pg_and_redis_urls();
    if reachable(&pg, 5432).is_none() {
        return skip_or_fail(
            "the split-deployment events test",
            &format!("PostgreSQL ({pg}) unreachable; set CONVERTO_TEST_POSTGRES_URL"),
        );
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let routes = common::slow_route(dir.path(), "1");
    let tag = uuid::Uuid::now_v7().simple().to_string();
    let schema = format!("converto_events_{tag}");
    let env = vec![("CONVERTO_POSTGRES_SCHEMA", schema.clone())];
    // The API node and the worker share the data directory (hence the blob directory), as two
    // processes on one host would; nothing names a queue or a progress bus.
    let (data_arg, routes_arg) = (
        dir.path().join("data").display().to_string(),
        routes.display().to_string(),
    );
    let fixed = [
        "--data-dir",
        &data_arg,
        "--store",
        &pg,
        "--routes",
        &routes_arg,
    ];
    let args = |extra: &[&str]| common::args(&fixed, extra);
    Proc::run_ok(&args(&["migrate"]), &env);
    let api = Proc::spawn(
        &args(&["serve", "--no-workers", "--listen", "127.0.0.1:0"]),
        &env,
        true,
    );
    let client = reqwest::Client::new();
    let id = common::submit(&client, api.base(), "a.txt", b"hello".to_vec(), "slowtxt").await;
    // Open the stream before any worker exists: it must show `queued`, then everything the
    // worker process does, and end on its own after the terminal status.
    let resp = client
        .get(api.url(&format!("/v1/conversions/{id}/events")))
        .send()
        .await
        .expect("events");
    assert_eq!(resp.status(), 200);
    let _worker = Proc::spawn(&args(&["worker"]), &env, false);
    let mut body = resp.bytes_stream();
    let mut text = String::new();
    let read_all = async {
        while let Some(chunk) = body.next().await {
            text.push_str(&String::from_utf8_lossy(&chunk.expect("chunk")));
        }
    };
    // A safety net only: the stream ends when the conversion does (about a second).
    tokio::time::timeout(Duration::from_secs(120), read_all)
        .await
        .expect("the event stream never ended");
    assert!(text.contains("\"status\":\"running\""), "{text}");
    let succeeded = text.find("\"status\":\"succeeded\"").expect(&text);
    let running = text.find("\"status\":\"running\"").expect(&text);
    assert!(running < succeeded, "{text}");
    drop((api, _worker));
    common::drop_pg_schemas(&pg, &schema).await;
}

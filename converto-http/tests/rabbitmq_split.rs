//! The split deployment on RabbitMQ: `--queue amqp://...` selects the RabbitMQ queue in
//! `converto serve --no-workers` (which then holds no jobs) and in two `converto worker`
//! processes, over PostgreSQL (store and progress) and a shared blob directory. Conversions are
//! submitted over HTTP, one worker is killed with SIGKILL mid-run (the broker gives the jobs it
//! held to the other), and every conversion must finish exactly once.
//!
//! Needs PostgreSQL and RabbitMQ: `CONVERTO_TEST_POSTGRES_URL` (default
//! postgres://postgres@127.0.0.1:5432/test) and `CONVERTO_TEST_RABBITMQ_URL` (default
//! amqp://guest:guest@127.0.0.1:5672/%2f). Unreachable servers fail the test when CI=true, else
//! skip it.
#![cfg(all(
    feature = "postgres",
    feature = "rabbitmq",
    feature = "local",
    feature = "process"
))]

mod common;

use std::time::{Duration, Instant};

use common::{Proc, expect_succeeded_once, pg_and_redis_urls, reachable, skip_or_fail};
use converto_adapters::rabbitmq::{RabbitConfig, RabbitJobQueue};

const CONVERSIONS: usize = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_deployment_on_rabbitmq_survives_a_killed_worker() {
    let (pg, _) = pg_and_redis_urls();
    let amqp = std::env::var("CONVERTO_TEST_RABBITMQ_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    if reachable(&pg, 5432).is_none() || reachable(&amqp, 5672).is_none() {
        return skip_or_fail(
            "the RabbitMQ split-deployment test",
            &format!(
                "PostgreSQL ({pg}) or RabbitMQ ({amqp}) unreachable; set CONVERTO_TEST_POSTGRES_URL / CONVERTO_TEST_RABBITMQ_URL"
            ),
        );
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let blobs = dir.path().join("blobs");
    let routes = common::slow_route(dir.path(), "0.05");
    let tag = uuid::Uuid::now_v7().simple().to_string();
    let prefix = format!("converto-split.{tag}");
    let schema = format!("converto_amqp_{tag}");
    let env = vec![
        ("CONVERTO_POSTGRES_SCHEMA", schema.clone()),
        ("CONVERTO_RABBITMQ_QUEUE_PREFIX", prefix.clone()),
        // A bound, so both workers get a share of the backlog.
        ("CONVERTO_RABBITMQ_PREFETCH", "16".to_owned()),
    ];
    let (blobs_arg, routes_arg) = (blobs.display().to_string(), routes.display().to_string());
    let data_arg = dir.path().join("data").display().to_string();
    let fixed = [
        "--data-dir",
        &data_arg,
        "--store",
        &pg,
        "--queue",
        &amqp,
        "--blobs",
        &blobs_arg,
        "--routes",
        &routes_arg,
        "--lease",
        "3",
    ];
    Proc::run_ok(&common::args(&fixed, &["migrate"]), &env);

    let run = |extra: &[&str], serve: bool| Proc::spawn(&common::args(&fixed, extra), &env, serve);
    let api = run(&["serve", "--no-workers", "--listen", "127.0.0.1:0"], true);
    let mut worker_1 = run(&["--concurrency", "4", "worker"], false);
    let _worker_2 = run(&["--concurrency", "4", "worker"], false);
    let base = api.base().to_owned();

    let client = reqwest::Client::new();
    let ids = common::submit_jobs(&client, &base, CONVERSIONS, 16).await;

    common::wait_for_succeeded(&client, &base, 20, Duration::from_secs(120)).await;
    worker_1.kill9();

    let deadline = Instant::now() + Duration::from_secs(240);
    for (i, id) in &ids {
        expect_succeeded_once(&client, &base, &blobs, id, &format!("job {i}"), deadline).await;
    }
    let live = common::listed(&client, &base, "queued,running").await;
    assert!(live.is_empty(), "records left live: {live:?}");
    drop(api);
    drop(_worker_2);
    RabbitJobQueue::delete_layout(&RabbitConfig::new(amqp).queue_prefix(prefix))
        .await
        .expect("delete the test's queues");
    common::drop_pg_schemas(&pg, &schema).await;
}

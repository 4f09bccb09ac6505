//! Crash isolation in the real binary: conversions that run out of memory, abort or panic fail
//! with `converter_crashed`, while the process that ran them keeps answering and converting.
//! Both `converto serve` (in-process workers) and `converto worker` (behind an API-only
//! `serve`) are checked. The misbehaving routes come from the `crash-test-converters` feature,
//! switched on by `CONVERTO_TEST_CONVERTERS=1`.
#![cfg(all(
    feature = "crash-test-converters",
    feature = "sqlite",
    feature = "local",
    feature = "mesh"
))]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::Proc;
use serde_json::Value;

/// A safety net only: every wait below ends on a state, not on time.
const DEADLINE: Duration = Duration::from_secs(180);

fn env() -> Vec<(&'static str, String)> {
    vec![("CONVERTO_TEST_CONVERTERS", "1".to_owned())]
}

/// Submits `bytes` as `source` for `target`; asserts 202 and returns the id.
async fn submit(
    client: &reqwest::Client,
    base: &str,
    bytes: Vec<u8>,
    source: &str,
    target: &str,
) -> String {
    let form = reqwest::multipart::Form::new()
        .text("source_format", source.to_owned())
        .text("target_format", target.to_owned())
        .part(
            "file",
            reqwest::multipart::Part::bytes(bytes).file_name(format!("input.{source}")),
        );
    let resp = client
        .post(format!("{base}/v1/conversions"))
        .multipart(form)
        .send()
        .await
        .expect("submit");
    let status = resp.status();
    let body = resp.text().await.expect("body");
    assert_eq!(status, 202, "{source} -> {target}: {body}");
    serde_json::from_str::<Value>(&body).expect("json")["id"]
        .as_str()
        .expect("id")
        .to_owned()
}

/// Polls the record until its status is terminal.
async fn finished(client: &reqwest::Client, base: &str, id: &str) -> Value {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (code, rec) = common::record(client, base, id).await;
        assert_eq!(code, 200, "{id}: {rec}");
        match rec["status"].as_str() {
            Some("queued" | "running") => {
                assert!(Instant::now() < deadline, "{id} did not finish: {rec}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            _ => return rec,
        }
    }
}

fn assert_crashed(rec: &Value, reason: &[&str]) {
    assert_eq!(rec["status"], "failed", "{rec}");
    assert_eq!(rec["error"]["code"], "converter_crashed", "{rec}");
    let message = rec["error"]["message"].as_str().expect("message");
    assert!(
        reason.iter().any(|r| message.contains(r)),
        "expected one of {reason:?} in {message:?}"
    );
}

/// Asks `/healthz` again and again until stopped; counts the answers, fails on a bad one.
struct HealthWatch {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl HealthWatch {
    fn start(client: reqwest::Client, base: String) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let task = {
            let (stop, ok) = (Arc::clone(&stop), Arc::clone(&ok));
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let resp = client
                        .get(format!("{base}/healthz"))
                        .timeout(Duration::from_secs(30))
                        .send()
                        .await
                        .expect("the server answers /healthz");
                    assert_eq!(resp.status(), 200, "/healthz");
                    ok.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        };
        Self { stop, ok, task }
    }

    /// Stops; returns how many answers were 200 (the task panics on any other).
    async fn finish(self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("/healthz answered 200 throughout");
        self.ok.load(Ordering::Relaxed)
    }
}

fn cube() -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/data/cube.stl"))
        .expect("examples/data/cube.stl")
}

/// Submits the three crashing jobs and a good one alongside to the API at `base`; checks every
/// outcome and that `runner` (the process running the jobs) is alive afterwards and converts
/// again.
async fn crash_and_survive(client: &reqwest::Client, base: &str, runner: &mut Proc) {
    let base = base.to_owned();
    let health = HealthWatch::start(client.clone(), base.clone());
    let alloc = submit(client, &base, b"x".to_vec(), "x-alloc", "x-out").await;
    let abort = submit(client, &base, b"x".to_vec(), "x-abort", "x-out").await;
    let good = submit(client, &base, cube(), "stl", "obj").await;
    let panic = submit(client, &base, b"x".to_vec(), "x-panic", "x-out").await;

    let rec = finished(client, &base, &alloc).await;
    // Out of memory under RLIMIT_DATA aborts the allocation; a kernel (cgroup) kill is SIGKILL.
    assert_crashed(&rec, &["out of memory", "signal 9"]);
    assert!(
        rec["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("256 MiB")),
        "the reason names the limit: {rec}"
    );
    assert_crashed(&finished(client, &base, &abort).await, &["aborted"]);
    assert_crashed(
        &finished(client, &base, &panic).await,
        &["x-panic: a converter bug"],
    );
    let rec = finished(client, &base, &good).await;
    assert_eq!(rec["status"], "succeeded", "{rec}");
    assert_eq!(rec["attempts"], 1, "{rec}");

    assert!(
        runner.child.try_wait().expect("try_wait").is_none(),
        "the process that ran the crashing conversions is alive"
    );
    // It still converts.
    let again = submit(client, &base, cube(), "stl", "obj").await;
    let rec = finished(client, &base, &again).await;
    assert_eq!(rec["status"], "succeeded", "{rec}");
    assert!(health.finish().await > 0, "/healthz was asked");
    let resp = client
        .get(format!("{base}/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(resp.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_survives_conversions_that_crash() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Proc::serve(
        &dir.path().join("data"),
        &["--job-memory-limit", "256MiB", "--concurrency", "2"],
        &env(),
    );
    let base = server.base().to_owned();
    crash_and_survive(&reqwest::Client::new(), &base, &mut server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_survives_conversions_that_crash() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let api = Proc::serve(&data, &["--no-workers"], &env());
    let mut worker = Proc::spawn(
        &[
            "--data-dir",
            &data.display().to_string(),
            "--job-memory-limit",
            "256MiB",
            "--concurrency",
            "2",
            "worker",
        ],
        &env(),
        false,
    );
    crash_and_survive(&reqwest::Client::new(), api.base(), &mut worker).await;
}

/// The child processes of `pid`, zombies included.
fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|c| {
            c.split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The `converto __child` processes of `pid`.
fn converter_children(pid: u32) -> Vec<u32> {
    children(pid)
        .into_iter()
        .filter(|child| {
            std::fs::read(format!("/proc/{child}/cmdline"))
                .is_ok_and(|c| c.split(|b| *b == 0).any(|arg| arg == b"__child"))
        })
        .collect()
}

/// Polls until `done` holds; panics after the safety-net deadline.
async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_kills_the_converter_process_and_cpu_time_is_limited() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Proc::serve(&dir.path().join("data"), &["--job-cpu-limit", "1"], &env());
    let client = reqwest::Client::new();
    let base = server.base().to_owned();
    let pid = server.child.id();
    let id = submit(&client, &base, b"x".to_vec(), "x-hang", "x-out").await;
    // The conversion runs in a converter process of the server.
    wait_until("the converter process", || {
        converter_children(pid).len() == 1
    })
    .await;
    let resp = client
        .post(format!("{base}/v1/conversions/{id}/cancel"))
        .send()
        .await
        .expect("cancel");
    assert!(resp.status().is_success(), "{}", resp.status());
    let rec = finished(&client, &base, &id).await;
    assert_eq!(rec["status"], "cancelled", "{rec}");
    // Killed and reaped: no child left, not even a zombie.
    wait_until("the converter process to be gone", || {
        children(pid).is_empty()
    })
    .await;
    let good = submit(&client, &base, cube(), "stl", "obj").await;
    assert_eq!(finished(&client, &base, &good).await["status"], "succeeded");

    // A converter that spins is stopped by its CPU-time limit (SIGXCPU), not the job timeout.
    let spin = submit(&client, &base, b"x".to_vec(), "x-spin", "x-out").await;
    assert_crashed(
        &finished(&client, &base, &spin).await,
        &["CPU time limit of 1s exceeded"],
    );
}

/// A server killed with SIGKILL cannot kill its converter processes; they die with it
/// (`PR_SET_PDEATHSIG`) instead of converting on for nobody.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn converter_processes_die_with_a_killed_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Proc::serve(&dir.path().join("data"), &[], &env());
    let client = reqwest::Client::new();
    let base = server.base().to_owned();
    let pid = server.child.id();
    submit(&client, &base, b"x".to_vec(), "x-hang", "x-out").await;
    let mut converter = Vec::new();
    wait_until("the converter process", || {
        converter = converter_children(pid);
        converter.len() == 1
    })
    .await;
    let child = converter[0];
    server.kill9();
    // Gone, or a zombie for init to reap: either way no longer running.
    wait_until("the orphaned converter process to die", || {
        std::fs::read_to_string(format!("/proc/{child}/stat"))
            .ok()
            .is_none_or(|stat| {
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().next())
                    .is_some_and(|state| state == "Z" || state == "X")
            })
    })
    .await;
}

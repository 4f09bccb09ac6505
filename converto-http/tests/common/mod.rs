//! What the integration tests share: for the tests that run the real `converto` binary,
//! starting it, submitting, polling records, and checking what the blob directory holds; for
//! the tests that call the router, reading its answers. Each test binary uses part of it.
#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A running `converto` process, killed (SIGKILL) when dropped.
pub struct Proc {
    /// The process.
    pub child: Child,
    /// `http://127.0.0.1:PORT` for `serve`, `None` for other commands.
    pub base: Option<String>,
}

impl Proc {
    /// Starts `converto ARGS` with `env` added. With `serve`, waits for the listening line.
    pub fn spawn<S: AsRef<std::ffi::OsStr>>(
        args: &[S],
        env: &[(&str, String)],
        serve: bool,
    ) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_converto"));
        cmd.args(args)
            .env("CONVERTO_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start converto");
        let base = serve.then(|| {
            let mut line = String::new();
            BufReader::new(child.stdout.take().expect("stdout"))
                .read_line(&mut line)
                .expect("listening line");
            line.trim()
                .strip_prefix("converto listening on ")
                .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
                .to_owned()
        });
        Self { child, base }
    }

    /// Starts `converto --data-dir DATA serve --listen 127.0.0.1:0 EXTRA...` with `env` added
    /// (global flags may be among `extra`), and waits for the listening line.
    pub fn serve(data_dir: &Path, extra: &[&str], env: &[(&str, String)]) -> Self {
        let mut args = vec![
            "--data-dir".to_owned(),
            data_dir.display().to_string(),
            "serve".into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        Self::spawn(&args, env, true)
    }

    /// Runs `converto ARGS` with `env` added to its end, and asserts it succeeded.
    pub fn run_ok<S: AsRef<std::ffi::OsStr>>(args: &[S], env: &[(&str, String)]) {
        let mut proc = Self::spawn(args, env, false);
        let status = proc.child.wait().expect("wait for converto");
        let shown: Vec<_> = args.iter().map(|a| a.as_ref().to_string_lossy()).collect();
        assert!(status.success(), "converto {shown:?} failed: {status}");
    }

    /// The base URL of a `serve` process.
    pub fn base(&self) -> &str {
        self.base.as_deref().expect("a serve process")
    }

    /// `base` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base())
    }

    /// SIGKILL, and reap.
    pub fn kill9(&mut self) {
        self.child.kill().expect("kill -9");
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `converto --data-dir DATA ARGS` to its end, the store and the authentication those of
/// the data directory whatever the environment says.
pub fn converto(data_dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_converto"))
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .env("CONVERTO_LOG", "warn")
        .env_remove("CONVERTO_STORE")
        .env_remove("CONVERTO_AUTH")
        .output()
        .expect("run converto")
}

/// A binary STL of one triangle (134 bytes).
pub fn triangle_stl() -> Vec<u8> {
    let mut stl = vec![0u8; 80];
    stl.extend_from_slice(&1u32.to_le_bytes());
    for v in [
        [0.0f32, 0.0, 1.0],
        [0.0, 0.0, 0.0],
        [1.0, 0.0, 0.0],
        [0.0, 1.0, 0.0],
    ] {
        for c in v {
            stl.extend_from_slice(&c.to_le_bytes());
        }
    }
    stl.extend_from_slice(&[0, 0]);
    stl
}

/// Whether this is a CI run (`CI=true`), where a missing server fails instead of skipping.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Fails under CI, else prints why the test is skipped.
pub fn skip_or_fail(test: &str, why: &str) {
    if in_ci() {
        panic!("{test}: {why}");
    }
    eprintln!("skipping {test}: {why}");
}

/// The PostgreSQL and Redis URLs the tests use (`CONVERTO_TEST_POSTGRES_URL`,
/// `CONVERTO_TEST_REDIS_URL`).
pub fn pg_and_redis_urls() -> (String, String) {
    (
        std::env::var("CONVERTO_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into()),
        std::env::var("CONVERTO_TEST_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".into()),
    )
}

/// Drops the PostgreSQL schema that a test's `converto` processes used (their
/// `CONVERTO_POSTGRES_SCHEMA`) and the webhook delivery queue's schema the server creates beside
/// it, so that test runs leave nothing in the database. Call it once the processes are gone. A
/// failure is printed, not fatal: the test itself has passed.
#[cfg(feature = "postgres")]
pub async fn drop_pg_schemas(pg_url: &str, schema: &str) {
    use sqlx::Connection;
    let webhooks = converto_http::runtime::webhook_schema(schema);
    // The killed processes' sessions may still hold locks for a moment.
    let sql = format!(
        "SET lock_timeout = '30s'; DROP SCHEMA IF EXISTS \"{schema}\", \"{webhooks}\" CASCADE"
    );
    let dropped = async {
        let mut conn = sqlx::PgConnection::connect(pg_url).await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut conn)
            .await
    };
    if let Err(e) = dropped.await {
        eprintln!("the schemas {schema} and {webhooks} were not dropped: {e}");
    }
}

/// The socket address of a URL's `host:port`, if it resolves and accepts a connection.
pub fn reachable(url: &str, default_port: u16) -> Option<std::net::SocketAddr> {
    use std::net::ToSocketAddrs;
    let rest = url.split("://").nth(1)?;
    let host_port = rest.rsplit('@').next()?.split('/').next()?;
    let with_port = if host_port.contains(':') {
        host_port.to_owned()
    } else {
        format!("{host_port}:{default_port}")
    };
    let addr = with_port.to_socket_addrs().ok()?.next()?;
    std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .ok()
        .map(|_| addr)
}

/// Command-line arguments: `fixed`, then `extra`.
pub fn args(fixed: &[&str], extra: &[&str]) -> Vec<String> {
    fixed.iter().chain(extra).map(|s| s.to_string()).collect()
}

/// Writes a route file for `txt -> slowtxt`: `/bin/sh` sleeping `sleep` seconds, then copying.
pub fn slow_route(dir: &Path, sleep: &str) -> PathBuf {
    let routes = dir.join("slow.toml");
    std::fs::write(
        &routes,
        format!(
            r#"name = "slow"
[[route]]
source = "txt"
target = "slowtxt"
program = "/bin/sh"
args = ["-c", "sleep {sleep}; cp \"$0\" \"$1\"", "{{input}}", "{{output}}"]
output = "output.slowtxt"
pass_env = ["PATH"]
"#
        ),
    )
    .expect("routes");
    routes
}

/// Submits `bytes` as `name` for `target` (multipart); asserts 202 and returns the id.
pub async fn submit(
    client: &reqwest::Client,
    base: &str,
    name: &str,
    bytes: Vec<u8>,
    target: &str,
) -> String {
    let form = reqwest::multipart::Form::new()
        .text("target_format", target.to_owned())
        .part(
            "file",
            reqwest::multipart::Part::bytes(bytes).file_name(name.to_owned()),
        );
    let resp = client
        .post(format!("{base}/v1/conversions"))
        .multipart(form)
        .send()
        .await
        .expect("submit");
    assert_eq!(resp.status(), 202, "{:?}", resp.text().await);
    resp.json::<Value>().await.expect("json")["id"]
        .as_str()
        .expect("id")
        .to_owned()
}

/// Submits `n` conversions to `base`, `at_once` at a time: `job {i}` as `j{i}.txt` for
/// `slowtxt`. Returns each `i` with its conversion's id.
pub async fn submit_jobs(
    client: &reqwest::Client,
    base: &str,
    n: usize,
    at_once: usize,
) -> Vec<(usize, String)> {
    use futures::StreamExt;
    futures::stream::iter(0..n)
        .map(|i| async move {
            let body = format!("job {i}").into_bytes();
            let id = submit(client, base, &format!("j{i}.txt"), body, "slowtxt").await;
            (i, id)
        })
        .buffer_unordered(at_once)
        .collect()
        .await
}

/// `GET /v1/conversions/{id}`: the HTTP status and the body.
pub async fn record(client: &reqwest::Client, base: &str, id: &str) -> (u16, Value) {
    let resp = client
        .get(format!("{base}/v1/conversions/{id}"))
        .send()
        .await
        .expect("get");
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("json"))
}

/// The items `GET /v1/conversions?status=STATUSES` lists (up to 1,000).
pub async fn listed(client: &reqwest::Client, base: &str, statuses: &str) -> Vec<Value> {
    let page: Value = client
        .get(format!(
            "{base}/v1/conversions?status={statuses}&limit=1000"
        ))
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    page["items"].as_array().expect("items").clone()
}

/// Waits until at least `n` conversions succeeded.
pub async fn wait_for_succeeded(client: &reqwest::Client, base: &str, n: usize, within: Duration) {
    let deadline = Instant::now() + within;
    while listed(client, base, "succeeded").await.len() < n {
        assert!(
            Instant::now() < deadline,
            "fewer than {n} conversions succeeded in time"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls until the conversion succeeds, then checks its one artifact holds `expected` and that
/// exactly one attempt's artifacts are stored under `blobs`. A 503 (a backend briefly away) is
/// retried, as a client would; any other end fails.
pub async fn expect_succeeded_once(
    client: &reqwest::Client,
    base: &str,
    blobs: &Path,
    id: &str,
    expected: &str,
    deadline: Instant,
) {
    loop {
        let (code, rec) = record(client, base, id).await;
        if code == 503 {
            assert!(Instant::now() < deadline, "{id}: still 503: {rec}");
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        assert_eq!(code, 200, "{id}: {rec}");
        match rec["status"].as_str() {
            Some("succeeded") => {
                let arts = rec["artifacts"].as_array().expect("artifacts");
                assert_eq!(arts.len(), 1, "{rec}");
                let url = arts[0]["url"].as_str().expect("url");
                let dl = client
                    .get(format!("{base}{url}"))
                    .send()
                    .await
                    .expect("download");
                if dl.status() == 503 {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                assert_eq!(dl.status(), 200, "{id}");
                assert_eq!(dl.text().await.expect("text"), expected);
                assert_eq!(
                    artifact_attempt_dirs(blobs, id),
                    1,
                    "{id}: more than one set of artifacts stored"
                );
                return;
            }
            Some("queued" | "running") => {
                assert!(Instant::now() < deadline, "{id} did not finish: {rec}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            _ => panic!("{id} ended badly: {rec}"),
        }
    }
}

/// How many attempts' artifact directories of a conversion hold files (local blob store).
pub fn artifact_attempt_dirs(blobs: &Path, id: &str) -> usize {
    std::fs::read_dir(
        blobs
            .join("tenants")
            .join("default")
            .join("conversions")
            .join(id)
            .join("artifacts"),
    )
    .map(|d| {
        d.filter_map(Result::ok)
            .filter(|e| std::fs::read_dir(e.path()).is_ok_and(|mut f| f.next().is_some()))
            .count()
    })
    .unwrap_or(0)
}

/// The JSON body of a router's answer.
pub async fn json_of(resp: axum::http::Response<axum::body::Body>) -> Value {
    use http_body_util::BodyExt;
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)))
}

/// Asserts a router's answer is a problem+json of `status` with a `urn:converto:problem:` type
/// and a detail, and returns it.
pub async fn problem(
    resp: axum::http::Response<axum::body::Body>,
    status: axum::http::StatusCode,
) -> Value {
    use axum::http::header;
    assert_eq!(resp.status(), status);
    assert_eq!(
        resp.headers()[header::CONTENT_TYPE],
        "application/problem+json"
    );
    let p = json_of(resp).await;
    assert_eq!(p["status"], status.as_u16());
    assert!(
        p["type"]
            .as_str()
            .is_some_and(|t| t.starts_with("urn:converto:problem:")),
        "{p}"
    );
    assert!(
        p["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "problem without detail: {p}"
    );
    p
}

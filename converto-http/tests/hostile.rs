//! Hostile clients against the real `converto` binary (issue 9: nothing a client sends can take
//! the service down). Each test starts its own server; none synchronises by sleeping: they wait
//! for answers, end-of-file or states, with generous safety limits.
#![cfg(all(feature = "sqlite", feature = "local", feature = "process"))]

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Proc;
use serde_json::Value;

/// The longest any single wait may take before the test fails (never reached when it passes).
const SAFETY: Duration = Duration::from_secs(90);

fn addr(server: &Proc) -> SocketAddr {
    server
        .base()
        .trim_start_matches("http://")
        .parse()
        .expect("address")
}

/// A response read off a raw socket.
#[derive(Debug)]
struct RawResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one response (head, and a `Content-Length` body) from `s`.
fn read_response(s: &mut TcpStream) -> RawResponse {
    s.set_read_timeout(Some(SAFETY)).expect("timeout");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut chunk).expect("reading the response");
        assert!(n > 0, "connection closed before a response: {buf:?}");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {head}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut resp = RawResponse {
        status,
        headers,
        body: buf[head_end..].to_vec(),
    };
    let len: usize = resp
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while resp.body.len() < len {
        let n = s.read(&mut chunk).expect("reading the body");
        assert!(n > 0, "connection closed inside the body");
        resp.body.extend_from_slice(&chunk[..n]);
    }
    resp
}

/// Blocks until the server closes `s` (end of file or reset); fails if it is still open after
/// [`SAFETY`].
fn wait_closed_by_server(s: &mut TcpStream) {
    s.set_read_timeout(Some(SAFETY)).expect("timeout");
    let mut chunk = [0u8; 1024];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => return,
            Ok(_) => continue, // an error answer before closing is fine
            Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe) => {
                return;
            }
            Err(e) => panic!("the server left a stalled connection open: {e}"),
        }
    }
}

fn assert_problem(resp: &RawResponse) {
    assert_eq!(
        resp.header("content-type"),
        Some("application/problem+json"),
        "{resp:?}"
    );
    let body: Value = serde_json::from_slice(&resp.body).expect("problem json");
    assert_eq!(body["status"], resp.status, "{body}");
}

/// Submits a text file for the slow route (`txt -> slowtxt`); returns the id.
async fn submit_txt(client: &reqwest::Client, server: &Proc, text: &str) -> String {
    common::submit(
        client,
        server.base(),
        "note.txt",
        text.as_bytes().to_vec(),
        "slowtxt",
    )
    .await
}

/// Sends `head`, then a chunked body of `prefix` and `total` filler bytes from another thread
/// until the server stops taking them; returns the answer and how many filler bytes went out.
fn send_endless_chunked(
    server: &Proc,
    head: &str,
    prefix: &[u8],
    total: u64,
) -> (RawResponse, u64) {
    let mut s = TcpStream::connect(addr(server)).expect("connect");
    s.write_all(head.as_bytes()).expect("head");
    let mut writer = s.try_clone().expect("clone");
    let prefix = prefix.to_vec();
    let sender = std::thread::spawn(move || {
        let mut first = format!("{:x}\r\n", prefix.len()).into_bytes();
        first.extend_from_slice(&prefix);
        first.extend_from_slice(b"\r\n");
        if writer.write_all(&first).is_err() {
            return 0;
        }
        let data = vec![b'a'; 64 * 1024];
        let mut chunk = format!("{:x}\r\n", data.len()).into_bytes();
        chunk.extend_from_slice(&data);
        chunk.extend_from_slice(b"\r\n");
        let mut sent = 0u64;
        while sent < total {
            if writer.write_all(&chunk).is_err() {
                break;
            }
            sent += data.len() as u64;
        }
        sent
    });
    let resp = read_response(&mut s);
    wait_closed_by_server(&mut s);
    (resp, sender.join().expect("sender"))
}

#[test]
fn a_huge_chunked_json_body_is_refused_while_streaming() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Proc::serve(&dir.path().join("data"), &[], &[]);
    const TOTAL: u64 = 512 * 1024 * 1024;
    let (resp, sent) = send_endless_chunked(
        &server,
        "POST /v1/conversions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\n\r\n",
        b"[",
        TOTAL,
    );
    assert_eq!(resp.status, 413, "{resp:?}");
    assert_problem(&resp);
    assert!(
        sent < TOTAL / 4,
        "the server took {sent} bytes of a body it had refused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipart_text_fields_and_part_headers_are_bounded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Proc::serve(
        &dir.path().join("data"),
        &["--max-field-bytes", "1024"],
        &[],
    );

    // A text field over its limit.
    let form = reqwest::multipart::Form::new()
        .text("target_format", "x".repeat(100 * 1024))
        .part(
            "file",
            reqwest::multipart::Part::bytes(b"hello".to_vec()).file_name("a.txt"),
        );
    let resp = reqwest::Client::new()
        .post(server.url("/v1/conversions"))
        .multipart(form)
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), 413);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");

    // Part headers that never end, in a chunked body (no length to refuse up front).
    const TOTAL: u64 = 256 * 1024 * 1024;
    let (resp, sent) = tokio::task::block_in_place(|| {
        send_endless_chunked(
            &server,
            "POST /v1/conversions HTTP/1.1\r\nHost: t\r\n\
             Content-Type: multipart/form-data; boundary=XyZ\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.txt\"\r\nX-Junk: ",
            TOTAL,
        )
    });
    assert_eq!(resp.status, 413, "{resp:?}");
    assert!(
        sent < TOTAL / 4,
        "the server took {sent} bytes of part headers"
    );
}

#[test]
fn connections_stalled_in_the_request_line_or_silent_are_closed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Proc::serve(
        &dir.path().join("data"),
        &["--header-timeout", "1s", "--idle-timeout", "2s"],
        &[],
    );
    let mut stalled: Vec<TcpStream> = (0..20)
        .map(|i| {
            let mut s = TcpStream::connect(addr(&server)).expect("connect");
            if i % 2 == 0 {
                s.write_all(b"GET /v1/conversi").expect("half a line");
            }
            s
        })
        .collect();
    for s in &mut stalled {
        wait_closed_by_server(s);
    }
    // The server still answers.
    let mut s = TcpStream::connect(addr(&server)).expect("connect");
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .expect("request");
    assert_eq!(read_response(&mut s).status, 200);
}

#[test]
fn connections_beyond_the_cap_get_503_with_retry_after() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Proc::serve(
        &dir.path().join("data"),
        &[
            "--max-connections",
            "2",
            "--header-timeout",
            "300s",
            "--idle-timeout",
            "300s",
        ],
        &[],
    );
    // The listener accepts in order: these two hold both places.
    let first = TcpStream::connect(addr(&server)).expect("connect");
    let _second = TcpStream::connect(addr(&server)).expect("connect");
    let mut third = TcpStream::connect(addr(&server)).expect("connect");
    third
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .expect("request");
    let resp = read_response(&mut third);
    assert_eq!(resp.status, 503, "{resp:?}");
    assert!(resp.header("retry-after").is_some(), "{resp:?}");
    assert!(resp.header("x-request-id").is_some(), "{resp:?}");
    assert_problem(&resp);

    // A place freed is a place taken.
    drop(first);
    let deadline = Instant::now() + SAFETY;
    loop {
        let mut s = TcpStream::connect(addr(&server)).expect("connect");
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .expect("request");
        match read_response(&mut s).status {
            200 => break,
            503 => assert!(Instant::now() < deadline, "the freed place never came back"),
            other => panic!("unexpected {other}"),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_streams_beyond_the_cap_get_503_and_streams_send_keep_alives() {
    let dir = tempfile::tempdir().expect("tempdir");
    let routes = common::slow_route(dir.path(), "0").display().to_string();
    // No workers: the conversion stays queued, its event stream stays open.
    let server = Proc::serve(
        &dir.path().join("data"),
        &[
            "--routes",
            &routes,
            "--no-workers",
            "--max-event-streams",
            "1",
            "--idle-timeout",
            "2s",
        ],
        &[],
    );
    let client = reqwest::Client::new();
    let id = submit_txt(&client, &server, "hello").await;
    let events = server.url(&format!("/v1/conversions/{id}/events"));
    let mut open = client.get(&events).send().await.expect("events");
    assert_eq!(open.status(), 200);

    let refused = client.get(&events).send().await.expect("events");
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    assert_eq!(
        refused.headers()["content-type"],
        "application/problem+json"
    );

    // Keep-alive comments arrive (the idle timeout is 2 s: they keep the stream open).
    let mut seen = String::new();
    tokio::time::timeout(SAFETY, async {
        while !seen.lines().any(|l| l.starts_with(':')) {
            let chunk = open.chunk().await.expect("chunk").expect("stream open");
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no keep-alive comment in {seen:?}"));

    drop(open);
    let deadline = Instant::now() + SAFETY;
    loop {
        let resp = client.get(&events).send().await.expect("events");
        match resp.status().as_u16() {
            200 => break,
            503 => assert!(
                Instant::now() < deadline,
                "the stream's place never came back"
            ),
            other => panic!("unexpected {other}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_of_unknown_conversions_answer_404() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Proc::serve(&dir.path().join("data"), &[], &[]);
    let client = reqwest::Client::new();
    for _ in 0..300 {
        let id = uuid::Uuid::now_v7();
        let resp = client
            .get(server.url(&format!("/v1/conversions/{id}/events")))
            .send()
            .await
            .expect("events");
        assert_eq!(resp.status(), 404);
        assert_eq!(resp.headers()["content-type"], "application/problem+json");
    }
    // What they leave behind on the bus is checked at the engine level
    // (converto-core/tests/watch_leaves_nothing.rs).
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_never_overflow_and_unsatisfiable_ones_answer_416() {
    let dir = tempfile::tempdir().expect("tempdir");
    let routes = common::slow_route(dir.path(), "0").display().to_string();
    let server = Proc::serve(&dir.path().join("data"), &["--routes", &routes], &[]);
    let client = reqwest::Client::new();
    let id = submit_txt(&client, &server, "hello range").await;
    let deadline = Instant::now() + SAFETY;
    let record = loop {
        let (_, rec) = common::record(&client, server.base(), &id).await;
        match rec["status"].as_str() {
            Some("succeeded") => break rec,
            Some("queued" | "running") => {
                assert!(Instant::now() < deadline, "{rec}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            _ => panic!("{rec}"),
        }
    };
    let url = server.url(record["artifacts"][0]["url"].as_str().expect("url"));
    let get = |range: &'static str| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            client
                .get(url)
                .header("range", range)
                .send()
                .await
                .expect("download")
        }
    };

    let all = get("bytes=0-18446744073709551615").await;
    assert_eq!(all.status(), 206);
    assert_eq!(all.headers()["content-range"], "bytes 0-10/11");
    assert_eq!(all.text().await.expect("body"), "hello range");

    let tail = get("bytes=6-18446744073709551615").await;
    assert_eq!(tail.status(), 206);
    assert_eq!(tail.text().await.expect("body"), "range");

    for unsatisfiable in [
        "bytes=18446744073709551615-18446744073709551615",
        "bytes=18446744073709551615-",
        "bytes=11-",
        "bytes=-0",
    ] {
        let resp = get(unsatisfiable).await;
        assert_eq!(resp.status(), 416, "{unsatisfiable}");
        assert_eq!(resp.headers()["content-range"], "bytes */11");
        assert_eq!(resp.headers()["content-type"], "application/problem+json");
    }
}

fn assert_hardened(resp: &reqwest::Response) {
    let h = resp.headers();
    assert_eq!(h["x-content-type-options"], "nosniff", "{h:?}");
    assert_eq!(
        h["content-security-policy"], "default-src 'none'; frame-ancestors 'none'",
        "{h:?}"
    );
    assert!(h.contains_key("x-request-id"), "{h:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_has_security_headers_and_a_request_id() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Proc::serve(&dir.path().join("data"), &[], &[]);
    let client = reqwest::Client::new();

    let ok = client
        .get(server.url("/healthz"))
        .header("x-request-id", "trace-42")
        .send()
        .await
        .expect("healthz");
    assert_eq!(ok.status(), 200);
    assert_hardened(&ok);
    assert_eq!(ok.headers()["x-request-id"], "trace-42");

    let long_id = "x".repeat(1000);
    let missing = client
        .get(server.url(&format!("/v1/conversions/{}", uuid::Uuid::now_v7())))
        .header("x-request-id", long_id.as_str())
        .send()
        .await
        .expect("get");
    assert_eq!(missing.status(), 404);
    assert_hardened(&missing);
    let id = missing.headers()["x-request-id"]
        .to_str()
        .expect("id")
        .to_owned();
    assert_ne!(id, long_id, "an over-long request id is replaced");
    let body: Value = missing.json().await.expect("problem");
    assert_eq!(body["request_id"], id.as_str(), "{body}");

    let too_large = client
        .post(server.url("/v1/conversions"))
        .header("content-type", "application/json")
        .body(vec![b' '; 70 * 1024])
        .send()
        .await
        .expect("post");
    assert_eq!(too_large.status(), 413);
    assert_hardened(&too_large);

    let not_allowed = client
        .delete(server.url("/healthz"))
        .send()
        .await
        .expect("delete");
    assert_eq!(not_allowed.status(), 405);
    assert_hardened(&not_allowed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_is_off_by_default_and_on_for_allowed_origins() {
    let dir = tempfile::tempdir().expect("tempdir");
    let client = reqwest::Client::new();
    let preflight = |server: &Proc, origin: &'static str| {
        client
            .request(reqwest::Method::OPTIONS, server.url("/v1/conversions"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .send()
    };

    let closed = Proc::serve(&dir.path().join("a"), &[], &[]);
    let resp = preflight(&closed, "https://app.example.com")
        .await
        .expect("preflight");
    assert!(!resp.headers().contains_key("access-control-allow-origin"));
    let resp = client
        .get(closed.url("/healthz"))
        .header("origin", "https://app.example.com")
        .send()
        .await
        .expect("get");
    assert!(!resp.headers().contains_key("access-control-allow-origin"));
    drop(closed);

    let open = Proc::serve(
        &dir.path().join("b"),
        &["--cors-allow-origin", "https://app.example.com"],
        &[],
    );
    let resp = preflight(&open, "https://app.example.com")
        .await
        .expect("preflight");
    assert_eq!(
        resp.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    let resp = client
        .get(open.url("/healthz"))
        .header("origin", "https://app.example.com")
        .send()
        .await
        .expect("get");
    assert_eq!(
        resp.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    let resp = preflight(&open, "https://evil.example.net")
        .await
        .expect("preflight");
    assert!(!resp.headers().contains_key("access-control-allow-origin"));
}

/// Runs `converto ARGS` to its end (it fails to start) and returns what it printed.
fn run_to_end(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_converto"))
        .args(args)
        .env("CONVERTO_LOG", "debug")
        .stdin(Stdio::null())
        .output()
        .expect("run converto");
    assert!(
        !out.status.success(),
        "converto should have failed to start"
    );
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_passwords_never_reach_logs_or_readyz() {
    const SECRET: &str = "Hunter2SecretPw";
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data").display().to_string();

    // Unreachable: the start-up error names the backend without its password.
    let unreachable = format!("postgres://converto:{SECRET}@127.0.0.1:1/converto");
    let printed = run_to_end(&["--data-dir", &data, "--store", &unreachable, "serve"]);
    assert!(printed.contains("postgres://"), "{printed}");
    assert!(
        !printed.contains(SECRET),
        "the password was printed: {printed}"
    );

    // Reachable: the logs and /readyz never show it.
    let (pg, _) = common::pg_and_redis_urls();
    if common::reachable(&pg, 5432).is_none() {
        common::skip_or_fail(
            "postgres_passwords_never_reach_logs_or_readyz",
            "no PostgreSQL at CONVERTO_TEST_POSTGRES_URL",
        );
        return;
    }
    // Insert (or replace) a password; a trusting local server ignores it.
    let with_password = match pg.split_once("://") {
        Some((scheme, rest)) => {
            let (creds, host) = rest.rsplit_once('@').unwrap_or(("postgres", rest));
            let user = creds.split(':').next().unwrap_or("postgres");
            format!("{scheme}://{user}:{SECRET}@{host}")
        }
        None => panic!("bad URL {pg}"),
    };
    // A schema of its own, dropped at the end.
    let schema = format!("converto_pw_{}", uuid::Uuid::now_v7().simple());
    // Killed and reaped on drop, whatever happens.
    let mut server = Proc {
        child: Command::new(env!("CARGO_BIN_EXE_converto"))
            .args([
                "--data-dir",
                &data,
                "--store",
                &with_password,
                "serve",
                "--listen",
                "127.0.0.1:0",
            ])
            .env("CONVERTO_LOG", "debug")
            .env("CONVERTO_POSTGRES_SCHEMA", &schema)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start converto"),
        base: None,
    };
    let stdout = server.child.stdout.take().expect("stdout");
    let mut stderr = server.child.stderr.take().expect("stderr");
    // Drained as it comes: debug logs fill a pipe's buffer long before the server is up, and a
    // server blocked on writing its log never says it listens.
    let logged = std::thread::spawn(move || {
        let mut err = String::new();
        let _ = stderr.read_to_string(&mut err);
        err
    });
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)
        .expect("listening line");
    let Some(base) = line.trim().strip_prefix("converto listening on ") else {
        server.kill9();
        let err = logged.join().expect("stderr reader");
        assert!(!err.contains(SECRET), "the password was printed: {err}");
        #[cfg(feature = "postgres")]
        common::drop_pg_schemas(&pg, &schema).await;
        // The password was wrong for this server: the start-up error was the test.
        return;
    };
    let readyz = reqwest::get(format!("{base}/readyz"))
        .await
        .expect("readyz")
        .text()
        .await
        .expect("body");
    assert!(!readyz.contains(SECRET), "{readyz}");
    assert!(
        !readyz.contains("/"),
        "readyz shows paths or URLs: {readyz}"
    );
    server.kill9();
    let err = logged.join().expect("stderr reader");
    assert!(!err.contains(SECRET), "the password was logged: {err}");
    #[cfg(feature = "postgres")]
    common::drop_pg_schemas(&pg, &schema).await;
}

//! Per-tenant limits set with the real binary's `converto tenants` commands, enforced by a
//! running `converto serve` with API keys: the queued limit (429), the storage quota (403
//! `storage-quota`, before and after the bytes are read), and an override set while the server
//! runs, picked up without a restart.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{converto, triangle_stl};
use serde_json::Value;

/// Runs `converto ARGS`, asserts success and returns stdout.
fn ok(data_dir: &Path, args: &[&str]) -> String {
    let out = converto(data_dir, args);
    assert!(
        out.status.success(),
        "converto {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

fn key_for(data_dir: &Path, tenant: &str) -> String {
    ok(
        data_dir,
        &[
            "keys",
            "create",
            "--tenant",
            tenant,
            "--scopes",
            "read,write",
        ],
    )
    .trim()
    .to_owned()
}

async fn submit(client: &reqwest::Client, url: &str, key: &str) -> (u16, Value) {
    let form = reqwest::multipart::Form::new()
        .text("target_format", "obj")
        .part(
            "file",
            reqwest::multipart::Part::bytes(triangle_stl()).file_name("triangle.stl"),
        );
    let resp = client
        .post(url)
        .bearer_auth(key)
        .multipart(form)
        .send()
        .await
        .expect("submit");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn serve(data_dir: &Path) -> common::Proc {
    // No workers: conversions stay queued.
    common::Proc::serve(data_dir, &["--auth", "keys", "--no-workers"], &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_set_with_the_cli_hold_on_a_running_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path();
    let acme = key_for(data, "acme");
    let globex = key_for(data, "globex");

    // Set, merge, show, list.
    let set = ok(data, &["tenants", "set", "acme", "--max-queued", "1"]);
    assert!(set.contains("max-queued=1"), "{set}");
    let set = ok(
        data,
        &[
            "tenants",
            "set",
            "globex",
            "--storage-bytes",
            "100",
            "--max-running",
            "2",
        ],
    );
    assert!(
        set.contains("storage-bytes=100 B") && set.contains("max-running=2"),
        "{set}"
    );
    let shown = ok(data, &["tenants", "show", "acme"]);
    assert!(
        shown
            .lines()
            .any(|l| l.contains("max-queued") && l.contains(" 1 ") && l.contains("(override)")),
        "{shown}"
    );
    assert!(
        shown
            .lines()
            .any(|l| l.contains("max-running") && l.contains("unlimited") && l.contains("config")),
        "{shown}"
    );
    let listed = ok(data, &["tenants", "list"]);
    assert!(
        listed.contains("acme") && listed.contains("globex"),
        "{listed}"
    );
    let refused = converto(data, &["tenants", "set", "acme"]);
    assert!(!refused.status.success(), "a set without a limit must fail");
    let refused = converto(data, &["tenants", "set", "acme", "--storage-bytes", "lots"]);
    assert!(!refused.status.success(), "an unreadable size must fail");

    let server = serve(data);
    let client = reqwest::Client::new();
    let conversions = server.url("/v1/conversions");

    // The queued limit: the second waiting conversion is refused.
    assert_eq!(submit(&client, &conversions, &acme).await.0, 202);
    let (status, problem) = submit(&client, &conversions, &acme).await;
    assert_eq!(status, 429, "{problem}");
    assert!(
        problem["type"]
            .as_str()
            .is_some_and(|t| t.ends_with("too-many-queued")),
        "{problem}"
    );

    // The storage quota (100 bytes): a 134-byte file is refused once read...
    let (status, problem) = submit(&client, &conversions, &globex).await;
    assert_eq!(status, 403, "{problem}");
    assert!(
        problem["type"]
            .as_str()
            .is_some_and(|t| t.ends_with("storage-quota")),
        "{problem}"
    );
    // ... and an upload that declares its length is refused before a byte is read.
    let ticket: Value = client
        .post(server.url("/v1/uploads"))
        .bearer_auth(&globex)
        .send()
        .await
        .expect("upload ticket")
        .json()
        .await
        .expect("json");
    let put_url = ticket["url"].as_str().expect("url");
    let put_url = if put_url.starts_with('/') {
        server.url(put_url)
    } else {
        put_url.to_owned()
    };
    let resp = client
        .put(put_url)
        .bearer_auth(&globex)
        .body(triangle_stl())
        .send()
        .await
        .expect("put");
    assert_eq!(resp.status().as_u16(), 403);
    let problem: Value = resp.json().await.expect("json");
    assert!(
        problem["type"]
            .as_str()
            .is_some_and(|t| t.ends_with("storage-quota")),
        "{problem}"
    );
    // Globex stored nothing.
    let list: Value = client
        .get(&conversions)
        .bearer_auth(&globex)
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(list["items"].as_array().map(Vec::len), Some(0));

    // An override set while the server runs reaches it within the cache's lifetime, without
    // a restart: a tenant with no limit set gets one.
    let initech = key_for(data, "initech");
    assert_eq!(submit(&client, &conversions, &initech).await.0, 202);
    ok(data, &["tenants", "set", "initech", "--max-queued", "1"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, problem) = submit(&client, &conversions, &initech).await;
        if status == 429 {
            break;
        }
        assert_eq!(status, 202, "{problem}");
        assert!(
            Instant::now() < deadline,
            "the override never reached the running server"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // Unset: the configured limits apply again (the listing no longer names the tenant).
    let unset = ok(data, &["tenants", "unset", "acme"]);
    assert!(unset.contains("removed"), "{unset}");
    assert!(!ok(data, &["tenants", "list"]).contains("acme"));
    let again = ok(data, &["tenants", "unset", "acme"]);
    assert!(again.contains("no override"), "{again}");
}

/// The spec documents the storage quota's 403 on the operations that store a file.
#[tokio::test]
async fn the_spec_documents_the_storage_quota() {
    use converto_core::Backends;
    use converto_core::testkit::engine::{engine_with, fast_config};
    use converto_http::{ApiSettings, AppState, app};
    use tower::ServiceExt;
    let (engine, _) = engine_with(&Backends::in_memory(), fast_config());
    let resp = app(AppState::new(engine, ApiSettings::default()))
        .oneshot(
            axum::http::Request::get("/openapi.json")
                .body(axum::body::Body::empty())
                .expect("request"),
        )
        .await
        .expect("spec");
    let bytes = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .expect("body")
        .to_bytes();
    let spec: Value = serde_json::from_slice(&bytes).expect("json");
    for (path, method) in [("/v1/conversions", "post"), ("/v1/uploads/{id}", "put")] {
        let answer = &spec["paths"][path][method]["responses"]["403"];
        assert!(
            answer["description"]
                .as_str()
                .is_some_and(|d| d.contains("storage-quota")),
            "{path} {method}: {answer}"
        );
        assert!(answer["content"]["application/problem+json"].is_object());
    }
}

//! End to end: the real `converto` binary on the embedded default (SQLite + local disk), driven
//! over HTTP: upload, follow events, download; then `kill -9` with conversions queued and
//! running, restart, and every conversion finishes; then a graceful SIGTERM.
#![cfg(all(
    feature = "sqlite",
    feature = "local",
    feature = "mesh",
    feature = "process"
))]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::Proc;
use serde_json::Value;

async fn submit(
    client: &reqwest::Client,
    server: &Proc,
    name: &str,
    bytes: Vec<u8>,
    target: &str,
) -> String {
    common::submit(client, server.base(), name, bytes, target).await
}

async fn record(client: &reqwest::Client, server: &Proc, id: &str) -> Value {
    common::record(client, server.base(), id).await.1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_binary_converts_survives_kill_and_shuts_down_gracefully() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    // A slow external converter, so conversions are running and queued when the server dies.
    let routes = common::slow_route(dir.path(), "1");
    let routes_arg = routes.display().to_string();
    let client = reqwest::Client::new();

    // 1. Upload a mesh, follow its events, download the result.
    let mut server = Proc::serve(
        &data,
        &[
            "--routes",
            &routes_arg,
            "--concurrency",
            "1",
            "--lease",
            "2",
        ],
        &[],
    );
    let id = submit(
        &client,
        &server,
        "triangle.stl",
        common::triangle_stl(),
        "obj",
    )
    .await;
    let events = tokio::time::timeout(Duration::from_secs(30), async {
        client
            .get(server.url(&format!("/v1/conversions/{id}/events")))
            .send()
            .await
            .expect("events")
            .text()
            .await
            .expect("body")
    })
    .await
    .expect("the event stream ends with the conversion");
    assert!(
        events.contains("event: status") && events.contains("\"succeeded\""),
        "{events}"
    );
    let rec = record(&client, &server, &id).await;
    let url = rec["artifacts"][0]["url"].as_str().expect("url");
    let resp = client.get(server.url(url)).send().await.expect("download");
    assert_eq!(resp.status(), 200);
    // The mesh and its preview.png: the one artifact in the target format is saved under the
    // input's name.
    assert!(
        resp.headers()["content-disposition"]
            .to_str()
            .expect("cd")
            .contains("triangle.obj")
    );
    let names: Vec<&str> = rec["artifacts"]
        .as_array()
        .expect("artifacts")
        .iter()
        .filter_map(|a| a["name"].as_str())
        .collect();
    assert_eq!(names, ["output.obj", "preview.png"]);
    let obj = resp.text().await.expect("obj");
    assert_eq!(
        obj.lines().filter(|l| l.starts_with("v ")).count(),
        3,
        "{obj}"
    );
    assert_eq!(
        obj.lines().filter(|l| l.starts_with("f ")).count(),
        1,
        "{obj}"
    );

    // 2. kill -9 with one conversion running and others queued.
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(
            submit(
                &client,
                &server,
                &format!("n{i}.txt"),
                format!("note {i}").into_bytes(),
                "slowtxt",
            )
            .await,
        );
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while record(&client, &server, &ids[0]).await["status"] != "running" {
        assert!(
            Instant::now() < deadline,
            "the first slow conversion never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.kill9();
    // The killed process's scratch directory (the running job's input copy) is still there.
    let scratch = data.join("scratch");
    let dead_dirs = engine_dirs(&scratch);
    assert!(
        !dead_dirs.is_empty(),
        "no scratch directory of the killed process"
    );

    // 3. Restart on the same data: everything finishes, nothing stays running.
    let server = Proc::serve(
        &data,
        &[
            "--routes",
            &routes_arg,
            "--concurrency",
            "2",
            "--lease",
            "2",
        ],
        &[],
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    for (i, id) in ids.iter().enumerate() {
        loop {
            let rec = record(&client, &server, id).await;
            if rec["status"] == "succeeded" {
                let url = rec["artifacts"][0]["url"].as_str().expect("url").to_owned();
                let body = client
                    .get(server.url(&url))
                    .send()
                    .await
                    .expect("dl")
                    .text()
                    .await
                    .expect("text");
                assert_eq!(body, format!("note {i}"));
                break;
            }
            assert!(
                rec["status"] == "queued" || rec["status"] == "running",
                "unexpected {rec}"
            );
            assert!(
                Instant::now() < deadline,
                "conversion {id} did not finish after the restart: {rec}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let live = common::listed(&client, server.base(), "queued,running").await;
    assert!(live.is_empty(), "records left live: {live:?}");
    for dir in &dead_dirs {
        assert!(
            !dir.exists(),
            "the restarted server left the killed process's scratch directory {}",
            dir.display()
        );
    }

    // 4. SIGTERM: a graceful exit.
    let mut server = server;
    let status = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = server.child.try_wait().expect("wait") {
            assert!(
                status.success(),
                "converto exited with {status} after SIGTERM"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "converto did not exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let left = engine_dirs(&scratch);
    assert!(
        left.is_empty(),
        "a graceful exit left scratch directories: {left:?}"
    );
}

/// The per-process scratch directories (`proc-*`) under `scratch`.
fn engine_dirs(scratch: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(scratch)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.is_dir()
                        && p.file_name()
                            .is_some_and(|n| n.to_string_lossy().starts_with("proc-"))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A fresh directory holding a copy of `examples/data/cube.stl`, and the copy's path.
fn cube_in_tempdir() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("cube.stl");
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/data/cube.stl"),
        &input,
    )
    .expect("copy cube");
    (dir, input)
}

/// `converto [--config CONFIG] convert INPUT --to obj`.
fn convert_to_obj(input: &Path, config: Option<&Path>) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_converto"));
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    cmd.arg("convert")
        .arg(input)
        .args(["--to", "obj"])
        .env("CONVERTO_LOG", "warn")
        .output()
        .expect("run convert")
}

/// `converto convert` goes through the engine's intake like the API: format detection, the
/// converter in its child process, the artifact streamed to the output file; a corrupt input
/// fails with the converter's code and nothing written.
#[test]
fn convert_runs_one_file_through_the_engine() {
    let (dir, input) = cube_in_tempdir();
    // The output file itself, and the mesh's preview beside it.
    let out = convert_to_obj(&input, None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let written = dir.path().join("cube.obj");
    let preview = dir.path().join("cube.obj.preview.png");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("{}\n{}", written.display(), preview.display())
    );
    let png = std::fs::read(&preview).expect("preview");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG preview");
    let obj = std::fs::read_to_string(&written).expect("output");
    assert_eq!(obj.lines().filter(|l| l.starts_with("f ")).count(), 12);

    let bad = dir.path().join("bad.stl");
    std::fs::write(&bad, b"not a mesh at all").expect("write");
    let out = convert_to_obj(&bad, None);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid_input"), "{err}");
    assert!(!dir.path().join("bad.obj").exists());
}

/// The file's `[mesh]` table is the mesh adapter's own `MeshLimits`, passed through to the
/// converter (in its child process): a cube over a 10-face limit is refused as too large.
#[test]
fn the_mesh_table_of_the_config_file_reaches_the_converter() {
    let (dir, input) = cube_in_tempdir();
    let config = dir.path().join("converto.toml");
    std::fs::write(&config, "[mesh]\nmax_faces = 10\n").expect("config");
    let out = convert_to_obj(&input, Some(&config));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "converted despite the limit: {err}");
    assert!(err.contains("input_too_large"), "{err}");
    std::fs::write(&config, "[mesh]\nmax_fases = 10\n").expect("config");
    let out = convert_to_obj(&input, Some(&config));
    assert!(!out.status.success(), "a misspelt limit was accepted");
    assert!(String::from_utf8_lossy(&out.stderr).contains("max_fases"));
}

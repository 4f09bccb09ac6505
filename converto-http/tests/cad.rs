//! The STEP and IGES routes in the real `converto` binary: on by default when OpenCASCADE's
//! `occt-draw` is installed (reported by `/readyz` and `converto formats`), chained pairs listed
//! by `/v1/formats` with their path, a STEP part converted to OBJ over HTTP as one conversion;
//! and off, with the reason, when `occt-draw` is not on `PATH`.
//!
//! Needs `occt-draw` and the sample parts (Debian: `occt-draw libocct-draw-dev occt-misc`,
//! installed by `.ci/setup`): fails without them when `CI=true`, skips otherwise.
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

const SCREW: &str = "/usr/share/opencascade/data/step/screw.step";

fn occt_installed(test: &str) -> bool {
    let found = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("occt-draw").is_file()))
        && Path::new(SCREW).is_file();
    if !found {
        common::skip_or_fail(
            test,
            "occt-draw or the occt-misc sample parts are not installed (apt-get install occt-draw libocct-draw-dev occt-misc)",
        );
    }
    found
}

/// `GET path` on `server`, as JSON.
async fn get_json(client: &reqwest::Client, server: &Proc, path: &str) -> Value {
    let resp = client.get(server.url(path)).send().await.expect(path);
    resp.json().await.expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_part_becomes_obj_through_the_default_service() {
    if !occt_installed("a_step_part_becomes_obj_through_the_default_service") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Proc::serve(&dir.path().join("data"), &[], &[]);
    let client = reqwest::Client::new();

    let ready = get_json(&client, &server, "/readyz").await;
    assert!(
        ready["converters"]["cad"]
            .as_str()
            .is_some_and(|s| s == "STEP and IGES routes on"),
        "{ready}"
    );

    let formats = get_json(&client, &server, "/v1/formats").await;
    let routes = formats["routes"].as_array().expect("routes");
    let find = |s: &str, t: &str| {
        routes
            .iter()
            .find(|r| r["source"] == s && r["target"] == t)
            .cloned()
    };
    let direct = find("step", "stl").expect("step -> stl listed");
    assert!(direct.get("via").is_none(), "{direct}");
    let chained = find("step", "obj").expect("step -> obj listed");
    assert_eq!(chained["via"], serde_json::json!(["stl"]), "{chained}");
    assert!(find("iges", "ply").is_some());
    assert!(find("ply", "step").is_some());

    let bytes = std::fs::read(SCREW).expect("the sample part");
    let id = common::submit(&client, server.base(), "screw.step", bytes, "obj").await;
    let deadline = Instant::now() + Duration::from_secs(120);
    let record = loop {
        let (_, rec) = common::record(&client, server.base(), &id).await;
        match rec["status"].as_str() {
            Some("succeeded") => break rec,
            Some("queued" | "running") => {
                assert!(Instant::now() < deadline, "not finished: {rec}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            _ => panic!("ended badly: {rec}"),
        }
    };
    let artifacts = record["artifacts"].as_array().expect("artifacts");
    assert!(
        artifacts.iter().all(|a| a["format"] != "stl"),
        "an intermediate was stored: {record}"
    );
    let obj = artifacts
        .iter()
        .find(|a| a["format"] == "obj")
        .expect("an obj artifact");
    let url = obj["url"].as_str().expect("url");
    let text = client
        .get(format!("{}{url}", server.base()))
        .send()
        .await
        .expect("download")
        .text()
        .await
        .expect("text");
    let vertices = text.lines().filter(|l| l.starts_with("v ")).count();
    let faces = text.lines().filter(|l| l.starts_with("f ")).count();
    assert!(
        vertices > 100 && faces > 100,
        "{vertices} vertices, {faces} faces"
    );
    assert_eq!(record["progress"]["percent"], 100, "{record}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_occt_draw_the_routes_are_off_and_say_why() {
    let dir = tempfile::tempdir().expect("tempdir");
    let empty = dir.path().join("empty-path");
    std::fs::create_dir_all(&empty).expect("dir");
    let env = [("PATH", empty.display().to_string())];

    let listed = Command::new(env!("CARGO_BIN_EXE_converto"))
        .args([
            "--data-dir",
            &dir.path().join("data").display().to_string(),
            "formats",
        ])
        .env("PATH", &env[0].1)
        .env("CONVERTO_LOG", "error")
        .output()
        .expect("converto formats");
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(
        text.contains(
            "# cad: STEP and IGES routes off: occt-draw (Debian package occt-draw) not found"
        ),
        "{text}"
    );
    assert!(!text.lines().any(|l| l.starts_with("step ")), "{text}");

    let server = Proc::serve(&dir.path().join("data"), &[], &env);
    let client = reqwest::Client::new();
    let ready = get_json(&client, &server, "/readyz").await;
    assert_eq!(ready["status"], "ready", "{ready}");
    assert!(
        ready["converters"]["cad"]
            .as_str()
            .is_some_and(|s| s == "STEP and IGES routes off"),
        "{ready}"
    );
    let form = reqwest::multipart::Form::new()
        .text("target_format", "stl")
        .part(
            "file",
            reqwest::multipart::Part::bytes(b"ISO-10303-21;\n".to_vec()).file_name("a.step"),
        );
    let resp = client
        .post(server.url("/v1/conversions"))
        .multipart(form)
        .send()
        .await
        .expect("submit");
    assert_eq!(resp.status(), 422);
}

//! The presigned flow end to end, with a plain HTTP client and no S3 SDK: the real `converto`
//! binary over an S3-compatible server (`--blobs s3://...`, settings as flags and environment),
//! `POST /v1/uploads` answering with a presigned PUT URL, the bytes PUT straight to object
//! storage, a conversion of that upload, and the artifact download redirected to a presigned GET.
//!
//! The server is found at `CONVERTO_TEST_S3_ENDPOINT` (default `http://127.0.0.1:9000`, moto in
//! CI, see `.ci/setup`). Without one the test skips with a message, except when `CI=true`.
#![cfg(all(feature = "s3", feature = "sqlite", feature = "mesh"))]

mod common;

use std::time::{Duration, Instant};

use common::Proc;
use serde_json::{Value, json};

async fn s3_endpoint() -> Option<String> {
    let endpoint = std::env::var("CONVERTO_TEST_S3_ENDPOINT")
        .ok()
        .filter(|e| !e.is_empty())
        .unwrap_or_else(|| "http://127.0.0.1:9000".to_owned());
    let endpoint = endpoint.trim_end_matches('/').to_owned();
    let probe = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .expect("client")
        .get(format!("{endpoint}/"))
        .send()
        .await;
    match probe {
        Ok(_) => Some(endpoint),
        Err(e) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("no S3 server at {endpoint} ({e}); CI=true requires one: run .ci/setup")
        }
        Err(e) => {
            eprintln!(
                "skipping the presigned flow: no S3 server at {endpoint} ({e}); start one \
                 (see .ci/setup) or set CONVERTO_TEST_S3_ENDPOINT"
            );
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presigned_upload_convert_download_with_plain_http() {
    let Some(endpoint) = s3_endpoint().await else {
        return;
    };
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    // moto accepts an unsigned bucket creation.
    let bucket = format!("converto-presigned-{}", uuid::Uuid::now_v7().simple());
    let created = client
        .put(format!("{endpoint}/{bucket}"))
        .send()
        .await
        .expect("create bucket");
    assert!(created.status().is_success(), "{}", created.status());

    let data = tempfile::tempdir().expect("tempdir");
    let args = [
        "--data-dir".to_owned(),
        data.path().display().to_string(),
        "--blobs".into(),
        format!("s3://{bucket}/converto"),
        "--s3-endpoint".into(),
        endpoint.clone(),
        "--s3-allow-http".into(),
        "true".into(),
        "--s3-region".into(),
        "us-east-1".into(),
        "serve".into(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--redirect-downloads".into(),
    ];
    let env = [
        ("AWS_ACCESS_KEY_ID", "test".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", "test".to_owned()),
    ];
    let server = Proc::spawn(&args, &env, true);
    let base = server.base().to_owned();

    // 1. Ask where to upload: a presigned URL on the S3 server, not on converto.
    let ticket: Value = client
        .post(format!("{}/v1/uploads", base))
        .send()
        .await
        .expect("ticket")
        .json()
        .await
        .expect("json");
    assert_eq!(ticket["presigned"], true, "{ticket}");
    let put_url = ticket["url"].as_str().expect("url");
    assert!(put_url.starts_with(&endpoint), "{put_url}");
    let upload_id = ticket["upload_id"].as_str().expect("upload_id");

    // 2. PUT the bytes straight to object storage.
    let stl = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/data/cube.stl"
    ))
    .expect("cube.stl");
    let put = client
        .put(put_url)
        .body(stl.clone())
        .send()
        .await
        .expect("put");
    assert!(put.status().is_success(), "presigned PUT: {}", put.status());

    // 3. Convert the upload.
    let resp = client
        .post(format!("{}/v1/conversions", base))
        .json(&json!({
            "upload_id": upload_id,
            "target_format": "obj",
            "file_name": "cube.stl",
        }))
        .send()
        .await
        .expect("submit");
    assert_eq!(resp.status(), 202);
    let id = resp.json::<Value>().await.expect("json")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    let record = loop {
        let (_, rec) = common::record(&client, &base, &id).await;
        match rec["status"].as_str() {
            Some("succeeded") => break rec,
            Some("queued" | "running") => {
                assert!(Instant::now() < deadline, "not done: {rec}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            _ => panic!("conversion ended badly: {rec}"),
        }
    };

    // 4. The download redirects to a presigned GET on the S3 server.
    let url = record["artifacts"][0]["url"]
        .as_str()
        .expect("artifact url");
    let resp = client
        .get(format!("{}{url}", base))
        .send()
        .await
        .expect("download");
    assert_eq!(resp.status(), 307, "{:?}", resp.headers());
    let location = resp
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .expect("location")
        .to_owned();
    assert!(location.starts_with(&endpoint), "{location}");
    let obj = client.get(&location).send().await.expect("presigned get");
    assert!(obj.status().is_success(), "presigned GET: {}", obj.status());
    let text = obj.text().await.expect("text");
    let vertices = text.lines().filter(|l| l.starts_with("v ")).count();
    let faces = text.lines().filter(|l| l.starts_with("f ")).count();
    assert_eq!(
        (vertices, faces),
        (8, 12),
        "a cube has 8 corners and 12 triangles"
    );

    // A presigned URL is not a way around a bad upload id.
    let resp = client
        .post(format!("{}/v1/conversions", base))
        .json(&json!({ "upload_id": uuid::Uuid::now_v7().to_string(), "target_format": "obj" }))
        .send()
        .await
        .expect("submit unknown");
    assert_eq!(resp.status(), 404);
}

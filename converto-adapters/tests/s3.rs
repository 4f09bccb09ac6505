//! The `s3` adapter against a real S3-compatible server on loopback (moto in CI; see
//! `.ci/setup`), and against `file://` and `memory://` URLs.
//!
//! The server is found at `CONVERTO_TEST_S3_ENDPOINT` (default `http://127.0.0.1:9000`). Without
//! one these tests skip with a message, except when `CI=true`, where they fail.
#![cfg(feature = "s3")]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use converto_adapters::s3::{ObjectBlobStore, S3Config};
use converto_core::blob::{BlobError, BlobStore, BlobStoreExt, ByteStream, PresignMethod};
use converto_core::testkit::blob::run_blob_suite;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;

const ENDPOINT_VAR: &str = "CONVERTO_TEST_S3_ENDPOINT";
const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:9000";
const MIB: usize = 1024 * 1024;

/// A bucket on the test server, created once per test run.
#[derive(Debug, Clone)]
struct S3Server {
    endpoint: String,
    bucket: String,
}

impl S3Server {
    fn config(&self) -> S3Config {
        S3Config::new()
            .with_endpoint(&self.endpoint)
            .with_region("us-east-1")
            .with_credentials("test", "test")
            .with_part_size(5 * MIB)
    }

    /// A store under a prefix no other store of this run uses.
    fn fresh_store(&self, config: &S3Config) -> ObjectBlobStore {
        let url = format!("s3://{}/run-{}", self.bucket, uuid::Uuid::now_v7().simple());
        ObjectBlobStore::from_url(&url, config).expect("s3 store")
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("http client")
}

static SERVER: OnceCell<Option<S3Server>> = OnceCell::const_new();

/// The test server with a fresh bucket, or `None` (with a message) when there is none to reach
/// outside CI. Under `CI=true` an unreachable server fails the test.
async fn s3_server(test: &str) -> Option<S3Server> {
    let server = SERVER
        .get_or_init(|| async {
            let endpoint = std::env::var(ENDPOINT_VAR)
                .ok()
                .filter(|e| !e.is_empty())
                .unwrap_or_else(|| DEFAULT_ENDPOINT.to_owned());
            let endpoint = endpoint.trim_end_matches('/').to_owned();
            let probe = reqwest::Client::builder()
                .timeout(Duration::from_secs(3))
                .build()
                .expect("http client")
                .get(format!("{endpoint}/"))
                .send()
                .await;
            if let Err(e) = probe {
                if std::env::var("CI").is_ok_and(|v| v == "true") {
                    panic!("no S3 server at {endpoint} ({e}); CI=true requires one: run .ci/setup or set {ENDPOINT_VAR}");
                }
                return None;
            }
            let bucket = format!("converto-test-{}", uuid::Uuid::now_v7().simple());
            // moto (and MinIO in anonymous-create setups) accept an unsigned bucket creation.
            let created = http()
                .put(format!("{endpoint}/{bucket}"))
                .send()
                .await
                .expect("create bucket");
            assert!(
                created.status().is_success(),
                "creating bucket {bucket} failed: {}",
                created.status()
            );
            Some(S3Server { endpoint, bucket })
        })
        .await
        .clone();
    if server.is_none() {
        eprintln!(
            "skipping {test}: no S3-compatible server reachable; start one (e.g. `moto_server -H \
             127.0.0.1 -p 9000`, see .ci/setup) or point {ENDPOINT_VAR} at one \
             (default {DEFAULT_ENDPOINT})"
        );
    }
    server
}

/// `len` deterministic bytes in chunks of `chunk` bytes, and their SHA-256.
fn generated(len: usize, chunk: usize) -> (ByteStream, [u8; 32]) {
    let block = move |i: usize| -> Bytes {
        let start = i * chunk;
        let end = (start + chunk).min(len);
        (start..end)
            .map(|n| (n.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect::<Vec<u8>>()
            .into()
    };
    let blocks = len.div_ceil(chunk);
    let mut hasher = Sha256::new();
    for i in 0..blocks {
        hasher.update(block(i));
    }
    let stream = futures::stream::iter(0..blocks)
        .map(move |i| Ok(block(i)))
        .boxed();
    (stream, hasher.finalize().into())
}

async fn sha256_of(store: &dyn BlobStore, key: &str) -> (u64, [u8; 32]) {
    let read = store.get(key, None).await.expect("get");
    let mut body = read.body;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.expect("chunk");
        size += chunk.len() as u64;
        hasher.update(&chunk);
    }
    (size, hasher.finalize().into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_passes_the_blob_suite() {
    let Some(server) = s3_server("s3_passes_the_blob_suite").await else {
        return;
    };
    let config = server.config();
    run_blob_suite(async || Arc::new(server.fresh_store(&config)) as Arc<dyn BlobStore>).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_urls_pass_the_blob_suite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().to_owned();
    run_blob_suite(async || {
        let sub = root.join(uuid::Uuid::now_v7().simple().to_string());
        std::fs::create_dir_all(&sub).expect("mkdir");
        let url = url_of_dir(&sub);
        Arc::new(ObjectBlobStore::from_url(&url, &S3Config::new()).expect("file store"))
            as Arc<dyn BlobStore>
    })
    .await;
}

fn url_of_dir(dir: &std::path::Path) -> String {
    format!("file://{}", dir.display())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_urls_pass_the_blob_suite() {
    run_blob_suite(async || {
        Arc::new(ObjectBlobStore::from_url("memory:///converto", &S3Config::new()).expect("store"))
            as Arc<dyn BlobStore>
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_urls_keep_keys_under_their_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store =
        ObjectBlobStore::from_url(&url_of_dir(dir.path()), &S3Config::new()).expect("file store");
    store
        .put_bytes("conversions/a/input", Bytes::from_static(b"abc"))
        .await
        .expect("put");
    let on_disk = std::fs::read(dir.path().join("conversions/a/input")).expect("file on disk");
    assert_eq!(on_disk, b"abc");
    assert!(!store.capabilities().presign);
    store.ping().await.expect("ping");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presigned_urls_work_with_a_plain_http_client() {
    let Some(server) = s3_server("presigned_urls_work_with_a_plain_http_client").await else {
        return;
    };
    let store = server.fresh_store(&server.config());
    assert!(store.capabilities().presign);
    let key = "uploads/presigned.bin";
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 241) as u8).collect();
    let ttl = Duration::from_secs(600);

    let put_url = store
        .presign(PresignMethod::Put, key, ttl)
        .await
        .expect("presign put");
    assert!(put_url.contains("X-Amz-Signature"), "{put_url}");
    let uploaded = http()
        .put(&put_url)
        .body(data.clone())
        .send()
        .await
        .expect("plain PUT");
    assert!(uploaded.status().is_success(), "{}", uploaded.status());
    assert_eq!(store.head(key).await.expect("head").size, data.len() as u64);

    let get_url = store
        .presign(PresignMethod::Get, key, ttl)
        .await
        .expect("presign get");
    let downloaded = http().get(&get_url).send().await.expect("plain GET");
    assert!(downloaded.status().is_success(), "{}", downloaded.status());
    assert_eq!(downloaded.bytes().await.expect("body").as_ref(), &data[..]);

    assert!(matches!(
        store
            .presign(PresignMethod::Get, key, Duration::from_secs(8 * 24 * 3600))
            .await,
        Err(BlobError::Backend(e)) if !e.temporary
    ));
    store.delete(key).await.expect("delete");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_body_goes_up_in_parts_and_reads_back() {
    let Some(server) = s3_server("a_large_body_goes_up_in_parts_and_reads_back").await else {
        return;
    };
    let store = server.fresh_store(&server.config().with_max_parts_in_flight(3));
    let len = 40 * MIB + 4321;
    let (body, want) = generated(len, 64 * 1024 + 17);
    let meta = store
        .put("big/forty-mib", body)
        .await
        .expect("multipart put");
    assert_eq!(meta.size, len as u64);
    let head = store.head("big/forty-mib").await.expect("head");
    assert_eq!(head.size, len as u64);
    assert_eq!(head.etag, meta.etag);
    let (size, got) = sha256_of(&store, "big/forty-mib").await;
    assert_eq!(size, len as u64);
    assert_eq!(got, want, "content differs after a multipart round trip");

    // A range across a part boundary.
    let read = store
        .get(
            "big/forty-mib",
            Some((5 * MIB - 10) as u64..(5 * MIB + 10) as u64),
        )
        .await
        .expect("ranged get");
    assert_eq!(read.range.end - read.range.start, 20);
    store.delete("big/forty-mib").await.expect("delete");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_failing_after_some_parts_leaves_no_upload_behind() {
    let Some(server) = s3_server("a_body_failing_after_some_parts_leaves_no_upload_behind").await
    else {
        return;
    };
    let store = server.fresh_store(&server.config());
    let key = "failing/after-parts";
    store
        .put_bytes(key, Bytes::from_static(b"previous"))
        .await
        .expect("put");
    // Three whole parts go up before the body fails.
    let (good, _) = generated(16 * MIB, MIB);
    let failing = good
        .chain(futures::stream::once(async {
            Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "client went away",
            ))
        }))
        .boxed();
    assert!(matches!(
        store.put(key, failing).await,
        Err(BlobError::Body(_))
    ));
    assert_eq!(
        store.get_bytes(key).await.expect("get"),
        Bytes::from_static(b"previous"),
        "a failed upload replaced the object"
    );
    // The aborted multipart upload is gone (ListMultipartUploads).
    let uploads = http()
        .get(format!("{}/{}?uploads", server.endpoint, server.bucket))
        .send()
        .await
        .expect("list uploads")
        .text()
        .await
        .expect("body");
    assert!(uploads.contains("ListMultipartUploadsResult"), "{uploads}");
    assert!(
        !uploads.contains("failing/after-parts"),
        "multipart upload left behind: {uploads}"
    );
    store.delete(key).await.expect("delete");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_and_prefix_isolation() {
    let Some(server) = s3_server("ping_and_prefix_isolation").await else {
        return;
    };
    let config = server.config();
    let a = server.fresh_store(&config);
    let b = server.fresh_store(&config);
    a.ping().await.expect("ping");
    a.put_bytes("x/1", Bytes::from_static(b"1"))
        .await
        .expect("put");
    assert!(b.list("").await.expect("list b").is_empty());
    let listed = a.list("").await.expect("list a");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].key, "x/1", "store prefix stripped");

    let missing = ObjectBlobStore::from_url(
        &format!("s3://no-such-bucket-{}", uuid::Uuid::now_v7().simple()),
        &config,
    )
    .expect("store");
    assert!(missing.ping().await.is_err(), "ping of a missing bucket");
}

#[test]
fn config_debug_hides_secrets() {
    let config = S3Config::new()
        .with_url("s3://bucket/prefix")
        .with_credentials("AKIAEXAMPLEID", "wJalrXUtnFEMI-super-secret")
        .with_session_token("FwoGZXIvYXdzEJr-session-secret");
    let shown = format!("{config:?}");
    assert!(shown.contains("AKIAEXAMPLEID"), "{shown}");
    assert!(
        !shown.contains("super-secret"),
        "secret key in Debug: {shown}"
    );
    assert!(
        !shown.contains("session-secret"),
        "session token in Debug: {shown}"
    );
    let store = ObjectBlobStore::from_url(
        "s3://bucket/prefix",
        &config.with_endpoint("http://127.0.0.1:1"),
    )
    .expect("store");
    let shown = format!("{store:?}");
    assert!(
        !shown.contains("super-secret") && !shown.contains("session-secret"),
        "{shown}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_upload_is_aborted() {
    let Some(server) = s3_server("a_cancelled_upload_is_aborted").await else {
        return;
    };
    let store = server.fresh_store(&server.config());
    let key = "cancelled/upload";
    // Two parts' worth, then a body that never ends: the put is under way when it is dropped.
    let (start, _) = generated(11 * MIB, MIB);
    let stalled = start.chain(futures::stream::pending()).boxed();
    let put = tokio::time::timeout(Duration::from_secs(3), store.put(key, stalled)).await;
    assert!(put.is_err(), "the stalled put should still be running");
    let list_uploads = || async {
        http()
            .get(format!("{}/{}?uploads", server.endpoint, server.bucket))
            .send()
            .await
            .expect("list uploads")
            .text()
            .await
            .expect("body")
    };
    let mut uploads = list_uploads().await;
    for _ in 0..50 {
        if !uploads.contains(key) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        uploads = list_uploads().await;
    }
    assert!(uploads.contains("ListMultipartUploadsResult"), "{uploads}");
    assert!(
        !uploads.contains(key),
        "cancelled upload left behind: {uploads}"
    );
    assert!(matches!(
        store.head(key).await,
        Err(BlobError::NotFound { .. })
    ));
}

//! The API contract (issue 9): every error is problem+json, uploads need a ticket the server
//! signed, and an idempotency key binds to its request.

mod common;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, Response, StatusCode, header};
use chrono::Utc;
use common::{json_of, problem};
use converto_core::Backends;
use converto_core::Engine;
use converto_core::blob::BlobStoreExt;
use converto_core::intake::UploadSigner;
use converto_core::queue::{JobQueue, JobSpec, Lease, QueueError, QueueStats};
use converto_core::store::ListQuery;
use converto_core::testkit::engine::fast_config;
use converto_core::testkit::scripted_registry;
use converto_http::{ApiSettings, AppState, app};
use serde_json::{Value, json};
use tower::ServiceExt;

const SECRET: &[u8] = b"contract-test-secret-0123456789";
const BOUNDARY: &str = "----convertocontractboundary";

struct Api {
    router: Router,
    backends: Backends,
}

/// An API without workers: conversions stay queued, so nothing changes under the test.
fn api() -> Api {
    api_over(Backends::in_memory())
}

fn api_over(backends: Backends) -> Api {
    let (registry, _) = scripted_registry();
    let engine = Engine::builder()
        .backends(backends.clone())
        .registry(registry)
        .config(fast_config().max_input_bytes(Some(10_000)))
        .upload_signer(UploadSigner::new(SECRET).expect("signer"))
        .build()
        .expect("engine");
    Api {
        router: app(AppState::new(engine, ApiSettings::default())),
        backends,
    }
}

impl Api {
    async fn call(&self, req: Request<Body>) -> Response<Body> {
        self.router.clone().oneshot(req).await.expect("infallible")
    }

    async fn ticket(&self) -> (String, String) {
        let resp = self
            .call(Request::post("/v1/uploads").body(Body::empty()).expect("r"))
            .await;
        assert_eq!(resp.status(), StatusCode::CREATED);
        let t = json_of(resp).await;
        (
            t["upload_id"].as_str().expect("id").to_owned(),
            t["url"].as_str().expect("url").to_owned(),
        )
    }

    async fn put(&self, url: &str, body: &'static [u8]) -> Response<Body> {
        self.call(Request::put(url).body(Body::from(body)).expect("r"))
            .await
    }

    async fn submit_json(&self, key: &str, body: Value) -> Response<Body> {
        self.call(
            Request::post("/v1/conversions")
                .header(header::CONTENT_TYPE, "application/json")
                .header("idempotency-key", key)
                .body(Body::from(body.to_string()))
                .expect("r"),
        )
        .await
    }

    async fn submit_form(&self, key: &str, target: &str, file: &[u8]) -> Response<Body> {
        let mut body = Vec::new();
        body.extend_from_slice(format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"target_format\"\r\n\r\n{target}\r\n").as_bytes());
        body.extend_from_slice(format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"in.txt\"\r\n\r\n").as_bytes());
        body.extend_from_slice(file);
        body.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
        self.call(
            Request::post("/v1/conversions")
                .header(
                    header::CONTENT_TYPE,
                    format!("multipart/form-data; boundary={BOUNDARY}"),
                )
                .header("idempotency-key", key)
                .body(Body::from(body))
                .expect("r"),
        )
        .await
    }

    async fn blob_keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self
            .backends
            .blobs
            .list("")
            .await
            .expect("list")
            .into_iter()
            .map(|m| m.key)
            .collect();
        keys.sort();
        keys
    }
}

#[tokio::test]
async fn transport_and_extractor_errors_are_problems() {
    let api = api();
    // 405 from the method router, with its Allow header kept.
    let resp = api
        .call(
            Request::patch("/v1/formats")
                .body(Body::empty())
                .expect("r"),
        )
        .await;
    let allow = resp.headers().get(header::ALLOW).cloned();
    problem(resp, StatusCode::METHOD_NOT_ALLOWED).await;
    assert!(allow.is_some_and(|a| a.to_str().is_ok_and(|a| a.contains("GET"))));
    let not_json = Request::post("/v1/conversions")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from("{not json"))
        .expect("r");
    let get = |uri: &str| Request::get(uri).body(Body::empty()).expect("r");
    for (what, req) in [
        ("a body that is not JSON", not_json),
        ("a malformed path id", get("/v1/conversions/not-an-id")),
        (
            "a query axum's Query extractor refuses (a repeated field)",
            get("/v1/conversions?status=queued&status=failed"),
        ),
        // Filters and cursors as strict as the spec's patterns.
        (
            "a format in capitals",
            get("/v1/conversions?source_format=STL"),
        ),
        (
            "a status with a space",
            get("/v1/conversions?status=%20queued"),
        ),
        (
            "a cursor in capitals",
            get("/v1/conversions?cursor=0190C3E0-7B9A-7CC1-8F0E-1F2A3B4C5D6E"),
        ),
    ] {
        let resp = api.call(req).await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{what}");
        problem(resp, StatusCode::BAD_REQUEST).await;
    }
}

#[tokio::test]
async fn the_spec_documents_ids_and_problem_answers() {
    let api = api();
    let spec = json_of(
        api.call(
            Request::get("/openapi.json")
                .body(Body::empty())
                .expect("r"),
        )
        .await,
    )
    .await;
    let get = &spec["paths"]["/v1/conversions/{id}"]["get"];
    let id = get["parameters"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == "id"))
        .expect("id parameter");
    assert!(
        id["schema"]["pattern"]
            .as_str()
            .is_some_and(|p| p.contains("-7[0-9a-f]{3}-")),
        "the id is documented as a UUIDv7: {id}"
    );
    for status in ["400", "404", "503"] {
        assert!(
            get["responses"][status]["content"]["application/problem+json"].is_object(),
            "GET /v1/conversions/{{id}} documents {status} as problem+json"
        );
    }
    let put = &spec["paths"]["/v1/uploads/{id}"]["put"];
    for status in ["403", "413"] {
        assert!(
            put["responses"][status]["content"]["application/problem+json"].is_object(),
            "PUT /v1/uploads/{{id}} documents {status} as problem+json"
        );
    }
}

#[tokio::test]
async fn uploads_need_a_valid_unexpired_ticket_within_its_size() {
    let api = api();
    let (id, url) = api.ticket().await;
    assert!(
        url.contains("signature="),
        "the ticket URL is signed: {url}"
    );

    // No ticket, a forged one, one for another upload.
    problem(
        api.put(&format!("/v1/uploads/{id}"), b"data").await,
        StatusCode::FORBIDDEN,
    )
    .await;
    let forged = UploadSigner::new(b"not-the-servers-secret-at-all".to_vec())
        .expect("signer")
        .issue(
            converto_core::DEFAULT_TENANT,
            id.parse().expect("uuid"),
            Utc::now() + chrono::Duration::hours(1),
            10_000,
        );
    problem(
        api.put(&forged.path_and_query(), b"data").await,
        StatusCode::FORBIDDEN,
    )
    .await;
    let (other_id, _) = api.ticket().await;
    let stolen = url.replace(&id, &other_id);
    problem(api.put(&stolen, b"data").await, StatusCode::FORBIDDEN).await;
    // A larger size limit than was signed.
    let widened = url.replace("max_bytes=10000", "max_bytes=99999");
    assert_ne!(widened, url);
    problem(api.put(&widened, b"data").await, StatusCode::FORBIDDEN).await;

    // Expired: signed with the server's secret, with an expiry in the past.
    let signer = UploadSigner::new(SECRET).expect("signer");
    let expired = signer.issue(
        converto_core::DEFAULT_TENANT,
        id.parse().expect("uuid"),
        Utc::now() - chrono::Duration::seconds(1),
        10_000,
    );
    let p = problem(
        api.put(&expired.path_and_query(), b"data").await,
        StatusCode::FORBIDDEN,
    )
    .await;
    assert_eq!(p["type"], "urn:converto:problem:upload-ticket-expired");

    // Over the ticket's size: refused, nothing stored, by declared length and while streaming.
    let small = signer.issue(
        converto_core::DEFAULT_TENANT,
        id.parse().expect("uuid"),
        Utc::now() + chrono::Duration::hours(1),
        8,
    );
    problem(
        api.put(&small.path_and_query(), b"nine bytes").await,
        StatusCode::PAYLOAD_TOO_LARGE,
    )
    .await;
    let chunks = futures::stream::iter(
        ["12345", "67890"]
            .map(|c| Ok::<_, std::io::Error>(bytes::Bytes::from_static(c.as_bytes()))),
    );
    let resp = api
        .call(
            Request::put(small.path_and_query())
                .body(Body::from_stream(chunks))
                .expect("r"),
        )
        .await;
    problem(resp, StatusCode::PAYLOAD_TOO_LARGE).await;
    assert!(
        api.blob_keys()
            .await
            .iter()
            .all(|k| k.starts_with("system/")),
        "nothing stored: {:?}",
        api.blob_keys().await
    );

    // The ticket as issued works.
    let ok = api.put(&url, b"data").await;
    assert_eq!(ok.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn an_idempotency_key_binds_to_its_request() {
    let api = api();
    // Two uploads; the first is converted under key k.
    let (first, first_url) = api.ticket().await;
    let (second, second_url) = api.ticket().await;
    assert_eq!(
        api.put(&first_url, b"first").await.status(),
        StatusCode::CREATED
    );
    assert_eq!(
        api.put(&second_url, b"second").await.status(),
        StatusCode::CREATED
    );
    let body = json!({"upload_id": first, "source_format": "txt", "target_format": "upper", "labels": {"a": "1"}});
    let resp = api.submit_json("k", body.clone()).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let id = json_of(resp).await["id"].as_str().expect("id").to_owned();
    // A second conversion uses the second upload.
    let resp = api
        .submit_json(
            "other",
            json!({"upload_id": second, "source_format": "txt", "target_format": "upper"}),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let before = api.blob_keys().await;

    // The same request again: the first conversion.
    let replay = api.submit_json("k", body.clone()).await;
    assert_eq!(replay.status(), StatusCode::OK);
    assert_eq!(json_of(replay).await["id"], id.as_str());

    // The same key with anything else: refused, and nothing removed.
    for changed in [
        json!({"upload_id": second, "source_format": "txt", "target_format": "upper", "labels": {"a": "1"}}),
        json!({"upload_id": first, "source_format": "txt", "target_format": "parts", "labels": {"a": "1"}}),
        json!({"upload_id": first, "source_format": "txt", "target_format": "upper", "labels": {"a": "2"}}),
        json!({"upload_id": first, "source_format": "txt", "target_format": "upper", "labels": {"a": "1"}, "priority": 5}),
        json!({"upload_id": first, "source_format": "txt", "target_format": "upper", "labels": {"a": "1"}, "options": {"steps": 3}}),
    ] {
        let p = problem(
            api.submit_json("k", changed.clone()).await,
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
        assert_eq!(
            p["type"], "urn:converto:problem:idempotency-key-reused",
            "{changed}"
        );
        assert_eq!(
            api.blob_keys().await,
            before,
            "a refused replay removes nothing ({changed})"
        );
    }
    // Both uploads are still there for their conversions.
    for upload in [&first, &second] {
        let bytes = api
            .backends
            .blobs
            .get_bytes(&format!("tenants/default/uploads/{upload}"))
            .await
            .expect("upload kept");
        assert!(!bytes.is_empty());
    }
}

#[tokio::test]
async fn a_multipart_replay_is_compared_by_content() {
    let api = api();
    let resp = api.submit_form("m", "upper", b"same bytes").await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let first = json_of(resp).await;
    let id = first["id"].as_str().expect("id").to_owned();
    let before = api.blob_keys().await;

    let replay = api.submit_form("m", "upper", b"same bytes").await;
    assert_eq!(replay.status(), StatusCode::OK);
    assert_eq!(json_of(replay).await["id"], id.as_str());
    assert_eq!(
        api.blob_keys().await,
        before,
        "a replay's staged copy is removed"
    );

    problem(
        api.submit_form("m", "upper", b"other bytes").await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(
        api.blob_keys().await,
        before,
        "a refused replay leaves the first input alone"
    );
    let record = json_of(
        api.call(
            Request::get(format!("/v1/conversions/{id}"))
                .body(Body::empty())
                .expect("r"),
        )
        .await,
    )
    .await;
    assert_eq!(record["status"], "queued");
    assert_eq!(record["input"]["size"], 10);
}

/// A queue whose enqueue fails (the backend is down); everything else is the memory queue's.
#[derive(Debug, Default)]
struct EnqueueDown(converto_core::memory::MemoryJobQueue);

#[async_trait::async_trait]
impl JobQueue for EnqueueDown {
    async fn enqueue(&self, _job: JobSpec) -> Result<bool, QueueError> {
        Err(QueueError::backend("test", true, "the queue is down"))
    }
    async fn reserve_with(
        &self,
        max: usize,
        lease_for: std::time::Duration,
        wait: std::time::Duration,
        options: &converto_core::queue::ReserveOptions,
    ) -> Result<Vec<Lease>, QueueError> {
        self.0.reserve_with(max, lease_for, wait, options).await
    }
    async fn release(&self, lease: &Lease) -> Result<(), QueueError> {
        self.0.release(lease).await
    }
    async fn heartbeat(
        &self,
        lease: &Lease,
        lease_for: std::time::Duration,
    ) -> Result<Lease, QueueError> {
        self.0.heartbeat(lease, lease_for).await
    }
    async fn ack(&self, lease: &Lease) -> Result<(), QueueError> {
        self.0.ack(lease).await
    }
    async fn retry(
        &self,
        lease: &Lease,
        not_before: chrono::DateTime<Utc>,
    ) -> Result<(), QueueError> {
        self.0.retry(lease, not_before).await
    }
    async fn dead_letter(
        &self,
        lease: &Lease,
        error: &converto_core::ErrorInfo,
    ) -> Result<(), QueueError> {
        self.0.dead_letter(lease, error).await
    }
    async fn remove(&self, id: converto_core::ConversionId) -> Result<bool, QueueError> {
        self.0.remove(id).await
    }
    async fn contains(&self, id: converto_core::ConversionId) -> Result<bool, QueueError> {
        self.0.contains(id).await
    }
    async fn stats(&self) -> Result<QueueStats, QueueError> {
        self.0.stats().await
    }
}

/// The record is written before the enqueue: when the enqueue fails the conversion keeps its
/// input (the sweeper enqueues it later), and the client hears 503.
#[tokio::test]
async fn a_failed_enqueue_keeps_the_conversions_input() {
    let api = api_over(Backends {
        queue: std::sync::Arc::new(EnqueueDown::default()),
        ..Backends::in_memory()
    });
    problem(
        api.submit_form("e", "upper", b"keep me").await,
        StatusCode::SERVICE_UNAVAILABLE,
    )
    .await;
    let page = api
        .backends
        .store
        .list(&ListQuery::default())
        .await
        .expect("list");
    assert_eq!(page.items.len(), 1, "the record was written");
    let input = api
        .backends
        .blobs
        .get_bytes(&page.items[0].input_key)
        .await
        .expect("the conversion's input is kept");
    assert_eq!(&input[..], b"keep me");
}

/// An upload written around the ticket (a presigned object-storage PUT cannot bound its size)
/// is measured when submitted: over the limit, 413.
#[tokio::test]
async fn a_submission_checks_the_uploads_real_size() {
    let api = api();
    let (id, _) = api.ticket().await;
    api.backends
        .blobs
        .put_bytes(
            &format!("tenants/default/uploads/{id}"),
            bytes::Bytes::from(vec![b'x'; 10_001]),
        )
        .await
        .expect("put");
    problem(
        api.submit_json(
            "big",
            json!({"upload_id": id, "source_format": "txt", "target_format": "upper"}),
        )
        .await,
        StatusCode::PAYLOAD_TOO_LARGE,
    )
    .await;
    let page = api
        .backends
        .store
        .list(&ListQuery::default())
        .await
        .expect("list");
    assert!(
        page.items.is_empty(),
        "no conversion from an oversized upload"
    );
}

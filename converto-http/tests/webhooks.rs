//! Webhooks end to end: a real receiver (an axum server on 127.0.0.1, reached as `localhost`) checks every signature
//! with its own implementation of the Standard Webhooks scheme, written from the specification
//! (not from the code under test), and answers from a script.
//!
//! Every wait here is for an event or a state (a request arriving, an attempt recorded), never
//! a sleep; the deadline only turns a hang into a failure.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use converto_adapters::webhooks::{HttpWebhookTransport, WebhookClientConfig};
use converto_core::keys::{KeyStore as _, Scopes, generate_key};
use converto_core::memory::{MemoryJobQueue, MemoryKeyStore};
use converto_core::testkit::engine::fast_config;
use converto_core::testkit::scripted_registry;
use converto_core::webhook::{MemoryWebhookStore, WebhookConfig, WebhookStore, Webhooks};
use converto_core::{Backends, CancellationToken, Engine, JobQueue};
use converto_http::auth::Authenticator;
use converto_http::{ApiSettings, AppState, app};
use hmac::{KeyInit, Mac};
use http_body_util::BodyExt;
use parking_lot::Mutex;
use serde_json::{Value, json};
use tower::ServiceExt;

const DEADLINE: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------- the receiver

#[derive(Debug, Clone)]
struct Received {
    path: String,
    id: String,
    timestamp: String,
    signature: String,
    body: Bytes,
}

#[derive(Default)]
struct ReceiverState {
    /// Per path, the statuses to answer in turn (then 200).
    script: Mutex<HashMap<String, VecDeque<u16>>>,
    got: Mutex<Vec<Received>>,
    arrived: tokio::sync::Notify,
}

struct Receiver {
    base: String,
    port: u16,
    state: Arc<ReceiverState>,
}

async fn receive(
    axum::extract::State(state): axum::extract::State<Arc<ReceiverState>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    let h = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    state.got.lock().push(Received {
        path: path.clone(),
        id: h("webhook-id"),
        timestamp: h("webhook-timestamp"),
        signature: h("webhook-signature"),
        body,
    });
    state.arrived.notify_waiters();
    if path == "/redirect" {
        return (StatusCode::FOUND, [(header::LOCATION, "/target")]).into_response();
    }
    let status = state
        .script
        .lock()
        .get_mut(&path)
        .and_then(VecDeque::pop_front)
        .unwrap_or(200);
    StatusCode::from_u16(status)
        .unwrap_or(StatusCode::OK)
        .into_response()
}

impl Receiver {
    async fn start() -> Self {
        let state = Arc::new(ReceiverState::default());
        let router = Router::new()
            .fallback(receive)
            .with_state(Arc::clone(&state));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move { axum::serve(listener, router).await });
        Self {
            base: format!("http://localhost:{port}"),
            port,
            state,
        }
    }

    fn script(&self, path: &str, statuses: &[u16]) {
        self.state
            .script
            .lock()
            .insert(path.to_owned(), statuses.iter().copied().collect());
    }

    fn on(&self, path: &str) -> Vec<Received> {
        self.state
            .got
            .lock()
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }

    /// Waits until `path` has received `n` requests.
    async fn wait_for(&self, path: &str, n: usize) -> Vec<Received> {
        tokio::time::timeout(DEADLINE, async {
            loop {
                let arrived = self.state.arrived.notified();
                tokio::pin!(arrived);
                arrived.as_mut().enable();
                let got = self.on(path);
                if got.len() >= n {
                    return got;
                }
                arrived.await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{path} did not receive {n} requests"))
    }
}

/// How many of the header's `v1,` signatures are `secret`'s, per the specification: the key is
/// the base64-decoded part after `whsec_`; the signed content `{id}.{timestamp}.{body}`.
fn signatures_by(secret: &str, r: &Received) -> usize {
    let key = STANDARD
        .decode(secret.strip_prefix("whsec_").expect("whsec_ prefix"))
        .expect("base64 secret");
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).expect("key");
    mac.update(format!("{}.{}.", r.id, r.timestamp).as_bytes());
    mac.update(&r.body);
    let expected = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
    r.signature.split(' ').filter(|s| *s == expected).count()
}

// ---------------------------------------------------------------- the service

struct Api {
    router: Router,
    acme: String,
    globex: String,
    _stop: tokio_util::sync::DropGuard,
}

fn webhooks(allow: &[&str], store: Arc<dyn WebhookStore>, queue: Arc<dyn JobQueue>) -> Webhooks {
    let client = WebhookClientConfig {
        allow: allow.iter().map(|s| (*s).to_owned()).collect(),
        ..WebhookClientConfig::default()
    };
    let transport = HttpWebhookTransport::new(&client).expect("client");
    let config = WebhookConfig {
        // Tiny delays: the tests count attempts and their order, never time.
        backoff_base: Duration::from_millis(2),
        ..WebhookConfig::default()
    };
    Webhooks::new(store, queue, Arc::new(transport), config)
}

/// The service on memory backends, the loopback receiver allow-listed (or not), workers and
/// deliveries running, tenants `acme` and `globex` with a key each.
async fn api(allow: &[&str]) -> Api {
    let w = webhooks(
        allow,
        Arc::new(MemoryWebhookStore::new()),
        Arc::new(MemoryJobQueue::new()),
    );
    let (registry, _) = scripted_registry();
    let engine = Engine::builder()
        .backends(Backends::in_memory())
        .registry(registry)
        .config(fast_config())
        .webhooks(Arc::new(w))
        .build()
        .expect("engine");
    let workers = engine.start_workers();
    let stop = CancellationToken::new();
    let guard = stop.clone().drop_guard();
    tokio::spawn(async move {
        stop.cancelled().await;
        let _ = workers.shutdown().await;
    });
    let keys = Arc::new(MemoryKeyStore::new());
    let mut secrets = Vec::new();
    for tenant in ["acme", "globex"] {
        let k = generate_key(tenant, Scopes::ALL, None).expect("key");
        keys.create(k.record).await.expect("key");
        secrets.push(k.secret.expose().to_owned());
    }
    let state = AppState::new(engine.clone(), ApiSettings::default())
        .with_auth(Authenticator::anonymous().with_keys(keys));
    Api {
        router: app(state),
        globex: secrets.pop().expect("key"),
        acme: secrets.pop().expect("key"),
        _stop: guard,
    }
}

impl Api {
    async fn call(&self, key: &str, req: Request<Body>) -> (StatusCode, Value) {
        let mut req = req;
        req.headers_mut().insert(
            header::AUTHORIZATION,
            format!("Bearer {key}").parse().expect("header"),
        );
        let resp = self.router.clone().oneshot(req).await.expect("infallible");
        let status = resp.status();
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    async fn post_json(&self, key: &str, uri: &str, body: Value) -> (StatusCode, Value) {
        let req = Request::post(uri)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .expect("request");
        self.call(key, req).await
    }

    async fn get(&self, key: &str, uri: &str) -> (StatusCode, Value) {
        self.call(key, Request::get(uri).body(Body::empty()).expect("request"))
            .await
    }

    /// Submits a small `upper` conversion with these extra form fields.
    async fn submit(&self, key: &str, fields: &[(&str, &str)]) -> (StatusCode, Value) {
        let boundary = "----webhooksboundary";
        let mut body = String::new();
        for (name, value) in [("target_format", "upper")].iter().chain(fields) {
            body.push_str(&format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            ));
        }
        body.push_str(&format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.txt\"\r\n\
             Content-Type: text/plain\r\n\r\nhello hooks\r\n--{boundary}--\r\n"
        ));
        let req = Request::post("/v1/conversions")
            .header(
                header::CONTENT_TYPE,
                format!("multipart/form-data; boundary={boundary}"),
            )
            .body(Body::from(body))
            .expect("request");
        self.call(key, req).await
    }

    /// Registers an endpoint for acme; returns (id, secret).
    async fn endpoint(&self, url: &str) -> (String, String) {
        let (status, ep) = self
            .post_json(&self.acme, "/v1/webhooks", json!({ "url": url }))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{ep}");
        (
            ep["id"].as_str().expect("id").to_owned(),
            ep["secret"].as_str().expect("secret").to_owned(),
        )
    }

    /// Waits until acme's conversion `id` has `n` attempts recorded, the last one final.
    async fn deliveries(&self, id: &str, n: usize) -> Vec<Value> {
        let uri = format!("/v1/conversions/{id}/deliveries");
        tokio::time::timeout(DEADLINE, async {
            loop {
                let (status, body) = self.get(&self.acme, &uri).await;
                assert_eq!(status, StatusCode::OK, "{body}");
                let items = body["items"].as_array().cloned().unwrap_or_default();
                if items.len() >= n && items.last().is_some_and(|a| a["outcome"] != "retrying") {
                    return items;
                }
                // The attempts live in the store (no event announces them): look again.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("conversion {id} did not get {n} final attempts"))
    }
}

fn id_of(v: &Value) -> String {
    v["id"].as_str().expect("id").to_owned()
}

// ---------------------------------------------------------------- the tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_message_is_retried_with_one_id_until_delivered() {
    let rx = Receiver::start().await;
    let api = api(&["127.0.0.0/8"]).await;
    rx.script("/hook", &[500, 500, 200]);
    let (endpoint, secret) = api.endpoint(&format!("{}/hook", rx.base)).await;
    assert!(secret.starts_with("whsec_"));
    let (status, rec) = api.submit(&api.acme, &[]).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{rec}");
    let id = id_of(&rec);

    let got = rx.wait_for("/hook", 3).await;
    assert_eq!(got.len(), 3);
    assert!(got[0].id.starts_with("msg_"));
    assert!(got.iter().all(|r| r.id == got[0].id), "one logical message");
    for r in &got {
        assert_eq!(signatures_by(&secret, r), 1, "bad signature: {r:?}");
        assert!(r.timestamp.parse::<i64>().is_ok());
        let body: Value = serde_json::from_slice(&r.body).expect("json body");
        assert_eq!(body["id"], id.as_str());
        assert_eq!(body["status"], "succeeded");
    }

    let attempts = api.deliveries(&id, 3).await;
    let outcomes: Vec<_> = attempts.iter().map(|a| a["outcome"].clone()).collect();
    assert_eq!(
        outcomes,
        [json!("retrying"), json!("retrying"), json!("delivered")]
    );
    let codes: Vec<_> = attempts.iter().map(|a| a["status_code"].clone()).collect();
    assert_eq!(codes, [json!(500), json!(500), json!(200)]);
    assert!(
        attempts
            .iter()
            .all(|a| a["webhook_id"] == got[0].id.as_str())
    );
    assert!(
        attempts
            .iter()
            .all(|a| a["endpoint_id"] == endpoint.as_str())
    );
    assert_eq!(attempts[0]["event"], "conversion.succeeded");
    assert!(attempts[0]["next_retry_at"].is_string());

    // Another tenant's id is unknown, like everywhere else.
    let (status, _) = api
        .get(&api.globex, &format!("/v1/conversions/{id}/deliveries"))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = api
        .get(&api.globex, &format!("/v1/webhooks/{endpoint}"))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, list) = api.get(&api.acme, "/v1/webhooks").await;
    assert_eq!(list["items"].as_array().map(Vec::len), Some(1));
    assert!(
        list["items"][0].get("secret").is_none(),
        "secrets are shown once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversions_own_url_is_signed_with_the_tenant_secret_and_can_hear_the_start() {
    let rx = Receiver::start().await;
    let api = api(&["127.0.0.0/8"]).await;
    let (status, s) = api
        .post_json(&api.acme, "/v1/webhook-secret/rotate", json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{s}");
    let secret = s["secret"].as_str().expect("secret").to_owned();
    let url = format!("{}/own", rx.base);
    let (status, rec) = api
        .submit(
            &api.acme,
            &[("webhook_url", &url), ("webhook_on_start", "true")],
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{rec}");
    let got = rx.wait_for("/own", 2).await;
    let mut statuses: Vec<String> = got
        .iter()
        .map(|r| {
            assert_eq!(signatures_by(&secret, r), 1, "bad signature: {r:?}");
            let body: Value = serde_json::from_slice(&r.body).expect("json");
            assert_eq!(body["id"], id_of(&rec).as_str());
            body["status"].as_str().unwrap_or("").to_owned()
        })
        .collect();
    statuses.sort();
    assert_eq!(statuses, ["running", "succeeded"]);
    assert_ne!(got[0].id, got[1].id, "two events, two messages");

    // JSON submissions take the same keys; a bad URL is a 400.
    for bad in ["ftp://example.com/x", "not a url", "http://10.1.2.3/x"] {
        let (status, body) = api.submit(&api.acme, &[("webhook_url", bad)]).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_disables_the_endpoint() {
    let rx = Receiver::start().await;
    let api = api(&["127.0.0.0/8"]).await;
    rx.script("/gone", &[410]);
    let (endpoint, _) = api.endpoint(&format!("{}/gone", rx.base)).await;
    let (_, rec) = api.submit(&api.acme, &[]).await;
    let attempts = api.deliveries(&id_of(&rec), 1).await;
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0]["outcome"], "disabled");
    assert_eq!(attempts[0]["status_code"], 410);
    let (_, ep) = api
        .get(&api.acme, &format!("/v1/webhooks/{endpoint}"))
        .await;
    assert_eq!(ep["enabled"], false, "{ep}");
    assert_eq!(rx.on("/gone").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_addresses_are_refused_and_redirects_not_followed() {
    let rx = Receiver::start().await;
    // No allow-list: the loopback receiver is off limits.
    let strict = api(&[]).await;
    // IP literals do not have the documented shape (a host name) and are refused at once.
    for url in [
        format!("http://127.0.0.1:{}/x", rx.port),
        "http://[::1]/x".to_owned(),
        "http://169.254.169.254/latest".to_owned(),
        "file:///etc/passwd".to_owned(),
    ] {
        let (status, body) = strict
            .post_json(&strict.acme, "/v1/webhooks", json!({ "url": url }))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{url}: {body}");
    }
    // A name is checked after resolution: `localhost` is accepted at registration, and the
    // delivery is refused before any connection.
    let (_, _) = strict
        .endpoint(&format!("http://localhost:{}/named", rx.port))
        .await;
    let (_, rec) = strict.submit(&strict.acme, &[]).await;
    let attempts = strict.deliveries(&id_of(&rec), 1).await;
    assert_eq!(attempts.len(), 1, "refusals are not retried");
    assert_eq!(attempts[0]["outcome"], "failed");
    let error = attempts[0]["error"].as_str().unwrap_or("");
    assert!(error.contains("loopback"), "{error}");
    assert!(rx.on("/named").is_empty(), "nothing reached the receiver");

    // Allow-listed, a redirect is an answer, not followed.
    let open = api(&["127.0.0.0/8"]).await;
    open.endpoint(&format!("{}/redirect", rx.base)).await;
    let (_, rec) = open.submit(&open.acme, &[]).await;
    let attempts = open.deliveries(&id_of(&rec), 1).await;
    assert_eq!(attempts[0]["status_code"], 302);
    assert_eq!(attempts[0]["outcome"], "failed");
    assert_eq!(rx.on("/redirect").len(), 1);
    assert!(rx.on("/target").is_empty(), "the redirect was followed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_secret_signs_beside_the_new_one() {
    let rx = Receiver::start().await;
    let api = api(&["127.0.0.0/8"]).await;
    let (endpoint, old) = api.endpoint(&format!("{}/rotated", rx.base)).await;
    let (status, ep) = api
        .post_json(
            &api.acme,
            &format!("/v1/webhooks/{endpoint}/rotate"),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{ep}");
    let new = ep["secret"].as_str().expect("secret").to_owned();
    assert_ne!(new, old);
    assert!(ep["previous_secret_expires_at"].is_string());
    api.submit(&api.acme, &[]).await;
    let got = rx.wait_for("/rotated", 1).await;
    assert_eq!(
        got[0].signature.split(' ').count(),
        2,
        "{:?}",
        got[0].signature
    );
    assert_eq!(signatures_by(&new, &got[0]), 1);
    assert_eq!(signatures_by(&old, &got[0]), 1);
}

/// A delivery queued by one process is made by the next one over the same SQLite files: the
/// first never runs its deliveries (as if killed right after the conversion finished).
#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_delivery_survives_a_restart() {
    use converto_adapters::sqlite::SqliteBackend;
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let db = format!("sqlite://{}/converto.db", dir.path().display());
    let deliveries_db = format!("{db}.webhooks");
    let url = format!("{}/restart", rx.base);

    let id = {
        let main = SqliteBackend::connect(db.as_str()).await.expect("sqlite");
        let q = SqliteBackend::connect(deliveries_db.as_str())
            .await
            .expect("sqlite");
        let w = Arc::new(webhooks(&["127.0.0.0/8"], main.webhooks(), q.queue()));
        w.create_endpoint("default", &url, false)
            .await
            .expect("endpoint");
        let (registry, _) = scripted_registry();
        let mut backends = Backends::in_memory();
        backends.store = main.store();
        backends.queue = main.queue();
        let engine = Engine::builder()
            .backends(backends)
            .registry(registry)
            .config(fast_config())
            .webhooks(Arc::clone(&w))
            .build()
            .expect("engine");
        // The conversion workers only: the deliveries are queued, not made.
        let stop = CancellationToken::new();
        let workers = tokio::spawn({
            let (e, s) = (engine.clone(), stop.clone());
            async move { e.run_workers(s).await }
        });
        let sub = converto_core::Submission::new(
            "upper".parse().expect("format"),
            converto_core::SubmitInput::bytes(&b"durable"[..], Some("a.txt".into())),
        );
        let rec = engine.submit(sub).await.expect("submit").conversion;
        let done = tokio::time::timeout(DEADLINE, engine.wait(rec.id))
            .await
            .expect("finished in time")
            .expect("wait");
        assert_eq!(done.status, converto_core::Status::Succeeded);
        stop.cancel();
        workers.await.expect("join").expect("workers");
        assert_eq!(q.queue().stats().await.expect("stats").ready, 1);
        main.close().await;
        q.close().await;
        rec.id
    };
    assert!(rx.on("/restart").is_empty());

    // The next process: deliveries only.
    let main = SqliteBackend::connect(db.as_str()).await.expect("sqlite");
    let q = SqliteBackend::connect(deliveries_db.as_str())
        .await
        .expect("sqlite");
    let w = Arc::new(webhooks(&["127.0.0.0/8"], main.webhooks(), q.queue()));
    let stop = CancellationToken::new();
    let run = tokio::spawn(Arc::clone(&w).run(stop.clone()));
    let got = rx.wait_for("/restart", 1).await;
    let body: Value = serde_json::from_slice(&got[0].body).expect("json");
    assert_eq!(body["id"], id.to_string());
    let attempts = tokio::time::timeout(DEADLINE, async {
        loop {
            let a = w.deliveries("default", id).await.expect("attempts");
            if !a.is_empty() {
                return a;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("attempt recorded");
    assert_eq!(attempts[0].status_code, Some(200));
    stop.cancel();
    run.await.expect("run");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spec_documents_webhooks() {
    let api = api(&[]).await;
    let (status, spec) = api.get(&api.acme, "/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    for (path, method) in [
        ("/v1/webhooks", "post"),
        ("/v1/webhooks", "get"),
        ("/v1/webhooks/{id}", "get"),
        ("/v1/webhooks/{id}", "delete"),
        ("/v1/webhooks/{id}/rotate", "post"),
        ("/v1/webhook-secret/rotate", "post"),
        ("/v1/conversions/{id}/deliveries", "get"),
    ] {
        assert!(
            spec["paths"][path][method].is_object(),
            "{method} {path} documented"
        );
    }
    let schemas = &spec["components"]["schemas"];
    assert!(schemas["SubmitJson"]["properties"]["webhook_url"].is_object());
    assert!(schemas["SubmitForm"]["properties"]["webhook_url"].is_object());
    assert!(schemas["DeliveryView"]["properties"]["next_retry_at"].is_object());
}

//! Isolation through the API: two tenants with their own API keys run every endpoint against
//! each other's conversions, uploads and artifacts, and see nothing of them: another tenant's
//! id answers exactly as an unknown one.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, Response, StatusCode, header};
use converto_core::keys::{KeyStore, Scopes, generate_key};
use converto_core::memory::MemoryKeyStore;
use converto_core::testkit::engine::{Workers, engine_with, fast_config};
use converto_core::{Backends, ConversionId};
use converto_http::auth::Authenticator;
use converto_http::{ApiSettings, AppState, app};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

struct Api {
    router: Router,
}

impl Api {
    async fn call(
        &self,
        key: &str,
        req: axum::http::request::Builder,
        body: Body,
    ) -> Response<Body> {
        let req = req
            .header(header::AUTHORIZATION, format!("Bearer {key}"))
            .body(body)
            .expect("request");
        self.router.clone().oneshot(req).await.expect("infallible")
    }
}

async fn json_of(resp: Response<Body>) -> Value {
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    serde_json::from_slice(&bytes).unwrap_or(Value::Null)
}

/// A key store holding one key for `acme` and one for `globex`, and the two keys.
async fn two_tenants() -> (Arc<MemoryKeyStore>, String, String) {
    let keys = Arc::new(MemoryKeyStore::new());
    let mut secret = Vec::new();
    for tenant in ["acme", "globex"] {
        let generated = generate_key(tenant, Scopes::ALL, None).expect("key");
        keys.create(generated.record).await.expect("store the key");
        secret.push(generated.secret.expose().to_owned());
    }
    let globex = secret.pop().unwrap_or_default();
    let acme = secret.pop().unwrap_or_default();
    (keys, acme, globex)
}

/// Submits `text` for `upper` as multipart; returns the record.
async fn submit(api: &Api, key: &str, text: &str) -> Value {
    let boundary = "----tenantsboundary";
    let body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"target_format\"\r\n\r\nupper\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.txt\"\r\n\
         Content-Type: text/plain\r\n\r\n{text}\r\n--{boundary}--\r\n"
    );
    let resp = api
        .call(
            key,
            Request::post("/v1/conversions").header(
                header::CONTENT_TYPE,
                format!("multipart/form-data; boundary={boundary}"),
            ),
            Body::from(body),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    json_of(resp).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_endpoint_shows_one_tenant_another_tenants_data() {
    let backends = Backends::in_memory();
    let (engine, _) = engine_with(&backends, fast_config());
    let workers = Workers::start(&engine);
    let (keys, acme, globex) = two_tenants().await;
    let (acme, globex) = (acme.as_str(), globex.as_str());
    let state = AppState::new(engine.clone(), ApiSettings::default())
        .with_auth(Authenticator::anonymous().with_keys(keys));
    let api = Api { router: app(state) };

    let rec = submit(&api, acme, "acme's secret").await;
    let id = rec["id"].as_str().expect("id").to_owned();
    // Let it finish, as acme sees it.
    let done = engine
        .tenant("acme")
        .wait(id.parse().expect("id"))
        .await
        .expect("wait");
    let artifact = done.artifacts[0].name.clone();

    // Every endpoint naming acme's conversion answers globex as for an unknown id.
    let unknown = ConversionId::new().to_string();
    for probe in [id.as_str(), unknown.as_str()] {
        for (method, path) in [
            ("GET", format!("/v1/conversions/{probe}")),
            ("GET", format!("/v1/conversions/{probe}/events")),
            (
                "GET",
                format!("/v1/conversions/{probe}/artifacts/{artifact}"),
            ),
            ("POST", format!("/v1/conversions/{probe}/cancel")),
            ("DELETE", format!("/v1/conversions/{probe}")),
        ] {
            let resp = api
                .call(
                    globex,
                    Request::builder().method(method).uri(&path),
                    Body::empty(),
                )
                .await;
            assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{method} {path}");
            let body = json_of(resp).await;
            assert!(
                !body.to_string().contains("acme"),
                "{method} {path} named the other tenant: {body}"
            );
        }
    }
    // Lists show each tenant its own.
    let listed = |key| {
        let api = &api;
        async move {
            let resp = api
                .call(
                    key,
                    Request::get("/v1/conversions?limit=1000"),
                    Body::empty(),
                )
                .await;
            assert_eq!(resp.status(), StatusCode::OK);
            json_of(resp).await["items"]
                .as_array()
                .expect("items")
                .iter()
                .map(|c| c["id"].as_str().unwrap_or_default().to_owned())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(listed(acme).await, vec![id.clone()]);
    assert!(listed(globex).await.is_empty());

    // Uploads: globex can use neither acme's upload URL nor its upload id.
    let ticket = json_of(
        api.call(acme, Request::post("/v1/uploads"), Body::empty())
            .await,
    )
    .await;
    let (upload, url) = (
        ticket["upload_id"].as_str().expect("upload id").to_owned(),
        ticket["url"].as_str().expect("url").to_owned(),
    );
    let stolen = api
        .call(globex, Request::put(&url), Body::from("globex's bytes"))
        .await;
    assert_eq!(stolen.status(), StatusCode::FORBIDDEN);
    let put = api
        .call(acme, Request::put(&url), Body::from("acme's upload"))
        .await;
    assert_eq!(put.status(), StatusCode::CREATED);
    let from_upload = |key| {
        let (api, upload) = (&api, upload.clone());
        async move {
            api.call(
                key,
                Request::post("/v1/conversions").header(header::CONTENT_TYPE, "application/json"),
                Body::from(
                    json!({"upload_id": upload, "target_format": "upper", "file_name": "u.txt"})
                        .to_string(),
                ),
            )
            .await
            .status()
        }
    };
    assert_eq!(from_upload(globex).await, StatusCode::NOT_FOUND);
    assert_eq!(from_upload(acme).await, StatusCode::ACCEPTED);

    // The same idempotency key in two tenants makes two conversions.
    let idem = |key| {
        let (api, upload) = (&api, upload.clone());
        async move {
            let resp = api
                .call(
                    key,
                    Request::post("/v1/conversions")
                        .header(header::CONTENT_TYPE, "application/json")
                        .header("idempotency-key", "same-key"),
                    Body::from(
                        json!({"upload_id": upload, "target_format": "upper", "file_name": "u.txt"})
                            .to_string(),
                    ),
                )
                .await;
            resp.status()
        }
    };
    assert_eq!(idem(acme).await, StatusCode::ACCEPTED);
    assert_eq!(
        idem(globex).await,
        StatusCode::NOT_FOUND,
        "globex has no such upload"
    );

    // Acme still has its conversion: nothing globex did touched it.
    let resp = api
        .call(
            acme,
            Request::get(format!("/v1/conversions/{id}")),
            Body::empty(),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    // Signed links: acme's record carries one per artifact, which works without a credential,
    // for that artifact only, for acme only, until it expires.
    let rec = json_of(
        api.call(
            acme,
            Request::get(format!("/v1/conversions/{id}")),
            Body::empty(),
        )
        .await,
    )
    .await;
    let signed = rec["artifacts"][0]["signed_url"]
        .as_str()
        .expect("a signed url")
        .to_owned();
    let anonymous = |uri: String| {
        let router = api.router.clone();
        async move {
            let req = Request::get(&uri).body(Body::empty()).expect("request");
            router.oneshot(req).await.expect("infallible")
        }
    };
    let resp = anonymous(signed.clone()).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    assert!(bytes.starts_with(b"ACME'S SECRET"), "{bytes:?}");
    for (what, altered) in [
        (
            "another tenant",
            signed.replace("tenant=acme", "tenant=globex"),
        ),
        (
            "another artifact",
            signed.replace(&format!("/artifacts/{artifact}"), "/artifacts/x.txt"),
        ),
        ("a later expiry", signed.replace("expires=", "expires=9")),
    ] {
        assert_ne!(altered, signed, "{what}");
        let status = anonymous(altered).await.status();
        assert!(
            status == StatusCode::FORBIDDEN || status == StatusCode::NOT_FOUND,
            "{what}: {status}"
        );
    }
    let acme_view = engine.tenant("acme");
    let record = acme_view
        .get(id.parse().expect("id"))
        .await
        .expect("record");
    let expired = acme_view
        .artifact_link(&record, &artifact, std::time::Duration::ZERO)
        .await
        .expect("link");
    let status = anonymous(format!(
        "/v1/conversions/{id}/artifacts/{artifact}?{expired}"
    ))
    .await
    .status();
    assert_eq!(status, StatusCode::FORBIDDEN, "an expired link");
    // Without a signature the artifact needs a credential.
    let bare = anonymous(format!("/v1/conversions/{id}/artifacts/{artifact}")).await;
    assert_eq!(bare.status(), StatusCode::UNAUTHORIZED);

    // And every blob is under its tenant's prefix.
    for meta in backends.blobs.list("").await.expect("list") {
        assert!(
            meta.key.starts_with("tenants/acme/") || meta.key.starts_with("system/"),
            "{}",
            meta.key
        );
    }
    workers.stop().await;
}

/// Per-tenant limits: a request rate (429 with Retry-After and RateLimit headers), the number
/// of conversions waiting, the highest priority; each tenant against its own limits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_tenant_is_held_to_its_own_limits() {
    use converto_http::quota::{Limits, Quotas, TenantLimits};
    let backends = Backends::in_memory();
    // No workers: conversions stay queued.
    let (engine, _) = engine_with(&backends, fast_config());
    let (keys, acme, globex) = two_tenants().await;
    let (acme, globex) = (acme.as_str(), globex.as_str());
    // Acme: a bucket of 4 requests that refills once in 1,000 s (so the test never sees a
    // refill, however slow the machine), one waiting conversion, priority up to 5.
    let tight = TenantLimits {
        requests_per_second: 0.001,
        burst: 4,
        max_queued: 1,
        max_priority: 5,
        ..TenantLimits::default()
    };
    let limits = Limits {
        defaults: TenantLimits::default(),
        tenants: [("acme".to_owned(), tight)].into(),
    };
    let state = AppState::new(engine, ApiSettings::default())
        .with_auth(Authenticator::anonymous().with_keys(keys))
        .with_quotas(Quotas::new(limits));
    let api = Api { router: app(state) };
    let submit_with_priority = |key, priority: i32| {
        let api = &api;
        async move {
            let boundary = "----limitsboundary";
            let body = format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"target_format\"\r\n\r\nupper\r\n\
                 --{boundary}\r\nContent-Disposition: form-data; name=\"priority\"\r\n\r\n{priority}\r\n\
                 --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.txt\"\r\n\
                 Content-Type: text/plain\r\n\r\nhello\r\n--{boundary}--\r\n"
            );
            api.call(
                key,
                Request::post("/v1/conversions").header(
                    header::CONTENT_TYPE,
                    format!("multipart/form-data; boundary={boundary}"),
                ),
                Body::from(body),
            )
            .await
        }
    };
    // 1: above the highest priority.
    let resp = submit_with_priority(acme, 6).await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    // 2: accepted; 3: a second waiting conversion is one too many.
    assert_eq!(
        submit_with_priority(acme, 5).await.status(),
        StatusCode::ACCEPTED
    );
    let resp = submit_with_priority(acme, 0).await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        json_of(resp).await["type"],
        "urn:converto:problem:too-many-queued"
    );
    // 4: the last request of the bucket, and it says so.
    let resp = api
        .call(acme, Request::get("/v1/conversions"), Body::empty())
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let ratelimit = resp.headers()["ratelimit"]
        .to_str()
        .expect("header")
        .to_owned();
    assert!(ratelimit.contains("r=0"), "{ratelimit}");
    assert!(resp.headers().contains_key("ratelimit-policy"));
    // 5: over the rate.
    let resp = api
        .call(acme, Request::get("/v1/conversions"), Body::empty())
        .await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = resp.headers()[header::RETRY_AFTER]
        .to_str()
        .expect("header")
        .parse()
        .expect("seconds");
    assert!(retry >= 1);
    assert_eq!(
        resp.headers()[header::CONTENT_TYPE],
        "application/problem+json"
    );
    // Globex has its own, default, limits.
    for _ in 0..5 {
        let resp = api
            .call(globex, Request::get("/v1/conversions"), Body::empty())
            .await;
        assert_eq!(resp.status(), StatusCode::OK);
    }
    assert_eq!(
        submit_with_priority(globex, 0).await.status(),
        StatusCode::ACCEPTED
    );
    assert_eq!(
        submit_with_priority(globex, 0).await.status(),
        StatusCode::ACCEPTED
    );
}

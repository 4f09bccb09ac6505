//! Authentication: API keys (made with the real binary's `keys` commands) and JWTs (RS256,
//! ES256, EdDSA from PEM files and from a JWKS served by a local test server), through `app()`
//! with `oneshot` and through a running `converto serve`.
//!
//! The JWT key pairs in tests/data/auth were made with `openssl` for these tests only; nothing
//! is downloaded.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use base64::Engine as _;
use common::converto;
use converto_core::Backends;
use converto_core::keys::{KeyHash, KeyStore, KeyStoreError, NewApiKey, Scopes, generate_key};
use converto_core::memory::MemoryKeyStore;
use converto_core::testkit::engine::{engine_with, fast_config};
use converto_http::auth::jwt::{JwtSettings, JwtVerifier};
use converto_http::auth::{AuthMode, Authenticator, Principal};
use converto_http::{ApiSettings, AppState, app};
use http_body_util::BodyExt;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};
use tower::ServiceExt;

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/auth")
        .join(name)
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(data(name)).expect("test key")
}

/// The API over in-memory backends, checking credentials with `auth`.
fn api(auth: Authenticator) -> Router {
    let (engine, _) = engine_with(&Backends::in_memory(), fast_config());
    app(AppState::new(engine, ApiSettings::default()).with_auth(auth))
}

/// A router that answers the principal it was given, behind the auth middleware.
fn whoami(auth: Authenticator) -> Router {
    let auth = Arc::new(auth);
    Router::new()
        .route(
            "/v1/whoami",
            axum::routing::get(|p: Principal| async move {
                axum::Json(json!({"tenant": p.tenant, "scopes": p.scopes.to_string(), "subject": p.subject}))
            })
            .post(|| async { "changed" }),
        )
        .layer(axum::middleware::from_fn_with_state(
            auth,
            converto_http::auth::authenticate,
        ))
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

async fn call(router: &Router, method: Method, path: &str, token: Option<&str>) -> Answer {
    let mut req = Request::builder().method(method.clone()).uri(path);
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let body = if method == Method::POST {
        req = req.header(header::CONTENT_TYPE, "application/json");
        Body::from("{}")
    } else {
        Body::empty()
    };
    let resp = router
        .clone()
        .oneshot(req.body(body).expect("request"))
        .await
        .expect("infallible");
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Answer {
        status,
        headers,
        body,
    }
}

fn challenge(a: &Answer) -> String {
    a.headers
        .get(header::WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

/// A 401 problem that says the given token is not valid.
fn assert_invalid_token(a: &Answer, what: &str) {
    assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{what}: {:?}", a.body);
    assert_eq!(
        a.headers.get(header::CONTENT_TYPE).map(|v| v.as_bytes()),
        Some(&b"application/problem+json"[..]),
        "{what}"
    );
    let c = challenge(a);
    assert!(
        c.starts_with("Bearer") && c.contains("error=\"invalid_token\""),
        "{what}: {c}"
    );
}

// ---- API keys ---------------------------------------------------------------------------------

/// `keys create` prints the key alone on stdout.
fn create_key(data_dir: &Path, args: &[&str]) -> String {
    let out = converto(data_dir, &[&["keys", "create"], args].concat());
    assert!(
        out.status.success(),
        "keys create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).expect("utf-8");
    let key = stdout
        .strip_suffix('\n')
        .expect("one line ending in a newline");
    assert!(
        key.len() == 42
            && key.starts_with("cvt_")
            && key[4..].bytes().all(|b| b.is_ascii_alphanumeric()),
        "stdout is not exactly a key: {stdout:?}"
    );
    key.to_owned()
}

/// The id of the listed key whose prefix `key` starts with.
fn listed_id(listing: &str, key: &str) -> String {
    let line = listing
        .lines()
        .find(|l| l.contains(&format!("{}…", &key[..10])))
        .unwrap_or_else(|| panic!("key not listed:\n{listing}"));
    line.split_whitespace().next().expect("id").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_made_by_the_binary_authenticate_until_revoked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let reader = create_key(dir.path(), &["--tenant", "acme", "--scopes", "read"]);
    let writer = create_key(
        dir.path(),
        &[
            "--tenant",
            "acme",
            "--scopes",
            "read,write",
            "--expires",
            "30d",
        ],
    );
    assert_ne!(reader, writer);

    let out = converto(dir.path(), &["keys", "list"]);
    assert!(out.status.success());
    let listing = String::from_utf8(out.stdout).expect("utf-8");
    assert!(
        !listing.contains(&reader) && !listing.contains(&writer),
        "{listing}"
    );
    let reader_id = listed_id(&listing, &reader);
    let writer_line = listing
        .lines()
        .find(|l| l.contains(&writer[..10]))
        .expect("writer listed");
    assert!(
        writer_line.contains("acme") && writer_line.contains("read,write"),
        "{writer_line}"
    );

    // The service's view of the same database.
    let db = dir.path().join("converto.db");
    let store = converto_adapters::sqlite::SqliteBackend::connect(db.to_str().expect("utf-8"))
        .await
        .expect("open the store")
        .keys();
    let router = api(Authenticator::anonymous().with_keys(store));

    let a = call(&router, Method::GET, "/v1/conversions", Some(&reader)).await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    // Read-only: no POST.
    let a = call(&router, Method::POST, "/v1/conversions", Some(&reader)).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{:?}", a.body);
    assert!(challenge(&a).contains("insufficient_scope"));
    // Read-write: the handler itself answers (the empty body is not a valid submission).
    let a = call(&router, Method::POST, "/v1/conversions", Some(&writer)).await;
    assert!(
        !matches!(a.status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN),
        "{:?}",
        a.status
    );
    // No credentials: 401 with a bare challenge.
    let a = call(&router, Method::GET, "/v1/conversions", None).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert!(challenge(&a).starts_with("Bearer") && !challenge(&a).contains("error="));
    // Metrics need admin; health does not need anything.
    let a = call(&router, Method::GET, "/metrics", Some(&writer)).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    let a = call(&router, Method::GET, "/healthz", None).await;
    assert_eq!(a.status, StatusCode::OK);

    let out = converto(dir.path(), &["keys", "revoke", &reader_id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let a = call(&router, Method::GET, "/v1/conversions", Some(&reader)).await;
    assert_invalid_token(&a, "revoked key");
    let listing = String::from_utf8(converto(dir.path(), &["keys", "list"]).stdout).expect("utf-8");
    let line = listing
        .lines()
        .find(|l| l.starts_with(&reader_id))
        .expect("still listed");
    assert!(
        !line.trim_end().ends_with('-'),
        "no revocation time: {line}"
    );

    let out = converto(dir.path(), &["keys", "revoke", "no-such-id"]);
    assert!(!out.status.success());
    let out = converto(dir.path(), &["keys", "create", "--tenant", "../etc"]);
    assert!(!out.status.success() && out.stdout.is_empty());
}

/// A key store that counts lookups.
#[derive(Debug, Default)]
struct Counting {
    inner: MemoryKeyStore,
    lookups: AtomicUsize,
}

#[async_trait::async_trait]
impl KeyStore for Counting {
    async fn create(&self, key: NewApiKey) -> Result<converto_core::keys::ApiKey, KeyStoreError> {
        self.inner.create(key).await
    }
    async fn find_by_hash(
        &self,
        hash: &KeyHash,
    ) -> Result<Option<converto_core::keys::ApiKey>, KeyStoreError> {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        self.inner.find_by_hash(hash).await
    }
    async fn list(&self) -> Result<Vec<converto_core::keys::ApiKey>, KeyStoreError> {
        self.inner.list().await
    }
    async fn revoke(&self, id: &str) -> Result<converto_core::keys::ApiKey, KeyStoreError> {
        self.inner.revoke(id).await
    }
}

#[tokio::test]
async fn expired_unknown_and_mistyped_keys_are_refused() {
    let store = Arc::new(Counting::default());
    let expired = generate_key(
        "acme",
        Scopes::ALL,
        Some(chrono::Utc::now() - chrono::Duration::minutes(1)),
    )
    .expect("key");
    store.create(expired.record.clone()).await.expect("create");
    let good = generate_key("acme", Scopes::ALL, None).expect("key");
    store.create(good.record.clone()).await.expect("create");
    let router = whoami(Authenticator::anonymous().with_keys(store.clone()));

    let a = call(
        &router,
        Method::GET,
        "/v1/whoami",
        Some(good.secret.expose()),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.body["tenant"], "acme");
    assert_eq!(a.body["subject"], format!("key:{}", good.record.id));

    let a = call(
        &router,
        Method::GET,
        "/v1/whoami",
        Some(expired.secret.expose()),
    )
    .await;
    assert_invalid_token(&a, "expired key");
    let unknown = generate_key("acme", Scopes::ALL, None).expect("key");
    let a = call(
        &router,
        Method::GET,
        "/v1/whoami",
        Some(unknown.secret.expose()),
    )
    .await;
    assert_invalid_token(&a, "unknown key");

    // A wrong checksum is refused without asking the store.
    let before = store.lookups.load(Ordering::SeqCst);
    let mut typo = good.secret.expose().to_owned();
    let last = typo.pop().expect("char");
    typo.push(if last == 'a' { 'b' } else { 'a' });
    let a = call(&router, Method::GET, "/v1/whoami", Some(&typo)).await;
    assert_invalid_token(&a, "bad checksum");
    let a = call(&router, Method::GET, "/v1/whoami", Some("cvt_nonsense")).await;
    assert_invalid_token(&a, "malformed key");
    assert_eq!(store.lookups.load(Ordering::SeqCst), before);

    // Not `Bearer`.
    let req = Request::get("/v1/whoami")
        .header(
            header::AUTHORIZATION,
            format!("Basic {}", good.secret.expose()),
        )
        .body(Body::empty())
        .expect("request");
    let resp = router.clone().oneshot(req).await.expect("infallible");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn anonymous_mode_acts_as_the_default_tenant_with_every_scope() {
    let router = whoami(Authenticator::anonymous());
    let a = call(&router, Method::GET, "/v1/whoami", None).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.body["tenant"], "default");
    assert_eq!(a.body["scopes"], "read,write,admin");
    let a = call(&router, Method::POST, "/v1/whoami", None).await;
    assert_eq!(a.status, StatusCode::OK);
}

#[tokio::test]
async fn the_spec_documents_401_403_and_the_bearer_scheme() {
    let spec = |auth| async move {
        call(&api(auth), Method::GET, "/openapi.json", None)
            .await
            .body
    };
    let off = spec(Authenticator::anonymous()).await;
    let on = spec(Authenticator::anonymous().with_keys(Arc::new(MemoryKeyStore::new()))).await;
    for doc in [&off, &on] {
        assert_eq!(
            doc["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
        let list = &doc["paths"]["/v1/conversions"]["get"]["responses"];
        assert!(
            list.get("401").is_some() && list.get("403").is_some(),
            "{list}"
        );
        assert!(
            doc["paths"]["/healthz"]["get"]["responses"]
                .get("401")
                .is_none()
        );
    }
    // The requirement is declared only when credentials are checked.
    assert!(off.get("security").is_none());
    assert_eq!(on["security"][0]["bearer"], json!([]));
}

// ---- JWT ----------------------------------------------------------------------------------------

const ISSUER: &str = "https://idp.test";
const AUDIENCE: &str = "converto";

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn claims() -> Value {
    json!({
        "sub": "user-1", "tenant": "acme", "scope": "read write",
        "iss": ISSUER, "aud": AUDIENCE, "exp": now() + 600, "iat": now(),
    })
}

fn sign(alg: Algorithm, private: &str, kid: Option<&str>, claims: &Value) -> String {
    let pem = read(private);
    let key = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem),
        Algorithm::ES256 => EncodingKey::from_ec_pem(&pem),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem),
        other => panic!("no test key for {other:?}"),
    }
    .expect("private key");
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    encode(&header, claims, &key).expect("sign")
}

fn pem_settings() -> JwtSettings {
    JwtSettings {
        public_keys: vec![
            data("rsa-public.pem"),
            data("ec-public.pem"),
            data("ed-public.pem"),
        ],
        issuer: Some(ISSUER.into()),
        audience: Some(AUDIENCE.into()),
        ..JwtSettings::default()
    }
}

async fn jwt_router(settings: &JwtSettings) -> Router {
    let verifier = JwtVerifier::open(settings).await.expect("verifier");
    whoami(Authenticator::anonymous().with_jwt(Arc::new(verifier)))
}

#[tokio::test]
async fn rs256_es256_and_eddsa_tokens_are_accepted() {
    let router = jwt_router(&pem_settings()).await;
    for (alg, key) in [
        (Algorithm::RS256, "rsa-private.pem"),
        (Algorithm::ES256, "ec-private.pem"),
        (Algorithm::EdDSA, "ed-private.pem"),
    ] {
        let token = sign(alg, key, None, &claims());
        let a = call(&router, Method::GET, "/v1/whoami", Some(&token)).await;
        assert_eq!(a.status, StatusCode::OK, "{alg:?}: {:?}", a.body);
        assert_eq!(a.body["tenant"], "acme");
        assert_eq!(a.body["scopes"], "read,write");
        assert_eq!(a.body["subject"], "jwt:user-1");
    }
    // Expired 30 s ago: within the 60 s leeway.
    let mut c = claims();
    c["exp"] = json!(now() - 30);
    let a = call(
        &router,
        Method::GET,
        "/v1/whoami",
        Some(&sign(Algorithm::ES256, "ec-private.pem", None, &c)),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    // `scp` as an array; read only, so no POST.
    let mut c = claims();
    c.as_object_mut().expect("object").remove("scope");
    c["scp"] = json!(["read", "other.api"]);
    let token = sign(Algorithm::RS256, "rsa-private.pem", None, &c);
    let a = call(&router, Method::GET, "/v1/whoami", Some(&token)).await;
    assert_eq!(a.body["scopes"], "read");
    let a = call(&router, Method::POST, "/v1/whoami", Some(&token)).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[tokio::test]
async fn forged_expired_and_foreign_tokens_are_refused() {
    let router = jwt_router(&pem_settings()).await;
    let refused = |what: &'static str, token: String| {
        let router = router.clone();
        async move {
            let a = call(&router, Method::GET, "/v1/whoami", Some(&token)).await;
            assert_invalid_token(&a, what);
        }
    };
    let payload = b64(claims().to_string().as_bytes());
    refused(
        "alg none",
        format!("{}.{payload}.", b64(br#"{"alg":"none","typ":"JWT"}"#)),
    )
    .await;
    // HS256 with the public key as the HMAC secret: the key-confusion attack.
    let public = read("rsa-public.pem");
    let hs = encode(
        &Header::new(Algorithm::HS256),
        &claims(),
        &EncodingKey::from_secret(&public),
    )
    .expect("sign");
    refused("HS256 with the public key", hs).await;
    let hs = encode(
        &Header::new(Algorithm::HS256),
        &claims(),
        &EncodingKey::from_secret(b"secret"),
    )
    .expect("sign");
    refused("HS256", hs).await;
    // Signed by a key nobody configured.
    refused(
        "unknown signer",
        sign(Algorithm::RS256, "rsa2-private.pem", None, &claims()),
    )
    .await;
    for (what, field, value) in [
        ("expired", "exp", json!(now() - 3600)),
        ("not yet valid", "nbf", json!(now() + 3600)),
        ("wrong audience", "aud", json!("someone-else")),
        ("wrong issuer", "iss", json!("https://evil.test")),
        ("tenant not a tenant", "tenant", json!("../etc")),
    ] {
        let mut c = claims();
        c[field] = value;
        refused(what, sign(Algorithm::ES256, "ec-private.pem", None, &c)).await;
    }
    for missing in ["tenant", "exp"] {
        let mut c = claims();
        c.as_object_mut().expect("object").remove(missing);
        refused(
            "missing claim",
            sign(Algorithm::EdDSA, "ed-private.pem", None, &c),
        )
        .await;
    }
    // A tampered payload.
    let token = sign(Algorithm::RS256, "rsa-private.pem", None, &claims());
    let mut parts: Vec<&str> = token.split('.').collect();
    let mut c = claims();
    c["tenant"] = json!("other");
    let forged = b64(c.to_string().as_bytes());
    parts[1] = &forged;
    refused("tampered", parts.join(".")).await;
    refused("garbage", "not.a.token".into()).await;
}

/// A JWKS served from a local server: the set can be swapped, fetches are counted.
struct JwksServer {
    url: String,
    set: Arc<std::sync::Mutex<Value>>,
    fetches: Arc<AtomicUsize>,
    _task: tokio::task::JoinHandle<()>,
}

fn jwk(private: &str, kid: &str) -> Value {
    let key = EncodingKey::from_rsa_pem(&read(private)).expect("key");
    let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&key, Algorithm::RS256).expect("jwk");
    jwk.common.key_id = Some(kid.to_owned());
    serde_json::to_value(jwk).expect("json")
}

async fn jwks_server(initial: Value) -> JwksServer {
    let set = Arc::new(std::sync::Mutex::new(initial));
    let fetches = Arc::new(AtomicUsize::new(0));
    let (s, f) = (Arc::clone(&set), Arc::clone(&fetches));
    let router = Router::new().route(
        "/jwks.json",
        axum::routing::get(move || {
            let (s, f) = (Arc::clone(&s), Arc::clone(&f));
            async move {
                f.fetch_add(1, Ordering::SeqCst);
                axum::Json(s.lock().expect("lock").clone())
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    JwksServer {
        url: format!("http://{addr}/jwks.json"),
        set,
        fetches,
        _task: task,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_rotation_is_picked_up_on_an_unknown_kid() {
    let server = jwks_server(json!({"keys": [jwk("rsa-private.pem", "k1")]})).await;
    let settings = JwtSettings {
        jwks_url: Some(server.url.clone()),
        jwks_refresh: Duration::from_secs(3600),
        jwks_min_refresh: Duration::ZERO,
        ..JwtSettings::default()
    };
    let router = jwt_router(&settings).await;
    assert_eq!(server.fetches.load(Ordering::SeqCst), 1, "fetched at start");
    let old = sign(Algorithm::RS256, "rsa-private.pem", Some("k1"), &claims());
    let a = call(&router, Method::GET, "/v1/whoami", Some(&old)).await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    assert_eq!(
        server.fetches.load(Ordering::SeqCst),
        1,
        "a known kid needs no fetch"
    );

    // The provider rotates to k2 and drops k1.
    *server.set.lock().expect("lock") = json!({"keys": [jwk("rsa2-private.pem", "k2")]});
    let new = sign(Algorithm::RS256, "rsa2-private.pem", Some("k2"), &claims());
    let a = call(&router, Method::GET, "/v1/whoami", Some(&new)).await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    assert_eq!(server.fetches.load(Ordering::SeqCst), 2);
    let a = call(&router, Method::GET, "/v1/whoami", Some(&old)).await;
    assert_invalid_token(&a, "a key the provider dropped");
    // A kid signed by k2's key but named k1 (which is gone) is not tried against k2.
    let renamed = sign(Algorithm::RS256, "rsa2-private.pem", Some("k1"), &claims());
    let a = call(&router, Method::GET, "/v1/whoami", Some(&renamed)).await;
    assert_invalid_token(&a, "a kid that is not in the set");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_kids_fetch_the_jwks_at_most_once_per_interval() {
    let server = jwks_server(json!({"keys": [jwk("rsa-private.pem", "k1")]})).await;
    let settings = JwtSettings {
        jwks_url: Some(server.url.clone()),
        jwks_refresh: Duration::from_secs(3600),
        jwks_min_refresh: Duration::from_secs(3600),
        ..JwtSettings::default()
    };
    let router = jwt_router(&settings).await;
    for i in 0..5 {
        let token = sign(
            Algorithm::RS256,
            "rsa-private.pem",
            Some(&format!("made-up-{i}")),
            &claims(),
        );
        let a = call(&router, Method::GET, "/v1/whoami", Some(&token)).await;
        assert_invalid_token(&a, "unknown kid");
    }
    assert_eq!(server.fetches.load(Ordering::SeqCst), 1);
}

// ---- the binary -------------------------------------------------------------------------------

#[test]
fn anonymous_serve_refuses_a_non_loopback_address() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = converto(dir.path(), &["serve", "--listen", "0.0.0.0:0"]);
    assert!(!out.status.success(), "it started");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--allow-anonymous") && err.contains("--auth keys"),
        "{err}"
    );
    let out = converto(
        dir.path(),
        &["serve", "--listen", "0.0.0.0:0", "--auth", "jwt"],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--jwt-public-key"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_with_keys_checks_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = create_key(dir.path(), &["--tenant", "acme", "--scopes", "read"]);
    let server = common::Proc::serve(dir.path(), &["--auth", "keys", "--no-workers"], &[]);
    let client = reqwest::Client::new();
    let get = |path: &str, key: Option<&str>| {
        let mut req = client.get(server.url(path));
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        req.send()
    };
    let status = |r: reqwest::Response| r.status().as_u16();
    assert_eq!(
        status(get("/v1/conversions", Some(&key)).await.expect("get")),
        200
    );
    assert_eq!(
        status(get("/v1/conversions", None).await.expect("get")),
        401
    );
    assert_eq!(status(get("/healthz", None).await.expect("get")), 200);
    assert_eq!(status(get("/metrics", Some(&key)).await.expect("get")), 403);
    let spec = get("/openapi.json", None).await.expect("get");
    assert_eq!(status(spec), 200);
    assert_eq!(AuthMode::Keys, "keys".parse().expect("mode"));
    assert_eq!(AuthMode::KeysAndJwt, "keys,jwt".parse().expect("mode"));
    assert!("none,keys".parse::<AuthMode>().is_err());
}

#[test]
fn auth_settings_come_from_flags_then_the_file() {
    use clap::Parser;
    use converto_http::config::{Cli, Command, Settings};
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("converto.toml");
    std::fs::write(
        &file,
        "auth = \"keys,jwt\"\njwt_public_key = [\"a.pem\"]\njwks_min_refresh = \"5s\"\n\
         jwt_tenant_claim = \"org\"\npublic_metrics = true\n",
    )
    .expect("write");
    let resolve = |args: &[&str]| {
        let cli = Cli::try_parse_from(args).expect("flags");
        let Command::Serve(serve) = &cli.command else {
            panic!("serve")
        };
        Settings::resolve(Some(&file), &cli.common, Some(serve)).expect("settings")
    };
    let s = resolve(&["converto", "serve"]);
    assert_eq!(s.auth.mode, AuthMode::KeysAndJwt);
    assert_eq!(s.auth.jwt.public_keys, vec![PathBuf::from("a.pem")]);
    assert_eq!(s.auth.jwt.jwks_min_refresh, Duration::from_secs(5));
    assert_eq!(s.auth.jwt.tenant_claim, "org");
    assert_eq!(s.auth.public_metrics, Some(true));
    let s = resolve(&[
        "converto",
        "serve",
        "--auth",
        "jwt",
        "--jwt-public-key",
        "b.pem,c.pem",
        "--jwt-audience",
        "api",
    ]);
    assert_eq!(s.auth.mode, AuthMode::Jwt);
    assert_eq!(s.auth.jwt.public_keys.len(), 2);
    assert_eq!(s.auth.jwt.audience.as_deref(), Some("api"));
    assert!(Cli::try_parse_from(["converto", "serve", "--auth", "password"]).is_err());
}

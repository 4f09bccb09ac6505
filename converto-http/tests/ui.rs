//! The web UI's page and assets through `oneshot`: public even when keys are required, outside
//! the API description, versioned, cached with ETags, compressed, and under a strict CSP.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, Response, StatusCode, header};
use converto_core::Backends;
use converto_core::memory::MemoryKeyStore;
use converto_core::testkit::engine::{engine_with, fast_config};
use converto_http::auth::Authenticator;
use converto_http::{ApiSettings, AppState, app};
use http_body_util::BodyExt;
use tower::ServiceExt;

/// The application with API keys required.
fn with_keys() -> Router {
    let (engine, _) = engine_with(&Backends::in_memory(), fast_config());
    let auth = Authenticator::anonymous().with_keys(Arc::new(MemoryKeyStore::new()));
    app(AppState::new(engine, ApiSettings::default()).with_auth(auth))
}

async fn get(
    router: &Router,
    path: &str,
    headers: &[(header::HeaderName, &str)],
) -> Response<Body> {
    let mut req = Request::get(path);
    for (k, v) in headers {
        req = req.header(k, *v);
    }
    router
        .clone()
        .oneshot(req.body(Body::empty()).expect("request"))
        .await
        .expect("answer")
}

async fn body(resp: Response<Body>) -> Vec<u8> {
    resp.into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes()
        .to_vec()
}

fn header(resp: &Response<Body>, name: header::HeaderName) -> &str {
    resp.headers()
        .get(&name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("no {name}"))
}

/// The versioned asset paths the page names.
fn assets_of(page: &str) -> Vec<String> {
    page.split('"')
        .filter(|s| s.starts_with("/ui/"))
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn the_page_is_public_cached_compressed_and_locked_down() {
    let router = with_keys();
    // The API itself wants a key.
    let api = get(&router, "/v1/conversions", &[]).await;
    assert_eq!(api.status(), StatusCode::UNAUTHORIZED);

    let page = get(&router, "/", &[]).await;
    assert_eq!(page.status(), StatusCode::OK);
    assert!(header(&page, header::CONTENT_TYPE).starts_with("text/html"));
    assert_eq!(header(&page, header::CACHE_CONTROL), "no-cache");
    let csp = header(&page, header::CONTENT_SECURITY_POLICY).to_owned();
    for directive in [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(directive), "{csp}");
    }
    assert!(!csp.contains("unsafe"), "{csp}");
    let etag = header(&page, header::ETAG).to_owned();
    let html = String::from_utf8(body(page).await).expect("utf-8");
    assert!(
        !html.contains("<script>") && !html.contains("style="),
        "inline code"
    );

    // Revalidation.
    let again = get(&router, "/", &[(header::IF_NONE_MATCH, &etag)]).await;
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    assert!(body(again).await.is_empty());

    let assets = assets_of(&html);
    assert_eq!(assets.len(), 2, "{assets:?}");
    for path in assets
        .iter()
        .cloned()
        .chain(["api.js", "form.js", "viewer.js"].map(|n| assets[1].replace("app.js", n)))
    {
        let plain = get(&router, &path, &[]).await;
        assert_eq!(plain.status(), StatusCode::OK, "{path}");
        assert!(
            header(&plain, header::CACHE_CONTROL).contains("immutable"),
            "{path}"
        );
        assert!(plain.headers().get(header::CONTENT_ENCODING).is_none());
        let plain_bytes = body(plain).await;
        let zipped = get(&router, &path, &[(header::ACCEPT_ENCODING, "gzip, br")]).await;
        assert_eq!(header(&zipped, header::CONTENT_ENCODING), "gzip", "{path}");
        assert!(header(&zipped, header::VARY).contains("Accept-Encoding"));
        let tag = header(&zipped, header::ETAG).to_owned();
        let zipped_bytes = body(zipped).await;
        assert!(zipped_bytes.len() < plain_bytes.len(), "{path}");
        let mut unzipped = Vec::new();
        std::io::Read::read_to_end(
            &mut flate2::read::GzDecoder::new(&zipped_bytes[..]),
            &mut unzipped,
        )
        .expect("gunzip");
        assert_eq!(unzipped, plain_bytes, "{path}");
        let cached = get(
            &router,
            &path,
            &[
                (header::ACCEPT_ENCODING, "gzip"),
                (header::IF_NONE_MATCH, &tag),
            ],
        )
        .await;
        assert_eq!(cached.status(), StatusCode::NOT_MODIFIED, "{path}");
    }

    // Another version's path gets today's file, not cached under that name.
    let old = assets[1].replace(
        assets[1].split('/').nth(2).expect("version"),
        "0123456789abcdef0123",
    );
    let stale = get(&router, &old, &[]).await;
    assert_eq!(stale.status(), StatusCode::OK);
    assert_eq!(header(&stale, header::CACHE_CONTROL), "no-cache");

    // Unknown files are problems; the UI is not part of the API description.
    let missing = get(&router, &assets[1].replace("app.js", "nope.js"), &[]).await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        header(&missing, header::CONTENT_TYPE),
        "application/problem+json"
    );
    let spec = body(get(&router, "/openapi.json", &[]).await).await;
    let spec: serde_json::Value = serde_json::from_slice(&spec).expect("spec");
    let paths = spec["paths"].as_object().expect("paths");
    assert!(!paths.contains_key("/") && paths.keys().all(|p| !p.starts_with("/ui")));
}

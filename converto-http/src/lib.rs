//! converto's HTTP API: a thin axum layer over the [`converto_core::Engine`].
//!
//! [`app`] builds the router (tests drive it with `tower::ServiceExt::oneshot`); the `converto`
//! binary adds configuration, backends and workers around it.

pub mod api;
pub mod config;
pub mod error;
pub mod runtime;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use converto_core::Engine;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Settings of the API layer.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    /// Uploads larger than this are refused with 413.
    pub max_upload_bytes: u64,
    /// Redirect artifact downloads to presigned URLs when the blob store can presign.
    pub redirect_downloads: bool,
    /// How long presigned URLs stay valid.
    pub presign_ttl: Duration,
    /// The server's public base URL (e.g. `https://convert.example.com`), used in upload
    /// URLs; relative URLs are given without it.
    pub public_url: Option<String>,
}

impl Default for ApiSettings {
    fn default() -> Self {
        Self {
            max_upload_bytes: 2 * 1024 * 1024 * 1024,
            redirect_downloads: false,
            presign_ttl: Duration::from_secs(3600),
            public_url: None,
        }
    }
}

/// What every handler gets.
#[derive(Clone)]
pub struct AppState {
    /// The engine.
    pub engine: Engine,
    /// API settings.
    pub settings: Arc<ApiSettings>,
    /// Renders `/metrics`.
    pub metrics: PrometheusHandle,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// State over an engine.
    pub fn new(engine: Engine, settings: ApiSettings) -> Self {
        Self {
            engine,
            settings: Arc::new(settings),
            metrics: prometheus(),
        }
    }
}

/// The process-wide Prometheus recorder (installed on first use).
pub fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("duration_seconds".into()),
                    &[
                        0.001, 0.005, 0.025, 0.1, 0.25, 1.0, 2.5, 10.0, 30.0, 120.0, 600.0,
                    ],
                )
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (an embedding program's): then ours
            // renders only what it records itself.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

#[derive(OpenApi)]
#[openapi(
    info(title = "converto", description = "Durable file conversion jobs."),
    tags(
        (name = "conversions", description = "Submit, follow, download"),
        (name = "uploads", description = "Upload first, convert later"),
        (name = "formats", description = "What can be converted"),
        (name = "system", description = "Health, readiness, metrics"),
    )
)]
struct ApiDoc;

/// The API router and its OpenAPI description, generated from the handlers.
pub fn router_and_spec(state: AppState) -> (Router, utoipa::openapi::OpenApi) {
    use api::{conversions, system, upload};
    let uploads = OpenApiRouter::new()
        .routes(routes!(conversions::create))
        .routes(routes!(upload::put))
        .layer(DefaultBodyLimit::disable());
    let (router, spec) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(uploads)
        .routes(routes!(conversions::list))
        .routes(routes!(conversions::get, conversions::delete))
        .routes(routes!(conversions::cancel))
        .routes(routes!(conversions::events))
        .routes(routes!(conversions::artifact))
        .routes(routes!(upload::create))
        .routes(routes!(system::formats))
        .routes(routes!(system::healthz))
        .routes(routes!(system::readyz))
        .routes(routes!(system::metrics))
        .with_state(state)
        .split_for_parts();
    (router, spec)
}

/// The whole application: the API, `/openapi.json`, request metrics and tracing.
pub fn app(state: AppState) -> Router {
    let (router, spec) = router_and_spec(state);
    let spec_json = Arc::new(spec.to_pretty_json().unwrap_or_else(|_| "{}".into()));
    router
        .route(
            "/openapi.json",
            axum::routing::get(move || {
                let spec = Arc::clone(&spec_json);
                async move {
                    (
                        [(axum::http::header::CONTENT_TYPE, "application/json")],
                        spec.as_str().to_owned(),
                    )
                }
            }),
        )
        .fallback(|| async {
            error::ApiError::NotFound {
                detail: "no such endpoint; see /openapi.json".into(),
            }
        })
        .layer(axum::middleware::from_fn(track_requests))
        .layer(tower_http::catch_panic::CatchPanicLayer::new())
        .layer(tower_http::trace::TraceLayer::new_for_http())
}

async fn track_requests(req: Request, next: Next) -> Response {
    let start = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().as_str().to_owned();
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    metrics::counter!("converto_http_requests_total", "method" => method.clone(), "route" => route.clone(), "status" => status).increment(1);
    metrics::histogram!("converto_http_request_duration_seconds", "method" => method, "route" => route).record(start.elapsed().as_secs_f64());
    resp
}

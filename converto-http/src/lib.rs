//! converto's HTTP API: a thin axum layer over the [`converto_core::Engine`].
//!
//! [`app`] builds the router (tests drive it with `tower::ServiceExt::oneshot`); the `converto`
//! binary adds configuration, backends and workers around it.

pub mod api;
pub mod auth;
pub mod config;
#[cfg(feature = "crash-test-converters")]
pub mod crash_test;
pub mod error;
pub mod isolate;
pub mod limits;
pub mod middleware;
pub mod problem;
pub mod quota;
pub mod run;
pub mod runtime;
pub mod server;
pub mod tenants_cli;
pub mod ui;

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
    /// Redirect artifact downloads to presigned URLs when the blob store can presign.
    pub redirect_downloads: bool,
    /// How long presigned URLs stay valid.
    pub presign_ttl: Duration,
    /// The server's public base URL (e.g. `https://convert.example.com`), used in upload
    /// URLs; relative URLs are given without it.
    pub public_url: Option<String>,
    /// Largest accepted JSON request body in bytes (larger ones: 413, refused while reading).
    pub max_json_bytes: usize,
    /// Largest accepted non-file multipart field in bytes.
    pub max_field_bytes: usize,
    /// Event streams (`/events`) open at once; more are answered 503.
    pub max_event_streams: usize,
    /// How often an event stream sends a keep-alive comment.
    pub event_keep_alive: Duration,
    /// Origins allowed to call the API from a browser (CORS); empty: CORS off.
    pub cors_allow_origins: Vec<String>,
}

impl Default for ApiSettings {
    fn default() -> Self {
        Self {
            redirect_downloads: false,
            presign_ttl: Duration::from_secs(3600),
            public_url: None,
            max_json_bytes: 64 * 1024,
            max_field_bytes: 16 * 1024,
            max_event_streams: 512,
            event_keep_alive: Duration::from_secs(15),
            cors_allow_origins: Vec::new(),
        }
    }
}

/// What every handler gets: a handle to [`AppParts`], which it dereferences to.
///
/// Every request clones the state and drops it; one shared allocation makes that one atomic
/// count instead of one for each part (the engine alone holds a dozen), which was 2-4% of the
/// server's CPU per status read.
#[derive(Clone)]
pub struct AppState(Arc<AppParts>);

impl std::ops::Deref for AppState {
    type Target = AppParts;

    fn deref(&self) -> &AppParts {
        &self.0
    }
}

/// The parts of an [`AppState`].
#[derive(Clone)]
pub struct AppParts {
    /// The engine.
    pub engine: Engine,
    /// API settings.
    pub settings: Arc<ApiSettings>,
    /// Renders `/metrics`.
    pub metrics: PrometheusHandle,
    /// Places for open event streams (`settings.max_event_streams`).
    pub event_streams: Arc<tokio::sync::Semaphore>,
    /// Who may call (anonymous unless [`AppState::with_auth`] says otherwise).
    pub auth: Arc<auth::Authenticator>,
    /// Per-tenant limits: the engine's ([`converto_core::Engine::limits`]) unless
    /// [`AppState::with_quotas`] says otherwise.
    pub quotas: quota::Quotas,
    /// Lets `/metrics` read the backends' counts once per
    /// [`api::system::BACKEND_GAUGES_EVERY`] at most.
    backend_gauges: Arc<api::system::Throttle>,
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
        // The engine's limits: one source for the API's checks and the workers'.
        let quotas = quota::Quotas::from_source(Arc::clone(engine.limits()));
        Self(Arc::new(AppParts {
            engine,
            event_streams: Arc::new(tokio::sync::Semaphore::new(
                settings.max_event_streams.max(1),
            )),
            settings: Arc::new(settings),
            metrics: prometheus(),
            auth: Arc::new(auth::Authenticator::anonymous()),
            quotas,
            backend_gauges: Arc::new(api::system::Throttle::new(
                api::system::BACKEND_GAUGES_EVERY,
            )),
        }))
    }

    /// The same state, with these per-tenant limits for the API's checks (request rate,
    /// queued conversions, priority). The running limit and the storage quota are the
    /// engine's: give it the same source ([`converto_core::EngineBuilder::limits`]).
    pub fn with_quotas(mut self, quotas: quota::Quotas) -> Self {
        Arc::make_mut(&mut self.0).quotas = quotas;
        self
    }

    /// The same state, checking credentials with `auth`.
    pub fn with_auth(mut self, auth: auth::Authenticator) -> Self {
        Arc::make_mut(&mut self.0).auth = Arc::new(auth);
        self
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
        (name = "webhooks", description = "Signed POSTs when conversions finish"),
    )
)]
struct ApiDoc;

/// The API router and its OpenAPI description, generated from the handlers.
pub fn router_and_spec(state: AppState) -> (Router, utoipa::openapi::OpenApi) {
    use api::{conversions, system, upload, webhooks};
    let uploads = OpenApiRouter::new()
        .routes(routes!(conversions::create))
        .routes(routes!(upload::put))
        .layer(DefaultBodyLimit::disable());
    let (router, mut spec) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(uploads)
        .routes(routes!(conversions::list))
        .routes(routes!(conversions::get, conversions::delete))
        .routes(routes!(conversions::cancel))
        .routes(routes!(conversions::events))
        .routes(routes!(conversions::artifact))
        .routes(routes!(upload::create))
        .routes(routes!(webhooks::create, webhooks::list))
        .routes(routes!(webhooks::get, webhooks::delete))
        .routes(routes!(webhooks::rotate))
        .routes(routes!(webhooks::rotate_signing_secret))
        .routes(routes!(webhooks::deliveries))
        .routes(routes!(system::formats))
        .routes(routes!(system::healthz))
        .routes(routes!(system::readyz))
        .routes(routes!(system::metrics))
        .with_state(state)
        .split_for_parts();
    webhooks::document(&mut spec);
    (router, spec)
}

/// The whole application: the API, `/openapi.json`, request metrics and tracing.
pub fn app(state: AppState) -> Router {
    // Invalid origins are refused at start-up by the binary; here they leave CORS off.
    let cors = middleware::cors(&state.settings.cors_allow_origins).unwrap_or_else(|e| {
        tracing::error!(error = %e, "CORS stays off");
        None
    });
    let authenticator = Arc::clone(&state.auth);
    let quotas = state.quotas.clone();
    let (router, mut spec) = router_and_spec(state);
    auth::document(&mut spec, authenticator.mode() != auth::AuthMode::None);
    quota::document(&mut spec);
    let spec_json = Arc::new(spec.to_pretty_json().unwrap_or_else(|_| "{}".into()));
    let router = router
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
        // The web UI: public, outside the API description.
        .merge(ui::router())
        .fallback(|| async {
            error::ApiError::NotFound {
                detail: "no such endpoint; see /openapi.json".into(),
            }
        })
        // Inside authentication: the rate is counted per tenant of the credential.
        .layer(axum::middleware::from_fn_with_state(
            quotas,
            quota::limit_rate,
        ))
        .layer(axum::middleware::from_fn_with_state(
            authenticator,
            auth::authenticate,
        ))
        .layer(axum::middleware::map_response(problem::bare_errors_as_problems))
        .layer(axum::middleware::from_fn(track_requests))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            problem::panic_as_problem,
        ))
        .layer(
            tower_http::trace::TraceLayer::new_for_http().make_span_with(|req: &Request| {
                // `harden` (outside) has put an acceptable id into the header.
                let id = req
                    .headers()
                    .get(middleware::REQUEST_ID)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-");
                tracing::info_span!("request", method = %req.method(), path = %req.uri().path(), request_id = %id)
            }),
        );
    let router = match cors {
        Some(cors) => router.layer(cors),
        None => router,
    };
    router.layer(axum::middleware::from_fn(middleware::harden))
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

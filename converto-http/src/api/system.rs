//! Formats, health, readiness, metrics.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::AppState;
use crate::error::RouteView;

/// The routes the registered converters serve.
#[derive(Debug, Serialize, ToSchema)]
pub struct FormatsView {
    /// Every (source, target) pair and its converter.
    pub routes: Vec<RouteView>,
    /// Formats accepted as input.
    pub sources: Vec<String>,
    /// Formats that can be produced.
    pub targets: Vec<String>,
}

/// List supported conversions.
#[utoipa::path(get, path = "/v1/formats", tag = "formats", responses((status = 200, body = FormatsView)))]
pub(crate) async fn formats(State(state): State<AppState>) -> Json<FormatsView> {
    let routes = state.engine.registry().routes();
    let mut sources: Vec<String> = routes.iter().map(|r| r.source.to_string()).collect();
    let mut targets: Vec<String> = routes.iter().map(|r| r.target.to_string()).collect();
    sources.sort();
    sources.dedup();
    targets.sort();
    targets.dedup();
    Json(FormatsView {
        routes: routes.iter().map(RouteView::from).collect(),
        sources,
        targets,
    })
}

/// Liveness.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok`.
    pub status: String,
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "system", responses((status = 200, body = Health)))]
pub(crate) async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

/// Readiness of each backend.
#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    /// `ready` or `not_ready`.
    pub status: String,
    /// `ok` or the error, per backend.
    pub checks: BTreeMap<String, String>,
}

async fn check<E: std::fmt::Display>(f: impl Future<Output = Result<(), E>>) -> String {
    match tokio::time::timeout(Duration::from_secs(2), f).await {
        Ok(Ok(())) => "ok".into(),
        Ok(Err(e)) => e.to_string(),
        Err(_) => "timed out after 2s".into(),
    }
}

/// Readiness: every backend answers.
#[utoipa::path(get, path = "/readyz", tag = "system", responses((status = 200, body = Readiness), (status = 503, body = Readiness)))]
pub(crate) async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Readiness>) {
    let b = state.engine.backends();
    let (store, queue, bus, blobs) = tokio::join!(
        check(b.store.ping()),
        check(b.queue.ping()),
        check(b.bus.ping()),
        check(b.blobs.ping())
    );
    let checks = BTreeMap::from([
        ("store".to_owned(), store),
        ("queue".to_owned(), queue),
        ("progress".to_owned(), bus),
        ("blobs".to_owned(), blobs),
    ]);
    let ok = checks.values().all(|v| v == "ok");
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(Readiness {
            status: if ok { "ready" } else { "not_ready" }.into(),
            checks,
        }),
    )
}

/// Prometheus metrics: requests, conversions by status, queue depth, durations.
#[utoipa::path(get, path = "/metrics", tag = "system", responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
pub(crate) async fn metrics(State(state): State<AppState>) -> Response {
    let b = state.engine.backends();
    if let Ok(counts) = b.store.count_by_status().await {
        for s in converto_core::Status::ALL {
            metrics::gauge!("converto_conversions", "status" => s.as_str())
                .set(counts.get(&s).copied().unwrap_or(0) as f64);
        }
    }
    if let Ok(q) = b.queue.stats().await {
        for (state_name, n) in [
            ("ready", q.ready),
            ("delayed", q.delayed),
            ("leased", q.leased),
            ("dead", q.dead),
        ] {
            metrics::gauge!("converto_queue_jobs", "state" => state_name).set(n as f64);
        }
    }
    metrics::gauge!("converto_running_here").set(state.engine.running_here() as f64);
    let body = state.metrics.render();
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        body,
    )
        .into_response()
}

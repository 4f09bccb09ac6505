//! Formats, health, readiness, metrics.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use converto_core::intake::Check;
use serde::Serialize;
use utoipa::ToSchema;

use crate::AppState;
use crate::error::{Problem, RouteView};

/// The routes the registered converters serve.
#[derive(Debug, Serialize, ToSchema)]
pub struct FormatsView {
    /// Every (source, target) pair that can be converted, directly or chained, and its
    /// converter.
    pub routes: Vec<RouteView>,
    /// Formats accepted as input.
    pub sources: Vec<String>,
    /// Formats that can be produced.
    pub targets: Vec<String>,
}

/// List supported conversions.
#[utoipa::path(get, path = "/v1/formats", tag = "formats", responses((status = 200, body = FormatsView), (status = 503, description = "Too many connections at once (see Retry-After)", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn formats(State(state): State<AppState>) -> Json<FormatsView> {
    let registry = state.engine.registry();
    // Chained pairs too, each with the formats it passes through.
    let routes = registry.reachable();
    let mut sources: Vec<String> = routes.iter().map(|r| r.source.to_string()).collect();
    let mut targets: Vec<String> = routes.iter().map(|r| r.target.to_string()).collect();
    sources.sort();
    sources.dedup();
    targets.sort();
    targets.dedup();
    Json(FormatsView {
        routes: routes
            .iter()
            .map(|r| RouteView {
                options_schema: registry
                    .resolve(&r.source, &r.target)
                    .and_then(|c| c.options_schema(&r.source, &r.target)),
                ..RouteView::from(r)
            })
            .collect(),
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
#[utoipa::path(get, path = "/healthz", tag = "system", responses((status = 200, body = Health), (status = 503, description = "Too many connections at once (see Retry-After)", body = Problem, content_type = "application/problem+json")))]
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
    /// How the converter families were set up at start-up, e.g. `"cad": "STEP and IGES routes
    /// off"` (the reason is in the log and `converto formats`). Informational: does not affect
    /// `status`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub converters: BTreeMap<String, String>,
}

/// `ok`, `unavailable` or `timed out after 2s`. A backend's error can name hosts, paths and
/// (in a driver's message) credentials, and `/readyz` is often reachable by anyone: the error
/// goes to the log (URLs in it redacted), the answer says only that the backend failed.
fn answer(backend: &'static str, check: Check) -> String {
    match check {
        Check::Ok => "ok".into(),
        Check::Failed(e) => {
            let error = redact_urls(&e);
            tracing::warn!(backend, %error, "readiness check failed");
            "unavailable".into()
        }
        Check::TimedOut => "timed out after 2s".into(),
    }
}

/// Every `scheme://...` word of `text` redacted (see [`crate::runtime::redact`]).
fn redact_urls(text: &str) -> String {
    text.split(' ')
        .map(|word| {
            if word.contains("://") {
                crate::runtime::redact(word)
            } else {
                word.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// What `/readyz` shows of the registry's notes: only the summary before the first `:`
/// ("STEP and IGES routes off"), as `/readyz` is often public and the rest names paths; the
/// whole note is in the start-up log and `converto formats`.
fn public_notes(notes: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    notes
        .iter()
        .map(|(topic, note)| {
            let summary = note.split(':').next().unwrap_or_default().replace('/', " ");
            (topic.clone(), summary.trim().to_owned())
        })
        .collect()
}

/// Readiness: every backend answers.
#[utoipa::path(get, path = "/readyz", tag = "system", responses((status = 200, body = Readiness),
    (status = 503, description = "A backend does not answer (the readiness report), or too many connections at once (a problem, see Retry-After)",
        content((Readiness = "application/json"), (Problem = "application/problem+json")))))]
pub(crate) async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Readiness>) {
    let report = state.engine.readiness(Duration::from_secs(2)).await;
    let checks: BTreeMap<String, String> = report
        .checks
        .into_iter()
        .map(|(backend, check)| (backend.to_owned(), answer(backend, check)))
        .collect();
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
            converters: public_notes(state.engine.registry().notes()),
        }),
    )
}

/// Prometheus metrics: requests, conversions by status, queue depth, durations.
#[utoipa::path(get, path = "/metrics", tag = "system", responses((status = 200, description = "Prometheus text format", content_type = "text/plain"), (status = 503, description = "Too many connections at once (see Retry-After)", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn metrics(State(state): State<AppState>) -> Response {
    state
        .backend_gauges
        .run_if_due(|| async {
            if let Ok(counts) = state.engine.status_counts().await {
                for s in converto_core::Status::ALL {
                    metrics::gauge!("converto_conversions", "status" => s.as_str())
                        .set(counts.get(&s).copied().unwrap_or(0) as f64);
                }
            }
            if let Ok(q) = state.engine.queue_stats().await {
                for (state_name, n) in [
                    ("ready", q.ready),
                    ("delayed", q.delayed),
                    ("leased", q.leased),
                    ("dead", q.dead),
                ] {
                    metrics::gauge!("converto_queue_jobs", "state" => state_name).set(n as f64);
                }
            }
        })
        .await;
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

/// How often `/metrics` reads the backends' counts (conversions by status, jobs by state).
///
/// Counting records by status reads every record: a scan of the whole table on PostgreSQL
/// (27 ms for 66,000 records, measured; seconds for millions), which a scrape must not cost
/// each time, nor a client that calls `/metrics` in a loop. Between readings the gauges keep
/// their last values, as a scraper expects of a gauge; scrapers come every 15 s or more.
pub(crate) const BACKEND_GAUGES_EVERY: Duration = Duration::from_secs(5);

/// Runs a refresh at most once per period: calls within the period after a refresh began do
/// nothing, and calls during a refresh wait for it instead of starting their own.
#[derive(Debug)]
pub(crate) struct Throttle {
    every: Duration,
    last: tokio::sync::Mutex<Option<tokio::time::Instant>>,
}

impl Throttle {
    /// A throttle letting one refresh through per `every`.
    pub(crate) fn new(every: Duration) -> Self {
        Self {
            every,
            last: tokio::sync::Mutex::new(None),
        }
    }

    /// Runs `refresh` if none began within the period; returns whether it ran.
    pub(crate) async fn run_if_due<F, Fut>(&self, refresh: F) -> bool
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let mut last = self.last.lock().await;
        let now = tokio::time::Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < self.every) {
            return false;
        }
        *last = Some(now);
        refresh().await;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(start_paused = true)]
    async fn backend_counts_are_read_at_most_once_per_period() {
        let throttle = Throttle::new(Duration::from_secs(5));
        let runs = AtomicUsize::new(0);
        let refresh = || async {
            runs.fetch_add(1, Ordering::SeqCst);
            // A slow count: the calls made meanwhile wait for it and do not count again.
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let ran = futures::future::join_all((0..10).map(|_| throttle.run_if_due(refresh))).await;
        assert_eq!(ran.iter().filter(|r| **r).count(), 1);
        assert_eq!(runs.load(Ordering::SeqCst), 1);

        tokio::time::advance(Duration::from_secs(4)).await;
        assert!(!throttle.run_if_due(refresh).await);
        assert_eq!(runs.load(Ordering::SeqCst), 1);

        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(throttle.run_if_due(refresh).await);
        assert_eq!(runs.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn readiness_answers_never_carry_the_error() {
        let failing = Check::Failed(
            "connect postgres://app:hunter2@db.internal:5432/app: refused".to_owned(),
        );
        assert_eq!(answer("store", failing), "unavailable");
        assert_eq!(answer("store", Check::Ok), "ok");
        assert_eq!(
            redact_urls("cannot reach postgres://app:hunter2@db:5432/app now"),
            "cannot reach postgres://app:***@db:5432/app now"
        );
    }
}

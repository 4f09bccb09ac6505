//! Per-tenant limits at the API: a request rate (token bucket; 429 with `Retry-After` and
//! `RateLimit` headers beyond it), the number of conversions waiting in the queue, and the
//! highest priority a tenant may ask for. The limits themselves ([`TenantLimits`]) and their
//! layers (store overrides from `converto tenants set`, then `[tenants.NAME]`, then
//! `[tenant_defaults]`, then built-in defaults) live in [`converto_core::tenants`]; the
//! service reads them from the same [`LimitSource`] as its engine, whose workers enforce
//! `max_running` and whose intake enforces `storage_bytes`.
//!
//! The request-rate buckets live in each API node's memory: with N nodes behind a balancer a
//! tenant gets up to N times its rate. The queued count and the stored bytes are read from the
//! store ([`converto_core::ConversionStore::tenant_usage`], an index) at submit time, so they
//! hold across nodes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;

use crate::auth::Principal;
pub use converto_core::tenants::{LimitSource, TenantLimits};

/// The limits of the configuration file: the defaults, and each `[tenants.NAME]` table over
/// them (the core's [`converto_core::tenants::StaticLimits`]).
pub type Limits = converto_core::tenants::StaticLimits;

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The request-rate buckets of one API node, one per tenant that made a request (the number
/// of tenants is bounded by the credentials the service accepts).
#[derive(Debug, Default)]
pub struct RateLimiter {
    buckets: Mutex<HashMap<String, Bucket>>,
}

/// What a bucket said.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    /// Whether the request may go on.
    pub allowed: bool,
    /// Requests left in the bucket now.
    pub remaining: u32,
    /// Seconds until a request would be allowed (0 when allowed).
    pub retry_after: u64,
    /// Seconds until the bucket is full again.
    pub reset: u64,
}

impl RateLimiter {
    /// Takes one token from `tenant`'s bucket at `now`. A token bucket written here rather
    /// than taken from a crate: the `RateLimit` headers need the bucket's remaining count,
    /// which the well-known limiters do not expose.
    pub fn check(&self, tenant: &str, limits: &TenantLimits, now: Instant) -> Decision {
        let rate = limits.requests_per_second;
        let capacity = f64::from(limits.burst.max(1));
        if rate <= 0.0 {
            return Decision {
                allowed: true,
                remaining: limits.burst,
                retry_after: 0,
                reset: 0,
            };
        }
        let mut buckets = self.buckets.lock();
        let bucket = buckets.entry(tenant.to_owned()).or_insert(Bucket {
            tokens: capacity,
            at: now,
        });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(capacity);
        bucket.at = now;
        let allowed = bucket.tokens >= 1.0;
        if allowed {
            bucket.tokens -= 1.0;
        }
        let missing = if allowed { 0.0 } else { 1.0 - bucket.tokens };
        Decision {
            allowed,
            // Whole tokens, never negative: a float-to-int cast saturates.
            remaining: bucket.tokens.floor() as u32,
            retry_after: (missing / rate).ceil() as u64,
            reset: ((capacity - bucket.tokens) / rate).ceil() as u64,
        }
    }
}

/// What the rate-limit layer and the submit handler need.
#[derive(Debug, Clone)]
pub struct Quotas {
    /// Where each tenant's limits are read (the engine's source, see [`AppState::new`]).
    ///
    /// [`AppState::new`]: crate::AppState::new
    pub limits: Arc<dyn LimitSource>,
    /// This node's buckets.
    pub rate: Arc<RateLimiter>,
}

impl Quotas {
    /// Quotas over fixed `limits` (tests and embedders; the binary reads the engine's source).
    pub fn new(limits: Limits) -> Self {
        Self::from_source(Arc::new(limits))
    }

    /// Quotas over a limit source, such as the engine's ([`converto_core::Engine::limits`]).
    pub fn from_source(limits: Arc<dyn LimitSource>) -> Self {
        Self {
            limits,
            rate: Arc::new(RateLimiter::default()),
        }
    }
}

impl Default for Quotas {
    fn default() -> Self {
        Self::new(Limits::default())
    }
}

fn header(value: String) -> Option<HeaderValue> {
    HeaderValue::from_str(&value).ok()
}

/// The layer: counts every authenticated request against its tenant's bucket; beyond it,
/// 429 problem+json with `Retry-After`. Every answer carries `RateLimit-Policy` and
/// `RateLimit` (draft-ietf-httpapi-ratelimit-headers).
pub async fn limit_rate(State(quotas): State<Quotas>, req: Request, next: Next) -> Response {
    let Some(tenant) = req
        .extensions()
        .get::<Principal>()
        .map(|p| p.tenant.clone())
    else {
        return next.run(req).await;
    };
    let limits = quotas.limits.limits(&tenant).await;
    let decision = quotas.rate.check(&tenant, &limits, Instant::now());
    let mut resp = if decision.allowed {
        next.run(req).await
    } else {
        let mut resp = crate::problem::problem_with(
            StatusCode::TOO_MANY_REQUESTS,
            "rate-limited",
            format!(
                "more than {} requests per second for this tenant; retry after {} s",
                limits.requests_per_second, decision.retry_after
            ),
        );
        if let Some(v) = header(decision.retry_after.max(1).to_string()) {
            resp.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, v);
        }
        resp
    };
    if limits.requests_per_second > 0.0 {
        let window = (f64::from(limits.burst.max(1)) / limits.requests_per_second).ceil() as u64;
        let h = resp.headers_mut();
        if let Some(v) = header(format!("\"tenant\";q={};w={window}", limits.burst.max(1))) {
            h.insert("ratelimit-policy", v);
        }
        if let Some(v) = header(format!(
            "\"tenant\";r={};t={}",
            decision.remaining, decision.reset
        )) {
            h.insert("ratelimit", v);
        }
    }
    resp.into_response()
}

/// How long a bucket takes to refill, for tests and docs.
pub fn refill_time(limits: &TenantLimits) -> Duration {
    if limits.requests_per_second <= 0.0 {
        return Duration::ZERO;
    }
    Duration::from_secs_f64(f64::from(limits.burst.max(1)) / limits.requests_per_second)
}

/// Adds the rate limit's answer to the spec: 429 problem+json on every operation a tenant's
/// requests count against (all but the health probes).
pub fn document(spec: &mut utoipa::openapi::OpenApi) {
    let answer = crate::problem::documented(
        "Too many requests for this tenant (see Retry-After and RateLimit), or, on submit, too \
         many of its conversions waiting",
    );
    crate::problem::document_everywhere(spec, "429", &answer);
    // The storage quota: 403 `storage-quota` where a file is stored (beside the scope and
    // ticket answers already documented there).
    const QUOTA: &str = "the tenant's storage quota would be exceeded (problem type \
         `storage-quota`: delete conversions to make room)";
    for (path, method, also) in [
        (
            "/v1/conversions",
            axum::http::Method::POST,
            "; or the priority is above the tenant's highest (`priority-not-allowed`)",
        ),
        ("/v1/uploads/{id}", axum::http::Method::PUT, ""),
    ] {
        let Some(item) = spec.paths.paths.get_mut(path) else {
            continue;
        };
        let op = if method == axum::http::Method::POST {
            item.post.as_mut()
        } else {
            item.put.as_mut()
        };
        let Some(op) = op else { continue };
        let description = match op.responses.responses.get("403") {
            Some(utoipa::openapi::RefOr::T(r)) => format!("{}{also}; or {QUOTA}", r.description),
            _ => format!("The {QUOTA}{also}"),
        };
        op.responses.responses.insert(
            "403".to_owned(),
            crate::problem::documented(&description).into(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let limiter = RateLimiter::default();
        let limits = TenantLimits {
            requests_per_second: 2.0,
            burst: 3,
            ..TenantLimits::default()
        };
        let t0 = Instant::now();
        for left in [2, 1, 0] {
            let d = limiter.check("acme", &limits, t0);
            assert!(d.allowed);
            assert_eq!(d.remaining, left);
        }
        let refused = limiter.check("acme", &limits, t0);
        assert!(!refused.allowed);
        assert_eq!(refused.retry_after, 1);
        // Another tenant has its own bucket.
        assert!(limiter.check("globex", &limits, t0).allowed);
        // Half a second later one token is back.
        let later = t0 + Duration::from_millis(500);
        assert!(limiter.check("acme", &limits, later).allowed);
        assert!(!limiter.check("acme", &limits, later).allowed);
        assert_eq!(refill_time(&limits), Duration::from_millis(1500));
    }
}

//! What every answer carries, whichever handler (or none) produced it: security headers, an
//! `X-Request-Id`, and that id inside `application/problem+json` bodies; plus CORS, off unless
//! origins are allowed.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use tower_http::cors::{AllowOrigin, CorsLayer};

/// The request id header.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The Content-Security-Policy of every non-HTML answer: nothing may be loaded, nothing may
/// frame it (the API serves data, never documents).
pub const CSP: &str = "default-src 'none'; frame-ancestors 'none'";

/// The longest request id accepted from a client; longer ones are replaced.
const MAX_REQUEST_ID_LEN: usize = 128;

/// Problem bodies larger than this are passed through without a `request_id`.
const MAX_PROBLEM_BODY: usize = 256 * 1024;

/// The request's id, as a request extension.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// A fresh request id.
pub fn new_request_id() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

/// The client's request id if it is short and printable ASCII, else a fresh one.
fn accepted_request_id(value: Option<&HeaderValue>) -> String {
    value
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= MAX_REQUEST_ID_LEN
                && v.bytes().all(|b| b.is_ascii_graphic())
        })
        .map_or_else(new_request_id, str::to_owned)
}

/// A problem+json body (RFC 9457) for answers made outside the handlers.
pub(crate) fn problem_json(
    status: u16,
    slug: &str,
    detail: &str,
    request_id: Option<&str>,
) -> String {
    let title = StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error");
    let mut body = serde_json::json!({
        "type": format!("urn:converto:problem:{slug}"),
        "title": title,
        "status": status,
        "detail": detail,
    });
    if let (Some(id), Some(map)) = (request_id, body.as_object_mut()) {
        map.insert("request_id".into(), id.into());
    }
    body.to_string()
}

/// `503` + `Retry-After`: a cap is reached, try again shortly.
pub(crate) fn overloaded(detail: &str) -> Response {
    let mut resp =
        crate::problem::problem_with(StatusCode::SERVICE_UNAVAILABLE, "overloaded", detail);
    resp.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from(crate::server::RETRY_AFTER_SECS),
    );
    resp
}

/// The outermost layer: gives the request an id (the client's, if acceptable), and gives the
/// answer that id, security headers, and the id inside problem bodies.
pub async fn harden(mut req: Request, next: Next) -> Response {
    let id = accepted_request_id(req.headers().get(REQUEST_ID));
    let id_value = HeaderValue::from_str(&id).unwrap_or_else(|_| HeaderValue::from_static("-"));
    // Later layers (the tracing span) read the id from the header.
    req.headers_mut().insert(REQUEST_ID, id_value.clone());
    req.extensions_mut().insert(RequestId(id.clone()));
    let resp = next.run(req).await;
    let mut resp = with_request_id_in_problem(resp, &id).await;
    let h = resp.headers_mut();
    h.insert(REQUEST_ID, id_value);
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    let html = h
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/html"));
    if !html && !h.contains_key(header::CONTENT_SECURITY_POLICY) {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        );
    }
    resp
}

async fn with_request_id_in_problem(resp: Response, id: &str) -> Response {
    let is_problem = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/problem+json"));
    if !is_problem {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_PROBLEM_BODY).await else {
        // Not a small problem body after all: it was consumed, answer with what we know.
        parts.headers.remove(header::CONTENT_LENGTH);
        let body = problem_json(
            parts.status.as_u16(),
            "internal",
            "internal error",
            Some(id),
        );
        return Response::from_parts(parts, Body::from(body));
    };
    let body = match serde_json::from_slice::<serde_json::Value>(&bytes) {
        Ok(serde_json::Value::Object(mut map)) => {
            map.insert("request_id".into(), id.into());
            serde_json::Value::Object(map).to_string().into()
        }
        _ => bytes,
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(body))
}

/// Why a CORS origin was refused.
#[derive(Debug, thiserror::Error)]
#[error("--cors-allow-origin {origin:?}: not an origin (want e.g. https://app.example.com)")]
pub struct InvalidOrigin {
    origin: String,
}

/// A CORS layer allowing `origins` (exact `scheme://host[:port]` matches), or `None` when the
/// list is empty: then no CORS header is ever sent and browsers keep other sites out.
pub fn cors(origins: &[String]) -> Result<Option<CorsLayer>, InvalidOrigin> {
    if origins.is_empty() {
        return Ok(None);
    }
    let values = origins
        .iter()
        .map(|o| {
            let o = o.trim().trim_end_matches('/');
            let valid = (o.starts_with("http://") || o.starts_with("https://"))
                && !o["https://".len().min(o.len())..].contains('/');
            valid
                .then(|| HeaderValue::from_str(o).ok())
                .flatten()
                .ok_or_else(|| InvalidOrigin {
                    origin: o.to_owned(),
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(values))
            .allow_methods([
                Method::GET,
                Method::HEAD,
                Method::POST,
                Method::PUT,
                Method::DELETE,
            ])
            .allow_headers([
                header::CONTENT_TYPE,
                header::AUTHORIZATION,
                header::RANGE,
                header::IF_NONE_MATCH,
                HeaderName::from_static("idempotency-key"),
                REQUEST_ID,
            ])
            .expose_headers([
                header::LOCATION,
                header::CONTENT_DISPOSITION,
                header::CONTENT_RANGE,
                header::ETAG,
                header::RETRY_AFTER,
                REQUEST_ID,
            ])
            .max_age(std::time::Duration::from_secs(600)),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_taken_only_when_short_and_printable() {
        let ok = HeaderValue::from_static("abc-123");
        assert_eq!(accepted_request_id(Some(&ok)), "abc-123");
        let spaced = HeaderValue::from_static("a b");
        assert_ne!(accepted_request_id(Some(&spaced)), "a b");
        let long = HeaderValue::from_str(&"x".repeat(500)).expect("header");
        assert_eq!(accepted_request_id(Some(&long)).len(), 32);
        assert_eq!(accepted_request_id(None).len(), 32);
    }

    #[test]
    fn origins_are_checked() {
        assert!(cors(&[]).expect("empty").is_none());
        assert!(
            cors(&["https://app.example.com".into()])
                .expect("one")
                .is_some()
        );
        assert!(cors(&["app.example.com".into()]).is_err());
        assert!(cors(&["https://a.example/path".into()]).is_err());
    }
}

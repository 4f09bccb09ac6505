//! Every error answer is `application/problem+json`: the handlers answer [`ApiError`]s, and
//! [`bare_errors_as_problems`] rewrites what is answered around them (axum's extractor
//! rejections, 405 Method Not Allowed, 413 from body limits); [`panic_as_problem`] answers a
//! caught panic.
//!
//! [`ApiError`]: crate::error::ApiError

use std::any::Any;

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::error::Problem;

/// The most of a bare error's body kept as the problem's detail.
const MAX_DETAIL_BYTES: usize = 4096;

/// The problem type slug of a status answered outside the handlers.
fn slug(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => "bad-request",
        StatusCode::NOT_FOUND => "not-found",
        StatusCode::METHOD_NOT_ALLOWED => "method-not-allowed",
        StatusCode::NOT_ACCEPTABLE => "not-acceptable",
        StatusCode::REQUEST_TIMEOUT => "request-timeout",
        StatusCode::PAYLOAD_TOO_LARGE => "payload-too-large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported-media-type",
        StatusCode::RANGE_NOT_SATISFIABLE => "range-not-satisfiable",
        StatusCode::UNPROCESSABLE_ENTITY => "unprocessable",
        StatusCode::TOO_MANY_REQUESTS => "too-many-requests",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        StatusCode::GATEWAY_TIMEOUT => "timeout",
        s if s.is_server_error() => "internal",
        _ => "client-error",
    }
}

/// A problem+json answer with `status` and `detail`, typed by the status.
pub fn problem(status: StatusCode, detail: String) -> Response {
    problem_with(status, slug(status), detail)
}

/// A problem+json answer of type `urn:converto:problem:{slug}`: how every answer made outside
/// [`crate::error::ApiError`] (authentication, limits, ranges, caps) is built.
pub fn problem_with(status: StatusCode, slug: &str, detail: impl Into<String>) -> Response {
    let detail = detail.into();
    let body = Problem {
        kind: format!("urn:converto:problem:{slug}"),
        title: status.canonical_reason().unwrap_or("Error").to_owned(),
        status: status.as_u16(),
        detail,
        supported_routes: None,
        supported_targets: None,
    };
    let mut resp = (status, axum::Json(body)).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    resp
}

/// Rewrites a 4xx or 5xx answer that is neither problem+json nor JSON into one, keeping its status and
/// headers (`Allow`, `Retry-After`, `Content-Range`, ...) and its text as the detail.
pub async fn bare_errors_as_problems(resp: Response) -> Response {
    let status = resp.status();
    // A problem already, or a JSON document a handler answers on purpose with an error status
    // (the `/readyz` report); axum's own rejections are plain text.
    let is_documented = resp.headers().get(header::CONTENT_TYPE).is_some_and(|v| {
        let v = v.as_bytes();
        v.starts_with(b"application/problem+json") || v.starts_with(b"application/json")
    });
    if !(status.is_client_error() || status.is_server_error()) || is_documented {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let text = match axum::body::to_bytes(body, MAX_DETAIL_BYTES).await {
        Ok(b) if !b.is_empty() && !status.is_server_error() => {
            String::from_utf8_lossy(&b).trim().to_owned()
        }
        // Server errors keep their text for the log only.
        _ => String::new(),
    };
    let detail = if text.is_empty() {
        match status {
            StatusCode::METHOD_NOT_ALLOWED => {
                "this endpoint does not take that method; see the Allow header".to_owned()
            }
            StatusCode::PAYLOAD_TOO_LARGE => "the request body is larger than allowed".to_owned(),
            s => s.canonical_reason().unwrap_or("error").to_lowercase(),
        }
    } else {
        text
    };
    let fresh = problem(status, detail);
    let (fresh_parts, fresh_body) = fresh.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    for (name, value) in &fresh_parts.headers {
        parts.headers.insert(name.clone(), value.clone());
    }
    Response::from_parts(parts, fresh_body)
}

/// The answer to a handler that panicked: a 500 problem (the panic is logged, not shown).
pub fn panic_as_problem(payload: Box<dyn Any + Send + 'static>) -> Response<Body> {
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into());
    tracing::error!(panic = %message, "a request handler panicked");
    problem(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal error".to_owned(),
    )
}

/// A documented problem+json answer, for the spec.
pub fn documented(description: &str) -> utoipa::openapi::Response {
    utoipa::openapi::ResponseBuilder::new()
        .description(description)
        .content(
            "application/problem+json",
            utoipa::openapi::content::ContentBuilder::new()
                .schema(Some(utoipa::openapi::Ref::from_schema_name("Problem")))
                .build(),
        )
        .build()
}

/// Adds the answer `status` to every operation a caller's credential and quota apply to (all
/// but the health probes).
pub fn document_everywhere(
    spec: &mut utoipa::openapi::OpenApi,
    status: &str,
    answer: &utoipa::openapi::Response,
) {
    for (path, item) in spec.paths.paths.iter_mut() {
        if matches!(path.as_str(), "/healthz" | "/readyz") {
            continue;
        }
        for op in [
            item.get.as_mut(),
            item.put.as_mut(),
            item.post.as_mut(),
            item.delete.as_mut(),
            item.head.as_mut(),
            item.patch.as_mut(),
        ]
        .into_iter()
        .flatten()
        {
            op.responses
                .responses
                .insert(status.to_owned(), answer.clone().into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_of(resp: Response) -> serde_json::Value {
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .expect("body");
        serde_json::from_slice(&bytes).expect("json")
    }

    #[tokio::test]
    async fn a_caught_panic_is_a_problem_without_its_message() {
        let resp = panic_as_problem(Box::new("secret detail"));
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            resp.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
        let body = body_of(resp).await;
        assert_eq!(body["type"], "urn:converto:problem:internal");
        assert!(!body.to_string().contains("secret detail"));
    }

    #[tokio::test]
    async fn bare_errors_keep_status_headers_and_text() {
        let bare = (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            "busy",
        )
            .into_response();
        let resp = bare_errors_as_problems(bare).await;
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "1");
        assert_eq!(
            resp.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
        assert_eq!(body_of(resp).await["status"], 503);
        let fine = (StatusCode::OK, "fine").into_response();
        let resp = bare_errors_as_problems(fine).await;
        assert_eq!(
            resp.headers()[header::CONTENT_TYPE],
            "text/plain; charset=utf-8"
        );
    }
}

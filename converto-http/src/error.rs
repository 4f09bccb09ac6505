//! One error type for the API, answered as `application/problem+json` (RFC 9457).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use converto_core::registry::RouteInfo;
use converto_core::{EngineError, Format};
use serde::Serialize;
use utoipa::ToSchema;

/// A problem report (RFC 9457).
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// A URI naming the kind of problem.
    #[serde(rename = "type")]
    pub kind: String,
    /// A short summary of the kind.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What went wrong this time.
    pub detail: String,
    /// For unsupported routes: what is supported.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub supported_routes: Option<Vec<RouteView>>,
    /// For unsupported routes: the targets reachable from the given source.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub supported_targets: Option<Vec<String>>,
}

/// One conversion route.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RouteView {
    /// Source format.
    pub source: String,
    /// Target format.
    pub target: String,
    /// The converter serving it; for a chained route, the hops' converters joined with `+`.
    pub converter: String,
    /// For a chained route (no converter serves the pair directly): the formats it passes
    /// through, in order. Empty for a direct route.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub via: Vec<String>,
    /// The JSON Schema (draft 2020-12) of the `options` this route accepts, when its converter
    /// publishes one; the converter's own check at submit time stays the authority.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub options_schema: Option<serde_json::Value>,
}

impl From<&RouteInfo> for RouteView {
    fn from(r: &RouteInfo) -> Self {
        Self {
            source: r.source.to_string(),
            target: r.target.to_string(),
            converter: r.converter.clone(),
            via: r.via.iter().map(ToString::to_string).collect(),
            options_schema: None,
        }
    }
}

/// What an API call can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// The request is malformed.
    #[error("{detail}")]
    BadRequest {
        /// A stable slug, e.g. `missing-file`.
        slug: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// The request carries no valid permission (e.g. an upload without a valid ticket).
    #[error("{detail}")]
    Forbidden {
        /// A stable slug, e.g. `invalid-upload-ticket`.
        slug: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// The tenant has as many conversions waiting as it may.
    #[error(
        "this tenant already has {limit} conversions waiting; submit more once some have started"
    )]
    TooManyQueued {
        /// The limit.
        limit: u64,
    },
    /// An idempotency key was reused for a different request.
    #[error("{detail}")]
    IdempotencyMismatch {
        /// What differs.
        detail: String,
    },
    /// Nothing there.
    #[error("{detail}")]
    NotFound {
        /// What was not found.
        detail: String,
    },
    /// The resource is in a state that does not allow this.
    #[error("{detail}")]
    Conflict {
        /// Why.
        detail: String,
    },
    /// The upload is larger than the configured limit.
    #[error("the upload is larger than the limit of {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// No converter serves the route.
    #[error("no converter for {source_format} -> {target_format}")]
    UnsupportedRoute {
        /// From.
        source_format: Format,
        /// To.
        target_format: Format,
        /// What is served.
        supported: Vec<RouteInfo>,
    },
    /// The input's format could not be told.
    #[error("{detail}")]
    UnknownFormat {
        /// What to do.
        detail: String,
    },
    /// A backend is unavailable for now.
    #[error("service temporarily unavailable")]
    Unavailable(#[source] EngineError),
    /// A server-side failure; logged, answered with a fixed message.
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl ApiError {
    /// A 400 with a slug and a detail.
    pub fn bad_request(slug: &'static str, detail: impl Into<String>) -> Self {
        ApiError::BadRequest {
            slug,
            detail: detail.into(),
        }
    }

    /// The HTTP status.
    pub fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Forbidden { .. } => StatusCode::FORBIDDEN,
            ApiError::TooManyQueued { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::IdempotencyMismatch { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::NotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedRoute { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::UnknownFormat { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn slug(&self) -> &'static str {
        match self {
            ApiError::BadRequest { slug, .. } => slug,
            ApiError::Forbidden { slug, .. } => slug,
            ApiError::IdempotencyMismatch { .. } => "idempotency-key-reused",
            ApiError::TooManyQueued { .. } => "too-many-queued",
            ApiError::NotFound { .. } => "not-found",
            ApiError::Conflict { .. } => "conflict",
            ApiError::TooLarge { .. } => "payload-too-large",
            ApiError::UnsupportedRoute { .. } => "unsupported-route",
            ApiError::UnknownFormat { .. } => "unknown-format",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Internal(_) => "internal",
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::NotFound { id } => ApiError::NotFound {
                detail: format!("no conversion {id}"),
            },
            EngineError::ArtifactNotFound { id, name } => ApiError::NotFound {
                detail: format!("conversion {id} has no artifact {name:?}"),
            },
            EngineError::UnsupportedRoute {
                source_format,
                target_format,
                supported,
            } => ApiError::UnsupportedRoute {
                source_format,
                target_format,
                supported,
            },
            EngineError::UnknownSourceFormat { file_name } => ApiError::UnknownFormat {
                detail: match file_name {
                    Some(n) => format!("cannot tell the format of {n:?} from its name or content; send source_format"),
                    None => "cannot tell the input's format from its content; send source_format or a file name with an extension".into(),
                },
            },
            EngineError::EmptyInput => ApiError::bad_request("empty-file", "the uploaded file is empty"),
            EngineError::InputTooLarge { limit } => ApiError::TooLarge { limit },
            EngineError::InvalidOptions(d) => ApiError::bad_request("invalid-options", d),
            e @ EngineError::IdempotencyMismatch { .. } => ApiError::IdempotencyMismatch {
                detail: format!("{e}; use a new Idempotency-Key for a different request"),
            },
            EngineError::InvalidRequest(d) => ApiError::bad_request("invalid-request", d),
            EngineError::UploadTicket(t) => ApiError::Forbidden {
                slug: match t {
                    converto_core::intake::TicketError::Expired => "upload-ticket-expired",
                    _ => "invalid-upload-ticket",
                },
                detail: t.to_string(),
            },
            e @ EngineError::StorageQuota { .. } => ApiError::Forbidden {
                slug: "storage-quota",
                detail: e.to_string(),
            },
            EngineError::UploadExists { upload_id } => ApiError::Conflict {
                detail: format!(
                    "upload {upload_id} was already received; ask POST /v1/uploads for a new one"
                ),
            },
            EngineError::UploadNotFound { upload_id } => ApiError::NotFound {
                detail: format!("no upload {upload_id}: PUT the file to its upload URL first"),
            },
            EngineError::Conflict(c) => ApiError::Conflict {
                detail: format!("conversion {} is {}; cannot {} it", c.id, c.status, c.wanted),
            },
            other if other.is_temporary() => ApiError::Unavailable(other),
            other => ApiError::Internal(Box::new(other)),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status_code();
        match &self {
            ApiError::Internal(e) => {
                tracing::error!(error = %e, source = ?e.source(), "internal error")
            }
            ApiError::Unavailable(e) => tracing::warn!(error = %e, "backend unavailable"),
            _ => {}
        }
        let (supported_routes, supported_targets) = match &self {
            ApiError::UnsupportedRoute {
                source_format,
                supported,
                ..
            } => (
                Some(supported.iter().map(RouteView::from).collect()),
                Some(
                    supported
                        .iter()
                        .filter(|r| &r.source == source_format)
                        .map(|r| r.target.to_string())
                        .collect(),
                ),
            ),
            _ => (None, None),
        };
        let problem = Problem {
            kind: format!("urn:converto:problem:{}", self.slug()),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail: self.to_string(),
            supported_routes,
            supported_targets,
        };
        let mut resp = (status, axum::Json(problem)).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            // The rest of the body is not read: tell the client the connection ends here.
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

//! `/v1/conversions`: submit, list, inspect, follow, download, cancel, delete.

use std::collections::BTreeMap;
use std::convert::Infallible;

use axum::Json;
use axum::body::Body;
use axum::extract::{FromRequest, Multipart, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use converto_core::store::ListQuery;
use converto_core::{ConversionId, Format, Status, Submission, SubmitInput};
use futures::StreamExt;
use serde::Deserialize;
use utoipa::{IntoParams, IntoResponses, ToSchema};

use super::upload::stage;
use super::views::{ConversionView, ListView};
use crate::AppState;
use crate::auth::Principal;
use crate::error::{ApiError, Problem};
use converto_core::TenantEngine;

/// The multipart form of `POST /v1/conversions`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)] // the spec says what the handler does: other fields are refused
#[allow(dead_code)] // documents the form for the OpenAPI spec
pub(crate) struct SubmitForm {
    /// The file to convert.
    #[schema(value_type = String, format = Binary, min_length = 1)]
    file: Vec<u8>,
    /// An http(s) URL the record is POSTed to on every terminal status, signed with the
    /// tenant's signing secret (`POST /v1/webhook-secret/rotate`).
    // Its pattern, `URL_PATTERN`, is added by `webhooks::document`.
    #[schema(nullable = false, max_length = 2048)]
    webhook_url: Option<String>,
    /// `true`: also POST to `webhook_url` when an attempt starts.
    #[schema(nullable = false)]
    webhook_on_start: Option<bool>,
    /// The wanted format, e.g. `obj`.
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9_-]{0,15}$")]
    target_format: String,
    /// The input's format; detected from content and file name if absent.
    #[schema(nullable = false, pattern = "^[A-Za-z0-9][A-Za-z0-9_-]{0,15}$")]
    source_format: Option<String>,
    /// Converter options as a JSON object, e.g. `{"encoding":"ascii"}`.
    #[schema(nullable = false, value_type = Option<Object>)]
    options: Option<String>,
    /// Labels as a JSON object of strings (also accepted: `k=v,k2=v2`).
    #[schema(nullable = false, schema_with = labels_schema)]
    labels: Option<String>,
    /// Priority (higher first), default 0.
    #[schema(nullable = false, minimum = -2147483648, maximum = 2147483647)]
    priority: Option<i32>,
    /// Free text, searched with the file name (`q`); its `#hashtags` become tags. At most 4000
    /// characters.
    #[schema(nullable = false, max_length = 4000)]
    description: Option<String>,
    /// Tags, separated by commas or spaces (the field may repeat): ASCII letters, digits, `_`
    /// and `-`, 1 to 64 characters each, stored lowercase; at most 32 with the description's
    /// hashtags.
    #[schema(nullable = false, pattern = "^[A-Za-z0-9_, -]*$", max_length = 64)]
    tags: Option<String>,
}

/// The JSON form of `POST /v1/conversions`: convert a file uploaded through `/v1/uploads`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitJson {
    /// The id from `POST /v1/uploads`.
    #[schema(pattern = "^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")]
    pub upload_id: String,
    /// The wanted format.
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9_-]{0,15}$")]
    pub target_format: String,
    /// The input's format; detected if absent.
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9_-]{0,15}$")]
    pub source_format: Option<String>,
    /// The original file name (used for format detection and download names).
    pub file_name: Option<String>,
    /// An http(s) URL the record is POSTed to on every terminal status, signed with the
    /// tenant's signing secret (`POST /v1/webhook-secret/rotate`).
    // Its pattern, `URL_PATTERN`, is added by `webhooks::document`.
    #[schema(max_length = 2048)]
    pub webhook_url: Option<String>,
    /// `true`: also POST to `webhook_url` when an attempt starts.
    #[serde(default)]
    pub webhook_on_start: bool,
    /// Converter options.
    #[schema(value_type = Option<Object>)]
    pub options: Option<serde_json::Value>,
    /// Labels.
    #[schema(schema_with = labels_schema)]
    pub labels: Option<BTreeMap<String, String>>,
    /// Priority (higher first).
    #[schema(minimum = -2147483648, maximum = 2147483647)]
    #[serde(default, deserialize_with = "integral_priority")]
    pub priority: Option<i32>,
    /// Free text, searched with the file name (`q`); its `#hashtags` become tags. At most 4000
    /// characters.
    #[schema(max_length = 4000)]
    pub description: Option<String>,
    /// Tags: ASCII letters, digits, `_` and `-`, 1 to 64 characters each, stored lowercase; at
    /// most 32 with the description's hashtags.
    #[schema(schema_with = tags_schema)]
    pub tags: Option<Vec<String>>,
}

/// Reads a JSON request body of at most `limit` bytes: a larger one is refused with 413 as soon
/// as its length (declared or read so far) passes the limit, never buffered whole.
async fn read_json_body(request: Request, limit: usize) -> Result<bytes::Bytes, ApiError> {
    let too_large = ApiError::TooLarge {
        limit: limit as u64,
    };
    if request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|len| len > limit as u64)
    {
        return Err(too_large);
    }
    axum::body::to_bytes(request.into_body(), limit)
        .await
        .map_err(|e| {
            let over = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            if over {
                too_large
            } else {
                ApiError::bad_request("body-read-failed", format!("reading the body failed: {e}"))
            }
        })
}

/// A priority: an integer in `i32`'s range, also when written as a number with a zero
/// fraction (`5.0`), which JSON Schema counts as an integer too.
fn parse_priority(text: &str) -> Option<i32> {
    text.parse::<i32>().ok().or_else(|| {
        let f = text.parse::<f64>().ok()?;
        (f.fract() == 0.0 && f >= f64::from(i32::MIN) && f <= f64::from(i32::MAX))
            .then_some(f as i32)
    })
}

fn integral_priority<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i32>, D::Error> {
    let Some(n) = Option::<serde_json::Number>::deserialize(d)? else {
        return Ok(None);
    };
    parse_priority(&n.to_string())
        .map(Some)
        .ok_or_else(|| serde::de::Error::custom(format!("priority {n} is not a 32-bit integer")))
}

fn parse_format(field: &str, value: &str) -> Result<Format, ApiError> {
    Format::new(value).map_err(|e| ApiError::bad_request("invalid-format", format!("{field}: {e}")))
}

pub(crate) fn parse_id(s: &str) -> Result<ConversionId, ApiError> {
    s.parse().map_err(|e: converto_core::ParseIdError| {
        ApiError::bad_request("malformed-id", e.to_string())
    })
}

/// `id`, parsed from `text`, is a UUIDv7 written as the API writes ids (lowercase, hyphens).
fn is_canonical_v7(id: &ConversionId, text: &str) -> bool {
    id.as_uuid().get_version_num() == 7
        && id.as_uuid().get_variant() == uuid::Variant::RFC4122
        && id.to_string() == text
}

fn parse_labels(s: &str) -> Result<BTreeMap<String, String>, ApiError> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(BTreeMap::new());
    }
    if s.starts_with('{') {
        return serde_json::from_str(s).map_err(|e| {
            ApiError::bad_request(
                "invalid-labels",
                format!("labels must be a JSON object of strings: {e}"),
            )
        });
    }
    s.split(',')
        .map(|kv| {
            let (k, v) = kv.split_once('=').ok_or_else(|| {
                ApiError::bad_request("invalid-labels", format!("label {kv:?} is not key=value"))
            })?;
            Ok((k.trim().to_owned(), v.trim().to_owned()))
        })
        .collect()
}

/// At most this many labels.
const MAX_LABELS: usize = 64;
/// Label keys are 1 to this many characters.
const MAX_LABEL_KEY_CHARS: usize = 128;
/// Label values are at most this many characters.
const MAX_LABEL_VALUE_CHARS: usize = 1024;

fn check_labels(labels: &BTreeMap<String, String>) -> Result<(), ApiError> {
    if labels.len() > MAX_LABELS
        || labels.iter().any(|(k, v)| {
            k.is_empty()
                || k.chars().count() > MAX_LABEL_KEY_CHARS
                || v.chars().count() > MAX_LABEL_VALUE_CHARS
        })
    {
        return Err(ApiError::bad_request(
            "invalid-labels",
            format!(
                "at most {MAX_LABELS} labels, keys 1 to {MAX_LABEL_KEY_CHARS} characters, values up to {MAX_LABEL_VALUE_CHARS} characters"
            ),
        ));
    }
    Ok(())
}

/// The schema of submitted tags: what [`converto_core::search::normalize_tag`] accepts.
fn tags_schema() -> utoipa::openapi::schema::Array {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Type};
    ArrayBuilder::new()
        .items(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(TAG_PATTERN)),
        )
        .max_items(Some(converto_core::search::MAX_TAGS))
        .build()
}

/// A tag, as [`converto_core::search::normalize_tag`] accepts it.
const TAG_PATTERN: &str = "^[A-Za-z0-9_-]{1,64}$";

/// The labels' schema: what [`check_labels`] accepts.
fn labels_schema() -> utoipa::openapi::Object {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .additional_properties(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .max_length(Some(MAX_LABEL_VALUE_CHARS)),
        ))
        .property_names(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1))
                .max_length(Some(MAX_LABEL_KEY_CHARS)),
        ))
        .max_properties(Some(MAX_LABELS))
        .build()
}

fn parse_options(s: &str) -> Result<serde_json::Value, ApiError> {
    let v: serde_json::Value = serde_json::from_str(s).map_err(|e| {
        ApiError::bad_request(
            "invalid-options",
            format!("options are not valid JSON: {e}"),
        )
    })?;
    if !v.is_object() {
        return Err(ApiError::bad_request(
            "invalid-options",
            "options must be a JSON object",
        ));
    }
    Ok(v)
}

/// Reads a small text field of at most `limit` bytes (413 beyond, refused while reading).
async fn small_text(
    field: &mut axum::extract::multipart::Field<'_>,
    limit: usize,
) -> Result<String, ApiError> {
    let name = field.name().unwrap_or("").to_owned();
    let mut buf = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
        if buf.len() + chunk.len() > limit {
            return Err(ApiError::TooLarge {
                limit: limit as u64,
            });
        }
        buf.extend_from_slice(&chunk);
    }
    String::from_utf8(buf)
        .map_err(|_| ApiError::bad_request("invalid-field", format!("field {name:?} is not UTF-8")))
}

pub(crate) fn multipart_error(e: axum::extract::multipart::MultipartError) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::TooLarge { limit: 0 };
    }
    ApiError::bad_request(
        "malformed-multipart",
        format!("malformed multipart body: {}", e.body_text()),
    )
}

/// Header value helper.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    headers
        .get("idempotency-key")
        .map(|v| {
            v.to_str().map(str::to_owned).map_err(|_| {
                ApiError::bad_request(
                    "invalid-idempotency-key",
                    "Idempotency-Key must be visible ASCII",
                )
            })
        })
        .transpose()
}

/// Submit a conversion.
///
/// Multipart (`file`, `target_format`, optional `source_format`, `options`, `labels`,
/// `priority`) streams the file to the blob store; JSON converts a file uploaded first through
/// `POST /v1/uploads`. `Idempotency-Key` makes a retried submit return the first conversion.
#[utoipa::path(
    post, path = "/v1/conversions", tag = "conversions",
    params(("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]([ -~]{0,253}[!-~])?$",
        description = "Submitting the same request again with the same key returns the first conversion; a different request with it is refused (422)")),
    request_body(content(
        (SubmitForm = "multipart/form-data"),
        (SubmitJson = "application/json"),
    )),
    responses(
        (status = 202, description = "Accepted", body = ConversionView, headers(("Location" = String, description = "The conversion's URL"))),
        (status = 200, description = "Idempotent replay: the existing conversion", body = ConversionView),
        (status = 400, description = "Malformed request", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "File larger than the limit", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Input format unknown", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No upload with that upload_id", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "No converter for the route (supported routes listed), or the Idempotency-Key was used for a different request", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "A backend is unavailable, or too many requests at once (see Retry-After)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn create(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    request: Request,
) -> Result<Response, ApiError> {
    let engine = state.engine.tenant(&principal.tenant);
    let key = idempotency_key(&headers)?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    // The engine's input limit: the one limit uploads, submissions and the CLI share.
    let limit = state.engine.config().max_input_bytes.unwrap_or(u64::MAX);
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        // Multipart framing adds a little; anything beyond that is over the limit for sure.
        if len > limit.saturating_add(MULTIPART_FRAMING) {
            return Err(ApiError::TooLarge { limit });
        }
        // Refused before reading a byte when even the file alone cannot fit the tenant's
        // storage quota; the engine checks the exact size once the file is stored.
        if content_type.starts_with("multipart/form-data") {
            engine
                .check_storage(len.saturating_sub(MULTIPART_FRAMING))
                .await?;
        }
    }
    let submission = if content_type.starts_with("multipart/form-data") {
        let guard = crate::limits::FramingGuard::default();
        let (parts, body) = request.into_parts();
        let request = Request::from_parts(parts, guard.wrap(body));
        let multipart = Multipart::from_request(request, &state)
            .await
            .map_err(|e| ApiError::bad_request("malformed-multipart", e.body_text()))?;
        from_multipart(&state, &engine, multipart, &guard).await?
    } else if content_type.starts_with("application/json") {
        let body = read_json_body(request, state.settings.max_json_bytes).await?;
        let Json(body) = Json::<SubmitJson>::from_bytes(&body)
            .map_err(|e| ApiError::bad_request("malformed-json", e.body_text()))?;
        from_json(&engine, body).await?
    } else {
        return Err(ApiError::UnknownFormat {
            detail:
                "send multipart/form-data (with a file) or application/json (with an upload_id)"
                    .into(),
        });
    };
    let submission = Submission {
        idempotency_key: key,
        ..submission
    };
    let limits = state.quotas.limits.limits(&principal.tenant).await;
    if submission.priority > limits.max_priority {
        discard_input(&engine, submission.input).await;
        return Err(ApiError::Forbidden {
            slug: "priority-not-allowed",
            detail: format!(
                "priority {} is above this tenant's highest, {}",
                submission.priority, limits.max_priority
            ),
        });
    }
    if limits.max_queued > 0 && engine.usage().await?.queued >= limits.max_queued {
        discard_input(&engine, submission.input).await;
        return Err(ApiError::TooManyQueued {
            limit: limits.max_queued,
        });
    }
    // The engine owns a staged multipart file from here: it removes it when no new conversion
    // comes of the submission, and never removes an upload another conversion may use.
    let s = engine.submit(submission).await?;
    let view = ConversionView::from(&s.conversion);
    let status = if s.created {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    let location =
        HeaderValue::from_str(&view.links.this).map_err(|e| ApiError::Internal(Box::new(e)))?;
    Ok((status, [(header::LOCATION, location)], Json(view)).into_response())
}

/// What multipart framing (boundaries, part headers, the small fields) may add to a file's
/// size in a submission's `Content-Length`.
const MULTIPART_FRAMING: u64 = 64 * 1024;

/// Form fields accepted in one submission (six are defined; repeats are tolerated a little).
const MAX_FORM_FIELDS: usize = 32;

/// The next field; while waiting for it, `guard` bounds what the parser may buffer.
async fn next_field<'m>(
    multipart: &'m mut Multipart,
    guard: &crate::limits::FramingGuard,
) -> Result<Option<axum::extract::multipart::Field<'m>>, ApiError> {
    guard.arm();
    let next = multipart.next_field().await;
    guard.disarm();
    next.map_err(|e| {
        if guard.tripped() {
            ApiError::TooLarge {
                limit: crate::limits::MAX_FRAMING_BYTES as u64,
            }
        } else {
            multipart_error(e)
        }
    })
}

async fn from_multipart(
    state: &AppState,
    engine: &TenantEngine,
    mut multipart: Multipart,
    guard: &crate::limits::FramingGuard,
) -> Result<Submission, ApiError> {
    let mut target: Option<Format> = None;
    let mut source: Option<Format> = None;
    let mut options = serde_json::Value::Null;
    let mut labels = BTreeMap::new();
    let mut priority = 0;
    let mut webhook_url: Option<String> = None;
    let mut webhook_on_start = false;
    let mut description: Option<String> = None;
    let mut tags: Vec<String> = Vec::new();
    let mut file: Option<(converto_core::intake::Staged, Option<String>)> = None;
    let field_limit = state.settings.max_field_bytes;
    let mut fields = 0usize;
    let outcome: Result<(), ApiError> = async {
        while let Some(mut field) = next_field(&mut multipart, guard).await? {
            fields += 1;
            if fields > MAX_FORM_FIELDS {
                return Err(ApiError::bad_request(
                    "too-many-fields",
                    format!("at most {MAX_FORM_FIELDS} form fields"),
                ));
            }
            let name = field.name().unwrap_or("").to_owned();
            match name.as_str() {
                "file" => {
                    if file.is_some() {
                        return Err(ApiError::bad_request("duplicate-file", "send exactly one file field"));
                    }
                    let file_name = field.file_name().map(str::to_owned);
                    // Fail fast, before reading a large body, when the route is known already.
                    if let Some(t) = &target {
                        let s = source.clone().or_else(|| file_name.as_deref().and_then(Format::from_file_name));
                        if let Some(s) = s
                            && state.engine.registry().resolve(&s, t).is_none() {
                                return Err(ApiError::UnsupportedRoute {
                                    source_format: s,
                                    target_format: t.clone(),
                                    supported: state.engine.registry().reachable(),
                                });
                            }
                    }
                    // Staged by the engine: its size limit, and nothing left on failure.
                    file = Some((stage(engine, &mut field).await?, file_name));
                }
                "target_format" => target = Some(parse_format("target_format", small_text(&mut field, field_limit).await?.trim())?),
                "source_format" => {
                    let v = small_text(&mut field, field_limit).await?;
                    if !v.trim().is_empty() {
                        source = Some(parse_format("source_format", v.trim())?);
                    }
                }
                "options" => {
                    let v = small_text(&mut field, field_limit).await?;
                    if !v.trim().is_empty() {
                        options = parse_options(&v)?;
                    }
                }
                "labels" => labels = parse_labels(&small_text(&mut field, field_limit).await?)?,
                "description" => description = Some(small_text(&mut field, field_limit).await?),
                "tags" => {
                    let v = small_text(&mut field, field_limit).await?;
                    tags.extend(v.split([',', ' ', '\t', '\n', '\r']).filter(|t| !t.is_empty()).map(str::to_owned));
                    if tags.len() > converto_core::search::MAX_TAGS {
                        return Err(ApiError::bad_request("invalid-tags", format!("at most {} tags", converto_core::search::MAX_TAGS)));
                    }
                }
                "webhook_url" => {
                    let v = small_text(&mut field, field_limit).await?;
                    super::webhooks::check_url_shape(&v)?;
                    webhook_url = Some(v.trim_end_matches('\n').to_owned());
                }
                "webhook_on_start" => {
                    let v = small_text(&mut field, field_limit).await?;
                    webhook_on_start = match v.trim() {
                        "true" | "1" => true,
                        "false" | "0" | "" => false,
                        _ => return Err(ApiError::bad_request("invalid-webhook-on-start", "webhook_on_start must be true or false")),
                    };
                }
                "priority" => {
                    let v = small_text(&mut field, field_limit).await?;
                    priority = parse_priority(v.trim()).ok_or_else(|| {
                        ApiError::bad_request("invalid-priority", format!("priority {v:?} is not an integer"))
                    })?;
                }
                other => {
                    return Err(ApiError::bad_request(
                        "unknown-field",
                        format!("unknown form field {other:?}; expected file, target_format, webhook_url, webhook_on_start, source_format, options, labels, priority, description, tags"),
                    ));
                }
            }
        }
        Ok(())
    }
    .await;
    let cleanup = |file: &Option<(converto_core::intake::Staged, Option<String>)>| {
        let staged = file.as_ref().map(|f| f.0.clone());
        async move {
            if let Some(s) = staged {
                let _ = engine.discard_staged(s).await;
            }
        }
    };
    if let Err(e) = outcome {
        cleanup(&file).await;
        return Err(e);
    }
    if let Err(e) = check_labels(&labels) {
        cleanup(&file).await;
        return Err(e);
    }
    if let Err(e) = check_metadata(&description, &tags) {
        cleanup(&file).await;
        return Err(e);
    }
    let Some(target) = target else {
        cleanup(&file).await;
        return Err(ApiError::bad_request(
            "missing-target",
            "the target_format field is missing",
        ));
    };
    let Some((staged, file_name)) = file else {
        return Err(ApiError::bad_request(
            "missing-file",
            "the file field is missing",
        ));
    };
    let mut sub = Submission::new(target, SubmitInput::staged(staged, file_name));
    sub.source_format = source;
    sub.options = options;
    sub.labels = labels;
    sub.priority = priority;
    sub.webhook = webhook_url.map(|url| converto_core::SubmitWebhook {
        url,
        on_start: webhook_on_start,
    });
    sub.description = description;
    sub.tags = tags;
    Ok(sub)
}

/// Refuses a description or tags the engine would refuse, with its reason (checked here too so
/// that nothing is stored for a submission that cannot succeed).
fn check_metadata(description: &Option<String>, tags: &[String]) -> Result<(), ApiError> {
    converto_core::search::metadata(description.clone(), tags)
        .map(|_| ())
        .map_err(|e| ApiError::bad_request("invalid-metadata", e.to_string()))
}

async fn from_json(engine: &TenantEngine, body: SubmitJson) -> Result<Submission, ApiError> {
    let tags = body.tags.unwrap_or_default();
    check_metadata(&body.description, &tags)?;
    let upload = uuid::Uuid::try_parse(&body.upload_id).map_err(|_| {
        ApiError::bad_request(
            "malformed-id",
            format!("upload_id {:?} is not a UUID", body.upload_id),
        )
    })?;
    // The engine checks the upload is there and, since a presigned object-storage PUT
    // cannot bound its size, that it is within the limit.
    let input = engine.upload_input(upload, body.file_name).await?;
    let target = parse_format("target_format", &body.target_format)?;
    let mut sub = Submission::new(target, input);
    sub.source_format = body
        .source_format
        .as_deref()
        .map(|s| parse_format("source_format", s))
        .transpose()?;
    if let Some(o) = body.options {
        if !(o.is_object() || o.is_null()) {
            return Err(ApiError::bad_request(
                "invalid-options",
                "options must be a JSON object",
            ));
        }
        sub.options = o;
    }
    let labels = body.labels.unwrap_or_default();
    check_labels(&labels)?;
    sub.labels = labels;
    sub.priority = body.priority.unwrap_or(0);
    if let Some(url) = &body.webhook_url {
        super::webhooks::check_url_shape(url)?;
    }
    sub.webhook = body.webhook_url.map(|url| converto_core::SubmitWebhook {
        url,
        on_start: body.webhook_on_start,
    });
    sub.description = body.description;
    sub.tags = tags;
    Ok(sub)
}

/// Filters for `GET /v1/conversions`: every filter given must hold; `status` and `tag` match
/// any of their values. (Documents the query; [`list`] reads it pair by pair, since `tag` and
/// `label` repeat.)
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // documents the query for the OpenAPI spec
pub(crate) struct ListParams {
    /// Comma-separated statuses, e.g. `queued,running`.
    #[param(
        pattern = "^((queued|running|succeeded|failed|cancelled)(,(queued|running|succeeded|failed|cancelled))*)?$"
    )]
    status: Option<String>,
    /// Source format.
    #[param(pattern = "^[a-z0-9][a-z0-9_-]{0,15}$")]
    source_format: Option<String>,
    /// Target format.
    #[param(pattern = "^[a-z0-9][a-z0-9_-]{0,15}$")]
    target_format: Option<String>,
    /// `key=value` (or `key:value`); repeat for several, all of which must match.
    #[param(value_type = Option<Vec<String>>, pattern = "[=:]", max_items = 64)]
    label: Option<Vec<String>>,
    /// A tag; repeat for several, any of which may match (`tag=a&tag=b`). Compared lowercase.
    #[param(value_type = Option<Vec<String>>, pattern = "^[A-Za-z0-9_-]{1,64}$", max_items = 32)]
    tag: Option<Vec<String>>,
    /// RFC 3339 time: created at or after.
    #[param(value_type = Option<String>, format = DateTime)]
    created_after: Option<String>,
    /// RFC 3339 time: created before.
    #[param(value_type = Option<String>, format = DateTime)]
    created_before: Option<String>,
    /// RFC 3339 time: finished at or after (unfinished conversions never match).
    #[param(value_type = Option<String>, format = DateTime)]
    finished_after: Option<String>,
    /// RFC 3339 time: finished before (unfinished conversions never match).
    #[param(value_type = Option<String>, format = DateTime)]
    finished_before: Option<String>,
    /// Full text over the input file name and the description, at most 256 characters. Every word must begin a word there, compared by English stem: `rend` and
    /// `rendered` both find "Rendering"; `acket` does not find "bracket".
    #[param(max_length = 256)]
    q: Option<String>,
    /// The order: `-created` (newest first, the default), `created`, `-finished` (most
    /// recently finished first) or `finished`. Sorting by finish time lists finished
    /// conversions only.
    #[param(pattern = "^-?(created|finished)$")]
    sort: Option<String>,
    /// Page size, 1 to 1000 (default 50).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
    /// `next_cursor` of the previous page, with the same filters and `sort`.
    #[param(
        pattern = "^(0|[1-9][0-9]{0,17})_[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"
    )]
    cursor: Option<String>,
}

/// A format filter, exactly as the spec's pattern has it (no case folding or trimming).
fn parse_format_filter(field: &str, value: &str) -> Result<Format, ApiError> {
    if value.trim() != value || value.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(ApiError::bad_request(
            "invalid-format",
            format!("{field}: {value:?} is not a lowercase format name"),
        ));
    }
    parse_format(field, value)
}

fn parse_time(field: &str, v: &str) -> Result<DateTime<Utc>, ApiError> {
    DateTime::parse_from_rfc3339(v)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            ApiError::bad_request(
                "invalid-time",
                format!("{field}: {e} (want RFC 3339, e.g. 2026-01-31T12:00:00Z)"),
            )
        })
}

/// List conversions, newest first.
#[utoipa::path(get, path = "/v1/conversions", tag = "conversions", params(ListParams),
    responses((status = 200, body = ListView), (status = 400, description = "Malformed filter", body = Problem, content_type = "application/problem+json"), (status = 503, description = "A backend is unavailable, or too many requests at once (see Retry-After)", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn list(
    State(state): State<AppState>,
    principal: Principal,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<Json<ListView>, ApiError> {
    let mut q = ListQuery::default();
    let mut seen = std::collections::HashSet::new();
    for (name, value) in pairs {
        if !matches!(name.as_str(), "tag" | "label") && !seen.insert(name.clone()) {
            return Err(ApiError::bad_request(
                "duplicate-parameter",
                format!(
                    "{:?} may be given once",
                    name.chars().take(32).collect::<String>()
                ),
            ));
        }
        let v = value.as_str();
        match name.as_str() {
            "status" => {
                for part in v.split(',').filter(|_| !v.is_empty()) {
                    q.statuses.push(
                        part.parse::<Status>()
                            .map_err(|e| ApiError::bad_request("invalid-status", e.to_string()))?,
                    );
                }
            }
            "source_format" => q.source_format = Some(parse_format_filter(&name, v)?),
            "target_format" => q.target_format = Some(parse_format_filter(&name, v)?),
            "label" => {
                let (k, v) = v.split_once(['=', ':']).ok_or_else(|| {
                    ApiError::bad_request("invalid-label", "label must be key=value")
                })?;
                q.labels.push((k.to_owned(), v.to_owned()));
                if q.labels.len() > MAX_LABELS {
                    return Err(ApiError::bad_request(
                        "invalid-label",
                        format!("at most {MAX_LABELS} label filters"),
                    ));
                }
            }
            "tag" => q.tags.push(value),
            "created_after" => q.created_after = Some(parse_time(&name, v)?),
            "created_before" => q.created_before = Some(parse_time(&name, v)?),
            "finished_after" => q.finished_after = Some(parse_time(&name, v)?),
            "finished_before" => q.finished_before = Some(parse_time(&name, v)?),
            "q" => q.text = Some(value).filter(|s| !s.is_empty()),
            "sort" => {
                q.sort = v
                    .parse()
                    .map_err(|e: converto_core::search::ParseSortError| {
                        ApiError::bad_request("invalid-sort", e.to_string())
                    })?
            }
            "limit" => {
                q.limit = v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=1000).contains(n))
                    .ok_or_else(|| {
                        ApiError::bad_request(
                            "invalid-limit",
                            format!("limit {v:?} must be a number from 1 to 1000"),
                        )
                    })?;
            }
            "cursor" => {
                // Only the canonical form `next_cursor` gives (what the spec's pattern allows).
                let cursor = v
                    .parse::<converto_core::search::Cursor>()
                    .ok()
                    .filter(|c| c.to_string() == v && is_canonical_v7(&c.id, &c.id.to_string()))
                    .ok_or_else(|| {
                        ApiError::bad_request(
                            "invalid-cursor",
                            format!(
                                "cursor {:?} is not a next_cursor this API gave",
                                v.chars().take(80).collect::<String>()
                            ),
                        )
                    })?;
                q.cursor = Some(cursor);
            }
            _ => {}
        }
    }
    // Bounds and tag rules: the engine checks them, and its refusal is a 400.
    let q = q
        .checked()
        .map_err(|e| ApiError::bad_request("invalid-search", e.to_string()))?;
    let page = state.engine.tenant(&principal.tenant).list(&q).await?;
    Ok(Json(ListView {
        items: page.items.iter().map(ConversionView::from).collect(),
        next_cursor: page.next_cursor.map(|c| c.to_string()),
    }))
}

/// One conversion, with progress and artifact links.
#[utoipa::path(get, path = "/v1/conversions/{id}", tag = "conversions", params(ConversionIdParam),
    responses((status = 200, body = ConversionView), OneConversionErrors))]
pub(crate) async fn get(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<ConversionView>, ApiError> {
    let c = state
        .engine
        .tenant(&principal.tenant)
        .get(parse_id(&id)?)
        .await?;
    let mut view = ConversionView::from(&c);
    let engine = state.engine.tenant(&principal.tenant);
    for a in &mut view.artifacts {
        let query = engine
            .artifact_link(&c, &a.name, state.settings.presign_ttl)
            .await?;
        a.signed_url = Some(format!("{}?{query}", a.url));
    }
    Ok(Json(view))
}

/// Remove a conversion and its files (cancelling it first if it is still live).
#[utoipa::path(delete, path = "/v1/conversions/{id}", tag = "conversions", params(ConversionIdParam),
    responses((status = 204, description = "Removed"), (status = 409, description = "It changed while being removed; try again", body = Problem, content_type = "application/problem+json"), OneConversionErrors))]
pub(crate) async fn delete(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state
        .engine
        .tenant(&principal.tenant)
        .delete(parse_id(&id)?)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Cancel queued or running work.
#[utoipa::path(post, path = "/v1/conversions/{id}/cancel", tag = "conversions", params(ConversionIdParam),
    responses((status = 200, body = ConversionView), (status = 409, description = "Already finished", body = Problem, content_type = "application/problem+json"), OneConversionErrors))]
pub(crate) async fn cancel(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<ConversionView>, ApiError> {
    let c = state
        .engine
        .tenant(&principal.tenant)
        .cancel(parse_id(&id)?)
        .await?;
    Ok(Json(ConversionView::from(&c)))
}

/// Server-Sent Events: `status` and `progress` events until the conversion ends.
#[utoipa::path(get, path = "/v1/conversions/{id}/events", tag = "conversions", params(ConversionIdParam),
    responses((status = 200, description = "text/event-stream of `status` and `progress` events", content_type = "text/event-stream"), OneConversionErrors))]
pub(crate) async fn events(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    // The place is held by the stream and given back when the client goes or the stream ends.
    let Ok(place) = std::sync::Arc::clone(&state.event_streams).try_acquire_owned() else {
        return Ok(crate::middleware::overloaded(
            "too many open event streams; try again shortly",
        ));
    };
    let stream = state.engine.tenant(&principal.tenant).watch(id).await?;
    let sse = stream.map(move |ev| {
        let _held = &place;
        let data = serde_json::to_string(&ev).unwrap_or_else(|_| "{}".into());
        Ok::<_, Infallible>(SseEvent::default().event(ev.kind()).data(data))
    });
    Ok(Sse::new(sse)
        .keep_alive(KeepAlive::new().interval(state.settings.event_keep_alive))
        .into_response())
}

/// A byte range request, parsed.
enum RangeSpec {
    FromTo(u64, u64),
    From(u64),
    Last(u64),
}

fn parse_range(v: &str) -> Option<RangeSpec> {
    let spec = v.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    match (a.trim(), b.trim()) {
        ("", n) => n.parse().ok().map(RangeSpec::Last),
        (a, "") => a.parse().ok().map(RangeSpec::From),
        (a, b) => {
            let (a, b) = (a.parse().ok()?, b.parse::<u64>().ok()?);
            (a <= b).then_some(RangeSpec::FromTo(a, b))
        }
    }
}

fn mime_for(format: &str) -> &'static str {
    match format {
        "stl" => "model/stl",
        "obj" => "model/obj",
        "ply" => "application/ply",
        "step" => "model/step",
        "iges" => "model/iges",
        "glb" => "model/gltf-binary",
        "png" => "image/png",
        "jpeg" => "image/jpeg",
        "webp" => "image/webp",
        "gif" => "image/gif",
        "bmp" => "image/bmp",
        "tiff" => "image/tiff",
        "json" => "application/json",
        "txt" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// The name a download is saved as: the input's stem with the artifact's extension.
fn download_name(input: Option<&str>, artifact: &str, single: bool) -> String {
    let stem = input
        .map(|n| n.rsplit_once('.').map_or(n, |(s, _)| s))
        .filter(|s| !s.is_empty());
    match stem {
        Some(stem) if single => {
            let ext = artifact.rsplit_once('.').map(|(_, e)| e).unwrap_or("bin");
            format!("{stem}.{ext}")
        }
        Some(stem) => format!("{stem}-{artifact}"),
        None => artifact.to_owned(),
    }
}

fn content_disposition(name: &str) -> HeaderValue {
    let ascii: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let encoded = super::views::percent_encode_segment(name);
    HeaderValue::from_str(&format!(
        "attachment; filename=\"{ascii}\"; filename*=UTF-8''{encoded}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("attachment"))
}

/// Removes a staged file whose submission will not be made (uploads are left alone: other
/// conversions may use them, and the janitor takes unclaimed ones).
async fn discard_input(engine: &TenantEngine, input: SubmitInput) {
    if let Err(e) = engine.discard_input(input).await {
        tracing::warn!(error = %e, "could not remove a refused submission's file; the janitor will");
    }
}

/// The refusals every endpoint of one conversion documents (each adds its own).
#[derive(IntoResponses)]
#[allow(dead_code)] // documents the answers for the OpenAPI spec
pub(crate) enum OneConversionErrors {
    #[response(
        status = 400,
        description = "Malformed id",
        content_type = "application/problem+json"
    )]
    MalformedId(Problem),
    #[response(
        status = 404,
        description = "No such conversion",
        content_type = "application/problem+json"
    )]
    NotFound(Problem),
    #[response(
        status = 503,
        description = "A backend is unavailable, or too many requests at once (see Retry-After)",
        content_type = "application/problem+json"
    )]
    Unavailable(Problem),
}

/// The `{id}` of the paths of one conversion, as the spec documents it (the handlers take it
/// as a string and answer a malformed one with a 400).
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // documents the parameter for the OpenAPI spec
pub(crate) struct ConversionIdParam {
    /// The conversion id (a UUIDv7, lowercase)
    #[param(pattern = "^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")]
    id: String,
}

/// The query of a signed download link (`signed_url` of an artifact).
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct LinkParams {
    /// The tenant the link was signed for.
    #[param(pattern = "^[A-Za-z0-9._~%-]{1,200}$")]
    tenant: Option<String>,
    /// When the link expires (Unix seconds).
    expires: Option<i64>,
    /// Hex HMAC-SHA256 over the conversion, the artifact, the tenant and the expiry.
    #[param(pattern = "^[0-9a-f]{64}$")]
    signature: Option<String>,
}

/// Whether a request is a signed artifact link, which carries its own proof instead of a
/// credential (the handler checks the signature; the authentication layer lets it through).
pub fn is_signed_artifact_link(method: &axum::http::Method, uri: &axum::http::Uri) -> bool {
    (method == axum::http::Method::GET || method == axum::http::Method::HEAD)
        && uri.path().starts_with("/v1/conversions/")
        && uri.path().contains("/artifacts/")
        && uri
            .query()
            .is_some_and(|q| q.split('&').any(|kv| kv.starts_with("signature=")))
}

/// Download an artifact (Range, ETag and Content-Disposition supported), or be redirected to
/// a presigned object-storage URL when the server is configured so.
#[utoipa::path(get, path = "/v1/conversions/{id}/artifacts/{name}", tag = "conversions",
    params(ConversionIdParam, ("name" = String, Path, description = "The artifact's name, as listed in the conversion"), LinkParams),
    responses((status = 200, description = "The bytes", content_type = "application/octet-stream"), (status = 206, description = "Partial content", content_type = "application/octet-stream"), (status = 304, description = "Not modified"),
        (status = 307, description = "Redirect to a presigned URL"), (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"), (status = 403, description = "A signed link that is forged, altered or expired", body = Problem, content_type = "application/problem+json"), (status = 404, description = "No such conversion or artifact", body = Problem, content_type = "application/problem+json"), (status = 416, description = "Range not satisfiable (Content-Range gives the size)", body = Problem, content_type = "application/problem+json"), (status = 503, description = "A backend is unavailable, or too many requests at once (see Retry-After)", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn artifact(
    State(state): State<AppState>,
    principal: Result<Principal, Response>,
    Path((id, name)): Path<(String, String)>,
    Query(link): Query<LinkParams>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    // A signed link proves itself (no credential: a browser or an <img> follows it); else the
    // caller's credential names the tenant.
    let engine = match (&link.tenant, link.expires, &link.signature) {
        (Some(tenant), Some(expires), Some(signature)) => {
            let proof = converto_core::intake::LinkProof {
                tenant,
                expires,
                signature,
            };
            state.engine.follow_artifact_link(proof, id, &name).await?
        }
        _ => match principal {
            Ok(p) => state.engine.tenant(&p.tenant),
            Err(rejection) => return Ok(rejection),
        },
    };
    let record = engine.get(id).await?;
    let Some(artifact) = record.artifacts.iter().find(|a| a.name == name) else {
        return Err(ApiError::NotFound {
            detail: format!(
                "conversion {id} has no artifact {name:?} (it is {})",
                record.status
            ),
        });
    };
    let etag = format!("\"{}\"", artifact.checksum.trim_start_matches("sha256:"));
    if state.settings.redirect_downloads
        && let Some(url) = engine
            .artifact_url(id, &name, state.settings.presign_ttl)
            .await?
    {
        let loc = HeaderValue::from_str(&url).map_err(|e| ApiError::Internal(Box::new(e)))?;
        return Ok((StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, loc)]).into_response());
    }
    let etag_value = HeaderValue::from_str(&etag).map_err(|e| ApiError::Internal(Box::new(e)))?;
    if let Some(inm) = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        && inm.split(',').any(|t| t.trim() == etag || t.trim() == "*")
    {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag_value)]).into_response());
    }
    let size = artifact.size;
    let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        // If-Range with a different tag: send the whole thing.
        Some(_)
            if headers
                .get(header::IF_RANGE)
                .is_some_and(|v| v.as_bytes() != etag.as_bytes()) =>
        {
            None
        }
        Some(r) => match parse_range(r) {
            Some(RangeSpec::FromTo(a, b)) if a < size => Some(a..b.saturating_add(1).min(size)),
            Some(RangeSpec::From(a)) if a < size => Some(a..size),
            Some(RangeSpec::Last(n)) if n > 0 && size > 0 => Some(size.saturating_sub(n)..size),
            Some(_) => {
                let mut resp = crate::problem::problem_with(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    "range-not-satisfiable",
                    format!("the artifact has {size} bytes; the range asks for none of them"),
                );
                let cr = HeaderValue::from_str(&format!("bytes */{size}"))
                    .map_err(|e| ApiError::Internal(Box::new(e)))?;
                resp.headers_mut().insert(header::CONTENT_RANGE, cr);
                return Ok(resp);
            }
            None => None, // unparseable or multi-range: ignore, send everything (RFC 9110 allows)
        },
        None => None,
    };
    let (_, read) = engine.open_artifact(id, &name, range.clone()).await?;
    let mut resp = Response::new(Body::from_stream(read.body));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(mime_for(artifact.format.as_str())),
    );
    h.insert(header::ETAG, etag_value);
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    // The one artifact in the target format (a mesh conversion's `output.obj` beside its
    // `preview.png`) is saved under the input's name; side artifacts keep theirs.
    let primary = |a: &converto_core::Artifact| a.format == record.target_format;
    let single = primary(artifact) && record.artifacts.iter().filter(|a| primary(a)).count() == 1;
    h.insert(
        header::CONTENT_DISPOSITION,
        content_disposition(&download_name(
            record.input_name.as_deref(),
            &artifact.name,
            single,
        )),
    );
    let len = read.range.end - read.range.start;
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if range.is_some() {
        let cr = format!(
            "bytes {}-{}/{size}",
            read.range.start,
            read.range.end.saturating_sub(1)
        );
        h.insert(
            header::CONTENT_RANGE,
            HeaderValue::from_str(&cr).map_err(|e| ApiError::Internal(Box::new(e)))?,
        );
        *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse() {
        assert!(matches!(
            parse_range("bytes=0-9"),
            Some(RangeSpec::FromTo(0, 9))
        ));
        assert!(matches!(parse_range("bytes=5-"), Some(RangeSpec::From(5))));
        assert!(matches!(parse_range("bytes=-5"), Some(RangeSpec::Last(5))));
        assert!(parse_range("bytes=9-1").is_none());
        assert!(parse_range("bytes=0-1,4-5").is_none());
        assert!(parse_range("items=0-1").is_none());
    }

    #[test]
    fn download_names_follow_the_input() {
        assert_eq!(
            download_name(Some("bracket.stl"), "output.obj", true),
            "bracket.obj"
        );
        assert_eq!(
            download_name(Some("photo.jpg"), "240p.jpeg", false),
            "photo-240p.jpeg"
        );
        assert_eq!(download_name(None, "output.obj", true), "output.obj");
    }
}

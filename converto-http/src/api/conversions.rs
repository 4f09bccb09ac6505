//! `/v1/conversions`: submit, list, inspect, follow, download, cancel, delete.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{FromRequest, Multipart, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use converto_core::blob::{PresignMethod, validate_key};
use converto_core::store::ListQuery;
use converto_core::{ConversionId, Format, Status, Submission, SubmitInput};
use futures::{Stream, StreamExt};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use super::upload::stream_into_blob;
use super::views::{ConversionView, ListView};
use crate::AppState;
use crate::error::{ApiError, Problem};

/// The multipart form of `POST /v1/conversions`.
#[derive(Debug, ToSchema)]
#[allow(dead_code)] // documents the form for the OpenAPI spec
pub(crate) struct SubmitForm {
    /// The file to convert.
    #[schema(value_type = String, format = Binary)]
    file: Vec<u8>,
    /// The wanted format, e.g. `obj`.
    target_format: String,
    /// The input's format; detected from content and file name if absent.
    source_format: Option<String>,
    /// Converter options as a JSON object, e.g. `{"encoding":"ascii"}`.
    options: Option<String>,
    /// Labels as a JSON object of strings, or `k=v,k2=v2`.
    labels: Option<String>,
    /// Priority (higher first), default 0.
    priority: Option<i32>,
}

/// The JSON form of `POST /v1/conversions`: convert a file uploaded through `/v1/uploads`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitJson {
    /// The id from `POST /v1/uploads`.
    pub upload_id: String,
    /// The wanted format.
    pub target_format: String,
    /// The input's format; detected if absent.
    pub source_format: Option<String>,
    /// The original file name (used for format detection and download names).
    pub file_name: Option<String>,
    /// Converter options.
    #[schema(value_type = Option<Object>)]
    pub options: Option<serde_json::Value>,
    /// Labels.
    pub labels: Option<BTreeMap<String, String>>,
    /// Priority (higher first).
    pub priority: Option<i32>,
}

fn parse_format(field: &str, value: &str) -> Result<Format, ApiError> {
    Format::new(value).map_err(|e| ApiError::bad_request("invalid-format", format!("{field}: {e}")))
}

fn parse_id(s: &str) -> Result<ConversionId, ApiError> {
    s.parse().map_err(|e: converto_core::ParseIdError| {
        ApiError::bad_request("malformed-id", e.to_string())
    })
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

fn check_labels(labels: &BTreeMap<String, String>) -> Result<(), ApiError> {
    if labels.len() > 64
        || labels
            .iter()
            .any(|(k, v)| k.is_empty() || k.len() > 128 || v.len() > 1024)
    {
        return Err(ApiError::bad_request(
            "invalid-labels",
            "at most 64 labels, keys 1 to 128 bytes, values up to 1024 bytes",
        ));
    }
    Ok(())
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

/// Reads a small text field (at most 64 KiB).
async fn small_text(field: &mut axum::extract::multipart::Field<'_>) -> Result<String, ApiError> {
    let name = field.name().unwrap_or("").to_owned();
    let mut buf = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
        buf.extend_from_slice(&chunk);
        if buf.len() > 64 * 1024 {
            return Err(ApiError::bad_request(
                "field-too-large",
                format!("field {name:?} is larger than 64 KiB"),
            ));
        }
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
    params(("Idempotency-Key" = Option<String>, Header, description = "Submitting again with the same key returns the first conversion")),
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
        (status = 422, description = "No converter for the route (supported routes listed)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    request: Request,
) -> Result<Response, ApiError> {
    let key = idempotency_key(&headers)?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let limit = state.settings.max_upload_bytes;
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        // Multipart framing adds a little; anything beyond that is over the limit for sure.
        if len > limit.saturating_add(64 * 1024) {
            return Err(ApiError::TooLarge { limit });
        }
    }
    let submission = if content_type.starts_with("multipart/form-data") {
        let multipart = Multipart::from_request(request, &state)
            .await
            .map_err(|e| ApiError::bad_request("malformed-multipart", e.body_text()))?;
        from_multipart(&state, multipart).await?
    } else if content_type.starts_with("application/json") {
        let Json(body) = Json::<SubmitJson>::from_request(request, &state)
            .await
            .map_err(|e| ApiError::bad_request("malformed-json", e.body_text()))?;
        from_json(&state, body).await?
    } else {
        return Err(ApiError::UnknownFormat {
            detail:
                "send multipart/form-data (with a file) or application/json (with an upload_id)"
                    .into(),
        });
    };
    let staged_key = match &submission.input {
        SubmitInput::Blob { key, .. } => Some(key.clone()),
        SubmitInput::Stream { .. } => None,
    };
    let submission = Submission {
        idempotency_key: key,
        ..submission
    };
    let result = state.engine.submit(submission).await;
    let blobs = &state.engine.backends().blobs;
    match result {
        Ok(s) => {
            if !s.created
                && let Some(k) = staged_key.filter(|k| *k != s.conversion.input_key)
            {
                let _ = blobs.delete(&k).await;
            }
            let view = ConversionView::from(&s.conversion);
            let status = if s.created {
                StatusCode::ACCEPTED
            } else {
                StatusCode::OK
            };
            let location = HeaderValue::from_str(&view.links.this)
                .map_err(|e| ApiError::Internal(Box::new(e)))?;
            Ok((status, [(header::LOCATION, location)], Json(view)).into_response())
        }
        Err(e) => {
            if let Some(k) = staged_key.filter(|k| k.starts_with("uploads/staged-")) {
                let _ = blobs.delete(&k).await;
            }
            Err(e.into())
        }
    }
}

async fn from_multipart(
    state: &AppState,
    mut multipart: Multipart,
) -> Result<Submission, ApiError> {
    let mut target: Option<Format> = None;
    let mut source: Option<Format> = None;
    let mut options = serde_json::Value::Null;
    let mut labels = BTreeMap::new();
    let mut priority = 0;
    let mut file: Option<(String, Option<String>)> = None;
    let blobs = &state.engine.backends().blobs;
    let outcome: Result<(), ApiError> = async {
        while let Some(mut field) = multipart.next_field().await.map_err(multipart_error)? {
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
                            && state.engine.registry().find(&s, t).is_none() {
                                return Err(ApiError::UnsupportedRoute {
                                    source_format: s,
                                    target_format: t.clone(),
                                    supported: state.engine.registry().routes(),
                                });
                            }
                    }
                    let key = format!("uploads/staged-{}", uuid::Uuid::now_v7());
                    let size = stream_into_blob(blobs.as_ref(), &key, state.settings.max_upload_bytes, &mut field).await?;
                    file = Some((key.clone(), file_name));
                    if size == 0 {
                        return Err(ApiError::bad_request("empty-file", "the uploaded file is empty"));
                    }
                }
                "target_format" => target = Some(parse_format("target_format", small_text(&mut field).await?.trim())?),
                "source_format" => {
                    let v = small_text(&mut field).await?;
                    if !v.trim().is_empty() {
                        source = Some(parse_format("source_format", v.trim())?);
                    }
                }
                "options" => {
                    let v = small_text(&mut field).await?;
                    if !v.trim().is_empty() {
                        options = parse_options(&v)?;
                    }
                }
                "labels" => labels = parse_labels(&small_text(&mut field).await?)?,
                "priority" => {
                    let v = small_text(&mut field).await?;
                    priority = v.trim().parse::<i32>().map_err(|_| {
                        ApiError::bad_request("invalid-priority", format!("priority {v:?} is not an integer"))
                    })?;
                }
                other => {
                    return Err(ApiError::bad_request(
                        "unknown-field",
                        format!("unknown form field {other:?}; expected file, target_format, source_format, options, labels, priority"),
                    ));
                }
            }
        }
        Ok(())
    }
    .await;
    let cleanup = |file: &Option<(String, Option<String>)>| {
        let key = file.as_ref().map(|f| f.0.clone());
        async move {
            if let Some(k) = key {
                let _ = blobs.delete(&k).await;
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
    let Some(target) = target else {
        cleanup(&file).await;
        return Err(ApiError::bad_request(
            "missing-target",
            "the target_format field is missing",
        ));
    };
    let Some((key, file_name)) = file else {
        return Err(ApiError::bad_request(
            "missing-file",
            "the file field is missing",
        ));
    };
    let mut sub = Submission::new(target, SubmitInput::Blob { key, file_name });
    sub.source_format = source;
    sub.options = options;
    sub.labels = labels;
    sub.priority = priority;
    Ok(sub)
}

async fn from_json(state: &AppState, body: SubmitJson) -> Result<Submission, ApiError> {
    let upload = uuid::Uuid::try_parse(&body.upload_id).map_err(|_| {
        ApiError::bad_request(
            "malformed-id",
            format!("upload_id {:?} is not a UUID", body.upload_id),
        )
    })?;
    let key = format!("uploads/{upload}");
    validate_key(&key).map_err(|e| ApiError::bad_request("malformed-id", e.to_string()))?;
    state
        .engine
        .backends()
        .blobs
        .head(&key)
        .await
        .map_err(|e| match e {
            converto_core::blob::BlobError::NotFound { .. } => ApiError::NotFound {
                detail: format!("no upload {upload}: PUT the file to its upload URL first"),
            },
            other => ApiError::from(converto_core::EngineError::Blob(other)),
        })?;
    let target = parse_format("target_format", &body.target_format)?;
    let mut sub = Submission::new(
        target,
        SubmitInput::Blob {
            key,
            file_name: body.file_name,
        },
    );
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
    Ok(sub)
}

/// Filters for `GET /v1/conversions`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListParams {
    /// Comma-separated statuses, e.g. `queued,running`.
    status: Option<String>,
    /// Source format.
    source_format: Option<String>,
    /// Target format.
    target_format: Option<String>,
    /// `key=value`.
    label: Option<String>,
    /// RFC 3339 time: created at or after.
    created_after: Option<String>,
    /// RFC 3339 time: created before.
    created_before: Option<String>,
    /// Text in the input file name.
    q: Option<String>,
    /// Page size, 1 to 1000 (default 50).
    limit: Option<String>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
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
    responses((status = 200, body = ListView), (status = 400, body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn list(
    State(state): State<AppState>,
    Query(p): Query<ListParams>,
) -> Result<Json<ListView>, ApiError> {
    let mut q = ListQuery::default();
    if let Some(s) = p.status.as_deref().filter(|s| !s.is_empty()) {
        for part in s.split(',') {
            q.statuses.push(
                part.trim()
                    .parse::<Status>()
                    .map_err(|e| ApiError::bad_request("invalid-status", e.to_string()))?,
            );
        }
    }
    q.source_format = p
        .source_format
        .as_deref()
        .map(|v| parse_format("source_format", v))
        .transpose()?;
    q.target_format = p
        .target_format
        .as_deref()
        .map(|v| parse_format("target_format", v))
        .transpose()?;
    if let Some(l) = p.label.as_deref() {
        let (k, v) = l
            .split_once(['=', ':'])
            .ok_or_else(|| ApiError::bad_request("invalid-label", "label must be key=value"))?;
        q.label = Some((k.to_owned(), v.to_owned()));
    }
    q.created_after = p
        .created_after
        .as_deref()
        .map(|v| parse_time("created_after", v))
        .transpose()?;
    q.created_before = p
        .created_before
        .as_deref()
        .map(|v| parse_time("created_before", v))
        .transpose()?;
    q.text = p.q.filter(|s| !s.is_empty());
    if let Some(l) = p.limit.as_deref() {
        q.limit = l
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid-limit",
                    format!("limit {l:?} must be a number from 1 to 1000"),
                )
            })?;
    }
    q.cursor = p
        .cursor
        .as_deref()
        .map(|c| {
            parse_id(c).map_err(|_| {
                ApiError::bad_request(
                    "invalid-cursor",
                    format!("cursor {c:?} is not a conversion id"),
                )
            })
        })
        .transpose()?;
    let page = state.engine.list(&q).await?;
    Ok(Json(ListView {
        items: page.items.iter().map(ConversionView::from).collect(),
        next_cursor: page.next_cursor.map(|c| c.to_string()),
    }))
}

/// One conversion, with progress and artifact links.
#[utoipa::path(get, path = "/v1/conversions/{id}", tag = "conversions", params(("id" = String, Path)),
    responses((status = 200, body = ConversionView), (status = 400, body = Problem), (status = 404, body = Problem)))]
pub(crate) async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ConversionView>, ApiError> {
    let c = state.engine.get(parse_id(&id)?).await?;
    Ok(Json(ConversionView::from(&c)))
}

/// Remove a conversion and its files (cancelling it first if it is still live).
#[utoipa::path(delete, path = "/v1/conversions/{id}", tag = "conversions", params(("id" = String, Path)),
    responses((status = 204), (status = 400, body = Problem), (status = 404, body = Problem)))]
pub(crate) async fn delete(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.engine.delete(parse_id(&id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Cancel queued or running work.
#[utoipa::path(post, path = "/v1/conversions/{id}/cancel", tag = "conversions", params(("id" = String, Path)),
    responses((status = 200, body = ConversionView), (status = 404, body = Problem), (status = 409, description = "Already finished", body = Problem)))]
pub(crate) async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ConversionView>, ApiError> {
    let c = state.engine.cancel(parse_id(&id)?).await?;
    Ok(Json(ConversionView::from(&c)))
}

/// Server-Sent Events: `status` and `progress` events until the conversion ends.
#[utoipa::path(get, path = "/v1/conversions/{id}/events", tag = "conversions", params(("id" = String, Path)),
    responses((status = 200, description = "text/event-stream of `status` and `progress` events", content_type = "text/event-stream"), (status = 404, body = Problem)))]
pub(crate) async fn events(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let stream = state.engine.watch(parse_id(&id)?).await?;
    let sse = stream.map(|ev| {
        let data = serde_json::to_string(&ev).unwrap_or_else(|_| "{}".into());
        Ok(SseEvent::default().event(ev.kind()).data(data))
    });
    Ok(Sse::new(sse).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
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

/// Download an artifact (Range, ETag and Content-Disposition supported), or be redirected to
/// a presigned object-storage URL when the server is configured so.
#[utoipa::path(get, path = "/v1/conversions/{id}/artifacts/{name}", tag = "conversions",
    params(("id" = String, Path), ("name" = String, Path)),
    responses((status = 200, description = "The bytes"), (status = 206, description = "Partial content"), (status = 304, description = "Not modified"),
        (status = 307, description = "Redirect to a presigned URL"), (status = 404, body = Problem), (status = 416, description = "Range not satisfiable")))]
pub(crate) async fn artifact(
    State(state): State<AppState>,
    Path((id, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let record = state.engine.get(id).await?;
    let Some(artifact) = record.artifacts.iter().find(|a| a.name == name) else {
        return Err(ApiError::NotFound {
            detail: format!(
                "conversion {id} has no artifact {name:?} (it is {})",
                record.status
            ),
        });
    };
    let etag = format!("\"{}\"", artifact.checksum.trim_start_matches("sha256:"));
    let blobs = &state.engine.backends().blobs;
    if state.settings.redirect_downloads && blobs.capabilities().presign {
        let url = blobs
            .presign(
                PresignMethod::Get,
                &artifact.blob_key,
                state.settings.presign_ttl,
            )
            .await
            .map_err(|e| ApiError::from(converto_core::EngineError::Blob(e)))?;
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
            Some(RangeSpec::FromTo(a, b)) if a < size => Some(a..(b + 1).min(size)),
            Some(RangeSpec::From(a)) if a < size => Some(a..size),
            Some(RangeSpec::Last(n)) if n > 0 && size > 0 => Some(size.saturating_sub(n)..size),
            Some(_) => {
                let cr = HeaderValue::from_str(&format!("bytes */{size}"))
                    .map_err(|e| ApiError::Internal(Box::new(e)))?;
                return Ok((
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    [(header::CONTENT_RANGE, cr)],
                )
                    .into_response());
            }
            None => None, // unparseable or multi-range: ignore, send everything (RFC 9110 allows)
        },
        None => None,
    };
    let (_, read) = state.engine.open_artifact(id, &name, range.clone()).await?;
    let mut resp = Response::new(Body::from_stream(read.body));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(mime_for(artifact.format.as_str())),
    );
    h.insert(header::ETAG, etag_value);
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    let single = record.artifacts.len() == 1;
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

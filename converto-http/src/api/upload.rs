//! `/v1/uploads`: upload first, convert later (the server's own PUT, or a presigned URL).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use bytes::Bytes;
use chrono::Utc;
use converto_core::blob::{BlobError, BlobStore, ByteStream, PresignMethod};
use futures::StreamExt;
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_stream_shim::ReceiverStream;
use utoipa::IntoParams;

use super::views::{UploadTicket, UploadView};
use crate::AppState;
use crate::error::{ApiError, Problem};
use crate::tickets::TicketError;

/// A receiver as a stream (tokio-stream's wrapper, inlined to avoid the dependency).
mod tokio_stream_shim {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use tokio::sync::mpsc::Receiver;

    pub(super) struct ReceiverStream<T>(pub(super) Receiver<T>);

    impl<T> futures::Stream for ReceiverStream<T> {
        type Item = T;
        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
            self.0.poll_recv(cx)
        }
    }
}

/// Chunks in flight between the request and the blob store: memory stays at a few chunks
/// whatever the file size.
const PIPE_DEPTH: usize = 4;

/// A source of body chunks (a multipart field or a whole request body).
pub(crate) trait ChunkSource {
    /// The next chunk, `None` at the end.
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, ApiError>;
}

impl ChunkSource for axum::extract::multipart::Field<'_> {
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, ApiError> {
        self.chunk()
            .await
            .map_err(super::conversions::multipart_error)
    }
}

/// A request body as chunks.
pub(crate) struct BodyChunks(pub(crate) axum::body::BodyDataStream);

impl ChunkSource for BodyChunks {
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, ApiError> {
        match self.0.next().await {
            None => Ok(None),
            Some(Ok(b)) => Ok(Some(b)),
            Some(Err(e)) => Err(ApiError::bad_request(
                "body-read-failed",
                format!("reading the upload failed: {e}"),
            )),
        }
    }
}

/// Streams chunks into the blob at `key`, at most `limit` bytes; returns the size. On any
/// failure nothing is left at `key`.
pub(crate) async fn stream_into_blob(
    blobs: &dyn BlobStore,
    key: &str,
    limit: u64,
    source: &mut impl ChunkSource,
) -> Result<u64, ApiError> {
    let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(PIPE_DEPTH);
    let body: ByteStream = Box::pin(ReceiverStream(rx));
    let total = Arc::new(AtomicU64::new(0));
    let too_large = Arc::new(AtomicBool::new(false));
    let pump = async {
        // Owned here, so the body stream ends when the pump does.
        let tx = tx;
        loop {
            match source.next_chunk().await {
                Ok(Some(chunk)) => {
                    let n =
                        total.fetch_add(chunk.len() as u64, Ordering::Relaxed) + chunk.len() as u64;
                    if n > limit {
                        too_large.store(true, Ordering::Relaxed);
                        let _ = tx
                            .send(Err(std::io::Error::new(
                                std::io::ErrorKind::FileTooLarge,
                                "upload over the limit",
                            )))
                            .await;
                        return Err(ApiError::TooLarge { limit });
                    }
                    if tx.send(Ok(chunk)).await.is_err() {
                        return Ok(()); // the store gave up; its error explains why
                    }
                }
                Ok(None) => return Ok(()),
                Err(e) => {
                    let _ = tx
                        .send(Err(std::io::Error::other("upload interrupted")))
                        .await;
                    return Err(e);
                }
            }
        }
    };
    let put = blobs.put(key, body);
    let (pumped, stored) = futures::join!(pump, put);
    if let Err(e) = pumped {
        let _ = blobs.delete(key).await;
        return Err(e);
    }
    match stored {
        Ok(meta) => Ok(meta.size),
        Err(e) => {
            let _ = blobs.delete(key).await;
            if too_large.load(Ordering::Relaxed) {
                return Err(ApiError::TooLarge { limit });
            }
            Err(match e {
                BlobError::Body(io) => ApiError::bad_request(
                    "body-read-failed",
                    format!("reading the upload failed: {io}"),
                ),
                other => ApiError::from(converto_core::EngineError::Blob(other)),
            })
        }
    }
}

/// Get a place to upload a file before converting it: a presigned object-storage URL when the
/// blob store can presign, otherwise this server's own `PUT /v1/uploads/{id}` with a signed
/// ticket (expiry and size limit) in its query.
///
/// A presigned object-storage URL cannot bound the size (object_store's signer signs method,
/// path and expiry only), so a submission from an upload checks the stored size instead.
#[utoipa::path(post, path = "/v1/uploads", tag = "uploads",
    responses((status = 201, body = UploadTicket),
        (status = 503, description = "The blob store is unavailable", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn create(
    State(state): State<AppState>,
) -> Result<(StatusCode, Json<UploadTicket>), ApiError> {
    let id = uuid::Uuid::now_v7();
    let key = format!("uploads/{id}");
    let ttl = state.settings.presign_ttl;
    let blobs = &state.engine.backends().blobs;
    let expires_at =
        Utc::now() + chrono::Duration::from_std(ttl).unwrap_or_else(|_| chrono::Duration::hours(1));
    let max_bytes = state.settings.max_upload_bytes;
    let (url, presigned) = if blobs.capabilities().presign {
        let url = blobs
            .presign(PresignMethod::Put, &key, ttl)
            .await
            .map_err(|e| ApiError::from(converto_core::EngineError::Blob(e)))?;
        (url, true)
    } else {
        let base = state
            .settings
            .public_url
            .as_deref()
            .unwrap_or("")
            .trim_end_matches('/');
        let ticket = state
            .settings
            .upload_signer
            .issue(id, expires_at, max_bytes);
        (format!("{base}{}", ticket.path_and_query()), false)
    };
    Ok((
        StatusCode::CREATED,
        Json(UploadTicket {
            upload_id: id.to_string(),
            method: "PUT".into(),
            url,
            presigned,
            expires_at,
            max_bytes,
        }),
    ))
}

/// The ticket in the query of `PUT /v1/uploads/{id}`, as `POST /v1/uploads` issued it.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct TicketParams {
    /// When the ticket expires (Unix seconds).
    expires: Option<String>,
    /// The largest body the ticket allows.
    max_bytes: Option<String>,
    /// Hex HMAC-SHA256 over the upload id, `expires` and `max_bytes`.
    #[param(pattern = "^[0-9a-f]{64}$")]
    signature: Option<String>,
}

/// Upload the bytes of a file (streamed to the blob store), with the URL `POST /v1/uploads`
/// gave: its signed ticket bounds the time and the size.
#[utoipa::path(put, path = "/v1/uploads/{id}", tag = "uploads",
    params(("id" = String, Path, format = Uuid, pattern = "^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$", description = "The upload id from `POST /v1/uploads`"), TicketParams),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 201, body = UploadView),
        (status = 400, description = "Malformed id or empty body", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "No valid, unexpired ticket", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Already uploaded", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Larger than the ticket allows", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The blob store is unavailable", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn put(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(ticket): Query<TicketParams>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<UploadView>), ApiError> {
    let id = uuid::Uuid::try_parse(&id).map_err(|_| {
        ApiError::bad_request("malformed-id", format!("upload id {id:?} is not a UUID"))
    })?;
    let granted = state
        .settings
        .upload_signer
        .verify(
            id,
            ticket.expires.as_deref().and_then(|v| v.parse().ok()),
            ticket.max_bytes.as_deref().and_then(|v| v.parse().ok()),
            ticket.signature.as_deref(),
            Utc::now(),
        )
        .map_err(|e| ApiError::Forbidden {
            slug: match e {
                TicketError::Expired => "upload-ticket-expired",
                _ => "invalid-upload-ticket",
            },
            detail: e.to_string(),
        })?;
    let limit = granted.min(state.settings.max_upload_bytes);
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > limit
    {
        return Err(ApiError::TooLarge { limit });
    }
    let key = format!("uploads/{id}");
    let blobs = &state.engine.backends().blobs;
    // Uploads are written once: a conversion may already be reading this one.
    match blobs.head(&key).await {
        Ok(_) => {
            return Err(ApiError::Conflict {
                detail: format!(
                    "upload {id} was already received; ask POST /v1/uploads for a new one"
                ),
            });
        }
        Err(BlobError::NotFound { .. }) => {}
        Err(e) => return Err(ApiError::from(converto_core::EngineError::Blob(e))),
    }
    let size = stream_into_blob(
        blobs.as_ref(),
        &key,
        limit,
        &mut BodyChunks(body.into_data_stream()),
    )
    .await?;
    if size == 0 {
        let _ = blobs.delete(&key).await;
        return Err(ApiError::bad_request(
            "empty-file",
            "the uploaded file is empty",
        ));
    }
    Ok((
        StatusCode::CREATED,
        Json(UploadView {
            upload_id: id.to_string(),
            size,
        }),
    ))
}

/// How long after its ticket expired an unclaimed upload is kept (a client may have started
/// its upload just before the expiry and submit just after).
pub const UNCLAIMED_UPLOAD_GRACE: std::time::Duration = std::time::Duration::from_secs(3600);

/// Removes uploads (`uploads/…`: made with `POST /v1/uploads`, or staged by a multipart
/// submission that never completed) that no conversion claims and that are older than
/// `older_than`. Returns how many it removed. A conversion claims its input when it is
/// submitted (`Engine::submit`), so an upload in use is never removed.
pub async fn remove_unclaimed_uploads(
    blobs: &dyn BlobStore,
    older_than: std::time::Duration,
) -> Result<usize, BlobError> {
    let cutoff = Utc::now()
        - chrono::Duration::from_std(older_than).unwrap_or_else(|_| chrono::Duration::days(1));
    // One listing holds the uploads and their claims (`uploads/ID.claims/CONVERSION`).
    let listed = blobs.list("uploads/").await?;
    let claimed: std::collections::HashSet<&str> = listed
        .iter()
        .filter_map(|meta| converto_core::engine::claimed_input(&meta.key))
        .collect();
    let mut removed = 0;
    for meta in &listed {
        let is_upload = meta
            .key
            .strip_prefix("uploads/")
            .is_some_and(|rest| !rest.contains('/'));
        if is_upload && meta.last_modified <= cutoff && !claimed.contains(meta.key.as_str()) {
            blobs.delete(&meta.key).await?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Runs [`remove_unclaimed_uploads`] now and then every `every` until `stop` is cancelled,
/// logging what it removed and any error (the next round tries again).
pub async fn run_upload_janitor(
    blobs: Arc<dyn BlobStore>,
    older_than: std::time::Duration,
    every: std::time::Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        match remove_unclaimed_uploads(blobs.as_ref(), older_than).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "removed unclaimed uploads past their expiry"),
            Err(e) => tracing::warn!(error = %e, "could not clean up unclaimed uploads"),
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}

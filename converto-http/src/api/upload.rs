//! `/v1/uploads`: upload first, convert later (the server's own PUT, or a presigned URL).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use bytes::Bytes;
use chrono::Utc;
use converto_core::blob::{BlobError, BlobStore, ByteStream, PresignMethod};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream_shim::ReceiverStream;

use super::views::{UploadTicket, UploadView};
use crate::AppState;
use crate::error::{ApiError, Problem};

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
/// blob store can presign, otherwise this server's own `PUT /v1/uploads/{id}`.
#[utoipa::path(post, path = "/v1/uploads", tag = "uploads",
    responses((status = 201, body = UploadTicket)))]
pub(crate) async fn create(
    State(state): State<AppState>,
) -> Result<(StatusCode, Json<UploadTicket>), ApiError> {
    let id = uuid::Uuid::now_v7();
    let key = format!("uploads/{id}");
    let ttl = state.settings.presign_ttl;
    let blobs = &state.engine.backends().blobs;
    let expires_at =
        Utc::now() + chrono::Duration::from_std(ttl).unwrap_or_else(|_| chrono::Duration::hours(1));
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
        (format!("{base}/v1/uploads/{id}"), false)
    };
    Ok((
        StatusCode::CREATED,
        Json(UploadTicket {
            upload_id: id.to_string(),
            method: "PUT".into(),
            url,
            presigned,
            expires_at,
        }),
    ))
}

/// Upload the bytes of a file (streamed to the blob store).
#[utoipa::path(put, path = "/v1/uploads/{id}", tag = "uploads", params(("id" = String, Path)),
    request_body(content = String, content_type = "application/octet-stream"),
    responses((status = 201, body = UploadView), (status = 400, body = Problem), (status = 409, body = Problem), (status = 413, body = Problem)))]
pub(crate) async fn put(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<UploadView>), ApiError> {
    let id = uuid::Uuid::try_parse(&id).map_err(|_| {
        ApiError::bad_request("malformed-id", format!("upload id {id:?} is not a UUID"))
    })?;
    let limit = state.settings.max_upload_bytes;
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

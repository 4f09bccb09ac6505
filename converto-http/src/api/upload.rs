//! `/v1/uploads`: upload first, convert later (the server's own PUT, or a presigned URL).

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use bytes::Bytes;
use converto_core::blob::ByteStream;
use converto_core::intake::{Staged, TicketProof, UploadTarget};
use futures::StreamExt;
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_stream_shim::ReceiverStream;
use utoipa::IntoParams;

use super::views::{UploadTicket, UploadView};
use crate::AppState;
use crate::auth::Principal;
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

/// Stages a multipart field (or any chunk source) through the engine
/// ([`Engine::stage_input`](converto_core::Engine::stage_input): size limit, nothing left on
/// failure). The source borrows the request, so its chunks cross a small channel into the
/// stream the engine stores.
pub(crate) async fn stage(
    engine: &converto_core::TenantEngine,
    source: &mut impl ChunkSource,
) -> Result<Staged, ApiError> {
    let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(PIPE_DEPTH);
    let body: ByteStream = Box::pin(ReceiverStream(rx));
    let pump = async {
        // Owned here, so the body stream ends when the pump does.
        let tx = tx;
        loop {
            match source.next_chunk().await {
                Ok(Some(chunk)) => {
                    if tx.send(Ok(chunk)).await.is_err() {
                        return Ok(()); // the engine gave up; its error explains why
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
    let (pumped, staged) = futures::join!(pump, engine.stage_input(body));
    match (pumped, staged) {
        (Ok(()), Ok(staged)) => Ok(staged),
        (Err(e), Ok(staged)) => {
            let _ = engine.discard_staged(staged).await;
            Err(e)
        }
        (Err(e), Err(_)) => Err(e),
        (Ok(()), Err(e)) => Err(e.into()),
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
    principal: Principal,
) -> Result<(StatusCode, Json<UploadTicket>), ApiError> {
    let ticket = state
        .engine
        .tenant(&principal.tenant)
        .create_upload()
        .await?;
    let (url, presigned) = match ticket.target {
        UploadTarget::Presigned { url } => (url, true),
        UploadTarget::Ticket(t) => {
            let base = state
                .settings
                .public_url
                .as_deref()
                .unwrap_or("")
                .trim_end_matches('/');
            (format!("{base}{}", t.path_and_query()), false)
        }
    };
    Ok((
        StatusCode::CREATED,
        Json(UploadTicket {
            upload_id: ticket.upload_id.to_string(),
            method: "PUT".into(),
            url,
            presigned,
            expires_at: ticket.expires_at,
            max_bytes: ticket.max_bytes,
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
    principal: Principal,
    Path(id): Path<String>,
    Query(ticket): Query<TicketParams>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<UploadView>), ApiError> {
    let id = uuid::Uuid::try_parse(&id).map_err(|_| {
        ApiError::bad_request("malformed-id", format!("upload id {id:?} is not a UUID"))
    })?;
    let proof = TicketProof {
        expires: ticket.expires.as_deref().and_then(|v| v.parse().ok()),
        max_bytes: ticket.max_bytes.as_deref().and_then(|v| v.parse().ok()),
        signature: ticket.signature.as_deref(),
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let body: ByteStream = body
        .into_data_stream()
        .map(|chunk| chunk.map_err(std::io::Error::other))
        .boxed();
    let size = state
        .engine
        .tenant(&principal.tenant)
        .receive_upload(id, proof, declared, body)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(UploadView {
            upload_id: id.to_string(),
            size,
        }),
    ))
}

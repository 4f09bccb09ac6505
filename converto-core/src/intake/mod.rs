//! Intake: everything between "bytes arrive" and "a conversion is submitted", owned by the
//! engine so the HTTP API, the CLI and embedding programs share it: upload tickets and the
//! uploads they allow, staging a streamed file with the size limit, the blob key layout
//! ([`keys`]), and the janitor that removes uploads nobody claimed.
//!
//! Callers never see a blob key: an upload is named by its id, a staged file by the
//! [`Staged`] handle the engine gave back.

pub mod keys;
pub mod tickets;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use uuid::Uuid;

pub use tickets::{Ticket, TicketError, UploadSigner};

use crate::ConversionId;
use crate::blob::{BlobError, ByteStream, PresignMethod};
use crate::engine::{Engine, EngineError, SubmitInput};

/// Where to send an upload's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UploadTarget {
    /// A presigned object-storage URL (PUT the bytes there directly).
    Presigned {
        /// The URL.
        url: String,
    },
    /// This service's own upload endpoint, with the signed ticket it must carry.
    Ticket(Ticket),
}

/// A place to upload a file before converting it, from [`Engine::create_upload`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadTicket {
    /// The upload's id: submit with [`SubmitInput::Upload`] once the bytes are there.
    pub upload_id: Uuid,
    /// When the ticket stops working.
    pub expires_at: DateTime<Utc>,
    /// The largest file it takes.
    pub max_bytes: u64,
    /// Where the bytes go.
    pub target: UploadTarget,
}

/// The proof a client presents with an upload's bytes: the query of the ticket's URL.
#[derive(Debug, Clone, Copy, Default)]
pub struct TicketProof<'a> {
    /// `expires`, Unix seconds.
    pub expires: Option<i64>,
    /// `max_bytes`.
    pub max_bytes: Option<u64>,
    /// `signature`, hex.
    pub signature: Option<&'a str>,
}

/// A file received for a submission, not yet submitted: hand it to
/// [`SubmitInput::staged`]. A staged file nobody submits is removed by the janitor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Staged {
    pub(crate) key: String,
    /// Its size in bytes.
    pub size: u64,
}

/// How each backend answered a readiness check.
#[derive(Debug)]
pub struct Readiness {
    /// `(backend, None)` when it answered, `(backend, Some(reason))` when not. The reasons are
    /// the backends' errors: log them, do not show them to clients.
    pub checks: Vec<(&'static str, Option<String>)>,
}

impl Readiness {
    /// Whether every backend answered.
    pub fn is_ready(&self) -> bool {
        self.checks.iter().all(|(_, e)| e.is_none())
    }
}

impl Engine {
    async fn signer(&self) -> Result<&UploadSigner, EngineError> {
        self.inner
            .signer
            .get_or_try_init(|| async {
                UploadSigner::from_blob_store(self.inner.backends.blobs.as_ref())
                    .await
                    .map_err(|e| match e {
                        tickets::SignerError::Blob(b) => EngineError::Blob(b),
                        other => {
                            EngineError::Blob(BlobError::backend("upload secret", true, other))
                        }
                    })
            })
            .await
    }

    /// The largest input accepted (`max_input_bytes`, or unlimited).
    fn input_limit(&self) -> u64 {
        self.inner.config.max_input_bytes.unwrap_or(u64::MAX)
    }

    /// A place to upload a file first and convert it later (possibly several times): a
    /// presigned URL where the blob store can presign, else a signed ticket for
    /// [`receive_upload`](Engine::receive_upload). Valid for `upload_ttl`, for files up to
    /// `max_input_bytes`.
    pub async fn create_upload(&self) -> Result<UploadTicket, EngineError> {
        let upload_id = Uuid::now_v7();
        let ttl = self.inner.config.upload_ttl;
        let expires_at = Utc::now()
            + chrono::Duration::from_std(ttl).unwrap_or_else(|_| chrono::Duration::hours(1));
        let max_bytes = self.input_limit();
        let blobs = &self.inner.backends.blobs;
        let target = if blobs.capabilities().presign {
            UploadTarget::Presigned {
                url: blobs
                    .presign(PresignMethod::Put, &keys::upload(upload_id), ttl)
                    .await?,
            }
        } else {
            UploadTarget::Ticket(self.signer().await?.issue(upload_id, expires_at, max_bytes))
        };
        Ok(UploadTicket {
            upload_id,
            expires_at,
            max_bytes,
            target,
        })
    }

    /// Receives an upload's bytes, checking its ticket first: the signature, the expiry and
    /// the size it allows (and `max_input_bytes`). An upload is written once
    /// ([`EngineError::UploadExists`] for a second time: a conversion may be reading it).
    /// Returns the size stored; on any failure nothing is left.
    pub async fn receive_upload(
        &self,
        upload_id: Uuid,
        proof: TicketProof<'_>,
        declared_len: Option<u64>,
        body: ByteStream,
    ) -> Result<u64, EngineError> {
        let granted = self.signer().await?.verify(
            upload_id,
            proof.expires,
            proof.max_bytes,
            proof.signature,
            Utc::now(),
        )?;
        let limit = granted.min(self.input_limit());
        if declared_len.is_some_and(|n| n > limit) {
            return Err(EngineError::InputTooLarge { limit });
        }
        let key = keys::upload(upload_id);
        let blobs = &self.inner.backends.blobs;
        match blobs.head(&key).await {
            Ok(_) => return Err(EngineError::UploadExists { upload_id }),
            Err(BlobError::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        self.store_limited(&key, limit, body).await
    }

    /// Stores a file received as part of a submission (a multipart form's file, say), up to
    /// `max_input_bytes`, and returns its handle for [`SubmitInput::staged`]. On any failure
    /// nothing is left.
    pub async fn stage_input(&self, body: ByteStream) -> Result<Staged, EngineError> {
        let key = keys::staged();
        let size = self.store_limited(&key, self.input_limit(), body).await?;
        Ok(Staged { key, size })
    }

    /// Removes a staged file that will not be submitted.
    pub async fn discard_staged(&self, staged: Staged) -> Result<(), EngineError> {
        Ok(self.inner.backends.blobs.delete(&staged.key).await?)
    }

    /// The input for a conversion of an earlier upload, once its bytes are there: refused
    /// when missing ([`EngineError::UploadNotFound`]) or over `max_input_bytes` (a presigned
    /// PUT cannot bound its size, so it is checked here).
    pub async fn upload_input(
        &self,
        upload_id: Uuid,
        file_name: Option<String>,
    ) -> Result<SubmitInput, EngineError> {
        let key = keys::upload(upload_id);
        let meta = match self.inner.backends.blobs.head(&key).await {
            Ok(m) => m,
            Err(BlobError::NotFound { .. }) => {
                return Err(EngineError::UploadNotFound { upload_id });
            }
            Err(e) => return Err(e.into()),
        };
        let limit = self.input_limit();
        if meta.size > limit {
            return Err(EngineError::InputTooLarge { limit });
        }
        Ok(SubmitInput::Blob { key, file_name })
    }

    async fn store_limited(
        &self,
        key: &str,
        limit: u64,
        body: ByteStream,
    ) -> Result<u64, EngineError> {
        let blobs = &self.inner.backends.blobs;
        let total = Arc::new(AtomicU64::new(0));
        let over = Arc::new(AtomicBool::new(false));
        let (t, o) = (Arc::clone(&total), Arc::clone(&over));
        let limited: ByteStream = body
            .map(move |chunk| {
                let chunk = chunk?;
                let n = t.fetch_add(chunk.len() as u64, Ordering::Relaxed) + chunk.len() as u64;
                if n > limit {
                    o.store(true, Ordering::Relaxed);
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::FileTooLarge,
                        "over the size limit",
                    ));
                }
                Ok(chunk)
            })
            .boxed();
        match blobs.put(key, limited).await {
            Ok(meta) if meta.size == 0 => {
                let _ = blobs.delete(key).await;
                Err(EngineError::EmptyInput)
            }
            Ok(meta) => Ok(meta.size),
            Err(e) => {
                let _ = blobs.delete(key).await;
                if over.load(Ordering::Relaxed) {
                    return Err(EngineError::InputTooLarge { limit });
                }
                Err(e.into())
            }
        }
    }

    /// Removes uploads and staged files that no conversion claims and that are older than
    /// `upload_ttl + unclaimed_upload_grace`; returns how many. Runs with the sweeper in
    /// [`run_workers`](Engine::run_workers); call it directly on an engine without workers.
    pub async fn remove_unclaimed_uploads(&self) -> Result<usize, EngineError> {
        let cfg = &self.inner.config;
        let older_than = cfg.upload_ttl + cfg.unclaimed_upload_grace;
        let cutoff = Utc::now()
            - chrono::Duration::from_std(older_than).unwrap_or_else(|_| chrono::Duration::days(1));
        let blobs = &self.inner.backends.blobs;
        // One listing holds the uploads and their claims.
        let listed = blobs.list(keys::UPLOADS).await?;
        let claimed: std::collections::HashSet<&str> = listed
            .iter()
            .filter_map(|meta| keys::claimed_input(&meta.key))
            .collect();
        let mut removed = 0;
        for meta in &listed {
            if keys::is_upload(&meta.key)
                && meta.last_modified <= cutoff
                && !claimed.contains(meta.key.as_str())
            {
                blobs.delete(&meta.key).await?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// A URL a client can download an artifact from without this service, valid for `ttl`,
    /// where the blob store can presign; `None` where it cannot.
    pub async fn artifact_url(
        &self,
        id: ConversionId,
        name: &str,
        ttl: Duration,
    ) -> Result<Option<String>, EngineError> {
        let blobs = &self.inner.backends.blobs;
        if !blobs.capabilities().presign {
            return Ok(None);
        }
        let record = self.get(id).await?;
        let artifact = record
            .artifacts
            .iter()
            .find(|a| a.name == name)
            .ok_or_else(|| EngineError::ArtifactNotFound {
                id,
                name: name.chars().take(200).collect(),
            })?;
        Ok(Some(
            blobs
                .presign(PresignMethod::Get, &artifact.blob_key, ttl)
                .await?,
        ))
    }

    /// Asks every backend whether it answers (for readiness probes).
    pub async fn readiness(&self) -> Readiness {
        let b = &self.inner.backends;
        let (store, queue, bus, blobs) =
            futures::join!(b.store.ping(), b.queue.ping(), b.bus.ping(), b.blobs.ping());
        Readiness {
            checks: vec![
                ("store", store.err().map(|e| e.to_string())),
                ("queue", queue.err().map(|e| e.to_string())),
                ("progress", bus.err().map(|e| e.to_string())),
                ("blobs", blobs.err().map(|e| e.to_string())),
            ],
        }
    }
}

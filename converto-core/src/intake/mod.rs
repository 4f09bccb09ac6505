//! Intake: everything between "bytes arrive" and "a conversion is submitted", owned by the
//! engine so the HTTP API, the CLI and embedding programs share it: upload tickets and the
//! uploads they allow, staging a streamed file with the size limit, the blob key layout
//! ([`layout`]), and the janitor that removes uploads nobody claimed.
//!
//! Callers never see a blob key: an upload is named by its id, a staged file by the
//! [`Staged`] handle the engine gave back.

pub mod layout;
pub mod tickets;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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
    /// The upload's id: submit [`TenantEngine::upload_input`]'s input once the bytes are there.
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

/// How one backend answered a readiness check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// It answered.
    Ok,
    /// It failed; the reason is the backend's error, which may name hosts and paths: log it,
    /// do not show it to clients.
    Failed(String),
    /// It did not answer in time.
    TimedOut,
}

/// How each backend answered a readiness check.
#[derive(Debug)]
pub struct Readiness {
    /// Per backend: `store`, `queue`, `progress`, `blobs`.
    pub checks: Vec<(&'static str, Check)>,
}

impl Readiness {
    /// Whether every backend answered.
    pub fn is_ready(&self) -> bool {
        self.checks.iter().all(|(_, c)| *c == Check::Ok)
    }
}

async fn check<E: std::fmt::Display>(
    within: Duration,
    f: impl std::future::Future<Output = Result<(), E>>,
) -> Check {
    match tokio::time::timeout(within, f).await {
        Ok(Ok(())) => Check::Ok,
        Ok(Err(e)) => Check::Failed(e.to_string()),
        Err(_) => Check::TimedOut,
    }
}

impl Engine {
    pub(crate) async fn signer(&self) -> Result<&UploadSigner, EngineError> {
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
    pub(crate) fn input_limit(&self) -> u64 {
        self.inner.config.max_input_bytes.unwrap_or(u64::MAX)
    }

    pub(crate) async fn store_limited(
        &self,
        key: &str,
        limit: u64,
        body: ByteStream,
    ) -> Result<u64, EngineError> {
        let blobs = &self.inner.backends.blobs;
        // The count stays in the stream; only "over the limit" is read after the put.
        let over = Arc::new(AtomicBool::new(false));
        let o = Arc::clone(&over);
        let mut total = 0u64;
        let limited: ByteStream = body
            .map(move |chunk| {
                let chunk = chunk?;
                total = total.saturating_add(chunk.len() as u64);
                if total > limit {
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
        // One listing holds the uploads and their claims (every tenant's, and the uploads made
        // before tenant prefixes).
        let mut listed = blobs.list(layout::TENANTS).await?;
        listed.extend(blobs.list(layout::LEGACY_UPLOADS).await?);
        let claimed: std::collections::HashSet<&str> = listed
            .iter()
            .filter_map(|meta| layout::claimed_input(&meta.key))
            .collect();
        let mut removed = 0;
        for meta in &listed {
            if layout::is_upload(&meta.key)
                && meta.last_modified <= cutoff
                && !claimed.contains(meta.key.as_str())
            {
                blobs.delete(&meta.key).await?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Asks every backend whether it answers within `within` (for readiness probes).
    pub async fn readiness(&self, within: Duration) -> Readiness {
        let b = &self.inner.backends;
        let (store, queue, bus, blobs) = futures::join!(
            check(within, b.store.ping()),
            check(within, b.queue.ping()),
            check(within, b.bus.ping()),
            check(within, b.blobs.ping())
        );
        Readiness {
            checks: vec![
                ("store", store),
                ("queue", queue),
                ("progress", bus),
                ("blobs", blobs),
            ],
        }
    }

    /// How many conversions are in each status.
    pub async fn status_counts(
        &self,
    ) -> Result<std::collections::BTreeMap<crate::Status, u64>, EngineError> {
        Ok(self.inner.backends.store.count_by_status().await?)
    }

    /// How many jobs the queue holds in each state.
    pub async fn queue_stats(&self) -> Result<crate::queue::QueueStats, EngineError> {
        Ok(self.inner.backends.queue.stats().await?)
    }
}

/// A download link's proof: the query of a signed artifact URL.
#[derive(Debug, Clone, Copy)]
pub struct LinkProof<'a> {
    /// The tenant the link was signed for.
    pub tenant: &'a str,
    /// When it expires (Unix seconds).
    pub expires: i64,
    /// Hex HMAC-SHA256.
    pub signature: &'a str,
}

impl Engine {
    /// Checks a signed download link (see [`TenantEngine::artifact_link`]): no credential,
    /// only the link's own proof, valid for this one artifact of this one tenant until it
    /// expires. Returns the engine as the link's tenant sees it, to open the artifact with. A
    /// forged, altered or expired link is [`EngineError::UploadTicket`].
    pub async fn follow_artifact_link(
        &self,
        proof: LinkProof<'_>,
        id: ConversionId,
        name: &str,
    ) -> Result<TenantEngine, EngineError> {
        self.signer().await?.verify_artifact(
            proof.tenant,
            id,
            name,
            proof.expires,
            proof.signature,
            Utc::now(),
        )?;
        Ok(self.tenant(proof.tenant))
    }
}

/// The engine as one tenant sees it, from [`Engine::tenant`]: its conversions, uploads and
/// artifacts only. Another tenant's ids answer [`EngineError::NotFound`] (or
/// [`EngineError::UploadNotFound`]) exactly as unknown ones; what it submits and uploads is
/// the tenant's, stored under the tenant's key prefix (see [`layout`]).
#[derive(Debug, Clone)]
pub struct TenantEngine {
    engine: Engine,
    tenant: String,
}

impl Engine {
    /// This engine as `tenant` sees it.
    pub fn tenant(&self, tenant: impl Into<String>) -> TenantEngine {
        TenantEngine {
            engine: self.clone(),
            tenant: tenant.into(),
        }
    }
}

impl TenantEngine {
    /// The tenant's name.
    pub fn name(&self) -> &str {
        &self.tenant
    }

    /// The whole engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Submits a conversion for this tenant (whatever `submission.tenant` said).
    pub async fn submit(
        &self,
        mut submission: crate::engine::Submission,
    ) -> Result<crate::engine::Submitted, EngineError> {
        submission.tenant = Some(self.tenant.clone());
        self.engine.submit(submission).await
    }

    /// One of the tenant's conversions.
    pub async fn get(&self, id: ConversionId) -> Result<crate::Conversion, EngineError> {
        let record = self.engine.get(id).await?;
        if record.tenant != self.tenant {
            return Err(EngineError::NotFound { id });
        }
        Ok(record)
    }

    /// The tenant's conversions matching the query (its `tenant` is replaced).
    pub async fn list(
        &self,
        query: &crate::store::ListQuery,
    ) -> Result<crate::store::Page, EngineError> {
        let query = crate::store::ListQuery {
            tenant: Some(self.tenant.clone()),
            ..query.clone()
        };
        self.engine.list(&query).await
    }

    /// Cancels one of the tenant's conversions.
    pub async fn cancel(&self, id: ConversionId) -> Result<crate::Conversion, EngineError> {
        self.get(id).await?;
        self.engine.cancel(id).await
    }

    /// Deletes one of the tenant's conversions.
    pub async fn delete(&self, id: ConversionId) -> Result<crate::Conversion, EngineError> {
        self.get(id).await?;
        self.engine.delete(id).await
    }

    /// Follows one of the tenant's conversions (see [`Engine::watch`]).
    pub async fn watch(
        &self,
        id: ConversionId,
    ) -> Result<crate::progress::EventStream, EngineError> {
        self.get(id).await?;
        self.engine.watch(id).await
    }

    /// Waits for one of the tenant's conversions to finish (see [`Engine::wait`]).
    pub async fn wait(&self, id: ConversionId) -> Result<crate::Conversion, EngineError> {
        self.get(id).await?;
        self.engine.wait(id).await
    }

    /// A download link for one artifact of one of the tenant's conversions that works without
    /// a credential until `ttl` has passed (for a browser or an `<img>`): the query
    /// `tenant=..&expires=..&signature=..` to add to the artifact's URL, signed with the
    /// engine's secret. Check it with [`Engine::follow_artifact_link`].
    ///
    /// Takes the record the caller read already (a status answer links every artifact): it
    /// must be the tenant's, and have the artifact.
    pub async fn artifact_link(
        &self,
        record: &crate::Conversion,
        name: &str,
        ttl: Duration,
    ) -> Result<String, EngineError> {
        let id = record.id;
        if record.tenant != self.tenant {
            return Err(EngineError::NotFound { id });
        }
        if !record.artifacts.iter().any(|a| a.name == name) {
            return Err(EngineError::ArtifactNotFound {
                id,
                name: name.chars().take(200).collect(),
            });
        }
        let expires = (Utc::now()
            + chrono::Duration::from_std(ttl).unwrap_or_else(|_| chrono::Duration::hours(1)))
        .timestamp();
        let signature = self
            .engine
            .signer()
            .await?
            .sign_artifact(&self.tenant, id, name, expires);
        Ok(format!(
            "tenant={}&expires={expires}&signature={signature}",
            percent_encode(&self.tenant)
        ))
    }

    /// What the tenant holds now: its queued and running conversions and the bytes they keep
    /// stored (see [`crate::store::TenantUsage`]), from the store's index.
    pub async fn usage(&self) -> Result<crate::store::TenantUsage, EngineError> {
        Ok(self
            .engine
            .inner
            .backends
            .store
            .tenant_usage(&self.tenant)
            .await?)
    }

    /// Refuses ([`EngineError::StorageQuota`]) `more` bytes the tenant's conversions would
    /// keep beyond its storage quota; a tenant without a quota is never refused (and costs no
    /// store read). Callers that know a size before reading a body check it here first; the
    /// engine checks again once the bytes are stored (uploads, staged files) and when a
    /// conversion takes an upload over.
    pub async fn check_storage(&self, more: u64) -> Result<(), EngineError> {
        let quota = self
            .engine
            .inner
            .limits
            .limits(&self.tenant)
            .await
            .storage_bytes;
        if quota == 0 {
            return Ok(());
        }
        let used = self.usage().await?.stored_bytes;
        if used.saturating_add(more) > quota {
            return Err(EngineError::StorageQuota {
                quota,
                used,
                wanted: more,
            });
        }
        Ok(())
    }

    /// Gives up a submission's input without submitting it: a staged file is removed (nothing
    /// else claims it); an upload is left alone (other conversions may use it, and the janitor
    /// removes it once unclaimed and expired).
    pub async fn discard_input(&self, input: SubmitInput) -> Result<(), EngineError> {
        match input {
            SubmitInput::Staged { key, .. } => {
                Ok(self.engine.inner.backends.blobs.delete(&key).await?)
            }
            SubmitInput::Stream { .. } | SubmitInput::Blob { .. } => Ok(()),
        }
    }

    /// Opens an artifact of one of the tenant's conversions (see [`Engine::open_artifact`]).
    pub async fn open_artifact(
        &self,
        id: ConversionId,
        name: &str,
        range: Option<std::ops::Range<u64>>,
    ) -> Result<(crate::Artifact, crate::blob::BlobRead), EngineError> {
        let record = self.get(id).await?;
        self.engine.open_artifact_of(record, name, range).await
    }

    /// A place to upload a file first and convert it later (possibly several times): a
    /// presigned URL where the blob store can presign, else a signed ticket for
    /// [`receive_upload`](TenantEngine::receive_upload). Valid for `upload_ttl`, for files up to
    /// `max_input_bytes`.
    pub async fn create_upload(&self) -> Result<UploadTicket, EngineError> {
        let upload_id = Uuid::now_v7();
        let ttl = self.engine.inner.config.upload_ttl;
        let expires_at = Utc::now()
            + chrono::Duration::from_std(ttl).unwrap_or_else(|_| chrono::Duration::hours(1));
        let max_bytes = self.engine.input_limit();
        let blobs = &self.engine.inner.backends.blobs;
        let target = if blobs.capabilities().presign {
            UploadTarget::Presigned {
                url: blobs
                    .presign(
                        PresignMethod::Put,
                        &layout::upload(&self.tenant, upload_id),
                        ttl,
                    )
                    .await?,
            }
        } else {
            UploadTarget::Ticket(self.engine.signer().await?.issue(
                &self.tenant,
                upload_id,
                expires_at,
                max_bytes,
            ))
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
        let granted = self.engine.signer().await?.verify(
            &self.tenant,
            upload_id,
            proof.expires,
            proof.max_bytes,
            proof.signature,
            Utc::now(),
        )?;
        let limit = granted.min(self.engine.input_limit());
        if declared_len.is_some_and(|n| n > limit) {
            return Err(EngineError::InputTooLarge { limit });
        }
        if let Some(n) = declared_len {
            self.check_storage(n).await?;
        }
        let key = layout::upload(&self.tenant, upload_id);
        let blobs = &self.engine.inner.backends.blobs;
        match blobs.head(&key).await {
            Ok(_) => return Err(EngineError::UploadExists { upload_id }),
            Err(BlobError::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        let size = self.engine.store_limited(&key, limit, body).await?;
        // Without a declared length the size is known only now: over the quota, the upload
        // goes again.
        if let Err(e) = self.check_storage(size).await {
            if let Err(gone) = blobs.delete(&key).await {
                tracing::warn!(%upload_id, error = %gone, "could not remove an upload over the storage quota; the janitor will");
            }
            return Err(e);
        }
        Ok(size)
    }

    /// Stores a file received as part of a submission (a multipart form's file, say), up to
    /// `max_input_bytes`, and returns its handle for [`SubmitInput::staged`]. On any failure
    /// nothing is left.
    pub async fn stage_input(&self, body: ByteStream) -> Result<Staged, EngineError> {
        let key = layout::staged(&self.tenant);
        let size = self
            .engine
            .store_limited(&key, self.engine.input_limit(), body)
            .await?;
        let staged = Staged { key, size };
        if let Err(e) = self.check_storage(size).await {
            let _ = self.engine.discard_staged(staged).await;
            return Err(e);
        }
        Ok(staged)
    }

    /// Removes a staged file that will not be submitted.
    pub async fn discard_staged(&self, staged: Staged) -> Result<(), EngineError> {
        self.engine.discard_staged(staged).await
    }

    /// The input for a conversion of an earlier upload, once its bytes are there: refused
    /// when missing ([`EngineError::UploadNotFound`]) or over `max_input_bytes` (a presigned
    /// PUT cannot bound its size, so it is checked here).
    pub async fn upload_input(
        &self,
        upload_id: Uuid,
        file_name: Option<String>,
    ) -> Result<SubmitInput, EngineError> {
        let key = layout::upload(&self.tenant, upload_id);
        let meta = match self.engine.inner.backends.blobs.head(&key).await {
            Ok(m) => m,
            Err(BlobError::NotFound { .. }) => {
                return Err(EngineError::UploadNotFound { upload_id });
            }
            Err(e) => return Err(e.into()),
        };
        let limit = self.engine.input_limit();
        if meta.size > limit {
            return Err(EngineError::InputTooLarge { limit });
        }
        // The conversion will count the upload's bytes as its input's.
        self.check_storage(meta.size).await?;
        Ok(SubmitInput::Blob { key, file_name })
    }

    /// A URL a client can download an artifact from without this service, valid for `ttl`,
    /// where the blob store can presign; `None` where it cannot.
    pub async fn artifact_url(
        &self,
        id: ConversionId,
        name: &str,
        ttl: Duration,
    ) -> Result<Option<String>, EngineError> {
        let blobs = &self.engine.inner.backends.blobs;
        if !blobs.capabilities().presign {
            return Ok(None);
        }
        let artifact = crate::engine::artifact_of(self.get(id).await?, name)?;
        Ok(Some(
            blobs
                .presign(PresignMethod::Get, &artifact.blob_key, ttl)
                .await?,
        ))
    }
}

impl Engine {
    /// [`TenantEngine::create_upload`] for the default tenant.
    pub async fn create_upload(&self) -> Result<UploadTicket, EngineError> {
        self.tenant(crate::DEFAULT_TENANT).create_upload().await
    }

    /// [`TenantEngine::receive_upload`] for the default tenant.
    pub async fn receive_upload(
        &self,
        upload_id: Uuid,
        proof: TicketProof<'_>,
        declared_len: Option<u64>,
        body: ByteStream,
    ) -> Result<u64, EngineError> {
        self.tenant(crate::DEFAULT_TENANT)
            .receive_upload(upload_id, proof, declared_len, body)
            .await
    }

    /// [`TenantEngine::stage_input`] for the default tenant.
    pub async fn stage_input(&self, body: ByteStream) -> Result<Staged, EngineError> {
        self.tenant(crate::DEFAULT_TENANT).stage_input(body).await
    }

    /// Removes a staged file that will not be submitted.
    pub async fn discard_staged(&self, staged: Staged) -> Result<(), EngineError> {
        Ok(self.inner.backends.blobs.delete(&staged.key).await?)
    }

    /// [`TenantEngine::upload_input`] for the default tenant.
    pub async fn upload_input(
        &self,
        upload_id: Uuid,
        file_name: Option<String>,
    ) -> Result<SubmitInput, EngineError> {
        self.tenant(crate::DEFAULT_TENANT)
            .upload_input(upload_id, file_name)
            .await
    }
}

/// A query-string value: unreserved characters as they are, every other byte `%XX`.
fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

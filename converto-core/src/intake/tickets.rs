//! Upload tickets: [`Engine::create_upload`](crate::Engine::create_upload) (`POST /v1/uploads`)
//! hands out a URL for `PUT /v1/uploads/{id}` that carries
//! an HMAC-SHA256 signature over the upload id, the expiry and the size limit; the PUT is
//! refused without a valid, unexpired signature, and beyond the signed size.
//!
//! The signing secret is `--upload-secret` / `CONVERTO_UPLOAD_SECRET` when set. Otherwise a
//! random 256-bit secret is generated once and kept in the blob store under
//! [`UPLOAD_SECRET_KEY`]: API nodes sharing a blob store then agree on it, and a restart keeps
//! issued tickets valid. Whoever can read the blob store can forge tickets, which is no more
//! than they can do already (they can write the blobs directly). Two nodes starting at the same
//! instant on an empty store may each write a secret; the last write wins and the other node
//! adopts it when it re-reads the key after writing, so set the flag for large fleets.

use crate::blob::{BlobError, BlobStore, BlobStoreExt};
use chrono::{DateTime, Utc};
use hmac::{KeyInit, Mac};
use uuid::Uuid;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// Where the generated upload secret is kept in the blob store.
pub const UPLOAD_SECRET_KEY: &str = super::layout::UPLOAD_SECRET;

/// Secrets shorter than this are refused: an HMAC key should carry at least 128 bits.
const MIN_SECRET_BYTES: usize = 16;

/// The secret upload tickets are signed with. Its `Debug` never shows the bytes.
#[derive(Clone)]
pub struct UploadSigner {
    secret: Vec<u8>,
}

impl std::fmt::Debug for UploadSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UploadSigner(..)")
    }
}

/// Why a signer could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SignerError {
    /// The configured secret is too short.
    #[error("the upload secret must be at least {MIN_SECRET_BYTES} bytes long")]
    TooShort,
    /// The system's random source failed.
    #[error("cannot generate an upload secret: {0}")]
    Random(getrandom::Error),
    /// The blob store holding the generated secret failed.
    #[error("cannot load or store the upload secret at {UPLOAD_SECRET_KEY}: {0}")]
    Blob(#[source] BlobError),
}

/// Why a PUT's ticket is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TicketError {
    /// No signature, or parameters missing.
    #[error(
        "the upload URL carries no ticket (expires, max_bytes, signature): ask POST /v1/uploads for one"
    )]
    Missing,
    /// The signature does not match the id, expiry and size limit.
    #[error("the upload ticket's signature is not valid for this upload")]
    BadSignature,
    /// The ticket's time is up.
    #[error("the upload ticket expired: ask POST /v1/uploads for a new one")]
    Expired,
}

/// The query parameters a ticket adds to the upload URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    /// The upload id.
    pub id: Uuid,
    /// When it stops working (Unix seconds).
    pub expires: i64,
    /// The largest body it allows.
    pub max_bytes: u64,
    /// Hex HMAC-SHA256 over the three.
    pub signature: String,
}

impl Ticket {
    /// The path and query of the upload URL: `/v1/uploads/{id}?expires=..&max_bytes=..&signature=..`.
    pub fn path_and_query(&self) -> String {
        format!(
            "/v1/uploads/{}?expires={}&max_bytes={}&signature={}",
            self.id, self.expires, self.max_bytes, self.signature
        )
    }
}

impl UploadSigner {
    /// A signer over a given secret (at least 16 bytes).
    pub fn new(secret: impl Into<Vec<u8>>) -> Result<Self, SignerError> {
        let secret = secret.into();
        if secret.len() < MIN_SECRET_BYTES {
            return Err(SignerError::TooShort);
        }
        Ok(Self { secret })
    }

    /// A signer over a fresh random 256-bit secret (tickets die with it).
    pub fn random() -> Result<Self, SignerError> {
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).map_err(SignerError::Random)?;
        Ok(Self {
            secret: secret.to_vec(),
        })
    }

    /// A signer over a random secret for one process (the default of embedded and test
    /// servers): the OS random source, or, should it fail, std's randomly seeded hasher keys.
    pub fn ephemeral() -> Self {
        Self::random().unwrap_or_else(|_| {
            use std::hash::{BuildHasher, Hasher};
            let mut secret = Vec::with_capacity(32);
            for i in 0u64..4 {
                let mut h = std::collections::hash_map::RandomState::new().build_hasher();
                h.write_u64(i);
                secret.extend_from_slice(&h.finish().to_le_bytes());
            }
            Self { secret }
        })
    }

    /// The secret kept in the blob store at [`UPLOAD_SECRET_KEY`], generated and stored on
    /// first use (see the module docs).
    pub async fn from_blob_store(blobs: &dyn BlobStore) -> Result<Self, SignerError> {
        match blobs.get_bytes(UPLOAD_SECRET_KEY).await {
            Ok(bytes) if bytes.len() >= MIN_SECRET_BYTES => {
                return Ok(Self {
                    secret: bytes.to_vec(),
                });
            }
            Ok(_) | Err(BlobError::NotFound { .. }) => {}
            Err(e) => return Err(SignerError::Blob(e)),
        }
        let fresh = Self::random()?;
        blobs
            .put_bytes(UPLOAD_SECRET_KEY, bytes::Bytes::from(fresh.secret.clone()))
            .await
            .map_err(SignerError::Blob)?;
        // Read back: if another node wrote at the same time, both end up with the last write.
        let stored = blobs
            .get_bytes(UPLOAD_SECRET_KEY)
            .await
            .map_err(SignerError::Blob)?;
        Self::new(stored.to_vec())
    }

    fn mac(&self, tenant: &str, id: Uuid, expires: i64, max_bytes: u64) -> HmacSha256 {
        // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
        let mut mac = <HmacSha256 as KeyInit>::new_from_slice(&self.secret)
            .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
        // The tenant is the last field, so no choice of name can shift the others.
        mac.update(
            format!("converto-upload-v2\n{id}\n{expires}\n{max_bytes}\n{tenant}").as_bytes(),
        );
        mac
    }

    fn artifact_mac(
        &self,
        tenant: &str,
        id: crate::ConversionId,
        name: &str,
        expires: i64,
    ) -> HmacSha256 {
        let mut mac = <HmacSha256 as KeyInit>::new_from_slice(&self.secret)
            .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
        // Another domain than upload tickets, so one can never pass for the other; the free
        // texts (name, tenant) are length-prefixed so no choice of them shifts the others.
        mac.update(
            format!(
                "converto-artifact-v1\n{id}\n{expires}\n{}:{name}\n{}:{tenant}",
                name.len(),
                tenant.len()
            )
            .as_bytes(),
        );
        mac
    }

    /// The signature of a download link for `tenant`'s artifact `name` of conversion `id`,
    /// valid until `expires` (Unix seconds).
    pub fn sign_artifact(
        &self,
        tenant: &str,
        id: crate::ConversionId,
        name: &str,
        expires: i64,
    ) -> String {
        hex::encode(
            self.artifact_mac(tenant, id, name, expires)
                .finalize()
                .into_bytes(),
        )
    }

    /// Checks a download link's signature at time `now`.
    pub fn verify_artifact(
        &self,
        tenant: &str,
        id: crate::ConversionId,
        name: &str,
        expires: i64,
        signature: &str,
        now: DateTime<Utc>,
    ) -> Result<(), TicketError> {
        let given = hex::decode(signature).map_err(|_| TicketError::BadSignature)?;
        self.artifact_mac(tenant, id, name, expires)
            .verify_slice(&given)
            .map_err(|_| TicketError::BadSignature)?;
        if now.timestamp() >= expires {
            return Err(TicketError::Expired);
        }
        Ok(())
    }

    /// A ticket for `tenant`'s upload `id`, valid until `expires_at`, for at most `max_bytes`.
    pub fn issue(
        &self,
        tenant: &str,
        id: Uuid,
        expires_at: DateTime<Utc>,
        max_bytes: u64,
    ) -> Ticket {
        let expires = expires_at.timestamp();
        let signature = hex::encode(
            self.mac(tenant, id, expires, max_bytes)
                .finalize()
                .into_bytes(),
        );
        Ticket {
            id,
            expires,
            max_bytes,
            signature,
        }
    }

    /// Checks a PUT's ticket for `tenant`'s upload `id` at time `now`; returns the size limit
    /// it grants. A ticket issued to another tenant does not verify.
    pub fn verify(
        &self,
        tenant: &str,
        id: Uuid,
        expires: Option<i64>,
        max_bytes: Option<u64>,
        signature: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<u64, TicketError> {
        let (Some(expires), Some(max_bytes), Some(signature)) = (expires, max_bytes, signature)
        else {
            return Err(TicketError::Missing);
        };
        let given = hex::decode(signature).map_err(|_| TicketError::BadSignature)?;
        // `verify_slice` compares in constant time.
        self.mac(tenant, id, expires, max_bytes)
            .verify_slice(&given)
            .map_err(|_| TicketError::BadSignature)?;
        if now.timestamp() >= expires {
            return Err(TicketError::Expired);
        }
        Ok(max_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_verify_only_as_issued() {
        let signer = UploadSigner::new(*b"0123456789abcdef0123456789abcdef").expect("signer");
        let id = Uuid::now_v7();
        let now = Utc::now();
        let t = signer.issue("acme", id, now + chrono::Duration::minutes(5), 100);
        let ok = |id, exp, max, sig: &str| {
            signer.verify("acme", id, Some(exp), Some(max), Some(sig), now)
        };
        assert_eq!(ok(id, t.expires, 100, &t.signature), Ok(100));
        assert_eq!(
            ok(id, t.expires, 101, &t.signature),
            Err(TicketError::BadSignature)
        );
        assert_eq!(
            ok(Uuid::now_v7(), t.expires, 100, &t.signature),
            Err(TicketError::BadSignature)
        );
        assert_eq!(
            ok(id, t.expires + 1, 100, &t.signature),
            Err(TicketError::BadSignature)
        );
        assert_eq!(ok(id, t.expires, 100, "zz"), Err(TicketError::BadSignature));
        assert_eq!(
            signer.verify("acme", id, None, Some(100), Some(&t.signature), now),
            Err(TicketError::Missing)
        );
        let old = signer.issue("acme", id, now - chrono::Duration::seconds(1), 100);
        assert_eq!(
            ok(id, old.expires, 100, &old.signature),
            Err(TicketError::Expired)
        );
        assert_eq!(
            signer.verify(
                "acm",
                id,
                Some(t.expires),
                Some(100),
                Some(&t.signature),
                now
            ),
            Err(TicketError::BadSignature),
            "a ticket is for one tenant"
        );
        let other = UploadSigner::random().expect("random");
        assert_eq!(
            other.verify(
                "acme",
                id,
                Some(t.expires),
                Some(100),
                Some(&t.signature),
                now
            ),
            Err(TicketError::BadSignature)
        );
    }

    #[tokio::test]
    async fn the_generated_secret_is_kept_in_the_blob_store() {
        let blobs = crate::memory::MemoryBlobStore::new();
        let a = UploadSigner::from_blob_store(&blobs).await.expect("first");
        let b = UploadSigner::from_blob_store(&blobs).await.expect("second");
        assert_eq!(a.secret, b.secret);
        assert_eq!(a.secret.len(), 32);
    }
}

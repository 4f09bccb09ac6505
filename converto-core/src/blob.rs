//! The `BlobStore` trait: bytes in and out by key.

use std::fmt::Debug;
use std::ops::Range;
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};

use crate::error::BackendError;

/// A stream of bytes, the unit of I/O for blobs: nothing is ever held whole in memory.
pub type ByteStream = BoxStream<'static, std::io::Result<Bytes>>;

/// A `dyn BlobStore`.
pub type DynBlobStore = dyn BlobStore;

/// What is known of a stored blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobMeta {
    /// Its key.
    pub key: String,
    /// Its size in bytes.
    pub size: u64,
    /// An opaque tag that changes when the content changes.
    pub etag: String,
    /// When it was written.
    pub last_modified: DateTime<Utc>,
}

/// A blob being read.
pub struct BlobRead {
    /// The whole blob's metadata.
    pub meta: BlobMeta,
    /// The byte range the body holds.
    pub range: Range<u64>,
    /// The bytes.
    pub body: ByteStream,
}

impl Debug for BlobRead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobRead")
            .field("meta", &self.meta)
            .field("range", &self.range)
            .finish_non_exhaustive()
    }
}

/// Optional features a blob store may have.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BlobCapabilities {
    /// It can hand out presigned PUT and GET URLs.
    pub presign: bool,
}

impl BlobCapabilities {
    /// With presigned URLs.
    pub fn with_presign(mut self, presign: bool) -> Self {
        self.presign = presign;
        self
    }
}

/// The HTTP method a presigned URL is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresignMethod {
    /// Upload.
    Put,
    /// Download.
    Get,
}

/// The errors of a [`BlobStore`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BlobError {
    /// No blob at that key.
    #[error("blob not found: {key}")]
    NotFound {
        /// The key.
        key: String,
    },
    /// The key is not allowed (empty, `..`, absolute, control characters, too long).
    #[error("invalid blob key {key:?}: {reason}")]
    InvalidKey {
        /// The key.
        key: String,
        /// Why.
        reason: &'static str,
    },
    /// The range asked for is outside the blob.
    #[error("range {start}..{end} is not satisfiable for a blob of {size} bytes")]
    InvalidRange {
        /// Start asked for.
        start: u64,
        /// End asked for.
        end: u64,
        /// The blob's size.
        size: u64,
    },
    /// The store cannot do this (e.g. presign on local disk).
    #[error("{operation} is not supported by the {backend} blob store")]
    NotSupported {
        /// Which store.
        backend: &'static str,
        /// What was asked.
        operation: &'static str,
    },
    /// The body stream given to `put` failed; nothing was stored.
    #[error("reading the upload failed: {0}")]
    Body(#[source] std::io::Error),
    /// The backend failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

impl BlobError {
    /// Whether trying again may succeed.
    pub fn is_temporary(&self) -> bool {
        matches!(self, BlobError::Backend(e) if e.is_temporary())
    }

    /// A backend error from any cause.
    pub fn backend(
        backend: &'static str,
        temporary: bool,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        BlobError::Backend(BackendError::new(backend, temporary, source))
    }
}

/// Checks that a key is a safe relative path: 1 to 1024 bytes of `/`-separated segments, none
/// empty, `.` or `..`, no backslash, NUL or other control character.
pub fn validate_key(key: &str) -> Result<(), BlobError> {
    let bad = |reason| {
        Err(BlobError::InvalidKey {
            key: key.chars().take(128).collect(),
            reason,
        })
    };
    if key.is_empty() {
        return bad("empty");
    }
    if key.len() > 1024 {
        return bad("longer than 1024 bytes");
    }
    if has_control(key) {
        return bad("contains a control character");
    }
    if key.contains('\\') {
        return bad("contains a backslash");
    }
    if key.starts_with('/') {
        return bad("absolute");
    }
    for segment in key.split('/') {
        match segment {
            "" => return bad("has an empty segment"),
            "." | ".." => return bad("has a '.' or '..' segment"),
            _ => {}
        }
    }
    Ok(())
}

/// Whether `s` holds a control character (`char::is_control`: U+0000 to U+001F, U+007F and
/// U+0080 to U+009F), read as bytes: the first two ranges are single bytes in UTF-8, the third
/// is `0xC2` followed by `0x80` to `0x9F`. Keys are checked on every blob call, and this is a
/// fraction of decoding every character.
fn has_control(s: &str) -> bool {
    let b = s.as_bytes();
    b.iter().any(|&c| c < 0x20 || c == 0x7f)
        || (!s.is_ascii()
            && b.windows(2)
                .any(|w| w[0] == 0xC2 && (0x80..=0x9F).contains(&w[1])))
}

/// Checks a list prefix: empty, or a valid key optionally ending in `/`.
pub fn validate_prefix(prefix: &str) -> Result<(), BlobError> {
    if prefix.is_empty() {
        return Ok(());
    }
    validate_key(prefix.strip_suffix('/').unwrap_or(prefix))
}

/// Clamps a requested range to a blob of `size` bytes (`end` beyond the size is cut).
pub fn resolve_range(range: Option<Range<u64>>, size: u64) -> Result<Range<u64>, BlobError> {
    match range {
        None => Ok(0..size),
        Some(r) => {
            let end = r.end.min(size);
            if r.start >= end && !(r.start == 0 && size == 0) {
                return Err(BlobError::InvalidRange {
                    start: r.start,
                    end: r.end,
                    size,
                });
            }
            Ok(r.start..end)
        }
    }
}

/// Stores bytes by key. Keys are `/`-separated relative paths checked by [`validate_key`].
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait BlobStore: Send + Sync + Debug + 'static {
    /// Streams `body` into the blob at `key`, replacing any blob there. Atomic: readers see the
    /// old blob or the whole new one, and a failed body stores nothing.
    async fn put(&self, key: &str, body: ByteStream) -> Result<BlobMeta, BlobError>;

    /// Streams the blob at `key`, or the part of it in `range` (end clamped to the size).
    async fn get(&self, key: &str, range: Option<Range<u64>>) -> Result<BlobRead, BlobError>;

    /// The blob's metadata.
    async fn head(&self, key: &str) -> Result<BlobMeta, BlobError>;

    /// Removes the blob; removing a missing blob is not an error.
    async fn delete(&self, key: &str) -> Result<(), BlobError>;

    /// Every blob whose key starts with `prefix`, sorted by key.
    async fn list(&self, prefix: &str) -> Result<Vec<BlobMeta>, BlobError>;

    /// The optional features it has.
    fn capabilities(&self) -> BlobCapabilities {
        BlobCapabilities::default()
    }

    /// A URL that lets a plain HTTP client PUT or GET `key` until it expires.
    async fn presign(
        &self,
        method: PresignMethod,
        key: &str,
        expires_in: Duration,
    ) -> Result<String, BlobError> {
        let _ = (method, key, expires_in);
        Err(BlobError::NotSupported {
            backend: "this",
            operation: "presign",
        })
    }

    /// Checks that the backend answers (for readiness probes).
    async fn ping(&self) -> Result<(), BlobError> {
        Ok(())
    }
}

/// Conveniences over any [`BlobStore`].
#[async_trait]
pub trait BlobStoreExt: BlobStore {
    /// Stores a byte buffer.
    async fn put_bytes(&self, key: &str, bytes: Bytes) -> Result<BlobMeta, BlobError> {
        self.put(key, futures::stream::once(async move { Ok(bytes) }).boxed())
            .await
    }

    /// Reads a whole blob into memory. For tests and small blobs only.
    async fn get_bytes(&self, key: &str) -> Result<Bytes, BlobError> {
        let read = self.get(key, None).await?;
        let mut buf = BytesMut::with_capacity(usize::try_from(read.meta.size).unwrap_or(0));
        let mut body = read.body;
        while let Some(chunk) = body.try_next().await.map_err(BlobError::Body)? {
            buf.extend_from_slice(&chunk);
        }
        Ok(buf.freeze())
    }
}

impl<T: BlobStore + ?Sized> BlobStoreExt for T {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_found_as_char_is_control_finds_them() {
        // Every character of the first three planes' start, alone and between others.
        for c in (0u32..0x3000).filter_map(char::from_u32) {
            for s in [c.to_string(), format!("a{c}b"), format!("é{c}")] {
                assert_eq!(has_control(&s), s.chars().any(char::is_control), "{s:?}");
            }
        }
    }

    #[test]
    fn keys_cannot_escape() {
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../b",
            "a//b",
            "a/./b",
            "a\\b",
            "a\0b",
            "a/",
        ] {
            assert!(validate_key(bad).is_err(), "{bad:?} accepted");
        }
        assert!(validate_key("conversions/abc/input").is_ok());
        assert!(validate_key("conversions/ünïcode ©/input").is_ok());
        assert!(validate_prefix("").is_ok());
        assert!(validate_prefix("conversions/").is_ok());
    }

    #[test]
    fn ranges_are_clamped() {
        assert_eq!(resolve_range(Some(2..100), 10).expect("r"), 2..10);
        assert!(resolve_range(Some(10..12), 10).is_err());
        assert_eq!(resolve_range(None, 0).expect("r"), 0..0);
    }
}

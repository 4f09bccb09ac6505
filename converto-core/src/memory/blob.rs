use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use parking_lot::Mutex;

use crate::blob::{
    BlobError, BlobMeta, BlobRead, BlobStore, ByteStream, resolve_range, validate_key,
    validate_prefix,
};

/// One stored blob: its bytes and what its metadata is made of (the key is the map's).
#[derive(Debug, Clone)]
struct Stored {
    bytes: Bytes,
    /// The write's number; the etag is made of it when asked for.
    tag: u64,
    last_modified: DateTime<Utc>,
}

/// `m` and the tag in lowercase hex (what `format!("m{:x}")` writes, without the formatter).
fn etag(tag: u64) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digits = (64 - tag.leading_zeros()).div_ceil(4).max(1);
    let mut s = String::with_capacity(1 + digits as usize);
    s.push('m');
    for i in (0..digits).rev() {
        s.push(char::from(HEX[((tag >> (4 * i)) & 0xf) as usize]));
    }
    s
}

impl Stored {
    fn meta(&self, key: &str) -> BlobMeta {
        BlobMeta {
            key: key.into(),
            size: self.bytes.len() as u64,
            etag: etag(self.tag),
            last_modified: self.last_modified,
        }
    }
}

/// A blob store in memory.
#[derive(Debug, Default)]
pub struct MemoryBlobStore {
    blobs: Mutex<BTreeMap<String, Stored>>,
    next_tag: AtomicU64,
}

impl MemoryBlobStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn entry(&self, key: &str) -> Result<(Bytes, BlobMeta), BlobError> {
        validate_key(key)?;
        self.blobs
            .lock()
            .get(key)
            .map(|s| (s.bytes.clone(), s.meta(key)))
            .ok_or_else(|| BlobError::NotFound { key: key.into() })
    }
}

#[async_trait]
impl BlobStore for MemoryBlobStore {
    async fn put(&self, key: &str, mut body: ByteStream) -> Result<BlobMeta, BlobError> {
        validate_key(key)?;
        // A body of one chunk (the usual one from memory) is copied once, at its size.
        let bytes = match body.try_next().await.map_err(BlobError::Body)? {
            None => Bytes::new(),
            Some(first) => match body.try_next().await.map_err(BlobError::Body)? {
                None => Bytes::copy_from_slice(&first),
                Some(second) => {
                    let mut buf = BytesMut::with_capacity(first.len() + second.len());
                    buf.extend_from_slice(&first);
                    buf.extend_from_slice(&second);
                    while let Some(chunk) = body.try_next().await.map_err(BlobError::Body)? {
                        buf.extend_from_slice(&chunk);
                    }
                    buf.freeze()
                }
            },
        };
        let stored = Stored {
            bytes,
            tag: self.next_tag.fetch_add(1, Ordering::Relaxed),
            last_modified: Utc::now(),
        };
        let meta = stored.meta(key);
        self.blobs.lock().insert(key.into(), stored);
        Ok(meta)
    }

    async fn get(&self, key: &str, range: Option<Range<u64>>) -> Result<BlobRead, BlobError> {
        let (bytes, meta) = self.entry(key)?;
        let range = resolve_range(range, meta.size)?;
        // Both ends are within `bytes.len()` after `resolve_range`.
        let slice = bytes.slice(range.start as usize..range.end as usize);
        Ok(BlobRead {
            meta,
            range,
            body: futures::stream::once(async move { Ok(slice) }).boxed(),
        })
    }

    async fn head(&self, key: &str) -> Result<BlobMeta, BlobError> {
        Ok(self.entry(key)?.1)
    }

    async fn delete(&self, key: &str) -> Result<(), BlobError> {
        validate_key(key)?;
        self.blobs.lock().remove(key);
        Ok(())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<BlobMeta>, BlobError> {
        validate_prefix(prefix)?;
        Ok(self
            .blobs
            .lock()
            .range::<str, _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, s)| s.meta(k))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn etags_are_written_as_the_formatter_writes_them() {
        for tag in [0, 1, 9, 10, 15, 16, 255, 256, 0xdead_beef, u64::MAX] {
            assert_eq!(super::etag(tag), format!("m{tag:x}"));
        }
    }
}

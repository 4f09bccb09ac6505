use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use chrono::Utc;
use futures::{StreamExt, TryStreamExt};
use parking_lot::Mutex;

use crate::blob::{
    BlobError, BlobMeta, BlobRead, BlobStore, ByteStream, resolve_range, validate_key,
    validate_prefix,
};

/// A blob store in memory.
#[derive(Debug, Default)]
pub struct MemoryBlobStore {
    blobs: Mutex<BTreeMap<String, (Bytes, BlobMeta)>>,
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
            .cloned()
            .ok_or_else(|| BlobError::NotFound { key: key.into() })
    }
}

#[async_trait]
impl BlobStore for MemoryBlobStore {
    async fn put(&self, key: &str, mut body: ByteStream) -> Result<BlobMeta, BlobError> {
        validate_key(key)?;
        let mut buf = BytesMut::new();
        while let Some(chunk) = body.try_next().await.map_err(BlobError::Body)? {
            buf.extend_from_slice(&chunk);
        }
        let tag = self.next_tag.fetch_add(1, Ordering::Relaxed);
        let meta = BlobMeta {
            key: key.into(),
            size: buf.len() as u64,
            etag: format!("m{tag:x}"),
            last_modified: Utc::now(),
        };
        self.blobs
            .lock()
            .insert(key.into(), (buf.freeze(), meta.clone()));
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
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, (_, m))| m.clone())
            .collect())
    }
}

//! Blobs on the local file system.
//!
//! [`LocalBlobStore`] keeps each blob as one file under a root directory, at the path its key
//! names. Writes stream into a temporary file in the hidden `.tmp/` directory under the root, are
//! flushed to disk, and are then renamed over the final path, so a reader sees the old blob or
//! the whole new one and a failed upload leaves nothing behind.
//!
//! Keys are checked with [`converto_core::blob::validate_key`], and every path component is
//! inspected without following links: a key whose path crosses a symbolic link is refused, so no
//! key can reach outside the root.

mod store;

pub use store::LocalBlobStore;

/// Configuration of a [`LocalBlobStore`]: the directory the blobs live under.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct LocalConfig {
    /// The root directory (created if missing).
    pub root: std::path::PathBuf,
}

impl LocalConfig {
    /// Blobs under `root`.
    pub fn new(root: impl Into<std::path::PathBuf>) -> Self {
        Self { root: root.into() }
    }
}

impl LocalBlobStore {
    /// Opens the store a [`LocalConfig`] describes; the same as [`LocalBlobStore::open`].
    pub async fn connect(
        config: LocalConfig,
    ) -> Result<LocalBlobStore, converto_core::blob::BlobError> {
        Self::open(config.root).await
    }
}

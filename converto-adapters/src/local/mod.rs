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

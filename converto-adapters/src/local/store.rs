use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use tokio::fs::{self, File, OpenOptions};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio_util::io::ReaderStream;

use converto_core::blob::{
    BlobError, BlobMeta, BlobRead, BlobStore, ByteStream, PresignMethod, resolve_range,
    validate_key, validate_prefix,
};

const BACKEND: &str = "local";
/// Where uploads are written before they are renamed into place. Keys may not start with it.
const TEMP_DIR: &str = ".tmp";
/// Read buffer size for streamed gets.
const READ_CHUNK: usize = 64 * 1024;
/// Temporary files older than this are left over from a crash and removed at open.
const STALE_TEMP: Duration = Duration::from_secs(3600);
/// The longest file name most file systems accept.
const MAX_SEGMENT: usize = 255;
/// How often `put` re-creates parent directories that a concurrent `delete` pruned.
const RENAME_TRIES: usize = 5;

/// An I/O failure with the operation and path it happened on.
#[derive(Debug, thiserror::Error)]
#[error("{operation} {}: {source}", path.display())]
struct LocalIoError {
    operation: &'static str,
    path: PathBuf,
    #[source]
    source: io::Error,
}

/// Whether an I/O error may go away on its own (full disk, busy resource, interruption).
fn is_temporary(e: &io::Error) -> bool {
    use io::ErrorKind::*;
    matches!(
        e.kind(),
        Interrupted
            | WouldBlock
            | TimedOut
            | StorageFull
            | QuotaExceeded
            | ResourceBusy
            | OutOfMemory
    )
}

fn io_error(operation: &'static str, path: &Path, source: io::Error) -> BlobError {
    let temporary = is_temporary(&source);
    BlobError::backend(
        BACKEND,
        temporary,
        LocalIoError {
            operation,
            path: path.to_path_buf(),
            source,
        },
    )
}

fn invalid(key: &str, reason: &'static str) -> BlobError {
    BlobError::InvalidKey {
        key: key.chars().take(128).collect(),
        reason,
    }
}

fn not_found(key: &str) -> BlobError {
    BlobError::NotFound { key: key.into() }
}

/// Identifies one version of a file: a new `put` always writes a new file (a new inode while the
/// old one is still linked) with a new modification time.
#[cfg(unix)]
fn file_id(md: &std::fs::Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt;
    md.ino()
}

#[cfg(not(unix))]
fn file_id(_md: &std::fs::Metadata) -> u64 {
    0
}

fn meta_of(key: &str, md: &std::fs::Metadata) -> BlobMeta {
    let modified = md.modified().unwrap_or(SystemTime::UNIX_EPOCH);
    let nanos = modified
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    BlobMeta {
        key: key.to_owned(),
        size: md.len(),
        etag: format!("{:x}-{:x}-{:x}", file_id(md), nanos, md.len()),
        last_modified: DateTime::<Utc>::from(modified),
    }
}

/// A temporary file that is removed when dropped, unless it was renamed into place. Dropping the
/// `put` future half way (a client that went away) therefore leaves nothing behind either.
struct TempPath {
    path: PathBuf,
    armed: bool,
}

impl Drop for TempPath {
    fn drop(&mut self) {
        if self.armed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Blobs stored as files under a root directory.
///
/// - `put` streams into `ROOT/.tmp/`, calls `fsync` on the file, renames it over the key's path
///   and calls `fsync` on the parent directory: readers see the old blob or the whole new one, a
///   failed body stores nothing and leaves an earlier blob as it was.
/// - Keys are checked with [`validate_key`]; keys under `.tmp/` are reserved. Every directory on
///   the way to a key is inspected with `lstat`, and a key whose path crosses a symbolic link is
///   refused with [`BlobError::InvalidKey`]: links are never followed, so nothing outside the root
///   is read or written. (The check and the open are separate calls, so the root is assumed not to
///   be rewritten by a hostile process while this one uses it.)
/// - The etag is built from the file's inode, modification time (nanoseconds) and size. Every
///   `put` writes a new file, so the etag changes whenever the content does.
/// - `delete` prunes directories it leaves empty; `list` walks the directories under the
///   prefix, skipping links and the temporary directory, and sorts by key.
#[derive(Debug, Clone)]
pub struct LocalBlobStore {
    root: PathBuf,
    temp: PathBuf,
}

impl LocalBlobStore {
    /// Opens (creating it if needed) a store rooted at `root`, and removes temporary files that an
    /// earlier crash left behind.
    pub async fn open(root: impl Into<PathBuf>) -> Result<LocalBlobStore, BlobError> {
        let root = root.into();
        fs::create_dir_all(&root)
            .await
            .map_err(|e| io_error("create root", &root, e))?;
        let root = fs::canonicalize(&root)
            .await
            .map_err(|e| io_error("resolve root", &root, e))?;
        let temp = root.join(TEMP_DIR);
        match fs::create_dir(&temp).await {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_error("create temporary directory", &temp, e)),
        }
        let md = fs::symlink_metadata(&temp)
            .await
            .map_err(|e| io_error("inspect temporary directory", &temp, e))?;
        if !md.is_dir() {
            return Err(io_error(
                "inspect temporary directory",
                &temp,
                io::Error::new(io::ErrorKind::InvalidInput, "not a plain directory"),
            ));
        }
        let store = LocalBlobStore { root, temp };
        store.remove_stale_temp_files().await;
        Ok(store)
    }

    /// The root directory (canonical).
    pub fn root(&self) -> &Path {
        &self.root
    }

    async fn remove_stale_temp_files(&self) {
        let Ok(mut entries) = fs::read_dir(&self.temp).await else {
            return;
        };
        let now = SystemTime::now();
        while let Ok(Some(entry)) = entries.next_entry().await {
            let Ok(md) = entry.metadata().await else {
                continue;
            };
            let old = md
                .modified()
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .is_some_and(|age| age > STALE_TEMP);
            if md.is_file() && old {
                let _ = fs::remove_file(entry.path()).await;
            }
        }
    }

    fn check_key(key: &str) -> Result<(), BlobError> {
        validate_key(key)?;
        if key.split('/').next() == Some(TEMP_DIR) {
            return Err(invalid(key, "the '.tmp' directory is reserved"));
        }
        if key.split('/').any(|segment| segment.len() > MAX_SEGMENT) {
            return Err(invalid(key, "a segment is longer than 255 bytes"));
        }
        Ok(())
    }

    /// The directory `ROOT/seg0/seg1/...`, checked component by component without following
    /// links. With `create`, missing directories are made; without, `None` when one is missing
    /// or is a file.
    async fn walk_dirs(
        &self,
        key: &str,
        segments: &[&str],
        create: bool,
    ) -> Result<Option<PathBuf>, BlobError> {
        let mut dir = self.root.clone();
        for segment in segments {
            dir.push(segment);
            loop {
                match fs::symlink_metadata(&dir).await {
                    Ok(md) if md.file_type().is_symlink() => {
                        return Err(invalid(key, "crosses a symbolic link"));
                    }
                    Ok(md) if md.is_dir() => break,
                    Ok(_) if create => {
                        return Err(invalid(key, "a parent of this key is a blob"));
                    }
                    Ok(_) => return Ok(None),
                    Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                        match fs::create_dir(&dir).await {
                            // Made by us or by a concurrent put: look at it again either way.
                            Ok(()) => {
                                // The new entry must survive a crash like the blob under it.
                                if let Some(parent) = dir.parent() {
                                    sync_dir(parent).await?;
                                }
                            }
                            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                            Err(e) => return Err(io_error("create directory", &dir, e)),
                        }
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                        ) =>
                    {
                        return Ok(None);
                    }
                    Err(e) => return Err(io_error("inspect", &dir, e)),
                }
            }
        }
        Ok(Some(dir))
    }

    /// The path of the existing blob at `key` (a regular file, not a link) and its metadata.
    async fn existing(&self, key: &str) -> Result<(PathBuf, std::fs::Metadata), BlobError> {
        Self::check_key(key)?;
        let segments: Vec<&str> = key.split('/').collect();
        let Some((name, parents)) = segments.split_last() else {
            return Err(invalid(key, "empty"));
        };
        let dir = self
            .walk_dirs(key, parents, false)
            .await?
            .ok_or_else(|| not_found(key))?;
        let path = dir.join(name);
        match fs::symlink_metadata(&path).await {
            Ok(md) if md.file_type().is_symlink() => Err(invalid(key, "is a symbolic link")),
            Ok(md) if md.is_file() => Ok((path, md)),
            Ok(_) => Err(not_found(key)),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) =>
            {
                Err(not_found(key))
            }
            Err(e) => Err(io_error("inspect", &path, e)),
        }
    }

    /// Removes the now empty directories between `dir` and the root.
    async fn prune(&self, mut dir: PathBuf) {
        while dir != self.root && dir.starts_with(&self.root) {
            if fs::remove_dir(&dir).await.is_err() {
                return;
            }
            if !dir.pop() {
                return;
            }
        }
    }

    /// Streams `body` into a new temporary file, synced to disk.
    async fn write_temp(
        &self,
        mut body: ByteStream,
    ) -> Result<(TempPath, std::fs::Metadata), BlobError> {
        let path = self
            .temp
            .join(format!("{}.part", uuid::Uuid::now_v7().simple()));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .await
            .map_err(|e| io_error("create temporary file", &path, e))?;
        let guard = TempPath { path, armed: true };
        // Small network chunks are gathered into large writes: each write to a tokio file is a
        // hop to the blocking pool, so fewer, bigger writes are much faster.
        let mut writer = tokio::io::BufWriter::with_capacity(WRITE_BUFFER, file);
        while let Some(chunk) = body.try_next().await.map_err(BlobError::Body)? {
            writer
                .write_all(&chunk)
                .await
                .map_err(|e| io_error("write", &guard.path, e))?;
        }
        writer
            .flush()
            .await
            .map_err(|e| io_error("write", &guard.path, e))?;
        let file = writer.into_inner();
        file.sync_all()
            .await
            .map_err(|e| io_error("sync", &guard.path, e))?;
        let md = file
            .metadata()
            .await
            .map_err(|e| io_error("inspect", &guard.path, e))?;
        Ok((guard, md))
    }
}

/// Bytes gathered before each write to the temporary file.
const WRITE_BUFFER: usize = 1024 * 1024;

async fn sync_dir(dir: &Path) -> Result<(), BlobError> {
    let handle = File::open(dir)
        .await
        .map_err(|e| io_error("open directory", dir, e))?;
    handle
        .sync_all()
        .await
        .map_err(|e| io_error("sync directory", dir, e))
}

#[async_trait]
impl BlobStore for LocalBlobStore {
    async fn put(&self, key: &str, body: ByteStream) -> Result<BlobMeta, BlobError> {
        Self::check_key(key)?;
        let segments: Vec<&str> = key.split('/').collect();
        let Some((name, parents)) = segments.split_last() else {
            return Err(invalid(key, "empty"));
        };
        // Refuse a bad path before taking the upload.
        self.walk_dirs(key, parents, true).await?;
        // Rename keeps the inode and modification time, so this metadata stays the blob's.
        let (mut temp, md) = self.write_temp(body).await?;
        for attempt in 1..=RENAME_TRIES {
            let dir = self
                .walk_dirs(key, parents, true)
                .await?
                .ok_or_else(|| invalid(key, "a parent of this key is a blob"))?;
            let path = dir.join(name);
            match fs::symlink_metadata(&path).await {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(invalid(key, "is a symbolic link"));
                }
                Ok(m) if m.is_dir() => {
                    return Err(invalid(key, "other blobs are stored under this key"));
                }
                _ => {}
            }
            match fs::rename(&temp.path, &path).await {
                Ok(()) => {
                    temp.armed = false;
                    sync_dir(&dir).await?;
                    return Ok(meta_of(key, &md));
                }
                // A concurrent delete pruned the (then empty) directory: make it again.
                Err(e) if e.kind() == io::ErrorKind::NotFound && attempt < RENAME_TRIES => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::IsADirectory | io::ErrorKind::DirectoryNotEmpty
                    ) =>
                {
                    return Err(invalid(key, "other blobs are stored under this key"));
                }
                Err(e) => return Err(io_error("rename into place", &path, e)),
            }
        }
        Err(io_error(
            "rename into place",
            &self.root.join(key),
            io::Error::new(io::ErrorKind::Interrupted, "directory kept disappearing"),
        ))
    }

    async fn get(&self, key: &str, range: Option<Range<u64>>) -> Result<BlobRead, BlobError> {
        let (path, _) = self.existing(key).await?;
        let mut file = match File::open(&path).await {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(not_found(key)),
            Err(e) => return Err(io_error("open", &path, e)),
        };
        // The metadata of the opened file, so size and content belong together even if the blob
        // is replaced meanwhile.
        let md = file
            .metadata()
            .await
            .map_err(|e| io_error("inspect", &path, e))?;
        if !md.is_file() {
            return Err(not_found(key));
        }
        let meta = meta_of(key, &md);
        let range = resolve_range(range, meta.size)?;
        if range.start > 0 {
            file.seek(io::SeekFrom::Start(range.start))
                .await
                .map_err(|e| io_error("seek", &path, e))?;
        }
        let body = ReaderStream::with_capacity(file.take(range.end - range.start), READ_CHUNK);
        Ok(BlobRead {
            meta,
            range,
            body: body.boxed(),
        })
    }

    async fn head(&self, key: &str) -> Result<BlobMeta, BlobError> {
        let (_, md) = self.existing(key).await?;
        Ok(meta_of(key, &md))
    }

    async fn delete(&self, key: &str) -> Result<(), BlobError> {
        let (path, _) = match self.existing(key).await {
            Ok(found) => found,
            Err(BlobError::NotFound { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        match fs::remove_file(&path).await {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_error("remove", &path, e)),
        }
        if let Some(dir) = path.parent() {
            self.prune(dir.to_path_buf()).await;
        }
        Ok(())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<BlobMeta>, BlobError> {
        validate_prefix(prefix)?;
        // Start at the deepest directory the prefix names in full.
        let dir_part = prefix.rfind('/').map_or("", |i| &prefix[..i]);
        let start = if dir_part.is_empty() {
            Some(self.root.clone())
        } else {
            if dir_part.split('/').next() == Some(TEMP_DIR) {
                return Ok(Vec::new());
            }
            let segments: Vec<&str> = dir_part.split('/').collect();
            self.walk_dirs(prefix, &segments, false).await?
        };
        let Some(start) = start else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        let base = if dir_part.is_empty() {
            String::new()
        } else {
            format!("{dir_part}/")
        };
        let mut stack = vec![(start, base)];
        while let Some((dir, rel)) = stack.pop() {
            let mut entries = match fs::read_dir(&dir).await {
                Ok(entries) => entries,
                // Removed by a concurrent delete.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_error("list", &dir, e)),
            };
            while let Some(entry) = entries
                .next_entry()
                .await
                .map_err(|e| io_error("list", &dir, e))?
            {
                let Ok(name) = entry.file_name().into_string() else {
                    continue; // not UTF-8: cannot be a key
                };
                let key = format!("{rel}{name}");
                // Does not follow links.
                let Ok(file_type) = entry.file_type().await else {
                    continue;
                };
                if file_type.is_dir() {
                    if rel.is_empty() && name == TEMP_DIR {
                        continue;
                    }
                    let as_dir = format!("{key}/");
                    if as_dir.starts_with(prefix) || prefix.starts_with(&as_dir) {
                        stack.push((entry.path(), as_dir));
                    }
                } else if file_type.is_file()
                    && key.starts_with(prefix)
                    && validate_key(&key).is_ok()
                {
                    match entry.metadata().await {
                        Ok(md) => out.push(meta_of(&key, &md)),
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => return Err(io_error("inspect", &entry.path(), e)),
                    }
                }
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn presign(
        &self,
        _method: PresignMethod,
        key: &str,
        _expires_in: Duration,
    ) -> Result<String, BlobError> {
        Self::check_key(key)?;
        // Files have no URL of their own: the HTTP layer serves them.
        Err(BlobError::NotSupported {
            backend: BACKEND,
            operation: "presign",
        })
    }

    async fn ping(&self) -> Result<(), BlobError> {
        let md = fs::metadata(&self.temp)
            .await
            .map_err(|e| io_error("inspect", &self.temp, e))?;
        if md.is_dir() {
            Ok(())
        } else {
            Err(io_error(
                "inspect",
                &self.temp,
                io::Error::new(io::ErrorKind::NotFound, "temporary directory is gone"),
            ))
        }
    }
}

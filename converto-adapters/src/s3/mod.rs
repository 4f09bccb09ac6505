//! A [`BlobStore`] over the [`object_store`] crate: S3 and S3-compatible servers (MinIO, Ceph,
//! R2, moto, ...), and through the same adapter any other store `object_store` reads from a URL
//! (`file:///path`, `memory:///`).
//!
//! ```no_run
//! # async fn demo() -> Result<(), converto_core::blob::BlobError> {
//! use converto_adapters::s3::{ObjectBlobStore, S3Config};
//!
//! let config = S3Config::new()
//!     .with_endpoint("http://127.0.0.1:9000")
//!     .with_region("us-east-1")
//!     .with_credentials("test", "test");
//! let blobs = ObjectBlobStore::from_url("s3://my-bucket/converto", &config)?;
//! # drop(blobs); Ok(()) }
//! ```
//!
//! Keys live under the URL's path (`converto/` above). Uploads stream: a body shorter than one
//! part is sent with a single PUT, a longer one as a multipart upload with at most
//! `max_parts_in_flight` parts in flight, aborted if the body fails, so an object appears whole
//! or not at all and a failed upload never replaces the previous object. S3 stores can hand out
//! presigned URLs; the others report `NotSupported`.

mod config;

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use converto_core::blob::{
    BlobCapabilities, BlobError, BlobMeta, BlobRead, BlobStore, ByteStream, PresignMethod,
    resolve_range, validate_key, validate_prefix,
};
use futures::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::list::{PaginatedListOptions, PaginatedListStore};
use object_store::path::Path;
use object_store::signer::{Method, Signer};
use object_store::{
    GetOptions, ObjectMeta, ObjectStore, ObjectStoreExt, ObjectStoreScheme, PutPayload,
    WriteMultipart,
};
use url::Url;

pub use config::{S3Config, S3ConfigError};

/// The longest a SigV4 presigned URL may live.
const MAX_PRESIGN_EXPIRY: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// A [`BlobStore`] over an [`ObjectStore`]: `s3://bucket/prefix` (with presigned URLs),
/// `file:///path`, `memory:///`.
pub struct ObjectBlobStore {
    store: Arc<dyn ObjectStore>,
    /// The same store when it is S3, for what only S3 does (presigning, raw-prefix listing).
    s3: Option<Arc<AmazonS3>>,
    /// The prefix every key lives under, without slashes at either end; may be empty.
    root: String,
    backend: &'static str,
    /// The store's URL without credentials, for `Debug`.
    location: String,
    part_size: usize,
    max_parts_in_flight: usize,
}

impl fmt::Debug for ObjectBlobStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not derived: the inner store's Debug carries its whole configuration.
        f.debug_struct("ObjectBlobStore")
            .field("backend", &self.backend)
            .field("location", &self.location)
            .field("part_size", &self.part_size)
            .field("max_parts_in_flight", &self.max_parts_in_flight)
            .finish_non_exhaustive()
    }
}

/// A multipart upload in progress; aborted in the background if dropped before it is finished
/// (the `put` future was cancelled), so no parts linger on the server.
struct PendingUpload(Option<WriteMultipart>);

impl Drop for PendingUpload {
    fn drop(&mut self) {
        if let Some(writer) = self.0.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move {
                if let Err(e) = writer.abort().await {
                    tracing::warn!(error = %e, "aborting a cancelled multipart upload failed");
                }
            });
        }
    }
}

/// Failures of this adapter itself (not of the store it talks to).
#[derive(Debug, thiserror::Error)]
enum AdapterError {
    #[error("presigned URLs live at most {max:?}, {requested:?} was asked for")]
    PresignTooLong { requested: Duration, max: Duration },
}

impl ObjectBlobStore {
    /// The store named by `config.url`.
    pub fn from_config(config: &S3Config) -> Result<Self, BlobError> {
        Self::connect(config.clone())
    }

    /// The store an [`S3Config`] describes (its `url` is required); every adapter opens from
    /// its config this way.
    pub fn connect(config: S3Config) -> Result<Self, BlobError> {
        let config = &config;
        let url = config
            .url
            .as_deref()
            .ok_or_else(|| config_error(S3ConfigError::MissingUrl))?;
        Self::from_url(url, config)
    }

    /// The store at `url`: `s3://bucket/prefix` builds an S3 client from `config` (falling back
    /// to the `AWS_*` environment); any other scheme `object_store` knows (`file:///path`,
    /// `memory:///`) is built from the URL alone and uses only the upload limits of `config`.
    pub fn from_url(url: &str, config: &S3Config) -> Result<Self, BlobError> {
        let parsed = Url::parse(url).map_err(|source| {
            config_error(S3ConfigError::InvalidUrl {
                url: url.to_owned(),
                source,
            })
        })?;
        let (scheme, prefix) = ObjectStoreScheme::parse(&parsed)
            .map_err(|e| config_error(S3ConfigError::Store(e.into())))?;
        let location = redacted_url(&parsed);
        match scheme {
            ObjectStoreScheme::AmazonS3 => {
                config
                    .check_limits(config::S3_MIN_PART_SIZE)
                    .map_err(config_error)?;
                let s3 = Arc::new(
                    s3_builder(url, config)
                        .build()
                        .map_err(|e| config_error(S3ConfigError::Store(e)))?,
                );
                Ok(Self {
                    store: s3.clone(),
                    s3: Some(s3),
                    root: prefix.as_ref().to_owned(),
                    backend: "s3",
                    location,
                    part_size: config.part_size,
                    max_parts_in_flight: config.max_parts_in_flight,
                })
            }
            other => {
                config.check_limits(1).map_err(config_error)?;
                let (store, prefix) =
                    object_store::parse_url_opts(&parsed, std::iter::empty::<(&str, &str)>())
                        .map_err(|e| config_error(S3ConfigError::Store(e)))?;
                Ok(Self {
                    store: Arc::from(store),
                    s3: None,
                    root: prefix.as_ref().to_owned(),
                    backend: backend_name(&other),
                    location,
                    part_size: config.part_size,
                    max_parts_in_flight: config.max_parts_in_flight,
                })
            }
        }
    }

    /// Wraps an existing store (a `LimitStore`, a `ThrottledStore`, ...), keys under `prefix`.
    /// Such a store does not presign.
    pub fn from_store(
        store: Arc<dyn ObjectStore>,
        prefix: &str,
        config: &S3Config,
    ) -> Result<Self, BlobError> {
        config.check_limits(1).map_err(config_error)?;
        let root = Path::parse(prefix.trim_matches('/')).map_err(|_| BlobError::InvalidKey {
            key: prefix.chars().take(128).collect(),
            reason: "not a valid object store prefix",
        })?;
        Ok(Self {
            location: format!("{store}"),
            store,
            s3: None,
            root: root.as_ref().to_owned(),
            backend: "object_store",
            part_size: config.part_size,
            max_parts_in_flight: config.max_parts_in_flight,
        })
    }

    /// The object path of a (validated) key.
    fn path(&self, key: &str) -> Result<Path, BlobError> {
        validate_key(key)?;
        let full = if self.root.is_empty() {
            key.to_owned()
        } else {
            format!("{}/{key}", self.root)
        };
        Path::parse(full).map_err(|_| BlobError::InvalidKey {
            key: key.chars().take(128).collect(),
            reason: "not a valid object path",
        })
    }

    /// The key of an object path, if it lies under the root.
    fn key_of<'a>(&self, location: &'a Path) -> Option<&'a str> {
        let location = location.as_ref();
        if self.root.is_empty() {
            Some(location)
        } else {
            location.strip_prefix(self.root.as_str())?.strip_prefix('/')
        }
    }

    fn meta(&self, key: &str, meta: &ObjectMeta) -> BlobMeta {
        BlobMeta {
            key: key.to_owned(),
            size: meta.size,
            etag: etag_or_derived(meta.e_tag.as_deref(), meta.last_modified, meta.size),
            last_modified: meta.last_modified,
        }
    }

    fn error(&self, key: &str, operation: &'static str, err: object_store::Error) -> BlobError {
        use object_store::Error as E;
        match err {
            E::NotFound { .. } => BlobError::NotFound {
                key: key.to_owned(),
            },
            E::InvalidPath { .. } => BlobError::InvalidKey {
                key: key.chars().take(128).collect(),
                reason: "not a valid object path",
            },
            E::NotSupported { .. } | E::NotImplemented { .. } => BlobError::NotSupported {
                backend: self.backend,
                operation,
            },
            other => {
                let temporary = is_temporary(&other);
                BlobError::backend(self.backend, temporary, other)
            }
        }
    }

    /// Streams a body longer than one part as a multipart upload, `head` being what was read
    /// of it so far.
    async fn put_multipart(
        &self,
        key: &str,
        path: &Path,
        head: Vec<Bytes>,
        mut body: ByteStream,
    ) -> Result<(u64, object_store::PutResult), BlobError> {
        let upload = self
            .store
            .put_multipart(path)
            .await
            .map_err(|e| self.error(key, "put", e))?;
        // If this future is dropped half way, the guard aborts the upload in the background.
        let mut pending = PendingUpload(None);
        let writer = pending
            .0
            .insert(WriteMultipart::new_with_chunk_size(upload, self.part_size));
        let mut size = 0u64;
        let fed = async {
            for chunk in head {
                size += chunk.len() as u64;
                self.feed(key, writer, chunk).await?;
            }
            while let Some(chunk) = body.try_next().await.map_err(BlobError::Body)? {
                size += chunk.len() as u64;
                self.feed(key, writer, chunk).await?;
            }
            Ok::<_, BlobError>(())
        }
        .await;
        let Some(writer) = pending.0.take() else {
            unreachable!("the writer was put in the guard above")
        };
        if let Err(e) = fed {
            // Nothing becomes visible until completion; aborting frees the uploaded parts.
            if let Err(abort) = writer.abort().await {
                tracing::warn!(backend = self.backend, key, error = %abort, "aborting a multipart upload failed");
            }
            return Err(e);
        }
        // `finish` aborts the upload itself when a part or the completion fails.
        let result = writer
            .finish()
            .await
            .map_err(|e| self.error(key, "put", e))?;
        Ok((size, result))
    }

    /// Hands one chunk to the writer, never letting more than `max_parts_in_flight` parts be in
    /// flight: each piece is at most one part, so it starts at most one upload.
    async fn feed(
        &self,
        key: &str,
        writer: &mut WriteMultipart,
        mut chunk: Bytes,
    ) -> Result<(), BlobError> {
        while !chunk.is_empty() {
            writer
                .wait_for_capacity(self.max_parts_in_flight)
                .await
                .map_err(|e| self.error(key, "put", e))?;
            let piece = chunk.split_to(chunk.len().min(self.part_size));
            writer.put(piece);
        }
        Ok(())
    }

    /// Objects whose full path starts with `full_prefix` (a plain string prefix, not a
    /// path-segment one).
    async fn list_objects(&self, full_prefix: &str) -> Result<Vec<ObjectMeta>, BlobError> {
        if let Some(s3) = &self.s3 {
            // S3 filters by raw string prefix server-side.
            let mut objects = Vec::new();
            let mut page_token = None;
            loop {
                let opts = PaginatedListOptions {
                    page_token,
                    ..PaginatedListOptions::default()
                };
                let page = s3
                    .list_paginated(Some(full_prefix).filter(|p| !p.is_empty()), opts)
                    .await
                    .map_err(|e| self.error(full_prefix, "list", e))?;
                objects.extend(page.result.objects);
                match page.page_token {
                    Some(token) => page_token = Some(token),
                    None => break,
                }
            }
            return Ok(objects);
        }
        // Other stores list whole path segments: list the enclosing directory, then filter.
        let dir = match full_prefix.rfind('/') {
            Some(i) => Some(
                Path::parse(&full_prefix[..i]).map_err(|_| BlobError::InvalidKey {
                    key: full_prefix.chars().take(128).collect(),
                    reason: "not a valid object path",
                })?,
            ),
            None => None,
        };
        self.store
            .list(dir.as_ref())
            .try_filter(|m| futures::future::ready(m.location.as_ref().starts_with(full_prefix)))
            .try_collect()
            .await
            .map_err(|e| self.error(full_prefix, "list", e))
    }
}

#[async_trait]
impl BlobStore for ObjectBlobStore {
    async fn put(&self, key: &str, mut body: ByteStream) -> Result<BlobMeta, BlobError> {
        let path = self.path(key)?;
        // Read up to one part: a body that ends before is a single PUT.
        let mut head = Vec::new();
        let mut buffered = 0usize;
        let (size, result) = loop {
            match body.try_next().await.map_err(BlobError::Body)? {
                Some(chunk) => {
                    buffered += chunk.len();
                    head.push(chunk);
                    if buffered >= self.part_size {
                        break self.put_multipart(key, &path, head, body).await?;
                    }
                }
                None => {
                    let payload: PutPayload = head.into_iter().collect();
                    let result = self
                        .store
                        .put(&path, payload)
                        .await
                        .map_err(|e| self.error(key, "put", e))?;
                    break (buffered as u64, result);
                }
            }
        };
        match result.e_tag {
            Some(etag) => Ok(BlobMeta {
                key: key.to_owned(),
                size,
                etag,
                last_modified: Utc::now(),
            }),
            // Without an etag from the write, take the stored metadata so `head` agrees.
            None => self.head(key).await,
        }
    }

    async fn get(&self, key: &str, range: Option<Range<u64>>) -> Result<BlobRead, BlobError> {
        let path = self.path(key)?;
        let requested = match range {
            None => None,
            Some(r) if r.start < r.end => Some(r),
            Some(r) => {
                // An empty range is only satisfiable (as 0..0) on an empty blob.
                let meta = self.head(key).await?;
                let range = resolve_range(Some(r), meta.size)?;
                return Ok(empty_read(meta, range));
            }
        };
        let options = GetOptions::new().with_range(requested.clone());
        match self.store.get_opts(&path, options).await {
            Ok(result) => {
                let meta = self.meta(key, &result.meta);
                let range = result.range.clone();
                let body = result.into_stream().map_err(std::io::Error::from).boxed();
                Ok(BlobRead { meta, range, body })
            }
            Err(object_store::Error::NotFound { .. }) => Err(BlobError::NotFound {
                key: key.to_owned(),
            }),
            Err(e) => match requested {
                // Stores word an unsatisfiable range differently (HTTP 416, a local error):
                // look at the size to say it in one way.
                Some(r) => {
                    let meta = self.head(key).await?;
                    match resolve_range(Some(r), meta.size)? {
                        range if range.is_empty() => Ok(empty_read(meta, range)),
                        _ => Err(self.error(key, "get", e)),
                    }
                }
                None => Err(self.error(key, "get", e)),
            },
        }
    }

    async fn head(&self, key: &str) -> Result<BlobMeta, BlobError> {
        let path = self.path(key)?;
        let meta = self
            .store
            .head(&path)
            .await
            .map_err(|e| self.error(key, "head", e))?;
        Ok(self.meta(key, &meta))
    }

    async fn delete(&self, key: &str) -> Result<(), BlobError> {
        let path = self.path(key)?;
        match self.store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.error(key, "delete", e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<BlobMeta>, BlobError> {
        validate_prefix(prefix)?;
        let full_prefix = match (self.root.is_empty(), prefix.is_empty()) {
            (true, _) => prefix.to_owned(),
            (false, true) => format!("{}/", self.root),
            (false, false) => format!("{}/{prefix}", self.root),
        };
        let mut listed: Vec<BlobMeta> = self
            .list_objects(&full_prefix)
            .await?
            .iter()
            .filter_map(|m| Some(self.meta(self.key_of(&m.location)?, m)))
            .filter(|m| m.key.starts_with(prefix))
            .collect();
        listed.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(listed)
    }

    fn capabilities(&self) -> BlobCapabilities {
        BlobCapabilities::default().with_presign(self.s3.is_some())
    }

    async fn presign(
        &self,
        method: PresignMethod,
        key: &str,
        expires_in: Duration,
    ) -> Result<String, BlobError> {
        let path = self.path(key)?;
        let Some(s3) = &self.s3 else {
            return Err(BlobError::NotSupported {
                backend: self.backend,
                operation: "presign",
            });
        };
        if expires_in > MAX_PRESIGN_EXPIRY {
            return Err(BlobError::backend(
                self.backend,
                false,
                AdapterError::PresignTooLong {
                    requested: expires_in,
                    max: MAX_PRESIGN_EXPIRY,
                },
            ));
        }
        let method = match method {
            PresignMethod::Put => Method::PUT,
            PresignMethod::Get => Method::GET,
        };
        let url = s3
            .signed_url(method, &path, expires_in)
            .await
            .map_err(|e| self.error(key, "presign", e))?;
        Ok(url.into())
    }

    async fn ping(&self) -> Result<(), BlobError> {
        let root = self.root.clone();
        if let Some(s3) = &self.s3 {
            let opts = PaginatedListOptions {
                max_keys: Some(1),
                ..PaginatedListOptions::default()
            };
            s3.list_paginated(Some(root.as_str()).filter(|r| !r.is_empty()), opts)
                .await
                .map_err(|e| self.error(&root, "ping", e))?;
            return Ok(());
        }
        let root_path = Path::from_iter(root.split('/').filter(|s| !s.is_empty()));
        match self.store.list(Some(&root_path)).next().await {
            None | Some(Ok(_)) => Ok(()),
            Some(Err(e)) => Err(self.error(&root, "ping", e)),
        }
    }
}

/// An S3 builder: the `AWS_*` environment first, then whatever `config` sets.
fn s3_builder(url: &str, config: &S3Config) -> AmazonS3Builder {
    let mut builder = AmazonS3Builder::from_env().with_url(url);
    if let Some(region) = &config.region {
        builder = builder.with_region(region);
    }
    if let Some(endpoint) = &config.endpoint {
        // `AWS_ENDPOINT_URL_S3` in the environment would otherwise take precedence.
        builder = builder
            .with_endpoint(endpoint)
            .with_config(AmazonS3ConfigKey::S3Endpoint, endpoint);
    }
    if let Some(id) = &config.access_key_id {
        builder = builder.with_access_key_id(id);
    }
    if let Some(secret) = &config.secret_access_key {
        builder = builder.with_secret_access_key(secret);
    }
    if let Some(token) = &config.session_token {
        builder = builder.with_token(token);
    }
    if let Some(allow) = config.http_allowed() {
        builder = builder.with_allow_http(allow);
    }
    if let Some(virtual_hosted) = config.virtual_hosted_style {
        builder = builder.with_virtual_hosted_style_request(virtual_hosted);
    }
    builder
}

fn config_error(err: S3ConfigError) -> BlobError {
    BlobError::backend("s3", false, err)
}

fn backend_name(scheme: &ObjectStoreScheme) -> &'static str {
    match scheme {
        ObjectStoreScheme::Local => "file",
        ObjectStoreScheme::Memory => "memory",
        ObjectStoreScheme::AmazonS3 => "s3",
        _ => "object_store",
    }
}

/// The URL without user, password or query (where credentials could hide).
fn redacted_url(url: &Url) -> String {
    let mut shown = url.clone();
    // Both only fail for URLs that cannot have credentials anyway.
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.set_query(None);
    shown.set_fragment(None);
    shown.into()
}

/// The store's etag, or one derived from what changes with the content.
fn etag_or_derived(etag: Option<&str>, last_modified: DateTime<Utc>, size: u64) -> String {
    match etag {
        Some(etag) if !etag.is_empty() => etag.to_owned(),
        _ => format!(
            "d{:x}-{size:x}",
            last_modified.timestamp_nanos_opt().unwrap_or_default()
        ),
    }
}

fn empty_read(meta: BlobMeta, range: Range<u64>) -> BlobRead {
    BlobRead {
        meta,
        range,
        body: futures::stream::empty().boxed(),
    }
}

/// Whether an `object_store` failure may go away on its own.
///
/// object_store gives typed variants to the HTTP statuses that are the caller's fault or a
/// fact about the object (401, 403, 404, 409, 412, 304) and has already retried transport
/// errors, 5xx and 429 within its retry budget. What remains as `Generic`:
/// - with a transport error ([`object_store::client::HttpError`]) in its chain: temporary
///   unless the response could not be decoded;
/// - with an I/O error in its chain (local files): temporary for interruptions and timeouts;
/// - from an HTTP store otherwise: a status object_store has no variant for, in practice a 5xx
///   or 429 after its retries ran out, so temporary (its status is not exposed as a type).
fn is_temporary(err: &object_store::Error) -> bool {
    use object_store::client::{HttpError, HttpErrorKind};
    use std::io::ErrorKind;
    let object_store::Error::Generic { store, source } = err else {
        return false;
    };
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(source.as_ref());
    while let Some(e) = cause {
        if let Some(http) = e.downcast_ref::<HttpError>() {
            return !matches!(http.kind(), HttpErrorKind::Decode);
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                ErrorKind::Interrupted
                    | ErrorKind::TimedOut
                    | ErrorKind::WouldBlock
                    | ErrorKind::ConnectionReset
                    | ErrorKind::ConnectionAborted
                    | ErrorKind::ConnectionRefused
            );
        }
        cause = e.source();
    }
    matches!(*store, "S3" | "GCS" | "MicrosoftAzure" | "HTTP")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_under_the_prefix() {
        let store =
            ObjectBlobStore::from_url("memory:///base/dir", &S3Config::new()).expect("store");
        assert_eq!(store.path("a/b").expect("path").as_ref(), "base/dir/a/b");
        assert_eq!(
            store.key_of(&Path::from("base/dir/a/b")),
            Some("a/b"),
            "prefix stripped"
        );
        assert_eq!(store.key_of(&Path::from("base/dirx/a")), None);
        assert!(matches!(
            store.path("../x"),
            Err(BlobError::InvalidKey { .. })
        ));
        assert!(!store.capabilities().presign);
    }

    #[test]
    fn s3_urls_presign_and_check_part_size() {
        let config = S3Config::new()
            .with_endpoint("http://127.0.0.1:1")
            .with_credentials("id", "secret-value");
        let store = ObjectBlobStore::from_url("s3://bucket/prefix", &config).expect("store");
        assert!(store.capabilities().presign);
        assert_eq!(store.root, "prefix");
        assert!(!format!("{store:?}").contains("secret-value"));
        let small = config.with_part_size(1024 * 1024);
        assert!(ObjectBlobStore::from_url("s3://bucket", &small).is_err());
        assert!(ObjectBlobStore::from_url("not a url", &S3Config::new()).is_err());
    }

    #[test]
    fn debug_shows_no_credentials_in_urls() {
        let url = Url::parse("s3://user:pass@bucket/p?token=x").expect("url");
        assert_eq!(redacted_url(&url), "s3://bucket/p");
    }

    #[test]
    fn errors_say_whether_to_retry() {
        let not_found = object_store::Error::NotFound {
            path: "x".into(),
            source: "gone".into(),
        };
        assert!(!is_temporary(&not_found));
        let io = object_store::Error::Generic {
            store: "LocalFileSystem",
            source: Box::new(std::io::Error::new(std::io::ErrorKind::TimedOut, "slow")),
        };
        assert!(is_temporary(&io));
        let denied = object_store::Error::Generic {
            store: "LocalFileSystem",
            source: Box::new(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                "no",
            )),
        };
        assert!(!is_temporary(&denied));
    }
}

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};
use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};

use super::{Engine, EngineError};
use crate::blob::{BlobError, BlobStoreExt, ByteStream};
use crate::conversion::{Conversion, NewConversion, Status, sanitize_file_name};
use crate::converter::ConvertError;
use crate::queue::JobSpec;
use crate::{ConversionId, Format};

/// Where a submission's input comes from.
pub enum SubmitInput {
    /// A stream, stored as the conversion's input blob as it arrives.
    Stream {
        /// The bytes.
        body: ByteStream,
        /// The uploaded file's name, if known.
        file_name: Option<String>,
    },
    /// A blob already in the blob store (e.g. uploaded through `POST /v1/uploads`). The
    /// conversion takes it over: deleting the conversion deletes it.
    Blob {
        /// Its key.
        key: String,
        /// The original file name, if known.
        file_name: Option<String>,
    },
    /// A blob the caller wrote for this submission alone (e.g. a multipart upload staged
    /// before the form's other fields were read). Like [`SubmitInput::Blob`], but the engine
    /// also owns its removal: it is deleted when no new conversion comes of the submission
    /// (an error before the record exists, or an idempotent replay), and kept once a record
    /// names it. A replay compares it by content, not by key.
    Staged {
        /// Its key.
        key: String,
        /// The original file name, if known.
        file_name: Option<String>,
    },
}

impl std::fmt::Debug for SubmitInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SubmitInput::Stream { file_name, .. } => f
                .debug_struct("Stream")
                .field("file_name", file_name)
                .finish_non_exhaustive(),
            SubmitInput::Blob { key, file_name } => f
                .debug_struct("Blob")
                .field("key", key)
                .field("file_name", file_name)
                .finish(),
            SubmitInput::Staged { key, file_name } => f
                .debug_struct("Staged")
                .field("key", key)
                .field("file_name", file_name)
                .finish(),
        }
    }
}

impl SubmitInput {
    /// A file staged with [`Engine::stage_input`](super::Engine::stage_input).
    pub fn staged(staged: crate::intake::Staged, file_name: Option<String>) -> Self {
        SubmitInput::Staged {
            key: staged.key,
            file_name,
        }
    }

    /// Bytes in memory.
    pub fn bytes(bytes: impl Into<Bytes>, file_name: Option<String>) -> Self {
        let bytes = bytes.into();
        SubmitInput::Stream {
            body: futures::stream::once(async move { Ok(bytes) }).boxed(),
            file_name,
        }
    }
}

/// A conversion to submit.
#[derive(Debug)]
pub struct Submission {
    /// The tenant (`default` if none).
    pub tenant: Option<String>,
    /// The input's format; detected from content and file name if `None`.
    pub source_format: Option<Format>,
    /// The format wanted.
    pub target_format: Format,
    /// Converter options: a JSON object or null.
    pub options: serde_json::Value,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Free text, searched with the file name; its `#hashtags` become tags.
    pub description: Option<String>,
    /// Tags, lowercased on submit (see [`crate::search`] for the rules and limits).
    pub tags: Vec<String>,
    /// Higher runs first.
    pub priority: i32,
    /// Do not start before this time.
    pub not_before: Option<DateTime<Utc>>,
    /// Submitting twice with the same key (per tenant) creates one conversion.
    pub idempotency_key: Option<String>,
    /// A per-conversion webhook (needs [`crate::engine::EngineBuilder::webhooks`]).
    pub webhook: Option<SubmitWebhook>,
    /// The input.
    pub input: SubmitInput,
}

/// A per-conversion webhook: the record is POSTed to `url` on every terminal status (and on
/// start with `on_start`), signed with the tenant's signing secret (see [`crate::webhook`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubmitWebhook {
    /// An http or https URL.
    pub url: String,
    /// Whether attempt starts are sent too.
    pub on_start: bool,
}

impl Submission {
    /// A submission with defaults for everything but the target and the input.
    pub fn new(target_format: Format, input: SubmitInput) -> Self {
        Self {
            tenant: None,
            source_format: None,
            target_format,
            options: serde_json::Value::Null,
            labels: BTreeMap::new(),
            description: None,
            tags: Vec::new(),
            priority: 0,
            not_before: None,
            idempotency_key: None,
            webhook: None,
            input,
        }
    }

    /// Sets the source format.
    pub fn source(mut self, f: Format) -> Self {
        self.source_format = Some(f);
        self
    }
    /// Sets the options.
    pub fn options(mut self, options: serde_json::Value) -> Self {
        self.options = options;
        self
    }
    /// Sets the priority.
    pub fn priority(mut self, p: i32) -> Self {
        self.priority = p;
        self
    }
    /// Sets not-before.
    pub fn not_before(mut self, t: DateTime<Utc>) -> Self {
        self.not_before = Some(t);
        self
    }
    /// Sets the idempotency key.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }
    /// Adds a label.
    pub fn label(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.labels.insert(k.into(), v.into());
        self
    }
    /// Sets the description.
    pub fn description(mut self, text: impl Into<String>) -> Self {
        self.description = Some(text.into());
        self
    }
    /// Adds a tag.
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.push(tag.into());
        self
    }
}

/// The result of [`Engine::submit`].
#[derive(Debug, Clone)]
pub struct Submitted {
    /// The record.
    pub conversion: Conversion,
    /// False when the idempotency key named an existing conversion.
    pub created: bool,
}

/// What an idempotent replay must repeat: every field of the request but the input, whose key
/// (an upload id) or content (a streamed or staged file) is compared apart.
struct ReplayFields {
    source_format: Format,
    target_format: Format,
    options: serde_json::Value,
    labels: BTreeMap<String, String>,
    description: Option<String>,
    tags: Vec<String>,
    priority: i32,
    input_key: String,
}

impl ReplayFields {
    fn of(new: &NewConversion) -> Self {
        Self {
            source_format: new.source_format.clone(),
            target_format: new.target_format.clone(),
            options: new.options.clone(),
            labels: new.labels.clone(),
            description: new.description.clone(),
            tags: new.tags.clone(),
            priority: new.priority,
            input_key: new.input_key.clone(),
        }
    }

    /// The first field the stored record has otherwise, if any.
    fn first_difference(&self, stored: &Conversion) -> Option<&'static str> {
        // No options and an empty object mean the same to every converter.
        let options = |v: &serde_json::Value| match v {
            serde_json::Value::Null => serde_json::Value::Object(Default::default()),
            other => other.clone(),
        };
        if self.target_format != stored.target_format {
            Some("target_format")
        } else if self.source_format != stored.source_format {
            Some("source_format")
        } else if options(&self.options) != options(&stored.options) {
            Some("options")
        } else if self.labels != stored.labels {
            Some("labels")
        } else if self.priority != stored.priority {
            Some("priority")
        } else if self.description != stored.description {
            Some("description")
        } else if self.tags != stored.tags {
            Some("tags")
        } else {
            None
        }
    }
}

/// A submission's input, once stored (or found stored).
struct TakenInput {
    /// Its blob key.
    key: String,
    /// The file name given, sanitised.
    name: Option<String>,
    size: u64,
    /// Its format, given or detected.
    source: Format,
    /// Whether this submission wrote it (rather than being handed a stored blob).
    uploaded: bool,
}

/// How many leading bytes are read to detect a format.
const SNIFF_BYTES: usize = 4096;

/// The io error kind and message used to stop an upload that passed the size limit.
const TOO_LARGE: &str = "converto: input too large";

impl Engine {
    /// Stores the input, creates the record and enqueues the job.
    ///
    /// Checks before anything is stored: options, route (when the source format is given),
    /// idempotency key. The input is streamed to the blob store; an empty or oversized input
    /// leaves nothing behind.
    ///
    /// An idempotency key binds to its request: a replay with the same fields and input
    /// answers the first conversion; one that differs fails with
    /// [`EngineError::IdempotencyMismatch`] and removes only what it wrote itself.
    pub async fn submit(&self, sub: Submission) -> Result<Submitted, EngineError> {
        // Boxed: the caller's future stays small (a caller keeping many submissions in flight
        // moves each one's future around), the state lives in one allocation.
        Box::pin(self.submit_staged(sub)).await
    }

    /// [`Engine::submit`], removing a staged input no new conversion came of.
    async fn submit_staged(&self, sub: Submission) -> Result<Submitted, EngineError> {
        let staged = match &sub.input {
            SubmitInput::Staged { key, .. } => Some(key.clone()),
            _ => None,
        };
        let mut recorded = false;
        let result = self.submit_recorded(sub, &mut recorded).await;
        if let Some(key) = staged {
            // Once a record names the staged input (even if its enqueue failed: the sweeper
            // enqueues it later), the input is the conversion's.
            let keep = match &result {
                Ok(s) => s.created,
                Err(_) => recorded,
            };
            if !keep {
                let _ = self.inner.backends.blobs.delete(&key).await;
            }
        }
        result
    }

    /// [`Engine::submit`]; sets `recorded` once a new record exists.
    async fn submit_recorded(
        &self,
        sub: Submission,
        recorded: &mut bool,
    ) -> Result<Submitted, EngineError> {
        let Submission {
            tenant,
            source_format,
            target_format,
            options,
            labels,
            description,
            tags,
            priority,
            not_before,
            idempotency_key,
            webhook,
            input,
        } = sub;
        if !(options.is_object() || options.is_null()) {
            return Err(EngineError::InvalidOptions(
                "options must be a JSON object".into(),
            ));
        }
        if let Some(key) = &idempotency_key
            && (key.is_empty() || key.len() > 255 || key.chars().any(char::is_control))
        {
            return Err(EngineError::InvalidRequest(
                "the idempotency key must be 1 to 255 printable characters".into(),
            ));
        }
        if let Some(source) = &source_format {
            self.check_route(source, &target_format, &options)?;
        }
        let (description, tags) = crate::search::metadata(description, tags)
            .map_err(|e| EngineError::InvalidRequest(e.to_string()))?;
        let id = ConversionId::new();
        let tenant = tenant.unwrap_or_else(|| crate::DEFAULT_TENANT.into());
        if let Some(w) = &webhook {
            // Written before the record, so no record exists without its webhook (an orphan
            // subscription, left by a failed submit or a replay, is never announced).
            let webhooks = self.inner.webhooks.as_ref().ok_or_else(|| {
                EngineError::InvalidRequest("webhooks are not enabled on this engine".into())
            })?;
            let sub = crate::webhook::Subscription {
                conversion: id,
                tenant: tenant.clone(),
                url: w.url.clone(),
                on_start: w.on_start,
            };
            Box::pin(webhooks.subscribe(&sub))
                .await
                .map_err(|e| match e {
                    crate::webhook::WebhookError::InvalidUrl(m) => {
                        EngineError::InvalidRequest(format!("webhook_url: {m}"))
                    }
                    other => EngineError::Webhook(other),
                })?;
        }
        drop(webhook);
        let blobs = &self.inner.backends.blobs;
        let by_content = !matches!(input, SubmitInput::Blob { .. });
        let taken = match input {
            SubmitInput::Stream { body, file_name } => {
                let input_name = file_name.as_deref().and_then(sanitize_file_name);
                let (head, rest) = read_head(body)
                    .await
                    .map_err(|e| EngineError::Blob(BlobError::Body(e)))?;
                if head.is_empty() {
                    return Err(EngineError::EmptyInput);
                }
                let source = match source_format {
                    Some(s) => s,
                    None => {
                        let s = Format::detect(input_name.as_deref(), &head).ok_or_else(|| {
                            EngineError::UnknownSourceFormat {
                                file_name: input_name.clone(),
                            }
                        })?;
                        self.check_route(&s, &target_format, &options)?;
                        s
                    }
                };
                let key = crate::intake::layout::input(&tenant, id);
                let size = self.store_input(&key, head, rest).await?;
                TakenInput {
                    key,
                    name: input_name,
                    size,
                    source,
                    uploaded: true,
                }
            }
            SubmitInput::Blob { key, file_name } | SubmitInput::Staged { key, file_name } => {
                Box::pin(self.take_blob(key, file_name, source_format, &target_format, &options))
                    .await?
            }
        };
        let TakenInput {
            key: input_key,
            name: input_name,
            size,
            source,
            uploaded,
        } = taken;
        // An input handed over as an existing blob may feed several conversions (one upload
        // converted to two formats): each conversion claims it, and deleting a conversion
        // deletes the blob only when no claim is left (see `Engine::delete`). The claim is
        // written before the record, so a crash in between leaves a claim (the blob is kept),
        // never a record without one.
        //
        // `written` is what this submission wrote, removed again if no new conversion comes of
        // it: the input it stored, or its claim on an input it was handed.
        let written = if uploaded {
            input_key.clone()
        } else {
            let claim = crate::intake::layout::claim(&input_key, id);
            blobs.put_bytes(&claim, Bytes::new()).await?;
            claim
        };
        let new = NewConversion {
            id,
            tenant,
            source_format: source,
            target_format,
            options,
            labels,
            priority,
            input_key,
            input_name,
            description,
            tags,
            input_size: size,
            idempotency_key,
        };
        let replay = ReplayFields::of(&new);
        let (record, created) = match self.inner.backends.store.create(new).await {
            Ok(c) => (c.conversion, c.created),
            Err(e) => {
                let _ = blobs.delete(&written).await;
                return Err(e.into());
            }
        };
        *recorded = created;
        if !created {
            let differs = Box::pin(self.replay_difference(&replay, &record, by_content)).await;
            let _ = blobs.delete(&written).await;
            if let Some(field) = differs? {
                return Err(EngineError::IdempotencyMismatch {
                    id: record.id,
                    field,
                });
            }
        }
        drop(replay);
        // A replay re-enqueues a still-queued record too: that heals a crash between the
        // record's creation and its enqueue. Enqueue is a no-op when the job is there.
        if record.status == Status::Queued {
            self.inner
                .backends
                .queue
                .enqueue(JobSpec {
                    id: record.id,
                    tenant: record.tenant.clone(),
                    priority: record.priority,
                    not_before: not_before.unwrap_or_else(Utc::now),
                    attempts: record.attempts,
                })
                .await?;
        }
        metrics::counter!("converto_conversions_submitted_total").increment(u64::from(created));
        Ok(Submitted {
            conversion: record,
            created,
        })
    }

    /// The input of a submission handed over as a blob already stored: its size checked, its
    /// format detected if not given.
    async fn take_blob(
        &self,
        key: String,
        file_name: Option<String>,
        source_format: Option<Format>,
        target_format: &Format,
        options: &serde_json::Value,
    ) -> Result<TakenInput, EngineError> {
        let blobs = &self.inner.backends.blobs;
        let input_name = file_name.as_deref().and_then(sanitize_file_name);
        let meta = blobs.head(&key).await?;
        if meta.size == 0 {
            return Err(EngineError::EmptyInput);
        }
        // The blob may have been written where no limit applied (a presigned PUT
        // cannot bound the size): its real size is checked here.
        if let Some(limit) = self.inner.config.max_input_bytes
            && meta.size > limit
        {
            return Err(EngineError::InputTooLarge { limit });
        }
        let source = match source_format {
            Some(s) => s,
            None => {
                let read = blobs.get(&key, Some(0..SNIFF_BYTES as u64)).await?;
                let (head, _) = read_head(read.body)
                    .await
                    .map_err(|e| EngineError::Blob(BlobError::Body(e)))?;
                let s = Format::detect(input_name.as_deref(), &head).ok_or_else(|| {
                    EngineError::UnknownSourceFormat {
                        file_name: input_name.clone(),
                    }
                })?;
                self.check_route(&s, target_format, options)?;
                s
            }
        };
        Ok(TakenInput {
            key,
            name: input_name,
            size: meta.size,
            source,
            uploaded: false,
        })
    }

    /// The first field in which a replay differs from the conversion its key names, if any.
    async fn replay_difference(
        &self,
        replay: &ReplayFields,
        stored: &Conversion,
        by_content: bool,
    ) -> Result<Option<&'static str>, EngineError> {
        match replay.first_difference(stored) {
            Some(field) => Ok(Some(field)),
            None if replay.input_key == stored.input_key => Ok(None),
            None if by_content => self
                .same_content(&replay.input_key, &stored.input_key)
                .await
                .map(|same| (!same).then_some("input")),
            None => Ok(Some("input")),
        }
    }

    /// Whether two blobs hold the same bytes (sizes, then SHA-256 digests).
    async fn same_content(&self, a: &str, b: &str) -> Result<bool, EngineError> {
        let blobs = &self.inner.backends.blobs;
        let (ma, mb) = futures::try_join!(blobs.head(a), blobs.head(b))?;
        if ma.size != mb.size {
            return Ok(false);
        }
        let (da, db) = futures::try_join!(self.digest(a), self.digest(b))?;
        Ok(da == db)
    }

    async fn digest(&self, key: &str) -> Result<[u8; 32], EngineError> {
        use sha2::{Digest, Sha256};
        let mut body = self.inner.backends.blobs.get(key, None).await?.body;
        let mut hasher = Sha256::new();
        while let Some(chunk) = body
            .try_next()
            .await
            .map_err(|e| EngineError::Blob(BlobError::Body(e)))?
        {
            hasher.update(&chunk);
        }
        Ok(hasher.finalize().into())
    }

    /// A converter (or a chain of them) serves `source` -> `target` and accepts `options`.
    fn check_route(
        &self,
        source: &Format,
        target: &Format,
        options: &serde_json::Value,
    ) -> Result<(), EngineError> {
        let Some(converter) = self.inner.registry.resolve(source, target) else {
            return Err(EngineError::UnsupportedRoute {
                source_format: source.clone(),
                target_format: target.clone(),
                supported: self.inner.registry.reachable(),
            });
        };
        converter
            .check_options(source, target, options)
            .map_err(|e| match e {
                ConvertError::InvalidOptions(detail) => EngineError::InvalidOptions(detail),
                other => EngineError::InvalidOptions(other.to_string()),
            })
    }

    async fn store_input(
        &self,
        key: &str,
        head: Bytes,
        rest: ByteStream,
    ) -> Result<u64, EngineError> {
        let limit = self.inner.config.max_input_bytes;
        let mut total = 0u64;
        let body = futures::stream::once(futures::future::ready(Ok(head)))
            .chain(rest)
            .map(move |chunk| {
                let chunk = chunk?;
                total += chunk.len() as u64;
                if limit.is_some_and(|l| total > l) {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::FileTooLarge,
                        TOO_LARGE,
                    ));
                }
                Ok(chunk)
            })
            .boxed();
        match self.inner.backends.blobs.put(key, body).await {
            Ok(meta) => Ok(meta.size),
            Err(BlobError::Body(e)) if e.kind() == std::io::ErrorKind::FileTooLarge => {
                let _ = self.inner.backends.blobs.delete(key).await;
                Err(EngineError::InputTooLarge {
                    limit: limit.unwrap_or(0),
                })
            }
            Err(e) => {
                let _ = self.inner.backends.blobs.delete(key).await;
                Err(e.into())
            }
        }
    }
}

/// Reads up to [`SNIFF_BYTES`] from the front of a stream, giving them back with the rest.
async fn read_head(mut body: ByteStream) -> std::io::Result<(Bytes, ByteStream)> {
    // A first chunk that is long enough, or the whole body, is the head as it is.
    let first = match body.try_next().await? {
        Some(chunk) => chunk,
        None => return Ok((Bytes::new(), body)),
    };
    if first.len() >= SNIFF_BYTES {
        return Ok((first, body));
    }
    let second = match body.try_next().await? {
        Some(chunk) => chunk,
        None => return Ok((first, body)),
    };
    let mut head = BytesMut::with_capacity(first.len() + second.len());
    head.extend_from_slice(&first);
    head.extend_from_slice(&second);
    while head.len() < SNIFF_BYTES {
        match body.try_next().await? {
            Some(chunk) => head.extend_from_slice(&chunk),
            None => break,
        }
    }
    Ok((head.freeze(), body))
}

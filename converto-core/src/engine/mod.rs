//! The scheduling engine: submits, runs and watches conversions over any set of backends.

mod acks;
mod admission;
mod config;
mod function;
mod handle;
mod scratch;
mod submit;
mod sweeper;
mod worker;

use std::ops::Range;
use std::sync::Arc;

use futures::StreamExt;
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

#[doc(hidden)]
pub use crate::intake::layout::claimed_input;
pub use config::EngineConfig;
pub use function::{FnConverter, converter_fn};
pub use handle::WorkerHandle;
pub use submit::{Submission, SubmitInput, SubmitWebhook, Submitted};

use crate::blob::{BlobError, BlobRead, BlobStore};
use crate::conversion::{Artifact, Conversion, Status, Transition, TransitionConflict};
use crate::memory::{MemoryBlobStore, MemoryConversionStore, MemoryJobQueue, MemoryProgressBus};
use crate::progress::{BusError, Event, EventStream, ProgressBus};
use crate::queue::{JobQueue, QueueError};
use crate::registry::{ConverterRegistry, RouteInfo};
use crate::retry::{RetryPolicy, RetryingStore};
use crate::store::{ConversionStore, ListQuery, Page, StoreError};
use crate::{ConversionId, Format};

/// The errors of the [`Engine`]'s API.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// No conversion with that id.
    #[error("conversion {id} not found")]
    NotFound {
        /// The id.
        id: ConversionId,
    },
    /// No artifact with that name.
    #[error("conversion {id} has no artifact named {name:?}")]
    ArtifactNotFound {
        /// The conversion.
        id: ConversionId,
        /// The name asked for.
        name: String,
    },
    /// No registered converter serves the route.
    #[error("no converter for {source_format} -> {target_format}")]
    UnsupportedRoute {
        /// From.
        source_format: Format,
        /// To.
        target_format: Format,
        /// What is served.
        supported: Vec<RouteInfo>,
    },
    /// The input's format could not be told from its name or content.
    #[error("cannot tell the format of {file_name:?}: give source_format")]
    UnknownSourceFormat {
        /// The file name given, if any.
        file_name: Option<String>,
    },
    /// The input is empty.
    #[error("the input is empty")]
    EmptyInput,
    /// The input is larger than allowed.
    #[error("the input is larger than the limit of {limit} bytes")]
    InputTooLarge {
        /// The limit.
        limit: u64,
    },
    /// The idempotency key names a conversion submitted with a different request (another
    /// target, options, labels, priority, source format or input).
    #[error("idempotency key already used for conversion {id} with a different {field}")]
    IdempotencyMismatch {
        /// The conversion the key names.
        id: ConversionId,
        /// The first field found to differ, e.g. `target_format` or `input`.
        field: &'static str,
    },
    /// An upload's ticket is missing, forged or expired.
    #[error(transparent)]
    UploadTicket(#[from] crate::intake::TicketError),
    /// The upload was received already (uploads are written once).
    #[error("upload {upload_id} was already received; ask for a new upload")]
    UploadExists {
        /// The upload.
        upload_id: uuid::Uuid,
    },
    /// No upload with that id has been received (or it expired unclaimed).
    #[error("no upload {upload_id}: send the file to its upload URL first")]
    UploadNotFound {
        /// The upload.
        upload_id: uuid::Uuid,
    },
    /// Storing the input would take the tenant beyond its storage quota
    /// ([`crate::tenants::TenantLimits::storage_bytes`]).
    #[error(
        "this tenant's conversions keep {used} bytes stored; {wanted} more would exceed its quota of {quota} bytes (delete conversions to make room)"
    )]
    StorageQuota {
        /// The tenant's quota.
        quota: u64,
        /// What its conversions hold now.
        used: u64,
        /// What the refused input would add.
        wanted: u64,
    },
    /// The options are not a JSON object.
    #[error("invalid options: {0}")]
    InvalidOptions(String),
    /// The request is malformed in another way.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The conversion is not in a state that allows this (e.g. cancel of a finished one).
    #[error(transparent)]
    Conflict(TransitionConflict),
    /// The store failed.
    #[error(transparent)]
    Store(StoreError),
    /// The queue failed.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// The blob store failed.
    #[error(transparent)]
    Blob(BlobError),
    /// The bus failed.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// The webhook store or delivery queue failed.
    #[error(transparent)]
    Webhook(crate::webhook::WebhookError),
}

impl EngineError {
    /// Whether trying again may succeed.
    pub fn is_temporary(&self) -> bool {
        match self {
            EngineError::Store(e) => e.is_temporary(),
            EngineError::Queue(e) => e.is_temporary(),
            EngineError::Blob(e) => e.is_temporary(),
            EngineError::Bus(e) => e.is_temporary(),
            EngineError::Webhook(e) => e.is_temporary(),
            _ => false,
        }
    }
}

impl From<StoreError> for EngineError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { id } => EngineError::NotFound { id },
            StoreError::Conflict(c) => EngineError::Conflict(c),
            other => EngineError::Store(other),
        }
    }
}

impl From<BlobError> for EngineError {
    fn from(e: BlobError) -> Self {
        EngineError::Blob(e)
    }
}

/// The engine could not be built from the builder's parts.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// A configuration value is out of its range.
    #[error("invalid engine configuration: {0}")]
    InvalidConfig(&'static str),
}

/// The backends an engine runs on.
#[derive(Debug, Clone)]
pub struct Backends {
    /// The records.
    pub store: Arc<dyn ConversionStore>,
    /// The queue.
    pub queue: Arc<dyn JobQueue>,
    /// Progress and status events.
    pub bus: Arc<dyn ProgressBus>,
    /// Inputs and artifacts.
    pub blobs: Arc<dyn BlobStore>,
}

impl Backends {
    /// All four in memory.
    pub fn in_memory() -> Self {
        Self {
            store: Arc::new(MemoryConversionStore::new()),
            queue: Arc::new(MemoryJobQueue::new()),
            bus: Arc::new(MemoryProgressBus::new()),
            blobs: Arc::new(MemoryBlobStore::new()),
        }
    }
}

#[derive(Debug)]
struct Running {
    attempt: u32,
    cancel: CancellationToken,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) backends: Backends,
    /// The store as workers record through it: temporary failures retried (a wrapper, see
    /// [`crate::retry`]), so a brief outage does not lose a verdict.
    pub(crate) verdicts: RetryingStore,
    /// Signs and checks upload tickets: given to the builder, or loaded (generated on first
    /// use) from the blob store, see [`crate::intake::tickets`].
    pub(crate) signer: tokio::sync::OnceCell<crate::intake::UploadSigner>,
    pub(crate) registry: ConverterRegistry,
    pub(crate) config: EngineConfig,
    running: Mutex<crate::memory::IdMap<Running>>,
    /// Per-tenant limits; the workers enforce `max_running`.
    pub(crate) limits: Arc<dyn crate::tenants::LimitSource>,
    /// The running-limit bookkeeping of this engine's workers.
    pub(crate) admission: admission::Admission,
    /// This engine's part of the scratch directory, claimed when the first job runs.
    scratch: tokio::sync::OnceCell<Option<scratch::ScratchRoot>>,
    /// The open batch of the workers' acks (see [`acks`]).
    pub(crate) acks: acks::AckBatcher,
    /// Where statuses are announced, if webhooks are on.
    pub(crate) webhooks: Option<Arc<crate::webhook::Webhooks>>,
}

/// Builds an [`Engine`].
#[derive(Debug, Default)]
pub struct EngineBuilder {
    store: Option<Arc<dyn ConversionStore>>,
    queue: Option<Arc<dyn JobQueue>>,
    bus: Option<Arc<dyn ProgressBus>>,
    blobs: Option<Arc<dyn BlobStore>>,
    registry: ConverterRegistry,
    config: EngineConfig,
    signer: Option<crate::intake::UploadSigner>,
    limits: Option<Arc<dyn crate::tenants::LimitSource>>,
    webhooks: Option<Arc<crate::webhook::Webhooks>>,
}

impl EngineBuilder {
    /// Announces statuses to webhooks (see [`crate::webhook`]): the workers and `cancel`
    /// enqueue deliveries before they let go of a finished conversion's job, and submit
    /// accepts [`Submission::webhook`]. Run the deliveries with [`crate::webhook::Webhooks::run`].
    pub fn webhooks(mut self, webhooks: Arc<crate::webhook::Webhooks>) -> Self {
        self.webhooks = Some(webhooks);
        self
    }
    /// Where per-tenant limits come from (none by default: no tenant is limited). The
    /// workers enforce `max_running`; the HTTP service reads the others from the same source
    /// through [`Engine::limits`].
    pub fn limits(mut self, limits: Arc<dyn crate::tenants::LimitSource>) -> Self {
        self.limits = Some(limits);
        self
    }
    /// The conversion store.
    pub fn store(mut self, store: Arc<dyn ConversionStore>) -> Self {
        self.store = Some(store);
        self
    }
    /// The job queue.
    pub fn queue(mut self, queue: Arc<dyn JobQueue>) -> Self {
        self.queue = Some(queue);
        self
    }
    /// The progress bus.
    pub fn bus(mut self, bus: Arc<dyn ProgressBus>) -> Self {
        self.bus = Some(bus);
        self
    }
    /// The blob store.
    pub fn blobs(mut self, blobs: Arc<dyn BlobStore>) -> Self {
        self.blobs = Some(blobs);
        self
    }
    /// All four backends.
    pub fn backends(self, b: Backends) -> Self {
        self.store(b.store).queue(b.queue).bus(b.bus).blobs(b.blobs)
    }
    /// The converters.
    pub fn registry(mut self, registry: ConverterRegistry) -> Self {
        self.registry = registry;
        self
    }
    /// The configuration.
    pub fn config(mut self, config: EngineConfig) -> Self {
        self.config = config;
        self
    }
    /// The secret upload tickets are signed with (API nodes sharing a blob store must agree on
    /// it). Without one the engine keeps a generated secret in the blob store.
    pub fn upload_signer(mut self, signer: crate::intake::UploadSigner) -> Self {
        self.signer = Some(signer);
        self
    }
    /// Adds one converter to the registry.
    pub fn converter(mut self, converter: Arc<dyn crate::Converter>) -> Self {
        self.registry.register(converter);
        self
    }
    /// The engine. Every backend not given is the in-memory one, so
    /// `Engine::builder().converter(c).build()` is a complete engine for one process.
    pub fn build(self) -> Result<Engine, BuildError> {
        let c = &self.config;
        if c.concurrency == 0 {
            return Err(BuildError::InvalidConfig("concurrency must be at least 1"));
        }
        if c.max_attempts == 0 {
            return Err(BuildError::InvalidConfig("max_attempts must be at least 1"));
        }
        if c.lease_duration.is_zero() {
            return Err(BuildError::InvalidConfig(
                "the lease must be longer than zero",
            ));
        }
        let backends = Backends {
            store: self
                .store
                .unwrap_or_else(|| Arc::new(MemoryConversionStore::new())),
            queue: self
                .queue
                .unwrap_or_else(|| Arc::new(MemoryJobQueue::new())),
            bus: self
                .bus
                .unwrap_or_else(|| Arc::new(MemoryProgressBus::new())),
            blobs: self
                .blobs
                .unwrap_or_else(|| Arc::new(MemoryBlobStore::new())),
        };
        let mut inner = Inner::new(backends, self.registry, self.config, self.signer);
        if let Some(limits) = self.limits {
            inner.limits = limits;
        }
        inner.webhooks = self.webhooks;
        Ok(Engine {
            inner: Arc::new(inner),
        })
    }
}

/// The engine: a cheap handle (clone it freely) to submit, inspect, cancel and run conversions.
#[derive(Debug, Clone)]
pub struct Engine {
    pub(crate) inner: Arc<Inner>,
}

impl Engine {
    /// A builder.
    pub fn builder() -> EngineBuilder {
        EngineBuilder::default()
    }

    /// An engine on in-memory backends.
    pub fn in_memory(registry: ConverterRegistry, config: EngineConfig) -> Self {
        Self {
            inner: Arc::new(Inner::new(Backends::in_memory(), registry, config, None)),
        }
    }

    /// Its backends.
    pub fn backends(&self) -> &Backends {
        &self.inner.backends
    }

    /// Its converters.
    pub fn registry(&self) -> &ConverterRegistry {
        &self.inner.registry
    }

    /// Its configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// One conversion, with the latest progress from the bus while it runs.
    pub async fn get(&self, id: ConversionId) -> Result<Conversion, EngineError> {
        let mut record = self.inner.backends.store.get(id).await?;
        if record.status == Status::Running
            && let Ok(Some(Event::Progress {
                attempt, progress, ..
            })) = self.inner.backends.bus.latest(id).await
            && attempt == record.attempts
        {
            record.progress = Some(progress);
        }
        Ok(record)
    }

    /// Conversions matching the query, newest first.
    pub async fn list(&self, query: &ListQuery) -> Result<Page, EngineError> {
        let query = query
            .checked()
            .map_err(|e| EngineError::InvalidRequest(e.to_string()))?;
        Ok(self.inner.backends.store.list(&query).await?)
    }

    /// Cancels a queued or running conversion; a running converter is told at once (in this
    /// process directly, in others through the bus). [`EngineError::Conflict`] if it already
    /// finished.
    pub async fn cancel(&self, id: ConversionId) -> Result<Conversion, EngineError> {
        let record = self
            .inner
            .backends
            .store
            .transition(id, &Transition::Cancel)
            .await?;
        self.inner.cancel_local(id);
        // The job goes only once the webhooks are queued: if announcing fails (or the process
        // dies here), a worker reserves the job, finds it cancelled and announces it then.
        if self.inner.announce(&record).await {
            self.inner.backends.queue.remove(id).await?;
        }
        self.inner.publish(Event::status_of(&record)).await;
        let _ = self.inner.backends.bus.forget(id).await;
        Ok(record)
    }

    /// Removes a conversion, its queue entry and its blobs (cancelling it first if needed). An
    /// input it shares with other conversions (one upload converted twice) stays until the last
    /// of them is deleted.
    pub async fn delete(&self, id: ConversionId) -> Result<Conversion, EngineError> {
        let record = self.inner.backends.store.get(id).await?;
        if !record.status.is_terminal() {
            match self.cancel(id).await {
                Ok(_) | Err(EngineError::Conflict(_)) => {}
                Err(e) => return Err(e),
            }
        }
        let record = self.inner.backends.store.delete(id).await?;
        self.inner.backends.queue.remove(id).await?;
        let blobs = &self.inner.backends.blobs;
        let owned = crate::intake::layout::conversion(&record.tenant, id);
        let legacy = crate::intake::layout::legacy_conversion(id);
        for prefix in [&owned, &legacy] {
            for meta in blobs.list(prefix).await? {
                blobs.delete(&meta.key).await?;
            }
        }
        if !record.input_key.starts_with(&owned) && !record.input_key.starts_with(&legacy) {
            // A shared input (an upload): drop this conversion's claim, and the blob with the
            // last claim.
            blobs
                .delete(&crate::intake::layout::claim(&record.input_key, id))
                .await?;
            if blobs
                .list(&crate::intake::layout::claims(&record.input_key))
                .await?
                .is_empty()
            {
                blobs.delete(&record.input_key).await?;
            }
        }
        let _ = self.inner.backends.bus.forget(id).await;
        if let Some(w) = &self.inner.webhooks {
            // Its subscription and attempts; messages already queued are still delivered.
            let _ = w.store().forget_conversion(id).await;
        }
        Ok(record)
    }

    /// A stream of events for one conversion: first its current status (and progress), then
    /// every change, ending after the terminal status.
    pub async fn watch(&self, id: ConversionId) -> Result<EventStream, EngineError> {
        // Unknown and finished conversions are answered from the record alone, without a
        // subscription: a watch that cannot see a change leaves nothing behind on the bus.
        let before = self.get(id).await?;
        if before.status.is_terminal() {
            return Ok(futures::stream::iter([Event::status_of(&before)]).boxed());
        }
        let live = self.inner.backends.bus.subscribe(id).await?;
        let record = self.get(id).await?;
        let mut initial = vec![Event::status_of(&record)];
        if record.status.is_terminal() {
            return Ok(futures::stream::iter(initial).boxed());
        }
        let shown = record
            .progress
            .clone()
            .filter(|_| record.status == Status::Running);
        // Events published between the subscription and the read describe states the record
        // already shows (or older ones): drop them, so watchers never see time go backwards.
        let seen = Seen {
            at: record.updated_at,
            attempt: record.attempts,
            percent: shown.as_ref().map(|p| p.percent),
        };
        if let Some(p) = shown {
            initial.push(Event::Progress {
                id,
                attempt: record.attempts,
                progress: p,
            });
        }
        let live = live.filter(move |ev| futures::future::ready(seen.is_news(ev)));
        let events = futures::stream::iter(initial).chain(live).boxed();
        // Ends right after the terminal status, without waiting for another event.
        let stream = futures::stream::unfold(Some(events), |state| async move {
            let mut events = state?;
            let ev = events.next().await?;
            let next = (!ev.is_terminal()).then_some(events);
            Some((ev, next))
        });
        Ok(stream.boxed())
    }

    /// Opens one artifact for reading (optionally a byte range of it).
    pub async fn open_artifact(
        &self,
        id: ConversionId,
        name: &str,
        range: Option<Range<u64>>,
    ) -> Result<(Artifact, BlobRead), EngineError> {
        let record = self.inner.backends.store.get(id).await?;
        self.open_artifact_of(record, name, range).await
    }

    /// Opens the artifact `name` of a record already read.
    pub(crate) async fn open_artifact_of(
        &self,
        record: Conversion,
        name: &str,
        range: Option<Range<u64>>,
    ) -> Result<(Artifact, BlobRead), EngineError> {
        let artifact = artifact_of(record, name)?;
        let read = self
            .inner
            .backends
            .blobs
            .get(&artifact.blob_key, range)
            .await?;
        Ok((artifact, read))
    }

    /// Where this engine reads per-tenant limits.
    pub fn limits(&self) -> &Arc<dyn crate::tenants::LimitSource> {
        &self.inner.limits
    }

    /// The webhook service, if the engine has one.
    pub fn webhooks(&self) -> Option<&Arc<crate::webhook::Webhooks>> {
        self.inner.webhooks.as_ref()
    }

    /// Conversions running in this process now.
    pub fn running_here(&self) -> usize {
        self.inner.running.lock().len()
    }
}

/// The artifact `name` of a record.
pub(crate) fn artifact_of(record: Conversion, name: &str) -> Result<Artifact, EngineError> {
    let id = record.id;
    record
        .artifacts
        .into_iter()
        .find(|a| a.name == name)
        .ok_or_else(|| EngineError::ArtifactNotFound {
            id,
            name: name.chars().take(200).collect(),
        })
}

impl Inner {
    fn new(
        backends: Backends,
        registry: ConverterRegistry,
        config: EngineConfig,
        signer: Option<crate::intake::UploadSigner>,
    ) -> Self {
        Self {
            signer: match signer {
                Some(s) => tokio::sync::OnceCell::new_with(Some(s)),
                None => tokio::sync::OnceCell::new(),
            },
            verdicts: RetryingStore::new(Arc::clone(&backends.store), RetryPolicy::default()),
            backends,
            registry,
            config,
            running: Mutex::new(Default::default()),
            limits: Arc::new(crate::tenants::StaticLimits::default()),
            admission: admission::Admission::default(),
            scratch: tokio::sync::OnceCell::new(),
            acks: acks::AckBatcher::default(),
            webhooks: None,
        }
    }

    /// Where this engine's jobs make their scratch directories: its own locked directory under
    /// the configured one (claiming it removes what dead processes left there, see
    /// [`scratch`]), or the configured directory itself if that cannot be claimed.
    pub(crate) async fn scratch_dir(&self) -> std::path::PathBuf {
        let root = &self.config.scratch_dir;
        // Claimed once, by the first job; the others read it without waiting (and their
        // futures hold no room for the claim).
        let claimed = match self.scratch.get() {
            Some(claimed) => claimed,
            None => Box::pin(self.claim_scratch()).await,
        };
        claimed
            .as_ref()
            .map_or_else(|| root.clone(), |s| s.dir().to_path_buf())
    }

    /// Claims this engine's scratch directory, or waits for the job claiming it.
    async fn claim_scratch(&self) -> &Option<scratch::ScratchRoot> {
        let root = &self.config.scratch_dir;
        self.scratch
            .get_or_init(|| {
                let root = root.clone();
                async move {
                    let claimed = tokio::task::spawn_blocking(move || {
                        scratch::ScratchRoot::claim(&root)
                    })
                    .await
                    .map_err(std::io::Error::other)
                    .and_then(|r| r);
                    claimed
                        .inspect_err(|e| {
                            tracing::warn!(error = %e, "cannot claim a scratch directory; jobs use the shared one")
                        })
                        .ok()
                }
            })
            .await
    }

    fn cancel_local(&self, id: ConversionId) {
        if let Some(r) = self.running.lock().get(&id) {
            r.cancel.cancel();
        }
    }

    pub(crate) fn register_running(
        &self,
        id: ConversionId,
        attempt: u32,
        cancel: CancellationToken,
    ) {
        self.running.lock().insert(id, Running { attempt, cancel });
    }

    pub(crate) fn unregister_running(&self, id: ConversionId, attempt: u32) {
        let mut running = self.running.lock();
        if running.get(&id).is_some_and(|r| r.attempt == attempt) {
            running.remove(&id);
        }
    }

    /// Announces the record's status to its webhooks, if the engine has any; true when done
    /// (or nothing to do), so the caller may let go of the conversion's job. A failure is
    /// logged: the caller keeps the job, whose next delivery announces again.
    pub(crate) async fn announce(&self, record: &Conversion) -> bool {
        let Some(webhooks) = &self.webhooks else {
            return true;
        };
        // Boxed: the webhook path's state stays out of every job's future.
        match Box::pin(webhooks.announce(record)).await {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(id = %record.id, error = %e, "webhooks not queued; the job stays until they are");
                false
            }
        }
    }

    /// [`Inner::announce`] of the stored record (for a job whose conversion ended earlier).
    pub(crate) async fn announce_stored(&self, id: ConversionId) -> bool {
        if self.webhooks.is_none() {
            return true;
        }
        match self.backends.store.get(id).await {
            Ok(record) => self.announce(&record).await,
            Err(StoreError::NotFound { .. }) => true,
            Err(e) => {
                tracing::warn!(%id, error = %e, "webhooks not queued; the job stays until they are");
                false
            }
        }
    }

    /// Publishes an event; a bus failure is logged, never fatal (the store is the truth).
    pub(crate) async fn publish(&self, event: Event) {
        if let Err(e) = self.backends.bus.publish(event).await {
            tracing::warn!(error = %e, "publishing an event failed");
        }
    }
}

/// What a watch read from the record when it subscribed: a live event describing an earlier
/// state than this (published before the read, delivered after it) is dropped.
#[derive(Debug, Clone, Copy)]
struct Seen {
    /// The record's last change.
    at: chrono::DateTime<chrono::Utc>,
    /// Its attempt.
    attempt: u32,
    /// The progress it showed, if running with some.
    percent: Option<u8>,
}

impl Seen {
    /// Whether `ev` is news to a watcher that saw the record: a status after its last change,
    /// or progress of a later attempt, or of this attempt at no lower percent (an attempt's
    /// progress never goes down, so a lower percent was published before the record's).
    fn is_news(self, ev: &Event) -> bool {
        match ev {
            Event::Status { at, .. } => *at > self.at,
            Event::Progress {
                attempt, progress, ..
            } => {
                *attempt > self.attempt
                    || (*attempt == self.attempt
                        && self.percent.is_none_or(|p| progress.percent >= p))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conversion::Progress;

    #[test]
    fn a_watch_drops_live_events_older_than_the_record_it_read() {
        let at = chrono::Utc::now();
        let id = ConversionId::new();
        let seen = Seen {
            at,
            attempt: 2,
            percent: Some(40),
        };
        let progress = |attempt, percent| Event::Progress {
            id,
            attempt,
            progress: Progress::new(percent, None),
        };
        // Published before the record showed 40%, delivered after the watch read it.
        assert!(!seen.is_news(&progress(2, 35)));
        assert!(seen.is_news(&progress(2, 40)));
        assert!(seen.is_news(&progress(2, 41)));
        // An earlier attempt's progress is old; a later attempt's starts again from zero.
        assert!(!seen.is_news(&progress(1, 90)));
        assert!(seen.is_news(&progress(3, 5)));
        let status = |at| Event::Status {
            id,
            status: Status::Running,
            attempt: 2,
            error: None,
            at,
        };
        assert!(!seen.is_news(&status(at)));
        assert!(seen.is_news(&status(at + chrono::Duration::milliseconds(1))));
        // A record without progress yet takes any progress of its attempt.
        let fresh = Seen {
            percent: None,
            ..seen
        };
        assert!(fresh.is_news(&progress(2, 0)));
    }
}

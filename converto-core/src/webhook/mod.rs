//! Signed webhooks: converto POSTs a conversion's record to its subscribers when the conversion
//! ends (succeeded, failed, cancelled) and, for those who opt in, when an attempt starts.
//!
//! # Who is called
//!
//! - A **per-conversion URL** named at submit ([`crate::Submission::webhook`]), signed with the
//!   tenant's own signing secret ([`Webhooks::tenant_secret`]), created on first use and rotated
//!   like an endpoint's.
//! - Every **endpoint** the tenant registered ([`Webhooks::create_endpoint`]), each with its own
//!   secret, returned once at creation and again only by a rotation.
//!
//! # The message
//!
//! The body is the record as `GET /v1/conversions/{id}` shows it, captured when the event
//! happens (the HTTP service installs its view with [`Webhooks::with_renderer`]; the default is
//! the [`Conversion`] serialised). Headers follow the Standard Webhooks specification:
//! `webhook-id` (one id per message and target, the same on every retry), `webhook-timestamp`
//! (unix seconds of this attempt) and `webhook-signature` (`v1,<base64 HMAC-SHA256 of
//! "{id}.{timestamp}.{body}">`, keyed with the base64-decoded part of the `whsec_` secret).
//! After a rotation the previous secret keeps signing for [`WebhookConfig::rotation_overlap`]:
//! both signatures are sent, space-separated, so a receiver can switch at its own pace.
//!
//! # Durability
//!
//! Deliveries are jobs of a **second [`JobQueue`] instance** (its own table, file, schema or key
//! prefix, never the conversions' queue), so they survive restarts and never delay or confuse
//! the conversion workers. The job id is the message id, derived from (conversion, event,
//! attempt for `started`, target), so announcing twice is harmless: the message row is written
//! once (`put_message` keeps the first) and a message already delivered or given up is not
//! enqueued again.
//!
//! The engine announces a terminal status **before** it acknowledges the conversion's job (and
//! `cancel` before it removes the job). If the process dies:
//! - before the status is recorded: the job is delivered again and runs again;
//! - after the status is recorded, before the announcement: the conversion job's lease expires,
//!   the job is delivered again, the worker finds the record already terminal, announces it and
//!   only then acknowledges (for `cancel`, the job is still queued and the same happens);
//! - after the announcement, before the ack: the same path announces again, a no-op;
//! - during a delivery: the delivery job's lease expires and it is delivered again, with the
//!   same `webhook-id` (receivers deduplicate by it: delivery is at least once);
//! - after a delivery, before its ack: the message is already marked delivered, so the
//!   redelivered job is acknowledged without a second POST (unless the mark itself was lost).
//!
//! # Retries
//!
//! Network errors, timeouts, 429 and 5xx are retried with exponential backoff (from
//! [`WebhookConfig::backoff_base`], doubling, capped at [`WebhookConfig::backoff_cap`], with
//! jitter: each delay is drawn between half and all of its step) for
//! [`WebhookConfig::retry_for`] (25 h by default) after the event; a `Retry-After` answer
//! (seconds or an HTTP date) lengthens the wait, capped at [`WebhookConfig::retry_after_cap`].
//! Other answers end the message: 2xx delivered, 410 Gone also disables the endpoint, any
//! other status fails it. Every attempt is kept ([`Webhooks::deliveries`], the last
//! [`WebhookConfig::keep_attempts`] per conversion).

mod memory;
mod sign;

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::ConversionId;
use crate::conversion::{Conversion, Status};
use crate::error::BackendError;
use crate::queue::{JobQueue, JobSpec, Lease, QueueError};

pub use memory::MemoryWebhookStore;
pub use sign::{SecretError, generate_secret, parse_retry_after, sign, signature_header};

/// A `dyn WebhookStore`.
pub type DynWebhookStore = dyn WebhookStore;

/// What happened to a conversion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum WebhookEvent {
    /// An attempt started (sent only to subscribers that opted in).
    #[serde(rename = "conversion.started")]
    Started,
    /// It succeeded.
    #[serde(rename = "conversion.succeeded")]
    Succeeded,
    /// It failed.
    #[serde(rename = "conversion.failed")]
    Failed,
    /// It was cancelled.
    #[serde(rename = "conversion.cancelled")]
    Cancelled,
}

impl WebhookEvent {
    /// The event of a record's status, if its status is one webhooks announce.
    pub fn of(status: Status) -> Option<Self> {
        match status {
            Status::Running => Some(Self::Started),
            Status::Succeeded => Some(Self::Succeeded),
            Status::Failed => Some(Self::Failed),
            Status::Cancelled => Some(Self::Cancelled),
            Status::Queued => None,
        }
    }

    /// `conversion.succeeded` and so on.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Started => "conversion.started",
            Self::Succeeded => "conversion.succeeded",
            Self::Failed => "conversion.failed",
            Self::Cancelled => "conversion.cancelled",
        }
    }

    /// Parses [`WebhookEvent::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Started,
            Self::Succeeded,
            Self::Failed,
            Self::Cancelled,
        ]
        .into_iter()
        .find(|e| e.as_str() == s)
    }
}

/// A signing secret and, after a rotation, the one before it while the overlap lasts.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Secrets {
    /// `whsec_<base64>`.
    pub current: String,
    /// The secret before the last rotation.
    pub previous: Option<String>,
    /// Until when `previous` still signs.
    pub previous_until: Option<DateTime<Utc>>,
}

impl Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets")
            .field("current", &"<redacted>")
            .field("previous", &self.previous.as_ref().map(|_| "<redacted>"))
            .field("previous_until", &self.previous_until)
            .finish()
    }
}

impl Secrets {
    /// A fresh secret with no previous one.
    pub fn generate() -> Result<Self, SecretError> {
        Ok(Self {
            current: generate_secret()?,
            previous: None,
            previous_until: None,
        })
    }

    /// The secrets that sign at `now`: the current one, then the previous one during the
    /// overlap.
    pub fn signing(&self, now: DateTime<Utc>) -> Vec<&str> {
        let mut out = vec![self.current.as_str()];
        if let (Some(p), Some(until)) = (&self.previous, self.previous_until)
            && now < until
        {
            out.push(p.as_str());
        }
        out
    }

    /// These secrets after a rotation to `next` at `now`.
    pub fn rotated(&self, next: String, now: DateTime<Utc>, overlap: Duration) -> Self {
        Self {
            previous: Some(self.current.clone()),
            previous_until: Some(crate::queue::after(now, overlap)),
            current: next,
        }
    }
}

/// An endpoint a tenant registered for all its conversions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// `ep_` and 32 hex digits.
    pub id: String,
    /// Whose it is.
    pub tenant: String,
    /// Where to POST.
    pub url: String,
    /// Whether attempt starts are sent too (terminal statuses always are).
    pub on_start: bool,
    /// Disabled endpoints receive nothing (an endpoint answering 410 Gone is disabled).
    pub enabled: bool,
    /// Why it was disabled.
    pub disabled_reason: Option<String>,
    /// When it was registered.
    pub created_at: DateTime<Utc>,
    /// Its signing secrets.
    pub secrets: Secrets,
}

/// A per-conversion webhook, named at submit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscription {
    /// The conversion.
    pub conversion: ConversionId,
    /// Its tenant.
    pub tenant: String,
    /// Where to POST.
    pub url: String,
    /// Whether attempt starts are sent too.
    pub on_start: bool,
}

/// Where a message goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Target {
    /// A registered endpoint (its URL and secrets are read at each attempt).
    Endpoint(String),
    /// A per-conversion URL, signed with the tenant's signing secret.
    Url(String),
}

/// Where a message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageState {
    /// Waiting for (another) attempt.
    Pending,
    /// A 2xx answer came.
    Delivered,
    /// Given up: a final answer, a refused address, or the retry window ran out.
    Failed,
}

impl MessageState {
    /// `pending`, `delivered`, `failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
        }
    }

    /// Parses [`MessageState::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Pending, Self::Delivered, Self::Failed]
            .into_iter()
            .find(|e| e.as_str() == s)
    }
}

/// One message to one target: what a delivery job carries (the job's id is `id`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// The message id (also the delivery job's id); `webhook-id` is `msg_` and its hex.
    pub id: ConversionId,
    /// The conversion's tenant.
    pub tenant: String,
    /// The conversion.
    pub conversion: ConversionId,
    /// What happened.
    pub event: WebhookEvent,
    /// Where it goes.
    pub target: Target,
    /// The JSON body, captured when the event happened.
    pub payload: String,
    /// When the event happened: retries stop [`WebhookConfig::retry_for`] after it.
    pub created_at: DateTime<Utc>,
    /// Where it is.
    pub state: MessageState,
}

impl Message {
    /// The `webhook-id` header.
    pub fn webhook_id(&self) -> String {
        format!("msg_{}", self.id.as_uuid().simple())
    }
}

/// The message id of `event` of `record` for `target`: the same on every announcement, so a
/// repeated announcement finds the message it wrote before.
pub fn message_id(record: &Conversion, event: WebhookEvent, target: &Target) -> ConversionId {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(record.id.as_uuid().as_bytes());
    h.update(event.as_str().as_bytes());
    if event == WebhookEvent::Started {
        h.update(record.attempts.to_be_bytes());
    }
    match target {
        Target::Endpoint(e) => h.update(format!("\0endpoint\0{e}")),
        Target::Url(u) => h.update(format!("\0url\0{u}")),
    }
    let digest = h.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    ConversionId::from_uuid(uuid::Builder::from_custom_bytes(bytes).into_uuid())
}

/// How one attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    /// 2xx.
    Delivered,
    /// Retried at `next_retry_at`.
    Retrying,
    /// Not retried.
    Failed,
    /// 410 Gone: the endpoint is disabled.
    Disabled,
}

impl AttemptOutcome {
    /// `delivered`, `retrying`, `failed`, `disabled`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Retrying => "retrying",
            Self::Failed => "failed",
            Self::Disabled => "disabled",
        }
    }

    /// Parses [`AttemptOutcome::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Delivered,
            Self::Retrying,
            Self::Failed,
            Self::Disabled,
        ]
        .into_iter()
        .find(|e| e.as_str() == s)
    }
}

/// One attempt to deliver a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// The message's `webhook-id`.
    pub webhook_id: String,
    /// The conversion.
    pub conversion: ConversionId,
    /// Its tenant.
    pub tenant: String,
    /// The event.
    pub event: WebhookEvent,
    /// The endpoint, if the target was one.
    pub endpoint_id: Option<String>,
    /// The URL posted to.
    pub url: String,
    /// 1 for the first attempt of the message.
    pub attempt: u32,
    /// When it started.
    pub at: DateTime<Utc>,
    /// The answer's status, if one came.
    pub status_code: Option<u16>,
    /// What went wrong without an answer (network, timeout, refused address).
    pub error: Option<String>,
    /// How long it took, in milliseconds.
    pub duration_ms: u64,
    /// How it ended.
    pub outcome: AttemptOutcome,
    /// When the next attempt is due, when retrying.
    pub next_retry_at: Option<DateTime<Utc>>,
}

/// The errors of a [`WebhookStore`] and of [`Webhooks`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WebhookError {
    /// The URL is not one converto will call.
    #[error("invalid webhook URL: {0}")]
    InvalidUrl(String),
    /// No such endpoint for the tenant.
    #[error("webhook endpoint not found")]
    NotFound,
    /// Webhooks are not configured on this engine.
    #[error("webhooks are not enabled")]
    NotEnabled,
    /// A secret could not be made.
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// The delivery queue failed.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// The backend failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

impl WebhookError {
    /// Whether trying again may succeed.
    pub fn is_temporary(&self) -> bool {
        match self {
            Self::Queue(e) => e.is_temporary(),
            Self::Backend(e) => e.is_temporary(),
            _ => false,
        }
    }

    /// A backend error from any cause.
    pub fn backend(
        backend: &'static str,
        temporary: bool,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self::Backend(BackendError::new(backend, temporary, source))
    }
}

/// Endpoints, secrets, subscriptions, messages and attempts. Every read that answers a tenant's
/// request takes the tenant, so another tenant's ids are simply not found.
#[async_trait]
pub trait WebhookStore: Send + Sync + Debug + 'static {
    /// Stores a new endpoint.
    async fn create_endpoint(&self, endpoint: &Endpoint) -> Result<(), WebhookError>;
    /// The tenant's endpoints, oldest first.
    async fn endpoints(&self, tenant: &str) -> Result<Vec<Endpoint>, WebhookError>;
    /// One of the tenant's endpoints.
    async fn endpoint(&self, tenant: &str, id: &str) -> Result<Option<Endpoint>, WebhookError>;
    /// Removes one of the tenant's endpoints; true if it existed.
    async fn delete_endpoint(&self, tenant: &str, id: &str) -> Result<bool, WebhookError>;
    /// Replaces an endpoint's secrets; false if there is no such endpoint.
    async fn set_endpoint_secrets(
        &self,
        tenant: &str,
        id: &str,
        secrets: &Secrets,
    ) -> Result<bool, WebhookError>;
    /// Disables an endpoint.
    async fn disable_endpoint(
        &self,
        tenant: &str,
        id: &str,
        reason: &str,
    ) -> Result<(), WebhookError>;
    /// The tenant's signing secrets, if it has any.
    async fn tenant_secrets(&self, tenant: &str) -> Result<Option<Secrets>, WebhookError>;
    /// Stores `secrets` for the tenant unless it has some; returns what is stored.
    async fn init_tenant_secrets(
        &self,
        tenant: &str,
        secrets: &Secrets,
    ) -> Result<Secrets, WebhookError>;
    /// Replaces the tenant's signing secrets.
    async fn set_tenant_secrets(&self, tenant: &str, secrets: &Secrets)
    -> Result<(), WebhookError>;
    /// Stores a per-conversion webhook (replacing one for the same conversion).
    async fn subscribe(&self, sub: &Subscription) -> Result<(), WebhookError>;
    /// The conversion's per-conversion webhook.
    async fn subscription(&self, id: ConversionId) -> Result<Option<Subscription>, WebhookError>;
    /// Stores a message unless one with its id exists; returns the stored message's state.
    async fn put_message(&self, message: &Message) -> Result<MessageState, WebhookError>;
    /// A message by id.
    async fn message(&self, id: ConversionId) -> Result<Option<Message>, WebhookError>;
    /// Sets a message's state.
    async fn set_message_state(
        &self,
        id: ConversionId,
        state: MessageState,
    ) -> Result<(), WebhookError>;
    /// Records an attempt, keeping the newest `keep` attempts of its conversion.
    async fn record_attempt(&self, attempt: &Attempt, keep: usize) -> Result<(), WebhookError>;
    /// The tenant's conversion's attempts, oldest first.
    async fn attempts(
        &self,
        tenant: &str,
        conversion: ConversionId,
    ) -> Result<Vec<Attempt>, WebhookError>;
    /// Removes what belongs to a deleted conversion (its subscription and attempts; messages
    /// still pending are delivered).
    async fn forget_conversion(&self, id: ConversionId) -> Result<(), WebhookError>;
}

/// One POST, signed and ready.
#[derive(Debug, Clone)]
pub struct WebhookRequest {
    /// Where.
    pub url: String,
    /// The headers (name, value).
    pub headers: Vec<(&'static str, String)>,
    /// The body (JSON).
    pub body: Bytes,
}

/// The answer to a POST.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookResponse {
    /// Its status code.
    pub status: u16,
    /// Its `Retry-After`, parsed (seconds or an HTTP date), uncapped.
    pub retry_after: Option<Duration>,
}

/// Why a POST got no answer.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The URL or the address it resolves to is not allowed: not retried.
    #[error("refused: {0}")]
    Refused(String),
    /// No answer within the timeout: retried.
    #[error("timed out")]
    Timeout,
    /// Connection or DNS trouble: retried.
    #[error("network error: {0}")]
    Network(String),
}

/// Sends webhook requests: the HTTP client (converto-adapters' `webhooks` feature has one that
/// refuses private addresses after DNS resolution).
#[async_trait]
pub trait WebhookTransport: Send + Sync + Debug + 'static {
    /// Whether `url` may be called at all (scheme, syntax, IP literals): checked at submit and
    /// registration so a bad URL is refused up front.
    fn check_url(&self, url: &str) -> Result<(), String>;
    /// POSTs the request; follows no redirect.
    async fn post(&self, request: WebhookRequest) -> Result<WebhookResponse, TransportError>;
}

/// Renders a record as the webhook body.
pub type Renderer = Arc<dyn Fn(&Conversion) -> serde_json::Value + Send + Sync>;

/// Delivery settings.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// The first retry's delay (doubled for each further one).
    pub backoff_base: Duration,
    /// The longest delay between two attempts.
    pub backoff_cap: Duration,
    /// How long after the event attempts go on.
    pub retry_for: Duration,
    /// The longest `Retry-After` honoured.
    pub retry_after_cap: Duration,
    /// How long a rotated secret keeps signing.
    pub rotation_overlap: Duration,
    /// Attempts kept per conversion.
    pub keep_attempts: usize,
    /// Deliveries in flight at once.
    pub concurrency: usize,
    /// The delivery job's lease (longer than the transport's timeout).
    pub lease: Duration,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            backoff_base: Duration::from_secs(5),
            backoff_cap: Duration::from_secs(3600),
            retry_for: Duration::from_secs(25 * 3600),
            retry_after_cap: Duration::from_secs(3600),
            rotation_overlap: Duration::from_secs(24 * 3600),
            keep_attempts: 50,
            concurrency: 8,
            lease: Duration::from_secs(60),
        }
    }
}

impl WebhookConfig {
    /// The delay after attempt `attempt` (from 1) failed temporarily, before `Retry-After`.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let step = self
            .backoff_base
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(30))
            .min(self.backoff_cap);
        // Equal jitter: half the step, plus up to the other half at random.
        let half = step / 2;
        half + half.mul_f64(fastrand::f64())
    }
}

/// The webhook service: announces events (called by the engine), manages endpoints and
/// secrets, and runs the delivery workers ([`Webhooks::run`]).
pub struct Webhooks {
    store: Arc<dyn WebhookStore>,
    queue: Arc<dyn JobQueue>,
    transport: Arc<dyn WebhookTransport>,
    config: WebhookConfig,
    render: Renderer,
}

impl Debug for Webhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhooks")
            .field("store", &self.store)
            .field("queue", &self.queue)
            .field("transport", &self.transport)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Webhooks {
    /// The service over a store, its own delivery queue (not the conversions' queue) and a
    /// transport.
    pub fn new(
        store: Arc<dyn WebhookStore>,
        queue: Arc<dyn JobQueue>,
        transport: Arc<dyn WebhookTransport>,
        config: WebhookConfig,
    ) -> Self {
        Self {
            store,
            queue,
            transport,
            config,
            render: Arc::new(|c| serde_json::to_value(c).unwrap_or(serde_json::Value::Null)),
        }
    }

    /// Renders message bodies with `render` (the HTTP service's record view).
    pub fn with_renderer(mut self, render: Renderer) -> Self {
        self.render = render;
        self
    }

    /// The settings.
    pub fn config(&self) -> &WebhookConfig {
        &self.config
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn WebhookStore> {
        &self.store
    }

    /// Checks a URL as submit and registration do.
    pub fn check_url(&self, url: &str) -> Result<(), WebhookError> {
        if url.len() > 2048 {
            return Err(WebhookError::InvalidUrl("longer than 2048 bytes".into()));
        }
        self.transport
            .check_url(url)
            .map_err(WebhookError::InvalidUrl)
    }

    /// Registers an endpoint; the answer holds its secret (shown this once).
    pub async fn create_endpoint(
        &self,
        tenant: &str,
        url: &str,
        on_start: bool,
    ) -> Result<Endpoint, WebhookError> {
        self.check_url(url)?;
        let endpoint = Endpoint {
            id: format!("ep_{}", uuid::Uuid::now_v7().simple()),
            tenant: tenant.to_owned(),
            url: url.to_owned(),
            on_start,
            enabled: true,
            disabled_reason: None,
            created_at: Utc::now(),
            secrets: Secrets::generate()?,
        };
        self.store.create_endpoint(&endpoint).await?;
        Ok(endpoint)
    }

    /// The tenant's endpoints.
    pub async fn endpoints(&self, tenant: &str) -> Result<Vec<Endpoint>, WebhookError> {
        self.store.endpoints(tenant).await
    }

    /// One of the tenant's endpoints.
    pub async fn endpoint(&self, tenant: &str, id: &str) -> Result<Endpoint, WebhookError> {
        self.store
            .endpoint(tenant, id)
            .await?
            .ok_or(WebhookError::NotFound)
    }

    /// Removes one of the tenant's endpoints (its pending messages fail at their next attempt).
    pub async fn delete_endpoint(&self, tenant: &str, id: &str) -> Result<(), WebhookError> {
        if self.store.delete_endpoint(tenant, id).await? {
            Ok(())
        } else {
            Err(WebhookError::NotFound)
        }
    }

    /// Gives an endpoint a new secret (returned); the old one keeps signing for the overlap.
    pub async fn rotate_endpoint(&self, tenant: &str, id: &str) -> Result<Endpoint, WebhookError> {
        let endpoint = self.endpoint(tenant, id).await?;
        let secrets =
            endpoint
                .secrets
                .rotated(generate_secret()?, Utc::now(), self.config.rotation_overlap);
        if !self
            .store
            .set_endpoint_secrets(tenant, id, &secrets)
            .await?
        {
            return Err(WebhookError::NotFound);
        }
        Ok(Endpoint {
            secrets,
            ..endpoint
        })
    }

    /// The tenant's signing secrets for per-conversion URLs, created on first use; the bool
    /// says whether they were created by this call.
    pub async fn tenant_secret(&self, tenant: &str) -> Result<(Secrets, bool), WebhookError> {
        if let Some(s) = self.store.tenant_secrets(tenant).await? {
            return Ok((s, false));
        }
        let fresh = Secrets::generate()?;
        let stored = self.store.init_tenant_secrets(tenant, &fresh).await?;
        let created = stored.current == fresh.current;
        Ok((stored, created))
    }

    /// Rotates the tenant's signing secret (creating one if it has none); returns the new set.
    pub async fn rotate_tenant_secret(&self, tenant: &str) -> Result<Secrets, WebhookError> {
        let (current, created) = self.tenant_secret(tenant).await?;
        if created {
            return Ok(current);
        }
        let next = current.rotated(generate_secret()?, Utc::now(), self.config.rotation_overlap);
        self.store.set_tenant_secrets(tenant, &next).await?;
        Ok(next)
    }

    /// Records a per-conversion webhook (called by submit before the record is created, so a
    /// record never exists without its subscription). Makes sure the tenant has a signing secret.
    pub async fn subscribe(&self, sub: &Subscription) -> Result<(), WebhookError> {
        self.check_url(&sub.url)?;
        self.tenant_secret(&sub.tenant).await?;
        self.store.subscribe(sub).await
    }

    /// The tenant's conversion's delivery attempts, oldest first.
    pub async fn deliveries(
        &self,
        tenant: &str,
        conversion: ConversionId,
    ) -> Result<Vec<Attempt>, WebhookError> {
        self.store.attempts(tenant, conversion).await
    }

    /// Announces the record's current status to its subscribers: one message per target,
    /// written and enqueued idempotently. Returns how many messages were (or already were)
    /// queued.
    pub async fn announce(&self, record: &Conversion) -> Result<usize, WebhookError> {
        let Some(event) = WebhookEvent::of(record.status) else {
            return Ok(0);
        };
        let wants = |on_start: bool| event != WebhookEvent::Started || on_start;
        let mut targets = Vec::new();
        if let Some(sub) = self.store.subscription(record.id).await?
            && wants(sub.on_start)
        {
            targets.push(Target::Url(sub.url));
        }
        for ep in self.store.endpoints(&record.tenant).await? {
            if ep.enabled && wants(ep.on_start) {
                targets.push(Target::Endpoint(ep.id));
            }
        }
        if targets.is_empty() {
            return Ok(0);
        }
        let payload = (self.render)(record).to_string();
        let now = Utc::now();
        let mut queued = 0;
        for target in targets {
            let message = Message {
                id: message_id(record, event, &target),
                tenant: record.tenant.clone(),
                conversion: record.id,
                event,
                target,
                payload: payload.clone(),
                created_at: now,
                state: MessageState::Pending,
            };
            if self.store.put_message(&message).await? == MessageState::Pending {
                self.queue
                    .enqueue(JobSpec {
                        id: message.id,
                        tenant: message.tenant.clone(),
                        priority: 0,
                        not_before: now,
                        attempts: 0,
                    })
                    .await?;
                queued += 1;
            }
        }
        Ok(queued)
    }

    /// Delivers messages until `shutdown`, at most [`WebhookConfig::concurrency`] at once;
    /// on shutdown waits for the deliveries in flight (each bounded by the transport's timeout).
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let permits = Arc::new(tokio::sync::Semaphore::new(self.config.concurrency.max(1)));
        let mut jobs = tokio::task::JoinSet::new();
        let mut failures = 0u32;
        loop {
            while jobs.try_join_next().is_some() {}
            let first = tokio::select! {
                _ = shutdown.cancelled() => break,
                p = Arc::clone(&permits).acquire_owned() => p,
            };
            let Ok(first) = first else { break };
            let mut held = vec![first];
            while let Ok(p) = Arc::clone(&permits).try_acquire_owned() {
                held.push(p);
            }
            let reserved = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = self.queue.reserve(held.len(), self.config.lease, Duration::from_secs(5)) => r,
            };
            let leases = match reserved {
                Ok(l) => {
                    failures = 0;
                    l
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    let delay = Duration::from_millis(100 * 2u64.pow(failures.min(7)));
                    tracing::warn!(error = %e, ?delay, "reserving webhook deliveries failed");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                    continue;
                }
            };
            for lease in leases {
                let Some(permit) = held.pop() else { break };
                let this = Arc::clone(&self);
                jobs.spawn(async move {
                    this.deliver(&lease).await;
                    drop(permit);
                });
            }
        }
        while jobs.join_next().await.is_some() {}
    }

    /// One attempt at the message behind `lease`.
    async fn deliver(&self, lease: &Lease) {
        if let Err(e) = self.try_deliver(lease).await {
            // The lease expires and the attempt is made again.
            tracing::warn!(id = %lease.id, error = %e, "webhook delivery not recorded; it will be retried");
        }
    }

    async fn try_deliver(&self, lease: &Lease) -> Result<(), WebhookError> {
        let Some(message) = self.store.message(lease.id).await? else {
            ignore_lost(self.queue.ack(lease).await)?;
            return Ok(());
        };
        if message.state != MessageState::Pending {
            ignore_lost(self.queue.ack(lease).await)?;
            return Ok(());
        }
        let now = Utc::now();
        let (url, secrets, endpoint_id) = match &message.target {
            Target::Endpoint(id) => match self.store.endpoint(&message.tenant, id).await? {
                Some(ep) if ep.enabled => (ep.url, ep.secrets, Some(ep.id)),
                _ => {
                    // Removed or disabled since: nothing to send to.
                    self.store
                        .set_message_state(message.id, MessageState::Failed)
                        .await?;
                    ignore_lost(self.queue.ack(lease).await)?;
                    return Ok(());
                }
            },
            Target::Url(url) => (
                url.clone(),
                self.tenant_secret(&message.tenant).await?.0,
                None,
            ),
        };
        let webhook_id = message.webhook_id();
        let timestamp = now.timestamp();
        let body = Bytes::from(message.payload.clone());
        let signature = signature_header(&secrets.signing(now), &webhook_id, timestamp, &body)?;
        let request = WebhookRequest {
            url: url.clone(),
            headers: vec![
                ("content-type", "application/json".to_owned()),
                (
                    "user-agent",
                    concat!("converto/", env!("CARGO_PKG_VERSION")).to_owned(),
                ),
                ("webhook-id", webhook_id.clone()),
                ("webhook-timestamp", timestamp.to_string()),
                ("webhook-signature", signature),
            ],
            body,
        };
        let started = std::time::Instant::now();
        let answer = self.transport.post(request).await;
        let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);

        let (status_code, error, retry_after) = match &answer {
            Ok(r) => (Some(r.status), None, r.retry_after),
            Err(e) => (None, Some(e.to_string()), None),
        };
        let retryable = match &answer {
            Ok(r) => r.status == 429 || (500..600).contains(&r.status),
            Err(TransportError::Refused(_)) => false,
            Err(_) => true,
        };
        let mut next_retry_at = None;
        let outcome = match &answer {
            Ok(r) if (200..300).contains(&r.status) => AttemptOutcome::Delivered,
            Ok(r) if r.status == 410 => AttemptOutcome::Disabled,
            _ if retryable => {
                let mut delay = self.config.backoff(lease.attempt);
                if let Some(ra) = retry_after {
                    delay = delay.max(ra.min(self.config.retry_after_cap));
                }
                let at = crate::queue::after(Utc::now(), delay);
                let deadline = crate::queue::after(message.created_at, self.config.retry_for);
                if at <= deadline {
                    next_retry_at = Some(at);
                    AttemptOutcome::Retrying
                } else {
                    AttemptOutcome::Failed
                }
            }
            _ => AttemptOutcome::Failed,
        };
        let attempt = Attempt {
            webhook_id,
            conversion: message.conversion,
            tenant: message.tenant.clone(),
            event: message.event,
            endpoint_id: endpoint_id.clone(),
            url,
            attempt: lease.attempt,
            at: now,
            status_code,
            error,
            duration_ms,
            outcome,
            next_retry_at,
        };
        self.store
            .record_attempt(&attempt, self.config.keep_attempts)
            .await?;
        metrics::counter!("converto_webhook_attempts_total", "outcome" => outcome.as_str())
            .increment(1);
        match outcome {
            AttemptOutcome::Retrying => {
                if let Some(at) = next_retry_at {
                    ignore_lost(self.queue.retry(lease, at).await)?;
                }
            }
            AttemptOutcome::Delivered => {
                self.store
                    .set_message_state(message.id, MessageState::Delivered)
                    .await?;
                ignore_lost(self.queue.ack(lease).await)?;
            }
            AttemptOutcome::Disabled | AttemptOutcome::Failed => {
                if outcome == AttemptOutcome::Disabled
                    && let Some(id) = &endpoint_id
                {
                    self.store
                        .disable_endpoint(&message.tenant, id, "the endpoint answered 410 Gone")
                        .await?;
                }
                self.store
                    .set_message_state(message.id, MessageState::Failed)
                    .await?;
                ignore_lost(self.queue.ack(lease).await)?;
            }
        }
        Ok(())
    }
}

/// A lost lease means another delivery owns the job now: not an error for this one.
fn ignore_lost(r: Result<(), QueueError>) -> Result<(), QueueError> {
    match r {
        Err(QueueError::LeaseLost { .. }) => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests;

//! The RabbitMQ `JobQueue`: the broker keeps every job as a persistent message, each process
//! holds the ones it was sent unacknowledged and orders them in memory (see the
//! [module docs](super)).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use converto_core::ConversionId;
use converto_core::conversion::ErrorInfo;
use converto_core::memory::MemoryJobQueue;
use converto_core::queue::{JobQueue, JobSpec, Lease, QueueError, QueueStats, ReserveOptions};
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Acker, BasicProperties, Channel, Connection, ConnectionProperties, Consumer};
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::{RabbitConfig, RabbitError};

/// The broker orders `P.jobs` by priority `0..=MAX_PRIORITY` (converto's priorities, clamped).
const MAX_PRIORITY: u8 = 10;
/// How long a removed id's late messages are dropped.
const TOMBSTONE_TTL: Duration = Duration::from_secs(3600);
/// Reconnect backoff bounds.
const RECONNECT_MIN: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(5);
/// After (re)connecting, how long reserves wait at most for the backlog the broker reported
/// (it may go to other consumers).
const CATCH_UP: Duration = Duration::from_secs(2);
/// After a reconnect, how long a job this process knew may take to come back before it is
/// taken for another process's (its lease, if any, is then lost).
const GHOST_GRACE: Duration = Duration::from_secs(10);
/// How often the supervisor checks the connection besides listening for its errors.
const LIVENESS_TICK: Duration = Duration::from_secs(1);

/// A job as the broker keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct JobMessage {
    id: ConversionId,
    tenant: String,
    priority: i32,
    not_before: DateTime<Utc>,
    /// Deliveries made before this message was published.
    attempts: u32,
}

impl From<&JobSpec> for JobMessage {
    fn from(j: &JobSpec) -> Self {
        Self {
            id: j.id,
            tenant: j.tenant.clone(),
            priority: j.priority,
            not_before: j.not_before,
            attempts: j.attempts,
        }
    }
}

/// A broadcast on `P.control`.
#[derive(Debug, Serialize, Deserialize)]
struct ControlMessage {
    remove: ConversionId,
}

#[derive(Debug)]
struct Names {
    jobs: String,
    dead: String,
    control: String,
}

/// A job this process holds: its message and, while connected, the delivery to acknowledge.
#[derive(Debug)]
struct Held {
    /// `None` after the connection dropped, until the broker sends the message again.
    acker: Option<Acker>,
    message: JobMessage,
}

#[derive(Debug, Default)]
struct Index {
    held: HashMap<ConversionId, Held>,
    dead: HashSet<ConversionId>,
    tombstones: HashMap<ConversionId, Instant>,
    tombstone_order: VecDeque<(Instant, ConversionId)>,
    /// Enqueues of this process waiting for their message to arrive: told whether it was added.
    waiters: HashMap<ConversionId, VecDeque<oneshot::Sender<bool>>>,
}

impl Index {
    fn tombstone(&mut self, id: ConversionId) {
        let now = Instant::now();
        self.tombstones.insert(id, now);
        self.tombstone_order.push_back((now, id));
    }

    fn is_tombstoned(&mut self, id: ConversionId) -> bool {
        let now = Instant::now();
        while let Some(&(at, old)) = self.tombstone_order.front() {
            if now.duration_since(at) < TOMBSTONE_TTL {
                break;
            }
            self.tombstone_order.pop_front();
            if self.tombstones.get(&old) == Some(&at) {
                self.tombstones.remove(&old);
            }
        }
        self.tombstones.contains_key(&id)
    }

    fn enqueue_pending(&mut self, id: ConversionId) -> bool {
        match self.waiters.get_mut(&id) {
            Some(w) => {
                w.retain(|tx| !tx.is_closed());
                if w.is_empty() {
                    self.waiters.remove(&id);
                    false
                } else {
                    true
                }
            }
            None => false,
        }
    }

    fn answer_waiter(&mut self, id: ConversionId, added: bool) {
        if let Some(w) = self.waiters.get_mut(&id) {
            while let Some(tx) = w.pop_front() {
                if tx.send(added).is_ok() {
                    break;
                }
            }
            if w.is_empty() {
                self.waiters.remove(&id);
            }
        }
    }
}

#[derive(Debug)]
struct Shared {
    config: RabbitConfig,
    names: Names,
    /// The channel publishes go through, while connected.
    publisher: parking_lot::RwLock<Option<Channel>>,
    index: Mutex<Index>,
    /// What this process holds, in the fair order, with leases and delays.
    local: MemoryJobQueue,
    /// False from a (re)connect until the backlog the broker reported has arrived (or
    /// [`CATCH_UP`] passed).
    caught_up: watch::Sender<bool>,
}

/// One open connection: a channel to publish on, one to consume on, and the consumers.
struct Session {
    connection: Connection,
    publisher: Channel,
    jobs: Option<Consumer>,
    control: Option<Consumer>,
    /// Ready messages in `P.jobs` when this session declared it.
    backlog: u32,
}

/// A job queue in RabbitMQ, delivering in the fair order of [`converto_core::queue`] over the
/// jobs this process holds (see the [module docs](super) for the design and its limits).
/// Reservers wait on arrivals from the broker and on timers for delayed jobs and expiring
/// leases, never in a polling loop. A supervisor task keeps the connection up; dropping the
/// queue closes it, and the broker gives the jobs this process held to other consumers.
pub struct RabbitJobQueue {
    shared: Arc<Shared>,
    _stop: DropGuard,
}

impl std::fmt::Debug for RabbitJobQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitJobQueue")
            .field("config", &self.shared.config)
            .field("connected", &self.shared.publisher.read().is_some())
            .finish_non_exhaustive()
    }
}

impl RabbitJobQueue {
    /// Connects (failing fast if the broker cannot be reached), declares the queues and the
    /// exchange under the prefix, and starts consuming unless
    /// [`consume`](RabbitConfig::consume) is off.
    pub async fn connect(config: RabbitConfig) -> Result<Self, RabbitError> {
        config.validate()?;
        let p = &config.queue_prefix;
        let names = Names {
            jobs: format!("{p}.jobs"),
            dead: format!("{p}.dead"),
            control: format!("{p}.control"),
        };
        let (caught_up, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            config,
            names,
            publisher: parking_lot::RwLock::new(None),
            index: Mutex::new(Index::default()),
            local: MemoryJobQueue::new(),
            caught_up,
        });
        let session = shared.open().await?;
        // Usable from here on: the supervisor sets it again after every reconnect.
        *shared.publisher.write() = Some(session.publisher.clone());
        let stop = CancellationToken::new();
        tokio::spawn(supervise(Arc::clone(&shared), session, stop.clone()));
        Ok(Self {
            shared,
            _stop: stop.drop_guard(),
        })
    }

    /// The name of the queue holding the jobs (`<prefix>.jobs`).
    pub fn jobs_queue(&self) -> &str {
        &self.shared.names.jobs
    }

    /// The name of the queue receiving copies of dead-lettered jobs (`<prefix>.dead`).
    pub fn dead_queue(&self) -> &str {
        &self.shared.names.dead
    }

    /// The name of the fanout exchange carrying removals (`<prefix>.control`).
    pub fn control_exchange(&self) -> &str {
        &self.shared.names.control
    }

    /// Deletes the queues and the exchange of `config`'s prefix, with any jobs in them (for
    /// tests and for taking a deployment down). Queues in use lose their consumers.
    pub async fn delete_layout(config: &RabbitConfig) -> Result<(), RabbitError> {
        config.validate()?;
        let connect = Connection::connect(&config.url, ConnectionProperties::default());
        let connection = tokio::time::timeout(config.connect_timeout_duration(), connect)
            .await
            .map_err(|_| RabbitError::ConnectTimeout)??;
        let channel = connection.create_channel().await?;
        let p = &config.queue_prefix;
        for queue in [format!("{p}.jobs"), format!("{p}.dead")] {
            channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await?;
        }
        channel
            .exchange_delete(
                format!("{p}.control").as_str().into(),
                ExchangeDeleteOptions::default(),
            )
            .await?;
        connection.close(200, "layout deleted".into()).await?;
        Ok(())
    }

    /// Whether the connection is up now.
    pub fn is_connected(&self) -> bool {
        self.shared
            .publisher
            .read()
            .as_ref()
            .is_some_and(|c| c.status().connected())
    }
}

impl Shared {
    async fn open(&self) -> Result<Session, RabbitError> {
        tokio::time::timeout(self.config.connect_timeout_duration(), self.open_inner())
            .await
            .map_err(|_| RabbitError::ConnectTimeout)?
    }

    async fn open_inner(&self) -> Result<Session, RabbitError> {
        let props = ConnectionProperties::default()
            .with_connection_name(format!("converto {}", self.config.queue_prefix).into());
        let connection = Connection::connect(&self.config.url, props).await?;
        let publisher = connection.create_channel().await?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let mut args = FieldTable::default();
        args.insert(
            "x-max-priority".into(),
            AMQPValue::LongInt(MAX_PRIORITY.into()),
        );
        let jobs = publisher
            .queue_declare(
                self.names.jobs.as_str().into(),
                QueueDeclareOptions::durable(),
                args,
            )
            .await?;
        publisher
            .queue_declare(
                self.names.dead.as_str().into(),
                QueueDeclareOptions::durable(),
                FieldTable::default(),
            )
            .await?;
        publisher
            .exchange_declare(
                self.names.control.as_str().into(),
                lapin::ExchangeKind::Fanout,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        let mut session = Session {
            connection,
            publisher,
            jobs: None,
            control: None,
            backlog: 0,
        };
        if self.config.consume {
            let consumer = session.connection.create_channel().await?;
            consumer
                .basic_qos(self.config.prefetch, BasicQosOptions::default())
                .await?;
            // Removals first, so none is missed for a job that arrives next.
            let mine = consumer
                .queue_declare(
                    "".into(),
                    QueueDeclareOptions {
                        exclusive: true,
                        auto_delete: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            consumer
                .queue_bind(
                    mine.name().clone(),
                    self.names.control.as_str().into(),
                    "".into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            session.control = Some(
                consumer
                    .basic_consume(
                        mine.name().clone(),
                        "".into(),
                        BasicConsumeOptions {
                            no_ack: true,
                            ..BasicConsumeOptions::default()
                        },
                        FieldTable::default(),
                    )
                    .await?,
            );
            session.jobs = Some(
                consumer
                    .basic_consume(
                        self.names.jobs.as_str().into(),
                        "".into(),
                        BasicConsumeOptions::default(),
                        FieldTable::default(),
                    )
                    .await?,
            );
            session.backlog = jobs.message_count();
        }
        Ok(session)
    }

    fn channel(&self) -> Result<Channel, RabbitError> {
        self.publisher
            .read()
            .clone()
            .filter(|c| c.status().connected())
            .ok_or(RabbitError::Disconnected)
    }

    /// Publishes and waits for the broker's confirm.
    async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        payload: &[u8],
        properties: BasicProperties,
    ) -> Result<(), RabbitError> {
        let confirm = self
            .channel()?
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                payload,
                properties.with_content_type("application/json".into()),
            )
            .await?
            .await?;
        if confirm.is_nack() {
            return Err(RabbitError::Nacked);
        }
        Ok(())
    }

    async fn publish_job(&self, message: &JobMessage) -> Result<(), RabbitError> {
        let payload = serde_json::to_vec(message)?;
        let priority = message.priority.clamp(0, i32::from(MAX_PRIORITY));
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_priority(u8::try_from(priority).unwrap_or(0));
        self.publish("", &self.names.jobs, &payload, properties)
            .await
    }

    /// A message from `P.jobs`: a new job, a job coming back after a reconnect, or a copy
    /// (a duplicate enqueue, or a job removed or dead meanwhile) to drop.
    async fn arrive(&self, delivery: Delivery) {
        let Delivery {
            data,
            redelivered,
            acker,
            ..
        } = delivery;
        let message: JobMessage = match serde_json::from_slice(&data) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "dropping a message that is not a converto job");
                ack(Some(acker)).await;
                return;
            }
        };
        let id = message.id;
        let mut index = self.index.lock().await;
        if index.is_tombstoned(id) || index.dead.contains(&id) {
            index.answer_waiter(id, false);
            drop(index);
            ack(Some(acker)).await;
            return;
        }
        if let Some(held) = index.held.get_mut(&id) {
            if held.acker.is_none() {
                // Back after a reconnect: the job (and any lease on it) carries on.
                held.acker = Some(acker);
                return;
            }
            index.answer_waiter(id, false);
            drop(index);
            ack(Some(acker)).await;
            return;
        }
        let spec = JobSpec {
            id,
            tenant: message.tenant.clone(),
            priority: message.priority,
            not_before: message.not_before,
            // Its holder died or disconnected: it may have been leased.
            attempts: message.attempts.saturating_add(u32::from(redelivered)),
        };
        let added = self.local.enqueue(spec).await.unwrap_or(false);
        if added {
            index.held.insert(
                id,
                Held {
                    acker: Some(acker),
                    message,
                },
            );
            index.answer_waiter(id, true);
        } else {
            index.answer_waiter(id, false);
            drop(index);
            ack(Some(acker)).await;
        }
    }

    /// Forgets a job here: removed by this or another process.
    async fn forget(&self, id: ConversionId) -> Result<bool, QueueError> {
        let (existed, acker) = {
            let mut index = self.index.lock().await;
            let existed = self.local.remove(id).await?;
            let held = index.held.remove(&id);
            let was_dead = index.dead.remove(&id);
            index.tombstone(id);
            (existed || was_dead, held.and_then(|h| h.acker))
        };
        ack(acker).await;
        Ok(existed)
    }

    /// After the connection dropped: every held delivery is void (the broker put them back).
    async fn detach_all(&self) {
        let mut index = self.index.lock().await;
        for held in index.held.values_mut() {
            held.acker = None;
        }
    }

    /// Jobs that did not come back after a reconnect went to another process: forget them.
    async fn drop_ghosts(&self) {
        let mut index = self.index.lock().await;
        let ghosts: Vec<ConversionId> = index
            .held
            .iter()
            .filter(|(_, h)| h.acker.is_none())
            .map(|(id, _)| *id)
            .collect();
        for id in ghosts {
            index.held.remove(&id);
            let _ = self.local.remove(id).await;
        }
    }

    /// Messages in `P.jobs` that no consumer holds (a passive declare: one round trip).
    async fn unsent(&self) -> Result<u32, RabbitError> {
        let queue = self
            .channel()?
            .queue_declare(
                self.names.jobs.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        Ok(queue.message_count())
    }

    async fn wait_caught_up(&self) {
        let mut rx = self.caught_up.subscribe();
        let _ = tokio::time::timeout(CATCH_UP, rx.wait_for(|c| *c)).await;
    }
}

/// Acknowledges a delivery, if there is one still valid; a failure means the connection
/// dropped and the broker will send the message again, to be dropped then.
async fn ack(acker: Option<Acker>) {
    if let Some(acker) = acker
        && let Err(e) = acker.ack(BasicAckOptions::default()).await
    {
        tracing::debug!(error = %e, "ack failed; the message comes back and is dropped then");
    }
}

/// Runs sessions until the queue is dropped: consumes, and reconnects with backoff when the
/// connection drops.
async fn supervise(shared: Arc<Shared>, mut session: Session, stop: CancellationToken) {
    loop {
        let why = run_session(&shared, &mut session, &stop).await;
        *shared.publisher.write() = None;
        shared.caught_up.send_replace(false);
        shared.detach_all().await;
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            session.connection.close(200, "bye".into()),
        )
        .await;
        if stop.is_cancelled() {
            return;
        }
        tracing::warn!(reason = %why, "RabbitMQ connection lost; reconnecting");
        let mut backoff = RECONNECT_MIN;
        session = loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            match shared.open().await {
                Ok(s) => break s,
                Err(e) => {
                    tracing::debug!(error = %e, "RabbitMQ reconnect failed");
                    backoff = (backoff * 2).min(RECONNECT_MAX);
                }
            }
        };
        tracing::info!("RabbitMQ connection re-established");
    }
}

/// Consumes until the connection drops or the queue is dropped; says why it ended.
async fn run_session(shared: &Shared, session: &mut Session, stop: &CancellationToken) -> String {
    *shared.publisher.write() = Some(session.publisher.clone());
    let started = Instant::now();
    let mut arrived: u32 = 0;
    let mut caught_up = session.backlog == 0;
    shared.caught_up.send_replace(caught_up);
    let catch_up_deadline = started + CATCH_UP;
    let mut ghosts_due = Some(started + GHOST_GRACE);
    let mut events = session.connection.events_listener();
    let mut tick = tokio::time::interval(LIVENESS_TICK);
    loop {
        let next_job = async {
            match session.jobs.as_mut() {
                Some(c) => c.next().await,
                None => std::future::pending().await,
            }
        };
        let next_control = async {
            match session.control.as_mut() {
                Some(c) => c.next().await,
                None => std::future::pending().await,
            }
        };
        let timer = async {
            let at = match (caught_up, ghosts_due) {
                (false, Some(g)) => catch_up_deadline.min(g),
                (false, None) => catch_up_deadline,
                (true, Some(g)) => g,
                (true, None) => return std::future::pending().await,
            };
            tokio::time::sleep_until(at).await;
        };
        tokio::select! {
            _ = stop.cancelled() => return "stopped".to_owned(),
            job = next_job => match job {
                Some(Ok(delivery)) => {
                    shared.arrive(delivery).await;
                    arrived = arrived.saturating_add(1);
                    if !caught_up && arrived >= session.backlog {
                        caught_up = true;
                        shared.caught_up.send_replace(true);
                    }
                }
                Some(Err(e)) => return format!("consumer failed: {e}"),
                None => return "the broker cancelled the consumer".to_owned(),
            },
            control = next_control => match control {
                Some(Ok(delivery)) => {
                    match serde_json::from_slice::<ControlMessage>(&delivery.data) {
                        Ok(c) => {
                            let _ = shared.forget(c.remove).await;
                        }
                        Err(e) => tracing::warn!(error = %e, "ignoring a bad control message"),
                    }
                }
                Some(Err(e)) => return format!("control consumer failed: {e}"),
                None => return "the broker cancelled the control consumer".to_owned(),
            },
            event = events.next() => match event {
                Some(lapin::Event::Error(e)) => return format!("connection error: {e}"),
                Some(_) => {}
                // Its sender lives in the connection's internals: gone with them.
                None => return "the connection's events ended".to_owned(),
            },
            _ = timer => {
                let now = Instant::now();
                if !caught_up && now >= catch_up_deadline {
                    caught_up = true;
                    shared.caught_up.send_replace(true);
                }
                if ghosts_due.is_some_and(|g| now >= g) {
                    ghosts_due = None;
                    shared.drop_ghosts().await;
                }
            }
            _ = tick.tick() => {
                if !session.connection.status().connected() || !session.publisher.status().connected() {
                    return "the connection closed".to_owned();
                }
            }
        }
    }
}

#[async_trait]
impl JobQueue for RabbitJobQueue {
    async fn enqueue(&self, job: JobSpec) -> Result<bool, QueueError> {
        let shared = &self.shared;
        let id = job.id;
        let arrival = {
            let mut index = shared.index.lock().await;
            if index.held.contains_key(&id) || index.dead.contains(&id) || index.enqueue_pending(id)
            {
                return Ok(false);
            }
            // A new enqueue of a removed id is a new job.
            index.tombstones.remove(&id);
            shared.config.consume.then(|| {
                let (tx, rx) = oneshot::channel();
                index.waiters.entry(id).or_default().push_back(tx);
                rx
            })
        };
        shared.publish_job(&JobMessage::from(&job)).await?;
        match arrival {
            // Wait for it here, so a reserve right after an enqueue sees it.
            Some(rx) => {
                match tokio::time::timeout(shared.config.arrival_wait_duration(), rx).await {
                    Ok(Ok(added)) => Ok(added),
                    // Another process's consumer took it.
                    _ => Ok(true),
                }
            }
            None => Ok(true),
        }
    }

    async fn reserve_with(
        &self,
        max: usize,
        lease_for: Duration,
        wait: Duration,
        options: &ReserveOptions,
    ) -> Result<Vec<Lease>, QueueError> {
        if !self.shared.config.consume {
            // Holds nothing: there is never anything to reserve here.
            tokio::time::sleep(wait.min(Duration::from_secs(3600))).await;
            return Ok(Vec::new());
        }
        self.shared.wait_caught_up().await;
        self.shared
            .local
            .reserve_with(max, lease_for, wait, options)
            .await
    }

    async fn release(&self, lease: &Lease) -> Result<(), QueueError> {
        self.shared.local.release(lease).await
    }

    async fn heartbeat(&self, lease: &Lease, lease_for: Duration) -> Result<Lease, QueueError> {
        self.shared.local.heartbeat(lease, lease_for).await
    }

    async fn ack(&self, lease: &Lease) -> Result<(), QueueError> {
        let acker = {
            let mut index = self.shared.index.lock().await;
            self.shared.local.ack(lease).await?;
            let held = index.held.remove(&lease.id);
            let acker = held.and_then(|h| h.acker);
            if acker.is_none() {
                // Disconnected: the message comes back after the reconnect; drop it then.
                index.tombstone(lease.id);
            }
            acker
        };
        if let Some(acker) = acker
            && !matches!(acker.ack(BasicAckOptions::default()).await, Ok(true))
        {
            self.shared.index.lock().await.tombstone(lease.id);
        }
        Ok(())
    }

    /// Publishes the job again with its new not-before and the deliveries made so far, then
    /// acknowledges the old message: after a crash the retry keeps its delay and its attempt
    /// count, and with several processes any of them may run it. If the broker is unreachable,
    /// the retry is kept in this process only (the old message still holds the job).
    async fn retry(&self, lease: &Lease, not_before: DateTime<Utc>) -> Result<(), QueueError> {
        let shared = &self.shared;
        let (old, arrival) = {
            let mut index = shared.index.lock().await;
            shared.local.retry(lease, not_before).await?;
            let Some(held) = index.held.get(&lease.id) else {
                return Ok(());
            };
            let message = JobMessage {
                not_before,
                attempts: lease.attempt,
                ..held.message.clone()
            };
            // Under the lock: the new message cannot arrive before the old one is forgotten.
            if let Err(e) = shared.publish_job(&message).await {
                tracing::warn!(id = %lease.id, error = %e, "retry kept in this process only");
                return Ok(());
            }
            let _ = shared.local.remove(lease.id).await;
            let old = index.held.remove(&lease.id).and_then(|h| h.acker);
            let arrival = shared.config.consume.then(|| {
                let (tx, rx) = oneshot::channel();
                index.waiters.entry(lease.id).or_default().push_back(tx);
                rx
            });
            (old, arrival)
        };
        ack(old).await;
        if let Some(rx) = arrival {
            // So a reserve or stats right after the retry sees it (unless another process
            // took it).
            let _ = tokio::time::timeout(shared.config.arrival_wait_duration(), rx).await;
        }
        Ok(())
    }

    async fn dead_letter(&self, lease: &Lease, error: &ErrorInfo) -> Result<(), QueueError> {
        let held = {
            let mut index = self.shared.index.lock().await;
            self.shared.local.dead_letter(lease, error).await?;
            index.dead.insert(lease.id);
            index.held.remove(&lease.id)
        };
        let Some(held) = held else {
            return Ok(());
        };
        // The copy is for operators; the job is dead here whether or not it is written.
        let copy = async {
            let payload = serde_json::to_vec(&held.message)?;
            let mut headers = FieldTable::default();
            headers.insert(
                "x-converto-error-code".into(),
                AMQPValue::LongString(error.code.clone().into()),
            );
            headers.insert(
                "x-converto-error-message".into(),
                AMQPValue::LongString(error.message.clone().into()),
            );
            headers.insert(
                "x-converto-attempt".into(),
                AMQPValue::LongLongInt(lease.attempt.into()),
            );
            let properties = BasicProperties::default()
                .with_delivery_mode(2)
                .with_headers(headers);
            self.shared
                .publish("", &self.shared.names.dead, &payload, properties)
                .await
        };
        if let Err(e) = copy.await {
            tracing::warn!(id = %lease.id, error = %e, "could not copy a dead letter to its queue");
        }
        ack(held.acker).await;
        Ok(())
    }

    async fn remove(&self, id: ConversionId) -> Result<bool, QueueError> {
        let existed = self.shared.forget(id).await?;
        // Tell the process that holds it, if another one does.
        let payload =
            serde_json::to_vec(&ControlMessage { remove: id }).map_err(RabbitError::from)?;
        if let Err(e) = self
            .shared
            .publish(
                &self.shared.names.control,
                "",
                &payload,
                BasicProperties::default(),
            )
            .await
        {
            tracing::warn!(%id, error = %e, "could not broadcast a removal; its holder runs it and finds it cancelled");
        }
        Ok(existed)
    }

    /// Exact for the jobs this process knows (held, dead, removed, being enqueued). For any
    /// other id, a job may wait in the broker, unsent to any consumer: it answers `true` while
    /// `P.jobs` has such messages, so the sweeper of one process does not copy a backlog it
    /// cannot see (each sweep would add a copy of every waiting job), and `false` when every
    /// message is held by a consumer (this one did not get it).
    async fn contains(&self, id: ConversionId) -> Result<bool, QueueError> {
        {
            let mut index = self.shared.index.lock().await;
            if index.enqueue_pending(id) || index.held.contains_key(&id) {
                return Ok(true);
            }
            if index.dead.contains(&id) || index.is_tombstoned(id) {
                return Ok(false);
            }
        }
        Ok(self.shared.unsent().await? > 0)
    }

    async fn stats(&self) -> Result<QueueStats, QueueError> {
        if !self.shared.config.consume {
            // Nothing is held here: what waits in the broker is ready (or delayed) work.
            return Ok(QueueStats {
                ready: self.shared.unsent().await?.into(),
                ..QueueStats::default()
            });
        }
        self.shared.local.stats().await
    }

    async fn ping(&self) -> Result<(), QueueError> {
        self.shared.unsent().await?;
        Ok(())
    }
}

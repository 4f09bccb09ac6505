//! One pub/sub connection per backend, fanned out in-process: the queue's wake-ups go to a
//! `Notify`, each subscribed conversion's events to a broadcast channel. The connection is
//! re-established with backoff when it drops; channels are subscribed again and waiters woken.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use parking_lot::Mutex;
use redis::aio::{ConnectionManager, PubSubSink, PubSubStream};
use tokio::sync::{Notify, broadcast, mpsc, oneshot, watch};

use super::{Keys, RedisConfig, RedisError};

/// Events a slow subscriber may fall behind by before it misses progress events (as in
/// memory: the newest are kept, so a terminal status is never the one dropped).
const CHANNEL_CAPACITY: usize = 64;
/// Reconnect backoff bounds.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

struct HubState {
    /// `None` while disconnected.
    sink: Option<PubSubSink>,
    topics: HashMap<String, broadcast::Sender<(u64, Bytes)>>,
    /// Messages routed so far: each carries its number, so a subscriber joining a topic that
    /// is already live can skip what was received before it joined.
    routed: u64,
}

struct Shared {
    client: redis::Client,
    conn: ConnectionManager,
    keys: Keys,
    wake_channel: String,
    wake: Notify,
    state: Mutex<HubState>,
    /// Serialises SUBSCRIBE / UNSUBSCRIBE and resubscription, so the set of subscribed
    /// channels always matches `topics` once an operation completes.
    ops: tokio::sync::Mutex<()>,
    connected: watch::Sender<bool>,
    release: mpsc::UnboundedSender<String>,
    barrier: mpsc::UnboundedSender<oneshot::Sender<u64>>,
    connect_timeout: Duration,
    response_timeout: Duration,
}

/// The shared pub/sub connection and the task that reads it.
pub(crate) struct PubSubHub {
    shared: Arc<Shared>,
    task: tokio::task::AbortHandle,
}

impl std::fmt::Debug for PubSubHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PubSubHub")
            .field("wake_channel", &self.shared.wake_channel)
            .field("connected", &self.is_connected())
            .field("topics", &self.shared.state.lock().topics.len())
            .finish()
    }
}

impl Drop for PubSubHub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A subscription to one channel; unsubscribes (when it was the last) on drop.
pub(crate) struct Subscription {
    pub(crate) rx: broadcast::Receiver<(u64, Bytes)>,
    /// Messages numbered up to this one were published before the subscription began.
    pub(crate) after: u64,
    pub(crate) release: Release,
}

/// Asks the reader task to unsubscribe from the channel if nobody listens any more.
pub(crate) struct Release {
    channel: String,
    tx: mpsc::UnboundedSender<String>,
}

impl Drop for Release {
    fn drop(&mut self) {
        let _ = self.tx.send(std::mem::take(&mut self.channel));
    }
}

impl PubSubHub {
    /// Connects, subscribes to the wake channel and starts the reader task.
    pub(crate) async fn start(
        client: redis::Client,
        conn: ConnectionManager,
        keys: Keys,
        config: &RedisConfig,
    ) -> Result<Arc<Self>, RedisError> {
        let (release, release_rx) = mpsc::unbounded_channel();
        let (barrier, barrier_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            client,
            conn,
            wake_channel: keys.wake_channel(),
            keys,
            wake: Notify::new(),
            state: Mutex::new(HubState {
                sink: None,
                topics: HashMap::new(),
                routed: 0,
            }),
            ops: tokio::sync::Mutex::new(()),
            connected: watch::Sender::new(false),
            release,
            barrier,
            connect_timeout: config.connect_timeout_duration(),
            response_timeout: config.response_timeout_duration(),
        });
        let stream = shared.connect().await?;
        let task =
            tokio::spawn(run(Arc::clone(&shared), stream, release_rx, barrier_rx)).abort_handle();
        Ok(Arc::new(Self { shared, task }))
    }

    /// Notified on every enqueue and retry (by any process) and after a reconnect.
    pub(crate) fn wake(&self) -> &Notify {
        &self.shared.wake
    }

    /// Whether the pub/sub connection is up (wake-ups may be missed while it is not).
    pub(crate) fn is_connected(&self) -> bool {
        *self.shared.connected.borrow()
    }

    /// Subscribes to `channel`; messages published after this returns are received.
    pub(crate) async fn subscribe(&self, channel: String) -> Result<Subscription, RedisError> {
        let shared = &self.shared;
        let mut connected = shared.connected.subscribe();
        tokio::time::timeout(shared.connect_timeout, connected.wait_for(|up| *up))
            .await
            .map_err(|_| RedisError::Disconnected)?
            .map_err(|_| RedisError::Disconnected)?;
        let _ops = shared.ops.lock().await;
        let (rx, sink, new) = {
            let mut state = shared.state.lock();
            let Some(sink) = state.sink.clone() else {
                return Err(RedisError::Disconnected);
            };
            match state.topics.get(&channel) {
                Some(tx) => (tx.subscribe(), sink, false),
                None => {
                    let (tx, rx) = broadcast::channel(CHANNEL_CAPACITY);
                    state.topics.insert(channel.clone(), tx);
                    (rx, sink, true)
                }
            }
        };
        let release = Release {
            channel: channel.clone(),
            tx: shared.release.clone(),
        };
        let mut sink = sink;
        if new {
            // On failure `release` drops with `rx`, and the reader task forgets the topic.
            tokio::time::timeout(shared.response_timeout, sink.subscribe(&channel))
                .await
                .map_err(|_| RedisError::Disconnected)??;
            return Ok(Subscription {
                rx,
                after: 0,
                release,
            });
        }
        drop(_ops);
        // The topic was live already: messages published before now may still be on their way
        // through the reader task. A PING answered on the pub/sub connection comes after every
        // one of them; the reader answers the barrier only once it has routed all it received.
        let after = async {
            sink.ping::<redis::Value>().await?;
            let (tx, rx) = oneshot::channel();
            shared
                .barrier
                .send(tx)
                .map_err(|_| RedisError::Disconnected)?;
            rx.await.map_err(|_| RedisError::Disconnected)
        };
        let after = tokio::time::timeout(shared.response_timeout, after)
            .await
            .map_err(|_| RedisError::Disconnected)??;
        Ok(Subscription { rx, after, release })
    }
}

impl Shared {
    /// Opens a connection and subscribes to the wake channel and every live topic.
    async fn connect(&self) -> Result<PubSubStream, RedisError> {
        let pubsub = tokio::time::timeout(self.connect_timeout, self.client.get_async_pubsub())
            .await
            .map_err(|_| RedisError::ConnectTimeout)??;
        let (sink, stream) = pubsub.split();
        let _ops = self.ops.lock().await;
        let channels: Vec<String> = {
            let mut state = self.state.lock();
            state.topics.retain(|_, tx| tx.receiver_count() > 0);
            state.topics.keys().cloned().collect()
        };
        // One channel per SUBSCRIBE: the sink matches one confirmation to each request.
        let subscribed = futures::future::try_join_all(
            std::iter::once(&self.wake_channel)
                .chain(&channels)
                .map(|channel| {
                    let mut sink = sink.clone();
                    async move { sink.subscribe(channel).await }
                }),
        );
        tokio::time::timeout(self.response_timeout, subscribed)
            .await
            .map_err(|_| RedisError::Disconnected)??;
        self.state.lock().sink = Some(sink);
        self.connected.send_replace(true);
        drop(_ops);
        // Anything published while we were away was missed: let reservers look again, and
        // hand watchers the last stored status so none waits forever for a terminal event.
        self.wake.notify_waiters();
        self.resync(&channels).await;
        Ok(stream)
    }

    async fn resync(&self, channels: &[String]) {
        for channel in channels {
            let Some(key) = self.keys.progress_of_channel(channel) else {
                continue;
            };
            let mut conn = self.conn.clone();
            let status: Result<Option<Vec<u8>>, _> = redis::cmd("HGET")
                .arg(&key)
                .arg(super::progress::STATUS_FIELD)
                .query_async(&mut conn)
                .await;
            if let Ok(Some(payload)) = status {
                self.deliver(channel, Bytes::from(payload));
            }
        }
    }

    fn deliver(&self, channel: &str, payload: Bytes) {
        if channel == self.wake_channel {
            self.wake.notify_waiters();
            return;
        }
        let mut state = self.state.lock();
        state.routed += 1;
        let n = state.routed;
        if let Some(tx) = state.topics.get(channel) {
            let _ = tx.send((n, payload));
        }
    }

    /// Forgets the channel (and unsubscribes) if nobody listens any more.
    async fn release(&self, channel: String) {
        let _ops = self.ops.lock().await;
        let sink = {
            let mut state = self.state.lock();
            match state.topics.get(&channel) {
                Some(tx) if tx.receiver_count() == 0 => {
                    state.topics.remove(&channel);
                    state.sink.clone()
                }
                _ => None,
            }
        };
        if let Some(mut sink) = sink {
            let unsubscribed =
                tokio::time::timeout(self.response_timeout, sink.unsubscribe(&channel)).await;
            if !matches!(unsubscribed, Ok(Ok(()))) {
                tracing::debug!(%channel, "unsubscribe failed; the connection is probably down");
            }
        }
    }
}

/// Reads messages until the connection drops, then reconnects with backoff, forever (the hub
/// aborts it on drop).
async fn run(
    shared: Arc<Shared>,
    mut stream: PubSubStream,
    mut releases: mpsc::UnboundedReceiver<String>,
    mut barriers: mpsc::UnboundedReceiver<oneshot::Sender<u64>>,
) {
    loop {
        loop {
            tokio::select! {
                // Messages first: a barrier is answered only when none is waiting.
                biased;
                msg = stream.next() => match msg {
                    Some(msg) => shared.deliver(
                        msg.get_channel_name(),
                        Bytes::copy_from_slice(msg.get_payload_bytes()),
                    ),
                    None => break,
                },
                Some(channel) = releases.recv() => shared.release(channel).await,
                Some(barrier) = barriers.recv() => {
                    let _ = barrier.send(shared.state.lock().routed);
                }
            }
        }
        shared.state.lock().sink = None;
        shared.connected.send_replace(false);
        tracing::warn!("Redis pub/sub connection lost; reconnecting");
        let mut failures = 0u32;
        stream = loop {
            tokio::time::sleep(backoff(failures)).await;
            match shared.connect().await {
                Ok(stream) => break stream,
                Err(error) => {
                    failures = failures.saturating_add(1);
                    tracing::warn!(%error, failures, "Redis pub/sub reconnect failed");
                }
            }
        };
        tracing::info!("Redis pub/sub connection re-established");
    }
}

/// Exponential from [`BACKOFF_MIN`] to [`BACKOFF_MAX`], with up to 50% jitter.
fn backoff(failures: u32) -> Duration {
    let base = BACKOFF_MIN
        .saturating_mul(1u32 << failures.min(16))
        .min(BACKOFF_MAX);
    let jitter_ms = converto_core::queue::new_lease_token() % (base.as_millis() as u64 / 2 + 1);
    base + Duration::from_millis(jitter_ms)
}

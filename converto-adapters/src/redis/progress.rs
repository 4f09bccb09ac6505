//! The Redis `ProgressBus`: a hash per conversion (latest progress and status, with a TTL) and a
//! pub/sub channel per conversion, read through the backend's one shared pub/sub connection.

use std::sync::Arc;

use async_trait::async_trait;
use converto_core::ConversionId;
use converto_core::progress::{BusError, Event, EventStream, ProgressBus};
use futures::StreamExt;
use redis::aio::ConnectionManager;
use tokio_stream::wrappers::BroadcastStream;

use super::pubsub::PubSubHub;
use super::{Keys, RedisError};

/// The hash field holding the latest progress event.
pub(crate) const PROGRESS_FIELD: &str = "progress";
/// The hash field holding the latest status event: replayed to subscribers after the pub/sub
/// connection comes back, so a terminal status published meanwhile still reaches them.
pub(crate) const STATUS_FIELD: &str = "status";

/// A progress bus in Redis.
pub struct RedisProgressBus {
    conn: ConnectionManager,
    keys: Keys,
    hub: Arc<PubSubHub>,
    ttl_secs: u64,
}

impl std::fmt::Debug for RedisProgressBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisProgressBus")
            .field("keys", &self.keys)
            .field("ttl_secs", &self.ttl_secs)
            .field("hub", &self.hub)
            .finish_non_exhaustive()
    }
}

impl RedisProgressBus {
    pub(crate) fn new(
        conn: ConnectionManager,
        keys: Keys,
        hub: Arc<PubSubHub>,
        ttl_secs: u64,
    ) -> Self {
        Self {
            conn,
            keys,
            hub,
            ttl_secs,
        }
    }
}

#[async_trait]
impl ProgressBus for RedisProgressBus {
    async fn publish(&self, event: Event) -> Result<(), BusError> {
        let id = event.id();
        let payload = serde_json::to_vec(&event).map_err(RedisError::from)?;
        let field = match event {
            Event::Progress { .. } => PROGRESS_FIELD,
            Event::Status { .. } => STATUS_FIELD,
        };
        let key = self.keys.progress(&id);
        let mut conn = self.conn.clone();
        redis::pipe()
            .hset(&key, field, &payload)
            .ignore()
            .expire(&key, i64::try_from(self.ttl_secs).unwrap_or(i64::MAX))
            .ignore()
            .publish(self.keys.events_channel(&id), &payload)
            .ignore()
            .query_async::<()>(&mut conn)
            .await
            .map_err(RedisError::from)?;
        Ok(())
    }

    async fn latest(&self, id: ConversionId) -> Result<Option<Event>, BusError> {
        let mut conn = self.conn.clone();
        let payload: Option<Vec<u8>> = redis::cmd("HGET")
            .arg(self.keys.progress(&id))
            .arg(PROGRESS_FIELD)
            .query_async(&mut conn)
            .await
            .map_err(RedisError::from)?;
        payload
            .map(|p| serde_json::from_slice(&p).map_err(|e| RedisError::from(e).into()))
            .transpose()
    }

    async fn subscribe(&self, id: ConversionId) -> Result<EventStream, BusError> {
        let subscription = self.hub.subscribe(self.keys.events_channel(&id)).await?;
        let rx = BroadcastStream::new(subscription.rx);
        let after = subscription.after;
        // The guard travels with the stream: dropping the stream unsubscribes.
        let guard = subscription.release;
        Ok(rx
            .filter_map(move |received| {
                let _ = &guard;
                // A lagging reader skips what it missed (progress is a latest-value signal);
                // the newest events, including the final status, are kept.
                let event = received.ok().and_then(|(n, payload)| {
                    if n <= after {
                        // Published before this subscription began.
                        return None;
                    }
                    serde_json::from_slice::<Event>(&payload)
                        .inspect_err(|error| {
                            tracing::warn!(%id, %error, "undecodable event on the Redis bus");
                        })
                        .ok()
                        .filter(|e| e.id() == id)
                });
                futures::future::ready(event)
            })
            .boxed())
    }

    async fn forget(&self, id: ConversionId) -> Result<(), BusError> {
        let mut conn = self.conn.clone();
        redis::cmd("DEL")
            .arg(self.keys.progress(&id))
            .query_async::<()>(&mut conn)
            .await
            .map_err(RedisError::from)?;
        Ok(())
    }

    async fn ping(&self) -> Result<(), BusError> {
        let mut conn = self.conn.clone();
        redis::cmd("PING")
            .query_async::<()>(&mut conn)
            .await
            .map_err(RedisError::from)?;
        if !self.hub.is_connected() {
            return Err(RedisError::Disconnected.into());
        }
        Ok(())
    }
}

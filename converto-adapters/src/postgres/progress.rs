//! [`PostgresProgressBus`]: events over `LISTEN/NOTIFY`, the latest progress in a table.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use converto_core::ConversionId;
use converto_core::progress::{BusError, Event, EventStream, ProgressBus};
use futures::StreamExt;
use parking_lot::Mutex;
use sqlx::types::Json;
use tokio::sync::{OnceCell, broadcast};
use tokio_stream::wrappers::BroadcastStream;

use super::{ListenerTask, PostgresError, Shared, start_listener};

/// Stores the event as the conversion's latest progress and sends it, in one statement (the
/// notification is delivered when the statement commits).
const PUBLISH_PROGRESS: &str = "WITH up AS ( \
         INSERT INTO progress (id, event, updated_at) VALUES ($1, $2, now()) \
         ON CONFLICT (id) DO UPDATE SET event = EXCLUDED.event, updated_at = EXCLUDED.updated_at) \
     SELECT pg_notify($3, $4)::text";
const PUBLISH: &str = "SELECT pg_notify($1, $2)::text";
const LATEST: &str = "SELECT event FROM progress WHERE id = $1";
const FORGET: &str = "DELETE FROM progress WHERE id = $1";

/// PostgreSQL refuses notification payloads of 8000 bytes or more; stay well below.
const MAX_PAYLOAD: usize = 7900;
/// Events a slow subscriber may fall behind by before it misses progress events.
const CHANNEL_CAPACITY: usize = 64;

type Topics = Arc<Mutex<HashMap<ConversionId, broadcast::Sender<Event>>>>;

/// A progress bus in PostgreSQL.
///
/// `publish` sends each event with `pg_notify` on the schema's channel, so every process's bus
/// sees it, and upserts progress events into the `progress` table for `latest`. Each bus opens
/// one listening connection (on its first `subscribe`) and fans the events out to per-conversion
/// broadcast channels, so subscribers cost no connections. A subscriber that falls behind skips
/// progress events but still gets the newest ones, the last included. Notifications sent while
/// the listening connection is down (it reconnects with backoff) are lost.
#[derive(Debug)]
pub struct PostgresProgressBus {
    shared: Shared,
    channel: String,
    topics: Topics,
    listener: OnceCell<ListenerTask>,
}

fn sql(e: sqlx::Error) -> BusError {
    PostgresError::Sql(e).into()
}

/// The JSON sent for an event, shortened (stage text, error message) to fit a notification.
fn payload(event: &Event) -> Result<String, BusError> {
    let encode = |e: &Event| {
        serde_json::to_string(e).map_err(|e| BusError::backend(super::BACKEND, false, e))
    };
    let mut json = encode(event)?;
    let mut short = event.clone();
    // JSON escapes can make the text longer than its raw bytes, so shorten until it fits.
    while json.len() >= MAX_PAYLOAD {
        let text = match &mut short {
            Event::Progress { progress, .. } => progress.stage.as_mut(),
            Event::Status { error, .. } => error.as_mut().map(|e| &mut e.message),
        };
        let Some(text) = text.filter(|t| t.len() > 3) else {
            break;
        };
        let excess = json.len() + 64 - MAX_PAYLOAD;
        let mut keep = text.len().saturating_sub(excess.max(text.len() / 4));
        while !text.is_char_boundary(keep) {
            keep -= 1;
        }
        text.truncate(keep);
        text.push('…');
        json = encode(&short)?;
    }
    Ok(json)
}

/// Delivers one notification to its conversion's subscribers, dropping channels nobody reads.
fn fan_out(topics: &Topics, payload: &str) {
    let event: Event = match serde_json::from_str(payload) {
        Ok(e) => e,
        Err(error) => {
            tracing::warn!(%error, "ignoring a malformed progress notification");
            return;
        }
    };
    let id = event.id();
    let mut topics = topics.lock();
    if let Some(sender) = topics.get(&id) {
        if sender.receiver_count() == 0 {
            topics.remove(&id);
        } else {
            let _ = sender.send(event);
        }
    }
}

impl PostgresProgressBus {
    pub(super) fn new(shared: Shared) -> Self {
        let channel = shared.channel("progress");
        Self {
            shared,
            channel,
            topics: Topics::default(),
            listener: OnceCell::new(),
        }
    }

    /// Starts the shared listener, once; returns when it listens.
    async fn ensure_listener(&self) -> Result<(), BusError> {
        self.listener
            .get_or_try_init(|| {
                let topics = Arc::clone(&self.topics);
                start_listener(
                    &self.shared.listen_pool,
                    self.channel.clone(),
                    move |payload| {
                        if let Some(payload) = payload {
                            fan_out(&topics, payload);
                        }
                    },
                )
            })
            .await?;
        Ok(())
    }

    /// Conversions with live subscribers in this process.
    pub fn subscribed(&self) -> usize {
        self.topics
            .lock()
            .values()
            .filter(|s| s.receiver_count() > 0)
            .count()
    }
}

#[async_trait]
impl ProgressBus for PostgresProgressBus {
    async fn publish(&self, event: Event) -> Result<(), BusError> {
        let body = payload(&event)?;
        let query = match &event {
            Event::Progress { id, .. } => sqlx::query(PUBLISH_PROGRESS)
                .bind(id.as_uuid())
                .bind(Json(&event))
                .bind(&self.channel)
                .bind(body),
            Event::Status { .. } => sqlx::query(PUBLISH).bind(&self.channel).bind(body),
        };
        query.execute(&self.shared.pool).await.map_err(sql)?;
        Ok(())
    }

    async fn latest(&self, id: ConversionId) -> Result<Option<Event>, BusError> {
        let event: Option<Json<Event>> = sqlx::query_scalar(LATEST)
            .bind(id.as_uuid())
            .fetch_optional(&self.shared.pool)
            .await
            .map_err(sql)?;
        Ok(event.map(|e| e.0))
    }

    async fn subscribe(&self, id: ConversionId) -> Result<EventStream, BusError> {
        self.ensure_listener().await?;
        let rx = {
            let mut topics = self.topics.lock();
            topics.retain(|_, s| s.receiver_count() > 0);
            topics
                .entry(id)
                .or_insert_with(|| broadcast::channel(CHANNEL_CAPACITY).0)
                .subscribe()
        };
        // A lagging reader skips what it missed and still receives the newest events.
        Ok(BroadcastStream::new(rx)
            .filter_map(|r| async move { r.ok() })
            .boxed())
    }

    async fn forget(&self, id: ConversionId) -> Result<(), BusError> {
        sqlx::query(FORGET)
            .bind(id.as_uuid())
            .execute(&self.shared.pool)
            .await
            .map_err(sql)?;
        Ok(())
    }

    async fn ping(&self) -> Result<(), BusError> {
        sqlx::query("SELECT 1")
            .execute(&self.shared.pool)
            .await
            .map_err(sql)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use converto_core::conversion::{ErrorInfo, Progress, Status};

    #[test]
    fn long_payloads_are_shortened() {
        let id = ConversionId::new();
        let long = Event::Progress {
            id,
            attempt: 1,
            progress: Progress::new(5, Some("é".repeat(10_000))),
        };
        let p = payload(&long).expect("payload");
        assert!(p.len() < 8000, "{}", p.len());
        let back: Event = serde_json::from_str(&p).expect("json");
        assert_eq!(back.id(), id);
        let status = Event::Status {
            id,
            status: Status::Failed,
            attempt: 1,
            error: Some(ErrorInfo::new("x", "y".repeat(20_000))),
            at: chrono::Utc::now(),
        };
        assert!(payload(&status).expect("payload").len() < 8000);
        let short = Event::Progress {
            id,
            attempt: 1,
            progress: Progress::new(5, Some("ok".into())),
        };
        assert_eq!(
            payload(&short).expect("payload"),
            serde_json::to_string(&short).expect("json")
        );
    }
}

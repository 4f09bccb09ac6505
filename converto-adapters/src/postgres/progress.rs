//! [`PostgresProgressBus`]: events over `LISTEN/NOTIFY`, the latest progress in a table.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use converto_core::ConversionId;
use converto_core::progress::{BusError, Event, EventStream, ProgressBus};
use futures::StreamExt;
use parking_lot::Mutex;
use sqlx::PgPool;
use sqlx::types::Json;
use tokio::sync::{OnceCell, broadcast};
use tokio_stream::wrappers::BroadcastStream;
use uuid::Uuid;

use super::batch::Batcher;
use super::{ListenerTask, PostgresError, Shared, start_listener};

/// Publishes a batch of events in one statement: stores the progress events (`$2`, `$3`: at
/// most one per conversion, its last) as their conversions' latest progress, and sends every
/// event's payload (`$4`) in order on the channel `$1`. The notifications are delivered when
/// the statement commits.
const PUBLISH: &str = "WITH up AS ( \
         INSERT INTO progress (id, event, updated_at) \
         SELECT id, event::jsonb, now() FROM unnest($2::uuid[], $3::text[]) AS u(id, event) \
         ON CONFLICT (id) DO UPDATE SET event = EXCLUDED.event, updated_at = EXCLUDED.updated_at) \
     SELECT pg_notify($1, p)::text FROM unnest($4::text[]) WITH ORDINALITY AS t(p, n) ORDER BY n";
const LATEST: &str = "SELECT event FROM progress WHERE id = $1";
const FORGET: &str = "DELETE FROM progress WHERE id = ANY($1::uuid[])";

/// The most events, or forgotten conversions, one statement carries.
const BATCH_MAX: usize = 256;
/// How many statements of each kind run at once.
const BATCH_LANES: usize = 2;

/// One event to publish: its payload, and for a progress event its stored form.
struct Publish {
    stored: Option<(Uuid, String)>,
    payload: String,
}

/// Publishes a batch of events in one statement.
async fn publish_many(
    pool: PgPool,
    channel: Arc<str>,
    events: Vec<Publish>,
) -> Result<Vec<()>, sqlx::Error> {
    // The last progress of each conversion is the one kept.
    let mut stored: HashMap<Uuid, &str> = HashMap::new();
    for e in &events {
        if let Some((id, json)) = &e.stored {
            stored.insert(*id, json);
        }
    }
    let (ids, jsons): (Vec<Uuid>, Vec<&str>) = stored.into_iter().unzip();
    let payloads: Vec<&str> = events.iter().map(|e| e.payload.as_str()).collect();
    sqlx::query(PUBLISH)
        .bind(&*channel)
        .bind(ids)
        .bind(jsons)
        .bind(payloads)
        .execute(&pool)
        .await?;
    Ok(vec![(); events.len()])
}

/// Forgets a batch of conversions' latest progress in one statement.
async fn forget_many(pool: PgPool, ids: Vec<Uuid>) -> Result<Vec<()>, sqlx::Error> {
    sqlx::query(FORGET).bind(&ids).execute(&pool).await?;
    Ok(vec![(); ids.len()])
}

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
///
/// Concurrent publishes (and forgets) are sent in batches, one statement for every call
/// waiting at the time; each publisher's events still go out in the order it published them.
#[derive(Debug)]
pub struct PostgresProgressBus {
    shared: Shared,
    channel: String,
    topics: Topics,
    listener: OnceCell<ListenerTask>,
    publishes: Batcher<Publish, ()>,
    forgets: Batcher<Uuid, ()>,
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
        let to = Arc::<str>::from(channel.as_str());
        let publishes =
            Batcher::on_pool(&shared.pool, BATCH_MAX, BATCH_LANES, move |pool, events| {
                publish_many(pool, Arc::clone(&to), events)
            });
        let forgets = Batcher::on_pool(&shared.pool, BATCH_MAX, BATCH_LANES, forget_many);
        Self {
            shared,
            channel,
            topics: Topics::default(),
            listener: OnceCell::new(),
            publishes,
            forgets,
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
        let payload = payload(&event)?;
        let stored = match &event {
            Event::Progress { id, .. } => Some((
                *id.as_uuid(),
                serde_json::to_string(&event)
                    .map_err(|e| BusError::backend(super::BACKEND, false, e))?,
            )),
            Event::Status { .. } => None,
        };
        self.publishes.call(Publish { stored, payload }).await?;
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
        self.forgets.call(*id.as_uuid()).await?;
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

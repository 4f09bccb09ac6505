use std::collections::HashMap;

use async_trait::async_trait;
use futures::StreamExt;
use parking_lot::Mutex;
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;

use crate::ConversionId;
use crate::progress::{BusError, Event, EventStream, ProgressBus};

#[derive(Debug, Default)]
struct Topic {
    latest: Option<Event>,
    sender: Option<broadcast::Sender<Event>>,
}

/// A progress bus in memory: one broadcast channel per watched conversion, created on the first
/// subscription, and the latest progress per conversion.
#[derive(Debug, Default)]
pub struct MemoryProgressBus {
    topics: Mutex<HashMap<ConversionId, Topic>>,
}

impl MemoryProgressBus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }
}

/// Events a slow subscriber may fall behind by before it misses progress events.
const CHANNEL_CAPACITY: usize = 64;

#[async_trait]
impl ProgressBus for MemoryProgressBus {
    async fn publish(&self, event: Event) -> Result<(), BusError> {
        let id = event.id();
        let mut topics = self.topics.lock();
        let is_progress = matches!(event, Event::Progress { .. });
        let topic = match topics.get_mut(&id) {
            Some(t) => t,
            None if is_progress => topics.entry(id).or_default(),
            None => return Ok(()),
        };
        if let Some(sender) = &topic.sender {
            if sender.receiver_count() == 0 {
                topic.sender = None;
            } else {
                let _ = sender.send(event.clone());
            }
        }
        if is_progress {
            topic.latest = Some(event);
        } else if topic.sender.is_none() && topic.latest.is_none() {
            topics.remove(&id);
        }
        Ok(())
    }

    async fn latest(&self, id: ConversionId) -> Result<Option<Event>, BusError> {
        Ok(self.topics.lock().get(&id).and_then(|t| t.latest.clone()))
    }

    async fn subscribe(&self, id: ConversionId) -> Result<EventStream, BusError> {
        let mut topics = self.topics.lock();
        let topic = topics.entry(id).or_default();
        let rx = match &topic.sender {
            Some(s) => s.subscribe(),
            None => {
                let (tx, rx) = broadcast::channel(CHANNEL_CAPACITY);
                topic.sender = Some(tx);
                rx
            }
        };
        // A lagging reader skips the events it missed (progress is a latest-value signal) and
        // still receives the newest ones, including the final status.
        Ok(BroadcastStream::new(rx)
            .filter_map(|r| async move { r.ok() })
            .boxed())
    }

    async fn forget(&self, id: ConversionId) -> Result<(), BusError> {
        let mut topics = self.topics.lock();
        if let Some(topic) = topics.get_mut(&id) {
            topic.latest = None;
            if topic
                .sender
                .as_ref()
                .is_none_or(|s| s.receiver_count() == 0)
            {
                topics.remove(&id);
            }
        }
        Ok(())
    }
}

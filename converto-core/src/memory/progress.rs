use std::sync::Arc;

use async_trait::async_trait;
use futures::StreamExt;
use parking_lot::Mutex;
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;

use super::IdMap;
use crate::ConversionId;
use crate::progress::{BusError, Event, EventStream, ProgressBus};

#[derive(Debug, Default)]
struct Topic {
    latest: Option<Event>,
    sender: Option<broadcast::Sender<Event>>,
}

type Topics = Arc<Mutex<IdMap<Topic>>>;

/// A progress bus in memory: one broadcast channel per watched conversion, created on the first
/// subscription and dropped with the last one, and the latest progress per conversion.
#[derive(Debug, Default)]
pub struct MemoryProgressBus {
    topics: Topics,
}

impl MemoryProgressBus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Conversions the bus holds anything for (a channel or a latest progress): what it costs
    /// in memory, for tests that check nothing is left behind.
    pub fn topic_count(&self) -> usize {
        self.topics.lock().len()
    }
}

/// A subscription's stream: when it is dropped (the watcher went away), the topic goes too
/// unless another subscriber or a latest progress still needs it.
struct Subscription {
    events: Option<EventStream>,
    topics: Topics,
    id: ConversionId,
}

impl futures::Stream for Subscription {
    type Item = Event;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Event>> {
        match self.events.as_mut() {
            Some(events) => events.poll_next_unpin(cx),
            None => std::task::Poll::Ready(None),
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut topics = self.topics.lock();
        // The receiver goes first, under the lock, so the count below is exact.
        drop(self.events.take());
        if let Some(topic) = topics.get_mut(&self.id) {
            if topic
                .sender
                .as_ref()
                .is_some_and(|s| s.receiver_count() == 0)
            {
                topic.sender = None;
            }
            if topic.sender.is_none() && topic.latest.is_none() {
                topics.remove(&self.id);
            }
        }
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
        let events = BroadcastStream::new(rx)
            .filter_map(|r| async move { r.ok() })
            .boxed();
        Ok(Subscription {
            events: Some(events),
            topics: Arc::clone(&self.topics),
            id,
        }
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

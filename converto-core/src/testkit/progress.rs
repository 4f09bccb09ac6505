//! The `ProgressBus` conformance suite.

use std::sync::Arc;

use chrono::Utc;
use futures::StreamExt;

use super::within;
use crate::ConversionId;
use crate::conversion::{Progress, Status};
use crate::progress::{Event, ProgressBus};

fn progress(id: ConversionId, percent: u8) -> Event {
    Event::Progress {
        id,
        attempt: 1,
        progress: Progress::new(percent, Some(format!("step {percent}"))),
    }
}

fn status(id: ConversionId, status: Status) -> Event {
    Event::Status {
        id,
        status,
        attempt: 1,
        error: None,
        at: Utc::now(),
    }
}

/// Runs every check, each on a fresh bus from `make`.
pub async fn run_progress_suite(make: impl AsyncFn() -> Arc<dyn ProgressBus>) {
    subscribers_get_their_events_in_order(make().await.as_ref()).await;
    latest_value_and_forget(make().await.as_ref()).await;
    every_subscriber_gets_the_terminal_event(make().await.as_ref()).await;
}

/// A subscriber gets its conversion's events, in order, and none of another's.
pub async fn subscribers_get_their_events_in_order(bus: &dyn ProgressBus) {
    let id = ConversionId::new();
    let other = ConversionId::new();
    bus.publish(progress(id, 1))
        .await
        .expect("publish with no subscriber");
    let mut sub = bus.subscribe(id).await.expect("subscribe");
    let sent = vec![
        progress(id, 10),
        progress(other, 50),
        progress(id, 20),
        status(id, Status::Succeeded),
    ];
    for e in &sent {
        bus.publish(e.clone()).await.expect("publish");
    }
    let mut got = Vec::new();
    while got.len() < 3 {
        let e = within(10, "subscribed events", sub.next())
            .await
            .expect("stream ended early");
        got.push(e);
    }
    let want: Vec<_> = sent.into_iter().filter(|e| e.id() == id).collect();
    assert_eq!(got, want);
}

/// The latest progress is kept (not status events) until forgotten.
pub async fn latest_value_and_forget(bus: &dyn ProgressBus) {
    let id = ConversionId::new();
    assert_eq!(bus.latest(id).await.expect("latest"), None);
    let sixty = progress(id, 60);
    bus.publish(progress(id, 30)).await.expect("publish");
    bus.publish(sixty.clone()).await.expect("publish");
    bus.publish(status(id, Status::Running))
        .await
        .expect("publish");
    assert_eq!(bus.latest(id).await.expect("latest"), Some(sixty));
    assert_eq!(bus.latest(ConversionId::new()).await.expect("latest"), None);
    bus.forget(id).await.expect("forget");
    assert_eq!(bus.latest(id).await.expect("latest"), None);
}

/// Two subscribers both receive a burst ending in a terminal status, and the terminal status
/// is never dropped, even for a reader that falls behind.
pub async fn every_subscriber_gets_the_terminal_event(bus: &dyn ProgressBus) {
    let id = ConversionId::new();
    let mut a = bus.subscribe(id).await.expect("subscribe");
    let mut b = bus.subscribe(id).await.expect("subscribe");
    for p in 0..=100u8 {
        bus.publish(progress(id, p)).await.expect("publish");
    }
    bus.publish(status(id, Status::Succeeded))
        .await
        .expect("publish");
    for (name, sub) in [("a", &mut a), ("b", &mut b)] {
        let mut last_percent = None;
        loop {
            let e = within(10, "terminal event", sub.next())
                .await
                .unwrap_or_else(|| panic!("{name}: stream ended"));
            match e {
                Event::Progress { progress, .. } => {
                    assert!(
                        last_percent.is_none_or(|l| progress.percent > l),
                        "{name}: progress out of order"
                    );
                    last_percent = Some(progress.percent);
                }
                Event::Status { status, .. } => {
                    assert_eq!(status, Status::Succeeded);
                    break;
                }
            }
        }
    }
}

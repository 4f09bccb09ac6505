//! `RecentRecords`: a kept record spares a transition its read, and never makes one wrong.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use chrono::Utc;
use converto_core::conversion::{Conversion, Status, Transition};
use converto_core::store::{RecentRecords, StoreError};
use converto_core::testkit::store::sample;
use parking_lot::Mutex;

/// One stored record with a compare-and-set, counting reads.
struct Stored {
    record: Mutex<Conversion>,
    reads: AtomicUsize,
}

impl Stored {
    fn new(record: Conversion) -> Arc<Self> {
        Arc::new(Self {
            record: Mutex::new(record),
            reads: AtomicUsize::new(0),
        })
    }

    async fn transition(
        self: &Arc<Self>,
        recent: &RecentRecords,
        t: &Transition,
    ) -> Result<Option<Conversion>, StoreError> {
        let id = self.record.lock().id;
        recent
            .transition(
                id,
                t,
                Utc::now,
                8,
                || {
                    let me = Arc::clone(self);
                    async move {
                        me.reads.fetch_add(1, Ordering::SeqCst);
                        Ok(me.record.lock().clone())
                    }
                },
                |next, version| {
                    let me = Arc::clone(self);
                    async move {
                        let mut stored = me.record.lock();
                        if stored.version != version {
                            return Ok(None);
                        }
                        *stored = next.clone();
                        Ok(Some(next))
                    }
                },
            )
            .await
    }
}

/// A queued record, stored, and an empty cache.
fn queued() -> (Conversion, Arc<Stored>, RecentRecords) {
    let record = sample("t").into_record(Utc::now());
    let stored = Stored::new(record.clone());
    (record, stored, RecentRecords::new(16))
}

/// The record a transition wrote.
fn written(r: Result<Option<Conversion>, StoreError>) -> Conversion {
    r.expect("transition").expect("written")
}

fn started(attempt: u32) -> Transition {
    Transition::Start { attempt }
}

#[tokio::test]
async fn a_kept_record_spares_the_read() {
    let (record, stored, recent) = queued();
    recent.keep(&record);
    let running = written(stored.transition(&recent, &started(1)).await);
    assert_eq!(running.status, Status::Running);
    assert_eq!(stored.reads.load(Ordering::SeqCst), 0);
    // The written record is kept for the next transition too.
    let cancelled = written(stored.transition(&recent, &Transition::Cancel).await);
    assert_eq!(cancelled.status, Status::Cancelled);
    assert_eq!(stored.reads.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn an_old_copy_loses_the_compare_and_set_and_the_stored_record_decides() {
    let (record, stored, recent) = queued();
    recent.keep(&record);
    // Another writer cancels it behind the kept copy's back.
    {
        let mut s = stored.record.lock();
        Transition::Cancel
            .apply(&mut s, Utc::now())
            .expect("cancel");
    }
    let refused = stored.transition(&recent, &started(1)).await;
    assert!(
        matches!(refused, Err(StoreError::Conflict(ref c)) if c.status == Status::Cancelled),
        "{refused:?}"
    );
    assert_eq!(stored.record.lock().status, Status::Cancelled);
    assert!(stored.reads.load(Ordering::SeqCst) >= 1);
}

#[tokio::test]
async fn a_transition_an_old_copy_refuses_is_asked_of_the_stored_record() {
    let (record, stored, recent) = queued();
    // The kept copy says cancelled (it was never written: say, a write whose answer was lost),
    // while the stored record is still queued.
    let mut old = record.clone();
    Transition::Cancel
        .apply(&mut old, Utc::now())
        .expect("cancel");
    recent.keep(&old);
    let running = written(stored.transition(&recent, &started(1)).await);
    assert_eq!(running.status, Status::Running);
    assert_eq!(stored.record.lock().status, Status::Running);
    assert_eq!(stored.reads.load(Ordering::SeqCst), 1);
}

#[test]
fn the_cache_stays_within_its_capacity() {
    let recent = RecentRecords::new(2);
    let records: Vec<Conversion> = (0..5)
        .map(|_| sample("t").into_record(Utc::now()))
        .collect();
    for r in &records {
        recent.keep(r);
    }
    assert!(recent.len() <= 2, "{}", recent.len());
}

#[test]
fn large_records_are_not_kept() {
    let recent = RecentRecords::new(16);
    let mut big = sample("t").into_record(Utc::now());
    big.options = serde_json::json!({ "text": "x".repeat(RecentRecords::MAX_RECORD_BYTES) });
    recent.keep(&big);
    assert!(recent.is_empty());
    let mut nested = sample("t").into_record(Utc::now());
    nested.options = serde_json::json!(vec![vec![1; 64]; 64]);
    recent.keep(&nested);
    assert!(recent.is_empty());
    let small = sample("t").into_record(Utc::now());
    recent.keep(&small);
    assert_eq!(recent.len(), 1);
    // A record that grew past the limit is forgotten, not left behind in its old form.
    let mut grown = small.clone();
    grown.description = Some("y".repeat(RecentRecords::MAX_RECORD_BYTES));
    recent.keep(&grown);
    assert!(recent.is_empty());
}

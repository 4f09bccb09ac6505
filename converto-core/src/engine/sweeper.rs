use std::sync::Arc;

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use super::Inner;
use crate::conversion::Status;
use crate::queue::{JobSpec, after_neg};
use crate::store::ListQuery;

/// Records examined per sweep at most, so one sweep stays cheap however large the backlog.
const SWEEP_LIMIT: usize = 10_000;

/// Every `sweep_interval`, re-enqueues queued or running records older than `sweep_min_age`
/// that have no live queue entry: work that fell between the record and the queue (a crash
/// between the two writes, or a queue that lost its data).
pub(crate) async fn run(inner: Arc<Inner>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(inner.config.sweep_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        match sweep_once(&inner).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                requeued = n,
                "sweeper re-enqueued conversions with no queue entry"
            ),
            Err(e) => tracing::warn!(error = %e, "sweep failed"),
        }
    }
}

/// One sweep; returns how many records were re-enqueued.
pub(crate) async fn sweep_once(inner: &Inner) -> Result<usize, super::EngineError> {
    let mut query = ListQuery {
        statuses: vec![Status::Queued, Status::Running],
        updated_before: Some(after_neg(Utc::now(), inner.config.sweep_min_age)),
        limit: 500,
        ..ListQuery::default()
    };
    let mut seen = 0;
    let mut requeued = 0;
    loop {
        let page = inner.backends.store.list(&query).await?;
        for c in &page.items {
            if !inner.backends.queue.contains(c.id).await? {
                let job = JobSpec {
                    id: c.id,
                    tenant: c.tenant.clone(),
                    priority: c.priority,
                    not_before: Utc::now(),
                    attempts: c.attempts,
                };
                if inner.backends.queue.enqueue(job).await? {
                    requeued += 1;
                }
            }
        }
        seen += page.items.len();
        match page.next_cursor {
            Some(cur) if seen < SWEEP_LIMIT => query.cursor = Some(cur),
            _ => return Ok(requeued),
        }
    }
}

/// Every `janitor_interval`, removes uploads nobody claimed (see
/// [`Engine::remove_unclaimed_uploads`](super::Engine::remove_unclaimed_uploads)).
pub(crate) async fn run_janitor(inner: Arc<Inner>, stop: CancellationToken) {
    let engine = super::Engine { inner };
    let mut tick = tokio::time::interval(engine.inner.config.janitor_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        match engine.remove_unclaimed_uploads().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "removed unclaimed uploads past their expiry"),
            Err(e) => tracing::warn!(error = %e, "could not clean up unclaimed uploads"),
        }
    }
}

impl super::Engine {
    /// Runs one sweep now (the workers also run it every `sweep_interval`); returns how many
    /// conversions were re-enqueued.
    pub async fn sweep(&self) -> Result<usize, super::EngineError> {
        sweep_once(&self.inner).await
    }
}

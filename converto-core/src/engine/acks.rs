//! Batched acknowledgements: the acks of jobs finishing at about the same time go to the queue
//! as one [`JobQueue::ack_many`] (one statement on PostgreSQL, one script on Redis) instead of
//! one round trip each.
//!
//! No task of its own: the first job to ack while no batch is open leads it. The leader waits
//! until the batch is full ([`EngineConfig::ack_batch`](super::EngineConfig::ack_batch)) or
//! [`EngineConfig::ack_delay`](super::EngineConfig::ack_delay) has passed, takes the batch,
//! sends it, and hands each job its own answer; the next ack opens the next batch meanwhile.
//! Every job waits for its ack's answer before it goes on (publishing its terminal status), so
//! an event never runs ahead of the queue, and `run_workers`' drain flushes every batch: there
//! is nothing left to flush on shutdown.

use futures::future::BoxFuture;
use parking_lot::Mutex;
use tokio::sync::{Notify, oneshot};

use crate::queue::{JobQueue, Lease, QueueError};

type Answer = oneshot::Sender<Result<(), QueueError>>;

#[derive(Debug, Default)]
struct Open {
    leases: Vec<Lease>,
    answers: Vec<Answer>,
    /// A leader is waiting to send this batch.
    led: bool,
}

/// The open batch of acks.
#[derive(Debug, Default)]
pub(crate) struct AckBatcher {
    open: Mutex<Open>,
    full: Notify,
}

impl AckBatcher {
    /// Acks `lease`, in a batch when the engine's configuration and the queue allow it. Acking
    /// alone is the queue's own future, without a wrapper around it.
    pub(crate) fn ack<'a>(
        &'a self,
        queue: &'a dyn JobQueue,
        config: &'a super::EngineConfig,
        lease: &'a Lease,
    ) -> BoxFuture<'a, Result<(), QueueError>> {
        if config.ack_batch <= 1 || !queue.batches_acks() {
            return queue.ack(lease);
        }
        Box::pin(self.ack_batched(queue, config, lease))
    }

    /// [`AckBatcher::ack`] in a batch.
    async fn ack_batched(
        &self,
        queue: &dyn JobQueue,
        config: &super::EngineConfig,
        lease: &Lease,
    ) -> Result<(), QueueError> {
        let (tx, rx) = oneshot::channel();
        let lead = {
            let mut open = self.open.lock();
            open.leases.push(lease.clone());
            open.answers.push(tx);
            if open.leases.len() >= config.ack_batch {
                self.full.notify_one();
            }
            !std::mem::replace(&mut open.led, true)
        };
        if lead {
            let mut guard = Leading {
                batcher: self,
                armed: true,
            };
            if !config.ack_delay.is_zero() {
                let _ = tokio::time::timeout(config.ack_delay, self.full.notified()).await;
            }
            guard.armed = false;
            let (leases, answers) = self.take();
            send(queue, leases, answers).await;
        }
        match rx.await {
            Ok(answer) => answer,
            // The leader was dropped before it answered (its task was aborted, as in a crash):
            // ack alone.
            Err(_) => queue.ack(lease).await,
        }
    }
}

impl AckBatcher {
    /// Closes the open batch and takes it.
    fn take(&self) -> (Vec<Lease>, Vec<Answer>) {
        let mut open = self.open.lock();
        open.led = false;
        (
            std::mem::take(&mut open.leases),
            std::mem::take(&mut open.answers),
        )
    }
}

/// Held by a leader while it waits: should its task be dropped there (aborted, as in a crash),
/// the batch is closed and its jobs, their answers gone, ack alone; the next ack leads anew.
struct Leading<'a> {
    batcher: &'a AckBatcher,
    armed: bool,
}

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        if self.armed {
            drop(self.batcher.take());
        }
    }
}

async fn send(queue: &dyn JobQueue, leases: Vec<Lease>, answers: Vec<Answer>) {
    match queue.ack_many(&leases).await {
        Ok(lost) => {
            for (lease, answer) in leases.iter().zip(answers) {
                let _ = answer.send(if lost.contains(&lease.id) {
                    Err(QueueError::LeaseLost { id: lease.id })
                } else {
                    Ok(())
                });
            }
        }
        Err(e) => {
            // The batch failed as a whole: each job gets its own try and its own answer.
            tracing::debug!(error = %e, jobs = leases.len(), "batched ack failed; acking one by one");
            for (lease, answer) in leases.iter().zip(answers) {
                let _ = answer.send(queue.ack(lease).await);
            }
        }
    }
}

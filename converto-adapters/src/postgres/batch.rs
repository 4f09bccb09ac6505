//! Concurrent calls grouped into one statement: [`Batcher`].
//!
//! A busy engine runs dozens of jobs at once, and each one reads and writes its record, and
//! publishes its events, one call at a time. As separate statements, every write is its own
//! transaction and waits for its own commit to reach the disk, and every call holds a pooled
//! connection for a round trip: the pool, not the server, sets the pace. A [`Batcher`] lets
//! those calls meet: whatever calls arrive while earlier batches are running are sent together,
//! as one statement over arrays (`unnest`), in one transaction and one commit. A call that
//! finds a lane free is sent at once, so batching never adds a wait of its own; it only gathers
//! what would otherwise queue for a connection.

use std::sync::Arc;

use futures::future::BoxFuture;
use parking_lot::Mutex;
use sqlx::PgPool;
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::PostgresError;

/// What a batch statement runs: the requests in, one answer per request out, in order.
pub(super) type Exec<Req, Resp> =
    Arc<dyn Fn(Vec<Req>) -> BoxFuture<'static, Result<Vec<Resp>, sqlx::Error>> + Send + Sync>;

/// One waiting call: its request and where its answer goes.
type Pending<Req, Resp> = (Req, oneshot::Sender<Result<Resp, Arc<sqlx::Error>>>);

/// Calls waiting for a lane, at most (callers beyond it wait to hand theirs over).
const BACKLOG: usize = 4096;

/// Groups concurrent calls into batches of at most `max`, with at most `lanes` batches running
/// at once (each on its own pooled connection).
///
/// The dispatching task is started by the first call, on that call's runtime, and started
/// again should it have ended with its runtime.
pub(super) struct Batcher<Req, Resp> {
    exec: Exec<Req, Resp>,
    max: usize,
    lanes: usize,
    tx: Mutex<Option<mpsc::Sender<Pending<Req, Resp>>>>,
}

impl<Req, Resp> std::fmt::Debug for Batcher<Req, Resp> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher")
            .field("max", &self.max)
            .field("lanes", &self.lanes)
            .finish_non_exhaustive()
    }
}

impl<Req, Resp> Batcher<Req, Resp>
where
    Req: Send + 'static,
    Resp: Send + 'static,
{
    /// A batcher running `exec` over batches of at most `max` requests, `lanes` at a time.
    pub(super) fn new(max: usize, lanes: usize, exec: Exec<Req, Resp>) -> Self {
        Self {
            exec,
            max: max.max(1),
            lanes: lanes.max(1),
            tx: Mutex::new(None),
        }
    }

    /// A batcher whose statements run `run` on `pool` (each batch gets a handle to it).
    pub(super) fn on_pool<F, Fut>(pool: &PgPool, max: usize, lanes: usize, run: F) -> Self
    where
        F: Fn(PgPool, Vec<Req>) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<Vec<Resp>, sqlx::Error>> + Send + 'static,
    {
        let pool = pool.clone();
        Self::new(
            max,
            lanes,
            Arc::new(move |reqs| Box::pin(run(pool.clone(), reqs))),
        )
    }

    /// Sends `req` with whatever else is waiting, and returns its answer. When the batch's
    /// statement fails, every call in it gets that error.
    pub(super) async fn call(&self, req: Req) -> Result<Resp, PostgresError> {
        let (reply, answer) = oneshot::channel();
        let mut pending = (req, reply);
        // Twice at most: a dispatcher that ended with an earlier runtime is replaced once.
        for _ in 0..2 {
            let tx = self.sender();
            match tx.send(pending).await {
                Ok(()) => {
                    return match answer.await {
                        Ok(Ok(resp)) => Ok(resp),
                        Ok(Err(e)) => Err(PostgresError::Batched(e)),
                        // The dispatcher ended with the batch in hand (its runtime shut down).
                        Err(_) => Err(PostgresError::Sql(sqlx::Error::WorkerCrashed)),
                    };
                }
                Err(mpsc::error::SendError(back)) => pending = back,
            }
        }
        Err(PostgresError::Sql(sqlx::Error::WorkerCrashed))
    }

    /// The running dispatcher's sender, starting a dispatcher if there is none (or it ended).
    fn sender(&self) -> mpsc::Sender<Pending<Req, Resp>> {
        let mut tx = self.tx.lock();
        match tx.as_ref() {
            Some(t) if !t.is_closed() => t.clone(),
            _ => {
                let (t, rx) = mpsc::channel(BACKLOG);
                tokio::spawn(dispatch(rx, Arc::clone(&self.exec), self.max, self.lanes));
                *tx = Some(t.clone());
                t
            }
        }
    }
}

/// Takes the waiting calls in batches: a batch starts as soon as a lane is free, with every
/// call waiting by then (up to `max`). Ends when every sender is gone.
async fn dispatch<Req, Resp>(
    mut rx: mpsc::Receiver<Pending<Req, Resp>>,
    exec: Exec<Req, Resp>,
    max: usize,
    lanes: usize,
) where
    Req: Send + 'static,
    Resp: Send + 'static,
{
    let lanes = Arc::new(Semaphore::new(lanes));
    while let Some(first) = rx.recv().await {
        // Calls that arrive while every lane is busy gather behind `first`.
        let Ok(lane) = Arc::clone(&lanes).acquire_owned().await else {
            return;
        };
        let mut batch = Vec::with_capacity(max.min(64));
        batch.push(first);
        while batch.len() < max {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let exec = Arc::clone(&exec);
        tokio::spawn(async move {
            let (reqs, replies): (Vec<Req>, Vec<_>) = batch.into_iter().unzip();
            match exec(reqs).await {
                Ok(resps) => {
                    // A short answer leaves the rest without one: they see a lost worker.
                    for (reply, resp) in replies.into_iter().zip(resps) {
                        let _ = reply.send(Ok(resp));
                    }
                }
                Err(e) => {
                    let e = Arc::new(e);
                    for reply in replies {
                        let _ = reply.send(Err(Arc::clone(&e)));
                    }
                }
            }
            drop(lane);
        });
    }
}

/// Splits a batch into passes in which no key stands twice (a statement over arrays may touch
/// each row only once), each pass sorted by key: every batch then locks its rows in key order,
/// so concurrent batches never deadlock. The passes hold indexes into `keys`.
pub(super) fn unique_passes<K: Ord + std::hash::Hash + Copy>(keys: &[K]) -> Vec<Vec<usize>> {
    let mut passes = Vec::new();
    let mut left: Vec<usize> = (0..keys.len()).collect();
    while !left.is_empty() {
        let mut seen = std::collections::HashSet::with_capacity(left.len());
        let (mut now, later): (Vec<usize>, Vec<usize>) =
            left.into_iter().partition(|&i| seen.insert(keys[i]));
        now.sort_by_key(|&i| keys[i]);
        passes.push(now);
        left = later;
    }
    passes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_never_repeat_a_key_and_keep_every_index() {
        let keys = [3, 1, 3, 2, 1, 3];
        let passes = unique_passes(&keys);
        assert_eq!(passes, vec![vec![1, 3, 0], vec![4, 2], vec![5]]);
        let mut all: Vec<usize> = passes.concat();
        all.sort_unstable();
        assert_eq!(all, (0..keys.len()).collect::<Vec<_>>());
        assert!(unique_passes::<u8>(&[]).is_empty());
    }

    #[tokio::test]
    async fn concurrent_calls_share_batches_and_get_their_own_answers() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&sizes);
        let batcher: Batcher<u32, u32> = Batcher::new(
            8,
            1,
            Arc::new(move |reqs: Vec<u32>| {
                seen.lock().push(reqs.len());
                Box::pin(async move { Ok(reqs.into_iter().map(|r| r * 10).collect()) })
            }),
        );
        let answers = futures::future::join_all((0..20).map(|i| batcher.call(i))).await;
        for (i, a) in answers.into_iter().enumerate() {
            assert_eq!(a.expect("answer"), i as u32 * 10);
        }
        let sizes = sizes.lock().clone();
        assert_eq!(sizes.iter().sum::<usize>(), 20);
        assert!(sizes.iter().all(|&n| n <= 8), "{sizes:?}");
        // With one lane, calls made while a batch runs gather: fewer batches than calls.
        assert!(sizes.len() < 20, "{sizes:?}");
    }

    #[tokio::test]
    async fn a_failed_statement_fails_every_call_in_its_batch() {
        let batcher: Batcher<u32, u32> = Batcher::new(
            8,
            1,
            Arc::new(|_| Box::pin(async { Err(sqlx::Error::RowNotFound) })),
        );
        let answers = futures::future::join_all((0..3).map(|i| batcher.call(i))).await;
        assert!(
            answers
                .iter()
                .all(|a| matches!(a, Err(PostgresError::Batched(e)) if matches!(**e, sqlx::Error::RowNotFound)))
        );
    }
}

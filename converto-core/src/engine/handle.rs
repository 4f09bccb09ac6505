//! The embedding conveniences: a handle on running workers, waiting for a conversion, reading
//! an artifact.

use bytes::{Bytes, BytesMut};
use futures::{StreamExt, TryStreamExt};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{Engine, EngineError};
use crate::ConversionId;
use crate::blob::{BlobError, ByteStream};
use crate::conversion::Conversion;

/// Workers started by [`Engine::start_workers`]: keep it, and call
/// [`shutdown`](WorkerHandle::shutdown) to stop them gracefully. Dropping it without a shutdown
/// leaves the workers running until the runtime ends.
#[derive(Debug)]
#[must_use = "dropping the handle leaves the workers running with no way to stop them"]
pub struct WorkerHandle {
    stop: CancellationToken,
    task: JoinHandle<Result<(), EngineError>>,
}

impl WorkerHandle {
    /// Graceful shutdown: no new work is reserved, running conversions get the engine's
    /// `shutdown_grace`, the rest are handed back to the queue. Resolves when the workers are
    /// done.
    pub async fn shutdown(self) -> Result<(), EngineError> {
        self.stop.cancel();
        self.join().await
    }

    /// The token that stops the workers (cancel it from a signal handler, say); then
    /// [`join`](WorkerHandle::join) waits for the drain.
    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Waits for the workers to end (after the stop token was cancelled).
    pub async fn join(self) -> Result<(), EngineError> {
        match self.task.await {
            Ok(r) => r,
            // The worker loop panicked or was aborted: resume the panic in the caller, where
            // it belongs, rather than inventing an engine error for it.
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Ok(()),
        }
    }

    /// Stops the workers as a crash would: no drain, no hand-back; their leases expire and the
    /// jobs are delivered again. For tests of recovery.
    pub async fn abort(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

impl Engine {
    /// Starts this engine's workers on the current tokio runtime and returns their handle.
    pub fn start_workers(&self) -> WorkerHandle {
        let stop = CancellationToken::new();
        let (engine, token) = (self.clone(), stop.clone());
        WorkerHandle {
            stop,
            task: tokio::spawn(async move {
                // Webhook deliveries run beside the workers, from their own queue, in the same
                // task (so `abort` stops both), until the workers stop.
                let webhooks = engine.inner.webhooks.clone();
                let workers = async {
                    let result = engine.run_workers(token.clone()).await;
                    token.cancel();
                    result
                };
                let deliveries = async {
                    if let Some(w) = webhooks {
                        w.run(token.clone()).await;
                    }
                };
                tokio::join!(workers, deliveries).0
            }),
        }
    }

    /// Waits until the conversion is finished (succeeded, failed or cancelled) and returns its
    /// record. Follows the progress bus, so it needs workers running somewhere (here or in a
    /// process sharing the backends); wrap it in a timeout to bound the wait.
    pub async fn wait(&self, id: ConversionId) -> Result<Conversion, EngineError> {
        let mut events = self.watch(id).await?;
        while let Some(event) = events.next().await {
            if event.is_terminal() {
                break;
            }
        }
        // The stream ends at the terminal status, or early if the bus went away: the store
        // holds the truth either way.
        let record = self.get(id).await?;
        if record.status.is_terminal() {
            return Ok(record);
        }
        // The bus lost us (a backend reconnect): poll the record until it finishes.
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            let record = self.get(id).await?;
            if record.status.is_terminal() {
                return Ok(record);
            }
        }
    }

    /// Streams one artifact of a conversion, by name (`output.obj`, `720p.jpeg`, ...).
    pub async fn read_artifact(
        &self,
        id: ConversionId,
        name: &str,
    ) -> Result<ByteStream, EngineError> {
        let (_, read) = self.open_artifact(id, name, None).await?;
        Ok(read.body)
    }

    /// Reads one artifact into memory. Artifacts can be large: prefer
    /// [`read_artifact`](Engine::read_artifact) for anything not known to be small.
    pub async fn read_artifact_bytes(
        &self,
        id: ConversionId,
        name: &str,
    ) -> Result<Bytes, EngineError> {
        let (artifact, read) = self.open_artifact(id, name, None).await?;
        let capacity = usize::try_from(artifact.size.min(64 * 1024 * 1024)).unwrap_or(0);
        let buf = read
            .body
            .map_err(|e| EngineError::Blob(BlobError::backend("artifact read", true, e)))
            .try_fold(
                BytesMut::with_capacity(capacity),
                |mut buf, chunk| async move {
                    buf.extend_from_slice(&chunk);
                    Ok(buf)
                },
            )
            .await?;
        Ok(buf.freeze())
    }
}

//! Retrying as a wrapper: [`RetryingStore`] implements [`ConversionStore`] around another
//! store and retries its temporary failures, the way object_store's `LimitStore` adds a limit
//! around any store. The engine's workers record their verdicts through one, so a brief
//! database outage does not lose a result; no retry loop lives inside the worker.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::ConversionId;
use crate::conversion::{Conversion, NewConversion, Status, Transition};
use crate::store::{ConversionStore, Created, ListQuery, Page, StoreError};

/// How often and how patiently to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries after the first.
    pub retries: u32,
    /// The first pause; each next one doubles, up to `max_delay`.
    pub first_delay: Duration,
    /// The longest pause.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    /// Six retries from 50 ms, doubling up to 5 s: about 3 s of outage is ridden out.
    fn default() -> Self {
        Self {
            retries: 6,
            first_delay: Duration::from_millis(50),
            max_delay: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// Runs `op`, again after a pause while it fails with a temporary error.
    pub async fn run<T, F, Fut>(&self, what: &'static str, mut op: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let mut delay = self.first_delay;
        for _ in 0..self.retries {
            match op().await {
                Err(e) if e.is_temporary() => {
                    tracing::warn!(error = %e, operation = what, ?delay, "store call failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(self.max_delay);
                }
                other => return other,
            }
        }
        op().await
    }
}

/// A [`ConversionStore`] that retries the inner store's temporary failures of reads and
/// guarded transitions. `create` and `delete` are passed through once: their retry is not
/// safe to make blindly (a lost answer to a committed create would come back as a conflict),
/// so their callers decide.
///
/// A retried transition may meet its own earlier try, committed although its answer was lost:
/// it then fails with the transition's conflict, showing the record where the transition
/// leads. The engine recognises that case; other callers should too.
#[derive(Debug, Clone)]
pub struct RetryingStore {
    inner: Arc<dyn ConversionStore>,
    policy: RetryPolicy,
}

impl RetryingStore {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn ConversionStore>, policy: RetryPolicy) -> Self {
        Self { inner, policy }
    }
}

#[async_trait]
impl ConversionStore for RetryingStore {
    async fn create(&self, new: NewConversion) -> Result<Created, StoreError> {
        self.inner.create(new).await
    }

    async fn get(&self, id: ConversionId) -> Result<Conversion, StoreError> {
        self.policy.run("get", || self.inner.get(id)).await
    }

    async fn list(&self, query: &ListQuery) -> Result<Page, StoreError> {
        self.policy.run("list", || self.inner.list(query)).await
    }

    async fn transition(
        &self,
        id: ConversionId,
        transition: &Transition,
    ) -> Result<Conversion, StoreError> {
        self.policy
            .run("transition", || self.inner.transition(id, transition))
            .await
    }

    async fn delete(&self, id: ConversionId) -> Result<Conversion, StoreError> {
        self.inner.delete(id).await
    }

    async fn count_by_status(&self) -> Result<BTreeMap<Status, u64>, StoreError> {
        self.policy
            .run("count", || self.inner.count_by_status())
            .await
    }

    async fn tenant_usage(&self, tenant: &str) -> Result<crate::store::TenantUsage, StoreError> {
        self.policy
            .run("usage", || self.inner.tenant_usage(tenant))
            .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn temporary_failures_are_retried_and_permanent_ones_are_not() {
        let policy = RetryPolicy::default();
        let calls = AtomicU32::new(0);
        let r: Result<u32, StoreError> = policy
            .run("test", || async {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                if n < 3 {
                    Err(StoreError::backend("t", true, "down"))
                } else {
                    Ok(n)
                }
            })
            .await;
        assert_eq!(r.ok(), Some(3));
        calls.store(0, Ordering::SeqCst);
        let r: Result<u32, StoreError> = policy
            .run("test", || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(StoreError::backend("t", false, "refused"))
            })
            .await;
        assert!(r.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}

//! Per-tenant limits in the engine: a tenant at its running limit waits while other tenants'
//! jobs run. Asserted by state and order (who ran, how many at once), never by time.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Semaphore;

use converto_core::converter::{
    ConvertContext, ConvertError, ConvertRequest, Converter, Output, Route,
};
use converto_core::engine::EngineConfig;
use converto_core::memory::{MemoryJobQueue, MemoryTenantStore};
use converto_core::queue::JobQueue;
use converto_core::tenants::{
    LimitOverrides, LimitSource, StaticLimits, StoredLimits, TenantLimits, TenantStore,
};
use converto_core::testkit::within;
use converto_core::{ConversionId, Engine, Format, Status, Submission, SubmitInput};

fn f(s: &str) -> Format {
    Format::new(s).unwrap_or_else(|e| panic!("{e}"))
}

/// Records how many jobs of each tenant run at once; tenant `a`'s jobs wait for a permit.
#[derive(Debug)]
struct Gated {
    tenant_of: Mutex<HashMap<ConversionId, String>>,
    running: Mutex<HashMap<String, u32>>,
    most: Mutex<HashMap<String, u32>>,
    gate: Semaphore,
}

#[async_trait]
impl Converter for Gated {
    fn name(&self) -> &str {
        "gated"
    }
    fn routes(&self) -> Vec<Route> {
        vec![Route::new(f("txt"), f("upper"))]
    }
    async fn convert(
        &self,
        req: &ConvertRequest,
        _ctx: &ConvertContext,
    ) -> Result<Vec<Output>, ConvertError> {
        let tenant = self
            .tenant_of
            .lock()
            .get(&req.id)
            .cloned()
            .unwrap_or_default();
        {
            let mut running = self.running.lock();
            let n = running.entry(tenant.clone()).or_default();
            *n += 1;
            let mut most = self.most.lock();
            let m = most.entry(tenant.clone()).or_default();
            *m = (*m).max(*n);
        }
        if tenant == "a" {
            // Never closed: an error would only mean the test is over.
            if let Ok(permit) = self.gate.acquire().await {
                permit.forget();
            }
        }
        *self.running.lock().entry(tenant).or_default() -= 1;
        Ok(vec![Output::bytes(
            "out.upper",
            f("upper"),
            Bytes::from_static(b"OK"),
        )])
    }
}

impl Default for Gated {
    fn default() -> Self {
        Self {
            tenant_of: Mutex::default(),
            running: Mutex::default(),
            most: Mutex::default(),
            gate: Semaphore::new(0),
        }
    }
}

async fn submit(engine: &Engine, conv: &Gated, tenant: &str, priority: i32) -> ConversionId {
    let sub = Submission::new(
        f("upper"),
        SubmitInput::bytes(Bytes::from_static(b"hello"), Some("a.txt".into())),
    )
    .priority(priority);
    let id = engine
        .tenant(tenant)
        .submit(sub)
        .await
        .expect("submit")
        .conversion
        .id;
    conv.tenant_of.lock().insert(id, tenant.to_owned());
    id
}

/// Tenant A may run one conversion at a time and queues five, older and of higher priority
/// than tenant B's one; two worker slots. A never has two running, and B's job runs while A's
/// first one still holds its slot; A's jobs then run one after another, each on its first
/// attempt (skipping and handing back count no attempt).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_at_its_running_limit_does_not_block_others() {
    let conv = Arc::new(Gated::default());
    let limits = StaticLimits {
        defaults: TenantLimits::default(),
        tenants: [(
            "a".to_owned(),
            TenantLimits {
                max_running: 1,
                ..TenantLimits::default()
            },
        )]
        .into(),
    };
    let engine = Engine::builder()
        .converter(conv.clone())
        .config(EngineConfig::default().concurrency(2))
        .limits(Arc::new(limits))
        .build()
        .expect("engine");
    let mut a = Vec::new();
    for _ in 0..5 {
        a.push(submit(&engine, &conv, "a", 5).await);
    }
    let b = submit(&engine, &conv, "b", 0).await;
    let workers = engine.start_workers();

    let done = within(60, "tenant B's job", engine.wait(b))
        .await
        .expect("wait");
    assert_eq!(done.status, Status::Succeeded);
    // A's first job still holds its slot (its converter waits for the gate).
    let usage = engine
        .backends()
        .store
        .tenant_usage("a")
        .await
        .expect("usage");
    assert_eq!((usage.running, usage.queued), (1, 4));

    conv.gate.add_permits(a.len());
    for id in &a {
        let r = within(60, "tenant A's jobs", engine.wait(*id))
            .await
            .expect("wait");
        assert_eq!(r.status, Status::Succeeded);
        assert_eq!(
            r.attempts, 1,
            "a job held back by the limit had an attempt counted"
        );
    }
    assert_eq!(
        conv.most.lock().get("a").copied(),
        Some(1),
        "tenant A ran two at once"
    );
    workers.shutdown().await.expect("shutdown");
}

/// Overrides from the tenant store win over the configuration, and are re-read after the
/// cache lifetime.
#[tokio::test]
async fn stored_overrides_win_over_the_configuration() {
    let store = Arc::new(MemoryTenantStore::new());
    let base = StaticLimits {
        defaults: TenantLimits {
            max_queued: 7,
            ..TenantLimits::default()
        },
        tenants: [(
            "acme".to_owned(),
            TenantLimits {
                max_queued: 3,
                max_running: 2,
                ..TenantLimits::default()
            },
        )]
        .into(),
    };
    let limits = StoredLimits::new(base, store.clone() as Arc<dyn TenantStore>)
        .with_ttl(std::time::Duration::ZERO);
    assert_eq!(limits.limits("acme").await.max_queued, 3);
    assert_eq!(limits.limits("other").await.max_queued, 7);
    store
        .put(
            "acme",
            &LimitOverrides {
                max_queued: Some(1),
                ..LimitOverrides::default()
            },
        )
        .await
        .expect("put");
    let acme = limits.limits("acme").await;
    assert_eq!((acme.max_queued, acme.max_running), (1, 2));
    store.remove("acme").await.expect("remove");
    assert_eq!(limits.limits("acme").await.max_queued, 3);
}

/// The queue trait is still usable as a trait object with the new methods.
#[test]
fn queue_is_object_safe() {
    let q: Arc<dyn JobQueue> = Arc::new(MemoryJobQueue::new());
    drop(q);
}

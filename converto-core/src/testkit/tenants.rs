//! The `TenantStore` conformance suite.

use std::sync::Arc;

use chrono::{Duration, Utc};

use crate::tenants::{LimitOverrides, TenantStore};

fn tenant() -> String {
    format!("t-{}", crate::ConversionId::new().as_uuid().simple())
}

/// Runs every check, each on a fresh store from `make`.
pub async fn run_tenant_store_suite(make: impl AsyncFn() -> Arc<dyn TenantStore>) {
    put_get_round_trip(make().await.as_ref()).await;
    put_replaces_and_remove_forgets(make().await.as_ref()).await;
    list_is_by_name(make().await.as_ref()).await;
}

/// Every field of an override reads back as stored, unset fields as unset; a tenant without
/// one has none.
pub async fn put_get_round_trip(store: &dyn TenantStore) {
    let t = tenant();
    assert_eq!(store.get(&t).await.expect("get"), None);
    let full = LimitOverrides {
        requests_per_second: Some(2.5),
        burst: Some(7),
        max_queued: Some(3),
        max_running: Some(1),
        storage_bytes: Some(10 << 30),
        max_priority: Some(-4),
    };
    let before = Utc::now() - Duration::seconds(1);
    let put = store.put(&t, &full).await.expect("put");
    assert_eq!((put.tenant.as_str(), put.limits), (t.as_str(), full));
    assert!(put.updated_at >= before);
    assert_eq!(store.get(&t).await.expect("get"), Some(put));
    let sparse = LimitOverrides {
        max_running: Some(0),
        ..LimitOverrides::default()
    };
    let other = tenant();
    store.put(&other, &sparse).await.expect("put");
    let got = store.get(&other).await.expect("get").expect("stored");
    assert_eq!(
        got.limits, sparse,
        "unset fields must read back unset, zero as zero"
    );
}

/// A second put replaces the whole override; remove forgets it, once.
pub async fn put_replaces_and_remove_forgets(store: &dyn TenantStore) {
    let t = tenant();
    let first = LimitOverrides {
        max_queued: Some(5),
        max_running: Some(2),
        ..LimitOverrides::default()
    };
    store.put(&t, &first).await.expect("put");
    let second = LimitOverrides {
        burst: Some(1),
        ..LimitOverrides::default()
    };
    store.put(&t, &second).await.expect("put");
    assert_eq!(
        store.get(&t).await.expect("get").map(|o| o.limits),
        Some(second)
    );
    assert!(store.remove(&t).await.expect("remove"));
    assert!(!store.remove(&t).await.expect("remove"));
    assert_eq!(store.get(&t).await.expect("get"), None);
}

/// `list` gives every override, ordered by tenant name.
pub async fn list_is_by_name(store: &dyn TenantStore) {
    let base = tenant();
    let names = [
        format!("{base}-c"),
        format!("{base}-a"),
        format!("{base}-b"),
    ];
    for (i, n) in names.iter().enumerate() {
        let o = LimitOverrides {
            max_queued: Some(i as u64),
            ..LimitOverrides::default()
        };
        store.put(n, &o).await.expect("put");
    }
    let listed: Vec<String> = store
        .list()
        .await
        .expect("list")
        .into_iter()
        .map(|o| o.tenant)
        .filter(|t| t.starts_with(&base))
        .collect();
    assert_eq!(
        listed,
        vec![
            format!("{base}-a"),
            format!("{base}-b"),
            format!("{base}-c")
        ]
    );
}

//! The `KeyStore` conformance suite.

use std::sync::Arc;

use chrono::{Duration, SubsecRound, Utc};

use crate::keys::{
    KeyHash, KeyRefused, KeyStore, KeyStoreError, Scope, Scopes, generate_key, parse_key,
};

fn tenant() -> String {
    format!("t-{}", crate::ConversionId::new().as_uuid().simple())
}

/// Runs every check, each on a fresh store from `make`.
pub async fn run_key_store_suite(make: impl AsyncFn() -> Arc<dyn KeyStore>) {
    create_find_round_trip(make().await.as_ref()).await;
    duplicates_are_refused(make().await.as_ref()).await;
    list_is_oldest_first_and_shows_no_secret(make().await.as_ref()).await;
    revoke_is_kept_and_idempotent(make().await.as_ref()).await;
    expiry_reads_back(make().await.as_ref()).await;
}

/// A created key is found by the hash of its plaintext, field for field; other hashes find
/// nothing.
pub async fn create_find_round_trip(store: &dyn KeyStore) {
    let scopes = Scopes::NONE.with(Scope::Read).with(Scope::Write);
    let g = generate_key(&tenant(), scopes, None).expect("generate");
    let created = store.create(g.record.clone()).await.expect("create");
    assert_eq!(created.id, g.record.id);
    assert_eq!(created.tenant, g.record.tenant);
    assert_eq!(created.scopes, scopes);
    assert_eq!(created.created_at, g.record.created_at);
    assert_eq!(created.revoked_at, None);
    let hash = parse_key(g.secret.expose()).expect("parse");
    let found = store.find_by_hash(&hash).await.expect("find");
    assert_eq!(
        found.as_ref(),
        Some(&created),
        "stored key differs from the created one"
    );
    assert_eq!(created.check(Utc::now()), Ok(()));
    let other = generate_key("other", Scopes::ALL, None).expect("generate");
    assert_eq!(
        store.find_by_hash(&other.record.hash).await.expect("find"),
        None
    );
    assert_eq!(
        store
            .find_by_hash(&KeyHash::of("not a key"))
            .await
            .expect("find"),
        None
    );
}

/// A second key with the same id, or the same hash, is refused.
pub async fn duplicates_are_refused(store: &dyn KeyStore) {
    let g = generate_key(&tenant(), Scopes::ALL, None).expect("generate");
    store.create(g.record.clone()).await.expect("create");
    let mut same_hash = g.record.clone();
    same_hash.id = "another-id-1".into();
    assert!(matches!(
        store.create(same_hash).await,
        Err(KeyStoreError::AlreadyExists { .. })
    ));
    let mut same_id = generate_key(&tenant(), Scopes::ALL, None)
        .expect("generate")
        .record;
    same_id.id = g.record.id.clone();
    assert!(matches!(
        store.create(same_id).await,
        Err(KeyStoreError::AlreadyExists { .. })
    ));
}

/// Listing gives every key, oldest first, with tenant and scopes.
pub async fn list_is_oldest_first_and_shows_no_secret(store: &dyn KeyStore) {
    assert!(store.list().await.expect("list").is_empty());
    let t = tenant();
    let base = Utc::now().trunc_subsecs(6);
    let mut ids = Vec::new();
    for (i, scopes) in ["read", "write", "admin"].into_iter().enumerate() {
        let mut g = generate_key(&t, scopes.parse().expect("scopes"), None).expect("generate");
        // Created out of order: the list sorts by creation time.
        g.record.created_at = base - Duration::seconds(10 * (i as i64));
        ids.push(g.record.id.clone());
        store.create(g.record).await.expect("create");
    }
    let listed = store.list().await.expect("list");
    let listed_ids: Vec<&str> = listed.iter().map(|k| k.id.as_str()).collect();
    assert_eq!(listed_ids, [&ids[2], &ids[1], &ids[0]]);
    assert_eq!(listed[0].scopes.to_string(), "admin");
    assert!(
        listed
            .iter()
            .all(|k| k.tenant == t && k.prefix.starts_with("cvt_"))
    );
}

/// A revoked key is still found (so the caller can say why it refuses it), carries its
/// revocation time, and revoking again keeps the first time; unknown ids are `NotFound`.
pub async fn revoke_is_kept_and_idempotent(store: &dyn KeyStore) {
    let g = generate_key(&tenant(), Scopes::ALL, None).expect("generate");
    let keep = generate_key(&tenant(), Scopes::ALL, None).expect("generate");
    store.create(g.record.clone()).await.expect("create");
    store.create(keep.record.clone()).await.expect("create");
    let before = Utc::now() - Duration::seconds(1);
    let revoked = store.revoke(&g.record.id).await.expect("revoke");
    let at = revoked.revoked_at.expect("revoked_at set");
    assert!(at >= before, "revoked_at {at} is before the call");
    assert_eq!(revoked.check(Utc::now()), Err(KeyRefused::Revoked));
    let found = store
        .find_by_hash(&g.record.hash)
        .await
        .expect("find")
        .expect("a revoked key is still found");
    assert_eq!(found.revoked_at, Some(at));
    let again = store.revoke(&g.record.id).await.expect("revoke again");
    assert_eq!(again.revoked_at, Some(at));
    let untouched = store
        .find_by_hash(&keep.record.hash)
        .await
        .expect("find")
        .expect("other key");
    assert_eq!(untouched.revoked_at, None);
    assert!(matches!(
        store.revoke("no-such-key").await,
        Err(KeyStoreError::NotFound { .. })
    ));
}

/// The expiry reads back, and a key past it is refused as expired.
pub async fn expiry_reads_back(store: &dyn KeyStore) {
    let past = Utc::now() - Duration::hours(1);
    let g = generate_key(&tenant(), Scopes::ALL, Some(past)).expect("generate");
    store.create(g.record.clone()).await.expect("create");
    let found = store
        .find_by_hash(&g.record.hash)
        .await
        .expect("find")
        .expect("key");
    assert_eq!(found.expires_at, g.record.expires_at);
    assert_eq!(found.check(Utc::now()), Err(KeyRefused::Expired));
    let future = Utc::now() + Duration::days(30);
    let g = generate_key(&tenant(), Scopes::ALL, Some(future)).expect("generate");
    store.create(g.record.clone()).await.expect("create");
    let found = store
        .find_by_hash(&g.record.hash)
        .await
        .expect("find")
        .expect("key");
    assert_eq!(found.check(Utc::now()), Ok(()));
}

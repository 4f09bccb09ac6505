//! The [`WebhookStore`] conformance suite: every backend runs [`webhook_store`].

use std::sync::Arc;

use chrono::{SubsecRound, Utc};

use crate::ConversionId;
use crate::webhook::{
    Attempt, AttemptOutcome, Endpoint, Message, MessageState, Secrets, Subscription, Target,
    WebhookEvent, WebhookStore,
};

fn endpoint(tenant: &str, url: &str) -> Endpoint {
    Endpoint {
        id: format!("ep_{}", uuid::Uuid::now_v7().simple()),
        tenant: tenant.to_owned(),
        url: url.to_owned(),
        on_start: false,
        enabled: true,
        disabled_reason: None,
        created_at: Utc::now().trunc_subsecs(6),
        secrets: Secrets::generate().unwrap_or_else(|e| panic!("{e}")),
    }
}

fn attempt(tenant: &str, conversion: ConversionId, n: u32) -> Attempt {
    Attempt {
        webhook_id: "msg_1".into(),
        conversion,
        tenant: tenant.to_owned(),
        event: WebhookEvent::Succeeded,
        endpoint_id: None,
        url: "https://example.com/".into(),
        attempt: n,
        at: Utc::now().trunc_subsecs(6),
        status_code: Some(500),
        error: None,
        duration_ms: 3,
        outcome: AttemptOutcome::Retrying,
        next_retry_at: Some(Utc::now().trunc_subsecs(6)),
    }
}

/// Endpoints, secrets, subscriptions, messages and attempts, tenant-isolated and bounded.
pub async fn webhook_store(store: Arc<dyn WebhookStore>) {
    let t1 = format!("t1-{}", uuid::Uuid::now_v7().simple());
    let t2 = format!("t2-{}", uuid::Uuid::now_v7().simple());
    let fail = |e: crate::webhook::WebhookError| -> ! { panic!("{e}") };

    // Endpoints.
    let a = endpoint(&t1, "https://a.example/");
    let b = endpoint(&t1, "https://b.example/");
    store.create_endpoint(&a).await.unwrap_or_else(|e| fail(e));
    store.create_endpoint(&b).await.unwrap_or_else(|e| fail(e));
    let listed = store.endpoints(&t1).await.unwrap_or_else(|e| fail(e));
    assert_eq!(
        listed,
        vec![a.clone(), b.clone()],
        "oldest first, round trip"
    );
    assert!(
        store
            .endpoints(&t2)
            .await
            .unwrap_or_else(|e| fail(e))
            .is_empty()
    );
    assert_eq!(
        store.endpoint(&t2, &a.id).await.unwrap_or_else(|e| fail(e)),
        None
    );
    let next = a.secrets.rotated(
        "whsec_AAAA".into(),
        Utc::now().trunc_subsecs(6),
        std::time::Duration::from_secs(60),
    );
    assert!(
        !store
            .set_endpoint_secrets(&t2, &a.id, &next)
            .await
            .unwrap_or_else(|e| fail(e))
    );
    assert!(
        store
            .set_endpoint_secrets(&t1, &a.id, &next)
            .await
            .unwrap_or_else(|e| fail(e))
    );
    store
        .disable_endpoint(&t1, &a.id, "gone")
        .await
        .unwrap_or_else(|e| fail(e));
    let got = store.endpoint(&t1, &a.id).await.unwrap_or_else(|e| fail(e));
    let got = got.unwrap_or_else(|| panic!("endpoint missing"));
    assert_eq!(got.secrets, next);
    assert!(!got.enabled);
    assert_eq!(got.disabled_reason.as_deref(), Some("gone"));
    assert!(
        !store
            .delete_endpoint(&t2, &b.id)
            .await
            .unwrap_or_else(|e| fail(e))
    );
    assert!(
        store
            .delete_endpoint(&t1, &b.id)
            .await
            .unwrap_or_else(|e| fail(e))
    );
    assert_eq!(
        store.endpoints(&t1).await.unwrap_or_else(|e| fail(e)).len(),
        1
    );

    // The tenant's signing secret: the first stored wins.
    assert_eq!(
        store.tenant_secrets(&t1).await.unwrap_or_else(|e| fail(e)),
        None
    );
    let first = Secrets::generate().unwrap_or_else(|e| panic!("{e}"));
    let second = Secrets::generate().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        store
            .init_tenant_secrets(&t1, &first)
            .await
            .unwrap_or_else(|e| fail(e)),
        first
    );
    assert_eq!(
        store
            .init_tenant_secrets(&t1, &second)
            .await
            .unwrap_or_else(|e| fail(e)),
        first
    );
    store
        .set_tenant_secrets(&t1, &second)
        .await
        .unwrap_or_else(|e| fail(e));
    assert_eq!(
        store.tenant_secrets(&t1).await.unwrap_or_else(|e| fail(e)),
        Some(second)
    );
    assert_eq!(
        store.tenant_secrets(&t2).await.unwrap_or_else(|e| fail(e)),
        None
    );

    // Subscriptions.
    let conversion = ConversionId::new();
    let sub = Subscription {
        conversion,
        tenant: t1.clone(),
        url: "https://c.example/".into(),
        on_start: true,
    };
    store.subscribe(&sub).await.unwrap_or_else(|e| fail(e));
    assert_eq!(
        store
            .subscription(conversion)
            .await
            .unwrap_or_else(|e| fail(e)),
        Some(sub)
    );

    // Messages: written once.
    let message = Message {
        id: ConversionId::new(),
        tenant: t1.clone(),
        conversion,
        event: WebhookEvent::Succeeded,
        target: Target::Url("https://c.example/".into()),
        payload: r#"{"id":"x"}"#.into(),
        created_at: Utc::now().trunc_subsecs(6),
        state: MessageState::Pending,
    };
    assert_eq!(
        store
            .put_message(&message)
            .await
            .unwrap_or_else(|e| fail(e)),
        MessageState::Pending
    );
    store
        .set_message_state(message.id, MessageState::Delivered)
        .await
        .unwrap_or_else(|e| fail(e));
    let again = Message {
        payload: "{}".into(),
        ..message.clone()
    };
    assert_eq!(
        store.put_message(&again).await.unwrap_or_else(|e| fail(e)),
        MessageState::Delivered
    );
    let stored = store.message(message.id).await.unwrap_or_else(|e| fail(e));
    assert_eq!(
        stored,
        Some(Message {
            state: MessageState::Delivered,
            ..message.clone()
        })
    );
    assert_eq!(
        store
            .message(ConversionId::new())
            .await
            .unwrap_or_else(|e| fail(e)),
        None
    );

    // Attempts: the newest `keep`, oldest first, the tenant's only.
    for n in 1..=5 {
        store
            .record_attempt(&attempt(&t1, conversion, n), 3)
            .await
            .unwrap_or_else(|e| fail(e));
    }
    let kept = store
        .attempts(&t1, conversion)
        .await
        .unwrap_or_else(|e| fail(e));
    assert_eq!(
        kept.iter().map(|a| a.attempt).collect::<Vec<_>>(),
        [3, 4, 5]
    );
    let expected = Attempt {
        at: kept[0].at,
        next_retry_at: kept[0].next_retry_at,
        ..attempt(&t1, conversion, 3)
    };
    assert_eq!(kept[0], expected, "round trip");
    assert!(
        store
            .attempts(&t2, conversion)
            .await
            .unwrap_or_else(|e| fail(e))
            .is_empty()
    );

    store
        .forget_conversion(conversion)
        .await
        .unwrap_or_else(|e| fail(e));
    assert!(
        store
            .attempts(&t1, conversion)
            .await
            .unwrap_or_else(|e| fail(e))
            .is_empty()
    );
    assert_eq!(
        store
            .subscription(conversion)
            .await
            .unwrap_or_else(|e| fail(e)),
        None
    );
}

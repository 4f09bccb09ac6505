use std::collections::VecDeque;

use super::*;
use crate::memory::MemoryJobQueue;

/// The Standard Webhooks specification's own example (standard-webhooks `spec` test vectors).
#[test]
fn signs_the_specification_example() {
    let sig = sign(
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        1614265330,
        br#"{"test": 2432232314}"#,
    )
    .expect("sign");
    assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
}

#[test]
fn secrets_are_whsec_base64_and_rotation_signs_twice_during_the_overlap() {
    let s = Secrets::generate().expect("secret");
    assert!(s.current.starts_with("whsec_"));
    let now = Utc::now();
    assert_eq!(s.signing(now).len(), 1);
    let next = s.rotated(
        generate_secret().expect("secret"),
        now,
        Duration::from_secs(60),
    );
    assert_eq!(
        next.signing(now),
        vec![next.current.as_str(), s.current.as_str()]
    );
    let later = crate::queue::after(now, Duration::from_secs(61));
    assert_eq!(next.signing(later), vec![next.current.as_str()]);
    assert!(sign("nope", "id", 1, b"").is_err());
}

#[test]
fn retry_after_takes_seconds_and_http_dates() {
    let now = DateTime::parse_from_rfc3339("2026-12-02T06:00:00Z")
        .expect("date")
        .with_timezone(&Utc);
    assert_eq!(
        parse_retry_after("120", now),
        Some(Duration::from_secs(120))
    );
    assert_eq!(
        parse_retry_after("Wed, 02 Dec 2026 06:01:30 GMT", now),
        Some(Duration::from_secs(90))
    );
    assert_eq!(
        parse_retry_after("Wed, 02 Dec 2026 05:00:00 GMT", now),
        Some(Duration::ZERO)
    );
    assert_eq!(parse_retry_after("soon", now), None);
}

#[test]
fn backoff_doubles_with_jitter_and_is_capped() {
    let c = WebhookConfig::default();
    for attempt in 1..40 {
        let step = c
            .backoff_base
            .saturating_mul(1 << (attempt - 1).min(30))
            .min(c.backoff_cap);
        let d = c.backoff(attempt);
        assert!(d >= step / 2 && d <= step, "attempt {attempt}: {d:?}");
    }
    // The retry window covers at least a day.
    assert!(c.retry_for >= Duration::from_secs(24 * 3600));
}

/// A transport answering from a script, recording what it was sent.
#[derive(Debug, Default)]
struct Scripted {
    answers: parking_lot::Mutex<VecDeque<Result<WebhookResponse, TransportError>>>,
    sent: parking_lot::Mutex<Vec<WebhookRequest>>,
    notify: tokio::sync::Notify,
}

#[async_trait]
impl WebhookTransport for Scripted {
    fn check_url(&self, url: &str) -> Result<(), String> {
        if url.starts_with("http://") || url.starts_with("https://") {
            Ok(())
        } else {
            Err("only http and https".into())
        }
    }
    async fn post(&self, request: WebhookRequest) -> Result<WebhookResponse, TransportError> {
        self.sent.lock().push(request);
        let answer = self
            .answers
            .lock()
            .pop_front()
            .unwrap_or(Ok(WebhookResponse {
                status: 200,
                retry_after: None,
            }));
        self.notify.notify_waiters();
        answer
    }
}

fn status(status: u16) -> Result<WebhookResponse, TransportError> {
    Ok(WebhookResponse {
        status,
        retry_after: None,
    })
}

fn fast() -> WebhookConfig {
    WebhookConfig {
        backoff_base: Duration::from_millis(1),
        ..WebhookConfig::default()
    }
}

fn record(status: Status) -> Conversion {
    let now = Utc::now();
    // From JSON, so fields added to the record later (with serde defaults) need no change here.
    serde_json::from_value(serde_json::json!({
        "id": ConversionId::new(), "tenant": "t1", "source_format": "stl",
        "target_format": "obj", "options": {}, "labels": {}, "priority": 0,
        "status": status, "progress": null, "attempts": 1, "error": null, "artifacts": [],
        "input_key": "k", "input_name": null, "input_size": 1, "idempotency_key": null,
        "created_at": now, "started_at": null, "finished_at": null, "updated_at": now,
        "version": 1
    }))
    .expect("record")
}

/// Waits (no deadline: the test harness has one) until the conversion has `n` attempts and
/// the last one is final.
async fn settled(w: &Webhooks, tenant: &str, id: ConversionId, n: usize) -> Vec<Attempt> {
    loop {
        let a = w.deliveries(tenant, id).await.expect("attempts");
        if a.len() >= n
            && a.last()
                .is_some_and(|l| l.outcome != AttemptOutcome::Retrying)
        {
            return a;
        }
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn service(t: &Arc<Scripted>) -> Arc<Webhooks> {
    Arc::new(Webhooks::new(
        Arc::new(MemoryWebhookStore::new()),
        Arc::new(MemoryJobQueue::new()),
        Arc::clone(t) as Arc<dyn WebhookTransport>,
        fast(),
    ))
}

#[tokio::test]
async fn retries_one_message_with_one_id_until_it_is_delivered() {
    let t = Arc::new(Scripted::default());
    t.answers
        .lock()
        .extend([status(500), Err(TransportError::Timeout), status(204)]);
    let w = service(&t);
    let ep = w
        .create_endpoint("t1", "https://example.com/hook", false)
        .await
        .expect("ep");
    let rec = record(Status::Succeeded);
    assert_eq!(w.announce(&rec).await.expect("announce"), 1);
    // Announcing again (a worker redelivered the job) adds nothing.
    assert_eq!(w.announce(&rec).await.expect("announce"), 1);
    let stop = CancellationToken::new();
    let run = tokio::spawn(Arc::clone(&w).run(stop.clone()));
    let attempts = settled(&w, "t1", rec.id, 3).await;
    stop.cancel();
    run.await.expect("run");
    let outcomes: Vec<_> = attempts.iter().map(|a| a.outcome).collect();
    assert_eq!(
        outcomes,
        [
            AttemptOutcome::Retrying,
            AttemptOutcome::Retrying,
            AttemptOutcome::Delivered
        ]
    );
    assert_eq!(
        attempts.iter().map(|a| a.attempt).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert!(attempts[1].error.is_some() && attempts[1].status_code.is_none());
    let sent = t.sent.lock().clone();
    assert_eq!(sent.len(), 3);
    let ids: Vec<_> = sent
        .iter()
        .map(|r| {
            r.headers
                .iter()
                .find(|h| h.0 == "webhook-id")
                .map(|h| h.1.clone())
        })
        .collect();
    assert!(ids.iter().all(|i| i == &ids[0] && i.is_some()));
    // Delivered: announcing once more sends nothing.
    assert_eq!(w.announce(&rec).await.expect("announce"), 0);
    // Another tenant sees no attempts.
    assert!(w.deliveries("t2", rec.id).await.expect("list").is_empty());
    assert_eq!(attempts[0].endpoint_id.as_deref(), Some(ep.id.as_str()));
}

#[tokio::test]
async fn gone_disables_the_endpoint_and_other_4xx_are_not_retried() {
    let t = Arc::new(Scripted::default());
    t.answers.lock().extend([status(410), status(400)]);
    let w = service(&t);
    let ep = w
        .create_endpoint("t1", "https://example.com/a", false)
        .await
        .expect("ep");
    let stop = CancellationToken::new();
    let run = tokio::spawn(Arc::clone(&w).run(stop.clone()));
    let first = record(Status::Failed);
    w.announce(&first).await.expect("announce");
    let a = settled(&w, "t1", first.id, 1).await;
    assert_eq!(a[0].outcome, AttemptOutcome::Disabled);
    let ep = w.endpoint("t1", &ep.id).await.expect("ep");
    assert!(!ep.enabled);
    // Disabled: the next conversion has nobody to tell.
    assert_eq!(
        w.announce(&record(Status::Failed)).await.expect("announce"),
        0
    );

    w.create_endpoint("t1", "https://example.com/b", false)
        .await
        .expect("ep");
    let second = record(Status::Cancelled);
    w.announce(&second).await.expect("announce");
    let a = settled(&w, "t1", second.id, 1).await;
    assert_eq!(
        (a.len(), a[0].outcome, a[0].status_code),
        (1, AttemptOutcome::Failed, Some(400))
    );
    stop.cancel();
    run.await.expect("run");
}

#[tokio::test]
async fn start_is_sent_only_to_those_who_opted_in() {
    let t = Arc::new(Scripted::default());
    let w = service(&t);
    w.create_endpoint("t1", "https://example.com/a", false)
        .await
        .expect("ep");
    let running = record(Status::Running);
    assert_eq!(w.announce(&running).await.expect("announce"), 0);
    w.create_endpoint("t1", "https://example.com/b", true)
        .await
        .expect("ep");
    assert_eq!(w.announce(&running).await.expect("announce"), 1);
    w.subscribe(&Subscription {
        conversion: running.id,
        tenant: "t1".into(),
        url: "https://example.com/c".into(),
        on_start: true,
    })
    .await
    .expect("subscribe");
    assert_eq!(w.announce(&running).await.expect("announce"), 2);
    assert!(matches!(
        w.create_endpoint("t1", "ftp://example.com", false).await,
        Err(WebhookError::InvalidUrl(_))
    ));
}

#[tokio::test]
async fn memory_store_conforms() {
    crate::testkit::webhooks::webhook_store(Arc::new(MemoryWebhookStore::new())).await;
}

/// `cancel` queues the `cancelled` message before it removes the job; a submission's own URL
/// is the target, signed with the tenant's secret made on first use.
#[tokio::test]
async fn cancel_announces_to_the_conversions_own_url() {
    let t = Arc::new(Scripted::default());
    let w = service(&t);
    let (registry, _) = crate::testkit::scripted_registry();
    let engine = crate::Engine::builder()
        .registry(registry)
        .webhooks(Arc::clone(&w))
        .build()
        .expect("engine");
    let sub = crate::Submission::new(
        "upper".parse().expect("format"),
        crate::SubmitInput::bytes(&b"later"[..], Some("a.txt".into())),
    )
    .not_before(Utc::now() + chrono::Duration::hours(1));
    let sub = crate::Submission {
        webhook: Some(crate::SubmitWebhook {
            url: "https://example.com/mine".into(),
            on_start: false,
        }),
        ..sub
    };
    let rec = engine.submit(sub).await.expect("submit").conversion;
    engine.cancel(rec.id).await.expect("cancel");
    let stop = CancellationToken::new();
    let run = tokio::spawn(Arc::clone(&w).run(stop.clone()));
    let attempts = settled(&w, &rec.tenant, rec.id, 1).await;
    stop.cancel();
    run.await.expect("run");
    assert_eq!(attempts[0].event, WebhookEvent::Cancelled);
    assert_eq!(attempts[0].url, "https://example.com/mine");
    let sent = t.sent.lock().clone();
    let body: serde_json::Value = serde_json::from_slice(&sent[0].body).expect("json");
    assert_eq!(body["status"], "cancelled");
    let (secrets, created) = w.tenant_secret(&rec.tenant).await.expect("secret");
    assert!(!created, "made at submit");
    let header = |n: &str| {
        sent[0]
            .headers
            .iter()
            .find(|h| h.0 == n)
            .map(|h| h.1.clone())
            .unwrap_or_default()
    };
    let ts: i64 = header("webhook-timestamp").parse().expect("timestamp");
    assert_eq!(
        header("webhook-signature"),
        sign(&secrets.current, &header("webhook-id"), ts, &sent[0].body).expect("sign")
    );

    // A webhook without webhooks configured is refused.
    let plain = crate::Engine::builder().build().expect("engine");
    let sub = crate::Submission {
        webhook: Some(crate::SubmitWebhook {
            url: "https://example.com/".into(),
            on_start: false,
        }),
        ..crate::Submission::new(
            "upper".parse().expect("format"),
            crate::SubmitInput::bytes(&b"x"[..], None),
        )
    };
    assert!(matches!(
        plain.submit(sub).await,
        Err(crate::EngineError::InvalidRequest(_))
    ));
}

/// A store whose first `put_message` calls fail (temporarily).
#[derive(Debug)]
struct Flaky {
    inner: MemoryWebhookStore,
    failures: std::sync::atomic::AtomicU32,
}

#[async_trait]
impl WebhookStore for Flaky {
    async fn create_endpoint(&self, e: &Endpoint) -> Result<(), WebhookError> {
        self.inner.create_endpoint(e).await
    }
    async fn endpoints(&self, t: &str) -> Result<Vec<Endpoint>, WebhookError> {
        self.inner.endpoints(t).await
    }
    async fn endpoint(&self, t: &str, id: &str) -> Result<Option<Endpoint>, WebhookError> {
        self.inner.endpoint(t, id).await
    }
    async fn delete_endpoint(&self, t: &str, id: &str) -> Result<bool, WebhookError> {
        self.inner.delete_endpoint(t, id).await
    }
    async fn set_endpoint_secrets(
        &self,
        t: &str,
        id: &str,
        s: &Secrets,
    ) -> Result<bool, WebhookError> {
        self.inner.set_endpoint_secrets(t, id, s).await
    }
    async fn disable_endpoint(&self, t: &str, id: &str, r: &str) -> Result<(), WebhookError> {
        self.inner.disable_endpoint(t, id, r).await
    }
    async fn tenant_secrets(&self, t: &str) -> Result<Option<Secrets>, WebhookError> {
        self.inner.tenant_secrets(t).await
    }
    async fn init_tenant_secrets(&self, t: &str, s: &Secrets) -> Result<Secrets, WebhookError> {
        self.inner.init_tenant_secrets(t, s).await
    }
    async fn set_tenant_secrets(&self, t: &str, s: &Secrets) -> Result<(), WebhookError> {
        self.inner.set_tenant_secrets(t, s).await
    }
    async fn subscribe(&self, s: &Subscription) -> Result<(), WebhookError> {
        self.inner.subscribe(s).await
    }
    async fn subscription(&self, id: ConversionId) -> Result<Option<Subscription>, WebhookError> {
        self.inner.subscription(id).await
    }
    async fn put_message(&self, m: &Message) -> Result<MessageState, WebhookError> {
        use std::sync::atomic::Ordering;
        if self
            .failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(WebhookError::backend("flaky", true, "the store is away"));
        }
        self.inner.put_message(m).await
    }
    async fn message(&self, id: ConversionId) -> Result<Option<Message>, WebhookError> {
        self.inner.message(id).await
    }
    async fn set_message_state(
        &self,
        id: ConversionId,
        s: MessageState,
    ) -> Result<(), WebhookError> {
        self.inner.set_message_state(id, s).await
    }
    async fn record_attempt(&self, a: &Attempt, keep: usize) -> Result<(), WebhookError> {
        self.inner.record_attempt(a, keep).await
    }
    async fn attempts(&self, t: &str, c: ConversionId) -> Result<Vec<Attempt>, WebhookError> {
        self.inner.attempts(t, c).await
    }
    async fn forget_conversion(&self, id: ConversionId) -> Result<(), WebhookError> {
        self.inner.forget_conversion(id).await
    }
}

/// The worker cannot queue the webhook when the conversion succeeds: it keeps the job, whose
/// next delivery finds the record finished and queues the webhook then. Nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_that_could_not_be_queued_is_queued_by_the_next_delivery_of_the_job() {
    let t = Arc::new(Scripted::default());
    let store = Arc::new(Flaky {
        inner: MemoryWebhookStore::new(),
        failures: std::sync::atomic::AtomicU32::new(1),
    });
    let w = Arc::new(Webhooks::new(
        Arc::clone(&store) as Arc<dyn WebhookStore>,
        Arc::new(MemoryJobQueue::new()),
        Arc::clone(&t) as Arc<dyn WebhookTransport>,
        fast(),
    ));
    w.create_endpoint(crate::DEFAULT_TENANT, "https://example.com/hook", false)
        .await
        .expect("endpoint");
    let (registry, _) = crate::testkit::scripted_registry();
    let backends = crate::Backends::in_memory();
    let engine = crate::Engine::builder()
        .backends(backends.clone())
        .registry(registry)
        .config(crate::testkit::engine::fast_config())
        .webhooks(Arc::clone(&w))
        .build()
        .expect("engine");
    let workers = engine.start_workers();
    let sub = crate::Submission::new(
        "upper".parse().expect("format"),
        crate::SubmitInput::bytes(&b"hello"[..], Some("a.txt".into())),
    );
    let rec = engine.submit(sub).await.expect("submit").conversion;
    let attempts = settled(&w, crate::DEFAULT_TENANT, rec.id, 1).await;
    assert_eq!(attempts[0].outcome, AttemptOutcome::Delivered);
    assert_eq!(attempts[0].event, WebhookEvent::Succeeded);
    assert_eq!(
        store.failures.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the first try failed"
    );
    // The conversion's job goes once its webhook is queued.
    while backends.queue.contains(rec.id).await.expect("contains") {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        engine.get(rec.id).await.expect("get").status,
        Status::Succeeded
    );
    assert_eq!(t.sent.lock().len(), 1, "one POST");
    workers.shutdown().await.expect("shutdown");
}

/// `Retry-After` lengthens the wait, up to its cap; the schedule is computed, so this checks
/// the recorded next-attempt time, not a clock.
#[tokio::test]
async fn retry_after_is_honoured_up_to_its_cap() {
    let t = Arc::new(Scripted::default());
    let hour = Duration::from_secs(3600);
    t.answers.lock().extend([Ok(WebhookResponse {
        status: 429,
        retry_after: Some(Duration::from_secs(120)),
    })]);
    let w = Arc::new(Webhooks::new(
        Arc::new(MemoryWebhookStore::new()),
        Arc::new(MemoryJobQueue::new()),
        Arc::clone(&t) as Arc<dyn WebhookTransport>,
        WebhookConfig {
            retry_after_cap: hour,
            ..fast()
        },
    ));
    w.create_endpoint("t1", "https://example.com/a", false)
        .await
        .expect("ep");
    let rec = record(Status::Succeeded);
    w.announce(&rec).await.expect("announce");
    let stop = CancellationToken::new();
    let run = tokio::spawn(Arc::clone(&w).run(stop.clone()));
    let first = loop {
        if let Some(a) = w
            .deliveries("t1", rec.id)
            .await
            .expect("list")
            .first()
            .cloned()
        {
            break a;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    stop.cancel();
    run.await.expect("run");
    assert_eq!(first.outcome, AttemptOutcome::Retrying);
    let wait = (first.next_retry_at.expect("next") - first.at)
        .to_std()
        .expect("positive");
    assert!(wait >= Duration::from_secs(120), "{wait:?}");
    assert!(wait <= hour + Duration::from_secs(60), "{wait:?}");
}

//! The engine suite: the whole lifecycle over any set of backends.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use futures::StreamExt;
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{ScriptedConverter, scripted_registry, within};
use crate::blob::BlobStoreExt;
use crate::conversion::{Conversion, NewConversion, Status};
use crate::engine::{Backends, Engine, EngineConfig, EngineError, Submission, SubmitInput};
use crate::progress::{Event, EventStream};
use crate::store::ListQuery;
use crate::{ConversionId, Format};

fn f(s: &str) -> Format {
    Format::new(s).unwrap_or_else(|e| panic!("{e}"))
}

/// A configuration with short leases, delays and intervals, so the suite runs in seconds.
pub fn fast_config() -> EngineConfig {
    EngineConfig::default()
        .concurrency(4)
        .lease_duration(Duration::from_millis(1500))
        .job_timeout(Duration::from_secs(20))
        .max_attempts(3)
        .retry_delays(Duration::from_millis(20), Duration::from_millis(100))
        .progress_interval(Duration::from_millis(5))
        .shutdown_grace(Duration::from_secs(5))
        .sweeper(Duration::ZERO, Duration::ZERO)
}

/// An engine over `backends` with the scripted converter.
pub fn engine_with(backends: &Backends, config: EngineConfig) -> (Engine, Arc<ScriptedConverter>) {
    let (registry, conv) = scripted_registry();
    let engine = Engine::builder()
        .backends(backends.clone())
        .registry(registry)
        .config(config)
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    (engine, conv)
}

/// Running workers, stopped (gracefully) or killed (aborted, as a crashed process).
pub struct Workers {
    stop: CancellationToken,
    handle: JoinHandle<Result<(), EngineError>>,
}

impl Workers {
    /// Starts `engine`'s workers.
    pub fn start(engine: &Engine) -> Self {
        let stop = CancellationToken::new();
        let e = engine.clone();
        let s = stop.clone();
        Self {
            stop,
            handle: tokio::spawn(async move { e.run_workers(s).await }),
        }
    }

    /// Graceful shutdown; waits for the drain.
    pub async fn stop(self) {
        self.stop.cancel();
        within(30, "graceful shutdown", self.handle)
            .await
            .expect("join")
            .expect("run_workers");
    }

    /// Kills the workers as a crash would: no drain, no hand-back, leases left to expire.
    pub async fn kill(self) {
        self.handle.abort();
        let _ = self.handle.await;
    }
}

/// Submits `text` as a `txt` file for `target` with these options.
pub async fn submit(engine: &Engine, target: &str, options: serde_json::Value) -> Conversion {
    engine
        .submit(
            Submission::new(
                f(target),
                SubmitInput::bytes(
                    Bytes::from_static(b"hello converto"),
                    Some("note.txt".into()),
                ),
            )
            .options(options),
        )
        .await
        .expect("submit")
        .conversion
}

/// Follows `watch` to the terminal status and returns every event and the final record.
pub async fn follow(engine: &Engine, id: ConversionId) -> (Vec<Event>, Conversion) {
    let stream = engine.watch(id).await.expect("watch");
    let events: Vec<Event> = within(60, "conversion to finish", stream.collect()).await;
    assert!(
        events.last().is_some_and(Event::is_terminal),
        "watch ended without a terminal status: {events:?}"
    );
    (events, engine.get(id).await.expect("get"))
}

/// Waits until the queue holds no job of `id`. A worker records the terminal status first and
/// lets the job go after (batched acks flush within `ack_delay`), so a watcher that saw the
/// status may look at the queue a moment before the ack lands.
async fn wait_until_dequeued(b: &Backends, id: ConversionId) {
    within(30, "the job to leave the queue", async {
        while b.queue.contains(id).await.expect("contains") {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

async fn wait_for_status(engine: &Engine, id: ConversionId, want: Status) {
    let mut stream = engine.watch(id).await.expect("watch");
    within(30, "status", async {
        while let Some(e) = stream.next().await {
            if matches!(e, Event::Status { status, .. } if status == want) {
                return;
            }
        }
        panic!("{id} never reached {want}");
    })
    .await;
}

/// Waits until `id` has started: running, or already past it (a short job may finish before
/// the watcher subscribes).
async fn wait_until_started(engine: &Engine, id: ConversionId) {
    let mut stream = engine.watch(id).await.expect("watch");
    within(30, "start", async {
        while let Some(e) = stream.next().await {
            if matches!(e, Event::Status { status, .. } if status == Status::Running || status.is_terminal())
            {
                return;
            }
        }
        panic!("{id} never started");
    })
    .await;
}

/// Counts terminal status events on the bus until quiet for `quiet`.
async fn terminal_events(mut sub: EventStream, quiet: Duration) -> usize {
    let mut n = 0;
    while let Ok(Some(e)) = tokio::time::timeout(quiet, sub.next()).await {
        n += usize::from(e.is_terminal());
    }
    n
}

/// Runs every check, each on fresh backends from `make`.
pub async fn run_engine_suite(make: impl AsyncFn() -> Backends) {
    success_with_progress(&make().await).await;
    several_artifacts(&make().await).await;
    permanent_failure(&make().await).await;
    retry_then_success(&make().await).await;
    retries_exhausted(&make().await).await;
    execution_timeout(&make().await).await;
    queue_wait_limit(&make().await).await;
    cancel_while_queued(&make().await).await;
    cancel_while_running(&make().await).await;
    worker_dies_mid_job(&make().await).await;
    stale_worker_is_fenced(&make().await).await;
    priority_and_not_before(&make().await).await;
    idempotent_submit(&make().await).await;
    concurrent_workers_never_share_a_job(&make().await).await;
    graceful_shutdown(&make().await).await;
    sweeper_recovers_lost_queue_entries(&make().await).await;
    delete_removes_everything(&make().await).await;
    shared_inputs_stay_until_their_last_conversion_goes(&make().await).await;
    bad_submissions_leave_nothing(&make().await).await;
    prefetched_jobs_of_a_dead_worker_come_back(&make().await).await;
}

/// A conversion runs, reports rising progress, and stores a checksummed artifact.
pub async fn success_with_progress(b: &Backends) {
    let (engine, conv) = engine_with(b, fast_config());
    let workers = Workers::start(&engine);
    let c = submit(&engine, "upper", json!({"steps": 20})).await;
    assert_eq!(c.status, Status::Queued);
    let (events, done) = follow(&engine, c.id).await;
    assert_eq!(done.status, Status::Succeeded, "{done:?}");
    assert_eq!(done.attempts, 1);
    assert_eq!(conv.calls(), 1);
    let percents: Vec<u8> = events
        .iter()
        .filter_map(|e| match e {
            Event::Progress { progress, .. } => Some(progress.percent),
            _ => None,
        })
        .collect();
    assert!(!percents.is_empty(), "no progress events: {events:?}");
    assert!(
        percents.windows(2).all(|w| w[0] <= w[1]),
        "progress went backwards: {percents:?}"
    );
    assert!(
        percents.len() <= 21,
        "progress was not throttled/deduplicated: {percents:?}"
    );
    assert!(events.iter().any(|e| matches!(
        e,
        Event::Status {
            status: Status::Running,
            ..
        }
    )));
    assert_eq!(done.progress.as_ref().map(|p| p.percent), Some(100));
    assert!(done.started_at.is_some() && done.finished_at.is_some());
    let [artifact] = done.artifacts.as_slice() else {
        panic!("want one artifact: {:?}", done.artifacts)
    };
    assert_eq!(artifact.name, "output.upper");
    let (_, read) = engine
        .open_artifact(c.id, "output.upper", None)
        .await
        .expect("open");
    assert_eq!(read.meta.size, artifact.size);
    let bytes = b
        .blobs
        .get_bytes(&artifact.blob_key)
        .await
        .expect("artifact");
    assert_eq!(&bytes[..], b"HELLO CONVERTO\nattempt=1");
    assert_eq!(
        artifact.checksum,
        format!("sha256:{}", hex::encode(Sha256::digest(&bytes)))
    );
    let (_, part) = engine
        .open_artifact(c.id, "output.upper", Some(0..5))
        .await
        .expect("range");
    assert_eq!(part.range, 0..5);
    assert!(matches!(
        engine.open_artifact(c.id, "nope", None).await,
        Err(EngineError::ArtifactNotFound { .. })
    ));
    workers.stop().await;
}

/// One conversion can produce several artifacts.
pub async fn several_artifacts(b: &Backends) {
    let (engine, _) = engine_with(b, fast_config());
    let workers = Workers::start(&engine);
    let c = submit(&engine, "parts", json!({})).await;
    let (_, done) = follow(&engine, c.id).await;
    let names: Vec<_> = done.artifacts.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, vec!["a.upper", "b.txt"]);
    assert_eq!(
        &b.blobs
            .get_bytes(&done.artifacts[1].blob_key)
            .await
            .expect("b")[..],
        b"hello converto"
    );
    workers.stop().await;
}

/// A permanent error fails the conversion at once, with the reason kept.
pub async fn permanent_failure(b: &Backends) {
    let (engine, conv) = engine_with(b, fast_config());
    let workers = Workers::start(&engine);
    let c = submit(&engine, "upper", json!({"mode": "fail"})).await;
    let (_, done) = follow(&engine, c.id).await;
    assert_eq!(done.status, Status::Failed);
    assert_eq!(done.attempts, 1, "a permanent error must not be retried");
    assert_eq!(conv.calls(), 1);
    let err = done.error.expect("error kept");
    assert_eq!(err.code, "invalid_input");
    assert!(
        err.message.contains("scripted permanent failure"),
        "{err:?}"
    );
    assert!(done.artifacts.is_empty());
    wait_until_dequeued(b, c.id).await;
    workers.stop().await;
}

/// Temporary errors are retried with backoff until an attempt succeeds.
pub async fn retry_then_success(b: &Backends) {
    let (engine, conv) = engine_with(b, fast_config());
    let workers = Workers::start(&engine);
    let c = submit(
        &engine,
        "upper",
        json!({"mode": "flaky", "fail_attempts": 2}),
    )
    .await;
    let (events, done) = follow(&engine, c.id).await;
    assert_eq!(done.status, Status::Succeeded, "{done:?}");
    assert_eq!(done.attempts, 3);
    assert_eq!(conv.calls(), 3);
    let retries = events
        .iter()
        .filter(|e| {
            matches!(
                e,
                Event::Status {
                    status: Status::Queued,
                    error: Some(_),
                    ..
                }
            )
        })
        .count();
    assert_eq!(
        retries, 2,
        "each retry is announced with its error: {events:?}"
    );
    assert!(
        String::from_utf8_lossy(
            &b.blobs
                .get_bytes(&done.artifacts[0].blob_key)
                .await
                .expect("a")
        )
        .ends_with("attempt=3")
    );
    workers.stop().await;
}

/// After `max_attempts` temporary failures the conversion fails with the last error and the
/// job is dead-lettered.
pub async fn retries_exhausted(b: &Backends) {
    let (engine, conv) = engine_with(b, fast_config().max_attempts(2));
    let workers = Workers::start(&engine);
    let c = submit(&engine, "upper", json!({"mode": "flaky"})).await;
    let (_, done) = follow(&engine, c.id).await;
    assert_eq!(done.status, Status::Failed);
    assert_eq!(done.attempts, 2);
    assert_eq!(conv.calls(), 2);
    let err = done.error.expect("last error kept");
    assert_eq!(err.code, "scripted_flaky");
    assert!(
        err.message.contains("attempt 2"),
        "the last error, not the first: {err:?}"
    );
    assert_eq!(b.queue.stats().await.expect("stats").dead, 1);
    workers.stop().await;
}

/// An attempt that outruns the execution timeout is stopped (even one that ignores
/// cancellation) and fails with `timeout`, without retries.
pub async fn execution_timeout(b: &Backends) {
    let mut cfg = fast_config().job_timeout(Duration::from_millis(300));
    cfg.cancel_grace = Duration::from_millis(200);
    let (engine, conv) = engine_with(b, cfg);
    let workers = Workers::start(&engine);
    let hang = submit(&engine, "upper", json!({"mode": "hang"})).await;
    let stubborn = submit(
        &engine,
        "upper",
        json!({"mode": "stubborn", "sleep_ms": 30_000}),
    )
    .await;
    for id in [hang.id, stubborn.id] {
        let (_, done) = follow(&engine, id).await;
        assert_eq!(done.status, Status::Failed);
        assert_eq!(
            done.error.as_ref().map(|e| e.code.as_str()),
            Some("timeout"),
            "{done:?}"
        );
        assert_eq!(done.attempts, 1);
    }
    assert_eq!(conv.calls(), 2);
    workers.stop().await;
}

/// A conversion that waited in the queue longer than the queue-wait limit fails with
/// `queue_timeout` and never reaches a converter; the execution timeout is separate.
pub async fn queue_wait_limit(b: &Backends) {
    let cfg = fast_config().max_queue_wait(Some(Duration::from_millis(200)));
    let (engine, conv) = engine_with(b, cfg);
    let c = submit(&engine, "upper", json!({})).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let workers = Workers::start(&engine);
    let (_, done) = follow(&engine, c.id).await;
    assert_eq!(done.status, Status::Failed);
    assert_eq!(
        done.error.as_ref().map(|e| e.code.as_str()),
        Some("queue_timeout")
    );
    assert_eq!(conv.calls(), 0);
    let fresh = submit(&engine, "upper", json!({})).await;
    assert_eq!(
        follow(&engine, fresh.id).await.1.status,
        Status::Succeeded,
        "a prompt job is unaffected"
    );
    workers.stop().await;
}

/// Cancelling a queued conversion removes its job; it never runs; a second cancel conflicts.
pub async fn cancel_while_queued(b: &Backends) {
    let (engine, conv) = engine_with(b, fast_config());
    let c = submit(&engine, "upper", json!({})).await;
    let cancelled = engine.cancel(c.id).await.expect("cancel");
    assert_eq!(cancelled.status, Status::Cancelled);
    assert!(!b.queue.contains(c.id).await.expect("contains"));
    assert!(
        matches!(engine.cancel(c.id).await, Err(EngineError::Conflict(_))),
        "cancel of a finished conversion"
    );
    let workers = Workers::start(&engine);
    let other = submit(&engine, "upper", json!({})).await;
    follow(&engine, other.id).await;
    assert_eq!(conv.calls(), 1, "the cancelled conversion ran");
    assert_eq!(
        engine.get(c.id).await.expect("get").status,
        Status::Cancelled
    );
    workers.stop().await;
}

/// Cancelling a running conversion stops its converter; nothing overwrites the cancellation.
pub async fn cancel_while_running(b: &Backends) {
    let (engine, conv) = engine_with(b, fast_config());
    let workers = Workers::start(&engine);
    let c = submit(&engine, "upper", json!({"mode": "hang"})).await;
    wait_for_status(&engine, c.id, Status::Running).await;
    let sub = b.bus.subscribe(c.id).await.expect("subscribe");
    engine.cancel(c.id).await.expect("cancel");
    within(10, "converter to stop", async {
        while engine.running_here() > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(terminal_events(sub, Duration::from_millis(300)).await, 1);
    let done = engine.get(c.id).await.expect("get");
    assert_eq!(done.status, Status::Cancelled);
    assert!(done.artifacts.is_empty());
    assert_eq!(conv.calls(), 1);
    wait_until_dequeued(b, c.id).await;
    workers.stop().await;
}

/// A worker that dies mid-job loses its lease; another worker finishes the job, with exactly
/// one terminal transition.
pub async fn worker_dies_mid_job(b: &Backends) {
    let cfg = fast_config().lease_duration(Duration::from_millis(600));
    let (a, _) = engine_with(b, cfg.clone());
    let (bb, conv_b) = engine_with(b, cfg);
    let dying = Workers::start(&a);
    let c = submit(&a, "upper", json!({"mode": "hang", "hang_attempts": 1})).await;
    wait_for_status(&a, c.id, Status::Running).await;
    let sub = b.bus.subscribe(c.id).await.expect("subscribe");
    dying.kill().await;
    // What the dying worker had stored of its outputs before it died.
    let prefix = crate::intake::layout::artifacts(&c.tenant, c.id);
    b.blobs
        .put_bytes(
            &format!("{prefix}1/half-written.upper"),
            Bytes::from("HALF"),
        )
        .await
        .expect("put");
    let survivor = Workers::start(&bb);
    let (_, done) = follow(&bb, c.id).await;
    assert_eq!(done.status, Status::Succeeded, "{done:?}");
    assert_eq!(done.attempts, 2);
    assert_eq!(conv_b.calls(), 1);
    let mut stored: Vec<String> = b
        .blobs
        .list(&prefix)
        .await
        .expect("list")
        .into_iter()
        .map(|m| m.key)
        .collect();
    stored.sort();
    let mut kept: Vec<String> = done.artifacts.iter().map(|a| a.blob_key.clone()).collect();
    kept.sort();
    assert_eq!(
        stored, kept,
        "one set of artifacts: the dead attempt's are removed"
    );
    assert_eq!(
        terminal_events(sub, Duration::from_millis(300)).await,
        1,
        "exactly one terminal transition"
    );
    survivor.stop().await;
}

/// A job a worker reserved ahead of its free slots (prefetched) is leased to it: when the
/// worker dies, it comes back after its lease expires, as a new delivery, and another worker
/// runs it.
pub async fn prefetched_jobs_of_a_dead_worker_come_back(b: &Backends) {
    // One slot, one job ahead; no heartbeats, so nothing but the crash ends the hold.
    let mut dying_cfg = fast_config()
        .concurrency(1)
        .prefetch(1)
        .lease_duration(Duration::from_millis(600));
    dying_cfg.heartbeat_interval = Duration::from_secs(3600);
    let (a, conv_a) = engine_with(b, dying_cfg);
    let (bb, _) = engine_with(b, fast_config());
    // Queued before the workers start, so their first reserve takes both: the first runs
    // (and hangs), the second waits in the prefetch buffer.
    let hanging = submit(&a, "upper", json!({"mode": "hang", "hang_attempts": 1})).await;
    let waiting = submit(&a, "upper", json!({})).await;
    let dying = Workers::start(&a);
    // Running is announced just before the converter is called: wait for the call.
    within(30, "the first job's converter to start", async {
        while conv_a.calls() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    dying.kill().await;
    assert_eq!(conv_a.calls(), 1, "the dead worker started one job");
    let survivor = Workers::start(&bb);
    let (_, done) = follow(&bb, waiting.id).await;
    assert_eq!(
        (done.status, done.attempts),
        (Status::Succeeded, 2),
        "the prefetched job was delivered to the dead worker, then again after its lease expired"
    );
    let (_, done) = follow(&bb, hanging.id).await;
    assert_eq!(done.status, Status::Succeeded, "{done:?}");
    survivor.stop().await;
}

/// A worker that lost its lease but keeps running cannot finish the job: the new attempt's
/// result stands and the stale artifacts are removed.
pub async fn stale_worker_is_fenced(b: &Backends) {
    // One slot, held by the stubborn attempt: the stale engine cannot also take the job's
    // re-delivery (which, never heartbeating, it would lose again).
    let mut stale_cfg = fast_config()
        .concurrency(1)
        .lease_duration(Duration::from_millis(300));
    stale_cfg.heartbeat_interval = Duration::from_secs(3600); // never extends its lease
    let (stale, stale_conv) = engine_with(b, stale_cfg);
    let (fresh, _) = engine_with(b, fast_config());
    let a = Workers::start(&stale);
    let c = submit(
        &stale,
        "upper",
        json!({"mode": "stubborn", "stubborn_attempts": 1, "sleep_ms": 1500}),
    )
    .await;
    wait_for_status(&stale, c.id, Status::Running).await;
    let sub = b.bus.subscribe(c.id).await.expect("subscribe");
    let bw = Workers::start(&fresh);
    let (_, done) = follow(&fresh, c.id).await;
    assert_eq!(done.status, Status::Succeeded);
    assert_eq!(done.attempts, 2);
    // Let the stale attempt finish and try to record its result.
    within(10, "stale worker to finish", async {
        while stale.running_here() > 0 || stale_conv.calls() == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(terminal_events(sub, Duration::from_millis(300)).await, 1);
    let after = fresh.get(c.id).await.expect("get");
    assert_eq!(after.attempts, 2);
    assert_eq!(
        after.artifacts, done.artifacts,
        "the stale worker overwrote the result"
    );
    let content = b
        .blobs
        .get_bytes(&after.artifacts[0].blob_key)
        .await
        .expect("artifact");
    assert!(String::from_utf8_lossy(&content).ends_with("attempt=2"));
    let stale_blobs = b
        .blobs
        .list(&format!(
            "{}1/",
            crate::intake::layout::artifacts(&c.tenant, c.id)
        ))
        .await
        .expect("list");
    assert!(
        stale_blobs.is_empty(),
        "stale artifacts left behind: {stale_blobs:?}"
    );
    a.stop().await;
    bw.stop().await;
}

/// Higher priority starts first; a not-before time is respected.
pub async fn priority_and_not_before(b: &Backends) {
    let (engine, _) = engine_with(b, fast_config().concurrency(1));
    let sub = |p: i32| {
        Submission::new(
            f("upper"),
            SubmitInput::bytes(Bytes::from_static(b"x"), Some("p.txt".into())),
        )
        .priority(p)
    };
    let low = engine.submit(sub(0)).await.expect("low").conversion;
    let high = engine.submit(sub(10)).await.expect("high").conversion;
    let later = Utc::now() + chrono::Duration::milliseconds(800);
    let delayed = engine
        .submit(sub(100).not_before(later))
        .await
        .expect("delayed")
        .conversion;
    let workers = Workers::start(&engine);
    let mut done = Vec::new();
    for id in [low.id, high.id, delayed.id] {
        done.push(follow(&engine, id).await.1);
    }
    let started = |c: &Conversion| c.started_at.expect("started");
    assert!(
        started(&done[1]) <= started(&done[0]),
        "priority 10 must start before priority 0"
    );
    assert!(
        started(&done[2]) >= later,
        "started before its not-before time"
    );
    workers.stop().await;
}

/// The same idempotency key gives the same conversion and stores one input.
pub async fn idempotent_submit(b: &Backends) {
    let (engine, _) = engine_with(b, fast_config());
    let mk = || {
        Submission::new(
            f("upper"),
            SubmitInput::bytes(Bytes::from_static(b"once"), Some("i.txt".into())),
        )
        .idempotency_key("key-1")
    };
    let first = engine.submit(mk()).await.expect("first");
    let second = engine.submit(mk()).await.expect("second");
    assert!(first.created && !second.created);
    assert_eq!(first.conversion.id, second.conversion.id);
    let inputs = b
        .blobs
        .list(crate::intake::layout::TENANTS)
        .await
        .expect("list");
    assert_eq!(
        inputs.len(),
        1,
        "a replay must not leave a second input: {inputs:?}"
    );
    let other = engine
        .submit(mk().idempotency_key("key-2"))
        .await
        .expect("other");
    assert_ne!(other.conversion.id, first.conversion.id);

    // The key binds to the request: the same key with other content or fields is refused,
    // and the refused replay leaves nothing behind and removes nothing.
    let before = b.blobs.list("").await.expect("list").len();
    let other_bytes = Submission::new(
        f("upper"),
        SubmitInput::bytes(Bytes::from_static(b"twice"), Some("i.txt".into())),
    )
    .idempotency_key("key-1");
    let refused = [
        (other_bytes, "input"),
        (mk().priority(7), "priority"),
        (mk().label("team", "b"), "labels"),
        (mk().options(json!({"steps": 2})), "options"),
    ];
    for (replay, expected) in refused {
        match engine.submit(replay).await {
            Err(EngineError::IdempotencyMismatch { id, field }) => {
                assert_eq!((id, field), (first.conversion.id, expected));
            }
            other => panic!("a replay with another {expected} must be refused: {other:?}"),
        }
        assert_eq!(b.blobs.list("").await.expect("list").len(), before);
    }
    let again = engine.submit(mk()).await.expect("same request again");
    assert_eq!(again.conversion.id, first.conversion.id);
}

/// Several workers over the same backends run every job exactly once.
pub async fn concurrent_workers_never_share_a_job(b: &Backends) {
    let engines: Vec<_> = (0..3)
        .map(|_| engine_with(b, fast_config().concurrency(3)))
        .collect();
    let workers: Vec<_> = engines.iter().map(|(e, _)| Workers::start(e)).collect();
    let mut ids = Vec::new();
    for i in 0..45 {
        ids.push(
            submit(&engines[i % 3].0, "upper", json!({"sleep_ms": 5}))
                .await
                .id,
        );
    }
    for id in &ids {
        let (_, done) = follow(&engines[0].0, *id).await;
        assert_eq!((done.status, done.attempts), (Status::Succeeded, 1));
    }
    let calls: u32 = engines.iter().map(|(_, c)| c.calls()).sum();
    assert_eq!(calls, 45, "jobs ran more than once");
    for w in workers {
        w.stop().await;
    }
}

/// Shutdown lets quick jobs finish and hands slow ones back, which another worker completes.
pub async fn graceful_shutdown(b: &Backends) {
    let cfg = fast_config().shutdown_grace(Duration::from_millis(1000));
    let (a, _) = engine_with(b, cfg.clone());
    let w = Workers::start(&a);
    let quick = submit(&a, "upper", json!({"sleep_ms": 100})).await;
    let slow = submit(&a, "upper", json!({"mode": "hang", "hang_attempts": 1})).await;
    wait_for_status(&a, slow.id, Status::Running).await;
    wait_until_started(&a, quick.id).await;
    w.stop().await;
    assert_eq!(
        a.get(quick.id).await.expect("get").status,
        Status::Succeeded,
        "a job within the grace must finish"
    );
    let handed = a.get(slow.id).await.expect("get");
    assert_eq!(
        handed.status,
        Status::Queued,
        "a job past the grace must be handed back"
    );
    assert!(b.queue.contains(slow.id).await.expect("contains"));
    let (bb, _) = engine_with(b, cfg);
    let w2 = Workers::start(&bb);
    let (_, done) = follow(&bb, slow.id).await;
    assert_eq!(done.status, Status::Succeeded);
    w2.stop().await;
}

/// A record whose queue entry was lost (crash between the two writes) is re-enqueued by the
/// sweeper and completes.
pub async fn sweeper_recovers_lost_queue_entries(b: &Backends) {
    let (engine, _) = engine_with(b, fast_config());
    let id = ConversionId::new();
    let key = crate::intake::layout::input(crate::DEFAULT_TENANT, id);
    b.blobs
        .put_bytes(&key, Bytes::from_static(b"orphan"))
        .await
        .expect("input");
    b.store
        .create(NewConversion {
            id,
            tenant: "default".into(),
            source_format: f("txt"),
            target_format: f("upper"),
            options: json!({}),
            labels: Default::default(),
            priority: 0,
            input_key: key,
            input_name: Some("orphan.txt".into()),
            description: None,
            tags: Vec::new(),
            input_size: 6,
            idempotency_key: None,
        })
        .await
        .expect("create");
    assert!(!b.queue.contains(id).await.expect("contains"));
    assert_eq!(engine.sweep().await.expect("sweep"), 1);
    assert_eq!(
        engine.sweep().await.expect("sweep again"),
        0,
        "the sweeper must not enqueue twice"
    );
    let w = Workers::start(&engine);
    let (_, done) = follow(&engine, id).await;
    assert_eq!(done.status, Status::Succeeded);
    w.stop().await;
}

/// An existing blob handed to two conversions (one upload converted twice) survives the
/// deletion of the first, feeds the second, and goes with the last.
pub async fn shared_inputs_stay_until_their_last_conversion_goes(b: &Backends) {
    let (engine, _) = engine_with(b, fast_config());
    let key = "uploads/shared-input";
    b.blobs
        .put_bytes(key, Bytes::from_static(b"shared"))
        .await
        .expect("upload");
    let sub = || {
        Submission::new(
            f("upper"),
            SubmitInput::Blob {
                key: key.into(),
                file_name: Some("s.txt".into()),
            },
        )
    };
    let first = engine.submit(sub()).await.expect("first").conversion;
    let second = engine.submit(sub()).await.expect("second").conversion;
    engine.delete(first.id).await.expect("delete the first");
    assert!(
        b.blobs.head(key).await.is_ok(),
        "deleting one conversion deleted the input another one needs"
    );
    let w = Workers::start(&engine);
    let (_, done) = follow(&engine, second.id).await;
    assert_eq!(done.status, Status::Succeeded);
    let out = b
        .blobs
        .get_bytes(&done.artifacts[0].blob_key)
        .await
        .expect("artifact");
    assert!(out.starts_with(b"SHARED"));
    engine.delete(second.id).await.expect("delete the second");
    let left = b.blobs.list("uploads/").await.expect("list");
    assert!(left.is_empty(), "left behind: {left:?}");
    w.stop().await;
}

/// Deleting a conversion removes the record, the job and every blob.
pub async fn delete_removes_everything(b: &Backends) {
    let (engine, _) = engine_with(b, fast_config());
    let w = Workers::start(&engine);
    let c = submit(&engine, "parts", json!({})).await;
    follow(&engine, c.id).await;
    assert!(
        !b.blobs
            .list(&crate::intake::layout::conversion(&c.tenant, c.id))
            .await
            .expect("list")
            .is_empty()
    );
    engine.delete(c.id).await.expect("delete");
    assert!(matches!(
        engine.get(c.id).await,
        Err(EngineError::NotFound { .. })
    ));
    assert!(
        b.blobs
            .list(&crate::intake::layout::conversion(&c.tenant, c.id))
            .await
            .expect("list")
            .is_empty(),
        "blobs left"
    );
    assert!(matches!(
        engine.delete(c.id).await,
        Err(EngineError::NotFound { .. })
    ));
    let queued = submit(&engine, "upper", json!({"mode": "hang"})).await;
    engine
        .delete(queued.id)
        .await
        .expect("delete a live conversion");
    assert!(!b.queue.contains(queued.id).await.expect("contains"));
    w.stop().await;
}

/// Bad submissions are refused with a typed error and leave no record or blob.
pub async fn bad_submissions_leave_nothing(b: &Backends) {
    let mut cfg = fast_config();
    cfg.max_input_bytes = Some(1000);
    let (engine, _) = engine_with(b, cfg);
    let input = |data: &'static [u8], name: Option<&str>| {
        SubmitInput::bytes(Bytes::from_static(data), name.map(str::to_owned))
    };
    let r = engine
        .submit(Submission::new(f("step"), input(b"abc", Some("a.txt"))))
        .await;
    match r {
        Err(EngineError::UnsupportedRoute { supported, .. }) => {
            assert!(!supported.is_empty(), "the supported routes are listed")
        }
        other => panic!("want UnsupportedRoute: {other:?}"),
    }
    assert!(matches!(
        engine
            .submit(Submission::new(f("upper"), input(b"", Some("a.txt"))))
            .await,
        Err(EngineError::EmptyInput)
    ));
    assert!(matches!(
        engine
            .submit(Submission::new(f("upper"), input(b"\x00\x01", None)))
            .await,
        Err(EngineError::UnknownSourceFormat { .. })
    ));
    let bad_opts = Submission::new(f("upper"), input(b"abc", Some("a.txt"))).options(json!([1, 2]));
    assert!(matches!(
        engine.submit(bad_opts).await,
        Err(EngineError::InvalidOptions(_))
    ));
    // Options the converter refuses are refused before anything is stored, whether the source
    // format is given or sniffed from the upload.
    let refused = Submission::new(f("upper"), input(b"abc", Some("a.txt")))
        .options(json!({"mode": "no-such-mode"}));
    match engine.submit(refused).await {
        Err(EngineError::InvalidOptions(detail)) => assert!(detail.contains("no-such-mode")),
        other => panic!("want InvalidOptions: {other:?}"),
    }
    let refused = Submission::new(f("upper"), input(b"abc", Some("a.txt")))
        .source(f("txt"))
        .options(json!({"mode": 7}));
    assert!(matches!(
        engine.submit(refused).await,
        Err(EngineError::InvalidOptions(_))
    ));
    let big = SubmitInput::Stream {
        body: futures::stream::iter((0..10).map(|_| Ok(Bytes::from(vec![b'a'; 500])))).boxed(),
        file_name: Some("big.txt".into()),
    };
    assert!(matches!(
        engine.submit(Submission::new(f("upper"), big)).await,
        Err(EngineError::InputTooLarge { limit: 1000 })
    ));
    assert!(
        b.blobs
            .list(crate::intake::layout::TENANTS)
            .await
            .expect("list")
            .is_empty(),
        "a refused upload left a blob"
    );
    let page = engine.list(&ListQuery::default()).await.expect("list");
    assert!(page.items.is_empty(), "a refused submission left a record");
}

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::StreamExt;
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{Engine, EngineError, Inner};
use crate::ConversionId;
use crate::blob::ByteStream;
use crate::conversion::{Artifact, Conversion, ErrorInfo, Progress, Status, Transition};
use crate::converter::{ConvertContext, ConvertError, ConvertRequest, Output, OutputBody};
use crate::progress::Event;
use crate::queue::{Lease, QueueError, after};
use crate::store::{ConversionStore, StoreError};

/// Why a running attempt was stopped from outside the converter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Cancelled,
    LeaseLost,
    TimedOut,
    Shutdown,
}

impl Engine {
    /// Runs workers until `shutdown` is cancelled, then drains: no new reservations, running
    /// jobs get `shutdown_grace` to finish, and whatever is still running after that is
    /// cancelled and handed back to the queue for another worker.
    pub async fn run_workers(&self, shutdown: CancellationToken) -> Result<(), EngineError> {
        let inner = &self.inner;
        let cfg = &inner.config;
        let slots = Arc::new(Semaphore::new(cfg.concurrency));
        // Shared by every job (an `Arc`: cloning the token itself takes a lock).
        let hand_back = Arc::new(CancellationToken::new());
        let mut jobs = JoinSet::new();
        let sweeper_stop = shutdown.child_token();
        let sweeper = (!cfg.sweep_interval.is_zero())
            .then(|| tokio::spawn(super::sweeper::run(Arc::clone(inner), sweeper_stop.clone())));
        let janitor = (!cfg.janitor_interval.is_zero()).then(|| {
            tokio::spawn(super::sweeper::run_janitor(
                Arc::clone(inner),
                sweeper_stop.clone(),
            ))
        });
        let mut failures = 0u32;
        // Leases reserved beyond the free slots (`EngineConfig::prefetch`), in delivery order.
        let mut prefetched = std::collections::VecDeque::<Prefetched>::new();
        loop {
            while jobs.try_join_next().is_some() {}
            if shutdown.is_cancelled() {
                break;
            }
            // A prefetched job waits at most a heartbeat interval for a slot, then goes back
            // to the queue (uncounted) for any worker: its lease never runs out while held.
            if !prefetched.is_empty() {
                release_expired(inner, &mut prefetched).await;
            }
            // A slot free now is taken without a select (and its timer): the busy case.
            let first = match Arc::clone(&slots).try_acquire_owned() {
                Ok(p) => p,
                Err(_) => {
                    let hold_until = prefetched
                        .front()
                        .map(|p| tokio::time::Instant::from_std(p.at + cfg.heartbeat_interval));
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = sleep_until(hold_until) => continue,
                        p = Arc::clone(&slots).acquire_owned() => match p {
                            Ok(p) => p,
                            Err(_) => break,
                        },
                    }
                }
            };
            if let Some(held) = prefetched.pop_front() {
                let inner = Arc::clone(inner);
                let hand_back = Arc::clone(&hand_back);
                // Boxed (here and below): the task then holds a pointer, and spawning it, and
                // finishing it, move a few bytes instead of the whole job's state.
                jobs.spawn(Box::pin(async move {
                    if let Some(lease) = held.refreshed(&inner).await {
                        run_job(&inner, lease, hand_back).await;
                    }
                    drop(first);
                }));
                continue;
            }
            let extra = slots
                .available_permits()
                .min(cfg.reserve_batch.saturating_sub(1));
            let mut permits = vec![first];
            if extra > 0
                && let Ok(more) = Arc::clone(&slots).try_acquire_many_owned(extra as u32)
            {
                permits.push(more);
            }
            // At most one job ahead per slot.
            let want = 1 + extra + cfg.prefetch.min(cfg.concurrency);
            // Tenants at their running limit are skipped (see `admission`).
            let options = inner.admission.reserve_options(inner).await;
            let reserved = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = inner.backends.queue.reserve_with(want, cfg.lease_duration, Duration::from_secs(5), &options) => r,
            };
            let leases = match reserved {
                Ok(l) => {
                    failures = 0;
                    l
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    let delay = cfg
                        .retry_delay(failures.min(8))
                        .min(Duration::from_secs(10));
                    tracing::warn!(error = %e, ?delay, "reserving jobs failed; backing off");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(delay) => continue,
                    }
                }
            };
            // Split the acquired permits into one per lease; the rest go back on drop.
            let mut singles = Vec::with_capacity(leases.len());
            for mut p in permits {
                while p.num_permits() > 1 && singles.len() < leases.len() {
                    if let Some(one) = p.split(1) {
                        singles.push(one);
                    }
                }
                if singles.len() < leases.len() {
                    singles.push(p);
                }
            }
            let mut leases = leases.into_iter();
            // Permits first: `zip` takes from its first iterator before it learns that the
            // second is done, and a lease taken so would be lost.
            for (permit, lease) in singles.into_iter().zip(leases.by_ref()) {
                let inner = Arc::clone(inner);
                let hand_back = Arc::clone(&hand_back);
                jobs.spawn(Box::pin(async move {
                    run_job(&inner, lease, hand_back).await;
                    drop(permit);
                }));
            }
            let now = Instant::now();
            prefetched.extend(leases.map(|lease| Prefetched { lease, at: now }));
        }
        // Prefetched jobs never started: handed back at once, in their old places.
        for held in prefetched {
            ignore_lost(inner.backends.queue.release(&held.lease).await);
        }
        sweeper_stop.cancel();
        // Drain: give running jobs their grace, then hand the rest back.
        let grace = tokio::time::sleep(cfg.shutdown_grace);
        tokio::pin!(grace);
        loop {
            tokio::select! {
                next = jobs.join_next() => if next.is_none() { break },
                _ = &mut grace, if !hand_back.is_cancelled() => {
                    tracing::info!(running = jobs.len(), "shutdown grace over; handing running jobs back");
                    hand_back.cancel();
                }
            }
        }
        for task in [sweeper, janitor].into_iter().flatten() {
            let _ = task.await;
        }
        Ok(())
    }
}

/// Hands back the prefetched jobs that waited a heartbeat interval for a slot (see
/// [`EngineConfig::prefetch`](super::EngineConfig)).
async fn release_expired(inner: &Inner, prefetched: &mut std::collections::VecDeque<Prefetched>) {
    let hold = inner.config.heartbeat_interval;
    let now = Instant::now();
    while prefetched.front().is_some_and(|p| now >= p.at + hold) {
        if let Some(held) = prefetched.pop_front() {
            ignore_lost(inner.backends.queue.release(&held.lease).await);
        }
    }
}

/// Sleeps until `at`, or forever.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A lease reserved ahead of a free slot ([`EngineConfig::prefetch`](super::EngineConfig)).
struct Prefetched {
    lease: Lease,
    /// When it was reserved.
    at: Instant,
}

impl Prefetched {
    /// The lease, ready to run: one that waited longer than a heartbeat interval is extended
    /// first, as it would have been had it been running (if it was lost meanwhile, `None`:
    /// another worker has the job, or will).
    async fn refreshed(self, inner: &Inner) -> Option<Lease> {
        let cfg = &inner.config;
        if self.at.elapsed() < cfg.heartbeat_interval {
            return Some(self.lease);
        }
        match inner
            .backends
            .queue
            .heartbeat(&self.lease, cfg.lease_duration)
            .await
        {
            Ok(lease) => Some(lease),
            Err(QueueError::LeaseLost { .. }) => None,
            Err(e) => {
                // Run it: its own heartbeats will tell whether the lease holds.
                tracing::warn!(id = %self.lease.id, error = %e, "could not extend a prefetched lease");
                Some(self.lease)
            }
        }
    }
}

/// Runs one delivery of one job, start to verdict. Never panics on a job's failure; every path
/// either records a verdict, hands the job back, or leaves the lease to expire.
///
/// Its future is kept small (records boxed, rare paths boxed): one is spawned per job, and a
/// large one costs a large allocation and large copies each time.
async fn run_job(inner: &Arc<Inner>, lease: Lease, hand_back: Arc<CancellationToken>) {
    // The ticket is held until the job ends: its share of its tenant's running limit.
    let Some((record, ticket)) = start_job(inner, &lease).await else {
        return;
    };

    let started = Instant::now();
    let outcome = execute(inner, &lease, &record, &hand_back).await;
    metrics::histogram!("converto_conversion_duration_seconds")
        .record(started.elapsed().as_secs_f64());

    match outcome {
        Outcome::Done(outputs, scratch) => {
            let stored = store_artifacts(inner, &record, lease.attempt, outputs).await;
            drop(scratch);
            drop(record);
            match stored {
                Ok(artifacts) => finish_succeeded(inner, &lease, artifacts).await,
                Err(error) => Box::pin(handle_failure(inner, &lease, error, true)).await,
            }
        }
        Outcome::Failed(error, temporary) => {
            Box::pin(handle_failure(inner, &lease, error, temporary)).await
        }
        Outcome::Stopped(stop) => Box::pin(stopped(inner, &lease, stop)).await,
    }
    drop(ticket);
}

/// Admits a delivery and starts its attempt: the record says running (announced and
/// published), or the job was settled otherwise (handed back, found finished or gone, failed
/// before it ran) and `None` is returned.
async fn start_job(
    inner: &Arc<Inner>,
    lease: &Lease,
) -> Option<(Box<Conversion>, Option<super::admission::Ticket>)> {
    let id = lease.id;
    let cfg = &inner.config;
    let queue = &inner.backends.queue;

    // (Boxed: most engines limit no tenant, and their jobs need not hold room for the check.)
    let mut ticket = if inner.limits.may_limit_running() {
        match Box::pin(inner.admission.admit(inner, lease)).await {
            super::admission::Admit::Go(ticket) => ticket,
            super::admission::Admit::HandedBack => return None,
        }
    } else {
        None
    };
    let start = Transition::Start {
        attempt: lease.attempt,
    };
    let started = inner.verdicts.transition(id, &start).await.map(Box::new);
    let record = match started {
        Ok(r) => {
            if let Some(t) = ticket.as_mut() {
                t.started();
            }
            inner.announce(&r).await;
            r
        }
        Err(StoreError::Conflict(c)) if c.status.is_terminal() => {
            // Cancelled or finished meanwhile: the queue entry is left over, and the webhooks
            // of that status may not be queued yet (the process died in between).
            if Box::pin(inner.announce_stored(id)).await {
                ignore_lost(queue.ack(lease).await);
            }
            return None;
        }
        Err(StoreError::NotFound { .. }) => {
            let _ = queue.remove(id).await;
            return None;
        }
        Err(e) => {
            tracing::warn!(%id, error = %e, "could not start; leaving the lease to expire");
            return None;
        }
    };
    let attempt = lease.attempt;

    if attempt > cfg.max_attempts {
        // Earlier deliveries died without a verdict (the worker crashed or lost its lease).
        let error = ErrorInfo::new(
            "worker_lost",
            format!(
                "{} attempts ended without a result (workers stopped or lost their leases)",
                attempt - 1
            ),
        );
        Box::pin(finish_failed(inner, lease, error, true)).await;
        return None;
    }
    if let Some(limit) = cfg.max_queue_wait {
        let waited = (Utc::now() - record.created_at)
            .to_std()
            .unwrap_or_default();
        if attempt == 1 && waited > limit {
            let error = ErrorInfo::new(
                "queue_timeout",
                format!(
                    "waited {:.1}s in the queue, longer than the limit of {:.1}s",
                    waited.as_secs_f64(),
                    limit.as_secs_f64()
                ),
            );
            Box::pin(finish_failed(inner, lease, error, false)).await;
            return None;
        }
    }
    inner.publish(Event::status_of(&record)).await;
    Some((record, ticket))
}

/// Settles an attempt stopped from outside the converter.
async fn stopped(inner: &Arc<Inner>, lease: &Lease, stop: Stop) {
    let queue = &inner.backends.queue;
    let (id, attempt) = (lease.id, lease.attempt);
    match stop {
        Stop::Cancelled => {
            // The record is already cancelled; the queue entry was removed by `cancel`.
            ignore_lost(queue.ack(lease).await);
        }
        Stop::LeaseLost => {
            tracing::warn!(%id, attempt, "lease lost; another worker owns the job now");
        }
        Stop::TimedOut => {
            let error = ErrorInfo::new(
                "timeout",
                format!(
                    "the conversion ran longer than the execution timeout of {:.1}s",
                    inner.config.job_timeout.as_secs_f64()
                ),
            );
            finish_failed(inner, lease, error, false).await;
        }
        Stop::Shutdown => {
            let t = Transition::Requeue {
                attempt,
                error: None,
            };
            if let Ok(r) = lease_transition(inner, lease, &t).await {
                ignore_lost(queue.retry(lease, Utc::now()).await);
                inner.publish(Event::status_of(&r)).await;
            }
        }
    }
}

enum Outcome {
    Done(Vec<Output>, Box<ConvertContext>),
    Failed(ErrorInfo, bool),
    Stopped(Stop),
}

/// How long a job runs before it subscribes to the bus for cancellations from other processes.
/// Shorter jobs skip the subscription (their cancellation still lands: the record is guarded,
/// and the heartbeat notices the removed queue entry).
const SUBSCRIBE_AFTER: Duration = Duration::from_millis(50);

/// Runs the converter with heartbeats, a timeout, cancellation and throttled progress, all
/// supervised from this one task: no helper task is spawned per job.
async fn execute(
    inner: &Arc<Inner>,
    lease: &Lease,
    record: &Conversion,
    hand_back: &CancellationToken,
) -> Outcome {
    let id = record.id;
    let attempt = lease.attempt;
    // A chained route comes back as one converter running its hops: the timeout, the
    // cancellation and the progress below cover the whole chain.
    let Some(converter) = inner
        .registry
        .resolve(&record.source_format, &record.target_format)
    else {
        return Outcome::Failed(
            ErrorInfo::new(
                "unsupported_route",
                format!(
                    "no converter for {} -> {} on this worker",
                    record.source_format, record.target_format
                ),
            ),
            false,
        );
    };

    let cancel = CancellationToken::new();
    inner.register_running(id, attempt, cancel.clone());

    // The converter's reports go into a slot (latest value wins); the supervisor forwards them
    // to the bus at most once per `progress_interval`.
    let progress = Arc::new(ProgressSlot::default());
    let progress_fn = {
        let progress = Arc::clone(&progress);
        Arc::new(move |percent: u8, stage: Option<&str>| progress.report(percent, stage))
    };

    // Boxed from the start: it outlives the attempt (see `Outcome::Done`), and the job's
    // future holds a pointer instead.
    let ctx = Box::new(ConvertContext::for_blob(
        Arc::clone(&inner.backends.blobs),
        record.input_key.clone(),
        record
            .input_name
            .clone()
            .unwrap_or_else(|| ["input.", record.source_format.as_str()].concat()),
        inner.scratch_dir().await,
        progress_fn,
        cancel.clone(),
    ));
    let request = ConvertRequest {
        id,
        attempt,
        source: record.source_format.clone(),
        target: record.target_format.clone(),
        options: record.options.clone(),
    };

    let (stop, result) = {
        // The timers count from here, as if set before the converter's first poll.
        let began = tokio::time::Instant::now();
        let mut convert = converter.convert(&request, &ctx);
        // A converter done at its first poll needs no supervision: no timer is set and no
        // supervisor state is allocated for it. The others get the supervisor, boxed.
        match futures::poll!(&mut convert) {
            std::task::Poll::Ready(r) => (None, r),
            std::task::Poll::Pending => {
                let supervision = Supervision {
                    inner,
                    lease,
                    cancel: &cancel,
                    hand_back,
                    began,
                };
                Box::pin(supervision.supervise(&mut convert, &progress)).await
            }
        }
    };
    inner.unregister_running(id, attempt);
    // Flush the last report, so even a fast conversion shows its progress.
    if let (Some(progress), None) = (progress.take(), stop) {
        Box::pin(inner.publish(Event::Progress {
            id,
            attempt,
            progress,
        }))
        .await;
    }

    match (stop, result) {
        (Some(why), _) => Outcome::Stopped(why),
        (None, Ok(outputs)) => Outcome::Done(outputs, ctx),
        (None, Err(e)) => {
            let temporary = e.is_temporary();
            let message = match &e {
                // The blob store's errors name keys and the places it keeps them: logged, not
                // shown to the client.
                crate::converter::ConvertError::Blob(inner_error) => {
                    tracing::warn!(%id, attempt, error = %inner_error, "reading the input failed");
                    "the input could not be read from the blob store".to_owned()
                }
                _ => e.to_string(),
            };
            Outcome::Failed(ErrorInfo::new(e.code(), message), temporary)
        }
    }
}

/// Where a running converter's progress reports wait to be forwarded to the bus: the latest
/// one wins, and a report never goes backwards (a lower percent with the same stage is
/// ignored). A `Notify` rather than a `watch` channel: one lock and no fan-out per attempt.
#[derive(Debug, Default)]
struct ProgressSlot {
    state: Mutex<ProgressState>,
    /// Woken on each report (one stored permit if nobody waits).
    changed: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct ProgressState {
    /// The highest percent reported, and the last stage.
    percent: u8,
    stage: Option<String>,
    /// The latest report not forwarded yet.
    pending: Option<Progress>,
}

impl ProgressSlot {
    /// A converter's report.
    fn report(&self, percent: u8, stage: Option<&str>) {
        let mut s = self.state.lock();
        let stage_changed = stage.is_some() && s.stage.as_deref() != stage;
        if percent > s.percent || stage_changed {
            s.percent = s.percent.max(percent);
            if stage_changed {
                s.stage = stage.map(str::to_owned);
            }
            s.pending = Some(Progress::new(s.percent, s.stage.clone()));
            drop(s);
            self.changed.notify_one();
        }
    }

    /// The report to forward, if one came since the last take.
    fn take(&self) -> Option<Progress> {
        self.state.lock().pending.take()
    }
}

/// What the supervisor of one running attempt watches besides the converter.
struct Supervision<'a> {
    inner: &'a Arc<Inner>,
    lease: &'a Lease,
    /// This attempt's own cancellation (a cancel in this process).
    cancel: &'a CancellationToken,
    /// Shutdown's hand-back of running jobs.
    hand_back: &'a CancellationToken,
    /// When the converter was first polled: the timeout and the first heartbeat count from here.
    began: tokio::time::Instant,
}

/// The converter's future, as [`crate::Converter::convert`] returns it.
type ConvertFuture<'a> = futures::future::BoxFuture<'a, Result<Vec<Output>, ConvertError>>;

impl Supervision<'_> {
    /// Drives a converter that did not finish at its first poll, with heartbeats, the timeout,
    /// cancellation (here, from the bus, by shutdown) and throttled progress; on a stop from
    /// outside, tells the converter and gives it `cancel_grace` to clean up.
    async fn supervise(
        self,
        convert: &mut ConvertFuture<'_>,
        progress: &ProgressSlot,
    ) -> (Option<Stop>, Result<Vec<Output>, ConvertError>) {
        let Supervision {
            inner,
            lease,
            cancel,
            hand_back,
            began,
        } = self;
        let id = lease.id;
        let attempt = lease.attempt;
        let cfg = &inner.config;
        let timeout = match began.checked_add(cfg.job_timeout) {
            Some(at) => tokio::time::sleep_until(at),
            None => tokio::time::sleep(cfg.job_timeout),
        };
        tokio::pin!(timeout);
        let hb_every = cfg.heartbeat_interval.max(Duration::from_millis(10));
        let mut heartbeat = tokio::time::interval_at(began + hb_every, hb_every);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let subscribe = tokio::time::sleep_until(began + SUBSCRIBE_AFTER);
        tokio::pin!(subscribe);
        let mut events: Option<crate::progress::EventStream> = None;
        let mut subscribed = false;
        let throttle = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(throttle);
        let mut throttled = false;
        let mut lease = lease.clone();

        let mut stop = None;
        let result = loop {
            tokio::select! {
                biased;
                r = &mut *convert => break Some(r),
                _ = cancel.cancelled() => { stop = Some(Stop::Cancelled); break None }
                _ = hand_back.cancelled() => { stop = Some(Stop::Shutdown); break None }
                _ = &mut timeout => { stop = Some(Stop::TimedOut); break None }
                _ = heartbeat.tick() => match inner.backends.queue.heartbeat(&lease, cfg.lease_duration).await {
                    Ok(l) => lease = l,
                    Err(QueueError::LeaseLost { .. }) => {
                        // A cancel removes the queue entry: tell the two apart by the record.
                        let cancelled = matches!(inner.backends.store.get(id).await, Ok(r) if r.status == Status::Cancelled);
                        stop = Some(if cancelled { Stop::Cancelled } else { Stop::LeaseLost });
                        break None;
                    }
                    Err(e) => tracing::warn!(%id, error = %e, "heartbeat failed; will try again"),
                },
                _ = &mut subscribe, if !subscribed => {
                    subscribed = true;
                    match inner.backends.bus.subscribe(id).await {
                        Ok(s) => events = Some(s),
                        Err(e) => tracing::warn!(%id, error = %e, "no cancellation events; relying on heartbeats"),
                    }
                }
                ev = next_event(&mut events) => match ev {
                    Some(Event::Status { status: Status::Cancelled, .. }) => { stop = Some(Stop::Cancelled); break None }
                    Some(_) => {}
                    None => events = None,
                },
                _ = progress.changed.notified(), if !throttled => {
                    if let Some(progress) = progress.take() {
                        inner.publish(Event::Progress { id, attempt, progress }).await;
                        throttle.as_mut().reset(tokio::time::Instant::now() + cfg.progress_interval);
                        throttled = true;
                    }
                }
                _ = &mut throttle, if throttled => throttled = false,
            }
        };
        let result = match result {
            Some(r) => r,
            None => {
                // Stopped from outside: tell the converter, and give it a moment to clean up
                // (kill its process) before it is dropped.
                cancel.cancel();
                tokio::time::timeout(cfg.cancel_grace, &mut *convert)
                    .await
                    .unwrap_or(Err(ConvertError::Cancelled))
            }
        };
        (stop, result)
    }
}

async fn next_event(events: &mut Option<crate::progress::EventStream>) -> Option<Event> {
    match events {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

/// Streams each output into the blob store under an attempt-specific key (so a stale worker can
/// never overwrite the winner's artifacts), hashing as it goes.
async fn store_artifacts(
    inner: &Arc<Inner>,
    record: &Conversion,
    attempt: u32,
    outputs: Vec<Output>,
) -> Result<Vec<Artifact>, ErrorInfo> {
    let blobs = &inner.backends.blobs;
    let mut artifacts: Vec<Artifact> = Vec::with_capacity(outputs.len());
    for (i, out) in outputs.into_iter().enumerate() {
        let name = crate::conversion::sanitize_file_name(&out.name)
            .unwrap_or_else(|| format!("output-{i}.{}", out.format));
        if artifacts.iter().any(|a| a.name == name) {
            return Err(ErrorInfo::new(
                "converter_failed",
                format!("the converter returned two outputs named {name:?}"),
            ));
        }
        let key = crate::intake::layout::artifact(&record.tenant, record.id, attempt, &name);
        // Bytes in memory are hashed at once; a file is hashed as it streams to the store.
        let (body, hasher): (ByteStream, _) = match out.body {
            OutputBody::Bytes(b) => {
                let digest = Sha256::digest(&b);
                let body = futures::stream::once(futures::future::ready(Ok(b))).boxed();
                (body, Hashed::Done(digest))
            }
            OutputBody::File(path) => {
                let body = Box::pin(open_stream(&path)).await.map_err(|e| {
                    ErrorInfo::new(
                        "converter_failed",
                        format!("output {name:?} could not be read: {e}"),
                    )
                })?;
                let hasher = Arc::new(Mutex::new(Sha256::new()));
                let h = Arc::clone(&hasher);
                let body = body
                    .inspect(move |c| {
                        if let Ok(c) = c {
                            h.lock().update(c);
                        }
                    })
                    .boxed();
                (body, Hashed::Streamed(hasher))
            }
        };
        let meta = blobs.put(&key, body).await.map_err(|e| {
            // The store's error names keys and places: logged, not shown.
            tracing::warn!(id = %record.id, error = %e, "storing an artifact failed");
            ErrorInfo::new(
                "artifact_store_failed",
                format!("output {name:?} could not be stored"),
            )
        })?;
        let digest = match hasher {
            Hashed::Done(digest) => digest,
            Hashed::Streamed(hasher) => std::mem::take(&mut *hasher.lock()).finalize(),
        };
        artifacts.push(Artifact {
            name,
            format: out.format,
            size: meta.size,
            checksum: checksum(&digest),
            blob_key: key,
        });
    }
    Ok(artifacts)
}

/// An output's SHA-256: computed already, or being computed as the output streams.
enum Hashed {
    Done(sha2::digest::Output<Sha256>),
    Streamed(Arc<Mutex<Sha256>>),
}

/// `sha256:` and the digest in lowercase hex, built in one allocation.
fn checksum(digest: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = Vec::with_capacity(7 + 2 * digest.len());
    out.extend_from_slice(b"sha256:");
    for b in digest {
        out.push(HEX[usize::from(b >> 4)]);
        out.push(HEX[usize::from(b & 0x0f)]);
    }
    // Only ASCII was written.
    String::from_utf8(out).unwrap_or_default()
}

async fn open_stream(path: &Path) -> std::io::Result<ByteStream> {
    let file = tokio::fs::File::open(path).await?;
    Ok(tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024).boxed())
}

async fn finish_succeeded(inner: &Arc<Inner>, lease: &Lease, artifacts: Vec<Artifact>) {
    if lease.attempt > 1 {
        Box::pin(remove_earlier_attempts(inner, lease.id, lease.attempt)).await;
    }
    let t = Transition::Succeed {
        attempt: lease.attempt,
        artifacts,
    };
    // A conflict here means fenced out, never our own lost answer (`lease_transition` tells
    // the two apart): deleting the artifacts below cannot delete a recorded result.
    let record = match lease_transition(inner, lease, &t).await {
        Ok(record) => record,
        Err(e) => return Box::pin(succeeded_not_recorded(inner, lease, t, e)).await,
    };
    if inner.announce(&record).await {
        ignore_lost(batched_ack(inner, lease).await);
    }
    metrics::counter!("converto_conversions_finished_total", "status" => "succeeded").increment(1);
    inner.publish(Event::status_of(&record)).await;
    let _ = inner.backends.bus.forget(lease.id).await;
}

/// A result that could not be recorded: fenced out, deleted meanwhile, or the store stayed
/// unreachable.
async fn succeeded_not_recorded(
    inner: &Arc<Inner>,
    lease: &Lease,
    t: Transition,
    error: StoreError,
) {
    match error {
        StoreError::Conflict(c) => {
            // Fenced out (cancelled, or another attempt took over): our artifacts are orphans.
            tracing::info!(id = %lease.id, status = %c.status, "result discarded: fenced out");
            discard_artifacts(inner, t).await;
            if c.status.is_terminal() {
                ignore_lost(inner.backends.queue.ack(lease).await);
            }
        }
        StoreError::NotFound { .. } => {
            // Deleted while it ran.
            discard_artifacts(inner, t).await;
            ignore_lost(inner.backends.queue.ack(lease).await);
        }
        e => {
            // The store stayed unreachable: the verdict may or may not have been written, so
            // the artifacts stay. If it was not, the lease expires and the next attempt runs
            // and removes them; if it was, they are the result.
            tracing::warn!(id = %lease.id, error = %e, "result not recorded; the job will be delivered again");
        }
    }
}

/// Deletes the artifacts of a `Succeed` transition that was not recorded.
async fn discard_artifacts(inner: &Inner, t: Transition) {
    if let Transition::Succeed { artifacts, .. } = t {
        for a in artifacts {
            let _ = inner.backends.blobs.delete(&a.blob_key).await;
        }
    }
}

/// Removes what earlier attempts stored under the conversion's artifact prefix: a worker that
/// died after storing its outputs could not remove them itself. Runs before the verdict is
/// written, so whoever sees the terminal status sees one set of artifacts. Later attempts' keys
/// are left alone (if one exists, this attempt is fenced out anyway).
async fn remove_earlier_attempts(inner: &Arc<Inner>, id: ConversionId, attempt: u32) {
    if attempt <= 1 {
        return;
    }
    // The tenant names the prefix; only retries pay this read.
    let tenant = match inner.verdicts.get(id).await {
        Ok(record) => record.tenant,
        Err(e) => {
            tracing::warn!(%id, error = %e, "could not read the record to remove orphaned artifacts");
            return;
        }
    };
    let prefix = crate::intake::layout::artifacts(&tenant, id);
    match inner.backends.blobs.list(&prefix).await {
        Ok(blobs) => {
            for b in blobs {
                let earlier = b
                    .key
                    .strip_prefix(&prefix)
                    .and_then(|rest| rest.split('/').next())
                    .and_then(|n| n.parse::<u32>().ok())
                    .is_some_and(|n| n < attempt);
                if !earlier {
                    continue;
                }
                if let Err(e) = inner.backends.blobs.delete(&b.key).await {
                    tracing::warn!(%id, key = %b.key, error = %e, "could not remove an orphaned artifact");
                }
            }
        }
        Err(e) => tracing::warn!(%id, error = %e, "could not list orphaned artifacts"),
    }
}

/// The message of a failure as clients may read it: a path under the scratch directory (a
/// converter's message naming its input, say) becomes just its file name, so the record never
/// shows where this server keeps its files.
fn public_message(message: &str, scratch_root: &std::path::Path) -> String {
    let mut roots = vec![scratch_root.display().to_string()];
    if let Ok(canonical) = std::fs::canonicalize(scratch_root) {
        roots.push(canonical.display().to_string());
    }
    let mut out = message.to_owned();
    for root in roots.iter().filter(|r| r.len() > 1) {
        while let Some(start) = out.find(root.as_str()) {
            let rest = &out[start..];
            let end = rest
                .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '`' | ')' | ','))
                .unwrap_or(rest.len());
            let path = rest[..end].trim_end_matches([':', '.']);
            let name = std::path::Path::new(path)
                .file_name()
                .filter(|_| path.len() > root.len())
                .map_or_else(
                    || "<scratch>".to_owned(),
                    |n| n.to_string_lossy().into_owned(),
                );
            out.replace_range(start..start + path.len(), &name);
        }
    }
    out
}

async fn handle_failure(inner: &Arc<Inner>, lease: &Lease, error: ErrorInfo, temporary: bool) {
    let error = ErrorInfo {
        message: public_message(&error.message, &inner.config.scratch_dir),
        ..error
    };
    if temporary && lease.attempt < inner.config.max_attempts {
        let t = Transition::Requeue {
            attempt: lease.attempt,
            error: Some(error.clone()),
        };
        match lease_transition(inner, lease, &t).await {
            Ok(record) => {
                let delay = inner.config.retry_delay(lease.attempt);
                tracing::info!(id = %lease.id, attempt = lease.attempt, ?delay, error = %error.message, "temporary failure; retrying");
                ignore_lost(
                    inner
                        .backends
                        .queue
                        .retry(lease, after(Utc::now(), delay))
                        .await,
                );
                inner.publish(Event::status_of(&record)).await;
            }
            Err(e) => tracing::info!(id = %lease.id, error = %e, "retry not recorded"),
        }
    } else {
        finish_failed(inner, lease, error, temporary).await;
    }
}

/// Records a failure. A job that ran out of attempts on temporary errors is dead-lettered; a
/// permanent failure is simply acknowledged (the record holds the reason).
async fn finish_failed(inner: &Arc<Inner>, lease: &Lease, error: ErrorInfo, dead_letter: bool) {
    let error = ErrorInfo {
        message: public_message(&error.message, &inner.config.scratch_dir),
        ..error
    };
    if lease.attempt > 1 {
        Box::pin(remove_earlier_attempts(inner, lease.id, lease.attempt)).await;
    }
    let t = Transition::Fail {
        attempt: lease.attempt,
        error: error.clone(),
    };
    match lease_transition(inner, lease, &t).await {
        Ok(record) => {
            let q = &inner.backends.queue;
            if inner.announce(&record).await {
                ignore_lost(if dead_letter {
                    q.dead_letter(lease, &error).await
                } else {
                    batched_ack(inner, lease).await
                });
            }
            metrics::counter!("converto_conversions_finished_total", "status" => "failed")
                .increment(1);
            inner.publish(Event::status_of(&record)).await;
            let _ = inner.backends.bus.forget(lease.id).await;
        }
        Err(e) => {
            tracing::info!(id = %lease.id, error = %e, "failure not recorded");
            if matches!(e, StoreError::Conflict(ref c) if c.status.is_terminal()) {
                ignore_lost(inner.backends.queue.ack(lease).await);
            }
        }
    }
}

/// Applies a lease holder's verdict (`Succeed`, `Fail` or `Requeue`), retrying temporary store
/// errors. A retry can meet the verdict's own earlier try, written although its answer was lost
/// (a dropped connection): a conflict showing the conversion already where `t` leads, on this
/// very attempt (which only this lease runs), is that try, and its record is returned.
/// (The record comes boxed, so the futures of the callers holding it stay small.)
async fn lease_transition(
    inner: &Arc<Inner>,
    lease: &Lease,
    t: &Transition,
) -> Result<Box<Conversion>, StoreError> {
    let leads_to = match t {
        Transition::Succeed { .. } => Some(Status::Succeeded),
        Transition::Fail { .. } => Some(Status::Failed),
        Transition::Requeue { .. } => Some(Status::Queued),
        _ => None,
    };
    let conflict = match inner.verdicts.transition(lease.id, t).await {
        Ok(record) => return Ok(Box::new(record)),
        Err(StoreError::Conflict(c))
            if Some(c.status) == leads_to && c.attempts == lease.attempt =>
        {
            c
        }
        Err(e) => return Err(e),
    };
    tracing::info!(id = %lease.id, status = %conflict.status, "already recorded by an earlier try");
    inner.backends.store.get(lease.id).await.map(Box::new)
}

/// Acks a finished job, in a batch with others finishing about now (see [`super::acks`]).
fn batched_ack<'a>(
    inner: &'a Inner,
    lease: &'a Lease,
) -> futures::future::BoxFuture<'a, Result<(), QueueError>> {
    inner
        .acks
        .ack(inner.backends.queue.as_ref(), &inner.config, lease)
}

fn ignore_lost(r: Result<(), QueueError>) {
    match r {
        Ok(()) | Err(QueueError::LeaseLost { .. }) => {}
        Err(e) => {
            tracing::warn!(error = %e, "queue update failed; the lease will expire and the job be delivered again")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{checksum, public_message};

    #[test]
    fn checksums_are_sha256_in_lowercase_hex() {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(b"ok");
        assert_eq!(checksum(&digest), format!("sha256:{}", hex::encode(digest)));
        assert_eq!(checksum(&[0x00, 0xab, 0xff]), "sha256:00abff");
    }

    #[test]
    fn failure_messages_do_not_show_scratch_paths() {
        let root = std::path::Path::new("/srv/converto/scratch");
        assert_eq!(
            public_message(
                "cannot parse /srv/converto/scratch/engine-1/job-2/input.stl: bad header",
                root
            ),
            "cannot parse input.stl: bad header"
        );
        assert_eq!(
            public_message("\"/srv/converto/scratch/e/j/out.obj\" missing", root),
            "\"out.obj\" missing"
        );
        assert_eq!(
            public_message("no space in /srv/converto/scratch", root),
            "no space in <scratch>"
        );
        assert_eq!(public_message("plain failure", root), "plain failure");
    }
}

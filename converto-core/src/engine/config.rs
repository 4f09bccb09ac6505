use std::path::PathBuf;
use std::time::Duration;

/// How the engine schedules and runs work. `Default` gives production-sensible values.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct EngineConfig {
    /// Conversions run at once by one `run_workers` call.
    pub concurrency: usize,
    /// Jobs reserved per queue round trip (at most the free slots).
    pub reserve_batch: usize,
    /// Jobs reserved ahead of free slots (at most `concurrency`: one per slot), held here,
    /// still leased to this worker, until a slot frees up: a slot that frees up takes one at
    /// once instead of a queue round trip, and reserves come in batches even when slots free
    /// up one at a time. A prefetched job waits at most `heartbeat_interval` (a third of the
    /// lease by default); then it is handed back to the queue (uncounted, in its old place)
    /// for any worker, so its lease never runs out while held. If the worker dies, its
    /// prefetched jobs come back when their leases expire, like its running ones; on shutdown
    /// they are handed back at once. 0 turns prefetching off.
    pub prefetch: usize,
    /// Acks of finished jobs sent to the queue as one batch, at most (one `ack_many` round
    /// trip instead of one per job), on queues that ack batches in one round trip
    /// (`JobQueue::batches_acks`: PostgreSQL, Redis). 1 acks each job alone.
    pub ack_batch: usize,
    /// How long the first ack of a batch waits for others before the batch goes (sooner when
    /// it is full). A finished job publishes its terminal status once its ack is in, so this
    /// is the most a status is delayed by batching.
    pub ack_delay: Duration,
    /// How long a reservation lasts without a heartbeat; a worker that dies loses its jobs to
    /// another after this long.
    pub lease_duration: Duration,
    /// How often a running job's lease is extended (a third of the lease by default).
    pub heartbeat_interval: Duration,
    /// The execution timeout: one attempt's converter time. Kept apart from `max_queue_wait`.
    pub job_timeout: Duration,
    /// The queue-wait limit: a conversion still waiting for its first attempt after this long
    /// fails with `queue_timeout` instead of running. `None`: no limit.
    pub max_queue_wait: Option<Duration>,
    /// Attempts before a temporarily failing conversion fails for good.
    pub max_attempts: u32,
    /// The first retry delay; doubled per attempt, with jitter, up to `retry_max_delay`.
    pub retry_base_delay: Duration,
    /// The longest retry delay.
    pub retry_max_delay: Duration,
    /// Progress reaches the bus at most this often per job.
    pub progress_interval: Duration,
    /// On shutdown, running jobs get this long to finish before they are handed back.
    pub shutdown_grace: Duration,
    /// A converter that was cancelled (timeout, cancel, shutdown) gets this long to stop before
    /// it is dropped.
    pub cancel_grace: Duration,
    /// How often the sweeper looks for records whose queue entry was lost. Zero disables it.
    pub sweep_interval: Duration,
    /// Records unchanged for less than this are left to the normal path by the sweeper.
    pub sweep_min_age: Duration,
    /// Where jobs get their scratch directories.
    pub scratch_dir: PathBuf,
    /// Uploads larger than this are refused with `InputTooLarge`. `None`: no limit.
    pub max_input_bytes: Option<u64>,
    /// How long an upload ticket (or presigned upload URL) stays valid.
    pub upload_ttl: Duration,
    /// How long after its ticket expired an upload nobody converted is kept (a client may have
    /// started just before the expiry and submit just after); then the janitor removes it.
    pub unclaimed_upload_grace: Duration,
    /// How often the janitor looks for unclaimed uploads (with the workers). Zero disables it.
    pub janitor_interval: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            concurrency: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
                .max(2),
            reserve_batch: 32,
            prefetch: 16,
            ack_batch: 128,
            ack_delay: Duration::from_millis(2),
            lease_duration: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(10),
            job_timeout: Duration::from_secs(15 * 60),
            max_queue_wait: None,
            max_attempts: 3,
            retry_base_delay: Duration::from_secs(1),
            retry_max_delay: Duration::from_secs(300),
            progress_interval: Duration::from_millis(200),
            shutdown_grace: Duration::from_secs(30),
            cancel_grace: Duration::from_secs(5),
            sweep_interval: Duration::from_secs(60),
            sweep_min_age: Duration::from_secs(60),
            scratch_dir: std::env::temp_dir().join("converto-scratch"),
            max_input_bytes: None,
            upload_ttl: Duration::from_secs(3600),
            unclaimed_upload_grace: Duration::from_secs(3600),
            janitor_interval: Duration::from_secs(600),
        }
    }
}

impl EngineConfig {
    /// Sets `concurrency`.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }
    /// Sets `reserve_batch`.
    pub fn reserve_batch(mut self, n: usize) -> Self {
        self.reserve_batch = n.max(1);
        self
    }
    /// Sets `prefetch`.
    pub fn prefetch(mut self, n: usize) -> Self {
        self.prefetch = n;
        self
    }
    /// Sets `ack_batch` and `ack_delay` (batched acknowledgements; `ack_batch(1, ..)` turns
    /// them off).
    pub fn ack_batch(mut self, n: usize, delay: Duration) -> Self {
        self.ack_batch = n.max(1);
        self.ack_delay = delay;
        self
    }
    /// Sets the lease and a heartbeat of a third of it.
    pub fn lease_duration(mut self, d: Duration) -> Self {
        self.lease_duration = d;
        self.heartbeat_interval = d / 3;
        self
    }
    /// Sets `job_timeout`.
    pub fn job_timeout(mut self, d: Duration) -> Self {
        self.job_timeout = d;
        self
    }
    /// Sets `max_queue_wait`.
    pub fn max_queue_wait(mut self, d: Option<Duration>) -> Self {
        self.max_queue_wait = d;
        self
    }
    /// Sets `max_attempts`.
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n.max(1);
        self
    }
    /// Sets the retry delays.
    pub fn retry_delays(mut self, base: Duration, max: Duration) -> Self {
        self.retry_base_delay = base;
        self.retry_max_delay = max.max(base);
        self
    }
    /// Sets `progress_interval`.
    pub fn progress_interval(mut self, d: Duration) -> Self {
        self.progress_interval = d;
        self
    }
    /// Sets `shutdown_grace`.
    pub fn shutdown_grace(mut self, d: Duration) -> Self {
        self.shutdown_grace = d;
        self
    }
    /// Sets the sweeper's interval and minimum age.
    pub fn sweeper(mut self, interval: Duration, min_age: Duration) -> Self {
        self.sweep_interval = interval;
        self.sweep_min_age = min_age;
        self
    }
    /// Sets `scratch_dir`.
    pub fn scratch_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.scratch_dir = dir.into();
        self
    }
    /// Sets `upload_ttl`.
    pub fn upload_ttl(mut self, d: Duration) -> Self {
        self.upload_ttl = d;
        self
    }
    /// Sets `unclaimed_upload_grace` and `janitor_interval`.
    pub fn janitor(mut self, grace: Duration, interval: Duration) -> Self {
        self.unclaimed_upload_grace = grace;
        self.janitor_interval = interval;
        self
    }
    /// Sets `max_input_bytes`.
    pub fn max_input_bytes(mut self, n: Option<u64>) -> Self {
        self.max_input_bytes = n;
        self
    }

    /// The delay before attempt `attempt + 1`: exponential with "equal jitter" (half fixed,
    /// half random), so retries of many jobs that failed together spread out.
    pub fn retry_delay(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(30);
        let full = self
            .retry_base_delay
            .saturating_mul(1u32 << exp)
            .min(self.retry_max_delay);
        let half = full / 2;
        half + half.mul_f64(fastrand::f64())
    }
}

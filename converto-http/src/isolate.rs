//! Crash isolation: the built-in converters run in a child process of this binary, so a
//! conversion that panics, aborts or is killed (out of memory, CPU limit) fails that one job with
//! `converter_crashed` instead of taking the API and the other jobs down.
//!
//! [`IsolatedConverter`] wraps an in-process converter and implements the same
//! [`Converter`] trait: routes and option checks are answered in-process (cheap, side-effect
//! free); [`Converter::convert`] stages the input, starts `converto __child` (this very
//! executable), and hands it a [`JobSpec`] as JSON on stdin. The child applies its limits to
//! itself (`setrlimit`: `RLIMIT_DATA` for memory, `RLIMIT_CPU` for CPU time, no core dumps),
//! builds the same built-in converter ([`crate::runtime::builtin_converters`]), runs it on a
//! current-thread runtime with [`ConvertContext::for_file`] over the parent's scratch directory,
//! and reports progress and the result as JSON lines on stdout. The parent forwards progress,
//! maps the result back to [`Output`]s or a [`ConvertError`], kills the child on cancellation,
//! always reaps it, and keeps the last few KiB of its stderr to explain a crash.
//!
//! Why `RLIMIT_DATA` and not `RLIMIT_AS` (measured): the binary's allocator, mimalloc, reserves
//! a 1 GiB arena on its first allocation, before the child can lower any limit, and C libraries
//! on other threads reserve 64 MiB glibc heaps. Under `RLIMIT_AS` of 64, 128 or 256 MiB that
//! reserved address space alone is over the limit: the child cannot even start a thread, and
//! an STL-to-OBJ conversion of a 12-triangle cube fails. `RLIMIT_DATA` (Linux 4.7+) counts private writable mappings only, so with
//! mimalloc told to reserve its arena without access (`MIMALLOC_ARENA_EAGER_COMMIT=0`, set for
//! the child) it counts what a job commits: an allocating job under 256 MiB peaks at about
//! 265 MiB resident and aborts with "memory allocation of N bytes failed".
//!
//! Embedders of the library are not affected: the engine runs whatever converters it is given,
//! in-process; only the `converto` binary wraps its built-in converters.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use converto_core::converter::{OutputBody, ProgressFn};
use converto_core::{
    ConversionId, ConvertContext, ConvertError, ConvertRequest, Converter, Format, Output, Route,
};
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

/// The hidden subcommand that runs one job in a child process.
pub const CHILD_COMMAND: &str = "__child";

/// The error code of a conversion whose child process crashed (permanent).
pub const CRASHED: &str = "converter_crashed";

/// How much of a child's stderr is kept to explain a crash.
const STDERR_TAIL_BYTES: usize = 4096;
/// The longest line the child may write on stdout (a result lists every output).
const MAX_LINE_BYTES: usize = 1 << 20;
/// The largest job spec the child reads from stdin.
const MAX_SPEC_BYTES: u64 = 1 << 20;
/// The CPU limit's hard ceiling is this much above the soft one: SIGXCPU first, then SIGKILL.
const CPU_HARD_MARGIN_SECS: u64 = 5;
/// The default memory limit never goes below this.
pub const MIN_DEFAULT_MEMORY_LIMIT: u64 = 512 << 20;
/// The default memory limit when the machine's memory cannot be read.
const FALLBACK_MEMORY_LIMIT: u64 = 2 << 30;

/// Where the built-in converters run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    /// In the serving process (as an embedder runs them): a crash takes the process down.
    None,
    /// In a child process per conversion, with memory and CPU limits.
    #[default]
    Process,
}

/// A size in bytes given as a number with an optional unit: `536870912`, `512MiB`, `2GiB`,
/// `512M` (binary), `500MB` (decimal).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

/// A size that [`ByteSize`] cannot read.
#[derive(Debug, Clone, thiserror::Error)]
#[error("invalid size {input:?}: give bytes, or a number with a unit such as 512MiB, 2GiB, 500MB")]
pub struct ByteSizeError {
    input: String,
}

impl std::str::FromStr for ByteSize {
    type Err = ByteSizeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ByteSizeError {
            input: s.to_owned(),
        };
        let text = s.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (digits, unit) = text.split_at(split);
        let n: u64 = digits.parse().map_err(|_| err())?;
        let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kib" => 1 << 10,
            "m" | "mib" => 1 << 20,
            "g" | "gib" => 1 << 30,
            "t" | "tib" => 1 << 40,
            "kb" => 1_000,
            "mb" => 1_000_000,
            "gb" => 1_000_000_000,
            "tb" => 1_000_000_000_000,
            _ => return Err(err()),
        };
        n.checked_mul(multiplier).map(ByteSize).ok_or_else(err)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = ByteSize;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes or a size such as \"512MiB\"")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("a size cannot be negative: {v}")))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ByteSize, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// Prints a byte count the way people read it: `512 MiB`, `1.5 GiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ];
    for (unit, size) in UNITS {
        if n >= size {
            return if n.is_multiple_of(size) {
                format!("{} {unit}", n / size)
            } else {
                #[allow(clippy::cast_precision_loss)] // for display only
                let v = n as f64 / size as f64;
                format!("{v:.1} {unit}")
            };
        }
    }
    format!("{n} B")
}

/// The default memory limit of one job: the machine's memory (or the cgroup's limit, when
/// lower) divided by the jobs run at once, and never below [`MIN_DEFAULT_MEMORY_LIMIT`]; 2 GiB
/// where the memory cannot be read.
pub fn default_memory_limit(concurrency: usize) -> u64 {
    let total = [mem_total(), cgroup_memory_max()]
        .into_iter()
        .flatten()
        .min();
    match total {
        Some(total) => (total / concurrency.max(1) as u64).max(MIN_DEFAULT_MEMORY_LIMIT),
        None => FALLBACK_MEMORY_LIMIT,
    }
}

/// `MemTotal` of /proc/meminfo, in bytes.
fn mem_total() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line
        .trim_start_matches("MemTotal:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    kib.checked_mul(1024)
}

/// The cgroup v2 memory limit of this process, when it has one.
fn cgroup_memory_max() -> Option<u64> {
    std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The limits a child applies to itself before it runs a conversion.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChildLimits {
    /// Writable memory (`RLIMIT_DATA`) in bytes; `None`: unlimited.
    pub memory_bytes: Option<u64>,
    /// CPU time (`RLIMIT_CPU`) in seconds; `None`: unlimited (the job timeout still applies).
    pub cpu_seconds: Option<u64>,
}

impl ChildLimits {
    /// Applies the limits to the calling process (the child, at its start). Core dumps are
    /// turned off too: a crashing conversion should not write hundreds of MiB of core.
    pub fn apply(&self) -> Result<(), nix::Error> {
        use nix::sys::resource::{Resource, setrlimit};
        setrlimit(Resource::RLIMIT_CORE, 0, 0)?;
        if let Some(bytes) = self.memory_bytes {
            setrlimit(Resource::RLIMIT_DATA, bytes, bytes)?;
        }
        if let Some(secs) = self.cpu_seconds {
            let secs = secs.max(1);
            setrlimit(
                Resource::RLIMIT_CPU,
                secs,
                secs.saturating_add(CPU_HARD_MARGIN_SECS),
            )?;
        }
        Ok(())
    }
}

/// What the parent tells the child: one conversion, with its input already staged.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobSpec {
    /// The built-in converter's name ([`Converter::name`]).
    pub converter: String,
    /// The conversion.
    pub id: ConversionId,
    /// The attempt.
    pub attempt: u32,
    /// Input format.
    pub source: Format,
    /// Wanted format.
    pub target: Format,
    /// The user's options.
    pub options: serde_json::Value,
    /// The staged input file.
    pub input: PathBuf,
    /// The job's scratch directory: outputs go into its `out` directory.
    pub work_dir: PathBuf,
    /// The limits the child applies to itself.
    pub limits: ChildLimits,
    /// The built-in converters' settings.
    #[serde(default)]
    pub builtin: crate::runtime::BuiltinConfig,
}

/// One line the child writes on stdout.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ChildMessage {
    /// A progress report.
    Progress { percent: u8, stage: Option<String> },
    /// The conversion succeeded.
    Done { outputs: Vec<ChildOutput> },
    /// The converter panicked (the child aborts next).
    Panicked { message: String },
    /// The conversion failed (without crashing).
    Failed {
        code: String,
        message: String,
        temporary: bool,
    },
}

/// One output, always as a file (outputs held in memory are written out by the child).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ChildOutput {
    name: String,
    format: Format,
    path: PathBuf,
}

impl ChildMessage {
    fn failed(e: &ConvertError) -> Self {
        // The detail without the variant's prefix, so the parent rebuilds the same error.
        let message = match e {
            ConvertError::InvalidInput(m)
            | ConvertError::InvalidOptions(m)
            | ConvertError::TooLarge(m) => m.clone(),
            ConvertError::Io(io) => io.to_string(),
            other => other.to_string(),
        };
        ChildMessage::Failed {
            code: e.code().to_owned(),
            message,
            temporary: e.is_temporary(),
        }
    }
}

/// The error the child reported, rebuilt as the variant it came from where that can be told.
fn rebuild_error(
    request: &ConvertRequest,
    code: String,
    message: String,
    temporary: bool,
) -> ConvertError {
    match code.as_str() {
        "invalid_input" => ConvertError::InvalidInput(message),
        "invalid_options" => ConvertError::InvalidOptions(message),
        "input_too_large" => ConvertError::TooLarge(message),
        "unsupported_route" => ConvertError::Unsupported {
            source_format: request.source.clone(),
            target_format: request.target.clone(),
        },
        "cancelled" => ConvertError::Cancelled,
        "io_error" => ConvertError::Io(std::io::Error::other(message)),
        _ => ConvertError::Failed {
            code,
            message,
            temporary,
        },
    }
}

/// How the parent starts a child: which program, which limits.
#[derive(Debug, Clone)]
pub struct IsolationSettings {
    /// The executable that understands [`CHILD_COMMAND`] (normally this one).
    pub program: PathBuf,
    /// The limits of every child.
    pub limits: ChildLimits,
    /// The built-in converters' settings, so a child builds the same converters.
    pub builtin: crate::runtime::BuiltinConfig,
}

impl IsolationSettings {
    /// Children of this executable with `limits`. On Linux the program is `/proc/self/exe`,
    /// which still starts this build after its file was replaced by an upgrade.
    pub fn this_executable(
        limits: ChildLimits,
        builtin: crate::runtime::BuiltinConfig,
    ) -> std::io::Result<Self> {
        let proc_self = Path::new("/proc/self/exe");
        let program = if proc_self.exists() {
            proc_self.to_path_buf()
        } else {
            std::env::current_exe()?
        };
        Ok(Self {
            program,
            limits,
            builtin,
        })
    }
}

/// A built-in converter run in a child process: see the [module documentation](self).
#[derive(Debug)]
pub struct IsolatedConverter {
    inner: Arc<dyn Converter>,
    settings: Arc<IsolationSettings>,
}

impl IsolatedConverter {
    /// Wraps `inner`, which `converto __child` must be able to build by its name.
    pub fn new(inner: Arc<dyn Converter>, settings: Arc<IsolationSettings>) -> Self {
        Self { inner, settings }
    }
}

#[async_trait]
impl Converter for IsolatedConverter {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn routes(&self) -> Vec<Route> {
        self.inner.routes()
    }

    fn check_options(
        &self,
        source: &Format,
        target: &Format,
        options: &serde_json::Value,
    ) -> Result<(), ConvertError> {
        self.inner.check_options(source, target, options)
    }

    fn options_schema(&self, source: &Format, target: &Format) -> Option<serde_json::Value> {
        self.inner.options_schema(source, target)
    }

    async fn convert(
        &self,
        request: &ConvertRequest,
        ctx: &ConvertContext,
    ) -> Result<Vec<Output>, ConvertError> {
        let input = absolute(ctx.input_path().await?)?;
        let work_dir = absolute(ctx.scratch_dir().await?)?;
        let spec = JobSpec {
            converter: self.inner.name().to_owned(),
            id: request.id,
            attempt: request.attempt,
            source: request.source.clone(),
            target: request.target.clone(),
            options: request.options.clone(),
            input,
            work_dir: work_dir.clone(),
            limits: self.settings.limits,
            builtin: self.settings.builtin.clone(),
        };
        let spec = serde_json::to_vec(&spec)
            .map_err(|e| ConvertError::permanent("converter_failed", e.to_string()))?;

        let started = Instant::now();
        let mut child = Command::new(&self.settings.program)
            .arg(CHILD_COMMAND)
            // mimalloc would map its 1 GiB arena read-write up front (it trusts overcommit),
            // which RLIMIT_DATA counts in full: the child could then map nothing more, not even
            // a thread stack. Reserved without access and committed as used, the arena counts
            // only what the job really uses.
            .env("MIMALLOC_ARENA_EAGER_COMMIT", "0")
            // Its own process group: a terminal's Ctrl-C reaches the service, which cancels or
            // hands back its jobs, not the converter processes directly.
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                ConvertError::temporary(
                    "converter_unavailable",
                    format!(
                        "cannot start the converter process {}: {e}",
                        self.settings.program.display()
                    ),
                )
            })?;
        let (Some(mut stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(ConvertError::temporary(
                "converter_unavailable",
                "the converter process has no pipes",
            ));
        };
        let mut tail = Tail::new(STDERR_TAIL_BYTES);
        let outcome = {
            let work = async {
                // A child that dies before reading its spec closes the pipe: its exit status
                // says why, so a failed write is not an error of its own.
                let feed = async {
                    let _ = stdin.write_all(&spec).await;
                    drop(stdin);
                };
                let (_, result, ()) = tokio::join!(
                    feed,
                    read_messages(stdout, ctx),
                    pump_tail(stderr, &mut tail)
                );
                (result, child.wait().await)
            };
            tokio::select! {
                r = work => Some(r),
                _ = ctx.cancel_token().cancelled() => None,
            }
        };
        let Some((result, status)) = outcome else {
            // Cancelled (or timed out): SIGKILL, and reap.
            let _ = child.kill().await;
            return Err(ConvertError::Cancelled);
        };
        let status = status?;
        let stderr = tail.text();
        tracing::debug!(
            id = %request.id, converter = self.inner.name(), ?status,
            elapsed_ms = started.elapsed().as_millis(), "converter process ended"
        );
        let message = match result {
            Ok(m) => m,
            Err(why) => Some(ChildMessage::Panicked {
                message: format!("the converter process broke its protocol: {why}"),
            }),
        };
        let crash = match (message, status.success()) {
            (Some(ChildMessage::Done { outputs }), true) => {
                return outputs
                    .into_iter()
                    .map(|o| {
                        check_inside(&o.path, &work_dir)?;
                        Ok(Output::file(o.name, o.format, o.path))
                    })
                    .collect();
            }
            (
                Some(ChildMessage::Failed {
                    code,
                    message,
                    temporary,
                }),
                true,
            ) => return Err(rebuild_error(request, code, message, temporary)),
            // "panicked at FILE:LINE:COL:\nMESSAGE" on one line.
            (Some(ChildMessage::Panicked { message }), _) => ConvertError::permanent(
                CRASHED,
                clip(
                    &message.split_whitespace().collect::<Vec<_>>().join(" "),
                    1024,
                ),
            ),
            _ => ended_without_result(status, &stderr, &self.settings.limits),
        };
        tracing::warn!(
            id = %request.id, converter = self.inner.name(), error = %crash,
            "converter process crashed"
        );
        metrics::counter!("converto_converter_crashes_total", "converter" => self.inner.name().to_owned())
            .increment(1);
        Err(crash)
    }
}

/// The error of a child that ended without a result.
fn ended_without_result(status: ExitStatus, stderr: &str, limits: &ChildLimits) -> ConvertError {
    use std::os::unix::process::ExitStatusExt;
    // Stopped from outside (an operator, a service manager signalling the whole cgroup on
    // shutdown): not the job's fault, so another attempt may run it.
    if let Some(sig) = status
        .signal()
        .and_then(|s| Signal::try_from(s).ok())
        .filter(|s| matches!(s, Signal::SIGHUP | Signal::SIGINT | Signal::SIGTERM))
    {
        return ConvertError::temporary(
            "converter_interrupted",
            format!("the converter process was stopped by {sig} from outside this service"),
        );
    }
    ConvertError::permanent(CRASHED, crash_reason(status, stderr, limits))
}

fn absolute(p: &Path) -> Result<PathBuf, ConvertError> {
    Ok(std::path::absolute(p)?)
}

/// An output the child names must be a regular file inside the job's scratch directory: a
/// child subverted by a hostile input cannot make the parent publish another file.
fn check_inside(path: &Path, work_dir: &Path) -> Result<(), ConvertError> {
    let outside = || {
        ConvertError::permanent(
            "converter_failed",
            format!(
                "the converter process named an output outside its scratch directory: {}",
                path.display()
            ),
        )
    };
    let real = std::fs::canonicalize(path).map_err(|_| outside())?;
    let root = std::fs::canonicalize(work_dir)?;
    if !real.starts_with(&root) || !real.is_file() {
        return Err(outside());
    }
    Ok(())
}

/// Reads the child's JSON lines: forwards progress, returns the final message (if any) once
/// stdout closes. After a line that breaks the protocol the rest is drained unread, so the
/// child never blocks on a full pipe, and the breach is returned.
async fn read_messages(
    stdout: impl AsyncRead + Unpin,
    ctx: &ConvertContext,
) -> Result<Option<ChildMessage>, String> {
    let mut reader = BufReader::new(stdout);
    let mut last = None;
    let mut broken: Option<String> = None;
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = (&mut reader)
            .take(MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut line)
            .await
            .map_err(|e| format!("reading its output: {e}"))?;
        if n == 0 {
            return broken.map_or(Ok(last), Err);
        }
        if broken.is_some() {
            continue;
        }
        if line.last() != Some(&b'\n') {
            if line.len() > MAX_LINE_BYTES {
                broken = Some(format!("a line longer than {MAX_LINE_BYTES} bytes"));
            }
            // Else the last line, cut short by a crash: nothing to act on.
            continue;
        }
        match serde_json::from_slice::<ChildMessage>(&line) {
            Ok(ChildMessage::Progress { percent, stage }) => {
                ctx.progress(percent, stage.as_deref())
            }
            Ok(m) => last = Some(m),
            Err(e) => broken = Some(format!("an unreadable line ({e})")),
        }
    }
}

/// Keeps the last bytes of a stream until it closes.
async fn pump_tail(mut stream: impl AsyncRead + Unpin, tail: &mut Tail) {
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => tail.push(&buf[..n]),
        }
    }
}

/// The last `cap` bytes written to a stream.
#[derive(Debug)]
struct Tail {
    bytes: VecDeque<u8>,
    cap: usize,
}

impl Tail {
    fn new(cap: usize) -> Self {
        Self {
            bytes: VecDeque::with_capacity(cap),
            cap,
        }
    }

    fn push(&mut self, chunk: &[u8]) {
        self.bytes.extend(chunk);
        if self.bytes.len() > self.cap {
            let excess = self.bytes.len() - self.cap;
            self.bytes.drain(..excess);
        }
    }

    fn text(&self) -> String {
        let (a, b) = self.bytes.as_slices();
        let mut raw = Vec::with_capacity(a.len() + b.len());
        raw.extend_from_slice(a);
        raw.extend_from_slice(b);
        String::from_utf8_lossy(&raw).into_owned()
    }
}

/// Why a child ended without a result, for the job's error message.
fn crash_reason(status: ExitStatus, stderr: &str, limits: &ChildLimits) -> String {
    use std::os::unix::process::ExitStatusExt;
    let memory = limits
        .memory_bytes
        .map_or_else(|| "none".to_owned(), human_bytes);
    let out_of_memory = stderr
        .lines()
        .rev()
        .find(|l| l.contains("memory allocation of"))
        .map(str::trim);
    let panic = stderr.find("panicked at").map(|i| {
        let text = stderr[i..].trim();
        // "panicked at FILE:LINE:COL:\nMESSAGE", then maybe a backtrace note.
        let text: Vec<&str> = text
            .lines()
            .take(2)
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        clip(&text.join(" "), 512)
    });
    let last_line = stderr
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(|l| clip(l, 512));
    match status.signal() {
        Some(sig) => {
            let known = Signal::try_from(sig).ok();
            let name = known.map_or_else(|| format!("signal {sig}"), |s| s.as_str().to_owned());
            if let Some(oom) = out_of_memory {
                return format!("out of memory ({oom}, memory limit {memory}); aborted ({name})");
            }
            if let Some(panic) = panic {
                return format!("{panic}; aborted ({name})");
            }
            match known {
                Some(Signal::SIGKILL) => match limits.memory_bytes {
                    Some(_) => format!("killed by signal {sig} ({name}; memory limit {memory}?)"),
                    None => format!("killed by signal {sig} ({name}; out of memory?)"),
                },
                Some(Signal::SIGABRT) => match last_line {
                    Some(l) => format!("aborted ({name}): {l}"),
                    None => format!("aborted ({name})"),
                },
                Some(Signal::SIGXCPU) => format!(
                    "CPU time limit of {}s exceeded ({name})",
                    limits.cpu_seconds.unwrap_or_default()
                ),
                _ => match last_line {
                    Some(l) => format!("killed by signal {sig} ({name}): {l}"),
                    None => format!("killed by signal {sig} ({name})"),
                },
            }
        }
        None => {
            let code = status
                .code()
                .map_or_else(|| "unknown".to_owned(), |c| c.to_string());
            match last_line {
                Some(l) => {
                    format!("the converter process exited with status {code} without a result: {l}")
                }
                None => format!("the converter process exited with status {code} without a result"),
            }
        }
    }
}

fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// `converto __child`: reads a [`JobSpec`] on stdin, applies its limits, runs the conversion
/// and reports on stdout. Called by the binary's `main` before any runtime exists.
pub fn child_main() -> ExitCode {
    // Die with the parent: a `converto` killed with SIGKILL cannot kill its children, and an
    // orphaned conversion would go on using memory and CPU for nobody. If the parent is gone
    // already (we were re-parented before the request took effect), stop now.
    #[cfg(target_os = "linux")]
    {
        let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
        if nix::unistd::getppid() == nix::unistd::Pid::from_raw(1) {
            return ExitCode::from(3);
        }
    }
    let spec = match read_spec() {
        Ok(spec) => spec,
        Err(why) => {
            eprintln!("converto {CHILD_COMMAND}: {why}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = spec.limits.apply() {
        emit(&ChildMessage::Failed {
            code: "converter_unavailable".into(),
            message: format!("cannot apply the job's limits: {e}"),
            temporary: false,
        });
        return ExitCode::SUCCESS;
    }
    // A panic anywhere (a blocking thread included) is a crash of this job, reported by the
    // parent as such: print it (the default hook), then abort.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        emit(&ChildMessage::Panicked {
            message: info.to_string(),
        });
        std::process::abort();
    }));
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            emit(&ChildMessage::Failed {
                code: "converter_unavailable".into(),
                message: format!("cannot start the runtime: {e}"),
                temporary: true,
            });
            return ExitCode::SUCCESS;
        }
    };
    let message = rt.block_on(run_job(spec));
    emit(&message);
    // Blocking work a converter left behind must not hold the exit.
    rt.shutdown_background();
    ExitCode::SUCCESS
}

fn read_spec() -> Result<JobSpec, String> {
    use std::io::Read;
    let mut raw = Vec::new();
    std::io::stdin()
        .take(MAX_SPEC_BYTES)
        .read_to_end(&mut raw)
        .map_err(|e| format!("reading the job spec: {e}"))?;
    serde_json::from_slice(&raw).map_err(|e| format!("invalid job spec: {e}"))
}

/// Writes one message line; a parent that is gone ends the child.
fn emit(message: &ChildMessage) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let written = serde_json::to_writer(&mut out, message)
        .map_err(std::io::Error::from)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush());
    if written.is_err() {
        std::process::exit(1);
    }
}

async fn run_job(spec: JobSpec) -> ChildMessage {
    let converters = match crate::runtime::builtin_converters(&spec.builtin) {
        Ok(c) => c,
        Err(e) => {
            return ChildMessage::Failed {
                code: "converter_unavailable".into(),
                message: e.to_string(),
                temporary: false,
            };
        }
    };
    let Some(converter) = converters.into_iter().find(|c| c.name() == spec.converter) else {
        return ChildMessage::Failed {
            code: "converter_unavailable".into(),
            message: format!("no built-in converter named {:?}", spec.converter),
            temporary: false,
        };
    };
    let progress: ProgressFn = {
        let last = LastReport::default();
        Arc::new(move |percent: u8, stage: Option<&str>| {
            if last.changed(percent, stage) {
                emit(&ChildMessage::Progress {
                    percent,
                    stage: stage.map(str::to_owned),
                });
            }
        })
    };
    let ctx = ConvertContext::for_file(spec.input, spec.work_dir, progress);
    let request = ConvertRequest {
        id: spec.id,
        attempt: spec.attempt,
        source: spec.source,
        target: spec.target,
        options: spec.options,
    };
    match converter.convert(&request, &ctx).await {
        Ok(outputs) => match files(outputs, &ctx).await {
            Ok(outputs) => ChildMessage::Done { outputs },
            Err(e) => ChildMessage::failed(&e),
        },
        Err(e) => ChildMessage::failed(&e),
    }
}

/// Every output as a file: outputs held in memory are written into the output directory.
async fn files(
    outputs: Vec<Output>,
    ctx: &ConvertContext,
) -> Result<Vec<ChildOutput>, ConvertError> {
    let mut files = Vec::with_capacity(outputs.len());
    for (i, out) in outputs.into_iter().enumerate() {
        let path = match out.body {
            OutputBody::File(p) => absolute(&p)?,
            OutputBody::Bytes(b) => {
                let path = absolute(&ctx.output_dir().await?.join(format!(".memory-output-{i}")))?;
                tokio::fs::write(&path, &b).await?;
                path
            }
        };
        files.push(ChildOutput {
            name: out.name,
            format: out.format,
            path,
        });
    }
    Ok(files)
}

/// The last progress report sent: reports that repeat it do not cross the pipe.
#[derive(Debug, Default)]
struct LastReport(std::sync::Mutex<(Option<u8>, Option<String>)>);

impl LastReport {
    /// Whether `(percent, stage)` differs from the last report (and remembers it).
    fn changed(&self, percent: u8, stage: Option<&str>) -> bool {
        let Ok(mut last) = self.0.lock() else {
            return true;
        };
        if last.0 == Some(percent) && last.1.as_deref() == stage {
            return false;
        }
        *last = (Some(percent), stage.map(str::to_owned));
        true
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;

    use super::*;

    #[test]
    fn sizes_take_units() {
        let parse = |s: &str| s.parse::<ByteSize>().map(|b| b.0).ok();
        assert_eq!(parse("512MiB"), Some(512 << 20));
        assert_eq!(parse("2GiB"), Some(2 << 30));
        assert_eq!(parse("2 G"), Some(2 << 30));
        assert_eq!(parse("500MB"), Some(500_000_000));
        assert_eq!(parse("4096"), Some(4096));
        assert_eq!(parse("12 parsecs"), None);
        assert_eq!(parse("-1"), None);
        assert_eq!(parse("99999999999TiB"), None);
        assert_eq!(human_bytes(256 << 20), "256 MiB");
        assert_eq!(human_bytes(3 << 29), "1.5 GiB");
    }

    #[test]
    fn flags_and_the_file_set_isolation_and_limits() {
        use clap::Parser;

        use crate::config::{Cli, Settings};
        let cli = Cli::try_parse_from([
            "converto",
            "--isolation",
            "none",
            "--job-memory-limit",
            "2GiB",
            "--job-cpu-limit",
            "10m",
            "worker",
        ])
        .expect("flags");
        let s = Settings::resolve(None, &cli.common, None).expect("settings");
        assert_eq!(s.isolation, Isolation::None);
        assert_eq!(s.job_memory_limit, Some(2 << 30));
        assert_eq!(s.job_cpu_limit, Some(std::time::Duration::from_secs(600)));

        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("converto.toml");
        std::fs::write(&file, "isolation = \"process\"\njob_memory_limit = \"0\"\n")
            .expect("write");
        let cli = Cli::try_parse_from(["converto", "worker"]).expect("flags");
        let s = Settings::resolve(Some(&file), &cli.common, None).expect("settings");
        assert_eq!(s.isolation, Isolation::Process);
        assert_eq!(s.job_memory_limit, None, "0 is no limit");
        assert_eq!(s.job_cpu_limit, None);

        let defaults = Settings::resolve(None, &cli.common, None).expect("settings");
        assert_eq!(defaults.isolation, Isolation::Process);
        assert!(defaults.job_memory_limit >= Some(MIN_DEFAULT_MEMORY_LIMIT));
    }

    #[test]
    fn the_default_memory_limit_has_a_floor() {
        assert!(default_memory_limit(1) >= MIN_DEFAULT_MEMORY_LIMIT);
        assert!(default_memory_limit(100_000) >= MIN_DEFAULT_MEMORY_LIMIT);
        assert!(default_memory_limit(1) >= default_memory_limit(4));
    }

    #[test]
    fn crashes_are_explained() {
        let limits = ChildLimits {
            memory_bytes: Some(256 << 20),
            cpu_seconds: Some(60),
        };
        let killed = ExitStatus::from_raw(9);
        assert_eq!(
            crash_reason(killed, "", &limits),
            "killed by signal 9 (SIGKILL; memory limit 256 MiB?)"
        );
        let aborted = ExitStatus::from_raw(6);
        let oom = crash_reason(
            aborted,
            "memory allocation of 16777216 bytes failed\n",
            &limits,
        );
        assert!(
            oom.starts_with(
                "out of memory (memory allocation of 16777216 bytes failed, memory limit 256 MiB)"
            ),
            "{oom}"
        );
        let panic = crash_reason(
            aborted,
            "\nthread 'main' panicked at src/x.rs:1:2:\nboom\nnote: run with RUST_BACKTRACE=1\n",
            &limits,
        );
        assert!(
            panic.starts_with("panicked at src/x.rs:1:2: boom"),
            "{panic}"
        );
        assert_eq!(crash_reason(aborted, "", &limits), "aborted (SIGABRT)");
        assert_eq!(
            crash_reason(ExitStatus::from_raw(24), "", &limits),
            "CPU time limit of 60s exceeded (SIGXCPU)"
        );
        assert_eq!(
            crash_reason(ExitStatus::from_raw(3 << 8), "bad\n", &limits),
            "the converter process exited with status 3 without a result: bad"
        );
    }

    #[test]
    fn a_stop_from_outside_is_temporary_a_crash_permanent() {
        let limits = ChildLimits::default();
        let term = ended_without_result(ExitStatus::from_raw(15), "", &limits);
        assert_eq!(term.code(), "converter_interrupted");
        assert!(term.is_temporary());
        let kill = ended_without_result(ExitStatus::from_raw(9), "", &limits);
        assert_eq!(kill.code(), CRASHED);
        assert!(!kill.is_temporary());
        assert_eq!(
            kill.to_string(),
            "killed by signal 9 (SIGKILL; out of memory?)"
        );
    }

    #[test]
    fn errors_cross_the_pipe_as_they_were() {
        let request = ConvertRequest {
            id: ConversionId::new(),
            attempt: 1,
            source: Format::new("stl").expect("format"),
            target: Format::new("obj").expect("format"),
            options: serde_json::Value::Null,
        };
        for e in [
            ConvertError::InvalidInput("truncated at byte 84".into()),
            ConvertError::InvalidOptions("encoding".into()),
            ConvertError::TooLarge("too many faces".into()),
            ConvertError::temporary("busy", "try later"),
            ConvertError::Cancelled,
        ] {
            let ChildMessage::Failed {
                code,
                message,
                temporary,
            } = ChildMessage::failed(&e)
            else {
                panic!("not a failure");
            };
            let back = rebuild_error(&request, code, message, temporary);
            assert_eq!(back.to_string(), e.to_string());
            assert_eq!(back.code(), e.code());
            assert_eq!(back.is_temporary(), e.is_temporary());
        }
    }
}

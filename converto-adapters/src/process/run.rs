//! Running one program: its own process group, streamed output, cancellation and time limits
//! that take the whole group down.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use converto_core::{ConvertContext, ConvertError};
use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::{Id, WaitPidFlag, waitid};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};

use super::compile::ProgressMatcher;
use super::config::ProgressStream;

/// How much of stderr is kept for error messages.
pub(crate) const STDERR_TAIL_BYTES: usize = 4096;
/// Longer lines are cut (progress is read from the start of a line).
const MAX_LINE_BYTES: usize = 4096;
/// After the program exits, how long its output pipes may stay open (held by a process that
/// escaped its group) before we stop reading.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);

/// What to run.
#[derive(Debug)]
pub(crate) struct RunSpec<'a> {
    pub(crate) program: &'a Path,
    pub(crate) args: Vec<OsString>,
    pub(crate) env: Vec<(String, OsString)>,
    pub(crate) cwd: &'a Path,
    pub(crate) timeout: Option<Duration>,
    pub(crate) kill_grace: Duration,
    pub(crate) progress: Option<&'a ProgressMatcher>,
}

/// How a run ended.
#[derive(Debug)]
pub(crate) enum RunEnd {
    /// The program exited (or was killed by a signal we did not send).
    Exited(ExitStatus),
    /// The route's time limit passed; the group was killed.
    TimedOut,
    /// The context's token was cancelled; the group was killed.
    Cancelled,
}

/// A run's end and the last bytes of its stderr.
#[derive(Debug)]
pub(crate) struct RunResult {
    pub(crate) end: RunEnd,
    pub(crate) stderr_tail: String,
}

/// Kills the process group when dropped, so a dropped conversion future leaves no process
/// behind.
///
/// The group is only ever signalled while its leader (our child) has not been reaped: a
/// zombie leader keeps its pid, and so the group id, from being reused. Once the leader is
/// reaped the guard is disarmed at once; signalling a reaped pgid could hit an unrelated
/// process group that was given the same number.
#[derive(Debug)]
struct GroupGuard {
    pgid: Option<Pid>,
}

impl GroupGuard {
    fn signal(&self, signal: Signal) {
        let Some(pgid) = self.pgid else { return };
        match killpg(pgid, signal) {
            // The group is gone already.
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(e) => tracing::warn!(pgid = pgid.as_raw(), %signal, error = %e, "killpg failed"),
        }
    }

    fn disarm(&mut self) {
        self.pgid = None;
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.signal(Signal::SIGKILL);
    }
}

/// The last `cap` bytes written to a stream.
#[derive(Debug)]
struct Tail {
    bytes: VecDeque<u8>,
    cap: usize,
    truncated: bool,
}

impl Tail {
    fn new(cap: usize) -> Self {
        Self {
            bytes: VecDeque::with_capacity(cap),
            cap,
            truncated: false,
        }
    }

    fn push(&mut self, chunk: &[u8]) {
        self.bytes.extend(chunk);
        if self.bytes.len() > self.cap {
            let excess = self.bytes.len() - self.cap;
            self.bytes.drain(..excess);
            self.truncated = true;
        }
    }

    fn text(&self) -> String {
        let (a, b) = self.bytes.as_slices();
        let mut raw = Vec::with_capacity(a.len() + b.len());
        raw.extend_from_slice(a);
        raw.extend_from_slice(b);
        let text = String::from_utf8_lossy(&raw);
        let text = text.trim();
        if self.truncated {
            format!("...{text}")
        } else {
            text.to_owned()
        }
    }
}

/// Reads a stream to its end, line by line (`\n` or `\r`), keeping a tail if asked.
async fn pump<R: AsyncRead + Unpin>(
    reader: Option<R>,
    mut on_line: impl FnMut(&[u8]),
    mut tail: Option<&mut Tail>,
) {
    let Some(mut reader) = reader else { return };
    let mut buf = vec![0u8; 8192];
    let mut line: Vec<u8> = Vec::with_capacity(256);
    loop {
        let n = match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk = &buf[..n];
        if let Some(t) = tail.as_deref_mut() {
            t.push(chunk);
        }
        for &b in chunk {
            if b == b'\n' || b == b'\r' {
                if !line.is_empty() {
                    on_line(&line);
                    line.clear();
                }
            } else if line.len() < MAX_LINE_BYTES {
                line.push(b);
            }
        }
    }
    if !line.is_empty() {
        on_line(&line);
    }
}

fn spawn_error(program: &Path, e: std::io::Error) -> ConvertError {
    use std::io::ErrorKind;
    const ENOEXEC: i32 = 8;
    match e.kind() {
        ErrorKind::NotFound => ConvertError::permanent(
            "converter_missing",
            format!(
                "converter program {} not found (it was there when the routes were loaded)",
                program.display()
            ),
        ),
        ErrorKind::PermissionDenied => ConvertError::permanent(
            "converter_not_executable",
            format!("converter program {} is not executable", program.display()),
        ),
        _ if e.raw_os_error() == Some(ENOEXEC) => ConvertError::permanent(
            "converter_not_executable",
            format!(
                "converter program {} is not a valid executable: {e}",
                program.display()
            ),
        ),
        _ => ConvertError::temporary(
            "converter_spawn_failed",
            format!("cannot start {}: {e}", program.display()),
        ),
    }
}

/// Waits (on a blocking thread) until the process `pid` has exited, *without reaping it*
/// (`waitid` with `WNOWAIT`), then sets `exited`. Until our own `Child::wait` reaps it, the
/// leader stays a zombie, so its process group id cannot be reused and `killpg` on it is safe.
fn watch_exit(pid: Option<Pid>) -> tokio::sync::watch::Receiver<bool> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    if let Some(pid) = pid {
        tokio::task::spawn_blocking(move || {
            // Retried only when interrupted; exited (or ECHILD: already gone) ends the wait.
            while let Err(Errno::EINTR) =
                waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT)
            {}
            tx.send_replace(true);
        });
    } else {
        tx.send_replace(true);
    }
    rx
}

/// Resolves once the watched process has exited (not reaped).
async fn exited(rx: &mut tokio::sync::watch::Receiver<bool>) {
    // An error means the watcher is gone, which it only is after `waitid` returned.
    let _ = rx.wait_for(|exited| *exited).await;
}

/// Stops the group: SIGTERM, up to `grace` for the leader to exit, then SIGKILL for whatever
/// is left, and reaps the leader. Both signals go out before the leader is reaped.
async fn terminate(
    child: &mut Child,
    guard: &mut GroupGuard,
    exit: &mut tokio::sync::watch::Receiver<bool>,
    grace: Duration,
) {
    guard.signal(Signal::SIGTERM);
    let _ = tokio::time::timeout(grace, exited(exit)).await;
    guard.signal(Signal::SIGKILL);
    let _ = child.wait().await;
    // Reaped: the pgid may be reused from here on.
    guard.disarm();
}

async fn deadline(limit: Option<Duration>) {
    match limit {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

/// Runs the program to its end, its time limit, or cancellation.
pub(crate) async fn run(
    spec: RunSpec<'_>,
    ctx: &ConvertContext,
) -> Result<RunResult, ConvertError> {
    let mut cmd = Command::new(spec.program);
    cmd.args(&spec.args)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .current_dir(spec.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| spawn_error(spec.program, e))?;
    let mut guard = GroupGuard {
        pgid: child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .map(Pid::from_raw),
    };
    let mut exit = watch_exit(guard.pgid);
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let mut tail = Tail::new(STDERR_TAIL_BYTES);

    let progress_on = |stream: ProgressStream| {
        spec.progress
            .filter(|p| p.stream == stream || p.stream == ProgressStream::Both)
    };
    let report = |matcher: Option<&ProgressMatcher>, line: &[u8]| {
        if let Some(m) = matcher
            && let Some(percent) = m.percent(line)
        {
            ctx.progress(percent, m.stage.as_deref());
        }
    };
    let out_matcher = progress_on(ProgressStream::Stdout);
    let err_matcher = progress_on(ProgressStream::Stderr);

    let end = {
        let out = pump(
            stdout,
            |line| {
                tracing::trace!(line = %String::from_utf8_lossy(line), "converter stdout");
                report(out_matcher, line);
            },
            None,
        );
        let err = pump(
            stderr,
            |line| {
                tracing::trace!(line = %String::from_utf8_lossy(line), "converter stderr");
                report(err_matcher, line);
            },
            Some(&mut tail),
        );
        let mut exit = exit.clone();
        let guard = &guard;
        let finished = async move {
            let mut pumps = std::pin::pin!(async { tokio::join!(out, err) });
            let mut drained = false;
            loop {
                tokio::select! {
                    () = exited(&mut exit) => break,
                    _ = &mut pumps, if !drained => drained = true,
                }
            }
            // The leader has exited but is not reaped yet, so its group id is still ours:
            // anything left in the group is a straggler holding our pipes.
            guard.signal(Signal::SIGKILL);
            if !drained {
                let _ = tokio::time::timeout(DRAIN_LIMIT, &mut pumps).await;
            }
        };
        tokio::select! {
            () = finished => None,
            _ = ctx.cancel_token().cancelled() => Some(RunEnd::Cancelled),
            _ = deadline(spec.timeout) => Some(RunEnd::TimedOut),
        }
    };
    let end = match end {
        None => {
            let status = child.wait().await;
            // Reaped: the pgid may be reused from here on.
            guard.disarm();
            RunEnd::Exited(status?)
        }
        Some(end) => {
            terminate(&mut child, &mut guard, &mut exit, spec.kill_grace).await;
            end
        }
    };
    Ok(RunResult {
        end,
        stderr_tail: tail.text(),
    })
}

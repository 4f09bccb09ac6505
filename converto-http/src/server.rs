//! The serve loop: HTTP/1 and HTTP/2 over hyper, bounded per connection and in total.
//!
//! `axum::serve` has no header timeout, no idle timeout and no connection cap, so a client that
//! opens connections and stalls can hold the process's sockets and memory for ever. [`serve`]
//! accepts connections itself and gives each one:
//!
//! - a header read timeout (HTTP/1: the request head, including the wait for the next request
//!   on a kept-alive connection, must arrive within it),
//! - an idle timeout (a connection that neither sends nor receives a byte for that long is
//!   closed, whatever state it is in: half a request line, a stalled body, a reader that stopped
//!   reading),
//! - a place under a cap on concurrent connections; beyond the cap a connection is answered
//!   `503` (`application/problem+json`, `Retry-After`) and closed.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::middleware;

/// Connection limits of [`serve`].
#[derive(Debug, Clone)]
pub struct ServerLimits {
    /// How long a client has to send a complete request head (HTTP/1), counted from the moment
    /// the server starts waiting for it (also between requests on a kept-alive connection).
    pub header_read_timeout: Duration,
    /// A connection on which no byte moves in either direction for this long is closed.
    pub idle_timeout: Duration,
    /// Connections served at once; more are answered `503` and closed.
    pub max_connections: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            max_connections: 1024,
        }
    }
}

/// What `Retry-After` says when the server is at a cap (seconds).
pub(crate) const RETRY_AFTER_SECS: u64 = 1;

/// Connections over the cap answered at once; beyond this they are closed without an answer
/// (answering is itself work a flood must not be able to multiply).
const MAX_REJECTING: usize = 256;

/// How long answering a connection over the cap may take (writing the 503, reading what the
/// client sent so that closing does not reset the connection before it read the answer).
const REJECT_TIME: Duration = Duration::from_secs(1);

/// After a failed `accept` (e.g. out of file descriptors), wait this long before the next.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Closing a connection whose request was not read to its end (a `413`), the server first
/// sends its FIN, then reads and discards what the client still sends, for at most this long
/// and this many bytes: closing with unread data resets the connection, and a client still
/// sending would lose the answer it was sent.
const LINGER_TIME: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 4 * 1024 * 1024;

/// Serves `router` on `listener` until `shutdown` resolves, then stops accepting and waits
/// for the open connections to finish their requests (the caller bounds that wait).
pub async fn serve<F>(
    listener: TcpListener,
    router: Router,
    limits: ServerLimits,
    shutdown: F,
) -> io::Result<()>
where
    F: Future<Output = ()> + Send,
{
    let connections = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let rejecting = Arc::new(Semaphore::new(MAX_REJECTING));
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, _peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
            metrics::counter!("converto_http_connections_rejected_total").increment(1);
            if let Ok(p) = Arc::clone(&rejecting).try_acquire_owned() {
                tokio::spawn(reject(stream, p));
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let activity = Activity::new();
        let io = TokioIo::new(Tracked {
            inner: stream,
            activity: activity.clone(),
            linger: None,
            lingered: 0,
        });
        let service = TowerToHyperService::new(router.clone());
        let conn = graceful.watch(builder.serve_connection(io, service).into_owned());
        let idle = limits.idle_timeout;
        tokio::spawn(async move {
            let _permit: OwnedSemaphorePermit = permit;
            tokio::select! {
                r = conn => if let Err(e) = r {
                    tracing::debug!(error = %e, "connection ended with an error");
                },
                () = activity.idle_for(idle) => {
                    tracing::debug!("closing a connection idle for {idle:?}");
                }
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Answers a connection over the cap with a 503 and closes it.
async fn reject(mut stream: TcpStream, _permit: OwnedSemaphorePermit) {
    let request_id = middleware::new_request_id();
    let body = middleware::problem_json(
        503,
        "overloaded",
        "the server is at its connection limit; try again shortly",
        Some(&request_id),
    );
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/problem+json\r\n\
         retry-after: {RETRY_AFTER_SECS}\r\nconnection: close\r\ncontent-length: {}\r\n\
         x-content-type-options: nosniff\r\ncontent-security-policy: {}\r\n\
         x-request-id: {request_id}\r\n\r\n",
        body.len(),
        middleware::CSP,
    );
    let _ = tokio::time::timeout(REJECT_TIME, async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body.as_bytes()).await?;
        stream.shutdown().await?;
        // Read (a bounded amount of) what the client sent: closing a socket with unread data
        // resets the connection, and the client may lose the answer.
        let mut buf = [0u8; 4096];
        let mut read = 0usize;
        while read < 64 * 1024 {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            read += n;
        }
        io::Result::Ok(())
    })
    .await;
}

/// When a connection last moved a byte, in milliseconds since it was accepted.
#[derive(Clone)]
struct Activity {
    since: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Activity {
    fn new() -> Self {
        Self {
            since: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.since.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Resolves once no byte moved for `idle`.
    async fn idle_for(&self, idle: Duration) {
        loop {
            let last = self.since + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let deadline = last + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// A socket that records when it last moved a byte, and lingers when it is shut down.
struct Tracked {
    inner: TcpStream,
    activity: Activity,
    /// Set once the shutdown started: when lingering ends.
    linger: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Bytes discarded while lingering.
    lingered: usize,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.linger.is_none() {
            std::task::ready!(Pin::new(&mut this.inner).poll_shutdown(cx))?;
            this.linger = Some(Box::pin(tokio::time::sleep(LINGER_TIME)));
        }
        let mut scratch = [0u8; 8192];
        loop {
            let expired = this
                .linger
                .as_mut()
                .is_none_or(|t| t.as_mut().poll(cx).is_ready());
            if expired || this.lingered >= LINGER_BYTES {
                return Poll::Ready(Ok(()));
            }
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut this.inner).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if buf.filled().is_empty() => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) => this.lingered += buf.filled().len(),
                // The client is gone: nothing left to protect.
                Poll::Ready(Err(_)) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

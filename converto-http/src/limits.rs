//! Bounds on what a multipart body may make the server buffer outside its fields' data.
//!
//! The multipart parser streams a field's data, but it buffers whatever comes before a field's
//! data (the preamble, boundaries, part headers) until it finds the end of the part headers: a
//! client sending part headers that never end would grow that buffer up to the upload limit.
//! [`FramingGuard`] counts the bytes the parser pulls from the body while the handler waits for
//! the next field, and fails the body when they pass a small limit.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};

use axum::body::Body;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};

/// Bytes read from the body while waiting for one field: its framing (preamble, boundary,
/// part headers), plus whatever data the parser pulled along with it, which the server's
/// transport can hand over in one go (up to its read buffer on HTTP/1, a flow-control window
/// of 1 MiB on HTTP/2). Part headers are a few hundred bytes; this bounds a hostile client's
/// to a few MiB instead of the upload limit.
pub const MAX_FRAMING_BYTES: usize = 4 * 1024 * 1024;

/// The multipart framing went over [`MAX_FRAMING_BYTES`].
#[derive(Debug, thiserror::Error)]
#[error("multipart part headers larger than {limit} bytes")]
pub struct FramingTooLarge {
    limit: usize,
}

/// Counts the bytes read from a body while armed; see the module docs.
#[derive(Debug, Clone, Default)]
pub struct FramingGuard {
    state: Arc<GuardState>,
}

#[derive(Debug, Default)]
struct GuardState {
    armed: AtomicBool,
    counted: AtomicUsize,
    tripped: AtomicBool,
}

impl FramingGuard {
    /// `body`, failing once more than [`MAX_FRAMING_BYTES`] are read from it while armed.
    pub fn wrap(&self, body: Body) -> Body {
        Body::new(Guarded {
            inner: body,
            state: Arc::clone(&self.state),
        })
    }

    /// Starts counting (the handler waits for the next field).
    pub fn arm(&self) {
        self.state.counted.store(0, Ordering::Relaxed);
        self.state.armed.store(true, Ordering::Relaxed);
    }

    /// Stops counting (a field's data follows).
    pub fn disarm(&self) {
        self.state.armed.store(false, Ordering::Relaxed);
    }

    /// Whether the body was failed for its framing.
    pub fn tripped(&self) -> bool {
        self.state.tripped.load(Ordering::Relaxed)
    }
}

struct Guarded {
    inner: Body,
    state: Arc<GuardState>,
}

impl HttpBody for Guarded {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
            && self.state.armed.load(Ordering::Relaxed)
        {
            let counted = self.state.counted.fetch_add(data.len(), Ordering::Relaxed) + data.len();
            if counted > MAX_FRAMING_BYTES {
                self.state.tripped.store(true, Ordering::Relaxed);
                return Poll::Ready(Some(Err(axum::Error::new(FramingTooLarge {
                    limit: MAX_FRAMING_BYTES,
                }))));
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    #[tokio::test]
    async fn counts_only_while_armed() {
        let guard = FramingGuard::default();
        let chunks: Vec<Result<Bytes, std::io::Error>> = (0..160)
            .map(|_| Ok(Bytes::from(vec![b'x'; 64 * 1024])))
            .collect();
        let body = guard.wrap(Body::from_stream(futures::stream::iter(chunks)));
        let mut stream = body.into_data_stream();
        // Disarmed: a field's data, any size.
        for _ in 0..80 {
            assert!(stream.next().await.is_some_and(|r| r.is_ok()));
        }
        guard.arm();
        let mut failed = false;
        while let Some(r) = stream.next().await {
            if r.is_err() {
                failed = true;
                break;
            }
        }
        assert!(failed && guard.tripped());
    }
}

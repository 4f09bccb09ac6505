//! Reader and writer wrappers that stop a decoder or encoder from the inside: once the job is
//! cancelled, or once the outputs reach their byte limit, the next read or write fails with a
//! [`GuardStop`] that the error mapping turns back into `Cancelled` or `TooLarge`.

use std::io::{self, Read, Seek, SeekFrom, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio_util::sync::CancellationToken;

use super::error::GuardStop;

/// Wraps a reader or a writer; see the [module documentation](self).
#[derive(Debug)]
pub(crate) struct Guarded<T> {
    inner: T,
    cancel: CancellationToken,
    /// Bytes written so far by every output of the conversion, and their limit.
    written: Option<(Arc<AtomicU64>, u64)>,
}

impl<T> Guarded<T> {
    /// Stops reads (or writes) once `cancel` is cancelled.
    pub(crate) fn new(inner: T, cancel: CancellationToken) -> Self {
        Self {
            inner,
            cancel,
            written: None,
        }
    }

    /// Also counts written bytes into `total` and stops past `max`.
    pub(crate) fn with_byte_limit(mut self, total: Arc<AtomicU64>, max: u64) -> Self {
        self.written = Some((total, max));
        self
    }

    fn check(&self) -> io::Result<()> {
        if self.cancel.is_cancelled() {
            return Err(io::Error::other(GuardStop::Cancelled));
        }
        Ok(())
    }
}

impl<R: Read> Read for Guarded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.check()?;
        self.inner.read(buf)
    }
}

impl<S: Seek> Seek for Guarded<S> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.check()?;
        self.inner.seek(pos)
    }
}

impl<W: Write> Write for Guarded<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.check()?;
        if let Some((total, max)) = &self.written {
            let before = total.fetch_add(buf.len() as u64, Ordering::Relaxed);
            if before.saturating_add(buf.len() as u64) > *max {
                return Err(io::Error::other(GuardStop::TooManyBytes { max: *max }));
            }
        }
        self.inner.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.check()?;
        self.inner.flush()
    }
}

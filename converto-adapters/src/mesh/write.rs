//! Shared pieces of the writers.

use std::collections::VecDeque;
use std::io::Write;
use std::ops::Range;
use std::sync::mpsc;

use super::error::MeshError;
use super::model::{Encoding, Mesh, MeshFormat, Monitor, Stage};

/// Flush to the writer in blocks of about this many bytes.
const BLOCK: usize = 256 * 1024;
/// Report progress and check cancellation every this many items.
const TICK: u64 = 16 * 1024;

/// Output assembled in a byte buffer and written in large blocks, with progress per item.
pub(crate) struct Chunked<'m, 'a, W> {
    writer: W,
    pub(crate) buf: Vec<u8>,
    done: u64,
    total: u64,
    monitor: &'m mut Monitor<'a>,
}

impl<'m, 'a, W: Write> Chunked<'m, 'a, W> {
    pub(crate) fn new(writer: W, total: u64, monitor: &'m mut Monitor<'a>) -> Self {
        Self {
            writer,
            buf: Vec::with_capacity(BLOCK + 4096),
            done: 0,
            total,
            monitor,
        }
    }

    /// One item (vertex or triangle) was appended to `buf`.
    pub(crate) fn item(&mut self) -> Result<(), MeshError> {
        self.done += 1;
        if self.buf.len() >= BLOCK {
            self.writer.write_all(&self.buf)?;
            self.buf.clear();
        }
        if self.done.is_multiple_of(TICK) {
            self.monitor.update(Stage::Writing, self.done, self.total)?;
        }
        Ok(())
    }

    pub(crate) fn finish(mut self) -> Result<(), MeshError> {
        self.writer.write_all(&self.buf)?;
        self.writer.flush()?;
        self.monitor.update(Stage::Writing, self.total, self.total)
    }
}

/// Items (lines) formatted as one piece by [`write_pieces`]: about 100 KiB of OBJ text.
const PIECE: usize = 4096;
/// Fewer items are formatted on the calling thread alone.
const PARALLEL_FROM: usize = 64 * 1024;
/// Pieces formatted ahead of the one being written, at most.
const PIECES_IN_FLIGHT: usize = 3;

/// Writes `total` items, each formatted by `format(range, buf)` (which appends the items of
/// `range`, in order, to `buf`), in pieces of [`PIECE`] items, with progress per piece.
///
/// Formatting numbers costs far more than writing them out, and pieces do not depend on
/// each other, so for large outputs pieces are formatted on a helper thread and on this
/// one (whichever is free), and written here in order: the bytes are those of formatting
/// them one after the other.
pub(crate) fn write_pieces<W, F>(
    mut writer: W,
    total: usize,
    monitor: &mut Monitor<'_>,
    format: F,
) -> Result<(), MeshError>
where
    W: Write,
    F: Fn(Range<usize>, &mut Vec<u8>) + Sync,
{
    let pieces = (0..total)
        .step_by(PIECE)
        .map(|start| start..(start + PIECE).min(total));
    let mut write = |piece: &Piece| -> Result<(), MeshError> {
        writer.write_all(&piece.buf)?;
        monitor.update(Stage::Writing, piece.items.end as u64, total as u64)
    };
    let parallel =
        total >= PARALLEL_FROM && std::thread::available_parallelism().is_ok_and(|n| n.get() > 1);
    if !parallel {
        let mut piece = Piece::default();
        for items in pieces {
            piece.format(items, &format);
            write(&piece)?;
        }
    } else {
        std::thread::scope(|scope| -> Result<(), MeshError> {
            let format = &format;
            let (to_helper, jobs) = mpsc::sync_channel::<Piece>(1);
            let (done, from_helper) = mpsc::channel::<Piece>();
            scope.spawn(move || {
                for mut piece in jobs {
                    let items = piece.items.clone();
                    piece.format(items, format);
                    if done.send(piece).is_err() {
                        break;
                    }
                }
            });
            let gone = || MeshError::from(std::io::Error::other("mesh writer thread stopped"));
            // Pieces in order: formatted (`Some`) or with the helper (`None`, returned in the
            // order it gets them).
            let mut queue: VecDeque<Option<Piece>> = VecDeque::new();
            let mut spare: Vec<Piece> = Vec::new();
            let mut pieces = pieces.peekable();
            loop {
                while let Some(front) = queue.front_mut() {
                    if front.is_none() {
                        match from_helper.try_recv() {
                            Ok(piece) => *front = Some(piece),
                            Err(mpsc::TryRecvError::Empty) => break,
                            Err(mpsc::TryRecvError::Disconnected) => return Err(gone()),
                        }
                    }
                    if let Some(piece) = queue.pop_front().flatten() {
                        write(&piece)?;
                        spare.push(piece);
                    }
                }
                let Some(items) = pieces.peek().cloned() else {
                    if queue.is_empty() {
                        return Ok(());
                    }
                    if let Some(front @ None) = queue.front_mut() {
                        *front = Some(from_helper.recv().map_err(|_| gone())?);
                    }
                    continue;
                };
                if queue.len() >= PIECES_IN_FLIGHT {
                    if let Some(front @ None) = queue.front_mut() {
                        *front = Some(from_helper.recv().map_err(|_| gone())?);
                    }
                    continue;
                }
                pieces.next();
                let mut piece = spare.pop().unwrap_or_default();
                piece.items = items.clone();
                match to_helper.try_send(piece) {
                    Ok(()) => queue.push_back(None),
                    Err(mpsc::TrySendError::Full(mut piece)) => {
                        piece.format(items, format);
                        queue.push_back(Some(piece));
                    }
                    Err(mpsc::TrySendError::Disconnected(_)) => return Err(gone()),
                }
            }
        })?;
    }
    writer.flush()?;
    monitor.update(Stage::Writing, total as u64, total as u64)
}

/// Some items, formatted.
#[derive(Default)]
struct Piece {
    items: Range<usize>,
    buf: Vec<u8>,
}

impl Piece {
    fn format(&mut self, items: Range<usize>, format: &impl Fn(Range<usize>, &mut Vec<u8>)) {
        self.buf.clear();
        self.items = items.clone();
        format(items, &mut self.buf);
    }
}

/// Appends a float in the shortest form that reads back to the same `f32`.
pub(crate) fn push_f32(buf: &mut Vec<u8>, floats: &mut ryu::Buffer, v: f32) {
    let text = floats.format(v);
    // ryu writes whole numbers as "1.0"; "1" is shorter and reads back the same.
    let text = text.strip_suffix(".0").unwrap_or(text);
    buf.extend_from_slice(text.as_bytes());
}

/// Appends an unsigned integer.
pub(crate) fn push_u64(buf: &mut Vec<u8>, ints: &mut itoa::Buffer, v: u64) {
    buf.extend_from_slice(ints.format(v).as_bytes());
}

/// The unit normal of a counter-clockwise triangle (zero when degenerate).
pub(crate) fn normal(a: [f32; 3], b: [f32; 3], c: [f32; 3]) -> [f32; 3] {
    let u = [b[0] - a[0], b[1] - a[1], b[2] - a[2]];
    let v = [c[0] - a[0], c[1] - a[1], c[2] - a[2]];
    let n = [
        u[1] * v[2] - u[2] * v[1],
        u[2] * v[0] - u[0] * v[2],
        u[0] * v[1] - u[1] * v[0],
    ];
    let len = (n[0] * n[0] + n[1] * n[1] + n[2] * n[2]).sqrt();
    if len > 0.0 && len.is_finite() {
        [n[0] / len, n[1] / len, n[2] / len]
    } else {
        [0.0; 3]
    }
}

/// The most bytes `mesh` takes written as `format`: exact for binary STL and PLY, an upper
/// bound for text (every number at its longest: 15 characters for an `f32` as `ryu` writes
/// it, 10 for a `u32`, plus separators).
pub(crate) fn output_size(mesh: &Mesh, format: MeshFormat, encoding: Encoding) -> u64 {
    const FLOAT: u64 = 16;
    const INT: u64 = 11;
    let v = mesh.positions.len() as u64;
    let t = mesh.triangles.len() as u64;
    let header = 512;
    let per = |vertex: u64, triangle: u64| {
        v.saturating_mul(vertex)
            .saturating_add(t.saturating_mul(triangle))
            .saturating_add(header)
    };
    match (format, encoding) {
        (MeshFormat::Stl, Encoding::Binary) => 84u64.saturating_add(t.saturating_mul(50)),
        // "  facet normal" n, "outer loop", three "vertex" lines, "endloop", "endfacet".
        (MeshFormat::Stl, Encoding::Ascii) => {
            per(0, 14 + 3 * FLOAT + 16 + 3 * (12 + 3 * FLOAT + 1) + 24)
        }
        (MeshFormat::Obj, _) => per(2 + 3 * FLOAT, 2 + 3 * INT),
        (MeshFormat::Ply, Encoding::Binary) => {
            let header = super::ply::header(mesh, "binary_little_endian").len() as u64;
            v.saturating_mul(12)
                .saturating_add(t.saturating_mul(13))
                .saturating_add(header)
        }
        (MeshFormat::Ply, Encoding::Ascii) => per(3 * FLOAT + 1, 2 + 3 * INT),
        (MeshFormat::Glb, _) => super::glb::size(mesh),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::write_mesh;

    #[test]
    fn output_size_is_exact_for_binary_and_an_upper_bound_for_text() {
        // Long floats and long indices: the text writers' worst case.
        let long = [-1.234_567_9e-38_f32, -3.402_823e37, -0.000_123_456_79];
        let mut mesh = Mesh::default();
        for i in 0..3000u32 {
            mesh.positions
                .push(long.map(|v| v * (1.0 + i as f32 * 1e-6)));
        }
        for i in 0..2998u32 {
            mesh.triangles.push([i, i + 1, i + 2]);
        }
        for format in MeshFormat::ALL {
            for encoding in [Encoding::Binary, Encoding::Ascii] {
                if format == MeshFormat::Obj && encoding == Encoding::Binary
                    || format == MeshFormat::Glb && encoding == Encoding::Ascii
                {
                    continue;
                }
                let mut out = Vec::new();
                write_mesh(&mesh, format, encoding, &mut out, &mut Monitor::new()).expect("writes");
                let bound = output_size(&mesh, format, encoding);
                let written = out.len() as u64;
                assert!(
                    written <= bound,
                    "{format} {encoding:?}: {written} > {bound}"
                );
                if encoding == Encoding::Binary && format != MeshFormat::Obj {
                    // Exact for STL, PLY and GLB.
                    assert_eq!(written, bound, "{format} binary is exact");
                }
            }
        }
    }
}

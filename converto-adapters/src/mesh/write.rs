//! Shared pieces of the writers.

use std::io::Write;
use std::ops::Range;

use super::error::MeshError;
use super::model::{Encoding, Mesh, MeshFormat, Monitor, Stage};
use super::pipeline::{Ahead, ordered};

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
/// Pieces formatted ahead of the one being written, at most, and waiting for the helper.
const AHEAD: Ahead = Ahead {
    in_flight: 3,
    waiting: 1,
};

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
    let mut pieces = (0..total)
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
        ordered(
            AHEAD,
            "mesh writer",
            |piece: &mut Piece| {
                let Some(items) = pieces.next() else {
                    return Ok(false);
                };
                piece.items = items;
                Ok(true)
            },
            |piece| {
                let items = piece.items.clone();
                piece.format(items, &format);
            },
            |piece| write(piece),
        )?;
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

/// Appends `prefix`, the three numbers (each after a space) and a line end: an OBJ face
/// (`f 1 2 3`) or an ASCII PLY one (`3 0 1 2`).
///
/// The line is put together on the stack and appended at once: appending number by number
/// costs a copy call each, more than formatting the number does.
pub(crate) fn push_index_line(buf: &mut Vec<u8>, prefix: u8, values: [u64; 3]) {
    // The longest line: the prefix, three times a space and 20 digits, the line end. Filled
    // from its end, so no number's length is needed before it is written.
    let mut line = [0u8; 1 + 3 * 21 + 1];
    let mut start = line.len();
    let mut put = |byte: u8, start: &mut usize| {
        *start -= 1;
        if let Some(slot) = line.get_mut(*start) {
            *slot = byte;
        }
    };
    put(b'\n', &mut start);
    for v in values.into_iter().rev() {
        let mut rest = v;
        while rest >= 100 {
            let [tens, ones] = two_digits(rest % 100);
            rest /= 100;
            put(ones, &mut start);
            put(tens, &mut start);
        }
        if rest >= 10 {
            let [tens, ones] = two_digits(rest);
            put(ones, &mut start);
            put(tens, &mut start);
        } else {
            put(b'0' + rest as u8, &mut start);
        }
        put(b' ', &mut start);
    }
    put(prefix, &mut start);
    buf.extend_from_slice(line.get(start..).unwrap_or_default());
}

/// The two digits of `n` (below 100).
#[inline]
fn two_digits(n: u64) -> [u8; 2] {
    let at = n as usize * 2;
    PAIRS
        .get(at..at + 2)
        .and_then(|d| <[u8; 2]>::try_from(d).ok())
        .unwrap_or([b'0'; 2])
}

/// The two digits of 0 to 99, one after the other.
const PAIRS: &[u8; 200] = b"\
    0001020304050607080910111213141516171819\
    2021222324252627282930313233343536373839\
    4041424344454647484950515253545556575859\
    6061626364656667686970717273747576777879\
    8081828384858687888990919293949596979899";

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
    fn index_lines_read_as_written() {
        for values in [
            [0, 1, 9],
            [10, 99, 100],
            [u64::from(u32::MAX), u64::MAX, 12_345],
        ] {
            let mut buf = b"x".to_vec();
            push_index_line(&mut buf, b'f', values);
            let [a, b, c] = values;
            assert_eq!(buf, format!("xf {a} {b} {c}\n").into_bytes());
        }
    }

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

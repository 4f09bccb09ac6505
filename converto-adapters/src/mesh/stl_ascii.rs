//! ASCII STL reading, in blocks of whole lines, parsed on two threads for large files.
//!
//! Parsing a line (finding its end, its keyword, its coordinates) needs nothing from the lines
//! before it; the facet/loop structure, vertex merging and the limits do. So the file is cut
//! into blocks of whole lines, blocks are parsed on a helper thread and on the reading thread
//! (whichever is free: the machine may have two cores only), and the reading thread applies
//! the parsed blocks strictly in file order. The result and every error are those of reading
//! line by line: a line the block parser does not take as it is (a bad number, an unknown or
//! misplaced keyword, a NUL byte, a line over the limit) is applied by the line-by-line code,
//! which names its line, and nothing after the first error is applied.

use std::io::BufRead;

use super::error::{Location, MeshError, Reason, excerpt};
use super::limits::{Fan, MeshLimits, more_possible};
use super::model::{Mesh, MeshFormat, VertexMerger, WARM};
use super::pipeline::{Ahead, ordered};
use super::text::{coordinate, decimal_prefix, parse_f64, tokens};

const FORMAT: MeshFormat = MeshFormat::Stl;

/// How the reader cuts and shares its work.
#[derive(Debug, Clone, Copy)]
struct Tuning {
    /// Bytes read into a block, about (a block ends at the last line end in it). Each block
    /// is a hand-over between threads, so not too small; blocks in flight are memory.
    block: usize,
    /// Room kept in a block for the partial line carried over from the block before, so the
    /// read that fills the block is still as large as the block (reads at least as large as
    /// the `BufReader`'s buffer bypass it instead of being copied through it).
    carry_room: usize,
    /// Smaller files are parsed on the calling thread alone (a thread costs more than it
    /// saves on them).
    parallel_from: u64,
    /// Blocks read ahead of the one being applied (at most), and waiting for the helper
    /// thread: with none waiting, a block goes to the helper only when it is idle, and is
    /// otherwise parsed by the reading thread.
    ahead: Ahead,
}

/// 256 KiB blocks, at most 2 in flight plus the one being read: under 1 MiB held. Every block
/// handed to the helper thread may wake it, and with 64 KiB blocks those hand-overs (a
/// thousand for a 65 MB file) kept the two threads at about one CPU between them; 256 KiB
/// blocks took the 65 MB sphere of `benches/converters.sh` from 60-70 ms to 47-50 ms (peak
/// memory 10.5 to 10.9 MiB).
///
/// One block may wait for the helper: the reading thread then hands it every block and only
/// reads and applies (about as much work as parsing), where with none waiting it parsed every
/// other block itself besides (the median wall time of that file went from 52 to 48 ms, and
/// from 92 to 76 ms with the machine's two cores shared with other work; the same memory).
const TUNING: Tuning = Tuning {
    block: 256 * 1024,
    carry_room: 8 * 1024,
    parallel_from: 2 << 20,
    ahead: Ahead {
        in_flight: 2,
        waiting: 1,
    },
};

/// The `BufReader` capacity [`read_mesh`](super::read_mesh) gives an STL: the ASCII reader
/// reads whole blocks past it, the binary reader batches of 400 KB.
pub(super) const STL_BUFFER: usize = 16 * 1024;

/// The fewest bytes a triangle is taken to need when sizing the mesh from the first block:
/// about what a facet takes indented, with `%e` numbers (some 250 bytes), so that a dense
/// first block cannot size the mesh far beyond what a typical file holds.
const TYPICAL_TRIANGLE_BYTES: u64 = 200;
/// The fewest bytes a triangle can add: one more `vertex x y z` line in a fan.
const MIN_TRIANGLE_BYTES: u64 = 12;

/// What a line is, as the block parser sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Line {
    /// No token.
    Blank,
    Solid,
    EndSolid,
    Facet,
    EndFacet,
    Outer,
    EndLoop,
    /// `vertex` with three finite coordinates (the next entry of [`Parsed::vertices`]).
    Vertex,
    /// Anything else; applied from its text by the line-by-line code.
    Slow,
}

/// A keyword, case-insensitive as the format has it.
fn keyword(word: &[u8]) -> Line {
    let is = |k: &[u8]| word.eq_ignore_ascii_case(k);
    match word.len() {
        5 if is(b"solid") => Line::Solid,
        5 if is(b"facet") => Line::Facet,
        5 if is(b"outer") => Line::Outer,
        6 if is(b"vertex") => Line::Vertex,
        7 if is(b"endloop") => Line::EndLoop,
        8 if is(b"endsolid") => Line::EndSolid,
        8 if is(b"endfacet") => Line::EndFacet,
        _ => Line::Slow,
    }
}

/// A block of whole lines and, once parsed, what its lines are.
#[derive(Default)]
struct Parsed {
    /// The bytes; `len` of them are the block, the rest is room for reading.
    bytes: Vec<u8>,
    len: usize,
    /// Bytes of the file before the block.
    offset: u64,
    /// One entry per line.
    lines: Vec<Line>,
    /// The coordinates of the [`Line::Vertex`] lines, in order.
    vertices: Vec<[f32; 3]>,
    /// Where the [`Line::Slow`] lines are in `bytes` (start, end without the `\n`), in order.
    slow: Vec<(usize, usize)>,
}

impl Parsed {
    fn text(&self) -> &[u8] {
        self.bytes.get(..self.len).unwrap_or_default()
    }

    /// Sorts the block's lines. Lines longer than `max_line` and lines with a NUL byte are
    /// left to the line-by-line code, which fails on them.
    fn parse(&mut self, max_line: usize) {
        self.lines.clear();
        self.vertices.clear();
        self.slow.clear();
        let text = self.bytes.get(..self.len).unwrap_or_default();
        let first_nul = memchr::memchr(0, text).unwrap_or(usize::MAX);
        let mut start = 0;
        while start < text.len() {
            let (mut kind, end) = classify(text, start, &mut self.vertices);
            if end - start > max_line || (start..end).contains(&first_nul) {
                if kind == Line::Vertex {
                    self.vertices.pop();
                }
                kind = Line::Slow;
            }
            if kind == Line::Slow {
                self.slow.push((start, end));
            }
            self.lines.push(kind);
            start = end + 1;
        }
    }
}

/// What the line of `text` starting at `start` is, and where it ends (its `\n`, or the end of
/// `text`); a vertex's position goes to `vertices`.
///
/// Reads the line once, front to back: the keyword, then for a vertex its numbers, then on to
/// the line's end. The same tokens as [`tokens`] splits the line into.
#[inline]
fn classify(text: &[u8], start: usize, vertices: &mut Vec<[f32; 3]>) -> (Line, usize) {
    let word_start = skip_space(text, start);
    let (kind, word_end) = match lower_case_keyword(text, word_start) {
        Some(found) => found,
        None => {
            let word_end = token_end(text, word_start);
            let word = text.get(word_start..word_end).unwrap_or_default();
            if word.is_empty() {
                return (Line::Blank, word_end);
            }
            (keyword(word), word_end)
        }
    };
    if kind != Line::Vertex {
        return (kind, line_end(text, word_end));
    }
    let mut p = [0f32; 3];
    let mut at = word_end;
    for c in &mut p {
        match number(text, &mut at).map(|v| v as f32) {
            Some(v) if v.is_finite() => *c = v,
            // Missing, not a number or not finite: the line-by-line code says which.
            _ => return (Line::Slow, line_end(text, at)),
        }
    }
    vertices.push(p);
    (Line::Vertex, line_end(text, at))
}

/// The keywords of a facet in lower case, as writers nearly always spell them: eight bytes
/// (zero-padded) and how many of them are the word.
const KEYWORDS: [([u8; 8], usize, Line); 5] = [
    (*b"vertex\0\0", 6, Line::Vertex),
    (*b"facet\0\0\0", 5, Line::Facet),
    (*b"outer\0\0\0", 5, Line::Outer),
    (*b"endloop\0", 7, Line::EndLoop),
    (*b"endfacet", 8, Line::EndFacet),
];

/// The lower-case keyword at `at` and where it ends, compared eight bytes at once; `None`
/// for anything else (or too near the end of `text`), which [`token_end`] and [`keyword`] take.
#[inline]
fn lower_case_keyword(text: &[u8], at: usize) -> Option<(Line, usize)> {
    let head = text.get(at..at + 8)?;
    let v = u64::from_le_bytes(<[u8; 8]>::try_from(head).ok()?);
    KEYWORDS.iter().find_map(|&(word, len, kind)| {
        let mask = u64::MAX >> (64 - 8 * len as u32);
        let end = at + len;
        (v & mask == u64::from_le_bytes(word) && text.get(end).is_none_or(u8::is_ascii_whitespace))
            .then_some((kind, end))
    })
}

/// The index of the first `\n` from `at` on, or the end of `text`.
#[inline]
fn line_end(text: &[u8], at: usize) -> usize {
    match text.get(at) {
        Some(b'\n') => at,
        // `\r\n`, usual after a vertex's last number.
        Some(b'\r') if text.get(at + 1) == Some(&b'\n') => at + 1,
        _ => {
            // The rest of a short line (`outer loop`, a facet's normal), eight bytes at a
            // time: cheaper than a call to `memchr` for a few dozen bytes.
            let mut from = at;
            for _ in 0..8 {
                let Some(chunk) = text
                    .get(from..from + 8)
                    .and_then(|c| <[u8; 8]>::try_from(c).ok())
                else {
                    break;
                };
                let v = u64::from_le_bytes(chunk) ^ 0x0A0A_0A0A_0A0A_0A0A;
                // The high bit of the first zero byte (a `\n`) is set; borrows only corrupt
                // the bytes above it.
                let zero = v.wrapping_sub(0x0101_0101_0101_0101) & !v & 0x8080_8080_8080_8080;
                if zero != 0 {
                    return from + (zero.trailing_zeros() / 8) as usize;
                }
                from += 8;
            }
            memchr::memchr(b'\n', text.get(from..).unwrap_or_default())
                .map_or(text.len(), |i| from + i)
        }
    }
}

/// The whitespace-separated token of the line from `*at` on, as a number; moves `*at` past it.
#[inline]
fn number(text: &[u8], at: &mut usize) -> Option<f64> {
    let start = skip_space(text, *at);
    let rest = text.get(start..)?;
    if let Some((value, len)) = decimal_prefix(rest)
        && rest.get(len).is_none_or(u8::is_ascii_whitespace)
    {
        *at = start + len;
        return Some(value);
    }
    let end = token_end(text, start);
    *at = end;
    let token = text.get(start..end).filter(|t| !t.is_empty())?;
    parse_f64(token)
}

/// The first index from `at` on that is not whitespace within a line (as [`tokens`] splits,
/// stopping at the line's `\n`), or the end.
#[inline]
fn skip_space(text: &[u8], mut at: usize) -> usize {
    // Between numbers: one space, then a digit, a sign or a point.
    if text.get(at) == Some(&b' ') && text.get(at + 1).is_some_and(|&b| b > b' ') {
        return at + 1;
    }
    // Indentation is runs of spaces: eight bytes at a time.
    while let Some(chunk) = text
        .get(at..at + 8)
        .and_then(|c| <[u8; 8]>::try_from(c).ok())
    {
        let other = u64::from_le_bytes(chunk) ^ 0x2020_2020_2020_2020;
        at += (other.trailing_zeros() / 8) as usize;
        if other != 0 {
            break;
        }
    }
    while text
        .get(at)
        .is_some_and(|&b| b != b'\n' && b.is_ascii_whitespace())
    {
        at += 1;
    }
    at
}

/// The first index from `at` on that is whitespace (a `\n` included), or the end.
#[inline]
fn token_end(text: &[u8], mut at: usize) -> usize {
    while text.get(at).is_some_and(|b| !b.is_ascii_whitespace()) {
        at += 1;
    }
    at
}

/// Cuts the input into blocks of whole lines.
struct Blocks<R> {
    reader: R,
    /// The partial line at the end of the last block, to start the next one.
    carry: Vec<u8>,
    /// Bytes handed out in blocks so far.
    offset: u64,
    eof: bool,
    max_line: usize,
    tuning: Tuning,
}

impl<R: BufRead> Blocks<R> {
    /// Fills `block` with the next lines; `false` at the end of the input.
    ///
    /// A block ends at its last `\n` (or at the end of the input). A line longer than a block
    /// is read whole if it is within `max_line`; otherwise the block ends after `max_line + 1`
    /// bytes of it, enough for the parser to see it is too long, and no more of it is read.
    fn next(&mut self, block: &mut Parsed) -> Result<bool, MeshError> {
        let size = self.tuning.block + self.tuning.carry_room;
        if block.bytes.len() < size {
            block.bytes.resize(size, 0);
        }
        let mut len = self.carry.len();
        let mut want = self.tuning.block.max(len + 1);
        if block.bytes.len() < want {
            block.bytes.resize(want, 0);
        }
        if let Some(head) = block.bytes.get_mut(..len) {
            head.copy_from_slice(&self.carry);
        }
        self.carry.clear();
        // How far the block holds no line end (searched already).
        let mut searched = 0;
        loop {
            while len < want && !self.eof {
                let room = block.bytes.get_mut(len..).unwrap_or_default();
                match self.reader.read(room) {
                    Ok(0) => self.eof = true,
                    Ok(n) => len += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e.into()),
                }
            }
            let text = block.bytes.get(..len).unwrap_or_default();
            if self.eof {
                break;
            }
            let fresh = text.get(searched..).unwrap_or_default();
            if let Some(last) = memchr::memrchr(b'\n', fresh) {
                let end = searched + last + 1;
                self.carry
                    .extend_from_slice(text.get(end..).unwrap_or_default());
                len = end;
                break;
            }
            if len > self.max_line {
                // One line, longer than allowed: the parser fails on it.
                break;
            }
            // One partial line so far: read on, up to the limit.
            searched = len;
            want = len
                .saturating_add(self.tuning.block)
                .min(self.max_line.saturating_add(1));
            if block.bytes.len() < want {
                block.bytes.resize(want, 0);
            }
        }
        block.len = len;
        block.offset = self.offset;
        self.offset += len as u64;
        Ok(len > 0)
    }
}

/// Where in the file's structure the reader is (also the reference reader's, in tests).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    /// Before `solid`, or after `endsolid`.
    Outside,
    InSolid,
    InFacet,
    InLoop,
}

/// Why a line could not be applied.
enum Fail {
    /// A keyword other than those allowed here, which are named.
    Expected(&'static str),
    Mesh(MeshError),
}

impl From<MeshError> for Fail {
    fn from(e: MeshError) -> Self {
        Fail::Mesh(e)
    }
}

/// The mesh being built, and where the reading is in the file's structure.
struct Builder<'l> {
    merger: VertexMerger,
    triangles: Vec<[u32; 3]>,
    fan: Fan,
    state: State,
    solids: u64,
    /// The number of the last line applied.
    line: u64,
    size: u64,
    limits: &'l MeshLimits,
    /// Whether the mesh was sized from the first block yet.
    sized: bool,
}

impl<'l> Builder<'l> {
    fn new(size: u64, limits: &'l MeshLimits) -> Self {
        Self {
            merger: VertexMerger::with_capacity(1024),
            triangles: Vec::new(),
            sized: false,
            fan: Fan::default(),
            state: State::Outside,
            solids: 0,
            line: 0,
            size,
            limits,
        }
    }

    /// Applies the lines of a parsed block, in order.
    fn apply(&mut self, block: &Parsed) -> Result<(), MeshError> {
        // Each further triangle needs a `vertex x y z` line; counted from the block's start,
        // so a little generous, which only lets a vector double a little further.
        let more = more_possible(
            Some(self.size.saturating_sub(block.offset)),
            MIN_TRIANGLE_BYTES,
        );
        let mut vertices = block.vertices.iter();
        let mut slow = block.slow.iter();
        for (i, &kind) in block.lines.iter().enumerate() {
            self.line += 1;
            if kind == Line::Vertex {
                // The table slots of the next vertices are read together, ahead of their
                // lookups (see `VertexMerger::warm`).
                let next = block.vertices.len() - vertices.len();
                if next.is_multiple_of(WARM) {
                    self.merger.warm(vertices.as_slice());
                }
            }
            let done = match kind {
                Line::Blank => Ok(()),
                Line::Slow => {
                    let &(start, end) = slow.next().ok_or_else(out_of_step)?;
                    let text = block.bytes.get(start..end).unwrap_or_default();
                    let consumed = block.offset + start as u64;
                    self.slow_line(text, consumed)?;
                    Ok(())
                }
                Line::Vertex => {
                    let p = *vertices.next().ok_or_else(out_of_step)?;
                    self.step(Line::Vertex, more, || Ok(p))
                }
                // Not a vertex: no position is read.
                kind => self.step(kind, more, || Err(out_of_step())),
            };
            match done {
                Ok(()) => {}
                Err(Fail::Mesh(e)) => return Err(e),
                Err(Fail::Expected(expected)) => {
                    // Only a keyword the parser knows gets here: find its line again.
                    let text = nth_line(block.text(), i);
                    let found = tokens(text).next().unwrap_or_default();
                    return Err(self.at(Reason::Expected {
                        expected,
                        found: excerpt(found),
                    }));
                }
            }
        }
        if !self.sized {
            self.sized = true;
            self.size_from(block.offset + block.len as u64);
        }
        Ok(())
    }

    /// Sizes the mesh for the triangles the whole file would hold at the density of its first
    /// `seen` bytes (capped at one a [`TYPICAL_TRIANGLE_BYTES`] and by the face limit), so
    /// the vertex table does not grow, re-inserting every vertex, as it fills. A first block
    /// without triangles (a long header line, say) sizes nothing.
    fn size_from(&mut self, seen: u64) {
        if seen == 0 {
            return;
        }
        let dense =
            u128::from(self.triangles.len() as u64) * u128::from(self.size) / u128::from(seen);
        let estimate = u64::try_from(dense)
            .unwrap_or(u64::MAX)
            .min(self.size / TYPICAL_TRIANGLE_BYTES)
            .min(self.limits.max_faces);
        let estimate = usize::try_from(estimate).unwrap_or(0);
        self.merger.reserve(estimate);
        // The vectors get an eighth more: capacity beyond what is filled costs no memory
        // pages, while outgrowing it late would copy the whole vector.
        let roomy = estimate.saturating_add(estimate / 8);
        self.merger
            .positions
            .reserve_exact((roomy / 2).saturating_sub(self.merger.positions.len()));
        self.triangles
            .reserve_exact(roomy.saturating_sub(self.triangles.len()));
    }

    /// Applies one line as reading line by line does; `consumed` is the bytes before it.
    fn slow_line(&mut self, text: &[u8], consumed: u64) -> Result<(), MeshError> {
        let max_line = self.limits.line_limit();
        if text.len() > max_line {
            return Err(self.at(Reason::LineTooLong { limit: max_line }));
        }
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        if memchr::memchr(0, text).is_some() {
            return Err(self.at(Reason::NotText));
        }
        let mut words = tokens(text);
        let Some(word) = words.next() else {
            return Ok(());
        };
        let more = more_possible(Some(self.size.saturating_sub(consumed)), MIN_TRIANGLE_BYTES);
        let line = self.line;
        let at = |reason| MeshError::malformed(FORMAT, Location::Line(line), reason);
        let done = self.step(keyword(word), more, || {
            Ok([
                coordinate(words.next(), "x coordinate", false, at)?,
                coordinate(words.next(), "y coordinate", false, at)?,
                coordinate(words.next(), "z coordinate", false, at)?,
            ])
        });
        match done {
            Ok(()) => Ok(()),
            Err(Fail::Mesh(e)) => Err(e),
            Err(Fail::Expected(expected)) => Err(self.at(Reason::Expected {
                expected,
                found: excerpt(word),
            })),
        }
    }

    /// Moves through the file's structure on a line of `kind`; a `vertex` takes its position
    /// from `position` (read only where a vertex is allowed).
    fn step(
        &mut self,
        kind: Line,
        more: Option<u64>,
        position: impl FnOnce() -> Result<[f32; 3], MeshError>,
    ) -> Result<(), Fail> {
        self.state = match (self.state, kind) {
            (_, Line::Blank) => self.state,
            (State::Outside, Line::Solid) => {
                self.solids += 1;
                State::InSolid
            }
            (State::Outside, _) => return Err(Fail::Expected("solid")),
            (State::InSolid, Line::Facet) => State::InFacet,
            (State::InSolid, Line::EndSolid) => State::Outside,
            (State::InSolid, _) => return Err(Fail::Expected("facet or endsolid")),
            (State::InFacet, Line::Outer) => State::InLoop,
            (State::InFacet, Line::EndFacet) => {
                if self.fan.corners < 3 {
                    return Err(self
                        .at(Reason::TooFewCorners {
                            corners: self.fan.corners,
                        })
                        .into());
                }
                self.fan.reset();
                State::InSolid
            }
            (State::InFacet, _) => return Err(Fail::Expected("outer loop or endfacet")),
            (State::InLoop, Line::Vertex) => {
                let p = position()?;
                let limits = self.limits;
                let index = self.merger.index(p, FORMAT)?;
                MeshLimits::check(
                    FORMAT,
                    "vertices",
                    self.merger.positions.len() as u64,
                    limits.max_vertices,
                )?;
                let bound = more.map_or(limits.max_faces, |more| {
                    (self.triangles.len() as u64 + more).min(limits.max_faces)
                });
                self.fan
                    .corner(index, &mut self.triangles, bound, limits, FORMAT)?;
                State::InLoop
            }
            (State::InLoop, Line::EndLoop) => State::InFacet,
            (State::InLoop, _) => return Err(Fail::Expected("vertex or endloop")),
        };
        Ok(())
    }

    fn at(&self, reason: Reason) -> MeshError {
        MeshError::malformed(FORMAT, Location::Line(self.line), reason)
    }

    /// The mesh, once every line is applied.
    fn finish(self) -> Result<Mesh, MeshError> {
        let truncated = |inside: &str| MeshError::Truncated {
            format: FORMAT,
            location: Location::Section(inside.into()),
        };
        match self.state {
            State::Outside if self.solids == 0 => Err(MeshError::NoFaces {
                format: FORMAT,
                detail: " (empty file)".into(),
            }),
            State::Outside if self.triangles.is_empty() => Err(MeshError::NoFaces {
                format: FORMAT,
                detail: " (no facets in any solid)".into(),
            }),
            State::Outside => Ok(Mesh {
                positions: self.merger.positions,
                triangles: self.triangles,
            }),
            State::InSolid => Err(truncated("a solid (no endsolid)")),
            State::InFacet => Err(truncated("a facet (no endfacet)")),
            State::InLoop => Err(truncated("a loop (no endloop)")),
        }
    }
}

/// A parsed block whose parts do not add up: a bug, reported rather than panicking.
fn out_of_step() -> MeshError {
    MeshError::from(std::io::Error::other(
        "ASCII STL reader: a parsed block is out of step with its lines",
    ))
}

/// The `i`-th (0-based) line of `text`, without its `\n`.
fn nth_line(text: &[u8], i: usize) -> &[u8] {
    text.split(|&b| b == b'\n').nth(i).unwrap_or_default()
}

/// Reads an ASCII STL of `size` bytes (after `solid` was seen at its start).
pub(super) fn read_ascii<R: BufRead>(
    reader: R,
    size: u64,
    limits: &MeshLimits,
) -> Result<Mesh, MeshError> {
    read_ascii_tuned(reader, size, limits, TUNING)
}

fn read_ascii_tuned<R: BufRead>(
    reader: R,
    size: u64,
    limits: &MeshLimits,
    tuning: Tuning,
) -> Result<Mesh, MeshError> {
    let max_line = limits.line_limit();
    let mut blocks = Blocks {
        reader,
        carry: Vec::new(),
        offset: 0,
        eof: false,
        max_line,
        tuning,
    };
    let mut builder = Builder::new(size, limits);
    let parallel = size >= tuning.parallel_from
        && std::thread::available_parallelism().is_ok_and(|n| n.get() > 1);
    if parallel {
        ordered(
            tuning.ahead,
            "ASCII STL parser",
            |block| blocks.next(block),
            |block| block.parse(max_line),
            |block| builder.apply(block),
        )?;
    } else {
        let mut block = Parsed::default();
        while blocks.next(&mut block)? {
            block.parse(max_line);
            builder.apply(&block)?;
        }
    }
    builder.finish()
}

#[cfg(test)]
mod tests {
    use std::io::{BufReader, Read};

    use super::*;
    use crate::mesh::stl::read_ascii_by_line;

    /// Hands out at most `step` bytes a read, so blocks end anywhere.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = buf.len().min(self.step).min(self.data.len());
            let (head, tail) = self.data.split_at(n);
            buf.get_mut(..n).unwrap_or_default().copy_from_slice(head);
            self.data = tail;
            Ok(n)
        }
    }

    /// A small deterministic generator (xorshift).
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }

        fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            items[self.below(items.len())]
        }
    }

    /// An ASCII STL in varied spellings: number forms, cases, line ends, blank lines, fans,
    /// repeated vertices, several solids.
    fn stl(rng: &mut Rng, facets: usize) -> Vec<u8> {
        let numbers = [
            "0",
            "-0",
            "1",
            "0.5",
            "-1.234568e-01",
            "1.000000E+01",
            "+2.5",
            ".5",
            "1.",
            "3e0",
            "1e-7",
            "12345678.9",
            "0.100000001",
            "7",
            "-7",
            "2",
            "1e22",
            "1e-30",
            "123456789012345678901234",
        ];
        let eol = ["\n", "\r\n"][rng.below(2)];
        let mut out = format!("solid test{eol}");
        for f in 0..facets {
            let kw = |rng: &mut Rng, k: &str| {
                if rng.below(8) == 0 {
                    k.to_uppercase()
                } else {
                    k.to_string()
                }
            };
            out += &format!("  {} normal 0 0 1{eol}", kw(rng, "facet"));
            if rng.below(10) == 0 {
                out += &format!("   \t {eol}");
            }
            out += &format!("    {} loop{eol}", kw(rng, "outer"));
            for _ in 0..3 + rng.below(3) * usize::from(rng.below(4) == 0) {
                let sep = ["", " ", "\t"][rng.below(3)];
                out += &format!(
                    "      {} {}{sep} {} {}{}{eol}",
                    kw(rng, "vertex"),
                    rng.pick(&numbers),
                    rng.pick(&numbers),
                    rng.pick(&numbers),
                    [" ", "", " extra"][rng.below(3)],
                );
            }
            out += &format!(
                "    {}{eol}  {}{eol}",
                kw(rng, "endloop"),
                kw(rng, "endfacet")
            );
            if f % 7 == 6 {
                out += &format!("endsolid test{eol}solid again{eol}");
            }
        }
        out += "endsolid test";
        if rng.below(2) == 0 {
            out += eol;
        }
        out.into_bytes()
    }

    /// `text` with a few random edits: bytes replaced, removed, inserted; cut short.
    fn mutate(rng: &mut Rng, mut text: Vec<u8>) -> Vec<u8> {
        let bytes = b" \n\r\t\x0c\x00x-+.eE0179vVsolidfacetendloop";
        for _ in 0..1 + rng.below(3) {
            if text.is_empty() {
                break;
            }
            let at = rng.below(text.len());
            let b = bytes[rng.below(bytes.len())];
            match rng.below(5) {
                0 => text[at] = b,
                1 => {
                    text.remove(at);
                }
                2 => text.insert(at, b),
                3 => text.truncate(at),
                _ => {
                    let line: Vec<u8> = text[at..]
                        .iter()
                        .take_while(|&&c| c != b'\n')
                        .copied()
                        .collect();
                    text.splice(at..at, line);
                }
            }
        }
        text
    }

    fn outcome(result: Result<Mesh, MeshError>) -> Result<Mesh, String> {
        result.map_err(|e| e.to_string())
    }

    /// The block reader gives exactly what the line-by-line reader gives, mesh or error,
    /// however the file falls into blocks and whichever thread parses a block.
    fn same_as_by_line(text: &[u8], limits: &MeshLimits, rng: &mut Rng) {
        let size = text.len() as u64;
        let expected = outcome(read_ascii_by_line(text, size, limits));
        let tunings = [
            TUNING,
            Tuning {
                block: 1 + rng.below(64),
                carry_room: rng.below(8),
                parallel_from: 0,
                ahead: Ahead {
                    in_flight: 1 + rng.below(4),
                    waiting: rng.below(3),
                },
            },
            Tuning {
                block: 1 + rng.below(300),
                carry_room: 16,
                parallel_from: u64::MAX,
                ahead: Ahead {
                    in_flight: 1,
                    waiting: 0,
                },
            },
        ];
        for tuning in tunings {
            let step = 1 + rng.below(100);
            let reader = BufReader::with_capacity(1 + rng.below(50), Trickle { data: text, step });
            let got = outcome(read_ascii_tuned(reader, size, limits, tuning));
            assert_eq!(
                got,
                expected,
                "{tuning:?}, reads of {step} bytes, input {:?}",
                String::from_utf8_lossy(text)
            );
        }
    }

    #[test]
    fn block_reader_agrees_with_line_by_line_reader() {
        let mut rng = Rng(0x5eed_1234_abcd_0001);
        let limit_sets = [
            MeshLimits::default(),
            MeshLimits::default().with_max_line_bytes(24),
            MeshLimits::default().with_max_vertices(7),
            MeshLimits::default().with_max_faces(5),
            MeshLimits::default().with_max_face_corners(4),
        ];
        for round in 0..600 {
            let facets = 1 + rng.below(if round % 50 == 0 { 400 } else { 12 });
            let valid = stl(&mut rng, facets);
            let limits = &limit_sets[rng.below(limit_sets.len())];
            same_as_by_line(&valid, limits, &mut rng);
            let broken = mutate(&mut rng, valid);
            same_as_by_line(&broken, limits, &mut rng);
        }
    }

    #[test]
    fn block_reader_agrees_on_crafted_inputs() {
        let mut rng = Rng(42);
        let long_line = format!("solid x\nfacet normal {}\n", "7".repeat(5000));
        let cases: [&[u8]; 12] = [
            b"",
            b"solid",
            b"solid x\n",
            b"solid x\nendsolid\n",
            b"solid x\nvertex 1 2 3\n",
            b"solid x\nfacet\nouter\nvertex 1 2\n",
            b"solid x\nfacet\nouter\nvertex 1 2 3\nvertex 1 2 3\nendloop\nendfacet\nendsolid\n",
            b"solid x\nfacet\nouter\nVERTEX 1 2 1e39\n",
            b"solid x\nfacet\nouter\nvertex 1 2 3\x00\n",
            b"solid x\nfacet\nOUTER LOOP\nvertex 1 2 3\nvertex 0 0 0\nvertex 4 5 6\nEndLoop\nendfacet\nfacet\n",
            b"solid x\n\n\n\r\n  \t\nfacet\nouter\nvertex\t1\t2\t3\r\nvertex 0 0 0\r\nvertex 1 1 1\rendloop\n",
            long_line.as_bytes(),
        ];
        let limits = [
            MeshLimits::default(),
            MeshLimits::default().with_max_line_bytes(100),
        ];
        for case in cases {
            for limits in &limits {
                for _ in 0..20 {
                    same_as_by_line(case, limits, &mut rng);
                }
            }
        }
    }
}

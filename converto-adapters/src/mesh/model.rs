//! The in-memory mesh, the formats and encodings, and the progress/cancellation monitor.

use std::fmt;
use std::io::{self, Read};

use converto_core::Format;
use tokio_util::sync::CancellationToken;

use super::error::{CancelledMarker, MeshError};

/// An indexed triangle mesh: positions and triangles over them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Mesh {
    /// Vertex positions (x, y, z), all finite.
    pub positions: Vec<[f32; 3]>,
    /// Triangles as indices into `positions`, counter-clockwise as read.
    pub triangles: Vec<[u32; 3]>,
}

impl Mesh {
    /// Checks the invariants the writers rely on: at least one triangle, every index in range,
    /// every coordinate finite.
    pub fn validate(&self, format: MeshFormat) -> Result<(), MeshError> {
        use super::error::{Location, Reason};
        if self.triangles.is_empty() {
            return Err(MeshError::NoFaces {
                format,
                detail: String::new(),
            });
        }
        let vertices = self.positions.len() as u64;
        for (i, t) in self.triangles.iter().enumerate() {
            for &index in t {
                if u64::from(index) >= vertices {
                    return Err(MeshError::malformed(
                        format,
                        Location::Record {
                            element: "triangle".into(),
                            index: i as u64,
                        },
                        Reason::IndexOutOfRange {
                            index: i64::from(index),
                            vertices,
                        },
                    ));
                }
            }
        }
        for (i, p) in self.positions.iter().enumerate() {
            if let Some(v) = p.iter().find(|v| !v.is_finite()) {
                return Err(MeshError::malformed(
                    format,
                    Location::Record {
                        element: "vertex".into(),
                        index: i as u64,
                    },
                    Reason::NonFinite {
                        value: v.to_string(),
                    },
                ));
            }
        }
        Ok(())
    }
}

/// The mesh file formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MeshFormat {
    /// STL, ASCII or binary.
    Stl,
    /// Wavefront OBJ.
    Obj,
    /// PLY (Stanford polygon format): ASCII, binary little or big endian.
    Ply,
    /// glTF 2.0 binary (`.glb`): one file holding the JSON scene and its binary buffer.
    Glb,
}

impl MeshFormat {
    /// All of them.
    pub const ALL: [MeshFormat; 4] = [
        MeshFormat::Stl,
        MeshFormat::Obj,
        MeshFormat::Ply,
        MeshFormat::Glb,
    ];

    /// The mesh format a converto [`Format`] names, if any.
    pub fn from_format(format: &Format) -> Option<Self> {
        match format.as_str() {
            "stl" => Some(MeshFormat::Stl),
            "obj" => Some(MeshFormat::Obj),
            "ply" => Some(MeshFormat::Ply),
            "glb" => Some(MeshFormat::Glb),
            _ => None,
        }
    }

    /// The file extension (and converto format identifier).
    pub fn extension(self) -> &'static str {
        match self {
            MeshFormat::Stl => "stl",
            MeshFormat::Obj => "obj",
            MeshFormat::Ply => "ply",
            MeshFormat::Glb => "glb",
        }
    }

    /// The converto [`Format`].
    pub fn format(self) -> Format {
        Format::new(self.extension())
            .unwrap_or_else(|_| unreachable!("stl, obj, ply and glb are valid"))
    }
}

impl fmt::Display for MeshFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MeshFormat::Stl => "STL",
            MeshFormat::Obj => "OBJ",
            MeshFormat::Ply => "PLY",
            MeshFormat::Glb => "GLB",
        })
    }
}

/// How STL and PLY are written (OBJ is always text, GLB always binary).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// Binary (little endian): compact and fast. The default.
    #[default]
    Binary,
    /// Human-readable text.
    Ascii,
}

/// Which half of a conversion a progress report is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Parsing the input (percent of its bytes read).
    Reading,
    /// Writing the output (percent of the triangles written).
    Writing,
    /// Rendering the preview image (percent of the triangles drawn).
    Rendering,
}

impl Stage {
    /// A short label for progress reports.
    pub fn label(self) -> &'static str {
        match self {
            Stage::Reading => "reading mesh",
            Stage::Writing => "writing mesh",
            Stage::Rendering => "rendering preview",
        }
    }
}

type ReportFn<'a> = Box<dyn FnMut(Stage, u8) + Send + 'a>;

/// Watches a long read or write: receives progress in whole percent (reported only when it
/// changes) and stops the work with [`MeshError::Cancelled`] once its token is cancelled.
#[derive(Default)]
pub struct Monitor<'a> {
    cancel: Option<CancellationToken>,
    report: Option<ReportFn<'a>>,
    last: Option<(Stage, u8)>,
}

impl fmt::Debug for Monitor<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Monitor")
            .field("cancel", &self.cancel)
            .field("last", &self.last)
            .finish_non_exhaustive()
    }
}

impl<'a> Monitor<'a> {
    /// A monitor that reports nowhere and never cancels.
    pub fn new() -> Self {
        Self::default()
    }

    /// Stops the work once `token` is cancelled.
    pub fn with_cancel(mut self, token: CancellationToken) -> Self {
        self.cancel = Some(token);
        self
    }

    /// Calls `report(stage, percent)` whenever the percentage changes.
    pub fn on_progress(mut self, report: impl FnMut(Stage, u8) + Send + 'a) -> Self {
        self.report = Some(Box::new(report));
        self
    }

    /// Reports `done` of `total` and checks for cancellation.
    pub(crate) fn update(&mut self, stage: Stage, done: u64, total: u64) -> Result<(), MeshError> {
        if self
            .cancel
            .as_ref()
            .is_some_and(CancellationToken::is_cancelled)
        {
            return Err(MeshError::Cancelled);
        }
        let percent = done
            .min(total)
            .saturating_mul(100)
            .checked_div(total)
            .map_or(100, |p| p as u8);
        if self.last != Some((stage, percent)) {
            self.last = Some((stage, percent));
            if let Some(report) = self.report.as_mut() {
                report(stage, percent);
            }
        }
        Ok(())
    }
}

/// A reader that reports the bytes read to a monitor on every read (the `BufReader` above it
/// reads in large blocks) and fails with a cancellation marker once cancelled.
pub(crate) struct ProgressReader<'m, 'a, R> {
    pub(crate) inner: R,
    pub(crate) done: u64,
    pub(crate) total: u64,
    pub(crate) monitor: &'m mut Monitor<'a>,
}

impl<R: Read> Read for ProgressReader<'_, '_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.done = self.done.saturating_add(n as u64);
        match self.monitor.update(Stage::Reading, self.done, self.total) {
            Ok(()) => Ok(n),
            Err(_) => Err(io::Error::other(CancelledMarker)),
        }
    }
}

/// Slots in [`VertexMerger`]'s cache of recent vertices (2^12 slots of 16 bytes: 64 KiB, fits in
/// L2; 2^14 measured no faster).
const CACHE_BITS: u32 = 12;
/// The most points [`VertexMerger::warm`] takes at once, and the group size of
/// [`VertexMerger::index_all`].
pub(crate) const WARM: usize = 256;
/// A NaN bit pattern: coordinates are checked finite before merging, so it never matches.
const EMPTY_KEY: [u32; 3] = [0x7FC0_0000; 3];
/// An empty slot of the index table.
const EMPTY_SLOT: u64 = u64::MAX;

/// Builds an indexed mesh from triangle soup, merging vertices with identical bit patterns.
///
/// Merging is memory-bound, so the table is compact: open addressing over slots holding a
/// vertex index and 32 bits of its hash (8 bytes a slot, at most half full; the hash bits spare
/// most reads of `positions` on collisions, which would each miss the cache), with a
/// per-process random hash seed (foldhash) so crafted inputs cannot force collisions. Triangles
/// sharing a vertex are usually close together in a file, so a small direct-mapped cache of
/// recent vertices answers most lookups before the table is touched; it changes no result.
///
/// A table slot is a random place in megabytes: looked up one after the other, each lookup
/// waits for its cache miss in turn. [`VertexMerger::index_all`] (and [`VertexMerger::warm`],
/// for callers that look vertices up one at a time) first reads the slots of a group of
/// vertices in one tight loop whose loads nothing depends on, so their misses overlap.
pub(crate) struct VertexMerger {
    hasher: foldhash::fast::RandomState,
    slots: Vec<u64>,
    recent: Vec<([u32; 3], u32)>,
    pub(crate) positions: Vec<[f32; 3]>,
    /// [`VertexMerger::index_all`]'s points not in `recent`: where their index goes, their hash.
    missed: Vec<(usize, u64)>,
}

fn bits(p: [f32; 3]) -> [u32; 3] {
    [p[0].to_bits(), p[1].to_bits(), p[2].to_bits()]
}

/// The slot of `key` in the cache of recent vertices.
///
/// The cache needs no protection from crafted collisions (a miss only costs a table lookup),
/// so a plain multiplicative hash picks its slot, and most lookups end there without hashing
/// the key properly.
#[inline]
fn recent_slot(key: [u32; 3]) -> usize {
    let mixed = (u64::from(key[0]) | u64::from(key[1]) << 32).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ u64::from(key[2]).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    (mixed.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - CACHE_BITS)) as usize
}

impl VertexMerger {
    /// Room for about `triangles` triangles (already capped by the input size).
    pub(crate) fn with_capacity(triangles: usize) -> Self {
        // Closed meshes have about half as many vertices as triangles.
        let vertices = triangles / 2 + 3;
        Self {
            hasher: foldhash::fast::RandomState::default(),
            slots: vec![EMPTY_SLOT; (vertices * 2).next_power_of_two()],
            recent: vec![(EMPTY_KEY, 0); 1 << CACHE_BITS],
            positions: Vec::with_capacity(vertices),
            missed: Vec::with_capacity(WARM),
        }
    }

    /// The table's (seeded) hash of `key`.
    ///
    /// The key is hashed as one 96-bit number (a `u128`, as foldhash hashes one: a single
    /// folded multiply), not as 12 bytes: those are read back from memory in two overlapping
    /// 8-byte loads just after being stored as three 4-byte values, a store-forwarding stall
    /// that cost as much as the rest of the hash.
    #[inline]
    fn hash(&self, key: [u32; 3]) -> u64 {
        let wide = u128::from(key[0]) | u128::from(key[1]) << 32 | u128::from(key[2]) << 64;
        std::hash::BuildHasher::hash_one(&self.hasher, wide)
    }

    /// The index `recent` caches for `key`, if it does.
    #[inline]
    fn cached(&self, key: [u32; 3]) -> Option<u32> {
        match self.recent.get(recent_slot(key)) {
            Some(&(cached, index)) if cached == key => Some(index),
            _ => None,
        }
    }

    /// Reads the table slots the lookups of `points` (at most [`WARM`]) will start at, for
    /// those the cache of recent vertices does not hold, so that their lookups, next, find
    /// them in the processor's cache. Changes no result.
    pub(crate) fn warm(&mut self, points: &[[f32; 3]]) {
        let mut missed = std::mem::take(&mut self.missed);
        missed.clear();
        for &p in points.iter().take(WARM) {
            let key = bits(p);
            if self.cached(key).is_none() {
                missed.push((0, self.hash(key)));
            }
        }
        self.touch(&missed);
        self.missed = missed;
    }

    /// Reads the table slots of `missed`'s hashes, all in one loop whose loads nothing depends
    /// on.
    #[inline]
    fn touch(&self, missed: &[(usize, u64)]) {
        let mask = self.slots.len() - 1;
        let mut read = 0u64;
        for &(_, hash) in missed {
            read ^= self.slots.get(hash as usize & mask).copied().unwrap_or(0);
        }
        std::hint::black_box(read);
    }

    /// The indices of `points` (finite), in order, appended to `indices`, adding the new ones:
    /// the same as [`VertexMerger::index`] on each in turn, faster. On an error, the points
    /// before the one that failed are merged (and what `indices` holds is unspecified).
    pub(crate) fn index_all(
        &mut self,
        points: &[[f32; 3]],
        indices: &mut Vec<u32>,
        format: MeshFormat,
    ) -> Result<(), MeshError> {
        // Reused from call to call: nothing to clear or allocate per group.
        let mut missed = std::mem::take(&mut self.missed);
        let mut result = Ok(());
        for group in points.chunks(WARM) {
            // The cache's answers (final: a vertex's index never changes), and the points it
            // does not hold with their hashes, whose slots are then read together.
            missed.clear();
            for &p in group {
                let key = bits(p);
                if let Some(index) = self.cached(key) {
                    indices.push(index);
                } else {
                    missed.push((indices.len(), self.hash(key)));
                    indices.push(0);
                }
            }
            self.touch(&missed);
            // The others looked up in order: new vertices are numbered as one by one.
            let first = indices.len() - group.len();
            for &(at, hash) in &missed {
                let p = group.get(at - first).copied().unwrap_or_default();
                match self.lookup(p, hash, format) {
                    Ok(index) => {
                        if let Some(slot) = indices.get_mut(at) {
                            *slot = index;
                        }
                    }
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
            }
            if result.is_err() {
                break;
            }
        }
        self.missed = missed;
        result
    }

    /// The index of `p` (finite), adding it if new.
    pub(crate) fn index(&mut self, p: [f32; 3], format: MeshFormat) -> Result<u32, MeshError> {
        let key = bits(p);
        if let Some(index) = self.cached(key) {
            return Ok(index);
        }
        self.lookup(p, self.hash(key), format)
    }

    /// The index of `p`, whose hash is `hash`, from the table (adding it if new); cached.
    #[inline]
    fn lookup(&mut self, p: [f32; 3], hash: u64, format: MeshFormat) -> Result<u32, MeshError> {
        let key = bits(p);
        let mask = self.slots.len() - 1;
        let mut slot = hash as usize & mask;
        let tag = hash >> 32;
        let index = loop {
            match self.slots.get(slot).copied() {
                Some(EMPTY_SLOT) | None => break self.insert(p, slot, tag, format)?,
                Some(entry) => {
                    let index = entry as u32;
                    if entry >> 32 == tag
                        && self.positions.get(index as usize).map(|q| bits(*q)) == Some(key)
                    {
                        break index;
                    }
                }
            }
            slot = (slot + 1) & mask;
        };
        if let Some(entry) = self.recent.get_mut(recent_slot(key)) {
            *entry = (key, index);
        }
        Ok(index)
    }

    fn insert(
        &mut self,
        p: [f32; 3],
        slot: usize,
        tag: u64,
        format: MeshFormat,
    ) -> Result<u32, MeshError> {
        let index = u32::try_from(self.positions.len())
            .ok()
            .filter(|&i| i != u32::MAX)
            .ok_or(MeshError::TooLarge {
                format,
                what: "vertices",
                limit: u64::from(u32::MAX - 1),
            })?;
        if let Some(s) = self.slots.get_mut(slot) {
            *s = tag << 32 | u64::from(index);
        }
        self.positions.push(p);
        if self.positions.len() * 2 > self.slots.len() {
            self.resize_table(self.slots.len() * 2);
        }
        Ok(index)
    }

    /// Makes room for about `triangles` triangles in all (as [`VertexMerger::with_capacity`]
    /// does), once an estimate is known: growing the table early, while it is small, spares
    /// re-inserting every vertex at each doubling later.
    pub(crate) fn reserve(&mut self, triangles: usize) {
        let vertices = triangles / 2 + 3;
        let slots = vertices.saturating_mul(2).next_power_of_two();
        if slots > self.slots.len() {
            self.resize_table(slots);
        }
        self.positions
            .reserve(vertices.saturating_sub(self.positions.len()));
    }

    /// Re-inserts every vertex into a table of `len` slots (a power of two, more than twice
    /// the vertices).
    fn resize_table(&mut self, len: usize) {
        let mut slots = vec![EMPTY_SLOT; len];
        let mask = slots.len() - 1;
        for (index, p) in self.positions.iter().enumerate() {
            let hash = self.hash(bits(*p));
            let mut slot = hash as usize & mask;
            while slots.get(slot).is_some_and(|&s| s != EMPTY_SLOT) {
                slot = (slot + 1) & mask;
            }
            if let Some(s) = slots.get_mut(slot) {
                *s = (hash >> 32) << 32 | index as u64;
            }
        }
        self.slots = slots;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Points with many repeats, near and far apart: a small pool drawn from at random, runs
    /// of one point, and new points now and then.
    fn points(n: usize, seed: u64) -> Vec<[f32; 3]> {
        let mut state = seed;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let r = next();
            let p = match r % 4 {
                // One of a few hundred shared points.
                0 | 1 => [(r >> 8) as f32 % 300.0, 1.0, -0.0],
                // The point before again.
                2 => out.last().copied().unwrap_or([0.0; 3]),
                // A point seen once.
                _ => [i as f32, (r >> 40) as f32, 0.5],
            };
            out.push(p);
        }
        out
    }

    /// Merging a group at a time gives the indices and positions of merging one at a time,
    /// whatever the group boundaries, and while the table grows in the middle of a group.
    #[test]
    fn index_all_agrees_with_index_one_by_one() {
        for (n, seed) in [(0, 1), (1, 2), (WARM - 1, 3), (WARM + 1, 4), (20_000, 5)] {
            let points = points(n, seed);
            let mut one = VertexMerger::with_capacity(8);
            let expected: Vec<u32> = points
                .iter()
                .map(|&p| one.index(p, MeshFormat::Stl).expect("in range"))
                .collect();
            for split in [1, 7, WARM, 1000] {
                // A small table, so that it grows while groups are looked up.
                let mut all = VertexMerger::with_capacity(8);
                let mut indices = Vec::new();
                for part in points.chunks(split) {
                    all.index_all(part, &mut indices, MeshFormat::Stl)
                        .expect("in range");
                }
                assert_eq!(indices, expected, "{n} points in parts of {split}");
                assert_eq!(
                    all.positions, one.positions,
                    "{n} points in parts of {split}"
                );
            }
        }
    }

    /// Warming changes nothing.
    #[test]
    fn warm_changes_no_result() {
        let points = points(5_000, 9);
        let mut plain = VertexMerger::with_capacity(16);
        let mut warmed = VertexMerger::with_capacity(16);
        for (i, &p) in points.iter().enumerate() {
            if i % 100 == 0 {
                warmed.warm(points.get(i..).unwrap_or_default());
            }
            assert_eq!(
                warmed.index(p, MeshFormat::Stl).expect("in range"),
                plain.index(p, MeshFormat::Stl).expect("in range")
            );
        }
        assert_eq!(warmed.positions, plain.positions);
    }
}

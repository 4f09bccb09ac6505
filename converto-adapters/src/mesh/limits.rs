//! What one mesh conversion may cost, and the growth rule that keeps buffers within it.

use super::error::MeshError;
use super::model::MeshFormat;

/// Limits of a mesh conversion (see [`MeshConverter::with_limits`](super::MeshConverter::with_limits)).
///
/// Every limit is checked before the memory it guards is allocated: counts declared by a file
/// header (binary STL triangle count, PLY element and list counts) are compared with the
/// limits *and* with what the file's size could hold before anything is sized by them. A
/// conversion over a limit fails with `ConvertError::TooLarge` (code `input_too_large`).
///
/// Deserialises from a table with any subset of the fields (the rest keep their defaults):
///
/// ```
/// # use converto_adapters::mesh::MeshLimits;
/// let limits: MeshLimits = serde_json::from_str(r#"{"max_faces": 1000000}"#).unwrap();
/// assert_eq!(limits.max_faces, 1_000_000);
/// assert_eq!(limits.max_face_corners, MeshLimits::default().max_face_corners);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct MeshLimits {
    /// The most triangles a mesh may have after polygons are triangulated. Default 20 million
    /// (about 240 MB of triangles in memory).
    pub max_faces: u64,
    /// The most vertices a mesh may have. Default 20 million.
    pub max_vertices: u64,
    /// The most corners one polygon (an OBJ `f` line, a PLY face list, an ASCII STL loop) may
    /// have. Default 65 535.
    pub max_face_corners: u64,
    /// The longest text line (OBJ, ASCII STL, ASCII PLY and PLY headers), in bytes. A longer
    /// line fails the conversion instead of being buffered. Default 4 MiB.
    pub max_line_bytes: u64,
    /// The most bytes the written output may have, computed from the mesh before writing
    /// (exact for binary formats, an upper bound for text). Default 4 GiB.
    pub max_output_bytes: u64,
}

impl Default for MeshLimits {
    fn default() -> Self {
        Self {
            max_faces: 20_000_000,
            max_vertices: 20_000_000,
            max_face_corners: 65_535,
            max_line_bytes: 4 << 20,
            max_output_bytes: 4 << 30,
        }
    }
}

impl MeshLimits {
    /// Sets [`MeshLimits::max_faces`].
    pub fn with_max_faces(mut self, max_faces: u64) -> Self {
        self.max_faces = max_faces;
        self
    }

    /// Sets [`MeshLimits::max_vertices`].
    pub fn with_max_vertices(mut self, max_vertices: u64) -> Self {
        self.max_vertices = max_vertices;
        self
    }

    /// Sets [`MeshLimits::max_face_corners`].
    pub fn with_max_face_corners(mut self, max_face_corners: u64) -> Self {
        self.max_face_corners = max_face_corners;
        self
    }

    /// Sets [`MeshLimits::max_line_bytes`].
    pub fn with_max_line_bytes(mut self, max_line_bytes: u64) -> Self {
        self.max_line_bytes = max_line_bytes;
        self
    }

    /// Sets [`MeshLimits::max_output_bytes`].
    pub fn with_max_output_bytes(mut self, max_output_bytes: u64) -> Self {
        self.max_output_bytes = max_output_bytes;
        self
    }

    /// The line limit as a `usize`.
    pub(crate) fn line_limit(&self) -> usize {
        usize::try_from(self.max_line_bytes).unwrap_or(usize::MAX)
    }

    /// Fails when `count` of `what` is over `limit`.
    pub(crate) fn check(
        format: MeshFormat,
        what: &'static str,
        count: u64,
        limit: u64,
    ) -> Result<(), MeshError> {
        if count > limit {
            return Err(MeshError::LimitExceeded {
                format,
                what,
                count,
                limit,
            });
        }
        Ok(())
    }

    /// Fails when a polygon has more than [`MeshLimits::max_face_corners`] corners.
    pub(crate) fn check_corners(&self, format: MeshFormat, corners: u64) -> Result<(), MeshError> {
        Self::check(
            format,
            "corners in one face",
            corners,
            self.max_face_corners,
        )
    }
}

/// The most elements that `remaining` more input bytes can still add when each needs at least
/// `min_bytes` of them; `None` when the input size is unknown.
pub(crate) fn more_possible(remaining: Option<u64>, min_bytes: u64) -> Option<u64> {
    remaining.map(|r| r / min_bytes.max(1) + 1)
}

/// Pushes `item`, growing `v` (when full) by doubling but never past `bound`: an upper bound on
/// the final length from the limits and the input bytes left. A vector that would double past
/// what the file can still hold is sized exactly instead, so its capacity stays a fixed
/// multiple of the input. A wrong (too small) bound only costs speed, never correctness.
pub(crate) fn push_bounded<T>(v: &mut Vec<T>, item: T, bound: u64) {
    if v.len() == v.capacity() {
        let len = v.len();
        let doubled = len.saturating_mul(2).max(1024);
        let bound = usize::try_from(bound).unwrap_or(usize::MAX);
        let target = if bound > len {
            doubled.min(bound)
        } else {
            doubled
        };
        v.reserve_exact(target - len);
    }
    v.push(item);
}

/// Adds triangles fanned from a polygon's corners as they are read (`first`, then each next
/// corner closes a triangle with the previous one), so no polygon is ever buffered.
#[derive(Debug, Default)]
pub(crate) struct Fan {
    first: Option<u32>,
    previous: Option<u32>,
    /// Corners seen so far.
    pub(crate) corners: u64,
}

impl Fan {
    /// Starts a new polygon.
    pub(crate) fn reset(&mut self) {
        *self = Fan::default();
    }

    /// Adds a corner; pushes a triangle from the third corner on. Fails past the corner or
    /// face limit, before growing anything.
    pub(crate) fn corner(
        &mut self,
        index: u32,
        triangles: &mut Vec<[u32; 3]>,
        bound: u64,
        limits: &MeshLimits,
        format: MeshFormat,
    ) -> Result<(), MeshError> {
        self.corners += 1;
        limits.check_corners(format, self.corners)?;
        match (self.first, self.previous) {
            (None, _) => self.first = Some(index),
            (Some(_), None) => self.previous = Some(index),
            (Some(first), Some(previous)) => {
                MeshLimits::check(
                    format,
                    "triangles",
                    triangles.len() as u64 + 1,
                    limits.max_faces,
                )?;
                push_bounded(triangles, [first, previous, index], bound);
                self.previous = Some(index);
            }
        }
        Ok(())
    }
}

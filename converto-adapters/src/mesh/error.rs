//! Typed errors of the mesh readers and writers.

use std::fmt;

use super::model::MeshFormat;

/// Where in an input file a problem was found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Location {
    /// A 1-based line of a text file (or of a PLY header).
    Line(u64),
    /// The n-th (0-based) record of an element: a binary STL triangle, a PLY vertex or face.
    Record {
        /// The element (`triangle`, `vertex`, `face`, ...).
        element: String,
        /// Its 0-based index.
        index: u64,
    },
    /// A part of the file, described.
    Section(String),
    /// The file as a whole.
    File,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Line(n) => write!(f, "line {n}"),
            Location::Record { element, index } => write!(f, "{element} #{index}"),
            Location::Section(what) => f.write_str(what),
            Location::File => f.write_str("file"),
        }
    }
}

/// Why a piece of a mesh file is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Reason {
    /// A keyword other than the one the format requires here.
    #[error("expected {expected}, found {found:?}")]
    Expected {
        /// What the format requires.
        expected: &'static str,
        /// What the file has (cut to 40 characters).
        found: String,
    },
    /// A token that should be a number is not one.
    #[error("{what} {token:?} is not a number")]
    BadNumber {
        /// What the number is (`x coordinate`, `face index`, ...).
        what: &'static str,
        /// The token (cut to 40 characters).
        token: String,
    },
    /// A value the format requires is missing.
    #[error("missing {0}")]
    Missing(&'static str),
    /// A text format contains binary data (a NUL byte): not a text file, or UTF-16.
    #[error("binary data (NUL byte) in a text file; UTF-16 and binary files are not supported")]
    NotText,
    /// A text line exceeds the length limit.
    #[error("line longer than {limit} bytes")]
    LineTooLong {
        /// The limit.
        limit: usize,
    },
    /// A face with fewer than three corners.
    #[error("face with {corners} vertices (at least 3 needed)")]
    TooFewCorners {
        /// How many it has.
        corners: u64,
    },
    /// An OBJ index of 0 (OBJ indices are 1-based or negative).
    #[error("vertex index 0 (OBJ indices start at 1)")]
    ZeroIndex,
    /// A coordinate that is NaN or infinite.
    #[error("coordinate {value} is not finite")]
    NonFinite {
        /// The value as read.
        value: String,
    },
    /// A vertex index outside the vertex list.
    #[error("vertex index {index} is out of range: the file has {vertices} vertices")]
    IndexOutOfRange {
        /// The index as written in the file.
        index: i64,
        /// The number of vertices.
        vertices: u64,
    },
    /// A PLY header construct this reader does not know.
    #[error("unsupported {what} {found:?}")]
    Unsupported {
        /// What kind of construct (`format`, `property type`, ...).
        what: &'static str,
        /// The construct (cut to 40 characters).
        found: String,
    },
    /// Two PLY elements or properties with the same role.
    #[error("duplicate {0}")]
    Duplicate(String),
}

/// An error reading or writing a mesh.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MeshError {
    /// The file is malformed at a known place.
    #[error("{format} {location}: {reason}")]
    Malformed {
        /// The format being read.
        format: MeshFormat,
        /// Where.
        location: Location,
        /// Why.
        reason: Reason,
    },
    /// The file ends before the data it declares.
    #[error("{format}: file is truncated: it ends inside {location}")]
    Truncated {
        /// The format being read.
        format: MeshFormat,
        /// What was being read when the data ran out.
        location: Location,
    },
    /// A declared count needs more bytes than the file has.
    #[error(
        "{format}: {what} declares {declared} records needing at least {needed} bytes, but only {available} bytes remain"
    )]
    CountExceedsData {
        /// The format being read.
        format: MeshFormat,
        /// What declares the count.
        what: String,
        /// The declared count.
        declared: u64,
        /// The bytes the count needs at least.
        needed: u64,
        /// The bytes there are.
        available: u64,
    },
    /// The file holds no triangles (after triangulating polygons).
    #[error("{format}: the file contains no faces{detail}")]
    NoFaces {
        /// The format being read.
        format: MeshFormat,
        /// More about what the file has instead (may be empty).
        detail: String,
    },
    /// The mesh exceeds what the formats can index (2^32 - 1 vertices or triangles).
    #[error("{format}: more than {limit} {what}")]
    TooLarge {
        /// The format.
        format: MeshFormat,
        /// Vertices or triangles.
        what: &'static str,
        /// The limit.
        limit: u64,
    },
    /// The mesh exceeds a configured [`MeshLimits`](super::MeshLimits) limit.
    #[error("{format}: {what}: {count}, above the limit of {limit}")]
    LimitExceeded {
        /// The format being read or written.
        format: MeshFormat,
        /// What was counted (`triangles`, `vertices`, `corners in one face`, `output bytes`).
        what: &'static str,
        /// How many there are (at least; for output bytes, an upper bound of the text size).
        count: u64,
        /// The limit.
        limit: u64,
    },
    /// The preview could not be rendered or encoded (not the input's fault).
    #[error("preview: {0}")]
    Preview(String),
    /// A feature of the file this converter does not support (a glTF extension it requires,
    /// compressed or quantised geometry, external buffers, ...).
    #[error("{format}: unsupported: {what}")]
    Unsupported {
        /// The format being read.
        format: MeshFormat,
        /// What is not supported, and where.
        what: String,
    },
    /// Cancelled through the monitor's token.
    #[error("cancelled")]
    Cancelled,
    /// Reading or writing failed.
    #[error("I/O: {0}")]
    Io(#[source] std::io::Error),
}

impl MeshError {
    /// Whether the error is about the input's content (as opposed to I/O or cancellation).
    pub fn is_invalid_input(&self) -> bool {
        !matches!(
            self,
            MeshError::Cancelled
                | MeshError::Io(_)
                | MeshError::LimitExceeded { .. }
                | MeshError::Preview(_)
        )
    }

    pub(crate) fn malformed(format: MeshFormat, location: Location, reason: Reason) -> Self {
        MeshError::Malformed {
            format,
            location,
            reason,
        }
    }
}

/// Marks an I/O error raised by the progress reader when the monitor says stop.
#[derive(Debug, thiserror::Error)]
#[error("cancelled")]
pub(crate) struct CancelledMarker;

impl From<std::io::Error> for MeshError {
    fn from(e: std::io::Error) -> Self {
        if e.get_ref()
            .is_some_and(|inner| inner.is::<CancelledMarker>())
        {
            MeshError::Cancelled
        } else {
            MeshError::Io(e)
        }
    }
}

/// A token for an error message: lossily decoded and cut to 40 characters.
pub(crate) fn excerpt(token: &[u8]) -> String {
    String::from_utf8_lossy(token).chars().take(40).collect()
}

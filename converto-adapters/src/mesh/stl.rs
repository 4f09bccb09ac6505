//! STL: binary and ASCII, read and written.

use std::io::{BufRead, Read, Write};

use super::error::{Location, MeshError, Reason};
use super::limits::MeshLimits;
use super::model::{Mesh, MeshFormat, Monitor, VertexMerger, WARM};
use super::text::UTF8_BOM;
use super::write::{Chunked, normal, push_f32};
#[cfg(test)]
use super::{
    error::excerpt,
    limits::{Fan, more_possible},
    text::{LineReader, coordinate, tokens},
};

const FORMAT: MeshFormat = MeshFormat::Stl;
const HEADER: usize = 80;
const RECORD: usize = 50;
/// Triangles decoded per read of a binary STL (400 KB: more than the `BufReader`'s buffer, so
/// reads go straight into ours, without a second copy).
const BATCH: usize = 8192;

/// Reads an STL file of `size` bytes, ASCII or binary, told apart by content.
///
/// A file is binary when its 84-byte header is followed by exactly the 50-byte records its
/// triangle count declares, or when it does not start with `solid`. A binary STL whose header
/// happens to start with `solid` is therefore still read as binary; a file that starts with
/// `solid` and has any other size is read as ASCII. Vertices with identical bit patterns are
/// merged. Uses the default [`MeshLimits`].
pub fn read_stl<R: BufRead>(reader: R, size: u64) -> Result<Mesh, MeshError> {
    read_stl_limited(reader, size, &MeshLimits::default())
}

/// [`read_stl`] within `limits`. A binary STL's declared triangle count is checked against the
/// limits and the file size before anything is sized by it; an ASCII loop's corners are
/// fan-triangulated as they are read, never buffered.
pub fn read_stl_limited<R: BufRead>(
    mut reader: R,
    size: u64,
    limits: &MeshLimits,
) -> Result<Mesh, MeshError> {
    // Peek (without consuming) at the start of the file to tell the encodings apart.
    let head = reader.fill_buf()?;
    let declared = head
        .get(HEADER..HEADER + 4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_le_bytes);
    let binary_size = declared.map(|n| (HEADER as u64 + 4) + RECORD as u64 * u64::from(n));
    // Text written by some Windows tools starts with a UTF-8 byte order mark.
    let bom = if head.starts_with(UTF8_BOM) {
        UTF8_BOM.len()
    } else {
        0
    };
    let starts_with_solid = head
        .get(bom..)
        .is_some_and(|text| text.trim_ascii_start().starts_with(b"solid"));
    // Text has no NUL bytes; binary STL nearly always does (zero normals, padding, counts).
    let has_nul = head.iter().take(HEADER + 4 + RECORD).any(|&b| b == 0);
    if starts_with_solid && binary_size != Some(size) && !has_nul {
        reader.consume(bom);
        return super::stl_ascii::read_ascii(reader, size, limits);
    }
    let mut header = [0u8; HEADER + 4];
    reader.read_exact(&mut header).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => MeshError::Truncated {
            format: FORMAT,
            location: Location::Section("the 84-byte binary header".into()),
        },
        _ => MeshError::from(e),
    })?;
    let [.., a, b, c, d] = header;
    read_binary(reader, u32::from_le_bytes([a, b, c, d]), size, limits)
}

fn read_binary<R: Read>(
    mut reader: R,
    declared: u32,
    size: u64,
    limits: &MeshLimits,
) -> Result<Mesh, MeshError> {
    let available = size.saturating_sub(HEADER as u64 + 4);
    let needed = RECORD as u64 * u64::from(declared);
    if needed > available {
        return Err(MeshError::CountExceedsData {
            format: FORMAT,
            what: "the binary header".into(),
            declared: u64::from(declared),
            needed,
            available,
        });
    }
    if declared == 0 {
        return Err(MeshError::NoFaces {
            format: FORMAT,
            detail: " (the binary header declares 0 triangles)".into(),
        });
    }
    MeshLimits::check(FORMAT, "triangles", u64::from(declared), limits.max_faces)?;
    if needed < available {
        tracing::debug!(
            trailing = available - needed,
            "binary STL has bytes after its last triangle; ignored"
        );
    }
    // The count is bounded by the file size here, so allocating from it is safe.
    let count = declared as usize;
    let mut merger = VertexMerger::with_capacity(count);
    let mut triangles = Vec::with_capacity(count);
    let mut buf = vec![0u8; RECORD * BATCH.min(count)];
    let mut indices = Vec::with_capacity(GROUP * 3);
    let mut points = [[0f32; 3]; GROUP * 3];
    let mut done = 0usize;
    while done < count {
        let batch = BATCH.min(count - done);
        let bytes = buf.get_mut(..batch * RECORD).unwrap_or_default();
        reader.read_exact(bytes).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => MeshError::Truncated {
                format: FORMAT,
                location: Location::Record {
                    element: "triangle".into(),
                    index: done as u64,
                },
            },
            _ => MeshError::from(e),
        })?;
        // The records merged a group at a time (see `VertexMerger::index_all`).
        for (g, group) in bytes.chunks(RECORD * GROUP).enumerate() {
            let first = done + g * GROUP;
            let mut n = 0;
            let mut bad = None;
            for (i, record) in group.chunks_exact(RECORD).enumerate() {
                // Bytes 0..12 are the normal, recomputed on writing.
                for at in [12, 24, 36] {
                    let p = [
                        le_f32(record, at),
                        le_f32(record, at + 4),
                        le_f32(record, at + 8),
                    ];
                    if let Some(v) = p.iter().find(|v| !v.is_finite()) {
                        bad = Some((first + i, *v));
                        break;
                    }
                    if let Some(slot) = points.get_mut(n) {
                        *slot = p;
                        n += 1;
                    }
                }
                if bad.is_some() {
                    break;
                }
            }
            // The corners before a non-finite one are merged, as one by one.
            indices.clear();
            merger.index_all(points.get(..n).unwrap_or_default(), &mut indices, FORMAT)?;
            if let Some((index, value)) = bad {
                return Err(MeshError::malformed(
                    FORMAT,
                    Location::Record {
                        element: "triangle".into(),
                        index: index as u64,
                    },
                    Reason::NonFinite {
                        value: value.to_string(),
                    },
                ));
            }
            triangles.extend_from_slice(indices.as_chunks::<3>().0);
        }
        done += batch;
    }
    Ok(Mesh {
        positions: merger.positions,
        triangles,
    })
}

/// Triangles merged together (see `VertexMerger::index_all`): their corners fill a group.
const GROUP: usize = WARM / 3;

fn le_f32(record: &[u8], at: usize) -> f32 {
    record
        .get(at..at + 4)
        .and_then(|b| b.try_into().ok())
        .map_or(f32::NAN, f32::from_le_bytes)
}

#[cfg(test)]
use super::stl_ascii::State;

/// The line-by-line ASCII reader the block reader replaced: kept as the reference the block
/// reader's results and errors are compared with.
#[cfg(test)]
pub(super) fn read_ascii_by_line<R: BufRead>(
    reader: R,
    size: u64,
    limits: &MeshLimits,
) -> Result<Mesh, MeshError> {
    let mut lines = LineReader::new(reader, FORMAT, limits.line_limit());
    let mut merger = VertexMerger::with_capacity(1024);
    let mut triangles = Vec::new();
    let mut fan = Fan::default();
    let mut state = State::Outside;
    let mut solids = 0u64;
    loop {
        // Each further triangle needs a `vertex x y z` line: at least 12 bytes.
        let more = more_possible(Some(size.saturating_sub(lines.consumed)), 12);
        let bound = more.map_or(limits.max_faces, |more| {
            (triangles.len() as u64 + more).min(limits.max_faces)
        });
        let Some((line_no, line)) = lines.next_line()? else {
            break;
        };
        let at = |reason| MeshError::malformed(FORMAT, Location::Line(line_no), reason);
        let mut words = tokens(line);
        let Some(keyword) = words.next() else {
            continue;
        };
        let is = |k: &str| keyword.eq_ignore_ascii_case(k.as_bytes());
        let expected = match state {
            State::Outside if is("solid") => {
                solids += 1;
                state = State::InSolid;
                continue;
            }
            State::Outside => "solid",
            State::InSolid if is("facet") => {
                state = State::InFacet;
                continue;
            }
            State::InSolid if is("endsolid") => {
                state = State::Outside;
                continue;
            }
            State::InSolid => "facet or endsolid",
            State::InFacet if is("outer") => {
                state = State::InLoop;
                continue;
            }
            State::InFacet if is("endfacet") => {
                if fan.corners < 3 {
                    return Err(at(Reason::TooFewCorners {
                        corners: fan.corners,
                    }));
                }
                fan.reset();
                state = State::InSolid;
                continue;
            }
            State::InFacet => "outer loop or endfacet",
            State::InLoop if is("vertex") => {
                let p = [
                    coordinate(words.next(), "x coordinate", false, at)?,
                    coordinate(words.next(), "y coordinate", false, at)?,
                    coordinate(words.next(), "z coordinate", false, at)?,
                ];
                let index = merger.index(p, FORMAT)?;
                MeshLimits::check(
                    FORMAT,
                    "vertices",
                    merger.positions.len() as u64,
                    limits.max_vertices,
                )?;
                fan.corner(index, &mut triangles, bound, limits, FORMAT)?;
                continue;
            }
            State::InLoop if is("endloop") => {
                state = State::InFacet;
                continue;
            }
            State::InLoop => "vertex or endloop",
        };
        return Err(at(Reason::Expected {
            expected,
            found: excerpt(keyword),
        }));
    }
    match state {
        State::Outside if solids == 0 => Err(MeshError::NoFaces {
            format: FORMAT,
            detail: " (empty file)".into(),
        }),
        State::Outside if triangles.is_empty() => Err(MeshError::NoFaces {
            format: FORMAT,
            detail: " (no facets in any solid)".into(),
        }),
        State::Outside => Ok(Mesh {
            positions: merger.positions,
            triangles,
        }),
        State::InSolid => Err(truncated("a solid (no endsolid)")),
        State::InFacet => Err(truncated("a facet (no endfacet)")),
        State::InLoop => Err(truncated("a loop (no endloop)")),
    }
}

#[cfg(test)]
fn truncated(inside: &str) -> MeshError {
    MeshError::Truncated {
        format: FORMAT,
        location: Location::Section(inside.into()),
    }
}

/// Writes binary STL (little endian, normals computed from the winding).
pub fn write_stl_binary<W: Write>(
    mesh: &Mesh,
    writer: W,
    monitor: &mut Monitor<'_>,
) -> Result<(), MeshError> {
    let count = u32::try_from(mesh.triangles.len()).map_err(|_| MeshError::TooLarge {
        format: FORMAT,
        what: "triangles",
        limit: u64::from(u32::MAX),
    })?;
    let mut out = Chunked::new(writer, mesh.triangles.len() as u64, monitor);
    // The header must not start with "solid", or readers may take the file for ASCII.
    let mut header = [b' '; HEADER];
    let label = b"binary STL written by converto";
    header
        .iter_mut()
        .zip(label.iter())
        .for_each(|(h, l)| *h = *l);
    out.buf.extend_from_slice(&header);
    out.buf.extend_from_slice(&count.to_le_bytes());
    for t in &mesh.triangles {
        let [a, b, c] = corners(mesh, t);
        for v in normal(a, b, c).iter().chain(&a).chain(&b).chain(&c) {
            out.buf.extend_from_slice(&v.to_le_bytes());
        }
        out.buf.extend_from_slice(&[0, 0]);
        out.item()?;
    }
    out.finish()
}

/// Writes ASCII STL.
pub fn write_stl_ascii<W: Write>(
    mesh: &Mesh,
    writer: W,
    monitor: &mut Monitor<'_>,
) -> Result<(), MeshError> {
    let mut out = Chunked::new(writer, mesh.triangles.len() as u64, monitor);
    out.buf.extend_from_slice(b"solid converto\n");
    let mut floats = ryu::Buffer::new();
    for t in &mesh.triangles {
        let [a, b, c] = corners(mesh, t);
        out.buf.extend_from_slice(b"  facet normal");
        push_vec3(&mut out.buf, &mut floats, normal(a, b, c));
        out.buf.extend_from_slice(b"\n    outer loop\n");
        for p in [a, b, c] {
            out.buf.extend_from_slice(b"      vertex");
            push_vec3(&mut out.buf, &mut floats, p);
            out.buf.push(b'\n');
        }
        out.buf.extend_from_slice(b"    endloop\n  endfacet\n");
        out.item()?;
    }
    out.buf.extend_from_slice(b"endsolid converto\n");
    out.finish()
}

fn push_vec3(buf: &mut Vec<u8>, floats: &mut ryu::Buffer, v: [f32; 3]) {
    for c in v {
        buf.push(b' ');
        push_f32(buf, floats, c);
    }
}

/// The corner positions of a triangle of a validated mesh.
fn corners(mesh: &Mesh, t: &[u32; 3]) -> [[f32; 3]; 3] {
    t.map(|i| mesh.positions.get(i as usize).copied().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A binary STL of `triangles`.
    fn binary(triangles: &[[[f32; 3]; 3]]) -> Vec<u8> {
        let mut out = vec![0u8; HEADER];
        out.extend_from_slice(&(triangles.len() as u32).to_le_bytes());
        for t in triangles {
            out.extend_from_slice(&[0u8; 12]);
            for v in t.iter().flatten() {
                out.extend_from_slice(&v.to_le_bytes());
            }
            out.extend_from_slice(&[0, 0]);
        }
        out
    }

    /// A strip of triangles over a bumpy grid: each vertex shared by up to six of them.
    fn grid(n: usize) -> Vec<[[f32; 3]; 3]> {
        let at = |i: usize, j: usize| [i as f32, j as f32, ((i * 7 + j * 3) % 5) as f32 * 0.1];
        let mut out = Vec::new();
        for i in 0..n {
            for j in 0..n {
                out.push([at(i, j), at(i + 1, j), at(i + 1, j + 1)]);
                out.push([at(i, j), at(i + 1, j + 1), at(i, j + 1)]);
            }
        }
        out
    }

    fn read(bytes: &[u8]) -> Result<Mesh, MeshError> {
        read_stl(bytes, bytes.len() as u64)
    }

    /// The mesh is the one merging corner by corner, in file order, gives.
    #[test]
    fn binary_reading_merges_corners_in_file_order() {
        let triangles = grid(70);
        let mesh = read(&binary(&triangles)).expect("valid");
        let mut merger = VertexMerger::with_capacity(1);
        let expected: Vec<[u32; 3]> = triangles
            .iter()
            .map(|t| t.map(|p| merger.index(p, FORMAT).expect("in range")))
            .collect();
        assert_eq!(mesh.triangles, expected);
        assert_eq!(mesh.positions, merger.positions);
        assert_eq!(mesh.positions.len(), 71 * 71);
    }

    /// A non-finite coordinate anywhere, in any group of records, names its triangle.
    #[test]
    fn binary_non_finite_names_its_triangle() {
        for (triangle, corner) in [(0, 0), (GROUP - 1, 2), (GROUP, 1), (3 * GROUP + 5, 2)] {
            let mut triangles = grid(20);
            if let Some(t) = triangles.get_mut(triangle) {
                t[corner][1] = f32::INFINITY;
            }
            let error = read(&binary(&triangles))
                .expect_err("not finite")
                .to_string();
            assert!(
                error.contains(&format!("triangle #{triangle}:")) && error.contains("inf"),
                "{triangle}/{corner}: {error}"
            );
        }
    }
}

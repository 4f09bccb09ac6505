//! STL: binary and ASCII, read and written.

use std::io::{BufRead, Read, Write};

use super::error::{Location, MeshError, Reason};
use super::limits::MeshLimits;
use super::model::{Mesh, MeshFormat, Monitor, VertexMerger};
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
        for (i, record) in bytes.chunks_exact(RECORD).enumerate() {
            let mut corners = [0u32; 3];
            for (corner, slot) in corners.iter_mut().enumerate() {
                // Bytes 0..12 are the normal, recomputed on writing.
                let at = 12 + corner * 12;
                let p = [
                    le_f32(record, at),
                    le_f32(record, at + 4),
                    le_f32(record, at + 8),
                ];
                if let Some(bad) = p.iter().find(|v| !v.is_finite()) {
                    return Err(MeshError::malformed(
                        FORMAT,
                        Location::Record {
                            element: "triangle".into(),
                            index: (done + i) as u64,
                        },
                        Reason::NonFinite {
                            value: bad.to_string(),
                        },
                    ));
                }
                *slot = merger.index(p, FORMAT)?;
            }
            triangles.push(corners);
        }
        done += batch;
    }
    Ok(Mesh {
        positions: merger.positions,
        triangles,
    })
}

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

//! Wavefront OBJ: positions and polygon faces, read and written.

use std::io::{BufRead, Write};

use super::error::{Location, MeshError, Reason, excerpt};
use super::limits::{Fan, MeshLimits, more_possible, push_bounded};
use super::model::{Mesh, MeshFormat, Monitor};
use super::text::{LineReader, coordinate, parse_i64, skip_utf8_bom, tokens};
use super::write::{push_f32, push_index_line, write_pieces};

const FORMAT: MeshFormat = MeshFormat::Obj;

/// Reads an OBJ file's positions (`v`) and faces (`f`).
///
/// Faces may use the `v`, `v/vt`, `v//vn` and `v/vt/vn` forms and negative (relative) indices;
/// polygons are fan-triangulated. Texture coordinates, normals, groups, objects, materials,
/// smoothing groups, free-form geometry and unknown statements are ignored; points (`p`) and
/// lines (`l`) are not triangles and are dropped. Coordinates are read like C's `strtod`, as
/// other OBJ readers do (`3.1+e2` is 3.1). A UTF-8 byte order mark at the start is skipped.
/// Uses the default [`MeshLimits`].
pub fn read_obj<R: BufRead>(reader: R) -> Result<Mesh, MeshError> {
    read_obj_limited(reader, None, &MeshLimits::default())
}

/// [`read_obj`] within `limits`; `size` (the input's length, if known) bounds how far buffers
/// may grow: a face corner takes at least 2 bytes (`" 1"`) and a vertex 7 (`"v 0 0 0"`), so
/// the triangles and positions never take more than 6 and 2 times the input's bytes.
pub fn read_obj_limited<R: BufRead>(
    mut reader: R,
    size: Option<u64>,
    limits: &MeshLimits,
) -> Result<Mesh, MeshError> {
    let bom = skip_utf8_bom(&mut reader)?;
    let mut lines = LineReader::new(reader, FORMAT, limits.line_limit());
    let mut positions: Vec<[f32; 3]> = Vec::new();
    let mut triangles: Vec<[u32; 3]> = Vec::new();
    let mut fan = Fan::default();
    // The largest index and the line using it, to blame if it ends up out of range.
    let mut max_index: Option<(u32, u64)> = None;
    let mut points_and_lines = 0u64;
    loop {
        // Input bytes left from the start of this line: what its corners can still add.
        let remaining = size.map(|s| s.saturating_sub(bom + lines.consumed));
        let Some((line_no, line)) = lines.next_line()? else {
            break;
        };
        let mut words = tokens(line);
        let at = |reason| MeshError::malformed(FORMAT, Location::Line(line_no), reason);
        match words.next() {
            Some(b"v") => {
                let p = [
                    coordinate(words.next(), "x coordinate", true, at)?,
                    coordinate(words.next(), "y coordinate", true, at)?,
                    coordinate(words.next(), "z coordinate", true, at)?,
                ];
                MeshLimits::check(
                    FORMAT,
                    "vertices",
                    positions.len() as u64 + 1,
                    limits.max_vertices,
                )?;
                let bound = more_possible(remaining, 7).map_or(limits.max_vertices, |more| {
                    (positions.len() as u64 + more).min(limits.max_vertices)
                });
                push_bounded(&mut positions, p, bound);
            }
            Some(b"f") => {
                fan.reset();
                let bound = more_possible(remaining, 2).map_or(limits.max_faces, |more| {
                    (triangles.len() as u64 + more).min(limits.max_faces)
                });
                for corner in words {
                    let mut parts = corner.split(|&b| b == b'/');
                    let vertex = parts.next().unwrap_or_default();
                    let index = parse_i64(vertex).ok_or_else(|| {
                        at(Reason::BadNumber {
                            what: "face vertex index",
                            token: excerpt(corner),
                        })
                    })?;
                    for part in parts.filter(|p| !p.is_empty()) {
                        if parse_i64(part).is_none() {
                            return Err(at(Reason::BadNumber {
                                what: "face texture/normal index",
                                token: excerpt(corner),
                            }));
                        }
                    }
                    let count = positions.len() as i64;
                    let resolved = match index {
                        0 => return Err(at(Reason::ZeroIndex)),
                        i if i < 0 => count + i,
                        i => i - 1,
                    };
                    let out_of_range = || {
                        at(Reason::IndexOutOfRange {
                            index,
                            vertices: positions.len() as u64,
                        })
                    };
                    if resolved < 0 {
                        return Err(out_of_range());
                    }
                    let resolved = u32::try_from(resolved).map_err(|_| out_of_range())?;
                    // Positive indices may refer to vertices defined later; checked at the end.
                    if max_index.is_none_or(|(m, _)| resolved > m) {
                        max_index = Some((resolved, line_no));
                    }
                    fan.corner(resolved, &mut triangles, bound, limits, FORMAT)?;
                }
                if fan.corners < 3 {
                    return Err(at(Reason::TooFewCorners {
                        corners: fan.corners,
                    }));
                }
            }
            Some(b"p" | b"l") => points_and_lines += 1,
            // vt, vn, vp, g, o, s, usemtl, mtllib, comments, free-form surfaces, unknown.
            _ => {}
        }
    }
    if triangles.is_empty() {
        let detail = match (positions.len(), points_and_lines) {
            (0, 0) => " (no vertices either)".to_string(),
            (v, 0) => format!(" ({v} vertices but no f statements)"),
            (_, pl) => format!(" ({pl} point/line elements, which are not triangles)"),
        };
        return Err(MeshError::NoFaces {
            format: FORMAT,
            detail,
        });
    }
    if let Some((max, line)) = max_index
        && max as usize >= positions.len()
    {
        return Err(MeshError::malformed(
            FORMAT,
            Location::Line(line),
            Reason::IndexOutOfRange {
                index: i64::from(max) + 1,
                vertices: positions.len() as u64,
            },
        ));
    }
    Ok(Mesh {
        positions,
        triangles,
    })
}

/// Writes OBJ: a `v` line per vertex, then an `f` line per triangle.
pub fn write_obj<W: Write>(
    mesh: &Mesh,
    mut writer: W,
    monitor: &mut Monitor<'_>,
) -> Result<(), MeshError> {
    let vertices = mesh.positions.len();
    let header = format!(
        "# written by converto\n# {} vertices, {} triangles\n",
        vertices,
        mesh.triangles.len()
    );
    writer.write_all(header.as_bytes())?;
    // Lines 0..vertices are `v` lines, the rest `f` lines.
    let total = vertices + mesh.triangles.len();
    write_pieces(writer, total, monitor, |lines, buf| {
        let mut floats = ryu::Buffer::new();
        let v_lines = lines.start.min(vertices)..lines.end.min(vertices);
        for p in mesh.positions.get(v_lines).unwrap_or_default() {
            buf.push(b'v');
            for &c in p {
                buf.push(b' ');
                push_f32(buf, &mut floats, c);
            }
            buf.push(b'\n');
        }
        let f_lines = lines.start.max(vertices) - vertices..lines.end.max(vertices) - vertices;
        for t in mesh.triangles.get(f_lines).unwrap_or_default() {
            push_index_line(buf, b'f', t.map(|i| u64::from(i) + 1));
        }
    })
}

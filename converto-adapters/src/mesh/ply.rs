//! PLY: ASCII, binary little endian and binary big endian, read; ASCII and binary little endian
//! written.

use std::io::{BufRead, Read, Write};

use super::error::{Location, MeshError, Reason, excerpt};
use super::limits::{Fan, MeshLimits, more_possible, push_bounded};
use super::model::{Mesh, MeshFormat, Monitor};
use super::text::{LineReader, parse_f64, skip_utf8_bom, tokens};
use super::write::{Chunked, push_f32, push_index_line};

const FORMAT: MeshFormat = MeshFormat::Ply;
/// The longest header accepted.
const MAX_HEADER: u64 = 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Ascii,
    LittleEndian,
    BigEndian,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scalar {
    I8,
    U8,
    I16,
    U16,
    I32,
    U32,
    F32,
    F64,
}

impl Scalar {
    fn parse(name: &[u8]) -> Option<Self> {
        Some(match name {
            b"char" | b"int8" => Scalar::I8,
            b"uchar" | b"uint8" => Scalar::U8,
            b"short" | b"int16" => Scalar::I16,
            b"ushort" | b"uint16" => Scalar::U16,
            b"int" | b"int32" => Scalar::I32,
            b"uint" | b"uint32" => Scalar::U32,
            b"float" | b"float32" => Scalar::F32,
            b"double" | b"float64" => Scalar::F64,
            _ => return None,
        })
    }

    fn size(self) -> usize {
        match self {
            Scalar::I8 | Scalar::U8 => 1,
            Scalar::I16 | Scalar::U16 => 2,
            Scalar::I32 | Scalar::U32 | Scalar::F32 => 4,
            Scalar::F64 => 8,
        }
    }

    /// Decodes `bytes` (exactly `size()` of them, else NaN); every type fits an f64 exactly.
    fn decode(self, bytes: &[u8], big_endian: bool) -> f64 {
        let mut b = [0u8; 8];
        let n = self.size();
        match bytes.get(..n) {
            Some(src) if bytes.len() == n => {
                if let Some(dst) = b.get_mut(..n) {
                    dst.copy_from_slice(src);
                }
            }
            _ => return f64::NAN,
        }
        if big_endian && let Some(dst) = b.get_mut(..n) {
            dst.reverse();
        }
        // `b` now holds the value little endian.
        match self {
            Scalar::I8 => f64::from(i8::from_le_bytes([b[0]])),
            Scalar::U8 => f64::from(b[0]),
            Scalar::I16 => f64::from(i16::from_le_bytes([b[0], b[1]])),
            Scalar::U16 => f64::from(u16::from_le_bytes([b[0], b[1]])),
            Scalar::I32 => f64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            Scalar::U32 => f64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            Scalar::F32 => f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            Scalar::F64 => f64::from_le_bytes(b),
        }
    }
}

#[derive(Debug, Clone)]
enum Kind {
    Scalar(Scalar),
    List { count: Scalar, item: Scalar },
}

#[derive(Debug, Clone)]
struct Property {
    name: Vec<u8>,
    kind: Kind,
}

#[derive(Debug, Clone)]
struct Element {
    name: String,
    count: u64,
    properties: Vec<Property>,
}

impl Element {
    /// The fewest bytes a record can take.
    fn min_record(&self, encoding: Encoding) -> u64 {
        self.properties
            .iter()
            .map(|p| match (encoding, &p.kind) {
                // A token and a separator.
                (Encoding::Ascii, _) => 2,
                (_, Kind::Scalar(s)) => s.size() as u64,
                (_, Kind::List { count, .. }) => count.size() as u64,
            })
            .sum()
    }

    fn fixed_size(&self) -> bool {
        self.properties
            .iter()
            .all(|p| matches!(p.kind, Kind::Scalar(_)))
    }

    fn scalar(&self, name: &str) -> Option<(usize, Scalar)> {
        self.properties
            .iter()
            .enumerate()
            .find_map(|(i, p)| match p.kind {
                Kind::Scalar(s) if p.name == name.as_bytes() => Some((i, s)),
                _ => None,
            })
    }
}

struct Header {
    encoding: Encoding,
    elements: Vec<Element>,
}

fn read_header<R: BufRead>(lines: &mut LineReader<R>) -> Result<Header, MeshError> {
    match lines.next_line()? {
        Some((_, b"ply")) => {}
        Some((line_no, other)) => {
            return Err(MeshError::malformed(
                FORMAT,
                Location::Line(line_no),
                Reason::Expected {
                    expected: "the magic line \"ply\"",
                    found: excerpt(other),
                },
            ));
        }
        None => {
            return Err(MeshError::NoFaces {
                format: FORMAT,
                detail: " (empty file)".into(),
            });
        }
    }
    let mut encoding = None;
    let mut elements: Vec<Element> = Vec::new();
    loop {
        if lines.consumed > MAX_HEADER {
            return Err(lines.error(Reason::Unsupported {
                what: "header size over 1 MiB at",
                found: "end_header not found".into(),
            }));
        }
        let Some((line_no, line)) = lines.next_line()? else {
            return Err(MeshError::Truncated {
                format: FORMAT,
                location: Location::Section("the header (no end_header)".into()),
            });
        };
        let at = |reason| MeshError::malformed(FORMAT, Location::Line(line_no), reason);
        let words: Vec<&[u8]> = tokens(line).collect();
        match words.as_slice() {
            [b"end_header", ..] => break,
            [b"format", kind, version, ..] => {
                if encoding.is_some() {
                    return Err(at(Reason::Duplicate("format line".into())));
                }
                if !version.starts_with(b"1.") && *version != b"1" {
                    return Err(at(Reason::Unsupported {
                        what: "version",
                        found: excerpt(version),
                    }));
                }
                encoding = Some(match *kind {
                    b"ascii" => Encoding::Ascii,
                    b"binary_little_endian" => Encoding::LittleEndian,
                    b"binary_big_endian" => Encoding::BigEndian,
                    other => {
                        return Err(at(Reason::Unsupported {
                            what: "format",
                            found: excerpt(other),
                        }));
                    }
                });
            }
            [b"format", ..] => return Err(at(Reason::Missing("format and version"))),
            [b"element", name, count] => {
                let count = std::str::from_utf8(count)
                    .ok()
                    .and_then(|c| c.parse::<u64>().ok())
                    .ok_or_else(|| {
                        at(Reason::BadNumber {
                            what: "element count",
                            token: excerpt(count),
                        })
                    })?;
                let name = excerpt(name);
                if elements.iter().any(|e| e.name == name) {
                    return Err(at(Reason::Duplicate(format!("element {name:?}"))));
                }
                elements.push(Element {
                    name,
                    count,
                    properties: Vec::new(),
                });
            }
            [b"element", ..] => return Err(at(Reason::Missing("element name and count"))),
            [b"property", rest @ ..] => {
                let property = match rest {
                    [b"list", count, item, name] => Property {
                        name: name.to_vec(),
                        kind: Kind::List {
                            count: scalar(count).ok_or_else(|| at(unsupported_type(count)))?,
                            item: scalar(item).ok_or_else(|| at(unsupported_type(item)))?,
                        },
                    },
                    [b"list", ..] => {
                        return Err(at(Reason::Missing("list count type, item type and name")));
                    }
                    [ty, name] => Property {
                        name: name.to_vec(),
                        kind: Kind::Scalar(scalar(ty).ok_or_else(|| at(unsupported_type(ty)))?),
                    },
                    _ => return Err(at(Reason::Missing("property type and name"))),
                };
                let Some(element) = elements.last_mut() else {
                    return Err(at(Reason::Expected {
                        expected: "an element before its properties",
                        found: "property".into(),
                    }));
                };
                element.properties.push(property);
            }
            // comment, obj_info, and the free text some exporters put in the header.
            _ => {}
        }
    }
    let encoding = encoding.ok_or_else(|| lines.error(Reason::Missing("format line")))?;
    Ok(Header { encoding, elements })
}

fn scalar(name: &[u8]) -> Option<Scalar> {
    Scalar::parse(name)
}

fn unsupported_type(name: &[u8]) -> Reason {
    Reason::Unsupported {
        what: "property type",
        found: excerpt(name),
    }
}

/// What to keep from each element while reading the body.
enum Role {
    Vertex { x: usize, y: usize, z: usize },
    Face { indices: usize },
    Skip,
}

/// Reads a PLY file of `size` bytes: the `x`, `y`, `z` of the `vertex` element and the
/// `vertex_indices` (or `vertex_index`) list of the `face` element; polygons are
/// fan-triangulated. Any other elements and properties, of any type, are skipped. Uses the
/// default [`MeshLimits`].
pub fn read_ply<R: BufRead>(reader: R, size: u64) -> Result<Mesh, MeshError> {
    read_ply_limited(reader, size, &MeshLimits::default())
}

/// [`read_ply`] within `limits`. Element counts are checked against the limits and against
/// what the rest of the file could hold before anything is sized by them; a face's list count
/// (of any count type) is checked against [`MeshLimits::max_face_corners`] before its corners
/// are read, and the corners are fan-triangulated as they are read, never buffered. Buffers
/// grow no further than the bytes left could fill: a corner takes at least one byte (a binary
/// `uchar` index), so triangles never take more than 12 times the input's bytes.
pub fn read_ply_limited<R: BufRead>(
    mut reader: R,
    size: u64,
    limits: &MeshLimits,
) -> Result<Mesh, MeshError> {
    let bom = skip_utf8_bom(&mut reader)?;
    let mut lines = LineReader::new(reader, FORMAT, limits.line_limit());
    let header = read_header(&mut lines)?;
    let header_bytes = bom + lines.consumed;
    let reader = lines.into_inner();
    // The last ASCII token needs no separator after it.
    let mut remaining =
        size.saturating_sub(header_bytes) + u64::from(header.encoding == Encoding::Ascii);

    let mut roles = Vec::with_capacity(header.elements.len());
    let mut faces_declared = false;
    for element in &header.elements {
        let role = match element.name.as_str() {
            "vertex" => {
                let find = |n: &'static str| {
                    element
                        .scalar(n)
                        .map(|(i, _)| i)
                        .ok_or(MeshError::Malformed {
                            format: FORMAT,
                            location: Location::File,
                            reason: Reason::Missing(n),
                        })
                };
                Role::Vertex {
                    x: find("x")?,
                    y: find("y")?,
                    z: find("z")?,
                }
            }
            "face" => {
                let indices = element
                    .properties
                    .iter()
                    .position(|p| {
                        matches!(p.kind, Kind::List { .. })
                            && (p.name == b"vertex_indices" || p.name == b"vertex_index")
                    })
                    .ok_or(MeshError::Malformed {
                        format: FORMAT,
                        location: Location::File,
                        reason: Reason::Missing("face list property vertex_indices"),
                    })?;
                faces_declared = element.count > 0;
                Role::Face { indices }
            }
            _ => Role::Skip,
        };
        // Untrusted counts: refuse any that cannot fit in what is left of the file.
        let min = element.min_record(header.encoding);
        let needed = element.count.saturating_mul(min);
        if needed > remaining {
            return Err(MeshError::CountExceedsData {
                format: FORMAT,
                what: format!("element {:?}", element.name),
                declared: element.count,
                needed,
                available: remaining,
            });
        }
        remaining -= needed;
        match role {
            Role::Vertex { .. } => {
                MeshLimits::check(FORMAT, "vertices", element.count, limits.max_vertices)?;
            }
            // Every face is at least one triangle.
            Role::Face { .. } => {
                MeshLimits::check(FORMAT, "triangles", element.count, limits.max_faces)?;
            }
            Role::Skip => {}
        }
        roles.push(role);
    }
    if !faces_declared {
        let vertices = header
            .elements
            .iter()
            .find(|e| e.name == "vertex")
            .map_or(0, |e| e.count);
        return Err(MeshError::NoFaces {
            format: FORMAT,
            detail: format!(" (no face element; {vertices} vertices: a point cloud?)"),
        });
    }

    let body_size = size.saturating_sub(header_bytes);
    let mut body = Body::new(reader, header.encoding, limits.line_limit());
    let mut positions: Vec<[f32; 3]> = Vec::new();
    let mut triangles: Vec<[u32; 3]> = Vec::new();
    let mut record: Vec<f64> = Vec::new();
    let mut fan = Fan::default();
    // The largest index and the face using it, checked once the vertices are known.
    let mut max_index: Option<(u32, u64)> = None;
    for (element, role) in header.elements.iter().zip(&roles) {
        let at = |index: u64| Location::Record {
            element: element.name.clone(),
            index,
        };
        match role {
            // The count fits what is left of the file and the vertex limit (checked above).
            Role::Vertex { .. } => {
                positions.reserve_exact(usize::try_from(element.count).unwrap_or(0));
            }
            // Faces reserve nothing up front: how many triangles a face makes is only known
            // from its list count, so the vector grows as they come (see `push_bounded`).
            Role::Face { .. } => {}
            Role::Skip if element.properties.is_empty() => continue,
            Role::Skip => {}
        }
        // The fewest bytes a further triangle of a face takes: one more list item.
        let item_bytes = match (header.encoding, &role) {
            (Encoding::Ascii, _) => 2,
            (_, Role::Face { indices }) => element.properties.get(*indices).map_or(1, |p| match p
                .kind
            {
                Kind::List { item, .. } => item.size() as u64,
                Kind::Scalar(s) => s.size() as u64,
            }),
            _ => 1,
        };
        if let (Role::Skip, Encoding::LittleEndian | Encoding::BigEndian, true) =
            (role, header.encoding, element.fixed_size())
        {
            let bytes = element.count * element.min_record(header.encoding);
            body.skip(bytes).map_err(|e| eof(e, at(0)))?;
            continue;
        }
        for index in 0..element.count {
            record.clear();
            let remaining = Some(body_size.saturating_sub(body.consumed));
            let bound = more_possible(remaining, item_bytes).map_or(limits.max_faces, |more| {
                (triangles.len() as u64 + more).min(limits.max_faces)
            });
            let mut wanted_list: Option<u64> = None;
            for (p, property) in element.properties.iter().enumerate() {
                match property.kind {
                    Kind::Scalar(s) => record.push(body.value(s).map_err(|e| eof(e, at(index)))?),
                    Kind::List { count, item } => {
                        record.push(f64::NAN);
                        let n = body.value(count).map_err(|e| eof(e, at(index)))?;
                        if !(n >= 0.0 && n.fract() == 0.0 && n <= f64::from(u32::MAX)) {
                            return Err(MeshError::malformed(
                                FORMAT,
                                at(index),
                                Reason::BadNumber {
                                    what: "list length",
                                    token: n.to_string(),
                                },
                            ));
                        }
                        let keep = matches!(role, Role::Face { indices } if *indices == p);
                        if keep {
                            // Before reading a single corner: a hostile count stops here.
                            limits
                                .check_corners(FORMAT, n as u64)
                                .map_err(|e| eof(e, at(index)))?;
                            fan.reset();
                            wanted_list = Some(n as u64);
                        }
                        for _ in 0..n as u64 {
                            let v = body.value(item).map_err(|e| eof(e, at(index)))?;
                            if keep {
                                let v = vertex_index(v)
                                    .map_err(|r| MeshError::malformed(FORMAT, at(index), r))?;
                                if max_index.is_none_or(|(m, _)| v > m) {
                                    max_index = Some((v, index));
                                }
                                fan.corner(v, &mut triangles, bound, limits, FORMAT)?;
                            }
                        }
                    }
                }
            }
            match *role {
                Role::Vertex { x, y, z } => {
                    let mut p = [0f32; 3];
                    for (slot, i) in p.iter_mut().zip([x, y, z]) {
                        let v = record.get(i).copied().unwrap_or(f64::NAN) as f32;
                        if !v.is_finite() {
                            return Err(MeshError::malformed(
                                FORMAT,
                                at(index),
                                Reason::NonFinite {
                                    value: v.to_string(),
                                },
                            ));
                        }
                        *slot = v;
                    }
                    push_bounded(&mut positions, p, limits.max_vertices);
                }
                Role::Face { .. } => {
                    let corners = wanted_list.unwrap_or(0);
                    if corners < 3 {
                        return Err(MeshError::malformed(
                            FORMAT,
                            at(index),
                            Reason::TooFewCorners { corners },
                        ));
                    }
                }
                Role::Skip => {}
            }
        }
    }
    if let Some((max, face)) = max_index
        && max as usize >= positions.len()
    {
        return Err(MeshError::malformed(
            FORMAT,
            Location::Record {
                element: "face".into(),
                index: face,
            },
            Reason::IndexOutOfRange {
                index: i64::from(max),
                vertices: positions.len() as u64,
            },
        ));
    }
    Ok(Mesh {
        positions,
        triangles,
    })
}

/// A list value as a vertex index: a whole number from 0 to `u32::MAX`.
fn vertex_index(v: f64) -> Result<u32, Reason> {
    if !(v >= 0.0 && v.fract() == 0.0 && v <= f64::from(u32::MAX)) {
        return Err(Reason::BadNumber {
            what: "vertex index",
            token: v.to_string(),
        });
    }
    Ok(v as u32)
}

fn eof(e: MeshError, location: Location) -> MeshError {
    match e {
        MeshError::Io(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            MeshError::Truncated {
                format: FORMAT,
                location,
            }
        }
        MeshError::Malformed { reason, .. } => MeshError::malformed(FORMAT, location, reason),
        other => other,
    }
}

/// The body of a PLY file: values in the file's encoding.
struct Body<R> {
    reader: R,
    encoding: Encoding,
    /// The current ASCII line and the read position in it.
    line: Vec<u8>,
    pos: usize,
    /// Body bytes read so far.
    consumed: u64,
    /// The longest ASCII line accepted.
    max_line: usize,
}

impl<R: BufRead> Body<R> {
    fn new(reader: R, encoding: Encoding, max_line: usize) -> Self {
        Self {
            reader,
            encoding,
            line: Vec::new(),
            pos: 0,
            consumed: 0,
            max_line,
        }
    }

    fn value(&mut self, scalar: Scalar) -> Result<f64, MeshError> {
        match self.encoding {
            Encoding::Ascii => {
                let token = self.token()?;
                parse_f64(token).ok_or_else(|| {
                    MeshError::malformed(
                        FORMAT,
                        Location::File,
                        Reason::BadNumber {
                            what: "value",
                            token: excerpt(token),
                        },
                    )
                })
            }
            Encoding::LittleEndian | Encoding::BigEndian => {
                let mut b = [0u8; 8];
                let bytes = b.get_mut(..scalar.size()).unwrap_or_default();
                self.reader.read_exact(bytes)?;
                self.consumed += bytes.len() as u64;
                Ok(scalar.decode(bytes, self.encoding == Encoding::BigEndian))
            }
        }
    }

    fn skip(&mut self, bytes: u64) -> Result<(), MeshError> {
        let copied = std::io::copy(&mut (&mut self.reader).take(bytes), &mut std::io::sink())?;
        self.consumed += copied;
        if copied < bytes {
            return Err(MeshError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        Ok(())
    }

    /// The next whitespace-separated token of an ASCII body.
    fn token(&mut self) -> Result<&[u8], MeshError> {
        loop {
            let rest = self.line.get(self.pos..).unwrap_or_default();
            let skip = rest.iter().take_while(|b| b.is_ascii_whitespace()).count();
            let len = rest
                .iter()
                .skip(skip)
                .take_while(|b| !b.is_ascii_whitespace())
                .count();
            if len > 0 {
                let start = self.pos + skip;
                self.pos = start + len;
                return Ok(self.line.get(start..start + len).unwrap_or_default());
            }
            self.line.clear();
            self.pos = 0;
            let n = (&mut self.reader)
                .take(self.max_line as u64 + 1)
                .read_until(b'\n', &mut self.line)?;
            if n == 0 {
                return Err(MeshError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
            self.consumed += n as u64;
            if n > self.max_line && self.line.last() != Some(&b'\n') {
                return Err(MeshError::malformed(
                    FORMAT,
                    Location::File,
                    Reason::LineTooLong {
                        limit: self.max_line,
                    },
                ));
            }
            if self.line.contains(&0) {
                return Err(MeshError::malformed(
                    FORMAT,
                    Location::File,
                    Reason::NotText,
                ));
            }
        }
    }
}

pub(crate) fn header(mesh: &Mesh, encoding: &str) -> String {
    format!(
        "ply\nformat {encoding} 1.0\ncomment written by converto\nelement vertex {}\n\
         property float x\nproperty float y\nproperty float z\nelement face {}\n\
         property list uchar uint vertex_indices\nend_header\n",
        mesh.positions.len(),
        mesh.triangles.len()
    )
}

/// Writes binary little-endian PLY.
pub fn write_ply_binary<W: Write>(
    mesh: &Mesh,
    writer: W,
    monitor: &mut Monitor<'_>,
) -> Result<(), MeshError> {
    let total = (mesh.positions.len() + mesh.triangles.len()) as u64;
    let mut out = Chunked::new(writer, total, monitor);
    out.buf
        .extend_from_slice(header(mesh, "binary_little_endian").as_bytes());
    for p in &mesh.positions {
        for c in p {
            out.buf.extend_from_slice(&c.to_le_bytes());
        }
        out.item()?;
    }
    for t in &mesh.triangles {
        out.buf.push(3);
        for i in t {
            out.buf.extend_from_slice(&i.to_le_bytes());
        }
        out.item()?;
    }
    out.finish()
}

/// Writes ASCII PLY.
pub fn write_ply_ascii<W: Write>(
    mesh: &Mesh,
    writer: W,
    monitor: &mut Monitor<'_>,
) -> Result<(), MeshError> {
    let total = (mesh.positions.len() + mesh.triangles.len()) as u64;
    let mut out = Chunked::new(writer, total, monitor);
    out.buf.extend_from_slice(header(mesh, "ascii").as_bytes());
    let mut floats = ryu::Buffer::new();
    for p in &mesh.positions {
        for (i, &c) in p.iter().enumerate() {
            if i > 0 {
                out.buf.push(b' ');
            }
            push_f32(&mut out.buf, &mut floats, c);
        }
        out.buf.push(b'\n');
        out.item()?;
    }
    for t in &mesh.triangles {
        push_index_line(&mut out.buf, b'3', t.map(u64::from));
        out.item()?;
    }
    out.finish()
}

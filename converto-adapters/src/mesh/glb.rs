//! glTF 2.0 binary (`.glb`): read and written.
//!
//! Written: one scene, one node, one mesh with one triangle primitive: `POSITION` (float
//! `VEC3`, with the `min` and `max` the specification requires) and indices (`u16` when every
//! index fits, else `u32`), in one buffer stored in the file's `BIN` chunk. No `NORMAL`: the
//! mesh model carries none, and glTF viewers then compute flat normals, as the specification
//! asks of them. Coordinates are written as they are (glTF's +Y up is not imposed).
//!
//! Read: the default scene (or every mesh once when there is no scene), each node's mesh
//! placed by the node's global transform (matrix or translation/rotation/scale), triangles,
//! triangle strips and fans, indexed or not, `u8`/`u16`/`u32` indices and float positions.
//! Points and lines are dropped (like OBJ's `p` and `l`); materials, normals, texture
//! coordinates, skins, morph targets, animations and extras are ignored. Refused with
//! [`MeshError::Unsupported`]: glTF 1.0, required extensions (Draco, meshopt, quantisation,
//! ...), non-float positions, sparse accessors and buffers outside the file.

use std::io::{Read, Write};

use serde::Deserialize;

use super::error::{Location, MeshError, Reason};
use super::limits::MeshLimits;
use super::model::{Mesh, MeshFormat, Monitor};
use super::write::Chunked;

const FORMAT: MeshFormat = MeshFormat::Glb;
const MAGIC: &[u8; 4] = b"glTF";
const CHUNK_JSON: u32 = 0x4E4F_534A;
const CHUNK_BIN: u32 = 0x004E_4942;
/// The largest JSON chunk read. Parsed, JSON takes up to about 20 times its size (an empty
/// node `{}` is three bytes of text and 32 of memory), so the chunk is capped well below
/// what the mesh limits allow for geometry; real files' JSON is a few hundred bytes an object.
pub(crate) const MAX_JSON: u64 = 1 << 20;
/// The deepest node hierarchy followed.
const MAX_DEPTH: usize = 256;
/// Vertex and index component types.
const FLOAT: u32 = 5126;
const UNSIGNED_BYTE: u32 = 5121;
const UNSIGNED_SHORT: u32 = 5123;
const UNSIGNED_INT: u32 = 5125;

// ---------------------------------------------------------------------------------------------
// Reading

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Root {
    asset: Asset,
    #[serde(default)]
    extensions_required: Vec<String>,
    #[serde(default)]
    scene: Option<u32>,
    #[serde(default)]
    scenes: Vec<Scene>,
    #[serde(default)]
    nodes: Vec<Node>,
    #[serde(default)]
    meshes: Vec<MeshDef>,
    #[serde(default)]
    accessors: Vec<Accessor>,
    #[serde(default)]
    buffer_views: Vec<BufferView>,
    #[serde(default)]
    buffers: Vec<Buffer>,
}

#[derive(Deserialize)]
struct Asset {
    version: String,
}

#[derive(Deserialize)]
struct Scene {
    #[serde(default)]
    nodes: Vec<u32>,
}

/// A node, kept small: files may hold many.
#[derive(Deserialize)]
#[serde(from = "RawNode")]
struct Node {
    mesh: Option<u32>,
    children: Box<[u32]>,
    transform: Option<Box<[f64; 16]>>,
}

#[derive(Deserialize)]
struct RawNode {
    #[serde(default)]
    mesh: Option<u32>,
    #[serde(default)]
    children: Vec<u32>,
    #[serde(default)]
    matrix: Option<[f64; 16]>,
    #[serde(default)]
    translation: Option<[f64; 3]>,
    #[serde(default)]
    rotation: Option<[f64; 4]>,
    #[serde(default)]
    scale: Option<[f64; 3]>,
}

impl From<RawNode> for Node {
    fn from(raw: RawNode) -> Self {
        let transform = match (raw.matrix, raw.translation, raw.rotation, raw.scale) {
            (Some(m), ..) => Some(m),
            (None, None, None, None) => None,
            (None, t, r, s) => Some(trs(
                t.unwrap_or([0.0; 3]),
                r.unwrap_or([0.0, 0.0, 0.0, 1.0]),
                s.unwrap_or([1.0; 3]),
            )),
        };
        Node {
            mesh: raw.mesh,
            children: raw.children.into_boxed_slice(),
            transform: transform.map(Box::new),
        }
    }
}

#[derive(Deserialize)]
struct MeshDef {
    #[serde(default)]
    primitives: Vec<Primitive>,
}

#[derive(Deserialize)]
struct Primitive {
    attributes: Attributes,
    #[serde(default)]
    indices: Option<u32>,
    #[serde(default)]
    mode: Option<u32>,
}

#[derive(Deserialize)]
struct Attributes {
    #[serde(rename = "POSITION", default)]
    position: Option<u32>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Accessor {
    #[serde(default)]
    buffer_view: Option<u32>,
    #[serde(default)]
    byte_offset: u64,
    component_type: u32,
    #[serde(default)]
    normalized: bool,
    count: u64,
    #[serde(rename = "type")]
    kind: AccessorType,
    #[serde(default)]
    sparse: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[allow(clippy::upper_case_acronyms)]
enum AccessorType {
    SCALAR,
    VEC2,
    VEC3,
    VEC4,
    MAT2,
    MAT3,
    MAT4,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BufferView {
    buffer: u32,
    #[serde(default)]
    byte_offset: u64,
    byte_length: u64,
    #[serde(default)]
    byte_stride: Option<u64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Buffer {
    byte_length: u64,
    #[serde(default)]
    uri: Option<String>,
}

/// Column-major 4x4 matrix of a translation, a rotation (unit quaternion x, y, z, w) and a
/// scale, as glTF composes them (T * R * S).
fn trs(t: [f64; 3], r: [f64; 4], s: [f64; 3]) -> [f64; 16] {
    let [x, y, z, w] = r;
    let rotation = [
        [
            1.0 - 2.0 * (y * y + z * z),
            2.0 * (x * y - z * w),
            2.0 * (x * z + y * w),
        ],
        [
            2.0 * (x * y + z * w),
            1.0 - 2.0 * (x * x + z * z),
            2.0 * (y * z - x * w),
        ],
        [
            2.0 * (x * z - y * w),
            2.0 * (y * z + x * w),
            1.0 - 2.0 * (x * x + y * y),
        ],
    ];
    let mut m = [0.0; 16];
    for col in 0..3 {
        for row in 0..3 {
            m[col * 4 + row] = rotation[row][col] * s[col];
        }
    }
    m[12] = t[0];
    m[13] = t[1];
    m[14] = t[2];
    m[15] = 1.0;
    m
}

const IDENTITY: [f64; 16] = [
    1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0,
];

/// `a * b`, both column-major.
fn multiply(a: &[f64; 16], b: &[f64; 16]) -> [f64; 16] {
    let mut out = [0.0; 16];
    for col in 0..4 {
        for row in 0..4 {
            out[col * 4 + row] = (0..4).map(|k| a[k * 4 + row] * b[col * 4 + k]).sum();
        }
    }
    out
}

/// Whether the upper 3x3 of `m` mirrors (negative determinant): triangles then turn over.
fn mirrors(m: &[f64; 16]) -> bool {
    let at = |row: usize, col: usize| m[col * 4 + row];
    let det = at(0, 0) * (at(1, 1) * at(2, 2) - at(1, 2) * at(2, 1))
        - at(0, 1) * (at(1, 0) * at(2, 2) - at(1, 2) * at(2, 0))
        + at(0, 2) * (at(1, 0) * at(2, 1) - at(1, 1) * at(2, 0));
    det < 0.0
}

fn malformed(what: &'static str, found: String) -> MeshError {
    MeshError::malformed(
        FORMAT,
        Location::File,
        Reason::Expected {
            expected: what,
            found,
        },
    )
}

fn unsupported(what: impl Into<String>) -> MeshError {
    MeshError::Unsupported {
        format: FORMAT,
        what: what.into(),
    }
}

fn read_exact<R: Read>(reader: &mut R, buf: &mut [u8], inside: &str) -> Result<(), MeshError> {
    reader.read_exact(buf).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => MeshError::Truncated {
            format: FORMAT,
            location: Location::Section(inside.into()),
        },
        _ => MeshError::from(e),
    })
}

fn le_u32(bytes: &[u8], at: usize) -> u32 {
    bytes
        .get(at..at + 4)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u32::from_le_bytes)
}

/// Reads a GLB file of `size` bytes. Uses the default [`MeshLimits`].
pub fn read_glb<R: Read>(reader: R, size: u64) -> Result<Mesh, MeshError> {
    read_glb_limited(reader, size, &MeshLimits::default())
}

/// [`read_glb`] within `limits`. The chunk lengths are checked against the file's size before
/// anything is sized by them, every accessor against its buffer view and the view against the
/// `BIN` chunk, and the mesh's vertices and triangles (after instancing: a mesh used by several
/// nodes is placed once per node) against the limits and against 14 times the file's size, so
/// that a small file cannot instance a mesh into gigabytes.
pub fn read_glb_limited<R: Read>(
    mut reader: R,
    size: u64,
    limits: &MeshLimits,
) -> Result<Mesh, MeshError> {
    let mut header = [0u8; 20];
    read_exact(&mut reader, &mut header[..12], "the 12-byte GLB header")?;
    if header.get(..4) != Some(MAGIC.as_slice()) {
        return Err(malformed(
            "the magic bytes \"glTF\"",
            super::error::excerpt(header.get(..4).unwrap_or_default()),
        ));
    }
    match le_u32(&header, 4) {
        2 => {}
        1 => {
            return Err(unsupported(
                "glTF 1.0 binary (version 1); only glTF 2.0 is read",
            ));
        }
        other => return Err(unsupported(format!("GLB container version {other}"))),
    }
    let length = u64::from(le_u32(&header, 8));
    if length > size {
        return Err(MeshError::CountExceedsData {
            format: FORMAT,
            what: "the GLB header's total length".into(),
            declared: length,
            needed: length,
            available: size,
        });
    }
    read_exact(&mut reader, &mut header[12..20], "the JSON chunk header")?;
    let json_length = u64::from(le_u32(&header, 12));
    if le_u32(&header, 16) != CHUNK_JSON {
        return Err(malformed(
            "a JSON chunk first",
            format!("chunk type 0x{:08x}", le_u32(&header, 16)),
        ));
    }
    let available = length.saturating_sub(20);
    if json_length > available {
        return Err(MeshError::CountExceedsData {
            format: FORMAT,
            what: "the JSON chunk".into(),
            declared: json_length,
            needed: json_length,
            available,
        });
    }
    if json_length > MAX_JSON {
        return Err(MeshError::LimitExceeded {
            format: FORMAT,
            what: "bytes of JSON",
            count: json_length,
            limit: MAX_JSON,
        });
    }
    // Bounded by the file's size (above) and MAX_JSON.
    let mut json = vec![0u8; json_length as usize];
    read_exact(&mut reader, &mut json, "the JSON chunk")?;
    let root: Root = serde_json::from_slice(&json).map_err(|e| {
        MeshError::malformed(
            FORMAT,
            Location::Section("the JSON chunk".into()),
            Reason::Expected {
                expected: "glTF JSON",
                found: e.to_string(),
            },
        )
    })?;
    drop(json);
    if !root.asset.version.starts_with("2.") {
        return Err(unsupported(format!(
            "glTF version {:?}; only 2.x is read",
            super::error::excerpt(root.asset.version.as_bytes())
        )));
    }
    if !root.extensions_required.is_empty() {
        let names: Vec<String> = root
            .extensions_required
            .iter()
            .take(8)
            .map(|n| super::error::excerpt(n.as_bytes()))
            .collect();
        return Err(unsupported(format!(
            "required extensions {}",
            names.join(", ")
        )));
    }

    // The BIN chunk, if any, follows (chunks start 4-byte aligned).
    let mut consumed = 20 + json_length;
    let padding = (4 - consumed % 4) % 4;
    let mut bin = Vec::new();
    if length >= consumed + padding + 8 {
        let mut skip = [0u8; 3];
        read_exact(
            &mut reader,
            skip.get_mut(..padding as usize).unwrap_or_default(),
            "the JSON chunk's padding",
        )?;
        consumed += padding;
        let mut chunk = [0u8; 8];
        read_exact(&mut reader, &mut chunk, "the BIN chunk header")?;
        consumed += 8;
        let bin_length = u64::from(le_u32(&chunk, 0));
        if le_u32(&chunk, 4) == CHUNK_BIN {
            let available = length.saturating_sub(consumed);
            if bin_length > available {
                return Err(MeshError::CountExceedsData {
                    format: FORMAT,
                    what: "the BIN chunk".into(),
                    declared: bin_length,
                    needed: bin_length,
                    available,
                });
            }
            // Bounded by the file's size (above).
            bin = vec![0u8; bin_length as usize];
            read_exact(&mut reader, &mut bin, "the BIN chunk")?;
        }
    }
    build(&root, &bin, size, limits)
}

/// A resolved accessor: bytes to read and how.
struct View<'a> {
    bytes: &'a [u8],
    count: u64,
    stride: usize,
    component: u32,
}

impl View<'_> {
    fn position(&self, i: u64) -> [f32; 3] {
        let at = i as usize * self.stride;
        [0, 4, 8].map(|o| {
            self.bytes
                .get(at + o..at + o + 4)
                .and_then(|b| b.try_into().ok())
                .map_or(f32::NAN, f32::from_le_bytes)
        })
    }

    fn index(&self, i: u64) -> u64 {
        let at = i as usize * self.stride;
        let get = |n: usize| self.bytes.get(at..at + n).unwrap_or_default();
        match self.component {
            UNSIGNED_BYTE => get(1).first().map_or(u64::MAX, |&b| u64::from(b)),
            UNSIGNED_SHORT => get(2)
                .try_into()
                .map_or(u64::MAX, |b| u64::from(u16::from_le_bytes(b))),
            _ => get(4)
                .try_into()
                .map_or(u64::MAX, |b| u64::from(u32::from_le_bytes(b))),
        }
    }
}

fn accessor<'a>(
    root: &Root,
    bin: &'a [u8],
    index: u32,
    what: &str,
    types: &[(u32, AccessorType)],
) -> Result<View<'a>, MeshError> {
    let bad = |why: String| unsupported(format!("{what} accessor {index}: {why}"));
    let a = root
        .accessors
        .get(index as usize)
        .ok_or_else(|| malformed("an accessor index in range", format!("{what} {index}")))?;
    if a.sparse.is_some() {
        return Err(bad("sparse accessors".into()));
    }
    if !types.contains(&(a.component_type, a.kind)) || a.normalized {
        return Err(bad(format!(
            "{:?} of component type {}{}",
            a.kind,
            a.component_type,
            if a.normalized { " (normalized)" } else { "" }
        )));
    }
    let element: u64 = match a.component_type {
        UNSIGNED_BYTE => 1,
        UNSIGNED_SHORT => 2,
        _ => 4,
    } * if a.kind == AccessorType::VEC3 { 3 } else { 1 };
    let view_index = a
        .buffer_view
        .ok_or_else(|| bad("no bufferView (all zeros)".into()))?;
    let view = root
        .buffer_views
        .get(view_index as usize)
        .ok_or_else(|| malformed("a bufferView index in range", format!("{view_index}")))?;
    let buffer = root
        .buffers
        .get(view.buffer as usize)
        .ok_or_else(|| malformed("a buffer index in range", format!("{}", view.buffer)))?;
    if view.buffer != 0 || buffer.uri.is_some() {
        return Err(bad(
            "data in a buffer outside the file (a uri); only the GLB's own buffer is read".into(),
        ));
    }
    let stride = view.byte_stride.unwrap_or(element);
    if stride < element {
        return Err(malformed(
            "a byteStride at least the element size",
            format!("{stride} < {element}"),
        ));
    }
    let out_of_bounds = || {
        MeshError::malformed(
            FORMAT,
            Location::Section(format!("{what} accessor {index}")),
            Reason::Expected {
                expected: "data within its bufferView and the BIN chunk",
                found: format!(
                    "count {} at offset {} (view: {} bytes at {}; BIN: {} bytes)",
                    a.count,
                    a.byte_offset,
                    view.byte_length,
                    view.byte_offset,
                    bin.len()
                ),
            },
        )
    };
    let view_end = view
        .byte_offset
        .checked_add(view.byte_length)
        .filter(|&end| end <= bin.len() as u64 && end <= buffer.byte_length)
        .ok_or_else(out_of_bounds)?;
    let needed = match a.count {
        0 => 0,
        n => (n - 1)
            .checked_mul(stride)
            .and_then(|b| b.checked_add(element))
            .ok_or_else(out_of_bounds)?,
    };
    let start = view.byte_offset.saturating_add(a.byte_offset);
    let end = start.checked_add(needed).ok_or_else(out_of_bounds)?;
    if end > view_end {
        return Err(out_of_bounds());
    }
    let bytes = bin
        .get(start as usize..end as usize)
        .ok_or_else(out_of_bounds)?;
    Ok(View {
        bytes,
        count: a.count,
        stride: stride as usize,
        component: a.component_type,
    })
}

/// A primitive's triangle count for `n` vertices or indices, or `None` for points and lines.
fn triangles_of(mode: u32, n: u64) -> Result<Option<u64>, MeshError> {
    match mode {
        0..=3 => Ok(None),
        4 => Ok(Some(n / 3)),
        5 | 6 => Ok(Some(n.saturating_sub(2))),
        other => Err(malformed(
            "a primitive mode from 0 to 6",
            format!("{other}"),
        )),
    }
}

/// Calls `visit(mesh, global transform)` for every mesh instance of the scene.
fn walk(
    root: &Root,
    mut visit: impl FnMut(u32, &[f64; 16]) -> Result<(), MeshError>,
) -> Result<(), MeshError> {
    let scene = match (root.scene, root.scenes.is_empty()) {
        (Some(s), _) => Some(
            root.scenes
                .get(s as usize)
                .ok_or_else(|| malformed("a scene index in range", format!("{s}")))?,
        ),
        (None, false) => root.scenes.first(),
        (None, true) => None,
    };
    let Some(scene) = scene else {
        // No scene: every mesh once, untransformed.
        for mesh in 0..root.meshes.len() as u32 {
            visit(mesh, &IDENTITY)?;
        }
        return Ok(());
    };
    let mut seen = vec![false; root.nodes.len()];
    // Depth-first, one frame (node, its children left, its global transform) per level.
    let mut stack: Vec<(&[u32], [f64; 16])> = vec![(scene.nodes.as_slice(), IDENTITY)];
    while let Some((children, parent)) = stack.last_mut() {
        let Some((&first, rest)) = children.split_first() else {
            stack.pop();
            continue;
        };
        *children = rest;
        let parent = *parent;
        let node = root
            .nodes
            .get(first as usize)
            .ok_or_else(|| malformed("a node index in range", format!("{first}")))?;
        let slot = seen.get_mut(first as usize);
        if slot.as_deref() == Some(&true) {
            return Err(malformed(
                "a node hierarchy that is a tree",
                format!("node {first} reached twice"),
            ));
        }
        if let Some(s) = slot {
            *s = true;
        }
        let global = match &node.transform {
            Some(local) => multiply(&parent, local),
            None => parent,
        };
        if let Some(mesh) = node.mesh {
            visit(mesh, &global)?;
        }
        if !node.children.is_empty() {
            if stack.len() >= MAX_DEPTH {
                return Err(unsupported(format!(
                    "a node hierarchy deeper than {MAX_DEPTH}"
                )));
            }
            stack.push((&node.children[..], global));
        }
    }
    Ok(())
}

fn build(root: &Root, bin: &[u8], size: u64, limits: &MeshLimits) -> Result<Mesh, MeshError> {
    let positions_of = |p: &Primitive| -> Result<Option<View<'_>>, MeshError> {
        match p.attributes.position {
            Some(i) => accessor(root, bin, i, "POSITION", &[(FLOAT, AccessorType::VEC3)]).map(Some),
            None => Ok(None),
        }
    };
    let index_types = [
        (UNSIGNED_BYTE, AccessorType::SCALAR),
        (UNSIGNED_SHORT, AccessorType::SCALAR),
        (UNSIGNED_INT, AccessorType::SCALAR),
    ];
    let mesh_of = |m: u32| {
        root.meshes
            .get(m as usize)
            .ok_or_else(|| malformed("a mesh index in range", format!("{m}")))
    };

    // First pass: count, so the limits are checked and the vectors sized once.
    let budget = size.saturating_mul(14).saturating_add(8 << 20);
    let (mut vertices, mut triangles, mut skipped) = (0u64, 0u64, 0u64);
    walk(root, |m, _| {
        for p in &mesh_of(m)?.primitives {
            let Some(positions) = positions_of(p)? else {
                return Err(malformed("a POSITION attribute", "none".into()));
            };
            let n = match p.indices {
                Some(i) => accessor(root, bin, i, "indices", &index_types)?.count,
                None => positions.count,
            };
            match triangles_of(p.mode.unwrap_or(4), n)? {
                Some(t) => {
                    vertices = vertices.saturating_add(positions.count);
                    triangles = triangles.saturating_add(t);
                }
                None => skipped += 1,
            }
        }
        let bytes = vertices.saturating_add(triangles).saturating_mul(12);
        if bytes > budget {
            return Err(MeshError::LimitExceeded {
                format: FORMAT,
                what: "bytes of geometry after instancing (14 x the file size + 8 MiB)",
                count: bytes,
                limit: budget,
            });
        }
        MeshLimits::check(FORMAT, "vertices", vertices, limits.max_vertices)?;
        MeshLimits::check(FORMAT, "triangles", triangles, limits.max_faces)
    })?;
    if triangles == 0 {
        return Err(MeshError::NoFaces {
            format: FORMAT,
            detail: if skipped > 0 {
                format!(" ({skipped} point/line primitives, which are not triangles)")
            } else {
                String::new()
            },
        });
    }
    if vertices >= u64::from(u32::MAX) {
        return Err(MeshError::TooLarge {
            format: FORMAT,
            what: "vertices",
            limit: u64::from(u32::MAX - 1),
        });
    }

    // Second pass: fill. The counts are within the limits and the budget.
    let mut mesh = Mesh {
        positions: Vec::with_capacity(vertices as usize),
        triangles: Vec::with_capacity(triangles as usize),
    };
    walk(root, |m, transform| {
        let flip = mirrors(transform);
        for (number, p) in mesh_of(m)?.primitives.iter().enumerate() {
            let mode = p.mode.unwrap_or(4);
            let Some(positions) = positions_of(p)? else {
                continue;
            };
            let indices = p
                .indices
                .map(|i| accessor(root, bin, i, "indices", &index_types))
                .transpose()?;
            let n = indices.as_ref().map_or(positions.count, |v| v.count);
            let Some(count) = triangles_of(mode, n)? else {
                continue;
            };
            let base = mesh.positions.len() as u64;
            for i in 0..positions.count {
                let p = positions.position(i);
                let q = [0, 1, 2].map(|row| {
                    (transform[row] * f64::from(p[0])
                        + transform[4 + row] * f64::from(p[1])
                        + transform[8 + row] * f64::from(p[2])
                        + transform[12 + row]) as f32
                });
                if let Some(bad) = q.iter().find(|v| !v.is_finite()) {
                    return Err(MeshError::malformed(
                        FORMAT,
                        Location::Record {
                            element: format!("mesh {m} primitive {number} vertex"),
                            index: i,
                        },
                        Reason::NonFinite {
                            value: bad.to_string(),
                        },
                    ));
                }
                mesh.positions.push(q);
            }
            let corner = |k: u64| -> Result<u32, MeshError> {
                let v = indices.as_ref().map_or(k, |view| view.index(k));
                if v >= positions.count {
                    return Err(MeshError::malformed(
                        FORMAT,
                        Location::Record {
                            element: format!("mesh {m} primitive {number} index"),
                            index: k,
                        },
                        Reason::IndexOutOfRange {
                            index: i64::try_from(v).unwrap_or(i64::MAX),
                            vertices: positions.count,
                        },
                    ));
                }
                // Below `vertices`, which is below u32::MAX (checked above).
                Ok((base + v) as u32)
            };
            for t in 0..count {
                let [a, b, c] = match mode {
                    4 => [3 * t, 3 * t + 1, 3 * t + 2],
                    // Strips alternate their winding.
                    5 if t % 2 == 1 => [t + 1, t, t + 2],
                    5 => [t, t + 1, t + 2],
                    _ => [0, t + 1, t + 2],
                };
                let (a, b, c) = (corner(a)?, corner(b)?, corner(c)?);
                mesh.triangles
                    .push(if flip { [a, c, b] } else { [a, b, c] });
            }
        }
        Ok(())
    })?;
    Ok(mesh)
}

// ---------------------------------------------------------------------------------------------
// Writing

/// Whether indices are written as `u16` (every index below 65535, which glTF reserves).
fn short_indices(mesh: &Mesh) -> bool {
    mesh.positions.len() <= usize::from(u16::MAX)
}

/// The JSON chunk (padded with spaces) and the BIN chunk's unpadded length.
pub(crate) fn layout(mesh: &Mesh) -> (Vec<u8>, u64) {
    let vertices = mesh.positions.len() as u64;
    let corners = 3 * mesh.triangles.len() as u64;
    let short = short_indices(mesh);
    let index_bytes = corners * if short { 2 } else { 4 };
    let position_bytes = 12 * vertices;
    let mut low = [f32::INFINITY; 3];
    let mut high = [f32::NEG_INFINITY; 3];
    for p in &mesh.positions {
        for axis in 0..3 {
            low[axis] = low[axis].min(p[axis]);
            high[axis] = high[axis].max(p[axis]);
        }
    }
    if mesh.positions.is_empty() {
        (low, high) = ([0.0; 3], [0.0; 3]);
    }
    let json = serde_json::json!({
        "asset": { "version": "2.0", "generator": "converto" },
        "scene": 0,
        "scenes": [{ "nodes": [0] }],
        "nodes": [{ "mesh": 0 }],
        "meshes": [{ "primitives": [{ "attributes": { "POSITION": 0 }, "indices": 1, "mode": 4 }] }],
        "buffers": [{ "byteLength": position_bytes + index_bytes }],
        "bufferViews": [
            { "buffer": 0, "byteOffset": 0, "byteLength": position_bytes, "target": 34962 },
            { "buffer": 0, "byteOffset": position_bytes, "byteLength": index_bytes, "target": 34963 },
        ],
        "accessors": [
            {
                "bufferView": 0, "componentType": FLOAT, "count": vertices, "type": "VEC3",
                "min": low.map(f64::from), "max": high.map(f64::from),
            },
            {
                "bufferView": 1,
                "componentType": if short { UNSIGNED_SHORT } else { UNSIGNED_INT },
                "count": corners, "type": "SCALAR",
            },
        ],
    });
    let mut text = json.to_string().into_bytes();
    text.resize(text.len().next_multiple_of(4), b' ');
    (text, position_bytes + index_bytes)
}

/// The exact size of `mesh` written as GLB.
pub(crate) fn size(mesh: &Mesh) -> u64 {
    let (json, bin) = layout(mesh);
    12 + 8 + json.len() as u64 + 8 + bin.next_multiple_of(4)
}

/// Writes binary glTF 2.0: a 12-byte header, the JSON chunk, the BIN chunk.
pub fn write_glb<W: Write>(
    mesh: &Mesh,
    writer: W,
    monitor: &mut Monitor<'_>,
) -> Result<(), MeshError> {
    let (json, bin) = layout(mesh);
    let padded = bin.next_multiple_of(4);
    let total = 12 + 8 + json.len() as u64 + 8 + padded;
    let too_large = || MeshError::TooLarge {
        format: FORMAT,
        what: "bytes (the GLB length field is 32 bits)",
        limit: u64::from(u32::MAX),
    };
    let total32 = u32::try_from(total).map_err(|_| too_large())?;
    let bin32 = u32::try_from(padded).map_err(|_| too_large())?;
    let json32 = u32::try_from(json.len()).map_err(|_| too_large())?;
    let items = (mesh.positions.len() + mesh.triangles.len()) as u64;
    let mut out = Chunked::new(writer, items, monitor);
    out.buf.extend_from_slice(MAGIC);
    out.buf.extend_from_slice(&2u32.to_le_bytes());
    out.buf.extend_from_slice(&total32.to_le_bytes());
    out.buf.extend_from_slice(&json32.to_le_bytes());
    out.buf.extend_from_slice(&CHUNK_JSON.to_le_bytes());
    out.buf.extend_from_slice(&json);
    out.buf.extend_from_slice(&bin32.to_le_bytes());
    out.buf.extend_from_slice(&CHUNK_BIN.to_le_bytes());
    for p in &mesh.positions {
        for c in p {
            out.buf.extend_from_slice(&c.to_le_bytes());
        }
        out.item()?;
    }
    let short = short_indices(mesh);
    for t in &mesh.triangles {
        for &i in t {
            if short {
                out.buf.extend_from_slice(&(i as u16).to_le_bytes());
            } else {
                out.buf.extend_from_slice(&i.to_le_bytes());
            }
        }
        out.item()?;
    }
    out.buf.resize(out.buf.len() + (padded - bin) as usize, 0);
    out.finish()
}

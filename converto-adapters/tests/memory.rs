//! Peak heap of the built-in converters on crafted worst cases, measured with a counting
//! allocator (`dhat`): each must stay within the factor of its input size (plus a constant)
//! that its module documentation states, and hostile requests must be refused before they
//! allocate.
//!
//! `dhat` counts every allocation of the process, so this binary holds one test that runs the
//! cases one after another, each under its own profiler.
#![cfg(all(feature = "mesh", feature = "image"))]

use std::io::{self, Write};
use std::sync::Arc;

use converto_adapters::image::{ImageConfig, ImageConverter};
use converto_adapters::mesh::{
    DEFAULT_PREVIEW_SIZE, Encoding, MAX_PREVIEW_SIZE, MeshError, MeshFormat, MeshLimits, Monitor,
    UpAxis, read_mesh_limited, render_preview, write_mesh,
};
use converto_core::{
    ConversionId, ConvertContext, ConvertError, ConvertRequest, Converter, Format,
};
use serde_json::json;

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

const MIB: u64 = 1 << 20;
/// The mesh module's stated bound: peak heap <= 16 x input + 16 MiB (+ 4 bytes a preview
/// pixel).
const MESH_FACTOR: u64 = 16;
const MESH_CONSTANT: u64 = 16 * MIB;

/// Runs `case` under a fresh profiler and returns what it returned and the peak heap bytes
/// allocated while it ran.
fn peak<T>(case: impl FnOnce() -> T) -> (T, u64) {
    let profiler = dhat::Profiler::builder().testing().build();
    let out = case();
    let max = dhat::HeapStats::get().max_bytes as u64;
    drop(profiler);
    (out, max)
}

/// A writer that keeps nothing: the written bytes are counted, not stored.
#[derive(Default)]
struct Count(u64);

impl Write for Count {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The preview edge the mesh cases render at (the converter's default).
const PREVIEW: u32 = DEFAULT_PREVIEW_SIZE;
/// The mesh module's stated cost of a preview: 4 bytes a pixel.
fn preview_bytes(size: u32) -> u64 {
    4 * u64::from(size) * u64::from(size)
}

/// Reads `input` as `format` within `limits`, writes it as binary STL to nowhere and renders
/// its preview (`preview` px) to nowhere, as the converter does; the STL's size.
fn convert_mesh(
    input: &[u8],
    format: MeshFormat,
    limits: &MeshLimits,
    preview: u32,
) -> Result<u64, MeshError> {
    let mut monitor = Monitor::new();
    let mesh = read_mesh_limited(input, format, input.len() as u64, limits, &mut monitor)?;
    let mut out = Count::default();
    write_mesh(
        &mesh,
        MeshFormat::Stl,
        Encoding::Binary,
        &mut out,
        &mut monitor,
    )?;
    let frame = render_preview(&mesh, preview, UpAxis::of(format), &mut monitor)?;
    frame.write_png(Count::default())?;
    Ok(out.0)
}

struct Case {
    name: &'static str,
    input: u64,
    peak: u64,
    bound: u64,
}

fn check_mesh(
    name: &'static str,
    input: &[u8],
    format: MeshFormat,
    limits: &MeshLimits,
) -> (Result<u64, MeshError>, Case) {
    check_mesh_preview(name, input, format, limits, PREVIEW)
}

fn check_mesh_preview(
    name: &'static str,
    input: &[u8],
    format: MeshFormat,
    limits: &MeshLimits,
    preview: u32,
) -> (Result<u64, MeshError>, Case) {
    let (result, max) = peak(|| convert_mesh(input, format, limits, preview));
    let size = input.len() as u64;
    let case = Case {
        name,
        input: size,
        peak: max,
        bound: MESH_FACTOR * size + MESH_CONSTANT + preview_bytes(preview),
    };
    (result, case)
}

/// A GLB from a JSON document and a BIN chunk (both padded here).
fn glb(json: &serde_json::Value, bin: &[u8]) -> Vec<u8> {
    let mut text = json.to_string().into_bytes();
    text.resize(text.len().next_multiple_of(4), b' ');
    let mut bin = bin.to_vec();
    bin.resize(bin.len().next_multiple_of(4), 0);
    let mut out = b"glTF".to_vec();
    out.extend_from_slice(&2u32.to_le_bytes());
    out.extend_from_slice(&((28 + text.len() + bin.len()) as u32).to_le_bytes());
    out.extend_from_slice(&(text.len() as u32).to_le_bytes());
    out.extend_from_slice(b"JSON");
    out.extend_from_slice(&text);
    out.extend_from_slice(&(bin.len() as u32).to_le_bytes());
    out.extend_from_slice(b"BIN\0");
    out.extend_from_slice(&bin);
    out
}

/// A GLB of one mesh over 3 vertices with `triangles` triangles of `u8` indices (3 bytes a
/// triangle: the densest GLB), used by `instances` nodes.
fn glb_dense(triangles: u64, instances: u32) -> Vec<u8> {
    let mut bin: Vec<u8> = [0f32, 0., 0., 1., 0., 0., 0., 1., 0.]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    bin.extend((0..3 * triangles).map(|i| (i % 3) as u8));
    let nodes: Vec<serde_json::Value> = (0..instances)
        .map(|i| json!({"mesh": 0, "translation": [f64::from(i), 0.0, 0.0]}))
        .collect();
    let doc = json!({
        "asset": {"version": "2.0"},
        "scenes": [{"nodes": (0..instances).collect::<Vec<u32>>()}],
        "nodes": nodes,
        "meshes": [{"primitives": [{"attributes": {"POSITION": 0}, "indices": 1}]}],
        "accessors": [
            {"bufferView": 0, "componentType": 5126, "count": 3, "type": "VEC3"},
            {"bufferView": 1, "componentType": 5121, "count": 3 * triangles, "type": "SCALAR"},
        ],
        "bufferViews": [
            {"buffer": 0, "byteLength": 36},
            {"buffer": 0, "byteOffset": 36, "byteLength": 3 * triangles},
        ],
        "buffers": [{"byteLength": 36 + 3 * triangles}],
    });
    glb(&doc, &bin)
}

fn ply_header(faces: u64, count_type: &str) -> Vec<u8> {
    format!(
        "ply\nformat binary_little_endian 1.0\nelement vertex 3\nproperty float x\n\
         property float y\nproperty float z\nelement face {faces}\n\
         property list {count_type} uchar vertex_indices\nend_header\n"
    )
    .into_bytes()
}

fn ply_vertices(out: &mut Vec<u8>) {
    for p in [[0f32, 0., 0.], [1., 0., 0.], [0., 1., 0.]] {
        for c in p {
            out.extend_from_slice(&c.to_le_bytes());
        }
    }
}

/// Binary PLY, `uint` list counts and `uchar` indices: `faces` faces of `corners` corners.
/// One input byte per triangle: the densest triangles any supported input can encode.
fn ply_fans(faces: u64, corners: u32) -> Vec<u8> {
    let mut out = ply_header(faces, "uint");
    ply_vertices(&mut out);
    for _ in 0..faces {
        out.extend_from_slice(&corners.to_le_bytes());
        out.extend((0..corners).map(|i| (i % 3) as u8));
    }
    out
}

/// OBJ: three vertices and `lines` faces of `corners` corners each (`" 1"`, `" 2"`, `" 3"`:
/// two bytes a triangle).
fn obj_fans(lines: usize, corners: usize) -> Vec<u8> {
    let mut out = b"v 0 0 0\nv 1 0 0\nv 0 1 0\n".to_vec();
    for _ in 0..lines {
        out.push(b'f');
        for i in 0..corners {
            out.extend_from_slice([b" 1", b" 2", b" 3"][i % 3]);
        }
        out.push(b'\n');
    }
    out
}

fn png_4096x1() -> Vec<u8> {
    let image = image::RgbImage::from_fn(4096, 1, |x, _| image::Rgb([(x % 256) as u8, 0, 0]));
    let mut out = io::Cursor::new(Vec::new());
    image
        .write_to(&mut out, image::ImageFormat::Png)
        .expect("encode test image");
    out.into_inner()
}

fn convert_image(
    runtime: &tokio::runtime::Runtime,
    config: ImageConfig,
    png: &[u8],
    options: serde_json::Value,
) -> Result<usize, ConvertError> {
    let dir = tempfile::tempdir().expect("temp dir");
    let input = dir.path().join("in.png");
    std::fs::write(&input, png).expect("write input");
    let ctx = ConvertContext::for_file(input, dir.path().to_path_buf(), Arc::new(|_, _| {}));
    let request = ConvertRequest {
        id: ConversionId::new(),
        attempt: 1,
        source: Format::new("png").expect("format"),
        target: Format::new("png").expect("format"),
        options,
    };
    let converter = ImageConverter::new(config);
    runtime
        .block_on(converter.convert(&request, &ctx))
        .map(|o| o.len())
}

#[test]
fn peak_heap_is_a_constant_factor_of_the_input() {
    let mut cases: Vec<Case> = Vec::new();
    let limits = MeshLimits::default();

    // PLY: 256 faces of 32 771 uchar corners: 8.4 million triangles from 8.4 MB, each face
    // one triangle past a power of two, where a doubling vector would hold twice what it
    // needs.
    let input = ply_fans(256, 32_771);
    let (result, case) = check_mesh("ply fans, uchar indices", &input, MeshFormat::Ply, &limits);
    let written = result.expect("a valid PLY converts");
    assert_eq!(written, 84 + 50 * 256 * 32_769);
    cases.push(case);

    // PLY: one face whose uint list count claims 8 million uchar corners (and has them).
    let input = ply_fans(1, 8_000_000);
    let (result, case) = check_mesh("ply one huge list", &input, MeshFormat::Ply, &limits);
    assert!(
        matches!(result, Err(MeshError::LimitExceeded { what, .. }) if what.contains("corners")),
        "{result:?}"
    );
    cases.push(case);

    // PLY: ushort list counts, a face count the file cannot hold.
    let mut input = ply_header(4_000_000_000, "ushort");
    ply_vertices(&mut input);
    input.extend(std::iter::repeat_n(0u8, 1 << 20));
    let (result, case) = check_mesh("ply face count > file", &input, MeshFormat::Ply, &limits);
    assert!(
        matches!(result, Err(MeshError::CountExceedsData { .. })),
        "{result:?}"
    );
    cases.push(case);

    // OBJ: fans of the most corners a face may have: two bytes a triangle.
    let input = obj_fans(64, 65_535);
    let (result, case) = check_mesh("obj fans", &input, MeshFormat::Obj, &limits);
    assert_eq!(result.expect("a valid OBJ converts"), 84 + 50 * 64 * 65_533);
    cases.push(case);

    // OBJ: many triangles over three vertices.
    let input = obj_fans(1_000_000, 3);
    let (result, case) = check_mesh("obj shared vertices", &input, MeshFormat::Obj, &limits);
    assert_eq!(result.expect("a valid OBJ converts"), 84 + 50 * 1_000_000);
    cases.push(case);

    // OBJ: one face with a million corners: refused by the corner limit.
    let input = obj_fans(1, 1_000_000);
    let (result, case) = check_mesh("obj one huge face", &input, MeshFormat::Obj, &limits);
    assert!(
        matches!(result, Err(MeshError::LimitExceeded { .. })),
        "{result:?}"
    );
    cases.push(case);

    // Binary STL, every vertex distinct: the vertex table at its largest.
    let triangles = 170_000u32;
    let mut input = vec![b' '; 80];
    input.extend_from_slice(&triangles.to_le_bytes());
    for t in 0..triangles {
        input.extend_from_slice(&[0u8; 12]);
        for corner in 0..3u32 {
            for c in [t as f32, corner as f32, 0.5] {
                input.extend_from_slice(&c.to_le_bytes());
            }
        }
        input.extend_from_slice(&[0, 0]);
    }
    let (result, case) = check_mesh(
        "binary stl, distinct vertices",
        &input,
        MeshFormat::Stl,
        &limits,
    );
    assert_eq!(
        result.expect("a valid STL converts"),
        84 + 50 * u64::from(triangles)
    );
    cases.push(case);

    // ASCII STL: one facet whose loop has 65 535 distinct vertices, many times over.
    let mut input = b"solid fan\n".to_vec();
    for f in 0..8 {
        input.extend_from_slice(b"facet normal 0 0 1\nouter loop\n");
        for v in 0..65_535u32 {
            input.extend_from_slice(format!("vertex {f} {v} 0\n").as_bytes());
        }
        input.extend_from_slice(b"endloop\nendfacet\n");
    }
    input.extend_from_slice(b"endsolid fan\n");
    let (result, case) = check_mesh("ascii stl fans", &input, MeshFormat::Stl, &limits);
    assert_eq!(result.expect("a valid STL converts"), 84 + 50 * 8 * 65_533);
    cases.push(case);

    // Binary STL whose header claims 4 billion triangles, with 1 MiB of data.
    let mut input = vec![b' '; 80];
    input.extend_from_slice(&4_000_000_000u32.to_le_bytes());
    input.extend(std::iter::repeat_n(1u8, 1 << 20));
    let (result, case) = check_mesh("stl claims 4e9 triangles", &input, MeshFormat::Stl, &limits);
    assert!(
        matches!(result, Err(MeshError::CountExceedsData { .. })),
        "{result:?}"
    );
    cases.push(case);

    // ASCII STL: a 24 MB line, with a 1 MiB line limit: refused after buffering at most the
    // limit (twice it, with vector growth).
    let small_lines = MeshLimits::default().with_max_line_bytes(MIB);
    let mut input = b"solid giant\nfacet normal 0 0 1 ".to_vec();
    input.extend(std::iter::repeat_n(b'7', 24 << 20));
    let (result, mut case) = check_mesh(
        "ascii stl giant line",
        &input,
        MeshFormat::Stl,
        &small_lines,
    );
    assert!(
        matches!(&result, Err(MeshError::Malformed { reason, .. }) if reason.to_string().contains("longer than")),
        "{result:?}"
    );
    case.bound = 2 * MIB + 2 * MIB;
    cases.push(case);

    // OBJ again, with the largest preview (2048 px: 16 MiB more).
    let input = obj_fans(1_000_000, 3);
    let (result, case) = check_mesh_preview(
        "obj shared vertices, 2048 px",
        &input,
        MeshFormat::Obj,
        &limits,
        MAX_PREVIEW_SIZE,
    );
    assert_eq!(result.expect("a valid OBJ converts"), 84 + 50 * 1_000_000);
    cases.push(case);

    // GLB: u8 indices, 3 bytes a triangle; the file is held whole while read.
    let input = glb_dense(2_000_000, 1);
    let (result, case) = check_mesh("glb u8 indices", &input, MeshFormat::Glb, &limits);
    assert_eq!(result.expect("a valid GLB converts"), 84 + 50 * 2_000_000);
    cases.push(case);

    // GLB: one mesh placed by many nodes, just within the instancing budget (14 x the file).
    let input = glb_dense(20_000, 36);
    let (result, case) = check_mesh("glb instanced 36 times", &input, MeshFormat::Glb, &limits);
    assert_eq!(result.expect("within the budget"), 84 + 50 * 36 * 20_000);
    cases.push(case);

    // GLB: the same mesh placed by 10 000 nodes: refused before the geometry is allocated.
    let input = glb_dense(20_000, 10_000);
    let (result, case) = check_mesh("glb instancing bomb", &input, MeshFormat::Glb, &limits);
    assert!(
        matches!(&result, Err(MeshError::LimitExceeded { what, .. }) if what.contains("instancing")),
        "{result:?}"
    );
    cases.push(case);

    // GLB: a JSON chunk at its 1 MiB cap, all empty nodes (`{}`: the most memory a byte of
    // JSON can ask for).
    let mut json = br#"{"asset":{"version":"2.0"},"nodes":["#.to_vec();
    while json.len() < (1 << 20) - 8 {
        json.extend_from_slice(b"{},");
    }
    json.extend_from_slice(b"{}]}");
    let doc: serde_json::Value = serde_json::from_slice(&json).expect("valid JSON");
    let input = glb(&doc, &[]);
    let (result, case) = check_mesh("glb 1 MiB of empty nodes", &input, MeshFormat::Glb, &limits);
    assert!(
        matches!(&result, Err(MeshError::NoFaces { .. })),
        "{result:?}"
    );
    cases.push(case);

    // Image: a 4096x1 PNG asked for 4096 pixels high with upscaling (16 million x 4096
    // pixels): refused from the header and options, before any pixel buffer.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let png = png_4096x1();
    let (result, max) = peak(|| {
        convert_image(
            &runtime,
            ImageConfig::default(),
            &png,
            json!({"height": 4096, "upscale": true}),
        )
    });
    assert!(
        matches!(result, Err(ConvertError::TooLarge(_))),
        "{result:?}"
    );
    cases.push(Case {
        name: "png 4096x1 to height 4096",
        input: png.len() as u64,
        peak: max,
        bound: 8 * MIB,
    });

    // Image: sixteen variants, each within the pixel limit, too many together.
    let config = ImageConfig::default().with_max_pixels(4096 * 4096);
    let variants: Vec<String> = (0..16).map(|i| format!("{}x1024", 4096 - i)).collect();
    let (result, max) = peak(|| {
        convert_image(
            &runtime,
            config,
            &png,
            json!({"variants": variants, "fit": "fill", "upscale": true}),
        )
    });
    assert!(
        matches!(result, Err(ConvertError::TooLarge(_))),
        "{result:?}"
    );
    cases.push(Case {
        name: "png 16 variants over the budget",
        input: png.len() as u64,
        peak: max,
        bound: 8 * MIB,
    });

    // Image: a legitimate upscale within the limit: bounded by the pixel limit.
    let config = ImageConfig::default().with_max_pixels(4096 * 256);
    let (result, max) = peak(|| {
        convert_image(
            &runtime,
            config,
            &png,
            json!({"height": 256, "width": 4096, "fit": "fill", "upscale": true}),
        )
    });
    assert_eq!(result.expect("within the limit"), 1);
    cases.push(Case {
        name: "png 4096x1 to 4096x256",
        input: png.len() as u64,
        peak: max,
        bound: 20 * 4096 * 256 + 8 * MIB,
    });

    // Image: a 16-bit RGBA PNG at the pixel limit (the decoder's widest buffer), resized to
    // nearly its own size (the largest resize buffers).
    let side = 1024u32;
    let wide = image::DynamicImage::ImageRgba16(image::ImageBuffer::from_fn(side, side, |x, y| {
        image::Rgba([(x * 64) as u16, (y * 64) as u16, 7, 65_535])
    }));
    let mut png16 = io::Cursor::new(Vec::new());
    wide.write_to(&mut png16, image::ImageFormat::Png)
        .expect("encode test image");
    let png16 = png16.into_inner();
    let max_pixels = u64::from(side * side);
    let config = ImageConfig::default().with_max_pixels(max_pixels);
    let (result, max) = peak(|| {
        convert_image(
            &runtime,
            config,
            &png16,
            json!({"width": side - 1, "height": side - 1, "fit": "fill"}),
        )
    });
    assert_eq!(result.expect("within the limit"), 1);
    cases.push(Case {
        name: "png rgba16 at the pixel limit",
        input: png16.len() as u64,
        peak: max,
        // The image module's stated bound: 20 bytes x max_pixels + 8 MiB.
        bound: 20 * max_pixels + 8 * MIB,
    });

    let mut over = Vec::new();
    for c in &cases {
        eprintln!(
            "{:<32} input {:>11} B  peak {:>11} B  ({:>5.2} x input)  bound {:>11} B",
            c.name,
            c.input,
            c.peak,
            c.peak as f64 / c.input as f64,
            c.bound
        );
        if c.peak > c.bound {
            over.push(c.name);
        }
    }
    assert!(over.is_empty(), "peak heap over the bound: {over:?}");
}

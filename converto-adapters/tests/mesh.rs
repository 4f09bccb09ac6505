//! The mesh converter: hostile inputs, options, progress and cancellation, and a round trip
//! through a third-party corpus checked by a third-party reader (assimp).
//!
//! The corpus tests need the Debian packages `assimp-testmodels` (models under
//! `/usr/share/assimp/models`) and `assimp-utils` (the `assimp` command), installed by
//! `.ci/setup`. With `CI=true` a missing corpus fails the tests; otherwise they are skipped with
//! a message.
#![cfg(feature = "mesh")]
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use converto_adapters::mesh::{
    Encoding, Mesh, MeshConverter, MeshError, MeshFormat, MeshLimits, Monitor, read_mesh,
    write_mesh,
};
use converto_core::converter::OutputBody;
use converto_core::{
    CancellationToken, ConversionId, ConvertContext, ConvertError, ConvertRequest, Converter,
    Format,
};
use serde_json::{Value, json};

const CORPUS: &str = "/usr/share/assimp/models";

fn request(source: &str, target: &str, options: Value) -> ConvertRequest {
    ConvertRequest {
        id: ConversionId::new(),
        attempt: 1,
        source: Format::new(source).unwrap(),
        target: Format::new(target).unwrap(),
        options,
    }
}

/// Converts `input` in a fresh directory; returns the output path (and keeps the directory).
async fn convert_file(
    input: &Path,
    source: &str,
    target: &str,
    options: Value,
) -> Result<(tempfile::TempDir, PathBuf), ConvertError> {
    let dir = tempfile::tempdir().unwrap();
    let ctx = ConvertContext::for_file(
        input.to_path_buf(),
        dir.path().to_path_buf(),
        Arc::new(|_, _| {}),
    );
    let outputs = MeshConverter::new()
        .convert(&request(source, target, options.clone()), &ctx)
        .await?;
    // The converted file first, then the preview unless the options turn it off.
    let preview = options.get("preview") != Some(&Value::Bool(false));
    assert_eq!(outputs.len(), 1 + usize::from(preview));
    if let Some(p) = outputs.get(1) {
        assert_eq!((p.name.as_str(), p.format.as_str()), ("preview.png", "png"));
    }
    let output = outputs.into_iter().next().unwrap();
    assert_eq!(output.name, format!("output.{target}"));
    assert_eq!(output.format.as_str(), target);
    let OutputBody::File(path) = output.body else {
        panic!("expected a file output");
    };
    assert!(path.starts_with(dir.path()));
    Ok((dir, path))
}

fn read_bytes(bytes: &[u8], format: MeshFormat) -> Result<Mesh, MeshError> {
    read_mesh(bytes, format, bytes.len() as u64, &mut Monitor::new())
}

fn read_path(path: &Path, format: MeshFormat) -> Result<Mesh, MeshError> {
    let bytes = std::fs::read(path).unwrap();
    read_bytes(&bytes, format)
}

fn invalid(result: Result<Mesh, MeshError>, needle: &str) {
    match result {
        Err(e) => {
            assert!(e.is_invalid_input(), "{e:?}");
            let text = e.to_string();
            assert!(text.contains(needle), "{text:?} should mention {needle:?}");
        }
        Ok(m) => panic!("expected an error mentioning {needle:?}, read {m:?}"),
    }
}

fn binary_stl(triangles: &[[[f32; 3]; 3]], declared: u32) -> Vec<u8> {
    let mut out = b"solid but actually binary".to_vec();
    out.resize(80, b' ');
    out.extend_from_slice(&declared.to_le_bytes());
    for t in triangles {
        out.extend_from_slice(&[0u8; 12]);
        for v in t.iter().flatten() {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&[0, 0]);
    }
    out
}

const TRI: [[f32; 3]; 3] = [[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]];
const TRI2: [[f32; 3]; 3] = [[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 1.0, 0.0]];

#[test]
fn routes_cover_every_pair_of_mesh_formats() {
    let converter = MeshConverter::new();
    assert_eq!(converter.name(), "mesh");
    let mut routes: Vec<String> = converter
        .routes()
        .iter()
        .map(|r| format!("{}->{}", r.source, r.target))
        .collect();
    routes.sort();
    assert_eq!(
        routes,
        [
            "glb->obj", "glb->ply", "glb->stl", "obj->glb", "obj->ply", "obj->stl", "ply->glb",
            "ply->obj", "ply->stl", "stl->glb", "stl->obj", "stl->ply"
        ]
    );
}

#[test]
fn binary_stl_with_solid_header_is_binary_and_vertices_are_merged() {
    let mesh = read_bytes(&binary_stl(&[TRI, TRI2], 2), MeshFormat::Stl).unwrap();
    assert_eq!(mesh.triangles.len(), 2);
    assert_eq!(mesh.positions.len(), 4, "shared corners are merged");
    assert_eq!(mesh.triangles[1][0], mesh.triangles[0][1]);
}

#[test]
fn ascii_stl_is_read() {
    let text = b"solid x\n facet normal 0 0 1\n  outer loop\n   vertex 0 0 0\n   vertex 1 0 0\n   vertex 0 1 0\n  endloop\n endfacet\nendsolid x\n";
    let mesh = read_bytes(text, MeshFormat::Stl).unwrap();
    assert_eq!(mesh.triangles, vec![[0, 1, 2]]);
}

/// Number forms of ASCII STL files in the wild: signs, exponents of every spelling, a missing
/// integer or fraction part, CRLF line ends, tabs; read the same however the file's lines fall
/// across the reader's buffer (small buffers put many lines across two fills).
#[test]
fn ascii_stl_numbers_and_line_ends_in_every_form() {
    let facet = "\x20facet normal 0 0 1\r\n  outer loop\r\n   vertex +1.5e+00 -2E-1 .5\r\n\tvertex 1. -.5 3e0\r\n   vertex   0.000000e+00\t1.000000E+01 -0\r\n  endloop\r\n endfacet\r\n";
    let text = format!("solid forms\r\n{}endsolid forms", facet.repeat(10));
    let text = text.as_bytes();
    let whole = read_bytes(text, MeshFormat::Stl).unwrap();
    assert_eq!(
        whole.positions,
        vec![[1.5, -0.2, 0.5], [1.0, -0.5, 3.0], [0.0, 10.0, -0.0]]
    );
    assert_eq!(whole.triangles, vec![[0, 1, 2]; 10]);
    // From 16 bytes on, the start of the buffer shows `solid`, which tells ASCII from binary.
    for capacity in [16, 61, 97, 1000] {
        let reader = std::io::BufReader::with_capacity(capacity, text);
        let mesh = converto_adapters::mesh::read_stl(reader, text.len() as u64).unwrap();
        assert_eq!(mesh, whole, "buffer of {capacity} bytes");
    }
    // Not numbers, or not finite as 32-bit floats: refused, naming the line.
    for (bad, says) in [
        (&b"nan"[..], "coordinate nan is not finite"),
        (b"-inf", "coordinate -inf is not finite"),
        (b"infinity", "coordinate infinity is not finite"),
        (b"1e39", "coordinate 1e39 is not finite"),
        (b"1e", "is not a number"),
        (b".", "is not a number"),
        (b"0x10", "is not a number"),
        (b"1,5", "is not a number"),
    ] {
        let mut text = b"solid x\nfacet normal 0 0 1\nouter loop\nvertex ".to_vec();
        text.extend_from_slice(bad);
        text.extend_from_slice(b" 0 0\nvertex 1 0 0\nvertex 0 1 0\nendloop\nendfacet\nendsolid\n");
        invalid(read_bytes(&text, MeshFormat::Stl), "line 4:");
        invalid(read_bytes(&text, MeshFormat::Stl), says);
    }
}

#[test]
fn hostile_stl_fails_with_a_reason() {
    // A huge declared count: refused before any allocation.
    invalid(
        read_bytes(&binary_stl(&[TRI], u32::MAX), MeshFormat::Stl),
        "declares 4294967295 records",
    );
    // Truncated: the header says 3 triangles, the data holds 2.
    let mut truncated = binary_stl(&[TRI, TRI2], 3);
    truncated[0] = b'x';
    invalid(
        read_bytes(&truncated, MeshFormat::Stl),
        "declares 3 records",
    );
    // Zero triangles.
    invalid(read_bytes(&binary_stl(&[], 0), MeshFormat::Stl), "no faces");
    // NaN and infinite coordinates.
    let nan = [[f32::NAN, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]];
    invalid(
        read_bytes(&binary_stl(&[nan], 1), MeshFormat::Stl),
        "not finite",
    );
    invalid(
        read_bytes(
            b"solid x\nfacet normal 0 0 1\nouter loop\nvertex 0 0 inf\nvertex 1 0 0\nvertex 0 1 0\nendloop\nendfacet\nendsolid\n",
            MeshFormat::Stl,
        ),
        "line 4: coordinate inf is not finite",
    );
    // Shorter than a binary header.
    invalid(read_bytes(b"abc", MeshFormat::Stl), "truncated");
    // ASCII cut off inside a facet, and junk.
    invalid(
        read_bytes(
            b"solid x\nfacet normal 0 0 1\nouter loop\nvertex 0 0 0\n",
            MeshFormat::Stl,
        ),
        "no endloop",
    );
    invalid(
        read_bytes(
            b"solid x\nfacet normal 0 0 1\nouter loop\nvertex 0 zero 0\n",
            MeshFormat::Stl,
        ),
        "line 4: y coordinate \"zero\" is not a number",
    );
    invalid(
        read_bytes(b"solid \xff\xfe\nfoo\n", MeshFormat::Stl),
        "expected facet or endsolid",
    );
    invalid(
        read_bytes(b"solid \x00\x01\x02 junk", MeshFormat::Stl),
        "STL: file is truncated: it ends inside the 84-byte binary header",
    );
    invalid(
        read_bytes(
            b"solid x\nfacet normal 0 0 1\nouter loop\n",
            MeshFormat::Stl,
        ),
        "no endloop",
    );
    let mut text_with_nul = b"solid x\nfacet normal 0 0 1\n".to_vec();
    text_with_nul.resize(200, b' ');
    text_with_nul.extend_from_slice(b"\nouter\x00loop\n");
    invalid(
        read_bytes(&text_with_nul, MeshFormat::Stl),
        "line 4: binary data (NUL byte)",
    );
}

#[test]
fn obj_faces_indices_and_statements() {
    let text = b"# comment\nmtllib a.mtl\no thing\ng group\ns 1\nusemtl red\n\
        v 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\nvt 0 0\nvn 0 0 1\n\
        f 1/1/1 2/1/1 3/1/1 4/1/1\nf -4//1 -3//1 -2//1\nf 1/1 2/1 3/1\ncstype bspline\nl 1 2\n";
    let mesh = read_bytes(text, MeshFormat::Obj).unwrap();
    assert_eq!(mesh.positions.len(), 4);
    assert_eq!(
        mesh.triangles,
        vec![[0, 1, 2], [0, 2, 3], [0, 1, 2], [0, 1, 2]]
    );
}

#[test]
fn hostile_obj_fails_with_a_reason() {
    let v = "v 0 0 0\nv 1 0 0\nv 0 1 0\n";
    invalid(
        read_bytes(format!("{v}f 0 1 2\n").as_bytes(), MeshFormat::Obj),
        "line 4: vertex index 0",
    );
    invalid(
        read_bytes(format!("{v}f 1 2 4\n").as_bytes(), MeshFormat::Obj),
        "vertex index 4 is out of range: the file has 3 vertices",
    );
    invalid(
        read_bytes(format!("{v}f -4 1 2\n").as_bytes(), MeshFormat::Obj),
        "vertex index -4 is out of range",
    );
    invalid(
        read_bytes(
            format!("{v}f 1 2 99999999999999\n").as_bytes(),
            MeshFormat::Obj,
        ),
        "out of range",
    );
    invalid(
        read_bytes(format!("{v}f 1 2\n").as_bytes(), MeshFormat::Obj),
        "face with 2 vertices",
    );
    invalid(
        read_bytes(format!("{v}f 1 2 x\n").as_bytes(), MeshFormat::Obj),
        "\"x\" is not a number",
    );
    invalid(
        read_bytes(b"v nan 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n", MeshFormat::Obj),
        "line 1: coordinate nan is not finite",
    );
    invalid(
        read_bytes(b"v 1e39 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n", MeshFormat::Obj),
        "not finite",
    );
    invalid(read_bytes(v.as_bytes(), MeshFormat::Obj), "no faces");
    invalid(read_bytes(b"", MeshFormat::Obj), "no faces");
    invalid(
        read_bytes(b"\xfe\xff\x00v\x00 \x001\x00\n", MeshFormat::Obj),
        "NUL",
    );
}

fn ply(format: &str, body: &[u8], vertices: u64, faces: u64, index_type: &str) -> Vec<u8> {
    let mut out = format!(
        "ply\nformat {format} 1.0\ncomment test\nelement vertex {vertices}\nproperty double x\n\
         property float y\nproperty short z\nproperty uchar red\nelement edge 1\n\
         property int a\nproperty list uchar int b\nelement face {faces}\n\
         property list uchar {index_type} vertex_index\nproperty float quality\nend_header\n"
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

fn ply_binary_body(big: bool) -> Vec<u8> {
    let mut b = Vec::new();
    let f64b = |v: f64| {
        if big {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        }
    };
    let f32b = |v: f32| {
        if big {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        }
    };
    let i16b = |v: i16| {
        if big {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        }
    };
    let i32b = |v: i32| {
        if big {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        }
    };
    let u16b = |v: u16| {
        if big {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        }
    };
    for (x, y, z) in [(0.0, 0.0, 0), (1.0, 0.0, 0), (1.0, 1.0, 0), (0.0, 1.0, 2)] {
        b.extend_from_slice(&f64b(x));
        b.extend_from_slice(&f32b(y));
        b.extend_from_slice(&i16b(z));
        b.push(255);
    }
    // edge: a, list b of 2 ints
    b.extend_from_slice(&i32b(7));
    b.push(2);
    b.extend_from_slice(&i32b(1));
    b.extend_from_slice(&i32b(2));
    // face: a quad with ushort indices, then a triangle
    b.push(4);
    for i in [0u16, 1, 2, 3] {
        b.extend_from_slice(&u16b(i));
    }
    b.extend_from_slice(&f32b(0.5));
    b.push(3);
    for i in [0u16, 2, 3] {
        b.extend_from_slice(&u16b(i));
    }
    b.extend_from_slice(&f32b(0.5));
    b
}

#[test]
fn ply_in_every_encoding_with_extra_elements_and_properties() {
    let ascii = ply(
        "ascii",
        b"0 0 0 255\n1 0 0 255\n1 1 0 255\n0 1 2 255\n7 2 1 2\n4 0 1 2 3 0.5\n3 0 2 3 0.5\n",
        4,
        2,
        "ushort",
    );
    let little = ply(
        "binary_little_endian",
        &ply_binary_body(false),
        4,
        2,
        "ushort",
    );
    let big = ply("binary_big_endian", &ply_binary_body(true), 4, 2, "ushort");
    for bytes in [ascii, little, big] {
        let mesh = read_bytes(&bytes, MeshFormat::Ply).unwrap();
        assert_eq!(mesh.positions[3], [0.0, 1.0, 2.0]);
        assert_eq!(mesh.triangles, vec![[0, 1, 2], [0, 2, 3], [0, 2, 3]]);
    }
}

/// Text files that start with a UTF-8 byte order mark (as some Windows tools write them) read
/// exactly like the same files without it, in every text format, ASCII and binary PLY alike.
#[test]
fn a_utf8_byte_order_mark_is_skipped() {
    const BOM: &[u8] = b"\xEF\xBB\xBF";
    let with_bom = |bytes: &[u8]| [BOM, bytes].concat();
    let stl = b"solid x\n facet normal 0 0 1\n  outer loop\n   vertex 0 0 0\n   vertex 1 0 0\n   vertex 0 1 0\n  endloop\n endfacet\nendsolid x\n".to_vec();
    // The first line is a vertex: were the mark kept, the line would be an unknown statement
    // and the face would point past the last vertex.
    let obj = b"v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n".to_vec();
    let ply_ascii = ply(
        "ascii",
        b"0 0 0 255\n1 0 0 255\n1 1 0 255\n0 1 2 255\n7 2 1 2\n4 0 1 2 3 0.5\n3 0 2 3 0.5\n",
        4,
        2,
        "ushort",
    );
    let ply_binary = ply(
        "binary_little_endian",
        &ply_binary_body(false),
        4,
        2,
        "ushort",
    );
    for (bytes, format) in [
        (stl, MeshFormat::Stl),
        (obj, MeshFormat::Obj),
        (ply_ascii, MeshFormat::Ply),
        (ply_binary, MeshFormat::Ply),
    ] {
        let plain = read_bytes(&bytes, format).unwrap();
        let marked = read_bytes(&with_bom(&bytes), format)
            .unwrap_or_else(|e| panic!("{format:?} with a byte order mark: {e}"));
        assert_eq!(marked.positions, plain.positions, "{format:?}");
        assert_eq!(marked.triangles, plain.triangles, "{format:?}");
        assert!(!plain.triangles.is_empty());
    }
}

#[test]
fn hostile_ply_fails_with_a_reason() {
    // A face count beyond the data.
    let body = ply_binary_body(false);
    invalid(
        read_bytes(
            &ply("binary_little_endian", &body, 4, 1_000_000_000, "ushort"),
            MeshFormat::Ply,
        ),
        "element \"face\" declares 1000000000 records",
    );
    // A huge vertex count.
    invalid(
        read_bytes(
            &ply("binary_little_endian", &body, u64::MAX, 2, "ushort"),
            MeshFormat::Ply,
        ),
        "element \"vertex\" declares 18446744073709551615 records",
    );
    // Truncated data.
    invalid(
        read_bytes(
            &ply(
                "binary_little_endian",
                &body[..body.len() - 3],
                4,
                2,
                "ushort",
            ),
            MeshFormat::Ply,
        ),
        "truncated: it ends inside face #1",
    );
    invalid(
        read_bytes(
            &ply("ascii", b"0 0 0 255\n1 0 0 255\n1 1 0 255\n0 1 2 255\n7 2 1 2\n4 0 1 2 9 0.5\n3 0 2 3 0.5\n", 4, 2, "int"),
            MeshFormat::Ply,
        ),
        "face #0: vertex index 9 is out of range: the file has 4 vertices",
    );
    invalid(
        read_bytes(
            &ply("ascii", b"0 0 0 255\n1 0 0 255\n1 1 0 255\n0 1 2 255\n7 2 1 2\n4 0 1 2 -1 0.5\n3 0 2 3 0.5\n", 4, 2, "int"),
            MeshFormat::Ply,
        ),
        "vertex index \"-1\"",
    );
    invalid(
        read_bytes(
            &ply("ascii", b"nan 0 0 255\n1 0 0 255\n1 1 0 255\n0 1 2 255\n7 2 1 2\n3 0 1 2 0.5\n3 0 2 3 0.5\n", 4, 2, "int"),
            MeshFormat::Ply,
        ),
        "vertex #0: coordinate NaN is not finite",
    );
    invalid(
        read_bytes(
            &ply(
                "ascii",
                b"0 0 0 255\n1 0 0 255\n1 1 0 255\n0 1 2 255\n7 2 1 2\n2 0 1 0.5\n3 0 2 3 0.5\n",
                4,
                2,
                "int",
            ),
            MeshFormat::Ply,
        ),
        "face #0: face with 2 vertices",
    );
    invalid(
        read_bytes(
            b"ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nproperty float y\nproperty float z\nend_header\n0 0 0\n",
            MeshFormat::Ply,
        ),
        "no faces (no face element; 1 vertices: a point cloud?)",
    );
    invalid(
        read_bytes(
            b"ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\n",
            MeshFormat::Ply,
        ),
        "no end_header",
    );
    invalid(
        read_bytes(
            b"ply\nformat ascii 1.0\nelement vertex 1\nproperty quad x\nend_header\n",
            MeshFormat::Ply,
        ),
        "unsupported property type \"quad\"",
    );
    invalid(read_bytes(b"PK\x03\x04junk", MeshFormat::Ply), "magic line");
}

#[tokio::test]
async fn options_pick_the_encoding_and_bad_options_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.obj");
    std::fs::write(&input, "v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n").unwrap();
    let (_d, binary) = convert_file(&input, "obj", "stl", Value::Null)
        .await
        .unwrap();
    assert_eq!(std::fs::metadata(&binary).unwrap().len(), 84 + 50);
    let (_d, ascii) = convert_file(&input, "obj", "stl", json!({"encoding": "ascii"}))
        .await
        .unwrap();
    assert!(std::fs::read_to_string(ascii).unwrap().starts_with("solid"));
    let (_d, ply) = convert_file(&input, "obj", "ply", json!({"encoding": "ascii"}))
        .await
        .unwrap();
    assert!(
        std::fs::read_to_string(ply)
            .unwrap()
            .contains("format ascii 1.0")
    );
    for bad in [
        json!({"encoding": "utf8"}),
        json!({"encodng": "ascii"}),
        json!("ascii"),
    ] {
        let err = convert_file(&input, "obj", "stl", bad.clone())
            .await
            .unwrap_err();
        assert!(
            matches!(err, ConvertError::InvalidOptions(_)),
            "{bad}: {err:?}"
        );
        assert!(err.to_string().contains("encoding"), "{err}");
    }
    // Refused at submit time too, before any input exists; good options pass.
    let mesh = MeshConverter::new();
    let fmt = |name: &str| Format::new(name).unwrap();
    for (target, bad) in [
        ("stl", json!({"encoding": "utf8"})),
        ("ply", json!({"encodng": "ascii"})),
        ("obj", json!({"encoding": "binary"})),
    ] {
        assert!(
            matches!(
                mesh.check_options(&fmt("obj"), &fmt(target), &bad),
                Err(ConvertError::InvalidOptions(_))
            ),
            "{target} {bad}: accepted at submit"
        );
    }
    for (target, good) in [("stl", json!({"encoding": "ascii"})), ("obj", Value::Null)] {
        mesh.check_options(&fmt("ply"), &fmt(target), &good)
            .unwrap_or_else(|e| panic!("{target} {good}: {e}"));
    }
    let err = convert_file(&input, "stl", "obj", json!({"encoding": "binary"}))
        .await
        .unwrap_err();
    assert!(matches!(err, ConvertError::InvalidOptions(_)), "{err:?}");
    let err = convert_file(&input, "obj", "obj", Value::Null)
        .await
        .unwrap_err();
    assert!(matches!(err, ConvertError::Unsupported { .. }), "{err:?}");
    let err = convert_file(&input, "obj", "png", Value::Null)
        .await
        .unwrap_err();
    assert!(matches!(err, ConvertError::Unsupported { .. }), "{err:?}");
}

#[tokio::test]
async fn hostile_input_is_a_permanent_invalid_input_and_leaves_no_output() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.stl");
    std::fs::write(&input, binary_stl(&[TRI], 1_000_000)).unwrap();
    let out = tempfile::tempdir().unwrap();
    let ctx = ConvertContext::for_file(input, out.path().to_path_buf(), Arc::new(|_, _| {}));
    let err = MeshConverter::new()
        .convert(&request("stl", "obj", Value::Null), &ctx)
        .await
        .unwrap_err();
    assert!(matches!(err, ConvertError::InvalidInput(_)), "{err:?}");
    assert!(!err.is_temporary());
    assert_eq!(err.code(), "invalid_input");
    assert!(!out.path().join("out").join("output.obj").exists());
}

/// Converts `content` (a `source` file) with `limits`: the number of converted meshes (besides
/// the preview) or the error, and whether an output was left.
async fn convert_limited(
    limits: MeshLimits,
    content: &[u8],
    source: &str,
    target: &str,
) -> (Result<usize, ConvertError>, bool) {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join(format!("in.{source}"));
    std::fs::write(&input, content).unwrap();
    let out = tempfile::tempdir().unwrap();
    let ctx = ConvertContext::for_file(input, out.path().to_path_buf(), Arc::new(|_, _| {}));
    let result = MeshConverter::with_limits(limits)
        .convert(&request(source, target, Value::Null), &ctx)
        .await
        // The converted meshes, besides their previews.
        .map(|o| o.iter().filter(|o| o.name != "preview.png").count());
    let left = out
        .path()
        .join("out")
        .join(format!("output.{target}"))
        .exists();
    (result, left)
}

fn too_large(result: &Result<usize, ConvertError>, needle: &str) {
    match result {
        Err(e @ ConvertError::TooLarge(message)) => {
            assert_eq!(e.code(), "input_too_large");
            assert!(!e.is_temporary());
            assert!(
                message.contains(needle),
                "{message:?} should mention {needle:?}"
            );
        }
        other => panic!("expected TooLarge mentioning {needle:?}, got {other:?}"),
    }
}

#[tokio::test]
async fn limits_refuse_large_meshes_before_allocating_them() {
    let defaults = MeshLimits::default();
    // Faces: a fan of 12 corners is 10 triangles.
    let fan = b"v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3 1 2 3 1 2 3 1 2 3\n";
    let (ok, _) = convert_limited(defaults.clone().with_max_faces(10), fan, "obj", "stl").await;
    assert_eq!(ok.ok(), Some(1));
    let (result, left) =
        convert_limited(defaults.clone().with_max_faces(9), fan, "obj", "stl").await;
    too_large(&result, "triangles");
    assert!(!left);

    // Corners per polygon, in OBJ and in a PLY whose ushort list count says 1000.
    let (result, _) = convert_limited(
        defaults.clone().with_max_face_corners(11),
        fan,
        "obj",
        "ply",
    )
    .await;
    too_large(&result, "corners");
    let mut ply = b"ply\nformat binary_little_endian 1.0\nelement vertex 3\nproperty float x\n\
        property float y\nproperty float z\nelement face 1\n\
        property list ushort uchar vertex_indices\nend_header\n"
        .to_vec();
    ply.extend(std::iter::repeat_n(0u8, 36));
    ply.extend_from_slice(&1000u16.to_le_bytes());
    ply.extend((0..1000).map(|i| (i % 3) as u8));
    let (result, _) = convert_limited(
        defaults.clone().with_max_face_corners(999),
        &ply,
        "ply",
        "stl",
    )
    .await;
    too_large(&result, "corners");
    let (ok, _) = convert_limited(defaults.clone(), &ply, "ply", "stl").await;
    assert_eq!(ok.ok(), Some(1));

    // Vertices, from a binary STL's header count, before reading them.
    let stl = binary_stl(&[TRI, TRI], 2);
    let (result, _) = convert_limited(defaults.clone().with_max_faces(1), &stl, "stl", "obj").await;
    too_large(&result, "triangles");

    // Output bytes, known before writing: the PLY's 998 triangles are 84 + 50 x 998 bytes
    // of binary STL.
    let exact = 84 + 50 * 998;
    let (result, left) = convert_limited(
        defaults.clone().with_max_output_bytes(exact),
        &ply,
        "ply",
        "stl",
    )
    .await;
    assert_eq!(result.ok(), Some(1));
    assert!(left);
    let (result, left) = convert_limited(
        defaults.clone().with_max_output_bytes(exact - 1),
        &ply,
        "ply",
        "stl",
    )
    .await;
    too_large(&result, "output bytes");
    assert!(!left);

    // Lines: an ASCII STL line longer than the limit.
    let mut giant = b"solid x\nfacet normal 0 0 1".to_vec();
    giant.extend(std::iter::repeat_n(b' ', 5000));
    giant.extend_from_slice(b"\nendsolid\n");
    let (result, _) = convert_limited(
        defaults.clone().with_max_line_bytes(4096),
        &giant,
        "stl",
        "obj",
    )
    .await;
    too_large(&result, "line longer than 4096 bytes");

    // The limits deserialise with defaults for what is missing.
    let parsed: MeshLimits = serde_json::from_value(json!({"max_faces": 5})).unwrap();
    assert_eq!(parsed, MeshLimits::default().with_max_faces(5));
    assert!(serde_json::from_value::<MeshLimits>(json!({"max_facez": 5})).is_err());
}

fn grid_stl(n: usize) -> Vec<u8> {
    let mut triangles = Vec::with_capacity(2 * n * n);
    for i in 0..n {
        for j in 0..n {
            let (x, y) = (i as f32, j as f32);
            triangles.push([[x, y, 0.0], [x + 1.0, y, 0.0], [x + 1.0, y + 1.0, 0.0]]);
            triangles.push([[x, y, 0.0], [x + 1.0, y + 1.0, 0.0], [x, y + 1.0, 0.0]]);
        }
    }
    binary_stl(&triangles, triangles.len() as u32)
}

#[tokio::test]
async fn progress_is_reported_and_cancellation_stops_the_work() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("grid.stl");
    std::fs::write(&input, grid_stl(300)).unwrap();

    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let out = tempfile::tempdir().unwrap();
    let ctx = ConvertContext::for_file(
        input.clone(),
        out.path().to_path_buf(),
        Arc::new(move |p, stage: Option<&str>| {
            sink.lock().unwrap().push((p, stage.map(str::to_owned)))
        }),
    );
    let outputs = MeshConverter::new()
        .convert(&request("stl", "ply", Value::Null), &ctx)
        .await
        .unwrap();
    assert_eq!(outputs.len(), 2, "the converted mesh and its preview");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.last().map(|s| s.0), Some(100));
    assert!(seen.len() >= 3, "{seen:?}");
    for stage in ["reading mesh", "writing mesh", "rendering preview"] {
        assert!(
            seen.iter().any(|s| s.1.as_deref() == Some(stage)),
            "{stage}: {seen:?}"
        );
    }
    let mesh = read_path(&out.path().join("out/output.ply"), MeshFormat::Ply).unwrap();
    assert_eq!(mesh.triangles.len(), 2 * 300 * 300);
    assert_eq!(mesh.positions.len(), 301 * 301);

    // Cancelled before it starts.
    let token = CancellationToken::new();
    token.cancel();
    let out = tempfile::tempdir().unwrap();
    let ctx =
        ConvertContext::for_file(input.clone(), out.path().to_path_buf(), Arc::new(|_, _| {}))
            .with_cancel(token);
    let err = MeshConverter::new()
        .convert(&request("stl", "obj", Value::Null), &ctx)
        .await
        .unwrap_err();
    assert!(matches!(err, ConvertError::Cancelled), "{err:?}");

    // Cancelled while reading: the monitor stops at the next block.
    let token = CancellationToken::new();
    let trip = token.clone();
    let bytes = std::fs::read(&input).unwrap();
    let mut monitor = Monitor::new()
        .with_cancel(token)
        .on_progress(move |_, percent| {
            if percent >= 10 {
                trip.cancel();
            }
        });
    let err = read_mesh(
        &bytes[..],
        MeshFormat::Stl,
        bytes.len() as u64,
        &mut monitor,
    )
    .unwrap_err();
    assert!(matches!(err, MeshError::Cancelled), "{err:?}");
}

#[test]
fn writers_round_trip_exactly() {
    let mesh = Mesh {
        positions: vec![
            [0.1, -2.5e-8, 3.0e30],
            [1.0, 0.0, -0.0],
            [f32::MIN_POSITIVE, f32::MAX, 1.0 / 3.0],
        ],
        triangles: vec![[0, 1, 2], [2, 1, 0]],
    };
    for format in MeshFormat::ALL {
        for encoding in [Encoding::Binary, Encoding::Ascii] {
            if format == MeshFormat::Obj && encoding == Encoding::Binary {
                continue;
            }
            let mut bytes = Vec::new();
            write_mesh(&mesh, format, encoding, &mut bytes, &mut Monitor::new()).unwrap();
            let back = read_bytes(&bytes, format).unwrap();
            assert_eq!(back, mesh, "{format} {encoding:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The assimp corpus.

/// The corpus directory, or `None` (skip) when it or `assimp` is missing outside CI.
fn corpus() -> Option<PathBuf> {
    let dir = PathBuf::from(CORPUS);
    let assimp = Command::new("assimp").arg("version").output();
    if dir.join("STL").is_dir() && assimp.is_ok_and(|o| o.status.success()) {
        return Some(dir);
    }
    let message = format!(
        "the mesh corpus tests need {CORPUS} and the `assimp` command: \
         install the Debian packages assimp-testmodels and assimp-utils (.ci/setup does)"
    );
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{message}");
    }
    eprintln!("skipping: {message}");
    None
}

/// What `assimp info` reports about a file: `None` when it cannot load it.
struct AssimpInfo {
    /// The total of the `Faces:` line.
    faces: u64,
    /// Faces of the meshes whose primitive type is exactly `triangle`.
    triangle_faces: u64,
}

/// Runs `assimp info` on a file; `raw` skips assimp's post-processing (`-r`).
fn assimp_info(path: &Path, raw: bool) -> Option<AssimpInfo> {
    let mut command = Command::new("assimp");
    command.arg("info").arg(path);
    if raw {
        command.arg("-r");
    }
    let output = command.output().unwrap();
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let faces = text
        .lines()
        .find_map(|l| l.strip_prefix("Faces:"))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or_else(|| {
            panic!(
                "no Faces: line in assimp info for {}:\n{text}",
                path.display()
            )
        });
    // Per-mesh lines look like `    2 (name): [3791 / 0 / 1312 | triangle]`.
    let triangle_faces = text
        .lines()
        .filter_map(|l| l.trim_end().strip_suffix("| triangle]"))
        .map(|l| {
            let numbers = l.rsplit_once('[').unwrap().1;
            numbers
                .split('/')
                .nth(2)
                .unwrap()
                .trim()
                .parse::<u64>()
                .unwrap()
        })
        .sum();
    Some(AssimpInfo {
        faces,
        triangle_faces,
    })
}

/// The models of one source format in the corpus: `(path, format)`.
fn models(corpus: &Path) -> Vec<(PathBuf, &'static str)> {
    let mut out = Vec::new();
    for (dir, format) in [("STL", "stl"), ("OBJ", "obj"), ("PLY", "ply")] {
        for entry in std::fs::read_dir(corpus.join(dir)).unwrap() {
            let path = entry.unwrap().path();
            let ext = path
                .extension()
                .map(|e| e.to_string_lossy().to_ascii_lowercase());
            // STL/formatDetection is an STL without an extension; the OBJ folder also holds
            // .mtl material libraries and .jpg textures, which are not models.
            let is_model = match ext.as_deref() {
                None => dir == "STL",
                Some(e) => e == format,
            };
            if is_model {
                out.push((path, format));
            }
        }
    }
    out.sort();
    out
}

/// Every STL, OBJ and PLY model of the corpus that `assimp info` loads converts to every other
/// format (STL and PLY in both encodings, and GLB), and assimp reads the same triangles from
/// our output as from the source. Every model assimp rejects fails with `InvalidInput`.
///
/// What is compared, for each output:
/// 1. `assimp info` (default post-processing) on the source and on our output report the same
///    number of faces in meshes of primitive type `triangle`. That is the count of
///    non-degenerate triangles: assimp triangulates polygons, and turns degenerate triangles
///    into "line"/"point" primitives or drops them, differently per importer (spider.obj loses
///    28 fully degenerate triangles that Spider_ascii.stl keeps as points), so the `Faces:`
///    total is not comparable across formats. Points (`p`) and lines (`l`) of an OBJ source
///    are also "point"/"line" meshes there, so they are excluded by the same rule; the
///    converter drops them.
/// 2. `assimp info -r` (raw, no post-processing) on our output reports exactly as many faces as
///    we wrote triangles, and our reader reads our output back with the triangle count it read
///    from the source.
///
/// Models that assimp loads but that have no triangles at all (only OBJ `p`/`l` elements:
/// testline.obj, testpoints.obj) must fail with `InvalidInput` ("no faces").
///
/// One deliberate difference: `STL/triangle_with_empty_solid.stl` holds one good triangle and a
/// second, empty `solid`. assimp rejects it only because its scene validator forbids an empty
/// mesh; the file is valid STL, so we convert it (1 triangle) and check assimp loads our output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corpus_models_convert_to_every_other_format_with_the_same_triangle_count() {
    let Some(corpus) = corpus() else { return };
    let accepted_although_assimp_rejects = ["triangle_with_empty_solid.stl"];
    let mut converted = Vec::new();
    let mut rejected = Vec::new();
    let mut no_triangles = Vec::new();
    let mut outputs_checked = 0;
    for (path, source) in models(&corpus) {
        let file_name = path.file_name().unwrap().to_string_lossy().into_owned();
        let source_format = MeshFormat::from_format(&Format::new(source).unwrap()).unwrap();
        let info = assimp_info(&path, false);
        let expected = match info {
            Some(info) => info.triangle_faces,
            None if accepted_although_assimp_rejects.contains(&file_name.as_str()) => 1,
            None => {
                for target in ["stl", "obj", "ply"].iter().filter(|t| **t != source) {
                    let err = convert_file(&path, source, target, Value::Null)
                        .await
                        .expect_err(&format!("{file_name}: assimp rejects it, so must we"));
                    assert!(
                        matches!(err, ConvertError::InvalidInput(_)),
                        "{file_name}: {err:?}"
                    );
                }
                rejected.push(file_name);
                continue;
            }
        };
        if expected == 0 {
            let err = convert_file(&path, source, "stl", Value::Null)
                .await
                .expect_err(&format!("{file_name}: has no triangles"));
            assert!(
                matches!(&err, ConvertError::InvalidInput(m) if m.contains("no faces")),
                "{file_name}: {err:?}"
            );
            no_triangles.push(file_name);
            continue;
        }
        let read = read_path(&path, source_format)
            .unwrap_or_else(|e| panic!("{file_name}: {e}"))
            .triangles
            .len() as u64;
        for target in ["stl", "obj", "ply", "glb"]
            .iter()
            .filter(|t| **t != source)
        {
            let target_format = MeshFormat::from_format(&Format::new(target).unwrap()).unwrap();
            let encodings: &[&str] = match *target {
                "obj" => &["ascii"],
                "glb" => &["binary"],
                _ => &["binary", "ascii"],
            };
            for encoding in encodings {
                let what = format!("{file_name} -> {target} ({encoding})");
                let options = if *target == "obj" {
                    Value::Null
                } else {
                    json!({ "encoding": encoding })
                };
                let (_dir, out) = convert_file(&path, source, target, options)
                    .await
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
                let theirs = assimp_info(&out, false)
                    .unwrap_or_else(|| panic!("{what}: assimp cannot load our output"));
                assert_eq!(
                    theirs.triangle_faces, expected,
                    "{what}: assimp reads {} triangles from our output, {expected} from the source",
                    theirs.triangle_faces
                );
                let raw = assimp_info(&out, true)
                    .unwrap_or_else(|| panic!("{what}: assimp -r cannot load our output"));
                let ours = read_path(&out, target_format)
                    .unwrap_or_else(|e| panic!("{what}: we cannot read our output: {e}"));
                assert_eq!(ours.triangles.len() as u64, read, "{what}");
                assert_eq!(raw.faces, read, "{what}: assimp -r on our output");
                outputs_checked += 1;
            }
        }
        converted.push(file_name);
    }
    eprintln!(
        "corpus: {} models converted ({outputs_checked} outputs checked by assimp): {converted:?}\n\
         rejected like assimp: {rejected:?}\nno triangles (points/lines only): {no_triangles:?}",
        converted.len()
    );
    assert!(
        converted.len() >= 25,
        "too few models converted: {converted:?}"
    );
}

/// Every file in `invalid/` fails with `InvalidInput`, whichever mesh format it is given as.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corpus_invalid_files_fail_with_invalid_input() {
    let Some(corpus) = corpus() else { return };
    let mut count = 0;
    for entry in std::fs::read_dir(corpus.join("invalid")).unwrap() {
        let path = entry.unwrap().path();
        for (source, target) in [("stl", "obj"), ("obj", "ply"), ("ply", "stl")] {
            let err = convert_file(&path, source, target, Value::Null)
                .await
                .expect_err(&format!("{} as {source} must fail", path.display()));
            assert!(
                matches!(err, ConvertError::InvalidInput(_)),
                "{} as {source}: {err:?}",
                path.display()
            );
            count += 1;
        }
    }
    assert!(count >= 30, "{count}");
}

//! glTF binary (`.glb`): our output checked by two real parsers (the `gltf` crate, which
//! validates the document, and assimp), round trips through the converter, the GLB files of
//! the assimp test corpus (written by other tools), and hostile files.
//!
//! The assimp checks need the Debian packages `assimp-utils` and `assimp-testmodels`
//! (`.ci/setup` installs them); with `CI=true` their absence fails the tests, otherwise they
//! are skipped with a message.
#![cfg(feature = "mesh")]
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use converto_adapters::mesh::{
    Mesh, MeshConverter, MeshError, MeshFormat, MeshLimits, Monitor, read_glb, read_glb_limited,
    read_mesh, write_glb,
};
use converto_core::converter::OutputBody;
use converto_core::{
    ConversionId, ConvertContext, ConvertError, ConvertRequest, Converter, Format,
};
use serde_json::{Value, json};

const CORPUS: &str = "/usr/share/assimp/models";

fn glb_bytes(mesh: &Mesh) -> Vec<u8> {
    let mut out = Vec::new();
    write_glb(mesh, &mut out, &mut Monitor::new()).unwrap();
    out
}

fn read(bytes: &[u8]) -> Result<Mesh, MeshError> {
    read_glb(bytes, bytes.len() as u64)
}

fn grid(n: u32) -> Mesh {
    let mut mesh = Mesh::default();
    for i in 0..=n {
        for j in 0..=n {
            let (x, y) = (i as f32 * 0.5 - 3.0, j as f32 * 0.25 + 1.0);
            mesh.positions.push([x, y, (x * y).sin()]);
        }
    }
    let at = |i: u32, j: u32| i * (n + 1) + j;
    for i in 0..n {
        for j in 0..n {
            mesh.triangles
                .push([at(i, j), at(i + 1, j), at(i + 1, j + 1)]);
            mesh.triangles
                .push([at(i, j), at(i + 1, j + 1), at(i, j + 1)]);
        }
    }
    mesh
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

/// The container: header, JSON chunk padded with spaces, BIN chunk padded with zeros.
fn check_container(bytes: &[u8]) -> (Value, Vec<u8>) {
    assert_eq!(&bytes[..4], b"glTF");
    assert_eq!(le_u32(bytes, 4), 2);
    assert_eq!(le_u32(bytes, 8) as usize, bytes.len());
    let json_len = le_u32(bytes, 12) as usize;
    assert_eq!(&bytes[16..20], b"JSON");
    assert!(json_len.is_multiple_of(4));
    let json = &bytes[20..20 + json_len];
    let text = std::str::from_utf8(json).unwrap();
    assert!(
        text.trim_end().len() + 3 >= text.len(),
        "padding is at most 3 spaces"
    );
    let doc: Value = serde_json::from_str(text).unwrap();
    let at = 20 + json_len;
    let bin_len = le_u32(bytes, at) as usize;
    assert_eq!(&bytes[at + 4..at + 8], b"BIN\0");
    assert!(bin_len.is_multiple_of(4));
    assert_eq!(at + 8 + bin_len, bytes.len());
    let bin = bytes[at + 8..].to_vec();
    let declared = doc["buffers"][0]["byteLength"].as_u64().unwrap() as usize;
    assert!(declared <= bin_len && bin_len - declared < 4);
    assert!(
        bin[declared..].iter().all(|&b| b == 0),
        "BIN padded with zeros"
    );
    (doc, bin)
}

#[test]
fn the_gltf_crate_validates_our_output_and_reads_the_same_mesh() {
    // 81 vertices (u16 indices) and 90 601 vertices (u32 indices).
    for (n, component) in [(8u32, 5123u64), (300, 5125)] {
        let mesh = grid(n);
        let bytes = glb_bytes(&mesh);
        let (doc, _) = check_container(&bytes);
        assert_eq!(doc["asset"]["version"], "2.0");
        assert_eq!(doc["asset"]["generator"], "converto");
        assert_eq!(doc["accessors"][1]["componentType"], component);

        // `from_slice` validates the document against the specification's rules.
        let gltf = gltf::Gltf::from_slice(&bytes).unwrap_or_else(|e| panic!("n={n}: {e}"));
        let blob = gltf.blob.as_deref();
        let meshes: Vec<_> = gltf.meshes().collect();
        assert_eq!(meshes.len(), 1);
        let primitives: Vec<_> = meshes[0].primitives().collect();
        assert_eq!(primitives.len(), 1);
        let primitive = &primitives[0];
        assert_eq!(primitive.mode(), gltf::mesh::Mode::Triangles);
        let bounds = primitive.bounding_box();
        let reader = primitive.reader(|_| blob);
        let positions: Vec<[f32; 3]> = reader.read_positions().unwrap().collect();
        assert_eq!(positions, mesh.positions);
        let indices: Vec<u32> = reader.read_indices().unwrap().into_u32().collect();
        let flat: Vec<u32> = mesh.triangles.iter().flatten().copied().collect();
        assert_eq!(indices, flat);
        for axis in 0..3 {
            let low = mesh
                .positions
                .iter()
                .map(|p| p[axis])
                .fold(f32::MAX, f32::min);
            let high = mesh
                .positions
                .iter()
                .map(|p| p[axis])
                .fold(f32::MIN, f32::max);
            assert_eq!((bounds.min[axis], bounds.max[axis]), (low, high));
        }
        // And our reader reads it back exactly.
        assert_eq!(read(&bytes).unwrap(), mesh);
    }
}

/// `assimp`, or `None` (skip) when it is missing outside CI.
fn assimp() -> Option<()> {
    if Command::new("assimp")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success())
        && Path::new(CORPUS).join("glTF2").is_dir()
    {
        return Some(());
    }
    let message = "the GLB tests need the `assimp` command and its corpus: install the Debian \
                   packages assimp-utils and assimp-testmodels (.ci/setup does)";
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{message}");
    }
    eprintln!("skipping: {message}");
    None
}

/// `Vertices:` and `Faces:` of `assimp info -r` (no post-processing), or `None` if assimp
/// cannot load the file.
fn assimp_counts(path: &Path) -> Option<(u64, u64)> {
    let out = Command::new("assimp")
        .arg("info")
        .arg(path)
        .arg("-r")
        .output()
        .unwrap();
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().parse::<u64>().unwrap())
    };
    Some((field("Vertices:")?, field("Faces:")?))
}

fn request(source: &str, target: &str, options: Value) -> ConvertRequest {
    ConvertRequest {
        id: ConversionId::new(),
        attempt: 1,
        source: Format::new(source).unwrap(),
        target: Format::new(target).unwrap(),
        options,
    }
}

/// Runs the converter; the converted file's path (the directory is kept in `dir`).
async fn convert(
    dir: &Path,
    input: &Path,
    source: &str,
    target: &str,
) -> Result<PathBuf, ConvertError> {
    let work = tempfile::tempdir_in(dir).unwrap().keep();
    let ctx = ConvertContext::for_file(input.to_path_buf(), work, Arc::new(|_, _| {}));
    let outputs = MeshConverter::new()
        .convert(&request(source, target, json!({"preview": false})), &ctx)
        .await?;
    assert_eq!(outputs.len(), 1);
    let OutputBody::File(path) = &outputs[0].body else {
        panic!("a file output");
    };
    Ok(path.clone())
}

fn bounds(mesh: &Mesh) -> [[f32; 3]; 2] {
    let mut b = [[f32::MAX; 3], [f32::MIN; 3]];
    for p in &mesh.positions {
        for axis in 0..3 {
            b[0][axis] = b[0][axis].min(p[axis]);
            b[1][axis] = b[1][axis].max(p[axis]);
        }
    }
    b
}

fn read_file(path: &Path, format: MeshFormat) -> Mesh {
    let bytes = std::fs::read(path).unwrap();
    read_mesh(&bytes[..], format, bytes.len() as u64, &mut Monitor::new())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[tokio::test]
async fn stl_to_glb_to_stl_keeps_the_triangles_and_the_bounding_box_and_assimp_reads_it() {
    let dir = tempfile::tempdir().unwrap();
    let cube = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/data/cube.stl");
    let original = read_file(&cube, MeshFormat::Stl);
    let glb = convert(dir.path(), &cube, "stl", "glb").await.unwrap();
    check_container(&std::fs::read(&glb).unwrap());
    let back = convert(dir.path(), &glb, "glb", "stl").await.unwrap();
    let again = read_file(&back, MeshFormat::Stl);
    assert_eq!(again.triangles.len(), original.triangles.len());
    assert_eq!(bounds(&again), bounds(&original));
    assert_eq!(again, original, "the same vertices, merged the same way");

    // A larger mesh through every other format and back.
    let big = grid(200);
    let source = dir.path().join("grid.glb");
    std::fs::write(&source, glb_bytes(&big)).unwrap();
    for other in ["stl", "obj", "ply"] {
        let there = convert(dir.path(), &source, "glb", other).await.unwrap();
        let back = convert(dir.path(), &there, other, "glb").await.unwrap();
        let mesh = read_file(&back, MeshFormat::Glb);
        assert_eq!(mesh.triangles.len(), big.triangles.len(), "{other}");
        assert_eq!(bounds(&mesh), bounds(&big), "{other}");
    }

    if assimp().is_none() {
        return;
    }
    assert_eq!(
        assimp_counts(&glb),
        Some((
            original.positions.len() as u64,
            original.triangles.len() as u64
        )),
        "assimp info -r on our cube.glb"
    );
    let exported = dir.path().join("from-assimp.obj");
    let status = Command::new("assimp")
        .arg("export")
        .arg(&glb)
        .arg(&exported)
        .output()
        .unwrap();
    assert!(status.status.success(), "{status:?}");
    let theirs = read_file(&exported, MeshFormat::Obj);
    assert_eq!(theirs.triangles.len(), original.triangles.len());
    assert_eq!(bounds(&theirs), bounds(&original));
}

/// Every glTF 2.0 binary of the assimp corpus converts; its triangles are those of assimp's own
/// flattened export of the file (STL: one copy of a mesh per node using it, placed by the
/// node's transform), with the same bounding box; where every mesh is used once, the vertex and
/// face counts are those of `assimp info -r`. The glTF 1.0 binary and the model with infinite
/// positions (which glTF forbids) are refused, clearly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corpus_glb_files_convert_and_match_assimp() {
    if assimp().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut checked = Vec::new();
    for sub in ["glTF", "glTF2"] {
        for model in std::fs::read_dir(Path::new(CORPUS).join(sub)).unwrap() {
            let model = model.unwrap().path();
            let Ok(entries) = std::fs::read_dir(&model) else {
                continue;
            };
            for file in entries {
                let path = file.unwrap().path();
                if path.extension().is_none_or(|e| e != "glb") {
                    continue;
                }
                let name = path.display().to_string();
                let bytes = std::fs::read(&path).unwrap();
                if le_u32(&bytes, 4) == 1 {
                    let err = convert(dir.path(), &path, "glb", "stl").await.unwrap_err();
                    assert!(
                        matches!(&err, ConvertError::InvalidInput(m) if m.contains("glTF 1.0")),
                        "{name}: {err:?}"
                    );
                    checked.push(format!("{name}: refused (glTF 1.0)"));
                    continue;
                }
                // Positions of infinity: glTF forbids them ("MUST NOT be present"), and so does
                // every reader here.
                if name.contains("BoxWithInfinites") {
                    let err = convert(dir.path(), &path, "glb", "stl").await.unwrap_err();
                    assert!(
                        matches!(&err, ConvertError::InvalidInput(m) if m.contains("not finite")),
                        "{name}: {err:?}"
                    );
                    checked.push(format!("{name}: refused (infinite coordinates)"));
                    continue;
                }
                let ours = read_file(&path, MeshFormat::Glb);
                let stl = convert(dir.path(), &path, "glb", "stl").await.unwrap();
                assert_eq!(
                    read_file(&stl, MeshFormat::Stl).triangles.len(),
                    ours.triangles.len()
                );
                for target in ["obj", "ply"] {
                    convert(dir.path(), &path, "glb", target)
                        .await
                        .unwrap_or_else(|e| panic!("{name} -> {target}: {e}"));
                }
                let flattened = dir.path().join(format!("assimp-{}.stl", checked.len()));
                let out = Command::new("assimp")
                    .arg("export")
                    .arg(&path)
                    .arg(&flattened)
                    .output()
                    .unwrap();
                assert!(out.status.success(), "{name}: {out:?}");
                let theirs = read_file(&flattened, MeshFormat::Stl);
                assert_eq!(
                    ours.triangles.len(),
                    theirs.triangles.len(),
                    "{name}: triangles of the flattened scene"
                );
                let (a, b) = (bounds(&ours), bounds(&theirs));
                let size = (0..3).map(|i| b[1][i] - b[0][i]).fold(0f32, f32::max);
                for corner in 0..2 {
                    for axis in 0..3 {
                        assert!(
                            (a[corner][axis] - b[corner][axis]).abs() <= size * 1e-4,
                            "{name}: bounding box {a:?} against assimp's {b:?}"
                        );
                    }
                }
                let (vertices, faces) = assimp_counts(&path).unwrap();
                let instanced = faces != ours.triangles.len() as u64;
                if !instanced {
                    assert_eq!(
                        (vertices, faces),
                        (ours.positions.len() as u64, ours.triangles.len() as u64),
                        "{name}: assimp info -r"
                    );
                }
                checked.push(format!(
                    "{name}: {} vertices, {} triangles{}",
                    ours.positions.len(),
                    ours.triangles.len(),
                    if instanced {
                        format!(" (instanced; assimp info -r: {vertices} / {faces} per mesh)")
                    } else {
                        String::new()
                    }
                ));
            }
        }
    }
    eprintln!("corpus GLB files:\n{}", checked.join("\n"));
    assert!(checked.len() >= 4, "{checked:?}");
}

// ---------------------------------------------------------------------------------------------
// Hand-made and hostile files.

/// A GLB from a JSON document and a BIN chunk.
fn container(json: &Value, bin: &[u8]) -> Vec<u8> {
    let mut text = json.to_string().into_bytes();
    text.resize(text.len().next_multiple_of(4), b' ');
    let mut bin = bin.to_vec();
    bin.resize(bin.len().next_multiple_of(4), 0);
    let mut out = b"glTF".to_vec();
    out.extend_from_slice(&2u32.to_le_bytes());
    out.extend_from_slice(&((12 + 8 + text.len() + 8 + bin.len()) as u32).to_le_bytes());
    out.extend_from_slice(&(text.len() as u32).to_le_bytes());
    out.extend_from_slice(b"JSON");
    out.extend_from_slice(&text);
    out.extend_from_slice(&(bin.len() as u32).to_le_bytes());
    out.extend_from_slice(b"BIN\0");
    out.extend_from_slice(&bin);
    out
}

fn floats(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// A quad as a triangle strip of 4 unindexed vertices, and as a fan, placed by a node with a
/// translation and a mirroring scale; a line primitive beside them is dropped.
#[test]
fn strips_fans_transforms_and_lines() {
    // Zigzag order for the strip, around the rim for the fan.
    let quad = floats(&[
        0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0, //
        0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.0,
    ]);
    let doc = json!({
        "asset": {"version": "2.0"},
        "extensionsUsed": ["KHR_materials_unlit"],
        "scenes": [{"nodes": [0]}],
        "nodes": [
            {"children": [1], "translation": [10.0, 0.0, 0.0]},
            {"mesh": 0, "scale": [-1.0, 1.0, 1.0], "extras": {"anything": [1, 2]}},
        ],
        "meshes": [{"primitives": [
            {"attributes": {"POSITION": 0}, "mode": 5},
            {"attributes": {"POSITION": 1}, "mode": 6},
            {"attributes": {"POSITION": 0}, "mode": 1},
        ]}],
        "accessors": [
            {"bufferView": 0, "componentType": 5126, "count": 4, "type": "VEC3"},
            {"bufferView": 0, "byteOffset": 48, "componentType": 5126, "count": 4, "type": "VEC3"},
        ],
        "bufferViews": [{"buffer": 0, "byteLength": 96}],
        "buffers": [{"byteLength": 96}],
    });
    let mesh = read(&container(&doc, &quad)).unwrap();
    assert_eq!(mesh.triangles.len(), 4, "2 from the strip, 2 from the fan");
    assert_eq!(mesh.positions.len(), 8);
    assert_eq!(bounds(&mesh), [[9.0, 0.0, 0.0], [10.0, 1.0, 0.0]]);
    // The mirror turns triangles over; the reader turns them back (normals keep facing +z).
    for t in &mesh.triangles {
        let [a, b, c] = t.map(|i| mesh.positions[i as usize]);
        let z = (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0]);
        assert!(z > 0.0, "{t:?}");
    }
}

fn expect_err(bytes: &[u8], needle: &str) -> MeshError {
    let err = read(bytes).unwrap_err();
    assert!(
        err.to_string().contains(needle),
        "wanted {needle:?} in: {err}"
    );
    err
}

#[test]
fn hostile_and_unsupported_files_fail_with_a_reason() {
    let good = glb_bytes(&grid(2));
    // Container damage.
    expect_err(&good[..10], "truncated");
    expect_err(b"glTX\x02\0\0\0\x10\0\0\0", "glTF");
    let mut v1 = good.clone();
    v1[4] = 1;
    expect_err(&v1, "glTF 1.0");
    let mut long = good.clone();
    long[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
    expect_err(&long, "total length");
    let mut json = good.clone();
    json[12..16].copy_from_slice(&(good.len() as u32).to_le_bytes());
    expect_err(&json, "JSON chunk");
    expect_err(&good[..good.len() - 8], "");
    let mut garbage = good.clone();
    garbage[20] = b'[';
    expect_err(&garbage, "glTF JSON");

    let positions = floats(&[0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0]);
    let base = |accessors: Value, extra: Value| {
        let mut doc = json!({
            "asset": {"version": "2.0"},
            "meshes": [{"primitives": [{"attributes": {"POSITION": 0}, "indices": 1}]}],
            "accessors": accessors,
            "bufferViews": [
                {"buffer": 0, "byteLength": 36},
                {"buffer": 0, "byteOffset": 36, "byteLength": 4},
            ],
            "buffers": [{"byteLength": 40}],
        });
        if let (Some(d), Some(e)) = (doc.as_object_mut(), extra.as_object()) {
            d.extend(e.clone());
        }
        let mut bin = positions.clone();
        bin.extend_from_slice(&[0, 1, 7, 0]);
        container(&doc, &bin)
    };
    let position = json!({"bufferView": 0, "componentType": 5126, "count": 3, "type": "VEC3"});
    let indices = json!({"bufferView": 1, "componentType": 5121, "count": 3, "type": "SCALAR"});
    // Index 7 of 3 vertices (no scene: every mesh once).
    expect_err(&base(json!([position, indices]), json!({})), "out of range");
    // Counts beyond the data.
    let many =
        json!({"bufferView": 0, "componentType": 5126, "count": 4_000_000_000u64, "type": "VEC3"});
    expect_err(
        &base(json!([many, indices]), json!({})),
        "within its bufferView",
    );
    // Quantised positions, sparse accessors, outside buffers, required extensions.
    let shorts = json!({"bufferView": 0, "componentType": 5123, "count": 3, "type": "VEC3"});
    expect_err(&base(json!([shorts, indices]), json!({})), "unsupported");
    let sparse = json!({"bufferView": 0, "componentType": 5126, "count": 3, "type": "VEC3",
                        "sparse": {"count": 1}});
    expect_err(&base(json!([sparse, indices]), json!({})), "sparse");
    expect_err(
        &base(
            json!([position, indices]),
            json!({"buffers": [{"byteLength": 40, "uri": "data.bin"}]}),
        ),
        "outside the file",
    );
    expect_err(
        &base(
            json!([position, indices]),
            json!({"extensionsRequired": ["KHR_draco_mesh_compression"]}),
        ),
        "KHR_draco_mesh_compression",
    );
    // A node graph with a cycle, and one too deep.
    let cycle =
        json!({"scenes": [{"nodes": [0]}], "nodes": [{"children": [1]}, {"children": [0]}]});
    expect_err(&base(json!([position, indices]), cycle), "tree");
    let chain: Vec<Value> = (0..1000).map(|i| json!({"children": [i + 1]})).collect();
    let mut chain = chain;
    chain.push(json!({}));
    let deep = json!({"scenes": [{"nodes": [0]}], "nodes": chain});
    expect_err(&base(json!([position, indices]), deep), "deeper");
    // No triangles at all.
    let points = json!({"meshes": [{"primitives": [{"attributes": {"POSITION": 0}, "mode": 0}]}]});
    expect_err(&base(json!([position, indices]), points), "no faces");
}

/// A small file whose one mesh is used by many nodes: instancing is bounded by the limits
/// and by 14 x the file size, before anything is allocated.
#[test]
fn instancing_cannot_inflate_a_small_file() {
    let mesh = grid(60); // 7 200 triangles, 3 721 vertices
    let bytes = glb_bytes(&mesh);
    let (mut doc, bin) = check_container(&bytes);
    let nodes: Vec<Value> = (0..20_000).map(|_| json!({"mesh": 0})).collect();
    let roots: Vec<u32> = (0..20_000).collect();
    doc["nodes"] = Value::Array(nodes);
    doc["scenes"] = json!([{"nodes": roots}]);
    let bomb = container(&doc, &bin);
    let err = expect_err(&bomb, "after instancing");
    assert!(matches!(err, MeshError::LimitExceeded { .. }), "{err:?}");
    // Within MeshLimits' own bounds as well.
    doc["nodes"] = json!([{"mesh": 0}, {"mesh": 0}]);
    doc["scenes"] = json!([{"nodes": [0, 1]}]);
    let twice = container(&doc, &bin);
    assert_eq!(
        read(&twice).unwrap().triangles.len(),
        2 * mesh.triangles.len()
    );
    let limits = MeshLimits::default().with_max_faces(10_000);
    let err = read_glb_limited(&twice[..], twice.len() as u64, &limits).unwrap_err();
    assert!(matches!(err, MeshError::LimitExceeded { .. }), "{err:?}");
}

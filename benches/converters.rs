//! Converter benchmarks. Run with `cargo bench --bench converters --features mesh,image`.
//!
//! `benches/converters.sh` compares the mesh converter with `assimp export` on the same file.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use converto::adapters::image::{ImageConfig, ImageConverter};
use converto::adapters::mesh::{self, MeshConverter, MeshFormat, Monitor};
use converto::core::converter::OutputBody;
use converto::{ConversionId, ConvertContext, ConvertRequest, Converter, Format};
use criterion::{Criterion, Throughput, criterion_main};

// ---------------------------------------------------------------------------------------------
// Mesh (STL, OBJ, PLY, GLB) and the preview

/// Triangles in the generated binary STL.
const MESH_TRIANGLES: usize = 1_000_000;

/// A binary STL of about `triangles` triangles: a bumpy square grid, two triangles per cell
/// (shared corners, so vertex merging does real work).
fn bumpy_grid_stl(triangles: usize) -> Vec<u8> {
    let n = ((triangles / 2) as f64).sqrt().ceil().max(1.0) as usize;
    let count = 2 * n * n;
    let point = |i: usize, j: usize| {
        let (x, y) = (i as f32 * 0.01, j as f32 * 0.01);
        [x, y, (x * 7.0).sin() * (y * 5.0).cos() * 0.25]
    };
    let mut out = Vec::with_capacity(84 + 50 * count);
    out.extend_from_slice(&[b' '; 80]);
    out.extend_from_slice(&(count as u32).to_le_bytes());
    for i in 0..n {
        for j in 0..n {
            let (a, b, c, d) = (
                point(i, j),
                point(i + 1, j),
                point(i + 1, j + 1),
                point(i, j + 1),
            );
            for tri in [[a, b, c], [a, c, d]] {
                out.extend_from_slice(&[0u8; 12]);
                for v in tri.iter().flatten() {
                    out.extend_from_slice(&v.to_le_bytes());
                }
                out.extend_from_slice(&[0, 0]);
            }
        }
    }
    out
}

/// A scratch directory removed on drop (the root package has no tempfile dependency).
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("converto-bench-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Self(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn mesh_benches(c: &mut Criterion) {
    let scratch = Scratch::new("mesh");
    let stl = bumpy_grid_stl(MESH_TRIANGLES);
    let input = scratch.path().join("grid.stl");
    std::fs::write(&input, &stl).expect("write stl");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");

    let mut group = c.benchmark_group("mesh");
    group.sample_size(10);
    group.throughput(Throughput::Bytes(stl.len() as u64));

    // The whole converter, file to file, as a worker runs it.
    group.bench_function("stl_to_obj_1m_triangles", |b| {
        let converter = MeshConverter::new();
        let request = ConvertRequest {
            id: ConversionId::new(),
            attempt: 1,
            source: Format::new("stl").expect("stl"),
            target: Format::new("obj").expect("obj"),
            options: serde_json::Value::Null,
        };
        b.iter(|| {
            let ctx = ConvertContext::for_file(
                input.clone(),
                scratch.path().to_path_buf(),
                Arc::new(|_, _| {}),
            );
            let outputs = runtime
                .block_on(converter.convert(&request, &ctx))
                .expect("convert");
            black_box(outputs)
        })
    });

    // The parts, in memory.
    group.bench_function("read_binary_stl_1m_triangles", |b| {
        b.iter(|| {
            mesh::read_mesh(
                &stl[..],
                MeshFormat::Stl,
                stl.len() as u64,
                &mut Monitor::new(),
            )
            .expect("read")
        })
    });
    let parsed = mesh::read_mesh(
        &stl[..],
        MeshFormat::Stl,
        stl.len() as u64,
        &mut Monitor::new(),
    )
    .expect("read");
    group.bench_function("write_obj_1m_triangles", |b| {
        let mut out = Vec::with_capacity(64 << 20);
        b.iter(|| {
            out.clear();
            mesh::write_obj(&parsed, &mut out, &mut Monitor::new()).expect("write");
            black_box(out.len())
        })
    });
    group.bench_function("write_glb_1m_triangles", |b| {
        let mut out = Vec::with_capacity(32 << 20);
        b.iter(|| {
            out.clear();
            mesh::write_glb(&parsed, &mut out, &mut Monitor::new()).expect("write");
            black_box(out.len())
        })
    });
    // The preview (issue 12: under a second on one core for 1M triangles): rasterizing the
    // mesh already in memory at the default 512 px, then encoding the PNG.
    group.bench_function("render_preview_512px_1m_triangles", |b| {
        let mut png = Vec::with_capacity(1 << 20);
        b.iter(|| {
            png.clear();
            let frame = mesh::render_preview(
                &parsed,
                mesh::DEFAULT_PREVIEW_SIZE,
                mesh::UpAxis::Z,
                &mut Monitor::new(),
            )
            .expect("render");
            frame.write_png(&mut png).expect("encode");
            black_box(png.len())
        })
    });
    group.bench_function("render_preview_2048px_1m_triangles", |b| {
        let mut png = Vec::with_capacity(4 << 20);
        b.iter(|| {
            png.clear();
            let frame = mesh::render_preview(
                &parsed,
                mesh::MAX_PREVIEW_SIZE,
                mesh::UpAxis::Z,
                &mut Monitor::new(),
            )
            .expect("render");
            frame.write_png(&mut png).expect("encode");
            black_box(png.len())
        })
    });
    group.finish();
}

// ---------------------------------------------------------------------------------------------
// Image (JPEG, PNG, WebP, GIF, BMP, TIFF)
//
// The stock-image case: a 24-megapixel JPEG (6000x4000, a synthetic photo) to 240p and 720p JPEG
// variants. `benches/converters.sh` times the same work against `vipsthumbnail`.

/// A photo-like RGB image (rows top to bottom): gradients and waves with sensor-like noise, so
/// JPEG coding costs what it does on a photo, not on a flat test card. Same as
/// `examples/image_thumbs.rs`.
fn image_synthetic_photo(width: u32, height: u32) -> Vec<u8> {
    let mut state = 0x9e37_79b9_u32;
    let mut out = Vec::with_capacity(width as usize * height as usize * 3);
    for y in 0..height {
        let fy = f64::from(y) / f64::from(height);
        for x in 0..width {
            let fx = f64::from(x) / f64::from(width);
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let noise = f64::from(state & 15) - 7.5;
            let wave = (fx * 37.0 + (fy * 23.0).sin() * 3.0).sin() * 40.0;
            let channel = |v: f64| (v + noise).clamp(0.0, 255.0) as u8;
            out.push(channel(60.0 + 150.0 * fx + wave));
            out.push(channel(40.0 + 170.0 * fy - wave * 0.5));
            out.push(channel(120.0 + 80.0 * (fx * fy * 9.0).cos() + wave * 0.3));
        }
    }
    out
}

/// An uncompressed 24-bit BMP (bottom-up rows padded to 4 bytes): the converter turns it into
/// the JPEG under test, so the bench needs no image library of its own.
fn image_bmp(width: u32, height: u32, rgb: &[u8]) -> Vec<u8> {
    let row = (width * 3).div_ceil(4) * 4;
    let size = 54 + row * height;
    let mut out = Vec::with_capacity(size as usize);
    out.extend_from_slice(b"BM");
    out.extend_from_slice(&size.to_le_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(&54u32.to_le_bytes());
    out.extend_from_slice(&40u32.to_le_bytes());
    out.extend_from_slice(&width.to_le_bytes());
    out.extend_from_slice(&height.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&24u16.to_le_bytes());
    out.extend_from_slice(&[0; 24]);
    for y in (0..height as usize).rev() {
        let start = y * width as usize * 3;
        for px in rgb[start..start + width as usize * 3].chunks_exact(3) {
            out.extend_from_slice(&[px[2], px[1], px[0]]);
        }
        out.resize(out.len() + (row - width * 3) as usize, 0);
    }
    out
}

/// Runs the image converter on `input` with `options`, writing into `work`; the outputs' paths.
async fn image_convert(
    converter: &ImageConverter,
    input: &Path,
    work: &Path,
    source: &str,
    options: serde_json::Value,
) -> Vec<PathBuf> {
    let ctx =
        ConvertContext::for_file(input.to_path_buf(), work.to_path_buf(), Arc::new(|_, _| {}));
    let request = ConvertRequest {
        id: ConversionId::new(),
        attempt: 1,
        source: Format::new(source).expect("format"),
        target: Format::new("jpeg").expect("jpeg"),
        options,
    };
    let outputs = converter.convert(&request, &ctx).await.expect("convert");
    outputs
        .into_iter()
        .map(|o| match o.body {
            OutputBody::File(p) => p,
            OutputBody::Bytes(_) => panic!("expected file outputs"),
        })
        .collect()
}

fn image_benches(c: &mut Criterion) {
    let scratch = Scratch::new("image");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let converter = ImageConverter::new(ImageConfig::default());
    let (width, height) = (6000, 4000);
    let bmp = scratch.path().join("photo.bmp");
    std::fs::write(
        &bmp,
        image_bmp(width, height, &image_synthetic_photo(width, height)),
    )
    .expect("write bmp");
    let made = runtime.block_on(image_convert(
        &converter,
        &bmp,
        scratch.path(),
        "bmp",
        serde_json::json!({"quality": 90}),
    ));
    let photo = scratch.path().join("photo.jpeg");
    std::fs::rename(&made[0], &photo).expect("move jpeg");
    std::fs::remove_file(&bmp).expect("remove bmp");
    let work = scratch.path().join("thumbs");
    std::fs::create_dir_all(&work).expect("work dir");

    let mut group = c.benchmark_group("image");
    group.sample_size(10);
    group.throughput(Throughput::Bytes(
        std::fs::metadata(&photo).expect("photo").len(),
    ));
    group.bench_function("jpeg_24mp_to_240p_720p", |b| {
        b.iter(|| {
            black_box(runtime.block_on(image_convert(
                &converter,
                &photo,
                &work,
                "jpeg",
                serde_json::json!({"variants": "240p,720p", "quality": 85}),
            )))
        })
    });
    group.finish();
}

#[allow(missing_docs)] // criterion_group! generates an undocumented function.
mod group {
    criterion::criterion_group!(benches, super::mesh_benches, super::image_benches);
}
criterion_main!(group::benches);

//! Converts a mesh file with the built-in mesh converter (the preview lands beside the output,
//! as `OUT.preview.png`), or generates a large test STL.
//!
//! ```sh
//! cargo run --release --features mesh --example mesh_convert -- in.stl out.obj [ascii|binary|OPTIONS_JSON]
//! cargo run --release --features mesh --example mesh_convert -- generate big.stl 1000000
//! cargo run --release --features mesh --example mesh_convert -- generate big-ascii.stl 260000 ascii
//! ```
//!
//! `benches/converters.sh` uses it to time converto against `assimp export`.

#[cfg(feature = "mesh")]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    use std::path::PathBuf;
    use std::sync::Arc;

    use converto::adapters::mesh::MeshConverter;
    use converto::{ConversionId, ConvertContext, ConvertRequest, Converter, Format};

    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [verb, out, triangles, rest @ ..] if verb == "generate" => {
            let binary = bumpy_grid_stl(triangles.parse()?);
            let bytes = match rest {
                [] => binary,
                [encoding] if encoding == "ascii" => ascii_stl(&binary),
                _ => return Err("generate OUT.stl TRIANGLES [ascii]".into()),
            };
            std::fs::write(out, bytes)?;
            Ok(())
        }
        [input, output, rest @ ..] => {
            let input = PathBuf::from(input);
            let output = PathBuf::from(output);
            let format = |p: &PathBuf| {
                p.file_name()
                    .and_then(|n| Format::from_file_name(&n.to_string_lossy()))
                    .ok_or_else(|| format!("{}: no format extension", p.display()))
            };
            // `ascii`/`binary`, or the options as JSON (`'{"preview": false}'`).
            let options = match rest.first() {
                Some(json) if json.starts_with('{') => serde_json::from_str(json)?,
                Some(encoding) => serde_json::json!({ "encoding": encoding }),
                None => serde_json::Value::Null,
            };
            let request = ConvertRequest {
                id: ConversionId::new(),
                attempt: 1,
                source: format(&input)?,
                target: format(&output)?,
                options,
            };
            let work = tempfile_dir(&output)?;
            let ctx = ConvertContext::for_file(input, work.clone(), Arc::new(|_, _| {}));
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .build()?;
            let converted = runtime.block_on(MeshConverter::new().convert(&request, &ctx));
            // The converted file goes to OUT, the preview beside it (OUT.preview.png).
            let moved = converted.map(|outputs| {
                outputs.into_iter().enumerate().try_for_each(|(i, o)| {
                    let to = if i == 0 {
                        output.clone()
                    } else {
                        let mut name = output.file_name().unwrap_or_default().to_os_string();
                        name.push(format!(".{}", o.name));
                        output.with_file_name(name)
                    };
                    match o.body {
                        converto::core::converter::OutputBody::File(path) => {
                            std::fs::rename(path, &to)
                        }
                        converto::core::converter::OutputBody::Bytes(bytes) => {
                            std::fs::write(&to, bytes)
                        }
                    }
                })
            });
            std::fs::remove_dir_all(work)?;
            moved??;
            Ok(())
        }
        _ => Err(
            "usage: mesh_convert IN OUT [ascii|binary|OPTIONS_JSON] | mesh_convert generate OUT.stl TRIANGLES [ascii]"
                .into(),
        ),
    }
}

/// A scratch directory next to the output.
#[cfg(feature = "mesh")]
fn tempfile_dir(output: &std::path::Path) -> std::io::Result<std::path::PathBuf> {
    let parent = output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let dir = parent.join(format!(".mesh_convert-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// A binary STL of about `triangles` triangles: a bumpy square grid, two triangles per cell.
#[cfg(feature = "mesh")]
fn bumpy_grid_stl(triangles: usize) -> Vec<u8> {
    let n = ((triangles / 2) as f64).sqrt().ceil().max(1.0) as usize;
    let count = 2 * n * n;
    let height = |i: usize, j: usize| {
        let (x, y) = (i as f32 * 0.01, j as f32 * 0.01);
        [x, y, (x * 7.0).sin() * (y * 5.0).cos() * 0.25]
    };
    let mut out = Vec::with_capacity(84 + 50 * count);
    out.extend_from_slice(&[b' '; 80]);
    out.extend_from_slice(&(count as u32).to_le_bytes());
    for i in 0..n {
        for j in 0..n {
            let (a, b, c, d) = (
                height(i, j),
                height(i + 1, j),
                height(i + 1, j + 1),
                height(i, j + 1),
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

/// The binary STL `binary` (as [`bumpy_grid_stl`] makes it) as ASCII STL, numbers written the
/// way C's `%e` writes them (`-1.234568e-01`), as many CAD exporters do.
#[cfg(feature = "mesh")]
fn ascii_stl(binary: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut out = Vec::with_capacity(binary.len() * 6);
    let e = |v: f32| {
        // Rust's `{:e}` writes `e-1`; C's `%e` writes `e-01`.
        let s = format!("{v:.6e}");
        match s.split_once('e') {
            Some((m, x)) => {
                let (sign, digits) = x.strip_prefix('-').map_or(("+", x), |d| ("-", d));
                format!("{m}e{sign}{digits:0>2}")
            }
            None => s,
        }
    };
    let _ = writeln!(out, "solid bumpy_grid");
    for record in binary.get(84..).unwrap_or_default().chunks_exact(50) {
        let f = |at: usize| {
            record
                .get(at..at + 4)
                .and_then(|b| b.try_into().ok())
                .map_or(0.0, f32::from_le_bytes)
        };
        let _ = writeln!(out, "  facet normal {} {} {}", e(f(0)), e(f(4)), e(f(8)));
        let _ = writeln!(out, "    outer loop");
        for corner in 0..3 {
            let at = 12 + corner * 12;
            let _ = writeln!(
                out,
                "      vertex {} {} {}",
                e(f(at)),
                e(f(at + 4)),
                e(f(at + 8))
            );
        }
        let _ = writeln!(out, "    endloop");
        let _ = writeln!(out, "  endfacet");
    }
    let _ = writeln!(out, "endsolid bumpy_grid");
    out
}

#[cfg(not(feature = "mesh"))]
fn main() {
    eprintln!("build with --features mesh");
}

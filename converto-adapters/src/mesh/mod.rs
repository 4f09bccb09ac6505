//! A pure-Rust converter between the triangle-mesh formats STL, OBJ, PLY and glTF binary
//! (GLB), with a rendered preview.
//!
//! [`MeshConverter`] serves every route between `stl`, `obj`, `ply` and `glb`. It reads the
//! whole mesh into an indexed [`Mesh`] (positions, triangles and, for STL, a vertex hash:
//! roughly 30 bytes per triangle, less than the input file; no allocation is sized by a count
//! the file declares unless the file size can hold it) on a blocking thread, then writes the
//! target and renders `preview.png` from the same mesh (see [`render_preview`]).
//! Texture coordinates, normals, colours, materials, groups, points and lines are not carried
//! over: the output is the triangle geometry. GLB scenes are flattened: each node's mesh is
//! placed by the node's transform.
//!
//! A conversion's artifacts are `output.<target>` first, then `preview.png` (unless the
//! `preview` option is `false`): the model drawn by a software rasterizer at a fixed
//! three-quarter angle, fitted to the frame, flat shaded, on a transparent background. A mesh
//! whose triangles all have zero area gets a blank (transparent) preview: the converted file
//! is still valid, so the conversion succeeds. A file with no triangles at all fails before
//! (`no faces`), as it always did.
//!
//! Options (a JSON object, all optional; [`MeshConverter`] publishes them as a JSON Schema
//! through [`Converter::options_schema`]):
//!
//! | key | values | default |
//! |---|---|---|
//! | `encoding` | `"binary"` or `"ascii"`: how STL and PLY are written (OBJ is always text, GLB always binary) | `"binary"` |
//! | `preview` | `true` or `false`: also render `preview.png` | `true` |
//! | `preview_size` | the preview's edge in pixels, a whole number from 64 to 2048 | 512 |
//!
//! Every corrupt, truncated or hostile input fails with [`ConvertError::InvalidInput`] and a
//! reason naming the line or record; the lower-level [`read_mesh`] and [`write_mesh`] work on
//! any reader and writer.
//!
//! # Limits and memory
//!
//! [`MeshLimits`] bounds the triangles, vertices, corners per polygon, text line length and
//! output bytes of a conversion; over a limit the conversion fails with
//! [`ConvertError::TooLarge`] before the memory is allocated. Counts a file declares (binary
//! STL triangle count, PLY element and list counts, GLB chunk lengths and accessor counts)
//! size nothing unless the file's remaining bytes can hold them; polygons are
//! fan-triangulated as their corners are read; vectors grow by doubling but never past what
//! the bytes left in the file could fill.
//!
//! **Peak heap is at most 16 x the input's size + 16 MiB** (with the default 4 MiB line
//! limit; the constant is 2 x `max_line_bytes` + 8 MiB), **plus 4 bytes a preview pixel**
//! (1 MiB at the default 512 px, 16 MiB at 2048 px: the renderer keeps one `u32` of depth
//! and shade a pixel and draws from the mesh already in memory, allocating nothing per
//! triangle). The worst case is a binary PLY whose faces are long lists of one-byte (`uchar`)
//! indices: each byte is one more 12-byte triangle. Text formats need at least 2 bytes a
//! corner (6 x), binary STL 50 bytes a triangle (under 4 x with the vertex table). A GLB is
//! held whole while read (1 x) beside its geometry, which may not exceed 14 x the file size
//! once instanced (a mesh used by many nodes is placed once per node); its JSON chunk is
//! capped at 1 MiB. Reading an ASCII STL holds at most three 264 KiB blocks of text;
//! writing adds at most a few hundred KiB of formatted text (OBJ: four pieces of 4 096
//! lines). The mesh tests measure this on
//! crafted worst cases with a counting allocator.
//!
//! # Cancellation
//!
//! Reading checks the job's token on every read of the input (at most 256 KiB apart), writing
//! at least every 16 384 records and rendering every 65 536 triangles; the async side waits for the
//! blocking task to end before it returns [`ConvertError::Cancelled`], so the worker's slot
//! is not freed while work goes on.
//!
//! # Threads
//!
//! An ASCII STL of 2 MiB or more is parsed, and an OBJ of 65 536 lines or more formatted, on
//! one scoped helper thread besides the blocking thread (an STL's blocks go to the helper,
//! the blocking thread reading and applying them; OBJ pieces are formatted by either thread,
//! whichever is free); blocks are applied or written in order, so the mesh, the output bytes
//! and the errors are those of doing it all on one thread.

mod error;
mod glb;
mod limits;
mod model;
mod obj;
mod pipeline;
mod ply;
mod preview;
mod stl;
mod stl_ascii;
mod text;
mod write;

use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use converto_core::{
    ConvertContext, ConvertError, ConvertRequest, Converter, Format, Output, Route,
};
use tokio_util::sync::CancellationToken;

pub use error::{Location, MeshError, Reason};
pub use glb::{read_glb, read_glb_limited, write_glb};
pub use limits::MeshLimits;
pub use model::{Encoding, Mesh, MeshFormat, Monitor, Stage};
pub use obj::{read_obj, read_obj_limited, write_obj};
pub use ply::{read_ply, read_ply_limited, write_ply_ascii, write_ply_binary};
pub use preview::{
    DEFAULT_PREVIEW_SIZE, Frame, MAX_PREVIEW_SIZE, MIN_PREVIEW_SIZE, UpAxis,
    render as render_preview,
};
pub use stl::{read_stl, read_stl_limited, write_stl_ascii, write_stl_binary};

use model::ProgressReader;

/// Reads a mesh of `format` from `reader`, whose length is `size` bytes (used to tell binary
/// from ASCII STL, to cap allocations declared by the file, and for progress).
///
/// The reader is buffered here; progress (percent of `size` read) and cancellation go through
/// `monitor`. Uses the default [`MeshLimits`].
pub fn read_mesh<R: Read>(
    reader: R,
    format: MeshFormat,
    size: u64,
    monitor: &mut Monitor<'_>,
) -> Result<Mesh, MeshError> {
    read_mesh_limited(reader, format, size, &MeshLimits::default(), monitor)
}

/// [`read_mesh`] within `limits`.
pub fn read_mesh_limited<R: Read>(
    reader: R,
    format: MeshFormat,
    size: u64,
    limits: &MeshLimits,
    monitor: &mut Monitor<'_>,
) -> Result<Mesh, MeshError> {
    let counted = ProgressReader {
        inner: reader,
        done: 0,
        total: size,
        monitor,
    };
    let capacity = match format {
        MeshFormat::Stl => stl_ascii::STL_BUFFER,
        _ => 256 * 1024,
    };
    let buffered = BufReader::with_capacity(capacity, counted);
    let mesh = match format {
        MeshFormat::Stl => read_stl_limited(buffered, size, limits)?,
        MeshFormat::Obj => read_obj_limited(buffered, Some(size).filter(|&s| s > 0), limits)?,
        MeshFormat::Ply => read_ply_limited(buffered, size, limits)?,
        MeshFormat::Glb => read_glb_limited(buffered, size, limits)?,
    };
    mesh.validate(format)?;
    Ok(mesh)
}

/// Writes `mesh` as `format` (`encoding` applies to STL and PLY; OBJ is always text, GLB
/// always binary).
pub fn write_mesh<W: Write>(
    mesh: &Mesh,
    format: MeshFormat,
    encoding: Encoding,
    writer: W,
    monitor: &mut Monitor<'_>,
) -> Result<(), MeshError> {
    mesh.validate(format)?;
    match (format, encoding) {
        (MeshFormat::Stl, Encoding::Binary) => write_stl_binary(mesh, writer, monitor),
        (MeshFormat::Stl, Encoding::Ascii) => write_stl_ascii(mesh, writer, monitor),
        (MeshFormat::Obj, _) => write_obj(mesh, writer, monitor),
        (MeshFormat::Ply, Encoding::Binary) => write_ply_binary(mesh, writer, monitor),
        (MeshFormat::Ply, Encoding::Ascii) => write_ply_ascii(mesh, writer, monitor),
        (MeshFormat::Glb, _) => write_glb(mesh, writer, monitor),
    }
}

/// The options [`MeshConverter`] accepts (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct MeshOptions {
    /// How STL and PLY are written; `None` for the default (binary).
    pub encoding: Option<Encoding>,
    /// Whether to render `preview.png`.
    pub preview: bool,
    /// The preview's edge in pixels, within [`MIN_PREVIEW_SIZE`]..=[`MAX_PREVIEW_SIZE`].
    pub preview_size: u32,
}

impl Default for MeshOptions {
    fn default() -> Self {
        Self {
            encoding: None,
            preview: true,
            preview_size: DEFAULT_PREVIEW_SIZE,
        }
    }
}

/// What the options accept, for error messages.
const SUPPORTED_OPTIONS: &str = "{\"encoding\": \"binary\" | \"ascii\", \"preview\": true | false, \"preview_size\": 64..=2048}";

impl MeshOptions {
    /// Parses the request's options (`null` or an object) for a conversion to `target`.
    ///
    /// Accepts exactly what [`MeshOptions::schema`] describes: no other keys, no `null` values,
    /// `preview_size` a whole number (`512` or `512.0`) in range.
    pub fn from_json(
        options: &serde_json::Value,
        target: MeshFormat,
    ) -> Result<Self, ConvertError> {
        let invalid = |why: String| {
            ConvertError::InvalidOptions(format!(
                "mesh options: {why} (supported: {SUPPORTED_OPTIONS})"
            ))
        };
        let mut parsed = MeshOptions::default();
        let map = match options {
            serde_json::Value::Null => return Ok(parsed),
            serde_json::Value::Object(map) => map,
            other => return Err(invalid(format!("expected an object, got {other}"))),
        };
        for (key, value) in map {
            match key.as_str() {
                "encoding" => {
                    parsed.encoding = Some(match value.as_str() {
                        Some("binary") => Encoding::Binary,
                        Some("ascii") => Encoding::Ascii,
                        _ => {
                            return Err(invalid(format!(
                                "\"encoding\" must be \"binary\" or \"ascii\", not {value}"
                            )));
                        }
                    });
                }
                "preview" => {
                    parsed.preview = value.as_bool().ok_or_else(|| {
                        invalid(format!("\"preview\" must be true or false, not {value}"))
                    })?;
                }
                "preview_size" => {
                    let whole = value.as_u64().or_else(|| {
                        value
                            .as_f64()
                            .filter(|v| v.fract() == 0.0 && *v >= 0.0)
                            .map(|v| v as u64)
                    });
                    parsed.preview_size = whole
                        .filter(|v| (u64::from(MIN_PREVIEW_SIZE)..=u64::from(MAX_PREVIEW_SIZE)).contains(v))
                        .map(|v| v as u32)
                        .ok_or_else(|| {
                            invalid(format!(
                                "\"preview_size\" must be a whole number from {MIN_PREVIEW_SIZE} to {MAX_PREVIEW_SIZE}, not {value}"
                            ))
                        })?;
                }
                other => {
                    return Err(invalid(format!(
                        "unknown option {:?}",
                        other.chars().take(40).collect::<String>()
                    )));
                }
            }
        }
        match (target, parsed.encoding) {
            (MeshFormat::Obj, Some(Encoding::Binary)) => Err(ConvertError::InvalidOptions(
                "mesh options: OBJ is a text format; \"encoding\": \"binary\" applies only to stl and ply targets"
                    .into(),
            )),
            (MeshFormat::Glb, Some(Encoding::Ascii)) => Err(ConvertError::InvalidOptions(
                "mesh options: GLB is a binary format; \"encoding\": \"ascii\" applies only to stl, obj and ply targets"
                    .into(),
            )),
            _ => Ok(parsed),
        }
    }

    /// The JSON Schema (draft 2020-12) of the options for a conversion to `target`: exactly
    /// what [`MeshOptions::from_json`] accepts.
    pub fn schema(target: MeshFormat) -> serde_json::Value {
        let (encodings, default): (&[&str], &str) = match target {
            MeshFormat::Obj => (&["ascii"], "ascii"),
            MeshFormat::Glb => (&["binary"], "binary"),
            MeshFormat::Stl | MeshFormat::Ply => (&["binary", "ascii"], "binary"),
        };
        serde_json::json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": format!("mesh options ({})", target.extension()),
            "type": "object",
            "additionalProperties": false,
            "properties": {
                "encoding": {
                    "title": "Encoding",
                    "description": "How the output is written: binary is compact and fast, ascii human-readable. OBJ is always text, GLB always binary.",
                    "enum": encodings,
                    "default": default,
                },
                "preview": {
                    "title": "Preview",
                    "description": "Also render preview.png: the model, shaded, at a fixed three-quarter angle.",
                    "type": "boolean",
                    "default": true,
                },
                "preview_size": {
                    "title": "Preview size",
                    "description": "The preview's width and height, in pixels.",
                    "type": "integer",
                    "minimum": MIN_PREVIEW_SIZE,
                    "maximum": MAX_PREVIEW_SIZE,
                    "default": DEFAULT_PREVIEW_SIZE,
                },
            },
        })
    }
}

/// Converts between STL, OBJ, PLY and GLB, in pure Rust, within [`MeshLimits`], and renders a
/// preview.
#[derive(Debug, Clone, Default)]
pub struct MeshConverter {
    limits: MeshLimits,
}

impl MeshConverter {
    /// The converter, with the default [`MeshLimits`].
    pub fn new() -> Self {
        Self::default()
    }

    /// The converter with these limits.
    pub fn with_limits(limits: MeshLimits) -> Self {
        Self { limits }
    }

    /// Its limits.
    pub fn limits(&self) -> &MeshLimits {
        &self.limits
    }
}

/// Share of the progress bar given to reading.
const READ_SHARE: u32 = 75;
/// Share of the progress bar given to writing (the rest is rendering the preview).
const WRITE_SHARE: u32 = 20;

#[async_trait]
impl Converter for MeshConverter {
    fn name(&self) -> &str {
        "mesh"
    }

    fn routes(&self) -> Vec<Route> {
        Route::all_pairs(&MeshFormat::ALL.map(MeshFormat::format))
    }

    fn check_options(
        &self,
        _source: &Format,
        target: &Format,
        options: &serde_json::Value,
    ) -> Result<(), ConvertError> {
        match MeshFormat::from_format(target) {
            Some(target) => MeshOptions::from_json(options, target).map(|_| ()),
            None => Ok(()),
        }
    }

    fn options_schema(&self, source: &Format, target: &Format) -> Option<serde_json::Value> {
        MeshFormat::from_format(source)?;
        MeshFormat::from_format(target).map(MeshOptions::schema)
    }

    async fn convert(
        &self,
        request: &ConvertRequest,
        ctx: &ConvertContext,
    ) -> Result<Vec<Output>, ConvertError> {
        let unsupported = || ConvertError::Unsupported {
            source_format: request.source.clone(),
            target_format: request.target.clone(),
        };
        let source = MeshFormat::from_format(&request.source).ok_or_else(unsupported)?;
        let target = MeshFormat::from_format(&request.target).ok_or_else(unsupported)?;
        if source == target {
            return Err(unsupported());
        }
        let options = MeshOptions::from_json(&request.options, target)?;
        if ctx.is_cancelled() {
            return Err(ConvertError::Cancelled);
        }
        let input = ctx.input_path().await?.to_path_buf();
        let name = format!("output.{}", target.extension());
        let output_dir = ctx.output_dir().await?;
        let output = output_dir.join(&name);
        let preview = options.preview.then(|| output_dir.join(PREVIEW_NAME));

        let (progress_tx, mut progress_rx) = tokio::sync::watch::channel((0u8, Stage::Reading));
        let job = Job {
            input,
            output: output.clone(),
            source,
            target,
            encoding: options.encoding.unwrap_or_default(),
            preview: preview.clone().map(|path| (path, options.preview_size)),
            cancel: ctx.cancel_token().clone(),
            limits: self.limits.clone(),
        };
        let mut work = tokio::task::spawn_blocking(move || {
            job.run(move |stage, percent| {
                progress_tx.send_replace((percent, stage));
            })
        });
        let joined = loop {
            tokio::select! {
                joined = &mut work => break joined,
                changed = progress_rx.changed() => {
                    if changed.is_err() {
                        break (&mut work).await;
                    }
                    let (percent, stage) = *progress_rx.borrow_and_update();
                    ctx.progress(overall(stage, percent), Some(stage.label()));
                }
            }
        };
        let result = joined.map_err(|e| {
            ConvertError::permanent(
                "mesh_converter_panicked",
                format!("the mesh converter stopped unexpectedly: {e}"),
            )
        })?;
        match result {
            Ok(()) => {
                let mut outputs = vec![Output::file(name, target.format(), output)];
                let stage = match preview {
                    Some(path) => {
                        outputs.push(Output::file(PREVIEW_NAME, png_format(), path));
                        Stage::Rendering
                    }
                    None => Stage::Writing,
                };
                ctx.progress(100, Some(stage.label()));
                Ok(outputs)
            }
            Err(e) => {
                // Leave nothing half-written behind.
                let _ = tokio::fs::remove_file(&output).await;
                if let Some(path) = &preview {
                    let _ = tokio::fs::remove_file(path).await;
                }
                Err(convert_error(e))
            }
        }
    }
}

/// The preview artifact's name.
const PREVIEW_NAME: &str = "preview.png";

fn png_format() -> Format {
    Format::new("png").unwrap_or_else(|_| unreachable!("png is a valid format"))
}

fn overall(stage: Stage, percent: u8) -> u8 {
    let percent = u32::from(percent.min(100));
    let value = match stage {
        Stage::Reading => percent * READ_SHARE / 100,
        Stage::Writing => READ_SHARE + percent * WRITE_SHARE / 100,
        Stage::Rendering => {
            READ_SHARE + WRITE_SHARE + percent * (100 - READ_SHARE - WRITE_SHARE) / 100
        }
    };
    u8::try_from(value).unwrap_or(100)
}

/// Maps a mesh error onto the converter's error: limits are permanent `TooLarge`, content
/// problems permanent `InvalidInput`, I/O on the scratch files is temporary.
fn convert_error(e: MeshError) -> ConvertError {
    match e {
        MeshError::Cancelled => ConvertError::Cancelled,
        MeshError::Io(io) => ConvertError::Io(io),
        MeshError::Preview(why) => ConvertError::permanent(
            "preview_failed",
            format!("the mesh preview could not be rendered: {why}"),
        ),
        e @ (MeshError::LimitExceeded { .. }
        | MeshError::TooLarge { .. }
        | MeshError::Malformed {
            reason: Reason::LineTooLong { .. },
            ..
        }) => ConvertError::TooLarge(e.to_string()),
        other => ConvertError::InvalidInput(other.to_string()),
    }
}

/// One conversion, run on a blocking thread.
struct Job {
    input: PathBuf,
    output: PathBuf,
    source: MeshFormat,
    target: MeshFormat,
    encoding: Encoding,
    /// Where to write the preview, and its size.
    preview: Option<(PathBuf, u32)>,
    cancel: CancellationToken,
    limits: MeshLimits,
}

impl Job {
    fn run(self, report: impl FnMut(Stage, u8) + Send) -> Result<(), MeshError> {
        let mut monitor = Monitor::new()
            .with_cancel(self.cancel.clone())
            .on_progress(report);
        let file = std::fs::File::open(&self.input)?;
        let size = file.metadata()?.len();
        let mesh = read_mesh_limited(file, self.source, size, &self.limits, &mut monitor)?;
        // The output's size is known from the mesh: refuse it before writing a byte.
        MeshLimits::check(
            self.target,
            "output bytes",
            write::output_size(&mesh, self.target, self.encoding),
            self.limits.max_output_bytes,
        )?;
        write_file(
            &mesh,
            &self.output,
            self.target,
            self.encoding,
            &mut monitor,
        )?;
        if let Some((path, size)) = &self.preview {
            let frame = preview::render(&mesh, *size, UpAxis::of(self.source), &mut monitor)?;
            let mut writer = BufWriter::with_capacity(64 * 1024, std::fs::File::create(path)?);
            frame.write_png(&mut writer)?;
            writer.flush()?;
        }
        Ok(())
    }
}

fn write_file(
    mesh: &Mesh,
    path: &Path,
    format: MeshFormat,
    encoding: Encoding,
    monitor: &mut Monitor<'_>,
) -> Result<(), MeshError> {
    let file = std::fs::File::create(path)?;
    // The writers hand over blocks of about 100 KiB (OBJ pieces) or 256 KiB (the others):
    // this buffer only gathers what is smaller (headers, a last block); larger writes go
    // straight to the file, without being copied through it (which a 256 KiB buffer did to
    // every OBJ piece: 35 MB for the 1-million-triangle bench mesh, and 192 KiB more memory).
    let mut writer = BufWriter::with_capacity(64 * 1024, file);
    write_mesh(mesh, format, encoding, &mut writer, monitor)?;
    // No fsync: the scratch file is streamed to the blob store next, and a crash before that
    // retries the whole job anyway.
    writer.flush()?;
    Ok(())
}

//! A pure-Rust converter between the triangle-mesh formats STL, OBJ and PLY.
//!
//! [`MeshConverter`] serves every route between `stl`, `obj` and `ply`. It reads the whole mesh
//! into an indexed [`Mesh`] (positions, triangles and, for STL, a vertex hash: roughly 30 bytes
//! per triangle, less than the input file; no allocation is sized by a count the file declares
//! unless the file size can hold it) on a blocking thread, then writes the target.
//! Texture coordinates, normals, colours, materials, groups, points and lines are not carried
//! over: the output is the triangle geometry.
//!
//! Options (a JSON object, all optional):
//!
//! | key | values | default |
//! |---|---|---|
//! | `encoding` | `"binary"` or `"ascii"`: how STL and PLY are written (OBJ is always text) | `"binary"` |
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
//! STL triangle count, PLY element and list counts) size nothing unless the file's remaining
//! bytes can hold them; polygons are fan-triangulated as their corners are read; vectors grow
//! by doubling but never past what the bytes left in the file could fill.
//!
//! **Peak heap is at most 16 x the input's size + 16 MiB** (with the default 4 MiB line
//! limit; the constant is 2 x `max_line_bytes` + 8 MiB). The worst case is a binary PLY
//! whose faces are long lists of one-byte (`uchar`) indices: each byte is one more 12-byte
//! triangle. Text formats need at least 2 bytes a corner (6 x), binary STL 50 bytes a
//! triangle (under 4 x with the vertex table). Writing adds only a 256 KiB buffer. The
//! mesh tests measure this on crafted worst cases with a counting allocator.
//!
//! # Cancellation
//!
//! Reading checks the job's token on every read of the input (at most 256 KiB apart) and
//! writing every 16 384 records; the async side waits for the blocking task to end before it
//! returns [`ConvertError::Cancelled`], so the worker's slot is not freed while work goes on.

mod error;
mod limits;
mod model;
mod obj;
mod ply;
mod stl;
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
pub use limits::MeshLimits;
pub use model::{Encoding, Mesh, MeshFormat, Monitor, Stage};
pub use obj::{read_obj, read_obj_limited, write_obj};
pub use ply::{read_ply, read_ply_limited, write_ply_ascii, write_ply_binary};
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
    let buffered = BufReader::with_capacity(256 * 1024, counted);
    let mesh = match format {
        MeshFormat::Stl => read_stl_limited(buffered, size, limits)?,
        MeshFormat::Obj => read_obj_limited(buffered, Some(size).filter(|&s| s > 0), limits)?,
        MeshFormat::Ply => read_ply_limited(buffered, size, limits)?,
    };
    mesh.validate(format)?;
    Ok(mesh)
}

/// Writes `mesh` as `format` (`encoding` applies to STL and PLY; OBJ is always text).
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
    }
}

/// The options [`MeshConverter`] accepts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeshOptions {
    /// How STL and PLY are written.
    #[serde(default)]
    pub encoding: Option<Encoding>,
}

impl MeshOptions {
    /// Parses the request's options (`null` or an object) for a conversion to `target`.
    pub fn from_json(
        options: &serde_json::Value,
        target: MeshFormat,
    ) -> Result<Self, ConvertError> {
        let parsed: MeshOptions = match options {
            serde_json::Value::Null => MeshOptions::default(),
            value => serde::Deserialize::deserialize(value).map_err(|e| {
                ConvertError::InvalidOptions(format!(
                    "mesh options: {e} (supported: {{\"encoding\": \"binary\" | \"ascii\"}})"
                ))
            })?,
        };
        if target == MeshFormat::Obj && parsed.encoding == Some(Encoding::Binary) {
            return Err(ConvertError::InvalidOptions(
                "mesh options: OBJ is a text format; \"encoding\": \"binary\" applies only to stl and ply targets"
                    .into(),
            ));
        }
        Ok(parsed)
    }
}

/// Converts between STL, OBJ and PLY, in pure Rust, within [`MeshLimits`].
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

/// Share of the progress bar given to reading (the rest is writing).
const READ_SHARE: u32 = 80;

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
        let output = ctx.output_dir().await?.join(&name);

        let (progress_tx, mut progress_rx) = tokio::sync::watch::channel((0u8, Stage::Reading));
        let job = Job {
            input,
            output: output.clone(),
            source,
            target,
            encoding: options.encoding.unwrap_or_default(),
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
                ctx.progress(100, Some(Stage::Writing.label()));
                Ok(vec![Output::file(name, target.format(), output)])
            }
            Err(e) => {
                // Leave nothing half-written behind.
                let _ = tokio::fs::remove_file(&output).await;
                Err(convert_error(e))
            }
        }
    }
}

fn overall(stage: Stage, percent: u8) -> u8 {
    let percent = u32::from(percent.min(100));
    let value = match stage {
        Stage::Reading => percent * READ_SHARE / 100,
        Stage::Writing => READ_SHARE + percent * (100 - READ_SHARE) / 100,
    };
    u8::try_from(value).unwrap_or(100)
}

/// Maps a mesh error onto the converter's error: limits are permanent `TooLarge`, content
/// problems permanent `InvalidInput`, I/O on the scratch files is temporary.
fn convert_error(e: MeshError) -> ConvertError {
    match e {
        MeshError::Cancelled => ConvertError::Cancelled,
        MeshError::Io(io) => ConvertError::Io(io),
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
        )
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
    let mut writer = BufWriter::with_capacity(256 * 1024, file);
    write_mesh(mesh, format, encoding, &mut writer, monitor)?;
    // No fsync: the scratch file is streamed to the blob store next, and a crash before that
    // retries the whole job anyway.
    writer.flush()?;
    Ok(())
}

//! The `Converter` trait and the context a conversion runs in.

use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::TryStreamExt;
use tokio::io::AsyncWriteExt;
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

use crate::blob::{BlobError, BlobStore, ByteStream};
use crate::{ConversionId, Format};

/// A `dyn Converter`.
pub type DynConverter = dyn Converter;

/// One conversion a converter can do.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct Route {
    /// From.
    pub source: Format,
    /// To.
    pub target: Format,
}

impl Route {
    /// A route.
    pub fn new(source: Format, target: Format) -> Self {
        Self { source, target }
    }

    /// A route from two format names, validated.
    pub fn parse(source: &str, target: &str) -> Result<Self, crate::ParseFormatError> {
        Ok(Self::new(Format::new(source)?, Format::new(target)?))
    }

    /// Every pair `source -> target` with `source != target`, from one list of formats.
    pub fn all_pairs(formats: &[Format]) -> Vec<Route> {
        let mut out = Vec::new();
        for s in formats {
            for t in formats {
                if s != t {
                    out.push(Route::new(s.clone(), t.clone()));
                }
            }
        }
        out
    }
}

/// What to convert.
#[derive(Debug, Clone, PartialEq)]
pub struct ConvertRequest {
    /// The conversion.
    pub id: ConversionId,
    /// The attempt (1 for the first).
    pub attempt: u32,
    /// Input format.
    pub source: Format,
    /// Wanted format.
    pub target: Format,
    /// The user's options (a JSON object, or null).
    pub options: serde_json::Value,
}

/// Where an output's bytes are.
#[derive(Debug, Clone)]
pub enum OutputBody {
    /// A file the converter wrote (normally under [`ConvertContext::output_dir`]).
    File(PathBuf),
    /// Bytes in memory (for small outputs).
    Bytes(Bytes),
}

/// One output of a conversion.
#[derive(Debug, Clone)]
pub struct Output {
    /// The artifact name, unique within the conversion: a safe file name such as `output.obj`.
    pub name: String,
    /// Its format.
    pub format: Format,
    /// Its bytes.
    pub body: OutputBody,
}

impl Output {
    /// An output written to a file.
    pub fn file(name: impl Into<String>, format: Format, path: impl Into<PathBuf>) -> Self {
        Self {
            name: name.into(),
            format,
            body: OutputBody::File(path.into()),
        }
    }

    /// An output held in memory.
    pub fn bytes(name: impl Into<String>, format: Format, bytes: impl Into<Bytes>) -> Self {
        Self {
            name: name.into(),
            format,
            body: OutputBody::Bytes(bytes.into()),
        }
    }
}

/// The errors of a [`Converter`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConvertError {
    /// The input is corrupt, truncated or not what its format says (permanent).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The options are wrong (permanent).
    #[error("invalid options: {0}")]
    InvalidOptions(String),
    /// The converter does not serve this route (permanent).
    #[error("no conversion from {source_format} to {target_format}")]
    Unsupported {
        /// From.
        source_format: Format,
        /// To.
        target_format: Format,
    },
    /// The input is larger than the converter allows (permanent).
    #[error("input too large: {0}")]
    TooLarge(String),
    /// The converter failed; `temporary` says whether another attempt may work.
    #[error("{message}")]
    Failed {
        /// A stable code, e.g. `converter_failed` or `converter_exit_3`.
        code: String,
        /// What happened.
        message: String,
        /// Whether another attempt may work.
        temporary: bool,
    },
    /// Cancelled through the context's token.
    #[error("cancelled")]
    Cancelled,
    /// Reading the input blob failed.
    #[error("input blob: {0}")]
    Blob(#[from] BlobError),
    /// Local I/O failed (scratch space): temporary.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

impl ConvertError {
    /// Whether another attempt may succeed.
    pub fn is_temporary(&self) -> bool {
        match self {
            ConvertError::Failed { temporary, .. } => *temporary,
            ConvertError::Io(_) => true,
            ConvertError::Blob(e) => e.is_temporary(),
            _ => false,
        }
    }

    /// A stable machine-readable code.
    pub fn code(&self) -> &str {
        match self {
            ConvertError::InvalidInput(_) => "invalid_input",
            ConvertError::InvalidOptions(_) => "invalid_options",
            ConvertError::Unsupported { .. } => "unsupported_route",
            ConvertError::TooLarge(_) => "input_too_large",
            ConvertError::Failed { code, .. } => code,
            ConvertError::Cancelled => "cancelled",
            ConvertError::Blob(_) => "input_unavailable",
            ConvertError::Io(_) => "io_error",
        }
    }

    /// A permanent failure with a code.
    pub fn permanent(code: impl Into<String>, message: impl Into<String>) -> Self {
        ConvertError::Failed {
            code: code.into(),
            message: message.into(),
            temporary: false,
        }
    }

    /// A temporary failure with a code.
    pub fn temporary(code: impl Into<String>, message: impl Into<String>) -> Self {
        ConvertError::Failed {
            code: code.into(),
            message: message.into(),
            temporary: true,
        }
    }
}

/// Receives progress reports (0 to 100, with an optional stage).
pub type ProgressFn = Arc<dyn Fn(u8, Option<&str>) + Send + Sync>;

#[derive(Debug)]
enum InputSource {
    Blob {
        store: Arc<dyn BlobStore>,
        key: String,
    },
    File(PathBuf),
}

/// What a converter gets besides the request: its input, scratch space, a progress sink and a
/// cancellation token.
///
/// The input is staged lazily: [`ConvertContext::input_path`] streams the input blob into the
/// scratch directory on first call, so a converter that reads the blob as a stream
/// ([`ConvertContext::input_stream`]) or needs no input pays for no file.
pub struct ConvertContext {
    input: InputSource,
    input_name: String,
    scratch_root: PathBuf,
    scratch: OnceCell<tempfile::TempDir>,
    fixed_dir: Option<PathBuf>,
    staged: OnceCell<PathBuf>,
    output_dir: OnceCell<PathBuf>,
    progress: ProgressFn,
    cancel: CancellationToken,
}

impl Debug for ConvertContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConvertContext")
            .field("input", &self.input)
            .field("scratch_root", &self.scratch_root)
            .finish_non_exhaustive()
    }
}

impl ConvertContext {
    /// A context whose input is a blob, with scratch space in a new directory under
    /// `scratch_root` (removed when the context is dropped). Used by the engine.
    pub fn for_blob(
        store: Arc<dyn BlobStore>,
        key: String,
        input_name: String,
        scratch_root: PathBuf,
        progress: ProgressFn,
        cancel: CancellationToken,
    ) -> Self {
        Self {
            input: InputSource::Blob { store, key },
            input_name,
            scratch_root,
            scratch: OnceCell::new(),
            fixed_dir: None,
            staged: OnceCell::new(),
            output_dir: OnceCell::new(),
            progress,
            cancel,
        }
    }

    /// A context over a local input file, writing outputs into `work_dir` (which must exist and
    /// is kept). For using a converter without the engine (tests, the CLI).
    pub fn for_file(input: PathBuf, work_dir: PathBuf, progress: ProgressFn) -> Self {
        let input_name = input
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "input".into());
        Self {
            input: InputSource::File(input),
            input_name,
            scratch_root: work_dir.clone(),
            scratch: OnceCell::new(),
            fixed_dir: Some(work_dir),
            staged: OnceCell::new(),
            output_dir: OnceCell::new(),
            progress,
            cancel: CancellationToken::new(),
        }
    }

    /// Replaces the cancellation token.
    pub fn with_cancel(mut self, cancel: CancellationToken) -> Self {
        self.cancel = cancel;
        self
    }

    /// The token that is cancelled when the conversion is cancelled or timed out. Long
    /// converters check it (or select on `cancelled()`) and return [`ConvertError::Cancelled`].
    pub fn cancel_token(&self) -> &CancellationToken {
        &self.cancel
    }

    /// Whether the conversion was cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Reports progress; the engine throttles and keeps it monotonic.
    pub fn progress(&self, percent: u8, stage: Option<&str>) {
        (self.progress)(percent.min(100), stage);
    }

    /// The progress sink itself, for a converter that hands work to others (a
    /// [`ChainConverter`](crate::chain::ChainConverter) scales each hop's reports into it).
    pub fn progress_fn(&self) -> ProgressFn {
        Arc::clone(&self.progress)
    }

    /// This job's scratch directory, created on first use.
    pub async fn scratch_dir(&self) -> Result<&Path, ConvertError> {
        if let Some(dir) = &self.fixed_dir {
            return Ok(dir);
        }
        let root = self.scratch_root.clone();
        let dir = self
            .scratch
            .get_or_try_init(|| async move {
                tokio::fs::create_dir_all(&root).await?;
                tokio::task::spawn_blocking(move || {
                    tempfile::Builder::new().prefix("job-").tempdir_in(root)
                })
                .await
                .map_err(std::io::Error::other)?
            })
            .await?;
        Ok(dir.path())
    }

    /// A directory for outputs (inside the scratch directory), created on first use.
    pub async fn output_dir(&self) -> Result<&Path, ConvertError> {
        let scratch = self.scratch_dir().await?.to_path_buf();
        let dir = self
            .output_dir
            .get_or_try_init(|| async move {
                let dir = scratch.join("out");
                tokio::fs::create_dir_all(&dir).await?;
                Ok::<_, std::io::Error>(dir)
            })
            .await?;
        Ok(dir)
    }

    /// The input's (sanitised) file name.
    pub fn input_name(&self) -> &str {
        &self.input_name
    }

    /// The input as a local file, streamed from the blob store on first call.
    pub async fn input_path(&self) -> Result<&Path, ConvertError> {
        let path = self
            .staged
            .get_or_try_init(|| async {
                match &self.input {
                    InputSource::File(p) => Ok(p.clone()),
                    InputSource::Blob { store, key } => {
                        let dir = self.scratch_dir().await?.to_path_buf();
                        let ext = Path::new(&self.input_name)
                            .extension()
                            .map(|e| format!(".{}", e.to_string_lossy()))
                            .unwrap_or_default();
                        let path = dir.join(format!("input{ext}"));
                        let read = store.get(key, None).await?;
                        let mut file = tokio::fs::File::create(&path).await?;
                        let mut body = read.body;
                        while let Some(chunk) = body.try_next().await? {
                            if self.cancel.is_cancelled() {
                                return Err(ConvertError::Cancelled);
                            }
                            file.write_all(&chunk).await?;
                        }
                        file.flush().await?;
                        Ok(path)
                    }
                }
            })
            .await?;
        Ok(path)
    }

    /// The input as a byte stream, without staging it to disk.
    pub async fn input_stream(&self) -> Result<ByteStream, ConvertError> {
        match &self.input {
            InputSource::Blob { store, key } => Ok(store.get(key, None).await?.body),
            InputSource::File(p) => {
                let file = tokio::fs::File::open(p).await?;
                Ok(Box::pin(tokio_util::io::ReaderStream::with_capacity(
                    file,
                    256 * 1024,
                )))
            }
        }
    }

    /// The input's size in bytes.
    pub async fn input_size(&self) -> Result<u64, ConvertError> {
        match &self.input {
            InputSource::Blob { store, key } => Ok(store.head(key).await?.size),
            InputSource::File(p) => Ok(tokio::fs::metadata(p).await?.len()),
        }
    }
}

/// Converts files. Declares the routes it serves; the registry routes each conversion to the
/// converter that serves its (source, target) pair.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait Converter: Send + Sync + Debug + 'static {
    /// A short name for logs and the formats listing.
    fn name(&self) -> &str;

    /// The routes it serves.
    fn routes(&self) -> Vec<Route>;

    /// Checks a conversion's options for the route `source` -> `target` before the conversion
    /// is accepted, so that options [`convert`](Converter::convert) would refuse are refused at
    /// submit time (`ConvertError::InvalidOptions`) instead of failing the job later. Cheap and
    /// side-effect free: no input is available yet. The default accepts everything (the
    /// converter then checks its options when it runs).
    fn check_options(
        &self,
        source: &Format,
        target: &Format,
        options: &serde_json::Value,
    ) -> Result<(), ConvertError> {
        let _ = (source, target, options);
        Ok(())
    }

    /// The JSON Schema (draft 2020-12) of the options object this converter accepts for the
    /// route `source` -> `target`, published by `GET /v1/formats` so that a client (the web UI
    /// among them) can build a form and validate it before submitting. `None` (the default)
    /// means the converter publishes no schema: any JSON object is passed through to
    /// [`check_options`](Converter::check_options), which stays the authority.
    fn options_schema(&self, source: &Format, target: &Format) -> Option<serde_json::Value> {
        let _ = (source, target);
        None
    }

    /// Converts one input into one or more outputs. Reports progress through the context,
    /// returns [`ConvertError::Cancelled`] promptly once the context's token is cancelled.
    async fn convert(
        &self,
        request: &ConvertRequest,
        ctx: &ConvertContext,
    ) -> Result<Vec<Output>, ConvertError>;
}

//! The binary's commands as library functions: [`serve`] runs the HTTP API (and workers)
//! until SIGINT/SIGTERM, [`worker`] runs workers only, [`convert`] converts one file through the
//! same engine intake the API uses. The `converto` binary only parses its arguments and calls
//! these; a program of its own can call them with [`Settings`] it made.

use std::path::{Path, PathBuf};
use std::time::Duration;

use converto_core::{
    CancellationToken, Engine, EngineError, Event, Format, Status, Submission, SubmitInput,
};
use futures::StreamExt;
use tokio::io::AsyncWriteExt;

use crate::config::{ConvertArgs, Settings};
use crate::runtime::{self, StartError};
use crate::{ApiSettings, AppState, app};

/// Why a command could not run to its end.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The backends, converters or engine could not be set up.
    #[error(transparent)]
    Start(#[from] StartError),
    /// A setting is unusable.
    #[error("{0}")]
    Settings(String),
    /// The listening socket could not be opened.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The engine failed (the workers, or a `convert` submission).
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// A local file could not be read or written.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The conversion ended without success.
    #[error("{source_format} -> {target} {status}{reason}")]
    Conversion {
        /// From.
        source_format: String,
        /// To.
        target: String,
        /// How it ended.
        status: Status,
        /// `: code: message`, when it failed.
        reason: String,
    },
    /// A task of the server panicked or was aborted.
    #[error("a server task ended abnormally: {0}")]
    Task(#[from] tokio::task::JoinError),
}

fn file_error(path: &Path) -> impl FnOnce(std::io::Error) -> RunError + '_ {
    move |source| RunError::File {
        path: path.to_path_buf(),
        source,
    }
}

/// Resolves on the first SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// The API settings the service settings give.
pub fn api_settings(s: &Settings) -> ApiSettings {
    ApiSettings {
        redirect_downloads: s.redirect_downloads,
        presign_ttl: Duration::from_secs(3600),
        public_url: s.public_url.clone(),
        max_json_bytes: s.max_json_bytes,
        max_field_bytes: s.max_field_bytes,
        max_event_streams: s.max_event_streams,
        // Comments keep streams alive through the idle timeout (and proxies').
        event_keep_alive: (s.idle_timeout / 2)
            .clamp(Duration::from_millis(100), Duration::from_secs(15)),
        cors_allow_origins: s.cors_allow_origins.clone(),
    }
}

/// Runs the HTTP API (and, unless `no_workers`, the workers) until SIGINT or SIGTERM, then
/// shuts down gracefully: no new requests, running conversions get their grace, the rest go
/// back to the queue. Prints `converto listening on http://ADDR` on stdout once it listens.
pub async fn serve(s: Settings) -> Result<(), RunError> {
    serve_until(s, shutdown_signal()).await
}

/// [`serve`], stopping when `shutdown` resolves instead of on a signal.
pub async fn serve_until(
    s: Settings,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), RunError> {
    // Refuse bad origins up front.
    crate::middleware::cors(&s.cors_allow_origins)
        .map_err(|e| RunError::Settings(e.to_string()))?;
    crate::auth::check_listen(&s.auth, s.listen).map_err(|e| RunError::Settings(e.to_string()))?;
    let engine = runtime::engine(&s).await?;
    let key_store = match s.auth.mode.keys() {
        true => Some(runtime::open_key_store(&s).await?),
        false => None,
    };
    let authenticator = crate::auth::Authenticator::open(&s.auth, key_store)
        .await
        .map_err(|e| RunError::Settings(e.to_string()))?;
    // The engine's limits (the configuration's, with the tenant store's overrides) serve
    // the API's checks too.
    let state = AppState::new(engine.clone(), api_settings(&s)).with_auth(authenticator);
    let listener = tokio::net::TcpListener::bind(s.listen)
        .await
        .map_err(|source| RunError::Listen {
            addr: s.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| RunError::Listen {
        addr: s.listen,
        source,
    })?;
    let workers = (!s.no_workers).then(|| engine.start_workers());
    tracing::info!(
        %addr, store = %runtime::redact(&s.store), blobs = %runtime::redact(&s.blobs), workers = !s.no_workers,
        routes = engine.registry().routes().len(), "converto listening"
    );
    println!("converto listening on http://{addr}");
    let stop = CancellationToken::new();
    let server_stop = stop.clone();
    let limits = crate::server::ServerLimits {
        header_read_timeout: s.header_timeout,
        idle_timeout: s.idle_timeout,
        max_connections: s.max_connections,
    };
    let server = tokio::spawn(crate::server::serve(
        listener,
        app(state),
        limits,
        async move { server_stop.cancelled().await },
    ));
    shutdown.await;
    tracing::info!("shutting down: no new requests, running conversions get their grace");
    stop.cancel();
    if let Some(w) = workers {
        w.shutdown().await?;
    }
    // Open event streams end with their conversions; do not wait for them forever.
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    Ok(())
}

/// Runs workers only, until SIGINT or SIGTERM, then drains them.
pub async fn worker(s: Settings) -> Result<(), RunError> {
    let engine = runtime::engine(&s).await?;
    tracing::info!(
        store = %runtime::redact(&s.store), queue = %runtime::redact(&s.queue),
        blobs = %runtime::redact(&s.blobs), "converto worker running"
    );
    let workers = engine.start_workers();
    shutdown_signal().await;
    tracing::info!("shutting down: finishing or handing back running conversions");
    workers.shutdown().await?;
    Ok(())
}

/// Where `convert` writes its outputs.
fn output_target(input: &Path, target: &Format, output: Option<PathBuf>, several: bool) -> PathBuf {
    match output {
        Some(o) => o,
        None if several => input
            .with_extension("")
            .with_extension(format!("{target}-out")),
        None => input.with_extension(target.as_str()),
    }
}

/// Converts one file here and now, through the same engine intake as the API (format
/// detection, size limit, option checks, crash isolation) on in-memory backends, reporting
/// progress to `progress`. Writes the output next to the input (or to `args.output`; a
/// directory when there are several) and returns the paths written.
pub async fn convert(
    s: &Settings,
    args: ConvertArgs,
    progress: impl Fn(u8, Option<&str>),
) -> Result<Vec<PathBuf>, RunError> {
    let target = Format::new(&args.to).map_err(|e| RunError::Settings(format!("--to: {e}")))?;
    let source = args
        .from
        .as_deref()
        .map(Format::new)
        .transpose()
        .map_err(|e| RunError::Settings(format!("--from: {e}")))?;
    let options = match &args.options {
        Some(o) => serde_json::from_str::<serde_json::Value>(o)
            .map_err(|e| RunError::Settings(format!("--options is not valid JSON: {e}")))?,
        None => serde_json::Value::Null,
    };
    let file = tokio::fs::File::open(&args.input)
        .await
        .map_err(file_error(&args.input))?;
    let scratch = tempfile::Builder::new()
        .prefix("converto-convert-")
        .tempdir()
        .map_err(file_error(&std::env::temp_dir()))?;
    // One attempt, no sweeper or janitor: the engine lives for this one file.
    let config = runtime::engine_config(s)
        .scratch_dir(scratch.path())
        .max_attempts(1)
        .sweeper(Duration::ZERO, Duration::ZERO)
        .janitor(Duration::ZERO, Duration::ZERO);
    let engine = Engine::builder()
        .registry(runtime::registry(s)?)
        .config(config)
        .build()
        .map_err(|e| RunError::Settings(e.to_string()))?;
    let name = args
        .input
        .file_name()
        .map(|n| n.to_string_lossy().into_owned());
    let body = tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024).boxed();
    let mut submission = Submission::new(
        target.clone(),
        SubmitInput::Stream {
            body,
            file_name: name,
        },
    )
    .options(options);
    submission.source_format = source;
    let workers = engine.start_workers();
    let submitted = engine.submit(submission).await?;
    let id = submitted.conversion.id;
    let mut events = engine.watch(id).await?;
    let followed = async {
        while let Some(event) = events.next().await {
            if let Event::Progress { progress: p, .. } = &event {
                progress(p.percent, p.stage.as_deref());
            }
        }
    };
    tokio::select! {
        () = followed => {}
        () = shutdown_signal() => {
            let _ = engine.cancel(id).await;
        }
    }
    let done = engine.wait(id).await?;
    workers.shutdown().await?;
    if done.status != Status::Succeeded {
        return Err(RunError::Conversion {
            source_format: done.source_format.to_string(),
            target: target.to_string(),
            status: done.status,
            reason: done
                .error
                .as_ref()
                .map(|e| format!(": {}: {}", e.code, e.message))
                .unwrap_or_default(),
        });
    }
    // The artifacts in the target format are the output; others (a mesh's `preview.png`) are
    // side artifacts, written beside a single output as `{output}.{name}`.
    let several = done.artifacts.iter().filter(|a| a.format == target).count() > 1;
    let dest = output_target(&args.input, &target, args.output, several);
    if several {
        tokio::fs::create_dir_all(&dest)
            .await
            .map_err(file_error(&dest))?;
    }
    let mut written = Vec::new();
    for artifact in &done.artifacts {
        let path = if several {
            dest.join(&artifact.name)
        } else if artifact.format == target {
            dest.clone()
        } else {
            let mut side = dest.clone().into_os_string();
            side.push(".");
            side.push(&artifact.name);
            PathBuf::from(side)
        };
        let mut out = tokio::fs::File::create(&path)
            .await
            .map_err(file_error(&path))?;
        let mut body = engine.read_artifact(id, &artifact.name).await?;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(file_error(&path))?;
            out.write_all(&chunk).await.map_err(file_error(&path))?;
        }
        out.flush().await.map_err(file_error(&path))?;
        written.push(path);
    }
    Ok(written)
}

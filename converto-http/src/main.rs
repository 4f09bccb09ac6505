//! The `converto` binary: `serve`, `worker`, `convert`, `migrate`, `formats`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use converto_core::converter::{ConvertContext, ConvertRequest, OutputBody};
use converto_core::{CancellationToken, ConversionId, Format};
use converto_http::config::{Cli, Command, ConvertArgs, Settings};
use converto_http::{ApiSettings, AppState, app, runtime};
use indicatif::{ProgressBar, ProgressStyle};

/// mimalloc: the request path allocates small, short-lived objects on every thread, where it
/// beats the system allocator (measured with benches/http.sh).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CONVERTO_LOG").unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("info,sqlx=warn,tower_http=warn")
            }),
        )
        .with_writer(std::io::stderr)
        .init();
    if matches!(cli.command, Command::Child) {
        // One isolated conversion, on its own current-thread runtime, under its limits.
        return converto_http::isolate::child_main();
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), BoxError> {
    let serve_args = match &cli.command {
        Command::Serve(a) => Some(a),
        _ => None,
    };
    let settings = Settings::resolve(cli.config.as_deref(), &cli.common, serve_args)?;
    match cli.command {
        Command::Serve(_) => serve(settings).await,
        Command::Worker => worker(settings).await,
        Command::Convert(args) => convert(settings, args).await,
        Command::Migrate => {
            for db in runtime::migrate(&settings).await? {
                println!("migrated {db}");
            }
            Ok(())
        }
        Command::Child => Ok(()), // handled in main, before a runtime exists
        Command::Formats => {
            for r in runtime::registry(&settings)?.routes() {
                println!("{:<8} -> {:<8} ({})", r.source, r.target, r.converter);
            }
            Ok(())
        }
    }
}

/// Resolves on the first SIGINT or SIGTERM.
async fn shutdown_signal() {
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

async fn serve(s: Settings) -> Result<(), BoxError> {
    converto_http::middleware::cors(&s.cors_allow_origins)?; // refuse bad origins up front
    let engine = runtime::engine(&s).await?;
    let upload_signer = match &s.upload_secret {
        Some(secret) => converto_http::tickets::UploadSigner::new(secret.expose().as_bytes())?,
        None => {
            converto_http::tickets::UploadSigner::from_blob_store(engine.backends().blobs.as_ref())
                .await?
        }
    };
    let state = AppState::new(
        engine.clone(),
        ApiSettings {
            max_upload_bytes: s.max_upload_bytes,
            redirect_downloads: s.redirect_downloads,
            presign_ttl: Duration::from_secs(3600),
            public_url: s.public_url.clone(),
            upload_signer,
            max_json_bytes: s.max_json_bytes,
            max_field_bytes: s.max_field_bytes,
            max_event_streams: s.max_event_streams,
            // Comments keep streams alive through the idle timeout (and proxies').
            event_keep_alive: (s.idle_timeout / 2)
                .clamp(Duration::from_millis(100), Duration::from_secs(15)),
            cors_allow_origins: s.cors_allow_origins.clone(),
        },
    );
    let listener = tokio::net::TcpListener::bind(s.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", s.listen))?;
    let addr = listener.local_addr()?;
    let stop = CancellationToken::new();
    let workers = (!s.no_workers).then(|| {
        let (engine, stop) = (engine.clone(), stop.clone());
        tokio::spawn(async move { engine.run_workers(stop).await })
    });
    // Uploads nobody converted go an hour after their ticket expired.
    tokio::spawn(converto_http::api::upload::run_upload_janitor(
        Arc::clone(&engine.backends().blobs),
        state.settings.presign_ttl + converto_http::api::upload::UNCLAIMED_UPLOAD_GRACE,
        Duration::from_secs(600),
        stop.clone(),
    ));
    tracing::info!(
        %addr, store = %runtime::redact(&s.store), blobs = %runtime::redact(&s.blobs), workers = !s.no_workers,
        routes = engine.registry().routes().len(), "converto listening"
    );
    println!("converto listening on http://{addr}");
    let server_stop = stop.clone();
    let limits = converto_http::server::ServerLimits {
        header_read_timeout: s.header_timeout,
        idle_timeout: s.idle_timeout,
        max_connections: s.max_connections,
    };
    let server = tokio::spawn(converto_http::server::serve(
        listener,
        app(state),
        limits,
        async move { server_stop.cancelled().await },
    ));
    shutdown_signal().await;
    tracing::info!("shutting down: no new requests, running conversions get their grace");
    stop.cancel();
    if let Some(w) = workers {
        w.await??;
    }
    // Open event streams end with their conversions; do not wait for them forever.
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    Ok(())
}

async fn worker(s: Settings) -> Result<(), BoxError> {
    let engine = runtime::engine(&s).await?;
    tracing::info!(
        store = %runtime::redact(&s.store), queue = %runtime::redact(&s.queue),
        blobs = %runtime::redact(&s.blobs), "converto worker running"
    );
    let stop = CancellationToken::new();
    let handle = {
        let (engine, stop) = (engine.clone(), stop.clone());
        tokio::spawn(async move { engine.run_workers(stop).await })
    };
    shutdown_signal().await;
    tracing::info!("shutting down: finishing or handing back running conversions");
    stop.cancel();
    handle.await??;
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

async fn convert(s: Settings, args: ConvertArgs) -> Result<(), BoxError> {
    let target = Format::new(&args.to)?;
    let head = {
        use tokio::io::AsyncReadExt;
        let mut f = tokio::fs::File::open(&args.input)
            .await
            .map_err(|e| format!("{}: {e}", args.input.display()))?;
        let mut buf = vec![0u8; 4096];
        let n = f.read(&mut buf).await?;
        buf.truncate(n);
        buf
    };
    if head.is_empty() {
        return Err(format!("{}: the file is empty", args.input.display()).into());
    }
    let name = args
        .input
        .file_name()
        .map(|n| n.to_string_lossy().into_owned());
    let source = match &args.from {
        Some(f) => Format::new(f)?,
        None => Format::detect(name.as_deref(), &head)
            .ok_or("cannot tell the input's format; pass --from")?,
    };
    let registry = runtime::registry(&s)?;
    let Some(converter) = registry.find(&source, &target).cloned() else {
        let targets: Vec<String> = registry
            .targets_for(&source)
            .iter()
            .map(ToString::to_string)
            .collect();
        return Err(format!(
            "no converter for {source} -> {target}; {source} converts to: {}",
            if targets.is_empty() {
                "nothing".to_owned()
            } else {
                targets.join(", ")
            }
        )
        .into());
    };
    let options = match &args.options {
        Some(o) => serde_json::from_str::<serde_json::Value>(o)
            .map_err(|e| format!("--options is not valid JSON: {e}"))?,
        None => serde_json::Value::Null,
    };
    let work = tempfile::Builder::new()
        .prefix("converto-convert-")
        .tempdir()?;
    let bar = ProgressBar::new(100);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{bar:40}] {pos:>3}% {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    let progress = {
        let bar = bar.clone();
        Arc::new(move |p: u8, stage: Option<&str>| {
            bar.set_position(u64::from(p));
            if let Some(stage) = stage {
                bar.set_message(stage.to_owned());
            }
        })
    };
    let cancel = CancellationToken::new();
    let ctx = ConvertContext::for_file(
        std::fs::canonicalize(&args.input)?,
        work.path().to_path_buf(),
        progress,
    )
    .with_cancel(cancel.clone());
    let req = ConvertRequest {
        id: ConversionId::new(),
        attempt: 1,
        source: source.clone(),
        target: target.clone(),
        options,
    };
    let outputs = tokio::select! {
        r = converter.convert(&req, &ctx) => r,
        _ = shutdown_signal() => {
            cancel.cancel();
            bar.abandon_with_message("cancelled");
            return Err("cancelled".into());
        }
    };
    let outputs = match outputs {
        Ok(o) => o,
        Err(e) => {
            bar.abandon_with_message("failed");
            return Err(format!("{source} -> {target} failed ({}): {e}", e.code()).into());
        }
    };
    bar.finish_with_message("done");
    let several = outputs.len() > 1;
    let dest = output_target(&args.input, &target, args.output, several);
    if several {
        tokio::fs::create_dir_all(&dest).await?;
    }
    for out in outputs {
        let path = if several {
            dest.join(&out.name)
        } else {
            dest.clone()
        };
        match out.body {
            OutputBody::File(p) => {
                tokio::fs::copy(&p, &path).await?;
            }
            OutputBody::Bytes(b) => tokio::fs::write(&path, &b).await?,
        }
        println!("{}", path.display());
    }
    Ok(())
}

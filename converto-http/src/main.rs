//! The `converto` binary: `serve`, `worker`, `convert`, `migrate`, `formats`. It parses its
//! arguments and calls [`converto_http::run`], where the commands live.

use std::process::ExitCode;

use clap::Parser;
use converto_http::config::{Cli, Command, ConvertArgs, Settings};
use converto_http::runtime;
use indicatif::{ProgressBar, ProgressStyle};

/// mimalloc: the request path allocates small, short-lived objects on every thread, where it
/// beats the system allocator (measured with benches/http.sh).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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

async fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let serve_args = match &cli.command {
        Command::Serve(a) => Some(a),
        _ => None,
    };
    let settings = Settings::resolve(cli.config.as_deref(), &cli.common, serve_args)?;
    match cli.command {
        Command::Serve(_) => converto_http::run::serve(settings).await?,
        Command::Worker => converto_http::run::worker(settings).await?,
        Command::Convert(args) => convert(&settings, args).await?,
        Command::Migrate => {
            for db in runtime::migrate(&settings).await? {
                println!("migrated {db}");
            }
        }
        Command::Child => {} // handled in main, before a runtime exists
        Command::Formats => {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            let registry = runtime::registry(&settings)?;
            // Which families are on or off, and why, as comment lines before the routes.
            for (topic, note) in registry.notes() {
                if writeln!(out, "# {topic}: {note}").is_err() {
                    return Ok(());
                }
            }
            for r in registry.reachable() {
                let via: String = r.via.iter().map(|f| format!(" via {f}")).collect();
                // A closed pipe (`converto formats | head`) ends the listing, not the process.
                if writeln!(
                    out,
                    "{:<8} -> {:<8} ({}){via}",
                    r.source, r.target, r.converter
                )
                .is_err()
                {
                    break;
                }
            }
        }
        Command::Keys(command) => {
            converto_http::auth::cli::run(&settings, command, &mut std::io::stdout().lock()).await?
        }
        Command::Tenants(command) => {
            converto_http::tenants_cli::run(&settings, command, &mut std::io::stdout().lock())
                .await?
        }
    }
    Ok(())
}

/// `converto convert`, with a progress bar on stderr and the written paths on stdout.
async fn convert(s: &Settings, args: ConvertArgs) -> Result<(), converto_http::run::RunError> {
    let bar = ProgressBar::new(100);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{bar:40}] {pos:>3}% {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    let progress = {
        let bar = bar.clone();
        move |p: u8, stage: Option<&str>| {
            bar.set_position(u64::from(p));
            if let Some(stage) = stage {
                bar.set_message(stage.to_owned());
            }
        }
    };
    match converto_http::run::convert(s, args, progress).await {
        Ok(paths) => {
            bar.finish_with_message("done");
            for p in paths {
                println!("{}", p.display());
            }
            Ok(())
        }
        Err(e) => {
            bar.abandon_with_message("failed");
            Err(e)
        }
    }
}

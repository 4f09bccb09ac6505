//! A converter that runs any external program (feature `process`).
//!
//! Each route names a program and an argument template. The program gets its arguments as
//! argv (never through a shell), an environment that is empty except for what the route sets,
//! the job's scratch directory as its working directory, and no stdin. It runs in its own
//! process group, so cancellation, the route's time limit, or dropping the conversion future
//! kills the program *and everything it started*.
//!
//! ```toml
//! name = "cad"
//! program_dirs = ["../target/release", "../target/debug"]  # relative to this file
//! kill_grace_secs = 2
//!
//! [[route]]
//! source = ["stl", "obj"]                 # every source to every target
//! target = "step"
//! program = "converto-stub-converter"     # bare name: program_dirs, then PATH, at load time
//! args = ["--input", "{input}", "--output", "{output}", "--format", "{target}",
//!         ["--duration-ms", "{opt.duration_ms}"]]   # a group: dropped when the option is unset
//! output = "output.{target}"              # written by the program into {output_dir}
//! env = { LC_ALL = "C", TMPDIR = "{scratch_dir}" }
//! pass_env = ["PATH"]
//! timeout_secs = 600
//! temporary_exit_codes = [75]
//! progress = { pattern = 'progress: (\d+)%', stream = "stdout", stage = "converting" }
//!
//! [route.options.duration_ms]
//! type = "integer"
//! min = 0
//! max = 60000
//! ```
//!
//! Failures: a non-zero exit is `converter_exit_<n>` (temporary only for
//! `temporary_exit_codes`), death by a signal is a temporary `converter_killed`, the route's
//! time limit is `converter_timeout` (permanent unless `retry_on_timeout`), a program that
//! exits 0 without writing its output is a permanent `no_output`, and an output that is a
//! symbolic link, not a regular file, or resolves outside the job's scratch directory is a
//! permanent `invalid_output`. Messages end with the last 4 KiB of the program's stderr.
//!
//! The process group is signalled only while its leader has not been reaped (the exit is
//! observed with `waitid(WNOWAIT)` first, the leader reaped after the last signal), so a
//! recycled pid can never direct `killpg` at an unrelated group.

mod compile;
mod config;
pub mod occt;
mod resolve;
mod run;
mod schema;
mod template;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use converto_core::{
    ConvertContext, ConvertError, ConvertRequest, Converter, Format, Output, Route,
};
use nix::sys::signal::Signal;

pub use config::{
    ArgTemplate, OptionSpec, OptionSpecProblem, OptionType, OptionValue, OptionValueError,
    ProcessConfig, ProcessConfigError, ProcessRoute, ProgressPattern, ProgressStream,
};
pub use template::TemplateError;

use compile::{Compiled, CompiledRoute};
use run::{RunEnd, RunSpec};
use template::Values;

/// The environment variable with directories searched for bare program names before the
/// configured `program_dirs` and `PATH` (`:`-separated).
pub const PROGRAM_DIRS_ENV: &str = resolve::PROGRAM_DIRS_VAR;

/// Runs external programs as a [`Converter`]. Built from a [`ProcessConfig`]; everything is
/// checked (programs found, templates parsed, patterns compiled) when it is built.
#[derive(Debug)]
pub struct ProcessConverter {
    compiled: Compiled,
}

impl ProcessConverter {
    /// Builds a converter from a configuration.
    pub fn from_config(config: ProcessConfig) -> Result<Self, ProcessConfigError> {
        Ok(Self {
            compiled: compile::compile(config)?,
        })
    }

    /// Builds a converter from TOML; relative paths resolve against the current directory.
    pub fn from_toml_str(toml_text: &str) -> Result<Self, ProcessConfigError> {
        Self::from_config(ProcessConfig::from_toml_str(toml_text)?)
    }

    /// Builds a converter from a TOML route file; relative paths resolve against its directory.
    pub fn from_toml_file(path: impl AsRef<Path>) -> Result<Self, ProcessConfigError> {
        Self::from_config(ProcessConfig::from_toml_file(path)?)
    }

    /// Renames the converter.
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.compiled.name = name.into();
        self
    }

    /// The program serving a route, as resolved at load.
    pub fn program_for(&self, route: &Route) -> Option<&Path> {
        self.family(route).map(|f| f.program.as_path())
    }

    fn family(&self, route: &Route) -> Option<&CompiledRoute> {
        self.compiled
            .routes
            .iter()
            .find(|(r, _)| r == route)
            .and_then(|(_, i)| self.compiled.families.get(*i))
    }
}

fn absolute(p: &Path) -> Result<PathBuf, ConvertError> {
    Ok(std::path::absolute(p)?)
}

fn with_stderr(message: String, tail: &str) -> String {
    if tail.is_empty() {
        format!("{message} (no stderr output)")
    } else {
        format!("{message}; stderr: {tail}")
    }
}

/// The size of the program's output, 0 when there is none, after making sure it is a regular
/// file inside the job's scratch directory: an output that is a symlink (to `/etc/passwd`, to
/// another job's files), sits under a symlinked directory leading out of the scratch
/// directory, or is a FIFO or socket is refused with a permanent `invalid_output`, so the
/// engine never reads from outside the job.
async fn checked_output_size(
    output: &Path,
    scratch_dir: &Path,
    output_name: &str,
    program: &str,
) -> Result<u64, ConvertError> {
    let invalid = |why: &str| {
        ConvertError::permanent(
            "invalid_output",
            format!("{program} left an output {output_name} that {why}; refused"),
        )
    };
    let meta = match tokio::fs::symlink_metadata(output).await {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e.into()),
    };
    let kind = meta.file_type();
    if kind.is_symlink() {
        return Err(invalid("is a symbolic link"));
    }
    if kind.is_dir() {
        return Ok(0);
    }
    if !kind.is_file() {
        return Err(invalid("is not a regular file"));
    }
    let real = tokio::fs::canonicalize(output).await?;
    let root = tokio::fs::canonicalize(scratch_dir).await?;
    if !real.starts_with(&root) {
        return Err(invalid("resolves outside the job's scratch directory"));
    }
    Ok(meta.len())
}

fn program_name(program: &Path) -> String {
    program
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| program.display().to_string())
}

#[async_trait]
impl Converter for ProcessConverter {
    fn name(&self) -> &str {
        &self.compiled.name
    }

    fn routes(&self) -> Vec<Route> {
        self.compiled
            .routes
            .iter()
            .map(|(r, _)| r.clone())
            .collect()
    }

    fn check_options(
        &self,
        source: &Format,
        target: &Format,
        options: &serde_json::Value,
    ) -> Result<(), ConvertError> {
        let route = Route::new(source.clone(), target.clone());
        match self.family(&route) {
            Some(family) => family.resolve_options(&route, options).map(|_| ()),
            None => Ok(()),
        }
    }

    fn options_schema(&self, source: &Format, target: &Format) -> Option<serde_json::Value> {
        let route = Route::new(source.clone(), target.clone());
        self.family(&route).map(CompiledRoute::options_schema)
    }

    async fn convert(
        &self,
        request: &ConvertRequest,
        ctx: &ConvertContext,
    ) -> Result<Vec<Output>, ConvertError> {
        let route = Route::new(request.source.clone(), request.target.clone());
        let Some(family) = self.family(&route) else {
            return Err(ConvertError::Unsupported {
                source_format: request.source.clone(),
                target_format: request.target.clone(),
            });
        };
        let options = family.resolve_options(&route, &request.options)?;
        if ctx.is_cancelled() {
            return Err(ConvertError::Cancelled);
        }

        // Absolute paths: the program runs in the scratch directory, and a relative input
        // named like "-x" must not read as a flag.
        let input = absolute(ctx.input_path().await?)?;
        let output_dir = absolute(ctx.output_dir().await?)?;
        let scratch_dir = absolute(ctx.scratch_dir().await?)?;
        let output_name = family
            .output
            .render_formats(route.source.as_str(), route.target.as_str());
        let output = output_dir.join(&output_name);
        // A previous attempt's file must not pass for this attempt's output.
        match tokio::fs::remove_file(&output).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }

        let values = Values {
            input: &input,
            output: &output,
            output_dir: &output_dir,
            scratch_dir: &scratch_dir,
            source: route.source.as_str(),
            target: route.target.as_str(),
            options: &options,
        };
        let mut args: Vec<OsString> = Vec::new();
        for group in &family.args {
            let rendered: Option<Vec<OsString>> = group.iter().map(|t| t.render(&values)).collect();
            args.extend(rendered.into_iter().flatten());
        }
        let mut env: Vec<(String, OsString)> = Vec::new();
        for var in &family.pass_env {
            if let Some(value) = std::env::var_os(var) {
                env.push((var.clone(), value));
            }
        }
        for (var, template) in &family.env {
            if let Some(value) = template.render(&values) {
                env.push((var.clone(), value));
            }
        }

        let name = program_name(&family.program);
        tracing::debug!(program = %family.program.display(), ?args, "starting converter program");
        let result = run::run(
            RunSpec {
                program: &family.program,
                args,
                env,
                cwd: &scratch_dir,
                timeout: family.timeout,
                kill_grace: self.compiled.kill_grace,
                progress: family.progress.as_ref(),
            },
            ctx,
        )
        .await?;
        let tail = result.stderr_tail;
        let status = match result.end {
            RunEnd::Cancelled => return Err(ConvertError::Cancelled),
            RunEnd::TimedOut => {
                let limit = family.timeout.unwrap_or(Duration::ZERO).as_secs_f64();
                let message = with_stderr(
                    format!("{name} ran longer than its time limit of {limit:.1}s and was killed"),
                    &tail,
                );
                return Err(ConvertError::Failed {
                    code: "converter_timeout".into(),
                    message,
                    temporary: family.retry_on_timeout,
                });
            }
            RunEnd::Exited(status) => status,
        };
        if let Some(code) = status.code().filter(|c| *c != 0) {
            return Err(ConvertError::Failed {
                code: format!("converter_exit_{code}"),
                message: with_stderr(format!("{name} exited with code {code}"), &tail),
                temporary: family.temporary_exit_codes.contains(&code),
            });
        }
        if status.code().is_none() {
            use std::os::unix::process::ExitStatusExt;
            let signal = status.signal().unwrap_or_default();
            let signal_name = Signal::try_from(signal)
                .map(|s| s.as_str().to_owned())
                .unwrap_or_else(|_| "unknown signal".into());
            return Err(ConvertError::temporary(
                "converter_killed",
                with_stderr(
                    format!("{name} was killed by signal {signal} ({signal_name})"),
                    &tail,
                ),
            ));
        }

        let size = checked_output_size(&output, &scratch_dir, &output_name, &name).await?;
        if size == 0 {
            return Err(ConvertError::permanent(
                "no_output",
                with_stderr(
                    format!("{name} exited successfully but wrote no output to {output_name}"),
                    &tail,
                ),
            ));
        }
        Ok(vec![Output::file(
            output_name,
            route.target.clone(),
            output,
        )])
    }
}

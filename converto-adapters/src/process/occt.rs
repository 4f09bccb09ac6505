//! STEP and IGES through OpenCASCADE: the routes of `occt.toml`, run by `occt-draw` (OCCT's
//! DRAW command interpreter, Debian package `occt-draw`).
//!
//! - `step`, `iges` -> `stl`: read (`testreadstep` / `testreadiges`), tessellated with
//!   `incmesh` (options `linear_deflection`, in model units, default 0.1 % of the part's
//!   bounding-box diagonal, and `angular_deflection`, in degrees, default 20), written as binary
//!   STL. OBJ, PLY and the other mesh formats come from chaining through `stl`.
//! - `stl` -> `step`, `iges`: each triangle a planar face (`readstl -brep`), a closed shell
//!   made a solid, written with `stepwrite` / `brepiges`.
//! - `step` <-> `iges`: the exact geometry translated, no tessellation.
//!
//! The binary switches these routes on at start-up when [`detect`] finds a working
//! `occt-draw`, and off with [`Detection::Missing`]'s message when it does not.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{ProcessConfig, ProcessConfigError, ProcessConverter};

/// The route file, embedded: the source of truth for the routes, their script and options.
pub const ROUTES_TOML: &str = include_str!("occt.toml");

/// The program the routes run.
pub const PROGRAM: &str = "occt-draw";

/// The Debian packages that provide a working [`PROGRAM`]: the interpreter, and the
/// unversioned plugin libraries its `pload` command opens.
pub const PACKAGES: &str = "occt-draw libocct-draw-dev";

/// How long the start-up probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(20);

/// What the start-up check found.
#[derive(Debug)]
pub enum Detection {
    /// `occt-draw` runs and loads its modelling and data-exchange plugins.
    Found(PathBuf),
    /// Not usable; the message says why and what to install.
    Missing(String),
}

/// Why the routes could not be built although the program was found.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OcctError {
    /// The embedded route file does not load (a bug in this crate).
    #[error("the OpenCASCADE routes: {0}")]
    Config(#[from] ProcessConfigError),
}

/// Looks for `occt-draw` in `$CONVERTO_PROGRAM_DIRS`, then `$PATH`, and checks it can load the
/// plugins the routes use (the Debian package `libocct-draw-dev` provides the libraries `pload`
/// opens by their unversioned names).
pub fn detect() -> Detection {
    let dirs = search_dirs(
        std::env::var_os(super::PROGRAM_DIRS_ENV),
        std::env::var_os("PATH"),
    );
    let Some(program) = dirs
        .iter()
        .map(|d| d.join(PROGRAM))
        .find(|p| is_executable(p))
    else {
        return Detection::Missing(format!(
            "STEP and IGES routes off: {PROGRAM} (Debian package occt-draw) not found on PATH; \
             install with: apt-get install --no-install-recommends {PACKAGES}"
        ));
    };
    match probe(&program) {
        Ok(()) => Detection::Found(program),
        Err(why) => Detection::Missing(format!(
            "STEP and IGES routes off: {} does not work: {why}; install with: \
             apt-get install --no-install-recommends {PACKAGES}",
            program.display()
        )),
    }
}

/// The routes as a converter named `cad-occt`, running `program`.
pub fn converter(program: &Path) -> Result<ProcessConverter, OcctError> {
    let mut config = ProcessConfig::from_toml_str(ROUTES_TOML)?;
    for route in &mut config.routes {
        route.program = program.to_owned();
    }
    Ok(ProcessConverter::from_config(config)?)
}

fn search_dirs(env_dirs: Option<OsString>, path: Option<OsString>) -> Vec<PathBuf> {
    [env_dirs, path]
        .into_iter()
        .flatten()
        .flat_map(|v| std::env::split_paths(&v).collect::<Vec<_>>())
        .filter(|d| !d.as_os_str().is_empty())
        .collect()
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Runs `pload` the way the routes do and looks for a marker printed after it.
fn probe(program: &Path) -> Result<(), String> {
    const MARKER: &str = "converto-occt-ready";
    let mut child = Command::new(program)
        .args([
            "-b",
            "-c",
            &format!("pload MODELING DATAEXCHANGE; puts {MARKER}; exit 0"),
        ])
        .env_clear()
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start it: {e}"))?;
    let started = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if started.elapsed() > PROBE_TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "it did not answer within {}s",
                    PROBE_TIMEOUT.as_secs()
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(e.to_string()),
        }
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if stdout.contains(MARKER) {
        return Ok(());
    }
    // Its errors come coloured: keep the words.
    let text = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let text: String = text.chars().filter(|c| !c.is_control()).collect();
    let text = text.replace("[31;1m", "").replace("[0m", "");
    Err(format!(
        "`pload MODELING DATAEXCHANGE` failed: {}",
        text.trim().chars().take(300).collect::<String>()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_routes_parse() {
        let config = ProcessConfig::from_toml_str(ROUTES_TOML).expect("occt.toml parses");
        assert_eq!(config.routes.len(), 4);
    }

    #[test]
    fn program_dirs_come_before_path() {
        let dirs = search_dirs(Some("/opt/a:/opt/b".into()), Some("/usr/bin::/bin".into()));
        assert_eq!(
            dirs,
            ["/opt/a", "/opt/b", "/usr/bin", "/bin"]
                .map(PathBuf::from)
                .to_vec()
        );
    }
}

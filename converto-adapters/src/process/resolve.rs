//! Finding the program of a route when the routes are loaded.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use super::config::ProcessConfigError;

/// The environment variable with extra program directories, searched first.
pub(crate) const PROGRAM_DIRS_VAR: &str = "CONVERTO_PROGRAM_DIRS";

enum Found {
    Executable,
    NotExecutable,
    Missing,
}

fn probe(path: &Path) -> Found {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => Found::Executable,
        Ok(_) => Found::NotExecutable,
        Err(_) => Found::Missing,
    }
}

/// Resolves `program` to an absolute path: an absolute path is taken as is, a path with a
/// directory part is resolved against `base_dir`, a bare name is looked up in
/// `$CONVERTO_PROGRAM_DIRS`, then `program_dirs` (relative to `base_dir`), then `$PATH`.
pub(crate) fn resolve_program(
    route: usize,
    program: &Path,
    base_dir: &Path,
    program_dirs: &[PathBuf],
    env_dirs: Option<OsString>,
    path_var: Option<OsString>,
) -> Result<PathBuf, ProcessConfigError> {
    if program.as_os_str().is_empty() {
        return Err(ProcessConfigError::EmptyProgram { route });
    }
    let bare = matches!(
        program.components().collect::<Vec<_>>().as_slice(),
        [Component::Normal(_)]
    );
    let candidates: Vec<PathBuf> = if program.is_absolute() {
        vec![program.to_owned()]
    } else if !bare {
        vec![base_dir.join(program)]
    } else {
        let mut dirs: Vec<PathBuf> = Vec::new();
        if let Some(v) = env_dirs.as_ref() {
            dirs.extend(std::env::split_paths(v).filter(|d| !d.as_os_str().is_empty()));
        }
        dirs.extend(program_dirs.iter().map(|d| base_dir.join(d)));
        if let Some(v) = path_var.as_ref() {
            dirs.extend(std::env::split_paths(v).filter(|d| !d.as_os_str().is_empty()));
        }
        dirs.into_iter().map(|d| d.join(program)).collect()
    };
    let mut not_executable = None;
    for candidate in &candidates {
        match probe(candidate) {
            Found::Executable => {
                return Ok(std::path::absolute(candidate).unwrap_or_else(|_| candidate.clone()));
            }
            Found::NotExecutable => {
                not_executable.get_or_insert_with(|| candidate.clone());
            }
            Found::Missing => {}
        }
    }
    match not_executable {
        Some(path) => Err(ProcessConfigError::ProgramNotExecutable { route, path }),
        None => Err(ProcessConfigError::ProgramNotFound {
            route,
            program: program.to_owned(),
            searched: candidates,
        }),
    }
}

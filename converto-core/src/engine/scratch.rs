//! Each engine's own part of the scratch directory, and the removal of what dead processes left.
//!
//! A converter works in a per-job directory under the configured scratch directory (a copy of
//! the input, its outputs). A job finishing or failing removes its directory, but a process
//! that is killed (`kill -9`, OOM, power loss) cannot, and inputs can be gigabytes. So each
//! engine works under `SCRATCH/proc-<id>/` and holds an exclusive lock on
//! `SCRATCH/proc-<id>.lock` for as long as it lives; the operating system drops the lock when
//! the process dies, however it dies. The next engine to start in that scratch directory (any
//! process sharing it: `converto serve` and `converto worker` on one data directory, say)
//! removes every `proc-*` directory whose lock it can take: nobody alive owns it.

use std::fs::{self, File, TryLockError};
use std::io;
use std::path::{Path, PathBuf};

/// The prefix of the per-engine directories and their lock files.
const PREFIX: &str = "proc-";
/// The lock file's suffix.
const LOCK: &str = ".lock";

/// An engine's scratch directory, locked while it lives and removed when it is dropped.
#[derive(Debug)]
pub(crate) struct ScratchRoot {
    dir: PathBuf,
    lock_path: PathBuf,
    /// Holds the lock; closing it releases it.
    _lock: File,
}

impl ScratchRoot {
    /// Removes what dead engines left under `root`, then claims a fresh directory there.
    pub(crate) fn claim(root: &Path) -> io::Result<Self> {
        fs::create_dir_all(root)?;
        let removed = reap(root);
        if removed > 0 {
            tracing::info!(
                root = %root.display(),
                removed,
                "removed the scratch directories of processes that died"
            );
        }
        let name = format!("{PREFIX}{}", uuid::Uuid::now_v7());
        // Lock under a temporary name, then rename: a lock file under its final name is always
        // locked, so a concurrent reaper can never take it for a dead one.
        let pending = root.join(format!(".{name}{LOCK}"));
        let lock = File::create(&pending)?;
        lock.lock()?;
        let lock_path = root.join(format!("{name}{LOCK}"));
        fs::rename(&pending, &lock_path)?;
        let dir = root.join(&name);
        fs::create_dir(&dir)?;
        Ok(Self {
            dir,
            lock_path,
            _lock: lock,
        })
    }

    /// The directory the engine's jobs create their directories in.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for ScratchRoot {
    fn drop(&mut self) {
        // Best effort: whatever is left is reaped by the next engine.
        let _ = fs::remove_dir_all(&self.dir);
        let _ = fs::remove_file(&self.lock_path);
    }
}

/// Removes the directory of every engine under `root` whose lock nobody holds; returns how many.
/// Errors are logged and skipped: a directory that cannot be removed now is tried next time.
fn reap(root: &Path) -> usize {
    let Ok(entries) = fs::read_dir(root) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(name) = file_name
            .to_str()
            .and_then(|n| n.strip_suffix(LOCK))
            .filter(|n| n.starts_with(PREFIX))
        else {
            continue;
        };
        let lock_path = entry.path();
        let Ok(lock) = File::options().write(true).open(&lock_path) else {
            continue;
        };
        match lock.try_lock() {
            Ok(()) => {
                let dir = root.join(name);
                match fs::remove_dir_all(&dir) {
                    Ok(()) => removed += 1,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => {
                        tracing::warn!(dir = %dir.display(), error = %e, "cannot remove a dead process's scratch directory");
                        continue;
                    }
                }
                let _ = fs::remove_file(&lock_path);
            }
            Err(TryLockError::WouldBlock) => {} // its engine is alive
            Err(TryLockError::Error(e)) => {
                tracing::warn!(lock = %lock_path.display(), error = %e, "cannot check a scratch lock");
            }
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_engines_directories_are_removed_live_ones_kept() {
        let root = tempfile::tempdir().expect("tempdir");
        // A dead engine: its lock file exists, nobody holds it; its directory holds a job.
        fs::write(root.path().join("proc-dead.lock"), b"").expect("lock file");
        fs::create_dir_all(root.path().join("proc-dead/job-1")).expect("dir");
        fs::write(root.path().join("proc-dead/job-1/input.stl"), b"x").expect("input");
        // A live engine (another open file description holds the lock).
        let live = File::create(root.path().join("proc-live.lock")).expect("lock file");
        live.lock().expect("lock");
        fs::create_dir_all(root.path().join("proc-live/job-2")).expect("dir");
        // Something that is not ours.
        fs::create_dir_all(root.path().join("other")).expect("dir");

        let mine = ScratchRoot::claim(root.path()).expect("claim");
        assert!(!root.path().join("proc-dead").exists(), "dead dir kept");
        assert!(
            !root.path().join("proc-dead.lock").exists(),
            "dead lock kept"
        );
        assert!(
            root.path().join("proc-live/job-2").exists(),
            "live dir removed"
        );
        assert!(root.path().join("other").exists());
        assert!(mine.dir().is_dir());

        // A second engine in the same directory leaves the first alone.
        let second = ScratchRoot::claim(root.path()).expect("claim");
        assert!(mine.dir().is_dir(), "a live engine's directory was reaped");
        assert_ne!(mine.dir(), second.dir());

        // Dropping an engine removes its own directory and lock file.
        let dir = mine.dir().to_path_buf();
        drop(mine);
        assert!(!dir.exists());
        let locks = fs::read_dir(root.path())
            .expect("read")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(LOCK))
            .count();
        assert_eq!(locks, 2, "the live and the second engine's locks remain");
        drop(live);
        drop(second);
    }
}

//! `STATE_DIR/staging`: payloads on their way to an installer, named by their sha256 —
//! `SHA256.part` while bytes arrive, `SHA256` once size and digest matched (fsync'd, renamed, and
//! the directory fsync'd). One process at a time holds the directory (an exclusive `flock` on
//! `staging/.lock`), so an offline install and the daemon's downloads never share a `.part` file.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use drover_proto::Sha256;

use super::BundleError;
use crate::error::{Error, Result};
use crate::state::{STAGING_DIR, StateDir};

/// Free bytes left untouched when staging, so that the agent's own state, spool and logs keep
/// working on a full disk; `DROVER_AGENT_RESERVE_BYTES` sets another amount.
pub const RESERVE_BYTES: u64 = 16 * 1024 * 1024;

/// The reserve in force: [`RESERVE_BYTES`] unless `DROVER_AGENT_RESERVE_BYTES` says otherwise.
pub fn reserve_bytes() -> u64 {
    std::env::var("DROVER_AGENT_RESERVE_BYTES")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(RESERVE_BYTES)
}
/// The lock file inside the staging directory.
const LOCK_FILE: &str = ".lock";

/// The staging directory, held exclusively while this value lives.
#[derive(Debug)]
pub struct Staging {
    dir: PathBuf,
    _lock: File,
}

impl Staging {
    /// Creates `STATE_DIR/staging` if needed and takes its lock; another holder is an error that
    /// says so rather than a wait.
    pub fn open(state: &StateDir) -> Result<Staging> {
        Staging::open_dir(&state.file(STAGING_DIR))
    }

    /// [`Staging::open`] for a directory given directly.
    pub fn open_dir(dir: &Path) -> Result<Staging> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(|e| Error::io("create the staging directory", dir, e))?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o644)
            .open(&lock_path)
            .map_err(|e| Error::io("open", &lock_path, e))?;
        match rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => {
                return Err(Error::State(format!(
                    "{} is in use by another drover-agent (the daemon downloading an update, or another install); try again when it is done",
                    dir.display()
                )));
            }
            Err(e) => return Err(Error::io("lock", &lock_path, e.into())),
        }
        Ok(Staging {
            dir: dir.to_owned(),
            _lock: lock,
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the payload with digest `sha256` accumulates.
    pub fn part_path(&self, sha256: &Sha256) -> PathBuf {
        self.dir.join(format!("{sha256}.part"))
    }

    /// Where the payload with digest `sha256` lies once it matched.
    pub fn final_path(&self, sha256: &Sha256) -> PathBuf {
        self.dir.join(sha256.to_string())
    }

    /// Bytes available to the agent in the staging directory's file system.
    pub fn free_bytes(&self) -> u64 {
        crate::report::health::disk_free(&self.dir)
    }

    /// Fails unless `needed` bytes fit while leaving [`reserve_bytes`] free.
    pub fn check_space(&self, needed: u64) -> Result<(), BundleError> {
        let available = self.free_bytes();
        let reserve = reserve_bytes();
        if needed.saturating_add(reserve) > available {
            return Err(BundleError::NoSpace {
                needed,
                reserve,
                available,
                dir: self.dir.display().to_string(),
            });
        }
        Ok(())
    }
}

/// Makes a `.part` file whose bytes matched durable under its final name: fsync the data, rename,
/// fsync the directory (a power cut then leaves either the `.part` or the complete file).
pub fn commit_part(file: &File, part: &Path, done: &Path) -> io::Result<()> {
    file.sync_all()?;
    fs::rename(part, done)?;
    let dir = done.parent().unwrap_or(Path::new("."));
    File::open(dir)?.sync_all()
}

/// Files one install staged; removed when dropped unless [`Staged::keep`] was called, so any
/// early return leaves the staging directory as it was.
#[derive(Debug, Default)]
pub struct Staged {
    paths: Vec<PathBuf>,
    keep: bool,
}

impl Staged {
    /// Records a file to remove on failure.
    pub fn push(&mut self, path: PathBuf) {
        self.paths.push(path);
    }

    /// The files staged so far.
    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }

    /// Keeps the files (an installer took over).
    pub fn keep(mut self) {
        self.keep = true;
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        for path in &self.paths {
            match fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot remove a staged file");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_one_holder_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        let first = Staging::open(&state).unwrap();
        let err = Staging::open(&state).unwrap_err().to_string();
        assert!(err.contains("in use by another drover-agent"), "{err}");
        drop(first);
        Staging::open(&state).unwrap();
    }

    #[test]
    fn staged_files_are_removed_unless_kept() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        fs::write(&a, b"x").unwrap();
        let mut staged = Staged::default();
        staged.push(a.clone());
        staged.push(dir.path().join("never-written"));
        drop(staged);
        assert!(!a.exists());
        fs::write(&a, b"x").unwrap();
        let mut staged = Staged::default();
        staged.push(a.clone());
        staged.keep();
        assert!(a.exists());
    }

    #[test]
    fn space_check_keeps_the_reserve() {
        let dir = tempfile::tempdir().unwrap();
        let staging = Staging::open_dir(dir.path()).unwrap();
        staging.check_space(0).unwrap();
        let err = staging.check_space(u64::MAX - 1).unwrap_err();
        assert!(
            err.to_string().starts_with("free space check failed"),
            "{err}"
        );
    }
}

//! Durable, atomic file replacement for the state directory. A reader (or a device that loses
//! power) sees either the old file or the complete new one, never a torn write: the bytes go to a
//! temporary file in the same directory, are fsynced, renamed over the target, and the directory
//! entry is fsynced too.

use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Write as _};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

/// Mode for secrets (the device key): owner read/write only.
pub const PRIVATE: u32 = 0o600;
/// Mode for public state (certificates, trust document, configuration).
pub const PUBLIC: u32 = 0o644;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Replaces `path` with `contents`, atomically and durably, leaving it with exactly `mode`.
///
/// The temporary file is created with `mode` from the start, so a secret is never readable by
/// others, not even for an instant.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let dir = parent_dir(path);
    let (tmp, mut file) = create_temp(path, &dir, mode)?;
    let written = (|| {
        // The umask may have narrowed the mode at creation; set exactly what was asked.
        file.set_permissions(Permissions::from_mode(mode))?;
        file.write_all(contents)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    File::open(&dir)?.sync_all()
}

/// Writes `path` like [`write_atomic`] unless it already exists; returns whether it wrote.
/// Used for files the device's owner edits, which the agent must never overwrite.
pub fn write_if_absent(path: &Path, contents: &[u8], mode: u32) -> io::Result<bool> {
    if fs::symlink_metadata(path).is_ok() {
        return Ok(false);
    }
    write_atomic(path, contents, mode)?;
    Ok(true)
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    }
}

fn create_temp(path: &Path, dir: &Path, mode: u32) -> io::Result<(PathBuf, File)> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?
        .to_string_lossy();
    let pid = std::process::id();
    loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(".{name}.tmp-{pid}-{n}"));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
        {
            Ok(file) => return Ok((tmp, file)),
            // A leftover from a crashed earlier process with the same pid: take the next name.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && n < u32::MAX => continue,
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode_of(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn writes_the_content_with_the_requested_mode() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("device.key");
        write_atomic(&key, b"secret", PRIVATE).unwrap();
        assert_eq!(fs::read(&key).unwrap(), b"secret");
        assert_eq!(mode_of(&key), 0o600);
        let cert = dir.path().join("device.crt");
        write_atomic(&cert, b"cert", PUBLIC).unwrap();
        assert_eq!(mode_of(&cert), 0o644);
    }

    #[test]
    fn replaces_an_existing_file_and_leaves_no_temporary_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("device.crt");
        fs::write(&path, b"old").unwrap();
        fs::set_permissions(&path, Permissions::from_mode(0o666)).unwrap();
        write_atomic(&path, b"new", PUBLIC).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        assert_eq!(mode_of(&path), 0o644);
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("device.crt")]);
    }

    #[test]
    fn write_if_absent_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        assert!(write_if_absent(&path, b"first", PUBLIC).unwrap());
        assert!(!write_if_absent(&path, b"second", PUBLIC).unwrap());
        assert_eq!(fs::read(&path).unwrap(), b"first");
    }

    #[test]
    fn writing_into_a_missing_directory_fails() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no-such-dir").join("device.crt");
        assert!(write_atomic(&missing, b"x", PUBLIC).is_err());
    }
}

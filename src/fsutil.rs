//! Crash-safe file publishing. Build systems kill tasks and run them in
//! parallel, so nothing is ever written in place: content goes to a temp file in
//! the destination's directory, is fsynced, and is renamed over the target.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};

/// Mode for private keys.
pub const KEY_MODE: u32 = 0o600;
/// Mode for certificates and other public material.
pub const PUBLIC_MODE: u32 = 0o644;

/// Create `path` exclusively with `mode` and write `data` to it, fsynced.
/// Used inside a private temp directory, where the file must not exist yet.
pub fn write_new(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .at(path)?;
    // The umask may have narrowed the mode; make it exact (only ever narrower
    // than 0644 for public files, and 0600 for keys either way).
    f.set_permissions(fs::Permissions::from_mode(mode))
        .at(path)?;
    f.write_all(data).at(path)?;
    f.sync_all().at(path)
}

/// Replace `dest` atomically with `data`: temp file in the same directory,
/// fsync, rename, fsync the directory. On error nothing is left behind.
pub fn write_atomic(dest: &Path, data: &[u8], mode: u32) -> Result<()> {
    let dir = parent_dir(dest);
    let name = dest
        .file_name()
        .ok_or_else(|| Error::Usage(format!("{}: not a file name", dest.display())))?;
    let tmp = dir.join(format!(
        ".{}.tmp.{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let _ = fs::remove_file(&tmp);
    let res = write_new(&tmp, data, mode).and_then(|()| fs::rename(&tmp, dest).at(dest));
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
        return res;
    }
    sync_dir(&dir)
}

pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).at(dir)
}

/// The directory a path lives in ("." for a bare file name).
pub fn parent_dir(p: &Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// An exclusive advisory lock held for the lifetime of the value.
/// flock(2) locks die with the process, so a killed task never leaves a stale lock.
pub struct DirLock {
    _file: File,
}

impl DirLock {
    pub fn acquire(lock_path: &Path) -> Result<DirLock> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(lock_path)
            .at(lock_path)?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| Error::io(lock_path, e.into()))?;
        Ok(DirLock { _file: file })
    }
}

//! Crash-safe file publishing. Build systems kill tasks and run them in
//! parallel, so nothing is ever written in place: content goes to a temp file in
//! the destination's directory, is fsynced, and is renamed over the target.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Mutex};

use crate::error::{Error, IoContext, Result};
use crate::par;

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
    publish(vec![Staged::with_data(dest, tag::TMP, mode, data)?])
}

/// A file being written under a temp name ([`temp_path`]) next to its
/// destination. Nothing shows at the destination until [`publish`]; dropped
/// unpublished, the temp file is removed.
pub struct Staged {
    file: Option<File>,
    tmp: PathBuf,
    dest: PathBuf,
    /// Durable as it is (nothing written since its last fsync).
    synced: bool,
    published: bool,
}

impl Staged {
    pub fn create(dest: &Path, tag: &str, mode: u32) -> Result<Staged> {
        let tmp = temp_path(dest, tag)?;
        let create = || {
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(&tmp)
        };
        let file = match create() {
            // Left by an earlier process that had our PID and was killed.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let _ = fs::remove_file(&tmp);
                create()
            }
            r => r,
        }
        .at(dest)?;
        let staged = Staged {
            file: Some(file),
            tmp,
            dest: dest.to_path_buf(),
            synced: false,
            published: false,
        };
        // The umask may have narrowed the mode; make it exact.
        staged
            .file()?
            .set_permissions(fs::Permissions::from_mode(mode))
            .at(dest)?;
        Ok(staged)
    }

    /// A staged file holding `data`, already closed.
    pub fn with_data(dest: &Path, tag: &str, mode: u32, data: &[u8]) -> Result<Staged> {
        let mut s = Staged::create(dest, tag, mode)?;
        s.file()?.write_all(data).at(dest)?;
        s.close();
        Ok(s)
    }

    /// The open temp file, until [`Staged::close`].
    pub fn file(&self) -> Result<&File> {
        self.file
            .as_ref()
            .ok_or_else(|| Error::Usage(format!("{}: already closed", self.tmp.display())))
    }

    /// Done writing: give the descriptor back, so that a batch of thousands of
    /// files does not run into the open-file limit before [`publish`].
    pub fn close(&mut self) {
        self.file = None;
    }

    /// fsync the temp file now; [`publish`] then only renames it. Nothing
    /// may be written to it afterwards.
    pub fn sync(&mut self) -> Result<()> {
        self.fsync(false)?;
        self.synced = true;
        Ok(())
    }

    fn fsync(&self, data_only: bool) -> Result<()> {
        let sync = |f: &File| {
            if data_only {
                f.sync_data()
            } else {
                f.sync_all()
            }
        };
        let synced = match &self.file {
            Some(f) => sync(f),
            // fsync flushes the inode, whichever descriptor asks.
            None => File::open(&self.tmp).and_then(|f| sync(&f)),
        };
        synced.at(&self.dest)
    }

    /// fdatasync the temp file now, e.g. on another thread while the caller
    /// does something else, so that [`publish`] has little left to wait for.
    pub fn sync_data(&self) -> Result<()> {
        self.fsync(true)
    }

    pub fn tmp(&self) -> &Path {
        &self.tmp
    }

    pub fn dest(&self) -> &Path {
        &self.dest
    }
}

/// Our PID, asked of the kernel once, not once per file of a batch.
fn pid() -> u32 {
    static PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *PID.get_or_init(std::process::id)
}

/// What a temp name says about its writer: `.NAME.TAG.PID`.
pub mod tag {
    /// A signed copy being written (PE, UKI).
    pub const SIGNING: &str = "signing";
    /// Any other file or directory being written (certificates, lists, a PKI).
    pub const TMP: &str = "tmp";
    /// `resign`'s copy of an artifact, and its copy of a GuestOS tree.
    pub const RESIGN: &str = "resign";
    pub const RESIGN_DIR: &str = "resign.d";
    pub(super) const ALL: [&str; 4] = [SIGNING, TMP, RESIGN, RESIGN_DIR];
}

/// The one temp-name scheme, `.NAME.TAG.PID` beside the destination NAME: the
/// final rename stays in one filesystem, the name says whose it is, and
/// [`remove_stale_temps`] finds the leftovers of every writer.
pub fn temp_path(dest: &Path, tag: &str) -> Result<PathBuf> {
    let name = dest
        .file_name()
        .ok_or_else(|| Error::input(dest, "not a file name"))?;
    Ok(parent_dir(dest).join(format!(".{}.{tag}.{}", name.to_string_lossy(), pid())))
}

/// Remove the temps beside `dest` that killed writers left: `.NAME.TAG.PID`
/// files and directories, and the temps of those (`..NAME.TAG.PID.TAG2.PID2`),
/// whose process no longer runs. Build systems kill tasks (SIGKILL leaves no
/// chance to clean up), and each leftover can be as large as the image. A live
/// process's temps are never touched, so concurrent writers of one destination
/// stay safe; names of other destinations are not looked at.
pub fn remove_stale_temps(dest: &Path) {
    let Some(name) = dest.file_name().and_then(|n| n.to_str()) else {
        return;
    };
    let Ok(entries) = fs::read_dir(parent_dir(dest)) else {
        return;
    };
    let prefix = format!(".{name}.");
    for e in entries.flatten() {
        let file = e.file_name();
        let Some(f) = file.to_str() else { continue };
        let Some(rest) = f
            .strip_prefix(&prefix)
            .or_else(|| f.strip_prefix('.').and_then(|g| g.strip_prefix(&prefix)))
        else {
            continue;
        };
        let Some((tagged, pid)) = rest.rsplit_once('.') else {
            continue;
        };
        let ours = tag::ALL
            .iter()
            .any(|t| tagged == *t || tagged.strip_suffix(t).is_some_and(|h| h.ends_with('.')));
        let dead = pid
            .parse::<i32>()
            .ok()
            .and_then(rustix::process::Pid::from_raw)
            .is_some_and(|p| !process_runs(p));
        if !(ours && dead) {
            continue;
        }
        // The entry's own type: a symlink is removed, never followed.
        let _ = match e.file_type() {
            Ok(t) if t.is_dir() => fs::remove_dir_all(e.path()),
            _ => fs::remove_file(e.path()),
        };
    }
}

fn process_runs(pid: rustix::process::Pid) -> bool {
    // Signal 0 only asks. EPERM: it runs, as someone else.
    !matches!(
        rustix::process::test_kill_process(pid),
        Err(rustix::io::Errno::SRCH)
    )
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.published {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Make staged files durable and visible. Every temp file is fsynced, many at
/// once: one fsync per file in turn makes each wait for its own journal
/// commit, while concurrent ones share commits. Then each is renamed over its
/// destination, and each directory is fsynced once, not once per file. If a
/// file cannot be made durable, none is renamed.
pub fn publish(mut files: Vec<Staged>) -> Result<()> {
    par::map(files.len(), par::IO_THREADS, |i| {
        let s = &files[i];
        if s.synced {
            return Ok(());
        }
        s.fsync(false)
    })?;
    for s in &mut files {
        fs::rename(&s.tmp, &s.dest).at(&s.dest)?;
        s.published = true;
    }
    let dirs: BTreeSet<PathBuf> = files.iter().map(|s| parent_dir(&s.dest)).collect();
    for d in dirs {
        sync_dir(&d)?;
    }
    Ok(())
}

/// Where a producer hands finished [`Staged`] files to [`sync_while`].
pub struct SyncQueue(mpsc::Sender<Staged>);

impl SyncQueue {
    pub fn push(&self, s: Staged) {
        // The receivers live until every sender is gone: this cannot fail.
        let _ = self.0.send(s);
    }
}

/// Run `produce`, fsyncing the files it pushes on up to `files` (at most
/// [`par::IO_THREADS`]) threads meanwhile: a batch's waits on the disk
/// overlap its CPU work instead of following it. Returns what `produce`
/// returned and the synced files, for [`publish`] to rename. If anything
/// fails, every temp file goes.
pub fn sync_while<R>(
    files: usize,
    produce: impl FnOnce(&SyncQueue) -> Result<R>,
) -> Result<(R, Vec<Staged>)> {
    let (tx, rx) = mpsc::channel::<Staged>();
    let rx = Mutex::new(rx);
    let done = Mutex::new((Vec::new(), None));
    let queue = SyncQueue(tx);
    let produced = std::thread::scope(|s| {
        for _ in 0..files.clamp(1, par::IO_THREADS) {
            s.spawn(|| loop {
                let next = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                let Ok(mut staged) = next else { break };
                let r = staged.sync();
                let mut done = done.lock().unwrap_or_else(|e| e.into_inner());
                match r {
                    Ok(()) => done.0.push(staged),
                    Err(e) => {
                        done.1.get_or_insert(e);
                    }
                }
            });
        }
        let produced = produce(&queue);
        // Closing the channel lets the threads finish once it is drained.
        drop(queue);
        produced
    });
    let (files, err) = done.into_inner().unwrap_or_else(|e| e.into_inner());
    let produced = produced?;
    match err {
        Some(e) => Err(e),
        None => Ok((produced, files)),
    }
}

/// Written bytes after which [`SyncBehind`] asks for them to be made durable.
const SYNC_BEHIND_STEP: u64 = 32 << 20;

/// Counts what a writer of one large file wrote, and every
/// [`SYNC_BEHIND_STEP`] bytes asks the thread of [`sync_behind`] to
/// fdatasync it.
pub struct SyncBehind {
    tx: mpsc::Sender<()>,
    unsynced: u64,
}

impl SyncBehind {
    pub fn wrote(&mut self, n: u64) {
        self.unsynced += n;
        if self.unsynced >= SYNC_BEHIND_STEP {
            // The thread only stops early on an error, which its join reports.
            let _ = self.tx.send(());
            self.unsynced = 0;
        }
    }
}

/// Run `write`, which writes a large file (`file`, named `path` in errors),
/// while another thread fdatasyncs what it has written so far whenever
/// [`SyncBehind::wrote`] asks: the disk works while the writer computes,
/// and the final fsync has little left to wait for. Returns when both are
/// done; the first error wins.
pub fn sync_behind<T>(
    file: &File,
    path: &Path,
    write: impl FnOnce(&mut SyncBehind) -> Result<T>,
) -> Result<T> {
    let syncing = file.try_clone().at(path)?;
    let (tx, rx) = mpsc::channel::<()>();
    std::thread::scope(|s| {
        let syncer = s.spawn(move || -> Result<()> {
            while rx.recv().is_ok() {
                while rx.try_recv().is_ok() {}
                syncing.sync_data().at(path)?;
            }
            Ok(())
        });
        let mut sync = SyncBehind { tx, unsynced: 0 };
        let written = write(&mut sync);
        // Closing the channel ends the thread once it is idle.
        drop(sync);
        let synced = syncer
            .join()
            .unwrap_or_else(|_| Err(Error::Internal("sync thread panicked".into())));
        let v = written?;
        synced?;
        Ok(v)
    })
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
    /// A symlink planted at `lock_path` is refused, not followed: opening it
    /// with O_CREAT would create or open whatever file it points to.
    pub fn acquire(lock_path: &Path) -> Result<DirLock> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(lock_path)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ELOOP) => Error::input(
                    lock_path,
                    "is a symlink; pki-signer does not follow a symlinked lock file",
                ),
                _ => Error::io(lock_path, e),
            })?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| Error::io(lock_path, e.into()))?;
        Ok(DirLock { _file: file })
    }
}

const MIB: u64 = 1 << 20;

/// What a non-PE input file holds, which sets how large it may be. Every
/// such file is read through [`read_input`], so `/dev/zero`, a FIFO or a
/// runaway file given by mistake is refused before it is read, instead of
/// being read whole. PE images are streamed and have no cap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputKind {
    /// A certificate, chain or trust-anchor file (PEM or DER).
    Certificate,
    /// A private key file.
    Key,
    /// A certificate signing request.
    Csr,
    /// A GuestOS manifest (`NAME.conf`).
    GuestosConf,
    /// A signature: a GuestOS `NAME.sig`, a detached PKCS#7 for `pe attach`.
    Signature,
    /// A `pki init --profile` file.
    Profile,
    /// A key password file or a PKCS#11 `pin-source` file.
    Password,
    /// The `resign --keys` map (keys.json).
    KeyMap,
    /// A PKI's `pki.json`.
    PkiManifest,
    /// An EFI signature list (db, dbx, ...).
    Esl,
    /// An authenticated variable (`.auth`), e.g. a dbx update.
    Auth,
    /// A signing plan (`--plan`).
    Plan,
    /// A UKI part read whole: the systemd stub, os-release, splash, dtb, SBAT.
    UkiPart,
    /// An `offline request` or `offline response` file.
    Offline,
}

impl InputKind {
    /// The largest file of this kind that is read.
    pub const fn cap(self) -> u64 {
        match self {
            InputKind::Esl | InputKind::Auth => 16 * MIB,
            InputKind::Plan | InputKind::UkiPart | InputKind::Offline => 64 * MIB,
            _ => MIB,
        }
    }

    /// "a certificate file", for error messages.
    pub const fn what(self) -> &'static str {
        match self {
            InputKind::Certificate => "a certificate file",
            InputKind::Key => "a key file",
            InputKind::Csr => "a CSR",
            InputKind::GuestosConf => "a GuestOS manifest",
            InputKind::Signature => "a signature file",
            InputKind::Profile => "a profile",
            InputKind::Password => "a password or PIN file",
            InputKind::KeyMap => "a keys file",
            InputKind::PkiManifest => "pki.json",
            InputKind::Esl => "a signature list",
            InputKind::Auth => "an .auth file",
            InputKind::Plan => "a signing plan",
            InputKind::UkiPart => "a UKI part (stub, os-release, splash, dtb, SBAT)",
            InputKind::Offline => "an offline signing request or response",
        }
    }

    /// Passwords and PINs may also come through a pipe (`<(pass show x)`):
    /// the read is bounded either way.
    fn pipe_ok(self) -> bool {
        self == InputKind::Password
    }

    fn too_big(self, path: &Path, size: impl std::fmt::Display) -> Error {
        Error::input(
            path,
            format!(
                "{size} bytes; {} may be at most {} MiB",
                self.what(),
                self.cap() / MIB
            ),
        )
    }
}

fn check_input_type(path: &Path, kind: InputKind, t: &fs::FileType) -> Result<()> {
    if t.is_file() || (t.is_fifo() && kind.pipe_ok()) {
        return Ok(());
    }
    let what = if t.is_dir() {
        "directory"
    } else if t.is_char_device() {
        "character device"
    } else if t.is_block_device() {
        "block device"
    } else if t.is_fifo() {
        "FIFO"
    } else if t.is_socket() {
        "socket"
    } else {
        "special file"
    };
    Err(Error::input(path, format!("not a regular file ({what})")))
}

/// Read a non-PE input whole, refusing anything but a regular file of at
/// most `kind.cap()` bytes: one-line [`Error::Input`] (exit 2) otherwise.
/// The type is checked before opening (a device is never opened) and again,
/// with the size, on the opened descriptor; at most cap + 1 bytes are read,
/// so a file that grows meanwhile is still refused, not read whole. The
/// buffer is allocated once, at its final size: a key read into it leaves
/// no copy behind in freed memory.
pub fn read_input(path: &Path, kind: InputKind) -> Result<Vec<u8>> {
    check_input_type(path, kind, &fs::metadata(path).at(path)?.file_type())?;
    // O_NONBLOCK: opening a FIFO for reading must not wait for a writer.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .at(path)?;
    let md = file.metadata().at(path)?;
    check_input_type(path, kind, &md.file_type())?;
    let cap = kind.cap();
    if md.is_file() && md.len() > cap {
        return Err(kind.too_big(path, md.len()));
    }
    if md.file_type().is_fifo() {
        // A pipe: now do wait for its writer's data.
        let flags = rustix::fs::fcntl_getfl(&file).map_err(|e| Error::io(path, e.into()))?;
        rustix::fs::fcntl_setfl(&file, flags - rustix::fs::OFlags::NONBLOCK)
            .map_err(|e| Error::io(path, e.into()))?;
    }
    let mut buf = Vec::with_capacity(md.len().min(cap) as usize + 1);
    file.take(cap + 1).read_to_end(&mut buf).at(path)?;
    if buf.len() as u64 > cap {
        return Err(kind.too_big(path, format!("more than {cap}")));
    }
    Ok(buf)
}

/// [`read_input`] for text: the file must be UTF-8.
pub fn read_input_to_string(path: &Path, kind: InputKind) -> Result<String> {
    String::from_utf8(read_input(path, kind)?)
        .map_err(|e| Error::input(path, format!("not UTF-8 text: {}", e.utf8_error())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_temps_of_dead_writers_go_and_the_rest_stays() {
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().join("bzImage");
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let live = std::process::id();
        let dead_names = [
            format!(".bzImage.signing.{dead}"),
            format!(".bzImage.resign.{dead}"),
            format!("..bzImage.resign.{dead}.signing.{dead}"),
        ];
        let kept = [
            format!(".bzImage.signing.{live}"),
            format!(".other.signing.{dead}"),
            format!(".bzImage.backup.{dead}"),
            "bzImage".to_string(),
        ];
        for n in dead_names.iter().chain(&kept) {
            fs::write(d.path().join(n), b"x").unwrap();
        }
        let tree = d.path().join(format!(".bzImage.resign.d.{dead}"));
        fs::create_dir(&tree).unwrap();
        fs::write(tree.join("root.img"), b"x").unwrap();

        remove_stale_temps(&dest);

        let mut left: Vec<String> = fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        let mut want = kept.to_vec();
        want.sort();
        assert_eq!(left, want);
    }

    #[test]
    fn temp_names_say_whose_they_are() {
        let t = temp_path(Path::new("/x/guestos.conf"), tag::TMP).unwrap();
        assert_eq!(
            t,
            Path::new(&format!("/x/.guestos.conf.tmp.{}", std::process::id()))
        );
        let e = temp_path(Path::new("/"), tag::TMP).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Input);
        assert_eq!(e.path(), Some(Path::new("/")));
    }
}

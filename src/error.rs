//! One error type for the library. Every variant that concerns a file carries
//! its path, so the CLI can print a single line saying what went wrong where.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The operating system refused a read, write, rename, lock...
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file exists but its content is not what we need (bad PEM, bad DER,
    /// wrong key type, malformed profile...).
    #[error("{}: {msg}", path.display())]
    Input { path: PathBuf, msg: String },
    /// Bad combination of arguments or values that are not tied to a file.
    #[error("{0}")]
    Usage(String),
    /// A check ran and the object failed it (signature, chain, expiry).
    /// This is the only variant that maps to exit code 1.
    #[error("{0}")]
    Verify(String),
    /// A cryptographic primitive failed where it should not (RNG, key
    /// generation, signing with a key that parsed fine).
    #[error("{0}")]
    Crypto(String),
    /// A fault of pki-signer itself (a worker thread panicked, encoding a
    /// value it made failed): a bug to report, never the input's fault.
    #[error("internal error: {0}")]
    Internal(String),
}

/// What kind of failure an [`Error`] is, for callers and tests that decide
/// by kind rather than by message text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    Io,
    Input,
    Usage,
    Verify,
    Crypto,
    Internal,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    pub fn input(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        Error::Input {
            path: path.as_ref().to_path_buf(),
            msg: msg.into(),
        }
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Io { .. } => ErrorKind::Io,
            Error::Input { .. } => ErrorKind::Input,
            Error::Usage(_) => ErrorKind::Usage,
            Error::Verify(_) => ErrorKind::Verify,
            Error::Crypto(_) => ErrorKind::Crypto,
            Error::Internal(_) => ErrorKind::Internal,
        }
    }

    /// The file the error is about, when there is one.
    pub fn path(&self) -> Option<&Path> {
        match self {
            Error::Io { path, .. } | Error::Input { path, .. } => Some(path),
            _ => None,
        }
    }

    /// A verification failure restated as "`path`: `what` does not verify:
    /// why"; any other error keeps its kind and message.
    pub fn not_verified(self, path: &Path, what: &str) -> Error {
        match self {
            Error::Verify(m) => {
                Error::Verify(format!("{}: {what} does not verify: {m}", path.display()))
            }
            e => e,
        }
    }

    /// Exit status per the CLI contract: 1 = verification failed, 2 = usage or input error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Verify(_) => 1,
            _ => 2,
        }
    }
}

/// Attach a path to an `io::Result`.
pub trait IoContext<T> {
    fn at(self, path: impl AsRef<Path>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl AsRef<Path>) -> Result<T> {
        self.map_err(|e| Error::io(path, e))
    }
}

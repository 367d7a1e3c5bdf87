//! The one error type of the crate.
//!
//! Every variant carries what a person needs to act on it: the file, the offset, the expected
//! and found checksum, the limit that was exceeded. A torn tail at the end of the log is *not*
//! an error: recovery reports it as a value (see `log::Recovery`).

use std::fmt;
use std::io;
use std::path::PathBuf;

/// Result alias used throughout afterlog.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in afterlog.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system I/O call failed.
    Io {
        /// What afterlog was doing, e.g. "sync segment".
        op: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A record or header failed its checksum.
    ChecksumMismatch {
        /// The segment file.
        file: PathBuf,
        /// Byte offset of the record's frame in the file.
        offset: u64,
        /// Checksum stored in the file.
        expected: u32,
        /// Checksum computed over the bytes read.
        found: u32,
    },
    /// Bytes on disk that cannot be what afterlog wrote (outside a torn tail).
    Corrupt {
        /// The file.
        file: PathBuf,
        /// Byte offset of the problem.
        offset: u64,
        /// What is wrong, in words.
        reason: String,
    },
    /// A segment was written by a format version this build does not know.
    UnsupportedVersion {
        /// The segment file.
        file: PathBuf,
        /// The version found in its header.
        found: u32,
    },
    /// A sync failed earlier; the log refuses all writes until it is reopened.
    Poisoned {
        /// Why the log was poisoned.
        reason: String,
    },
    /// Another `open` (in this or another process) holds the data directory.
    Locked {
        /// The data directory.
        dir: PathBuf,
    },
    /// An input exceeded a limit; nothing was written.
    LimitExceeded {
        /// Which limit, e.g. "record payload bytes".
        what: &'static str,
        /// The size or count that was asked for.
        found: u64,
        /// The largest size or count allowed.
        max: u64,
    },
    /// An input was malformed; nothing was written.
    InvalidInput {
        /// What was wrong, naming the input and the rule.
        reason: String,
    },
    /// The log or engine has been closed.
    Closed,
    /// A background thread of the engine panicked; the engine is stopped and every call
    /// fails with this error until the directory is reopened.
    Panicked {
        /// Which thread: `scheduler`, `worker`, `watchdog`, `compactor` or `segment preparer`.
        thread: String,
        /// The panic's own message.
        message: String,
    },
    /// A directory opened for reading is not an afterlog data directory.
    NotADataDirectory {
        /// The directory.
        dir: PathBuf,
        /// Why not, naming a file that does not belong.
        reason: String,
    },
}

impl Error {
    #[allow(dead_code)]
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Error {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn invalid(reason: impl Into<String>) -> Error {
        Error::InvalidInput {
            reason: reason.into(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { op, path, source } => write!(f, "{op} {}: {source}", path.display()),
            Error::ChecksumMismatch {
                file,
                offset,
                expected,
                found,
            } => write!(
                f,
                "checksum mismatch in {} at offset {offset}: stored {expected:#010x}, computed {found:#010x}",
                file.display()
            ),
            Error::Corrupt {
                file,
                offset,
                reason,
            } => {
                write!(
                    f,
                    "corrupt data in {} at offset {offset}: {reason}",
                    file.display()
                )
            }
            Error::UnsupportedVersion { file, found } => write!(
                f,
                "{} has format version {found}, which this build of afterlog cannot read",
                file.display()
            ),
            Error::Poisoned { reason } => {
                write!(
                    f,
                    "the log is poisoned and refuses writes until reopened: {reason}"
                )
            }
            Error::Locked { dir } => write!(
                f,
                "data directory {} is locked by another open engine (this or another process)",
                dir.display()
            ),
            Error::LimitExceeded { what, found, max } => {
                write!(
                    f,
                    "{what} is {found}, the limit is {max}; nothing was written"
                )
            }
            Error::InvalidInput { reason } => write!(f, "{reason}"),
            Error::Closed => write!(f, "the log is closed"),
            Error::Panicked { thread, message } => write!(
                f,
                "afterlog's {thread} thread panicked: {message}; the engine is stopped, reopen it"
            ),
            Error::NotADataDirectory { dir, reason } => {
                write!(
                    f,
                    "{} is not an afterlog data directory: {reason}",
                    dir.display()
                )
            }
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// A panic's own message: its payload when that is a `&str` or a `String` (what `panic!`
/// makes), else a placeholder. The payload is then dropped inside `catch_unwind`, because a
/// payload's `Drop` may itself panic, and that must not unwind out of the thread that caught
/// it (a worker would die with its attempt in flight, and `close` would wait for it). A payload that panics
/// while dropped yields a second payload, which is leaked with `mem::forget` rather than
/// dropped: dropping it could panic again, without end. Only such pathological payloads leak.
pub(crate) fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    let message = if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic whose payload is not a string".to_owned()
    };
    if let Err(again) =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(payload)))
    {
        std::mem::forget(again);
    }
    message
}

//! The one error type of the crate, and the stable status codes of the C ABI.

use std::fmt;
use std::io;

/// What can go wrong. Each variant says when it happens and what the caller can do.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// A bad argument: an empty or over-long key, an option out of range, a path that is
    /// not a directory. Nothing was changed; fix the call.
    InvalidArgument(String),
    /// A value larger than `Options::max_value_size`. Nothing was changed.
    TooLarge {
        /// The size that was asked for.
        size: usize,
        /// The largest size this store accepts.
        max: usize,
    },
    /// The caller's buffer cannot hold the value; `needed` bytes are required.
    BufferTooSmall {
        /// The value's length.
        needed: usize,
    },
    /// An I/O error from the operating system. The operation did not take effect
    /// (or, for `sync`, durability was not reached); the store stays usable.
    Io(io::Error),
    /// A record or the index image failed its checksum or key check. The bytes are
    /// never returned. `kvs verify` (and `Store::verify` once it exists) tells how much is hit.
    Corruption(String),
    /// The device or the file system is full (ENOSPC, EDQUOT, EFBIG). Data already
    /// acknowledged stays readable; free space and retry.
    NoSpace,
    /// Another process (or another `Store` in this one) has the store open.
    Locked,
    /// The store was closed, or its writer stopped after an unrecoverable error.
    Closed,
}

/// The crate's result alias.
pub type Result<T> = std::result::Result<T, Error>;

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidArgument(msg) => write!(f, "invalid argument: {msg}"),
            Error::TooLarge { size, max } => {
                write!(
                    f,
                    "value of {size} bytes is larger than the limit of {max} bytes"
                )
            }
            Error::BufferTooSmall { needed } => {
                write!(f, "buffer too small: the value needs {needed} bytes")
            }
            Error::Io(e) => write!(f, "I/O error: {e}"),
            Error::Corruption(msg) => write!(f, "corruption: {msg}"),
            Error::NoSpace => write!(f, "no space left on the device"),
            Error::Locked => write!(f, "the store is locked by another process"),
            Error::Closed => write!(f, "the store is closed"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        match e.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) | Some(libc::EFBIG) => Error::NoSpace,
            _ => Error::Io(e),
        }
    }
}

impl From<nix::errno::Errno> for Error {
    fn from(e: nix::errno::Errno) -> Self {
        Error::from(io::Error::from(e))
    }
}

impl Error {
    /// A copy for handing the same failure to several waiters (io::Error is not Clone).
    pub(crate) fn duplicate(&self) -> Error {
        match self {
            Error::InvalidArgument(m) => Error::InvalidArgument(m.clone()),
            Error::TooLarge { size, max } => Error::TooLarge {
                size: *size,
                max: *max,
            },
            Error::BufferTooSmall { needed } => Error::BufferTooSmall { needed: *needed },
            Error::Io(e) => Error::Io(io::Error::new(e.kind(), e.to_string())),
            Error::Corruption(m) => Error::Corruption(m.clone()),
            Error::NoSpace => Error::NoSpace,
            Error::Locked => Error::Locked,
            Error::Closed => Error::Closed,
        }
    }
}

//! The one error type of the crate, and the stable status codes of the C ABI.

use std::fmt;
use std::io;

/// What can go wrong. Each variant says when it happens and what the caller can do.
/// DESIGN.md ("What an error leaves behind") says, for every operation, whether an
/// operation that failed may still have taken effect.
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
    /// An I/O error from the operating system that did not touch the store's state: a
    /// failed read, or a file that could not be opened (then the message names the file).
    /// The errno is kept: `Error::errno`. A failed *write* or *sync* of the store's files
    /// is `Failed` instead.
    Io(io::Error),
    /// A record, the index image or the superblock failed a check. The bytes are never
    /// returned. `offset` is the disk_file offset (logical log offset for records) where
    /// it was found, when there is one; `kvs verify` tells how much is hit.
    Corruption {
        /// Where, if the damage is in disk_file.
        offset: Option<u64>,
        /// What was wrong.
        what: String,
    },
    /// The device or the file system is full (ENOSPC, EDQUOT, EFBIG) and kvs refused the
    /// operation before writing anything, or (checkpoint, compact, close) could not write
    /// the index's image: the old image stands and the log has every record. Nothing was
    /// lost; data already acknowledged stays readable; free space and retry.
    NoSpace,
    /// Another process (or another `Store` in this one) has the store open.
    Locked,
    /// The store was closed.
    Closed,
    /// The store has failed and must be reopened: a write, fdatasync, allocation or hole
    /// punch of disk_file or IMAGE_file failed (but a full disk met by IMAGE_file's writes,
    /// which is `NoSpace`), or a background thread died. After a failed
    /// fdatasync the kernel may already have dropped the data, so no later success could be
    /// trusted: from then on every put, delete, sync, checkpoint and compact on this handle
    /// returns `Failed`, while gets keep working. Close the handle (it writes no
    /// IMAGE_file) and open the store again: recovery reads what is really on disk.
    /// Whether the operations since the last successful `sync` survive is unknown until
    /// then. The message names the first failure.
    Failed(String),
    /// The files were written by a kvs with a format this build does not read.
    UnsupportedVersion {
        /// Which file (`disk_file`).
        file: &'static str,
        /// The version found.
        found: u32,
        /// What this build reads.
        supported: &'static str,
    },
    /// The index holds as many records as it can (2^32 - 2 node ids). Nothing was changed;
    /// delete something first.
    IndexFull,
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
            Error::Corruption {
                offset: Some(o),
                what,
            } => write!(f, "corruption at offset {o}: {what}"),
            Error::Corruption { offset: None, what } => write!(f, "corruption: {what}"),
            Error::NoSpace => write!(f, "no space left on the device"),
            Error::Locked => write!(f, "the store is locked by another process"),
            Error::Closed => write!(f, "the store is closed"),
            Error::Failed(why) => write!(
                f,
                "the store has failed and must be reopened ({why}); gets still work"
            ),
            Error::UnsupportedVersion {
                file,
                found,
                supported,
            } => write!(
                f,
                "{file} format version {found} is not supported (this build reads {supported})"
            ),
            Error::IndexFull => write!(f, "the index is full (2^32 - 2 records)"),
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

/// An io::Error with what it happened to (a file's path, or what was being set up): the
/// message says which, and `Error::errno` still finds the errno.
#[derive(Debug)]
struct AtFile {
    what: String,
    source: io::Error,
}

impl fmt::Display for AtFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.what, self.source)
    }
}

impl std::error::Error for AtFile {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

impl Error {
    /// Memory for a value could not be had (ENOMEM): the operation failed alone and
    /// changed nothing.
    pub(crate) fn no_memory() -> Error {
        Error::Io(io::Error::from_raw_os_error(libc::ENOMEM))
    }

    /// The errno behind this error, if the operating system reported one: an `Io` error's,
    /// ENOSPC for `NoSpace` (which also stands for EDQUOT and EFBIG), or the one a `Failed`
    /// store's first failure carried.
    pub fn errno(&self) -> Option<i32> {
        if let Error::NoSpace = self {
            return Some(libc::ENOSPC);
        }
        if let Error::Io(e) = self {
            if let Some(n) = e.raw_os_error() {
                return Some(n);
            }
            if let Some(at) = e.get_ref().and_then(|r| r.downcast_ref::<AtFile>()) {
                return at.source.raw_os_error();
            }
        }
        // A `Failed` message quotes the io::Error, which ends "(os error N)".
        let text = self.to_string();
        let at = text.rfind("(os error ")?;
        text[at + "(os error ".len()..]
            .split(')')
            .next()?
            .parse()
            .ok()
    }

    /// `e` from an operation on `file`, with the file named in the message (no space left
    /// stays `NoSpace`).
    pub(crate) fn at_file(file: &std::path::Path, e: io::Error) -> Error {
        Error::within(file.display().to_string(), e)
    }

    /// An `Io` error with `what` named first in its message (the errno stays); another
    /// error as it is.
    pub(crate) fn context(self, what: impl FnOnce() -> String) -> Error {
        match self {
            Error::Io(e) => Error::within(what(), e),
            other => other,
        }
    }

    /// `e` from `what` (named first in the message; the errno stays, and no space left
    /// stays `NoSpace`).
    pub(crate) fn within(what: String, e: io::Error) -> Error {
        match Error::from(e) {
            Error::Io(source) => Error::Io(io::Error::new(source.kind(), AtFile { what, source })),
            other => other,
        }
    }

    /// Corruption found at `offset` (a log offset), or elsewhere (`None`).
    pub(crate) fn corrupt(offset: Option<u64>, what: impl Into<String>) -> Error {
        Error::Corruption {
            offset,
            what: what.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_keep_their_errno_and_full_disks_are_no_space() {
        let e = Error::from(io::Error::from_raw_os_error(libc::EIO));
        assert!(matches!(&e, Error::Io(io) if io.raw_os_error() == Some(libc::EIO)));
        let e = Error::from(io::Error::from_raw_os_error(libc::ENOSPC));
        assert!(matches!(e, Error::NoSpace));
    }

    #[test]
    fn errors_on_a_file_name_it_and_keep_the_errno() {
        let path = std::path::Path::new("/some/dir/LOCK");
        let e = Error::at_file(path, io::Error::from_raw_os_error(libc::EACCES));
        assert!(matches!(&e, Error::Io(_)));
        assert_eq!(e.errno(), Some(libc::EACCES));
        let text = e.to_string();
        assert!(
            text.contains("/some/dir/LOCK") && text.contains("os error 13"),
            "{text}"
        );
        // A full device stays NoSpace, named or not.
        let e = Error::at_file(path, io::Error::from_raw_os_error(libc::ENOSPC));
        assert!(matches!(e, Error::NoSpace));
        // And says so through the errno too (kvs_last_errno gave 0 for it).
        assert_eq!(e.errno(), Some(libc::ENOSPC));
        // A failed store's message carries the errno of its first failure.
        let io = io::Error::from_raw_os_error(libc::EIO);
        let e = Error::Failed(format!("fdatasync of disk_file: {io}"));
        assert_eq!(e.errno(), Some(libc::EIO));
        assert_eq!(Error::Locked.errno(), None);
    }
}

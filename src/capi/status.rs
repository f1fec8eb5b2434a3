//! Status codes, the panic boundary every call runs in, and each thread's last error
//! (`kvs_last_error`, `kvs_last_errno`).

use std::cell::RefCell;
use std::ffi::{c_char, c_int, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::error::Error;

/// Success.
pub const KVS_OK: c_int = 0;
/// The key is not in the store (kvs_get, kvs_get_alloc, kvs_delete). Not an error.
pub const KVS_NOT_FOUND: c_int = 1;
/// A NULL pointer where one is required, a key of length 0 or over 4096, an option out
/// of range, a path that is not a directory. Nothing was changed.
pub const KVS_ERR_INVALID_ARGUMENT: c_int = -1;
/// kvs_get: the caller's buffer is smaller than the value; *value_len holds the size needed.
pub const KVS_ERR_BUFFER_TOO_SMALL: c_int = -2;
/// kvs_put: the value is larger than max_value_size. Nothing was changed.
pub const KVS_ERR_TOO_LARGE: c_int = -3;
/// An I/O error that changed nothing: a failed read, a file that could not be opened, a
/// call on a closed store. See the store's LOG file. (A failed write or sync is
/// KVS_ERR_FAILED.)
pub const KVS_ERR_IO: c_int = -4;
/// A record, the index image or the superblock failed its checks; its bytes are never
/// returned.
pub const KVS_ERR_CORRUPTION: c_int = -5;
/// The device is full (ENOSPC, EDQUOT, EFBIG) and kvs refused before writing, or
/// (kvs_checkpoint, kvs_compact, kvs_close) found no room for the index image: the old
/// image stands; nothing was lost and acknowledged data stays readable.
pub const KVS_ERR_NO_SPACE: c_int = -6;
/// Another process (or handle) has the store open.
pub const KVS_ERR_LOCKED: c_int = -7;
/// A bug inside kvs panicked; the call did not complete. Please report it. If the call
/// was a change (put, delete, batch write, sync, checkpoint, compact), the store has
/// failed as after KVS_ERR_FAILED: its state may be half changed, so later changes return
/// KVS_ERR_FAILED; gets keep working; reopen it.
pub const KVS_ERR_PANIC: c_int = -8;
/// The store has failed and must be reopened: a write, fdatasync, allocation or hole punch
/// of its files failed, or a background thread died. Gets still work; every change fails
/// with this code. Whether changes since the last successful kvs_sync survive is known
/// only after kvs_close and kvs_open (which recovers from what is on disk).
pub const KVS_ERR_FAILED: c_int = -9;
/// The store's files have a format version this build does not read.
pub const KVS_ERR_UNSUPPORTED_VERSION: c_int = -10;
/// The index holds as many records as it can (2^32 - 2); nothing was changed.
pub const KVS_ERR_INDEX_FULL: c_int = -11;
/// kvs_open, kvs_rebuild, kvs_options_init: `struct_size` of the kvs_options is not one
/// this library understands (0: the struct was not set up with kvs_options_init; or
/// larger than this library's, with fields set that it does not know). Nothing was done.
pub const KVS_ERR_OPTIONS_SIZE: c_int = -12;

/// The status code of `e`.
pub(super) fn code(e: &Error) -> c_int {
    match e {
        Error::InvalidArgument(_) => KVS_ERR_INVALID_ARGUMENT,
        Error::BufferTooSmall { .. } => KVS_ERR_BUFFER_TOO_SMALL,
        Error::TooLarge { .. } => KVS_ERR_TOO_LARGE,
        Error::Io(_) | Error::Closed => KVS_ERR_IO,
        Error::Corruption { .. } => KVS_ERR_CORRUPTION,
        Error::NoSpace => KVS_ERR_NO_SPACE,
        Error::Locked => KVS_ERR_LOCKED,
        Error::Failed(_) => KVS_ERR_FAILED,
        Error::UnsupportedVersion { .. } => KVS_ERR_UNSUPPORTED_VERSION,
        Error::IndexFull => KVS_ERR_INDEX_FULL,
    }
}

/// The last failure of a call on this thread.
struct Last {
    message: String,
    errno: c_int,
}

thread_local! {
    static LAST: RefCell<Option<Last>> = const { RefCell::new(None) };
}

fn remember(message: String, errno: c_int) {
    // During the thread's teardown there is nowhere to keep it: drop it.
    let _ = LAST.try_with(|l| *l.borrow_mut() = Some(Last { message, errno }));
}

/// Records `message` as this thread's last error and returns `code` (for failures that
/// are not an `Error`).
pub(super) fn fail(code: c_int, message: String) -> c_int {
    remember(message, 0);
    code
}

/// An error returned again (a listing's, at every call after it): `code`, `message` and
/// `errno` become this thread's last error again.
pub(super) fn again(code: c_int, message: String, errno: c_int) -> c_int {
    remember(message, errno);
    code
}

/// The panic boundary: runs `f`, turning a panic into `KVS_ERR_PANIC`. A failure (an
/// error or a panic) becomes this thread's last error.
pub(super) fn guard(f: impl FnOnce() -> Result<c_int, Error>) -> c_int {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            log::debug!("kvs C call failed: {e}");
            remember(e.to_string(), e.errno().unwrap_or(0));
            code(&e)
        }
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".into());
            remember(format!("internal error (panic): {what}"), 0);
            KVS_ERR_PANIC
        }
    }
}

/// Copies the message of the last call on this thread that failed (returned a KVS_ERR_*
/// code) into `buf`, NUL-terminated and cut to `len - 1` bytes if longer, and sets
/// `*out_len` (if not NULL) to the message's full length without the NUL: call with
/// `len` 0 (and `buf` NULL) to learn the size. The message says what failed and why,
/// with the file and the operating system's error (`... (os error 13)`) where there is
/// one. It stays until a later call on this thread fails; successful calls keep it.
/// Returns KVS_OK, KVS_NOT_FOUND if no call on this thread has failed (`*out_len` = 0),
/// or KVS_ERR_INVALID_ARGUMENT if `buf` is NULL while `len` is not 0. This function
/// never changes the last error itself.
///
/// # Safety
/// `buf` is NULL or writable for `len` bytes; `out_len` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn kvs_last_error(
    buf: *mut c_char,
    len: usize,
    out_len: *mut usize,
) -> c_int {
    let run = || {
        if buf.is_null() && len != 0 {
            return KVS_ERR_INVALID_ARGUMENT;
        }
        LAST.with_borrow(|last| {
            let msg = last.as_ref().map_or("", |l| l.message.as_str()).as_bytes();
            if !out_len.is_null() {
                // SAFETY: non-NULL, and the caller promises it is writable.
                unsafe { out_len.write(msg.len()) };
            }
            if len > 0 {
                let n = msg.len().min(len - 1);
                // SAFETY: `buf` is non-NULL (checked) and writable for `len` > n bytes;
                // `msg` is our own string, which cannot overlap the caller's buffer.
                unsafe {
                    std::ptr::copy_nonoverlapping(msg.as_ptr(), buf.cast::<u8>(), n);
                    buf.add(n).write(0);
                }
            }
            if last.is_some() {
                KVS_OK
            } else {
                KVS_NOT_FOUND
            }
        })
    };
    catch_unwind(AssertUnwindSafe(run)).unwrap_or(KVS_ERR_PANIC)
}

/// The errno (the operating system's error number) behind the last call on this thread
/// that failed, or 0 if it had none (or no call failed). KVS_ERR_NO_SPACE gives ENOSPC
/// (also for a quota or file size limit, EDQUOT or EFBIG).
#[no_mangle]
pub extern "C" fn kvs_last_errno() -> c_int {
    LAST.try_with(|l| l.borrow().as_ref().map_or(0, |l| l.errno))
        .unwrap_or(0)
}

/// A static, NUL-terminated description of a status code. Never NULL, never freed.
#[no_mangle]
pub extern "C" fn kvs_strerror(code: c_int) -> *const c_char {
    let s: &'static CStr = match code {
        KVS_OK => c"ok",
        KVS_NOT_FOUND => c"not found",
        KVS_ERR_INVALID_ARGUMENT => c"invalid argument",
        KVS_ERR_BUFFER_TOO_SMALL => c"buffer too small",
        KVS_ERR_TOO_LARGE => c"value too large",
        KVS_ERR_IO => c"I/O error",
        KVS_ERR_CORRUPTION => c"data corruption detected",
        KVS_ERR_NO_SPACE => c"no space left on device",
        KVS_ERR_LOCKED => c"store is locked by another process",
        KVS_ERR_PANIC => c"internal error (panic)",
        KVS_ERR_FAILED => c"the store has failed and must be reopened",
        KVS_ERR_UNSUPPORTED_VERSION => c"unsupported store format version",
        KVS_ERR_INDEX_FULL => c"the index is full",
        KVS_ERR_OPTIONS_SIZE => c"kvs_options.struct_size not understood (use kvs_options_init)",
        _ => c"unknown status code",
    };
    s.as_ptr()
}

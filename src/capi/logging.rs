//! Logging that belongs to the host program: kvs_set_log_callback hands each log line of
//! the library (its `log` records, including what it writes to a store's LOG file) to a
//! function of the program's. The library never installs a logger of its own.

use std::ffi::{c_char, c_int, c_void, CString};

use parking_lot::RwLock;

use super::status::{fail, guard, KVS_ERR_INVALID_ARGUMENT, KVS_OK};

/// kvs_set_log_callback levels: nothing.
pub const KVS_LOG_OFF: c_int = 0;
/// Errors only.
pub const KVS_LOG_ERROR: c_int = 1;
/// Warnings and errors.
pub const KVS_LOG_WARN: c_int = 2;
/// Also what the store does: opens, recovery, checkpoints, reclaiming (the LOG file's
/// lines).
pub const KVS_LOG_INFO: c_int = 3;
/// Also details for debugging.
pub const KVS_LOG_DEBUG: c_int = 4;
/// Everything.
pub const KVS_LOG_TRACE: c_int = 5;

/// A log callback: `level` is a KVS_LOG_* value, `target` the module that logged (e.g.
/// "kvs::recovery"), `message` the line; both strings are NUL-terminated and valid only
/// during the call. It may be called from any thread, including kvs's background
/// threads, and from inside any kvs call, sometimes while kvs holds its own locks: it must
/// not block for long, must not unwind (C++ exceptions), and must not call kvs functions
/// (hand the line to another thread if it must lead to one).
pub type kvs_log_fn = Option<
    unsafe extern "C" fn(
        userdata: *mut c_void,
        level: c_int,
        target: *const c_char,
        message: *const c_char,
    ),
>;

struct Sink {
    f: unsafe extern "C" fn(*mut c_void, c_int, *const c_char, *const c_char),
    /// The program's pointer, passed back untouched.
    userdata: usize,
}

static SINK: RwLock<Option<Sink>> = RwLock::new(None);

/// Whether `LOGGER` is the process's logger (set once, under this lock).
static INSTALLED: parking_lot::Mutex<bool> = parking_lot::Mutex::new(false);

struct Callback;

static LOGGER: Callback = Callback;

impl log::Log for Callback {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        // Recursive: a line logged while the sink is being read elsewhere must not wait.
        let sink = SINK.read_recursive();
        let Some(s) = sink.as_ref() else { return };
        let level = match record.level() {
            log::Level::Error => KVS_LOG_ERROR,
            log::Level::Warn => KVS_LOG_WARN,
            log::Level::Info => KVS_LOG_INFO,
            log::Level::Debug => KVS_LOG_DEBUG,
            log::Level::Trace => KVS_LOG_TRACE,
        };
        let text = |s: String| CString::new(s.replace('\0', " ")).unwrap_or_default();
        let target = text(record.target().to_string());
        let message = text(record.args().to_string());
        // SAFETY: the program gave us this function for exactly these arguments; the
        // strings live until it returns.
        unsafe {
            (s.f)(
                s.userdata as *mut c_void,
                level,
                target.as_ptr(),
                message.as_ptr(),
            )
        };
    }

    fn flush(&self) {}
}

/// Sends the library's log lines at `level` (a KVS_LOG_* value) and more severe to `f`,
/// with `userdata` passed back on every call. `f` NULL (or KVS_LOG_OFF) stops them. A
/// later call replaces the earlier one. The library never logs anywhere else (a store's
/// LOG file is written either way). It installs the process's `log` logger on the first
/// call with a function: returns KVS_ERR_INVALID_ARGUMENT, changing nothing, if some
/// other Rust code in the process installed one already, or if `level` is out of range.
///
/// # Safety
/// `f` is NULL or a function that is safe to call as described at kvs_log_fn, with
/// `userdata`, until it is replaced or removed.
#[no_mangle]
pub unsafe extern "C" fn kvs_set_log_callback(
    f: kvs_log_fn,
    userdata: *mut c_void,
    level: c_int,
) -> c_int {
    guard(|| {
        let filter = match level {
            KVS_LOG_OFF => log::LevelFilter::Off,
            KVS_LOG_ERROR => log::LevelFilter::Error,
            KVS_LOG_WARN => log::LevelFilter::Warn,
            KVS_LOG_INFO => log::LevelFilter::Info,
            KVS_LOG_DEBUG => log::LevelFilter::Debug,
            KVS_LOG_TRACE => log::LevelFilter::Trace,
            l => {
                return Ok(fail(
                    KVS_ERR_INVALID_ARGUMENT,
                    format!("log level {l} is not a KVS_LOG_* value"),
                ))
            }
        };
        let Some(f) = f else {
            *SINK.write() = None;
            // The process's level is ours to lower only if the process's logger is ours:
            // another Rust logger in the process keeps its level.
            if *INSTALLED.lock() {
                log::set_max_level(log::LevelFilter::Off);
            }
            return Ok(KVS_OK);
        };
        let mut installed = INSTALLED.lock();
        if !*installed {
            if log::set_logger(&LOGGER).is_err() {
                return Ok(fail(
                    KVS_ERR_INVALID_ARGUMENT,
                    "another logger is installed in this process (by Rust code other than \
                     kvs)"
                        .into(),
                ));
            }
            *installed = true;
        }
        *SINK.write() = Some(Sink {
            f,
            userdata: userdata as usize,
        });
        log::set_max_level(filter);
        Ok(KVS_OK)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Quiet;

    impl log::Log for Quiet {
        fn enabled(&self, _: &log::Metadata<'_>) -> bool {
            true
        }
        fn log(&self, _: &log::Record<'_>) {}
        fn flush(&self) {}
    }

    static QUIET: Quiet = Quiet;

    extern "C" fn ignore(_: *mut c_void, _: c_int, _: *const c_char, _: *const c_char) {}

    #[test]
    fn removing_the_callback_leaves_another_loggers_level_alone() {
        // The process's logger is another Rust library's (no other test of this binary
        // installs one).
        log::set_logger(&QUIET).expect("no logger installed yet");
        log::set_max_level(log::LevelFilter::Info);
        // SAFETY: a NULL callback needs nothing.
        let rc = unsafe { kvs_set_log_callback(None, std::ptr::null_mut(), KVS_LOG_OFF) };
        assert_eq!(rc, KVS_OK);
        assert_eq!(log::max_level(), log::LevelFilter::Info);
        // SAFETY: `ignore` may be called from any thread and ignores everything.
        let rc = unsafe { kvs_set_log_callback(Some(ignore), std::ptr::null_mut(), KVS_LOG_INFO) };
        assert_eq!(rc, KVS_ERR_INVALID_ARGUMENT);
        assert_eq!(log::max_level(), log::LevelFilter::Info);
    }
}

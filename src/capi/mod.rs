//! The C ABI: `include/kvs.h` is generated from these files by cbindgen (build.rs).
//!
//! - `mod.rs` (this file): the version, the handles and every call on a store.
//! - `status.rs`: the status codes, [`status::guard`], the one panic boundary every
//!   `extern "C"` function runs its body in (a panic becomes `KVS_ERR_PANIC` and never
//!   unwinds into C), and each thread's last error (`kvs_last_error`).
//! - `options.rs`: `kvs_options`, which grows at its end (`struct_size`).
//! - `logging.rs`: `kvs_set_log_callback`, the host program's logging.
//!
//! All raw-pointer handling is in these files, in small helpers.
//!
//! What an error leaves behind, for every call: an error other than KVS_ERR_FAILED means
//! the call changed nothing (kvs_get, kvs_verify and kvs_get_stats never change
//! anything). KVS_ERR_FAILED means the store has failed (a write or fdatasync of its files
//! failed, or a background thread died): a put or delete that returns it may have been
//! taken (readable until close) and may or may not be there after reopening; every later
//! put, delete, sync, checkpoint and compact on the handle returns KVS_ERR_FAILED, gets
//! keep working; close the handle and open the store again, which recovers from what is
//! really on disk.

#![allow(non_camel_case_types)]

pub mod logging;
pub mod options;
pub mod status;

use std::borrow::Cow;
use std::ffi::{c_char, c_int, c_void, CStr, OsStr};
use std::os::unix::ffi::OsStrExt;

use crate::batch::Batch;
use crate::error::Error;
use crate::iter::{Item, Keys};
use crate::store::Store;
use crate::value::Value;

pub use logging::*;
pub use options::*;
pub use status::*;

/// The major version of the library: a program built against kvs.h works with a library
/// of the same major version and the same or a later minor version.
pub const KVS_VERSION_MAJOR: c_int = 1;
/// The minor version: new calls and fields, nothing removed.
pub const KVS_VERSION_MINOR: c_int = 1;
/// The patch version: fixes only.
pub const KVS_VERSION_PATCH: c_int = 0;
/// The version as one number, MAJOR * 10000 + MINOR * 100 + PATCH (what kvs_version
/// returns), for `#if KVS_VERSION >= 10100` in C.
pub const KVS_VERSION: c_int = 10100;

/// The version of the library linked at run time, as KVS_VERSION numbers it (compare
/// with the KVS_VERSION the program was built against).
#[no_mangle]
pub extern "C" fn kvs_version() -> c_int {
    KVS_VERSION
}

/// The version of the library linked at run time, as a static string ("MAJOR.MINOR.PATCH",
/// e.g. "1.1.0").
#[no_mangle]
pub extern "C" fn kvs_version_string() -> *const c_char {
    const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), "\0");
    VERSION.as_ptr().cast()
}

/// Figures about an open store (see kvs_get_stats_sized). Fields are only ever added at
/// the end, never moved or removed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct kvs_stats {
    /// Live records.
    pub records: u64,
    /// Bytes of the live records in disk_file (headers and keys included).
    pub live_record_bytes: u64,
    /// Length of the log in disk_file.
    pub disk_file_bytes: u64,
    /// Memory used by the index.
    pub index_bytes: u64,
    /// Ring size in bytes.
    pub buffer_capacity: u64,
    /// Bytes in the ring not yet written to disk_file.
    pub buffer_unflushed: u64,
    /// Flushes done since open.
    pub flushes: u64,
    /// Bytes of live records counted per segment (padding included).
    pub live_bytes: u64,
    /// Bytes of segments in use that hold nothing live (overwritten, deleted, padding).
    pub dead_bytes: u64,
    /// Bytes disk_file occupies on disk (what du reports).
    pub disk_file_allocated: u64,
    /// Bytes the reclaimer rewrote since open.
    pub bytes_moved: u64,
    /// Segments the reclaimer gave back since open.
    pub segments_freed: u64,
    /// Damaged log ranges recovery found and stepped over at open (LOG lists them).
    pub damaged_ranges: u64,
    /// 1 if the store has failed (every change returns KVS_ERR_FAILED), else 0.
    pub failed: u64,
    /// Bytes per log segment. This field and those after it only kvs_get_stats_sized
    /// fills; those before are the first version of the struct (KVS_STATS_SIZE_1 bytes),
    /// all that kvs_get_stats writes.
    pub segment_size: u64,
    /// Segments holding log.
    pub segments: u64,
    /// Segment slots of disk_file free for reuse.
    pub free_segments: u64,
    /// Records the reclaimer rewrote since open.
    pub records_moved: u64,
    /// Reclaim rounds since open.
    pub reclaim_rounds: u64,
    /// The log's logical end (it only grows).
    pub log_end: u64,
    /// Bytes of the log written since open (flushes and the reclaimer's copies).
    pub flushed_bytes: u64,
    /// fdatasync calls of the log since open.
    pub syncs: u64,
    /// Of the flushes, those that wrote the whole ring because someone waited (a durable
    /// put, kvs_sync, a checkpoint, the reclaimer, a reader, puts wanting room) or at close.
    pub flushes_asked: u64,
    /// Of the flushes, those because the unflushed bytes passed the flush horizon.
    pub flushes_horizon: u64,
    /// Of the flushes, those because the flush interval passed.
    pub flushes_interval: u64,
    /// Payload bytes of records overwritten or deleted while still in the ring: never
    /// written to disk_file.
    pub died_in_ring_bytes: u64,
    /// Gets served from the ring since open.
    pub gets_from_buffer: u64,
    /// Gets that read disk_file since open.
    pub gets_from_disk: u64,
    /// Reads whose record moved between the lookup and the read, and looked again.
    pub gets_retried: u64,
    /// How long open took, in microseconds.
    pub open_micros: u64,
    /// 1 if open loaded IMAGE_file, 0 if it scanned disk_file from the start.
    pub opened_from_image: u64,
    /// Bytes of disk_file replayed at open.
    pub replayed_bytes: u64,
    /// Segments open replayed from their key summaries.
    pub summarised_segments: u64,
    /// Checkpoints taken since open.
    pub checkpoints: u64,
    /// Bytes those checkpoints wrote.
    pub checkpoint_bytes: u64,
    /// disk_file offset the newest image covers: recovery replays from there.
    pub checkpoint_covered: u64,
    /// 1 if the log is written with O_DIRECT, else 0.
    pub direct_io: u64,
    /// 1 if gets read disk_file with O_DIRECT, else 0.
    pub direct_reads: u64,
    /// Bytes of Pad records written to align flushes to 4 KiB blocks.
    pub pad_bytes: u64,
    /// Bytes of the damaged ranges recovery stepped over at open.
    pub damaged_bytes: u64,
    /// disk_file format version.
    pub format_version: u64,
    /// Segment slots kept untouched and unused (LOG names them).
    pub kept_slots: u64,
    /// Segments opened since open in a slot given back with its blocks kept (recycled).
    pub segments_reused: u64,
    /// Free segment slots that keep their blocks for the next segments now (counted in
    /// free_segments and disk_file_allocated; punched after 2 s unused, or by kvs_compact).
    pub recycled_segments: u64,
}

/// Bytes of the first version of kvs_stats (its first 14 fields): what kvs_get_stats
/// writes, and the least kvs_get_stats_sized accepts.
pub const KVS_STATS_SIZE_1: usize = 112;

impl kvs_stats {
    fn from_stats(st: &crate::store::Stats) -> kvs_stats {
        kvs_stats {
            records: st.records,
            live_record_bytes: st.live_record_bytes,
            disk_file_bytes: st.disk_file_bytes,
            index_bytes: st.index_bytes,
            buffer_capacity: st.buffer_capacity,
            buffer_unflushed: st.buffer_unflushed,
            flushes: st.flushes,
            live_bytes: st.live_bytes,
            dead_bytes: st.dead_bytes,
            disk_file_allocated: st.disk_file_allocated,
            bytes_moved: st.bytes_moved,
            segments_freed: st.segments_freed,
            damaged_ranges: st.damaged_ranges,
            failed: st.failed as u64,
            segment_size: st.segment_size,
            segments: st.segments,
            free_segments: st.free_segments,
            records_moved: st.records_moved,
            reclaim_rounds: st.reclaim_rounds,
            log_end: st.log_end,
            flushed_bytes: st.flushed_bytes,
            syncs: st.syncs,
            flushes_asked: st.flushes_asked,
            flushes_horizon: st.flushes_horizon,
            flushes_interval: st.flushes_interval,
            died_in_ring_bytes: st.died_in_ring_bytes,
            gets_from_buffer: st.gets_from_buffer,
            gets_from_disk: st.gets_from_disk,
            gets_retried: st.gets_retried,
            open_micros: st.open_micros,
            opened_from_image: st.opened_from_image as u64,
            replayed_bytes: st.replayed_bytes,
            summarised_segments: st.summarised_segments,
            checkpoints: st.checkpoints,
            checkpoint_bytes: st.checkpoint_bytes,
            checkpoint_covered: st.checkpoint_covered,
            direct_io: st.direct_io as u64,
            direct_reads: st.direct_reads as u64,
            pad_bytes: st.pad_bytes,
            damaged_bytes: st.damaged_bytes,
            format_version: st.format_version as u64,
            kept_slots: st.kept_slots,
            segments_reused: st.segments_reused,
            recycled_segments: st.recycled_segments,
        }
    }
}

const _: () = assert!(std::mem::offset_of!(kvs_stats, segment_size) == KVS_STATS_SIZE_1);

/// What kvs_compact did.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct kvs_compact_report {
    /// Segments given back to the file system.
    pub segments_freed: u64,
    /// Bytes of records rewritten at the log's tail.
    pub bytes_moved: u64,
    /// Records rewritten.
    pub records_moved: u64,
}

/// What kvs_verify found.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct kvs_verify_report {
    /// Live records read and found sound.
    pub records: u64,
    /// Bytes of those records.
    pub bytes: u64,
    /// Live records that failed a check (their gets return KVS_ERR_CORRUPTION).
    pub corrupt: u64,
    /// Damaged log ranges recovery found and stepped over at open.
    pub damaged_ranges: u64,
}

/// The handle behind `kvs_t`.
pub struct kvs_t {
    store: Store,
}

/// A value read into memory of its own (kvs_get_pinned): the form of `Store::get_value`.
pub struct kvs_pinned_t {
    value: Value,
}

/// Puts and deletes to apply atomically (kvs_batch_new).
pub struct kvs_batch_t {
    batch: Batch,
}

/// An open key listing (kvs_iter_open). Holds the next key when a caller's buffer was too
/// small for it.
pub struct kvs_iter_t {
    keys: Keys,
    pending: Option<Item>,
    /// The error that ended the listing (status, message, errno): every later call returns
    /// it again, not KVS_NOT_FOUND, which would pass for the end of a complete listing.
    failed: Option<(c_int, Cow<'static, str>, c_int)>,
}

fn invalid(what: &str) -> Error {
    Error::InvalidArgument(what.to_string())
}

/// Borrows `len` bytes at `p`; `p` may be NULL only when `len` is 0.
///
/// # Safety
/// If non-NULL, `p` must point to `len` readable bytes that stay valid and unchanged for `'a`.
unsafe fn bytes<'a>(p: *const c_void, len: usize, what: &str) -> Result<&'a [u8], Error> {
    if len == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return Err(invalid(what));
    }
    if len > isize::MAX as usize {
        return Err(invalid(&format!(
            "a length of {len} bytes is more than memory holds"
        )));
    }
    // SAFETY: non-NULL, len within isize::MAX, and the caller promises `len` readable bytes.
    Ok(unsafe { std::slice::from_raw_parts(p.cast::<u8>(), len) })
}

/// Borrows `len` writable bytes at `p`; `p` may be NULL only when `len` is 0.
///
/// # Safety
/// If non-NULL, `p` must point to `len` writable bytes not aliased elsewhere for `'a`.
unsafe fn bytes_mut<'a>(p: *mut c_void, len: usize, what: &str) -> Result<&'a mut [u8], Error> {
    if len == 0 {
        return Ok(&mut []);
    }
    if p.is_null() {
        return Err(invalid(what));
    }
    if len > isize::MAX as usize {
        return Err(invalid(&format!(
            "a length of {len} bytes is more than memory holds"
        )));
    }
    // SAFETY: non-NULL, len within isize::MAX, and the caller promises `len` writable bytes.
    Ok(unsafe { std::slice::from_raw_parts_mut(p.cast::<u8>(), len) })
}

/// The store behind a handle.
///
/// # Safety
/// `db` must be NULL or a handle from kvs_open not yet passed to kvs_close.
unsafe fn store<'a>(db: *const kvs_t) -> Result<&'a Store, Error> {
    // SAFETY: the caller promises `db` is NULL or a live handle (a Box from kvs_open).
    match unsafe { db.as_ref() } {
        Some(h) => Ok(&h.store),
        None => Err(invalid("db is NULL")),
    }
}

/// Drops the Box behind `p` (NULL: nothing), inside the panic boundary.
///
/// # Safety
/// `p` must be NULL or a pointer from `Box::into_raw` not yet freed.
unsafe fn free_box<T>(p: *mut T) {
    let _ = guard(|| {
        if !p.is_null() {
            // SAFETY: by the caller's promise, a live Box of ours.
            drop(unsafe { Box::from_raw(p) });
        }
        Ok(KVS_OK)
    });
}

/// Writes `v` through `p` if `p` is not NULL.
///
/// # Safety
/// `p` must be NULL or valid for a write of `T`.
unsafe fn set<T>(p: *mut T, v: T) {
    if !p.is_null() {
        // SAFETY: non-NULL and, by the caller's promise, valid for writes.
        unsafe { p.write(v) }
    }
}

/// Opens the store in directory `dir` (a NUL-terminated path), creating it if missing,
/// and sets `*out` to the new handle. `opts` may be NULL for all defaults; it is only read
/// during the call. On failure `*out` is set to NULL (if `out` is not NULL) and nothing
/// needs closing. The handle is owned by the caller until passed to kvs_close.
/// `opts` is set up with kvs_options_init (a struct_size it cannot read gives
/// KVS_ERR_OPTIONS_SIZE). The library logs nowhere but the store's LOG file unless the
/// program asked with kvs_set_log_callback. On any failure, kvs_last_error says why
/// (which file, which errno).
/// Returns KVS_ERR_LOCKED if another process has the store open.
///
/// # Safety
/// `dir` is NULL or a NUL-terminated string; `opts` is NULL or points to a
/// kvs_options; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn kvs_open(
    dir: *const c_char,
    opts: *const kvs_options,
    out: *mut *mut kvs_t,
) -> c_int {
    guard(|| {
        if out.is_null() {
            return Err(invalid("out is NULL"));
        }
        // SAFETY: `out` is non-NULL and the caller promises it is writable.
        unsafe { out.write(std::ptr::null_mut()) };
        if dir.is_null() {
            return Err(invalid("dir is NULL"));
        }
        // SAFETY: `dir` is non-NULL and the caller promises a NUL-terminated string.
        let path = OsStr::from_bytes(unsafe { CStr::from_ptr(dir) }.to_bytes());
        // SAFETY: `opts` is NULL or, by the caller's promise, a kvs_options of its size.
        let o = match unsafe { options::read_or_code(opts) } {
            Ok(o) => o,
            Err(code) => return Ok(code),
        };
        let store = Store::open(path, options_from(&o)?)?;
        // SAFETY: checked non-NULL above; ownership of the Box passes to the caller.
        unsafe { out.write(Box::into_raw(Box::new(kvs_t { store }))) };
        Ok(KVS_OK)
    })
}

/// A new, empty batch, owned by the caller until passed to kvs_batch_free; NULL only if
/// a panic was caught (memory that cannot be had for it aborts, as any allocation of a
/// few bytes). A batch belongs to no store: kvs_batch_write applies it to one.
#[no_mangle]
pub extern "C" fn kvs_batch_new() -> *mut kvs_batch_t {
    let mut out = std::ptr::null_mut();
    let _ = guard(|| {
        out = Box::into_raw(Box::new(kvs_batch_t {
            batch: Batch::new(),
        }));
        Ok(KVS_OK)
    });
    out
}

/// Adds a put of the `value_len` bytes at `value` under the `key_len` bytes at `key` to
/// the batch (copied; checked by kvs_batch_write). Later operations on a key in a batch win
/// over earlier ones. A key over 4096 bytes is KVS_ERR_INVALID_ARGUMENT and a value over
/// 256 MiB (what no store takes) KVS_ERR_TOO_LARGE, memory that cannot be had for the copy
/// KVS_ERR_IO; the batch is then unchanged.
///
/// # Safety
/// `b` is NULL or a batch from kvs_batch_new not yet freed, used by one thread at a time;
/// `key` and `value` point to `key_len` and `value_len` readable bytes (or are NULL).
#[no_mangle]
pub unsafe extern "C" fn kvs_batch_put(
    b: *mut kvs_batch_t,
    key: *const c_void,
    key_len: usize,
    value: *const c_void,
    value_len: usize,
) -> c_int {
    guard(|| {
        // SAFETY: the caller promises a live batch and readable key and value bytes.
        let (b, k, v) = unsafe {
            (
                b.as_mut().ok_or_else(|| invalid("batch is NULL"))?,
                bytes(key, key_len, "key is NULL")?,
                bytes(value, value_len, "value is NULL")?,
            )
        };
        b.batch.try_put(k, v)?;
        Ok(KVS_OK)
    })
}

/// Adds a delete of the `key_len` bytes at `key` to the batch (copied). A key over 4096
/// bytes is KVS_ERR_INVALID_ARGUMENT, memory that cannot be had for the copy KVS_ERR_IO;
/// the batch is then unchanged.
///
/// # Safety
/// As for kvs_batch_put.
#[no_mangle]
pub unsafe extern "C" fn kvs_batch_delete(
    b: *mut kvs_batch_t,
    key: *const c_void,
    key_len: usize,
) -> c_int {
    guard(|| {
        // SAFETY: the caller promises a live batch and readable key bytes.
        let (b, k) = unsafe {
            (
                b.as_mut().ok_or_else(|| invalid("batch is NULL"))?,
                bytes(key, key_len, "key is NULL")?,
            )
        };
        b.batch.try_delete(k)?;
        Ok(KVS_OK)
    })
}

/// Applies every operation of the batch atomically: gets see all of it or none, and after
/// a crash a reopen shows all of it or none. Durable as kvs_put is. The batch is left as
/// it was (free it, or write it again). KVS_ERR_TOO_LARGE: a value over max_value_size, or
/// a batch larger than a log segment or the ring (less 4 KiB); KVS_ERR_INVALID_ARGUMENT: a
/// bad key, or a store of a format older than 4 (created by an older kvs). On those
/// errors nothing changed.
///
/// # Safety
/// `db` is NULL or a live handle; `b` is NULL or a live batch.
#[no_mangle]
pub unsafe extern "C" fn kvs_batch_write(db: *mut kvs_t, b: *const kvs_batch_t) -> c_int {
    guard(|| {
        // SAFETY: the caller promises a live handle and a live batch.
        let (s, b) = unsafe {
            (
                store(db)?,
                b.as_ref().ok_or_else(|| invalid("batch is NULL"))?,
            )
        };
        s.write(&b.batch)?;
        Ok(KVS_OK)
    })
}

/// Empties the batch, to be filled again (its memory is kept for the next operations).
/// KVS_ERR_INVALID_ARGUMENT if `b` is NULL.
///
/// # Safety
/// As for kvs_batch_put.
#[no_mangle]
pub unsafe extern "C" fn kvs_batch_clear(b: *mut kvs_batch_t) -> c_int {
    guard(|| {
        // SAFETY: the caller promises NULL or a live batch used by one thread at a time.
        let b = unsafe { b.as_mut() }.ok_or_else(|| invalid("batch is NULL"))?;
        b.batch.clear();
        Ok(KVS_OK)
    })
}

/// The operations in the batch (puts and deletes added since kvs_batch_new or the last
/// kvs_batch_clear, refused ones not counted); 0 if `b` is NULL.
///
/// # Safety
/// `b` is NULL or a batch from kvs_batch_new not yet freed, not being changed by another
/// thread.
#[no_mangle]
pub unsafe extern "C" fn kvs_batch_len(b: *const kvs_batch_t) -> usize {
    // SAFETY: the caller promises NULL or a live batch.
    unsafe { b.as_ref() }.map_or(0, |b| b.batch.len())
}

/// Frees a batch. `b` may be NULL.
///
/// # Safety
/// `b` is NULL or a batch from kvs_batch_new not yet freed; it is invalid afterwards.
#[no_mangle]
pub unsafe extern "C" fn kvs_batch_free(b: *mut kvs_batch_t) {
    // SAFETY: NULL or a Box from kvs_batch_new, not yet freed (caller's promise).
    unsafe { free_box(b) }
}

/// Starts listing the live keys that start with the `prefix_len` bytes at `prefix`
/// (`prefix` may be NULL when `prefix_len` is 0: every key) and sets `*out` to the new
/// listing, owned by the caller until passed to kvs_iter_close. Keys come from the key
/// summaries, without reading values, in the log order of their records (not sorted).
/// Each key present and not written while the listing is open comes exactly once; a key
/// put, overwritten or deleted meanwhile may be missing. The call waits for a kvs_compact
/// or a background reclaim round under way to end. While a listing is open the
/// background reclaimer pauses and kvs_compact fails with KVS_ERR_INVALID_ARGUMENT: close
/// listings promptly, and every one before kvs_close (after kvs_close, kvs_iter_next
/// returns KVS_ERR_IO, "the store is closed", once the log segment it was reading is
/// done, and only kvs_iter_close may follow).
///
/// # Safety
/// `db` is NULL or a live handle; `prefix` points to `prefix_len` readable bytes (or is
/// NULL with `prefix_len` 0); `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn kvs_iter_open(
    db: *mut kvs_t,
    prefix: *const c_void,
    prefix_len: usize,
    out: *mut *mut kvs_iter_t,
) -> c_int {
    guard(|| {
        if out.is_null() {
            return Err(invalid("out is NULL"));
        }
        // SAFETY: `out` is non-NULL and the caller promises it is writable.
        unsafe { out.write(std::ptr::null_mut()) };
        // SAFETY: the caller promises a live handle and readable prefix bytes.
        let (s, p) = unsafe { (store(db)?, bytes(prefix, prefix_len, "prefix is NULL")?) };
        let keys = s.keys(p)?;
        let it = Box::new(kvs_iter_t {
            keys,
            pending: None,
            failed: None,
        });
        // SAFETY: checked non-NULL above; ownership of the Box passes to the caller.
        unsafe { out.write(Box::into_raw(it)) };
        Ok(KVS_OK)
    })
}

/// Copies the next key into `key_buf` (`key_buf_len` bytes; NULL when 0) and sets
/// `*key_len` to its length and `*value_len` to its value's length. Returns KVS_NOT_FOUND
/// when the listing is done (lengths set to 0). An error (KVS_ERR_IO with the store closed,
/// KVS_ERR_CORRUPTION) ends the listing: every later call returns it again. If the key does not fit, returns
/// KVS_ERR_BUFFER_TOO_SMALL with `*key_len` set to the size needed, and the same key comes
/// again on the next call (4096 bytes always suffice). `key_len` and `value_len` must not
/// be NULL.
///
/// # Safety
/// `it` is NULL or a listing from kvs_iter_open not yet closed, used by one thread at a
/// time; `key_buf` points to `key_buf_len` writable bytes; `key_len` and `value_len` are
/// writable.
#[no_mangle]
pub unsafe extern "C" fn kvs_iter_next(
    it: *mut kvs_iter_t,
    key_buf: *mut c_void,
    key_buf_len: usize,
    key_len: *mut usize,
    value_len: *mut usize,
) -> c_int {
    guard(|| {
        if key_len.is_null() || value_len.is_null() {
            return Err(invalid("key_len or value_len is NULL"));
        }
        // SAFETY: both are non-NULL and writable (caller's promise).
        unsafe {
            set(key_len, 0);
            set(value_len, 0);
        }
        // SAFETY: the caller promises a live listing used by this thread only.
        let Some(it) = (unsafe { it.as_mut() }) else {
            return Err(invalid("it is NULL"));
        };
        // SAFETY: the caller promises `key_buf_len` writable bytes.
        let buf = unsafe { bytes_mut(key_buf, key_buf_len, "key_buf is NULL")? };
        if let Some((code, message, errno)) = &it.failed {
            return Ok(status::again(*code, message.to_string(), *errno));
        }
        let item = match it.pending.take() {
            Some(item) => item,
            None => {
                // Set while the listing steps, so that a panic in it (KVS_ERR_PANIC) ends
                // the listing too.
                it.failed = Some((KVS_ERR_PANIC, Cow::Borrowed("the listing panicked"), 0));
                let next = it.keys.next();
                it.failed = None;
                match next {
                    Some(Ok(item)) => item,
                    Some(Err(e)) => {
                        let errno = e.errno().unwrap_or(0);
                        it.failed = Some((status::code(&e), Cow::Owned(e.to_string()), errno));
                        return Err(e);
                    }
                    None => return Ok(KVS_NOT_FOUND),
                }
            }
        };
        let n = item.key.len();
        // SAFETY: as above.
        unsafe { set(key_len, n) };
        if n > buf.len() {
            it.pending = Some(item);
            return Ok(status::fail(
                KVS_ERR_BUFFER_TOO_SMALL,
                format!("the next key needs a buffer of {n} bytes"),
            ));
        }
        buf[..n].copy_from_slice(&item.key);
        // SAFETY: as above.
        unsafe { set(value_len, item.value_len) };
        Ok(KVS_OK)
    })
}

/// Ends a listing and frees it (the reclaimer goes on). `it` may be NULL.
///
/// # Safety
/// `it` is NULL or a listing from kvs_iter_open not yet closed; it is invalid afterwards.
#[no_mangle]
pub unsafe extern "C" fn kvs_iter_close(it: *mut kvs_iter_t) {
    // SAFETY: NULL or a Box from kvs_iter_open, not yet closed (caller's promise).
    unsafe { free_box(it) }
}

/// Flushes and syncs everything, writes the index image, releases the store and frees
/// the handle. `db` may be NULL (returns KVS_OK). The handle is invalid afterwards, even
/// when an error is returned (the error says the final flush or image write failed, or
/// the store had failed: then no image is written and the next kvs_open recovers from
/// disk_file).
///
/// # Safety
/// `db` is NULL or a handle from kvs_open not yet closed, and no other call on it
/// runs at the same time.
#[no_mangle]
pub unsafe extern "C" fn kvs_close(db: *mut kvs_t) -> c_int {
    guard(|| {
        if db.is_null() {
            return Ok(KVS_OK);
        }
        // SAFETY: a non-NULL `db` is a Box from kvs_open, passed here once (caller's promise).
        let handle = unsafe { Box::from_raw(db) };
        handle.store.close()?;
        Ok(KVS_OK)
    })
}

/// Stores `value_len` bytes at `value` under the `key_len` bytes at `key` (1..=4096),
/// replacing any previous value. `value` may be NULL when `value_len` is 0. Both are
/// copied before the call returns, and must not change until then: the value's checksum
/// is taken from the caller's bytes before the copy, so bytes another thread changes
/// meanwhile are stored with a checksum that does not match them (gets of the key then
/// fail with KVS_ERR_CORRUPTION rather than return them). The value is readable at once and durable after the
/// next kvs_sync (with KVS_DURABILITY_ALWAYS, when the call returns KVS_OK).
/// Errors: KVS_ERR_INVALID_ARGUMENT, KVS_ERR_TOO_LARGE, KVS_ERR_INDEX_FULL,
/// KVS_ERR_NO_SPACE, KVS_ERR_IO (closed): nothing was changed. KVS_ERR_FAILED: the store
/// has failed; if the put was already taken (the failure came from its durable commit
/// with KVS_DURABILITY_ALWAYS) it is readable until kvs_close and may or may not be there
/// after reopening: unknown until then; otherwise nothing was changed.
///
/// # Safety
/// `db` is NULL or a live handle; `key` and `value` point to `key_len` and
/// `value_len` readable bytes (or are NULL).
#[no_mangle]
pub unsafe extern "C" fn kvs_put(
    db: *mut kvs_t,
    key: *const c_void,
    key_len: usize,
    value: *const c_void,
    value_len: usize,
) -> c_int {
    guard(|| {
        // SAFETY: the caller promises a live handle and readable key and value bytes.
        let (s, k, v) = unsafe {
            (
                store(db)?,
                bytes(key, key_len, "key is NULL")?,
                bytes(value, value_len, "value is NULL")?,
            )
        };
        s.put(k, v)?;
        Ok(KVS_OK)
    })
}

/// Copies the value of `key` into `buf` (`buf_len` bytes; `buf` may be NULL when
/// `buf_len` is 0) and sets `*value_len` to its length. If the buffer is too small,
/// returns KVS_ERR_BUFFER_TOO_SMALL with `*value_len` set to the size needed. If the key
/// is absent, returns KVS_NOT_FOUND with `*value_len` set to 0. `value_len` must not be NULL.
/// Never changes the store. KVS_ERR_CORRUPTION: the record failed its checks and its
/// bytes are not returned. Gets keep working on a failed store. `key` may lie inside
/// `buf` (one scratch buffer for both): the key is then copied before the read.
///
/// # Safety
/// `db` is NULL or a live handle; `key` points to `key_len` readable bytes; `buf`
/// points to `buf_len` writable bytes; `value_len` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn kvs_get(
    db: *mut kvs_t,
    key: *const c_void,
    key_len: usize,
    buf: *mut c_void,
    buf_len: usize,
    value_len: *mut usize,
) -> c_int {
    guard(|| {
        if value_len.is_null() {
            return Err(invalid("value_len is NULL"));
        }
        // SAFETY: `value_len` is non-NULL and writable (caller's promise).
        unsafe { set(value_len, 0) };
        // A key inside the buffer the value goes to (one scratch buffer for both) is
        // copied first: the read overwrites the buffer before the key is checked against
        // the record, and a key may not be borrowed while the buffer is written.
        let (k_at, b_at) = (key as usize, buf as usize);
        let overlap = key_len > 0
            && buf_len > 0
            && k_at < b_at.saturating_add(buf_len)
            && b_at < k_at.saturating_add(key_len);
        let owned_key = if overlap {
            if key_len > crate::format::MAX_KEY_LEN {
                return Err(invalid(&format!(
                    "key of {key_len} bytes: keys are 1..={} bytes",
                    crate::format::MAX_KEY_LEN
                )));
            }
            // SAFETY: the caller promises `key_len` readable bytes at `key`; the borrow
            // ends with the copy, before `buf` is borrowed below.
            Some(unsafe { bytes(key, key_len, "key is NULL")? }.to_vec())
        } else {
            None
        };
        // SAFETY: the caller promises a live handle, a readable key and a writable buffer;
        // the key borrowed here does not overlap the buffer (checked above, else copied).
        let (s, k, b) = unsafe {
            (
                store(db)?,
                match &owned_key {
                    Some(k) => &k[..],
                    None => bytes(key, key_len, "key is NULL")?,
                },
                bytes_mut(buf, buf_len, "buf is NULL")?,
            )
        };
        match s.get_into(k, b) {
            Ok(Some(n)) => {
                // SAFETY: as above.
                unsafe { set(value_len, n) };
                Ok(KVS_OK)
            }
            Ok(None) => Ok(KVS_NOT_FOUND),
            Err(Error::BufferTooSmall { needed }) => {
                // SAFETY: as above.
                unsafe { set(value_len, needed) };
                let why = Error::BufferTooSmall { needed }.to_string();
                Ok(status::fail(KVS_ERR_BUFFER_TOO_SMALL, why))
            }
            Err(e) => Err(e),
        }
    })
}

/// Like kvs_get, but allocates the buffer: on KVS_OK, `*value` points to `*value_len`
/// bytes owned by the caller, to be released with kvs_free (never with free). A value of
/// length 0 still gets a non-NULL pointer. On any other result `*value` is NULL,
/// `*value_len` is 0, and there is nothing to free. `value` and `value_len` must not be NULL.
///
/// # Safety
/// `db` is NULL or a live handle; `key` points to `key_len` readable bytes;
/// `value` and `value_len` are NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn kvs_get_alloc(
    db: *mut kvs_t,
    key: *const c_void,
    key_len: usize,
    value: *mut *mut c_void,
    value_len: *mut usize,
) -> c_int {
    guard(|| {
        if value.is_null() || value_len.is_null() {
            return Err(invalid("value or value_len is NULL"));
        }
        // SAFETY: both non-NULL and writable (caller's promise).
        unsafe {
            set(value, std::ptr::null_mut());
            set(value_len, 0);
        }
        // SAFETY: the caller promises a live handle and a readable key.
        let (s, k) = unsafe { (store(db)?, bytes(key, key_len, "key is NULL")?) };
        let Some(v) = s.get(k)? else {
            return Ok(KVS_NOT_FOUND);
        };
        // SAFETY: malloc with a non-zero size; the result is checked for NULL.
        let p = unsafe { libc::malloc(v.len().max(1)) }.cast::<u8>();
        if p.is_null() {
            return Err(Error::no_memory());
        }
        // SAFETY: `p` has room for v.len() bytes and does not overlap `v`.
        unsafe { std::ptr::copy_nonoverlapping(v.as_ptr(), p, v.len()) };
        // SAFETY: as above; ownership of `p` passes to the caller.
        unsafe {
            set(value, p.cast::<c_void>());
            set(value_len, v.len());
        }
        Ok(KVS_OK)
    })
}

/// Frees a value returned by kvs_get_alloc. NULL is fine.
///
/// # Safety
/// `p` is NULL or a pointer from kvs_get_alloc not yet freed.
#[no_mangle]
pub unsafe extern "C" fn kvs_free(p: *mut c_void) {
    // SAFETY: `p` is NULL or came from kvs_get_alloc (malloc), freed once (caller's promise).
    unsafe { libc::free(p) }
}

/// Reads the value of `key` without copying it out: on KVS_OK, `*out` is a value that owns
/// the memory the record was read into (with O_DIRECT, straight from the device), read
/// with kvs_pinned_data and kvs_pinned_len and released with kvs_pinned_free. It stays
/// valid whatever happens to the store afterwards, close included. If the key is absent,
/// returns KVS_NOT_FOUND; on any result but KVS_OK `*out` is NULL. `out` must not be NULL.
///
/// # Safety
/// `db` is NULL or a live handle; `key` points to `key_len` readable bytes; `out` is NULL
/// or writable.
#[no_mangle]
pub unsafe extern "C" fn kvs_get_pinned(
    db: *mut kvs_t,
    key: *const c_void,
    key_len: usize,
    out: *mut *mut kvs_pinned_t,
) -> c_int {
    guard(|| {
        if out.is_null() {
            return Err(invalid("out is NULL"));
        }
        // SAFETY: `out` is non-NULL and writable (caller's promise).
        unsafe { set(out, std::ptr::null_mut()) };
        // SAFETY: the caller promises a live handle and a readable key.
        let (s, k) = unsafe { (store(db)?, bytes(key, key_len, "key is NULL")?) };
        let Some(value) = s.get_value(k)? else {
            return Ok(KVS_NOT_FOUND);
        };
        let p = Box::into_raw(Box::new(kvs_pinned_t { value }));
        // SAFETY: as above; ownership of `p` passes to the caller.
        unsafe { set(out, p) };
        Ok(KVS_OK)
    })
}

/// The bytes of a value from kvs_get_pinned (kvs_pinned_len of them; not NUL-terminated),
/// valid until kvs_pinned_free. NULL if `p` is NULL.
///
/// # Safety
/// `p` is NULL or a value from kvs_get_pinned not yet freed.
#[no_mangle]
pub unsafe extern "C" fn kvs_pinned_data(p: *const kvs_pinned_t) -> *const c_void {
    // SAFETY: NULL or a live value (caller's promise).
    match unsafe { p.as_ref() } {
        Some(p) => p.value.as_ptr().cast(),
        None => std::ptr::null(),
    }
}

/// The length of a value from kvs_get_pinned; 0 if `p` is NULL.
///
/// # Safety
/// `p` is NULL or a value from kvs_get_pinned not yet freed.
#[no_mangle]
pub unsafe extern "C" fn kvs_pinned_len(p: *const kvs_pinned_t) -> usize {
    // SAFETY: NULL or a live value (caller's promise).
    unsafe { p.as_ref() }.map_or(0, |p| p.value.len())
}

/// Frees a value from kvs_get_pinned. NULL is fine.
///
/// # Safety
/// `p` is NULL or a value from kvs_get_pinned not yet freed; it is invalid afterwards.
#[no_mangle]
pub unsafe extern "C" fn kvs_pinned_free(p: *mut kvs_pinned_t) {
    // SAFETY: NULL or a Box from kvs_get_pinned, freed once (caller's promise).
    unsafe { free_box(p) }
}

/// Sets `*value_len` to the length of `key`'s value and returns KVS_OK, or returns
/// KVS_NOT_FOUND (with `*value_len` 0) if the key is absent; from the index alone, without
/// reading the value (a later kvs_get still checks the record and may return
/// KVS_ERR_CORRUPTION).
///
/// # Safety
/// `db` is NULL or a live handle; `key` points to `key_len` readable bytes; `value_len`
/// is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn kvs_value_len(
    db: *mut kvs_t,
    key: *const c_void,
    key_len: usize,
    value_len: *mut usize,
) -> c_int {
    guard(|| {
        if value_len.is_null() {
            return Err(invalid("value_len is NULL"));
        }
        // SAFETY: the caller promises a live handle and `key_len` readable bytes.
        let (st, key) = unsafe { (store(db)?, bytes(key, key_len, "key is NULL")?) };
        let n = st.value_len(key)?;
        // SAFETY: non-NULL (checked) and writable (caller's promise).
        unsafe { set(value_len, n.unwrap_or(0)) };
        Ok(if n.is_some() { KVS_OK } else { KVS_NOT_FOUND })
    })
}

/// Removes `key`. Returns KVS_OK if it was there, KVS_NOT_FOUND if it was not. As for
/// kvs_put, the key must not change until the call returns (its checksum is taken before
/// it is copied). Errors as for kvs_put: any but KVS_ERR_FAILED changed nothing; with
/// KVS_ERR_FAILED the delete may or may not survive a reopen if it had been taken.
///
/// # Safety
/// `db` is NULL or a live handle; `key` points to `key_len` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn kvs_delete(db: *mut kvs_t, key: *const c_void, key_len: usize) -> c_int {
    guard(|| {
        // SAFETY: the caller promises a live handle and a readable key.
        let (s, k) = unsafe { (store(db)?, bytes(key, key_len, "key is NULL")?) };
        Ok(if s.delete(k)? { KVS_OK } else { KVS_NOT_FOUND })
    })
}

/// Returns once everything put or deleted before the call is on disk and fdatasync'ed.
/// Fails with KVS_ERR_FAILED (the store has failed: after a failed write or fdatasync no
/// later kvs_sync on the handle succeeds), KVS_ERR_IO (closed), or
/// KVS_ERR_INVALID_ARGUMENT (`db` NULL).
///
/// # Safety
/// `db` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn kvs_sync(db: *mut kvs_t) -> c_int {
    guard(|| {
        // SAFETY: the caller promises a live handle.
        unsafe { store(db)? }.sync()?;
        Ok(KVS_OK)
    })
}

/// Rewrites the index image now, after making everything put so far durable, so that
/// the next open replays nothing. Background checkpoints do the same periodically. On
/// error the old image stays: KVS_ERR_NO_SPACE if the disk had no room for the new one
/// (the store goes on), else a failed write of it is KVS_ERR_FAILED.
///
/// # Safety
/// `db` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn kvs_checkpoint(db: *mut kvs_t) -> c_int {
    guard(|| {
        // SAFETY: the caller promises a live handle.
        unsafe { store(db)? }.checkpoint()?;
        Ok(KVS_OK)
    })
}

/// Reclaims space now, at full speed: moves the live records of every segment with dead
/// space to the log's tail and gives the segments back to the file system. Runs beside
/// other calls. Fills `*out` (if not NULL) with what it did. On error (KVS_ERR_FAILED, or
/// an I/O error reading a record) every record is still in its old segment or, durably,
/// in its copy: segments are given back only after their copies are synced. While a key
/// listing is open on the store it waits up to 2 s for it to close, then returns
/// KVS_ERR_INVALID_ARGUMENT having moved nothing.
///
/// # Safety
/// `db` is NULL or a live handle; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn kvs_compact(db: *mut kvs_t, out: *mut kvs_compact_report) -> c_int {
    guard(|| {
        // SAFETY: the caller promises a live handle.
        let r = unsafe { store(db)? }.compact()?;
        let rep = kvs_compact_report {
            segments_freed: r.segments_freed,
            bytes_moved: r.bytes_moved,
            records_moved: r.records_moved,
        };
        // SAFETY: NULL or writable (caller's promise).
        unsafe { set(out, rep) };
        Ok(KVS_OK)
    })
}

/// Fills the first version of `*out` (its first 14 fields, KVS_STATS_SIZE_1 bytes) with
/// figures about the store, and writes nothing past them: a program built against an
/// older kvs.h keeps working. For every field use kvs_get_stats_sized. `out` must not be
/// NULL.
///
/// # Safety
/// `db` is NULL or a live handle; `out` is NULL or has KVS_STATS_SIZE_1 writable bytes.
#[no_mangle]
pub unsafe extern "C" fn kvs_get_stats(db: *mut kvs_t, out: *mut kvs_stats) -> c_int {
    // SAFETY: passed on; the caller's promise covers KVS_STATS_SIZE_1 bytes.
    unsafe { kvs_get_stats_sized(db, out, KVS_STATS_SIZE_1) }
}

/// Fills `*out` with figures about the store, `size` bytes of it: pass `sizeof(kvs_stats)`.
/// Fields are only ever added at the end of kvs_stats, so a program built against an
/// older kvs.h gets the fields it knows, and one built against a newer kvs.h than the
/// library finds the fields this library lacks set to 0. `size` below KVS_STATS_SIZE_1,
/// above KVS_MAX_STRUCT_SIZE, or not a multiple of 8 is KVS_ERR_INVALID_ARGUMENT, and
/// nothing is written; so is a NULL `out`.
///
/// # Safety
/// `db` is NULL or a live handle; `out` is NULL or has `size` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn kvs_get_stats_sized(
    db: *mut kvs_t,
    out: *mut kvs_stats,
    size: usize,
) -> c_int {
    guard(|| {
        if out.is_null() {
            return Err(invalid("out is NULL"));
        }
        if !(KVS_STATS_SIZE_1..=options::KVS_MAX_STRUCT_SIZE).contains(&size) || size % 8 != 0 {
            return Err(invalid(&format!(
                "size {size} is not that of a kvs_stats (pass sizeof(kvs_stats))"
            )));
        }
        // SAFETY: the caller promises a live handle.
        let st = kvs_stats::from_stats(&unsafe { store(db)? }.stats());
        let ours = std::mem::size_of::<kvs_stats>();
        let n = size.min(ours);
        // SAFETY: `out` has `size` writable bytes (caller's promise), `n` <= `size`, and
        // `st` has `n` <= its size readable bytes; a local and the caller's memory do not
        // overlap. Bytes are copied, so `out` need not be aligned for a whole kvs_stats
        // (its first fields are the caller's own struct); the rest, past what this library
        // knows, is zeroed.
        unsafe {
            let dst = out.cast::<u8>();
            std::ptr::copy_nonoverlapping((&st as *const kvs_stats).cast::<u8>(), dst, n);
            std::ptr::write_bytes(dst.add(n), 0, size - n);
        }
        Ok(KVS_OK)
    })
}

/// Reads every live record and checks header, key and checksum; fills `*out` (if not
/// NULL) with the counts. Returns KVS_OK if every record is sound and recovery found no
/// damaged range at open, KVS_ERR_CORRUPTION if not (the store's LOG names the first
/// ones), or another error if reading failed.
/// It runs beside other calls; on a large store it reads the whole data set.
///
/// # Safety
/// `db` is NULL or a live handle; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn kvs_verify(db: *mut kvs_t, out: *mut kvs_verify_report) -> c_int {
    guard(|| {
        // SAFETY: the caller promises a live handle.
        let r = unsafe { store(db)? }.verify()?;
        let rep = kvs_verify_report {
            records: r.records,
            bytes: r.bytes,
            corrupt: r.corrupt,
            damaged_ranges: r.damaged_ranges,
        };
        // SAFETY: NULL or writable (caller's promise).
        unsafe { set(out, rep) };
        Ok(if r.is_clean() {
            KVS_OK
        } else {
            status::fail(
                KVS_ERR_CORRUPTION,
                format!(
                    "verify: {} corrupt records, {} damaged log ranges found at open (the \
                     store's LOG names them)",
                    r.corrupt, r.damaged_ranges
                ),
            )
        })
    })
}

/// Rebuilds the index of the store in directory `dir` from disk_file alone, whatever
/// IMAGE_file holds, and writes a new IMAGE_file. Takes the store's lock first (returns
/// KVS_ERR_LOCKED, changing nothing, if another process or handle has it open); the old
/// IMAGE_file is replaced only at the end, atomically, so on any error it is untouched.
/// `opts` may be NULL. Reads every segment of disk_file. A directory without a store is
/// KVS_ERR_INVALID_ARGUMENT (nothing is created).
///
/// # Safety
/// `dir` is NULL or a NUL-terminated string; `opts` is NULL or points to a kvs_options.
#[no_mangle]
pub unsafe extern "C" fn kvs_rebuild(dir: *const c_char, opts: *const kvs_options) -> c_int {
    guard(|| {
        if dir.is_null() {
            return Err(invalid("dir is NULL"));
        }
        // SAFETY: `dir` is non-NULL and the caller promises a NUL-terminated string.
        let path = OsStr::from_bytes(unsafe { CStr::from_ptr(dir) }.to_bytes());
        // SAFETY: `opts` is NULL or, by the caller's promise, a kvs_options of its size.
        let o = match unsafe { options::read_or_code(opts) } {
            Ok(o) => o,
            Err(code) => return Ok(code),
        };
        Store::rebuild_index(path, options_from(&o)?)?;
        Ok(KVS_OK)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_macros_are_the_crates() {
        let v = |s: &str| s.parse::<c_int>().unwrap();
        assert_eq!(KVS_VERSION_MAJOR, v(env!("CARGO_PKG_VERSION_MAJOR")));
        assert_eq!(KVS_VERSION_MINOR, v(env!("CARGO_PKG_VERSION_MINOR")));
        assert_eq!(KVS_VERSION_PATCH, v(env!("CARGO_PKG_VERSION_PATCH")));
        assert_eq!(
            KVS_VERSION,
            KVS_VERSION_MAJOR * 10000 + KVS_VERSION_MINOR * 100 + KVS_VERSION_PATCH
        );
        // SAFETY: a static NUL-terminated string.
        let s = unsafe { CStr::from_ptr(kvs_version_string()) };
        assert_eq!(s.to_str().unwrap(), env!("CARGO_PKG_VERSION"));
    }
}

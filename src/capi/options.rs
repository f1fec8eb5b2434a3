//! `kvs_options`, what kvs_open and kvs_rebuild take, and how it grows: every field is 8
//! bytes, the first is the caller's `struct_size`, and a library reads as much of the
//! struct as the caller's size says (the rest default), or refuses a larger struct whose
//! extra fields are set.

use std::ffi::c_int;
use std::mem::size_of;
use std::time::Duration;

use super::status::{KVS_ERR_OPTIONS_SIZE, KVS_OK};
use crate::error::Error;
use crate::options::{Durability, Options};

/// kvs_options.durability: the lookout flushes without fdatasync; kvs_sync and
/// checkpoints make data durable. A process crash loses nothing flushed.
pub const KVS_DURABILITY_NONE: u64 = 1;
/// kvs_options.durability (the default): every flush ends with fdatasync.
pub const KVS_DURABILITY_BATCH: u64 = 2;
/// kvs_options.durability: kvs_put and kvs_delete return only once durable (group commit).
pub const KVS_DURABILITY_ALWAYS: u64 = 3;

/// Options for kvs_open and kvs_rebuild. Set one up with kvs_options_init, which fills
/// the defaults and `struct_size`, then change the fields wanted. Zero in any field (but
/// `struct_size`) also means that field's default. Every field is 8 bytes, so the struct
/// has no padding and can only grow at its end: a program built against an older kvs.h
/// (a shorter struct) keeps working with a newer library, which uses the defaults for the
/// fields the program does not know.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct kvs_options {
    /// Bytes of this struct as the caller's kvs.h declares it (`sizeof(kvs_options)`),
    /// set by kvs_options_init. 0, or more than KVS_MAX_STRUCT_SIZE, is refused with
    /// KVS_ERR_OPTIONS_SIZE.
    pub struct_size: u64,
    /// Bytes of the ring write buffer; a multiple of 4096, from 65536 to 2^40. Default 256 MiB.
    pub buffer_size: u64,
    /// Flush as soon as this many bytes wait in the ring. Default: 8 MiB or a quarter of
    /// the ring, whichever is smaller.
    pub flush_horizon: u64,
    /// Flush whatever waits at least this often, in milliseconds. Default 20.
    pub flush_interval_ms: u64,
    /// Records the store is expected to hold (sizes the hash table at creation). Default 1 Mi.
    pub expected_records: u64,
    /// The largest value accepted, at most 256 MiB (268435456); fixed when the store is
    /// created (see `Options::max_value_size` for the ring and segment sizes it needs).
    /// Default 5 MiB.
    pub max_value_size: u64,
    /// Non-zero: write disk_file through the page cache instead of with O_DIRECT.
    pub disable_direct_io: u64,
    /// Non-zero: gets read disk_file through the page cache instead of with O_DIRECT.
    pub disable_direct_reads: u64,
    /// KVS_DURABILITY_NONE, _BATCH or _ALWAYS; 0 means _BATCH.
    pub durability: u64,
    /// Checkpoint the index after this many bytes of log. 0 means the default (256 MiB);
    /// UINT64_MAX turns this trigger off (Rust's 0).
    pub checkpoint_bytes: u64,
    /// Rewrite the index image at least this often (ms) when anything changed. 0 means the
    /// default (60000); UINT64_MAX turns this trigger off (Rust's 0).
    pub checkpoint_interval_ms: u64,
    /// Permission bits of created files (must include 0600). Default 0600.
    pub file_mode: u64,
    /// Bytes per log segment, the unit of space reclamation; used when the store is
    /// created. A multiple of 4096 from 64 KiB to 4 GiB - 4 KiB. Default 256 MiB.
    pub segment_size: u64,
    /// Non-zero: no background reclaiming (kvs_compact still works).
    pub disable_background_reclaim: u64,
    /// Dead share of the closed segments at which the background reclaimer starts
    /// (0.01 to 0.9). 0 means the default, 0.2.
    pub reclaim_threshold: f64,
    /// Dead share above which the reclaimer ignores reclaim_rate. 0 means the default, 0.3.
    pub reclaim_urgent: f64,
    /// Bytes per second the background reclaimer may rewrite below reclaim_urgent.
    /// 0 means the default (256 MiB/s); UINT64_MAX means no limit.
    pub reclaim_rate: u64,
}

/// Bytes of `kvs_options` in this library.
const SIZE: usize = size_of::<kvs_options>();

impl kvs_options {
    /// The defaults, as kvs_options_init writes them (flush_horizon stays 0: its default
    /// depends on buffer_size).
    fn defaults() -> kvs_options {
        let d = Options::default();
        kvs_options {
            struct_size: SIZE as u64,
            buffer_size: d.get_buffer_size() as u64,
            flush_horizon: 0,
            flush_interval_ms: d.get_flush_interval().as_millis() as u64,
            expected_records: d.get_expected_records(),
            max_value_size: d.get_max_value_size() as u64,
            disable_direct_io: 0,
            disable_direct_reads: 0,
            durability: KVS_DURABILITY_BATCH,
            checkpoint_bytes: d.get_checkpoint_bytes(),
            checkpoint_interval_ms: d.get_checkpoint_interval().as_millis() as u64,
            file_mode: d.get_file_mode() as u64,
            segment_size: d.get_segment_size(),
            disable_background_reclaim: 0,
            reclaim_threshold: d.get_reclaim_threshold(),
            reclaim_urgent: d.get_reclaim_urgent(),
            reclaim_rate: d.get_reclaim_rate(),
        }
    }
}

/// The most bytes a growable struct of the C ABI (`kvs_options`, `kvs_stats`) may say
/// it has: far more than any will (each field is 8 bytes), and a bound on what a size
/// left uninitialised (a struct never passed to kvs_options_init) can make the library
/// read or write.
pub const KVS_MAX_STRUCT_SIZE: usize = 4096;

/// Why `size` is not a struct size this library can read or fill, if it is not.
fn bad_size(size: u64) -> Option<String> {
    if size == 0 {
        Some("kvs_options.struct_size is 0: set the struct up with kvs_options_init".into())
    } else if size > KVS_MAX_STRUCT_SIZE as u64 {
        Some(format!(
            "kvs_options.struct_size {size} is more than any kvs_options can be ({} bytes at \
             most): set the struct up with kvs_options_init",
            KVS_MAX_STRUCT_SIZE
        ))
    } else if size % 8 != 0 {
        Some(format!(
            "kvs_options.struct_size {size} is not a multiple of 8 (every field is 8 bytes)"
        ))
    } else {
        None
    }
}

/// Fills the first `size` bytes at `opts` with the defaults and sets `opts->struct_size`
/// to `size`; pass `sizeof(kvs_options)`. A `size` larger than this library's struct
/// (a newer kvs.h) gets zeros, meaning defaults, in the fields this library does not know.
/// Returns KVS_OK, KVS_ERR_INVALID_ARGUMENT if `opts` is NULL, or KVS_ERR_OPTIONS_SIZE
/// if `size` is 0, not a multiple of 8, or above KVS_MAX_STRUCT_SIZE.
///
/// # Safety
/// `opts` is NULL or writable for `size` bytes.
#[no_mangle]
pub unsafe extern "C" fn kvs_options_init(opts: *mut kvs_options, size: usize) -> c_int {
    super::status::guard(|| {
        if opts.is_null() {
            return Err(Error::InvalidArgument("opts is NULL".into()));
        }
        if let Some(why) = bad_size(size as u64) {
            return Ok(super::status::fail(KVS_ERR_OPTIONS_SIZE, why));
        }
        let d = kvs_options {
            struct_size: size as u64,
            ..kvs_options::defaults()
        };
        let n = size.min(SIZE);
        // SAFETY: `d` is a plain struct of SIZE >= n bytes without padding; the caller
        // promises `size` >= n writable bytes at `opts`, which cannot overlap our local.
        unsafe {
            std::ptr::copy_nonoverlapping(
                (&d as *const kvs_options).cast::<u8>(),
                opts.cast::<u8>(),
                n,
            );
            if size > SIZE {
                opts.cast::<u8>().add(SIZE).write_bytes(0, size - SIZE);
            }
        }
        Ok(KVS_OK)
    })
}

/// The caller's options (NULL: all defaults), read as far as its `struct_size` says; the
/// fields past it default. `Err(message)` for a size this library cannot read.
///
/// # Safety
/// `opts` is NULL or points to at least 8 readable bytes, and then to `struct_size`.
pub(super) unsafe fn read(opts: *const kvs_options) -> Result<kvs_options, String> {
    if opts.is_null() {
        return Ok(kvs_options::default());
    }
    // SAFETY: non-NULL and, by the caller's promise, at least the first field readable.
    let size = unsafe { opts.cast::<u64>().read_unaligned() };
    if let Some(why) = bad_size(size) {
        return Err(why);
    }
    let mut o = kvs_options::default();
    let n = (size as usize).min(SIZE);
    // SAFETY: the caller promises `size` >= n readable bytes; `o` is a local of SIZE >= n
    // bytes without padding, and any bytes are valid for its u64 and f64 fields.
    unsafe {
        std::ptr::copy_nonoverlapping(
            opts.cast::<u8>(),
            (&mut o as *mut kvs_options).cast::<u8>(),
            n,
        )
    };
    if size as usize > SIZE {
        // SAFETY: the caller promises `size` readable bytes.
        let all = unsafe { std::slice::from_raw_parts(opts.cast::<u8>(), size as usize) };
        if all[SIZE..].iter().any(|&b| b != 0) {
            return Err(format!(
                "kvs_options of {size} bytes sets fields this library does not know (it \
                 knows {SIZE} bytes): use a kvs.h no newer than the library, or leave them 0"
            ));
        }
    }
    Ok(o)
}

/// `read`, with a refused size reported as KVS_ERR_OPTIONS_SIZE (the error's message is
/// the thread's last error).
///
/// # Safety
/// As for `read`.
pub(super) unsafe fn read_or_code(opts: *const kvs_options) -> Result<kvs_options, c_int> {
    // SAFETY: passed on from the caller.
    unsafe { read(opts) }.map_err(|why| super::status::fail(KVS_ERR_OPTIONS_SIZE, why))
}

pub(super) fn options_from(o: &kvs_options) -> Result<Options, Error> {
    let d = Options::default();
    let nz = |v: u64, d: usize| {
        if v == 0 {
            d
        } else {
            v.min(usize::MAX as u64) as usize
        }
    };
    let mut opts = Options::default()
        .buffer_size(nz(o.buffer_size, d.get_buffer_size()))
        .max_value_size(nz(o.max_value_size, d.get_max_value_size()));
    if o.flush_horizon != 0 {
        opts = opts.flush_horizon(nz(o.flush_horizon, 0));
    }
    if o.flush_interval_ms != 0 {
        opts = opts.flush_interval(Duration::from_millis(o.flush_interval_ms));
    }
    if o.expected_records != 0 {
        opts = opts.expected_records(o.expected_records);
    }
    // UINT64_MAX: off (0 means the default in C, as for every field).
    match o.checkpoint_bytes {
        0 => {}
        u64::MAX => opts = opts.checkpoint_bytes(0),
        b => opts = opts.checkpoint_bytes(b),
    }
    match o.checkpoint_interval_ms {
        0 => {}
        u64::MAX => opts = opts.checkpoint_interval(Duration::ZERO),
        ms => opts = opts.checkpoint_interval(Duration::from_millis(ms)),
    }
    if o.file_mode != 0 {
        opts = opts.file_mode(o.file_mode.min(u32::MAX as u64) as u32);
    }
    if o.segment_size != 0 {
        opts = opts.segment_size(o.segment_size);
    }
    if o.reclaim_threshold != 0.0 {
        opts = opts.reclaim_threshold(o.reclaim_threshold);
    }
    if o.reclaim_urgent != 0.0 {
        opts = opts.reclaim_urgent(o.reclaim_urgent);
    }
    match o.reclaim_rate {
        0 => {}
        u64::MAX => opts = opts.reclaim_rate(0),
        r => opts = opts.reclaim_rate(r),
    }
    opts = opts.background_reclaim(o.disable_background_reclaim == 0);
    let durability = match o.durability {
        0 | KVS_DURABILITY_BATCH => Durability::Batch,
        KVS_DURABILITY_NONE => Durability::None,
        KVS_DURABILITY_ALWAYS => Durability::Always,
        d => {
            return Err(Error::InvalidArgument(format!(
                "durability {d} is not a KVS_DURABILITY_* value"
            )))
        }
    };
    Ok(opts
        .direct_io(o.disable_direct_io == 0)
        .direct_reads(o.disable_direct_reads == 0)
        .durability(durability))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_is_8_bytes_so_every_prefix_ends_on_a_field() {
        assert_eq!(SIZE % 8, 0);
        assert_eq!(
            SIZE,
            17 * 8,
            "kvs_options has 17 fields of 8 bytes, no padding"
        );
    }

    #[test]
    fn the_defaults_are_the_engines() {
        let o = options_from(&kvs_options::defaults()).unwrap();
        let d = Options::default();
        assert_eq!(o.get_buffer_size(), d.get_buffer_size());
        assert_eq!(o.get_flush_horizon(), d.get_flush_horizon());
        assert_eq!(o.get_reclaim_rate(), d.get_reclaim_rate());
        assert_eq!(o.get_durability(), d.get_durability());
        assert_eq!(o.get_file_mode(), d.get_file_mode());
    }
}

/*
 * kvs: a single-node key-value storage engine for large values.
 *
 * Conventions:
 *  - Every function that can fail returns KVS_OK (0), KVS_NOT_FOUND (1), or a negative
 *    KVS_ERR_* code; kvs_strerror(code) gives a static message. Those that cannot fail
 *    return what they are named for, or nothing: the version calls, kvs_last_errno,
 *    kvs_strerror, kvs_pinned_data/kvs_pinned_len, kvs_batch_len, kvs_batch_new (NULL
 *    only if a panic was caught), and the frees and closes of values, batches and
 *    listings.
 *  - Pointers passed in are borrowed for the duration of the call only.
 *  - A kvs_t handle may be used from many threads at once; kvs_close must not race any
 *    other call on the same handle.
 *  - No Rust panic ever unwinds into C: it is reported as KVS_ERR_PANIC.
 */

#ifndef KVS_H
#define KVS_H

/* Generated from src/capi/ by cbindgen (build.rs). Do not edit by hand. */

#include <stddef.h>
#include <stdint.h>

typedef struct kvs kvs_t;

/**
 * The major version of the library: a program built against kvs.h works with a library
 * of the same major version and the same or a later minor version.
 */
#define KVS_VERSION_MAJOR 1

/**
 * The minor version: new calls and fields, nothing removed.
 */
#define KVS_VERSION_MINOR 1

/**
 * The patch version: fixes only.
 */
#define KVS_VERSION_PATCH 0

/**
 * The version as one number, MAJOR * 10000 + MINOR * 100 + PATCH (what kvs_version
 * returns), for `#if KVS_VERSION >= 10100` in C.
 */
#define KVS_VERSION 10100

/**
 * Bytes of the first version of kvs_stats (its first 14 fields): what kvs_get_stats
 * writes, and the least kvs_get_stats_sized accepts.
 */
#define KVS_STATS_SIZE_1 112

/**
 * kvs_set_log_callback levels: nothing.
 */
#define KVS_LOG_OFF 0

/**
 * Errors only.
 */
#define KVS_LOG_ERROR 1

/**
 * Warnings and errors.
 */
#define KVS_LOG_WARN 2

/**
 * Also what the store does: opens, recovery, checkpoints, reclaiming (the LOG file's
 * lines).
 */
#define KVS_LOG_INFO 3

/**
 * Also details for debugging.
 */
#define KVS_LOG_DEBUG 4

/**
 * Everything.
 */
#define KVS_LOG_TRACE 5

/**
 * kvs_options.durability: the lookout flushes without fdatasync; kvs_sync and
 * checkpoints make data durable. A process crash loses nothing flushed.
 */
#define KVS_DURABILITY_NONE 1

/**
 * kvs_options.durability (the default): every flush ends with fdatasync.
 */
#define KVS_DURABILITY_BATCH 2

/**
 * kvs_options.durability: kvs_put and kvs_delete return only once durable (group commit).
 */
#define KVS_DURABILITY_ALWAYS 3

/**
 * The most bytes a growable struct of the C ABI (`kvs_options`, `kvs_stats`) may say
 * it has: far more than any will (each field is 8 bytes), and a bound on what a size
 * left uninitialised (a struct never passed to kvs_options_init) can make the library
 * read or write.
 */
#define KVS_MAX_STRUCT_SIZE 4096

/**
 * Success.
 */
#define KVS_OK 0

/**
 * The key is not in the store (kvs_get, kvs_get_alloc, kvs_delete). Not an error.
 */
#define KVS_NOT_FOUND 1

/**
 * A NULL pointer where one is required, a key of length 0 or over 4096, an option out
 * of range, a path that is not a directory. Nothing was changed.
 */
#define KVS_ERR_INVALID_ARGUMENT -1

/**
 * kvs_get: the caller's buffer is smaller than the value; *value_len holds the size needed.
 */
#define KVS_ERR_BUFFER_TOO_SMALL -2

/**
 * kvs_put: the value is larger than max_value_size. Nothing was changed.
 */
#define KVS_ERR_TOO_LARGE -3

/**
 * An I/O error that changed nothing: a failed read, a file that could not be opened, a
 * call on a closed store. See the store's LOG file. (A failed write or sync is
 * KVS_ERR_FAILED.)
 */
#define KVS_ERR_IO -4

/**
 * A record, the index image or the superblock failed its checks; its bytes are never
 * returned.
 */
#define KVS_ERR_CORRUPTION -5

/**
 * The device is full (ENOSPC, EDQUOT, EFBIG) and kvs refused before writing, or
 * (kvs_checkpoint, kvs_compact, kvs_close) found no room for the index image: the old
 * image stands; nothing was lost and acknowledged data stays readable.
 */
#define KVS_ERR_NO_SPACE -6

/**
 * Another process (or handle) has the store open.
 */
#define KVS_ERR_LOCKED -7

/**
 * A bug inside kvs panicked; the call did not complete. Please report it. If the call
 * was a change (put, delete, batch write, sync, checkpoint, compact), the store has
 * failed as after KVS_ERR_FAILED: its state may be half changed, so later changes return
 * KVS_ERR_FAILED; gets keep working; reopen it.
 */
#define KVS_ERR_PANIC -8

/**
 * The store has failed and must be reopened: a write, fdatasync, allocation or hole punch
 * of its files failed, or a background thread died. Gets still work; every change fails
 * with this code. Whether changes since the last successful kvs_sync survive is known
 * only after kvs_close and kvs_open (which recovers from what is on disk).
 */
#define KVS_ERR_FAILED -9

/**
 * The store's files have a format version this build does not read.
 */
#define KVS_ERR_UNSUPPORTED_VERSION -10

/**
 * The index holds as many records as it can (2^32 - 2); nothing was changed.
 */
#define KVS_ERR_INDEX_FULL -11

/**
 * kvs_open, kvs_rebuild, kvs_options_init: `struct_size` of the kvs_options is not one
 * this library understands (0: the struct was not set up with kvs_options_init; or
 * larger than this library's, with fields set that it does not know). Nothing was done.
 */
#define KVS_ERR_OPTIONS_SIZE -12

/**
 * Puts and deletes to apply atomically (kvs_batch_new).
 */
typedef struct kvs_batch_t kvs_batch_t;

/**
 * An open key listing (kvs_iter_open). Holds the next key when a caller's buffer was too
 * small for it.
 */
typedef struct kvs_iter_t kvs_iter_t;

/**
 * A value read into memory of its own (kvs_get_pinned): the form of `Store::get_value`.
 */
typedef struct kvs_pinned_t kvs_pinned_t;

/**
 * Options for kvs_open and kvs_rebuild. Set one up with kvs_options_init, which fills
 * the defaults and `struct_size`, then change the fields wanted. Zero in any field (but
 * `struct_size`) also means that field's default. Every field is 8 bytes, so the struct
 * has no padding and can only grow at its end: a program built against an older kvs.h
 * (a shorter struct) keeps working with a newer library, which uses the defaults for the
 * fields the program does not know.
 */
typedef struct {
  /**
   * Bytes of this struct as the caller's kvs.h declares it (`sizeof(kvs_options)`),
   * set by kvs_options_init. 0, or more than KVS_MAX_STRUCT_SIZE, is refused with
   * KVS_ERR_OPTIONS_SIZE.
   */
  uint64_t struct_size;
  /**
   * Bytes of the ring write buffer; a multiple of 4096, from 65536 to 2^40. Default 256 MiB.
   */
  uint64_t buffer_size;
  /**
   * Flush as soon as this many bytes wait in the ring. Default: 8 MiB or a quarter of
   * the ring, whichever is smaller.
   */
  uint64_t flush_horizon;
  /**
   * Flush whatever waits at least this often, in milliseconds. Default 20.
   */
  uint64_t flush_interval_ms;
  /**
   * Records the store is expected to hold (sizes the hash table at creation). Default 1 Mi.
   */
  uint64_t expected_records;
  /**
   * The largest value accepted, at most 256 MiB (268435456); fixed when the store is
   * created (see `Options::max_value_size` for the ring and segment sizes it needs).
   * Default 5 MiB.
   */
  uint64_t max_value_size;
  /**
   * Non-zero: write disk_file through the page cache instead of with O_DIRECT.
   */
  uint64_t disable_direct_io;
  /**
   * Non-zero: gets read disk_file through the page cache instead of with O_DIRECT.
   */
  uint64_t disable_direct_reads;
  /**
   * KVS_DURABILITY_NONE, _BATCH or _ALWAYS; 0 means _BATCH.
   */
  uint64_t durability;
  /**
   * Checkpoint the index after this many bytes of log. 0 means the default (256 MiB);
   * UINT64_MAX turns this trigger off (Rust's 0).
   */
  uint64_t checkpoint_bytes;
  /**
   * Rewrite the index image at least this often (ms) when anything changed. 0 means the
   * default (60000); UINT64_MAX turns this trigger off (Rust's 0).
   */
  uint64_t checkpoint_interval_ms;
  /**
   * Permission bits of created files (must include 0600). Default 0600.
   */
  uint64_t file_mode;
  /**
   * Bytes per log segment, the unit of space reclamation; used when the store is
   * created. A multiple of 4096 from 64 KiB to 4 GiB - 4 KiB. Default 256 MiB.
   */
  uint64_t segment_size;
  /**
   * Non-zero: no background reclaiming (kvs_compact still works).
   */
  uint64_t disable_background_reclaim;
  /**
   * Dead share of the closed segments at which the background reclaimer starts
   * (0.01 to 0.9). 0 means the default, 0.2.
   */
  double reclaim_threshold;
  /**
   * Dead share above which the reclaimer ignores reclaim_rate. 0 means the default, 0.3.
   */
  double reclaim_urgent;
  /**
   * Bytes per second the background reclaimer may rewrite below reclaim_urgent.
   * 0 means the default (256 MiB/s); UINT64_MAX means no limit.
   */
  uint64_t reclaim_rate;
} kvs_options;

/**
 * What kvs_compact did.
 */
typedef struct {
  /**
   * Segments given back to the file system.
   */
  uint64_t segments_freed;
  /**
   * Bytes of records rewritten at the log's tail.
   */
  uint64_t bytes_moved;
  /**
   * Records rewritten.
   */
  uint64_t records_moved;
} kvs_compact_report;

/**
 * Figures about an open store (see kvs_get_stats_sized). Fields are only ever added at
 * the end, never moved or removed.
 */
typedef struct {
  /**
   * Live records.
   */
  uint64_t records;
  /**
   * Bytes of the live records in disk_file (headers and keys included).
   */
  uint64_t live_record_bytes;
  /**
   * Length of the log in disk_file.
   */
  uint64_t disk_file_bytes;
  /**
   * Memory used by the index.
   */
  uint64_t index_bytes;
  /**
   * Ring size in bytes.
   */
  uint64_t buffer_capacity;
  /**
   * Bytes in the ring not yet written to disk_file.
   */
  uint64_t buffer_unflushed;
  /**
   * Flushes done since open.
   */
  uint64_t flushes;
  /**
   * Bytes of live records counted per segment (padding included).
   */
  uint64_t live_bytes;
  /**
   * Bytes of segments in use that hold nothing live (overwritten, deleted, padding).
   */
  uint64_t dead_bytes;
  /**
   * Bytes disk_file occupies on disk (what du reports).
   */
  uint64_t disk_file_allocated;
  /**
   * Bytes the reclaimer rewrote since open.
   */
  uint64_t bytes_moved;
  /**
   * Segments the reclaimer gave back since open.
   */
  uint64_t segments_freed;
  /**
   * Damaged log ranges recovery found and stepped over at open (LOG lists them).
   */
  uint64_t damaged_ranges;
  /**
   * 1 if the store has failed (every change returns KVS_ERR_FAILED), else 0.
   */
  uint64_t failed;
  /**
   * Bytes per log segment. This field and those after it only kvs_get_stats_sized
   * fills; those before are the first version of the struct (KVS_STATS_SIZE_1 bytes),
   * all that kvs_get_stats writes.
   */
  uint64_t segment_size;
  /**
   * Segments holding log.
   */
  uint64_t segments;
  /**
   * Segment slots of disk_file free for reuse.
   */
  uint64_t free_segments;
  /**
   * Records the reclaimer rewrote since open.
   */
  uint64_t records_moved;
  /**
   * Reclaim rounds since open.
   */
  uint64_t reclaim_rounds;
  /**
   * The log's logical end (it only grows).
   */
  uint64_t log_end;
  /**
   * Bytes of the log written since open (flushes and the reclaimer's copies).
   */
  uint64_t flushed_bytes;
  /**
   * fdatasync calls of the log since open.
   */
  uint64_t syncs;
  /**
   * Of the flushes, those that wrote the whole ring because someone waited (a durable
   * put, kvs_sync, a checkpoint, the reclaimer, a reader, puts wanting room) or at close.
   */
  uint64_t flushes_asked;
  /**
   * Of the flushes, those because the unflushed bytes passed the flush horizon.
   */
  uint64_t flushes_horizon;
  /**
   * Of the flushes, those because the flush interval passed.
   */
  uint64_t flushes_interval;
  /**
   * Payload bytes of records overwritten or deleted while still in the ring: never
   * written to disk_file.
   */
  uint64_t died_in_ring_bytes;
  /**
   * Gets served from the ring since open.
   */
  uint64_t gets_from_buffer;
  /**
   * Gets that read disk_file since open.
   */
  uint64_t gets_from_disk;
  /**
   * Reads whose record moved between the lookup and the read, and looked again.
   */
  uint64_t gets_retried;
  /**
   * How long open took, in microseconds.
   */
  uint64_t open_micros;
  /**
   * 1 if open loaded IMAGE_file, 0 if it scanned disk_file from the start.
   */
  uint64_t opened_from_image;
  /**
   * Bytes of disk_file replayed at open.
   */
  uint64_t replayed_bytes;
  /**
   * Segments open replayed from their key summaries.
   */
  uint64_t summarised_segments;
  /**
   * Checkpoints taken since open.
   */
  uint64_t checkpoints;
  /**
   * Bytes those checkpoints wrote.
   */
  uint64_t checkpoint_bytes;
  /**
   * disk_file offset the newest image covers: recovery replays from there.
   */
  uint64_t checkpoint_covered;
  /**
   * 1 if the log is written with O_DIRECT, else 0.
   */
  uint64_t direct_io;
  /**
   * 1 if gets read disk_file with O_DIRECT, else 0.
   */
  uint64_t direct_reads;
  /**
   * Bytes of Pad records written to align flushes to 4 KiB blocks.
   */
  uint64_t pad_bytes;
  /**
   * Bytes of the damaged ranges recovery stepped over at open.
   */
  uint64_t damaged_bytes;
  /**
   * disk_file format version.
   */
  uint64_t format_version;
  /**
   * Segment slots kept untouched and unused (LOG names them).
   */
  uint64_t kept_slots;
  /**
   * Segments opened since open in a slot given back with its blocks kept (recycled).
   */
  uint64_t segments_reused;
  /**
   * Free segment slots that keep their blocks for the next segments now (counted in
   * free_segments and disk_file_allocated; punched after 2 s unused, or by kvs_compact).
   */
  uint64_t recycled_segments;
} kvs_stats;

/**
 * What kvs_verify found.
 */
typedef struct {
  /**
   * Live records read and found sound.
   */
  uint64_t records;
  /**
   * Bytes of those records.
   */
  uint64_t bytes;
  /**
   * Live records that failed a check (their gets return KVS_ERR_CORRUPTION).
   */
  uint64_t corrupt;
  /**
   * Damaged log ranges recovery found and stepped over at open.
   */
  uint64_t damaged_ranges;
} kvs_verify_report;

/**
 * A log callback: `level` is a KVS_LOG_* value, `target` the module that logged (e.g.
 * "kvs::recovery"), `message` the line; both strings are NUL-terminated and valid only
 * during the call. It may be called from any thread, including kvs's background
 * threads, and from inside any kvs call, sometimes while kvs holds its own locks: it must
 * not block for long, must not unwind (C++ exceptions), and must not call kvs functions
 * (hand the line to another thread if it must lead to one).
 */
typedef void (*kvs_log_fn)(void *userdata, int level, const char *target, const char *message);

#ifdef __cplusplus
extern "C" {
#endif // __cplusplus

/**
 * The version of the library linked at run time, as KVS_VERSION numbers it (compare
 * with the KVS_VERSION the program was built against).
 */
int kvs_version(void);

/**
 * The version of the library linked at run time, as a static string ("MAJOR.MINOR.PATCH",
 * e.g. "1.1.0").
 */
const char *kvs_version_string(void);

/**
 * Opens the store in directory `dir` (a NUL-terminated path), creating it if missing,
 * and sets `*out` to the new handle. `opts` may be NULL for all defaults; it is only read
 * during the call. On failure `*out` is set to NULL (if `out` is not NULL) and nothing
 * needs closing. The handle is owned by the caller until passed to kvs_close.
 * `opts` is set up with kvs_options_init (a struct_size it cannot read gives
 * KVS_ERR_OPTIONS_SIZE). The library logs nowhere but the store's LOG file unless the
 * program asked with kvs_set_log_callback. On any failure, kvs_last_error says why
 * (which file, which errno).
 * Returns KVS_ERR_LOCKED if another process has the store open.
 *
 * # Safety
 * `dir` is NULL or a NUL-terminated string; `opts` is NULL or points to a
 * kvs_options; `out` is NULL or writable.
 */
int kvs_open(const char *dir, const kvs_options *opts, kvs_t **out);

/**
 * A new, empty batch, owned by the caller until passed to kvs_batch_free; NULL only if
 * a panic was caught (memory that cannot be had for it aborts, as any allocation of a
 * few bytes). A batch belongs to no store: kvs_batch_write applies it to one.
 */
kvs_batch_t *kvs_batch_new(void);

/**
 * Adds a put of the `value_len` bytes at `value` under the `key_len` bytes at `key` to
 * the batch (copied; checked by kvs_batch_write). Later operations on a key in a batch win
 * over earlier ones. A key over 4096 bytes is KVS_ERR_INVALID_ARGUMENT and a value over
 * 256 MiB (what no store takes) KVS_ERR_TOO_LARGE, memory that cannot be had for the copy
 * KVS_ERR_IO; the batch is then unchanged.
 *
 * # Safety
 * `b` is NULL or a batch from kvs_batch_new not yet freed, used by one thread at a time;
 * `key` and `value` point to `key_len` and `value_len` readable bytes (or are NULL).
 */
int kvs_batch_put(kvs_batch_t *b,
                  const void *key,
                  size_t key_len,
                  const void *value,
                  size_t value_len);

/**
 * Adds a delete of the `key_len` bytes at `key` to the batch (copied). A key over 4096
 * bytes is KVS_ERR_INVALID_ARGUMENT, memory that cannot be had for the copy KVS_ERR_IO;
 * the batch is then unchanged.
 *
 * # Safety
 * As for kvs_batch_put.
 */
int kvs_batch_delete(kvs_batch_t *b, const void *key, size_t key_len);

/**
 * Applies every operation of the batch atomically: gets see all of it or none, and after
 * a crash a reopen shows all of it or none. Durable as kvs_put is. The batch is left as
 * it was (free it, or write it again). KVS_ERR_TOO_LARGE: a value over max_value_size, or
 * a batch larger than a log segment or the ring (less 4 KiB); KVS_ERR_INVALID_ARGUMENT: a
 * bad key, or a store of a format older than 4 (created by an older kvs). On those
 * errors nothing changed.
 *
 * # Safety
 * `db` is NULL or a live handle; `b` is NULL or a live batch.
 */
int kvs_batch_write(kvs_t *db, const kvs_batch_t *b);

/**
 * Empties the batch, to be filled again (its memory is kept for the next operations).
 * KVS_ERR_INVALID_ARGUMENT if `b` is NULL.
 *
 * # Safety
 * As for kvs_batch_put.
 */
int kvs_batch_clear(kvs_batch_t *b);

/**
 * The operations in the batch (puts and deletes added since kvs_batch_new or the last
 * kvs_batch_clear, refused ones not counted); 0 if `b` is NULL.
 *
 * # Safety
 * `b` is NULL or a batch from kvs_batch_new not yet freed, not being changed by another
 * thread.
 */
size_t kvs_batch_len(const kvs_batch_t *b);

/**
 * Frees a batch. `b` may be NULL.
 *
 * # Safety
 * `b` is NULL or a batch from kvs_batch_new not yet freed; it is invalid afterwards.
 */
void kvs_batch_free(kvs_batch_t *b);

/**
 * Starts listing the live keys that start with the `prefix_len` bytes at `prefix`
 * (`prefix` may be NULL when `prefix_len` is 0: every key) and sets `*out` to the new
 * listing, owned by the caller until passed to kvs_iter_close. Keys come from the key
 * summaries, without reading values, in the log order of their records (not sorted).
 * Each key present and not written while the listing is open comes exactly once; a key
 * put, overwritten or deleted meanwhile may be missing. The call waits for a kvs_compact
 * or a background reclaim round under way to end. While a listing is open the
 * background reclaimer pauses and kvs_compact fails with KVS_ERR_INVALID_ARGUMENT: close
 * listings promptly, and every one before kvs_close (after kvs_close, kvs_iter_next
 * returns KVS_ERR_IO, "the store is closed", once the log segment it was reading is
 * done, and only kvs_iter_close may follow).
 *
 * # Safety
 * `db` is NULL or a live handle; `prefix` points to `prefix_len` readable bytes (or is
 * NULL with `prefix_len` 0); `out` is NULL or writable.
 */
int kvs_iter_open(kvs_t *db, const void *prefix, size_t prefix_len, kvs_iter_t **out);

/**
 * Copies the next key into `key_buf` (`key_buf_len` bytes; NULL when 0) and sets
 * `*key_len` to its length and `*value_len` to its value's length. Returns KVS_NOT_FOUND
 * when the listing is done (lengths set to 0). An error (KVS_ERR_IO with the store closed,
 * KVS_ERR_CORRUPTION) ends the listing: every later call returns it again. If the key does not fit, returns
 * KVS_ERR_BUFFER_TOO_SMALL with `*key_len` set to the size needed, and the same key comes
 * again on the next call (4096 bytes always suffice). `key_len` and `value_len` must not
 * be NULL.
 *
 * # Safety
 * `it` is NULL or a listing from kvs_iter_open not yet closed, used by one thread at a
 * time; `key_buf` points to `key_buf_len` writable bytes; `key_len` and `value_len` are
 * writable.
 */
int kvs_iter_next(kvs_iter_t *it,
                  void *key_buf,
                  size_t key_buf_len,
                  size_t *key_len,
                  size_t *value_len);

/**
 * Ends a listing and frees it (the reclaimer goes on). `it` may be NULL.
 *
 * # Safety
 * `it` is NULL or a listing from kvs_iter_open not yet closed; it is invalid afterwards.
 */
void kvs_iter_close(kvs_iter_t *it);

/**
 * Flushes and syncs everything, writes the index image, releases the store and frees
 * the handle. `db` may be NULL (returns KVS_OK). The handle is invalid afterwards, even
 * when an error is returned (the error says the final flush or image write failed, or
 * the store had failed: then no image is written and the next kvs_open recovers from
 * disk_file).
 *
 * # Safety
 * `db` is NULL or a handle from kvs_open not yet closed, and no other call on it
 * runs at the same time.
 */
int kvs_close(kvs_t *db);

/**
 * Stores `value_len` bytes at `value` under the `key_len` bytes at `key` (1..=4096),
 * replacing any previous value. `value` may be NULL when `value_len` is 0. Both are
 * copied before the call returns, and must not change until then: the value's checksum
 * is taken from the caller's bytes before the copy, so bytes another thread changes
 * meanwhile are stored with a checksum that does not match them (gets of the key then
 * fail with KVS_ERR_CORRUPTION rather than return them). The value is readable at once and durable after the
 * next kvs_sync (with KVS_DURABILITY_ALWAYS, when the call returns KVS_OK).
 * Errors: KVS_ERR_INVALID_ARGUMENT, KVS_ERR_TOO_LARGE, KVS_ERR_INDEX_FULL,
 * KVS_ERR_NO_SPACE, KVS_ERR_IO (closed): nothing was changed. KVS_ERR_FAILED: the store
 * has failed; if the put was already taken (the failure came from its durable commit
 * with KVS_DURABILITY_ALWAYS) it is readable until kvs_close and may or may not be there
 * after reopening: unknown until then; otherwise nothing was changed.
 *
 * # Safety
 * `db` is NULL or a live handle; `key` and `value` point to `key_len` and
 * `value_len` readable bytes (or are NULL).
 */
int kvs_put(kvs_t *db,
            const void *key,
            size_t key_len,
            const void *value,
            size_t value_len);

/**
 * Copies the value of `key` into `buf` (`buf_len` bytes; `buf` may be NULL when
 * `buf_len` is 0) and sets `*value_len` to its length. If the buffer is too small,
 * returns KVS_ERR_BUFFER_TOO_SMALL with `*value_len` set to the size needed. If the key
 * is absent, returns KVS_NOT_FOUND with `*value_len` set to 0. `value_len` must not be NULL.
 * Never changes the store. KVS_ERR_CORRUPTION: the record failed its checks and its
 * bytes are not returned. Gets keep working on a failed store. `key` may lie inside
 * `buf` (one scratch buffer for both): the key is then copied before the read.
 *
 * # Safety
 * `db` is NULL or a live handle; `key` points to `key_len` readable bytes; `buf`
 * points to `buf_len` writable bytes; `value_len` is NULL or writable.
 */
int kvs_get(kvs_t *db,
            const void *key,
            size_t key_len,
            void *buf,
            size_t buf_len,
            size_t *value_len);

/**
 * Like kvs_get, but allocates the buffer: on KVS_OK, `*value` points to `*value_len`
 * bytes owned by the caller, to be released with kvs_free (never with free). A value of
 * length 0 still gets a non-NULL pointer. On any other result `*value` is NULL,
 * `*value_len` is 0, and there is nothing to free. `value` and `value_len` must not be NULL.
 *
 * # Safety
 * `db` is NULL or a live handle; `key` points to `key_len` readable bytes;
 * `value` and `value_len` are NULL or writable.
 */
int kvs_get_alloc(kvs_t *db, const void *key, size_t key_len, void **value, size_t *value_len);

/**
 * Frees a value returned by kvs_get_alloc. NULL is fine.
 *
 * # Safety
 * `p` is NULL or a pointer from kvs_get_alloc not yet freed.
 */
void kvs_free(void *p);

/**
 * Reads the value of `key` without copying it out: on KVS_OK, `*out` is a value that owns
 * the memory the record was read into (with O_DIRECT, straight from the device), read
 * with kvs_pinned_data and kvs_pinned_len and released with kvs_pinned_free. It stays
 * valid whatever happens to the store afterwards, close included. If the key is absent,
 * returns KVS_NOT_FOUND; on any result but KVS_OK `*out` is NULL. `out` must not be NULL.
 *
 * # Safety
 * `db` is NULL or a live handle; `key` points to `key_len` readable bytes; `out` is NULL
 * or writable.
 */
int kvs_get_pinned(kvs_t *db, const void *key, size_t key_len, kvs_pinned_t **out);

/**
 * The bytes of a value from kvs_get_pinned (kvs_pinned_len of them; not NUL-terminated),
 * valid until kvs_pinned_free. NULL if `p` is NULL.
 *
 * # Safety
 * `p` is NULL or a value from kvs_get_pinned not yet freed.
 */
const void *kvs_pinned_data(const kvs_pinned_t *p);

/**
 * The length of a value from kvs_get_pinned; 0 if `p` is NULL.
 *
 * # Safety
 * `p` is NULL or a value from kvs_get_pinned not yet freed.
 */
size_t kvs_pinned_len(const kvs_pinned_t *p);

/**
 * Frees a value from kvs_get_pinned. NULL is fine.
 *
 * # Safety
 * `p` is NULL or a value from kvs_get_pinned not yet freed; it is invalid afterwards.
 */
void kvs_pinned_free(kvs_pinned_t *p);

/**
 * Sets `*value_len` to the length of `key`'s value and returns KVS_OK, or returns
 * KVS_NOT_FOUND (with `*value_len` 0) if the key is absent; from the index alone, without
 * reading the value (a later kvs_get still checks the record and may return
 * KVS_ERR_CORRUPTION).
 *
 * # Safety
 * `db` is NULL or a live handle; `key` points to `key_len` readable bytes; `value_len`
 * is NULL or writable.
 */
int kvs_value_len(kvs_t *db, const void *key, size_t key_len, size_t *value_len);

/**
 * Removes `key`. Returns KVS_OK if it was there, KVS_NOT_FOUND if it was not. As for
 * kvs_put, the key must not change until the call returns (its checksum is taken before
 * it is copied). Errors as for kvs_put: any but KVS_ERR_FAILED changed nothing; with
 * KVS_ERR_FAILED the delete may or may not survive a reopen if it had been taken.
 *
 * # Safety
 * `db` is NULL or a live handle; `key` points to `key_len` readable bytes.
 */
int kvs_delete(kvs_t *db, const void *key, size_t key_len);

/**
 * Returns once everything put or deleted before the call is on disk and fdatasync'ed.
 * Fails with KVS_ERR_FAILED (the store has failed: after a failed write or fdatasync no
 * later kvs_sync on the handle succeeds), KVS_ERR_IO (closed), or
 * KVS_ERR_INVALID_ARGUMENT (`db` NULL).
 *
 * # Safety
 * `db` is NULL or a live handle.
 */
int kvs_sync(kvs_t *db);

/**
 * Rewrites the index image now, after making everything put so far durable, so that
 * the next open replays nothing. Background checkpoints do the same periodically. On
 * error the old image stays: KVS_ERR_NO_SPACE if the disk had no room for the new one
 * (the store goes on), else a failed write of it is KVS_ERR_FAILED.
 *
 * # Safety
 * `db` is NULL or a live handle.
 */
int kvs_checkpoint(kvs_t *db);

/**
 * Reclaims space now, at full speed: moves the live records of every segment with dead
 * space to the log's tail and gives the segments back to the file system. Runs beside
 * other calls. Fills `*out` (if not NULL) with what it did. On error (KVS_ERR_FAILED, or
 * an I/O error reading a record) every record is still in its old segment or, durably,
 * in its copy: segments are given back only after their copies are synced. While a key
 * listing is open on the store it waits up to 2 s for it to close, then returns
 * KVS_ERR_INVALID_ARGUMENT having moved nothing.
 *
 * # Safety
 * `db` is NULL or a live handle; `out` is NULL or writable.
 */
int kvs_compact(kvs_t *db, kvs_compact_report *out);

/**
 * Fills the first version of `*out` (its first 14 fields, KVS_STATS_SIZE_1 bytes) with
 * figures about the store, and writes nothing past them: a program built against an
 * older kvs.h keeps working. For every field use kvs_get_stats_sized. `out` must not be
 * NULL.
 *
 * # Safety
 * `db` is NULL or a live handle; `out` is NULL or has KVS_STATS_SIZE_1 writable bytes.
 */
int kvs_get_stats(kvs_t *db, kvs_stats *out);

/**
 * Fills `*out` with figures about the store, `size` bytes of it: pass `sizeof(kvs_stats)`.
 * Fields are only ever added at the end of kvs_stats, so a program built against an
 * older kvs.h gets the fields it knows, and one built against a newer kvs.h than the
 * library finds the fields this library lacks set to 0. `size` below KVS_STATS_SIZE_1,
 * above KVS_MAX_STRUCT_SIZE, or not a multiple of 8 is KVS_ERR_INVALID_ARGUMENT, and
 * nothing is written; so is a NULL `out`.
 *
 * # Safety
 * `db` is NULL or a live handle; `out` is NULL or has `size` writable bytes.
 */
int kvs_get_stats_sized(kvs_t *db, kvs_stats *out, size_t size);

/**
 * Reads every live record and checks header, key and checksum; fills `*out` (if not
 * NULL) with the counts. Returns KVS_OK if every record is sound and recovery found no
 * damaged range at open, KVS_ERR_CORRUPTION if not (the store's LOG names the first
 * ones), or another error if reading failed.
 * It runs beside other calls; on a large store it reads the whole data set.
 *
 * # Safety
 * `db` is NULL or a live handle; `out` is NULL or writable.
 */
int kvs_verify(kvs_t *db, kvs_verify_report *out);

/**
 * Rebuilds the index of the store in directory `dir` from disk_file alone, whatever
 * IMAGE_file holds, and writes a new IMAGE_file. Takes the store's lock first (returns
 * KVS_ERR_LOCKED, changing nothing, if another process or handle has it open); the old
 * IMAGE_file is replaced only at the end, atomically, so on any error it is untouched.
 * `opts` may be NULL. Reads every segment of disk_file. A directory without a store is
 * KVS_ERR_INVALID_ARGUMENT (nothing is created).
 *
 * # Safety
 * `dir` is NULL or a NUL-terminated string; `opts` is NULL or points to a kvs_options.
 */
int kvs_rebuild(const char *dir, const kvs_options *opts);

/**
 * Sends the library's log lines at `level` (a KVS_LOG_* value) and more severe to `f`,
 * with `userdata` passed back on every call. `f` NULL (or KVS_LOG_OFF) stops them. A
 * later call replaces the earlier one. The library never logs anywhere else (a store's
 * LOG file is written either way). It installs the process's `log` logger on the first
 * call with a function: returns KVS_ERR_INVALID_ARGUMENT, changing nothing, if some
 * other Rust code in the process installed one already, or if `level` is out of range.
 *
 * # Safety
 * `f` is NULL or a function that is safe to call as described at kvs_log_fn, with
 * `userdata`, until it is replaced or removed.
 */
int kvs_set_log_callback(kvs_log_fn f, void *userdata, int level);

/**
 * Fills the first `size` bytes at `opts` with the defaults and sets `opts->struct_size`
 * to `size`; pass `sizeof(kvs_options)`. A `size` larger than this library's struct
 * (a newer kvs.h) gets zeros, meaning defaults, in the fields this library does not know.
 * Returns KVS_OK, KVS_ERR_INVALID_ARGUMENT if `opts` is NULL, or KVS_ERR_OPTIONS_SIZE
 * if `size` is 0, not a multiple of 8, or above KVS_MAX_STRUCT_SIZE.
 *
 * # Safety
 * `opts` is NULL or writable for `size` bytes.
 */
int kvs_options_init(kvs_options *opts, size_t size);

/**
 * Copies the message of the last call on this thread that failed (returned a KVS_ERR_*
 * code) into `buf`, NUL-terminated and cut to `len - 1` bytes if longer, and sets
 * `*out_len` (if not NULL) to the message's full length without the NUL: call with
 * `len` 0 (and `buf` NULL) to learn the size. The message says what failed and why,
 * with the file and the operating system's error (`... (os error 13)`) where there is
 * one. It stays until a later call on this thread fails; successful calls keep it.
 * Returns KVS_OK, KVS_NOT_FOUND if no call on this thread has failed (`*out_len` = 0),
 * or KVS_ERR_INVALID_ARGUMENT if `buf` is NULL while `len` is not 0. This function
 * never changes the last error itself.
 *
 * # Safety
 * `buf` is NULL or writable for `len` bytes; `out_len` is NULL or writable.
 */
int kvs_last_error(char *buf, size_t len, size_t *out_len);

/**
 * The errno (the operating system's error number) behind the last call on this thread
 * that failed, or 0 if it had none (or no call failed). KVS_ERR_NO_SPACE gives ENOSPC
 * (also for a quota or file size limit, EDQUOT or EFBIG).
 */
int kvs_last_errno(void);

/**
 * A static, NUL-terminated description of a status code. Never NULL, never freed.
 */
const char *kvs_strerror(int code);

#ifdef __cplusplus
}  // extern "C"
#endif  // __cplusplus

#endif  /* KVS_H */

//! The store: the public face of the engine. Opens a directory (recovery builds the
//! engine's parts), starts the background threads, and runs put, get, delete, sync,
//! checkpoint, compact, verify and close by handing them to their owners: the engine
//! (records, index, ring), the checkpointer, the reclaimer and the verifier.

use std::fs::{self, File};
use std::path::Path;
use std::sync::Arc;

use nix::fcntl::Flock;

use crate::batch::{Batch, Op as BatchOp};
use crate::checkpoint::Checkpointer;
use crate::engine::{check_key, Append, Engine, Read, When};
use crate::error::{Error, Result};
use crate::format::{data_sum, padded_len, Kind, DISK_FILE, HEADER_LEN, SEG_HEADER};
use crate::index::{KeyHash, Location};
use crate::iter::Keys;
use crate::log::fault::{Faults, Op};
use crate::log::hooks::Hooks;
use crate::options::Options;
use crate::reclaim::{CompactReport, Reclaimer};
use crate::recovery::{self, OpenReport};
use crate::value::Value;
use crate::verify::{self, VerifyReport};
use crate::worker::{Signal, Worker};

/// Figures about an open store.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Live records (keys).
    pub records: u64,
    /// Bytes of the live records in disk_file (headers and keys included, padding not).
    pub live_record_bytes: u64,
    /// Bytes of the live records counted per segment (padding to 8 bytes included).
    pub live_bytes: u64,
    /// Bytes of segments in use that hold no live record: overwritten and deleted records,
    /// tombstones, padding.
    pub dead_bytes: u64,
    /// disk_file's length (superblock and every segment slot, free ones included).
    pub disk_file_bytes: u64,
    /// Bytes disk_file occupies on disk (what `du` says; given-back segments are holes).
    pub disk_file_allocated: u64,
    /// Bytes per log segment.
    pub segment_size: u64,
    /// Segments holding log.
    pub segments: u64,
    /// Segment slots of disk_file free for reuse.
    pub free_segments: u64,
    /// Segments given back by the reclaimer since open.
    pub segments_freed: u64,
    /// Segments opened since open in a slot given back with its blocks kept (recycled:
    /// its writes go over blocks written before, which commit faster than new ones).
    pub segments_reused: u64,
    /// Free slots that keep their blocks for the next segments now (one per 16 segments
    /// in use, at least 1, at most 8; punched after 2 s unused, or by `compact`; counted in
    /// `free_segments` and in `disk_file_allocated`).
    pub recycled_segments: u64,
    /// Bytes of records the reclaimer rewrote since open.
    pub bytes_moved: u64,
    /// Records the reclaimer rewrote since open.
    pub records_moved: u64,
    /// Reclaim rounds since open (each ends with an fdatasync, or a checkpoint).
    pub reclaim_rounds: u64,
    /// The log's logical end (it only grows; see DESIGN.md, log segments).
    pub log_end: u64,
    /// Ring size.
    pub buffer_capacity: u64,
    /// Ring bytes not yet flushed.
    pub buffer_unflushed: u64,
    /// Memory of the index (slot table, node pool in use, free stack).
    pub index_bytes: u64,
    /// Flushes done by the lookout thread since open.
    pub flushes: u64,
    /// Bytes of the log written since open: by those flushes (holes left for dead values
    /// excluded), and by the reclaimer into its relocation segments (format 6).
    pub flushed_bytes: u64,
    /// fdatasync calls of the log since open: lookout flushes in `Batch`, group commits in
    /// `Always`, `sync`, checkpoints and close.
    pub syncs: u64,
    /// Of the lookout's flushes since open, those that wrote the whole ring because
    /// someone waited (a durable put, `sync`, a checkpoint, the reclaimer's new segment, a
    /// reader of a record's unwritten end, puts wanting room) or at close.
    pub flushes_asked: u64,
    /// Of the lookout's flushes since open, those because the unflushed bytes passed the
    /// flush horizon (whole blocks only).
    pub flushes_horizon: u64,
    /// Of the lookout's flushes since open, those because the flush interval passed.
    pub flushes_interval: u64,
    /// Payload bytes of records overwritten or deleted while still in the ring, before
    /// the lookout took them: never written to disk_file.
    pub died_in_ring_bytes: u64,
    /// Gets served from the ring since open.
    pub gets_from_buffer: u64,
    /// Gets that read disk_file since open.
    pub gets_from_disk: u64,
    /// Reads (gets, listings' and verify's checks) whose record was moved, overwritten or
    /// given back between the lookup and the read, and which looked the key up again.
    pub gets_retried: u64,
    /// How long open took, in microseconds.
    pub open_micros: u64,
    /// Whether open loaded IMAGE_file (else it scanned disk_file from the start).
    pub opened_from_image: bool,
    /// Bytes of disk_file replayed at open (after what IMAGE_file covered), summarised
    /// segments included.
    pub replayed_bytes: u64,
    /// Segments that open replayed from their key summaries instead of reading them.
    pub summarised_segments: u64,
    /// Checkpoints taken since open (background and explicit).
    pub checkpoints: u64,
    /// Bytes those checkpoints wrote (IMAGE_delta blocks, and IMAGE_file when written
    /// whole or folded); close's IMAGE_file is not counted.
    pub checkpoint_bytes: u64,
    /// disk_file offset the newest image (IMAGE_file and IMAGE_delta) covers: recovery
    /// replays from there.
    pub checkpoint_covered: u64,
    /// Whether the lookout writes with O_DIRECT.
    pub direct_io: bool,
    /// Whether gets read disk_file with O_DIRECT.
    pub direct_reads: bool,
    /// Bytes of Pad records written to align flushes to 4 KiB blocks (O_DIRECT only).
    pub pad_bytes: u64,
    /// Damaged log ranges recovery found and stepped over at this open (LOG lists them).
    pub damaged_ranges: u64,
    /// Bytes of those ranges.
    pub damaged_bytes: u64,
    /// Whether the store has failed (a write or sync failed, or a background thread
    /// died): every change now fails with `Error::Failed` until the store is reopened.
    pub failed: bool,
    /// disk_file format version (2 to 6).
    pub format_version: u32,
    /// Segment slots kept untouched and unused: they hold records of this store but no
    /// sound segment header (LOG names them).
    pub kept_slots: u64,
}

/// Latches the store as failed if the change it guards unwinds (a panic: a bug, or a
/// callback's): the change may have left the store's state half done (a count raised, a
/// lock's data half written; parking_lot locks do not poison), so no later change may
/// trust it. Gets keep working. A panic already unwinding when the change began (a drop
/// calling into the store) is not the change's.
struct FailOnUnwind<'a> {
    engine: &'a Engine,
    what: &'static str,
    was_panicking: bool,
}

impl<'a> FailOnUnwind<'a> {
    fn new(engine: &'a Engine, what: &'static str) -> FailOnUnwind<'a> {
        FailOnUnwind {
            engine,
            what,
            was_panicking: std::thread::panicking(),
        }
    }
}

impl Drop for FailOnUnwind<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() && !self.was_panicking {
            let why = format!("{} panicked; the store may be half changed", self.what);
            self.engine.log().error(&why);
            self.engine.latch().fail(&why);
        }
    }
}

/// An open store. `Send + Sync`: share it (`Arc<Store>` or `&Store`) between threads.
pub struct Store {
    engine: Arc<Engine>,
    ckpt: Arc<Checkpointer>,
    reclaimer: Arc<Reclaimer>,
    opened: OpenReport,
    lookout: Worker<Result<()>>,
    checkpointer: Worker<()>,
    reclaim: Worker<()>,
    /// Set once close has run (by `close` or on drop).
    closed: bool,
    _lock: Flock<File>,
}

impl Store {
    /// Opens the store in `dir`, creating the directory and the store if missing, also in
    /// a directory that holds other files (kvs's are LOCK, LOG, disk_file, IMAGE_file,
    /// IMAGE_delta and summary/, and the `kvs` tool's OPTIONS; a file of those names that
    /// is not kvs's is refused, or for LOG appended to; the `kvs` tool refuses such a
    /// directory). Fails with `Error::Locked` if another process (or `Store`) has it open.
    pub fn open(dir: impl AsRef<Path>, opts: Options) -> Result<Store> {
        Store::open_inner(dir.as_ref(), opts, Hooks::default(), true)
    }

    /// Tests: `open` on the device and with the faults that `hooks` give.
    #[doc(hidden)]
    pub fn open_with(dir: impl AsRef<Path>, opts: Options, hooks: Hooks) -> Result<Store> {
        Store::open_inner(dir.as_ref(), opts, hooks, true)
    }

    /// Rebuilds the index of the store in `dir` from disk_file alone, whatever IMAGE_file
    /// holds, and writes a new IMAGE_file. Takes the store's lock first (`Error::Locked`
    /// if another process has it open) and replaces IMAGE_file only at the end, atomically:
    /// if it fails, the old IMAGE_file is untouched. Reads every segment. Returns the
    /// figures of the rebuilt store. `InvalidArgument` if `dir` holds no store (it made an
    /// empty one there before a review).
    pub fn rebuild_index(dir: impl AsRef<Path>, opts: Options) -> Result<Stats> {
        let dir = dir.as_ref();
        if !fs::metadata(dir.join(DISK_FILE)).is_ok_and(|m| m.len() > 0) {
            return Err(Error::InvalidArgument(format!(
                "{} holds no kvs store to rebuild (no disk_file, or an empty one)",
                dir.display()
            )));
        }
        let store = Store::open_inner(dir, opts, Hooks::default(), false)?;
        let stats = store.stats();
        store.close()?;
        Ok(stats)
    }

    fn open_inner(dir: &Path, opts: Options, hooks: Hooks, use_image: bool) -> Result<Store> {
        let opened = recovery::open(dir, opts, &hooks, use_image)?;
        let engine = Arc::new(Engine::new(opened.parts));
        let ckpt = Arc::new(Checkpointer::new(
            engine.clone(),
            opened.report.covered,
            opened.report.base,
            hooks.faults.clone(),
        ));
        let reclaim_signal = Arc::new(Signal::default());
        let reclaimer = Arc::new(Reclaimer::new(
            engine.clone(),
            ckpt.clone(),
            reclaim_signal.clone(),
        ));
        let e = engine.clone();
        let mut lookout = Worker::spawn("lookout", Arc::default(), &engine, move |_| {
            e.ring().run_lookout()
        })?;
        let faults = hooks.faults.as_deref();
        let c = ckpt.clone();
        let checkpointer = Faults::inject(faults, Op::Spawn)
            .and_then(|()| Worker::spawn("checkpoint", Arc::default(), &engine, move |s| c.run(s)));
        let r = reclaimer.clone();
        let reclaim = checkpointer.and_then(|mut checkpointer| {
            match Faults::inject(faults, Op::Spawn)
                .and_then(|()| Worker::spawn("reclaim", reclaim_signal, &engine, move |_| r.run()))
            {
                Ok(reclaim) => Ok((checkpointer, reclaim)),
                Err(e) => {
                    checkpointer.stop();
                    Err(e)
                }
            }
        });
        let (checkpointer, reclaim) = match reclaim {
            Ok(workers) => workers,
            Err(e) => {
                // No thread outlives a failed open: it would hold the store's files and
                // memory, with its lock released under it (found by review).
                engine.ring().begin_shutdown();
                lookout.join();
                return Err(e);
            }
        };
        let store = Store {
            engine,
            ckpt,
            reclaimer,
            opened: opened.report,
            lookout,
            checkpointer,
            reclaim,
            closed: false,
            _lock: opened.lock,
        };
        // An open without a usable image (a new store, a rebuild) writes one now, before a
        // writer can wait on it: the first background checkpoint would otherwise copy the
        // whole index under the ring lock (the journal of changes needs an image to chain
        // to), and a crash before it would rebuild again. `rebuild_index` skips it: its
        // close writes the image.
        if use_image && !store.ckpt.has_image() {
            if let Err(e) = store.ckpt.first_image() {
                if store.engine.latch().is_failed() {
                    return Err(e);
                }
                store.engine.log().warn(&format!(
                    "could not write IMAGE_file at open ({e}); the next checkpoint writes it"
                ));
            }
        }
        Ok(store)
    }

    /// Stores `value` under `key`, replacing any value it had. Returns once the value is
    /// in the ring (readable by every later get); it reaches disk_file at the next flush,
    /// and is durable after the next `sync` (in `Durability::Always`, before it returns).
    /// Waits while the ring is full.
    ///
    /// Errors: `InvalidArgument`, `TooLarge`, `IndexFull`, `NoSpace` (no room for a new
    /// segment), `Closed`: nothing changed. `Failed`: the store has failed; if the put
    /// had already been taken (the error came from its durable commit in `Always`), it is
    /// readable until close and may or may not be there after reopening: unknown until then.
    pub fn put(&self, key: &[u8], value: &[u8]) -> Result<()> {
        let _unwind = FailOnUnwind::new(&self.engine, "a put");
        check_key(key)?;
        let e = &self.engine;
        e.latch().check()?;
        let max = e.opts().max_value_size;
        if value.len() > max {
            return Err(Error::TooLarge {
                size: value.len(),
                max,
            });
        }
        self.reclaimer
            .wait_for_room((HEADER_LEN + key.len() + value.len()) as u64);
        let append = Append {
            kind: Kind::Put,
            key,
            value,
            data_sum: data_sum(key, value),
            when: When::Always,
        };
        let Some(done) = e.append(&append)? else {
            unreachable!("a put always applies")
        };
        if e.opened_segment(done.offset) {
            self.reclaimer.segment_opened();
        }
        e.commit(done.end())
    }

    /// Removes `key`. Returns whether it was there. A tombstone record goes to disk_file;
    /// if the value was not flushed yet, it never will be. In `Always` it returns once the
    /// key's absence is durable, also when it was absent already (another delete may not be
    /// durable yet). Errors as for `put`.
    pub fn delete(&self, key: &[u8]) -> Result<bool> {
        let _unwind = FailOnUnwind::new(&self.engine, "a delete");
        check_key(key)?;
        let e = &self.engine;
        e.latch().check()?;
        let append = Append {
            kind: Kind::Delete,
            key,
            value: &[],
            data_sum: data_sum(key, &[]),
            when: When::Present,
        };
        match e.append(&append)? {
            Some(done) => e.commit(done.end()).map(|()| true),
            // Absent, perhaps by a delete not durable yet: in `Always` the answer waits
            // for everything before it, so that the key stays absent after a crash.
            None => e.commit(e.ring().tail()).map(|()| false),
        }
    }

    /// Applies every put and delete of `batch` atomically: a get sees all of them or none,
    /// and after a crash at any point a reopen shows all or none of them. Durable as a put
    /// is (in `Always`, when it returns). A batch takes at most one log segment and the ring
    /// (`Stats::segment_size` and `buffer_capacity`, less 4 KiB and 40 bytes per record):
    /// larger ones fail with `TooLarge`. Needs disk_file format 4 (stores created by this
    /// version); older stores refuse batches with `InvalidArgument`.
    ///
    /// Errors: `InvalidArgument` (a key, the format), `TooLarge` (a value, the batch),
    /// `IndexFull`, `NoSpace`, `Closed`: nothing changed. `Failed`: as for `put`.
    pub fn write(&self, batch: &Batch) -> Result<()> {
        let _unwind = FailOnUnwind::new(&self.engine, "a batch write");
        let e = &self.engine;
        if !e.has_batches() {
            return Err(Error::InvalidArgument(format!(
                "atomic batches need disk_file format 4; this store is format {} (copy its \
                 data into a new store to use them)",
                e.disk().superblock().version
            )));
        }
        if batch.is_empty() {
            // Nothing to write, but what a write would say of the store (found by review:
            // an empty batch succeeded on a failed store and on an old format).
            return e.latch().check();
        }
        let max = e.opts().max_value_size;
        let mut ops = Vec::with_capacity(batch.len());
        let mut total = HEADER_LEN;
        for op in &batch.ops {
            let (kind, key, value) = match op {
                BatchOp::Put(k, v) => (Kind::Put, k, &v[..]),
                BatchOp::Delete(k) => (Kind::Delete, k, &[][..]),
            };
            check_key(key)?;
            if value.len() > max {
                return Err(Error::TooLarge {
                    size: value.len(),
                    max,
                });
            }
            total += padded_len(HEADER_LEN + key.len() + value.len());
            ops.push((kind, key, value));
        }
        let limit = e.batch_limit();
        if total > limit || ops.len() > u32::MAX as usize {
            return Err(Error::TooLarge {
                size: total,
                max: limit,
            });
        }
        e.latch().check()?;
        self.reclaimer.wait_for_room(total as u64);
        let appends: Vec<Append<'_>> = ops
            .iter()
            .map(|&(kind, key, value)| Append {
                kind,
                key,
                value,
                data_sum: data_sum(key, value),
                when: When::Always,
            })
            .collect();
        let (first, end) = e.append_batch(&appends)?;
        if e.opened_segment(first) {
            self.reclaimer.segment_opened();
        }
        e.commit(end)
    }

    /// The length of `key`'s value, or `None` if absent, from the index alone (no read of
    /// disk_file: the record's length is in the index). A later get still checks the
    /// record and may report `Corruption` where this reported a length.
    pub fn value_len(&self, key: &[u8]) -> Result<Option<usize>> {
        check_key(key)?;
        let e = &self.engine;
        match e.lookup(&e.hash(key)) {
            Some(loc) => Engine::value_len(loc, key).map(Some),
            None => Ok(None),
        }
    }

    /// `value_len` without waiting: `None` if it would have to wait for the index's lock
    /// (a writer holds or awaits it), else what `value_len` returns. Never blocks and never
    /// does I/O, so an async server may call it on its reactor threads and fall back to
    /// `value_len` on a blocking thread when it returns `None`.
    pub fn try_value_len(&self, key: &[u8]) -> Option<Result<Option<usize>>> {
        if let Err(e) = check_key(key) {
            return Some(Err(e));
        }
        let e = &self.engine;
        let found = e.try_lookup(&e.hash(key))?;
        Some(match found {
            Some(loc) => Engine::value_len(loc, key).map(Some),
            None => Ok(None),
        })
    }

    /// Benches: where `key`'s record lies in disk_file now, as (byte offset in the file,
    /// record length: header, key and value, unpadded), or `None` if the key is absent or
    /// the ring may still hold its record (a get would then copy it out of memory, not
    /// read disk_file). Waits, as a get does, until the record's last block is written.
    /// The record is the one the key's hash finds, unchecked (a get also checks that it
    /// holds this key). The place is stale as soon as the key is put again or the
    /// reclaimer moves it. The harness reads the same bytes from the raw device, to compare
    /// a cold get against it.
    #[doc(hidden)]
    pub fn record_extent(&self, key: &[u8]) -> Result<Option<(u64, usize)>> {
        check_key(key)?;
        let e = &self.engine;
        let Some(loc) = e.lookup(&e.hash(key)) else {
            return Ok(None);
        };
        let len = loc.len as usize;
        if e.ring().may_hold(loc.offset) {
            return Ok(None);
        }
        e.ring().ensure_written(loc.offset + len as u64);
        Ok(e.segs().physical(loc.offset).map(|at| (at, len)))
    }

    /// The value of `key`, or `None`. Memory for it that cannot be had is `Error::Io`
    /// (ENOMEM), as for `get_value`.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let mut value = Vec::new();
        let found = self.read_value(key, &mut value, |v, n| {
            v.try_reserve_exact(n).map_err(|_| Error::no_memory())?;
            v.resize(n, 0);
            Ok(())
        })?;
        Ok(found.map(|_| value))
    }

    /// The value of `key` in memory of its own, or `None`: as `get`, but the value is not
    /// copied on its way to the caller (read from disk_file with O_DIRECT, straight into the
    /// memory the returned [`Value`] owns; from the ring, copied once into it). If that
    /// memory cannot be had (an address-space limit, strict overcommit), `Error::Io` with
    /// ENOMEM: the get fails alone, nothing else is touched.
    pub fn get_value(&self, key: &[u8]) -> Result<Option<Value>> {
        let e = &self.engine;
        self.read_with(key, |kh, loc, n| {
            let rec = e.read_owned(kh, loc, key)?;
            Ok(rec.map(|rec| Value::new(rec, loc.len as usize - n)))
        })
    }

    /// Copies the value of `key` into `buf` and returns its length, or `None` if the key
    /// is absent. If `buf` is too small, fails with `Error::BufferTooSmall { needed }`
    /// and leaves `buf` unspecified.
    pub fn get_into(&self, key: &[u8], mut buf: &mut [u8]) -> Result<Option<usize>> {
        self.read_value(key, &mut buf, |b, n| {
            if n > b.len() {
                return Err(Error::BufferTooSmall { needed: n });
            }
            Ok(())
        })
    }

    /// Looks `key` up and reads its value into `buf`, after `fit(buf, value length)` has
    /// made room (or refused); again if the key moved while it read. Returns the length.
    fn read_value<B: AsMut<[u8]>>(
        &self,
        key: &[u8],
        buf: &mut B,
        fit: impl Fn(&mut B, usize) -> Result<()>,
    ) -> Result<Option<usize>> {
        let e = &self.engine;
        self.read_with(key, |kh, loc, n| {
            fit(buf, n)?;
            Ok(match e.read(kh, loc, key, &mut buf.as_mut()[..n])? {
                Read::Done => Some(n),
                Read::Moved => None,
            })
        })
    }

    /// Looks `key` up and calls `read(hash, location, value length)`, again (after a new
    /// lookup) while it returns `None`: the key moved while it read.
    fn read_with<T>(
        &self,
        key: &[u8],
        mut read: impl FnMut(&KeyHash, Location, usize) -> Result<Option<T>>,
    ) -> Result<Option<T>> {
        check_key(key)?;
        let e = &self.engine;
        let kh = e.hash(key);
        loop {
            let Some(loc) = e.lookup(&kh) else {
                return Ok(None);
            };
            let n = Engine::value_len(loc, key)?;
            if let Some(t) = read(&kh, loc, n)? {
                return Ok(Some(t));
            }
        }
    }

    /// Returns once everything put or deleted before the call is written to disk_file and
    /// fdatasync'ed. An error is always `Failed` or `Closed`: after a failed write or
    /// fdatasync no later sync on this handle succeeds (the kernel may have dropped the
    /// data); what was put since the last successful sync is unknown until reopening.
    pub fn sync(&self) -> Result<()> {
        let _unwind = FailOnUnwind::new(&self.engine, "a sync");
        self.engine.ring().flush(true)
    }

    /// Figures about the store.
    pub fn stats(&self) -> Stats {
        let e = &self.engine;
        let (records, live_record_bytes, index_bytes) = e.index_figures();
        let (checkpoints, checkpoint_bytes, checkpoint_covered) = self.ckpt.figures();
        let (bytes_moved, records_moved, reclaim_rounds) = self.reclaimer.figures();
        let (gets_from_buffer, gets_from_disk, gets_retried) = e.get_counts();
        let segs = e.segs();
        let (slots, free_slots) = segs.slot_counts();
        let (segments_reused, recycled_segments) = segs.reused();
        let flushed = e.ring().lock().flushed;
        segs.measure(flushed);
        let g = e.ring().lock();
        // Every segment before the tail's holds `written` bytes (for closed ones, what the
        // file system says: `Segments::measure`); the tail's is used up to the tail.
        let tail_seg = segs.of(g.tail);
        let tail_used = (g.tail % segs.size()).saturating_sub(SEG_HEADER);
        let (mut live_bytes, mut dead_bytes) = (0, 0);
        for u in segs.usage() {
            let used = if u.logical < tail_seg {
                u.written
            } else {
                tail_used
            };
            live_bytes += u.live;
            dead_bytes += used.saturating_sub(u.live);
        }
        let damage = &self.opened.damage;
        Stats {
            records,
            live_record_bytes,
            live_bytes,
            dead_bytes,
            disk_file_bytes: e.disk().len().unwrap_or(0),
            disk_file_allocated: e.disk().allocated_bytes().unwrap_or(0),
            segment_size: segs.size(),
            segments: slots - free_slots,
            free_segments: free_slots,
            segments_freed: segs.freed(),
            segments_reused,
            recycled_segments,
            bytes_moved,
            records_moved,
            reclaim_rounds,
            log_end: g.tail,
            buffer_capacity: e.ring().capacity() as u64,
            buffer_unflushed: g.tail - g.flushed,
            index_bytes,
            flushes: g.flushes(),
            flushed_bytes: g.flushed_bytes,
            syncs: g.syncs,
            flushes_asked: g.flushes_asked,
            flushes_horizon: g.flushes_horizon,
            flushes_interval: g.flushes_interval,
            died_in_ring_bytes: g.died_in_ring_bytes,
            gets_from_buffer,
            gets_from_disk,
            gets_retried,
            open_micros: self.opened.micros,
            opened_from_image: self.opened.from_image,
            replayed_bytes: self.opened.replayed_bytes,
            summarised_segments: self.opened.summarised,
            checkpoints,
            checkpoint_bytes,
            checkpoint_covered,
            direct_io: e.disk().is_direct(),
            direct_reads: e.disk().reads_direct(),
            pad_bytes: g.pad_bytes,
            damaged_ranges: damage.len() as u64,
            damaged_bytes: damage.iter().map(|d| d.end - d.start).sum(),
            failed: e.latch().is_failed(),
            format_version: e.disk().superblock().version,
            kept_slots: segs.kept_slots(),
        }
    }

    /// The largest value a put accepts (`Options::max_value_size`).
    pub fn max_value_size(&self) -> usize {
        self.engine.opts().max_value_size
    }

    /// The directory of the store.
    pub fn path(&self) -> &Path {
        self.engine.dir()
    }

    /// Flushes and syncs everything, writes IMAGE_file, and releases the lock. Dropping a
    /// `Store` does the same but can only log a failure.
    pub fn close(mut self) -> Result<()> {
        self.shutdown()
    }

    /// Reads every live record (from the ring or disk_file) and checks its header, its key
    /// (it must hash to the index entry that points at it) and its checksum. Runs beside
    /// puts and gets; records that change while it runs are skipped. Returns counts and
    /// the first problems; I/O errors other than corruption end it early.
    pub fn verify(&self) -> Result<VerifyReport> {
        self.verify_with_progress(|_, _| {})
    }

    /// Calls `f(key, value, value length)` for every live record, in index order (by key
    /// hash, not by key), until `f` returns false. With `values` false, `value` is empty and each record costs
    /// one read of its header and key (at most about 4 KiB); with `values` true, one read of
    /// the whole record. Records are checked as by `get`: a damaged one is reported as
    /// `Corruption` and ends the walk. Runs beside puts and gets; records that change while
    /// it runs may be skipped or seen in their new state.
    pub fn for_each_record(
        &self,
        values: bool,
        f: impl FnMut(&[u8], &[u8], usize) -> bool,
    ) -> Result<()> {
        verify::for_each_record(&self.engine, values, f)
    }

    /// The live keys that start with `prefix` (empty: all), with their value lengths,
    /// without reading values: from the key summaries, reading disk_file only where a
    /// segment has none. Each key present and not written during the whole iteration is
    /// returned exactly once; one put, overwritten or deleted meanwhile may be missing.
    /// Order: the log order of the keys' records, not sorted. While the iteration is open
    /// the background reclaimer pauses and `compact` waits (then fails); drop it when done.
    pub fn keys(&self, prefix: &[u8]) -> Result<Keys> {
        Keys::new(self.engine.clone(), self.reclaimer.clone(), prefix, false)
    }

    /// As `keys`, with each value (one read of each record, checked as by `get`).
    pub fn scan(&self, prefix: &[u8]) -> Result<Keys> {
        Keys::new(self.engine.clone(), self.reclaimer.clone(), prefix, true)
    }

    /// `verify`, calling `progress(records checked, records in the index)` as it goes.
    pub fn verify_with_progress(&self, progress: impl FnMut(u64, u64)) -> Result<VerifyReport> {
        verify::verify(&self.engine, &self.opened.damage, progress)
    }

    /// Reclaims space now, at full speed: every closed segment with at least 1/64 of it dead
    /// (and more than moving its records would pad) has its live records moved to the log's
    /// tail and is given back to the file system.
    /// Runs beside puts, gets and deletes (and waits for a background round to finish).
    pub fn compact(&self) -> Result<CompactReport> {
        let _unwind = FailOnUnwind::new(&self.engine, "a compaction");
        self.engine.latch().check()?;
        self.reclaimer.compact()
    }

    /// Rewrites IMAGE_file now so that it covers everything put so far (after making that
    /// durable). Returns the disk_file offset it covers. The background checkpoints do the
    /// same every `checkpoint_bytes` or `checkpoint_interval`. On error the old IMAGE_file
    /// stays: `NoSpace` if the disk had no room for the new image (the store goes on), else
    /// a failed write of it latches the store as failed.
    pub fn checkpoint(&self) -> Result<u64> {
        let _unwind = FailOnUnwind::new(&self.engine, "a checkpoint");
        self.ckpt.checkpoint()
    }

    /// Stops the background threads (reclaim, then checkpoint, then the lookout once it
    /// has flushed and synced everything) and writes IMAGE_file.
    fn shutdown(&mut self) -> Result<()> {
        if std::mem::replace(&mut self.closed, true) {
            return Ok(());
        }
        let e = &self.engine;
        self.reclaim.stop();
        if let Err(err) = self.reclaimer.close_stream() {
            e.log()
                .error(&format!("close: closing the relocation segment: {err}"));
        }
        self.checkpointer.stop();
        e.ring().begin_shutdown();
        let flushed = self
            .lookout
            .join()
            .unwrap_or_else(|| Err(e.latch().fail("the lookout thread panicked")));
        if let Err(err) = flushed.and_then(|()| e.latch().check()) {
            e.log().error(&format!(
                "close: {err}; IMAGE_file not written: the next open recovers from what is on \
                 disk"
            ));
            return Err(err);
        }
        let end = e.ring().lock().tail;
        e.segs().punch_at_close(end);
        let res = self.ckpt.write_at_close();
        match res {
            Ok((what, bytes, records, covered)) => {
                e.log().info(&format!(
                    "closed: {records} records, disk_file {covered} bytes; wrote {what} \
                     ({bytes} bytes)"
                ));
                Ok(())
            }
            Err(err) => {
                e.log()
                    .error(&format!("close: writing IMAGE_file failed: {err}"));
                Err(err)
            }
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            log::error!(
                "kvs: closing {} on drop failed: {e}",
                self.engine.dir().display()
            );
        }
    }
}

//! The store (the seed's interface module): opens the files, recovers the index, and
//! runs put, get, delete, sync and close over the index, the ring and disk_file.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use parking_lot::{Condvar, Mutex, MutexGuard, RwLock};

use crate::log::ring::WriteBuffer;
use crate::log::device::Latch;
use crate::log::disk::{DiskConfig, DiskFile};
use crate::error::{Error, Result};
use crate::log::fault::Faults;
use crate::log::hooks::Hooks;
use crate::image::{self, ImageMeta};
use crate::index::{hash_key, Index, KeyHash, Location};
use crate::logfile::LogFile;
use crate::options::{Durability, Options};
use crate::reclaim::{CompactReport, ReclaimState};
use crate::format::{data_sum, padded_len, Header, Kind, HEADER_LEN, MAX_KEY_LEN, SEG_HEADER};
use crate::recovery::{self, DamagedRange};
use crate::log::segments::Segments;

/// The file names inside a store directory.
pub const DISK_FILE: &str = "disk_file";
/// The index image.
pub const IMAGE_FILE: &str = "IMAGE_file";
/// The event log.
pub const LOG_FILE: &str = "LOG";
/// The lock file (flock'ed while a process has the store open).
pub const LOCK_FILE: &str = "LOCK";

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
    /// Bytes those flushes wrote (holes left for dead values excluded).
    pub flushed_bytes: u64,
    /// Gets served from the ring since open.
    pub gets_from_buffer: u64,
    /// Gets that read disk_file since open.
    pub gets_from_disk: u64,
    /// How long open took, in microseconds.
    pub open_micros: u64,
    /// Whether open loaded IMAGE_file (else it scanned disk_file from the start).
    pub opened_from_image: bool,
    /// Bytes of disk_file replayed at open (after what IMAGE_file covered).
    pub replayed_bytes: u64,
    /// Checkpoints taken since open (background and explicit).
    pub checkpoints: u64,
    /// disk_file offset the newest IMAGE_file covers: recovery replays from there.
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
    /// disk_file format version (2 or 3).
    pub format_version: u32,
    /// Segment slots kept untouched and unused: they hold records of this store but no
    /// sound segment header (LOG names them).
    pub kept_slots: u64,
}

pub(crate) struct Inner {
    pub(crate) opts: Options,
    pub(crate) seed: u64,
    pub(crate) index: RwLock<Index>,
    pub(crate) buffer: WriteBuffer,
    pub(crate) disk: Arc<DiskFile>,
    pub(crate) segs: Arc<Segments>,
    pub(crate) log: Arc<LogFile>,
    pub(crate) dir: PathBuf,
    pub(crate) gets_from_buffer: AtomicU64,
    pub(crate) gets_from_disk: AtomicU64,
    pub(crate) open_micros: u64,
    pub(crate) opened_from_image: bool,
    pub(crate) replayed_bytes: u64,
    /// Damaged log ranges recovery found at this open (records after each were kept).
    pub(crate) damage: Vec<DamagedRange>,
    /// Set by the first failed write or sync, or a background thread's death.
    pub(crate) latch: Arc<Latch>,
    /// Tests: faults for IMAGE_file writes.
    pub(crate) faults: Option<Arc<Faults>>,
    /// Checkpoint progress; the condvar wakes the checkpoint thread (to stop).
    pub(crate) ckpt: Mutex<Checkpoints>,
    pub(crate) ckpt_wake: Condvar,
    /// Serialises checkpoints (background and `Store::checkpoint`).
    pub(crate) ckpt_running: Mutex<()>,
    /// The reclaimer's progress; the condvar wakes its thread (to stop).
    pub(crate) reclaim: Mutex<ReclaimState>,
    pub(crate) reclaim_wake: Condvar,
    /// Serialises reclaim rounds (background and `Store::compact`).
    pub(crate) reclaim_running: Mutex<()>,
    /// Set by the reclaimer while the dead share is at or above `reclaim_urgent`: puts
    /// then wait (on `throttle_cv`) until it has given segments back, so the file stays
    /// bounded however fast puts come.
    pub(crate) throttle: AtomicBool,
    pub(crate) throttle_mx: Mutex<()>,
    pub(crate) throttle_cv: Condvar,
    _lock: Flock<File>,
}

pub(crate) struct Checkpoints {
    /// Log offset the newest IMAGE_file covers (0 while there is none this open trusts).
    pub(crate) covered: u64,
    /// Checkpoints taken since open.
    count: u64,
    last: Instant,
    stop: bool,
}

/// An open store. `Send + Sync`: share it (`Arc<Store>` or `&Store`) between threads.
pub struct Store {
    inner: Arc<Inner>,
    lookout: Option<JoinHandle<Result<()>>>,
    checkpointer: Option<JoinHandle<()>>,
    reclaimer: Option<JoinHandle<()>>,
}

/// What `Store::verify` found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Live records read and checked.
    pub records: u64,
    /// Bytes of those records (headers, keys and values).
    pub bytes: u64,
    /// Records that failed a check (checksum, key, header) and are still live.
    pub corrupt: u64,
    /// Damaged log ranges that recovery found at this open and stepped over (the records
    /// after each were kept), and segment slots kept unread for a damaged segment header.
    pub damaged_ranges: u64,
    /// Bytes of those ranges.
    pub damaged_bytes: u64,
    /// Descriptions of the first problems (at most 20).
    pub problems: Vec<String>,
}

impl VerifyReport {
    /// Whether nothing was found wrong.
    pub fn is_clean(&self) -> bool {
        self.corrupt == 0 && self.damaged_ranges == 0
    }
}

/// An index entry: (slot, fingerprint, location).
type Entry = (usize, u64, Location);

/// What a read of one record found.
enum Read {
    /// The value is in the caller's buffer.
    Done,
    /// The key moved (overwritten or deleted) while we read: look it up again.
    Moved,
}

fn check_key(key: &[u8]) -> Result<()> {
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(Error::InvalidArgument(format!(
            "key length {} is outside 1..={MAX_KEY_LEN}",
            key.len()
        )));
    }
    Ok(())
}

impl Store {
    /// Opens the store in `dir`, creating the directory and the store if missing.
    /// Fails with `Error::Locked` if another process (or `Store`) has it open.
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
    /// figures of the rebuilt store.
    pub fn rebuild_index(dir: impl AsRef<Path>, opts: Options) -> Result<Stats> {
        let store = Store::open_inner(dir.as_ref(), opts, Hooks::default(), false)?;
        let stats = store.stats();
        store.close()?;
        Ok(stats)
    }

    fn open_inner(dir: &Path, opts: Options, hooks: Hooks, use_image: bool) -> Result<Store> {
        let started = Instant::now();
        opts.validate()?;
        let dir = dir.to_path_buf();
        if dir.exists() && !dir.is_dir() {
            return Err(Error::InvalidArgument(format!(
                "{} exists and is not a directory",
                dir.display()
            )));
        }
        fs::create_dir_all(&dir)?;
        let lock_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(opts.file_mode)
            .open(dir.join(LOCK_FILE))?;
        let lock = Flock::lock(lock_file, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
            if e == nix::errno::Errno::EWOULDBLOCK {
                Error::Locked
            } else {
                Error::from(e)
            }
        })?;
        let log = Arc::new(LogFile::open(&dir.join(LOG_FILE), opts.file_mode)?);
        let latch = Arc::new(Latch::default());
        let (disk, created) = DiskFile::open(DiskConfig {
            path: &dir.join(DISK_FILE),
            direct_writes: opts.direct_io,
            direct_reads: opts.direct_reads,
            file_mode: opts.file_mode,
            segment_size: opts.segment_size,
            latch: latch.clone(),
            hooks: &hooks,
        })?;
        if (opts.direct_io || opts.direct_reads) && !(disk.is_direct() || disk.reads_direct()) {
            log.warn("O_DIRECT is not supported here; writing through the page cache");
        }
        if created {
            image::sync_dir(&dir)?;
            log.info(&format!("created store in {}", dir.display()));
        }
        let disk = Arc::new(disk);
        let sb = *disk.superblock();
        opts.check_segment_size(sb.segment_size)?;
        if sb.segment_size != opts.segment_size && !created {
            log.info(&format!(
                "segment size is {} (fixed at creation; the option's {} applies to new stores)",
                sb.segment_size, opts.segment_size
            ));
        }
        let seed = sb.hash_seed;
        let segs = Arc::new(Segments::load(disk.clone(), log.clone())?);
        let rec = recovery::recover(
            &disk,
            &segs,
            &log,
            &opts,
            &dir.join(IMAGE_FILE),
            use_image,
            created,
        )?;
        let buffer = WriteBuffer::new(
            &opts,
            rec.tail,
            rec.next_seq,
            disk.clone(),
            segs.clone(),
            log.clone(),
        )?;
        let open_micros = started.elapsed().as_micros() as u64;
        let (image_ms, replay_ms, cut_ms) = rec.times;
        log.info(&format!(
            "opened: {} records, {} from IMAGE_file, replayed {} bytes, {} damaged ranges, in \
             {} ms (image read by {image_ms} ms, replay by {replay_ms} ms, log end set by \
             {cut_ms} ms)",
            rec.index.len(),
            if rec.opened_from_image {
                "index"
            } else {
                "no index"
            },
            rec.replayed_bytes,
            rec.damage.len(),
            open_micros / 1000
        ));
        let opened_from_image = rec.opened_from_image;
        let replayed_bytes = rec.replayed_bytes;
        let covered = rec.covered;
        let damage = rec.damage;
        let index = rec.index;
        let inner = Arc::new(Inner {
            opts,
            seed,
            index: RwLock::new(index),
            buffer,
            disk,
            segs,
            log,
            dir,
            gets_from_buffer: AtomicU64::new(0),
            gets_from_disk: AtomicU64::new(0),
            open_micros,
            opened_from_image,
            replayed_bytes,
            damage,
            latch,
            faults: hooks.faults.clone(),
            ckpt: Mutex::new(Checkpoints {
                covered,
                count: 0,
                last: Instant::now(),
                stop: false,
            }),
            ckpt_wake: Condvar::new(),
            ckpt_running: Mutex::new(()),
            reclaim: Mutex::new(ReclaimState::default()),
            reclaim_wake: Condvar::new(),
            reclaim_running: Mutex::new(()),
            throttle: AtomicBool::new(false),
            throttle_mx: Mutex::new(()),
            throttle_cv: Condvar::new(),
            _lock: lock,
        });
        let worker = inner.clone();
        let lookout = std::thread::Builder::new()
            .name("kvs-lookout".into())
            .spawn(move || worker.buffer.run_lookout())?;
        let mut store = Store {
            inner,
            lookout: Some(lookout),
            checkpointer: None,
            reclaimer: None,
        };
        let worker = store.inner.clone();
        store.checkpointer = Some(
            std::thread::Builder::new()
                .name("kvs-checkpoint".into())
                .spawn(move || {
                    let _watch = DiesLoudly(&worker, "checkpoint");
                    worker.run_checkpoints()
                })?,
        );
        let worker = store.inner.clone();
        store.reclaimer = Some(
            std::thread::Builder::new()
                .name("kvs-reclaim".into())
                .spawn(move || {
                    let _watch = DiesLoudly(&worker, "reclaim");
                    worker.run_reclaimer()
                })?,
        );
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
        check_key(key)?;
        self.inner.latch.check()?;
        let max = self.inner.opts.max_value_size;
        if value.len() > max {
            return Err(Error::TooLarge {
                size: value.len(),
                max,
            });
        }
        let kh = hash_key(self.inner.seed, key);
        if self.inner.throttle.load(Ordering::Acquire) {
            self.inner.wait_for_reclaim();
        }
        let mut h = Header {
            kind: Kind::Put,
            key_len: key.len() as u32,
            value_len: value.len() as u32,
            seq: 0,
            data_sum: data_sum(key, value),
        };
        let padded = h.padded_len();
        let inner = &self.inner;
        let buf = &inner.buffer;
        let mut g = buf.lock();
        buf.make_room(&mut g, padded, false)?;
        h.seq = g.next_seq;
        g.next_seq += 1;
        let off = buf.append(
            &mut g,
            &[&h.encode(inner.disk.sum_key()), key, value],
            padded,
        );
        let loc = Location {
            offset: off,
            len: h.record_len() as u32,
        };
        let old = match inner.index.write().insert(&kh, loc) {
            Ok(old) => old,
            Err(e) => {
                buf.mark_dead(&mut g, off);
                return Err(e);
            }
        };
        inner.segs.add_live(off, padded as u64);
        if let Some(old) = old {
            buf.mark_dead(&mut g, old.offset);
            inner
                .segs
                .sub_live(old.offset, padded_len(old.len as usize) as u64);
        }
        drop(g);
        if off % inner.segs.size() == SEG_HEADER {
            inner.segment_opened();
        }
        self.commit(off + padded as u64)
    }

    /// In `Durability::Always`, waits until the log up to `end` is durable. If this fails,
    /// the store has failed (`Error::Failed`): the operation is in the index and the ring,
    /// and whether it survives a reopen is unknown until then.
    fn commit(&self, end: u64) -> Result<()> {
        if self.inner.opts.durability == Durability::Always {
            self.inner.buffer.flush_to(end, true)?;
        }
        Ok(())
    }

    /// Removes `key`. Returns whether it was there. A tombstone record goes to disk_file;
    /// if the value was not flushed yet, it never will be. Errors as for `put`.
    pub fn delete(&self, key: &[u8]) -> Result<bool> {
        check_key(key)?;
        self.inner.latch.check()?;
        let kh = hash_key(self.inner.seed, key);
        let h = Header {
            kind: Kind::Delete,
            key_len: key.len() as u32,
            value_len: 0,
            seq: 0,
            data_sum: data_sum(key, &[]),
        };
        let padded = h.padded_len();
        let inner = &self.inner;
        let buf = &inner.buffer;
        let mut g = buf.lock();
        if inner.index.read().get(&kh).is_none() {
            return Ok(false);
        }
        buf.make_room(&mut g, padded, false)?;
        // The ring lock was released while waiting: look again.
        let Some(old) = inner.index.write().remove(&kh) else {
            return Ok(false);
        };
        inner
            .segs
            .sub_live(old.offset, padded_len(old.len as usize) as u64);
        let h = Header {
            seq: g.next_seq,
            ..h
        };
        g.next_seq += 1;
        let off = buf.append(&mut g, &[&h.encode(inner.disk.sum_key()), key], padded);
        inner.segs.add_tomb(off);
        buf.mark_dead(&mut g, old.offset);
        drop(g);
        self.commit(off + padded as u64)?;
        Ok(true)
    }

    /// The value of `key`, or `None`.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        check_key(key)?;
        let kh = hash_key(self.inner.seed, key);
        loop {
            let Some(loc) = self.lookup(&kh) else {
                return Ok(None);
            };
            let mut value = vec![0u8; value_len(loc, key)?];
            if let Read::Done = self.read_record(&kh, loc, key, &mut value)? {
                return Ok(Some(value));
            }
        }
    }

    /// Copies the value of `key` into `buf` and returns its length, or `None` if the key
    /// is absent. If `buf` is too small, fails with `Error::BufferTooSmall { needed }`
    /// and leaves `buf` unspecified.
    pub fn get_into(&self, key: &[u8], buf: &mut [u8]) -> Result<Option<usize>> {
        check_key(key)?;
        let kh = hash_key(self.inner.seed, key);
        loop {
            let Some(loc) = self.lookup(&kh) else {
                return Ok(None);
            };
            let n = value_len(loc, key)?;
            if n > buf.len() {
                return Err(Error::BufferTooSmall { needed: n });
            }
            if let Read::Done = self.read_record(&kh, loc, key, &mut buf[..n])? {
                return Ok(Some(n));
            }
        }
    }

    /// Returns once everything put or deleted before the call is written to disk_file and
    /// fdatasync'ed. An error is always `Failed` or `Closed`: after a failed write or
    /// fdatasync no later sync on this handle succeeds (the kernel may have dropped the
    /// data); what was put since the last successful sync is unknown until reopening.
    pub fn sync(&self) -> Result<()> {
        self.inner.buffer.flush(true)
    }

    /// Figures about the store.
    pub fn stats(&self) -> Stats {
        let (records, live_record_bytes, index_bytes) = {
            let idx = self.inner.index.read();
            (idx.len(), idx.live_bytes(), idx.memory_bytes())
        };
        let (checkpoints, checkpoint_covered) = {
            let c = self.inner.ckpt.lock();
            (c.count, c.covered)
        };
        let reclaim = {
            let r = self.inner.reclaim.lock();
            (r.bytes_moved, r.records_moved, r.rounds)
        };
        let segs = &self.inner.segs;
        let (slots, free_slots) = segs.slot_counts();
        let g = self.inner.buffer.lock();
        // Every segment before the tail's is full; the tail's is used up to the tail.
        let tail_seg = segs.of(g.tail);
        let tail_used = (g.tail % segs.size()).saturating_sub(SEG_HEADER);
        let (mut live_bytes, mut dead_bytes) = (0, 0);
        for u in segs.usage() {
            let used = if u.logical < tail_seg {
                segs.size() - SEG_HEADER
            } else {
                tail_used
            };
            live_bytes += u.live;
            dead_bytes += used.saturating_sub(u.live);
        }
        Stats {
            records,
            live_record_bytes,
            live_bytes,
            dead_bytes,
            disk_file_bytes: self.inner.disk.len().unwrap_or(0),
            disk_file_allocated: self.inner.disk.allocated_bytes().unwrap_or(0),
            segment_size: segs.size(),
            segments: slots - free_slots,
            free_segments: free_slots,
            segments_freed: segs.freed(),
            bytes_moved: reclaim.0,
            records_moved: reclaim.1,
            reclaim_rounds: reclaim.2,
            log_end: g.tail,
            buffer_capacity: self.inner.buffer.capacity() as u64,
            buffer_unflushed: g.tail - g.flushed,
            index_bytes,
            flushes: g.flushes,
            flushed_bytes: g.flushed_bytes,
            gets_from_buffer: self.inner.gets_from_buffer.load(Ordering::Relaxed),
            gets_from_disk: self.inner.gets_from_disk.load(Ordering::Relaxed),
            open_micros: self.inner.open_micros,
            opened_from_image: self.inner.opened_from_image,
            replayed_bytes: self.inner.replayed_bytes,
            checkpoints,
            checkpoint_covered,
            direct_io: self.inner.disk.is_direct(),
            direct_reads: self.inner.disk.reads_direct(),
            pad_bytes: g.pad_bytes,
            damaged_ranges: self.inner.damage.len() as u64,
            damaged_bytes: self.inner.damage.iter().map(|d| d.end - d.start).sum(),
            failed: self.inner.latch.is_failed(),
            format_version: self.inner.disk.superblock().version,
            kept_slots: segs.kept_slots(),
        }
    }

    /// The directory of the store.
    pub fn path(&self) -> &Path {
        &self.inner.dir
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
        mut f: impl FnMut(&[u8], &[u8], usize) -> bool,
    ) -> Result<()> {
        let want = |body: usize| if values { body } else { body.min(MAX_KEY_LEN) };
        let sum_key = self.inner.disk.sum_key();
        self.walk_records(want, |(slot, fp, loc), read, head, rest| {
            read?;
            let checked = if values {
                self.check_entry(slot, fp, loc, head, rest)
            } else {
                check_key_of(head, rest, loc, sum_key).or_else(|| {
                    // Without the value there is no checksum: the key must at least hash
                    // to the entry that points at it.
                    let key_len = Header::decode(head, sum_key).map_or(0, |h| h.key_len as usize);
                    let kh = hash_key(self.inner.seed, &rest[..key_len]);
                    let slot_ok = self.inner.index.read().slot_for(&kh) == slot;
                    (kh.fp != fp || !slot_ok).then(|| "key does not hash to its entry".into())
                })
            };
            let key_len = match (checked, Header::decode(head, sum_key)) {
                (None, Ok(h)) => h.key_len as usize,
                (_, _) if !self.still_current(slot, fp, loc) => return Ok(true), // moved
                (problem, _) => {
                    return Err(Error::corrupt(
                        Some(loc.offset),
                        problem.unwrap_or_else(|| "bad header".into()),
                    ))
                }
            };
            let (key, value) = rest.split_at(key_len);
            let value_len = (loc.len as usize).saturating_sub(HEADER_LEN + key_len);
            Ok(f(key, if values { value } else { &[] }, value_len))
        })
    }

    /// `verify`, calling `progress(records checked, records in the index)` as it goes.
    pub fn verify_with_progress(&self, mut progress: impl FnMut(u64, u64)) -> Result<VerifyReport> {
        let total = self.inner.index.read().len();
        let mut report = VerifyReport::default();
        self.walk_records(
            |body| body,
            |(slot, fp, loc), read, head, rest| {
                let problem = match read {
                    Ok(()) => self.check_entry(slot, fp, loc, head, rest),
                    Err(Error::Corruption { what, .. }) => Some(what),
                    Err(e) => return Err(e),
                };
                if let Some(p) = problem {
                    if self.still_current(slot, fp, loc) {
                        report.corrupt += 1;
                        if report.problems.len() < 20 {
                            report.problems.push(format!("offset {}: {p}", loc.offset));
                        }
                    }
                    return Ok(true);
                }
                report.records += 1;
                report.bytes += loc.len as u64;
                if report.records % 1024 == 0 {
                    progress(report.records, total);
                }
                Ok(true)
            },
        )?;
        progress(report.records, total);
        let inner = &self.inner;
        let kept = inner.segs.kept_slots();
        if kept > 0 {
            report.damaged_ranges += kept;
            report.damaged_bytes += kept * inner.segs.size();
            report.problems.push(format!(
                "{kept} segment slots with a damaged segment header kept unread (LOG names them)"
            ));
        }
        for d in &inner.damage {
            report.damaged_ranges += 1;
            report.damaged_bytes += d.end - d.start;
            if report.problems.len() < 20 {
                report.problems.push(format!(
                    "damaged log range [{}, {}) found at open: {}",
                    d.start, d.end, d.what
                ));
            }
        }
        inner.log.info(&format!(
            "verify: {} records ({} bytes) sound, {} corrupt, {} damaged log ranges found at \
             open",
            report.records, report.bytes, report.corrupt, report.damaged_ranges
        ));
        for p in &report.problems {
            inner.log.error(&format!("verify: {p}"));
        }
        Ok(report)
    }

    /// Walks every index entry, collecting a chunk of slots at a time under the index lock
    /// (so writers wait only that long), and reads each record: `head` gets its header,
    /// `rest` the first `body_len(key + value length)` bytes after it. Calls
    /// `f(entry, read result, head, rest)` until it returns Ok(false) or an error.
    fn walk_records(
        &self,
        body_len: impl Fn(usize) -> usize,
        mut f: impl FnMut(Entry, Result<()>, &[u8; HEADER_LEN], &[u8]) -> Result<bool>,
    ) -> Result<()> {
        const CHUNK: usize = 4096;
        let slots = self.inner.index.read().slot_count();
        let mut entries = Vec::new();
        let mut head = [0u8; HEADER_LEN];
        let mut rest = Vec::new();
        for start in (0..slots).step_by(CHUNK) {
            entries.clear();
            let end = (start + CHUNK).min(slots);
            self.inner.index.read().entries(start..end, &mut entries);
            for &(slot, fp, loc) in &entries {
                rest.resize(body_len((loc.len as usize).saturating_sub(HEADER_LEN)), 0);
                let read = self.read_raw(loc, &mut head, &mut rest).map(|_| ());
                if !f((slot, fp, loc), read, &head, &rest)? {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Whether the index still points the entry (slot, fp) at `loc`.
    fn still_current(&self, slot: usize, fp: u64, loc: Location) -> bool {
        self.inner.index.read().get_in_slot(slot, fp) == Some(loc)
    }

    /// Why the record read for index entry (slot, fp, loc) is not what the entry says.
    fn check_entry(
        &self,
        slot: usize,
        fp: u64,
        loc: Location,
        head: &[u8; HEADER_LEN],
        rest: &[u8],
    ) -> Option<String> {
        let h = match Header::decode(head, self.inner.disk.sum_key()) {
            Ok(h) => h,
            Err(e) => return Some(format!("bad header ({e:?})")),
        };
        if h.kind != Kind::Put || h.record_len() != loc.len as usize {
            return Some(format!(
                "a {:?} record of {} bytes where the index expects a put of {}",
                h.kind,
                h.record_len(),
                loc.len
            ));
        }
        let (key, value) = rest.split_at(h.key_len as usize);
        let kh = hash_key(self.inner.seed, key);
        if kh.fp != fp || self.inner.index.read().slot_for(&kh) != slot {
            return Some("holds a key that does not hash to its index entry".into());
        }
        if data_sum(key, value) != h.data_sum {
            return Some("payload checksum mismatch".into());
        }
        None
    }

    /// Reads the record at `loc` into `head` and `rest`, from the ring if it is still
    /// there, else with one read of disk_file. Returns whether the ring had it.
    fn read_raw(&self, loc: Location, head: &mut [u8], rest: &mut [u8]) -> Result<bool> {
        if self.inner.buffer.read(loc.offset, head, rest) {
            return Ok(true);
        }
        self.inner
            .buffer
            .ensure_written(loc.offset + (head.len() + rest.len()) as u64);
        if !self.inner.segs.read_record(loc.offset, head, rest)? {
            // The reclaimer gave the segment back: no record here (the caller's checks fail
            // and it looks the key up again).
            head.fill(0);
        }
        Ok(false)
    }

    /// Reclaims space now, at full speed: every closed segment with at least 1/64 of it dead
    /// has its live records moved to the log's tail and is given back to the file system.
    /// Runs beside puts, gets and deletes (and waits for a background round to finish).
    pub fn compact(&self) -> Result<CompactReport> {
        self.inner.latch.check()?;
        self.inner.compact()
    }

    /// Rewrites IMAGE_file now so that it covers everything put so far (after making that
    /// durable). Returns the disk_file offset it covers. The background checkpoints do the
    /// same every `checkpoint_bytes` or `checkpoint_interval`. On error the old IMAGE_file
    /// stays (a failed write of the new one latches the store as failed).
    pub fn checkpoint(&self) -> Result<u64> {
        self.inner.checkpoint()
    }

    fn shutdown(&mut self) -> Result<()> {
        let Some(lookout) = self.lookout.take() else {
            return Ok(());
        };
        let inner = &self.inner;
        inner.reclaim.lock().stop = true;
        inner.reclaim_wake.notify_all();
        if let Some(r) = self.reclaimer.take() {
            let _ = r.join();
        }
        inner.ckpt.lock().stop = true;
        inner.ckpt_wake.notify_all();
        if let Some(c) = self.checkpointer.take() {
            let _ = c.join();
        }
        inner.buffer.begin_shutdown();
        let flushed = lookout
            .join()
            .unwrap_or_else(|_| Err(inner.latch.fail("the lookout thread panicked")));
        if let Err(e) = flushed.and_then(|()| inner.latch.check()) {
            inner.log.error(&format!(
                "close: {e}; IMAGE_file not written: the next open recovers from what is on \
                 disk"
            ));
            return Err(e);
        }
        let g = inner.buffer.lock();
        inner.log.info(&format!(
            "flushed {} times since open: {} bytes written, {} bytes of padding",
            g.flushes, g.flushed_bytes, g.pad_bytes
        ));
        let meta = ImageMeta {
            covered: g.tail,
            next_seq: g.next_seq,
            hash_seed: inner.seed,
        };
        drop(g);
        let idx = inner.index.read();
        match inner.write_image(&idx, &meta) {
            Ok(bytes) => {
                inner.log.info(&format!(
                    "closed: {} records, disk_file {} bytes, IMAGE_file {bytes} bytes",
                    idx.len(),
                    meta.covered
                ));
                Ok(())
            }
            Err(e) => {
                inner
                    .log
                    .error(&format!("close: writing IMAGE_file failed: {e}"));
                Err(e)
            }
        }
    }

    fn lookup(&self, kh: &KeyHash) -> Option<Location> {
        self.inner.index.read().get(kh)
    }

    /// Reads the record at `loc` into `value` (sized to the value), from the ring if it is
    /// still there, else with one read of disk_file; checks kind, key and checksum.
    fn read_record(
        &self,
        kh: &KeyHash,
        loc: Location,
        key: &[u8],
        value: &mut [u8],
    ) -> Result<Read> {
        let mut head_buf = [0u8; HEADER_LEN + MAX_KEY_LEN];
        let head = &mut head_buf[..HEADER_LEN + key.len()];
        let inner = &self.inner;
        let counter = if self.read_raw(loc, head, value)? {
            &inner.gets_from_buffer
        } else {
            &inner.gets_from_disk
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let problem = check_record(head, key, value, inner.disk.sum_key());
        match problem {
            None => Ok(Read::Done),
            // The record may have been marked Dead (or its space reused) because the key was
            // overwritten or deleted after our lookup: that is no corruption.
            Some(_) if self.lookup(kh) != Some(loc) => Ok(Read::Moved),
            Some(msg) => {
                inner
                    .log
                    .error(&format!("record at log offset {}: {msg}", loc.offset));
                Err(Error::corrupt(Some(loc.offset), msg))
            }
        }
    }
}

/// Why the header and key read for index entry `loc` (without the value) are not a put
/// of a plausible key, if they are not.
fn check_key_of(
    head: &[u8; HEADER_LEN],
    rest: &[u8],
    loc: Location,
    sum_key: u64,
) -> Option<String> {
    match Header::decode(head, sum_key) {
        Ok(h) if h.kind == Kind::Put && h.record_len() == loc.len as usize => {
            (h.key_len as usize > rest.len()).then(|| "key runs past the record".into())
        }
        Ok(h) => Some(format!(
            "a {:?} record where the index expects a put",
            h.kind
        )),
        Err(e) => Some(format!("bad header ({e:?})")),
    }
}

/// The value length of the record at `loc` if it holds `key`.
fn value_len(loc: Location, key: &[u8]) -> Result<usize> {
    (loc.len as usize)
        .checked_sub(HEADER_LEN + key.len())
        .ok_or_else(|| {
            Error::corrupt(
                Some(loc.offset),
                "the record is shorter than this key: another key shares its hash, or the \
                 index is damaged",
            )
        })
}

/// Why a record read for `key` is not a valid put of that key, if it is not.
fn check_record(head: &[u8], key: &[u8], value: &[u8], sum_key: u64) -> Option<String> {
    let mut hb = [0u8; HEADER_LEN];
    hb.copy_from_slice(&head[..HEADER_LEN]);
    let h = match Header::decode(&hb, sum_key) {
        Ok(h) => h,
        Err(e) => return Some(format!("bad header ({e:?})")),
    };
    if h.kind != Kind::Put {
        return Some(format!("a {:?} record where a put was expected", h.kind));
    }
    if h.key_len as usize != key.len() || h.value_len as usize != value.len() {
        return Some("lengths do not match the index".into());
    }
    if &head[HEADER_LEN..] != key {
        return Some("holds another key (a hash collision or a damaged index)".into());
    }
    if data_sum(key, value) != h.data_sum {
        return Some("payload checksum mismatch".into());
    }
    None
}

impl Inner {
    /// One checkpoint: snapshot the index and the log offset C it reflects (under the ring
    /// lock, so no put or delete is half-applied), pin C (no record below it becomes Dead),
    /// make the log durable up to C, then replace IMAGE_file atomically.
    pub(crate) fn checkpoint(&self) -> Result<u64> {
        let _one = self.ckpt_running.lock();
        self.latch.check()?;
        let started = Instant::now();
        let (snapshot, meta) = {
            let mut g = self.buffer.lock();
            let covered = g.tail;
            if covered == self.ckpt.lock().covered {
                return Ok(covered);
            }
            self.buffer.pin(&mut g, covered);
            let meta = ImageMeta {
                covered,
                next_seq: g.next_seq,
                hash_seed: self.seed,
            };
            (self.index.read().clone(), meta)
        };
        let snapshot_ms = started.elapsed().as_millis();
        self.buffer.flush_to(meta.covered, true)?;
        let bytes = self.write_image(&snapshot, &meta)?;
        let mut c = self.ckpt.lock();
        c.covered = meta.covered;
        c.count += 1;
        drop(c);
        self.log.info(&format!(
            "checkpoint: IMAGE_file covers disk_file up to {} ({} records, {bytes} bytes) in \
             {} ms ({snapshot_ms} ms holding writers)",
            meta.covered,
            snapshot.len(),
            started.elapsed().as_millis()
        ));
        Ok(meta.covered)
    }

    /// Replaces IMAGE_file with `index` (atomically); a failure latches the store.
    fn write_image(&self, index: &crate::index::Index, meta: &ImageMeta) -> Result<u64> {
        self.latch.guard("writing IMAGE_file", || {
            image::write(
                &self.dir.join(IMAGE_FILE),
                index,
                meta,
                self.opts.file_mode,
                self.faults.as_deref(),
            )
        })
    }

    /// The checkpoint thread: checks the triggers every 100 ms until told to stop.
    fn run_checkpoints(&self) {
        let (bytes, interval) = (self.opts.checkpoint_bytes, self.opts.checkpoint_interval);
        if bytes == 0 && interval.is_zero() {
            return;
        }
        let mut c = self.ckpt.lock();
        loop {
            // `stop` is set under this mutex: checked before each wait, no wake-up is lost.
            if c.stop {
                return;
            }
            self.ckpt_wake.wait_for(&mut c, Duration::from_millis(100));
            if c.stop {
                return;
            }
            // Lock order is ring, then checkpoints: read the tail with ours released.
            let tail = MutexGuard::unlocked(&mut c, || self.buffer.lock().tail);
            if c.stop {
                return;
            }
            let grown = tail.saturating_sub(c.covered);
            let due = (bytes > 0 && grown >= bytes)
                || (!interval.is_zero() && grown > 0 && c.last.elapsed() >= interval);
            if !due {
                continue;
            }
            let res = MutexGuard::unlocked(&mut c, || self.checkpoint());
            c.last = Instant::now();
            if let Err(e) = res {
                self.log.error(&format!("checkpoint failed: {e}"));
                if self.latch.is_failed() {
                    return;
                }
            }
        }
    }
}

/// Latches the store as failed if a background thread's body ends by panicking.
struct DiesLoudly<'a>(&'a Inner, &'static str);

impl Drop for DiesLoudly<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let why = format!("the {} thread panicked", self.1);
            self.0.log.error(&format!("{why}; the store has failed"));
            self.0.latch.fail(&why);
            self.0.release_throttle();
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            log::error!(
                "kvs: closing {} on drop failed: {e}",
                self.inner.dir.display()
            );
        }
    }
}

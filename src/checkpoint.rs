//! Checkpoints: the index persisted as IMAGE_file (whole) and IMAGE_delta (the changes
//! since), so that recovery replays only the log after what they cover.
//!
//! One checkpoint: under the ring lock, take the log offset C it covers and pin C (no
//! record below it becomes Dead), and take the engine's journal of index changes since
//! the last checkpoint (a swap); release the lock; make the log durable up to C; append
//! the changes to IMAGE_delta as one block and fdatasync it. Writers wait only for the
//! swap. The first checkpoint of an open without a usable image (taken before `open`
//! returns, a new store's empty index included), and one whose journal outgrew its cap,
//! copy the whole index under the lock instead and replace IMAGE_file atomically
//! (`image::write`). Once IMAGE_delta holds an eighth of IMAGE_file's bytes
//! (at least 1 MiB), the checkpoint folds it: it reads IMAGE_file and IMAGE_delta back,
//! applies the blocks, writes the result as the new IMAGE_file and removes IMAGE_delta,
//! all off the locks. The background thread takes one every `checkpoint_bytes` of log or
//! `checkpoint_interval`, and when the change journal is half full. Close writes what
//! changed since the newest image: nothing, one block, or IMAGE_file whole once the chain
//! would pass 1/CLOSE_SHARE of it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::delta::{self, Base, DeltaFile};
use crate::engine::{Engine, Snapshot};
use crate::error::{Error, Result};
use crate::format::{DELTA_FILE, IMAGE_FILE};
use crate::image::{self, ImageMeta};
use crate::index::Index;
use crate::log::fault::Faults;
use crate::worker::Signal;

/// Whether a failed write of IMAGE_file latches the store. The open's own image does not:
/// it only saves the next open a rebuild, the image before it (if any) stands, and the
/// next checkpoint writes one whole; a full disk must not keep the store from opening.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Latching {
    Yes,
    No,
}

/// IMAGE_delta is folded into IMAGE_file once it holds 1/FOLD_SHARE of IMAGE_file's bytes
/// (and at least `FOLD_MIN`). Applying it at open costs up to about 1 us per change: at 10 M
/// records, an open after a crash just short of a fold took 0.9-1.8 s, a clean one 0.44 s.
const FOLD_SHARE: u64 = 8;
const FOLD_MIN: u64 = 1 << 20;
/// Close appends its changes as an IMAGE_delta block, instead of writing IMAGE_file whole,
/// while the chain stays within 1/CLOSE_SHARE of IMAGE_file's bytes: a clean open then
/// applies at most that (at 10 M records 1.2 MiB, about 50 000 changes).
const CLOSE_SHARE: u64 = 256;

/// The free space puts leave for the index's images (`Segments::set_image_reserve`), from
/// the size of the newest IMAGE_file: the next one is written whole beside it (it replaces
/// the old one only once written), and IMAGE_delta grows meanwhile. Both are bounded by
/// the fold, usually: IMAGE_delta is folded at 1/FOLD_SHARE of IMAGE_file (so the index
/// has grown by about that much too), hence twice that share on top. A nearly full disk
/// then refuses puts (NoSpace) before a fold finds no room for IMAGE_file (which would
/// put the fold off: `append_changes`). An estimate: one checkpoint of many more changes
/// than that (up to its journal's cap, a quarter of the records) can pass it; the
/// reclaimer's spare segment usually absorbs the rest.
fn image_reserve(image_bytes: u64) -> u64 {
    image_bytes + 2 * (image_bytes / FOLD_SHARE).max(FOLD_MIN)
}

/// The longest the background checkpoint thread (and the reclaimer) waits before trying
/// again after `NoSpace`.
pub(crate) const NO_SPACE_PAUSE_MAX: Duration = Duration::from_secs(30);

/// Checkpoint progress.
struct Progress {
    /// Log offset the newest image covers (0 while there is none this open trusts).
    covered: u64,
    /// Checkpoints taken since open.
    count: u64,
    /// Bytes they wrote (IMAGE_file and IMAGE_delta).
    bytes: u64,
    last: Instant,
}

/// The image on disk; its mutex makes checkpoints one at a time.
struct OnDisk {
    /// IMAGE_file and its chain, if this open trusts or wrote one.
    base: Option<Base>,
    delta: DeltaFile,
}

/// Takes checkpoints and writes IMAGE_file and IMAGE_delta (also what close writes).
pub(crate) struct Checkpointer {
    engine: Arc<Engine>,
    /// Tests: faults for IMAGE_file and IMAGE_delta writes.
    faults: Option<Arc<Faults>>,
    running: Mutex<OnDisk>,
    progress: Mutex<Progress>,
}

impl Checkpointer {
    /// `covered`: what the image recovery loaded covers; `base`: that image.
    pub fn new(
        engine: Arc<Engine>,
        covered: u64,
        base: Option<Base>,
        faults: Option<Arc<Faults>>,
    ) -> Checkpointer {
        let delta = DeltaFile::new(
            engine.dir().join(DELTA_FILE),
            base.map_or(0, |b| b.chain_len),
            engine.opts().get_file_mode(),
        );
        // Without an image this open trusts, the index's memory stands for the image's
        // size (slots, nodes and free stack, as IMAGE_file holds them) until one is written.
        let image_bytes = base.map_or_else(|| engine.index_figures().2, |b| b.image_bytes);
        engine.segs().set_image_reserve(image_reserve(image_bytes));
        Checkpointer {
            engine,
            faults,
            running: Mutex::new(OnDisk { base, delta }),
            progress: Mutex::new(Progress {
                covered,
                count: 0,
                bytes: 0,
                last: Instant::now(),
            }),
        }
    }

    /// Whether this open trusts or wrote an IMAGE_file (else the next checkpoint is whole).
    pub fn has_image(&self) -> bool {
        self.running.lock().base.is_some()
    }

    /// Log offset the newest image covers.
    pub fn covered(&self) -> u64 {
        self.progress.lock().covered
    }

    /// Checkpoints taken since open, the bytes they wrote, and the offset the newest
    /// covers.
    pub fn figures(&self) -> (u64, u64, u64) {
        let p = self.progress.lock();
        (p.count, p.bytes, p.covered)
    }

    /// One checkpoint (see the module docs). Returns the log offset the image covers.
    pub fn checkpoint(&self) -> Result<u64> {
        self.take(false)
    }

    /// A checkpoint that writes IMAGE_file if this open has none, even when the log has
    /// not moved since the offset it would cover (a new store: its empty image is what
    /// the journal chains its changes to, so its first checkpoint is not a whole copy).
    pub fn first_image(&self) -> Result<u64> {
        self.take_unless(|_| u64::MAX, Latching::No)
    }

    /// A checkpoint even if the log's tail has not moved since the last one: the reclaimer's
    /// copies into its relocation segment change the index without moving the tail.
    pub fn checkpoint_changes(&self) -> Result<u64> {
        self.take_unless(|_| u64::MAX, Latching::Yes)
    }

    fn take(&self, even_unmoved: bool) -> Result<u64> {
        self.take_unless(
            |(whole, covered)| {
                if whole && even_unmoved {
                    u64::MAX
                } else {
                    covered
                }
            },
            Latching::Yes,
        )
    }

    /// A checkpoint, unless the log's tail is at `unless((whole, covered))` (`whole`: this
    /// open has no IMAGE_file yet; `covered`: where the last one stands). `latching`: whether
    /// a failed write of IMAGE_file latches the store.
    fn take_unless(
        &self,
        unless: impl FnOnce((bool, u64)) -> u64,
        latching: Latching,
    ) -> Result<u64> {
        let mut disk = self.running.lock();
        let e = &self.engine;
        e.latch().check()?;
        let started = Instant::now();
        let covered = self.covered();
        let whole = disk.base.is_none();
        let unless_at = unless((whole, covered));
        if (whole || !e.journal_on()) && e.ring().lock().tail != unless_at {
            // This one copies the index whole, which holds writers: not without room.
            self.room_for_image(e.image_size())?;
        }
        let Some((mut snapshot, mut meta)) = e.pinned_snapshot(unless_at, whole) else {
            return Ok(covered);
        };
        if let Snapshot::Changes { since, .. } = &snapshot {
            if *since != covered {
                // Cannot happen (the journal and the progress move together: a block that
                // could not be written gives its changes back, a failed whole image drops
                // the image, making the next checkpoint whole, and so does a fold that
                // failed but for want of room); if it did, the changes would not chain:
                // write the index whole.
                e.log().error(&format!(
                    "checkpoint: the journal starts at {since}, the image covers {covered}; \
                     writing IMAGE_file whole"
                ));
                // The tail only grows: it is still past `covered`. Never `Ok` without an
                // image (the reclaimer takes `Ok` for one covering its victims).
                (snapshot, meta) = e
                    .pinned_snapshot(covered, true)
                    .ok_or_else(|| Error::corrupt(None, "checkpoint: the log's tail went back"))?;
            }
        }
        let held_ms = started.elapsed().as_millis();
        e.ring().flush_to(meta.covered, true)?;
        let (what, bytes) = match snapshot {
            Snapshot::Whole(index) => {
                // The journal restarted from this image's offset: if it is not written,
                // the next checkpoint cannot chain to the old one and is whole too.
                let bytes = self
                    .write_whole(&mut disk, &index, &meta, latching)
                    .inspect_err(|_| disk.base = None)?;
                (format!("IMAGE_file whole, {} records", index.len()), bytes)
            }
            Snapshot::Changes { since, changes } => {
                self.append_changes(&mut disk, since, changes, &meta)?
            }
        };
        let mut p = self.progress.lock();
        p.covered = meta.covered;
        p.count += 1;
        p.bytes += bytes;
        drop(p);
        e.log().info(&format!(
            "checkpoint: the image covers disk_file up to {} ({what}, {bytes} bytes) in {} ms \
             ({held_ms} ms holding writers)",
            meta.covered,
            started.elapsed().as_millis()
        ));
        Ok(meta.covered)
    }

    /// Appends the changes that lead from the image covering `since` to `meta` to
    /// IMAGE_delta, and folds it into IMAGE_file if it has grown enough. Returns what was
    /// written and its bytes.
    fn append_changes(
        &self,
        disk: &mut OnDisk,
        since: u64,
        changes: Vec<delta::Change>,
        meta: &ImageMeta,
    ) -> Result<(String, u64)> {
        let base = disk.base.expect("changes are journaled only over an image");
        let block = delta::encode(base.id, since, meta, &changes);
        let e = &self.engine;
        let what = match self.append_block(disk, &block) {
            Err(Error::NoSpace) => {
                // The chain on disk stands (a block cut short is trimmed by the next
                // append, or read at open as the chain's torn end); the changes go back to
                // the journal, for the next checkpoint's block.
                e.log()
                    .warn("checkpoint: no space for an IMAGE_delta block");
                e.give_back_changes(since, changes);
                return Err(Error::NoSpace);
            }
            r => r?,
        };
        let chain = disk.delta.len();
        if chain < (base.image_bytes / FOLD_SHARE).max(FOLD_MIN) {
            return Ok((what, block.len() as u64));
        }
        // The new IMAGE_file is written beside the old one, which it replaces only once
        // written; both chain and image are sound meanwhile, so without room for it the
        // fold waits for a later checkpoint (IMAGE_delta grows, and so does the open).
        let put_off = || {
            Ok((
                format!("{what}; fold put off (no space)"),
                block.len() as u64,
            ))
        };
        if self.room_for_image(e.image_size()).is_err() {
            return put_off();
        }
        match self.fold(disk, base, meta) {
            Ok(bytes) => Ok((
                format!("{what}, then IMAGE_file folded ({chain} bytes of IMAGE_delta)"),
                block.len() as u64 + bytes,
            )),
            Err(Error::NoSpace) => {
                // The block is durable: the checkpoint stands on the chain, as before.
                e.log().warn(
                    "checkpoint: no space to fold IMAGE_delta; a later checkpoint tries again",
                );
                put_off()
            }
            Err(err) if !e.latch().is_failed() => {
                // IMAGE_delta does not read back as written: stop relying on it.
                e.log().error(&format!(
                    "checkpoint: folding IMAGE_delta failed ({err}); the next checkpoint \
                     writes IMAGE_file whole"
                ));
                disk.base = None;
                Err(err)
            }
            Err(err) => Err(err),
        }
    }

    /// Appends an encoded block to IMAGE_delta and makes it durable. A failure latches the
    /// store, but `NoSpace`: the chain before the block stands, and the block is trimmed
    /// by the next append (or read as the chain's torn end). Returns what it wrote, for LOG.
    fn append_block(&self, disk: &mut OnDisk, block: &[u8]) -> Result<String> {
        let faults = self.faults.as_deref();
        self.engine
            .latch()
            .guard_but_full("writing IMAGE_delta", || disk.delta.append(block, faults))?;
        let n = (block.len() - delta::DELTA_HEADER_LEN) / delta::CHANGE_BYTES;
        Ok(format!("IMAGE_delta block, {n} changes"))
    }

    /// Writes IMAGE_file from IMAGE_file and IMAGE_delta as read back from disk (so the
    /// live index is not touched), which must reach `meta`. Returns the bytes written.
    fn fold(&self, disk: &mut OnDisk, base: Base, meta: &ImageMeta) -> Result<u64> {
        let bad = |what: String| Error::corrupt(None, what);
        let path = self.image_path();
        let (mut index, mut m, id, _) = image::read(&path, self.engine.disk().reads_direct())?
            .ok_or_else(|| bad("IMAGE_file is gone".into()))?;
        if id != base.id {
            return Err(bad("IMAGE_file is not the one written".into()));
        }
        let chain = delta::load(&path.with_file_name(DELTA_FILE), id, &mut index, &mut m)?;
        if let Some(why) = chain.stopped {
            return Err(bad(format!("IMAGE_delta does not read back: {why}")));
        }
        if m != *meta {
            return Err(bad(format!(
                "IMAGE_delta reads back to {}, not {}",
                m.covered, meta.covered
            )));
        }
        self.write_whole(disk, &index, &m, Latching::Yes)
    }

    /// `NoSpace` unless the file system shows room for an IMAGE_file of `bytes` (and
    /// `FOLD_MIN` more): a whole image is written beside the old one, and a try that meets
    /// a full disk fills it to the brim (other programs then meet ENOSPC), and for a
    /// checkpoint first copies the index while holding writers. Free space unknown: `Ok`.
    fn room_for_image(&self, bytes: u64) -> Result<()> {
        let e = &self.engine;
        let need = bytes.saturating_add(FOLD_MIN);
        match e.segs().available() {
            Ok(free) if free < need => {
                e.log().warn(&format!(
                    "checkpoint: no room for IMAGE_file: {free} bytes free, it needs about \
                     {need}"
                ));
                Err(Error::NoSpace)
            }
            _ => Ok(()),
        }
    }

    /// Replaces IMAGE_file with `index` (atomically) and starts an empty IMAGE_delta; a
    /// failed write latches the store if `latching` says so. Returns the bytes written.
    fn write_whole(
        &self,
        disk: &mut OnDisk,
        index: &Index,
        meta: &ImageMeta,
        latching: Latching,
    ) -> Result<u64> {
        let e = &self.engine;
        e.latch().check()?;
        self.room_for_image(image::size(index))?;
        let write = || {
            image::write(
                &self.image_path(),
                index,
                meta,
                e.opts().get_file_mode(),
                self.faults.as_deref(),
            )
        };
        let (bytes, id) = match latching {
            // A full disk leaves the old image standing (`image::write`): NoSpace, and the
            // store goes on.
            Latching::Yes => e.latch().guard_but_full("writing IMAGE_file", write)?,
            Latching::No => write()?,
        };
        disk.base = Some(Base {
            id,
            image_bytes: bytes,
            chain_len: 0,
        });
        e.segs().set_image_reserve(image_reserve(bytes));
        // Blocks left behind name the old image's id: they would not be applied anyway.
        if let Err(err) = disk.delta.reset() {
            e.log().warn(&format!(
                "could not remove IMAGE_delta ({err}); it is cut later"
            ));
        }
        Ok(bytes)
    }

    /// Close's image, covering the whole log (nothing runs beside it): nothing if the
    /// image on disk already covers it and no change came since; one IMAGE_delta block if
    /// this open has an image and the chain after it stays within 1/CLOSE_SHARE of
    /// IMAGE_file's bytes; else IMAGE_file whole. Returns what it wrote, the bytes, the
    /// records and the offset covered.
    pub fn write_at_close(&self) -> Result<(String, u64, u64, u64)> {
        let mut disk = self.running.lock();
        let e = &self.engine;
        let covered = self.covered();
        let (flushes, flushed, pads) = {
            let g = e.ring().lock();
            (g.flushes(), g.flushed_bytes, g.pad_bytes)
        };
        e.log().info(&format!(
            "flushed {flushes} times since open: {flushed} bytes written, {pads} bytes of padding"
        ));
        let (meta, taken) = e.changes_at_close();
        let records = e.index_figures().0;
        if let (Some(base), Some((since, changes))) = (disk.base, taken) {
            let moved = !changes.is_empty() || meta.covered != since;
            let block = moved.then(|| delta::encode(base.id, since, &meta, &changes));
            let chain = disk.delta.len() + block.as_ref().map_or(0, |b| b.len() as u64);
            if since == covered && chain <= base.image_bytes / CLOSE_SHARE {
                let Some(block) = block else {
                    let what = "nothing (the image covers the log)".to_string();
                    return Ok((what, 0, records, covered));
                };
                let what = self.append_block(&mut disk, &block)?;
                return Ok((what, block.len() as u64, records, meta.covered));
            }
        }
        e.with_index(|idx, g| {
            let meta = e.image_meta(g);
            let bytes = self.write_whole(&mut disk, idx, &meta, Latching::Yes)?;
            Ok(("IMAGE_file whole".into(), bytes, idx.len(), meta.covered))
        })
    }

    fn image_path(&self) -> PathBuf {
        self.engine.dir().join(IMAGE_FILE)
    }

    /// The checkpoint thread: checks the triggers every 100 ms until told to stop.
    pub fn run(&self, signal: &Signal) {
        let opts = self.engine.opts();
        let (bytes, interval) = (opts.get_checkpoint_bytes(), opts.get_checkpoint_interval());
        if bytes == 0 && interval.is_zero() {
            return;
        }
        // After NoSpace, the next try waits (1 s, doubling up to NO_SPACE_PAUSE_MAX): the
        // triggers still hold, and each try would look for room again (found by review:
        // ten tries a second, each a whole image written until the disk was full).
        let mut pause = Duration::ZERO;
        let mut not_before = Instant::now();
        while !signal.wait(Duration::from_millis(100)) {
            if Instant::now() < not_before {
                continue;
            }
            let tail = self.engine.ring().lock().tail;
            let (covered, last) = {
                let p = self.progress.lock();
                (p.covered, p.last)
            };
            let grown = tail.saturating_sub(covered);
            let due = (bytes > 0 && grown >= bytes)
                || (!interval.is_zero() && grown > 0 && last.elapsed() >= interval)
                || self.engine.journal_filling();
            if !due {
                continue;
            }
            let res = self.checkpoint();
            self.progress.lock().last = Instant::now();
            match res {
                Ok(_) => pause = Duration::ZERO,
                Err(Error::NoSpace) => {
                    pause = (pause * 2).clamp(Duration::from_secs(1), NO_SPACE_PAUSE_MAX);
                    // A filling journal that overflows makes the next image whole, which
                    // a full disk holds even less: try again within a second then.
                    if self.engine.journal_filling() {
                        pause = Duration::from_secs(1);
                    }
                    not_before = Instant::now() + pause;
                    self.engine.log().warn(&format!(
                        "checkpoint: no space left; trying again in {} s",
                        pause.as_secs()
                    ));
                }
                Err(e) => {
                    self.engine.log().error(&format!("checkpoint failed: {e}"));
                    if self.engine.latch().is_failed() {
                        return;
                    }
                }
            }
        }
    }
}

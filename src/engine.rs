//! The engine: the state every operation shares, and the only code that changes it.
//!
//! An `Engine` owns the index, the ring (with its lookout's state), the segment map and
//! disk_file. A record and its effects are applied together, in one place: [`Engine::append`]
//! puts the record in the ring, points the index at it, moves live byte counts between
//! segments and marks what it replaced Dead, all under the ring lock. Put, delete and the
//! reclaimer's relocation all go through it; nothing else writes the index after open.
//! Reads ([`Engine::read`]) check what they read with `format::parse_put` / `check_payload`.
//!
//! # Lock order
//!
//! The one statement of it (DESIGN.md repeats it). A thread holding a lock takes only
//! locks after it in this list:
//!
//! 1. `Reclaimer::running` (one reclaim round at a time), then `Checkpointer::running`
//!    (one checkpoint at a time; a round may take a checkpoint while holding its own);
//! 2. the ring's state mutex (`WriteBuffer::lock`): held by `append`, by flushes while
//!    they take or finish a batch, and by snapshots for IMAGE_file;
//! 3. the index `RwLock` (taken inside the ring lock by `append` and the snapshots);
//! 4. leaves, never held while taking another lock: the index's change journal (taken
//!    inside the index lock by `append`, inside the ring lock by the snapshots), the
//!    ring's reader guard, the segment map and counters (`Segments`), the progress
//!    mutexes of the checkpointer and the reclaimer, the workers' signals, the put
//!    throttle, the LOG file, and the key summaries (`Summaries::finishing`, then their
//!    writer state: the one nesting among the leaves).
//!
//! Gets take the index (read), release it, then read the ring (its reader guard) or
//! disk_file; a get never holds two locks.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{MutexGuard, RwLock};

use crate::delta::{Change, Journal};
use crate::error::{Error, Result};
use crate::format::{
    check_payload, padded_len, put_header, Header, Kind, BATCH_VERSION, HEADER_LEN, MAX_KEY_LEN,
    SEG_HEADER,
};
use crate::image::ImageMeta;
use crate::index::{hash_key, Index, KeyHash, Location};
use crate::log::device::{Blocks, Latch};
use crate::log::disk::DiskFile;
use crate::log::ring::{RingState, WriteBuffer};
use crate::log::segments::Segments;
use crate::logfile::LogFile;
use crate::options::{Durability, Options};
use crate::recovery::Parts;

/// When an append still applies (checked under the ring lock, before and after waiting
/// for room).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum When {
    /// Always (a put).
    Always,
    /// While the key is present (a delete).
    Present,
    /// While the index points the key at this record (the reclaimer moving a put).
    At(Location),
    /// While the key is absent (the reclaimer moving a tombstone).
    Absent,
}

/// A record to append: a put (`value` and its `data_sum`) or a tombstone.
pub(crate) struct Append<'a> {
    pub kind: Kind,
    pub key: &'a [u8],
    pub value: &'a [u8],
    /// `format::data_sum(key, value)`, computed by the caller outside the ring lock.
    pub data_sum: u32,
    pub when: When,
}

impl Append<'_> {
    /// The record's header (its sequence number set when it is written).
    pub fn header(&self, batch: bool) -> Header {
        Header {
            kind: self.kind,
            key_len: self.key.len() as u32,
            value_len: self.value.len() as u32,
            seq: 0,
            data_sum: self.data_sum,
            batch,
        }
    }
}

/// Where an append went.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Appended {
    pub offset: u64,
    /// Bytes it takes, padding included.
    pub padded: u64,
}

impl Appended {
    /// The log offset after the record.
    pub fn end(&self) -> u64 {
        self.offset + self.padded
    }
}

/// What a read of one record found.
pub(crate) enum Read {
    /// The value is in the caller's buffer.
    Done,
    /// The key moved (overwritten or deleted) while we read: look it up again.
    Moved,
}

/// What a checkpoint writes (`Engine::pinned_snapshot`).
pub(crate) enum Snapshot {
    /// A copy of the whole index.
    Whole(Index),
    /// The changes since the image that covers `since`.
    Changes { since: u64, changes: Vec<Change> },
}

/// An index entry: (slot, fingerprint, location).
pub(crate) type Entry = (usize, u64, Location);

/// The shared state of an open store. See the module docs.
pub(crate) struct Engine {
    opts: Options,
    dir: PathBuf,
    seed: u64,
    sum_key: u64,
    index: RwLock<Index>,
    /// Every change to the index since the newest image (IMAGE_file and IMAGE_delta).
    journal: parking_lot::Mutex<Journal>,
    ring: WriteBuffer,
    disk: Arc<DiskFile>,
    segs: Arc<Segments>,
    log: Arc<LogFile>,
    latch: Arc<Latch>,
    gets_from_buffer: AtomicU64,
    gets_from_disk: AtomicU64,
    /// Reads that found their record moved or given back meanwhile, and looked again.
    gets_retried: AtomicU64,
    /// Large disk reads in flight, held down while the ring fills (`ReadGate`).
    large_reads: ReadGate,
}

/// Gives the lookout's writes the device first: while more than half the ring waits to be
/// written, at most `GATED_READS` disk reads of `LARGE_READ` bytes or more run at once
/// (the others wait, rechecking every millisecond), so that many large gets cannot starve
/// the flushes that puts wait for.
#[derive(Default)]
struct ReadGate {
    in_flight: parking_lot::Mutex<usize>,
    cv: parking_lot::Condvar,
}

/// Records of at least this many bytes go through the read gate.
const LARGE_READ: usize = 1 << 20;
/// Large reads let through at once while the ring fills.
const GATED_READS: usize = 2;

/// A read let through the gate; leaving it wakes a waiting one.
struct ReadPermit<'a>(Option<&'a ReadGate>);

impl ReadGate {
    fn enter(&self, len: usize, filling: impl Fn() -> bool) -> ReadPermit<'_> {
        if len < LARGE_READ {
            return ReadPermit(None);
        }
        let mut n = self.in_flight.lock();
        while *n >= GATED_READS && filling() {
            self.cv
                .wait_for(&mut n, std::time::Duration::from_millis(1));
        }
        *n += 1;
        ReadPermit(Some(self))
    }
}

impl Drop for ReadPermit<'_> {
    fn drop(&mut self) {
        if let Some(g) = self.0 {
            *g.in_flight.lock() -= 1;
            g.cv.notify_one();
        }
    }
}

/// Checks a key's length.
pub(crate) fn check_key(key: &[u8]) -> Result<()> {
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(Error::InvalidArgument(format!(
            "key length {} is outside 1..={MAX_KEY_LEN}",
            key.len()
        )));
    }
    Ok(())
}

impl Engine {
    /// The engine over what recovery opened and recovered.
    pub fn new(p: Parts) -> Engine {
        let sb = *p.disk.superblock();
        Engine {
            opts: p.opts,
            dir: p.dir,
            seed: sb.hash_seed,
            sum_key: sb.sum_key(),
            index: RwLock::new(p.index),
            journal: parking_lot::Mutex::new(p.journal),
            ring: p.ring,
            disk: p.disk,
            segs: p.segs,
            log: p.log,
            latch: p.latch,
            gets_from_buffer: AtomicU64::new(0),
            gets_from_disk: AtomicU64::new(0),
            gets_retried: AtomicU64::new(0),
            large_reads: ReadGate::default(),
        }
    }

    /// The options the store was opened with.
    pub fn opts(&self) -> &Options {
        &self.opts
    }

    /// The store directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The LOG file.
    pub fn log(&self) -> &Arc<LogFile> {
        &self.log
    }

    /// The failure latch (see `log::device::Latch`).
    pub fn latch(&self) -> &Arc<Latch> {
        &self.latch
    }

    /// The ring write buffer and its lookout's state.
    pub fn ring(&self) -> &WriteBuffer {
        &self.ring
    }

    /// The segment map and per-segment counts.
    pub fn segs(&self) -> &Segments {
        &self.segs
    }

    /// disk_file.
    pub fn disk(&self) -> &DiskFile {
        &self.disk
    }

    /// The key's hash under the store's seed.
    pub fn hash(&self, key: &[u8]) -> KeyHash {
        hash_key(self.seed, key)
    }

    /// Where the index points `kh`.
    pub fn lookup(&self, kh: &KeyHash) -> Option<Location> {
        self.index.read().get(kh)
    }

    /// `lookup` if the index can be read at once: `None` when a writer holds or awaits
    /// its lock (a checkpoint's copy, a growing index).
    pub fn try_lookup(&self, kh: &KeyHash) -> Option<Option<Location>> {
        self.index.try_read().map(|idx| idx.get(kh))
    }

    /// Whether the index still points the entry (slot, fp) at `loc`.
    pub fn still_current(&self, slot: usize, fp: u64, loc: Location) -> bool {
        self.index.read().get_in_slot(slot, fp) == Some(loc)
    }

    /// Whether `key` hashes to the index entry (slot, fp).
    pub fn hashes_to(&self, key: &[u8], slot: usize, fp: u64) -> bool {
        let kh = self.hash(key);
        kh.fp == fp && self.index.read().slot_for(&kh) == slot
    }

    /// Calls `f` with every index entry, a chunk of slots at a time collected under one
    /// read lock of the index (so writers wait only that long; `f` runs without it), until
    /// `f` returns Ok(false) or an error. A key's slot is fixed by its hash, so each key is
    /// seen at most once; one put, moved or deleted meanwhile may be seen in its old or new
    /// place, or not at all.
    pub fn for_each_entry(&self, mut f: impl FnMut(Entry) -> Result<bool>) -> Result<()> {
        const CHUNK: usize = 4096;
        let slots = self.index.read().slot_count();
        let mut entries = Vec::new();
        for start in (0..slots).step_by(CHUNK) {
            entries.clear();
            self.index
                .read()
                .entries(start..(start + CHUNK).min(slots), &mut entries);
            for &entry in &entries {
                if !f(entry)? {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Calls `f` with the location of every record in the index, in pool order: one
    /// linear pass over the node pool, a chunk of 2^18 nodes (about 0.3 ms) per read lock
    /// of the index, with the ids in use taken once at the start (walking the trees
    /// instead jumps around memory: 0.8 s for 10 M records against 10-20 ms). A record
    /// whose entry stays put through the pass is seen once, at its location; one put
    /// during the pass may be missed (its node was free at the start) and one deleted or
    /// moved may be seen at its old location. `f` runs under the read lock.
    pub fn for_each_location(&self, mut f: impl FnMut(Location)) {
        const CHUNK: usize = 1 << 18;
        let (used, len) = {
            let idx = self.index.read();
            (idx.in_use(), idx.pool_len())
        };
        for start in (0..len).step_by(CHUNK) {
            self.index
                .read()
                .locations_of(start..(start + CHUNK).min(len), &used, &mut f);
        }
    }

    /// Records, their bytes, and the index's memory.
    pub fn index_figures(&self) -> (u64, u64, u64) {
        let idx = self.index.read();
        (idx.len(), idx.live_bytes(), idx.memory_bytes())
    }

    /// Gets served from the ring and from disk_file since open, and reads that looked
    /// again.
    pub fn get_counts(&self) -> (u64, u64, u64) {
        (
            self.gets_from_buffer.load(Ordering::Relaxed),
            self.gets_from_disk.load(Ordering::Relaxed),
            self.gets_retried.load(Ordering::Relaxed),
        )
    }

    /// What a checkpoint writes, taken under the ring lock (so no put or delete is
    /// half-applied) with the log offset C it covers pinned: the journal's changes since
    /// the last image if it holds them and `whole` is false, else a copy of the index (and
    /// the journal starts over from C). `None` if the log's tail is `unless_at`.
    pub fn pinned_snapshot(&self, unless_at: u64, whole: bool) -> Option<(Snapshot, ImageMeta)> {
        let mut g = self.ring.lock();
        if g.tail == unless_at {
            return None;
        }
        let covered = g.tail;
        self.ring.pin(&mut g, covered);
        let meta = self.image_meta(&g);
        let mut j = self.journal.lock();
        if !whole {
            if let Some((since, changes)) = j.take(covered) {
                return Some((Snapshot::Changes { since, changes }, meta));
            }
        }
        j.restart(covered);
        drop(j);
        Some((Snapshot::Whole(self.index.read().clone()), meta))
    }

    /// Gives back to the journal the changes of a block that could not be written (see
    /// `Journal::give_back`).
    pub fn give_back_changes(&self, since: u64, changes: Vec<Change>) {
        let records = self.index.read().len();
        self.journal.lock().give_back(since, changes, records);
    }

    /// Bytes of IMAGE_file for the index as it is now (its free nodes left out).
    pub fn image_size(&self) -> u64 {
        crate::image::size(&self.index.read())
    }

    /// Whether the change journal is on (else the next checkpoint copies the index whole).
    pub fn journal_on(&self) -> bool {
        self.journal.lock().is_on()
    }

    /// Whether the change journal is half full (see `Journal::filling`).
    pub fn journal_filling(&self) -> bool {
        let records = self.index.read().len();
        self.journal.lock().filling(records)
    }

    /// What an image of the index as it is now says (the caller holds the ring lock).
    pub fn image_meta(&self, g: &RingState) -> ImageMeta {
        ImageMeta {
            covered: g.tail,
            next_seq: g.next_seq,
            hash_seed: self.seed,
        }
    }

    /// Close's changes: what an image of the index now says, and the journal's changes
    /// since the newest image with the offset they start from, if it is on (nothing runs
    /// beside it then; the journal goes on from the tail).
    pub fn changes_at_close(&self) -> (ImageMeta, Option<(u64, Vec<Change>)>) {
        let g = self.ring.lock();
        let taken = self.journal.lock().take(g.tail);
        (self.image_meta(&g), taken)
    }

    /// Calls `f` with the index and the ring's state (for close's image: nothing runs
    /// beside it then); the journal starts over from the tail.
    pub fn with_index<T>(&self, f: impl FnOnce(&Index, &RingState) -> T) -> T {
        let g = self.ring.lock();
        let idx = self.index.read();
        self.journal.lock().restart(g.tail);
        f(&idx, &g)
    }

    /// Appends one record under the ring lock: see [`Engine::append_locked`].
    pub fn append(&self, a: &Append<'_>) -> Result<Option<Appended>> {
        let kh = self.hash(a.key);
        let mut g = self.ring.lock();
        self.append_locked(&mut g, a, &kh, false)
    }

    /// Appends `a` (whose key hashes to `kh`) to the log if its condition holds, and
    /// applies it: the index points the
    /// key at the new record (a put) or forgets it (a tombstone), live bytes move from the
    /// replaced record's segment to the new one, and the replaced record is marked Dead if
    /// it is not flushed yet. Returns `None` if the condition does not hold (nothing
    /// changed). `reclaimer`: the reclaimer's appends go before waiting puts. Waits while
    /// the ring is full (the ring lock is released meanwhile; the condition is checked
    /// again after).
    pub fn append_locked(
        &self,
        g: &mut MutexGuard<'_, RingState>,
        a: &Append<'_>,
        kh: &KeyHash,
        reclaimer: bool,
    ) -> Result<Option<Appended>> {
        if !self.holds(a.when, kh) {
            return Ok(None);
        }
        let h = a.header(false);
        let padded = h.padded_len();
        self.ring.make_room(g, padded, reclaimer)?;
        if !self.holds(a.when, kh) {
            return Ok(None);
        }
        let offset = self.write_record(g, a, h);
        // The index's write lock only for the update, not for the copy into the ring.
        let end = offset + padded as u64;
        self.apply(g, &mut self.index.write(), kh, offset, h, end)?;
        Ok(Some(Appended {
            offset,
            padded: padded as u64,
        }))
    }

    /// Whether the key's state in the index is what `when` asks for.
    pub fn holds(&self, when: When, kh: &KeyHash) -> bool {
        let found = || self.index.read().get(kh);
        match when {
            When::Always => true,
            When::Present => found().is_some(),
            When::At(loc) => found() == Some(loc),
            When::Absent => found().is_none(),
        }
    }

    /// Applies a record the reclaimer wrote (and made durable) in its relocation segment
    /// at `offset`, with header `h`, if `a.when` still holds: checked under the ring lock
    /// `g`, which orders it against puts and deletes, as `append_locked` does for a record
    /// it appends. Returns whether it did.
    pub fn install_locked(
        &self,
        g: &mut MutexGuard<'_, RingState>,
        a: &Append<'_>,
        kh: &KeyHash,
        offset: u64,
        h: Header,
    ) -> Result<bool> {
        if !self.holds(a.when, kh) {
            return Ok(false);
        }
        let end = offset + h.padded_len() as u64;
        self.apply(g, &mut self.index.write(), kh, offset, h, end)?;
        Ok(true)
    }

    /// Puts the record of `a` (header `h`) at the ring's tail with the next sequence
    /// number. Returns its offset. The caller has made room.
    fn write_record(
        &self,
        g: &mut MutexGuard<'_, RingState>,
        a: &Append<'_>,
        mut h: Header,
    ) -> u64 {
        h.seq = g.next_seq;
        g.next_seq += 1;
        self.ring.append(
            g,
            &[&h.encode(self.sum_key), a.key, a.value],
            h.padded_len(),
        )
    }

    /// Applies the record with header `h` (key hash `kh`) written at `offset`: the index
    /// points the key at it (a put) or forgets the key (a tombstone), live bytes move
    /// from the replaced record's segment to its own, and the replaced record is marked
    /// Dead if it is not flushed yet, superseded until `durable_end` (where this change is
    /// durable: its record's end, or its batch's Commit's). A put the index has no room for
    /// is marked Dead.
    fn apply(
        &self,
        g: &mut MutexGuard<'_, RingState>,
        idx: &mut Index,
        kh: &KeyHash,
        offset: u64,
        h: Header,
        durable_end: u64,
    ) -> Result<()> {
        let old = if h.kind == Kind::Put {
            let loc = Location {
                offset,
                len: h.record_len() as u32,
            };
            let old = match idx.insert(kh, loc) {
                Ok(old) => old,
                Err(e) => {
                    self.ring.mark_dead(g, offset, None);
                    return Err(e);
                }
            };
            self.journal.lock().record(idx, kh, Some(loc));
            self.segs.add_live(offset, h.padded_len() as u64);
            old
        } else {
            let old = idx.remove(kh);
            if old.is_some() {
                self.journal.lock().record(idx, kh, None);
            }
            g.deletes_end = g.deletes_end.max(durable_end);
            self.segs.add_tomb(offset, h.padded_len() as u64);
            old
        };
        if let Some(old) = old {
            self.segs
                .sub_live(old.offset, padded_len(old.len as usize) as u64);
            self.ring.mark_dead(g, old.offset, Some(durable_end));
        }
        Ok(())
    }

    /// Appends the records of an atomic batch (`ops`: puts and deletes, each applied
    /// whatever the key's state) back to back in one segment, each with the batch flag,
    /// then a Commit record, and applies them to the index under one hold of its lock, so
    /// that a get sees all of the batch or none. Returns the offsets of the first record and
    /// of the end of the Commit. The caller has checked keys, values and the total size
    /// (`batch_limit`).
    pub fn append_batch(&self, ops: &[Append<'_>]) -> Result<(u64, u64)> {
        let hashes: Vec<KeyHash> = ops.iter().map(|a| self.hash(a.key)).collect();
        let headers: Vec<Header> = ops.iter().map(|a| a.header(true)).collect();
        let total: usize = headers.iter().map(|h| h.padded_len()).sum::<usize>() + HEADER_LEN;
        let mut g = self.ring.lock();
        // One wait for the whole batch: nothing (no pad, no other record, no segment
        // boundary) comes between its records.
        self.ring.make_room(&mut g, total, false)?;
        let puts = ops.iter().filter(|a| a.kind == Kind::Put).count();
        // One hold of the index's write lock for the whole batch: gets see all or none.
        let mut idx = self.index.write();
        if !idx.has_room_for(puts) {
            return Err(Error::IndexFull);
        }
        let first = g.tail;
        // A batch is durable once its Commit is: a record it supersedes in the ring is
        // superseded until there.
        let commit_end = first + total as u64;
        for ((a, &h), kh) in ops.iter().zip(&headers).zip(&hashes) {
            let offset = self.write_record(&mut g, a, h);
            self.apply(&mut g, &mut idx, kh, offset, h, commit_end)?;
        }
        let commit = Header {
            kind: Kind::Commit,
            key_len: 0,
            value_len: 0,
            seq: g.next_seq,
            data_sum: ops.len() as u32,
            batch: false,
        };
        g.next_seq += 1;
        let at = self
            .ring
            .append(&mut g, &[&commit.encode(self.sum_key)], HEADER_LEN);
        debug_assert_eq!(
            at + HEADER_LEN as u64,
            commit_end,
            "a batch lies back to back"
        );
        Ok((first, at + HEADER_LEN as u64))
    }

    /// The most bytes a batch's records (padding and its Commit included) may take: what
    /// a segment holds after its header (less a header's length, so that `make_room` can
    /// always place it in a fresh segment), and what the ring holds besides a segment
    /// header.
    pub fn batch_limit(&self) -> usize {
        let seg = (self.segs.size() - SEG_HEADER) as usize - HEADER_LEN;
        seg.min(self.ring.capacity() - SEG_HEADER as usize)
    }

    /// Whether the store's format has atomic batches.
    pub fn has_batches(&self) -> bool {
        self.disk.superblock().version >= BATCH_VERSION
    }

    /// Whether the record at `offset` opened a new log segment.
    pub fn opened_segment(&self, offset: u64) -> bool {
        offset % self.segs.size() == SEG_HEADER
    }

    /// In `Durability::Always`, waits until the log up to `end` is durable. If this fails,
    /// the store has failed (`Error::Failed`): the operation is in the index and the ring,
    /// and whether it survives a reopen is unknown until then.
    pub fn commit(&self, end: u64) -> Result<()> {
        if self.opts.durability == Durability::Always {
            self.ring.flush_to(end, true)?;
        }
        Ok(())
    }

    /// The value length of the record at `loc` if it holds `key`.
    pub fn value_len(loc: Location, key: &[u8]) -> Result<usize> {
        (loc.len as usize)
            .checked_sub(HEADER_LEN + key.len())
            .ok_or_else(|| {
                Error::corrupt(
                    Some(loc.offset),
                    "the record is shorter than this key: another key shares its hash, or \
                     the index is damaged",
                )
            })
    }

    /// Reads the record at `loc` into `head` and `rest`, from the ring if it is still
    /// there, else with one read of disk_file. Returns whether the ring had it.
    pub fn read_raw(&self, loc: Location, head: &mut [u8], rest: &mut [u8]) -> Result<bool> {
        if self.ring.read(loc.offset, head, rest) {
            return Ok(true);
        }
        let len = head.len() + rest.len();
        self.ring.ensure_written(loc.offset + len as u64);
        let _permit = self.large_reads.enter(len, || self.ring.is_filling());
        if !self.segs.read_record(loc.offset, head, rest)? {
            // The reclaimer gave the segment back: no record here (the caller's checks fail
            // and it looks the key up again).
            head.fill(0);
        }
        Ok(false)
    }

    /// Reads the value of `key` at `loc` (looked up as `kh`) into `value` (sized to it) and
    /// checks the record: a put of this key, of this length, whose checksum holds.
    pub fn read(&self, kh: &KeyHash, loc: Location, key: &[u8], value: &mut [u8]) -> Result<Read> {
        let mut head_buf = [0u8; HEADER_LEN + MAX_KEY_LEN];
        let head = &mut head_buf[..HEADER_LEN + key.len()];
        let from_ring = self.read_raw(loc, head, value)?;
        self.count_get(from_ring);
        self.check_read(kh, loc, key, head, value)
    }

    /// Reads the record of `key` at `loc` (looked up as `kh`) into memory of its own and
    /// checks it as `read` does: from disk_file with O_DIRECT, the value is read straight
    /// into that memory and never copied. Returns the record (its value after
    /// `HEADER_LEN + key.len()` bytes), or `None` if the key moved: look it up again.
    pub fn read_owned(&self, kh: &KeyHash, loc: Location, key: &[u8]) -> Result<Option<Blocks>> {
        let len = loc.len as usize;
        let h = len - Engine::value_len(loc, key)?;
        let mut rec = None;
        if self.ring.may_hold(loc.offset) {
            let mut b = Blocks::zeroed(len)?;
            let (head, value) = b.as_mut_slice().split_at_mut(h);
            if self.ring.read(loc.offset, head, value) {
                rec = Some((b, true));
            }
        }
        let (rec, from_ring) = match rec {
            Some(r) => r,
            None => {
                self.ring.ensure_written(loc.offset + len as u64);
                let _permit = self.large_reads.enter(len, || self.ring.is_filling());
                // A segment given back meanwhile: zeros, whose checks fail (then the key
                // is found moved).
                let b = match self.segs.read_record_owned(loc.offset, len)? {
                    Some(b) => b,
                    None => Blocks::zeroed(len)?,
                };
                (b, false)
            }
        };
        self.count_get(from_ring);
        let (head, value) = rec.as_slice().split_at(h);
        Ok(match self.check_read(kh, loc, key, head, value)? {
            Read::Done => Some(rec),
            Read::Moved => None,
        })
    }

    fn count_get(&self, from_ring: bool) {
        let counter = if from_ring {
            &self.gets_from_buffer
        } else {
            &self.gets_from_disk
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Checks a record read for `key` at `loc`: `head` (header and key) and `value`.
    fn check_read(
        &self,
        kh: &KeyHash,
        loc: Location,
        key: &[u8],
        head: &[u8],
        value: &[u8],
    ) -> Result<Read> {
        let (hb, stored_key) = head.split_at(HEADER_LEN);
        let mut header = [0u8; HEADER_LEN];
        header.copy_from_slice(hb);
        let problem = put_header(&header, loc.len, self.sum_key).and_then(|h| {
            if stored_key != key {
                return Err("holds another key (a hash collision or a damaged index)".into());
            }
            check_payload(&h, stored_key, value)
        });
        match problem {
            Ok(()) => Ok(Read::Done),
            // The record may have been marked Dead (or its space reused) because the key was
            // overwritten or deleted after our lookup: that is no corruption.
            Err(_) if self.lookup(kh) != Some(loc) => {
                self.gets_retried.fetch_add(1, Ordering::Relaxed);
                Ok(Read::Moved)
            }
            Err(msg) => {
                self.log
                    .error(&format!("record at log offset {}: {msg}", loc.offset));
                Err(Error::corrupt(Some(loc.offset), msg))
            }
        }
    }

    /// The checksum key of record headers.
    pub fn sum_key(&self) -> u64 {
        self.sum_key
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_read_gate_holds_large_reads_down_only_while_the_ring_fills() {
        let gate = ReadGate::default();
        let filling = std::sync::atomic::AtomicBool::new(true);
        let is_filling = || filling.load(Ordering::SeqCst);
        let a = gate.enter(LARGE_READ, is_filling);
        let b = gate.enter(LARGE_READ, is_filling);
        // Small reads never wait.
        drop(gate.enter(LARGE_READ - 1, is_filling));
        std::thread::scope(|s| {
            let third = s.spawn(|| drop(gate.enter(5 << 20, is_filling)));
            std::thread::sleep(std::time::Duration::from_millis(30));
            assert!(
                !third.is_finished(),
                "a third large read ran while the ring filled"
            );
            drop(a);
            third.join().unwrap();
        });
        // Once the ring drains, any number go at once.
        filling.store(false, Ordering::SeqCst);
        let more: Vec<_> = (0..4).map(|_| gate.enter(LARGE_READ, is_filling)).collect();
        assert_eq!(*gate.in_flight.lock(), 5);
        drop(more);
        drop(b);
        assert_eq!(*gate.in_flight.lock(), 0);
    }
}

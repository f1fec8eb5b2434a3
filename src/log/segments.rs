//! Log segments: how the endless log maps onto one disk_file of bounded size.
//!
//! Everything above this module (ring, index, IMAGE_file, recovery) speaks of *logical*
//! offsets, which only grow. Logical segment `L` is the range `[L * size, (L + 1) * size)`;
//! it lives in some physical slot `P` of disk_file, the range
//! `[DATA_START + P * size, DATA_START + (P + 1) * size)`. The first 4 KiB of every segment is
//! its header (magic, `L`, hash seed, checksum), written through the ring like any record,
//! so the map `L -> P` is rebuilt at open by reading one header per slot.
//!
//! A segment's slot is taken when the log's tail enters it: a free slot (lowest first),
//! else a new one at the end of the file (the file grows sparse; a new slot is refused
//! with NoSpace unless the file system has room for it and for the reclaimer's reserve). The reclaimer empties old segments and gives their slots back: unmapped,
//! hole-punched (du shrinks) and fsync'ed, then free for reuse; a few keep their blocks
//! after the head (recycled) and are taken first, since writes over written blocks commit
//! faster. A disk read of a record in an unmapped segment reports it gone, and the reader
//! looks the key up again.
//!
//! Live bytes are counted per logical segment (padded record lengths of the records the
//! index points at), under the ring lock by puts and deletes; everything else a segment
//! holds (overwritten and deleted records, tombstones, padding) is dead.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};

use crate::error::{Error, Result};
use crate::format::{
    Header, Kind, SegHeader, BLOCK, DATA_START, HEADER_LEN, RELOCATION_VERSION, SEG_HEADER,
    SEG_HEAD_LEN,
};
use crate::log::device::Blocks;
use crate::log::disk::DiskFile;
use crate::log::summary::Summaries;
use crate::logfile::LogFile;

/// Where each logical segment lives, and which slots are free.
#[derive(Debug, Default)]
struct Map {
    /// Logical segment -> physical slot.
    by_logical: BTreeMap<u64, u32>,
    /// Slots holding no segment (punched).
    free: BTreeSet<u32>,
    /// Slots holding no segment whose head (`RELEASE_HEAD`) is punched but whose rest
    /// still holds the blocks of the segment given back (`release_all`): taken before
    /// free ones, since writes over blocks written before commit without allocating.
    recycled: Vec<u32>,
    /// When `recycled` last changed (a slot added or taken).
    recycled_changed: Option<Instant>,
    /// Slots without a sound header that still hold a record of this store: kept as they
    /// are (never punched, never reused), for someone to look at.
    kept: BTreeSet<u32>,
    /// Slots in the file.
    slots: u32,
}

/// The segment map and the per-segment live byte counts.
/// The bytes of a slot given back first, and made durable before the rest: its header and
/// the block where its first record starts (`release_all`).
const RELEASE_HEAD: u64 = SEG_HEADER + BLOCK as u64;

/// At most this many slots given back keep their blocks for the next segments
/// (`Map::recycled`), and at most one per `RECYCLE_SHARE` segments mapped (but one); the
/// others are punched. Each is a segment's worth of disk space that `du` counts while it waits.
const RECYCLE_MAX: usize = 8;
const RECYCLE_SHARE: usize = 16;

/// Recycled slots that no segment took for this long are punched (`expire_recycled`):
/// a store that stopped writing gives all its space back.
pub const RECYCLE_WAIT: Duration = Duration::from_secs(2);

/// disk_file is grown this many slots ahead of the segments' need (`grow_ahead`), so that
/// a put entering a new segment finds a slot without growing the file itself.
const GROW_AHEAD: u64 = 2;

/// A slot is recycled only while the file system has this many segments free besides the
/// image reserve: on a nearly full disk every slot given back is punched, as before.
const RECYCLE_ROOM: u64 = 4;

pub struct Segments {
    size: u64,
    seed: u64,
    version: u32,
    sum_key: u64,
    /// Logical segment -> the sequence number of its first record (0: unknown, version 2).
    first_seq: Mutex<BTreeMap<u64, u64>>,
    /// The relocation segments (format 6): the reclaimer's, which may end short.
    relocation: Mutex<BTreeSet<u64>>,
    /// Relocation segments granted and not closed yet: the reclaimer writes them, so
    /// they are no victims.
    relocating: Mutex<BTreeSet<u64>>,
    /// Relocation segments and segments closed early since open -> where their written
    /// part ends (in the segment), until `measure` reads what they hold.
    ends: Mutex<BTreeMap<u64, u64>>,
    /// Closed segments -> the bytes after their header that hold data, as the file system
    /// tells (`measure`): the payloads of records that died in the ring were never written,
    /// nor was the rest of a segment closed early, and holes take no space.
    measured: Mutex<BTreeMap<u64, u64>>,
    /// Held by the one `measure` running.
    measuring: Mutex<()>,
    disk: Arc<DiskFile>,
    log: Arc<LogFile>,
    map: RwLock<Map>,
    /// Logical segment -> bytes of live records in it.
    live: Mutex<BTreeMap<u64, u64>>,
    /// Logical segment -> bytes of the tombstones in it (padded), exact for segments from
    /// `tombs_known_from` on (recovery replayed them whole, or they were written since);
    /// older ones may hold tombstones nobody counted.
    tombs: Mutex<BTreeMap<u64, u64>>,
    tombs_known_from: AtomicU64,
    /// Slots given back since open.
    freed: AtomicU64,
    /// Segments opened since open in a recycled slot (`Map::recycled`).
    reused: AtomicU64,
    /// The mapped segments opened in a recycled slot: a Pad that closes one early punches
    /// the rest of its slot (`closed_at`), which would otherwise hold stale blocks.
    in_recycled: Mutex<BTreeSet<u64>>,
    /// Bytes puts leave free for the store's own index images beside the reclaimer's
    /// segment (`set_image_reserve`).
    image_reserve: AtomicU64,
    /// The key summary of each segment (deleted with it).
    summaries: Summaries,
}

/// Whose segment `Segments::open_segment` opens, which says how much room it leaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Room {
    /// The log's next segment, for puts: leaves a segment and the image reserve free
    /// besides the log's bytes not yet written (`unwritten`, in segments opened before,
    /// which will take space the file system still counts as free).
    Puts { unwritten: u64 },
    /// A relocation segment (or the log's, for the reclaimer's own appends): may take the
    /// last segment's worth.
    Reclaimer,
}

/// A logical segment as the reclaimer sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentUse {
    pub logical: u64,
    pub live: u64,
    /// Bytes of the tombstones counted in it since open (padded).
    pub tombs: u64,
    /// Bytes after its header that hold data: once closed and flushed, what the file
    /// system says (`measure`: the payloads of records that died in the ring and the rest
    /// of a segment closed early are holes, which take no space); before that, up to where
    /// a relocation segment or a segment closed early was written, or the whole segment.
    pub written: u64,
}

/// Whether the slot at `at` may hold data after its header block (holes are skipped).
fn has_data(disk: &DiskFile, at: u64, size: u64) -> Result<bool> {
    Ok(disk
        .next_data(at + SEG_HEADER)?
        .is_some_and(|d| d < at + size))
}

impl Segments {
    /// Reads every slot's header. Slots without a sound header are free.
    pub fn load(disk: Arc<DiskFile>, log: Arc<LogFile>, summaries: Summaries) -> Result<Self> {
        let sb = *disk.superblock();
        let (seed, size, version) = (sb.hash_seed, sb.segment_size, sb.version);
        let len = disk.len()?;
        let mut first_seq = BTreeMap::new();
        let mut relocation = BTreeSet::new();
        let slots = len.saturating_sub(DATA_START).div_ceil(size) as u32;
        let mut map = Map {
            slots,
            ..Map::default()
        };
        let mut head = [0u8; SEG_HEAD_LEN];
        for p in 0..slots {
            let at = DATA_START + p as u64 * size;
            head.fill(0);
            let found = if disk.read_head(at, &mut head)? {
                SegHeader::decode(&head, seed, version)
            } else {
                None
            };
            match found {
                Some(SegHeader {
                    logical: l,
                    first_seq: seq,
                    relocation: reloc,
                }) => {
                    if let Some(other) = map.by_logical.insert(l, p) {
                        return Err(Error::corrupt(
                            Some(at),
                            format!("disk_file: slots {other} and {p} both hold log segment {l}"),
                        ));
                    }
                    first_seq.insert(l, seq);
                    if reloc {
                        relocation.insert(l);
                    }
                }
                // Zeros (never written, or punched) are a free slot, and so is a header
                // that does not check over a slot holding nothing else. A damaged header
                // over data: keep the slot as it is.
                None if head.iter().all(|&b| b == 0) || !has_data(&disk, at, size)? => {
                    map.free.insert(p);
                }
                None => {
                    log.error(&format!(
                        "disk_file: slot {p} (offset {at}) has a damaged segment header; its \
                         records are not replayed, and the slot is kept untouched and unused"
                    ));
                    map.kept.insert(p);
                }
            }
        }
        Ok(Segments {
            size,
            seed,
            version,
            sum_key: sb.sum_key(),
            first_seq: Mutex::new(first_seq),
            relocation: Mutex::new(relocation),
            relocating: Mutex::new(BTreeSet::new()),
            ends: Mutex::new(BTreeMap::new()),
            measured: Mutex::new(BTreeMap::new()),
            measuring: Mutex::new(()),
            disk,
            log,
            map: RwLock::new(map),
            live: Mutex::new(BTreeMap::new()),
            tombs: Mutex::new(BTreeMap::new()),
            tombs_known_from: AtomicU64::new(u64::MAX),
            freed: AtomicU64::new(0),
            reused: AtomicU64::new(0),
            in_recycled: Mutex::new(BTreeSet::new()),
            image_reserve: AtomicU64::new(0),
            summaries,
        })
    }

    /// The key summaries.
    pub fn summaries(&self) -> &Summaries {
        &self.summaries
    }

    /// The sequence number of segment `l`'s first record, if its header says (version 3).
    pub fn first_seq(&self, l: u64) -> Option<u64> {
        self.first_seq.lock().get(&l).copied().filter(|&s| s > 0)
    }

    /// Whether logical segment `l` is a relocation segment (the reclaimer's: it may end
    /// short of its size).
    pub fn is_relocation(&self, l: u64) -> bool {
        self.relocation.lock().contains(&l)
    }

    /// Whether `l` is a relocation segment the reclaimer has not closed yet (no victim).
    pub fn is_relocating(&self, l: u64) -> bool {
        self.relocating.lock().contains(&l)
    }

    /// The reclaimer closed relocation segment `l`.
    pub fn relocated(&self, l: u64) {
        self.relocating.lock().remove(&l);
    }

    /// Segment `l` holds data up to `pos` (in the segment) and none after: a relocation
    /// segment as the reclaimer writes it, or a segment closed early (its Pad's block
    /// included). Counts until `measure` asks the file system.
    pub fn written_to(&self, l: u64, pos: u64) {
        self.ends.lock().insert(l, pos);
    }

    /// A Pad written at `pos - BLOCK` closed segment `l` early (`pos`: the end of the
    /// Pad's block): its payload is a hole. In a recycled slot the rest still held the
    /// blocks of the segment given back, so they are punched first: `du` and `measure`
    /// then count only what `l` wrote, as for a segment in a punched slot. Then as
    /// `written_to`.
    pub fn closed_at(&self, l: u64, pos: u64) {
        // Only `du` and the accounting depend on it: the Pad covers the rest.
        self.punch_old_rest(l, pos, "closed early");
        self.written_to(l, pos);
    }

    /// If segment `l` is in a recycled slot, punches the slot from `from` (a block
    /// boundary inside the segment) to its end, which holds the old segment's blocks; a
    /// failure is logged and latches the store, as every failed punch does (the
    /// device's `Checked` layer); the caller goes on.
    fn punch_old_rest(&self, l: u64, from: u64, when: &str) {
        if from >= self.size || !self.is_recycled(l) {
            return;
        }
        if let Some(at) = self.physical(l * self.size) {
            if let Err(e) = self.disk.punch(at + from, self.size - from) {
                self.log.warn(&format!(
                    "punching the rest of log segment {l}, {when}: {e}"
                ));
            }
        }
    }

    /// Whether segment `l` was opened in a recycled slot: blocks after what it wrote
    /// still hold a segment given back.
    pub fn is_recycled(&self, l: u64) -> bool {
        self.in_recycled.lock().contains(&l)
    }

    /// Whether this store's format has relocation segments (6 and later; older stores
    /// keep their format, and the reclaimer appends its copies at the log's tail).
    pub fn has_relocation(&self) -> bool {
        self.version >= RELOCATION_VERSION
    }

    /// Bytes per segment.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The logical segment holding logical offset `off`.
    pub fn of(&self, off: u64) -> u64 {
        off / self.size
    }

    /// The mapped logical segments, oldest first, with their slots' file offsets.
    pub fn mapped(&self) -> Vec<(u64, u64)> {
        let m = self.map.read();
        m.by_logical
            .iter()
            .map(|(&l, &p)| (l, self.slot_offset(p)))
            .collect()
    }

    fn slot_offset(&self, p: u32) -> u64 {
        DATA_START + p as u64 * self.size
    }

    /// Slots in disk_file, and how many of them are free (recycled ones included).
    pub fn slot_counts(&self) -> (u64, u64) {
        let m = self.map.read();
        (m.slots as u64, (m.free.len() + m.recycled.len()) as u64)
    }

    /// Segments given back since open.
    pub fn freed(&self) -> u64 {
        self.freed.load(Ordering::Relaxed)
    }

    /// Segments opened since open in a slot given back with its blocks kept (recycled),
    /// and the recycled slots waiting now.
    pub fn reused(&self) -> (u64, u64) {
        let waiting = self.map.read().recycled.len() as u64;
        (self.reused.load(Ordering::Relaxed), waiting)
    }

    /// The file offset of logical offset `off`, if its segment is mapped.
    pub fn physical(&self, off: u64) -> Option<u64> {
        let m = self.map.read();
        m.by_logical
            .get(&self.of(off))
            .map(|&p| self.slot_offset(p) + off % self.size)
    }

    /// Reads the record at logical offset `off` (see `DiskFile::read_record`). Returns false,
    /// reading nothing, if its segment is no longer mapped (the reclaimer gave it back).
    ///
    /// The map's lock is held only to find the slot, not across the read, so a put that
    /// opens a segment (the map's write lock) never waits for a slow read. The slot may
    /// therefore be given back, punched or even reused while the read runs: the caller's
    /// checks (the header's keyed checksum, the key, the payload's checksum) then fail, and
    /// since a segment is given back only after the index points away from it, the caller
    /// finds its key moved and looks it up again. (Should the reused slot hold, at that
    /// very place, a later put of the same key and length, that later value is returned:
    /// a value put during the call.)
    pub fn read_record(&self, off: u64, head: &mut [u8], value: &mut [u8]) -> Result<bool> {
        let Some(at) = self.physical(off) else {
            return Ok(false);
        };
        self.disk.read_record(at, head, value)?;
        Ok(true)
    }

    /// `read_record` into memory of the record's own (`DiskFile::read_record_owned`);
    /// `None` if the segment is no longer mapped.
    pub fn read_record_owned(&self, off: u64, len: usize) -> Result<Option<Blocks>> {
        let Some(at) = self.physical(off) else {
            return Ok(None);
        };
        self.disk.read_record_owned(at, len).map(Some)
    }

    /// Writes `slices` at logical offset `off`; the range lies inside one mapped segment.
    pub fn write_at(&self, off: u64, slices: &[&[u8]]) -> Result<()> {
        let len: usize = slices.iter().map(|s| s.len()).sum();
        debug_assert!(off % self.size + len as u64 <= self.size);
        let at = self.physical(off).ok_or_else(|| {
            Error::corrupt(
                Some(off),
                format!("write to unmapped log segment {}", self.of(off)),
            )
        })?;
        self.disk.write_at(at, slices)
    }

    /// Gives logical segment `l` a slot and returns its header block, to be appended to the
    /// log at `l * size`; `first_seq` is the sequence number its first record will get.
    /// `relocation`: a relocation segment (format 6 only). Takes a recycled slot, else a
    /// free one, else grows
    /// disk_file by one segment. Either way the segment's writes will take up to `size`
    /// bytes of the file system (a free slot was punched), so it is refused (NoSpace)
    /// unless they stay free, and for `Room::Puts` also one more segment (so that the
    /// reclaimer can still move records when the disk is nearly full), the image
    /// reserve (so that a checkpoint can usually still write IMAGE_file whole) and the
    /// log's bytes not yet written. Before, only a
    /// slot at the file's end was checked, and only for the reclaimer's segment: a disk
    /// filled by anything else, or by IMAGE_file itself, failed the store at its next
    /// write (ENOSPC latches) where a put could have got NoSpace.
    pub fn open_segment(
        &self,
        l: u64,
        room: Room,
        first_seq: u64,
        relocation: bool,
    ) -> Result<Vec<u8>> {
        debug_assert!(!relocation || self.has_relocation());
        let header = SegHeader {
            logical: l,
            first_seq,
            relocation,
        }
        .encode(self.seed, self.version);
        let need = match room {
            Room::Puts { unwritten } => self
                .size
                .saturating_mul(2)
                .saturating_add(self.image_reserve.load(Ordering::Relaxed))
                .saturating_add(unwritten),
            Room::Reclaimer => self.size,
        };
        // Asked before the map's lock is taken: gets and the lookout look segments up
        // under it, and statvfs may be slow on some file systems.
        let mut avail = self.disk.available()?;
        if avail < need && self.unrecycle_or_log() {
            // Recycled slots hold blocks a punch gives back: count them again.
            avail = self.disk.available()?;
        }
        let mut m = self.map.write();
        // Recovery may have ended exactly where this segment's header was already written.
        if !m.by_logical.contains_key(&l) {
            if avail < need {
                return Err(Error::NoSpace);
            }
            let p = if let Some(p) = m.recycled.pop() {
                m.recycled_changed = Some(Instant::now());
                self.reused.fetch_add(1, Ordering::Relaxed);
                self.in_recycled.lock().insert(l);
                p
            } else if let Some(p) = m.free.pop_first() {
                p
            } else {
                let p = m.slots;
                self.disk.allocate(self.slot_offset(p), self.size)?;
                m.slots += 1;
                p
            };
            m.by_logical.insert(l, p);
        }
        // Only once it has a slot: a refused segment leaves no trace.
        self.first_seq.lock().insert(l, first_seq);
        if relocation {
            self.relocation.lock().insert(l);
            self.relocating.lock().insert(l);
        } else {
            self.relocation.lock().remove(&l);
        }
        Ok(header)
    }

    /// Bytes the file system can still give (statvfs, or the tests' figure).
    pub fn available(&self) -> Result<u64> {
        self.disk.available()
    }

    /// Bytes puts leave free for the index's images (see `open_segment`): the checkpointer
    /// sets it after each IMAGE_file it writes or loads.
    pub fn set_image_reserve(&self, bytes: u64) {
        self.image_reserve.store(bytes, Ordering::Relaxed);
    }

    /// Unmaps logical segment `l` and punches its slot whole (none of its blocks is kept
    /// for a next segment: at open, they hold the torn writes of the run before).
    pub fn release(&self, l: u64) -> Result<()> {
        self.release_slots(&[l], false)
    }

    /// Unmaps logical segments `ls` and punches their slots (made durable before a slot can
    /// be reused, so no stale header survives a crash), then frees the slots. Up to
    /// `RECYCLE_MAX` slots waiting keep their blocks after the head (see `Map::recycled`).
    ///
    /// In two steps. First, in the order given (oldest first: a tombstone dropped from a
    /// later one may hide a put in an earlier one), each slot's first two blocks (its
    /// header, and where its first record starts) are punched and made durable: from then
    /// on the slot reads as free, whatever a crash leaves of the rest. Then the rests, with
    /// one fsync. A file system may punch a large range in several journal transactions,
    /// from its end back: with one punch of the whole slot, a crash midway left a sound
    /// header over a segment whose end was gone, which every open reported as damage and
    /// the reclaimer kept, and which a full rebuild replayed (a put whose tombstone had
    /// been punched came back). Found by review.
    pub fn release_all(&self, ls: &[u64]) -> Result<()> {
        self.release_slots(ls, true)
    }

    /// `release_all`; `recycle`: whether some slots may keep their blocks.
    fn release_slots(&self, ls: &[u64], recycle: bool) -> Result<()> {
        let mut slots = Vec::with_capacity(ls.len());
        for &l in ls {
            let Some(p) = self.map.write().by_logical.remove(&l) else {
                continue;
            };
            self.live.lock().remove(&l);
            self.tombs.lock().remove(&l);
            self.first_seq.lock().remove(&l);
            self.relocation.lock().remove(&l);
            self.relocating.lock().remove(&l);
            self.ends.lock().remove(&l);
            self.measured.lock().remove(&l);
            self.summaries.remove(l);
            self.in_recycled.lock().remove(&l);
            self.disk.punch(self.slot_offset(p), RELEASE_HEAD)?;
            self.disk.sync_all()?;
            slots.push(p);
        }
        if slots.is_empty() {
            return Ok(());
        }
        let n = slots.len() as u64;
        // Without a figure from statvfs, punch them all (an error here would leave the
        // slots, heads punched, in no list until the next open).
        let keep = match recycle {
            true => self.recycle_room().unwrap_or(0).min(slots.len()),
            false => 0,
        };
        let kept: Vec<u32> = slots.drain(..keep).collect();
        self.punch_rests(&slots)?;
        let mut m = self.map.write();
        m.free.extend(slots);
        if !kept.is_empty() {
            m.recycled.extend(kept);
            m.recycled_changed = Some(Instant::now());
        }
        self.freed.fetch_add(n, Ordering::Relaxed);
        Ok(())
    }

    /// How many more slots given back may keep their blocks now: none for a format
    /// without first sequence numbers in segment headers (version 2: recovery could not
    /// tell the old blocks' records from the new segment's), nor while the file system
    /// has less than `RECYCLE_ROOM` segments free beyond the image reserve.
    fn recycle_room(&self) -> Result<usize> {
        let (waiting, mapped) = {
            let m = self.map.read();
            (m.recycled.len(), m.by_logical.len())
        };
        let cap = RECYCLE_MAX.min((mapped / RECYCLE_SHARE).max(1));
        if self.version < 3 || waiting >= cap {
            return Ok(0);
        }
        let room = self
            .size
            .saturating_mul(RECYCLE_ROOM)
            .saturating_add(self.image_reserve.load(Ordering::Relaxed));
        if self.disk.available()? < room {
            return Ok(0);
        }
        Ok(cap - waiting)
    }

    /// Punches the rests of slots whose heads are punched (made durable with one fsync).
    fn punch_rests(&self, slots: &[u32]) -> Result<()> {
        if slots.is_empty() {
            return Ok(());
        }
        for &p in slots {
            self.disk
                .punch(self.slot_offset(p) + RELEASE_HEAD, self.size - RELEASE_HEAD)?;
        }
        self.disk.sync_all()
    }

    /// Punches every recycled slot's blocks if none was added or taken for `wait`
    /// (the background reclaimer asks every 100 ms); a failure is logged.
    pub fn expire_recycled(&self, wait: Duration) {
        let stale = {
            let m = self.map.read();
            !m.recycled.is_empty() && m.recycled_changed.is_none_or(|t| t.elapsed() >= wait)
        };
        if stale {
            self.unrecycle_or_log();
        }
    }

    /// Grows disk_file (sparse) so that it holds `GROW_AHEAD` slots past the ones in use,
    /// free and recycled ones counted (the background reclaimer asks every 100 ms and when
    /// a put enters a new segment). Without it a put opening a segment at the file's end
    /// grew the file itself, holding the ring's lock: an ftruncate that waits for the
    /// lookout's O_DIRECT write in flight (2.5-3 ms each in a fill, traced). Slots past
    /// `Map::slots` read as zeros: the next open counts them as free.
    pub fn grow_ahead(&self) -> Result<()> {
        let (slots, spare) = {
            let m = self.map.read();
            (m.slots, (m.free.len() + m.recycled.len()) as u64)
        };
        let want = GROW_AHEAD.saturating_sub(spare);
        if want == 0 {
            return Ok(());
        }
        // Without the map's lock: a segment opened meanwhile grows the file as far as it
        // needs, and `allocate` never shortens it.
        self.disk
            .allocate(self.slot_offset(slots), want * self.size)
    }

    /// `unrecycle`, a failure logged (the store is latched by then): whether any were
    /// punched.
    fn unrecycle_or_log(&self) -> bool {
        self.unrecycle().unwrap_or_else(|e| {
            self.log
                .warn(&format!("punching recycled segment slots: {e}"));
            false
        })
    }

    /// At close, with the log written out to `end`: punches every recycled slot, and the
    /// rest of `end`'s segment after its block when that segment is in a recycled slot.
    /// The next open's scan reads on from `end` for records written later; over the old
    /// segment's blocks it read up to a whole segment, where holes are skipped. Failures
    /// are logged, and latch the store as every failed punch does (the next open
    /// punches both anyway).
    pub fn punch_at_close(&self, end: u64) {
        self.unrecycle_or_log();
        let pos = end % self.size;
        if pos != 0 {
            self.punch_old_rest(self.of(end), pos.next_multiple_of(BLOCK as u64), "at close");
        }
    }

    /// Punches every recycled slot's blocks and makes it a plain free slot: a segment
    /// about to be refused for room gets that room back, and a compaction gives back all
    /// it can. Whether there were any.
    pub fn unrecycle(&self) -> Result<bool> {
        let slots = {
            let mut m = self.map.write();
            m.recycled_changed = Some(Instant::now());
            std::mem::take(&mut m.recycled)
        };
        if slots.is_empty() {
            return Ok(false);
        }
        let res = self.punch_rests(&slots);
        // Free either way: a slot whose punch failed still has its head punched, and
        // `cut_after` punches free slots at the next open.
        self.map.write().free.extend(slots);
        res.map(|()| true)
    }

    /// Recovery: makes the log end at logical offset `end`, the end of the last valid
    /// record. Punches the rest of `end`'s segment (from the next block on: the caller pads
    /// the partial block) and gives back every later segment (recovery found no valid
    /// record in them), so nothing past the end can be replayed after a later crash. Also
    /// punches every free slot (a torn write may have left bytes in one), except a slot
    /// that still holds a sound record of this store after its unreadable header: that one
    /// is kept, unused, and reported.
    pub fn cut_after(&self, end: u64) -> Result<()> {
        // At a segment boundary, the segment starting there holds nothing valid either.
        let first_gone = if end % self.size == 0 {
            self.of(end)
        } else {
            self.of(end) + 1
        };
        let later: Vec<u64> = {
            let m = self.map.read();
            m.by_logical.range(first_gone..).map(|(&l, _)| l).collect()
        };
        for l in later {
            self.log.warn(&format!(
                "disk_file: giving back log segment {l}: it holds no valid record and lies \
                 after the end of the log"
            ));
            self.release(l)?;
        }
        // A summary of the last segment that claims records past the end lost them.
        let (l, pos) = (self.of(end), end % self.size);
        let first_seq = self.first_seq(l).unwrap_or(0);
        if pos != 0
            && self
                .summaries
                .header(l, first_seq)
                .is_some_and(|h| h.end > pos)
        {
            self.summaries.remove(l);
        }
        if end % self.size != 0 {
            if let Some(at) = self.physical(end) {
                let from = end.next_multiple_of(BLOCK as u64) - end;
                let rest = self.size - end % self.size;
                if rest > from {
                    self.disk.punch(at + from, rest - from)?;
                }
            }
        }
        let free: Vec<u32> = self.map.read().free.iter().copied().collect();
        for p in free {
            let at = self.slot_offset(p);
            if self.holds_a_record(at)? {
                self.log.error(&format!(
                    "disk_file: slot {p} (offset {at}) has no sound segment header but holds \
                     records of this store; keeping it untouched and unused"
                ));
                let mut m = self.map.write();
                m.free.remove(&p);
                m.kept.insert(p);
                continue;
            }
            self.disk.punch(at, self.size)?;
        }
        self.disk.sync_all()
    }

    /// Whether the slot at file offset `at` holds a sound record header where its first
    /// record would start.
    fn holds_a_record(&self, at: u64) -> Result<bool> {
        let mut hb = [0u8; HEADER_LEN];
        if !self.disk.read_head(at + SEG_HEADER, &mut hb)? {
            return Ok(false);
        }
        Ok(Header::decode(&hb, self.sum_key).is_ok())
    }

    /// Slots kept because they hold records without a sound segment header.
    pub fn kept_slots(&self) -> u64 {
        self.map.read().kept.len() as u64
    }

    /// Counts `bytes` of live records more in the segment of `off`.
    pub fn add_live(&self, off: u64, bytes: u64) {
        *self.live.lock().entry(self.of(off)).or_insert(0) += bytes;
    }

    /// Counts `bytes` of live records less in the segment of `off`.
    pub fn sub_live(&self, off: u64, bytes: u64) {
        let mut live = self.live.lock();
        if let Some(v) = live.get_mut(&self.of(off)) {
            *v = v.saturating_sub(bytes);
        }
    }

    /// Counts a tombstone of `bytes` (padded) written at `off`.
    pub fn add_tomb(&self, off: u64, bytes: u64) {
        *self.tombs.lock().entry(self.of(off)).or_insert(0) += bytes;
    }

    /// Recovery: forgets the tombstones counted by a replay that was thrown away.
    pub fn reset_tombs(&self) {
        self.tombs.lock().clear();
    }

    /// Recovery: tombstone counts are exact from logical segment `l` on.
    pub fn set_tombs_known_from(&self, l: u64) {
        self.tombs_known_from.store(l, Ordering::Relaxed);
    }

    /// Whether segment `l` is known to hold no tombstone (so the reclaimer can find its
    /// live records through the index instead of reading all of it): none counted in it
    /// since open, and either it was written or replayed whole since open, or it is full
    /// and its key summary (sound: checksum, seed, segment and first sequence number)
    /// lists none. The summary is read from disk on every call.
    pub fn no_tombs(&self, l: u64) -> bool {
        if self.tombs.lock().get(&l).copied().unwrap_or(0) > 0 {
            return false;
        }
        if l >= self.tombs_known_from.load(Ordering::Relaxed) {
            return true;
        }
        let Some(first_seq) = self.first_seq.lock().get(&l).copied() else {
            return false;
        };
        self.summaries.load(l, first_seq).is_some_and(|s| {
            s.header.end == self.size && s.entries.iter().all(|e| e.kind != Kind::Delete)
        })
    }

    /// Replaces the live counts (open, from the index).
    pub fn set_live(&self, counts: BTreeMap<u64, u64>) {
        *self.live.lock() = counts;
    }

    /// Every mapped segment with its live bytes, oldest first.
    pub fn usage(&self) -> Vec<SegmentUse> {
        let m = self.map.read();
        let live = self.live.lock();
        let tombs = self.tombs.lock();
        let ends = self.ends.lock();
        let measured = self.measured.lock();
        m.by_logical
            .keys()
            .map(|&l| SegmentUse {
                logical: l,
                live: live.get(&l).copied().unwrap_or(0),
                tombs: tombs.get(&l).copied().unwrap_or(0),
                written: measured
                    .get(&l)
                    .copied()
                    .unwrap_or_else(|| ends.get(&l).copied().unwrap_or(self.size) - SEG_HEADER),
            })
            .collect()
    }

    /// Asks the file system what each closed segment not yet measured holds (`measured`):
    /// the segments wholly below `below` (the log's flushed offset) but relocation segments
    /// being written. Once closed, a segment's blocks do not change until it is given back.
    /// The first call after open measures every segment (`SEEK_DATA`/`SEEK_HOLE`, a few
    /// calls per hole); later ones the few closed since. No lock is held across the I/O.
    /// A segment the file system cannot measure stays as it was counted. One caller at a
    /// time: another one meanwhile goes on with what is measured so far.
    pub fn measure(&self, below: u64) {
        let Some(_one) = self.measuring.try_lock() else {
            return;
        };
        let todo: Vec<(u64, u64)> = {
            let m = self.map.read();
            let measured = self.measured.lock();
            let relocating = self.relocating.lock();
            m.by_logical
                .iter()
                .filter(|&(&l, _)| {
                    (l + 1) * self.size <= below
                        && !measured.contains_key(&l)
                        && !relocating.contains(&l)
                })
                .map(|(&l, &p)| (l, self.slot_offset(p)))
                .collect()
        };
        for (l, at) in todo {
            let Ok(data) = self.disk.data_in(at + SEG_HEADER, self.size - SEG_HEADER) else {
                continue;
            };
            // Given back meanwhile: its slot may hold another segment by now.
            let m = self.map.read();
            if m.by_logical.contains_key(&l) {
                self.measured.lock().insert(l, data);
            }
        }
    }
}

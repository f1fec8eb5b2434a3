//! The ring write buffer and its lookout thread (the seed's buffer module).
//!
//! The ring mirrors the tail of disk_file: the byte at disk offset `o` sits at ring
//! position `o % capacity`. A put copies its whole record (header, key, value, padding)
//! to the ring at the log's tail and returns; the lookout thread writes what is not yet
//! on disk as one large sequential `pwritev` (two slices when the range wraps).
//!
//! Every byte of the ring is in one of the seed's three states, told by three counters
//! (all disk offsets, `flushed <= claimed <= tail`):
//! - `[claimed, tail)`: p_not_flush. Only puts and deletes touch it (under the state lock);
//!   a record deleted or overwritten here is rewritten as `Dead` and its payload is never
//!   written to disk.
//! - `[flushed, claimed)`: being written by the lookout; nobody changes it.
//! - `[floor, flushed)`: p_flushed: on disk and still readable from the ring.
//! - below `floor`: p_unavail: reused by later records; read from disk.
//!
//! A put that finds fewer than its record's bytes free (`capacity - (tail - flushed)`)
//! wakes the lookout and waits: back-pressure, never failure, unless the store has failed.
//!
//! A failed write or fdatasync latches the store as failed (`device::Latch`): `flushed`
//! and `synced` never move again, every waiter and every later put, delete or sync gets
//! `Error::Failed`, and the lookout writes nothing more. So are the lookout's death and
//! its exit before `close`. Waits are bounded (100 ms at a time) so that no waiter
//! misses the latch. Readers copy from the ring
//! under a shared lock; a put takes it exclusively only while it copies over p_flushed
//! bytes, and moves `floor` first.
//!
//! In `Always`, while group commits are small, the lookout also writes zeros ahead of the
//! log in the tail's segment (`zero_ahead`), so that the commits' fdatasyncs overwrite
//! allocated blocks; nothing below `claimed` is ever zeroed.
//!
//! On the ring's first pass after open, a helper of the lookout (`kvs-touch`) faults the
//! ring's memory in ahead of the tail, so that puts do not take those faults holding the
//! state lock (`touch_ahead`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Condvar, Mutex, MutexGuard, RwLock};

use crate::error::{Error, Result};
use crate::format::{Header, Kind, BLOCK, HEADER_LEN, RECORD_ALIGN, SEG_HEADER};
use crate::log::device::{Blocks, Latch};
use crate::log::disk::DiskFile;
use crate::log::pages;
use crate::log::segments::{Room, Segments};
use crate::logfile::LogFile;
use crate::options::{Durability, Options};

/// The counters of the ring, guarded by one mutex. See the module docs.
#[derive(Debug)]
pub struct RingState {
    /// The log's end: where the next record goes.
    pub tail: u64,
    /// The lookout has taken `[flushed, claimed)` to write.
    pub claimed: u64,
    /// Everything below is written to disk_file.
    pub flushed: u64,
    /// Everything below is written and fdatasync'ed.
    pub synced: u64,
    /// The next record's sequence number.
    pub next_seq: u64,
    /// Someone waits for everything below this to be flushed.
    flush_wanted: u64,
    /// Someone waits for everything below this to be flushed and fdatasync'ed.
    durable_wanted: u64,
    /// fdatasyncs running: a caller of `flush_to` (the group commit's leader) or the
    /// lookout after a flush it has published. A caller leads only while none runs.
    syncing: u32,
    shutdown: bool,
    /// The lookout thread has ended (after shutdown, or having died).
    lookout_gone: bool,
    /// A checkpoint's image covers the log below this: no record below it may become
    /// Dead, since the image may point at it and the record that superseded it may be lost.
    pinned: u64,
    /// Payload ranges of Dead records not yet flushed: left out of the write (holes).
    dead: Vec<(u64, u64)>,
    /// Records marked Dead in the ring (by offset), each with where the change that
    /// superseded it ends: until that end is durable, the Dead record's old value is the
    /// durable one, so a durable waiter whose range holds it waits for that end too
    /// (`durable_target`). Dropped once `synced` passes the end.
    kills: BTreeMap<u64, u64>,
    /// Where the newest tombstone applied so far ends (its record, or its batch's
    /// Commit): a copy of an older tombstone, made because its key is absent now, must not
    /// become durable before the deletes that may have made it so (`relocate.rs`).
    pub deletes_end: u64,
    /// Bytes those flushes wrote (holes excluded, padding included).
    pub flushed_bytes: u64,
    /// Bytes of Pad records written to reach a block boundary.
    pub pad_bytes: u64,
    /// fdatasync calls made through the ring (by the lookout and by group commit leaders).
    pub syncs: u64,
    /// Bytes of Pad records that close segments (their payloads are never written).
    pub segment_pad_bytes: u64,
    /// Payload bytes of records that died in the ring (overwritten or deleted before the
    /// lookout took them: marked Dead, never written).
    pub died_in_ring_bytes: u64,
    /// Flushes that wrote everything because someone waited for them (a durable put, a
    /// sync, a checkpoint, a grant, a reader, puts wanting room) or at close.
    pub flushes_asked: u64,
    /// Flushes because the unflushed bytes passed the flush horizon (whole blocks only).
    pub flushes_horizon: u64,
    /// Flushes because the flush interval passed with bytes unflushed.
    pub flushes_interval: u64,
    /// Reclaimer appends waiting for room: puts wait behind them.
    priority_waiting: u32,
    /// `next_seq` when the lookout last claimed a range to write.
    claimed_seq: u64,
    /// Records in the last group commit's first write (Durability::Always; its
    /// extensions not counted), which the next one waits for briefly
    /// (`WriteBuffer::gather`).
    last_group: u64,
    /// Callers waiting for room in the ring: they cannot append until a flush, so a group
    /// commit does not wait for them.
    space_waiting: u32,
    /// The reclaimer wants a relocation segment: the next time the tail reaches a segment
    /// boundary, it is granted (`WriteBuffer::grant`).
    grant_wanted: bool,
    /// A grant made for the reclaimer, or why it failed, not yet taken.
    granted: Option<Result<Grant>>,
    /// The lookout has written zeros up to here, ahead of the log in the tail's segment
    /// (`WriteBuffer::zero_ahead`).
    zeroed: u64,
    /// The lookout is writing zeros ahead of the log (with the state lock released): a
    /// `jump` waits for it to end before it writes at the tail.
    zeroing: bool,
    /// Bytes a group commit wrote, a moving average (Durability::Always).
    group_bytes: u64,
    /// The ring's memory is faulted in for the log up to here (`WriteBuffer::touch_ahead`).
    touched: u64,
    /// The lookout has ended its loop: the toucher is to end.
    toucher_stop: bool,
}

impl RingState {
    /// Completed flushes (that wrote something), whatever started them.
    pub fn flushes(&self) -> u64 {
        self.flushes_asked + self.flushes_horizon + self.flushes_interval
    }
}

/// A relocation segment granted to the reclaimer: logical segment `logical` (its header
/// written), whose records get the sequence numbers from `first_seq` on (as many as the
/// segment can hold are reserved).
#[derive(Debug)]
pub struct Grant {
    pub logical: u64,
    pub first_seq: u64,
}

/// The ring's memory: `cap` bytes, on huge pages (`WriteBuffer::new` says why), untouched;
/// an error names the option. Also what an open asks for before it creates a store.
pub(crate) fn map_ring(cap: usize) -> Result<std::ptr::NonNull<u8>> {
    pages::map(cap, true).map_err(|e| e.context(|| format!("the ring's {cap} bytes (buffer_size)")))
}

/// Kills (records marked Dead whose superseding change is not durable yet) at which a
/// flush syncs, whatever the durability mode.
const KILLS_SYNC: usize = 1 << 16;

/// How long a grant waits at a time for the tail to reach a segment boundary: if the
/// tail has not moved meanwhile, the segment is closed early.
const GRANT_STEP: Duration = Duration::from_millis(5);

/// The smallest record (a header and a one-byte key, padded): a segment holds at most its
/// size over this many records, so a relocation segment reserves that many sequence
/// numbers.
const MIN_RECORD: u64 = 40;

/// The ring, its counters, and the disk it drains into.
pub struct WriteBuffer {
    mem: *mut u8,
    cap: usize,
    state: Mutex<RingState>,
    /// Signalled when the lookout should look (horizon passed, flush wanted, shutdown).
    lookout: Condvar,
    /// Signalled after every flush attempt (space freed, sync reached, or an error).
    progress: Condvar,
    /// Signalled when the toucher is to end.
    touch_stop: Condvar,
    /// Readers share it while they copy from the ring; a put holds it exclusively while it
    /// overwrites p_flushed bytes.
    guard: RwLock<()>,
    /// Disk offsets below this may have been overwritten in the ring.
    floor: AtomicU64,
    /// `flushed`, readable without the state lock (it only grows).
    flushed_hint: AtomicU64,
    /// Puts are paced by the reclaimer (its throttle sets it through `paced_flag`):
    /// group commits then take in no more records before their fdatasync (`flush_once`).
    paced: Arc<AtomicBool>,
    /// `tail`, readable without the state lock (it only grows).
    tail_hint: AtomicU64,
    disk: Arc<DiskFile>,
    segs: Arc<Segments>,
    log: Arc<LogFile>,
    latch: Arc<Latch>,
    /// The checksum key of record headers.
    sum_key: u64,
    horizon: u64,
    interval: Duration,
    /// Every lookout flush ends with fdatasync (Durability::Batch).
    sync_every_flush: bool,
    /// A flush a durable waiter wants ends with fdatasync by the lookout, after it has
    /// gathered the writers still arriving (Durability::Always: the group commit). Else a
    /// durable waiter whose bytes are written runs fdatasync itself (`flush_to`).
    sync_wanted: bool,
    /// Every flush starts on a multiple of this; a flush that must write everything first
    /// pads the log to it. 4096 with O_DIRECT, else the record alignment.
    align: u64,
    /// A block of zeros for `zero_ahead`, made at its first use.
    zeros: std::sync::OnceLock<Blocks>,
    /// The log's end at open: from here plus `cap` on, the ring's memory has all been
    /// touched (`touch_ahead`).
    opened_at: u64,
}

// SAFETY: `mem` is an anonymous mapping owned by the WriteBuffer alone. Every access goes
// through methods that keep the access rules in the module docs: writes only to
// `[tail, flushed + cap)` under the state mutex (and `guard` exclusively where readers may
// look), the lookout reads only `[flushed, claimed)`, which nobody writes, and readers
// copy only under `guard` shared after checking `floor`. `touch_ahead` only advises the
// kernel to fault pages in, which changes no byte.
unsafe impl Send for WriteBuffer {}
// SAFETY: as for Send: all shared access is synchronised as described above.
unsafe impl Sync for WriteBuffer {}

impl Drop for WriteBuffer {
    fn drop(&mut self) {
        // SAFETY: `mem` is the start (non-null) of the mapping `pages::map(cap, ..)` made in
        // `new`, unmapped once, here, when no borrow of it can remain.
        unsafe { pages::unmap(std::ptr::NonNull::new_unchecked(self.mem), self.cap) };
    }
}

impl WriteBuffer {
    /// A ring sized and paced by `opts` whose log continues at `tail`.
    pub fn new(
        opts: &Options,
        tail: u64,
        next_seq: u64,
        disk: Arc<DiskFile>,
        segs: Arc<Segments>,
        log: Arc<LogFile>,
    ) -> Result<WriteBuffer> {
        let cap = opts.buffer_size;
        let align = if disk.is_direct() {
            BLOCK as u64
        } else {
            RECORD_ALIGN as u64
        };
        // An anonymous mapping: page-aligned (as O_DIRECT needs) and zero-filled lazily, so an
        // idle ring costs no memory and opening costs no memset (an aligned allocation does).
        // Options::validate requires at least 64 KiB.
        // On huge pages in every mode: an O_DIRECT write reaches the disk as requests of at
        // most 254 pieces of contiguous memory, so an 8 MiB piece from 4 KiB pages is many
        // requests and from 2 MiB pages a few (and pinning it walks 4 pages, not 2048). In
        // `Always` a group commit became one request instead of several (12-25% faster);
        // in fill, two alternating pairs (`-- --phases fill,index-scale`): 2152 and 2438
        // MB/s against 1632 and 1720, each 8 MiB write 3.1 ms against 4.5 ms. A huge page's
        // first fault is dear on the test VM (`kvs-touch` takes it ahead of puts): 4 KiB
        // puts on a fresh store, 200 000 of them, gave 270 and 491 k/s against 339 and 330 k.
        let mem = map_ring(cap)?.as_ptr();
        debug_assert_eq!(mem as usize % BLOCK, 0);
        Ok(WriteBuffer {
            mem,
            cap,
            state: Mutex::new(RingState {
                tail,
                claimed: tail,
                flushed: tail,
                synced: tail,
                next_seq,
                flush_wanted: 0,
                durable_wanted: 0,
                syncing: 0,
                shutdown: false,
                lookout_gone: false,
                pinned: 0,
                dead: Vec::new(),
                kills: BTreeMap::new(),
                deletes_end: 0,
                flushed_bytes: 0,
                pad_bytes: 0,
                syncs: 0,
                segment_pad_bytes: 0,
                died_in_ring_bytes: 0,
                flushes_asked: 0,
                flushes_horizon: 0,
                flushes_interval: 0,
                priority_waiting: 0,
                claimed_seq: next_seq,
                last_group: 0,
                space_waiting: 0,
                grant_wanted: false,
                granted: None,
                zeroed: tail,
                zeroing: false,
                group_bytes: 0,
                touched: tail,
                toucher_stop: false,
            }),
            lookout: Condvar::new(),
            progress: Condvar::new(),
            touch_stop: Condvar::new(),
            guard: RwLock::new(()),
            // Nothing before `tail` is in the ring.
            floor: AtomicU64::new(tail),
            flushed_hint: AtomicU64::new(tail),
            paced: Arc::new(AtomicBool::new(false)),
            tail_hint: AtomicU64::new(tail),
            latch: disk.latch().clone(),
            sum_key: disk.sum_key(),
            disk,
            segs,
            log,
            horizon: opts.get_flush_horizon() as u64,
            interval: opts.flush_interval,
            sync_every_flush: opts.durability == Durability::Batch,
            sync_wanted: opts.durability == Durability::Always,
            align,
            zeros: std::sync::OnceLock::new(),
            opened_at: tail,
        })
    }

    /// The ring's size in bytes.
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Takes the state lock (puts and deletes hold it across append and index update, so
    /// that log order and index order agree).
    pub fn lock(&self) -> MutexGuard<'_, RingState> {
        self.state.lock()
    }

    /// Waits until `n` bytes are free at the tail (back-pressure). Fails only if the store
    /// has failed (at once, or while we wait) or the buffer is shutting down.
    ///
    /// `priority` (the reclaimer): while such a caller waits, the others wait behind it even
    /// if there is room, so a steady stream of puts cannot starve the reclaimer.
    pub fn wait_for_space(
        &self,
        g: &mut MutexGuard<'_, RingState>,
        n: usize,
        priority: bool,
    ) -> Result<()> {
        self.latch.check()?;
        if g.shutdown {
            return Err(Error::Closed);
        }
        let n = n as u64;
        if priority {
            g.priority_waiting += 1;
        }
        let res = loop {
            let room = self.cap as u64 - (g.tail - g.flushed) >= n;
            if room && (priority || g.priority_waiting == 0) {
                break Ok(());
            }
            if g.shutdown {
                break Err(Error::Closed);
            }
            if let Err(e) = self.alive(g) {
                break Err(e);
            }
            if !room {
                g.flush_wanted = g.flush_wanted.max(g.tail);
                self.lookout.notify_one();
                g.space_waiting += 1;
                self.progress.wait_for(g, WAIT_STEP);
                g.space_waiting -= 1;
                continue;
            }
            self.progress.wait_for(g, WAIT_STEP);
        };
        if priority {
            g.priority_waiting -= 1;
            if g.priority_waiting == 0 {
                self.progress.notify_all();
            }
        }
        res
    }

    /// Waits until a record of `n` bytes can be appended at the tail without crossing a
    /// segment boundary: closes the tail's segment with a Pad record (its payload never
    /// written) if the record does not fit in what is left of it, and opens the next segment
    /// (its slot taken, its header appended) when the tail is at a boundary. A record ends
    /// exactly at its segment's end or at least a header's length before it, so the Pads
    /// that close a segment or align a flush always fit. `reclaimer`: the caller is the
    /// reclaimer, which waits for room ahead of puts and may grow disk_file into the last
    /// segment's worth of free space (puts leave it; see `Segments::open_segment`).
    pub fn make_room(
        &self,
        g: &mut MutexGuard<'_, RingState>,
        n: usize,
        reclaimer: bool,
    ) -> Result<()> {
        let size = self.segs.size();
        let n = n as u64;
        let room = |g: &RingState| {
            if reclaimer {
                Room::Reclaimer
            } else {
                Room::Puts {
                    unwritten: g.tail - g.flushed,
                }
            }
        };
        loop {
            let tail = g.tail;
            let pos = tail % size;
            if pos == 0 {
                if g.grant_wanted && g.tail - g.flushed <= GRANT_BACKLOG {
                    // The reclaimer takes this segment; the log goes on after it.
                    if let Err(e) = self.jump(g) {
                        g.granted = Some(Err(e));
                        g.grant_wanted = false;
                        self.progress.notify_all();
                    }
                    continue;
                }
                self.wait_for_space(g, (SEG_HEADER + n) as usize, reclaimer)?;
                if g.tail != tail {
                    continue;
                }
                let header =
                    self.segs
                        .open_segment(self.segs.of(tail), room(g), g.next_seq, false)?;
                self.append(g, &[&header], header.len());
                continue;
            }
            if pos + n == size || pos + n + HEADER_LEN as u64 <= size {
                self.wait_for_space(g, n as usize, reclaimer)?;
                if g.tail == tail {
                    return Ok(());
                }
                continue;
            }
            self.close_segment(g, reclaimer)?;
        }
    }

    /// Closes the tail's segment with a Pad record (its payload never written) if the tail
    /// is inside one. Returns once the tail is at a segment boundary.
    fn close_segment(&self, g: &mut MutexGuard<'_, RingState>, priority: bool) -> Result<()> {
        let size = self.segs.size();
        loop {
            let tail = g.tail;
            let pos = tail % size;
            if pos == 0 {
                return Ok(());
            }
            let gap = size - pos;
            self.wait_for_space(g, gap as usize, priority)?;
            if g.tail != tail {
                continue;
            }
            self.append(g, &[&self.pad_header(tail, gap)], gap as usize);
            g.dead.push((tail + HEADER_LEN as u64, tail + gap));
            g.segment_pad_bytes += gap;
        }
    }

    /// The reclaimer's request for a relocation segment (format 6): a segment of the log
    /// that only the reclaimer writes, so that its copies do not mix with new puts. The
    /// segment is the one the tail enters next; the log goes on after it. Waits up to
    /// `patience`, while puts keep moving the tail, for it to reach a segment boundary by
    /// itself; then closes the tail's segment early with a Pad (its rest stays a hole).
    ///
    /// Every record appended before the grant lies below the granted segment, every one
    /// after it above: the reclaimer checks that a record is current after the grant, so a
    /// put that supersedes it comes later in the log than its copy.
    ///
    /// `None` if, when it would close the tail's segment early, more than `max_backlog`
    /// waits in the ring: the grant waits for the ring written out, and puts with it (the
    /// caller slows puts and asks again).
    pub fn grant(&self, patience: Duration, max_backlog: u64) -> Result<Option<Grant>> {
        let deadline = std::time::Instant::now() + patience;
        let mut g = self.state.lock();
        g.grant_wanted = true;
        let mut seen = None;
        let res = loop {
            if let Some(r) = g.granted.take() {
                break r.map(Some);
            }
            if let Err(e) = self.latch.check().and_then(|()| self.alive(&g)) {
                break Err(e);
            }
            if g.shutdown {
                break Err(Error::Closed);
            }
            // Waiting pays only while puts move the tail towards the boundary.
            if std::time::Instant::now() >= deadline || seen == Some(g.tail) {
                if g.tail - g.flushed > max_backlog {
                    break Ok(None);
                }
                if let Err(e) = self.jump(&mut g) {
                    break Err(e);
                }
                continue;
            }
            seen = Some(g.tail);
            self.progress.wait_for(&mut g, GRANT_STEP);
        };
        g.grant_wanted = false;
        res
    }

    /// Asks for a relocation segment ahead of need (`grant` or `take_grant` collects it):
    /// the next time the tail reaches a segment boundary by itself.
    pub fn request_grant(&self) {
        let mut g = self.state.lock();
        if g.granted.is_none() {
            g.grant_wanted = true;
        }
    }

    /// The log's end: where the next record goes.
    pub fn tail(&self) -> u64 {
        self.tail_hint.load(Ordering::Acquire)
    }

    /// Bytes in the ring not written yet.
    pub fn backlog(&self) -> u64 {
        let g = self.state.lock();
        g.tail - g.flushed
    }

    /// The flag that says puts are paced by the reclaimer (its throttle sets it).
    pub fn paced_flag(&self) -> Arc<AtomicBool> {
        self.paced.clone()
    }

    /// A grant made since `request_grant`, if any.
    pub fn take_grant(&self) -> Option<Result<Grant>> {
        let mut g = self.state.lock();
        g.grant_wanted = false;
        g.granted.take()
    }

    /// Counts `bytes` the reclaimer wrote to disk_file itself (in `flushed_bytes`: every
    /// byte of the log written).
    pub fn count_written(&self, g: &mut MutexGuard<'_, RingState>, bytes: u64) {
        g.flushed_bytes += bytes;
    }

    /// Waits until the ring is written out; then, if the tail is inside a segment, closes
    /// it with a Pad written straight to disk (the ring cannot hold a Pad longer than
    /// itself; its payload stays a hole) and made durable; then gives the next segment
    /// to the reclaimer (`granted`) and moves the tail past it. Returns without a grant if
    /// records were appended meanwhile (the caller looks again).
    fn jump(&self, g: &mut MutexGuard<'_, RingState>) -> Result<()> {
        let tail = g.tail;
        // The ring maps offsets onto itself modulo its size: it must be empty to skip.
        self.wait_for_space(g, self.cap, true)?;
        // Zeros being written ahead of the log may cover the tail (`zero_ahead`). A
        // lookout that died while writing them leaves `zeroing` set: `alive` ends the wait.
        while g.zeroing {
            self.alive(g)?;
            self.progress.wait_for(g, WAIT_STEP);
        }
        self.latch.check()?;
        if g.tail != tail || g.granted.is_some() {
            return Ok(());
        }
        let size = self.segs.size();
        let pos = tail % size;
        let boundary = tail.next_multiple_of(size);
        // The blocks to write, then the slot: if either cannot be had (no memory, NoSpace),
        // nothing has changed.
        let gap = size - pos;
        let mut pad = match pos {
            0 => None,
            _ => Some(Blocks::zeroed(gap.min(BLOCK as u64) as usize)?),
        };
        let mut block = Blocks::zeroed(BLOCK)?;
        let logical = self.segs.of(boundary);
        let first_seq = g.next_seq;
        let header = self
            .segs
            .open_segment(logical, Room::Reclaimer, first_seq, true)?;
        self.segs.written_to(logical, SEG_HEADER);
        if let Some(pad) = &mut pad {
            // Written out means written up to the tail, which a flush leaves on a block
            // boundary with O_DIRECT.
            debug_assert!(!self.disk.is_direct() || tail % BLOCK as u64 == 0);
            pad.as_mut_slice()[..HEADER_LEN].copy_from_slice(&self.pad_header(tail, gap));
            self.segs.write_at(tail, &[pad.as_slice()])?;
            self.disk.sync_data()?;
            g.segment_pad_bytes += gap;
            self.segs
                .closed_at(self.segs.of(tail), (pos + BLOCK as u64).min(size));
            self.log.info(&format!(
                "log segment {} closed early at {pos} of {size} bytes for a relocation segment",
                self.segs.of(tail)
            ));
        }
        // Its header now, so that the segment is on disk even if the reclaimer never
        // writes to it: recovery requires every segment from the image's covered offset to
        // the newest (a gap would mean one given back that the replay needs). The next
        // fdatasync of disk_file makes it durable.
        block.as_mut_slice()[..header.len()].copy_from_slice(&header);
        self.segs.write_at(boundary, &[block.as_slice()])?;
        let next = boundary + size;
        self.segs.summaries().skip(tail, next);
        g.next_seq += size / MIN_RECORD + 1;
        g.claimed_seq = g.next_seq;
        if g.synced == tail {
            g.synced = next;
            Self::drop_durable_kills(g);
        }
        g.tail = next;
        g.claimed = next;
        g.flushed = next;
        g.dead.retain(|&(_, b)| b > next);
        {
            // No reader may be copying out of the ring with the old floor: appends after
            // the jump take the guard only once their floor passes `next`.
            let _excl = self.guard.write();
            self.floor.fetch_max(next, Ordering::AcqRel);
        }
        self.flushed_hint.store(next, Ordering::Release);
        self.tail_hint.store(next, Ordering::Release);
        g.granted = Some(Ok(Grant { logical, first_seq }));
        g.grant_wanted = false;
        self.progress.notify_all();
        Ok(())
    }

    /// Appends one record made of `parts` (header, key, value) plus zero padding up to
    /// `padded` bytes at the tail. The caller has waited for space. Returns its offset.
    pub fn append(&self, g: &mut MutexGuard<'_, RingState>, parts: &[&[u8]], padded: usize) -> u64 {
        let off = g.tail;
        let end = off + padded as u64;
        assert!(end - g.flushed <= self.cap as u64, "append without space");
        let new_floor = end.saturating_sub(self.cap as u64);
        {
            // Readers may be looking at the p_flushed bytes we are about to overwrite.
            let _excl =
                (new_floor > self.floor.load(Ordering::Acquire)).then(|| self.guard.write());
            self.floor.fetch_max(new_floor, Ordering::AcqRel);
            let mut pos = off;
            for part in parts {
                self.copy_in(pos, part);
                pos += part.len() as u64;
            }
            let zeros = [0u8; BLOCK];
            while pos < end {
                let n = ((end - pos) as usize).min(zeros.len());
                self.copy_in(pos, &zeros[..n]);
                pos += n as u64;
            }
        }
        g.tail = end;
        self.tail_hint.store(end, Ordering::Release);
        if g.tail - g.flushed >= self.horizon {
            self.lookout.notify_one();
        }
        off
    }

    /// Rewrites the header at `off` as `Dead` if the lookout has not taken it yet, so its
    /// payload is never written. Returns whether it did. `superseded_until`: where the
    /// change that superseded it ends (its record, or its batch's Commit), which a durable
    /// waiter for this record then waits for as well; `None` for a record whose own put
    /// failed (nothing supersedes it and nobody waits for it).
    pub fn mark_dead(
        &self,
        g: &mut MutexGuard<'_, RingState>,
        off: u64,
        superseded_until: Option<u64>,
    ) -> bool {
        if off < g.claimed.max(g.pinned) {
            return false;
        }
        let mut hb = [0u8; HEADER_LEN];
        self.copy_out(off, &mut hb);
        let Ok(mut h) = Header::decode(&hb, self.sum_key) else {
            return false;
        };
        // A batch's records are kept whole: recovery counts them to find the batch complete.
        if h.kind != Kind::Put || h.batch {
            return false;
        }
        h.kind = Kind::Dead;
        {
            let _excl = self.guard.write();
            self.copy_in(off, &h.encode(self.sum_key));
        }
        let range = (off + HEADER_LEN as u64, off + h.padded_len() as u64);
        g.dead.push(range);
        g.died_in_ring_bytes += range.1 - range.0;
        if let Some(end) = superseded_until {
            let e = g.kills.entry(off).or_insert(end);
            *e = (*e).max(end);
        }
        true
    }

    /// What a durable waiter for the log below `target` must wait for: `target`, and the
    /// end of every change that superseded a record below it while still in the ring (that
    /// record is written Dead, its value gone; were the superseding change lost in a crash,
    /// the key would go back to an older value), and so on for records below those ends.
    ///
    /// The links of records below `synced` are looked at too, whatever `target`: a link
    /// whose end `synced` passed was dropped (`drop_durable_kills`), but the record at its
    /// end may itself have been superseded (v2 by v3, v3 by v4: v2's value is durable only
    /// through v4), and that next link lies above the waiter's range. Found by review; the
    /// cost is that a waiter may also wait for an unrelated change not yet durable.
    fn durable_target(g: &RingState, target: u64) -> u64 {
        let mut t = target;
        loop {
            let further = g
                .kills
                .range(..t.max(g.synced))
                .map(|(_, &e)| e)
                .max()
                .unwrap_or(0);
            if further <= t {
                return t;
            }
            t = further;
        }
    }

    /// `synced` has moved: the kills whose superseding change it covers are dropped.
    /// (`flush_once` syncs once `KILLS_SYNC` of them pile up.)
    fn drop_durable_kills(g: &mut RingState) {
        let synced = g.synced;
        g.kills.retain(|_, end| *end > synced);
    }

    /// Keeps every record below `off` as it is (never marked Dead): a checkpoint covering
    /// the log up to `off` is being taken.
    pub fn pin(&self, g: &mut MutexGuard<'_, RingState>, off: u64) {
        g.pinned = g.pinned.max(off);
    }

    /// Pins the log up to its tail T (no record below T is marked Dead from now on) and
    /// waits until it is written and fdatasync'ed. Returns T.
    pub fn flush_pinned(&self) -> Result<u64> {
        let t = {
            let mut g = self.state.lock();
            let t = g.tail;
            self.pin(&mut g, t);
            t
        };
        self.flush_to(t, true)?;
        Ok(t)
    }

    /// Copies the record at `off` out of the ring, `head` then `value` back to back, if
    /// those bytes are still there (not reused). Returns false when the caller must read
    /// disk_file instead.
    pub fn read(&self, off: u64, head: &mut [u8], value: &mut [u8]) -> bool {
        let _shared = self.guard.read();
        if off < self.floor.load(Ordering::Acquire) {
            return false;
        }
        // Only a record the ring holds whole (a location from a damaged image can claim
        // any length: copying it would read past the mapping; found by review).
        let len = (head.len() + value.len()) as u64;
        if len > self.cap as u64 || off + len > self.tail_hint.load(Ordering::Acquire) {
            return false;
        }
        self.copy_out(off, head);
        self.copy_out(off + head.len() as u64, value);
        true
    }

    /// Whether more than half the ring waits to be written: puts will soon wait for the
    /// lookout, whose writes then should get the device first (`Engine`'s read gate).
    pub fn is_filling(&self) -> bool {
        let tail = self.tail_hint.load(Ordering::Acquire);
        let flushed = self.flushed_hint.load(Ordering::Acquire);
        tail.saturating_sub(flushed) > self.cap as u64 / 2
    }

    /// Whether the record at `off` may still be in the ring (a `read` then likely succeeds;
    /// it may not, if a put reuses the bytes meanwhile).
    pub fn may_hold(&self, off: u64) -> bool {
        off >= self.floor.load(Ordering::Acquire)
    }

    /// Before a record that ends at `end` is read from disk_file: waits until the lookout
    /// has written all of it. A long record whose start the ring has already reused may
    /// still have its last partial block only in the ring (a horizon flush writes whole
    /// blocks); reading it from disk then would see a record cut short. On a failed store
    /// it does not wait (the read then reports what is on disk: at worst `Corruption`).
    pub fn ensure_written(&self, end: u64) {
        if self.flushed_hint.load(Ordering::Acquire) >= end || self.latch.is_failed() {
            return;
        }
        let _ = self.flush_to(end, false);
    }

    /// Asks for everything put so far to be flushed (and, if `durable`, fdatasync'ed), and
    /// waits for it.
    pub fn flush(&self, durable: bool) -> Result<()> {
        let target = self.state.lock().tail;
        self.flush_to(target, durable)
    }

    /// Waits until everything below disk offset `target` is flushed (and, if `durable`,
    /// fdatasync'ed), asking the lookout for the flush. The group commit: once the bytes
    /// are written, one waiting caller (the leader) runs fdatasync for everything written
    /// so far while the lookout goes on writing the next batch; the others wait for it, and
    /// whoever is still not covered leads the next one.
    pub fn flush_to(&self, target: u64, durable: bool) -> Result<()> {
        let mut g = self.state.lock();
        let asked = target;
        loop {
            // A failed store reports failure even for bytes flushed before the failure:
            // after a failed fdatasync nothing unsynced can be vouched for.
            self.alive(&g)?;
            // Looked at anew each time: a record below may be superseded meanwhile.
            let target = if durable {
                Self::durable_target(&g, asked)
            } else {
                asked
            };
            let reached = if durable { g.synced } else { g.flushed };
            if reached >= target {
                return Ok(());
            }
            if durable && g.flushed >= target && g.syncing == 0 {
                // Lead: sync what was written before the sync starts, and only that.
                if let Err(e) = self.sync_written(&mut g) {
                    self.log.error(&format!("{e}"));
                    return Err(e);
                }
                continue;
            }
            if g.shutdown {
                return Err(Error::Closed);
            }
            if g.flushed < target {
                g.flush_wanted = g.flush_wanted.max(target);
                if durable {
                    g.durable_wanted = g.durable_wanted.max(target);
                }
                self.lookout.notify_one();
            }
            self.progress.wait_for(&mut g, WAIT_STEP);
        }
    }

    /// `Err(Failed)` if the store has failed or the lookout is gone before shutdown.
    fn alive(&self, g: &RingState) -> Result<()> {
        self.latch.check()?;
        if g.lookout_gone && !g.shutdown {
            return Err(self.latch.fail("the lookout thread ended"));
        }
        Ok(())
    }

    /// Whether close has begun.
    pub fn is_shut_down(&self) -> bool {
        self.state.lock().shutdown
    }

    /// Stops the lookout after it has flushed and synced everything.
    pub fn begin_shutdown(&self) {
        self.state.lock().shutdown = true;
        self.lookout.notify_all();
        self.progress.notify_all();
    }

    /// The lookout thread's body: flush on horizon, on interval, on request; exit on
    /// shutdown once everything is synced. Returns `Failed` if the store failed. If it
    /// ends any other way (a panic), the store is latched as failed and waiters woken.
    pub fn run_lookout(&self) -> Result<()> {
        let _gone = LookoutGone(self);
        std::thread::scope(|s| {
            let _stop = StopToucher(self);
            let spawned = std::thread::Builder::new()
                .name("kvs-touch".into())
                .spawn_scoped(s, || self.run_toucher());
            if let Err(e) = spawned {
                // Puts then fault the ring's memory in themselves.
                self.log.warn(&format!(
                    "no thread to fault the ring in ahead of puts ({e})"
                ));
            }
            self.lookout_loop()
        })
    }

    /// The lookout's work: see `run_lookout`.
    fn lookout_loop(&self) -> Result<()> {
        let mut g = self.state.lock();
        loop {
            if self.latch.is_failed() {
                // Nothing more is written; wait for close.
                if g.shutdown {
                    return Err(self.latch.error());
                }
                self.lookout.wait_for(&mut g, WAIT_STEP);
                continue;
            }
            let pending = g.tail - g.flushed;
            let unsynced = g.flushed > g.synced;
            let wanted = g.flush_wanted > g.flushed;
            if g.shutdown && pending == 0 && !unsynced {
                // Everything is durable: finish the key summaries, the open segment's too.
                let synced = g.synced;
                MutexGuard::unlocked(&mut g, || self.segs.summaries().close(synced));
                return Ok(());
            }
            let start = g.flushed;
            let res = if wanted || g.shutdown {
                // Someone waits: write everything, padded to a block boundary; in Always,
                // when a durable commit waits (not only a reader or a put wanting room),
                // as one group commit.
                let commit = self.sync_wanted && g.durable_wanted > g.synced;
                if commit && !g.shutdown {
                    self.gather(&mut g);
                    g.last_group = g.next_seq - g.claimed_seq;
                }
                let sync = g.shutdown || commit;
                self.flush_once(&mut g, Cause::Asked, sync)
            } else if pending >= self.horizon && g.tail / self.align * self.align > g.flushed {
                // The horizon passed: write whole blocks; the partial last block waits (a
                // horizon below one block with nothing whole to write waits for the
                // interval, rather than turning the loop round at once for ever).
                self.flush_once(&mut g, Cause::Horizon, false)
            } else {
                let timed_out = self.lookout.wait_for(&mut g, self.interval).timed_out();
                if !(timed_out && g.tail > g.flushed) {
                    continue;
                }
                self.flush_once(&mut g, Cause::Interval, false)
            };
            // In Always, each flush is about to be a commit (by the lookout or a leader).
            let res = if res.is_ok() && self.sync_wanted && !g.shutdown && g.flushed > start {
                let bytes = g.flushed - start;
                g.group_bytes = (g.group_bytes * 7 + bytes) / 8;
                self.zero_ahead(&mut g)
            } else {
                res
            };
            // A failure latched the store (flush_once or zero_ahead logged it); the loop's
            // top sees it.
            let _ = res;
        }
    }

    /// Runs fdatasync for everything written when it starts (`flushed`), then moves
    /// `synced` there, lets the key summaries finish, and wakes the waiters.
    fn sync_written(&self, g: &mut MutexGuard<'_, RingState>) -> Result<()> {
        let upto = g.flushed;
        g.syncing += 1;
        let res = MutexGuard::unlocked(g, || {
            self.disk.sync_data()?;
            self.segs.summaries().finish_durable(upto);
            Ok(())
        });
        g.syncing -= 1;
        g.syncs += 1;
        if res.is_ok() {
            g.synced = g.synced.max(upto);
            Self::drop_durable_kills(g);
        }
        self.progress.notify_all();
        res
    }

    /// Before a group commit: while writers are still arriving, waits for them (at most
    /// `GATHER`), so that one write and one fdatasync cover them all. "Arriving" means
    /// fewer records are pending than the last group held: the writers that group
    /// released are putting again. A lone writer never waits (its groups are one record);
    /// 16 writers of 4 KiB values commit 16 at a time instead of alternating in two halves.
    /// It does not wait while callers wait for room in the ring: they cannot append until
    /// this flush. Nor does it wait once `GATHER_BYTES` are pending (`arriving`).
    fn gather(&self, g: &mut MutexGuard<'_, RingState>) {
        let deadline = std::time::Instant::now() + GATHER;
        while arriving(g.next_seq - g.claimed_seq, g.last_group, g.tail - g.flushed)
            && !g.shutdown
            && g.space_waiting == 0
        {
            if self.lookout.wait_until(g, deadline).timed_out() {
                break;
            }
        }
    }

    /// After a group commit, while groups are small: writes zeros ahead of the log in the
    /// tail's segment, so that the next group commits overwrite blocks the file system has
    /// already allocated and its fdatasync is a cache flush, not also a journal commit of
    /// the allocation (64 KiB O_DIRECT write + fdatasync on this machine's ext4: 225-231 us
    /// into a hole, 111-142 us over written blocks). Zeros read as a hole does, to every
    /// reader of the log. Large groups are left alone: the zeros would cost more device
    /// time than the journal commits they save.
    fn zero_ahead(&self, g: &mut MutexGuard<'_, RingState>) -> Result<()> {
        if g.group_bytes > ZERO_GROUP_MAX {
            return Ok(());
        }
        let size = self.segs.size();
        let from = g.claimed.max(g.zeroed).next_multiple_of(BLOCK as u64);
        let chunk = (g.group_bytes * ZERO_GROUPS)
            .clamp(ZERO_MIN, ZERO_MAX)
            .next_multiple_of(BLOCK as u64);
        if g.claimed % size == 0 || g.zeroed >= g.claimed + chunk / 2 {
            return Ok(());
        }
        // A recycled slot's blocks were written before: nothing to allocate ahead.
        if self.segs.is_recycled(self.segs.of(g.claimed)) {
            return Ok(());
        }
        let to = (from + chunk).min(g.claimed.next_multiple_of(size));
        if to <= from {
            return Ok(());
        }
        // Zeros ahead only save syncs: without the memory for them, none.
        let zeros = match self.zeros.get() {
            Some(z) => z,
            None => match Blocks::zeroed(ZERO_MAX as usize) {
                Ok(z) => self.zeros.get_or_init(|| z),
                Err(_) => return Ok(()),
            },
        };
        g.zeroing = true;
        let res = MutexGuard::unlocked(g, || {
            self.segs
                .write_at(from, &[&zeros.as_slice()[..(to - from) as usize]])
        });
        g.zeroing = false;
        self.progress.notify_all();
        match res {
            Ok(()) => {
                g.zeroed = to;
                Ok(())
            }
            Err(e) => {
                self.log
                    .error(&format!("zeros ahead of the log at {from}: {e}"));
                Err(self.latch.fail(&format!("zeros ahead of the log: {e}")))
            }
        }
    }

    /// Where the ring's first pass since open ends: from here on, all its memory has been
    /// touched.
    fn first_pass_end(&self) -> u64 {
        self.opened_at + self.cap as u64
    }

    /// The toucher's body (thread `kvs-touch`, started and joined by the lookout, ended
    /// once the ring's first pass is touched): faults the ring's memory in ahead of puts
    /// (`touch_ahead`). While it is far enough ahead it looks again after `TOUCH_POLL`,
    /// twice as long each time the tail has not moved, up to `WAIT_STEP`.
    fn run_toucher(&self) {
        let end = self.first_pass_end();
        let mut g = self.state.lock();
        let mut poll = TOUCH_POLL;
        let mut seen = g.tail;
        while !g.toucher_stop && g.touched < end && !self.latch.is_failed() {
            if !self.touch_ahead(&mut g) {
                poll = if g.tail == seen {
                    (poll * 2).min(WAIT_STEP)
                } else {
                    TOUCH_POLL
                };
                seen = g.tail;
                self.touch_stop.wait_for(&mut g, poll);
            }
        }
    }

    /// On the ring's first pass, once puts have begun: faults in (`pages::populate`) the
    /// next 2 MiB of ring memory up to `TOUCH_AHEAD` past the tail, with the state lock
    /// released. Else puts take those faults while they copy into the ring, holding the
    /// state lock, and on huge pages (the ring's) one can take milliseconds (in a
    /// VM whose free memory the host takes back, each 2 MiB page is new to the host). Done
    /// by the lookout itself, 2 MiB a turn of its loop, it held flushes back: 0.72 s of a
    /// 2.8 s `Always` commit phase (a step took 3.1 ms). One step per call. Returns whether
    /// it did one.
    fn touch_ahead(&self, g: &mut MutexGuard<'_, RingState>) -> bool {
        let end = self.first_pass_end();
        if g.shutdown || g.tail == self.opened_at || g.touched >= end {
            return false;
        }
        let from = g.touched.max(g.tail);
        let to = (from + pages::HUGE as u64)
            .min(end)
            .min(g.tail + TOUCH_AHEAD);
        if to <= from {
            return false;
        }
        let pos = (from % self.cap as u64) as usize;
        let first = ((to - from) as usize).min(self.cap - pos);
        // SAFETY: both ranges lie inside the ring's mapping (`pos + first <= cap`, the
        // rest starts at 0 and is shorter than `cap`); populating changes no byte, so
        // puts may copy into them meanwhile.
        let done = MutexGuard::unlocked(g, || unsafe {
            pages::populate(self.mem.add(pos), first).and_then(|()| {
                if to - from == first as u64 {
                    return Ok(());
                }
                pages::populate(self.mem, (to - from) as usize - first)
            })
        });
        // If the kernel cannot, puts fault the pages in themselves.
        g.touched = match done {
            Ok(()) => g.touched.max(to),
            Err(e) => {
                // EINVAL: the kernel cannot (before 5.14); ENOMEM, EAGAIN, EFAULT, EHWPOISON:
                // no memory now. Anything else means a range outside the ring: a bug, loud
                // in tests (every store's first pass runs this, the wrap too). ENOMEM was
                // asserted against too, failing debug builds short of memory (review).
                debug_assert!(
                    matches!(
                        e.raw_os_error(),
                        Some(
                            libc::EINVAL
                                | libc::ENOMEM
                                | libc::EAGAIN
                                | libc::EFAULT
                                | libc::EHWPOISON
                        )
                    ),
                    "{e}"
                );
                if e.raw_os_error() != Some(libc::EINVAL) {
                    self.log
                        .warn(&format!("faulting in ring memory ahead of puts: {e}"));
                }
                end
            }
        };
        true
    }

    /// Appends a Pad record so that the tail lands on a block boundary, if there is room.
    fn pad_tail(&self, g: &mut MutexGuard<'_, RingState>) -> bool {
        let gap = Header::pad_len(g.tail, self.align);
        if gap == 0 {
            return true;
        }
        if self.cap as u64 - (g.tail - g.flushed) < gap {
            return false;
        }
        let head = self.pad_header(g.tail, gap);
        self.append(g, &[&head], gap as usize);
        g.pad_bytes += gap;
        true
    }

    /// The encoded header of a Pad of `gap` bytes at logical offset `at`, tagged with its
    /// segment's first sequence number (`Header::pad`).
    fn pad_header(&self, at: u64, gap: u64) -> [u8; HEADER_LEN] {
        let tag = self.segs.first_seq(self.segs.of(at)).unwrap_or(0);
        Header::pad(gap, tag).encode(self.sum_key)
    }

    /// Writes `[flushed, end)` to disk with the state lock released, then publishes it.
    /// End is the tail (padded to a block boundary), except at the horizon: the last
    /// boundary below it. A group commit in Always moves `end` on to the tail again (at
    /// most `COMMIT_EXTENSIONS` times) when durable waiters put more while it wrote, and
    /// syncs once at the end.
    fn flush_once(
        &self,
        g: &mut MutexGuard<'_, RingState>,
        cause: Cause,
        sync: bool,
    ) -> Result<()> {
        let all = cause != Cause::Horizon;
        // In `None` nothing else may sync for a long time (checkpoints off), and the kills
        // are dropped only as `synced` moves: one sync bounds them (found by review: they
        // grew by one per overwrite in the ring, for the life of the store, and every
        // durable wait scanned them).
        let sync = sync || self.sync_every_flush || g.kills.len() >= KILLS_SYNC;
        let padded = all && self.pad_tail(g);
        let mut end = if padded {
            g.tail
        } else {
            g.tail / self.align * self.align
        };
        let start = g.flushed;
        let mut holes = take_holes(&mut g.dead, start, end, BLOCK as u64);
        // A group commit in Always takes in, before its fdatasync, the records that
        // durable waiters put while its bytes were being written (`COMMIT_EXTENSIONS`).
        let mut extensions = if sync && cause == Cause::Asked && self.sync_wanted {
            COMMIT_EXTENSIONS
        } else {
            0
        };
        g.claimed = end;
        g.claimed_seq = g.next_seq;
        // Written and published a piece at a time, each before the fdatasync: the ring's
        // space comes back as its bytes are written, and reads find them on disk; only
        // `synced` says durable. Written whole and published after the fdatasync, a flush
        // of the whole ring (asked for by a checkpoint or by puts wanting room) held puts
        // waiting for room 66-240 ms at full speed.
        let mut written = 0;
        let mut pos = start;
        let res = loop {
            let piece_end = end.min(pos + FLUSH_PIECE);
            let piece_holes: Vec<(u64, u64)> = holes
                .iter()
                .map(|&(a, b)| (a.max(pos), b.min(piece_end)))
                .filter(|&(a, b)| a < b)
                .collect();
            let piece: Result<u64> = MutexGuard::unlocked(g, || {
                let w = self.write_range(pos, piece_end, &piece_holes)?;
                // Claimed headers are final (none becomes Dead any more): list what was
                // written.
                self.segs
                    .summaries()
                    .note(piece_end, |off, buf| self.read(off, buf, &mut []));
                Ok(w)
            });
            match piece {
                Err(e) => break Err(e),
                Ok(w) => written += w,
            }
            g.flushed = piece_end;
            self.flushed_hint.store(piece_end, Ordering::Release);
            // Waiters for durability wait for the sync: wake them only once (16 writers
            // of a group commit woken twice cost CPU the 2 cores lack).
            if !sync || g.space_waiting > 0 {
                self.progress.notify_all();
            }
            pos = piece_end;
            if pos >= end {
                // Not while puts wait for room or a grant for the ring written out (they
                // wait for this flush), nor while the reclaimer paces puts (few come
                // meanwhile, and the group's first writers would wait a write longer
                // for nothing: median put 1.1 ms -> 2.1-3.8 ms on a turned store).
                if extensions > 0
                    && !g.shutdown
                    && g.space_waiting == 0
                    && !g.grant_wanted
                    && !self.paced.load(Ordering::Relaxed)
                    && g.durable_wanted > end
                    && self.pad_tail(g)
                {
                    extensions -= 1;
                    let more = g.tail;
                    holes.extend(take_holes(&mut g.dead, end, more, BLOCK as u64));
                    end = more;
                    g.claimed = end;
                    g.claimed_seq = g.next_seq;
                    continue;
                }
                break Ok(written);
            }
        };
        let res = res.and_then(|written| {
            if end > start {
                g.flushed_bytes += written;
                match cause {
                    Cause::Asked => g.flushes_asked += 1,
                    Cause::Horizon => g.flushes_horizon += 1,
                    Cause::Interval => g.flushes_interval += 1,
                }
            }
            if sync {
                self.sync_written(g)?;
            }
            Ok(written)
        });
        match res {
            Ok(_) => Ok(()),
            Err(e) => {
                // The store has failed (a device error latched it already; anything else
                // latches it here): nothing more is written. A failed write leaves the
                // range unflushed (still readable from the ring until close); a failed
                // fdatasync leaves it written and never `synced`.
                self.log
                    .error(&format!("flush of the log [{start}, {end}) failed: {e}"));
                let e = self.latch.fail(&format!("flush of the log: {e}"));
                g.claimed = g.flushed;
                self.progress.notify_all();
                Err(e)
            }
        }
    }

    /// Writes `[start, end)` but for the holes (sorted, block-aligned, inside the range).
    /// Returns the bytes written.
    fn write_range(&self, start: u64, end: u64, holes: &[(u64, u64)]) -> Result<u64> {
        let mut written = 0;
        let mut pos = start;
        for &(a, b) in holes {
            written += self.write_slices(pos, a)?;
            pos = b;
        }
        written += self.write_slices(pos, end)?;
        Ok(written)
    }

    /// Writes `[start, end)`, one `pwritev` per log segment it touches.
    fn write_slices(&self, start: u64, end: u64) -> Result<u64> {
        let size = self.segs.size();
        let mut pos = start;
        while pos < end {
            let piece_end = end.min((pos / size + 1) * size);
            let (a, b) = self.claimed_slices(pos, piece_end);
            self.segs.write_at(pos, &[a, b])?;
            pos = piece_end;
        }
        Ok(end - start)
    }

    /// The ring bytes of disk range `[start, end)` as one or two slices.
    fn claimed_slices(&self, start: u64, end: u64) -> (&[u8], &[u8]) {
        let len = (end - start) as usize;
        debug_assert!(len <= self.cap);
        let pos = (start % self.cap as u64) as usize;
        let first = len.min(self.cap - pos);
        // SAFETY: both ranges lie inside the allocation (pos + first <= cap,
        // len - first <= cap). They are in `[flushed, claimed)`, which no one writes
        // until `flushed` moves past them, and `flushed` moves only after this borrow ends
        // (flush_once publishes after write_range returns).
        unsafe {
            (
                std::slice::from_raw_parts(self.mem.add(pos), first),
                std::slice::from_raw_parts(self.mem, len - first),
            )
        }
    }

    fn copy_in(&self, off: u64, src: &[u8]) {
        let pos = (off % self.cap as u64) as usize;
        let first = src.len().min(self.cap - pos);
        // SAFETY: destination ranges lie inside the allocation; callers hold the state
        // mutex and write only unclaimed bytes (`>= claimed`) or bytes past `tail`, with
        // `guard` held exclusively whenever readers could be looking (module docs).
        unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr(), self.mem.add(pos), first);
            std::ptr::copy_nonoverlapping(src.as_ptr().add(first), self.mem, src.len() - first);
        }
    }

    fn copy_out(&self, off: u64, dst: &mut [u8]) {
        let pos = (off % self.cap as u64) as usize;
        let first = dst.len().min(self.cap - pos);
        // SAFETY: source ranges lie inside the allocation; callers either hold `guard`
        // shared (readers) or the state mutex on bytes no one else writes (module docs).
        unsafe {
            std::ptr::copy_nonoverlapping(self.mem.add(pos), dst.as_mut_ptr(), first);
            std::ptr::copy_nonoverlapping(self.mem, dst.as_mut_ptr().add(first), dst.len() - first);
        }
    }
}

/// What started a flush (`WriteBuffer::flush_once`, counted in `RingState`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Cause {
    /// Someone waits for it, or close: everything is written.
    Asked,
    /// The unflushed bytes passed the horizon: whole blocks only.
    Horizon,
    /// The interval passed: everything is written.
    Interval,
}

/// A put reaching a segment boundary makes the grant asked for ahead only while at most
/// this much waits in the ring: it waits for the ring written out (`jump`), and so do the
/// puts behind it. With more, the reclaimer's own grant does it, after slowing puts
/// until the ring holds no more than this (`Reclaimer::drain_before_grant`).
pub const GRANT_BACKLOG: u64 = 16 << 20;

/// On the ring's first pass the toucher faults in its memory this far ahead of the tail
/// (`WriteBuffer::touch_ahead`).
const TOUCH_AHEAD: u64 = 32 << 20;

/// How soon the toucher looks again whether the tail has moved while it is `TOUCH_AHEAD`
/// ahead or puts have not begun, at first (`WriteBuffer::run_toucher`).
const TOUCH_POLL: Duration = Duration::from_millis(1);

/// A group commit in Always writes again, before its fdatasync, at most this many times
/// the records durable waiters put while it wrote (`flush_once`). 16 writers of 100 KiB
/// values on a fresh store commit 16 at a time instead of alternating in two halves of
/// 8: one fdatasync, the dear part of a commit into new blocks, for twice the records.
const COMMIT_EXTENSIONS: u32 = 2;

/// A flush writes and publishes at most this much at a time (`flush_once`).
const FLUSH_PIECE: u64 = 8 << 20;

/// Group commits of at most this many bytes (a moving average) get zeros written ahead
/// of them (`WriteBuffer::zero_ahead`). One writer of 4 KiB values (8 KiB a group) went
/// 1.5-1.6x as fast with them. 16 such writers (68 KiB a group, bound by their wake-ups on
/// 2 CPUs) gained nothing and their p99 doubled; 100 KiB values one at a time gained
/// 10-18% but waited for the zeros at p90.
const ZERO_GROUP_MAX: u64 = 32 << 10;
/// Zeros are written this many groups ahead at a time, within `ZERO_MIN..=ZERO_MAX`
/// bytes: each write of zeros costs the next fdatasync one journal commit, and delays the
/// next group by its own time (1 MiB: 0.6-0.7 ms here).
const ZERO_GROUPS: u64 = 16;
const ZERO_MIN: u64 = 128 << 10;
const ZERO_MAX: u64 = 1 << 20;

/// Whether a group commit waits for more writers (`WriteBuffer::gather`): fewer
/// records are pending than the last group held (`last_group`), and their `bytes` are
/// fewer than `GATHER_BYTES`.
fn arriving(pending: u64, last_group: u64, bytes: u64) -> bool {
    pending < last_group && bytes < GATHER_BYTES
}

/// A group commit stops waiting for writers once this many bytes wait: its write then
/// takes about as long as the wait would (300 us at 1.7 GB/s is about 500 KB), and the
/// writers that commit released join the next group anyway. 16 writers of 100 KiB values
/// in `Always`, three alternating pairs (`cargo bench --bench kvsbench -- --phases commit
/// --commit-writers 16 --records 20000`): 68-76% of `Batch` against 64-72% waiting by the
/// record count alone (groups of 8 against 10-15 puts).
const GATHER_BYTES: u64 = 256 << 10;

/// The longest a group commit waits for writers still arriving (`WriteBuffer::gather`).
/// 300 us: with 16 writers of 4 KiB values, 100 us gathered too few, 300-1000 us all 16.
const GATHER: Duration = Duration::from_micros(300);

/// The longest a waiter sleeps before it looks at the latch again.
const WAIT_STEP: Duration = Duration::from_millis(100);

/// Tells the toucher to end when the lookout's loop ends, however it ends (a panic too:
/// the scope joining it would wait for it forever).
struct StopToucher<'a>(&'a WriteBuffer);

impl Drop for StopToucher<'_> {
    fn drop(&mut self) {
        self.0.state.lock().toucher_stop = true;
        self.0.touch_stop.notify_all();
    }
}

/// Marks the lookout gone when its thread's body ends, however it ends (a panic too), and
/// wakes every waiter; if that is before shutdown, the store has failed.
struct LookoutGone<'a>(&'a WriteBuffer);

impl Drop for LookoutGone<'_> {
    fn drop(&mut self) {
        let b = self.0;
        let mut g = b.state.lock();
        g.lookout_gone = true;
        if !g.shutdown {
            b.latch
                .fail("the lookout thread ended before close (it panicked)");
            b.log
                .error("the lookout thread ended before close; the store has failed");
        }
        drop(g);
        b.progress.notify_all();
    }
}

/// Takes from `dead` the whole `block`s of dead payload inside `[start, end)`, merged and
/// sorted, never including the range's last block (so the file always reaches `end`).
/// Parts of dead ranges beyond `end` stay in `dead` for a later flush.
fn take_holes(dead: &mut Vec<(u64, u64)>, start: u64, end: u64, block: u64) -> Vec<(u64, u64)> {
    let mut holes = Vec::new();
    if end <= start {
        return holes;
    }
    let last_block = (end - 1) / block * block;
    dead.retain_mut(|(a, b)| {
        if *a >= end {
            return true;
        }
        let h0 = (*a).max(start).next_multiple_of(block);
        let h1 = ((*b).min(end) / block * block).min(last_block);
        if h1 > h0 {
            holes.push((h0, h1));
        }
        if *b > end {
            *a = end;
            true
        } else {
            false
        }
    });
    holes.sort_unstable();
    holes
}

#[cfg(test)]
mod tests {
    use super::{arriving, take_holes, GATHER_BYTES};

    #[test]
    fn a_group_commit_waits_for_writers_only_while_its_bytes_are_few() {
        // 16 writers of 4 KiB values, half of them in: wait for the rest.
        assert!(arriving(8, 16, 8 * 4200));
        // As many as the last group: go.
        assert!(!arriving(16, 16, 16 * 4200));
        // A lone writer never waits.
        assert!(!arriving(1, 1, 4200));
        // 8 of 16 writers of 100 KiB values: their write is long enough; go.
        assert!(!arriving(8, 16, 8 * 102_500));
        assert!(!arriving(3, 16, GATHER_BYTES));
        assert!(arriving(2, 16, GATHER_BYTES - 1));
    }

    #[test]
    fn holes_are_whole_blocks_inside_the_range_and_spare_its_last_block() {
        let mut dead = vec![
            (100, 10_000),
            (20_000, 30_000),
            (12_000, 12_100),
            (40_000, 50_000),
        ];
        let holes = take_holes(&mut dead, 0, 45_056, 4096);
        // (12_000, 12_100) holds no whole block; (40_000, 50_000) only the last block.
        assert_eq!(holes, vec![(4096, 8192), (20_480, 28_672)]);
        // The straddling range keeps its part past the end for the next flush.
        assert_eq!(dead, vec![(45_056, 50_000)]);
    }
}

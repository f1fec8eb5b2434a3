//! The reclaimer: gives back the space of overwritten and deleted records.
//!
//! A round takes a few victim segments (closed ones, best by cost-benefit, `choose`),
//! reads each one in order and copies (to a relocation segment, `relocate.rs`; in stores
//! of format 5 and older through `Engine::append` like any put or delete) every put the
//! index still points at (`When::At`, checked under the ring lock, which orders the move
//! against puts and deletes) and every tombstone that may still hide an older put
//! (`When::Absent`). Then it makes the log durable and gives
//! each victim's slot back (`Segments::release`: unmap, punch, fsync, free).
//!
//! Making the log durable: if a victim reaches past the offset C that IMAGE_file covers,
//! a checkpoint (IMAGE_file then covers the copies and no longer points into a victim).
//! Otherwise (the usual case: victims are old) only the log up to its tail T is pinned (no
//! record below T becomes Dead any more) and fdatasync'ed, and the image is left alone, for
//! it may point a key into a victim only if that key's state changed after C: its last
//! record before T (a copy, a later put, or a tombstone) lies in `[C, T)`, durable and not
//! Dead, and recovery replays it after loading the image. Tombstones a victim dropped lie
//! below C and are already reflected in the image. Any later image covers more than C.
//!
//! A crash before the release leaves the victims mapped and whole: recovery sees the
//! original records and, after them in the log, the copies, so it finds the same values.
//! A get that looked a key up before its move and reads after the release finds the
//! segment gone, sees the index changed, and looks again (the Moved path of a get).

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{Scope, ScopedJoinHandle};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, MutexGuard};

use crate::checkpoint::{Checkpointer, NO_SPACE_PAUSE_MAX};
use crate::engine::{Append, Engine, When};
use crate::error::{Error, Result};
use crate::format::{parse_put, Header, Kind, BLOCK, HEADER_LEN, SEG_HEADER};
use crate::index::Location;
use crate::log::device::Blocks;
use crate::log::ring::GRANT_BACKLOG;
use crate::log::scan;
use crate::log::segments::{SegmentUse, RECYCLE_WAIT};
use crate::relocate::{Moved, Stream};
use crate::worker::Signal;

/// The reclaimer's progress since open.
#[derive(Debug, Default)]
struct Progress {
    bytes_moved: u64,
    records_moved: u64,
    rounds: u64,
    /// After a round that gained less than a quarter segment (what is dead is spread thin,
    /// or is padding and tombstones that copying would recreate), background reclaiming
    /// waits until the dead bytes of the closed segments pass this.
    idle_until_dead: u64,
    /// Bytes per second background rounds gave back (a moving average): the pace of puts
    /// while the dead share is past `reclaim_urgent`.
    gain_rate: f64,
}

/// Clears the `compacting` flag when a compaction ends, however it ends.
struct Compacting<'a>(&'a AtomicBool);

impl Drop for Compacting<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Paces puts while the dead share is at or above `reclaim_urgent`, so the file stays
/// bounded however fast puts come, without stopping them until a round ends: a token
/// bucket that lets puts write `rate` bytes per second, the rate at which the reclaimer
/// gives space back (`Pace`). At rate 0 (while a round would not bring the share below
/// `reclaim_urgent`, or the share is far past it; either only once `STOP_SEGMENTS`
/// segments' worth of bytes are dead) puts wait. The reclaimer (or a put that opens a
/// segment and sees the share) turns it on; the end of the reclaimer's pass turns it off.
struct Throttle {
    /// Whether puts are paced: the ring's flag (`WriteBuffer::paced_flag`), which its
    /// group commits look at too.
    on: Arc<AtomicBool>,
    bucket: Mutex<Bucket>,
    cv: Condvar,
}

#[derive(Default)]
struct Bucket {
    /// Bytes per second puts may write.
    rate: f64,
    /// Bytes puts may write now; below zero by at most one put's size per writer (each
    /// put that finds some spends its whole size).
    tokens: f64,
    last: Option<Instant>,
}

impl Bucket {
    /// Adds what `rate` earned since the last refill, up to `BUCKET_TIME` of it.
    fn refill(&mut self, now: Instant) {
        if let Some(last) = self.last {
            let depth = (self.rate * BUCKET_TIME.as_secs_f64()).max(0.0);
            let earned = self.rate * now.duration_since(last).as_secs_f64();
            self.tokens = (self.tokens + earned).min(depth);
        }
        self.last = Some(now);
    }
}

impl Throttle {
    /// Off; `on` is the ring's flag that says puts are paced.
    fn new(on: Arc<AtomicBool>) -> Throttle {
        on.store(false, Ordering::Release);
        Throttle {
            on,
            bucket: Mutex::default(),
            cv: Condvar::new(),
        }
    }

    /// Whether puts are being paced.
    fn is_on(&self) -> bool {
        self.on.load(Ordering::Acquire)
    }

    fn set(&self, on: bool) {
        if self.on.load(Ordering::Acquire) == on {
            return;
        }
        let mut b = self.bucket.lock();
        if self.on.swap(on, Ordering::AcqRel) != on {
            b.tokens = 0.0;
            b.last = Some(Instant::now());
            self.cv.notify_all();
        }
    }

    /// Sets the bytes per second paced puts may write.
    fn set_rate(&self, rate: f64) {
        let mut b = self.bucket.lock();
        b.refill(Instant::now());
        b.rate = rate.max(0.0);
        self.cv.notify_all();
    }

    /// A put of `bytes`: while pacing, waits for the bucket to hold some and spends them.
    /// Waits at most `MAX_THROTTLE` (a stuck reclaimer cannot stop writes).
    fn wait(&self, bytes: u64) {
        if !self.on.load(Ordering::Acquire) {
            return;
        }
        let deadline = Instant::now() + MAX_THROTTLE;
        let mut b = self.bucket.lock();
        loop {
            let now = Instant::now();
            b.refill(now);
            if !self.on.load(Ordering::Acquire) || b.tokens > 0.0 {
                break;
            }
            if now >= deadline {
                // Let through unpaid: a stalled reclaimer must not leave a debt that
                // holds later puts back.
                return;
            }
            // Sleep until the deficit is earned (10 ms at most, to see a new rate).
            let need = if b.rate > 0.0 {
                (-b.tokens + 1.0) / b.rate
            } else {
                f64::INFINITY
            };
            let step = Duration::try_from_secs_f64(need.min(0.01)).unwrap_or(WAIT_STEP);
            self.cv.wait_for(&mut b, step);
        }
        if self.on.load(Ordering::Acquire) {
            b.tokens -= bytes as f64;
        }
    }
}

/// The pace one background round sets for puts: the rate at which earlier rounds gave
/// space back (bytes of victims less the live bytes copied out, per second of round),
/// scaled by how far below `reclaim_urgent` the dead share will be once this round's
/// victims are gone: nothing while it would still be at or above it (this round is not
/// enough), all of it from `PACE_BAND` below. Puts so slow down before the bound instead
/// of stopping at it.
struct Pace {
    victims: Vec<u64>,
    /// Bytes the round will give back.
    gain: u64,
    /// Live bytes the round copies out.
    live: u64,
    /// The measured rate of earlier rounds (bytes per second; 0: none yet, and then this
    /// round's own, as its copies go).
    rate: f64,
    started: Instant,
}

impl Pace {
    fn new(victims: &[SegmentUse], usable: u64, rate: f64) -> Pace {
        Pace {
            victims: victims.iter().map(|u| u.logical).collect(),
            gain: gain(victims, usable),
            live: victims.iter().map(|u| u.live.min(u.written)).sum(),
            rate,
            started: Instant::now(),
        }
    }

    /// Sets the pace of puts, `moved` bytes into the round.
    fn apply(&self, throttle: &Throttle, space: &Space, urgent: f64, moved: u64) {
        if space.ratio >= urgent {
            throttle.set(true);
        }
        let after = space.ratio_without(&self.victims);
        // Fewer than `STOP_SEGMENTS` segments of dead bytes: the share swings by a
        // segment at a time and bounds nothing worth holding puts for (the first segment
        // a lone durable writer of 4 KiB values closed was half padding, and so was the
        // one a grant closed early: the round's share after was 0.5, and puts waited
        // 470 ms for it). Else the bound, whatever the estimates say: past
        // `urgent + PACE_BAND` puts wait.
        let scale = if space.dead < STOP_SEGMENTS * space.usable {
            MAX_PACE
        } else if space.ratio >= urgent + PACE_BAND {
            0.0
        } else {
            ((urgent - after) / PACE_BAND).clamp(0.0, MAX_PACE)
        };
        let rate = if self.rate > 0.0 {
            self.rate
        } else if moved > 0 {
            let done = moved.min(self.live) as f64 / self.live.max(1) as f64;
            self.gain as f64 * done / self.started.elapsed().as_secs_f64().max(1e-3)
        } else {
            // Nothing measured yet: as fast as the reclaimer may copy.
            FIRST_PACE
        };
        throttle.set_rate(rate * scale);
    }
}

/// The reclaimer: its progress, its throttle, and the rounds it runs.
pub(crate) struct Reclaimer {
    engine: Arc<Engine>,
    ckpt: Arc<Checkpointer>,
    /// Wakes the background thread (a segment opened) or stops it.
    signal: Arc<Signal>,
    /// One round at a time (background and `Store::compact`).
    running: Mutex<()>,
    progress: Mutex<Progress>,
    throttle: Throttle,
    /// Key iterations open (rounds wait for them).
    iterations: AtomicUsize,
    /// The relocation segment copies go to (format 6), kept from round to round until
    /// full.
    stream: Mutex<Option<Stream>>,
    /// Copies may have been installed into a relocation segment since the last checkpoint a
    /// round took: set before each install, cleared by the round's checkpoint. A round that
    /// failed between the two leaves it set, and the next round takes that checkpoint
    /// before it gives any victim back, even if it moves nothing itself.
    unimaged: AtomicBool,
    /// A `compact` is under way: puts are not paced meanwhile.
    compacting: AtomicBool,
    /// Segments a round found damaged and kept: not taken as victims again until the
    /// store is reopened (found by review: taken again every round, such a segment was
    /// read whole each time and its tombstones copied once more, without end). A segment
    /// kept for a read error (EIO) is not listed: the device may heal.
    damaged: Mutex<std::collections::BTreeSet<u64>>,
}

/// What `Store::compact` did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompactReport {
    /// Segments given back to the file system.
    pub segments_freed: u64,
    /// Bytes of records (puts and tombstones) rewritten at the log's tail.
    pub bytes_moved: u64,
    /// Records rewritten.
    pub records_moved: u64,
}

/// How full the closed segments (wholly written and flushed) are.
struct Space {
    /// The closed segments, oldest first.
    pub closed: Vec<SegmentUse>,
    /// Bytes a segment holds after its header.
    pub usable: u64,
    /// Dead bytes in the closed segments.
    pub dead: u64,
    /// Dead share of the closed segments' bytes.
    pub ratio: f64,
}

impl Space {
    /// The dead share of the closed segments but `gone` (a round's victims).
    fn ratio_without(&self, gone: &[u64]) -> f64 {
        let (written, live) = self
            .closed
            .iter()
            .filter(|u| !gone.contains(&u.logical))
            .fold((0u64, 0u64), |(w, l), u| {
                (w + u.written, l + u.live.min(u.written))
            });
        if written == 0 {
            0.0
        } else {
            (written - live) as f64 / written as f64
        }
    }
}

/// At most this many victims per round (one sync, or checkpoint, per round).
const MAX_VICTIMS: usize = 32;
/// Bytes of records the reclaimer re-appends at a time.
const BATCH: usize = 8 << 20;
/// Threads that read a batch of live records.
const READERS: usize = 4;
/// A background round moves at most this many live bytes (but always up to one
/// segment's; while puts are paced, up to half a segment more, within two segments'
/// worth, `choose`): its copies are written before its victims go, so the file grows by
/// them meanwhile. Two 256 MiB segments' worth made the worst disk_file 1.48x the live bytes
/// of a 4 GB store under uniform overwrites, one segment's 1.38x (DESIGN.md).
const ROUND_BYTES: u64 = 256 << 20;

/// Records of a segment whose bytes lie at most this far apart are read as one run.
const RUN_GAP: u64 = 32 << 10;
/// A run grows no longer than this (a longer record is a run of its own).
const RUN_MAX: u64 = 1 << 20;
/// How far below `reclaim_urgent` the dead share after a round must be for paced puts to
/// get the whole rate (`Pace`).
const PACE_BAND: f64 = 0.08;
/// Paced puts are held back by the dead share (`Pace::apply`) only once the closed
/// segments hold at least this many segments of dead bytes; before, they go at
/// `MAX_PACE` times the reclaimer's rate.
const STOP_SEGMENTS: u64 = 2;
/// The pace of puts before any round was measured (bytes per second).
const FIRST_PACE: f64 = 64.0 * 1024.0 * 1024.0;
/// Paced puts may go at most this many times the reclaimer's rate (when the dead share
/// after the round is far below `reclaim_urgent`).
const MAX_PACE: f64 = 2.0;
/// The longest a put waits for the reclaimer.
const MAX_THROTTLE: Duration = Duration::from_secs(2);
/// Puts' pace while the ring drains before a grant (`drain_before_grant`), in bytes per
/// second.
const DRAIN_PACE: f64 = 128.0 * 1024.0 * 1024.0;
/// The longest a paced put sleeps before it looks at the bucket again.
const WAIT_STEP: Duration = Duration::from_millis(10);
/// The bucket holds at most this long's worth of the pace: the burst puts may make after
/// a pause.
const BUCKET_TIME: Duration = Duration::from_millis(50);

impl Reclaimer {
    pub fn new(engine: Arc<Engine>, ckpt: Arc<Checkpointer>, signal: Arc<Signal>) -> Reclaimer {
        let paced = engine.ring().paced_flag();
        Reclaimer {
            engine,
            ckpt,
            signal,
            running: Mutex::new(()),
            progress: Mutex::new(Progress::default()),
            throttle: Throttle::new(paced),
            iterations: AtomicUsize::new(0),
            stream: Mutex::new(None),
            unimaged: AtomicBool::new(false),
            compacting: AtomicBool::new(false),
            damaged: Mutex::new(std::collections::BTreeSet::new()),
        }
    }

    /// Closes the relocation segment, if one is open (at close: the store stops).
    pub fn close_stream(&self) -> Result<()> {
        let _one = self.running.lock();
        let s = self.stream.lock().take();
        let closed = match s {
            Some(s) => s.close(&self.engine),
            None => Ok(()),
        };
        // A segment granted ahead and never used: closed empty (see `Stream::close`).
        match self.engine.ring().take_grant() {
            Some(Ok(g)) => closed.and(Stream::new(g).close(&self.engine)),
            _ => closed,
        }
    }

    /// A key iteration begins: no round starts until it ends (a round moves records, and
    /// the iteration would miss a key moved past it). Waits for a round under way.
    pub fn begin_iteration(&self) {
        self.iterations.fetch_add(1, Ordering::AcqRel);
        drop(self.running.lock());
    }

    /// A key iteration ended.
    pub fn end_iteration(&self) {
        self.iterations.fetch_sub(1, Ordering::AcqRel);
    }

    /// Bytes and records moved, and rounds run, since open.
    pub fn figures(&self) -> (u64, u64, u64) {
        let p = self.progress.lock();
        (p.bytes_moved, p.records_moved, p.rounds)
    }

    /// The closed segments and their dead share.
    fn space(&self) -> Space {
        self.space_with(true)
    }

    /// `space`; `measure`: first ask the file system about closed segments not measured
    /// yet (`Segments::measure`: after an open, every segment), which a put's thread
    /// leaves to the reclaimer's.
    fn space_with(&self, measure: bool) -> Space {
        let flushed = self.engine.ring().lock().flushed;
        let size = self.engine.segs().size();
        let usable = size - SEG_HEADER;
        let segs = self.engine.segs();
        if measure {
            segs.measure(flushed);
        }
        let damaged = self.damaged.lock();
        let closed: Vec<SegmentUse> = segs
            .usage()
            .into_iter()
            .filter(|u| {
                (u.logical + 1) * size <= flushed
                    && !segs.is_relocating(u.logical)
                    && !damaged.contains(&u.logical)
            })
            .collect();
        drop(damaged);
        let written: u64 = closed.iter().map(|u| u.written).sum();
        let live: u64 = closed.iter().map(|u| u.live.min(u.written)).sum();
        let mut space = Space {
            ratio: 0.0,
            closed,
            usable,
            dead: written - live,
        };
        space.ratio = space.ratio_without(&[]);
        space
    }

    /// The background reclaimer's thread: looks every 100 ms (and when a segment opens)
    /// until told to stop. Lets held-back puts go when it ends, however it ends.
    pub fn run(&self) {
        struct LetPutsGo<'a>(&'a Throttle);
        impl Drop for LetPutsGo<'_> {
            fn drop(&mut self) {
                self.0.set(false);
            }
        }
        let _go = LetPutsGo(&self.throttle);
        if !self.engine.opts().background_reclaim {
            return;
        }
        // After NoSpace (no room for a relocation segment or for the image that must cover
        // a round's copies), the pause doubles up to NO_SPACE_PAUSE_MAX.
        let mut no_space = Duration::ZERO;
        // Wake-ups (a put entering a new segment) do not cut a pause short.
        let mut not_before = Instant::now();
        while !self.signal.wait(Duration::from_millis(100)) {
            // Slots given back with their blocks, that no segment took meanwhile.
            self.engine.segs().expire_recycled(RECYCLE_WAIT);
            // Not on a failed store: every try would fail, and log so, every 100 ms.
            if !self.engine.latch().is_failed() {
                if let Err(e) = self.engine.segs().grow_ahead() {
                    self.engine
                        .log()
                        .warn(&format!("growing disk_file ahead: {e}"));
                }
            }
            if Instant::now() < not_before {
                continue;
            }
            let (e, pause) = match self.background_pass() {
                Ok(()) | Err(Error::Closed) => {
                    no_space = Duration::ZERO;
                    continue;
                }
                // Nothing more can be written: stay idle until close.
                Err(Error::Failed(_)) => return,
                Err(Error::NoSpace) => {
                    no_space = (no_space * 2).clamp(Duration::from_secs(1), NO_SPACE_PAUSE_MAX);
                    (Error::NoSpace, no_space)
                }
                Err(e) => (e, Duration::from_secs(1)),
            };
            self.engine.log().error(&format!(
                "reclaim failed: {e}; retrying in {} s",
                pause.as_secs()
            ));
            not_before = Instant::now() + pause;
        }
    }

    fn stopping(&self) -> bool {
        self.signal.stopping()
    }

    /// A put's side of the throttle: while the file is over its bound, waits for the
    /// reclaimer's credit for `bytes` (at most `MAX_THROTTLE` per put, so a stuck
    /// reclaimer cannot stop writes).
    pub fn wait_for_room(&self, bytes: u64) {
        self.throttle.wait(bytes)
    }

    /// Called when the log enters a new segment: wakes the reclaimer, and starts pacing puts
    /// at once if the dead share is already past `reclaim_urgent` (the reclaimer then sets
    /// the pace, and ends it with its pass).
    pub fn segment_opened(&self) {
        if !self.engine.opts().background_reclaim {
            return;
        }
        if self.space_with(false).ratio >= self.engine.opts().reclaim_urgent
            && !self.compacting.load(Ordering::SeqCst)
        {
            self.throttle.set(true);
            // A compaction that began meanwhile turned pacing off before this set it on:
            // it set its flag first, so it is seen here.
            if self.compacting.load(Ordering::SeqCst) {
                self.throttle.set(false);
            }
        }
        self.signal.wake();
    }

    /// Rounds while the dead share is at or above `reclaim_threshold`, until it falls
    /// below three quarters of it.
    fn background_pass(&self) -> Result<()> {
        let threshold = self.engine.opts().reclaim_threshold;
        let space = self.space();
        if space.ratio < threshold || space.dead < self.progress.lock().idle_until_dead {
            self.throttle.set(false);
            return Ok(());
        }
        let res = (|| loop {
            // One round per hold, so a `compact` call waits one round at most.
            let _one = self.running.lock();
            let space = self.space();
            let iterating = self.iterations.load(Ordering::Acquire) > 0;
            if space.ratio < threshold * 0.75 || self.stopping() || iterating {
                return Ok(());
            }
            let urgent = space.ratio >= self.engine.opts().reclaim_urgent;
            let chosen = choose(
                &space.closed,
                self.engine.segs().has_relocation(),
                urgent || self.throttle.is_on(),
                space.usable,
                self.round_budget(space.usable, ROUND_BYTES),
            );
            if chosen.is_empty() {
                return Ok(());
            }
            // Once past `reclaim_urgent`, puts stay paced until the pass ends.
            if urgent {
                self.throttle.set(true);
            }
            let victims: Vec<u64> = chosen.iter().map(|u| u.logical).collect();
            let pace = Pace::new(&chosen, space.usable, self.progress.lock().gain_rate);
            let gain = pace.gain;
            let started = Instant::now();
            let (freed, bytes, records) = self.round(&victims, Some(pace))?;
            // What this round gave back per second, folded into the pace of the next.
            let measured =
                (freed * space.usable).min(gain) as f64 / started.elapsed().as_secs_f64().max(1e-3);
            {
                let mut p = self.progress.lock();
                p.gain_rate = if p.gain_rate == 0.0 {
                    measured
                } else {
                    0.5 * p.gain_rate + 0.5 * measured
                };
            }
            self.engine.log().info(&format!(
                "reclaim: {freed} of {} segments freed, {records} records ({bytes} bytes) \
                 moved in {} ms; dead share was {:.2}{}",
                victims.len(),
                started.elapsed().as_millis(),
                space.ratio,
                if urgent { ", puts paced" } else { "" }
            ));
            if (freed * space.usable) < bytes + space.usable / 4 {
                // No real gain: wait for more dead bytes before trying again.
                self.progress.lock().idle_until_dead = space.dead + space.usable;
                return Ok(());
            }
            // A real gain: the wait a poor round set is over (left, it held the next
            // passes back until the dead bytes climbed past it again).
            self.progress.lock().idle_until_dead = 0;
        })();
        self.throttle.set(false);
        res
    }

    /// Live bytes one round may move: two segments' worth but at most `cap` (and at
    /// least one segment's), or half a segment's when the file system has less than three
    /// segments free (the copies must fit in the space kept
    /// for the reclaimer; emptier victims come first anyway).
    fn round_budget(&self, usable: u64, cap: u64) -> u64 {
        let size = self.engine.segs().size();
        // A free slot is no room: it was punched, and a relocation segment in it needs a
        // segment's worth free like one that grows the file (found by review: with free
        // slots and under three segments free, a round of two segments' worth failed at
        // its second grant and gave nothing back, and every later round failed the same).
        let low = self.engine.disk().available().unwrap_or(0) < 3 * size;
        round_budget(usable, cap, low)
    }

    /// `Store::compact`: reclaims every closed segment `worth_compacting`, at full speed,
    /// and returns what it did.
    pub fn compact(&self) -> Result<CompactReport> {
        let mut one = self.running.lock();
        // Moving records under an open key iteration could make it miss keys.
        let deadline = Instant::now() + MAX_THROTTLE;
        while self.iterations.load(Ordering::Acquire) > 0 {
            if Instant::now() >= deadline {
                return Err(Error::InvalidArgument(
                    "a key iteration is open: close it before compacting".into(),
                ));
            }
            MutexGuard::unlocked(&mut one, || std::thread::sleep(Duration::from_millis(10)));
        }
        let space = self.space();
        let live: BTreeMap<u64, u64> = space.closed.iter().map(|c| (c.logical, c.live)).collect();
        let mut todo: Vec<SegmentUse> = by_cost(&space.closed, self.engine.segs().has_relocation())
            .into_iter()
            .filter(|u| worth_compacting(u.written, live[&u.logical], space.usable))
            .collect();
        let mut report = CompactReport::default();
        // A compaction does not pace puts: a put's segment that found the dead share past
        // `reclaim_urgent` turned pacing on at a rate no round would set while this one
        // held `running`, and every put waited the most it may (found by review).
        self.compacting.store(true, Ordering::SeqCst);
        let _done = Compacting(&self.compacting);
        self.throttle.set(false);
        while !todo.is_empty() {
            let victims = pick(
                &todo,
                space.usable,
                self.round_budget(space.usable, u64::MAX),
            );
            if victims.is_empty() {
                // The rest look full to `pick` (live bytes and tombstones to copy fill
                // them): nothing to gain. Looping on would never end (found by review).
                break;
            }
            todo.retain(|u| !victims.contains(&u.logical));
            let (freed, bytes, records) = self.round(&victims, None)?;
            report.segments_freed += freed;
            report.bytes_moved += bytes;
            report.records_moved += records;
        }
        // The dead bytes a poor background round left behind are gone: its wait is over
        // (found by review: left, background reclaiming stayed idle after a compaction
        // until the dead bytes climbed back past what they had been).
        self.progress.lock().idle_until_dead = 0;
        // Slots kept for the next segments (`Segments::unrecycle`): a compaction gives
        // back all it can.
        self.engine.segs().unrecycle()?;
        self.engine.log().info(&format!(
            "compact: {} segments freed, {} records ({} bytes) moved",
            report.segments_freed, report.records_moved, report.bytes_moved
        ));
        Ok(report)
    }

    /// One round over `victims` (logical segments): move, make durable, release. Returns the
    /// segments freed, bytes moved and records moved. `pace` (background rounds): paced
    /// by `reclaim_rate` while the dead share is below `reclaim_urgent` and puts are not
    /// paced, and pacing puts while it is above.
    fn round(&self, victims: &[u64], pace: Option<Pace>) -> Result<(u64, u64, u64)> {
        let mut victims = victims.to_vec();
        victims.sort_unstable();
        // The victims durable before anything is copied out of them: a copy stands alone
        // (a batch's Commit is not copied), so a copy that outlived a power cut which
        // took the batch it came from would bring back half of that batch. Found by
        // review; nothing to do unless a victim was written since the last fdatasync.
        let size = self.engine.segs().size();
        if let Some(&newest) = victims.last() {
            self.engine.ring().flush_to((newest + 1) * size, true)?;
        }
        if self.unimaged.load(Ordering::Acquire) {
            // A round before failed after installing copies: their image first, before
            // this one spends space on more copies (found by review: on a nearly full
            // disk each retry copied again and failed at the image again).
            self.ckpt.checkpoint_changes()?;
            self.unimaged.store(false, Ordering::Release);
        }
        let mapped: Vec<u64> = self
            .engine
            .segs()
            .mapped()
            .into_iter()
            .map(|(l, _)| l)
            .collect();
        let listed: Vec<u64> = victims
            .iter()
            .copied()
            .filter(|&l| self.engine.segs().no_tombs(l))
            .collect();
        let by_segment = self.live_locations(&listed);
        let mut mover = Mover {
            inner: self,
            buf: Vec::new(),
            items: Vec::new(),
            bytes: 0,
            records: 0,
            started: Instant::now(),
            pace,
        };
        if let Some(p) = &mover.pace {
            p.apply(
                &self.throttle,
                &self.space(),
                self.engine.opts().reclaim_urgent,
                0,
            );
        }
        let mut whole = Vec::with_capacity(victims.len());
        // Victims whose tombstones this round leaves behind (`oldest`).
        let mut dropped = Vec::with_capacity(victims.len());
        // No room for a relocation segment: the victims done are still given back.
        let mut out_of_room = false;
        for i in 0..victims.len() {
            let l = victims[i];
            // A tombstone hides older puts of its key in older segments; with no older
            // segment left but earlier victims of this round (given back first, in order),
            // there is nothing left for it to hide. Only if those were read whole: one
            // with damage in it stays, and so do the puts its tombstones hide (found by
            // review: a deleted key came back on a rebuild).
            let oldest = mapped
                .iter()
                .take_while(|&&m| m < l)
                .all(|m| victims[..i].contains(m))
                && whole.iter().all(|&w| w);
            let moved = if listed.contains(&l) {
                // Only puts matter here, and the index says where the live ones are.
                let locs = by_segment.get(&l).map_or(&[][..], |v| &v[..]);
                self.move_listed(locs, &mut mover)
            } else {
                self.move_scanned(l, oldest, &mut mover)
            };
            match moved.and_then(|complete| mover.flush().map(|()| complete)) {
                Ok(complete) => {
                    whole.push(complete);
                    dropped.push(oldest && !listed.contains(&l));
                }
                Err(Error::NoSpace) => {
                    // This victim stays (what it copied is installed and imaged below,
                    // what it did not still lies in it), and so do the later ones; those
                    // done are given back. Before, the round gave back nothing, not even
                    // victims with nothing live, again at every retry (found by review).
                    self.engine.log().warn(&format!(
                        "reclaim: no room for a relocation segment while moving log segment \
                         {l}; giving back the {i} victim(s) done"
                    ));
                    whole.push(false);
                    dropped.push(false);
                    victims.truncate(i + 1);
                    out_of_room = true;
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        let (bytes, records) = (mover.bytes, mover.records);
        {
            let mut st = self.progress.lock();
            st.bytes_moved += bytes;
            st.records_moved += records;
            st.rounds += 1;
        }
        // The log becomes durable before any victim goes (see the module docs).
        let newest_end = victims.last().map_or(0, |&l| (l + 1) * size);
        if self.unimaged.load(Ordering::Acquire) {
            // Copies in the relocation segment lie below the tail: an image taken during
            // the round (or a failed round before it) may cover them without their
            // installs (relocate.rs).
            self.ckpt.checkpoint_changes()?;
            self.unimaged.store(false, Ordering::Release);
        } else if newest_end > self.ckpt.covered() {
            self.ckpt.checkpoint()?;
        } else {
            self.engine.ring().flush_pinned()?;
        }
        let live: BTreeMap<u64, u64> = self
            .engine
            .segs()
            .usage()
            .into_iter()
            .map(|u| (u.logical, u.live))
            .collect();
        let mut gone = Vec::with_capacity(victims.len());
        let mut kept_below = false;
        for ((&l, ok), dropped) in victims.iter().zip(whole).zip(dropped) {
            let left = live.get(&l).copied().unwrap_or(0);
            if !ok || left != 0 {
                if ok {
                    self.engine.log().error(&format!(
                        "reclaim: log segment {l} still holds {left} live bytes; keeping it"
                    ));
                }
                kept_below = true;
                continue;
            }
            if kept_below && dropped {
                // Its tombstones were left behind for the victims below it, and one of
                // those stays: they still hide records there.
                self.engine.log().warn(&format!(
                    "reclaim: keeping log segment {l}: its tombstones hide records in a \
                     segment below it that stays"
                ));
                continue;
            }
            gone.push(l);
        }
        // Oldest first (`victims` is sorted): see `Segments::release_all`.
        self.engine.segs().release_all(&gone)?;
        if out_of_room && gone.is_empty() {
            return Err(Error::NoSpace);
        }
        Ok((gone.len() as u64, bytes, records))
    }

    /// The locations the index holds in the logical segments `segs`, by segment, in log
    /// order. One pass over the index's node pool (`Engine::for_each_location`): the
    /// victims are closed, so no entry comes to point into them during it, and an entry
    /// that leaves them during it is caught by `is_current` when its record is read.
    fn live_locations(&self, segs: &[u64]) -> BTreeMap<u64, Vec<Location>> {
        let mut out: BTreeMap<u64, Vec<Location>> = BTreeMap::new();
        if segs.is_empty() {
            return out;
        }
        let mut segs = segs.to_vec();
        segs.sort_unstable();
        let (lo, hi) = (segs[0], segs[segs.len() - 1]);
        let size = self.engine.segs().size();
        self.engine.for_each_location(|loc| {
            let l = loc.offset / size;
            if (lo..=hi).contains(&l) && segs.binary_search(&l).is_ok() {
                out.entry(l).or_default().push(loc);
            }
        });
        for v in out.values_mut() {
            v.sort_unstable_by_key(|loc| loc.offset);
        }
        out
    }

    /// Reads the records at `locs` (from the index, in log order) into `mover`, a batch at
    /// a time with `READERS` threads (a disk serves several reads at once much faster than
    /// one after another). Records close together are read as one run (`runs`): 1 KiB
    /// records read one by one cost a 4 KiB block or two each. The next batch is read while
    /// `mover` writes this one's copies and makes them durable, so that the disk does not
    /// wait for the reclaimer between the two. Returns false if a live one could not be
    /// read whole (the segment must then stay).
    fn move_listed(&self, locs: &[Location], mover: &mut Mover<'_>) -> Result<bool> {
        let runs = runs(locs);
        let mut groups = Vec::new();
        let mut rest = &runs[..];
        while !rest.is_empty() {
            let mut n = 0;
            let mut bytes = 0;
            while n < rest.len() && (n == 0 || bytes < BATCH) {
                bytes += span(locs, &rest[n]);
                n += 1;
            }
            let (group, tail) = rest.split_at(n);
            groups.push(group);
            rest = tail;
        }
        std::thread::scope(|s| {
            let groups = &groups;
            let read_ahead = |i: usize| {
                let group: &[Range<usize>] = groups[i];
                spawn_reader(s, move || self.read_parallel(locs, group))
            };
            let joined = |h| self.join_reader(h);
            let mut next = (!groups.is_empty()).then(|| read_ahead(0));
            let res = (|| {
                let mut whole = true;
                for (i, &group) in groups.iter().enumerate() {
                    if self.stopping() {
                        return Err(Error::Closed);
                    }
                    let reads = match next.take() {
                        Some(Ok(h)) => joined(h)?,
                        // No thread to spare: read it here.
                        _ => self.read_parallel(locs, group)?,
                    };
                    next = (i + 1 < groups.len()).then(|| read_ahead(i + 1));
                    whole &= self.copy_read(locs, group, reads, mover)?;
                }
                Ok(whole)
            })();
            // A read ahead still running after an early return: joined here, so that a
            // panic in it latches the store instead of turning the error into a panic
            // when the scope ends.
            if let Some(Ok(h)) = next.take() {
                let _ = joined(h);
            }
            res
        })
    }

    /// Hands the records of `group` (runs of `locs`, as `read_parallel` read them) to
    /// `mover`. Returns false if a live one was not read whole.
    fn copy_read(
        &self,
        locs: &[Location],
        group: &[Range<usize>],
        reads: Vec<Option<Blocks>>,
        mover: &mut Mover<'_>,
    ) -> Result<bool> {
        let mut whole = true;
        for (run, read) in group.iter().zip(reads) {
            for &loc in &locs[run.clone()] {
                let at = read.as_ref().map(|b| {
                    let from = (loc.offset - locs[run.start].offset) as usize;
                    &b.as_slice()[from..from + loc.len as usize]
                });
                let sound = at.and_then(|rec| {
                    let (head, body) = rec.split_at(HEADER_LEN);
                    let head: &[u8; HEADER_LEN] = head.try_into().ok()?;
                    let p = parse_put(head, body, loc.len, self.engine.sum_key(), false);
                    Some((p, head, body))
                });
                match sound {
                    Some((Ok(p), _, _)) => mover.add(loc.offset, &p.header, p.key, p.value)?,
                    // Overwritten or deleted since the index was read is fine; else the
                    // record is damaged and the segment is kept (verify reports it).
                    Some((Err(_), head, body)) if !self.is_current(head, body, loc) => {}
                    _ => {
                        self.engine.log().error(&format!(
                            "reclaim: the live record at {} is unreadable; keeping its \
                             segment",
                            loc.offset
                        ));
                        whole = false;
                    }
                }
            }
        }
        Ok(whole)
    }

    /// What a reader thread returned; a panic in it latches the store (a bug).
    fn join_reader<T>(&self, h: ScopedJoinHandle<'_, Result<T>>) -> Result<T> {
        h.join()
            .unwrap_or_else(|_| Err(self.engine.latch().fail("a reclaim reader panicked")))
    }

    /// Reads each run of `locs` (`runs`) from disk_file into memory of its own with up to
    /// `READERS` threads, in order; `None` for a run whose segment is no longer mapped.
    fn read_parallel(
        &self,
        locs: &[Location],
        runs: &[Range<usize>],
    ) -> Result<Vec<Option<Blocks>>> {
        let read_run = |run: &Range<usize>| -> Result<Option<Blocks>> {
            let at = locs[run.start].offset;
            let len = span(locs, run);
            match self.engine.segs().read_record_owned(at, len) {
                // A bad stretch of the device: the run's records are unreadable, their
                // segment stays (`copy_read`), and the round goes on with the rest. Any
                // other error (no memory, say) ends the round, to be tried again.
                Err(e) if e.errno() == Some(libc::EIO) => {
                    self.engine.log().error(&format!(
                        "reclaim: reading the log at [{at}, {}) failed: {e}",
                        at + len as u64
                    ));
                    Ok(None)
                }
                r => r,
            }
        };
        let read_chunk = |chunk: &[Range<usize>]| chunk.iter().map(read_run).collect();
        let per = runs.len().div_ceil(READERS).max(1);
        let parts: Vec<Result<Vec<Option<Blocks>>>> = std::thread::scope(|s| {
            let started: Vec<_> = runs
                .chunks(per)
                .map(|chunk| (chunk, spawn_reader(s, move || read_chunk(chunk))))
                .collect();
            started
                .into_iter()
                .map(|(chunk, h)| match h {
                    Ok(h) => self.join_reader(h),
                    // No thread to spare (a thread or memory limit): read it here.
                    Err(_) => read_chunk(chunk),
                })
                .collect()
        });
        let mut out = Vec::with_capacity(runs.len());
        for p in parts {
            out.extend(p?);
        }
        Ok(out)
    }

    /// Whether some index entry still points at `loc` (judged by the key in `rest`, if the
    /// header is readable; else conservatively yes).
    fn is_current(&self, head: &[u8; HEADER_LEN], rest: &[u8], loc: Location) -> bool {
        match Header::decode(head, self.engine.sum_key()) {
            Ok(h) if (h.key_len as usize) <= rest.len() => {
                let kh = self.engine.hash(&rest[..h.key_len as usize]);
                self.engine.lookup(&kh) == Some(loc)
            }
            _ => true,
        }
    }

    /// Reads all of segment `l` into `mover` (puts and, unless `oldest`, tombstones).
    /// Returns false if the segment does not read whole to its end (it must then stay).
    fn move_scanned(&self, l: u64, oldest: bool, mover: &mut Mover<'_>) -> Result<bool> {
        let size = self.engine.segs().size();
        let Some(at) = self.engine.segs().physical(l * size) else {
            return Ok(false);
        };
        let first_seq = self.engine.segs().first_seq(l).unwrap_or(0);
        let seqs = (first_seq.saturating_sub(1), first_seq);
        let scan = scan::scan(self.engine.disk(), at, SEG_HEADER, size, seqs, |item| {
            if self.stopping() {
                return Err(Error::Closed);
            }
            let keep = match item.header.kind {
                Kind::Put => true,
                Kind::Delete => !oldest,
                _ => false, // a batch's Commit: its moved records stand alone
            };
            if keep {
                mover.add(l * size + item.pos, item.header, item.key, item.value)?;
            }
            Ok(())
        });
        let scan = match scan {
            // A bad stretch of the device: the segment stays (what it holds past the bad
            // stretch cannot be moved), and the round goes on with the other victims, as
            // for an unreadable run of listed records. Found by review: an EIO here ended
            // every round, so one bad sector in a segment with tombstones stopped all
            // reclaiming. Copies already made of its records are current and harmless.
            Err(e) if e.errno() == Some(libc::EIO) => {
                self.engine.log().error(&format!(
                    "reclaim: reading log segment {l} failed ({e}); keeping it"
                ));
                return Ok(false);
            }
            r => r?,
        };
        self.engine.disk().drop_cache(at, size);
        // A segment with damage in it stays: what the damage hid cannot be moved.
        // A relocation segment left open by a crash or failure ends where its writes did:
        // its unwritten rest is no damage. One closed properly (its key summary reaches
        // the segment's end) ends with a Pad to its end, so a short read there is damage
        // (a damaged header of its last record; found by review: the segment was given
        // back, and a tombstone copy in it with it).
        let closed = self
            .engine
            .segs()
            .summaries()
            .header(l, self.engine.segs().first_seq(l).unwrap_or(0))
            .is_some_and(|h| h.end == size);
        let short_ok = scan.rest.is_some() && self.engine.segs().is_relocation(l) && !closed;
        let complete = (scan.end == size || short_ok) && scan.damage.is_empty();
        if !complete {
            self.damaged.lock().insert(l);
            let at_off = scan.damage.first().map_or(scan.end, |d| d.start);
            let why = scan
                .damage
                .first()
                .map(|d| d.what.clone())
                .or(scan.rest)
                .unwrap_or_else(|| "unknown".into());
            self.engine.log().error(&format!(
                "reclaim: log segment {l} is damaged at {} ({why}); keeping it",
                l * size + at_off
            ));
        }
        Ok(complete)
    }

    /// Moves each record of `items` (offset, header, start of its key and value in `buf`)
    /// that still matters: a put the index still points at, or a tombstone of a key that
    /// is still absent. In format 6 into the relocation segment (`relocate_to_stream`);
    /// before, re-appended at the log's tail under one hold of the ring lock. Returns bytes
    /// and records moved.
    fn relocate(&self, items: &[(u64, Header, usize)], buf: &[u8]) -> Result<(u64, u64)> {
        let moved: Vec<Moved<'_>> = items
            .iter()
            .map(|&(off, h, at)| {
                let key = &buf[at..at + h.key_len as usize];
                let (value, when) = if h.kind == Kind::Put {
                    let loc = Location {
                        offset: off,
                        len: h.record_len() as u32,
                    };
                    let value = &buf[at + h.key_len as usize..at + h.record_len() - HEADER_LEN];
                    (value, When::At(loc))
                } else {
                    (&[][..], When::Absent)
                };
                Moved {
                    kh: self.engine.hash(key),
                    from: off,
                    append: Append {
                        kind: h.kind,
                        key,
                        value,
                        data_sum: h.data_sum,
                        when,
                    },
                }
            })
            .collect();
        if self.engine.segs().has_relocation() {
            self.unimaged.store(true, Ordering::Release);
            return self.relocate_to_stream(&moved);
        }
        let mut g = self.engine.ring().lock();
        let (mut bytes, mut records) = (0, 0);
        for m in &moved {
            if let Some(done) = self.engine.append_locked(&mut g, &m.append, &m.kh, true)? {
                bytes += done.padded;
                records += 1;
            }
        }
        Ok((bytes, records))
    }

    /// Before a grant while puts are not paced: a grant needs the ring written out, and
    /// puts wait while it is (`WriteBuffer::jump`): a full ring (256 MiB) at full speed
    /// held them 115-192 ms. So puts are slowed to `DRAIN_PACE` until the ring holds at
    /// most `GRANT_BACKLOG` (or `MAX_THROTTLE` passes), and then wait only for that much.
    /// `force`: slow puts even if the ring holds little now. Returns whether it slowed
    /// them: they stay slowed (so the grant comes at once, closing the tail's segment
    /// early) until the caller lets them go.
    fn drain_before_grant(&self, force: bool) -> bool {
        let ring = self.engine.ring();
        if self.throttle.is_on() || (!force && ring.backlog() <= GRANT_BACKLOG) {
            return false;
        }
        self.throttle.set_rate(DRAIN_PACE);
        self.throttle.set(true);
        let deadline = Instant::now() + MAX_THROTTLE;
        while ring.backlog() > GRANT_BACKLOG && Instant::now() < deadline && !self.stopping() {
            std::thread::sleep(Duration::from_millis(2));
        }
        true
    }

    /// `relocate` in a store of format 6: the copies go to the relocation segment
    /// (`relocate.rs`), a new one whenever it is full.
    fn relocate_to_stream(&self, moved: &[Moved<'_>]) -> Result<(u64, u64)> {
        let size = self.engine.segs().size();
        let above = moved.iter().map(|m| m.from / size).max().unwrap_or(0);
        let mut stream = self.stream.lock();
        if stream.as_ref().is_some_and(|s| s.logical() <= above) {
            // A copy must lie above its original's segment (relocate.rs).
            let below = stream.take().expect("the stream is open");
            below.close(&self.engine)?;
        }
        let (mut bytes, mut records) = (0, 0);
        let mut rest = moved;
        while !rest.is_empty() {
            let s = match stream.as_mut() {
                Some(s) => s,
                None => {
                    let mut slowed = self.drain_before_grant(false);
                    let opened = loop {
                        match Stream::open(&self.engine, self.throttle.is_on(), above) {
                            // Refused (the ring filled while the grant waited for a
                            // boundary): puts are slowed whatever the ring holds, so the
                            // next grant is in a hurry, and that one is never refused.
                            Ok(None) => slowed |= self.drain_before_grant(true),
                            Ok(Some(s)) => break Ok(s),
                            Err(e) => break Err(e),
                        }
                    };
                    if slowed {
                        self.throttle.set(false);
                    }
                    stream.insert(opened?)
                }
            };
            let fresh = s.is_fresh();
            let (taken, b, r) = s.write(&self.engine, rest)?;
            bytes += b;
            records += r;
            rest = &rest[taken..];
            if !rest.is_empty() {
                // The next copy does not fit: the segment is full.
                if fresh && taken == 0 {
                    return Err(Error::corrupt(
                        None,
                        "reclaim: a record does not fit in an empty relocation segment",
                    ));
                }
                let full = stream.take().expect("the stream is open");
                full.close(&self.engine)?;
            }
        }
        Ok((bytes, records))
    }
}

/// Records read from victims, re-appended a batch at a time (one hold of the ring lock,
/// so puts cannot take the room between the reclaimer's records).
struct Mover<'a> {
    inner: &'a Reclaimer,
    buf: Vec<u8>,
    items: Vec<(u64, Header, usize)>,
    bytes: u64,
    records: u64,
    started: Instant,
    /// A background round's: its own pacing and that of puts.
    pace: Option<Pace>,
}

impl Mover<'_> {
    fn add(&mut self, off: u64, h: &Header, key: &[u8], value: &[u8]) -> Result<()> {
        let at = self.buf.len();
        self.buf.extend_from_slice(key);
        self.buf.extend_from_slice(value);
        self.items.push((off, *h, at));
        if self.buf.len() >= BATCH {
            self.flush()?;
        }
        Ok(())
    }

    /// Appends the batch; then, in the background, sets the pace of puts (`Pace::apply`),
    /// and keeps to `reclaim_rate` while the dead share is below `reclaim_urgent` and puts
    /// are not paced (see `self_limited`).
    fn flush(&mut self) -> Result<()> {
        if !self.items.is_empty() {
            let (b, r) = self.inner.relocate(&self.items, &self.buf)?;
            self.bytes += b;
            self.records += r;
            self.items.clear();
            self.buf.clear();
        }
        if let Some(p) = &self.pace {
            let space = self.inner.space();
            let urgent = self.inner.engine.opts().reclaim_urgent;
            p.apply(&self.inner.throttle, &space, urgent, self.bytes);
            if self_limited(space.ratio, urgent, self.inner.throttle.is_on()) {
                pace(
                    self.inner.engine.opts().reclaim_rate,
                    self.bytes,
                    self.started,
                );
            }
        }
        Ok(())
    }
}

/// A reader thread (`kvs-reclaim-read`) in scope `s`; an error if none can be started
/// (a thread or memory limit), and then the caller reads itself.
fn spawn_reader<'scope, T: Send + 'scope>(
    s: &'scope Scope<'scope, '_>,
    f: impl FnOnce() -> T + Send + 'scope,
) -> std::io::Result<ScopedJoinHandle<'scope, T>> {
    std::thread::Builder::new()
        .name("kvs-reclaim-read".into())
        .spawn_scoped(s, f)
}

/// The bytes from the start of the run's first record to the end of its last.
fn span(locs: &[Location], run: &Range<usize>) -> usize {
    let last = locs[run.end - 1];
    (last.offset + last.len as u64 - locs[run.start].offset) as usize
}

/// Splits `locs` (in log order, one segment) into runs read with one I/O each: records at
/// most `RUN_GAP` apart, spanning at most `RUN_MAX` (or one record). The ranges index
/// `locs`.
fn runs(locs: &[Location]) -> Vec<Range<usize>> {
    let mut out: Vec<Range<usize>> = Vec::new();
    for (i, loc) in locs.iter().enumerate() {
        if let Some(run) = out.last_mut() {
            let first = locs[run.start].offset;
            let end = first + span(locs, run) as u64;
            if loc.offset >= end
                && loc.offset - end <= RUN_GAP
                && loc.offset + loc.len as u64 - first <= RUN_MAX
            {
                run.end = i + 1;
                continue;
            }
        }
        out.push(i..i + 1);
    }
    out
}

/// The closed segments (oldest first) with `live` set to what a round must copy out of
/// each: its live bytes and, but in the oldest segment (where they hide nothing and are
/// dropped), its tombstones; best victim first by LFS's cost-benefit measure, the space
/// freed times its age over the cost of freeing it: (1 - u) * age / (1 + u), where u is
/// the share of its written bytes to copy (a segment closed early is judged by its
/// written part: its hole takes no space) and age counts segments back from the newest.
/// With copies kept apart from new puts (relocation segments, format 6) old segments hold
/// data that stays, and waiting for a young segment's hot records to die pays: Zipf 0.99
/// overwrites, 32 MiB segments, one run each: write amplification 1.88 at 1.29x space
/// against 2.00 at 1.33x for the emptiest first; uniform ones 2.33 at 1.34x against 2.31
/// at 1.34x. Counting tombstones makes the reclaimer take the segments that hold the puts
/// they hide before the tombstones themselves: after 90% of 4 M small records were
/// deleted, the tombstones' segments looked all dead and were taken early, their
/// tombstones copied while older segments remained (about 1.4 M such records moved, 0.5 M
/// with tombstones counted; one run each). Without relocation segments (stores of format 5
/// and older), the emptiest first (copies mix with new puts: cost-benefit raised write
/// amplification at 256 MiB segments, README).
fn by_cost(closed: &[SegmentUse], cost_benefit: bool) -> Vec<SegmentUse> {
    let oldest = closed.first().map(|u| u.logical);
    let mut out: Vec<SegmentUse> = closed
        .iter()
        .map(|u| SegmentUse {
            live: u.live
                + if Some(u.logical) == oldest {
                    0
                } else {
                    u.tombs
                },
            ..*u
        })
        .collect();
    // The copy cost per byte written: segments closed early are judged by their written
    // part (a hole takes no space, so freeing it gains nothing).
    if !cost_benefit {
        out.sort_by_key(|u| ((u.live as u128) << 32) / (u.written.max(1) as u128));
        return out;
    }
    let newest = closed.last().map_or(0, |u| u.logical);
    let benefit = |u: &SegmentUse| {
        let share = (u.live as f64 / u.written.max(1) as f64).min(1.0);
        let age = (newest + 1 - u.logical) as f64;
        (1.0 - share) * age / (1.0 + share)
    };
    // Stable: equal ones stay oldest first. Wholly live ones last (`pick` stops there).
    out.sort_by(|a, b| benefit(b).total_cmp(&benefit(a)));
    out.sort_by_key(is_full);
    out
}

/// Whether `compact` takes a segment with `written` bytes of which `live` are live: one
/// with nothing live always; else its dead bytes must pass 1/64 of it, and the Pads that
/// moving its records makes (each piece written ends with one, up to a block and a
/// header long) by as much again. Below that a compaction would mostly move them from
/// one segment into another: with 256 KiB segments each compaction moved 2 segments' worth
/// of records again and freed 2 segments, for ever, with nothing written in between
/// (the relocation segments it had written held only their Pads as dead bytes).
fn worth_compacting(written: u64, live: u64, usable: u64) -> bool {
    if live == 0 {
        // Nothing to move: giving it back costs a punch (found by review: charging it a
        // piece's Pads kept empty segments, such as a relocation segment closed unused).
        return true;
    }
    let pieces = live.div_ceil(BATCH as u64);
    let pads = pieces * (BLOCK + HEADER_LEN) as u64;
    written - live.min(written) >= usable / 64 + 2 * pads
}

/// `Reclaimer::round_budget`: half a segment's live bytes when space is `low`, else two
/// segments' worth but at most `cap` and at least one segment's.
fn round_budget(usable: u64, cap: u64, low: bool) -> u64 {
    if low {
        usable / 2
    } else {
        (2 * usable).min(cap.max(usable))
    }
}

/// A background round's victims (`pick`), as ranked (`live` counts what must be copied):
/// by cost-benefit where copies go to relocation segments (`by_cost`), except that a
/// round while puts are paced must give back at least half a segment (`gain`). Paced puts
/// go at the rate rounds give space back, and with one segment's budget cost-benefit may
/// pick one cold segment alone: Zipf 0.99 overwrites at 256 MiB segments picked one 82%
/// live, its round gave back 36 MB in 950 ms, and puts paced on it went at 20-30 MB/s for
/// a second (puts per 1 s window 11-46% to 205-331% of their mean). So the emptiest
/// segments join cost-benefit's pick until the round gives back half a segment, copying
/// up to half a segment more than `budget` but no more than two segments' worth in all
/// (nothing more when `budget` is below a segment: the file system is nearly full; so
/// with segments of 128 MiB or less, whose budget is two segments, only what fits in it);
/// if none can join, the emptiest are taken instead.
/// Before 2026-11-25 the emptiest always replaced cost-benefit's pick there: Zipf 0.99
/// overwrites of 10 GB at 256 MiB segments wrote 1.87-1.88 bytes per byte put against
/// 1.64-1.65 now, and puts went 600-625 against 693-730 MB/s (README).
fn choose(
    closed: &[SegmentUse],
    relocation: bool,
    paced: bool,
    usable: u64,
    budget: u64,
) -> Vec<SegmentUse> {
    let chosen = |ranked: Vec<SegmentUse>| {
        let victims = pick(&ranked, usable, budget);
        ranked
            .into_iter()
            .filter(|u| victims.contains(&u.logical))
            .collect::<Vec<_>>()
    };
    let first = chosen(by_cost(closed, relocation));
    if !(relocation && paced) || gain(&first, usable) >= usable / 2 {
        return first;
    }
    // Never past the two segments' worth the space kept for the reclaimer is sized for
    // (found by review: at 128 MiB segments or less, whose budget is two segments
    // already, a round could have copied two and a half).
    let stretch = if budget >= usable {
        (2 * usable).saturating_sub(budget).min(usable / 2)
    } else {
        0
    };
    let picked = first.len();
    let mut out = first;
    let mut live: u64 = out.iter().map(|u| u.live).sum();
    for u in by_cost(closed, false) {
        if gain(&out, usable) >= usable / 2
            || out.len() == MAX_VICTIMS
            || is_full(&u)
            || u.live >= usable
        {
            break;
        }
        if out.iter().any(|v| v.logical == u.logical) {
            continue;
        }
        if live + u.live > budget + stretch {
            break;
        }
        live += u.live;
        out.push(u);
    }
    if out.len() > picked {
        return out;
    }
    chosen(by_cost(closed, false))
}

/// Bytes a round over `victims` gives back: their written bytes (at most a segment's)
/// less the live bytes copied out.
fn gain(victims: &[SegmentUse], usable: u64) -> u64 {
    victims
        .iter()
        .map(|u| u.written.min(usable).saturating_sub(u.live))
        .sum()
}

/// Whether copying `u` out would gain nothing: all of its written bytes are live (an
/// empty segment, nothing written but its header, gains its slot).
fn is_full(u: &SegmentUse) -> bool {
    u.written > 0 && u.live >= u.written
}

/// The victims of one round from `by_live` (emptiest first): segments with something dead,
/// at most MAX_VICTIMS, and no more live bytes in all than `budget` (a round's copies need
/// that much new space before its victims go), but always at least one.
fn pick(by_live: &[SegmentUse], usable: u64, budget: u64) -> Vec<u64> {
    let mut out = Vec::new();
    let mut live = 0;
    for u in by_live {
        if is_full(u) || u.live >= usable || out.len() == MAX_VICTIMS {
            break;
        }
        if !out.is_empty() && live + u.live > budget {
            break;
        }
        live += u.live;
        out.push(u.logical);
    }
    out
}

/// Whether a background round keeps to `reclaim_rate`: only while the dead share is below
/// `urgent` and puts are not paced. Once a pass has paced puts they go at the rate the
/// reclaimer gives space back until the pass ends, even when the share has fallen below
/// `urgent` meanwhile; holding the reclaimer to `reclaim_rate` then held them too (at 32
/// MiB segments, uniform overwrites: 1615-1660 puts/s of 100 KiB with the cap, 2604
/// without, at the same space and write amplification).
fn self_limited(ratio: f64, urgent: f64, puts_paced: bool) -> bool {
    ratio < urgent && !puts_paced
}

/// Sleeps so that `bytes` moved since `started` stay within `rate` bytes per second
/// (0: no limit).
fn pace(rate: u64, bytes: u64, started: Instant) {
    if rate == 0 {
        return;
    }
    let due = Duration::from_secs_f64(bytes as f64 / rate as f64);
    let elapsed = started.elapsed();
    if due > elapsed {
        std::thread::sleep((due - elapsed).min(Duration::from_millis(100)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn space(live: &[u64], usable: u64) -> Space {
        let closed: Vec<SegmentUse> = live
            .iter()
            .enumerate()
            .map(|(i, &live)| SegmentUse {
                logical: i as u64,
                live,
                tombs: 0,
                written: usable,
            })
            .collect();
        let written = usable * live.len() as u64;
        let mut space = Space {
            ratio: 0.0,
            closed,
            usable,
            dead: written - live.iter().sum::<u64>(),
        };
        space.ratio = space.ratio_without(&[]);
        space
    }

    #[test]
    fn the_bucket_holds_at_most_its_time_of_the_rate() {
        let t0 = Instant::now();
        let mut b = Bucket {
            rate: 1000.0,
            tokens: 0.0,
            last: Some(t0),
        };
        b.refill(t0 + Duration::from_millis(10));
        assert!((b.tokens - 10.0).abs() < 1e-6, "{}", b.tokens);
        b.refill(t0 + Duration::from_secs(10));
        let depth = 1000.0 * BUCKET_TIME.as_secs_f64();
        assert!((b.tokens - depth).abs() < 1e-6, "{}", b.tokens);
    }

    #[test]
    fn puts_wait_while_paced_at_nothing_and_go_at_a_rate() {
        let t = Throttle::new(Arc::default());
        // Off: no wait, no spending.
        t.wait(1 << 20);
        t.set(true);
        t.set_rate(0.0);
        std::thread::scope(|s| {
            let h = s.spawn(|| t.wait(100));
            std::thread::sleep(Duration::from_millis(50));
            assert!(!h.is_finished(), "a put went at rate 0");
            t.set_rate(1e9);
            h.join().unwrap();
        });
        // Turning it off lets a waiting put go at once.
        t.set_rate(0.0);
        std::thread::scope(|s| {
            let h = s.spawn(|| t.wait(100));
            std::thread::sleep(Duration::from_millis(30));
            assert!(!h.is_finished(), "a put went without tokens");
            t.set(false);
            h.join().unwrap();
        });
    }

    #[test]
    fn tombstones_count_as_copies_except_in_the_oldest_segment() {
        let u = |logical, live, tombs| SegmentUse {
            logical,
            live,
            tombs,
            written: 2000,
        };
        // Segment 3 is all tombstones: it looks empty, but they must be copied while
        // older segments remain; in the oldest segment (1) they are dropped. Benefit per
        // cost: 1: 0.75 * 4 / 1.25 = 2.4; 2: 0.8 * 3 / 1.2 = 2.0; 3: 0.5 * 2 / 1.5 = 0.67
        // (2.0 if its tombstones cost nothing); 4: 0.925 / 1.075 = 0.86.
        let closed = [u(1, 500, 900), u(2, 400, 0), u(3, 0, 1000), u(4, 100, 50)];
        let got: Vec<(u64, u64)> = by_cost(&closed, true)
            .iter()
            .map(|u| (u.logical, u.live))
            .collect();
        assert_eq!(got, vec![(1, 500), (2, 400), (4, 150), (3, 1000)]);
    }

    #[test]
    fn a_paced_round_gives_back_half_a_segment_with_the_emptiest_joining() {
        let u = |logical, live| SegmentUse {
            logical,
            live,
            tombs: 0,
            written: 1000,
        };
        // 1 is old and cold (82% live), 19 young and emptier, 20 nearly all live.
        // Benefits: 1: 0.18 * 20 / 1.82 = 1.98; 19: 0.7 * 2 / 1.3 = 1.08.
        let closed = [u(1, 820), u(19, 300), u(20, 950)];
        let victims = |relocation, paced, budget| {
            let chosen = choose(&closed, relocation, paced, 1000, budget);
            chosen.iter().map(|u| u.logical).collect::<Vec<_>>()
        };
        // Puts not paced: cost-benefit, the cold segment alone within one segment's budget.
        assert_eq!(victims(true, false, 1000), vec![1]);
        // Paced, that round would give back 180 bytes, less than half a segment: the
        // emptiest joins it (1120 bytes to copy, within the budget and half a segment
        // more), and the two give back 880.
        assert_eq!(victims(true, true, 1000), vec![1, 19]);
        // Paced, with room for both: they give back 880 bytes, and cost-benefit stands.
        assert_eq!(victims(true, true, 2000), vec![1, 19]);
        // Paced with a budget below a segment (the file system nearly full): nothing may
        // join, so the emptiest instead.
        assert_eq!(victims(true, true, 500), vec![19]);
        let victims_of = |closed: &[SegmentUse], budget| {
            let chosen = choose(closed, true, true, 1000, budget);
            chosen.iter().map(|u| u.logical).collect::<Vec<_>>()
        };
        // Joining stops once the round gives back half a segment: 19 joins, 20 (the next
        // emptiest, which would fit: 1470 bytes) is not needed. Benefits: 1: 0.18 * 21 /
        // 1.82 = 2.08; 19: 1.62; 20: 0.65 * 2 / 1.35 = 0.96.
        let closed = [u(1, 820), u(19, 300), u(20, 350), u(21, 950)];
        assert_eq!(victims_of(&closed, 1000), vec![1, 19]);
        // The pick is also the emptiest: it is not taken twice, and the next joins.
        // Benefits: 1: 0.48 * 20 / 1.52 = 6.3; 19: 0.5; 20: 0.18.
        let closed = [u(1, 520), u(19, 600), u(20, 700)];
        assert_eq!(victims_of(&closed, 1000), vec![1, 19]);
        // Never past two segments' worth in all: with a budget of 1600, cost-benefit takes
        // 2 and 1 (1520 to copy, 480 back; benefits 3.35 and 1.98), and 19 would make
        // 2020, past 2000: none joins, the emptiest instead (half a segment over the budget
        // would have let 19 join).
        let closed = [u(1, 820), u(2, 700), u(19, 500), u(20, 950)];
        assert_eq!(victims_of(&closed, 1600), vec![19, 2]);
        // Without relocation segments, always the emptiest.
        assert_eq!(victims(false, false, 1000), vec![19]);
        assert_eq!(victims(false, true, 1000), vec![19]);
    }

    #[test]
    fn a_round_moves_two_segments_but_at_most_round_bytes() {
        let mib = 1u64 << 20;
        let usable = |size: u64| size - SEG_HEADER;
        // 32 MiB segments: two segments' worth, as before the cap.
        let small = usable(32 * mib);
        assert_eq!(round_budget(small, ROUND_BYTES, false), 2 * small);
        // 192 and 256 MiB segments: the cap (a 256 MiB segment's usable bytes and its
        // header); 1 GiB segments: one segment's (the cap is below it).
        for size in [192 * mib, 256 * mib] {
            assert_eq!(round_budget(usable(size), ROUND_BYTES, false), ROUND_BYTES);
        }
        let huge = usable(1024 * mib);
        assert_eq!(round_budget(huge, ROUND_BYTES, false), huge);
        // `compact` has no cap; low space, half a segment whatever the cap.
        let big = usable(256 * mib);
        assert_eq!(round_budget(big, u64::MAX, false), 2 * big);
        assert_eq!(round_budget(big, ROUND_BYTES, true), big / 2);
    }

    #[test]
    fn compaction_takes_empty_segments_and_more_than_their_pads() {
        let (small, large) = (256 * 1024 - 4096, (256 << 20) - 4096);
        // Nothing live: given back whatever its size (a relocation segment closed unused
        // holds one block, its Pad's header).
        assert!(worth_compacting(4096, 0, small));
        assert!(worth_compacting(4096, 0, large));
        assert!(worth_compacting(0, 0, large));
        // Dead bytes that are only a few pieces' Pads: moving would write as many again.
        assert!(!worth_compacting(small, small - 8192, small));
        // Past 1/64 and twice the Pads of its one piece: taken.
        let pads = 2 * (BLOCK + HEADER_LEN) as u64;
        assert!(worth_compacting(small, small - small / 64 - pads, small));
        assert!(!worth_compacting(
            small,
            small - small / 64 - pads + 1,
            small
        ));
        // A large segment moves in 8 MiB pieces, a block's Pad each at most.
        let live = large - large / 64 - 2 * 32 * (BLOCK + HEADER_LEN) as u64;
        assert!(worth_compacting(large, live, large));
        assert!(!worth_compacting(large, live + 1, large));
    }

    #[test]
    fn victims_weigh_free_space_by_age_and_written_bytes() {
        let u = |logical, live, written| SegmentUse {
            logical,
            live,
            tombs: 0,
            written,
        };
        // 10 is old and half dead; 19 young and emptier; 15 closed early, half its
        // written part live (a hole is no gain); 12 wholly live comes last.
        let closed = [
            u(10, 1000, 2000),
            u(12, 2000, 2000),
            u(15, 500, 1000),
            u(19, 400, 2000),
        ];
        let got: Vec<u64> = by_cost(&closed, true).iter().map(|u| u.logical).collect();
        // Benefits: 10: 0.5 * 10 / 1.5 = 3.33; 15: 0.5 * 5 / 1.5 = 1.67; 19: 0.8 / 1.2.
        assert_eq!(got, vec![10, 15, 19, 12]);
        assert_eq!(
            pick(&by_cost(&closed, true), 2000, 1 << 20),
            vec![10, 15, 19]
        );
        // The emptiest first (format 5 and older): by live share of the written bytes.
        let got: Vec<u64> = by_cost(&closed, false).iter().map(|u| u.logical).collect();
        assert_eq!(got, vec![19, 10, 15, 12]);
    }

    #[test]
    fn records_close_together_are_read_as_one_run() {
        let at = |offset: u64, len: u32| Location { offset, len };
        // Back to back, padded: one run.
        let locs = [at(4096, 1060), at(5160, 1060), at(6224, 1060)];
        assert_eq!(runs(&locs), vec![0..3]);
        // A dead record of RUN_GAP bytes between keeps one run; one byte more splits it.
        let locs = [at(4096, 1000), at(5096 + RUN_GAP, 1000)];
        assert_eq!(runs(&locs), vec![0..2]);
        let locs = [
            at(4096, 1000),
            at(5097 + RUN_GAP, 1000),
            at(6097 + RUN_GAP, 8),
        ];
        assert_eq!(runs(&locs), vec![0..1, 1..3]);
        assert_eq!(span(&locs, &(1..3)), 1008);
        // A run stops short of RUN_MAX; a record longer than that is a run of its own.
        let big = RUN_MAX as u32 / 3;
        let locs = [
            at(0, big),
            at(big as u64, big),
            at(2 * big as u64, big),
            at(3 * big as u64, big),
        ];
        assert_eq!(runs(&locs), vec![0..3, 3..4]);
        let locs = [at(0, 100), at(100, 5 << 20), at((5 << 20) + 100, 100)];
        assert_eq!(runs(&locs), vec![0..1, 1..2, 2..3]);
        assert_eq!(runs(&[]), Vec::<Range<usize>>::new());
    }

    /// `reclaim_rate` holds the reclaimer back only when nothing waits on it: below the
    /// urgent share and with puts going freely. A pass that paced puts runs at full speed
    /// to its end, even once the share fell below urgent (the puts still wait on it).
    #[test]
    fn the_reclaimer_keeps_to_its_rate_only_while_puts_are_free() {
        assert!(self_limited(0.22, 0.3, false));
        assert!(!self_limited(0.22, 0.3, true), "puts paced: no cap");
        assert!(!self_limited(0.31, 0.3, false), "past urgent: no cap");
        assert!(!self_limited(0.31, 0.3, true));
    }

    #[test]
    fn the_pace_follows_the_dead_share_after_the_round() {
        let usable = 1000;
        let t = Throttle::new(Arc::default());
        t.set(true);
        let rate = |t: &Throttle| t.bucket.lock().rate;
        // Victim 0 (200 live) leaves segments 1..8 whose share decides (with at least
        // STOP_SEGMENTS of them dead in all).
        let sp = |rest: u64| {
            space(
                &[200, rest, rest, rest, rest, rest, rest, rest, rest],
                usable,
            )
        };
        let urgent = 0.3;
        let pace = Pace::new(&sp(0).closed[..1], usable, 5000.0);
        assert_eq!(pace.gain, 800);
        // After the round the share would be 0.3: puts get nothing.
        pace.apply(&t, &sp(700), urgent, 0);
        assert_eq!(rate(&t), 0.0);
        // PACE_BAND below the bound: the measured rate itself.
        let live = ((1.0 - (urgent - PACE_BAND)) * usable as f64).round() as u64;
        pace.apply(&t, &sp(live), urgent, 0);
        assert!((rate(&t) - 5000.0).abs() < 1.0, "{}", rate(&t));
        // Far below: at most MAX_PACE times it (three empty victims, eight full segments
        // left: a share of 0.27 now, none after the round).
        let far = space(
            &[
                0, 0, 0, usable, usable, usable, usable, usable, usable, usable, usable,
            ],
            usable,
        );
        let round = Pace::new(&far.closed[..3], usable, 5000.0);
        round.apply(&t, &far, urgent, 0);
        assert_eq!(rate(&t), 5000.0 * MAX_PACE);
        // The share itself far past the bound: nothing, however empty the round leaves it.
        let full = space(&[0, 0, usable, usable, usable], usable);
        let round = Pace::new(&full.closed[..2], usable, 5000.0);
        round.apply(&t, &full, urgent, 0);
        assert_eq!(rate(&t), 0.0);
        // ... unless fewer than STOP_SEGMENTS segments are dead: one closed segment half
        // dead (a share of 0.5) does not stop puts.
        let one = space(&[usable / 2], usable);
        let round = Pace::new(&one.closed, usable, 5000.0);
        round.apply(&t, &one, urgent, 0);
        assert_eq!(rate(&t), 5000.0 * MAX_PACE);
        // Nothing measured yet: FIRST_PACE before the first copies, then the round's own.
        let first = Pace::new(&sp(0).closed[..1], usable, 0.0);
        first.apply(&t, &sp(live), urgent, 0);
        assert!((rate(&t) - FIRST_PACE).abs() < 1.0);
    }
}

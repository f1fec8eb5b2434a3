//! The reclaimer: gives back the space of overwritten and deleted records.
//!
//! A round takes a few victim segments (the emptiest closed ones), reads each one in
//! order and re-appends, through the normal write path, every put the index still points
//! at (checked under the ring lock, which orders the move against puts and deletes) and
//! every tombstone that may still hide an older put. Then it takes a checkpoint (the copies
//! become durable and IMAGE_file stops pointing into the victims) and gives each victim's
//! slot back (`Segments::release`: unmap, punch, fsync, free).
//!
//! A crash before the release leaves the victims mapped and whole: recovery sees the
//! original records and, after them in the log, the copies, so it finds the same values.
//! A get that looked a key up before its move and reads after the release finds the
//! segment gone, sees the index changed, and looks again (the Moved path of a get).

use std::time::{Duration, Instant};

use parking_lot::MutexGuard;

use crate::error::{Error, Result};
use crate::index::{hash_key, Location};
use crate::record::{Header, Kind};
use crate::segments::{SegmentUse, SEG_HEADER};
use crate::store::Inner;

/// The reclaimer's progress since open; the condvar next to it wakes its thread.
#[derive(Debug, Default)]
pub(crate) struct ReclaimState {
    pub stop: bool,
    pub bytes_moved: u64,
    pub records_moved: u64,
    pub rounds: u64,
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
pub(crate) struct Space {
    /// The closed segments, oldest first.
    pub closed: Vec<SegmentUse>,
    /// Bytes a segment holds after its header.
    pub usable: u64,
    /// Dead bytes in the closed segments.
    pub dead: u64,
    /// Dead share of the closed segments' bytes.
    pub ratio: f64,
}

/// At most this many victims per round (one checkpoint per round).
const MAX_VICTIMS: usize = 32;

impl Inner {
    /// The closed segments and their dead share.
    pub(crate) fn space(&self) -> Space {
        let flushed = self.buffer.lock().flushed;
        let size = self.segs.size();
        let usable = size - SEG_HEADER;
        let closed: Vec<SegmentUse> = self
            .segs
            .usage()
            .into_iter()
            .filter(|u| (u.logical + 1) * size <= flushed)
            .collect();
        let written = closed.len() as u64 * usable;
        let live: u64 = closed.iter().map(|u| u.live.min(usable)).sum();
        let dead = written - live;
        Space {
            ratio: if written == 0 {
                0.0
            } else {
                dead as f64 / written as f64
            },
            closed,
            usable,
            dead,
        }
    }

    /// The background reclaimer's thread: looks every 100 ms until told to stop.
    pub(crate) fn run_reclaimer(&self) {
        if !self.opts.background_reclaim {
            return;
        }
        let mut st = self.reclaim.lock();
        loop {
            if st.stop {
                return;
            }
            self.reclaim_wake
                .wait_for(&mut st, Duration::from_millis(100));
            if st.stop {
                return;
            }
            let res = MutexGuard::unlocked(&mut st, || self.background_pass());
            match res {
                Ok(()) | Err(Error::Closed) => {}
                Err(e) => {
                    self.log
                        .error(&format!("reclaim failed: {e}; retrying in 1 s"));
                    self.reclaim_wake.wait_for(&mut st, Duration::from_secs(1));
                }
            }
        }
    }

    fn stopping(&self) -> bool {
        self.reclaim.lock().stop
    }

    /// Rounds while the dead share is at or above `reclaim_threshold`, until it falls
    /// below three quarters of it.
    fn background_pass(&self) -> Result<()> {
        let threshold = self.opts.reclaim_threshold;
        if self.space().ratio < threshold {
            return Ok(());
        }
        let _one = self.reclaim_running.lock();
        loop {
            let space = self.space();
            if space.ratio < threshold * 0.75 || self.stopping() {
                return Ok(());
            }
            let mut by_live = space.closed.clone();
            by_live.sort_by_key(|u| (u.live, u.logical));
            let victims = pick(&by_live, space.usable);
            if victims.is_empty() {
                return Ok(());
            }
            let paced = space.ratio < self.opts.reclaim_urgent;
            self.round(&victims, paced)?;
        }
    }

    /// `Store::compact`: reclaims every closed segment with at least 1/64 of it dead, at
    /// full speed, and returns what it did.
    pub(crate) fn compact(&self) -> Result<CompactReport> {
        let _one = self.reclaim_running.lock();
        let space = self.space();
        let mut todo: Vec<SegmentUse> = space
            .closed
            .iter()
            .copied()
            .filter(|u| space.usable - u.live.min(space.usable) >= space.usable / 64)
            .collect();
        todo.sort_by_key(|u| (u.live, u.logical));
        let mut report = CompactReport::default();
        while !todo.is_empty() {
            let victims = pick(&todo, space.usable);
            todo.retain(|u| !victims.contains(&u.logical));
            let (freed, bytes, records) = self.round(&victims, false)?;
            report.segments_freed += freed;
            report.bytes_moved += bytes;
            report.records_moved += records;
        }
        self.log.info(&format!(
            "compact: {} segments freed, {} records ({} bytes) moved",
            report.segments_freed, report.records_moved, report.bytes_moved
        ));
        Ok(report)
    }

    /// One round over `victims` (logical segments): move, checkpoint, release. Returns the
    /// segments freed, bytes moved and records moved.
    fn round(&self, victims: &[u64], paced: bool) -> Result<(u64, u64, u64)> {
        let mut victims = victims.to_vec();
        victims.sort_unstable();
        let size = self.segs.size();
        let mapped: Vec<u64> = self.segs.mapped().into_iter().map(|(l, _)| l).collect();
        let rate = if paced { self.opts.reclaim_rate } else { 0 };
        let started = Instant::now();
        let (mut bytes, mut records) = (0u64, 0u64);
        let mut whole = Vec::with_capacity(victims.len());
        for (i, &l) in victims.iter().enumerate() {
            // A tombstone hides older puts of its key in older segments; with no older
            // segment left but earlier victims of this round (given back first, in order),
            // there is nothing left for it to hide.
            let oldest = mapped
                .iter()
                .take_while(|&&m| m < l)
                .all(|m| victims[..i].contains(m));
            let Some(at) = self.segs.physical(l * size) else {
                whole.push(false);
                continue;
            };
            let scan = self
                .disk
                .scan(at + SEG_HEADER, at + size, |off, h, key, value| {
                    if self.stopping() {
                        return Err(Error::Closed);
                    }
                    let n = self.relocate(l * size + (off - at), h, key, value, oldest)?;
                    if n > 0 {
                        bytes += n;
                        records += 1;
                        pace(rate, bytes, started);
                    }
                    Ok(())
                })?;
            self.disk.drop_cache(at, size);
            let complete = scan.end == at + size;
            if !complete {
                self.log.error(&format!(
                    "reclaim: log segment {l} is unreadable at {} ({}); keeping it",
                    l * size + (scan.end - at),
                    scan.reason.as_deref().unwrap_or("unknown")
                ));
            }
            whole.push(complete);
        }
        {
            let mut st = self.reclaim.lock();
            st.bytes_moved += bytes;
            st.records_moved += records;
            st.rounds += 1;
        }
        // The copies become durable, and IMAGE_file points at them, before any victim goes.
        self.checkpoint()?;
        let live: std::collections::BTreeMap<u64, u64> = self
            .segs
            .usage()
            .into_iter()
            .map(|u| (u.logical, u.live))
            .collect();
        let mut freed = 0;
        for (&l, ok) in victims.iter().zip(whole) {
            let left = live.get(&l).copied().unwrap_or(0);
            if !ok || left != 0 {
                if ok {
                    self.log.error(&format!(
                        "reclaim: log segment {l} still holds {left} live bytes; keeping it"
                    ));
                }
                continue;
            }
            self.segs.release(l)?;
            freed += 1;
        }
        Ok((freed, bytes, records))
    }

    /// Re-appends the record found at logical `off` if it still matters: a put the index
    /// still points at, or (unless `drop_tombstones`) a tombstone of a key that is still
    /// absent. Returns the bytes appended.
    fn relocate(
        &self,
        off: u64,
        h: &Header,
        key: &[u8],
        value: &[u8],
        drop_tombstones: bool,
    ) -> Result<u64> {
        let is_put = h.kind == Kind::Put;
        if !is_put && drop_tombstones {
            return Ok(0);
        }
        let kh = hash_key(self.seed, key);
        let loc = Location {
            offset: off,
            len: h.record_len() as u32,
        };
        let current = || {
            let found = self.index.read().get(&kh);
            if is_put {
                found == Some(loc)
            } else {
                found.is_none()
            }
        };
        let buf = &self.buffer;
        let mut g = buf.lock();
        if !current() {
            return Ok(0);
        }
        let padded = h.padded_len();
        buf.make_room(&mut g, padded, 0)?;
        // make_room may have released the ring lock: look again.
        if !current() {
            return Ok(0);
        }
        let nh = Header {
            seq: g.next_seq,
            ..*h
        };
        g.next_seq += 1;
        let head = nh.encode();
        let parts: [&[u8]; 3] = [&head, key, if is_put { value } else { &[] }];
        let new_off = buf.append(&mut g, &parts, padded);
        if is_put {
            let new = Location {
                offset: new_off,
                len: loc.len,
            };
            if let Err(e) = self.index.write().insert(&kh, new) {
                buf.mark_dead(&mut g, new_off);
                return Err(e);
            }
            self.segs.add_live(new_off, padded as u64);
            self.segs.sub_live(off, padded as u64);
        }
        Ok(padded as u64)
    }
}

/// The victims of one round from `by_live` (emptiest first): segments with something dead,
/// at most MAX_VICTIMS, and no more live bytes in all than two segments hold (so a round's
/// copies need at most three new segments), but always at least one.
fn pick(by_live: &[SegmentUse], usable: u64) -> Vec<u64> {
    let mut out = Vec::new();
    let mut live = 0;
    for u in by_live {
        if u.live >= usable || out.len() == MAX_VICTIMS {
            break;
        }
        if !out.is_empty() && live + u.live > 2 * usable {
            break;
        }
        live += u.live;
        out.push(u.logical);
    }
    out
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

//! The relocation stream (disk format 6): the reclaimer writes its copies into segments
//! of its own instead of the log's tail, so that records that outlived their segment do
//! not mix with new puts (under skewed overwrites, cold records among hot ones were
//! moved again and again).
//!
//! 1. **Grant.** The ring grants the reclaimer the segment its tail enters next, L, and goes
//!    on at L + 1 (`WriteBuffer::grant`): every record appended before lies below L,
//!    every one after above it. L reserves as many sequence numbers as it can hold
//!    records, so sequence numbers still grow along the log.
//! 2. **Check.** A record is copied only if it is still current after the grant (the index
//!    still points at it, or a tombstone's key is still absent). A put or delete that
//!    supersedes it later lies above L, so replaying the log in order still ends at it.
//!    (A check before the grant would let replay put an older copy over a newer put
//!    below L.)
//! 3. **Write, sync.** The copies are written into L at its next block boundary (after its
//!    header, written at the grant) with one aligned write, followed by a Pad to the next
//!    block boundary, then fdatasync'ed: a copy is durable before anything points at it.
//! 4. **Install.** Under the ring lock, which orders it against puts and deletes, each copy
//!    whose condition still holds replaces its original in the index
//!    (`Engine::install_locked`); one that lost to a put or delete made after the check is
//!    a dead record in L, below the record that beat it.
//! 5. **Close.** When the next copy does not fit, L is closed with a Pad to its end (its
//!    payload a hole), made durable, and given its key summary; the next copy gets a new
//!    grant; so is L at close, and a segment granted but never used. A store killed with
//!    L open leaves L short: its header's relocation flag tells recovery that the
//!    unwritten rest is not damage.
//!
//! Installs do not move the log's tail, so the round that made them ends with a
//! checkpoint even if the tail has not moved (`Checkpointer::checkpoint_changes`) before
//! any victim is given back: an image taken during the round covers the log past L while
//! lacking later installs, and recovery does not replay L from such an image.

use std::time::Duration;

use crate::engine::{Append, Engine};
use crate::error::Result;
use crate::format::{Header, Kind, SummaryEntry, BLOCK, HEADER_LEN, SEG_HEADER};
use crate::index::KeyHash;
use crate::log::device::Blocks;
use crate::log::ring::{Grant, GRANT_BACKLOG};

/// The least memory a relocation stream takes for its writes (a batch of copies is 8 MiB
/// of keys and values, `reclaim::BATCH`, plus headers and Pads: up to 16 MiB for values of
/// 100 bytes); more is taken a power of two at a time, so that a new high rarely comes.
const WRITE_BUFFER: usize = 16 << 20;
/// A write buffer larger than this (grown for a record of tens of MiB) is given back after
/// its write rather than held while the stream stays open.
const WRITE_BUFFER_KEPT: usize = 32 << 20;

/// How long the reclaimer waits for the log's tail to reach a segment boundary by
/// itself before a grant closes the tail's segment early (its rest a hole).
const GRANT_PATIENCE: Duration = Duration::from_millis(250);

/// A record to copy: its key hash, its record as an `Append` (with the condition under
/// which it still matters), and the logical offset of the original.
pub(crate) struct Moved<'a> {
    pub kh: KeyHash,
    pub append: Append<'a>,
    pub from: u64,
}

/// The relocation segment being written.
pub(crate) struct Stream {
    logical: u64,
    /// Where the next write goes in the segment (a block boundary; after the header,
    /// which the grant wrote).
    pos: u64,
    first_seq: u64,
    next_seq: u64,
    /// Every put and tombstone written, for the key summary.
    entries: Vec<SummaryEntry>,
    last_seq: u64,
    /// The next segment was asked for (`WriteBuffer::request_grant`).
    asked_ahead: bool,
    /// The memory the last write went out of, kept for the next (see `write`).
    buf: Option<Blocks>,
}

impl Stream {
    /// Asks the ring for a relocation segment above logical segment `above` (the one
    /// granted ahead, if it is). `hurry`: puts are paced and wait on the reclaimer, so the
    /// tail will not reach a boundary soon: close its segment now rather than wait.
    pub fn open(engine: &Engine, hurry: bool, above: u64) -> Result<Option<Stream>> {
        // In a hurry (puts are paced: they wait on the reclaimer) the grant comes at once,
        // whatever waits in the ring; else after a patience, and only if little does
        // (`None`: the caller slows puts and asks again).
        let (patience, max_backlog) = if hurry {
            (Duration::ZERO, u64::MAX)
        } else {
            (GRANT_PATIENCE, GRANT_BACKLOG)
        };
        let grant = loop {
            let Some(g) = engine.ring().grant(patience, max_backlog)? else {
                return Ok(None);
            };
            if g.logical > above {
                break g;
            }
            // Granted ahead, but below the victim: closed empty, given back by a later
            // round. A new grant lies above every closed segment.
            Stream::new(g).close(engine)?;
        };
        engine.log().info(&format!(
            "reclaim: copies go to relocation segment {}",
            grant.logical
        ));
        Ok(Some(Stream::new(grant)))
    }

    /// The stream of a segment just granted (nothing in it but its header).
    pub fn new(grant: Grant) -> Stream {
        Stream {
            logical: grant.logical,
            pos: SEG_HEADER,
            first_seq: grant.first_seq,
            next_seq: grant.first_seq,
            entries: Vec::new(),
            last_seq: 0,
            asked_ahead: false,
            buf: None,
        }
    }

    /// Whether a record of `padded` bytes fits at `pos` (a record ends at the segment's end
    /// or leaves room for a Pad's header after it).
    fn fits(size: u64, pos: u64, padded: u64) -> bool {
        pos + padded == size || pos + padded + HEADER_LEN as u64 <= size
    }

    /// Writes as many of `copies` as fit, those still current (checked now, after the
    /// grant), makes them durable and installs them. Returns how many of `copies` it
    /// took (all, or up to the first that did not fit: the segment is then full and must
    /// be closed) and the bytes and records installed.
    pub fn write(&mut self, engine: &Engine, copies: &[Moved<'_>]) -> Result<(usize, u64, u64)> {
        let size = engine.segs().size();
        let start = self.pos;
        let mut pos = start;
        let mut taken = 0;
        let mut chosen: Vec<(usize, u64)> = Vec::new();
        for c in copies {
            let padded = c.append.header(false).padded_len() as u64;
            if !Stream::fits(size, pos, padded) {
                break;
            }
            taken += 1;
            if engine.holds(c.append.when, &c.kh) {
                chosen.push((taken - 1, pos));
                pos += padded;
            }
        }
        if chosen.is_empty() {
            return Ok((taken, 0, 0));
        }
        // A tombstone is copied because its key is absent now, and the delete that made it
        // absent may not be durable yet (a batch's, say, written but not synced). Were the
        // copy durable before it, a power cut could keep the copy and lose the delete: the
        // key absent above a put that was durable. So the log is made durable up to here
        // first, up to the end of the newest delete (found by review; test
        // `a_tombstone_copied_before_its_delete_was_durable_never_outlives_it`).
        if chosen
            .iter()
            .any(|&(i, _)| copies[i].append.kind == Kind::Delete)
        {
            // Every delete applied before the check ends by `deletes_end` (usually synced
            // long since: then this waits for nothing).
            let deletes_end = engine.ring().lock().deletes_end;
            engine.ring().flush_to(deletes_end, true)?;
        }
        // A Pad from the last record to the next block boundary (at least a header long),
        // or to the segment's end.
        let records_end = pos;
        let mut end = records_end.next_multiple_of(BLOCK as u64);
        if end != records_end && end - records_end < HEADER_LEN as u64 {
            end += BLOCK as u64;
        }
        let end = end.min(size);
        // Kept from the last write, so that every byte is written below (records, the
        // zeros after each to its padded length, the Pad and zeros to `end`): fresh memory
        // for each write cost the kernel's zeroing of its pages, 13% of a reclaim phase's
        // samples, most of them in the reclaimer's own thread (which bounds it).
        let len = (end - start) as usize;
        let buf = match self.buf.take() {
            Some(b) if b.as_slice().len() >= len => b,
            old => {
                drop(old);
                Blocks::zeroed(len.max(WRITE_BUFFER).next_power_of_two())?
            }
        };
        let buf = self.buf.insert(buf);
        let b = &mut buf.as_mut_slice()[..len];
        let key = engine.sum_key();
        let mut headers = Vec::with_capacity(chosen.len());
        for &(i, at) in &chosen {
            let a = &copies[i].append;
            let mut h = a.header(false);
            h.seq = self.next_seq;
            self.next_seq += 1;
            let o = (at - start) as usize;
            b[o..o + HEADER_LEN].copy_from_slice(&h.encode(key));
            let k = o + HEADER_LEN;
            b[k..k + a.key.len()].copy_from_slice(a.key);
            let v = k + a.key.len();
            b[v..v + a.value.len()].copy_from_slice(a.value);
            b[v + a.value.len()..o + h.padded_len()].fill(0);
            headers.push(h);
        }
        if end > records_end {
            let o = (records_end - start) as usize;
            let pad = Header::pad(end - records_end, self.first_seq);
            b[o..o + HEADER_LEN].copy_from_slice(&pad.encode(key));
            b[o + HEADER_LEN..].fill(0);
        }
        let base = self.logical * size;
        let written = engine.segs().write_at(base + start, &[&*b]);
        if len > WRITE_BUFFER_KEPT {
            self.buf = None;
        }
        written?;
        engine.disk().sync_data()?;
        self.pos = end;
        engine.segs().written_to(self.logical, end);
        if !self.asked_ahead && end > size / 2 {
            // Past half: the next segment is asked for now, so that the tail likely
            // reaches a boundary by itself before this one is full.
            engine.ring().request_grant();
            self.asked_ahead = true;
        }
        for (&(i, at), h) in chosen.iter().zip(&headers) {
            let a = &copies[i].append;
            self.entries.push(SummaryEntry {
                pos: at,
                seq: h.seq,
                kind: h.kind,
                value_len: h.value_len,
                key: a.key.to_vec(),
            });
            self.last_seq = h.seq;
        }
        // Install: the copies are durable.
        let (mut bytes, mut records) = (0, 0);
        let mut g = engine.ring().lock();
        engine.ring().count_written(&mut g, end - start);
        for (&(i, at), &h) in chosen.iter().zip(&headers) {
            let c = &copies[i];
            if engine.install_locked(&mut g, &c.append, &c.kh, base + at, h)? {
                bytes += h.padded_len() as u64;
                records += 1;
            }
        }
        Ok((taken, bytes, records))
    }

    /// The logical segment written. A copy goes only into a segment above its original's:
    /// every older record of its key then lies below it.
    pub fn logical(&self) -> u64 {
        self.logical
    }

    /// Whether nothing was written yet.
    pub fn is_fresh(&self) -> bool {
        self.pos == SEG_HEADER
    }

    /// Closes the segment: a Pad from the last write to its end (only its header block is
    /// written), fdatasync, and the key summary of what it holds. One with nothing
    /// written is closed too, not given back: an empty segment a later round gives back
    /// (given back now, it would leave a gap in the log that a crash before the next
    /// image makes recovery take for a segment the replay needs).
    pub fn close(self, engine: &Engine) -> Result<()> {
        let size = engine.segs().size();
        let written = (self.pos + BLOCK as u64).min(size);
        engine.segs().written_to(self.logical, written);
        if self.pos < size {
            let mut buf = Blocks::zeroed(BLOCK)?;
            buf.as_mut_slice()[..HEADER_LEN].copy_from_slice(
                &Header::pad(size - self.pos, self.first_seq).encode(engine.sum_key()),
            );
            engine
                .segs()
                .write_at(self.logical * size + self.pos, &[buf.as_slice()])?;
            engine.disk().sync_data()?;
            let mut g = engine.ring().lock();
            engine.ring().count_written(&mut g, BLOCK as u64);
        }
        engine.segs().closed_at(self.logical, written);
        // A victim from now on, measured with its Pad (a failed write or sync above has
        // latched the store: it stays marked).
        engine.segs().relocated(self.logical);
        engine.segs().summaries().write_whole(
            self.logical,
            self.first_seq,
            &self.entries,
            self.last_seq,
        );
        Ok(())
    }
}

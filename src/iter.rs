//! Listing keys: `Store::keys` (keys and value lengths, from the key summaries, without
//! reading values) and `Store::scan` (with values, one read per record).
//!
//! An iteration notes the log's tail T at its start, flushes the ring up to T (so every
//! record below T is noted in a summary), and walks the log segments below T in log
//! order. For each segment it takes the entries of its summary (the file, or the one the
//! lookout is writing) and reads only what no summary covers (a store written before
//! summaries, or after losing one). An entry is returned if it is a put with the prefix
//! and the index still points its key at that very record: so each key is returned at
//! most once, and a key that is present and not written during the whole iteration
//! exactly once. A key put, overwritten or deleted during the iteration may be missing
//! (its record that the index points at lies at or past T). While an iteration is open the
//! reclaimer starts no round (a move would take a key past T). On a failed store T is where
//! the log's writes stopped: records only in the ring are not listed (`get` still reads
//! them until close).
//!
//! Order: log order of each key's live record (roughly the order of their last writes),
//! not sorted. Sorting needs all keys at once; collect and sort them if you need that.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::engine::{Engine, Read};
use crate::error::{Error, Result};
use crate::format::{Kind, SummaryEntry};
use crate::index::Location;
use crate::log::scan;
use crate::reclaim::Reclaimer;

/// An open key iteration; see the module docs. Ends (and lets the reclaimer go on) when
/// dropped.
pub struct Keys {
    engine: Arc<Engine>,
    reclaimer: Arc<Reclaimer>,
    prefix: Vec<u8>,
    /// The log's tail when the iteration began.
    end: u64,
    segments: VecDeque<u64>,
    current: u64,
    entries: std::vec::IntoIter<SummaryEntry>,
    values: bool,
    /// Bytes of disk_file read for records no summary covered.
    scanned_bytes: u64,
}

/// A key with its value (empty when listing keys only) and the value's length.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    /// The key.
    pub key: Vec<u8>,
    /// The value: empty from `Store::keys`.
    pub value: Vec<u8>,
    /// The value's length.
    pub value_len: usize,
}

impl Keys {
    pub(crate) fn new(
        engine: Arc<Engine>,
        reclaimer: Arc<Reclaimer>,
        prefix: &[u8],
        values: bool,
    ) -> Result<Keys> {
        reclaimer.begin_iteration();
        // From here on, dropping `it` ends the iteration.
        let mut it = Keys {
            engine,
            reclaimer,
            prefix: prefix.to_vec(),
            end: 0,
            segments: VecDeque::new(),
            current: 0,
            entries: Vec::new().into_iter(),
            values,
            scanned_bytes: 0,
        };
        let ring = it.engine.ring();
        it.end = ring.lock().tail;
        // Every record below the end is then noted in a summary.
        if let Err(e) = ring.flush_to(it.end, false) {
            if !it.engine.latch().is_failed() {
                return Err(e);
            }
            // A failed store lists what reached disk_file (`flushed` moves no more): a
            // record only in the ring is still readable by `get` until close, but not listed.
            it.end = ring.lock().flushed;
        }
        let size = it.engine.segs().size();
        it.segments = it
            .engine
            .segs()
            .mapped()
            .into_iter()
            .map(|(l, _)| l)
            .filter(|&l| l * size < it.end)
            .collect();
        Ok(it)
    }

    /// Bytes of disk_file this iteration read for records that no key summary covered
    /// (values it returned not included).
    pub fn scanned_bytes(&self) -> u64 {
        self.scanned_bytes
    }

    /// The puts with the prefix of segment `l` below the iteration's end, from its summary
    /// and, for what that does not cover, from disk_file.
    fn load(&mut self, l: u64) -> Result<Vec<SummaryEntry>> {
        let segs = self.engine.segs();
        let size = segs.size();
        let first_seq = segs.first_seq(l).unwrap_or(0);
        let prefix = &self.prefix;
        let keep = |e: &SummaryEntry| e.kind == Kind::Put && e.key.starts_with(prefix);
        let (mut entries, covered, prev) = segs.summaries().entries_of(l, first_seq, keep);
        let need = (self.end - l * size).min(size);
        if covered < need {
            if let Some(at) = segs.physical(l * size) {
                let seqs = (prev, first_seq);
                let scanned = scan::scan(self.engine.disk(), at, covered, need, seqs, |item| {
                    if item.header.kind != Kind::Put || !item.key.starts_with(prefix) {
                        return Ok(());
                    }
                    entries.push(SummaryEntry {
                        pos: item.pos,
                        seq: item.header.seq,
                        kind: item.header.kind,
                        value_len: item.header.value_len,
                        key: item.key.to_vec(),
                    });
                    Ok(())
                })?;
                self.scanned_bytes += scanned.end.saturating_sub(covered);
            }
        }
        Ok(entries)
    }

    fn step(&mut self) -> Result<Option<Item>> {
        let size = self.engine.segs().size();
        loop {
            let Some(e) = self.entries.next() else {
                let Some(l) = self.segments.pop_front() else {
                    return Ok(None);
                };
                // Checked once a segment (the ring's lock is the writers'), not once a key.
                if self.engine.ring().is_shut_down() {
                    return Err(Error::Closed);
                }
                self.current = l;
                self.entries = self.load(l)?.into_iter();
                continue;
            };
            let offset = self.current * size + e.pos;
            if e.kind != Kind::Put || offset >= self.end || !e.key.starts_with(&self.prefix) {
                continue;
            }
            let loc = Location {
                offset,
                len: e.record_len() as u32,
            };
            let kh = self.engine.hash(&e.key);
            if self.engine.lookup(&kh) != Some(loc) {
                continue; // overwritten, deleted, or an older record of the key
            }
            let value_len = e.value_len as usize;
            let mut value = Vec::new();
            if self.values {
                value.resize(value_len, 0);
                if let Read::Moved = self.engine.read(&kh, loc, &e.key, &mut value)? {
                    continue; // written since the lookup
                }
            }
            return Ok(Some(Item {
                key: e.key,
                value,
                value_len,
            }));
        }
    }
}

impl Iterator for Keys {
    type Item = Result<Item>;

    /// The next key; an error ends the iteration (`Closed` if the store was closed,
    /// `Corruption` for a damaged record read for its value).
    fn next(&mut self) -> Option<Result<Item>> {
        match self.step() {
            Ok(Some(item)) => Some(Ok(item)),
            Ok(None) => None,
            Err(e) => {
                self.segments.clear();
                self.entries = Vec::new().into_iter();
                Some(Err(e))
            }
        }
    }
}

impl Drop for Keys {
    fn drop(&mut self) {
        self.reclaimer.end_iteration();
    }
}

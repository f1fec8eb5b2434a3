//! Reading a log segment record by record, as recovery and the reclaimer do, with
//! resynchronisation past damage.
//!
//! A record is accepted in order if its header checks (magic, checksum keyed by the
//! store's checksum key, fields), it fits in the segment, and its sequence number is above
//! the last one seen (Pads are exempt: they carry their segment's first sequence number,
//! or 0 if written before they did, and a Pad carrying another segment's is an older
//! segment's, left in a recycled slot: no record here). Puts and tombstones also carry a
//! payload checksum; a record whose payload fails it is never applied (its key keeps the
//! state the records before it gave it), but its header still tells where the next record
//! starts. A record is *confirmed* when its payload checks (or it has none: Dead, Pad); a
//! confirmed record makes the damage before it damage in the middle of the log, but a Pad
//! carrying 0 does not (in a recycled slot it may be an older segment's, right after a
//! torn record). Damage that no confirmed record follows is the segment's torn or
//! unwritten rest.
//!
//! Where a record does not check, the scan looks for the next record start: an 8-byte
//! aligned position holding a header that checks, is not a Pad, fits, and has a sequence
//! number above the last one seen (with version 2's unkeyed checksums, a put or
//! tombstone whose payload checks too). Bytes inside a user's value cannot pass for one:
//! a header from another store fails the keyed checksum, and a copy of one of this
//! store's own records was written before the value that holds it, so its sequence number
//! is not above the last one seen. What lies between is reported as damaged; what follows
//! the last record found is the segment's unwritten or torn rest.

use crate::error::Result;
use crate::format::{payload_ok, Header, Kind, HEADER_LEN, RECORD_ALIGN, RECORD_MAGIC};
use crate::log::disk::DiskFile;

/// A damaged range of a segment, as positions inside it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damage {
    pub start: u64,
    pub end: u64,
    pub what: String,
}

/// What a scan of one segment found.
#[derive(Debug, Default)]
pub struct Scanned {
    /// The position after the last record that is confirmed: one whose payload checks (or
    /// that carries none), with everything between it and the previous one accounted for.
    pub end: u64,
    /// The sequence number of the last record accepted (or the one passed in).
    pub last_seq: u64,
    /// Damaged ranges followed by a confirmed record.
    pub damage: Vec<Damage>,
    /// Why the segment does not read to its end, if it does not: the first problem after
    /// `end` (zeros of unwritten space, a torn or damaged record).
    pub rest: Option<String>,
    /// Whether a confirmed record other than a Pad was read (a torn one's header raises
    /// `last_seq` but confirms nothing).
    pub confirmed: bool,
}

/// One record handed to the caller.
pub struct Item<'a> {
    /// Position in the segment.
    pub pos: u64,
    pub header: &'a Header,
    pub key: &'a [u8],
    pub value: &'a [u8],
}

/// Scans the segment whose slot starts at file offset `at` (`size` bytes), from position
/// `from`, calling `f` for every put and tombstone whose payload checks, and every batch
/// Commit, in order. `prev_seq`: the sequence number of the record before `from` (0 if
/// unknown). `first_seq`: the segment's first sequence number, from its header (0 if
/// unknown), which its Pads carry.
pub fn scan(
    disk: &DiskFile,
    at: u64,
    from: u64,
    size: u64,
    (prev_seq, first_seq): (u64, u64),
    mut f: impl FnMut(Item<'_>) -> Result<()>,
) -> Result<Scanned> {
    let key = disk.sum_key();
    let keyed = key != 0;
    let limit = disk.len()?.saturating_sub(at).min(size);
    let mut r = Reader::new(disk, at, limit);
    let mut out = Scanned {
        end: from,
        last_seq: prev_seq,
        ..Scanned::default()
    };
    let mut pos = from;
    let mut payload = Vec::new();
    // Damage since the last confirmed record.
    let mut held: Vec<Damage> = Vec::new();
    let mut first_problem: Option<String> = None;
    // Where the record that set `last_seq` ends, if it was read in order in this segment.
    let mut seq_end: Option<u64> = None;
    loop {
        let at_pos = (pos, out.last_seq, first_seq);
        let problem = match read_record(&mut r, at_pos, key, limit, &mut payload)? {
            Found::Record(h, sound) => {
                let next = pos + h.padded_len() as u64;
                // Version 2 wrote no sequence rule for Dead records (see `read_record`).
                if h.kind != Kind::Pad && (keyed || h.kind != Kind::Dead) {
                    out.last_seq = h.seq;
                    seq_end = Some(next);
                }
                if sound && h.kind == Kind::Pad && h.seq == 0 && !held.is_empty() {
                    // A Pad without its segment's tag (written before Pads carried one)
                    // may be an older segment's, left in a recycled slot right after a
                    // torn record: it confirms nothing (found by review). A later record
                    // in order still does.
                } else if sound {
                    // Confirms everything held: damage in the middle of the log.
                    out.damage.append(&mut held);
                    out.confirmed |= h.kind != Kind::Pad;
                    first_problem = None;
                    let (k, v) = payload.split_at(h.key_len.min(payload.len() as u32) as usize);
                    if matches!(h.kind, Kind::Put | Kind::Delete | Kind::Commit) {
                        f(Item {
                            pos,
                            header: &h,
                            key: k,
                            value: v,
                        })?;
                    }
                    out.end = next;
                } else {
                    let what = format!("a {:?} record whose payload checksum fails", h.kind);
                    first_problem.get_or_insert_with(|| what.clone());
                    held.push(Damage {
                        start: pos,
                        end: next,
                        what,
                    });
                }
                pos = next;
                if pos >= limit {
                    break;
                }
                continue;
            }
            Found::End => break,
            Found::Bad(why) => why,
        };
        // Damage at `pos`: look for the next record start.
        first_problem.get_or_insert_with(|| problem.clone());
        let floor = Seq {
            last: out.last_seq,
            // Between the record that set `last_seq` and a candidate there is at most one
            // record (Dead ones included) per MIN_RECORD bytes. Without keyed checksums
            // (version 2), a candidate beyond that is taken for forged (it would make every
            // genuine record after it look out of order).
            bound_from: seq_end.filter(|_| !keyed),
        };
        let next = resync(&mut r, pos + RECORD_ALIGN as u64, key, keyed, floor, limit)?;
        match next {
            Some(next) => {
                held.push(Damage {
                    start: pos,
                    end: next,
                    what: problem,
                });
                pos = next;
            }
            None => break,
        }
    }
    if out.end < size {
        out.rest = Some(match first_problem {
            Some(p) => p,
            None if limit < size && out.end >= limit => "the end of the file".into(),
            None => "zeros where a header should be".into(),
        });
    }
    Ok(out)
}

enum Found {
    /// A record that checks (payload checksum: `sound`).
    Record(Header, bool),
    /// The end of the readable segment.
    End,
    /// No record here, and why.
    Bad(String),
}

/// The record at `pos`, with its key and value in `payload` (puts and tombstones);
/// `last_seq` the sequence number of the record before it, `first_seq` the segment's.
fn read_record(
    r: &mut Reader<'_>,
    (pos, last_seq, first_seq): (u64, u64, u64),
    key: u64,
    limit: u64,
    payload: &mut Vec<u8>,
) -> Result<Found> {
    let mut hb = [0u8; HEADER_LEN];
    if !r.read(pos, &mut hb)? {
        return Ok(if pos >= limit {
            Found::End
        } else {
            Found::Bad("a partial header".into())
        });
    }
    let h = match Header::decode(&hb, key) {
        Ok(h) => h,
        Err(_) if hb.iter().all(|&b| b == 0) => {
            return Ok(Found::Bad("zeros where a header should be".into()))
        }
        Err(e) => return Ok(Found::Bad(format!("a bad header ({e:?})"))),
    };
    if pos + h.padded_len() as u64 > limit {
        return Ok(Found::Bad(
            "a record cut short by the end of the segment".into(),
        ));
    }
    // Version 2 set the next sequence number at open from puts and tombstones only, so a
    // record after a Dead one may repeat its number: there, Dead records are exempt.
    let keyed = key != 0;
    if h.kind != Kind::Pad && (keyed || h.kind != Kind::Dead) && h.seq <= last_seq {
        return Ok(Found::Bad(format!(
            "a record with sequence number {} where one above {last_seq} belongs",
            h.seq
        )));
    }
    // A Pad tagged with another segment's first sequence number is an older segment's,
    // left in a recycled slot: no record of this one.
    if h.kind == Kind::Pad && h.seq != 0 && first_seq != 0 && h.seq != first_seq {
        return Ok(Found::Bad(format!(
            "a Pad of another segment (tagged {}, this one's first sequence number is \
             {first_seq})",
            h.seq
        )));
    }
    let mut sound = true;
    payload.clear();
    if matches!(h.kind, Kind::Put | Kind::Delete) {
        payload.resize(h.record_len() - HEADER_LEN, 0);
        r.read(pos + HEADER_LEN as u64, payload)?;
        sound = payload_ok(&h, payload);
    }
    Ok(Found::Record(h, sound))
}

/// The smallest record: a header, a one-byte key, padding.
const MIN_RECORD: u64 = 40;

/// What a resynchronisation candidate's sequence number must be: above `last`, and, when
/// `bound_from` is where the record that set `last` ends, at most one more per
/// `MIN_RECORD` bytes since.
#[derive(Clone, Copy)]
struct Seq {
    last: u64,
    bound_from: Option<u64>,
}

impl Seq {
    fn admits(&self, seq: u64, pos: u64) -> bool {
        seq > self.last
            && self
                .bound_from
                .is_none_or(|from| seq - self.last <= (pos - from) / MIN_RECORD + 1)
    }
}

/// The next position from `from` (8-aligned) where a record starts that belongs after
/// the sequence number `seq` admits (see the module docs), if any.
fn resync(
    r: &mut Reader<'_>,
    from: u64,
    key: u64,
    keyed: bool,
    seq: Seq,
    limit: u64,
) -> Result<Option<u64>> {
    let mut pos = from.next_multiple_of(RECORD_ALIGN as u64);
    let mut hb = [0u8; HEADER_LEN];
    let mut payload = Vec::new();
    while pos + HEADER_LEN as u64 <= limit {
        let found = r.find_magic(pos, limit)?;
        let Some(p) = found else {
            return Ok(None);
        };
        pos = p;
        r.read(pos, &mut hb)?;
        if let Ok(h) = Header::decode(&hb, key) {
            let fits = pos + h.padded_len() as u64 <= limit;
            if fits && h.kind != Kind::Pad && seq.admits(h.seq, pos) {
                let payload_ok = keyed || {
                    // Unkeyed checksums (version 2): only a put or tombstone whose payload
                    // checks too is trusted as a record start.
                    matches!(h.kind, Kind::Put | Kind::Delete) && {
                        payload.resize(h.record_len() - HEADER_LEN, 0);
                        r.read(pos + HEADER_LEN as u64, &mut payload)?;
                        payload_ok(&h, &payload)
                    }
                };
                if payload_ok {
                    return Ok(Some(pos));
                }
            }
        }
        pos += RECORD_ALIGN as u64;
    }
    Ok(None)
}

/// Sequential reads of one segment through a large buffer, so a scan costs a few large
/// reads. Positions are relative to the segment's start.
struct Reader<'a> {
    disk: &'a DiskFile,
    at: u64,
    limit: u64,
    buf: Vec<u8>,
    buf_start: u64,
}

const CHUNK: usize = 8 << 20;

impl<'a> Reader<'a> {
    fn new(disk: &'a DiskFile, at: u64, limit: u64) -> Self {
        Reader {
            disk,
            at,
            limit,
            buf: Vec::new(),
            buf_start: 0,
        }
    }

    /// Makes the buffer hold `[pos, pos + len)` if it can (len <= CHUNK).
    fn fill(&mut self, pos: u64, len: usize) -> Result<()> {
        if pos >= self.buf_start && pos + len as u64 <= self.buf_start + self.buf.len() as u64 {
            return Ok(());
        }
        let n = (self.limit - pos).min(CHUNK as u64) as usize;
        self.buf.resize(n, 0);
        self.disk.read_exact_at(&mut self.buf, self.at + pos)?;
        self.buf_start = pos;
        Ok(())
    }

    /// Fills `out` from `pos`; false if the segment's readable part ends first.
    fn read(&mut self, pos: u64, out: &mut [u8]) -> Result<bool> {
        let end = pos + out.len() as u64;
        if end > self.limit {
            return Ok(false);
        }
        if out.len() > CHUNK {
            self.disk.read_exact_at(out, self.at + pos)?;
            return Ok(true);
        }
        self.fill(pos, out.len())?;
        let s = (pos - self.buf_start) as usize;
        out.copy_from_slice(&self.buf[s..s + out.len()]);
        Ok(true)
    }

    /// The first 8-aligned position from `pos` (aligned) where the record magic starts
    /// and a whole header fits before `limit`.
    fn find_magic(&mut self, mut pos: u64, limit: u64) -> Result<Option<u64>> {
        let step = RECORD_ALIGN as u64;
        while pos + HEADER_LEN as u64 <= limit {
            if pos + HEADER_LEN as u64 > self.buf_start + self.buf.len() as u64 {
                // About to read on: step over holes (the unwritten rest of the last
                // segment, punched ranges), where no record can start.
                match self.disk.next_data(self.at + pos)? {
                    Some(d) if d < self.at + limit => {
                        pos = pos.max((d - self.at) / step * step);
                    }
                    _ => return Ok(None),
                }
                if pos + HEADER_LEN as u64 > limit {
                    return Ok(None);
                }
            }
            let len = (limit - pos).min(CHUNK as u64) as usize;
            self.fill(pos, len.min(HEADER_LEN))?;
            let s = (pos - self.buf_start) as usize;
            let avail = self.buf.len() - s;
            let mut i = 0;
            while i + HEADER_LEN <= avail {
                if self.buf[s + i..s + i + 4] == RECORD_MAGIC {
                    return Ok(Some(pos + i as u64));
                }
                i += step as usize;
            }
            // `fill` left at least a header from `pos`, so `i` moved on.
            pos += i as u64;
        }
        Ok(None)
    }
}

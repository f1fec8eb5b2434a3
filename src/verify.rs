//! Walking every live record: `Store::verify` (read and check all of them) and
//! `Store::for_each_record` (listing, `kvs dump`).
//!
//! The walk collects a chunk of index slots at a time under the index lock (so writers
//! wait only that long) and reads each record from the ring or disk_file; every record is
//! checked with `format::parse_put` and must hold a key that hashes to its entry. A record
//! that changes while the walk runs (overwritten, deleted, moved by the reclaimer) is
//! skipped, not reported.

use crate::engine::{Engine, Entry};
use crate::error::{Error, Result};
use crate::format::{parse_put, Put, HEADER_LEN, MAX_KEY_LEN};
use crate::recovery::DamagedRange;

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

/// Problems a report describes.
const MAX_PROBLEMS: usize = 20;

/// The record read for index entry (slot, fp, loc) if it is what the entry says: a put of
/// `loc.len` bytes whose key hashes to the entry and (unless `key_only`) whose checksum
/// holds; else why not.
fn check<'a>(
    e: &Engine,
    (slot, fp, loc): Entry,
    head: &[u8; HEADER_LEN],
    rest: &'a [u8],
    key_only: bool,
) -> std::result::Result<Put<'a>, String> {
    let p = parse_put(head, rest, loc.len, e.sum_key(), key_only)?;
    if !e.hashes_to(p.key, slot, fp) {
        return Err("holds a key that does not hash to its index entry".into());
    }
    Ok(p)
}

/// Walks every index entry (`Engine::for_each_entry`) and reads its record: `head` gets its header, `rest` the first
/// `body_len(key + value length)` bytes after it. Calls `f(entry, read result, head,
/// rest)` until it returns Ok(false) or an error.
fn walk(
    e: &Engine,
    body_len: impl Fn(usize) -> usize,
    mut f: impl FnMut(Entry, Result<()>, &[u8; HEADER_LEN], &[u8]) -> Result<bool>,
) -> Result<()> {
    let mut head = [0u8; HEADER_LEN];
    let mut rest = Vec::new();
    e.for_each_entry(|entry| {
        let loc = entry.2;
        rest.resize(body_len((loc.len as usize).saturating_sub(HEADER_LEN)), 0);
        let read = e.read_raw(loc, &mut head, &mut rest).map(|_| ());
        f(entry, read, &head, &rest)
    })
}

/// `Store::for_each_record`.
pub(crate) fn for_each_record(
    e: &Engine,
    values: bool,
    mut f: impl FnMut(&[u8], &[u8], usize) -> bool,
) -> Result<()> {
    let want = |body: usize| if values { body } else { body.min(MAX_KEY_LEN) };
    walk(e, want, |entry, read, head, rest| {
        read?;
        let (slot, fp, loc) = entry;
        match check(e, entry, head, rest, !values) {
            Ok(p) => Ok(f(p.key, p.value, p.header.value_len as usize)),
            Err(_) if !e.still_current(slot, fp, loc) => Ok(true), // moved
            Err(problem) => Err(Error::corrupt(Some(loc.offset), problem)),
        }
    })
}

/// `Store::verify_with_progress`: `damage` and `kept_slots` are what recovery found.
pub(crate) fn verify(
    e: &Engine,
    damage: &[DamagedRange],
    mut progress: impl FnMut(u64, u64),
) -> Result<VerifyReport> {
    let total = e.index_figures().0;
    let mut report = VerifyReport::default();
    walk(
        e,
        |body| body,
        |entry, read, head, rest| {
            let problem = match read {
                Ok(()) => check(e, entry, head, rest, false).err(),
                Err(Error::Corruption { what, .. }) => Some(what),
                // A record the device cannot read (a bad sector) is reported with the
                // others, and the check goes on: one bad sector must not hide the rest.
                Err(err) if err.errno() == Some(libc::EIO) => Some(format!("unreadable: {err}")),
                Err(err) => return Err(err),
            };
            let (slot, fp, loc) = entry;
            if let Some(p) = problem {
                if e.still_current(slot, fp, loc) {
                    report.corrupt += 1;
                    if report.problems.len() < MAX_PROBLEMS {
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
    let kept = e.segs().kept_slots();
    if kept > 0 {
        report.damaged_ranges += kept;
        report.damaged_bytes += kept * e.segs().size();
        report.problems.push(format!(
            "{kept} segment slots with a damaged segment header kept unread (LOG names them)"
        ));
    }
    for d in damage {
        report.damaged_ranges += 1;
        report.damaged_bytes += d.end - d.start;
        if report.problems.len() < MAX_PROBLEMS {
            report.problems.push(format!(
                "damaged log range [{}, {}) found at open: {}",
                d.start, d.end, d.what
            ));
        }
    }
    let log = e.log();
    log.info(&format!(
        "verify: {} records ({} bytes) sound, {} corrupt, {} damaged log ranges found at open",
        report.records, report.bytes, report.corrupt, report.damaged_ranges
    ));
    for p in &report.problems {
        log.error(&format!("verify: {p}"));
    }
    Ok(report)
}

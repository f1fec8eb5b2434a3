//! Open and recovery: [`open`] takes the directory's lock, opens LOG and disk_file, reads
//! the segment headers, and recovers the index: from IMAGE_file if it belongs to the log
//! as it is, else rebuilt from every segment; then the log after what the image covers is
//! replayed, with resynchronisation past damage (`log/scan.rs`), and the log's end is set
//! after the last valid record. It hands the parts to the engine (`Parts`) and what it
//! found to the store (`OpenReport`).
//!
//! Open never cuts or punches anything because IMAGE_file and the log disagree: an image
//! that does not fit the log (it points into a segment the log no longer has, a segment it
//! needs is missing, or its newest record is not where it says) is set aside for a full
//! rebuild from disk_file. What is cut is only the torn tail: the bytes after the last
//! valid record of the log.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use nix::fcntl::{Flock, FlockArg};

use crate::delta::{self, Base, Journal};
use crate::error::{Error, Result};
use crate::format::SummaryEntry;
use crate::format::{
    padded_len, put_header, Kind, BLOCK, DELTA_FILE, DISK_FILE, HEADER_LEN, IMAGE_FILE, LOCK_FILE,
    LOG_FILE, SEG_HEADER, VALUE_LIMIT_VERSION,
};
use crate::image::{self, ImageMeta};
use crate::index::{hash_key, Index, Location};
use crate::log::device::Latch;
use crate::log::disk::DiskFile;
use crate::log::disk::{online_discard, DiskConfig};
use crate::log::hooks::Hooks;
use crate::log::pages;
use crate::log::ring::{map_ring, WriteBuffer};
use crate::log::scan;
use crate::log::segments::Segments;
use crate::log::summary::Summaries;
use crate::logfile::LogFile;
use crate::options::Options;

/// The parts of an open store that recovery hands to the engine.
pub struct Parts {
    pub opts: Options,
    pub dir: PathBuf,
    pub index: Index,
    /// The index's changes since the image it was loaded from (the replay's).
    pub journal: Journal,
    pub ring: WriteBuffer,
    pub disk: Arc<DiskFile>,
    pub segs: Arc<Segments>,
    pub log: Arc<LogFile>,
    pub latch: Arc<Latch>,
}

/// What an open found, for `Stats` and `verify`.
#[derive(Clone, Debug, Default)]
pub struct OpenReport {
    /// How long open took, in microseconds.
    pub micros: u64,
    pub from_image: bool,
    /// Bytes of the log replayed after what the image covered.
    pub replayed_bytes: u64,
    /// The log offset the image covers (0 without an image).
    pub covered: u64,
    /// Damaged log ranges found and stepped over.
    pub damage: Vec<DamagedRange>,
    /// Segments replayed from their key summaries instead of being read.
    pub summarised: u64,
    /// The image the index was loaded from, if any.
    pub base: Option<Base>,
}

/// An opened store: its parts, what the open found, and the directory's lock.
pub struct Opened {
    pub parts: Parts,
    pub report: OpenReport,
    pub lock: Flock<File>,
}

/// For a new store: whether the memory its ring and index will take can be had (asked
/// and given back at once, nothing touched), so that an open refused for want of it
/// creates nothing.
fn preflight(opts: &Options) -> Result<()> {
    let ring = opts.buffer_size;
    let mem = map_ring(ring)?;
    // With the ring still mapped: both must fit at once.
    let index = Index::can_reserve(opts.expected_records).map_err(no_index(opts));
    // SAFETY: `mem` is the mapping of `ring` bytes just made, used by nothing.
    unsafe { pages::unmap(mem, ring) };
    index
}

/// What an error from the index's allocation becomes: the option named.
fn no_index(opts: &Options) -> impl FnOnce(Error) -> Error {
    let records = opts.expected_records;
    move |e| e.context(|| format!("the index for {records} records (expected_records)"))
}

/// `Err` unless the process may create files in `dir`: checkpoints write IMAGE_file there
/// (through a new file renamed over the old) and the key summaries; an open in a
/// directory it could not write took puts and then failed at close (found by review).
fn writable(dir: &Path) -> Result<()> {
    match nix::unistd::access(
        dir,
        nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK,
    ) {
        Ok(()) => Ok(()),
        Err(e) => Err(Error::within(
            format!(
                "{}: the store's directory must be writable (IMAGE_file and the key \
                 summaries are written there)",
                dir.display()
            ),
            std::io::Error::from(e),
        )),
    }
}

/// Opens (or creates) the store in `dir`: takes its lock, opens LOG and disk_file, reads
/// the segment headers, recovers the index (`use_image`: false for a full rebuild whatever
/// IMAGE_file holds) and sets up the ring after the log's end.
pub fn open(dir: &Path, opts: Options, hooks: &Hooks, use_image: bool) -> Result<Opened> {
    let started = Instant::now();
    if dir.as_os_str().is_empty() {
        // `create_dir_all("")` succeeds and the files went to the working directory, whose
        // fsync (of "") then failed at every image (found by review).
        return Err(Error::InvalidArgument(
            "the store's directory is an empty path (use \".\" for the current one)".into(),
        ));
    }
    let dir = dir.to_path_buf();
    if dir.exists() && !dir.is_dir() {
        return Err(Error::InvalidArgument(format!(
            "{} exists and is not a directory",
            dir.display()
        )));
    }
    let new_store = match &hooks.memory {
        Some(m) => m.len() == 0,
        None => fs::metadata(dir.join(DISK_FILE)).map_or(true, |m| m.len() == 0),
    };
    if new_store {
        opts.validate()?;
        // Before a file is made: an open refused after it left a store behind, with the
        // refused options fixed in its superblock (found by review: `buffer_size` 1 TiB).
        preflight(&opts)?;
    } else {
        opts.validate_knobs()?;
    }
    fs::create_dir_all(&dir).map_err(|e| Error::at_file(&dir, e))?;
    writable(&dir)?;
    let lock_file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(opts.file_mode)
        .open(dir.join(LOCK_FILE))
        .map_err(|e| Error::at_file(&dir.join(LOCK_FILE), e))?;
    let lock = Flock::lock(lock_file, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
        if e == nix::errno::Errno::EWOULDBLOCK {
            Error::Locked
        } else {
            Error::from(e)
        }
    })?;
    let log = Arc::new(LogFile::open(&dir.join(LOG_FILE), opts.file_mode)?);
    let latch = Arc::new(Latch::default());
    let (disk, created) = DiskFile::open(DiskConfig {
        path: &dir.join(DISK_FILE),
        direct_writes: opts.direct_io,
        direct_reads: opts.direct_reads,
        file_mode: opts.file_mode,
        segment_size: opts.segment_size,
        max_value_size: opts.max_value_size,
        latch: latch.clone(),
        hooks,
    })?;
    if (opts.direct_io || opts.direct_reads) && !(disk.is_direct() || disk.reads_direct()) {
        log.warn("O_DIRECT is not supported here; writing through the page cache");
    }
    if created {
        image::sync_dir(&dir)?;
        log.info(&format!("created store in {}", dir.display()));
    }
    if online_discard(&dir) == Some(true) {
        // Info, not a warning: it is a choice of the machine's, and every open would say it.
        log.info(
            "the file system holding the store discards freed blocks online (mounted with \
             `discard`): every segment the reclaimer gives back costs a discard that the next \
             fsync waits for (puts while reclaiming ran 23-27% slower with it in a measurement); \
             a periodic fstrim instead avoids it",
        );
    }
    let disk = Arc::new(disk);
    let sb = *disk.superblock();
    // Formats before 5 do not record the limit: the option's, up to their 5 MiB.
    let limit = if sb.version >= VALUE_LIMIT_VERSION {
        sb.max_value_size
    } else {
        opts.max_value_size.min(sb.max_value_size)
    };
    let (opts, changes) = opts.for_store_limit(limit, sb.max_value_size);
    for c in changes {
        log.info(&c);
    }
    opts.check_segment_size(sb.segment_size)?;
    if sb.segment_size != opts.segment_size && !created {
        log.info(&format!(
            "segment size is {} (fixed at creation; the option's {} applies to new stores)",
            sb.segment_size, opts.segment_size
        ));
    }
    let summaries = Summaries::open(&dir, &disk, opts.file_mode, log.clone())?;
    let segs = Arc::new(Segments::load(disk.clone(), log.clone(), summaries)?);
    let rec = recover(
        &disk,
        &segs,
        &log,
        &opts,
        &dir.join(IMAGE_FILE),
        use_image,
        created,
    )?;
    let mapped: Vec<u64> = segs.mapped().into_iter().map(|(l, _)| l).collect();
    segs.summaries().prune(&mapped);
    let tail_seg = segs.of(rec.tail);
    let first_seq = segs.first_seq(tail_seg).unwrap_or(0);
    let seed = rec
        .tail_entries
        .filter(|&(end, _, _)| segs.of(end) == tail_seg && end <= rec.tail)
        .map(|(_, v, last_seq)| (v, last_seq));
    segs.summaries().start_at(rec.tail, first_seq, seed);
    let ring = WriteBuffer::new(
        &opts,
        rec.tail,
        rec.next_seq,
        disk.clone(),
        segs.clone(),
        log.clone(),
    )?;
    let micros = started.elapsed().as_micros() as u64;
    let (image_ms, replay_ms, cut_ms) = rec.times;
    log.info(&format!(
        "opened: {} records, {} from IMAGE_file, replayed {} bytes, {} damaged ranges, in {} \
         ms (image read by {image_ms} ms, replay by {replay_ms} ms, log end set by {cut_ms} \
         ms)",
        rec.index.len(),
        if rec.opened_from_image {
            "index"
        } else {
            "no index"
        },
        rec.replayed_bytes,
        rec.damage.len(),
        micros / 1000
    ));
    Ok(Opened {
        report: OpenReport {
            micros,
            from_image: rec.opened_from_image,
            replayed_bytes: rec.replayed_bytes,
            covered: rec.covered,
            damage: rec.damage,
            summarised: rec.summarised,
            base: rec.base,
        },
        parts: Parts {
            opts,
            dir,
            index: rec.index,
            journal: rec.journal,
            ring,
            disk,
            segs,
            log,
            latch,
        },
        lock,
    })
}

/// A damaged range of the log found at open (logical offsets).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DamagedRange {
    /// Where the damage starts.
    pub start: u64,
    /// Where the next valid record (or the segment's end) starts.
    pub end: u64,
    /// What was found there.
    pub what: String,
}

/// What recovery found.
pub struct Recovered {
    pub index: Index,
    /// The replay's changes to the image's index (off without an image).
    pub journal: Journal,
    /// The image the index was loaded from, if it was.
    pub base: Option<Base>,
    /// The log's end, where the next record goes.
    pub tail: u64,
    pub next_seq: u64,
    pub opened_from_image: bool,
    /// The log offset the image covers (0 without an image).
    pub covered: u64,
    pub replayed_bytes: u64,
    pub damage: Vec<DamagedRange>,
    /// Segments replayed from their key summaries.
    pub summarised: u64,
    /// Every put and tombstone of the last segment, if all are known, the log offset they
    /// end at, and the sequence number of its last record.
    pub tail_entries: Option<(u64, Vec<SummaryEntry>, u64)>,
    /// Milliseconds until the image was read, the replay done, the end set.
    pub times: (u128, u128, u128),
}

/// Recovers the store whose disk_file and segments are open. `use_image`: false for a
/// full rebuild whatever IMAGE_file holds (`Store::rebuild_index`).
fn recover(
    disk: &DiskFile,
    segs: &Segments,
    log: &LogFile,
    opts: &Options,
    image_path: &Path,
    use_image: bool,
    created: bool,
) -> Result<Recovered> {
    let started = std::time::Instant::now();
    let loaded = if use_image {
        load_image(disk, segs, log, image_path, created)?
    } else {
        log.info("rebuilding the index from disk_file, as asked");
        None
    };
    let image_ms = started.elapsed().as_millis();
    let mut replayed = None;
    let mut base = None;
    if let Some((index, meta, b)) = loaded {
        let r = replay(disk, segs, opts, Some((index, meta)))?;
        // The image may point keys into segments the reclaimer gave back after it was
        // written, as long as the log after it holds their newer records. What the replay
        // left pointing into a missing segment means the image is older than the log.
        match live_by_segment(disk, segs, &r.index, Some(&meta), r.end) {
            Ok(live) => {
                replayed = Some((r, live));
                base = Some(b);
            }
            Err(why) => {
                log.warn(&format!(
                    "IMAGE_file does not belong to the log in disk_file ({why}); it is left \
                     as it is and the index is rebuilt from disk_file"
                ));
                segs.reset_tombs();
            }
        }
    }
    let (r, live) = match replayed {
        Some(found) => found,
        None => {
            let r = replay(disk, segs, opts, None)?;
            // A full rebuild points only at records it read.
            let live = live_by_segment(disk, segs, &r.index, None, r.end).map_err(|why| {
                crate::error::Error::corrupt(None, format!("rebuilt index: {why}"))
            })?;
            (r, live)
        }
    };
    segs.set_live(live);
    let (start, end, from_image) = (r.start, r.end, r.from_image);
    let journal = r.journal;
    for d in &r.damage {
        log.error(&format!(
            "disk_file: damaged log range [{}, {}) ({} bytes): {}; the records after it \
             were kept",
            d.start,
            d.end,
            d.end - d.start,
            d.what
        ));
    }
    if let (Some(l), Some(why)) = (r.short_end, &r.rest) {
        // Cannot be told from damage to synced records at its end (a crash before the
        // sync is the common cause): said at error level, once (its rest is cut).
        log.error(&format!(
            "disk_file: log segment {l} ends short at {end} ({why}) and no later segment \
             holds a record: taken for the log's torn end, as a power cut before a sync \
             leaves it; the later segments are given back. If the store was closed cleanly, \
             the records at its end were damaged"
        ));
    } else if let Some(why) = &r.rest {
        if !why.starts_with("zeros") {
            log.warn(&format!(
                "disk_file: the log ends at {end} ({why}: a torn tail); nothing valid follows, \
                 the rest of the segment is cut"
            ));
        }
    }
    let replay_ms = started.elapsed().as_millis();
    segs.cut_after(end)?;
    let size = segs.size();
    // Replay counted the tombstones of every segment it read from the start.
    segs.set_tombs_known_from(if from_image { start.div_ceil(size) } else { 0 });
    let tail = if end % size != 0 && segs.is_relocation(segs.of(end)) {
        // The log ends in a relocation segment (a crash after its grant, before any put
        // reached the next segment): puts go on at the next segment, as they would have.
        // In the relocation segment they would follow the copies, and once the log went
        // on past it, damage at their end would read as its unwritten rest.
        end.next_multiple_of(size)
    } else {
        // O_DIRECT flushes start on block boundaries: after a cut mid-block, pad to one.
        match segs.physical(end) {
            Some(at) if disk.is_direct() && end % BLOCK as u64 != 0 => {
                let tag = segs.first_seq(segs.of(end)).unwrap_or(0);
                end + (disk.pad_to_block(at, tag)? - at)
            }
            _ => end,
        }
    };
    Ok(Recovered {
        index: r.index,
        journal,
        base,
        tail,
        next_seq: r.last_seq.saturating_add(if r.held_at_end { 2 } else { 1 }),
        opened_from_image: from_image,
        covered: if from_image { start } else { 0 },
        replayed_bytes: end - start,
        damage: r.damage,
        summarised: r.summarised,
        tail_entries: r.tail_entries,
        times: (image_ms, replay_ms, started.elapsed().as_millis()),
    })
}

/// What a replay produced.
struct Replay {
    index: Index,
    /// Its changes to the image's index (off without an image).
    journal: Journal,
    start: u64,
    end: u64,
    last_seq: u64,
    damage: Vec<DamagedRange>,
    /// Why the last segment does not read to its end.
    rest: Option<String>,
    /// The segment taken for the log's torn end although later segments exist
    /// (`ShortEnd`), if one was.
    short_end: Option<u64>,
    from_image: bool,
    /// Segments whose key summary stood in for reading them.
    summarised: u64,
    /// Every put and tombstone of the last segment, if all are known, where they end, and
    /// the sequence number of its last record.
    tail_entries: Option<(u64, Vec<SummaryEntry>, u64)>,
    /// The log ends with records of a batch whose Commit is missing: the next sequence
    /// number skips one, so that nothing written later continues that batch.
    held_at_end: bool,
}

/// Replays the mapped segments in log order from what the image covers (or, without one,
/// from the oldest), into the image's index (or a new one).
fn replay(
    disk: &DiskFile,
    segs: &Segments,
    opts: &Options,
    image: Option<(Index, ImageMeta)>,
) -> Result<Replay> {
    let size = segs.size();
    let mapped = segs.mapped();
    let from_image = image.is_some();
    let mut journal = Journal::new(from_image, image.as_ref().map_or(0, |(_, m)| m.covered));
    let (mut index, start, mut last_seq) = match image {
        Some((idx, meta)) => (idx, meta.covered, meta.next_seq.saturating_sub(1)),
        None => {
            let first = mapped.first().map_or(0, |&(l, _)| l * size);
            let index = Index::try_new(opts.expected_records).map_err(no_index(opts))?;
            (index, first, 0)
        }
    };
    let seed = disk.superblock().hash_seed;
    let progress = opts.recovery_progress.clone();
    let to_scan: Vec<(u64, u64)> = mapped
        .iter()
        .copied()
        .filter(|&(l, _)| (l + 1) * size > start)
        .collect();
    let total = to_scan.len() as u64 * size;
    let mut end = start;
    let mut damage = Vec::new();
    let mut rest = None;
    let mut summarised = 0;
    let mut synced = false;
    let mut tail_entries = None;
    let mut held_at_end = false;
    // A segment that does not read to its end, followed so far only by segments that
    // hold no record (see `ShortEnd`).
    let mut short: Option<ShortEnd> = None;
    let mut short_end = None;
    for (i, &(l, at)) in to_scan.iter().enumerate() {
        if let Some(p) = &progress {
            p.0(i as u64 * size, total);
        }
        let seg_start = l * size;
        let from = start.max(seg_start + SEG_HEADER) - seg_start;
        if let Some(first) = segs.first_seq(l) {
            last_seq = last_seq.max(first - 1);
        }
        let seq_before = last_seq;
        let mut apply = |kind: Kind, key: &[u8], pos: u64, len: usize| -> Result<()> {
            let kh = hash_key(seed, key);
            let off = seg_start + pos;
            if kind == Kind::Put {
                let loc = Location {
                    offset: off,
                    len: len as u32,
                };
                index.insert(&kh, loc)?;
                journal.record(&index, &kh, Some(loc));
            } else {
                if index.remove(&kh).is_some() {
                    journal.record(&index, &kh, None);
                }
                segs.add_tomb(off, padded_len(len) as u64);
            }
            Ok(())
        };
        // The segment's key summary stands for its records up to where it ends: only the
        // rest is read.
        let last = i + 1 == to_scan.len();
        let whole = from == SEG_HEADER;
        let mut from = from;
        // Every record of the segment, while they are all known (to write a summary).
        let mut entries = whole.then(Vec::new);
        // Only a summary that reaches past `from` is read (its header says).
        let first_seq = segs.first_seq(l).unwrap_or(0);
        let summary = segs
            .summaries()
            .header(l, first_seq)
            .filter(|h| h.end > from)
            .and_then(|_| segs.summaries().load(l, first_seq));
        let had_whole = summary.as_ref().is_some_and(|s| s.header.end == size);
        if let Some(s) = summary {
            for e in s.entries.iter().filter(|e| e.pos >= from) {
                apply(e.kind, &e.key, e.pos, e.record_len())?;
            }
            last_seq = last_seq.max(s.header.last_seq);
            from = s.header.end;
            summarised += 1;
            match &mut entries {
                Some(v) if last || !had_whole => *v = s.entries,
                _ => entries = None,
            }
        }
        // Whether its summary listed records (its header's last sequence number is above
        // the segment's floor).
        let summarised_records = last_seq > seq_before;
        // A batch without its Commit at the end of this segment's records.
        let mut pending_here = false;
        let scanned = if from >= size {
            scan::Scanned {
                end: size,
                last_seq,
                ..Default::default()
            }
        } else {
            // The records of a batch wait for its Commit: applied all together, or, if
            // any is missing (torn, damaged), none.
            let mut pending: Vec<SummaryEntry> = Vec::new();
            let mut take = |e: SummaryEntry, entries: &mut Option<Vec<SummaryEntry>>| {
                apply(e.kind, &e.key, e.pos, e.record_len())?;
                if let Some(v) = entries {
                    v.push(e);
                }
                Ok::<(), crate::error::Error>(())
            };
            let scanned = scan::scan(disk, at, from, size, (last_seq, first_seq), |item| {
                let h = item.header;
                let e = || SummaryEntry {
                    pos: item.pos,
                    seq: h.seq,
                    kind: h.kind,
                    value_len: h.value_len,
                    key: item.key.to_vec(),
                };
                if h.kind == Kind::Commit {
                    let whole = pending.len() == h.data_sum as usize
                        && pending.last().is_some_and(|p| p.seq + 1 == h.seq)
                        && pending.windows(2).all(|w| w[0].seq + 1 == w[1].seq);
                    for p in pending.drain(..) {
                        if whole {
                            take(p, &mut entries)?;
                        }
                    }
                } else if h.batch {
                    if pending.last().is_some_and(|p| p.seq + 1 != h.seq) {
                        pending.clear();
                    }
                    pending.push(e());
                } else {
                    pending.clear();
                    take(e(), &mut entries)?;
                }
                Ok(())
            })?;
            // A batch whose Commit never landed, at the log's end: its records stay on
            // disk, never applied. The records written after this open must not continue
            // its sequence numbers, or a later replay would take them for the rest of it
            // (and, the count wrong at their own Commit, drop a batch that was durable).
            pending_here = !pending.is_empty();
            held_at_end = last && pending_here;
            scanned
        };
        // A segment read whole here gets the summary it lacks (built lazily, for stores
        // written before summaries or after one was lost); the last one's records seed the
        // summary the lookout goes on writing.
        let entries = entries.filter(|_| scanned.damage.is_empty());
        let mut short_entries = None;
        match entries {
            Some(v) if scanned.end == size && !had_whole => {
                if !synced {
                    // What the summary lists must be durable first.
                    disk.sync_data()?;
                    synced = true;
                }
                let first_seq = segs.first_seq(l).unwrap_or(0);
                segs.summaries()
                    .write_whole(l, first_seq, &v, scanned.last_seq);
            }
            Some(v) if last => {
                tail_entries = Some((seg_start + scanned.end, v, scanned.last_seq));
            }
            Some(v) if scanned.rest.is_some() && !segs.is_relocation(l) => {
                // Its entries seed the lookout's summary if it turns out to be the end.
                short_entries = Some((seg_start + scanned.end, v, scanned.last_seq));
            }
            _ => {}
        }
        last_seq = scanned.last_seq;
        // Whether this segment holds any record: a summary's, or one read whole (a torn
        // record's header raises `last_seq` but is no record: found by review).
        let holds_records = summarised_records || scanned.confirmed;
        if holds_records {
            short = None;
        }
        for d in scanned.damage {
            damage.push(DamagedRange {
                start: seg_start + d.start,
                end: seg_start + d.end,
                what: d.what,
            });
        }
        end = seg_start + scanned.end;
        match scanned.rest {
            // A relocation segment the reclaimer had not closed: its unwritten rest (the
            // reclaimer syncs what it writes before anything points at it).
            Some(_) if !last && segs.is_relocation(l) => {}
            Some(why) if !last => {
                // Not the log's end: what follows is damage, not a torn tail, unless no
                // later segment holds a record (`ShortEnd`). A short segment with no
                // record after the first short one is part of the same torn end (found by
                // review: it replaced the first, which stayed damage).
                match &mut short {
                    Some(s) if !holds_records => s.damage.push(damage.len()),
                    _ => {
                        short = Some(ShortEnd {
                            segment: l,
                            end,
                            why: why.clone(),
                            damage: vec![damage.len()],
                            entries: short_entries.take(),
                            held: pending_here,
                        })
                    }
                }
                damage.push(DamagedRange {
                    start: end,
                    end: seg_start + size,
                    what: format!("the segment does not read to its end: {why}"),
                });
            }
            r => rest = r.filter(|_| last),
        }
    }
    if let Some(s) = short {
        // Every segment after it holds no record: a power cut kept their headers (each
        // segment is written by a pwritev of its own) and lost this one's end, none of
        // it synced. The log ends here: `cut_after` gives the later segments back and
        // punches this one's rest (found by review: it was reported as damage at every
        // open, and the segment, never read whole, was never reclaimed).
        for &i in s.damage.iter().rev() {
            damage.remove(i);
        }
        end = s.end;
        rest = Some(s.why);
        tail_entries = s.entries;
        held_at_end = s.held;
        short_end = Some(s.segment);
    }
    if let Some(p) = &progress {
        p.0(total, total);
    }
    Ok(Replay {
        index,
        journal,
        start,
        end,
        last_seq,
        damage,
        rest,
        from_image,
        summarised,
        tail_entries,
        held_at_end,
        short_end,
    })
}

/// A segment that does not read to its end and is not the last: damage, unless every
/// later segment turns out to hold no record, which makes it the log's torn end.
struct ShortEnd {
    /// The logical segment.
    segment: u64,
    /// The log offset its valid records end at.
    end: u64,
    /// Why its scan stopped.
    why: String,
    /// Its entry in the damage list, and those of later short segments with no record.
    damage: Vec<usize>,
    /// Its records, to seed the lookout's summary if it is the end.
    entries: Option<(u64, Vec<SummaryEntry>, u64)>,
    /// A batch without its Commit at its end (`held_at_end` if it is the end).
    held: bool,
}

/// IMAGE_file with the IMAGE_delta blocks that chain from it applied, if it is sound and
/// fits the log's segments. Says in LOG why not, if not.
fn load_image(
    disk: &DiskFile,
    segs: &Segments,
    log: &LogFile,
    path: &Path,
    created: bool,
) -> Result<Option<(Index, ImageMeta, Base)>> {
    let (mut index, mut meta, id, image_bytes) = match image::read(path, disk.reads_direct()) {
        Ok(Some(found)) => found,
        Ok(None) => {
            if !created {
                log.warn("no IMAGE_file; rebuilding the index from disk_file");
            }
            return Ok(None);
        }
        Err(e) => {
            log.warn(&format!("{e}; rebuilding the index from disk_file"));
            return Ok(None);
        }
    };
    let chain = match delta::load(&path.with_file_name(DELTA_FILE), id, &mut index, &mut meta) {
        Ok(chain) => chain,
        Err(e) => {
            log.warn(&format!(
                "IMAGE_delta: {e}; rebuilding the index from disk_file"
            ));
            return Ok(None);
        }
    };
    match &chain.stopped {
        // Blocks for an older IMAGE_file: left by a crash before they were removed.
        Some(why) if chain.blocks == 0 && why.ends_with("another IMAGE_file") => {}
        Some(why) => log.warn(&format!(
            "IMAGE_delta: {} blocks applied, then {why}: the rest is not used, the log is \
             replayed from {}",
            chain.blocks, meta.covered
        )),
        None => {}
    }
    if chain.blocks > 0 {
        log.info(&format!(
            "IMAGE_delta: {} blocks, {} changes applied; the image covers {}",
            chain.blocks, chain.changes, meta.covered
        ));
    }
    let base = Base {
        id,
        image_bytes,
        chain_len: chain.len,
    };
    match fits_the_log(disk, segs, &meta) {
        Ok(()) => Ok(Some((index, meta, base))),
        Err(why) => {
            log.warn(&format!(
                "IMAGE_file does not belong to the log in disk_file ({why}); it is left as it \
                 is and the index is rebuilt from disk_file"
            ));
            Ok(None)
        }
    }
}

/// Whether the image can be replayed onto the log as it is: the same store, and every
/// segment from the one holding its covered offset up to the newest present. Returns why
/// not. (What the image points at is checked after the replay, by `live_by_segment`.)
fn fits_the_log(
    disk: &DiskFile,
    segs: &Segments,
    meta: &ImageMeta,
) -> std::result::Result<(), String> {
    let size = segs.size();
    if meta.hash_seed != disk.superblock().hash_seed {
        return Err("it belongs to another disk_file: the hash seed differs".into());
    }
    let mapped = segs.mapped();
    let is_mapped = |l: u64| mapped.binary_search_by_key(&l, |&(m, _)| m).is_ok();
    let first_needed = meta.covered / size;
    let missing = match mapped.last() {
        Some(&(newest, _)) if newest >= first_needed => {
            (first_needed..=newest).find(|&l| !is_mapped(l))
        }
        _ if meta.covered % size != 0 => Some(first_needed),
        _ => None,
    };
    match missing {
        Some(l) => Err(format!(
            "log segment {l}, which the replay after its covered offset {} needs, is missing",
            meta.covered
        )),
        None => Ok(()),
    }
}

/// Live bytes per logical segment (the padded lengths of the records the index points
/// at), in one pass over the nodes, or why the index cannot be right: it points into a
/// segment the log does not hold, or (after replaying onto `image`) the newest record it
/// keeps from the image, below the image's covered offset, is not there.
fn live_by_segment(
    disk: &DiskFile,
    segs: &Segments,
    index: &Index,
    image: Option<&ImageMeta>,
    end: u64,
) -> std::result::Result<BTreeMap<u64, u64>, String> {
    let size = segs.size();
    let mapped = segs.mapped();
    let (lo, hi) = match (mapped.first(), mapped.last()) {
        (Some(a), Some(b)) => (a.0, b.0),
        _ => (0, 0),
    };
    let dense = hi - lo < 1 << 22;
    let mut counts = vec![0u64; if dense { (hi - lo + 1) as usize } else { 0 }];
    let mut live: BTreeMap<u64, u64> = BTreeMap::new();
    let mut outside = None;
    let covered = image.map_or(0, |m| m.covered);
    let mut newest_old: Option<Location> = None;
    // A location no record can have: before a segment's header, across its end, or past
    // the log's end (a damaged image with its checksums repaired; the IMAGE_delta loader
    // checks its changes so). Before a review, a get of such a key read past the ring's
    // mapping or waited for ever for a flush past the tail.
    let mut impossible = None;
    index.for_each_location(|loc| {
        if loc.offset < covered && newest_old.is_none_or(|n| loc.offset > n.offset) {
            newest_old = Some(loc);
        }
        let l = loc.offset / size;
        let bytes = padded_len(loc.len as usize) as u64;
        let at = loc.offset % size;
        if at < SEG_HEADER || at + bytes > size || loc.offset + loc.len as u64 > end {
            impossible.get_or_insert(loc.offset);
        }
        if l < lo || l > hi || mapped.is_empty() {
            outside.get_or_insert(loc.offset);
        } else if dense {
            counts[(l - lo) as usize] += bytes;
        } else {
            *live.entry(l).or_insert(0) += bytes;
        }
    });
    for (i, &n) in counts.iter().enumerate() {
        if n > 0 {
            live.insert(lo + i as u64, n);
        }
    }
    let gone = live
        .keys()
        .copied()
        .find(|l| mapped.binary_search_by_key(l, |&(m, _)| m).is_err());
    if let Some(off) = impossible {
        return Err(format!(
            "the index points at a record at {off} that no segment of the log can hold"
        ));
    }
    if let Some(off) = outside.or(gone.map(|l| l * size)) {
        return Err(format!(
            "the index points at a record at {off}, in a log segment disk_file does not hold"
        ));
    }
    if let (Some(meta), Some(loc)) = (image, newest_old) {
        // Its segment is held (checked above): the record must be a put of that length
        // written before the image (an image newer than the log points at nothing).
        let mut hb = [0u8; HEADER_LEN];
        let sound = matches!(segs.read_record(loc.offset, &mut hb, &mut []), Ok(true))
            && put_header(&hb, loc.len, disk.sum_key()).is_ok_and(|h| h.seq < meta.next_seq);
        if !sound {
            return Err(format!(
                "the newest record it points at, at {}, is not there",
                loc.offset
            ));
        }
    }
    Ok(live)
}

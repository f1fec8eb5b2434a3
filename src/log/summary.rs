//! Key summaries: for each log segment, a side file listing the puts and tombstones it
//! holds (position, sequence number, kind, value length, key), so that a rebuild of the
//! index and a listing of keys read summaries instead of values (Bitcask's hint files).
//!
//! The lookout notes every record it writes, in log order, taking header and key from the
//! ring (`WriteBuffer::flush_once` calls [`Summaries::note`] once a range is written). A
//! record's kind is final once the lookout has claimed its header (a put overwritten before
//! its flush is Dead on disk and not listed), so a summary lists exactly the puts and
//! tombstones disk_file holds. The entries of the segment being written go to
//! `summary/<L>.part`; once the segment is full and the log is durable past its end, the
//! file gets its header and checksum, is fsync'ed and renamed to `summary/<L>` (16 hex
//! digits). Close does the same for the open segment, covering the log up to its tail; the
//! next open continues that segment's summary if the log still ends there.
//!
//! A summary is advisory: one that is missing, damaged, of another segment (its logical
//! number or first sequence number differs) or of another store (its checksum is keyed by
//! the hash seed) is ignored, and the segment is scanned instead. It never replaces a
//! record's own checksum: a get still checks the record. An I/O error while writing one
//! stops summaries for this open (logged), and never fails the store.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use xxhash_rust::xxh3::Xxh3;

use crate::error::Result;
use crate::format::{
    padded_len, summary_sum, Header, Kind, SegHeader, SummaryEntry, SummaryHeader, HEADER_LEN,
    MAX_KEY_LEN, SEG_HEADER, SEG_HEAD_LEN, SUMMARY_DIR, SUM_ENTRY_LEN, SUM_HEADER_LEN,
};
use crate::log::disk::DiskFile;
use crate::logfile::LogFile;

/// What `Summaries::entries_of` knows of a segment: the entries kept, the position they
/// reach, and the last entry's sequence number.
pub type Entries = (Vec<SummaryEntry>, u64, u64);

/// A summary read back and checked.
#[derive(Debug)]
pub struct Summary {
    pub header: SummaryHeader,
    pub entries: Vec<SummaryEntry>,
}

/// The summary being written for one segment.
struct Building {
    logical: u64,
    first_seq: u64,
    /// The `.part` file while entries are added; closed once the segment is full (a
    /// store that syncs rarely may have many full segments waiting).
    file: Option<BufWriter<File>>,
    digest: Xxh3,
    count: u64,
    last_seq: u64,
    /// Position in the segment up to which every record is noted.
    end: u64,
    /// False when records before the first noted one are unknown (the summary is dropped).
    valid: bool,
    scratch: Vec<u8>,
}

struct Writer {
    /// The log offset of the next record to note.
    cursor: u64,
    open: Option<Building>,
    /// Full segments waiting for the log to be durable past their end.
    done: Vec<Building>,
    /// An I/O error stopped summaries for this open.
    stopped: bool,
    /// (segment, first sequence number, position): the open segment's summary on disk
    /// ends where the log does; it is continued (`adopt`) when the first record comes, and
    /// left as it is if none does.
    adopt: Option<(u64, u64, u64)>,
}

/// The key summaries of a store: reading them, and writing them as the log is written.
pub struct Summaries {
    dir: PathBuf,
    seed: u64,
    sum_key: u64,
    version: u32,
    size: u64,
    file_mode: u32,
    log: Arc<LogFile>,
    w: Mutex<Writer>,
    /// Held while `finish_durable` takes summaries out of `w` and finishes their files, so
    /// that `entries_of` finds each summary either in `w` or finished on disk, never
    /// between (a listing would read the whole segment instead).
    finishing: Mutex<()>,
}

impl Summaries {
    /// The summaries in `store_dir/summary` (created if missing).
    pub fn open(
        store_dir: &Path,
        disk: &DiskFile,
        file_mode: u32,
        log: Arc<LogFile>,
    ) -> Result<Self> {
        let dir = store_dir.join(SUMMARY_DIR);
        fs::create_dir_all(&dir)?;
        let sb = disk.superblock();
        Ok(Summaries {
            dir,
            seed: sb.hash_seed,
            sum_key: sb.sum_key(),
            version: sb.version,
            size: sb.segment_size,
            file_mode,
            log,
            w: Mutex::new(Writer {
                cursor: 0,
                open: None,
                done: Vec::new(),
                stopped: false,
                adopt: None,
            }),
            finishing: Mutex::new(()),
        })
    }

    fn path(&self, l: u64) -> PathBuf {
        self.dir.join(format!("{l:016x}"))
    }

    fn part_path(&self, l: u64) -> PathBuf {
        self.dir.join(format!("{l:016x}.part"))
    }

    /// The summary of logical segment `l` whose header says `first_seq` (0: version 2), if
    /// there is a sound one. Never fails: anything wrong means no summary.
    pub fn load(&self, l: u64, first_seq: u64) -> Option<Summary> {
        let (b, h, _) = self.read_checked(l, first_seq)?;
        self.decode(&b, h, first_seq)
    }

    /// The header of `l`'s summary if it is one of this segment (the entries and the
    /// checksum are not read): to learn where it ends without loading it.
    pub fn header(&self, l: u64, first_seq: u64) -> Option<SummaryHeader> {
        let mut b = [0u8; SUM_HEADER_LEN];
        File::open(self.path(l)).ok()?.read_exact(&mut b).ok()?;
        SummaryHeader::decode(&b).filter(|h| self.fits(h, l, first_seq))
    }

    fn fits(&self, h: &SummaryHeader, l: u64, first_seq: u64) -> bool {
        h.seed == self.seed
            && h.logical == l
            && h.first_seq == first_seq
            && (SEG_HEADER..=self.size).contains(&h.end)
    }

    /// The bytes of `l`'s summary, its header and the digest of its entries, if the header
    /// fits the segment and the checksum holds (the entries are not decoded).
    fn read_checked(&self, l: u64, first_seq: u64) -> Option<(Vec<u8>, SummaryHeader, Xxh3)> {
        let mut b = Vec::new();
        File::open(self.path(l)).ok()?.read_to_end(&mut b).ok()?;
        let h = SummaryHeader::decode(&b)?;
        if !self.fits(&h, l, first_seq) || b.len() < SUM_HEADER_LEN + 8 {
            return None;
        }
        let mut digest = Xxh3::new();
        digest.update(&b[SUM_HEADER_LEN..b.len() - 8]);
        let mut head = [0u8; SUM_HEADER_LEN];
        head.copy_from_slice(&b[..SUM_HEADER_LEN]);
        let sum = u64::from_le_bytes(b[b.len() - 8..].try_into().ok()?);
        (summary_sum(&head, digest.digest(), self.seed) == sum).then_some((b, h, digest))
    }

    /// Decodes checked summary bytes; `None` if the entries are not in order or not
    /// within the header's bounds.
    fn decode(&self, b: &[u8], h: SummaryHeader, first_seq: u64) -> Option<Summary> {
        let body = &b[SUM_HEADER_LEN..b.len() - 8];
        let mut entries = Vec::with_capacity(h.count.min(1 << 20) as usize);
        let (mut at, mut next_pos, mut last_seq) = (0, SEG_HEADER, first_seq.saturating_sub(1));
        while at < body.len() {
            let (e, n) = SummaryEntry::decode(&body[at..])?;
            let end = e.pos.checked_add(padded_len(e.record_len()) as u64)?;
            if e.pos < next_pos || end > h.end || e.seq <= last_seq {
                return None;
            }
            (next_pos, last_seq) = (end, e.seq);
            entries.push(e);
            at += n;
        }
        // `last_seq` covers every record, Dead and Commit ones included.
        (entries.len() as u64 == h.count && last_seq <= h.last_seq.max(first_seq.saturating_sub(1)))
            .then_some(Summary { header: h, entries })
    }

    /// What is known of segment `l`'s records without reading them: the entries of its
    /// summary on disk or of the one being written (whichever reaches further) that `keep`
    /// keeps, the position they reach, and the sequence number of the last entry (kept or
    /// not; `first_seq - 1` if none). For listings; the caller reads the rest of the
    /// segment. The locks are held only to open the files: a finished summary never
    /// changes, nor do the first entries of one being written, so they are read with the
    /// locks released (read under them, they held every durable flush, which finishes
    /// summaries: a review saw one `Always` writer's longest put go from 45 to 438 ms
    /// while three listings ran). Entries are decoded from the files a buffer at a time
    /// and only those kept are held (all of a segment's were: a listing of a prefix that
    /// matched nothing took 434 MB more for 256 MiB segments of 40-byte records).
    pub fn entries_of(
        &self,
        l: u64,
        first_seq: u64,
        keep: impl Fn(&SummaryEntry) -> bool,
    ) -> Entries {
        let (on_disk, part) = {
            let _settled = self.finishing.lock();
            let on_disk = File::open(self.path(l)).ok();
            let mut w = self.w.lock();
            let Writer { open, done, .. } = &mut *w;
            let part = open
                .iter_mut()
                .chain(done.iter_mut())
                .find(|b| b.logical == l && b.valid)
                .and_then(|b| {
                    if let Some(f) = b.file.as_mut() {
                        f.flush().ok()?;
                    }
                    let f = File::open(self.part_path(l)).ok()?;
                    Some((f, b.count, b.end))
                });
            (on_disk, part)
        };
        let on_disk = on_disk.and_then(|f| self.read_entries(f, l, first_seq, &keep));
        let part = part.and_then(|(f, count, end)| {
            let mut r = std::io::BufReader::with_capacity(1 << 20, f);
            r.seek(SeekFrom::Start(SUM_HEADER_LEN as u64)).ok()?;
            let mut entries = Vec::new();
            let mut last_seq = first_seq.saturating_sub(1);
            for _ in 0..count {
                let e = read_entry(&mut r)?;
                last_seq = e.seq;
                if keep(&e) {
                    entries.push(e);
                }
            }
            Some((entries, end, last_seq))
        });
        match (on_disk, part) {
            (Some(d), Some(w)) if d.1 >= w.1 => d,
            (_, Some(w)) => w,
            (Some(d), None) => d,
            (None, None) => (Vec::new(), SEG_HEADER, first_seq.saturating_sub(1)),
        }
    }

    /// The entries `keep` keeps of the finished summary of `l` open in `f`, and where the
    /// summary ends, if it is sound (`load`'s checks, made a buffer at a time: the
    /// checksum first, then the entries' order and bounds as they are decoded).
    fn read_entries(
        &self,
        f: File,
        l: u64,
        first_seq: u64,
        keep: &impl Fn(&SummaryEntry) -> bool,
    ) -> Option<Entries> {
        let len = f.metadata().ok()?.len();
        let body = len.checked_sub((SUM_HEADER_LEN + 8) as u64)?;
        let mut r = std::io::BufReader::with_capacity(1 << 20, f);
        let mut head = [0u8; SUM_HEADER_LEN];
        r.read_exact(&mut head).ok()?;
        let h = SummaryHeader::decode(&head).filter(|h| self.fits(h, l, first_seq))?;
        let mut digest = Xxh3::new();
        let mut left = body;
        while left > 0 {
            let chunk = r.fill_buf().ok()?;
            let n = (chunk.len() as u64).min(left) as usize;
            if n == 0 {
                return None;
            }
            digest.update(&chunk[..n]);
            r.consume(n);
            left -= n as u64;
        }
        let mut sum = [0u8; 8];
        r.read_exact(&mut sum).ok()?;
        if summary_sum(&head, digest.digest(), self.seed) != u64::from_le_bytes(sum) {
            return None;
        }
        r.seek(SeekFrom::Start(SUM_HEADER_LEN as u64)).ok()?;
        let mut entries = Vec::new();
        let (mut at, mut count) = (0u64, 0u64);
        let (mut next_pos, mut last_seq) = (SEG_HEADER, first_seq.saturating_sub(1));
        while at < body {
            let e = read_entry(&mut r)?;
            let end = e.pos.checked_add(padded_len(e.record_len()) as u64)?;
            if e.pos < next_pos || end > h.end || e.seq <= last_seq {
                return None;
            }
            (next_pos, last_seq) = (end, e.seq);
            at += (SUM_ENTRY_LEN + e.key.len()) as u64;
            count += 1;
            if keep(&e) {
                entries.push(e);
            }
        }
        // As in `decode`.
        (at == body && count == h.count && last_seq <= h.last_seq.max(first_seq.saturating_sub(1)))
            .then_some((entries, h.end, last_seq))
    }

    /// Writes the summary of a whole segment that recovery read (a store written before
    /// summaries, or one whose summary was lost); `last_seq`: the sequence number of its
    /// last record. The caller has made the log durable.
    pub fn write_whole(&self, l: u64, first_seq: u64, entries: &[SummaryEntry], last_seq: u64) {
        let mut b = match self.create(l, first_seq) {
            Ok(b) => b,
            Err(e) => return self.stop(&format!("summary of segment {l}: {e}")),
        };
        for e in entries {
            if let Err(err) = b.add(e) {
                return self.stop(&format!("summary of segment {l}: {err}"));
            }
        }
        b.end = self.size;
        b.last_seq = b.last_seq.max(last_seq);
        if let Err(e) = self.finish(b) {
            self.stop(&format!("summary of segment {l}: {e}"));
        }
    }

    /// Deletes the summary of `l` (its segment was given back or cut), and drops one still
    /// waiting for the log to be durable past its end: a segment closed early for a
    /// relocation grant may be given back before any sync finishes it (finished later, its
    /// file would be gone: that failed and stopped every summary until reopened).
    pub fn remove(&self, l: u64) {
        let _finishing = self.finishing.lock();
        self.w.lock().done.retain(|b| b.logical != l);
        let _ = fs::remove_file(self.path(l));
        let _ = fs::remove_file(self.part_path(l));
    }

    /// Deletes summaries of segments not in `mapped` and every unfinished `.part` file.
    pub fn prune(&self, mapped: &[u64]) {
        let Ok(rd) = fs::read_dir(&self.dir) else {
            return;
        };
        for e in rd.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            let keep = u64::from_str_radix(&name, 16).is_ok_and(|l| mapped.contains(&l));
            if !keep {
                let _ = fs::remove_file(e.path());
            }
        }
    }

    /// Starts noting records at log offset `tail`, where the log continues after open.
    /// `known`: every put and tombstone of `tail`'s segment and the sequence number of its
    /// last record, if recovery read them all (only a pad may lie between the last and
    /// `tail`). Else the summary on disk is continued if it ends exactly at `tail` (when
    /// the first record comes: an open and close without writes leaves it as it is);
    /// else that segment gets none.
    pub fn start_at(&self, tail: u64, first_seq: u64, known: Option<(Vec<SummaryEntry>, u64)>) {
        let (l, pos) = (tail / self.size, tail % self.size);
        let mut w = self.w.lock();
        w.cursor = tail;
        if pos == 0 || w.stopped {
            return;
        }
        if known.is_none() && self.header(l, first_seq).is_some_and(|h| h.end == pos) {
            w.adopt = Some((l, first_seq, pos));
            return;
        }
        let res = self.create(l, first_seq).and_then(|mut b| {
            b.end = pos;
            b.valid = pos == SEG_HEADER;
            if let Some((entries, last_seq)) = &known {
                for e in entries {
                    b.add(e)?;
                }
                b.last_seq = b.last_seq.max(*last_seq);
                b.valid = true;
            }
            Ok(b)
        });
        match res {
            Ok(b) => w.open = Some(b),
            Err(e) => {
                drop(w);
                self.stop(&format!("summary of segment {l}: {e}"));
            }
        }
    }

    /// Notes every record that starts before log offset `upto` and was not noted yet.
    /// `read(off, buf)` fills `buf` from the ring (false if the ring no longer has it).
    pub fn note(&self, upto: u64, read: impl Fn(u64, &mut [u8]) -> bool) {
        let mut w = self.w.lock();
        if w.stopped {
            return;
        }
        if let Err(e) = self.note_locked(&mut w, upto, &read) {
            drop(w);
            self.stop(&format!("noting records for the summaries: {e}"));
        }
    }

    fn note_locked(
        &self,
        w: &mut Writer,
        upto: u64,
        read: &impl Fn(u64, &mut [u8]) -> bool,
    ) -> Result<()> {
        if let Some((l, first_seq, pos)) = w.adopt.filter(|_| w.cursor < upto) {
            w.adopt = None;
            let b = match self.adopt(l, first_seq, pos)? {
                Some(b) => b,
                None => {
                    // It did not check after all: this segment gets no summary.
                    let mut b = self.create(l, first_seq)?;
                    (b.end, b.valid) = (pos, false);
                    b
                }
            };
            w.open = Some(b);
        }
        let mut hb = [0u8; HEADER_LEN];
        while w.cursor < upto {
            let pos = w.cursor % self.size;
            if pos == 0 {
                // A segment header: the previous segment is full.
                if let Some(mut b) = w.open.take() {
                    b.end = self.size;
                    b.seal()?;
                    w.done.push(b);
                }
                let mut sh = [0u8; SEG_HEAD_LEN];
                let found = read(w.cursor, &mut sh)
                    .then(|| SegHeader::decode(&sh, self.seed, self.version))
                    .flatten();
                let l = w.cursor / self.size;
                let mut b = self.create(l, found.map_or(0, |h| h.first_seq))?;
                b.valid = found.is_some_and(|h| h.logical == l);
                b.end = SEG_HEADER;
                w.open = Some(b);
                w.cursor += SEG_HEADER;
                continue;
            }
            let Some(b) = w.open.as_mut() else {
                // Not started (a failed start): skip to the next segment.
                w.cursor = (w.cursor / self.size + 1) * self.size;
                continue;
            };
            let h = read(w.cursor, &mut hb)
                .then(|| Header::decode(&hb, self.sum_key).ok())
                .flatten();
            let Some(h) = h else {
                // Cannot happen with what the ring holds; give up on this segment.
                b.valid = false;
                w.cursor = (w.cursor / self.size + 1) * self.size;
                continue;
            };
            if h.kind != Kind::Pad {
                // Dead and Commit records count for the next sequence number too.
                b.last_seq = b.last_seq.max(h.seq);
            }
            if matches!(h.kind, Kind::Put | Kind::Delete) {
                let mut key = vec![0u8; h.key_len as usize];
                if !read(w.cursor + HEADER_LEN as u64, &mut key) {
                    b.valid = false;
                }
                b.add(&SummaryEntry {
                    pos,
                    seq: h.seq,
                    kind: h.kind,
                    value_len: h.value_len,
                    key,
                })?;
            }
            w.cursor += h.padded_len() as u64;
            b.end = match w.cursor % self.size {
                0 => self.size,
                p => p,
            };
        }
        Ok(())
    }

    /// The ring's tail jumped from `from` (a segment boundary, every record before it noted)
    /// to `to` over a relocation segment, whose summary the reclaimer writes itself: the
    /// segment before `from` is full.
    pub fn skip(&self, from: u64, to: u64) {
        let mut w = self.w.lock();
        if w.cursor != from {
            // Not caught up (cannot happen: the ring was written up to `from`): the
            // segments in between get no summary.
            if let Some(mut b) = w.open.take() {
                b.valid = false;
                w.done.push(b);
            }
        } else if let Some(mut b) = w.open.take() {
            b.end = self.size;
            if let Err(e) = b.seal() {
                drop(w);
                return self.stop(&format!("summary of segment {}: {e}", from / self.size - 1));
            }
            w.done.push(b);
        }
        w.adopt = None;
        w.cursor = to;
    }

    /// Finishes the summaries of full segments whose end the durable log has passed.
    pub fn finish_durable(&self, synced: u64) {
        let _finishing = self.finishing.lock();
        let ready: Vec<Building> = {
            let mut w = self.w.lock();
            let (ready, wait) = std::mem::take(&mut w.done)
                .into_iter()
                .partition(|b| (b.logical + 1) * self.size <= synced);
            w.done = wait;
            ready
        };
        for b in ready {
            let l = b.logical;
            if let Err(e) = self.finish(b) {
                self.stop(&format!("summary of segment {l}: {e}"));
            }
        }
    }

    /// At close, with the whole log durable: finishes every summary, the open segment's
    /// too (covering the log up to its tail).
    pub fn close(&self, synced: u64) {
        self.finish_durable(synced);
        let _finishing = self.finishing.lock();
        let open = self.w.lock().open.take();
        if let Some(b) = open {
            let l = b.logical;
            if let Err(e) = self.finish(b) {
                self.stop(&format!("summary of segment {l}: {e}"));
            }
        }
    }

    /// Continues `l`'s summary on disk if it ends exactly at `pos` (its checksum holds):
    /// the file becomes the `.part` being written, its checksum cut off, so that its
    /// entries are neither decoded nor copied (a crash before it is finished again leaves
    /// the segment without a summary, as for any `.part`).
    fn adopt(&self, l: u64, first_seq: u64, pos: u64) -> Result<Option<Building>> {
        let Some((bytes, h, digest)) = self
            .read_checked(l, first_seq)
            .filter(|(_, h, _)| h.end == pos)
        else {
            return Ok(None);
        };
        let body_end = bytes.len() - 8;
        fs::rename(self.path(l), self.part_path(l))?;
        let mut file = OpenOptions::new().write(true).open(self.part_path(l))?;
        file.set_len(body_end as u64)?;
        file.seek(SeekFrom::End(0))?;
        Ok(Some(Building {
            logical: l,
            first_seq,
            file: Some(BufWriter::with_capacity(64 << 10, file)),
            digest,
            count: h.count,
            last_seq: h.last_seq,
            end: pos,
            valid: true,
            scratch: Vec::new(),
        }))
    }

    fn create(&self, l: u64, first_seq: u64) -> Result<Building> {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(self.file_mode)
            .open(self.part_path(l))?;
        file.write_all(&[0u8; SUM_HEADER_LEN])?;
        Ok(Building {
            logical: l,
            first_seq,
            file: Some(BufWriter::with_capacity(64 << 10, file)),
            digest: Xxh3::new(),
            count: 0,
            last_seq: 0,
            end: SEG_HEADER,
            valid: true,
            scratch: Vec::new(),
        })
    }

    /// Writes the header and checksum of `b`, syncs it and puts it in place; a summary
    /// that is not valid is deleted instead.
    fn finish(&self, b: Building) -> Result<()> {
        let l = b.logical;
        if !b.valid {
            drop(b);
            let _ = fs::remove_file(self.part_path(l));
            return Ok(());
        }
        let header = SummaryHeader {
            seed: self.seed,
            logical: l,
            first_seq: b.first_seq,
            end: b.end,
            count: b.count,
            last_seq: b.last_seq,
        }
        .encode();
        let sum = summary_sum(&header, b.digest.digest(), self.seed);
        let mut file = match b.file {
            Some(f) => f.into_inner().map_err(|e| e.into_error())?,
            None => OpenOptions::new().write(true).open(self.part_path(l))?,
        };
        file.seek(SeekFrom::End(0))?;
        file.write_all(&sum.to_le_bytes())?;
        file.write_all_at(&header, 0)?;
        file.sync_all()?;
        fs::rename(self.part_path(l), self.path(l))?;
        File::open(&self.dir)?.sync_all()?;
        Ok(())
    }

    fn stop(&self, why: &str) {
        let mut w = self.w.lock();
        if !w.stopped {
            w.stopped = true;
            w.open = None;
            w.done.clear();
            drop(w);
            self.log.warn(&format!(
                "{why}; no more key summaries are written until reopened"
            ));
        }
    }
}

impl Building {
    /// The segment is full: writes out the buffered entries and closes the file until
    /// the summary is finished.
    fn seal(&mut self) -> Result<()> {
        if let Some(f) = self.file.take() {
            f.into_inner().map_err(|e| e.into_error())?;
        }
        Ok(())
    }

    fn add(&mut self, e: &SummaryEntry) -> Result<()> {
        self.scratch.clear();
        e.encode_into(&mut self.scratch);
        self.digest.update(&self.scratch);
        if let Some(f) = self.file.as_mut() {
            f.write_all(&self.scratch)?;
        }
        self.count += 1;
        self.last_seq = self.last_seq.max(e.seq);
        debug_assert!(self.scratch.len() >= SUM_ENTRY_LEN);
        Ok(())
    }
}

/// Reads one summary entry from `r` (`SummaryEntry::decode`'s checks); `None` if it is cut
/// short or a field is out of range.
fn read_entry(r: &mut impl Read) -> Option<SummaryEntry> {
    let mut b = [0u8; SUM_ENTRY_LEN + MAX_KEY_LEN];
    r.read_exact(&mut b[..SUM_ENTRY_LEN]).ok()?;
    let key_len = (u16::from_le_bytes([b[20], b[21]]) as usize).min(MAX_KEY_LEN);
    r.read_exact(&mut b[SUM_ENTRY_LEN..SUM_ENTRY_LEN + key_len])
        .ok()?;
    SummaryEntry::decode(&b[..SUM_ENTRY_LEN + key_len]).map(|(e, _)| e)
}

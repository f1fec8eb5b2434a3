//! IMAGE_delta: the index's changes since IMAGE_file, so that a checkpoint writes only
//! what changed (the seed's "real-time" persistence of the index, incrementally).
//!
//! The engine journals every change to the index (`Journal`): the entry (slot,
//! fingerprint) now points at a location, or nowhere. A checkpoint takes the journal in
//! O(1) under the ring lock and appends it to IMAGE_delta as one block, which names the
//! IMAGE_file it applies to and the covered offsets it leads from and to. Recovery loads
//! IMAGE_file, then applies the blocks that chain from it (`load`), and stops at the first
//! that does not: torn, damaged, or written for another IMAGE_file.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use xxhash_rust::xxh3::xxh3_64;

use crate::error::{Error, Result};
use crate::format::{u32_at, u64_at, xxh3_long};
use crate::image::{sync_dir, ImageId, ImageMeta};
use crate::index::{Index, KeyHash, Location};
use crate::log::fault::{Faults, Op};

/// A block's first 8 bytes.
pub const DELTA_MAGIC: [u8; 8] = *b"KVSDLT\0\0";
/// The IMAGE_delta format version.
pub const DELTA_VERSION: u32 = 1;
/// Bytes of a block's header.
pub const DELTA_HEADER_LEN: usize = 72;
/// Bytes of one change in a block.
pub const CHANGE_BYTES: usize = 24;

/// One change to the index: the entry (slot, fingerprint) points at a location, or is
/// gone. 24 bytes, as in IMAGE_delta.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Change {
    slot: u32,
    /// The record's length; 0: the entry is gone.
    len: u32,
    fp: u64,
    offset: u64,
}

impl Change {
    pub fn new(slot: u32, fp: u64, loc: Option<Location>) -> Change {
        let (len, offset) = loc.map_or((0, 0), |l| (l.len, l.offset));
        Change {
            slot,
            len,
            fp,
            offset,
        }
    }

    /// Where the entry points now, if anywhere.
    pub fn loc(&self) -> Option<Location> {
        (self.len > 0).then_some(Location {
            offset: self.offset,
            len: self.len,
        })
    }
}

/// The changes to the index since the state the newest image holds (IMAGE_file and the
/// IMAGE_delta blocks chained to it), in order.
#[derive(Debug, Default)]
pub struct Journal {
    /// Off when no image this open wrote or trusts holds the state the changes would start
    /// from, or when the journal outgrew its cap: the next checkpoint writes IMAGE_file
    /// whole and turns it on.
    on: bool,
    /// The covered offset the changes start from.
    since: u64,
    changes: Vec<Change>,
}

/// The journal turns itself off past this many changes, or a quarter of the records if
/// more (24 bytes each: a quarter of the records is about a fifth of the index's memory).
const JOURNAL_MIN_CAP: usize = 1 << 20;

/// The longest IMAGE_delta over an image of `nodes` nodes, with room to spare: the chain is
/// folded once it passes an eighth of IMAGE_file (at least 1 MiB; 28 bytes a node, 4 a
/// slot), plus one block of at most `cap` changes; 64 MiB, 64 bytes a node and one a slot
/// is more than both. A longer file (another file put in its place, a crafted one) is not
/// read: its blocks are not applied and the log is replayed from IMAGE_file (before, reading
/// it whole failed for want of memory and the open rebuilt the index from disk_file).
fn chain_most(nodes: u64, slots: u64) -> u64 {
    (64 << 20) + 64 * nodes + slots
}

/// The journal's cap for an index of `records`.
fn cap(records: u64) -> usize {
    JOURNAL_MIN_CAP.max(records as usize / 4)
}

impl Journal {
    /// A journal of changes after the image covering `since` (on), or an off one.
    pub fn new(on: bool, since: u64) -> Journal {
        Journal {
            on,
            since,
            changes: Vec::new(),
        }
    }

    /// Whether changes are journaled (see `on`).
    pub fn is_on(&self) -> bool {
        self.on
    }

    /// Whether the journal holds half its cap for an index of `records`: the checkpoint
    /// thread takes a checkpoint then, before it overflows and the next checkpoint has to
    /// copy the whole index (many small records between two byte-triggered checkpoints).
    pub fn filling(&self, records: u64) -> bool {
        self.on && self.changes.len() >= cap(records) / 2
    }

    /// Records that `index` now points the key hashed to `kh` at `loc` (or nowhere).
    pub fn record(&mut self, index: &Index, kh: &KeyHash, loc: Option<Location>) {
        if !self.on {
            return;
        }
        let c = Change::new(index.slot_for(kh) as u32, kh.fp, loc);
        if self.changes.len() >= cap(index.len()) {
            self.on = false;
            self.changes = Vec::new();
            return;
        }
        self.changes.push(c);
    }

    /// The changes since the last image and the offset they start from, if journaled; the
    /// journal goes on from `to` (the ring's tail: the caller holds the ring lock).
    pub fn take(&mut self, to: u64) -> Option<(u64, Vec<Change>)> {
        if !self.on {
            return None;
        }
        let since = std::mem::replace(&mut self.since, to);
        Some((since, std::mem::take(&mut self.changes)))
    }

    /// Puts back changes `take` gave (starting from `since`) that could not be written:
    /// they go before those recorded since, so that the next block chains from `since`
    /// again. Nothing if the journal has turned off meanwhile (the next image is whole).
    pub fn give_back(&mut self, since: u64, mut changes: Vec<Change>, records: u64) {
        if !self.on {
            return;
        }
        if changes.len() + self.changes.len() > cap(records) {
            self.on = false;
            self.changes = Vec::new();
            return;
        }
        changes.append(&mut self.changes);
        self.changes = changes;
        self.since = since;
    }

    /// Starts over after a whole image covering `at`.
    pub fn restart(&mut self, at: u64) {
        *self = Journal::new(true, at);
    }
}

/// Encodes the changes that lead from the image covering `from` to `meta` as one block
/// for the IMAGE_file whose id is `base`. Only the last change of each entry is kept.
pub fn encode(base: u64, from: u64, meta: &ImageMeta, changes: &[Change]) -> Vec<u8> {
    let mut last: HashMap<(u32, u64), usize> = HashMap::with_capacity(changes.len());
    for (i, c) in changes.iter().enumerate() {
        last.insert((c.slot, c.fp), i);
    }
    let mut keep: Vec<usize> = last.into_values().collect();
    keep.sort_unstable();
    let mut b = vec![0u8; DELTA_HEADER_LEN + keep.len() * CHANGE_BYTES];
    for (n, &i) in keep.iter().enumerate() {
        let c = &changes[i];
        let at = DELTA_HEADER_LEN + n * CHANGE_BYTES;
        let (len, off) = (c.len, c.offset);
        b[at..at + 4].copy_from_slice(&c.slot.to_le_bytes());
        b[at + 4..at + 8].copy_from_slice(&len.to_le_bytes());
        b[at + 8..at + 16].copy_from_slice(&c.fp.to_le_bytes());
        b[at + 16..at + 24].copy_from_slice(&off.to_le_bytes());
    }
    let body = xxh3_long(&b[DELTA_HEADER_LEN..]);
    b[0..8].copy_from_slice(&DELTA_MAGIC);
    b[8..12].copy_from_slice(&DELTA_VERSION.to_le_bytes());
    b[12..16].copy_from_slice(&(CHANGE_BYTES as u32).to_le_bytes());
    b[16..24].copy_from_slice(&base.to_le_bytes());
    b[24..32].copy_from_slice(&from.to_le_bytes());
    b[32..40].copy_from_slice(&meta.covered.to_le_bytes());
    b[40..48].copy_from_slice(&meta.next_seq.to_le_bytes());
    b[48..56].copy_from_slice(&(keep.len() as u64).to_le_bytes());
    b[56..64].copy_from_slice(&body.to_le_bytes());
    let head = xxh3_64(&b[0..64]);
    b[64..72].copy_from_slice(&head.to_le_bytes());
    b
}

/// What `load` applied.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Chain {
    /// Bytes of IMAGE_delta that chain from the image (where the next block goes).
    pub len: u64,
    pub blocks: u64,
    pub changes: u64,
    /// Why the blocks after `len` were not applied (none when the file ends there).
    pub stopped: Option<String>,
}

/// Applies to `index` and `meta` (the IMAGE_file whose id is `base`) the blocks of the
/// IMAGE_delta at `path` that chain from it: each written for `base`, leading from the
/// covered offset the one before led to, whole and checked. A missing file is an empty
/// chain. A block is checked whole before any of it is applied.
/// A file longer than any chain over the image (`chain_most`) is not read at all.
pub fn load(path: &Path, base: u64, index: &mut Index, meta: &mut ImageMeta) -> Result<Chain> {
    let mut chain = Chain::default();
    let len = match fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(chain),
        Err(e) => return Err(Error::at_file(path, e)),
    };
    let most = chain_most(index.pool_len() as u64, index.slot_count() as u64);
    if len > most {
        chain.stopped = Some(format!(
            "the file is {len} bytes, more than any chain over this IMAGE_file ({most})"
        ));
        return Ok(chain);
    }
    let b = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(chain),
        Err(e) => return Err(Error::at_file(path, e)),
    };
    let mut at = 0usize;
    while at < b.len() {
        let (changes, to, next_seq) = match block(&b[at..], base, meta.covered, index) {
            Ok(found) => found,
            Err(why) => {
                chain.stopped = Some(format!("block at byte {at}: {why}"));
                break;
            }
        };
        for c in &changes {
            index.set_in_slot(c.slot as usize, c.fp, c.loc())?;
        }
        meta.covered = to;
        meta.next_seq = next_seq;
        at += DELTA_HEADER_LEN + changes.len() * CHANGE_BYTES;
        chain.len = at as u64;
        chain.blocks += 1;
        chain.changes += changes.len() as u64;
    }
    Ok(chain)
}

/// The changes, covered offset and next sequence number of the block at the start of `b`,
/// if it is whole, sound, written for `base` and leads from `from`; else why not.
fn block(
    b: &[u8],
    base: u64,
    from: u64,
    index: &Index,
) -> std::result::Result<(Vec<Change>, u64, u64), String> {
    if b.len() < DELTA_HEADER_LEN {
        return Err("torn header".into());
    }
    if b[0..8] != DELTA_MAGIC || xxh3_64(&b[0..64]) != u64_at(b, 64) {
        return Err("damaged header".into());
    }
    if u32_at(b, 8) != DELTA_VERSION || u32_at(b, 12) as usize != CHANGE_BYTES {
        return Err("unsupported version".into());
    }
    if u64_at(b, 16) != base {
        return Err("written for another IMAGE_file".into());
    }
    if u64_at(b, 24) != from {
        return Err(format!(
            "leads from {}, not from {from} where the image stands",
            u64_at(b, 24)
        ));
    }
    let (to, next_seq, n) = (u64_at(b, 32), u64_at(b, 40), u64_at(b, 48));
    if to < from {
        return Err("leads backwards".into());
    }
    let body = n
        .checked_mul(CHANGE_BYTES as u64)
        .filter(|&len| len <= (b.len() - DELTA_HEADER_LEN) as u64)
        .ok_or("torn body")? as usize;
    let body = &b[DELTA_HEADER_LEN..DELTA_HEADER_LEN + body];
    if xxh3_long(body) != u64_at(b, 56) {
        return Err("damaged body".into());
    }
    let slots = index.slot_count();
    let mut changes = Vec::with_capacity(n as usize);
    for c in body.chunks_exact(CHANGE_BYTES) {
        let (slot, len, fp, offset) = (u32_at(c, 0), u32_at(c, 4), u64_at(c, 8), u64_at(c, 16));
        if slot as usize >= slots || (len > 0 && offset.saturating_add(len as u64) > to) {
            return Err(format!(
                "a change out of range (slot {slot}, offset {offset})"
            ));
        }
        changes.push(Change {
            slot,
            len,
            fp,
            offset,
        });
    }
    Ok((changes, to, next_seq))
}

/// The IMAGE_delta file a checkpointer appends to.
pub struct DeltaFile {
    path: PathBuf,
    file_mode: u32,
    /// Where the chain ends (the next block goes there).
    len: u64,
    /// Whether bytes after `len` may be there (a torn block, a chain for an older image):
    /// cut before the next append.
    trim: bool,
    file: Option<File>,
}

impl DeltaFile {
    /// The file at `path` whose chain ends at `len`.
    pub fn new(path: PathBuf, len: u64, file_mode: u32) -> DeltaFile {
        DeltaFile {
            path,
            file_mode,
            len,
            trim: true,
            file: None,
        }
    }

    /// Bytes of the chain.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Appends `block` and makes it durable (fdatasync; the file's creation fsyncs the
    /// directory). `faults`: tests fail the write or the sync here. After a failure the
    /// block may be there in part: it is cut before the next append.
    pub fn append(&mut self, block: &[u8], faults: Option<&Faults>) -> Result<()> {
        let r = self.write_block(block, faults);
        match r {
            Ok(()) => self.len += block.len() as u64,
            Err(_) => self.trim = true,
        }
        r
    }

    fn write_block(&mut self, block: &[u8], faults: Option<&Faults>) -> Result<()> {
        Faults::inject(faults, Op::ImageWrite)?;
        if self.file.is_none() {
            let created = !self.path.exists();
            let f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(self.file_mode)
                .open(&self.path)
                .map_err(|e| Error::at_file(&self.path, e))?;
            if created {
                sync_dir(self.path.parent().unwrap_or(Path::new(".")))?;
            }
            self.file = Some(f);
        }
        let f = self.file.as_ref().expect("opened above");
        if self.trim {
            f.set_len(self.len)?;
            self.trim = false;
        }
        f.write_all_at(block, self.len)?;
        Faults::inject(faults, Op::ImageSync)?;
        f.sync_data()?;
        Ok(())
    }

    /// Forgets the chain: a new IMAGE_file was written (its blocks would not chain from
    /// it anyway). Removes the file; a failure to is only logged by the caller.
    pub fn reset(&mut self) -> std::io::Result<()> {
        self.file = None;
        self.len = 0;
        self.trim = true;
        match fs::remove_file(&self.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// The image a store stands on: IMAGE_file's id and size, and where its chain of
/// IMAGE_delta blocks ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Base {
    pub id: ImageId,
    pub image_bytes: u64,
    pub chain_len: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::hash_key;

    fn meta(covered: u64, next_seq: u64) -> ImageMeta {
        ImageMeta {
            covered,
            next_seq,
            hash_seed: 3,
        }
    }

    /// An index of 2000 keys, and the same index with random changes applied while a
    /// journal recorded them.
    fn changed(seed: u64) -> (Index, Index, Vec<Change>) {
        let mut base = Index::new(1000);
        for i in 0..2000u64 {
            let loc = Location {
                offset: 4096 + i * 64,
                len: 48,
            };
            base.insert(&hash_key(3, &i.to_le_bytes()), loc).unwrap();
        }
        let mut live = base.clone();
        let mut j = Journal::new(true, 200_000);
        let mut x = seed | 1;
        for n in 0..3000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let kh = hash_key(3, &(x % 2500).to_le_bytes());
            if x % 3 == 0 {
                if live.remove(&kh).is_some() {
                    j.record(&live, &kh, None);
                }
            } else {
                let loc = Location {
                    offset: 200_000 + n * 64,
                    len: 40 + (x % 20) as u32,
                };
                live.insert(&kh, loc).unwrap();
                j.record(&live, &kh, Some(loc));
            }
        }
        let (since, changes) = j.take(400_000).unwrap();
        assert_eq!(since, 200_000);
        (base, live, changes)
    }

    fn same(a: &Index, b: &Index) {
        assert_eq!(a.len(), b.len());
        for i in 0..2500u64 {
            let kh = hash_key(3, &i.to_le_bytes());
            assert_eq!(a.get(&kh), b.get(&kh), "key {i}");
        }
    }

    #[test]
    fn blocks_chain_and_rebuild_the_live_index() {
        let dir = std::env::temp_dir().join(format!("kvs-delta-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("IMAGE_delta");
        let _ = fs::remove_file(&path);
        let (base, live, changes) = changed(7);
        let (a, b) = changes.split_at(1700);
        let mut f = DeltaFile::new(path.clone(), 0, 0o600);
        f.append(&encode(99, 200_000, &meta(400_000, 10), a), None)
            .unwrap();
        f.append(&encode(99, 400_000, &meta(500_000, 20), b), None)
            .unwrap();
        let (mut idx, mut m) = (base.clone(), meta(200_000, 5));
        let chain = load(&path, 99, &mut idx, &mut m).unwrap();
        assert_eq!(chain.blocks, 2);
        assert_eq!(chain.len, f.len());
        assert_eq!(chain.stopped, None);
        assert_eq!(m, meta(500_000, 20));
        same(&idx, &live);
        // Another image's id, or a start that is not where the image stands: nothing.
        for (id, from) in [(98, 200_000), (99, 100_000)] {
            let (mut idx, mut m) = (base.clone(), meta(from, 5));
            let chain = load(&path, id, &mut idx, &mut m).unwrap();
            assert_eq!(chain.blocks, 0);
            assert!(chain.stopped.is_some());
            same(&idx, &base);
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    /// Seeded damage to a chain of blocks (flips, truncations, overwrites, with the
    /// checksums repaired half the time): loading never panics, and what it applies is a
    /// whole prefix of the blocks unless the checksums were repaired.
    #[test]
    fn damaged_blocks_never_panic_and_apply_whole_blocks_only() {
        let dir = std::env::temp_dir().join(format!("kvs-delta-fuzz-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("IMAGE_delta");
        let (base, _, changes) = changed(11);
        let mut good = encode(5, 200_000, &meta(400_000, 10), &changes[..200]);
        let first = good.len();
        good.extend(encode(5, 400_000, &meta(500_000, 20), &changes[200..400]));
        let mut x = 0x1234_5678_9abc_def1u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..500 {
            let mut b = good.clone();
            let pos = (next() % b.len() as u64) as usize;
            match next() % 3 {
                0 => b[pos] ^= 1 << (next() % 8),
                1 => b.truncate(pos),
                _ => b[pos] = next() as u8,
            }
            let repaired = next() % 2 == 0 && b.len() >= DELTA_HEADER_LEN;
            if repaired {
                let n = u64_at(&b, 48).min(((b.len() - DELTA_HEADER_LEN) / CHANGE_BYTES) as u64);
                let end = DELTA_HEADER_LEN + n as usize * CHANGE_BYTES;
                let body = xxh3_64(&b[DELTA_HEADER_LEN..end]);
                b[56..64].copy_from_slice(&body.to_le_bytes());
                let head = xxh3_64(&b[0..64]);
                b[64..72].copy_from_slice(&head.to_le_bytes());
            }
            fs::write(&path, &b).unwrap();
            let (mut idx, mut m) = (base.clone(), meta(200_000, 5));
            if let Ok(chain) = load(&path, 5, &mut idx, &mut m) {
                if !repaired {
                    assert!(
                        chain.len == 0
                            || chain.len == first as u64
                            || chain.len == good.len() as u64,
                        "{}",
                        chain.len
                    );
                }
            }
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_journal_turns_itself_off_past_its_cap() {
        let mut j = Journal::new(true, 0);
        assert_eq!(std::mem::size_of::<Change>(), CHANGE_BYTES);
        let (index, kh) = (Index::new(1), hash_key(3, b"k"));
        for _ in 0..JOURNAL_MIN_CAP {
            j.record(&index, &kh, None);
        }
        assert!(j.on);
        j.record(&index, &kh, None);
        assert!(!j.on);
        assert!(j.take(5).is_none());
        j.restart(5);
        assert_eq!(j.take(9), Some((5, Vec::new())));
    }
}

//! The on-disk formats of disk_file, in one place: block size, limits, the superblock,
//! segment headers and records (IMAGE_file's layout lives with it, in `image.rs`). Every
//! integer is little-endian; DESIGN.md has the byte tables and `tests/golden.rs` holds
//! stores written by earlier versions to them. A leaf: it imports only `error`.
//!
//! A record is a 32-byte header, the key, the value, and zero padding to a multiple of
//! [`RECORD_ALIGN`]. [`parse_put`] is the one check of a put read for an index entry,
//! used by get, verify, listing and the reclaimer; the segment scan of recovery checks the
//! same header and payload sums ([`Header::decode`], [`data_sum`]) record by record.

use std::hash::Hasher as _;

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed, Xxh3};

use crate::error::Error;

/// The file names inside a store directory: the log.
pub const DISK_FILE: &str = "disk_file";
/// The index image.
pub const IMAGE_FILE: &str = "IMAGE_file";
/// The index's changes since IMAGE_file.
pub const DELTA_FILE: &str = "IMAGE_delta";
/// The event log.
pub const LOG_FILE: &str = "LOG";
/// The lock file (flock'ed while a process has the store open).
pub const LOCK_FILE: &str = "LOCK";

/// The block size of O_DIRECT I/O, of the superblock and of segment headers.
pub const BLOCK: usize = 4096;

/// The longest key, in bytes.
pub const MAX_KEY_LEN: usize = 4096;
/// The default `max_value_size`, and the limit of stores of disk_file formats 2 to 4:
/// 5 MiB.
pub const DEFAULT_MAX_VALUE_SIZE: usize = 5 << 20;
/// The largest `max_value_size` a store can be created with: 256 MiB.
pub const MAX_VALUE_LIMIT: usize = 256 << 20;
/// The smallest log segment a superblock may declare (tests; real stores want hundreds of
/// MiB).
pub const MIN_SEGMENT_SIZE: u64 = 64 << 10;
/// The largest segment: a Pad's length (32 bits) must reach from anywhere in a segment to
/// its end.
pub const MAX_SEGMENT_SIZE: u64 = (1 << 32) - BLOCK as u64;

/// Reads the little-endian u32 at `b[i..i + 4]`.
pub fn u32_at(b: &[u8], i: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[i..i + 4]);
    u32::from_le_bytes(a)
}

/// Reads the little-endian u64 at `b[i..i + 8]`.
pub fn u64_at(b: &[u8], i: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[i..i + 8]);
    u64::from_le_bytes(a)
}

// ---- The superblock: the first block of disk_file.

/// The superblock's size; the first segment slot starts here.
pub const DATA_START: u64 = BLOCK as u64;
/// The superblock's first 8 bytes.
pub const DISK_MAGIC: [u8; 8] = *b"KVSDISK\0";
/// The disk_file format version this code writes. Version 3 keys record and segment
/// header checksums with the store's hash seed and puts the first sequence number in each
/// segment header; version 4 adds atomic batches (the batch flag and Commit records).
/// Version 2 and 3 stores are read and written as they are (without batches). Version 5
/// records the value limit; version 6 adds relocation segments (the reclaimer's own).
pub const DISK_VERSION: u32 = 6;
/// The first disk_file format version with relocation segments: the reclaimer writes its
/// copies into segments of their own, whose header says so (`SegHeader::relocation`).
pub const RELOCATION_VERSION: u32 = 6;
/// The first disk_file format version with atomic batches.
pub const BATCH_VERSION: u32 = 4;
/// The oldest disk_file format version this code reads.
pub const OLDEST_DISK_VERSION: u32 = 2;
/// The first disk_file format version whose superblock records the store's
/// `max_value_size` (older ones hold values up to `DEFAULT_MAX_VALUE_SIZE`).
pub const VALUE_LIMIT_VERSION: u32 = 5;
/// Bytes of the superblock that carry meaning in the newest format (48 before format 5;
/// the rest of its block is zero).
pub const SB_LEN: usize = 56;

/// What the superblock says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Superblock {
    /// The format version (2 to 6).
    pub version: u32,
    /// The seed of the key hashes; fixed for the life of the store.
    pub hash_seed: u64,
    /// Seconds since the Unix epoch when the store was created.
    pub created: u64,
    /// Bytes of each log segment (fixed when the store is created).
    pub segment_size: u64,
    /// The largest value the store takes (fixed when the store is created; stored from
    /// format 5 on, `DEFAULT_MAX_VALUE_SIZE` before).
    pub max_value_size: usize,
}

impl Superblock {
    /// The seed of record and segment header checksums: the hash seed from version 3 on
    /// (a record's checksum cannot be forged without it), 0 (plain xxh3) in version 2.
    pub fn sum_key(&self) -> u64 {
        if self.version >= 3 {
            self.hash_seed
        } else {
            0
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; BLOCK];
        b[0..8].copy_from_slice(&DISK_MAGIC);
        b[8..12].copy_from_slice(&self.version.to_le_bytes());
        b[12..16].copy_from_slice(&(DATA_START as u32).to_le_bytes());
        b[16..24].copy_from_slice(&self.hash_seed.to_le_bytes());
        b[24..32].copy_from_slice(&self.created.to_le_bytes());
        b[32..40].copy_from_slice(&self.segment_size.to_le_bytes());
        let end = sum_at(self.version);
        if self.version >= VALUE_LIMIT_VERSION {
            b[40..44].copy_from_slice(&(self.max_value_size as u32).to_le_bytes());
        }
        let sum = xxh3_64(&b[0..end]);
        b[end..end + 8].copy_from_slice(&sum.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> crate::error::Result<Superblock> {
        let bad = |m: &str| {
            Err(Error::corrupt(
                Some(0),
                format!("disk_file superblock: {m}"),
            ))
        };
        if b.len() < SB_LEN || b[0..8] != DISK_MAGIC {
            return bad("not a kvs disk_file (bad magic)");
        }
        let u64_at = |i| u64_at(b, i);
        let version = u32_at(b, 8);
        if version > DISK_VERSION {
            return Err(Error::UnsupportedVersion {
                file: "disk_file",
                found: version,
                supported: "2 to 6; this store was made by a newer kvs: open it with that one",
            });
        }
        if version < OLDEST_DISK_VERSION {
            return Err(Error::UnsupportedVersion {
                file: "disk_file",
                found: version,
                supported: "2 to 6; version 1 stores (before log segments) must be copied \
                            into a new store with a kvs build of their era",
            });
        }
        let end = sum_at(version);
        if xxh3_64(&b[0..end]) != u64_at(end) {
            return bad("checksum mismatch");
        }
        if u32_at(b, 12) as u64 != DATA_START {
            return bad("unexpected data start");
        }
        let segment_size = u64_at(32);
        if segment_size < MIN_SEGMENT_SIZE || segment_size % BLOCK as u64 != 0 {
            return bad("implausible segment size");
        }
        let max_value_size = if version >= VALUE_LIMIT_VERSION {
            let m = u32_at(b, 40) as usize;
            if m > MAX_VALUE_LIMIT || u32_at(b, 44) != 0 {
                return bad("implausible value size limit");
            }
            m
        } else {
            DEFAULT_MAX_VALUE_SIZE
        };
        Ok(Superblock {
            version,
            hash_seed: u64_at(16),
            created: u64_at(24),
            segment_size,
            max_value_size,
        })
    }
}

/// Where a superblock of format `version` keeps its checksum (of every byte before it).
fn sum_at(version: u32) -> usize {
    if version >= VALUE_LIMIT_VERSION {
        48
    } else {
        40
    }
}

// ---- Segment headers: the first block of every segment slot.

/// Bytes of a segment header; records start after it.
pub const SEG_HEADER: u64 = BLOCK as u64;
/// The first 8 bytes of a segment header.
pub const SEG_MAGIC: [u8; 8] = *b"KVSSEG\0\0";
/// Bytes of the header that carry meaning (in the newest format).
pub const SEG_HEAD_LEN: usize = 48;

/// What a segment header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegHeader {
    /// The logical segment number.
    pub logical: u64,
    /// The sequence number of the segment's first record (0 in version 2). In a
    /// relocation segment, the first of the numbers reserved for its records.
    pub first_seq: u64,
    /// A relocation segment (version 6): written by the reclaimer, not by the ring, so it
    /// may end short of its size (its unwritten rest is not damage).
    pub relocation: bool,
}

/// Flag bit of a relocation segment (bytes 32..40 of a version 6 header).
const SEG_RELOCATION: u64 = 1;

impl SegHeader {
    /// Encodes the header (a whole 4 KiB block) in disk_file format `version`: from
    /// version 3 on it carries `first_seq`, and from version 6 on the flags; the checksum
    /// covers every field.
    pub fn encode(&self, seed: u64, version: u32) -> Vec<u8> {
        let mut b = vec![0u8; BLOCK];
        b[0..8].copy_from_slice(&SEG_MAGIC);
        b[8..16].copy_from_slice(&self.logical.to_le_bytes());
        b[16..24].copy_from_slice(&seed.to_le_bytes());
        if version >= RELOCATION_VERSION {
            b[24..32].copy_from_slice(&self.first_seq.to_le_bytes());
            let flags = if self.relocation { SEG_RELOCATION } else { 0 };
            b[32..40].copy_from_slice(&flags.to_le_bytes());
            let sum = xxh3_64(&b[0..40]);
            b[40..48].copy_from_slice(&sum.to_le_bytes());
        } else if version >= 3 {
            b[24..32].copy_from_slice(&self.first_seq.to_le_bytes());
            let sum = xxh3_64(&b[0..32]);
            b[32..40].copy_from_slice(&sum.to_le_bytes());
        } else {
            let sum = xxh3_64(&b[0..24]);
            b[24..32].copy_from_slice(&sum.to_le_bytes());
        }
        b
    }

    /// The header in `b` (at least `SEG_HEAD_LEN` bytes), if it is a sound header of this
    /// store in format `version` (unknown flags in version 6: not sound).
    pub fn decode(b: &[u8], seed: u64, version: u32) -> Option<SegHeader> {
        let u64_at = |i| u64_at(b, i);
        if b[0..8] != SEG_MAGIC || u64_at(16) != seed {
            return None;
        }
        let (logical, first_seq, flags) = if version >= RELOCATION_VERSION {
            let ok = xxh3_64(&b[0..40]) == u64_at(40) && u64_at(32) & !SEG_RELOCATION == 0;
            ok.then(|| (u64_at(8), u64_at(24), u64_at(32)))?
        } else if version >= 3 {
            (xxh3_64(&b[0..32]) == u64_at(32)).then(|| (u64_at(8), u64_at(24), 0))?
        } else {
            (xxh3_64(&b[0..24]) == u64_at(24)).then(|| (u64_at(8), 0, 0))?
        };
        Some(SegHeader {
            logical,
            first_seq,
            relocation: flags & SEG_RELOCATION != 0,
        })
    }
}

// ---- Records.

/// Bytes of a record header.
pub const HEADER_LEN: usize = 32;
/// Every record starts and ends on a multiple of this.
pub const RECORD_ALIGN: usize = 8;
/// The largest Pad payload: a pad fills at most the rest of a segment (one that closes a
/// segment early, for a relocation segment or a batch, nearly all of it), and segments are
/// at most `MAX_SEGMENT_SIZE`, so any length its 32-bit field holds. (It was bounded by
/// one largest record, which a segment over about 256 MiB closed early exceeded: the
/// segment then did not read to its end.)
pub const MAX_PAD_LEN: usize = u32::MAX as usize;
/// The first four bytes of every record.
pub const RECORD_MAGIC: [u8; 4] = *b"KVR1";

/// What a record says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// A key and its value.
    Put = 1,
    /// A tombstone: the key was deleted. Value length is 0.
    Delete = 2,
    /// A put that was deleted or overwritten before it was flushed. Its header and lengths
    /// stay, its payload may never have been written (a hole); readers skip it.
    Dead = 3,
    /// Filler up to an alignment boundary; key length 0, the payload is not meaningful.
    Pad = 4,
    /// The end of an atomic batch (format 4): key and value length 0; its checksum field
    /// holds the number of members, the records with the batch flag and the sequence
    /// numbers just below its own. The batch counts only with all of them in place.
    Commit = 5,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        match b {
            1 => Some(Kind::Put),
            2 => Some(Kind::Delete),
            3 => Some(Kind::Dead),
            4 => Some(Kind::Pad),
            5 => Some(Kind::Commit),
            _ => None,
        }
    }
}

/// A decoded record header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub kind: Kind,
    pub key_len: u32,
    pub value_len: u32,
    pub seq: u64,
    /// Low 32 bits of xxh3-64 over key then value (a Commit: the batch's member count).
    pub data_sum: u32,
    /// A member of an atomic batch (byte 5 = 1, format 4): applied only with the batch's
    /// Commit. Never marked Dead.
    pub batch: bool,
}

/// Why a header did not decode.
#[derive(Debug, PartialEq, Eq)]
pub enum HeaderError {
    /// Bytes that are no record at all (zeros of an unwritten tail, garbage).
    Magic,
    /// The header's own checksum failed: torn or corrupt.
    Checksum,
    /// The checksum held but a field is out of range (a bug or a forged header).
    Field(&'static str),
}

/// Rounds `n` up to the record alignment.
pub const fn padded_len(n: usize) -> usize {
    (n + RECORD_ALIGN - 1) & !(RECORD_ALIGN - 1)
}

/// Inputs at least this long are hashed by [`xxh3_long`] rather than xxhash-rust: the
/// same XXH3-64 digest, faster from here on (measured crossover 1-2 KiB).
const LONG_HASH: usize = 2048;

/// XXH3-64 (seed 0) of a long input: twox-hash picks AVX2 at run time where the CPU has it
/// (2.2x xxhash-rust's SSE2 build on 100 KiB here, 1.8 against 3.8-4.5 us). The digest is
/// the one xxhash-rust gives; a unit test holds the two together.
pub fn xxh3_long(b: &[u8]) -> u64 {
    if b.len() < LONG_HASH {
        return xxh3_64(b);
    }
    twox_hash::XxHash3_64::oneshot(b)
}

/// A streaming XXH3-64 (seed 0) for long inputs fed in large pieces (see [`xxh3_long`]).
pub type LongHasher = twox_hash::XxHash3_64;

/// The checksum of a record's payload.
pub fn data_sum(key: &[u8], value: &[u8]) -> u32 {
    if key.len() + value.len() >= LONG_HASH {
        let mut h = LongHasher::with_seed(0);
        h.write(key);
        h.write(value);
        return h.finish() as u32;
    }
    let mut h = Xxh3::new();
    h.update(key);
    h.update(value);
    h.digest() as u32
}

impl Header {
    /// The header of a Pad record that takes `len` bytes (a multiple of 8, at least
    /// `HEADER_LEN`) from where it starts, in the segment whose first sequence number is
    /// `tag` (0 if unknown): a Pad carries it in its sequence number field, so that a
    /// scan can tell a Pad of its segment from one an older segment left in a recycled
    /// slot (`log/scan.rs`).
    pub fn pad(len: u64, tag: u64) -> Header {
        Header {
            kind: Kind::Pad,
            key_len: 0,
            value_len: (len - HEADER_LEN as u64) as u32,
            seq: tag,
            data_sum: 0,
            batch: false,
        }
    }

    /// Bytes a Pad record needs to take the log from `at` to the next multiple of `align`
    /// (0 if `at` is there already; one more `align` if the gap is too short for a header).
    pub fn pad_len(at: u64, align: u64) -> u64 {
        let rem = at % align;
        if rem == 0 {
            return 0;
        }
        let gap = align - rem;
        if gap < HEADER_LEN as u64 {
            gap + align
        } else {
            gap
        }
    }

    /// Bytes of header, key and value, without padding.
    pub fn record_len(&self) -> usize {
        HEADER_LEN + self.key_len as usize + self.value_len as usize
    }

    /// Bytes the record takes in disk_file, padding included.
    pub fn padded_len(&self) -> usize {
        padded_len(self.record_len())
    }

    /// The header bytes, with its own checksum (keyed by `key`, the store's checksum key:
    /// see `Superblock::sum_key`) in the last four.
    pub fn encode(&self, key: u64) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&RECORD_MAGIC);
        b[4] = self.kind as u8;
        b[5] = u8::from(self.batch);
        b[8..12].copy_from_slice(&self.key_len.to_le_bytes());
        b[12..16].copy_from_slice(&self.value_len.to_le_bytes());
        b[16..24].copy_from_slice(&self.seq.to_le_bytes());
        b[24..28].copy_from_slice(&self.data_sum.to_le_bytes());
        let head_sum = xxh3_64_with_seed(&b[0..28], key) as u32;
        b[28..32].copy_from_slice(&head_sum.to_le_bytes());
        b
    }

    /// Decodes and checks a header written with checksum key `key`. Never panics,
    /// whatever the bytes.
    pub fn decode(b: &[u8; HEADER_LEN], key: u64) -> Result<Header, HeaderError> {
        if b[0..4] != RECORD_MAGIC {
            return Err(HeaderError::Magic);
        }
        let u32_at = |i| u32_at(b, i);
        if xxh3_64_with_seed(&b[0..28], key) as u32 != u32_at(28) {
            return Err(HeaderError::Checksum);
        }
        let kind = Kind::from_u8(b[4]).ok_or(HeaderError::Field("kind"))?;
        let batch = match b[5] {
            0 => false,
            1 if matches!(kind, Kind::Put | Kind::Delete) => true,
            _ => return Err(HeaderError::Field("batch flag")),
        };
        if b[6..8] != [0, 0] {
            return Err(HeaderError::Field("reserved"));
        }
        let h = Header {
            kind,
            key_len: u32_at(8),
            value_len: u32_at(12),
            seq: u64_at(b, 16),
            data_sum: u32_at(24),
            batch,
        };
        match kind {
            Kind::Put | Kind::Dead | Kind::Delete => {
                if h.key_len == 0 || h.key_len as usize > MAX_KEY_LEN {
                    return Err(HeaderError::Field("key length"));
                }
                if h.value_len as usize > MAX_VALUE_LIMIT {
                    return Err(HeaderError::Field("value length"));
                }
                if kind == Kind::Delete && h.value_len != 0 {
                    return Err(HeaderError::Field("tombstone value length"));
                }
            }
            Kind::Pad => {
                if h.key_len != 0 || h.value_len as usize > MAX_PAD_LEN {
                    return Err(HeaderError::Field("pad length"));
                }
            }
            Kind::Commit => {
                if h.key_len != 0 || h.value_len != 0 || h.data_sum == 0 {
                    return Err(HeaderError::Field("commit"));
                }
            }
        }
        Ok(h)
    }
}

// ---- Key summaries: one file per log segment in `summary/` (see `log/summary.rs`).

/// The directory of the key summaries, inside the store directory.
pub const SUMMARY_DIR: &str = "summary";
/// The first 8 bytes of a summary file.
pub const SUM_MAGIC: [u8; 8] = *b"KVSSUM1\0";
/// The summary format version.
pub const SUM_VERSION: u32 = 1;
/// Bytes of a summary's header; the entries follow it.
pub const SUM_HEADER_LEN: usize = 64;
/// Bytes of an entry before its key.
pub const SUM_ENTRY_LEN: usize = 24;

/// What a summary's header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SummaryHeader {
    /// The store's hash seed.
    pub seed: u64,
    /// The logical segment summarised.
    pub logical: u64,
    /// The segment header's first sequence number (0 in version 2 stores).
    pub first_seq: u64,
    /// Position in the segment after the last record covered: the records in
    /// `[SEG_HEADER, end)` are all summarised (`end` is the segment size once it is full).
    pub end: u64,
    /// Entries that follow.
    pub count: u64,
    /// The sequence number of the last record covered (0: none).
    pub last_seq: u64,
}

impl SummaryHeader {
    pub fn encode(&self) -> [u8; SUM_HEADER_LEN] {
        let mut b = [0u8; SUM_HEADER_LEN];
        b[0..8].copy_from_slice(&SUM_MAGIC);
        b[8..12].copy_from_slice(&SUM_VERSION.to_le_bytes());
        for (i, v) in [
            self.seed,
            self.logical,
            self.first_seq,
            self.end,
            self.count,
            self.last_seq,
        ]
        .into_iter()
        .enumerate()
        {
            b[16 + 8 * i..24 + 8 * i].copy_from_slice(&v.to_le_bytes());
        }
        b
    }

    /// Decodes a header; `None` if it is not one of this summary format.
    pub fn decode(b: &[u8]) -> Option<SummaryHeader> {
        if b.len() < SUM_HEADER_LEN || b[0..8] != SUM_MAGIC || u32_at(b, 8) != SUM_VERSION {
            return None;
        }
        Some(SummaryHeader {
            seed: u64_at(b, 16),
            logical: u64_at(b, 24),
            first_seq: u64_at(b, 32),
            end: u64_at(b, 40),
            count: u64_at(b, 48),
            last_seq: u64_at(b, 56),
        })
    }
}

/// One record of a segment, as its summary lists it (puts and tombstones only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SummaryEntry {
    /// Position of the record in its segment.
    pub pos: u64,
    pub seq: u64,
    pub kind: Kind,
    pub value_len: u32,
    pub key: Vec<u8>,
}

impl SummaryEntry {
    /// The record's length (header, key and value, without padding).
    pub fn record_len(&self) -> usize {
        HEADER_LEN + self.key.len() + self.value_len as usize
    }

    /// Appends the entry's bytes to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.pos.to_le_bytes());
        out.extend_from_slice(&self.seq.to_le_bytes());
        out.extend_from_slice(&self.value_len.to_le_bytes());
        out.extend_from_slice(&(self.key.len() as u16).to_le_bytes());
        out.push(self.kind as u8);
        out.push(0);
        out.extend_from_slice(&self.key);
    }

    /// Decodes the entry at the start of `b`: the entry and its length in bytes. `None` if
    /// it is cut short or a field is out of range.
    pub fn decode(b: &[u8]) -> Option<(SummaryEntry, usize)> {
        if b.len() < SUM_ENTRY_LEN {
            return None;
        }
        let key_len = u16::from_le_bytes([b[20], b[21]]) as usize;
        let kind = match b[22] {
            1 => Kind::Put,
            2 => Kind::Delete,
            _ => return None,
        };
        let value_len = u32_at(b, 16);
        let bad_len = key_len == 0
            || key_len > MAX_KEY_LEN
            || value_len as usize > MAX_VALUE_LIMIT
            || (kind == Kind::Delete && value_len != 0);
        if bad_len || b[23] != 0 || b.len() < SUM_ENTRY_LEN + key_len {
            return None;
        }
        let e = SummaryEntry {
            pos: u64_at(b, 0),
            seq: u64_at(b, 8),
            kind,
            value_len,
            key: b[SUM_ENTRY_LEN..SUM_ENTRY_LEN + key_len].to_vec(),
        };
        Some((e, SUM_ENTRY_LEN + key_len))
    }
}

/// The checksum that ends a summary file: over its header and the xxh3 of its entries,
/// keyed by the store's seed (a summary of another store does not check).
pub fn summary_sum(header: &[u8; SUM_HEADER_LEN], entries_digest: u64, seed: u64) -> u64 {
    let mut h = Xxh3::with_seed(seed);
    h.update(header);
    h.update(&entries_digest.to_le_bytes());
    h.digest()
}

/// A put record read for an index entry, checked by [`parse_put`].
#[derive(Debug)]
pub struct Put<'a> {
    pub header: Header,
    pub key: &'a [u8],
    /// The value, or as much of it as was read (empty when only the key was).
    pub value: &'a [u8],
}

/// Why a record read for an index entry is not the put the entry says it is.
pub type Problem = String;

/// Checks the header of a record read for an index entry of `len` bytes: it decodes
/// under the store's checksum key `sum_key` and is a put of exactly `len` bytes.
pub fn put_header(head: &[u8; HEADER_LEN], len: u32, sum_key: u64) -> Result<Header, Problem> {
    let h = Header::decode(head, sum_key).map_err(|e| format!("bad header ({e:?})"))?;
    if h.kind != Kind::Put || h.record_len() != len as usize {
        return Err(format!(
            "a {:?} record of {} bytes where the index expects a put of {len}",
            h.kind,
            h.record_len()
        ));
    }
    Ok(h)
}

/// Checks a put's key and value against its header: lengths and payload checksum.
pub fn check_payload(h: &Header, key: &[u8], value: &[u8]) -> Result<(), Problem> {
    if h.key_len as usize != key.len() || h.value_len as usize != value.len() {
        return Err("lengths do not match the header".into());
    }
    if data_sum(key, value) != h.data_sum {
        return Err("payload checksum mismatch".into());
    }
    Ok(())
}

/// Whether `payload` (the key then the value, as the record after its header holds them)
/// is what a put or tombstone header `h` says: lengths and checksum.
pub fn payload_ok(h: &Header, payload: &[u8]) -> bool {
    let k = (h.key_len as usize).min(payload.len());
    let (key, value) = payload.split_at(k);
    check_payload(h, key, value).is_ok()
}

/// The one check of a put record read for an index entry of `len` bytes: `head` is its
/// header, `body` the bytes after it, either the key and the whole value (the payload
/// checksum is checked) or, with `key_only`, at least the key (no checksum covers the key
/// alone: the caller must check that it hashes to the entry). Never panics.
pub fn parse_put<'a>(
    head: &[u8; HEADER_LEN],
    body: &'a [u8],
    len: u32,
    sum_key: u64,
    key_only: bool,
) -> Result<Put<'a>, Problem> {
    let h = put_header(head, len, sum_key)?;
    let key_len = h.key_len as usize;
    if key_len > body.len() {
        return Err("key runs past the bytes read".into());
    }
    let (key, value) = body.split_at(key_len);
    if key_only {
        return Ok(Put {
            header: h,
            key,
            value: &[],
        });
    }
    check_payload(&h, key, value)?;
    Ok(Put {
        header: h,
        key,
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Header {
        Header {
            kind: Kind::Put,
            key_len: 5,
            value_len: 1000,
            seq: 42,
            data_sum: data_sum(b"hello", &[7u8; 1000]),
            batch: false,
        }
    }

    #[test]
    fn header_round_trips() {
        let h = sample();
        assert_eq!(Header::decode(&h.encode(7), 7), Ok(h));
        // Another store's key does not verify it.
        assert_eq!(Header::decode(&h.encode(7), 8), Err(HeaderError::Checksum));
        assert_eq!(h.record_len(), 32 + 5 + 1000);
        assert_eq!(h.padded_len(), 1040);
    }

    #[test]
    fn a_pad_that_closes_the_largest_segment_early_decodes() {
        // Found by review: a pad over one largest record (about 256 MiB), which closing
        // a 1 GiB segment early writes, failed to decode.
        for len in [1 << 20, 900 << 20, MAX_SEGMENT_SIZE - SEG_HEADER] {
            let h = Header::pad(len, 7);
            assert_eq!(Header::decode(&h.encode(3), 3), Ok(h), "{len}");
            assert_eq!(h.padded_len() as u64, len);
        }
    }

    #[test]
    fn every_single_bit_flip_is_caught() {
        let bytes = sample().encode(99);
        for i in 0..HEADER_LEN * 8 {
            let mut b = bytes;
            b[i / 8] ^= 1 << (i % 8);
            assert!(
                Header::decode(&b, 99).is_err(),
                "flip of bit {i} went unnoticed"
            );
        }
    }

    /// Record checksums on disk are XXH3-64 whichever crate computes them: the long-input
    /// path (twox-hash, AVX2 where present) must give xxhash-rust's digest for every length
    /// and split, or stores written before it would read as damaged.
    #[test]
    fn long_hashing_gives_the_same_digest_as_xxhash_rust() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let bytes: Vec<u8> = (0..(5 << 20) + 77)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let mut lens: Vec<usize> = (0..600).chain(LONG_HASH - 70..LONG_HASH + 300).collect();
        lens.extend([4095, 4096, 4097, 100_000, 102_400, 1 << 20, (5 << 20) + 77]);
        for n in lens {
            let b = &bytes[..n];
            let want = xxh3_64(b);
            assert_eq!(xxh3_long(b), want, "one-shot, {n} bytes");
            let mut h = LongHasher::with_seed(0);
            for piece in b.chunks(1 + n / 3) {
                h.write(piece);
            }
            assert_eq!(h.finish(), want, "streamed, {n} bytes");
            for k in [1usize, 16, 255, n / 2] {
                let k = k.min(n);
                let mut plain = Xxh3::new();
                plain.update(&b[..k]);
                plain.update(&b[k..]);
                assert_eq!(data_sum(&b[..k], &b[k..]), plain.digest() as u32, "{n}/{k}");
            }
        }
    }

    #[test]
    fn key_zero_is_plain_xxh3_so_version_2_stores_read_unchanged() {
        let b = [5u8; 28];
        assert_eq!(
            xxh3_64_with_seed(&b, 0),
            xxhash_rust::xxh3::xxh3_64(&b),
            "version 2 headers were checksummed with plain xxh3"
        );
    }

    #[test]
    fn zeros_are_not_a_record() {
        assert_eq!(
            Header::decode(&[0u8; HEADER_LEN], 0),
            Err(HeaderError::Magic)
        );
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut x = 0x1234_5678_9abc_def0u64;
        for _ in 0..100_000 {
            let mut b = [0u8; HEADER_LEN];
            for byte in b.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *byte = x as u8;
            }
            b[0..4].copy_from_slice(&RECORD_MAGIC);
            let _ = Header::decode(&b, 0);
        }
    }

    #[test]
    fn superblock_round_trips_and_rejects_damage() {
        let sb = Superblock {
            version: DISK_VERSION,
            hash_seed: 0xdead_beef,
            created: 12345,
            segment_size: 8 << 20,
            max_value_size: 3 << 20,
        };
        let b = sb.encode();
        assert_eq!(Superblock::decode(&b).unwrap(), sb);
        for i in 0..SB_LEN {
            let mut c = b.clone();
            c[i] ^= 0x10;
            assert!(Superblock::decode(&c).is_err(), "byte {i}");
        }
        // Format 4 has no limit field: its checksum sits where format 5 keeps the limit,
        // and its stores hold values up to the old limit.
        let v4 = Superblock { version: 4, ..sb };
        let b4 = v4.encode();
        assert_eq!(b4[48..56], [0u8; 8]);
        assert_eq!(
            Superblock::decode(&b4).unwrap(),
            Superblock {
                max_value_size: DEFAULT_MAX_VALUE_SIZE,
                ..v4
            }
        );
        for i in 0..48 {
            let mut c = b4.clone();
            c[i] ^= 0x10;
            assert!(Superblock::decode(&c).is_err(), "v4 byte {i}");
        }
        // A limit over the hard one is damage, even under a good checksum.
        let huge = Superblock {
            max_value_size: MAX_VALUE_LIMIT + 1,
            ..sb
        };
        assert!(Superblock::decode(&huge.encode()).is_err());
        let mut old = b.clone();
        old[8..12].copy_from_slice(&1u32.to_le_bytes());
        assert!(matches!(
            Superblock::decode(&old),
            Err(Error::UnsupportedVersion { found: 1, .. })
        ));
    }

    #[test]
    fn header_round_trips_and_rejects_damage_and_other_stores() {
        for (version, relocation) in [(2, false), (3, false), (5, false), (6, false), (6, true)] {
            let h = SegHeader {
                logical: 77,
                first_seq: 1234,
                relocation,
            };
            let b = h.encode(5, version);
            let want = SegHeader {
                first_seq: if version >= 3 { 1234 } else { 0 },
                ..h
            };
            assert_eq!(SegHeader::decode(&b, 5, version), Some(want));
            assert_eq!(SegHeader::decode(&b, 6, version), None);
            let meaningful = match version {
                6 => SEG_HEAD_LEN,
                3..=5 => 40,
                _ => 32,
            };
            for i in 0..meaningful {
                let mut c = b.clone();
                c[i] ^= 1;
                assert_eq!(
                    SegHeader::decode(&c, 5, version),
                    None,
                    "v{version} byte {i}"
                );
            }
            assert_eq!(SegHeader::decode(&[0u8; BLOCK], 0, version), None);
        }
        // An unknown flag with a sound checksum is not a header this code understands.
        let mut b = SegHeader {
            logical: 1,
            first_seq: 1,
            relocation: false,
        }
        .encode(5, 6);
        b[32] = 2;
        let sum = xxh3_64(&b[0..40]);
        b[40..48].copy_from_slice(&sum.to_le_bytes());
        assert_eq!(SegHeader::decode(&b, 5, 6), None);
    }

    #[test]
    fn parse_put_checks_kind_length_and_payload() {
        let (key, value) = (b"k1".as_slice(), [9u8; 100]);
        let h = Header {
            kind: Kind::Put,
            key_len: 2,
            value_len: 100,
            seq: 1,
            data_sum: data_sum(key, &value),
            batch: false,
        };
        let head = h.encode(3);
        let body = [key, &value[..]].concat();
        let len = h.record_len() as u32;
        let p = parse_put(&head, &body, len, 3, false).unwrap();
        assert_eq!((p.key, p.value), (key, &value[..]));
        assert!(
            parse_put(&head, &body, len + 8, 3, false).is_err(),
            "length"
        );
        assert!(
            parse_put(&head, &body, len, 4, false).is_err(),
            "checksum key"
        );
        let mut bad = body.clone();
        bad[50] ^= 1;
        assert!(parse_put(&head, &bad, len, 3, false).is_err(), "payload");
        assert!(parse_put(&head, &bad, len, 3, true).is_ok(), "key only");
        assert!(parse_put(&head, &body[..1], len, 3, true).is_err(), "short");
        let tomb = Header {
            kind: Kind::Delete,
            value_len: 0,
            ..h
        };
        assert!(
            parse_put(&tomb.encode(3), key, 34, 3, false).is_err(),
            "kind"
        );
    }
}

//! The disk_file record format: encode and decode, in one place.
//!
//! Every record is a 32-byte header, the key, the value, and zero padding to a multiple of
//! [`RECORD_ALIGN`]. All integers are little-endian. See DESIGN.md for the byte table.

use xxhash_rust::xxh3::{xxh3_64_with_seed, Xxh3};

use crate::options::{DEFAULT_MAX_VALUE_SIZE, MAX_KEY_LEN};

/// The block size of O_DIRECT I/O, segment headers and the superblock.
pub const BLOCK: usize = 4096;
/// Bytes of a record header.
pub const HEADER_LEN: usize = 32;
/// Every record starts and ends on a multiple of this.
pub const RECORD_ALIGN: usize = 8;
/// The largest Pad payload: a pad fills at most the rest of a segment that the next
/// record (at most a header, the longest key and the largest value) did not fit in.
pub const MAX_PAD_LEN: usize = DEFAULT_MAX_VALUE_SIZE + MAX_KEY_LEN + 2 * HEADER_LEN + 4096;
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
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        match b {
            1 => Some(Kind::Put),
            2 => Some(Kind::Delete),
            3 => Some(Kind::Dead),
            4 => Some(Kind::Pad),
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
    /// Low 32 bits of xxh3-64 over key then value.
    pub data_sum: u32,
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

/// The checksum of a record's payload.
pub fn data_sum(key: &[u8], value: &[u8]) -> u32 {
    let mut h = Xxh3::new();
    h.update(key);
    h.update(value);
    h.digest() as u32
}

impl Header {
    /// The header of a Pad record that takes `len` bytes (a multiple of 8, at least
    /// `HEADER_LEN`) from where it starts.
    pub fn pad(len: u64) -> Header {
        Header {
            kind: Kind::Pad,
            key_len: 0,
            value_len: (len - HEADER_LEN as u64) as u32,
            seq: 0,
            data_sum: 0,
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
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        if xxh3_64_with_seed(&b[0..28], key) as u32 != u32_at(28) {
            return Err(HeaderError::Checksum);
        }
        let kind = Kind::from_u8(b[4]).ok_or(HeaderError::Field("kind"))?;
        if b[5..8] != [0, 0, 0] {
            return Err(HeaderError::Field("reserved"));
        }
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&b[16..24]);
        let h = Header {
            kind,
            key_len: u32_at(8),
            value_len: u32_at(12),
            seq: u64::from_le_bytes(seq),
            data_sum: u32_at(24),
        };
        match kind {
            Kind::Put | Kind::Dead | Kind::Delete => {
                if h.key_len == 0 || h.key_len as usize > MAX_KEY_LEN {
                    return Err(HeaderError::Field("key length"));
                }
                if h.value_len as usize > DEFAULT_MAX_VALUE_SIZE {
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
        }
        Ok(h)
    }
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
}

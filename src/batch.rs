//! Atomic write batches: puts and deletes that `Store::write` applies all together or not
//! at all, in memory and on disk.
//!
//! On disk (format 4) a batch is its records back to back in one segment, each with the
//! batch flag, then a Commit record that names how many there are; their sequence numbers
//! run without a gap up to the Commit's. Recovery applies the records only when the
//! Commit follows all of them: a batch torn by a crash, or damaged, disappears whole. In
//! memory the records are applied to the index under one hold of its lock, so a get sees
//! all of the batch or none of it.

use crate::error::{Error, Result};
use crate::format::{MAX_KEY_LEN, MAX_VALUE_LIMIT};

/// One operation of a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
}

/// Puts and deletes to apply together with `Store::write`. Later operations on a key win
/// over earlier ones in the same batch, as they would one by one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    pub(crate) ops: Vec<Op>,
    /// Bytes of keys and values.
    bytes: usize,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Batch {
        Batch::default()
    }

    /// Adds a put of `value` under `key`.
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> &mut Batch {
        self.bytes += key.len() + value.len();
        self.ops.push(Op::Put(key.to_vec(), value.to_vec()));
        self
    }

    /// `put` for the C ABI, where an abort must not happen: a key over `MAX_KEY_LEN` or a
    /// value over `MAX_VALUE_LIMIT` (which no store takes) is refused, and memory that
    /// cannot be had for the copies is `Error::Io` (ENOMEM); either way the batch is
    /// unchanged.
    pub(crate) fn try_put(&mut self, key: &[u8], value: &[u8]) -> Result<&mut Batch> {
        if value.len() > MAX_VALUE_LIMIT {
            return Err(Error::TooLarge {
                size: value.len(),
                max: MAX_VALUE_LIMIT,
            });
        }
        let k = try_key(key)?;
        let v = try_copy(value)?;
        self.ops.try_reserve(1).map_err(|_| Error::no_memory())?;
        self.bytes += key.len() + value.len();
        self.ops.push(Op::Put(k, v));
        Ok(self)
    }

    /// `delete` for the C ABI, as `try_put` is `put`'s (found by review: the C ABI's
    /// delete took keys of any length and aborted without memory for the copy).
    pub(crate) fn try_delete(&mut self, key: &[u8]) -> Result<&mut Batch> {
        let k = try_key(key)?;
        self.ops.try_reserve(1).map_err(|_| Error::no_memory())?;
        self.bytes += key.len();
        self.ops.push(Op::Delete(k));
        Ok(self)
    }

    /// Adds a delete of `key` (a tombstone is written whether or not the key exists).
    pub fn delete(&mut self, key: &[u8]) -> &mut Batch {
        self.bytes += key.len();
        self.ops.push(Op::Delete(key.to_vec()));
        self
    }

    /// Operations in the batch.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether the batch holds no operation.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Bytes of the keys and values in the batch.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Empties the batch, to be filled again.
    pub fn clear(&mut self) {
        self.ops.clear();
        self.bytes = 0;
    }
}

/// A copy of `key`, refused if it is over `MAX_KEY_LEN` (`InvalidArgument`) or memory for
/// it cannot be had (`Error::Io`, ENOMEM).
fn try_key(key: &[u8]) -> Result<Vec<u8>> {
    if key.len() > MAX_KEY_LEN {
        return Err(Error::InvalidArgument(format!(
            "key of {} bytes: keys are 1..={MAX_KEY_LEN} bytes",
            key.len()
        )));
    }
    try_copy(key)
}

/// A copy of `b`; `Error::Io` (ENOMEM) if the memory cannot be had.
fn try_copy(b: &[u8]) -> Result<Vec<u8>> {
    let mut v = Vec::new();
    v.try_reserve_exact(b.len())
        .map_err(|_| Error::no_memory())?;
    v.extend_from_slice(b);
    Ok(v)
}

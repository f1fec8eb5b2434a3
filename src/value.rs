//! `Value`: a value read into memory of its own, handed to the caller without a copy.

use std::ops::Deref;

use crate::log::device::Blocks;

/// A value returned by `Store::get_value`. It owns the memory
/// the record was read into (with O_DIRECT, the aligned blocks that hold it, read straight
/// from the device), and derefs to the value's bytes: the value is never copied on its way
/// to the caller. It stays valid whatever happens to the store afterwards (overwrites,
/// reclaiming, close).
pub struct Value {
    rec: Blocks,
    /// Where the value starts in the record (after the header and key).
    start: usize,
}

impl Value {
    /// The value in `rec`, from `start` to its end.
    pub(crate) fn new(rec: Blocks, start: usize) -> Value {
        assert!(start <= rec.as_slice().len(), "a value inside its record");
        Value { rec, start }
    }
}

impl Deref for Value {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.rec.as_slice()[self.start..]
    }
}

impl AsRef<[u8]> for Value {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl std::fmt::Debug for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Value").field("len", &self.len()).finish()
    }
}

impl PartialEq<[u8]> for Value {
    fn eq(&self, other: &[u8]) -> bool {
        **self == *other
    }
}

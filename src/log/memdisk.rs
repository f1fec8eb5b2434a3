//! An in-memory stand-in for disk_file, for power-loss tests: it keeps what reads see apart
//! from what an fsync made durable, and [`MemDisk::cut`] tells what a power cut would
//! leave. Selected with `Hooks::memory`; not for production use. Give such stores
//! small segments (`Options::segment_size`): taking a segment grows the device by one.

use std::io;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::error::Result;
use crate::format::BLOCK;
use crate::log::device::{past_end, Device};

/// The in-memory device.
#[derive(Default)]
pub struct MemDisk {
    state: Mutex<MemState>,
}

#[derive(Default)]
struct MemState {
    /// The bytes as reads see them (the page cache, in a real system).
    data: Vec<u8>,
    /// The bytes as of the last sync.
    durable: Vec<u8>,
    /// Changes since the last sync, in order.
    pending: Vec<Pending>,
}

enum Pending {
    Write(u64, Vec<u8>),
    SetLen(u64),
}

impl std::fmt::Debug for MemDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.state.lock();
        write!(
            f,
            "MemDisk({} bytes, {} durable, {} pending)",
            s.data.len(),
            s.durable.len(),
            s.pending.len()
        )
    }
}

fn write_into(v: &mut Vec<u8>, off: u64, bytes: &[u8]) {
    let end = off as usize + bytes.len();
    if v.len() < end {
        v.resize(end, 0);
    }
    v[off as usize..end].copy_from_slice(bytes);
}

impl MemDisk {
    /// An empty device.
    pub fn new() -> Arc<MemDisk> {
        Arc::new(MemDisk::default())
    }

    /// The device's bytes as reads see them now (written, synced or not).
    pub fn contents(&self) -> Vec<u8> {
        self.state.lock().data.clone()
    }

    pub(crate) fn len(&self) -> u64 {
        self.state.lock().data.len() as u64
    }

    pub(crate) fn read_exact_at(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        let s = self.state.lock();
        let end = off as usize + buf.len();
        if end > s.data.len() {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
        buf.copy_from_slice(&s.data[off as usize..end]);
        Ok(())
    }

    pub(crate) fn write_at(&self, off: u64, bytes: &[u8]) {
        let mut s = self.state.lock();
        write_into(&mut s.data, off, bytes);
        s.pending.push(Pending::Write(off, bytes.to_vec()));
    }

    /// A punched hole: the range reads as zeros.
    pub(crate) fn zero(&self, off: u64, len: u64) {
        let mut s = self.state.lock();
        let end = ((off + len) as usize).min(s.data.len());
        if (off as usize) < end {
            let zeros = vec![0u8; end - off as usize];
            write_into(&mut s.data, off, &zeros);
            s.pending.push(Pending::Write(off, zeros));
        }
    }

    pub(crate) fn set_len(&self, len: u64) {
        let mut s = self.state.lock();
        s.data.resize(len as usize, 0);
        s.pending.push(Pending::SetLen(len));
    }

    pub(crate) fn sync(&self) {
        let mut s = self.state.lock();
        s.durable = s.data.clone();
        s.pending.clear();
    }

    /// What the kernel may do after a failed fdatasync: forget every change since the last
    /// successful sync (the dirty pages are dropped, reads see the durable bytes again).
    pub fn drop_unsynced(&self) {
        let mut s = self.state.lock();
        s.data = s.durable.clone();
        s.pending.clear();
    }

    /// What a power cut now would leave on the device: the durable bytes, then each change
    /// since the last sync applied whole, torn after a random number of 512-byte sectors,
    /// or not at all (so later writes may land while earlier ones are lost), by `seed`.
    pub fn cut(&self, seed: u64) -> Vec<u8> {
        let s = self.state.lock();
        let mut out = s.durable.clone();
        let mut x = seed | 1;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for p in &s.pending {
            match p {
                Pending::SetLen(len) => out.resize(*len as usize, 0),
                Pending::Write(off, bytes) => match next() % 4 {
                    0 | 1 => write_into(&mut out, *off, bytes),
                    2 => {
                        let sectors = bytes.len().div_ceil(512) as u64;
                        let keep = ((next() % sectors.max(1)) * 512) as usize;
                        write_into(&mut out, *off, &bytes[..keep.min(bytes.len())]);
                    }
                    _ => {}
                },
            }
        }
        out
    }
}

impl Device for MemDisk {
    fn read_exact_at(&self, buf: &mut [u8], off: u64) -> Result<()> {
        MemDisk::read_exact_at(self, buf, off)?;
        Ok(())
    }
    fn read_record(&self, off: u64, bufs: &mut [&mut [u8]]) -> Result<()> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if off + total as u64 > self.len() {
            return Err(past_end(off));
        }
        let mut pos = off;
        for b in bufs.iter_mut() {
            MemDisk::read_exact_at(self, b, pos)?;
            pos += b.len() as u64;
        }
        Ok(())
    }
    fn write_vectored(&self, mut off: u64, slices: &[&[u8]]) -> Result<()> {
        for s in slices {
            MemDisk::write_at(self, off, s);
            off += s.len() as u64;
        }
        Ok(())
    }
    fn write_buffered(&self, off: u64, bytes: &[u8]) -> Result<()> {
        MemDisk::write_at(self, off, bytes);
        Ok(())
    }
    fn sync_data(&self) -> Result<()> {
        self.sync();
        Ok(())
    }
    fn sync_all(&self) -> Result<()> {
        self.sync();
        Ok(())
    }
    fn len(&self) -> Result<u64> {
        Ok(MemDisk::len(self))
    }
    fn set_len(&self, len: u64) -> Result<()> {
        MemDisk::set_len(self, len);
        Ok(())
    }
    fn punch(&self, off: u64, len: u64) -> Result<()> {
        self.zero(off, len);
        Ok(())
    }
    fn available(&self) -> Result<u64> {
        Ok(u64::MAX)
    }
    fn allocated(&self) -> Result<u64> {
        Ok(MemDisk::len(self))
    }
    /// Zero 4 KiB blocks count as holes (a punched or never-written range reads so), so
    /// that tests run recovery's skipping of holes.
    fn next_data(&self, off: u64) -> Result<Option<u64>> {
        let s = self.state.lock();
        let mut block = off / BLOCK as u64 * BLOCK as u64;
        while (block as usize) < s.data.len() {
            if holds_data(&s.data, block) {
                return Ok(Some(block.max(off)));
            }
            block += BLOCK as u64;
        }
        Ok(None)
    }
    /// The 4 KiB blocks of the range that are not all zeros (as `next_data` sees them).
    fn data_in(&self, off: u64, len: u64) -> Result<u64> {
        let s = self.state.lock();
        let end = (off + len).min(s.data.len() as u64);
        let mut block = off / BLOCK as u64 * BLOCK as u64;
        let mut data = 0;
        while block < end {
            if holds_data(&s.data, block) {
                data += (block + BLOCK as u64).min(end) - block.max(off);
            }
            block += BLOCK as u64;
        }
        Ok(data)
    }
}

/// Whether the 4 KiB block at `block` (inside `data`) is not all zeros: a hole reads as
/// zeros, so a zero block counts as one.
fn holds_data(data: &[u8], block: u64) -> bool {
    let start = block as usize;
    data[start..(start + BLOCK).min(data.len())]
        .iter()
        .any(|&b| b != 0)
}

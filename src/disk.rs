//! disk_file (the seed's sync module, data half): one large file of records after a
//! 4 KiB superblock. All reads and writes of disk_file go through here.

use std::fs::{File, OpenOptions};
use std::io::IoSlice;
use std::io::IoSliceMut;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;

use xxhash_rust::xxh3::xxh3_64;

use crate::error::{Error, Result};
use crate::memdisk::MemDisk;
use crate::record::{Header, HeaderError, Kind, HEADER_LEN};

/// The superblock's size; the first record starts here.
pub const DATA_START: u64 = 4096;
/// The superblock's first 8 bytes.
pub const DISK_MAGIC: [u8; 8] = *b"KVSDISK\0";
/// The disk_file format version this code writes and reads.
/// Version 2 added log segments (the segment size here, a header in each segment).
pub const DISK_VERSION: u32 = 2;
/// Bytes of the superblock that carry meaning (the rest of its 4 KiB is zero).
const SB_LEN: usize = 48;

/// What the superblock says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Superblock {
    /// The seed of the key hashes; fixed for the life of the store.
    pub hash_seed: u64,
    /// Seconds since the Unix epoch when the store was created.
    pub created: u64,
    /// Bytes of each log segment (fixed when the store is created).
    pub segment_size: u64,
}

impl Superblock {
    fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; DATA_START as usize];
        b[0..8].copy_from_slice(&DISK_MAGIC);
        b[8..12].copy_from_slice(&DISK_VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&(DATA_START as u32).to_le_bytes());
        b[16..24].copy_from_slice(&self.hash_seed.to_le_bytes());
        b[24..32].copy_from_slice(&self.created.to_le_bytes());
        b[32..40].copy_from_slice(&self.segment_size.to_le_bytes());
        let sum = xxh3_64(&b[0..40]);
        b[40..48].copy_from_slice(&sum.to_le_bytes());
        b
    }

    fn decode(b: &[u8]) -> Result<Superblock> {
        let bad = |m: &str| Err(Error::Corruption(format!("disk_file superblock: {m}")));
        if b.len() < SB_LEN || b[0..8] != DISK_MAGIC {
            return bad("not a kvs disk_file (bad magic)");
        }
        let u64_at = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(a)
        };
        let version = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
        if version == 1 {
            return Err(Error::InvalidArgument(
                "disk_file format version 1 (no log segments) is not supported by this build: \
                 copy the data into a new store with a kvs build of that version's era"
                    .into(),
            ));
        }
        if version != DISK_VERSION {
            return Err(Error::InvalidArgument(format!(
                "disk_file format version {version} is not supported (this build reads {DISK_VERSION})"
            )));
        }
        if xxh3_64(&b[0..40]) != u64_at(40) {
            return bad("checksum mismatch");
        }
        if u32::from_le_bytes([b[12], b[13], b[14], b[15]]) as u64 != DATA_START {
            return bad("unexpected data start");
        }
        let segment_size = u64_at(32);
        if segment_size < crate::options::MIN_SEGMENT_SIZE || segment_size % 4096 != 0 {
            return bad("implausible segment size");
        }
        Ok(Superblock {
            hash_seed: u64_at(16),
            created: u64_at(24),
            segment_size,
        })
    }
}

/// The open disk_file: one descriptor through the page cache (superblock, truncation,
/// the recovery scan) and, when O_DIRECT is on for writes or reads, a second one with it.
pub struct DiskFile {
    file: File,
    direct: Option<File>,
    /// Tests: all of disk_file's bytes live here instead (`file` is then a placeholder).
    mem: Option<Arc<MemDisk>>,
    direct_writes: bool,
    direct_reads: bool,
    /// Tests: free bytes to report instead of statvfs's.
    fake_available: Option<Arc<std::sync::atomic::AtomicU64>>,
}

thread_local! {
    /// Each reader thread's 4096-aligned bounce buffer for O_DIRECT reads (it grows to the
    /// largest record the thread has read, at most about 5 MiB).
    static BOUNCE: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl DiskFile {
    /// Opens disk_file at `path`, creating it (with a fresh superblock and a random hash
    /// seed) if it does not exist. With `direct_writes` or `direct_reads`, also opens it
    /// with O_DIRECT if the file system allows (else both fall back to the page cache).
    /// Returns the file, its superblock, and whether it was new.
    pub fn open(
        path: &Path,
        direct_writes: bool,
        direct_reads: bool,
        mem: Option<Arc<MemDisk>>,
        file_mode: u32,
        segment_size: u64,
    ) -> Result<(DiskFile, Superblock, bool)> {
        if let Some(m) = mem {
            return Self::open_mem(path, m, direct_writes, segment_size);
        }
        let exists = path.exists();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(!exists)
            .mode(file_mode)
            .open(path)?;
        let direct = if direct_writes || direct_reads {
            // EINVAL: the file system (tmpfs, some FUSE) does not support O_DIRECT.
            OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_DIRECT)
                .open(path)
                .ok()
        } else {
            None
        };
        let disk = DiskFile {
            direct_writes: direct_writes && direct.is_some(),
            direct_reads: direct_reads && direct.is_some(),
            file,
            direct,
            mem: None,
            fake_available: None,
        };
        disk.superblock(segment_size)
    }

    /// Writes a fresh superblock (random hash seed, `segment_size`) to an empty disk_file,
    /// or reads and checks the one there. Returns the file, its superblock, and whether it
    /// was new.
    fn superblock(self, segment_size: u64) -> Result<(DiskFile, Superblock, bool)> {
        if self.len()? == 0 {
            let sb = Superblock {
                segment_size,
                hash_seed: random_seed(),
                created: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0),
            };
            self.write_buffered(0, &sb.encode())?;
            self.sync_data()?;
            return Ok((self, sb, true));
        }
        let mut b = vec![0u8; SB_LEN];
        self.read_exact_at(&mut b, 0)
            .map_err(|_| Error::Corruption("disk_file is shorter than its superblock".into()))?;
        let sb = Superblock::decode(&b)?;
        Ok((self, sb, false))
    }

    /// An in-memory disk_file (tests), with `path` only as a placeholder file beside it.
    fn open_mem(
        path: &Path,
        mem: Arc<MemDisk>,
        direct: bool,
        segment_size: u64,
    ) -> Result<(DiskFile, Superblock, bool)> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)?;
        let disk = DiskFile {
            file,
            direct: None,
            mem: Some(mem),
            direct_writes: direct,
            direct_reads: false,
            fake_available: None,
        };
        disk.superblock(segment_size)
    }

    /// Writes through the page cache (superblock, pad records at open): any alignment.
    fn write_buffered(&self, off: u64, bytes: &[u8]) -> Result<()> {
        match &self.mem {
            Some(m) => m.write_at(off, bytes),
            None => self.file.write_all_at(bytes, off)?,
        }
        Ok(())
    }

    /// Fills `buf` from `off` (superblock, scan).
    fn read_exact_at(&self, buf: &mut [u8], off: u64) -> Result<()> {
        match &self.mem {
            Some(m) => m.read_exact_at(buf, off)?,
            None => self.file.read_exact_at(buf, off)?,
        }
        Ok(())
    }

    /// Tests: report `bytes` as the file system's free space from now on.
    pub fn set_fake_available(&mut self, bytes: Arc<std::sync::atomic::AtomicU64>) {
        self.fake_available = Some(bytes);
    }

    /// Whether writes bypass the page cache (offsets, lengths and memory must then be
    /// multiples of 4096).
    pub fn is_direct(&self) -> bool {
        self.direct_writes
    }

    /// Whether record reads bypass the page cache.
    pub fn reads_direct(&self) -> bool {
        self.direct_reads
    }

    /// The file's length in bytes.
    pub fn len(&self) -> Result<u64> {
        if let Some(m) = &self.mem {
            return Ok(m.len());
        }
        Ok(self.file.metadata()?.len())
    }

    /// Brings a log that ends at `end` to a 4 KiB boundary with a Pad record (written
    /// through the page cache and fsync'ed), so that O_DIRECT writes can continue it.
    /// Returns the new end.
    pub fn pad_to_block(&self, end: u64) -> Result<u64> {
        let gap = Header::pad_len(end, 4096);
        if gap == 0 {
            return Ok(end);
        }
        let h = Header::pad(gap);
        let mut rec = vec![0u8; gap as usize];
        rec[..HEADER_LEN].copy_from_slice(&h.encode());
        self.write_buffered(end, &rec)?;
        self.sync_data()?;
        Ok(end + gap)
    }

    /// Gives the blocks of `[off, off + len)` back to the file system (they read as zeros
    /// afterwards; the file keeps its length). Not durable until `sync_all`.
    pub fn punch(&self, off: u64, len: u64) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        if let Some(m) = &self.mem {
            m.zero(off, len);
            return Ok(());
        }
        nix::fcntl::fallocate(
            self.file.as_raw_fd(),
            nix::fcntl::FallocateFlags::FALLOC_FL_PUNCH_HOLE
                | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE,
            off as libc::off_t,
            len as libc::off_t,
        )?;
        Ok(())
    }

    /// Makes the file at least `off + len` bytes long (sparse: blocks are taken as they are
    /// written, so unwritten space and holes never count in `du`).
    pub fn allocate(&self, off: u64, len: u64) -> Result<()> {
        if let Some(m) = &self.mem {
            if m.len() < off + len {
                m.set_len(off + len);
            }
            return Ok(());
        }
        if self.len()? < off + len {
            self.file.set_len(off + len)?;
        }
        Ok(())
    }

    /// Bytes the file system can still give this file (statvfs `f_bavail`); `u64::MAX` for
    /// the in-memory device.
    pub fn available(&self) -> Result<u64> {
        if let Some(a) = &self.fake_available {
            return Ok(a.load(std::sync::atomic::Ordering::Relaxed));
        }
        if self.mem.is_some() {
            return Ok(u64::MAX);
        }
        let st = nix::sys::statvfs::fstatvfs(&self.file)?;
        Ok((st.blocks_available() as u64).saturating_mul(st.fragment_size() as u64))
    }

    /// Bytes the file occupies on disk (holes excluded): what `du` reports.
    pub fn allocated_bytes(&self) -> Result<u64> {
        if let Some(m) = &self.mem {
            return Ok(m.len());
        }
        use std::os::unix::fs::MetadataExt;
        Ok(self.file.metadata()?.blocks() * 512)
    }

    /// fsync: makes punched holes and allocations durable.
    pub fn sync_all(&self) -> Result<()> {
        if let Some(m) = &self.mem {
            m.sync();
            return Ok(());
        }
        self.file.sync_all()?;
        Ok(())
    }

    /// Drops the page cache's copy of `[off, off + len)` (after the reclaimer read it).
    pub fn drop_cache(&self, off: u64, len: u64) {
        if self.mem.is_none() {
            let _ = nix::fcntl::posix_fadvise(
                self.file.as_raw_fd(),
                off as libc::off_t,
                len as libc::off_t,
                nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
            );
        }
    }

    /// Fills `buf` from `off` (segment headers); false, reading nothing, if that runs past
    /// the end of the file.
    pub fn read_head(&self, off: u64, buf: &mut [u8]) -> Result<bool> {
        if off + buf.len() as u64 > self.len()? {
            return Ok(false);
        }
        self.read_exact_at(buf, off)?;
        Ok(true)
    }

    /// Writes the slices back to back at `off`, retrying short writes. With O_DIRECT,
    /// `off`, every slice's address and length must be multiples of 4096.
    pub fn write_at(&self, mut off: u64, slices: &[&[u8]]) -> Result<()> {
        if let Some(m) = &self.mem {
            for s in slices {
                m.write_at(off, s);
                off += s.len() as u64;
            }
            return Ok(());
        }
        let file = match &self.direct {
            Some(d) if self.direct_writes => d,
            _ => &self.file,
        };
        let mut bufs: Vec<&[u8]> = slices.iter().copied().filter(|s| !s.is_empty()).collect();
        while !bufs.is_empty() {
            let iov: Vec<IoSlice<'_>> = bufs.iter().map(|s| IoSlice::new(s)).collect();
            let mut n = nix::sys::uio::pwritev(file, &iov, off as libc::off_t)?;
            if n == 0 {
                return Err(Error::Io(std::io::Error::new(
                    std::io::ErrorKind::WriteZero,
                    "pwritev wrote nothing",
                )));
            }
            off += n as u64;
            while let Some(first) = bufs.first_mut() {
                if n >= first.len() {
                    n -= first.len();
                    bufs.remove(0);
                } else {
                    *first = &first[n..];
                    break;
                }
            }
        }
        Ok(())
    }

    /// Reads the record at `off` into `head` (header and key) and `value`, back to back:
    /// with O_DIRECT one aligned read of the blocks that hold it into the thread's bounce
    /// buffer, else one `preadv` through the page cache. Reading past the end of the file
    /// is corruption: the index pointed there.
    pub fn read_record(&self, off: u64, head: &mut [u8], value: &mut [u8]) -> Result<()> {
        if self.mem.is_some() {
            let end = off + (head.len() + value.len()) as u64;
            if end > self.len()? {
                return Err(Error::Corruption(format!(
                    "a record at offset {off} runs past the end of disk_file"
                )));
            }
            self.read_exact_at(head, off)?;
            return self.read_exact_at(value, off + head.len() as u64);
        }
        match &self.direct {
            Some(direct) if self.direct_reads => read_direct(direct, off, head, value),
            _ => self.read_at(off, &mut [head, value]),
        }
    }

    /// Fills the buffers back to back from `off` with one `preadv` (more only if the
    /// kernel returns short).
    fn read_at(&self, mut off: u64, bufs: &mut [&mut [u8]]) -> Result<()> {
        let mut idx = 0;
        let mut skip = 0;
        while idx < bufs.len() {
            let mut iov: Vec<IoSliceMut<'_>> = Vec::with_capacity(bufs.len() - idx);
            for (i, b) in bufs[idx..].iter_mut().enumerate() {
                let s = if i == 0 { &mut b[skip..] } else { &mut b[..] };
                if !s.is_empty() {
                    iov.push(IoSliceMut::new(s));
                }
            }
            if iov.is_empty() {
                break;
            }
            let mut n = nix::sys::uio::preadv(&self.file, &mut iov, off as libc::off_t)?;
            if n == 0 {
                return Err(Error::Corruption(format!(
                    "a record at offset {off} runs past the end of disk_file"
                )));
            }
            off += n as u64;
            while idx < bufs.len() {
                let left = bufs[idx].len() - skip;
                if n >= left {
                    n -= left;
                    idx += 1;
                    skip = 0;
                } else {
                    skip += n;
                    break;
                }
            }
        }
        Ok(())
    }

    /// fdatasync (O_DIRECT bypasses the cache, not the device's own write cache; the
    /// inode is shared, so either descriptor syncs both).
    pub fn sync_data(&self) -> Result<()> {
        if let Some(m) = &self.mem {
            m.sync();
            return Ok(());
        }
        self.file.sync_data()?;
        Ok(())
    }

    /// Reads the records in `[start, end)` in order, calling `f(offset, header, key, value)`
    /// for each valid Put and Delete (Dead and Pad are skipped). Stops at the first position
    /// that is not a whole valid record and returns it: the end of the valid log (`end`,
    /// or less if the file ends first).
    pub fn scan(
        &self,
        start: u64,
        end: u64,
        mut f: impl FnMut(u64, &Header, &[u8], &[u8]) -> Result<()>,
    ) -> Result<ScanEnd> {
        const CHUNK: usize = 8 << 20;
        let file_len = self.len()?.min(end);
        let mut reader = ChunkReader::new(self, start, file_len, CHUNK);
        let mut off = start;
        let mut record = Vec::new();
        loop {
            let mut hb = [0u8; HEADER_LEN];
            if !reader.read(off, &mut hb)? {
                return Ok(ScanEnd {
                    end: off,
                    reason: (off != file_len).then(|| "a partial header".into()),
                    clean: off == file_len,
                });
            }
            let h = match Header::decode(&hb) {
                Ok(h) => h,
                Err(HeaderError::Magic) if hb.iter().all(|&b| b == 0) => {
                    return Ok(ScanEnd {
                        end: off,
                        reason: Some("zeros where a header should be".into()),
                        clean: true,
                    })
                }
                Err(e) => {
                    return Ok(ScanEnd {
                        end: off,
                        reason: Some(format!("a bad header ({e:?})")),
                        clean: false,
                    })
                }
            };
            let next = off + h.padded_len() as u64;
            if next > file_len {
                return Ok(ScanEnd {
                    end: off,
                    reason: Some("a record cut short by the end of the file".into()),
                    clean: false,
                });
            }
            if matches!(h.kind, Kind::Put | Kind::Delete) {
                record.resize(h.record_len() - HEADER_LEN, 0);
                reader.read(off + HEADER_LEN as u64, &mut record)?;
                let (key, value) = record.split_at(h.key_len as usize);
                if crate::record::data_sum(key, value) != h.data_sum {
                    return Ok(ScanEnd {
                        end: off,
                        reason: Some("a record whose payload checksum fails".into()),
                        clean: false,
                    });
                }
                f(off, &h, key, value)?;
            }
            off = next;
        }
    }
}

/// The O_DIRECT half of [`DiskFile::read_record`].
fn read_direct(file: &File, off: u64, head: &mut [u8], value: &mut [u8]) -> Result<()> {
    const BLOCK: u64 = 4096;
    let start = off / BLOCK * BLOCK;
    let skip = (off - start) as usize;
    let needed = skip + head.len() + value.len();
    let len = (needed as u64).next_multiple_of(BLOCK) as usize;
    BOUNCE.with_borrow_mut(|buf| {
        if buf.len() < len + BLOCK as usize {
            buf.resize(len + BLOCK as usize, 0);
        }
        let a = buf.as_ptr().align_offset(BLOCK as usize);
        let region = &mut buf[a..a + len];
        let mut done = 0;
        while done < needed {
            // `done` stays a multiple of 4096: only the file's end returns short, and
            // then the next read returns 0.
            let n = file.read_at(&mut region[done..], start + done as u64)?;
            if n == 0 {
                return Err(Error::Corruption(format!(
                    "a record at offset {off} runs past the end of disk_file"
                )));
            }
            done += n;
        }
        let (h, rest) = region[skip..needed].split_at(head.len());
        head.copy_from_slice(h);
        value.copy_from_slice(rest);
        Ok(())
    })
}

/// Where a scan stopped, and why if not at the end of the file.
#[derive(Debug)]
pub struct ScanEnd {
    pub end: u64,
    /// Why it stopped before the end, if it did.
    pub reason: Option<String>,
    /// It stopped at the end or at zeros (never-written space), not at damaged bytes.
    pub clean: bool,
}

/// Sequential reads through a large buffer, so a scan costs a few large reads.
struct ChunkReader<'a> {
    file: &'a DiskFile,
    buf: Vec<u8>,
    buf_start: u64,
    file_len: u64,
    chunk: usize,
}

impl<'a> ChunkReader<'a> {
    fn new(file: &'a DiskFile, start: u64, file_len: u64, chunk: usize) -> Self {
        ChunkReader {
            file,
            buf: Vec::new(),
            buf_start: start,
            file_len,
            chunk,
        }
    }

    /// Fills `out` from `off`; false if the file ends first.
    fn read(&mut self, off: u64, out: &mut [u8]) -> Result<bool> {
        let end = off + out.len() as u64;
        if end > self.file_len {
            return Ok(false);
        }
        if off < self.buf_start || end > self.buf_start + self.buf.len() as u64 {
            if out.len() > self.chunk {
                self.file.read_exact_at(out, off)?;
                return Ok(true);
            }
            let n = (self.file_len - off).min(self.chunk as u64) as usize;
            self.buf.resize(n, 0);
            self.file.read_exact_at(&mut self.buf, off)?;
            self.buf_start = off;
        }
        let s = (off - self.buf_start) as usize;
        out.copy_from_slice(&self.buf[s..s + out.len()]);
        Ok(true)
    }
}

/// A random 64-bit seed from the kernel (falls back to time and pid if getrandom fails).
fn random_seed() -> u64 {
    let mut b = [0u8; 8];
    // SAFETY: getrandom writes at most `b.len()` bytes into the valid, writable buffer `b`.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n == b.len() as isize {
        u64::from_le_bytes(b)
    } else {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        t ^ (std::process::id() as u64).rotate_left(32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn superblock_round_trips_and_rejects_damage() {
        let sb = Superblock {
            hash_seed: 0xdead_beef,
            created: 12345,
            segment_size: 8 << 20,
        };
        let b = sb.encode();
        assert_eq!(Superblock::decode(&b).unwrap(), sb);
        for i in 0..SB_LEN {
            let mut c = b.clone();
            c[i] ^= 0x10;
            assert!(Superblock::decode(&c).is_err(), "byte {i}");
        }
    }
}

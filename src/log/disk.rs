//! disk_file (the seed's sync module, data half): one large file of log segments after a
//! 4 KiB superblock. Every access goes through a [`Device`] wrapped in [`Checked`], so the
//! first failed write, sync, allocation or punch latches the store as failed.

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::format::{Header, Superblock, BLOCK, DISK_VERSION, HEADER_LEN, SB_LEN};
use crate::log::device::{Blocks, Checked, Device, FileDevice, Latch};

/// How disk_file is to be opened.
pub struct DiskConfig<'a> {
    pub path: &'a Path,
    pub direct_writes: bool,
    pub direct_reads: bool,
    pub file_mode: u32,
    pub segment_size: u64,
    /// The value limit a new store records in its superblock.
    pub max_value_size: usize,
    pub latch: Arc<Latch>,
    pub hooks: &'a crate::log::hooks::Hooks,
}

/// The open disk_file.
pub struct DiskFile {
    dev: Checked,
    /// Flushes start and end on 4 KiB boundaries (O_DIRECT, or a test device acting so).
    direct_writes: bool,
    direct_reads: bool,
    sb: Superblock,
    /// Tests: free bytes to report instead of the device's.
    fake_available: Option<Arc<AtomicU64>>,
    /// The file's length as far as `allocate` has made sure (it only grows): a slot the
    /// file already holds is taken without a system call or a wait.
    known_len: AtomicU64,
    /// Held across `allocate`'s look at the length and its growth: two threads growing
    /// the file at once (a segment opened by a put, `Segments::grow_ahead`) must never
    /// set a shorter length after a longer one.
    growing: Mutex<()>,
}

impl DiskFile {
    /// Opens disk_file, creating it (with a fresh superblock of the current version and a
    /// random hash seed) if it does not exist or is empty. With `direct_writes` or
    /// `direct_reads`, also opens it with O_DIRECT if the file system allows (else both
    /// fall back to the page cache). Returns the file and whether it was new.
    pub fn open(cfg: DiskConfig<'_>) -> Result<(DiskFile, bool)> {
        let (dev, direct_writes): (Arc<dyn Device>, bool) = match &cfg.hooks.memory {
            Some(m) => {
                // The placeholder keeps `kvs` tools from mistaking the directory.
                OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .mode(0o600)
                    .open(cfg.path)?;
                (m.clone(), cfg.direct_writes)
            }
            None => {
                let exists = cfg.path.exists();
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(!exists)
                    .mode(cfg.file_mode)
                    .open(cfg.path)
                    .map_err(|e| Error::at_file(cfg.path, e))?;
                let direct = if cfg.direct_writes || cfg.direct_reads {
                    // EINVAL: the file system (tmpfs, some FUSE) does not support O_DIRECT.
                    OpenOptions::new()
                        .read(true)
                        .write(true)
                        .custom_flags(libc::O_DIRECT)
                        .open(cfg.path)
                        .ok()
                } else {
                    None
                };
                let d = FileDevice::new(file, direct, cfg.direct_writes, cfg.direct_reads);
                let w = d.direct_writes();
                (Arc::new(d), w)
            }
        };
        let dev: Arc<dyn Device> = match &cfg.hooks.faults {
            Some(f) => Arc::new(crate::log::fault::FaultDisk::new(
                dev,
                cfg.hooks.memory.clone(),
                f.clone(),
            )),
            None => dev,
        };
        let direct_reads = dev.direct_reads();
        let dev = Checked::new(dev, cfg.latch);
        let (sb, created) = if dev.len()? == 0 {
            let sb = Superblock {
                version: DISK_VERSION,
                segment_size: cfg.segment_size,
                max_value_size: cfg.max_value_size,
                hash_seed: random_seed(),
                created: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0),
            };
            dev.write_buffered(0, &sb.encode())?;
            dev.sync_data()?;
            (sb, true)
        } else {
            let mut b = vec![0u8; SB_LEN];
            dev.read_exact_at(&mut b, 0)
                .map_err(|_| Error::corrupt(Some(0), "disk_file is shorter than its superblock"))?;
            (Superblock::decode(&b)?, false)
        };
        let disk = DiskFile {
            dev,
            direct_writes,
            direct_reads,
            sb,
            fake_available: cfg.hooks.available.clone(),
            known_len: AtomicU64::new(0),
            growing: Mutex::new(()),
        };
        Ok((disk, created))
    }

    /// The superblock.
    pub fn superblock(&self) -> &Superblock {
        &self.sb
    }

    /// The checksum key of records and segment headers (see `Superblock::sum_key`).
    pub fn sum_key(&self) -> u64 {
        self.sb.sum_key()
    }

    /// The store's failure latch.
    pub fn latch(&self) -> &Arc<Latch> {
        self.dev.latch()
    }

    /// Whether flushes must start and end on 4 KiB boundaries (O_DIRECT writes).
    pub fn is_direct(&self) -> bool {
        self.direct_writes
    }

    /// Whether record reads bypass the page cache.
    pub fn reads_direct(&self) -> bool {
        self.direct_reads
    }

    /// The file's length in bytes.
    pub fn len(&self) -> Result<u64> {
        self.dev.len()
    }

    /// Brings a log that ends at file offset `end` to a 4 KiB boundary with a Pad record
    /// (written through the page cache and fsync'ed), so that O_DIRECT writes can continue
    /// it. `tag`: the segment's first sequence number (`Header::pad`). Returns the new end.
    pub fn pad_to_block(&self, end: u64, tag: u64) -> Result<u64> {
        let gap = Header::pad_len(end, BLOCK as u64);
        if gap == 0 {
            return Ok(end);
        }
        let h = Header::pad(gap, tag);
        let mut rec = vec![0u8; gap as usize];
        rec[..HEADER_LEN].copy_from_slice(&h.encode(self.sum_key()));
        self.dev.write_buffered(end, &rec)?;
        self.dev.sync_data()?;
        Ok(end + gap)
    }

    /// Gives the blocks of `[off, off + len)` back to the file system (they read as zeros
    /// afterwards; the file keeps its length). Not durable until `sync_all`.
    pub fn punch(&self, off: u64, len: u64) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        self.dev.punch(off, len)
    }

    /// Makes the file at least `off + len` bytes long (sparse: blocks are taken as they are
    /// written, so unwritten space and holes never count in `du`). Never shortens it.
    pub fn allocate(&self, off: u64, len: u64) -> Result<()> {
        let end = off + len;
        if self.known_len.load(Ordering::Acquire) >= end {
            return Ok(());
        }
        let _one = self.growing.lock();
        if self.dev.len()? < end {
            self.dev.set_len(end)?;
        }
        self.known_len.fetch_max(end, Ordering::Release);
        Ok(())
    }

    /// Bytes the file system can still give this file (statvfs `f_bavail`).
    pub fn available(&self) -> Result<u64> {
        if let Some(a) = &self.fake_available {
            return Ok(a.load(Ordering::Relaxed));
        }
        self.dev.available()
    }

    /// Bytes the file occupies on disk (holes excluded): what `du` reports.
    pub fn allocated_bytes(&self) -> Result<u64> {
        self.dev.allocated()
    }

    /// fsync: makes punched holes and allocations durable.
    pub fn sync_all(&self) -> Result<()> {
        self.dev.sync_all()
    }

    /// fdatasync.
    pub fn sync_data(&self) -> Result<()> {
        self.dev.sync_data()
    }

    /// Drops the page cache's copy of `[off, off + len)` (after the reclaimer read it).
    pub fn drop_cache(&self, off: u64, len: u64) {
        self.dev.drop_cache(off, len)
    }

    /// The first offset at or after `off` that may hold data, `None` if only holes follow.
    pub fn next_data(&self, off: u64) -> Result<Option<u64>> {
        self.dev.next_data(off)
    }

    /// Bytes of `[off, off + len)` that hold data (not holes).
    pub fn data_in(&self, off: u64, len: u64) -> Result<u64> {
        self.dev.data_in(off, len)
    }

    /// Fills `buf` from `off` through the page cache.
    pub fn read_exact_at(&self, buf: &mut [u8], off: u64) -> Result<()> {
        self.dev.read_exact_at(buf, off)
    }

    /// Fills `buf` from `off` (segment headers); false, reading nothing, if that runs past
    /// the end of the file.
    pub fn read_head(&self, off: u64, buf: &mut [u8]) -> Result<bool> {
        if off + buf.len() as u64 > self.len()? {
            return Ok(false);
        }
        self.dev.read_exact_at(buf, off)?;
        Ok(true)
    }

    /// Writes the slices back to back at `off`. With O_DIRECT, `off`, every slice's
    /// address and length must be multiples of 4096.
    pub fn write_at(&self, off: u64, slices: &[&[u8]]) -> Result<()> {
        self.dev.write_vectored(off, slices)
    }

    /// Reads the record at `off` into `head` (header and key) and `value`, back to back:
    /// with O_DIRECT one aligned read of the blocks that hold it, else one `preadv` through
    /// the page cache. Reading past the end of the file is corruption: the index pointed
    /// there.
    pub fn read_record(&self, off: u64, head: &mut [u8], value: &mut [u8]) -> Result<()> {
        self.dev.read_record(off, &mut [head, value])
    }

    /// Reads the `len` bytes of the record at `off` into memory of their own (with
    /// O_DIRECT, straight from the device: no copy). Past the end: corruption.
    pub fn read_record_owned(&self, off: u64, len: usize) -> Result<Blocks> {
        self.dev.read_record_owned(off, len)
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

/// Whether the file system holding `path` discards freed blocks online: `discard` (or
/// `discard=sync`) among its options in /proc/self/mountinfo, as ext4, XFS and btrfs
/// spell it. Then every segment the reclaimer punches costs a discard that the next fsync
/// waits for (README, "Limits and promises"). `None` where it cannot be told.
pub fn online_discard(path: &Path) -> Option<bool> {
    use std::os::unix::fs::MetadataExt;
    let (major, minor) = dev_numbers(std::fs::metadata(path).ok()?.dev());
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    discard_in_mountinfo(&text, major, minor)
}

/// A dev_t's major and minor numbers, as glibc's gnu_dev_major and gnu_dev_minor.
fn dev_numbers(dev: u64) -> (u64, u64) {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & 0xffff_ff00);
    (major, minor)
}

/// `online_discard` for the mount of device `major:minor` in mountinfo `text` (fields:
/// id, parent, major:minor, root, mount point, mount options, optional fields, "-",
/// file system type, source, super options).
fn discard_in_mountinfo(text: &str, major: u64, minor: u64) -> Option<bool> {
    let dev = format!("{major}:{minor}");
    let line = text
        .lines()
        .find(|l| l.split(' ').nth(2) == Some(dev.as_str()))?;
    let (mount, rest) = line.split_once(" - ")?;
    let supers = rest.split(' ').nth(2).unwrap_or("");
    let per_mount = mount.split(' ').nth(5).unwrap_or("");
    let discards = |opts: &str| {
        opts.split(',')
            .any(|o| o == "discard" || o == "discard=sync")
    };
    Some(discards(supers) || discards(per_mount))
}

#[cfg(test)]
mod tests {
    use super::{dev_numbers, discard_in_mountinfo};

    /// glibc's makedev.
    fn makedev(major: u64, minor: u64) -> u64 {
        (minor & 0xff) | ((major & 0xfff) << 8) | ((minor & !0xff) << 12) | ((major & !0xfff) << 32)
    }

    #[test]
    fn device_numbers_decode_as_glibc_encodes_them() {
        for (major, minor) in [(254, 0), (8, 17), (259, 1), (4097, 300), (0xfffff, 0xfffff)] {
            assert_eq!(dev_numbers(makedev(major, minor)), (major, minor));
        }
        assert_eq!(dev_numbers(0xfe00), (254, 0));
    }

    #[test]
    fn discard_is_read_from_the_mount_of_the_device() {
        let text = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard,resv_strict,resuid=65534
30 27 8:17 / /data rw,noatime shared:5 - xfs /dev/sdb1 rw,attr2,inode64,noquota
31 27 8:33 / /ssd rw,relatime - btrfs /dev/sdc1 rw,ssd,discard=async,space_cache=v2
32 27 8:49 / /old rw,relatime - btrfs /dev/sdd1 rw,ssd,discard,space_cache";
        assert_eq!(discard_in_mountinfo(text, 254, 0), Some(true));
        assert_eq!(discard_in_mountinfo(text, 8, 17), Some(false));
        // Asynchronous discard does not hold fsync.
        assert_eq!(discard_in_mountinfo(text, 8, 33), Some(false));
        assert_eq!(discard_in_mountinfo(text, 8, 49), Some(true));
        assert_eq!(discard_in_mountinfo(text, 9, 9), None);
        assert_eq!(discard_in_mountinfo("garbage\n\n1 2", 254, 0), None);
    }
}

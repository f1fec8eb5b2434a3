//! The device seam: every read, write, sync, allocation and hole punch of disk_file goes
//! through [`Device`], and every one that changes the device through [`Checked`], which
//! latches the store as failed at the first error (see [`Latch`]).
//!
//! Implementations: [`FileDevice`] (the real file, with an O_DIRECT twin descriptor),
//! `MemDisk` (tests: keeps written and durable bytes apart) and `FaultDisk` (tests: fails
//! or tears the Nth call of a chosen kind). IMAGE_file is written through
//! [`Latch::guard`] with the same fault hooks (see `image.rs`).

use std::fs::File;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};

use crate::error::{Error, Result};
use crate::log::pages;

/// One store's device for disk_file. Offsets are file offsets.
pub trait Device: Send + Sync {
    /// Fills `buf` from `off` through the page cache; `UnexpectedEof` past the end.
    fn read_exact_at(&self, buf: &mut [u8], off: u64) -> Result<()>;
    /// Reads a record's bytes into `bufs`, back to back from `off` (with O_DIRECT when the
    /// device reads that way). Reading past the end of the file is `Corruption`.
    fn read_record(&self, off: u64, bufs: &mut [&mut [u8]]) -> Result<()> {
        let mut pos = off;
        for b in bufs.iter_mut() {
            self.read_exact_at(b, pos).map_err(|_| past_end(off))?;
            pos += b.len() as u64;
        }
        Ok(())
    }
    /// Reads a record's `len` bytes at `off` into memory of their own (with O_DIRECT, the
    /// aligned blocks that hold them, read straight into it: no copy). By default a copy
    /// through `read_record`.
    fn read_record_owned(&self, off: u64, len: usize) -> Result<Blocks> {
        let mut b = Blocks::zeroed(len)?;
        self.read_record(off, &mut [b.as_mut_slice()])?;
        Ok(b)
    }
    /// Writes the slices back to back at `off` (the log's flushes: O_DIRECT when the
    /// device writes that way, so `off` and every slice must then be 4096-aligned).
    fn write_vectored(&self, off: u64, slices: &[&[u8]]) -> Result<()>;
    /// Writes `bytes` at `off` through the page cache (superblock, pads at open): any
    /// alignment.
    fn write_buffered(&self, off: u64, bytes: &[u8]) -> Result<()>;
    /// fdatasync.
    fn sync_data(&self) -> Result<()>;
    /// fsync (makes punched holes and length changes durable too).
    fn sync_all(&self) -> Result<()>;
    /// The file's length.
    fn len(&self) -> Result<u64>;
    /// Grows the file to `len` bytes (sparse).
    fn set_len(&self, len: u64) -> Result<()>;
    /// Gives `[off, off + len)` back to the file system (reads as zeros afterwards).
    fn punch(&self, off: u64, len: u64) -> Result<()>;
    /// Bytes the file system can still give the file.
    fn available(&self) -> Result<u64>;
    /// Bytes the file occupies (what `du` says).
    fn allocated(&self) -> Result<u64>;
    /// Drops cached pages of `[off, off + len)` (a hint).
    fn drop_cache(&self, _off: u64, _len: u64) {}
    /// The first offset at or after `off` that may hold data (`SEEK_DATA`: holes are
    /// skipped), or `None` if only holes follow. Devices that cannot tell return `off`.
    fn next_data(&self, off: u64) -> Result<Option<u64>> {
        Ok(Some(off))
    }
    /// Bytes of `[off, off + len)` that hold data (holes, as `SEEK_DATA` and `SEEK_HOLE`
    /// see them, excluded). Devices that cannot tell return `len`.
    fn data_in(&self, _off: u64, len: u64) -> Result<u64> {
        Ok(len)
    }
    /// Whether `write_vectored` bypasses the page cache.
    fn direct_writes(&self) -> bool {
        false
    }
    /// Whether `read_record` bypasses the page cache.
    fn direct_reads(&self) -> bool {
        false
    }
}

pub(crate) fn past_end(off: u64) -> Error {
    Error::corrupt(Some(off), "a record runs past the end of disk_file")
}

/// The store's failure latch: set by the first failed write, sync, allocation or punch (of
/// disk_file or IMAGE_file) or by the death of a background thread; never cleared while
/// the store is open. Once set, every operation that would change the store fails with
/// `Error::Failed` (after a failed fdatasync the kernel may have dropped the dirty pages,
/// so a later successful one proves nothing: PostgreSQL's "fsyncgate").
#[derive(Default)]
pub struct Latch {
    failed: AtomicBool,
    why: Mutex<Option<String>>,
}

impl Latch {
    /// Whether the store has failed.
    pub fn is_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// `Err(Failed)` once the store has failed.
    pub fn check(&self) -> Result<()> {
        if self.is_failed() {
            return Err(self.error());
        }
        Ok(())
    }

    /// The `Failed` error naming the first failure.
    pub fn error(&self) -> Error {
        Error::Failed(
            self.why
                .lock()
                .clone()
                .unwrap_or_else(|| "unknown failure".into()),
        )
    }

    /// Sets the latch (the first reason wins) and returns the `Failed` error.
    pub fn fail(&self, why: &str) -> Error {
        let first = {
            let mut w = self.why.lock();
            if w.is_none() {
                *w = Some(why.to_string());
            }
            !self.failed.swap(true, Ordering::AcqRel)
        };
        if first {
            log::error!("kvs: store failed: {why}");
        }
        self.error()
    }

    /// Runs a changing operation `what`: refused once failed; its error sets the latch.
    pub fn guard<T>(&self, what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        self.check()?;
        f().map_err(|e| self.fail(&format!("{what}: {e}")))
    }

    /// `guard`, except that `NoSpace` is returned as it is, without setting the latch: for
    /// writes of the index's files whose `NoSpace` means that nothing they replace was
    /// touched (IMAGE_file's temporary copy, an IMAGE_delta block past the chain's end).
    pub fn guard_but_full<T>(&self, what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        self.check()?;
        match f() {
            Err(Error::NoSpace) => Err(Error::NoSpace),
            r => r.map_err(|e| self.fail(&format!("{what}: {e}"))),
        }
    }
}

/// A device whose changing operations go through the latch: the first failure latches,
/// and after it they fail at once without touching the device. Reads pass through.
pub struct Checked {
    inner: Arc<dyn Device>,
    latch: Arc<Latch>,
    syncs: SyncsInFlight,
}

impl Checked {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Device>, latch: Arc<Latch>) -> Checked {
        Checked {
            inner,
            latch,
            syncs: SyncsInFlight::default(),
        }
    }

    /// Runs the sync `f` (`what` names it): see [`SyncsInFlight`]. `Ok` only if it
    /// succeeded, every sync running when it returned has ended, and the store has not
    /// failed meanwhile.
    fn sync(&self, what: &str, f: impl FnOnce() -> Result<()>) -> Result<()> {
        let running = self.syncs.begin();
        let res = self.latch.guard(what, f);
        running.end(res.is_ok());
        res?;
        self.latch.check()
    }

    /// The latch.
    pub fn latch(&self) -> &Arc<Latch> {
        &self.latch
    }
}

/// The calls of a wrapping device that change nothing and only pass through to the
/// wrapped one in `self.$inner`: reads, sizes, hints and flags.
macro_rules! forward_reads {
    ($inner:ident) => {
        fn read_record(&self, off: u64, bufs: &mut [&mut [u8]]) -> Result<()> {
            self.$inner.read_record(off, bufs)
        }
        fn read_record_owned(&self, off: u64, len: usize) -> Result<Blocks> {
            self.$inner.read_record_owned(off, len)
        }
        forward_reads!($inner, own_read_record);
    };
    // The wrapper writes its own `read_record`.
    ($inner:ident, own_read_record) => {
        fn read_exact_at(&self, buf: &mut [u8], off: u64) -> Result<()> {
            self.$inner.read_exact_at(buf, off)
        }
        forward_reads!($inner, own_reads);
    };
    // The wrapper writes its own `read_record` and `read_exact_at`.
    ($inner:ident, own_reads) => {
        fn len(&self) -> Result<u64> {
            self.$inner.len()
        }
        fn available(&self) -> Result<u64> {
            self.$inner.available()
        }
        fn allocated(&self) -> Result<u64> {
            self.$inner.allocated()
        }
        fn drop_cache(&self, off: u64, len: u64) {
            self.$inner.drop_cache(off, len)
        }
        fn next_data(&self, off: u64) -> Result<Option<u64>> {
            self.$inner.next_data(off)
        }
        fn data_in(&self, off: u64, len: u64) -> Result<u64> {
            self.$inner.data_in(off, len)
        }
        fn direct_writes(&self) -> bool {
            self.$inner.direct_writes()
        }
        fn direct_reads(&self) -> bool {
            self.$inner.direct_reads()
        }
    };
}
pub(crate) use forward_reads;

impl Device for Checked {
    forward_reads!(inner);
    fn write_vectored(&self, off: u64, slices: &[&[u8]]) -> Result<()> {
        self.latch.guard("write of disk_file", || {
            self.inner.write_vectored(off, slices)
        })
    }
    fn write_buffered(&self, off: u64, bytes: &[u8]) -> Result<()> {
        self.latch.guard("write of disk_file", || {
            self.inner.write_buffered(off, bytes)
        })
    }
    fn sync_data(&self) -> Result<()> {
        self.sync("fdatasync of disk_file", || self.inner.sync_data())
    }
    fn sync_all(&self) -> Result<()> {
        self.sync("fsync of disk_file", || self.inner.sync_all())
    }
    fn set_len(&self, len: u64) -> Result<()> {
        self.latch
            .guard("growing disk_file", || self.inner.set_len(len))
    }
    fn punch(&self, off: u64, len: u64) -> Result<()> {
        self.latch
            .guard("hole punch in disk_file", || self.inner.punch(off, len))
    }
}

/// The syncs of disk_file in flight. The kernel reports a write-back error to one fsync of
/// a file description only (errseq): of two syncs running at once, the one that fails may
/// carry the only news that bytes the other covers were lost. So a sync that succeeds is
/// believed only once every sync running when it returned has ended (a failed one latches
/// the store before it ends) and the latch is still clear; without this a waiter could be
/// told durable between the other thread's error and its latching. The wait is bounded:
/// syncs begun later are not waited for.
#[derive(Default)]
struct SyncsInFlight {
    /// The next ticket, and the tickets of syncs running.
    state: Mutex<(u64, std::collections::BTreeSet<u64>)>,
    ended: Condvar,
}

impl SyncsInFlight {
    fn begin(&self) -> RunningSync<'_> {
        let mut s = self.state.lock();
        let ticket = s.0;
        s.0 += 1;
        s.1.insert(ticket);
        RunningSync {
            syncs: self,
            ticket,
        }
    }
}

/// One sync in flight; dropping it (by `end`, or by a panic) ends it.
struct RunningSync<'a> {
    syncs: &'a SyncsInFlight,
    ticket: u64,
}

impl RunningSync<'_> {
    /// Ends this sync; after a success, waits until every sync running now has ended.
    fn end(self, ok: bool) {
        let syncs = self.syncs;
        drop(self);
        if ok {
            let mut s = syncs.state.lock();
            let now = s.0;
            while s.1.first().is_some_and(|&t| t < now) {
                syncs.ended.wait(&mut s);
            }
        }
    }
}

impl Drop for RunningSync<'_> {
    fn drop(&mut self) {
        self.syncs.state.lock().1.remove(&self.ticket);
        self.syncs.ended.notify_all();
    }
}

/// The real disk_file: one descriptor through the page cache and, when O_DIRECT is on for
/// writes or reads and the file system allows it, a second one with O_DIRECT.
pub struct FileDevice {
    file: File,
    direct: Option<File>,
    direct_writes: bool,
    direct_reads: bool,
}

impl FileDevice {
    /// Wraps the open `file`; `direct` is the same file opened with O_DIRECT, if any.
    pub fn new(file: File, direct: Option<File>, writes: bool, reads: bool) -> FileDevice {
        FileDevice {
            direct_writes: writes && direct.is_some(),
            direct_reads: reads && direct.is_some(),
            file,
            direct,
        }
    }
}

impl Device for FileDevice {
    fn read_exact_at(&self, buf: &mut [u8], off: u64) -> Result<()> {
        self.file.read_exact_at(buf, off)?;
        Ok(())
    }

    fn read_record(&self, off: u64, bufs: &mut [&mut [u8]]) -> Result<()> {
        match &self.direct {
            Some(direct) if self.direct_reads => read_direct(direct, off, bufs),
            _ => read_vectored(&self.file, off, bufs),
        }
    }

    fn read_record_owned(&self, off: u64, len: usize) -> Result<Blocks> {
        match &self.direct {
            Some(direct) if self.direct_reads => read_direct_owned(direct, off, len),
            _ => {
                let mut b = Blocks::zeroed(len)?;
                read_vectored(&self.file, off, &mut [b.as_mut_slice()])?;
                Ok(b)
            }
        }
    }

    fn write_vectored(&self, mut off: u64, slices: &[&[u8]]) -> Result<()> {
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

    fn write_buffered(&self, off: u64, bytes: &[u8]) -> Result<()> {
        self.file.write_all_at(bytes, off)?;
        Ok(())
    }

    fn sync_data(&self) -> Result<()> {
        // O_DIRECT bypasses the cache, not the device's own write cache; the inode is
        // shared, so either descriptor syncs both.
        self.file.sync_data()?;
        Ok(())
    }

    fn sync_all(&self) -> Result<()> {
        self.file.sync_all()?;
        Ok(())
    }

    fn len(&self) -> Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn set_len(&self, len: u64) -> Result<()> {
        self.file.set_len(len)?;
        Ok(())
    }

    fn punch(&self, off: u64, len: u64) -> Result<()> {
        nix::fcntl::fallocate(
            self.file.as_raw_fd(),
            nix::fcntl::FallocateFlags::FALLOC_FL_PUNCH_HOLE
                | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE,
            off as libc::off_t,
            len as libc::off_t,
        )?;
        Ok(())
    }

    fn available(&self) -> Result<u64> {
        let st = nix::sys::statvfs::fstatvfs(&self.file)?;
        Ok((st.blocks_available() as u64).saturating_mul(st.fragment_size() as u64))
    }

    fn allocated(&self) -> Result<u64> {
        use std::os::unix::fs::MetadataExt;
        Ok(self.file.metadata()?.blocks() * 512)
    }

    fn drop_cache(&self, off: u64, len: u64) {
        let _ = nix::fcntl::posix_fadvise(
            self.file.as_raw_fd(),
            off as libc::off_t,
            len as libc::off_t,
            nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
        );
    }

    fn next_data(&self, off: u64) -> Result<Option<u64>> {
        match nix::unistd::lseek(
            self.file.as_raw_fd(),
            off as libc::off_t,
            nix::unistd::Whence::SeekData,
        ) {
            Ok(d) => Ok(Some(d as u64)),
            Err(nix::errno::Errno::ENXIO) => Ok(None),
            // The file system cannot tell holes apart: read everything.
            Err(_) => Ok(Some(off)),
        }
    }

    fn data_in(&self, off: u64, len: u64) -> Result<u64> {
        use nix::unistd::{lseek, Whence};
        let fd = self.file.as_raw_fd();
        let end = off + len;
        let (mut pos, mut data) = (off, 0);
        while pos < end {
            let start = match lseek(fd, pos as libc::off_t, Whence::SeekData) {
                Ok(d) => d as u64,
                Err(nix::errno::Errno::ENXIO) => break,
                // The file system cannot tell holes apart: all of it is data.
                Err(_) => return Ok(len),
            };
            if start >= end {
                break;
            }
            let stop = match lseek(fd, start as libc::off_t, Whence::SeekHole) {
                Ok(h) => (h as u64).min(end),
                Err(_) => return Ok(len),
            };
            data += stop - start;
            pos = stop;
        }
        Ok(data)
    }

    fn direct_writes(&self) -> bool {
        self.direct_writes
    }

    fn direct_reads(&self) -> bool {
        self.direct_reads
    }
}

/// Fills the buffers back to back from `off` with one `preadv` (more only if the kernel
/// returns short).
fn read_vectored(file: &File, mut off: u64, bufs: &mut [&mut [u8]]) -> Result<()> {
    let start = off;
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
        let mut n = nix::sys::uio::preadv(file, &mut iov, off as libc::off_t)?;
        if n == 0 {
            return Err(past_end(start));
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

/// One aligned O_DIRECT read of the blocks holding `[off, off + len(bufs))`
/// (`read_direct_owned`), copied out into `bufs`.
fn read_direct(file: &File, off: u64, bufs: &mut [&mut [u8]]) -> Result<()> {
    let total: usize = bufs.iter().map(|b| b.len()).sum();
    let rec = read_direct_owned(file, off, total)?;
    let mut pos = 0;
    for b in bufs.iter_mut() {
        b.copy_from_slice(&rec.as_slice()[pos..pos + b.len()]);
        pos += b.len();
    }
    Ok(())
}

/// Bytes read from the device into memory of their own: a 4096-aligned allocation, of
/// which `[start, start + len)` is the record (O_DIRECT reads whole blocks around it).
pub struct Blocks {
    ptr: std::ptr::NonNull<u8>,
    layout: std::alloc::Layout,
    start: usize,
    len: usize,
}

// SAFETY: Blocks owns its allocation alone (like a Vec<u8>); nothing else points into it.
unsafe impl Send for Blocks {}
// SAFETY: shared access only reads the bytes.
unsafe impl Sync for Blocks {}

impl Blocks {
    /// An aligned allocation of at least `size` bytes (at least one block), not yet
    /// initialised unless `zeroed`: one the thread freed before if it fits, else new. When
    /// memory cannot be had (mmap or the allocator fails: an address-space limit, strict
    /// overcommit), `Error::Io` with ENOMEM, not an abort: a get of a large value then
    /// fails alone and the store goes on.
    fn alloc(size: usize, zeroed: bool) -> Result<Blocks> {
        const BLOCK: usize = crate::format::BLOCK;
        let size = size.max(1).next_multiple_of(BLOCK);
        let spare = SPARE
            .try_with(|s| {
                let mut s = s.borrow_mut();
                // A spare at most twice the size (a small value must not pin a large block).
                let i = s
                    .iter()
                    .position(|b| (size..=size.saturating_mul(2)).contains(&b.layout.size()))?;
                Some(s.swap_remove(i))
            })
            .ok()
            .flatten();
        if let Some(spare) = spare {
            let spare = std::mem::ManuallyDrop::new(spare);
            if zeroed {
                // SAFETY: the spare allocation holds `layout.size() >= size` bytes.
                unsafe { std::ptr::write_bytes(spare.ptr.as_ptr(), 0, size) };
            }
            return Ok(Blocks {
                ptr: spare.ptr,
                layout: spare.layout,
                start: 0,
                len: 0,
            });
        }
        // From `HUGE_MIN` on, a mapping of whole huge pages (see `pages`), zeros when fresh.
        let (size, align) = if size >= pages::HUGE_MIN {
            (size.next_multiple_of(pages::HUGE), pages::HUGE)
        } else {
            (size, BLOCK)
        };
        let layout = std::alloc::Layout::from_size_align(size, align)
            .expect("a record's size is far below isize::MAX");
        let raw = if align == pages::HUGE {
            pages::map(size, true)?.as_ptr()
        } else {
            // SAFETY: the layout has a non-zero size.
            unsafe {
                if zeroed {
                    std::alloc::alloc_zeroed(layout)
                } else {
                    std::alloc::alloc(layout)
                }
            }
        };
        let Some(ptr) = std::ptr::NonNull::new(raw) else {
            return Err(Error::no_memory());
        };
        Ok(Blocks {
            ptr,
            layout,
            start: 0,
            len: 0,
        })
    }

    /// `len` zero bytes, to be filled through `as_mut_slice`; `Error::Io` (ENOMEM) if the
    /// memory cannot be had.
    pub fn zeroed(len: usize) -> Result<Blocks> {
        let mut b = Blocks::alloc(len, true)?;
        b.len = len;
        Ok(b)
    }

    /// The record's bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `[start, start + len)` lies inside the allocation and was initialised
        // (zeroed, or written by a read that returned success) before `len` was set.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().add(self.start), self.len) }
    }

    /// The record's bytes, to fill.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as for `as_slice`; `&mut self` makes the borrow unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr().add(self.start), self.len) }
    }
}

impl Drop for Blocks {
    /// Keeps the allocation for the thread's next owned read (up to `SPARES` of them, of at
    /// most `KEPT_BUFFER` bytes each), or frees it: a fresh allocation costs page faults.
    fn drop(&mut self) {
        let mut spare = Some(Spare {
            ptr: self.ptr,
            layout: self.layout,
        });
        if self.layout.size() <= KEPT_BUFFER {
            let _ = SPARE.try_with(|s| {
                let mut s = s.borrow_mut();
                if s.len() < SPARES {
                    s.extend(spare.take());
                }
            });
        }
        // Not kept: freed here (Spare's drop).
        drop(spare);
    }
}

/// An allocation a dropped `Blocks` left for the thread's next owned read.
struct Spare {
    ptr: std::ptr::NonNull<u8>,
    layout: std::alloc::Layout,
}

impl Drop for Spare {
    fn drop(&mut self) {
        // SAFETY (both): allocated in `Blocks::alloc` with this layout (a mapping if its
        // alignment is a huge page's), owned by this Spare alone (a Blocks gives it up
        // when it becomes one, and takes it back with ManuallyDrop), freed once, here.
        unsafe {
            if self.layout.align() == pages::HUGE {
                pages::unmap(self.ptr, self.layout.size());
            } else {
                std::alloc::dealloc(self.ptr.as_ptr(), self.layout);
            }
        }
    }
}

/// Allocations a thread keeps for its next owned reads.
const SPARES: usize = 2;

thread_local! {
    /// Allocations of dropped `Blocks` (values the caller is done with), reused by the
    /// thread's next owned reads.
    static SPARE: std::cell::RefCell<Vec<Spare>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// One aligned O_DIRECT read of the blocks holding `[off, off + len)` straight into a new
/// `Blocks`. (Two halves at once, the first on a helper thread, made 5 MiB values arrive
/// later, not sooner, once the memory they are read into is huge pages: `pages`.)
fn read_direct_owned(file: &File, off: u64, len: usize) -> Result<Blocks> {
    const BLOCK: u64 = crate::format::BLOCK as u64;
    let start = off / BLOCK * BLOCK;
    let skip = (off - start) as usize;
    let needed = skip + len;
    let size = (needed as u64).next_multiple_of(BLOCK) as usize;
    let mut b = Blocks::alloc(size, false)?;
    pread_blocks(
        file.as_raw_fd(),
        b.ptr.as_ptr() as usize,
        size,
        start,
        needed,
        off,
    )?;
    b.start = skip;
    b.len = len;
    Ok(b)
}

/// Reads at least `needed` bytes from `start` (4096-aligned) into the `cap` bytes at
/// address `base` (aligned, owned by the caller's `Blocks`, which outlives this call).
fn pread_blocks(
    fd: std::os::fd::RawFd,
    base: usize,
    cap: usize,
    start: u64,
    needed: usize,
    off: u64,
) -> Result<()> {
    let mut done = 0;
    while done < needed {
        // SAFETY: `[base + done, base + cap)` is memory of a live allocation that only
        // this call writes; `done < needed <= cap`. The kernel writes at most `cap - done`
        // bytes there.
        let n = unsafe {
            libc::pread(
                fd,
                (base + done) as *mut libc::c_void,
                cap - done,
                (start + done as u64) as libc::off_t,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(Error::Io(e));
        }
        if n == 0 {
            return Err(past_end(off));
        }
        // `done` stays a multiple of 4096: only the file's end returns short.
        done += n as usize;
    }
    Ok(())
}

/// The largest read buffer a thread keeps between reads (a 5 MiB value and its header,
/// key and alignment fit); a larger one is freed after its read.
const KEPT_BUFFER: usize = 6 << 20;

//! Memory for O_DIRECT transfers: anonymous mappings, on huge pages where they pay.
//!
//! An O_DIRECT read or write reaches the disk as requests of at most `max_segments`
//! pieces of physically contiguous memory (254 on the test machine's virtio disk, in
//! `/sys/block/vda/queue/max_segments`). Into 4 KiB pages scattered across memory a 5 MiB
//! value is six requests or more; into 2 MiB pages it is two (the disk's largest request
//! is 4 MiB). A 1-thread cold `get_value` of 5 MiB values took 3.4-4.4 ms (p50) into
//! ordinary pages and 2.2-3.2 ms into huge ones, with raw reads of the same blocks into
//! huge pages at 1.8-2.5 ms in the same runs (`cargo bench --bench kvsbench -- --phases
//! fill,get-api --value-size 5MiB --records 800`). Whether a buffer got contiguous pages
//! had been luck, and the largest swing in earlier figures.
//!
//! So a mapping asked for huge pages (`map(len, true)`: read buffers of at least
//! `HUGE_MIN` bytes, and the ring) is placed on a 2 MiB boundary
//! and advised for transparent huge pages (`MADV_HUGEPAGE`; in the kernel's "madvise" mode, a common
//! default and this machine's, only advised memory gets them). Where the kernel has none
//! to give (huge pages off, memory fragmented) it is made of ordinary pages: slower,
//! nothing else.

use std::ptr::NonNull;

use crate::error::{Error, Result};

/// A huge page.
pub const HUGE: usize = 2 << 20;

/// Mappings of at least this many bytes are advised for huge pages.
pub const HUGE_MIN: usize = 1 << 20;

/// A private anonymous mapping of `len` bytes (at least 1), zero-filled as it is first
/// touched (mapping costs no memory); if `huge` and from `HUGE_MIN` bytes on, 2
/// MiB-aligned and advised for huge pages, else page-aligned. Free it with
/// `unmap(ptr, len)`.
pub fn map(len: usize, huge: bool) -> Result<NonNull<u8>> {
    let huge = huge && len >= HUGE_MIN;
    // Room to slide to a 2 MiB boundary; the slack either side is unmapped below.
    let span = if huge {
        len.checked_add(HUGE)
    } else {
        Some(len)
    };
    let Some(span) = span.filter(|s| s.checked_add(page()).is_some()) else {
        return Err(Error::Io(std::io::Error::from_raw_os_error(libc::ENOMEM)));
    };
    // SAFETY: a fresh private anonymous mapping with no address hint aliases nothing.
    let raw = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            span,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if raw == libc::MAP_FAILED {
        return Err(Error::Io(std::io::Error::last_os_error()));
    }
    let base = raw as usize;
    if !huge {
        return Ok(NonNull::new(raw.cast()).expect("mmap never returns null on success"));
    }
    let start = base.next_multiple_of(HUGE);
    let end = start + len.next_multiple_of(page());
    // SAFETY: `[base, start)` and `[end, base + span)` lie inside the mapping just made,
    // which nothing else uses yet; unmapping them leaves `[start, end)` mapped.
    unsafe {
        // A failure would only leave the slack mapped (at most 2 MiB of address space,
        // never touched, so no memory).
        if start > base {
            let rc = libc::munmap(raw, start - base);
            debug_assert_eq!(rc, 0);
        }
        if base + span > end {
            let rc = libc::munmap(end as *mut libc::c_void, base + span - end);
            debug_assert_eq!(rc, 0);
        }
    }
    // SAFETY: advice on `[start, end)`, mapped above and ours; it changes no contents. A
    // failure (a kernel without huge pages) leaves ordinary pages, so it is ignored.
    unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE) };
    Ok(NonNull::new(start as *mut u8).expect("a mapping above address 0"))
}

/// Frees a mapping `map(len, _)` returned.
///
/// # Safety
/// `ptr` came from `map(len, _)` with this `len`, and nothing uses the memory any more.
pub unsafe fn unmap(ptr: NonNull<u8>, len: usize) {
    // SAFETY: per the contract, `[ptr, ptr + len)` rounded up to pages is exactly what
    // `map` left mapped.
    unsafe { libc::munmap(ptr.as_ptr().cast(), len) };
}

/// Faults in the pages of `[ptr, ptr + len)` for writing without changing what they hold
/// (`MADV_POPULATE_WRITE`, Linux 5.14), so that a later write there does not stop for a
/// page fault. Fails (EINVAL) on kernels that cannot do it.
///
/// # Safety
/// The range lies inside a mapping `map` made that is still mapped.
pub unsafe fn populate(ptr: *mut u8, len: usize) -> std::io::Result<()> {
    let start = ptr as usize / page() * page();
    let end = (ptr as usize + len).next_multiple_of(page());
    // SAFETY: per the contract the range, widened to whole pages, is mapped memory of
    // ours (`map` maps whole pages); the advice faults pages in and changes no byte.
    let rc = unsafe {
        libc::madvise(
            start as *mut libc::c_void,
            end - start,
            libc::MADV_POPULATE_WRITE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The size of a page.
fn page() -> usize {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as usize
    } else {
        4096
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_mappings_start_on_a_huge_page_and_read_as_zeros() {
        for len in [4096, HUGE_MIN - 4096, HUGE_MIN, 5 << 20, (5 << 20) + 8192] {
            let p = map(len, true).unwrap();
            let addr = p.as_ptr() as usize;
            if len >= HUGE_MIN {
                assert_eq!(addr % HUGE, 0, "{len} bytes at {addr:#x}");
            } else {
                assert_eq!(addr % page(), 0);
            }
            // SAFETY: `len` bytes mapped and ours until unmapped below.
            let bytes = unsafe { std::slice::from_raw_parts_mut(p.as_ptr(), len) };
            assert!(bytes.iter().all(|&b| b == 0));
            bytes[len - 1] = 7;
            bytes[0] = 7;
            // SAFETY: inside the mapping. Whether or not the kernel can (Linux 5.14 on),
            // it keeps what the bytes hold.
            let _ = unsafe { populate(p.as_ptr().add(1), len - 2) };
            assert_eq!((bytes[0], bytes[1], bytes[len - 1]), (7, 0, 7));
            // SAFETY: from `map(len, true)`; the slice is not used after this.
            unsafe { unmap(p, len) };
        }
    }
}

//! The disk itself, measured in the same run: large sequential pwrites of the fill
//! volume, and random preads of value-sized blocks, each with and without O_DIRECT, on a
//! scratch file next to the store.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::measure::{drop_caches, run_phase, Budget, Phase};
use crate::workload::mix;

/// A zeroed buffer aligned to 4096 bytes, as O_DIRECT needs. From 1 MiB on it is
/// allocated on 2 MiB boundaries and advised for huge pages, as the engine's large read buffers and
/// its ring are: the raw disk is measured at its best, whatever pages a run happens to
/// get (in pages scattered 4 KiB at a time, a 5 MiB read is six requests or more to this
/// machine's disk, and took up to 1.9x as long).
pub struct Aligned {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
    layout: std::alloc::Layout,
}

// SAFETY: Aligned owns its allocation alone, as a Vec<u8> does.
unsafe impl Send for Aligned {}
// SAFETY: shared access only reads the bytes.
unsafe impl Sync for Aligned {}

impl Aligned {
    pub fn new(len: usize) -> Aligned {
        const HUGE: usize = 2 << 20;
        let (size, align) = if len >= 1 << 20 {
            (len.next_multiple_of(HUGE), HUGE)
        } else {
            (len.max(1).next_multiple_of(4096), 4096)
        };
        let layout = std::alloc::Layout::from_size_align(size, align).expect("a sane size");
        // SAFETY: the layout's size is non-zero.
        let raw = unsafe { std::alloc::alloc(layout) };
        let ptr =
            std::ptr::NonNull::new(raw).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        if align == HUGE {
            // SAFETY: advice on memory this allocation owns; it changes no contents. A
            // failure (huge pages off) leaves ordinary pages.
            unsafe { libc::madvise(raw.cast(), size, libc::MADV_HUGEPAGE) };
        }
        // SAFETY: `size` bytes at `raw` are ours; zeroing them also faults the pages in
        // (huge ones where the kernel has them) before any timing.
        unsafe { std::ptr::write_bytes(raw, 0, size) };
        Aligned { ptr, len, layout }
    }
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `len <= layout.size()` initialised bytes owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`; `&mut self` makes the borrow unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout, freed once.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

fn open(path: &Path, direct: bool, write: bool) -> Result<File, String> {
    let mut o = OpenOptions::new();
    o.read(true);
    if write {
        o.write(true).create(true);
    }
    if direct {
        o.custom_flags(libc::O_DIRECT);
    }
    o.open(path)
        .map_err(|e| format!("open {}: {e}", path.display()))
}

/// An aligned buffer of `len` pseudo-random bytes from `seed` (what the raw writes write).
fn random_buffer(len: usize, seed: u64) -> Aligned {
    let mut buf = Aligned::new(len);
    let mut x = seed;
    for c in buf.as_mut_slice().chunks_mut(8) {
        x = mix(x);
        c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
    }
    buf
}

/// Sizes a new scratch file to `len` bytes (sparse) before it is written, as the engine
/// sizes disk_file for each new log segment: writes then land inside the file, and no
/// fdatasync also commits a new file size. Before (found by an audit) the raw writes
/// appended past the end while the engine's did not.
fn sized(file: &std::fs::File, len: u64) -> Result<(), String> {
    file.set_len(len)
        .map_err(|e| format!("sizing the raw scratch file: {e}"))
}

/// Writes `total` bytes sequentially in `chunk`-byte pwrites, then fdatasync; the time
/// includes the sync, as the engine's fill includes its final sync.
pub fn seq_write(
    path: &Path,
    total: u64,
    chunk: usize,
    direct: bool,
    run_start: Instant,
) -> Result<Phase, String> {
    let _ = std::fs::remove_file(path);
    let file = open(path, direct, true)?;
    sized(&file, total)?;
    let buf = random_buffer(chunk, 7);
    let ops = total.div_ceil(chunk as u64);
    let name = if direct {
        "raw-write-direct"
    } else {
        "raw-write-cached"
    };
    let t0 = Instant::now();
    let mut phase = run_phase(
        name,
        1,
        Budget {
            ops,
            max: Duration::from_secs(3600),
        },
        run_start,
        |_, i| {
            let t = Instant::now();
            file.write_all_at(buf.as_slice(), i * chunk as u64)
                .map_err(|e| format!("raw write: {e}"))?;
            Ok((chunk as u64, t.elapsed()))
        },
    )?;
    file.sync_data()
        .map_err(|e| format!("raw fdatasync: {e}"))?;
    phase.secs = t0.elapsed().as_secs_f64();
    phase
        .notes
        .push(format!("{chunk}-byte pwrites, fdatasync at the end"));
    Ok(phase)
}

/// Durable commits on the raw disk: each operation writes `group` values of `value`
/// bytes (rounded up to 4096) with one O_DIRECT pwrite into new blocks of a sparse file
/// (sized first, as the engine's log segments are) and then fdatasyncs: the
/// best a group commit of `group` writers can do. Throughput counts values. `over`: into
/// blocks written (with zeros) and synced before the timing instead, so that no fdatasync
/// commits an allocation (`raw-commit-over-gN`; the engine writes zeros ahead of small
/// group commits).
pub fn commit(
    path: &Path,
    value: usize,
    group: usize,
    budget: Budget,
    run_start: Instant,
    over: bool,
) -> Result<Phase, String> {
    let _ = std::fs::remove_file(path);
    let file = open(path, true, true)?;
    let bytes = (value as u64).next_multiple_of(4096) as usize * group;
    let buf = random_buffer(bytes, 11);
    let budget = Budget {
        ops: budget.ops.div_ceil(group as u64),
        max: budget.max,
    };
    sized(&file, budget.ops * bytes as u64)?;
    if over {
        let total = budget.ops * bytes as u64;
        let zeros = Aligned::new(8 << 20);
        let mut at = 0;
        while at < total {
            let n = (total - at).min(8 << 20) as usize;
            file.write_all_at(&zeros.as_slice()[..n], at)
                .map_err(|e| format!("raw write: {e}"))?;
            at += n as u64;
        }
        file.sync_data()
            .map_err(|e| format!("raw fdatasync: {e}"))?;
    }
    let name = if over {
        "raw-commit-over-g"
    } else {
        "raw-commit-g"
    };
    let mut phase = run_phase(&format!("{name}{group}"), 1, budget, run_start, |_, i| {
        let t = Instant::now();
        file.write_all_at(buf.as_slice(), i * bytes as u64)
            .map_err(|e| format!("raw write: {e}"))?;
        file.sync_data()
            .map_err(|e| format!("raw fdatasync: {e}"))?;
        Ok(((value * group) as u64, t.elapsed()))
    })?;
    phase.ops *= group as u64;
    let into = if over {
        "blocks written before"
    } else {
        "new blocks of a sparse file"
    };
    phase.notes.push(format!(
        "{group} values of {value} bytes per O_DIRECT pwrite into {into}, then fdatasync; \
         ops are values, latency per pwrite+fdatasync"
    ));
    let _ = std::fs::remove_file(path);
    Ok(phase)
}

/// The disk under the reclaim phase's mix of I/O: `WRITERS` threads append `CHUNK`-byte
/// O_DIRECT pwrites to a new sparse file, each followed by fdatasync (as the log's
/// flushes and the reclaimer's writes are), while `READERS` threads read `READ`-byte
/// O_DIRECT blocks at random from what was written, keeping the bytes read at `ratio`
/// times the bytes written. Runs for `secs` seconds; the phase's bytes count reads and
/// writes, so its rate is what the device gives that mix.
pub fn mixed(path: &Path, ratio: f64, secs: f64, run_start: Instant) -> Result<Phase, String> {
    const CHUNK: u64 = 8 << 20;
    const READ: u64 = 1 << 20;
    const WRITERS: usize = 2;
    const READERS: usize = 4;
    // Written before the clock runs, so that reads have somewhere to go from the start.
    const FIRST: u64 = 8 * CHUNK;
    let _ = std::fs::remove_file(path);
    let file = open(path, true, true)?;
    // Room for what the phase can write at 4 GB/s (one second spare), sparse.
    sized(&file, FIRST + (secs.ceil() as u64 + 1) * (4 << 30))?;
    let wbuf = random_buffer(CHUNK as usize, 13);
    for i in 0..FIRST / CHUNK {
        file.write_all_at(wbuf.as_slice(), i * CHUNK)
            .map_err(|e| format!("raw write: {e}"))?;
    }
    file.sync_data()
        .map_err(|e| format!("raw fdatasync: {e}"))?;
    let rbufs: Vec<std::sync::Mutex<Aligned>> = (0..READERS)
        .map(|_| std::sync::Mutex::new(Aligned::new(READ as usize)))
        .collect();
    // (chunks claimed by writers, bytes written, bytes of reads claimed)
    let gate = (
        std::sync::Mutex::new((FIRST / CHUNK, 0u64, 0u64)),
        std::sync::Condvar::new(),
    );
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let budget = Budget {
        ops: u64::MAX >> 1,
        max: Duration::from_secs_f64(secs),
    };
    let lock = || gate.0.lock().map_err(|_| "poisoned".to_string());
    let mut phase = run_phase("raw-mixed", WRITERS + READERS, budget, run_start, |t, i| {
        if t < WRITERS {
            let at = {
                let mut g = lock()?;
                g.0 += 1;
                (g.0 - 1) * CHUNK
            };
            let t0 = Instant::now();
            file.write_all_at(wbuf.as_slice(), at)
                .map_err(|e| format!("raw write: {e}"))?;
            file.sync_data()
                .map_err(|e| format!("raw fdatasync: {e}"))?;
            lock()?.1 += CHUNK;
            gate.1.notify_all();
            return Ok((CHUNK, t0.elapsed()));
        }
        // A read once the reads so far stay within `ratio` of the writes.
        let written = {
            let mut g = lock()?;
            loop {
                if (g.2 + READ) as f64 <= ratio * g.1 as f64 {
                    g.2 += READ;
                    break FIRST + g.1;
                }
                if Instant::now() >= deadline {
                    // Nothing more to do (not counted): wait for the phase to stop.
                    drop(g);
                    std::thread::sleep(Duration::from_millis(5));
                    return Ok((0, Duration::ZERO));
                }
                g = gate
                    .1
                    .wait_timeout(g, Duration::from_millis(10))
                    .map_err(|_| "poisoned")?
                    .0;
            }
        };
        let at = mix(i ^ 0x3d3d) % (written / READ) * READ;
        let mut guard = rbufs[t - WRITERS].lock().map_err(|_| "poisoned")?;
        let t0 = Instant::now();
        file.read_exact_at(guard.as_mut_slice(), at)
            .map_err(|e| format!("raw read: {e}"))?;
        Ok((READ, t0.elapsed()))
    })?;
    let (_, written, read) = *lock()?;
    phase.notes.push(format!(
        "{WRITERS} threads appending {} MiB O_DIRECT pwrites, each then fdatasync, beside \
         {READERS} threads reading {} MiB O_DIRECT blocks at random, {:.2} bytes read per \
         byte written ({:.2} asked); the rate counts both",
        CHUNK >> 20,
        READ >> 20,
        read as f64 / written.max(1) as f64,
        ratio
    ));
    let _ = std::fs::remove_file(path);
    Ok(phase)
}

/// Random preads of `block` bytes from `threads` threads, the page cache dropped first:
/// the file is slots of `stride` bytes (a multiple of 4096), and the reads visit the slots
/// in the order `order` (each once, as the engine's cold reads visit keys).
#[allow(clippy::too_many_arguments)]
pub fn rand_read(
    path: &Path,
    stride: u64,
    order: &[u64],
    block: usize,
    threads: usize,
    direct: bool,
    budget: Budget,
    run_start: Instant,
) -> Result<Phase, String> {
    let file = open(path, direct, false)?;
    let how = drop_caches(&[path]);
    let block = if direct {
        block.next_multiple_of(4096)
    } else {
        block
    };
    let name = format!(
        "raw-read-{}-t{threads}",
        if direct { "direct" } else { "cached" }
    );
    let bufs: Vec<std::sync::Mutex<Aligned>> = (0..threads)
        .map(|_| std::sync::Mutex::new(Aligned::new(block)))
        .collect();
    let mut phase = run_phase(&name, threads, budget, run_start, |t, i| {
        let off = order[i as usize % order.len()] * stride;
        let mut guard = bufs[t].lock().map_err(|_| "poisoned")?;
        let b = guard.as_mut_slice();
        let t0 = Instant::now();
        let mut done = 0;
        while done < b.len() {
            let n = file
                .read_at(&mut b[done..], off + done as u64)
                .map_err(|e| format!("raw read: {e}"))?;
            if n == 0 {
                break;
            }
            done += n;
        }
        Ok((done as u64, t0.elapsed()))
    })?;
    phase
        .notes
        .push(format!("{block}-byte preads, cache emptied by {how}"));
    Ok(phase)
}

/// Linux native AIO, just enough to have several O_DIRECT reads in flight from one
/// thread (`io_setup`, `io_submit`, `io_getevents`; the kernel's ABI structs).
mod aio {
    /// `struct iocb` (linux/aio_abi.h, little-endian layout).
    #[repr(C)]
    #[derive(Default)]
    pub struct Iocb {
        pub data: u64,
        pub key: u32,
        pub rw_flags: i32,
        pub opcode: u16,
        pub reqprio: i16,
        pub fildes: u32,
        pub buf: u64,
        pub nbytes: u64,
        pub offset: i64,
        pub reserved2: u64,
        pub flags: u32,
        pub resfd: u32,
    }

    /// `struct io_event`.
    #[repr(C)]
    #[derive(Default, Clone, Copy)]
    pub struct Event {
        pub data: u64,
        pub obj: u64,
        pub res: i64,
        pub res2: i64,
    }

    pub const PREAD: u16 = 0;

    /// An AIO context, destroyed on drop.
    pub struct Context(libc::c_ulong);

    impl Context {
        pub fn new(depth: u32) -> std::io::Result<Context> {
            let mut ctx: libc::c_ulong = 0;
            // SAFETY: io_setup writes the new context id through a valid pointer.
            let rc = unsafe { libc::syscall(libc::SYS_io_setup, depth, &mut ctx) };
            if rc < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(Context(ctx))
        }

        /// Submits `cbs` and waits for all of them; returns each one's result (bytes read,
        /// or a negative errno) in the order of `data`.
        pub fn run(&self, cbs: &mut [Iocb]) -> std::io::Result<Vec<i64>> {
            let mut ptrs: Vec<*mut Iocb> = cbs.iter_mut().map(|c| c as *mut Iocb).collect();
            // SAFETY: the iocbs and the buffers they name stay alive until every event
            // has been collected below.
            let n = unsafe {
                libc::syscall(
                    libc::SYS_io_submit,
                    self.0,
                    ptrs.len() as libc::c_long,
                    ptrs.as_mut_ptr(),
                )
            };
            if n < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let mut events = vec![Event::default(); cbs.len()];
            let mut got = 0usize;
            while got < n as usize {
                // SAFETY: `events` has room for the remaining events; no timeout.
                let r = unsafe {
                    libc::syscall(
                        libc::SYS_io_getevents,
                        self.0,
                        1 as libc::c_long,
                        (n as usize - got) as libc::c_long,
                        events[got..].as_mut_ptr(),
                        std::ptr::null_mut::<libc::timespec>(),
                    )
                };
                if r < 0 {
                    let e = std::io::Error::last_os_error();
                    if e.kind() == std::io::ErrorKind::Interrupted {
                        continue;
                    }
                    return Err(e);
                }
                got += r as usize;
            }
            let mut res = vec![0i64; cbs.len()];
            for e in &events[..got] {
                res[e.data as usize] = e.res;
            }
            Ok(res)
        }
    }

    impl Drop for Context {
        fn drop(&mut self) {
            // SAFETY: destroys our own context once; nothing is in flight.
            unsafe { libc::syscall(libc::SYS_io_destroy, self.0) };
        }
    }
}

/// Reads `buf.len()` bytes (a multiple of 4096, `buf` aligned) at `off` (4096-aligned) from
/// `file` (O_DIRECT) as pieces of `piece` bytes, all in flight at once. Returns the bytes
/// read.
fn read_pieces(
    ctx: &aio::Context,
    file: &File,
    buf: &mut [u8],
    off: u64,
    piece: usize,
) -> Result<u64, String> {
    use std::os::fd::AsRawFd;
    let base = buf.as_mut_ptr() as u64;
    let len = buf.len();
    let mut cbs: Vec<aio::Iocb> = (0..len.div_ceil(piece))
        .map(|n| aio::Iocb {
            data: n as u64,
            opcode: aio::PREAD,
            fildes: file.as_raw_fd() as u32,
            buf: base + (n * piece) as u64,
            nbytes: piece.min(len - n * piece) as u64,
            offset: (off + (n * piece) as u64) as i64,
            ..Default::default()
        })
        .collect();
    let res = ctx.run(&mut cbs).map_err(|e| format!("aio: {e}"))?;
    let mut done = 0u64;
    for r in res {
        if r < 0 {
            return Err(format!("aio read: errno {}", -r));
        }
        done += r as u64;
    }
    Ok(done)
}

/// Raw O_DIRECT reads of the blocks holding given extents of a file (the blocks a cold
/// get of a record there reads): one read at queue depth 1, or pieces in flight at once.
pub struct ExtentReader {
    file: File,
    buf: Aligned,
    ctx: aio::Context,
}

impl ExtentReader {
    /// Opens `path` for extents of at most `max_len` bytes, read in at most 4 pieces.
    pub fn open(path: &Path, max_len: usize) -> Result<ExtentReader, String> {
        Ok(ExtentReader {
            file: open(path, true, false)?,
            buf: Aligned::new((max_len + 4096).next_multiple_of(4096)),
            ctx: aio::Context::new(8).map_err(|e| format!("io_setup: {e}"))?,
        })
    }

    /// Reads the blocks holding `[at, at + len)` as `parts` pieces at once (1: one pread).
    /// Returns the time the read took.
    pub fn read(&mut self, at: u64, len: usize, parts: usize) -> Result<Duration, String> {
        let start = at / 4096 * 4096;
        let size = (at + len as u64 - start).next_multiple_of(4096) as usize;
        let buf = &mut self.buf.as_mut_slice()[..size];
        let t0 = Instant::now();
        if parts <= 1 {
            self.file
                .read_exact_at(buf, start)
                .map_err(|e| format!("raw read at {start}: {e}"))?;
        } else {
            let piece = (size / parts).next_multiple_of(4096);
            read_pieces(&self.ctx, &self.file, buf, start, piece)?;
        }
        Ok(t0.elapsed())
    }
}

/// Random O_DIRECT reads of `block` bytes from one thread, each split into `parts`
/// 4 KiB-aligned pieces read at once (Linux AIO): whether more than one read in flight
/// makes a single value arrive sooner than one read at queue depth 1 does.
pub fn split_read(
    path: &Path,
    stride: u64,
    order: &[u64],
    block: usize,
    parts: usize,
    budget: Budget,
    run_start: Instant,
) -> Result<Phase, String> {
    let file = open(path, true, false)?;
    let how = drop_caches(&[path]);
    let block = block.next_multiple_of(4096);
    let piece = (block / parts).next_multiple_of(4096);
    let ctx = aio::Context::new(parts as u32 * 2).map_err(|e| format!("io_setup: {e}"))?;
    let buf = std::sync::Mutex::new(Aligned::new(block));
    let name = format!("raw-read-direct-t1-split{parts}");
    let mut phase = run_phase(&name, 1, budget, run_start, |_, i| {
        let off = order[i as usize % order.len()] * stride;
        let mut guard = buf.lock().map_err(|_| "poisoned")?;
        let t0 = Instant::now();
        let done = read_pieces(&ctx, &file, guard.as_mut_slice(), off, piece)?;
        Ok((done, t0.elapsed()))
    })?;
    phase.notes.push(format!(
        "{block}-byte reads as {parts} pieces of {piece} bytes in flight at once (Linux AIO), \
         cache emptied by {how}"
    ));
    Ok(phase)
}

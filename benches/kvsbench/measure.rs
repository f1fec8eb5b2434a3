//! Timing phases: latency histograms, device I/O counters, throughput over time, and the
//! thread pool that runs a phase's operations with a progress bar.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};

/// Bytes this process caused to be read from and written to the storage layer
/// (/proc/self/io read_bytes and write_bytes; all threads, direct I/O included), and the
/// CPU time it used (user and system, all threads: the store's own threads included).
#[derive(Clone, Copy, Debug, Default)]
pub struct IoCounters {
    pub read: u64,
    pub write: u64,
    pub cpu_ns: u64,
}

/// User plus system CPU time of the whole process, in nanoseconds.
fn process_cpu_ns() -> u64 {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes one rusage into the pointer it is given, which points to
    // zeroed memory of that type; on failure it writes nothing and the zeros are read.
    let ru = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr());
        ru.assume_init()
    };
    let ns = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1000;
    ns(ru.ru_utime) + ns(ru.ru_stime)
}

impl IoCounters {
    pub fn now() -> IoCounters {
        let text = fs::read_to_string("/proc/self/io").unwrap_or_default();
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        };
        IoCounters {
            read: field("read_bytes:"),
            write: field("write_bytes:"),
            cpu_ns: process_cpu_ns(),
        }
    }
    pub fn since(&self, before: &IoCounters) -> IoCounters {
        IoCounters {
            read: self.read.saturating_sub(before.read),
            write: self.write.saturating_sub(before.write),
            cpu_ns: self.cpu_ns.saturating_sub(before.cpu_ns),
        }
    }
}

/// The figures of one phase.
pub struct Phase {
    pub name: String,
    pub threads: usize,
    pub ops: u64,
    pub secs: f64,
    /// Payload bytes moved (values put or read).
    pub bytes: u64,
    /// Latency per operation in nanoseconds.
    pub hist: Histogram<u64>,
    pub io: IoCounters,
    /// (seconds since the run started, MB/s over the last sample interval).
    pub timeline: Vec<(f64, f64)>,
    /// What this phase is compared against, and the ratio.
    pub baseline: Option<(String, f64)>,
    pub notes: Vec<String>,
}

impl Phase {
    /// This phase and `other`, another run of it, as one: counts and times added,
    /// latencies pooled (the notes are this one's).
    pub fn merged(mut self, other: Phase) -> Phase {
        self.ops += other.ops;
        self.secs += other.secs;
        self.bytes += other.bytes;
        // Both histograms come from `new_hist`: same bounds, so adding cannot fail.
        let _ = self.hist.add(&other.hist);
        self.io.read += other.io.read;
        self.io.write += other.io.write;
        self.io.cpu_ns += other.io.cpu_ns;
        self
    }
    pub fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.secs.max(1e-9)
    }
    pub fn mb_per_sec(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.secs.max(1e-9)
    }
    pub fn mib_per_sec(&self) -> f64 {
        self.bytes as f64 / (1 << 20) as f64 / self.secs.max(1e-9)
    }
    /// Latency at quantile `q`, in microseconds.
    pub fn lat_us(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64 / 1000.0
    }
    pub fn max_us(&self) -> f64 {
        self.hist.max() as f64 / 1000.0
    }
    pub fn mean_us(&self) -> f64 {
        self.hist.mean() / 1000.0
    }
    /// CPU time the process used per operation, all threads, in microseconds: unlike
    /// latency, it does not move with the device's noise.
    pub fn cpu_us_per_op(&self) -> f64 {
        self.io.cpu_ns as f64 / 1000.0 / (self.ops.max(1)) as f64
    }
}

pub fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000_000, 3).expect("valid histogram bounds")
}

/// How many operations a phase runs, and for how long at most.
#[derive(Clone, Copy)]
pub struct Budget {
    pub ops: u64,
    pub max: Duration,
}

/// Runs `op(thread, i)` for i in 0..budget.ops across `threads` threads (each i once),
/// until done or the time is up. `op` returns (payload bytes, latency) or an error that
/// aborts the run; a latency of zero means it did nothing (a thread with nothing left to do
/// until the time is up), which is not counted. `run_start` anchors the timeline.
pub fn run_phase<F>(
    name: &str,
    threads: usize,
    budget: Budget,
    run_start: Instant,
    op: F,
) -> Result<Phase, String>
where
    F: Fn(usize, u64) -> Result<(u64, Duration), String> + Sync,
{
    let next = AtomicU64::new(0);
    let done_ops = AtomicU64::new(0);
    let done_bytes = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    // Workers ended and when the last one did: the phase's time. The loop below that
    // reports progress wakes when they are all done, not only every 100 ms: timed up to
    // its next look, every phase was rounded up to a multiple of 100 ms (2 s phases took
    // 2.0043, 2.1097, 2.3050 s).
    let ended = Ended::default();
    let bar = ProgressBar::new(budget.ops);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>16} [{bar:40}] {pos}/{len} {msg} ({eta})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(name.to_string());
    let io0 = IoCounters::now();
    let t0 = Instant::now();
    let mut timeline = Vec::new();
    let results: Vec<Result<Histogram<u64>, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (next, done_ops, done_bytes, stop, op, ended) =
                    (&next, &done_ops, &done_bytes, &stop, &op, &ended);
                s.spawn(move || {
                    let _end = EndOf(ended);
                    let mut hist = new_hist();
                    loop {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= budget.ops {
                            break;
                        }
                        match op(t, i) {
                            Ok((_, lat)) if lat.is_zero() => {}
                            Ok((bytes, lat)) => {
                                hist.saturating_record(lat.as_nanos().max(1) as u64);
                                done_bytes.fetch_add(bytes, Ordering::Relaxed);
                                done_ops.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => {
                                stop.store(true, Ordering::Relaxed);
                                return Err(e);
                            }
                        }
                    }
                    Ok(hist)
                })
            })
            .collect();
        let mut last = (t0, 0u64);
        while !ended.wait_all(threads, Duration::from_millis(100)) {
            let now = Instant::now();
            if t0.elapsed() >= budget.max {
                stop.store(true, Ordering::Relaxed);
            }
            let bytes = done_bytes.load(Ordering::Relaxed);
            if now.duration_since(last.0) >= Duration::from_millis(250) {
                let dt = now.duration_since(last.0).as_secs_f64();
                let mbs = (bytes - last.1) as f64 / 1e6 / dt;
                timeline.push((now.duration_since(run_start).as_secs_f64(), mbs));
                bar.set_message(format!("{mbs:.0} MB/s"));
                last = (now, bytes);
            }
            bar.set_position(done_ops.load(Ordering::Relaxed));
        }
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("worker panicked".into())))
            .collect()
    });
    let secs = ended
        .last()
        .unwrap_or_else(Instant::now)
        .duration_since(t0)
        .as_secs_f64();
    bar.finish_and_clear();
    let mut hist = new_hist();
    for r in results {
        hist.add(r?).map_err(|e| e.to_string())?;
    }
    Ok(Phase {
        name: name.to_string(),
        threads,
        ops: done_ops.load(Ordering::Relaxed),
        secs,
        bytes: done_bytes.load(Ordering::Relaxed),
        hist,
        io: IoCounters::now().since(&io0),
        timeline,
        baseline: None,
        notes: Vec::new(),
    })
}

fn status_kb(field: &str) -> u64 {
    let text = fs::read_to_string("/proc/self/status").unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Peak resident memory of this process (VmHWM), in bytes.
pub fn peak_rss() -> u64 {
    status_kb("VmHWM:")
}

/// Resident memory of this process now (VmRSS), in bytes.
pub fn rss() -> u64 {
    status_kb("VmRSS:")
}

/// Bytes the files under `dir` occupy on the device (what `du` counts).
pub fn disk_usage(dir: &Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if let Ok(m) = e.metadata() {
                total += if m.is_dir() {
                    disk_usage(&e.path())
                } else {
                    m.blocks() * 512
                };
            }
        }
    }
    total
}

/// Empties the page cache for `files`: the whole cache via /proc/sys/vm/drop_caches when
/// root, else posix_fadvise(DONTNEED) on each file. Returns which method worked.
pub fn drop_caches(files: &[&Path]) -> &'static str {
    // SAFETY: sync() takes no arguments and cannot fail.
    unsafe { libc::sync() };
    if fs::write("/proc/sys/vm/drop_caches", "3\n").is_ok() {
        return "drop_caches";
    }
    for f in files {
        if let Ok(file) = fs::File::open(f) {
            use std::os::fd::AsRawFd;
            let _ = nix::fcntl::posix_fadvise(
                file.as_raw_fd(),
                0,
                0,
                nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
            );
        }
    }
    "fadvise(DONTNEED)"
}

/// `drop_caches` for every file of the store in `dir` (disk_file, IMAGE_file, IMAGE_delta,
/// the key summaries, ...): without root only the files named are dropped, and an audit
/// found opens and listings timed over a store whose IMAGE_file or summaries had just
/// been written through the page cache.
pub fn drop_store_caches(dir: &Path) -> &'static str {
    let mut files = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => dirs.push(e.path()),
                Ok(t) if t.is_file() => files.push(e.path()),
                _ => {}
            }
        }
    }
    let refs: Vec<&Path> = files.iter().map(|f| f.as_path()).collect();
    drop_caches(&refs)
}

/// The workers of `run_phase` that have ended, and when the last one did.
#[derive(Default)]
struct Ended {
    state: std::sync::Mutex<(usize, Option<Instant>)>,
    cv: std::sync::Condvar,
}

impl Ended {
    /// Waits up to `step` for `n` workers to have ended; returns whether they have.
    fn wait_all(&self, n: usize, step: Duration) -> bool {
        let Ok(g) = self.state.lock() else {
            return true;
        };
        match self.cv.wait_timeout_while(g, step, |(k, _)| *k < n) {
            Ok((g, _)) => g.0 >= n,
            Err(_) => true,
        }
    }

    fn last(&self) -> Option<Instant> {
        self.state.lock().ok().and_then(|g| g.1)
    }
}

/// Counts a worker of `run_phase` ended when it ends (however it ends), and when.
struct EndOf<'a>(&'a Ended);

impl Drop for EndOf<'_> {
    fn drop(&mut self) {
        let now = Instant::now();
        if let Ok(mut g) = self.0.state.lock() {
            g.0 += 1;
            g.1 = Some(g.1.map_or(now, |t| t.max(now)));
        }
        self.0.cv.notify_all();
    }
}

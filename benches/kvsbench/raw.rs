//! The disk itself, measured in the same run: large sequential pwrites of the fill
//! volume, and random preads of value-sized blocks, each with and without O_DIRECT, on a
//! scratch file next to the store.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::measure::{drop_caches, run_phase, Budget, Phase};
use crate::workload::mix;

/// A heap buffer aligned to 4096 bytes, as O_DIRECT needs.
pub struct Aligned {
    buf: Vec<u8>,
    start: usize,
    len: usize,
}

impl Aligned {
    pub fn new(len: usize) -> Aligned {
        let buf = vec![0u8; len + 4096];
        let start = buf.as_ptr().align_offset(4096);
        Aligned { buf, start, len }
    }
    pub fn as_slice(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len]
    }
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.start + self.len]
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
    let mut buf = Aligned::new(chunk);
    let mut x = 7u64;
    for c in buf.as_mut_slice().chunks_mut(8) {
        x = mix(x);
        c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
    }
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

//! Checkpoints: IMAGE_file rewritten from a snapshot of the index, so that recovery
//! replays only the log after it.
//!
//! One checkpoint: snapshot the index and the log offset C it reflects (under the ring
//! lock, so no put or delete is half-applied), pin C (no record below it becomes Dead),
//! make the log durable up to C, then replace IMAGE_file atomically (`image::write`). The
//! background thread takes one every `checkpoint_bytes` of log or `checkpoint_interval`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::engine::Engine;
use crate::error::Result;
use crate::format::IMAGE_FILE;
use crate::image::{self, ImageMeta};
use crate::index::Index;
use crate::log::fault::Faults;
use crate::worker::Signal;

/// Checkpoint progress.
struct Progress {
    /// Log offset the newest IMAGE_file covers (0 while there is none this open trusts).
    covered: u64,
    /// Checkpoints taken since open.
    count: u64,
    last: Instant,
}

/// Takes checkpoints and writes IMAGE_file (also the one close writes).
pub(crate) struct Checkpointer {
    engine: Arc<Engine>,
    /// Tests: faults for IMAGE_file writes.
    faults: Option<Arc<Faults>>,
    /// One checkpoint at a time (background and `Store::checkpoint`).
    running: Mutex<()>,
    progress: Mutex<Progress>,
}

impl Checkpointer {
    /// `covered`: what the IMAGE_file recovery loaded covers.
    pub fn new(engine: Arc<Engine>, covered: u64, faults: Option<Arc<Faults>>) -> Checkpointer {
        Checkpointer {
            engine,
            faults,
            running: Mutex::new(()),
            progress: Mutex::new(Progress {
                covered,
                count: 0,
                last: Instant::now(),
            }),
        }
    }

    /// Log offset the newest IMAGE_file covers.
    pub fn covered(&self) -> u64 {
        self.progress.lock().covered
    }

    /// Checkpoints taken since open, and the offset the newest covers.
    pub fn figures(&self) -> (u64, u64) {
        let p = self.progress.lock();
        (p.count, p.covered)
    }

    /// One checkpoint (see the module docs). Returns the log offset IMAGE_file covers.
    pub fn checkpoint(&self) -> Result<u64> {
        let _one = self.running.lock();
        let e = &self.engine;
        e.latch().check()?;
        let started = Instant::now();
        let covered = self.covered();
        let Some((snapshot, meta)) = e.pinned_snapshot(covered) else {
            return Ok(covered);
        };
        let snapshot_ms = started.elapsed().as_millis();
        e.ring().flush_to(meta.covered, true)?;
        let bytes = self.write_image(&snapshot, &meta)?;
        let mut p = self.progress.lock();
        p.covered = meta.covered;
        p.count += 1;
        drop(p);
        e.log().info(&format!(
            "checkpoint: IMAGE_file covers disk_file up to {} ({} records, {bytes} bytes) in \
             {} ms ({snapshot_ms} ms holding writers)",
            meta.covered,
            snapshot.len(),
            started.elapsed().as_millis()
        ));
        Ok(meta.covered)
    }

    /// Replaces IMAGE_file with `index` (atomically); a failure latches the store.
    pub fn write_image(&self, index: &Index, meta: &ImageMeta) -> Result<u64> {
        let e = &self.engine;
        e.latch().guard("writing IMAGE_file", || {
            image::write(
                &e.dir().join(IMAGE_FILE),
                index,
                meta,
                e.opts().get_file_mode(),
                self.faults.as_deref(),
            )
        })
    }

    /// The checkpoint thread: checks the triggers every 100 ms until told to stop.
    pub fn run(&self, signal: &Signal) {
        let opts = self.engine.opts();
        let (bytes, interval) = (opts.get_checkpoint_bytes(), opts.get_checkpoint_interval());
        if bytes == 0 && interval.is_zero() {
            return;
        }
        while !signal.wait(Duration::from_millis(100)) {
            let tail = self.engine.ring().lock().tail;
            let (covered, last) = {
                let p = self.progress.lock();
                (p.covered, p.last)
            };
            let grown = tail.saturating_sub(covered);
            let due = (bytes > 0 && grown >= bytes)
                || (!interval.is_zero() && grown > 0 && last.elapsed() >= interval);
            if !due {
                continue;
            }
            let res = self.checkpoint();
            self.progress.lock().last = Instant::now();
            if let Err(e) = res {
                self.engine.log().error(&format!("checkpoint failed: {e}"));
                if self.engine.latch().is_failed() {
                    return;
                }
            }
        }
    }
}

//! The reopen phase: close and open times, and full rebuilds of the index without
//! IMAGE_file: reading every segment, from the key summaries, and past a damaged record.

use std::path::Path;
use std::time::Instant;

use kvs::flags::format_bytes;
use kvs::Store;

use crate::measure::{drop_store_caches, IoCounters};
use crate::{store_options, Bench};

impl Bench {
    pub(crate) fn reopen(&mut self, store: Store, dir: &Path) -> Result<Store, String> {
        let t = Instant::now();
        store.close().map_err(|e| format!("close: {e}"))?;
        let close = t.elapsed();
        // A cold open, as after a reboot: close wrote IMAGE_file through the page cache.
        let how = drop_store_caches(dir);
        let t = Instant::now();
        let store = Store::open(dir, store_options(&self.args, self.dist.max())?)
            .map_err(|e| format!("reopen: {e}"))?;
        let open = t.elapsed();
        let st = store.stats();
        self.summary.push((
            "close time".into(),
            format!("{:.1} ms", close.as_secs_f64() * 1e3),
        ));
        self.summary.push((
            "open time".into(),
            format!(
                "{:.1} ms ({} records, from image: {}; page cache emptied by {how})",
                open.as_secs_f64() * 1e3,
                st.records,
                st.opened_from_image
            ),
        ));
        self.check_sample(&store, 2000)?;
        self.rebuild_past_damage(store, dir)
    }

    /// Full rebuilds from disk_file alone (`Store::rebuild_index`): one of the clean log,
    /// one after damaging the header of the first record of a segment in the middle of the
    /// file, so that recovery resynchronises past it. Returns the store reopened.
    pub(crate) fn rebuild_past_damage(
        &mut self,
        store: Store,
        dir: &Path,
    ) -> Result<Store, String> {
        let st = store.stats();
        let (seg, log) = (st.segment_size, st.log_end);
        store.close().map_err(|e| format!("close: {e}"))?;
        let opts = store_options(&self.args, self.dist.max())?;
        // Every rebuild starts with a cold cache, as after a reboot. The first reads every
        // segment (its key summaries deleted, as in a store written before summaries; it
        // writes them again), the second reads the summaries.
        let summaries = dir.join("summary");
        let _ = std::fs::remove_dir_all(&summaries);
        drop_store_caches(dir);
        let io = IoCounters::now();
        let t = Instant::now();
        let scanned =
            Store::rebuild_index(dir, opts.clone()).map_err(|e| format!("rebuild: {e}"))?;
        let scanned_t = t.elapsed();
        let scanned_io = IoCounters::now().since(&io);
        drop_store_caches(dir);
        let io = IoCounters::now();
        let t = Instant::now();
        let clean = Store::rebuild_index(dir, opts.clone()).map_err(|e| format!("rebuild: {e}"))?;
        let clean_t = t.elapsed();
        let clean_io = IoCounters::now().since(&io);
        if clean.records != scanned.records || clean.summarised_segments == 0 {
            return Err(format!(
                "rebuild from summaries: {} records ({} segments from summaries), a full read \
                 found {}",
                clean.records, clean.summarised_segments, scanned.records
            ));
        }
        let file = st.disk_file_allocated.max(1) as f64;
        self.summary.push((
            "rebuild reading every segment".into(),
            format!(
                "{:.0} ms ({:.2} GB/s of log), {} read ({:.1}% of disk_file), {} records",
                scanned_t.as_secs_f64() * 1e3,
                log as f64 / scanned_t.as_secs_f64() / 1e9,
                format_bytes(scanned_io.read),
                scanned_io.read as f64 * 100.0 / file,
                scanned.records
            ),
        ));
        self.summary.push((
            "rebuild from key summaries".into(),
            format!(
                "{:.0} ms ({:.1}% of the full read's time), {} read ({:.2}% of disk_file), {} \
                 of {} segments from summaries",
                clean_t.as_secs_f64() * 1e3,
                clean_t.as_secs_f64() * 100.0 / scanned_t.as_secs_f64(),
                format_bytes(clean_io.read),
                clean_io.read as f64 * 100.0 / file,
                clean.summarised_segments,
                clean.segments
            ),
        ));
        // The damaged rebuild reads the segments (a summary would stand in for the
        // damaged record's segment, and nothing would be read to find the damage).
        let _ = std::fs::remove_dir_all(&summaries);
        // Slot k's first record starts after the superblock and the segment's header.
        // Damage the middle one of the slots that hold a segment (after reclaiming, some
        // are free: damage there would be no damage to the log).
        {
            use std::os::unix::fs::FileExt;
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(dir.join(kvs::DISK_FILE))
                .map_err(|e| format!("disk_file: {e}"))?;
            let slots = st.disk_file_bytes.saturating_sub(4096) / seg;
            let used: Vec<u64> = (0..slots)
                .filter(|k| {
                    let mut magic = [0u8; 8];
                    f.read_exact_at(&mut magic, 4096 + k * seg).is_ok() && &magic == b"KVSSEG\0\0"
                })
                .collect();
            let slot = *used
                .get(used.len() / 2)
                .ok_or("no slot of disk_file holds a segment")?;
            let at = 4096 + slot * seg + 4096 + 8;
            let mut b = [0u8; 16];
            f.read_exact_at(&mut b, at)
                .map_err(|e| format!("read: {e}"))?;
            for x in &mut b {
                *x ^= 0x5a;
            }
            f.write_all_at(&b, at).map_err(|e| format!("write: {e}"))?;
            f.sync_all().map_err(|e| format!("sync: {e}"))?;
        }
        drop_store_caches(dir);
        let t = Instant::now();
        let damaged =
            Store::rebuild_index(dir, opts.clone()).map_err(|e| format!("rebuild: {e}"))?;
        let damaged_t = t.elapsed();
        self.summary.push((
            "full rebuild past damage".into(),
            format!(
                "{:.0} ms ({:.2}x the clean full read), {} damaged range(s) of {}, {} records \
                 (one lost)",
                damaged_t.as_secs_f64() * 1e3,
                damaged_t.as_secs_f64() / scanned_t.as_secs_f64(),
                damaged.damaged_ranges,
                format_bytes(damaged.damaged_bytes),
                damaged.records
            ),
        ));
        if damaged.damaged_ranges == 0 || damaged.records + 1 < clean.records {
            return Err(format!(
                "rebuild past damage kept {} of {} records ({} damaged ranges)",
                damaged.records, clean.records, damaged.damaged_ranges
            ));
        }
        Store::open(dir, opts).map_err(|e| format!("reopen: {e}"))
    }
}

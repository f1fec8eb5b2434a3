//! The commit phase: durable puts from many writers (`Durability::Always`) against the same
//! writers with `Durability::Batch`, each on a fresh store of its own, in one run.

use std::time::Instant;

use kvs::{Durability, Store};

use crate::measure::{run_phase, IoCounters};
use crate::workload::{key, shuffled};
use crate::{raw, store_options, Bench};

impl Bench {
    pub(crate) fn commit(&mut self) -> Result<(), String> {
        for &writers in &self.args.commit_writers.clone() {
            // The raw disk's best for a group commit of this many writers, then the engine.
            let scratch = self.args.dir.join("raw-commit-scratch");
            let value = self.dist.mean() as usize;
            let budget = self.budget(self.args.records);
            for over in [false, true] {
                let p = raw::commit(&scratch, value, writers, budget, self.start, over)?;
                self.push(p);
            }
            for mode in [Durability::Batch, Durability::Always] {
                self.commit_one(writers, mode)?;
            }
        }
        Ok(())
    }

    fn commit_one(&mut self, writers: usize, mode: Durability) -> Result<(), String> {
        let label = format!("{mode:?}").to_lowercase();
        let dir = self.args.dir.join(format!("commit-{label}"));
        let _ = std::fs::remove_dir_all(&dir);
        let opts = store_options(&self.args, self.dist.max())?.durability(mode);
        let store = Store::open(&dir, opts).map_err(|e| format!("open {}: {e}", dir.display()))?;
        let n = self.args.records;
        let order = shuffled(n, self.args.seed ^ 0xc0 ^ writers as u64);
        let io = IoCounters::now();
        let t0 = Instant::now();
        let name = format!("commit-{label}-t{writers}");
        let res = run_phase(&name, writers, self.budget(n), self.start, |_, i| {
            let k = order[i as usize % order.len()];
            let value = self.value(k, 0);
            let t = Instant::now();
            store.put(&key(k), value).map_err(|e| format!("put: {e}"))?;
            Ok((value.len() as u64, t.elapsed()))
        });
        // Batch's puts are durable only once synced: the sync is part of its time.
        let synced = store.sync().map_err(|e| format!("sync: {e}"));
        let secs = t0.elapsed().as_secs_f64();
        let st = store.stats();
        let du = crate::measure::disk_usage(&dir);
        let closed = store.close().map_err(|e| format!("close: {e}"));
        let _ = std::fs::remove_dir_all(&dir);
        let mut p = res?;
        synced?;
        closed?;
        p.secs = secs;
        p.io = IoCounters::now().since(&io);
        p.notes.push(format!(
            "{writers} writers, fresh store, final sync included; {} fdatasyncs ({:.1} puts \
             each), {:.2} bytes written per byte put, {} bytes of padding, disk_file on disk \
             {:.2}x the live record bytes",
            st.syncs,
            p.ops as f64 / st.syncs.max(1) as f64,
            st.flushed_bytes as f64 / p.bytes.max(1) as f64,
            st.pad_bytes,
            du as f64 / st.live_record_bytes.max(1) as f64
        ));
        if mode == Durability::Always {
            self.compare(&mut p, &format!("commit-batch-t{writers}"));
            for (name, into) in [
                ("raw-commit-g", "new blocks"),
                ("raw-commit-over-g", "blocks written before"),
            ] {
                if let Some(raw) = self.find(&format!("{name}{writers}")) {
                    let share = p.mb_per_sec() / raw.mb_per_sec().max(1e-9);
                    p.notes.push(format!(
                        "{:.0}% of {name}{writers} (the disk's pwrite+fdatasync of {writers} \
                         values at a time into {into})",
                        100.0 * share
                    ));
                }
            }
        }
        self.push(p);
        Ok(())
    }
}

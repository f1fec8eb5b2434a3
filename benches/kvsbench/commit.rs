//! The commit phase: durable puts from many writers (`Durability::Always`) against the same
//! writers with `Durability::Batch`, each on a fresh store of its own, in one run.

use std::time::{Duration, Instant};

use std::path::{Path, PathBuf};

use kvs::{Durability, Stats, Store};

use crate::measure::{run_phase, Budget, IoCounters, Phase};
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
            for mode in [Durability::Batch, Durability::Always] {
                self.commit_turned(writers, mode)?;
            }
        }
        Ok(())
    }

    /// The same writers on a store nearer steady state: half of --records put, overwritten
    /// once (untimed, so that dead bytes and the reclaimer are under way), then --records
    /// overwrites of those keys in random order while the background reclaimer gives
    /// segments back, so that the log's new segments go into slots written before
    /// (recycled) as far as the store keeps them. Only the last overwrites are timed.
    fn commit_turned(&mut self, writers: usize, mode: Durability) -> Result<(), String> {
        let (label, dir, store) = self.fresh_store("commit-turned", mode)?;
        let live = (self.args.records / 2).max(1);
        let fill = Budget {
            ops: live,
            max: Duration::from_secs(3600),
        };
        for (pass, name) in ["fill", "warm"].into_iter().enumerate() {
            run_phase(
                &format!("commit-turned-{label}-{name}"),
                writers,
                fill,
                self.start,
                |_, i| {
                    let value = self.value(i, pass as u32);
                    store.put(&key(i), value).map_err(|e| format!("put: {e}"))?;
                    Ok((value.len() as u64, Duration::ZERO))
                },
            )?;
        }
        store.sync().map_err(|e| format!("sync: {e}"))?;
        let n = self.args.records;
        let order = shuffled(n, self.args.seed ^ 0x7c ^ writers as u64);
        let st0 = store.stats();
        let io = IoCounters::now();
        let t0 = Instant::now();
        let name = format!("commit-turned-{label}-t{writers}");
        let res = run_phase(&name, writers, self.budget(n), self.start, |_, i| {
            let k = order[i as usize % order.len()] % live;
            let value = self.value(k, 2);
            let t = Instant::now();
            store.put(&key(k), value).map_err(|e| format!("put: {e}"))?;
            Ok((value.len() as u64, t.elapsed()))
        });
        let (mut p, st, _) = finish(store, &dir, res, t0, &io)?;
        let opened = (st.log_end - st0.log_end) / st.segment_size.max(1);
        p.notes.push(format!(
            "{writers} writers overwriting {live} keys (after one untimed pass) while the \
             reclaimer runs, final sync included; {} fdatasyncs; the log moved {opened} \
             segments (relocation segments included), {} segments opened in recycled slots; \
             reclaimer moved {} MiB",
            st.syncs - st0.syncs,
            st.segments_reused - st0.segments_reused,
            (st.bytes_moved - st0.bytes_moved) >> 20
        ));
        if mode == Durability::Always {
            self.compare(&mut p, &format!("commit-turned-batch-t{writers}"));
        }
        self.push(p);
        Ok(())
    }

    fn commit_one(&mut self, writers: usize, mode: Durability) -> Result<(), String> {
        let (label, dir, store) = self.fresh_store("commit", mode)?;
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
        let (mut p, st, du) = finish(store, &dir, res, t0, &io)?;
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
            // The raw disk's commit of groups the size the engine formed: what its groups
            // could reach, against what more writers per group would.
            let group = (p.ops as f64 / st.syncs.max(1) as f64).round() as usize;
            if group >= 1 && group != writers {
                // Measured already for another writer count, or now.
                let known = self
                    .find(&format!("raw-commit-g{group}"))
                    .map(|raw| raw.mb_per_sec());
                let raw_rate = match known {
                    Some(rate) => rate,
                    None => {
                        let scratch = self.args.dir.join("raw-commit-scratch");
                        let value = self.dist.mean() as usize;
                        let budget = self.budget(self.args.records);
                        let raw = raw::commit(&scratch, value, group, budget, self.start, false)?;
                        let rate = raw.mb_per_sec();
                        self.push(raw);
                        rate
                    }
                };
                p.notes.push(format!(
                    "{:.0}% of raw-commit-g{group} (the disk's pwrite+fdatasync of {group} \
                     values at a time into new blocks: groups the size this phase's were)",
                    100.0 * p.mb_per_sec() / raw_rate.max(1e-9)
                ));
            }
        }
        self.push(p);
        Ok(())
    }
}

impl Bench {
    /// A new store for a commit phase in `DIR/{name}-{mode}`, anything there before removed;
    /// and the mode's name.
    fn fresh_store(
        &self,
        name: &str,
        mode: Durability,
    ) -> Result<(String, PathBuf, Store), String> {
        let label = format!("{mode:?}").to_lowercase();
        let dir = self.args.dir.join(format!("{name}-{label}"));
        let _ = std::fs::remove_dir_all(&dir);
        let opts = store_options(&self.args, self.dist.max())?.durability(mode);
        let store = Store::open(&dir, opts).map_err(|e| format!("open {}: {e}", dir.display()))?;
        Ok((label, dir, store))
    }
}

/// Ends a timed commit phase begun at `t0`: `Batch`'s puts are durable only once synced,
/// so the final sync is part of its time. Closes and removes the store; returns the
/// phase, the store's last stats and its disk usage before the close.
fn finish(
    store: Store,
    dir: &Path,
    res: Result<Phase, String>,
    t0: Instant,
    io: &IoCounters,
) -> Result<(Phase, Stats, u64), String> {
    let synced = store.sync().map_err(|e| format!("sync: {e}"));
    let secs = t0.elapsed().as_secs_f64();
    let st = store.stats();
    let du = crate::measure::disk_usage(dir);
    let closed = store.close().map_err(|e| format!("close: {e}"));
    let _ = std::fs::remove_dir_all(dir);
    let mut p = res?;
    synced?;
    closed?;
    p.secs = secs;
    p.io = IoCounters::now().since(io);
    Ok((p, st, du))
}

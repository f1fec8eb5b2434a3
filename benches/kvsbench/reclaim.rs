//! The reclaim phase: space and write amplification under overwrites, and the space given
//! back after deleting most records.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kvs::flags::format_bytes;
use kvs::Store;

use crate::measure::{self, run_phase, Budget};
use crate::workload::{key, mix, shuffled, KeyDist, Zipf, DELETED};
use crate::{raw, Bench};

impl Bench {
    /// Space reclamation: `--reclaim-passes` times the live data in overwrites (uniform
    /// or Zipf, `--reclaim-keys`) while a sampler records disk_file's size on disk against the live bytes;
    /// then 90% of the records deleted, and the time until the store's disk usage is at
    /// most the live bytes plus two segments.
    pub(crate) fn reclaim(&mut self, store: &Store, dir: &Path) -> Result<(), String> {
        let threads = self.args.writers;
        let n = self.args.records;
        let per_thread = n.div_ceil(threads as u64);
        // Zipf ranks, and where each rank lands among a writer's keys (a permutation).
        let zipf = match self.args.reclaim_keys {
            KeyDist::Zipf(e) => Some((
                Zipf::new(per_thread, e),
                shuffled(per_thread, self.args.seed ^ 0x21bf),
            )),
            KeyDist::Uniform => None,
        };
        let keys_desc = self.args.reclaim_keys.describe();
        let total = n * self.args.reclaim_passes.max(1);
        let count = AtomicU64::new(0);
        let done = AtomicU64::new(0);
        let stop = std::sync::atomic::AtomicBool::new(false);
        // (seconds, disk_file bytes on disk, live bytes, overwrites done)
        let samples = std::sync::Mutex::new(Vec::<(f64, u64, u64, u64)>::new());
        let st0 = store.stats();
        let t0 = Instant::now();
        let phase = std::thread::scope(|s| {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let st = store.stats();
                    let row = (
                        t0.elapsed().as_secs_f64(),
                        st.disk_file_allocated,
                        st.live_bytes,
                        done.load(Ordering::Relaxed),
                    );
                    samples.lock().expect("sampler").push(row);
                    std::thread::sleep(Duration::from_millis(100));
                }
            });
            let budget = Budget {
                ops: total,
                max: Duration::from_secs(24 * 3600),
            };
            let r = run_phase("reclaim-overwrite", threads, budget, self.start, |t, i| {
                let x = mix(self.args.seed ^ 0x7e7e ^ i);
                let slot = match &zipf {
                    // Ranks scattered over the writer's keys.
                    Some((z, perm)) => perm[z.rank(x) as usize],
                    None => x % per_thread,
                };
                let k = slot * threads as u64 + t as u64;
                let k = if k < n { k } else { t as u64 % n };
                let v = self.versions.get(k).wrapping_add(1) % (DELETED - 1);
                let r = self.put_timed(store, k, v, &count);
                done.fetch_add(1, Ordering::Relaxed);
                r
            });
            let synced = store.sync().map_err(|e| format!("sync: {e}"));
            stop.store(true, Ordering::Relaxed);
            r.and_then(|p| synced.map(|_| p))
        });
        let mut p = phase?;
        p.secs = t0.elapsed().as_secs_f64();
        let st1 = store.stats();
        let samples = samples.into_inner().expect("sampler");
        let after_first: Vec<f64> = samples
            .iter()
            .filter(|s| s.3 >= n && s.2 > 0)
            .map(|s| s.1 as f64 / s.2 as f64)
            .collect();
        let worst = after_first.iter().copied().fold(0.0, f64::max);
        let mean = after_first.iter().sum::<f64>() / after_first.len().max(1) as f64;
        let written = st1.flushed_bytes - st0.flushed_bytes;
        // (write amplification, read amplification, puts' MB/s) for the mixed bound.
        let mut amps = None;
        let wa = written as f64 / p.bytes.max(1) as f64;
        p.notes.push(if after_first.is_empty() {
            format!(
                "{} passes of {keys_desc} overwrites (no samples after the first pass: use \
                 --reclaim-passes 2 or more for the space bound)",
                self.args.reclaim_passes
            )
        } else {
            format!(
                "{} passes of {keys_desc} overwrites; disk_file on disk / live bytes after \
                 the first pass: worst {worst:.2}, mean {mean:.2} ({} samples)",
                self.args.reclaim_passes,
                after_first.len()
            )
        });
        p.notes.push(format!(
            "write amplification {wa:.2} ({} written for {} put); reclaimer moved {} and freed \
             {} segments; {} segments opened in recycled slots (given back with their blocks)",
            format_bytes(written),
            format_bytes(p.bytes),
            format_bytes(st1.bytes_moved - st0.bytes_moved),
            st1.segments_freed - st0.segments_freed,
            st1.segments_reused - st0.segments_reused
        ));
        // The ring's share: records overwritten before the lookout took them are never
        // written, and each flush that writes the whole ring ends that window early.
        let died = st1.died_in_ring_bytes - st0.died_in_ring_bytes;
        let line = format!(
            "{} of the bytes put ({:.1}%) died in the ring, never written; the lookout's \
             flushes: {} asked for (sync, checkpoints, grants, readers, room), {} at the flush \
             horizon, {} at the flush interval",
            format_bytes(died),
            100.0 * died as f64 / p.bytes.max(1) as f64,
            st1.flushes_asked - st0.flushes_asked,
            st1.flushes_horizon - st0.flushes_horizon,
            st1.flushes_interval - st0.flushes_interval
        );
        p.notes.push(line.clone());
        self.summary.push(("reclaim: the ring".into(), line));
        if let Some(fill) = self.find("fill") {
            p.notes.push(format!(
                "put throughput {:.0}% of fill's; put p99 {:.0} us vs fill's {:.0} us ({:.2}x)",
                100.0 * p.mb_per_sec() / fill.mb_per_sec().max(1e-9),
                p.lat_us(0.99),
                fill.lat_us(0.99),
                p.lat_us(0.99) / fill.lat_us(0.99).max(1e-9)
            ));
            // What the device allows puts: each put byte costs `wa` bytes written and `ra`
            // read. Against fill's rate in this run (kvs's own writes: its shortfall from
            // the raw disk is in it, so this is not a raw bound; an audit found it was
            // called the device's), and against the raw disk's sequential O_DIRECT writes
            // when the baseline ran. `raw-mixed` below is the bound on the mix itself.
            let ra = p.io.read as f64 / p.bytes.max(1) as f64;
            amps = Some((wa, ra, p.mb_per_sec()));
            let bound = fill.mb_per_sec() / (wa + ra).max(1e-9);
            let mut line = format!(
                "{:.0} MB/s of puts against a fill bound of {bound:.0} MB/s (kvs's fill, {:.0} \
                 MB/s, / (write amplification {wa:.2} + read amplification {ra:.2})): {:.0}%",
                p.mb_per_sec(),
                fill.mb_per_sec(),
                100.0 * p.mb_per_sec() / bound.max(1e-9)
            );
            if let Some(raw) = self.find("raw-write-direct") {
                let raw_bound = raw.mb_per_sec() / (wa + ra).max(1e-9);
                line.push_str(&format!(
                    "; against the raw disk's writes (raw-write-direct {:.0} MB/s / {:.2}): \
                     {raw_bound:.0} MB/s, {:.0}%",
                    raw.mb_per_sec(),
                    wa + ra,
                    100.0 * p.mb_per_sec() / raw_bound.max(1e-9)
                ));
            }
            p.notes.push(line.clone());
            self.summary
                .push(("reclaim: puts against the device".into(), line));
        }
        // Smoothness after the first pass: puts per 1 s window against their mean, and the
        // puts that waited over 100 ms.
        let windows = one_second_rates(&samples, n);
        let wmean = windows.iter().sum::<f64>() / windows.len().max(1) as f64;
        let wmin = windows.iter().copied().fold(f64::INFINITY, f64::min);
        let wmax = windows.iter().copied().fold(0.0, f64::max);
        let slow = p.hist.len() - p.hist.count_between(0, 100_000_000);
        let smooth = if windows.is_empty() {
            "no whole 1 s window after the first pass".to_string()
        } else {
            format!(
                "puts per 1 s window after the first pass: min {:.0}%, max {:.0}% of their mean \
                 {wmean:.0} ({} windows); {slow} puts waited over 100 ms, the longest {:.0} ms",
                100.0 * wmin / wmean.max(1e-9),
                100.0 * wmax / wmean.max(1e-9),
                windows.len(),
                p.max_us() / 1e3
            )
        };
        p.notes.push(smooth.clone());
        self.summary.push(("reclaim: smoothness".into(), smooth));
        self.summary.push((
            "reclaim: disk_file on disk / live (worst, mean)".into(),
            format!("{worst:.2}, {mean:.2}"),
        ));
        self.summary
            .push(("reclaim: write amplification".into(), format!("{wa:.2}")));
        let base = if st1.direct_io {
            "raw-write-direct"
        } else {
            "raw-write-cached"
        };
        self.compare(&mut p, base);
        self.push(p);

        // Delete 90% of the records, then wait for the space.
        let victims = shuffled(n, self.args.seed ^ 0x9090);
        let count = n * 9 / 10;
        let budget = Budget {
            ops: count,
            max: Duration::from_secs(24 * 3600),
        };
        let du0 = measure::disk_usage(dir);
        let t1 = Instant::now();
        let mut p = run_phase("reclaim-delete", threads, budget, self.start, |_, i| {
            let k = victims[i as usize];
            let t = Instant::now();
            let existed = store.delete(&key(k)).map_err(|e| format!("delete: {e}"))?;
            let lat = t.elapsed();
            if existed != (self.versions.get(k) != DELETED) {
                return Err(format!("delete of key {k} said {existed}"));
            }
            self.versions.set(k, DELETED);
            Ok((0, lat))
        })?;
        store.sync().map_err(|e| format!("sync: {e}"))?;
        let seg = store.stats().segment_size;
        let (du, live, log_du, waited) = loop {
            let st = store.stats();
            let du = measure::disk_usage(dir);
            let waited = t1.elapsed().as_secs_f64();
            if du <= st.live_bytes + 2 * seg || waited >= self.args.reclaim_wait {
                break (du, st.live_bytes, st.disk_file_allocated, waited);
            }
            std::thread::sleep(Duration::from_millis(250));
        };
        let met = du <= live + 2 * seg;
        // With small records IMAGE_file and the key summaries weigh too: say what disk_file
        // alone holds.
        p.notes.push(format!(
            "deleted 90%: store du {} -> {} in {waited:.1} s (disk_file {}); live {} + 2 \
             segments = {} ({})",
            format_bytes(du0),
            format_bytes(du),
            format_bytes(log_du),
            format_bytes(live),
            format_bytes(live + 2 * seg),
            if met { "reached" } else { "NOT reached" }
        ));
        self.summary.push((
            "reclaim: du after deleting 90%".into(),
            format!(
                "{} in {waited:.1} s (live + 2 segments: {}; {})",
                format_bytes(du),
                format_bytes(live + 2 * seg),
                if met { "reached" } else { "NOT reached" }
            ),
        ));
        self.push(p);
        if let Some((wa, ra, puts)) = amps {
            self.mixed_bound(wa, ra, puts)?;
        }
        self.check_sample(store, 2000)
    }

    /// The device's bound for puts measured on the mix they need: the raw disk reading `ra`
    /// bytes per `wa` bytes written (`raw-mixed`, 4 s, run once the store is idle after
    /// the deletes) gives R bytes per second of both, so puts can have R / (wa + ra).
    /// Fill's rate, the other bound, is writes alone; reads beside writes cost more.
    fn mixed_bound(&mut self, wa: f64, ra: f64, puts: f64) -> Result<(), String> {
        let scratch = self.args.dir.join("raw-mixed-scratch");
        let p = raw::mixed(&scratch, ra / wa.max(1e-9), 4.0, self.start)?;
        let bound = p.mb_per_sec() / (wa + ra).max(1e-9);
        let line = format!(
            "{puts:.0} MB/s of puts against a mixed device bound of {bound:.0} MB/s (raw-mixed's \
             {:.0} MB/s of reads and writes / (write amplification {wa:.2} + read \
             amplification {ra:.2})): {:.0}%",
            p.mb_per_sec(),
            100.0 * puts / bound.max(1e-9)
        );
        self.push(p);
        self.summary
            .push(("reclaim: puts against the mixed device".into(), line));
        Ok(())
    }
}

/// Puts per second in consecutive whole 1 s windows of the sampler's rows (seconds, _, _,
/// overwrites done), counting only windows that start after the first `n` overwrites.
fn one_second_rates(samples: &[(f64, u64, u64, u64)], n: u64) -> Vec<f64> {
    let mut out = Vec::new();
    let Some(first) = samples.iter().position(|s| s.3 >= n) else {
        return out;
    };
    let mut start = samples[first];
    for s in &samples[first..] {
        if s.0 - start.0 >= 1.0 {
            out.push((s.3 - start.3) as f64 / (s.0 - start.0));
            start = *s;
        }
    }
    // The last window may hold the end of the run (the final sync): leave it out.
    out.pop();
    out
}

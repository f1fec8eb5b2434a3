//! kvsbench: the kvs benchmark harness.
//!
//! Measures the raw disk (sequential pwrite, random pread, with and without O_DIRECT) and
//! then the engine with the same access pattern in the same run, and reports every engine
//! figure also as a ratio of that baseline. Run `cargo bench --bench kvsbench -- --help`.

mod measure;
mod raw;
mod report;
mod workload;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{ArgAction, Parser, ValueEnum};
use kvs::{Options, Store};

use measure::{drop_caches, peak_rss, rss, run_phase, Budget, Phase};
use workload::{key, mix, parse_size, shuffled, SizeDist, ValuePool, Versions, DELETED};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum DurabilityArg {
    None,
    Batch,
    Always,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum KeyOrder {
    Seq,
    Random,
}

const ALL_PHASES: &str =
    "baseline,fill,read-cold,read-hot,mixed,overwrite,reclaim,delete,reopen,index-scale";

/// The kvs benchmark harness: the engine against the raw disk, in one run.
#[derive(Parser, Debug)]
#[command(name = "kvsbench", version, about, long_about = None)]
struct Args {
    /// Directory for the store and the scratch files (created; our files removed at the end).
    #[arg(long, default_value = "target/kvsbench/data")]
    dir: PathBuf,
    /// Records in the main store.
    #[arg(long, default_value_t = 40_000)]
    records: u64,
    /// Value size: fixed (100KiB), uniform (1KiB..5MiB), or lognormal:MEAN:CAP.
    #[arg(long, default_value = "100KiB")]
    value_size: String,
    /// Key order of the fill phase.
    #[arg(long, value_enum, default_value = "random")]
    key_order: KeyOrder,
    /// Writer threads (fill, overwrite, delete).
    #[arg(long, default_value_t = 1)]
    writers: usize,
    /// Reader thread counts; read-cold runs once per count, read-hot and mixed use the largest.
    #[arg(long, value_delimiter = ',', default_value = "1,16")]
    readers: Vec<usize>,
    /// Durability mode of the store: none, batch (the engine's default) or always.
    #[arg(long, value_enum, default_value = "batch")]
    durability: DurabilityArg,
    /// Also call sync after every N puts (0: only at the end of each write phase).
    #[arg(long, default_value_t = 0)]
    sync_every: u64,
    /// Ring write buffer size.
    #[arg(long, default_value = "256MiB")]
    buffer_size: String,
    /// Flush horizon (default: the engine's).
    #[arg(long)]
    flush_horizon: Option<String>,
    /// Flush interval in milliseconds.
    #[arg(long, default_value_t = 20)]
    flush_interval_ms: u64,
    /// Write disk_file with O_DIRECT.
    #[arg(long, default_value_t = true, action = ArgAction::Set)]
    direct_io: bool,
    /// Read disk_file with O_DIRECT (default: the engine's default).
    #[arg(long, action = ArgAction::Set)]
    direct_reads: Option<bool>,
    /// Phases to run, in this order.
    #[arg(long, value_delimiter = ',', default_value = ALL_PHASES)]
    phases: Vec<String>,
    /// Operations per read, mixed, overwrite phase (default: --records).
    #[arg(long)]
    ops: Option<u64>,
    /// Time limit per phase, in seconds.
    #[arg(long, default_value_t = 20.0)]
    seconds: f64,
    /// Fraction of gets in the mixed phase.
    #[arg(long, default_value_t = 0.9)]
    read_ratio: f64,
    /// Fraction of records the delete phase removes.
    #[arg(long, default_value_t = 0.5)]
    delete_fraction: f64,
    /// Log segment size of the store (the unit of space reclamation).
    #[arg(long, default_value = "256MiB")]
    segment_size: String,
    /// Background reclaimer: dead share that starts it (the engine's default: 0.2).
    #[arg(long)]
    reclaim_threshold: Option<f64>,
    /// Background reclaimer: bytes per second it may rewrite below the urgent share
    /// (0: no limit; the engine's default: 256MiB).
    #[arg(long)]
    reclaim_rate: Option<String>,
    /// The reclaim phase: overwrites, in multiples of the live data set.
    #[arg(long, default_value_t = 3)]
    reclaim_passes: u64,
    /// The reclaim phase: seconds to wait after deleting 90% for disk usage to reach the
    /// live bytes plus two segments.
    #[arg(long, default_value_t = 60.0)]
    reclaim_wait: f64,
    /// Records of the index-scale phase (8-byte values).
    #[arg(long, default_value_t = 10_000_000)]
    index_records: u64,
    /// In timed read phases, compare every Nth get's bytes with what was put (1: every
    /// get). The comparison runs outside the latency measurement but inside the phase's
    /// wall time, which the raw reads do not pay. Every get checks existence and length.
    #[arg(long, default_value_t = 8)]
    verify_every: u64,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where the JSON report and the SVG plot go.
    #[arg(long, default_value = "target/kvsbench")]
    report_dir: PathBuf,
    /// Keep the store and scratch files.
    #[arg(long)]
    keep: bool,
}

/// Everything the phases share.
struct Bench {
    args: Args,
    dist: SizeDist,
    pool: ValuePool,
    versions: Versions,
    start: Instant,
    phases: Vec<Phase>,
    summary: Vec<(String, String)>,
}

fn main() {
    // `cargo bench` passes --bench; ignore it.
    let argv: Vec<String> = std::env::args().filter(|a| a != "--bench").collect();
    let args = Args::parse_from(argv);
    if let Err(e) = run(args) {
        eprintln!("kvsbench: {e}");
        std::process::exit(1);
    }
}

fn store_options(a: &Args, max_value: usize) -> Result<Options, String> {
    let mut o = Options::default()
        .buffer_size(parse_size(&a.buffer_size)? as usize)
        .flush_interval(Duration::from_millis(a.flush_interval_ms))
        .expected_records(a.records.max(1))
        .max_value_size(max_value.max(1))
        .direct_io(a.direct_io)
        .segment_size(parse_size(&a.segment_size)?)
        .durability(match a.durability {
            DurabilityArg::None => kvs::Durability::None,
            DurabilityArg::Batch => kvs::Durability::Batch,
            DurabilityArg::Always => kvs::Durability::Always,
        });
    if let Some(d) = a.direct_reads {
        o = o.direct_reads(d);
    }
    if let Some(h) = &a.flush_horizon {
        o = o.flush_horizon(parse_size(h)? as usize);
    }
    if let Some(t) = a.reclaim_threshold {
        let urgent = o.get_reclaim_urgent().max(t);
        o = o.reclaim_threshold(t).reclaim_urgent(urgent);
    }
    if let Some(r) = &a.reclaim_rate {
        o = o.reclaim_rate(parse_size(r)?);
    }
    Ok(o)
}

fn run(args: Args) -> Result<(), String> {
    for p in &args.phases {
        if !ALL_PHASES.split(',').any(|k| k == p) {
            return Err(format!("unknown phase '{p}' (phases: {ALL_PHASES})"));
        }
    }
    if args.readers.is_empty() || args.readers.contains(&0) || args.writers == 0 {
        return Err("--readers and --writers need counts of at least 1".into());
    }
    let dist = SizeDist::parse(&args.value_size)?;
    if dist.max() > kvs::DEFAULT_MAX_VALUE_SIZE {
        return Err(format!(
            "values are at most {} bytes",
            kvs::DEFAULT_MAX_VALUE_SIZE
        ));
    }
    store_options(&args, dist.max())?;
    std::fs::create_dir_all(&args.dir).map_err(|e| format!("{}: {e}", args.dir.display()))?;
    check_free_space(&args, &dist)?;
    let pool = ValuePool::new(dist.max(), args.seed);
    let versions = Versions::new(args.records);
    let mut b = Bench {
        dist,
        pool,
        versions,
        start: Instant::now(),
        phases: Vec::new(),
        summary: Vec::new(),
        args,
    };
    let machine = report::machine_description(&b.args.dir);
    println!("kvsbench: {machine}");
    let phases = b.args.phases.clone();
    let want = |p: &str| phases.iter().any(|x| x == p);
    if want("baseline") {
        b.baseline()?;
    }
    let store_dir = b.args.dir.join("store");
    let engine_phases = [
        "fill",
        "read-cold",
        "read-hot",
        "mixed",
        "overwrite",
        "reclaim",
        "delete",
        "reopen",
    ];
    if engine_phases.iter().any(|p| want(p)) {
        let _ = std::fs::remove_dir_all(&store_dir);
        let mut store = Store::open(&store_dir, store_options(&b.args, b.dist.max())?)
            .map_err(|e| format!("open {}: {e}", store_dir.display()))?;
        b.fill(&store)?;
        if want("read-cold") {
            for t in b.args.readers.clone() {
                b.reads(&store, &store_dir, t, true)?;
            }
        }
        if want("read-hot") {
            let t = *b.args.readers.iter().max().expect("non-empty");
            b.reads(&store, &store_dir, t, false)?;
        }
        if want("mixed") {
            b.mixed(&store)?;
        }
        if want("overwrite") {
            b.overwrite(&store)?;
        }
        if want("reclaim") {
            b.reclaim(&store, &store_dir)?;
        }
        if want("delete") {
            b.delete(&store)?;
        }
        let st = store.stats();
        let du = measure::disk_usage(&store_dir);
        b.summary
            .push(("store disk usage (du) at the end".into(), report::bytes(du)));
        b.summary.push((
            "store live record bytes".into(),
            report::bytes(st.live_record_bytes),
        ));
        b.summary.push((
            "disk usage / live bytes".into(),
            format!("{:.2}", du as f64 / st.live_record_bytes.max(1) as f64),
        ));
        b.summary
            .push(("O_DIRECT writes".into(), st.direct_io.to_string()));
        if want("reopen") {
            store = b.reopen(store, &store_dir)?;
        }
        store.close().map_err(|e| format!("close: {e}"))?;
        if !b.args.keep {
            let _ = std::fs::remove_dir_all(&store_dir);
        }
    }
    if want("index-scale") {
        b.index_scale()?;
    }
    b.summary
        .push(("peak RSS".into(), report::bytes(peak_rss())));
    report::finish(
        &b.args.report_dir,
        &machine,
        &b.phases,
        &b.summary,
        &format!("{:?}", b.args),
    )
}

fn check_free_space(a: &Args, dist: &SizeDist) -> Result<(), String> {
    let data = a.records as f64 * (dist.mean() + 64.0);
    let want = |p: &str| a.phases.iter().any(|x| x == p);
    let mut need = data
        * if want("overwrite") || want("mixed") || want("reclaim") {
            2.2
        } else {
            1.1
        };
    if want("baseline") {
        need += data;
    }
    if want("index-scale") {
        need += a.index_records as f64 * 120.0;
    }
    let vfs = nix::sys::statvfs::statvfs(&a.dir).map_err(|e| format!("statvfs: {e}"))?;
    let free = vfs.blocks_available() as f64 * vfs.fragment_size() as f64;
    if free < need * 1.05 {
        return Err(format!(
            "not enough free space in {}: this run needs about {}, {} are free. Use fewer \
             --records, a smaller --value-size, or another --dir. Nothing was written.",
            a.dir.display(),
            report::bytes(need as u64),
            report::bytes(free as u64)
        ));
    }
    Ok(())
}

impl Bench {
    fn budget(&self, default_ops: u64) -> Budget {
        Budget {
            ops: self.args.ops.unwrap_or(default_ops),
            max: Duration::from_secs_f64(self.args.seconds),
        }
    }

    fn find(&self, name: &str) -> Option<&Phase> {
        self.phases.iter().find(|p| p.name == name)
    }

    fn compare(&self, phase: &mut Phase, base: &str) {
        if let Some(raw) = self.find(base) {
            phase.baseline = Some((
                base.to_string(),
                phase.mb_per_sec() / raw.mb_per_sec().max(1e-9),
            ));
        }
    }

    fn push(&mut self, p: Phase) {
        println!("{}", report::one_line(&p));
        self.phases.push(p);
    }

    fn baseline(&mut self) -> Result<(), String> {
        let scratch = self.args.dir.join("raw-scratch");
        // One 4 KiB-aligned slot per record, each large enough for a mean-sized record.
        let block = self.dist.mean() as usize + 48;
        let stride = (block as u64).next_multiple_of(4096);
        let slots = self.args.records.max(1);
        let volume = (slots * stride).max(64 << 20);
        let chunk = 8 << 20;
        for direct in [false, true] {
            let p = raw::seq_write(&scratch, volume, chunk, direct, self.start)?;
            self.push(p);
        }
        for &t in &self.args.readers.clone() {
            for direct in [false, true] {
                let order = shuffled(slots, self.args.seed ^ 0xbead ^ t as u64 ^ direct as u64);
                let budget = self.budget(self.args.records);
                let p = raw::rand_read(
                    &scratch, stride, &order, block, t, direct, budget, self.start,
                )?;
                self.push(p);
            }
        }
        let _ = std::fs::remove_file(&scratch);
        Ok(())
    }

    /// The value for key `k` at version `v`.
    fn value(&self, k: u64, v: u32) -> &[u8] {
        self.pool.value(k, v, self.dist.size(self.args.seed, k, v))
    }

    fn put_timed(
        &self,
        store: &Store,
        k: u64,
        v: u32,
        n: &AtomicU64,
    ) -> Result<(u64, Duration), String> {
        let value = self.value(k, v);
        let t = Instant::now();
        store.put(&key(k), value).map_err(|e| format!("put: {e}"))?;
        if self.args.sync_every > 0
            && n.fetch_add(1, Ordering::Relaxed) % self.args.sync_every == self.args.sync_every - 1
        {
            store.sync().map_err(|e| format!("sync: {e}"))?;
        }
        let lat = t.elapsed();
        self.versions.set(k, v);
        Ok((value.len() as u64, lat))
    }

    /// Gets key `k` and checks the bytes against the version the harness last put.
    /// Gets key `k`; checks the bytes against the version the harness last put on every
    /// `--verify-every`th call of a timed read phase (`i`), and always when `i` is None.
    fn get_checked(
        &self,
        store: &Store,
        k: u64,
        buf: &mut [u8],
        i: Option<u64>,
    ) -> Result<(u64, Duration), String> {
        let before = self.versions.get(k);
        let t = Instant::now();
        let got = store
            .get_into(&key(k), buf)
            .map_err(|e| format!("get {k}: {e}"))?;
        let lat = t.elapsed();
        let after = self.versions.get(k);
        let check = match i {
            Some(i) => i % self.args.verify_every.max(1) == 0,
            None => true,
        };
        let ok = |v: u32| match got {
            None => v == DELETED,
            Some(n) => {
                v != DELETED
                    && n == self.dist.size(self.args.seed, k, v)
                    && (!check || &buf[..n] == self.value(k, v))
            }
        };
        if !ok(before) && !ok(after) {
            return Err(format!(
                "get of key {k} returned the wrong bytes (versions {before}/{after})"
            ));
        }
        Ok((got.unwrap_or(0) as u64, lat))
    }

    fn fill(&mut self, store: &Store) -> Result<(), String> {
        let n = self.args.records;
        let order = match self.args.key_order {
            KeyOrder::Seq => (0..n).collect(),
            KeyOrder::Random => shuffled(n, self.args.seed),
        };
        let count = AtomicU64::new(0);
        let t0 = Instant::now();
        let budget = Budget {
            ops: n,
            max: Duration::from_secs(24 * 3600),
        };
        let mut p = run_phase("fill", self.args.writers, budget, self.start, |_, i| {
            self.put_timed(store, order[i as usize], 0, &count)
        })?;
        store.sync().map_err(|e| format!("sync: {e}"))?;
        p.secs = t0.elapsed().as_secs_f64();
        p.notes.push(format!(
            "{:?} key order, final sync included",
            self.args.key_order
        ));
        let st = store.stats();
        self.summary.push((
            "index after fill".into(),
            format!(
                "{} for {} records ({:.1} bytes/record)",
                report::bytes(st.index_bytes),
                st.records,
                st.index_bytes as f64 / st.records.max(1) as f64
            ),
        ));
        let base = if store.stats().direct_io {
            "raw-write-direct"
        } else {
            "raw-write-cached"
        };
        self.compare(&mut p, base);
        if let Some(best) = self.find("raw-write-direct").map(|r| r.mb_per_sec()) {
            p.notes.push(format!(
                "{:.0}% of raw O_DIRECT writes",
                100.0 * p.mb_per_sec() / best
            ));
        }
        self.push(p);
        Ok(())
    }

    fn live_key(&self, r: u64) -> u64 {
        let n = self.args.records;
        // Prefer live keys, but a fully deleted range still terminates.
        for j in 0..64 {
            let k = mix(r.wrapping_add(j)) % n;
            if self.versions.get(k) != DELETED {
                return k;
            }
        }
        mix(r) % n
    }

    fn reads(
        &mut self,
        store: &Store,
        dir: &Path,
        threads: usize,
        cold: bool,
    ) -> Result<(), String> {
        let disk = dir.join(kvs::DISK_FILE);
        let how = if cold {
            drop_caches(&[&disk])
        } else {
            warm(&disk);
            "warmed by a sequential read"
        };
        let name = format!("read-{}-t{threads}", if cold { "cold" } else { "hot" });
        let bufs: Vec<std::sync::Mutex<Vec<u8>>> = (0..threads)
            .map(|_| std::sync::Mutex::new(vec![0u8; self.dist.max()]))
            .collect();
        let seed = self.args.seed ^ threads as u64 ^ if cold { 0xc01d } else { 0x407 };
        // Cold reads visit keys in a random order, each once (until --ops exceeds the
        // records), as the raw baseline visits its slots: no get is helped by a repeat.
        let order = shuffled(self.args.records, seed);
        let before = store.stats();
        let mut p = run_phase(
            &name,
            threads,
            self.budget(self.args.records),
            self.start,
            |t, i| {
                let k = if cold {
                    order[i as usize % order.len()]
                } else {
                    self.live_key(mix(seed ^ i))
                };
                let mut buf = bufs[t].lock().map_err(|_| "poisoned")?;
                self.get_checked(store, k, &mut buf, Some(i))
            },
        )?;
        let after = store.stats();
        let ring = after.gets_from_buffer - before.gets_from_buffer;
        let disk_gets = after.gets_from_disk - before.gets_from_disk;
        p.notes.push(format!(
            "page cache: {how}; {:.1}% of gets served from the ring",
            100.0 * ring as f64 / (ring + disk_gets).max(1) as f64
        ));
        if cold {
            // Compared with the raw reads done the way the engine reads.
            let (same, other) = if store.stats().direct_reads {
                ("direct", "cached")
            } else {
                ("cached", "direct")
            };
            self.compare(&mut p, &format!("raw-read-{same}-t{threads}"));
            let other = format!("raw-read-{other}-t{threads}");
            if let Some(d) = self.find(&other).map(|r| r.mb_per_sec()) {
                p.notes
                    .push(format!("{:.0}% of {other}", 100.0 * p.mb_per_sec() / d));
            }
        }
        self.push(p);
        Ok(())
    }

    fn mixed(&mut self, store: &Store) -> Result<(), String> {
        let threads = *self.args.readers.iter().max().expect("non-empty");
        let bufs: Vec<std::sync::Mutex<Vec<u8>>> = (0..threads)
            .map(|_| std::sync::Mutex::new(vec![0u8; self.dist.max()]))
            .collect();
        let count = AtomicU64::new(0);
        let n = self.args.records;
        let ratio = self.args.read_ratio;
        let mut p = run_phase("mixed", threads, self.budget(n), self.start, |t, i| {
            let r = mix(self.args.seed ^ 0x3131 ^ i);
            if (r % 10_000) as f64 / 10_000.0 < ratio {
                let mut buf = bufs[t].lock().map_err(|_| "poisoned")?;
                self.get_checked(store, self.live_key(r), &mut buf, Some(i))
            } else {
                // Each thread writes only its own keys, so versions stay exact.
                let k = (mix(r) % n.div_ceil(threads as u64)) * threads as u64 + t as u64;
                let k = if k < n { k } else { t as u64 % n };
                let v = self.versions.get(k).wrapping_add(1) % (DELETED - 1);
                self.put_timed(store, k, v, &count)
            }
        })?;
        p.notes
            .push(format!("{:.0}% gets, the rest overwrites", ratio * 100.0));
        self.push(p);
        Ok(())
    }

    fn overwrite(&mut self, store: &Store) -> Result<(), String> {
        let threads = self.args.writers;
        let n = self.args.records;
        let count = AtomicU64::new(0);
        let t0 = Instant::now();
        let mut p = run_phase("overwrite", threads, self.budget(n), self.start, |t, i| {
            let k = (mix(self.args.seed ^ 0x0e0e ^ i) % n.div_ceil(threads as u64))
                * threads as u64
                + t as u64;
            let k = if k < n { k } else { t as u64 % n };
            let v = self.versions.get(k).wrapping_add(1) % (DELETED - 1);
            self.put_timed(store, k, v, &count)
        })?;
        store.sync().map_err(|e| format!("sync: {e}"))?;
        p.secs = t0.elapsed().as_secs_f64();
        p.notes
            .push("uniform random keys, final sync included".into());
        let base = if store.stats().direct_io {
            "raw-write-direct"
        } else {
            "raw-write-cached"
        };
        self.compare(&mut p, base);
        self.push(p);
        Ok(())
    }

    /// Space reclamation: `--reclaim-passes` times the live data in uniform random
    /// overwrites while a sampler records disk_file's size on disk against the live bytes;
    /// then 90% of the records deleted, and the time until the store's disk usage is at
    /// most the live bytes plus two segments.
    fn reclaim(&mut self, store: &Store, dir: &Path) -> Result<(), String> {
        let threads = self.args.writers;
        let n = self.args.records;
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
                let k = (mix(self.args.seed ^ 0x7e7e ^ i) % n.div_ceil(threads as u64))
                    * threads as u64
                    + t as u64;
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
        let wa = written as f64 / p.bytes.max(1) as f64;
        p.notes.push(if after_first.is_empty() {
            format!(
                "{} passes of uniform random overwrites (no samples after the first pass: use \
                 --reclaim-passes 2 or more for the space bound)",
                self.args.reclaim_passes
            )
        } else {
            format!(
                "{} passes of uniform random overwrites; disk_file on disk / live bytes after \
                 the first pass: worst {worst:.2}, mean {mean:.2} ({} samples)",
                self.args.reclaim_passes,
                after_first.len()
            )
        });
        p.notes.push(format!(
            "write amplification {wa:.2} ({} written for {} put); reclaimer moved {} and freed \
             {} segments",
            report::bytes(written),
            report::bytes(p.bytes),
            report::bytes(st1.bytes_moved - st0.bytes_moved),
            st1.segments_freed - st0.segments_freed
        ));
        if let Some(fill) = self.find("fill") {
            p.notes.push(format!(
                "put throughput {:.0}% of fill's; put p99 {:.0} us vs fill's {:.0} us ({:.2}x)",
                100.0 * p.mb_per_sec() / fill.mb_per_sec().max(1e-9),
                p.lat_us(0.99),
                fill.lat_us(0.99),
                p.lat_us(0.99) / fill.lat_us(0.99).max(1e-9)
            ));
        }
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
        let (du, live, waited) = loop {
            let st = store.stats();
            let du = measure::disk_usage(dir);
            let waited = t1.elapsed().as_secs_f64();
            if du <= st.live_bytes + 2 * seg || waited >= self.args.reclaim_wait {
                break (du, st.live_bytes, waited);
            }
            std::thread::sleep(Duration::from_millis(250));
        };
        let met = du <= live + 2 * seg;
        p.notes.push(format!(
            "deleted 90%: store du {} -> {} in {waited:.1} s; live {} + 2 segments = {} ({})",
            report::bytes(du0),
            report::bytes(du),
            report::bytes(live),
            report::bytes(live + 2 * seg),
            if met { "reached" } else { "NOT reached" }
        ));
        self.summary.push((
            "reclaim: du after deleting 90%".into(),
            format!(
                "{} in {waited:.1} s (live + 2 segments: {}; {})",
                report::bytes(du),
                report::bytes(live + 2 * seg),
                if met { "reached" } else { "NOT reached" }
            ),
        ));
        self.push(p);
        self.check_sample(store, 2000)
    }

    fn delete(&mut self, store: &Store) -> Result<(), String> {
        let n = self.args.records;
        let victims = shuffled(n, self.args.seed ^ 0xde1);
        let count = (n as f64 * self.args.delete_fraction) as u64;
        let budget = Budget {
            ops: count,
            max: Duration::from_secs_f64(self.args.seconds),
        };
        let p = run_phase("delete", self.args.writers, budget, self.start, |_, i| {
            let k = victims[i as usize];
            let live = self.versions.get(k) != DELETED;
            let t = Instant::now();
            let existed = store.delete(&key(k)).map_err(|e| format!("delete: {e}"))?;
            let lat = t.elapsed();
            if existed != live {
                return Err(format!("delete of key {k} said {existed}, expected {live}"));
            }
            self.versions.set(k, DELETED);
            Ok((0, lat))
        })?;
        self.push(p);
        self.check_sample(store, 2000)
    }

    /// Gets a sample of keys, live and deleted, and checks each.
    fn check_sample(&self, store: &Store, count: u64) -> Result<(), String> {
        let mut buf = vec![0u8; self.dist.max()];
        for i in 0..count.min(self.args.records) {
            let k = mix(self.args.seed ^ 0x5a5a ^ i) % self.args.records;
            self.get_checked(store, k, &mut buf, None)?;
        }
        Ok(())
    }

    fn reopen(&mut self, store: Store, dir: &Path) -> Result<Store, String> {
        let t = Instant::now();
        store.close().map_err(|e| format!("close: {e}"))?;
        let close = t.elapsed();
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
                "{:.1} ms ({} records, from image: {})",
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
    fn rebuild_past_damage(&mut self, store: Store, dir: &Path) -> Result<Store, String> {
        let st = store.stats();
        let (seg, log) = (st.segment_size, st.log_end);
        store.close().map_err(|e| format!("close: {e}"))?;
        let opts = store_options(&self.args, self.dist.max())?;
        // Both rebuilds start with a cold cache, as after a reboot.
        let disk = dir.join(kvs::DISK_FILE);
        drop_caches(&[&disk]);
        let t = Instant::now();
        let clean = Store::rebuild_index(dir, opts.clone()).map_err(|e| format!("rebuild: {e}"))?;
        let clean_t = t.elapsed();
        // Slot k's first record starts after the superblock and the segment's header.
        let slots = st.disk_file_bytes.saturating_sub(4096) / seg;
        let at = 4096 + (slots / 2) * seg + 4096 + 8;
        {
            use std::os::unix::fs::FileExt;
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(dir.join(kvs::DISK_FILE))
                .map_err(|e| format!("disk_file: {e}"))?;
            let mut b = [0u8; 16];
            f.read_exact_at(&mut b, at)
                .map_err(|e| format!("read: {e}"))?;
            for x in &mut b {
                *x ^= 0x5a;
            }
            f.write_all_at(&b, at).map_err(|e| format!("write: {e}"))?;
            f.sync_all().map_err(|e| format!("sync: {e}"))?;
        }
        drop_caches(&[&disk]);
        let t = Instant::now();
        let damaged =
            Store::rebuild_index(dir, opts.clone()).map_err(|e| format!("rebuild: {e}"))?;
        let damaged_t = t.elapsed();
        let gbps = |d: Duration| log as f64 / d.as_secs_f64() / 1e9;
        self.summary.push((
            "full rebuild".into(),
            format!(
                "{:.0} ms for {} of log ({:.2} GB/s), {} records",
                clean_t.as_secs_f64() * 1e3,
                report::bytes(log),
                gbps(clean_t),
                clean.records
            ),
        ));
        self.summary.push((
            "full rebuild past damage".into(),
            format!(
                "{:.0} ms ({:.2}x the clean rebuild), {} damaged range(s) of {}, {} records \
                 (one lost)",
                damaged_t.as_secs_f64() * 1e3,
                damaged_t.as_secs_f64() / clean_t.as_secs_f64(),
                damaged.damaged_ranges,
                report::bytes(damaged.damaged_bytes),
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

    fn index_scale(&mut self) -> Result<(), String> {
        let n = self.args.index_records;
        let dir = self.args.dir.join("index-scale");
        let _ = std::fs::remove_dir_all(&dir);
        let opts = Options::default()
            .expected_records(n.max(1))
            .max_value_size(64 << 10)
            .buffer_size(64 << 20)
            .direct_io(self.args.direct_io);
        let store = Store::open(&dir, opts.clone()).map_err(|e| format!("open: {e}"))?;
        let rss0 = rss();
        let t0 = Instant::now();
        let budget = Budget {
            ops: n,
            max: Duration::from_secs(3600),
        };
        let mut p = run_phase("index-scale", 1, budget, self.start, |_, i| {
            let k = mix(i ^ 0x1d1d);
            let t = Instant::now();
            store
                .put(&k.to_le_bytes(), &i.to_le_bytes())
                .map_err(|e| format!("put: {e}"))?;
            Ok((8, t.elapsed()))
        })?;
        store.sync().map_err(|e| format!("sync: {e}"))?;
        p.secs = t0.elapsed().as_secs_f64();
        let st = store.stats();
        let rss1 = rss();
        p.notes
            .push(format!("{} records of 8-byte values", st.records));
        self.push(p);
        let t = Instant::now();
        store.close().map_err(|e| format!("close: {e}"))?;
        let close = t.elapsed();
        let t = Instant::now();
        let store = Store::open(&dir, opts).map_err(|e| format!("reopen: {e}"))?;
        let open = t.elapsed();
        let st2 = store.stats();
        for i in (0..n).step_by((n / 1000).max(1) as usize) {
            let k = mix(i ^ 0x1d1d);
            let got = store
                .get(&k.to_le_bytes())
                .map_err(|e| format!("get: {e}"))?;
            if got.as_deref() != Some(&i.to_le_bytes()[..]) {
                return Err(format!("index-scale: key {i} read back wrong"));
            }
        }
        let image = std::fs::metadata(dir.join(kvs::IMAGE_FILE))
            .map(|m| m.len())
            .unwrap_or(0);
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
        let per = st.index_bytes as f64 / st.records.max(1) as f64;
        self.summary.push((
            format!("index at {} records", st.records),
            format!("{} ({per:.1} bytes/record)", report::bytes(st.index_bytes)),
        ));
        self.summary.push((
            "index-scale RSS growth".into(),
            format!(
                "{} ({:.1} bytes/record; ring included)",
                report::bytes(rss1.saturating_sub(rss0)),
                rss1.saturating_sub(rss0) as f64 / st.records.max(1) as f64
            ),
        ));
        self.summary
            .push(("index-scale IMAGE_file".into(), report::bytes(image)));
        self.summary.push((
            "index-scale close (image write)".into(),
            format!("{:.0} ms", close.as_secs_f64() * 1e3),
        ));
        self.summary.push((
            "index-scale open".into(),
            format!(
                "{:.0} ms ({} records, from image: {})",
                open.as_secs_f64() * 1e3,
                st2.records,
                st2.opened_from_image
            ),
        ));
        Ok(())
    }
}

/// Reads a file sequentially so that it is in the page cache.
fn warm(path: &Path) {
    use std::io::Read;
    if let Ok(mut f) = std::fs::File::open(path) {
        let mut buf = vec![0u8; 8 << 20];
        while matches!(f.read(&mut buf), Ok(n) if n > 0) {}
    }
}

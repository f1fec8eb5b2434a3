//! kvsbench: the kvs benchmark harness.
//!
//! Measures the raw disk (sequential pwrite, random pread, with and without O_DIRECT) and
//! then the engine with the same access pattern in the same run, and reports every engine
//! figure also as a ratio of that baseline. Run `cargo bench --bench kvsbench -- --help`.

mod commit;
mod checkpoint;
mod index_scale;
mod measure;
mod ops;
mod phases;
mod raw;
mod reclaim;
mod reopen;
mod report;
mod workload;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{CommandFactory, FromArgMatches, Parser, ValueEnum};
use kvs::flags::{format_bytes, StoreFlags};
use kvs::{Options, Store};

use measure::{peak_rss, Budget, Phase};
use workload::{SizeDist, ValuePool, Versions};

/// How timed gets read values.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum GetApi {
    /// `Store::get_into` a buffer of the harness's (copied out of the read buffer).
    Into,
    /// `Store::get_value`: the value in the memory it was read into (no copy).
    Value,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum KeyOrder {
    Seq,
    Random,
}

const ALL_PHASES: &str =
    "baseline,fill,list,read-cold,get-api,read-hot,mixed,read-write,overwrite,\
                          reclaim,delete,reopen,commit,index-scale,checkpoint";

const AFTER_HELP: &str = "\
Engine options not given take the engine's defaults, except those shown with a default
above, --expected-records (default: --records) and --max-value-size (default: the largest
value --value-size makes). Sizes: a number of bytes, or with a unit: K/KiB, M/MiB, G/GiB,
T/TiB (powers of 1024), KB, MB, GB, TB (powers of 1000).";

/// The kvs benchmark harness: the engine against the raw disk, in one run.
#[derive(Parser, Debug)]
#[command(name = "kvsbench", version, about, long_about = None, after_help = AFTER_HELP)]
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
    /// Also call sync after every N puts (0: only at the end of each write phase).
    #[arg(long, default_value_t = 0)]
    sync_every: u64,
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
    /// The reclaim phase: overwrites, in multiples of the live data set.
    #[arg(long, default_value_t = 3)]
    reclaim_passes: u64,
    /// The reclaim phase: which keys the overwrites hit, `uniform` or `zipf:S` (Zipf with
    /// exponent S, e.g. zipf:0.99: a few keys overwritten again and again).
    #[arg(long, default_value = "uniform", value_parser = workload::KeyDist::parse)]
    reclaim_keys: workload::KeyDist,
    /// The reclaim phase: seconds to wait after deleting 90% for disk usage to reach the
    /// live bytes plus two segments.
    #[arg(long, default_value_t = 60.0)]
    reclaim_wait: f64,
    /// Records of the index-scale and checkpoint phases (8-byte values).
    #[arg(long, default_value_t = 10_000_000)]
    index_records: u64,
    /// In timed read phases, compare every Nth get's bytes with what was put (1: every
    /// get). The comparison runs outside the latency measurement but inside the phase's
    /// wall time, which the raw reads do not pay. Every get checks existence and length.
    #[arg(long, default_value_t = 8)]
    verify_every: u64,
    /// Writer thread counts of the commit phase (durable puts, `always` against `batch`).
    #[arg(long, value_delimiter = ',', default_value = "16")]
    commit_writers: Vec<usize>,
    /// How gets read values: into a buffer (`get_into`) or into memory of their own
    /// (`get_value`, no copy).
    #[arg(long, value_enum, default_value = "into")]
    get_api: GetApi,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where the JSON report and the SVG plot go.
    #[arg(long, default_value = "target/kvsbench")]
    report_dir: PathBuf,
    /// Keep the store and scratch files.
    #[arg(long)]
    keep: bool,
    // The engine's options: the engine's defaults, but for HARNESS_DEFAULTS; and
    // --expected-records defaults to --records, --max-value-size to the largest value
    // --value-size makes.
    #[command(flatten, next_help_heading = "Engine options")]
    store: StoreFlags,
}

/// Engine flags whose default in the harness is its own (shown by --help): the figures in
/// README are measured with O_DIRECT writes, a 256 MiB ring and 256 MiB segments, whatever
/// the engine's defaults become.
const HARNESS_DEFAULTS: [(&str, &str); 3] = [
    ("buffer_size", "256MiB"),
    ("segment_size", "256MiB"),
    ("direct_io", "true"),
];

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
    let cmd = HARNESS_DEFAULTS
        .iter()
        .fold(Args::command(), |c, &(id, v)| {
            c.mut_arg(id, |a| a.default_value(v))
        });
    let args = Args::from_arg_matches(&cmd.get_matches_from(argv)).unwrap_or_else(|e| e.exit());
    if let Err(e) = run(args) {
        eprintln!("kvsbench: {e}");
        std::process::exit(1);
    }
}

/// The options of the main store: the flags over the harness's own defaults.
fn store_options(a: &Args, max_value: usize) -> Result<Options, String> {
    let base = Options::default()
        .expected_records(a.records.max(1))
        .max_value_size(max_value.max(1));
    let o = a.store.apply(base);
    if o.get_max_value_size() < max_value {
        return Err(format!(
            "--max-value-size {} is below the largest value --value-size makes ({max_value})",
            o.get_max_value_size()
        ));
    }
    Ok(o)
}

fn run(args: Args) -> Result<(), String> {
    for p in &args.phases {
        if !ALL_PHASES.split(',').any(|k| k == p) {
            return Err(format!("unknown phase '{p}' (phases: {ALL_PHASES})"));
        }
    }
    if args.readers.is_empty()
        || args.readers.contains(&0)
        || args.writers == 0
        || args.commit_writers.contains(&0)
    {
        return Err("--readers, --writers and --commit-writers need counts of at least 1".into());
    }
    let dist = SizeDist::parse(&args.value_size)?;
    if dist.max() > kvs::MAX_VALUE_LIMIT {
        return Err(format!("values are at most {} bytes", kvs::MAX_VALUE_LIMIT));
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
        "list",
        "read-cold",
        "get-api",
        "read-hot",
        "mixed",
        "read-write",
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
        if want("list") {
            b.list(&store, &store_dir)?;
        }
        if want("read-cold") {
            for t in b.args.readers.clone() {
                b.reads(&store, &store_dir, t, true)?;
            }
        }
        if want("get-api") {
            b.get_api(&store, &store_dir)?;
        }
        if want("read-hot") {
            let t = *b.args.readers.iter().max().expect("non-empty");
            b.reads(&store, &store_dir, t, false)?;
        }
        if want("mixed") {
            b.mixed(&store)?;
        }
        if want("read-write") {
            b.read_write(&store)?;
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
            .push(("store disk usage (du) at the end".into(), format_bytes(du)));
        b.summary.push((
            "store live record bytes".into(),
            format_bytes(st.live_record_bytes),
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
    if want("commit") {
        b.commit()?;
    }
    if want("index-scale") {
        b.index_scale()?;
    }
    if want("checkpoint") {
        b.checkpoint_phase()?;
    }
    b.summary
        .push(("peak RSS".into(), format_bytes(peak_rss())));
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
        * if want("overwrite") || want("mixed") || want("reclaim") || want("read-write") {
            2.2
        } else {
            1.1
        };
    if want("baseline") {
        need += data;
    }
    if want("commit") {
        // One store at a time, removed before the next.
        need += data * 1.1;
    }
    if want("index-scale") || want("checkpoint") {
        // The checkpoint phase also copies its store to open it after a "crash".
        let per = if want("checkpoint") { 200.0 } else { 120.0 };
        need += a.index_records as f64 * per;
    }
    let vfs = nix::sys::statvfs::statvfs(&a.dir).map_err(|e| format!("statvfs: {e}"))?;
    let free = vfs.blocks_available() as f64 * vfs.fragment_size() as f64;
    if free < need * 1.05 {
        return Err(format!(
            "not enough free space in {}: this run needs about {}, {} are free. Use fewer \
             --records, a smaller --value-size, or another --dir. Nothing was written.",
            a.dir.display(),
            format_bytes(need as u64),
            format_bytes(free as u64)
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

    /// As `compare`, by operations a second: for reads, where a raw read counts the whole
    /// 4 KiB blocks of its slot and a get only the value in the blocks it reads (by bytes,
    /// a get of 100 KiB would look 4% slower than a raw read of the same blocks, and a get
    /// of 4 KiB half as fast).
    fn compare_ops(&self, phase: &mut Phase, base: &str) {
        if let Some(raw) = self.find(base) {
            phase.baseline = Some((
                base.to_string(),
                phase.ops_per_sec() / raw.ops_per_sec().max(1e-9),
            ));
        }
    }

    fn push(&mut self, p: Phase) {
        println!("{}", report::one_line(&p));
        self.phases.push(p);
    }
}

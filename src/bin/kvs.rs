//! `kvs`: use, inspect and repair a kvs store from the shell.
//!
//! Every command opens the store (which recovers it after a crash, as any open does) and
//! closes it again. Exit status: 0 success; 1 key not found (get, delete); 2 bad usage or
//! input; 3 the store cannot be opened (missing, not a store, locked, unsupported version,
//! bad option); 4 corruption found; 5 another I/O error.

use std::io::{self, BufRead, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::{Args, Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use kvs::{Durability, Error, Options, Store};

const EXIT_NOT_FOUND: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_STORE: u8 = 3;
const EXIT_CORRUPT: u8 = 4;
const EXIT_IO: u8 = 5;

const AFTER_HELP: &str = "\
Keys are UTF-8 text, or hex digits with --hex (binary keys). Every command opens the store,
creating it only for create, put and shell.

Exit status: 0 success; 1 key not found; 2 bad usage or input (an empty or over-long key,
a value over the limit); 3 the store cannot be opened
(missing, not a store, locked by another process, unsupported format version, bad option);
4 corruption found; 5 another I/O error.";

#[derive(Parser)]
#[command(name = "kvs", version, about = "Use, inspect and repair a kvs store", after_help = AFTER_HELP)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// The engine options, as flags (the defaults are the engine's).
#[derive(Args, Clone, Debug, Default)]
struct StoreFlags {
    /// Ring write buffer size (e.g. 256MiB; a multiple of 4KiB).
    #[arg(long, value_parser = parse_size, global = true)]
    buffer_size: Option<u64>,
    /// Flush as soon as this much waits in the ring (e.g. 8MiB).
    #[arg(long, value_parser = parse_size, global = true)]
    flush_horizon: Option<u64>,
    /// Flush at least this often, in milliseconds.
    #[arg(long, global = true)]
    flush_interval_ms: Option<u64>,
    /// Records the store is expected to hold (sizes the index when it is created).
    #[arg(long, global = true)]
    expected_records: Option<u64>,
    /// Largest value accepted (at most 5MiB).
    #[arg(long, value_parser = parse_size, global = true)]
    max_value_size: Option<u64>,
    /// When writes are durable.
    #[arg(long, value_enum, global = true)]
    durability: Option<DurabilityArg>,
    /// Read and write disk_file through the page cache instead of O_DIRECT.
    #[arg(long, global = true)]
    no_direct_io: bool,
    /// Log segment size, the unit of space reclamation (used by create; e.g. 256MiB).
    #[arg(long, value_parser = parse_size, global = true)]
    segment_size: Option<u64>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum DurabilityArg {
    /// fdatasync only at sync and checkpoints.
    None,
    /// fdatasync after every flush (the default).
    Batch,
    /// Every put and delete is durable when it returns.
    Always,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a store in DIR (a missing or empty directory). The flags given are saved in
    /// DIR/OPTIONS and used by later commands on DIR (a flag given then wins).
    Create {
        dir: PathBuf,
        #[command(flatten)]
        flags: StoreFlags,
    },
    /// Store a value: the VALUE argument, --file PATH, or `-` for standard input.
    Put {
        dir: PathBuf,
        key: String,
        /// The value; `-` reads it from standard input.
        value: Option<String>,
        /// Read the value from this file.
        #[arg(long, conflicts_with = "value")]
        file: Option<PathBuf>,
        /// KEY is hex digits.
        #[arg(long)]
        hex: bool,
        #[command(flatten)]
        flags: StoreFlags,
    },
    /// Write a value's raw bytes to standard output or --out PATH (exit 1 if missing).
    Get {
        dir: PathBuf,
        key: String,
        /// Write the value to this file instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
        /// KEY is hex digits.
        #[arg(long)]
        hex: bool,
        #[command(flatten)]
        flags: StoreFlags,
    },
    /// Delete a key (exit 1 if it was not there).
    Delete {
        dir: PathBuf,
        key: String,
        /// KEY is hex digits.
        #[arg(long)]
        hex: bool,
        #[command(flatten)]
        flags: StoreFlags,
    },
    /// What the store's files say: format, records, bytes, index, checkpoint, recovery.
    Stat {
        dir: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        flags: StoreFlags,
    },
    /// List the live keys and value sizes (or values), read from disk_file.
    ///
    /// The order is the index's (by key hash), not sorted. Cost: one read of each live
    /// record's header and key (up to 4 KiB each), or of the whole record with --values:
    /// on a store of 10 M records that is 10 M reads, minutes on a fast disk.
    Dump {
        dir: PathBuf,
        /// Only keys starting with these bytes (hex with --hex).
        #[arg(long)]
        prefix: Option<String>,
        /// Print values too (binary bytes escaped as \xNN, or hex with --hex).
        #[arg(long)]
        values: bool,
        /// Print keys (and values) as hex; --prefix is hex too.
        #[arg(long)]
        hex: bool,
        #[command(flatten)]
        flags: StoreFlags,
    },
    /// Read every live record and check header, key and checksum (exit 4 on corruption).
    Verify {
        dir: PathBuf,
        #[command(flatten)]
        flags: StoreFlags,
    },
    /// Give back the space of overwritten and deleted values now: move the live records
    /// of every segment with dead space to the log's tail and punch the segments out.
    Compact {
        dir: PathBuf,
        #[command(flatten)]
        flags: StoreFlags,
    },
    /// Rebuild IMAGE_file (the saved index) by scanning all of disk_file.
    Rebuild {
        dir: PathBuf,
        #[command(flatten)]
        flags: StoreFlags,
    },
    /// An interactive shell: put, get, delete, stat, dump, verify (also reads a pipe).
    Shell {
        dir: PathBuf,
        #[command(flatten)]
        flags: StoreFlags,
    },
}

/// A failure: the message for stderr and the exit status.
struct Failure(u8, String);

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        let code = match e {
            Error::Corruption { .. } => EXIT_CORRUPT,
            Error::InvalidArgument(_) | Error::TooLarge { .. } => EXIT_USAGE,
            Error::Locked | Error::UnsupportedVersion { .. } => EXIT_STORE,
            _ => EXIT_IO,
        };
        Failure(code, e.to_string())
    }
}

type Res<T> = std::result::Result<T, Failure>;

fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size (e.g. 4096, 64KiB, 8MiB)"))?;
    let mult = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        _ => return Err(format!("'{s}': unknown unit (use B, KiB, MiB, GiB)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("'{s}' is too large"))
}

/// The file in a store directory where `kvs create` keeps its flags, so that later
/// commands open the store the same way (a flag given to a later command wins). Lines of
/// `name = value`; the engine itself does not read it.
const OPTIONS_FILE: &str = "OPTIONS";

fn save_flags(dir: &Path, f: &StoreFlags) -> Res<()> {
    let mut lines =
        vec!["# kvs tool settings, written by `kvs create`; flags override them".to_string()];
    let mut add = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            lines.push(format!("{k} = {v}"));
        }
    };
    add("buffer_size", f.buffer_size.map(|v| v.to_string()));
    add("flush_horizon", f.flush_horizon.map(|v| v.to_string()));
    add(
        "flush_interval_ms",
        f.flush_interval_ms.map(|v| v.to_string()),
    );
    add(
        "expected_records",
        f.expected_records.map(|v| v.to_string()),
    );
    add("max_value_size", f.max_value_size.map(|v| v.to_string()));
    add("segment_size", f.segment_size.map(|v| v.to_string()));
    add(
        "durability",
        f.durability.map(|d| format!("{d:?}").to_lowercase()),
    );
    add("no_direct_io", f.no_direct_io.then(|| "true".to_string()));
    let path = dir.join(OPTIONS_FILE);
    std::fs::write(&path, lines.join("\n") + "\n")
        .map_err(|e| Failure(EXIT_IO, format!("{}: {e}", path.display())))
}

/// The flags saved by `kvs create` in `dir`, overridden by those given now.
fn effective_flags(dir: &Path, given: &StoreFlags) -> Res<StoreFlags> {
    let path = dir.join(OPTIONS_FILE);
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(given.clone());
    };
    let bad = |line: &str, why: String| {
        Failure(EXIT_STORE, format!("{}: '{line}': {why}", path.display()))
    };
    let mut f = StoreFlags::default();
    for line in text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (k, v) = line
            .split_once('=')
            .ok_or_else(|| bad(line, "expected name = value".into()))?;
        let (k, v) = (k.trim(), v.trim());
        let num = || v.parse::<u64>().map_err(|e| bad(line, e.to_string()));
        match k {
            "buffer_size" => f.buffer_size = Some(num()?),
            "flush_horizon" => f.flush_horizon = Some(num()?),
            "flush_interval_ms" => f.flush_interval_ms = Some(num()?),
            "expected_records" => f.expected_records = Some(num()?),
            "max_value_size" => f.max_value_size = Some(num()?),
            "segment_size" => f.segment_size = Some(num()?),
            "durability" => {
                f.durability = Some(DurabilityArg::from_str(v, true).map_err(|e| bad(line, e))?)
            }
            "no_direct_io" => f.no_direct_io = v == "true",
            _ => return Err(bad(line, "unknown setting".into())),
        }
    }
    Ok(StoreFlags {
        buffer_size: given.buffer_size.or(f.buffer_size),
        flush_horizon: given.flush_horizon.or(f.flush_horizon),
        flush_interval_ms: given.flush_interval_ms.or(f.flush_interval_ms),
        expected_records: given.expected_records.or(f.expected_records),
        max_value_size: given.max_value_size.or(f.max_value_size),
        segment_size: given.segment_size.or(f.segment_size),
        durability: given.durability.or(f.durability),
        no_direct_io: given.no_direct_io || f.no_direct_io,
    })
}

/// The options of a one-shot command: no background reclaimer (a `kvs get` or `kvs stat`
/// should not start rewriting the store; `kvs compact` reclaims on request, and the shell
/// turns it back on).
fn options(f: &StoreFlags) -> Options {
    let mut o = Options::default().background_reclaim(false);
    if let Some(v) = f.buffer_size {
        o = o.buffer_size(v as usize);
    }
    if let Some(v) = f.flush_horizon {
        o = o.flush_horizon(v as usize);
    }
    if let Some(v) = f.flush_interval_ms {
        o = o.flush_interval(Duration::from_millis(v));
    }
    if let Some(v) = f.expected_records {
        o = o.expected_records(v);
    }
    if let Some(v) = f.max_value_size {
        o = o.max_value_size(v as usize);
    }
    if let Some(v) = f.segment_size {
        o = o.segment_size(v);
    }
    if let Some(d) = f.durability {
        o = o.durability(match d {
            DurabilityArg::None => Durability::None,
            DurabilityArg::Batch => Durability::Batch,
            DurabilityArg::Always => Durability::Always,
        });
    }
    if f.no_direct_io {
        o = o.direct_io(false).direct_reads(false);
    }
    o
}

/// Opens the store in `dir`, with clear messages for the usual mistakes. `create`: a
/// missing or empty directory gets a new store.
fn open(dir: &Path, create: bool, opts: Options) -> Res<Store> {
    open_as(dir, create, opts, |d, o| Store::open(d, o))
}

/// `open`, doing `how` (open, or rebuild) once the directory looks right.
fn open_as<T>(
    dir: &Path,
    create: bool,
    opts: Options,
    how: impl FnOnce(&Path, Options) -> kvs::Result<T>,
) -> Res<T> {
    let fail = |m: String| Err(Failure(EXIT_STORE, m));
    let d = dir.display();
    if dir.exists() && !dir.is_dir() {
        return fail(format!("{d} is not a directory"));
    }
    if !dir.join(kvs::DISK_FILE).exists() {
        let empty = std::fs::read_dir(dir).map_or(true, |mut r| r.next().is_none());
        if !create {
            return if dir.exists() {
                fail(format!("{d} is not a kvs store (it has no disk_file)"))
            } else {
                fail(format!(
                    "no kvs store at {d} (the directory does not exist)"
                ))
            };
        }
        if !empty {
            return fail(format!(
                "{d} is not empty and holds no kvs store; refusing to create one there"
            ));
        }
    }
    // Recovery can be long (a full rebuild reads all of disk_file): show it on a terminal.
    let pb = bar(0, "recover", true);
    let pb2 = pb.clone();
    let opts = match opts.get_recovery_progress() {
        Some(_) => opts,
        None => opts.recovery_progress(move |done, all| {
            pb2.set_length(all);
            pb2.set_position(done);
        }),
    };
    let res = how(dir, opts);
    pb.finish_and_clear();
    res.map_err(|e| match e {
        Error::Locked => Failure(
            EXIT_STORE,
            format!("{d} is in use by another process (its LOCK file is held)"),
        ),
        Error::InvalidArgument(m) => Failure(EXIT_STORE, format!("cannot open {d}: {m}")),
        other => Failure::from(other),
    })
}

fn key_bytes(key: &str, hex: bool) -> Res<Vec<u8>> {
    if !hex {
        return Ok(key.as_bytes().to_vec());
    }
    let digits: Vec<u8> = key.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if digits.len() % 2 != 0 {
        return Err(Failure(
            2,
            format!("'{key}' is not hex: odd number of digits"),
        ));
    }
    digits
        .chunks(2)
        .map(|p| {
            std::str::from_utf8(p)
                .ok()
                .and_then(|s| u8::from_str_radix(s, 16).ok())
                .ok_or_else(|| Failure(EXIT_USAGE, format!("'{key}' is not hex")))
        })
        .collect()
}

fn to_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Printable ASCII and space as is (backslash doubled), anything else (tabs and newlines
/// too, so a dump line stays one line) as \xNN.
fn escape(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len());
    for &c in b {
        match c {
            b'\\' => s.push_str("\\\\"),
            0x20..=0x7e => s.push(c as char),
            _ => s.push_str(&format!("\\x{c:02x}")),
        }
    }
    s
}

/// A progress bar on stderr when stdout is a terminal; hidden otherwise.
fn bar(len: u64, what: &str, bytes: bool) -> ProgressBar {
    let pb = ProgressBar::new(len);
    if !io::stdout().is_terminal() {
        pb.set_draw_target(ProgressDrawTarget::hidden());
    }
    let unit = if bytes {
        "{bytes}/{total_bytes}"
    } else {
        "{pos}/{len}"
    };
    let style = ProgressStyle::with_template(&format!("{{prefix}} [{{bar:40}}] {unit} ({{eta}})"))
        .expect("valid template")
        .progress_chars("=> ");
    pb.set_style(style);
    pb.set_prefix(what.to_string());
    pb
}

fn main() -> ExitCode {
    // The library's log lines go to the store's LOG file; on stderr only if RUST_LOG asks.
    let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("off"))
        .try_init();
    let cli = Cli::parse();
    match run(cli.cmd) {
        Ok(code) => ExitCode::from(code),
        Err(Failure(code, msg)) => {
            eprintln!("kvs: {msg}");
            ExitCode::from(code)
        }
    }
}

fn run(cmd: Cmd) -> Res<u8> {
    let cmd = with_saved_flags(cmd)?;
    match cmd {
        Cmd::Create { dir, flags } => {
            if dir.join(kvs::DISK_FILE).exists() {
                return Err(Failure(
                    EXIT_STORE,
                    format!("{} is already a kvs store", dir.display()),
                ));
            }
            let store = open(&dir, true, options(&flags))?;
            store.close()?;
            save_flags(&dir, &flags)?;
            println!("created a kvs store in {}", dir.display());
            Ok(0)
        }
        Cmd::Put {
            dir,
            key,
            value,
            file,
            hex,
            flags,
        } => {
            let key = key_bytes(&key, hex)?;
            let bytes = match (value.as_deref(), file) {
                (_, Some(path)) => std::fs::read(&path)
                    .map_err(|e| Failure(EXIT_IO, format!("{}: {e}", path.display())))?,
                (Some("-"), None) => {
                    let mut b = Vec::new();
                    io::stdin()
                        .read_to_end(&mut b)
                        .map_err(|e| Failure(EXIT_IO, format!("standard input: {e}")))?;
                    b
                }
                (Some(v), None) => v.as_bytes().to_vec(),
                (None, None) => {
                    return Err(Failure(
                        2,
                        "give a VALUE, --file PATH, or - for standard input".into(),
                    ))
                }
            };
            let store = open(&dir, true, options(&flags))?;
            store.put(&key, &bytes)?;
            store.close()?;
            Ok(0)
        }
        Cmd::Get {
            dir,
            key,
            out,
            hex,
            flags,
        } => {
            let key = key_bytes(&key, hex)?;
            let store = open(&dir, false, options(&flags))?;
            let Some(v) = store.get(&key)? else {
                store.close()?;
                return Err(Failure(
                    EXIT_NOT_FOUND,
                    format!("key not found: {}", escape(&key)),
                ));
            };
            store.close()?;
            match out {
                Some(p) => std::fs::write(&p, &v)
                    .map_err(|e| Failure(EXIT_IO, format!("{}: {e}", p.display())))?,
                None => io::stdout()
                    .write_all(&v)
                    .and_then(|_| io::stdout().flush())
                    .map_err(|e| Failure(EXIT_IO, format!("standard output: {e}")))?,
            }
            Ok(0)
        }
        Cmd::Delete {
            dir,
            key,
            hex,
            flags,
        } => {
            let key = key_bytes(&key, hex)?;
            let store = open(&dir, false, options(&flags))?;
            let existed = store.delete(&key)?;
            store.close()?;
            if existed {
                Ok(0)
            } else {
                Err(Failure(
                    EXIT_NOT_FOUND,
                    format!("key not found: {}", escape(&key)),
                ))
            }
        }
        Cmd::Stat { dir, json, flags } => {
            let store = open(&dir, false, options(&flags))?;
            let text = stat(&store, &dir, &flags, json);
            store.close()?;
            println!("{text}");
            Ok(0)
        }
        Cmd::Dump {
            dir,
            prefix,
            values,
            hex,
            flags,
        } => {
            let prefix = prefix
                .map(|p| key_bytes(&p, hex))
                .transpose()?
                .unwrap_or_default();
            let store = open(&dir, false, options(&flags))?;
            let code = dump(&store, &prefix, values, hex, &mut io::stdout().lock())?;
            store.close()?;
            Ok(code)
        }
        Cmd::Verify { dir, flags } => {
            let store = open(&dir, false, options(&flags))?;
            let code = verify(&store, &mut io::stdout().lock())?;
            store.close()?;
            Ok(code)
        }
        Cmd::Compact { dir, flags } => {
            let store = open(&dir, false, options(&flags))?;
            let before = store.stats();
            let r = store.compact()?;
            let after = store.stats();
            store.close()?;
            println!(
                "compacted: {} segments freed, {} records ({}) moved; disk_file on disk {} -> {}",
                r.segments_freed,
                r.records_moved,
                human(r.bytes_moved),
                human(before.disk_file_allocated),
                human(after.disk_file_allocated)
            );
            Ok(0)
        }
        Cmd::Rebuild { dir, flags } => {
            // The engine takes the lock first and replaces IMAGE_file only at the end.
            let st = open_as(&dir, false, options(&flags), |d, o| {
                Store::rebuild_index(d, o)
            })?;
            println!(
                "rebuilt IMAGE_file from {} bytes of disk_file: {} records",
                st.replayed_bytes, st.records
            );
            Ok(0)
        }
        Cmd::Shell { dir, flags } => {
            let store = open(&dir, true, options(&flags).background_reclaim(true))?;
            shell(&store, &dir, &flags)?;
            store.close()?;
            Ok(0)
        }
    }
}

/// Replaces the command's flags by its effective flags (saved ones, overridden).
fn with_saved_flags(mut cmd: Cmd) -> Res<Cmd> {
    match &mut cmd {
        Cmd::Create { .. } => {}
        Cmd::Put { dir, flags, .. }
        | Cmd::Get { dir, flags, .. }
        | Cmd::Delete { dir, flags, .. }
        | Cmd::Stat { dir, flags, .. }
        | Cmd::Dump { dir, flags, .. }
        | Cmd::Verify { dir, flags }
        | Cmd::Compact { dir, flags }
        | Cmd::Rebuild { dir, flags }
        | Cmd::Shell { dir, flags } => *flags = effective_flags(dir, flags)?,
    }
    Ok(cmd)
}

fn stat(store: &Store, dir: &Path, flags: &StoreFlags, json: bool) -> String {
    let st = store.stats();
    let o = options(flags);
    let du: u64 = std::fs::read_dir(dir)
        .map(|r| {
            r.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| std::os::unix::fs::MetadataExt::blocks(&m) * 512)
                .sum()
        })
        .unwrap_or(0);
    let image = std::fs::metadata(dir.join(kvs::IMAGE_FILE)).ok();
    let image_age = image
        .as_ref()
        .and_then(|m| m.modified().ok())
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .map(|d| d.as_secs());
    let per = st.index_bytes as f64 / st.records.max(1) as f64;
    let durability = format!("{:?}", o.get_durability()).to_lowercase();
    if json {
        return serde_json::to_string_pretty(&serde_json::json!({
            "store": dir.display().to_string(),
            "disk_file_format": st.format_version,
            "damaged_ranges": st.damaged_ranges,
            "damaged_bytes": st.damaged_bytes,
            "kept_slots": st.kept_slots,
            "image_file_format": kvs::IMAGE_VERSION,
            "records": st.records,
            "live_bytes": st.live_bytes,
            "dead_bytes": st.dead_bytes,
            "file_bytes": st.disk_file_bytes,
            "disk_file_allocated_bytes": st.disk_file_allocated,
            "segment_size": st.segment_size,
            "segments": st.segments,
            "free_segments": st.free_segments,
            "disk_usage_bytes": du,
            "index_bytes": st.index_bytes,
            "index_bytes_per_record": per,
            "buffer_bytes": st.buffer_capacity,
            "flush_horizon_bytes": o.get_flush_horizon(),
            "flush_interval_ms": o.get_flush_interval().as_millis() as u64,
            "durability": durability,
            "direct_io": st.direct_io,
            "direct_reads": st.direct_reads,
            "checkpoint_covers_bytes": st.checkpoint_covered,
            "checkpoint_age_seconds": image_age,
            "open_micros": st.open_micros,
            "opened_from_image": st.opened_from_image,
            "replayed_bytes": st.replayed_bytes,
        }))
        .expect("JSON of plain values");
    }
    let b = human;
    [
        format!("store            {}", dir.display()),
        format!("format           disk_file v{}, IMAGE_file v{}", st.format_version, kvs::IMAGE_VERSION),
        format!("records          {}", st.records),
        format!(
            "damage           {} damaged log ranges ({}) stepped over at open{}",
            st.damaged_ranges,
            b(st.damaged_bytes),
            if st.kept_slots > 0 {
                format!("; {} slots kept (records without a segment header, see LOG)", st.kept_slots)
            } else {
                String::new()
            }
        ),
        format!("live bytes       {} (live records: headers, keys, values)", b(st.live_bytes)),
        format!("dead bytes       {} (overwritten, deleted, tombstones, padding)", b(st.dead_bytes)),
        format!(
            "file bytes       {} long, {} on disk; {} on disk for the directory (du)",
            b(st.disk_file_bytes),
            b(st.disk_file_allocated),
            b(du)
        ),
        format!(
            "segments         {} of {} in use, {} free (reclaimed with `kvs compact`, or in the background)",
            st.segments,
            b(st.segment_size),
            st.free_segments
        ),
        format!("index            {} in memory, {per:.1} bytes per record", b(st.index_bytes)),
        format!(
            "buffer           {} ring, {} flush horizon, {} ms flush interval (this open's settings)",
            b(st.buffer_capacity),
            b(o.get_flush_horizon() as u64),
            o.get_flush_interval().as_millis()
        ),
        format!(
            "durability       {durability}; O_DIRECT writes {}, reads {}",
            st.direct_io, st.direct_reads
        ),
        match image_age {
            Some(age) => format!(
                "last checkpoint  IMAGE_file covers {} of the log, written {age} s ago",
                b(st.checkpoint_covered)
            ),
            None => "last checkpoint  none (no IMAGE_file)".into(),
        },
        format!(
            "recovery         this open took {:.1} ms: {}, replayed {}",
            st.open_micros as f64 / 1000.0,
            if st.opened_from_image { "index from IMAGE_file" } else { "index rebuilt from disk_file" },
            b(st.replayed_bytes)
        ),
    ]
    .join("\n")
}

fn human(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let (mut v, mut u) = (n as f64, 0);
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

fn dump(store: &Store, prefix: &[u8], values: bool, hex: bool, out: &mut dyn Write) -> Res<u8> {
    let pb = bar(store.stats().records, "dump", false);
    let show = |b: &[u8]| if hex { to_hex(b) } else { escape(b) };
    let mut werr = None;
    store.for_each_record(values, |k, v, n| {
        pb.inc(1);
        if !k.starts_with(prefix) {
            return true;
        }
        let line = if values {
            writeln!(out, "{}\t{n}\t{}", show(k), show(v))
        } else {
            writeln!(out, "{}\t{n}", show(k))
        };
        match line {
            Ok(()) => true,
            Err(e) => {
                werr = Some(e);
                false
            }
        }
    })?;
    pb.finish_and_clear();
    match werr {
        // A closed pipe (| head) is a normal way to stop.
        Some(e) if e.kind() != io::ErrorKind::BrokenPipe => {
            Err(Failure(EXIT_IO, format!("standard output: {e}")))
        }
        _ => Ok(0),
    }
}

fn verify(store: &Store, out: &mut dyn Write) -> Res<u8> {
    let pb = bar(store.stats().records, "verify", false);
    let r = store.verify_with_progress(|done, _| pb.set_position(done))?;
    pb.finish_and_clear();
    let _ = writeln!(
        out,
        "{} records sound ({}), {} corrupt, {} damaged log ranges found at open ({})",
        r.records,
        human(r.bytes),
        r.corrupt,
        r.damaged_ranges,
        human(r.damaged_bytes)
    );
    for p in &r.problems {
        let _ = writeln!(out, "  {p}");
    }
    Ok(if r.is_clean() { 0 } else { EXIT_CORRUPT })
}

const SHELL_HELP: &str = "\
commands:
  put KEY VALUE      store VALUE (the rest of the line) under KEY
  get KEY            print the value (binary bytes as \\xNN)
  delete KEY         remove KEY
  stat               what `kvs stat` prints
  dump [PREFIX]      keys and value sizes
  verify             check every record
  help, quit";

/// Reads commands from a terminal (with line editing and history) or from a pipe.
fn shell(store: &Store, dir: &Path, flags: &StoreFlags) -> Res<()> {
    let interactive = io::stdin().is_terminal();
    let mut editor = if interactive {
        let ed = rustyline::DefaultEditor::new()
            .map_err(|e| Failure(EXIT_IO, format!("terminal: {e}")))?;
        println!(
            "kvs shell on {} ({} records); `help` for commands",
            dir.display(),
            store.stats().records
        );
        Some(ed)
    } else {
        None
    };
    let stdin = io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        let line = match &mut editor {
            Some(ed) => match ed.readline("kvs> ") {
                Ok(l) => {
                    let _ = ed.add_history_entry(l.as_str());
                    l
                }
                Err(rustyline::error::ReadlineError::Interrupted) => continue,
                Err(_) => break,
            },
            None => match lines.next() {
                Some(Ok(l)) => l,
                _ => break,
            },
        };
        let line = line.trim();
        let (cmd, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let rest = rest.trim_start();
        let result: Res<()> = (|| {
            let mut out = io::stdout().lock();
            match cmd {
                "" => {}
                "help" | "?" => {
                    writeln!(out, "{SHELL_HELP}").map_err(|e| Failure(EXIT_IO, e.to_string()))?
                }
                "quit" | "exit" => return Err(Failure(0, String::new())),
                "put" => {
                    let (k, v) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
                    if k.is_empty() {
                        return Err(Failure(EXIT_USAGE, "usage: put KEY VALUE".into()));
                    }
                    store.put(k.as_bytes(), v.trim_start().as_bytes())?;
                    let _ = writeln!(out, "ok");
                }
                "get" => match store.get(rest.as_bytes())? {
                    Some(v) => {
                        let _ = writeln!(out, "{}", escape(&v));
                    }
                    None => {
                        let _ = writeln!(out, "(not found)");
                    }
                },
                "delete" | "del" => {
                    let existed = store.delete(rest.as_bytes())?;
                    let _ = writeln!(out, "{}", if existed { "deleted" } else { "(not found)" });
                }
                "stat" => {
                    let _ = writeln!(out, "{}", stat(store, dir, flags, false));
                }
                "dump" => {
                    dump(store, rest.as_bytes(), false, false, &mut out)?;
                }
                "verify" => {
                    verify(store, &mut out)?;
                }
                other => {
                    return Err(Failure(
                        EXIT_USAGE,
                        format!("unknown command '{other}'; try help"),
                    ))
                }
            }
            Ok(())
        })();
        match result {
            Ok(()) => {}
            Err(Failure(0, _)) => break,
            Err(Failure(_, msg)) => eprintln!("error: {msg}"),
        }
    }
    Ok(())
}

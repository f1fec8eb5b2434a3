//! `kvs`: use, inspect and repair a kvs store from the shell.
//!
//! Every command opens the store (which recovers it after a crash, as any open does) and
//! closes it again. Exit status: 0 success; 1 key not found (get, delete); 2 bad usage or
//! input; 3 the store cannot be opened (missing, not a store, locked, unsupported version,
//! bad option); 4 corruption found; 5 another I/O error.

mod batch;
mod dirs;
mod dump;
mod open;
mod progress;
mod metrics;
mod serve;
mod shell;
mod stall;
mod stat;
mod text;
mod verify;

use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kvs::flags::{format_bytes, StoreFlags};
use kvs::{Error, Options, Store};

use batch::parse_batch;
use dump::dump;
use open::{open, open_as};
use serve::serve_dir;
use shell::shell;
use stat::stat;
use text::{escape, key_bytes};
use verify::verify;

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
        #[arg(required_unless_present = "batch")]
        key: Option<String>,
        /// The value; `-` reads it from standard input.
        value: Option<String>,
        /// Read the value from this file.
        #[arg(long, conflicts_with = "value")]
        file: Option<PathBuf>,
        /// Apply an atomic batch from this file (`-`: standard input) instead: one
        /// `put KEY VALUE-FILE` or `delete KEY` per line (`#` comments); all or nothing.
        #[arg(long, conflicts_with_all = ["key", "value", "file"])]
        batch: Option<PathBuf>,
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
    /// List the live keys: one line per key, the key, a tab, the value length.
    ///
    /// Reads the key summaries (one small file per log segment), not the values; only a
    /// segment without a summary is read. Order: the log order of the keys' records (about
    /// the order of their last writes), not sorted. Same as `dump` without --values.
    Keys {
        dir: PathBuf,
        /// Only keys starting with these bytes (hex with --hex).
        #[arg(long)]
        prefix: Option<String>,
        /// Print keys as hex; --prefix is hex too.
        #[arg(long)]
        hex: bool,
        #[command(flatten)]
        flags: StoreFlags,
    },
    /// List the live keys and value sizes, or values with --values.
    ///
    /// Keys come from the key summaries, in the log order of their records, not sorted.
    /// With --values, each value is read (one read per record, checked as by get): on a
    /// store of 10 M records that is 10 M reads, minutes on a fast disk.
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
    /// Rebuild IMAGE_file (the saved index) from disk_file alone: from the key summaries,
    /// reading only the segments that have none.
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
    /// Serve the store over HTTP/1.1 as a volume server for minikeyvalue: PUT, GET (with
    /// Range), HEAD, DELETE of the URL path as the key. Creates the store if missing.
    /// Durability is `always` unless given (a 201 or 204 then means durable).
    /// SIGTERM or SIGINT: finish the requests in flight, close the store, exit 0.
    Serve {
        dir: PathBuf,
        /// Address to listen on (loopback unless told otherwise; port 0: any free port,
        /// printed on the first line of standard output).
        #[arg(long, default_value = "127.0.0.1:3001")]
        listen: std::net::SocketAddr,
        /// Bytes of request bodies held in memory at once, and as many of values being
        /// sent (uploads and GETs beyond wait, each in their own budget; raised to the max
        /// value size if lower).
        #[arg(long, value_parser = kvs::flags::parse_size, default_value = "256MiB")]
        max_inflight: u64,
        /// Seconds a request body may pause between two reads (408 after), and an upload
        /// may wait for room in the --max-inflight budget (503 after).
        #[arg(long, default_value_t = 60)]
        body_timeout: u64,
        /// Seconds a response may wait for the client to take more of it before the
        /// connection is closed (a client that stops reading holds the value in memory).
        #[arg(long, default_value_t = 60)]
        send_timeout: u64,
        /// Address of the admin listener, `GET /metrics` (Prometheus) and `GET /stats`
        /// (JSON); off unless given. Its address is the second line of standard output.
        #[arg(long)]
        admin_listen: Option<std::net::SocketAddr>,
        /// Threads that parse and route requests (default: half the CPUs, at least 1);
        /// engine calls that may wait run on a separate pool of up to 64 threads.
        #[arg(long)]
        threads: Option<usize>,
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

/// The options of a one-shot command: no background reclaimer (a `kvs get` or `kvs stat`
/// should not start rewriting the store; `kvs compact` reclaims on request, and the shell
/// turns it back on).
fn options(f: &StoreFlags) -> Options {
    f.apply(Options::default().background_reclaim(false))
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
            flags.save(&dir).map_err(|m| Failure(EXIT_IO, m))?;
            println!("created a kvs store in {}", dir.display());
            Ok(0)
        }
        Cmd::Put {
            dir,
            batch: Some(path),
            hex,
            flags,
            ..
        } => {
            let text = if path.as_os_str() == "-" {
                let mut t = String::new();
                io::stdin()
                    .read_to_string(&mut t)
                    .map_err(|e| Failure(EXIT_IO, format!("standard input: {e}")))?;
                t
            } else {
                std::fs::read_to_string(&path)
                    .map_err(|e| Failure(EXIT_IO, format!("{}: {e}", path.display())))?
            };
            let batch = parse_batch(
                &text,
                hex,
                std::path::Path::new("."),
                new_limit(&dir, &flags),
            )?;
            let store = open(&dir, true, options(&flags))?;
            store.write(&batch)?;
            store.close()?;
            Ok(0)
        }
        Cmd::Put {
            dir,
            key,
            value,
            file,
            hex,
            flags,
            ..
        } => {
            let Some(key) = key else {
                return Err(Failure(EXIT_USAGE, "give a KEY, or --batch FILE".into()));
            };
            let key = key_bytes(&key, hex)?;
            // Refused before a store is created for it, and before more than the limit is
            // read from a file or standard input.
            batch::check_key_len(&key).map_err(|m| Failure(EXIT_USAGE, m))?;
            let limit = new_limit(&dir, &flags).min(kvs::MAX_VALUE_LIMIT);
            let bytes = match (value.as_deref(), file) {
                (_, Some(path)) => {
                    let f = std::fs::File::open(&path)
                        .map_err(|e| Failure(EXIT_IO, format!("{}: {e}", path.display())))?;
                    read_value(f, &path.display().to_string(), limit)?
                }
                (Some("-"), None) => read_value(io::stdin().lock(), "standard input", limit)?,
                (Some(v), None) => v.as_bytes().to_vec(),
                (None, None) => {
                    return Err(Failure(
                        EXIT_USAGE,
                        "give a VALUE, --file PATH, or - for standard input".into(),
                    ))
                }
            };
            if bytes.len() > limit {
                return Err(Failure(
                    EXIT_USAGE,
                    format!(
                        "a value of {} bytes is over the limit of {limit} (--max-value-size)",
                        bytes.len()
                    ),
                ));
            }
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
                None => match io::stdout()
                    .write_all(&v)
                    .and_then(|_| io::stdout().flush())
                {
                    // The reader took what it wanted (`| head`), as `dump` treats it.
                    Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {}
                    r => r.map_err(|e| Failure(EXIT_IO, format!("standard output: {e}")))?,
                },
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
        } => list(&dir, prefix, values, hex, &flags),
        Cmd::Keys {
            dir,
            prefix,
            hex,
            flags,
        } => list(&dir, prefix, false, hex, &flags),
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
                format_bytes(r.bytes_moved),
                format_bytes(before.disk_file_allocated),
                format_bytes(after.disk_file_allocated)
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
            let code = shell(&store, &dir, &flags)?;
            store.close()?;
            Ok(code)
        }
        Cmd::Serve {
            dir,
            listen,
            max_inflight,
            body_timeout,
            send_timeout,
            admin_listen,
            threads,
            flags,
        } => {
            let cfg = serve::ServeConfig {
                listen,
                inflight_bytes: max_inflight,
                body_timeout: std::time::Duration::from_secs(body_timeout),
                send_timeout: std::time::Duration::from_secs(send_timeout),
                admin: admin_listen,
                threads: threads.unwrap_or_else(serve::default_threads),
            };
            // A 201 or 204 means durable unless told otherwise (saved in the store's
            // OPTIONS, or --durability): in `batch`, a PUT acknowledged but still in the ring
            // is lost if the server process dies, where nginx's would be in the page cache.
            let mut opts = options(&flags).background_reclaim(true);
            if flags.durability.is_none() {
                opts = opts.durability(kvs::Durability::Always);
            }
            serve_dir(&dir, opts, cfg)
        }
    }
}

/// `kvs keys` and `kvs dump`: the live keys with `prefix` (hex with `hex`), and values.
fn list(
    dir: &std::path::Path,
    prefix: Option<String>,
    values: bool,
    hex: bool,
    flags: &StoreFlags,
) -> Res<u8> {
    let prefix = prefix
        .map(|p| key_bytes(&p, hex))
        .transpose()?
        .unwrap_or_default();
    let store = open(dir, false, options(flags))?;
    let code = dump(&store, &prefix, values, hex, &mut io::stdout().lock())?;
    store.close()?;
    Ok(code)
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
        | Cmd::Keys { dir, flags, .. }
        | Cmd::Verify { dir, flags }
        | Cmd::Compact { dir, flags }
        | Cmd::Rebuild { dir, flags }
        | Cmd::Shell { dir, flags }
        | Cmd::Serve { dir, flags, .. } => {
            *flags = flags.with_saved(dir).map_err(|m| Failure(EXIT_STORE, m))?
        }
    }
    Ok(cmd)
}

/// Reads a value from `r` (`what` names it), at most `limit` bytes: more is refused
/// without reading on.
fn read_value(r: impl Read, what: &str, limit: usize) -> Result<Vec<u8>, Failure> {
    let mut b = Vec::new();
    r.take(limit as u64 + 1)
        .read_to_end(&mut b)
        .map_err(|e| Failure(EXIT_IO, format!("{what}: {e}")))?;
    if b.len() > limit {
        return Err(Failure(
            EXIT_USAGE,
            format!(
                "{what}: a value of more than {limit} bytes is over the limit (--max-value-size)"
            ),
        ));
    }
    Ok(b)
}

/// The largest value a command that may create the store at `dir` can check before it
/// opens it: the limit its flags give a new store; for an existing store the store's own
/// limit applies, checked once it is open (nothing is created then).
fn new_limit(dir: &std::path::Path, flags: &StoreFlags) -> usize {
    if dir.join(kvs::DISK_FILE).exists() {
        usize::MAX
    } else {
        options(flags).get_max_value_size()
    }
}

#[cfg(test)]
mod tests {
    use super::Cli;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_sound() {
        Cli::command().debug_assert();
    }
}

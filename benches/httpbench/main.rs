//! httpbench: `kvs serve` against nginx configured as a minikeyvalue volume (WebDAV PUT
//! and DELETE, JSON autoindex), over HTTP on this machine, on the same disk, in one run.
//!
//! For each server: PUT of `--objects` values at each connection count (disjoint keys),
//! the listing walk minikeyvalue's rebuild does, a restart and a dropped page cache, cold
//! GETs (each key read once), HEADs, DELETEs. Reported as requests per second, latency
//! percentiles, and kvs's ratio to nginx. Without nginx on the machine (or with
//! `--no-nginx`), kvs alone, with a message.
//!
//! ```sh
//! cargo bench --bench httpbench -- --objects 10000
//! ```

mod client;
mod servers;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;

use client::Client;
use servers::{drop_caches, find_nginx, Kind, Server};

#[derive(Parser)]
#[command(about = "kvs serve against nginx (WebDAV) over HTTP, in one run")]
struct Args {
    /// Where both servers keep their data (removed at the end).
    #[arg(long, default_value = "target/httpbench/data")]
    dir: PathBuf,
    /// Objects written by each PUT phase (one phase per connection count).
    #[arg(long, default_value_t = 5000)]
    objects: usize,
    /// Bytes of each object.
    #[arg(long, value_parser = kvs::flags::parse_size, default_value = "100KiB")]
    value_size: u64,
    /// Concurrent connections of each phase.
    #[arg(long, value_delimiter = ',', default_value = "1,16")]
    connections: Vec<usize>,
    /// Connections of the listing walk's leaf requests (minikeyvalue's rebuild uses 128).
    #[arg(long, default_value_t = 16)]
    walk_connections: usize,
    /// Longest a cold GET phase runs, in seconds (it stops early when every key was read
    /// once), and how long a HEAD phase runs (over the keys again and again).
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// kvs serve alone.
    #[arg(long)]
    no_nginx: bool,
    /// kvs serve's `--durability`: `batch` by default, since nginx acknowledges a PUT once
    /// its body is in the page cache, without fsync (kvs serve's own default is `always`).
    #[arg(long, default_value = "batch")]
    kvs_durability: String,
    /// Where the report (report.md) goes.
    #[arg(long, default_value = "target/httpbench")]
    report_dir: PathBuf,
}

/// One phase's outcome.
struct Outcome {
    /// CPU seconds the server used during the phase.
    cpu: f64,
    ops: usize,
    secs: f64,
    hist: Histogram<u64>,
    failures: usize,
}

impl Outcome {
    fn rate(&self) -> f64 {
        self.ops as f64 / self.secs
    }
    /// Server CPU microseconds per request.
    fn cpu_per_op(&self) -> f64 {
        self.cpu * 1e6 / self.ops.max(1) as f64
    }
    fn cell(&self) -> String {
        let ms = |q: f64| self.hist.value_at_quantile(q) as f64 / 1000.0;
        format!(
            "{:.0}/s (p50 {:.2} ms, p99 {:.2} ms; server CPU {:.0} us/req){}",
            self.rate(),
            ms(0.5),
            ms(0.99),
            self.cpu_per_op(),
            if self.failures > 0 {
                format!(", {} FAILED", self.failures)
            } else {
                String::new()
            }
        )
    }
}

/// minikeyvalue's volume path of key `i`: `/svXX/hh/hh/<name>` (the two directory levels
/// and the subvolume from a hash of the key, as its `key2path` does with md5).
fn path_of(i: usize) -> String {
    let name = format!("bench-key-{i:09}");
    let h = xxhash_rust::xxh3::xxh3_64(name.as_bytes()).to_le_bytes();
    format!("/sv{:02}/{:02x}/{:02x}/{name}", h[2] % 10, h[0], h[1])
}

/// Object `i`'s bytes: distinct per object, cheap to make and to check.
fn value_of(i: usize, len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len + 8);
    let mut x = (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// Runs `op` over `keys` on `conns` connections (each takes the next key), for at most
/// `limit`; returns the outcome. With `cycle`, starts over at the end of `keys` until
/// `limit`.
fn run<F>(addr: &str, keys: &[usize], conns: usize, limit: Duration, cycle: bool, op: F) -> Outcome
where
    F: Fn(&mut Client, usize) -> bool + Sync,
{
    let next = AtomicUsize::new(0);
    let hist = Mutex::new(Histogram::<u64>::new(3).expect("sigfig 3"));
    let failures = AtomicUsize::new(0);
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..conns {
            s.spawn(|| {
                let mut c = Client::connect(addr).expect("connecting");
                let mut local = Histogram::<u64>::new(3).expect("sigfig 3");
                while started.elapsed() < limit {
                    let mut n = next.fetch_add(1, Ordering::Relaxed);
                    if cycle {
                        n %= keys.len();
                    }
                    let Some(&k) = keys.get(n) else { break };
                    let t = Instant::now();
                    if !op(&mut c, k) {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                    let _ = local.record(t.elapsed().as_micros() as u64);
                }
                hist.lock().unwrap().add(local).expect("same bounds");
            });
        }
    });
    let secs = started.elapsed().as_secs_f64();
    let hist = hist.into_inner().unwrap();
    Outcome {
        cpu: 0.0,
        ops: hist.len() as usize,
        secs,
        hist,
        failures: failures.into_inner(),
    }
}

/// The walk minikeyvalue's rebuild does: `/`, each `/svXX/`, each `/svXX/hh/` one at a
/// time, then every `/svXX/hh/hh/` leaf on `conns` connections. Returns the outcome (one
/// op per request) and the files found.
fn walk(addr: &str, conns: usize) -> (Outcome, usize) {
    let started = Instant::now();
    let mut c = Client::connect(addr).expect("connecting");
    let mut hist = Histogram::<u64>::new(3).expect("sigfig 3");
    let list = |c: &mut Client, path: &str, hist: &mut Histogram<u64>| -> Vec<String> {
        let t = Instant::now();
        let r = c.req("GET", path, None).expect("listing");
        let _ = hist.record(t.elapsed().as_micros() as u64);
        if r.status != 200 {
            return Vec::new();
        }
        let v: serde_json::Value = serde_json::from_slice(&r.body).expect("JSON listing");
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e["name"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut leaves = Vec::new();
    for sv in list(&mut c, "/", &mut hist) {
        let svp = format!("/{sv}/");
        for a in list(&mut c, &svp, &mut hist) {
            let ap = format!("{svp}{a}/");
            for b in list(&mut c, &ap, &mut hist) {
                leaves.push(format!("{ap}{b}/"));
            }
        }
    }
    let files = AtomicUsize::new(0);
    let next = AtomicUsize::new(0);
    let shared = Mutex::new(hist);
    std::thread::scope(|s| {
        for _ in 0..conns {
            s.spawn(|| {
                let mut c = Client::connect(addr).expect("connecting");
                let mut local = Histogram::<u64>::new(3).expect("sigfig 3");
                while let Some(p) = leaves.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let n = list(&mut c, p, &mut local).len();
                    files.fetch_add(n, Ordering::Relaxed);
                }
                shared.lock().unwrap().add(local).expect("same bounds");
            });
        }
    });
    let hist = shared.into_inner().unwrap();
    let out = Outcome {
        cpu: 0.0,
        ops: hist.len() as usize,
        secs: started.elapsed().as_secs_f64(),
        hist,
        failures: 0,
    };
    (out, files.into_inner())
}

/// The rows of one server's run, in report order.
type Rows = Vec<(String, Outcome)>;

fn bench(kind: Kind, a: &Args, nginx: Option<&std::path::Path>) -> Result<Rows, String> {
    let root = a.dir.join(match kind {
        Kind::Kvs => "kvs",
        Kind::Nginx => "nginx",
    });
    let _ = std::fs::remove_dir_all(&root);
    let mut server = Server::start(kind, &root, nginx, &a.kvs_durability)?;
    let rss_empty = server.rss();
    let len = a.value_size as usize;
    let limit = Duration::from_secs_f64(a.seconds);
    let mut rows = Vec::new();
    // Disjoint key ranges, one per connection count.
    let parts: Vec<Vec<usize>> = (0..a.connections.len())
        .map(|j| (j * a.objects..(j + 1) * a.objects).collect())
        .collect();
    let all: Vec<usize> = parts.concat();
    for (c, keys) in a.connections.iter().zip(&parts) {
        let cpu = server.cpu_seconds();
        let mut o = run(&server.addr, keys, *c, Duration::MAX, false, |cl, k| {
            let v = value_of(k, len);
            matches!(cl.req("PUT", &path_of(k), Some(&v)), Ok(r) if r.status == 201 || r.status == 204)
        });
        o.cpu = server.cpu_seconds() - cpu;
        eprintln!("  {} PUT x{c}: {}", kind.name(), o.cell());
        rows.push((format!("PUT, {c} conn"), o));
    }
    if kind == Kind::Kvs {
        if let (Some(before), Some(after)) = (rss_empty, server.rss()) {
            eprintln!(
                "  kvs serve memory: {:.1} MiB resident when empty, {:.1} MiB with {} keys",
                before as f64 / (1 << 20) as f64,
                after as f64 / (1 << 20) as f64,
                a.objects * a.connections.len()
            );
        }
    }
    let cpu = server.cpu_seconds();
    let (mut o, files) = walk(&server.addr, a.walk_connections);
    o.cpu = server.cpu_seconds() - cpu;
    eprintln!(
        "  {} walk: {} listings, {files} files in {:.2} s",
        kind.name(),
        o.ops,
        o.secs
    );
    if files != all.len() {
        return Err(format!(
            "{}: the walk found {files} files of {}",
            kind.name(),
            all.len()
        ));
    }
    rows.push((format!("walk ({} leaf conn)", a.walk_connections), o));

    server = server.restart()?;
    if !drop_caches() {
        eprintln!("  (not root: the page cache was not dropped; nginx's GETs may be warm)");
    }
    // Each key read once, in an order unrelated to the write order.
    for (c, keys) in a.connections.iter().zip(&parts) {
        let mut keys = keys.clone();
        keys.sort_by_key(|&k| xxhash_rust::xxh3::xxh3_64(&k.to_le_bytes()));
        let cpu = server.cpu_seconds();
        let mut o = run(
            &server.addr,
            &keys,
            *c,
            limit,
            false,
            |cl, k| matches!(cl.req("GET", &path_of(k), None), Ok(r) if r.status == 200 && r.body == value_of(k, len)),
        );
        o.cpu = server.cpu_seconds() - cpu;
        eprintln!("  {} cold GET x{c}: {}", kind.name(), o.cell());
        rows.push((format!("cold GET, {c} conn"), o));
    }
    for c in &a.connections {
        let cpu = server.cpu_seconds();
        let mut o = run(
            &server.addr,
            &all,
            *c,
            limit,
            true,
            |cl, k| matches!(cl.req("HEAD", &path_of(k), None), Ok(r) if r.status == 200),
        );
        o.cpu = server.cpu_seconds() - cpu;
        eprintln!("  {} HEAD x{c}: {}", kind.name(), o.cell());
        rows.push((format!("HEAD, {c} conn"), o));
    }
    for (c, keys) in a.connections.iter().zip(&parts) {
        let cpu = server.cpu_seconds();
        let mut o = run(
            &server.addr,
            keys,
            *c,
            Duration::MAX,
            false,
            |cl, k| matches!(cl.req("DELETE", &path_of(k), None), Ok(r) if r.status == 204),
        );
        o.cpu = server.cpu_seconds() - cpu;
        eprintln!("  {} DELETE x{c}: {}", kind.name(), o.cell());
        rows.push((format!("DELETE, {c} conn"), o));
    }
    server.stop();
    let _ = std::fs::remove_dir_all(&root);
    Ok(rows)
}

fn main() {
    // `cargo bench` passes --bench; ignore it.
    let args = Args::parse_from(std::env::args().filter(|a| a != "--bench"));
    if let Err(e) = real_main(&args) {
        eprintln!("httpbench: {e}");
        std::process::exit(1);
    }
}

fn real_main(a: &Args) -> Result<(), String> {
    if a.connections.is_empty() || a.connections.contains(&0) || a.objects == 0 {
        return Err("--connections and --objects need counts of at least 1".into());
    }
    let nginx = if a.no_nginx {
        None
    } else {
        let n = find_nginx();
        if n.is_none() {
            eprintln!(
                "httpbench: nginx not found (Debian: apt-get install nginx-light); measuring \
                 kvs serve alone"
            );
        }
        n
    };
    eprintln!(
        "httpbench: {} objects of {} bytes per connection count {:?}, on {}",
        a.objects,
        a.value_size,
        a.connections,
        a.dir.display()
    );
    // nginx resolves relative paths against its prefix: give it absolute ones.
    std::fs::create_dir_all(&a.dir).map_err(|e| format!("{}: {e}", a.dir.display()))?;
    let dir = a.dir.canonicalize().map_err(|e| e.to_string())?;
    let a = &Args {
        dir,
        connections: a.connections.clone(),
        report_dir: a.report_dir.clone(),
        kvs_durability: a.kvs_durability.clone(),
        ..*a
    };
    let kvs_rows = bench(Kind::Kvs, a, None)?;
    let nginx_rows = match &nginx {
        Some(n) => Some(bench(Kind::Nginx, a, Some(n))?),
        None => None,
    };
    let _ = std::fs::remove_dir_all(&a.dir);
    let mut md = format!(
        "# httpbench\n\n{} objects of {} bytes per connection count; both servers on \
         127.0.0.1, data on the same disk ({}).\n\n",
        a.objects,
        a.value_size,
        a.dir.display()
    );
    md += "| phase | kvs serve | nginx | kvs / nginx (rate; walk: time) | nginx / kvs server CPU per request |\n|---|---|---|---|---|\n";
    for (i, (name, k)) in kvs_rows.iter().enumerate() {
        let cpu_ratio = match &nginx_rows {
            Some(rows) if k.cpu > 0.0 => format!("{:.2}x", rows[i].1.cpu_per_op() / k.cpu_per_op()),
            _ => "-".into(),
        };
        let (n, ratio) = match &nginx_rows {
            Some(rows) => {
                let n = &rows[i].1;
                let ratio = if name.starts_with("walk") {
                    n.secs / k.secs
                } else {
                    k.rate() / n.rate()
                };
                (
                    if name.starts_with("walk") {
                        format!("{:.2} s", n.secs)
                    } else {
                        n.cell()
                    },
                    format!("{ratio:.2}x"),
                )
            }
            None => ("-".into(), "-".into()),
        };
        let kc = if name.starts_with("walk") {
            format!("{:.2} s ({} listings)", k.secs, k.ops)
        } else {
            k.cell()
        };
        md += &format!("| {name} | {kc} | {n} | {ratio} | {cpu_ratio} |\n");
    }
    println!("{md}");
    std::fs::create_dir_all(&a.report_dir).map_err(|e| e.to_string())?;
    let at = a.report_dir.join("report.md");
    std::fs::write(&at, md).map_err(|e| e.to_string())?;
    eprintln!("httpbench: report in {}", at.display());
    Ok(())
}

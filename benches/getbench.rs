//! getbench: the Rust side of benches/getbench.py, single-threaded gets of 100 KB values
//! through the Rust API, on a store the Python script wrote, so that both languages read
//! the same records in the same order.
//!
//! ```sh
//! cargo bench --bench getbench -- DIR cold RECORDS SEED FROM TO  # keys key-0..RECORDS,
//!                                             # shuffled by SEED, positions FROM..TO
//! cargo bench --bench getbench -- DIR ring COUNT SIZE      # put COUNT values, get them back
//! ```
//! Prints one line: `gets=N seconds=S p50_us=A p99_us=B`.

use std::time::Instant;

use hdrhistogram::Histogram;
use kvs::{Options, Store};

/// The order getbench.py reads keys in: the same small generator on both sides.
fn shuffled(n: u64, seed: u64) -> Vec<u64> {
    let mut v: Vec<u64> = (0..n).collect();
    let mut x = seed | 1;
    for i in (1..v.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.swap(i, (x % (i as u64 + 1)) as usize);
    }
    v
}

fn main() {
    let args: Vec<String> = std::env::args().filter(|a| a != "--bench").collect();
    if args.len() != 5 && args.len() != 7 {
        eprintln!("usage: getbench DIR cold RECORDS SEED FROM TO | getbench DIR ring COUNT SIZE");
        std::process::exit(2);
    }
    let num = |i: usize| -> u64 { args[i].parse().expect("a number") };
    let store = Store::open(&args[1], Options::default()).expect("open the store");
    let mut hist = Histogram::<u64>::new(3).expect("sigfig 3");
    let mut buf = Vec::new();
    let keys: Vec<Vec<u8>> = match args[2].as_str() {
        "cold" => shuffled(num(3), num(4))[num(5) as usize..num(6) as usize]
            .iter()
            .map(|i| format!("key-{i}").into_bytes())
            .collect(),
        "ring" => {
            let (count, size) = (num(3), num(4) as usize);
            let value: Vec<u8> = (0..size).map(|i| (i * 7 + 3) as u8).collect();
            (0..count)
                .map(|i| {
                    let k = format!("ring-{i}").into_bytes();
                    store.put(&k, &value).expect("put");
                    k
                })
                .collect()
        }
        m => panic!("mode {m}: cold or ring"),
    };
    let started = Instant::now();
    for k in &keys {
        let t = Instant::now();
        let v = store.get(k).expect("get").expect("the key is there");
        let _ = hist.record(t.elapsed().as_nanos() as u64 / 1000);
        buf = v;
    }
    let secs = started.elapsed().as_secs_f64();
    assert!(!buf.is_empty() || keys.is_empty());
    store.close().expect("close");
    println!(
        "gets={} seconds={secs:.4} p50_us={} p99_us={}",
        keys.len(),
        hist.value_at_quantile(0.5),
        hist.value_at_quantile(0.99)
    );
}

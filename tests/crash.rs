//! Crash test: a real writer process is killed with SIGKILL at random moments; after each
//! kill the store is reopened and every key must hold exactly its last acknowledged state
//! (or the state of an operation that was in flight, never acknowledged), no get may
//! return bytes that were never put for that key, and verify must find no corruption.
//!
//! The normal run does a few cycles; the long run (at least 100 cycles) is
//! `cargo test --release --test crash -- --ignored crash_cycles_long`.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{value_for, Rng, TempDir};
use kvs::{Durability, Options, Store};

const KEYS: u64 = 150;

fn opts(mode: Durability) -> Options {
    Options::default()
        .buffer_size(4 << 20)
        .max_value_size(1 << 20)
        .flush_interval(Duration::from_millis(3))
        .checkpoint_bytes(1 << 20)
        .expected_records(KEYS)
        .durability(mode)
        // Small segments and an eager reclaimer, so kills land in the middle of moves.
        .segment_size(2 << 20)
        .reclaim_threshold(0.05)
        .reclaim_urgent(0.05)
        .reclaim_rate(0)
}

/// One operation of a writer: (key index, Some(value length) for a put, None for a delete).
fn op(seed: u64, i: u64) -> (u64, Option<usize>) {
    let mut r = Rng(seed.wrapping_mul(0x9e37_79b9) ^ i.wrapping_mul(0x85eb_ca6b) | 1);
    let k = r.below(KEYS);
    if r.below(10) < 3 {
        (k, None)
    } else {
        let len = match r.below(10) {
            0 => 0,
            1..=6 => r.below(4000) as usize,
            _ => r.below(300_000) as usize,
        };
        (k, Some(len))
    }
}

fn key(k: u64) -> Vec<u8> {
    format!("key-{k}").into_bytes()
}

fn version(seed: u64, i: u64) -> u64 {
    seed << 32 | i
}

/// Besides op(seed, i), op i with i % 7 == 3 is followed by an atomic batch that writes
/// every group key with version(seed, i) (g5 is deleted when i is odd): after a kill the
/// group must hold one batch's writes whole.
const GROUP: u64 = 6;

fn group_batch(seed: u64, i: u64) -> kvs::Batch {
    let mut b = kvs::Batch::new();
    for g in 0..GROUP - 1 {
        let k = format!("group-{g}").into_bytes();
        let n = 100 + ((i * 7919 + g * 104_729) % 30_000) as usize;
        b.put(&k, &value_for(&k, version(seed, i), n));
    }
    if i % 2 == 1 {
        b.delete(format!("group-{}", GROUP - 1).as_bytes());
    } else {
        let k = format!("group-{}", GROUP - 1).into_bytes();
        b.put(&k, &value_for(&k, version(seed, i), 64));
    }
    b
}

/// The version the group holds (None: never written); panics if a batch is torn.
fn group_version(store: &Store, seed: u64) -> Option<u64> {
    let mut seen = Vec::new();
    for g in 0..GROUP - 1 {
        let k = format!("group-{g}").into_bytes();
        seen.push(store.get(&k).unwrap().map(|b| {
            let v = u64::from_le_bytes(b[..8].try_into().unwrap());
            assert_eq!(
                b,
                value_for(&k, v, b.len()),
                "seed {seed}: group-{g} damaged"
            );
            v
        }));
    }
    assert!(
        seen.iter().all(|v| *v == seen[0]),
        "seed {seed}: a torn batch: {seen:?}"
    );
    let last = store
        .get(format!("group-{}", GROUP - 1).as_bytes())
        .unwrap();
    if let Some(v) = seen[0] {
        assert_eq!(
            last.is_none(),
            v % 2 == 1,
            "seed {seed}: group-5 against {v:#x}"
        );
    }
    seen[0]
}

/// The writer, run as a child process: applies op(seed, 0), op(seed, 1), ... and prints
/// "ack N" when every operation up to N is durable (after each op in `always` mode, after
/// each sync in `batch` mode).
#[test]
#[ignore = "helper: runs only as a child of the crash tests"]
fn crash_writer() {
    let (Ok(dir), Ok(seed), Ok(mode)) = (
        std::env::var("KVS_CRASH_DIR"),
        std::env::var("KVS_CRASH_SEED"),
        std::env::var("KVS_CRASH_MODE"),
    ) else {
        return;
    };
    let seed: u64 = seed.parse().unwrap();
    let always = mode == "always";
    let mode = if always {
        Durability::Always
    } else {
        Durability::Batch
    };
    let store = std::sync::Arc::new(Store::open(&dir, opts(mode)).unwrap());
    println!("open");
    // Besides the background reclaimer: compactions back to back.
    let compactor = store.clone();
    std::thread::spawn(move || loop {
        let r = compactor.compact().unwrap();
        if r.segments_freed > 0 {
            println!("compacted {}", r.segments_freed);
        }
        std::thread::sleep(Duration::from_millis(5));
    });
    for i in 0.. {
        let (k, len) = op(seed, i);
        match len {
            Some(n) => store
                .put(&key(k), &value_for(&key(k), version(seed, i), n))
                .unwrap(),
            None => {
                store.delete(&key(k)).unwrap();
            }
        }
        if i % 7 == 3 {
            store.write(&group_batch(seed, i)).unwrap();
        }
        if always || i % 10 == 9 {
            if !always {
                store.sync().unwrap();
            }
            println!("ack {i}");
        }
    }
}

/// Runs one writer for a random time, kills it, and returns the last acknowledged op and
/// the segments its compactions freed.
fn run_and_kill(dir: &std::path::Path, seed: u64, mode: &str, millis: u64) -> (Option<u64>, u64) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "crash_writer",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("KVS_CRASH_DIR", dir)
        .env("KVS_CRASH_SEED", seed.to_string())
        .env("KVS_CRASH_MODE", mode)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut last = None;
        let mut freed = 0;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(n) = line.split_whitespace().skip_while(|w| *w != "ack").nth(1) {
                last = n.parse::<u64>().ok().or(last);
            }
            if let Some(n) = line
                .split_whitespace()
                .skip_while(|w| *w != "compacted")
                .nth(1)
            {
                freed += n.parse::<u64>().unwrap_or(0);
            }
        }
        (last, freed)
    });
    std::thread::sleep(Duration::from_millis(millis));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    reader.join().unwrap()
}

/// Checks the store against the model and the writer's acknowledgements, then makes the
/// model what the store holds. `model[k]` is the version (seed, op) of k's value, or None.
fn check_cycle(
    dir: &std::path::Path,
    seed: u64,
    acked: Option<u64>,
    model: &mut HashMap<u64, Option<(u64, usize)>>,
) {
    // Which ops may have landed: all up to the last ack surely, later ones maybe. The
    // writer cannot have started more ops than it could do in the time; bound generously.
    let sure = acked.map_or(0, |a| a + 1);
    let mut must: HashMap<u64, Option<(u64, usize)>> = model.clone();
    let mut maybe: HashMap<u64, Vec<Option<(u64, usize)>>> = HashMap::new();
    for i in 0..sure + 100_000 {
        let (k, len) = op(seed, i);
        let state = len.map(|n| (version(seed, i), n));
        if i < sure {
            must.insert(k, state);
        } else {
            maybe.entry(k).or_default().push(state);
        }
    }
    let store = Store::open(dir, opts(Durability::Batch)).unwrap();
    let report = store.verify().unwrap();
    assert_eq!(report.corrupt, 0, "{report:?}");
    // The group holds one batch whole, no older than the last acknowledged one.
    if let (Some(a), Some(v)) = (acked, group_version(&store, seed)) {
        let newest_acked = (0..=a).rev().find(|i| i % 7 == 3);
        if let Some(b) = newest_acked {
            assert!(
                v >= version(seed, b),
                "seed {seed}: group at {v:#x}, batch {b} was acknowledged"
            );
        }
    } else if acked.is_some_and(|a| a >= 3) {
        assert!(
            group_version(&store, seed).is_some(),
            "seed {seed}: batch lost"
        );
    }
    for k in 0..KEYS {
        let kb = key(k);
        let got = store.get(&kb).unwrap();
        let expected = must.get(&k).copied().flatten();
        let matches = |state: Option<(u64, usize)>, got: &Option<Vec<u8>>| match (state, got) {
            (None, None) => true,
            (Some((v, n)), Some(bytes)) => bytes.len() == n && *bytes == value_for(&kb, v, n),
            _ => false,
        };
        let found = if matches(expected, &got) {
            expected
        } else {
            let cands = maybe.get(&k).cloned().unwrap_or_default();
            match cands.into_iter().find(|s| matches(*s, &got)) {
                Some(s) => s,
                None => {
                    let origin = got.as_ref().filter(|b| b.len() >= 8).map(|b| {
                        let v = u64::from_le_bytes(b[..8].try_into().unwrap());
                        format!("written by seed {} op {}", v >> 32, v & 0xffff_ffff)
                    });
                    let log = std::fs::read_to_string(dir.join(kvs::LOG_FILE)).unwrap_or_default();
                    let tail: Vec<&str> = log.lines().rev().take(40).collect();
                    panic!(
                        "seed {seed}: key {k} holds {:?} bytes ({origin:?}); last acknowledged \
                         state {expected:?} (ack {acked:?})\nLOG, newest first:\n{}",
                        got.as_ref().map(|b| b.len()),
                        tail.join("\n")
                    )
                }
            }
        };
        model.insert(k, found);
    }
    store.close().unwrap();
}

fn crash_cycles(cycles: u64, first_seed: u64) {
    let dir = TempDir::new("crash");
    let mut model: HashMap<u64, Option<(u64, usize)>> = HashMap::new();
    let mut rng = Rng(first_seed);
    let mut acks = 0;
    let mut freed = 0;
    for c in 0..cycles {
        let seed = first_seed + c;
        let mode = if c % 2 == 0 { "always" } else { "batch" };
        let millis = 30 + rng.below(250);
        let (acked, f) = run_and_kill(dir.path(), seed, mode, millis);
        acks += acked.map_or(0, |a| a + 1);
        freed += f;
        check_cycle(dir.path(), seed, acked, &mut model);
    }
    // And only about reclaiming if segments were given back while writers ran.
    assert!(freed > 0, "no segment was freed in {cycles} cycles");
    // And about incremental checkpoints if opens after a kill applied IMAGE_delta blocks
    // (the writer's checkpoints after its open's whole image are blocks).
    let log = std::fs::read_to_string(dir.path().join(kvs::LOG_FILE)).unwrap_or_default();
    let with_blocks = log.matches("changes applied").count() as u64;
    eprintln!("{with_blocks} of {cycles} opens after a kill applied IMAGE_delta blocks");
    assert!(
        with_blocks > 0 || cycles < 20,
        "no open applied IMAGE_delta blocks in {cycles} cycles"
    );
    // The test is only meaningful if the writers got work acknowledged before the kills.
    assert!(
        acks > cycles * 5,
        "only {acks} ops acknowledged in {cycles} cycles"
    );
}

#[test]
fn crash_cycles_short() {
    crash_cycles(8, 1000);
}

#[test]
#[ignore = "long: run with --ignored (see the module docs)"]
fn crash_cycles_long() {
    let cycles = std::env::var("KVS_CRASH_CYCLES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(120);
    crash_cycles(cycles, 5000);
}

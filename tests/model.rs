//! Model tests: random put/get/delete/overwrite sequences checked against a HashMap, with
//! close/reopen cycles, small rings (wrap-around, back-pressure, reuse of flushed space),
//! and several threads at once.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::{is_version_of, value_for, value_size, Rng, TempDir};
use kvs::{Durability, Options, Store};

fn small_opts() -> Options {
    // A ring just large enough for one 5 MiB record: every large put wraps and waits.
    Options::default()
        .buffer_size(6 << 20)
        .flush_horizon(1 << 20)
        .flush_interval(Duration::from_millis(2))
        .expected_records(64)
}

fn check_all(store: &Store, model: &HashMap<Vec<u8>, Vec<u8>>, universe: u64) {
    for k in 0..universe {
        let key = format!("key-{k}").into_bytes();
        let got = store.get(&key).unwrap();
        assert_eq!(got.as_ref(), model.get(&key), "key {k}");
        let owned = store.get_value(&key).unwrap();
        assert_eq!(owned.as_deref(), model.get(&key).map(|v| &v[..]), "key {k}");
    }
}

fn run_model(seed: u64, ops: usize, universe: u64, reopen_every: usize, opts: Options) {
    let dir = TempDir::new("model");
    let mut rng = Rng(seed);
    let mut model: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
    let mut store = Store::open(dir.path(), opts.clone()).unwrap();
    assert_eq!(
        store.stats().direct_io,
        opts.get_direct_io(),
        "O_DIRECT where asked"
    );
    let max = opts.get_max_value_size();
    for step in 0..ops {
        let k = rng.below(universe);
        let key = format!("key-{k}").into_bytes();
        match rng.below(10) {
            0..=4 => {
                let v = value_for(&key, step as u64, value_size(&mut rng, max));
                store.put(&key, &v).unwrap();
                model.insert(key, v);
            }
            5..=6 => {
                let got = store.get(&key).unwrap();
                assert_eq!(
                    got.as_ref(),
                    model.get(&key),
                    "seed {seed} step {step} key {k}"
                );
            }
            7 => {
                let got = store.get_value(&key).unwrap();
                assert_eq!(
                    got.as_deref(),
                    model.get(&key).map(|v| &v[..]),
                    "seed {seed} step {step} key {k}"
                );
            }
            8 => {
                let existed = store.delete(&key).unwrap();
                assert_eq!(
                    existed,
                    model.remove(&key).is_some(),
                    "seed {seed} step {step}"
                );
            }
            _ => {
                let mut buf = vec![0u8; rng.below(300 << 10) as usize];
                match (store.get_into(&key, &mut buf), model.get(&key)) {
                    (Ok(Some(n)), Some(v)) => assert_eq!(&buf[..n], &v[..]),
                    (Ok(None), None) => {}
                    (Err(kvs::Error::BufferTooSmall { needed }), Some(v)) => {
                        assert_eq!(needed, v.len());
                        assert!(buf.len() < v.len());
                    }
                    (r, m) => panic!(
                        "seed {seed} step {step}: {r:?} vs model {:?}",
                        m.map(|v| v.len())
                    ),
                }
            }
        }
        if reopen_every > 0 && step % reopen_every == reopen_every - 1 {
            if rng.below(2) == 0 {
                store.close().unwrap();
            } else {
                drop(store);
            }
            store = Store::open(dir.path(), opts.clone()).unwrap();
            assert!(store.stats().opened_from_image);
            assert_eq!(store.stats().records, model.len() as u64);
            let report = store.verify().unwrap();
            assert_eq!((report.records, report.corrupt), (model.len() as u64, 0));
            for values in [false, true] {
                let mut seen = HashMap::new();
                store
                    .for_each_record(values, |k, v, n| {
                        assert_eq!(n, model[k].len());
                        seen.insert(k.to_vec(), v.to_vec());
                        true
                    })
                    .unwrap();
                assert_eq!(seen.len(), model.len());
                for (k, v) in &seen {
                    let want = if values { model[k].clone() } else { Vec::new() };
                    assert_eq!(v, &want);
                }
            }
            check_all(&store, &model, universe);
        }
    }
    store.close().unwrap();
    let store = Store::open(dir.path(), opts).unwrap();
    check_all(&store, &model, universe);
}

#[test]
fn model_small_ring_with_reopens() {
    for seed in 1..=3u64 {
        run_model(seed * 7919, 1500, 60, 300, small_opts());
    }
}

#[test]
fn model_small_ring_with_direct_reads() {
    let opts = small_opts().direct_reads(true).buffer_size(6 << 20);
    assert!(Options::default().get_direct_reads(), "the default");
    run_model(6 * 7919, 1500, 60, 300, opts.clone());
    // Through the page cache for writes, O_DIRECT for reads: unaligned file ends.
    run_model(7 * 7919, 1500, 60, 300, opts.direct_io(false));
}

#[test]
fn model_in_every_durability_mode() {
    for (seed, d) in [(11u64, Durability::Always), (12, Durability::None)] {
        run_model(seed * 7919, 800, 60, 200, small_opts().durability(d));
    }
}

#[test]
fn model_with_constant_checkpoints() {
    for (seed, d) in [(21u64, Durability::Always), (22, Durability::Batch)] {
        let opts = small_opts().durability(d).checkpoint_bytes(64 << 10);
        run_model(seed * 7919, 1500, 60, 300, opts);
    }
}

#[test]
fn model_small_ring_through_the_page_cache() {
    for seed in 4..=5u64 {
        let opts = small_opts().direct_io(false).direct_reads(false);
        run_model(seed * 7919, 1500, 60, 300, opts);
    }
}

#[test]
fn model_many_small_records() {
    let opts = Options::default()
        .buffer_size(256 << 10)
        .max_value_size(64 << 10)
        .flush_horizon(32 << 10)
        .expected_records(16);
    run_model(42, 20_000, 3000, 5000, opts.clone());
    run_model(43, 20_000, 3000, 5000, opts.direct_io(false));
}

#[test]
fn model_rebuild_without_image() {
    let dir = TempDir::new("rebuild");
    let mut rng = Rng(5);
    let mut model = HashMap::new();
    for round in 0..4 {
        let store = Store::open(dir.path(), small_opts()).unwrap();
        if round > 0 {
            assert!(!store.stats().opened_from_image, "round {round}");
        }
        check_all(&store, &model, 200);
        for step in 0..400u64 {
            let key = format!("key-{}", rng.below(200)).into_bytes();
            if rng.below(4) == 0 {
                store.delete(&key).unwrap();
                model.remove(&key);
            } else {
                let v = value_for(&key, step, rng.below(20_000) as usize);
                store.put(&key, &v).unwrap();
                model.insert(key, v);
            }
        }
        store.close().unwrap();
        std::fs::remove_file(dir.path().join(kvs::IMAGE_FILE)).unwrap();
    }
}

#[test]
fn threads_put_get_delete_at_once() {
    threads(small_opts().buffer_size(8 << 20));
}

#[test]
fn threads_with_group_commit() {
    let store_opts = small_opts()
        .buffer_size(8 << 20)
        .durability(Durability::Always);
    threads(store_opts);
}

fn threads(opts: Options) {
    let dir = TempDir::new("threads");
    let store = Arc::new(Store::open(dir.path(), opts).unwrap());
    // Shared keys that every writer overwrites: readers check each value is some version
    // of that key (value_for encodes key and version), never another key's bytes.
    let shared: Vec<Vec<u8>> = (0..8).map(|i| format!("shared-{i}").into_bytes()).collect();
    let mut handles = Vec::new();
    for t in 0..4u64 {
        let store = store.clone();
        let shared = shared.clone();
        handles.push(std::thread::spawn(move || {
            let mut rng = Rng(t + 100);
            let mut model: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
            for step in 0..1500u64 {
                let key = format!("t{t}-{}", rng.below(50)).into_bytes();
                match rng.below(6) {
                    0 | 1 => {
                        let v = value_for(&key, step, value_size(&mut rng, 1 << 20));
                        store.put(&key, &v).unwrap();
                        model.insert(key, v);
                    }
                    2 => assert_eq!(store.delete(&key).unwrap(), model.remove(&key).is_some()),
                    3 => assert_eq!(store.get(&key).unwrap().as_ref(), model.get(&key)),
                    4 => {
                        let sk = &shared[rng.below(8) as usize];
                        let len = 8 + rng.below(150_000) as usize;
                        store.put(sk, &value_for(sk, t << 32 | step, len)).unwrap();
                    }
                    _ => {
                        let sk = &shared[rng.below(8) as usize];
                        if let Some(v) = store.get(sk).unwrap() {
                            assert!(
                                is_version_of(sk, &v),
                                "a get of a shared key returned bytes no writer put"
                            );
                        }
                    }
                }
            }
            model
        }));
    }
    let models: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let store = Arc::try_unwrap(store).ok().unwrap();
    store.close().unwrap();
    let store = Store::open(dir.path(), small_opts()).unwrap();
    for model in &models {
        for (k, v) in model {
            assert_eq!(store.get(k).unwrap().as_ref(), Some(v));
        }
    }
}

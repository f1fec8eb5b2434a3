//! Listing keys (`Store::keys`, `Store::scan`): checked against a model through writes,
//! compactions, reopens and lost summaries; keys that are not written during an iteration
//! come exactly once while other keys change; listing reads no values.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{value_for, Rng, TempDir};
use kvs::{Error, Options, Store, IMAGE_FILE};

fn opts() -> Options {
    common::small_segments()
}

fn key(k: u64) -> Vec<u8> {
    // Three prefixes, so that prefix listings have something to leave out.
    format!("{}/{k}", ["a", "ab", "b"][(k % 3) as usize]).into_bytes()
}

/// `keys(prefix)` and `scan(prefix)` against the model: every key once, with its length
/// and value.
fn check(store: &Store, model: &HashMap<u64, Vec<u8>>, what: &str) {
    for prefix in [&b""[..], b"a", b"ab", b"b/", b"zz"] {
        let want: BTreeMap<Vec<u8>, &Vec<u8>> = model
            .iter()
            .map(|(&k, v)| (key(k), v))
            .filter(|(k, _)| k.starts_with(prefix))
            .collect();
        let mut got = BTreeMap::new();
        for item in store.keys(prefix).unwrap() {
            let item = item.unwrap();
            assert!(item.value.is_empty());
            let dup = got.insert(item.key.clone(), item.value_len);
            assert!(dup.is_none(), "{what}: {:?} listed twice", item.key);
        }
        let lens: BTreeMap<Vec<u8>, usize> =
            want.iter().map(|(k, v)| (k.clone(), v.len())).collect();
        assert_eq!(got, lens, "{what}: keys({prefix:?})");
        let mut scanned = BTreeMap::new();
        for item in store.scan(prefix).unwrap() {
            let item = item.unwrap();
            assert_eq!(item.value.len(), item.value_len);
            scanned.insert(item.key, item.value);
        }
        let values: BTreeMap<Vec<u8>, Vec<u8>> =
            want.into_iter().map(|(k, v)| (k, v.clone())).collect();
        assert_eq!(scanned, values, "{what}: scan({prefix:?})");
    }
}

fn write(store: &Store, model: &mut HashMap<u64, Vec<u8>>, rng: &mut Rng, n: u64) {
    for i in 0..n {
        let k = rng.below(300);
        if rng.below(4) == 0 {
            store.delete(&key(k)).unwrap();
            model.remove(&k);
        } else {
            let v = value_for(&key(k), i + rng.below(1 << 40), rng.below(9000) as usize);
            store.put(&key(k), &v).unwrap();
            model.insert(k, v);
        }
    }
}

#[test]
fn listings_match_the_model_through_compaction_reopens_and_lost_summaries() {
    let dir = TempDir::new("iter-model");
    let mut model = HashMap::new();
    let mut rng = Rng(3);
    for round in 0..8u64 {
        let store = Store::open(dir.path(), opts()).unwrap();
        check(&store, &model, &format!("round {round} opened"));
        write(&store, &mut model, &mut rng, 250);
        check(&store, &model, &format!("round {round} written"));
        if round % 2 == 1 {
            store.compact().unwrap();
            check(&store, &model, &format!("round {round} compacted"));
        }
        store.close().unwrap();
        match round % 4 {
            1 => fs::remove_file(dir.path().join(IMAGE_FILE)).unwrap(),
            3 => {
                // Lost summaries: listings read those segments instead.
                fs::remove_dir_all(dir.path().join("summary")).unwrap();
            }
            _ => {}
        }
    }
}

#[test]
fn listing_keys_reads_no_values_when_summaries_cover_the_log() {
    let dir = TempDir::new("iter-reads");
    let mut model = HashMap::new();
    let mut rng = Rng(8);
    let store = Store::open(dir.path(), opts()).unwrap();
    write(&store, &mut model, &mut rng, 600);
    let keys = store.keys(b"").unwrap();
    // Written by this open: the summaries being written cover every segment.
    assert_eq!(keys.count(), model.len());
    let mut keys = store.keys(b"").unwrap();
    for item in keys.by_ref() {
        item.unwrap();
    }
    assert_eq!(keys.scanned_bytes(), 0);
    drop(keys);
    store.close().unwrap();
    fs::remove_dir_all(dir.path().join("summary")).unwrap();
    let store = Store::open(dir.path(), opts()).unwrap();
    let mut keys = store.keys(b"").unwrap();
    assert_eq!(keys.by_ref().count(), model.len());
    assert!(
        keys.scanned_bytes() > 0,
        "no summaries: the segments are read"
    );
}

#[test]
fn a_key_not_written_during_the_iteration_comes_exactly_once() {
    let dir = TempDir::new("iter-live");
    let o = opts()
        .background_reclaim(true)
        .reclaim_threshold(0.05)
        .reclaim_urgent(0.5)
        .reclaim_rate(0);
    let store = Arc::new(Store::open(dir.path(), o).unwrap());
    let stable: Vec<Vec<u8>> = (0..150).map(|k| format!("s/{k}").into_bytes()).collect();
    for k in &stable {
        store.put(k, &value_for(k, 1, 3000)).unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let writer = {
        let (store, stop, written) = (store.clone(), stop.clone(), written.clone());
        std::thread::spawn(move || {
            let mut rng = Rng(77);
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) && n < 200_000 {
                let k = format!("w/{}", rng.below(100)).into_bytes();
                if rng.below(3) == 0 {
                    store.delete(&k).unwrap();
                } else {
                    store
                        .put(&k, &value_for(&k, n, 2000 + rng.below(8000) as usize))
                        .unwrap();
                }
                n += 1;
                written.store(n, Ordering::Relaxed);
            }
        })
    };
    let mut freed = 0;
    for round in 0..30 {
        // Writes between the rounds, however the threads are scheduled (a CI run where the
        // writer had starved freed nothing).
        while written.load(Ordering::Relaxed) < (round + 1) * 300 && !writer.is_finished() {
            std::thread::sleep(Duration::from_millis(1));
        }
        // Moves between the iterations (none runs during one).
        freed += store.compact().unwrap().segments_freed;
        let mut seen = HashMap::new();
        for item in store.keys(b"").unwrap() {
            let item = item.unwrap();
            *seen.entry(item.key).or_insert(0) += 1;
        }
        assert!(seen.values().all(|&n| n == 1), "round {round}: a key twice");
        for k in &stable {
            assert_eq!(seen.get(k), Some(&1), "round {round}: {k:?}");
        }
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    // Records were moved between the iterations.
    assert!(freed > 0, "no segment was freed");
}

#[test]
fn compact_waits_for_an_open_iteration_then_says_why() {
    let dir = TempDir::new("iter-compact");
    let store = Store::open(dir.path(), opts()).unwrap();
    for k in 0..100u64 {
        store.put(&key(k), &value_for(&key(k), 1, 5000)).unwrap();
        store.put(&key(k), &value_for(&key(k), 2, 5000)).unwrap();
    }
    let keys = store.keys(b"").unwrap();
    match store.compact() {
        Err(Error::InvalidArgument(why)) => assert!(why.contains("iteration"), "{why}"),
        other => panic!("compact during an iteration: {other:?}"),
    }
    drop(keys);
    assert!(store.compact().unwrap().segments_freed > 0);
}

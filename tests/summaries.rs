//! Key summaries: every segment gets one, a rebuild without IMAGE_file reads them instead
//! of the segments, and a summary that is missing, damaged or of another segment is
//! ignored (the segment is read instead, and gets a new summary).

mod common;

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{value_for, Rng, TempDir};
use kvs::{Durability, Options, Store, IMAGE_FILE};

fn opts() -> Options {
    common::small_segments()
}

fn key(k: u64) -> Vec<u8> {
    format!("key-{k}").into_bytes()
}

fn summaries(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir.join("summary"))
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    v.retain(|p| p.extension().is_none());
    v.sort();
    v
}

fn check(store: &Store, model: &HashMap<u64, Vec<u8>>, universe: u64, what: &str) {
    for k in 0..universe {
        let got = store.get(&key(k)).unwrap();
        assert_eq!(got.as_ref(), model.get(&k), "{what}: key {k}");
    }
}

/// Opens `dir` without IMAGE_file (a full rebuild) and checks it against `model`.
fn rebuild(dir: &Path, model: &HashMap<u64, Vec<u8>>, universe: u64, what: &str) -> kvs::Stats {
    let _ = fs::remove_file(dir.join(IMAGE_FILE));
    let store = Store::open(dir, opts()).unwrap();
    let stats = store.stats();
    assert!(!stats.opened_from_image, "{what}");
    check(&store, model, universe, what);
    assert!(store.verify().unwrap().is_clean(), "{what}");
    store.close().unwrap();
    stats
}

fn fill(store: &Store, model: &mut HashMap<u64, Vec<u8>>, rng: &mut Rng, n: u64, universe: u64) {
    for i in 0..n {
        let k = rng.below(universe);
        if rng.below(5) == 0 {
            store.delete(&key(k)).unwrap();
            model.remove(&k);
        } else {
            let v = value_for(
                &key(k),
                i + rng.below(1 << 30),
                1000 + rng.below(20_000) as usize,
            );
            store.put(&key(k), &v).unwrap();
            model.insert(k, v);
        }
    }
}

#[test]
fn after_a_clean_close_every_segment_has_a_summary_and_a_rebuild_reads_only_those() {
    let dir = TempDir::new("sum-basic");
    let mut model = HashMap::new();
    let mut rng = Rng(5);
    let store = Store::open(dir.path(), opts()).unwrap();
    fill(&store, &mut model, &mut rng, 400, 150);
    let segments = store.stats().segments;
    assert!(segments >= 5, "{segments} segments");
    store.close().unwrap();
    // The open segment too: one summary per segment.
    assert_eq!(summaries(dir.path()).len() as u64, segments);
    let stats = rebuild(dir.path(), &model, 150, "rebuilt from summaries");
    assert_eq!(stats.summarised_segments, segments);
    // The rebuild continued the open segment's summary: more puts, close, rebuild again.
    let store = Store::open(dir.path(), opts()).unwrap();
    fill(&store, &mut model, &mut rng, 200, 150);
    let segments = store.stats().segments;
    store.close().unwrap();
    let stats = rebuild(dir.path(), &model, 150, "second rebuild");
    assert_eq!(stats.summarised_segments, segments);
}

#[test]
fn a_damaged_or_misplaced_summary_is_ignored_and_the_segment_read_instead() {
    let dir = TempDir::new("sum-damage");
    let mut model = HashMap::new();
    let mut rng = Rng(9);
    let store = Store::open(dir.path(), opts()).unwrap();
    fill(&store, &mut model, &mut rng, 400, 150);
    let segments = store.stats().segments;
    store.close().unwrap();
    let files = summaries(dir.path());
    assert!(files.len() >= 4);
    // Flip a byte in every position class of one summary, in turn.
    let victim = files[1].clone();
    let good = fs::read(&victim).unwrap();
    for at in [0, 20, 40, 64, 70, 90, good.len() / 2, good.len() - 1] {
        let mut bad = good.clone();
        bad[at] ^= 0x40;
        fs::write(&victim, &bad).unwrap();
        let stats = rebuild(dir.path(), &model, 150, &format!("byte {at} flipped"));
        assert_eq!(stats.summarised_segments, segments - 1, "byte {at}");
        // The segment was read, and its summary written again.
        assert_eq!(fs::read(&victim).unwrap(), good, "byte {at}: rewritten");
    }
    // Cut short, and another segment's summary under this one's name.
    fs::write(&victim, &good[..good.len() - 9]).unwrap();
    let stats = rebuild(dir.path(), &model, 150, "cut short");
    assert_eq!(stats.summarised_segments, segments - 1);
    fs::copy(&files[2], &victim).unwrap();
    let stats = rebuild(dir.path(), &model, 150, "another segment's");
    assert_eq!(stats.summarised_segments, segments - 1);
    assert_eq!(fs::read(&victim).unwrap(), good);
}

#[test]
fn a_store_without_summaries_gets_them_at_its_first_rebuild() {
    let dir = TempDir::new("sum-old");
    let mut model = HashMap::new();
    let mut rng = Rng(13);
    let store = Store::open(dir.path(), opts()).unwrap();
    fill(&store, &mut model, &mut rng, 400, 150);
    let segments = store.stats().segments;
    store.close().unwrap();
    fs::remove_dir_all(dir.path().join("summary")).unwrap();
    // As a store written before summaries: every segment is read.
    let stats = rebuild(dir.path(), &model, 150, "no summaries");
    assert_eq!(stats.summarised_segments, 0);
    // The full segments got theirs on the way, the open one at close.
    assert_eq!(summaries(dir.path()).len() as u64, segments);
    let stats = rebuild(dir.path(), &model, 150, "lazily built");
    assert_eq!(stats.summarised_segments, segments);
}

/// Random puts and deletes with compactions (which give segments back and move records),
/// checkpoints, and reopens that alternate between the image, a rebuild from summaries,
/// and a rebuild after losing some of them; every state is checked against a model.
#[test]
fn model_with_compaction_and_rebuilds() {
    let dir = TempDir::new("sum-model");
    let mut model = HashMap::new();
    let mut rng = Rng(21);
    let universe = 200;
    for round in 0..12u64 {
        let o = opts().durability(if round % 3 == 0 {
            Durability::Always
        } else {
            Durability::Batch
        });
        let store = Store::open(dir.path(), o).unwrap();
        check(&store, &model, universe, &format!("round {round} open"));
        let n = 150 + rng.below(150);
        fill(&store, &mut model, &mut rng, n, universe);
        if rng.below(2) == 0 {
            store.compact().unwrap();
        }
        if rng.below(3) == 0 {
            store.checkpoint().unwrap();
        }
        let n = rng.below(100);
        fill(&store, &mut model, &mut rng, n, universe);
        store.close().unwrap();
        match round % 3 {
            0 => {}
            1 => {
                let stats = rebuild(dir.path(), &model, universe, &format!("round {round}"));
                assert!(stats.summarised_segments > 0, "round {round}");
            }
            _ => {
                let files = summaries(dir.path());
                let lost = &files[rng.below(files.len() as u64) as usize];
                fs::remove_file(lost).unwrap();
                rebuild(
                    dir.path(),
                    &model,
                    universe,
                    &format!("round {round}, one lost"),
                );
            }
        }
        // No summary outlives its segment.
        let store = Store::open(dir.path(), opts()).unwrap();
        let segments = store.stats().segments;
        store.close().unwrap();
        assert!(
            summaries(dir.path()).len() as u64 <= segments,
            "round {round}"
        );
    }
}

/// Random damage to random summaries (flipped bits, cut files, swapped files, garbage):
/// every rebuild is still right, reading the segments whose summary does not check.
#[test]
fn fuzzed_summaries_never_change_what_a_rebuild_finds() {
    let dir = TempDir::new("sum-fuzz");
    let mut model = HashMap::new();
    let mut rng = Rng(31);
    let store = Store::open(dir.path(), opts()).unwrap();
    fill(&store, &mut model, &mut rng, 500, 200);
    store.close().unwrap();
    let rounds: u64 = std::env::var("KVS_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(40, |n: u64| n.max(40));
    for round in 0..rounds {
        let files = summaries(dir.path());
        let victim = &files[rng.below(files.len() as u64) as usize];
        let mut b = fs::read(victim).unwrap();
        match rng.below(5) {
            0 => {
                let at = rng.below(b.len() as u64) as usize;
                b[at] ^= 1 << rng.below(8);
            }
            1 => b.truncate(rng.below(b.len() as u64) as usize),
            2 => b = fs::read(&files[rng.below(files.len() as u64) as usize]).unwrap(),
            3 => {
                let at = rng.below(b.len() as u64) as usize;
                for x in &mut b[at..] {
                    *x = rng.below(256) as u8;
                }
            }
            _ => b.extend_from_slice(&[0u8; 24]),
        }
        fs::write(victim, &b).unwrap();
        rebuild(dir.path(), &model, 200, &format!("fuzz round {round}"));
    }
}

/// In `None` mode without checkpoints nothing is durable until close: the full segments
/// wait (their files closed), and close finishes every summary.
#[test]
fn full_segments_wait_for_durability_and_close_finishes_them() {
    let dir = TempDir::new("sum-none");
    let mut model = HashMap::new();
    let mut rng = Rng(17);
    let o = opts()
        .durability(Durability::None)
        .checkpoint_bytes(0)
        .checkpoint_interval(Duration::ZERO);
    let store = Store::open(dir.path(), o).unwrap();
    fill(&store, &mut model, &mut rng, 600, 200);
    let segments = store.stats().segments;
    assert!(segments >= 8, "{segments} segments");
    // Nothing is durable yet: no summary is finished.
    assert_eq!(summaries(dir.path()).len(), 0);
    store.close().unwrap();
    assert_eq!(summaries(dir.path()).len() as u64, segments);
    let stats = rebuild(dir.path(), &model, 200, "after a None-mode run");
    assert_eq!(stats.summarised_segments, segments);
}

/// Opening from IMAGE_file and closing without a write leaves the open segment's summary
/// as it is (not read, not rewritten); the first put continues it, and listings see the
/// keys both before and after.
#[test]
fn an_open_without_writes_leaves_the_last_summary_alone_and_a_put_continues_it() {
    use std::os::unix::fs::MetadataExt;
    let dir = TempDir::new("sum-lazy");
    let mut model = HashMap::new();
    let mut rng = Rng(9);
    let store = Store::open(dir.path(), opts()).unwrap();
    fill(&store, &mut model, &mut rng, 300, 120);
    let segments = store.stats().segments;
    store.close().unwrap();
    let last = summaries(dir.path()).pop().unwrap();
    let ino = fs::metadata(&last).unwrap().ino();
    let listed = |store: &Store| {
        let keys: Vec<_> = store
            .keys(b"")
            .unwrap()
            .collect::<kvs::Result<_>>()
            .unwrap();
        keys.len()
    };
    for _ in 0..2 {
        let store = Store::open(dir.path(), opts()).unwrap();
        assert!(store.stats().opened_from_image);
        assert_eq!(listed(&store), model.len());
        store.close().unwrap();
        assert_eq!(fs::metadata(&last).unwrap().ino(), ino, "rewritten");
    }
    let store = Store::open(dir.path(), opts()).unwrap();
    store.put(&key(1000), b"new").unwrap();
    model.insert(1000, b"new".to_vec());
    assert_eq!(listed(&store), model.len());
    let segs_now = store.stats().segments;
    store.close().unwrap();
    assert!(segs_now >= segments);
    let stats = rebuild(dir.path(), &model, 1001, "after the continued summary");
    assert_eq!(stats.summarised_segments, segs_now);
}

/// A segment closed early for a relocation grant waits for the log to be durable past its
/// end before its summary is finished; the reclaimer may give it back first (in `Always`,
/// when puts are held back, nothing syncs between). Its summary is then dropped, and
/// summaries go on: before, finishing it failed on its deleted file and stopped every
/// summary until the store was reopened.
#[test]
fn a_segment_given_back_before_its_summary_is_finished_does_not_stop_summaries() {
    let dir = TempDir::new("summary-early-release");
    let o = opts().durability(Durability::Always);
    let store = Store::open(dir.path(), o.clone()).unwrap();
    let mut model = HashMap::new();
    // Every key put twice: every segment, the tail's too, about half dead.
    for round in 0..2u64 {
        for k in 0..300u64 {
            let v = value_for(&key(k), round * 1000 + k, 3000);
            store.put(&key(k), &v).unwrap();
            model.insert(k, v);
        }
    }
    // The first compaction's grant closes the tail's segment early; the second gives it
    // back.
    store.compact().unwrap();
    let report = store.compact().unwrap();
    assert!(report.segments_freed > 0, "{report:?}");
    for k in 300..400u64 {
        let v = value_for(&key(k), k, 3000);
        store.put(&key(k), &v).unwrap();
        model.insert(k, v);
    }
    store.close().unwrap();
    let log = fs::read_to_string(dir.path().join(kvs::LOG_FILE)).unwrap();
    assert!(log.contains("closed early"), "{log}");
    assert!(!log.contains("no more key summaries"), "{log}");
    rebuild(dir.path(), &model, 400, "after the early segment went");
}

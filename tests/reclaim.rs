//! Space reclamation: compaction and the background reclaimer with small segments, the
//! races of a move against gets, puts and deletes, and recovery after moves (from IMAGE_file
//! and by a full rebuild, which is where carried tombstones matter).

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{copy_store, is_version_of, value_for, Rng, TempDir};
use kvs::testing::{Action, Faults, Hooks, Op};
use kvs::{Options, Store};

const SEG: u64 = 256 << 10;

fn opts() -> Options {
    Options::default()
        .buffer_size(1 << 20)
        .max_value_size(48 << 10)
        .segment_size(SEG)
        .flush_interval(Duration::from_millis(2))
        .expected_records(256)
        .background_reclaim(false)
}

/// Aggressive background reclaiming: starts at 5% dead, no rate limit.
fn eager() -> Options {
    opts()
        .background_reclaim(true)
        .reclaim_threshold(0.05)
        .reclaim_urgent(0.05)
        .reclaim_rate(0)
}

/// Removes the store's IMAGE_file and IMAGE_delta: the next open rebuilds the index from
/// disk_file alone.
fn drop_image(dir: &std::path::Path) {
    std::fs::remove_file(dir.join(kvs::IMAGE_FILE)).unwrap();
    let _ = std::fs::remove_file(dir.join(kvs::DELTA_FILE));
}

fn key(k: u64) -> Vec<u8> {
    format!("key-{k}").into_bytes()
}

/// Puts version `v` of key `k` (`len` bytes) and notes it in `model`.
fn put_noted(store: &Store, model: &mut HashMap<u64, Vec<u8>>, k: u64, v: u64, len: usize) {
    let val = value_for(&key(k), v, len);
    store.put(&key(k), &val).unwrap();
    model.insert(k, val);
}

fn check(store: &Store, model: &HashMap<u64, Vec<u8>>, universe: u64, what: &str) {
    for k in 0..universe {
        let got = store.get(&key(k)).unwrap();
        assert_eq!(got.as_ref(), model.get(&k), "{what}: key {k}");
    }
}

#[test]
fn compaction_gives_space_back_and_keeps_every_value() {
    let dir = TempDir::new("reclaim-basic");
    let store = Store::open(dir.path(), opts()).unwrap();
    let mut model = HashMap::new();
    let mut rng = Rng(11);
    for round in 0..4u64 {
        for k in 0..120 {
            let v = value_for(&key(k), round * 1000 + k, 4000 + rng.below(12_000) as usize);
            store.put(&key(k), &v).unwrap();
            model.insert(k, v);
        }
    }
    store.sync().unwrap();
    let before = store.stats();
    assert!(before.dead_bytes > 2 * before.live_bytes, "{before:?}");
    let report = store.compact().unwrap();
    let after = store.stats();
    assert!(report.segments_freed >= 6, "{report:?}");
    assert_eq!(after.segments_freed, report.segments_freed);
    assert!(report.bytes_moved > 0 && report.bytes_moved <= before.live_bytes);
    // What is left dead: the open segment's and the partly filled ones' tails.
    assert!(after.dead_bytes < 3 * SEG, "{after:?}");
    assert!(
        after.disk_file_allocated < before.disk_file_allocated / 2,
        "du {} -> {}",
        before.disk_file_allocated,
        after.disk_file_allocated
    );
    // Later rounds' copies may already have reused slots freed by earlier rounds.
    assert!(after.free_segments > 0 && after.free_segments <= report.segments_freed);
    check(&store, &model, 120, "after compaction");
    assert_eq!(store.verify().unwrap().corrupt, 0);

    // Freed slots are reused before the file grows.
    let len = after.disk_file_bytes;
    for k in 0..40 {
        let v = value_for(&key(k), 9000 + k, 8000);
        store.put(&key(k), &v).unwrap();
        model.insert(k, v);
    }
    store.sync().unwrap();
    let reused = store.stats();
    assert_eq!(reused.disk_file_bytes, len, "{reused:?}");
    assert!(reused.free_segments < after.free_segments);
    store.close().unwrap();

    let store = Store::open(dir.path(), opts()).unwrap();
    assert!(store.stats().opened_from_image);
    check(&store, &model, 120, "after reopen");
    drop(store);
    std::fs::remove_file(dir.path().join(kvs::IMAGE_FILE)).unwrap();
    let store = Store::open(dir.path(), opts()).unwrap();
    assert!(!store.stats().opened_from_image);
    check(&store, &model, 120, "after a full rebuild");
    assert_eq!(store.verify().unwrap().corrupt, 0);
}

#[test]
fn deletes_give_space_back_and_stay_deleted_through_a_rebuild() {
    let dir = TempDir::new("reclaim-delete");
    let store = Store::open(dir.path(), opts()).unwrap();
    let mut model = HashMap::new();
    for k in 0..300 {
        let v = value_for(&key(k), k, 10_000);
        store.put(&key(k), &v).unwrap();
        model.insert(k, v);
    }
    // Delete 90%, in an order that spreads tombstones over segments after the puts.
    for k in 0..300 {
        if k % 10 != 0 {
            assert!(store.delete(&key(k)).unwrap());
            model.remove(&k);
        }
    }
    store.sync().unwrap();
    let full = store.stats().disk_file_allocated;
    store.compact().unwrap();
    let st = store.stats();
    assert!(
        st.disk_file_allocated <= st.live_bytes + 3 * SEG,
        "du {} (was {full}), live {}",
        st.disk_file_allocated,
        st.live_bytes
    );
    check(&store, &model, 300, "after compaction");
    // Puts of deleted keys come back; a second compaction moves them too.
    for k in [1u64, 2, 3] {
        let v = value_for(&key(k), 5000 + k, 3000);
        store.put(&key(k), &v).unwrap();
        model.insert(k, v);
    }
    store.compact().unwrap();
    drop(store);
    for image in [true, false] {
        if !image {
            std::fs::remove_file(dir.path().join(kvs::IMAGE_FILE)).unwrap();
        }
        let store = Store::open(dir.path(), opts()).unwrap();
        assert_eq!(store.stats().opened_from_image, image);
        check(&store, &model, 300, if image { "image" } else { "rebuild" });
        assert_eq!(store.stats().records, model.len() as u64);
    }
}

/// Random operations against a HashMap with the background reclaimer always on, explicit
/// compactions between operations, and reopens (clean, dropped, and without IMAGE_file).
#[test]
fn model_with_reclaiming_forced_on() {
    for seed in 1..=3u64 {
        let dir = TempDir::new("reclaim-model");
        let mut rng = Rng(seed * 104_729);
        let mut model: HashMap<u64, Vec<u8>> = HashMap::new();
        let universe = 80;
        let mut store = Store::open(dir.path(), eager()).unwrap();
        let mut freed = 0;
        for step in 0..2500u64 {
            let k = rng.below(universe);
            match rng.below(10) {
                0..=5 => {
                    let len = match rng.below(10) {
                        0 => 0,
                        1..=6 => rng.below(4000) as usize,
                        _ => rng.below(48 << 10) as usize,
                    };
                    let v = value_for(&key(k), step, len);
                    store.put(&key(k), &v).unwrap();
                    model.insert(k, v);
                }
                6..=7 => {
                    let got = store.get(&key(k)).unwrap();
                    assert_eq!(got.as_ref(), model.get(&k), "seed {seed} step {step}");
                }
                _ => {
                    let had = store.delete(&key(k)).unwrap();
                    assert_eq!(had, model.remove(&k).is_some(), "seed {seed} step {step}");
                }
            }
            if step % 150 == 149 {
                store.compact().unwrap();
                check(&store, &model, universe, "after compaction");
            }
            if step % 500 == 499 {
                freed += store.stats().segments_freed;
                match rng.below(3) {
                    0 => store.close().unwrap(),
                    1 => drop(store),
                    _ => {
                        drop(store);
                        std::fs::remove_file(dir.path().join(kvs::IMAGE_FILE)).unwrap();
                    }
                }
                store = Store::open(dir.path(), eager()).unwrap();
                assert_eq!(store.stats().records, model.len() as u64, "seed {seed}");
                let report = store.verify().unwrap();
                assert_eq!((report.records, report.corrupt), (model.len() as u64, 0));
                check(&store, &model, universe, "after reopen");
            }
        }
        assert!(freed > 10, "seed {seed}: {freed} segments freed");
        store.close().unwrap();
    }
}

/// About 750 bytes a record: 600 puts fill two segments of `opts()`, then every other key
/// is overwritten, so the live records of the first segments lie a record apart. With
/// `delete_51`, key 51 is deleted after the 101st put (a tombstone in segment 0).
fn half_dead_segments(store: &Store, delete_51: bool) -> HashMap<u64, Option<Vec<u8>>> {
    let mut model = HashMap::new();
    for k in 0..600u64 {
        let v = value_for(&key(k), k, 700);
        store.put(&key(k), &v).unwrap();
        model.insert(k, Some(v));
        if delete_51 && k == 100 {
            store.delete(&key(51)).unwrap();
            model.insert(51, None);
        }
    }
    for k in (0..600u64).step_by(2) {
        let v = value_for(&key(k), 1000 + k, 700);
        store.put(&key(k), &v).unwrap();
        model.insert(k, Some(v));
    }
    model
}

/// After an open from IMAGE_file the tombstones of segments written before it are not
/// counted; a full segment whose key summary lists none still has its live records found
/// through the index and read alone, not read whole: damage in its dead bytes does not
/// keep it. With a tombstone in it, the segment is read whole, and the damage keeps it.
#[test]
fn after_a_reopen_summaries_tell_which_segments_need_reading_whole() {
    for with_tombstone in [false, true] {
        let dir = TempDir::new("reclaim-summarised");
        let store = Store::open(dir.path(), opts()).unwrap();
        let model = half_dead_segments(&store, with_tombstone);
        store.close().unwrap();
        // Damage the header of key 150's first record (32 bytes before its key), overwritten
        // since: dead bytes of segment 0, which a read of the whole segment trips over.
        let disk = dir.path().join(kvs::DISK_FILE);
        let mut bytes = std::fs::read(&disk).unwrap();
        let needle = value_for(&key(150), 150, 700);
        let pos = bytes.windows(64).position(|w| w == &needle[..64]).unwrap();
        bytes[pos - key(150).len() - 32 + 12] ^= 0x04;
        std::fs::write(&disk, &bytes).unwrap();

        let store = Store::open(dir.path(), opts()).unwrap();
        assert!(store.stats().opened_from_image);
        let report = store.compact().unwrap();
        let log = std::fs::read_to_string(dir.path().join(kvs::LOG_FILE)).unwrap();
        let kept = log.contains("log segment 0 is damaged");
        assert_eq!(kept, with_tombstone, "{report:?} {log}");
        assert_eq!(report.segments_freed, if with_tombstone { 1 } else { 2 });
        for k in 0..600u64 {
            let got = store.get(&key(k)).unwrap();
            assert_eq!(got.as_ref(), model[&k].as_ref(), "key {k}");
        }
        store.close().unwrap();
    }
}

/// The reclaimer reads small records close together in runs of many; each is still checked
/// on its own, so a damaged live record keeps its segment (LOG says so) and costs no other
/// record of its run.
#[test]
fn a_damaged_live_record_keeps_its_segment_and_costs_no_neighbour() {
    let dir = TempDir::new("reclaim-damaged");
    let store = Store::open(dir.path(), opts()).unwrap();
    let mut model = half_dead_segments(&store, false);
    // Damage key 151's record on disk while the store is open (it knows these segments
    // hold no tombstone, so it reads only the live records the index lists).
    store.sync().unwrap();
    let disk = dir.path().join(kvs::DISK_FILE);
    let bytes = std::fs::read(&disk).unwrap();
    let needle = value_for(&key(151), 151, 700);
    let pos = bytes.windows(64).position(|w| w == &needle[..64]).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &[bytes[pos + 300] ^ 0x04], (pos + 300) as u64)
        .unwrap();
    f.sync_all().unwrap();
    // More than the ring holds, so gets read disk_file too.
    for k in 600..2000u64 {
        let v = value_for(&key(k), k, 700);
        store.put(&key(k), &v).unwrap();
        model.insert(k, Some(v));
    }
    let report = store.compact().unwrap();
    assert!(report.records_moved >= 290, "{report:?}");
    assert!(report.segments_freed >= 1, "{report:?}");
    // Its neighbours moved: the damaged record is all its segment holds live now.
    let damaged = 700 + key(151).len() as u64;
    let st = store.stats();
    assert!(
        st.dead_bytes >= SEG - 4096 - 2 * damaged,
        "the damaged record's segment stays: {report:?} {st:?}"
    );
    let log = std::fs::read_to_string(dir.path().join(kvs::LOG_FILE)).unwrap();
    assert!(log.contains("unreadable; keeping its segment"), "{log}");
    let check_all = |store: &Store, what: &str| {
        for k in 0..2000u64 {
            if k == 151 {
                assert!(
                    matches!(store.get(&key(k)), Err(kvs::Error::Corruption { .. })),
                    "{what}"
                );
            } else {
                assert_eq!(store.get(&key(k)).unwrap(), model[&k], "{what}: {k}");
            }
        }
    };
    check_all(&store, "after compaction");
    store.close().unwrap();
    let store = Store::open(dir.path(), opts()).unwrap();
    check_all(&store, "after reopening");
}

/// Gets, overwrites and deletes racing compactions: a get of a key that is never deleted
/// always finds some version of its value, never NotFound, never other bytes; deleted keys
/// stay deleted, also after reopening without IMAGE_file.
#[test]
fn gets_puts_and_deletes_racing_moves() {
    let dir = TempDir::new("reclaim-race");
    let store = Arc::new(Store::open(dir.path(), eager()).unwrap());
    const STABLE: u64 = 60; // keys 0..60: overwritten, never deleted
    const DOOMED: u64 = 60; // keys 60..120: put once, deleted while moves run
    for k in 0..STABLE + DOOMED {
        store.put(&key(k), &value_for(&key(k), 0, 6000)).unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let gets = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();
    // Overwriter: makes dead space so there is always something to move.
    {
        let (store, stop) = (store.clone(), stop.clone());
        threads.push(std::thread::spawn(move || {
            let mut rng = Rng(3);
            let mut version = 1;
            while !stop.load(Ordering::Relaxed) {
                let k = rng.below(STABLE);
                let len = 1000 + rng.below(20_000) as usize;
                store
                    .put(&key(k), &value_for(&key(k), version, len))
                    .unwrap();
                version += 1;
            }
        }));
    }
    for t in 0..2u64 {
        let (store, stop, gets) = (store.clone(), stop.clone(), gets.clone());
        threads.push(std::thread::spawn(move || {
            let mut rng = Rng(100 + t);
            while !stop.load(Ordering::Relaxed) {
                let k = rng.below(STABLE);
                let v = store
                    .get(&key(k))
                    .unwrap()
                    .expect("a live key was not found");
                assert!(is_version_of(&key(k), &v), "key {k}: foreign bytes");
                gets.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    {
        let (store, stop) = (store.clone(), stop.clone());
        threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                store.compact().unwrap();
            }
        }));
    }
    for k in STABLE..STABLE + DOOMED {
        std::thread::sleep(Duration::from_millis(5));
        assert!(store.delete(&key(k)).unwrap());
        assert_eq!(store.get(&key(k)).unwrap(), None);
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let st = store.stats();
    assert!(st.segments_freed > 3 && st.records_moved > 0, "{st:?}");
    assert!(gets.load(Ordering::Relaxed) > 100);
    let store = Arc::into_inner(store).unwrap();
    store.close().unwrap();
    for image in [true, false] {
        if !image {
            std::fs::remove_file(dir.path().join(kvs::IMAGE_FILE)).unwrap();
        }
        let store = Store::open(dir.path(), opts()).unwrap();
        for k in 0..STABLE {
            let v = store.get(&key(k)).unwrap().expect("live key lost");
            assert!(is_version_of(&key(k), &v));
        }
        for k in STABLE..STABLE + DOOMED {
            assert_eq!(store.get(&key(k)).unwrap(), None, "key {k} came back");
        }
        assert_eq!(store.verify().unwrap().corrupt, 0);
    }
}

#[test]
fn the_background_reclaimer_keeps_the_file_bounded() {
    let dir = TempDir::new("reclaim-bg");
    let o = opts()
        .background_reclaim(true)
        .reclaim_threshold(0.2)
        .reclaim_urgent(0.3);
    let store = Store::open(dir.path(), o).unwrap();
    let mut rng = Rng(5);
    let keys = 100;
    let value = 10_000;
    // 10 times the live data in overwrites. After the first pass the file must stay
    // bounded while the puts go on (the reclaimer holds them back past reclaim_urgent),
    // not only once they stop.
    let mut worst: f64 = 0.0;
    for i in 0..keys * 10 {
        let k = rng.below(keys);
        store.put(&key(k), &value_for(&key(k), i, value)).unwrap();
        if i > keys && i % 20 == 0 {
            // Space taken (du): segments closed early for relocation segments end in
            // holes, so the count of segments times their size overstates it.
            let st = store.stats();
            let over = st.disk_file_allocated.saturating_sub(4 * SEG);
            worst = worst.max(over as f64 / st.live_bytes as f64);
        }
    }
    assert!(
        worst < 1.6,
        "segments beyond 4 reached {worst:.2}x the live bytes"
    );
    store.sync().unwrap();
    // Give the reclaimer a moment to catch up with the last overwrites.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let st = store.stats();
        let bound = st.live_bytes as f64 * 1.5 + 3.0 * SEG as f64;
        if st.disk_file_allocated as f64 <= bound {
            assert!(st.segments_freed > 0);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} segments for {} live bytes: {st:?}",
            st.segments,
            st.live_bytes
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn segment_size_must_hold_the_largest_record() {
    let dir = TempDir::new("reclaim-opts");
    let e = Store::open(
        dir.path(),
        opts()
            .segment_size(64 << 10)
            .buffer_size(4 << 20)
            .max_value_size(1 << 20),
    )
    .err()
    .unwrap();
    assert!(e.to_string().contains("segment_size"), "{e}");
    let e = Store::open(dir.path(), opts().reclaim_threshold(0.0))
        .err()
        .unwrap();
    assert!(e.to_string().contains("reclaim_threshold"), "{e}");
    assert!(!dir.path().join(kvs::DISK_FILE).exists());
    // The segment size is fixed at creation: a later open with another option keeps it.
    Store::open(dir.path(), opts()).unwrap().close().unwrap();
    let store = Store::open(dir.path(), opts().segment_size(SEG * 2)).unwrap();
    assert_eq!(store.stats().segment_size, SEG);
}

/// A store whose file system's free bytes are what the returned counter says (unlimited
/// until a test lowers it).
fn open_with_free_space(dir: &TempDir) -> (Store, Arc<AtomicU64>) {
    let avail = Arc::new(AtomicU64::new(u64::MAX));
    let hooks = kvs::testing::Hooks {
        available: Some(avail.clone()),
        ..Default::default()
    };
    (Store::open_with(dir.path(), opts(), hooks).unwrap(), avail)
}

/// Puts keys of `range` (10 000-byte values, version 0, noted in `model`) until one is
/// refused with `NoSpace`, and returns that key, checking that the refused put changed
/// nothing.
fn put_until_refused(
    store: &Store,
    range: std::ops::Range<u64>,
    model: &mut HashMap<u64, Vec<u8>>,
) -> Option<u64> {
    for k in range {
        let v = value_for(&key(k), 0, 10_000);
        match store.put(&key(k), &v) {
            Ok(()) => {
                model.insert(k, v);
            }
            Err(kvs::Error::NoSpace) => {
                assert_eq!(
                    store.get(&key(k)).unwrap(),
                    None,
                    "a refused put changed nothing"
                );
                return Some(k);
            }
            Err(e) => panic!("{e}"),
        }
    }
    None
}

/// On a nearly full disk a put that needs a new segment is refused (and changes nothing),
/// while compaction can still use the last segment's worth of space; the space it gives
/// back takes the puts again.
#[test]
fn a_nearly_full_disk_keeps_room_for_reclaiming() {
    let dir = TempDir::new("reclaim-full");
    let (store, avail) = open_with_free_space(&dir);
    for round in 0..3u64 {
        for k in 0..60 {
            store
                .put(&key(k), &value_for(&key(k), round, 10_000))
                .unwrap();
        }
        store.sync().unwrap();
    }
    // Less than two segments free: puts may not take the last one.
    avail.store(SEG + SEG / 2, Ordering::Relaxed);
    let k = put_until_refused(&store, 1000..1200, &mut HashMap::new())
        .expect("a put needing a new segment was accepted");
    let report = store.compact().unwrap();
    assert!(report.segments_freed > 0, "{report:?}");
    // The space the compaction gave back (plenty, in this fake file system): freed slots are
    // reused without growing the file, and the refused put goes in now.
    avail.store(u64::MAX / 2, Ordering::Relaxed);
    let len = std::fs::metadata(dir.path().join("disk_file"))
        .unwrap()
        .len();
    store.put(&key(k), &value_for(&key(k), 1, 10_000)).unwrap();
    store.sync().unwrap();
    assert_eq!(
        std::fs::metadata(dir.path().join("disk_file"))
            .unwrap()
            .len(),
        len
    );
    assert_eq!(
        store.get(&key(k)).unwrap(),
        Some(value_for(&key(k), 1, 10_000))
    );
    for j in 0..60 {
        assert_eq!(
            store.get(&key(j)).unwrap(),
            Some(value_for(&key(j), 2, 10_000))
        );
    }
}

/// A slot given back was punched: writing it takes space again. So a put's new segment is
/// refused (NoSpace) when the file system lacks room for it, one more segment for the
/// reclaimer and a whole IMAGE_file, whether it takes a freed slot or grows the file.
/// Before, only growing the file was checked (for one more segment): with slots free, puts
/// took them whatever the free space, and a disk filled by anything else failed the store
/// at the lookout's next write (ENOSPC latches) or at the next fold of IMAGE_file.
#[test]
fn a_full_disk_refuses_puts_even_into_freed_slots() {
    let dir = TempDir::new("reclaim-full-freed");
    let (store, avail) = open_with_free_space(&dir);
    let mut model = HashMap::new();
    for round in 0..3u64 {
        for k in 0..60 {
            let v = value_for(&key(k), round, 10_000);
            store.put(&key(k), &v).unwrap();
            model.insert(k, v);
        }
        store.sync().unwrap();
    }
    store.checkpoint().unwrap();
    let report = store.compact().unwrap();
    assert!(report.segments_freed >= 2, "{report:?}");
    // Room for the segment and the reclaimer's, and the image reserve (IMAGE_file and a
    // quarter of it, at least 2 MiB more) less one byte.
    let image = std::fs::metadata(dir.path().join(kvs::IMAGE_FILE))
        .unwrap()
        .len();
    avail.store(
        2 * SEG + image + (image / 4).max(2 << 20) - 1,
        Ordering::Relaxed,
    );
    let k = put_until_refused(&store, 1000..1100, &mut model)
        .expect("puts took freed slots on a full disk");
    // The reclaimer may still use the last segment's worth.
    avail.store(SEG, Ordering::Relaxed);
    store.compact().unwrap();
    store.checkpoint().unwrap();
    avail.store(u64::MAX / 2, Ordering::Relaxed);
    store.put(&key(k), &value_for(&key(k), 1, 10_000)).unwrap();
    model.insert(k, value_for(&key(k), 1, 10_000));
    check(&store, &model, 1100, "after the full disk");
    drop(store);
    let store = Store::open(dir.path(), opts()).unwrap();
    check(&store, &model, 1100, "after a reopen");
}

/// A read does not hold the segment map across its I/O (so puts that open a segment never
/// wait for a slow read): the reclaimer may give a read's segment back, punch it and reuse
/// the slot while the read runs. With reads slowed to 20 ms and compaction running, some
/// reads find their record gone and look again (`gets_retried`), and none returns an error
/// or foreign bytes.
#[test]
fn reads_racing_the_release_of_their_segment_look_again() {
    let dir = TempDir::new("reclaim-slow-reads");
    let faults = kvs::testing::Faults::new();
    let hooks = kvs::testing::Hooks {
        faults: Some(faults.clone()),
        ..Default::default()
    };
    let store = Arc::new(Store::open_with(dir.path(), opts(), hooks).unwrap());
    // Keys 0..40 are read and always hold the same bytes; 40..80, put between them, are
    // overwritten to make dead space around them, so compaction moves the stable keys and
    // gives their segments back. Each round puts the stable keys again too, with the same
    // bytes, so that every compaction gives back segments that readers may still be
    // reading them from (the segments a compaction writes are not moved again by the
    // next: only the first round would race).
    for k in 0..40 {
        for k in [k, 40 + k] {
            store.put(&key(k), &value_for(&key(k), 0, 20_000)).unwrap();
        }
    }
    store.sync().unwrap();
    faults.slow_reads(Duration::from_millis(20));
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..4u64)
        .map(|t| {
            let (store, stop) = (store.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut rng = Rng(50 + t);
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let k = rng.below(40);
                    // Half the readers read into memory of the value's own.
                    let v = if t % 2 == 0 {
                        store.get(&key(k)).unwrap().expect("a stable key vanished")
                    } else {
                        let v = store.get_value(&key(k)).unwrap();
                        v.expect("a stable key vanished").to_vec()
                    };
                    assert!(v == value_for(&key(k), 0, 20_000), "key {k}: other bytes");
                    n += 1;
                }
                n
            })
        })
        .collect();
    for version in 1..=6 {
        for k in 0..40 {
            store.put(&key(k), &value_for(&key(k), 0, 20_000)).unwrap();
            let k = 40 + k;
            store
                .put(&key(k), &value_for(&key(k), version, 20_000))
                .unwrap();
        }
        store.sync().unwrap();
        store.compact().unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    let gets: u64 = readers.into_iter().map(|r| r.join().unwrap()).sum();
    let st = store.stats();
    assert!(gets > 20, "{gets} gets");
    assert!(st.segments_freed > 0, "{st:?}");
    assert!(
        st.gets_retried > 0,
        "no read saw its segment given back ({gets} gets, {} freed)",
        st.segments_freed
    );
    faults.slow_reads(Duration::ZERO);
    for k in 0..40 {
        assert!(store.get(&key(k)).unwrap().unwrap() == value_for(&key(k), 0, 20_000));
    }
}

/// A `Value` owns the memory its record was read into: it keeps its bytes after the key is
/// overwritten, its segment reclaimed and punched, and the store closed.
#[test]
fn values_read_into_their_own_memory_outlive_reclaiming_and_close() {
    let dir = TempDir::new("reclaim-values");
    let store = Store::open(dir.path(), opts()).unwrap();
    for k in 0..60 {
        store.put(&key(k), &value_for(&key(k), 0, 30_000)).unwrap();
    }
    store.sync().unwrap();
    // Some from the ring, some from disk_file once the ring has moved on.
    let held: Vec<(u64, kvs::Value)> = (0..60)
        .map(|k| (k, store.get_value(&key(k)).unwrap().unwrap()))
        .collect();
    for version in 1..=3 {
        for k in 0..60 {
            store
                .put(&key(k), &value_for(&key(k), version, 30_000))
                .unwrap();
        }
        store.sync().unwrap();
        store.compact().unwrap();
    }
    assert!(store.stats().segments_freed > 0);
    store.close().unwrap();
    for (k, v) in &held {
        assert_eq!(v.len(), 30_000);
        assert!(**v == value_for(&key(*k), 0, 30_000)[..], "key {k}");
    }
}

/// The slots of `disk_file` whose segment header is a relocation segment's (format 6:
/// bytes 32..40 hold the flags, bit 0 set), by logical number.
fn relocation_segments(disk_file: &std::path::Path) -> Vec<u64> {
    let b = std::fs::read(disk_file).unwrap();
    let mut out = Vec::new();
    let mut at = 4096usize;
    while at + 48 <= b.len() {
        let h = &b[at..at + 48];
        let u = |i: usize| u64::from_le_bytes(h[i..i + 8].try_into().unwrap());
        if &h[0..8] == b"KVSSEG\0\0" && u(32) == 1 {
            assert_eq!(u(40), xxhash_rust::xxh3::xxh3_64(&h[0..40]));
            out.push(u(8));
        }
        at += SEG as usize;
    }
    out.sort_unstable();
    out
}

/// Found by review: formats before 5 copy records through the ring when reclaiming, and
/// their value limit is the option's (up to their 5 MiB) while records on disk may hold 5
/// MiB. Opened with a lower limit and a ring smaller than a record on disk, a compaction
/// waited for ever for room in the ring (and puts and close behind it). The ring now holds
/// the format's largest record.
#[test]
fn an_old_store_opened_with_a_lower_limit_still_moves_its_large_records() {
    let dir = TempDir::new("reclaim-v2-small-ring");
    let o = opts().max_value_size(200 << 10);
    let store = Store::open(dir.path(), o.clone()).unwrap();
    let mut model = HashMap::new();
    for k in 0..40u64 {
        let v = value_for(&key(k), k, 1000);
        store.put(&key(k), &v).unwrap();
        model.insert(k, v);
    }
    let big = value_for(&key(40), 40, 200 << 10);
    store.put(&key(40), &big).unwrap();
    model.insert(40, big);
    for k in 0..40u64 {
        let v = value_for(&key(k), 100 + k, 1000);
        store.put(&key(k), &v).unwrap();
        model.insert(k, v);
    }
    store.close().unwrap();
    let path = dir.path().join("disk_file");
    let mut bytes = std::fs::read(&path).unwrap();
    common::downgrade_to_v2(&mut bytes, SEG as usize);
    std::fs::write(&path, &bytes).unwrap();

    let small = opts().max_value_size(4096).buffer_size(64 << 10);
    let store = Arc::new(Store::open(dir.path(), small.clone()).unwrap());
    assert_eq!(store.stats().format_version, 2);
    let (done, finished) = std::sync::mpsc::channel();
    let s = store.clone();
    let compacting = std::thread::spawn(move || done.send(s.compact().map(|r| r.records_moved)));
    let moved = finished
        .recv_timeout(Duration::from_secs(30))
        .expect("the compaction did not end")
        .unwrap();
    // Its clone of the store is dropped once the thread ends.
    compacting.join().unwrap().unwrap();
    assert!(moved > 0, "nothing moved: the test proves nothing");
    check(&store, &model, 41, "after compacting");
    store.put(&key(0), b"small").unwrap();
    model.insert(0, b"small".to_vec());
    Arc::into_inner(store).unwrap().close().unwrap();
    let store = Store::open(dir.path(), small).unwrap();
    check(&store, &model, 41, "reopened");
    store.close().unwrap();
}

/// Keys 0..150 put three times, two in three overwritten, values of 3-9 KiB: the first
/// segments end up a third live. Returns the model.
fn a_third_live(store: &Store) -> HashMap<u64, Vec<u8>> {
    let mut model = HashMap::new();
    for round in 0..3u64 {
        for k in 0..150u64 {
            if round > 0 && k % 3 == 0 {
                continue;
            }
            let v = value_for(&key(k), round * 1000 + k, 3000 + (k as usize * 41) % 6000);
            store.put(&key(k), &v).unwrap();
            model.insert(k, v);
        }
    }
    model
}

/// Copies go to segments of their own (format 6), flagged in their headers, not to the
/// log's tail. A crash while one is half written (here: a copy of the files taken after a
/// compaction, with the relocation segment still open) leaves it short: recovery takes
/// that for its end, not for damage, every key reads back, and the short segment is
/// reclaimed in turn.
#[test]
fn copies_go_to_relocation_segments_and_a_short_one_is_no_damage() {
    let dir = TempDir::new("reclaim-relocation");
    let o = opts().durability(kvs::Durability::Always);
    let store = Store::open(dir.path(), o.clone()).unwrap();
    let mut model = a_third_live(&store);
    let tail_before = store.stats().log_end;
    let report = store.compact().unwrap();
    assert!(
        report.records_moved > 0 && report.segments_freed > 0,
        "{report:?}"
    );
    check(&store, &model, 150, "after compacting");
    let reloc = relocation_segments(&dir.path().join("disk_file"));
    assert!(!reloc.is_empty(), "no relocation segment in disk_file");
    // The copies lie in segments the log's tail skipped: above where it stood.
    assert!(reloc
        .iter()
        .all(|&l| l * SEG >= tail_before - tail_before % SEG));
    let log = std::fs::read_to_string(dir.path().join("LOG")).unwrap();
    assert!(log.contains("copies go to relocation segment"), "{log}");
    // Puts after it land after it: the relocation segment is not the log's last.
    for k in 150..160u64 {
        let v = value_for(&key(k), k, 3000);
        store.put(&key(k), &v).unwrap();
        model.insert(k, v);
    }

    // The crash copy: IMAGE_file (and its blocks), then disk_file, with the last relocation
    // segment still open (no Pad to its end, its rest never written).
    let copy = TempDir::new("reclaim-relocation-copy");
    std::fs::create_dir_all(copy.path()).unwrap();
    for f in ["IMAGE_file", "IMAGE_delta", "disk_file"] {
        let _ = std::fs::copy(dir.path().join(f), copy.path().join(f));
    }
    store.close().unwrap();
    for without_image in [false, true] {
        if without_image {
            std::fs::remove_file(copy.path().join("IMAGE_file")).unwrap();
            let _ = std::fs::remove_file(copy.path().join("IMAGE_delta"));
        }
        let c = Store::open(copy.path(), o.clone()).unwrap();
        let st = c.stats();
        assert_eq!(st.opened_from_image, !without_image);
        assert_eq!(
            st.damaged_ranges, 0,
            "a short relocation segment is not damage"
        );
        check(&c, &model, 160, "the crash copy");
        assert!(c.verify().unwrap().is_clean());
        // Overwrite the rest and compact again: the short segment is moved out in turn.
        for k in (0..150u64).step_by(3) {
            let v = value_for(&key(k), 9000 + k, 2000);
            c.put(&key(k), &v).unwrap();
            model.insert(k, v);
        }
        c.compact().unwrap();
        check(&c, &model, 160, "the crash copy, compacted");
        c.close().unwrap();
        let c = Store::open(copy.path(), o.clone()).unwrap();
        assert_eq!(c.stats().damaged_ranges, 0);
        check(&c, &model, 160, "the crash copy, reopened");
        c.close().unwrap();
    }
    // The store closed cleanly: its relocation segment got a Pad to its end.
    let c = Store::open(dir.path(), o).unwrap();
    assert_eq!(c.stats().damaged_ranges, 0);
    c.close().unwrap();
}

/// Found by review: a crash right after a compaction, before any put reached the segment
/// after the relocation segment, left that relocation segment the log's last. Recovery put
/// the log's tail inside it, so new puts followed the copies there; once the log went on
/// past it, damage at the end of those puts read as a relocation segment's unwritten rest
/// (no damage reported). The tail now starts at the next segment.
#[test]
fn a_crash_after_a_compaction_leaves_puts_out_of_the_relocation_segment() {
    let dir = TempDir::new("reclaim-relocation-last");
    let o = opts().durability(kvs::Durability::Always);
    let store = Store::open(dir.path(), o.clone()).unwrap();
    let model = a_third_live(&store);
    store.compact().unwrap();
    // The crash copy, taken before any put: the relocation segment is the last one mapped.
    let copy = TempDir::new("reclaim-relocation-last-copy");
    std::fs::create_dir_all(copy.path()).unwrap();
    for f in ["IMAGE_file", "IMAGE_delta", "disk_file"] {
        let _ = std::fs::copy(dir.path().join(f), copy.path().join(f));
    }
    store.close().unwrap();
    let reloc = relocation_segments(&copy.path().join("disk_file"));
    let last = *mapped_segments(&copy.path().join("disk_file"))
        .iter()
        .max()
        .unwrap();
    assert!(
        reloc.contains(&last),
        "the last segment is not a relocation segment"
    );
    for without_image in [false, true] {
        let c = TempDir::new("reclaim-relocation-last-open");
        std::fs::create_dir_all(c.path()).unwrap();
        for f in ["IMAGE_file", "IMAGE_delta", "disk_file"] {
            if !without_image || f == "disk_file" {
                let _ = std::fs::copy(copy.path().join(f), c.path().join(f));
            }
        }
        let s = Store::open(c.path(), o.clone()).unwrap();
        assert_eq!(s.stats().damaged_ranges, 0);
        check(&s, &model, 150, "the crash copy");
        let end = s.stats().log_end;
        assert!(
            !reloc.contains(&(end / SEG)),
            "the log's tail {end} lies in relocation segment {}",
            end / SEG
        );
        let mut m = model.clone();
        for k in 150..170u64 {
            let v = value_for(&key(k), k, 3000);
            s.put(&key(k), &v).unwrap();
            m.insert(k, v);
        }
        s.close().unwrap();
        let now = relocation_segments(&c.path().join("disk_file"));
        assert_eq!(now, reloc, "puts went into a relocation segment's slot");
        let s = Store::open(c.path(), o.clone()).unwrap();
        assert!(s.stats().opened_from_image);
        check(&s, &m, 170, "reopened after puts");
        s.close().unwrap();
        drop_image(c.path());
        let s = Store::open(c.path(), o.clone()).unwrap();
        assert_eq!(s.stats().damaged_ranges, 0);
        check(&s, &m, 170, "rebuilt after puts");
        assert!(s.verify().unwrap().is_clean());
        s.close().unwrap();
    }
}

/// A copy must lie above every older record of its key. The relocation segment K is kept
/// open from round to round, so a later round may take a victim above K: a copy of a
/// record from there must not go into K, below an older put of the same key (a rebuild
/// from the log would then replay the copy first and end at the older put). Found by
/// review; this test read `v1` back after the rebuild before the fix.
#[test]
fn a_victim_above_the_relocation_segment_gets_a_new_one() {
    let dir = TempDir::new("reclaim-above-stream");
    let store = Store::open(dir.path(), opts()).unwrap();
    let mut model = HashMap::new();
    let mut put = |k: Vec<u8>, v: Vec<u8>| {
        store.put(&k, &v).unwrap();
        model.insert(k, v);
    };
    // Old records, half overwritten: the first compaction moves the rest into a
    // relocation segment K, which stays open (far from full).
    for round in 0..2u64 {
        for i in 0..40u64 {
            if round == 0 || i % 2 == 0 {
                let k = format!("old-{i}").into_bytes();
                put(k.clone(), value_for(&k, round, 8000));
            }
        }
    }
    store.sync().unwrap();
    let first = store.compact().unwrap();
    assert!(first.records_moved > 0, "{first:?}");
    // Above K: v1 of key "k" (tiny, so its segment stays all but live) among live fillers
    // that fill that segment, then v2 among hot records overwritten at once.
    put(b"k".to_vec(), b"v1".to_vec());
    for i in 0..40u64 {
        let k = format!("live-{i}").into_bytes();
        put(k.clone(), value_for(&k, 0, 8000));
    }
    put(b"k".to_vec(), b"v2".to_vec());
    for round in 0..2u64 {
        for i in 0..40u64 {
            let k = format!("hot-{i}").into_bytes();
            put(k.clone(), value_for(&k, round, 8000));
        }
    }
    store.sync().unwrap();
    store.compact().unwrap();
    assert_eq!(store.get(b"k").unwrap().as_deref(), Some(&b"v2"[..]));
    store.close().unwrap();
    // A rebuild from the log alone replays the segments in logical order.
    std::fs::remove_file(dir.path().join("IMAGE_file")).unwrap();
    let _ = std::fs::remove_file(dir.path().join("IMAGE_delta"));
    let store = Store::open(dir.path(), opts()).unwrap();
    assert!(!store.stats().opened_from_image);
    for (k, v) in &model {
        assert_eq!(
            store.get(k).unwrap().as_ref(),
            Some(v),
            "{}",
            String::from_utf8_lossy(k)
        );
    }
    store.close().unwrap();
}

/// The logical numbers of the segments disk_file's slots hold (read by hand).
fn mapped_segments(disk_file: &std::path::Path) -> Vec<u64> {
    let b = std::fs::read(disk_file).unwrap();
    let mut out: Vec<u64> = (4096..b.len())
        .step_by(SEG as usize)
        .filter(|&at| &b[at..at + 8] == b"KVSSEG\0\0")
        .map(|at| u64::from_le_bytes(b[at + 8..at + 16].try_into().unwrap()))
        .collect();
    out.sort_unstable();
    out
}

/// A relocation segment refused for lack of space leaves nothing behind: the log opens
/// that segment later as one of its own, and once it is all dead a compaction gives it
/// back. (It used to stay marked as a relocation segment being written, which is never
/// a victim.)
#[test]
fn a_grant_refused_for_space_leaves_no_trace() {
    let dir = TempDir::new("reclaim-grant-nospace");
    let (store, avail) = open_with_free_space(&dir);
    let put_all = |round: u64| {
        for k in 0..60 {
            store
                .put(&key(k), &value_for(&key(k), round, 10_000))
                .unwrap();
        }
        store.sync().unwrap();
    };
    for round in 0..3 {
        put_all(round);
    }
    // No free slot and no space: the grant (the segment after the tail's) is refused.
    // The victims done before the one that needed it, all dead, are given back even so
    // (found by review: the round gave back nothing, at every retry); that one stays.
    let refused = store.stats().log_end / SEG + 1;
    let (freed, segments) = (store.stats().segments_freed, store.stats().segments);
    avail.store(0, Ordering::Relaxed);
    let r = store.compact();
    assert!(store.stats().segments_freed > freed, "{r:?}");
    let log = std::fs::read_to_string(dir.path().join(kvs::LOG_FILE)).unwrap();
    assert!(
        log.contains("no room for a relocation segment"),
        "{r:?}: {log}"
    );
    assert!(store.stats().segments < segments);
    avail.store(u64::MAX, Ordering::Relaxed);
    // The log goes through that segment, and everything in it is overwritten after.
    for round in 3..10 {
        put_all(round);
    }
    assert!(store.stats().log_end / SEG > refused + 2);
    store.compact().unwrap();
    store.compact().unwrap();
    assert!(
        !mapped_segments(&dir.path().join("disk_file")).contains(&refused),
        "segment {refused}, all dead, was not given back"
    );
    for k in 0..60 {
        assert_eq!(
            store.get(&key(k)).unwrap(),
            Some(value_for(&key(k), 9, 10_000))
        );
    }
}

/// Stats count as written only what lies on disk (`Segments::measure`), after a reopen
/// too: a segment closed early for a relocation segment, and a relocation segment closed
/// short, end in holes, which take no space. A reopen used to forget where such segments
/// ended and count their holes as dead bytes, so the reclaimer saw more to reclaim than
/// the file held (and the dead share it paces puts by was too high).
#[test]
fn dead_bytes_count_only_what_lies_on_disk_after_a_reopen() {
    let dir = TempDir::new("reclaim-measured");
    let store = Store::open(dir.path(), opts()).unwrap();
    let mut model = HashMap::new();
    for round in 0..3u64 {
        for k in 0..60u64 {
            if round > 0 && k % 3 == 0 {
                continue;
            }
            let v = value_for(&key(k), round, 10_000);
            store.put(&key(k), &v).unwrap();
            model.insert(k, v);
        }
    }
    // The tail just past a segment boundary: the compaction's grant closes that segment
    // early, most of it a hole.
    let mut k = 1000;
    loop {
        store.sync().unwrap();
        let at = store.stats().log_end % SEG;
        if (SEG / 16..SEG / 8).contains(&at) {
            break;
        }
        let v = value_for(&key(k), 0, 2000);
        store.put(&key(k), &v).unwrap();
        model.insert(k, v);
        k += 1;
    }
    store.compact().unwrap();
    let log = std::fs::read_to_string(dir.path().join("LOG")).unwrap();
    assert!(log.contains("closed early"), "{log}");
    let fits = |st: &kvs::Stats, what: &str| {
        assert!(
            st.live_bytes + st.dead_bytes <= st.disk_file_allocated,
            "{what}: live and dead bytes are more than disk_file holds: {st:?}"
        );
    };
    store.sync().unwrap();
    fits(&store.stats(), "open");
    store.close().unwrap();
    let store = Store::open(dir.path(), opts()).unwrap();
    let st = store.stats();
    fits(&st, "reopened");
    assert!(st.dead_bytes > 0, "{st:?}");
    check(&store, &model, k, "reopened");
    store.close().unwrap();
}

#[test]
fn a_victim_of_several_read_batches_moves_whole_while_puts_race_it() {
    // 32 MiB segments of 200 KiB values: a victim holds up to about 20 MiB live, read
    // in batches of 8 MiB, the next batch read while the copies of the one before are
    // written.
    let dir = TempDir::new("reclaim-batches");
    let big = || {
        opts()
            .buffer_size(16 << 20)
            .max_value_size(256 << 10)
            .segment_size(32 << 20)
    };
    let store = Arc::new(Store::open(dir.path(), big()).unwrap());
    let universe = 400u64;
    let mut model = HashMap::new();
    let mut rng = Rng(23);
    for k in 0..universe {
        let v = value_for(&key(k), k, 150_000 + rng.below(100_000) as usize);
        store.put(&key(k), &v).unwrap();
        model.insert(k, v);
    }
    // Overwrite a third, so the first segments are about two thirds live.
    for k in (0..universe).filter(|k| k % 3 == 0) {
        let v = value_for(&key(k), 1000 + k, 150_000);
        store.put(&key(k), &v).unwrap();
        model.insert(k, v);
    }
    store.sync().unwrap();
    // Keys 0..50 change while the compaction runs; the others must move untouched.
    let stop = Arc::new(AtomicBool::new(false));
    let racer = {
        let (store, stop) = (store.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut last = HashMap::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) && i < 2000 {
                let k = i % 50;
                if i % 7 == 0 {
                    store.delete(&key(k)).unwrap();
                    last.insert(k, None);
                } else {
                    let v = value_for(&key(k), 5000 + i, 120_000);
                    store.put(&key(k), &v).unwrap();
                    last.insert(k, Some(v));
                }
                i += 1;
            }
            last
        })
    };
    let report = store.compact().unwrap();
    stop.store(true, Ordering::Relaxed);
    for (k, v) in racer.join().unwrap() {
        match v {
            Some(v) => model.insert(k, v),
            None => model.remove(&k),
        };
    }
    assert!(report.segments_freed >= 2, "{report:?}");
    assert!(
        report.bytes_moved > 16 << 20,
        "a victim's live records span several read batches: {report:?}"
    );
    check(&store, &model, universe, "after compaction");
    assert_eq!(store.verify().unwrap().corrupt, 0);
    let store = Arc::try_unwrap(store).ok().unwrap();
    store.close().unwrap();
    let store = Store::open(dir.path(), big()).unwrap();
    check(&store, &model, universe, "after reopen");
    drop(store);
    std::fs::remove_file(dir.path().join(kvs::IMAGE_FILE)).unwrap();
    let store = Store::open(dir.path(), big()).unwrap();
    check(&store, &model, universe, "after a full rebuild");
}

/// The child of `a_round_that_failed_after_installing_copies_is_imaged_by_the_next`: runs
/// the scenario, writes the expected values' versions to `model.txt`, and aborts.
#[test]
#[ignore = "run by a_round_that_failed_after_installing_copies_is_imaged_by_the_next"]
fn failed_round_child() {
    let Ok(dir) = std::env::var("KVS_FAILED_ROUND_DIR") else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    const SIZE: u64 = 32 << 20;
    const LEN: usize = 200_000;
    let faults = kvs::testing::Faults::new();
    let hooks = kvs::testing::Hooks {
        faults: Some(faults.clone()),
        ..Default::default()
    };
    let store = Store::open_with(&dir, failed_round_opts(), hooks).unwrap();
    let mut model: HashMap<String, u64> = HashMap::new();
    fn put(store: &Store, model: &mut HashMap<String, u64>, k: String, version: u64) {
        store
            .put(k.as_bytes(), &value_for(k.as_bytes(), version, LEN))
            .unwrap();
        model.insert(k, version);
    }
    // The slot of disk_file holding `k`'s record (None: in the ring, or in a relocation
    // segment the ring has not passed yet).
    let slot = |store: &Store, k: &str| {
        let at = store.record_extent(k.as_bytes()).unwrap();
        at.map(|(at, _)| (at - 4096) / SIZE)
    };
    // A fills the first segment, B the next one and more; half of A overwritten.
    for i in 0..160 {
        put(&store, &mut model, format!("a-{i}"), 1);
    }
    for i in 0..200 {
        put(&store, &mut model, format!("b-{i}"), 1);
    }
    for i in (0..160).step_by(2) {
        put(&store, &mut model, format!("a-{i}"), 2);
    }
    store.sync().unwrap();
    // The first round opens a relocation segment L and ends with an image covering the
    // log past L.
    let first = store.compact().unwrap();
    assert!(
        first.segments_freed >= 1 && first.records_moved > 0,
        "{first:?}"
    );
    // V: a segment of B records alone, about 32 MiB of them, read in 8 MiB batches.
    let v = slot(&store, "b-100").expect("b-100 on disk");
    let mut in_v: Vec<String> = (0..200)
        .map(|i| format!("b-{i}"))
        .filter(|k| slot(&store, k) == Some(v))
        .collect();
    assert!(in_v.len() > 120, "{} B records in V", in_v.len());
    in_v.sort_by_key(|k| store.record_extent(k.as_bytes()).unwrap().unwrap().0);
    // Its last three records dead, so that it is a victim; reads from 16 MiB into V on
    // fail for want of memory: the round installs the copies of V's first batch, then
    // fails reading a later one.
    for k in in_v.iter().rev().take(3) {
        put(&store, &mut model, k.clone(), 2);
    }
    store.sync().unwrap();
    let v_start = 4096 + v * SIZE;
    faults.fail_reads(
        v_start + (16 << 20)..v_start + SIZE,
        kvs::testing::Action::Errno(libc::ENOMEM),
    );
    let failed = store.compact();
    assert!(
        matches!(&failed, Err(e) if e.errno() == Some(libc::ENOMEM)),
        "{failed:?}"
    );
    faults.heal_reads();
    // What the failed round did not move is overwritten: V holds nothing live.
    let moved = in_v
        .iter()
        .filter(|k| slot(&store, k) != Some(v) && model[*k] == 1)
        .count();
    assert!(moved >= 20, "the failed round installed {moved} copies");
    for k in &in_v {
        if slot(&store, k) == Some(v) {
            put(&store, &mut model, k.clone(), 3);
        }
    }
    store.sync().unwrap();
    // This round moves nothing and gives V back: the image must first stop pointing
    // the keys the failed round moved into V.
    let last = store.compact().unwrap();
    assert!(last.segments_freed >= 1, "{last:?}");
    let mut lines: Vec<String> = model.iter().map(|(k, v)| format!("{k} {v}")).collect();
    lines.sort();
    std::fs::write(dir.join("model.txt"), lines.join("\n")).unwrap();
    println!("scenario done");
    std::process::abort();
}

fn failed_round_opts() -> Options {
    Options::default()
        .buffer_size(16 << 20)
        .max_value_size(256 << 10)
        .segment_size(32 << 20)
        .expected_records(1024)
        .background_reclaim(false)
        .checkpoint_bytes(1 << 30)
        .checkpoint_interval(Duration::from_secs(3600))
}

#[test]
fn a_round_that_failed_after_installing_copies_is_imaged_by_the_next() {
    let dir = TempDir::new("reclaim-failed-round");
    let out = common::run_child("failed_round_child", "KVS_FAILED_ROUND_DIR", dir.path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("scenario done"),
        "child: {:?}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let model = std::fs::read_to_string(dir.path().join("model.txt")).unwrap();
    // After the crash the store opens from its image: the image never pointed a key
    // into the segment the last round gave back (else recovery finds it and rebuilds
    // the index from the whole log).
    let store = Store::open(dir.path(), failed_round_opts()).unwrap();
    assert!(store.stats().opened_from_image, "{:?}", store.stats());
    for line in model.lines() {
        let (k, version) = line.split_once(' ').unwrap();
        let want = value_for(k.as_bytes(), version.parse().unwrap(), 200_000);
        assert_eq!(store.get(k.as_bytes()).unwrap(), Some(want), "{k}");
    }
    store.close().unwrap();
}

/// A store of keys 0..60 (20 000 bytes each, the even ones overwritten) whose device
/// cannot read key 1's record, and, if `tombstone`, key 0 deleted while the log was in key
/// 1's segment (a segment with a tombstone is read whole by a scan). Returns the store, its
/// directory, faults, the model and key 1's slot.
fn key_1_unreadable(
    name: &str,
    tombstone: bool,
) -> (
    TempDir,
    Store,
    Arc<kvs::testing::Faults>,
    HashMap<u64, Vec<u8>>,
    u64,
) {
    let dir = TempDir::new(name);
    let faults = kvs::testing::Faults::new();
    let hooks = kvs::testing::Hooks {
        faults: Some(faults.clone()),
        ..Default::default()
    };
    let store = Store::open_with(dir.path(), opts(), hooks).unwrap();
    let mut model = HashMap::new();
    for k in 0..60u64 {
        let v = value_for(&key(k), k, 20_000);
        store.put(&key(k), &v).unwrap();
        model.insert(k, v);
        if tombstone && k == 3 {
            store.delete(&key(0)).unwrap();
            model.remove(&0);
        }
    }
    let first = if tombstone { 2 } else { 0 };
    for k in (first..60u64).step_by(2) {
        let v = value_for(&key(k), 100 + k, 20_000);
        store.put(&key(k), &v).unwrap();
        model.insert(k, v);
    }
    store.sync().unwrap();
    let (bad_at, bad_len) = store.record_extent(&key(1)).unwrap().unwrap();
    faults.fail_reads(
        bad_at..bad_at + bad_len as u64,
        kvs::testing::Action::Errno(libc::EIO),
    );
    (dir, store, faults, model, (bad_at - 4096) / SEG)
}

/// A record the device cannot read (EIO) keeps its segment, and only its segment: the
/// round goes on with the other victims, and the segment goes once the record reads again.
#[test]
fn an_unreadable_record_keeps_its_segment_and_the_round_goes_on() {
    let (dir, store, faults, model, bad_slot) = key_1_unreadable("reclaim-eio", false);
    let universe = 60u64;
    let report = store.compact().unwrap();
    assert!(report.segments_freed >= 3, "{report:?}");
    let after = store.record_extent(&key(1)).unwrap().unwrap().0;
    assert_eq!((after - 4096) / SEG, bad_slot, "key 1 stays where it was");
    let Err(e) = store.get(&key(1)) else {
        panic!("the bad record reads")
    };
    assert_eq!(e.errno(), Some(libc::EIO), "{e}");
    let mut others = model.clone();
    others.remove(&1);
    for (k, v) in &others {
        assert_eq!(store.get(&key(*k)).unwrap().as_ref(), Some(v), "key {k}");
    }
    // The device heals: the segment goes with the next compaction.
    faults.heal_reads();
    let report = store.compact().unwrap();
    assert!(report.segments_freed >= 1, "{report:?}");
    check(&store, &model, universe, "after the second compaction");
    store.close().unwrap();
    let store = Store::open(dir.path(), opts()).unwrap();
    check(&store, &model, universe, "after reopen");
}

/// Found by review: a segment over about 256 MiB closed early for a relocation segment got
/// a Pad longer than the decoder took (one largest record), so the segment did not read to
/// its end: a rebuild reported damage in sound data (and a reclaim round scanning it kept
/// it for good). 512 MiB segments; the tail's segment is closed early at about 28 MiB.
/// Segments above 4 GiB - 4 KiB, whose Pad length would not fit its field, are refused.
#[test]
fn a_large_segment_closed_early_reads_to_its_end() {
    let dir = TempDir::new("reclaim-large-pad");
    const MIB: usize = 1 << 20;
    let o = Options::default()
        .buffer_size(16 << 20)
        .max_value_size(2 << 20)
        .segment_size(512 << 20)
        .expected_records(1024)
        .background_reclaim(false);
    assert!(matches!(
        Store::open(dir.path(), o.clone().segment_size(1 << 32)),
        Err(kvs::Error::InvalidArgument(_))
    ));
    let store = Store::open(dir.path(), o.clone()).unwrap();
    let mut model = HashMap::new();
    for k in 0..530u64 {
        let v = value_for(&key(k), k, MIB);
        store.put(&key(k), &v).unwrap();
        model.insert(k, v);
    }
    for k in 0..20u64 {
        let v = value_for(&key(k), 1000 + k, MIB);
        store.put(&key(k), &v).unwrap();
        model.insert(k, v);
    }
    store.sync().unwrap();
    let report = store.compact().unwrap();
    assert!(report.segments_freed >= 1, "{report:?}");
    store.close().unwrap();
    // Read every segment again, the early-closed one included.
    std::fs::remove_file(dir.path().join(kvs::IMAGE_FILE)).unwrap();
    let _ = std::fs::remove_dir_all(dir.path().join("summary"));
    let store = Store::open(dir.path(), o).unwrap();
    let st = store.stats();
    assert_eq!(st.damaged_ranges, 0, "{st:?}");
    check(&store, &model, 530, "after a rebuild");
    assert_eq!(store.verify().unwrap().corrupt, 0);
    store.close().unwrap();
}

/// Found by review: a segment given back was punched whole, and a file system may punch a
/// large range in several journal transactions, from its end back. A crash midway left its
/// header sound over a slot whose end was gone: every later open reported damage there,
/// and a full rebuild replayed a put whose tombstone (dropped from the oldest segment, as
/// nothing older was left for it to hide) had been punched, so a deleted key came back.
/// Now a slot's head is punched and made durable first. Here the punch stops midway
/// (`Action::Torn`: its second half punched, then EIO): with the head's punch torn (n = 1)
/// or the rest's (n = 2), a rebuild never brings the key back, and with the rest's torn
/// the slot simply reads as free.
#[test]
fn a_punch_cut_short_never_brings_a_deleted_key_back() {
    use kvs::testing::{Action, Hooks, Op};
    for n in [1, 2] {
        let dir = TempDir::new("reclaim-torn-punch");
        let (dev, faults, hooks) = common::with_faults();
        let o = opts();
        let store = Store::open_with(dir.path(), o.clone(), hooks).unwrap();
        let mut model = HashMap::new();
        let put = |model: &mut HashMap<u64, Vec<u8>>, k: u64, v: u64, len: usize| {
            put_noted(&store, model, k, v, len)
        };
        // The first segment: a filler, the put of key 1000 in its first half, fillers,
        // and key 1000's tombstone in its second half.
        put(&mut model, 0, 0, 20_000);
        put(&mut model, 1000, 0, 3000);
        // Written before its tombstone comes (a put superseded in the ring is written as
        // a hole).
        store.sync().unwrap();
        for k in 1..8 {
            put(&mut model, k, 0, 20_000);
        }
        store.delete(&key(1000)).unwrap();
        model.remove(&1000);
        assert!(
            store.stats().log_end < SEG,
            "the tombstone is in the first segment"
        );
        assert!(store.stats().log_end > SEG / 2 + 4096);
        // Past the first segment; then the fillers overwritten: only it has dead bytes.
        for k in 8..20 {
            put(&mut model, k, 0, 20_000);
        }
        for k in 0..8 {
            put(&mut model, k, 1, 20_000);
        }
        // Written out: the first segment is closed, a victim.
        store.sync().unwrap();
        faults.fail(Op::Punch, n, Action::Torn);
        assert!(store.compact().is_err(), "n = {n}: the punch did not fail");
        assert_eq!(faults.fired(), 1);
        assert!(store.close().is_err());
        // A full rebuild from disk_file alone.
        drop_image(dir.path());
        let store = Store::open_with(dir.path(), o.clone(), Hooks::memory(dev.clone())).unwrap();
        assert!(
            store.get(&key(1000)).unwrap().is_none(),
            "n = {n}: the deleted key is back"
        );
        check(&store, &model, 20, "after the rebuild");
        if n == 2 {
            let st = store.stats();
            assert_eq!((st.damaged_ranges, st.kept_slots), (0, 0), "n = {n}");
        }
        store.close().unwrap();
    }
}

/// Found by review: a round dropped the tombstones of a victim whose older segments were
/// all earlier victims of the round, taking them for given back; but one of those stayed
/// (a record in it could not be read), and the puts the dropped tombstones hid stayed with
/// it: a full rebuild brought a deleted key back. Now tombstones are left behind only
/// over older victims read whole, and a victim that left them is kept if one below stays.
#[test]
fn a_tombstone_is_kept_while_the_segment_it_hides_stays() {
    let dir = TempDir::new("reclaim-tomb-kept");
    let faults = kvs::testing::Faults::new();
    let hooks = kvs::testing::Hooks {
        faults: Some(faults.clone()),
        ..Default::default()
    };
    let store = Store::open_with(dir.path(), opts(), hooks).unwrap();
    let mut model = HashMap::new();
    let put = |model: &mut HashMap<u64, Vec<u8>>, k: u64, v: u64, len: usize| {
        put_noted(&store, model, k, v, len)
    };
    // The first segment: key 1000, then key 1 (which will not read), then fillers.
    put(&mut model, 1000, 0, 3000);
    put(&mut model, 1, 0, 20_000);
    let mut k = 2;
    while store.stats().log_end < SEG {
        put(&mut model, k, 0, 20_000);
        k += 1;
    }
    store.sync().unwrap();
    // The second segment: key 1000's tombstone, and overwrites of the fillers.
    store.delete(&key(1000)).unwrap();
    model.remove(&1000);
    assert_eq!(store.stats().log_end / SEG, 1);
    for f in 2..k {
        put(&mut model, f, 1, 20_000);
    }
    for f in 2..k {
        put(&mut model, f, 2, 20_000);
    }
    // Past the ring's 1 MiB: key 1 is read from disk.
    for f in 100..160 {
        put(&mut model, f, 0, 20_000);
    }
    store.sync().unwrap();
    let (bad_at, bad_len) = store.record_extent(&key(1)).unwrap().unwrap();
    faults.fail_reads(
        bad_at..bad_at + bad_len as u64,
        kvs::testing::Action::Errno(libc::EIO),
    );
    store.compact().unwrap();
    faults.heal_reads();
    store.close().unwrap();
    // A full rebuild from disk_file.
    drop_image(dir.path());
    let store = Store::open(dir.path(), opts()).unwrap();
    assert!(
        store.get(&key(1000)).unwrap().is_none(),
        "the deleted key is back"
    );
    check(&store, &model, 160, "after the rebuild");
    store.close().unwrap();
}

/// Found by review: `compact` looped for ever when the segments left to do looked full to
/// the victim picker (live records and tombstones to copy filling them: records of 40
/// bytes fill a 1 MiB segment exactly): each turn picked nothing and ran an empty round,
/// holding the reclaimer's lock (background rounds, listings and close waited on it).
#[test]
fn a_compaction_ends_when_only_full_looking_segments_are_left() {
    let dir = TempDir::new("reclaim-compact-ends");
    let o = opts()
        .segment_size(1 << 20)
        .buffer_size(4 << 20)
        .flush_interval(Duration::from_secs(60))
        .flush_horizon(256 << 10)
        .expected_records(100_000);
    let store = Arc::new(Store::open(dir.path(), o).unwrap());
    // 40-byte records: an 8-byte key, an empty value; tombstones of 8-byte keys too.
    let k8 = |i: u64| format!("{i:08}").into_bytes();
    const PER_SEGMENT: u64 = ((1 << 20) - 4096) / 40;
    for i in 0..PER_SEGMENT {
        store.put(&k8(i), b"").unwrap();
    }
    // Two segments of new keys and deletes of old ones, in turn; then one more.
    for i in 0..PER_SEGMENT {
        store.put(&k8(PER_SEGMENT + i), b"").unwrap();
        store.delete(&k8(i)).unwrap();
    }
    for i in 0..PER_SEGMENT {
        store.put(&k8(2 * PER_SEGMENT + i), b"").unwrap();
    }
    store.sync().unwrap();
    let (done, finished) = std::sync::mpsc::channel();
    let s = store.clone();
    let compacting = std::thread::spawn(move || done.send(s.compact().map(|_| ())));
    finished
        .recv_timeout(Duration::from_secs(60))
        .expect("the compaction did not end")
        .unwrap();
    // Its clone of the store is dropped once the thread ends.
    compacting.join().unwrap().unwrap();
    assert!(store.get(&k8(5)).unwrap().is_none());
    assert_eq!(store.get(&k8(PER_SEGMENT + 5)).unwrap(), Some(Vec::new()));
    Arc::into_inner(store).unwrap().close().unwrap();
}

/// Found by review: a victim read whole (it holds tombstones, so the index alone cannot
/// say what to move) stopped the whole round at an unreadable stretch: one bad sector in
/// such a segment failed every compaction and background round. Now that segment stays
/// and the round goes on with the others.
#[test]
fn an_unreadable_segment_with_tombstones_stays_and_the_round_goes_on() {
    let (dir, store, faults, model, bad_slot) = key_1_unreadable("reclaim-eio-scan", true);
    let universe = 60u64;
    let report = store.compact().unwrap();
    assert!(report.segments_freed >= 2, "{report:?}");
    let after = store.record_extent(&key(1)).unwrap().unwrap().0;
    assert_eq!((after - 4096) / SEG, bad_slot, "key 1's segment stays");
    faults.heal_reads();
    check(&store, &model, universe, "after the compaction");
    store.close().unwrap();
    let store = Store::open(dir.path(), opts()).unwrap();
    check(&store, &model, universe, "after reopen");
    store.close().unwrap();
}

/// Found by review: a relocation segment closed properly ends with a Pad to its end, yet
/// a short read of it was taken for the unwritten rest of one left open by a crash. With
/// the header of its last record damaged, the segment counted as read whole and was given
/// back, and the tombstone copy in it went too: a full rebuild then brought the deleted
/// key back from an older segment. Now such a segment (its key summary reaches its end)
/// stays, as any damaged segment does.
#[test]
fn a_closed_relocation_segment_read_short_is_damaged_and_stays() {
    let dir = TempDir::new("reclaim-reloc-short");
    // Through the page cache: no Pad to a block boundary at a flush, so the segments
    // below hold no dead bytes but those the test makes.
    let o = opts().direct_io(false);
    let store = Store::open(dir.path(), o.clone()).unwrap();
    let mut model = HashMap::new();
    let put = |model: &mut HashMap<u64, Vec<u8>>, k: u64, v: u64, len: usize| {
        put_noted(&store, model, k, v, len)
    };
    // Puts from key `k` on that end the tail's segment exactly at its end (no Pad);
    // returns the next key.
    let fill = |model: &mut HashMap<u64, Vec<u8>>, mut k: u64| loop {
        let left = SEG - store.stats().log_end % SEG;
        let record = |len: u64| len as usize - 32 - key(k).len();
        let len = if left >= 2 * 20_040 { 20_040 } else { left };
        put(model, k, 0, record(len));
        k += 1;
        if store.stats().log_end % SEG == 0 {
            return k;
        }
    };
    // The first segment: key 1000 and live fillers (too little dead to be a victim).
    put(&mut model, 1000, 0, 3000);
    let first_g = fill(&mut model, 1);
    store.sync().unwrap();
    // The second segment: key 1000's tombstone and fillers, overwritten after it closes.
    store.delete(&key(1000)).unwrap();
    model.remove(&1000);
    let k = fill(&mut model, first_g);
    for g in first_g..k {
        let len = model[&g].len();
        put(&mut model, g, 1, len);
    }
    store.sync().unwrap();
    // Its only live record is the tombstone: copied alone into a relocation segment.
    store.compact().unwrap();
    store.close().unwrap();
    let disk_file = dir.path().join("disk_file");
    let reloc = relocation_segments(&disk_file);
    // Damage the header of the tombstone copy: the first (and last) record of its
    // relocation segment, a record with a key and no value.
    let mut bytes = std::fs::read(&disk_file).unwrap();
    let u32_at = |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
    let slot = (4096..bytes.len())
        .step_by(SEG as usize)
        .find(|&at| {
            let r = at + 4096;
            &bytes[at..at + 8] == b"KVSSEG\0\0"
                && reloc.contains(&u64::from_le_bytes(
                    bytes[at + 8..at + 16].try_into().unwrap(),
                ))
                && &bytes[r..r + 4] == b"KVR1"
                && u32_at(&bytes, r + 8) == 8
                && u32_at(&bytes, r + 12) == 0
        })
        .expect("a relocation segment starting with the tombstone copy");
    bytes[slot + 4096 + 9] ^= 0x5a;
    std::fs::write(&disk_file, &bytes).unwrap();
    let store = Store::open(dir.path(), o.clone()).unwrap();
    store.compact().unwrap();
    store.close().unwrap();
    assert_eq!(
        relocation_segments(&disk_file),
        reloc,
        "the damaged relocation segment was given back"
    );
    drop_image(dir.path());
    let store = Store::open(dir.path(), o).unwrap();
    assert!(
        store.get(&key(1000)).unwrap().is_none(),
        "the deleted key is back"
    );
    check(&store, &model, k, "after the rebuild");
    store.close().unwrap();
}

/// Found by review: a segment a round found damaged stays, and was taken as a victim
/// again every round: read whole each time, its tombstones copied once more each time
/// (they can never be dropped while it stays below them), the file growing without end.
/// Now a segment found damaged is not taken again until the store is reopened.
#[test]
fn a_damaged_segment_is_not_reclaimed_again_and_again() {
    let dir = TempDir::new("reclaim-damaged-again");
    let o = opts().direct_io(false);
    let store = Store::open(dir.path(), o.clone()).unwrap();
    let mut model = HashMap::new();
    // The first segment: live fillers, never overwritten (never a victim).
    let mut k = 0;
    while store.stats().log_end < SEG {
        let v = value_for(&key(k), k, 20_000);
        store.put(&key(k), &v).unwrap();
        model.insert(k, v);
        k += 1;
    }
    // The second: puts of d0..d49 and their deletes, and fillers overwritten later.
    for d in 0..50u64 {
        store.put(format!("d{d}").as_bytes(), b"gone").unwrap();
    }
    for d in 0..50u64 {
        store.delete(format!("d{d}").as_bytes()).unwrap();
    }
    let first_f = k;
    while store.stats().log_end < 2 * SEG {
        store.put(&key(k), &value_for(&key(k), k, 20_000)).unwrap();
        k += 1;
    }
    for f in first_f..k {
        let v = value_for(&key(f), 100 + f, 20_000);
        store.put(&key(f), &v).unwrap();
        model.insert(f, v);
    }
    let (dead_at, _) = store
        .record_extent(&key(first_f))
        .unwrap()
        .unwrap_or((0, 0));
    store.close().unwrap();
    // Damage a dead record of the second segment: the key's first value, overwritten.
    let disk_file = dir.path().join("disk_file");
    let mut bytes = std::fs::read(&disk_file).unwrap();
    let needle = &value_for(&key(first_f), first_f, 20_000)[100..164];
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("the overwritten value on disk");
    assert_ne!(at as u64, dead_at);
    // Its header: 32 bytes and the key before the value.
    let header = at - 100 - key(first_f).len() - 32;
    assert_eq!(&bytes[header..header + 4], b"KVR1");
    bytes[header + 9] ^= 0xff;
    std::fs::write(&disk_file, &bytes).unwrap();
    let store = Store::open(dir.path(), o).unwrap();
    for _ in 0..4 {
        store.compact().unwrap();
    }
    // Each time the segment is read whole, the reclaimer logs its damage.
    let log = std::fs::read_to_string(dir.path().join("LOG")).unwrap();
    let scans = log
        .lines()
        .filter(|l| l.contains("reclaim: log segment") && l.contains("is damaged at"))
        .count();
    assert_eq!(
        scans, 1,
        "the damaged segment was read whole {scans} times:\n{log}"
    );
    check(&store, &model, k, "after the compactions");
    for d in 0..50u64 {
        assert!(store.get(format!("d{d}").as_bytes()).unwrap().is_none());
    }
    store.close().unwrap();
}

#[test]
fn compactions_with_nothing_written_between_them_come_to_rest() {
    let dir = TempDir::new("reclaim-rest");
    let store = Store::open(dir.path(), opts()).unwrap();
    let mut model = HashMap::new();
    let mut rng = Rng(5);
    for i in 0..400u64 {
        let k = rng.below(60);
        let v = value_for(&key(k), i, 1000 + rng.below(20_000) as usize);
        store.put(&key(k), &v).unwrap();
        model.insert(k, v);
    }
    let first = store.compact().unwrap();
    assert!(first.segments_freed > 0, "{first:?}");
    // The segments a compaction writes hold their Pads as dead bytes; moving their records
    // again gains nothing. Within a few more compactions nothing is left to move (how many
    // depends on where the flushes' Pads fell), and from then on none moves anything.
    let mut reports = Vec::new();
    while reports.len() < 5 {
        let r = store.compact().unwrap();
        let rest = (r.records_moved, r.segments_freed) == (0, 0);
        reports.push(r);
        if rest {
            break;
        }
    }
    let end = store.stats().log_end;
    for _ in 0..3 {
        let r = store.compact().unwrap();
        assert_eq!(
            (r.records_moved, r.segments_freed),
            (0, 0),
            "a compaction with nothing written since still moved records: {r:?} (before: \
             {first:?}, {reports:?})"
        );
    }
    assert_eq!(store.stats().log_end, end);
    check(&store, &model, 60, "after the compactions");
    drop(store);
    let store = Store::open(dir.path(), opts()).unwrap();
    check(&store, &model, 60, "after a reopen");
}

/// A compaction whose image meets a full disk (ENOSPC writing the IMAGE_delta block that
/// covers its copies) failed the store; since a full disk at a checkpoint is `NoSpace`,
/// the compaction returns `NoSpace` instead and gives back no victim (their copies are in
/// no image yet), and an open after a crash then has every record. The store goes on:
/// checkpoints meet the full disk 29 more times (each giving its block's changes back to
/// the journal), then one has room, and the next compaction gives the victims back.
#[test]
fn a_compaction_whose_image_meets_a_full_disk_gives_nothing_back() {
    let dir = TempDir::new("reclaim-image-enospc");
    let faults = Faults::new();
    let hooks = Hooks {
        faults: Some(faults.clone()),
        ..Hooks::default()
    };
    let store = Store::open_with(dir.path(), opts(), hooks).unwrap();
    let mut model = HashMap::new();
    let mut rng = Rng(17);
    for i in 0..400u64 {
        let k = rng.below(60);
        put_noted(&store, &mut model, k, i, 1000 + rng.below(20_000) as usize);
    }
    // An image covering the whole log, which the open after a crash below starts from.
    store.checkpoint().unwrap();
    let freed = store.stats().segments_freed;
    // The disk stays full for the next 30 writes of the index's files: a compaction that
    // went on past its first failed image would find none covering its copies either.
    const FULL: u64 = 30;
    for n in 1..=FULL {
        faults.fail(Op::ImageWrite, n, Action::Errno(libc::ENOSPC));
    }
    let r = store.compact();
    assert!(matches!(r, Err(kvs::Error::NoSpace)), "{r:?}");
    assert_eq!(faults.fired(), 1);
    check(&store, &model, 60, "after the compaction that failed");
    // Tried again on the full disk: the image of the copies made comes first, and it
    // fails before anything more is copied (found by review: every retry copied again).
    let moved = store.stats().records_moved;
    let r = store.compact();
    assert!(matches!(r, Err(kvs::Error::NoSpace)), "{r:?}");
    assert_eq!(faults.fired(), 2);
    assert_eq!(
        store.stats().records_moved,
        moved,
        "copied again before the image"
    );
    let st = store.stats();
    assert!(!st.failed);
    assert_eq!(
        st.segments_freed, freed,
        "a victim went before an image covered it"
    );
    assert!(st.records_moved > 0, "the compaction moved nothing: {st:?}");
    check(&store, &model, 60, "after the compaction that failed");
    // A crash now: every record is where the open finds it.
    let copy = copy_store(dir.path(), "reclaim-image-enospc-copy");
    let reopened = Store::open(copy.path(), opts()).unwrap();
    // From the image, which still points into the victims (an image pointing into a
    // segment given back is not used: the open rebuilds).
    assert!(reopened.stats().opened_from_image);
    check(
        &reopened,
        &model,
        60,
        "after a crash following the failed compaction",
    );
    reopened.close().unwrap();
    // The store goes on: puts, checkpoints that meet the full disk until it has room
    // again, and a compaction that gives the segments back.
    put_noted(&store, &mut model, 7, 1000, 5000);
    let mut tries = 1;
    while let Err(e) = store.checkpoint() {
        assert!(matches!(e, kvs::Error::NoSpace), "{e:?}");
        tries += 1;
        assert!(tries <= FULL, "still no room after the disk had room again");
    }
    assert_eq!(faults.fired(), FULL);
    let r = store.compact().unwrap();
    assert!(store.stats().segments_freed > freed, "{r:?}");
    check(&store, &model, 60, "after the next compaction");
    store.close().unwrap();
    let store = Store::open(dir.path(), opts()).unwrap();
    assert!(store.stats().opened_from_image);
    check(&store, &model, 60, "after a reopen");
}

/// Slots the reclaimer gives back keep their blocks for the next segments (recycled),
/// and a segment opened in one reads back whole, at every reopen. Once nothing is
/// written, the background reclaimer punches them within about `RECYCLE_WAIT` (2 s), and
/// a compaction does at once.
#[test]
fn recycled_slots_are_reused_then_given_back_when_writes_stop() {
    let dir = TempDir::new("recycle");
    let store = Store::open(dir.path(), eager()).unwrap();
    let mut last: HashMap<u64, u64> = HashMap::new();
    let check = |store: &Store, last: &HashMap<u64, u64>| {
        for (&k, &v) in last {
            let key = format!("k{k}").into_bytes();
            let want = value_for(&key, v, 20_000);
            assert_eq!(store.get(&key).unwrap(), Some(want), "k{k}");
        }
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut i = 0u64;
    // Until slots have been reused, and one is kept right after the last put (looking
    // only after the writes, a round could already have taken the kept slot for its
    // relocation segment: the test failed so in a CI run, 2026-11-25).
    let busy = |st: kvs::Stats| st.segments_reused < 5 || st.recycled_segments == 0;
    while busy(store.stats()) {
        assert!(
            std::time::Instant::now() < deadline,
            "no segment reused a slot, or none was kept"
        );
        let k = i % 30;
        let key = format!("k{k}").into_bytes();
        store.put(&key, &value_for(&key, i, 20_000)).unwrap();
        last.insert(k, i);
        i += 1;
    }
    check(&store, &last);
    // Writes stop with a slot kept: the reclaimer punches the kept slots.
    let waited = std::time::Instant::now();
    let mut quiet_since = None::<std::time::Instant>;
    while quiet_since.is_none_or(|t| t.elapsed() < Duration::from_secs(3)) {
        let st = store.stats();
        if st.recycled_segments > 0 {
            quiet_since = None;
        } else if quiet_since.is_none() {
            quiet_since = Some(std::time::Instant::now());
        }
        assert!(
            waited.elapsed() < Duration::from_secs(20),
            "{} recycled slots still kept after 20 s without writes",
            st.recycled_segments
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("kept slots all punched after {:?}", waited.elapsed());
    store.close().unwrap();
    let store = Store::open(dir.path(), opts()).unwrap();
    check(&store, &last);
    assert_eq!(store.verify().unwrap().corrupt, 0);
    // A compaction leaves none kept either.
    for j in 0..200u64 {
        let k = j % 30;
        let key = format!("k{k}").into_bytes();
        store.put(&key, &value_for(&key, i + j, 20_000)).unwrap();
        last.insert(k, i + j);
    }
    store.compact().unwrap();
    let st = store.stats();
    assert!(st.segments_freed > 0, "{st:?}");
    assert_eq!(st.recycled_segments, 0, "{st:?}");
    check(&store, &last);
    store.close().unwrap();
}

/// A put entering a new segment finds disk_file already grown: the background reclaimer
/// keeps the file two slots ahead of the segments in use. Before, such a put grew the
/// file itself while holding the ring's lock, and on ext4 that ftruncate waits for the
/// lookout's O_DIRECT write in flight (2.5-3 ms in each of a fill's segments, traced).
#[test]
fn puts_entering_new_segments_do_not_wait_for_the_file_to_grow() {
    let dir = TempDir::new("grow-ahead");
    let (dev, faults, hooks) = common::with_faults();
    let store = Store::open_with(dir.path(), opts().background_reclaim(true), hooks).unwrap();
    // The superblock and two slots ahead of the segments in use (none before a put).
    let grown = 4096 + 2 * SEG as usize;
    let started = std::time::Instant::now();
    while dev.contents().len() < grown {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "disk_file was not grown ahead: {} bytes",
            dev.contents().len()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    faults.hold_allocations(true);
    // Two segments (at most six 40 KiB values fit in one of 256 KiB).
    let n = 8u64;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        let store = &store;
        s.spawn(move || {
            let r: kvs::Result<()> = (0..n).try_for_each(|i| {
                let k = i.to_le_bytes();
                store.put(&k, &value_for(&k, 1, 40 << 10))
            });
            let _ = tx.send(r);
        });
        let done = rx.recv_timeout(Duration::from_secs(10));
        faults.hold_allocations(false);
        done.expect("puts waited for disk_file to grow").unwrap();
    });
    let st = store.stats();
    assert_eq!(st.segments, 2, "{st:?}");
    store.close().unwrap();
    // The slots grown ahead and never written are free after a reopen.
    let store = Store::open_with(dir.path(), opts(), Hooks::memory(dev.clone())).unwrap();
    for i in 0..n {
        let k = i.to_le_bytes();
        assert_eq!(store.get(&k).unwrap(), Some(value_for(&k, 1, 40 << 10)));
    }
    let st = store.stats();
    assert!(st.free_segments >= 1, "{st:?}");
    store.close().unwrap();
}

/// A background round that gains little (dead bytes spread thin) makes the reclaimer wait
/// for more dead bytes than it saw. A compaction then gives everything dead back; found
/// by review: the wait stayed, so background reclaiming stayed idle after the compaction
/// until the dead bytes climbed back past that mark, however far past `reclaim_threshold`
/// the store went meanwhile.
#[test]
fn background_reclaiming_resumes_after_a_compaction() {
    let dir = TempDir::new("idle-after-compact");
    let store = Store::open(dir.path(), eager()).unwrap();
    let mut model = HashMap::new();
    let started = std::time::Instant::now();
    let wait_for = |what: &str, done: &dyn Fn(&kvs::Stats) -> bool| loop {
        let st = store.stats();
        if done(&st) {
            return st;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{what}: {st:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    // About 10 segments of 8000-byte records, then one record in 16 overwritten: every
    // segment a little dead, so a round frees little for what it copies.
    let n = 310;
    for k in 0..n {
        put_noted(&store, &mut model, k, 0, 8000);
    }
    for k in (0..n).step_by(16) {
        put_noted(&store, &mut model, k, 1, 8000);
    }
    store.sync().unwrap();
    wait_for("a background round", &|st| st.reclaim_rounds > 0);
    std::thread::sleep(Duration::from_millis(500));
    store.compact().unwrap();
    let compacted = store.stats();
    // Dead bytes again: past the threshold (5%), short of what the poor round saw plus a
    // segment.
    for k in 0..30 {
        put_noted(&store, &mut model, k, 2, 8000);
    }
    store.sync().unwrap();
    wait_for("background reclaiming after the compaction", &|st| {
        st.segments_freed > compacted.segments_freed
    });
    check(&store, &model, n, "after");
    store.close().unwrap();
}

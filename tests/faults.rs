//! Faults that real disks produce must never become lost or misreported data: failed
//! writes and fdatasyncs (the store latches as failed: no later success is reported),
//! damage in the middle of the log (recovery resynchronises and keeps what follows), a
//! stale IMAGE_file (open rebuilds instead of cutting), and dead background threads (an
//! error, never a hang). `KVS_FAULT_SEEDS=N` runs the fault-injection model longer.

mod common;

use std::collections::HashMap;
use std::fs;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{downgrade_to_v2, hooks, value_for, Rng, TempDir};
use kvs::testing::{Action, Faults, Hooks, MemDisk, Op};
use kvs::{Durability, Error, Options, Store, DISK_FILE, IMAGE_FILE, LOG_FILE};

fn opts(mode: Durability) -> Options {
    Options::default()
        .buffer_size(2 << 20)
        .max_value_size(100 << 10)
        .flush_interval(Duration::from_millis(2))
        .expected_records(64)
        .durability(mode)
        .segment_size(1 << 20)
        .checkpoint_bytes(0)
        .checkpoint_interval(Duration::ZERO)
        .background_reclaim(false)
}

fn is_failed<T: std::fmt::Debug>(r: &kvs::Result<T>) -> bool {
    matches!(r, Err(Error::Failed(_)))
}

/// The scenario an independent check found: in `Always` and `None` modes the lookout's
/// sync-less flush had advanced `flushed`; the group-commit leader's fdatasync failed; the
/// next sync led again, its fdatasync succeeded and reported OK; close then wrote an image
/// pointing at records the kernel had dropped. Now the first failure latches: no later
/// sync succeeds, close writes no image, and after reopening nothing reads wrong.
#[test]
fn a_failed_fdatasync_is_never_followed_by_a_success() {
    for mode in [Durability::Always, Durability::None, Durability::Batch] {
        let dir = TempDir::new("fsyncgate");
        let dev = MemDisk::new();
        let faults = Faults::new();
        let store = Store::open_with(dir.path(), opts(mode), hooks(&dev, &faults)).unwrap();
        // The new store's empty image, covering nothing.
        let empty_image = fs::read(dir.path().join(IMAGE_FILE)).unwrap();
        let key = |i: u64| format!("k{i}").into_bytes();
        for i in 0..20 {
            store.put(&key(i), &value_for(&key(i), 1, 5000)).unwrap();
        }
        store.sync().unwrap();
        // The next fdatasync fails, and the kernel drops the dirty pages.
        faults.fail(Op::Sync, 1, Action::Errno(libc::EIO));
        let mut failed_at = None;
        for i in 20..40 {
            let r = store.put(&key(i), &value_for(&key(i), 1, 5000));
            if r.is_err() {
                assert!(is_failed(&r), "{mode:?}: {r:?}");
                failed_at.get_or_insert(i);
            }
        }
        let r = store.sync();
        assert!(is_failed(&r), "{mode:?}: the failed sync: {r:?}");
        assert_eq!(faults.fired(), 1);
        // Never a success after the failure, and every change refused.
        for _ in 0..3 {
            assert!(is_failed(&store.sync()), "{mode:?}");
        }
        assert!(is_failed(&store.put(b"new", b"x")));
        assert!(is_failed(&store.delete(&key(0))));
        assert!(is_failed(&store.checkpoint()));
        assert!(is_failed(&store.compact()));
        assert!(store.stats().failed);
        // Gets keep working; what was synced reads back.
        for i in 0..20 {
            assert_eq!(
                store.get(&key(i)).unwrap(),
                Some(value_for(&key(i), 1, 5000))
            );
        }
        assert_eq!(store.get(b"new").unwrap(), None);
        assert!(
            is_failed(&store.close()),
            "{mode:?}: close of a failed store"
        );
        assert!(
            fs::read(dir.path().join(IMAGE_FILE)).unwrap() == empty_image,
            "{mode:?}: no image may cover data the kernel may have dropped"
        );
        let log = fs::read_to_string(dir.path().join(LOG_FILE)).unwrap();
        assert!(log.contains("IMAGE_file not written"), "{log}");
        // Reopen on what is really on the device.
        let store = Store::open_with(dir.path(), opts(mode), Hooks::memory(dev.clone())).unwrap();
        assert!(!store.stats().failed);
        for i in 0..40 {
            match store.get(&key(i)) {
                Ok(Some(v)) => assert_eq!(v, value_for(&key(i), 1, 5000), "{mode:?} k{i}"),
                Ok(None) => assert!(i >= 20, "{mode:?}: synced k{i} lost"),
                Err(e) => panic!("{mode:?} k{i}: {e}"),
            }
        }
        assert!(store.verify().unwrap().is_clean());
        store.put(b"after", b"works").unwrap();
        store.sync().unwrap();
        store.close().unwrap();
    }
}

/// A value's state in the model: (version, length), or deleted.
type State = Option<(u64, usize)>;

/// One fault-injection round: a model workload with checkpoints and compactions in which
/// the `nth` call of `op` fails with `action`. Every call after the first `Failed` must
/// fail too; after reopening without the fault, every key holds its last acknowledged
/// durable state or a later one, byte for byte. Returns (records checked, fired).
fn fault_round(seed: u64, op: Op, action: Action, mode: Durability) -> (u64, bool) {
    let dir = TempDir::new("fault-model");
    let dev = MemDisk::new();
    let faults = Faults::new();
    let mut rng = Rng(seed);
    let o = opts(mode).segment_size(256 << 10);
    let store = Store::open_with(dir.path(), o.clone(), hooks(&dev, &faults)).unwrap();
    let mut durable: HashMap<u64, State> = HashMap::new();
    let mut pending: Vec<(u64, State)> = Vec::new();
    let ops = 150 + rng.below(250);
    let arm_at = rng.below(ops / 2);
    let mut failed = false;
    for i in 0..ops {
        if i == arm_at {
            faults.fail(op, 1 + rng.below(4), action);
        }
        let k = rng.below(30);
        let key = format!("k{k}").into_bytes();
        let step = rng.below(40);
        let (res, state): (kvs::Result<()>, Option<State>) = match step {
            0..=24 => {
                let len = if rng.below(6) == 0 {
                    rng.below(100_000)
                } else {
                    rng.below(4000)
                } as usize;
                let r = store.put(&key, &value_for(&key, seed << 20 | i, len));
                (r, Some(Some((seed << 20 | i, len))))
            }
            25..=30 => (store.delete(&key).map(|_| ()), Some(None)),
            31..=33 => (store.sync(), None),
            34..=35 => (store.checkpoint().map(|_| ()), None),
            36 => (store.compact().map(|_| ()), None),
            _ => {
                // Gets work whatever happened, and never return other bytes.
                let got = store.get(&key);
                match got {
                    Ok(Some(v)) => {
                        assert!(
                            common::is_version_of(&key, &v),
                            "seed {seed}: foreign bytes"
                        )
                    }
                    Ok(None) => {}
                    Err(Error::Corruption { .. }) if failed => {}
                    Err(e) => panic!("seed {seed} {op:?}: get failed: {e}"),
                }
                continue;
            }
        };
        match &res {
            Ok(()) => assert!(!failed, "seed {seed} {op:?}: a success after Failed"),
            Err(Error::Failed(_)) => failed = true,
            Err(Error::NoSpace) => {}
            Err(e) => panic!("seed {seed} {op:?} {action:?}: unexpected {e}"),
        }
        if let Some(s) = state {
            // A refused change (an error before it was taken) changes nothing; one whose
            // durable commit failed may or may not survive: keep it as a possibility.
            if res.is_ok() || (mode == Durability::Always && failed) {
                pending.push((k, s));
            }
        }
        if res.is_ok() && ((31..=35).contains(&step) || mode == Durability::Always) {
            // sync and checkpoint make everything before them durable, as does an
            // acknowledged put or delete in Always mode (compact need not sync anything).
            for (k, s) in pending.drain(..) {
                durable.insert(k, s);
            }
        }
    }
    let fired = faults.fired() > 0;
    // A full disk met by the index's files is NoSpace for the call that met it, and the
    // store goes on; any other fault latches it.
    let latches = !(action == Action::Errno(libc::ENOSPC)
        && matches!(op, Op::ImageWrite | Op::ImageSync | Op::ImageRename));
    assert!(
        latches || !failed,
        "seed {seed} {op:?}: a full disk met by the index's files failed the store"
    );
    let closed = store.close();
    if failed || (fired && latches) {
        // A fault that fired latched the store, whether or not a call noticed it yet.
        assert!(
            is_failed(&closed),
            "seed {seed} {op:?}: close after failure: {closed:?}"
        );
    } else if let Err(e) = closed {
        // The fault hit the final flush or the image write of close itself.
        let expected = if latches {
            matches!(e, Error::Failed(_))
        } else {
            matches!(e, Error::NoSpace)
        };
        assert!(expected, "seed {seed} {op:?} {action:?}: close: {e}");
    }
    let fired = faults.fired() > 0;
    // Every other round the power is cut too: only what was synced, and any subset of the
    // writes since, survives.
    let survivor = TempDir::new("fault-model-cut");
    let store = if seed % 2 == 0 {
        fs::create_dir_all(survivor.path()).unwrap();
        let _ = fs::copy(
            dir.path().join(IMAGE_FILE),
            survivor.path().join(IMAGE_FILE),
        );
        fs::write(survivor.path().join(DISK_FILE), dev.cut(seed)).unwrap();
        Store::open(survivor.path(), o).unwrap()
    } else {
        Store::open_with(dir.path(), o, Hooks::memory(dev.clone())).unwrap()
    };
    let mut checked = 0;
    for k in 0..30u64 {
        let key = format!("k{k}").into_bytes();
        let got = store
            .get(&key)
            .unwrap_or_else(|e| panic!("seed {seed} {op:?}: k{k}: {e}"));
        let matches = |s: &State| match (s, &got) {
            (None, None) => true,
            (Some((v, n)), Some(b)) => b.len() == *n && *b == value_for(&key, *v, *n),
            _ => false,
        };
        let base = durable.get(&k).cloned().unwrap_or(None);
        let ok = matches(&base) || pending.iter().any(|(kk, s)| *kk == k && matches(s));
        assert!(
            ok,
            "seed {seed} {op:?} {action:?} {mode:?}: k{k} holds {:?} bytes; durable {base:?}",
            got.map(|b| b.len())
        );
        checked += 1;
    }
    // A power cut may leave torn ranges before writes that survived (reported as damage);
    // no live record may be damaged.
    assert_eq!(store.verify().unwrap().corrupt, 0, "seed {seed} {op:?}");
    store.close().unwrap();
    (checked, fired)
}

#[test]
fn faults_of_every_kind_lose_nothing_acknowledged() {
    let seeds: u64 = std::env::var("KVS_FAULT_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let actions = [
        Action::Errno(libc::EIO),
        Action::Errno(libc::ENOSPC),
        Action::Torn,
    ];
    let (mut rounds, mut fired, mut records) = (0, 0, 0);
    for seed in 1..=seeds {
        for op in Op::ALL {
            let action = actions[(seed as usize + op as usize) % actions.len()];
            let mode = [Durability::Always, Durability::Batch, Durability::None][seed as usize % 3];
            let (n, f) = fault_round(seed * 7919 + op as u64, op, action, mode);
            rounds += 1;
            fired += f as u64;
            records += n;
        }
    }
    eprintln!("fault rounds: {rounds} ({fired} fired), {records} records checked, 0 lost");
    assert!(
        fired * 2 >= rounds,
        "most faults must fire: {fired} of {rounds}"
    );
}

/// Finds `needle` in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Damage in the middle of the log costs the damaged record alone: recovery steps over it
/// and keeps every record after it, with or without IMAGE_file, whether the header or the
/// value was hit; the damaged key reads as NotFound or Corruption, never other bytes.
#[test]
fn damage_in_the_middle_of_the_log_keeps_what_follows() {
    for (with_image, hit_header) in [(false, false), (false, true), (true, false), (true, true)] {
        let dir = TempDir::new("resync");
        let dev = MemDisk::new();
        let o = opts(Durability::Batch).segment_size(512 << 10);
        let store = Store::open_with(dir.path(), o.clone(), Hooks::memory(dev.clone())).unwrap();
        let key = |i: u64| format!("record-{i:04}").into_bytes();
        let val = |i: u64| value_for(&key(i), i, 20_000);
        for i in 0..300 {
            store.put(&key(i), &val(i)).unwrap();
            if with_image && i == 100 {
                // The image covers up to here: #150 lies in the replayed tail.
                store.checkpoint().unwrap();
            }
        }
        store.sync().unwrap();
        let image = fs::read(dir.path().join(IMAGE_FILE)).ok();
        let mut bytes = dev.cut(1);
        drop(store);
        let at = find(&bytes, &val(150)[..64]).unwrap();
        let target = if hit_header {
            at - 32 - key(150).len() + 8
        } else {
            at + 9000
        };
        for b in &mut bytes[target..target + 16] {
            *b ^= 0x5a;
        }
        let survivor = TempDir::new("resync-after");
        fs::create_dir_all(survivor.path()).unwrap();
        fs::write(survivor.path().join(DISK_FILE), &bytes).unwrap();
        if with_image {
            fs::write(survivor.path().join(IMAGE_FILE), image.unwrap()).unwrap();
        }
        let store = Store::open(survivor.path(), o.clone()).unwrap();
        assert_eq!(store.stats().opened_from_image, with_image);
        for i in 0..300 {
            let got = store.get(&key(i));
            if i == 150 {
                assert!(
                    matches!(got, Ok(None) | Err(Error::Corruption { .. })),
                    "image {with_image} header {hit_header}: {got:?}"
                );
            } else {
                assert_eq!(got.unwrap(), Some(val(i)), "image {with_image}: #{i}");
            }
        }
        let st = store.stats();
        assert!(st.damaged_ranges >= 1, "{st:?}");
        let report = store.verify().unwrap();
        assert!(!report.is_clean());
        assert!(report.damaged_ranges >= 1, "{report:?}");
        let log = fs::read_to_string(survivor.path().join(LOG_FILE)).unwrap();
        assert!(log.contains("damaged log range"), "{log}");
        // The store works on, and a reopen keeps it all.
        store.put(b"after", b"more").unwrap();
        store.close().unwrap();
        let store = Store::open(survivor.path(), o).unwrap();
        assert_eq!(store.get(&key(299)).unwrap(), Some(val(299)));
        assert_eq!(store.get(b"after").unwrap(), Some(b"more".to_vec()));
        store.close().unwrap();
    }
}

/// Values that hold record-like bytes cannot fool resynchronisation: a copy of this
/// store's own older records (a backup stored in the store) and a record forged with a
/// valid unkeyed checksum. The record holding them is damaged in its header, so the scan
/// resynchronises through them; none of their records may be replayed.
#[test]
fn record_copies_inside_values_are_not_mistaken_for_records() {
    for with_rebuild in [false, true] {
        let dir = TempDir::new("forged");
        let dev = MemDisk::new();
        let o = opts(Durability::Batch).segment_size(512 << 10);
        let store = Store::open_with(dir.path(), o.clone(), Hooks::memory(dev.clone())).unwrap();
        store.put(b"victim", b"old value").unwrap();
        store.put(b"gone", b"deleted later").unwrap();
        store.sync().unwrap();
        if !with_rebuild {
            store.checkpoint().unwrap();
        }
        // The log so far, records and all, as a user would back it up.
        let snapshot = dev.cut(1);
        let first = find(&snapshot, b"victim").unwrap() - 32;
        let copy = snapshot[first - first % 8..first + 4096].to_vec();
        store.put(b"victim", b"new value").unwrap();
        store.delete(b"gone").unwrap();
        // A forged record: a valid header with plain xxh3 checksums (as version 2 wrote),
        // a huge sequence number, for a key that was never put.
        let forged = forge_record(b"phantom", b"forged bytes", 1 << 40);
        // Placed so that the copied and forged headers sit on 8-byte boundaries of the
        // log, where resynchronisation looks: the record's header (32) and key (6) and
        // these 2 bytes put the value's copy at a multiple of 8.
        let mut value = vec![7u8; 2];
        value.extend_from_slice(&copy);
        value.extend_from_slice(&forged);
        value.extend_from_slice(&[9u8; 100]);
        store.put(b"backup", &value).unwrap();
        for i in 0..50u64 {
            store
                .put(format!("later-{i}").as_bytes(), &[i as u8; 300])
                .unwrap();
        }
        store.sync().unwrap();
        let image = fs::read(dir.path().join(IMAGE_FILE)).ok();
        let mut bytes = dev.cut(1);
        drop(store);
        // Damage the backup record's header.
        let at = find(&bytes, &value[..40]).unwrap() - 32 - b"backup".len();
        assert_eq!((at + 40) % 8, 0, "the copy lies on a record boundary");
        bytes[at + 10] ^= 0xff;
        let survivor = TempDir::new("forged-after");
        fs::create_dir_all(survivor.path()).unwrap();
        fs::write(survivor.path().join(DISK_FILE), &bytes).unwrap();
        if let (false, Some(img)) = (with_rebuild, image) {
            fs::write(survivor.path().join(IMAGE_FILE), img).unwrap();
        }
        let store = Store::open(survivor.path(), o).unwrap();
        assert_eq!(store.get(b"victim").unwrap(), Some(b"new value".to_vec()));
        assert_eq!(store.get(b"gone").unwrap(), None);
        assert_eq!(store.get(b"phantom").unwrap(), None);
        assert!(matches!(
            store.get(b"backup"),
            Ok(None) | Err(Error::Corruption { .. })
        ));
        for i in 0..50u64 {
            assert_eq!(
                store.get(format!("later-{i}").as_bytes()).unwrap(),
                Some(vec![i as u8; 300])
            );
        }
        assert!(store.stats().damaged_ranges >= 1);
        store.close().unwrap();
    }
}

/// A record as version 2 wrote it (unkeyed checksums), for `key` and `value`.
fn forge_record(key: &[u8], value: &[u8], seq: u64) -> Vec<u8> {
    use xxhash_rust::xxh3::{xxh3_64, Xxh3};
    let mut h = Xxh3::new();
    h.update(key);
    h.update(value);
    let data_sum = h.digest() as u32;
    let mut b = vec![0u8; 32];
    b[0..4].copy_from_slice(b"KVR1");
    b[4] = 1;
    b[8..12].copy_from_slice(&(key.len() as u32).to_le_bytes());
    b[12..16].copy_from_slice(&(value.len() as u32).to_le_bytes());
    b[16..24].copy_from_slice(&seq.to_le_bytes());
    b[24..28].copy_from_slice(&data_sum.to_le_bytes());
    let s = xxh3_64(&b[0..28]) as u32;
    b[28..32].copy_from_slice(&s.to_le_bytes());
    b.extend_from_slice(key);
    b.extend_from_slice(value);
    while b.len() % 8 != 0 {
        b.push(0);
    }
    b
}

/// An IMAGE_file put back from an older copy of the directory, after overwrites and a
/// compaction that gave back segments in the middle of the log whose slots were reused:
/// open must see that it does not fit the log, rebuild from disk_file, and lose nothing.
#[test]
fn a_stale_image_is_set_aside_and_nothing_is_lost() {
    let dir = TempDir::new("stale");
    let o = opts(Durability::Batch).segment_size(256 << 10);
    let store = Store::open(dir.path(), o.clone()).unwrap();
    let key = |i: u64| format!("k{i:03}").into_bytes();
    for i in 0..120 {
        store.put(&key(i), &value_for(&key(i), 1, 10_000)).unwrap();
    }
    store.checkpoint().unwrap();
    let old_image = fs::read(dir.path().join(IMAGE_FILE)).unwrap();
    for round in 2..6u64 {
        for i in 0..120 {
            if i % 3 != 0 {
                store
                    .put(&key(i), &value_for(&key(i), round, 10_000))
                    .unwrap();
            }
        }
        let r = store.compact().unwrap();
        assert!(r.segments_freed > 0, "{r:?}");
    }
    store.checkpoint().unwrap();
    store.close().unwrap();
    let disk_before = fs::read(dir.path().join(DISK_FILE)).unwrap();
    fs::write(dir.path().join(IMAGE_FILE), &old_image).unwrap();
    let store = Store::open(dir.path(), o.clone()).unwrap();
    assert!(!store.stats().opened_from_image, "the stale image was used");
    let want = |i: u64| {
        let v = if i % 3 == 0 { 1 } else { 5 };
        Some(value_for(&key(i), v, 10_000))
    };
    for i in 0..120 {
        assert_eq!(store.get(&key(i)).unwrap(), want(i), "k{i}");
    }
    let log = fs::read_to_string(dir.path().join(LOG_FILE)).unwrap();
    assert!(log.contains("does not belong to the log"), "{log}");
    assert!(!log.contains("dropping log segment"), "{log}");
    store.close().unwrap();
    // Open only read disk_file: every byte that held data is still there.
    let disk_after = fs::read(dir.path().join(DISK_FILE)).unwrap();
    assert!(disk_after.len() >= disk_before.len());
    fs::remove_file(dir.path().join(IMAGE_FILE)).unwrap();
    let store = Store::open(dir.path(), o).unwrap();
    for i in 0..120 {
        assert_eq!(
            store.get(&key(i)).unwrap(),
            want(i),
            "k{i} after a full rebuild"
        );
    }
    store.close().unwrap();
}

/// `Store::rebuild_index` takes the lock before anything else: against an open store it
/// fails with Locked and every file stays byte-identical.
#[test]
fn rebuild_index_never_touches_a_store_held_open() {
    let dir = TempDir::new("rebuild-locked");
    let o = opts(Durability::Batch);
    let store = Store::open(dir.path(), o.clone()).unwrap();
    store.put(b"a", b"1").unwrap();
    store.checkpoint().unwrap();
    let files = [DISK_FILE, IMAGE_FILE, LOG_FILE];
    let before: Vec<Vec<u8>> = files
        .iter()
        .map(|f| fs::read(dir.path().join(f)).unwrap())
        .collect();
    assert!(matches!(
        Store::rebuild_index(dir.path(), o.clone()),
        Err(Error::Locked)
    ));
    for (f, b) in files.iter().zip(&before) {
        assert_eq!(&fs::read(dir.path().join(f)).unwrap(), b, "{f} changed");
    }
    store.put(b"b", b"2").unwrap();
    store.close().unwrap();
    let st = Store::rebuild_index(dir.path(), o.clone()).unwrap();
    assert_eq!(st.records, 2);
    assert!(!st.opened_from_image);
    let store = Store::open(dir.path(), o).unwrap();
    assert!(store.stats().opened_from_image);
    assert_eq!(store.get(b"b").unwrap(), Some(b"2".to_vec()));
    store.close().unwrap();
}

/// A background thread that dies is an error within a bounded time, never a hang: the
/// lookout (its write panics), the checkpoint thread (its image write panics) and the
/// reclaimer (its hole punch panics) each latch the store as failed.
#[test]
fn a_dead_background_thread_is_an_error_not_a_hang() {
    for op in [Op::Write, Op::ImageWrite, Op::Punch] {
        let dir = TempDir::new("thread-death");
        let dev = MemDisk::new();
        let faults = Faults::new();
        let o = opts(Durability::Always)
            .segment_size(128 << 10)
            .checkpoint_bytes(64 << 10)
            .background_reclaim(true)
            .reclaim_threshold(0.05)
            .reclaim_urgent(0.9);
        let store = Store::open_with(dir.path(), o.clone(), hooks(&dev, &faults)).unwrap();
        store.put(b"first", b"durable").unwrap();
        faults.fail(op, 1, Action::Panic);
        let started = Instant::now();
        let mut result = Ok(());
        for i in 0..2000u64 {
            let k = format!("k{}", i % 20);
            result = store.put(k.as_bytes(), &[1u8; 3000]);
            if result.is_err() || store.stats().failed {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{op:?}: no failure"
            );
        }
        // Within a bounded time every change fails.
        let t = Instant::now();
        assert!(is_failed(&store.sync()), "{op:?}: {result:?}");
        assert!(is_failed(&store.put(b"x", b"y")));
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "{op:?}: took {:?}",
            t.elapsed()
        );
        assert_eq!(store.get(b"first").unwrap(), Some(b"durable".to_vec()));
        assert!(store.close().is_err());
        let store = Store::open_with(dir.path(), o, Hooks::memory(dev.clone())).unwrap();
        assert_eq!(store.get(b"first").unwrap(), Some(b"durable".to_vec()));
        store.close().unwrap();
    }
}

/// A panic in a call's own thread (a bug; here the fdatasync a `sync` leads in `None`
/// mode) latches the store as failed: the call's state may be half changed (here the
/// count of syncs running, left raised, on which the next sync waited forever). Later
/// changes fail within a bounded time; gets keep working; a reopen finds what was synced.
#[test]
fn a_panic_in_a_callers_thread_fails_the_store_instead_of_hanging_it() {
    let dir = TempDir::new("caller-panic");
    let dev = MemDisk::new();
    let faults = Faults::new();
    let o = opts(Durability::None);
    let store = Arc::new(Store::open_with(dir.path(), o.clone(), hooks(&dev, &faults)).unwrap());
    store.put(b"first", b"durable").unwrap();
    store.sync().unwrap();
    store.put(b"second", b"maybe").unwrap();
    // The lookout writes "second" without fdatasync; the sync below leads one, which
    // panics.
    faults.fail(Op::Sync, 1, Action::Panic);
    let s = store.clone();
    let panicked = std::thread::spawn(move || s.sync()).join();
    assert!(panicked.is_err(), "the sync panicked");
    assert_eq!(faults.fired(), 1);
    // Later calls fail at once (within seconds), never wait forever.
    let (tx, rx) = std::sync::mpsc::channel();
    let s = store.clone();
    let later = std::thread::spawn(move || {
        let synced = s.sync();
        let put = s.put(b"third", b"x");
        let _ = tx.send((synced, put));
    });
    let (synced, put) = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("sync and put return after a panicked sync");
    later.join().unwrap();
    assert!(is_failed(&synced), "{synced:?}");
    assert!(is_failed(&put), "{put:?}");
    assert!(store.stats().failed);
    assert_eq!(store.get(b"first").unwrap(), Some(b"durable".to_vec()));
    let store = Arc::try_unwrap(store).ok().unwrap();
    assert!(store.close().is_err());
    let store = Store::open_with(dir.path(), o, Hooks::memory(dev.clone())).unwrap();
    assert_eq!(store.get(b"first").unwrap(), Some(b"durable".to_vec()));
    assert_eq!(store.get(b"third").unwrap(), None);
    store.close().unwrap();
}

/// In `Always`, a group commit takes in, before its fdatasync, the records durable
/// waiters put while its bytes were being written: 16 writers on a fresh store then
/// commit 16 at a time, not in two alternating halves. Here the first commit's write is
/// held until a second writer waits: one fdatasync makes both durable (two before), and
/// both survive a power cut right after.
#[test]
fn a_group_commit_takes_in_the_puts_made_while_it_wrote() {
    let dir = TempDir::new("commit-extension");
    let dev = MemDisk::new();
    let faults = Faults::new();
    let o = opts(Durability::Always).flush_interval(Duration::from_secs(3600));
    let store = Store::open_with(dir.path(), o.clone(), hooks(&dev, &faults)).unwrap();
    // The first flush writes the first segment's header block, right after the
    // superblock.
    faults.hold_writes(Some(4096..4097));
    let syncs = store.stats().syncs;
    // Let go however the scope ends: a failed check must not leave the first put held.
    struct LetGo<'a>(&'a Faults);
    impl Drop for LetGo<'_> {
        fn drop(&mut self) {
            self.0.hold_writes(None);
        }
    }
    std::thread::scope(|s| {
        let _let_go = LetGo(&faults);
        let first = s.spawn(|| store.put(b"first", b"1"));
        let started = Instant::now();
        while faults.writes_held() == 0 {
            assert!(started.elapsed() < Duration::from_secs(10), "no write held");
            std::thread::sleep(Duration::from_millis(1));
        }
        let second = s.spawn(|| store.put(b"second", b"2"));
        // Its record is in the ring (a get finds it) and it waits to be durable.
        while store.get(b"second").unwrap().is_none() {
            assert!(started.elapsed() < Duration::from_secs(10), "second put");
            std::thread::sleep(Duration::from_millis(1));
        }
        // Time to ask for its commit after appending (a few microseconds).
        std::thread::sleep(Duration::from_millis(200));
        faults.hold_writes(None);
        first.join().unwrap().unwrap();
        second.join().unwrap().unwrap();
    });
    assert_eq!(store.stats().syncs - syncs, 1, "{:?}", store.stats());
    // A power cut now (the device keeps what was synced and any part of the rest): both
    // puts were synced.
    for seed in 0..8 {
        let survivor = TempDir::new("commit-extension-cut");
        fs::create_dir_all(survivor.path()).unwrap();
        fs::write(survivor.path().join(DISK_FILE), dev.cut(seed)).unwrap();
        let cut = Store::open(survivor.path(), o.clone()).unwrap();
        assert_eq!(cut.get(b"first").unwrap().as_deref(), Some(&b"1"[..]));
        assert_eq!(cut.get(b"second").unwrap().as_deref(), Some(&b"2"[..]));
        cut.close().unwrap();
    }
    store.close().unwrap();
}

/// In `Always`, a delete that finds the key already gone returns only once that is durable:
/// another thread's delete may have removed it without being durable yet (found by
/// review: it returned at once, and a crash then brought the key back after the call had
/// said it was gone).
#[test]
fn a_delete_of_a_key_another_delete_removed_waits_for_that_delete() {
    let dir = TempDir::new("delete-absent");
    let dev = MemDisk::new();
    let faults = Faults::new();
    let store =
        Store::open_with(dir.path(), opts(Durability::Always), hooks(&dev, &faults)).unwrap();
    store.put(b"k", b"v").unwrap();
    faults.hold_syncs(true);
    std::thread::scope(|s| {
        let first = s.spawn(|| store.delete(b"k"));
        let started = Instant::now();
        while store.get(b"k").unwrap().is_some() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the first delete"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let store = &store;
        s.spawn(move || {
            let _ = tx.send(store.delete(b"k"));
        });
        // The first delete is not durable (its fdatasync is held): neither is the answer.
        let early = rx.recv_timeout(Duration::from_millis(300));
        faults.hold_syncs(false);
        assert!(
            early.is_err(),
            "the second delete returned before the first was durable: {early:?}"
        );
        let second = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("second delete");
        assert!(matches!(second, Ok(false)), "{second:?}");
        assert!(matches!(first.join().unwrap(), Ok(true)));
    });
    store.close().unwrap();
}

/// Found by review: `verify` stopped at the first record the device could not read (EIO),
/// the rest unchecked. It now counts that record as corrupt and goes on.
#[test]
fn verify_reports_an_unreadable_record_and_checks_the_rest() {
    let dir = TempDir::new("verify-eio");
    let o = opts(Durability::Batch);
    let store = Store::open(dir.path(), o.clone()).unwrap();
    for i in 0..40u64 {
        let k = format!("k{i}");
        store
            .put(k.as_bytes(), &value_for(k.as_bytes(), 1, 20_000))
            .unwrap();
    }
    store.close().unwrap();
    let faults = Faults::new();
    let hooks = Hooks {
        faults: Some(faults.clone()),
        ..Hooks::default()
    };
    let store = Store::open_with(dir.path(), o, hooks).unwrap();
    let (at, len) = store.record_extent(b"k7").unwrap().unwrap();
    faults.fail_reads(at..at + len as u64, Action::Errno(libc::EIO));
    let report = store.verify().unwrap();
    assert_eq!((report.records, report.corrupt), (39, 1), "{report:?}");
    assert!(report.problems[0].contains("unreadable"), "{report:?}");
    faults.heal_reads();
    let report = store.verify().unwrap();
    assert_eq!((report.records, report.corrupt), (40, 0), "{report:?}");
    store.close().unwrap();
}

/// A damaged segment header: the slot is kept as it is (never punched, never reused) and
/// reported by stats and verify; the other segments' records are all there.
#[test]
fn a_damaged_segment_header_keeps_its_slot_and_is_reported() {
    let dir = TempDir::new("seg-header");
    let seg = 256u64 << 10;
    let o = opts(Durability::Batch).segment_size(seg);
    let store = Store::open(dir.path(), o.clone()).unwrap();
    let key = |i: u64| format!("k{i:03}").into_bytes();
    for i in 0..100 {
        store.put(&key(i), &value_for(&key(i), 1, 10_000)).unwrap();
    }
    store.close().unwrap();
    let path = dir.path().join(DISK_FILE);
    let mut bytes = fs::read(&path).unwrap();
    // Slot 1's header (the second segment of a fresh store).
    let slot1 = 4096 + seg as usize;
    bytes[slot1 + 9] ^= 0x01;
    fs::write(&path, &bytes).unwrap();
    let before = bytes[slot1..slot1 + seg as usize].to_vec();
    fs::remove_file(dir.path().join(IMAGE_FILE)).unwrap();
    let store = Store::open(dir.path(), o).unwrap();
    let st = store.stats();
    assert_eq!(st.kept_slots, 1, "{st:?}");
    let report = store.verify().unwrap();
    assert!(!report.is_clean(), "{report:?}");
    // Keys in the other segments read back; none reads other bytes.
    let mut found = 0;
    for i in 0..100 {
        if let Some(v) = store.get(&key(i)).unwrap() {
            assert_eq!(v, value_for(&key(i), 1, 10_000));
            found += 1;
        }
    }
    assert!(found > 0 && found < 100, "{found}");
    // Writes go on without touching the kept slot.
    for i in 0..60 {
        store.put(&key(i), &value_for(&key(i), 2, 10_000)).unwrap();
    }
    store.close().unwrap();
    let after = fs::read(&path).unwrap();
    assert_eq!(
        &after[slot1..slot1 + seg as usize],
        &before[..],
        "the kept slot changed"
    );
    let log = fs::read_to_string(dir.path().join(LOG_FILE)).unwrap();
    assert!(log.contains("damaged segment header"), "{log}");
}

/// A store written by a version 2 kvs opens (from its image and by a full rebuild), reads
/// back, takes new writes in its own format, and stays version 2.
#[test]
fn a_version_2_store_opens_and_works_on() {
    let dir = TempDir::new("v2");
    let seg = 256usize << 10;
    let o = opts(Durability::Batch).segment_size(seg as u64);
    let store = Store::open(dir.path(), o.clone()).unwrap();
    let key = |i: u64| format!("k{i:03}").into_bytes();
    for i in 0..80 {
        store.put(&key(i), &value_for(&key(i), 1, 9_000)).unwrap();
    }
    for i in 0..80 {
        if i % 4 == 0 {
            store.delete(&key(i)).unwrap();
        }
    }
    store.close().unwrap();
    let path = dir.path().join(DISK_FILE);
    let mut bytes = fs::read(&path).unwrap();
    downgrade_to_v2(&mut bytes, seg);
    fs::write(&path, &bytes).unwrap();
    let want = |i: u64, v: u64| (i % 4 != 0).then(|| value_for(&key(i), v, 9_000));
    for round in 0..2 {
        if round == 1 {
            fs::remove_file(dir.path().join(IMAGE_FILE)).unwrap();
        }
        let store = Store::open(dir.path(), o.clone()).unwrap();
        assert_eq!(store.stats().format_version, 2);
        assert_eq!(store.stats().opened_from_image, round == 0);
        for i in 0..80 {
            let v = if round == 1 && i % 2 == 1 { 2 } else { 1 };
            assert_eq!(
                store.get(&key(i)).unwrap(),
                want(i, v),
                "round {round} k{i}"
            );
        }
        for i in (1..80).step_by(2) {
            if i % 4 != 0 {
                store.put(&key(i), &value_for(&key(i), 2, 9_000)).unwrap();
            }
        }
        assert!(store.verify().unwrap().is_clean());
        store.close().unwrap();
    }
    let store = Store::open(dir.path(), o).unwrap();
    assert_eq!(store.stats().format_version, 2);
    for i in 0..80 {
        let v = if i % 2 == 1 { 2 } else { 1 };
        assert_eq!(store.get(&key(i)).unwrap(), want(i, v), "k{i}");
    }
    store.close().unwrap();
}

/// In a version 2 store, Dead records do not raise the sequence number recovery expects
/// next, yet use numbers up; a damaged record after a run of them must not make the
/// records after it look forged (their numbers jump by the run's length).
#[test]
fn a_version_2_store_resyncs_after_a_run_of_dead_records() {
    let dir = TempDir::new("v2-dead");
    let seg = 256usize << 10;
    let o = opts(Durability::Batch)
        .segment_size(seg as u64)
        .flush_horizon(1 << 20)
        .flush_interval(Duration::from_secs(3600));
    let store = Store::open(dir.path(), o.clone()).unwrap();
    store.put(b"first", b"one").unwrap();
    let d = |i: u64| format!("d{i:02}").into_bytes();
    for i in 0..50u64 {
        store.put(&d(i), b"old").unwrap();
    }
    let x = value_for(b"x", 7, 300);
    store.put(b"x", &x).unwrap();
    for i in 0..30u64 {
        store
            .put(format!("after-{i}").as_bytes(), &[i as u8; 20])
            .unwrap();
    }
    // Overwritten before any flush: the 50 records before x become Dead.
    for i in 0..50u64 {
        store.put(&d(i), b"new").unwrap();
    }
    store.close().unwrap();
    let path = dir.path().join(DISK_FILE);
    let mut bytes = fs::read(&path).unwrap();
    downgrade_to_v2(&mut bytes, seg);
    // Damage x's header (its value is unique).
    let at = find(&bytes, &x[..64]).unwrap() - 32 - 1;
    bytes[at + 12] ^= 0x40;
    fs::write(&path, &bytes).unwrap();
    fs::remove_file(dir.path().join(IMAGE_FILE)).unwrap();
    let store = Store::open(dir.path(), o).unwrap();
    assert_eq!(store.stats().format_version, 2);
    assert_eq!(store.get(b"first").unwrap(), Some(b"one".to_vec()));
    for i in 0..50u64 {
        assert_eq!(store.get(&d(i)).unwrap(), Some(b"new".to_vec()));
    }
    assert_eq!(store.get(b"x").unwrap(), None);
    for i in 0..30u64 {
        assert_eq!(
            store.get(format!("after-{i}").as_bytes()).unwrap(),
            Some(vec![i as u8; 20]),
            "after-{i}"
        );
    }
    assert_eq!(store.stats().damaged_ranges, 1);
    store.close().unwrap();
}

/// A flush makes the ring's room available as soon as its bytes are written, before its
/// fdatasync returns: puts waiting for room do not wait for the sync too. It used to
/// publish only after the sync, so with an fdatasync that takes long, puts stopped once
/// the ring was full (at full speed they waited 66-240 ms at each checkpoint's flush).
/// Here fdatasync is held: a ring's worth of puts and a little more must still go through.
#[test]
fn puts_find_room_while_a_flush_is_syncing() {
    let dir = TempDir::new("faults-held-sync");
    let dev = MemDisk::new();
    let faults = Faults::new();
    let o = opts(Durability::Batch)
        .buffer_size(1 << 20)
        .flush_interval(Duration::from_secs(1));
    let store = Arc::new(Store::open_with(dir.path(), o, hooks(&dev, &faults)).unwrap());
    faults.hold_syncs(true);
    let (tx, rx) = std::sync::mpsc::channel();
    let putter = {
        let store = store.clone();
        std::thread::spawn(move || {
            // 1 MiB and 64 KiB of records: more than the ring holds.
            for k in 0..34u64 {
                let key = format!("key-{k}");
                store
                    .put(key.as_bytes(), &value_for(key.as_bytes(), k, 32 << 10))
                    .unwrap();
            }
            tx.send(()).unwrap();
        })
    };
    // Not a timing measure: with the old order the puts never finish while syncs are held.
    let went = rx.recv_timeout(Duration::from_secs(30)).is_ok();
    faults.hold_syncs(false);
    putter.join().unwrap();
    assert!(
        went,
        "puts waited for a held fdatasync although the ring's bytes were written"
    );
    store.sync().unwrap();
    for k in 0..34u64 {
        let key = format!("key-{k}");
        assert_eq!(
            store.get(key.as_bytes()).unwrap(),
            Some(value_for(key.as_bytes(), k, 32 << 10))
        );
    }
}

/// In `Always`, after a small group commit the lookout writes zeros ahead of the log (the
/// second write of disk_file after the first put of a new store, once that put is
/// durable). A failed write of
/// zeros latches the store like a failed flush: the put made durable before it stands,
/// every later call fails, and the reopened store reads back every acknowledged put.
#[test]
fn a_failed_write_of_zeros_ahead_latches_and_loses_nothing() {
    for nth in 1..=4u64 {
        let dir = TempDir::new("zeros-fault");
        let dev = MemDisk::new();
        let faults = Faults::new();
        // Flushes only on request: each put's flush ends with its fdatasync, then zeros.
        let o = opts(Durability::Always).flush_interval(Duration::from_secs(3600));
        let store = Store::open_with(dir.path(), o.clone(), hooks(&dev, &faults)).unwrap();
        faults.fail(Op::Write, nth, Action::Errno(libc::EIO));
        let key = |i: u64| format!("k{i}").into_bytes();
        let mut acked = Vec::new();
        let mut failed_at = None;
        for i in 0..8 {
            let res = store.put(&key(i), &value_for(&key(i), i, 3000));
            match (&res, failed_at) {
                (Ok(()), None) => acked.push(i),
                (Err(Error::Failed(_)), _) => {
                    failed_at.get_or_insert(i);
                }
                _ => panic!("write {nth}: put {i} after a failure: {res:?}"),
            }
        }
        assert!(faults.fired() == 1 && failed_at.is_some(), "write {nth}");
        if nth == 2 {
            // The zeros after put 0, whose commit was durable before them (its waiter may
            // still see the latch first and report Failed: never a false success).
            assert!(acked.len() <= 1, "write of zeros: {acked:?}");
            acked = vec![0];
        }
        assert!(is_failed(&store.close()));
        let log = fs::read_to_string(dir.path().join(LOG_FILE)).unwrap();
        assert_eq!(log.contains("zeros ahead of the log"), nth == 2, "{log}");
        let store = Store::open_with(dir.path(), o, Hooks::memory(dev.clone())).unwrap();
        for &i in &acked {
            assert_eq!(
                store.get(&key(i)).unwrap(),
                Some(value_for(&key(i), i, 3000)),
                "write {nth}: put {i}"
            );
        }
        store.close().unwrap();
    }
}

/// Found by review: an open that rebuilt the index and could not write its IMAGE_file (a
/// full disk, say) failed, although the open's own image is only a head start for the
/// next one: the write went through the store's latch. The store now opens and works, and
/// a later checkpoint (here close's) writes the image.
#[test]
fn an_open_that_cannot_write_its_image_still_opens() {
    let dir = TempDir::new("open-image-enospc");
    let dev = MemDisk::new();
    let faults = Faults::new();
    let o = opts(Durability::Batch);
    let store = Store::open_with(dir.path(), o.clone(), hooks(&dev, &faults)).unwrap();
    store.put(b"a", b"1").unwrap();
    store.close().unwrap();
    fs::remove_file(dir.path().join(IMAGE_FILE)).unwrap();
    let _ = fs::remove_file(dir.path().join(kvs::DELTA_FILE));
    faults.fail(Op::ImageWrite, 1, Action::Errno(libc::ENOSPC));
    let store = Store::open_with(dir.path(), o.clone(), hooks(&dev, &faults)).unwrap();
    assert_eq!(faults.fired(), 1);
    assert!(!store.stats().opened_from_image);
    assert!(!store.stats().failed);
    assert_eq!(store.get(b"a").unwrap(), Some(b"1".to_vec()));
    store.put(b"b", b"2").unwrap();
    store.sync().unwrap();
    let log = fs::read_to_string(dir.path().join(LOG_FILE)).unwrap();
    assert!(log.contains("could not write IMAGE_file at open"), "{log}");
    store.close().unwrap();
    let store = Store::open_with(dir.path(), o, Hooks::memory(dev.clone())).unwrap();
    assert!(store.stats().opened_from_image);
    assert_eq!(store.get(b"a").unwrap(), Some(b"1".to_vec()));
    assert_eq!(store.get(b"b").unwrap(), Some(b"2".to_vec()));
    store.close().unwrap();
}

/// Found by review: listing keys on a failed store returned `Failed` (its flush of the
/// ring did), although gets keep working and a listing is what salvage needs. It now lists
/// what reached disk_file.
#[test]
fn a_failed_store_still_lists_its_keys() {
    let dir = TempDir::new("failed-listing");
    let dev = MemDisk::new();
    let faults = Faults::new();
    let o = opts(Durability::None);
    let store = Store::open_with(dir.path(), o, hooks(&dev, &faults)).unwrap();
    for i in 0..20u32 {
        store.put(format!("k{i:02}").as_bytes(), b"v").unwrap();
    }
    store.sync().unwrap();
    faults.fail(Op::Sync, 1, Action::Errno(libc::EIO));
    store.put(b"late", b"v").unwrap();
    assert!(is_failed(&store.sync()));
    let mut keys: Vec<Vec<u8>> = store
        .keys(b"k")
        .unwrap()
        .map(|item| item.unwrap().key)
        .collect();
    keys.sort();
    let want: Vec<Vec<u8>> = (0..20u32)
        .map(|i| format!("k{i:02}").into_bytes())
        .collect();
    assert_eq!(keys, want);
    assert_eq!(store.scan(b"k").unwrap().count(), 20);
    assert_eq!(store.get(b"late").unwrap(), Some(b"v".to_vec()));
    // An empty batch says what any write says now (it succeeded before a review).
    assert!(is_failed(&store.write(&kvs::Batch::new())));
    assert!(store.close().is_err());
}

/// Found by review: an open that could not start its checkpoint or reclaim thread returned
/// the error but left the threads already started running for good (holding the store's
/// files and memory, with its lock released under them). Now every thread is stopped
/// first: nothing holds the device after the failed open.
#[test]
fn an_open_that_cannot_start_its_threads_leaves_none_running() {
    for nth in [1, 2] {
        let dir = TempDir::new("open-spawn-fails");
        let dev = MemDisk::new();
        let faults = Faults::new();
        let o = opts(Durability::Batch);
        faults.fail(Op::Spawn, nth, Action::Errno(libc::EAGAIN));
        let r = Store::open_with(dir.path(), o.clone(), hooks(&dev, &faults));
        assert!(
            matches!(&r, Err(Error::Io(e)) if e.raw_os_error() == Some(libc::EAGAIN)),
            "{:?}",
            r.err()
        );
        assert_eq!(faults.fired(), 1);
        assert_eq!(
            Arc::strong_count(&dev),
            1,
            "a thread still holds the device"
        );
        let store = Store::open_with(dir.path(), o, Hooks::memory(dev.clone())).unwrap();
        store.put(b"k", b"v").unwrap();
        store.close().unwrap();
    }
}

/// Found by review: a power cut that kept the header of a new segment (written by a
/// pwritev of its own) but lost the end of the segment before it, none of it synced, was
/// reported as damage at every open, and that segment, never read whole, was never
/// reclaimed. With no record in any later segment, the short segment is the log's torn
/// end: the later segments are given back, nothing is reported, and the store goes on.
/// Also (a second review) with a torn record, header but not payload, in the segment
/// after it, and with two later segments that kept only their headers.
#[test]
fn a_lost_segment_end_before_a_new_segments_header_is_a_torn_tail() {
    for (later, torn_header_kept) in [(1, false), (1, true), (2, false)] {
        torn_boundary(later, torn_header_kept);
    }
}

fn torn_boundary(later: u64, torn_header_kept: bool) {
    let case = format!("{later} later segment(s), torn header kept {torn_header_kept}");
    let dir = TempDir::new("torn-boundary");
    let dev = MemDisk::new();
    let size = 512u64 << 10;
    let o = opts(Durability::Batch).segment_size(size);
    let store = Store::open_with(dir.path(), o.clone(), Hooks::memory(dev.clone())).unwrap();
    let key = |i: u64| format!("record-{i:04}").into_bytes();
    let val = |i: u64| value_for(&key(i), i, 20_000);
    // Until the first record of the last segment is put.
    let mut n = 0;
    while store.stats().log_end < later * size + 8192 {
        store.put(&key(n), &val(n)).unwrap();
        n += 1;
    }
    store.sync().unwrap();
    let mut bytes = dev.cut(1);
    drop(store);
    let start = |b: &[u8], i: u64| find(b, &val(i)[..64]).unwrap() - 32 - key(i).len();
    let starts: Vec<usize> = (0..n).map(|i| start(&bytes, i)).collect();
    // The first record of each segment after the first: a gap of a segment header before it.
    let opens: Vec<u64> = (1..n)
        .filter(|&i| starts[i as usize] - starts[i as usize - 1] > 24_576)
        .collect();
    assert_eq!(opens.len() as u64, later, "{case}: {opens:?}");
    let last = opens[0] - 1;
    // Lost: the first segment's last record and all after it; every record of the later
    // segments (their headers stay), or, for the newest one's record, only its payload.
    bytes[starts[last as usize]..starts[opens[0] as usize] - 4096].fill(0);
    for (j, &first) in opens.iter().enumerate() {
        let from = starts[first as usize];
        let to = match opens.get(j + 1) {
            Some(&next) => starts[next as usize] - 4096,
            None => from + 24_576,
        };
        let keep = if torn_header_kept && j + 1 == opens.len() {
            32 + key(first).len() + 100
        } else {
            0
        };
        bytes[from + keep..to].fill(0);
    }
    let survivor = TempDir::new("torn-boundary-after");
    fs::create_dir_all(survivor.path()).unwrap();
    fs::write(survivor.path().join(DISK_FILE), &bytes).unwrap();
    let store = Store::open(survivor.path(), o.clone()).unwrap();
    let st = store.stats();
    assert_eq!(st.damaged_ranges, 0, "{case}: {st:?}");
    assert!(store.verify().unwrap().is_clean(), "{case}");
    for i in 0..last {
        assert_eq!(store.get(&key(i)).unwrap(), Some(val(i)), "{case}: #{i}");
    }
    for i in last..n {
        assert_eq!(store.get(&key(i)).unwrap(), None, "{case}: #{i}");
    }
    let log = fs::read_to_string(survivor.path().join(LOG_FILE)).unwrap();
    for l in 1..=later {
        assert!(
            log.contains(&format!("giving back log segment {l}")),
            "{case}: {log}"
        );
    }
    assert!(
        log.contains("taken for the log's torn end"),
        "{case}: {log}"
    );
    assert_eq!(store.stats().segments, 1, "{case}: {:?}", store.stats());
    // The store goes on from there, and a reopen finds it all.
    for i in last..last + 40 {
        store.put(&key(i), &val(i + 1000)).unwrap();
    }
    store.close().unwrap();
    let store = Store::open(survivor.path(), o).unwrap();
    assert_eq!(store.stats().damaged_ranges, 0, "{case}");
    for i in 0..last {
        assert_eq!(store.get(&key(i)).unwrap(), Some(val(i)), "{case}: #{i}");
    }
    for i in last..last + 40 {
        assert_eq!(
            store.get(&key(i)).unwrap(),
            Some(val(i + 1000)),
            "{case}: #{i}"
        );
    }
    assert!(store.verify().unwrap().is_clean(), "{case}");
    store.close().unwrap();
}

/// A torn record at the log's end followed by a sound Pad of an older segment is the
/// log's torn end, not damage; followed by its own segment's Pad, it is damage (the log
/// went on after it: rot, not a torn write). A slot given back with its blocks kept
/// (recycled) holds the old segment's records and Pads, and with values of one size in
/// `Always` (each flush padded to its block) they lie exactly where the new segment's
/// would. Before, Pads carried no sequence number and the old Pad confirmed the torn
/// record as damage in the middle of the log: reported at every open, the segment kept
/// by the reclaimer for good (found by review). A Pad now carries its segment's first
/// sequence number. The old Pad here is copied from the first segment over the last
/// one's own Pad.
#[test]
fn a_pad_of_another_segment_after_a_torn_record_is_no_damage() {
    for stale in [true, false] {
        pad_after_torn(stale);
    }
}

fn pad_after_torn(stale: bool) {
    let dir = TempDir::new("pad-after-torn");
    let dev = MemDisk::new();
    let o = opts(Durability::Always).direct_io(true);
    let store = Store::open_with(dir.path(), o.clone(), Hooks::memory(dev.clone())).unwrap();
    let key = |i: u64| format!("record-{i:04}").into_bytes();
    let val = |i: u64| value_for(&key(i), i, 20_000);
    let seg = 1usize << 20;
    // Into the second segment.
    let mut n = 0;
    while store.stats().log_end < seg as u64 + 100_000 {
        store.put(&key(n), &val(n)).unwrap();
        n += 1;
    }
    let mut bytes = dev.cut(1);
    drop(store);
    let pad_of = |b: &[u8], i: u64| (find(b, &val(i)[..64]).unwrap() + 20_000).next_multiple_of(8);
    let last = n - 1;
    let (first_pad, last_pad) = (pad_of(&bytes, 0), pad_of(&bytes, last));
    assert_eq!((first_pad - 4096) / seg, 0, "record 0 in the first slot");
    assert_eq!(
        (last_pad - 4096) / seg,
        1,
        "the last record in the second slot"
    );
    for at in [first_pad, last_pad] {
        assert_eq!(&bytes[at..at + 5], b"KVR1\x04", "a Pad follows the record");
    }
    assert_eq!(
        first_pad % 4096,
        last_pad % 4096,
        "the Pads lie alike in their blocks"
    );
    if stale {
        let old: Vec<u8> = bytes[first_pad..first_pad + 32].to_vec();
        bytes[last_pad..last_pad + 32].copy_from_slice(&old);
    }
    // The last record's header and the first half of its value landed; the rest did not.
    let value_at = find(&bytes, &val(last)[..64]).unwrap();
    bytes[value_at + 10_000..value_at + 20_000].fill(0);
    let survivor = TempDir::new("pad-after-torn-after");
    fs::create_dir_all(survivor.path()).unwrap();
    fs::write(survivor.path().join(DISK_FILE), &bytes).unwrap();
    let store = Store::open(survivor.path(), o).unwrap();
    let st = store.stats();
    assert_eq!(
        st.damaged_ranges,
        u64::from(!stale),
        "stale {stale}: {st:?}"
    );
    for i in 0..last {
        assert_eq!(
            store.get(&key(i)).unwrap(),
            Some(val(i)),
            "stale {stale}: #{i}"
        );
    }
    assert_eq!(store.get(&key(last)).unwrap(), None, "stale {stale}");
    // The store goes on from its end, and a reopen finds it all.
    store.put(&key(last), &val(last + 1000)).unwrap();
    store.close().unwrap();
    let store = Store::open(survivor.path(), opts(Durability::Batch)).unwrap();
    assert_eq!(
        store.get(&key(last)).unwrap(),
        Some(val(last + 1000)),
        "stale {stale}"
    );
    store.close().unwrap();
}

/// A hole punch that fails while a slot kept with its blocks (recycled) is punched, here
/// at close, fails the store as every failed punch does (EIO latches): the close reports
/// it, and a reopen finds every acknowledged put.
#[test]
fn a_failed_punch_of_a_recycled_slot_at_close_loses_nothing() {
    let dir = TempDir::new("recycled-punch");
    let dev = MemDisk::new();
    let faults = Faults::new();
    let o = opts(Durability::Always)
        .segment_size(128 << 10)
        .background_reclaim(true)
        .reclaim_threshold(0.05)
        .reclaim_urgent(0.05)
        .reclaim_rate(0);
    let store = Store::open_with(dir.path(), o.clone(), hooks(&dev, &faults)).unwrap();
    let mut last: HashMap<u64, u64> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut i = 0u64;
    while store.stats().recycled_segments == 0 {
        assert!(Instant::now() < deadline, "no slot was recycled");
        let k = i % 20;
        let key = format!("k{k}").into_bytes();
        store.put(&key, &value_for(&key, i, 3000)).unwrap();
        last.insert(k, i);
        i += 1;
    }
    // The next punch fails: the close's of the waiting slot, or the reclaimer's if it
    // comes first.
    faults.fail(Op::Punch, 1, Action::Errno(libc::EIO));
    assert!(store.close().is_err(), "a failed punch went unreported");
    let store = Store::open_with(dir.path(), o, Hooks::memory(dev.clone())).unwrap();
    for (&k, &v) in &last {
        let key = format!("k{k}").into_bytes();
        assert_eq!(
            store.get(&key).unwrap(),
            Some(value_for(&key, v, 3000)),
            "k{k}"
        );
    }
    store.close().unwrap();
}

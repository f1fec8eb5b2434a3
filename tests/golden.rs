//! Golden stores: a small store written by kvs in disk_file format 3 (`tests/data/golden-v3`),
//! the same store rewritten as format 2 (`tests/data/golden-v2`), and the same store written
//! in format 4 with an atomic batch after it (`tests/data/golden-v4`), and that store in
//! format 5 (`tests/data/golden-v5`, whose superblock records the value limit), committed, so that
//! every later kvs is tested against bytes an earlier one wrote. The tests open them (from
//! IMAGE_file and by a full rebuild), read every record back, write to them, and decode
//! their bytes by hand at the offsets of DESIGN.md's tables. A change of the on-disk format
//! therefore fails here until it is made deliberately.
//!
//! What the stores hold is recomputed from `script()` (not read from a manifest), so the
//! generator and the tests agree by construction.
//!
//! Regenerating (`make_golden`) is allowed only when `script()` or the options below must
//! change, never to make a format change pass: a new format gets a new golden directory
//! beside these, which stay as they are. See `make_golden`.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{downgrade_to_v2, TempDir};
use kvs::{Options, Store, DISK_FILE, IMAGE_FILE, MAX_KEY_LEN};
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// The smallest segment `Options` accepts, so that a small store spans several.
const SEG: u64 = 64 << 10;
/// Small enough for a 64 KiB segment and a 64 KiB ring to hold the largest record.
const MAX_VALUE: usize = 16 << 10;
/// Keys of the first round of puts.
const KEYS: u64 = 48;
/// The files committed: not LOCK (made by every open) nor LOG (text with times in it).
const GOLDEN_FILES: [&str; 2] = [DISK_FILE, IMAGE_FILE];

/// How the golden stores are written and opened. No background threads that write on
/// their own (reclaimer, checkpoints), no O_DIRECT (no pads that depend on flush timing).
fn opts() -> Options {
    Options::default()
        .segment_size(SEG)
        .max_value_size(MAX_VALUE)
        .buffer_size(64 << 10)
        .expected_records(64)
        .direct_io(false)
        .direct_reads(false)
        .background_reclaim(false)
        .checkpoint_bytes(0)
        .checkpoint_interval(Duration::ZERO)
}

/// Key number `i`: the longest key, a binary one, a one-byte one, and plain text keys.
fn key(i: u64) -> Vec<u8> {
    match i {
        1 => (0..MAX_KEY_LEN).map(|j| b'a' + (j % 26) as u8).collect(),
        3 => vec![0x00, 0xff, 0x80, b'\n', 0x00],
        4 => b"k".to_vec(),
        _ => format!("key-{i:04}").into_bytes(),
    }
}

/// Value lengths: empty, around 8-byte and 4 KiB boundaries, and the largest.
const LENS: [usize; 12] = [0, 1, 7, 8, 9, 100, 1000, 4095, 4096, 4097, 9000, MAX_VALUE];

/// Version `v` of key `i`'s value: its length from `LENS`, bytes in a pattern that
/// differs for every key and version (and compresses, to keep the repository small).
fn value(i: u64, v: u64) -> Vec<u8> {
    let len = LENS[((i * 5 + v * 3) % LENS.len() as u64) as usize];
    (0..len as u64)
        .map(|j| ((j * (2 * i + 1) + v * 131 + i * 7) % 251) as u8)
        .collect()
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Put(u64, u64),
    Delete(u64),
    Sync,
}

/// What the generator did, in order: puts of every key (the first one synced alone, so
/// that the first record on disk is a put of key 0), overwrites, deletes, puts again (of
/// one deleted key too), and deletes (of one absent key too) left in the ring for close
/// to flush.
fn script() -> Vec<Op> {
    let mut ops = vec![Op::Put(0, 1), Op::Sync];
    ops.extend((1..KEYS).map(|i| Op::Put(i, 1)));
    ops.push(Op::Sync);
    ops.extend((0..KEYS).filter(|i| i % 3 == 1).map(|i| Op::Put(i, 2)));
    ops.extend((0..KEYS).filter(|i| i % 5 == 2).map(Op::Delete));
    ops.push(Op::Sync);
    ops.extend((0..KEYS).filter(|i| i % 7 == 3).map(|i| Op::Put(i, 3)));
    ops.extend((0..KEYS).filter(|i| i % 11 == 7).map(Op::Delete));
    ops
}

/// Format 4 stores end with an atomic batch (format 4's addition): puts of version 4 and
/// deletes, and a put and a delete of one key, in that order.
fn batch_v4() -> Vec<Op> {
    let mut ops: Vec<Op> = (0..KEYS)
        .filter(|i| i % 13 == 5)
        .map(|i| Op::Put(i, 4))
        .collect();
    ops.extend((0..KEYS).filter(|i| i % 17 == 9).map(Op::Delete));
    ops.push(Op::Put(2, 4));
    ops.push(Op::Delete(2));
    ops
}

/// The operations store `version` holds.
fn ops_of(version: u32) -> Vec<Op> {
    let mut ops = script();
    if version >= 4 {
        ops.extend(batch_v4());
    }
    ops
}

/// The live keys after `script()` and the version of each.
fn model() -> BTreeMap<u64, u64> {
    model_of(3)
}

/// The live keys store `version` holds and the version of each.
fn model_of(version: u32) -> BTreeMap<u64, u64> {
    let mut m = BTreeMap::new();
    for op in ops_of(version) {
        match op {
            Op::Put(i, v) => {
                m.insert(i, v);
            }
            Op::Delete(i) => {
                m.remove(&i);
            }
            Op::Sync => {}
        }
    }
    m
}

fn golden_dir(version: u32) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(format!("golden-v{version}"))
}

/// A copy of golden store `version` in a fresh temporary directory.
fn copy_of(version: u32) -> TempDir {
    let d = TempDir::new(&format!("golden-v{version}"));
    fs::create_dir_all(d.path()).unwrap();
    for f in GOLDEN_FILES {
        fs::copy(golden_dir(version).join(f), d.path().join(f)).unwrap();
    }
    d
}

/// Checks that `store` (of format `version`) holds exactly what its model says, and
/// `extra` besides.
#[track_caller]
fn check_content(store: &Store, version: u32, extra: &BTreeMap<Vec<u8>, Vec<u8>>) {
    let m = model_of(version);
    for i in 0..KEYS {
        let want = m.get(&i).map(|&v| value(i, v));
        assert_eq!(store.get(&key(i)).unwrap(), want, "key {i}");
    }
    for (k, v) in extra {
        assert_eq!(store.get(k).unwrap().as_ref(), Some(v), "{k:?}");
    }
    assert_eq!(store.stats().records, (m.len() + extra.len()) as u64);
}

#[track_caller]
fn check_store(dir: &Path, version: u32, from_image: bool) {
    let store = Store::open(dir, opts()).unwrap();
    let st = store.stats();
    assert_eq!(st.format_version, version);
    assert_eq!(st.opened_from_image, from_image);
    assert_eq!(st.segment_size, SEG);
    assert_eq!((st.damaged_ranges, st.kept_slots), (0, 0));
    check_content(&store, version, &BTreeMap::new());
    let r = store.verify().unwrap();
    assert!(r.is_clean(), "{:?}", r.problems);
    assert_eq!(r.records, model_of(version).len() as u64);
    store.close().unwrap();
}

#[test]
fn golden_stores_open_and_read_back() {
    for version in [6, 5, 4, 3, 2] {
        let d = copy_of(version);
        check_store(d.path(), version, true);
        // Without IMAGE_file: the index rebuilt from disk_file alone.
        fs::remove_file(d.path().join(IMAGE_FILE)).unwrap();
        check_store(d.path(), version, false);
        // And by Store::rebuild_index, which writes a new IMAGE_file.
        let st = Store::rebuild_index(d.path(), opts()).unwrap();
        assert_eq!(st.records, model_of(version).len() as u64);
        assert_eq!(st.format_version, version);
        check_store(d.path(), version, true);
    }
}

#[test]
fn golden_stores_take_new_writes_in_their_own_format() {
    for version in [6, 5, 4, 3, 2] {
        let d = copy_of(version);
        let store = Store::open(d.path(), opts()).unwrap();
        let mut extra = BTreeMap::new();
        for j in 0..40u64 {
            let (k, v) = (format!("new-{j}").into_bytes(), value(1000 + j, 1));
            store.put(&k, &v).unwrap();
            extra.insert(k, v);
        }
        check_content(&store, version, &extra);
        // Compaction rewrites the old records into new segments of the same format.
        store.compact().unwrap();
        store.close().unwrap();
        for round in 0..2 {
            if round == 1 {
                fs::remove_file(d.path().join(IMAGE_FILE)).unwrap();
            }
            let store = Store::open(d.path(), opts()).unwrap();
            assert_eq!(store.stats().format_version, version);
            check_content(&store, version, &extra);
            assert!(store.verify().unwrap().is_clean());
            store.close().unwrap();
        }
        let b = fs::read(d.path().join(DISK_FILE)).unwrap();
        assert_eq!(u32_at(&b, 8), version);
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// The header checksum of a record: keyed with the store's seed from version 3 on.
fn header_sum(h: &[u8], seed: u64, version: u32) -> u32 {
    if version >= 3 {
        xxh3_64_with_seed(&h[0..28], seed) as u32
    } else {
        xxh3_64(&h[0..28]) as u32
    }
}

/// The superblock, the first segment header and the first record of each golden
/// disk_file, and the header of its IMAGE_file, decoded at the offsets of DESIGN.md's
/// tables (not with the crate's code).
#[test]
fn golden_bytes_match_the_design_tables() {
    for version in [6u32, 5, 4, 3, 2] {
        let dir = golden_dir(version);
        let b = fs::read(dir.join(DISK_FILE)).unwrap();
        // Superblock, bytes 0..4096.
        assert_eq!(&b[0..8], b"KVSDISK\0");
        assert_eq!(u32_at(&b, 8), version);
        assert_eq!(u32_at(&b, 12), 4096, "data start");
        let seed = u64_at(&b, 16);
        assert_ne!(u64_at(&b, 24), 0, "creation time");
        assert_eq!(u64_at(&b, 32), SEG, "segment size");
        // Format 5 adds the value limit (u32 and 4 zero bytes) before the checksum.
        let end = if version >= 5 {
            assert_eq!(u32_at(&b, 40) as usize, MAX_VALUE, "value limit");
            assert_eq!(u32_at(&b, 44), 0);
            48
        } else {
            40
        };
        assert_eq!(u64_at(&b, end), xxh3_64(&b[0..end]), "superblock checksum");
        assert!(b[end + 8..4096].iter().all(|&x| x == 0));
        assert_eq!((b.len() as u64 - 4096) % SEG, 0, "whole segment slots");
        assert!(
            (b.len() as u64 - 4096) / SEG >= 3,
            "the store spans several segments"
        );

        // The first segment header: slot 0, logical segment 0.
        let s = &b[4096..8192];
        assert_eq!(&s[0..8], b"KVSSEG\0\0");
        assert_eq!(u64_at(s, 8), 0, "logical segment number");
        assert_eq!(u64_at(s, 16), seed, "the superblock's seed");
        if version >= 6 {
            assert_eq!(u64_at(s, 24), 1, "first sequence number");
            assert_eq!(u64_at(s, 32), 0, "flags: not a relocation segment");
            assert_eq!(u64_at(s, 40), xxh3_64(&s[0..40]));
            assert!(s[48..].iter().all(|&x| x == 0));
        } else if version >= 3 {
            assert_eq!(u64_at(s, 24), 1, "first sequence number");
            assert_eq!(u64_at(s, 32), xxh3_64(&s[0..32]));
            assert!(s[40..].iter().all(|&x| x == 0));
        } else {
            assert_eq!(u64_at(s, 24), xxh3_64(&s[0..24]));
            assert!(s[32..].iter().all(|&x| x == 0));
        }

        // The first record: the put of key 0, version 1.
        let (k, v) = (key(0), value(0, 1));
        let r = &b[8192..];
        assert_eq!(&r[0..4], b"KVR1");
        assert_eq!(r[4], 1, "kind: put");
        assert_eq!(&r[5..8], &[0, 0, 0]);
        assert_eq!(u32_at(r, 8) as usize, k.len(), "key length");
        assert_eq!(u32_at(r, 12) as usize, v.len(), "value length");
        assert_eq!(u64_at(r, 16), 1, "sequence number");
        let payload = [k.as_slice(), v.as_slice()].concat();
        assert_eq!(u32_at(r, 24), xxh3_64(&payload) as u32, "data checksum");
        assert_eq!(
            u32_at(r, 28),
            header_sum(r, seed, version),
            "header checksum"
        );
        assert_eq!(&r[32..32 + k.len()], k.as_slice());
        assert_eq!(&r[32 + k.len()..32 + k.len() + v.len()], v.as_slice());
        let end = (32 + k.len() + v.len()).next_multiple_of(8);
        assert!(r[32 + k.len() + v.len()..end].iter().all(|&x| x == 0));

        // IMAGE_file: an 80-byte header, then slot roots, nodes and free ids.
        let img = fs::read(dir.join(IMAGE_FILE)).unwrap();
        assert_eq!(&img[0..8], b"KVSIMG\0\0");
        assert_eq!(u32_at(&img, 8), 1, "image format version");
        assert_eq!(u32_at(&img, 12), 28, "node size");
        let (slots, nodes, free) = (u64_at(&img, 32), u64_at(&img, 40), u64_at(&img, 48));
        assert!(slots.is_power_of_two());
        assert!(nodes >= model_of(version).len() as u64);
        assert_eq!(img.len() as u64, 80 + 4 * slots + 28 * nodes + 4 * free);
        assert_eq!(u64_at(&img, 56), xxh3_64(&img[80..]), "body checksum");
        assert_eq!(u64_at(&img, 64), seed, "the superblock's seed");
        assert_eq!(u64_at(&img, 72), xxh3_64(&img[0..72]), "header checksum");
        let covered = u64_at(&img, 16);
        assert!(
            covered > SEG && covered <= (b.len() as u64 - 4096),
            "covered {covered}"
        );
    }
}

/// One record as the tables describe it.
struct Rec {
    kind: u8,
    /// The batch flag (format 4).
    batch: bool,
    /// The data checksum field: a commit's record count.
    count: u32,
    seq: u64,
    key: Vec<u8>,
    value: Vec<u8>,
}

/// Every record of every segment of `b` (a whole disk_file), in log order, each header
/// and payload checked by hand.
fn records_by_hand(b: &[u8], version: u32) -> Vec<Rec> {
    let (seed, seg) = (u64_at(b, 16), u64_at(b, 32) as usize);
    let mut segments = BTreeMap::new();
    for slot in (4096..b.len()).step_by(seg) {
        let s = &b[slot..slot + seg];
        if &s[0..8] != b"KVSSEG\0\0" {
            assert!(
                s.iter().all(|&x| x == 0),
                "slot at {slot}: neither a segment nor free"
            );
            continue;
        }
        assert_eq!(u64_at(s, 16), seed);
        let first_seq = if version >= 6 {
            assert_eq!(u64_at(s, 32) & !1, 0, "flags");
            assert_eq!(u64_at(s, 40), xxh3_64(&s[0..40]));
            Some(u64_at(s, 24))
        } else if version >= 3 {
            assert_eq!(u64_at(s, 32), xxh3_64(&s[0..32]));
            Some(u64_at(s, 24))
        } else {
            assert_eq!(u64_at(s, 24), xxh3_64(&s[0..24]));
            None
        };
        let mut recs = Vec::new();
        let mut pos = 4096;
        while pos + 32 <= seg && &s[pos..pos + 4] == b"KVR1" {
            let h = &s[pos..pos + 32];
            let (kind, klen, vlen) = (h[4], u32_at(h, 8) as usize, u32_at(h, 12) as usize);
            assert_eq!(
                u32_at(h, 28),
                header_sum(h, seed, version),
                "at {}",
                slot + pos
            );
            // Format 4: kind 5 (commit) and the batch flag in byte 5.
            let top = if version >= 4 { 5 } else { 4 };
            assert!((1..=top).contains(&kind) && h[6..8] == [0, 0]);
            assert!(h[5] == 0 || (version >= 4 && h[5] == 1 && (kind == 1 || kind == 2)));
            if kind == 5 {
                assert_eq!((klen, vlen), (0, 0), "a commit has no key and no value");
                assert!(u32_at(h, 24) >= 1, "a commit counts its records");
            }
            let len = (32 + klen + vlen).next_multiple_of(8);
            assert!(pos + len <= seg, "a record crosses its segment's end");
            let payload = &s[pos + 32..pos + 32 + klen + vlen];
            if kind == 1 || kind == 2 {
                assert_eq!(u32_at(h, 24), xxh3_64(payload) as u32, "data checksum");
                assert!((1..=MAX_KEY_LEN).contains(&klen));
            }
            if kind == 2 {
                assert_eq!(vlen, 0, "a tombstone has no value");
            }
            if kind == 4 {
                assert_eq!((klen, u64_at(h, 16)), (0, 0), "a pad has no key and no seq");
            }
            recs.push(Rec {
                kind,
                batch: h[5] == 1,
                count: u32_at(h, 24),
                seq: u64_at(h, 16),
                key: payload[..klen].to_vec(),
                value: payload[klen..].to_vec(),
            });
            pos += len;
        }
        if let (Some(first), Some(r)) = (first_seq, recs.iter().find(|r| r.kind != 4)) {
            assert_eq!(first, r.seq, "segment header's first sequence number");
        }
        assert!(segments.insert(u64_at(s, 8), recs).is_none());
    }
    segments.into_values().flatten().collect()
}

/// Replaying the log decoded by hand gives what `script()` left.
#[test]
fn golden_log_replayed_by_hand_gives_the_expected_content() {
    for version in [6u32, 5, 4, 3, 2] {
        let b = fs::read(golden_dir(version).join(DISK_FILE)).unwrap();
        let recs = records_by_hand(&b, version);
        let mut state = BTreeMap::new();
        let mut last_seq = 0;
        let mut kinds = [0usize; 6];
        // A batch's records wait for its commit.
        let mut held: Vec<&Rec> = Vec::new();
        for r in &recs {
            kinds[r.kind as usize] += 1;
            if r.kind == 4 {
                continue;
            }
            assert!(r.seq > last_seq, "sequence numbers increase along the log");
            last_seq = r.seq;
            if r.batch {
                held.push(r);
                continue;
            }
            let apply: Vec<&Rec> = if r.kind == 5 {
                assert_eq!(held.len(), r.count as usize, "the commit counts the batch");
                std::mem::take(&mut held)
            } else {
                assert!(held.is_empty(), "a batch without its commit");
                vec![r]
            };
            for r in apply {
                match r.kind {
                    1 => {
                        state.insert(r.key.clone(), r.value.clone());
                    }
                    2 => {
                        state.remove(&r.key);
                    }
                    _ => {}
                }
            }
        }
        if version >= 4 {
            assert_eq!(kinds[5], 1, "one batch");
        }
        let want: BTreeMap<Vec<u8>, Vec<u8>> = model_of(version)
            .iter()
            .map(|(&i, &v)| (key(i), value(i, v)))
            .collect();
        assert!(
            state == want,
            "v{version}: the log replays to other content"
        );
        assert!(kinds[1] > 0 && kinds[2] > 0 && kinds[4] > 0, "{kinds:?}");
    }
}

/// The golden content covers what it is meant to: an empty value, the largest value, the
/// longest key, a binary key, overwritten, deleted and re-put keys.
#[test]
fn the_script_covers_the_edge_cases() {
    let m = model();
    let lens: Vec<usize> = m.iter().map(|(&i, &v)| value(i, v).len()).collect();
    assert!(lens.contains(&0) && lens.contains(&MAX_VALUE));
    assert!(m.contains_key(&1) && key(1).len() == MAX_KEY_LEN);
    assert!(m.contains_key(&3) && m.contains_key(&4));
    assert!(m.values().any(|&v| v == 2) && m.values().any(|&v| v == 3));
    assert!(m.len() < KEYS as usize);
    let ops = script();
    let deleted_then_put = m.keys().any(|&i| {
        let deleted = |o: &Op| matches!(o, Op::Delete(k) if *k == i);
        ops.iter().any(deleted)
    });
    assert!(deleted_then_put, "a key deleted and put again is live");
    let mut live = std::collections::BTreeSet::new();
    let absent_deleted = ops.iter().any(|o| match *o {
        Op::Put(i, _) => {
            live.insert(i);
            false
        }
        Op::Delete(i) => !live.remove(&i),
        Op::Sync => false,
    });
    assert!(absent_deleted, "a key deleted while absent");
}

/// Runs `script()` on `store`, checking what each delete says.
fn write_script(store: &Store) {
    let mut live = std::collections::BTreeSet::new();
    for op in script() {
        match op {
            Op::Put(i, v) => {
                store.put(&key(i), &value(i, v)).unwrap();
                live.insert(i);
            }
            Op::Delete(i) => assert_eq!(store.delete(&key(i)).unwrap(), live.remove(&i)),
            Op::Sync => store.sync().unwrap(),
        }
    }
}

/// Writes tests/data/golden-v3 and tests/data/golden-v2 (disk_file and IMAGE_file only):
///
/// ```sh
/// rm -r tests/data/golden-v3 tests/data/golden-v2
/// KVS_WRITE_GOLDEN=1 cargo test --test golden -- --ignored make_golden
/// ```
///
/// It refuses to write over existing directories, and to run when the current disk_file
/// format is not 3. Regenerate only when `script()`, `key`, `value` or `opts` must change;
/// never to make these tests pass after a format change (that is a new golden directory,
/// and these stay as they are, for the stores already written).
#[test]
#[ignore = "writes tests/data/golden-*; run with KVS_WRITE_GOLDEN=1"]
fn make_golden() {
    if std::env::var_os("KVS_WRITE_GOLDEN").is_none() {
        eprintln!("make_golden: set KVS_WRITE_GOLDEN=1 to write tests/data/golden-*");
        return;
    }
    // Format 3 stores are written by a kvs of format 3 (their bytes are committed).
    if kvs::DISK_VERSION != 3 {
        eprintln!("make_golden: the current format is not 3; see make_golden_v4");
        return;
    }
    for v in [3, 2] {
        assert!(
            !golden_dir(v).exists(),
            "{} exists: remove it first if regenerating is allowed (see make_golden)",
            golden_dir(v).display()
        );
    }
    let tmp = TempDir::new("make-golden");
    let store = Store::open(tmp.path(), opts()).unwrap();
    write_script(&store);
    store.close().unwrap();
    for v in [3, 2] {
        fs::create_dir_all(golden_dir(v)).unwrap();
        for f in GOLDEN_FILES {
            let mut bytes = fs::read(tmp.path().join(f)).unwrap();
            if v == 2 && f == DISK_FILE {
                downgrade_to_v2(&mut bytes, SEG as usize);
            }
            fs::write(golden_dir(v).join(f), bytes).unwrap();
        }
    }
}

/// Writes tests/data/golden-v4 (disk_file and IMAGE_file): the store of `make_golden`,
/// then the batch of `batch_v4()`:
///
/// ```sh
/// KVS_WRITE_GOLDEN=1 cargo test --test golden -- --ignored make_golden_v4
/// ```
///
/// It refuses to write over an existing directory, and to run when the current disk_file
/// format is not 4. The same rules as for `make_golden` hold.
#[test]
#[ignore = "writes tests/data/golden-v4; run with KVS_WRITE_GOLDEN=1"]
fn make_golden_v4() {
    write_golden_with_batch(4);
}

/// Writes tests/data/golden-v5 as `make_golden_v4` wrote golden-v4, in format 5 (whose
/// superblock records the store's value limit, `MAX_VALUE`):
///
/// ```sh
/// KVS_WRITE_GOLDEN=1 cargo test --test golden -- --ignored make_golden_v5
/// ```
#[test]
#[ignore = "writes tests/data/golden-v5; run with KVS_WRITE_GOLDEN=1"]
fn make_golden_v5() {
    write_golden_with_batch(5);
}

/// Writes tests/data/golden-v6 as `make_golden_v5` wrote golden-v5, in format 6 (segment
/// headers with flags):
///
/// ```sh
/// KVS_WRITE_GOLDEN=1 cargo test --test golden -- --ignored make_golden_v6
/// ```
#[test]
#[ignore = "writes tests/data/golden-v6; run with KVS_WRITE_GOLDEN=1"]
fn make_golden_v6() {
    write_golden_with_batch(6);
}

fn write_golden_with_batch(version: u32) {
    if std::env::var_os("KVS_WRITE_GOLDEN").is_none() {
        eprintln!("set KVS_WRITE_GOLDEN=1 to write tests/data/golden-v{version}");
        return;
    }
    assert_eq!(
        kvs::DISK_VERSION,
        version,
        "this kvs writes format {} stores",
        kvs::DISK_VERSION
    );
    assert!(
        !golden_dir(version).exists(),
        "{} exists: remove it first if regenerating is allowed",
        golden_dir(version).display()
    );
    let tmp = TempDir::new("make-golden-batch");
    let store = Store::open(tmp.path(), opts()).unwrap();
    write_script(&store);
    let mut batch = kvs::Batch::new();
    for op in batch_v4() {
        match op {
            Op::Put(i, v) => batch.put(&key(i), &value(i, v)),
            Op::Delete(i) => batch.delete(&key(i)),
            Op::Sync => unreachable!(),
        };
    }
    store.write(&batch).unwrap();
    store.close().unwrap();
    fs::create_dir_all(golden_dir(version)).unwrap();
    for f in GOLDEN_FILES {
        fs::copy(tmp.path().join(f), golden_dir(version).join(f)).unwrap();
    }
}

//! Incremental checkpoints: IMAGE_delta blocks after IMAGE_file, read back at open after a
//! crash, torn or damaged blocks, blocks of an older image, folding, and faults.

mod common;

use std::collections::HashMap;
use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{copy_store, value_for, with_faults, Rng, TempDir};
use kvs::testing::{Action, Hooks, Op};
use kvs::{Error, Options, Store, DELTA_FILE, DISK_FILE, IMAGE_FILE, LOG_FILE};

/// Bytes of a block's header and of one change in IMAGE_delta (DESIGN.md).
const BLOCK_HEADER: u64 = 72;
const CHANGE: u64 = 24;

/// No background checkpoints: the tests take them.
fn opts() -> Options {
    Options::default()
        .buffer_size(1 << 20)
        .max_value_size(64 << 10)
        .segment_size(1 << 20)
        .expected_records(4096)
        .checkpoint_bytes(0)
        .checkpoint_interval(Duration::ZERO)
        .background_reclaim(false)
}

/// What a crash leaves: `store` is left open (never closed: its files stay as the last
/// sync left them) and its files are copied to a new directory, which is returned.
fn crash(store: Store, dir: &Path, tag: &str) -> TempDir {
    store.sync().unwrap();
    std::mem::forget(store);
    copy_store(dir, tag)
}

/// What each key should read: its value, or not found.
type Model = HashMap<Vec<u8>, Option<Vec<u8>>>;

fn key(i: u64) -> Vec<u8> {
    format!("key-{i:05}").into_bytes()
}

fn check(store: &Store, model: &Model) {
    for (k, v) in model {
        assert_eq!(&store.get(k).unwrap(), v, "{}", String::from_utf8_lossy(k));
    }
}

fn delta_len(dir: &Path) -> u64 {
    fs::metadata(dir.join(DELTA_FILE)).map_or(0, |m| m.len())
}

/// A new store writes its empty IMAGE_file at open; every checkpoint after that writes a
/// block of exactly the changed entries (the last change of each), the first one too
/// (5000 records, not a whole copy of the index), and an open after a crash applies them
/// and replays nothing.
#[test]
fn a_checkpoint_writes_only_the_changes_and_an_open_applies_them() {
    let dir = TempDir::new("delta-changes");
    let store = Store::open(dir.path(), opts()).unwrap();
    let empty = store.stats().checkpoint_bytes;
    assert_eq!(
        empty,
        fs::metadata(dir.path().join(IMAGE_FILE)).unwrap().len()
    );
    let mut model = HashMap::new();
    put_keys(&store, &mut model, 0..5000, 0, 200);
    store.checkpoint().unwrap();
    let first = BLOCK_HEADER + 5000 * CHANGE;
    assert_eq!(store.stats().checkpoint_bytes, empty + first);
    assert_eq!(delta_len(dir.path()), first);
    let whole = empty + first;
    // 1% of the records change: 40 overwrites and 10 deletes (and a delete of a key
    // that is not there, which changes nothing).
    put_keys(&store, &mut model, 0..40, 1, 300);
    for i in 100..110u64 {
        store.delete(&key(i)).unwrap();
        model.insert(key(i), None);
    }
    store.delete(b"never-there").unwrap();
    store.checkpoint().unwrap();
    let block = BLOCK_HEADER + 50 * CHANGE;
    assert_eq!(store.stats().checkpoint_bytes - whole, block);
    assert_eq!(delta_len(dir.path()), first + block);
    // One key written 100 times, and one put then deleted: one change each.
    for n in 0..100u64 {
        let v = value_for(&key(7), 2 + n, 100);
        store.put(&key(7), &v).unwrap();
        model.insert(key(7), Some(v));
    }
    store.put(b"brief", b"x").unwrap();
    store.delete(b"brief").unwrap();
    model.insert(b"brief".to_vec(), None);
    let covered = store.checkpoint().unwrap();
    assert_eq!(
        delta_len(dir.path()),
        first + block + BLOCK_HEADER + 2 * CHANGE
    );
    let copy = crash(store, dir.path(), "delta-changes-copy");
    let store = Store::open(copy.path(), opts()).unwrap();
    let st = store.stats();
    assert!(st.opened_from_image);
    assert_eq!(st.checkpoint_covered, covered);
    // Only the flush's padding to a 4 KiB block follows what the blocks cover.
    assert!(st.replayed_bytes < 4096, "{}", st.replayed_bytes);
    assert_eq!(st.records, 4990);
    check(&store, &model);
    let log = fs::read_to_string(copy.path().join(LOG_FILE)).unwrap();
    assert!(
        log.contains("IMAGE_delta: 3 blocks, 5052 changes applied"),
        "{log}"
    );
    // Close writes IMAGE_file whole and removes IMAGE_delta.
    store.close().unwrap();
    assert!(!copy.path().join(DELTA_FILE).exists());
    let store = Store::open(copy.path(), opts()).unwrap();
    check(&store, &model);
}

/// An IMAGE_file written whole (by a close), three checkpoints' blocks over it, and the
/// log after each. Returns the store's directory (left as a crash leaves it), the model,
/// and the offsets the whole image and each block cover.
fn three_blocks(tag: &str) -> (TempDir, Model, Vec<u64>) {
    let dir = TempDir::new(tag);
    let mut store = Store::open(dir.path(), opts()).unwrap();
    let mut model = HashMap::new();
    let mut covered = Vec::new();
    for round in 0..4u64 {
        for i in 0..300u64 {
            let k = key((i * 7 + round * 13) % 1000);
            let v = value_for(&k, round, 500);
            store.put(&k, &v).unwrap();
            model.insert(k, Some(v));
        }
        let k = key(round * 100);
        store.delete(&k).unwrap();
        model.insert(k, None);
        if round == 0 {
            store.close().unwrap();
            store = Store::open(dir.path(), opts()).unwrap();
        }
        covered.push(store.checkpoint().unwrap());
    }
    // More after the last checkpoint: replayed from the log.
    put_keys(&store, &mut model, 0..50, 9, 400);
    let copy = crash(store, dir.path(), &format!("{tag}-copy"));
    (copy, model, covered)
}

/// The byte offsets of the blocks in IMAGE_delta.
fn block_starts(b: &[u8]) -> Vec<usize> {
    let mut at = 0;
    let mut starts = Vec::new();
    while at + BLOCK_HEADER as usize <= b.len() {
        starts.push(at);
        let n = u64::from_le_bytes(b[at + 48..at + 56].try_into().unwrap());
        at += (BLOCK_HEADER + n * CHANGE) as usize;
    }
    starts
}

/// A torn last block, a damaged middle one, a damaged first one: open applies the blocks
/// before it and replays the log from where they leave off; every record is there.
#[test]
fn a_torn_or_damaged_block_is_not_applied_and_the_log_is_replayed_instead() {
    let (dir, model, covered) = three_blocks("delta-damage");
    let good = fs::read(dir.path().join(DELTA_FILE)).unwrap();
    let starts = block_starts(&good);
    assert_eq!(starts.len(), 3);
    let cases: Vec<(&str, Vec<u8>, u64)> = vec![
        (
            "torn last block",
            good[..good.len() - 30].to_vec(),
            covered[2],
        ),
        (
            "torn last header",
            good[..starts[2] + 40].to_vec(),
            covered[2],
        ),
        (
            "damaged middle body",
            {
                let mut b = good.clone();
                b[starts[1] + BLOCK_HEADER as usize + 5] ^= 0x10;
                b
            },
            covered[1],
        ),
        (
            "damaged first header",
            {
                let mut b = good.clone();
                b[starts[0] + 30] ^= 0x01;
                b
            },
            covered[0],
        ),
        ("intact", good.clone(), covered[3]),
    ];
    for (what, bytes, want) in cases {
        let copy = TempDir::new("delta-damage-case");
        fs::create_dir_all(copy.path()).unwrap();
        for f in [DISK_FILE, IMAGE_FILE] {
            fs::copy(dir.path().join(f), copy.path().join(f)).unwrap();
        }
        fs::write(copy.path().join(DELTA_FILE), &bytes).unwrap();
        let store = Store::open(copy.path(), opts()).unwrap();
        let st = store.stats();
        assert!(st.opened_from_image, "{what}");
        assert_eq!(st.checkpoint_covered, want, "{what}");
        check(&store, &model);
        // The next checkpoint chains from what was applied: cut what was not, append.
        let k = key(999_999);
        store.put(&k, b"after").unwrap();
        store.checkpoint().unwrap();
        let copy2 = crash(store, copy.path(), "delta-damage-case2");
        let store = Store::open(copy2.path(), opts()).unwrap();
        assert!(store.stats().replayed_bytes < 4096, "{what}");
        check(&store, &model);
        assert_eq!(store.get(&k).unwrap().as_deref(), Some(&b"after"[..]));
    }
}

/// Blocks written for an older IMAGE_file (a crash between the rename of a new one and
/// the removal of IMAGE_delta) are not applied.
#[test]
fn blocks_of_an_older_image_are_not_applied() {
    let (dir, _, _) = three_blocks("delta-older");
    let old_blocks = fs::read(dir.path().join(DELTA_FILE)).unwrap();
    let store = Store::open(dir.path(), opts()).unwrap();
    // Change keys the old blocks also changed, then close: IMAGE_file whole.
    let mut model = HashMap::new();
    for i in 0..1000u64 {
        model.insert(key(i), store.get(&key(i)).unwrap());
    }
    for i in 0..200u64 {
        store.delete(&key(i * 5)).unwrap();
        model.insert(key(i * 5), None);
    }
    store.close().unwrap();
    fs::write(dir.path().join(DELTA_FILE), &old_blocks).unwrap();
    let store = Store::open(dir.path(), opts()).unwrap();
    assert!(store.stats().opened_from_image);
    check(&store, &model);
    let log = fs::read_to_string(dir.path().join(LOG_FILE)).unwrap();
    let last_open = &log[log.rfind("opened:").unwrap()..];
    assert!(!last_open.contains("IMAGE_delta"), "{last_open}");
}

/// A new store with one record and its first checkpoint (IMAGE_file whole).
fn with_first_image(dir: &Path) -> (Store, Model) {
    let store = Store::open(dir, opts()).unwrap();
    let mut model = Model::new();
    store.put(b"first", b"1").unwrap();
    model.insert(b"first".to_vec(), Some(b"1".to_vec()));
    store.checkpoint().unwrap();
    (store, model)
}

/// Puts keys 0..2000 again, with values of version `round`.
fn rewrite_2000(store: &Store, model: &mut Model, round: u64) {
    put_keys(store, model, 0..2000, round, 16);
}

/// Puts `keys` with values of `version` and `len` bytes, in the store and the model.
fn put_keys(
    store: &Store,
    model: &mut Model,
    keys: std::ops::Range<u64>,
    version: u64,
    len: usize,
) {
    for i in keys {
        let v = value_for(&key(i), version, len);
        store.put(&key(i), &v).unwrap();
        model.insert(key(i), Some(v));
    }
}

/// Once IMAGE_delta reaches its share of IMAGE_file, a checkpoint folds it into a new
/// IMAGE_file (read back from disk, not from the live index); the chain starts over.
#[test]
fn the_delta_is_folded_into_image_file() {
    let dir = TempDir::new("delta-fold");
    let (store, mut model) = with_first_image(dir.path());
    let mut folded = false;
    for round in 0..60u64 {
        rewrite_2000(&store, &mut model, round);
        store.delete(&key(round)).unwrap();
        model.insert(key(round), None);
        let before = delta_len(dir.path());
        store.checkpoint().unwrap();
        if delta_len(dir.path()) < before {
            folded = true;
            break;
        }
    }
    assert!(folded, "IMAGE_delta never folded");
    assert!(!dir.path().join(DELTA_FILE).exists());
    let log = fs::read_to_string(dir.path().join(LOG_FILE)).unwrap();
    assert!(log.contains("IMAGE_file folded"), "{log}");
    // After the fold, changes chain from the new IMAGE_file.
    store.put(b"after-fold", b"2").unwrap();
    model.insert(b"after-fold".to_vec(), Some(b"2".to_vec()));
    let covered = store.checkpoint().unwrap();
    assert_eq!(delta_len(dir.path()), BLOCK_HEADER + CHANGE);
    let copy = crash(store, dir.path(), "delta-fold-copy");
    let store = Store::open(copy.path(), opts()).unwrap();
    assert_eq!(store.stats().checkpoint_covered, covered);
    assert!(store.stats().replayed_bytes < 4096);
    check(&store, &model);
}

/// IMAGE_delta damaged on disk while the store runs: the fold reads it back, finds it does
/// not lead where it should, and fails that checkpoint without failing the store; the next
/// checkpoint writes IMAGE_file whole, and an open after a crash has every record.
#[test]
fn a_fold_that_does_not_read_back_makes_the_next_checkpoint_whole() {
    let dir = TempDir::new("delta-fold-bad");
    let (store, mut model) = with_first_image(dir.path());
    let mut failed = None;
    for round in 0..60u64 {
        rewrite_2000(&store, &mut model, round);
        if round == 1 {
            // Bit rot in the first block's changes.
            let path = dir.path().join(DELTA_FILE);
            let mut b = fs::read(&path).unwrap();
            b[BLOCK_HEADER as usize + 3] ^= 0x20;
            fs::write(&path, &b).unwrap();
        }
        if let Err(e) = store.checkpoint() {
            failed = Some(e);
            break;
        }
    }
    let e = failed.expect("the fold never ran");
    assert!(matches!(e, Error::Corruption { .. }), "{e:?}");
    assert!(
        !store.stats().failed,
        "a failed fold does not fail the store"
    );
    store.put(b"after", b"2").unwrap();
    model.insert(b"after".to_vec(), Some(b"2".to_vec()));
    let covered = store.checkpoint().unwrap();
    let log = fs::read_to_string(dir.path().join(LOG_FILE)).unwrap();
    let last = log.lines().rfind(|l| l.contains("checkpoint:")).unwrap();
    assert!(last.contains("IMAGE_file whole"), "{last}");
    // Whole because the failed fold dropped the image, not by the journal's safety net.
    assert!(!log.contains("the journal starts at"), "{log}");
    assert_eq!(delta_len(dir.path()), 0);
    let copy = crash(store, dir.path(), "delta-fold-bad-copy");
    let store = Store::open(copy.path(), opts()).unwrap();
    assert_eq!(store.stats().checkpoint_covered, covered);
    check(&store, &model);
}

/// A model test: random puts, deletes, checkpoints, crashes (after a sync) and clean
/// closes. Changes the replay applied after a crash are in the next checkpoint's block.
#[test]
fn random_operations_with_checkpoints_and_crashes_match_a_model() {
    let mut rng = Rng(0x5eed_de17a);
    let mut dir = TempDir::new("delta-model");
    let mut model = Model::new();
    let mut store = Store::open(dir.path(), opts()).unwrap();
    for cycle in 0..24u64 {
        for n in 0..400u64 {
            let k = key(rng.below(600));
            match rng.below(10) {
                0..=6 => {
                    let v = value_for(&k, cycle * 1000 + n, rng.below(3000) as usize + 1);
                    store.put(&k, &v).unwrap();
                    model.insert(k, Some(v));
                }
                7 | 8 => {
                    store.delete(&k).unwrap();
                    model.insert(k, None);
                }
                _ => {
                    store.checkpoint().unwrap();
                }
            }
        }
        match rng.below(3) {
            0 => {
                store.close().unwrap();
                store = Store::open(dir.path(), opts()).unwrap();
            }
            _ => {
                let copy = crash(store, dir.path(), "delta-model-copy");
                dir = copy;
                store = Store::open(dir.path(), opts()).unwrap();
                assert!(store.stats().opened_from_image || cycle == 0);
            }
        }
        check(&store, &model);
    }
}

/// A failed IMAGE_delta write or fdatasync (EIO) fails the store (as a failed IMAGE_file
/// write does); the next open has every durable record. A full disk does not: below.
#[test]
fn a_failed_delta_write_fails_the_store_and_loses_nothing_durable() {
    for (op, action) in [
        (Op::ImageWrite, Action::Errno(libc::EIO)),
        (Op::ImageSync, Action::Errno(libc::EIO)),
    ] {
        let dir = TempDir::new("delta-fault");
        let (dev, faults, hooks) = with_faults();
        let store = Store::open_with(dir.path(), opts(), hooks).unwrap();
        let mut model = HashMap::new();
        put_keys(&store, &mut model, 0..100, 0, 1000);
        store.checkpoint().unwrap();
        put_keys(&store, &mut model, 0..10, 1, 1000);
        faults.fail(op, 1, action);
        let r = store.checkpoint();
        assert!(matches!(r, Err(Error::Failed(_))), "{op:?}: {r:?}");
        assert!(store.stats().failed);
        assert!(store.close().is_err());
        let store = Store::open_with(dir.path(), opts(), Hooks::memory(Arc::clone(&dev))).unwrap();
        check(&store, &model);
        store.close().unwrap();
    }
}

/// An open that had to rebuild the index (IMAGE_file gone) writes IMAGE_file before it
/// returns: a crash right after opens from that image instead of rebuilding again, and the
/// first checkpoint after it is a block of the changes, not the whole index copied under
/// the ring lock.
#[test]
fn an_open_that_rebuilt_writes_the_image_at_once() {
    let dir = TempDir::new("ckpt-rebuilt-open");
    let mut model = Model::new();
    let store = Store::open(dir.path(), opts()).unwrap();
    for i in 0..300 {
        let v = value_for(&key(i), 0, 1 + (i as usize * 37) % 3000);
        store.put(&key(i), &v).unwrap();
        model.insert(key(i), Some(v));
    }
    store.close().unwrap();
    fs::remove_file(dir.path().join(IMAGE_FILE)).unwrap();

    let store = Store::open(dir.path(), opts()).unwrap();
    assert!(!store.stats().opened_from_image, "IMAGE_file was removed");
    assert!(
        dir.path().join(IMAGE_FILE).exists(),
        "the open that rebuilt wrote no IMAGE_file"
    );
    // One change after the open: the next checkpoint writes it as one block.
    let v = value_for(&key(7), 1, 99);
    store.put(&key(7), &v).unwrap();
    model.insert(key(7), Some(v));
    let before = store.stats().checkpoint_bytes;
    store.checkpoint().unwrap();
    assert_eq!(
        store.stats().checkpoint_bytes - before,
        BLOCK_HEADER + CHANGE,
        "the first checkpoint after a rebuild was not a block of its one change"
    );
    let copy = crash(store, dir.path(), "ckpt-rebuilt-open-copy");
    let store = Store::open(copy.path(), opts()).unwrap();
    assert!(store.stats().opened_from_image, "the crash left no image");
    check(&store, &model);
    store.close().unwrap();
}

/// Many small records between two byte-triggered checkpoints: the background thread
/// checkpoints once the change journal is half full, so the journal never overflows and no
/// checkpoint of the open has to copy the whole index (LOG shows blocks only, the one
/// taken at the end included). Without the trigger the journal overflows at 2^20 changes
/// and the last checkpoint is whole.
#[test]
fn a_filling_journal_triggers_a_checkpoint_before_it_overflows() {
    let dir = TempDir::new("ckpt-journal-trigger");
    let o = Options::default()
        .buffer_size(64 << 20)
        .expected_records(1 << 21)
        .checkpoint_bytes(1 << 40)
        .checkpoint_interval(Duration::ZERO)
        .background_reclaim(false);
    // Opened from an image (the journal runs from open on).
    let store = Store::open(dir.path(), o.clone()).unwrap();
    store.put(b"first", b"1").unwrap();
    store.close().unwrap();
    let store = Store::open(dir.path(), o).unwrap();
    assert!(store.stats().opened_from_image);
    let n: u64 = 1_300_000; // past the journal's cap of 2^20 changes
    for i in 0..n {
        store.put(&i.to_le_bytes(), &i.to_be_bytes()).unwrap();
    }
    store.checkpoint().unwrap();
    let log = fs::read_to_string(dir.path().join(LOG_FILE)).unwrap();
    // This open's lines (the first open wrote the new store's empty image whole).
    let log = &log[log.rfind("opened:").unwrap()..];
    let blocks = log.matches("(IMAGE_delta block,").count();
    assert!(blocks >= 2, "fewer than two blocks: {log}");
    // No checkpoint of this open copied the index whole: the journal never overflowed.
    assert!(
        !log.contains("(IMAGE_file whole,"),
        "a checkpoint wrote IMAGE_file whole: {log}"
    );
    let copy = crash(store, dir.path(), "ckpt-journal-trigger-copy");
    let store = Store::open(copy.path(), opts().expected_records(1 << 21)).unwrap();
    assert_eq!(store.stats().records, n + 1);
    for i in (0..n).step_by(9973) {
        assert_eq!(
            store.get(&i.to_le_bytes()).unwrap(),
            Some(i.to_be_bytes().to_vec())
        );
    }
    store.close().unwrap();
}

/// IMAGE_file's inode and length: a rewrite (by rename) changes the inode.
fn image_id(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let m = fs::metadata(dir.join(IMAGE_FILE)).unwrap();
    (m.ino(), m.len())
}

/// The LOG's last line that contains `what`.
fn last_log_line(dir: &Path, what: &str) -> String {
    let log = fs::read_to_string(dir.join(LOG_FILE)).unwrap();
    log.lines()
        .rev()
        .find(|l| l.contains(what))
        .unwrap()
        .to_string()
}

/// Close writes what changed since the newest image: nothing when nothing did (IMAGE_file
/// is not rewritten), one IMAGE_delta block for a few changes (applied by the next open,
/// which replays nothing), and IMAGE_file whole once the chain would pass 1/256 of it,
/// also when the blocks that pass it were written by checkpoints before the close.
#[test]
fn a_close_writes_only_what_changed_since_the_newest_image() {
    let dir = TempDir::new("close-changes");
    let store = Store::open(dir.path(), opts()).unwrap();
    let mut model = Model::new();
    let put = |store: &Store, model: &mut Model, i: u64, round: u64| {
        let v = value_for(&key(i), round, 8);
        store.put(&key(i), &v).unwrap();
        model.insert(key(i), Some(v));
    };
    for i in 0..40_000u64 {
        put(&store, &mut model, i, 0);
    }
    store.close().unwrap();
    assert_eq!(delta_len(dir.path()), 0);
    let first = image_id(dir.path());
    let budget = first.1 / 256;
    let block = |n: u64| BLOCK_HEADER + n * CHANGE;
    assert!(block(13) <= budget && block(500) > budget, "{budget}");
    // Nothing changed: nothing written.
    let store = Store::open(dir.path(), opts()).unwrap();
    assert_eq!(store.stats().records, 40_000);
    store.close().unwrap();
    assert_eq!(image_id(dir.path()), first);
    assert_eq!(delta_len(dir.path()), 0);
    let closed = last_log_line(dir.path(), "closed:");
    assert!(closed.contains("wrote nothing"), "{closed}");
    // A few changes: one block.
    let store = Store::open(dir.path(), opts()).unwrap();
    for i in 0..10u64 {
        put(&store, &mut model, i * 3, 1);
    }
    for i in 100..103u64 {
        store.delete(&key(i)).unwrap();
        model.insert(key(i), None);
    }
    store.close().unwrap();
    assert_eq!(image_id(dir.path()), first);
    assert_eq!(delta_len(dir.path()), block(13));
    let store = Store::open(dir.path(), opts()).unwrap();
    let st = store.stats();
    assert!(st.opened_from_image);
    assert_eq!(st.replayed_bytes, 0);
    assert_eq!(st.records, 39_997);
    check(&store, &model);
    let opened = last_log_line(dir.path(), "IMAGE_delta:");
    assert!(opened.contains("1 blocks, 13 changes applied"), "{opened}");
    // Open, nothing changed, close: the block stays, nothing more is written.
    store.close().unwrap();
    assert_eq!(
        (image_id(dir.path()), delta_len(dir.path())),
        (first, block(13))
    );
    // Checkpoints before the close grow the chain past the share; the close, with nothing
    // changed after them, writes IMAGE_file whole.
    let store = Store::open(dir.path(), opts()).unwrap();
    for i in 0..200u64 {
        put(&store, &mut model, i, 2);
    }
    store.checkpoint().unwrap();
    assert!(delta_len(dir.path()) > budget);
    store.close().unwrap();
    assert_ne!(image_id(dir.path()), first);
    assert_eq!(delta_len(dir.path()), 0);
    let closed = last_log_line(dir.path(), "closed:");
    assert!(closed.contains("wrote IMAGE_file whole"), "{closed}");
    let second = image_id(dir.path());
    // Many changes at once: IMAGE_file whole.
    let store = Store::open(dir.path(), opts()).unwrap();
    for i in 0..500u64 {
        put(&store, &mut model, i, 3);
    }
    store.close().unwrap();
    assert_ne!(image_id(dir.path()), second);
    assert_eq!(delta_len(dir.path()), 0);
    let store = Store::open(dir.path(), opts()).unwrap();
    assert_eq!(store.stats().replayed_bytes, 0);
    check(&store, &model);
}

/// An IMAGE_delta longer than any chain over its IMAGE_file (here a sparse 1 TB file in its
/// place) is not read: the open replays the log from what IMAGE_file covers, and loses
/// nothing. Before, reading it whole failed for want of memory and the open rebuilt the
/// index from disk_file, reading every segment.
#[test]
fn an_impossibly_long_delta_is_not_read() {
    let (dir, model, _) = three_blocks("delta-huge");
    let f = fs::OpenOptions::new()
        .write(true)
        .open(dir.path().join(DELTA_FILE))
        .unwrap();
    f.set_len(1 << 40).unwrap();
    drop(f);
    let store = Store::open(dir.path(), opts()).unwrap();
    assert!(store.stats().opened_from_image);
    assert!(store.stats().replayed_bytes > 0);
    check(&store, &model);
    let line = last_log_line(dir.path(), "IMAGE_delta:");
    assert!(
        line.contains("more than any chain over this IMAGE_file"),
        "{line}"
    );
}

/// Random rounds of puts, deletes and compactions over 20 000 keys, each round ended by a
/// close or a crash: closes write nothing, a block, or IMAGE_file whole (each seen), every
/// reopen reads back the model, and after a close the open replays nothing.
#[test]
fn closes_of_every_kind_between_random_rounds_match_a_model() {
    let mut rng = Rng(0xc105e);
    let mut dir = TempDir::new("close-model");
    let mut model = Model::new();
    let mut store = Store::open(dir.path(), opts()).unwrap();
    for i in 0..20_000u64 {
        let v = value_for(&key(i), 0, 8 + (i % 50) as usize);
        store.put(&key(i), &v).unwrap();
        model.insert(key(i), Some(v));
    }
    let mut kinds = [0u32; 3];
    for round in 1..=40u64 {
        let ops = [0, 5, 40, 400][rng.below(4) as usize];
        let mut touched = Vec::new();
        for n in 0..ops {
            let k = key(rng.below(20_000));
            touched.push(k.clone());
            if rng.below(4) == 0 {
                store.delete(&k).unwrap();
                model.insert(k, None);
            } else {
                let v = value_for(&k, round * 1000 + n, 8 + rng.below(60) as usize);
                store.put(&k, &v).unwrap();
                model.insert(k, Some(v));
            }
        }
        match rng.below(3) {
            0 => {
                store.compact().unwrap();
            }
            // A compaction after a checkpoint, into the relocation segment the one before
            // opened: its moves change the index while the log's tail stays where the
            // checkpoint left it (each round checkpoints its moves before it gives its
            // victims back, so the close may then have nothing left to write).
            1 => {
                store.compact().unwrap();
                for n in 0..1000u64 {
                    let k = key(rng.below(20_000));
                    let v = value_for(&k, round * 1000 + 500 + n, 8 + rng.below(60) as usize);
                    store.put(&k, &v).unwrap();
                    model.insert(k.clone(), Some(v));
                    touched.push(k);
                }
                store.checkpoint().unwrap();
                store.compact().unwrap();
            }
            _ => {}
        }
        if rng.below(4) == 0 {
            dir = crash(store, dir.path(), "close-model-copy");
            store = Store::open(dir.path(), opts()).unwrap();
        } else {
            store.close().unwrap();
            let closed = last_log_line(dir.path(), "closed:");
            let kind = ["wrote nothing", "IMAGE_delta block", "IMAGE_file whole"]
                .iter()
                .position(|w| closed.contains(w))
                .unwrap_or_else(|| panic!("{closed}"));
            kinds[kind] += 1;
            store = Store::open(dir.path(), opts()).unwrap();
            assert_eq!(store.stats().replayed_bytes, 0, "round {round}");
        }
        // The keys this round changed and a sample of the rest; all of them at the end.
        touched.extend((0..300).map(|_| key(rng.below(20_000))));
        for k in &touched {
            assert_eq!(store.get(k).unwrap(), model[k], "round {round}");
        }
    }
    check(&store, &model);
    eprintln!("closes that wrote nothing, a block, IMAGE_file whole: {kinds:?}");
    assert!(kinds.iter().all(|&n| n > 0), "closes by kind: {kinds:?}");
}

/// A close whose IMAGE_delta block fails to be written or synced fails (the store is
/// latched), and the next open recovers every acknowledged put from the log.
#[test]
fn a_failed_block_at_close_fails_the_close_and_loses_nothing() {
    for (op, action) in [
        (Op::ImageWrite, Action::Errno(libc::EIO)),
        (Op::ImageSync, Action::Errno(libc::EIO)),
    ] {
        let dir = TempDir::new("close-fault");
        let (dev, faults, hooks) = with_faults();
        let store = Store::open_with(dir.path(), opts(), Hooks::memory(Arc::clone(&dev))).unwrap();
        let mut model = HashMap::new();
        put_keys(&store, &mut model, 0..2000, 0, 8);
        // IMAGE_file whole, with no chain after it.
        store.close().unwrap();
        let store = Store::open_with(dir.path(), opts(), hooks).unwrap();
        // Few enough changes for a block (within 1/256 of IMAGE_file).
        put_keys(&store, &mut model, 0..3, 1, 8);
        faults.fail(op, 1, action);
        let Err(err) = store.close() else {
            panic!("{op:?}: the close succeeded");
        };
        assert!(err.to_string().contains("IMAGE_delta"), "{op:?}: {err}");
        let store = Store::open_with(dir.path(), opts(), Hooks::memory(Arc::clone(&dev))).unwrap();
        check(&store, &model);
        store.close().unwrap();
    }
}

/// A store on real files whose IMAGE_file and IMAGE_delta writes can be made to fail, and
/// whose free space can be made to look short.
fn open_with_faults(dir: &Path) -> (Store, Arc<kvs::testing::Faults>, Arc<AtomicU64>) {
    let faults = kvs::testing::Faults::new();
    let free = Arc::new(AtomicU64::new(u64::MAX));
    let hooks = Hooks {
        faults: Some(faults.clone()),
        available: Some(free.clone()),
        ..Hooks::default()
    };
    (Store::open_with(dir, opts(), hooks).unwrap(), faults, free)
}

/// The last LOG line about a checkpoint.
fn last_checkpoint_line(dir: &Path) -> String {
    let log = fs::read_to_string(dir.join(LOG_FILE)).unwrap();
    log.lines()
        .rfind(|l| l.contains("checkpoint: the image covers"))
        .unwrap_or_default()
        .to_string()
}

/// Found by review: a full disk (ENOSPC) while a checkpoint wrote an IMAGE_delta block
/// failed the store, although nothing it replaces was touched: every put after it got
/// `Failed` until reopen. It is now `NoSpace` for that checkpoint and the store goes on;
/// the block's changes go back to the journal, so the next checkpoint is a block again
/// (not IMAGE_file whole, which a nearly full disk may not hold) and it has them: an open
/// after a crash right after it replays nothing below it and has every record. An open
/// after a crash right after the failure has every record too.
#[test]
fn a_block_that_meets_a_full_disk_is_no_space_and_the_next_block_has_its_changes() {
    for (op, action) in [
        (Op::ImageWrite, Action::Errno(libc::ENOSPC)),
        (Op::ImageSync, Action::Errno(libc::ENOSPC)),
    ] {
        let dir = TempDir::new("checkpoint-enospc");
        let (store, faults, _) = open_with_faults(dir.path());
        let mut model = Model::new();
        put_keys(&store, &mut model, 0..100, 0, 1000);
        store.checkpoint().unwrap();
        put_keys(&store, &mut model, 0..10, 1, 1000);
        store.delete(&key(50)).unwrap();
        model.insert(key(50), None);
        faults.fail(op, 1, action);
        let r = store.checkpoint();
        assert!(matches!(r, Err(Error::NoSpace)), "{op:?}: {r:?}");
        assert_eq!(faults.fired(), 1);
        assert!(!store.stats().failed, "{op:?}");
        put_keys(&store, &mut model, 10..20, 2, 1000);
        // A crash now: the chain before the failed block stands, the log does the rest.
        store.sync().unwrap();
        let copy = copy_store(dir.path(), "checkpoint-enospc-copy");
        let reopened = Store::open(copy.path(), opts()).unwrap();
        check(&reopened, &model);
        reopened.close().unwrap();
        // The next checkpoint is a block holding the failed block's changes and the later
        // ones: after a crash, nothing below it is replayed.
        let covered = store.checkpoint().unwrap();
        let last = last_checkpoint_line(dir.path());
        assert!(
            last.contains("IMAGE_delta block, 21 changes"),
            "{op:?}: {last}"
        );
        let copy = crash(store, dir.path(), "checkpoint-enospc-copy2");
        let store = Store::open(copy.path(), opts()).unwrap();
        assert_eq!(store.stats().checkpoint_covered, covered);
        assert!(store.stats().replayed_bytes < 4096, "{op:?}");
        check(&store, &model);
        store.close().unwrap();
    }
}

/// A checkpoint that must write IMAGE_file whole (here: the open could not write its own)
/// without room for it: `NoSpace` before it copies the index when statvfs shows too little
/// room, `NoSpace` when the write itself meets a full disk (its temporary copy removed),
/// and the store goes on; a later checkpoint with room writes it, and an open after a
/// crash has every record.
#[test]
fn a_whole_image_without_room_is_no_space_and_leaves_nothing_behind() {
    let dir = TempDir::new("whole-enospc");
    let (store, _, _) = open_with_faults(dir.path());
    let mut model = Model::new();
    put_keys(&store, &mut model, 0..200, 0, 1000);
    store.close().unwrap();
    fs::remove_file(dir.path().join(IMAGE_FILE)).unwrap();
    let (store, faults, free) = {
        let faults = kvs::testing::Faults::new();
        faults.fail(Op::ImageSync, 1, Action::Errno(libc::ENOSPC));
        let free = Arc::new(AtomicU64::new(u64::MAX));
        let hooks = Hooks {
            faults: Some(faults.clone()),
            available: Some(free.clone()),
            ..Hooks::default()
        };
        (
            Store::open_with(dir.path(), opts(), hooks).unwrap(),
            faults,
            free,
        )
    };
    assert_eq!(faults.fired(), 1, "the open's image met the full disk");
    let tmp = dir.path().join(IMAGE_FILE).with_extension("tmp");
    assert!(!tmp.exists(), "{} left behind", tmp.display());
    assert!(!dir.path().join(IMAGE_FILE).exists());
    put_keys(&store, &mut model, 0..20, 1, 1000);
    // statvfs shows too little room: refused before the index is copied.
    free.store(8192, Ordering::Relaxed);
    let mark = fs::read_to_string(dir.path().join(LOG_FILE)).unwrap().len();
    let r = store.checkpoint();
    assert!(matches!(r, Err(Error::NoSpace)), "{r:?}");
    let log = fs::read_to_string(dir.path().join(LOG_FILE)).unwrap();
    let log = &log[mark..];
    assert!(
        log.contains("no room for IMAGE_file: 8192 bytes free"),
        "{log}"
    );
    assert!(!log.contains("checkpoint: the image covers"), "{log}");
    free.store(u64::MAX, Ordering::Relaxed);
    // The write meets a full disk.
    faults.fail(Op::ImageSync, 1, Action::Errno(libc::ENOSPC));
    let r = store.checkpoint();
    assert!(matches!(r, Err(Error::NoSpace)), "{r:?}");
    assert_eq!(faults.fired(), 2);
    assert!(!tmp.exists(), "{} left behind", tmp.display());
    assert!(!store.stats().failed);
    put_keys(&store, &mut model, 20..40, 2, 1000);
    let covered = store.checkpoint().unwrap();
    let last = last_checkpoint_line(dir.path());
    assert!(last.contains("IMAGE_file whole"), "{last}");
    let copy = crash(store, dir.path(), "whole-enospc-copy");
    let store = Store::open(copy.path(), opts()).unwrap();
    assert_eq!(store.stats().checkpoint_covered, covered);
    check(&store, &model);
    store.close().unwrap();
}

/// A fold needs room for a new IMAGE_file beside the old one. Without it (too little free
/// space, or ENOSPC while writing) the checkpoint still stands on its durable block and
/// the fold waits for a later checkpoint; before, the fold's ENOSPC failed the store.
#[test]
fn a_fold_without_room_waits_and_the_checkpoint_stands() {
    let dir = TempDir::new("fold-enospc");
    let (store, faults, free) = open_with_faults(dir.path());
    let mut model = Model::new();
    store.put(b"first", b"1").unwrap();
    model.insert(b"first".to_vec(), Some(b"1".to_vec()));
    store.checkpoint().unwrap();
    // Rounds of changes until a checkpoint would fold, taken with the free space short
    // (puts would be refused first: they leave room for an image).
    let mut round = 0;
    loop {
        assert!(round < 60, "no fold was due");
        rewrite_2000(&store, &mut model, round);
        round += 1;
        free.store(4096, Ordering::Relaxed);
        store.checkpoint().unwrap();
        free.store(u64::MAX, Ordering::Relaxed);
        if last_checkpoint_line(dir.path()).contains("fold put off") {
            break;
        }
    }
    let log = fs::read_to_string(dir.path().join(LOG_FILE)).unwrap();
    assert!(
        log.contains("no room for IMAGE_file: 4096 bytes free"),
        "{log}"
    );
    // Room again, but the fold's write meets a full disk.
    rewrite_2000(&store, &mut model, round);
    round += 1;
    // The block's write is the next ImageWrite, the fold's IMAGE_file the one after.
    faults.fail(Op::ImageWrite, 2, Action::Errno(libc::ENOSPC));
    let before = delta_len(dir.path());
    let covered = store.checkpoint().unwrap();
    assert!(
        last_checkpoint_line(dir.path()).contains("fold put off"),
        "{}",
        last_checkpoint_line(dir.path())
    );
    assert!(delta_len(dir.path()) > before, "the block was appended");
    assert!(!store.stats().failed);
    let copy = copy_store(dir.path(), "fold-enospc-copy");
    let reopened = Store::open(copy.path(), opts()).unwrap();
    assert_eq!(reopened.stats().checkpoint_covered, covered);
    check(&reopened, &model);
    reopened.close().unwrap();
    // The next checkpoint folds.
    rewrite_2000(&store, &mut model, round);
    store.checkpoint().unwrap();
    let last = last_checkpoint_line(dir.path());
    assert!(last.contains("IMAGE_file folded"), "{last}");
    assert!(!dir.path().join(DELTA_FILE).exists());
    store.close().unwrap();
    let store = Store::open(dir.path(), opts()).unwrap();
    assert!(store.stats().opened_from_image);
    check(&store, &model);
    store.close().unwrap();
}

/// A close whose image (an IMAGE_delta block, or IMAGE_file whole) meets a full disk
/// returns `NoSpace` (it returned `Failed`, as for a failing device); the open after it
/// has every record. The fault hits the fdatasync: the block is then on disk whole (the
/// open applies it), the whole image's temporary copy is removed and IMAGE_file stays.
#[test]
fn a_close_on_a_full_disk_is_no_space_and_loses_nothing() {
    for (changed, block) in [(3, true), (2000, false)] {
        let dir = TempDir::new("close-enospc");
        let store = Store::open(dir.path(), opts()).unwrap();
        let mut model = Model::new();
        put_keys(&store, &mut model, 0..2000, 0, 8);
        // IMAGE_file whole, with no chain after it.
        store.close().unwrap();
        let image = image_id(dir.path());
        let (store, faults, _) = open_with_faults(dir.path());
        // Few enough changes for a block (within 1/256 of IMAGE_file), or many.
        put_keys(&store, &mut model, 0..changed, 1, 8);
        faults.fail(Op::ImageSync, 1, Action::Errno(libc::ENOSPC));
        let r = store.close();
        assert!(matches!(r, Err(Error::NoSpace)), "block {block}: {r:?}");
        assert_eq!(faults.fired(), 1, "block {block}");
        let log = fs::read_to_string(dir.path().join(LOG_FILE)).unwrap();
        assert!(
            log.contains("close: writing IMAGE_file failed"),
            "block {block}: {log}"
        );
        assert_eq!(image_id(dir.path()), image, "block {block}");
        assert_eq!(delta_len(dir.path()) > 0, block, "block {block}");
        let tmp = dir.path().join(IMAGE_FILE).with_extension("tmp");
        assert!(!tmp.exists(), "block {block}: {} left", tmp.display());
        let store = Store::open(dir.path(), opts()).unwrap();
        assert!(store.stats().opened_from_image);
        check(&store, &model);
        store.close().unwrap();
    }
}

//! Seeded mutation of disk_file: open must not panic on any damage, and afterwards a get
//! returns the value that was put, nothing, or a Corruption error; never other bytes.
//! `KVS_FUZZ_ITERS=N` runs more rounds (default 150).

mod common;

use std::fs;

use common::{value_for, Rng, TempDir};
use kvs::{Error, Options, Store, DISK_FILE, IMAGE_FILE};
use xxhash_rust::xxh3::xxh3_64_with_seed;

fn opts() -> Options {
    Options::default()
        .buffer_size(1 << 20)
        .max_value_size(64 << 10)
        .expected_records(64)
        // Small segments: the log spans several, and their headers get damaged too.
        .segment_size(128 << 10)
}

#[test]
fn mutated_disk_files_never_panic_or_return_wrong_bytes() {
    let base = TempDir::new("fuzz-base");
    let store = Store::open(base.path(), opts()).unwrap();
    let mut rng = Rng(77);
    for k in 0..60u64 {
        let key = format!("k{k}").into_bytes();
        store
            .put(&key, &value_for(&key, 1, rng.below(9000) as usize))
            .unwrap();
    }
    for k in (0..60u64).step_by(7) {
        store.delete(format!("k{k}").as_bytes()).unwrap();
    }
    // A fresh store's segments sit in slot order right after the superblock: the log's
    // bytes are the file's first 4096 + log_end (the rest of the last slot is unwritten).
    let written = 4096 + store.stats().log_end.next_multiple_of(4096);
    store.close().unwrap();
    let disk = fs::read(base.path().join(DISK_FILE)).unwrap();
    assert!(disk.len() as u64 >= written);
    let image = fs::read(base.path().join(IMAGE_FILE)).unwrap();
    let seed = u64::from_le_bytes(disk[16..24].try_into().unwrap());
    let iters: u64 = std::env::var("KVS_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(150);
    let (mut opened, mut served) = (0, 0);
    for round in 0..iters {
        let mut b = disk.clone();
        for _ in 0..1 + rng.below(3) {
            let pos = rng.below(written.min(b.len() as u64)) as usize;
            match rng.below(4) {
                0 => b[pos] ^= 1 << rng.below(8),
                1 => b[pos] = rng.next() as u8,
                2 => b.truncate(pos.max(1)),
                _ => {
                    // Damage a field and repair the header checksum of the record there,
                    // if a record header starts at an 8-byte boundary near pos.
                    let at = pos & !7;
                    if at + 32 <= b.len() && &b[at..at + 4] == b"KVR1" {
                        let field = 8 + 4 * rng.below(3) as usize;
                        let v = rng.below(70_000) as u32;
                        b[at + field..at + field + 4].copy_from_slice(&v.to_le_bytes());
                        // Version 3 keys header checksums with the store's hash seed.
                        let sum = xxh3_64_with_seed(&b[at..at + 28], seed) as u32;
                        b[at + 28..at + 32].copy_from_slice(&sum.to_le_bytes());
                    }
                }
            }
        }
        let dir = TempDir::new("fuzz");
        fs::create_dir_all(dir.path()).unwrap();
        fs::write(dir.path().join(DISK_FILE), &b).unwrap();
        if rng.below(2) == 0 {
            fs::write(dir.path().join(IMAGE_FILE), &image).unwrap();
        }
        let Ok(store) = Store::open(dir.path(), opts()) else {
            continue; // a damaged superblock is refused: fine
        };
        opened += 1;
        for k in 0..60u64 {
            let key = format!("k{k}").into_bytes();
            match store.get(&key) {
                Ok(Some(v)) => {
                    served += 1;
                    let want = value_for(&key, 1, v.len());
                    assert_eq!(v, want, "round {round}: k{k} returned bytes never put");
                    // A deleted key may come back here: a cut that removes its tombstone
                    // is damage, not a crash, and the put before it is intact.
                }
                Ok(None) | Err(Error::Corruption { .. }) => {}
                Err(e) => panic!("round {round}: unexpected error {e}"),
            }
        }
        let _ = store.verify().unwrap();
    }
    assert!(
        opened > iters / 2 && served > 0,
        "opened {opened}, served {served}"
    );
}

//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;

use kvs::testing::{Faults, Hooks, MemDisk};

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("kvs-test-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        TempDir(p)
    }
    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // KVS_KEEP_TEST_DIRS=1 keeps a failed test's store for inspection.
        if std::thread::panicking() && std::env::var_os("KVS_KEEP_TEST_DIRS").is_some() {
            eprintln!("kept {}", self.0.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A small deterministic PRNG (xorshift64*), so failures replay from their seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The bytes of version `version` of `key`'s value, `len` long: every version differs.
/// Values of 8 bytes or more start with the version, so a reader can check any value it
/// sees with [`is_version_of`].
pub fn value_for(key: &[u8], version: u64, len: usize) -> Vec<u8> {
    let mut seed = version.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ len as u64;
    for &b in key {
        seed = seed.rotate_left(8) ^ b as u64;
    }
    let mut rng = Rng(seed | 1);
    let mut v = Vec::with_capacity(len + 8);
    v.extend_from_slice(&version.to_le_bytes());
    while v.len() < len {
        v.extend_from_slice(&rng.next().to_le_bytes());
    }
    v.truncate(len);
    v
}

/// A value size: mostly small, sometimes large, rarely the maximum.
pub fn value_size(rng: &mut Rng, max: usize) -> usize {
    match rng.below(100) {
        0..=4 => 0,
        5..=59 => rng.below(4096) as usize,
        60..=89 => rng.below((200 << 10).min(max as u64 + 1)) as usize,
        90..=97 => rng.below(max as u64 + 1) as usize,
        _ => max,
    }
}

/// Whether `v` is exactly some version of `key`'s value (as made by [`value_for`]).
pub fn is_version_of(key: &[u8], v: &[u8]) -> bool {
    if v.len() < 8 {
        return true; // too short to carry a version; nothing to check
    }
    let mut b = [0u8; 8];
    b.copy_from_slice(&v[..8]);
    value_for(key, u64::from_le_bytes(b), v.len()) == v
}

/// Rewrites a version 3 disk_file's bytes as version 2 wrote them (for the tests of
/// format 2 stores, and the golden v2 store): superblock version 2, segment
/// headers without a first sequence number, record header checksums unkeyed.
pub fn downgrade_to_v2(b: &mut [u8], seg: usize) {
    use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};
    let seed = u64::from_le_bytes(b[16..24].try_into().unwrap());
    b[8..12].copy_from_slice(&2u32.to_le_bytes());
    let s = xxh3_64(&b[0..40]);
    b[40..48].copy_from_slice(&s.to_le_bytes());
    let mut slot = 4096;
    while slot + seg <= b.len() {
        if &b[slot..slot + 8] == b"KVSSEG\0\0" {
            b[slot + 24..slot + 40].fill(0);
            let s = xxh3_64(&b[slot..slot + 24]);
            b[slot + 24..slot + 32].copy_from_slice(&s.to_le_bytes());
            let mut pos = slot + 4096;
            while pos + 32 <= slot + seg && &b[pos..pos + 4] == b"KVR1" {
                let h = &b[pos..pos + 32];
                assert_eq!(
                    xxh3_64_with_seed(&h[0..28], seed) as u32,
                    u32::from_le_bytes(h[28..32].try_into().unwrap())
                );
                let k = u32::from_le_bytes(h[8..12].try_into().unwrap()) as usize;
                let v = u32::from_le_bytes(h[12..16].try_into().unwrap()) as usize;
                let s = xxh3_64(&b[pos..pos + 28]) as u32;
                b[pos + 28..pos + 32].copy_from_slice(&s.to_le_bytes());
                pos += (32 + k + v).next_multiple_of(8);
            }
        }
        slot += seg;
    }
}

/// Options for tests of segments: a 1 MiB ring, 256 KiB segments, values up to 48 KiB,
/// quick flushes, no background reclaimer.
pub fn small_segments() -> kvs::Options {
    kvs::Options::default()
        .buffer_size(1 << 20)
        .max_value_size(48 << 10)
        .segment_size(256 << 10)
        .flush_interval(std::time::Duration::from_millis(2))
        .expected_records(256)
        .background_reclaim(false)
}

/// Runs the ignored test `name` of the calling test binary in a child process, with the
/// environment variable `var` set to `dir`, and returns what it did (its status and
/// output). The child test returns at once when `var` is not set (a plain `--ignored` run).
pub fn run_child(name: &str, var: &str, dir: &std::path::Path) -> std::process::Output {
    std::process::Command::new(std::env::current_exe().expect("test binary path"))
        .args(["--ignored", "--exact", name, "--nocapture"])
        .env(var, dir)
        .output()
        .expect("the child test runs")
}

/// Hooks that put a store on the device in memory `dev`, with the fault plan `faults`.
pub fn hooks(dev: &Arc<MemDisk>, faults: &Arc<Faults>) -> Hooks {
    Hooks {
        memory: Some(dev.clone()),
        faults: Some(faults.clone()),
        ..Hooks::default()
    }
}

/// A device in memory and faults to inject, and the hooks that give a store both.
pub fn with_faults() -> (Arc<MemDisk>, Arc<Faults>, Hooks) {
    let dev = MemDisk::new();
    let faults = Faults::new();
    let h = hooks(&dev, &faults);
    (dev, faults, h)
}

/// A copy, in a new directory, of the files of the store in `dir` as they are now (the
/// store may still be open: what a crash would leave once written bytes reach the disk).
pub fn copy_store(dir: &std::path::Path, tag: &str) -> TempDir {
    let copy = TempDir::new(tag);
    std::fs::create_dir_all(copy.path()).unwrap();
    for f in [kvs::DISK_FILE, kvs::IMAGE_FILE, kvs::DELTA_FILE] {
        if dir.join(f).exists() {
            std::fs::copy(dir.join(f), copy.path().join(f)).unwrap();
        }
    }
    copy
}

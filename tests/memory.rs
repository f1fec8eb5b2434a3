//! Memory an open store costs. Its own test binary, so no other test's allocations count.

mod common;

use common::TempDir;
use kvs::{Options, Store};

/// A figure of /proc/self/status in bytes (`VmRSS`, `VmHWM`).
fn status_bytes(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = s
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

fn rss() -> u64 {
    status_bytes("VmRSS")
}

#[test]
fn an_idle_ring_costs_no_memory() {
    // The ring was once allocated aligned and zeroed, touching all of it at open: 512 MiB
    // of RSS and a memset for a store that wrote nothing.
    let dir = TempDir::new("mem");
    let before = rss();
    let store = Store::open(dir.path(), Options::default().buffer_size(512 << 20)).unwrap();
    let grown = rss().saturating_sub(before);
    assert!(grown < 64 << 20, "opening grew RSS by {grown} bytes");
    // Writing 8 MiB touches about that much of the ring, not all of it.
    for i in 0..8u64 {
        store.put(&i.to_le_bytes(), &vec![7u8; 1 << 20]).unwrap();
    }
    let grown = rss().saturating_sub(before);
    assert!(grown < 128 << 20, "8 MiB of puts grew RSS by {grown} bytes");
    // The toucher thread faults the ring in ahead of the tail (32 MiB), so that puts do
    // not take the faults holding the ring's lock; and no further.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut ahead = 0;
    while std::time::Instant::now() < deadline {
        ahead = rss().saturating_sub(before);
        if ahead >= 36 << 20 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(
        ahead >= 36 << 20,
        "the ring was faulted in only {ahead} bytes ahead"
    );
    std::thread::sleep(std::time::Duration::from_millis(200));
    let grown = rss().saturating_sub(before);
    assert!(grown < 128 << 20, "an idle ring grew RSS to {grown} bytes");
    store.close().unwrap();
}

/// The process's peak RSS since the last `reset_peak`.
fn peak() -> u64 {
    status_bytes("VmHWM")
}

/// Makes the peak RSS the current RSS (Linux: `clear_refs` 5); false if not possible.
fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Found by review: a listing decoded a segment's whole key summary into memory (an entry
/// and a key allocation per record), whatever its prefix: for 256 MiB segments of small
/// records, 434 MB more to list a prefix that matched nothing. Entries are now decoded a
/// buffer at a time and only the matching puts are held.
#[test]
fn listing_a_prefix_holds_only_what_matches() {
    let dir = TempDir::new("mem-listing");
    let o = Options::default()
        .buffer_size(16 << 20)
        .segment_size(256 << 20)
        .background_reclaim(false);
    let store = Store::open(dir.path(), o.clone()).unwrap();
    const N: u32 = 400_000;
    for i in 0..N {
        store.put(&i.to_be_bytes(), b"").unwrap();
    }
    store.sync().unwrap();
    // From the summary being written, then (after a reopen) from the one close finished.
    let mut store = Some(store);
    for from in ["the summary being written", "a finished summary"] {
        let s = match store.take() {
            Some(s) => s,
            None => Store::open(dir.path(), o.clone()).unwrap(),
        };
        assert!(
            reset_peak(),
            "/proc/self/clear_refs: the peak RSS cannot be reset"
        );
        let before = peak();
        assert_eq!(s.keys(b"\xff\xff\xff\xff").unwrap().count(), 0);
        let grown = peak().saturating_sub(before);
        // The 400 000 entries, held, took about 40 MB.
        assert!(
            grown < 12 << 20,
            "{from}: listing nothing grew the peak RSS by {grown} bytes"
        );
        let some: Vec<Vec<u8>> = s
            .keys(&[0, 0, 1])
            .unwrap()
            .map(|i| i.unwrap().key)
            .collect();
        assert_eq!(some.len(), 256, "{from}: the keys 0x000001xx");
        assert!(some.iter().all(|k| k.starts_with(&[0, 0, 1])));
        s.close().unwrap();
    }
}

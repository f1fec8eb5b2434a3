//! Memory an open store costs. Its own test binary, so no other test's allocations count.

mod common;

use common::TempDir;
use kvs::{Options, Store};

fn rss() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = s
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
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

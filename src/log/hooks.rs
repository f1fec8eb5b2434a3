//! Test hooks: what a test can put under a store that a user never does (an in-memory
//! device, injected faults, a fake free-space figure). Kept out of `Options` so that the
//! public knobs are only the ones a user should turn. Passed to `Store::open_with`.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use crate::log::fault::Faults;
use crate::log::memdisk::MemDisk;

/// What a test puts under a store.
#[derive(Clone, Default)]
pub struct Hooks {
    /// disk_file's bytes live in this device (the directory still holds IMAGE_file, LOG,
    /// LOCK and a placeholder disk_file).
    pub memory: Option<Arc<MemDisk>>,
    /// Faults to inject into disk_file and IMAGE_file calls.
    pub faults: Option<Arc<Faults>>,
    /// The file system's free bytes as kvs sees them (instead of statvfs).
    pub available: Option<Arc<AtomicU64>>,
}

impl Hooks {
    /// disk_file on `dev`.
    pub fn memory(dev: Arc<MemDisk>) -> Hooks {
        Hooks {
            memory: Some(dev),
            ..Hooks::default()
        }
    }
}

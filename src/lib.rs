//! kvs: a single-node key-value storage engine for large values (about 100 KB, up to
//! 5 MiB) and many records (10 million, about 1 TB per node), with a C ABI.
//!
//! # Modules
//!
//! Each module uses only modules listed after it (`tests/layers.rs` checks this against
//! the `use crate::` lines of every file), so data flows one way: C ABI, store, engine,
//! then the index, the log and the files.
//!
//! | module | what it owns |
//! | --- | --- |
//! | `capi` | the C ABI (`include/kvs.h`): pointer checks, status codes, the panic boundary |
//! | `flags` | (feature `cli`) command-line flags to `Options`, and size parsing, for the tool, the harness and the server |
//! | `store` | the public `Store`: open, put, get, delete, sync, stats, close; starts and stops the workers |
//! | `batch` | `Batch`, the operations of an atomic write |
//! | `value` | `Value`, a value read into memory of its own (`Store::get_value`) |
//! | `iter` | listing keys (`Store::keys`, `Store::scan`) from the key summaries |
//! | `verify` | walking every live record: `verify`, `for_each_record` |
//! | `reclaim` | the reclaimer: its rounds, progress and the put throttle |
//! | `relocate` | the reclaimer's relocation segments (format 6): grant, check, write, sync, install |
//! | `checkpoint` | checkpoints and IMAGE_file writes |
//! | `worker` | the background thread type: spawn, wake, stop, join, latch on panic |
//! | `engine` | the shared state (index, ring, segments, disk_file) and the one `append` that changes it; the lock order |
//! | `recovery` | open: lock, files, the index from IMAGE_file and the log, resynchronisation |
//! | `image` | IMAGE_file, the persisted index |
//! | `index` | the keyless hash table of treaps and its node pool |
//! | `log` | the ring and its lookout, the segment map, the segment scan, disk_file, the device seam |
//! | `logfile` | the LOG file of events |
//! | `options` | `Options`, their defaults and checks |
//! | `format` | every on-disk layout, the limits, and the one check of a record read for an index entry |
//! | `error` | `Error` |
//!
//! # Example
//!
//! ```
//! let dir = std::env::temp_dir().join(format!("kvs-doc-{}", std::process::id()));
//! let store = kvs::Store::open(&dir, kvs::Options::default().buffer_size(16 << 20))?;
//! store.put(b"greeting", b"hello")?;
//! assert_eq!(store.get(b"greeting")?.as_deref(), Some(&b"hello"[..]));
//! assert!(store.delete(b"greeting")?);
//! store.close()?;
//! # std::fs::remove_dir_all(&dir).unwrap();
//! # Ok::<(), kvs::Error>(())
//! ```

#![deny(clippy::unwrap_used)]
#![warn(missing_docs)]

pub mod capi;
// Engine options as command-line flags, shared by the kvs tool and kvsbench (feature cli).
#[cfg(feature = "cli")]
pub mod flags;
mod store;
mod batch;
mod value;
mod iter;
mod verify;
mod reclaim;
mod relocate;
mod checkpoint;
mod worker;
mod engine;
mod recovery;
mod delta;
mod image;
mod index;
mod log;
mod logfile;
mod options;
mod format;
mod error;

pub use batch::Batch;
pub use error::{Error, Result};
pub use format::{DEFAULT_MAX_VALUE_SIZE, DISK_VERSION, MAX_KEY_LEN, MAX_VALUE_LIMIT};
pub use format::{DELTA_FILE, DISK_FILE, IMAGE_FILE, LOCK_FILE, LOG_FILE};
pub use image::IMAGE_VERSION;
pub use iter::{Item, Keys};
pub use options::{Durability, Options, Progress};
pub use reclaim::CompactReport;
pub use store::{Stats, Store};
pub use value::Value;
pub use verify::VerifyReport;

/// Tests only: what a test can put under a store (`Store::open_with`): an in-memory
/// device, injected faults, a fake free-space figure. Not for production use.
#[doc(hidden)]
pub mod testing {
    pub use crate::log::fault::{Action, Faults, Op};
    pub use crate::log::hooks::Hooks;
    pub use crate::log::memdisk::MemDisk;
}

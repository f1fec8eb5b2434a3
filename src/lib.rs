//! kvs: a single-node key-value storage engine for large values (about 100 KB, up to
//! 5 MiB) and many records (10 million, about 1 TB per node), with a C ABI.
//!
//! # Layering
//!
//! Data flows one way, each module using only those after it:
//!
//! ```text
//! capi -> store (+ reclaim) -> recovery -> { index, buffer, image } -> segments -> scan
//!      -> disk -> device -> record -> { options, error }
//! ```
//!
//! - `capi`: the C ABI (`include/kvs.h`), status codes, the panic boundary.
//! - `store`: open, put, get, delete, sync, close (the seed's interface module);
//!   `recovery`: the index at open (image, replay, resynchronisation past damage).
//! - `index`: the keyless hash table of treaps and the node pool (index module).
//! - `buffer`: the ring write buffer and the lookout thread (buffer module).
//! - `image`: IMAGE_file, the persisted index; `disk`: disk_file (sync module) over the
//!   `device` seam, whose `Checked` wrapper latches the store as failed at the first
//!   failed write or sync.
//! - `record`: the disk_file record format; `logfile`: the LOG file (log module).
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

mod buffer;
pub mod capi;
mod device;
mod disk;
mod error;
mod fault;
// Engine options as command-line flags, shared by the kvs tool and kvsbench (feature cli).
#[cfg(feature = "cli")]
pub mod flags;
mod hooks;
mod image;
mod index;
mod logfile;
mod memdisk;
mod options;
mod reclaim;
mod record;
mod recovery;
mod scan;
mod segments;
mod store;

pub use disk::DISK_VERSION;
pub use error::{Error, Result};
pub use image::IMAGE_VERSION;
pub use options::{Durability, Options, Progress, DEFAULT_MAX_VALUE_SIZE, MAX_KEY_LEN};
pub use reclaim::CompactReport;
pub use store::{Stats, Store, VerifyReport, DISK_FILE, IMAGE_FILE, LOCK_FILE, LOG_FILE};

/// Tests only: what a test can put under a store (`Store::open_with`): an in-memory
/// device, injected faults, a fake free-space figure. Not for production use.
#[doc(hidden)]
pub mod testing {
    pub use crate::fault::{Action, Faults, Op};
    pub use crate::hooks::Hooks;
    pub use crate::memdisk::MemDisk;
}

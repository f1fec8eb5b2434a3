//! kvs: a single-node key-value storage engine for large values (about 100 KB, up to
//! 5 MiB) and many records (10 million, about 1 TB per node), with a C ABI.
//!
//! # Layering
//!
//! Data flows one way, each module using only those after it:
//!
//! ```text
//! capi -> store -> { index, buffer } -> { image, disk } -> record -> { options, error }
//!                                        logfile (used by store)
//! ```
//!
//! - `capi`: the C ABI (`include/kvs.h`), status codes, the panic boundary.
//! - `store`: open/recover, put, get, delete, sync, close (the seed's interface module).
//! - `index`: the keyless hash table of treaps and the node pool (index module).
//! - `buffer`: the ring write buffer and the lookout thread (buffer module).
//! - `image`: IMAGE_file, the persisted index; `disk`: disk_file (sync module).
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
mod disk;
mod error;
mod image;
mod index;
mod logfile;
#[doc(hidden)]
pub mod memdisk;
mod options;
mod reclaim;
mod record;
mod segments;
mod store;

pub use disk::DISK_VERSION;
pub use error::{Error, Result};
pub use image::IMAGE_VERSION;
pub use options::{Durability, Options, Progress, DEFAULT_MAX_VALUE_SIZE, MAX_KEY_LEN};
pub use reclaim::CompactReport;
pub use store::{Stats, Store, VerifyReport, DISK_FILE, IMAGE_FILE, LOCK_FILE, LOG_FILE};

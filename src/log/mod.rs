//! The log: how records reach disk_file and come back.
//!
//! Top to bottom (each file uses only those after it):
//! - `ring`: the ring write buffer and its lookout thread, which writes the ring to
//!   disk_file in large sequential writes (the seed's buffer module);
//! - `segments`: the map of logical log segments onto slots of disk_file, with live byte
//!   counts per segment;
//! - `summary`: the key summary of each segment (a side file listing its keys);
//! - `scan`: reading a segment record by record, resynchronising past damage;
//! - `disk`: disk_file itself (superblock, reads, writes, syncs, holes);
//! - `hooks`, `fault`, `memdisk`: what a test can put under a store (an in-memory device,
//!   injected faults, a fake free-space figure);
//! - `device`: the device seam (`trait Device`, the real file, and `Checked`, which
//!   latches the store as failed at the first failed write or sync);
//! - `pages`: memory for O_DIRECT transfers (large read buffers, the ring), on huge
//!   pages where they pay.

pub(crate) mod ring;
pub(crate) mod segments;
pub(crate) mod summary;
pub(crate) mod scan;
pub(crate) mod disk;
pub(crate) mod hooks;
pub(crate) mod fault;
pub(crate) mod memdisk;
pub(crate) mod device;
pub(crate) mod pages;

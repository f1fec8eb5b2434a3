//! The knobs of a store, with their defaults and limits.

use std::time::Duration;

use crate::error::{Error, Result};
use crate::format::{
    padded_len, BLOCK, DEFAULT_MAX_VALUE_SIZE, HEADER_LEN, MAX_KEY_LEN, MAX_SEGMENT_SIZE,
    MAX_VALUE_LIMIT, MIN_SEGMENT_SIZE, SEG_HEADER,
};

/// The smallest ring accepted.
pub const MIN_BUFFER_SIZE: usize = 64 << 10;
/// The largest ring accepted: 1 TiB (more than any machine here holds; the bound keeps the
/// mapping's arithmetic from overflowing).
pub const MAX_BUFFER_SIZE: usize = 1 << 40;
/// The default log segment size.
pub const DEFAULT_SEGMENT_SIZE: u64 = 256 << 20;

/// When a put or delete is durable (survives a crash of the process or of the machine).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Durability {
    /// The lookout flushes to disk_file without fdatasync; `sync` and checkpoints fdatasync.
    /// A process crash loses nothing flushed; a power cut may lose what was written since
    /// the last sync or checkpoint, never anything older, and never corrupts anything.
    None,
    /// Every lookout flush ends with fdatasync: at most the last flush interval (or the
    /// ring's unflushed bytes) is lost in a power cut. `sync` makes everything before it
    /// durable.
    #[default]
    Batch,
    /// put and delete return only once durable. Concurrent writers share one flush and one
    /// fdatasync (group commit). With O_DIRECT, each such flush pads the log to a 4 KiB
    /// block, so a lone writer of small values pays up to 4 KiB of disk per put.
    Always,
}

/// How a store is opened. Build it with the setters; every one has a default.
///
/// ```
/// let opts = kvs::Options::default().buffer_size(64 << 20).expected_records(1_000_000);
/// assert_eq!(opts.get_buffer_size(), 64 << 20);
/// ```
#[derive(Clone, Debug)]
pub struct Options {
    pub(crate) buffer_size: usize,
    pub(crate) flush_horizon: Option<usize>,
    pub(crate) flush_interval: Duration,
    pub(crate) expected_records: u64,
    pub(crate) max_value_size: usize,
    pub(crate) direct_io: bool,
    pub(crate) direct_reads: bool,
    pub(crate) durability: Durability,
    pub(crate) checkpoint_bytes: u64,
    pub(crate) checkpoint_interval: Duration,
    pub(crate) file_mode: u32,
    pub(crate) recovery_progress: Option<Progress>,
    pub(crate) segment_size: u64,
    pub(crate) background_reclaim: bool,
    pub(crate) reclaim_threshold: f64,
    pub(crate) reclaim_urgent: f64,
    pub(crate) reclaim_rate: u64,
}

/// A progress callback: `(bytes done, bytes in all)`.
#[derive(Clone)]
pub struct Progress(pub std::sync::Arc<dyn Fn(u64, u64) + Send + Sync>);

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Progress(..)")
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            buffer_size: 256 << 20,
            flush_horizon: None,
            flush_interval: Duration::from_millis(20),
            expected_records: 1 << 20,
            max_value_size: DEFAULT_MAX_VALUE_SIZE,
            direct_io: true,
            direct_reads: true,
            durability: Durability::Batch,
            checkpoint_bytes: 256 << 20,
            checkpoint_interval: Duration::from_secs(60),
            file_mode: 0o600,
            recovery_progress: None,
            segment_size: DEFAULT_SEGMENT_SIZE,
            background_reclaim: true,
            reclaim_threshold: 0.2,
            reclaim_urgent: 0.3,
            reclaim_rate: 256 << 20,
        }
    }
}

impl Options {
    /// Bytes of the ring write buffer (the seed's buf_pool). A multiple of 4096 from 64 KiB
    /// to 1 TiB, and large enough for a 4 KiB segment header plus one record of
    /// `max_value_size`. Default 256 MiB.
    pub fn buffer_size(mut self, bytes: usize) -> Self {
        self.buffer_size = bytes;
        self
    }
    /// The lookout thread flushes as soon as this many bytes wait (BUFFER_HORIZON_SIZE).
    /// Default: 8 MiB or a quarter of the ring, whichever is smaller.
    pub fn flush_horizon(mut self, bytes: usize) -> Self {
        self.flush_horizon = Some(bytes);
        self
    }
    /// The lookout thread flushes whatever waits at least this often (SLEEP_TIME).
    /// Default 20 ms.
    pub fn flush_interval(mut self, interval: Duration) -> Self {
        self.flush_interval = interval;
        self
    }
    /// How many records the store is expected to hold; sizes the hash table when the
    /// store is created, and again at a full rebuild of the index (no usable IMAGE_file,
    /// or `Store::rebuild_index`); an open from IMAGE_file keeps the image's table (beyond
    /// it the trees in the slots grow). Default 1 Mi.
    pub fn expected_records(mut self, n: u64) -> Self {
        self.expected_records = n;
        self
    }
    /// The largest value accepted: at most 256 MiB (`MAX_VALUE_LIMIT`). Fixed when the
    /// store is created (recorded in its superblock; later opens use the stored limit and
    /// grow the ring to hold it). The ring (`buffer_size`) and each segment
    /// (`segment_size`) must hold a 4 KiB header plus one record of it (the value, the
    /// longest key, 32 bytes of header, rounded up to 8); larger values need both raised:
    /// for 256 MiB values, e.g. `buffer_size` 512 MiB and `segment_size` 1 GiB (a segment of
    /// only one record's size wastes up to half of itself at segment ends). Default 5 MiB,
    /// which is also the limit of stores of disk_file formats 2 to 4.
    pub fn max_value_size(mut self, bytes: usize) -> Self {
        self.max_value_size = bytes;
        self
    }

    /// Whether the lookout writes disk_file with O_DIRECT (bypassing the page cache, in
    /// whole 4 KiB blocks). Where the file system refuses O_DIRECT, kvs falls back to
    /// buffered writes and says so in LOG. Gets follow `direct_reads`.
    /// Default true.
    pub fn direct_io(mut self, on: bool) -> Self {
        self.direct_io = on;
        self
    }

    /// Whether gets read disk_file with O_DIRECT: one aligned read per get into a per-thread
    /// buffer and a copy, no page cache (no read-ahead, no cache pollution, but also no
    /// cache hits). Falls back like `direct_io`. Default true: kvs is for data sets far
    /// larger than memory, where a cold read through the page cache is slower (measured
    /// by kvsbench, see README); turn it off when a hot set fits in memory.
    pub fn direct_reads(mut self, on: bool) -> Self {
        self.direct_reads = on;
        self
    }

    /// When puts and deletes are durable; see [`Durability`]. Default `Batch`.
    pub fn durability(mut self, d: Durability) -> Self {
        self.durability = d;
        self
    }

    /// A background checkpoint rewrites IMAGE_file once this many bytes were appended to
    /// disk_file since the last one, so that recovery replays at most about this much.
    /// 0: no byte trigger. Default 256 MiB: an open after a crash of a store of 100 KiB
    /// values replayed 256 MiB in about 0.2 s on the test machine (1 GiB: 0.8 s). A
    /// checkpoint writes only the index entries changed since the last one.
    pub fn checkpoint_bytes(mut self, bytes: u64) -> Self {
        self.checkpoint_bytes = bytes;
        self
    }

    /// A background checkpoint also runs this often when anything was appended.
    /// Zero: no time trigger. Default 60 s.
    pub fn checkpoint_interval(mut self, interval: Duration) -> Self {
        self.checkpoint_interval = interval;
        self
    }

    /// Permission bits of the files kvs creates (disk_file, IMAGE_file, IMAGE_delta, LOG,
    /// LOCK, the key summaries, which hold keys), before the process umask. Default 0o600:
    /// only the owner can read the data. Files that exist keep their mode (a reopen with
    /// another mode changes only the files it creates: the next IMAGE_file and new
    /// summaries); directories are made with the umask's default.
    pub fn file_mode(mut self, mode: u32) -> Self {
        self.file_mode = mode;
        self
    }

    /// Called now and then while open replays disk_file (after IMAGE_file, or all of it when
    /// rebuilding), with the bytes replayed so far and the bytes to replay. For progress bars.
    pub fn recovery_progress(mut self, f: impl Fn(u64, u64) + Send + Sync + 'static) -> Self {
        self.recovery_progress = Some(Progress(std::sync::Arc::new(f)));
        self
    }

    /// Bytes of each log segment, the unit in which space is reclaimed: a multiple of 4096,
    /// at least 64 KiB, at most 4 GiB - 4 KiB, and large enough for a segment header (4
    /// KiB) plus one record of `max_value_size`. Fixed when the store is created (later opens use the stored size).
    /// Default 256 MiB.
    pub fn segment_size(mut self, bytes: u64) -> Self {
        self.segment_size = bytes;
        self
    }

    /// Whether a background thread reclaims space on its own (see `reclaim_threshold`).
    /// `Store::compact` works either way. Default true.
    pub fn background_reclaim(mut self, on: bool) -> Self {
        self.background_reclaim = on;
        self
    }

    /// The background reclaimer starts when dead bytes (overwritten and deleted records,
    /// tombstones, padding) make up this share of the closed segments, and works until they
    /// fall to three quarters of it, emptiest segments first. Between 0.01 and 0.9.
    /// Default 0.2 (disk_file at most about 1.25x the live bytes).
    pub fn reclaim_threshold(mut self, ratio: f64) -> Self {
        self.reclaim_threshold = ratio;
        self
    }

    /// Above this dead share the reclaimer ignores `reclaim_rate` and moves as fast as the
    /// disk allows, and puts are paced to the rate at which it gives space back (they slow
    /// down rather than stop), so that the file stays bounded under any write load. At
    /// least `reclaim_threshold`, at most 0.95. Default 0.3 (1.43x).
    pub fn reclaim_urgent(mut self, ratio: f64) -> Self {
        self.reclaim_urgent = ratio;
        self
    }

    /// The most bytes per second the background reclaimer rewrites while the dead share
    /// is below `reclaim_urgent` and puts are not paced (a pass that began pacing them
    /// runs at full speed to its end); 0: no limit. Default 256 MiB/s.
    pub fn reclaim_rate(mut self, bytes_per_sec: u64) -> Self {
        self.reclaim_rate = bytes_per_sec;
        self
    }

    /// The segment size set (used when the store is created).
    pub fn get_segment_size(&self) -> u64 {
        self.segment_size
    }

    /// Whether background reclaiming is on.
    pub fn get_background_reclaim(&self) -> bool {
        self.background_reclaim
    }

    /// The reclaim threshold set.
    pub fn get_reclaim_threshold(&self) -> f64 {
        self.reclaim_threshold
    }

    /// The urgent dead share set.
    pub fn get_reclaim_urgent(&self) -> f64 {
        self.reclaim_urgent
    }

    /// The reclaim rate set.
    pub fn get_reclaim_rate(&self) -> u64 {
        self.reclaim_rate
    }

    /// Whether a recovery progress callback is set.
    pub fn get_recovery_progress(&self) -> Option<&Progress> {
        self.recovery_progress.as_ref()
    }

    /// The file mode set.
    pub fn get_file_mode(&self) -> u32 {
        self.file_mode
    }

    /// The checkpoint byte trigger set.
    pub fn get_checkpoint_bytes(&self) -> u64 {
        self.checkpoint_bytes
    }

    /// The checkpoint interval set.
    pub fn get_checkpoint_interval(&self) -> Duration {
        self.checkpoint_interval
    }

    /// The durability mode set.
    pub fn get_durability(&self) -> Durability {
        self.durability
    }

    /// Whether O_DIRECT reads are asked for.
    pub fn get_direct_reads(&self) -> bool {
        self.direct_reads
    }

    /// Whether O_DIRECT writes are asked for.
    pub fn get_direct_io(&self) -> bool {
        self.direct_io
    }

    /// The ring size set.
    pub fn get_buffer_size(&self) -> usize {
        self.buffer_size
    }
    /// The flush horizon in force (the one set, or the default for this ring size).
    pub fn get_flush_horizon(&self) -> usize {
        self.flush_horizon
            .unwrap_or((8 << 20).min(self.buffer_size / 4))
    }
    /// The flush interval set.
    pub fn get_flush_interval(&self) -> Duration {
        self.flush_interval
    }
    /// The expected record count set.
    pub fn get_expected_records(&self) -> u64 {
        self.expected_records
    }
    /// The value size limit set.
    pub fn get_max_value_size(&self) -> usize {
        self.max_value_size
    }

    /// Bytes of the largest record these options accept (longest key, largest value).
    fn largest_record(&self) -> usize {
        padded_len(HEADER_LEN + MAX_KEY_LEN + self.max_value_size)
    }

    /// Checks that segments of `size` bytes (the option, or a store's stored size) hold the
    /// largest record this configuration accepts.
    pub(crate) fn check_segment_size(&self, size: u64) -> Result<()> {
        let largest = self.largest_record() as u64;
        if !(MIN_SEGMENT_SIZE..=MAX_SEGMENT_SIZE).contains(&size) || size % BLOCK as u64 != 0 {
            return Err(Error::InvalidArgument(format!(
                "segment_size {size} must be a multiple of {BLOCK} from {MIN_SEGMENT_SIZE} \
                 to {MAX_SEGMENT_SIZE}"
            )));
        }
        let least = (SEG_HEADER + largest + HEADER_LEN as u64).next_multiple_of(BLOCK as u64);
        if size < least {
            return Err(Error::InvalidArgument(format!(
                "segment_size {size} cannot hold its 4 KiB header and one record of \
                 max_value_size {} ({largest} bytes); set segment_size to at least {least} \
                 (several times that wastes less at segment ends) or lower max_value_size",
                self.max_value_size
            )));
        }
        Ok(())
    }

    /// The smallest ring that holds a segment header and the largest record.
    fn min_buffer_size(&self) -> usize {
        ring_for(self.largest_record())
    }

    /// These options for an existing store whose superblock fixed its `max_value_size`
    /// (`limit`): the store's limit replaces the option's, and the ring grows to hold one
    /// record of it, and of the largest value already on disk (`on_disk`), if it must.
    /// Also returns a line for the LOG file for each change.
    ///
    /// `on_disk` is above `limit` for formats before 5, whose limit is the option's (up
    /// to their 5 MiB) while their records may hold 5 MiB: their reclaimer copies records
    /// through the ring, and waited for ever for room for a record larger than it (found
    /// by review).
    pub(crate) fn for_store_limit(mut self, limit: usize, on_disk: usize) -> (Self, Vec<String>) {
        let mut changes = Vec::new();
        if limit != self.max_value_size {
            changes.push(format!(
                "max value size is {limit} (fixed at creation; the option's {} applies to new \
                 stores)",
                self.max_value_size
            ));
            self.max_value_size = limit;
        }
        let least = ring_for(padded_len(
            HEADER_LEN + MAX_KEY_LEN + self.max_value_size.max(on_disk),
        ));
        if self.buffer_size < least {
            let grown = least.next_multiple_of(1 << 20);
            changes.push(format!(
                "buffer size raised from {} to {grown} to hold one record of this store's \
                 largest value",
                self.buffer_size
            ));
            self.buffer_size = grown;
        }
        (self, changes)
    }

    /// Checks every knob for a new store (the creation-time ones against each other too);
    /// called by `Store::open` before anything is touched.
    pub(crate) fn validate(&self) -> Result<()> {
        self.validate_knobs()?;
        if self.buffer_size < self.min_buffer_size() {
            return Err(Error::InvalidArgument(format!(
                "buffer_size {} cannot hold a segment header and one record of max_value_size \
                 {} ({} bytes with header and longest key); set buffer_size to at least {}",
                self.buffer_size,
                self.max_value_size,
                self.largest_record(),
                self.min_buffer_size()
            )));
        }
        self.check_segment_size(self.segment_size)
    }

    /// Checks each knob alone, and those of this open against each other, but not what a
    /// store fixes at creation (`max_value_size`, `segment_size`) against the ring: for an
    /// existing store those are its own, checked once its superblock is read (found by
    /// review: restating a store's own limit, created with 1 GiB segments, without
    /// `segment_size` failed the open on the default's 256 MiB).
    pub(crate) fn validate_knobs(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidArgument(m));
        if !(MIN_BUFFER_SIZE..=MAX_BUFFER_SIZE).contains(&self.buffer_size)
            || self.buffer_size % BLOCK != 0
        {
            return bad(format!(
                "buffer_size {} must be a multiple of {BLOCK} from {MIN_BUFFER_SIZE} to \
                 {MAX_BUFFER_SIZE}",
                self.buffer_size
            ));
        }
        if self.max_value_size > MAX_VALUE_LIMIT {
            return bad(format!(
                "max_value_size {} exceeds the hard limit of {MAX_VALUE_LIMIT} (256 MiB)",
                self.max_value_size
            ));
        }
        let segment = &self.segment_size;
        if !(MIN_SEGMENT_SIZE..=MAX_SEGMENT_SIZE).contains(segment) || segment % BLOCK as u64 != 0 {
            return bad(format!(
                "segment_size {segment} must be a multiple of {BLOCK} from {MIN_SEGMENT_SIZE} \
                 to {MAX_SEGMENT_SIZE}"
            ));
        }
        if !(0.01..=0.9).contains(&self.reclaim_threshold) {
            return bad(format!(
                "reclaim_threshold {} must be between 0.01 and 0.9",
                self.reclaim_threshold
            ));
        }
        if !(self.reclaim_threshold..=0.95).contains(&self.reclaim_urgent) {
            return bad(format!(
                "reclaim_urgent {} must be between reclaim_threshold ({}) and 0.95 (its \
                 default is 0.3: a higher reclaim_threshold needs reclaim_urgent set too)",
                self.reclaim_urgent, self.reclaim_threshold
            ));
        }
        let horizon = self.get_flush_horizon();
        if horizon == 0 || horizon > self.buffer_size {
            return bad(format!(
                "flush_horizon {horizon} must be between 1 and buffer_size {}",
                self.buffer_size
            ));
        }
        if self.flush_interval.is_zero() {
            return bad("flush_interval must not be zero".into());
        }
        if self.file_mode & !0o777 != 0 || self.file_mode & 0o600 != 0o600 {
            return bad(format!(
                "file_mode {:o} must be permission bits that include owner read and write (0o600)",
                self.file_mode
            ));
        }
        if self.expected_records == 0 || self.expected_records > u32::MAX as u64 {
            return bad(format!(
                "expected_records {} must be between 1 and {}",
                self.expected_records,
                u32::MAX
            ));
        }
        Ok(())
    }
}

/// The smallest ring that holds a segment header and a record of `record` bytes.
fn ring_for(record: usize) -> usize {
    (record + SEG_HEADER as usize).next_multiple_of(BLOCK)
}

//! Fault injection for tests: a [`FaultDisk`] around a device fails, tears or panics in
//! the Nth call of a chosen kind ([`Op`]); IMAGE_file writes consult the same [`Faults`].
//! Selected through `Hooks::faults`; never used by a production store.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};

use crate::error::{Error, Result};
use crate::log::device::{forward_reads, Device};
use crate::log::memdisk::MemDisk;

/// A kind of device call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// A write of disk_file (a flush, a pad, the superblock).
    Write,
    /// An fdatasync or fsync of disk_file.
    Sync,
    /// Growing disk_file for a new segment.
    Allocate,
    /// A hole punch in disk_file.
    Punch,
    /// Writing IMAGE_file.tmp.
    ImageWrite,
    /// The fsync of IMAGE_file.tmp.
    ImageSync,
    /// The rename of IMAGE_file.tmp over IMAGE_file.
    ImageRename,
    /// Starting a background thread at open (the checkpoint or the reclaim thread; not in
    /// `ALL`, which lists the calls on files).
    Spawn,
}

impl Op {
    /// Every kind of call on disk_file or IMAGE_file.
    pub const ALL: [Op; 7] = [
        Op::Write,
        Op::Sync,
        Op::Allocate,
        Op::Punch,
        Op::ImageWrite,
        Op::ImageSync,
        Op::ImageRename,
    ];
}

/// What a fault does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// The call fails with this errno and changes nothing (a failed sync of a `MemDisk`
    /// also drops every unsynced change, as a kernel may).
    Errno(i32),
    /// A write lands in part (its first half, whole 512-byte sectors) and fails with EIO;
    /// a hole punch frees its second half (whole 4 KiB blocks) and fails with EIO; other
    /// calls fail with EIO.
    Torn,
    /// The calling thread panics.
    Panic,
}

/// Where calls wait while a test holds it shut.
#[derive(Default)]
struct Gate {
    shut: Mutex<bool>,
    opened: Condvar,
}

impl Gate {
    fn shut(&self, shut: bool) {
        *self.shut.lock() = shut;
        self.opened.notify_all();
    }

    fn pass(&self) {
        let mut shut = self.shut.lock();
        while *shut {
            self.opened.wait(&mut shut);
        }
    }
}

struct Rule {
    op: Op,
    at: u64,
    action: Action,
}

/// The fault plan: which call of which kind fails how, and counters of calls.
#[derive(Default)]
pub struct Faults {
    rules: Mutex<Vec<Rule>>,
    calls: [AtomicU64; 8],
    fired: AtomicU64,
    /// Microseconds every record read of disk_file sleeps first (0: none): widens the
    /// window in which a read races the reclaimer giving its segment back.
    read_delay: AtomicU64,
    /// Record reads of disk_file touching these physical bytes suffer the action
    /// (`fail_reads`).
    bad_reads: Mutex<Option<(std::ops::Range<u64>, Action)>>,
    /// While shut, every fdatasync of disk_file waits (`hold_syncs`).
    syncs: Gate,
    /// While shut, every growth of disk_file waits (`hold_allocations`).
    allocations: Gate,
    /// Writes of disk_file touching these bytes wait (`hold_writes`); the count is how
    /// many wait now.
    held_writes: Mutex<Option<std::ops::Range<u64>>>,
    writes_waiting: AtomicU64,
    writes_released: Condvar,
    /// While the flag is true, a sync that fails waits before it reports (after dropping
    /// what it lost); the count is how many wait (`hold_failed_syncs`).
    held_failures: Mutex<(bool, u32)>,
    failures_released: Condvar,
}

impl Faults {
    /// A plan with no faults.
    pub fn new() -> Arc<Faults> {
        Arc::new(Faults::default())
    }

    /// The `n`th call of `op` from now on (1 = the next one) does `action`.
    pub fn fail(&self, op: Op, n: u64, action: Action) {
        let at = self.calls[op as usize].load(Ordering::SeqCst) + n.max(1);
        self.rules.lock().push(Rule { op, at, action });
    }

    /// Makes every record read of disk_file sleep `delay` first.
    pub fn slow_reads(&self, delay: std::time::Duration) {
        self.read_delay
            .store(delay.as_micros() as u64, Ordering::Relaxed);
    }

    /// From now on every read of disk_file (of a record, or through the page cache) that
    /// touches the bytes `range` (offsets in disk_file) does `action` (a `Torn` read fails
    /// with EIO), until `heal_reads`: a bad stretch of the device under some records.
    pub fn fail_reads(&self, range: std::ops::Range<u64>, action: Action) {
        *self.bad_reads.lock() = Some((range, action));
    }

    /// Ends `fail_reads`.
    pub fn heal_reads(&self) {
        *self.bad_reads.lock() = None;
    }

    /// The fault a read of `[off, off + len)` must suffer, if any.
    fn bad_read(&self, off: u64, len: u64) -> Option<Action> {
        let bad = self.bad_reads.lock();
        let (range, action) = bad.as_ref()?;
        (off < range.end && range.start < off + len).then_some(*action)
    }

    /// While `hold`, every fdatasync of disk_file waits until it is let go (a sync that
    /// takes as long as a test needs).
    pub fn hold_syncs(&self, hold: bool) {
        self.syncs.shut(hold);
    }

    /// While `hold`, every growth of disk_file (`set_len`) waits until it is let go.
    pub fn hold_allocations(&self, hold: bool) {
        self.allocations.shut(hold);
    }

    /// While `range` is `Some`, every write of disk_file that touches those bytes
    /// (offsets in disk_file) waits until `hold_writes(None)`: a write that takes as long
    /// as a test needs, at a place the test chooses.
    pub fn hold_writes(&self, range: Option<std::ops::Range<u64>>) {
        *self.held_writes.lock() = range;
        self.writes_released.notify_all();
    }

    /// While `hold`, an fdatasync or fsync that fails (by a `fail` rule) has lost its
    /// bytes at once but waits before it returns its error: the thread that got the
    /// kernel's error is slow to report it, while other syncs run.
    pub fn hold_failed_syncs(&self, hold: bool) {
        self.held_failures.lock().0 = hold;
        self.failures_released.notify_all();
    }

    /// How many failed syncs wait in `hold_failed_syncs`.
    pub fn failed_syncs_held(&self) -> u32 {
        self.held_failures.lock().1
    }

    fn wait_while_failure_held(&self) {
        let mut held = self.held_failures.lock();
        held.1 += 1;
        while held.0 {
            self.failures_released.wait(&mut held);
        }
        held.1 -= 1;
    }

    /// How many writes of disk_file wait in `hold_writes` now.
    pub fn writes_held(&self) -> u64 {
        self.writes_waiting.load(Ordering::SeqCst)
    }

    fn wait_while_write_held(&self, off: u64, len: u64) {
        let mut held = self.held_writes.lock();
        let touches = |h: &Option<std::ops::Range<u64>>| {
            h.as_ref()
                .is_some_and(|r| off < r.end && r.start < off + len)
        };
        if !touches(&held) {
            return;
        }
        self.writes_waiting.fetch_add(1, Ordering::SeqCst);
        while touches(&held) {
            self.writes_released.wait(&mut held);
        }
        self.writes_waiting.fetch_sub(1, Ordering::SeqCst);
    }

    /// Faults that fired so far.
    pub fn fired(&self) -> u64 {
        self.fired.load(Ordering::SeqCst)
    }

    /// Counts a call of `op` and returns the fault it must suffer, if any.
    fn hit(&self, op: Op) -> Option<Action> {
        let n = self.calls[op as usize].fetch_add(1, Ordering::SeqCst) + 1;
        let mut rules = self.rules.lock();
        let i = rules.iter().position(|r| r.op == op && r.at == n)?;
        let r = rules.swap_remove(i);
        self.fired.fetch_add(1, Ordering::SeqCst);
        Some(r.action)
    }

    /// For calls made outside a device (IMAGE_file): `Err` if this call of `op` must fail.
    pub(crate) fn inject(faults: Option<&Faults>, op: Op) -> Result<()> {
        match faults.and_then(|f| f.hit(op)) {
            None => Ok(()),
            Some(Action::Errno(e)) => Err(errno(e)),
            Some(Action::Torn) => Err(errno(libc::EIO)),
            Some(Action::Panic) => panic!("injected panic in {op:?}"),
        }
    }
}

/// The error a real call failing with `e` gives (ENOSPC is `NoSpace`, as `?` makes it).
fn errno(e: i32) -> Error {
    Error::from(std::io::Error::from_raw_os_error(e))
}

/// A device that suffers the faults of a plan.
pub struct FaultDisk {
    inner: Arc<dyn Device>,
    mem: Option<Arc<MemDisk>>,
    faults: Arc<Faults>,
}

impl FaultDisk {
    /// Wraps `inner`; `mem` is the same device when it is a `MemDisk` (a failed sync then
    /// drops its unsynced changes).
    pub fn new(inner: Arc<dyn Device>, mem: Option<Arc<MemDisk>>, faults: Arc<Faults>) -> Self {
        FaultDisk { inner, mem, faults }
    }

    fn plain(&self, op: Op) -> Result<()> {
        self.suffer(op, self.faults.hit(op))
    }

    /// What the fault `action` (already counted for this call of `op`) does: nothing, a
    /// panic, or an error.
    fn suffer(&self, op: Op, action: Option<Action>) -> Result<()> {
        match action {
            None => Ok(()),
            Some(Action::Panic) => panic!("injected panic in {op:?}"),
            Some(Action::Errno(e)) => {
                if op == Op::Sync {
                    if let Some(m) = &self.mem {
                        m.drop_unsynced();
                    }
                    self.faults.wait_while_failure_held();
                }
                Err(errno(e))
            }
            Some(Action::Torn) => Err(errno(libc::EIO)),
        }
    }

    /// The fault a read of `[off, off + len)` suffers under `Faults::fail_reads`, if any.
    fn bad_read(&self, off: u64, len: u64) -> Result<()> {
        match self.faults.bad_read(off, len) {
            None => Ok(()),
            Some(Action::Panic) => panic!("injected panic in a read at {off}"),
            Some(Action::Errno(e)) => Err(errno(e)),
            Some(Action::Torn) => Err(errno(libc::EIO)),
        }
    }

    fn write(&self, off: u64, slices: &[&[u8]], buffered: bool) -> Result<()> {
        let len = slices.iter().map(|s| s.len() as u64).sum();
        self.faults.wait_while_write_held(off, len);
        let go = |s: &[&[u8]]| {
            if buffered {
                let all: Vec<u8> = s.concat();
                self.inner.write_buffered(off, &all)
            } else {
                self.inner.write_vectored(off, s)
            }
        };
        match self.faults.hit(Op::Write) {
            None => go(slices),
            Some(Action::Panic) => panic!("injected panic in Write"),
            Some(Action::Errno(e)) => Err(errno(e)),
            Some(Action::Torn) => {
                let all: Vec<u8> = slices.concat();
                let keep = all.len() / 2 / 512 * 512;
                if keep > 0 {
                    self.inner.write_buffered(off, &all[..keep])?;
                }
                Err(errno(libc::EIO))
            }
        }
    }
}

impl Device for FaultDisk {
    forward_reads!(inner, own_reads);
    fn read_record(&self, off: u64, bufs: &mut [&mut [u8]]) -> Result<()> {
        let delay = self.faults.read_delay.load(Ordering::Relaxed);
        if delay > 0 {
            std::thread::sleep(std::time::Duration::from_micros(delay));
        }
        let len = bufs.iter().map(|b| b.len() as u64).sum();
        self.bad_read(off, len)?;
        self.inner.read_record(off, bufs)
    }
    /// Reads through the page cache (a scan of a segment, say) suffer `fail_reads` too.
    fn read_exact_at(&self, buf: &mut [u8], off: u64) -> Result<()> {
        self.bad_read(off, buf.len() as u64)?;
        self.inner.read_exact_at(buf, off)
    }
    fn write_vectored(&self, off: u64, slices: &[&[u8]]) -> Result<()> {
        self.write(off, slices, false)
    }
    fn write_buffered(&self, off: u64, bytes: &[u8]) -> Result<()> {
        self.write(off, &[bytes], true)
    }
    fn sync_data(&self) -> Result<()> {
        self.faults.syncs.pass();
        self.plain(Op::Sync)?;
        self.inner.sync_data()
    }
    fn sync_all(&self) -> Result<()> {
        self.plain(Op::Sync)?;
        self.inner.sync_all()
    }
    fn set_len(&self, len: u64) -> Result<()> {
        self.faults.allocations.pass();
        self.plain(Op::Allocate)?;
        self.inner.set_len(len)
    }
    fn punch(&self, off: u64, len: u64) -> Result<()> {
        let action = self.faults.hit(Op::Punch);
        if action == Some(Action::Torn) {
            // A punch that stopped midway: file systems free a large range in several
            // journal transactions, from its end back. Its second half (whole 4 KiB
            // blocks) is gone, the first stays.
            let keep = len / 2 / 4096 * 4096;
            self.inner.punch(off + keep, len - keep)?;
            return Err(errno(libc::EIO));
        }
        self.suffer(Op::Punch, action)?;
        self.inner.punch(off, len)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use std::sync::Arc;

    use super::*;
    use crate::error::Error;
    use crate::log::device::{Checked, Device, Latch};
    use crate::log::memdisk::MemDisk;

    /// `Checked`'s rule for syncs that overlap (`SyncsInFlight` in device.rs). Two syncs
    /// at once, the first failing: the kernel tells only it, and its thread is
    /// slow to report. The second succeeds at the device, yet must not be believed before
    /// the first has reported, and then it fails with the store.
    #[test]
    fn a_sync_beside_a_failing_one_waits_for_it_and_fails() {
        let mem = MemDisk::new();
        let faults = Faults::new();
        let dev: Arc<dyn Device> = Arc::new(FaultDisk::new(
            mem.clone(),
            Some(mem.clone()),
            faults.clone(),
        ));
        let dev = Arc::new(Checked::new(dev, Arc::new(Latch::default())));
        dev.write_buffered(0, &[7; 4096]).unwrap();
        faults.fail(Op::Sync, 1, Action::Errno(libc::EIO));
        faults.hold_failed_syncs(true);
        let d = dev.clone();
        let first = std::thread::spawn(move || d.sync_data());
        while faults.failed_syncs_held() == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        let d = dev.clone();
        let second = std::thread::spawn(move || d.sync_data());
        std::thread::sleep(Duration::from_millis(200));
        let answered_early = second.is_finished();
        faults.hold_failed_syncs(false);
        assert!(first.join().unwrap().is_err());
        let res = second.join().unwrap();
        assert!(matches!(res, Err(Error::Failed(_))), "{res:?}");
        assert!(!answered_early);
        // A sync begun after the failure is refused at once.
        assert!(matches!(dev.sync_all(), Err(Error::Failed(_))));
    }

    /// A sync that panics ends as failed: later syncs do not wait for it.
    #[test]
    fn a_sync_that_panicked_is_not_waited_for() {
        let mem = MemDisk::new();
        let faults = Faults::new();
        let dev: Arc<dyn Device> = Arc::new(FaultDisk::new(mem.clone(), None, faults.clone()));
        let dev = Arc::new(Checked::new(dev, Arc::new(Latch::default())));
        faults.fail(Op::Sync, 1, Action::Panic);
        let d = dev.clone();
        assert!(std::thread::spawn(move || d.sync_data()).join().is_err());
        dev.sync_data().unwrap();
    }
}

//! The store's background threads (lookout, checkpoint, reclaim), one way: a named
//! thread, a [`Signal`] to wake it or tell it to stop, a join, and a store latched as
//! failed if the thread's body panics. The lookout starts and joins a helper of its own,
//! `kvs-touch` (`log/ring.rs`); a panic there reaches the lookout's join. The reclaimer
//! reads its victims with scoped helpers (`kvs-reclaim-read`, `reclaim.rs`), joined
//! before a round goes on.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use crate::engine::Engine;
use crate::error::Result;
use crate::log::device::Latch;
use crate::logfile::LogFile;

/// Wakes a background thread, or tells it to stop. The stop flag is set under the mutex
/// the thread waits on, so no wake-up is lost between its check and its wait.
#[derive(Default)]
pub(crate) struct Signal {
    stop: Mutex<bool>,
    cv: Condvar,
}

impl Signal {
    /// Waits up to `timeout` for a wake-up; returns whether the thread is to stop.
    pub fn wait(&self, timeout: Duration) -> bool {
        let mut stop = self.stop.lock();
        if !*stop {
            self.cv.wait_for(&mut stop, timeout);
        }
        *stop
    }

    /// Whether the thread is to stop.
    pub fn stopping(&self) -> bool {
        *self.stop.lock()
    }

    /// Wakes the thread (it looks whether there is work).
    pub fn wake(&self) {
        let _g = self.stop.lock();
        self.cv.notify_all();
    }

    fn stop(&self) {
        *self.stop.lock() = true;
        self.cv.notify_all();
    }
}

/// A running background thread.
pub(crate) struct Worker<T> {
    signal: Arc<Signal>,
    handle: Option<JoinHandle<T>>,
}

/// Latches the store as failed if a background thread's body ends by panicking.
struct DiesLoudly {
    name: &'static str,
    latch: Arc<Latch>,
    log: Arc<LogFile>,
}

impl Drop for DiesLoudly {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let why = format!("the {} thread panicked", self.name);
            self.log.error(&format!("{why}; the store has failed"));
            self.latch.fail(&why);
        }
    }
}

impl<T: Send + 'static> Worker<T> {
    /// Starts thread `kvs-{name}` running `body(signal)`; a panic in it latches the
    /// engine's store as failed.
    pub fn spawn(
        name: &'static str,
        signal: Arc<Signal>,
        engine: &Engine,
        body: impl FnOnce(&Signal) -> T + Send + 'static,
    ) -> Result<Worker<T>> {
        let s = signal.clone();
        let (latch, log) = (engine.latch().clone(), engine.log().clone());
        let handle = std::thread::Builder::new()
            .name(format!("kvs-{name}"))
            .spawn(move || {
                let _watch = DiesLoudly { name, latch, log };
                body(&s)
            })?;
        Ok(Worker {
            signal,
            handle: Some(handle),
        })
    }

    /// Tells the thread to stop and waits for it. `None` if it panicked (the store is then
    /// latched as failed) or was joined before.
    pub fn stop(&mut self) -> Option<T> {
        self.signal.stop();
        self.join()
    }

    /// Waits for the thread to end by itself (the lookout, told through the ring). `None`
    /// if it panicked or was joined before.
    pub fn join(&mut self) -> Option<T> {
        self.handle.take().and_then(|h| h.join().ok())
    }
}

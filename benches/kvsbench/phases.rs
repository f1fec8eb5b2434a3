//! The raw-disk baseline and the engine's plain phases: fill, list, reads, mixed, overwrite,
//! delete.

use std::path::Path;
use std::sync::Mutex;

use hdrhistogram::Histogram;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kvs::flags::format_bytes;
use kvs::Store;

use crate::measure::{drop_caches, drop_store_caches, new_hist, run_phase, Budget, IoCounters};
use crate::workload::{key, mix, shuffled, DELETED};
use crate::{raw, Bench, GetApi, KeyOrder};

impl Bench {
    pub(crate) fn baseline(&mut self) -> Result<(), String> {
        let scratch = self.args.dir.join("raw-scratch");
        // One 4 KiB-aligned slot per record, each large enough for a mean-sized record.
        let block = self.dist.mean() as usize + 48;
        let stride = (block as u64).next_multiple_of(4096);
        let slots = self.args.records.max(1);
        let volume = (slots * stride).max(64 << 20);
        let chunk = 8 << 20;
        for direct in [false, true] {
            let p = raw::seq_write(&scratch, volume, chunk, direct, self.start)?;
            self.push(p);
        }
        for &t in &self.args.readers.clone() {
            for direct in [false, true] {
                let order = shuffled(slots, self.args.seed ^ 0xbead ^ t as u64 ^ direct as u64);
                let budget = self.budget(self.args.records);
                let p = raw::rand_read(
                    &scratch, stride, &order, block, t, direct, budget, self.start,
                )?;
                self.push(p);
            }
        }
        // One value as 2 or 4 reads in flight at once, against one read at queue depth 1.
        for parts in [2, 4] {
            let order = shuffled(slots, self.args.seed ^ 0x5b17 ^ parts as u64);
            let budget = self.budget(self.args.records);
            let mut p =
                raw::split_read(&scratch, stride, &order, block, parts, budget, self.start)?;
            self.compare(&mut p, "raw-read-direct-t1");
            self.push(p);
        }
        let _ = std::fs::remove_file(&scratch);
        Ok(())
    }

    pub(crate) fn fill(&mut self, store: &Store) -> Result<(), String> {
        let n = self.args.records;
        let order = match self.args.key_order {
            KeyOrder::Seq => (0..n).collect(),
            KeyOrder::Random => shuffled(n, self.args.seed),
        };
        let count = AtomicU64::new(0);
        let t0 = Instant::now();
        let budget = Budget {
            ops: n,
            max: Duration::from_secs(24 * 3600),
        };
        let mut p = run_phase("fill", self.args.writers, budget, self.start, |_, i| {
            self.put_timed(store, order[i as usize], 0, &count)
        })?;
        store.sync().map_err(|e| format!("sync: {e}"))?;
        p.secs = t0.elapsed().as_secs_f64();
        p.notes.push(format!(
            "{:?} key order, final sync included",
            self.args.key_order
        ));
        let st = store.stats();
        self.summary.push((
            "index after fill".into(),
            format!(
                "{} for {} records ({:.1} bytes/record)",
                format_bytes(st.index_bytes),
                st.records,
                st.index_bytes as f64 / st.records.max(1) as f64
            ),
        ));
        let base = if store.stats().direct_io {
            "raw-write-direct"
        } else {
            "raw-write-cached"
        };
        self.compare(&mut p, base);
        if let Some(best) = self.find("raw-write-direct").map(|r| r.mb_per_sec()) {
            p.notes.push(format!(
                "{:.0}% of raw O_DIRECT writes",
                100.0 * p.mb_per_sec() / best
            ));
        }
        self.push(p);
        Ok(())
    }

    pub(crate) fn reads(
        &mut self,
        store: &Store,
        dir: &Path,
        threads: usize,
        cold: bool,
    ) -> Result<(), String> {
        let disk = dir.join(kvs::DISK_FILE);
        let how = if cold {
            drop_store_caches(dir)
        } else {
            warm(&disk);
            if store.stats().direct_reads {
                "warmed by a sequential read, which O_DIRECT gets do not use"
            } else {
                "warmed by a sequential read"
            }
        };
        let name = format!("read-{}-t{threads}", if cold { "cold" } else { "hot" });
        let bufs: Vec<std::sync::Mutex<Vec<u8>>> = (0..threads)
            .map(|_| std::sync::Mutex::new(vec![0u8; self.dist.max()]))
            .collect();
        let seed = self.args.seed ^ threads as u64 ^ if cold { 0xc01d } else { 0x407 };
        // Cold reads visit keys in a random order, each once (until --ops exceeds the
        // records), as the raw baseline visits its slots: no get is helped by a repeat.
        // Keys the ring may still serve are left out (found by an audit: after a fill,
        // about 6% of "cold" gets of 100 KiB values at the defaults were copies out of
        // the ring's memory).
        let mut order = shuffled(self.args.records, seed);
        if cold {
            let mut on_disk = Vec::with_capacity(order.len());
            for k in order {
                let at = store
                    .record_extent(&key(k))
                    .map_err(|e| format!("extent: {e}"))?;
                if at.is_some() {
                    on_disk.push(k);
                }
            }
            if on_disk.is_empty() {
                // A store smaller than the ring: there is nothing cold to read.
                self.summary.push((
                    name.clone(),
                    "skipped: every record is still in the ring".into(),
                ));
                return Ok(());
            }
            order = on_disk;
        }
        let before = store.stats();
        let ops = if cold {
            order.len() as u64
        } else {
            self.args.records
        };
        let mut p = run_phase(&name, threads, self.budget(ops), self.start, |t, i| {
            let k = if cold {
                order[i as usize % order.len()]
            } else {
                self.live_key(mix(seed ^ i))
            };
            let mut buf = bufs[t].lock().map_err(|_| "poisoned")?;
            self.get_checked(store, k, &mut buf, Some(i))
        })?;
        let after = store.stats();
        let ring = after.gets_from_buffer - before.gets_from_buffer;
        let disk_gets = after.gets_from_disk - before.gets_from_disk;
        p.notes.push(format!(
            "page cache: {how}; {:.1}% of gets served from the ring",
            100.0 * ring as f64 / (ring + disk_gets).max(1) as f64
        ));
        if cold {
            // Compared with the raw reads done the way the engine reads, record for
            // record (gets a second against reads a second).
            let (same, other) = if store.stats().direct_reads {
                ("direct", "cached")
            } else {
                ("cached", "direct")
            };
            self.compare_ops(&mut p, &format!("raw-read-{same}-t{threads}"));
            let other = format!("raw-read-{other}-t{threads}");
            if let Some(d) = self.find(&other).map(|r| r.ops_per_sec()) {
                p.notes
                    .push(format!("{:.0}% of {other}", 100.0 * p.ops_per_sec() / d));
            }
            p.notes.push(format!(
                "{} of {} keys read (those on disk, not in the ring); ratios to raw by \
                 operations a second",
                order.len(),
                self.args.records
            ));
        }
        self.push(p);
        Ok(())
    }

    /// Cold gets on one thread against raw reads of the same records' blocks, taking turns
    /// key by key four ways: `get_into` (a copy out of the read buffer), `get_value` (the
    /// value in the memory it was read into), one raw O_DIRECT read of the blocks holding
    /// the record (queue depth 1), and the same blocks as two pieces in flight at once
    /// (Linux AIO). The device's mood, and a cache below the machine, hit all four alike;
    /// each key is read once, one way. Keys the ring may still serve are left out.
    pub(crate) fn get_api(&mut self, store: &Store, dir: &Path) -> Result<(), String> {
        const WAYS: [&str; 4] = ["get_into", "get_value", "raw QD1", "raw split2"];
        let disk = dir.join(kvs::DISK_FILE);
        let mut order = Vec::new();
        for k in shuffled(self.args.records, self.args.seed ^ 0xa91) {
            let at = store
                .record_extent(&key(k))
                .map_err(|e| format!("extent: {e}"))?;
            order.extend(at.map(|(at, len)| (k, at, len)));
        }
        if order.is_empty() {
            return Err("get-api: no record on disk outside the ring".into());
        }
        let reader = raw::ExtentReader::open(&disk, self.dist.max() + 4096)?;
        let reader = Mutex::new(reader);
        drop_caches(&[&disk]);
        let hists = [(); 4].map(|_| Mutex::new(new_hist()));
        let buf = Mutex::new(vec![0u8; self.dist.max()]);
        let budget = self.budget(order.len() as u64);
        let mut p = run_phase("get-vs-raw", 1, budget, self.start, |_, i| {
            let (k, at, len) = order[i as usize % order.len()];
            let way = i as usize % WAYS.len();
            let (n, lat) = match way {
                0 | 1 => {
                    let mut buf = buf.lock().map_err(|_| "poisoned")?;
                    let api = [GetApi::Into, GetApi::Value][way];
                    // Every --verify-every-th get of each way is compared: with `i` the
                    // rotation of four ways met the sampling of 8 so that `get_value` was
                    // never compared (found by an audit).
                    let nth = i / WAYS.len() as u64;
                    self.get_checked_with(store, k, &mut buf, Some(nth), api)?
                }
                _ => {
                    let mut r = reader.lock().map_err(|_| "poisoned")?;
                    (len as u64, r.read(at, len, way - 1)?)
                }
            };
            let mut h = hists[way].lock().map_err(|_| "poisoned")?;
            h.saturating_record(lat.as_nanos().max(1) as u64);
            Ok((n, lat))
        })?;
        let hists = hists.map(|h| h.into_inner().unwrap_or_else(|e| e.into_inner()));
        let us = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1e3;
        let qd1 = us(&hists[2], 0.5);
        let parts: Vec<String> = WAYS
            .iter()
            .zip(&hists)
            .map(|(way, h)| {
                format!(
                    "{way} p50 {:.1} us ({:.0}% of raw QD1's speed), p99 {:.1} us, {} reads",
                    us(h, 0.5),
                    qd1 / us(h, 0.5).max(1e-3) * 100.0,
                    us(h, 0.99),
                    h.len()
                )
            })
            .collect();
        let line = parts.join("; ");
        p.notes.push(format!(
            "1 thread, cold, the same records' blocks, taking turns key by key: {line}"
        ));
        self.summary.push((
            "cold gets against raw reads of the same blocks".into(),
            line,
        ));
        self.push(p);
        Ok(())
    }

    pub(crate) fn mixed(&mut self, store: &Store) -> Result<(), String> {
        let threads = *self.args.readers.iter().max().expect("non-empty");
        let bufs: Vec<std::sync::Mutex<Vec<u8>>> = (0..threads)
            .map(|_| std::sync::Mutex::new(vec![0u8; self.dist.max()]))
            .collect();
        let count = AtomicU64::new(0);
        let n = self.args.records;
        let ratio = self.args.read_ratio;
        let mut p = run_phase("mixed", threads, self.budget(n), self.start, |t, i| {
            let r = mix(self.args.seed ^ 0x3131 ^ i);
            if (r % 10_000) as f64 / 10_000.0 < ratio {
                let mut buf = bufs[t].lock().map_err(|_| "poisoned")?;
                self.get_checked(store, self.live_key(r), &mut buf, Some(i))
            } else {
                // Each thread writes only its own keys, so versions stay exact.
                let k = (mix(r) % n.div_ceil(threads as u64)) * threads as u64 + t as u64;
                let k = if k < n { k } else { t as u64 % n };
                let v = self.versions.get(k).wrapping_add(1) % (DELETED - 1);
                self.put_timed(store, k, v, &count)
            }
        })?;
        p.notes
            .push(format!("{:.0}% gets, the rest overwrites", ratio * 100.0));
        self.push(p);
        Ok(())
    }

    /// One writer overwriting while the largest `--readers` count of threads reads cold
    /// keys, after the same writer alone: how much do reads hold puts up? (A put that opens
    /// a segment takes the segment map's write lock; reads must not hold it across I/O.)
    pub(crate) fn read_write(&mut self, store: &Store) -> Result<(), String> {
        let n = self.args.records;
        let readers = *self.args.readers.iter().max().expect("non-empty");
        let mut p99_9 = Vec::new();
        for r in [0, readers] {
            let count = AtomicU64::new(0);
            let stop = std::sync::atomic::AtomicBool::new(false);
            let gets = AtomicU64::new(0);
            let name = format!("write-with-{r}-readers");
            let max = self.dist.max();
            let me: &Bench = self;
            let phase = std::thread::scope(|s| {
                for t in 0..r {
                    let (stop, gets) = (&stop, &gets);
                    s.spawn(move || {
                        let mut buf = vec![0u8; max];
                        let mut i = 0u64;
                        while !stop.load(Ordering::Relaxed) {
                            let k = me.live_key(mix(me.args.seed ^ 0x4ead ^ (t as u64) << 40 ^ i));
                            i += 1;
                            if me.get_checked(store, k, &mut buf, Some(i)).is_err() {
                                return;
                            }
                            gets.fetch_add(1, Ordering::Relaxed);
                        }
                    });
                }
                let res = run_phase(&name, 1, me.budget(n), me.start, |_, i| {
                    let k = mix(me.args.seed ^ 0x3717 ^ r as u64 ^ i) % n;
                    let v = me.versions.get(k).wrapping_add(1) % (DELETED - 1);
                    if me.versions.get(k) == DELETED {
                        return Ok((0, Duration::ZERO));
                    }
                    me.put_timed(store, k, v, &count)
                });
                stop.store(true, Ordering::Relaxed);
                res
            });
            let mut p = phase?;
            store.sync().map_err(|e| format!("sync: {e}"))?;
            p.notes.push(format!(
                "one writer, uniform random keys, beside {r} reader threads ({:.0} gets/s)",
                gets.load(Ordering::Relaxed) as f64 / p.secs.max(1e-9)
            ));
            p99_9.push(p.lat_us(0.999));
            self.push(p);
        }
        if let [alone, busy] = p99_9[..] {
            self.summary.push((
                format!("read-write: put p99.9 beside {readers} readers / alone"),
                format!(
                    "{:.0} us / {:.0} us = {:.2}x",
                    busy,
                    alone,
                    busy / alone.max(1e-9)
                ),
            ));
        }
        Ok(())
    }

    pub(crate) fn overwrite(&mut self, store: &Store) -> Result<(), String> {
        let threads = self.args.writers;
        let n = self.args.records;
        let count = AtomicU64::new(0);
        let t0 = Instant::now();
        let mut p = run_phase("overwrite", threads, self.budget(n), self.start, |t, i| {
            let k = (mix(self.args.seed ^ 0x0e0e ^ i) % n.div_ceil(threads as u64))
                * threads as u64
                + t as u64;
            let k = if k < n { k } else { t as u64 % n };
            let v = self.versions.get(k).wrapping_add(1) % (DELETED - 1);
            self.put_timed(store, k, v, &count)
        })?;
        store.sync().map_err(|e| format!("sync: {e}"))?;
        p.secs = t0.elapsed().as_secs_f64();
        p.notes
            .push("uniform random keys, final sync included".into());
        let base = if store.stats().direct_io {
            "raw-write-direct"
        } else {
            "raw-write-cached"
        };
        self.compare(&mut p, base);
        self.push(p);
        Ok(())
    }

    pub(crate) fn delete(&mut self, store: &Store) -> Result<(), String> {
        let n = self.args.records;
        let victims = shuffled(n, self.args.seed ^ 0xde1);
        let count = (n as f64 * self.args.delete_fraction) as u64;
        let budget = Budget {
            ops: count,
            max: Duration::from_secs_f64(self.args.seconds),
        };
        let p = run_phase("delete", self.args.writers, budget, self.start, |_, i| {
            let k = victims[i as usize];
            let live = self.versions.get(k) != DELETED;
            let t = Instant::now();
            let existed = store.delete(&key(k)).map_err(|e| format!("delete: {e}"))?;
            let lat = t.elapsed();
            if existed != live {
                return Err(format!("delete of key {k} said {existed}, expected {live}"));
            }
            self.versions.set(k, DELETED);
            Ok((0, lat))
        })?;
        self.push(p);
        self.check_sample(store, 2000)
    }

    /// The list phase: every live key with its value length (`Store::keys`), cold cache:
    /// time, keys, and bytes read, which must be the key summaries, not the values.
    pub(crate) fn list(&mut self, store: &Store, dir: &Path) -> Result<(), String> {
        let st = store.stats();
        let how = drop_store_caches(dir);
        let io = IoCounters::now();
        let t = Instant::now();
        let mut keys = store.keys(b"").map_err(|e| format!("keys: {e}"))?;
        let mut n = 0u64;
        for item in keys.by_ref() {
            item.map_err(|e| format!("keys: {e}"))?;
            n += 1;
        }
        let took = t.elapsed();
        let read = IoCounters::now().since(&io).read;
        if n != st.records {
            return Err(format!("keys listed {n} of {} records", st.records));
        }
        self.summary.push((
            "list (Store::keys, cold cache)".into(),
            format!(
                "{n} keys in {:.0} ms ({:.0} keys/s), {} read ({:.3}% of disk_file; {} of it \
                 segments without a summary); page cache emptied by {how}",
                took.as_secs_f64() * 1e3,
                n as f64 / took.as_secs_f64(),
                format_bytes(read),
                read as f64 * 100.0 / st.disk_file_allocated.max(1) as f64,
                format_bytes(keys.scanned_bytes())
            ),
        ));
        Ok(())
    }
}

/// Reads a file sequentially so that it is in the page cache.
pub(crate) fn warm(path: &Path) {
    use std::io::Read;
    if let Ok(mut f) = std::fs::File::open(path) {
        let mut buf = vec![0u8; 8 << 20];
        while matches!(f.read(&mut buf), Ok(n) if n > 0) {}
    }
}

//! The index-scale phase: many small records, for the index's memory per record and the
//! open and close times of a large index.

use std::time::{Duration, Instant};

use kvs::flags::format_bytes;
use kvs::{Options, Store};

use crate::measure::{rss, run_phase, Budget};
use crate::workload::mix;
use crate::{store_options, Bench};

impl Bench {
    pub(crate) fn index_scale(&mut self) -> Result<(), String> {
        let n = self.args.index_records;
        let dir = self.args.dir.join("index-scale");
        let _ = std::fs::remove_dir_all(&dir);
        let opts = Options::default()
            .expected_records(n.max(1))
            .max_value_size(64 << 10)
            .buffer_size(64 << 20)
            .direct_io(store_options(&self.args, self.dist.max())?.get_direct_io());
        let store = Store::open(&dir, opts.clone()).map_err(|e| format!("open: {e}"))?;
        let rss0 = rss();
        let t0 = Instant::now();
        let budget = Budget {
            ops: n,
            max: Duration::from_secs(3600),
        };
        let mut p = run_phase("index-scale", 1, budget, self.start, |_, i| {
            let k = mix(i ^ 0x1d1d);
            let t = Instant::now();
            store
                .put(&k.to_le_bytes(), &i.to_le_bytes())
                .map_err(|e| format!("put: {e}"))?;
            Ok((8, t.elapsed()))
        })?;
        store.sync().map_err(|e| format!("sync: {e}"))?;
        p.secs = t0.elapsed().as_secs_f64();
        let st = store.stats();
        let rss1 = rss();
        p.notes
            .push(format!("{} records of 8-byte values", st.records));
        self.push(p);
        let t = Instant::now();
        store.close().map_err(|e| format!("close: {e}"))?;
        let close = t.elapsed();
        // A cold open: close wrote IMAGE_file through the page cache.
        let how = crate::measure::drop_store_caches(&dir);
        let t = Instant::now();
        let store = Store::open(&dir, opts).map_err(|e| format!("reopen: {e}"))?;
        let open = t.elapsed();
        let st2 = store.stats();
        for i in (0..n).step_by((n / 1000).max(1) as usize) {
            let k = mix(i ^ 0x1d1d);
            let got = store
                .get(&k.to_le_bytes())
                .map_err(|e| format!("get: {e}"))?;
            if got.as_deref() != Some(&i.to_le_bytes()[..]) {
                return Err(format!("index-scale: key {i} read back wrong"));
            }
        }
        let image = std::fs::metadata(dir.join(kvs::IMAGE_FILE))
            .map(|m| m.len())
            .unwrap_or(0);
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
        let per = st.index_bytes as f64 / st.records.max(1) as f64;
        self.summary.push((
            format!("index at {} records", st.records),
            format!("{} ({per:.1} bytes/record)", format_bytes(st.index_bytes)),
        ));
        self.summary.push((
            "index-scale RSS growth".into(),
            format!(
                "{} ({:.1} bytes/record; ring included)",
                format_bytes(rss1.saturating_sub(rss0)),
                rss1.saturating_sub(rss0) as f64 / st.records.max(1) as f64
            ),
        ));
        self.summary
            .push(("index-scale IMAGE_file".into(), format_bytes(image)));
        self.summary.push((
            "index-scale close (image write)".into(),
            format!("{:.0} ms", close.as_secs_f64() * 1e3),
        ));
        self.summary.push((
            "index-scale open".into(),
            format!(
                "{:.0} ms cold ({how}; {} records, from image: {})",
                open.as_secs_f64() * 1e3,
                st2.records,
                st2.opened_from_image
            ),
        ));
        Ok(())
    }
}

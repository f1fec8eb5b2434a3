//! The operations the phases are made of: puts that record the version put, gets checked
//! against it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kvs::Store;

use crate::workload::{key, mix, DELETED};
use crate::{Bench, GetApi};

impl Bench {
    /// The value for key `k` at version `v`.
    pub(crate) fn value(&self, k: u64, v: u32) -> &[u8] {
        self.pool.value(k, v, self.dist.size(self.args.seed, k, v))
    }

    pub(crate) fn put_timed(
        &self,
        store: &Store,
        k: u64,
        v: u32,
        n: &AtomicU64,
    ) -> Result<(u64, Duration), String> {
        let value = self.value(k, v);
        let t = Instant::now();
        store.put(&key(k), value).map_err(|e| format!("put: {e}"))?;
        if self.args.sync_every > 0
            && n.fetch_add(1, Ordering::Relaxed) % self.args.sync_every == self.args.sync_every - 1
        {
            store.sync().map_err(|e| format!("sync: {e}"))?;
        }
        let lat = t.elapsed();
        self.versions.set(k, v);
        Ok((value.len() as u64, lat))
    }

    /// Gets key `k`; checks the bytes against the version the harness last put on every
    /// `--verify-every`th call of a timed read phase (`i`), and always when `i` is None.
    pub(crate) fn get_checked(
        &self,
        store: &Store,
        k: u64,
        buf: &mut [u8],
        i: Option<u64>,
    ) -> Result<(u64, Duration), String> {
        self.get_checked_with(store, k, buf, i, self.args.get_api)
    }

    /// `get_checked` through the call `api` names.
    pub(crate) fn get_checked_with(
        &self,
        store: &Store,
        k: u64,
        buf: &mut [u8],
        i: Option<u64>,
        api: GetApi,
    ) -> Result<(u64, Duration), String> {
        let before = self.versions.get(k);
        let t = Instant::now();
        let (got, owned) = match api {
            GetApi::Into => {
                let n = store.get_into(&key(k), buf);
                (n.map_err(|e| format!("get {k}: {e}"))?, None)
            }
            GetApi::Value => {
                let v = store.get_value(&key(k));
                let v = v.map_err(|e| format!("get {k}: {e}"))?;
                (v.as_ref().map(|v| v.len()), v)
            }
        };
        let lat = t.elapsed();
        let bytes: &[u8] = owned.as_deref().unwrap_or(buf);
        let after = self.versions.get(k);
        let check = match i {
            Some(i) => i % self.args.verify_every.max(1) == 0,
            None => true,
        };
        let ok = |v: u32| match got {
            None => v == DELETED,
            Some(n) => {
                v != DELETED
                    && n == self.dist.size(self.args.seed, k, v)
                    && (!check || &bytes[..n] == self.value(k, v))
            }
        };
        if !ok(before) && !ok(after) {
            return Err(format!(
                "get of key {k} returned the wrong bytes (versions {before}/{after})"
            ));
        }
        Ok((got.unwrap_or(0) as u64, lat))
    }

    pub(crate) fn live_key(&self, r: u64) -> u64 {
        let n = self.args.records;
        // Prefer live keys, but a fully deleted range still terminates.
        for j in 0..64 {
            let k = mix(r.wrapping_add(j)) % n;
            if self.versions.get(k) != DELETED {
                return k;
            }
        }
        mix(r) % n
    }

    /// Gets a sample of keys, live and deleted, and checks each.
    pub(crate) fn check_sample(&self, store: &Store, count: u64) -> Result<(), String> {
        let mut buf = vec![0u8; self.dist.max()];
        for i in 0..count.min(self.args.records) {
            let k = mix(self.args.seed ^ 0x5a5a ^ i) % self.args.records;
            self.get_checked(store, k, &mut buf, None)?;
        }
        Ok(())
    }
}

//! `kvs serve --admin-listen`: what the server and its store are doing, for Prometheus
//! (`GET /metrics`, the OpenMetrics text form, which Prometheus scrapes) and for people and
//! scripts (`GET /stats`, JSON). The admin listener is separate from the data listener, so
//! it can be bound to another address (or left off, the default).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Request {
    method: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Method {
    method: &'static str,
}

/// The server's counters and the store's figures, ready to be encoded.
pub struct Metrics {
    registry: Registry,
    requests: Family<Request, Counter>,
    latency: Family<Method, Histogram>,
    bytes_in: Counter,
    bytes_out: Counter,
    /// Bytes of bodies counted against `--max-inflight`, set at each scrape.
    held: Gauge,
    /// The store's figures, copied from `Store::stats` at each scrape.
    store: Vec<(StatFn, Figure)>,
}

type StatFn = fn(&kvs::Stats) -> u64;

enum Figure {
    Gauge(Gauge<i64, AtomicI64>),
    Counter(Counter<u64, AtomicU64>),
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("kvs");
        let requests = Family::<Request, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by method and status",
            requests.clone(),
        );
        // 50 us to about 26 s, doubling.
        let latency = Family::<Method, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_05, 2.0, 20))
        });
        registry.register_with_unit(
            "http_request_duration",
            "Time from the request's head to the response's head, by method",
            Unit::Seconds,
            latency.clone(),
        );
        let bytes_in = Counter::default();
        registry.register_with_unit(
            "http_received",
            "Bytes of request bodies stored",
            Unit::Bytes,
            bytes_in.clone(),
        );
        let bytes_out = Counter::default();
        registry.register_with_unit(
            "http_sent",
            "Bytes of response bodies",
            Unit::Bytes,
            bytes_out.clone(),
        );
        let held = Gauge::default();
        registry.register_with_unit(
            "http_bodies_held",
            "Bytes of request and response bodies held in memory (counted against --max-inflight)",
            Unit::Bytes,
            held.clone(),
        );
        let gauges: [(&str, &str, StatFn); 11] = [
            ("store_records", "Live keys", |s| s.records),
            (
                "store_live_bytes",
                "Bytes of live records in the log",
                |s| s.live_bytes,
            ),
            (
                "store_dead_bytes",
                "Bytes of overwritten, deleted and padding records not yet reclaimed",
                |s| s.dead_bytes,
            ),
            ("store_disk_file_bytes", "Length of disk_file", |s| {
                s.disk_file_bytes
            }),
            (
                "store_disk_file_allocated_bytes",
                "Bytes disk_file takes on the device",
                |s| s.disk_file_allocated,
            ),
            ("store_segments", "Log segments in use", |s| s.segments),
            ("store_free_segments", "Segment slots free for reuse", |s| {
                s.free_segments
            }),
            (
                "store_recycled_segments",
                "Free segment slots that keep their blocks for the next segments",
                |s| s.recycled_segments,
            ),
            (
                "store_buffer_unflushed_bytes",
                "Bytes in the ring not yet written to disk_file",
                |s| s.buffer_unflushed,
            ),
            ("store_index_bytes", "Bytes of the in-memory index", |s| {
                s.index_bytes
            }),
            (
                "store_failed",
                "1 if the store has failed (read-only until reopened)",
                |s| s.failed as u64,
            ),
        ];
        let counters: [(&str, &str, StatFn); 13] = [
            ("store_flushes", "Flushes of the ring", |s| s.flushes),
            (
                "store_flushes_asked",
                "Flushes of the whole ring someone waited for (sync, checkpoint, grant, room)",
                |s| s.flushes_asked,
            ),
            (
                "store_flushes_horizon",
                "Flushes because the unflushed bytes passed the flush horizon",
                |s| s.flushes_horizon,
            ),
            (
                "store_flushes_interval",
                "Flushes because the flush interval passed",
                |s| s.flushes_interval,
            ),
            (
                "store_died_in_ring_bytes",
                "Bytes of records overwritten or deleted in the ring, never written",
                |s| s.died_in_ring_bytes,
            ),
            (
                "store_flushed_bytes",
                "Bytes written by ring flushes",
                |s| s.flushed_bytes,
            ),
            (
                "store_gets_from_buffer",
                "Gets answered from the ring",
                |s| s.gets_from_buffer,
            ),
            ("store_gets_from_disk", "Gets read from disk_file", |s| {
                s.gets_from_disk
            }),
            ("store_checkpoints", "Index images written", |s| {
                s.checkpoints
            }),
            (
                "store_segments_freed",
                "Segments given back by the reclaimer",
                |s| s.segments_freed,
            ),
            (
                "store_segments_reused",
                "Segments opened in a slot given back with its blocks kept (recycled)",
                |s| s.segments_reused,
            ),
            (
                "store_reclaim_moved_bytes",
                "Bytes of live records moved by the reclaimer",
                |s| s.bytes_moved,
            ),
            ("store_reclaim_rounds", "Reclaimer rounds", |s| {
                s.reclaim_rounds
            }),
        ];
        let mut store = Vec::new();
        for (name, help, f) in gauges {
            let g = Gauge::<i64, AtomicI64>::default();
            registry.register(name, help, g.clone());
            store.push((f, Figure::Gauge(g)));
        }
        for (name, help, f) in counters {
            let c = Counter::<u64, AtomicU64>::default();
            registry.register(name, help, c.clone());
            store.push((f, Figure::Counter(c)));
        }
        Metrics {
            registry,
            requests,
            latency,
            bytes_in,
            bytes_out,
            held,
            store,
        }
    }

    /// One answered request.
    pub fn request(&self, method: &hyper::Method, status: u16, took: Duration, sent: u64) {
        let method = match *method {
            hyper::Method::GET => "GET",
            hyper::Method::HEAD => "HEAD",
            hyper::Method::PUT => "PUT",
            hyper::Method::DELETE => "DELETE",
            hyper::Method::POST => "POST",
            _ => "OTHER",
        };
        self.requests
            .get_or_create(&Request { method, status })
            .inc();
        self.latency
            .get_or_create(&Method { method })
            .observe(took.as_secs_f64());
        self.bytes_out.inc_by(sent);
    }

    /// A request body of `n` bytes stored.
    pub fn received(&self, n: u64) {
        self.bytes_in.inc_by(n);
    }

    /// The OpenMetrics text of everything, with the store's figures from `stats` and
    /// `held` bytes of bodies in memory.
    pub fn encode(&self, stats: &kvs::Stats, held: u64) -> String {
        self.held.set(held.min(i64::MAX as u64) as i64);
        for (f, fig) in &self.store {
            let v = f(stats);
            match fig {
                Figure::Gauge(g) => {
                    g.set(v.min(i64::MAX as u64) as i64);
                }
                // Two scrapes at once may set their snapshots in either order: a
                // counter keeps the larger, so it never goes backwards.
                Figure::Counter(c) => {
                    c.inner().fetch_max(v, Ordering::Relaxed);
                }
            }
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String does not fail");
        out
    }

    /// The server's own counters as JSON (for `/stats`), with `held` bytes of bodies in
    /// memory.
    pub fn json(&self, held: u64) -> serde_json::Value {
        serde_json::json!({
            "bodies_held_bytes": held,
            "received_bytes": self.bytes_in.get(),
            "sent_bytes": self.bytes_out.get(),
        })
    }
}

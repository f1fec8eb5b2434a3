//! `kvs stat`: what the store's files say, as text or JSON.

use std::path::Path;
use std::time::SystemTime;

use kvs::flags::{format_bytes, StoreFlags};
use kvs::{Options, Store};

use crate::options;

pub fn stat(store: &Store, dir: &Path, flags: &StoreFlags, json: bool) -> String {
    let o = options(flags);
    if json {
        return serde_json::to_string_pretty(&stat_json(store, dir, &o))
            .expect("JSON of plain values");
    }
    let st = store.stats();
    let (du, image_age) = files(dir);
    let per = st.index_bytes as f64 / st.records.max(1) as f64;
    let durability = format!("{:?}", o.get_durability()).to_lowercase();
    let b = format_bytes;
    [
        format!("store            {}", dir.display()),
        format!("format           disk_file v{}, IMAGE_file v{}", st.format_version, kvs::IMAGE_VERSION),
        format!("records          {}", st.records),
        format!("max value        {} (fixed at creation)", b(store.max_value_size() as u64)),
        format!(
            "damage           {} damaged log ranges ({}) stepped over at open{}",
            st.damaged_ranges,
            b(st.damaged_bytes),
            if st.kept_slots > 0 {
                format!("; {} slots kept (records without a segment header, see LOG)", st.kept_slots)
            } else {
                String::new()
            }
        ),
        format!("live bytes       {} (live records: headers, keys, values)", b(st.live_bytes)),
        format!("dead bytes       {} (overwritten, deleted, tombstones, padding)", b(st.dead_bytes)),
        format!(
            "file bytes       {} long, {} on disk; {} on disk for the directory (du)",
            b(st.disk_file_bytes),
            b(st.disk_file_allocated),
            b(du)
        ),
        format!(
            "segments         {} of {} in use, {} free (reclaimed with `kvs compact`, or in the background)",
            st.segments,
            b(st.segment_size),
            st.free_segments
        ),
        format!("index            {} in memory, {per:.1} bytes per record", b(st.index_bytes)),
        format!(
            "buffer           {} ring, {} flush horizon, {} ms flush interval (this open's settings)",
            b(st.buffer_capacity),
            b(o.get_flush_horizon() as u64),
            o.get_flush_interval().as_millis()
        ),
        format!(
            "durability       {durability}; O_DIRECT writes {}, reads {}",
            st.direct_io, st.direct_reads
        ),
        match image_age {
            Some(age) => format!(
                "last checkpoint  the image (IMAGE_file, IMAGE_delta) covers {} of the log, written {age} s ago",
                b(st.checkpoint_covered)
            ),
            None => "last checkpoint  none (no IMAGE_file)".into(),
        },
        format!(
            "recovery         this open took {:.1} ms: {}, replayed {}",
            st.open_micros as f64 / 1000.0,
            if st.opened_from_image { "index from IMAGE_file" } else { "index rebuilt from disk_file" },
            b(st.replayed_bytes)
        ),
    ]
    .join("\n")
}

/// Bytes the store's directory takes on the device (du), and the age of IMAGE_file in
/// seconds.
fn files(dir: &Path) -> (u64, Option<u64>) {
    let du: u64 = std::fs::read_dir(dir)
        .map(|r| {
            r.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| std::os::unix::fs::MetadataExt::blocks(&m) * 512)
                .sum()
        })
        .unwrap_or(0);
    // The last checkpoint wrote IMAGE_file whole or appended to IMAGE_delta.
    let image_age = [kvs::IMAGE_FILE, kvs::DELTA_FILE]
        .iter()
        .filter_map(|f| std::fs::metadata(dir.join(f)).ok()?.modified().ok())
        .max()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .map(|d| d.as_secs());
    (du, image_age)
}

/// What `kvs stat --json` prints (and `kvs serve`'s `/stats` holds under "store").
pub fn stat_json(store: &Store, dir: &Path, o: &Options) -> serde_json::Value {
    let st = store.stats();
    let (du, image_age) = files(dir);
    let per = st.index_bytes as f64 / st.records.max(1) as f64;
    let durability = format!("{:?}", o.get_durability()).to_lowercase();
    serde_json::json!({
        "store": dir.display().to_string(),
        "disk_file_format": st.format_version,
        "damaged_ranges": st.damaged_ranges,
        "damaged_bytes": st.damaged_bytes,
        "kept_slots": st.kept_slots,
        "image_file_format": kvs::IMAGE_VERSION,
        "records": st.records,
        "max_value_size": store.max_value_size(),
        "live_bytes": st.live_bytes,
        "dead_bytes": st.dead_bytes,
        "file_bytes": st.disk_file_bytes,
        "disk_file_allocated_bytes": st.disk_file_allocated,
        "segment_size": st.segment_size,
        "segments": st.segments,
        "free_segments": st.free_segments,
        "disk_usage_bytes": du,
        "index_bytes": st.index_bytes,
        "index_bytes_per_record": per,
        "buffer_bytes": st.buffer_capacity,
        "flush_horizon_bytes": o.get_flush_horizon(),
        "flush_interval_ms": o.get_flush_interval().as_millis() as u64,
        "durability": durability,
        "direct_io": st.direct_io,
        "direct_reads": st.direct_reads,
        "checkpoint_covers_bytes": st.checkpoint_covered,
        "checkpoint_age_seconds": image_age,
        "open_micros": st.open_micros,
        "opened_from_image": st.opened_from_image,
        "replayed_bytes": st.replayed_bytes,
    })
}

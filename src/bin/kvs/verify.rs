//! `kvs verify`: every live record read and checked.

use std::io::Write;

use kvs::flags::format_bytes;
use kvs::Store;

use crate::progress::bar;
use crate::{Res, EXIT_CORRUPT};

pub fn verify(store: &Store, out: &mut dyn Write) -> Res<u8> {
    let pb = bar(store.stats().records, "verify", false);
    let r = store.verify_with_progress(|done, _| pb.set_position(done))?;
    pb.finish_and_clear();
    let _ = writeln!(
        out,
        "{} records sound ({}), {} corrupt, {} damaged log ranges found at open ({})",
        r.records,
        format_bytes(r.bytes),
        r.corrupt,
        r.damaged_ranges,
        format_bytes(r.damaged_bytes)
    );
    for p in &r.problems {
        let _ = writeln!(out, "  {p}");
    }
    Ok(if r.is_clean() { 0 } else { EXIT_CORRUPT })
}

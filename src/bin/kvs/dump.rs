//! `kvs dump` and `kvs keys`: the live keys and value sizes (or values), from the key
//! summaries (`Store::keys`; `Store::scan` with values).

use std::io::{self, Write};

use kvs::Store;

use crate::progress::bar;
use crate::text::{escape, to_hex};
use crate::{Failure, Res, EXIT_IO};

pub fn dump(store: &Store, prefix: &[u8], values: bool, hex: bool, out: &mut dyn Write) -> Res<u8> {
    let pb = bar(store.stats().records, "dump", false);
    let show = |b: &[u8]| if hex { to_hex(b) } else { escape(b) };
    let items = if values {
        store.scan(prefix)?
    } else {
        store.keys(prefix)?
    };
    for item in items {
        let item = item?;
        pb.inc(1);
        let (k, n) = (show(&item.key), item.value_len);
        let line = if values {
            writeln!(out, "{k}\t{n}\t{}", show(&item.value))
        } else {
            writeln!(out, "{k}\t{n}")
        };
        match line {
            Ok(()) => {}
            // A closed pipe (| head) is a normal way to stop.
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => break,
            Err(e) => return Err(Failure(EXIT_IO, format!("standard output: {e}"))),
        }
    }
    pb.finish_and_clear();
    Ok(0)
}

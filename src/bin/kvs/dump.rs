//! `kvs dump`: the live keys and value sizes (or values), read from disk_file.

use std::io::{self, Write};

use kvs::Store;

use crate::progress::bar;
use crate::text::{escape, to_hex};
use crate::{Failure, Res, EXIT_IO};

pub fn dump(store: &Store, prefix: &[u8], values: bool, hex: bool, out: &mut dyn Write) -> Res<u8> {
    let pb = bar(store.stats().records, "dump", false);
    let show = |b: &[u8]| if hex { to_hex(b) } else { escape(b) };
    let mut werr = None;
    store.for_each_record(values, |k, v, n| {
        pb.inc(1);
        if !k.starts_with(prefix) {
            return true;
        }
        let line = if values {
            writeln!(out, "{}\t{n}\t{}", show(k), show(v))
        } else {
            writeln!(out, "{}\t{n}", show(k))
        };
        match line {
            Ok(()) => true,
            Err(e) => {
                werr = Some(e);
                false
            }
        }
    })?;
    pb.finish_and_clear();
    match werr {
        // A closed pipe (| head) is a normal way to stop.
        Some(e) if e.kind() != io::ErrorKind::BrokenPipe => {
            Err(Failure(EXIT_IO, format!("standard output: {e}")))
        }
        _ => Ok(0),
    }
}

//! Opening a store from the command line: the directory checked first, so that the usual
//! mistakes get a clear message, and recovery shown on a terminal.

use std::path::Path;

use kvs::{Error, Options, Store};

use crate::progress::bar;
use crate::{Failure, Res, EXIT_STORE};

/// Opens the store in `dir`, with clear messages for the usual mistakes. `create`: a
/// missing or empty directory gets a new store.
pub fn open(dir: &Path, create: bool, opts: Options) -> Res<Store> {
    open_as(dir, create, opts, |d, o| Store::open(d, o))
}

/// `open`, doing `how` (open, or rebuild) once the directory looks right.
pub fn open_as<T>(
    dir: &Path,
    create: bool,
    opts: Options,
    how: impl FnOnce(&Path, Options) -> kvs::Result<T>,
) -> Res<T> {
    let fail = |m: String| Err(Failure(EXIT_STORE, m));
    let d = dir.display();
    if dir.exists() && !dir.is_dir() {
        return fail(format!("{d} is not a directory"));
    }
    if !dir.join(kvs::DISK_FILE).exists() {
        let empty = std::fs::read_dir(dir).map_or(true, |mut r| r.next().is_none());
        if !create {
            return if dir.exists() {
                fail(format!("{d} is not a kvs store (it has no disk_file)"))
            } else {
                fail(format!(
                    "no kvs store at {d} (the directory does not exist)"
                ))
            };
        }
        if !empty {
            return fail(format!(
                "{d} is not empty and holds no kvs store; refusing to create one there"
            ));
        }
    }
    // Recovery can be long (a full rebuild reads all of disk_file): show it on a terminal.
    let pb = bar(0, "recover", true);
    let pb2 = pb.clone();
    let opts = match opts.get_recovery_progress() {
        Some(_) => opts,
        None => opts.recovery_progress(move |done, all| {
            pb2.set_length(all);
            pb2.set_position(done);
        }),
    };
    let res = how(dir, opts);
    pb.finish_and_clear();
    res.map_err(|e| match e {
        Error::Locked => Failure(
            EXIT_STORE,
            format!("{d} is in use by another process (its LOCK file is held)"),
        ),
        Error::InvalidArgument(m) => Failure(EXIT_STORE, format!("cannot open {d}: {m}")),
        other => Failure::from(other),
    })
}

//! `kvs put DIR --batch FILE`: an atomic batch from a file (or `-`, standard input), one
//! operation per line:
//!
//! ```text
//! # comments and blank lines are skipped
//! put KEY VALUE-FILE     (the value is the file's bytes)
//! delete KEY
//! ```
//!
//! KEY is one word (hex digits with --hex); VALUE-FILE a path, relative to the current
//! directory. The whole file is read and checked before anything is written.

use std::path::Path;

use kvs::Batch;

use crate::text::key_bytes;
use crate::{Failure, Res, EXIT_IO, EXIT_USAGE};

/// The batch the lines of `text` describe.
/// `max_value`: the largest value taken (the store's limit), checked here with each key's
/// length so that a bad line is named and nothing is opened or created for it.
pub fn parse_batch(text: &str, hex: bool, base: &Path, max_value: usize) -> Res<Batch> {
    let mut batch = Batch::new();
    for (n, line) in text.lines().enumerate() {
        let at = |why: String| Failure(EXIT_USAGE, format!("batch line {}: {why}", n + 1));
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            [] => {}
            [w, ..] if w.starts_with('#') => {}
            ["put", key, file] => {
                let key = key_bytes(key, hex).map_err(|f| at(f.1))?;
                check_key_len(&key).map_err(at)?;
                let path = base.join(file);
                let value = std::fs::read(&path).map_err(|e| {
                    Failure(
                        EXIT_IO,
                        format!("batch line {}: {}: {e}", n + 1, path.display()),
                    )
                })?;
                if value.len() > max_value {
                    return Err(at(format!(
                        "{}: {} bytes, over the limit of {max_value} (--max-value-size)",
                        path.display(),
                        value.len()
                    )));
                }
                batch.put(&key, &value);
            }
            ["delete", key] => {
                let key = key_bytes(key, hex).map_err(|f| at(f.1))?;
                check_key_len(&key).map_err(at)?;
                batch.delete(&key);
            }
            _ => {
                return Err(at(format!(
                    "'{line}': expected 'put KEY VALUE-FILE' or 'delete KEY'"
                )))
            }
        }
    }
    Ok(batch)
}

/// Keys are 1..=4096 bytes (checked before any store is opened or created).
pub fn check_key_len(key: &[u8]) -> Result<(), String> {
    if (1..=kvs::MAX_KEY_LEN).contains(&key.len()) {
        Ok(())
    } else {
        Err(format!(
            "a key of {} bytes: keys are 1..={} bytes",
            key.len(),
            kvs::MAX_KEY_LEN
        ))
    }
}

//! The directory view of `kvs serve`: keys are paths, and `GET /a/b/` lists the next path
//! component under `/a/b/` in nginx's `autoindex_format json` form, as minikeyvalue's
//! rebuild reads it.
//!
//! The engine keeps no keys in memory, so the server does: every key and its value
//! length in an ordered map, loaded at start from the key summaries (`Store::keys`, which
//! reads no values) and kept up to date by PUT and DELETE. A listing skips from child to
//! child (one map seek per entry of the answer), so `/` costs what it lists, however many
//! keys lie below. Memory: measured at about 250 bytes a key of 31 bytes, the engine's
//! index included (200 000 keys: 50 MB over an empty store).

use std::collections::BTreeMap;
use std::ops::Bound;
use std::time::SystemTime;

use kvs::Store;
use parking_lot::RwLock;

/// Every key of the store and its value length.
pub struct Dirs {
    keys: RwLock<BTreeMap<Vec<u8>, u64>>,
    /// The `mtime` every entry shows (kvs keeps no times): when the server started.
    mtime: String,
}

impl Dirs {
    /// Loads every key of `store`.
    pub fn load(store: &Store) -> kvs::Result<Dirs> {
        let mut keys = BTreeMap::new();
        for item in store.keys(b"")? {
            let item = item?;
            keys.insert(item.key, item.value_len as u64);
        }
        Ok(Dirs {
            keys: RwLock::new(keys),
            mtime: http_date(SystemTime::now()),
        })
    }

    /// Keys held.
    pub fn len(&self) -> usize {
        self.keys.read().len()
    }

    /// Makes the view of `key` what the store says now. Called after every PUT and
    /// DELETE; the store is asked under the view's lock, so the last call for a key leaves
    /// its final state whatever the order of concurrent writes.
    pub fn refresh(&self, store: &Store, key: &[u8]) {
        let mut keys = self.keys.write();
        match store.value_len(key) {
            Ok(Some(n)) => {
                keys.insert(key.to_vec(), n as u64);
            }
            _ => {
                keys.remove(key);
            }
        }
    }

    /// The JSON listing of directory `prefix` (ending in `/`): its subdirectories and
    /// files, in byte order of their names.
    pub fn list(&self, prefix: &[u8]) -> String {
        let keys = self.keys.read();
        let mut out = String::from("[");
        let mut from = prefix.to_vec();
        let mut first = true;
        while let Some((k, &size)) = keys
            .range::<[u8], _>((Bound::Included(&from[..]), Bound::Unbounded))
            .next()
        {
            if !k.starts_with(prefix) {
                break;
            }
            let rest = &k[prefix.len()..];
            if !first {
                out.push(',');
            }
            first = false;
            match rest.iter().position(|&b| b == b'/') {
                Some(i) => {
                    let name = &rest[..i];
                    out += &format!(
                        "{{\"name\":{},\"type\":\"directory\",\"mtime\":\"{}\"}}",
                        json_string(name),
                        self.mtime
                    );
                    // Past every key under `prefix name /`: '/' + 1 is '0'.
                    from = [prefix, name, b"0"].concat();
                }
                None => {
                    out += &format!(
                        "{{\"name\":{},\"type\":\"file\",\"mtime\":\"{}\",\"size\":{size}}}",
                        json_string(rest),
                        self.mtime
                    );
                    from = [&k[..], &[0u8]].concat();
                }
            }
        }
        out.push(']');
        out
    }
}

/// `s` as a JSON string (bytes that are not UTF-8 become U+FFFD, as they have no JSON
/// form).
fn json_string(s: &[u8]) -> String {
    let mut out = String::from("\"");
    for c in String::from_utf8_lossy(s).chars() {
        match c {
            '"' => out += "\\\"",
            '\\' => out += "\\\\",
            c if (c as u32) < 0x20 => out += &format!("\\u{:04x}", c as u32),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// An HTTP date (RFC 7231, as nginx writes `mtime`): `Mon, 23 Nov 2026 07:31:04 GMT`.
fn http_date(t: SystemTime) -> String {
    httpdate::fmt_http_date(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn dates_are_http_dates() {
        let t = UNIX_EPOCH + Duration::from_secs(1_795_419_064);
        assert_eq!(http_date(t), "Mon, 23 Nov 2026 07:31:04 GMT");
        assert_eq!(http_date(UNIX_EPOCH), "Thu, 01 Jan 1970 00:00:00 GMT");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(http_date(leap), "Tue, 29 Feb 2000 00:00:00 GMT");
    }

    #[test]
    fn json_strings_escape() {
        assert_eq!(json_string(b"a\"b\\c\n"), "\"a\\\"b\\\\c\\u000a\"");
        assert_eq!(json_string(b"aGk+Lw=="), "\"aGk+Lw==\"");
    }

    #[test]
    fn listings_give_the_next_component_once() {
        let mut keys = BTreeMap::new();
        for k in [
            "/sv00/ab/cd/x",
            "/sv00/ab/cd/y",
            "/sv00/ab/ef/z",
            "/sv01/00/00/w",
            "/top",
            "/sv00/ab/cd0",
        ] {
            keys.insert(k.as_bytes().to_vec(), 3);
        }
        let d = Dirs {
            keys: RwLock::new(keys),
            mtime: "M".into(),
        };
        let dir = |n: &str| format!("{{\"name\":\"{n}\",\"type\":\"directory\",\"mtime\":\"M\"}}");
        let file =
            |n: &str| format!("{{\"name\":\"{n}\",\"type\":\"file\",\"mtime\":\"M\",\"size\":3}}");
        assert_eq!(
            d.list(b"/"),
            format!("[{},{},{}]", dir("sv00"), dir("sv01"), file("top"))
        );
        assert_eq!(
            d.list(b"/sv00/ab/"),
            format!("[{},{},{}]", dir("cd"), file("cd0"), dir("ef"))
        );
        assert_eq!(
            d.list(b"/sv00/ab/cd/"),
            format!("[{},{}]", file("x"), file("y"))
        );
        assert_eq!(d.list(b"/nothing/"), "[]");
    }
}

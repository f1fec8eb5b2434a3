//! Keys and values as text: hex keys given on the command line, and bytes printed so that
//! a line stays one line.

use crate::{Failure, Res, EXIT_USAGE};

/// The bytes of a key given on the command line: its UTF-8, or with `hex` its hex digits
/// (whitespace between them ignored).
pub fn key_bytes(key: &str, hex: bool) -> Res<Vec<u8>> {
    if !hex {
        return Ok(key.as_bytes().to_vec());
    }
    let digits: Vec<u8> = key.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if digits.len() % 2 != 0 {
        return Err(Failure(
            EXIT_USAGE,
            format!("'{key}' is not hex: odd number of digits"),
        ));
    }
    digits
        .chunks(2)
        .map(|p| {
            std::str::from_utf8(p)
                .ok()
                // from_str_radix takes a sign: "+f" is not two hex digits.
                .filter(|s| s.bytes().all(|b| b.is_ascii_hexdigit()))
                .and_then(|s| u8::from_str_radix(s, 16).ok())
                .ok_or_else(|| Failure(EXIT_USAGE, format!("'{key}' is not hex")))
        })
        .collect()
}

/// Lowercase hex digits, two a byte.
pub fn to_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Printable ASCII and space as is (backslash doubled), anything else (tabs and newlines
/// too, so a dump line stays one line) as \xNN.
pub fn escape(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len());
    for &c in b {
        match c {
            b'\\' => s.push_str("\\\\"),
            0x20..=0x7e => s.push(c as char),
            _ => s.push_str(&format!("\\x{c:02x}")),
        }
    }
    s
}

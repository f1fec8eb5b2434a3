//! The LOG file in the store directory (the seed's log module): one line per event,
//! `2026-11-21T08:00:00.123Z INFO message`, appended and never rewritten. Every line
//! also goes to the `log` crate, so an application's logger sees it too.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

use crate::error::{Error, Result};

/// The open LOG file.
pub struct LogFile {
    file: Mutex<File>,
}

impl LogFile {
    /// Opens (or creates) `path` for appending.
    pub fn open(path: &Path, file_mode: u32) -> Result<LogFile> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(file_mode)
            .open(path)
            .map_err(|e| Error::at_file(path, e))?;
        Ok(LogFile {
            file: Mutex::new(file),
        })
    }

    /// Appends one line at `level` and forwards it to the `log` crate. A failure to write
    /// the LOG never fails the operation that logs.
    pub fn event(&self, level: log::Level, msg: &str) {
        log::log!(target: "kvs", level, "{msg}");
        let line = format!("{} {:<5} {msg}\n", utc_now(), level);
        let _ = self.file.lock().write_all(line.as_bytes());
    }

    /// An INFO line.
    pub fn info(&self, msg: &str) {
        self.event(log::Level::Info, msg)
    }

    /// A WARN line.
    pub fn warn(&self, msg: &str) {
        self.event(log::Level::Warn, msg)
    }

    /// An ERROR line.
    pub fn error(&self, msg: &str) {
        self.event(log::Level::Error, msg)
    }
}

/// The current UTC time as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
fn utc_now() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn timestamp_has_the_documented_shape() {
        let t = super::utc_now();
        assert_eq!(t.len(), 24, "{t}");
        assert!(
            t.starts_with("20") && t.ends_with('Z') && &t[10..11] == "T",
            "{t}"
        );
    }
}

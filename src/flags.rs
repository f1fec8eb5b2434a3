//! The engine's options as command-line flags, for every program that opens a store from
//! the shell (the `kvs` tool, the benchmark harness, a server): [`StoreFlags`] with its
//! one mapping to [`Options`] ([`StoreFlags::apply`]), the `OPTIONS` file in which
//! `kvs create` keeps them, and one size syntax ([`parse_size`], [`format_bytes`]).
//!
//! Compiled only with the `cli` feature (it needs clap).

use std::num::IntErrorKind;
use std::path::Path;
use std::time::Duration;

use clap::{ArgAction, Args, ValueEnum};

use crate::options::{Durability, Options};

/// The units [`parse_size`] accepts, for error messages.
const UNITS: &str = "B, K/KiB, M/MiB, G/GiB, T/TiB (powers of 1024) or KB, MB, GB, TB \
                     (powers of 1000)";

/// Parses a size in bytes: a whole number, then optionally a unit: `B`; `K`/`KiB`,
/// `M`/`MiB`, `G`/`GiB`, `T`/`TiB` (powers of 1024); `KB`, `MB`, `GB`, `TB` (powers of
/// 1000). Units are case-insensitive; whitespace around the size and between number and
/// unit is allowed.
///
/// ```
/// use kvs::flags::parse_size;
/// assert_eq!(parse_size("64KiB"), Ok(65536));
/// assert_eq!(parse_size(" 1 gb "), Ok(1_000_000_000));
/// assert!(parse_size("1.5GiB").is_err());
/// ```
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let unit = unit.trim_start();
    if num.is_empty() {
        return Err(format!(
            "'{s}' is not a size: it must start with a whole number of bytes (e.g. 4096, \
             64KiB, 8MiB, 1GB)"
        ));
    }
    if unit.starts_with(['.', ',']) {
        return Err(format!(
            "'{s}': sizes are whole numbers; use a smaller unit (1536KiB, not 1.5MiB)"
        ));
    }
    let n: u64 = num.parse().map_err(|e: std::num::ParseIntError| {
        if *e.kind() == IntErrorKind::PosOverflow {
            format!("'{s}' is too large (at most {} bytes)", u64::MAX)
        } else {
            format!("'{s}' is not a size ({e})")
        }
    })?;
    let mult: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => return Err(format!("'{s}': unknown unit '{unit}' (use {UNITS})")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("'{s}' is too large (at most {} bytes)", u64::MAX))
}

/// A byte count for people: `512 B`, `1.5 KiB`, `256.0 MiB` (powers of 1024, one decimal).
pub fn format_bytes(n: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let (mut v, mut u) = (n as f64, 0);
    // 1023.95 and up would print as "1024.0" of the smaller unit.
    while v >= 1023.95 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// The name of the file in a store directory where `kvs create` keeps its flags, so that
/// later commands open the store the same way (a flag given to a later command wins).
/// Lines of `name = value`; the engine itself does not read it.
pub const OPTIONS_FILE: &str = "OPTIONS";

/// [`Durability`] as a flag value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DurabilityArg {
    /// fdatasync only at sync and checkpoints.
    None,
    /// fdatasync after every flush (the default).
    Batch,
    /// Every put and delete is durable when it returns.
    Always,
}

impl From<DurabilityArg> for Durability {
    fn from(d: DurabilityArg) -> Durability {
        match d {
            DurabilityArg::None => Durability::None,
            DurabilityArg::Batch => Durability::Batch,
            DurabilityArg::Always => Durability::Always,
        }
    }
}

/// The engine options, as flags (`#[command(flatten)]` them). A flag not given leaves the
/// option as the program set it (the engine's default unless the program chose another).
/// The flags are `global`, so that in a tool with subcommands they may follow any of them.
#[derive(Args, Clone, Debug, Default, PartialEq)]
pub struct StoreFlags {
    /// Ring write buffer size (e.g. 256MiB; a multiple of 4KiB).
    #[arg(long, value_parser = parse_size, global = true)]
    pub buffer_size: Option<u64>,
    /// Flush as soon as this much waits in the ring (e.g. 8MiB).
    #[arg(long, value_parser = parse_size, global = true)]
    pub flush_horizon: Option<u64>,
    /// Flush at least this often, in milliseconds.
    #[arg(long, global = true)]
    pub flush_interval_ms: Option<u64>,
    /// Records the store is expected to hold (sizes the index when it is created).
    #[arg(long, global = true)]
    pub expected_records: Option<u64>,
    /// Largest value accepted (at most 256MiB; fixed at creation; larger than 5MiB needs
    /// --buffer-size and --segment-size raised to hold one record).
    #[arg(long, value_parser = parse_size, global = true)]
    pub max_value_size: Option<u64>,
    /// When writes are durable.
    #[arg(long, value_enum, global = true)]
    pub durability: Option<DurabilityArg>,
    /// Read and write disk_file through the page cache instead of O_DIRECT (the same as
    /// --direct-io false --direct-reads false).
    #[arg(long, global = true, conflicts_with_all = ["direct_io", "direct_reads"])]
    pub no_direct_io: bool,
    /// Write disk_file with O_DIRECT: true or false (the engine's default: true).
    #[arg(long, global = true, action = ArgAction::Set, value_name = "BOOL")]
    pub direct_io: Option<bool>,
    /// Read disk_file with O_DIRECT: true or false (the engine's default: true).
    #[arg(long, global = true, action = ArgAction::Set, value_name = "BOOL")]
    pub direct_reads: Option<bool>,
    /// Log segment size, the unit of space reclamation (used when the store is created;
    /// e.g. 256MiB).
    #[arg(long, value_parser = parse_size, global = true)]
    pub segment_size: Option<u64>,
    /// Background reclaimer: the dead share of the closed segments that starts it
    /// (0.01 to 0.9; the engine's default: 0.2).
    #[arg(long, global = true, value_name = "RATIO")]
    pub reclaim_threshold: Option<f64>,
    /// Background reclaimer: the dead share above which it ignores --reclaim-rate and paces
    /// puts (the engine's default: 0.3, or --reclaim-threshold if that is higher).
    #[arg(long, global = true, value_name = "RATIO")]
    pub reclaim_urgent: Option<f64>,
    /// Background reclaimer: bytes per second it may rewrite below the urgent share
    /// (0: no limit; the engine's default: 256MiB).
    #[arg(long, value_parser = parse_size, global = true)]
    pub reclaim_rate: Option<u64>,
    /// Write a checkpoint (IMAGE_file) after this many bytes appended to the log
    /// (0: never for that reason; the engine's default: 256MiB).
    #[arg(long, value_parser = parse_size, global = true)]
    pub checkpoint_bytes: Option<u64>,
    /// Write a checkpoint at least this often while anything is written, in milliseconds
    /// (0: never for that reason; the engine's default: 60000).
    #[arg(long, global = true)]
    pub checkpoint_interval_ms: Option<u64>,
}

/// A size for an option held in a `usize`; one too large for this machine stays too large
/// (the engine then refuses it) instead of wrapping.
fn to_usize(v: u64) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

impl StoreFlags {
    /// Whether disk_file is written with O_DIRECT, if a flag says.
    pub fn writes_direct(&self) -> Option<bool> {
        if self.no_direct_io {
            Some(false)
        } else {
            self.direct_io
        }
    }

    /// Whether disk_file is read with O_DIRECT, if a flag says.
    pub fn reads_direct(&self) -> Option<bool> {
        if self.no_direct_io {
            Some(false)
        } else {
            self.direct_reads
        }
    }

    /// `opts` with every option a flag was given for set from it: the one mapping from
    /// flags to [`Options`]. A `--reclaim-threshold` above the urgent share (and no
    /// `--reclaim-urgent`) raises the urgent share to it.
    pub fn apply(&self, opts: Options) -> Options {
        // Destructured, so that a new flag does not compile until it is mapped here.
        let StoreFlags {
            buffer_size,
            flush_horizon,
            flush_interval_ms,
            expected_records,
            max_value_size,
            durability,
            no_direct_io: _,
            direct_io: _,
            direct_reads: _,
            segment_size,
            reclaim_threshold,
            reclaim_urgent,
            reclaim_rate,
            checkpoint_bytes,
            checkpoint_interval_ms,
        } = *self;
        fn set(o: Options, v: Option<u64>, f: fn(Options, u64) -> Options) -> Options {
            match v {
                Some(v) => f(o, v),
                None => o,
            }
        }
        let mut o = opts;
        o = set(o, buffer_size, |o, v| o.buffer_size(to_usize(v)));
        o = set(o, flush_horizon, |o, v| o.flush_horizon(to_usize(v)));
        o = set(o, flush_interval_ms, |o, v| {
            o.flush_interval(Duration::from_millis(v))
        });
        o = set(o, expected_records, Options::expected_records);
        o = set(o, max_value_size, |o, v| o.max_value_size(to_usize(v)));
        o = set(o, segment_size, Options::segment_size);
        o = set(o, reclaim_rate, Options::reclaim_rate);
        o = set(o, checkpoint_bytes, Options::checkpoint_bytes);
        o = set(o, checkpoint_interval_ms, |o, v| {
            o.checkpoint_interval(Duration::from_millis(v))
        });
        if let Some(d) = durability {
            o = o.durability(d.into());
        }
        if let Some(on) = self.writes_direct() {
            o = o.direct_io(on);
        }
        if let Some(on) = self.reads_direct() {
            o = o.direct_reads(on);
        }
        if let Some(t) = reclaim_threshold {
            let urgent = reclaim_urgent.unwrap_or(o.get_reclaim_urgent().max(t));
            o = o.reclaim_threshold(t).reclaim_urgent(urgent);
        } else if let Some(u) = reclaim_urgent {
            o = o.reclaim_urgent(u);
        }
        o
    }

    /// These flags, with those not given taken from `saved` (a flag given wins).
    pub fn or(&self, saved: &StoreFlags) -> StoreFlags {
        StoreFlags {
            buffer_size: self.buffer_size.or(saved.buffer_size),
            flush_horizon: self.flush_horizon.or(saved.flush_horizon),
            flush_interval_ms: self.flush_interval_ms.or(saved.flush_interval_ms),
            expected_records: self.expected_records.or(saved.expected_records),
            max_value_size: self.max_value_size.or(saved.max_value_size),
            durability: self.durability.or(saved.durability),
            // --no-direct-io is shorthand for the two below; each is merged on its own.
            no_direct_io: false,
            direct_io: self.writes_direct().or(saved.writes_direct()),
            direct_reads: self.reads_direct().or(saved.reads_direct()),
            segment_size: self.segment_size.or(saved.segment_size),
            reclaim_threshold: self.reclaim_threshold.or(saved.reclaim_threshold),
            reclaim_urgent: self.reclaim_urgent.or(saved.reclaim_urgent),
            reclaim_rate: self.reclaim_rate.or(saved.reclaim_rate),
            checkpoint_bytes: self.checkpoint_bytes.or(saved.checkpoint_bytes),
            checkpoint_interval_ms: self.checkpoint_interval_ms.or(saved.checkpoint_interval_ms),
        }
    }

    /// The flags given, as `(name, value)` in the OPTIONS file's spelling (sizes in bytes).
    fn settings(&self) -> Vec<(&'static str, String)> {
        fn text<T: ToString>(v: Option<T>) -> Option<String> {
            v.map(|v| v.to_string())
        }
        [
            ("buffer_size", text(self.buffer_size)),
            ("flush_horizon", text(self.flush_horizon)),
            ("flush_interval_ms", text(self.flush_interval_ms)),
            ("expected_records", text(self.expected_records)),
            ("max_value_size", text(self.max_value_size)),
            ("segment_size", text(self.segment_size)),
            (
                "durability",
                self.durability.map(|d| format!("{d:?}").to_lowercase()),
            ),
            (
                "no_direct_io",
                self.no_direct_io.then(|| "true".to_string()),
            ),
            ("direct_io", text(self.direct_io)),
            ("direct_reads", text(self.direct_reads)),
            ("reclaim_threshold", text(self.reclaim_threshold)),
            ("reclaim_urgent", text(self.reclaim_urgent)),
            ("reclaim_rate", text(self.reclaim_rate)),
            ("checkpoint_bytes", text(self.checkpoint_bytes)),
            ("checkpoint_interval_ms", text(self.checkpoint_interval_ms)),
        ]
        .into_iter()
        .filter_map(|(k, v)| Some((k, v?)))
        .collect()
    }

    /// Sets the flag `name` (the OPTIONS file's spelling) from `value`. Sizes may also be
    /// written with a unit, as on the command line.
    fn set(&mut self, name: &str, value: &str) -> Result<(), String> {
        fn num<T: std::str::FromStr>(v: &str) -> Result<Option<T>, String>
        where
            T::Err: std::fmt::Display,
        {
            v.parse().map(Some).map_err(|e: T::Err| e.to_string())
        }
        let size = |v: &str| parse_size(v).map(Some);
        match name {
            "buffer_size" => self.buffer_size = size(value)?,
            "flush_horizon" => self.flush_horizon = size(value)?,
            "flush_interval_ms" => self.flush_interval_ms = num(value)?,
            "expected_records" => self.expected_records = num(value)?,
            "max_value_size" => self.max_value_size = size(value)?,
            "segment_size" => self.segment_size = size(value)?,
            "durability" => self.durability = Some(DurabilityArg::from_str(value, true)?),
            "no_direct_io" => self.no_direct_io = num(value)?.unwrap_or_default(),
            "direct_io" => self.direct_io = num(value)?,
            "direct_reads" => self.direct_reads = num(value)?,
            "reclaim_threshold" => self.reclaim_threshold = num(value)?,
            "reclaim_urgent" => self.reclaim_urgent = num(value)?,
            "reclaim_rate" => self.reclaim_rate = size(value)?,
            "checkpoint_bytes" => self.checkpoint_bytes = size(value)?,
            "checkpoint_interval_ms" => self.checkpoint_interval_ms = num(value)?,
            _ => return Err("unknown setting".into()),
        }
        Ok(())
    }

    /// Writes the flags given to `dir`/[`OPTIONS_FILE`] (as `kvs create` does).
    pub fn save(&self, dir: &Path) -> Result<(), String> {
        let mut text =
            String::from("# kvs tool settings, written by `kvs create`; flags override them\n");
        for (k, v) in self.settings() {
            text.push_str(&format!("{k} = {v}\n"));
        }
        let path = dir.join(OPTIONS_FILE);
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The flags saved in `dir`/[`OPTIONS_FILE`]; None if there is no such file. An error
    /// names the file and the line it cannot use, or why it cannot be read (a file that
    /// exists but cannot be read is not taken for none: the store would be opened with
    /// other settings than it was created with).
    pub fn load(dir: &Path) -> Result<Option<StoreFlags>, String> {
        let path = dir.join(OPTIONS_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            // No such file, or no such directory (the caller says what is wrong with it).
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                ) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let mut f = StoreFlags::default();
        for line in text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            let bad = |why: String| format!("{}: '{line}': {why}", path.display());
            let (k, v) = line
                .split_once('=')
                .ok_or_else(|| bad("expected name = value".into()))?;
            f.set(k.trim(), v.trim()).map_err(bad)?;
        }
        Ok(Some(f))
    }

    /// These flags, with those not given taken from the ones saved in `dir` (if any).
    pub fn with_saved(&self, dir: &Path) -> Result<StoreFlags, String> {
        Ok(match StoreFlags::load(dir)? {
            Some(saved) => self.or(&saved),
            None => self.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn sizes_in_every_unit() {
        let cases: &[(&str, u64)] = &[
            ("0", 0),
            ("4096", 4096),
            ("7B", 7),
            ("3K", 3 << 10),
            ("3KiB", 3 << 10),
            ("5M", 5 << 20),
            ("5MiB", 5 << 20),
            ("2G", 2 << 30),
            ("2GiB", 2 << 30),
            ("1T", 1 << 40),
            ("1TiB", 1 << 40),
            ("3KB", 3_000),
            ("5MB", 5_000_000),
            ("2GB", 2_000_000_000),
            ("1TB", 1_000_000_000_000),
            ("18446744073709551615", u64::MAX),
            ("16777215TiB", 16_777_215 << 40),
        ];
        for &(s, want) in cases {
            assert_eq!(parse_size(s), Ok(want), "{s}");
        }
    }

    #[test]
    fn units_ignore_case_and_whitespace() {
        for s in [
            "64kib", "64KIB", "64Kib", "64k", " 64KiB", "64KiB\t", " 64 KiB ", "64  k",
        ] {
            assert_eq!(parse_size(s), Ok(64 << 10), "{s:?}");
        }
        assert_eq!(parse_size("1gb"), Ok(1_000_000_000));
        assert_eq!(parse_size("1Gb"), Ok(1_000_000_000));
        assert_eq!(parse_size(" 12 b"), Ok(12));
    }

    #[track_caller]
    fn refused(s: &str, needle: &str) {
        match parse_size(s) {
            Ok(n) => panic!("{s:?} parsed as {n}"),
            Err(e) => assert!(e.contains(needle), "{s:?}: {e}"),
        }
    }

    #[test]
    fn bad_numbers_are_refused() {
        refused("", "not a size");
        refused("   ", "not a size");
        refused("KiB", "not a size");
        refused("-1", "not a size");
        refused("+1", "not a size");
        refused("1.5GiB", "whole number");
        refused("1,5GiB", "whole number");
        refused("0x10", "unknown unit 'x10'");
    }

    #[test]
    fn unknown_units_are_refused() {
        refused("5XB", "unknown unit 'XB'");
        refused("5 KiBs", "unknown unit 'KiBs'");
        refused("5PiB", "unknown unit 'PiB'");
        refused("5 K B", "unknown unit");
        refused("5KiB 3", "unknown unit");
        refused("5µB", "unknown unit 'µB'");
        // The message lists the units that are accepted.
        refused("5x", "KiB");
    }

    #[test]
    fn overflow_is_refused() {
        refused("18446744073709551616", "too large");
        refused("99999999999999999999999", "too large");
        refused("16777216TiB", "too large");
        refused("17179869184GiB", "too large");
        refused("18446744073709552KB", "too large");
        refused("18446744073709552TB", "too large");
    }

    #[test]
    fn bytes_for_people() {
        let cases: &[(u64, &str)] = &[
            (0, "0 B"),
            (1, "1 B"),
            (1023, "1023 B"),
            (1024, "1.0 KiB"),
            (1536, "1.5 KiB"),
            (100 << 10, "100.0 KiB"),
            ((1 << 20) - 1, "1.0 MiB"),
            (5 << 20, "5.0 MiB"),
            (256 << 20, "256.0 MiB"),
            (3 << 30, "3.0 GiB"),
            (1 << 40, "1.0 TiB"),
            (1 << 50, "1.0 PiB"),
            (u64::MAX, "16.0 EiB"),
        ];
        for &(n, want) in cases {
            assert_eq!(format_bytes(n), want, "{n}");
        }
    }

    /// A program with the flags, as the tools have them.
    #[derive(Parser, Debug)]
    struct Prog {
        #[command(flatten)]
        flags: StoreFlags,
    }

    fn parse(args: &[&str]) -> Result<StoreFlags, clap::Error> {
        Prog::try_parse_from(std::iter::once("prog").chain(args.iter().copied())).map(|p| p.flags)
    }

    /// Every flag set (a literal: a new flag must be added here, and then the round trip
    /// and merge tests below cover it).
    fn every_flag() -> StoreFlags {
        StoreFlags {
            buffer_size: Some(16 << 20),
            flush_horizon: Some(1 << 20),
            flush_interval_ms: Some(5),
            expected_records: Some(1000),
            max_value_size: Some(64 << 10),
            durability: Some(DurabilityArg::Always),
            no_direct_io: false,
            direct_io: Some(false),
            direct_reads: Some(true),
            segment_size: Some(1 << 20),
            reclaim_threshold: Some(0.25),
            reclaim_urgent: Some(0.5),
            reclaim_rate: Some(1_000_000),
            checkpoint_bytes: Some(64 << 20),
            checkpoint_interval_ms: Some(2500),
        }
    }

    #[test]
    fn the_parser_is_sound() {
        use clap::CommandFactory;
        Prog::command().debug_assert();
    }

    #[test]
    fn every_flag_parses() {
        let f = parse(&[
            "--buffer-size",
            "16MiB",
            "--flush-horizon",
            "1M",
            "--flush-interval-ms",
            "5",
            "--expected-records",
            "1000",
            "--max-value-size",
            "64KiB",
            "--durability",
            "always",
            "--direct-io",
            "false",
            "--direct-reads",
            "true",
            "--segment-size",
            "1MiB",
            "--reclaim-threshold",
            "0.25",
            "--reclaim-urgent",
            "0.5",
            "--reclaim-rate",
            "1MB",
            "--checkpoint-bytes",
            "64MiB",
            "--checkpoint-interval-ms",
            "2500",
        ])
        .unwrap();
        assert_eq!(f, every_flag());
        assert_eq!(parse(&[]).unwrap(), StoreFlags::default());
        assert!(parse(&["--no-direct-io"]).unwrap().no_direct_io);
    }

    #[test]
    fn bad_flag_values_are_errors() {
        let msg = |args: &[&str]| parse(args).unwrap_err().to_string();
        assert!(msg(&["--buffer-size", "16XB"]).contains("unknown unit 'XB'"));
        assert!(msg(&["--segment-size", "1.5MiB"]).contains("whole number"));
        assert!(msg(&["--durability", "sometimes"]).contains("sometimes"));
        assert!(msg(&["--direct-reads", "maybe"]).contains("maybe"));
        assert!(msg(&["--reclaim-threshold", "lots"]).contains("lots"));
        // --no-direct-io says the same as the other two: not both at once.
        for other in ["--direct-io", "--direct-reads"] {
            let e = parse(&["--no-direct-io", other, "true"]).unwrap_err();
            assert_eq!(e.kind(), clap::error::ErrorKind::ArgumentConflict);
        }
    }

    #[test]
    fn no_flags_change_nothing() {
        let base = Options::default().buffer_size(1 << 20).direct_io(false);
        let o = StoreFlags::default().apply(base.clone());
        assert_eq!(format!("{o:?}"), format!("{base:?}"));
    }

    #[test]
    fn every_flag_reaches_its_option() {
        let o = every_flag().apply(Options::default());
        assert_eq!(o.get_buffer_size(), 16 << 20);
        assert_eq!(o.get_flush_horizon(), 1 << 20);
        assert_eq!(o.get_flush_interval(), Duration::from_millis(5));
        assert_eq!(o.get_expected_records(), 1000);
        assert_eq!(o.get_max_value_size(), 64 << 10);
        assert_eq!(o.get_durability(), Durability::Always);
        assert!(!o.get_direct_io());
        assert!(o.get_direct_reads());
        assert_eq!(o.get_segment_size(), 1 << 20);
        assert_eq!(o.get_reclaim_threshold(), 0.25);
        assert_eq!(o.get_reclaim_urgent(), 0.5);
        assert_eq!(o.get_reclaim_rate(), 1_000_000);
        assert_eq!(o.get_checkpoint_bytes(), 64 << 20);
        assert_eq!(o.get_checkpoint_interval(), Duration::from_millis(2500));
        assert!(o.validate().is_ok(), "{:?}", o.validate());
        for (d, want) in [
            (DurabilityArg::None, Durability::None),
            (DurabilityArg::Batch, Durability::Batch),
        ] {
            let f = StoreFlags {
                durability: Some(d),
                ..StoreFlags::default()
            };
            assert_eq!(f.apply(Options::default()).get_durability(), want);
        }
    }

    #[test]
    fn no_direct_io_turns_off_direct_writes_and_reads() {
        let f = StoreFlags {
            no_direct_io: true,
            ..StoreFlags::default()
        };
        let o = f.apply(Options::default());
        assert!(!o.get_direct_io() && !o.get_direct_reads());
        let f = StoreFlags {
            direct_reads: Some(false),
            ..StoreFlags::default()
        };
        let o = f.apply(Options::default());
        assert!(o.get_direct_io() && !o.get_direct_reads());
    }

    #[test]
    fn a_reclaim_threshold_above_the_urgent_share_raises_it() {
        let with = |t: Option<f64>, u: Option<f64>| {
            let f = StoreFlags {
                reclaim_threshold: t,
                reclaim_urgent: u,
                ..StoreFlags::default()
            };
            let o = f.apply(Options::default());
            (o.get_reclaim_threshold(), o.get_reclaim_urgent())
        };
        let urgent = Options::default().get_reclaim_urgent();
        assert_eq!(with(Some(0.1), None), (0.1, urgent));
        assert_eq!(with(Some(0.6), None), (0.6, 0.6));
        assert_eq!(with(Some(0.6), Some(0.8)), (0.6, 0.8));
        assert_eq!(with(None, Some(0.8)).1, 0.8);
    }

    #[test]
    fn sizes_too_large_for_the_engine_are_refused_at_open_not_wrapped() {
        let f = StoreFlags {
            buffer_size: Some(u64::MAX),
            ..StoreFlags::default()
        };
        let o = f.apply(Options::default());
        assert_eq!(o.get_buffer_size(), usize::MAX);
        assert!(o.validate().is_err());
    }

    struct Dir(std::path::PathBuf);
    impl Dir {
        fn new(tag: &str) -> Dir {
            let p = std::env::temp_dir().join(format!("kvs-flags-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            Dir(p)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn options_file_round_trip() {
        let d = Dir::new("round-trip");
        assert_eq!(StoreFlags::load(&d.0), Ok(None));
        every_flag().save(&d.0).unwrap();
        assert_eq!(StoreFlags::load(&d.0), Ok(Some(every_flag())));
        let f = StoreFlags {
            no_direct_io: true,
            ..StoreFlags::default()
        };
        f.save(&d.0).unwrap();
        assert_eq!(StoreFlags::load(&d.0), Ok(Some(f)));
        StoreFlags::default().save(&d.0).unwrap();
        assert_eq!(StoreFlags::load(&d.0), Ok(Some(StoreFlags::default())));
    }

    #[test]
    fn options_file_as_earlier_versions_wrote_it() {
        let d = Dir::new("earlier");
        let text = "# kvs tool settings, written by `kvs create`; flags override them\n\
                    buffer_size = 25165824\nsegment_size = 1048576\ndurability = always\n\
                    no_direct_io = true\n";
        std::fs::write(d.0.join(OPTIONS_FILE), text).unwrap();
        let f = StoreFlags::load(&d.0).unwrap().unwrap();
        assert_eq!(
            f,
            StoreFlags {
                buffer_size: Some(24 << 20),
                segment_size: Some(1 << 20),
                durability: Some(DurabilityArg::Always),
                no_direct_io: true,
                ..StoreFlags::default()
            }
        );
        // What this version writes for the same flags is what earlier ones wrote.
        f.save(&d.0).unwrap();
        let mut lines: Vec<String> = std::fs::read_to_string(d.0.join(OPTIONS_FILE))
            .unwrap()
            .lines()
            .map(String::from)
            .collect();
        let mut want: Vec<String> = text.lines().map(String::from).collect();
        lines.sort();
        want.sort();
        assert_eq!(lines, want);
    }

    #[test]
    fn options_file_sizes_may_have_units() {
        let d = Dir::new("units");
        std::fs::write(
            d.0.join(OPTIONS_FILE),
            "buffer_size = 16MiB\n  reclaim_rate=1GB  \n\n# note\n",
        )
        .unwrap();
        let f = StoreFlags::load(&d.0).unwrap().unwrap();
        assert_eq!(
            (f.buffer_size, f.reclaim_rate),
            (Some(16 << 20), Some(1_000_000_000))
        );
    }

    #[test]
    fn options_file_errors_name_the_line() {
        let d = Dir::new("errors");
        for (text, needle) in [
            ("durability = sometimes\n", "'durability = sometimes'"),
            ("buffer_size = lots\n", "'buffer_size = lots'"),
            ("colour = blue\n", "unknown setting"),
            ("just words\n", "expected name = value"),
            ("no_direct_io = yes\n", "'no_direct_io = yes'"),
        ] {
            std::fs::write(d.0.join(OPTIONS_FILE), text).unwrap();
            let e = StoreFlags::load(&d.0).unwrap_err();
            assert!(
                e.contains(needle) && e.contains(OPTIONS_FILE),
                "{text}: {e}"
            );
        }
    }

    #[test]
    fn a_flag_given_wins_over_a_saved_one() {
        let d = Dir::new("merge");
        let saved = StoreFlags {
            buffer_size: Some(24 << 20),
            durability: Some(DurabilityArg::Always),
            no_direct_io: true,
            reclaim_rate: Some(5),
            ..StoreFlags::default()
        };
        saved.save(&d.0).unwrap();
        let given = StoreFlags {
            durability: Some(DurabilityArg::None),
            direct_reads: Some(true),
            ..StoreFlags::default()
        };
        let f = given.with_saved(&d.0).unwrap();
        assert_eq!(f.buffer_size, Some(24 << 20));
        assert_eq!(f.durability, Some(DurabilityArg::None));
        assert_eq!(f.reclaim_rate, Some(5));
        assert_eq!(
            (f.writes_direct(), f.reads_direct()),
            (Some(false), Some(true))
        );
        // Without a saved file the flags given are all there is.
        let empty = Dir::new("merge-none");
        assert_eq!(given.with_saved(&empty.0).unwrap(), given);
        // Merging with no flags given keeps what was saved.
        let f = StoreFlags::default().or(&every_flag());
        assert_eq!(f, every_flag());
    }
}

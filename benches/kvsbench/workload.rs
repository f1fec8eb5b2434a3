//! What the benchmark puts: keys, value sizes, value bytes, key orders.

use std::sync::atomic::{AtomicU32, Ordering};

use kvs::flags::parse_size;

/// A value-size distribution, parsed from `100KiB`, `1KiB..5MiB` or `lognormal:100KiB:5MiB`.
#[derive(Clone, Debug)]
pub enum SizeDist {
    Fixed(usize),
    Uniform(usize, usize),
    /// Log-normal with this mean, capped; sigma 1.
    LogNormal {
        mean: usize,
        cap: usize,
    },
}

impl SizeDist {
    pub fn parse(s: &str) -> Result<SizeDist, String> {
        if let Some(rest) = s.strip_prefix("lognormal:") {
            let (mean, cap) = rest.split_once(':').ok_or("lognormal:MEAN:CAP")?;
            let (mean, cap) = (parse_size(mean)? as usize, parse_size(cap)? as usize);
            if mean == 0 || cap < mean {
                return Err("lognormal needs 0 < MEAN <= CAP".into());
            }
            return Ok(SizeDist::LogNormal { mean, cap });
        }
        if let Some((a, b)) = s.split_once("..") {
            let (a, b) = (parse_size(a)? as usize, parse_size(b)? as usize);
            if a > b {
                return Err(format!("empty range '{s}'"));
            }
            return Ok(SizeDist::Uniform(a, b));
        }
        Ok(SizeDist::Fixed(parse_size(s)? as usize))
    }

    /// The size of version `version` of key `k`: deterministic, so readers can check.
    pub fn size(&self, seed: u64, k: u64, version: u32) -> usize {
        let r = mix(seed ^ k.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (version as u64) << 40);
        match *self {
            SizeDist::Fixed(n) => n,
            SizeDist::Uniform(a, b) => a + (r % (b as u64 - a as u64 + 1)) as usize,
            SizeDist::LogNormal { mean, cap } => {
                // Box-Muller from two uniforms; sigma = 1, mu chosen so E[X] = mean.
                let u1 = ((r >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
                let u2 = (mix(r) >> 11) as f64 / (1u64 << 53) as f64;
                let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
                let mu = (mean as f64).ln() - 0.5;
                ((mu + z).exp() as usize).min(cap)
            }
        }
    }

    /// The mean size (for sizing the raw baseline and the free-space check).
    pub fn mean(&self) -> f64 {
        match *self {
            SizeDist::Fixed(n) => n as f64,
            SizeDist::Uniform(a, b) => (a + b) as f64 / 2.0,
            SizeDist::LogNormal { mean, .. } => mean as f64,
        }
    }

    pub fn max(&self) -> usize {
        match *self {
            SizeDist::Fixed(n) => n,
            SizeDist::Uniform(_, b) => b,
            SizeDist::LogNormal { cap, .. } => cap,
        }
    }
}

/// splitmix64's finaliser.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The key of record `k`: 16 ASCII digits.
pub fn key(k: u64) -> [u8; 16] {
    let mut b = [b'0'; 16];
    let mut n = k;
    for i in (0..16).rev() {
        b[i] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    b
}

/// Random bytes that values are sliced from, so no time goes into making values.
pub struct ValuePool {
    bytes: Vec<u8>,
}

impl ValuePool {
    pub fn new(max_value: usize, seed: u64) -> ValuePool {
        let len = max_value + (16 << 20);
        let mut bytes = Vec::with_capacity(len + 8);
        let mut x = seed | 1;
        while bytes.len() < len {
            x = mix(x);
            bytes.extend_from_slice(&x.to_le_bytes());
        }
        ValuePool { bytes }
    }

    /// The bytes of version `version` of key `k`, `len` long.
    pub fn value(&self, k: u64, version: u32, len: usize) -> &[u8] {
        let room = (self.bytes.len() - len) as u64;
        let start = mix(k ^ (version as u64) << 48) % (room + 1) / 8 * 8;
        &self.bytes[start as usize..start as usize + len]
    }
}

/// The current version of each key (`DELETED` once deleted), so every get can be checked.
pub struct Versions(Vec<AtomicU32>);

pub const DELETED: u32 = u32::MAX;

impl Versions {
    pub fn new(n: u64) -> Versions {
        Versions((0..n).map(|_| AtomicU32::new(DELETED)).collect())
    }
    pub fn get(&self, k: u64) -> u32 {
        self.0[k as usize].load(Ordering::Acquire)
    }
    pub fn set(&self, k: u64, v: u32) {
        self.0[k as usize].store(v, Ordering::Release)
    }
}

/// A permutation of 0..n (Fisher-Yates with a seeded generator).
pub fn shuffled(n: u64, seed: u64) -> Vec<u64> {
    let mut v: Vec<u64> = (0..n).collect();
    let mut x = seed;
    for i in (1..v.len()).rev() {
        x = mix(x);
        v.swap(i, (x % (i as u64 + 1)) as usize);
    }
    v
}

/// Which keys a phase's overwrites hit.
#[derive(Clone, Debug)]
pub enum KeyDist {
    Uniform,
    /// Zipf with this exponent over each writer's keys (rank 1 the most frequent); ranks
    /// are scattered over the keys so hot keys are not neighbours.
    Zipf(f64),
}

impl KeyDist {
    pub fn parse(s: &str) -> Result<KeyDist, String> {
        match s.split_once(':') {
            None if s == "uniform" => Ok(KeyDist::Uniform),
            Some(("zipf", e)) => match e.parse::<f64>() {
                Ok(e) if e > 0.0 && e < 10.0 => Ok(KeyDist::Zipf(e)),
                _ => Err(format!(
                    "'{s}': zipf:S takes an exponent S between 0 and 10"
                )),
            },
            _ => Err(format!("'{s}': key distributions are uniform or zipf:S")),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            KeyDist::Uniform => "uniform random".into(),
            KeyDist::Zipf(e) => format!("Zipf {e} (skewed)"),
        }
    }
}

/// Draws ranks 0..n from a Zipf distribution by inverting its cumulative weights.
pub struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    pub fn new(n: u64, exponent: f64) -> Zipf {
        let mut cdf = Vec::with_capacity(n as usize);
        let mut sum = 0.0;
        for r in 1..=n {
            sum += 1.0 / (r as f64).powf(exponent);
            cdf.push(sum);
        }
        for c in &mut cdf {
            *c /= sum;
        }
        Zipf { cdf }
    }

    /// The rank for the random 64 bits `x`.
    pub fn rank(&self, x: u64) -> u64 {
        let u = (x >> 11) as f64 / (1u64 << 53) as f64;
        self.cdf.partition_point(|&c| c < u).min(self.cdf.len() - 1) as u64
    }
}

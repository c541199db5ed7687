//! YCSB's core workloads, as YCSB's `CoreWorkload` defines them: operation
//! mixes, key choosers (uniform, scrambled zipfian with θ = 0.99, latest),
//! hashed key names (`user` + FNV-1a 64 of the key number), records of
//! `field0…` with random printable values, and the insert key sequence
//! whose reads only ever see acknowledged inserts.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use rand::Rng;

/// YCSB's Zipfian constant.
pub const ZIPFIAN_THETA: f64 = 0.99;
/// Items of YCSB's scrambled zipfian generator, and ζ(n, 0.99) for it.
const SCRAMBLED_ITEMS: u64 = 10_000_000_000;
const SCRAMBLED_ZETAN: f64 = 26.469_028_201_783_02;

/// One operation of a workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Op {
    /// Read a whole record.
    Read,
    /// Write one field of a record.
    Update,
    /// Insert a new record.
    Insert,
    /// Read up to N records from a start key.
    Scan,
    /// Read a record, then write one field of it.
    ReadModifyWrite,
}

impl Op {
    /// Lower-case name, as in YCSB's output.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Update => "update",
            Self::Insert => "insert",
            Self::Scan => "scan",
            Self::ReadModifyWrite => "read-modify-write",
        }
    }
}

/// How keys are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Distribution {
    /// Every existing key equally often.
    Uniform,
    /// YCSB's scrambled zipfian (θ = 0.99): a few hot keys spread over the key space.
    Zipfian,
    /// The most recently inserted keys are the hottest (zipfian by recency).
    Latest,
}

impl Distribution {
    /// Name used on the command line.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Uniform => "uniform",
            Self::Zipfian => "zipfian",
            Self::Latest => "latest",
        }
    }

    /// Parses a command-line name.
    #[must_use]
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "uniform" => Some(Self::Uniform),
            "zipfian" => Some(Self::Zipfian),
            "latest" => Some(Self::Latest),
            _ => None,
        }
    }
}

/// A workload: its mix and key distribution.
#[derive(Debug, Clone, PartialEq)]
pub struct Workload {
    /// Letter (a–f) or a custom name.
    pub name: String,
    /// Operations and their proportions (summing to 1).
    pub mix: Vec<(Op, f64)>,
    /// Key distribution for reads, updates and scans.
    pub distribution: Distribution,
    /// Longest scan (scan lengths are uniform in 1..=max).
    pub scan_length_max: usize,
}

impl Workload {
    /// YCSB's core workload `letter` (a–f), with its standard mix and
    /// distribution.
    #[must_use]
    pub fn core(letter: &str) -> Option<Self> {
        let (mix, distribution) = match letter.to_ascii_lowercase().as_str() {
            "a" => (vec![(Op::Read, 0.5), (Op::Update, 0.5)], Distribution::Zipfian),
            "b" => (vec![(Op::Read, 0.95), (Op::Update, 0.05)], Distribution::Zipfian),
            "c" => (vec![(Op::Read, 1.0)], Distribution::Zipfian),
            "d" => (vec![(Op::Read, 0.95), (Op::Insert, 0.05)], Distribution::Latest),
            "e" => (vec![(Op::Scan, 0.95), (Op::Insert, 0.05)], Distribution::Zipfian),
            "f" => (vec![(Op::Read, 0.5), (Op::ReadModifyWrite, 0.5)], Distribution::Zipfian),
            _ => return None,
        };
        Some(Self { name: letter.to_ascii_lowercase(), mix, distribution, scan_length_max: 100 })
    }

    /// The same workload with another key distribution.
    #[must_use]
    pub fn with_distribution(mut self, distribution: Distribution) -> Self {
        self.distribution = distribution;
        self
    }

    /// Picks the next operation.
    pub fn next_op(&self, rng: &mut impl Rng) -> Op {
        let mut u: f64 = rng.random();
        for (op, share) in &self.mix {
            if u < *share {
                return *op;
            }
            u -= share;
        }
        self.mix.last().map_or(Op::Read, |(op, _)| *op)
    }

    /// Whether the run inserts new records.
    #[must_use]
    pub fn inserts(&self) -> f64 {
        self.mix.iter().filter(|(op, _)| *op == Op::Insert).map(|(_, share)| share).sum()
    }

    /// The inserts a run phase of `operations` (or, for a phase bounded by
    /// time, [`OPERATIONS_ASSUMED`]) is expected to make, as YCSB reckons
    /// them (`operationcount × insertproportion`): the key chooser's space
    /// is the records plus twice this, and a draw above the keys inserted so
    /// far is drawn again. A workload without inserts expects none, so its
    /// keys are drawn once each.
    #[must_use]
    pub fn expected_inserts(&self, operations: Option<u64>) -> u64 {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]
        let inserts = (operations.unwrap_or(OPERATIONS_ASSUMED) as f64 * self.inserts()) as u64;
        inserts
    }
}

/// The operations a run phase bounded by time, not by `--operations`, is
/// assumed to make, to size its key chooser (YCSB sizes it from
/// `operationcount`).
pub const OPERATIONS_ASSUMED: u64 = 1_000_000;

/// YCSB's `Utils.fnvhash64`: FNV-1a over the 8 bytes of `value`, made non-negative.
#[must_use]
pub fn fnv_hash64(value: u64) -> u64 {
    const OFFSET_BASIS: u64 = 0xCBF2_9CE4_8422_2325;
    const PRIME: u64 = 1_099_511_628_211;
    let mut hash = OFFSET_BASIS;
    let mut v = value;
    for _ in 0..8 {
        hash ^= v & 0xff;
        hash = hash.wrapping_mul(PRIME);
        v >>= 8;
    }
    // Java's Math.abs on a long (Long.MIN_VALUE stays negative; unreachable in practice).
    let signed = i64::from_ne_bytes(hash.to_ne_bytes());
    signed.unsigned_abs()
}

/// YCSB's key name for a key number (hashed insert order).
#[must_use]
pub fn key_name(keynum: u64) -> String {
    format!("user{}", fnv_hash64(keynum))
}

/// A record: `fields` fields named `field0…`, each `length` random
/// printable bytes.
pub fn record(rng: &mut impl Rng, fields: usize, length: usize) -> Vec<(String, String)> {
    (0..fields).map(|i| (format!("field{i}"), value(rng, length))).collect()
}

/// A random printable value of `length` bytes.
pub fn value(rng: &mut impl Rng, length: usize) -> String {
    (0..length).map(|_| char::from(rng.random_range(b' '..=b'~'))).collect()
}

/// Gray et al.'s zipfian generator, as YCSB's `ZipfianGenerator`: items
/// `0..n`, item 0 the most popular. `n` may grow (ζ is extended
/// incrementally, as YCSB does for the latest distribution).
#[derive(Debug, Clone)]
pub struct Zipfian {
    items: u64,
    theta: f64,
    alpha: f64,
    zeta2: f64,
    zetan: f64,
    eta: f64,
    /// `0.5^theta`, drawn on every call: computed once.
    half_pow_theta: f64,
}

fn zeta(from: u64, to: u64, theta: f64, initial: f64) -> f64 {
    #[allow(clippy::cast_precision_loss)]
    (from..to).fold(initial, |sum, i| sum + 1.0 / ((i + 1) as f64).powf(theta))
}

impl Zipfian {
    /// Over `items` items with exponent `theta`.
    #[must_use]
    pub fn new(items: u64, theta: f64) -> Self {
        Self::with_zetan(items, theta, zeta(0, items, theta, 0.0))
    }

    fn with_zetan(items: u64, theta: f64, zetan: f64) -> Self {
        let zeta2 = zeta(0, 2, theta, 0.0);
        let half_pow_theta = 0.5f64.powf(theta);
        let mut z = Self { items, theta, alpha: 1.0 / (1.0 - theta), zeta2, zetan, eta: 0.0, half_pow_theta };
        z.eta = z.eta_for(items);
        z
    }

    #[allow(clippy::cast_precision_loss)]
    fn eta_for(&self, items: u64) -> f64 {
        (1.0 - (2.0 / items as f64).powf(1.0 - self.theta)) / (1.0 - self.zeta2 / self.zetan)
    }

    /// Grows the item count (never shrinks it).
    pub fn grow_to(&mut self, items: u64) {
        if items > self.items {
            self.zetan = zeta(self.items, items, self.theta, self.zetan);
            self.items = items;
            self.eta = self.eta_for(items);
        }
    }

    /// The next item, in `0..items`.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]
    pub fn next(&self, rng: &mut impl Rng) -> u64 {
        let u: f64 = rng.random();
        let uz = u * self.zetan;
        if uz < 1.0 {
            return 0;
        }
        if uz < 1.0 + self.half_pow_theta {
            return 1.min(self.items.saturating_sub(1));
        }
        let item = (self.items as f64 * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64;
        item.min(self.items.saturating_sub(1))
    }
}

/// The insert key sequence of a run: numbers handed out in order; reads
/// choose among keys below [`InsertSequence::acknowledged`] (every key
/// below it has been inserted), as YCSB's `AcknowledgedCounterGenerator`.
#[derive(Debug)]
pub struct InsertSequence {
    next: AtomicU64,
    acknowledged: AtomicU64,
    done_above: Mutex<BTreeSet<u64>>,
}

impl InsertSequence {
    /// After `loaded` records (keys `0..loaded`) exist.
    #[must_use]
    pub fn new(loaded: u64) -> Self {
        Self { next: AtomicU64::new(loaded), acknowledged: AtomicU64::new(loaded), done_above: Mutex::default() }
    }

    /// The next key number to insert.
    pub fn next(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// Marks an insert done (or failed: its key is not read either way).
    pub fn acknowledge(&self, keynum: u64) {
        let Ok(mut done) = self.done_above.lock() else { return };
        done.insert(keynum);
        let mut limit = self.acknowledged.load(Ordering::Relaxed);
        while done.remove(&limit) {
            limit += 1;
        }
        self.acknowledged.store(limit, Ordering::Release);
    }

    /// Key numbers `0..acknowledged()` all exist.
    #[must_use]
    pub fn acknowledged(&self) -> u64 {
        self.acknowledged.load(Ordering::Acquire)
    }
}

/// Chooses existing key numbers for one client, per a distribution.
#[derive(Debug, Clone)]
pub struct KeyChooser {
    distribution: Distribution,
    scrambled: Zipfian,
    latest: Zipfian,
    /// Key space of the scrambled zipfian (records + expected inserts).
    space: u64,
}

impl KeyChooser {
    /// For a run over `records` loaded records expecting about
    /// `expected_inserts` more.
    #[must_use]
    pub fn new(distribution: Distribution, records: u64, expected_inserts: u64) -> Self {
        Self {
            distribution,
            scrambled: Zipfian::with_zetan(SCRAMBLED_ITEMS, ZIPFIAN_THETA, SCRAMBLED_ZETAN),
            latest: Zipfian::new(records.max(1), ZIPFIAN_THETA),
            space: (records + expected_inserts * 2).max(1),
        }
    }

    /// A key number below `existing` (which must be at least 1).
    pub fn next(&mut self, rng: &mut impl Rng, existing: u64) -> u64 {
        let existing = existing.max(1);
        match self.distribution {
            Distribution::Uniform => rng.random_range(0..existing),
            Distribution::Zipfian => loop {
                // YCSB retries until it hits a key that exists.
                let keynum = fnv_hash64(self.scrambled.next(rng)) % self.space;
                if keynum < existing {
                    return keynum;
                }
            },
            Distribution::Latest => {
                self.latest.grow_to(existing);
                existing - 1 - self.latest.next(rng).min(existing - 1)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_hash_matches_ycsb() {
        // Utils.fnvhash64(0), computed from YCSB's Java code transcribed
        // into Python (64-bit wrapping multiply, then Math.abs).
        assert_eq!(fnv_hash64(0), 6_284_781_860_667_377_211);
        assert_eq!(key_name(1), format!("user{}", fnv_hash64(1)));
    }
}

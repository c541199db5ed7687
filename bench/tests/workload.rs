//! The workload generators: operation mixes and key distributions within
//! tolerance of what YCSB defines, over many draws with fixed seeds.

#![allow(
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::indexing_slicing,
    clippy::type_complexity
)]

use std::collections::HashMap;

use keel_bench::workload::{Distribution, InsertSequence, KeyChooser, Op, Workload, Zipfian, key_name, record};
use rand::SeedableRng;
use rand::rngs::SmallRng;

const DRAWS: usize = 200_000;

fn shares(workload: &Workload) -> HashMap<Op, f64> {
    let mut rng = SmallRng::seed_from_u64(1);
    let mut counts: HashMap<Op, usize> = HashMap::new();
    for _ in 0..DRAWS {
        *counts.entry(workload.next_op(&mut rng)).or_default() += 1;
    }
    counts.into_iter().map(|(op, n)| (op, n as f64 / DRAWS as f64)).collect()
}

#[test]
fn core_workloads_have_ycsbs_mixes_and_distributions() {
    let expected: [(&str, &[(Op, f64)], Distribution); 6] = [
        ("a", &[(Op::Read, 0.5), (Op::Update, 0.5)], Distribution::Zipfian),
        ("b", &[(Op::Read, 0.95), (Op::Update, 0.05)], Distribution::Zipfian),
        ("c", &[(Op::Read, 1.0)], Distribution::Zipfian),
        ("d", &[(Op::Read, 0.95), (Op::Insert, 0.05)], Distribution::Latest),
        ("e", &[(Op::Scan, 0.95), (Op::Insert, 0.05)], Distribution::Zipfian),
        ("f", &[(Op::Read, 0.5), (Op::ReadModifyWrite, 0.5)], Distribution::Zipfian),
    ];
    for (letter, mix, distribution) in expected {
        let workload = Workload::core(letter).expect("a core workload");
        assert_eq!(workload.distribution, distribution, "workload {letter}");
        let seen = shares(&workload);
        assert_eq!(seen.len(), mix.len(), "workload {letter} draws only its operations: {seen:?}");
        for (op, share) in mix {
            let got = seen.get(op).copied().unwrap_or(0.0);
            assert!((got - share).abs() < 0.005, "workload {letter}: {op:?} drawn {got:.4}, expected {share}");
        }
    }
    assert!(Workload::core("g").is_none());
}

#[test]
fn zipfian_matches_its_probability_mass() {
    // P(item k) = (1 / (k+1)^θ) / ζ(n, θ) for the unscrambled generator.
    let n = 1000u64;
    let zipfian = Zipfian::new(n, 0.99);
    let zeta: f64 = (1..=n).map(|i| 1.0 / (i as f64).powf(0.99)).sum();
    let mut rng = SmallRng::seed_from_u64(2);
    let mut counts = vec![0usize; n as usize];
    for _ in 0..DRAWS {
        let item = zipfian.next(&mut rng);
        assert!(item < n);
        counts[item as usize] += 1;
    }
    let mass = |k: usize| (1.0 / ((k + 1) as f64).powf(0.99)) / zeta;
    // Items 0 and 1 are drawn exactly; beyond them Gray et al.'s generator
    // (and YCSB's) uses a continuous approximation: compare bands.
    for k in [0usize, 1] {
        let got = counts[k] as f64 / DRAWS as f64;
        assert!((got - mass(k)).abs() < mass(k) * 0.05, "item {k}: {got:.5} vs {:.5}", mass(k));
    }
    for (from, to) in [(2usize, 10usize), (10, 100), (100, 1000)] {
        let expected: f64 = (from..to).map(mass).sum();
        let got = counts[from..to].iter().sum::<usize>() as f64 / DRAWS as f64;
        assert!((got - expected).abs() < expected * 0.15, "items {from}..{to}: {got:.4} vs {expected:.4}");
    }
}

#[test]
fn scrambled_zipfian_keys_are_skewed_but_spread_over_the_key_space() {
    let records = 10_000u64;
    let mut chooser = KeyChooser::new(Distribution::Zipfian, records, 0);
    let mut rng = SmallRng::seed_from_u64(3);
    let mut counts = vec![0usize; records as usize];
    for _ in 0..DRAWS {
        counts[chooser.next(&mut rng, records) as usize] += 1;
    }
    let mut sorted = counts.clone();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    let top_1_percent: usize = sorted[..(records as usize / 100)].iter().sum();
    // θ = 0.99 over 10^10 items folded onto 10^4 keys: the hottest 1 % of
    // keys take far more than 1 % of the draws, but not all of them.
    let share = top_1_percent as f64 / DRAWS as f64;
    assert!((0.1..0.6).contains(&share), "hottest 1 % of keys drew {share:.3}");
    // Scrambled: the hottest keys are not the lowest key numbers.
    let hottest = counts.iter().enumerate().max_by_key(|(_, n)| **n).map(|(k, _)| k).expect("draws");
    assert!(counts.iter().filter(|n| **n > 0).count() > records as usize / 2, "spread over the key space");
    assert_ne!(hottest, 0);
}

#[test]
fn uniform_keys_cover_the_key_space_evenly() {
    let records = 100u64;
    let mut chooser = KeyChooser::new(Distribution::Uniform, records, 0);
    let mut rng = SmallRng::seed_from_u64(4);
    let mut counts = vec![0usize; records as usize];
    for _ in 0..DRAWS {
        counts[chooser.next(&mut rng, records) as usize] += 1;
    }
    let expected = DRAWS as f64 / records as f64;
    let chi_square: f64 = counts.iter().map(|c| (*c as f64 - expected).powi(2) / expected).sum();
    // 99 degrees of freedom: the 99.9th percentile of χ² is about 149.
    assert!(chi_square < 149.0, "χ² = {chi_square:.1}");
}

#[test]
fn latest_prefers_the_newest_keys_and_follows_inserts() {
    let mut chooser = KeyChooser::new(Distribution::Latest, 1000, 100);
    let mut rng = SmallRng::seed_from_u64(5);
    for existing in [1000u64, 5000] {
        let draws: Vec<u64> = (0..DRAWS).map(|_| chooser.next(&mut rng, existing)).collect();
        assert!(draws.iter().all(|k| *k < existing));
        let newest = draws.iter().filter(|k| **k == existing - 1).count() as f64 / DRAWS as f64;
        let in_newest_tenth = draws.iter().filter(|k| **k >= existing - existing / 10).count() as f64 / DRAWS as f64;
        assert!(newest > 0.05, "the newest key is the hottest ({newest:.3})");
        assert!(in_newest_tenth > 0.6, "most reads hit the newest tenth ({in_newest_tenth:.3})");
    }
}

#[test]
fn reads_only_see_acknowledged_inserts() {
    let inserts = InsertSequence::new(10);
    let (a, b, c) = (inserts.next(), inserts.next(), inserts.next());
    assert_eq!((a, b, c), (10, 11, 12));
    inserts.acknowledge(c);
    assert_eq!(inserts.acknowledged(), 10, "12 is done but 10 and 11 are not");
    inserts.acknowledge(a);
    assert_eq!(inserts.acknowledged(), 11);
    inserts.acknowledge(b);
    assert_eq!(inserts.acknowledged(), 13);
}

#[test]
fn records_have_ycsbs_shape_and_keys_are_hashed() {
    let mut rng = SmallRng::seed_from_u64(6);
    let fields = record(&mut rng, 10, 100);
    assert_eq!(fields.len(), 10);
    assert!(fields.iter().enumerate().all(|(i, (name, value))| *name == format!("field{i}") && value.len() == 100));
    assert!(fields.iter().all(|(_, v)| v.bytes().all(|b| (b' '..=b'~').contains(&b))));
    let keys: std::collections::BTreeSet<String> = (0..1000).map(key_name).collect();
    assert_eq!(keys.len(), 1000, "distinct keys");
    assert!(keys.iter().all(|k| k.starts_with("user")));
    // Hashed insert order: consecutive key numbers are not adjacent in key order.
    let ordered: Vec<String> = (0..10).map(key_name).collect();
    let mut sorted = ordered.clone();
    sorted.sort();
    assert_ne!(ordered, sorted);
}

/// A generator that counts the random words drawn from it.
struct Counting {
    inner: SmallRng,
    words: usize,
}

impl rand::RngCore for Counting {
    fn next_u32(&mut self) -> u32 {
        self.words += 1;
        self.inner.next_u32()
    }
    fn next_u64(&mut self) -> u64 {
        self.words += 1;
        self.inner.next_u64()
    }
    fn fill_bytes(&mut self, dst: &mut [u8]) {
        self.words += 1;
        self.inner.fill_bytes(dst);
    }
}

#[test]
fn a_run_without_inserts_draws_each_zipfian_key_once_and_one_with_inserts_leaves_room_for_them() {
    let records = 100_000u64;
    let read_only = Workload::core("c").expect("c");
    // However long the phase, a workload that never inserts expects no
    // new keys, so no draw falls above the loaded ones and is redrawn.
    assert_eq!(read_only.expected_inserts(None), 0);
    assert_eq!(read_only.expected_inserts(Some(5_000_000)), 0);
    let mut chooser = KeyChooser::new(Distribution::Zipfian, records, read_only.expected_inserts(None));
    let mut rng = Counting { inner: SmallRng::seed_from_u64(5), words: 0 };
    for _ in 0..DRAWS {
        assert!(chooser.next(&mut rng, records) < records);
    }
    assert_eq!(rng.words, DRAWS, "one random word per key");
    // YCSB's operationcount × insertproportion, with an assumed count for
    // a phase bounded by time.
    let d = Workload::core("d").expect("d");
    assert_eq!(d.expected_inserts(Some(1_000)), 50);
    let e = Workload::core("e").expect("e");
    assert_eq!(e.expected_inserts(None), keel_bench::workload::OPERATIONS_ASSUMED / 20);
    // Room for them: a million operations of E expect 50,000 inserts, so
    // the key space is twice the records, and before any insert about half
    // of the draws fall on keys not inserted yet and are drawn again.
    let mut chooser = KeyChooser::new(Distribution::Zipfian, records, e.expected_inserts(Some(1_000_000)));
    let mut rng = Counting { inner: SmallRng::seed_from_u64(6), words: 0 };
    for _ in 0..DRAWS {
        assert!(chooser.next(&mut rng, records) < records);
    }
    let per_key = rng.words as f64 / DRAWS as f64;
    assert!((1.5..2.5).contains(&per_key), "{per_key} words per key");
}

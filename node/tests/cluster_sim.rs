//! The seeded cluster simulator over many seeds (`keel_node::repl::sim`).
//!
//! - `KEEL_SIM_SEEDS` (default 2000): how many seeds the main test runs;
//!   a long run is e.g. `KEEL_SIM_SEEDS=50000 cargo test --release -p keel-node
//!   --test cluster_sim`.
//! - `KEEL_SIM_SEED=N`: the two `…keeps_every_invariant…` tests replay seed N
//!   alone (each with its own configuration), with raft-rs's
//!   logs on stderr when `RUST_LOG` asks for them (`RUST_LOG=raft=debug`).

use keel_node::repl::sim::{PlantedBug, SimConfig, SimReport, Violation, run_seed};

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// Runs `seeds` seeds on every CPU; returns the per-seed reports or the
/// first violation (lowest seed) found.
fn run_many(seeds: std::ops::Range<u64>, config: &SimConfig) -> Result<Vec<SimReport>, Violation> {
    let threads = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let threads = u64::try_from(threads).unwrap_or(1);
    let results: Vec<Result<Vec<SimReport>, Violation>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let seeds = seeds.clone();
                scope.spawn(move || {
                    seeds.filter(|s| s % threads == t).map(|seed| run_seed(seed, config)).collect::<Result<Vec<_>, _>>()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("simulation thread panicked")).collect()
    });
    let mut reports = Vec::new();
    let mut first: Option<Violation> = None;
    for result in results {
        match result {
            Ok(r) => reports.extend(r),
            Err(v) => {
                if first.as_ref().is_none_or(|f| v.seed < f.seed) {
                    first = Some(v);
                }
            }
        }
    }
    first.map_or(Ok(reports), Err)
}

/// With `KEEL_SIM_SEED` set, runs that seed alone (logs on stderr as
/// `RUST_LOG` asks) and returns true.
fn replay(config: &SimConfig) -> bool {
    let Some(seed) = env_u64("KEEL_SIM_SEED") else { return false };
    let _ = tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).try_init();
    let report = run_seed(seed, config).unwrap_or_else(|v| panic!("{v}"));
    eprintln!("seed {seed}: {report:?}");
    true
}

#[test]
fn cluster_keeps_every_invariant_under_faults() {
    if replay(&SimConfig::default()) {
        return;
    }
    let seeds = env_u64("KEEL_SIM_SEEDS").unwrap_or(2_000);
    let reports = run_many(0..seeds, &SimConfig::default()).unwrap_or_else(|v| panic!("{v}"));
    assert_eq!(u64::try_from(reports.len()).ok(), Some(seeds));
    // The runs must have exercised what they claim to: writes acknowledged,
    // reads served, crashes survived and leaders changed.
    let total = |f: fn(&SimReport) -> u64| reports.iter().map(f).sum::<u64>();
    let (acked, reads, crashes) = (total(|r| r.acked_writes), total(|r| r.reads), total(|r| r.crashes));
    let torn = total(|r| r.torn_writes);
    let lease_reads = total(|r| r.lease_reads);
    assert!(lease_reads * 10 > reads, "only {lease_reads} of {reads} reads were served under a lease");
    assert!(torn * 20 > seeds, "only {torn} crashes in the middle of a WAL write over {seeds} seeds");
    let reelected = reports.iter().filter(|r| r.leaderships > 2).count();
    assert!(acked > seeds * 20, "only {acked} writes acknowledged over {seeds} seeds");
    assert!(reads > seeds * 20, "only {reads} reads answered over {seeds} seeds");
    assert!(crashes > seeds, "only {crashes} crashes over {seeds} seeds");
    assert!(reelected * 2 > reports.len(), "leaders changed in only {reelected} of {seeds} runs");
    eprintln!(
        "{seeds} seeds: {acked} writes acknowledged, {reads} reads, {crashes} crashes ({torn} torn writes), {lease_reads} reads under leases"
    );
}

/// Busier clients on fewer keys: more concurrent operations per key for the
/// linearizability check.
#[test]
fn busy_cluster_keeps_every_invariant_under_faults() {
    let config = SimConfig { clients: 8, keys: 2, ..SimConfig::default() };
    if replay(&config) {
        return;
    }
    let seeds = env_u64("KEEL_SIM_SEEDS").unwrap_or(2_000) / 2;
    let reports = run_many(10_000_000..10_000_000 + seeds, &config).unwrap_or_else(|v| panic!("busy config: {v}"));
    let acked: u64 = reports.iter().map(|r| r.acked_writes).sum();
    assert!(acked > seeds * 40, "only {acked} writes acknowledged over {seeds} seeds");
}

#[test]
fn same_seed_replays_exactly() {
    let config = SimConfig::default();
    for seed in [3, 17, 1234] {
        assert_eq!(run_seed(seed, &config), run_seed(seed, &config));
    }
}

/// The simulator must find a leader that acknowledges writes before a
/// quorum has them, within a bounded number of seeds.
#[test]
fn planted_bug_ack_before_quorum_is_caught() {
    let config = SimConfig { bug: Some(PlantedBug::AckBeforeQuorum), ..SimConfig::default() };
    let Err(violation) = run_many(0..500, &config) else {
        panic!("acknowledging before the quorum went unnoticed for 500 seeds");
    };
    eprintln!("caught: {violation}");
    assert!(violation.what.contains("is lost") || violation.what.contains("not linearizable"), "{violation}");
}

/// Reads served by a leader without confirming it still leads are stale
/// after a partition or a new election; the linearizability check must see it.
#[test]
fn planted_bug_read_without_quorum_is_caught() {
    // Busier clients on fewer keys make a stale read more likely to be seen.
    let config = SimConfig { bug: Some(PlantedBug::ReadWithoutQuorum), clients: 8, keys: 2, ..SimConfig::default() };
    let Err(violation) = run_many(0..1000, &config) else {
        panic!("stale leader reads went unnoticed for 1000 seeds");
    };
    eprintln!("caught: {violation}");
    assert!(violation.what.contains("linearizable"), "{violation}");
}

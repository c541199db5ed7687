//! The storage model test: random put/delete/get/scan/checkpoint sequences on
//! two partition replicas sharing one WAL, checked against `BTreeMap`s, with
//! the simulated disk crashing at *every* mutating I/O (write, sync, create,
//! rename, remove, directory sync) of each run in turn. After each crash the
//! store is reopened and must hold exactly the acknowledged writes (plus, at
//! most, the one write in flight, or a prefix of a batch in flight), return
//! nothing corrupt, scan in order, and keep working.
//!
//! `KEEL_MODEL_SEEDS` (default 1000) sets the number of seeds and
//! `KEEL_MODEL_OPS` (default 24) the operations per run. A failure prints
//! `KEEL_MODEL_SEED=<seed> KEEL_MODEL_CRASH=<point>`, which replays exactly it.

#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    clippy::indexing_slicing
)]

use std::collections::BTreeMap;
use std::ops::Bound;

use futures_lite::future::block_on;
use keel_node::btree::BTreeError;
use keel_node::btree::Direction;
use keel_node::io::sim::{SimDisk, SimFile};
use keel_node::replica::{Mutation, ReplicaCheckpoint, ShardStore, StoreConfig};
use keel_node::wal::WalConfig;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const PARTITIONS: [u64; 2] = [1, 2];

#[derive(Debug, Clone)]
enum Op {
    Put {
        partition: u64,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    /// Several puts committed together: one WAL batch of several records,
    /// so record headers land anywhere in a 4 KiB block.
    PutBatch {
        partition: u64,
        entries: Vec<(Vec<u8>, Vec<u8>)>,
    },
    Delete {
        partition: u64,
        key: Vec<u8>,
    },
    Get {
        partition: u64,
        key: Vec<u8>,
    },
    Scan {
        partition: u64,
        lo: Vec<u8>,
        hi: Vec<u8>,
        reverse: bool,
    },
    Checkpoint {
        partition: u64,
    },
}

type Model = BTreeMap<u64, BTreeMap<Vec<u8>, Vec<u8>>>;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A background checkpoint in progress: begun, and written or not.
type Background = Option<(ReplicaCheckpoint<SimFile>, Option<Result<(), BTreeError>>)>;

fn config(background: bool) -> StoreConfig {
    let mut config = StoreConfig::new("/shard");
    config.background_checkpoints = background;
    config.wal = WalConfig {
        segment_size_bytes: 32 * 1024,
        payload_max_bytes: 20 * 1024,
        recycle_pool_max: 1,
        zero_fill: false,
        ..WalConfig::default()
    };
    config.page_cache_bytes = 16 * 16 * 1024;
    config.dirty_bytes_max = 4 * 16 * 1024;
    config.wal_segments_max = 3;
    config
}

fn generate(seed: u64, count: u64) -> Vec<Op> {
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x5eed);
    let key = |rng: &mut SmallRng| format!("k{:03}", rng.random_range(0..40u32)).into_bytes();
    (0..count)
        .map(|_| {
            let partition = PARTITIONS[rng.random_range(0..PARTITIONS.len())];
            match rng.random_range(0..20u8) {
                0..=8 => {
                    let len =
                        if rng.random_bool(0.1) { rng.random_range(5000..12_000) } else { rng.random_range(0..200) };
                    let fill: u8 = rng.random();
                    let value = (0..len).map(|i: usize| fill.wrapping_add((i % 253) as u8)).collect();
                    Op::Put { partition, key: key(&mut rng), value }
                }
                9..=12 => Op::Delete { partition, key: key(&mut rng) },
                13..=15 => Op::Get { partition, key: key(&mut rng) },
                16..=17 => {
                    let (a, b) = (key(&mut rng), key(&mut rng));
                    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
                    Op::Scan { partition, lo, hi, reverse: rng.random_bool(0.5) }
                }
                19 if rng.random_bool(0.5) => {
                    let entries = (0..rng.random_range(2..8))
                        .map(|_| {
                            let len = rng.random_range(0..1500);
                            let fill: u8 = rng.random();
                            (key(&mut rng), (0..len).map(|i: usize| fill.wrapping_add((i % 251) as u8)).collect())
                        })
                        .collect();
                    Op::PutBatch { partition, entries }
                }
                _ => Op::Checkpoint { partition },
            }
        })
        .collect()
}

fn setup(seed: u64, background: bool) -> (SimDisk, ShardStore<SimDisk>) {
    let disk = SimDisk::new(seed);
    let mut store = block_on(ShardStore::open(disk.clone(), config(background))).expect("open new store");
    for p in PARTITIONS {
        block_on(store.create_partition(p)).expect("create partition");
    }
    (disk, store)
}

/// Runs one op; `Err` means the disk went down during it. With background
/// checkpoints (`background` is `Some`), a Checkpoint op takes the next
/// step of one: begin, write, finish, while the other ops go on between.
fn run_op(
    store: &mut ShardStore<SimDisk>,
    model: &Model,
    op: &Op,
    ctx: &str,
    background: Option<&mut Background>,
) -> Result<(), String> {
    block_on(async {
        match (op, background) {
            (Op::Checkpoint { partition }, Some(job)) => match job.take() {
                None => {
                    let begun = store.begin_checkpoint(*partition).map_err(|e| e.to_string())?;
                    *job = Some((begun, None));
                    Ok(())
                }
                Some((mut begun, None)) => {
                    // Encode a slice; write once every page is encoded.
                    if !begun.prepare(2) {
                        *job = Some((begun, None));
                        return Ok(());
                    }
                    let written = begun.write(4).await;
                    let failed = written.as_ref().err().map(ToString::to_string);
                    *job = Some((begun, Some(written)));
                    failed.map_or(Ok(()), Err)
                }
                Some((begun, Some(written))) => {
                    let done = store.finish_checkpoint(begun, written).map_err(|e| e.to_string())?;
                    store.wal().reclaim_below(done.reclaim_below).await.map(|_| ()).map_err(|e| e.to_string())
                }
            },
            (op, _) => run_plain_op(store, model, op, ctx).await,
        }
    })
}

async fn run_plain_op(store: &mut ShardStore<SimDisk>, model: &Model, op: &Op, ctx: &str) -> Result<(), String> {
    {
        match op {
            Op::Put { partition, key, value } => {
                store.put(*partition, key, value).await.map(|_| ()).map_err(|e| e.to_string())
            }
            Op::PutBatch { partition, entries } => {
                let mutations: Vec<Mutation<'_>> =
                    entries.iter().map(|(key, value)| Mutation::Put { key, value }).collect();
                store.apply_batch(*partition, 0, &mutations).await.map(|_| ()).map_err(|e| e.to_string())
            }
            Op::Delete { partition, key } => store.delete(*partition, key).await.map(|_| ()).map_err(|e| e.to_string()),
            Op::Checkpoint { partition } => store.checkpoint(*partition).await.map_err(|e| e.to_string()),
            Op::Get { partition, key } => {
                let got = store.get(*partition, key).await.map_err(|e| e.to_string())?;
                let want = model.get(partition).and_then(|m| m.get(key));
                assert_eq!(got.as_ref(), want, "{ctx}: get {key:?} in partition {partition}");
                Ok(())
            }
            Op::Scan { partition, lo, hi, reverse } => {
                let dir = if *reverse { Direction::Reverse } else { Direction::Forward };
                let range = (Bound::Included(lo.as_slice()), Bound::Included(hi.as_slice()));
                let got = store.scan(*partition, range.0, range.1, dir, 10).await.map_err(|e| e.to_string())?;
                let empty = BTreeMap::new();
                let m = model.get(partition).unwrap_or(&empty);
                let iter = m.range::<[u8], _>(range).map(|(k, v)| (k.clone(), v.clone()));
                let want: Vec<_> = if *reverse { iter.rev().take(10).collect() } else { iter.take(10).collect() };
                assert!(got == want, "{ctx}: scan {lo:?}..={hi:?} reverse={reverse} in partition {partition}");
                Ok(())
            }
        }
    }
}

fn apply_to_model(model: &mut Model, op: &Op) {
    match op {
        Op::Put { partition, key, value } => {
            model.entry(*partition).or_default().insert(key.clone(), value.clone());
        }
        Op::PutBatch { partition, entries } => {
            for (key, value) in entries {
                model.entry(*partition).or_default().insert(key.clone(), value.clone());
            }
        }
        Op::Delete { partition, key } => {
            model.entry(*partition).or_default().remove(key);
        }
        _ => {}
    }
}

fn contents(store: &ShardStore<SimDisk>, ctx: &str) -> Model {
    let mut out = Model::new();
    for p in PARTITIONS {
        let all = block_on(store.scan(p, Bound::Unbounded, Bound::Unbounded, Direction::Forward, usize::MAX))
            .unwrap_or_else(|e| panic!("{ctx}: full scan of partition {p} failed: {e}"));
        assert!(all.windows(2).all(|w| matches!(w, [a, b] if a.0 < b.0)), "{ctx}: scan out of order");
        for (k, v) in &all {
            let got = block_on(store.get(p, k)).unwrap_or_else(|e| panic!("{ctx}: get failed: {e}"));
            assert_eq!(got.as_ref(), Some(v), "{ctx}: get disagrees with scan");
        }
        out.insert(p, all.into_iter().collect());
    }
    out
}

fn normalise(model: &Model) -> Model {
    PARTITIONS.iter().map(|p| (*p, model.get(p).cloned().unwrap_or_default())).collect()
}

/// Runs `ops` with a crash at mutating I/O number `crash_at` (counted from
/// the end of setup) and checks recovery. Returns the mutating I/O count of
/// the run when it did not crash.
fn check(seed: u64, ops: &[Op], crash_at: Option<u64>) -> u64 {
    check_fault(seed, ops, crash_at, Fault::Crash, false)
}

/// What goes wrong at the fault point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// Power loss at the n-th mutating I/O.
    Crash,
    /// The n-th I/O (reads included) fails with EIO; the process restarts
    /// without power loss.
    Eio,
}

fn check_fault(seed: u64, ops: &[Op], crash_at: Option<u64>, fault: Fault, background: bool) -> u64 {
    let ctx = format!(
        "KEEL_MODEL_SEED={seed} KEEL_MODEL_CRASH={} ({fault:?}{})",
        crash_at.map_or(-1, |c| c as i64),
        if background { ", background checkpoints" } else { "" }
    );
    let (disk, mut store) = setup(seed, background);
    let mut job: Background = None;
    let start = disk.mutating_ops();
    match (crash_at, fault) {
        (Some(k), Fault::Crash) => disk.crash_at_op(k),
        (Some(k), Fault::Eio) => disk.fail_after(k),
        (None, _) => {}
    }
    let mut model = Model::new();
    let mut in_flight = None;
    for op in ops {
        match run_op(&mut store, &model, op, &ctx, background.then_some(&mut job)) {
            Ok(()) => apply_to_model(&mut model, op),
            Err(e) => {
                assert!(fault == Fault::Eio || disk.is_crashed(), "{ctx}: op failed without a crash: {e}");
                in_flight = Some(op.clone());
                break;
            }
        }
    }
    let used = disk.mutating_ops() - start;
    if crash_at.is_none() {
        return used;
    }
    drop(job);
    drop(store);
    disk.crash();
    let mut store = block_on(ShardStore::open(disk.clone(), config(background)))
        .unwrap_or_else(|e| panic!("{ctx}: reopen failed: {e}"));
    let found = contents(&store, &ctx);
    let acked = normalise(&model);
    let matches_acked = found == acked;
    // A write in flight may have landed; of a batch in flight, any prefix
    // (its records are checked one by one, and a torn write keeps a prefix).
    let candidates: Vec<Op> = match &in_flight {
        Some(Op::PutBatch { partition, entries }) => (1..=entries.len())
            .map(|n| Op::PutBatch { partition: *partition, entries: entries[..n].to_vec() })
            .collect(),
        Some(op) => vec![op.clone()],
        None => Vec::new(),
    };
    let landed = candidates.into_iter().find(|op| {
        let mut with = model.clone();
        apply_to_model(&mut with, op);
        found == normalise(&with)
    });
    let matches_in_flight = landed.is_some();
    assert!(
        matches_acked || matches_in_flight,
        "{ctx}: recovered state is neither the acknowledged state nor it plus the write in flight"
    );
    if let Some(op) = landed.filter(|_| !matches_acked) {
        apply_to_model(&mut model, &op);
    }
    // The store keeps working after recovery.
    for (i, op) in ops.iter().take(6).enumerate() {
        run_op(&mut store, &model, op, &format!("{ctx} (after recovery, op {i})"), None)
            .unwrap_or_else(|e| panic!("{ctx}: op after recovery failed: {e}"));
        apply_to_model(&mut model, op);
    }
    assert_eq!(contents(&store, &ctx), normalise(&model), "{ctx}: state after post-recovery ops");
    used
}

#[test]
fn model_survives_a_crash_at_every_write_and_sync_point() {
    let seeds = env_u64("KEEL_MODEL_SEEDS", 1000);
    let op_count = env_u64("KEEL_MODEL_OPS", 24);
    let only_seed = std::env::var("KEEL_MODEL_SEED").ok().and_then(|v| v.parse::<u64>().ok());
    let only_crash = std::env::var("KEEL_MODEL_CRASH").ok().and_then(|v| v.parse::<u64>().ok());
    let seed_list: Vec<u64> = match only_seed {
        Some(s) => vec![s],
        None => (0..seeds).collect(),
    };
    let mut crash_runs = 0u64;
    for seed in seed_list {
        let ops = generate(seed, op_count);
        let points = check(seed, &ops, None);
        assert!(points > 0, "seed {seed}: the run did no I/O");
        match only_crash {
            Some(k) => {
                check(seed, &ops, Some(k));
                crash_runs += 1;
            }
            None => {
                for k in 0..points {
                    check(seed, &ops, Some(k));
                    crash_runs += 1;
                }
            }
        }
    }
    eprintln!("model: {crash_runs} crash points checked");
    assert!(crash_runs > 0);
}

/// The same with background checkpoints: each Checkpoint op takes the next
/// step of one (begin, write, finish) while puts, deletes and reads go on
/// in between, as in the server. The WAL must keep what a checkpoint being
/// written does not cover yet, and reads must see pages not yet written.
#[test]
fn model_survives_a_crash_at_every_point_with_background_checkpoints() {
    let seeds = env_u64("KEEL_MODEL_SEEDS", 1000) / 2;
    let op_count = env_u64("KEEL_MODEL_OPS", 24) * 2;
    let mut crash_runs = 0u64;
    for seed in 0..seeds {
        // More checkpoint steps than the plain mix: one op in five.
        let ops: Vec<Op> = generate(seed, op_count)
            .into_iter()
            .enumerate()
            .map(|(i, op)| match op {
                Op::Get { partition, .. } if i % 2 == 0 => Op::Checkpoint { partition },
                op => op,
            })
            .collect();
        let points = check_fault(seed, &ops, None, Fault::Crash, true);
        for k in 0..points {
            check_fault(seed, &ops, Some(k), Fault::Crash, true);
            crash_runs += 1;
        }
    }
    eprintln!("model: {crash_runs} crash points checked with background checkpoints");
    assert!(crash_runs > 0);
}

#[test]
fn model_recovers_from_eio_at_every_io_by_restarting() {
    let seeds = env_u64("KEEL_MODEL_SEEDS", 1000) / 5;
    let op_count = env_u64("KEEL_MODEL_OPS", 24);
    let mut runs = 0u64;
    for seed in 0..seeds {
        let ops = generate(seed, op_count);
        let points = check(seed, &ops, None);
        for k in 0..points {
            check_fault(seed, &ops, Some(k), Fault::Eio, false);
            runs += 1;
        }
    }
    eprintln!("model: {runs} EIO points checked");
    assert!(runs > 0);
}

//! The same durable workload on Keel's engine, redb and fjall: 1 KiB values,
//! 100,000 keys (`KEEL_PEERS_KEYS` overrides), in the same pseudo-random
//! order; each put committed durably, then commits of 64 puts; then warm
//! point reads of every key (borrowing the value, as redb's `get` does). Prints absolute rates and one line per case:
//! `ratio <case> keel/<peer> = <x>` (throughput ratio; above 1 means Keel is
//! faster). Run: `cargo bench -p keel-node --bench engine_vs_peers`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::cast_possible_truncation, clippy::cast_precision_loss)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use glommio::LocalExecutorBuilder;
use keel_node::io::glommio_disk::GlommioDisk;
use keel_node::replica::{Mutation, ShardStore, StoreConfig};
use redb::{ReadableDatabase, TableDefinition};

const TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("bench");
const BATCH: u64 = 64;

#[derive(Debug, Default)]
struct Rates {
    commit_each: f64,
    commit_64: f64,
    get_warm: f64,
    /// Keel only: warm gets after a checkpoint (no dirty pages).
    get_warm_clean: f64,
}

fn rate(n: u64, start: Instant) -> f64 {
    n as f64 / start.elapsed().as_secs_f64()
}

fn keel(dir: &Path, n: u64) -> Rates {
    let dir = dir.to_path_buf();
    LocalExecutorBuilder::default()
        .spawn(move || async move {
            let mut rates = Rates::default();
            for (case, batch) in [("each", 1), ("64", BATCH)] {
                let mut config = StoreConfig::new(dir.join(case));
                if let Some(mb) = std::env::var("KEEL_DIRTY_MB").ok().and_then(|v| v.parse::<usize>().ok()) {
                    config.dirty_bytes_max = mb << 20;
                    config.wal_segments_max = 64;
                }
                let mut store = ShardStore::open(GlommioDisk::new(), config).await.unwrap();
                store.create_partition(1).await.unwrap();
                let values: Vec<Vec<u8>> = (0..batch).map(common::value).collect();
                let start = Instant::now();
                let mut i = 0;
                while i < n {
                    let keys: Vec<[u8; 16]> = (i..(i + batch).min(n)).map(common::key).collect();
                    let mutations: Vec<Mutation<'_>> =
                        keys.iter().zip(&values).map(|(key, value)| Mutation::Put { key, value }).collect();
                    store.apply_batch(1, 1, &mutations).await.unwrap();
                    i += batch;
                }
                let r = rate(n, start);
                if batch == 1 {
                    rates.commit_each = r;
                } else {
                    rates.commit_64 = r;
                    for _pass in 0..2 {
                        let start = Instant::now();
                        for i in 0..n {
                            assert!(store.get_with(1, &common::key(i), |v| v.is_some()).await.unwrap());
                        }
                        rates.get_warm = rate(n, start);
                    }
                    store.checkpoint_all().await.unwrap();
                    for _pass in 0..2 {
                        let start = Instant::now();
                        for i in 0..n {
                            assert!(store.get_with(1, &common::key(i), |v| v.is_some()).await.unwrap());
                        }
                        rates.get_warm_clean = rate(n, start);
                    }
                }
            }
            rates
        })
        .unwrap()
        .join()
        .unwrap()
}

fn redb(dir: &Path, n: u64) -> Rates {
    let mut rates = Rates::default();
    for (case, batch) in [("each", 1), ("64", BATCH)] {
        let db = redb::Database::create(dir.join(case)).unwrap();
        let start = Instant::now();
        let mut i = 0;
        while i < n {
            let txn = db.begin_write().unwrap();
            {
                let mut table = txn.open_table(TABLE).unwrap();
                for j in i..(i + batch).min(n) {
                    table.insert(common::key(j).as_slice(), common::value(j % batch).as_slice()).unwrap();
                }
            }
            txn.commit().unwrap();
            i += batch;
        }
        let r = rate(n, start);
        if batch == 1 {
            rates.commit_each = r;
        } else {
            rates.commit_64 = r;
            let txn = db.begin_read().unwrap();
            let table = txn.open_table(TABLE).unwrap();
            for _pass in 0..2 {
                let start = Instant::now();
                for i in 0..n {
                    assert!(table.get(common::key(i).as_slice()).unwrap().is_some());
                }
                rates.get_warm = rate(n, start);
            }
        }
    }
    rates
}

fn fjall(dir: &Path, n: u64) -> Rates {
    let mut rates = Rates::default();
    for (case, batch) in [("each", 1), ("64", BATCH)] {
        let db = fjall::Database::builder(dir.join(case)).open().unwrap();
        let items = db.keyspace("bench", fjall::KeyspaceCreateOptions::default).unwrap();
        let start = Instant::now();
        let mut i = 0;
        while i < n {
            let mut wb = db.batch().durability(Some(fjall::PersistMode::SyncData));
            for j in i..(i + batch).min(n) {
                wb.insert(&items, common::key(j).to_vec(), common::value(j % batch));
            }
            wb.commit().unwrap();
            i += batch;
        }
        let r = rate(n, start);
        if batch == 1 {
            rates.commit_each = r;
        } else {
            rates.commit_64 = r;
            for _pass in 0..2 {
                let start = Instant::now();
                for i in 0..n {
                    assert!(items.get(common::key(i)).unwrap().is_some());
                }
                rates.get_warm = rate(n, start);
            }
        }
    }
    rates
}

fn main() {
    // `cargo test --benches` runs bench binaries with `--bench` absent: do a
    // tiny run then, so the harness stays cheap but exercised.
    let quick = !std::env::args().any(|a| a == "--bench");
    let n: u64 = std::env::var("KEEL_PEERS_KEYS").ok().and_then(|v| v.parse().ok()).unwrap_or(if quick {
        1000
    } else {
        100_000
    });
    let only = std::env::var("KEEL_PEERS_ONLY").ok();
    let mut results = BTreeMap::new();
    for (name, engine) in [("keel", keel as fn(&Path, u64) -> Rates), ("redb", redb), ("fjall", fjall)] {
        if only.as_deref().is_some_and(|o| o != name) {
            continue;
        }
        let dir = common::bench_dir(name);
        let rates = engine(dir.path(), n);
        println!(
            "{name:6} puts/s commit-each {:>9.0}  commit-64 {:>9.0}  warm gets/s {:>10.0}{}",
            rates.commit_each,
            rates.commit_64,
            rates.get_warm,
            if name == "keel" { format!("  (after checkpoint {:.0})", rates.get_warm_clean) } else { String::new() }
        );
        results.insert(name, rates);
    }
    let (Some(keel), Some(redb)) = (results.get("keel"), results.get("redb")) else { return };
    for peer in ["redb", "fjall"] {
        let Some(p) = results.get(peer) else { continue };
        println!("ratio put_commit_each keel/{peer} = {:.2}", keel.commit_each / p.commit_each);
        println!("ratio put_commit_64 keel/{peer} = {:.2}", keel.commit_64 / p.commit_64);
        println!("ratio get_warm keel/{peer} = {:.2}", keel.get_warm / p.get_warm);
        println!("ratio get_warm_after_checkpoint keel/{peer} = {:.2}", keel.get_warm_clean / p.get_warm);
    }
    println!("ratio put_group_commit_64_vs_commit_each keel/redb = {:.2}", keel.commit_64 / redb.commit_each);
}

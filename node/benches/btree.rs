//! B-tree point get (warm cache), put, and range scan through the glommio
//! backend.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::cast_possible_truncation)]

mod common;

use std::cell::RefCell;
use std::ops::Bound;
use std::rc::Rc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use glommio::LocalExecutorBuilder;
use keel_node::btree::{BTree, Direction, PageCache};
use keel_node::io::Disk;
use keel_node::io::glommio_disk::GlommioDisk;

const KEYS: u64 = 100_000;
const CHECKPOINT_EVERY: u64 = 10_000;

fn btree(c: &mut Criterion) {
    let dir = common::bench_dir("btree");
    let ex = LocalExecutorBuilder::default().make().unwrap();
    let disk = GlommioDisk::new();
    let cache = Rc::new(RefCell::new(PageCache::new(512 * 1024 * 1024)));
    let mut tree = ex.run(async {
        let file = disk.open(&dir.path().join("bench.btree"), true).await.unwrap();
        let mut tree = BTree::create(file, 1, cache).await.unwrap();
        for i in 0..KEYS {
            tree.put(&common::key(i), &common::value(i)).await.unwrap();
            if i % CHECKPOINT_EVERY == 0 {
                tree.checkpoint(i).await.unwrap();
            }
        }
        tree.checkpoint(KEYS).await.unwrap();
        // Warm the cache.
        for i in 0..KEYS {
            tree.get(&common::key(i)).await.unwrap().unwrap();
        }
        tree
    });
    let mut group = c.benchmark_group("btree_100k_1KiB");
    group.sample_size(20).measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Elements(1));
    let mut n = 0u64;
    group.bench_function("get_warm", |b| {
        b.iter_custom(|iters| {
            ex.run(async {
                let start = Instant::now();
                for _ in 0..iters {
                    n = (n + 7919) % KEYS;
                    assert!(tree.get(&common::key(n)).await.unwrap().is_some());
                }
                start.elapsed()
            })
        });
    });
    let mut version = KEYS;
    group.bench_function("put_overwrite_checkpoint_every_10k", |b| {
        b.iter_custom(|iters| {
            ex.run(async {
                let start = Instant::now();
                for _ in 0..iters {
                    version += 1;
                    n = (n + 7919) % KEYS;
                    tree.put(&common::key(n), &common::value(version)).await.unwrap();
                    if version.is_multiple_of(CHECKPOINT_EVERY) {
                        tree.checkpoint(version).await.unwrap();
                    }
                }
                start.elapsed()
            })
        });
    });
    group.throughput(Throughput::Elements(100));
    group.bench_function("scan_100_forward", |b| {
        b.iter_custom(|iters| {
            ex.run(async {
                let start = Instant::now();
                for _ in 0..iters {
                    n = (n + 7919) % KEYS;
                    let from = common::key(n);
                    let got =
                        tree.scan(Bound::Included(&from), Bound::Unbounded, Direction::Forward, 100).await.unwrap();
                    assert!(!got.is_empty());
                }
                start.elapsed()
            })
        });
    });
    group.bench_function("scan_100_reverse", |b| {
        b.iter_custom(|iters| {
            ex.run(async {
                let start = Instant::now();
                for _ in 0..iters {
                    n = (n + 7919) % KEYS;
                    let to = common::key(n);
                    let got = tree.scan(Bound::Unbounded, Bound::Included(&to), Direction::Reverse, 100).await.unwrap();
                    assert!(!got.is_empty());
                }
                start.elapsed()
            })
        });
    });
    group.finish();
}

criterion_group!(benches, btree);
criterion_main!(benches);

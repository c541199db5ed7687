//! WAL append throughput and latency against group size, and sequential
//! bandwidth, through the glommio backend on the real disk.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::cast_possible_truncation)]

mod common;

use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use glommio::LocalExecutorBuilder;
use keel_node::io::glommio_disk::GlommioDisk;
use keel_node::wal::{RecordMeta, USER_KIND_MIN, Wal, WalConfig};

fn run<T: Send + 'static>(f: impl AsyncFnOnce() -> T + Send + 'static) -> T {
    LocalExecutorBuilder::default().spawn(move || async move { f().await }).unwrap().join().unwrap()
}

/// Fills and reclaims segments until the recycle pool is full, so that timed
/// appends overwrite preallocated, recycled segments (the steady state)
/// instead of zero-filling new ones.
async fn warm_pool(wal: &Wal<GlommioDisk>, index: &mut u64) {
    let filler = vec![0u8; 252 * 1024];
    let target = wal.segments().last().copied().unwrap_or(0) + 6;
    while wal.segments().last().copied().unwrap_or(0) < target {
        *index += 1;
        let meta = RecordMeta { partition: 0, term: 1, index: *index, kind: USER_KIND_MIN };
        wal.append(meta, &filler).await.unwrap();
    }
    wal.reclaim_below(wal.next_lsn()).await.unwrap();
}

/// Steady-state reclaim: keep only the active segment.
async fn reclaim(wal: &Wal<GlommioDisk>) {
    if wal.segments().len() > 2 {
        wal.reclaim_below(wal.next_lsn()).await.unwrap();
    }
}

fn wal_append(c: &mut Criterion) {
    let mut group = c.benchmark_group("wal_append_1KiB");
    group.sample_size(10).measurement_time(Duration::from_secs(5));
    for group_size in [1u64, 8, 64, 256] {
        group.throughput(Throughput::Elements(group_size));
        group.bench_with_input(BenchmarkId::new("group", group_size), &group_size, |b, &g| {
            let dir = common::bench_dir("wal");
            b.iter_custom(|iters| {
                let path = dir.path().to_path_buf();
                run(async move || {
                    let (wal, _) = Wal::open(GlommioDisk::new(), &path, WalConfig::default()).await.unwrap();
                    let payload = common::value(0);
                    let mut index = 0;
                    warm_pool(&wal, &mut index).await;
                    let start = Instant::now();
                    for _ in 0..iters {
                        let mut last = None;
                        for _ in 0..g {
                            index += 1;
                            let meta = RecordMeta { partition: index % 4, term: 1, index, kind: USER_KIND_MIN };
                            last = Some(wal.submit(meta, &payload).unwrap());
                        }
                        wal.wait_durable(last.unwrap()).await.unwrap();
                        reclaim(&wal).await;
                    }
                    start.elapsed()
                })
            });
        });
    }
    group.finish();
}

fn wal_bandwidth(c: &mut Criterion) {
    let mut group = c.benchmark_group("wal_sequential");
    group.sample_size(10).measurement_time(Duration::from_secs(10));
    const RECORD_BYTES: usize = 252 * 1024;
    const RECORDS: u64 = 128; // 32 MiB per iteration
    group.throughput(Throughput::Bytes(RECORDS * RECORD_BYTES as u64));
    group.bench_function("append_32MiB_one_sync", |b| {
        let dir = common::bench_dir("walbw");
        b.iter_custom(|iters| {
            let path = dir.path().to_path_buf();
            run(async move || {
                let (wal, _) = Wal::open(GlommioDisk::new(), &path, WalConfig::default()).await.unwrap();
                let payload = vec![0x5au8; RECORD_BYTES];
                let mut index = 0;
                warm_pool(&wal, &mut index).await;
                let start = Instant::now();
                for _ in 0..iters {
                    let mut last = None;
                    for _ in 0..RECORDS {
                        index += 1;
                        let meta = RecordMeta { partition: 0, term: 1, index, kind: USER_KIND_MIN };
                        last = Some(wal.submit(meta, &payload).unwrap());
                    }
                    wal.wait_durable(last.unwrap()).await.unwrap();
                    reclaim(&wal).await;
                }
                start.elapsed()
            })
        });
    });
    group.finish();
}

criterion_group!(benches, wal_append, wal_bandwidth);
criterion_main!(benches);

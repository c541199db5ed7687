//! Bit flips, torn pages, stale and misdirected writes in B-tree files and
//! WAL segments: every one becomes a typed error or is survived; none causes
//! a panic or returns wrong data.

#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    clippy::indexing_slicing
)]

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::{Path, PathBuf};

use futures_lite::future::block_on;
use keel_node::btree::page::PAGE_BYTES;
use keel_node::btree::{BTreeError, Direction};
use keel_node::io::sim::SimDisk;
use keel_node::replica::{ShardStore, StoreConfig, StoreOpenError, StoreReadError};
use keel_node::wal::{RecordMeta, USER_KIND_MIN, Wal, WalConfig, WalOpenError};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const PARTITION: u64 = 9;

fn store_config() -> StoreConfig {
    let mut config = StoreConfig::new("/shard");
    config.wal = WalConfig {
        segment_size_bytes: 256 * 1024,
        payload_max_bytes: 64 * 1024,
        recycle_pool_max: 1,
        zero_fill: false,
        ..WalConfig::default()
    };
    config
}

fn value_for(i: u32) -> Vec<u8> {
    let len = if i.is_multiple_of(50) { 30_000 } else { 100 + (i % 7) as usize * 40 };
    (0..len).map(|j| (i as usize * 31 + j) as u8).collect()
}

/// A store with 600 keys, checkpointed (WAL empty of needed records), whose
/// B-tree file image is returned with the model.
fn populated() -> (SimDisk, BTreeMap<Vec<u8>, Vec<u8>>, PathBuf) {
    let disk = SimDisk::new(1);
    let mut store = block_on(ShardStore::open(disk.clone(), store_config())).expect("open");
    block_on(store.create_partition(PARTITION)).expect("create");
    let mut model = BTreeMap::new();
    for i in 0..600u32 {
        let key = format!("key-{i:05}").into_bytes();
        let value = value_for(i);
        block_on(store.put(PARTITION, &key, &value)).expect("put");
        model.insert(key, value);
    }
    block_on(store.checkpoint_all()).expect("checkpoint");
    let path = store.partition_path(PARTITION);
    (disk, model, path)
}

/// Reads everything back; each read must be correct or a typed error.
/// Returns how many reads failed.
fn read_back(disk: &SimDisk, model: &BTreeMap<Vec<u8>, Vec<u8>>) -> usize {
    let store = match block_on(ShardStore::open(disk.clone(), store_config())) {
        Ok(store) => store,
        Err(StoreOpenError::Replica {
            source: BTreeError::Corrupt { .. } | BTreeError::NoValidMeta { .. }, ..
        }) => {
            return model.len();
        }
        // A rotten newest meta page makes the older one win; the WAL records
        // between the two were reclaimed, and replay notices the gap.
        Err(StoreOpenError::Replay { .. }) => return model.len(),
        Err(e) => panic!("unexpected open error: {e}"),
    };
    let mut failures = 0;
    for (key, value) in model {
        match block_on(store.get(PARTITION, key)) {
            Ok(got) => assert_eq!(got.as_ref(), Some(value), "wrong data for {key:?}"),
            Err(StoreReadError::BTree(BTreeError::Corrupt { .. })) => failures += 1,
            Err(e) => panic!("unexpected read error: {e}"),
        }
    }
    match block_on(store.scan(PARTITION, Bound::Unbounded, Bound::Unbounded, Direction::Forward, usize::MAX)) {
        Ok(all) => assert!(all.into_iter().eq(model.clone()), "scan returned wrong data"),
        Err(StoreReadError::BTree(BTreeError::Corrupt { .. })) => failures += 1,
        Err(e) => panic!("unexpected scan error: {e}"),
    }
    failures
}

fn file_image(disk: &SimDisk, path: &Path) -> Vec<u8> {
    disk.peek(path).expect("file exists")
}

#[test]
fn btree_bit_flips_are_detected_never_returned() {
    let mut rng = SmallRng::seed_from_u64(42);
    let mut detected = 0;
    for _ in 0..60 {
        let (disk, model, path) = populated();
        let len = file_image(&disk, &path).len() as u64;
        let offset = rng.random_range(0..len);
        disk.flip_bit(&path, offset, rng.random_range(0..8));
        if read_back(&disk, &model) > 0 {
            detected += 1;
        }
    }
    assert!(detected > 10, "only {detected} of 60 flips hit live pages");
}

#[test]
fn btree_misdirected_page_write_is_reported_as_misdirected() {
    let (disk, model, path) = populated();
    let image = file_image(&disk, &path);
    // Page 2 was written where page 3 should be (pages 2.. are data pages).
    let page2 = image.get(2 * PAGE_BYTES..3 * PAGE_BYTES).expect("page 2").to_vec();
    for page in 3..(image.len() / PAGE_BYTES) as u64 {
        let (disk, model, path) = populated();
        disk.poke(&path, page * PAGE_BYTES as u64, &page2);
        read_back(&disk, &model); // must not panic or return wrong data
    }
    disk.poke(&path, 3 * PAGE_BYTES as u64, &page2);
    let store = block_on(ShardStore::open(disk.clone(), store_config())).expect("meta pages intact");
    let mut saw_misdirected = false;
    for key in model.keys() {
        if let Err(StoreReadError::BTree(BTreeError::Corrupt { fault, page, .. })) = block_on(store.get(PARTITION, key))
        {
            assert_eq!(page, 3);
            assert!(matches!(fault, keel_node::btree::page::PageFault::Misdirected { found: 2 }), "got {fault:?}");
            saw_misdirected = true;
        }
    }
    assert!(saw_misdirected || read_back(&disk, &model) == 0, "page 3 is live but the misdirect went unnoticed");
}

#[test]
fn btree_stale_and_torn_pages_are_detected() {
    // Take an image, rewrite every key (new checkpoint), then put back one
    // page of the old image (a lost write) or half of it (a torn write).
    let (disk, model, path) = populated();
    let old = file_image(&disk, &path);
    let mut store = block_on(ShardStore::open(disk.clone(), store_config())).expect("open");
    let mut new_model = BTreeMap::new();
    for (i, key) in model.keys().enumerate() {
        let value = value_for(u32::try_from(i).unwrap_or(0) + 1000);
        block_on(store.put(PARTITION, key, &value)).expect("put");
        new_model.insert(key.clone(), value);
    }
    block_on(store.checkpoint_all()).expect("checkpoint");
    drop(store);
    let new = file_image(&disk, &path);
    let pages = (old.len().min(new.len()) / PAGE_BYTES) as u64;
    let mut detected = 0;
    for page in 2..pages {
        for torn in [false, true] {
            let start = usize::try_from(page).unwrap_or(0) * PAGE_BYTES;
            let end = if torn { start + PAGE_BYTES / 2 } else { start + PAGE_BYTES };
            let (Some(old_bytes), Some(new_bytes)) = (old.get(start..end), new.get(start..end)) else { continue };
            if old_bytes == new_bytes {
                continue;
            }
            let copy = SimDisk::new(2);
            copy_tree(&disk, &copy);
            copy.poke(&path, start as u64, old_bytes);
            if read_back(&copy, &new_model) > 0 {
                detected += 1;
            }
        }
    }
    assert!(detected > 0, "no stale or torn page was detected");
}

/// Copies every file of `from` into `to` (durably).
fn copy_tree(from: &SimDisk, to: &SimDisk) {
    block_on(async {
        use keel_node::io::{Disk, DiskFile};
        for dir in ["/shard/wal", "/shard/partitions"] {
            to.create_dir_all(Path::new(dir)).await.expect("mkdir");
            for name in from.list(Path::new(dir)).await.expect("list") {
                let path = Path::new(dir).join(name);
                let bytes = from.peek(&path).expect("file");
                let file = to.open(&path, true).await.expect("create");
                let aligned = bytes.len().div_ceil(4096) * 4096;
                let mut buf = bytes.clone();
                buf.resize(aligned, 0);
                file.write_at(0, &buf).await.expect("write");
                file.truncate(bytes.len() as u64).await.expect("truncate");
                file.sync_data().await.expect("sync");
            }
            to.sync_dir(Path::new(dir)).await.expect("sync dir");
        }
    });
}

#[test]
fn wal_bit_flips_yield_a_prefix_or_a_corruption_error() {
    let config = WalConfig {
        segment_size_bytes: 64 * 1024,
        payload_max_bytes: 8 * 1024,
        recycle_pool_max: 1,
        zero_fill: true,
        ..WalConfig::default()
    };
    let payload = |i: u64| -> Vec<u8> { (0..(i * 13 % 900)).map(|j| (i + j) as u8).collect() };
    let mut rng = SmallRng::seed_from_u64(7);
    let (mut prefixes, mut errors) = (0, 0);
    for round in 0..150u64 {
        let disk = SimDisk::new(round);
        let dir = Path::new("/wal");
        let (wal, _) = block_on(Wal::open(disk.clone(), dir, config.clone())).expect("open");
        for i in 0..120u64 {
            let meta = RecordMeta { partition: 1, term: 1, index: i, kind: USER_KIND_MIN };
            block_on(wal.append(meta, &payload(i))).expect("append");
        }
        let segments = wal.segments();
        drop(wal);
        let seq = segments[rng.random_range(0..segments.len())];
        let path = dir.join(format!("wal-{seq:016x}.seg"));
        let len = disk.peek(&path).expect("segment").len() as u64;
        disk.flip_bit(&path, rng.random_range(0..len), rng.random_range(0..8));
        match block_on(Wal::open(disk.clone(), dir, config.clone())) {
            Ok((_, records)) => {
                for (i, record) in (0u64..).zip(&records) {
                    assert_eq!(record.meta.index, i, "round {round}: records out of order");
                    assert_eq!(record.payload, payload(i), "round {round}: wrong payload");
                }
                if records.len() < 120 {
                    prefixes += 1;
                }
            }
            Err(WalOpenError::Corrupt { .. }) => errors += 1,
            Err(e) => panic!("round {round}: unexpected error {e}"),
        }
    }
    assert!(errors > 50, "only {errors} of 150 flips reported as corruption ({prefixes} truncated)");
}

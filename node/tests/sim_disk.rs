//! The simulated disk's own contract, which every crash test relies on:
//! what survives a crash, and what may not.

#![allow(clippy::indexing_slicing)]

use std::path::Path;

use futures_lite::future::block_on;
use keel_node::io::sim::SimDisk;
use keel_node::io::{Disk, DiskFile};

const BLOCK: usize = 4096;

fn block(fill: u8) -> Vec<u8> {
    vec![fill; BLOCK]
}

/// Reopens `path` after a crash and returns its blocks (missing ones empty).
fn blocks_after_crash(disk: &SimDisk, path: &Path, count: usize) -> Vec<Vec<u8>> {
    disk.crash();
    let file = block_on(disk.open(path, false)).expect("the file's creation was synced");
    (0..count).map(|i| block_on(file.read_at((i * BLOCK) as u64, BLOCK)).expect("read")).collect()
}

#[test]
fn a_durable_write_survives_every_crash_while_the_unsynced_writes_around_it_may_not() {
    let path = Path::new("/d/file");
    let mut unsynced_lost = 0;
    for seed in 0..64 {
        let disk = SimDisk::new(seed);
        block_on(disk.create_dir_all(Path::new("/d"))).expect("mkdir");
        let file = block_on(disk.open(path, true)).expect("create");
        block_on(disk.sync_dir(Path::new("/d"))).expect("sync dir");
        block_on(file.write_at(0, &block(1))).expect("write");
        block_on(file.write_durable_at(BLOCK as u64, &block(2))).expect("durable write");
        block_on(file.write_at(2 * BLOCK as u64, &block(3))).expect("write");
        drop(file);
        let blocks = blocks_after_crash(&disk, path, 3);
        assert_eq!(blocks[1], block(2), "seed {seed}: the durable write was lost");
        if blocks[0] != block(1) || blocks[2] != block(3) {
            unsynced_lost += 1;
        }
        assert_eq!(disk.stats().durable_writes, 1, "seed {seed}");
    }
    // Otherwise the durable write would have synced everything, which the
    // contract does not promise and callers must not rely on.
    assert!(unsynced_lost > 0, "a crash never lost an unsynced write beside a durable one");
}

#[test]
fn a_crash_does_not_replay_an_older_unsynced_write_over_a_durable_one() {
    let path = Path::new("/d/file");
    for seed in 0..64 {
        let disk = SimDisk::new(seed);
        block_on(disk.create_dir_all(Path::new("/d"))).expect("mkdir");
        let file = block_on(disk.open(path, true)).expect("create");
        block_on(disk.sync_dir(Path::new("/d"))).expect("sync dir");
        // An unsynced write of three blocks, then a durable one over its
        // middle block.
        let old: Vec<u8> = [block(1), block(1), block(1)].concat();
        block_on(file.write_at(0, &old)).expect("write");
        block_on(file.write_durable_at(BLOCK as u64, &block(2))).expect("durable write");
        drop(file);
        let blocks = blocks_after_crash(&disk, path, 3);
        assert_eq!(blocks[1], block(2), "seed {seed}: the older write came back over the durable one");
    }
}

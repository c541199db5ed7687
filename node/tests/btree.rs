//! B-tree behaviour on the simulated disk, checked against a `BTreeMap`.

#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    clippy::indexing_slicing
)]

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::Path;
use std::rc::Rc;

use futures_lite::future::block_on;
use keel_node::btree::cache::FETCH_AHEAD_MAX;
use keel_node::btree::node::PageRef;
use keel_node::btree::page::PAGE_BYTES;
use keel_node::btree::{BTree, BTreeError, Direction, PageCache};
use keel_node::io::Disk;
use keel_node::io::sim::{SimDisk, SimFile};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const FILE: &str = "/data/p1.btree";

fn cache(pages: usize) -> Rc<RefCell<PageCache>> {
    Rc::new(RefCell::new(PageCache::new(pages * PAGE_BYTES)))
}

fn create(disk: &SimDisk, pages: usize) -> BTree<SimFile> {
    block_on(async {
        let file = disk.open(Path::new(FILE), true).await.expect("create file");
        disk.sync_dir(Path::new("/data")).await.expect("sync dir");
        BTree::create(file, 1, cache(pages)).await.expect("create tree")
    })
}

fn reopen(disk: &SimDisk, pages: usize) -> Result<BTree<SimFile>, BTreeError> {
    block_on(async {
        let file = disk.open(Path::new(FILE), false).await.expect("open file");
        BTree::open(file, 1, cache(pages)).await
    })
}

fn random_key(rng: &mut SmallRng) -> Vec<u8> {
    let n: u32 = rng.random_range(0..2000);
    let mut key = format!("key{n:05}").into_bytes();
    if n.is_multiple_of(7) {
        key.extend(std::iter::repeat_n(b'x', usize::try_from(n).unwrap_or(0))); // long keys
    }
    key
}

fn random_value(rng: &mut SmallRng) -> Vec<u8> {
    let len = match rng.random_range(0..20u8) {
        0 => rng.random_range(5000..120_000), // overflow pages
        1..=3 => rng.random_range(1000..4000),
        _ => rng.random_range(0..300),
    };
    let fill: u8 = rng.random();
    (0..len).map(|i| fill.wrapping_add((i % 251) as u8)).collect()
}

fn check_all(tree: &BTree<SimFile>, model: &BTreeMap<Vec<u8>, Vec<u8>>, seed: u64) {
    let all = block_on(tree.scan(Bound::Unbounded, Bound::Unbounded, Direction::Forward, usize::MAX)).expect("scan");
    let expected: Vec<(Vec<u8>, Vec<u8>)> = model.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    assert_eq!(all.len(), expected.len(), "seed {seed}: entry count");
    assert!(all == expected, "seed {seed}: full scan differs from the model");
    assert_eq!(tree.len(), model.len() as u64, "seed {seed}: len");
}

/// One random operation (put, delete, get, range scan) on `tree` and
/// `model`, checking every read against the model.
fn random_op(
    tree: &mut BTree<SimFile>,
    model: &mut BTreeMap<Vec<u8>, Vec<u8>>,
    rng: &mut SmallRng,
    seed: u64,
    step: u64,
) {
    let key = random_key(rng);
    match rng.random_range(0..10u8) {
        0..=5 => {
            let value = random_value(rng);
            block_on(tree.put(&key, &value)).expect("put");
            model.insert(key, value);
        }
        6..=7 => {
            let was = block_on(tree.delete(&key)).expect("delete");
            assert_eq!(was, model.remove(&key).is_some(), "seed {seed} step {step}: delete result");
        }
        8 => {
            let got = block_on(tree.get(&key)).expect("get");
            assert_eq!(got.as_ref(), model.get(&key), "seed {seed} step {step}: get");
            let borrowed = block_on(tree.get_with(&key, |v| v == model.get(&key).map(Vec::as_slice)));
            assert!(borrowed.expect("get_with"), "seed {seed} step {step}: get_with");
        }
        _ => {
            let hi = random_key(rng);
            let (lo, hi) = if key <= hi { (key, hi) } else { (hi, key) };
            let limit = rng.random_range(1..50);
            let reverse = rng.random_bool(0.5);
            let range = (Bound::Included(lo.as_slice()), Bound::Excluded(hi.as_slice()));
            let dir = if reverse { Direction::Reverse } else { Direction::Forward };
            let got = block_on(tree.scan(range.0, range.1, dir, limit)).expect("scan");
            let want: Vec<(Vec<u8>, Vec<u8>)> = if reverse {
                model.range::<[u8], _>(range).rev().take(limit).map(|(k, v)| (k.clone(), v.clone())).collect()
            } else {
                model.range::<[u8], _>(range).take(limit).map(|(k, v)| (k.clone(), v.clone())).collect()
            };
            assert!(got == want, "seed {seed} step {step}: range scan differs");
        }
    }
}

#[test]
fn btree_matches_a_btreemap_model_through_checkpoints_and_reopens() {
    for seed in 0..12 {
        let disk = SimDisk::new(seed);
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut tree = create(&disk, 64);
        let mut model = BTreeMap::new();
        for step in 0..3000 {
            random_op(&mut tree, &mut model, &mut rng, seed, step);
            if step % 400 == 399 {
                block_on(tree.checkpoint(step)).expect("checkpoint");
                if rng.random_bool(0.5) {
                    drop(tree);
                    disk.crash();
                    tree = reopen(&disk, 64).expect("reopen");
                    assert_eq!(tree.applied_index(), step);
                }
                check_all(&tree, &model, seed);
            }
        }
        check_all(&tree, &model, seed);
        // Deleting everything shrinks the tree back to one leaf and frees pages.
        let keys: Vec<Vec<u8>> = model.keys().cloned().collect();
        for key in keys {
            assert!(block_on(tree.delete(&key)).expect("delete"));
        }
        block_on(tree.checkpoint(9999)).expect("checkpoint");
        block_on(tree.checkpoint(10000)).expect("checkpoint");
        assert!(tree.is_empty());
        assert!(tree.free_pages() as u64 + 8 >= tree.page_count(), "seed {seed}: pages not reused");
    }
}

/// A checkpoint is written while the tree keeps changing (the server's
/// background checkpoints). Reads during it must see every change, pages of
/// the checkpoint must stay readable although the (tiny) page cache evicts
/// them, and a crash must leave exactly the last finished checkpoint, or the
/// one being written once its write returned.
#[test]
fn btree_keeps_working_while_a_checkpoint_is_written_and_a_crash_leaves_a_whole_checkpoint() {
    for seed in 0..16 {
        let disk = SimDisk::new(seed);
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut tree = create(&disk, 8);
        let mut model = BTreeMap::new();
        // The model as of the last durable checkpoint, and its index.
        let (mut durable, mut durable_index) = (model.clone(), 0);
        let mut step = 0u64;
        for round in 1..=10u64 {
            for _ in 0..250 {
                random_op(&mut tree, &mut model, &mut rng, seed, step);
                step += 1;
            }
            let mut job = tree.begin_checkpoint(round).expect("begin checkpoint");
            assert!(tree.checkpoint_in_flight());
            let at_begin = model.clone();
            // Encoding in slices, with changes in between.
            loop {
                for _ in 0..15 {
                    random_op(&mut tree, &mut model, &mut rng, seed, step);
                    step += 1;
                }
                if job.prepare(3) {
                    break;
                }
            }
            let written = match rng.random_range(0..6u8) {
                0 => {
                    // Crash before the checkpoint is written: the previous one.
                    drop(job);
                    drop(tree);
                    disk.crash();
                    tree = reopen(&disk, 8).expect("reopen");
                    assert_eq!(tree.applied_index(), durable_index, "seed {seed} round {round}");
                    check_all(&tree, &durable, seed);
                    model = durable.clone();
                    continue;
                }
                _ => block_on(job.write(4)),
            };
            written.as_ref().expect("write checkpoint");
            for _ in 0..50 {
                random_op(&mut tree, &mut model, &mut rng, seed, step);
                step += 1;
            }
            let finish = rng.random_bool(0.7);
            if finish {
                tree.finish_checkpoint(job, written).expect("finish checkpoint");
                assert!(!tree.checkpoint_in_flight());
                check_all(&tree, &model, seed);
            } else {
                drop(job);
            }
            (durable, durable_index) = (at_begin, round);
            if !finish || rng.random_bool(0.3) {
                // The meta page is durable once `write` returned: the new one.
                drop(tree);
                disk.crash();
                tree = reopen(&disk, 8).expect("reopen");
                assert_eq!(tree.applied_index(), durable_index, "seed {seed} round {round}");
                check_all(&tree, &durable, seed);
                model = durable.clone();
            }
        }
    }
}

#[test]
fn a_finished_checkpoint_hands_back_its_decoded_nodes_to_be_freed_in_steps() {
    let disk = SimDisk::new(78);
    let mut tree = create(&disk, 1024);
    let mut model = BTreeMap::new();
    for i in 0..3000u32 {
        let (key, value) = (format!("k{i:05}").into_bytes(), vec![u8::try_from(i % 251).unwrap_or(0); 100]);
        block_on(tree.put(&key, &value)).expect("put");
        model.insert(key, value);
    }
    let dirty_nodes = tree.dirty_bytes() / PAGE_BYTES;
    assert!(dirty_nodes > 10, "the load dirtied many pages ({dirty_nodes})");
    let mut job = tree.begin_checkpoint(1).expect("begin checkpoint");
    while !job.prepare(16) {}
    let written = block_on(job.write(4));
    let mut retired = tree.finish_checkpoint(job, written).expect("finish checkpoint");
    // Every node the checkpoint wrote is handed back, none freed yet.
    assert_eq!(retired.len(), dirty_nodes);
    // The tree reads its clean pages meanwhile, not the retired nodes.
    check_all(&tree, &model, 78);
    assert!(!retired.release(3));
    assert_eq!(retired.len(), dirty_nodes - 3);
    assert!(retired.release(usize::MAX));
    assert!(retired.is_empty());
    check_all(&tree, &model, 78);
    drop(tree);
    let tree = reopen(&disk, 1024).expect("reopen");
    check_all(&tree, &model, 78);
}

#[test]
fn btree_reuses_freed_pages_after_checkpoints() {
    let disk = SimDisk::new(77);
    let mut tree = create(&disk, 64);
    let value = vec![7u8; 1000];
    for round in 0..20u64 {
        for i in 0..500u32 {
            block_on(tree.put(format!("k{i:04}").as_bytes(), &value)).expect("put");
        }
        block_on(tree.checkpoint(round)).expect("checkpoint");
    }
    // 500 × ~1 KiB fits in about 40 pages; rewriting it 20 times must not
    // grow the file 20-fold.
    assert!(tree.page_count() < 200, "file grew to {} pages", tree.page_count());
}

/// Reads `key` with misses deferred, as the server does: each miss fails the
/// read and names one page, which is read without the tree and cached; the
/// read is run again until it succeeds. Returns the value and the pages
/// fetched.
fn get_fetching(tree: &BTree<SimFile>, cache: &RefCell<PageCache>, key: &[u8]) -> (Option<Vec<u8>>, Vec<PageRef>) {
    let mut fetched = Vec::new();
    loop {
        cache.borrow_mut().set_defer_misses(true);
        let read = block_on(tree.get(key));
        cache.borrow_mut().set_defer_misses(false);
        match read {
            Ok(value) => {
                assert!(!cache.borrow().has_missed(), "a read that succeeded missed nothing");
                return (value, fetched);
            }
            Err(BTreeError::NotCached) => {
                let (file_id, pages) = cache.borrow_mut().take_missed().expect("a deferred miss names its page");
                assert_eq!(file_id, 1);
                assert_eq!(pages.len(), 1, "a point read asks for the page it missed alone");
                fetched.extend(&pages);
                let page_read = block_on(tree.page_fetch(pages).read()).expect("the page reads and verifies");
                tree.cache_fetched(page_read);
                assert!(fetched.len() <= 8, "a read of one key misses at most the tree's depth of pages");
            }
            Err(e) => panic!("read failed: {e}"),
        }
    }
}

/// Key-value pairs as a scan returns them.
type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// Scans the whole tree with misses deferred, as the server does: each miss
/// is fetched without the tree and cached, and the scan runs again. Returns
/// the entries and the number of pages each fetch brought.
fn scan_fetching(tree: &BTree<SimFile>, cache: &RefCell<PageCache>) -> (Entries, Vec<usize>) {
    let mut brought = Vec::new();
    loop {
        cache.borrow_mut().set_defer_misses(true);
        let read = block_on(tree.scan(Bound::Unbounded, Bound::Unbounded, Direction::Forward, usize::MAX));
        cache.borrow_mut().set_defer_misses(false);
        match read {
            Ok(all) => return (all, brought),
            Err(BTreeError::NotCached) => {
                let (_, pages) = cache.borrow_mut().take_missed().expect("missed");
                let fetched = block_on(tree.page_fetch(pages).read()).expect("the pages read");
                brought.push(fetched.len());
                tree.cache_fetched(fetched);
            }
            Err(e) => panic!("scan failed: {e}"),
        }
    }
}

/// A read with misses deferred fails on each page it lacks and names it
/// (a scan adds the pages it would read next); fetched without the tree and
/// cached, the pages make it succeed. A page
/// fetched and then made stale (the tree rewrote it, and reused its number
/// for other contents, before the fetch was cached) is never served for the
/// newer write: every key still reads its own value.
#[test]
fn btree_deferred_misses_are_fetched_without_the_tree_and_a_stale_fetch_is_never_served() {
    let disk = SimDisk::new(79);
    let cache = cache(4096);
    let mut tree = block_on(async {
        let file = disk.open(Path::new(FILE), true).await.expect("create file");
        disk.sync_dir(Path::new("/data")).await.expect("sync dir");
        BTree::create(file, 1, Rc::clone(&cache)).await.expect("create tree")
    });
    let mut model = BTreeMap::new();
    let value = |i: u32, round: u32| vec![u8::try_from((i + round) % 251).unwrap_or(0); 200];
    for i in 0..2000u32 {
        let key = format!("k{i:05}").into_bytes();
        block_on(tree.put(&key, &value(i, 0))).expect("put");
        model.insert(key, value(i, 0));
    }
    block_on(tree.checkpoint(1)).expect("checkpoint");
    cache.borrow_mut().remove_file(1);

    // Cold: the read misses the root, the branches and the leaf in turn.
    let key = b"k01000".to_vec();
    let (read, fetched) = get_fetching(&tree, &cache, &key);
    assert_eq!(read.as_ref(), model.get(&key));
    assert!(fetched.len() >= 2, "root and leaf at least were fetched ({fetched:?})");
    // Warm now: no miss.
    let (read, again) = get_fetching(&tree, &cache, &key);
    assert_eq!(read.as_ref(), model.get(&key));
    assert!(again.is_empty());

    // A cold scan asks, with each miss, for the pages it would read next:
    // the leaves come 8 at a time, in 1 + FETCH_AHEAD_MAX pages.
    cache.borrow_mut().remove_file(1);
    let (all, sizes) = scan_fetching(&tree, &cache);
    assert!(all.iter().map(|(k, v)| (k, v)).eq(model.iter()), "the scan returns the tree");
    let eights = sizes.iter().filter(|&&n| n == 1 + FETCH_AHEAD_MAX).count();
    assert!(eights * 2 > sizes.len(), "most fetches read 8 pages ({sizes:?})");

    // A fetch of the key's leaf that arrives late: read now, cached only
    // after the tree has moved on.
    let leaf = *fetched.last().expect("the leaf was fetched last");
    let stale = block_on(tree.page_fetch(vec![leaf]).read()).expect("the leaf reads");
    // The tree rewrites every page twice, a checkpoint after each: the
    // first rewrite moves to new pages and frees the old ones, the second
    // takes those again (lowest free first), the leaf's page number with
    // them, now holding other contents.
    for round in 1..3u32 {
        for i in 0..2000u32 {
            let key = format!("k{i:05}").into_bytes();
            block_on(tree.put(&key, &value(i, round))).expect("put");
            model.insert(key, value(i, round));
        }
        block_on(tree.checkpoint(u64::from(round) + 1)).expect("checkpoint");
    }
    cache.borrow_mut().remove_file(1);
    tree.cache_fetched(stale);
    assert_eq!(cache.borrow().len(), 1, "the stale page was cached");
    check_all(&tree, &model, 79);
    for (k, v) in &model {
        assert_eq!(get_fetching(&tree, &cache, k).0.as_ref(), Some(v));
    }
}

/// A large value's overflow pages are kept in memory until the next
/// checkpoint writes them (storing one does no I/O), then cached like nodes;
/// a read that misses one on a cold cache fetches its whole chain without
/// the tree in one go, and a cold scan fetches the chains it would read next
/// with the missed one. Values stay whole through all of it and a reopen.
#[test]
fn btree_large_values_are_written_by_checkpoints_cached_and_fetched_whole() {
    const PAGES_PER_VALUE: usize = 7; // 100,000 bytes at 16,332 a page
    let disk = SimDisk::new(83);
    let cache = cache(4096);
    let mut tree = block_on(async {
        let file = disk.open(Path::new(FILE), true).await.expect("create file");
        disk.sync_dir(Path::new("/data")).await.expect("sync dir");
        BTree::create(file, 1, Rc::clone(&cache)).await.expect("create tree")
    });
    let mut model = BTreeMap::new();
    let value =
        |i: u32, round: u32| -> Vec<u8> { (0..100_000u32).map(|b| ((b * 7 + i + round) % 251) as u8).collect() };
    let before = disk.stats();
    for i in 0..40u32 {
        let key = format!("big{i:03}").into_bytes();
        block_on(tree.put(&key, &value(i, 0))).expect("put");
        model.insert(key, value(i, 0));
        let key = format!("small{i:03}").into_bytes();
        block_on(tree.put(&key, b"v")).expect("put");
        model.insert(key, b"v".to_vec());
    }
    let after = disk.stats();
    assert_eq!((after.reads, after.writes), (before.reads, before.writes), "storing values did no I/O");
    assert!(tree.dirty_bytes() >= 40 * PAGES_PER_VALUE * PAGE_BYTES, "the overflow pages count as dirty memory");
    check_all(&tree, &model, 83);
    block_on(tree.checkpoint(1)).expect("checkpoint");
    assert!(disk.stats().writes > after.writes, "the checkpoint wrote them");
    assert_eq!(tree.dirty_bytes(), 0);

    // Cached by the checkpoint: reads do no I/O.
    let before = disk.stats().reads;
    check_all(&tree, &model, 83);
    assert_eq!(disk.stats().reads, before, "the checkpoint cached the overflow pages it wrote");

    // Cold: a point read misses root, leaf, then the value's first page; that
    // fetch brings the whole chain and the read then succeeds.
    cache.borrow_mut().remove_file(1);
    let key = b"big017".to_vec();
    let mut brought = Vec::new();
    let read = loop {
        cache.borrow_mut().set_defer_misses(true);
        let read = block_on(tree.get(&key));
        cache.borrow_mut().set_defer_misses(false);
        match read {
            Ok(v) => break v,
            Err(BTreeError::NotCached) => {
                let (_, pages) = cache.borrow_mut().take_missed().expect("missed");
                let fetched = block_on(tree.page_fetch(pages).read()).expect("the pages read");
                brought.push(fetched.len());
                tree.cache_fetched(fetched);
                assert!(brought.len() <= 8, "a point read misses at most depth + 1 times ({brought:?})");
            }
            Err(e) => panic!("read failed: {e}"),
        }
    };
    assert_eq!(read.as_ref(), model.get(&key));
    assert_eq!(brought.last(), Some(&PAGES_PER_VALUE), "the value's miss brought its whole chain ({brought:?})");

    // A cold scan: each miss of a value brings the next values' chains too.
    cache.borrow_mut().remove_file(1);
    let (all, brought) = scan_fetching(&tree, &cache);
    assert!(all.iter().map(|(k, v)| (k, v)).eq(model.iter()), "the scan returns the tree");
    let most = (1 + FETCH_AHEAD_MAX) * PAGES_PER_VALUE;
    assert!(brought.contains(&most), "a value's miss brought 8 chains ({brought:?})");
    assert!(brought.len() <= 12, "40 values came in a few fetches ({brought:?})");

    // Replaced values: the new chains wait for the next checkpoint, the old
    // ones are freed; a reopen sees the checkpointed state.
    for i in (0..40u32).step_by(3) {
        let key = format!("big{i:03}").into_bytes();
        block_on(tree.put(&key, &value(i, 1))).expect("put");
        model.insert(key, value(i, 1));
    }
    check_all(&tree, &model, 84);
    block_on(tree.checkpoint(2)).expect("checkpoint");
    drop(tree);
    let tree = reopen(&disk, 64).expect("reopen");
    check_all(&tree, &model, 85);
}

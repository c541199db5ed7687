//! The per-shard page cache: clean, verified pages (nodes and the overflow
//! pages of large values) of every B-tree on the shard, bounded in bytes,
//! evicted by CLOCK (second chance).
//!
//! O_DIRECT bypasses the kernel's page cache, so this is the only cache on
//! the read path. Each entry is charged one page ([`PAGE_BYTES`]): it holds
//! its page's bytes. Dirty pages are not here; each tree keeps its own until
//! the next checkpoint writes them.
//!
//! CLOCK instead of strict LRU: a hit only sets a flag (no list or tree
//! update on the read path), and eviction sweeps a hand over the slots,
//! sparing once each page that was used since the last sweep.
//!
//! An entry is served only to a reference carrying its write sequence
//! ([`PageCache::get`]): a page read from disk without the engine (below)
//! may arrive after the tree moved on, and must then never be taken for
//! the page's newer contents.
//!
//! **Misses fetched elsewhere.** A read that misses would read the disk
//! while its caller holds the shard's engine, and every other request of
//! the shard would wait for that read (a cold or larger-than-cache working
//! set then ran one disk read at a time). With misses deferred
//! ([`PageCache::set_defer_misses`], set by the engine around the reads of
//! a request that has logged nothing), the tree fails the lookup instead
//! and the cache records the page ([`PageCache::take_missed`]; a scan adds
//! the next pages it would visit, [`PageCache::record_ahead`]); the server
//! reads it without the engine, caches it and runs the request again
//! (`BTree::page_fetch`, `server.rs`).

use std::rc::Rc;

use rustc_hash::FxHashMap;

use super::node::{PageNode, PageRef};
use super::page::PAGE_BYTES;

/// Pages a scan's deferred miss asks for beyond the missed one: the next
/// pages it would visit, read at once with it (a scan that ran again once
/// per page stood in the engine's queue once per leaf).
pub const FETCH_AHEAD_MAX: usize = 7;

/// Key of a cached page: `(file id, page number)`.
pub type CacheKey = (u64, u64);

/// Hit and miss counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    /// Lookups served from memory.
    pub hits: u64,
    /// Lookups that went to disk.
    pub misses: u64,
    /// Pages evicted.
    pub evictions: u64,
}

#[derive(Debug)]
struct Entry {
    node: Rc<PageNode>,
    /// The node's write sequence (kept beside it: a hit compares it without
    /// touching the page).
    seq: u64,
    referenced: bool,
    /// Position of the key in the clock ring.
    slot: usize,
}

/// See the module docs.
#[derive(Debug)]
pub struct PageCache {
    capacity_pages: usize,
    /// The page itself sits in the map entry: a hit costs one probe.
    index: FxHashMap<CacheKey, Entry>,
    /// Keys in clock order, for the eviction sweep.
    ring: Vec<CacheKey>,
    hand: usize,
    stats: CacheStats,
    /// See the module docs.
    defer_misses: bool,
    /// The first page a deferred miss asked for, and the pages a scan would
    /// read next: `(file id, references)`.
    missed: Option<(u64, Vec<PageRef>)>,
}

impl PageCache {
    /// A cache holding at most `capacity_bytes` (at least 16 pages).
    #[must_use]
    pub fn new(capacity_bytes: usize) -> Self {
        let capacity_pages = (capacity_bytes / PAGE_BYTES).max(16);
        Self {
            capacity_pages,
            index: FxHashMap::default(),
            ring: Vec::new(),
            hand: 0,
            stats: CacheStats::default(),
            defer_misses: false,
            missed: None,
        }
    }

    /// Looks up the write `seq` of a page, marking it used. An entry holding
    /// another write of the page is a miss (it is replaced when the page is
    /// read again).
    pub fn get(&mut self, key: CacheKey, seq: u64) -> Option<Rc<PageNode>> {
        match self.index.get_mut(&key) {
            Some(entry) if entry.seq == seq => {
                entry.referenced = true;
                self.stats.hits += 1;
                Some(Rc::clone(&entry.node))
            }
            _ => {
                self.stats.misses += 1;
                None
            }
        }
    }

    /// Inserts a clean page, evicting by CLOCK when full.
    pub fn insert(&mut self, key: CacheKey, node: Rc<PageNode>) {
        let seq = node.seq();
        if let Some(entry) = self.index.get_mut(&key) {
            entry.node = node;
            entry.seq = seq;
            entry.referenced = true;
            return;
        }
        if self.ring.len() < self.capacity_pages {
            self.index.insert(key, Entry { node, seq, referenced: false, slot: self.ring.len() });
            self.ring.push(key);
            return;
        }
        // Sweep: clear reference bits until an unreferenced page comes up.
        // Terminates within two turns of the hand.
        loop {
            self.hand = (self.hand + 1) % self.ring.len();
            let victim = *self.ring.get(self.hand).expect("hand is within the ring");
            let entry = self.index.get_mut(&victim).expect("ring and index agree");
            if entry.referenced {
                entry.referenced = false;
                continue;
            }
            self.index.remove(&victim);
            self.index.insert(key, Entry { node, seq, referenced: false, slot: self.hand });
            *self.ring.get_mut(self.hand).expect("hand is within the ring") = key;
            self.stats.evictions += 1;
            break;
        }
        debug_assert_eq!(self.index.len(), self.ring.len());
    }

    /// Inserts a page read without the engine, unless the cache holds the
    /// same or a later write of the page (write sequences only grow within a
    /// file): a late read never replaces what a checkpoint cached since, and
    /// an entry left by an older write, which no reference asks for any
    /// more, does not keep the page out.
    pub fn insert_newer(&mut self, key: CacheKey, node: Rc<PageNode>) {
        if self.index.get(&key).is_none_or(|entry| entry.seq < node.seq()) {
            self.insert(key, node);
        }
    }

    /// Whether a miss fails the read and is recorded instead of read from
    /// disk (module docs). A recorded miss stays until taken.
    pub fn set_defer_misses(&mut self, on: bool) {
        self.defer_misses = on;
    }

    /// Whether misses are deferred now.
    #[must_use]
    pub fn defers_misses(&self) -> bool {
        self.defer_misses
    }

    /// Records a deferred miss (the first one counts: the read stopped there).
    pub fn record_miss(&mut self, file_id: u64, page: PageRef) {
        self.missed.get_or_insert_with(|| (file_id, vec![page]));
    }

    /// Adds pages to fetch with the miss just recorded for `file_id` (a
    /// scan's next pages), up to [`FETCH_AHEAD_MAX`] in all; pages cached
    /// already are left out.
    pub fn record_ahead(&mut self, file_id: u64, pages: impl IntoIterator<Item = PageRef>) {
        let Some((missed_file, missed)) = self.missed.as_mut().filter(|(f, _)| *f == file_id) else { return };
        let missing = pages
            .into_iter()
            .filter(|r| self.index.get(&(*missed_file, r.page)).is_none_or(|entry| entry.seq != r.seq));
        let room = (1 + FETCH_AHEAD_MAX).saturating_sub(missed.len());
        missed.extend(missing.take(room));
    }

    /// Whether a deferred miss was recorded and not taken yet.
    #[must_use]
    pub fn has_missed(&self) -> bool {
        self.missed.is_some()
    }

    /// The recorded miss: `(file id, references)`, the missed page first.
    pub fn take_missed(&mut self) -> Option<(u64, Vec<PageRef>)> {
        self.missed.take()
    }

    /// Drops a page (it was freed or rewritten elsewhere).
    pub fn remove(&mut self, key: CacheKey) {
        let Some(entry) = self.index.remove(&key) else { return };
        self.ring.swap_remove(entry.slot);
        if let Some(moved) = self.ring.get(entry.slot)
            && let Some(moved_entry) = self.index.get_mut(moved)
        {
            moved_entry.slot = entry.slot;
        }
        if self.hand >= self.ring.len() {
            self.hand = 0;
        }
    }

    /// Drops every page of one file.
    pub fn remove_file(&mut self, file_id: u64) {
        let keys: Vec<CacheKey> = self.index.keys().filter(|(f, _)| *f == file_id).copied().collect();
        for key in keys {
            self.remove(key);
        }
    }

    /// Pages cached now.
    #[must_use]
    pub fn len(&self) -> usize {
        self.ring.len()
    }

    /// Whether nothing is cached.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }

    /// Capacity in pages.
    #[must_use]
    pub fn capacity_pages(&self) -> usize {
        self.capacity_pages
    }

    /// Counters.
    #[must_use]
    pub fn stats(&self) -> CacheStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf() -> Rc<PageNode> {
        leaf_written(1)
    }

    /// An empty leaf as page 2 of file 1, written with sequence `seq`.
    fn leaf_written(seq: u64) -> Rc<PageNode> {
        let page = crate::btree::node::Node::Leaf(Vec::new()).encode(2, 1, seq);
        Rc::new(PageNode::parse(crate::btree::page::Kind::Leaf, page).expect("valid page"))
    }

    #[test]
    fn an_entry_is_served_only_for_the_write_sequence_it_holds() {
        let mut cache = PageCache::new(16 * PAGE_BYTES);
        cache.insert((1, 2), leaf_written(7));
        assert_eq!(cache.get((1, 2), 7).map(|n| n.seq()), Some(7));
        assert!(cache.get((1, 2), 9).is_none(), "a reference to a newer write of the page misses");
        // A late read of the old write does not replace a newer entry...
        cache.insert((1, 2), leaf_written(9));
        cache.insert_newer((1, 2), leaf_written(7));
        assert_eq!(cache.get((1, 2), 9).map(|n| n.seq()), Some(9));
        assert!(cache.get((1, 2), 7).is_none());
        // ...but replaces an older one, which would otherwise keep the page
        // out of the cache for good...
        cache.insert_newer((1, 2), leaf_written(11));
        assert_eq!(cache.get((1, 2), 11).map(|n| n.seq()), Some(11));
        // ...and fills an empty slot.
        cache.remove((1, 2));
        cache.insert_newer((1, 2), leaf_written(7));
        assert_eq!(cache.get((1, 2), 7).map(|n| n.seq()), Some(7));
        assert_eq!(cache.stats().hits, 4);
        assert_eq!(cache.stats().misses, 2);
    }

    #[test]
    fn a_deferred_miss_is_recorded_once_and_kept_until_taken() {
        let mut cache = PageCache::new(16 * PAGE_BYTES);
        assert!(!cache.defers_misses());
        cache.set_defer_misses(true);
        cache.record_miss(1, PageRef { page: 4, seq: 3 });
        cache.record_miss(1, PageRef { page: 5, seq: 3 });
        assert!(cache.has_missed());
        assert_eq!(cache.take_missed(), Some((1, vec![PageRef { page: 4, seq: 3 }])), "the read stopped at the first");
        assert!(!cache.has_missed());
        cache.record_miss(2, PageRef { page: 6, seq: 1 });
        cache.set_defer_misses(false);
        assert!(!cache.defers_misses());
        assert_eq!(cache.take_missed(), Some((2, vec![PageRef { page: 6, seq: 1 }])));
        assert_eq!(cache.take_missed(), None);
    }

    #[test]
    fn a_scans_next_pages_join_its_miss_unless_cached_up_to_the_limit() {
        let mut cache = PageCache::new(16 * PAGE_BYTES);
        cache.insert((1, 2), leaf_written(7));
        let r = |page, seq| PageRef { page, seq };
        cache.record_ahead(1, [r(9, 1)]);
        assert!(!cache.has_missed(), "nothing to add to without a miss");
        cache.record_miss(1, r(5, 1));
        cache.record_ahead(3, [r(9, 1)]); // another file: ignored
        // Page 2 with the cached sequence is left out; with another it is not.
        cache.record_ahead(1, [r(2, 7), r(2, 8)].into_iter().chain((10..30).map(|p| r(p, 1))));
        let (file, pages) = cache.take_missed().expect("missed");
        assert_eq!(file, 1);
        assert_eq!(pages.len(), 1 + FETCH_AHEAD_MAX);
        assert_eq!(pages.get(..3), Some(&[r(5, 1), r(2, 8), r(10, 1)][..]));
    }

    #[test]
    fn cache_never_exceeds_its_capacity_and_spares_recently_used_pages() {
        let mut cache = PageCache::new(16 * PAGE_BYTES);
        for page in 0..16 {
            cache.insert((1, page), leaf());
        }
        // Touch every page but 5: the sweep must pick 5.
        for page in (0..16).filter(|&p| p != 5) {
            assert!(cache.get((1, page), 1).is_some());
        }
        cache.insert((1, 100), leaf());
        assert_eq!(cache.len(), 16);
        assert!(cache.get((1, 5), 1).is_none(), "page 5 was the only one not used");
        assert!(cache.get((1, 100), 1).is_some());
        for page in 200..1000 {
            cache.insert((2, page), leaf());
            assert!(cache.len() <= 16);
        }
        cache.remove_file(2);
        assert!(cache.len() < 16);
        cache.remove((1, 100));
        assert!(cache.get((1, 100), 1).is_none());
        assert_eq!(cache.stats().evictions, 801);
    }
}

//! The per-shard page cache: clean, verified, decoded nodes of every B-tree
//! on the shard, bounded in bytes, evicted by CLOCK (second chance).
//!
//! O_DIRECT bypasses the kernel's page cache, so this is the only cache on
//! the read path. Each entry is charged one page ([`PAGE_BYTES`]): a decoded
//! node holds about as many bytes as its page. Dirty nodes are not here; each
//! tree keeps its own until the next checkpoint writes them.
//!
//! CLOCK instead of strict LRU: a hit only sets a flag (no list or tree
//! update on the read path), and eviction sweeps a hand over the slots,
//! sparing once each page that was used since the last sweep.

use std::rc::Rc;

use rustc_hash::FxHashMap;

use super::node::PageNode;
use super::page::PAGE_BYTES;

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
}

impl PageCache {
    /// A cache holding at most `capacity_bytes` (at least 16 pages).
    #[must_use]
    pub fn new(capacity_bytes: usize) -> Self {
        let capacity_pages = (capacity_bytes / PAGE_BYTES).max(16);
        Self { capacity_pages, index: FxHashMap::default(), ring: Vec::new(), hand: 0, stats: CacheStats::default() }
    }

    /// Looks a page up, marking it used.
    pub fn get(&mut self, key: CacheKey) -> Option<Rc<PageNode>> {
        match self.index.get_mut(&key) {
            Some(entry) => {
                entry.referenced = true;
                self.stats.hits += 1;
                Some(Rc::clone(&entry.node))
            }
            None => {
                self.stats.misses += 1;
                None
            }
        }
    }

    /// Inserts a clean page, evicting by CLOCK when full.
    pub fn insert(&mut self, key: CacheKey, node: Rc<PageNode>) {
        if let Some(entry) = self.index.get_mut(&key) {
            entry.node = node;
            entry.referenced = true;
            return;
        }
        if self.ring.len() < self.capacity_pages {
            self.index.insert(key, Entry { node, referenced: false, slot: self.ring.len() });
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
            self.index.insert(key, Entry { node, referenced: false, slot: self.hand });
            *self.ring.get_mut(self.hand).expect("hand is within the ring") = key;
            self.stats.evictions += 1;
            break;
        }
        debug_assert_eq!(self.index.len(), self.ring.len());
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
        let page = crate::btree::node::Node::Leaf(Vec::new()).encode(2, 1, 1);
        Rc::new(PageNode::parse(crate::btree::page::Kind::Leaf, page).expect("valid page"))
    }

    #[test]
    fn cache_never_exceeds_its_capacity_and_spares_recently_used_pages() {
        let mut cache = PageCache::new(16 * PAGE_BYTES);
        for page in 0..16 {
            cache.insert((1, page), leaf());
        }
        // Touch every page but 5: the sweep must pick 5.
        for page in (0..16).filter(|&p| p != 5) {
            assert!(cache.get((1, page)).is_some());
        }
        cache.insert((1, 100), leaf());
        assert_eq!(cache.len(), 16);
        assert!(cache.get((1, 5)).is_none(), "page 5 was the only one not used");
        assert!(cache.get((1, 100)).is_some());
        for page in 200..1000 {
            cache.insert((2, page), leaf());
            assert!(cache.len() <= 16);
        }
        cache.remove_file(2);
        assert!(cache.len() < 16);
        cache.remove((1, 100));
        assert!(cache.get((1, 100)).is_none());
        assert_eq!(cache.stats().evictions, 801);
    }
}

//! The per-shard page cache: clean, verified, decoded nodes of every B-tree
//! on the shard, bounded in bytes, evicted least-recently-used first.
//!
//! O_DIRECT bypasses the kernel's page cache, so this is the only cache on
//! the read path. Each entry is charged one page ([`PAGE_BYTES`]): a decoded
//! node holds about as many bytes as its page. Dirty nodes are not here; each
//! tree keeps its own until the next checkpoint writes them.

use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use super::node::Node;
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

/// See the module docs.
#[derive(Debug)]
pub struct PageCache {
    capacity_pages: usize,
    entries: HashMap<CacheKey, (Rc<Node>, u64)>,
    lru: BTreeMap<u64, CacheKey>,
    tick: u64,
    stats: CacheStats,
}

impl PageCache {
    /// A cache holding at most `capacity_bytes` (at least 16 pages).
    #[must_use]
    pub fn new(capacity_bytes: usize) -> Self {
        let capacity_pages = (capacity_bytes / PAGE_BYTES).max(16);
        Self { capacity_pages, entries: HashMap::new(), lru: BTreeMap::new(), tick: 0, stats: CacheStats::default() }
    }

    /// Looks a page up, marking it recently used.
    pub fn get(&mut self, key: CacheKey) -> Option<Rc<Node>> {
        self.tick += 1;
        let tick = self.tick;
        match self.entries.get_mut(&key) {
            Some((node, used)) => {
                self.lru.remove(used);
                *used = tick;
                self.lru.insert(tick, key);
                self.stats.hits += 1;
                Some(Rc::clone(node))
            }
            None => {
                self.stats.misses += 1;
                None
            }
        }
    }

    /// Inserts a clean page, evicting the least recently used beyond capacity.
    pub fn insert(&mut self, key: CacheKey, node: Rc<Node>) {
        self.tick += 1;
        if let Some((_, used)) = self.entries.insert(key, (node, self.tick)) {
            self.lru.remove(&used);
        }
        self.lru.insert(self.tick, key);
        while self.entries.len() > self.capacity_pages {
            let Some((_, victim)) = self.lru.pop_first() else { break };
            self.entries.remove(&victim);
            self.stats.evictions += 1;
        }
        debug_assert_eq!(self.entries.len(), self.lru.len());
    }

    /// Drops a page (it was freed or rewritten elsewhere).
    pub fn remove(&mut self, key: CacheKey) {
        if let Some((_, used)) = self.entries.remove(&key) {
            self.lru.remove(&used);
        }
    }

    /// Drops every page of one file.
    pub fn remove_file(&mut self, file_id: u64) {
        let keys: Vec<CacheKey> = self.entries.keys().filter(|(f, _)| *f == file_id).copied().collect();
        for key in keys {
            self.remove(key);
        }
    }

    /// Pages cached now.
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is cached.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
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

    #[test]
    fn cache_never_exceeds_its_capacity_and_evicts_least_recently_used() {
        let mut cache = PageCache::new(16 * PAGE_BYTES);
        for page in 0..16 {
            cache.insert((1, page), Rc::new(Node::Leaf(Vec::new())));
        }
        assert!(cache.get((1, 0)).is_some()); // 0 is now the most recent
        cache.insert((1, 100), Rc::new(Node::Leaf(Vec::new())));
        assert_eq!(cache.len(), 16);
        assert!(cache.get((1, 1)).is_none(), "page 1 was least recently used");
        assert!(cache.get((1, 0)).is_some());
        cache.remove_file(1);
        assert!(cache.is_empty());
    }
}

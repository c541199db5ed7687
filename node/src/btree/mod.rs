//! A copy-on-write B+tree in one file per partition replica.
//!
//! # Copy-on-write and checkpoints
//!
//! The durable tree is the one the newest valid meta page points to. It is
//! never modified in place: the first change to a clean page in an epoch
//! copies it to a newly allocated page (and its parent, up to the root), and
//! the old page is only *pending* free. A checkpoint writes every dirty page,
//! the free list, fdatasync, then the meta page (alternating between pages 0
//! and 1), fdatasync. Only then do pending-free pages become reusable, so a
//! crash at any point leaves the previous checkpoint intact. Between
//! checkpoints the tree's changes exist only in memory; the shard WAL holds
//! them durably and replays them on open.
//!
//! # Detecting bad pages
//!
//! Parents store `(page, seq)` for each child, where `seq` is the write
//! sequence the child carried when it was written. Together with the page
//! header (checksum, own page number, file id) this tells bit rot,
//! misdirected writes, pages of another file and lost (stale) writes apart;
//! each becomes [`BTreeError::Corrupt`], never wrong data.
//!
//! # Memory
//!
//! Clean pages live, decoded, in the shard's [`PageCache`]. Dirty pages stay
//! in the tree until the next checkpoint; callers bound them by
//! checkpointing when [`BTree::dirty_bytes`] crosses their budget.

pub mod cache;
pub mod node;
pub mod page;

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};

use rustc_hash::{FxHashMap, FxHashSet};
use std::ops::Bound;
use std::path::PathBuf;
use std::rc::Rc;

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, IntoBytes};

use crate::io::{DiskFile, IoError};
pub use cache::PageCache;
use node::{Key, Node, PageNode, PageRef, Value, ValueRef, fits_inline};
use page::{
    FREELIST_ENTRIES_MAX, KEY_MAX_BYTES, Kind, META_MAGIC, MetaBody, OVERFLOW_DATA_BYTES, PAGE_BYTES,
    PAGE_HEADER_BYTES, PageFault, Reader, VALUE_MAX_BYTES,
};

/// First page number used for nodes (0 and 1 are the meta pages).
const FIRST_DATA_PAGE: u64 = 2;
/// Nodes smaller than this try to merge with a sibling after a delete.
const UNDERFULL_BYTES: usize = PAGE_BYTES / 4;
/// Two nodes merge only if the result stays below this, so that the next
/// insert does not split it again at once.
const MERGE_MAX_BYTES: usize = PAGE_BYTES * 3 / 4;
/// Largest single write request at checkpoint (runs of adjacent pages).
const WRITE_RUN_MAX_BYTES: usize = 1024 * 1024;
/// A checkpoint syncs after each this many bytes of pages.
const CHECKPOINT_SYNC_EVERY_BYTES: usize = 4 * 1024 * 1024;
/// Page writes of one checkpoint in flight at once.
const WRITES_IN_FLIGHT_MAX: usize = 32;

/// B-tree failures.
#[derive(Debug, thiserror::Error)]
pub enum BTreeError {
    /// The disk failed.
    #[error("B-tree I/O: {0}")]
    Io(#[from] IoError),
    /// A page failed verification.
    #[error("B-tree {path} page {page}: {fault}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The page number.
        page: u64,
        /// What was wrong.
        fault: PageFault,
    },
    /// Neither meta page is valid.
    #[error("B-tree {path}: no valid meta page (page 0: {first}; page 1: {second})")]
    NoValidMeta {
        /// The file.
        path: PathBuf,
        /// Why page 0 was rejected.
        first: PageFault,
        /// Why page 1 was rejected.
        second: PageFault,
    },
    /// Key longer than [`KEY_MAX_BYTES`] or empty.
    #[error("key of {len} bytes is outside 1..={max} bytes")]
    KeySize {
        /// Key length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Value longer than [`VALUE_MAX_BYTES`].
    #[error("value of {len} bytes exceeds the limit of {max} bytes")]
    ValueTooLarge {
        /// Value length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// An earlier checkpoint failed; the tree must be reopened.
    #[error("B-tree {path} is poisoned by a failed checkpoint; reopen it")]
    Poisoned {
        /// The file.
        path: PathBuf,
    },
    /// With misses deferred, a page the read needs is not cached: the cache
    /// recorded it for the caller to fetch ([`BTree::page_fetch`]) before
    /// running the read again. Not a failure of the tree.
    #[error("a page the read needs is not cached; fetch it and run the read again")]
    NotCached,
}

/// A node as loaded for reading: dirty (decoded, in this tree) or clean (a
/// verified page, shared through the page cache).
#[derive(Debug)]
enum Loaded {
    Dirty(Rc<Node>),
    Clean(Rc<PageNode>),
}

impl Loaded {
    fn is_leaf(&self) -> bool {
        match self {
            Self::Dirty(node) => matches!(&**node, Node::Leaf(_)),
            Self::Clean(page) => page.is_leaf(),
        }
    }

    /// Entries of a leaf, separators of a branch.
    fn key_count(&self) -> usize {
        match self {
            Self::Dirty(node) => match &**node {
                Node::Leaf(entries) => entries.len(),
                Node::Branch { keys, .. } => keys.len(),
            },
            Self::Clean(page) => page.len(),
        }
    }

    fn key(&self, i: usize) -> &[u8] {
        match self {
            Self::Dirty(node) => match &**node {
                Node::Leaf(entries) => entries.get(i).map_or(&[][..], |(k, _)| k.as_bytes()),
                Node::Branch { keys, .. } => keys.get(i).map_or(&[][..], |k| k.as_bytes()),
            },
            Self::Clean(page) => page.key(i),
        }
    }

    fn value(&self, i: usize) -> ValueRef<'_> {
        match self {
            Self::Dirty(node) => match &**node {
                Node::Leaf(entries) => entries.get(i).map_or(ValueRef::Inline(&[]), |(_, v)| v.as_ref()),
                Node::Branch { .. } => unreachable!("values live in leaves"),
            },
            Self::Clean(page) => page.value(i),
        }
    }

    fn child(&self, i: usize) -> PageRef {
        match self {
            Self::Dirty(node) => match &**node {
                Node::Branch { children, .. } => children.get(i).copied().unwrap_or(PageRef { page: 0, seq: 0 }),
                Node::Leaf(_) => unreachable!("children live in branches"),
            },
            Self::Clean(page) => page.child(i),
        }
    }

    /// Index of the child that holds `key`.
    fn upper_bound(&self, key: &[u8]) -> usize {
        match self {
            Self::Dirty(node) => match &**node {
                Node::Branch { keys, .. } => Node::child_index(keys, key),
                Node::Leaf(_) => unreachable!("children live in branches"),
            },
            Self::Clean(page) => page.upper_bound(key),
        }
    }
}

/// Scan direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Ascending keys.
    Forward,
    /// Descending keys.
    Reverse,
}

/// A copy-on-write B+tree over one file. See the module docs.
#[derive(Debug)]
pub struct BTree<F: DiskFile> {
    /// Shared with a checkpoint being written (see [`CheckpointWrite`]).
    file: Rc<F>,
    file_id: u64,
    cache: Rc<RefCell<PageCache>>,
    /// Nodes changed since the last checkpoint, by (new) page number.
    dirty: FxHashMap<u64, Rc<Node>>,
    /// Nodes of the checkpoint being written, still reachable: immutable
    /// (a change copies one to a new page, like a clean page), and read from
    /// here until they are durable and cached.
    flushing: FxHashMap<u64, Rc<Node>>,
    /// Overflow pages written since the last checkpoint (sealed, with their
    /// write sequences): the next checkpoint writes them with the nodes, so
    /// storing a large value does no I/O of its own.
    dirty_overflow: FxHashMap<u64, Rc<PageNode>>,
    /// Overflow pages of the checkpoint being written, read from here
    /// until they are durable and cached (like `flushing`).
    flushing_overflow: FxHashMap<u64, Rc<PageNode>>,
    /// Whether a checkpoint was begun and not yet finished.
    checkpoint_in_flight: bool,
    /// Pages allocated since the last checkpoint: not referenced by the
    /// durable tree, so they may be freed and reused at once.
    fresh: FxHashSet<u64>,
    root: PageRef,
    page_count: u64,
    free: BTreeSet<u64>,
    /// Durable pages released since the last checkpoint.
    pending_free: Vec<u64>,
    /// Pages holding the durable free list.
    freelist_pages: Vec<u64>,
    next_seq: u64,
    generation: u64,
    applied: Applied,
    entries: u64,
    poisoned: bool,
}

/// The log position a checkpoint covers: the last applied index and the
/// Raft term of its entry (0 for standalone partitions).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    /// Last log index applied.
    pub index: u64,
    /// Its term.
    pub term: u64,
}

impl From<u64> for Applied {
    /// A standalone partition's index (its records carry no term).
    fn from(index: u64) -> Self {
        Self { index, term: 0 }
    }
}

/// Pages to be read and verified without their tree: the server reads
/// the pages a request missed while other requests use the engine, then
/// hands the result to [`BTree::cache_fetched`] (`cache` module docs).
#[derive(Debug)]
pub struct PageFetch<F: DiskFile> {
    file: Rc<F>,
    file_id: u64,
    /// The missed page first, then the pages a scan would read next.
    pages: Vec<PageRef>,
    /// The file's length in pages when the miss was recorded.
    page_count: u64,
}

/// Pages read and verified by a [`PageFetch`].
#[derive(Debug)]
pub struct FetchedPages<F: DiskFile> {
    file: Rc<F>,
    file_id: u64,
    nodes: Vec<(u64, Rc<PageNode>)>,
}

/// Longest overflow chain: pages of the largest value.
const OVERFLOW_CHAIN_MAX: usize = VALUE_MAX_BYTES.div_ceil(OVERFLOW_DATA_BYTES);

/// Reads and verifies page `r` of a file of `page_count` pages, a node or
/// an overflow page (the caller checks which it expected): its number,
/// file, expected write sequence, checksum and layout.
async fn read_node<F: DiskFile>(
    file: &F,
    file_id: u64,
    page_count: u64,
    r: PageRef,
) -> Result<Rc<PageNode>, BTreeError> {
    let corrupt = |fault| BTreeError::Corrupt { path: file.path().to_path_buf(), page: r.page, fault };
    if r.page < FIRST_DATA_PAGE || r.page >= page_count {
        return Err(corrupt(PageFault::Malformed));
    }
    let buf = file.read_at(r.page * PAGE_BYTES as u64, PAGE_BYTES).await?;
    let kinds = [Kind::Leaf, Kind::Branch, Kind::Overflow];
    let (header, _) = page::verify(&buf, &kinds, r.page, file_id, Some(r.seq)).map_err(corrupt)?;
    let kind = Kind::from_u8(header.kind).ok_or_else(|| corrupt(PageFault::WrongKind))?;
    Ok(Rc::new(PageNode::parse(kind, buf).map_err(corrupt)?))
}

impl<F: DiskFile> PageFetch<F> {
    /// Reads and verifies the pages, all at once, with the same checks as a
    /// read by the tree; an overflow page brings the rest of its chain, read
    /// one after another (each names the next). The missed page must read; a
    /// page read ahead or further down a chain that fails is left out (the
    /// tree reads it again when it needs it, and reports what is wrong with
    /// it then).
    pub async fn read(self) -> Result<FetchedPages<F>, BTreeError> {
        let reads = self.pages.iter().map(|&r| self.read_chain(r));
        let mut nodes = Vec::with_capacity(self.pages.len());
        for (i, read) in futures_util::future::join_all(reads).await.into_iter().enumerate() {
            match read {
                Ok(pages) => nodes.extend(pages),
                Err(e) if i == 0 => return Err(e),
                Err(_) => {}
            }
        }
        Ok(FetchedPages { file: self.file, file_id: self.file_id, nodes })
    }

    /// Page `r`, and if it is an overflow page the pages after it in its
    /// chain (as many as read; `r` itself must).
    async fn read_chain(&self, r: PageRef) -> Result<Vec<(u64, Rc<PageNode>)>, BTreeError> {
        let mut pages = vec![(r.page, read_node(&*self.file, self.file_id, self.page_count, r).await?)];
        while let Some((next, _)) = pages.last().and_then(|(_, page)| page.overflow())
            && next.page != 0
            && pages.len() < OVERFLOW_CHAIN_MAX
        {
            match read_node(&*self.file, self.file_id, self.page_count, next).await {
                Ok(page) => pages.push((next.page, page)),
                Err(_) => break,
            }
        }
        Ok(pages)
    }
}

impl<F: DiskFile> FetchedPages<F> {
    /// The tree's file id (a partition's id).
    #[must_use]
    pub fn file_id(&self) -> u64 {
        self.file_id
    }

    /// Pages read.
    #[must_use]
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether no page was read (never: the missed page must read).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

impl<F: DiskFile> BTree<F> {
    /// Initialises an empty tree in a new (empty) file and checkpoints it.
    pub async fn create(file: F, file_id: u64, cache: Rc<RefCell<PageCache>>) -> Result<Self, BTreeError> {
        let mut tree = Self {
            file: Rc::new(file),
            file_id,
            cache,
            dirty: FxHashMap::default(),
            flushing: FxHashMap::default(),
            dirty_overflow: FxHashMap::default(),
            flushing_overflow: FxHashMap::default(),
            checkpoint_in_flight: false,
            fresh: FxHashSet::default(),
            root: PageRef { page: FIRST_DATA_PAGE, seq: 0 },
            page_count: FIRST_DATA_PAGE + 1,
            free: BTreeSet::new(),
            pending_free: Vec::new(),
            freelist_pages: Vec::new(),
            next_seq: 1,
            generation: 0,
            applied: Applied::default(),
            entries: 0,
            poisoned: false,
        };
        tree.dirty.insert(FIRST_DATA_PAGE, Rc::new(Node::Leaf(Vec::new())));
        tree.fresh.insert(FIRST_DATA_PAGE);
        tree.checkpoint(0).await?;
        Ok(tree)
    }

    /// Opens a tree: the newest valid meta page wins.
    pub async fn open(file: F, file_id: u64, cache: Rc<RefCell<PageCache>>) -> Result<Self, BTreeError> {
        let buf = file.read_at(0, 2 * PAGE_BYTES).await?;
        let mut best: Option<MetaBody> = None;
        let mut faults = [PageFault::Short; 2];
        for (slot, fault) in (0u64..2).zip(faults.iter_mut()) {
            let start = usize::try_from(slot).unwrap_or(0) * PAGE_BYTES;
            let page = buf.get(start..start + PAGE_BYTES).unwrap_or(&[]);
            match parse_meta(page, slot, file_id) {
                Ok(meta) => {
                    if best.is_none_or(|b| meta.generation.get() > b.generation.get()) {
                        best = Some(meta);
                    }
                }
                Err(f) => *fault = f,
            }
        }
        let [first, second] = faults;
        let path = file.path().to_path_buf();
        let meta = best.ok_or_else(|| BTreeError::NoValidMeta { path: path.clone(), first, second })?;
        let page_count = meta.page_count.get();
        let corrupt = |page, fault| BTreeError::Corrupt { path: path.clone(), page, fault };
        let root = PageRef { page: meta.root_page.get(), seq: meta.root_seq.get() };
        if root.page < FIRST_DATA_PAGE || root.page >= page_count {
            return Err(corrupt(1, PageFault::Malformed));
        }
        let mut tree = Self {
            file: Rc::new(file),
            file_id,
            cache,
            dirty: FxHashMap::default(),
            flushing: FxHashMap::default(),
            dirty_overflow: FxHashMap::default(),
            flushing_overflow: FxHashMap::default(),
            checkpoint_in_flight: false,
            fresh: FxHashSet::default(),
            root,
            page_count,
            free: BTreeSet::new(),
            pending_free: Vec::new(),
            freelist_pages: Vec::new(),
            next_seq: meta.next_seq.get(),
            generation: meta.generation.get(),
            applied: Applied { index: meta.applied_index.get(), term: meta.applied_term.get() },
            entries: meta.entries.get(),
            poisoned: false,
        };
        let mut next = PageRef { page: meta.freelist_page.get(), seq: meta.freelist_seq.get() };
        while next.page != 0 {
            if next.page < FIRST_DATA_PAGE || next.page >= page_count || tree.freelist_pages.contains(&next.page) {
                return Err(corrupt(next.page, PageFault::Malformed));
            }
            let buf = tree.read_page(next.page).await?;
            let (_, body) = page::verify(&buf, &[Kind::Freelist], next.page, file_id, Some(next.seq))
                .map_err(|f| corrupt(next.page, f))?;
            let mut r = Reader::new(body);
            let parsed: Result<_, PageFault> = (|| {
                let following = PageRef { page: r.u64()?, seq: r.u64()? };
                let count = r.u32()? as usize;
                if count > FREELIST_ENTRIES_MAX {
                    return Err(PageFault::Malformed);
                }
                let mut pages = Vec::with_capacity(count);
                for _ in 0..count {
                    let p = r.u64()?;
                    if !(FIRST_DATA_PAGE..page_count).contains(&p) {
                        return Err(PageFault::Malformed);
                    }
                    pages.push(p);
                }
                Ok((following, pages))
            })();
            let (following, pages) = parsed.map_err(|f| corrupt(next.page, f))?;
            tree.freelist_pages.push(next.page);
            tree.free.extend(pages);
            next = following;
        }
        Ok(tree)
    }

    async fn read_page(&self, page: u64) -> Result<Vec<u8>, BTreeError> {
        Ok(self.file.read_at(page * PAGE_BYTES as u64, PAGE_BYTES).await?)
    }

    fn corrupt(&self, page: u64, fault: PageFault) -> BTreeError {
        BTreeError::Corrupt { path: self.file.path().to_path_buf(), page, fault }
    }

    /// Loads a node: dirty set, then cache, then disk (verified). With the
    /// cache deferring misses, a miss fails with [`BTreeError::NotCached`]
    /// and is recorded in the cache instead of read (`cache` module docs).
    async fn load(&self, r: PageRef) -> Result<Loaded, BTreeError> {
        if let Some(node) = self.dirty.get(&r.page) {
            return Ok(Loaded::Dirty(Rc::clone(node)));
        }
        if let Some(node) = self.flushing.get(&r.page) {
            return Ok(Loaded::Dirty(Rc::clone(node)));
        }
        let node = match self.cached(r)? {
            Some(node) => node,
            None => self.read_clean(r).await?,
        };
        if !node.is_node() {
            return Err(self.corrupt(r.page, PageFault::WrongKind));
        }
        Ok(Loaded::Clean(node))
    }

    /// A clean page (node or overflow page) from the cache; `None` if it
    /// must be read, unless the cache defers misses: then the miss is
    /// recorded and the read fails with [`BTreeError::NotCached`]. (Kept out
    /// of the async read, so that a hit builds no future for it.)
    fn cached(&self, r: PageRef) -> Result<Option<Rc<PageNode>>, BTreeError> {
        let mut cache = self.cache.borrow_mut();
        if let Some(page) = cache.get((self.file_id, r.page), r.seq) {
            return Ok(Some(page));
        }
        if cache.defers_misses() {
            cache.record_miss(self.file_id, r);
            return Err(BTreeError::NotCached);
        }
        Ok(None)
    }

    /// Reads and verifies a clean page from disk, and caches it.
    async fn read_clean(&self, r: PageRef) -> Result<Rc<PageNode>, BTreeError> {
        let page = read_node(&*self.file, self.file_id, self.page_count, r).await?;
        self.cache.borrow_mut().insert((self.file_id, r.page), Rc::clone(&page));
        Ok(page)
    }

    /// An overflow page: written since the last checkpoint (in memory), or
    /// clean (cache, then disk).
    async fn load_overflow(&self, r: PageRef) -> Result<Rc<PageNode>, BTreeError> {
        if r.page < FIRST_DATA_PAGE || r.page >= self.page_count {
            return Err(self.corrupt(r.page, PageFault::Malformed));
        }
        if let Some(page) = self.dirty_overflow.get(&r.page).or_else(|| self.flushing_overflow.get(&r.page)) {
            if page.seq() != r.seq {
                return Err(self.corrupt(r.page, PageFault::Stale { expected: r.seq, found: page.seq() }));
            }
            return Ok(Rc::clone(page));
        }
        let page = match self.cached(r)? {
            Some(page) => page,
            None => self.read_clean(r).await?,
        };
        if page.is_node() {
            return Err(self.corrupt(r.page, PageFault::WrongKind));
        }
        Ok(page)
    }

    /// Whether page `page` is held in memory by this tree (changed since the
    /// last checkpoint, or being checkpointed): a copy read from disk would
    /// never be asked for.
    fn in_memory(&self, page: u64) -> bool {
        self.dirty.contains_key(&page)
            || self.flushing.contains_key(&page)
            || self.dirty_overflow.contains_key(&page)
            || self.flushing_overflow.contains_key(&page)
    }

    /// What reads the node pages `pages` (verified) without the tree, so
    /// without whatever holds the tree: see [`PageFetch`].
    #[must_use]
    pub fn page_fetch(&self, pages: Vec<PageRef>) -> PageFetch<F> {
        PageFetch { file: Rc::clone(&self.file), file_id: self.file_id, pages, page_count: self.page_count }
    }

    /// Caches node pages read by a [`PageFetch`] of this tree, except a page
    /// cached in the same or a later write ([`PageCache::insert_newer`]) or
    /// changed in memory since (dirty or being checkpointed: the cached copy
    /// would never be asked for). A page the tree has meanwhile moved past
    /// is harmless: the cache serves an entry only for the write sequence it
    /// holds.
    pub fn cache_fetched(&self, fetched: FetchedPages<F>) {
        if !Rc::ptr_eq(&self.file, &fetched.file) {
            return;
        }
        let mut cache = self.cache.borrow_mut();
        for (page, node) in fetched.nodes {
            if !self.in_memory(page) {
                cache.insert_newer((self.file_id, page), node);
            }
        }
    }

    fn check_usable(&self) -> Result<(), BTreeError> {
        if self.poisoned {
            return Err(BTreeError::Poisoned { path: self.file.path().to_path_buf() });
        }
        Ok(())
    }

    /// The value stored under `key`.
    pub async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, BTreeError> {
        self.get_with(key, |value| value.map(<[u8]>::to_vec)).await
    }

    /// Calls `f` with the value stored under `key`, borrowed from the cached
    /// page when it is stored inline: the zero-copy read path (a server can
    /// copy the bytes straight into its response).
    pub async fn get_with<R>(&self, key: &[u8], f: impl FnOnce(Option<&[u8]>) -> R) -> Result<R, BTreeError> {
        self.check_usable()?;
        let mut node = self.load(self.root).await?;
        loop {
            let child = match &node {
                Loaded::Clean(page) if page.is_leaf() => {
                    return match page.search(key) {
                        Ok(i) => self.with_value(page.value(i), f).await,
                        Err(_) => Ok(f(None)),
                    };
                }
                Loaded::Clean(page) => page.child(page.upper_bound(key)),
                Loaded::Dirty(dirty) => match &**dirty {
                    Node::Branch { keys, children } => *children
                        .get(Node::child_index(keys, key))
                        .ok_or_else(|| self.corrupt(0, PageFault::Malformed))?,
                    Node::Leaf(entries) => {
                        return match Node::search_leaf(entries, key).ok().and_then(|i| entries.get(i)) {
                            Some((_, value)) => self.with_value(value.as_ref(), f).await,
                            None => Ok(f(None)),
                        };
                    }
                },
            };
            node = self.load(child).await?;
        }
    }

    async fn with_value<R>(&self, value: ValueRef<'_>, f: impl FnOnce(Option<&[u8]>) -> R) -> Result<R, BTreeError> {
        match value {
            ValueRef::Inline(v) => Ok(f(Some(v))),
            ValueRef::Overflow { len, first } if len as usize <= OVERFLOW_DATA_BYTES => {
                // One page: borrowed from it, like an inline value.
                let page = self.load_overflow(first).await?;
                match page.overflow() {
                    Some((next, chunk)) if next.page == 0 && chunk.len() == len as usize => Ok(f(Some(chunk))),
                    _ => Err(self.corrupt(first.page, PageFault::Malformed)),
                }
            }
            ValueRef::Overflow { len, first } => Ok(f(Some(&self.walk_overflow(len, first, true).await?.1))),
        }
    }

    /// Inserts or replaces `key`.
    pub async fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), BTreeError> {
        self.check_usable()?;
        if key.is_empty() || key.len() > KEY_MAX_BYTES {
            return Err(BTreeError::KeySize { len: key.len(), max: KEY_MAX_BYTES });
        }
        if value.len() > VALUE_MAX_BYTES {
            return Err(BTreeError::ValueTooLarge { len: value.len(), max: VALUE_MAX_BYTES });
        }
        let stored = if fits_inline(key.len(), value.len()) {
            Value::Inline(value.to_vec())
        } else {
            self.write_overflow(value)
        };
        let (mut path, leaf) = self.descend_mut(key).await?;
        let replaced = {
            let Node::Leaf(entries) = self.dirty_node_mut(leaf) else { unreachable!("descend_mut ends at a leaf") };
            match Node::search_leaf(entries, key) {
                Ok(i) => entries.get_mut(i).map(|slot| std::mem::replace(&mut slot.1, stored)),
                Err(i) => {
                    entries.insert(i, (Key::from(key), stored));
                    None
                }
            }
        };
        match replaced {
            Some(old) => self.free_value(&old).await?,
            None => self.entries += 1,
        }
        self.split_up(&mut path, leaf);
        Ok(())
    }

    /// Removes `key`; returns whether it was present.
    pub async fn delete(&mut self, key: &[u8]) -> Result<bool, BTreeError> {
        self.check_usable()?;
        // Look first, so that deleting a missing key copies nothing.
        if self.get(key).await?.is_none() {
            return Ok(false);
        }
        let (mut path, leaf) = self.descend_mut(key).await?;
        let removed = {
            let Node::Leaf(entries) = self.dirty_node_mut(leaf) else { unreachable!("descend_mut ends at a leaf") };
            match Node::search_leaf(entries, key) {
                Ok(i) => Some(entries.remove(i).1),
                Err(_) => None,
            }
        };
        let Some(old) = removed else { return Ok(false) };
        self.entries -= 1;
        self.free_value(&old).await?;
        self.rebalance_up(&mut path, leaf).await?;
        Ok(true)
    }

    /// Up to `limit` entries with keys between `lo` and `hi`, in `direction`
    /// order.
    pub async fn scan(
        &self,
        lo: Bound<&[u8]>,
        hi: Bound<&[u8]>,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, BTreeError> {
        self.check_usable()?;
        let mut out = Vec::new();
        let mut stack = vec![self.root];
        let below_hi = |k: &[u8]| match hi {
            Bound::Unbounded => true,
            Bound::Included(h) => k <= h,
            Bound::Excluded(h) => k < h,
        };
        let above_lo = |k: &[u8]| match lo {
            Bound::Unbounded => true,
            Bound::Included(l) => k >= l,
            Bound::Excluded(l) => k > l,
        };
        while let Some(r) = stack.pop() {
            if out.len() >= limit {
                break;
            }
            let node = match self.load(r).await {
                Err(BTreeError::NotCached) => {
                    // The pages the scan would read next are fetched with
                    // the missed one.
                    let next = stack.iter().rev().filter(|r| !self.in_memory(r.page)).copied();
                    self.cache.borrow_mut().record_ahead(self.file_id, next);
                    return Err(BTreeError::NotCached);
                }
                loaded => loaded?,
            };
            let count = node.key_count();
            if !node.is_leaf() {
                let first = match lo {
                    Bound::Unbounded => 0,
                    Bound::Included(k) | Bound::Excluded(k) => node.upper_bound(k),
                };
                let last = match hi {
                    Bound::Unbounded => count,
                    Bound::Included(k) | Bound::Excluded(k) => node.upper_bound(k),
                };
                // The stack pops last-in first: push in reverse visiting order.
                match direction {
                    Direction::Forward => stack.extend((first..=last.max(first)).rev().map(|i| node.child(i))),
                    Direction::Reverse => stack.extend((first..=last.max(first)).map(|i| node.child(i))),
                }
                continue;
            }
            let in_order = |from: usize| -> Box<dyn Iterator<Item = usize>> {
                match direction {
                    Direction::Forward => Box::new(from..count),
                    Direction::Reverse => Box::new((0..count.min(from + 1)).rev()),
                }
            };
            let start = if direction == Direction::Forward { 0 } else { count.saturating_sub(1) };
            for i in in_order(start) {
                let key = node.key(i);
                let (inside_lo, inside_hi) = (above_lo(key), below_hi(key));
                if inside_lo && inside_hi {
                    let value = match self.read_value(node.value(i)).await {
                        Err(BTreeError::NotCached) => {
                            // The large values the scan would read next in
                            // this leaf are fetched with the missed one.
                            let next = in_order(i).skip(1).filter(|&j| above_lo(node.key(j)) && below_hi(node.key(j)));
                            let next = next.take(limit - out.len()).filter_map(|j| match node.value(j) {
                                ValueRef::Overflow { first, .. } if !self.in_memory(first.page) => Some(first),
                                ValueRef::Overflow { .. } | ValueRef::Inline(_) => None,
                            });
                            self.cache.borrow_mut().record_ahead(self.file_id, next);
                            return Err(BTreeError::NotCached);
                        }
                        value => value?,
                    };
                    out.push((key.to_vec(), value));
                    if out.len() >= limit {
                        break;
                    }
                } else if (direction == Direction::Forward && !inside_hi)
                    || (direction == Direction::Reverse && !inside_lo)
                {
                    return Ok(out); // past the far bound: nothing more can match
                }
            }
        }
        Ok(out)
    }

    /// Writes every dirty page, the free list and then the meta page with
    /// `applied`, syncing in between. On failure the tree is poisoned.
    /// The three steps of [`Self::begin_checkpoint`] in one call.
    pub async fn checkpoint(&mut self, applied: impl Into<Applied>) -> Result<(), BTreeError> {
        let mut job = self.begin_checkpoint(applied)?;
        while !job.prepare(usize::MAX) {}
        let written = job.write(WRITES_IN_FLIGHT_MAX).await;
        self.finish_checkpoint(job, written).map(drop)
    }

    /// Step 1 of a checkpoint, without I/O and without encoding pages (it
    /// is quick: the caller may hold a lock): takes the dirty nodes, with
    /// their write sequences assigned, and encodes the free list and the
    /// meta page with `applied` into a [`CheckpointWrite`]. From here
    /// on the tree keeps working while the job is prepared and written
    /// (step 2, [`CheckpointWrite::prepare`] and [`CheckpointWrite::write`],
    /// which do not borrow the tree): every node of the checkpoint is
    /// immutable (a later change copies it to a new page), reads find its
    /// nodes in memory until they are durable, pages it frees stay unused
    /// until it is durable, and new pages are allocated past it. Step 3 is
    /// [`Self::finish_checkpoint`]. One checkpoint at a time.
    pub fn begin_checkpoint(&mut self, applied: impl Into<Applied>) -> Result<CheckpointWrite<F>, BTreeError> {
        let applied = applied.into();
        self.check_usable()?;
        assert!(!self.checkpoint_in_flight, "one checkpoint at a time");
        let order = self.assign_seqs();
        // The free list as it will be once this checkpoint is durable, in
        // new pages at the end of the file.
        let mut list: Vec<u64> = self.free.iter().copied().collect();
        list.extend(&self.pending_free);
        list.extend(&self.freelist_pages);
        list.sort_unstable();
        let chain_len = list.len().div_ceil(FREELIST_ENTRIES_MAX) as u64;
        let chain: Vec<u64> = (self.page_count..self.page_count + chain_len).collect();
        let mut freelist = Vec::with_capacity(chain.len());
        let mut next = PageRef { page: 0, seq: 0 };
        for (page, chunk) in chain.iter().zip(list.chunks(FREELIST_ENTRIES_MAX)).rev() {
            let mut buf = Vec::with_capacity(PAGE_BYTES);
            buf.resize(PAGE_HEADER_BYTES, 0);
            buf.extend_from_slice(&next.page.to_le_bytes());
            buf.extend_from_slice(&next.seq.to_le_bytes());
            buf.extend_from_slice(&u32::try_from(chunk.len()).expect("bounded").to_le_bytes());
            for p in chunk {
                buf.extend_from_slice(&p.to_le_bytes());
            }
            buf.resize(PAGE_BYTES, 0);
            let seq = self.next_seq;
            self.next_seq += 1;
            page::seal(&mut buf, Kind::Freelist, *page, self.file_id, seq);
            freelist.push((*page, buf));
            next = PageRef { page: *page, seq };
        }
        let page_count = self.page_count + chain_len;
        // The meta page, in the slot the previous checkpoint did not use.
        let generation = self.generation + 1;
        let slot = generation % 2;
        let meta = MetaBody {
            magic: META_MAGIC,
            page_size: U32::new(u32::try_from(PAGE_BYTES).expect("16 KiB")),
            reserved: U32::new(0),
            generation: U64::new(generation),
            root_page: U64::new(self.root.page),
            root_seq: U64::new(self.root.seq),
            page_count: U64::new(page_count),
            next_seq: U64::new(self.next_seq + 1),
            applied_index: U64::new(applied.index),
            freelist_page: U64::new(next.page),
            freelist_seq: U64::new(next.seq),
            entries: U64::new(self.entries),
            applied_term: U64::new(applied.term),
        };
        let mut meta_page = Vec::with_capacity(PAGE_BYTES);
        meta_page.resize(PAGE_HEADER_BYTES, 0);
        meta_page.extend_from_slice(meta.as_bytes());
        meta_page.resize(PAGE_BYTES, 0);
        page::seal(&mut meta_page, Kind::Meta, slot, self.file_id, self.next_seq);
        self.next_seq += 1;
        // In memory the tree moves on at once: the free-list pages are
        // taken, pages released so far wait for this checkpoint, and every
        // page written so far is part of it (no longer fresh).
        self.page_count = page_count;
        let mut released = std::mem::take(&mut self.pending_free);
        released.append(&mut self.freelist_pages);
        self.freelist_pages = chain;
        self.fresh.clear();
        let mut nodes = Vec::with_capacity(order.len());
        for (p, seq) in order {
            let node = self.dirty.remove(&p).expect("ordered pages are dirty");
            self.flushing.insert(p, Rc::clone(&node));
            nodes.push((p, seq, node));
        }
        assert!(self.dirty.is_empty(), "every dirty page is in the checkpoint");
        let mut pages = Vec::with_capacity(self.dirty_overflow.len() + nodes.len());
        for (p, page) in self.dirty_overflow.drain() {
            self.flushing_overflow.insert(p, Rc::clone(&page));
            pages.push((p, page));
        }
        self.checkpoint_in_flight = true;
        Ok(CheckpointWrite {
            file: Rc::clone(&self.file),
            file_id: self.file_id,
            nodes,
            pages,
            freelist,
            meta_offset: slot * PAGE_BYTES as u64,
            meta_page,
            generation,
            applied,
            released,
        })
    }

    /// Assigns write sequences to the dirty nodes, children before parents
    /// (post-order), so that each parent records the sequence of its
    /// children; returns the pages with their sequences.
    fn assign_seqs(&mut self) -> Vec<(u64, u64)> {
        let mut order: Vec<(u64, u64)> = Vec::with_capacity(self.dirty.len());
        if !self.dirty.contains_key(&self.root.page) {
            assert!(self.dirty.is_empty(), "every dirty page is reachable from the root");
            return order;
        }
        let mut written: HashMap<u64, u64> = HashMap::new();
        let mut stack = vec![(self.root.page, false)];
        while let Some((p, expanded)) = stack.pop() {
            if !expanded {
                stack.push((p, true));
                if let Node::Branch { children, .. } = &**self.dirty.get(&p).expect("only dirty pages are stacked") {
                    stack.extend(children.iter().filter(|c| self.dirty.contains_key(&c.page)).map(|c| (c.page, false)));
                }
                continue;
            }
            let node = Rc::make_mut(self.dirty.get_mut(&p).expect("only dirty pages are stacked"));
            if let Node::Branch { children, .. } = node {
                for child in children.iter_mut() {
                    if let Some(seq) = written.get(&child.page) {
                        child.seq = *seq;
                    }
                }
            }
            let seq = self.next_seq;
            self.next_seq += 1;
            order.push((p, seq));
            written.insert(p, seq);
        }
        assert_eq!(written.len(), self.dirty.len(), "every dirty page is reachable from the root");
        self.root.seq = *written.get(&self.root.page).expect("root was written");
        order
    }

    /// Step 3 of a checkpoint: `written` is what [`CheckpointWrite::write`]
    /// returned. On success the checkpoint's pages become clean cached
    /// pages and the pages it released become reusable, and the decoded
    /// nodes they replace are handed back as [`Retired`], for the caller
    /// to free when it suits it; on failure the tree is poisoned (what is
    /// durable is unknown; reopen to recover).
    pub fn finish_checkpoint(
        &mut self,
        job: CheckpointWrite<F>,
        written: Result<(), BTreeError>,
    ) -> Result<Retired, BTreeError> {
        assert!(self.checkpoint_in_flight, "finish_checkpoint without begin_checkpoint");
        assert!(Rc::ptr_eq(&self.file, &job.file), "a checkpoint finishes on its own tree");
        self.checkpoint_in_flight = false;
        if let Err(e) = written {
            self.poisoned = true;
            self.flushing.clear();
            self.flushing_overflow.clear();
            return Err(e);
        }
        assert!(job.generation == self.generation + 1, "checkpoints finish in order");
        self.generation = job.generation;
        self.applied = job.applied;
        self.free.extend(job.released);
        // The written pages become the clean cached copies, unless a change
        // freed them meanwhile.
        let mut cache = self.cache.borrow_mut();
        let mut retired = Retired { nodes: Vec::with_capacity(job.pages.len()) };
        for (p, page) in job.pages {
            if let Some(node) = self.flushing.remove(&p) {
                retired.nodes.push(node);
                cache.insert((self.file_id, p), page);
            } else if self.flushing_overflow.remove(&p).is_some() {
                cache.insert((self.file_id, p), page);
            }
        }
        assert!(self.flushing.is_empty(), "every node of the checkpoint was written");
        assert!(self.flushing_overflow.is_empty(), "every overflow page of the checkpoint was written");
        Ok(retired)
    }

    /// Whether a checkpoint was begun and not finished.
    pub fn checkpoint_in_flight(&self) -> bool {
        self.checkpoint_in_flight
    }

    /// Whether `job` was begun by this tree.
    pub fn owns(&self, job: &CheckpointWrite<F>) -> bool {
        Rc::ptr_eq(&self.file, &job.file)
    }

    fn alloc(&mut self) -> u64 {
        let page = self.free.pop_first().unwrap_or_else(|| {
            self.page_count += 1;
            self.page_count - 1
        });
        self.fresh.insert(page);
        page
    }

    fn free_page(&mut self, page: u64) {
        debug_assert!(page >= FIRST_DATA_PAGE);
        self.cache.borrow_mut().remove((self.file_id, page));
        self.dirty.remove(&page);
        self.flushing.remove(&page);
        self.dirty_overflow.remove(&page);
        self.flushing_overflow.remove(&page);
        if self.fresh.remove(&page) {
            self.free.insert(page);
        } else {
            self.pending_free.push(page);
        }
    }

    fn dirty_node_mut(&mut self, page: u64) -> &mut Node {
        Rc::make_mut(self.dirty.get_mut(&page).expect("page is dirty"))
    }

    /// Makes the page behind `r` dirty (copying it to a new page if it is
    /// durable) and returns the page number to use from now on.
    async fn make_dirty(&mut self, r: PageRef) -> Result<u64, BTreeError> {
        if self.dirty.contains_key(&r.page) {
            return Ok(r.page);
        }
        let node = match self.load(r).await? {
            Loaded::Dirty(node) => (*node).clone(),
            Loaded::Clean(page) => page.to_node(),
        };
        let copy = self.alloc();
        self.dirty.insert(copy, Rc::new(node));
        self.free_page(r.page);
        Ok(copy)
    }

    /// Makes the path from the root to the leaf for `key` dirty. Returns the
    /// branch pages with the child index taken in each, and the leaf page.
    async fn descend_mut(&mut self, key: &[u8]) -> Result<(Vec<(u64, usize)>, u64), BTreeError> {
        let root = self.make_dirty(self.root).await?;
        self.root = PageRef { page: root, seq: 0 };
        let mut path = Vec::new();
        let mut cur = root;
        loop {
            let (idx, child) = match &**self.dirty.get(&cur).expect("dirty") {
                Node::Leaf(_) => return Ok((path, cur)),
                Node::Branch { keys, children } => {
                    let i = Node::child_index(keys, key);
                    (i, *children.get(i).ok_or_else(|| self.corrupt(cur, PageFault::Malformed))?)
                }
            };
            let new_child = self.make_dirty(child).await?;
            if let Node::Branch { children, .. } = self.dirty_node_mut(cur)
                && let Some(slot) = children.get_mut(idx)
            {
                *slot = PageRef { page: new_child, seq: 0 };
            }
            path.push((cur, idx));
            cur = new_child;
        }
    }

    /// Splits `cur` and its ancestors while they overflow their page.
    fn split_up(&mut self, path: &mut Vec<(u64, usize)>, mut cur: u64) {
        loop {
            if self.dirty.get(&cur).expect("dirty").encoded_bytes() <= PAGE_BYTES {
                return;
            }
            let (separator, right_node) = split_node(self.dirty_node_mut(cur));
            let right = self.alloc();
            self.dirty.insert(right, Rc::new(right_node));
            let right_ref = PageRef { page: right, seq: 0 };
            match path.pop() {
                Some((parent, idx)) => {
                    if let Node::Branch { keys, children } = self.dirty_node_mut(parent) {
                        keys.insert(idx, separator);
                        children.insert(idx + 1, right_ref);
                    }
                    cur = parent;
                }
                None => {
                    let root = self.alloc();
                    let left_ref = PageRef { page: cur, seq: 0 };
                    let node = Node::Branch { keys: vec![separator], children: vec![left_ref, right_ref] };
                    self.dirty.insert(root, Rc::new(node));
                    self.root = PageRef { page: root, seq: 0 };
                    return;
                }
            }
        }
    }

    /// After a delete: drops empty leaves, merges small nodes with a sibling,
    /// and shortens the tree while the root has a single child.
    async fn rebalance_up(&mut self, path: &mut Vec<(u64, usize)>, mut cur: u64) -> Result<(), BTreeError> {
        while let Some((parent, idx)) = path.pop() {
            let (size, empty_leaf) = {
                let node = self.dirty.get(&cur).expect("dirty");
                (node.encoded_bytes(), matches!(&**node, Node::Leaf(e) if e.is_empty()))
            };
            let siblings = match &**self.dirty.get(&parent).expect("dirty") {
                Node::Branch { children, .. } => children.len(),
                Node::Leaf(_) => unreachable!("parents are branches"),
            };
            if siblings < 2 {
                cur = parent;
                continue;
            }
            if empty_leaf {
                if let Node::Branch { keys, children } = self.dirty_node_mut(parent) {
                    children.remove(idx);
                    keys.remove(idx.saturating_sub(1));
                }
                self.free_page(cur);
            } else if size < UNDERFULL_BYTES {
                let (left_idx, right_idx) = if idx + 1 < siblings { (idx, idx + 1) } else { (idx - 1, idx) };
                let (left_ref, right_ref, separator) = match &**self.dirty.get(&parent).expect("dirty") {
                    Node::Branch { keys, children } => (
                        *children.get(left_idx).expect("index checked"),
                        *children.get(right_idx).expect("index checked"),
                        keys.get(left_idx).expect("index checked").clone(),
                    ),
                    Node::Leaf(_) => unreachable!("parents are branches"),
                };
                let left = self.make_dirty(left_ref).await?;
                let right = self.make_dirty(right_ref).await?;
                let merged_bytes = self.dirty.get(&left).expect("dirty").encoded_bytes()
                    + self.dirty.get(&right).expect("dirty").encoded_bytes()
                    + separator.len()
                    + 18;
                if let Node::Branch { children, .. } = self.dirty_node_mut(parent) {
                    if let Some(slot) = children.get_mut(left_idx) {
                        *slot = PageRef { page: left, seq: 0 };
                    }
                    if let Some(slot) = children.get_mut(right_idx) {
                        *slot = PageRef { page: right, seq: 0 };
                    }
                }
                if merged_bytes <= MERGE_MAX_BYTES {
                    let right_node = Rc::unwrap_or_clone(self.dirty.remove(&right).expect("dirty"));
                    merge_into(self.dirty_node_mut(left), right_node, separator);
                    if let Node::Branch { keys, children } = self.dirty_node_mut(parent) {
                        keys.remove(left_idx);
                        children.remove(right_idx);
                    }
                    self.free_page(right);
                }
            }
            cur = parent;
        }
        // The root: while it is a branch with one child, that child is the root.
        loop {
            let only_child = match &**self.dirty.get(&self.root.page).expect("root is dirty after a delete") {
                Node::Branch { keys, children } if keys.is_empty() => *children.first().expect("one child"),
                _ => return Ok(()),
            };
            let old = self.root.page;
            self.root = only_child;
            self.free_page(old);
            if !self.dirty.contains_key(&self.root.page) {
                let page = self.make_dirty(self.root).await?;
                self.root = PageRef { page, seq: 0 };
            }
        }
    }

    /// Stores a large value in a chain of overflow pages, sealed now and
    /// written by the next checkpoint (`dirty_overflow`).
    fn write_overflow(&mut self, value: &[u8]) -> Value {
        let chunks: Vec<&[u8]> = value.chunks(OVERFLOW_DATA_BYTES).collect();
        let pages: Vec<u64> = chunks.iter().map(|_| self.alloc()).collect();
        let mut next = PageRef { page: 0, seq: 0 };
        for (page, chunk) in pages.iter().zip(&chunks).rev() {
            let mut buf = Vec::with_capacity(PAGE_BYTES);
            buf.resize(PAGE_HEADER_BYTES, 0);
            buf.extend_from_slice(&next.page.to_le_bytes());
            buf.extend_from_slice(&next.seq.to_le_bytes());
            buf.extend_from_slice(&u32::try_from(chunk.len()).expect("bounded").to_le_bytes());
            buf.extend_from_slice(chunk);
            buf.resize(PAGE_BYTES, 0);
            let seq = self.next_seq;
            self.next_seq += 1;
            page::seal(&mut buf, Kind::Overflow, *page, self.file_id, seq);
            let sealed = PageNode::parse(Kind::Overflow, buf).expect("an overflow page we sealed parses");
            self.dirty_overflow.insert(*page, Rc::new(sealed));
            next = PageRef { page: *page, seq };
        }
        Value::Overflow { len: u32::try_from(value.len()).expect("value limit"), first: next }
    }

    /// Walks an overflow chain; returns its pages and, if `collect`, its data.
    async fn walk_overflow(&self, len: u32, first: PageRef, collect: bool) -> Result<(Vec<u64>, Vec<u8>), BTreeError> {
        let total = len as usize;
        let mut data = Vec::with_capacity(if collect { total } else { 0 });
        let mut pages = Vec::new();
        let mut seen = 0usize;
        let mut next = first;
        let chain_max = total.div_ceil(OVERFLOW_DATA_BYTES);
        while next.page != 0 {
            if pages.len() >= chain_max {
                return Err(self.corrupt(next.page, PageFault::Malformed));
            }
            let page = self.load_overflow(next).await?;
            let (following, chunk) = page.overflow().ok_or_else(|| self.corrupt(next.page, PageFault::WrongKind))?;
            seen += chunk.len();
            if collect {
                data.extend_from_slice(chunk);
            }
            pages.push(next.page);
            next = following;
        }
        if seen != total {
            return Err(self.corrupt(first.page, PageFault::Malformed));
        }
        Ok((pages, data))
    }

    async fn read_value(&self, value: ValueRef<'_>) -> Result<Vec<u8>, BTreeError> {
        match value {
            ValueRef::Inline(v) => Ok(v.to_vec()),
            ValueRef::Overflow { len, first } => Ok(self.walk_overflow(len, first, true).await?.1),
        }
    }

    async fn free_value(&mut self, value: &Value) -> Result<(), BTreeError> {
        if let Value::Overflow { len, first } = value {
            let (pages, _) = self.walk_overflow(*len, *first, false).await?;
            for page in pages {
                self.free_page(page);
            }
        }
        Ok(())
    }

    /// Log index recorded by the last checkpoint.
    #[must_use]
    pub fn applied_index(&self) -> u64 {
        self.applied.index
    }

    /// Log position (index and term) recorded by the last checkpoint.
    #[must_use]
    pub fn applied(&self) -> Applied {
        self.applied
    }

    /// Number of live entries.
    #[must_use]
    pub fn len(&self) -> u64 {
        self.entries
    }

    /// Whether the tree is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// Memory held by dirty pages (bounded by checkpointing).
    #[must_use]
    pub fn dirty_bytes(&self) -> usize {
        (self.dirty.len() + self.dirty_overflow.len()) * PAGE_BYTES
    }

    /// Pages in the file (in use or free).
    #[must_use]
    pub fn page_count(&self) -> u64 {
        self.page_count
    }

    /// Free pages reusable now.
    #[must_use]
    pub fn free_pages(&self) -> usize {
        self.free.len()
    }

    /// The file id written into every page.
    #[must_use]
    pub fn file_id(&self) -> u64 {
        self.file_id
    }

    /// Checkpoint generation.
    #[must_use]
    pub fn generation(&self) -> u64 {
        self.generation
    }
}

fn parse_meta(buf: &[u8], slot: u64, file_id: u64) -> Result<MetaBody, PageFault> {
    let (_, body) = page::verify(buf, &[Kind::Meta], slot, file_id, None)?;
    let meta = MetaBody::read_from_prefix(body).map_err(|_| PageFault::Malformed)?.0;
    if meta.magic != META_MAGIC || meta.page_size.get() as usize != PAGE_BYTES || meta.generation.get() % 2 != slot {
        return Err(PageFault::Malformed);
    }
    Ok(meta)
}

/// The decoded nodes of a finished checkpoint, replaced in the tree by
/// their clean pages. Freeing them is work of its own: a 32 MB checkpoint
/// retires some 1,800 nodes, each a vector of separately allocated keys and
/// values, and freeing them took 1.2–1.7 ms of a shard under YCSB A, in one
/// piece, eight times per checkpoint round. A caller that shares its thread
/// with requests frees them a few at a time ([`Self::release`]) and lets
/// requests run in between; dropping a `Retired` frees them all at once.
#[derive(Debug, Default)]
pub struct Retired {
    nodes: Vec<Rc<Node>>,
}

impl Retired {
    /// Frees up to `nodes_max` of the nodes; true once none are left.
    pub fn release(&mut self, nodes_max: usize) -> bool {
        let keep = self.nodes.len().saturating_sub(nodes_max);
        self.nodes.truncate(keep);
        self.nodes.is_empty()
    }

    /// Nodes not yet freed.
    #[must_use]
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether every node is freed.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

/// A checkpoint being written: the pages and meta page encoded by
/// [`BTree::begin_checkpoint`]. Writing it needs only the file, so the tree
/// (and the shard's engine around it) stays usable meanwhile.
#[derive(Debug)]
#[must_use = "a begun checkpoint must be written and finished"]
pub struct CheckpointWrite<F: DiskFile> {
    file: Rc<F>,
    file_id: u64,
    /// Nodes still to encode, with their page and write sequence.
    nodes: Vec<(u64, u64, Rc<Node>)>,
    /// Encoded pages, parsed (they become the cached clean copies).
    pages: Vec<(u64, Rc<PageNode>)>,
    freelist: Vec<(u64, Vec<u8>)>,
    meta_offset: u64,
    meta_page: Vec<u8>,
    generation: u64,
    applied: Applied,
    /// Pages the durable tree still uses, free once this checkpoint is durable.
    released: Vec<u64>,
}

impl<F: DiskFile> CheckpointWrite<F> {
    /// Step 2a: encodes up to `pages_max` of the checkpoint's nodes into
    /// pages; true once all are. A caller that shares its thread with
    /// latency-sensitive work yields between calls.
    pub fn prepare(&mut self, pages_max: usize) -> bool {
        // From the back: callers take a page or a few at a time, and draining
        // the front would move every node left on each call. Pages are
        // written in page order whatever order they are encoded in.
        let keep = self.nodes.len().saturating_sub(pages_max);
        for (p, seq, node) in self.nodes.drain(keep..) {
            let kind = if matches!(&*node, Node::Branch { .. }) { Kind::Branch } else { Kind::Leaf };
            let page = PageNode::parse(kind, node.encode(p, self.file_id, seq)).expect("a page we encoded parses");
            self.pages.push((p, Rc::new(page)));
        }
        self.nodes.is_empty()
    }

    /// Step 2b, once prepared: writes the pages and the free list (at most
    /// `writes_in_flight_max` requests at once: fewer leave the disk's queue
    /// to the WAL), syncs, writes the meta page, syncs. The meta page goes
    /// last, so a crash at any point leaves the previous checkpoint intact
    /// (the meta page alternates slots).
    pub async fn write(&self, writes_in_flight_max: usize) -> Result<(), BTreeError> {
        assert!(self.nodes.is_empty(), "a checkpoint is prepared before it is written");
        let mut writes: Vec<(u64, &[u8])> = self
            .pages
            .iter()
            .map(|(p, page)| (*p, page.page_bytes()))
            .chain(self.freelist.iter().map(|(p, buf)| (*p, buf.as_slice())))
            .collect();
        writes.sort_unstable_by_key(|(p, _)| *p);
        // Synced every few MiB: on a virtual disk an fdatasync makes the
        // host write back everything the guest wrote before it, so a WAL
        // commit in between waits for at most this much of the checkpoint.
        for chunk in writes.chunks_mut(CHECKPOINT_SYNC_EVERY_BYTES / PAGE_BYTES) {
            write_runs(&*self.file, chunk, writes_in_flight_max).await?;
            self.file.sync_data().await?;
        }
        // The pages are synced, so the meta page is the only unsynced write.
        self.file.write_durable_at(self.meta_offset, &self.meta_page).await?;
        Ok(())
    }

    /// Bytes of pages this checkpoint writes.
    pub fn bytes(&self) -> usize {
        (self.nodes.len() + self.pages.len() + self.freelist.len() + 1) * PAGE_BYTES
    }
}
/// Writes pages, merging runs of adjacent pages into single requests and
/// keeping up to [`WRITES_IN_FLIGHT_MAX`] requests in flight.
async fn write_runs<F: DiskFile>(
    file: &F,
    writes: &mut [(u64, &[u8])],
    writes_in_flight_max: usize,
) -> Result<(), IoError> {
    use futures_util::stream::{self, StreamExt, TryStreamExt};
    writes.sort_unstable_by_key(|(p, _)| *p);
    // Runs of adjacent pages, as index ranges into `writes`.
    let mut runs: Vec<std::ops::Range<usize>> = Vec::new();
    for (i, (p, _)) in writes.iter().enumerate() {
        match runs.last_mut() {
            Some(run)
                if writes.get(run.start).is_some_and(|(start, _)| start + (run.len() as u64) == *p)
                    && (run.len() + 1) * PAGE_BYTES <= WRITE_RUN_MAX_BYTES =>
            {
                run.end = i + 1;
            }
            _ => runs.push(i..i + 1),
        }
    }
    let writes = &*writes;
    stream::iter(runs)
        .map(|run| async move {
            let start = writes.get(run.start).map_or(0, |(p, _)| *p) * PAGE_BYTES as u64;
            let pages: Vec<&[u8]> = writes.get(run.clone()).unwrap_or(&[]).iter().map(|(_, b)| *b).collect();
            file.write_gather_at(start, &pages).await
        })
        .buffer_unordered(writes_in_flight_max.max(1))
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

/// Splits an overflowing node in two by encoded size; returns the separator
/// and the right half.
fn split_node(node: &mut Node) -> (Key, Node) {
    match node {
        Node::Leaf(entries) => {
            assert!(entries.len() >= 2, "an overflowing leaf holds at least two entries");
            let total: usize = entries.iter().map(|(k, v)| node::leaf_entry_bytes(k, v)).sum();
            let mut acc = 0;
            let mut at = entries.len() - 1;
            for (i, (k, v)) in entries.iter().enumerate() {
                acc += node::leaf_entry_bytes(k, v);
                if acc >= total / 2 {
                    at = (i + 1).clamp(1, entries.len() - 1);
                    break;
                }
            }
            let right = entries.split_off(at);
            let separator = right.first().expect("non-empty half").0.clone();
            (separator, Node::Leaf(right))
        }
        Node::Branch { keys, children } => {
            assert!(keys.len() >= 3, "an overflowing branch holds at least three keys");
            let total: usize = keys.iter().map(|k| k.len() + 18).sum();
            let mut acc = 0;
            let mut at = keys.len() / 2;
            for (i, k) in keys.iter().enumerate() {
                acc += k.len() + 18;
                if acc >= total / 2 {
                    at = i.clamp(1, keys.len() - 2);
                    break;
                }
            }
            let right_keys = keys.split_off(at + 1);
            let separator = keys.pop().expect("at >= 1");
            let right_children = children.split_off(at + 1);
            (separator, Node::Branch { keys: right_keys, children: right_children })
        }
    }
}

/// Appends `right` (the next sibling) to `left`.
fn merge_into(left: &mut Node, right: Node, separator: Key) {
    match (left, right) {
        (Node::Leaf(l), Node::Leaf(r)) => l.extend(r),
        (Node::Branch { keys, children }, Node::Branch { keys: rk, children: rc }) => {
            keys.push(separator);
            keys.extend(rk);
            children.extend(rc);
        }
        _ => unreachable!("siblings are at the same level"),
    }
}

//! Decoded B-tree nodes and their page encoding.
//!
//! Nodes live decoded in memory (in the page cache and in the dirty set) and
//! are encoded only when written, which keeps the tree logic simple; the
//! byte layout is in `docs/format/btree.md`.

use super::page::{self, INLINE_ENTRY_MAX_BYTES, Kind, PAGE_BYTES, PAGE_HEADER_BYTES, PageFault, Reader};

/// Where an overflow page's chunk starts: after the page header, the next
/// page's reference (16 bytes) and the chunk's length (4).
const OVERFLOW_CHUNK_AT: usize = PAGE_HEADER_BYTES + 20;

/// A reference to a child page: its number and the write sequence it must
/// carry. `seq == 0` marks a dirty child not yet written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRef {
    /// Page number.
    pub page: u64,
    /// Expected write sequence.
    pub seq: u64,
}

/// A key in a decoded node, with its 8-byte prefix inline: a binary search
/// over a node compares prefixes stored next to each other and follows the
/// pointer to the key bytes only on a tie (Keel keys start with an 8-byte
/// hash, so ties are rare). Orders exactly like the key bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    prefix: u64,
    bytes: Vec<u8>,
}

impl Key {
    /// Wraps key bytes.
    #[must_use]
    pub fn new(bytes: Vec<u8>) -> Self {
        Self { prefix: key_prefix(&bytes), bytes }
    }

    /// The key bytes.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Compares this key with `other`, whose prefix is `other_prefix`.
    #[must_use]
    pub fn cmp_probe(&self, other: &[u8], other_prefix: u64) -> std::cmp::Ordering {
        match self.prefix.cmp(&other_prefix) {
            std::cmp::Ordering::Equal => self.bytes.as_slice().cmp(other),
            decided => decided,
        }
    }
}

impl std::ops::Deref for Key {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

impl From<&[u8]> for Key {
    fn from(bytes: &[u8]) -> Self {
        Self::new(bytes.to_vec())
    }
}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Key {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.cmp_probe(&other.bytes, other.prefix)
    }
}

/// A leaf value: inline bytes or a chain of overflow pages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// Stored in the leaf.
    Inline(Vec<u8>),
    /// Stored in overflow pages starting at `first`.
    Overflow {
        /// Total length.
        len: u32,
        /// First page of the chain.
        first: PageRef,
    },
}

/// A decoded node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// Sorted entries.
    Leaf(Vec<(Key, Value)>),
    /// `children.len() == keys.len() + 1`; child `i` holds keys in
    /// `[keys[i-1], keys[i])`.
    Branch {
        /// Separators.
        keys: Vec<Key>,
        /// Children.
        children: Vec<PageRef>,
    },
}

const LEAF_FLAG_INLINE: u8 = 0;
const LEAF_FLAG_OVERFLOW: u8 = 1;

/// Encoded size of one leaf entry.
#[must_use]
pub fn leaf_entry_bytes(key: &Key, value: &Value) -> usize {
    2 + key.len()
        + 1
        + match value {
            Value::Inline(v) => 4 + v.len(),
            Value::Overflow { .. } => 4 + 16,
        }
}

/// Whether a value of this size stays in the leaf.
#[must_use]
pub fn fits_inline(key_len: usize, value_len: usize) -> bool {
    2 + key_len + 1 + 4 + value_len <= INLINE_ENTRY_MAX_BYTES
}

impl Node {
    /// Encoded size in bytes (header included).
    #[must_use]
    pub fn encoded_bytes(&self) -> usize {
        PAGE_HEADER_BYTES
            + 2
            + match self {
                Self::Leaf(entries) => entries.iter().map(|(k, v)| leaf_entry_bytes(k, v)).sum::<usize>(),
                Self::Branch { keys, .. } => 16 + keys.iter().map(|k| 2 + k.len() + 16).sum::<usize>(),
            }
    }

    /// Encodes into a sealed page.
    #[must_use]
    pub fn encode(&self, page: u64, file_id: u64, seq: u64) -> Vec<u8> {
        assert!(self.encoded_bytes() <= PAGE_BYTES, "node overflows its page");
        let mut buf = Vec::with_capacity(PAGE_BYTES);
        buf.resize(PAGE_HEADER_BYTES, 0);
        let kind = match self {
            Self::Leaf(entries) => {
                buf.extend_from_slice(&u16::try_from(entries.len()).expect("bounded by page").to_le_bytes());
                for (key, value) in entries {
                    buf.extend_from_slice(&u16::try_from(key.len()).expect("key limit").to_le_bytes());
                    buf.extend_from_slice(key);
                    match value {
                        Value::Inline(v) => {
                            buf.push(LEAF_FLAG_INLINE);
                            buf.extend_from_slice(&u32::try_from(v.len()).expect("inline limit").to_le_bytes());
                            buf.extend_from_slice(v);
                        }
                        Value::Overflow { len, first } => {
                            buf.push(LEAF_FLAG_OVERFLOW);
                            buf.extend_from_slice(&len.to_le_bytes());
                            buf.extend_from_slice(&first.page.to_le_bytes());
                            buf.extend_from_slice(&first.seq.to_le_bytes());
                        }
                    }
                }
                Kind::Leaf
            }
            Self::Branch { keys, children } => {
                assert_eq!(children.len(), keys.len() + 1);
                buf.extend_from_slice(&u16::try_from(keys.len()).expect("bounded by page").to_le_bytes());
                let first = children.first().expect("branch has children");
                assert!(first.seq != 0, "children are written before parents");
                buf.extend_from_slice(&first.page.to_le_bytes());
                buf.extend_from_slice(&first.seq.to_le_bytes());
                for (key, child) in keys.iter().zip(children.iter().skip(1)) {
                    assert!(child.seq != 0, "children are written before parents");
                    buf.extend_from_slice(&u16::try_from(key.len()).expect("key limit").to_le_bytes());
                    buf.extend_from_slice(key);
                    buf.extend_from_slice(&child.page.to_le_bytes());
                    buf.extend_from_slice(&child.seq.to_le_bytes());
                }
                Kind::Branch
            }
        };
        buf.resize(PAGE_BYTES, 0);
        page::seal(&mut buf, kind, page, file_id, seq);
        buf
    }

    /// Index of the child that holds `key`.
    #[must_use]
    pub fn child_index(keys: &[Key], key: &[u8]) -> usize {
        let prefix = key_prefix(key);
        keys.partition_point(|k| k.cmp_probe(key, prefix) != std::cmp::Ordering::Greater)
    }

    /// Position of `key` in leaf entries, or where it would be inserted.
    pub fn search_leaf(entries: &[(Key, Value)], key: &[u8]) -> Result<usize, usize> {
        let prefix = key_prefix(key);
        entries.binary_search_by(|(k, _)| k.cmp_probe(key, prefix))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::btree::page::verify;

    #[test]
    fn nodes_roundtrip_through_pages() {
        let leaf = Node::Leaf(vec![
            (Key::from(&b"a"[..]), Value::Inline(b"1".to_vec())),
            (Key::from(&b"b"[..]), Value::Overflow { len: 99_999, first: PageRef { page: 5, seq: 8 } }),
        ]);
        let buf = leaf.encode(3, 1, 2);
        verify(&buf, &[Kind::Leaf], 3, 1, Some(2)).expect("valid");
        let page = PageNode::parse(Kind::Leaf, buf).expect("parses");
        assert_eq!(page.to_node(), leaf);
        assert_eq!(page.search(b"b"), Ok(1));
        assert_eq!(page.search(b"ab"), Err(1));
        assert_eq!(page.search(b"a"), Ok(0));
        assert_eq!(page.search(b"a\0"), Err(1), "zero padding must not make keys equal");
        let branch = Node::Branch {
            keys: vec![Key::from(&b"m"[..])],
            children: vec![PageRef { page: 2, seq: 1 }, PageRef { page: 4, seq: 3 }],
        };
        let buf = branch.encode(6, 1, 7);
        verify(&buf, &[Kind::Branch], 6, 1, Some(7)).expect("valid");
        let page = PageNode::parse(Kind::Branch, buf).expect("parses");
        assert_eq!(page.to_node(), branch);
        assert_eq!(page.child(page.upper_bound(b"a")), PageRef { page: 2, seq: 1 });
        assert_eq!(page.child(page.upper_bound(b"m")), PageRef { page: 4, seq: 3 });
    }

    #[test]
    fn parse_rejects_garbage_without_panicking() {
        let mut state = 0x1234_5678_u64;
        let mut accepted = 0;
        for _ in 0..2000 {
            let page: Vec<u8> = (0..PAGE_BYTES)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    (state & 0xff) as u8
                })
                .collect();
            for kind in [Kind::Leaf, Kind::Branch] {
                if let Ok(node) = PageNode::parse(kind, page.clone()) {
                    // Whatever parses must be fully readable.
                    accepted += 1;
                    let _ = node.to_node();
                }
            }
        }
        assert!(accepted < 4000, "random bytes should mostly fail to parse");
        assert_eq!(PageNode::parse(Kind::Leaf, Vec::new()).err(), Some(PageFault::Malformed));
    }
}

/// A leaf value as seen in a page, without copying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueRef<'a> {
    /// Stored in the leaf.
    Inline(&'a [u8]),
    /// Stored in overflow pages.
    Overflow {
        /// Total length.
        len: u32,
        /// First page of the chain.
        first: PageRef,
    },
}

impl ValueRef<'_> {
    /// An owned copy.
    #[must_use]
    pub fn to_value(self) -> Value {
        match self {
            Self::Inline(v) => Value::Inline(v.to_vec()),
            Self::Overflow { len, first } => Value::Overflow { len, first },
        }
    }
}

impl Value {
    /// A borrowed view.
    #[must_use]
    pub fn as_ref(&self) -> ValueRef<'_> {
        match self {
            Self::Inline(v) => ValueRef::Inline(v),
            Self::Overflow { len, first } => ValueRef::Overflow { len: *len, first: *first },
        }
    }
}

/// A clean page kept as its verified bytes: a node (leaf or branch),
/// searched in place, or a page of an overflow chain (a large value's
/// bytes, [`PageNode::overflow`]).
///
/// Searching a decoded node chases one heap pointer per key compared; with
/// the keys in one contiguous page the search touches far fewer cache lines,
/// which is what makes warm point reads fast on large trees. The offsets of
/// the entries are computed (and every bound checked) once, when the page is
/// parsed.
#[derive(Debug)]
pub struct PageNode {
    bytes: Box<[u8]>,
    /// Leaf, branch or overflow.
    kind: Kind,
    /// Byte offset of each entry (leaf) or separator (branch) in `bytes`.
    offsets: Box<[u32]>,
    /// The first 8 bytes of each key, zero-padded, big-endian: comparing
    /// these orders keys without touching the page except on a tie. Keel's
    /// keys start with an 8-byte hash, so ties are rare and a search reads
    /// one small contiguous array instead of a cache line per probe.
    prefixes: Box<[u64]>,
    /// Branch: the leftmost child. Overflow: the next page of the chain
    /// (page 0: none).
    child0: PageRef,
    /// Overflow only: bytes of the value in this page.
    chunk_len: u32,
}

/// The first 8 bytes of `key`, zero-padded, as a big-endian number: if
/// `key_prefix(a) < key_prefix(b)` then `a < b`.
fn key_prefix(key: &[u8]) -> u64 {
    let mut bytes = [0u8; 8];
    for (dst, src) in bytes.iter_mut().zip(key) {
        *dst = *src;
    }
    u64::from_be_bytes(bytes)
}

fn read_u16(bytes: &[u8], at: usize) -> u16 {
    bytes.get(at..at + 2).and_then(|b| b.try_into().ok()).map_or(0, u16::from_le_bytes)
}

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    bytes.get(at..at + 4).and_then(|b| b.try_into().ok()).map_or(0, u32::from_le_bytes)
}

fn read_u64(bytes: &[u8], at: usize) -> u64 {
    bytes.get(at..at + 8).and_then(|b| b.try_into().ok()).map_or(0, u64::from_le_bytes)
}

impl PageNode {
    /// The page as written to disk (header included).
    pub fn page_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Parses a verified page of kind `kind` (leaf, branch or overflow),
    /// checking every length against the page and that keys strictly
    /// increase.
    pub fn parse(kind: Kind, page: Vec<u8>) -> Result<Self, PageFault> {
        let leaf = match kind {
            Kind::Leaf => true,
            Kind::Branch => false,
            Kind::Overflow => return Self::parse_overflow(page),
            _ => return Err(PageFault::WrongKind),
        };
        let body = page.get(PAGE_HEADER_BYTES..).ok_or(PageFault::Malformed)?;
        let mut r = Reader::new(body);
        let count = usize::from(r.u16()?);
        let mut offsets = Vec::with_capacity(count);
        let mut prefixes = Vec::with_capacity(count);
        let mut child0 = PageRef { page: 0, seq: 0 };
        if !leaf {
            child0 = PageRef { page: r.u64()?, seq: r.u64()? };
        }
        let mut previous: Option<&[u8]> = None;
        for _ in 0..count {
            let at = PAGE_HEADER_BYTES + r.position();
            offsets.push(u32::try_from(at).map_err(|_| PageFault::Malformed)?);
            let key_len = usize::from(r.u16()?);
            let key = r.bytes(key_len)?;
            if previous.is_some_and(|p| p >= key) {
                return Err(PageFault::Malformed);
            }
            previous = Some(key);
            prefixes.push(key_prefix(key));
            if leaf {
                match r.u8()? {
                    LEAF_FLAG_INLINE => {
                        let len = r.u32()? as usize;
                        r.bytes(len)?;
                    }
                    LEAF_FLAG_OVERFLOW => {
                        r.bytes(4 + 16)?;
                    }
                    _ => return Err(PageFault::Malformed),
                }
            } else {
                r.bytes(16)?;
            }
        }
        Ok(Self {
            bytes: page.into_boxed_slice(),
            kind,
            offsets: offsets.into_boxed_slice(),
            prefixes: prefixes.into_boxed_slice(),
            child0,
            chunk_len: 0,
        })
    }

    /// An overflow page: the next page's reference, the chunk's length and
    /// the chunk (`docs/format/btree.md`).
    fn parse_overflow(page: Vec<u8>) -> Result<Self, PageFault> {
        let body = page.get(PAGE_HEADER_BYTES..).ok_or(PageFault::Malformed)?;
        let mut r = Reader::new(body);
        let next = PageRef { page: r.u64()?, seq: r.u64()? };
        let chunk_len = r.u32()?;
        r.bytes(chunk_len as usize)?;
        Ok(Self {
            bytes: page.into_boxed_slice(),
            kind: Kind::Overflow,
            offsets: Box::default(),
            prefixes: Box::default(),
            child0: next,
            chunk_len,
        })
    }

    /// An overflow page's next page (page 0: the chain ends here) and its
    /// part of the value; `None` for a node.
    #[must_use]
    pub fn overflow(&self) -> Option<(PageRef, &[u8])> {
        if self.kind != Kind::Overflow {
            return None;
        }
        let chunk = self.bytes.get(OVERFLOW_CHUNK_AT..OVERFLOW_CHUNK_AT + self.chunk_len as usize).unwrap_or(&[]);
        Some((self.child0, chunk))
    }

    /// The write sequence in the page's header: with the page number it
    /// names one write of the page (the page cache serves an entry only to
    /// a reference carrying the same sequence).
    #[must_use]
    pub fn seq(&self) -> u64 {
        read_u64(&self.bytes, std::mem::offset_of!(page::PageHeader, seq))
    }

    /// Whether this is a leaf.
    #[must_use]
    pub fn is_leaf(&self) -> bool {
        self.kind == Kind::Leaf
    }

    /// Whether this is a node (leaf or branch), not an overflow page.
    #[must_use]
    pub fn is_node(&self) -> bool {
        self.kind != Kind::Overflow
    }

    /// Number of entries (leaf) or separators (branch).
    #[must_use]
    pub fn len(&self) -> usize {
        self.offsets.len()
    }

    /// Whether there are no entries or separators.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }

    fn offset(&self, i: usize) -> usize {
        self.offsets.get(i).map_or(0, |&o| o as usize)
    }

    /// Key (leaf) or separator (branch) `i`. Bounds were checked by `parse`.
    #[must_use]
    pub fn key(&self, i: usize) -> &[u8] {
        let at = self.offset(i);
        let len = usize::from(read_u16(&self.bytes, at));
        self.bytes.get(at + 2..at + 2 + len).unwrap_or(&[])
    }

    fn owned_key(&self, i: usize) -> Key {
        let prefix = self.prefixes.get(i).copied().unwrap_or(0);
        Key { prefix, bytes: self.key(i).to_vec() }
    }

    /// Leaf value `i`.
    #[must_use]
    pub fn value(&self, i: usize) -> ValueRef<'_> {
        let at = self.offset(i);
        let flag_at = at + 2 + usize::from(read_u16(&self.bytes, at));
        let flag = self.bytes.get(flag_at).copied().unwrap_or(LEAF_FLAG_INLINE);
        if flag == LEAF_FLAG_OVERFLOW {
            let len = read_u32(&self.bytes, flag_at + 1);
            let first = PageRef { page: read_u64(&self.bytes, flag_at + 5), seq: read_u64(&self.bytes, flag_at + 13) };
            ValueRef::Overflow { len, first }
        } else {
            let len = read_u32(&self.bytes, flag_at + 1) as usize;
            ValueRef::Inline(self.bytes.get(flag_at + 5..flag_at + 5 + len).unwrap_or(&[]))
        }
    }

    /// Branch child `i` (0 ..= len).
    #[must_use]
    pub fn child(&self, i: usize) -> PageRef {
        if i == 0 {
            return self.child0;
        }
        let at = self.offset(i - 1);
        let end = at + 2 + usize::from(read_u16(&self.bytes, at));
        PageRef { page: read_u64(&self.bytes, end), seq: read_u64(&self.bytes, end + 8) }
    }

    /// Compares key `i` with `key` (whose prefix is `prefix`).
    fn compare(&self, i: usize, key: &[u8], prefix: u64) -> std::cmp::Ordering {
        match self.prefixes.get(i).map(|p| p.cmp(&prefix)) {
            Some(std::cmp::Ordering::Equal) | None => self.key(i).cmp(key),
            Some(decided) => decided,
        }
    }

    /// Index of the first key greater than `key` (the branch child holding
    /// `key`).
    #[must_use]
    pub fn upper_bound(&self, key: &[u8]) -> usize {
        let prefix = key_prefix(key);
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.compare(mid, key, prefix) != std::cmp::Ordering::Greater {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }

    /// Leaf: position of `key`, or where it would be inserted.
    pub fn search(&self, key: &[u8]) -> Result<usize, usize> {
        let prefix = key_prefix(key);
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.compare(mid, key, prefix) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Ok(mid),
            }
        }
        Err(lo)
    }

    /// Decodes into an owned, mutable node.
    #[must_use]
    pub fn to_node(&self) -> Node {
        debug_assert!(self.is_node(), "only nodes decode");
        if self.is_leaf() {
            Node::Leaf((0..self.len()).map(|i| (self.owned_key(i), self.value(i).to_value())).collect())
        } else {
            Node::Branch {
                keys: (0..self.len()).map(|i| self.owned_key(i)).collect(),
                children: (0..=self.len()).map(|i| self.child(i)).collect(),
            }
        }
    }
}

//! Decoded B-tree nodes and their page encoding.
//!
//! Nodes live decoded in memory (in the page cache and in the dirty set) and
//! are encoded only when written, which keeps the tree logic simple; the
//! byte layout is in `docs/format/btree.md`.

use super::page::{self, INLINE_ENTRY_MAX_BYTES, Kind, PAGE_BYTES, PAGE_HEADER_BYTES, PageFault, Reader};

/// A reference to a child page: its number and the write sequence it must
/// carry. `seq == 0` marks a dirty child not yet written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRef {
    /// Page number.
    pub page: u64,
    /// Expected write sequence.
    pub seq: u64,
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
    Leaf(Vec<(Vec<u8>, Value)>),
    /// `children.len() == keys.len() + 1`; child `i` holds keys in
    /// `[keys[i-1], keys[i])`.
    Branch {
        /// Separators.
        keys: Vec<Vec<u8>>,
        /// Children.
        children: Vec<PageRef>,
    },
}

const LEAF_FLAG_INLINE: u8 = 0;
const LEAF_FLAG_OVERFLOW: u8 = 1;

/// Encoded size of one leaf entry.
#[must_use]
pub fn leaf_entry_bytes(key: &[u8], value: &Value) -> usize {
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

    /// Decodes a verified page body.
    pub fn decode(kind: Kind, body: &[u8]) -> Result<Self, PageFault> {
        let mut r = Reader::new(body);
        let count = usize::from(r.u16()?);
        match kind {
            Kind::Leaf => {
                let mut entries = Vec::with_capacity(count);
                for _ in 0..count {
                    let key_len = usize::from(r.u16()?);
                    let key = r.bytes(key_len)?.to_vec();
                    let value = match r.u8()? {
                        LEAF_FLAG_INLINE => {
                            let len = r.u32()? as usize;
                            Value::Inline(r.bytes(len)?.to_vec())
                        }
                        LEAF_FLAG_OVERFLOW => {
                            let len = r.u32()?;
                            let page = r.u64()?;
                            let seq = r.u64()?;
                            Value::Overflow { len, first: PageRef { page, seq } }
                        }
                        _ => return Err(PageFault::Malformed),
                    };
                    if entries.last().is_some_and(|(prev, _): &(Vec<u8>, Value)| *prev >= key) {
                        return Err(PageFault::Malformed);
                    }
                    entries.push((key, value));
                }
                Ok(Self::Leaf(entries))
            }
            Kind::Branch => {
                let mut keys = Vec::with_capacity(count);
                let mut children = Vec::with_capacity(count + 1);
                children.push(PageRef { page: r.u64()?, seq: r.u64()? });
                for _ in 0..count {
                    let key_len = usize::from(r.u16()?);
                    let key = r.bytes(key_len)?.to_vec();
                    if keys.last().is_some_and(|prev: &Vec<u8>| *prev >= key) {
                        return Err(PageFault::Malformed);
                    }
                    keys.push(key);
                    children.push(PageRef { page: r.u64()?, seq: r.u64()? });
                }
                Ok(Self::Branch { keys, children })
            }
            _ => Err(PageFault::WrongKind),
        }
    }

    /// Index of the child that holds `key`.
    #[must_use]
    pub fn child_index(keys: &[Vec<u8>], key: &[u8]) -> usize {
        keys.partition_point(|k| k.as_slice() <= key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::btree::page::verify;

    #[test]
    fn nodes_roundtrip_through_pages() {
        let leaf = Node::Leaf(vec![
            (b"a".to_vec(), Value::Inline(b"1".to_vec())),
            (b"b".to_vec(), Value::Overflow { len: 99_999, first: PageRef { page: 5, seq: 8 } }),
        ]);
        let buf = leaf.encode(3, 1, 2);
        let (_, body) = verify(&buf, &[Kind::Leaf], 3, 1, Some(2)).expect("valid");
        assert_eq!(Node::decode(Kind::Leaf, body).expect("decodes"), leaf);
        let branch = Node::Branch {
            keys: vec![b"m".to_vec()],
            children: vec![PageRef { page: 2, seq: 1 }, PageRef { page: 4, seq: 3 }],
        };
        let buf = branch.encode(6, 1, 7);
        let (_, body) = verify(&buf, &[Kind::Branch], 6, 1, Some(7)).expect("valid");
        assert_eq!(Node::decode(Kind::Branch, body).expect("decodes"), branch);
    }

    #[test]
    fn decode_rejects_garbage_without_panicking() {
        let mut state = 0x1234_5678_u64;
        for _ in 0..2000 {
            let body: Vec<u8> = (0..256)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    (state & 0xff) as u8
                })
                .collect();
            let _ = Node::decode(Kind::Leaf, &body);
            let _ = Node::decode(Kind::Branch, &body);
        }
        assert_eq!(Node::decode(Kind::Leaf, &[]), Err(PageFault::Malformed));
    }
}

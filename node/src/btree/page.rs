//! Byte layout of B-tree pages (documented in `docs/format/btree.md`; the
//! tests at the bottom pin the documented offsets).
//!
//! Every page is [`PAGE_BYTES`] long and starts with a 32-byte header whose
//! crc32c covers the rest of the page. A reader knows which page number, file
//! and write sequence it expects (parents store `(page, seq)` of each child),
//! so bit rot (checksum), misdirected writes (page number), pages of another
//! file (file id) and lost writes (stale sequence) are all told apart.

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Page size. 16 KiB: the largest key (4 KiB) must leave room for at least
/// three separators per branch page, values up to 400 KiB need few overflow
/// pages (26), and a 16 KiB O_DIRECT read costs about the same as a 4 KiB one
/// on SSDs and virtio disks.
pub const PAGE_BYTES: usize = 16 * 1024;
/// Size of [`PageHeader`].
pub const PAGE_HEADER_BYTES: usize = 32;
/// Format version in every page header.
pub const FORMAT_VERSION: u8 = 1;
/// Largest key accepted.
pub const KEY_MAX_BYTES: usize = 4096;
/// Largest value accepted (DynamoDB items are at most 400 KB; the rest is
/// headroom for the encoding).
pub const VALUE_MAX_BYTES: usize = 512 * 1024;
/// A leaf entry whose key and value together exceed this goes to overflow
/// pages, so every leaf holds at least three entries.
pub const INLINE_ENTRY_MAX_BYTES: usize = PAGE_BYTES / 4;
/// Payload bytes per overflow page.
pub const OVERFLOW_DATA_BYTES: usize = PAGE_BYTES - PAGE_HEADER_BYTES - 20;
/// Page numbers per freelist page.
pub const FREELIST_ENTRIES_MAX: usize = (PAGE_BYTES - PAGE_HEADER_BYTES - 20) / 8;
/// `KEELBTR` + NUL.
pub const META_MAGIC: [u8; 8] = *b"KEELBTR\0";

const _: () = assert!(KEY_MAX_BYTES * 3 + 3 * 20 + 64 < PAGE_BYTES);
const _: () = assert!(PAGE_BYTES.is_multiple_of(crate::io::IO_ALIGN_BYTES));

/// Page kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// One of the two meta pages (0 and 1).
    Meta = 1,
    /// Interior node.
    Branch = 2,
    /// Leaf node.
    Leaf = 3,
    /// Part of a large value.
    Overflow = 4,
    /// Part of the free-page list.
    Freelist = 5,
}

impl Kind {
    /// The kind with this code.
    #[must_use]
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Meta),
            2 => Some(Self::Branch),
            3 => Some(Self::Leaf),
            4 => Some(Self::Overflow),
            5 => Some(Self::Freelist),
            _ => None,
        }
    }
}

/// The 32-byte header of every page.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct PageHeader {
    /// crc32c over bytes 4..PAGE_BYTES.
    pub crc32c: U32,
    /// [`Kind`].
    pub kind: u8,
    /// [`FORMAT_VERSION`].
    pub version: u8,
    /// Zero.
    pub reserved: U16,
    /// The page's own number.
    pub page: U64,
    /// The file it belongs to.
    pub file_id: U64,
    /// Write sequence: unique per page write within the file.
    pub seq: U64,
}
const _: () = assert!(std::mem::size_of::<PageHeader>() == PAGE_HEADER_BYTES);

/// The body of a meta page (after the header).
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, PartialEq, Eq)]
#[repr(C)]
pub struct MetaBody {
    /// [`META_MAGIC`].
    pub magic: [u8; 8],
    /// [`PAGE_BYTES`] when written.
    pub page_size: U32,
    /// Zero.
    pub reserved: U32,
    /// Checkpoint generation; the valid meta page with the larger one wins.
    pub generation: U64,
    /// Root node page.
    pub root_page: U64,
    /// Root node write sequence.
    pub root_seq: U64,
    /// Pages in use or free (the file's logical length in pages).
    pub page_count: U64,
    /// Next write sequence to hand out.
    pub next_seq: U64,
    /// Last log index applied to the tree when the checkpoint was taken.
    pub applied_index: U64,
    /// First freelist page (0 = none).
    pub freelist_page: U64,
    /// Its write sequence.
    pub freelist_seq: U64,
    /// Number of live entries.
    pub entries: U64,
    /// Raft term of the entry at `applied_index` (0 for a standalone
    /// partition, whose records carry no term).
    pub applied_term: U64,
}

/// Why a page was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageFault {
    /// Shorter than a page (read past the end of the file).
    Short,
    /// Checksum mismatch: bit rot or a torn write.
    Checksum,
    /// The page says it is another page: a misdirected write.
    Misdirected {
        /// The page number found in the header.
        found: u64,
    },
    /// The page belongs to another file.
    ForeignFile {
        /// The file id found.
        found: u64,
    },
    /// An older version of the page: a lost write.
    Stale {
        /// Write sequence expected by the parent.
        expected: u64,
        /// Write sequence found.
        found: u64,
    },
    /// Unexpected kind or version.
    WrongKind,
    /// The body does not parse.
    Malformed,
}

impl std::fmt::Display for PageFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Short => write!(f, "short page"),
            Self::Checksum => write!(f, "checksum mismatch"),
            Self::Misdirected { found } => write!(f, "misdirected write (page claims to be {found})"),
            Self::ForeignFile { found } => write!(f, "page of another file (file id {found})"),
            Self::Stale { expected, found } => write!(f, "stale page (write seq {found}, expected {expected})"),
            Self::WrongKind => write!(f, "unexpected page kind or version"),
            Self::Malformed => write!(f, "malformed page body"),
        }
    }
}

/// Seals a page buffer: fills in the header and the checksum.
pub fn seal(buf: &mut [u8], kind: Kind, page: u64, file_id: u64, seq: u64) {
    assert_eq!(buf.len(), PAGE_BYTES);
    let header = PageHeader {
        crc32c: U32::new(0),
        kind: kind as u8,
        version: FORMAT_VERSION,
        reserved: U16::new(0),
        page: U64::new(page),
        file_id: U64::new(file_id),
        seq: U64::new(seq),
    };
    buf.get_mut(..PAGE_HEADER_BYTES).expect("page holds header").copy_from_slice(header.as_bytes());
    let crc = crc32c::crc32c(buf.get(4..).expect("page longer than 4"));
    buf.get_mut(..4).expect("page holds crc").copy_from_slice(&crc.to_le_bytes());
}

/// Verifies a page read from disk, which must be of one of `kinds`. `expected_seq` is `None` for meta pages
/// (whose sequence nothing records). Returns the header and the body.
pub fn verify<'a>(
    buf: &'a [u8],
    kinds: &[Kind],
    page: u64,
    file_id: u64,
    expected_seq: Option<u64>,
) -> Result<(PageHeader, &'a [u8]), PageFault> {
    if buf.len() < PAGE_BYTES {
        return Err(PageFault::Short);
    }
    let header = PageHeader::read_from_bytes(buf.get(..PAGE_HEADER_BYTES).ok_or(PageFault::Short)?)
        .map_err(|_| PageFault::Short)?;
    if crc32c::crc32c(buf.get(4..PAGE_BYTES).ok_or(PageFault::Short)?) != header.crc32c.get() {
        return Err(PageFault::Checksum);
    }
    if header.page.get() != page {
        return Err(PageFault::Misdirected { found: header.page.get() });
    }
    if header.file_id.get() != file_id {
        return Err(PageFault::ForeignFile { found: header.file_id.get() });
    }
    if let Some(expected) = expected_seq
        && header.seq.get() != expected
    {
        return Err(PageFault::Stale { expected, found: header.seq.get() });
    }
    let kind_ok = Kind::from_u8(header.kind).is_some_and(|k| kinds.contains(&k));
    if !kind_ok || header.version != FORMAT_VERSION {
        return Err(PageFault::WrongKind);
    }
    Ok((header, buf.get(PAGE_HEADER_BYTES..PAGE_BYTES).ok_or(PageFault::Short)?))
}

/// A cursor over a page body that turns every out-of-bounds read into
/// [`PageFault::Malformed`].
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// Reads from the start of `buf`.
    #[must_use]
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }
    /// The next `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], PageFault> {
        let out =
            self.buf.get(self.pos..self.pos.checked_add(n).ok_or(PageFault::Malformed)?).ok_or(PageFault::Malformed)?;
        self.pos += n;
        Ok(out)
    }
    /// Bytes consumed so far.
    #[must_use]
    pub fn position(&self) -> usize {
        self.pos
    }
    /// A byte.
    pub fn u8(&mut self) -> Result<u8, PageFault> {
        self.bytes(1)?.first().copied().ok_or(PageFault::Malformed)
    }
    /// A little-endian u16.
    pub fn u16(&mut self) -> Result<u16, PageFault> {
        let b = self.bytes(2)?;
        Ok(u16::from_le_bytes(b.try_into().map_err(|_| PageFault::Malformed)?))
    }
    /// A little-endian u32.
    pub fn u32(&mut self) -> Result<u32, PageFault> {
        let b = self.bytes(4)?;
        Ok(u32::from_le_bytes(b.try_into().map_err(|_| PageFault::Malformed)?))
    }
    /// A little-endian u64.
    pub fn u64(&mut self) -> Result<u64, PageFault> {
        let b = self.bytes(8)?;
        Ok(u64::from_le_bytes(b.try_into().map_err(|_| PageFault::Malformed)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::offset_of;

    #[test]
    fn page_header_and_meta_offsets_match_the_format_doc() {
        assert_eq!(offset_of!(PageHeader, crc32c), 0);
        assert_eq!(offset_of!(PageHeader, kind), 4);
        assert_eq!(offset_of!(PageHeader, version), 5);
        assert_eq!(offset_of!(PageHeader, page), 8);
        assert_eq!(offset_of!(PageHeader, file_id), 16);
        assert_eq!(offset_of!(PageHeader, seq), 24);
        assert_eq!(offset_of!(MetaBody, page_size), 8);
        assert_eq!(offset_of!(MetaBody, generation), 16);
        assert_eq!(offset_of!(MetaBody, root_page), 24);
        assert_eq!(offset_of!(MetaBody, root_seq), 32);
        assert_eq!(offset_of!(MetaBody, page_count), 40);
        assert_eq!(offset_of!(MetaBody, next_seq), 48);
        assert_eq!(offset_of!(MetaBody, applied_index), 56);
        assert_eq!(offset_of!(MetaBody, freelist_page), 64);
        assert_eq!(offset_of!(MetaBody, freelist_seq), 72);
        assert_eq!(offset_of!(MetaBody, entries), 80);
        assert_eq!(offset_of!(MetaBody, applied_term), 88);
        assert_eq!(std::mem::size_of::<MetaBody>(), 96);
    }

    #[test]
    fn verify_tells_faults_apart() {
        let mut page = vec![0u8; PAGE_BYTES];
        seal(&mut page, Kind::Leaf, 7, 42, 9);
        assert!(verify(&page, &[Kind::Leaf], 7, 42, Some(9)).is_ok());
        assert_eq!(verify(&page, &[Kind::Leaf], 8, 42, Some(9)).err(), Some(PageFault::Misdirected { found: 7 }));
        assert_eq!(verify(&page, &[Kind::Leaf], 7, 43, Some(9)).err(), Some(PageFault::ForeignFile { found: 42 }));
        assert_eq!(
            verify(&page, &[Kind::Leaf], 7, 42, Some(10)).err(),
            Some(PageFault::Stale { expected: 10, found: 9 })
        );
        assert_eq!(verify(&page, &[Kind::Branch], 7, 42, Some(9)).err(), Some(PageFault::WrongKind));
        if let Some(b) = page.get_mut(5000) {
            *b ^= 0x10;
        }
        assert_eq!(verify(&page, &[Kind::Leaf], 7, 42, Some(9)).err(), Some(PageFault::Checksum));
    }
}

//! Byte layout of WAL segments and records (documented in `docs/format/wal.md`;
//! the tests at the bottom pin the documented offsets).

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Format version written into every record and segment header.
pub const FORMAT_VERSION: u8 = 1;

/// Size of the segment header block at offset 0 of every segment file.
pub const SEGMENT_HEADER_BYTES: u32 = 4096;

/// `KEELWAL` + NUL.
pub const SEGMENT_MAGIC: [u8; 8] = *b"KEELWAL\0";

/// Record kinds below this value belong to the WAL itself.
pub const USER_KIND_MIN: u8 = 16;
/// Fills the rest of a 4 KiB block after a batch.
pub const KIND_PADDING: u8 = 1;
/// Marks that the writer moved on to the next segment.
pub const KIND_SEGMENT_END: u8 = 2;
/// First record written after recovery cut the log at a torn tail; its
/// payload is the LSN (u64, little-endian) of the first record that failed
/// to verify. It tells a later recovery that the damage before it is that
/// torn tail, not corruption of the log.
pub const KIND_CUT: u8 = 3;

/// A log sequence number: the position of a record, `segment << 32 | offset`.
/// Ordering LSNs orders records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    /// The LSN of `offset` in segment `segment`.
    #[must_use]
    pub const fn new(segment: u64, offset: u32) -> Self {
        Self((segment << 32) | offset as u64)
    }
    /// The segment sequence number.
    #[must_use]
    pub const fn segment(self) -> u64 {
        self.0 >> 32
    }
    /// The byte offset inside the segment.
    #[must_use]
    pub const fn offset(self) -> u32 {
        (self.0 & 0xffff_ffff) as u32
    }
}

impl std::fmt::Display for Lsn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.segment(), self.offset())
    }
}

/// The header in front of every record. Little-endian, 56 bytes, no padding.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct RecordHeader {
    /// crc32c over header bytes 4..56 followed by the payload.
    pub crc32c: U32,
    /// Payload length in bytes.
    pub payload_len: U32,
    /// This record's own position; a record found elsewhere is stale.
    pub lsn: U64,
    /// LSN where the write (group commit batch) carrying this record began.
    pub batch_lsn: U64,
    /// Partition the record belongs to (0 for WAL-internal records).
    pub partition: U64,
    /// Log term.
    pub term: U64,
    /// Log index within the partition.
    pub index: U64,
    /// Record kind: 1 padding, 2 segment end, ≥ 16 defined by the user.
    pub kind: u8,
    /// [`FORMAT_VERSION`].
    pub version: u8,
    /// Zero.
    pub reserved: [u8; 6],
}

/// Size of [`RecordHeader`].
pub const RECORD_HEADER_BYTES: usize = std::mem::size_of::<RecordHeader>();
const _: () = assert!(RECORD_HEADER_BYTES == 56);

/// The header block at offset 0 of each segment (the first 64 bytes; the rest
/// of the 4 KiB block is zero).
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct SegmentHeader {
    /// [`SEGMENT_MAGIC`].
    pub magic: [u8; 8],
    /// crc32c over bytes 12..64.
    pub crc32c: U32,
    /// [`FORMAT_VERSION`].
    pub version: U16,
    /// Zero.
    pub reserved: U16,
    /// This segment's sequence number.
    pub segment: U64,
    /// The segment's size in bytes.
    pub segment_size: U64,
    /// Zero.
    pub reserved2: [u8; 32],
}

/// Size of the meaningful part of the segment header.
pub const SEGMENT_HEADER_USED_BYTES: usize = std::mem::size_of::<SegmentHeader>();
const _: () = assert!(SEGMENT_HEADER_USED_BYTES == 64);

/// What the header fields of a record say (without the checksum).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordMeta {
    /// Partition id.
    pub partition: u64,
    /// Log term.
    pub term: u64,
    /// Log index.
    pub index: u64,
    /// Record kind (≥ [`USER_KIND_MIN`] for user records).
    pub kind: u8,
}

/// Appends one encoded record (header + payload) to `out`.
pub fn encode_record(out: &mut Vec<u8>, lsn: Lsn, batch_lsn: Lsn, meta: RecordMeta, payload: &[u8]) {
    let mut header = RecordHeader {
        crc32c: U32::new(0),
        payload_len: U32::new(u32::try_from(payload.len()).expect("payload length checked at submit")),
        lsn: U64::new(lsn.0),
        batch_lsn: U64::new(batch_lsn.0),
        partition: U64::new(meta.partition),
        term: U64::new(meta.term),
        index: U64::new(meta.index),
        kind: meta.kind,
        version: FORMAT_VERSION,
        reserved: [0; 6],
    };
    header.crc32c = U32::new(record_crc(&header, payload));
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(payload);
}

/// The checksum a record with this header and payload must carry.
#[must_use]
pub fn record_crc(header: &RecordHeader, payload: &[u8]) -> u32 {
    let bytes = header.as_bytes();
    let crc = crc32c::crc32c(bytes.get(4..).expect("header is 56 bytes"));
    crc32c::crc32c_append(crc, payload)
}

/// Why a record was not accepted during a scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordFault {
    /// Fewer bytes than a header remain.
    Truncated,
    /// Checksum mismatch.
    Checksum,
    /// The record says it lives elsewhere (stale data from an earlier use).
    WrongLsn,
    /// Unknown version, kind or non-zero reserved bytes.
    BadField,
    /// The payload runs past the segment.
    TooLong,
}

/// Parses and verifies the record at `at` of `buf`, expected at `lsn`.
/// Returns the header and payload.
pub fn parse_record(buf: &[u8], at: usize, lsn: Lsn, payload_max: usize) -> Result<(RecordHeader, &[u8]), RecordFault> {
    let header_bytes = buf.get(at..at + RECORD_HEADER_BYTES).ok_or(RecordFault::Truncated)?;
    let header = RecordHeader::read_from_bytes(header_bytes).map_err(|_| RecordFault::Truncated)?;
    let len = header.payload_len.get() as usize;
    if len > payload_max {
        return Err(RecordFault::TooLong);
    }
    let start = at + RECORD_HEADER_BYTES;
    let payload = buf.get(start..start + len).ok_or(RecordFault::TooLong)?;
    if record_crc(&header, payload) != header.crc32c.get() {
        return Err(RecordFault::Checksum);
    }
    if header.lsn.get() != lsn.0 {
        return Err(RecordFault::WrongLsn);
    }
    if header.version != FORMAT_VERSION
        || header.reserved != [0; 6]
        || header.kind == 0
        || header.batch_lsn.get() > lsn.0
    {
        return Err(RecordFault::BadField);
    }
    Ok((header, payload))
}

/// The 4 KiB segment header block for segment `segment`.
#[must_use]
pub fn encode_segment_header(segment: u64, segment_size: u64) -> Vec<u8> {
    let mut header = SegmentHeader {
        magic: SEGMENT_MAGIC,
        crc32c: U32::new(0),
        version: U16::new(u16::from(FORMAT_VERSION)),
        reserved: U16::new(0),
        segment: U64::new(segment),
        segment_size: U64::new(segment_size),
        reserved2: [0; 32],
    };
    header.crc32c = U32::new(crc32c::crc32c(header.as_bytes().get(12..).expect("64-byte header")));
    let mut block = vec![0u8; SEGMENT_HEADER_BYTES as usize];
    block.get_mut(..SEGMENT_HEADER_USED_BYTES).expect("block holds header").copy_from_slice(header.as_bytes());
    block
}

/// Verifies a segment header block; returns the segment size it records.
pub fn parse_segment_header(block: &[u8], segment: u64) -> Result<u64, &'static str> {
    let bytes = block.get(..SEGMENT_HEADER_USED_BYTES).ok_or("segment shorter than its header")?;
    let header = SegmentHeader::read_from_bytes(bytes).map_err(|_| "segment shorter than its header")?;
    if header.magic != SEGMENT_MAGIC {
        return Err("bad magic");
    }
    if crc32c::crc32c(bytes.get(12..).ok_or("short")?) != header.crc32c.get() {
        return Err("header checksum mismatch");
    }
    if header.version.get() != u16::from(FORMAT_VERSION) {
        return Err("unknown format version");
    }
    if header.segment.get() != segment {
        return Err("header names another segment");
    }
    Ok(header.segment_size.get())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::offset_of;

    #[test]
    fn record_header_offsets_match_the_format_doc() {
        assert_eq!(offset_of!(RecordHeader, crc32c), 0);
        assert_eq!(offset_of!(RecordHeader, payload_len), 4);
        assert_eq!(offset_of!(RecordHeader, lsn), 8);
        assert_eq!(offset_of!(RecordHeader, batch_lsn), 16);
        assert_eq!(offset_of!(RecordHeader, partition), 24);
        assert_eq!(offset_of!(RecordHeader, term), 32);
        assert_eq!(offset_of!(RecordHeader, index), 40);
        assert_eq!(offset_of!(RecordHeader, kind), 48);
        assert_eq!(offset_of!(RecordHeader, version), 49);
        assert_eq!(offset_of!(RecordHeader, reserved), 50);
        assert_eq!(offset_of!(SegmentHeader, crc32c), 8);
        assert_eq!(offset_of!(SegmentHeader, version), 12);
        assert_eq!(offset_of!(SegmentHeader, segment), 16);
        assert_eq!(offset_of!(SegmentHeader, segment_size), 24);
    }

    #[test]
    fn record_roundtrips_and_any_bit_flip_is_rejected() {
        let meta = RecordMeta { partition: 7, term: 2, index: 99, kind: USER_KIND_MIN };
        let lsn = Lsn::new(3, 8192);
        let mut buf = Vec::new();
        encode_record(&mut buf, lsn, lsn, meta, b"hello");
        let (header, payload) = parse_record(&buf, 0, lsn, 1024).expect("valid record");
        assert_eq!(payload, b"hello");
        assert_eq!(header.index.get(), 99);
        for bit in 0..buf.len() * 8 {
            let mut rotten = buf.clone();
            if let Some(byte) = rotten.get_mut(bit / 8) {
                *byte ^= 1 << (bit % 8);
            }
            assert!(parse_record(&rotten, 0, lsn, 1024).is_err(), "flip of bit {bit} accepted");
        }
        assert_eq!(parse_record(&buf, 0, Lsn::new(4, 8192), 1024).err(), Some(RecordFault::WrongLsn));
    }

    #[test]
    fn lsn_orders_by_segment_then_offset() {
        assert!(Lsn::new(1, 4_000_000) < Lsn::new(2, 0));
        assert_eq!(Lsn::new(5, 4096).segment(), 5);
        assert_eq!(Lsn::new(5, 4096).offset(), 4096);
    }
}

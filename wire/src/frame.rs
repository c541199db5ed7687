//! Frames: `[u32 length][u32 crc32c][body]`, little-endian; `length` counts
//! the body only, and the crc32c covers the body. Layout:
//! `docs/format/frame.md`.
//!
//! Sans-IO: [`FrameDecoder::decode`] looks at the bytes received so far and
//! says whether a whole frame is there; the caller owns the buffer, so a body
//! is used in place (zero-copy) and only released when the caller drops it.

/// Bytes before the body.
pub const FRAME_HEADER_BYTES: usize = 8;

/// Default limit on a frame body. DynamoDB caps a BatchWriteItem request at
/// 16 MB; the rest is room for the envelope.
pub const FRAME_BODY_MAX_BYTES: usize = 17 * 1024 * 1024;

/// Why a frame was rejected. Either way the connection cannot continue: the
/// stream is no longer known to be aligned on frame boundaries.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The announced body is larger than the limit.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The body does not match its checksum.
    #[error("frame checksum mismatch (header {expected:#010x}, body {actual:#010x})")]
    Checksum {
        /// Checksum in the header.
        expected: u32,
        /// Checksum of the body received.
        actual: u32,
    },
    /// A frame with an empty body.
    #[error("empty frame")]
    Empty,
}

/// Appends one frame carrying `body` to `out`.
///
/// # Panics
/// If `body` is longer than `u32::MAX` bytes (callers bound bodies far
/// below that).
pub fn encode_frame(body: &[u8], out: &mut Vec<u8>) {
    let len = u32::try_from(body.len()).expect("frame bodies are bounded well below 4 GiB");
    out.reserve(FRAME_HEADER_BYTES + body.len());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(body).to_le_bytes());
    out.extend_from_slice(body);
}

/// A complete frame found in a receive buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameSpan {
    /// Where the body starts in the buffer.
    pub body_start: usize,
    /// Where the body (and the frame) ends.
    pub end: usize,
}

/// Finds frames in a byte stream.
#[derive(Debug, Clone, Copy)]
pub struct FrameDecoder {
    body_max_bytes: usize,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new(FRAME_BODY_MAX_BYTES)
    }
}

impl FrameDecoder {
    /// A decoder that refuses bodies above `body_max_bytes`.
    #[must_use]
    pub fn new(body_max_bytes: usize) -> Self {
        Self { body_max_bytes }
    }

    /// Looks for one frame at the start of `buf`. `Ok(None)`: more bytes are
    /// needed (at least `needed_bytes(buf)` in total). The length is checked
    /// against the limit before waiting for the body, so an oversized frame
    /// is refused without buffering it.
    pub fn decode(&self, buf: &[u8]) -> Result<Option<FrameSpan>, FrameError> {
        let Some(header) = buf.get(..FRAME_HEADER_BYTES) else { return Ok(None) };
        let (len_bytes, crc_bytes) = header.split_at(4);
        let len = u32::from_le_bytes(len_bytes.try_into().unwrap_or([0; 4])) as usize;
        let expected = u32::from_le_bytes(crc_bytes.try_into().unwrap_or([0; 4]));
        if len == 0 {
            return Err(FrameError::Empty);
        }
        if len > self.body_max_bytes {
            return Err(FrameError::TooLarge { len, max: self.body_max_bytes });
        }
        let end = FRAME_HEADER_BYTES + len;
        let Some(body) = buf.get(FRAME_HEADER_BYTES..end) else { return Ok(None) };
        let actual = crc32c::crc32c(body);
        if actual != expected {
            return Err(FrameError::Checksum { expected, actual });
        }
        Ok(Some(FrameSpan { body_start: FRAME_HEADER_BYTES, end }))
    }

    /// Total bytes needed for the frame starting at `buf` (the header first).
    #[must_use]
    pub fn needed_bytes(&self, buf: &[u8]) -> usize {
        match buf.get(..4) {
            Some(len) => FRAME_HEADER_BYTES + u32::from_le_bytes(len.try_into().unwrap_or([0; 4])) as usize,
            None => FRAME_HEADER_BYTES,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_roundtrip_and_arrive_in_pieces() {
        let mut stream = Vec::new();
        encode_frame(b"first", &mut stream);
        encode_frame(b"second body", &mut stream);
        let decoder = FrameDecoder::default();
        for cut in 0..13 {
            assert_eq!(decoder.decode(stream.get(..cut).unwrap_or(&[])), Ok(None), "prefix of {cut} bytes");
        }
        let first = decoder.decode(&stream).expect("valid").expect("complete");
        assert_eq!(stream.get(first.body_start..first.end), Some(&b"first"[..]));
        let rest = stream.get(first.end..).unwrap_or(&[]);
        let second = decoder.decode(rest).expect("valid").expect("complete");
        assert_eq!(rest.get(second.body_start..second.end), Some(&b"second body"[..]));
        assert_eq!(decoder.needed_bytes(rest), 8 + 11);
    }

    #[test]
    fn frame_faults_are_typed_errors() {
        let mut frame = Vec::new();
        encode_frame(b"payload", &mut frame);
        let decoder = FrameDecoder::new(100);
        for byte in FRAME_HEADER_BYTES..frame.len() {
            let mut rotten = frame.clone();
            if let Some(b) = rotten.get_mut(byte) {
                *b ^= 0x40;
            }
            assert!(matches!(decoder.decode(&rotten), Err(FrameError::Checksum { .. })));
        }
        let mut huge = Vec::new();
        huge.extend_from_slice(&101u32.to_le_bytes());
        huge.extend_from_slice(&0u32.to_le_bytes());
        assert_eq!(decoder.decode(&huge), Err(FrameError::TooLarge { len: 101, max: 100 }));
        assert_eq!(decoder.decode(&[0; 8]), Err(FrameError::Empty));
    }

    #[test]
    fn frame_header_layout_matches_the_format_doc() {
        let mut frame = Vec::new();
        encode_frame(&[1, 2, 3], &mut frame);
        assert_eq!(frame.get(0..4), Some(&3u32.to_le_bytes()[..]));
        assert_eq!(frame.get(4..8), Some(&crc32c::crc32c(&[1, 2, 3]).to_le_bytes()[..]));
        assert_eq!(frame.get(8..), Some(&[1u8, 2, 3][..]));
    }
}

//! Verification of every buffer that comes from outside, with explicit
//! limits. FlatBuffers carry no checksum (the frame's crc32c does); the
//! verifier guarantees that reading the buffer stays in bounds, so malformed
//! bytes become a [`VerifyError`], never a panic or an out-of-bounds read.
//!
//! Items inside `ItemBytes` are standalone buffers and are verified on their
//! own with [`item`] (the Rust verifier does not look inside `[ubyte]`).

use crate::fb;

/// Deepest table nesting accepted. DynamoDB allows 32 levels of nested
/// attributes; each level costs three tables here (AttributeValue, M or L,
/// Attribute), plus the envelope and request tables.
pub const DEPTH_MAX: usize = 32 * 3 + 16;

/// Most tables in one buffer. A 17 MiB frame cannot hold more than about
/// 1.4 M minimal tables; this bound keeps verification time proportional
/// to the frame size.
pub const TABLES_MAX: usize = 2_000_000;

/// Largest buffer the verifier will consider.
pub const BUFFER_MAX_BYTES: usize = 32 * 1024 * 1024;

/// A buffer failed verification.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid {what}: {source}")]
pub struct VerifyError {
    /// What was being verified ("request", "item", …).
    pub what: &'static str,
    /// The verifier's finding.
    #[source]
    pub source: flatbuffers::InvalidFlatbuffer,
}

pub(crate) fn options() -> flatbuffers::VerifierOptions {
    flatbuffers::VerifierOptions {
        max_depth: DEPTH_MAX,
        max_tables: TABLES_MAX,
        max_apparent_size: BUFFER_MAX_BYTES,
        ignore_missing_null_terminator: false,
    }
}

/// Verifies a request frame body.
pub fn request(body: &[u8]) -> Result<fb::RequestEnvelope<'_>, VerifyError> {
    fb::root_as_request_envelope_with_opts(&options(), body).map_err(|source| VerifyError { what: "request", source })
}

/// Verifies a response frame body.
pub fn response(body: &[u8]) -> Result<fb::ResponseEnvelope<'_>, VerifyError> {
    flatbuffers::root_with_opts::<fb::ResponseEnvelope>(&options(), body)
        .map_err(|source| VerifyError { what: "response", source })
}

/// Verifies a standalone `Item` buffer (the content of an `ItemBytes`).
pub fn item(bytes: &[u8]) -> Result<fb::Item<'_>, VerifyError> {
    flatbuffers::root_with_opts::<fb::Item>(&options(), bytes).map_err(|source| VerifyError { what: "item", source })
}

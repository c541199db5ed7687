//! Everything a server does with bytes from the network before its engine
//! sees them: frame decoding (length, limit, crc32c), the FlatBuffers
//! verifier with Keel's limits, request decoding, and decoding (and
//! validating) every item the request carries, and the replication envelope
//! peers send (`keel_wire::raft`). None of it may panic.

#![no_main]

use keel_wire::frame::{FRAME_BODY_MAX_BYTES, FrameDecoder};
use keel_wire::item;
use keel_wire::protocol::{self, BatchWrite, Request};
use libfuzzer_sys::fuzz_target;

fn request(body: &[u8]) {
    let Ok(envelope) = protocol::decode_request(body) else { return };
    match envelope.request {
        Request::PutItem { item: bytes, .. } => {
            if let Ok(decoded) = item::decode(bytes) {
                let _ = item::validate(&decoded);
            }
        }
        Request::BatchWriteItem { tables } => {
            for (_, writes) in tables {
                for write in writes {
                    if let BatchWrite::Put(bytes) = write {
                        let _ = item::decode(bytes);
                    }
                }
            }
        }
        _ => {}
    }
}

fuzz_target!(|data: &[u8]| {
    // The bytes as a stream of frames...
    let decoder = FrameDecoder::new(FRAME_BODY_MAX_BYTES);
    let mut rest = data;
    while let Ok(Some(span)) = decoder.decode(rest) {
        request(rest.get(span.body_start..span.end).unwrap_or(&[]));
        rest = rest.get(span.end..).unwrap_or(&[]);
    }
    // ...and as one frame body (most inputs fail the crc above), both as a
    // client request and as a peer's replication envelope.
    request(data);
    let _ = keel_wire::raft::decode_batch(data);
});

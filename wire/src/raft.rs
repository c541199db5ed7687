//! Replication traffic between storage nodes: Raft messages in Keel's own
//! FlatBuffers envelope (`wire/schema/raft.fbs`, layout in
//! `docs/format/raft.md`).
//!
//! This crate knows the envelope, not raft-rs: messages are plain structs
//! here ([`RaftMessage`]) and `keel-node` converts them to and from raft-rs's
//! types at its edge. A received body is verified (the frame's crc32c first,
//! then the FlatBuffers verifier with limits), then checked against the
//! limits below, before anything is read; entry payloads are borrowed from
//! the body, not copied.

use crate::verify::VerifyError;

/// Generated types of `raft.fbs` (`keel.raft` namespace).
pub use crate::generated_raft::keel::raft as rfb;

/// Most messages in one batch.
pub const MESSAGES_PER_BATCH_MAX: usize = 16 * 1024;
/// Most entries in one message.
pub const ENTRIES_PER_MESSAGE_MAX: usize = 64 * 1024;
/// Most members listed in a snapshot's configuration (each list).
pub const SNAPSHOT_MEMBERS_MAX: usize = 64;
/// Longest sender endpoint (`host:port`) in a batch.
pub const ENDPOINT_MAX_BYTES: usize = 256;

/// A received batch: who sent it, where it serves clients, its messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftBatch<'a> {
    /// The sending node's id.
    pub from_node: u64,
    /// Where the sender serves clients (empty when it did not say).
    pub from_endpoint: &'a str,
    /// The messages.
    pub messages: Vec<RaftMessage<'a>>,
}

/// A log entry; `data` and `context` borrow from the buffer they came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RaftEntry<'a> {
    /// raft-rs's entry type (0 normal, 1 configuration change, 2 v2).
    pub entry_type: u8,
    /// Term.
    pub term: u64,
    /// Index.
    pub index: u64,
    /// Payload.
    pub data: &'a [u8],
    /// raft-rs's entry context.
    pub context: &'a [u8],
}

/// A snapshot's metadata (its data travels in its own stream).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RaftSnapshotMeta {
    /// Last index the snapshot covers.
    pub index: u64,
    /// Its term.
    pub term: u64,
    /// Voters.
    pub voters: Vec<u64>,
    /// Learners.
    pub learners: Vec<u64>,
    /// Voters of the outgoing configuration (joint consensus).
    pub voters_outgoing: Vec<u64>,
    /// Learners to be.
    pub learners_next: Vec<u64>,
    /// Whether a joint configuration leaves itself.
    pub auto_leave: bool,
}

/// One raft-rs message of one group, field by field (see `raft.fbs`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RaftMessage<'a> {
    /// The group.
    pub partition: u64,
    /// raft-rs's message type number.
    pub msg_type: u8,
    /// Receiving peer (node id).
    pub to: u64,
    /// Sending peer (node id).
    pub from: u64,
    /// Sender's term.
    pub term: u64,
    /// Term of the entry before `entries`.
    pub log_term: u64,
    /// Index of the entry before `entries`.
    pub index: u64,
    /// Entries.
    pub entries: Vec<RaftEntry<'a>>,
    /// Leader's commit index.
    pub commit: u64,
    /// Term of the commit index.
    pub commit_term: u64,
    /// Snapshot metadata, for snapshot messages.
    pub snapshot: Option<RaftSnapshotMeta>,
    /// Index a follower asks a snapshot for.
    pub request_snapshot: u64,
    /// A rejection.
    pub reject: bool,
    /// Rejection hint.
    pub reject_hint: u64,
    /// raft-rs's message context (ReadIndex request ids).
    pub context: &'a [u8],
    /// Election priority.
    pub priority: i64,
}

/// A received batch could not be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RaftDecodeError {
    /// The buffer is not a valid envelope.
    #[error(transparent)]
    Verify(#[from] VerifyError),
    /// The buffer does not carry the envelope's identifier.
    #[error("not a Raft message batch (identifier missing)")]
    Identifier,
    /// A count is above its limit.
    #[error("{what}: {count} exceeds the limit of {max}")]
    TooMany {
        /// What was counted.
        what: &'static str,
        /// How many there are.
        count: usize,
        /// The limit.
        max: usize,
    },
}

/// Encodes the messages `from_node` (serving clients at `from_endpoint`)
/// sends in one batch (a frame body).
#[must_use]
pub fn encode_batch(from_node: u64, from_endpoint: &str, messages: &[RaftMessage<'_>]) -> Vec<u8> {
    assert!(messages.len() <= MESSAGES_PER_BATCH_MAX, "callers split batches at the limit");
    assert!(from_endpoint.len() <= ENDPOINT_MAX_BYTES, "an endpoint is host:port");
    let mut fbb = flatbuffers::FlatBufferBuilder::new();
    let mut encoded = Vec::with_capacity(messages.len());
    for m in messages {
        assert!(m.entries.len() <= ENTRIES_PER_MESSAGE_MAX, "raft-rs limits entries per message by size");
        let entries: Vec<_> = m
            .entries
            .iter()
            .map(|e| {
                let args = rfb::EntryArgs {
                    entry_type: e.entry_type,
                    term: e.term,
                    index: e.index,
                    data: (!e.data.is_empty()).then(|| fbb.create_vector(e.data)),
                    context: (!e.context.is_empty()).then(|| fbb.create_vector(e.context)),
                };
                rfb::Entry::create(&mut fbb, &args)
            })
            .collect();
        let entries = (!entries.is_empty()).then(|| fbb.create_vector(&entries));
        let snapshot = m.snapshot.as_ref().map(|s| {
            let args = rfb::SnapshotMetaArgs {
                index: s.index,
                term: s.term,
                voters: Some(fbb.create_vector(&s.voters)),
                learners: Some(fbb.create_vector(&s.learners)),
                voters_outgoing: Some(fbb.create_vector(&s.voters_outgoing)),
                learners_next: Some(fbb.create_vector(&s.learners_next)),
                auto_leave: s.auto_leave,
            };
            rfb::SnapshotMeta::create(&mut fbb, &args)
        });
        let context = (!m.context.is_empty()).then(|| fbb.create_vector(m.context));
        let args = rfb::MessageArgs {
            partition: m.partition,
            msg_type: m.msg_type,
            to: m.to,
            from: m.from,
            term: m.term,
            log_term: m.log_term,
            index: m.index,
            entries,
            commit: m.commit,
            commit_term: m.commit_term,
            snapshot,
            request_snapshot: m.request_snapshot,
            reject: m.reject,
            reject_hint: m.reject_hint,
            context,
            priority: m.priority,
        };
        encoded.push(rfb::Message::create(&mut fbb, &args));
    }
    let messages = Some(fbb.create_vector(&encoded));
    let from_endpoint = (!from_endpoint.is_empty()).then(|| fbb.create_string(from_endpoint));
    let batch = rfb::MessageBatch::create(&mut fbb, &rfb::MessageBatchArgs { from_node, messages, from_endpoint });
    rfb::finish_message_batch_buffer(&mut fbb, batch);
    fbb.finished_data().to_vec()
}

fn too_many(what: &'static str, count: usize, max: usize) -> Result<(), RaftDecodeError> {
    if count > max { Err(RaftDecodeError::TooMany { what, count, max }) } else { Ok(()) }
}

fn members(list: Option<flatbuffers::Vector<'_, u64>>) -> Result<Vec<u64>, RaftDecodeError> {
    let list = list.map(|l| l.iter().collect::<Vec<u64>>()).unwrap_or_default();
    too_many("snapshot members", list.len(), SNAPSHOT_MEMBERS_MAX)?;
    Ok(list)
}

/// Verifies and reads a batch: the sender and its messages.
pub fn decode_batch(body: &[u8]) -> Result<RaftBatch<'_>, RaftDecodeError> {
    // The identifier sits after the 4-byte root offset; flatbuffers asserts
    // (panics) on shorter buffers, so look only when it can be there.
    if body.len() < 8 || !rfb::message_batch_buffer_has_identifier(body) {
        return Err(RaftDecodeError::Identifier);
    }
    let batch = rfb::root_as_message_batch_with_opts(&crate::verify::options(), body)
        .map_err(|source| VerifyError { what: "raft message batch", source })?;
    let messages = batch.messages();
    too_many("messages in a batch", messages.len(), MESSAGES_PER_BATCH_MAX)?;
    let from_endpoint = batch.from_endpoint().unwrap_or_default();
    too_many("endpoint bytes", from_endpoint.len(), ENDPOINT_MAX_BYTES)?;
    let mut out = Vec::with_capacity(messages.len());
    for m in messages {
        let entries = m.entries().unwrap_or_default();
        too_many("entries in a message", entries.len(), ENTRIES_PER_MESSAGE_MAX)?;
        let entries = entries
            .iter()
            .map(|e| RaftEntry {
                entry_type: e.entry_type(),
                term: e.term(),
                index: e.index(),
                data: e.data().map(|d| d.bytes()).unwrap_or_default(),
                context: e.context().map(|d| d.bytes()).unwrap_or_default(),
            })
            .collect();
        let snapshot = match m.snapshot() {
            None => None,
            Some(s) => Some(RaftSnapshotMeta {
                index: s.index(),
                term: s.term(),
                voters: members(s.voters())?,
                learners: members(s.learners())?,
                voters_outgoing: members(s.voters_outgoing())?,
                learners_next: members(s.learners_next())?,
                auto_leave: s.auto_leave(),
            }),
        };
        out.push(RaftMessage {
            partition: m.partition(),
            msg_type: m.msg_type(),
            to: m.to(),
            from: m.from(),
            term: m.term(),
            log_term: m.log_term(),
            index: m.index(),
            entries,
            commit: m.commit(),
            commit_term: m.commit_term(),
            snapshot,
            request_snapshot: m.request_snapshot(),
            reject: m.reject(),
            reject_hint: m.reject_hint(),
            context: m.context().map(|d| d.bytes()).unwrap_or_default(),
            priority: m.priority(),
        });
    }
    Ok(RaftBatch { from_node: batch.from_node(), from_endpoint, messages: out })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<RaftMessage<'static>> {
        vec![
            RaftMessage {
                partition: 7,
                msg_type: 3,
                to: 2,
                from: 1,
                term: 5,
                log_term: 4,
                index: 10,
                entries: vec![
                    RaftEntry { entry_type: 0, term: 5, index: 11, data: b"put k v", context: b"" },
                    RaftEntry { entry_type: 0, term: 5, index: 12, data: b"", context: b"" },
                ],
                commit: 9,
                commit_term: 4,
                context: b"read-1",
                priority: -1,
                ..RaftMessage::default()
            },
            RaftMessage {
                partition: 9,
                msg_type: 7,
                to: 3,
                from: 1,
                term: 6,
                snapshot: Some(RaftSnapshotMeta {
                    index: 100,
                    term: 6,
                    voters: vec![1, 2, 3],
                    learners: vec![4],
                    ..RaftSnapshotMeta::default()
                }),
                reject: true,
                reject_hint: 8,
                request_snapshot: 3,
                ..RaftMessage::default()
            },
        ]
    }

    #[test]
    fn batch_round_trips_every_field() {
        let messages = sample();
        let body = encode_batch(1, "127.0.0.1:7400", &messages);
        let batch = decode_batch(&body).expect("decode");
        assert_eq!((batch.from_node, batch.from_endpoint), (1, "127.0.0.1:7400"));
        assert_eq!(batch.messages, messages);
        let anonymous = encode_batch(2, "", &messages);
        assert_eq!(decode_batch(&anonymous).map(|b| b.from_endpoint), Ok(""));
    }

    #[test]
    fn damaged_or_foreign_buffers_are_errors_not_panics() {
        let body = encode_batch(1, "127.0.0.1:7400", &sample());
        // Every truncation and every single-byte corruption is either
        // refused or read within bounds.
        for len in 0..body.len() {
            let _ = decode_batch(body.get(..len).unwrap_or_default());
        }
        for at in 0..body.len() {
            let mut bad = body.clone();
            if let Some(b) = bad.get_mut(at) {
                *b ^= 0xff;
            }
            let _ = decode_batch(&bad);
        }
        assert_eq!(decode_batch(b"not a flatbuffer at all"), Err(RaftDecodeError::Identifier));
    }

    #[test]
    fn snapshot_member_lists_are_limited() {
        let mut messages = sample();
        if let Some(Some(s)) = messages.get_mut(1).map(|m| m.snapshot.as_mut()) {
            s.voters = (1..=65).collect();
        }
        let body = encode_batch(1, "", &messages);
        assert!(matches!(decode_batch(&body), Err(RaftDecodeError::TooMany { what: "snapshot members", .. })));
    }
}

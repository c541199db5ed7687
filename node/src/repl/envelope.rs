//! The edge between raft-rs's message types (`eraftpb`, protobuf-generated)
//! and Keel's replication envelope ([`keel_wire::raft`], FlatBuffers). Nodes
//! exchange only the envelope; raft-rs's protobuf encoding never crosses the
//! network, so nothing here decodes protobuf.
//!
//! Only message and entry types a peer may legitimately send are accepted:
//! raft-rs's local message types (ticks, proposals, status reports) and
//! configuration-change entries are refused. Keel does not change group
//! membership yet; when log replicas come, configuration changes will travel
//! in Keel's own encoding.

use keel_wire::raft::{RaftEntry, RaftMessage, RaftSnapshotMeta};
use raft::eraftpb::{ConfState, Entry, EntryType, Message, MessageType, Snapshot, SnapshotMetadata};

use super::shard::Outgoing;

/// A received message that cannot be handed to raft-rs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// Not a message type peers exchange.
    #[error("message type {0} is not accepted from a peer")]
    MessageType(u8),
    /// Not an entry type accepted from a peer.
    #[error("entry type {0} is not accepted from a peer")]
    EntryType(u8),
}

/// raft-rs's message types by their number (eraftpb.proto).
const MESSAGE_TYPES: [MessageType; 19] = [
    MessageType::MsgHup,
    MessageType::MsgBeat,
    MessageType::MsgPropose,
    MessageType::MsgAppend,
    MessageType::MsgAppendResponse,
    MessageType::MsgRequestVote,
    MessageType::MsgRequestVoteResponse,
    MessageType::MsgSnapshot,
    MessageType::MsgHeartbeat,
    MessageType::MsgHeartbeatResponse,
    MessageType::MsgUnreachable,
    MessageType::MsgSnapStatus,
    MessageType::MsgCheckQuorum,
    MessageType::MsgTransferLeader,
    MessageType::MsgTimeoutNow,
    MessageType::MsgReadIndex,
    MessageType::MsgReadIndexResp,
    MessageType::MsgRequestPreVote,
    MessageType::MsgRequestPreVoteResponse,
];

fn type_number(t: MessageType) -> u8 {
    let at = MESSAGE_TYPES.iter().position(|&known| known == t).expect("every type is in the table");
    u8::try_from(at).expect("19 types")
}

/// The message type a peer may send with this number; raft-rs's local
/// types (ticks, proposals, status reports) are not among them.
fn peer_type(number: u8) -> Option<MessageType> {
    let t = *MESSAGE_TYPES.get(usize::from(number))?;
    (!raft::raw_node::is_local_msg(t) && t != MessageType::MsgPropose).then_some(t)
}

/// The envelope form of an outgoing message; borrows its payloads.
#[must_use]
pub fn to_wire(out: &Outgoing) -> RaftMessage<'_> {
    let m = &out.message;
    let entries = m
        .get_entries()
        .iter()
        .map(|e| {
            assert_eq!(e.get_entry_type(), EntryType::EntryNormal, "Keel proposes no configuration changes yet");
            RaftEntry { entry_type: 0, term: e.term, index: e.index, data: e.get_data(), context: e.get_context() }
        })
        .collect();
    let snapshot = m.has_snapshot().then(|| {
        let meta = m.get_snapshot().get_metadata();
        let conf = meta.get_conf_state();
        RaftSnapshotMeta {
            index: meta.index,
            term: meta.term,
            voters: conf.voters.clone(),
            learners: conf.learners.clone(),
            voters_outgoing: conf.voters_outgoing.clone(),
            learners_next: conf.learners_next.clone(),
            auto_leave: conf.auto_leave,
        }
    });
    RaftMessage {
        partition: out.partition,
        msg_type: type_number(m.get_msg_type()),
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
        context: m.get_context(),
        priority: m.priority,
    }
}

/// The raft-rs form of a received message (copies its payloads).
pub fn from_wire(w: &RaftMessage<'_>) -> Result<Outgoing, EnvelopeError> {
    let msg_type = peer_type(w.msg_type).ok_or(EnvelopeError::MessageType(w.msg_type))?;
    let mut entries = Vec::with_capacity(w.entries.len());
    for e in &w.entries {
        if e.entry_type != 0 {
            return Err(EnvelopeError::EntryType(e.entry_type));
        }
        entries.push(Entry {
            term: e.term,
            index: e.index,
            data: e.data.to_vec().into(),
            context: e.context.to_vec().into(),
            ..Entry::default()
        });
    }
    let mut message = Message {
        msg_type,
        to: w.to,
        from: w.from,
        term: w.term,
        log_term: w.log_term,
        index: w.index,
        commit: w.commit,
        commit_term: w.commit_term,
        request_snapshot: w.request_snapshot,
        reject: w.reject,
        reject_hint: w.reject_hint,
        context: w.context.to_vec().into(),
        priority: w.priority,
        ..Message::default()
    };
    message.set_entries(entries.into());
    if let Some(s) = &w.snapshot {
        let conf_state = ConfState {
            voters: s.voters.clone(),
            learners: s.learners.clone(),
            voters_outgoing: s.voters_outgoing.clone(),
            learners_next: s.learners_next.clone(),
            auto_leave: s.auto_leave,
            ..ConfState::default()
        };
        let mut metadata = SnapshotMetadata { index: s.index, term: s.term, ..SnapshotMetadata::default() };
        metadata.set_conf_state(conf_state);
        let mut snapshot = Snapshot::default();
        snapshot.set_metadata(metadata);
        message.set_snapshot(snapshot);
    }
    Ok(Outgoing { partition: w.partition, message })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_through_the_envelope() {
        let mut message = Message {
            msg_type: MessageType::MsgAppend,
            to: 2,
            from: 1,
            term: 3,
            log_term: 2,
            index: 9,
            commit: 8,
            context: b"ctx".to_vec().into(),
            ..Message::default()
        };
        let entry = Entry { term: 3, index: 10, data: b"payload".to_vec().into(), ..Entry::default() };
        message.set_entries(vec![entry].into());
        let out = Outgoing { partition: 4, message };
        let body = keel_wire::raft::encode_batch(1, "", &[to_wire(&out)]);
        let keel_wire::raft::RaftBatch { from_node: from, messages: decoded, .. } =
            keel_wire::raft::decode_batch(&body).expect("decode");
        assert_eq!(from, 1);
        let back = from_wire(decoded.first().expect("one message")).expect("accepted");
        assert_eq!(back.partition, 4);
        assert_eq!(back.message, out.message);
    }

    #[test]
    fn local_message_and_entry_types_are_refused() {
        for local in [0_u8, 1, 2, 10, 11, 12, 19, 255] {
            let w = RaftMessage { msg_type: local, ..RaftMessage::default() };
            assert_eq!(from_wire(&w).err(), Some(EnvelopeError::MessageType(local)));
        }
        let w = RaftMessage {
            msg_type: 3,
            entries: vec![RaftEntry { entry_type: 1, ..RaftEntry::default() }],
            ..RaftMessage::default()
        };
        assert_eq!(from_wire(&w).err(), Some(EnvelopeError::EntryType(1)));
    }
}

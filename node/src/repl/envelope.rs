//! The edge between raft-rs's message types (`eraftpb`, protobuf-generated)
//! and Keel's replication envelope ([`keel_wire::raft`], FlatBuffers). Nodes
//! exchange only the envelope; raft-rs's protobuf encoding never crosses the
//! network, so nothing here decodes protobuf.
//!
//! Only message and entry types a peer may legitimately send are accepted:
//! raft-rs's local message types (ticks, proposals, status reports) and
//! version-1 configuration changes are refused. Configuration changes
//! (`ConfChangeV2`, how log replicas join and failed replicas leave) travel
//! in Keel's own encoding ([`encode_conf_change`], `docs/format/raft.md`):
//! raft-rs keeps them protobuf-encoded in its log, so [`prepare_outgoing`]
//! re-encodes them in messages about to leave (from this node's own log),
//! and [`from_wire`] builds raft-rs's form from a verified Keel encoding.

use keel_wire::raft::{RaftEntry, RaftMessage, RaftSnapshotMeta};
use protobuf::Message as _;
use raft::eraftpb::{
    ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2, ConfState, Entry, EntryType, Message,
    MessageType, Snapshot, SnapshotMetadata,
};

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
    /// A configuration change that does not decode.
    #[error("configuration change: {0}")]
    ConfChange(&'static str),
}

/// Version of Keel's encoding of a configuration change.
const CONF_CHANGE_VERSION: u8 = 1;
/// Most single changes in one configuration change.
pub const CONF_CHANGES_MAX: usize = 16;
/// Most bytes of a configuration change's context.
pub const CONF_CONTEXT_MAX_BYTES: usize = 1024;

/// Keel's encoding of a configuration change:
/// `[u8 version 1][u8 transition][u8 count] count × ([u8 type][u64 node])
/// [u16 context length][context]`, little-endian.
#[must_use]
pub fn encode_conf_change(cc: &ConfChangeV2) -> Vec<u8> {
    let changes = cc.get_changes();
    assert!(changes.len() <= CONF_CHANGES_MAX, "Keel proposes few changes at once");
    assert!(cc.get_context().len() <= CONF_CONTEXT_MAX_BYTES, "Keel's contexts are small");
    let mut out = vec![CONF_CHANGE_VERSION, transition_number(cc.get_transition())];
    out.push(u8::try_from(changes.len()).expect("bounded above"));
    for change in changes {
        out.push(change_type_number(change.get_change_type()));
        out.extend_from_slice(&change.node_id.to_le_bytes());
    }
    let context = cc.get_context();
    out.extend_from_slice(&u16::try_from(context.len()).expect("bounded above").to_le_bytes());
    out.extend_from_slice(context);
    out
}

/// Reads [`encode_conf_change`]'s form, checking every bound.
pub fn decode_conf_change(bytes: &[u8]) -> Result<ConfChangeV2, EnvelopeError> {
    let bad = EnvelopeError::ConfChange;
    let (&version, rest) = bytes.split_first().ok_or(bad("empty"))?;
    if version != CONF_CHANGE_VERSION {
        return Err(bad("unknown version"));
    }
    let (&transition, rest) = rest.split_first().ok_or(bad("truncated"))?;
    let (&count, mut rest) = rest.split_first().ok_or(bad("truncated"))?;
    if usize::from(count) > CONF_CHANGES_MAX {
        return Err(bad("too many changes"));
    }
    let mut cc = ConfChangeV2::default();
    cc.set_transition(match transition {
        0 => ConfChangeTransition::Auto,
        1 => ConfChangeTransition::Implicit,
        2 => ConfChangeTransition::Explicit,
        _ => return Err(bad("unknown transition")),
    });
    let mut changes = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        let (&kind, after) = rest.split_first().ok_or(bad("truncated"))?;
        let (node, after) = after.split_at_checked(8).ok_or(bad("truncated"))?;
        let mut change = ConfChangeSingle::default();
        change.set_change_type(match kind {
            0 => ConfChangeType::AddNode,
            1 => ConfChangeType::RemoveNode,
            2 => ConfChangeType::AddLearnerNode,
            _ => return Err(bad("unknown change type")),
        });
        change.node_id = u64::from_le_bytes(node.try_into().map_err(|_| bad("truncated"))?);
        if change.node_id == 0 {
            return Err(bad("node id 0"));
        }
        changes.push(change);
        rest = after;
    }
    let (length, context) = rest.split_at_checked(2).ok_or(bad("truncated"))?;
    let length = usize::from(u16::from_le_bytes(length.try_into().map_err(|_| bad("truncated"))?));
    if length > CONF_CONTEXT_MAX_BYTES || context.len() != length {
        return Err(bad("context length"));
    }
    cc.set_changes(changes.into());
    cc.context = context.to_vec().into();
    Ok(cc)
}

fn transition_number(t: ConfChangeTransition) -> u8 {
    match t {
        ConfChangeTransition::Auto => 0,
        ConfChangeTransition::Implicit => 1,
        ConfChangeTransition::Explicit => 2,
    }
}

fn change_type_number(t: ConfChangeType) -> u8 {
    match t {
        ConfChangeType::AddNode => 0,
        ConfChangeType::RemoveNode => 1,
        ConfChangeType::AddLearnerNode => 2,
    }
}

/// Re-encodes the configuration changes among a message's entries (raft-rs's
/// protobuf, from this node's own log) in Keel's encoding, before the
/// message leaves. Call once per outgoing message.
pub fn prepare_outgoing(message: &mut Message) {
    for entry in message.mut_entries().iter_mut() {
        match entry.get_entry_type() {
            EntryType::EntryNormal => {}
            EntryType::EntryConfChangeV2 => {
                let cc = ConfChangeV2::parse_from_bytes(entry.get_data())
                    .expect("raft-rs encoded this entry in this node's own log");
                entry.data = encode_conf_change(&cc).into();
            }
            EntryType::EntryConfChange => panic!("Keel proposes only ConfChangeV2"),
        }
    }
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
            // Configuration changes were re-encoded by `prepare_outgoing`.
            let entry_type = match e.get_entry_type() {
                EntryType::EntryNormal => 0,
                EntryType::EntryConfChange => 1,
                EntryType::EntryConfChangeV2 => 2,
            };
            RaftEntry { entry_type, term: e.term, index: e.index, data: e.get_data(), context: e.get_context() }
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
        let (entry_type, data) = match e.entry_type {
            0 => (EntryType::EntryNormal, e.data.to_vec()),
            // raft-rs reads configuration changes in its own encoding,
            // which Keel builds from the verified Keel form.
            2 => {
                let cc = decode_conf_change(e.data)?;
                (EntryType::EntryConfChangeV2, cc.write_to_bytes().expect("encoding a built message succeeds"))
            }
            other => return Err(EnvelopeError::EntryType(other)),
        };
        let mut entry = Entry {
            term: e.term,
            index: e.index,
            data: data.into(),
            context: e.context.to_vec().into(),
            ..Entry::default()
        };
        entry.set_entry_type(entry_type);
        entries.push(entry);
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
    fn configuration_changes_travel_in_keels_encoding_and_damage_is_refused() {
        let mut cc = ConfChangeV2::default();
        cc.set_transition(ConfChangeTransition::Auto);
        let change = |kind, node_id| {
            let mut c = ConfChangeSingle { node_id, ..ConfChangeSingle::default() };
            c.set_change_type(kind);
            c
        };
        cc.set_changes(vec![change(ConfChangeType::RemoveNode, 2), change(ConfChangeType::AddNode, 4)].into());
        cc.context = b"log 4".to_vec().into();
        let bytes = encode_conf_change(&cc);
        assert_eq!(decode_conf_change(&bytes), Ok(cc.clone()));
        // A message carrying it: protobuf in the log, Keel's form on the wire.
        let mut entry =
            Entry { term: 2, index: 9, data: cc.write_to_bytes().expect("encode").into(), ..Entry::default() };
        entry.set_entry_type(EntryType::EntryConfChangeV2);
        let mut message = Message { to: 4, from: 1, ..Message::default() };
        message.set_msg_type(MessageType::MsgAppend);
        message.set_entries(vec![entry.clone()].into());
        prepare_outgoing(&mut message);
        let out = Outgoing { partition: 3, message };
        let wire = to_wire(&out);
        assert_eq!(wire.entries.first().map(|e| (e.entry_type, e.data)), Some((2, bytes.as_slice())));
        let back = from_wire(&wire).expect("accepted");
        assert_eq!(back.message.get_entries(), &[entry]);
        // Every truncation and a few corruptions are refused, never a panic.
        for len in 0..bytes.len() {
            assert!(decode_conf_change(bytes.get(..len).unwrap_or_default()).is_err(), "length {len}");
        }
        for (at, value) in [(0, 9_u8), (1, 7), (2, 17), (3, 5)] {
            let mut bad = bytes.clone();
            if let Some(b) = bad.get_mut(at) {
                *b = value;
            }
            assert!(decode_conf_change(&bad).is_err(), "byte {at} = {value}");
        }
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

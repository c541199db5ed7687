//! Replication: every partition is a Raft group (raft-rs) with a replica on
//! each of three nodes in three availability zones.
//!
//! raft-rs is a sans-IO consensus core: it never touches a disk, a socket or
//! a clock. [`ShardRaft`] drives all the groups of one shard with it and hands
//! the shell one batch per pass: messages to send now, committed entries to
//! apply, and the entries and hard states of every group to persist in one
//! group commit, after which (and only after which) the messages that promise
//! persistence may leave. keel-node is one shell; the seeded cluster
//! simulator ([`sim`]) is the other, and checks linearizability, durability
//! of acknowledged writes, one leader per term and convergence under network
//! and disk faults.
//!
//! Strongly consistent reads use Raft's ReadIndex (the leader confirms with a
//! quorum that it still leads, then serves once it has applied the index).
//! A clock-based leader lease would save that round trip; it comes with
//! the node shell, whose clock the simulator can then skew.

pub mod durable;
pub mod envelope;
pub mod log;
pub mod shard;
pub mod sim;
mod slog_bridge;

pub use log::GroupLog;
pub use shard::{
    Committed, GroupStatus, GroupWrite, Outgoing, PersistToken, Proposal, ProposeError, ReadyBatch, ReplConfig, Role,
    ShardRaft, StepError,
};

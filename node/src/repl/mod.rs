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
//! Strongly consistent reads go to the leader. Under a lease it serves them
//! at once (at its commit index, once applied); otherwise it first confirms
//! its leadership with a quorum (Raft's ReadIndex), which renews the lease.
//! A lease granted by a quorum's acknowledgement at tick `t` runs until
//! `t + election_ticks - lease_margin_ticks`: with check-quorum on, none of
//! those followers votes for another leader within an election timeout of
//! hearing from this one, and the margin covers clocks that run up to 20 %
//! apart. A node that restarts stays out of elections for one election
//! timeout, since it forgot whose lease it may have renewed. The simulator
//! runs half its seeds with leases, on clocks up to 10 % apart.
//!
//! A *log replica* is a voter that keeps only the group's log in its shard
//! WAL, with no B-tree: a leader puts one in the place of a replica it has
//! not heard from (one joint configuration change), so that the group has
//! three voters again at the cost of shipping the log alone. It votes and
//! acknowledges like any voter but never campaigns (its campaign timeout is
//! out of reach), since it could not serve reads or evaluate conditions.
//! Configuration changes are `ConfChangeV2` entries; their context carries
//! the log replicas after the change, and every replica records the
//! resulting group state (WAL kind 20) when it applies one.

pub mod durable;
pub mod envelope;
pub mod log;
pub mod membership;
pub mod shard;
pub mod sim;
mod slog_bridge;

pub use log::GroupLog;
pub use shard::{
    Committed, GroupState, GroupStatus, GroupWrite, Outgoing, PersistToken, Proposal, ProposeError, ReadPath,
    ReadReady, ReadyBatch, ReplConfig, ReplaceError, Role, ShardRaft, StepError,
};

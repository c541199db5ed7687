//! [`ShardRaft`]: every replication group of one shard, driven together.
//!
//! A shard hosts replicas of many partitions; each partition is a Raft group
//! (raft-rs `RawNode`) whose peers are the nodes holding its other replicas.
//! The shard drives them all with one loop:
//!
//! 1. [`ShardRaft::tick`] on the shard's clock, [`ShardRaft::step`] for each
//!    message that arrives, [`ShardRaft::propose`] and
//!    [`ShardRaft::read_index`] for client requests.
//! 2. [`ShardRaft::ready`] collects one [`ReadyBatch`] across **all** groups:
//!    messages that may leave at once, committed entries to apply, and the
//!    entries and hard states of every group to persist. The shell writes all
//!    of them in one WAL group commit.
//! 3. Only when that write is durable does the shell call
//!    [`ShardRaft::persisted`], which releases the messages that must wait
//!    for persistence (votes, append acknowledgements) and lets raft-rs count
//!    the local copy towards the quorum.
//! 4. After applying committed entries the shell reports them with
//!    [`ShardRaft::applied`].
//!
//! Nothing here does I/O or reads a clock (STYLE rule 1): the same code runs
//! in keel-node and in the cluster simulator ([`super::sim`]).

use std::collections::BTreeMap;
use std::ops::Range;

use protobuf::Message as _;
use raft::eraftpb::{
    ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2, ConfState, Entry, HardState, Message,
    MessageType,
};
use raft::{RawNode, SnapshotStatus, StateRole};

use super::log::GroupLog;
use super::slog_bridge;

/// Settings shared by every group of a shard.
#[derive(Debug, Clone)]
pub struct ReplConfig {
    /// Ticks between heartbeats from a leader.
    pub heartbeat_ticks: usize,
    /// The election timeout every node of a group is configured with: a
    /// follower that heard from its leader this recently refuses to vote for
    /// another (check-quorum), which is what makes leader leases safe.
    pub election_ticks: usize,
    /// A follower that hears nothing from a leader for a number of ticks
    /// drawn from this range campaigns (its start at least `election_ticks`).
    /// raft-rs draws it with its own random-number generator, so the
    /// simulator gives each node a range of one value (drawn from the seed)
    /// to stay deterministic.
    pub campaign_ticks: Range<usize>,
    /// Whether a leader serves strongly consistent reads under a lease
    /// instead of confirming its leadership with a quorum for each.
    pub lease_reads: bool,
    /// How much shorter than `election_ticks` a lease is: the margin for
    /// clocks that run at different rates on different nodes (2 of 10 ticks
    /// covers a 20 % difference).
    pub lease_margin_ticks: usize,
    /// Bytes of entries in one append message at most.
    pub message_entries_bytes_max: u64,
    /// Append messages in flight to one follower at most.
    pub messages_in_flight_max: usize,
    /// Bytes of proposed, not yet committed entries a leader accepts at most
    /// (further proposals are refused until some commit).
    pub uncommitted_bytes_max: u64,
    /// Bytes of committed entries handed out in one ready at most.
    pub committed_bytes_per_ready_max: u64,
}

impl Default for ReplConfig {
    fn default() -> Self {
        Self {
            heartbeat_ticks: 2,
            election_ticks: 10,
            campaign_ticks: 10..20,
            lease_reads: true,
            lease_margin_ticks: 2,
            message_entries_bytes_max: 1024 * 1024,
            messages_in_flight_max: 256,
            uncommitted_bytes_max: 64 * 1024 * 1024,
            committed_bytes_per_ready_max: 16 * 1024 * 1024,
        }
    }
}

/// A message to a peer of one group. `message.to` is the peer's node id.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// The group (partition id).
    pub partition: u64,
    /// The raft-rs message.
    pub message: Message,
}

/// What one group must persist.
#[derive(Debug, Clone)]
pub struct GroupWrite {
    /// The group (partition id).
    pub partition: u64,
    /// Entries to append (they may replace an uncommitted tail).
    pub entries: Vec<Entry>,
    /// The group's state (configuration, log replicas, where the log
    /// restarts), when it changed. Write it **before** the entries: a log
    /// that restarts after a snapshot drops what came before.
    pub state: Option<GroupState>,
    /// New persistent state, if it changed. Write it **after** the entries:
    /// its commit index may cover them, and a restart must never find a
    /// commit index beyond its log (a torn write may keep the entries and
    /// lose the hard state, which is harmless: nothing that depends on the
    /// hard state was sent before the write was durable).
    pub hard_state: Option<HardState>,
}

/// A group's durable state besides its entries and hard state (WAL kind 20,
/// `repl::durable`).
#[derive(Debug, Clone, PartialEq)]
pub struct GroupState {
    /// This node keeps only the group's log (it is a log replica).
    pub log_only: bool,
    /// The log restarts after this entry (index, term): a snapshot.
    pub restart: Option<(u64, u64)>,
    /// The configuration.
    pub conf_state: ConfState,
    /// The voters that are log replicas.
    pub log_replicas: Vec<u64>,
}

/// Committed entries of one group, to apply in order.
#[derive(Debug, Clone)]
pub struct Committed {
    /// The group (partition id).
    pub partition: u64,
    /// Consecutive entries; an entry with empty data is Raft's own (a new
    /// leader's empty entry) and changes nothing.
    pub entries: Vec<Entry>,
}

/// A group's leadership as this node sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupStatus {
    /// Whether this replica leads.
    pub role: Role,
    /// The leader this replica knows of (0: none).
    pub leader: u64,
    /// Current term.
    pub term: u64,
    /// Highest index known committed.
    pub commit: u64,
    /// Highest index applied (as reported with [`ShardRaft::applied`]).
    pub applied: u64,
    /// Last index in the log.
    pub last_index: u64,
}

/// Raft roles, without raft-rs's types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Follows a leader (or waits for one).
    Follower,
    /// Campaigning.
    Candidate,
    /// Pre-campaigning (pre-vote).
    PreCandidate,
    /// Leads.
    Leader,
}

impl From<StateRole> for Role {
    fn from(role: StateRole) -> Self {
        match role {
            StateRole::Follower => Self::Follower,
            StateRole::Candidate => Self::Candidate,
            StateRole::PreCandidate => Self::PreCandidate,
            StateRole::Leader => Self::Leader,
        }
    }
}

/// Everything one pass over the groups produced. See the module docs for
/// the order in which to handle it.
#[derive(Debug)]
#[must_use = "a ready batch must be persisted, then handed back with `persisted`"]
pub struct ReadyBatch {
    /// Messages that may be sent now.
    pub send: Vec<Outgoing>,
    /// Committed entries to apply.
    pub committed: Vec<Committed>,
    /// What to persist, in one write.
    pub writes: Vec<GroupWrite>,
    /// Answers to [`ShardRaft::read_index`] that needed a quorum: serve the
    /// read once the group has applied `index`.
    pub reads: Vec<(u64, ReadReady)>,
    /// Groups whose leadership changed, with their status now.
    pub changes: Vec<(u64, GroupStatus)>,
    /// Hand back with [`ShardRaft::persisted`] once `writes` are durable.
    pub token: PersistToken,
}

/// Proof that a [`ReadyBatch`] was taken; see [`ShardRaft::persisted`].
#[derive(Debug)]
#[must_use = "hand the token back once the batch's writes are durable"]
pub struct PersistToken {
    /// (partition, group incarnation, ready number).
    numbers: Vec<(u64, u64, u64)>,
    after: Vec<Outgoing>,
}

/// A strongly consistent read may be served once the group has applied
/// `index`; `context` is the caller's, from [`ShardRaft::read_index`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadReady {
    /// Index to have applied first.
    pub index: u64,
    /// The caller's context.
    pub context: Vec<u8>,
}

/// How a strongly consistent read proceeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadPath {
    /// The leader holds a lease: serve once the group has applied `index`,
    /// with no round trip.
    Lease {
        /// Index to have applied first.
        index: u64,
    },
    /// The leader confirms its leadership with a quorum first; the answer
    /// comes in a later [`ReadyBatch::reads`].
    Quorum,
}

/// Why a request cannot be served by this replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// This replica does not lead; `leader` is the one it knows of (0: none).
    #[error("not the leader of partition {partition} (leader hint: {leader})")]
    NotLeader {
        /// The group.
        partition: u64,
        /// Node id of the known leader, 0 when unknown.
        leader: u64,
    },
    /// The leader refused the proposal (its uncommitted entries are at their
    /// limit, or it is handing leadership over); retry later.
    #[error("proposal to partition {0} dropped; retry")]
    Dropped(u64),
    /// No replica of this partition here.
    #[error("partition {0} has no replica on this shard")]
    UnknownPartition(u64),
    /// This replica has just become leader and has not yet applied an entry
    /// of its term, so it does not know the outcome of every earlier write;
    /// retry shortly.
    #[error("the new leader of partition {0} is catching up; retry")]
    NotReady(u64),
}

/// Why a replacement of a replica was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplaceError {
    /// The group cannot take the proposal here (not the leader, or not yet).
    #[error(transparent)]
    Propose(#[from] ProposeError),
    /// Another configuration change of the group is under way; retry once
    /// it is applied.
    #[error("partition {0:#x} is already changing its replicas; retry")]
    ChangePending(u64),
    /// The replica to remove is not one of the group's voters (or is the
    /// leader itself).
    #[error("node {node} is not a replica of partition {partition:#x} that its leader can remove")]
    NotAVoter {
        /// The group.
        partition: u64,
        /// The node named.
        node: u64,
    },
    /// The node to add already holds a replica (or is no node).
    #[error("node {node} cannot be added to partition {partition:#x}: it is already a replica")]
    AlreadyAVoter {
        /// The group.
        partition: u64,
        /// The node named.
        node: u64,
    },
}

/// Why a message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    /// No replica of this partition here.
    #[error("partition {0} has no replica on this shard")]
    UnknownPartition(u64),
    /// A message type that only the node itself may produce.
    #[error("message of local type {0:?} from the network")]
    LocalType(raft::eraftpb::MessageType),
    /// A snapshot for a full replica: Keel's snapshots are metadata alone
    /// (for log replicas), and restoring one here would leave the B-tree
    /// short of the entries it skips (raft-rs then asserts). Such a replica
    /// fell behind the start of the leader's log; it stays behind (the
    /// group keeps its other two replicas) until rebuilding full replicas
    /// from the leader's B-tree is wired for it.
    #[error("partition {0:#x}: a full replica behind the leader's log cannot take a metadata snapshot")]
    SnapshotForFullReplica(u64),
    /// raft-rs refused it.
    #[error("step partition {partition}: {reason}")]
    Refused {
        /// The group.
        partition: u64,
        /// raft-rs's words.
        reason: String,
    },
}

/// Where a proposal was placed; it succeeded if the entry applied at `index`
/// has `term`, and failed for good if another entry is applied there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proposal {
    /// The leader's term when it appended the entry.
    pub term: u64,
    /// The entry's index.
    pub index: u64,
}

struct Group {
    raw: RawNode<GroupLog>,
    /// Which start of the group this is: a token taken before the group was
    /// started again (a log replica becoming a full one) is not its own.
    incarnation: u64,
    last_status: Option<(Role, u64, u64)>,
    /// The leader may serve reads locally until this shard tick (exclusive).
    lease_until_tick: u64,
}

impl std::fmt::Debug for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Group").field("status", &status_of(&self.raw)).finish_non_exhaustive()
    }
}

/// The replication groups of one shard. See the module docs.
#[derive(Debug)]
pub struct ShardRaft {
    node_id: u64,
    config: ReplConfig,
    logger: slog::Logger,
    groups: BTreeMap<u64, Group>,
    /// Groups of which this node is a log replica: their campaign timeout
    /// never comes (a log replica holds no state to serve as leader).
    log_only: std::collections::BTreeSet<u64>,
    /// Ticks since this shard started.
    ticks: u64,
    /// Groups started so far (each start gets the next number).
    incarnations: u64,
}

/// The campaign timeout of a log replica's groups: never reached (about
/// 3,500 years of 100 ms ticks).
const NEVER_CAMPAIGN_TICKS: Range<usize> = (1 << 40)..(1 << 40) + 1;

/// Bytes of Keel's prefix on a ReadIndex context: the tick and term at which
/// the read was asked.
const READ_CONTEXT_PREFIX_BYTES: usize = 16;

impl ShardRaft {
    /// A shard of node `node_id` (its Raft peer id in every group) with no
    /// groups yet.
    #[must_use]
    pub fn new(node_id: u64, config: ReplConfig) -> Self {
        assert!(node_id != 0, "raft-rs reserves peer id 0");
        assert!(config.election_ticks > config.heartbeat_ticks, "elections must be slower than heartbeats");
        assert!(config.campaign_ticks.start >= config.election_ticks, "campaigns start after the election timeout");
        assert!(config.campaign_ticks.start < config.campaign_ticks.end, "empty campaign range");
        assert!(config.lease_margin_ticks < config.election_ticks, "a lease must last at least a tick");
        let logger = slog_bridge::logger(node_id);
        Self {
            node_id,
            config,
            logger,
            groups: BTreeMap::new(),
            log_only: Default::default(),
            ticks: 0,
            incarnations: 0,
        }
    }

    /// Adds the replica of `partition` whose log (rebuilt from durable
    /// records, or new) is `log`, and whose state machine has applied
    /// entries up to `applied`.
    pub fn add_group(&mut self, partition: u64, log: GroupLog, applied: u64) -> Result<(), raft::Error> {
        self.start_group(partition, log, applied, false)
    }

    fn start_group(&mut self, partition: u64, log: GroupLog, applied: u64, log_only: bool) -> Result<(), raft::Error> {
        assert!(!self.groups.contains_key(&partition), "partition {partition} added twice");
        // A log replica's clock runs (a leader's lease it heard of expires,
        // so it grants votes to a new leader), but its own election timeout
        // never comes: it never campaigns.
        let campaign = if log_only { NEVER_CAMPAIGN_TICKS } else { self.config.campaign_ticks.clone() };
        let config = raft::Config {
            id: self.node_id,
            election_tick: self.config.election_ticks,
            min_election_tick: campaign.start,
            max_election_tick: campaign.end,
            heartbeat_tick: self.config.heartbeat_ticks,
            applied,
            max_size_per_msg: self.config.message_entries_bytes_max,
            max_inflight_msgs: self.config.messages_in_flight_max,
            max_uncommitted_size: self.config.uncommitted_bytes_max,
            max_committed_size_per_ready: self.config.committed_bytes_per_ready_max,
            check_quorum: true,
            pre_vote: true,
            read_only_option: raft::ReadOnlyOption::Safe,
            ..raft::Config::default()
        };
        let logger = self.logger.new(slog::o!("partition" => partition));
        let raw = RawNode::new(&config, log, &logger)?;
        self.incarnations += 1;
        let incarnation = self.incarnations;
        self.groups.insert(partition, Group { raw, incarnation, last_status: None, lease_until_tick: 0 });
        Ok(())
    }

    /// Starts an election in a group now (rather than after an election
    /// timeout of silence): a node does it for a group just created, so
    /// that a new table's partitions have leaders within a round trip.
    pub fn campaign(&mut self, partition: u64) -> Result<(), raft::Error> {
        match self.groups.get_mut(&partition) {
            Some(group) => group.raw.campaign(),
            None => Ok(()),
        }
    }

    /// Removes a group (its partition was dropped).
    pub fn remove_group(&mut self, partition: u64) {
        self.groups.remove(&partition);
        self.log_only.remove(&partition);
    }

    /// Whether this shard has a replica of `partition`.
    #[must_use]
    pub fn has_group(&self, partition: u64) -> bool {
        self.groups.contains_key(&partition)
    }

    /// The partitions of every group, in order.
    #[must_use]
    pub fn partitions(&self) -> Vec<u64> {
        self.groups.keys().copied().collect()
    }

    /// The voters of a group (node ids).
    #[must_use]
    pub fn voters(&self, partition: u64) -> Vec<u64> {
        self.groups.get(&partition).map_or_else(Vec::new, |g| {
            let mut voters: Vec<u64> = g.raw.raft.prs().conf().voters().ids().iter().collect();
            voters.sort_unstable();
            voters
        })
    }

    /// Whether the leader may take writes whose outcome depends on the
    /// current state (conditions, updates): only once it has applied an
    /// entry of its own term, when every earlier entry is applied too.
    pub fn writable(&self, partition: u64) -> Result<(), ProposeError> {
        let group = self.groups.get(&partition).ok_or(ProposeError::UnknownPartition(partition))?;
        let raft = &group.raw.raft;
        if raft.state != StateRole::Leader {
            return Err(ProposeError::NotLeader { partition, leader: raft.leader_id });
        }
        let applied = raft.raft_log.applied;
        if raft.raft_log.term(applied).is_ok_and(|t| t == raft.term) {
            Ok(())
        } else {
            Err(ProposeError::NotReady(partition))
        }
    }

    /// The hard state of every group, as writes without entries: logged
    /// again before WAL segments are reclaimed, so that the newest hard
    /// state of a group is never in a reclaimed segment.
    #[must_use]
    pub fn hard_states(&self) -> Vec<GroupWrite> {
        self.groups
            .iter()
            .map(|(&partition, g)| GroupWrite {
                partition,
                state: self.group_state(partition),
                entries: Vec::new(),
                hard_state: Some(g.raw.store().hard_state().clone()),
            })
            .collect()
    }

    /// Drops a group's entries up to `checkpointed` (the index its B-tree's
    /// durable checkpoint holds). A leader keeps what a follower still
    /// needs, unless that follower is more than `retain_entries_max` behind
    /// (it will need a snapshot).
    pub fn compact(&mut self, partition: u64, checkpointed: u64, retain_entries_max: u64) {
        let Some(group) = self.groups.get_mut(&partition) else { return };
        let raft = &group.raw.raft;
        let mut to = checkpointed.min(raft.raft_log.applied).min(raft.raft_log.persisted);
        if raft.state == StateRole::Leader {
            let lagging = raft.prs().iter().filter(|(id, _)| **id != self.node_id).map(|(_, pr)| pr.matched).min();
            if let Some(lagging) = lagging
                && to.saturating_sub(lagging) <= retain_entries_max
            {
                to = to.min(lagging);
            }
        }
        group.raw.mut_store().compact(to);
    }

    /// Adds a group of which this node is a log replica (it never
    /// campaigns; see [`Self::tick`]).
    pub fn add_log_group(&mut self, partition: u64, log: GroupLog, applied: u64) -> Result<(), raft::Error> {
        self.start_group(partition, log, applied, true)?;
        self.log_only.insert(partition);
        Ok(())
    }

    /// A log replica of `partition` whose B-tree now holds every applied
    /// entry becomes a full replica: its group starts again from the same
    /// log and durable state, campaigning like any other. The caller has
    /// made every submitted record durable first (the new group takes the
    /// whole log as persisted).
    pub fn become_full(&mut self, partition: u64) -> Result<(), raft::Error> {
        let Some(group) = self.groups.remove(&partition) else { return Ok(()) };
        self.log_only.remove(&partition);
        let applied = group.raw.raft.raft_log.applied;
        // The group still lists this node among its log replicas until the
        // leader's roles entry (asked for once the tree is installed) applies.
        let log = group.raw.store().clone();
        self.start_group(partition, log, applied, false)
    }

    /// Records the group's log replicas (a roles entry was applied).
    pub fn set_log_replicas(&mut self, partition: u64, log_replicas: Vec<u64>) -> Option<GroupState> {
        self.groups.get_mut(&partition)?.raw.mut_store().set_log_replicas(log_replicas);
        self.group_state(partition)
    }

    /// Whether this node keeps only the log of `partition`.
    #[must_use]
    pub fn is_log_only(&self, partition: u64) -> bool {
        self.log_only.contains(&partition)
    }

    /// The voters of a group that are log replicas.
    #[must_use]
    pub fn log_replicas(&self, partition: u64) -> Vec<u64> {
        self.groups.get(&partition).map_or_else(Vec::new, |g| g.raw.store().log_replicas().to_vec())
    }

    /// The group's state as a write (for the WAL).
    fn group_state(&self, partition: u64) -> Option<GroupState> {
        let group = self.groups.get(&partition)?;
        let log = group.raw.store();
        Some(GroupState {
            log_only: self.log_only.contains(&partition),
            restart: None,
            conf_state: log.conf_state().clone(),
            log_replicas: log.log_replicas().to_vec(),
        })
    }

    /// Proposes a configuration change (leader only), with Keel's context
    /// (the log replicas after it, see `durable::encode_log_replicas`).
    pub fn propose_conf_change(&mut self, partition: u64, cc: ConfChangeV2) -> Result<(), ProposeError> {
        let group = self.groups.get_mut(&partition).ok_or(ProposeError::UnknownPartition(partition))?;
        let raft = &group.raw.raft;
        if raft.state != StateRole::Leader {
            return Err(ProposeError::NotLeader { partition, leader: raft.leader_id });
        }
        group.raw.propose_conf_change(Vec::new(), cc).map_err(|_| ProposeError::Dropped(partition))
    }

    /// Proposes replacing voter `remove` of a group this node leads with a
    /// log replica on `add`, in one joint configuration change (the
    /// replication issue's healing; `add`'s rebuild later makes it a full
    /// replica). Checked here: the leader takes proposals of its term, no
    /// other change is under way, `remove` is a voter other than this node
    /// and `add` is not in the group.
    pub fn propose_replacement(&mut self, partition: u64, remove: u64, add: u64) -> Result<(), ReplaceError> {
        self.writable(partition)?;
        if self.conf_change_pending(partition) {
            return Err(ReplaceError::ChangePending(partition));
        }
        let voters = self.voters(partition);
        if !voters.contains(&remove) || remove == self.node_id {
            return Err(ReplaceError::NotAVoter { partition, node: remove });
        }
        if voters.contains(&add) || add == 0 {
            return Err(ReplaceError::AlreadyAVoter { partition, node: add });
        }
        let mut log_replicas = self.log_replicas(partition);
        log_replicas.retain(|&n| n != remove);
        log_replicas.push(add);
        let change = |kind, node_id| {
            let mut c = ConfChangeSingle { node_id, ..ConfChangeSingle::default() };
            c.set_change_type(kind);
            c
        };
        let mut cc = ConfChangeV2::default();
        cc.set_transition(ConfChangeTransition::Auto);
        cc.set_changes(vec![change(ConfChangeType::RemoveNode, remove), change(ConfChangeType::AddNode, add)].into());
        cc.context = super::durable::encode_log_replicas(&log_replicas).into();
        self.propose_conf_change(partition, cc)?;
        Ok(())
    }

    /// Whether a configuration change of the group is proposed and not yet
    /// applied (one at a time).
    #[must_use]
    pub fn conf_change_pending(&self, partition: u64) -> bool {
        self.groups.get(&partition).is_some_and(|g| {
            let raft = &g.raw.raft;
            raft.pending_conf_index > raft.raft_log.applied || !g.raw.store().conf_state().voters_outgoing.is_empty()
        })
    }

    /// Applies a committed configuration change entry (raft-rs's encoding,
    /// from this node's own log). Returns the group's state to log.
    pub fn apply_conf_change(&mut self, partition: u64, entry: &Entry) -> Result<GroupState, raft::Error> {
        let state = {
            let Some(group) = self.groups.get_mut(&partition) else {
                return Err(raft::Error::ConfChangeError(format!("no group {partition}")));
            };
            let cc = ConfChangeV2::parse_from_bytes(entry.get_data())
                .map_err(|e| raft::Error::ConfChangeError(format!("entry {}: {e}", entry.index)))?;
            let conf_state = group.raw.apply_conf_change(&cc)?;
            let log = group.raw.mut_store();
            log.set_conf_state(conf_state);
            if let Some(log_replicas) = super::durable::decode_log_replicas(cc.get_context()) {
                log.set_log_replicas(log_replicas);
            }
            self.group_state(partition)
        };
        state.ok_or_else(|| raft::Error::ConfChangeError(format!("no group {partition}")))
    }

    /// The peers of a group this node leads, with when each was last heard
    /// from as raft-rs tracks it (`recent_active`, reset every election
    /// timeout under check-quorum): the ones not heard from lately.
    #[must_use]
    pub fn inactive_peers(&self, partition: u64) -> Vec<u64> {
        let Some(group) = self.groups.get(&partition) else { return Vec::new() };
        let raft = &group.raw.raft;
        if raft.state != StateRole::Leader {
            return Vec::new();
        }
        let mut ids: Vec<u64> =
            raft.prs().iter().filter(|(id, pr)| **id != self.node_id && !pr.recent_active).map(|(id, _)| *id).collect();
        ids.sort_unstable();
        ids
    }

    /// Advances every group's logical clock by one tick.
    pub fn tick(&mut self) {
        self.ticks += 1;
        for group in self.groups.values_mut() {
            group.raw.tick();
        }
    }

    /// Hands a message from a peer to its group.
    pub fn step(&mut self, partition: u64, message: Message) -> Result<(), StepError> {
        if raft::raw_node::is_local_msg(message.get_msg_type()) {
            return Err(StepError::LocalType(message.get_msg_type()));
        }
        // A node that restarted has forgotten which leader it heard from
        // last, so raft-rs would grant votes at once; but before it crashed
        // it may have renewed that leader's lease. It stays out of elections
        // for one election timeout, so that no new leader is chosen while
        // such a lease may still run.
        let vote = matches!(message.get_msg_type(), MessageType::MsgRequestVote | MessageType::MsgRequestPreVote);
        if vote && self.ticks < self.config.election_ticks as u64 {
            return Ok(());
        }
        let group = self.groups.get_mut(&partition).ok_or(StepError::UnknownPartition(partition))?;
        if message.get_msg_type() == MessageType::MsgSnapshot && !self.log_only.contains(&partition) {
            return Err(StepError::SnapshotForFullReplica(partition));
        }
        group.raw.step(message).map_err(|e| StepError::Refused { partition, reason: e.to_string() })
    }

    /// Proposes an entry; only the leader accepts.
    pub fn propose(&mut self, partition: u64, data: Vec<u8>) -> Result<Proposal, ProposeError> {
        let group = self.groups.get_mut(&partition).ok_or(ProposeError::UnknownPartition(partition))?;
        let raft = &group.raw.raft;
        if raft.state != StateRole::Leader {
            return Err(ProposeError::NotLeader { partition, leader: raft.leader_id });
        }
        let term = raft.term;
        group.raw.propose(Vec::new(), data).map_err(|_| ProposeError::Dropped(partition))?;
        let index = group.raw.raft.raft_log.last_index();
        Ok(Proposal { term, index })
    }

    /// Starts a linearizable read on the leader. Under a valid lease (and
    /// once the leader has committed an entry of its term, so that it knows
    /// every committed entry) it is served at the commit index at once;
    /// otherwise the leader confirms its leadership with a quorum, which
    /// also renews the lease, and the answer comes in a later
    /// [`ReadyBatch::reads`] with the same `context`.
    pub fn read_index(&mut self, partition: u64, context: Vec<u8>) -> Result<ReadPath, ProposeError> {
        let group = self.groups.get_mut(&partition).ok_or(ProposeError::UnknownPartition(partition))?;
        let raft = &group.raw.raft;
        if raft.state != StateRole::Leader {
            return Err(ProposeError::NotLeader { partition, leader: raft.leader_id });
        }
        let committed = raft.raft_log.committed;
        let own_term_committed = raft.raft_log.term(committed).is_ok_and(|t| t == raft.term);
        if self.config.lease_reads && own_term_committed && self.ticks < group.lease_until_tick {
            return Ok(ReadPath::Lease { index: committed });
        }
        let mut ctx = Vec::with_capacity(READ_CONTEXT_PREFIX_BYTES + context.len());
        ctx.extend_from_slice(&self.ticks.to_le_bytes());
        ctx.extend_from_slice(&raft.term.to_le_bytes());
        ctx.extend_from_slice(&context);
        group.raw.read_index(ctx);
        Ok(ReadPath::Quorum)
    }

    /// Whether any group has something for [`ShardRaft::ready`].
    #[must_use]
    pub fn has_ready(&self) -> bool {
        self.groups.values().any(|g| g.raw.has_ready())
    }

    /// Collects what every group has ready. The entries to persist are
    /// already readable through each group's log (raft-rs requires it).
    pub fn ready(&mut self) -> ReadyBatch {
        let mut batch = ReadyBatch {
            send: Vec::new(),
            committed: Vec::new(),
            writes: Vec::new(),
            reads: Vec::new(),
            changes: Vec::new(),
            token: PersistToken { numbers: Vec::new(), after: Vec::new() },
        };
        for (&partition, group) in &mut self.groups {
            if !group.raw.has_ready() {
                continue;
            }
            let mut ready = group.raw.ready();
            let outgoing = |mut message: Message| {
                super::envelope::prepare_outgoing(&mut message);
                Outgoing { partition, message }
            };
            let send = ready.take_messages();
            for m in &send {
                // A log replica's snapshot is its metadata alone: it is
                // complete as soon as it is sent.
                if m.get_msg_type() == MessageType::MsgSnapshot {
                    group.raw.report_snapshot(m.to, SnapshotStatus::Finish);
                }
            }
            batch.send.extend(send.into_iter().map(outgoing));
            let mut state = None;
            if !ready.snapshot().is_empty() {
                // Only log replicas receive snapshots (metadata alone): the
                // log restarts after it, in the configuration it carries.
                let meta = ready.snapshot().get_metadata().clone();
                let log = group.raw.mut_store();
                log.restart_after(meta.index, meta.term);
                log.set_conf_state(meta.get_conf_state().clone());
                // The leader sends snapshots to its log replicas alone
                // (`GroupLog::snapshot`), so this node is one. The metadata
                // does not carry the list, and the entry that made this node
                // one may be compacted away: without this, the node never
                // knew it was a log replica and was never rebuilt.
                if !log.log_replicas().contains(&self.node_id) {
                    let mut log_replicas = log.log_replicas().to_vec();
                    log_replicas.push(self.node_id);
                    log.set_log_replicas(log_replicas);
                }
                state = Some(GroupState {
                    log_only: self.log_only.contains(&partition),
                    restart: Some((meta.index, meta.term)),
                    conf_state: meta.get_conf_state().clone(),
                    log_replicas: log.log_replicas().to_vec(),
                });
            }
            let committed = ready.take_committed_entries();
            if !committed.is_empty() {
                batch.committed.push(Committed { partition, entries: committed });
            }
            let entries = ready.take_entries();
            let hard_state = ready.hs().cloned();
            group.raw.mut_store().append(&entries);
            if let Some(hs) = &hard_state {
                group.raw.mut_store().set_hard_state(hs.clone());
            }
            if hard_state.is_some() || !entries.is_empty() || state.is_some() {
                batch.writes.push(GroupWrite { partition, state, entries, hard_state });
            }
            for read in ready.take_read_states() {
                let (asked, rest) = read.request_ctx.split_at_checked(READ_CONTEXT_PREFIX_BYTES).unwrap_or_default();
                let word = |at: usize| asked.get(at..at + 8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes);
                let (Some(tick), Some(term)) = (word(0), word(8)) else { continue };
                // A quorum acknowledged this leader after `tick`: none of
                // them votes for another before a full election timeout of
                // its own clock has passed since.
                let raft = &group.raw.raft;
                if raft.state == StateRole::Leader && raft.term == term {
                    let lease = (self.config.election_ticks - self.config.lease_margin_ticks) as u64;
                    group.lease_until_tick = group.lease_until_tick.max(tick + lease);
                }
                batch.reads.push((partition, ReadReady { index: read.index, context: rest.to_vec() }));
            }
            batch.token.after.extend(ready.take_persisted_messages().into_iter().map(outgoing));
            batch.token.numbers.push((partition, group.incarnation, ready.number()));
            group.raw.advance_append_async(ready);
            let status = status_of(&group.raw);
            let key = (status.role, status.leader, status.term);
            if status.role != Role::Leader || group.last_status.is_some_and(|(_, _, term)| term != status.term) {
                group.lease_until_tick = 0;
            }
            if group.last_status != Some(key) {
                group.last_status = Some(key);
                batch.changes.push((partition, status));
            }
        }
        batch
    }

    /// Step 3 of the module docs: the batch's writes are durable. Returns
    /// the messages that had to wait for them.
    pub fn persisted(&mut self, token: PersistToken) -> Vec<Outgoing> {
        for (partition, incarnation, number) in token.numbers {
            // A group removed (or started again) meanwhile has nothing left
            // to acknowledge for that ready.
            if let Some(group) = self.groups.get_mut(&partition).filter(|g| g.incarnation == incarnation) {
                group.raw.on_persist_ready(number);
            }
        }
        token.after
    }

    /// Step 4: the group's state machine has applied entries up to `index`.
    pub fn applied(&mut self, partition: u64, index: u64) {
        if let Some(group) = self.groups.get_mut(&partition) {
            group.raw.advance_apply_to(index);
            group.raw.mut_store().set_applied(index);
        }
    }

    /// The group's leadership and progress.
    #[must_use]
    pub fn status(&self, partition: u64) -> Option<GroupStatus> {
        self.groups.get(&partition).map(|g| status_of(&g.raw))
    }

    /// The group's log.
    #[must_use]
    pub fn log(&self, partition: u64) -> Option<&GroupLog> {
        self.groups.get(&partition).map(|g| g.raw.store())
    }

    /// This node's id.
    #[must_use]
    pub fn node_id(&self) -> u64 {
        self.node_id
    }
}

fn status_of(raw: &RawNode<GroupLog>) -> GroupStatus {
    let raft = &raw.raft;
    GroupStatus {
        role: raft.state.into(),
        leader: raft.leader_id,
        term: raft.term,
        commit: raft.raft_log.committed,
        applied: raft.raft_log.applied,
        last_index: raft.raft_log.last_index(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drives a one-voter group until it leads and has committed its entry.
    fn single_leader() -> ShardRaft {
        let mut shard = ShardRaft::new(1, ReplConfig::default());
        shard.add_group(7, GroupLog::new(&[1]), 0).expect("group");
        for _ in 0..40 {
            shard.tick();
            settle(&mut shard);
        }
        assert_eq!(shard.status(7).map(|s| s.role), Some(Role::Leader));
        shard
    }

    /// Handles every ready as if each write were durable at once.
    fn settle(shard: &mut ShardRaft) -> Vec<(u64, ReadReady)> {
        let mut reads = Vec::new();
        while shard.has_ready() {
            let batch = shard.ready();
            for committed in &batch.committed {
                if let Some(last) = committed.entries.last() {
                    shard.applied(committed.partition, last.index);
                }
            }
            reads.extend(batch.reads);
            let _ = shard.persisted(batch.token);
        }
        reads
    }

    #[test]
    fn a_quorum_confirmed_read_grants_a_lease_that_expires() {
        let mut shard = single_leader();
        assert_eq!(shard.read_index(7, b"a".to_vec()), Ok(ReadPath::Quorum));
        let reads = settle(&mut shard);
        assert_eq!(reads.iter().map(|(p, r)| (*p, r.context.clone())).collect::<Vec<_>>(), vec![(7, b"a".to_vec())]);
        let commit = shard.status(7).map(|s| s.commit).unwrap_or_default();
        assert_eq!(shard.read_index(7, b"b".to_vec()), Ok(ReadPath::Lease { index: commit }));
        let config = ReplConfig::default();
        for _ in 0..config.election_ticks - config.lease_margin_ticks {
            shard.tick();
            settle(&mut shard);
        }
        assert_eq!(shard.read_index(7, b"c".to_vec()), Ok(ReadPath::Quorum), "the lease has run out");
    }

    /// Delivers every message among `shards` (writes durable at once),
    /// applying committed entries, until nothing moves; messages to nodes
    /// not in `shards` are lost.
    fn pump(shards: &mut [ShardRaft]) {
        for _ in 0..100 {
            let mut mail = Vec::new();
            for shard in shards.iter_mut() {
                while shard.has_ready() {
                    let batch = shard.ready();
                    mail.extend(batch.send);
                    for committed in &batch.committed {
                        for entry in &committed.entries {
                            if entry.get_entry_type() == raft::eraftpb::EntryType::EntryConfChangeV2 {
                                shard.apply_conf_change(committed.partition, entry).expect("conf change applies");
                            }
                        }
                        if let Some(last) = committed.entries.last() {
                            shard.applied(committed.partition, last.index);
                        }
                    }
                    mail.extend(shard.persisted(batch.token));
                }
            }
            if mail.is_empty() {
                return;
            }
            for out in mail {
                // Through the wire encoding, as between nodes.
                let out =
                    super::super::envelope::from_wire(&super::super::envelope::to_wire(&out)).expect("round trip");
                if let Some(to) = shards.iter_mut().find(|s| s.node_id() == out.message.to) {
                    let _ = to.step(out.partition, out.message);
                }
            }
        }
    }

    #[test]
    fn a_leader_replaces_a_voter_with_a_log_replica_and_refuses_what_does_not_fit() {
        let mut shards: Vec<ShardRaft> = (1..=3).map(|id| ShardRaft::new(id, ReplConfig::default())).collect();
        for shard in &mut shards {
            shard.add_group(7, GroupLog::new(&[1, 2, 3]), 0).expect("group");
        }
        assert!(matches!(
            shards.first_mut().expect("node 1").propose_replacement(7, 3, 4),
            Err(ReplaceError::Propose(ProposeError::NotLeader { .. }))
        ));
        // New groups refuse votes for an election timeout: tick until one leads.
        for _ in 0..200 {
            if shards.iter().any(|s| s.writable(7).is_ok()) {
                break;
            }
            shards.iter_mut().for_each(ShardRaft::tick);
            pump(&mut shards);
        }
        let at = shards.iter().position(|s| s.writable(7).is_ok()).expect("a leader within 200 ticks");
        let me = shards.get(at).map(ShardRaft::node_id).expect("leader");
        let (a, b) = match me {
            1 => (2, 3),
            2 => (1, 3),
            _ => (1, 2),
        };
        let leader = shards.get_mut(at).expect("leader");
        assert_eq!(leader.propose_replacement(7, me, 4), Err(ReplaceError::NotAVoter { partition: 7, node: me }));
        assert_eq!(leader.propose_replacement(7, 5, 4), Err(ReplaceError::NotAVoter { partition: 7, node: 5 }));
        assert_eq!(leader.propose_replacement(7, a, b), Err(ReplaceError::AlreadyAVoter { partition: 7, node: b }));
        assert_eq!(leader.propose_replacement(7, a, 4), Ok(()));
        assert_eq!(leader.propose_replacement(7, b, 5), Err(ReplaceError::ChangePending(7)), "one change at a time");
        // Node `a` is gone (its messages are lost); the other two make a
        // quorum of both the old and the new configuration.
        let gone = shards.remove(shards.iter().position(|s| s.node_id() == a).expect("node a"));
        // (The automatic leave-joint entry goes out with a heartbeat.)
        for _ in 0..10 {
            shards.iter_mut().for_each(ShardRaft::tick);
            pump(&mut shards);
        }
        let leader = shards.iter().find(|s| s.node_id() == me).expect("leader");
        let mut want = vec![me, b, 4];
        want.sort_unstable();
        assert_eq!(leader.voters(7), want);
        assert_eq!(leader.log_replicas(7), vec![4]);
        assert!(!leader.conf_change_pending(7), "the joint configuration was left");
        assert_eq!(gone.voters(7), vec![1, 2, 3], "the removed node never heard of it");
        assert!(shards.iter().all(|s| s.voters(7) == want), "the remaining voters applied it");
    }

    #[test]
    fn a_follower_refuses_reads_and_proposals_with_a_hint() {
        let mut shard = ShardRaft::new(2, ReplConfig::default());
        shard.add_group(7, GroupLog::new(&[1, 2, 3]), 0).expect("group");
        assert_eq!(shard.read_index(7, Vec::new()), Err(ProposeError::NotLeader { partition: 7, leader: 0 }));
        assert_eq!(shard.propose(7, b"x".to_vec()), Err(ProposeError::NotLeader { partition: 7, leader: 0 }));
        assert_eq!(shard.propose(8, b"x".to_vec()), Err(ProposeError::UnknownPartition(8)));
    }
}

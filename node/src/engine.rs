//! The request engine of one shard: a durable table catalog and DynamoDB's
//! item operations over one [`ShardStore`]. The daemon converts protocol
//! requests into these calls at the edge (`handler`).
//!
//! - A node runs one engine per shard. Each keeps a copy of the catalog in its
//!   own partition 0; shard 0's copy is the authority (it allocates table
//!   ids), and the others adopt its changes ([`Engine::adopt_table`],
//!   [`Engine::reconcile`]). A [`Placement`] says which partitions of each
//!   table this shard hosts.
//! - Writes in *deferred* mode ([`Engine::set_deferred`], what the daemon
//!   uses) are logged but not waited for: the caller takes the [`Commit`],
//!   releases the engine, waits for the WAL, and finishes it with
//!   [`Engine::finish`]. Many requests thus share one WAL write (group
//!   commit). Until applied, a logged write sits in an overlay that later
//!   conditions and reads see; a read that sees one waits for it to be
//!   durable before answering, so nobody is ever told of a write that a crash
//!   could still lose.
//! - With [`Engine::set_fetch_elsewhere`] (the daemon, again), a read of the
//!   tree (GetItem, the item a write reads first, a Query's or Scan's
//!   range) by a request that has logged nothing yet does not read a
//!   missing page from disk while the caller holds the engine: it fails, and
//!   [`Engine::take_page_fetch`] hands the page to the caller, which reads
//!   it without the engine, caches it ([`Engine::cache_fetched`]) and runs
//!   the request again. A write after such a miss fails too, so a request
//!   that is run again has logged nothing. Applying logged writes (a range
//!   read settling its partition first) always reads under the engine.
//!
//! - Tables are split into `partitions` hash ranges; partition ids are
//!   `table_id << 32 | index` and never reused (table ids only grow).
//! - The catalog lives in partition 0 of the store, as JSON records under
//!   `table/<name>`, plus the next table id.
//! - Items are stored as the verified `Item` FlatBuffer bytes received from
//!   the client, under the order-preserving key `hash(pk) ‖ pk ‖ sk`; reads
//!   answer with those bytes.
//!
//! # Replicated mode
//!
//! In a cluster ([`Engine::enable_replication`]) every table partition, and
//! shard 0's catalog partition, is a Raft group whose replicas live on the
//! nodes the membership names. A write is evaluated on the leader against
//! the applied state plus the overlay of its own proposed, uncommitted
//! writes (so conditions and updates serialize), and proposed as an entry
//! whose data is the mutation; the [`Commit`] carries the proposals, which
//! the shell waits for: a write succeeded if the entry applied at its index
//! has its term. Committed entries reach the trees through
//! [`Engine::apply_committed`] on every replica. Reads never look at the
//! overlay there: what a client was told is applied, so the applied state is
//! a linearizable read once the shell has waited for the group's read index
//! (strongly consistent reads) — proposals in flight are writes that have not
//! happened yet. A leader takes writes only once it has applied an entry of
//! its own term (every earlier write's outcome is known then); its overlay is
//! dropped whenever the group's leadership changes. The catalog is the data
//! of partition 0's group: CreateTable and DeleteTable are proposals there,
//! and applying them reloads the catalog and creates or drops the hosted
//! partitions on every node.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::rc::Rc;

use rustc_hash::FxHashMap;

use keel_wire::expr::{self, Condition, KeyCondition, SortKeyCondition, Update};
use keel_wire::item::{self, AttributeValue, Item, ItemError};
use keel_wire::key;
use serde_json::json;

use raft::eraftpb::{Entry, EntryType};

use crate::btree::{Direction, FetchedPages, PageFetch};
use crate::io::Disk;
use crate::repl::membership::Cluster;
use crate::repl::{GroupLog, GroupState, GroupWrite, Proposal, ProposeError, ShardRaft, durable};
use crate::replica::{ENTRY_KIND_ROLES, Mutation, ShardStore, StoreReadError, StoreWriteError, Ticket};
use crate::wal::{Lsn, Wal};

/// The partition holding the catalog.
pub const CATALOG_PARTITION: u64 = 0;
pub use keel_wire::protocol::PARTITIONS_DEFAULT;
/// Most partitions per table.
pub const PARTITIONS_MAX: u32 = 1024;
// A placement on the wire can name every partition of a table.
const _: () = assert!(PARTITIONS_MAX as usize <= keel_wire::protocol::PLACEMENT_PARTITIONS_MAX);
/// A Query or Scan page stops after this many bytes of items (DynamoDB: 1 MB).
pub const PAGE_BYTES_MAX: usize = 1024 * 1024;
/// Tables listed per page at most.
pub const LIST_TABLES_MAX: usize = 100;

const TABLE_KEY_PREFIX: &[u8] = b"table/";
const NEXT_TABLE_ID_KEY: &[u8] = b"next-table-id";
/// Items read from a partition per store scan call.
const SCAN_BATCH: usize = 256;

/// Types a key attribute can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    /// String.
    S,
    /// Number.
    N,
    /// Binary.
    B,
}

impl KeyType {
    fn as_str(self) -> &'static str {
        match self {
            Self::S => "S",
            Self::N => "N",
            Self::B => "B",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "S" => Some(Self::S),
            "N" => Some(Self::N),
            "B" => Some(Self::B),
            _ => None,
        }
    }

    fn matches(self, value: &AttributeValue) -> bool {
        matches!(
            (self, value),
            (Self::S, AttributeValue::S(_)) | (Self::N, AttributeValue::N(_)) | (Self::B, AttributeValue::B(_))
        )
    }
}

/// A key attribute of a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyDef {
    /// Attribute name.
    pub name: String,
    /// Its type.
    pub key_type: KeyType,
}

/// A table in the catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableDef {
    /// Never reused.
    pub id: u32,
    /// Name.
    pub name: String,
    /// Partition key.
    pub partition_key: KeyDef,
    /// Sort key, if any.
    pub sort_key: Option<KeyDef>,
    /// Number of hash-range partitions.
    pub partitions: u32,
    /// Creation time (milliseconds since the epoch).
    pub created_at_ms: u64,
    /// Each partition's replicas (node ids), by partition index, as the
    /// control plane chose them; empty: the membership's rotation
    /// (`Cluster::replicas`).
    pub placement: Vec<Vec<u64>>,
}

impl TableDef {
    fn to_json(&self) -> serde_json::Value {
        let key = |k: &KeyDef| json!({"name": k.name, "type": k.key_type.as_str()});
        json!({
            "id": self.id,
            "name": self.name,
            "partition_key": key(&self.partition_key),
            "sort_key": self.sort_key.as_ref().map(key),
            "partitions": self.partitions,
            "created_at_ms": self.created_at_ms,
            "placement": (!self.placement.is_empty()).then_some(&self.placement),
        })
    }

    fn from_json(value: &serde_json::Value) -> Option<Self> {
        let key = |v: &serde_json::Value| {
            Some(KeyDef {
                name: v.get("name")?.as_str()?.to_owned(),
                key_type: KeyType::parse(v.get("type")?.as_str()?)?,
            })
        };
        Some(Self {
            id: u32::try_from(value.get("id")?.as_u64()?).ok()?,
            name: value.get("name")?.as_str()?.to_owned(),
            partition_key: key(value.get("partition_key")?)?,
            sort_key: match value.get("sort_key") {
                Some(serde_json::Value::Null) | None => None,
                Some(v) => Some(key(v)?),
            },
            partitions: u32::try_from(value.get("partitions")?.as_u64()?).ok()?,
            created_at_ms: value.get("created_at_ms")?.as_u64()?,
            placement: match value.get("placement") {
                Some(serde_json::Value::Null) | None => Vec::new(),
                Some(v) => v
                    .as_array()?
                    .iter()
                    .map(|nodes| nodes.as_array()?.iter().map(serde_json::Value::as_u64).collect::<Option<Vec<u64>>>())
                    .collect::<Option<Vec<Vec<u64>>>>()?,
            },
        })
    }

    /// The store partition holding keys with this hash.
    #[must_use]
    pub fn partition_for(&self, hash: u64) -> u64 {
        let index = (u128::from(hash) * u128::from(self.partitions)) >> 64;
        (u64::from(self.id) << 32) | u64::try_from(index).unwrap_or(0)
    }

    /// Every partition id of the table, in hash order.
    pub fn partition_ids(&self) -> impl Iterator<Item = u64> + '_ {
        (0..self.partitions).map(|i| (u64::from(self.id) << 32) | u64::from(i))
    }
}

/// Which shard of a node hosts each partition: partition `index` of table
/// `id` lives on shard `(id + index) % shards`, so that tables with few
/// partitions still spread over the shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    /// This shard.
    pub shard: u32,
    /// Shards of the node.
    pub shards: u32,
}

impl Placement {
    /// One shard hosting everything.
    pub const SINGLE: Self = Self { shard: 0, shards: 1 };

    /// The shard hosting `partition`.
    #[must_use]
    pub fn shard_of(self, partition: u64) -> u32 {
        let (table, index) = (partition >> 32, partition & 0xffff_ffff);
        u32::try_from((table + index) % u64::from(self.shards.max(1))).unwrap_or(0)
    }

    /// Whether this shard hosts `partition`.
    #[must_use]
    pub fn hosts(self, partition: u64) -> bool {
        self.shard_of(partition) == self.shard
    }
}

/// What an update does after reading the stored item.
enum Updating {
    /// The item's new bytes, rewritten in place.
    Written(Vec<u8>),
    /// The update applies to this item (the stored one decoded, or the key
    /// alone for a new item), which is then encoded.
    Apply(Item),
}

/// Writes logged in deferred mode, and the WAL position a read that saw one
/// of them must wait for. See the module docs.
#[derive(Debug, Default)]
#[must_use = "a commit must be waited for and finished"]
pub struct Commit {
    tickets: Vec<Ticket>,
    wait_lsn: Option<Lsn>,
    /// Replicated writes: (partition, where the entry was placed).
    proposals: Vec<(u64, Proposal)>,
}

impl Commit {
    /// The replicated writes to wait for: each succeeded once the entry
    /// applied at its index has its term.
    #[must_use]
    pub fn proposals(&self) -> &[(u64, Proposal)] {
        &self.proposals
    }

    /// The WAL position to wait for before [`Engine::finish`], if any.
    #[must_use]
    pub fn wait_lsn(&self) -> Option<Lsn> {
        self.tickets.iter().map(|t| t.lsn).chain(self.wait_lsn).max()
    }

    /// Whether there is nothing to wait for.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.wait_lsn().is_none() && self.proposals.is_empty()
    }

    /// Whether it logged or proposed a write (a read of a logged write
    /// only waits for it).
    #[must_use]
    pub fn has_writes(&self) -> bool {
        !self.tickets.is_empty() || !self.proposals.is_empty()
    }
}

/// A logged (or proposed), not yet applied write (None: a delete).
#[derive(Debug)]
struct Pending {
    index: u64,
    /// Where a standalone write was logged (None: a replicated proposal).
    lsn: Option<Lsn>,
    value: Option<Vec<u8>>,
}

/// What applying committed entries did beyond the trees.
#[derive(Debug, Default)]
#[must_use]
pub struct Applied {
    /// The catalog changed (the shell reconciles the other shards).
    pub catalog_changed: bool,
    /// Group states changed by configuration changes: the shell makes them
    /// durable before anything checkpoints past them.
    pub states: Vec<GroupWrite>,
}

/// How the engine's partitions are replicated: this shard's Raft groups,
/// and the membership that says which nodes hold each partition.
#[derive(Debug)]
pub struct Replication {
    raft: ShardRaft,
    cluster: Cluster,
    /// Client endpoints of the nodes, by node id, for leader hints.
    endpoints: BTreeMap<u64, String>,
    /// Where this node (entry port) and this shard (own port) serve
    /// clients, once bound (cluster status tells routers).
    listening: (String, String),
    /// The initial replicas of partitions whose table was placed by the
    /// control plane ([`TableDef::placement`]); others rotate.
    placed: BTreeMap<u64, Vec<u64>>,
}

impl Replication {
    /// Replication for a node whose groups `raft` drives (its node id is
    /// the member's Raft id in `cluster`).
    #[must_use]
    pub fn new(raft: ShardRaft, cluster: Cluster) -> Self {
        Self {
            raft,
            cluster,
            endpoints: BTreeMap::new(),
            listening: (String::new(), String::new()),
            placed: BTreeMap::new(),
        }
    }

    /// Where this node's entry port and this shard's own port listen.
    pub fn set_listening(&mut self, entry: String, shard: String) {
        self.listening = (entry, shard);
    }

    /// The node's entry endpoint and this shard's own endpoint (empty
    /// before they are bound).
    #[must_use]
    pub fn listening(&self) -> (&str, &str) {
        (&self.listening.0, &self.listening.1)
    }

    /// Where clients reach node `node` (learnt from its messages).
    pub fn set_endpoint(&mut self, node: u64, endpoint: String) {
        self.endpoints.insert(node, endpoint);
    }

    /// Where clients reach node `node`, if known.
    #[must_use]
    pub fn endpoint(&self, node: u64) -> Option<&str> {
        self.endpoints.get(&node).map(String::as_str)
    }

    /// The voters and learners of a partition's group. The catalog has
    /// every other member as a learner, so that every node knows every
    /// table (its partitions may be placed anywhere).
    fn members(&self, partition: u64) -> (Vec<u64>, Vec<u64>) {
        let voters = self.placed.get(&partition).cloned().unwrap_or_else(|| self.cluster.replicas(partition));
        let learners = if partition == CATALOG_PARTITION {
            self.cluster.members().iter().map(|m| m.id).filter(|id| !voters.contains(id)).collect()
        } else {
            Vec::new()
        };
        (voters, learners)
    }

    /// Records where a table's partitions were placed (before any of them
    /// is created: every node derives the same groups from the catalog).
    fn note_placement(&mut self, def: &TableDef) {
        for (partition, nodes) in def.partition_ids().zip(&def.placement) {
            self.placed.insert(partition, nodes.clone());
        }
    }

    /// Forgets a dropped table's placement.
    fn forget_placement(&mut self, def: &TableDef) {
        for partition in def.partition_ids() {
            self.placed.remove(&partition);
        }
    }

    /// Checks a placement asked for in a CreateTable: one list per
    /// partition, each of [`REPLICAS_PER_PARTITION`] distinct members in
    /// distinct zones.
    fn check_placement(&self, partitions: u32, placement: &[Vec<u64>]) -> Result<(), EngineError> {
        use crate::repl::membership::REPLICAS_PER_PARTITION;
        let bad = |why: String| Err(EngineError::Validation(format!("placement: {why}")));
        if placement.len() != usize::try_from(partitions).unwrap_or(usize::MAX) {
            return bad(format!("{} lists for {partitions} partitions", placement.len()));
        }
        for nodes in placement {
            let zones: Option<Vec<&str>> = nodes
                .iter()
                .map(|id| self.cluster.members().iter().find(|m| m.id == *id).map(|m| m.az.as_str()))
                .collect();
            let Some(mut zones) = zones else { return bad(format!("{nodes:?} names a node that is not a member")) };
            zones.sort_unstable();
            zones.dedup();
            if nodes.len() != REPLICAS_PER_PARTITION || zones.len() != REPLICAS_PER_PARTITION {
                return bad(format!("{nodes:?} is not {REPLICAS_PER_PARTITION} nodes in distinct zones"));
            }
        }
        Ok(())
    }

    /// Whether this node holds a replica of `partition`.
    fn holds(&self, partition: u64) -> bool {
        let (voters, learners) = self.members(partition);
        let me = self.raft.node_id();
        voters.contains(&me) || learners.contains(&me)
    }
}

/// Errors with DynamoDB's meaning; the daemon maps them to protocol codes.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The request is invalid.
    #[error("{0}")]
    Validation(String),
    /// No such table.
    #[error("{0}")]
    ResourceNotFound(String),
    /// The table exists.
    #[error("{0}")]
    ResourceInUse(String),
    /// A condition expression evaluated to false.
    #[error("The conditional request failed")]
    ConditionalCheckFailed,
    /// The item is above 400 KB.
    #[error("Item size has exceeded the maximum allowed size ({0} bytes)")]
    ItemTooLarge(usize),
    /// Storage failed or holds something unreadable.
    #[error("internal error: {0}")]
    Internal(String),
    /// This replica does not lead the partition; `leader` is the node it
    /// believes does (0: none known).
    #[error("this node does not lead partition {partition:#x} (leader: node {leader})")]
    NotLeader {
        /// The partition.
        partition: u64,
        /// The leader's node id, 0 when unknown.
        leader: u64,
        /// The leader's client endpoint, when known.
        hint: Option<String>,
    },
    /// Not done now (a new leader catching up, a full proposal queue);
    /// nothing was written, retry.
    #[error("{0}")]
    Unavailable(String),
}

impl From<ProposeError> for EngineError {
    fn from(e: ProposeError) -> Self {
        match e {
            ProposeError::NotLeader { partition, leader } => Self::NotLeader { partition, leader, hint: None },
            // With more nodes than zones a node holds only some partitions
            // (and healing moves replicas): the asker tries another node.
            ProposeError::UnknownPartition(partition) => Self::NotLeader { partition, leader: 0, hint: None },
            other @ (ProposeError::Dropped(_) | ProposeError::NotReady(_)) => Self::Unavailable(other.to_string()),
        }
    }
}

impl From<StoreWriteError> for EngineError {
    fn from(e: StoreWriteError) -> Self {
        Self::Internal(e.to_string())
    }
}

impl From<StoreReadError> for EngineError {
    fn from(e: StoreReadError) -> Self {
        Self::Internal(e.to_string())
    }
}

impl From<ItemError> for EngineError {
    fn from(e: ItemError) -> Self {
        match e {
            ItemError::TooLarge { size } => Self::ItemTooLarge(size),
            other => Self::Validation(other.to_string()),
        }
    }
}

impl From<expr::ExprError> for EngineError {
    fn from(e: expr::ExprError) -> Self {
        Self::Validation(e.to_string())
    }
}

impl From<key::KeyError> for EngineError {
    fn from(e: key::KeyError) -> Self {
        Self::Validation(e.to_string())
    }
}

/// One page of a Query or Scan.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Page {
    /// Stored item bytes, in order, after the filter.
    pub items: Vec<Vec<u8>>,
    /// Items read before the filter.
    pub scanned_count: usize,
    /// Bytes of `items` (as read, before any projection).
    pub bytes: usize,
    /// Where the next page starts, when this one stopped early.
    pub last_evaluated_key: Option<Item>,
}

/// See the module docs.
#[derive(Debug)]
pub struct Engine<D: Disk> {
    store: ShardStore<D>,
    placement: Placement,
    /// Shared with the requests that use one (an update keeps its table's
    /// definition while it reads and writes the engine).
    tables: BTreeMap<String, Rc<TableDef>>,
    next_table_id: u32,
    deferred_mode: bool,
    /// When set, a range read that would wait for the WAL under the engine
    /// fails instead and records the position in `settle_after` (see
    /// [`Engine::set_settle_elsewhere`]).
    settle_elsewhere: bool,
    settle_after: Option<Lsn>,
    /// See [`Engine::set_fetch_elsewhere`].
    fetch_elsewhere: bool,
    default_partitions: u32,
    /// Logged, not yet applied writes by partition, then storage key (looked
    /// up by a borrowed key). A partition's map stays when it empties (its
    /// capacity serves the next commit's writes) and goes with its leader
    /// or its replica.
    overlay: FxHashMap<u64, FxHashMap<Vec<u8>, Pending>>,
    deferred: Commit,
    repl: Option<Replication>,
}

/// The catalog as partition 0 holds it: tables by name, and the next id.
async fn read_catalog<D: Disk>(store: &ShardStore<D>) -> Result<(BTreeMap<String, Rc<TableDef>>, u32), EngineError> {
    let mut tables = BTreeMap::new();
    let end = key::prefix_successor(TABLE_KEY_PREFIX).unwrap_or_default();
    let records = store
        .scan(
            CATALOG_PARTITION,
            Bound::Included(TABLE_KEY_PREFIX),
            Bound::Excluded(&end),
            Direction::Forward,
            usize::MAX,
        )
        .await?;
    for (key, value) in records {
        let def = serde_json::from_slice(&value)
            .ok()
            .and_then(|v| TableDef::from_json(&v))
            .ok_or_else(|| EngineError::Internal(format!("unreadable catalog record {key:?}")))?;
        tables.insert(def.name.clone(), Rc::new(def));
    }
    let next_table_id = match store.get(CATALOG_PARTITION, NEXT_TABLE_ID_KEY).await? {
        Some(bytes) => u32::from_le_bytes(
            bytes.as_slice().try_into().map_err(|_| EngineError::Internal("unreadable next table id".into()))?,
        ),
        None => 1,
    };
    Ok((tables, next_table_id))
}

fn validate_table_name(name: &str) -> Result<(), EngineError> {
    let ok = (3..=255).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(EngineError::Validation(format!(
            "invalid table name {name:?}: 3 to 255 characters of a-z, A-Z, 0-9, '_', '-' and '.'"
        )))
    }
}

impl<D: Disk> Engine<D> {
    /// Opens the engine of a node's only shard.
    pub async fn open(store: ShardStore<D>) -> Result<Self, EngineError> {
        Self::open_placed(store, Placement::SINGLE).await
    }

    /// Opens the engine over a store, loading (or creating) the catalog.
    pub async fn open_placed(mut store: ShardStore<D>, placement: Placement) -> Result<Self, EngineError> {
        if !store.partitions().contains(&CATALOG_PARTITION) {
            store.create_partition(CATALOG_PARTITION).await?;
        }
        let (tables, next_table_id) = read_catalog(&store).await?;
        Ok(Self {
            store,
            placement,
            tables,
            next_table_id,
            deferred_mode: false,
            settle_elsewhere: false,
            settle_after: None,
            fetch_elsewhere: false,
            default_partitions: PARTITIONS_DEFAULT,
            overlay: FxHashMap::default(),
            deferred: Commit::default(),
            repl: None,
        })
    }

    /// Switches to replicated mode (see the module docs): every hosted
    /// partition that is replicated gets its Raft group, its log rebuilt
    /// from the records the store recovered, after its B-tree checkpoint.
    /// The shell then drives the groups; committed entries not yet in the
    /// trees come out of the first readies.
    pub fn enable_replication(&mut self, mut repl: Replication) -> Result<(), EngineError> {
        for def in self.tables.values() {
            repl.note_placement(def);
        }
        let records = self.store.take_raft_records();
        let mut logs = BTreeMap::new();
        for partition in self.store.partitions() {
            if !self.replicated_with(&repl, partition) {
                continue;
            }
            let at = self.store.checkpointed(partition).unwrap_or_default();
            let (voters, learners) = repl.members(partition);
            logs.insert(partition, (GroupLog::with_learners(&voters, &learners, at.index, at.term), at.index));
        }
        // Groups this node keeps only the log of: no B-tree file, and their
        // newest group state says so.
        let present = self.store.partitions();
        let log_only: Vec<u64> = durable::log_only_groups(&records)
            .into_keys()
            .filter(|p| !present.contains(p) && self.placement.hosts(*p))
            .collect();
        for &partition in &log_only {
            let (voters, learners) = repl.members(partition);
            logs.insert(partition, (GroupLog::with_learners(&voters, &learners, 0, 0), 0));
            let first = records.iter().filter(|r| r.meta.partition == partition).map(|r| r.lsn).min();
            if let Some(lsn) = first {
                self.store.keep_log_from(partition, lsn);
            }
        }
        let mut only_logs: BTreeMap<u64, GroupLog> = logs.iter().map(|(p, (log, _))| (*p, log.clone())).collect();
        durable::rebuild(&records, &mut only_logs).map_err(|e| EngineError::Internal(e.to_string()))?;
        for (partition, log) in only_logs {
            let applied = logs.get(&partition).map_or(0, |(_, applied)| *applied);
            let added = if log_only.contains(&partition) {
                repl.raft.add_log_group(partition, log, applied)
            } else {
                repl.raft.add_group(partition, log, applied)
            };
            added
                .map_err(|e| EngineError::Internal(format!("start the Raft group of partition {partition:#x}: {e}")))?;
        }
        self.repl = Some(repl);
        Ok(())
    }

    /// Starts a group of which this node keeps only the log (a leader added
    /// it as a log replica and contacts it), in the partition's initial
    /// configuration: the log it receives (from its first entry, or after a
    /// metadata-only snapshot) brings it up to date. Returns the group state
    /// to log, so that a restart finds the group again.
    pub fn create_log_group(&mut self, partition: u64) -> Result<GroupWrite, EngineError> {
        let repl = self.repl.as_mut().ok_or_else(|| EngineError::Internal("not replicated".into()))?;
        let (voters, learners) = repl.members(partition);
        let log = GroupLog::with_learners(&voters, &learners, 0, 0);
        let state = GroupState {
            log_only: true,
            restart: None,
            conf_state: log.conf_state().clone(),
            log_replicas: Vec::new(),
        };
        repl.raft
            .add_log_group(partition, log, 0)
            .map_err(|e| EngineError::Internal(format!("start the log of partition {partition:#x}: {e}")))?;
        tracing::info!(partition = format!("{partition:#x}"), "keeping the log of a partition (log replica)");
        Ok(GroupWrite { partition, state: Some(state), entries: Vec::new(), hard_state: None })
    }

    /// Whether the partition's initial placement puts a replica on `node`
    /// (a full replica: only those lead).
    #[must_use]
    pub fn placed_on(&self, partition: u64, node: u64) -> bool {
        self.repl.as_ref().is_some_and(|r| r.members(partition).0.contains(&node))
    }

    /// Whether a message from a peer for a group this shard does not have
    /// may start a log replica here: the partition belongs to a table this
    /// node knows and is placed on this shard, but not on this node (its
    /// replicas here exist from the catalog already).
    #[must_use]
    pub fn may_keep_log_of(&self, partition: u64) -> bool {
        let Some(repl) = self.repl.as_ref() else { return false };
        partition != CATALOG_PARTITION
            && self.placement.hosts(partition)
            && !repl.holds(partition)
            && !repl.raft.has_group(partition)
            && self.tables.values().any(|d| d.partition_ids().any(|p| p == partition))
    }

    fn replicated_with(&self, repl: &Replication, partition: u64) -> bool {
        if partition == CATALOG_PARTITION {
            // Shard 0's catalog is the replicated one; the other shards
            // keep local copies of it.
            self.placement.shard == 0 && repl.holds(partition)
        } else {
            // Every table partition is a group, wherever healing put it.
            true
        }
    }

    /// Whether `partition` is a Raft group here.
    #[must_use]
    pub fn is_replicated(&self, partition: u64) -> bool {
        self.repl.as_ref().is_some_and(|r| self.replicated_with(r, partition))
    }

    /// This shard's Raft groups (replicated mode).
    #[must_use]
    pub fn raft(&self) -> Option<&ShardRaft> {
        self.repl.as_ref().map(|r| &r.raft)
    }

    /// This shard's Raft groups, to drive (replicated mode).
    pub fn raft_mut(&mut self) -> Option<&mut ShardRaft> {
        self.repl.as_mut().map(|r| &mut r.raft)
    }

    /// The membership (replicated mode).
    #[must_use]
    pub fn cluster(&self) -> Option<&Cluster> {
        self.repl.as_ref().map(|r| &r.cluster)
    }

    /// Replication state (replicated mode).
    #[must_use]
    pub fn replication(&self) -> Option<&Replication> {
        self.repl.as_ref()
    }

    /// Replication state (replicated mode).
    pub fn replication_mut(&mut self) -> Option<&mut Replication> {
        self.repl.as_mut()
    }

    /// An error for a request this replica cannot take, with the leader's
    /// endpoint as a hint when it is known.
    #[must_use]
    pub fn propose_error(&self, e: ProposeError) -> EngineError {
        match EngineError::from(e) {
            EngineError::NotLeader { partition, leader, .. } => {
                let hint = self.repl.as_ref().and_then(|r| r.endpoint(leader)).map(str::to_owned);
                EngineError::NotLeader { partition, leader, hint }
            }
            other => other,
        }
    }

    /// (ReplaceReplica, from a control plane.) Proposes replacing the
    /// replica of `partition` on node `remove` with a log replica on node
    /// `add`; this shard must lead the partition.
    pub fn replace_replica(&mut self, partition: u64, remove: u64, add: u64) -> Result<(), EngineError> {
        use crate::repl::ReplaceError;
        let Some(repl) = self.repl.as_mut() else {
            return Err(EngineError::Validation("a standalone node has no replicas to replace".into()));
        };
        if partition == CATALOG_PARTITION {
            return Err(EngineError::Validation("the catalog's replicas are not replaced (not supported yet)".into()));
        }
        if !repl.cluster.members().iter().any(|m| m.id == add) {
            return Err(EngineError::Validation(format!("node {add} is not a member of the cluster")));
        }
        // The asker's view is checked against the leader's own: a replica
        // that the leader still hears from is not evicted (a control plane
        // cut off from a healthy node must not take its replicas away).
        if repl.raft.writable(partition).is_ok() && !repl.raft.inactive_peers(partition).contains(&remove) {
            return Err(EngineError::Validation(format!(
                "node {remove} is in contact with the leader of partition {partition:#x}: not replaced"
            )));
        }
        match repl.raft.propose_replacement(partition, remove, add) {
            Ok(()) => Ok(()),
            Err(ReplaceError::Propose(e)) => Err(self.propose_error(e)),
            Err(e @ ReplaceError::ChangePending(_)) => Err(EngineError::Unavailable(e.to_string())),
            Err(e @ (ReplaceError::NotAVoter { .. } | ReplaceError::AlreadyAVoter { .. })) => {
                Err(EngineError::Validation(e.to_string()))
            }
        }
    }

    /// A group's leadership changed: the proposals in its overlay may never
    /// commit, and a new leader's writes are evaluated afresh.
    pub fn leadership_changed(&mut self, partition: u64) {
        self.overlay.remove(&partition);
    }

    /// Applies committed entries of a group, in order, to its tree, and
    /// tells raft-rs. Returns whether the catalog changed (shard 0's
    /// catalog group: the shell then reconciles the other shards).
    pub async fn apply_committed(&mut self, partition: u64, entries: &[Entry]) -> Result<Applied, EngineError> {
        let mut outcome = Applied::default();
        let Some(last) = entries.last().map(|e| e.index) else { return Ok(outcome) };
        let log_only = self.raft().is_some_and(|r| r.is_log_only(partition));
        if !log_only && !self.store.partitions().contains(&partition) {
            return Ok(outcome); // dropped by an earlier entry of the catalog
        }
        for entry in entries {
            if entry.get_entry_type() == EntryType::EntryConfChangeV2 {
                let raft = self.raft_mut().expect("replicated groups have a driver");
                let state = raft
                    .apply_conf_change(partition, entry)
                    .map_err(|e| EngineError::Internal(format!("partition {partition:#x}: {e}")))?;
                tracing::info!(
                    partition = format!("{partition:#x}"),
                    voters = ?state.conf_state.voters,
                    outgoing = ?state.conf_state.voters_outgoing,
                    log_replicas = ?state.log_replicas,
                    "configuration change applied"
                );
                outcome.states.push(GroupWrite {
                    partition,
                    state: Some(state),
                    entries: Vec::new(),
                    hard_state: None,
                });
            }
            let roles = (entry.get_entry_type() == EntryType::EntryNormal)
                .then(|| entry.get_data().split_first())
                .flatten()
                .filter(|(kind, _)| **kind == ENTRY_KIND_ROLES)
                .and_then(|(_, rest)| durable::decode_log_replicas(rest));
            if let Some(log_replicas) = roles.clone() {
                let raft = self.raft_mut().expect("replicated groups have a driver");
                if let Some(state) = raft.set_log_replicas(partition, log_replicas) {
                    tracing::info!(partition = format!("{partition:#x}"), log_replicas = ?state.log_replicas, "roles changed");
                    outcome.states.push(GroupWrite {
                        partition,
                        state: Some(state),
                        entries: Vec::new(),
                        hard_state: None,
                    });
                }
            }
            if log_only {
                continue; // a log replica applies nothing to a tree
            }
            let data = if entry.get_entry_type() == EntryType::EntryNormal && roles.is_none() {
                entry.get_data()
            } else {
                &[]
            };
            match self.store.apply_entry(partition, entry.index, entry.term, data).await {
                Err(StoreWriteError::BadEntry { reason, .. }) => {
                    // Entries are checked when they arrive and when they are
                    // proposed; one that is not a mutation changes nothing
                    // rather than stopping the group.
                    tracing::error!(partition, index = entry.index, reason, "committed entry is not a mutation");
                    self.store.apply_entry(partition, entry.index, entry.term, &[]).await?;
                }
                other => other?,
            }
        }
        self.forget_applied(partition);
        if let Some(raft) = self.raft_mut() {
            raft.applied(partition, last);
        }
        if partition == CATALOG_PARTITION && self.is_replicated(partition) {
            outcome.catalog_changed = self.reload_catalog().await?;
        }
        Ok(outcome)
    }

    /// (Shard 0, replicated.) Makes the catalog in memory and the hosted
    /// partitions follow what partition 0 holds now. Idempotent.
    async fn reload_catalog(&mut self) -> Result<bool, EngineError> {
        let (tables, next_table_id) = read_catalog(&self.store).await?;
        let changed = tables != self.tables;
        let stale: Vec<Rc<TableDef>> =
            self.tables.values().filter(|d| tables.get(&d.name) != Some(d)).cloned().collect();
        for def in stale {
            for partition in self.hosted(&def) {
                self.drop_hosted(partition).await?;
            }
        }
        for def in tables.values() {
            if let Some(repl) = self.repl.as_mut() {
                repl.note_placement(def);
            }
            for partition in def.partition_ids() {
                self.create_hosted(partition).await?;
            }
        }
        self.tables = tables;
        self.next_table_id = self.next_table_id.max(next_table_id);
        Ok(changed)
    }

    /// (Replicated.) A request for a partition this node holds no replica
    /// of is refused as `NotLeader`, pointing at a node that holds one.
    fn held(&self, partition: u64) -> Result<(), EngineError> {
        let Some(repl) = self.repl.as_ref() else { return Ok(()) };
        if repl.raft.has_group(partition) {
            if !repl.raft.is_log_only(partition) {
                return Ok(());
            }
            // A log replica holds no items: its leader does.
            let leader = repl.raft.status(partition).map_or(0, |s| s.leader);
            let hint = repl.endpoint(leader).map(str::to_owned);
            return Err(EngineError::NotLeader { partition, leader, hint });
        }
        if repl.holds(partition) {
            return Ok(());
        }
        let (voters, _) = repl.members(partition);
        let known = voters.iter().find_map(|&node| repl.endpoint(node).map(|e| (node, e.to_owned())));
        let (leader, hint) = known.map_or((0, None), |(node, endpoint)| (node, Some(endpoint)));
        Err(EngineError::NotLeader { partition, leader, hint })
    }

    /// Whether this shard (and, replicated, this node) holds `partition`.
    fn hosts(&self, partition: u64) -> bool {
        self.placement.hosts(partition) && self.repl.as_ref().is_none_or(|r| r.holds(partition))
    }

    /// Creates a hosted partition's replica (and Raft group) unless present.
    async fn create_hosted(&mut self, partition: u64) -> Result<(), EngineError> {
        if !self.hosts(partition) || self.store.partitions().contains(&partition) {
            return Ok(());
        }
        self.store.create_partition(partition).await?;
        if let Some(repl) = self.repl.as_mut() {
            let (voters, learners) = repl.members(partition);
            repl.raft
                .add_group(partition, GroupLog::with_learners(&voters, &learners, 0, 0), 0)
                .map_err(|e| EngineError::Internal(format!("start the Raft group of partition {partition:#x}: {e}")))?;
            // One voter, rotating with the partition, campaigns at once, so
            // that new partitions get leaders spread over the nodes within
            // a round trip instead of an election timeout.
            let first = usize::try_from(partition % voters.len().max(1) as u64).unwrap_or(0);
            if voters.get(first) == Some(&repl.raft.node_id())
                && let Err(e) = repl.raft.campaign(partition)
            {
                tracing::warn!(partition, error = %e, "could not campaign for a new partition");
            }
        }
        Ok(())
    }

    /// Drops a hosted partition's replica (and Raft group).
    async fn drop_hosted(&mut self, partition: u64) -> Result<(), EngineError> {
        self.overlay.remove(&partition);
        if let Some(raft) = self.raft_mut() {
            raft.remove_group(partition);
        }
        if self.store.partitions().contains(&partition) {
            self.store.drop_partition(partition).await?;
        }
        Ok(())
    }

    /// The store underneath (for checkpoints and shutdown).
    pub fn store_mut(&mut self) -> &mut ShardStore<D> {
        &mut self.store
    }

    /// The store underneath (for snapshots).
    #[must_use]
    pub fn store(&self) -> &ShardStore<D> {
        &self.store
    }

    /// Ends the rebuild of a log replica into a full one: installs the
    /// built B-tree (a snapshot whose checkpoint says `applied_index`, at
    /// or after which every key holds a value of some moment since), applies
    /// this replica's own log on top of it up to what the group has applied
    /// (puts and deletes of whole items: replaying them over a state
    /// between the snapshot's start and end gives the state at the end),
    /// and starts the group again as a full replica. Returns the group
    /// state to make durable.
    pub async fn finish_rebuild(&mut self, partition: u64) -> Result<GroupWrite, EngineError> {
        let raft = self.raft().ok_or_else(|| EngineError::Internal("not replicated".into()))?;
        let log = raft.log(partition).cloned().ok_or_else(|| EngineError::Internal("no such group".into()))?;
        let applied = raft.status(partition).map_or(0, |s| s.applied);
        self.store.install_built(partition).await?;
        let from = self.store.applied_index(partition).unwrap_or(0);
        if from + 1 < log.first_index() {
            self.store.drop_partition(partition).await?;
            return Err(EngineError::Internal(format!(
                "partition {partition:#x}: the snapshot ({from}) is older than this replica's log ({})",
                log.first_index()
            )));
        }
        for index in from + 1..=applied {
            let entry = log.entry(index).ok_or_else(|| EngineError::Internal(format!("entry {index} missing")))?;
            let data = entry.get_data();
            let mutation = entry.get_entry_type() == EntryType::EntryNormal && data.first() != Some(&ENTRY_KIND_ROLES);
            self.store.apply_entry(partition, index, entry.term, if mutation { data } else { &[] }).await?;
        }
        let raft = self.raft_mut().ok_or_else(|| EngineError::Internal("not replicated".into()))?;
        raft.become_full(partition).map_err(|e| EngineError::Internal(format!("restart the group: {e}")))?;
        let state = raft.set_log_replicas(partition, raft.log_replicas(partition));
        // Entries after the applied ones were logged as the log replica's:
        // the WAL keeps them until the new tree's checkpoint holds them.
        self.store.keep_log_until_checkpointed(partition, log.last_index());
        let mut state = state.ok_or_else(|| EngineError::Internal("no such group".into()))?;
        state.log_only = false;
        tracing::info!(partition = format!("{partition:#x}"), from, applied, "rebuilt as a full replica");
        Ok(GroupWrite { partition, state: Some(state), entries: Vec::new(), hard_state: None })
    }

    /// Whether writers should wait for the background checkpoint (see
    /// [`ShardStore::checkpoint_backlogged`]).
    #[must_use]
    pub fn store_backlogged(&self) -> bool {
        self.store.checkpoint_backlogged()
    }

    /// The last log index applied to a partition's tree.
    #[must_use]
    pub fn applied_index(&self, partition: u64) -> Option<u64> {
        self.store.applied_index(partition)
    }

    /// Which partitions this engine hosts.
    #[must_use]
    pub fn placement(&self) -> Placement {
        self.placement
    }

    /// The shard's WAL (to wait for a [`Commit`] without holding the engine).
    #[must_use]
    pub fn wal(&self) -> Rc<Wal<D>> {
        self.store.wal()
    }

    /// Partitions of a table whose CreateTable does not say (1 to
    /// [`PARTITIONS_MAX`]).
    pub fn set_default_partitions(&mut self, partitions: u32) {
        self.default_partitions = partitions.clamp(1, PARTITIONS_MAX);
    }

    /// In deferred mode writes return once logged; see the module docs.
    pub fn set_deferred(&mut self, deferred: bool) {
        self.deferred_mode = deferred;
    }

    /// With `on`, Query and Scan do not wait for the WAL while the caller
    /// holds the engine (every other request of the shard would wait too):
    /// one that must fails, and [`Self::take_settle_after`] says how far
    /// the WAL must be durable before the request is run again.
    pub fn set_settle_elsewhere(&mut self, on: bool) {
        self.settle_elsewhere = on;
    }

    /// See [`Self::set_settle_elsewhere`].
    pub fn take_settle_after(&mut self) -> Option<Lsn> {
        self.settle_after.take()
    }

    /// With `on` (in deferred mode), a read of the tree by a request that
    /// has logged nothing fails on a page missing from the cache instead of
    /// reading it while the caller holds the engine (every other request of
    /// the shard would wait for that disk read); [`Self::take_page_fetch`]
    /// then hands the page over (module docs). Turning it on forgets a miss
    /// not taken.
    pub fn set_fetch_elsewhere(&mut self, on: bool) {
        self.fetch_elsewhere = on;
        if on {
            drop(self.store.take_page_fetch());
        }
    }

    /// The page a read missed under [`Self::set_fetch_elsewhere`]: the
    /// request failed and has logged nothing; read the page without the
    /// engine, hand it to [`Self::cache_fetched`] and run the request again.
    pub fn take_page_fetch(&mut self) -> Option<PageFetch<<D as Disk>::File>> {
        self.store.take_page_fetch()
    }

    /// Caches a page read by a [`PageFetch`].
    pub fn cache_fetched(&mut self, fetched: FetchedPages<<D as Disk>::File>) {
        self.store.cache_fetched(fetched);
    }

    /// Whether a read of the tree now fails on a page miss (recorded for the
    /// caller) instead of reading it: with [`Self::set_fetch_elsewhere`],
    /// in deferred mode, while this request has logged nothing and waits for
    /// nothing. Outside deferred mode a write is applied before the request
    /// goes on and leaves no trace in the commit, so a later miss could not
    /// tell that running the request again would apply it twice.
    fn may_defer_misses(&self) -> bool {
        self.fetch_elsewhere && self.deferred_mode && self.deferred.is_empty()
    }

    /// The writes (and reads of unapplied writes) since the last call.
    pub fn take_commit(&mut self) -> Commit {
        std::mem::take(&mut self.deferred)
    }

    /// Applies a commit's writes once the WAL is durable up to
    /// [`Commit::wait_lsn`].
    pub async fn finish(&mut self, commit: Commit) -> Result<(), EngineError> {
        for ticket in commit.tickets {
            self.store.apply_durable(ticket).await?;
            self.forget_applied(ticket.partition);
        }
        Ok(())
    }

    fn forget_applied(&mut self, partition: u64) {
        let applied = self.store.applied_index(partition).unwrap_or(u64::MAX);
        if let Some(pending) = self.overlay.get_mut(&partition) {
            pending.retain(|_, write| write.index > applied);
        }
    }

    /// Logs a write of an item (None: a delete). In deferred mode it is
    /// finished by the caller; otherwise it is durable and applied on return.
    async fn write(&mut self, partition: u64, storage_key: &[u8], value: Option<&[u8]>) -> Result<(), EngineError> {
        if self.store.has_missed() {
            // The request is run again once the page is fetched; nothing of
            // it may be logged now (module docs).
            return Err(EngineError::Internal("a read of this request missed the page cache".into()));
        }
        let mutation = match value {
            Some(value) => Mutation::Put { key: storage_key, value },
            None => Mutation::Delete { key: storage_key },
        };
        if self.is_replicated(partition) {
            // Replicated: proposed on the leader, answered once applied.
            assert!(self.deferred_mode, "replicated writes are waited for by the shell");
            let data = mutation.encode_entry();
            Mutation::decode_entry(&data).map_err(|reason| EngineError::Validation(reason.to_owned()))?;
            let raft = self.raft_mut().expect("replicated partitions have groups");
            let proposed = raft.writable(partition).and_then(|()| raft.propose(partition, data));
            let proposal = proposed.map_err(|e| self.propose_error(e))?;
            let pending = Pending { index: proposal.index, lsn: None, value: value.map(<[u8]>::to_vec) };
            self.overlay.entry(partition).or_default().insert(storage_key.to_vec(), pending);
            self.deferred.proposals.push((partition, proposal));
            return Ok(());
        }
        let index = self.store.last_index(partition)? + 1;
        let ticket = self.store.submit(partition, 0, index, mutation)?;
        let pending = Pending { index, lsn: Some(ticket.lsn), value: value.map(<[u8]>::to_vec) };
        self.overlay.entry(partition).or_default().insert(storage_key.to_vec(), pending);
        if self.deferred_mode {
            self.deferred.tickets.push(ticket);
            return Ok(());
        }
        self.store.wal().wait_durable(ticket.lsn).await.map_err(StoreWriteError::from)?;
        self.finish(Commit { tickets: vec![ticket], ..Commit::default() }).await
    }

    /// Applies every logged write of a partition (waiting for the WAL), so
    /// that a range read sees them.
    async fn settle(&mut self, partition: u64) -> Result<(), EngineError> {
        if self.is_replicated(partition) {
            return Ok(()); // reads see the applied state (module docs)
        }
        let Some(ticket) = self.store.last_queued(partition) else { return Ok(()) };
        if self.settle_elsewhere && self.store.wal().durable_lsn() <= ticket.lsn {
            self.settle_after = Some(ticket.lsn);
            return Err(EngineError::Internal("range read must wait for the WAL first".into()));
        }
        self.store.wal().wait_durable(ticket.lsn).await.map_err(StoreWriteError::from)?;
        self.store.apply_durable(ticket).await?;
        self.forget_applied(partition);
        Ok(())
    }

    /// Every table in the catalog.
    #[must_use]
    pub fn tables(&self) -> Vec<TableDef> {
        self.tables.values().map(|def| TableDef::clone(def)).collect()
    }

    fn hosted(&self, def: &TableDef) -> Vec<u64> {
        let present = self.store.partitions();
        def.partition_ids().filter(|p| self.hosts(*p) && present.contains(p)).collect()
    }

    /// Takes a table created by the catalog authority (shard 0): creates the
    /// partitions this shard hosts and records the table. Idempotent.
    pub async fn adopt_table(&mut self, def: &TableDef) -> Result<(), EngineError> {
        if let Some(existing) = self.tables.get(&def.name) {
            if **existing == *def {
                return Ok(());
            }
            self.forget_table(&def.name).await?;
        }
        if let Some(repl) = self.repl.as_mut() {
            repl.note_placement(def);
        }
        for partition in def.partition_ids() {
            self.create_hosted(partition).await?;
        }
        let record = def.to_json().to_string();
        self.store.put(CATALOG_PARTITION, &[TABLE_KEY_PREFIX, def.name.as_bytes()].concat(), record.as_bytes()).await?;
        self.next_table_id = self.next_table_id.max(def.id + 1);
        self.tables.insert(def.name.clone(), Rc::new(def.clone()));
        Ok(())
    }

    /// Drops a table the catalog authority deleted. Idempotent.
    pub async fn forget_table(&mut self, name: &str) -> Result<(), EngineError> {
        if self.tables.contains_key(name) {
            self.drop_table_here(name).await?;
        }
        Ok(())
    }

    /// Makes this shard's catalog equal to the authority's `tables`.
    pub async fn reconcile(&mut self, tables: &[TableDef]) -> Result<(), EngineError> {
        let stale: Vec<String> =
            self.tables.values().filter(|d| !tables.contains(d.as_ref())).map(|d| d.name.clone()).collect();
        for name in stale {
            self.forget_table(&name).await?;
        }
        for def in tables {
            self.adopt_table(def).await?;
        }
        Ok(())
    }

    fn table(&self, name: &str) -> Result<&Rc<TableDef>, EngineError> {
        self.tables.get(name).ok_or_else(|| {
            EngineError::ResourceNotFound(format!("Requested resource not found: Table: {name} not found"))
        })
    }

    /// CreateTable, its partitions placed by the nodes' own rotation.
    pub async fn create_table(
        &mut self,
        name: &str,
        partition_key: KeyDef,
        sort_key: Option<KeyDef>,
        partitions: u32,
        now_ms: u64,
    ) -> Result<TableDef, EngineError> {
        self.create_table_placed(name, partition_key, sort_key, partitions, Vec::new(), now_ms).await
    }

    /// CreateTable with each partition's replicas named (`placement`, by
    /// partition index; empty: the nodes' rotation).
    pub async fn create_table_placed(
        &mut self,
        name: &str,
        partition_key: KeyDef,
        sort_key: Option<KeyDef>,
        partitions: u32,
        placement: Vec<Vec<u64>>,
        now_ms: u64,
    ) -> Result<TableDef, EngineError> {
        validate_table_name(name)?;
        if self.tables.contains_key(name) {
            return Err(EngineError::ResourceInUse(format!("Table already exists: {name}")));
        }
        if self.is_replicated(CATALOG_PARTITION)
            && self.current(CATALOG_PARTITION, &[TABLE_KEY_PREFIX, name.as_bytes()].concat()).await?.is_some()
        {
            return Err(EngineError::ResourceInUse(format!("Table already exists: {name}")));
        }
        let partitions = if partitions == 0 { self.default_partitions } else { partitions };
        if partitions > PARTITIONS_MAX {
            return Err(EngineError::Validation(format!("at most {PARTITIONS_MAX} partitions per table")));
        }
        if sort_key.as_ref().is_some_and(|sk| sk.name == partition_key.name) {
            return Err(EngineError::Validation("the sort key must differ from the partition key".into()));
        }
        if !placement.is_empty() {
            match self.repl.as_ref() {
                Some(repl) => repl.check_placement(partitions, &placement)?,
                None => return Err(EngineError::Validation("a standalone node holds every partition itself".into())),
            }
        }
        let def = TableDef {
            id: self.next_table_id,
            name: name.to_owned(),
            partition_key,
            sort_key,
            partitions,
            created_at_ms: now_ms,
            placement,
        };
        if self.is_replicated(CATALOG_PARTITION) {
            // Two entries of the catalog group: the id, then the record.
            // Every replica creates the partitions when it applies the
            // record; the table is visible once the shell saw it applied.
            let next = self.next_table_id + 1;
            self.write(CATALOG_PARTITION, NEXT_TABLE_ID_KEY, Some(&next.to_le_bytes())).await?;
            self.next_table_id = next;
            let record = def.to_json().to_string();
            let key = [TABLE_KEY_PREFIX, name.as_bytes()].concat();
            self.write(CATALOG_PARTITION, &key, Some(record.as_bytes())).await?;
            return Ok(def);
        }
        // Durable order: the id is consumed first (never reused), then the
        // partitions exist, then the catalog record makes the table visible.
        self.next_table_id += 1;
        self.store.put(CATALOG_PARTITION, NEXT_TABLE_ID_KEY, &self.next_table_id.to_le_bytes()).await?;
        for partition in def.partition_ids().filter(|p| self.placement.hosts(*p)) {
            self.store.create_partition(partition).await?;
        }
        let record = def.to_json().to_string();
        self.store.put(CATALOG_PARTITION, &[TABLE_KEY_PREFIX, name.as_bytes()].concat(), record.as_bytes()).await?;
        self.tables.insert(name.to_owned(), Rc::new(def.clone()));
        Ok(def)
    }

    /// DeleteTable.
    pub async fn delete_table(&mut self, name: &str) -> Result<TableDef, EngineError> {
        if self.is_replicated(CATALOG_PARTITION) {
            let def = TableDef::clone(self.table(name)?);
            let key = [TABLE_KEY_PREFIX, name.as_bytes()].concat();
            if self.current(CATALOG_PARTITION, &key).await?.is_none() {
                return Err(EngineError::ResourceNotFound(format!(
                    "Requested resource not found: Table: {name} not found"
                )));
            }
            self.write(CATALOG_PARTITION, &key, None).await?;
            return Ok(def);
        }
        self.drop_table_here(name).await
    }

    /// Drops a table from this shard's catalog copy and its partitions here.
    async fn drop_table_here(&mut self, name: &str) -> Result<TableDef, EngineError> {
        let def = TableDef::clone(self.table(name)?);
        self.store.delete(CATALOG_PARTITION, &[TABLE_KEY_PREFIX, name.as_bytes()].concat()).await?;
        self.tables.remove(name);
        for partition in self.hosted(&def) {
            self.drop_hosted(partition).await?;
        }
        if let Some(repl) = self.repl.as_mut() {
            repl.forget_placement(&def);
        }
        Ok(def)
    }

    /// DescribeTable.
    pub fn describe_table(&self, name: &str) -> Result<&TableDef, EngineError> {
        self.table(name).map(AsRef::as_ref)
    }

    /// ListTables: names after `start_after`, at most `limit` (≤ 100).
    #[must_use]
    pub fn list_tables(&self, start_after: Option<&str>, limit: usize) -> (Vec<String>, Option<String>) {
        let limit = if limit == 0 { LIST_TABLES_MAX } else { limit.min(LIST_TABLES_MAX) };
        let lower = start_after.map_or(Bound::Unbounded, |s| Bound::Excluded(s.to_owned()));
        let mut names: Vec<String> =
            self.tables.range((lower, Bound::Unbounded)).map(|(n, _)| n.clone()).take(limit + 1).collect();
        let more = names.len() > limit;
        names.truncate(limit);
        let last = if more { names.last().cloned() } else { None };
        (names, last)
    }

    /// The partition and storage key of an item's (or a key's) key attributes.
    fn locate(def: &TableDef, item: &Item) -> Result<(u64, Vec<u8>), EngineError> {
        let get = |k: &KeyDef| -> Result<&AttributeValue, EngineError> {
            let value = item
                .get(&k.name)
                .ok_or_else(|| EngineError::Validation(format!("Missing the key {} in the item", k.name)))?;
            if !k.key_type.matches(value) {
                return Err(EngineError::Validation(format!(
                    "Type mismatch for key {}: expected {}",
                    k.name,
                    k.key_type.as_str()
                )));
            }
            Ok(value)
        };
        let pk = get(&def.partition_key)?;
        let sk = match &def.sort_key {
            Some(k) => Some((k.name.as_str(), get(k)?)),
            None => None,
        };
        let storage_key = key::encode_key(&def.partition_key.name, pk, sk)?;
        Ok((def.partition_for(key::hash_of(&storage_key)), storage_key))
    }

    /// A key argument must hold exactly the key attributes.
    fn locate_key(def: &TableDef, key: &Item) -> Result<(u64, Vec<u8>), EngineError> {
        let expected = 1 + usize::from(def.sort_key.is_some());
        if key.len() != expected {
            return Err(EngineError::Validation("The provided key element does not match the schema".into()));
        }
        Self::locate(def, key)
    }

    /// The item under a key: a logged, unapplied write if there is one (a
    /// reader of it then waits for its durability), else the tree's.
    async fn current(&mut self, partition: u64, storage_key: &[u8]) -> Result<Option<Vec<u8>>, EngineError> {
        self.current_with(partition, storage_key, |current| current.map(<[u8]>::to_vec)).await
    }

    /// [`Self::current`], calling `f` with the item's bytes where they lie
    /// (the overlay, or the tree's page) instead of copying them.
    async fn current_with<R>(
        &mut self,
        partition: u64,
        storage_key: &[u8],
        f: impl FnOnce(Option<&[u8]>) -> R,
    ) -> Result<R, EngineError> {
        if let Some(pending) = self.pending(partition, storage_key) {
            return Ok(f(pending));
        }
        self.tree_with(partition, storage_key, f).await
    }

    /// Calls `f` with the tree's bytes under a key, borrowed from the page
    /// cache; a page miss is deferred where the engine may defer it.
    async fn tree_with<R>(
        &mut self,
        partition: u64,
        storage_key: &[u8],
        f: impl FnOnce(Option<&[u8]>) -> R,
    ) -> Result<R, EngineError> {
        self.store.set_defer_misses(self.may_defer_misses());
        let read = self.store.get_with(partition, storage_key, f).await;
        self.store.set_defer_misses(false);
        Ok(read?)
    }

    fn decode_stored(bytes: &[u8]) -> Result<Item, EngineError> {
        item::decode(bytes).map_err(|e| EngineError::Internal(format!("stored item unreadable: {e}")))
    }

    fn check_condition(condition: Option<&Condition>, current: Option<&[u8]>) -> Result<(), EngineError> {
        let Some(condition) = condition else { return Ok(()) };
        let item = match current {
            Some(bytes) => Self::decode_stored(bytes)?,
            None => Item::new(),
        };
        if expr::evaluate(condition, &item) { Ok(()) } else { Err(EngineError::ConditionalCheckFailed) }
    }

    /// The partition holding an item (or a key): for routing.
    pub fn partition_of(&self, table: &str, item: &Item) -> Result<u64, EngineError> {
        Ok(Self::locate(self.table(table)?, item)?.0)
    }

    /// The partition holding a partition key value: for routing a Query.
    pub fn partition_of_partition_key(&self, table: &str, value: &AttributeValue) -> Result<u64, EngineError> {
        let def = self.table(table)?;
        Ok(def.partition_for(key::hash_of(&key::partition_prefix(&def.partition_key.name, value)?)))
    }

    /// The storage key of an item given as bytes (for duplicate checks).
    pub fn key_bytes(&self, table: &str, item_bytes: &[u8]) -> Result<Vec<u8>, EngineError> {
        let def = self.table(table)?;
        Ok(Self::locate(def, &item::decode(item_bytes)?)?.1)
    }

    /// The storage key of a key (for duplicate checks).
    pub fn key_bytes_of(&self, table: &str, key: &Item) -> Result<Vec<u8>, EngineError> {
        let def = self.table(table)?;
        Ok(Self::locate_key(def, key)?.1)
    }

    /// PutItem: stores the verified item bytes as received. Returns the
    /// item it replaced when `return_old` (the old item is read only when a
    /// condition or the caller needs it: a plain put does no read).
    pub async fn put_item(
        &mut self,
        table: &str,
        item_bytes: &[u8],
        condition: Option<&Condition>,
        return_old: bool,
    ) -> Result<Option<Vec<u8>>, EngineError> {
        let def = self.table(table)?;
        let item = item::decode(item_bytes)?;
        item::validate(&item)?;
        let (partition, storage_key) = Self::locate(def, &item)?;
        self.held(partition)?;
        let old = if condition.is_some() || return_old { self.current(partition, &storage_key).await? } else { None };
        Self::check_condition(condition, old.as_deref())?;
        self.write(partition, &storage_key, Some(item_bytes)).await?;
        Ok(if return_old { old } else { None })
    }

    /// GetItem: the stored item bytes.
    pub async fn get_item(&mut self, table: &str, key: &Item) -> Result<Option<Vec<u8>>, EngineError> {
        self.get_item_with(table, key, |stored| stored.map(<[u8]>::to_vec)).await
    }

    /// GetItem, calling `f` with the stored item bytes borrowed from the
    /// page cache (or the overlay): the server builds its response from
    /// them without copying the item first.
    pub async fn get_item_with<R>(
        &mut self,
        table: &str,
        key: &Item,
        f: impl FnOnce(Option<&[u8]>) -> R,
    ) -> Result<R, EngineError> {
        let def = self.table(table)?;
        let (partition, storage_key) = Self::locate_key(def, key)?;
        self.held(partition)?;
        // Replicated reads see the applied state (module docs).
        if !self.is_replicated(partition)
            && let Some(pending) = self.pending(partition, &storage_key)
        {
            return Ok(f(pending));
        }
        self.tree_with(partition, &storage_key, f).await
    }

    /// A logged-but-unapplied write of the key, if any (the outer `None`);
    /// a read that sees it answers only once it is durable.
    fn pending(&mut self, partition: u64, storage_key: &[u8]) -> Option<Option<&[u8]>> {
        let pending = self.overlay.get(&partition)?.get(storage_key)?;
        self.deferred.wait_lsn = self.deferred.wait_lsn.max(pending.lsn);
        Some(pending.value.as_deref())
    }

    /// DeleteItem: returns the deleted item.
    pub async fn delete_item(
        &mut self,
        table: &str,
        key: &Item,
        condition: Option<&Condition>,
    ) -> Result<Option<Vec<u8>>, EngineError> {
        let def = self.table(table)?;
        let (partition, storage_key) = Self::locate_key(def, key)?;
        self.held(partition)?;
        let old = self.current(partition, &storage_key).await?;
        Self::check_condition(condition, old.as_deref())?;
        if old.is_some() {
            self.write(partition, &storage_key, None).await?;
        }
        Ok(old)
    }

    /// UpdateItem: returns the item before and after.
    pub async fn update_item(
        &mut self,
        table: &str,
        key: &Item,
        update: &Update,
        condition: Option<&Condition>,
    ) -> Result<(Option<Vec<u8>>, Vec<u8>), EngineError> {
        self.update_item_keeping(table, key, update, condition, true).await
    }

    /// UpdateItem: returns the item after, and the item before when
    /// `keep_old` asks for it (for ReturnValues; otherwise the stored item
    /// is read where it lies, not copied).
    pub async fn update_item_keeping(
        &mut self,
        table: &str,
        key: &Item,
        update: &Update,
        condition: Option<&Condition>,
        keep_old: bool,
    ) -> Result<(Option<Vec<u8>>, Vec<u8>), EngineError> {
        let def = Rc::clone(self.table(table)?);
        let (partition, storage_key) = Self::locate_key(&def, key)?;
        self.held(partition)?;
        let (first, second) = (def.partition_key.name.as_str(), def.sort_key.as_ref().map(|k| k.name.as_str()));
        let key_names = [first, second.unwrap_or(first)];
        // Same-length SETs of scalars rewrite the stored bytes in a copy,
        // without decoding and encoding the item (expr::apply_update_in_place).
        let (old, next) = self
            .current_with(partition, &storage_key, |stored| -> Result<_, EngineError> {
                Self::check_condition(condition, stored)?;
                let old = stored.filter(|_| keep_old).map(<[u8]>::to_vec);
                let Some(stored) = stored else { return Ok((old, Updating::Apply(key.clone()))) };
                let in_place = expr::apply_update_in_place(update, stored, &key_names)
                    .map_err(|e| EngineError::Internal(format!("stored item unreadable: {e}")))?;
                Ok(match in_place {
                    Some(bytes) => (old, Updating::Written(bytes)),
                    None => (old, Updating::Apply(Self::decode_stored(stored)?)),
                })
            })
            .await??;
        let base = match next {
            Updating::Written(bytes) => {
                self.write(partition, &storage_key, Some(&bytes)).await?;
                return Ok((old, bytes));
            }
            Updating::Apply(base) => base,
        };
        let updated = expr::apply_update(update, &base)?;
        for k in std::iter::once(&def.partition_key).chain(def.sort_key.as_ref()) {
            if updated.get(&k.name) != key.get(&k.name) {
                return Err(EngineError::Validation(format!(
                    "Cannot update attribute {}. This attribute is part of the key",
                    k.name
                )));
            }
        }
        item::validate(&updated)?;
        let bytes = item::encode(&updated);
        self.write(partition, &storage_key, Some(&bytes)).await?;
        Ok((old, bytes))
    }

    fn key_of(def: &TableDef, item: &Item) -> Item {
        std::iter::once(&def.partition_key)
            .chain(def.sort_key.as_ref())
            .filter_map(|k| item.get(&k.name).map(|v| (k.name.clone(), v.clone())))
            .collect()
    }

    /// Query: items of one partition key, in sort-key order.
    pub async fn query(
        &mut self,
        table: &str,
        key_condition: &KeyCondition,
        forward: bool,
        limit: Option<usize>,
        exclusive_start: Option<&Item>,
        filter: Option<&Condition>,
    ) -> Result<Page, EngineError> {
        let def = self.table(table)?;
        let pk_name = &def.partition_key.name;
        if !def.partition_key.key_type.matches(&key_condition.partition_key) {
            return Err(EngineError::Validation(format!("Type mismatch for key {pk_name}")));
        }
        let prefix = key::partition_prefix(pk_name, &key_condition.partition_key)?;
        let partition = def.partition_for(key::hash_of(&prefix));
        let prefix_end = key::prefix_successor(&prefix);
        let sk_key = |v: &AttributeValue| -> Result<Vec<u8>, EngineError> {
            let sk =
                def.sort_key.as_ref().ok_or_else(|| EngineError::Validation("the table has no sort key".into()))?;
            if !sk.key_type.matches(v) {
                return Err(EngineError::Validation(format!("Type mismatch for key {}", sk.name)));
            }
            Ok(key::encode_key(pk_name, &key_condition.partition_key, Some((&sk.name, v)))?)
        };
        let whole_hi = prefix_end.clone().map_or(Bound::Unbounded, Bound::Excluded);
        let (mut lo, mut hi): (Bound<Vec<u8>>, Bound<Vec<u8>>) = match &key_condition.sort_key {
            None => (Bound::Included(prefix.clone()), whole_hi),
            Some(SortKeyCondition::Compare(cmp, v)) => {
                let k = sk_key(v)?;
                match cmp {
                    expr::Comparator::Eq => (Bound::Included(k.clone()), Bound::Included(k)),
                    expr::Comparator::Lt => (Bound::Included(prefix.clone()), Bound::Excluded(k)),
                    expr::Comparator::Le => (Bound::Included(prefix.clone()), Bound::Included(k)),
                    expr::Comparator::Gt => (Bound::Excluded(k), whole_hi),
                    _ => (Bound::Included(k), whole_hi),
                }
            }
            Some(SortKeyCondition::Between(a, b)) => (Bound::Included(sk_key(a)?), Bound::Included(sk_key(b)?)),
            Some(SortKeyCondition::BeginsWith(p)) => {
                let sk =
                    def.sort_key.as_ref().ok_or_else(|| EngineError::Validation("the table has no sort key".into()))?;
                if !sk.key_type.matches(p) {
                    return Err(EngineError::Validation(format!("Type mismatch for key {}", sk.name)));
                }
                let start = key::sort_key_prefix(pk_name, &key_condition.partition_key, p)?;
                let end = key::prefix_successor(&start).map_or(Bound::Unbounded, Bound::Excluded);
                (Bound::Included(start), end)
            }
        };
        if let Some(start) = exclusive_start {
            let (start_partition, start_key) = Self::locate(def, start)?;
            if start_partition != partition || !start_key.starts_with(&prefix) {
                return Err(EngineError::Validation("ExclusiveStartKey does not belong to this query".into()));
            }
            if forward {
                lo = Bound::Excluded(start_key);
            } else {
                hi = Bound::Excluded(start_key);
            }
        }
        let def = def.clone();
        self.held(partition)?;
        self.settle(partition).await?;
        let mut page = Page::default();
        self.read_range(&def, partition, (lo, hi), forward, limit, filter, &mut page).await?;
        Ok(page)
    }

    /// Reads items of one partition between bounds into `page`, stopping at
    /// `limit` items or [`PAGE_BYTES_MAX`]. Returns whether it stopped early.
    #[allow(clippy::too_many_arguments)]
    async fn read_range(
        &self,
        def: &TableDef,
        partition: u64,
        (mut lo, mut hi): (Bound<Vec<u8>>, Bound<Vec<u8>>),
        forward: bool,
        limit: Option<usize>,
        filter: Option<&Condition>,
        page: &mut Page,
    ) -> Result<bool, EngineError> {
        loop {
            let left = limit.map_or(SCAN_BATCH, |l| l.saturating_sub(page.scanned_count).min(SCAN_BATCH));
            if left == 0 {
                return Ok(true);
            }
            let direction = if forward { Direction::Forward } else { Direction::Reverse };
            self.store.set_defer_misses(self.may_defer_misses());
            let batch = self
                .store
                .scan(partition, lo.as_ref().map(Vec::as_slice), hi.as_ref().map(Vec::as_slice), direction, left)
                .await;
            self.store.set_defer_misses(false);
            let batch = batch?;
            let exhausted = batch.len() < left;
            for (storage_key, bytes) in batch {
                page.scanned_count += 1;
                // Items are decoded only to filter them and for the key of the
                // last one: a plain range read sends the stored bytes as they are.
                let keep = match filter {
                    None => true,
                    Some(f) => expr::evaluate(f, &Self::decode_stored(&bytes)?),
                };
                if keep {
                    page.bytes += bytes.len();
                }
                let stop = limit.is_some_and(|l| page.scanned_count >= l) || page.bytes >= PAGE_BYTES_MAX;
                if stop {
                    page.last_evaluated_key = Some(Self::key_of(def, &Self::decode_stored(&bytes)?));
                }
                if keep {
                    page.items.push(bytes);
                }
                if forward {
                    lo = Bound::Excluded(storage_key);
                } else {
                    hi = Bound::Excluded(storage_key);
                }
                if stop {
                    return Ok(true);
                }
            }
            if exhausted {
                return Ok(false);
            }
        }
    }

    /// Scan: every item of the table (segment `segment` of
    /// `total_segments`, each segment a set of partitions), in storage order.
    pub async fn scan(
        &mut self,
        table: &str,
        limit: Option<usize>,
        exclusive_start: Option<&Item>,
        segment: u32,
        total_segments: u32,
        filter: Option<&Condition>,
    ) -> Result<Page, EngineError> {
        let (partitions, mut after) = self.scan_plan(table, exclusive_start, segment, total_segments)?;
        let mut page = Page::default();
        for partition in partitions {
            if self.scan_partition(table, partition, after.take(), limit, filter, &mut page).await? {
                break;
            }
        }
        Ok(page)
    }

    /// The partitions a Scan segment reads, in order, and the storage key
    /// the first of them resumes after.
    pub fn scan_plan(
        &self,
        table: &str,
        exclusive_start: Option<&Item>,
        segment: u32,
        total_segments: u32,
    ) -> Result<(Vec<u64>, Option<Vec<u8>>), EngineError> {
        let def = self.table(table)?;
        let total = total_segments.max(1);
        if segment >= total {
            return Err(EngineError::Validation("Segment must be less than TotalSegments".into()));
        }
        let mut partitions: Vec<u64> =
            def.partition_ids().filter(|p| (p & 0xffff_ffff) % u64::from(total) == u64::from(segment)).collect();
        let mut after = None;
        if let Some(start) = exclusive_start {
            let (start_partition, start_key) = Self::locate(def, start)?;
            let Some(position) = partitions.iter().position(|p| *p == start_partition) else {
                return Err(EngineError::Validation("ExclusiveStartKey is not in this segment".into()));
            };
            partitions.drain(..position);
            after = Some(start_key);
        }
        Ok((partitions, after))
    }

    /// Reads one hosted partition of a Scan into `page` (which may hold
    /// items of earlier partitions), starting after `after`. Returns whether
    /// the page is full (then it has its `last_evaluated_key`). A read that
    /// fails on a page miss ([`Self::set_fetch_elsewhere`]) leaves `page` as
    /// it found it, for the part to be run again.
    pub async fn scan_partition(
        &mut self,
        table: &str,
        partition: u64,
        after: Option<Vec<u8>>,
        limit: Option<usize>,
        filter: Option<&Condition>,
        page: &mut Page,
    ) -> Result<bool, EngineError> {
        let def = Rc::clone(self.table(table)?);
        if !def.partition_ids().any(|p| p == partition) {
            return Err(EngineError::Internal(format!("partition {partition} is not part of table {table}")));
        }
        self.held(partition)?;
        self.settle(partition).await?;
        let range = (after.map_or(Bound::Unbounded, Bound::Excluded), Bound::Unbounded);
        let (items, scanned, bytes) = (page.items.len(), page.scanned_count, page.bytes);
        let last = page.last_evaluated_key.clone();
        let read = self.read_range(&def, partition, range, true, limit, filter, page).await;
        if self.store.has_missed() {
            // Run again once the page is fetched: from the page as it was.
            page.items.truncate(items);
            (page.scanned_count, page.bytes, page.last_evaluated_key) = (scanned, bytes, last);
        }
        read
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repl::ReplConfig;

    fn def(placement: Vec<Vec<u64>>) -> TableDef {
        TableDef {
            id: 3,
            name: "music".into(),
            partition_key: KeyDef { name: "artist".into(), key_type: KeyType::S },
            sort_key: None,
            partitions: 2,
            created_at_ms: 7,
            placement,
        }
    }

    #[test]
    fn a_catalog_record_keeps_its_placement_and_older_records_have_none() {
        for table in [def(Vec::new()), def(vec![vec![1, 2, 3], vec![4, 2, 3]])] {
            let record = table.to_json();
            assert_eq!(record.get("placement").is_some_and(|p| !p.is_null()), !table.placement.is_empty());
            assert_eq!(TableDef::from_json(&record), Some(table));
        }
        let mut bad = def(vec![vec![1, 2, 3]]).to_json();
        if let Some(placement) = bad.get_mut("placement") {
            *placement = serde_json::json!([["one"]]);
        }
        assert_eq!(TableDef::from_json(&bad), None, "a damaged placement is not read as none");
    }

    #[test]
    fn a_placement_names_three_members_in_three_zones_for_every_partition() {
        let spec = "n1=127.0.0.1:7419/az1,n2=127.0.0.1:7429/az2,n3=127.0.0.1:7439/az3,n4=127.0.0.1:7449/az1";
        let cluster = Cluster::parse(spec).expect("valid");
        let mut repl = Replication::new(ShardRaft::new(1, ReplConfig::default()), cluster);
        assert!(repl.check_placement(2, &[vec![4, 2, 3], vec![1, 2, 3]]).is_ok());
        for (partitions, placement) in [
            (2, vec![vec![1, 2, 3]]),    // one list short
            (1, vec![vec![1, 4, 3]]),    // n1 and n4 share az1
            (1, vec![vec![1, 2]]),       // two replicas
            (1, vec![vec![1, 2, 9]]),    // no node 9
            (1, vec![vec![1, 2, 3, 4]]), // four replicas
        ] {
            assert!(repl.check_placement(partitions, &placement).is_err(), "{placement:?}");
        }
        // Placed partitions start their groups on the named nodes; others rotate.
        let table = def(vec![vec![4, 2, 3], vec![1, 2, 3]]);
        let rotated = repl.members(0x0000_0009_0000_0000).0;
        repl.note_placement(&table);
        assert_eq!(repl.members(0x0000_0003_0000_0000).0, vec![4, 2, 3]);
        assert!(!repl.holds(0x0000_0003_0000_0000), "node 1 holds no replica of partition 0");
        assert!(repl.holds(0x0000_0003_0000_0001));
        assert_eq!(repl.members(0x0000_0009_0000_0000).0, rotated);
        // A dropped table's partitions are forgotten with it.
        let rotated = Replication::new(ShardRaft::new(1, ReplConfig::default()), repl.cluster.clone())
            .members(0x0000_0003_0000_0000)
            .0;
        repl.forget_placement(&table);
        assert_eq!(repl.members(0x0000_0003_0000_0000).0, rotated);
        assert_ne!(rotated, vec![4, 2, 3], "the rotation differs from the placement, so the check can fail");
    }
}

//! One shard's storage: the shard WAL, the page cache, and the partition
//! replicas (each a B-tree file plus its records in the WAL).
//!
//! # Durability order of a write
//!
//! 1. The mutation is validated (sizes) so that every logged record can be
//!    replayed.
//! 2. It is encoded into the shard WAL's pending batch ([`ShardStore::submit`]).
//! 3. Group commit writes the batch and fdatasyncs it; only then is the write
//!    durable ([`Wal::wait_durable`]).
//! 4. It is applied to the replica's B-tree in memory, in log-index order
//!    ([`ShardStore::apply_durable`]); readers see it from here on, and the
//!    caller may acknowledge it.
//! 5. A later checkpoint writes the tree's dirty pages and a meta page
//!    recording the last applied index. Inline (in `apply_durable`) or, with
//!    [`StoreConfig::background_checkpoints`], begun and finished by the
//!    owner while writes go on: records applied after a checkpoint began are
//!    not in it, and the WAL keeps them.
//! 6. Only after every replica on the shard has checkpointed past a WAL
//!    segment (its checkpoint durable, not merely begun) is that segment
//!    reclaimed ([`ShardStore::reclaim_watermark`]).
//!
//! Opening replays, for each replica, the WAL records whose index is above
//! the index its meta page records.
//!
//! # Replicated partitions
//!
//! A partition that is a Raft group (`repl`) logs no records of its own:
//! its mutations are the data of Raft entries, which the replication shell
//! logs in the same WAL (kinds 18 and 19, `repl::durable`) and hands here
//! once committed ([`ShardStore::apply_entry`]), in index order. The shell
//! tells the store where each entry went ([`ShardStore::note_logged`]), so
//! that WAL reclaim keeps every entry not yet in a durable checkpoint; the
//! checkpoint records the index and term of the last applied entry, where
//! the group's log restarts. Opening applies no Raft entries: it keeps
//! their records ([`ShardStore::take_raft_records`]) for the shell to
//! rebuild the logs from, and raft-rs hands the committed ones out again.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use crate::btree::page::{KEY_MAX_BYTES, VALUE_MAX_BYTES};
use crate::btree::{
    Applied, BTree, BTreeError, CheckpointWrite, Direction, FetchedPages, PageCache, PageFetch, Retired,
};
use crate::io::{Disk, DiskFile, IoError};
use crate::repl::durable::{KIND_RAFT_ENTRY, KIND_RAFT_GROUP_STATE, KIND_RAFT_HARD_STATE};
use crate::wal::{Lsn, Record, RecordMeta, USER_KIND_MIN, Wal, WalAppendError, WalConfig, WalOpenError};

/// WAL record kind of a put.
pub const KIND_PUT: u8 = USER_KIND_MIN;
/// WAL record kind of a delete.
pub const KIND_DELETE: u8 = USER_KIND_MIN + 1;
/// First byte of a Raft entry that changes which voters of a group are log
/// replicas (`[21][u8 count][count × u64 node]`); not a mutation.
pub const ENTRY_KIND_ROLES: u8 = USER_KIND_MIN + 5;

/// Settings of one shard's storage.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// The shard's data directory (`wal/` and `partitions/` live inside).
    pub dir: PathBuf,
    /// WAL settings.
    pub wal: WalConfig,
    /// Bytes of clean pages cached for all replicas of the shard.
    pub page_cache_bytes: usize,
    /// When the dirty B-tree pages of all replicas on the shard exceed this,
    /// the replica with the most dirty pages checkpoints.
    pub dirty_bytes_max: usize,
    /// When the WAL holds more segments than this, the replicas holding the
    /// oldest one checkpoint so it can be reclaimed.
    pub wal_segments_max: usize,
    /// Whether checkpoints run in the background: `apply_durable` then
    /// never checkpoints, and the owner runs [`ShardStore::checkpoint_due`]
    /// → [`ShardStore::begin_checkpoint`] → [`ReplicaCheckpoint::write`]
    /// (without holding the store) → [`ShardStore::finish_checkpoint`].
    /// Otherwise `apply_durable` checkpoints inline when the policy says so.
    pub background_checkpoints: bool,
}

impl StoreConfig {
    /// Defaults for a shard storing in `dir`.
    #[must_use]
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        const WAL_SEGMENTS_MAX: usize = 16;
        Self {
            dir: dir.into(),
            // Every segment a checkpoint round reclaims is kept for reuse:
            // the WAL grows back to the same size before the next round.
            // With 4 kept, 12 of 16 were deleted each round (ext4 mounted
            // with `discard` then trimmed 64 MiB per file, ~10 ms of the
            // device each, and WAL syncs beside them took 8–10 ms), and 12
            // were zero-filled again (768 MiB of writes) before the next.
            // A round reclaims more than `wal_segments_max`: the one that
            // started it and those filled while it ran. With exactly
            // `wal_segments_max` kept, every round deleted one or two (an
            // unlink of 51 ms, a WAL commit beside it 46 ms) and, as the
            // pool ran dry during the next round, zero-filled as many
            // again (64 MiB in ~240 ms each; YCSB A's p99 rose to 80–100
            // ms for those seconds). The WAL never holds more than twice
            // `wal_segments_max` (writers wait there), so this keeps every
            // one: the disk holds no more than at the WAL's peak.
            wal: WalConfig { recycle_pool_max: 2 * WAL_SEGMENTS_MAX, ..WalConfig::default() },
            page_cache_bytes: 256 * 1024 * 1024,
            dirty_bytes_max: 128 * 1024 * 1024,
            wal_segments_max: WAL_SEGMENTS_MAX,
            background_checkpoints: false,
        }
    }
}

/// A change to one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mutation<'a> {
    /// Insert or replace.
    Put {
        /// The key.
        key: &'a [u8],
        /// The value (opaque bytes; later the verified FlatBuffers item).
        value: &'a [u8],
    },
    /// Remove.
    Delete {
        /// The key.
        key: &'a [u8],
    },
}

impl<'a> Mutation<'a> {
    fn key(&self) -> &'a [u8] {
        match self {
            Self::Put { key, .. } | Self::Delete { key } => key,
        }
    }

    /// WAL kind and payload: put = `[u16 key_len LE][key][value]`, delete =
    /// `[key]` (see `docs/format/wal.md`).
    fn encode(&self) -> (u8, Vec<u8>) {
        match self {
            Self::Put { key, value } => {
                let mut payload = Vec::with_capacity(2 + key.len() + value.len());
                payload.extend_from_slice(&u16::try_from(key.len()).expect("key size validated").to_le_bytes());
                payload.extend_from_slice(key);
                payload.extend_from_slice(value);
                (KIND_PUT, payload)
            }
            Self::Delete { key } => (KIND_DELETE, key.to_vec()),
        }
    }

    /// The data of a Raft entry carrying this mutation: `[u8 kind][payload]`
    /// (see `docs/format/wal.md`).
    #[must_use]
    pub fn encode_entry(&self) -> Vec<u8> {
        let (kind, payload) = self.encode();
        let mut data = Vec::with_capacity(1 + payload.len());
        data.push(kind);
        data.extend_from_slice(&payload);
        data
    }

    /// Reads and checks the data of a Raft entry ([`Self::encode_entry`]):
    /// entries from peers are checked this way before raft-rs sees them.
    pub fn decode_entry(data: &'a [u8]) -> Result<Self, &'static str> {
        let (&kind, payload) = data.split_first().ok_or("empty entry data")?;
        let mutation = Self::decode(kind, payload)?;
        validate(&mutation).map_err(|_| "key or value outside the limits")?;
        Ok(mutation)
    }

    fn decode(kind: u8, payload: &'a [u8]) -> Result<Self, &'static str> {
        match kind {
            KIND_PUT => {
                let len_bytes = payload.get(..2).ok_or("put record shorter than its key length")?;
                let key_len = usize::from(u16::from_le_bytes([
                    *len_bytes.first().ok_or("short")?,
                    *len_bytes.get(1).ok_or("short")?,
                ]));
                let key = payload.get(2..2 + key_len).ok_or("put record shorter than its key")?;
                let value = payload.get(2 + key_len..).ok_or("put record shorter than its key")?;
                Ok(Self::Put { key, value })
            }
            KIND_DELETE => Ok(Self::Delete { key: payload }),
            _ => Err("unknown record kind"),
        }
    }
}

/// Failure to open the shard store.
#[derive(Debug, thiserror::Error)]
pub enum StoreOpenError {
    /// The WAL could not be recovered.
    #[error(transparent)]
    Wal(#[from] WalOpenError),
    /// A replica's B-tree could not be opened or replayed into.
    #[error("open partition {partition}: {source}")]
    Replica {
        /// Partition id.
        partition: u64,
        /// Cause.
        #[source]
        source: BTreeError,
    },
    /// A WAL record could not be replayed.
    #[error("replay WAL record at {lsn} for partition {partition}: {reason}")]
    Replay {
        /// Partition id.
        partition: u64,
        /// Where the record is.
        lsn: Lsn,
        /// What is wrong.
        reason: String,
    },
    /// The disk failed.
    #[error("open shard store: {0}")]
    Io(#[from] IoError),
}

/// Failure to write.
#[derive(Debug, thiserror::Error)]
pub enum StoreWriteError {
    /// The WAL refused or failed.
    #[error(transparent)]
    Wal(#[from] WalAppendError),
    /// The B-tree failed.
    #[error(transparent)]
    BTree(#[from] BTreeError),
    /// The disk failed.
    #[error("write: {0}")]
    Io(#[from] IoError),
    /// No such partition on this shard.
    #[error("partition {0} is not on this shard")]
    UnknownPartition(u64),
    /// The partition exists already.
    #[error("partition {0} exists already")]
    PartitionExists(u64),
    /// A committed Raft entry whose data is not a mutation.
    #[error("partition {partition}: Raft entry {index} is not a mutation: {reason}")]
    BadEntry {
        /// Partition id.
        partition: u64,
        /// The entry.
        index: u64,
        /// What is wrong.
        reason: &'static str,
    },
    /// Indexes must follow each other.
    #[error("partition {partition}: log index {got} does not follow {last}")]
    OutOfOrder {
        /// Partition id.
        partition: u64,
        /// Last index submitted.
        last: u64,
        /// Index offered.
        got: u64,
    },
    /// Key empty or above the limit.
    #[error("key of {len} bytes is outside 1..={max} bytes")]
    KeySize {
        /// Key length.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// Value above the limit.
    #[error("value of {len} bytes exceeds the limit of {max} bytes")]
    ValueTooLarge {
        /// Value length.
        len: usize,
        /// Limit.
        max: usize,
    },
}

/// Where a log-only group's records start, and (once the group became a
/// full replica) the index its tree must checkpoint past before they may go.
#[derive(Debug, Clone, Copy)]
struct KeptLog {
    from: Lsn,
    until_checkpointed: Option<u64>,
}

/// A submitted, not yet applied write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    /// Partition id.
    pub partition: u64,
    /// Log index.
    pub index: u64,
    /// WAL position; durable once `wal.wait_durable(lsn)` resolves.
    pub lsn: Lsn,
}

/// Checkpoints longer than this are logged at info level.
const SLOW_CHECKPOINT: std::time::Duration = std::time::Duration::from_millis(20);

fn log_checkpoint(partition: u64, bytes: usize, elapsed: std::time::Duration) {
    if elapsed >= SLOW_CHECKPOINT {
        tracing::info!(partition, bytes, ms = elapsed.as_millis(), "slow checkpoint");
    } else {
        tracing::debug!(partition, bytes, us = elapsed.as_micros(), "checkpoint");
    }
}

#[derive(Debug)]
struct Replica<D: Disk> {
    tree: BTree<D::File>,
    /// Last index submitted to the WAL.
    last_index: u64,
    /// Last index applied to the tree.
    applied_index: u64,
    /// Raft term of the entry at `applied_index` (0: standalone).
    applied_term: u64,
    /// Raft entries logged and not applied yet, by index: the WAL keeps them.
    logged: BTreeMap<u64, Lsn>,
    /// Submitted records waiting (in index order) to be applied.
    queued: BTreeMap<u64, (u8, Vec<u8>, Lsn)>,
    /// WAL position of the oldest record applied since the last checkpoint.
    oldest_unflushed: Option<Lsn>,
    /// While a checkpoint of this replica is written: the oldest record it
    /// covers (the WAL keeps it until the checkpoint is durable).
    checkpointing_from: Option<Lsn>,
}

/// What a finished background checkpoint leaves to its caller (see
/// [`ShardStore::finish_checkpoint`]).
#[derive(Debug)]
pub struct CheckpointDone {
    /// The WAL is needed from here on only: reclaim what lies below.
    pub reclaim_below: Lsn,
    /// The checkpoint's decoded nodes, to free.
    pub retired: Retired,
}

/// The applied index of each replica of a shard when it was taken
/// ([`ShardStore::quiet_watch`]), in partition order.
#[derive(Debug, Default)]
pub struct QuietWatch {
    seen: Vec<(u64, u64)>,
}

/// A replica's checkpoint being written; see
/// [`StoreConfig::background_checkpoints`].
#[derive(Debug)]
#[must_use = "a begun checkpoint must be written and finished"]
pub struct ReplicaCheckpoint<F: DiskFile> {
    partition: u64,
    job: CheckpointWrite<F>,
    began: std::time::Instant,
    /// How long step 1 took (it holds the shard's engine).
    begin_us: u128,
}

impl<F: DiskFile> ReplicaCheckpoint<F> {
    /// Encodes up to `pages_max` pages; true once all are (see
    /// [`CheckpointWrite::prepare`]). Needs no access to the store.
    pub fn prepare(&mut self, pages_max: usize) -> bool {
        self.job.prepare(pages_max)
    }

    /// Writes the prepared checkpoint with at most `writes_in_flight_max`
    /// requests at once; needs no access to the store.
    pub async fn write(&self, writes_in_flight_max: usize) -> Result<(), BTreeError> {
        self.job.write(writes_in_flight_max).await
    }

    /// The replica being checkpointed.
    pub fn partition(&self) -> u64 {
        self.partition
    }
}

/// One shard's storage. See the module docs.
#[derive(Debug)]
pub struct ShardStore<D: Disk> {
    disk: D,
    config: StoreConfig,
    wal: Rc<Wal<D>>,
    cache: Rc<RefCell<PageCache>>,
    replicas: BTreeMap<u64, Replica<D>>,
    /// Raft records recovered at open, for the replication shell.
    raft_records: Vec<Record>,
    /// Log-only groups (no B-tree here): the WAL keeps everything from
    /// their first record on, until the group is removed.
    kept_logs: BTreeMap<u64, KeptLog>,
}

fn partition_file_name(partition: u64) -> String {
    format!("p-{partition:016x}.btree")
}

fn parse_partition_file_name(name: &str) -> Option<u64> {
    let hex = name.strip_prefix("p-")?.strip_suffix(".btree")?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

fn validate(mutation: &Mutation<'_>) -> Result<(), StoreWriteError> {
    let key = mutation.key();
    if key.is_empty() || key.len() > KEY_MAX_BYTES {
        return Err(StoreWriteError::KeySize { len: key.len(), max: KEY_MAX_BYTES });
    }
    if let Mutation::Put { value, .. } = mutation
        && value.len() > VALUE_MAX_BYTES
    {
        return Err(StoreWriteError::ValueTooLarge { len: value.len(), max: VALUE_MAX_BYTES });
    }
    Ok(())
}

impl<D: Disk> ShardStore<D> {
    /// Opens (or creates) the shard's storage and replays the WAL.
    pub async fn open(disk: D, config: StoreConfig) -> Result<Self, StoreOpenError> {
        let partitions_dir = config.dir.join("partitions");
        disk.create_dir_all(&partitions_dir).await?;
        // Replay one WAL segment at a time, so recovery memory is bounded by
        // a segment, not by the whole log.
        let mut recovery = Wal::recover(disk.clone(), &config.dir.join("wal"), config.wal.clone()).await?;
        let cache = Rc::new(RefCell::new(PageCache::new(config.page_cache_bytes)));
        let mut replicas = BTreeMap::new();
        for name in disk.list(&partitions_dir).await? {
            let Some(partition) = parse_partition_file_name(&name) else { continue };
            let file = disk.open(&partitions_dir.join(&name), false).await?;
            let tree = BTree::open(file, partition, Rc::clone(&cache))
                .await
                .map_err(|source| StoreOpenError::Replica { partition, source })?;
            let applied = tree.applied();
            let replica = Replica {
                tree,
                last_index: applied.index,
                applied_index: applied.index,
                applied_term: applied.term,
                logged: BTreeMap::new(),
                queued: BTreeMap::new(),
                oldest_unflushed: None,
                checkpointing_from: None,
            };
            replicas.insert(partition, replica);
        }
        let mut raft_records = Vec::new();
        while let Some(records) = recovery.next_segment().await? {
            for record in records {
                if let Some(record) = replay(&mut replicas, record).await? {
                    raft_records.push(record);
                }
            }
        }
        let wal = recovery.finish().await?;
        Ok(Self { disk, config, wal: Rc::new(wal), cache, replicas, raft_records, kept_logs: BTreeMap::new() })
    }
}

/// Applies one recovered WAL record to its replica, if it is newer than the
/// replica's checkpoint; a Raft record is handed back (for the shell to
/// rebuild its logs from; a partition without a B-tree file may be a group
/// this node keeps only the log of).
async fn replay<D: Disk>(
    replicas: &mut BTreeMap<u64, Replica<D>>,
    record: Record,
) -> Result<Option<Record>, StoreOpenError> {
    {
        let partition = record.meta.partition;
        let raft_kind = matches!(record.meta.kind, KIND_RAFT_ENTRY | KIND_RAFT_HARD_STATE | KIND_RAFT_GROUP_STATE);
        let Some(replica) = replicas.get_mut(&partition) else {
            // A partition's file is durable before any of its records is
            // acknowledged, so records without a file belong to a dropped
            // partition (or, Raft's, to a log replica).
            tracing::debug!(partition, lsn = %record.lsn, "WAL record of a partition without a B-tree");
            return Ok(raft_kind.then_some(record));
        };
        let index = record.meta.index;
        match record.meta.kind {
            KIND_RAFT_ENTRY => {
                if index > replica.applied_index {
                    note_logged(replica, index, record.lsn);
                }
                return Ok(Some(record));
            }
            KIND_RAFT_HARD_STATE | KIND_RAFT_GROUP_STATE => return Ok(Some(record)),
            _ => {}
        }
        if index <= replica.applied_index {
            return Ok(None); // already in the checkpointed tree
        }
        let replay_error = |reason: String| StoreOpenError::Replay { partition, lsn: record.lsn, reason };
        if index != replica.applied_index + 1 {
            return Err(replay_error(format!("index {index} does not follow {}", replica.applied_index)));
        }
        let mutation = Mutation::decode(record.meta.kind, &record.payload).map_err(|r| replay_error(r.to_owned()))?;
        apply_to_tree(&mut replica.tree, mutation)
            .await
            .map_err(|source| StoreOpenError::Replica { partition, source })?;
        replica.applied_index = index;
        replica.last_index = index;
        replica.oldest_unflushed.get_or_insert(record.lsn);
        Ok(None)
    }
}

/// Records where a Raft entry was logged; a later entry at the same index
/// (a new leader's) replaces it and everything after it.
fn note_logged<D: Disk>(replica: &mut Replica<D>, index: u64, lsn: Lsn) {
    let _replaced = replica.logged.split_off(&index);
    replica.logged.insert(index, lsn);
}

impl<D: Disk> ShardStore<D> {
    /// Creates an empty partition replica on this shard; durable on return.
    pub async fn create_partition(&mut self, partition: u64) -> Result<(), StoreWriteError> {
        if self.replicas.contains_key(&partition) {
            return Err(StoreWriteError::PartitionExists(partition));
        }
        let dir = self.config.dir.join("partitions");
        let path = dir.join(partition_file_name(partition));
        if self.disk.exists(&path).await? {
            return Err(StoreWriteError::PartitionExists(partition));
        }
        let file = self.disk.open(&path, true).await?;
        let tree = BTree::create(file, partition, Rc::clone(&self.cache)).await?;
        // The file's directory entry must be durable before any record of
        // the partition is acknowledged.
        self.disk.sync_dir(&dir).await?;
        let replica = Replica {
            tree,
            last_index: 0,
            applied_index: 0,
            applied_term: 0,
            logged: BTreeMap::new(),
            queued: BTreeMap::new(),
            oldest_unflushed: None,
            checkpointing_from: None,
        };
        self.replicas.insert(partition, replica);
        Ok(())
    }

    /// Removes a partition replica and its file, durably. Its records left in
    /// the WAL are skipped on replay (partition ids are never reused).
    pub async fn drop_partition(&mut self, partition: u64) -> Result<(), StoreWriteError> {
        if self.replicas.remove(&partition).is_none() {
            return Err(StoreWriteError::UnknownPartition(partition));
        }
        self.cache.borrow_mut().remove_file(partition);
        let dir = self.config.dir.join("partitions");
        self.disk.remove(&dir.join(partition_file_name(partition))).await?;
        self.disk.sync_dir(&dir).await?;
        self.reclaim_wal().await
    }

    /// Steps 1–2 of the durability order: validates and logs a mutation at
    /// `index` (which must follow the last one submitted). Wait for
    /// `ticket.lsn` with [`Wal::wait_durable`], then call
    /// [`ShardStore::apply_durable`].
    pub fn submit(
        &mut self,
        partition: u64,
        term: u64,
        index: u64,
        mutation: Mutation<'_>,
    ) -> Result<Ticket, StoreWriteError> {
        validate(&mutation)?;
        let replica = self.replicas.get_mut(&partition).ok_or(StoreWriteError::UnknownPartition(partition))?;
        if index != replica.last_index + 1 {
            return Err(StoreWriteError::OutOfOrder { partition, last: replica.last_index, got: index });
        }
        let (kind, payload) = mutation.encode();
        let lsn = self.wal.submit(RecordMeta { partition, term, index, kind }, &payload)?;
        replica.last_index = index;
        replica.queued.insert(index, (kind, payload, lsn));
        Ok(Ticket { partition, index, lsn })
    }

    /// The Raft records recovered when the store opened (once).
    pub fn take_raft_records(&mut self) -> Vec<Record> {
        std::mem::take(&mut self.raft_records)
    }

    /// A group this node keeps only the log of has a record at `lsn`: the
    /// WAL keeps its records from the first one on (a log replica applies
    /// nothing and checkpoints nothing).
    pub fn keep_log_from(&mut self, partition: u64, lsn: Lsn) {
        let kept = self.kept_logs.entry(partition).or_insert(KeptLog { from: lsn, until_checkpointed: None });
        kept.from = kept.from.min(lsn);
    }

    /// The log-only group became a full replica: its records are needed
    /// until its tree's checkpoint holds `index` (the log's last entry when
    /// it changed; the ones after it are noted as usual).
    pub fn keep_log_until_checkpointed(&mut self, partition: u64, index: u64) {
        if let Some(kept) = self.kept_logs.get_mut(&partition) {
            kept.until_checkpointed = Some(index);
        }
    }

    /// The kept logs still needed.
    fn kept_floors(&self) -> impl Iterator<Item = Lsn> + '_ {
        self.kept_logs.iter().filter_map(|(partition, kept)| {
            let checkpointed = self.replicas.get(partition).map(|r| r.tree.applied_index());
            let done = kept.until_checkpointed.zip(checkpointed).is_some_and(|(until, at)| at >= until);
            (!done).then_some(kept.from)
        })
    }

    /// The log-only group is gone: its records may be reclaimed.
    pub fn release_log(&mut self, partition: u64) {
        self.kept_logs.remove(&partition);
    }

    /// A Raft entry of `partition` at `index` was submitted to the WAL at
    /// `lsn`: the WAL keeps it until it is applied and checkpointed.
    pub fn note_logged(&mut self, partition: u64, index: u64, lsn: Lsn) -> Result<(), StoreWriteError> {
        let replica = self.replicas.get_mut(&partition).ok_or(StoreWriteError::UnknownPartition(partition))?;
        note_logged(replica, index, lsn);
        Ok(())
    }

    /// Applies a committed Raft entry of a replicated partition (durable in
    /// this WAL: raft-rs hands out only persisted entries). Entries come in
    /// index order; empty data (a new leader's entry) changes nothing but
    /// the applied position.
    pub async fn apply_entry(
        &mut self,
        partition: u64,
        index: u64,
        term: u64,
        data: &[u8],
    ) -> Result<(), StoreWriteError> {
        let replica = self.replicas.get_mut(&partition).ok_or(StoreWriteError::UnknownPartition(partition))?;
        if index != replica.applied_index + 1 {
            return Err(StoreWriteError::OutOfOrder { partition, last: replica.applied_index, got: index });
        }
        if !data.is_empty() {
            let mutation = Mutation::decode_entry(data).map_err(|reason| StoreWriteError::BadEntry {
                partition,
                index,
                reason,
            })?;
            apply_to_tree(&mut replica.tree, mutation).await?;
        }
        // The entry's record (and any replaced one below it) is needed until
        // this replica's next checkpoint is durable; if it was not noted,
        // the lowest position keeps every segment.
        let mut rest = replica.logged.split_off(&(index + 1));
        std::mem::swap(&mut rest, &mut replica.logged);
        let lsn = rest.values().min().copied().unwrap_or(Lsn::new(0, 0));
        replica.oldest_unflushed.get_or_insert(lsn);
        replica.applied_index = index;
        replica.applied_term = term;
        replica.last_index = replica.last_index.max(index);
        Ok(())
    }

    /// The position (index and term) of the last entry applied to a
    /// partition's tree.
    #[must_use]
    pub fn applied(&self, partition: u64) -> Option<Applied> {
        self.replicas.get(&partition).map(|r| Applied { index: r.applied_index, term: r.applied_term })
    }

    /// The position a partition's last durable checkpoint holds.
    #[must_use]
    pub fn checkpointed(&self, partition: u64) -> Option<Applied> {
        self.replicas.get(&partition).map(|r| r.tree.applied())
    }

    /// Step 4: applies every durable, queued record of the ticket's partition
    /// up to the ticket, in index order.
    pub async fn apply_durable(&mut self, ticket: Ticket) -> Result<(), StoreWriteError> {
        assert!(self.wal.durable_lsn() > ticket.lsn, "apply_durable before the record is durable");
        let replica =
            self.replicas.get_mut(&ticket.partition).ok_or(StoreWriteError::UnknownPartition(ticket.partition))?;
        while replica.applied_index < ticket.index {
            let Some((index, (kind, payload, lsn))) = replica.queued.pop_first() else { break };
            assert_eq!(index, replica.applied_index + 1, "queued records are consecutive");
            let mutation = Mutation::decode(kind, &payload).expect("we encoded it");
            apply_to_tree(&mut replica.tree, mutation).await?;
            replica.applied_index = index;
            replica.oldest_unflushed.get_or_insert(lsn);
        }
        if self.config.background_checkpoints {
            return Ok(());
        }
        if self.dirty_bytes() > self.config.dirty_bytes_max {
            let dirtiest = self.replicas.iter().max_by_key(|(_, r)| r.tree.dirty_bytes()).map(|(p, _)| *p);
            if let Some(partition) = dirtiest {
                self.checkpoint(partition).await?;
            }
        }
        if self.checkpointable_segments() > self.config.wal_segments_max {
            self.checkpoint_oldest().await?;
        }
        Ok(())
    }

    /// Dirty B-tree bytes of all replicas.
    pub fn dirty_bytes(&self) -> usize {
        self.replicas.values().map(|r| r.tree.dirty_bytes()).sum()
    }

    /// WAL segments a checkpoint could free: those below every log-only
    /// group's first record (a log replica keeps its log whatever the trees
    /// checkpoint, so its segments neither call for checkpoints nor slow
    /// writers down; the WAL grows until the log replica leaves).
    fn checkpointable_segments(&self) -> usize {
        match self.kept_floors().map(Lsn::segment).min() {
            None => self.wal.segment_count(),
            Some(floor) => self.wal.segments().iter().filter(|&&s| s < floor).count(),
        }
    }

    /// The checkpoint policy, for background checkpoints: the replica that
    /// should checkpoint now, if any. None while one is being written.
    pub fn checkpoint_due(&self) -> Option<u64> {
        if self.replicas.values().any(|r| r.tree.checkpoint_in_flight()) {
            return None;
        }
        if self.dirty_bytes() > self.config.dirty_bytes_max {
            return self.replicas.iter().max_by_key(|(_, r)| r.tree.dirty_bytes()).map(|(p, _)| *p);
        }
        if self.checkpointable_segments() > self.config.wal_segments_max {
            let oldest_segment = self.wal.segments().first().copied().unwrap_or(0);
            return self
                .replicas
                .iter()
                .find(|(_, r)| r.oldest_unflushed.is_some_and(|lsn| lsn.segment() <= oldest_segment))
                .map(|(p, _)| *p);
        }
        None
    }

    /// Where writes stand now, for a later [`ShardStore::quiet_checkpoint_due`]:
    /// the applied index of every replica on the shard.
    #[must_use]
    pub fn quiet_watch(&self) -> QuietWatch {
        QuietWatch { seen: self.replicas.iter().map(|(p, r)| (*p, r.applied_index)).collect() }
    }

    /// A replica to checkpoint because the shard's writes stopped: no
    /// replica applied anything since `seen` was taken (and none came or
    /// went), and this one, the dirtiest, has dirty pages. The caller decides
    /// how long ago that must be (the server:
    /// `NodeConfig::quiet_checkpoint_after`). None while a checkpoint is
    /// being written.
    ///
    /// Why: reads of a dirty page search its decoded node, one heap pointer
    /// per entry and a hash lookup per level; a checkpoint turns the pages
    /// into clean cached pages that reads search in place, with the keys'
    /// prefixes side by side. YCSB C after A read at 4.9–5.3 µs of the
    /// shard per read through dirty nodes and 3.8–4.3 µs through clean
    /// pages (docs/bench/history.md). The WAL behind the checkpoints is
    /// reclaimed too, so a restart after a quiet spell replays little.
    ///
    /// Why the whole shard: a partition written to now and then (a write
    /// every second or two) would otherwise be checkpointed after nearly
    /// every write, a few pages and two syncs each time, however busy the
    /// shard. Waiting for the shard to go quiet (InnoDB's idle flushing
    /// waits for an idle server alike) bounds that to one round per quiet
    /// spell.
    #[must_use]
    pub fn quiet_checkpoint_due(&self, seen: &QuietWatch) -> Option<u64> {
        if self.checkpoint_in_flight() {
            return None;
        }
        let unchanged = self.replicas.len() == seen.seen.len()
            && self
                .replicas
                .iter()
                .zip(&seen.seen)
                .all(|((p, r), &(q, applied))| *p == q && r.applied_index == applied);
        if !unchanged {
            return None;
        }
        self.replicas
            .iter()
            .filter(|(_, r)| r.tree.dirty_bytes() > 0)
            .max_by_key(|(_, r)| r.tree.dirty_bytes())
            .map(|(p, _)| *p)
    }

    /// Whether background work is due: a checkpoint, or a spare WAL segment.
    pub fn background_work_due(&self) -> bool {
        self.wal.wants_spare_segment() || self.checkpoint_due().is_some()
    }

    /// Whether writers should wait for the background checkpoint: dirty
    /// pages or WAL segments at twice their limits (memory and disk stay
    /// bounded when writes outrun checkpoints).
    pub fn checkpoint_backlogged(&self) -> bool {
        self.dirty_bytes() > self.config.dirty_bytes_max.saturating_mul(2)
            || self.checkpointable_segments() > self.config.wal_segments_max.saturating_mul(2)
    }

    /// Whether a checkpoint is being written.
    pub fn checkpoint_in_flight(&self) -> bool {
        self.replicas.values().any(|r| r.tree.checkpoint_in_flight())
    }

    /// Step 1 of a background checkpoint (no I/O): see
    /// [`BTree::begin_checkpoint`].
    pub fn begin_checkpoint(&mut self, partition: u64) -> Result<ReplicaCheckpoint<D::File>, StoreWriteError> {
        let began = std::time::Instant::now();
        let replica = self.replicas.get_mut(&partition).ok_or(StoreWriteError::UnknownPartition(partition))?;
        let applied = Applied { index: replica.applied_index, term: replica.applied_term };
        let job = replica.tree.begin_checkpoint(applied)?;
        replica.checkpointing_from = replica.oldest_unflushed.take();
        Ok(ReplicaCheckpoint { partition, job, began, begin_us: began.elapsed().as_micros() })
    }

    /// Step 3 of a background checkpoint: `written` is what
    /// [`ReplicaCheckpoint::write`] returned. Returns the WAL position below
    /// which nothing is needed any more, which the caller reclaims with
    /// [`Wal::reclaim_below`] (file renames and directory syncs, which need
    /// not hold up the store), and the tree's retired nodes, which it frees
    /// when it suits it (see [`Retired`]). A checkpoint of a replica dropped
    /// meanwhile is discarded.
    pub fn finish_checkpoint(
        &mut self,
        checkpoint: ReplicaCheckpoint<D::File>,
        written: Result<(), BTreeError>,
    ) -> Result<CheckpointDone, StoreWriteError> {
        let ReplicaCheckpoint { partition, job, began, begin_us } = checkpoint;
        let mut retired = Retired::default();
        if let Some(replica) = self.replicas.get_mut(&partition).filter(|r| r.tree.owns(&job)) {
            let bytes = job.bytes();
            retired = replica.tree.finish_checkpoint(job, written)?;
            replica.checkpointing_from = None;
            log_checkpoint(partition, bytes, began.elapsed());
            tracing::debug!(partition, begin_us, "checkpoint step 1 (engine held)");
        }
        Ok(CheckpointDone { reclaim_below: self.reclaim_watermark(), retired })
    }

    /// Logs, waits for durability, and applies one mutation. Returns when the
    /// write is durable and visible.
    pub async fn apply(
        &mut self,
        partition: u64,
        term: u64,
        index: u64,
        mutation: Mutation<'_>,
    ) -> Result<(), StoreWriteError> {
        let ticket = self.submit(partition, term, index, mutation)?;
        self.wal.wait_durable(ticket.lsn).await?;
        self.apply_durable(ticket).await
    }

    /// Logs several mutations of one partition and commits them with one
    /// WAL write (group commit). Returns the last index.
    pub async fn apply_batch(
        &mut self,
        partition: u64,
        term: u64,
        mutations: &[Mutation<'_>],
    ) -> Result<u64, StoreWriteError> {
        let mut last = None;
        for mutation in mutations {
            let index = self.last_index(partition)? + 1;
            last = Some(self.submit(partition, term, index, *mutation)?);
        }
        let Some(ticket) = last else { return self.last_index(partition) };
        self.wal.wait_durable(ticket.lsn).await?;
        self.apply_durable(ticket).await?;
        Ok(ticket.index)
    }

    /// Convenience for a standalone replica: put at the next index.
    pub async fn put(&mut self, partition: u64, key: &[u8], value: &[u8]) -> Result<u64, StoreWriteError> {
        let index = self.last_index(partition)? + 1;
        self.apply(partition, 0, index, Mutation::Put { key, value }).await?;
        Ok(index)
    }

    /// Convenience for a standalone replica: delete at the next index.
    pub async fn delete(&mut self, partition: u64, key: &[u8]) -> Result<u64, StoreWriteError> {
        let index = self.last_index(partition)? + 1;
        self.apply(partition, 0, index, Mutation::Delete { key }).await?;
        Ok(index)
    }

    /// Checkpoints one replica, then reclaims WAL segments nobody needs.
    pub async fn checkpoint(&mut self, partition: u64) -> Result<(), StoreWriteError> {
        self.checkpoint_replica(partition).await?;
        self.reclaim_wal().await
    }

    /// Checkpoints one replica at its applied index; its WAL records are no
    /// longer needed (the caller reclaims).
    async fn checkpoint_replica(&mut self, partition: u64) -> Result<(), StoreWriteError> {
        let replica = self.replicas.get_mut(&partition).ok_or(StoreWriteError::UnknownPartition(partition))?;
        let (dirty_bytes, began) = (replica.tree.dirty_bytes(), std::time::Instant::now());
        replica.tree.checkpoint(Applied { index: replica.applied_index, term: replica.applied_term }).await?;
        replica.oldest_unflushed = None;
        log_checkpoint(partition, dirty_bytes, began.elapsed());
        Ok(())
    }

    /// Checkpoints every replica.
    pub async fn checkpoint_all(&mut self) -> Result<(), StoreWriteError> {
        let partitions: Vec<u64> = self.replicas.keys().copied().collect();
        for partition in partitions {
            self.checkpoint_replica(partition).await?;
        }
        self.reclaim_wal().await
    }

    async fn checkpoint_oldest(&mut self) -> Result<(), StoreWriteError> {
        let oldest_segment = self.wal.segments().first().copied().unwrap_or(0);
        let holders: Vec<u64> = self
            .replicas
            .iter()
            .filter(|(_, r)| r.oldest_unflushed.is_some_and(|lsn| lsn.segment() <= oldest_segment))
            .map(|(p, _)| *p)
            .collect();
        for partition in holders {
            self.checkpoint_replica(partition).await?;
        }
        self.reclaim_wal().await
    }

    async fn reclaim_wal(&mut self) -> Result<(), StoreWriteError> {
        let watermark = self.reclaim_watermark();
        self.wal.reclaim_below(watermark).await?;
        Ok(())
    }

    /// The WAL position below which no record is needed: every replica has
    /// it in a durable checkpoint. It only rises.
    pub fn reclaim_watermark(&self) -> Lsn {
        // Records submitted but not yet applied are needed too: they are in
        // no tree yet.
        let queued = self.replicas.values().filter_map(|r| r.queued.first_key_value().map(|(_, (_, _, lsn))| *lsn));
        let logged = self.replicas.values().filter_map(|r| r.logged.values().min().copied());
        self.replicas
            .values()
            .flat_map(|r| [r.oldest_unflushed, r.checkpointing_from])
            .flatten()
            .chain(queued)
            .chain(logged)
            .chain(self.kept_floors())
            .min()
            .unwrap_or_else(|| self.wal.next_lsn())
    }

    /// The value under `key` in `partition`.
    pub async fn get(&self, partition: u64, key: &[u8]) -> Result<Option<Vec<u8>>, StoreReadError> {
        let replica = self.replicas.get(&partition).ok_or(StoreReadError::UnknownPartition(partition))?;
        Ok(replica.tree.get(key).await?)
    }

    /// Calls `f` with the value under `key`, borrowed from the page cache when
    /// possible (no copy).
    pub async fn get_with<R>(
        &self,
        partition: u64,
        key: &[u8],
        f: impl FnOnce(Option<&[u8]>) -> R,
    ) -> Result<R, StoreReadError> {
        let replica = self.replicas.get(&partition).ok_or(StoreReadError::UnknownPartition(partition))?;
        Ok(replica.tree.get_with(key, f).await?)
    }

    /// Up to `limit` entries of `partition` between the bounds.
    pub async fn scan(
        &self,
        partition: u64,
        lo: Bound<&[u8]>,
        hi: Bound<&[u8]>,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreReadError> {
        let replica = self.replicas.get(&partition).ok_or(StoreReadError::UnknownPartition(partition))?;
        Ok(replica.tree.scan(lo, hi, direction, limit).await?)
    }

    /// Last index submitted for `partition`.
    pub fn last_index(&self, partition: u64) -> Result<u64, StoreWriteError> {
        self.replicas.get(&partition).map(|r| r.last_index).ok_or(StoreWriteError::UnknownPartition(partition))
    }

    /// Last index applied (visible) for `partition`.
    #[must_use]
    pub fn applied_index(&self, partition: u64) -> Option<u64> {
        self.replicas.get(&partition).map(|r| r.applied_index)
    }

    /// The last submitted, not yet applied write of a partition.
    #[must_use]
    pub fn last_queued(&self, partition: u64) -> Option<Ticket> {
        let replica = self.replicas.get(&partition)?;
        let (index, (_, _, lsn)) = replica.queued.last_key_value()?;
        Some(Ticket { partition, index: *index, lsn: *lsn })
    }

    /// Partitions on this shard.
    #[must_use]
    pub fn partitions(&self) -> Vec<u64> {
        self.replicas.keys().copied().collect()
    }

    /// The shard WAL (for waiting on tickets).
    #[must_use]
    pub fn wal(&self) -> Rc<Wal<D>> {
        Rc::clone(&self.wal)
    }

    /// The shard page cache.
    #[must_use]
    pub fn cache(&self) -> Rc<RefCell<PageCache>> {
        Rc::clone(&self.cache)
    }

    /// Whether reads fail on a page miss instead of reading the disk, and
    /// record the page for [`Self::take_page_fetch`] (`btree::cache` docs).
    pub fn set_defer_misses(&self, on: bool) {
        self.cache.borrow_mut().set_defer_misses(on);
    }

    /// Whether a read failed on a deferred miss not taken yet.
    #[must_use]
    pub fn has_missed(&self) -> bool {
        self.cache.borrow().has_missed()
    }

    /// The page a read missed with misses deferred, to be read without the
    /// store (None if none, or if its partition is gone already).
    pub fn take_page_fetch(&self) -> Option<PageFetch<D::File>> {
        let (partition, pages) = self.cache.borrow_mut().take_missed()?;
        Some(self.replicas.get(&partition)?.tree.page_fetch(pages))
    }

    /// Caches a page read by a [`PageFetch`] (see [`BTree::cache_fetched`]);
    /// dropped if its partition is gone.
    pub fn cache_fetched(&self, fetched: FetchedPages<D::File>) {
        if let Some(replica) = self.replicas.get(&fetched.file_id()) {
            replica.tree.cache_fetched(fetched);
        }
    }

    /// The data directory.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.config.dir
    }

    fn building_path(&self, partition: u64) -> PathBuf {
        self.config.dir.join("partitions").join(format!("{}.building", partition_file_name(partition)))
    }

    /// Starts building a partition's B-tree from a snapshot, in a file of
    /// its own (any earlier, unfinished one is dropped): the caller fills
    /// and checkpoints it without the store, then installs it with
    /// [`Self::install_built`].
    pub async fn begin_building(&mut self, partition: u64) -> Result<BTree<D::File>, StoreWriteError> {
        if self.replicas.contains_key(&partition) {
            return Err(StoreWriteError::PartitionExists(partition));
        }
        let path = self.building_path(partition);
        if self.disk.exists(&path).await? {
            self.disk.remove(&path).await?;
        }
        let file = self.disk.open(&path, true).await?;
        Ok(BTree::create(file, partition, Rc::clone(&self.cache)).await?)
    }

    /// Makes a built (and checkpointed) B-tree the partition's replica:
    /// renames its file into place durably and opens it at the position its
    /// checkpoint records.
    pub async fn install_built(&mut self, partition: u64) -> Result<(), StoreWriteError> {
        if self.replicas.contains_key(&partition) {
            return Err(StoreWriteError::PartitionExists(partition));
        }
        let dir = self.config.dir.join("partitions");
        let path = self.partition_path(partition);
        self.disk.rename(&self.building_path(partition), &path).await?;
        self.disk.sync_dir(&dir).await?;
        let file = self.disk.open(&path, false).await?;
        let tree = BTree::open(file, partition, Rc::clone(&self.cache)).await?;
        let applied = tree.applied();
        let replica = Replica {
            tree,
            last_index: applied.index,
            applied_index: applied.index,
            applied_term: applied.term,
            logged: BTreeMap::new(),
            queued: BTreeMap::new(),
            oldest_unflushed: None,
            checkpointing_from: None,
        };
        self.replicas.insert(partition, replica);
        Ok(())
    }

    /// Path of a partition's B-tree file.
    #[must_use]
    pub fn partition_path(&self, partition: u64) -> PathBuf {
        self.config.dir.join("partitions").join(partition_file_name(partition))
    }
}

/// Failure to read.
#[derive(Debug, thiserror::Error)]
pub enum StoreReadError {
    /// The B-tree failed (I/O or a corrupt page).
    #[error(transparent)]
    BTree(#[from] BTreeError),
    /// No such partition on this shard.
    #[error("partition {0} is not on this shard")]
    UnknownPartition(u64),
}

async fn apply_to_tree<F: crate::io::DiskFile>(tree: &mut BTree<F>, mutation: Mutation<'_>) -> Result<(), BTreeError> {
    match mutation {
        Mutation::Put { key, value } => tree.put(key, value).await,
        Mutation::Delete { key } => tree.delete(key).await.map(|_| ()),
    }
}

#[cfg(test)]
mod tests {
    use futures_lite::future::block_on;

    use super::*;
    use crate::io::sim::SimDisk;

    #[test]
    fn a_shard_that_applied_nothing_since_the_watch_checkpoints_its_dirty_replicas_dirtiest_first() {
        let disk = SimDisk::new(11);
        block_on(async {
            let mut store = ShardStore::open(disk.clone(), StoreConfig::new("/s")).await.expect("open");
            for p in [1, 2, 3] {
                store.create_partition(p).await.expect("create");
            }
            store.checkpoint(3).await.expect("checkpoint");
            for i in 0..10 {
                store.put(1, format!("a{i}").as_bytes(), &[1; 3000]).await.expect("put");
            }
            for i in 0..40 {
                store.put(2, format!("b{i}").as_bytes(), &[2; 3000]).await.expect("put");
            }
            let seen = store.quiet_watch();
            assert_eq!(store.quiet_checkpoint_due(&seen), Some(2), "the dirtiest replica first");
            // A write to any replica means the shard is not quiet: not even
            // the others are checkpointed.
            store.put(3, b"c", &[3; 10]).await.expect("put");
            assert_eq!(store.quiet_checkpoint_due(&seen), None, "3 applied a write since the watch");
            let seen = store.quiet_watch();
            assert_eq!(store.quiet_checkpoint_due(&seen), Some(2));
            let mut job = store.begin_checkpoint(2).expect("begin");
            assert_eq!(store.quiet_checkpoint_due(&seen), None, "one checkpoint at a time");
            while !job.prepare(4) {}
            let written = job.write(2).await;
            store.finish_checkpoint(job, written).expect("finish");
            // The same watch names the others in turn: a checkpoint applies
            // nothing.
            assert_eq!(store.quiet_checkpoint_due(&seen), Some(1), "1 has more dirty pages than 3");
            store.checkpoint(1).await.expect("checkpoint");
            assert_eq!(store.quiet_checkpoint_due(&seen), Some(3));
            store.checkpoint(3).await.expect("checkpoint");
            assert_eq!(store.quiet_checkpoint_due(&seen), None, "nothing is dirty");
            // A partition created since the watch is a change too.
            store.create_partition(4).await.expect("create");
            assert_eq!(store.quiet_checkpoint_due(&seen), None);
            store.put(4, b"d", &[4; 10]).await.expect("put");
            assert_eq!(store.quiet_checkpoint_due(&store.quiet_watch()), Some(4));
        });
    }

    #[test]
    fn a_kept_log_holds_its_wal_segments_until_released_without_backlogging_writers() {
        let disk = SimDisk::new(3);
        let mut config = StoreConfig::new("/s");
        config.wal = WalConfig {
            segment_size_bytes: 64 * 1024,
            payload_max_bytes: 16 * 1024,
            zero_fill: false,
            ..WalConfig::default()
        };
        config.wal_segments_max = 2;
        block_on(async {
            let mut store = ShardStore::open(disk.clone(), config).await.expect("open");
            store.create_partition(1).await.expect("create");
            let first = store.wal().next_lsn();
            store.keep_log_from(9, first);
            for i in 0..300 {
                store.put(1, format!("k{i}").as_bytes(), &[7; 1000]).await.expect("put");
            }
            store.checkpoint_all().await.expect("checkpoint");
            assert!(store.wal().segment_count() > 4, "the kept log holds {} segments", store.wal().segment_count());
            assert!(store.reclaim_watermark() <= first);
            assert!(!store.checkpoint_backlogged(), "a log replica's segments do not slow writers down");
            assert_eq!(store.checkpoint_due(), None);
            store.release_log(9);
            store.checkpoint_all().await.expect("checkpoint");
            assert!(store.wal().segment_count() <= 2, "released: {} segments", store.wal().segment_count());
        });
    }

    #[test]
    fn a_checkpoint_round_keeps_every_segment_it_reclaims_for_reuse() {
        // Deleting reclaimed segments cost a discard of each on ext4 mounted
        // with `discard` and a zero-fill of a new one later (StoreConfig::new).
        let disk = SimDisk::new(5);
        let mut config = StoreConfig::new("/s");
        config.wal.segment_size_bytes = 64 * 1024;
        config.wal.payload_max_bytes = 16 * 1024;
        config.wal.zero_fill = false;
        // Nothing checkpoints until the test says so.
        config.background_checkpoints = true;
        assert!(
            config.wal.recycle_pool_max >= 2 * config.wal_segments_max,
            "the defaults keep every segment up to where writers wait"
        );
        let segments_max = config.wal_segments_max;
        block_on(async {
            let mut store = ShardStore::open(disk.clone(), config).await.expect("open");
            store.create_partition(1).await.expect("create");
            // A round that starts late (checkpoints were busy) reclaims more
            // than `wal_segments_max`: all of them are kept too.
            for i in 0..10_000 {
                if store.wal().segment_count() > segments_max + 3 {
                    break;
                }
                store.put(1, format!("k{}", i % 50).as_bytes(), &[7; 1000]).await.expect("put");
            }
            let before = store.wal().segment_count();
            store.checkpoint_all().await.expect("checkpoint");
            let after = store.wal().segment_count();
            let names = disk.list(Path::new("/s/wal")).await.expect("list");
            let spares = names.iter().filter(|n| n.starts_with("wal-free-")).count();
            assert!(before - after > segments_max + 1, "the round reclaimed {} segments", before - after);
            assert_eq!(spares, before - after, "every reclaimed segment is a spare: {names:?}");
        });
    }
}

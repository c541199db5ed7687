//! The replication shell of keel-node (glommio): what drives each shard's
//! Raft groups ([`crate::repl::ShardRaft`], held by the shard's engine) in a
//! cluster.
//!
//! - **Driver.** One task per shard ticks the groups every
//!   [`ClusterConfig::tick`] and handles each [`crate::repl::ReadyBatch`] in
//!   the order its docs give: leadership changes drop the overlay of
//!   proposals; messages that may leave now go to the peers' queues; the
//!   batch's entries and hard states go into the shard WAL (one group
//!   commit, with the records of every group); committed entries (durable
//!   here already) are applied and the writes waiting for them answered;
//!   then, once the WAL write is durable, the messages that promised it
//!   (votes, append acknowledgements) leave. The engine is held only to
//!   gather and apply, never across the WAL wait.
//! - **Peers.** Every shard accepts peer connections on the node's
//!   replication address (SO_REUSEPORT) and routes each message to the shard
//!   hosting its partition (over the channel mesh when it is another). For
//!   every other node each shard keeps one outgoing connection, fed by a
//!   bounded queue: when the queue is full or the peer unreachable, messages
//!   are dropped, which Raft tolerates (it retries), and memory stays
//!   bounded. Frames carry Keel's envelope (`docs/format/raft.md`); entries
//!   from peers are checked to be mutations before raft-rs sees them.
//! - **Healing.** Each tick the driver looks at the groups this node leads:
//!   a voter not heard from for [`HEAL_AFTER`] is replaced, in one joint
//!   configuration change, by a log replica on a reachable member outside
//!   the group (preferring a zone the other voters are not in). The log
//!   replica's node starts the group when the leader first contacts it, and
//!   its rebuild task turns it into a full replica from a snapshot of the
//!   leader's B-tree ([`snapshot`]), after which the leader's roles entry
//!   takes it off the log replicas.
//! - **Waiting.** A replicated write is answered once the entry at its index
//!   is applied: with success if that entry has the proposal's term, as a
//!   retryable failure if another entry took its place, and as an error of
//!   unknown outcome after [`WRITE_WAIT_MAX`]. A strongly consistent read
//!   first gets the group's read index (at once under the leader's lease,
//!   else confirmed by a quorum) and waits until it is applied.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::net::{TcpListener, TcpStream};
use keel_wire::frame::{FRAME_BODY_MAX_BYTES, FrameDecoder, encode_frame};
use keel_wire::raft::MESSAGES_PER_BATCH_MAX;
use raft::eraftpb::{EntryType, MessageType};
use rustc_hash::FxHashMap;

use super::{Message, READ_CHUNK_BYTES, Shard};

mod snapshot;
use crate::engine::{EngineError, Replication};
use crate::repl::membership::{Cluster, Member};
use crate::repl::{GroupWrite, Outgoing, ReadPath, ReplConfig, ShardRaft, durable, envelope};
use crate::replica::Mutation;
use crate::wal::Notify;

/// How long a replicated write waits for its entry to be applied before it
/// is answered with an error of unknown outcome.
pub const WRITE_WAIT_MAX: Duration = Duration::from_secs(10);
/// How long a strongly consistent read waits for its read index and for the
/// group to apply it.
pub const READ_WAIT_MAX: Duration = Duration::from_secs(5);
/// Messages queued to one peer by one shard; more are dropped.
const PEER_QUEUE_MAX: usize = 8192;
/// Entry bytes per frame to a peer (the frame limit is 17 MiB).
const PEER_FRAME_ENTRY_BYTES_MAX: usize = 8 * 1024 * 1024;
/// After a failed connection attempt, the pause before the next one.
const PEER_RECONNECT_AFTER: Duration = Duration::from_millis(100);
/// How long connecting to a peer may take.
const PEER_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// A leader keeps log entries a follower still needs unless it is this far
/// behind (it will need a snapshot then).
pub const LOG_RETAIN_ENTRIES_MAX: u64 = 100_000;

/// What makes a node part of a cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Every member, as `--initial-cluster` names them.
    pub cluster: Cluster,
    /// This node's name in it (`--node-id`).
    pub node: String,
    /// The Raft tick (heartbeats and elections are counted in ticks).
    pub tick: Duration,
    /// Raft settings.
    pub repl: ReplConfig,
    /// How long a group's leader waits for a silent voter before replacing
    /// it with a log replica itself (`None`: never; a control plane asks
    /// for replacements instead, with `ReplaceReplica`). Default:
    /// [`HEAL_AFTER`].
    pub heal_after: Option<Duration>,
}

impl ClusterConfig {
    /// Defaults for member `node` of `cluster`: 100 ms ticks, so heartbeats
    /// every 200 ms and elections after 1 to 2 s of silence.
    #[must_use]
    pub fn new(cluster: Cluster, node: impl Into<String>) -> Self {
        Self {
            cluster,
            node: node.into(),
            tick: Duration::from_millis(100),
            repl: ReplConfig::default(),
            heal_after: Some(HEAL_AFTER),
        }
    }

    /// This node's member entry.
    pub fn member(&self) -> anyhow::Result<&Member> {
        Ok(self.cluster.member(&self.node)?)
    }
}

/// A replicated write's outcome as the driver saw it.
type WriteWaiter = (u64, LocalSender<bool>);

/// One shard's replication state beside its engine.
pub(super) struct ReplShell {
    node_id: u64,
    tick: Duration,
    /// [`ClusterConfig::heal_after`].
    heal_after: Option<Duration>,
    /// Where this node serves clients (told to peers for leader hints).
    endpoint: RefCell<String>,
    /// Wakes the driver: a proposal, a message, a read to confirm.
    pub(super) wake: Notify,
    /// After every pass that applied entries.
    applied: Notify,
    /// Writes waiting for (partition, index) to be applied.
    writes: RefCell<FxHashMap<(u64, u64), Vec<WriteWaiter>>>,
    /// Reads waiting for their read index, by context.
    reads: RefCell<FxHashMap<u64, LocalSender<u64>>>,
    next_read: Cell<u64>,
    /// Outgoing queues by node id.
    peers: RefCell<FxHashMap<u64, LocalSender<Outgoing>>>,
    /// Since when each peer of a group this node leads has been silent.
    inactive_since: RefCell<FxHashMap<(u64, u64), Instant>>,
    /// Whether the last connection attempt to each peer succeeded.
    reachable: RefCell<FxHashMap<u64, bool>>,
    /// Fired once client connections are drained: the driver and the peer
    /// connections stop.
    pub(super) stopping: super::StopSignal,
}

impl std::fmt::Debug for ReplShell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplShell").field("node_id", &self.node_id).finish_non_exhaustive()
    }
}

impl ReplShell {
    pub(super) fn new(node_id: u64, tick: Duration, heal_after: Option<Duration>) -> Self {
        Self {
            node_id,
            tick,
            heal_after,
            endpoint: RefCell::new(String::new()),
            wake: Notify::default(),
            applied: Notify::default(),
            writes: RefCell::new(FxHashMap::default()),
            reads: RefCell::new(FxHashMap::default()),
            next_read: Cell::new(1),
            peers: RefCell::new(FxHashMap::default()),
            inactive_since: RefCell::new(FxHashMap::default()),
            reachable: RefCell::new(FxHashMap::default()),
            stopping: super::StopSignal::default(),
        }
    }

    pub(super) fn set_endpoint(&self, endpoint: String) {
        *self.endpoint.borrow_mut() = endpoint;
    }

    /// Registers waiters for proposals (while the engine is held, so that
    /// the driver cannot apply them first).
    pub(super) fn register(&self, proposals: &[(u64, crate::repl::Proposal)]) -> Vec<LocalReceiver<bool>> {
        let mut writes = self.writes.borrow_mut();
        proposals
            .iter()
            .map(|(partition, proposal)| {
                let (tx, rx) = local_channel::new_bounded(1);
                writes.entry((*partition, proposal.index)).or_default().push((proposal.term, tx));
                rx
            })
            .collect()
    }

    fn send(&self, messages: Vec<Outgoing>) {
        let peers = self.peers.borrow();
        for out in messages {
            if let Some(queue) = peers.get(&out.message.to) {
                // A full queue or a stopped sender drops the message: Raft
                // sends it again.
                let _ = queue.try_send(out);
            }
        }
    }
}

/// How a set of replicated writes ended.
pub(super) enum WriteOutcome {
    /// Every entry applied with its proposal's term.
    Done,
    /// Some entry was replaced by another leader's: not written.
    Failed,
    /// No answer in time: the write may or may not happen.
    Unknown,
}

/// Waits for every write of a request.
pub(super) async fn wait_writes(shell: &ReplShell, waits: Vec<LocalReceiver<bool>>) -> WriteOutcome {
    shell.wake.notify_all();
    let deadline = Instant::now() + WRITE_WAIT_MAX;
    let mut outcome = WriteOutcome::Done;
    for rx in waits {
        let left = deadline.saturating_duration_since(Instant::now());
        let got = futures_lite::future::or(rx.recv(), async {
            glommio::timer::sleep(left).await;
            None
        })
        .await;
        match got {
            Some(true) => {}
            Some(false) => outcome = WriteOutcome::Failed,
            None => return WriteOutcome::Unknown,
        }
    }
    outcome
}

impl Shard {
    fn shell(&self) -> &ReplShell {
        self.repl.as_ref().expect("called in cluster mode only")
    }

    /// Confirms that this replica may serve a strongly consistent read of
    /// `partition` now, and waits until it has applied everything committed
    /// before the read began.
    pub(super) async fn read_barrier(&self, partition: u64) -> Result<(), EngineError> {
        let shell = self.shell();
        let id = shell.next_read.get();
        shell.next_read.set(id + 1);
        let pending = {
            let mut engine = self.engine.write().await.map_err(|e| EngineError::Internal(e.to_string()))?;
            let Some(raft) = engine.raft_mut() else { return Ok(()) };
            match raft.read_index(partition, id.to_le_bytes().to_vec()) {
                Ok(ReadPath::Lease { index }) => Err(index),
                Ok(ReadPath::Quorum) => {
                    let (tx, rx) = local_channel::new_bounded(1);
                    shell.reads.borrow_mut().insert(id, tx);
                    Ok(rx)
                }
                Err(e) => return Err(engine.propose_error(e)),
            }
        };
        let deadline = Instant::now() + READ_WAIT_MAX;
        let index = match pending {
            Err(index) => index,
            Ok(rx) => {
                shell.wake.notify_all();
                let got = futures_lite::future::or(rx.recv(), async {
                    glommio::timer::sleep(READ_WAIT_MAX).await;
                    None
                })
                .await;
                shell.reads.borrow_mut().remove(&id);
                got.ok_or_else(|| {
                    EngineError::Unavailable(format!("partition {partition:#x}: leadership not confirmed in time"))
                })?
            }
        };
        loop {
            let applied = shell.applied.notified();
            let now_applied = match self.engine.read().await {
                Ok(engine) => engine.applied_index(partition).unwrap_or(0),
                Err(e) => return Err(EngineError::Internal(e.to_string())),
            };
            if now_applied >= index {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(EngineError::Unavailable(format!("partition {partition:#x}: not caught up in time")));
            }
            futures_lite::future::or(applied, glommio::timer::sleep(left)).await;
        }
    }
}

/// The driver task of a shard (module docs).
pub(super) async fn driver(shard: Rc<Shard>) {
    let shell = shard.shell();
    let mut next_tick = Instant::now() + shell.tick;
    loop {
        // Made before the pass, so that a wake-up during it is not missed.
        let woken = shell.wake.notified();
        if shell.stopping.is_fired() {
            break;
        }
        let tick = Instant::now() >= next_tick;
        if tick {
            next_tick = Instant::now() + shell.tick;
        }
        match drive_once(&shard, tick).await {
            Ok(true) => continue,
            Ok(false) => {}
            Err(e) => {
                // The WAL failed (it is poisoned): this shard cannot persist
                // Raft state any more; its writes fail and say so.
                tracing::error!(shard = shard.index, error = %e, "replication driver failed");
                futures_lite::future::or(glommio::timer::sleep(super::BACKGROUND_RETRY_AFTER), shell.stopping.wait())
                    .await;
                continue;
            }
        }
        let left = next_tick.saturating_duration_since(Instant::now());
        futures_lite::future::or(woken, futures_lite::future::or(glommio::timer::sleep(left), shell.stopping.wait()))
            .await;
    }
}

/// One pass: handles one ready batch, if there is one. Returns whether
/// there was.
pub(super) async fn drive_once(shard: &Shard, tick: bool) -> Result<bool, String> {
    let shell = shard.shell();
    let mut engine = shard.engine.write().await.map_err(|e| e.to_string())?;
    let Some(raft) = engine.raft_mut() else { return Ok(false) };
    if tick {
        raft.tick();
        heal(shell, &mut engine, Instant::now());
    }
    let Some(raft) = engine.raft_mut() else { return Ok(false) };
    if !raft.has_ready() {
        return Ok(false);
    }
    let batch = raft.ready();
    for (partition, status) in &batch.changes {
        engine.leadership_changed(*partition);
        tracing::info!(
            shard = shard.index,
            partition = format!("{partition:#x}"),
            role = ?status.role,
            leader = status.leader,
            term = status.term,
            "leadership"
        );
    }
    shell.send(batch.send);
    let wal = engine.wal();
    let mut logged = Vec::new();
    let lsn = durable::submit(&wal, &batch.writes, |p, i, lsn| logged.push((p, i, lsn))).map_err(|e| e.to_string())?;
    for (partition, index, lsn) in logged {
        if engine.raft().is_some_and(|r| r.is_log_only(partition)) {
            engine.store_mut().keep_log_from(partition, lsn);
        } else {
            // A group removed meanwhile has nothing to keep.
            let _ = engine.store_mut().note_logged(partition, index, lsn);
        }
    }
    let mut catalog_changed = false;
    let mut states = Vec::new();
    for committed in &batch.committed {
        let applied =
            engine.apply_committed(committed.partition, &committed.entries).await.map_err(|e| e.to_string())?;
        catalog_changed |= applied.catalog_changed;
        states.extend(applied.states);
        let mut writes = shell.writes.borrow_mut();
        for entry in &committed.entries {
            for (term, tx) in writes.remove(&(committed.partition, entry.index)).unwrap_or_default() {
                let _ = tx.try_send(term == entry.term);
            }
        }
    }
    for (_, read) in batch.reads {
        let id = read.context.get(..8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes);
        if let Some(tx) = id.and_then(|id| shell.reads.borrow_mut().remove(&id)) {
            let _ = tx.try_send(read.index);
        }
    }
    if !states.is_empty() {
        // A configuration change is durable before anything (a checkpoint
        // past its entry) could make the entry's replay unnecessary.
        if let Some(lsn) = durable::submit(&wal, &states, |_, _, _| {}).map_err(|e| e.to_string())? {
            wal.wait_durable(lsn).await.map_err(|e| e.to_string())?;
        }
        leave_groups_left(&mut engine, &states);
    }
    let background = engine.store_mut().background_work_due();
    let tables = catalog_changed.then(|| engine.tables());
    drop(engine);
    if !batch.committed.is_empty() {
        shell.applied.notify_all();
    }
    if background {
        shard.background_wanted.notify_all();
    }
    if let Some(tables) = tables {
        reconcile_shards(shard, &tables).await;
    }
    if let Some(lsn) = lsn {
        wal.wait_durable(lsn).await.map_err(|e| e.to_string())?;
    }
    let mut engine = shard.engine.write().await.map_err(|e| e.to_string())?;
    let after = engine.raft_mut().map(|raft| raft.persisted(batch.token)).unwrap_or_default();
    drop(engine);
    shell.send(after);
    Ok(true)
}

/// After configuration changes: a log-only group that no longer names this
/// node is dropped, and its records may be reclaimed.
fn leave_groups_left(engine: &mut crate::engine::Engine<crate::io::glommio_disk::GlommioDisk>, states: &[GroupWrite]) {
    let Some(me) = engine.raft().map(ShardRaft::node_id) else { return };
    for write in states {
        let Some(state) = &write.state else { continue };
        let cs = &state.conf_state;
        let member = [&cs.voters, &cs.voters_outgoing, &cs.learners, &cs.learners_next].iter().any(|l| l.contains(&me));
        if !member && engine.raft().is_some_and(|r| r.is_log_only(write.partition)) {
            if let Some(raft) = engine.raft_mut() {
                raft.remove_group(write.partition);
            }
            engine.store_mut().release_log(write.partition);
            tracing::info!(partition = format!("{:#x}", write.partition), "no longer a log replica");
        }
    }
}

/// How long a peer of a group this node leads may stay unheard from before
/// the leader replaces it with a log replica (the default of
/// [`ClusterConfig::heal_after`]).
pub const HEAL_AFTER: Duration = Duration::from_secs(3);

/// The leader's healing (`repl` docs): a voter of a group this node leads
/// that has been silent for [`HEAL_AFTER`] is replaced, in one joint
/// configuration change, by a log replica on a member outside the group,
/// preferring a zone that none of the remaining voters is in.
fn heal(shell: &ReplShell, engine: &mut crate::engine::Engine<crate::io::glommio_disk::GlommioDisk>, now: Instant) {
    let Some(heal_after) = shell.heal_after else { return };
    let Some(cluster) = engine.cluster().cloned() else { return };
    let Some(raft) = engine.raft_mut() else { return };
    let mut since = shell.inactive_since.borrow_mut();
    for partition in raft.partitions() {
        if partition == crate::engine::CATALOG_PARTITION || raft.is_log_only(partition) {
            continue;
        }
        let inactive = raft.inactive_peers(partition);
        since.retain(|(p, node), _| *p != partition || inactive.contains(node));
        for &node in &inactive {
            since.entry((partition, node)).or_insert(now);
        }
        if raft.writable(partition).is_err() || raft.conf_change_pending(partition) {
            continue;
        }
        let silent = |node: &u64| since.get(&(partition, *node)).is_some_and(|t| now.duration_since(*t) >= heal_after);
        let voters = raft.voters(partition);
        let Some(dead) = inactive.iter().copied().find(|n| silent(n) && voters.contains(n)) else { continue };
        let zone = |id: u64| cluster.members().iter().find(|m| m.id == id).map(|m| m.az.clone());
        let healthy_zones: Vec<Option<String>> = voters.iter().filter(|&&v| v != dead).map(|&v| zone(v)).collect();
        let reachable = shell.reachable.borrow();
        let spare = cluster
            .members()
            .iter()
            .filter(|m| !voters.contains(&m.id) && reachable.get(&m.id) != Some(&false))
            .min_by_key(|m| (healthy_zones.contains(&Some(m.az.clone())), m.id));
        let Some(spare) = spare.map(|m| m.id) else { continue };
        drop(reachable);
        match raft.propose_replacement(partition, dead, spare) {
            Ok(()) => tracing::warn!(
                partition = format!("{partition:#x}"),
                unreachable = dead,
                log_replica = spare,
                "replacing an unreachable replica with a log replica"
            ),
            Err(e) => tracing::debug!(partition, error = %e, "could not propose a replacement"),
        }
        since.remove(&(partition, dead));
    }
}

/// (Shard 0.) The replicated catalog changed: the node's other shards take
/// the new catalog (their partitions and groups follow). One-way and in
/// order: each shard's mesh channel delivers the changes as they were made.
async fn reconcile_shards(shard: &Shard, tables: &[crate::engine::TableDef]) {
    for peer in 1..shard.shards {
        if shard.senders.send_to(peer as usize, Message::Reconcile(tables.to_vec())).await.is_err() {
            tracing::warn!(peer, "could not pass a catalog change to a shard: mesh closed");
        }
    }
}

/// Starts the outgoing queue and sender task of every other member.
pub(super) fn start_peers(shard: &Rc<Shard>, cluster: &Cluster) -> Vec<glommio::Task<()>> {
    let shell = shard.shell();
    let mut tasks = Vec::new();
    for member in cluster.members().iter().filter(|m| m.id != shell.node_id) {
        let (tx, rx) = local_channel::new_bounded(PEER_QUEUE_MAX);
        shell.peers.borrow_mut().insert(member.id, tx);
        let shard = Rc::clone(shard);
        let (id, addr) = (member.id, member.addr);
        tasks.push(glommio::spawn_local(async move { peer_sender(&shard, id, addr, rx).await }));
    }
    tasks
}

/// Stops the senders: their queues close, and each ends.
pub(super) fn stop_peers(shard: &Shard) {
    shard.shell().peers.borrow_mut().clear();
}

async fn peer_sender(shard: &Shard, node: u64, addr: SocketAddr, rx: LocalReceiver<Outgoing>) {
    let shell = shard.shell();
    let mut stream: Option<TcpStream> = None;
    let mut out = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut messages = vec![first];
        while messages.len() < MESSAGES_PER_BATCH_MAX {
            match futures_lite::future::poll_once(rx.recv()).await {
                Some(Some(more)) => messages.push(more),
                _ => break,
            }
        }
        if stream.is_none() {
            match TcpStream::connect_timeout(addr, PEER_CONNECT_TIMEOUT).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    stream = Some(s);
                    shell.reachable.borrow_mut().insert(node, true);
                }
                Err(e) => {
                    shell.reachable.borrow_mut().insert(node, false);
                    tracing::debug!(peer = %addr, error = %e, "peer unreachable; dropping its messages");
                    glommio::timer::sleep(PEER_RECONNECT_AFTER).await;
                    continue;
                }
            }
        }
        out.clear();
        let endpoint = shell.endpoint.borrow().clone();
        let mut chunk: Vec<keel_wire::raft::RaftMessage<'_>> = Vec::new();
        let mut chunk_bytes = 0;
        for out_message in &messages {
            let wire = envelope::to_wire(out_message);
            let bytes: usize = wire.entries.iter().map(|e| e.data.len() + 64).sum::<usize>() + 128;
            if !chunk.is_empty() && chunk_bytes + bytes > PEER_FRAME_ENTRY_BYTES_MAX {
                encode_frame(&keel_wire::raft::encode_batch(shell.node_id, &endpoint, &chunk), &mut out);
                chunk.clear();
                chunk_bytes = 0;
            }
            chunk_bytes += bytes;
            chunk.push(wire);
        }
        if !chunk.is_empty() {
            encode_frame(&keel_wire::raft::encode_batch(shell.node_id, &endpoint, &chunk), &mut out);
        }
        drop(chunk);
        if let Some(s) = stream.as_mut()
            && let Err(e) = s.write_all(&out).await
        {
            tracing::debug!(peer = %addr, error = %e, "peer connection lost");
            stream = None;
            shell.reachable.borrow_mut().insert(node, false);
        }
    }
}

/// Accepts peer connections until replication stops.
pub(super) async fn accept_peers(shard: Rc<Shard>, listener: TcpListener) {
    let shell = shard.shell();
    loop {
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            shell.stopping.wait().await;
            None
        })
        .await;
        match accepted {
            Some(Ok(stream)) => {
                let shard = Rc::clone(&shard);
                glommio::spawn_local(async move {
                    if let Err(e) = peer_connection(shard, stream).await {
                        tracing::debug!(error = %e, "peer connection closed");
                    }
                })
                .detach();
            }
            Some(Err(e)) => tracing::warn!(error = %e, "accepting a peer failed"),
            None => break,
        }
    }
}

async fn peer_connection(shard: Rc<Shard>, mut stream: TcpStream) -> Result<(), String> {
    let shell = shard.shell();
    let decoder = FrameDecoder::new(FRAME_BODY_MAX_BYTES);
    let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK_BYTES);
    let mut chunk = vec![0u8; READ_CHUNK_BYTES];
    loop {
        let mut consumed = 0;
        loop {
            let rest = buf.get(consumed..).unwrap_or(&[]);
            let Some(span) = decoder.decode(rest).map_err(|e| e.to_string())? else { break };
            let body = rest.get(span.body_start..span.end).unwrap_or(&[]);
            if body.starts_with(snapshot::REQUEST_MAGIC) {
                // A snapshot stream: served in the low-share queue, on this
                // connection, which it takes over.
                let request = snapshot::Request::decode(body).map_err(str::to_owned)?;
                return snapshot::serve_in_background(shard, stream, request).await;
            }
            if body.starts_with(snapshot::DONE_MAGIC) {
                let done = snapshot::Done::decode(body).map_err(str::to_owned)?;
                consumed += span.end;
                snapshot::rebuilt(&shard, done).await;
                continue;
            }
            let routed = route_batch(&shard, body)?;
            consumed += span.end;
            deliver(&shard, routed).await;
        }
        buf.drain(..consumed);
        let read = futures_lite::future::or(async { Some(stream.read(&mut chunk).await) }, async {
            shell.stopping.wait().await;
            None
        })
        .await;
        match read {
            None | Some(Ok(0)) => return Ok(()),
            Some(Ok(n)) => buf.extend_from_slice(chunk.get(..n).unwrap_or(&[])),
            Some(Err(e)) if e.kind() == ErrorKind::Interrupted => {}
            Some(Err(e)) => return Err(e.to_string()),
        }
    }
}

/// A peer's messages for each shard of this node, with the sender.
struct Routed {
    from: u64,
    endpoint: String,
    by_shard: BTreeMap<u32, Vec<Outgoing>>,
}

/// Verifies a frame body from a peer and sorts its messages by shard. A
/// body that is not an envelope closes the connection; a message that is
/// not acceptable (a local type, another sender, an entry that is not a
/// mutation) is dropped.
fn route_batch(shard: &Shard, body: &[u8]) -> Result<Routed, String> {
    let batch = keel_wire::raft::decode_batch(body).map_err(|e| e.to_string())?;
    let placement = crate::engine::Placement { shard: shard.index, shards: shard.shards };
    let mut by_shard: BTreeMap<u32, Vec<Outgoing>> = BTreeMap::new();
    for wire in &batch.messages {
        let out = match envelope::from_wire(wire) {
            Ok(out) => out,
            Err(e) => {
                tracing::warn!(from = batch.from_node, error = %e, "refusing a peer's message");
                continue;
            }
        };
        if out.message.from != batch.from_node || out.message.to != shard.shell().node_id {
            tracing::warn!(from = batch.from_node, "refusing a message not from its sender or not for this node");
            continue;
        }
        let bad_entry = out.message.get_entries().iter().find_map(|e| {
            let normal = e.get_entry_type() == EntryType::EntryNormal;
            let data = e.get_data();
            let roles = data.split_first().is_some_and(|(kind, rest)| {
                *kind == crate::replica::ENTRY_KIND_ROLES && durable::decode_log_replicas(rest).is_some()
            });
            (normal && !data.is_empty() && !roles).then(|| Mutation::decode_entry(data).err()).flatten()
        });
        if let Some(reason) = bad_entry {
            tracing::warn!(from = batch.from_node, reason, "refusing a message whose entry is not a mutation");
            continue;
        }
        by_shard.entry(placement.shard_of(out.partition)).or_default().push(out);
    }
    Ok(Routed { from: batch.from_node, endpoint: batch.from_endpoint.to_owned(), by_shard })
}

async fn deliver(shard: &Shard, routed: Routed) {
    let Routed { from, endpoint, by_shard } = routed;
    for (target, messages) in by_shard {
        if target == shard.index {
            step_here(shard, from, &endpoint, messages).await;
        } else {
            let message = Message::Raft { from, endpoint: endpoint.clone(), messages };
            if shard.senders.send_to(target as usize, message).await.is_err() {
                tracing::debug!(target, "mesh closed; dropping peer messages");
            }
        }
    }
}

/// Hands a peer's messages to this shard's groups.
pub(super) async fn step_here(shard: &Shard, from: u64, endpoint: &str, messages: Vec<Outgoing>) {
    let Ok(mut engine) = shard.engine.write().await else { return };
    if let Some(repl) = engine.replication_mut()
        && !endpoint.is_empty()
        && repl.endpoint(from) != Some(endpoint)
    {
        repl.set_endpoint(from, endpoint.to_owned());
    }
    let wal = engine.wal();
    for out in &messages {
        // A leader contacts a member it added as a log replica: start the
        // group here (logged, so that a restart finds it again).
        let contact = matches!(
            out.message.get_msg_type(),
            MessageType::MsgAppend | MessageType::MsgHeartbeat | MessageType::MsgSnapshot
        );
        if contact && engine.may_keep_log_of(out.partition) && engine.placed_on(out.partition, from) {
            match engine.create_log_group(out.partition) {
                Ok(write) => match durable::submit(&wal, std::slice::from_ref(&write), |_, _, _| {}) {
                    Ok(Some(lsn)) => engine.store_mut().keep_log_from(out.partition, lsn),
                    Ok(None) => {}
                    Err(e) => tracing::error!(error = %e, "could not log a new log replica"),
                },
                Err(e) => tracing::error!(error = %e, "could not start a log replica"),
            }
        }
    }
    if let Some(raft) = engine.raft_mut() {
        for out in messages {
            // Refusals (a group this node does not have yet, a stale
            // message) are Raft's business: the sender tries again.
            match raft.step(out.partition, out.message) {
                Ok(()) => {}
                Err(e @ crate::repl::StepError::SnapshotForFullReplica(_)) => {
                    tracing::warn!(from, error = %e, "replica left behind");
                }
                Err(e) => tracing::trace!(from, error = %e, "message not taken"),
            }
        }
    }
    drop(engine);
    shard.shell().wake.notify_all();
}

pub(super) use snapshot::{ChunkRead, read_chunk, rebuild_log_replicas};

/// The engine's replication for member `config.node` of the cluster.
pub(super) fn replication(config: &ClusterConfig) -> anyhow::Result<Replication> {
    let member = config.member()?;
    Ok(Replication::new(ShardRaft::new(member.id, config.repl.clone()), config.cluster.clone()))
}

/// Hard states of every group, logged again before WAL segments are
/// reclaimed (see `docs/format/wal.md`), and the checkpointed group's log
/// compacted in memory.
///
/// The states are submitted while the engine is held: the driver logs a
/// group's newer hard state only under the engine too, so these copies
/// can never land in the WAL after a newer one (recovery refuses a hard
/// state whose term goes back; a restart after an election failed so).
pub(super) async fn before_reclaim(shard: &Shard, partition: u64) -> Result<(), String> {
    let (lsn, wal) = {
        let mut engine = shard.engine.write().await.map_err(|e| e.to_string())?;
        let checkpointed = engine.store_mut().checkpointed(partition).map_or(0, |a| a.index);
        let Some(raft) = engine.raft_mut() else { return Ok(()) };
        raft.compact(partition, checkpointed, LOG_RETAIN_ENTRIES_MAX);
        let writes = raft.hard_states();
        let wal = engine.wal();
        (durable::submit(&wal, &writes, |_, _, _| {}).map_err(|e| e.to_string())?, wal)
    };
    if let Some(lsn) = lsn {
        wal.wait_durable(lsn).await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

//! A seeded, deterministic cluster simulator (STYLE rule 2).
//!
//! It runs the replication logic of several nodes ([`ShardRaft`], one shard
//! per node, several partitions each) against a simulated clock, network and
//! disk, and a few clients, all driven from one event queue and one random
//! number generator seeded by the run's seed. The same seed replays exactly.
//!
//! Faults, drawn from the seed, while clients run:
//! - the network loses, duplicates, delays and so reorders messages between
//!   nodes, and partitions them, one way or both;
//! - nodes crash, now and then in the middle of a WAL write (which is then
//!   torn at sector granularity by the simulated disk, [`SimDisk`]);
//!   everything in memory is lost, and so are records submitted but not yet
//!   written; they restart later and recover from what their disk holds.
//!
//! Each node persists its groups' Raft state in a real shard WAL ([`Wal`],
//! with the records of [`super::durable`]) on its own [`SimDisk`], and
//! rebuilds its logs from the recovered WAL when it restarts.
//!
//! Then the faults stop, every node is up and the network heals, and the
//! simulator checks:
//! - every key's history (writes and strongly consistent reads, as clients
//!   saw them) is linearizable ([`check`]);
//! - every acknowledged write is in the converged state;
//! - no two nodes led the same group in the same term;
//! - every replica of every group has applied the same entries and holds the
//!   same content.
//!
//! A violation names the seed. [`PlantedBug`] switches on a known bug, so
//! that tests can show the simulator finds it.

pub mod check;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::fmt;
use std::path::Path;

use futures_lite::future::block_on;

use raft::eraftpb::Entry;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::log::GroupLog;
use super::shard::{Outgoing, PersistToken, Proposal, ProposeError, ReadPath, ReplConfig, Role, ShardRaft};
use super::{durable, envelope};
use crate::io::sim::SimDisk;
use crate::wal::{Lsn, Wal, WalConfig};
use check::{RegisterOp, Timed, Verdict};

/// Shape of a simulated run.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Nodes (each a voter of every group).
    pub nodes: u64,
    /// Partitions (Raft groups); key `k` lives in partition `k % partitions`.
    pub partitions: u64,
    /// Clients, each with one operation at a time.
    pub clients: usize,
    /// Keys the clients write and read.
    pub keys: u64,
    /// How long clients run and faults happen, in simulated ms.
    pub fault_ms: u64,
    /// How long the healed cluster runs before the final checks.
    pub heal_ms: u64,
    /// A bug to plant, to show that the checks catch it.
    pub bug: Option<PlantedBug>,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self { nodes: 3, partitions: 2, clients: 4, keys: 4, fault_ms: 3_000, heal_ms: 4_000, bug: None }
    }
}

/// Known-wrong behaviours the simulator must catch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlantedBug {
    /// The leader acknowledges a write once its own disk has it, before a
    /// quorum has.
    AckBeforeQuorum,
    /// A node that believes it leads answers strongly consistent reads from
    /// its own state, without confirming its leadership with a quorum.
    ReadWithoutQuorum,
}

/// What a run did (for reports and for tests that a run exercised faults).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimReport {
    /// Writes acknowledged to clients.
    pub acked_writes: u64,
    /// Reads answered.
    pub reads: u64,
    /// Writes whose clients never learned the outcome.
    pub unknown_writes: u64,
    /// Distinct (group, term) leaderships.
    pub leaderships: u64,
    /// Node crashes (torn writes included).
    pub crashes: u64,
    /// Crashes in the middle of a WAL write.
    pub torn_writes: u64,
    /// Reads a leader served under its lease.
    pub lease_reads: u64,
    /// Events processed.
    pub events: u64,
}

/// A broken invariant, with the seed that replays it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The run's seed.
    pub seed: u64,
    /// What broke.
    pub what: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seed {}: {} (replay: KEEL_SIM_SEED={} cargo test -p keel-node --test cluster_sim keeps_every_invariant)",
            self.seed, self.what, self.seed
        )
    }
}

/// Ticks of the simulated nodes, in ms: each node's clock runs at its own
/// rate, up to 10 % off, which leases must tolerate.
const TICK_MS: u64 = 10;
const TICK_MS_RANGE: std::ops::RangeInclusive<u64> = 9..=11;
/// A client gives up on an operation after this long.
const CLIENT_TIMEOUT_MS: u64 = 600;

#[derive(Debug, Clone, Copy)]
enum OpKind {
    Put(u64),
    Get,
}

#[derive(Debug, Clone, Copy)]
struct ClientOp {
    id: u64,
    key: u64,
    kind: OpKind,
}

#[derive(Debug, Clone, Copy)]
enum Reply {
    PutOk,
    PutFailed,
    Value(Option<u64>),
    Redirect(u64),
}

#[derive(Debug)]
enum Event {
    Tick(u64),
    /// A frame body: the sender's messages in Keel's replication envelope.
    Raft {
        to: u64,
        body: Vec<u8>,
    },
    Request {
        to: u64,
        client: usize,
        op: ClientOp,
    },
    Reply {
        client: usize,
        op_id: u64,
        reply: Reply,
    },
    DiskDone {
        node: u64,
        incarnation: u64,
    },
    ClientNext(usize),
    ClientTimeout {
        client: usize,
        op_id: u64,
    },
    Crash(u64),
    Restart(u64),
    Cut {
        from: u64,
        to: u64,
        until_ms: u64,
    },
    /// Cuts a node that leads some group from all others, both ways.
    Isolate {
        until_ms: u64,
    },
    Mend {
        from: u64,
        to: u64,
    },
    HealAll,
}

#[derive(Debug)]
struct Scheduled {
    at_ms: u64,
    seq: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at_ms, self.seq) == (other.at_ms, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at_ms, self.seq).cmp(&(other.at_ms, other.seq))
    }
}

/// Where each node keeps its WAL on its simulated disk.
const WAL_DIR: &str = "/wal";

/// Small segments, so that runs rotate through several.
fn wal_config() -> WalConfig {
    WalConfig {
        segment_size_bytes: 256 * 1024,
        payload_max_bytes: 64 * 1024,
        zero_fill: false,
        recycle_pool_max: 0,
        ..WalConfig::default()
    }
}

/// A write handed to the WAL and not yet reported durable: the LSN to wait
/// for, the token to hand back, and the entries in it (partition, index,
/// term).
#[derive(Debug)]
struct InFlight {
    lsn: Option<Lsn>,
    token: PersistToken,
    entries: Vec<(u64, u64, u64)>,
}

#[derive(Debug)]
struct PendingRead {
    partition: u64,
    client: usize,
    op_id: u64,
    key: u64,
    index: Option<u64>,
}

#[derive(Debug)]
struct Node {
    id: u64,
    incarnation: u64,
    raft: Option<ShardRaft>,
    tick_ms: u64,
    disk: SimDisk,
    wal: Option<Wal<SimDisk>>,
    in_flight: VecDeque<InFlight>,
    disk_free_at_ms: u64,
    kv: BTreeMap<u64, BTreeMap<u64, u64>>,
    applied: BTreeMap<u64, u64>,
    applied_ops: BTreeMap<u64, Vec<u64>>,
    writes: BTreeMap<(u64, u64), (Proposal, usize, u64)>,
    reads: Vec<PendingRead>,
}

#[derive(Debug)]
struct Client {
    guess: u64,
    op: Option<(ClientOp, usize)>,
}

#[derive(Debug)]
struct Faults {
    loss_pct: u32,
    dup_pct: u32,
    delay_ms_max: u64,
    disk_ms_max: u64,
    /// Chance that a WAL write is cut short by a crash, in per mille.
    torn_write_permille: u32,
    /// Whether leaders serve reads under leases in this run.
    lease_reads: bool,
}

#[derive(Debug)]
struct World {
    config: SimConfig,
    rng: SmallRng,
    now_ms: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<Scheduled>>,
    nodes: Vec<Node>,
    clients: Vec<Client>,
    faults: Faults,
    cut: BTreeSet<(u64, u64)>,
    healed: bool,
    next_op_id: u64,
    /// Real-time stamps for the history (one per client-visible event).
    stamp: u64,
    /// Per key: operations as clients saw them; the index of each pending
    /// operation by op id.
    history: BTreeMap<u64, Vec<Option<Timed>>>,
    open: BTreeMap<u64, (u64, usize)>,
    acked: Vec<(u64, u64)>,
    leaders: BTreeMap<(u64, u64), u64>,
    report: SimReport,
    violation: Option<String>,
}

/// Runs one seed; `Ok` when every invariant held.
pub fn run_seed(seed: u64, config: &SimConfig) -> Result<SimReport, Violation> {
    assert!(config.nodes >= 1 && config.partitions >= 1 && config.keys >= 1);
    let mut rng = SmallRng::seed_from_u64(seed);
    let faults = Faults {
        loss_pct: rng.random_range(0..=15),
        dup_pct: rng.random_range(0..=10),
        delay_ms_max: rng.random_range(1..=30),
        disk_ms_max: rng.random_range(1..=8),
        torn_write_permille: rng.random_range(0..=5),
        lease_reads: rng.random_bool(0.5),
    };
    let mut world = World {
        config: config.clone(),
        rng,
        now_ms: 0,
        seq: 0,
        queue: BinaryHeap::new(),
        nodes: Vec::new(),
        clients: Vec::new(),
        faults,
        cut: BTreeSet::new(),
        healed: false,
        next_op_id: 1,
        stamp: 0,
        history: BTreeMap::new(),
        open: BTreeMap::new(),
        acked: Vec::new(),
        leaders: BTreeMap::new(),
        report: SimReport::default(),
        violation: None,
    };
    world.start();
    let end_ms = config.fault_ms + config.heal_ms;
    while let Some(Reverse(next)) = world.queue.pop() {
        if next.at_ms > end_ms {
            break;
        }
        world.now_ms = next.at_ms;
        world.report.events += 1;
        world.handle(next.event);
        if let Some(what) = world.violation.take() {
            return Err(Violation { seed, what });
        }
    }
    world.final_checks().map_err(|what| Violation { seed, what })?;
    Ok(world.report)
}

fn encode_put(key: u64, value: u64, op_id: u64) -> Vec<u8> {
    let mut data = Vec::with_capacity(24);
    data.extend_from_slice(&key.to_le_bytes());
    data.extend_from_slice(&value.to_le_bytes());
    data.extend_from_slice(&op_id.to_le_bytes());
    data
}

fn decode_put(data: &[u8]) -> Option<(u64, u64, u64)> {
    let word = |at: usize| data.get(at..at + 8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes);
    Some((word(0)?, word(8)?, word(16)?))
}

impl World {
    fn schedule(&mut self, delay_ms: u64, event: Event) {
        self.seq += 1;
        self.queue.push(Reverse(Scheduled { at_ms: self.now_ms + delay_ms, seq: self.seq, event }));
    }

    fn node(&mut self, id: u64) -> &mut Node {
        let at = usize::try_from(id - 1).expect("node ids are small");
        self.nodes.get_mut(at).expect("node ids come from the configuration")
    }

    fn start(&mut self) {
        for id in 1..=self.config.nodes {
            self.nodes.push(Node {
                id,
                incarnation: 0,
                raft: None,
                tick_ms: self.rng.random_range(TICK_MS_RANGE),
                disk: SimDisk::new(self.rng.random()),
                wal: None,
                in_flight: VecDeque::new(),
                disk_free_at_ms: 0,
                kv: BTreeMap::new(),
                applied: BTreeMap::new(),
                applied_ops: BTreeMap::new(),
                writes: BTreeMap::new(),
                reads: Vec::new(),
            });
            self.boot(id);
            let offset = self.rng.random_range(0..TICK_MS);
            self.schedule(offset, Event::Tick(id));
        }
        for client in 0..self.config.clients {
            let guess = self.rng.random_range(1..=self.config.nodes);
            self.clients.push(Client { guess, op: None });
            let think = self.rng.random_range(0..20);
            self.schedule(think, Event::ClientNext(client));
        }
        // Faults during the fault phase.
        // Node 0 stands for "a node that leads some group then".
        let crashes = self.rng.random_range(0..=4_u64);
        for _ in 0..crashes {
            let at = self.rng.random_range(0..self.config.fault_ms);
            let node = self.rng.random_range(0..=self.config.nodes);
            self.schedule(at, Event::Crash(node));
        }
        let isolations = self.rng.random_range(0..=3_u64);
        for _ in 0..isolations {
            let at = self.rng.random_range(0..self.config.fault_ms);
            let until_ms = at + self.rng.random_range(100..1_000);
            self.schedule(at, Event::Isolate { until_ms });
        }
        let cuts = self.rng.random_range(0..=6_u64);
        for _ in 0..cuts {
            let at = self.rng.random_range(0..self.config.fault_ms);
            let from = self.rng.random_range(1..=self.config.nodes);
            let to = self.rng.random_range(1..=self.config.nodes);
            let until_ms = at + self.rng.random_range(50..1_000);
            if from != to {
                self.schedule(at, Event::Cut { from, to, until_ms });
                // Half the cuts are two-way.
                if self.rng.random_bool(0.5) {
                    self.schedule(at, Event::Cut { from: to, to: from, until_ms });
                }
            }
        }
        let heal_at = self.config.fault_ms;
        self.schedule(heal_at, Event::HealAll);
    }

    /// Starts (or restarts) a node: recovers its WAL and rebuilds its
    /// groups' logs from it.
    fn boot(&mut self, id: u64) {
        let voters: Vec<u64> = (1..=self.config.nodes).collect();
        let campaign = self.rng.random_range(10..26_usize);
        let config = ReplConfig {
            campaign_ticks: campaign..campaign + 1,
            lease_reads: self.faults.lease_reads,
            ..ReplConfig::default()
        };
        let partitions = self.config.partitions;
        let node = self.node(id);
        let mut logs: BTreeMap<u64, GroupLog> = (0..partitions).map(|p| (p, GroupLog::new(&voters))).collect();
        let recovered = block_on(Wal::open(node.disk.clone(), Path::new(WAL_DIR), wal_config()))
            .map_err(|e| e.to_string())
            .and_then(|(wal, records)| durable::rebuild(&records, &mut logs).map(|()| wal).map_err(|e| e.to_string()));
        let wal = match recovered {
            Ok(wal) => wal,
            Err(e) => {
                self.violation = Some(format!("node {id} cannot recover its WAL: {e}"));
                return;
            }
        };
        let node = self.node(id);
        node.wal = Some(wal);
        let mut raft = ShardRaft::new(id, config);
        for (p, log) in logs {
            raft.add_group(p, log, 0).expect("a rebuilt log is valid");
            node.kv.insert(p, BTreeMap::new());
            node.applied.insert(p, 0);
            node.applied_ops.insert(p, Vec::new());
        }
        node.raft = Some(raft);
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Tick(id) => {
                if let Some(raft) = self.node(id).raft.as_mut() {
                    raft.tick();
                }
                let tick_ms = self.node(id).tick_ms;
                self.schedule(tick_ms, Event::Tick(id));
                self.drive(id);
            }
            Event::Raft { to, body } => {
                let decoded = keel_wire::raft::decode_batch(&body).map_err(|e| e.to_string()).and_then(|batch| {
                    batch
                        .messages
                        .iter()
                        .map(|m| envelope::from_wire(m).map_err(|e| e.to_string()))
                        .collect::<Result<Vec<_>, _>>()
                });
                let messages = match decoded {
                    Ok(messages) => messages,
                    Err(e) => {
                        self.violation = Some(format!("node {to} cannot read a peer's envelope: {e}"));
                        return;
                    }
                };
                if let Some(raft) = self.node(to).raft.as_mut() {
                    for m in messages {
                        // Refusals (a stale message, say) are Raft's business.
                        let _ = raft.step(m.partition, m.message);
                    }
                    self.drive(to);
                }
            }
            Event::Request { to, client, op } => self.request(to, client, op),
            Event::Reply { client, op_id, reply } => self.reply_arrived(client, op_id, reply),
            Event::DiskDone { node, incarnation } => self.disk_done(node, incarnation),
            Event::ClientNext(client) => self.client_next(client),
            Event::ClientTimeout { client, op_id } => self.client_timeout(client, op_id),
            Event::Crash(0) => {
                if let Some(id) = self.some_leader() {
                    self.crash(id);
                }
            }
            Event::Crash(id) => self.crash(id),
            Event::Isolate { until_ms } => {
                if let Some(id) = self.some_leader() {
                    for other in (1..=self.config.nodes).filter(|&o| o != id) {
                        self.schedule(0, Event::Cut { from: id, to: other, until_ms });
                        self.schedule(0, Event::Cut { from: other, to: id, until_ms });
                    }
                }
            }
            Event::Restart(id) => {
                if self.node(id).raft.is_none() {
                    self.boot(id);
                    self.drive(id);
                }
            }
            Event::Cut { from, to, until_ms } => {
                if !self.healed {
                    self.cut.insert((from, to));
                    let after = until_ms.saturating_sub(self.now_ms);
                    self.schedule(after, Event::Mend { from, to });
                }
            }
            Event::Mend { from, to } => {
                self.cut.remove(&(from, to));
            }
            Event::HealAll => {
                self.healed = true;
                self.cut.clear();
                self.faults.loss_pct = 0;
                self.faults.dup_pct = 0;
                for id in 1..=self.config.nodes {
                    if self.node(id).raft.is_none() {
                        self.boot(id);
                        self.drive(id);
                    }
                }
            }
        }
    }

    /// A node that leads a group (drawn among the groups), if any does.
    fn some_leader(&mut self) -> Option<u64> {
        let partition = self.rng.random_range(0..self.config.partitions);
        self.nodes.iter().find_map(|n| {
            let status = n.raft.as_ref()?.status(partition)?;
            (status.role == Role::Leader).then_some(n.id)
        })
    }

    /// A scheduled crash: only while faults happen, and of a running node.
    fn crash(&mut self, id: u64) {
        if self.healed || self.node(id).raft.is_none() {
            return;
        }
        self.power_loss(id);
    }

    fn power_loss(&mut self, id: u64) {
        self.report.crashes += 1;
        let node = self.node(id);
        // Power loss: what was written but not synced is kept, lost or torn
        // by the disk; what was only submitted dies with the WAL's memory.
        node.disk.crash();
        node.wal = None;
        node.in_flight.clear();
        node.incarnation += 1;
        node.raft = None;
        node.kv.clear();
        node.applied.clear();
        node.applied_ops.clear();
        node.writes.clear();
        node.reads.clear();
        node.disk_free_at_ms = 0;
        let after = self.rng.random_range(30..800);
        self.schedule(after, Event::Restart(id));
    }

    fn send_raft(&mut self, from: u64, out: Outgoing) {
        let to = out.message.to;
        if self.cut.contains(&(from, to)) || self.rng.random_range(0..100) < self.faults.loss_pct {
            return;
        }
        // Every message crosses the envelope, as between real nodes.
        let body = keel_wire::raft::encode_batch(from, "", &[envelope::to_wire(&out)]);
        let copies = if self.rng.random_range(0..100) < self.faults.dup_pct { 2 } else { 1 };
        for _ in 0..copies {
            let delay = self.rng.random_range(1..=self.faults.delay_ms_max);
            self.schedule(delay, Event::Raft { to, body: body.clone() });
        }
    }

    /// Client traffic runs over TCP: delayed, maybe lost (a broken
    /// connection), never duplicated.
    fn send_client(&mut self, event: Event) {
        if self.rng.random_range(0..100) < self.faults.loss_pct {
            return;
        }
        let delay = self.rng.random_range(1..=self.faults.delay_ms_max);
        self.schedule(delay, event);
    }

    /// Handles everything the node's groups have ready, until nothing is.
    fn drive(&mut self, id: u64) {
        loop {
            let Some(raft) = self.node(id).raft.as_mut() else { return };
            if !raft.has_ready() {
                return;
            }
            let batch = raft.ready();
            for (partition, status) in &batch.changes {
                if status.role == Role::Leader {
                    let first = *self.leaders.entry((*partition, status.term)).or_insert(id);
                    if first == id {
                        self.report.leaderships = u64::try_from(self.leaders.len()).unwrap_or(u64::MAX);
                    } else {
                        self.violation = Some(format!(
                            "partition {partition} term {}: nodes {first} and {id} both led",
                            status.term
                        ));
                    }
                }
            }
            for out in batch.send {
                self.send_raft(id, out);
            }
            for committed in batch.committed {
                self.apply(id, committed.partition, &committed.entries);
            }
            for (partition, read) in batch.reads {
                let op_id = decode_op_id(&read.context);
                let node = self.node(id);
                if let Some(pending) = node.reads.iter_mut().find(|r| r.op_id == op_id && r.partition == partition) {
                    pending.index = Some(read.index);
                }
                self.serve_reads(id, partition);
            }
            let entries: Vec<(u64, u64, u64)> =
                batch.writes.iter().flat_map(|w| w.entries.iter().map(|e| (w.partition, e.index, e.term))).collect();
            let node = self.node(id);
            let submitted =
                durable::submit(node.wal.as_ref().expect("a running node has its WAL"), &batch.writes, |_, _, _| {});
            let lsn = match submitted {
                Ok(lsn) => lsn,
                Err(e) => {
                    self.violation = Some(format!("node {id}: WAL refused a write: {e}"));
                    return;
                }
            };
            // Writes complete in order; each takes up to disk_ms_max.
            let latency = self.rng.random_range(0..=self.faults.disk_ms_max);
            let now = self.now_ms;
            let node = self.node(id);
            let done_at = node.disk_free_at_ms.max(now) + latency;
            node.disk_free_at_ms = done_at;
            node.in_flight.push_back(InFlight { lsn, token: batch.token, entries });
            let incarnation = node.incarnation;
            self.schedule(done_at - now, Event::DiskDone { node: id, incarnation });
        }
    }

    fn disk_done(&mut self, id: u64, incarnation: u64) {
        let bug = self.config.bug;
        let tear = !self.healed && self.rng.random_range(0..1000) < self.faults.torn_write_permille;
        // A flush makes at least two mutating operations (write, sync), so
        // a crash point armed at one of them fires inside this flush.
        let tear_at_op = self.rng.random_range(0..2);
        let node = self.node(id);
        if node.incarnation != incarnation || node.raft.is_none() {
            return; // the write died with the node
        }
        let write = node.in_flight.pop_front().expect("one completion per write");
        if let Some(lsn) = write.lsn {
            let wal = node.wal.as_ref().expect("a running node has its WAL");
            if tear && wal.durable_lsn() <= lsn {
                node.disk.crash_at_op(tear_at_op);
            }
            if let Err(e) = block_on(wal.wait_durable(lsn)) {
                if node.disk.is_crashed() {
                    self.report.torn_writes += 1;
                    self.power_loss(id);
                } else {
                    self.violation = Some(format!("node {id}: WAL write failed: {e}"));
                }
                return;
            }
        }
        let mut early_acks = Vec::new();
        if bug == Some(PlantedBug::AckBeforeQuorum) {
            for &(p, index, term) in &write.entries {
                if let Some((proposal, client, op_id)) = node.writes.get(&(p, index)).copied()
                    && proposal.term == term
                {
                    node.writes.remove(&(p, index));
                    early_acks.push((client, op_id));
                }
            }
        }
        let after = node.raft.as_mut().expect("checked above").persisted(write.token);
        for out in after {
            self.send_raft(id, out);
        }
        for (client, op_id) in early_acks {
            self.send_client(Event::Reply { client, op_id, reply: Reply::PutOk });
        }
        self.drive(id);
    }

    fn apply(&mut self, id: u64, partition: u64, entries: &[Entry]) {
        let mut replies = Vec::new();
        let node = self.node(id);
        let mut last = None;
        for entry in entries {
            last = Some(entry.index);
            let applied = node.applied.entry(partition).or_insert(0);
            assert_eq!(entry.index, *applied + 1, "committed entries arrive in order");
            *applied = entry.index;
            if entry.data.is_empty() {
                continue;
            }
            let (key, value, op_id) = decode_put(&entry.data).expect("the simulator wrote it");
            node.kv.entry(partition).or_default().insert(key, value);
            node.applied_ops.entry(partition).or_default().push(op_id);
            if let Some((proposal, client, op)) = node.writes.remove(&(partition, entry.index)) {
                let reply = if proposal.term == entry.term { Reply::PutOk } else { Reply::PutFailed };
                replies.push((client, op, reply));
            }
        }
        if let (Some(index), Some(raft)) = (last, node.raft.as_mut()) {
            raft.applied(partition, index);
        }
        for (client, op_id, reply) in replies {
            self.send_client(Event::Reply { client, op_id, reply });
        }
        self.serve_reads(id, partition);
    }

    fn serve_reads(&mut self, id: u64, partition: u64) {
        let node = self.node(id);
        let applied = node.applied.get(&partition).copied().unwrap_or(0);
        let mut answers = Vec::new();
        node.reads.retain(|r| {
            let ready = r.partition == partition && r.index.is_some_and(|i| i <= applied);
            if ready {
                answers.push((r.client, r.op_id, r.key));
            }
            !ready
        });
        let answers: Vec<_> = answers
            .into_iter()
            .map(|(client, op_id, key)| {
                let value = node.kv.get(&partition).and_then(|kv| kv.get(&key)).copied();
                (client, op_id, value)
            })
            .collect();
        for (client, op_id, value) in answers {
            self.send_client(Event::Reply { client, op_id, reply: Reply::Value(value) });
        }
    }

    fn request(&mut self, to: u64, client: usize, op: ClientOp) {
        let partition = op.key % self.config.partitions;
        let bug = self.config.bug;
        let mut lease_read = false;
        let node = self.node(to);
        let Some(raft) = node.raft.as_mut() else { return };
        let outcome = match op.kind {
            OpKind::Put(value) => raft.propose(partition, encode_put(op.key, value, op.id)).map(|proposal| {
                node.writes.insert((partition, proposal.index), (proposal, client, op.id));
                None
            }),
            OpKind::Get => {
                let leads = raft.status(partition).is_some_and(|s| s.role == Role::Leader);
                if bug == Some(PlantedBug::ReadWithoutQuorum) && leads {
                    let value = node.kv.get(&partition).and_then(|kv| kv.get(&op.key)).copied();
                    Ok(Some(Reply::Value(value)))
                } else {
                    raft.read_index(partition, op.id.to_le_bytes().to_vec()).map(|path| {
                        let index = match path {
                            ReadPath::Lease { index } => {
                                lease_read = true;
                                Some(index)
                            }
                            ReadPath::Quorum => None,
                        };
                        node.reads.push(PendingRead { partition, client, op_id: op.id, key: op.key, index });
                        None
                    })
                }
            }
        };
        match outcome {
            Ok(None) => {}
            Ok(Some(reply)) => self.send_client(Event::Reply { client, op_id: op.id, reply }),
            Err(ProposeError::NotLeader { leader, .. }) => {
                self.send_client(Event::Reply { client, op_id: op.id, reply: Reply::Redirect(leader) });
            }
            // The client times out and moves on.
            Err(ProposeError::Dropped(_) | ProposeError::UnknownPartition(_) | ProposeError::NotReady(_)) => {}
        }
        // A read under a lease may be served at once.
        self.report.lease_reads += u64::from(lease_read);
        self.serve_reads(to, partition);
        self.drive(to);
    }

    fn client_next(&mut self, client: usize) {
        if self.healed {
            return;
        }
        let id = self.next_op_id;
        self.next_op_id += 1;
        let key = self.rng.random_range(0..self.config.keys);
        let kind = if self.rng.random_bool(0.5) { OpKind::Put(id) } else { OpKind::Get };
        let op = ClientOp { id, key, kind };
        self.stamp += 1;
        let timed = Timed {
            op: match kind {
                OpKind::Put(v) => RegisterOp::Write(v),
                OpKind::Get => RegisterOp::Read(None),
            },
            call: self.stamp,
            ret: None,
        };
        let ops = self.history.entry(key).or_default();
        ops.push(Some(timed));
        self.open.insert(id, (key, ops.len() - 1));
        // Now and then a client asks any node, as one with a stale routing
        // cache would.
        let any = self.rng.random_range(1..=self.config.nodes);
        let stale = self.rng.random_bool(0.2);
        let Some(c) = self.clients.get_mut(client) else { return };
        c.op = Some((op, 0));
        let to = if stale { any } else { c.guess };
        self.send_client(Event::Request { to, client, op });
        self.schedule(CLIENT_TIMEOUT_MS, Event::ClientTimeout { client, op_id: id });
    }

    /// Records the outcome of a client's operation: `None` when it failed
    /// for sure (it never took effect, so the history forgets it).
    fn finish_op(&mut self, client: usize, op_id: u64, result: Option<RegisterOp>) {
        self.stamp += 1;
        let stamp = self.stamp;
        if let Some((key, at)) = self.open.remove(&op_id)
            && let Some(slot) = self.history.get_mut(&key).and_then(|ops| ops.get_mut(at))
        {
            *slot = result.and_then(|op| slot.map(|t| Timed { op, ret: Some(stamp), ..t }));
        }
        if let Some(c) = self.clients.get_mut(client) {
            c.op = None;
        }
        let think = self.rng.random_range(0..20);
        self.schedule(think, Event::ClientNext(client));
    }

    fn reply_arrived(&mut self, client: usize, op_id: u64, reply: Reply) {
        let Some(c) = self.clients.get_mut(client) else { return };
        let Some((op, attempt)) = c.op else { return };
        if op.id != op_id {
            return; // an answer to an operation the client gave up on
        }
        match reply {
            Reply::PutOk => {
                self.report.acked_writes += 1;
                self.acked.push((op.key, op_id));
                let value = match op.kind {
                    OpKind::Put(v) => v,
                    OpKind::Get => unreachable!("a put's reply"),
                };
                self.finish_op(client, op_id, Some(RegisterOp::Write(value)));
            }
            Reply::Value(value) => {
                self.report.reads += 1;
                self.finish_op(client, op_id, Some(RegisterOp::Read(value)));
            }
            Reply::PutFailed => self.finish_op(client, op_id, None),
            Reply::Redirect(leader) => {
                let nodes = self.config.nodes;
                let to = if leader == 0 { self.rng.random_range(1..=nodes) } else { leader };
                if let Some(c) = self.clients.get_mut(client) {
                    c.guess = to;
                    c.op = Some((op, attempt + 1));
                }
                // Back off a little when no leader is known.
                let wait = if leader == 0 { 20 } else { 0 };
                let delay = wait + self.rng.random_range(1..=self.faults.delay_ms_max);
                self.schedule(delay, Event::Request { to, client, op });
            }
        }
    }

    fn client_timeout(&mut self, client: usize, op_id: u64) {
        let Some(c) = self.clients.get(client) else { return };
        let Some((op, _)) = c.op else { return };
        if op.id != op_id {
            return;
        }
        let nodes = self.config.nodes;
        let guess = self.rng.random_range(1..=nodes);
        if let Some(c) = self.clients.get_mut(client) {
            c.guess = guess;
            c.op = None;
        }
        match op.kind {
            // Its outcome is unknown: it stays open in the history.
            OpKind::Put(_) => {
                self.report.unknown_writes += 1;
                self.open.remove(&op_id);
            }
            // A read nobody saw: forget it.
            OpKind::Get => {
                if let Some((key, at)) = self.open.remove(&op_id)
                    && let Some(slot) = self.history.get_mut(&key).and_then(|ops| ops.get_mut(at))
                {
                    *slot = None;
                }
            }
        }
        let think = self.rng.random_range(0..20);
        self.schedule(think, Event::ClientNext(client));
    }

    fn final_checks(&mut self) -> Result<(), String> {
        // Convergence: every node up, every group applied the same entries.
        for partition in 0..self.config.partitions {
            let mut reference: Option<(u64, &Vec<u64>, &BTreeMap<u64, u64>)> = None;
            for node in &self.nodes {
                let raft = node.raft.as_ref().ok_or_else(|| format!("node {} is down at the end", node.id))?;
                let status = raft.status(partition).ok_or("group missing")?;
                let applied = node.applied.get(&partition).copied().unwrap_or(0);
                if applied != status.commit {
                    return Err(format!(
                        "partition {partition}: node {} applied {applied} of {} committed",
                        node.id, status.commit
                    ));
                }
                let ops = node.applied_ops.get(&partition).ok_or("no state")?;
                let kv = node.kv.get(&partition).ok_or("no state")?;
                match reference {
                    None => reference = Some((applied, ops, kv)),
                    Some((a, o, k)) => {
                        if a != applied || o != ops || k != kv {
                            return Err(format!(
                                "partition {partition}: node {} did not converge (applied {applied} vs {a})",
                                node.id
                            ));
                        }
                    }
                }
            }
        }
        // No acknowledged write lost.
        let first = self.nodes.first().ok_or("no nodes")?;
        for &(key, op_id) in &self.acked {
            let partition = key % self.config.partitions;
            let ops = first.applied_ops.get(&partition).ok_or("no state")?;
            if !ops.contains(&op_id) {
                return Err(format!("acknowledged write {op_id} to key {key} is lost"));
            }
        }
        // Linearizability, key by key.
        for (key, ops) in &self.history {
            // Reads still unanswered at the end were seen by nobody.
            let ops: Vec<Timed> = ops
                .iter()
                .flatten()
                .copied()
                .filter(|t| t.ret.is_some() || matches!(t.op, RegisterOp::Write(_)))
                .collect();
            match check::check_register(&ops) {
                Verdict::Linearizable => {}
                Verdict::NotLinearizable => return Err(format!("history of key {key} is not linearizable: {ops:?}")),
                Verdict::TooLong => return Err(format!("history of key {key} too long to check: {ops:?}")),
            }
        }
        Ok(())
    }
}

fn decode_op_id(context: &[u8]) -> u64 {
    context.try_into().map(u64::from_le_bytes).unwrap_or(0)
}

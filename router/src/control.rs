//! The control plane: the authority MemDS servers follow, and the one that
//! heals partitions.
//!
//! Its durable state is the cluster's own: tables live in the catalog, the
//! replicated system partition (partition 0, a Raft group with a replica in
//! every zone), and each partition's replicas, leader and term in its own
//! Raft group. The control plane polls every storage node's cluster status
//! and the catalog, turns what it sees into a routing [`State`]
//! ([`observe`]), and publishes the difference from the last one as
//! numbered changes ([`ControlPlane::publish`]). It keeps nothing that a
//! restart could lose: a restarted control plane starts a new epoch (its
//! start time), observes the same state again, and followers of the old
//! epoch start over from a snapshot.
//!
//! Healing: a storage node that has not answered for [`REPLACE_AFTER`] is
//! down; for each partition with a replica there, the control plane picks
//! a replacement with the whole cluster in view ([`plan_replacements`]: a
//! healthy node outside the group, in a zone the group lacks, holding the
//! fewest replicas) and asks the partition's leader to swap it in as a log
//! replica (`ReplaceReplica`), which restores the write quorum at once and
//! is rebuilt into a full replica in the background. The leader checks the
//! request against its own view (the replica must be silent to it too), so
//! a control plane cut off from a healthy node cannot evict it. Nodes run
//! with their own leader-driven healing off under a control plane
//! (`keel-node --self-heal-after-ms 0`, as `keel dev` starts them).
//!
//! The change stream: a follower asks for the changes after its version
//! (`ChangesRequest`); the answer holds up to `max` of them, or waits up to
//! `wait_ms` for the next one (a long poll, so changes reach MemDS within a
//! poll interval plus one round trip). A follower of another epoch, or one
//! so far behind that its next change is no longer retained
//! ([`CHANGE_LOG_MAX`]), gets a reset: the whole state as changes ending at
//! the current version.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use keel_wire::protocol::{NodeStatus, PARTITIONS_DEFAULT, REPLICAS_PER_PARTITION, ROLE_LEADER, TableInfo};
use keel_wire::routing::{
    self, Body, CHANGES_MAX, Change, MapStatus, NodeRoute, PartitionRoute, ReplicaRoute, TableRoute,
};
use tokio::sync::watch;

use crate::map::{State, diff};
use crate::net::Handler;

/// Changes retained for followers that fall behind.
pub const CHANGE_LOG_MAX: usize = 100_000;
/// Longest long poll a follower may ask for.
pub const WAIT_MS_MAX: u32 = 10_000;
/// How long a storage node stays unanswering before its replicas are
/// replaced (the default of `keel-control --replace-after-ms`).
pub const REPLACE_AFTER: Duration = Duration::from_secs(3);
/// A replacement asked for is asked again after this if the node is still
/// a replica (the leader refused, or lost leadership before committing it).
pub const REPLACE_RETRY_AFTER: Duration = Duration::from_secs(2);

/// The catalog's partition (not routed: only storage nodes use it).
const CATALOG_PARTITION: u64 = 0;

/// The routing state as the storage nodes report it.
///
/// `statuses` are the nodes that answered this poll (each reports its own
/// replicas); `tables` the catalog's tables. What nobody reports now is
/// taken from `previous`: a node that stopped answering keeps its entry
/// (unhealthy), and a partition none of whose replicas answered keeps its
/// last known replicas and leader.
#[must_use]
pub fn observe(previous: &State, statuses: &[NodeStatus], tables: &[TableInfo]) -> State {
    let mut state = State::default();
    for table in tables {
        let route = TableRoute {
            name: table.name.clone(),
            id: table.id,
            partitions: table.partitions,
            partition_key: table.partition_key.0.clone(),
            sort_key: table.sort_key.as_ref().map(|k| k.0.clone()),
        };
        state.tables.insert(route.name.clone(), route);
    }
    // Nodes: every member any node knows of, healthy when it answered.
    for status in statuses {
        for member in &status.members {
            let known = previous.nodes.get(&member.id);
            let entry = state.nodes.entry(member.id).or_insert_with(|| NodeRoute {
                id: member.id,
                name: member.name.clone(),
                az: member.az.clone(),
                endpoint: known.map(|n| n.endpoint.clone()).unwrap_or_default(),
                shard_endpoints: known.map(|n| n.shard_endpoints.clone()).unwrap_or_default(),
                healthy: false,
            });
            if member.id == status.node_id {
                entry.endpoint.clone_from(&status.endpoint);
                entry.shard_endpoints.clone_from(&status.shard_endpoints);
                entry.healthy = true;
            }
        }
    }
    for (id, node) in &previous.nodes {
        state.nodes.entry(*id).or_insert_with(|| NodeRoute { healthy: false, ..node.clone() });
    }
    // Partitions: each replica reports its own group.
    let mut reports: BTreeMap<u64, Vec<(u64, &keel_wire::protocol::GroupInfo)>> = BTreeMap::new();
    for status in statuses {
        for group in &status.groups {
            let node = if group.node != 0 { group.node } else { status.node_id };
            reports.entry(group.partition).or_default().push((node, group));
        }
    }
    for table in state.tables.values() {
        for index in 0..table.partitions {
            let partition = (u64::from(table.id) << 32) | u64::from(index);
            let route = match reports.get(&partition) {
                Some(seen) => partition_route(partition, seen, previous, &state.nodes),
                None => match previous.partitions.get(&partition) {
                    Some(route) => route.clone(),
                    None => continue,
                },
            };
            state.partitions.insert(partition, route);
        }
    }
    debug_assert!(!state.partitions.contains_key(&CATALOG_PARTITION));
    state
}

/// One partition from its replicas' reports: the voters and log replicas
/// of the newest term reported, the leader that term's leader claims (or
/// that its followers name).
fn partition_route(
    partition: u64,
    seen: &[(u64, &keel_wire::protocol::GroupInfo)],
    previous: &State,
    nodes: &BTreeMap<u64, NodeRoute>,
) -> PartitionRoute {
    let newest = keel_wire::protocol::newest_report(seen);
    let term = newest.map_or(0, |g| g.term);
    let leader = seen
        .iter()
        .find(|(_, g)| g.role == ROLE_LEADER && g.term == term)
        .map(|(node, _)| *node)
        .or_else(|| seen.iter().filter(|(_, g)| g.term == term && g.leader != 0).map(|(_, g)| g.leader).next())
        .unwrap_or(0);
    let old = previous.partitions.get(&partition);
    let replicas = newest
        .map(|g| {
            g.voters
                .iter()
                .map(|&node| {
                    let shard = seen
                        .iter()
                        .find(|(n, _)| *n == node)
                        .map(|(_, g)| g.shard)
                        .or_else(|| old.and_then(|o| o.replicas.iter().find(|r| r.node == node)).map(|r| r.shard))
                        .unwrap_or_else(|| placement_shard(partition, nodes.get(&node)));
                    ReplicaRoute { node, shard, log_only: g.log_replicas.contains(&node) }
                })
                .collect()
        })
        .unwrap_or_default();
    PartitionRoute { partition, leader, term, replicas }
}

/// The shard a node places a partition on (keel-node's `Placement`), for a
/// replica whose node has not reported it.
fn placement_shard(partition: u64, node: Option<&NodeRoute>) -> u32 {
    let shards = node.map_or(1, |n| n.shard_endpoints.len().max(1));
    let (table, index) = (partition >> 32, partition & 0xffff_ffff);
    u32::try_from((table + index) % u64::try_from(shards).unwrap_or(1)).unwrap_or(0)
}

/// A replica to replace: the leader of `partition` is asked to swap the
/// replica on node `remove` for a log replica on node `add`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replacement {
    /// The partition.
    pub partition: u64,
    /// Its leader (the node asked).
    pub leader: u64,
    /// The node whose replica goes.
    pub remove: u64,
    /// The node that takes it.
    pub add: u64,
}

/// The replicas on `down` nodes to replace now, at most one per partition
/// (a group changes its configuration one step at a time). Each goes to a
/// healthy node outside its group, preferring a zone none of the group's
/// other replicas is in (one replica per zone), and among those to the
/// node holding the fewest replicas, counting the replacements planned
/// before it, so that a failed node's partitions spread over the others by
/// load. A node that reports a group of the partition although it is not
/// one of its replicas (`reported`: node → partitions; a replica replaced
/// while it was down keeps its old group) is not chosen: its stale copy is
/// not a place to start a log replica. A partition whose leader is down or
/// unknown waits for its election; one with no spare node is left as it is.
#[must_use]
pub fn plan_replacements(
    state: &State,
    down: &BTreeSet<u64>,
    reported: &BTreeMap<u64, BTreeSet<u64>>,
) -> Vec<Replacement> {
    let mut load = replica_load(state);
    let up = |id: u64| state.nodes.get(&id).is_some_and(|n| n.healthy) && !down.contains(&id);
    let mut plan = Vec::new();
    for route in state.partitions.values() {
        if !up(route.leader) {
            continue;
        }
        let holds = |id: u64| route.replicas.iter().any(|r| r.node == id);
        let Some(remove) = route.replicas.iter().map(|r| r.node).find(|n| down.contains(n)) else { continue };
        let zone = |id: u64| state.nodes.get(&id).map(|n| n.az.as_str());
        let covered: Vec<Option<&str>> =
            route.replicas.iter().filter(|r| r.node != remove).map(|r| zone(r.node)).collect();
        let spare = state
            .nodes
            .values()
            .filter(|n| up(n.id) && !holds(n.id) && !reported.get(&n.id).is_some_and(|p| p.contains(&route.partition)))
            .min_by_key(|n| (covered.contains(&Some(n.az.as_str())), load.get(&n.id).copied().unwrap_or(0), n.id));
        let Some(add) = spare.map(|n| n.id) else { continue };
        *load.entry(add).or_default() += 1;
        plan.push(Replacement { partition: route.partition, leader: route.leader, remove, add });
    }
    plan
}

/// When each node stopped answering, and which replacements were asked
/// for when: what [`plan_replacements`] needs from one poll to the next.
#[derive(Debug, Default)]
pub struct Healer {
    down_since: BTreeMap<u64, Instant>,
    asked: BTreeMap<(u64, u64), Instant>,
    /// Nodes seen answering: only they can go down (a node that has not
    /// answered since this control plane started may still be starting).
    seen_up: BTreeSet<u64>,
    /// The partitions each node last reported a group of.
    reported: BTreeMap<u64, BTreeSet<u64>>,
}

impl Healer {
    /// Takes the groups each answering node reported this poll (a silent
    /// node's last report is kept).
    pub fn note_reports(&mut self, statuses: &[NodeStatus]) {
        for status in statuses {
            let partitions = status.groups.iter().map(|g| g.partition).collect();
            self.reported.insert(status.node_id, partitions);
        }
    }

    /// The nodes silent for `after` in the state just observed.
    pub fn down(&mut self, state: &State, now: Instant, after: Duration) -> BTreeSet<u64> {
        self.seen_up.extend(state.nodes.values().filter(|n| n.healthy).map(|n| n.id));
        self.down_since.retain(|id, _| state.nodes.get(id).is_some_and(|n| !n.healthy));
        for node in state.nodes.values().filter(|n| !n.healthy && self.seen_up.contains(&n.id)) {
            self.down_since.entry(node.id).or_insert(now);
        }
        self.down_since.iter().filter(|(_, since)| now.duration_since(**since) >= after).map(|(id, _)| *id).collect()
    }

    /// The replacements to ask for now, given the state just observed:
    /// nodes silent for `after` are down; a replacement already asked for
    /// within [`REPLACE_RETRY_AFTER`] is not asked again.
    pub fn due(&mut self, state: &State, now: Instant, after: Duration) -> Vec<Replacement> {
        let down = self.down(state, now, after);
        self.plan(state, &down, now)
    }

    /// The replacements to ask for now, `down` being [`Self::down`]'s answer
    /// for the state just observed.
    pub fn plan(&mut self, state: &State, down: &BTreeSet<u64>, now: Instant) -> Vec<Replacement> {
        self.asked.retain(|_, at| now.duration_since(*at) < REPLACE_RETRY_AFTER);
        if down.is_empty() {
            return Vec::new();
        }
        let plan: Vec<Replacement> = plan_replacements(state, down, &self.reported)
            .into_iter()
            .filter(|r| !self.asked.contains_key(&(r.partition, r.remove)))
            .collect();
        for r in &plan {
            self.asked.insert((r.partition, r.remove), now);
        }
        plan
    }
}

/// Most partitions of one table (keel-node's `PARTITIONS_MAX`, the most a
/// placement carries).
pub const PARTITIONS_MAX: u32 = 1024;
const _: () = assert!(PARTITIONS_MAX as usize == routing::PLACE_PARTITIONS_MAX);

/// How many replicas each node holds.
fn replica_load(state: &State) -> BTreeMap<u64, usize> {
    let mut load: BTreeMap<u64, usize> = state.nodes.keys().map(|&id| (id, 0)).collect();
    for route in state.partitions.values() {
        for replica in &route.replicas {
            *load.entry(replica.node).or_default() += 1;
        }
    }
    load
}

/// Where a new table's `partitions` partitions go: for each, one node that
/// is not `down` in each of [`REPLICAS_PER_PARTITION`] zones; in each zone the node
/// holding the fewest replicas (counting those placed before it, so a
/// table's partitions spread over the zone's nodes), and the zones whose
/// chosen nodes are the least loaded. Refused when fewer zones have a node
/// up. (Down means silent for [`REPLACE_AFTER`], not a missed poll: under
/// load a busy node may miss one, and a table placed without it would
/// crowd the others.)
pub fn plan_placement(state: &State, down: &BTreeSet<u64>, partitions: u32) -> Result<Vec<Vec<u64>>, String> {
    if partitions == 0 || partitions > PARTITIONS_MAX {
        return Err(format!("a table has 1 to {PARTITIONS_MAX} partitions, not {partitions}"));
    }
    let mut load = replica_load(state);
    let mut zones: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for node in state.nodes.values().filter(|n| !down.contains(&n.id)) {
        zones.entry(node.az.as_str()).or_default().push(node.id);
    }
    if zones.len() < REPLICAS_PER_PARTITION {
        return Err(format!(
            "{} zones have a storage node up; a partition needs {REPLICAS_PER_PARTITION}",
            zones.len()
        ));
    }
    let mut placement = Vec::new();
    for _ in 0..partitions {
        let lightest = |ids: &Vec<u64>| ids.iter().copied().min_by_key(|id| (load.get(id).copied().unwrap_or(0), *id));
        let mut chosen: Vec<(usize, &str, u64)> = zones
            .iter()
            .filter_map(|(zone, ids)| lightest(ids).map(|id| (load.get(&id).copied().unwrap_or(0), *zone, id)))
            .collect();
        chosen.sort_unstable();
        chosen.truncate(REPLICAS_PER_PARTITION);
        chosen.sort_unstable_by_key(|&(_, zone, _)| zone);
        let nodes: Vec<u64> = chosen.iter().map(|&(_, _, id)| id).collect();
        for id in &nodes {
            *load.entry(*id).or_default() += 1;
        }
        placement.push(nodes);
    }
    Ok(placement)
}

/// What has been published.
#[derive(Debug, Default)]
struct Published {
    state: State,
    version: u64,
    /// The newest changes, ending at `version`.
    log: VecDeque<Change>,
}

/// The change stream's publisher and server.
#[derive(Debug)]
pub struct ControlPlane {
    epoch: u64,
    published: Mutex<Published>,
    versions: watch::Sender<u64>,
    /// Replacements a leader accepted.
    replacements_asked: AtomicU64,
    /// Replacements a leader refused or that could not be sent.
    replacements_refused: AtomicU64,
    /// The storage nodes silent for [`REPLACE_AFTER`] (no new replicas go
    /// there).
    down: Mutex<BTreeSet<u64>>,
}

impl ControlPlane {
    /// An empty map in `epoch` (nonzero: 0 means "none" to followers).
    #[must_use]
    pub fn new(epoch: u64) -> Self {
        assert!(epoch != 0, "epoch 0 means no epoch");
        Self {
            epoch,
            published: Mutex::new(Published::default()),
            versions: watch::Sender::new(0),
            replacements_asked: AtomicU64::new(0),
            replacements_refused: AtomicU64::new(0),
            down: Mutex::new(BTreeSet::new()),
        }
    }

    /// The epoch.
    #[must_use]
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The state last published.
    #[must_use]
    pub fn state(&self) -> State {
        self.lock().state.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Published> {
        self.published.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Publishes the changes that take the last state to `new`; returns how
    /// many there were.
    pub fn publish(&self, new: State) -> usize {
        let mut published = self.lock();
        let kinds = diff(&published.state, &new);
        let count = kinds.len();
        for kind in kinds {
            published.version += 1;
            let change = Change { version: published.version, kind };
            published.log.push_back(change);
            if published.log.len() > CHANGE_LOG_MAX {
                published.log.pop_front();
            }
        }
        published.state = new;
        let version = published.version;
        drop(published);
        if count > 0 {
            self.versions.send_replace(version);
        }
        count
    }

    /// The answer to a follower at `after` of `epoch`, or `None` when there
    /// is nothing newer yet.
    fn changes(&self, epoch: u64, after: u64, max: u32) -> Option<Body> {
        let published = self.lock();
        let first_retained = published.log.front().map_or(published.version + 1, |c| c.version);
        if epoch != self.epoch || after > published.version || after + 1 < first_retained {
            // The whole state, numbered to end at the current version.
            let snapshot = diff(&State::default(), &published.state);
            if snapshot.len() > CHANGES_MAX {
                return Some(Body::Error(format!(
                    "the routing map has {} entries, more than a reset carries ({CHANGES_MAX})",
                    snapshot.len()
                )));
            }
            let start = published.version + 1 - u64::try_from(snapshot.len()).unwrap_or(0);
            let changes = (start..).zip(snapshot).map(|(version, kind)| Change { version, kind }).collect();
            return Some(Body::ChangesAnswer { epoch: self.epoch, reset: true, last: published.version, changes });
        }
        if after == published.version {
            return None;
        }
        let skip = usize::try_from(after + 1 - first_retained).unwrap_or(0);
        let take = usize::try_from(max).unwrap_or(CHANGES_MAX).clamp(1, CHANGES_MAX);
        let changes: Vec<Change> = published.log.iter().skip(skip).take(take).cloned().collect();
        Some(Body::ChangesAnswer { epoch: self.epoch, reset: false, last: published.version, changes })
    }

    /// Answers a change request, waiting up to `wait_ms` for a change.
    pub async fn answer_changes(&self, epoch: u64, after: u64, max: u32, wait_ms: u32) -> Body {
        let mut versions = self.versions.subscribe();
        if let Some(body) = self.changes(epoch, after, max) {
            return body;
        }
        let wait = Duration::from_millis(u64::from(wait_ms.min(WAIT_MS_MAX)));
        let _ = tokio::time::timeout(wait, versions.wait_for(|&v| v > after)).await;
        self.changes(epoch, after, max).unwrap_or(Body::ChangesAnswer {
            epoch: self.epoch,
            reset: false,
            last: after,
            changes: Vec::new(),
        })
    }

    /// The status answer.
    #[must_use]
    pub fn status(&self) -> MapStatus {
        let published = self.lock();
        MapStatus {
            role: "control".into(),
            epoch: self.epoch,
            version: published.version,
            tables: u32::try_from(published.state.tables.len()).unwrap_or(u32::MAX),
            partitions: u32::try_from(published.state.partitions.len()).unwrap_or(u32::MAX),
            nodes: published.state.nodes.values().cloned().collect(),
            lookups: 0,
            counters: vec![
                ("replacements_asked".into(), self.replacements_asked.load(Ordering::Relaxed)),
                ("replacements_refused".into(), self.replacements_refused.load(Ordering::Relaxed)),
            ],
        }
    }
}

impl Handler for ControlPlane {
    async fn handle(self: Arc<Self>, body: Vec<u8>) -> Vec<u8> {
        let (id, answer) = match routing::decode(&body) {
            Ok((id, Body::Changes { epoch, after, max, wait_ms })) => {
                (id, self.answer_changes(epoch, after, max, wait_ms).await)
            }
            Ok((id, Body::Status)) => (id, Body::StatusAnswer(self.status())),
            Ok((id, Body::Place(partitions))) => {
                let partitions = if partitions == 0 { PARTITIONS_DEFAULT } else { partitions };
                let down = self.down.lock().unwrap_or_else(PoisonError::into_inner).clone();
                match plan_placement(&self.state(), &down, partitions) {
                    Ok(placement) => {
                        tracing::info!(partitions, ?placement, "placed a new table's partitions");
                        (id, Body::PlaceAnswer(placement))
                    }
                    Err(why) => (id, Body::Error(why)),
                }
            }
            Ok((id, other)) => (id, Body::Error(format!("a control plane does not serve {other:?}"))),
            Err(e) => (0, Body::Error(format!("unreadable request: {e}"))),
        };
        routing::encode(id, &answer)
    }
}

/// Polls the storage nodes and publishes what it sees, forever; asks for
/// replacements of the replicas on nodes silent for `replace_after`
/// (`None`: never).
pub async fn poll_nodes(
    control: Arc<ControlPlane>,
    endpoints: Vec<String>,
    interval: Duration,
    replace_after: Option<Duration>,
) {
    use keel_wire::client::{Client, ClientConfig};
    let mut clients: Vec<Option<Client>> = endpoints.iter().map(|_| None).collect();
    let timeout = interval.max(Duration::from_millis(500));
    let mut tables: BTreeMap<String, TableInfo> = BTreeMap::new();
    let mut healer = Healer::default();
    loop {
        let mut polls = tokio::task::JoinSet::new();
        for (at, endpoint) in endpoints.iter().enumerate() {
            let client = clients.get_mut(at).and_then(Option::take);
            let endpoint = endpoint.clone();
            polls.spawn(async move {
                let client = match client {
                    Some(client) => client,
                    None => {
                        let mut config = ClientConfig::new(endpoint);
                        config.retries_max = 0;
                        config.connections = 1;
                        config.request_timeout = timeout;
                        let connect = tokio::time::timeout(timeout, Client::connect(config)).await;
                        match connect {
                            Ok(Ok(client)) => client,
                            _ => return (at, None, None),
                        }
                    }
                };
                let status = client.cluster_status().await.ok();
                (at, status.is_some().then_some(client), status)
            });
        }
        let mut statuses = Vec::new();
        let mut catalog_leader = None;
        while let Some(done) = polls.join_next().await {
            let Ok((at, client, status)) = done else { continue };
            if let Some(slot) = clients.get_mut(at) {
                *slot = client;
            }
            let leads =
                |s: &NodeStatus| s.groups.iter().any(|g| g.partition == CATALOG_PARTITION && g.role == ROLE_LEADER);
            if status.as_ref().is_some_and(leads) {
                catalog_leader = Some(at);
            }
            statuses.extend(status);
        }
        // The catalog, read from its leader first: a node's copy is what
        // it has applied, and one that was down may lag behind (or, once
        // the leader's log restarted past it, stay behind: see
        // ARCHITECTURE.md), so another node's list could drop a table.
        let order = catalog_leader.into_iter().chain((0..clients.len()).filter(|&at| Some(at) != catalog_leader));
        for at in order {
            let Some(client) = clients.get(at).and_then(Option::as_ref) else { continue };
            if read_catalog(client, &mut tables).await.is_ok() {
                break;
            }
        }
        let tables_now: Vec<TableInfo> = tables.values().cloned().collect();
        let state = observe(&control.state(), &statuses, &tables_now);
        let now = Instant::now();
        healer.note_reports(&statuses);
        let down = healer.down(&state, now, replace_after.unwrap_or(REPLACE_AFTER));
        if replace_after.is_some() {
            for replacement in healer.plan(&state, &down, now) {
                let endpoint = state.nodes.get(&replacement.leader).map(|n| n.endpoint.clone()).unwrap_or_default();
                tokio::spawn(ask_replacement(Arc::clone(&control), endpoint, replacement, timeout));
            }
        }
        *control.down.lock().unwrap_or_else(PoisonError::into_inner) = down;
        let changes = control.publish(state);
        if changes > 0 {
            tracing::debug!(changes, "published routing changes");
        }
        tokio::time::sleep(interval).await;
    }
}

/// Asks a partition's leader for one replacement (a fresh connection: this
/// is rare, and the leader may be a node the poll does not reach first).
async fn ask_replacement(control: Arc<ControlPlane>, endpoint: String, r: Replacement, timeout: Duration) {
    use keel_wire::client::{Client, ClientConfig};
    let mut config = ClientConfig::new(endpoint.clone());
    config.retries_max = 0;
    config.connections = 1;
    config.request_timeout = timeout;
    let asked = async {
        let client = Client::connect(config).await?;
        client.replace_replica(r.partition, r.remove, r.add).await
    };
    let partition = format!("{:#x}", r.partition);
    match tokio::time::timeout(timeout, asked).await {
        Ok(Ok(())) => {
            control.replacements_asked.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(partition, remove = r.remove, add = r.add, leader = %endpoint, "asked for a replica replacement");
        }
        Ok(Err(e)) => {
            control.replacements_refused.fetch_add(1, Ordering::Relaxed);
            tracing::info!(partition, remove = r.remove, add = r.add, error = %e, "replica replacement not made");
        }
        Err(_) => {
            control.replacements_refused.fetch_add(1, Ordering::Relaxed);
            tracing::info!(partition, remove = r.remove, add = r.add, "replica replacement request timed out");
        }
    }
}

/// Brings `tables` up to the catalog's list (a new name is described once;
/// a table's schema does not change while it exists).
async fn read_catalog(
    client: &keel_wire::client::Client,
    tables: &mut BTreeMap<String, TableInfo>,
) -> Result<(), keel_wire::client::ClientError> {
    let mut names = Vec::new();
    let mut start: Option<String> = None;
    loop {
        let (page, last) = client.list_tables(start.as_deref(), 0).await?;
        names.extend(page);
        match last {
            Some(last) => start = Some(last),
            None => break,
        }
    }
    tables.retain(|name, _| names.contains(name));
    for name in names {
        if let std::collections::btree_map::Entry::Vacant(slot) = tables.entry(name) {
            let info = client.describe_table(slot.key()).await?;
            slot.insert(info);
        }
    }
    Ok(())
}

#[cfg(test)]
// A missing entry failing the test by panicking is what the test wants.
#[allow(clippy::indexing_slicing)]
mod tests {
    use keel_wire::protocol::{GroupInfo, KeyKind, MemberInfo};

    use super::*;

    fn member(id: u64) -> MemberInfo {
        MemberInfo { id, name: format!("n{id}"), address: format!("127.0.0.1:74{id}9"), az: format!("az{id}") }
    }

    fn group(partition: u64, shard: u32, role: u8, leader: u64, term: u64) -> GroupInfo {
        GroupInfo {
            partition,
            shard,
            role,
            leader,
            term,
            commit: 5,
            applied: 5,
            last_index: 5,
            voters: vec![1, 2, 3],
            log_replicas: Vec::new(),
            node: 0,
        }
    }

    fn status(id: u64, groups: Vec<GroupInfo>) -> NodeStatus {
        NodeStatus {
            node_id: id,
            members: (1..=3).map(member).collect(),
            groups,
            endpoint: format!("127.0.0.1:74{id}0"),
            shard_endpoints: vec![format!("127.0.0.1:74{id}1"), format!("127.0.0.1:74{id}2")],
            services: Vec::new(),
        }
    }

    fn table() -> TableInfo {
        TableInfo {
            name: "music".into(),
            partition_key: ("artist".into(), KeyKind::S),
            sort_key: Some(("song".into(), KeyKind::S)),
            partitions: 2,
            created_at_ms: 1,
            id: 1,
        }
    }

    const P0: u64 = 1 << 32;
    const P1: u64 = (1 << 32) | 1;

    #[test]
    fn the_observed_state_names_leaders_shards_and_health_and_remembers_the_silent() {
        let everyone = [
            status(1, vec![group(0, 0, 3, 1, 2), group(P0, 1, 3, 1, 4), group(P1, 0, 0, 2, 4)]),
            status(2, vec![group(P0, 1, 0, 1, 4), group(P1, 0, 3, 2, 4)]),
            status(3, vec![group(P0, 1, 0, 1, 4), group(P1, 0, 0, 2, 4)]),
        ];
        let first = observe(&State::default(), &everyone, &[table()]);
        assert_eq!(first.tables["music"].sort_key.as_deref(), Some("song"));
        assert_eq!((first.partitions[&P0].leader, first.partitions[&P1].leader), (1, 2));
        assert!(first.partitions[&P0].replicas.iter().all(|r| r.shard == 1 && !r.log_only));
        assert!(!first.partitions.contains_key(&0), "the catalog is not routed");
        assert!(first.nodes.values().all(|n| n.healthy && n.shard_endpoints.len() == 2));

        // Node 1 stops answering; node 2 leads P0 in a newer term with a log
        // replica on node 3.
        let mut newer = group(P0, 1, 3, 2, 5);
        newer.log_replicas = vec![3];
        let rest = [status(2, vec![newer, group(P1, 0, 3, 2, 4)]), status(3, vec![group(P0, 1, 0, 2, 5)])];
        let second = observe(&first, &rest, &[table()]);
        assert!(!second.nodes[&1].healthy, "a silent node stays, unhealthy");
        assert_eq!(second.nodes[&1].endpoint, "127.0.0.1:7410", "with its last known endpoints");
        let p0 = &second.partitions[&P0];
        assert_eq!((p0.leader, p0.term), (2, 5));
        assert_eq!(p0.replicas.iter().find(|r| r.node == 1).map(|r| r.shard), Some(1), "shard remembered");
        assert!(p0.replicas.iter().any(|r| r.node == 3 && r.log_only));
        assert_eq!(diff(&second, &second), Vec::new());
    }

    /// Six nodes, two per zone (n1 n4 in az1, n2 n5 in az2, n3 n6 in az3),
    /// and partitions `1..=count` each on `replicas`, led by the first.
    fn cluster(partitions: &[(u64, [u64; 3])]) -> State {
        let mut state = State::default();
        for id in 1..=6 {
            let az = format!("az{}", (id - 1) % 3 + 1);
            let endpoint = format!("127.0.0.1:7{id}00");
            let route =
                NodeRoute { id, name: format!("n{id}"), az, endpoint, shard_endpoints: Vec::new(), healthy: true };
            state.nodes.insert(id, route);
        }
        for &(partition, nodes) in partitions {
            let replicas = nodes.iter().map(|&node| ReplicaRoute { node, shard: 0, log_only: false }).collect();
            state.partitions.insert(partition, PartitionRoute { partition, leader: nodes[0], term: 2, replicas });
        }
        state
    }

    #[test]
    fn a_down_nodes_replicas_go_to_its_zone_spread_by_load_one_change_per_partition() {
        // n1 (az1) is down. n4, az1's other node, takes both of its
        // replicas whose leaders are up, though it then holds more than
        // n5 or n6: one replica per zone comes before load.
        let mut state = cluster(&[(10, [2, 1, 3]), (11, [3, 2, 1]), (12, [5, 6, 4]), (13, [1, 2, 3])]);
        state.nodes.get_mut(&1).expect("n1").healthy = false;
        let down = BTreeSet::from([1]);
        let plan = plan_replacements(&state, &down, &BTreeMap::new());
        let asked: Vec<(u64, u64, u64, u64)> = plan.iter().map(|r| (r.partition, r.leader, r.remove, r.add)).collect();
        // Partition 13's leader is the down node: it waits for its election.
        assert_eq!(asked, vec![(10, 2, 1, 4), (11, 3, 1, 4)]);

        // With az1 gone entirely (n1 and n4), the replicas go to the
        // least-loaded nodes of other zones, and each choice counts.
        let state = {
            let mut s = cluster(&[(10, [2, 1, 3]), (11, [3, 2, 1]), (14, [2, 5, 1]), (15, [5, 3, 6])]);
            s.nodes.get_mut(&1).expect("n1").healthy = false;
            s.nodes.get_mut(&4).expect("n4").healthy = false;
            s
        };
        let plan = plan_replacements(&state, &BTreeSet::from([1, 4]), &BTreeMap::new());
        let adds: Vec<(u64, u64)> = plan.iter().map(|r| (r.partition, r.add)).collect();
        // Loads before: n2 3, n3 3, n5 2, n6 1. Partition 10 (n2 and n3
        // stay, az2 and az3 both covered) takes the lighter of n5 and n6:
        // n6, now 2. Partition 11 (the same zones): n5 and n6 hold 2 each,
        // the lower id wins: n5. Partition 14 (n2 and n5 stay, both az2)
        // prefers az3: n3 holds 3, n6 2: n6.
        assert_eq!(adds, vec![(10, 6), (11, 5), (14, 6)]);
        assert!(plan.iter().all(|r| r.remove == 1), "one change per partition: the first down replica");
    }

    #[test]
    fn the_healer_waits_for_the_silence_and_does_not_repeat_itself() {
        let mut state = cluster(&[(10, [2, 1, 3])]);
        let mut healer = Healer::default();
        let start = Instant::now();
        let after = Duration::from_secs(3);
        state.nodes.get_mut(&1).expect("n1").healthy = false;
        assert_eq!(healer.due(&state, start, after), Vec::new(), "n1 has never answered: maybe starting");
        assert_eq!(healer.due(&state, start + after * 2, after), Vec::new(), "still never seen up");
        state.nodes.get_mut(&1).expect("n1").healthy = true;
        assert_eq!(healer.due(&state, start, after), Vec::new(), "everyone answers");
        state.nodes.get_mut(&1).expect("n1").healthy = false;
        assert_eq!(healer.due(&state, start, after), Vec::new(), "silent, not yet for long");
        assert_eq!(healer.due(&state, start + Duration::from_millis(2_900), after), Vec::new());
        let due = healer.due(&state, start + after, after);
        assert_eq!(due, vec![Replacement { partition: 10, leader: 2, remove: 1, add: 4 }]);
        assert_eq!(healer.due(&state, start + after + Duration::from_secs(1), after), Vec::new(), "asked already");
        let again = start + after + REPLACE_RETRY_AFTER;
        assert_eq!(healer.due(&state, again, after), due, "still a replica: asked again");
        // n1 answers again: its silence starts over.
        state.nodes.get_mut(&1).expect("n1").healthy = true;
        assert_eq!(healer.due(&state, again, after), Vec::new());
        state.nodes.get_mut(&1).expect("n1").healthy = false;
        assert_eq!(healer.due(&state, again + Duration::from_secs(5), after), Vec::new(), "silent since just now");
        // n4 still reports an old group of partition 10: n5 would be the
        // next choice (another zone), not n4.
        let mut n4 = status(4, vec![group(10, 0, 0, 0, 1)]);
        n4.node_id = 4;
        healer.note_reports(&[n4]);
        let later = again + Duration::from_secs(5) + after;
        let due = healer.due(&state, later, after);
        assert_eq!(due.iter().map(|r| r.add).collect::<Vec<_>>(), vec![5], "{due:?}");
    }

    #[test]
    fn a_replaced_replica_reporting_its_old_group_is_not_believed() {
        // Node 1 was replaced by node 4 in term 4 while it was down; back,
        // it reports its old group (same term, less committed), and no
        // leader is elected yet.
        let mut zombie = group(P0, 1, 0, 0, 4);
        zombie.commit = 3;
        let mut current = group(P0, 1, 0, 0, 4);
        current.commit = 9;
        current.voters = vec![2, 3, 4];
        let reports = [status(1, vec![zombie.clone()]), status(2, vec![current.clone()]), status(3, vec![current])];
        let state = observe(&State::default(), &reports, &[table()]);
        let nodes: Vec<u64> = state.partitions[&P0].replicas.iter().map(|r| r.node).collect();
        assert_eq!(nodes, vec![2, 3, 4]);
        // Whoever leads in the newest term is believed over any follower.
        let mut leader = zombie;
        leader.role = ROLE_LEADER;
        leader.term = 5;
        let reports = [status(1, vec![leader]), status(2, vec![group(P0, 1, 0, 1, 5)])];
        let state = observe(&State::default(), &reports, &[table()]);
        let nodes: Vec<u64> = state.partitions[&P0].replicas.iter().map(|r| r.node).collect();
        assert_eq!((state.partitions[&P0].leader, nodes), (1, vec![1, 2, 3]));
    }

    #[test]
    fn a_new_tables_partitions_go_one_per_zone_to_the_least_loaded_healthy_nodes() {
        // n1 holds two replicas, n4 (az1 too) none: az1's replicas go to n4
        // until it holds as many as n1, then they alternate.
        let state = cluster(&[(10, [1, 2, 3]), (11, [1, 5, 6])]);
        let placement = plan_placement(&state, &BTreeSet::new(), 4).expect("placed");
        let az1: Vec<u64> = placement.iter().map(|nodes| nodes[0]).collect();
        assert_eq!(az1, vec![4, 4, 1, 4]);
        assert!(placement.iter().all(|nodes| nodes.len() == 3), "{placement:?}");
        for nodes in &placement {
            let zones: BTreeSet<&str> = nodes.iter().map(|id| state.nodes[id].az.as_str()).collect();
            assert_eq!(zones.len(), 3, "one replica per zone: {nodes:?}");
        }
        // A down node is never chosen.
        let placement = plan_placement(&state, &BTreeSet::from([4]), 3).expect("placed");
        assert!(placement.iter().all(|nodes| nodes[0] == 1), "{placement:?}");
        // With a zone gone there is nowhere to put a third replica.
        assert!(plan_placement(&state, &BTreeSet::from([1, 4]), 1).is_err());
        assert!(plan_placement(&cluster(&[]), &BTreeSet::new(), 0).is_err(), "a table has a partition");
    }

    fn follow(control: &ControlPlane, map: &mut crate::map::RoutingMap) {
        let Some(Body::ChangesAnswer { epoch, reset, changes, .. }) = control.changes(map.epoch(), map.version(), 3)
        else {
            return;
        };
        if reset {
            let first = changes.first().map_or(0, |c| c.version);
            map.reset_at(epoch, first.saturating_sub(1));
        }
        for change in &changes {
            map.apply(change).expect("changes come in order");
        }
    }

    #[test]
    fn a_follower_reaches_the_published_state_from_scratch_and_after_a_restart() {
        let everyone = [status(1, vec![group(P0, 0, 3, 1, 2), group(P1, 1, 3, 1, 2)])];
        let control = ControlPlane::new(11);
        let mut map = crate::map::RoutingMap::new();
        control.publish(observe(&State::default(), &everyone, &[table()]));
        for _ in 0..10 {
            follow(&control, &mut map);
        }
        assert_eq!((map.epoch(), map.state()), (11, &control.state()));
        // A new table arrives in small pieces (max 3 per answer).
        let mut second = table();
        second.name = "books".into();
        second.id = 2;
        control.publish(observe(&control.state(), &everyone, &[table(), second]));
        while map.version() < control.status().version {
            follow(&control, &mut map);
        }
        assert_eq!(map.state(), &control.state());
        assert_eq!(control.changes(11, map.version(), 3), None, "nothing newer: the request waits");
        // A restarted control plane (new epoch) resets the follower.
        let restarted = ControlPlane::new(12);
        restarted.publish(control.state());
        follow(&restarted, &mut map);
        assert_eq!((map.epoch(), map.version(), map.state()), (12, restarted.status().version, &restarted.state()));
    }
}

//! Routing metadata on the wire: the control plane's change stream, MemDS
//! lookups and status, in Keel's own FlatBuffers envelope
//! (`wire/schema/routing.fbs`, identifier `KRTE`, layout in
//! `docs/format/routing.md`), carried in the same frames as the client
//! protocol (`[u32 len][u32 crc32c][body]`).
//!
//! Messages are plain owned structs here (metadata is small and long-lived;
//! nothing on this path is worth borrowing). A received body is verified
//! (identifier, the FlatBuffers verifier with limits) and every list is
//! checked against the limits below before it is read.

use crate::verify::VerifyError;

/// Generated types of `routing.fbs` (`keel.routing` namespace).
pub use crate::generated_routing::keel::routing as rtfb;

/// Most keys in one lookup.
pub const LOOKUP_KEYS_MAX: usize = 4096;
/// Most changes in one answer.
pub const CHANGES_MAX: usize = 64 * 1024;
/// Most replicas of one partition (voters and log replicas).
pub const REPLICAS_MAX: usize = 16;
/// Most shards of one node.
pub const SHARDS_MAX: usize = 1024;
/// Most nodes in a status answer.
pub const NODES_MAX: usize = 4096;
/// Longest name, zone or endpoint.
pub const STRING_MAX_BYTES: usize = 1024;
/// Most named counters in a status answer.
pub const COUNTERS_MAX: usize = 64;
/// Most partitions one placement answer places (keel-node's
/// `PARTITIONS_MAX`).
pub const PLACE_PARTITIONS_MAX: usize = crate::protocol::PLACEMENT_PARTITIONS_MAX;

/// A table as a router needs it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TableRoute {
    /// Name.
    pub name: String,
    /// Id: partition i is `(id << 32) | i`.
    pub id: u32,
    /// Hash-range partitions.
    pub partitions: u32,
    /// Partition key attribute.
    pub partition_key: String,
    /// Sort key attribute, if the table has one.
    pub sort_key: Option<String>,
}

impl TableRoute {
    /// The partition holding partition-key hash `hash`.
    #[must_use]
    pub fn partition_of(&self, hash: u64) -> u64 {
        let index = (u128::from(hash) * u128::from(self.partitions.max(1))) >> 64;
        (u64::from(self.id) << 32) | u64::try_from(index).unwrap_or(0)
    }
}

/// A replica: node and shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReplicaRoute {
    /// Node id.
    pub node: u64,
    /// Shard index on that node.
    pub shard: u32,
    /// Keeps only the log.
    pub log_only: bool,
}

/// A partition's replicas and leader.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PartitionRoute {
    /// Partition id.
    pub partition: u64,
    /// Leader node id (0: unknown).
    pub leader: u64,
    /// Leader's term (0: unknown).
    pub term: u64,
    /// Replicas.
    pub replicas: Vec<ReplicaRoute>,
}

/// A storage node.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeRoute {
    /// Node id.
    pub id: u64,
    /// Name.
    pub name: String,
    /// Availability zone.
    pub az: String,
    /// Entry port (host:port).
    pub endpoint: String,
    /// Each shard's own port.
    pub shard_endpoints: Vec<String>,
    /// Answered the last poll.
    pub healthy: bool,
}

/// What one change sets or removes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeKind {
    /// A table created or changed.
    Table(TableRoute),
    /// A table dropped (by name).
    TableDropped(String),
    /// A partition's replicas or leader.
    Partition(PartitionRoute),
    /// A partition that no longer exists.
    PartitionDropped(u64),
    /// A storage node.
    Node(NodeRoute),
}

/// One numbered change of the routing map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Version (1, 2, … within an epoch).
    pub version: u64,
    /// What it does.
    pub kind: ChangeKind,
}

/// A key to locate.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LookupKey {
    /// Table name.
    pub table: String,
    /// Hash of the partition key.
    pub hash: u64,
    /// Only the table is wanted.
    pub table_only: bool,
}

/// Whether a key was located.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupStatus {
    /// Found.
    Found,
    /// No such table.
    NoSuchTable,
    /// The table exists; its partition's replicas are not known yet.
    NoRoute,
}

/// A replica with its addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocatedReplica {
    /// Node id.
    pub node: u64,
    /// The shard's client port.
    pub endpoint: String,
    /// The node's entry port.
    pub node_endpoint: String,
    /// Zone.
    pub az: String,
    /// Keeps only the log.
    pub log_only: bool,
    /// Answered the control plane's last poll.
    pub healthy: bool,
}

/// One key's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// Found or why not.
    pub status: LookupStatus,
    /// The table (when it exists).
    pub table: Option<TableRoute>,
    /// Partition id (0 when not found).
    pub partition: u64,
    /// Leader node id (0: unknown).
    pub leader: u64,
    /// Leader's term.
    pub term: u64,
    /// The change that last set this partition.
    pub version: u64,
    /// Replicas.
    pub replicas: Vec<LocatedReplica>,
}

/// What a control plane or MemDS server holds.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MapStatus {
    /// "control" or "memds".
    pub role: String,
    /// Epoch of the map.
    pub epoch: u64,
    /// Version of the map.
    pub version: u64,
    /// Tables.
    pub tables: u32,
    /// Partitions.
    pub partitions: u32,
    /// Storage nodes.
    pub nodes: Vec<NodeRoute>,
    /// Lookups answered.
    pub lookups: u64,
    /// Named counters (a router's requests, cache hits and misses, lookups).
    pub counters: Vec<(String, u64)>,
}

impl MapStatus {
    /// The counter named `name` (0 when absent).
    #[must_use]
    pub fn counter(&self, name: &str) -> u64 {
        self.counters.iter().find(|(n, _)| n == name).map_or(0, |&(_, v)| v)
    }
}

/// A routing message body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// Changes after `after` of `epoch`, waiting up to `wait_ms` for one.
    Changes {
        /// Follower's epoch (0: none yet).
        epoch: u64,
        /// Last version the follower applied.
        after: u64,
        /// Most changes wanted.
        max: u32,
        /// How long to wait for a change.
        wait_ms: u32,
    },
    /// The answer to [`Body::Changes`].
    ChangesAnswer {
        /// Control plane epoch.
        epoch: u64,
        /// Start from scratch with these changes.
        reset: bool,
        /// Newest version the control plane has.
        last: u64,
        /// The changes.
        changes: Vec<Change>,
    },
    /// Keys to locate.
    Lookup(Vec<LookupKey>),
    /// The answer to [`Body::Lookup`], in key order.
    LookupAnswer {
        /// Map epoch.
        epoch: u64,
        /// Map version.
        version: u64,
        /// One per key.
        locations: Vec<Location>,
    },
    /// Asks for [`Body::StatusAnswer`].
    Status,
    /// What the server holds.
    StatusAnswer(MapStatus),
    /// The request could not be served.
    Error(String),
    /// Asks a router to drop its routing cache; answered with
    /// [`Body::StatusAnswer`].
    FlushCache,
    /// Asks the control plane where a new table's partitions (this many)
    /// go; answered with [`Body::PlaceAnswer`].
    Place(u32),
    /// Each partition's nodes, by partition index.
    PlaceAnswer(Vec<Vec<u64>>),
}

/// A routing message that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RoutingDecodeError {
    /// Not a valid envelope.
    #[error(transparent)]
    Verify(#[from] VerifyError),
    /// The identifier is missing.
    #[error("not a routing message (identifier missing)")]
    Identifier,
    /// A count or length above its limit.
    #[error("{what}: {count} exceeds the limit of {max}")]
    TooMany {
        /// What.
        what: &'static str,
        /// How many.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A value outside its domain.
    #[error("invalid routing message: {0}")]
    Invalid(&'static str),
}

type Fbb<'a> = flatbuffers::FlatBufferBuilder<'a>;
type Off<T> = flatbuffers::WIPOffset<T>;

fn table_route<'a>(b: &mut Fbb<'a>, t: &TableRoute) -> Off<rtfb::TableRoute<'a>> {
    let args = rtfb::TableRouteArgs {
        name: Some(b.create_string(&t.name)),
        id: t.id,
        partitions: t.partitions,
        partition_key: Some(b.create_string(&t.partition_key)),
        sort_key: t.sort_key.as_deref().map(|k| b.create_string(k)),
    };
    rtfb::TableRoute::create(b, &args)
}

fn replica_routes<'a>(
    b: &mut Fbb<'a>,
    replicas: &[ReplicaRoute],
) -> Off<flatbuffers::Vector<'a, flatbuffers::ForwardsUOffset<rtfb::ReplicaRoute<'a>>>> {
    let list: Vec<_> = replicas
        .iter()
        .map(|r| {
            rtfb::ReplicaRoute::create(
                b,
                &rtfb::ReplicaRouteArgs { node: r.node, shard: r.shard, log_only: r.log_only },
            )
        })
        .collect();
    b.create_vector(&list)
}

fn node_route<'a>(b: &mut Fbb<'a>, n: &NodeRoute) -> Off<rtfb::NodeRoute<'a>> {
    let shards: Vec<_> = n.shard_endpoints.iter().map(|e| b.create_string(e)).collect();
    let args = rtfb::NodeRouteArgs {
        id: n.id,
        name: Some(b.create_string(&n.name)),
        az: Some(b.create_string(&n.az)),
        endpoint: Some(b.create_string(&n.endpoint)),
        shard_endpoints: Some(b.create_vector(&shards)),
        healthy: n.healthy,
    };
    rtfb::NodeRoute::create(b, &args)
}

fn change<'a>(b: &mut Fbb<'a>, c: &Change) -> Off<rtfb::Change<'a>> {
    let mut args = rtfb::ChangeArgs { version: c.version, ..rtfb::ChangeArgs::default() };
    match &c.kind {
        ChangeKind::Table(t) => args.table = Some(table_route(b, t)),
        ChangeKind::TableDropped(name) => args.table_dropped = Some(b.create_string(name)),
        ChangeKind::Partition(p) => {
            let replicas = replica_routes(b, &p.replicas);
            let route = rtfb::PartitionRouteArgs {
                partition: p.partition,
                leader: p.leader,
                term: p.term,
                replicas: Some(replicas),
            };
            args.partition = Some(rtfb::PartitionRoute::create(b, &route));
        }
        ChangeKind::PartitionDropped(p) => args.partition_dropped = *p,
        ChangeKind::Node(n) => args.node = Some(node_route(b, n)),
    }
    rtfb::Change::create(b, &args)
}

fn location<'a>(b: &mut Fbb<'a>, l: &Location) -> Off<rtfb::Location<'a>> {
    let table = l.table.as_ref().map(|t| table_route(b, t));
    let replicas: Vec<_> = l
        .replicas
        .iter()
        .map(|r| {
            let args = rtfb::LocatedReplicaArgs {
                node: r.node,
                endpoint: Some(b.create_string(&r.endpoint)),
                node_endpoint: Some(b.create_string(&r.node_endpoint)),
                az: Some(b.create_string(&r.az)),
                log_only: r.log_only,
                healthy: r.healthy,
            };
            rtfb::LocatedReplica::create(b, &args)
        })
        .collect();
    let replicas = b.create_vector(&replicas);
    let status = match l.status {
        LookupStatus::Found => rtfb::LookupStatus::Found,
        LookupStatus::NoSuchTable => rtfb::LookupStatus::NoSuchTable,
        LookupStatus::NoRoute => rtfb::LookupStatus::NoRoute,
    };
    let args = rtfb::LocationArgs {
        status,
        table,
        partition: l.partition,
        leader: l.leader,
        term: l.term,
        version: l.version,
        replicas: Some(replicas),
    };
    rtfb::Location::create(b, &args)
}

/// Encodes one message. Lists above the limits are the caller's bug.
#[must_use]
pub fn encode(id: u64, body: &Body) -> Vec<u8> {
    let mut b = Fbb::new();
    let (kind, value) = match body {
        Body::Changes { epoch, after, max, wait_ms } => {
            let args = rtfb::ChangesRequestArgs { epoch: *epoch, after: *after, max: *max, wait_ms: *wait_ms };
            (rtfb::Body::ChangesRequest, rtfb::ChangesRequest::create(&mut b, &args).as_union_value())
        }
        Body::ChangesAnswer { epoch, reset, last, changes } => {
            assert!(changes.len() <= CHANGES_MAX, "callers cap answers at CHANGES_MAX");
            let list: Vec<_> = changes.iter().map(|c| change(&mut b, c)).collect();
            let changes = b.create_vector(&list);
            let args = rtfb::ChangesResponseArgs { epoch: *epoch, reset: *reset, last: *last, changes: Some(changes) };
            (rtfb::Body::ChangesResponse, rtfb::ChangesResponse::create(&mut b, &args).as_union_value())
        }
        Body::Lookup(keys) => {
            assert!(keys.len() <= LOOKUP_KEYS_MAX, "callers batch at most LOOKUP_KEYS_MAX keys");
            let list: Vec<_> = keys
                .iter()
                .map(|k| {
                    let args = rtfb::LookupKeyArgs {
                        table: Some(b.create_string(&k.table)),
                        hash: k.hash,
                        table_only: k.table_only,
                    };
                    rtfb::LookupKey::create(&mut b, &args)
                })
                .collect();
            let keys = b.create_vector(&list);
            let r = rtfb::LookupRequest::create(&mut b, &rtfb::LookupRequestArgs { keys: Some(keys) });
            (rtfb::Body::LookupRequest, r.as_union_value())
        }
        Body::LookupAnswer { epoch, version, locations } => {
            let list: Vec<_> = locations.iter().map(|l| location(&mut b, l)).collect();
            let locations = b.create_vector(&list);
            let args = rtfb::LookupResponseArgs { epoch: *epoch, version: *version, locations: Some(locations) };
            (rtfb::Body::LookupResponse, rtfb::LookupResponse::create(&mut b, &args).as_union_value())
        }
        Body::Status => (
            rtfb::Body::StatusRequest,
            rtfb::StatusRequest::create(&mut b, &rtfb::StatusRequestArgs {}).as_union_value(),
        ),
        Body::StatusAnswer(s) => {
            let nodes: Vec<_> = s.nodes.iter().map(|n| node_route(&mut b, n)).collect();
            let nodes = b.create_vector(&nodes);
            assert!(s.counters.len() <= COUNTERS_MAX, "a status has at most COUNTERS_MAX counters");
            let counters: Vec<_> = s
                .counters
                .iter()
                .map(|(name, value)| {
                    let args = rtfb::CounterArgs { name: Some(b.create_string(name)), value: *value };
                    rtfb::Counter::create(&mut b, &args)
                })
                .collect();
            let counters = b.create_vector(&counters);
            let args = rtfb::StatusResponseArgs {
                role: Some(b.create_string(&s.role)),
                epoch: s.epoch,
                version: s.version,
                tables: s.tables,
                partitions: s.partitions,
                nodes: Some(nodes),
                lookups: s.lookups,
                counters: Some(counters),
            };
            (rtfb::Body::StatusResponse, rtfb::StatusResponse::create(&mut b, &args).as_union_value())
        }
        Body::Error(message) => {
            let args = rtfb::RoutingErrorArgs { message: Some(b.create_string(message)) };
            (rtfb::Body::RoutingError, rtfb::RoutingError::create(&mut b, &args).as_union_value())
        }
        Body::FlushCache => (
            rtfb::Body::FlushCacheRequest,
            rtfb::FlushCacheRequest::create(&mut b, &rtfb::FlushCacheRequestArgs {}).as_union_value(),
        ),
        Body::Place(partitions) => (
            rtfb::Body::PlaceRequest,
            rtfb::PlaceRequest::create(&mut b, &rtfb::PlaceRequestArgs { partitions: *partitions }).as_union_value(),
        ),
        Body::PlaceAnswer(placement) => {
            assert!(placement.len() <= PLACE_PARTITIONS_MAX, "a placement has at most PLACE_PARTITIONS_MAX partitions");
            let built: Vec<_> = placement
                .iter()
                .map(|nodes| {
                    assert!(nodes.len() <= REPLICAS_MAX, "a partition has at most REPLICAS_MAX replicas");
                    let nodes = b.create_vector(nodes);
                    rtfb::Placement::create(&mut b, &rtfb::PlacementArgs { nodes: Some(nodes) })
                })
                .collect();
            let placement = b.create_vector(&built);
            let args = rtfb::PlaceResponseArgs { placement: Some(placement) };
            (rtfb::Body::PlaceResponse, rtfb::PlaceResponse::create(&mut b, &args).as_union_value())
        }
    };
    let root =
        rtfb::RoutingMessage::create(&mut b, &rtfb::RoutingMessageArgs { id, body_type: kind, body: Some(value) });
    rtfb::finish_routing_message_buffer(&mut b, root);
    b.finished_data().to_vec()
}

fn limit(what: &'static str, count: usize, max: usize) -> Result<(), RoutingDecodeError> {
    if count > max { Err(RoutingDecodeError::TooMany { what, count, max }) } else { Ok(()) }
}

fn text(what: &'static str, s: &str) -> Result<String, RoutingDecodeError> {
    limit(what, s.len(), STRING_MAX_BYTES)?;
    Ok(s.to_owned())
}

fn read_table(t: rtfb::TableRoute<'_>) -> Result<TableRoute, RoutingDecodeError> {
    Ok(TableRoute {
        name: text("table name bytes", t.name())?,
        id: t.id(),
        partitions: t.partitions(),
        partition_key: text("partition key bytes", t.partition_key())?,
        sort_key: t.sort_key().map(|k| text("sort key bytes", k)).transpose()?,
    })
}

fn read_node(n: rtfb::NodeRoute<'_>) -> Result<NodeRoute, RoutingDecodeError> {
    let shards = n.shard_endpoints();
    limit("shard endpoints", shards.len(), SHARDS_MAX)?;
    Ok(NodeRoute {
        id: n.id(),
        name: text("node name bytes", n.name())?,
        az: text("zone bytes", n.az())?,
        endpoint: text("endpoint bytes", n.endpoint())?,
        shard_endpoints: shards.iter().map(|e| text("endpoint bytes", e)).collect::<Result<_, _>>()?,
        healthy: n.healthy(),
    })
}

fn read_change(c: rtfb::Change<'_>) -> Result<Change, RoutingDecodeError> {
    let kind = if let Some(t) = c.table() {
        ChangeKind::Table(read_table(t)?)
    } else if let Some(name) = c.table_dropped() {
        ChangeKind::TableDropped(text("table name bytes", name)?)
    } else if let Some(p) = c.partition() {
        let replicas = p.replicas();
        limit("replicas", replicas.len(), REPLICAS_MAX)?;
        ChangeKind::Partition(PartitionRoute {
            partition: p.partition(),
            leader: p.leader(),
            term: p.term(),
            replicas: replicas
                .iter()
                .map(|r| ReplicaRoute { node: r.node(), shard: r.shard(), log_only: r.log_only() })
                .collect(),
        })
    } else if let Some(n) = c.node() {
        ChangeKind::Node(read_node(n)?)
    } else if c.partition_dropped() != 0 {
        ChangeKind::PartitionDropped(c.partition_dropped())
    } else {
        return Err(RoutingDecodeError::Invalid("a change that sets nothing"));
    };
    Ok(Change { version: c.version(), kind })
}

fn read_location(l: rtfb::Location<'_>) -> Result<Location, RoutingDecodeError> {
    let status = match l.status() {
        rtfb::LookupStatus::Found => LookupStatus::Found,
        rtfb::LookupStatus::NoSuchTable => LookupStatus::NoSuchTable,
        rtfb::LookupStatus::NoRoute => LookupStatus::NoRoute,
        _ => return Err(RoutingDecodeError::Invalid("unknown lookup status")),
    };
    let replicas = l.replicas().unwrap_or_default();
    limit("replicas", replicas.len(), REPLICAS_MAX)?;
    Ok(Location {
        status,
        table: l.table().map(read_table).transpose()?,
        partition: l.partition(),
        leader: l.leader(),
        term: l.term(),
        version: l.version(),
        replicas: replicas
            .iter()
            .map(|r| {
                Ok(LocatedReplica {
                    node: r.node(),
                    endpoint: text("endpoint bytes", r.endpoint())?,
                    node_endpoint: text("endpoint bytes", r.node_endpoint())?,
                    az: text("zone bytes", r.az())?,
                    log_only: r.log_only(),
                    healthy: r.healthy(),
                })
            })
            .collect::<Result<_, RoutingDecodeError>>()?,
    })
}

/// Verifies and reads one message: its id and body.
pub fn decode(bytes: &[u8]) -> Result<(u64, Body), RoutingDecodeError> {
    // flatbuffers asserts (panics) on an identifier check of a buffer
    // shorter than 8 bytes: look only when it can be there.
    if bytes.len() < 8 || !rtfb::routing_message_buffer_has_identifier(bytes) {
        return Err(RoutingDecodeError::Identifier);
    }
    let message = rtfb::root_as_routing_message_with_opts(&crate::verify::options(), bytes)
        .map_err(|source| VerifyError { what: "routing message", source })?;
    let body = if let Some(r) = message.body_as_changes_request() {
        Body::Changes { epoch: r.epoch(), after: r.after(), max: r.max(), wait_ms: r.wait_ms() }
    } else if let Some(r) = message.body_as_changes_response() {
        let changes = r.changes();
        limit("changes", changes.len(), CHANGES_MAX)?;
        Body::ChangesAnswer {
            epoch: r.epoch(),
            reset: r.reset(),
            last: r.last(),
            changes: changes.iter().map(read_change).collect::<Result<_, _>>()?,
        }
    } else if let Some(r) = message.body_as_lookup_request() {
        let keys = r.keys();
        limit("lookup keys", keys.len(), LOOKUP_KEYS_MAX)?;
        Body::Lookup(
            keys.iter()
                .map(|k| {
                    Ok(LookupKey {
                        table: text("table name bytes", k.table())?,
                        hash: k.hash(),
                        table_only: k.table_only(),
                    })
                })
                .collect::<Result<_, RoutingDecodeError>>()?,
        )
    } else if let Some(r) = message.body_as_lookup_response() {
        let locations = r.locations();
        limit("locations", locations.len(), LOOKUP_KEYS_MAX)?;
        Body::LookupAnswer {
            epoch: r.epoch(),
            version: r.version(),
            locations: locations.iter().map(read_location).collect::<Result<_, _>>()?,
        }
    } else if message.body_as_status_request().is_some() {
        Body::Status
    } else if let Some(r) = message.body_as_status_response() {
        let nodes = r.nodes().unwrap_or_default();
        limit("nodes", nodes.len(), NODES_MAX)?;
        let counters = r.counters().unwrap_or_default();
        limit("counters", counters.len(), COUNTERS_MAX)?;
        Body::StatusAnswer(MapStatus {
            role: text("role bytes", r.role())?,
            epoch: r.epoch(),
            version: r.version(),
            tables: r.tables(),
            partitions: r.partitions(),
            nodes: nodes.iter().map(read_node).collect::<Result<_, _>>()?,
            lookups: r.lookups(),
            counters: counters
                .iter()
                .map(|c| Ok((text("counter name bytes", c.name())?, c.value())))
                .collect::<Result<_, RoutingDecodeError>>()?,
        })
    } else if let Some(r) = message.body_as_routing_error() {
        Body::Error(text("error message bytes", r.message())?)
    } else if message.body_as_flush_cache_request().is_some() {
        Body::FlushCache
    } else if let Some(r) = message.body_as_place_request() {
        Body::Place(r.partitions())
    } else if let Some(r) = message.body_as_place_response() {
        let placement = r.placement();
        limit("placed partitions", placement.len(), PLACE_PARTITIONS_MAX)?;
        Body::PlaceAnswer(
            placement
                .iter()
                .map(|p| {
                    limit("placed replicas", p.nodes().len(), REPLICAS_MAX)?;
                    Ok(p.nodes().iter().collect())
                })
                .collect::<Result<_, RoutingDecodeError>>()?,
        )
    } else {
        return Err(RoutingDecodeError::Invalid("unknown body type"));
    };
    Ok((message.id(), body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> NodeRoute {
        NodeRoute {
            id: 2,
            name: "n2".into(),
            az: "az2".into(),
            endpoint: "127.0.0.1:7420".into(),
            shard_endpoints: vec!["127.0.0.1:7421".into(), "127.0.0.1:7422".into()],
            healthy: true,
        }
    }

    fn samples() -> Vec<Body> {
        let table = TableRoute {
            name: "music".into(),
            id: 3,
            partitions: 8,
            partition_key: "artist".into(),
            sort_key: Some("song".into()),
        };
        vec![
            Body::Changes { epoch: 9, after: 41, max: 1000, wait_ms: 500 },
            Body::ChangesAnswer {
                epoch: 9,
                reset: true,
                last: 45,
                changes: vec![
                    Change { version: 42, kind: ChangeKind::Table(table.clone()) },
                    Change {
                        version: 43,
                        kind: ChangeKind::Partition(PartitionRoute {
                            partition: table.partition_of(u64::MAX),
                            leader: 2,
                            term: 7,
                            replicas: vec![
                                ReplicaRoute { node: 1, shard: 0, log_only: false },
                                ReplicaRoute { node: 2, shard: 1, log_only: true },
                            ],
                        }),
                    },
                    Change { version: 44, kind: ChangeKind::Node(node()) },
                    Change { version: 45, kind: ChangeKind::PartitionDropped((3 << 32) | 7) },
                    Change { version: 46, kind: ChangeKind::TableDropped("old".into()) },
                ],
            },
            Body::Lookup(vec![
                LookupKey { table: "music".into(), hash: 123, table_only: false },
                LookupKey { table: "music".into(), hash: 0, table_only: true },
            ]),
            Body::LookupAnswer {
                epoch: 9,
                version: 45,
                locations: vec![
                    Location {
                        status: LookupStatus::Found,
                        table: Some(table),
                        partition: (3 << 32) | 1,
                        leader: 2,
                        term: 7,
                        version: 43,
                        replicas: vec![LocatedReplica {
                            node: 2,
                            endpoint: "127.0.0.1:7421".into(),
                            node_endpoint: "127.0.0.1:7420".into(),
                            az: "az2".into(),
                            log_only: false,
                            healthy: true,
                        }],
                    },
                    Location {
                        status: LookupStatus::NoSuchTable,
                        table: None,
                        partition: 0,
                        leader: 0,
                        term: 0,
                        version: 0,
                        replicas: Vec::new(),
                    },
                ],
            },
            Body::Status,
            Body::StatusAnswer(MapStatus {
                role: "memds".into(),
                epoch: 9,
                version: 45,
                tables: 1,
                partitions: 8,
                nodes: vec![node()],
                lookups: 77,
                counters: vec![("requests".into(), 5), ("cache_hits".into(), 4)],
            }),
            Body::Error("no".into()),
            Body::FlushCache,
            Body::Place(4),
            Body::PlaceAnswer(vec![vec![1, 2, 3], vec![4, 2, 3]]),
        ]
    }

    #[test]
    fn every_body_round_trips() {
        for (id, body) in samples().into_iter().enumerate() {
            let id = u64::try_from(id).unwrap_or(0) + 100;
            let bytes = encode(id, &body);
            let (got_id, got) = decode(&bytes).expect("decodes");
            assert_eq!((got_id, got), (id, body));
        }
    }

    #[test]
    fn truncations_and_bit_flips_are_errors_not_panics() {
        for body in samples() {
            let bytes = encode(1, &body);
            for cut in 0..bytes.len() {
                // A cut that leaves a readable message removed padding only.
                if let Ok((_, got)) = decode(bytes.get(..cut).unwrap_or_default()) {
                    assert_eq!(got, body, "a truncation at {cut} read as something else");
                }
            }
            for i in 0..bytes.len() {
                let mut flipped = bytes.clone();
                if let Some(b) = flipped.get_mut(i) {
                    *b ^= 0x5a;
                }
                let _ = decode(&flipped);
            }
        }
    }

    #[test]
    fn a_partition_is_found_by_its_hash_range() {
        let t = TableRoute { name: "t".into(), id: 5, partitions: 4, partition_key: "k".into(), sort_key: None };
        assert_eq!(t.partition_of(0), 5 << 32);
        assert_eq!(t.partition_of(u64::MAX / 4 + 1), (5 << 32) | 1);
        assert_eq!(t.partition_of(u64::MAX), (5 << 32) | 3);
    }

    #[test]
    fn lists_over_their_limit_are_refused() {
        let keys = (0..=LOOKUP_KEYS_MAX).map(|i| LookupKey { table: "t".into(), hash: i as u64, table_only: false });
        // Encoding asserts the limit: build the oversized buffer directly.
        let mut b = Fbb::new();
        let list: Vec<_> = keys
            .map(|k| {
                let args =
                    rtfb::LookupKeyArgs { table: Some(b.create_string(&k.table)), hash: k.hash, table_only: false };
                rtfb::LookupKey::create(&mut b, &args)
            })
            .collect();
        let keys = b.create_vector(&list);
        let r = rtfb::LookupRequest::create(&mut b, &rtfb::LookupRequestArgs { keys: Some(keys) });
        let root = rtfb::RoutingMessage::create(
            &mut b,
            &rtfb::RoutingMessageArgs { id: 1, body_type: rtfb::Body::LookupRequest, body: Some(r.as_union_value()) },
        );
        rtfb::finish_routing_message_buffer(&mut b, root);
        assert!(matches!(decode(b.finished_data()), Err(RoutingDecodeError::TooMany { what: "lookup keys", .. })));
    }
}

//! Typed requests and responses: the FlatBuffers envelopes converted to and
//! from plain Rust at this edge, so the server and the client never touch
//! FlatBuffers types. Item bytes in requests are borrowed from the received
//! frame (zero-copy); item bytes in responses are written as given (the
//! stored bytes), without decoding them.

use flatbuffers::{FlatBufferBuilder, WIPOffset};
use std::cell::RefCell;

use crate::fb;
use crate::item::{self, AttributeValue, Item, ItemError};
use crate::verify::{self, VerifyError};

/// Types of key attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// String.
    S,
    /// Number.
    N,
    /// Binary.
    B,
}

/// Which attributes a write returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReturnValues {
    /// Nothing.
    #[default]
    None,
    /// The item before the write.
    AllOld,
    /// The updated attributes, before.
    UpdatedOld,
    /// The item after the write.
    AllNew,
    /// The updated attributes, after.
    UpdatedNew,
}

/// `ExpressionAttributeNames` and `ExpressionAttributeValues`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExpressionArgs {
    /// `#placeholder` → attribute name.
    pub names: Vec<(String, String)>,
    /// `:placeholder` → value.
    pub values: Vec<(String, AttributeValue)>,
}

/// A request, decoded from a verified frame body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request<'a> {
    /// CreateTable.
    CreateTable {
        /// Table name.
        table: String,
        /// Partition key name and type.
        partition_key: (String, KeyKind),
        /// Sort key name and type.
        sort_key: Option<(String, KeyKind)>,
        /// Partitions (0: default).
        partitions: u32,
        /// Each partition's nodes, by index (empty: the nodes choose).
        placement: Vec<Vec<u64>>,
    },
    /// DeleteTable.
    DeleteTable {
        /// Table name.
        table: String,
    },
    /// DescribeTable.
    DescribeTable {
        /// Table name.
        table: String,
    },
    /// ListTables.
    ListTables {
        /// Start after this name.
        start_after: Option<String>,
        /// Page size (0: default).
        limit: u32,
    },
    /// PutItem.
    PutItem {
        /// Table name.
        table: String,
        /// The item's FlatBuffer bytes, borrowed from the frame.
        item: &'a [u8],
        /// ConditionExpression.
        condition: Option<String>,
        /// Placeholders.
        args: ExpressionArgs,
        /// ReturnValues.
        return_values: ReturnValues,
    },
    /// GetItem.
    GetItem {
        /// Table name.
        table: String,
        /// The key.
        key: Item,
        /// ProjectionExpression.
        projection: Option<String>,
        /// Placeholders (names only).
        args: ExpressionArgs,
        /// ConsistentRead.
        consistent_read: bool,
    },
    /// DeleteItem.
    DeleteItem {
        /// Table name.
        table: String,
        /// The key.
        key: Item,
        /// ConditionExpression.
        condition: Option<String>,
        /// Placeholders.
        args: ExpressionArgs,
        /// ReturnValues.
        return_values: ReturnValues,
    },
    /// UpdateItem.
    UpdateItem {
        /// Table name.
        table: String,
        /// The key.
        key: Item,
        /// UpdateExpression.
        update: String,
        /// ConditionExpression.
        condition: Option<String>,
        /// Placeholders.
        args: ExpressionArgs,
        /// ReturnValues.
        return_values: ReturnValues,
    },
    /// Query.
    Query {
        /// Table name.
        table: String,
        /// KeyConditionExpression.
        key_condition: String,
        /// FilterExpression.
        filter: Option<String>,
        /// ProjectionExpression.
        projection: Option<String>,
        /// Placeholders.
        args: ExpressionArgs,
        /// Limit (0: none).
        limit: u32,
        /// ExclusiveStartKey.
        exclusive_start_key: Option<Item>,
        /// ScanIndexForward.
        forward: bool,
        /// ConsistentRead.
        consistent_read: bool,
    },
    /// Scan.
    Scan {
        /// Table name.
        table: String,
        /// FilterExpression.
        filter: Option<String>,
        /// ProjectionExpression.
        projection: Option<String>,
        /// Placeholders.
        args: ExpressionArgs,
        /// Limit (0: none).
        limit: u32,
        /// ExclusiveStartKey.
        exclusive_start_key: Option<Item>,
        /// Segment.
        segment: u32,
        /// TotalSegments (0 or 1: one).
        total_segments: u32,
        /// ConsistentRead.
        consistent_read: bool,
    },
    /// BatchGetItem.
    BatchGetItem {
        /// Per table.
        tables: Vec<BatchGetTable>,
    },
    /// BatchWriteItem.
    BatchWriteItem {
        /// Per table: its writes.
        tables: Vec<(String, Vec<BatchWrite<'a>>)>,
    },
    /// The answering node's view of the cluster (`keel cluster status`).
    ClusterStatus,
    /// (Control plane → a partition's leader.) Replace the replica on node
    /// `remove` with a log replica on node `add`.
    ReplaceReplica {
        /// The partition (its Raft group).
        partition: u64,
        /// Node id of the replica to remove.
        remove: u64,
        /// Node id of the new log replica.
        add: u64,
    },
    /// An operation this server does not implement yet.
    Unsupported(&'static str),
}

/// Limits on a cluster status reply a client accepts.
pub const STATUS_MEMBERS_MAX: usize = 256;
/// Most groups listed in a status reply.
pub const STATUS_GROUPS_MAX: usize = 1 << 20;
/// Most shard endpoints in a cluster status.
pub const STATUS_SHARDS_MAX: usize = 1024;

/// A member of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo {
    /// Raft id.
    pub id: u64,
    /// Name (`--node-id`).
    pub name: String,
    /// Replication address.
    pub address: String,
    /// Availability zone.
    pub az: String,
}

/// A Raft group as one node's replica sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInfo {
    /// The partition.
    pub partition: u64,
    /// The node's shard holding the replica.
    pub shard: u32,
    /// 0 follower, 1 candidate, 2 pre-candidate, 3 leader.
    pub role: u8,
    /// Node id of the known leader (0: none).
    pub leader: u64,
    /// Term.
    pub term: u64,
    /// Commit index.
    pub commit: u64,
    /// Applied index.
    pub applied: u64,
    /// Last log index.
    pub last_index: u64,
    /// Voters (node ids).
    pub voters: Vec<u64>,
    /// The voters that are log replicas.
    pub log_replicas: Vec<u64>,
    /// The node holding the replica (0: the answering node).
    pub node: u64,
}

/// One node's answer to [`Request::ClusterStatus`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeStatus {
    /// The node's id (0: standalone).
    pub node_id: u64,
    /// Every member.
    pub members: Vec<MemberInfo>,
    /// The node's replicas.
    pub groups: Vec<GroupInfo>,
    /// Where the node serves clients (empty: standalone, or not said).
    pub endpoint: String,
    /// Each shard's own client port, by shard index.
    pub shard_endpoints: Vec<String>,
    /// Front-end processes (filled in by a router; empty from a node).
    pub services: Vec<ServiceInfo>,
}

/// A front-end process (router, MemDS server, control plane) as a router
/// sees it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServiceInfo {
    /// "router", "memds" or "control".
    pub role: String,
    /// Where it listens.
    pub endpoint: String,
    /// Answered the router's last status poll.
    pub healthy: bool,
    /// Routing-map version it holds.
    pub version: u64,
    /// Lookups answered (MemDS) or sent (router).
    pub lookups: u64,
    /// Client requests served (router).
    pub requests: u64,
    /// For role "node": the storage node's id.
    pub node: u64,
    /// For role "control": replica replacements it has asked leaders for.
    pub replacements: u64,
}

/// Of the reports of one group by its replicas (node id, report), the one
/// that knows the group best: its leader's in the newest term
/// reported, else the one with the newest term and the most committed. (A
/// replica that was replaced while it was down still reports its old group,
/// often in the same term, but it has committed less.)
#[must_use]
pub fn newest_report<'a>(seen: &[(u64, &'a GroupInfo)]) -> Option<&'a GroupInfo> {
    let term = seen.iter().map(|(_, g)| g.term).max()?;
    seen.iter()
        .find(|(_, g)| g.role == ROLE_LEADER && g.term == term)
        .or_else(|| seen.iter().filter(|(_, g)| g.term == term).max_by_key(|(_, g)| g.commit))
        .map(|(_, g)| *g)
}

/// [`GroupInfo::role`] of a leader.
pub const ROLE_LEADER: u8 = 3;

/// Most services in a cluster status.
pub const STATUS_SERVICES_MAX: usize = 256;

/// DynamoDB's limit on keys in one BatchGetItem.
pub const BATCH_GET_KEYS_MAX: usize = 100;
/// DynamoDB's limit on writes in one BatchWriteItem.
pub const BATCH_WRITE_REQUESTS_MAX: usize = 25;

/// The keys of one table in a BatchGetItem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchGetTable {
    /// Table name.
    pub table: String,
    /// Keys to read.
    pub keys: Vec<Item>,
    /// ProjectionExpression.
    pub projection: Option<String>,
    /// Placeholders (names only).
    pub args: ExpressionArgs,
    /// ConsistentRead.
    pub consistent_read: bool,
}

/// One write of a BatchWriteItem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchWrite<'a> {
    /// Put these item bytes.
    Put(&'a [u8]),
    /// Delete this key.
    Delete(Item),
}

/// A decoded request with its envelope fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope<'a> {
    /// Chosen by the client; echoed in the response.
    pub request_id: u64,
    /// Per-request timeout (0: server default).
    pub timeout_ms: u32,
    /// The request.
    pub request: Request<'a>,
}

/// A request that could not be decoded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProtocolError {
    /// The body failed verification.
    #[error(transparent)]
    Verify(#[from] VerifyError),
    /// A key or value is not acceptable.
    #[error(transparent)]
    Item(#[from] ItemError),
    /// A reply is outside the limits.
    #[error("{0}")]
    Invalid(String),
}

fn key_kind(k: fb::KeyType) -> KeyKind {
    match k {
        fb::KeyType::N => KeyKind::N,
        fb::KeyType::B => KeyKind::B,
        _ => KeyKind::S,
    }
}

fn return_values(r: fb::ReturnValues) -> ReturnValues {
    match r {
        fb::ReturnValues::AllOld => ReturnValues::AllOld,
        fb::ReturnValues::UpdatedOld => ReturnValues::UpdatedOld,
        fb::ReturnValues::AllNew => ReturnValues::AllNew,
        fb::ReturnValues::UpdatedNew => ReturnValues::UpdatedNew,
        _ => ReturnValues::None,
    }
}

type NameVec<'a> = Option<flatbuffers::Vector<'a, flatbuffers::ForwardsUOffset<fb::ExpressionName<'a>>>>;
type ValueVec<'a> = Option<flatbuffers::Vector<'a, flatbuffers::ForwardsUOffset<fb::ExpressionValue<'a>>>>;

fn args(names: NameVec<'_>, values: ValueVec<'_>) -> Result<ExpressionArgs, ProtocolError> {
    let names = names.iter().flatten().map(|n| (n.placeholder().to_owned(), n.name().to_owned())).collect();
    let mut out = Vec::new();
    for v in values.iter().flatten() {
        let wrapped = item::value_from_fb(v.value())?;
        out.push((v.placeholder().to_owned(), wrapped));
    }
    Ok(ExpressionArgs { names, values: out })
}

/// Replicas of every partition, one per zone (keel-node's membership and
/// the control plane's placement).
pub const REPLICAS_PER_PARTITION: usize = 3;
/// Partitions of a table whose CreateTable says 0.
pub const PARTITIONS_DEFAULT: u32 = 4;
/// Most partitions a CreateTable's placement lists.
pub const PLACEMENT_PARTITIONS_MAX: usize = 1024;
/// Most nodes one partition's placement lists.
pub const PLACEMENT_NODES_MAX: usize = 16;

type PlacementVec<'a> = Option<flatbuffers::Vector<'a, flatbuffers::ForwardsUOffset<fb::PartitionPlacement<'a>>>>;

fn placement_from_fb(placement: PlacementVec<'_>) -> Result<Vec<Vec<u64>>, ProtocolError> {
    let Some(placement) = placement else { return Ok(Vec::new()) };
    if placement.len() > PLACEMENT_PARTITIONS_MAX {
        return Err(ProtocolError::Invalid(format!(
            "a placement of {} partitions (at most {PLACEMENT_PARTITIONS_MAX})",
            placement.len()
        )));
    }
    placement
        .iter()
        .map(|p| {
            let nodes = p.nodes();
            if nodes.len() > PLACEMENT_NODES_MAX {
                return Err(ProtocolError::Invalid(format!(
                    "a partition placed on {} nodes (at most {PLACEMENT_NODES_MAX})",
                    nodes.len()
                )));
            }
            Ok(nodes.iter().collect())
        })
        .collect()
}

/// Verifies and decodes a request frame body.
pub fn decode_request(body: &[u8]) -> Result<Envelope<'_>, ProtocolError> {
    let envelope = verify::request(body)?;
    let owned = |s: Option<&str>| s.map(str::to_owned);
    let request = match envelope.body_type() {
        fb::Request::CreateTableRequest => match envelope.body_as_create_table_request() {
            Some(r) => Request::CreateTable {
                table: r.table_name().to_owned(),
                partition_key: (r.partition_key().name().to_owned(), key_kind(r.partition_key().type_())),
                sort_key: r.sort_key().map(|k| (k.name().to_owned(), key_kind(k.type_()))),
                partitions: r.partitions(),
                placement: placement_from_fb(r.placement())?,
            },
            None => Request::Unsupported("empty CreateTable"),
        },
        fb::Request::DeleteTableRequest => match envelope.body_as_delete_table_request() {
            Some(r) => Request::DeleteTable { table: r.table_name().to_owned() },
            None => Request::Unsupported("empty DeleteTable"),
        },
        fb::Request::DescribeTableRequest => match envelope.body_as_describe_table_request() {
            Some(r) => Request::DescribeTable { table: r.table_name().to_owned() },
            None => Request::Unsupported("empty DescribeTable"),
        },
        fb::Request::ListTablesRequest => match envelope.body_as_list_tables_request() {
            Some(r) => Request::ListTables { start_after: owned(r.exclusive_start_table_name()), limit: r.limit() },
            None => Request::Unsupported("empty ListTables"),
        },
        fb::Request::PutItemRequest => match envelope.body_as_put_item_request() {
            Some(r) => Request::PutItem {
                table: r.table_name().to_owned(),
                item: r.item().bytes().bytes(),
                condition: owned(r.condition_expression()),
                args: args(r.names(), r.values())?,
                return_values: return_values(r.return_values()),
            },
            None => Request::Unsupported("empty PutItem"),
        },
        fb::Request::GetItemRequest => match envelope.body_as_get_item_request() {
            Some(r) => Request::GetItem {
                table: r.table_name().to_owned(),
                key: item::from_fb(r.key())?,
                projection: owned(r.projection_expression()),
                args: args(r.names(), None)?,
                consistent_read: r.consistent_read(),
            },
            None => Request::Unsupported("empty GetItem"),
        },
        fb::Request::DeleteItemRequest => match envelope.body_as_delete_item_request() {
            Some(r) => Request::DeleteItem {
                table: r.table_name().to_owned(),
                key: item::from_fb(r.key())?,
                condition: owned(r.condition_expression()),
                args: args(r.names(), r.values())?,
                return_values: return_values(r.return_values()),
            },
            None => Request::Unsupported("empty DeleteItem"),
        },
        fb::Request::UpdateItemRequest => match envelope.body_as_update_item_request() {
            Some(r) => Request::UpdateItem {
                table: r.table_name().to_owned(),
                key: item::from_fb(r.key())?,
                update: r.update_expression().to_owned(),
                condition: owned(r.condition_expression()),
                args: args(r.names(), r.values())?,
                return_values: return_values(r.return_values()),
            },
            None => Request::Unsupported("empty UpdateItem"),
        },
        fb::Request::QueryRequest => match envelope.body_as_query_request() {
            Some(r) => Request::Query {
                table: r.table_name().to_owned(),
                key_condition: r.key_condition_expression().to_owned(),
                filter: owned(r.filter_expression()),
                projection: owned(r.projection_expression()),
                args: args(r.names(), r.values())?,
                limit: r.limit(),
                exclusive_start_key: r.exclusive_start_key().map(item::from_fb).transpose()?,
                forward: r.scan_index_forward(),
                consistent_read: r.consistent_read(),
            },
            None => Request::Unsupported("empty Query"),
        },
        fb::Request::ScanRequest => match envelope.body_as_scan_request() {
            Some(r) => Request::Scan {
                table: r.table_name().to_owned(),
                filter: owned(r.filter_expression()),
                projection: owned(r.projection_expression()),
                args: args(r.names(), r.values())?,
                limit: r.limit(),
                exclusive_start_key: r.exclusive_start_key().map(item::from_fb).transpose()?,
                segment: r.segment(),
                total_segments: r.total_segments(),
                consistent_read: r.consistent_read(),
            },
            None => Request::Unsupported("empty Scan"),
        },
        fb::Request::BatchGetItemRequest => match envelope.body_as_batch_get_item_request() {
            Some(r) => {
                let mut tables = Vec::new();
                for t in r.requests() {
                    tables.push(BatchGetTable {
                        table: t.table_name().to_owned(),
                        keys: t.keys().iter().map(item::from_fb).collect::<Result<_, _>>()?,
                        projection: owned(t.projection_expression()),
                        args: args(t.names(), None)?,
                        consistent_read: t.consistent_read(),
                    });
                }
                Request::BatchGetItem { tables }
            }
            None => Request::Unsupported("empty BatchGetItem"),
        },
        fb::Request::BatchWriteItemRequest => match envelope.body_as_batch_write_item_request() {
            Some(r) => {
                let mut tables = Vec::new();
                for t in r.requests() {
                    let mut writes = Vec::new();
                    for w in t.requests() {
                        match (w.put(), w.delete_key()) {
                            (Some(put), None) => writes.push(BatchWrite::Put(put.bytes().bytes())),
                            (None, Some(key)) => writes.push(BatchWrite::Delete(item::from_fb(key)?)),
                            _ => {
                                return Ok(Envelope {
                                    request_id: envelope.request_id(),
                                    timeout_ms: envelope.timeout_ms(),
                                    request: Request::Unsupported(
                                        "a WriteRequest with both or neither of put and delete_key",
                                    ),
                                });
                            }
                        }
                    }
                    tables.push((t.table_name().to_owned(), writes));
                }
                Request::BatchWriteItem { tables }
            }
            None => Request::Unsupported("empty BatchWriteItem"),
        },
        fb::Request::ClusterStatusRequest => Request::ClusterStatus,
        fb::Request::ReplaceReplicaRequest => match envelope.body_as_replace_replica_request() {
            Some(r) => Request::ReplaceReplica { partition: r.partition(), remove: r.remove(), add: r.add() },
            None => Request::Unsupported("empty ReplaceReplica"),
        },
        _ => Request::Unsupported("unknown request type"),
    };
    Ok(Envelope { request_id: envelope.request_id(), timeout_ms: envelope.timeout_ms(), request })
}

/// Error codes sent to clients.
pub use fb::ErrorCode;

/// A table as described to clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableInfo {
    /// Name.
    pub name: String,
    /// Partition key.
    pub partition_key: (String, KeyKind),
    /// Sort key.
    pub sort_key: Option<(String, KeyKind)>,
    /// Partitions.
    pub partitions: u32,
    /// Creation time.
    pub created_at_ms: u64,
    /// The table's id (its partitions are `(id << 32) | index`).
    pub id: u32,
}

/// Which operation a table description answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableOp {
    /// CreateTable.
    Create,
    /// DeleteTable.
    Delete,
    /// DescribeTable.
    Describe,
}

/// Which operation an item answer belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemOp {
    /// PutItem (attributes per ReturnValues).
    Put,
    /// GetItem.
    Get,
    /// DeleteItem.
    Delete,
    /// UpdateItem.
    Update,
}

impl Response<'_> {
    /// An error without a leader hint.
    #[must_use]
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Response<'static> {
        Response::Error { code, message: message.into(), leader_hint: None }
    }
}

/// A response to encode. Item bytes are written as given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response<'a> {
    /// A typed error.
    Error {
        /// Code.
        code: ErrorCode,
        /// Message.
        message: String,
        /// For [`ErrorCode::NotLeader`]: the leader's client endpoint
        /// (`host:port`), when known.
        leader_hint: Option<String>,
    },
    /// A table description.
    Table(TableOp, TableInfo),
    /// ListTables.
    TableNames {
        /// Names.
        names: Vec<String>,
        /// Where the next page starts.
        last: Option<String>,
    },
    /// An item (or none).
    Item(ItemOp, Option<&'a [u8]>),
    /// BatchGetItem: items per table.
    BatchGet(Vec<(String, Vec<&'a [u8]>)>),
    /// BatchWriteItem (everything processed).
    BatchWrite,
    /// A node's view of the cluster (boxed: it is far larger than the
    /// other answers).
    ClusterStatus(Box<NodeStatus>),
    /// ReplaceReplica proposed, for this partition.
    ReplicaReplaced(u64),
    /// Query and Scan.
    Page {
        /// Item bytes.
        items: Vec<&'a [u8]>,
        /// Items read before filtering.
        scanned_count: u32,
        /// Where the next page starts.
        last_evaluated_key: Option<Item>,
    },
}

fn build_key<'b>(
    b: &mut FlatBufferBuilder<'b>,
    (name, kind): &(String, KeyKind),
) -> WIPOffset<fb::KeySchemaElement<'b>> {
    let name = b.create_string(name);
    let type_ = match kind {
        KeyKind::S => fb::KeyType::S,
        KeyKind::N => fb::KeyType::N,
        KeyKind::B => fb::KeyType::B,
    };
    fb::KeySchemaElement::create(b, &fb::KeySchemaElementArgs { name: Some(name), type_ })
}

/// The bytes a response is expected to take: its item bytes and some room
/// for the rest (tables, vtables, offsets, the envelope).
fn response_capacity(response: &Response<'_>) -> usize {
    const ROOM: usize = 256;
    const PER_ITEM: usize = 16;
    let items = |items: &[&[u8]]| items.iter().map(|i| i.len() + PER_ITEM).sum::<usize>();
    ROOM + match response {
        Response::Item(_, bytes) => bytes.map_or(0, <[u8]>::len),
        Response::BatchGet(tables) => tables.iter().map(|(name, found)| name.len() + items(found)).sum(),
        Response::Page { items: found, .. } => items(found) + ROOM,
        _ => 0,
    }
}

fn build_item_bytes<'b>(b: &mut FlatBufferBuilder<'b>, bytes: &[u8]) -> WIPOffset<fb::ItemBytes<'b>> {
    let v = b.create_vector(bytes);
    fb::ItemBytes::create(b, &fb::ItemBytesArgs { bytes: Some(v) })
}

/// The buffer a thread's message builder starts with: a YCSB record's
/// request or response fits.
const THREAD_BUILDER_BYTES: usize = 4096;

/// A message builder that grew past this is not kept for the next message:
/// one large Query page must not hold megabytes per thread.
const THREAD_BUILDER_KEPT_MAX_BYTES: usize = 64 * 1024;

thread_local! {
    /// The builder this thread's requests and responses are encoded with,
    /// reset between them. A fresh builder allocates its whole buffer
    /// zeroed, and its vtable list, for every message: encoding a GetItem
    /// response for a YCSB record took 275–351 ns so, 189–191 ns reusing
    /// one (`message/encode_get_item_response`, criterion).
    static THREAD_BUILDER: RefCell<FlatBufferBuilder<'static>> =
        RefCell::new(FlatBufferBuilder::with_capacity(THREAD_BUILDER_BYTES));
}

/// Runs `build` on this thread's message builder, reset, and returns the
/// bytes it finished. A message expected to be large (`size_hint` bytes,
/// more than the thread's builder keeps) gets a builder of its own sized up
/// front instead: the thread's would grow to it by doubling, copying and
/// zeroing as it goes, only to be replaced after. So does one built while
/// the thread's is taken (an encoding inside an encoding: none does so).
pub(crate) fn with_thread_builder(
    size_hint: usize,
    build: impl FnOnce(&mut FlatBufferBuilder<'static>) -> Vec<u8>,
) -> Vec<u8> {
    let own = || FlatBufferBuilder::with_capacity(size_hint);
    if size_hint > THREAD_BUILDER_KEPT_MAX_BYTES / 2 {
        return build(&mut own());
    }
    THREAD_BUILDER.with(|cell| {
        let Ok(mut b) = cell.try_borrow_mut() else {
            return build(&mut own());
        };
        b.reset();
        let message = build(&mut b);
        // The hint fell short: the builder's buffer is at least as large as
        // what it built, too large to keep.
        if message.len() > THREAD_BUILDER_KEPT_MAX_BYTES / 2 {
            *b = FlatBufferBuilder::with_capacity(THREAD_BUILDER_BYTES);
        }
        message
    })
}

/// Encodes a response frame body.
#[must_use]
pub fn encode_response(request_id: u64, response: &Response<'_>) -> Vec<u8> {
    with_thread_builder(response_capacity(response), |b| build_response(b, request_id, response))
}

fn build_response(b: &mut FlatBufferBuilder<'_>, request_id: u64, response: &Response<'_>) -> Vec<u8> {
    let (body_type, body) = match response {
        Response::Error { code, message, leader_hint } => {
            let message = b.create_string(message);
            let leader_hint = leader_hint.as_deref().map(|h| b.create_string(h));
            let e = fb::Error::create(
                b,
                &fb::ErrorArgs { code: *code, message: Some(message), leader_hint, ..Default::default() },
            );
            (fb::Response::Error, e.as_union_value())
        }
        Response::Table(op, info) => {
            let name = b.create_string(&info.name);
            let pk = build_key(b, &info.partition_key);
            let sk = info.sort_key.as_ref().map(|k| build_key(b, k));
            let table = fb::TableDescription::create(
                b,
                &fb::TableDescriptionArgs {
                    table_name: Some(name),
                    partition_key: Some(pk),
                    sort_key: sk,
                    status: if *op == TableOp::Delete { fb::TableStatus::Deleting } else { fb::TableStatus::Active },
                    partitions: info.partitions,
                    item_count: 0,
                    created_at_ms: info.created_at_ms,
                    table_id: info.id,
                },
            );
            match op {
                TableOp::Create => (
                    fb::Response::CreateTableResponse,
                    fb::CreateTableResponse::create(b, &fb::CreateTableResponseArgs { table: Some(table) })
                        .as_union_value(),
                ),
                TableOp::Delete => (
                    fb::Response::DeleteTableResponse,
                    fb::DeleteTableResponse::create(b, &fb::DeleteTableResponseArgs { table: Some(table) })
                        .as_union_value(),
                ),
                TableOp::Describe => (
                    fb::Response::DescribeTableResponse,
                    fb::DescribeTableResponse::create(b, &fb::DescribeTableResponseArgs { table: Some(table) })
                        .as_union_value(),
                ),
            }
        }
        Response::TableNames { names, last } => {
            let names: Vec<_> = names.iter().map(|n| b.create_string(n)).collect();
            let names = b.create_vector(&names);
            let last = last.as_ref().map(|l| b.create_string(l));
            let r = fb::ListTablesResponse::create(
                b,
                &fb::ListTablesResponseArgs { table_names: Some(names), last_evaluated_table_name: last },
            );
            (fb::Response::ListTablesResponse, r.as_union_value())
        }
        Response::Item(op, bytes) => {
            let item = bytes.map(|bytes| build_item_bytes(b, bytes));
            match op {
                ItemOp::Put => (
                    fb::Response::PutItemResponse,
                    fb::PutItemResponse::create(b, &fb::PutItemResponseArgs { attributes: item }).as_union_value(),
                ),
                ItemOp::Get => (
                    fb::Response::GetItemResponse,
                    fb::GetItemResponse::create(b, &fb::GetItemResponseArgs { item }).as_union_value(),
                ),
                ItemOp::Delete => (
                    fb::Response::DeleteItemResponse,
                    fb::DeleteItemResponse::create(b, &fb::DeleteItemResponseArgs { attributes: item })
                        .as_union_value(),
                ),
                ItemOp::Update => (
                    fb::Response::UpdateItemResponse,
                    fb::UpdateItemResponse::create(b, &fb::UpdateItemResponseArgs { attributes: item })
                        .as_union_value(),
                ),
            }
        }
        Response::BatchGet(tables) => {
            let mut built_tables = Vec::new();
            for (table, items) in tables {
                let built: Vec<_> = items.iter().map(|bytes| build_item_bytes(b, bytes)).collect();
                let items = b.create_vector(&built);
                let name = b.create_string(table);
                built_tables.push(fb::TableItems::create(
                    b,
                    &fb::TableItemsArgs { table_name: Some(name), items: Some(items) },
                ));
            }
            let responses = b.create_vector(&built_tables);
            let r = fb::BatchGetItemResponse::create(
                b,
                &fb::BatchGetItemResponseArgs { responses: Some(responses), unprocessed_keys: None },
            );
            (fb::Response::BatchGetItemResponse, r.as_union_value())
        }
        Response::BatchWrite => {
            let r = fb::BatchWriteItemResponse::create(b, &fb::BatchWriteItemResponseArgs { unprocessed_items: None });
            (fb::Response::BatchWriteItemResponse, r.as_union_value())
        }
        Response::ReplicaReplaced(partition) => {
            let r = fb::ReplaceReplicaResponse::create(b, &fb::ReplaceReplicaResponseArgs { partition: *partition });
            (fb::Response::ReplaceReplicaResponse, r.as_union_value())
        }
        Response::ClusterStatus(status) => {
            let members: Vec<_> = status
                .members
                .iter()
                .map(|m| {
                    let args = fb::ClusterMemberArgs {
                        id: m.id,
                        name: Some(b.create_string(&m.name)),
                        address: Some(b.create_string(&m.address)),
                        az: Some(b.create_string(&m.az)),
                    };
                    fb::ClusterMember::create(b, &args)
                })
                .collect();
            let groups: Vec<_> = status
                .groups
                .iter()
                .map(|g| {
                    let args = fb::ReplicaGroupStatusArgs {
                        partition: g.partition,
                        shard: g.shard,
                        role: g.role,
                        leader: g.leader,
                        term: g.term,
                        commit: g.commit,
                        applied: g.applied,
                        last_index: g.last_index,
                        voters: Some(b.create_vector(&g.voters)),
                        log_replicas: Some(b.create_vector(&g.log_replicas)),
                        node: g.node,
                    };
                    fb::ReplicaGroupStatus::create(b, &args)
                })
                .collect();
            let shard_endpoints: Vec<_> = status.shard_endpoints.iter().map(|e| b.create_string(e)).collect();
            let services: Vec<_> = status
                .services
                .iter()
                .map(|s| {
                    let args = fb::ServiceStatusArgs {
                        role: Some(b.create_string(&s.role)),
                        endpoint: Some(b.create_string(&s.endpoint)),
                        healthy: s.healthy,
                        version: s.version,
                        lookups: s.lookups,
                        requests: s.requests,
                        node: s.node,
                        replacements: s.replacements,
                    };
                    fb::ServiceStatus::create(b, &args)
                })
                .collect();
            let args = fb::ClusterStatusResponseArgs {
                node_id: status.node_id,
                members: Some(b.create_vector(&members)),
                groups: Some(b.create_vector(&groups)),
                endpoint: Some(b.create_string(&status.endpoint)),
                shard_endpoints: Some(b.create_vector(&shard_endpoints)),
                services: Some(b.create_vector(&services)),
            };
            let r = fb::ClusterStatusResponse::create(b, &args);
            (fb::Response::ClusterStatusResponse, r.as_union_value())
        }
        Response::Page { items, scanned_count, last_evaluated_key } => {
            let built: Vec<_> = items.iter().map(|bytes| build_item_bytes(b, bytes)).collect();
            let items_vec = b.create_vector(&built);
            let last = last_evaluated_key.as_ref().map(|k| item::build_item(b, k));
            let page = fb::ItemPage::create(
                b,
                &fb::ItemPageArgs {
                    items: Some(items_vec),
                    count: u32::try_from(items.len()).unwrap_or(u32::MAX),
                    scanned_count: *scanned_count,
                    last_evaluated_key: last,
                },
            );
            (fb::Response::ItemPage, page.as_union_value())
        }
    };
    let envelope =
        fb::ResponseEnvelope::create(b, &fb::ResponseEnvelopeArgs { request_id, body_type, body: Some(body) });
    b.finish(envelope, None);
    b.finished_data().to_vec()
}

fn build_names<'b>(
    b: &mut FlatBufferBuilder<'b>,
    args: &ExpressionArgs,
) -> Option<WIPOffset<flatbuffers::Vector<'b, flatbuffers::ForwardsUOffset<fb::ExpressionName<'b>>>>> {
    if args.names.is_empty() {
        return None;
    }
    let names: Vec<_> = args
        .names
        .iter()
        .map(|(placeholder, name)| {
            let placeholder = b.create_string(placeholder);
            let name = b.create_string(name);
            fb::ExpressionName::create(b, &fb::ExpressionNameArgs { placeholder: Some(placeholder), name: Some(name) })
        })
        .collect();
    Some(b.create_vector(&names))
}

fn build_values<'b>(
    b: &mut FlatBufferBuilder<'b>,
    args: &ExpressionArgs,
) -> Option<WIPOffset<flatbuffers::Vector<'b, flatbuffers::ForwardsUOffset<fb::ExpressionValue<'b>>>>> {
    if args.values.is_empty() {
        return None;
    }
    let values: Vec<_> = args
        .values
        .iter()
        .map(|(placeholder, value)| {
            let value = item::build_value(b, value);
            let placeholder = b.create_string(placeholder);
            fb::ExpressionValue::create(
                b,
                &fb::ExpressionValueArgs { placeholder: Some(placeholder), value: Some(value) },
            )
        })
        .collect();
    Some(b.create_vector(&values))
}

fn fb_return_values(r: ReturnValues) -> fb::ReturnValues {
    match r {
        ReturnValues::None => fb::ReturnValues::None,
        ReturnValues::AllOld => fb::ReturnValues::AllOld,
        ReturnValues::UpdatedOld => fb::ReturnValues::UpdatedOld,
        ReturnValues::AllNew => fb::ReturnValues::AllNew,
        ReturnValues::UpdatedNew => fb::ReturnValues::UpdatedNew,
    }
}

fn opt_string<'b>(b: &mut FlatBufferBuilder<'b>, s: &Option<String>) -> Option<WIPOffset<&'b str>> {
    s.as_ref().map(|s| b.create_string(s))
}

/// Encodes a request frame body (the client side of [`decode_request`]).
#[must_use]
#[allow(clippy::too_many_lines)]
pub fn encode_request(request_id: u64, timeout_ms: u32, request: &Request<'_>) -> Vec<u8> {
    // Its expected size, like a response's (see `response_capacity`).
    let room = 512 + if let Request::PutItem { item, .. } = request { item.len() } else { 0 };
    with_thread_builder(room, |b| build_request(b, request_id, timeout_ms, request))
}

fn build_request(b: &mut FlatBufferBuilder<'_>, request_id: u64, timeout_ms: u32, request: &Request<'_>) -> Vec<u8> {
    let (body_type, body) = match request {
        Request::CreateTable { table, partition_key, sort_key, partitions, placement } => {
            let pk = build_key(b, partition_key);
            let sk = sort_key.as_ref().map(|k| build_key(b, k));
            let table = b.create_string(table);
            let placement = (!placement.is_empty()).then(|| {
                let built: Vec<_> = placement
                    .iter()
                    .map(|nodes| {
                        let nodes = b.create_vector(nodes);
                        fb::PartitionPlacement::create(b, &fb::PartitionPlacementArgs { nodes: Some(nodes) })
                    })
                    .collect();
                b.create_vector(&built)
            });
            let r = fb::CreateTableRequest::create(
                b,
                &fb::CreateTableRequestArgs {
                    table_name: Some(table),
                    partition_key: Some(pk),
                    sort_key: sk,
                    partitions: *partitions,
                    placement,
                },
            );
            (fb::Request::CreateTableRequest, r.as_union_value())
        }
        Request::DeleteTable { table } => {
            let table = b.create_string(table);
            let r = fb::DeleteTableRequest::create(b, &fb::DeleteTableRequestArgs { table_name: Some(table) });
            (fb::Request::DeleteTableRequest, r.as_union_value())
        }
        Request::DescribeTable { table } => {
            let table = b.create_string(table);
            let r = fb::DescribeTableRequest::create(b, &fb::DescribeTableRequestArgs { table_name: Some(table) });
            (fb::Request::DescribeTableRequest, r.as_union_value())
        }
        Request::ListTables { start_after, limit } => {
            let start = opt_string(b, start_after);
            let r = fb::ListTablesRequest::create(
                b,
                &fb::ListTablesRequestArgs { exclusive_start_table_name: start, limit: *limit },
            );
            (fb::Request::ListTablesRequest, r.as_union_value())
        }
        Request::PutItem { table, item, condition, args, return_values } => {
            let item = build_item_bytes(b, item);
            let table = b.create_string(table);
            let condition = opt_string(b, condition);
            let (names, values) = (build_names(b, args), build_values(b, args));
            let r = fb::PutItemRequest::create(
                b,
                &fb::PutItemRequestArgs {
                    table_name: Some(table),
                    item: Some(item),
                    condition_expression: condition,
                    names,
                    values,
                    return_values: fb_return_values(*return_values),
                },
            );
            (fb::Request::PutItemRequest, r.as_union_value())
        }
        Request::GetItem { table, key, projection, args, consistent_read } => {
            let key = item::build_item(b, key);
            let table = b.create_string(table);
            let projection = opt_string(b, projection);
            let names = build_names(b, args);
            let r = fb::GetItemRequest::create(
                b,
                &fb::GetItemRequestArgs {
                    table_name: Some(table),
                    key: Some(key),
                    consistent_read: *consistent_read,
                    projection_expression: projection,
                    names,
                },
            );
            (fb::Request::GetItemRequest, r.as_union_value())
        }
        Request::DeleteItem { table, key, condition, args, return_values } => {
            let key = item::build_item(b, key);
            let table = b.create_string(table);
            let condition = opt_string(b, condition);
            let (names, values) = (build_names(b, args), build_values(b, args));
            let r = fb::DeleteItemRequest::create(
                b,
                &fb::DeleteItemRequestArgs {
                    table_name: Some(table),
                    key: Some(key),
                    condition_expression: condition,
                    names,
                    values,
                    return_values: fb_return_values(*return_values),
                },
            );
            (fb::Request::DeleteItemRequest, r.as_union_value())
        }
        Request::UpdateItem { table, key, update, condition, args, return_values } => {
            let key = item::build_item(b, key);
            let table = b.create_string(table);
            let update = b.create_string(update);
            let condition = opt_string(b, condition);
            let (names, values) = (build_names(b, args), build_values(b, args));
            let r = fb::UpdateItemRequest::create(
                b,
                &fb::UpdateItemRequestArgs {
                    table_name: Some(table),
                    key: Some(key),
                    update_expression: Some(update),
                    condition_expression: condition,
                    names,
                    values,
                    return_values: fb_return_values(*return_values),
                },
            );
            (fb::Request::UpdateItemRequest, r.as_union_value())
        }
        Request::Query {
            table,
            key_condition,
            filter,
            projection,
            args,
            limit,
            exclusive_start_key,
            forward,
            consistent_read,
        } => {
            let start = exclusive_start_key.as_ref().map(|k| item::build_item(b, k));
            let table = b.create_string(table);
            let key_condition = b.create_string(key_condition);
            let filter = opt_string(b, filter);
            let projection = opt_string(b, projection);
            let (names, values) = (build_names(b, args), build_values(b, args));
            let r = fb::QueryRequest::create(
                b,
                &fb::QueryRequestArgs {
                    table_name: Some(table),
                    key_condition_expression: Some(key_condition),
                    filter_expression: filter,
                    projection_expression: projection,
                    names,
                    values,
                    limit: *limit,
                    exclusive_start_key: start,
                    scan_index_forward: *forward,
                    consistent_read: *consistent_read,
                },
            );
            (fb::Request::QueryRequest, r.as_union_value())
        }
        Request::Scan {
            table,
            filter,
            projection,
            args,
            limit,
            exclusive_start_key,
            segment,
            total_segments,
            consistent_read,
        } => {
            let start = exclusive_start_key.as_ref().map(|k| item::build_item(b, k));
            let table = b.create_string(table);
            let filter = opt_string(b, filter);
            let projection = opt_string(b, projection);
            let (names, values) = (build_names(b, args), build_values(b, args));
            let r = fb::ScanRequest::create(
                b,
                &fb::ScanRequestArgs {
                    table_name: Some(table),
                    filter_expression: filter,
                    projection_expression: projection,
                    names,
                    values,
                    limit: *limit,
                    exclusive_start_key: start,
                    segment: *segment,
                    total_segments: *total_segments,
                    consistent_read: *consistent_read,
                },
            );
            (fb::Request::ScanRequest, r.as_union_value())
        }
        Request::BatchGetItem { tables } => {
            let mut built = Vec::new();
            for t in tables {
                let keys: Vec<_> = t.keys.iter().map(|k| item::build_item(b, k)).collect();
                let keys = b.create_vector(&keys);
                let name = b.create_string(&t.table);
                let projection = opt_string(b, &t.projection);
                let names = build_names(b, &t.args);
                built.push(fb::KeysAndAttributes::create(
                    b,
                    &fb::KeysAndAttributesArgs {
                        table_name: Some(name),
                        keys: Some(keys),
                        consistent_read: t.consistent_read,
                        projection_expression: projection,
                        names,
                    },
                ));
            }
            let requests = b.create_vector(&built);
            let r = fb::BatchGetItemRequest::create(b, &fb::BatchGetItemRequestArgs { requests: Some(requests) });
            (fb::Request::BatchGetItemRequest, r.as_union_value())
        }
        Request::BatchWriteItem { tables } => {
            let mut built = Vec::new();
            for (table, writes) in tables {
                let mut built_writes = Vec::new();
                for w in writes {
                    let args = match w {
                        BatchWrite::Put(bytes) => {
                            fb::WriteRequestArgs { put: Some(build_item_bytes(b, bytes)), delete_key: None }
                        }
                        BatchWrite::Delete(key) => {
                            fb::WriteRequestArgs { put: None, delete_key: Some(item::build_item(b, key)) }
                        }
                    };
                    built_writes.push(fb::WriteRequest::create(b, &args));
                }
                let writes = b.create_vector(&built_writes);
                let name = b.create_string(table);
                built.push(fb::TableWriteRequests::create(
                    b,
                    &fb::TableWriteRequestsArgs { table_name: Some(name), requests: Some(writes) },
                ));
            }
            let requests = b.create_vector(&built);
            let r = fb::BatchWriteItemRequest::create(b, &fb::BatchWriteItemRequestArgs { requests: Some(requests) });
            (fb::Request::BatchWriteItemRequest, r.as_union_value())
        }
        Request::ClusterStatus => {
            let r = fb::ClusterStatusRequest::create(b, &fb::ClusterStatusRequestArgs {});
            (fb::Request::ClusterStatusRequest, r.as_union_value())
        }
        Request::ReplaceReplica { partition, remove, add } => {
            let args = fb::ReplaceReplicaRequestArgs { partition: *partition, remove: *remove, add: *add };
            let r = fb::ReplaceReplicaRequest::create(b, &args);
            (fb::Request::ReplaceReplicaRequest, r.as_union_value())
        }
        Request::Unsupported(_) => {
            let table = b.create_string("");
            let r = fb::DescribeTableRequest::create(b, &fb::DescribeTableRequestArgs { table_name: Some(table) });
            (fb::Request::DescribeTableRequest, r.as_union_value())
        }
    };
    let envelope = fb::RequestEnvelope::create(
        b,
        &fb::RequestEnvelopeArgs { request_id, timeout_ms, body_type, body: Some(body) },
    );
    fb::finish_request_envelope_buffer(b, envelope);
    b.finished_data().to_vec()
}

/// Rewrites the request id of a verified request or response envelope in
/// place (both envelopes hold it as their first field), so that a router
/// forwards a client's bytes as they are under an id of its own. False
/// when the envelope carries no id field (id 0 is FlatBuffers' default and
/// is not written): the caller then encodes the envelope again.
#[must_use]
pub fn set_envelope_id(body: &mut [u8], id: u64) -> bool {
    let Some(at) = envelope_id_offset(body) else { return false };
    match body.get_mut(at..at + 8) {
        Some(slot) => {
            slot.copy_from_slice(&id.to_le_bytes());
            true
        }
        None => false,
    }
}

/// The id of a request or response envelope (or of a routing message,
/// whose id is its first field too), read without verifying the rest: for
/// matching an answer to its waiter before the one full verification.
/// Bounds-checked, so any bytes are safe; `None` when no id is written.
#[must_use]
pub fn envelope_id(body: &[u8]) -> Option<u64> {
    let at = envelope_id_offset(body)?;
    body.get(at..at + 8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes)
}

/// Where the id of a request or response envelope lies in `body`.
fn envelope_id_offset(body: &[u8]) -> Option<usize> {
    let u32_at = |at: usize| body.get(at..at + 4).and_then(|b| b.try_into().ok()).map(u32::from_le_bytes);
    let u16_at = |at: usize| body.get(at..at + 2).and_then(|b| b.try_into().ok()).map(u16::from_le_bytes);
    // [u32 root offset] → table; [i32 at the table] = table − vtable;
    // vtable = [u16 vtable bytes][u16 table bytes][u16 offset of field 0]…
    let table = usize::try_from(u32_at(0)?).ok()?;
    let back = i64::from(i32::from_le_bytes(body.get(table..table + 4)?.try_into().ok()?));
    let vtable = usize::try_from(i64::try_from(table).ok()? - back).ok()?;
    if u16_at(vtable)? < 6 {
        return None;
    }
    let field = usize::from(u16_at(vtable + 4)?);
    (field != 0).then_some(table + field)
}

/// The error a verified response carries, if it is one: its code and
/// leader hint (a router acts on NotLeader without decoding anything else).
pub fn response_error(body: &[u8]) -> Result<Option<(ErrorCode, Option<String>)>, ProtocolError> {
    let envelope = verify::response(body)?;
    Ok(envelope.body_as_error().map(|e| (e.code(), e.leader_hint().map(str::to_owned))))
}

/// A decoded response (the client side of [`encode_response`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// A typed error.
    Error {
        /// Code.
        code: ErrorCode,
        /// Message.
        message: String,
        /// For [`ErrorCode::NotLeader`]: where the leader is believed to be.
        leader_hint: Option<String>,
    },
    /// A table description.
    Table(TableInfo),
    /// ListTables.
    TableNames {
        /// Names.
        names: Vec<String>,
        /// Where the next page starts.
        last: Option<String>,
    },
    /// An item (or none), as bytes.
    Item(Option<Vec<u8>>),
    /// BatchGetItem: item bytes per table.
    BatchGet(Vec<(String, Vec<Vec<u8>>)>),
    /// BatchWriteItem done.
    BatchWrite,
    /// A node's view of the cluster.
    ClusterStatus(NodeStatus),
    /// ReplaceReplica proposed, for this partition.
    ReplicaReplaced(u64),
    /// Query and Scan.
    Page {
        /// Item bytes.
        items: Vec<Vec<u8>>,
        /// Items read before filtering.
        scanned_count: u32,
        /// Where the next page starts.
        last_evaluated_key: Option<Item>,
    },
}

fn table_from_fb(t: fb::TableDescription<'_>) -> TableInfo {
    TableInfo {
        name: t.table_name().to_owned(),
        partition_key: (t.partition_key().name().to_owned(), key_kind(t.partition_key().type_())),
        sort_key: t.sort_key().map(|k| (k.name().to_owned(), key_kind(k.type_()))),
        partitions: t.partitions(),
        created_at_ms: t.created_at_ms(),
        id: t.table_id(),
    }
}

fn node_status_from_fb(r: fb::ClusterStatusResponse<'_>) -> Result<NodeStatus, ProtocolError> {
    let members = r.members().unwrap_or_default();
    let groups = r.groups().unwrap_or_default();
    let shard_endpoints = r.shard_endpoints().unwrap_or_default();
    let services = r.services().unwrap_or_default();
    if services.len() > STATUS_SERVICES_MAX
        || members.len() > STATUS_MEMBERS_MAX
        || groups.len() > STATUS_GROUPS_MAX
        || shard_endpoints.len() > STATUS_SHARDS_MAX
    {
        return Err(ProtocolError::Invalid("cluster status lists too many members or groups".into()));
    }
    Ok(NodeStatus {
        node_id: r.node_id(),
        members: members
            .iter()
            .map(|m| MemberInfo {
                id: m.id(),
                name: m.name().to_owned(),
                address: m.address().to_owned(),
                az: m.az().to_owned(),
            })
            .collect(),
        groups: groups
            .iter()
            .map(|g| GroupInfo {
                partition: g.partition(),
                shard: g.shard(),
                role: g.role(),
                leader: g.leader(),
                term: g.term(),
                commit: g.commit(),
                applied: g.applied(),
                last_index: g.last_index(),
                voters: g.voters().map(|v| v.iter().collect()).unwrap_or_default(),
                log_replicas: g.log_replicas().map(|v| v.iter().collect()).unwrap_or_default(),
                node: g.node(),
            })
            .collect(),
        endpoint: r.endpoint().unwrap_or_default().to_owned(),
        shard_endpoints: shard_endpoints.iter().map(str::to_owned).collect(),
        services: services
            .iter()
            .map(|s| ServiceInfo {
                role: s.role().to_owned(),
                endpoint: s.endpoint().to_owned(),
                healthy: s.healthy(),
                version: s.version(),
                lookups: s.lookups(),
                requests: s.requests(),
                node: s.node(),
                replacements: s.replacements(),
            })
            .collect(),
    })
}

/// Verifies and decodes a response frame body: its request id and reply.
pub fn decode_response(body: &[u8]) -> Result<(u64, Reply), ProtocolError> {
    let envelope = verify::response(body)?;
    let bytes = |i: Option<fb::ItemBytes<'_>>| i.map(|i| i.bytes().bytes().to_vec());
    let reply = if let Some(e) = envelope.body_as_error() {
        Reply::Error {
            code: e.code(),
            message: e.message().to_owned(),
            leader_hint: e.leader_hint().map(str::to_owned),
        }
    } else if let Some(r) = envelope.body_as_create_table_response() {
        Reply::Table(table_from_fb(r.table()))
    } else if let Some(r) = envelope.body_as_delete_table_response() {
        Reply::Table(table_from_fb(r.table()))
    } else if let Some(r) = envelope.body_as_describe_table_response() {
        Reply::Table(table_from_fb(r.table()))
    } else if let Some(r) = envelope.body_as_list_tables_response() {
        Reply::TableNames {
            names: r.table_names().iter().map(str::to_owned).collect(),
            last: r.last_evaluated_table_name().map(str::to_owned),
        }
    } else if let Some(r) = envelope.body_as_put_item_response() {
        Reply::Item(bytes(r.attributes()))
    } else if let Some(r) = envelope.body_as_get_item_response() {
        Reply::Item(bytes(r.item()))
    } else if let Some(r) = envelope.body_as_delete_item_response() {
        Reply::Item(bytes(r.attributes()))
    } else if let Some(r) = envelope.body_as_update_item_response() {
        Reply::Item(bytes(r.attributes()))
    } else if let Some(r) = envelope.body_as_batch_get_item_response() {
        Reply::BatchGet(
            r.responses()
                .iter()
                .map(|t| (t.table_name().to_owned(), t.items().iter().map(|i| i.bytes().bytes().to_vec()).collect()))
                .collect(),
        )
    } else if let Some(r) = envelope.body_as_cluster_status_response() {
        Reply::ClusterStatus(node_status_from_fb(r)?)
    } else if let Some(r) = envelope.body_as_replace_replica_response() {
        Reply::ReplicaReplaced(r.partition())
    } else if envelope.body_as_batch_write_item_response().is_some() {
        Reply::BatchWrite
    } else if let Some(r) = envelope.body_as_item_page() {
        Reply::Page {
            items: r.items().iter().map(|i| i.bytes().bytes().to_vec()).collect(),
            scanned_count: r.scanned_count(),
            last_evaluated_key: r.last_evaluated_key().map(item::from_fb).transpose()?,
        }
    } else {
        Reply::Error {
            code: ErrorCode::InternalServerError,
            message: "unsupported response type".to_owned(),
            leader_hint: None,
        }
    };
    Ok((envelope.request_id(), reply))
}

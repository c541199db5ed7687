//! The protocol edge of the server: a verified request frame body in, a
//! response frame body out, with every failure turned into a typed protocol
//! error. Transport-free, so it is tested without sockets; the daemon feeds
//! it frames.

use keel_wire::expr::{self, Placeholders};
use keel_wire::item;
use keel_wire::protocol::{
    self, BATCH_GET_KEYS_MAX, BATCH_WRITE_REQUESTS_MAX, BatchWrite, Envelope, ErrorCode, ExpressionArgs, ItemOp,
    KeyKind, Request, Response, ReturnValues, TableInfo, TableOp,
};

use crate::engine::{Engine, EngineError, KeyDef, KeyType, Page, TableDef};
use crate::io::Disk;
use crate::repl::Role;

fn key_def((name, kind): &(String, KeyKind)) -> KeyDef {
    let key_type = match kind {
        KeyKind::S => KeyType::S,
        KeyKind::N => KeyType::N,
        KeyKind::B => KeyType::B,
    };
    KeyDef { name: name.clone(), key_type }
}

fn key_kind(k: &KeyDef) -> (String, KeyKind) {
    let kind = match k.key_type {
        KeyType::S => KeyKind::S,
        KeyType::N => KeyKind::N,
        KeyType::B => KeyKind::B,
    };
    (k.name.clone(), kind)
}

fn table_info(def: &TableDef) -> TableInfo {
    TableInfo {
        name: def.name.clone(),
        partition_key: key_kind(&def.partition_key),
        sort_key: def.sort_key.as_ref().map(key_kind),
        partitions: def.partitions,
        created_at_ms: def.created_at_ms,
        id: def.id,
    }
}

fn error(code: ErrorCode, message: impl Into<String>) -> Response<'static> {
    Response::error(code, message)
}

/// The protocol error for an engine error.
pub fn engine_error(e: EngineError) -> Response<'static> {
    let code = match &e {
        EngineError::Validation(_) => ErrorCode::ValidationException,
        EngineError::ResourceNotFound(_) => ErrorCode::ResourceNotFoundException,
        EngineError::ResourceInUse(_) => ErrorCode::ResourceInUseException,
        EngineError::ConditionalCheckFailed => ErrorCode::ConditionalCheckFailedException,
        EngineError::ItemTooLarge(_) => ErrorCode::ItemTooLarge,
        EngineError::Internal(_) => ErrorCode::InternalServerError,
        EngineError::Unavailable(_) => ErrorCode::ServiceUnavailable,
        EngineError::NotLeader { hint, .. } => {
            return Response::Error { code: ErrorCode::NotLeader, message: e.to_string(), leader_hint: hint.clone() };
        }
    };
    error(code, e.to_string())
}

/// Handles one request frame body; returns the response frame body.
pub async fn handle<D: Disk>(engine: &mut Engine<D>, body: &[u8], now_ms: u64) -> Vec<u8> {
    handle_decoded(engine, body, None, now_ms).await
}

/// [`handle`] with the body's envelope when the caller decoded it already
/// (routing on a node with several shards does), so that a request is
/// verified and decoded once.
pub async fn handle_decoded<'b, D: Disk>(
    engine: &mut Engine<D>,
    body: &'b [u8],
    decoded: Option<Envelope<'b>>,
    now_ms: u64,
) -> Vec<u8> {
    let envelope = match decoded.map_or_else(|| protocol::decode_request(body), Ok) {
        Ok(envelope) => envelope,
        Err(e) => return protocol::encode_response(0, &error(ErrorCode::ValidationException, e.to_string())),
    };
    let id = envelope.request_id;
    // The common read: the response is built straight from the stored
    // bytes in the page cache (one copy, into the response).
    if let Request::GetItem { table, key, projection: None, args, .. } = &envelope.request
        && args.names.is_empty()
        && args.values.is_empty()
    {
        let built = engine
            .get_item_with(table, key, |stored| protocol::encode_response(id, &Response::Item(ItemOp::Get, stored)))
            .await;
        return built.unwrap_or_else(|e| protocol::encode_response(id, &engine_error(e)));
    }
    // Item bytes in responses borrow from what the engine returns.
    let mut owned: Vec<Vec<u8>> = Vec::new();
    let mut page = Page::default();
    match execute(engine, envelope.request, now_ms, &mut owned, &mut page).await {
        Ok(Answer::Plain(response)) | Err(response) => protocol::encode_response(id, &response),
        Ok(Answer::Item(op)) => protocol::encode_response(id, &Response::Item(op, owned.first().map(Vec::as_slice))),
        Ok(Answer::Page) => {
            let response = Response::Page {
                items: page.items.iter().map(Vec::as_slice).collect(),
                scanned_count: u32::try_from(page.scanned_count).unwrap_or(u32::MAX),
                last_evaluated_key: page.last_evaluated_key.clone(),
            };
            protocol::encode_response(id, &response)
        }
        Ok(Answer::BatchGet(tables)) => {
            let borrowed =
                tables.iter().map(|(t, items)| (t.clone(), items.iter().map(Vec::as_slice).collect())).collect();
            protocol::encode_response(id, &Response::BatchGet(borrowed))
        }
    }
}

enum Answer {
    Plain(Response<'static>),
    /// The item is `owned[0]`, if any.
    Item(ItemOp),
    /// The page is in `page`.
    Page,
    /// BatchGetItem: item bytes per table.
    BatchGet(Vec<(String, Vec<Vec<u8>>)>),
}

fn placeholders(args: &ExpressionArgs) -> Placeholders<'_> {
    Placeholders::new(&args.names, &args.values)
}

fn parse_condition(
    text: Option<&str>,
    placeholders: &mut Placeholders<'_>,
) -> Result<Option<expr::Condition>, Response<'static>> {
    text.map(|t| expr::parse_condition(t, placeholders))
        .transpose()
        .map_err(|e| error(ErrorCode::ValidationException, e.to_string()))
}

/// Decodes a stored item; unreadable stored bytes are the server's fault.
fn decode_stored(bytes: &[u8]) -> Result<item::Item, Response<'static>> {
    item::decode(bytes).map_err(|e| error(ErrorCode::InternalServerError, format!("stored item unreadable: {e}")))
}

fn parse_projection(
    text: Option<&str>,
    placeholders: &mut Placeholders<'_>,
) -> Result<Option<Vec<expr::Path>>, Response<'static>> {
    text.map(|t| expr::parse_projection(t, placeholders))
        .transpose()
        .map_err(|e| error(ErrorCode::ValidationException, e.to_string()))
}

/// Applies a ProjectionExpression to every item of a page (without one, the
/// stored bytes go out untouched).
fn project_page(page: &mut Page, paths: Option<&[expr::Path]>) -> Result<(), Response<'static>> {
    let Some(paths) = paths else { return Ok(()) };
    for bytes in &mut page.items {
        let decoded = decode_stored(bytes)?;
        *bytes = item::encode(&expr::project(&decoded, paths));
    }
    Ok(())
}

fn all_used(placeholders: &Placeholders<'_>) -> Result<(), Response<'static>> {
    placeholders.check_all_used().map_err(|e| error(ErrorCode::ValidationException, e.to_string()))
}

/// The item a write returns for `ReturnValues` (UpdateItem narrows the
/// UPDATED_* forms to the updated attributes itself).
fn returned(rv: ReturnValues, old: Option<Vec<u8>>, new: Option<Vec<u8>>) -> Option<Vec<u8>> {
    match rv {
        ReturnValues::None => None,
        ReturnValues::AllOld | ReturnValues::UpdatedOld => old,
        ReturnValues::AllNew | ReturnValues::UpdatedNew => new,
    }
}

async fn execute<D: Disk>(
    engine: &mut Engine<D>,
    request: Request<'_>,
    now_ms: u64,
    owned: &mut Vec<Vec<u8>>,
    page: &mut Page,
) -> Result<Answer, Response<'static>> {
    match request {
        Request::ClusterStatus => {
            Ok(Answer::Plain(Response::ClusterStatus(Box::new(node_status(engine, local_groups(engine))))))
        }
        Request::ReplaceReplica { partition, remove, add } => {
            engine.replace_replica(partition, remove, add).map_err(engine_error)?;
            tracing::warn!(
                partition = format!("{partition:#x}"),
                remove,
                log_replica = add,
                "replacing a replica with a log replica, as asked"
            );
            Ok(Answer::Plain(Response::ReplicaReplaced(partition)))
        }
        Request::CreateTable { table, partition_key, sort_key, partitions, placement } => {
            let (pk, sk) = (key_def(&partition_key), sort_key.as_ref().map(key_def));
            let def = engine
                .create_table_placed(&table, pk, sk, partitions, placement, now_ms)
                .await
                .map_err(engine_error)?;
            Ok(Answer::Plain(Response::Table(TableOp::Create, table_info(&def))))
        }
        Request::DeleteTable { table } => {
            let def = engine.delete_table(&table).await.map_err(engine_error)?;
            Ok(Answer::Plain(Response::Table(TableOp::Delete, table_info(&def))))
        }
        Request::DescribeTable { table } => {
            let def = engine.describe_table(&table).map_err(engine_error)?;
            Ok(Answer::Plain(Response::Table(TableOp::Describe, table_info(def))))
        }
        Request::ListTables { start_after, limit } => {
            let (names, last) = engine.list_tables(start_after.as_deref(), limit as usize);
            Ok(Answer::Plain(Response::TableNames { names, last }))
        }
        Request::PutItem { table, item, condition, args, return_values } => {
            let mut p = placeholders(&args);
            let condition = parse_condition(condition.as_deref(), &mut p)?;
            all_used(&p)?;
            if matches!(return_values, ReturnValues::UpdatedOld | ReturnValues::UpdatedNew | ReturnValues::AllNew) {
                return Err(error(ErrorCode::ValidationException, "PutItem supports ReturnValues NONE and ALL_OLD"));
            }
            let old = engine
                .put_item(&table, item, condition.as_ref(), return_values == ReturnValues::AllOld)
                .await
                .map_err(engine_error)?;
            owned.extend(returned(return_values, old, None));
            Ok(Answer::Item(ItemOp::Put))
        }
        Request::GetItem { table, key, projection, args, consistent_read: _ } => {
            let mut p = placeholders(&args);
            let paths = projection
                .as_deref()
                .map(|t| expr::parse_projection(t, &mut p))
                .transpose()
                .map_err(|e| error(ErrorCode::ValidationException, e.to_string()))?;
            all_used(&p)?;
            let stored = engine.get_item(&table, &key).await.map_err(engine_error)?;
            // Without a projection the stored bytes go out as they are.
            let answer = match (stored, paths) {
                (Some(bytes), Some(paths)) => {
                    let decoded = decode_stored(&bytes)?;
                    Some(item::encode(&expr::project(&decoded, &paths)))
                }
                (stored, _) => stored,
            };
            owned.extend(answer);
            Ok(Answer::Item(ItemOp::Get))
        }
        Request::DeleteItem { table, key, condition, args, return_values } => {
            let mut p = placeholders(&args);
            let condition = parse_condition(condition.as_deref(), &mut p)?;
            all_used(&p)?;
            let old = engine.delete_item(&table, &key, condition.as_ref()).await.map_err(engine_error)?;
            owned.extend(returned(return_values, old, None));
            Ok(Answer::Item(ItemOp::Delete))
        }
        Request::UpdateItem { table, key, update, condition, args, return_values } => {
            let mut p = placeholders(&args);
            let parsed = expr::parse_update(&update, &mut p)
                .map_err(|e| error(ErrorCode::ValidationException, e.to_string()))?;
            let condition = parse_condition(condition.as_deref(), &mut p)?;
            all_used(&p)?;
            let keep_old = matches!(return_values, ReturnValues::AllOld | ReturnValues::UpdatedOld);
            let (old, new) = engine
                .update_item_keeping(&table, &key, &parsed, condition.as_ref(), keep_old)
                .await
                .map_err(engine_error)?;
            let answer = match return_values {
                // Only the attributes the update named, before or after.
                ReturnValues::UpdatedOld | ReturnValues::UpdatedNew => {
                    let paths: Vec<expr::Path> = parsed
                        .actions
                        .iter()
                        .map(|a| match a {
                            expr::Action::Set(p, _)
                            | expr::Action::Remove(p)
                            | expr::Action::Add(p, _)
                            | expr::Action::Delete(p, _) => p.clone(),
                        })
                        .collect();
                    let source = if return_values == ReturnValues::UpdatedOld { old } else { Some(new) };
                    match source {
                        Some(bytes) => {
                            let decoded = decode_stored(&bytes)?;
                            let projected = expr::project(&decoded, &paths);
                            (!projected.is_empty()).then(|| item::encode(&projected))
                        }
                        None => None,
                    }
                }
                other => returned(other, old, Some(new)),
            };
            owned.extend(answer);
            Ok(Answer::Item(ItemOp::Update))
        }
        Request::Query {
            table, key_condition, filter, projection, args, limit, exclusive_start_key, forward, ..
        } => {
            let def = engine.describe_table(&table).map_err(engine_error)?;
            let (pk, sk) = (def.partition_key.name.clone(), def.sort_key.as_ref().map(|k| k.name.clone()));
            let mut p = placeholders(&args);
            let kc = expr::parse_key_condition(&key_condition, &mut p, &pk, sk.as_deref())
                .map_err(|e| error(ErrorCode::ValidationException, e.to_string()))?;
            let filter = parse_condition(filter.as_deref(), &mut p)?;
            let paths = parse_projection(projection.as_deref(), &mut p)?;
            all_used(&p)?;
            let limit = (limit > 0).then_some(limit as usize);
            *page = engine
                .query(&table, &kc, forward, limit, exclusive_start_key.as_ref(), filter.as_ref())
                .await
                .map_err(engine_error)?;
            project_page(page, paths.as_deref())?;
            Ok(Answer::Page)
        }
        Request::Scan {
            table, filter, projection, args, limit, exclusive_start_key, segment, total_segments, ..
        } => {
            let mut p = placeholders(&args);
            let filter = parse_condition(filter.as_deref(), &mut p)?;
            let paths = parse_projection(projection.as_deref(), &mut p)?;
            all_used(&p)?;
            let limit = (limit > 0).then_some(limit as usize);
            *page = engine
                .scan(&table, limit, exclusive_start_key.as_ref(), segment, total_segments, filter.as_ref())
                .await
                .map_err(engine_error)?;
            project_page(page, paths.as_deref())?;
            Ok(Answer::Page)
        }
        Request::BatchGetItem { tables } => {
            let keys: usize = tables.iter().map(|t| t.keys.len()).sum();
            if keys == 0 || keys > BATCH_GET_KEYS_MAX {
                return Err(error(
                    ErrorCode::ValidationException,
                    format!("BatchGetItem takes 1 to {BATCH_GET_KEYS_MAX} keys, got {keys}"),
                ));
            }
            let mut out = Vec::new();
            for t in tables {
                let mut p = placeholders(&t.args);
                let paths = parse_projection(t.projection.as_deref(), &mut p)?;
                all_used(&p)?;
                let mut found = Page::default();
                for key in &t.keys {
                    if let Some(bytes) = engine.get_item(&t.table, key).await.map_err(engine_error)? {
                        found.items.push(bytes);
                    }
                }
                project_page(&mut found, paths.as_deref())?;
                out.push((t.table, found.items));
            }
            Ok(Answer::BatchGet(out))
        }
        Request::BatchWriteItem { tables } => {
            let writes: usize = tables.iter().map(|(_, w)| w.len()).sum();
            if writes == 0 || writes > BATCH_WRITE_REQUESTS_MAX {
                return Err(error(
                    ErrorCode::ValidationException,
                    format!("BatchWriteItem takes 1 to {BATCH_WRITE_REQUESTS_MAX} requests, got {writes}"),
                ));
            }
            // DynamoDB refuses a batch that names one key twice.
            for (table, writes) in &tables {
                let mut seen = std::collections::BTreeSet::new();
                for write in writes {
                    let key = match write {
                        BatchWrite::Put(bytes) => engine.key_bytes(table, bytes).map_err(engine_error)?,
                        BatchWrite::Delete(key) => engine.key_bytes_of(table, key).map_err(engine_error)?,
                    };
                    if !seen.insert(key) {
                        return Err(error(
                            ErrorCode::ValidationException,
                            "Provided list of item keys contains duplicates",
                        ));
                    }
                }
            }
            // Each write is applied (and durable) in order; a failure stops
            // the batch and is reported, as the writes before it stay done.
            for (table, writes) in tables {
                for write in writes {
                    match write {
                        BatchWrite::Put(bytes) => {
                            engine.put_item(&table, bytes, None, false).await.map_err(engine_error)?;
                        }
                        BatchWrite::Delete(key) => {
                            engine.delete_item(&table, &key, None).await.map_err(engine_error)?;
                        }
                    }
                }
            }
            Ok(Answer::Plain(Response::BatchWrite))
        }
        Request::Unsupported(what) => {
            Err(error(ErrorCode::ValidationException, format!("{what} is not supported by this server yet")))
        }
    }
}

/// Where a request runs on a node of several shards (see `server`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// On this shard or on the shard hosting the item's partition. Requests
    /// that cannot be routed (undecodable, unknown table, bad key) run on
    /// the shard that received them, which answers with the error.
    Shard(u32),
    /// CreateTable and DeleteTable: on shard 0, the catalog authority, which
    /// then brings every shard's catalog up to date.
    Catalog,
    /// Scan: the receiving shard reads the segment's partitions in turn.
    Scan,
    /// BatchGetItem and BatchWriteItem: split by shard.
    Batch,
    /// ClusterStatus: every shard's replicas, gathered.
    Status,
}

/// This shard's replicas as a cluster status lists them.
#[must_use]
pub fn local_groups<D: Disk>(engine: &Engine<D>) -> Vec<protocol::GroupInfo> {
    let Some(raft) = engine.raft() else { return Vec::new() };
    raft.partitions()
        .into_iter()
        .filter_map(|partition| {
            let status = raft.status(partition)?;
            let role = match status.role {
                Role::Follower => 0,
                Role::Candidate => 1,
                Role::PreCandidate => 2,
                Role::Leader => 3,
            };
            Some(protocol::GroupInfo {
                partition,
                shard: engine.placement().shard,
                role,
                leader: status.leader,
                term: status.term,
                commit: status.commit,
                applied: engine.applied_index(partition).unwrap_or(status.applied),
                last_index: status.last_index,
                voters: raft.voters(partition),
                log_replicas: raft.log_replicas(partition),
                node: raft.node_id(),
            })
        })
        .collect()
}

/// A node's cluster status with the given replicas (of all its shards).
#[must_use]
pub fn node_status<D: Disk>(engine: &Engine<D>, groups: Vec<protocol::GroupInfo>) -> protocol::NodeStatus {
    let members = engine.cluster().map_or_else(Vec::new, |c| {
        c.members()
            .iter()
            .map(|m| protocol::MemberInfo {
                id: m.id,
                name: m.name.clone(),
                address: m.addr.to_string(),
                az: m.az.clone(),
            })
            .collect()
    });
    // This shard's own endpoint at its index; the server fills in the
    // other shards' (`Shard::status`).
    let (endpoint, shard_endpoints) = engine.replication().map_or_else(Default::default, |r| {
        let (entry, own) = r.listening();
        let placement = engine.placement();
        let mut shards = vec![String::new(); usize::try_from(placement.shards).unwrap_or(0)];
        if let Some(slot) = usize::try_from(placement.shard).ok().and_then(|i| shards.get_mut(i)) {
            own.clone_into(slot);
        }
        (entry.to_owned(), shards)
    });
    protocol::NodeStatus {
        node_id: engine.raft().map_or(0, crate::repl::ShardRaft::node_id),
        members,
        groups,
        endpoint,
        shard_endpoints,
        services: Vec::new(),
    }
}

/// The response to a ClusterStatus request.
#[must_use]
pub fn status_response(body: &[u8], status: protocol::NodeStatus) -> Vec<u8> {
    protocol::encode_response(request_id(body), &Response::ClusterStatus(Box::new(status)))
}

/// Decides where a request body runs.
///
/// With several shards the body is decoded to find its partition; the
/// envelope comes back with the route so that running the request here does
/// not verify and decode it again (None with one shard, or when the body does
/// not decode: running it then answers with the error).
#[must_use]
pub fn route<'b, D: Disk>(engine: &Engine<D>, body: &'b [u8]) -> (Route, Option<Envelope<'b>>) {
    let placement = engine.placement();
    let here = Route::Shard(placement.shard);
    if placement.shards <= 1 {
        return (here, None);
    }
    let Ok(envelope) = protocol::decode_request(body) else { return (here, None) };
    let partition = match &envelope.request {
        Request::CreateTable { .. } | Request::DeleteTable { .. } => return (Route::Catalog, Some(envelope)),
        Request::Scan { .. } => return (Route::Scan, Some(envelope)),
        Request::ClusterStatus => return (Route::Status, Some(envelope)),
        Request::ReplaceReplica { partition, .. } => Some(*partition),
        Request::BatchGetItem { .. } | Request::BatchWriteItem { .. } => return (Route::Batch, Some(envelope)),
        Request::DescribeTable { .. } | Request::ListTables { .. } | Request::Unsupported(_) => {
            return (here, Some(envelope));
        }
        Request::PutItem { table, item, .. } => {
            item::decode(item).ok().and_then(|i| engine.partition_of(table, &i).ok())
        }
        Request::GetItem { table, key, .. }
        | Request::DeleteItem { table, key, .. }
        | Request::UpdateItem { table, key, .. } => engine.partition_of(table, key).ok(),
        Request::Query { table, key_condition, args, .. } => query_partition(engine, table, key_condition, args),
    };
    (partition.map_or(here, |p| Route::Shard(placement.shard_of(p))), Some(envelope))
}

/// The partition a Query reads (None when the request is invalid; running
/// it then answers with the error).
fn query_partition<D: Disk>(
    engine: &Engine<D>,
    table: &str,
    key_condition: &str,
    args: &ExpressionArgs,
) -> Option<u64> {
    let def = engine.describe_table(table).ok()?;
    let mut p = placeholders(args);
    let sk = def.sort_key.as_ref().map(|k| k.name.as_str());
    let kc = expr::parse_key_condition(key_condition, &mut p, &def.partition_key.name, sk).ok()?;
    engine.partition_of_partition_key(table, &kc.partition_key).ok()
}

/// The replicated partitions of this shard that a request reads with
/// ConsistentRead (GetItem, Query, BatchGetItem; a Scan's are read part by
/// part, see [`scan_is_consistent`]): the shell confirms each group's
/// read index before running it.
#[must_use]
pub fn consistent_reads<D: Disk>(engine: &Engine<D>, envelope: &Envelope<'_>) -> Vec<u64> {
    let partitions = match &envelope.request {
        Request::GetItem { table, key, consistent_read: true, .. } => {
            engine.partition_of(table, key).ok().into_iter().collect()
        }
        Request::Query { table, key_condition, args, consistent_read: true, .. } => {
            query_partition(engine, table, key_condition, args).into_iter().collect()
        }
        Request::BatchGetItem { tables } => tables
            .iter()
            .filter(|t| t.consistent_read)
            .flat_map(|t| t.keys.iter().filter_map(|k| engine.partition_of(&t.table, k).ok()))
            .collect(),
        _ => Vec::new(),
    };
    let mut partitions: Vec<u64> =
        partitions.into_iter().filter(|&p| engine.placement().hosts(p) && engine.is_replicated(p)).collect();
    partitions.sort_unstable();
    partitions.dedup();
    partitions
}

/// Whether a Scan body asks for ConsistentRead.
#[must_use]
pub fn scan_is_consistent(body: &[u8]) -> bool {
    matches!(protocol::decode_request(body), Ok(e) if matches!(e.request, Request::Scan { consistent_read: true, .. }))
}

/// An error response for an engine error.
#[must_use]
pub fn engine_error_response(body: &[u8], e: EngineError) -> Vec<u8> {
    protocol::encode_response(request_id(body), &engine_error(e))
}

/// The request id of a body (0 when it does not decode).
#[must_use]
pub fn request_id(body: &[u8]) -> u64 {
    protocol::decode_request(body).map_or(0, |e| e.request_id)
}

/// An error response to a request body.
#[must_use]
pub fn error_response(body: &[u8], code: ErrorCode, message: impl Into<String>) -> Vec<u8> {
    protocol::encode_response(request_id(body), &error(code, message))
}

/// A Scan being answered partition by partition.
#[derive(Debug)]
pub struct ScanJob {
    id: u64,
    /// The table.
    pub table: String,
    /// Partitions still to read, in order.
    pub partitions: Vec<u64>,
    /// The storage key the first partition resumes after.
    pub after: Option<Vec<u8>>,
    /// Limit (items read).
    pub limit: Option<usize>,
    paths: Option<Vec<expr::Path>>,
}

/// Plans a Scan (validating everything in it); an error is the encoded
/// response.
pub fn scan_job<D: Disk>(engine: &Engine<D>, body: &[u8]) -> Result<ScanJob, Vec<u8>> {
    let envelope = protocol::decode_request(body)
        .map_err(|e| error_response(body, ErrorCode::ValidationException, e.to_string()))?;
    let id = envelope.request_id;
    let fail = |response: Response<'static>| protocol::encode_response(id, &response);
    let Request::Scan { table, filter, projection, args, limit, exclusive_start_key, segment, total_segments, .. } =
        envelope.request
    else {
        return Err(fail(error(ErrorCode::InternalServerError, "not a Scan")));
    };
    let mut p = placeholders(&args);
    parse_condition(filter.as_deref(), &mut p).map_err(fail)?;
    let paths = parse_projection(projection.as_deref(), &mut p).map_err(fail)?;
    all_used(&p).map_err(fail)?;
    let (partitions, after) = engine
        .scan_plan(&table, exclusive_start_key.as_ref(), segment, total_segments)
        .map_err(|e| fail(engine_error(e)))?;
    Ok(ScanJob { id, table, partitions, after, limit: (limit > 0).then_some(limit as usize), paths })
}

/// Reads one partition of a Scan (hosted here) into `page`; returns whether
/// the page is full. The filter is parsed from the request body.
pub async fn scan_part<D: Disk>(
    engine: &mut Engine<D>,
    body: &[u8],
    partition: u64,
    after: Option<Vec<u8>>,
    page: &mut Page,
) -> Result<bool, Response<'static>> {
    let envelope = protocol::decode_request(body).map_err(|e| error(ErrorCode::ValidationException, e.to_string()))?;
    let Request::Scan { table, filter, args, limit, .. } = envelope.request else {
        return Err(error(ErrorCode::InternalServerError, "not a Scan"));
    };
    let mut p = placeholders(&args);
    let filter = parse_condition(filter.as_deref(), &mut p)?;
    let limit = (limit > 0).then_some(limit as usize);
    engine.scan_partition(&table, partition, after, limit, filter.as_ref(), page).await.map_err(engine_error)
}

/// The response to a finished Scan job (or the error that stopped it).
#[must_use]
pub fn scan_answer(job: &ScanJob, page: Result<Page, Response<'static>>) -> Vec<u8> {
    let mut page = match page {
        Ok(page) => page,
        Err(response) => return protocol::encode_response(job.id, &response),
    };
    if let Err(response) = project_page(&mut page, job.paths.as_deref()) {
        return protocol::encode_response(job.id, &response);
    }
    let response = Response::Page {
        items: page.items.iter().map(Vec::as_slice).collect(),
        scanned_count: u32::try_from(page.scanned_count).unwrap_or(u32::MAX),
        last_evaluated_key: page.last_evaluated_key,
    };
    protocol::encode_response(job.id, &response)
}

/// Splits a BatchGetItem or BatchWriteItem into one request per shard
/// (each keeps DynamoDB's checks: the owner of a key sees all its
/// duplicates). An error is the encoded response.
pub fn split_batch<D: Disk>(engine: &Engine<D>, body: &[u8]) -> Result<Vec<(u32, Vec<u8>)>, Vec<u8>> {
    let envelope = protocol::decode_request(body)
        .map_err(|e| error_response(body, ErrorCode::ValidationException, e.to_string()))?;
    let id = envelope.request_id;
    let fail = |response: Response<'static>| protocol::encode_response(id, &response);
    let placement = engine.placement();
    let mut by_shard: std::collections::BTreeMap<u32, Request<'_>> = std::collections::BTreeMap::new();
    match envelope.request {
        Request::BatchGetItem { tables } => {
            let keys: usize = tables.iter().map(|t| t.keys.len()).sum();
            if keys == 0 || keys > BATCH_GET_KEYS_MAX {
                return Err(fail(error(
                    ErrorCode::ValidationException,
                    format!("BatchGetItem takes 1 to {BATCH_GET_KEYS_MAX} keys, got {keys}"),
                )));
            }
            for t in tables {
                for key in &t.keys {
                    let partition = engine.partition_of(&t.table, key).map_err(|e| fail(engine_error(e)))?;
                    let entry = by_shard
                        .entry(placement.shard_of(partition))
                        .or_insert_with(|| Request::BatchGetItem { tables: Vec::new() });
                    let Request::BatchGetItem { tables: sub } = entry else { continue };
                    if sub.last().is_none_or(|s| s.table != t.table) {
                        sub.push(protocol::BatchGetTable { keys: Vec::new(), ..t.clone() });
                    }
                    if let Some(s) = sub.last_mut() {
                        s.keys.push(key.clone());
                    }
                }
            }
        }
        Request::BatchWriteItem { tables } => {
            let writes: usize = tables.iter().map(|(_, w)| w.len()).sum();
            if writes == 0 || writes > BATCH_WRITE_REQUESTS_MAX {
                return Err(fail(error(
                    ErrorCode::ValidationException,
                    format!("BatchWriteItem takes 1 to {BATCH_WRITE_REQUESTS_MAX} requests, got {writes}"),
                )));
            }
            for (table, writes) in tables {
                for write in writes {
                    let partition = match &write {
                        BatchWrite::Put(bytes) => {
                            item::decode(bytes).map_err(EngineError::from).and_then(|i| engine.partition_of(&table, &i))
                        }
                        BatchWrite::Delete(key) => engine.partition_of(&table, key),
                    }
                    .map_err(|e| fail(engine_error(e)))?;
                    let entry = by_shard
                        .entry(placement.shard_of(partition))
                        .or_insert_with(|| Request::BatchWriteItem { tables: Vec::new() });
                    let Request::BatchWriteItem { tables: sub } = entry else { continue };
                    if sub.last().is_none_or(|(t, _)| *t != table) {
                        sub.push((table.clone(), Vec::new()));
                    }
                    if let Some((_, w)) = sub.last_mut() {
                        w.push(write);
                    }
                }
            }
        }
        _ => return Err(fail(error(ErrorCode::InternalServerError, "not a batch request"))),
    }
    Ok(by_shard.into_iter().map(|(shard, request)| (shard, protocol::encode_request(id, 0, &request))).collect())
}

/// Merges the per-shard responses of a split batch: the first error, or
/// the union of what they read.
#[must_use]
pub fn merge_batch(body: &[u8], responses: &[Vec<u8>]) -> Vec<u8> {
    let id = request_id(body);
    let mut tables: Vec<(String, Vec<Vec<u8>>)> = Vec::new();
    let mut wrote = false;
    for response in responses {
        match protocol::decode_response(response) {
            Ok((_, protocol::Reply::BatchGet(got))) => {
                for (table, items) in got {
                    match tables.iter_mut().find(|(t, _)| *t == table) {
                        Some((_, all)) => all.extend(items),
                        None => tables.push((table, items)),
                    }
                }
            }
            Ok((_, protocol::Reply::BatchWrite)) => wrote = true,
            Ok((_, protocol::Reply::Error { code, message, leader_hint })) => {
                return protocol::encode_response(id, &Response::Error { code, message, leader_hint });
            }
            Ok(_) | Err(_) => {
                return protocol::encode_response(id, &error(ErrorCode::InternalServerError, "bad shard response"));
            }
        }
    }
    if wrote {
        return protocol::encode_response(id, &Response::BatchWrite);
    }
    let borrowed = tables.iter().map(|(t, items)| (t.clone(), items.iter().map(Vec::as_slice).collect())).collect();
    protocol::encode_response(id, &Response::BatchGet(borrowed))
}

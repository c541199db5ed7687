//! The request router: Keel's binary protocol in front of the storage
//! fleet.
//!
//! A client's request is verified and decoded once, to find its table and
//! partition key; its bytes then go on as they came, under an id of the
//! router's own (`protocol::set_envelope_id` rewrites it in place), to the
//! owning shard's own port, and the answer comes back the same way.
//!
//! Constant work: every keyed request sends one lookup to MemDS, whether
//! the local cache knew the partition or not. On a hit the request goes on
//! at once with the cached location and the answer refreshes the cache when
//! it comes; on a miss the request waits for it. Lookups are batched (all
//! that queue while up to [`LOOKUP_BATCHES_IN_FLIGHT_MAX`] batches are out
//! travel in the next one), so MemDS's load is proportional to client
//! traffic at any hit rate, and a cold cache costs latency, never a surge
//! of work somewhere else. The counters show it (`lookups_sent` follows
//! `requests`, whatever `cache_hits` and `cache_misses` do).
//!
//! The cache has two parts: table schemas (needed to read a key's partition
//! key; they do not change while a table exists) and partition locations
//! (replicas, leader, term, the MemDS version that set them). Flushing
//! drops both; the first request of a table whose schema is unknown costs
//! one table lookup more.
//!
//! Failures: a `NotLeader` answer names the leader's node; the request goes
//! to that node's shard at once (up to [`REDIRECTS_MAX`] times) and the
//! cache remembers the leader until MemDS reports a newer term. An election
//! (`NotLeader` without a hint, `ServiceUnavailable`) or a replica that
//! cannot be reached is retried with backoff on another replica, after a
//! fresh lookup; a request that may have run (its connection broke after
//! it left) is retried only when it is idempotent, and otherwise answered
//! with `InternalServerError` saying the outcome is unknown. Requests
//! without one partition (table operations, Scan, batches) go to a storage
//! node's entry port, which routes them among its shards.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use keel_wire::expr::{self, Placeholders};
use keel_wire::item::{self, AttributeValue, Item};
use keel_wire::key;
use keel_wire::protocol::{
    self, ErrorCode, ExpressionArgs, GroupInfo, NodeStatus, Reply, Request, Response, ServiceInfo,
};
use keel_wire::routing::{self, Body, Location, LookupKey, LookupStatus, MapStatus, NodeRoute, TableRoute};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::net::{Handler, NetError, Pipes, response_id, routing_id};

/// Keys in one MemDS lookup batch at most.
pub const LOOKUP_BATCH_MAX: usize = 512;
/// Lookup batches out at once; more lookups wait and join the next batch.
pub const LOOKUP_BATCHES_IN_FLIGHT_MAX: usize = 4;
/// Lookups queued for the batcher; a hit's lookup that finds the queue
/// full is dropped (and counted), a miss's waits.
pub const LOOKUP_QUEUE_MAX: usize = 64 * 1024;
/// Partition locations cached at most (the cache starts over beyond).
pub const CACHE_PARTITIONS_MAX: usize = 1 << 20;
/// Leader hints followed per request.
pub const REDIRECTS_MAX: u32 = 4;
/// Attempts per request (hints not counted).
pub const ATTEMPTS_MAX: u32 = 8;
/// First backoff between attempts; doubled each time up to [`BACKOFF_MAX`].
pub const BACKOFF_BASE: Duration = Duration::from_millis(20);
/// Longest backoff.
pub const BACKOFF_MAX: Duration = Duration::from_millis(500);
/// How long a MemDS lookup batch may take.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a keyed request for a table MemDS does not know keeps being
/// asked again while the nodes answer that the table does not exist: one
/// just created is in the catalog of the nodes that applied its entry, not
/// yet in the others', and reaches MemDS with the control plane's next poll
/// (every 250 ms). A table that does not exist is reported after it.
pub const UNKNOWN_TABLE_WAIT: Duration = Duration::from_secs(1);
/// How often the router asks its MemDS servers (and control plane) for
/// their status (which also lists the storage nodes).
pub const STATUS_POLL_INTERVAL: Duration = Duration::from_millis(300);

/// Router settings.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// Where the router serves clients (reported in cluster status).
    pub endpoint: String,
    /// MemDS servers.
    pub memds: Vec<String>,
    /// The control plane, for cluster status only.
    pub control: Option<String>,
    /// Longest wait for a storage node's answer to one attempt, for a
    /// request that names no timeout of its own.
    pub request_timeout: Duration,
}

/// Counters; `lookups_sent` follows `requests` whatever the hit rate.
#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
    lookups_sent: AtomicU64,
    lookups_answered: AtomicU64,
    lookups_dropped: AtomicU64,
    lookup_batches: AtomicU64,
    redirects: AtomicU64,
    retries: AtomicU64,
    errors: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// A cached partition location, with the leader learnt from a hint.
#[derive(Debug, Clone)]
struct Cached {
    location: Location,
    /// (leader node, the term the cached location had when hinted).
    hinted: Option<(u64, u64)>,
}

#[derive(Debug, Default)]
struct Cache {
    epoch: u64,
    tables: HashMap<String, TableRoute>,
    partitions: HashMap<u64, Cached>,
}

/// One key on its way to MemDS; a miss waits for the answer.
#[derive(Debug)]
struct Lookup {
    key: LookupKey,
    reply: Option<oneshot::Sender<Option<Location>>>,
}

/// What the router last heard from a MemDS server or the control plane.
#[derive(Debug, Clone, Default)]
struct Heard {
    healthy: bool,
    status: MapStatus,
}

/// A located partition and the lookup that located it (None: not located).
type Route = Option<(u64, LookupKey)>;

/// How a request finds its partition.
#[derive(Debug)]
enum KeySource {
    /// The key (or an item) as attributes.
    Item(Item),
    /// A Query's key condition.
    Condition { text: String, args: ExpressionArgs },
}

/// Where a request goes.
#[derive(Debug)]
enum Target {
    /// One partition of `table`.
    Keyed { table: String, key: KeySource, leader: bool, idempotent: bool },
    /// Any storage node's entry port.
    Anywhere { idempotent: bool },
    /// The router answers itself (cluster status).
    Status,
    /// Not a client's request: refused with a validation error.
    Refused(&'static str),
}

fn classify(request: &Request<'_>) -> Target {
    let keyed = |table: &String, key: KeySource, leader, idempotent| Target::Keyed {
        table: table.clone(),
        key,
        leader,
        idempotent,
    };
    match request {
        Request::ClusterStatus => Target::Status,
        Request::ReplaceReplica { .. } => {
            Target::Refused("ReplaceReplica is the control plane's request to a partition's leader, not a router's")
        }
        Request::GetItem { table, key, consistent_read, .. } => {
            keyed(table, KeySource::Item(key.clone()), *consistent_read, true)
        }
        Request::Query { table, key_condition, args, consistent_read, .. } => keyed(
            table,
            KeySource::Condition { text: key_condition.clone(), args: args.clone() },
            *consistent_read,
            true,
        ),
        Request::PutItem { table, item, condition, .. } => match item::decode(item) {
            Ok(item) => keyed(table, KeySource::Item(item), true, condition.is_none()),
            // The node will say what is wrong with it.
            Err(_) => Target::Anywhere { idempotent: false },
        },
        Request::DeleteItem { table, key, condition, .. } => {
            keyed(table, KeySource::Item(key.clone()), true, condition.is_none())
        }
        Request::UpdateItem { table, key, .. } => keyed(table, KeySource::Item(key.clone()), true, false),
        Request::DescribeTable { .. }
        | Request::ListTables { .. }
        | Request::Scan { .. }
        | Request::BatchGetItem { .. }
        | Request::Unsupported(_) => Target::Anywhere { idempotent: true },
        Request::CreateTable { .. } | Request::DeleteTable { .. } | Request::BatchWriteItem { .. } => {
            Target::Anywhere { idempotent: false }
        }
    }
}

/// The partition-key hash of a request's key (None: the key is not valid;
/// the node will say why).
fn key_hash(table: &TableRoute, source: &KeySource) -> Option<u64> {
    let value = match source {
        KeySource::Item(item) => item.get(&table.partition_key)?.clone(),
        KeySource::Condition { text, args } => {
            let mut placeholders = Placeholders::new(&args.names, &args.values);
            expr::parse_key_condition(text, &mut placeholders, &table.partition_key, table.sort_key.as_deref())
                .ok()?
                .partition_key
        }
    };
    hash_of_value(&table.partition_key, &value)
}

fn hash_of_value(name: &str, value: &AttributeValue) -> Option<u64> {
    key::partition_prefix(name, value).ok().map(|prefix| key::hash_of(&prefix))
}

/// The router.
#[derive(Debug)]
pub struct Router {
    config: RouterConfig,
    cache: Mutex<Cache>,
    counters: Counters,
    lookups: mpsc::Sender<Lookup>,
    heard: Mutex<HashMap<String, Heard>>,
    storage: Pipes,
    routing: Pipes,
    next_id: AtomicU64,
    next_replica: AtomicUsize,
}

impl Router {
    /// A router and the task that batches its lookups (spawned here: call
    /// inside a tokio runtime), and the task that polls MemDS status.
    #[must_use]
    pub fn start(config: RouterConfig) -> Arc<Self> {
        assert!(!config.memds.is_empty(), "a router needs at least one MemDS server");
        let (lookups, queue) = mpsc::channel(LOOKUP_QUEUE_MAX);
        let router = Arc::new(Self {
            config,
            cache: Mutex::new(Cache::default()),
            counters: Counters::default(),
            lookups,
            heard: Mutex::new(HashMap::new()),
            storage: Pipes::new(response_id, Duration::from_secs(1)),
            routing: Pipes::new(routing_id, Duration::from_secs(1)),
            next_id: AtomicU64::new(1),
            next_replica: AtomicUsize::new(0),
        });
        tokio::spawn(batch_lookups(Arc::downgrade(&router), queue));
        tokio::spawn(poll_status(Arc::downgrade(&router)));
        router
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn heard(&self) -> std::sync::MutexGuard<'_, HashMap<String, Heard>> {
        self.heard.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Drops the routing cache (tables and partitions).
    pub fn flush_cache(&self) {
        let mut cache = self.cache();
        cache.tables.clear();
        cache.partitions.clear();
    }

    /// The router's counters as a status.
    #[must_use]
    pub fn status(&self) -> MapStatus {
        let c = &self.counters;
        let counters = [
            ("requests", &c.requests),
            ("cache_hits", &c.cache_hits),
            ("cache_misses", &c.cache_misses),
            ("lookups_sent", &c.lookups_sent),
            ("lookups_answered", &c.lookups_answered),
            ("lookups_dropped", &c.lookups_dropped),
            ("lookup_batches", &c.lookup_batches),
            ("redirects", &c.redirects),
            ("retries", &c.retries),
            ("errors", &c.errors),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value.load(Ordering::Relaxed)))
        .collect();
        let cache = self.cache();
        MapStatus {
            role: "router".into(),
            epoch: cache.epoch,
            version: 0,
            tables: u32::try_from(cache.tables.len()).unwrap_or(u32::MAX),
            partitions: u32::try_from(cache.partitions.len()).unwrap_or(u32::MAX),
            nodes: Vec::new(),
            lookups: c.lookups_sent.load(Ordering::Relaxed),
            counters,
        }
    }

    /// Queues a lookup; with `wait`, returns its answer (None: no MemDS
    /// server answered).
    async fn lookup(&self, key: LookupKey, wait: bool) -> Option<Location> {
        bump(&self.counters.lookups_sent);
        if !wait {
            if self.lookups.try_send(Lookup { key, reply: None }).is_err() {
                bump(&self.counters.lookups_dropped);
            }
            return None;
        }
        let (tx, rx) = oneshot::channel();
        self.lookups.send(Lookup { key, reply: Some(tx) }).await.ok()?;
        rx.await.ok().flatten()
    }

    /// Where the control plane puts a new table's partitions (`partitions`
    /// 0: as many as it chooses). `Ok(None)` when no control plane answers:
    /// the storage nodes then place them by their own rotation. `Err` when
    /// it answers that it cannot place them now (fewer than three zones
    /// have a node up): the client retries later, rather than the table
    /// getting replicas on nodes known to be down.
    async fn place(&self, partitions: u32, timeout: Duration) -> Result<Option<Vec<Vec<u64>>>, String> {
        let Some(control) = &self.config.control else { return Ok(None) };
        let id = self.id();
        let request = routing::encode(id, &Body::Place(partitions));
        let reply = self.routing.call(control, id, &request, timeout).await;
        match reply.map_err(|e| e.to_string()).and_then(|b| routing::decode(&b).map_err(|e| e.to_string())) {
            Ok((_, Body::PlaceAnswer(placement))) if !placement.is_empty() => Ok(Some(placement)),
            Ok((_, Body::Error(why))) => Err(format!("the control plane cannot place the table now: {why}")),
            Ok((_, other)) => {
                tracing::warn!(%control, ?other, "unexpected answer to a placement");
                Ok(None)
            }
            Err(e) => {
                tracing::warn!(%control, error = %e, "no placement from the control plane");
                Ok(None)
            }
        }
    }

    /// The table's schema, from the cache or (waiting) from MemDS.
    async fn table(&self, name: &str) -> Option<TableRoute> {
        if let Some(table) = self.cache().tables.get(name) {
            return Some(table.clone());
        }
        let key = LookupKey { table: name.to_owned(), hash: 0, table_only: true };
        self.lookup(key, true).await.and_then(|l| l.table)
    }

    /// Answers one client request (verified and decoded here).
    async fn serve(&self, body: Vec<u8>) -> Vec<u8> {
        bump(&self.counters.requests);
        let envelope = match protocol::decode_request(&body) {
            Ok(envelope) => envelope,
            Err(e) => {
                bump(&self.counters.errors);
                let id = keel_wire::verify::request(&body).map_or(0, |r| r.request_id());
                let error = Response::error(ErrorCode::ValidationException, format!("unreadable request: {e}"));
                return protocol::encode_response(id, &error);
            }
        };
        let (client_id, timeout_ms) = (envelope.request_id, envelope.timeout_ms);
        let timeout = match timeout_ms {
            0 => self.config.request_timeout,
            ms => Duration::from_millis(u64::from(ms)).max(Duration::from_millis(100)),
        };
        // A batch's keys live in many partitions, whose leaders may be on
        // different nodes: it is split per partition. (One outside the
        // limits goes to a node as it is, which says what is wrong.)
        let split = match &envelope.request {
            Request::BatchWriteItem { tables }
                if (1..=protocol::BATCH_WRITE_REQUESTS_MAX).contains(&tables.iter().map(|t| t.1.len()).sum()) =>
            {
                Some(self.batch_write(client_id, timeout, tables).await)
            }
            Request::BatchGetItem { tables }
                if (1..=protocol::BATCH_GET_KEYS_MAX).contains(&tables.iter().map(|t| t.keys.len()).sum()) =>
            {
                Some(self.batch_get(client_id, timeout, tables).await)
            }
            _ => None,
        };
        if let Some(answer) = split {
            return answer.unwrap_or_else(|response| {
                bump(&self.counters.errors);
                protocol::encode_response(client_id, &response)
            });
        }
        let target = classify(&envelope.request);
        // A new table's partitions go where the control plane places them.
        let placed = match &envelope.request {
            Request::CreateTable { table, partition_key, sort_key, partitions, placement } if placement.is_empty() => {
                match self.place(*partitions, timeout).await {
                    Ok(placed) => placed.map(|placement| {
                        let request = Request::CreateTable {
                            table: table.clone(),
                            partition_key: partition_key.clone(),
                            sort_key: sort_key.clone(),
                            partitions: u32::try_from(placement.len()).unwrap_or(u32::MAX),
                            placement,
                        };
                        protocol::encode_request(1, timeout_ms, &request)
                    }),
                    Err(why) => {
                        bump(&self.counters.errors);
                        let refusal = Response::error(ErrorCode::ServiceUnavailable, why);
                        return protocol::encode_response(client_id, &refusal);
                    }
                }
            }
            _ => None,
        };
        // An id of 0 is not written into the envelope, so there is nothing
        // to rewrite in place: encode it once more with an id.
        let again =
            placed.or_else(|| (client_id == 0).then(|| protocol::encode_request(1, timeout_ms, &envelope.request)));
        drop(envelope);
        let body = again.unwrap_or(body);
        let answer = match target {
            Target::Status => self.cluster_status(client_id).await,
            Target::Refused(why) => {
                bump(&self.counters.errors);
                let refusal =
                    Response::Error { code: ErrorCode::ValidationException, message: why.into(), leader_hint: None };
                return protocol::encode_response(client_id, &refusal);
            }
            Target::Anywhere { idempotent } => self.forward(body, client_id, None, false, idempotent, timeout).await,
            Target::Keyed { table, key, leader, idempotent } => match self.locate(&table, &key).await {
                Some(partition) => self.forward(body, client_id, Some(partition), leader, idempotent, timeout).await,
                // Unknown to MemDS (just created?) or an invalid key: a
                // node's entry port knows or says why.
                None => self.forward_unlocated(body, client_id, (&table, &key), leader, idempotent, timeout).await,
            },
        };
        match answer {
            Ok(answer) => answer,
            Err(response) => {
                bump(&self.counters.errors);
                protocol::encode_response(client_id, &response)
            }
        }
    }

    /// The partition of each key (one lookup each, as for single requests),
    /// grouped: `None` gathers the keys that could not be located.
    async fn group_by_partition<T>(
        &self,
        table: &str,
        keys: impl IntoIterator<Item = (Item, T)>,
    ) -> Vec<(Route, Vec<T>)> {
        let mut groups: Vec<(Route, Vec<T>)> = Vec::new();
        for (key, value) in keys {
            let route = self.locate(table, &KeySource::Item(key)).await;
            let partition = route.as_ref().map(|(p, _)| *p);
            match groups.iter_mut().find(|(r, _)| r.as_ref().map(|(p, _)| *p) == partition) {
                Some((_, values)) => values.push(value),
                None => groups.push((route, vec![value])),
            }
        }
        groups
    }

    /// One part of a split batch, sent like a single request; its answer,
    /// or the error answer that ends the batch.
    async fn batch_part(
        &self,
        request: &Request<'_>,
        route: Option<(u64, LookupKey)>,
        leader: bool,
        timeout: Duration,
    ) -> Result<Vec<u8>, Result<Vec<u8>, Response<'static>>> {
        let body = protocol::encode_request(1, 0, request);
        let answer = self.forward(body, 1, route, leader, true, timeout).await.map_err(Err)?;
        match protocol::response_error(&answer) {
            Ok(None) => Ok(answer),
            _ => Err(Ok(answer)),
        }
    }

    /// BatchWriteItem, one part per partition; done when every part is.
    async fn batch_write(
        &self,
        client_id: u64,
        timeout: Duration,
        tables: &[(String, Vec<protocol::BatchWrite<'_>>)],
    ) -> Result<Vec<u8>, Response<'static>> {
        for (table, writes) in tables {
            let keyed = writes.iter().map(|w| {
                let key = match w {
                    protocol::BatchWrite::Put(bytes) => item::decode(bytes).unwrap_or_default(),
                    protocol::BatchWrite::Delete(key) => key.clone(),
                };
                (key, w.clone())
            });
            for (route, part) in self.group_by_partition(table, keyed.collect::<Vec<_>>()).await {
                let request = Request::BatchWriteItem { tables: vec![(table.clone(), part)] };
                if let Err(failed) = self.batch_part(&request, route, true, timeout).await {
                    return with_id(failed, client_id);
                }
            }
        }
        Ok(protocol::encode_response(client_id, &Response::BatchWrite))
    }

    /// BatchGetItem, one part per partition; the items merged per table.
    async fn batch_get(
        &self,
        client_id: u64,
        timeout: Duration,
        tables: &[protocol::BatchGetTable],
    ) -> Result<Vec<u8>, Response<'static>> {
        let mut found: Vec<(String, Vec<Vec<u8>>)> = Vec::new();
        for table in tables {
            let keyed = table.keys.iter().map(|k| (k.clone(), k.clone())).collect::<Vec<_>>();
            for (route, keys) in self.group_by_partition(&table.table, keyed).await {
                let part = protocol::BatchGetTable { keys, ..table.clone() };
                let request = Request::BatchGetItem { tables: vec![part] };
                let answer = match self.batch_part(&request, route, table.consistent_read, timeout).await {
                    Ok(answer) => answer,
                    Err(failed) => return with_id(failed, client_id),
                };
                match protocol::decode_response(&answer) {
                    Ok((_, Reply::BatchGet(items))) => {
                        for (name, mut list) in items {
                            match found.iter_mut().find(|(n, _)| *n == name) {
                                Some((_, all)) => all.append(&mut list),
                                None => found.push((name, list)),
                            }
                        }
                    }
                    other => {
                        return Err(Response::error(
                            ErrorCode::InternalServerError,
                            format!("unexpected answer to a BatchGetItem part: {other:?}"),
                        ));
                    }
                }
            }
        }
        let borrowed =
            found.iter().map(|(name, items)| (name.clone(), items.iter().map(Vec::as_slice).collect())).collect();
        Ok(protocol::encode_response(client_id, &Response::BatchGet(borrowed)))
    }

    /// Finds a request's partition: one lookup sent to MemDS in any case;
    /// waits for it only when the cache does not know the partition.
    async fn locate(&self, table: &str, source: &KeySource) -> Option<(u64, LookupKey)> {
        let route = self.table(table).await?;
        let hash = key_hash(&route, source)?;
        let partition = route.partition_of(hash);
        let key = LookupKey { table: route.name.clone(), hash, table_only: false };
        let hit = self.cache().partitions.contains_key(&partition);
        if hit {
            bump(&self.counters.cache_hits);
            self.lookup(key.clone(), false).await;
            return Some((partition, key));
        }
        bump(&self.counters.cache_misses);
        let found = self.lookup(key.clone(), true).await?;
        (found.status == LookupStatus::Found).then_some((found.partition, key))
    }

    /// Where an attempt goes: the partition's leader (or a replica in turn
    /// for an eventually consistent read), or a storage node's entry port.
    fn pick(&self, partition: Option<u64>, leader: bool, avoid: &[String]) -> Option<String> {
        let turn = self.next_replica.fetch_add(1, Ordering::Relaxed);
        if let Some(partition) = partition {
            let cache = self.cache();
            if let Some(cached) = cache.partitions.get(&partition) {
                let l = &cached.location;
                let leader_node = cached.hinted.map_or(l.leader, |(node, _)| node);
                let usable: Vec<_> =
                    l.replicas.iter().filter(|r| !r.log_only && !avoid.contains(&r.endpoint)).collect();
                let chosen = if leader {
                    usable.iter().find(|r| r.node == leader_node).or_else(|| usable.iter().find(|r| r.healthy))
                } else {
                    let healthy: Vec<_> = usable.iter().filter(|r| r.healthy).collect();
                    healthy.get(turn % healthy.len().max(1)).copied()
                };
                // A partition's requests go to its replicas only (with more
                // nodes than zones, other nodes do not hold it): none left
                // to try means wait and look it up again.
                return chosen.or_else(|| usable.first()).map(|replica| replica.endpoint.clone());
            }
        }
        let nodes = self.nodes();
        let usable: Vec<_> = nodes.iter().filter(|n| !n.endpoint.is_empty() && !avoid.contains(&n.endpoint)).collect();
        let healthy: Vec<_> = usable.iter().filter(|n| n.healthy).collect();
        healthy
            .get(turn % healthy.len().max(1))
            .map(|n| n.endpoint.clone())
            .or_else(|| usable.get(turn % usable.len().max(1)).map(|n| n.endpoint.clone()))
    }

    /// The storage nodes the freshest MemDS server knows.
    fn nodes(&self) -> Vec<NodeRoute> {
        let heard = self.heard();
        heard
            .iter()
            .filter(|(endpoint, h)| h.healthy && self.config.memds.contains(endpoint))
            .max_by_key(|(_, h)| (h.status.epoch, h.status.version))
            .map(|(_, h)| h.status.nodes.clone())
            .unwrap_or_default()
    }

    /// A hint names the leader's node entry port: remember that node as the
    /// partition's leader and go to its shard.
    fn follow_hint(&self, partition: Option<u64>, hint: &str) -> String {
        if let Some(partition) = partition {
            let mut cache = self.cache();
            if let Some(cached) = cache.partitions.get_mut(&partition) {
                let replica = cached.location.replicas.iter().find(|r| r.node_endpoint == hint);
                if let Some(replica) = replica {
                    let endpoint = replica.endpoint.clone();
                    cached.hinted = Some((replica.node, cached.location.term));
                    return endpoint;
                }
            }
        }
        hint.to_owned()
    }

    /// Sends a request on and brings back the answer under the client's id
    /// (module docs: hints, retries, unknown outcomes).
    /// A keyed request whose partition MemDS could not name: sent to any
    /// node's entry port, and while the answer is that the table does not
    /// exist, sent again (to the partition's replicas once MemDS knows the
    /// table) for up to [`UNKNOWN_TABLE_WAIT`]. A just-created table is not
    /// yet in the catalog of every node; a node that answers so has not run
    /// the request, so sending it again is safe whatever it is.
    async fn forward_unlocated(
        &self,
        body: Vec<u8>,
        client_id: u64,
        (table, key): (&str, &KeySource),
        leader: bool,
        idempotent: bool,
        timeout: Duration,
    ) -> Result<Vec<u8>, Response<'static>> {
        let deadline = Instant::now() + UNKNOWN_TABLE_WAIT.min(timeout);
        let mut wait = BACKOFF_BASE;
        loop {
            let answer = self.forward(body.clone(), client_id, None, false, idempotent, timeout).await?;
            let missing =
                matches!(protocol::response_error(&answer), Ok(Some((ErrorCode::ResourceNotFoundException, _))));
            if !missing || Instant::now() + wait > deadline {
                return Ok(answer);
            }
            bump(&self.counters.retries);
            tokio::time::sleep(wait).await;
            wait = wait.saturating_mul(2).min(BACKOFF_MAX);
            if let Some(partition) = self.locate(table, key).await {
                return self.forward(body, client_id, Some(partition), leader, idempotent, timeout).await;
            }
        }
    }

    async fn forward(
        &self,
        mut body: Vec<u8>,
        client_id: u64,
        route: Option<(u64, LookupKey)>,
        leader: bool,
        idempotent: bool,
        timeout: Duration,
    ) -> Result<Vec<u8>, Response<'static>> {
        let partition = route.as_ref().map(|(p, _)| *p);
        let mut avoid: Vec<String> = Vec::new();
        let mut next: Option<String> = None;
        let mut redirects = 0;
        let mut last_error = String::from("no storage node is known yet");
        for attempt in 0..ATTEMPTS_MAX {
            if attempt > 0 {
                bump(&self.counters.retries);
                let backoff = BACKOFF_BASE.saturating_mul(1 << attempt.min(8)).min(BACKOFF_MAX);
                tokio::time::sleep(backoff).await;
            }
            loop {
                let Some(endpoint) = next.take().or_else(|| self.pick(partition, leader, &avoid)) else {
                    // Nothing to try now: refresh after the backoff.
                    avoid.clear();
                    break;
                };
                let id = self.id();
                let patched = protocol::set_envelope_id(&mut body, id);
                debug_assert!(patched, "a request with a nonzero id carries it");
                match self.storage.call(&endpoint, id, &body, timeout).await {
                    Ok(mut answer) => match protocol::response_error(&answer) {
                        Ok(Some((ErrorCode::NotLeader, Some(hint)))) if redirects < REDIRECTS_MAX => {
                            bump(&self.counters.redirects);
                            redirects += 1;
                            next = Some(self.follow_hint(partition, &hint));
                            continue;
                        }
                        Ok(Some((code @ (ErrorCode::NotLeader | ErrorCode::ServiceUnavailable), _))) => {
                            last_error = format!("{code:?} from {endpoint}");
                            avoid.push(endpoint);
                            break;
                        }
                        Ok(_) => {
                            let patched = protocol::set_envelope_id(&mut answer, client_id);
                            debug_assert!(patched, "an answer to a nonzero id carries it");
                            return Ok(answer);
                        }
                        Err(e) => {
                            return Err(Response::error(
                                ErrorCode::InternalServerError,
                                format!("unreadable answer from {endpoint}: {e}"),
                            ));
                        }
                    },
                    Err(e) if e.not_sent() || idempotent => {
                        last_error = e.to_string();
                        avoid.push(endpoint);
                        break;
                    }
                    Err(e @ (NetError::Lost { .. } | NetError::Timeout { .. })) => {
                        return Err(Response::error(
                            ErrorCode::InternalServerError,
                            format!("the outcome is unknown: {e}"),
                        ));
                    }
                    Err(e) => {
                        last_error = e.to_string();
                        avoid.push(endpoint);
                        break;
                    }
                }
            }
            // Ask MemDS again before the next attempt: the leader or the
            // replicas may have moved (a hinted leader is kept until MemDS
            // knows a newer term).
            if let Some((_, key)) = &route {
                self.lookup(key.clone(), true).await;
            }
        }
        Err(Response::error(ErrorCode::ServiceUnavailable, format!("no replica answered: {last_error}")))
    }

    /// Applies a MemDS answer to the cache.
    fn learn(&self, epoch: u64, keys: &[LookupKey], locations: Vec<Location>) {
        let mut cache = self.cache();
        if cache.epoch != epoch {
            // Another control-plane epoch: versions are not comparable.
            cache.epoch = epoch;
            cache.partitions.clear();
        }
        if cache.partitions.len() > CACHE_PARTITIONS_MAX {
            cache.partitions.clear();
        }
        for (key, location) in keys.iter().zip(locations) {
            match (&location.table, location.status) {
                (Some(table), _) => {
                    if cache.tables.get(&table.name).is_some_and(|t| t.id != table.id) {
                        let old = u64::from(cache.tables.get(&table.name).map_or(0, |t| t.id));
                        cache.partitions.retain(|p, _| p >> 32 != old);
                    }
                    cache.tables.insert(table.name.clone(), table.clone());
                }
                (None, LookupStatus::NoSuchTable) => {
                    if let Some(old) = cache.tables.remove(&key.table) {
                        cache.partitions.retain(|p, _| p >> 32 != u64::from(old.id));
                    }
                }
                (None, _) => {}
            }
            if key.table_only || location.status != LookupStatus::Found {
                continue;
            }
            match cache.partitions.get_mut(&location.partition) {
                Some(cached) if cached.location.version > location.version => {}
                Some(cached) => {
                    // A hint outlives answers that know no newer term.
                    let hinted = cached.hinted.filter(|&(_, term)| term >= location.term);
                    *cached = Cached { location, hinted };
                }
                None => {
                    cache.partitions.insert(location.partition, Cached { location, hinted: None });
                }
            }
        }
    }

    /// Sends one batch to a MemDS server (the next healthy one in turn,
    /// then the others), applies the answer and wakes the waiting.
    async fn send_batch(&self, batch: Vec<Lookup>) {
        bump(&self.counters.lookup_batches);
        let keys: Vec<LookupKey> = batch.iter().map(|l| l.key.clone()).collect();
        let servers = self.memds_in_order();
        let mut answer = None;
        for server in servers {
            let id = self.id();
            let request = routing::encode(id, &Body::Lookup(keys.clone()));
            let reply = self.routing.call(&server, id, &request, LOOKUP_TIMEOUT).await;
            let decoded = reply.map_err(|e| e.to_string()).and_then(|b| routing::decode(&b).map_err(|e| e.to_string()));
            match decoded {
                Ok((_, Body::LookupAnswer { epoch, locations, .. })) if locations.len() == keys.len() => {
                    answer = Some((epoch, locations));
                    break;
                }
                Ok((_, other)) => tracing::warn!(%server, ?other, "unexpected lookup answer"),
                Err(why) => {
                    tracing::warn!(%server, %why, "MemDS lookup failed; trying the next server");
                    if let Some(heard) = self.heard().get_mut(&server) {
                        heard.healthy = false;
                    }
                }
            }
        }
        let Some((epoch, locations)) = answer else { return };
        self.counters.lookups_answered.fetch_add(u64::try_from(keys.len()).unwrap_or(0), Ordering::Relaxed);
        self.learn(epoch, &keys, locations.clone());
        for (lookup, location) in batch.into_iter().zip(locations) {
            if let Some(reply) = lookup.reply {
                let _ = reply.send(Some(location));
            }
        }
    }

    /// MemDS servers starting at the next in turn, healthy ones first.
    fn memds_in_order(&self) -> Vec<String> {
        let count = self.config.memds.len();
        let start = self.next_replica.fetch_add(1, Ordering::Relaxed);
        let mut order: Vec<String> =
            (0..count).filter_map(|i| self.config.memds.get((start + i) % count)).cloned().collect();
        let heard = self.heard();
        order.sort_by_key(|s| !heard.get(s).is_none_or(|h| h.healthy));
        order
    }

    /// Every storage node's status merged, with the front end's services.
    async fn cluster_status(&self, client_id: u64) -> Result<Vec<u8>, Response<'static>> {
        let nodes = self.nodes();
        let mut merged = NodeStatus { endpoint: self.config.endpoint.clone(), ..NodeStatus::default() };
        for node in &nodes {
            let id = self.id();
            let request = protocol::encode_request(id, 0, &Request::ClusterStatus);
            let status = match self.storage.call(&node.endpoint, id, &request, Duration::from_secs(2)).await {
                Ok(answer) => match protocol::decode_response(&answer) {
                    Ok((_, Reply::ClusterStatus(status))) => Some(status),
                    _ => None,
                },
                Err(_) => None,
            };
            merged.services.push(ServiceInfo {
                role: "node".into(),
                endpoint: node.endpoint.clone(),
                healthy: status.is_some(),
                node: node.id,
                ..ServiceInfo::default()
            });
            let Some(status) = status else { continue };
            if merged.members.is_empty() {
                merged.members = status.members;
            }
            merged.groups.extend(
                status
                    .groups
                    .into_iter()
                    .map(|g| GroupInfo { node: if g.node == 0 { status.node_id } else { g.node }, ..g }),
            );
        }
        let own = self.status();
        merged.services.insert(
            0,
            ServiceInfo {
                role: "router".into(),
                endpoint: self.config.endpoint.clone(),
                healthy: true,
                version: 0,
                lookups: own.lookups,
                requests: own.counter("requests"),
                node: 0,
                replacements: 0,
            },
        );
        let heard = self.heard().clone();
        let others =
            self.config.memds.iter().map(|e| ("memds", e)).chain(self.config.control.iter().map(|e| ("control", e)));
        for (role, endpoint) in others {
            let h = heard.get(endpoint).cloned().unwrap_or_default();
            merged.services.push(ServiceInfo {
                role: role.into(),
                endpoint: endpoint.clone(),
                healthy: h.healthy,
                version: h.status.version,
                lookups: h.status.lookups,
                requests: 0,
                node: 0,
                replacements: h.status.counter("replacements_asked"),
            });
        }
        Ok(protocol::encode_response(client_id, &Response::ClusterStatus(Box::new(merged))))
    }

    /// Asks every MemDS server and the control plane for its status.
    async fn poll_once(&self) {
        let targets: Vec<String> = self.config.memds.iter().chain(self.config.control.iter()).cloned().collect();
        for endpoint in targets {
            let id = self.id();
            let request = routing::encode(id, &Body::Status);
            let status = match self.routing.call(&endpoint, id, &request, LOOKUP_TIMEOUT).await {
                Ok(answer) => match routing::decode(&answer) {
                    Ok((_, Body::StatusAnswer(status))) => Some(status),
                    _ => None,
                },
                Err(_) => None,
            };
            let mut heard = self.heard();
            let entry = heard.entry(endpoint).or_default();
            entry.healthy = status.is_some();
            if let Some(status) = status {
                entry.status = status;
            }
        }
    }
}

/// A batch part's error answer (or the router's own) under the client's id.
fn with_id(failed: Result<Vec<u8>, Response<'static>>, client_id: u64) -> Result<Vec<u8>, Response<'static>> {
    let mut answer = failed?;
    let patched = protocol::set_envelope_id(&mut answer, client_id);
    debug_assert!(patched, "answers to the router's parts carry its id");
    Ok(answer)
}

/// Gathers queued lookups into batches, at most
/// [`LOOKUP_BATCHES_IN_FLIGHT_MAX`] out at once.
async fn batch_lookups(router: std::sync::Weak<Router>, mut queue: mpsc::Receiver<Lookup>) {
    let in_flight = Arc::new(Semaphore::new(LOOKUP_BATCHES_IN_FLIGHT_MAX));
    while let Some(first) = queue.recv().await {
        let Ok(permit) = Arc::clone(&in_flight).acquire_owned().await else { return };
        // Everything that queued while the permit was awaited joins in.
        let mut batch = vec![first];
        while batch.len() < LOOKUP_BATCH_MAX {
            match queue.try_recv() {
                Ok(more) => batch.push(more),
                Err(_) => break,
            }
        }
        let Some(router) = router.upgrade() else { return };
        tokio::spawn(async move {
            router.send_batch(batch).await;
            drop(permit);
        });
    }
}

async fn poll_status(router: std::sync::Weak<Router>) {
    loop {
        match router.upgrade() {
            Some(router) => router.poll_once().await,
            None => return,
        }
        tokio::time::sleep(STATUS_POLL_INTERVAL).await;
    }
}

impl Handler for Router {
    async fn handle(self: Arc<Self>, body: Vec<u8>) -> Vec<u8> {
        self.serve(body).await
    }
}

/// The router's admin port (routing protocol): status with counters, and
/// cache flushes.
#[derive(Debug)]
pub struct Admin(pub Arc<Router>);

impl Handler for Admin {
    async fn handle(self: Arc<Self>, body: Vec<u8>) -> Vec<u8> {
        let (id, answer) = match routing::decode(&body) {
            Ok((id, Body::Status)) => (id, Body::StatusAnswer(self.0.status())),
            Ok((id, Body::FlushCache)) => {
                self.0.flush_cache();
                (id, Body::StatusAnswer(self.0.status()))
            }
            Ok((id, other)) => (id, Body::Error(format!("a router's admin port does not serve {other:?}"))),
            Err(e) => (0, Body::Error(format!("unreadable request: {e}"))),
        };
        routing::encode(id, &answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> TableRoute {
        TableRoute {
            name: "music".into(),
            id: 3,
            partitions: 8,
            partition_key: "artist".into(),
            sort_key: Some("song".into()),
        }
    }

    #[test]
    fn a_query_and_a_get_of_the_same_partition_key_hash_alike() {
        let artist = AttributeValue::S("Arvo".into());
        let key =
            Item::from([("artist".to_owned(), artist.clone()), ("song".to_owned(), AttributeValue::S("x".into()))]);
        let get = key_hash(&table(), &KeySource::Item(key));
        let args = ExpressionArgs { names: Vec::new(), values: vec![(":a".into(), artist.clone())] };
        let query = key_hash(&table(), &KeySource::Condition { text: "artist = :a AND song > :a".into(), args });
        assert!(get.is_some());
        assert_eq!(get, query);
        assert_eq!(get, hash_of_value("artist", &artist));
        let missing = Item::from([("song".to_owned(), AttributeValue::S("x".into()))]);
        assert_eq!(key_hash(&table(), &KeySource::Item(missing)), None, "no partition key: the node says why");
    }

    #[test]
    fn writes_and_consistent_reads_go_to_the_leader_and_conditional_writes_are_not_retried() {
        let put = Request::PutItem {
            table: "music".into(),
            item: &[],
            condition: None,
            args: ExpressionArgs::default(),
            return_values: protocol::ReturnValues::None,
        };
        // An unreadable item goes to a node, which answers why.
        assert!(matches!(classify(&put), Target::Anywhere { idempotent: false }));
        let key = Item::from([("artist".to_owned(), AttributeValue::S("a".into()))]);
        let get = |consistent_read| Request::GetItem {
            table: "music".into(),
            key: key.clone(),
            projection: None,
            args: ExpressionArgs::default(),
            consistent_read,
        };
        assert!(matches!(classify(&get(true)), Target::Keyed { leader: true, idempotent: true, .. }));
        assert!(matches!(classify(&get(false)), Target::Keyed { leader: false, idempotent: true, .. }));
        let delete = |condition: Option<String>| Request::DeleteItem {
            table: "music".into(),
            key: key.clone(),
            condition,
            args: ExpressionArgs::default(),
            return_values: protocol::ReturnValues::None,
        };
        assert!(matches!(classify(&delete(None)), Target::Keyed { leader: true, idempotent: true, .. }));
        assert!(matches!(
            classify(&delete(Some("attribute_exists(artist)".into()))),
            Target::Keyed { idempotent: false, .. }
        ));
        assert!(matches!(classify(&Request::ClusterStatus), Target::Status));
        let replace = Request::ReplaceReplica { partition: 1 << 32, remove: 1, add: 4 };
        assert!(matches!(classify(&replace), Target::Refused(_)), "only the control plane asks nodes for it");
    }
}

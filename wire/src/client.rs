//! The client library (feature `client`): an async client on tokio with a
//! pool of connections per endpoint (requests go round-robin over them; a
//! broken one is replaced on next use), each pipelining many requests
//! (matched by request id); per-request timeouts and retries with
//! exponential backoff on errors that mean "not executed, try again"
//! (throttling, unavailable, or a request that never left because its
//! connection had broken); a typed builder API; and a blocking wrapper for
//! scripts and the CLI.
//!
//! Against a cluster the client knows several endpoints. A `NotLeader`
//! answer names the leader's endpoint: the request goes there at once (up
//! to [`REDIRECTS_MAX`] times), and later requests start there. Without a
//! hint, or when an endpoint cannot be reached, the request moves on to the
//! next endpoint after the backoff.
//!
//! ```no_run
//! # async fn demo() -> Result<(), keel_wire::client::ClientError> {
//! use keel_wire::client::{Client, ClientConfig};
//! use keel_wire::item::{AttributeValue, Item};
//! let client = Client::connect(ClientConfig::new("127.0.0.1:7400")).await?;
//! let item = Item::from([("id".to_owned(), AttributeValue::S("u1".into()))]);
//! client.put_item("users", item).condition("attribute_not_exists(id)").send().await?;
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use crate::frame::{FRAME_BODY_MAX_BYTES, FrameDecoder, FrameError, encode_frame};
use crate::item::{self, AttributeValue, Item, ItemError};
use crate::protocol::{
    self, ErrorCode, ExpressionArgs, KeyKind, ProtocolError, Reply, Request, ReturnValues, TableInfo,
};
use crate::{fb, verify};

/// Leader hints followed per attempt at most (a hint that points back and
/// forth while leadership moves must not loop).
pub const REDIRECTS_MAX: u32 = 4;
/// The longest backoff between retries.
pub const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Client settings.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `host:port` of a keel-node (or, later, a router).
    pub endpoint: String,
    /// Other nodes of a cluster, tried when `endpoint` cannot answer.
    pub more_endpoints: Vec<String>,
    /// How long one attempt may take. An attempt without a reply fails
    /// with [`ClientError::Timeout`] between this and a tenth of it later
    /// (at most 100 ms later): deadlines are swept, not timed one by one.
    pub request_timeout: Duration,
    /// Retries after the first attempt, for retryable errors.
    pub retries_max: u32,
    /// First backoff; doubled on every retry.
    pub backoff_base: Duration,
    /// Requests in flight per connection at most.
    pub in_flight_max: usize,
    /// Connections in the pool.
    pub connections: usize,
}

impl ClientConfig {
    /// Defaults for `endpoint`.
    #[must_use]
    pub fn new(endpoint: impl Into<String>) -> Self {
        Self {
            endpoint: endpoint.into(),
            more_endpoints: Vec::new(),
            request_timeout: Duration::from_secs(5),
            retries_max: 3,
            backoff_base: Duration::from_millis(20),
            in_flight_max: 1024,
            connections: 2,
        }
    }

    /// Defaults for the nodes of a cluster (the first is tried first), with
    /// enough retries to ride out a leader election.
    #[must_use]
    pub fn cluster<S: Into<String>>(endpoints: impl IntoIterator<Item = S>) -> Self {
        let mut endpoints = endpoints.into_iter().map(Into::into);
        let mut config = Self::new(endpoints.next().unwrap_or_default());
        config.more_endpoints = endpoints.collect();
        config.retries_max = 12;
        config
    }
}

/// Client failures.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Could not connect.
    #[error("connect to {endpoint}: {source}")]
    Connect {
        /// The endpoint.
        endpoint: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The connection broke.
    #[error("connection lost: {0}")]
    ConnectionLost(String),
    /// No answer in time.
    #[error("request timed out after {0:?}")]
    Timeout(Duration),
    /// The server answered with an error.
    #[error("{code:?}: {message}")]
    Service {
        /// The error code.
        code: ErrorCode,
        /// The server's message.
        message: String,
    },
    /// A response or item could not be decoded.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// An item could not be decoded.
    #[error(transparent)]
    Item(#[from] ItemError),
    /// The server sent a reply of the wrong kind.
    #[error("unexpected reply: {0}")]
    Unexpected(String),
}

impl ClientError {
    /// The error code, when the server sent one.
    #[must_use]
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Self::Service { code, .. } => Some(*code),
            _ => None,
        }
    }
}

fn retryable(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::ThrottlingException | ErrorCode::ProvisionedThroughputExceeded | ErrorCode::ServiceUnavailable
    )
}

/// Why a request got no reply.
#[derive(Debug, Clone)]
enum NoReply {
    /// The connection broke (why).
    Lost(String),
    /// Its deadline passed.
    TimedOut,
}

/// A request waiting for its reply.
#[derive(Debug)]
struct Waiter {
    reply: oneshot::Sender<Result<Reply, NoReply>>,
    deadline: Instant,
}

/// A connection's requests in flight, by request id, and its sweeper.
///
/// Deadlines are kept by one sweeper task per connection instead of a
/// tokio timer registered and cancelled per request (keel-bench, closed
/// YCSB C: about 2 % less CPU per read). A request times out between its
/// deadline and one sweep later.
#[derive(Debug, Default)]
struct Pending {
    waiters: Mutex<HashMap<u64, Waiter>>,
    /// Wakes the sweeper when the first request of an idle spell arrives.
    busy: tokio::sync::Notify,
    /// Set when the connection is dropped: the sweeper ends.
    closed: std::sync::atomic::AtomicBool,
}

impl Pending {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Waiter>> {
        self.waiters.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Registers a request; its reply (or why there is none) comes on the
    /// returned receiver.
    fn wait_for(&self, id: u64, deadline: Instant) -> oneshot::Receiver<Result<Reply, NoReply>> {
        let (reply, rx) = oneshot::channel();
        let was_idle = {
            let mut waiters = self.lock();
            let was_idle = waiters.is_empty();
            waiters.insert(id, Waiter { reply, deadline });
            was_idle
        };
        if was_idle {
            self.busy.notify_one();
        }
        rx
    }

    /// Fails the waiters whose deadline has passed.
    fn expire(&self, now: Instant) {
        let expired: Vec<(u64, Waiter)> = self.lock().extract_if(|_, w| w.deadline <= now).collect();
        for (_, waiter) in expired {
            let _ = waiter.reply.send(Err(NoReply::TimedOut));
        }
    }

    /// Sweeps every `every` while requests are in flight; sleeps while none
    /// are; ends when the connection is dropped.
    async fn sweep(self: Arc<Self>, every: Duration) {
        while !self.closed.load(Ordering::Acquire) {
            if self.lock().is_empty() {
                // A request registered since the check left a permit: no
                // wake-up is lost.
                self.busy.notified().await;
                continue;
            }
            tokio::time::sleep(every).await;
            self.expire(Instant::now());
        }
    }
}

/// How often a connection's sweeper looks for requests past their deadline.
fn sweep_every(request_timeout: Duration) -> Duration {
    (request_timeout / 10).clamp(Duration::from_millis(1), Duration::from_millis(100))
}

/// One pipelined connection: a writer task fed by a channel, a reader task
/// completing waiters by request id, a sweeper failing them at their
/// deadline.
#[derive(Debug)]
struct Connection {
    frames: mpsc::Sender<Vec<u8>>,
    pending: Arc<Pending>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.pending.closed.store(true, Ordering::Release);
        self.pending.busy.notify_one();
    }
}

impl Connection {
    async fn open(config: &ClientConfig, endpoint: &str) -> Result<Self, ClientError> {
        let stream = TcpStream::connect(endpoint)
            .await
            .map_err(|source| ClientError::Connect { endpoint: endpoint.to_owned(), source })?;
        let _ = stream.set_nodelay(true);
        let (mut reader, mut writer) = stream.into_split();
        let (frames, mut outgoing) = mpsc::channel::<Vec<u8>>(config.in_flight_max.max(1));
        let pending = Arc::new(Pending::default());
        tokio::spawn(Arc::clone(&pending).sweep(sweep_every(config.request_timeout)));
        tokio::spawn(async move {
            let mut out = Vec::new();
            while let Some(frame) = outgoing.recv().await {
                // Everything queued meanwhile goes out in the same write.
                out.clear();
                out.extend_from_slice(&frame);
                while let Ok(more) = outgoing.try_recv() {
                    out.extend_from_slice(&more);
                }
                if writer.write_all(&out).await.is_err() {
                    break;
                }
            }
        });
        let replies = Arc::clone(&pending);
        tokio::spawn(async move {
            let failure = read_replies(&mut reader, &replies).await;
            // Fail everyone still waiting: the connection is gone.
            let waiting: Vec<_> = replies.lock().drain().collect();
            for (_, waiter) in waiting {
                let _ = waiter.reply.send(Err(NoReply::Lost(failure.clone())));
            }
        });
        Ok(Self { frames, pending })
    }

    fn forget(&self, id: u64) {
        self.pending.lock().remove(&id);
    }
}

/// Why one attempt failed, and whether the request may have run.
struct AttemptError {
    error: ClientError,
    sent: bool,
}

/// The connections to one endpoint.
type Pool = Vec<tokio::sync::Mutex<Option<Arc<Connection>>>>;

/// An async client over pools of pipelined connections. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Client {
    /// Pools by endpoint, opened on first use.
    pools: Arc<Mutex<HashMap<String, Arc<Pool>>>>,
    /// The endpoints known, and which one requests start at.
    endpoints: Arc<Mutex<(Vec<String>, usize)>>,
    next_slot: Arc<AtomicUsize>,
    next_id: Arc<AtomicU64>,
    config: Arc<ClientConfig>,
}

impl Client {
    /// Opens the pool's connections to the first endpoint that answers.
    pub async fn connect(config: ClientConfig) -> Result<Self, ClientError> {
        let endpoints: Vec<String> =
            std::iter::once(config.endpoint.clone()).chain(config.more_endpoints.iter().cloned()).collect();
        let client = Self {
            pools: Arc::new(Mutex::new(HashMap::new())),
            endpoints: Arc::new(Mutex::new((endpoints.clone(), 0))),
            next_slot: Arc::new(AtomicUsize::new(0)),
            next_id: Arc::new(AtomicU64::new(1)),
            config: Arc::new(config),
        };
        let mut failure = None;
        for (at, endpoint) in endpoints.iter().enumerate() {
            match client.open_all(endpoint).await {
                Ok(()) => {
                    client.prefer(at);
                    return Ok(client);
                }
                Err(e) => failure = Some(e),
            }
        }
        Err(failure.unwrap_or_else(|| ClientError::ConnectionLost("no endpoint configured".into())))
    }

    fn pool(&self, endpoint: &str) -> Arc<Pool> {
        let mut pools = self.pools.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // Every request asks: the usual answer costs no allocation.
        if let Some(pool) = pools.get(endpoint) {
            return Arc::clone(pool);
        }
        let pool = pools.entry(endpoint.to_owned()).or_insert_with(|| {
            Arc::new((0..self.config.connections.max(1)).map(|_| tokio::sync::Mutex::new(None)).collect())
        });
        Arc::clone(pool)
    }

    async fn open_all(&self, endpoint: &str) -> Result<(), ClientError> {
        for slot in self.pool(endpoint).iter() {
            let mut connection = slot.lock().await;
            if connection.as_ref().is_none_or(|c| c.frames.is_closed()) {
                *connection = Some(Arc::new(Connection::open(&self.config, endpoint).await?));
            }
        }
        Ok(())
    }

    /// The endpoint requests start at.
    fn current(&self) -> String {
        let endpoints = self.endpoints.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        endpoints.0.get(endpoints.1).cloned().unwrap_or_default()
    }

    fn prefer(&self, at: usize) {
        let mut endpoints = self.endpoints.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        endpoints.1 = at;
    }

    /// Requests start at `endpoint` from now on (learnt from a hint).
    fn prefer_endpoint(&self, endpoint: &str) -> String {
        let mut endpoints = self.endpoints.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let at = match endpoints.0.iter().position(|e| e == endpoint) {
            Some(at) => at,
            None => {
                endpoints.0.push(endpoint.to_owned());
                endpoints.0.len() - 1
            }
        };
        endpoints.1 = at;
        endpoint.to_owned()
    }

    /// Moves on from `failed` to the next endpoint (no change when another
    /// request moved on already).
    fn next_endpoint(&self, failed: &str) -> String {
        let mut endpoints = self.endpoints.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = endpoints.0.len().max(1);
        if endpoints.0.get(endpoints.1).is_some_and(|e| e == failed) {
            endpoints.1 = (endpoints.1 + 1) % count;
        }
        endpoints.0.get(endpoints.1).cloned().unwrap_or_default()
    }

    /// The next connection of an endpoint's pool, (re)opened if needed.
    async fn connection(&self, endpoint: &str) -> Result<Arc<Connection>, ClientError> {
        let pool = self.pool(endpoint);
        let slot = self.next_slot.fetch_add(1, Ordering::Relaxed) % pool.len().max(1);
        let Some(slot) = pool.get(slot) else {
            return Err(ClientError::ConnectionLost("the pool is empty".into()));
        };
        let mut connection = slot.lock().await;
        match connection.as_ref() {
            Some(open) if !open.frames.is_closed() => Ok(Arc::clone(open)),
            _ => {
                let open = Arc::new(Connection::open(&self.config, endpoint).await?);
                *connection = Some(Arc::clone(&open));
                Ok(open)
            }
        }
    }

    /// Sends a request and waits for its reply, retrying retryable errors
    /// (and requests that never left) with exponential backoff, and
    /// following leader hints (module docs). Server errors come back as
    /// [`ClientError::Service`].
    pub async fn call(&self, request: &Request<'_>) -> Result<Reply, ClientError> {
        let mut attempt = 0;
        let mut redirects = 0;
        let mut endpoint = self.current();
        loop {
            match self.call_once(&endpoint, request).await {
                Ok(Reply::Error { code: ErrorCode::NotLeader, leader_hint: Some(hint), .. })
                    if redirects < REDIRECTS_MAX && hint != endpoint =>
                {
                    redirects += 1;
                    endpoint = self.prefer_endpoint(&hint);
                    continue;
                }
                Ok(Reply::Error { code, message, .. }) => {
                    if !(retryable(code) || code == ErrorCode::NotLeader) || attempt >= self.config.retries_max {
                        return Err(ClientError::Service { code, message });
                    }
                    if code == ErrorCode::NotLeader {
                        // No leader known there (an election): try another.
                        endpoint = self.next_endpoint(&endpoint);
                    }
                }
                Ok(reply) => return Ok(reply),
                Err(AttemptError { error, sent }) => {
                    if sent || attempt >= self.config.retries_max {
                        return Err(error);
                    }
                    endpoint = self.next_endpoint(&endpoint);
                }
            }
            let backoff = self.config.backoff_base.saturating_mul(2u32.saturating_pow(attempt)).min(BACKOFF_MAX);
            tokio::time::sleep(backoff).await;
            attempt += 1;
            redirects = 0;
        }
    }

    async fn call_once(&self, endpoint: &str, request: &Request<'_>) -> Result<Reply, AttemptError> {
        let connection = self.connection(endpoint).await.map_err(|error| AttemptError { error, sent: false })?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let timeout_ms = u32::try_from(self.config.request_timeout.as_millis()).unwrap_or(u32::MAX);
        let mut frame = Vec::new();
        encode_frame(&protocol::encode_request(id, timeout_ms, request), &mut frame);
        let rx = connection.pending.wait_for(id, Instant::now() + self.config.request_timeout);
        if connection.frames.send(frame).await.is_err() {
            connection.forget(id);
            let error = ClientError::ConnectionLost("the connection's writer stopped".into());
            return Err(AttemptError { error, sent: false });
        }
        let sent = |error| AttemptError { error, sent: true };
        match rx.await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(NoReply::Lost(reason))) => Err(sent(ClientError::ConnectionLost(reason))),
            Ok(Err(NoReply::TimedOut)) => Err(sent(ClientError::Timeout(self.config.request_timeout))),
            Err(_) => Err(sent(ClientError::ConnectionLost("the connection's reader stopped".into()))),
        }
    }

    /// CreateTable.
    pub async fn create_table(
        &self,
        table: &str,
        partition_key: (&str, KeyKind),
        sort_key: Option<(&str, KeyKind)>,
        partitions: u32,
    ) -> Result<TableInfo, ClientError> {
        let request = Request::CreateTable {
            table: table.to_owned(),
            partition_key: (partition_key.0.to_owned(), partition_key.1),
            sort_key: sort_key.map(|(n, k)| (n.to_owned(), k)),
            partitions,
            placement: Vec::new(),
        };
        expect_table(self.call(&request).await?)
    }

    /// DeleteTable.
    pub async fn delete_table(&self, table: &str) -> Result<TableInfo, ClientError> {
        expect_table(self.call(&Request::DeleteTable { table: table.to_owned() }).await?)
    }

    /// DescribeTable.
    pub async fn describe_table(&self, table: &str) -> Result<TableInfo, ClientError> {
        expect_table(self.call(&Request::DescribeTable { table: table.to_owned() }).await?)
    }

    /// The answering node's view of the cluster (its members and its
    /// replicas). Sent to the endpoint requests start at, without retries
    /// elsewhere: a status is about the node that gives it.
    pub async fn cluster_status(&self) -> Result<protocol::NodeStatus, ClientError> {
        match self.call(&Request::ClusterStatus).await? {
            Reply::ClusterStatus(status) => Ok(status),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Asks the node at the endpoint requests start at, the leader of
    /// `partition`, to replace the replica on node `remove` with a log
    /// replica on node `add` (the control plane's healing). A NotLeader
    /// answer's hint is followed, like any request's.
    pub async fn replace_replica(&self, partition: u64, remove: u64, add: u64) -> Result<(), ClientError> {
        match self.call(&Request::ReplaceReplica { partition, remove, add }).await? {
            Reply::ReplicaReplaced(p) if p == partition => Ok(()),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// ListTables (one page).
    pub async fn list_tables(
        &self,
        start_after: Option<&str>,
        limit: u32,
    ) -> Result<(Vec<String>, Option<String>), ClientError> {
        match self.call(&Request::ListTables { start_after: start_after.map(str::to_owned), limit }).await? {
            Reply::TableNames { names, last } => Ok((names, last)),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// PutItem builder.
    #[must_use]
    pub fn put_item(&self, table: &str, item: Item) -> WriteBuilder<'_> {
        WriteBuilder::new(self, WriteKind::Put(item), table)
    }

    /// DeleteItem builder.
    #[must_use]
    pub fn delete_item(&self, table: &str, key: Item) -> WriteBuilder<'_> {
        WriteBuilder::new(self, WriteKind::Delete(key), table)
    }

    /// UpdateItem builder.
    #[must_use]
    pub fn update_item(&self, table: &str, key: Item, update: &str) -> WriteBuilder<'_> {
        WriteBuilder::new(self, WriteKind::Update(key, update.to_owned()), table)
    }

    /// GetItem.
    pub async fn get_item(
        &self,
        table: &str,
        key: Item,
        projection: Option<&str>,
        names: Vec<(String, String)>,
        consistent_read: bool,
    ) -> Result<Option<Item>, ClientError> {
        self.get_item_with(table, key, projection, names, consistent_read, |item| item.map(item::from_fb).transpose())
            .await?
            .map_err(ClientError::from)
    }

    /// GetItem without building an [`Item`]: `f` gets the item as the
    /// verified FlatBuffers table, borrowed from the response (the
    /// zero-copy read; attribute names and values are read in place).
    pub async fn get_item_with<R>(
        &self,
        table: &str,
        key: Item,
        projection: Option<&str>,
        names: Vec<(String, String)>,
        consistent_read: bool,
        f: impl FnOnce(Option<fb::Item<'_>>) -> R,
    ) -> Result<R, ClientError> {
        let request = Request::GetItem {
            table: table.to_owned(),
            key,
            projection: projection.map(str::to_owned),
            args: ExpressionArgs { names, values: Vec::new() },
            consistent_read,
        };
        match self.call(&request).await? {
            Reply::Item(None) => Ok(f(None)),
            Reply::Item(Some(bytes)) => Ok(f(Some(verify::item(&bytes).map_err(ItemError::from)?))),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Query or Scan (one page); `request` must be one of them.
    pub async fn page(&self, request: &Request<'_>) -> Result<ItemsPage, ClientError> {
        let mut items = Vec::new();
        let summary = self
            .page_with(request, |found| {
                items.push(item::from_fb(found)?);
                Ok(())
            })
            .await?;
        Ok(ItemsPage { items, scanned_count: summary.scanned_count, last_evaluated_key: summary.last_evaluated_key })
    }

    /// Query or Scan (one page) read in place: each item is verified, then
    /// lent to `each` as the FlatBuffers table, borrowed from the reply, in
    /// the page's order. The first error `each` returns ends the page.
    pub async fn page_with(
        &self,
        request: &Request<'_>,
        mut each: impl FnMut(fb::Item<'_>) -> Result<(), ItemError>,
    ) -> Result<PageSummary, ClientError> {
        match self.call(request).await? {
            Reply::Page { items, scanned_count, last_evaluated_key } => {
                for bytes in &items {
                    each(verify::item(bytes).map_err(ItemError::from)?)?;
                }
                Ok(PageSummary { count: items.len(), scanned_count, last_evaluated_key })
            }
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }
}

/// What [`Client::page_with`] tells besides the items it lent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageSummary {
    /// Items in the page.
    pub count: usize,
    /// Items read before filtering.
    pub scanned_count: u32,
    /// Where the next page starts.
    pub last_evaluated_key: Option<Item>,
}

/// One page of decoded items.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemsPage {
    /// Items.
    pub items: Vec<Item>,
    /// Items read before filtering.
    pub scanned_count: u32,
    /// Where the next page starts.
    pub last_evaluated_key: Option<Item>,
}

fn expect_table(reply: Reply) -> Result<TableInfo, ClientError> {
    match reply {
        Reply::Table(info) => Ok(info),
        other => Err(ClientError::Unexpected(format!("{other:?}"))),
    }
}

async fn read_replies(reader: &mut tokio::net::tcp::OwnedReadHalf, pending: &Pending) -> String {
    let decoder = FrameDecoder::new(FRAME_BODY_MAX_BYTES);
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let mut consumed = 0;
        loop {
            let rest = buf.get(consumed..).unwrap_or(&[]);
            match decoder.decode(rest) {
                Ok(Some(span)) => {
                    let decoded = protocol::decode_response(rest.get(span.body_start..span.end).unwrap_or(&[]));
                    consumed += span.end;
                    match decoded {
                        Ok((id, reply)) => {
                            let waiter = pending.lock().remove(&id);
                            if let Some(waiter) = waiter {
                                let _ = waiter.reply.send(Ok(reply));
                            }
                        }
                        Err(e) => return format!("undecodable response: {e}"),
                    }
                }
                Ok(None) => break,
                Err(e) => return describe_frame_error(&e),
            }
        }
        buf.drain(..consumed);
        match reader.read(&mut chunk).await {
            Ok(0) => return "the server closed the connection".to_owned(),
            Ok(n) => buf.extend_from_slice(chunk.get(..n).unwrap_or(&[])),
            Err(e) => return format!("read failed: {e}"),
        }
    }
}

fn describe_frame_error(e: &FrameError) -> String {
    format!("bad frame from the server: {e}")
}

#[derive(Debug)]
enum WriteKind {
    Put(Item),
    Delete(Item),
    Update(Item, String),
}

/// Builder for PutItem, DeleteItem and UpdateItem.
#[derive(Debug)]
pub struct WriteBuilder<'c> {
    client: &'c Client,
    table: String,
    kind: WriteKind,
    condition: Option<String>,
    args: ExpressionArgs,
    return_values: ReturnValues,
}

impl<'c> WriteBuilder<'c> {
    fn new(client: &'c Client, kind: WriteKind, table: &str) -> Self {
        Self {
            client,
            table: table.to_owned(),
            kind,
            condition: None,
            args: ExpressionArgs::default(),
            return_values: ReturnValues::None,
        }
    }

    /// ConditionExpression.
    #[must_use]
    pub fn condition(mut self, expression: &str) -> Self {
        self.condition = Some(expression.to_owned());
        self
    }

    /// An ExpressionAttributeNames entry (`#n` → name).
    #[must_use]
    pub fn name(mut self, placeholder: &str, name: &str) -> Self {
        self.args.names.push((placeholder.to_owned(), name.to_owned()));
        self
    }

    /// An ExpressionAttributeValues entry (`:v` → value).
    #[must_use]
    pub fn value(mut self, placeholder: &str, value: AttributeValue) -> Self {
        self.args.values.push((placeholder.to_owned(), value));
        self
    }

    /// ReturnValues.
    #[must_use]
    pub fn return_values(mut self, return_values: ReturnValues) -> Self {
        self.return_values = return_values;
        self
    }

    /// Sends the write; returns the attributes ReturnValues asked for.
    pub async fn send(self) -> Result<Option<Item>, ClientError> {
        let Self { client, table, kind, condition, args, return_values } = self;
        let bytes;
        let request = match kind {
            WriteKind::Put(item) => {
                bytes = item::encode(&item);
                Request::PutItem { table, item: &bytes, condition, args, return_values }
            }
            WriteKind::Delete(key) => Request::DeleteItem { table, key, condition, args, return_values },
            WriteKind::Update(key, update) => {
                Request::UpdateItem { table, key, update, condition, args, return_values }
            }
        };
        match client.call(&request).await? {
            Reply::Item(bytes) => Ok(bytes.map(|b| item::decode(&b)).transpose()?),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }
}

/// A blocking wrapper: its own single-threaded tokio runtime.
#[derive(Debug)]
pub struct BlockingClient {
    runtime: tokio::runtime::Runtime,
    client: Client,
}

impl BlockingClient {
    /// Connects.
    pub fn connect(config: ClientConfig) -> Result<Self, ClientError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ClientError::Connect { endpoint: config.endpoint.clone(), source: e })?;
        let client = runtime.block_on(Client::connect(config))?;
        Ok(Self { runtime, client })
    }

    /// Runs `f` with the async client to completion.
    pub fn run<T>(&self, f: impl AsyncFnOnce(&Client) -> T) -> T {
        self.runtime.block_on(f(&self.client))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_request_without_a_reply_times_out_and_leaves_nothing_behind() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let endpoint = listener.local_addr().expect("address").to_string();
        // A server that reads everything and never answers.
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("accept");
            let mut sink = vec![0u8; 4096];
            while matches!(socket.read(&mut sink).await, Ok(n) if n > 0) {}
        });
        let timeout = Duration::from_millis(50);
        let mut config = ClientConfig::new(endpoint.clone());
        config.request_timeout = timeout;
        config.retries_max = 0;
        config.connections = 1;
        let client = Client::connect(config).await.expect("connect");
        // The guard turns a sweeper that never fires into a failure, not a hang.
        let answers = tokio::time::timeout(Duration::from_secs(30), async {
            tokio::join!(client.describe_table("a"), client.describe_table("b"))
        })
        .await
        .expect("the sweeper fails requests past their deadline");
        for answer in [answers.0, answers.1] {
            assert!(matches!(answer, Err(ClientError::Timeout(d)) if d == timeout), "{answer:?}");
        }
        let connection = client.connection(&endpoint).await.expect("connection");
        assert!(connection.pending.lock().is_empty(), "timed-out requests are forgotten");
        // The connection still works for the next request, which times out too.
        let again = tokio::time::timeout(Duration::from_secs(30), client.describe_table("c")).await.expect("answered");
        assert!(matches!(again, Err(ClientError::Timeout(_))), "{again:?}");
    }

    #[test]
    fn the_sweep_interval_follows_the_timeout_within_bounds() {
        assert_eq!(sweep_every(Duration::from_secs(5)), Duration::from_millis(100));
        assert_eq!(sweep_every(Duration::from_millis(50)), Duration::from_millis(5));
        assert_eq!(sweep_every(Duration::from_micros(10)), Duration::from_millis(1));
    }
}

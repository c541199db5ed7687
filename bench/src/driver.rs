//! Drivers: how a workload's operations reach a database. One per target
//! (Keel's binary protocol, Redis's RESP); a DynamoDB-API driver is one
//! more implementation of [`Driver`].

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use keel_wire::client::{Client, ClientConfig, ClientError};
use keel_wire::item::{AttributeValue, Item};
use keel_wire::protocol::{ErrorCode, ExpressionArgs, KeyKind, Request};

/// A record's fields.
pub type Fields = Vec<(String, String)>;

/// A failed operation: its type (for "errors by type") and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpError {
    /// Error type, e.g. `ConditionalCheckFailedException`, `Timeout`, `NotFound`.
    pub kind: String,
    /// Detail.
    pub message: String,
}

impl OpError {
    fn new(kind: impl Into<String>, message: impl Into<String>) -> Self {
        Self { kind: kind.into(), message: message.into() }
    }
}

/// A database under test. Cheap to clone; shared by all client tasks.
pub trait Driver: Clone + Send + Sync + 'static {
    /// Target name (`keel`, `redis`).
    fn name(&self) -> &'static str;
    /// Inserts a whole record.
    fn insert(&self, key: &str, fields: &Fields) -> impl Future<Output = Result<(), OpError>> + Send;
    /// Reads a whole record; returns its field count.
    fn read(&self, key: &str) -> impl Future<Output = Result<usize, OpError>> + Send;
    /// Writes one field of a record.
    fn update(&self, key: &str, field: &str, value: &str) -> impl Future<Output = Result<(), OpError>> + Send;
    /// Reads up to `count` records starting at `start`; returns how many.
    fn scan(&self, start: &str, count: usize) -> impl Future<Output = Result<usize, OpError>> + Send;
    /// A driver of the same target with connections of its own, made on
    /// the calling thread's event loop: each thread of a generator with
    /// `--generator-threads` drives its clients through its own, so that no
    /// request or reply crosses threads.
    fn fork(&self) -> impl Future<Output = anyhow::Result<Self>>;
}

/// Keel through `keel_wire::client`: table `usertable`, partition key
/// `ycsb_key`.
#[derive(Debug, Clone)]
pub struct KeelDriver {
    client: Client,
    endpoint: String,
    connections: usize,
}

/// The table the Keel driver uses.
pub const KEEL_TABLE: &str = "usertable";
const KEEL_KEY: &str = "ycsb_key";

fn client_error(e: ClientError) -> OpError {
    match e {
        ClientError::Service { code, message } => OpError::new(format!("{code:?}"), message),
        ClientError::Timeout(d) => OpError::new("Timeout", format!("{d:?}")),
        ClientError::ConnectionLost(m) => OpError::new("ConnectionLost", m),
        other => OpError::new("ClientError", other.to_string()),
    }
}

/// The client settings for `endpoint`: one node, or the comma-separated
/// nodes of a cluster (following leader hints, retrying what a leader
/// change refuses).
#[must_use]
pub fn client_config(endpoint: &str) -> ClientConfig {
    let endpoints: Vec<&str> = endpoint.split(',').map(str::trim).filter(|e| !e.is_empty()).collect();
    if endpoints.len() > 1 { ClientConfig::cluster(endpoints) } else { ClientConfig::new(endpoint) }
}

fn keel_key(key: &str) -> Item {
    Item::from([(KEEL_KEY.to_owned(), AttributeValue::S(key.to_owned()))])
}

impl KeelDriver {
    /// Connects (`connections` pipelined connections) and creates the table
    /// with `partitions` partitions if it does not exist.
    /// `endpoint` may name several nodes of a cluster, comma-separated
    /// (requests follow the leaders' hints).
    pub async fn connect(endpoint: &str, connections: usize, partitions: u32) -> anyhow::Result<Self> {
        let driver = Self::open(endpoint, connections).await?;
        match driver.client.create_table(KEEL_TABLE, (KEEL_KEY, KeyKind::S), None, partitions).await {
            Ok(_) => {}
            Err(e) if e.code() == Some(ErrorCode::ResourceInUseException) => {}
            Err(e) => return Err(e.into()),
        }
        Ok(driver)
    }

    async fn open(endpoint: &str, connections: usize) -> anyhow::Result<Self> {
        let mut config = client_config(endpoint);
        config.connections = connections.max(1);
        if !endpoint.contains(',') {
            config.retries_max = 0; // errors are counted, not hidden
        }
        let client = Client::connect(config).await?;
        Ok(Self { client, endpoint: endpoint.to_owned(), connections })
    }
}

impl Driver for KeelDriver {
    fn name(&self) -> &'static str {
        "keel"
    }

    async fn insert(&self, key: &str, fields: &Fields) -> Result<(), OpError> {
        let mut item = keel_key(key);
        item.extend(fields.iter().map(|(f, v)| (f.clone(), AttributeValue::S(v.clone()))));
        self.client.put_item(KEEL_TABLE, item).send().await.map(|_| ()).map_err(client_error)
    }

    async fn read(&self, key: &str) -> Result<usize, OpError> {
        // Verified, then counted in place: no map is built (nor by the
        // Redis driver), so the generator's cost is the client's own.
        let count = |item: Option<keel_wire::fb::Item<'_>>| item.map(|item| item.attributes().len());
        match self.client.get_item_with(KEEL_TABLE, keel_key(key), None, Vec::new(), false, count).await {
            Ok(Some(attributes)) => Ok(attributes.saturating_sub(1)),
            Ok(None) => Err(OpError::new("NotFound", key)),
            Err(e) => Err(client_error(e)),
        }
    }

    async fn update(&self, key: &str, field: &str, value: &str) -> Result<(), OpError> {
        self.client
            .update_item(KEEL_TABLE, keel_key(key), "SET #f = :v")
            .name("#f", field)
            .value(":v", AttributeValue::S(value.to_owned()))
            .send()
            .await
            .map(|_| ())
            .map_err(client_error)
    }

    async fn scan(&self, start: &str, count: usize) -> Result<usize, OpError> {
        let request = Request::Scan {
            table: KEEL_TABLE.into(),
            filter: None,
            projection: None,
            args: ExpressionArgs::default(),
            limit: u32::try_from(count).unwrap_or(u32::MAX),
            exclusive_start_key: Some(keel_key(start)),
            segment: 0,
            total_segments: 0,
            consistent_read: false,
        };
        // Verified and counted in place, as `read` does (and the Redis
        // driver): no maps are built.
        self.client.page_with(&request, |_| Ok(())).await.map(|page| page.count).map_err(client_error)
    }

    async fn fork(&self) -> anyhow::Result<Self> {
        Self::open(&self.endpoint, self.connections).await
    }
}

/// Redis through RESP, as YCSB's Redis binding stores records: a hash per
/// record and a sorted set `_indices` of keys scored by their string hash
/// (for scans). A pool of multiplexed (pipelined) connections.
#[derive(Clone)]
pub struct RedisDriver {
    connections: Arc<Vec<redis::aio::MultiplexedConnection>>,
    next: Arc<AtomicUsize>,
    endpoint: String,
}

impl std::fmt::Debug for RedisDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisDriver").field("connections", &self.connections.len()).finish()
    }
}

const REDIS_INDEX: &str = "_indices";

/// Java's `String.hashCode`, which YCSB's Redis binding uses as the score.
fn java_string_hash(s: &str) -> i32 {
    s.encode_utf16().fold(0i32, |h, c| h.wrapping_mul(31).wrapping_add(i32::from(c)))
}

fn redis_error(e: &redis::RedisError) -> OpError {
    let kind = match e.kind() {
        redis::ErrorKind::IoError => "IoError".to_owned(),
        other => format!("{other:?}"),
    };
    OpError::new(kind, e.to_string())
}

/// The field count of an HGETALL reply: a flat array of names and values
/// (RESP2) or a map (RESP3).
fn hash_fields(reply: &redis::Value) -> Result<usize, OpError> {
    match reply {
        redis::Value::Array(values) if values.len() % 2 == 0 => Ok(values.len() / 2),
        redis::Value::Map(pairs) => Ok(pairs.len()),
        other => Err(OpError::new("UnexpectedReply", format!("HGETALL answered {other:?}"))),
    }
}

impl RedisDriver {
    /// Connects `connections` multiplexed connections to `endpoint` (host:port).
    pub async fn connect(endpoint: &str, connections: usize) -> anyhow::Result<Self> {
        let client = redis::Client::open(format!("redis://{endpoint}/"))?;
        let mut pool = Vec::new();
        for _ in 0..connections.max(1) {
            pool.push(client.get_multiplexed_tokio_connection().await?);
        }
        Ok(Self { connections: Arc::new(pool), next: Arc::new(AtomicUsize::new(0)), endpoint: endpoint.to_owned() })
    }

    fn connection(&self) -> redis::aio::MultiplexedConnection {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.connections.len().max(1);
        // The pool is never empty (connect opens at least one).
        self.connections.get(i).or_else(|| self.connections.first()).cloned().expect("a connection")
    }
}

impl Driver for RedisDriver {
    fn name(&self) -> &'static str {
        "redis"
    }

    async fn insert(&self, key: &str, fields: &Fields) -> Result<(), OpError> {
        let mut pipe = redis::pipe();
        pipe.hset_multiple(key, fields).ignore().zadd(REDIS_INDEX, key, java_string_hash(key)).ignore();
        let mut connection = self.connection();
        pipe.query_async::<()>(&mut connection).await.map_err(|e| redis_error(&e))
    }

    async fn read(&self, key: &str) -> Result<usize, OpError> {
        let mut connection = self.connection();
        // Parsed by the client library, then counted as it stands: no map
        // (nor strings) built, as in the Keel driver.
        let reply: redis::Value =
            redis::cmd("HGETALL").arg(key).query_async(&mut connection).await.map_err(|e| redis_error(&e))?;
        let fields = hash_fields(&reply)?;
        if fields == 0 { Err(OpError::new("NotFound", key)) } else { Ok(fields) }
    }

    async fn update(&self, key: &str, field: &str, value: &str) -> Result<(), OpError> {
        let mut connection = self.connection();
        redis::cmd("HSET")
            .arg(key)
            .arg(field)
            .arg(value)
            .query_async::<()>(&mut connection)
            .await
            .map_err(|e| redis_error(&e))
    }

    async fn scan(&self, start: &str, count: usize) -> Result<usize, OpError> {
        let mut connection = self.connection();
        let keys: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(REDIS_INDEX)
            .arg(java_string_hash(start))
            .arg("+inf")
            .arg("LIMIT")
            .arg(0)
            .arg(count)
            .query_async(&mut connection)
            .await
            .map_err(|e| redis_error(&e))?;
        let mut pipe = redis::pipe();
        for key in &keys {
            pipe.cmd("HGETALL").arg(key);
        }
        // Parsed, each reply's shape checked, and counted: no strings
        // built, as in the Keel driver.
        let records: Vec<redis::Value> = pipe.query_async(&mut connection).await.map_err(|e| redis_error(&e))?;
        for record in &records {
            hash_fields(record)?;
        }
        Ok(records.len())
    }

    async fn fork(&self) -> anyhow::Result<Self> {
        Self::connect(&self.endpoint, self.connections.len()).await
    }
}

/// An in-memory driver (for tests of the runner and the result files).
#[derive(Debug, Clone, Default)]
pub struct MemoryDriver {
    records: Arc<std::sync::Mutex<std::collections::BTreeMap<String, Fields>>>,
}

impl Driver for MemoryDriver {
    fn name(&self) -> &'static str {
        "memory"
    }

    async fn insert(&self, key: &str, fields: &Fields) -> Result<(), OpError> {
        let mut records = self.records.lock().map_err(|e| OpError::new("Poisoned", e.to_string()))?;
        records.insert(key.to_owned(), fields.clone());
        Ok(())
    }

    async fn read(&self, key: &str) -> Result<usize, OpError> {
        let records = self.records.lock().map_err(|e| OpError::new("Poisoned", e.to_string()))?;
        records.get(key).map(Vec::len).ok_or_else(|| OpError::new("NotFound", key))
    }

    async fn update(&self, key: &str, field: &str, value: &str) -> Result<(), OpError> {
        let mut records = self.records.lock().map_err(|e| OpError::new("Poisoned", e.to_string()))?;
        let record = records.get_mut(key).ok_or_else(|| OpError::new("NotFound", key))?;
        match record.iter_mut().find(|(f, _)| f == field) {
            Some((_, v)) => value.clone_into(v),
            None => record.push((field.to_owned(), value.to_owned())),
        }
        Ok(())
    }

    async fn scan(&self, start: &str, count: usize) -> Result<usize, OpError> {
        let records = self.records.lock().map_err(|e| OpError::new("Poisoned", e.to_string()))?;
        Ok(records.range(start.to_owned()..).take(count).count())
    }

    /// The same records: a fork is a second handle on them.
    async fn fork(&self) -> anyhow::Result<Self> {
        Ok(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> redis::Value {
        redis::Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn an_hgetall_reply_counts_its_fields_in_either_protocol() {
        let resp2 = redis::Value::Array(vec![bulk("field0"), bulk("a"), bulk("field1"), bulk("b")]);
        assert_eq!(hash_fields(&resp2), Ok(2));
        let resp3 = redis::Value::Map(vec![(bulk("field0"), bulk("a"))]);
        assert_eq!(hash_fields(&resp3), Ok(1));
        assert_eq!(hash_fields(&redis::Value::Array(Vec::new())), Ok(0));
        // A name without its value, or another type, is an error by type.
        let odd = redis::Value::Array(vec![bulk("field0")]);
        assert_eq!(hash_fields(&odd).map_err(|e| e.kind), Err("UnexpectedReply".to_owned()));
        assert_eq!(hash_fields(&redis::Value::Nil).map_err(|e| e.kind), Err("UnexpectedReply".to_owned()));
    }
}

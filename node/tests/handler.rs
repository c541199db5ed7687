//! The protocol edge: encoded requests in, encoded responses out, through
//! the engine on the simulated disk.

use futures_lite::future::block_on;
use keel_node::engine::Engine;
use keel_node::handler;
use keel_node::io::sim::SimDisk;
use keel_node::replica::{ShardStore, StoreConfig};
use keel_node::wal::WalConfig;
use keel_wire::item::{self, AttributeValue};
use keel_wire::protocol::{self, ErrorCode, ExpressionArgs, KeyKind, Reply, Request, ReturnValues};
use serde_json::json;

struct Server {
    engine: Engine<SimDisk>,
    next_id: u64,
}

impl Server {
    fn new() -> Self {
        let mut config = StoreConfig::new("/keel");
        config.wal = WalConfig { segment_size_bytes: 4 * 1024 * 1024, ..WalConfig::default() };
        let engine = block_on(async {
            Engine::open(ShardStore::open(SimDisk::new(7), config).await.expect("store")).await.expect("engine")
        });
        Self { engine, next_id: 1 }
    }

    /// Sends one request through encode → handle → decode; checks the id.
    fn call(&mut self, request: &Request<'_>) -> Reply {
        self.next_id += 1;
        let body = protocol::encode_request(self.next_id, 0, request);
        let response = block_on(handler::handle(&mut self.engine, &body, 1_000));
        let (id, reply) = protocol::decode_response(&response).expect("valid response");
        assert_eq!(id, self.next_id, "the response carries the request id");
        reply
    }
}

fn args(values: &[(&str, AttributeValue)]) -> ExpressionArgs {
    ExpressionArgs { names: Vec::new(), values: values.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect() }
}

fn error_code(reply: &Reply) -> Option<ErrorCode> {
    match reply {
        Reply::Error { code, .. } => Some(*code),
        _ => None,
    }
}

#[test]
fn requests_round_trip_through_the_protocol_edge() {
    let mut server = Server::new();
    let create = Request::CreateTable {
        table: "users".into(),
        partition_key: ("id".into(), KeyKind::S),
        sort_key: None,
        partitions: 2,
    };
    assert!(matches!(server.call(&create), Reply::Table(t) if t.name == "users" && t.partitions == 2));
    assert_eq!(error_code(&server.call(&create)), Some(ErrorCode::ResourceInUseException));

    let bytes =
        item::encode(&item::from_json(&json!({"id": {"S": "u1"}, "n": {"N": "1"}, "x": {"S": "y"}})).expect("item"));
    let put = |condition: Option<&str>| Request::PutItem {
        table: "users".into(),
        item: &bytes,
        condition: condition.map(str::to_owned),
        args: ExpressionArgs::default(),
        return_values: ReturnValues::AllOld,
    };
    assert_eq!(server.call(&put(Some("attribute_not_exists(id)"))), Reply::Item(None));
    assert_eq!(
        error_code(&server.call(&put(Some("attribute_not_exists(id)")))),
        Some(ErrorCode::ConditionalCheckFailedException)
    );

    let key = item::from_json(&json!({"id": {"S": "u1"}})).expect("key");
    let get = |projection: Option<&str>| Request::GetItem {
        table: "users".into(),
        key: key.clone(),
        projection: projection.map(str::to_owned),
        args: ExpressionArgs::default(),
        consistent_read: true,
    };
    assert_eq!(server.call(&get(None)), Reply::Item(Some(bytes.clone())), "GetItem answers with the stored bytes");
    let Reply::Item(Some(projected)) = server.call(&get(Some("n"))) else { panic!("projected item") };
    assert_eq!(item::to_json(&item::decode(&projected).expect("valid")), json!({"n": {"N": "1"}}));

    let update = Request::UpdateItem {
        table: "users".into(),
        key: key.clone(),
        update: "SET n = n + :one".into(),
        condition: Some("n = :one".into()),
        args: args(&[(":one", AttributeValue::N("1".into()))]),
        return_values: ReturnValues::AllNew,
    };
    let Reply::Item(Some(new)) = server.call(&update) else { panic!("updated item") };
    assert_eq!(item::decode(&new).expect("valid").get("n"), Some(&AttributeValue::N("2".into())));
    assert_eq!(error_code(&server.call(&update)), Some(ErrorCode::ConditionalCheckFailedException));

    let query = Request::Query {
        table: "users".into(),
        key_condition: "id = :id".into(),
        filter: None,
        projection: None,
        args: args(&[(":id", AttributeValue::S("u1".into()))]),
        limit: 0,
        exclusive_start_key: None,
        forward: true,
    };
    assert!(
        matches!(server.call(&query), Reply::Page { items, scanned_count: 1, last_evaluated_key: None } if items.len() == 1)
    );

    let unused = Request::DeleteItem {
        table: "users".into(),
        key: key.clone(),
        condition: None,
        args: args(&[(":unused", AttributeValue::Null)]),
        return_values: ReturnValues::None,
    };
    assert_eq!(error_code(&server.call(&unused)), Some(ErrorCode::ValidationException));
    let missing = Request::DescribeTable { table: "nope".into() };
    assert_eq!(error_code(&server.call(&missing)), Some(ErrorCode::ResourceNotFoundException));
    assert!(
        matches!(server.call(&Request::ListTables { start_after: None, limit: 0 }), Reply::TableNames { names, .. } if names == ["users"])
    );
}

#[test]
fn garbage_requests_get_a_validation_error() {
    let mut server = Server::new();
    let response = block_on(handler::handle(&mut server.engine, b"definitely not a flatbuffer", 0));
    let (id, reply) = protocol::decode_response(&response).expect("a valid error response");
    assert_eq!(id, 0);
    assert_eq!(error_code(&reply), Some(ErrorCode::ValidationException));
}

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
        placement: Vec::new(),
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
    let updated_old = Request::UpdateItem {
        table: "users".into(),
        key: key.clone(),
        update: "SET n = n + :one".into(),
        condition: None,
        args: args(&[(":one", AttributeValue::N("1".into()))]),
        return_values: ReturnValues::UpdatedOld,
    };
    let Reply::Item(Some(old)) = server.call(&updated_old) else { panic!("updated attributes") };
    assert_eq!(item::to_json(&item::decode(&old).expect("valid")), json!({"n": {"N": "2"}}), "only n, before");
    assert_eq!(error_code(&server.call(&update)), Some(ErrorCode::ConditionalCheckFailedException));

    // A same-length SET is rewritten in place: ALL_OLD still answers with
    // the item as it was, NONE with nothing, and the item reads as written.
    let set_x = |value: &str, return_values| Request::UpdateItem {
        table: "users".into(),
        key: key.clone(),
        update: "SET x = :x".into(),
        condition: None,
        args: args(&[(":x", AttributeValue::S(value.into()))]),
        return_values,
    };
    let Reply::Item(Some(old)) = server.call(&set_x("z", ReturnValues::AllOld)) else { panic!("the old item") };
    assert_eq!(item::decode(&old).expect("valid").get("x"), Some(&AttributeValue::S("y".into())));
    assert_eq!(server.call(&set_x("w", ReturnValues::None)), Reply::Item(None));
    let Reply::Item(Some(now)) = server.call(&get(None)) else { panic!("the item") };
    assert_eq!(item::decode(&now).expect("valid").get("x"), Some(&AttributeValue::S("w".into())));

    let query = Request::Query {
        table: "users".into(),
        key_condition: "id = :id".into(),
        filter: None,
        projection: None,
        args: args(&[(":id", AttributeValue::S("u1".into()))]),
        limit: 0,
        exclusive_start_key: None,
        forward: true,
        consistent_read: false,
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

#[test]
fn batch_writes_and_reads_span_tables_and_respect_limits() {
    use keel_wire::protocol::{BatchGetTable, BatchWrite};
    let mut server = Server::new();
    for table in ["alpha", "beta"] {
        let create = Request::CreateTable {
            table: table.into(),
            partition_key: ("id".into(), KeyKind::S),
            sort_key: None,
            partitions: 2,
            placement: Vec::new(),
        };
        assert!(matches!(server.call(&create), Reply::Table(_)));
    }
    let items: Vec<Vec<u8>> = (0..10)
        .map(|i| {
            item::encode(
                &item::from_json(&json!({"id": {"S": format!("k{i}")}, "v": {"N": i.to_string()}})).expect("item"),
            )
        })
        .collect();
    let writes: Vec<BatchWrite<'_>> = items.iter().map(|b| BatchWrite::Put(b)).collect();
    let batch = Request::BatchWriteItem {
        tables: vec![("alpha".into(), writes.clone()), ("beta".into(), writes.get(..3).unwrap_or(&[]).to_vec())],
    };
    assert_eq!(server.call(&batch), Reply::BatchWrite);
    let delete = Request::BatchWriteItem {
        tables: vec![(
            "alpha".into(),
            vec![BatchWrite::Delete(item::from_json(&json!({"id": {"S": "k0"}})).expect("key"))],
        )],
    };
    assert_eq!(server.call(&delete), Reply::BatchWrite);
    let key = |i: u32| item::from_json(&json!({"id": {"S": format!("k{i}")}})).expect("key");
    let get = Request::BatchGetItem {
        tables: vec![
            BatchGetTable {
                table: "alpha".into(),
                keys: vec![key(0), key(1), key(9)],
                projection: None,
                args: ExpressionArgs::default(),
                consistent_read: false,
            },
            BatchGetTable {
                table: "beta".into(),
                keys: vec![key(2), key(5)],
                projection: Some("v".into()),
                args: ExpressionArgs::default(),
                consistent_read: false,
            },
        ],
    };
    let Reply::BatchGet(tables) = server.call(&get) else { panic!("batch get reply") };
    assert_eq!(tables.len(), 2);
    assert_eq!(tables.first().map(|(_, items)| items.len()), Some(2), "k0 was deleted");
    let beta = tables.get(1).expect("beta");
    assert_eq!(beta.1.len(), 1, "k5 was never written to beta");
    assert_eq!(item::to_json(&item::decode(beta.1.first().expect("k2")).expect("valid")), json!({"v": {"N": "2"}}));
    let twice = Request::BatchWriteItem {
        tables: vec![(
            "beta".into(),
            vec![writes.first().cloned().expect("one"), writes.first().cloned().expect("one")],
        )],
    };
    assert_eq!(error_code(&server.call(&twice)), Some(ErrorCode::ValidationException), "duplicate keys");
    let too_many: Vec<BatchWrite<'_>> = std::iter::repeat_n(writes.first().cloned().expect("one"), 26).collect();
    let over = Request::BatchWriteItem { tables: vec![("alpha".into(), too_many)] };
    assert_eq!(error_code(&server.call(&over)), Some(ErrorCode::ValidationException));
}

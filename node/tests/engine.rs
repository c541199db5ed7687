//! The standalone engine: catalog, item operations with conditions and
//! updates, Query and Scan with pagination, durability across a crash.

#![allow(clippy::cast_possible_truncation, clippy::indexing_slicing)]

use futures_lite::future::block_on;
use keel_node::engine::{Engine, EngineError, KeyDef, KeyType};
use keel_node::io::sim::SimDisk;
use keel_node::replica::{ShardStore, StoreConfig};
use keel_node::wal::WalConfig;
use keel_wire::expr::{self, Placeholders};
use keel_wire::item::{self, AttributeValue, Item};
use serde_json::json;

fn config() -> StoreConfig {
    let mut config = StoreConfig::new("/keel");
    config.wal = WalConfig { segment_size_bytes: 4 * 1024 * 1024, ..WalConfig::default() };
    config
}

fn open(disk: &SimDisk) -> Engine<SimDisk> {
    block_on(async {
        let store = ShardStore::open(disk.clone(), config()).await.expect("store opens");
        Engine::open(store).await.expect("engine opens")
    })
}

fn key(name: &str, key_type: KeyType) -> KeyDef {
    KeyDef { name: name.to_owned(), key_type }
}

fn item(json: serde_json::Value) -> Item {
    item::from_json(&json).expect("valid DynamoDB JSON")
}

fn condition(text: &str, values: &[(String, AttributeValue)]) -> expr::Condition {
    let mut placeholders = Placeholders::new(&[], values);
    expr::parse_condition(text, &mut placeholders).expect("valid condition")
}

fn orders(disk: &SimDisk) -> Engine<SimDisk> {
    let mut engine = open(disk);
    block_on(engine.create_table("orders", key("customer", KeyType::S), Some(key("n", KeyType::N)), 3, 1))
        .expect("create");
    for c in ["alice", "bob"] {
        for n in 0..30 {
            let it =
                item(json!({"customer": {"S": c}, "n": {"N": n.to_string()}, "total": {"N": (n * 10).to_string()}}));
            block_on(engine.put_item("orders", &item::encode(&it), None, false)).expect("put");
        }
    }
    engine
}

fn numbers(page: &keel_node::engine::Page) -> Vec<i64> {
    page.items
        .iter()
        .map(|b| match item::decode(b).expect("stored item").get("n") {
            Some(AttributeValue::N(n)) => n.parse().expect("integer"),
            _ => panic!("no n"),
        })
        .collect()
}

#[test]
fn catalog_survives_a_crash_and_rejects_bad_requests() {
    let disk = SimDisk::new(1);
    let mut engine = open(&disk);
    let def = block_on(engine.create_table("users", key("id", KeyType::S), None, 0, 42)).expect("create");
    assert_eq!(def.partitions, 4);
    assert!(matches!(
        block_on(engine.create_table("users", key("id", KeyType::S), None, 0, 42)),
        Err(EngineError::ResourceInUse(_))
    ));
    assert!(matches!(
        block_on(engine.create_table("x", key("id", KeyType::S), None, 0, 42)),
        Err(EngineError::Validation(_))
    ));
    block_on(engine.create_table("zeta", key("k", KeyType::N), Some(key("s", KeyType::B)), 2, 43)).expect("create");
    let bytes = item::encode(&item(json!({"id": {"S": "u1"}, "name": {"S": "Ada"}})));
    block_on(engine.put_item("users", &bytes, None, false)).expect("put");
    drop(engine);
    disk.crash();
    let mut engine = open(&disk);
    assert_eq!(engine.list_tables(None, 0), (vec!["users".to_owned(), "zeta".to_owned()], None));
    assert_eq!(engine.list_tables(None, 1), (vec!["users".to_owned()], Some("users".to_owned())));
    assert_eq!(engine.describe_table("zeta").expect("exists").sort_key, Some(key("s", KeyType::B)));
    let got = block_on(engine.get_item("users", &item(json!({"id": {"S": "u1"}})))).expect("get");
    assert_eq!(got.as_deref(), Some(bytes.as_slice()), "reads answer with the stored bytes");
    // Dropping and recreating a table gives an empty table with a new id.
    let old_id = engine.describe_table("users").expect("exists").id;
    block_on(engine.delete_table("users")).expect("delete");
    assert!(matches!(engine.describe_table("users"), Err(EngineError::ResourceNotFound(_))));
    let new = block_on(engine.create_table("users", key("id", KeyType::S), None, 0, 44)).expect("recreate");
    assert_ne!(new.id, old_id);
    drop(engine);
    disk.crash();
    let engine = open(&disk);
    assert_eq!(block_on(engine.get_item("users", &item(json!({"id": {"S": "u1"}})))).expect("get"), None);
}

#[test]
fn item_operations_follow_dynamodb_rules() {
    let disk = SimDisk::new(2);
    let mut engine = open(&disk);
    block_on(engine.create_table("things", key("id", KeyType::S), None, 2, 1)).expect("create");
    let put = |engine: &mut Engine<SimDisk>, v: serde_json::Value, cond: Option<&expr::Condition>| {
        block_on(engine.put_item("things", &item::encode(&item(v)), cond, false))
    };
    let not_exists = condition("attribute_not_exists(id)", &[]);
    put(&mut engine, json!({"id": {"S": "a"}, "n": {"N": "1"}}), Some(&not_exists)).expect("first put");
    assert!(matches!(
        put(&mut engine, json!({"id": {"S": "a"}}), Some(&not_exists)),
        Err(EngineError::ConditionalCheckFailed)
    ));
    assert!(matches!(put(&mut engine, json!({"id": {"N": "1"}}), None), Err(EngineError::Validation(_))));
    assert!(matches!(put(&mut engine, json!({"other": {"S": "x"}}), None), Err(EngineError::Validation(_))));
    let big = json!({"id": {"S": "big"}, "v": {"S": "x".repeat(410_000)}});
    assert!(matches!(put(&mut engine, big, None), Err(EngineError::ItemTooLarge(_))));
    // UpdateItem: a counter, and the key cannot change.
    let values =
        vec![(":one".to_owned(), AttributeValue::N("1".into())), (":k".to_owned(), AttributeValue::S("z".into()))];
    let mut placeholders = Placeholders::new(&[], &values);
    let increment = expr::parse_update("SET n = n + :one", &mut placeholders).expect("valid update");
    let key_a = item(json!({"id": {"S": "a"}}));
    for _ in 0..3 {
        block_on(engine.update_item("things", &key_a, &increment, None)).expect("update");
    }
    let stored = block_on(engine.get_item("things", &key_a)).expect("get").expect("present");
    assert_eq!(item::decode(&stored).expect("valid").get("n"), Some(&AttributeValue::N("4".into())));
    let change_key = expr::parse_update("SET id = :k", &mut placeholders).expect("valid update");
    assert!(matches!(
        block_on(engine.update_item("things", &key_a, &change_key, None)),
        Err(EngineError::Validation(_))
    ));
    // UpdateItem on a missing item creates it from the key.
    let fresh = item(json!({"id": {"S": "new"}}));
    let set = expr::parse_update("SET n = :one", &mut placeholders).expect("valid update");
    let (old, new) = block_on(engine.update_item("things", &fresh, &set, None)).expect("upsert");
    assert!(old.is_none());
    assert_eq!(item::decode(&new).expect("valid").len(), 2);
    // DeleteItem with a condition.
    let is_five = condition("n = :five", &[(":five".to_owned(), AttributeValue::N("5".into()))]);
    assert!(matches!(
        block_on(engine.delete_item("things", &key_a, Some(&is_five))),
        Err(EngineError::ConditionalCheckFailed)
    ));
    assert!(block_on(engine.delete_item("things", &key_a, None)).expect("delete").is_some());
    assert_eq!(block_on(engine.get_item("things", &key_a)).expect("get"), None);
    assert!(matches!(
        block_on(engine.get_item("things", &item(json!({"id": {"S": "a"}, "x": {"S": "y"}})))),
        Err(EngineError::Validation(_))
    ));
    assert!(matches!(block_on(engine.get_item("nope", &key_a)), Err(EngineError::ResourceNotFound(_))));
}

#[test]
fn query_honours_key_conditions_order_limits_and_pagination() {
    let disk = SimDisk::new(3);
    let engine = orders(&disk);
    let values: Vec<(String, AttributeValue)> = [
        (":c", AttributeValue::S("alice".into())),
        (":lo", AttributeValue::N("5".into())),
        (":hi", AttributeValue::N("9".into())),
        (":big", AttributeValue::N("100".into())),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let query = |text: &str, forward: bool, limit: Option<usize>, start: Option<&Item>| {
        let mut placeholders = Placeholders::new(&[], &values);
        let kc = expr::parse_key_condition(text, &mut placeholders, "customer", Some("n")).expect("valid");
        block_on(engine.query("orders", &kc, forward, limit, start, None)).expect("query")
    };
    assert_eq!(numbers(&query("customer = :c", true, None, None)), (0..30).collect::<Vec<_>>());
    assert_eq!(numbers(&query("customer = :c AND n BETWEEN :lo AND :hi", true, None, None)), vec![5, 6, 7, 8, 9]);
    assert_eq!(numbers(&query("customer = :c AND n < :lo", false, None, None)), vec![4, 3, 2, 1, 0]);
    assert_eq!(numbers(&query("customer = :c AND n >= :big", true, None, None)), Vec::<i64>::new());
    assert_eq!(numbers(&query("customer = :c AND n = :hi", true, None, None)), vec![9]);
    // Pagination: pages of 7, in both directions, cover everything once.
    for forward in [true, false] {
        let mut seen = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let page = query("customer = :c", forward, Some(7), start.as_ref());
            seen.extend(numbers(&page));
            match page.last_evaluated_key {
                Some(k) => start = Some(k),
                None => break,
            }
        }
        let mut want: Vec<i64> = (0..30).collect();
        if !forward {
            want.reverse();
        }
        assert_eq!(seen, want, "forward={forward}");
    }
    // A filter is applied after the limit, as in DynamoDB.
    let mut placeholders = Placeholders::new(&[], &values);
    let kc = expr::parse_key_condition("customer = :c", &mut placeholders, "customer", Some("n")).expect("valid");
    let filter = condition("total > :big", &values);
    let page = block_on(engine.query("orders", &kc, true, Some(15), None, Some(&filter))).expect("query");
    assert_eq!(page.scanned_count, 15);
    assert_eq!(numbers(&page), vec![11, 12, 13, 14]);
}

#[test]
fn scan_segments_partition_the_table_and_paginate() {
    let disk = SimDisk::new(4);
    let engine = orders(&disk);
    let mut total = 0;
    for segment in 0..2 {
        let mut start: Option<Item> = None;
        loop {
            let page = block_on(engine.scan("orders", Some(9), start.as_ref(), segment, 2, None)).expect("scan");
            total += page.items.len();
            match page.last_evaluated_key {
                Some(k) => start = Some(k),
                None => break,
            }
        }
    }
    assert_eq!(total, 60, "the segments together return every item once");
    assert!(matches!(block_on(engine.scan("orders", None, None, 2, 2, None)), Err(EngineError::Validation(_))));
}

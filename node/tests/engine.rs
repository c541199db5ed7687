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
    let mut engine = open(&disk);
    assert_eq!(block_on(engine.get_item("users", &item(json!({"id": {"S": "u1"}})))).expect("get"), None);
}

/// YCSB's update (a same-length SET of a string field) rewrites the stored
/// bytes in place; the item must read back exactly as the general path
/// would make it, the other fields untouched, and survive a crash.
#[test]
fn same_length_updates_rewrite_only_their_field_and_are_durable() {
    let disk = SimDisk::new(3);
    let mut engine = open(&disk);
    block_on(engine.create_table("usertable", key("id", KeyType::S), None, 2, 1)).expect("create");
    let original = item(json!({
        "id": {"S": "user7"}, "field0": {"S": "aaaa"}, "field1": {"S": "bbbb"}, "n": {"N": "3"}
    }));
    block_on(engine.put_item("usertable", &item::encode(&original), None, false)).expect("put");
    let values =
        vec![(":v".to_owned(), AttributeValue::S("cccc".into())), (":w".to_owned(), AttributeValue::S("dd".into()))];
    let mut placeholders = Placeholders::new(&[], &values);
    let same_length = expr::parse_update("SET field1 = :v", &mut placeholders).expect("valid update");
    let key_item = item(json!({"id": {"S": "user7"}}));
    let (old, new) = block_on(engine.update_item("usertable", &key_item, &same_length, None)).expect("update");
    assert_eq!(item::decode(&old.expect("old item")).expect("valid"), original);
    let expected = expr::apply_update(&same_length, &original).expect("applies");
    assert_eq!(item::decode(&new).expect("valid"), expected);
    // A shorter value takes the general path; both compose.
    let shorter = expr::parse_update("SET field0 = :w", &mut placeholders).expect("valid update");
    block_on(engine.update_item("usertable", &key_item, &shorter, None)).expect("update");
    let expected = expr::apply_update(&shorter, &expected).expect("applies");
    drop(engine);
    disk.crash();
    let mut engine = open(&disk);
    let stored = block_on(engine.get_item("usertable", &key_item)).expect("get").expect("present");
    assert_eq!(item::decode(&stored).expect("valid"), expected);
    assert_eq!(expected.get("field1"), Some(&AttributeValue::S("cccc".into())));
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
    let mut engine = orders(&disk);
    let values: Vec<(String, AttributeValue)> = [
        (":c", AttributeValue::S("alice".into())),
        (":lo", AttributeValue::N("5".into())),
        (":hi", AttributeValue::N("9".into())),
        (":big", AttributeValue::N("100".into())),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let mut query = |text: &str, forward: bool, limit: Option<usize>, start: Option<&Item>| {
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
    let mut engine = orders(&disk);
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

#[test]
fn deferred_writes_share_a_wal_write_and_later_requests_see_them_before_they_are_applied() {
    let disk = SimDisk::new(7);
    let mut engine = open(&disk);
    block_on(engine.create_table("counters", key("id", KeyType::S), None, 1, 1)).expect("create");
    engine.set_deferred(true);
    let wal = engine.wal();
    let writes_before = wal.stats();
    let counter = item(json!({"id": {"S": "c"}}));
    let values: Vec<(String, AttributeValue)> = vec![(":one".into(), AttributeValue::N("1".into()))];
    let mut placeholders = Placeholders::new(&[], &values);
    let update = expr::parse_update("ADD n :one", &mut placeholders).expect("valid update");
    // Three updates of one counter, each reading the one before it, none
    // waiting for the disk.
    for _ in 0..3 {
        block_on(engine.update_item("counters", &counter, &update, None)).expect("update");
    }
    let commit = engine.take_commit();
    let lsn = commit.wait_lsn().expect("three writes were logged");
    // Not applied yet: a read sees the logged value and must wait for it.
    let seen = block_on(engine.get_item("counters", &counter)).expect("get").expect("logged");
    assert_eq!(item::decode(&seen).expect("item").get("n"), Some(&AttributeValue::N("3".into())));
    let read_commit = engine.take_commit();
    assert_eq!(read_commit.wait_lsn(), Some(lsn), "a read of a logged write waits for its durability");
    block_on(wal.wait_durable(lsn)).expect("durable");
    assert_eq!(wal.stats().batches - writes_before.batches, 1, "one WAL write for the three updates");
    block_on(engine.finish(commit)).expect("finish");
    block_on(engine.finish(read_commit)).expect("finish read");
    drop(engine);
    disk.crash();
    let mut engine = open(&disk);
    let stored = block_on(engine.get_item("counters", &counter)).expect("get").expect("durable");
    assert_eq!(item::decode(&stored).expect("item").get("n"), Some(&AttributeValue::N("3".into())));
}

#[test]
fn shards_host_their_partitions_and_adopt_the_authoritys_catalog() {
    use keel_node::engine::Placement;
    let open_shard = |disk: &SimDisk, shard: u32| {
        block_on(async {
            let store = ShardStore::open(disk.clone(), config()).await.expect("store opens");
            Engine::open_placed(store, Placement { shard, shards: 2 }).await.expect("engine opens")
        })
    };
    let (disk0, disk1) = (SimDisk::new(8), SimDisk::new(9));
    let mut authority = open_shard(&disk0, 0);
    let mut other = open_shard(&disk1, 1);
    let def = block_on(authority.create_table("spread", key("id", KeyType::S), None, 4, 1)).expect("create");
    block_on(other.adopt_table(&def)).expect("adopt");
    let placement = authority.placement();
    let hosted = |engine: &mut Engine<SimDisk>| -> Vec<u64> {
        def.partition_ids().filter(|p| engine.store_mut().partitions().contains(p)).collect()
    };
    let (on0, on1) = (hosted(&mut authority), hosted(&mut other));
    assert_eq!(on0.len() + on1.len(), 4, "every partition lives on exactly one shard");
    assert!(on0.iter().all(|p| placement.shard_of(*p) == 0) && on1.iter().all(|p| placement.shard_of(*p) == 1));
    // Shard 1 missed a delete and a create (say, a crash between them): it
    // reconciles with the authority's catalog after a restart.
    block_on(authority.delete_table("spread")).expect("delete");
    let fresh = block_on(authority.create_table("fresh", key("k", KeyType::N), None, 2, 2)).expect("create");
    drop(other);
    let mut other = open_shard(&disk1, 1);
    assert_eq!(other.tables(), vec![def.clone()]);
    block_on(other.reconcile(&authority.tables())).expect("reconcile");
    assert_eq!(other.tables(), vec![fresh.clone()]);
    assert!(def.partition_ids().all(|p| !other.store_mut().partitions().contains(&p)), "old partitions dropped");
    assert_eq!(authority.tables(), other.tables());
}

/// A Query of a partition with logged, not yet durable writes does not wait
/// for the WAL while the server holds the engine: with settle-elsewhere on
/// it fails and says how far the WAL must be durable; run again after that,
/// it sees the writes.
#[test]
fn a_range_read_over_unsettled_writes_asks_to_wait_outside_the_engine() {
    let disk = SimDisk::new(17);
    let mut engine = open(&disk);
    block_on(engine.create_table("log", key("id", KeyType::S), Some(key("n", KeyType::N)), 1, 1)).expect("create");
    engine.set_deferred(true);
    for n in 0..3 {
        let it = item(json!({"id": {"S": "a"}, "n": {"N": n.to_string()}}));
        block_on(engine.put_item("log", &item::encode(&it), None, false)).expect("put");
    }
    let commit = engine.take_commit();
    let lsn = commit.wait_lsn().expect("logged");
    let values: Vec<(String, AttributeValue)> = vec![(":a".into(), AttributeValue::S("a".into()))];
    let mut placeholders = Placeholders::new(&[], &values);
    let kc = expr::parse_key_condition("id = :a", &mut placeholders, "id", Some("n")).expect("valid");
    engine.set_settle_elsewhere(true);
    assert!(block_on(engine.query("log", &kc, true, None, None, None)).is_err(), "must not wait under the engine");
    assert_eq!(engine.take_settle_after(), Some(lsn));
    assert!(engine.take_commit().is_empty(), "the failed read logged nothing");
    block_on(engine.wal().wait_durable(lsn)).expect("durable");
    let page = block_on(engine.query("log", &kc, true, None, None, None)).expect("query once durable");
    assert_eq!(numbers(&page), vec![0, 1, 2]);
    assert_eq!(engine.take_settle_after(), None);
    block_on(engine.finish(commit)).expect("finish");
}

/// A table `cold` of 1,000 items of about 330 bytes (`id` k0…k999, `n` 0)
/// in one partition, checkpointed, and the engine opened again over it with
/// a page cache of `cache_pages` pages, all cold.
fn cold_table(seed: u64, cache_pages: usize) -> (Engine<SimDisk>, keel_node::engine::TableDef) {
    let disk = SimDisk::new(seed);
    let mut config = config();
    config.page_cache_bytes = cache_pages * keel_node::btree::page::PAGE_BYTES;
    let open_with = |disk: &SimDisk| {
        block_on(async {
            let store = ShardStore::open(disk.clone(), config.clone()).await.expect("store opens");
            Engine::open(store).await.expect("engine opens")
        })
    };
    let mut engine = open_with(&disk);
    let def = block_on(engine.create_table("cold", key("id", KeyType::S), None, 1, 1)).expect("create");
    let pad = "x".repeat(300);
    for n in 0..1000 {
        let it = item(json!({"id": {"S": format!("k{n}")}, "n": {"N": "0"}, "pad": {"S": pad}}));
        block_on(engine.put_item("cold", &item::encode(&it), None, false)).expect("put");
    }
    block_on(engine.store_mut().checkpoint_all()).expect("checkpoint");
    drop(engine);
    (open_with(&disk), def)
}

/// How many different `id`s the stored items hold.
fn distinct_ids(items: &[Vec<u8>]) -> usize {
    let ids: std::collections::BTreeSet<String> = items
        .iter()
        .map(|b| match item::decode(b).expect("item").get("id") {
            Some(AttributeValue::S(id)) => id.clone(),
            other => panic!("id {other:?}"),
        })
        .collect();
    ids.len()
}

/// Runs `op` as the server does with fetch-elsewhere on: while it fails on
/// a page miss, the page is read without the engine and cached, and the
/// request (which logged nothing) is run again. Returns the result and the
/// number of pages fetched.
fn fetching<T>(engine: &mut Engine<SimDisk>, mut op: impl FnMut(&mut Engine<SimDisk>) -> T) -> (T, usize) {
    let mut fetched = 0;
    loop {
        engine.set_fetch_elsewhere(true);
        let out = op(engine);
        engine.set_fetch_elsewhere(false);
        let Some(fetch) = engine.take_page_fetch() else { return (out, fetched) };
        assert!(!engine.take_commit().has_writes(), "a request that missed a page logged nothing");
        engine.cache_fetched(block_on(fetch.read()).expect("the page reads"));
        fetched += 1;
        assert!(fetched <= 8, "one key misses at most the tree's depth of pages");
    }
}

/// With a cold page cache, GetItem, UpdateItem and a Scan under
/// fetch-elsewhere fail on each page they lack, having logged nothing, and
/// succeed once the pages are fetched; a write after a miss the caller
/// ignored is refused.
#[test]
fn reads_leave_page_misses_to_the_caller_and_a_request_that_missed_logs_nothing() {
    let (mut engine, def) = cold_table(18, 16); // the smallest cache: about half the table
    engine.set_deferred(true);
    let wal = engine.wal();
    let batches = wal.stats().records;

    let k7 = item(json!({"id": {"S": "k7"}}));
    let (got, fetched) = fetching(&mut engine, |e| block_on(e.get_item("cold", &k7)));
    let got = got.expect("get").expect("stored");
    assert_eq!(item::decode(&got).expect("item").get("id"), Some(&AttributeValue::S("k7".into())));
    assert!(fetched >= 2, "root and leaf at least were missed ({fetched})");
    let (_, fetched) = fetching(&mut engine, |e| block_on(e.get_item("cold", &k7)));
    assert_eq!(fetched, 0, "the pages are cached now");

    let values: Vec<(String, AttributeValue)> = vec![(":one".into(), AttributeValue::N("1".into()))];
    let mut placeholders = Placeholders::new(&[], &values);
    let update = expr::parse_update("SET n = n + :one", &mut placeholders).expect("valid update");
    let k900 = item(json!({"id": {"S": "k900"}}));
    let (updated, fetched) = fetching(&mut engine, |e| block_on(e.update_item("cold", &k900, &update, None)));
    updated.expect("update");
    assert!(fetched >= 1, "the update's read missed its leaf");
    let commit = engine.take_commit();
    assert_eq!(wal.stats().records, batches + 1, "the update was logged once, by the run that succeeded");
    block_on(wal.wait_durable(commit.wait_lsn().expect("logged"))).expect("durable");
    block_on(engine.finish(commit)).expect("finish");
    let stored = block_on(engine.get_item("cold", &k900)).expect("get").expect("stored");
    assert_eq!(item::decode(&stored).expect("item").get("n"), Some(&AttributeValue::N("1".into())));

    // A Scan of the partition misses many leaves; run again after each
    // fetch (8 at most, as the server does, then reading under the engine),
    // it returns every item once.
    let partition = def.partition_ids().next().expect("one partition");
    let mut fetches = 0;
    let page = loop {
        let mut page = keel_node::engine::Page::default();
        engine.set_fetch_elsewhere(fetches < 8);
        let scanned = block_on(engine.scan_partition("cold", partition, None, None, None, &mut page));
        engine.set_fetch_elsewhere(false);
        let Some(fetch) = engine.take_page_fetch() else {
            scanned.expect("scan");
            break page;
        };
        assert!(!engine.take_commit().has_writes());
        engine.cache_fetched(block_on(fetch.read()).expect("the page reads"));
        fetches += 1;
    };
    assert_eq!(fetches, 8, "the scan missed pages until it read under the engine");
    assert_eq!((page.items.len(), distinct_ids(&page.items)), (1000, 1000), "every item once");

    // A miss left untaken: a write in the same request is refused.
    let cold = (0..1000).map(|n| item(json!({"id": {"S": format!("k{n}")}}))).find(|k| {
        engine.set_fetch_elsewhere(true);
        let missed = block_on(engine.get_item("cold", k)).is_err();
        engine.set_fetch_elsewhere(false);
        missed
    });
    assert!(cold.is_some(), "a cache of 16 pages cannot hold 1,000 items of 300 bytes");
    let it = item(json!({"id": {"S": "new"}}));
    assert!(block_on(engine.put_item("cold", &item::encode(&it), None, false)).is_err(), "a write after a miss");
    assert!(!engine.take_commit().has_writes());
    assert_eq!(wal.stats().records, batches + 1, "nothing more was logged");
    engine.set_fetch_elsewhere(true); // a new request: the old miss is forgotten
    block_on(engine.put_item("cold", &item::encode(&it), None, false)).expect("put");
    assert!(engine.take_commit().has_writes());

    // Outside deferred mode a write is applied at once and leaves no trace
    // in the commit: a miss is read in place there, never deferred.
    engine.set_deferred(false);
    let cold = cold.expect("a cold key");
    let misses = engine.store_mut().cache().borrow().stats().misses;
    let (got, fetched) = fetching(&mut engine, |e| block_on(e.get_item("cold", &cold)));
    assert!(got.expect("get").is_some());
    assert_eq!(fetched, 0, "not deferred outside deferred mode");
    assert!(engine.store_mut().cache().borrow().stats().misses > misses, "the read missed and read the page itself");
}

/// A Scan part that misses a page after earlier batches of it were read
/// leaves the page it was given as it found it (items of earlier parts
/// kept, none of its own), so that the part run again after the fetch
/// returns each item once.
#[test]
fn a_scan_part_that_misses_leaves_its_page_as_it_found_it() {
    let (mut engine, def) = cold_table(19, 256); // holds the table once fetched
    engine.set_deferred(true);
    let partition = def.partition_ids().next().expect("one partition");
    // The page holds two items of an earlier part.
    let earlier = keel_node::engine::Page {
        items: vec![b"earlier-1".to_vec(), b"earlier-2".to_vec()],
        scanned_count: 2,
        bytes: 18,
        last_evaluated_key: None,
    };
    let mut page = keel_node::engine::Page { items: earlier.items.clone(), ..earlier.clone() };
    let mut fetches = 0;
    loop {
        engine.set_fetch_elsewhere(true);
        let scanned = block_on(engine.scan_partition("cold", partition, None, None, None, &mut page));
        engine.set_fetch_elsewhere(false);
        let Some(fetch) = engine.take_page_fetch() else {
            scanned.expect("scan");
            break;
        };
        assert_eq!(page.items, earlier.items, "a part that missed added nothing");
        assert_eq!((page.scanned_count, page.bytes), (2, 18));
        // The cache holds every page fetched so far: each run reads further.
        engine.cache_fetched(block_on(fetch.read()).expect("the page reads"));
        fetches += 1;
        assert!(fetches < 1000, "the scan converges");
    }
    // Each fetch reads the missed page and the next 7 the scan would visit.
    // The first batch's 256 items lie in about a quarter of the table's
    // leaves, which the first three or four fetches (the upper levels, then
    // 8 leaves each) bring in: the runs after those missed after a batch.
    assert!(fetches >= 5, "runs missed after a batch of 256 items was read ({fetches} fetches)");
    assert_eq!(page.items.get(..2), Some(&earlier.items[..]));
    let ids = distinct_ids(&page.items[2..]);
    assert_eq!((page.items.len(), ids, page.scanned_count), (1002, 1000, 1002), "every item once");
}

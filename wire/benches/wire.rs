//! Micro-benchmarks of the protocol's hot paths: the frame codec, item
//! verification and decoding, and expression evaluation, on YCSB-shaped
//! items (10 fields of 100 bytes).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use keel_wire::expr::{self, Placeholders};
use keel_wire::frame::{FrameDecoder, encode_frame};
use keel_wire::item::{self, AttributeValue, Item};
use keel_wire::protocol::{self, ExpressionArgs, Request, ReturnValues};

fn ycsb_item() -> Item {
    let mut item = Item::new();
    item.insert("ycsb_key".into(), AttributeValue::S("user6284781860667377211".into()));
    for i in 0..10 {
        item.insert(format!("field{i}"), AttributeValue::S("x".repeat(100)));
    }
    item.insert("n".into(), AttributeValue::N("42".into()));
    item
}

/// A YCSB read: GetItem of one `usertable` key.
fn ycsb_get_request() -> Request<'static> {
    let mut key = Item::new();
    key.insert("ycsb_key".into(), AttributeValue::S("user6284781860667377211".into()));
    Request::GetItem {
        table: "usertable".into(),
        key,
        projection: None,
        args: ExpressionArgs::default(),
        consistent_read: false,
    }
}

fn frames(c: &mut Criterion) {
    let bytes = item::encode(&ycsb_item());
    let body = protocol::encode_request(
        7,
        0,
        &Request::PutItem {
            table: "usertable".into(),
            item: &bytes,
            condition: None,
            args: ExpressionArgs::default(),
            return_values: ReturnValues::None,
        },
    );
    let mut group = c.benchmark_group("frame");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("encode_put_request_frame", |b| {
        let mut out = Vec::with_capacity(body.len() + 8);
        b.iter(|| {
            out.clear();
            encode_frame(&body, &mut out);
            out.len()
        });
    });
    let mut framed = Vec::new();
    encode_frame(&body, &mut framed);
    let decoder = FrameDecoder::default();
    group.bench_function("decode_frame_crc", |b| b.iter(|| decoder.decode(&framed).unwrap().unwrap().end));
    group.bench_function("verify_and_decode_put_request", |b| {
        b.iter(|| match protocol::decode_request(&body).unwrap().request {
            Request::PutItem { item, .. } => item.len(),
            _ => 0,
        });
    });
    group.finish();

    // What a shard and a client encode for every read.
    let mut group = c.benchmark_group("message");
    group.bench_function("encode_get_item_response", |b| {
        b.iter(|| protocol::encode_response(7, &protocol::Response::Item(protocol::ItemOp::Get, Some(&bytes))).len());
    });
    // The request built each time, as the client does.
    group.bench_function("encode_get_item_request", |b| {
        b.iter(|| protocol::encode_request(8, 1_000, &ycsb_get_request()).len());
    });
    // What a shard decodes for every read.
    let get = protocol::encode_request(8, 1_000, &ycsb_get_request());
    group.bench_function("verify_and_decode_get_item_request", |b| {
        b.iter(|| match protocol::decode_request(&get).unwrap().request {
            Request::GetItem { key, .. } => key.len(),
            _ => 0,
        });
    });
    group.finish();
}

fn items(c: &mut Criterion) {
    let bytes = item::encode(&ycsb_item());
    let mut group = c.benchmark_group("item");
    group.throughput(Throughput::Bytes(bytes.len() as u64));
    group.bench_function("verify", |b| b.iter(|| keel_wire::verify::item(&bytes).is_ok()));
    group.bench_function("decode", |b| b.iter(|| item::decode(&bytes).unwrap().len()));
    let decoded = item::decode(&bytes).unwrap();
    group.bench_function("validate", |b| b.iter(|| item::validate(&decoded).unwrap()));
    group.bench_function("encode", |b| b.iter(|| item::encode(&decoded).len()));
    group.finish();
}

fn expressions(c: &mut Criterion) {
    let item = ycsb_item();
    let names = vec![("#f".to_owned(), "field3".to_owned())];
    let values = vec![
        (":lo".to_owned(), AttributeValue::N("10".into())),
        (":hi".to_owned(), AttributeValue::N("100".into())),
        (":p".to_owned(), AttributeValue::S("xx".into())),
        (":v".to_owned(), AttributeValue::S("y".repeat(100))),
        (":one".to_owned(), AttributeValue::N("1".into())),
    ];
    let text = "attribute_exists(ycsb_key) AND n BETWEEN :lo AND :hi AND begins_with(#f, :p) AND size(field1) > :lo";
    let mut group = c.benchmark_group("expression");
    group.bench_function("parse_condition", |b| {
        b.iter(|| expr::parse_condition(text, &mut Placeholders::new(&names, &values)).unwrap());
    });
    let condition = expr::parse_condition(text, &mut Placeholders::new(&names, &values)).unwrap();
    group.bench_function("evaluate_condition", |b| b.iter(|| expr::evaluate(&condition, &item)));
    let update = expr::parse_update("SET #f = :v, n = n + :one", &mut Placeholders::new(&names, &values)).unwrap();
    group.bench_function("apply_update", |b| b.iter(|| expr::apply_update(&update, &item).unwrap().len()));
    // YCSB's update on the stored bytes: one field, a value of the same
    // length, written into a copy without decoding the item.
    let stored = item::encode(&item);
    let same_length = expr::parse_update("SET #f = :v", &mut Placeholders::new(&names, &values)).unwrap();
    group.bench_function("apply_update_in_place", |b| {
        b.iter(|| expr::apply_update_in_place(&same_length, &stored, &["ycsb_key"]).unwrap().unwrap().len());
    });
    group.finish();
}

criterion_group!(benches, frames, items, expressions);
criterion_main!(benches);

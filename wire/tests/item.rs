//! Items: DynamoDB JSON ↔ values ↔ FlatBuffers, and DynamoDB's rules.

use keel_wire::item::{self, AttributeValue, ITEM_BYTES_MAX, Item, ItemError};
use serde_json::json;

fn sample_json() -> serde_json::Value {
    json!({
        "id": {"S": "user#1"},
        "age": {"N": "42.50"},
        "avatar": {"B": "AAEC/w=="},
        "active": {"BOOL": true},
        "nothing": {"NULL": true},
        "tags": {"SS": ["a", "b"]},
        "scores": {"NS": ["1", "2.5", "-3"]},
        "blobs": {"BS": ["AA==", "AQ=="]},
        "history": {"L": [{"S": "x"}, {"N": "1"}, {"M": {"k": {"BOOL": false}}}]},
        "address": {"M": {"city": {"S": "Oslo"}, "zip": {"N": "150"}}}
    })
}

#[test]
fn items_roundtrip_through_json_and_flatbuffers() {
    let parsed = item::from_json(&sample_json()).expect("valid DynamoDB JSON");
    assert_eq!(parsed.get("avatar"), Some(&AttributeValue::B(vec![0, 1, 2, 255])));
    let size = item::validate(&parsed).expect("valid item");
    assert!(size > 50 && size < 300, "size {size}");
    let bytes = item::encode(&parsed);
    let decoded = item::decode(&bytes).expect("decodes");
    assert_eq!(decoded, parsed);
    assert_eq!(item::to_json(&decoded), sample_json());
}

fn nested(depth: usize) -> Item {
    let mut value = AttributeValue::S("leaf".to_owned());
    for _ in 0..depth {
        value = AttributeValue::L(vec![value]);
    }
    Item::from([("deep".to_owned(), value)])
}

#[test]
fn dynamodb_rules_are_enforced() {
    assert!(item::validate(&nested(32)).is_ok(), "32 levels are allowed");
    assert!(matches!(item::validate(&nested(33)), Err(ItemError::TooDeep { .. })));
    let set = |v: AttributeValue| Item::from([("s".to_owned(), v)]);
    assert!(matches!(item::validate(&set(AttributeValue::SS(vec![]))), Err(ItemError::Set { .. })));
    let dup = AttributeValue::SS(vec!["a".into(), "a".into()]);
    assert!(matches!(item::validate(&set(dup)), Err(ItemError::Set { .. })));
    let dup_numbers = AttributeValue::NS(vec!["1.0".into(), "1".into()]);
    assert!(matches!(item::validate(&set(dup_numbers)), Err(ItemError::Set { .. })), "1.0 and 1 are equal");
    assert!(matches!(item::validate(&set(AttributeValue::N("1e200".into()))), Err(ItemError::Number { .. })));
    let big = Item::from([("v".to_owned(), AttributeValue::B(vec![0; ITEM_BYTES_MAX]))]);
    assert!(matches!(item::validate(&big), Err(ItemError::TooLarge { size }) if size == ITEM_BYTES_MAX + 1));
    let empty_name = Item::from([(String::new(), AttributeValue::Null)]);
    assert!(matches!(item::validate(&empty_name), Err(ItemError::Name { .. })));
}

#[test]
fn malformed_dynamodb_json_names_the_attribute() {
    for (bad, path) in [
        (json!({"a": {"S": 1}}), "a"),
        (json!({"a": {"X": "1"}}), "a"),
        (json!({"a": {"S": "1", "N": "1"}}), "a"),
        (json!({"m": {"M": {"b": {"B": "not base64!"}}}}), "m.b"),
        (json!({"l": {"L": [{"S": "ok"}, {"NULL": false}]}}), "l[1]"),
    ] {
        match item::from_json(&bad) {
            Err(ItemError::Json { path: p, .. }) => assert_eq!(p, path, "{bad}"),
            other => panic!("{bad}: expected a JSON error, got {other:?}"),
        }
    }
    assert!(item::from_json(&json!([1, 2])).is_err());
}

/// An item buffer with string attributes in exactly the given order (Keel's
/// encoder always sorts them; other writers need not).
fn item_in_order(attributes: &[(&str, &str)]) -> Vec<u8> {
    use keel_wire::fb;
    let mut b = flatbuffers::FlatBufferBuilder::new();
    let mut built = Vec::new();
    for (name, value) in attributes {
        let s = b.create_string(value);
        let s = fb::S::create(&mut b, &fb::SArgs { value: Some(s) });
        let v = fb::AttributeValue::create(
            &mut b,
            &fb::AttributeValueArgs { value_type: fb::Value::S, value: Some(s.as_union_value()) },
        );
        let name = b.create_string(name);
        built.push(fb::Attribute::create(&mut b, &fb::AttributeArgs { name: Some(name), value: Some(v) }));
    }
    let built = b.create_vector(&built);
    let root = fb::Item::create(&mut b, &fb::ItemArgs { attributes: Some(built) });
    b.finish(root, None);
    b.finished_data().to_vec()
}

#[test]
fn items_decode_alike_whatever_the_order_of_their_attributes() {
    let sorted = item::decode(&item_in_order(&[("a", "1"), ("b", "2"), ("c", "3")])).expect("sorted decodes");
    let shuffled = item::decode(&item_in_order(&[("c", "3"), ("a", "1"), ("b", "2")])).expect("shuffled decodes");
    let expected: Item = [("a", "1"), ("b", "2"), ("c", "3")]
        .into_iter()
        .map(|(n, v)| (n.to_owned(), AttributeValue::S(v.to_owned())))
        .collect();
    assert_eq!(sorted, expected);
    assert_eq!(shuffled, expected);
    assert_eq!(item::decode(&item::encode(&expected)).expect("round trip"), expected);
}

#[test]
fn decoding_rejects_garbage_and_duplicate_names() {
    assert!(matches!(item::decode(b"not a flatbuffer"), Err(ItemError::Verify(_))));
    // A name twice is refused in any order: next to itself or apart.
    for twice in [
        &[("dup", "x"), ("dup", "x")][..],
        &[("b", "1"), ("a", "2"), ("b", "3")],
        &[("a", "1"), ("b", "2"), ("b", "3")],
    ] {
        assert!(
            matches!(item::decode(&item_in_order(twice)), Err(ItemError::Name { reason: "appears twice", .. })),
            "{twice:?}"
        );
    }
}

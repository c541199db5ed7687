//! UpdateExpression: each action kind, DynamoDB's rules and errors.

#![allow(clippy::indexing_slicing)]

use keel_wire::expr::{self, ExprError, Placeholders};
use keel_wire::item::{self, AttributeValue, Item};
use serde_json::json;

fn base() -> Item {
    item::from_json(&json!({
        "id": {"S": "k"},
        "count": {"N": "10"},
        "price": {"N": "1.10"},
        "tags": {"SS": ["a", "b"]},
        "nums": {"NS": ["1", "2"]},
        "list": {"L": [{"S": "x"}, {"S": "y"}, {"S": "z"}]},
        "map": {"M": {"inner": {"N": "1"}}},
        "gone": {"S": "bye"}
    }))
    .expect("valid")
}

/// Applies `text` with the given value placeholders to `base()`.
fn check(text: &str, values: serde_json::Value) -> Result<serde_json::Value, ExprError> {
    let values: Vec<(String, AttributeValue)> = values
        .as_object()
        .map(|o| o.iter().map(|(k, v)| (k.clone(), item::value_from_json(v, k).expect("valid value"))).collect())
        .unwrap_or_default();
    let names = vec![("#c".to_owned(), "count".to_owned())];
    let mut placeholders = Placeholders::new(&names, &values);
    let update = expr::parse_update(text, &mut placeholders)?;
    Ok(item::to_json(&expr::apply_update(&update, &base())?))
}

fn get(json: &serde_json::Value, name: &str) -> serde_json::Value {
    json.get(name).cloned().unwrap_or(serde_json::Value::Null)
}

#[test]
fn set_arithmetic_and_functions() {
    let out = check(
        "SET #c = #c + :one, price = price - :dime, fresh = if_not_exists(fresh, :zero), \
         list = list_append(list, :more), map.inner = :two, created = if_not_exists(id, :zero)",
        json!({":one": {"N": "1"}, ":dime": {"N": "0.1"}, ":zero": {"N": "0"}, ":more": {"L": [{"S": "w"}]}, ":two": {"N": "2"}}),
    )
    .expect("applies");
    assert_eq!(get(&out, "count"), json!({"N": "11"}));
    assert_eq!(get(&out, "price"), json!({"N": "1"}));
    assert_eq!(get(&out, "fresh"), json!({"N": "0"}));
    assert_eq!(get(&out, "created"), json!({"S": "k"}));
    assert_eq!(get(&out, "list"), json!({"L": [{"S": "x"}, {"S": "y"}, {"S": "z"}, {"S": "w"}]}));
    assert_eq!(get(&out, "map"), json!({"M": {"inner": {"N": "2"}}}));
}

#[test]
fn remove_add_delete() {
    let out = check(
        "REMOVE gone, list[0], list[2] ADD #c :five, tags :c, newset :c DELETE nums :one",
        json!({":five": {"N": "5"}, ":c": {"SS": ["c", "a"]}, ":one": {"NS": ["1.0"]}}),
    )
    .expect("applies");
    assert_eq!(get(&out, "gone"), serde_json::Value::Null);
    assert_eq!(get(&out, "list"), json!({"L": [{"S": "y"}]}), "indexes refer to the list before the update");
    assert_eq!(get(&out, "count"), json!({"N": "15"}));
    assert_eq!(get(&out, "tags"), json!({"SS": ["a", "b", "c"]}));
    assert_eq!(get(&out, "newset"), json!({"SS": ["c", "a"]}));
    assert_eq!(get(&out, "nums"), json!({"NS": ["2"]}), "1.0 deletes 1");
    let emptied = check("DELETE tags :all", json!({":all": {"SS": ["a", "b"]}})).expect("applies");
    assert_eq!(get(&emptied, "tags"), serde_json::Value::Null, "an emptied set disappears");
}

#[test]
fn invalid_updates_are_validation_errors() {
    let one = json!({":one": {"N": "1"}, ":s": {"S": "x"}});
    assert!(matches!(check("SET a = :one SET b = :one", one.clone()), Err(ExprError::Syntax { .. })), "clause twice");
    assert!(matches!(check("SET a = :one REMOVE a", one.clone()), Err(ExprError::Invalid(_))), "overlapping paths");
    assert!(matches!(check("SET map = :one, map.inner = :one", one.clone()), Err(ExprError::Invalid(_))));
    assert!(matches!(check("SET id = id + :one", one.clone()), Err(ExprError::Invalid(_))), "S + N");
    assert!(matches!(check("ADD id :one", one.clone()), Err(ExprError::Invalid(_))), "ADD to a string");
    assert!(matches!(check("ADD x :s", one.clone()), Err(ExprError::Invalid(_))), "ADD a string");
    assert!(matches!(check("SET missing.deep = :one", one.clone()), Err(ExprError::Invalid(_))), "no parent");
    assert!(matches!(check("SET a = nothing_here", one.clone()), Err(ExprError::Invalid(_))));
    assert!(matches!(check("SET a :one", one.clone()), Err(ExprError::Syntax { .. })));
    assert!(matches!(check("", one.clone()), Err(ExprError::Syntax { .. })));
    assert!(matches!(check("SET a = :one junk", one), Err(ExprError::Syntax { .. })));
}

/// Parses `text` with the value placeholders `values` (no name placeholders).
fn parse(text: &str, values: &[(&str, AttributeValue)]) -> expr::Update {
    let values: Vec<(String, AttributeValue)> = values.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect();
    let mut placeholders = Placeholders::new(&[], &values);
    expr::parse_update(text, &mut placeholders).expect("parses")
}

fn s(text: &str) -> AttributeValue {
    AttributeValue::S(text.to_owned())
}

fn scalar_item() -> Item {
    [
        ("id", s("user1")),
        ("field0", s("aaaa")),
        ("field1", s("bbbb")),
        ("blob", AttributeValue::B(vec![1, 2, 3])),
        ("n", AttributeValue::N("42".into())),
        ("flag", AttributeValue::Bool(true)),
        ("nothing", AttributeValue::Null),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

#[test]
fn in_place_updates_equal_decode_apply_encode() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
    for _ in 0..500 {
        // An item of 1–12 string fields of random (equal per field) lengths.
        let fields = rng.random_range(1..=12usize);
        let widths: Vec<usize> = (0..fields).map(|_| rng.random_range(0..40)).collect();
        let text = |rng: &mut rand::rngs::SmallRng, width: usize| -> String {
            (0..width).map(|_| char::from(rng.random_range(b'a'..=b'z'))).collect()
        };
        let mut stored = Item::new();
        stored.insert("id".into(), s("k"));
        for (i, &w) in widths.iter().enumerate() {
            stored.insert(format!("field{i}"), AttributeValue::S(text(&mut rng, w)));
        }
        let bytes = item::encode(&stored);
        // SET of 1–3 distinct fields to new values of the same width.
        let count = rng.random_range(1..=fields.min(3));
        let mut chosen: Vec<usize> = (0..fields).collect();
        chosen.sort_by_key(|_| rng.random::<u32>());
        let values: Vec<(String, AttributeValue)> = chosen
            .iter()
            .take(count)
            .map(|&i| (format!(":v{i}"), AttributeValue::S(text(&mut rng, widths[i]))))
            .collect();
        let sets: Vec<String> = chosen.iter().take(count).map(|&i| format!("field{i} = :v{i}")).collect();
        let refs: Vec<(&str, AttributeValue)> = values.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        let update = parse(&format!("SET {}", sets.join(", ")), &refs);
        let in_place = expr::apply_update_in_place(&update, &bytes, &["id"]).expect("verifies").expect("in place");
        assert_eq!(in_place.len(), bytes.len());
        let expected = expr::apply_update(&update, &stored).expect("applies");
        assert_eq!(item::decode(&in_place).expect("valid item"), expected);
    }
}

#[test]
fn in_place_updates_binary_and_keep_other_scalars() {
    let stored = scalar_item();
    let bytes = item::encode(&stored);
    let update = parse("SET blob = :b, field1 = :s", &[(":b", AttributeValue::B(vec![9, 8, 7])), (":s", s("zzzz"))]);
    let out = expr::apply_update_in_place(&update, &bytes, &["id"]).expect("verifies").expect("in place");
    assert_eq!(item::decode(&out).expect("valid"), expr::apply_update(&update, &stored).expect("applies"));
}

#[test]
fn in_place_declines_every_other_shape() {
    let stored = scalar_item();
    let bytes = item::encode(&stored);
    let declined = [
        ("SET field0 = :v", vec![(":v", s("longer value"))]), // another length
        ("SET field0 = :v", vec![(":v", AttributeValue::N("1234".into()))]), // another type
        ("SET n = :v", vec![(":v", AttributeValue::N("43".into()))]), // numbers are normalised: not here
        ("SET absent = :v", vec![(":v", s("aaaa"))]),         // a new attribute
        ("SET id = :v", vec![(":v", s("user2"))]),            // the key
        ("SET field0 = field1", vec![]),                      // not a value
        ("SET field0 = if_not_exists(field0, :v)", vec![(":v", s("aaaa"))]),
        ("SET field0 = :v REMOVE field1", vec![(":v", s("cccc"))]),
        ("SET field0.x = :v", vec![(":v", s("cccc"))]), // a nested path
    ];
    for (text, values) in declined {
        let update = parse(text, &values);
        assert_eq!(expr::apply_update_in_place(&update, &bytes, &["id"]), Ok(None), "{text}");
    }
    // An item with a non-scalar attribute is always decoded.
    let mut nested = scalar_item();
    nested.insert("list".into(), AttributeValue::L(vec![s("x")]));
    let update = parse("SET field0 = :v", &[(":v", s("cccc"))]);
    assert_eq!(expr::apply_update_in_place(&update, &item::encode(&nested), &["id"]), Ok(None));
    // Bytes that are not an item are an error, not a guess.
    assert!(expr::apply_update_in_place(&update, b"not an item", &["id"]).is_err());
}

/// Builds an item buffer whose attributes are (name, S value) pairs given as
/// string objects: `strings[i]` is created once, and an attribute may name
/// the same object for its name and its value, or two attributes one value.
fn shared_layout(strings: &[&str], attributes: &[(usize, usize)]) -> Vec<u8> {
    use flatbuffers::FlatBufferBuilder;
    use keel_wire::fb;
    let mut b = FlatBufferBuilder::new();
    let made: Vec<_> = strings.iter().map(|s| b.create_string(s)).collect();
    let mut built = Vec::new();
    for &(name, value) in attributes {
        let value = fb::S::create(&mut b, &fb::SArgs { value: Some(made[value]) });
        let value = fb::AttributeValue::create(
            &mut b,
            &fb::AttributeValueArgs { value_type: fb::Value::S, value: Some(value.as_union_value()) },
        );
        built.push(fb::Attribute::create(&mut b, &fb::AttributeArgs { name: Some(made[name]), value: Some(value) }));
    }
    let vector = b.create_vector(&built);
    let root = fb::Item::create(&mut b, &fb::ItemArgs { attributes: Some(vector) });
    b.finish(root, None);
    b.finished_data().to_vec()
}

/// FlatBuffers lets objects share bytes; overwriting a shared string would
/// change more than the value, so the in-place path must notice and decline
/// (the general path then gives the right answer).
#[test]
fn in_place_declines_a_layout_with_shared_bytes() {
    // Two attributes, one value string.
    let bytes = shared_layout(&["a", "b", "same"], &[(0, 2), (1, 2)]);
    let stored = item::decode(&bytes).expect("a valid item");
    let update = parse("SET a = :v", &[(":v", s("diff"))]);
    assert_eq!(expr::apply_update_in_place(&update, &bytes, &[]), Ok(None));
    let updated = expr::apply_update(&update, &stored).expect("applies");
    assert_eq!(updated.get("a"), Some(&s("diff")));
    assert_eq!(updated.get("b"), Some(&s("same")));
    // A value that is its own attribute's name: overwriting would rename it.
    let bytes = shared_layout(&["key", "aaaa"], &[(0, 0), (1, 1)]);
    let update = parse("SET aaaa = :v", &[(":v", s("bbbb"))]);
    assert_eq!(expr::apply_update_in_place(&update, &bytes, &["key"]), Ok(None));
    // The same shapes without sharing are rewritten in place.
    let bytes = shared_layout(&["key", "aaaa", "aaaa"], &[(0, 0), (1, 2)]);
    let out = expr::apply_update_in_place(&update, &bytes, &["key"]).expect("verifies").expect("in place");
    let expected = expr::apply_update(&update, &item::decode(&bytes).expect("valid")).expect("applies");
    assert_eq!(item::decode(&out).expect("valid"), expected);
}

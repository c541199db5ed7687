//! UpdateExpression: each action kind, DynamoDB's rules and errors.

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

//! Condition and projection expressions: DynamoDB's semantics, placeholders
//! and limits, checked through one helper.

use keel_wire::expr::{self, ExprError, Placeholders};
use keel_wire::item::{self, AttributeValue, Item};
use serde_json::json;

fn item() -> Item {
    item::from_json(&json!({
        "id": {"S": "user#1"},
        "age": {"N": "42"},
        "score": {"N": "7.5"},
        "name": {"S": "Ada Lovelace"},
        "blob": {"B": "AAEC"},
        "tags": {"SS": ["admin", "dev"]},
        "nums": {"NS": ["1", "2.0"]},
        "list": {"L": [{"S": "a"}, {"N": "3"}]},
        "address": {"M": {"city": {"S": "Oslo"}, "zip": {"N": "150"}}},
        "flag": {"BOOL": true},
        "nothing": {"NULL": true},
        "from": {"S": "reserved word"}
    }))
    .expect("valid item")
}

fn values() -> Vec<(String, AttributeValue)> {
    [
        (":forty", AttributeValue::N("40.0".into())),
        (":fortytwo", AttributeValue::N("42".into())),
        (":fifty", AttributeValue::N("50".into())),
        (":user", AttributeValue::S("user#".into())),
        (":oslo", AttributeValue::S("Oslo".into())),
        (":admin", AttributeValue::S("admin".into())),
        (":two", AttributeValue::N("2".into())),
        (":S", AttributeValue::S("S".into())),
        (":M", AttributeValue::S("M".into())),
        (":a", AttributeValue::S("a".into())),
        (":ada", AttributeValue::S("Lovelace".into())),
        (":b", AttributeValue::B(vec![0, 1])),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// Parses `text` with `#f` → "from" and the values above, evaluates it.
fn check(text: &str) -> Result<bool, ExprError> {
    let names = vec![("#f".to_owned(), "from".to_owned())];
    let values = values();
    let mut placeholders = Placeholders::new(&names, &values);
    let condition = expr::parse_condition(text, &mut placeholders)?;
    Ok(expr::evaluate(&condition, &item()))
}

#[test]
fn conditions_follow_dynamodb_semantics() {
    let cases: &[(&str, bool)] = &[
        ("age = :fortytwo", true),
        ("age > :forty AND age < :fifty", true),
        ("age BETWEEN :forty AND :fifty", true),
        ("age BETWEEN :fifty AND :forty", false),
        ("score <= :forty", true),
        ("age <> :forty", true),
        ("age = :user", false),
        ("age <> :user", true),
        ("age IN (:forty, :fortytwo)", true),
        ("age IN (:forty, :fifty)", false),
        ("attribute_exists(age) AND attribute_not_exists(missing)", true),
        ("attribute_exists(address.city)", true),
        ("attribute_exists(address.country)", false),
        ("address.city = :oslo", true),
        ("list[1] = :two", false),
        ("list[0] = :a", true),
        ("begins_with(id, :user)", true),
        ("begins_with(blob, :b)", true),
        ("contains(tags, :admin)", true),
        ("contains(name, :ada)", true),
        ("contains(nums, :two)", true),
        ("contains(list, :a)", true),
        ("size(tags) = :two", true),
        ("size(name) > :forty", false),
        ("attribute_type(id, :S) AND attribute_type(address, :M)", true),
        ("NOT attribute_exists(id)", false),
        ("missing < :fifty", false),
        ("missing <> :fifty", false),
        ("(age = :forty OR age = :fortytwo) AND NOT (flag = :a)", true),
        ("age = :forty OR age = :fortytwo AND attribute_exists(nope)", false),
        ("#f = :a OR attribute_exists(#f)", true),
        ("age between :forty and :fifty", true),
    ];
    for (text, want) in cases {
        // Unused values are allowed here: `check` shares one value table.
        assert_eq!(check(text), Ok(*want), "{text}");
    }
}

#[test]
fn invalid_conditions_are_validation_errors() {
    assert_eq!(check("age = :nope"), Err(ExprError::Undefined(":nope".into())));
    assert_eq!(check("#nope = :a"), Err(ExprError::Undefined("#nope".into())));
    for bad in
        ["age =", "age = :a AND", "(age = :a", "age = :a)", "unknown_fn(age)", "age ! :a", "list[x] = :a", "= :a", ""]
    {
        assert!(matches!(check(bad), Err(ExprError::Syntax { .. })), "{bad:?} gave {:?}", check(bad));
    }
    let long = format!("age = :a{}", " ".repeat(4100));
    assert!(matches!(check(&long), Err(ExprError::TooLong { .. })));
    let many = vec!["age = :a"; 160].join(" OR ");
    assert!(matches!(check(&many), Err(ExprError::TooComplex(_))));
    let deep = format!("{}age = :a{}", "(".repeat(100), ")".repeat(100));
    assert!(matches!(check(&deep), Err(ExprError::TooComplex(_))));
}

#[test]
fn unused_placeholders_are_reported() {
    let names = vec![("#n".to_owned(), "age".to_owned()), ("#extra".to_owned(), "x".to_owned())];
    let values = vec![(":v".to_owned(), AttributeValue::N("1".into()))];
    let mut placeholders = Placeholders::new(&names, &values);
    expr::parse_condition("#n = :v", &mut placeholders).expect("parses");
    assert_eq!(placeholders.check_all_used(), Err(ExprError::Unused("#extra".into())));
}

#[test]
fn projections_keep_only_the_named_paths() {
    let names = vec![("#c".to_owned(), "city".to_owned())];
    let mut placeholders = Placeholders::new(&names, &[]);
    let paths = expr::parse_projection("id, address.#c, list[1], missing", &mut placeholders).expect("parses");
    placeholders.check_all_used().expect("all used");
    let projected = expr::project(&item(), &paths);
    assert_eq!(
        item::to_json(&projected),
        json!({
            "id": {"S": "user#1"},
            "address": {"M": {"city": {"S": "Oslo"}}},
            "list": {"L": [{"N": "3"}]}
        })
    );
}

#[test]
fn key_conditions_accept_only_key_comparisons() {
    use keel_wire::expr::{Comparator, SortKeyCondition};
    let values = values();
    let parse = |text: &str| {
        let mut placeholders = Placeholders::new(&[], &values);
        expr::parse_key_condition(text, &mut placeholders, "id", Some("age"))
    };
    let key = parse("id = :user AND age BETWEEN :forty AND :fifty").expect("valid");
    assert_eq!(key.partition_key, AttributeValue::S("user#".into()));
    assert_eq!(
        key.sort_key,
        Some(SortKeyCondition::Between(AttributeValue::N("40.0".into()), AttributeValue::N("50".into())))
    );
    let reversed = parse("age >= :forty AND id = :user").expect("either order");
    assert_eq!(reversed.sort_key, Some(SortKeyCondition::Compare(Comparator::Ge, AttributeValue::N("40.0".into()))));
    assert!(parse("id = :user").expect("pk only").sort_key.is_none());
    assert!(parse("begins_with(age, :user) AND id = :user").is_ok());
    for bad in [
        "age = :forty",
        "id < :user",
        "id = :user OR age = :forty",
        "id = :user AND age <> :forty",
        "id = :user AND name = :ada",
        "id = :user AND id = :user",
        "id = :user AND age = :forty AND age = :fifty",
        "begins_with(age, :two) AND id = :user",
    ] {
        assert!(parse(bad).is_err(), "{bad} must be rejected");
    }
}

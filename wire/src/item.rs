//! Items as Rust values, their FlatBuffers encoding, DynamoDB JSON, and
//! DynamoDB's validation rules (nesting, sets, numbers, item size).
//!
//! The server does not decode items on the hot path (it stores the verified
//! bytes it received); this module is for clients, the CLI, expressions and
//! tests.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use flatbuffers::{FlatBufferBuilder, WIPOffset};
use serde_json::{Map, Value as Json};

use crate::fb;
use crate::number::{Decimal, NumberError};
use crate::verify::{self, VerifyError};

/// DynamoDB's item size limit (400 KB).
pub const ITEM_BYTES_MAX: usize = 400 * 1024;
/// DynamoDB's limit on nested attribute levels.
pub const NESTING_MAX: usize = 32;
/// Longest attribute name (DynamoDB: 64 KB).
pub const NAME_BYTES_MAX: usize = 64 * 1024;

/// An attribute value (DynamoDB's data types).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttributeValue {
    /// String.
    S(String),
    /// Number, as its decimal text.
    N(String),
    /// Binary.
    B(Vec<u8>),
    /// Boolean.
    Bool(bool),
    /// Null.
    Null,
    /// List.
    L(Vec<AttributeValue>),
    /// Map.
    M(Item),
    /// String set.
    SS(Vec<String>),
    /// Number set.
    NS(Vec<String>),
    /// Binary set.
    BS(Vec<Vec<u8>>),
}

/// An item or a key: attribute name → value, ordered by name.
pub type Item = BTreeMap<String, AttributeValue>;

/// Why an item is not acceptable.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ItemError {
    /// The bytes are not a valid `Item` buffer.
    #[error(transparent)]
    Verify(#[from] VerifyError),
    /// A number is invalid.
    #[error("attribute {path}: {source}")]
    Number {
        /// Where.
        path: String,
        /// Why.
        #[source]
        source: NumberError,
    },
    /// A set is empty or has duplicates.
    #[error("attribute {path}: {reason}")]
    Set {
        /// Where.
        path: String,
        /// Why.
        reason: &'static str,
    },
    /// Nested deeper than [`NESTING_MAX`].
    #[error("attribute {path}: nesting exceeds {NESTING_MAX} levels")]
    TooDeep {
        /// Where.
        path: String,
    },
    /// An empty, oversized or repeated attribute name.
    #[error("attribute name {name:?}: {reason}")]
    Name {
        /// The name (cut to 64 characters).
        name: String,
        /// Why.
        reason: &'static str,
    },
    /// Larger than [`ITEM_BYTES_MAX`].
    #[error("item size {size} bytes exceeds the limit of {ITEM_BYTES_MAX} bytes")]
    TooLarge {
        /// DynamoDB's size of the item.
        size: usize,
    },
    /// Malformed DynamoDB JSON.
    #[error("DynamoDB JSON at {path}: {reason}")]
    Json {
        /// Where.
        path: String,
        /// Why.
        reason: String,
    },
}

/// Checks DynamoDB's rules and returns the item's size as DynamoDB counts it.
pub fn validate(item: &Item) -> Result<usize, ItemError> {
    let size = validate_map(item, "", 0)?;
    if size > ITEM_BYTES_MAX {
        return Err(ItemError::TooLarge { size });
    }
    Ok(size)
}

fn check_name(name: &str) -> Result<(), ItemError> {
    let short = || name.chars().take(64).collect();
    if name.is_empty() {
        return Err(ItemError::Name { name: short(), reason: "empty" });
    }
    if name.len() > NAME_BYTES_MAX {
        return Err(ItemError::Name { name: short(), reason: "longer than 64 KB" });
    }
    Ok(())
}

fn validate_map(map: &Item, path: &str, depth: usize) -> Result<usize, ItemError> {
    let mut size = 0;
    for (name, value) in map {
        check_name(name)?;
        let here = if path.is_empty() { name.clone() } else { format!("{path}.{name}") };
        size += name.len() + validate_value(value, &here, depth)?;
    }
    Ok(size)
}

fn parse_number(path: &str, text: &str) -> Result<Decimal, ItemError> {
    Decimal::parse(text).map_err(|source| ItemError::Number { path: path.to_owned(), source })
}

/// DynamoDB's size of a number: one byte per two significant digits, plus one.
fn number_size(decimal: &Decimal) -> usize {
    decimal.digits().len().div_ceil(2) + 1
}

fn validate_value(value: &AttributeValue, path: &str, depth: usize) -> Result<usize, ItemError> {
    if depth > NESTING_MAX {
        return Err(ItemError::TooDeep { path: path.to_owned() });
    }
    let set_error = |reason| ItemError::Set { path: path.to_owned(), reason };
    Ok(match value {
        AttributeValue::S(s) => s.len(),
        AttributeValue::N(n) => number_size(&parse_number(path, n)?),
        AttributeValue::B(b) => b.len(),
        AttributeValue::Bool(_) | AttributeValue::Null => 1,
        AttributeValue::L(values) => {
            let mut size = 3;
            for (i, v) in values.iter().enumerate() {
                size += 1 + validate_value(v, &format!("{path}[{i}]"), depth + 1)?;
            }
            size
        }
        AttributeValue::M(map) => 3 + map.len() + validate_map(map, path, depth + 1)?,
        AttributeValue::SS(values) => {
            if values.is_empty() {
                return Err(set_error("empty set"));
            }
            if values.iter().collect::<std::collections::BTreeSet<_>>().len() != values.len() {
                return Err(set_error("duplicate values in a set"));
            }
            values.iter().map(String::len).sum()
        }
        AttributeValue::NS(values) => {
            if values.is_empty() {
                return Err(set_error("empty set"));
            }
            let mut seen = std::collections::BTreeSet::new();
            let mut size = 0;
            for n in values {
                let decimal = parse_number(path, n)?;
                size += number_size(&decimal);
                if !seen.insert(decimal) {
                    return Err(set_error("duplicate values in a set"));
                }
            }
            size
        }
        AttributeValue::BS(values) => {
            if values.is_empty() {
                return Err(set_error("empty set"));
            }
            if values.iter().collect::<std::collections::BTreeSet<_>>().len() != values.len() {
                return Err(set_error("duplicate values in a set"));
            }
            values.iter().map(Vec::len).sum()
        }
    })
}

/// Encodes an item as a standalone `Item` FlatBuffer (attributes by name).
#[must_use]
pub fn encode(item: &Item) -> Vec<u8> {
    crate::protocol::with_thread_builder(ENCODE_FRESH_BYTES, |b| {
        let root = build_item(b, item);
        b.finish(root, None);
        b.finished_data().to_vec()
    })
}

/// The size [`encode`] expects of an item (a YCSB record fits); a larger
/// one grows the thread's builder, which is then replaced.
const ENCODE_FRESH_BYTES: usize = 2048;

/// Builds an `Item` table inside a larger buffer.
pub fn build_item<'a>(b: &mut FlatBufferBuilder<'a>, item: &Item) -> WIPOffset<fb::Item<'a>> {
    let attributes = build_attributes(b, item);
    fb::Item::create(b, &fb::ItemArgs { attributes: Some(attributes) })
}

fn build_attributes<'a>(
    b: &mut FlatBufferBuilder<'a>,
    map: &Item,
) -> WIPOffset<flatbuffers::Vector<'a, flatbuffers::ForwardsUOffset<fb::Attribute<'a>>>> {
    let mut attributes = Vec::with_capacity(map.len());
    for (name, value) in map {
        let value = build_value(b, value);
        let name = b.create_string(name);
        attributes.push(fb::Attribute::create(b, &fb::AttributeArgs { name: Some(name), value: Some(value) }));
    }
    b.create_vector(&attributes)
}

/// Builds an `AttributeValue` table inside a larger buffer.
pub fn build_value<'a>(b: &mut FlatBufferBuilder<'a>, value: &AttributeValue) -> WIPOffset<fb::AttributeValue<'a>> {
    let (value_type, offset) = match value {
        AttributeValue::S(s) => {
            let v = b.create_string(s);
            (fb::Value::S, fb::S::create(b, &fb::SArgs { value: Some(v) }).as_union_value())
        }
        AttributeValue::N(n) => {
            let v = b.create_string(n);
            (fb::Value::N, fb::N::create(b, &fb::NArgs { value: Some(v) }).as_union_value())
        }
        AttributeValue::B(bytes) => {
            let v = b.create_vector(bytes);
            (fb::Value::B, fb::B::create(b, &fb::BArgs { value: Some(v) }).as_union_value())
        }
        AttributeValue::Bool(v) => (fb::Value::Bool, fb::Bool::create(b, &fb::BoolArgs { value: *v }).as_union_value()),
        AttributeValue::Null => (fb::Value::Null, fb::Null::create(b, &fb::NullArgs {}).as_union_value()),
        AttributeValue::L(values) => {
            let built: Vec<_> = values.iter().map(|v| build_value(b, v)).collect();
            let v = b.create_vector(&built);
            (fb::Value::L, fb::L::create(b, &fb::LArgs { values: Some(v) }).as_union_value())
        }
        AttributeValue::M(map) => {
            let attributes = build_attributes(b, map);
            (fb::Value::M, fb::M::create(b, &fb::MArgs { attributes: Some(attributes) }).as_union_value())
        }
        AttributeValue::SS(values) => {
            let strings: Vec<_> = values.iter().map(|s| b.create_string(s)).collect();
            let v = b.create_vector(&strings);
            (fb::Value::SS, fb::SS::create(b, &fb::SSArgs { values: Some(v) }).as_union_value())
        }
        AttributeValue::NS(values) => {
            let strings: Vec<_> = values.iter().map(|s| b.create_string(s)).collect();
            let v = b.create_vector(&strings);
            (fb::Value::NS, fb::NS::create(b, &fb::NSArgs { values: Some(v) }).as_union_value())
        }
        AttributeValue::BS(values) => {
            let blobs: Vec<_> = values
                .iter()
                .map(|bytes| {
                    let v = b.create_vector(bytes);
                    fb::Blob::create(b, &fb::BlobArgs { value: Some(v) })
                })
                .collect();
            let v = b.create_vector(&blobs);
            (fb::Value::BS, fb::BS::create(b, &fb::BSArgs { values: Some(v) }).as_union_value())
        }
    };
    fb::AttributeValue::create(b, &fb::AttributeValueArgs { value_type, value: Some(offset) })
}

/// Verifies `bytes` as an `Item` buffer and converts it (no validation of
/// DynamoDB's rules; call [`validate`] for that).
pub fn decode(bytes: &[u8]) -> Result<Item, ItemError> {
    let item = verify::item(bytes)?;
    from_fb(item)
}

/// Converts a verified `Item` table.
pub fn from_fb(item: fb::Item<'_>) -> Result<Item, ItemError> {
    map_from_fb(item.attributes())
}

fn map_from_fb(
    attributes: flatbuffers::Vector<'_, flatbuffers::ForwardsUOffset<fb::Attribute<'_>>>,
) -> Result<Item, ItemError> {
    let mut map = Item::new();
    for attribute in attributes {
        let value = value_from_fb(attribute.value())?;
        match map.entry(attribute.name().to_owned()) {
            std::collections::btree_map::Entry::Vacant(slot) => {
                slot.insert(value);
            }
            std::collections::btree_map::Entry::Occupied(slot) => {
                return Err(ItemError::Name { name: slot.key().chars().take(64).collect(), reason: "appears twice" });
            }
        }
    }
    Ok(map)
}

/// Converts one verified attribute value.
pub fn value_from_fb(value: fb::AttributeValue<'_>) -> Result<AttributeValue, ItemError> {
    let unknown = || ItemError::Json { path: String::new(), reason: "unknown attribute value type".to_owned() };
    Ok(match value.value_type() {
        fb::Value::S => AttributeValue::S(value.value_as_s().ok_or_else(unknown)?.value().to_owned()),
        fb::Value::N => AttributeValue::N(value.value_as_n().ok_or_else(unknown)?.value().to_owned()),
        fb::Value::B => AttributeValue::B(value.value_as_b().ok_or_else(unknown)?.value().bytes().to_vec()),
        fb::Value::Bool => AttributeValue::Bool(value.value_as_bool().ok_or_else(unknown)?.value()),
        fb::Value::Null => AttributeValue::Null,
        fb::Value::L => AttributeValue::L(
            value.value_as_l().ok_or_else(unknown)?.values().iter().map(value_from_fb).collect::<Result<_, _>>()?,
        ),
        fb::Value::M => AttributeValue::M(map_from_fb(value.value_as_m().ok_or_else(unknown)?.attributes())?),
        fb::Value::SS => {
            AttributeValue::SS(value.value_as_ss().ok_or_else(unknown)?.values().iter().map(str::to_owned).collect())
        }
        fb::Value::NS => {
            AttributeValue::NS(value.value_as_ns().ok_or_else(unknown)?.values().iter().map(str::to_owned).collect())
        }
        fb::Value::BS => AttributeValue::BS(
            value.value_as_bs().ok_or_else(unknown)?.values().iter().map(|b| b.value().bytes().to_vec()).collect(),
        ),
        _ => return Err(unknown()),
    })
}

/// Parses DynamoDB JSON (`{"id": {"S": "1"}, …}`) into an item.
pub fn from_json(json: &Json) -> Result<Item, ItemError> {
    let object = json.as_object().ok_or_else(|| json_error("", "an item must be a JSON object"))?;
    object_from_json(object, "")
}

fn json_error(path: &str, reason: &str) -> ItemError {
    ItemError::Json { path: if path.is_empty() { "$".to_owned() } else { path.to_owned() }, reason: reason.to_owned() }
}

fn object_from_json(object: &Map<String, Json>, path: &str) -> Result<Item, ItemError> {
    object
        .iter()
        .map(|(name, value)| {
            let here = if path.is_empty() { name.clone() } else { format!("{path}.{name}") };
            Ok((name.clone(), value_from_json(value, &here)?))
        })
        .collect()
}

/// Parses one DynamoDB JSON attribute value (`{"S": "x"}`).
pub fn value_from_json(json: &Json, path: &str) -> Result<AttributeValue, ItemError> {
    let object = json.as_object().filter(|o| o.len() == 1).ok_or_else(|| {
        json_error(
            path,
            "an attribute value must be an object with exactly one type key (S, N, B, BOOL, NULL, L, M, SS, NS, BS)",
        )
    })?;
    let (kind, inner) = object.iter().next().ok_or_else(|| json_error(path, "empty attribute value"))?;
    let string =
        |v: &Json| v.as_str().map(str::to_owned).ok_or_else(|| json_error(path, &format!("{kind} takes a string")));
    let binary = |v: &Json| {
        let text = v.as_str().ok_or_else(|| json_error(path, &format!("{kind} takes base64 text")))?;
        BASE64.decode(text).map_err(|_| json_error(path, "invalid base64"))
    };
    let array = |v: &Json| v.as_array().cloned().ok_or_else(|| json_error(path, &format!("{kind} takes an array")));
    Ok(match kind.as_str() {
        "S" => AttributeValue::S(string(inner)?),
        "N" => AttributeValue::N(string(inner)?),
        "B" => AttributeValue::B(binary(inner)?),
        "BOOL" => AttributeValue::Bool(inner.as_bool().ok_or_else(|| json_error(path, "BOOL takes true or false"))?),
        "NULL" => match inner.as_bool() {
            Some(true) => AttributeValue::Null,
            _ => return Err(json_error(path, "NULL takes true")),
        },
        "L" => AttributeValue::L(
            array(inner)?
                .iter()
                .enumerate()
                .map(|(i, v)| value_from_json(v, &format!("{path}[{i}]")))
                .collect::<Result<_, _>>()?,
        ),
        "M" => AttributeValue::M(object_from_json(
            inner.as_object().ok_or_else(|| json_error(path, "M takes an object"))?,
            path,
        )?),
        "SS" => AttributeValue::SS(array(inner)?.iter().map(string).collect::<Result<_, _>>()?),
        "NS" => AttributeValue::NS(array(inner)?.iter().map(string).collect::<Result<_, _>>()?),
        "BS" => AttributeValue::BS(array(inner)?.iter().map(binary).collect::<Result<_, _>>()?),
        other => return Err(json_error(path, &format!("unknown type {other:?}"))),
    })
}

/// Prints an item as DynamoDB JSON.
#[must_use]
pub fn to_json(item: &Item) -> Json {
    Json::Object(item.iter().map(|(name, value)| (name.clone(), value_to_json(value))).collect())
}

/// Prints one attribute value as DynamoDB JSON.
#[must_use]
pub fn value_to_json(value: &AttributeValue) -> Json {
    let one = |kind: &str, inner: Json| Json::Object(Map::from_iter([(kind.to_owned(), inner)]));
    match value {
        AttributeValue::S(s) => one("S", Json::String(s.clone())),
        AttributeValue::N(n) => one("N", Json::String(n.clone())),
        AttributeValue::B(b) => one("B", Json::String(BASE64.encode(b))),
        AttributeValue::Bool(v) => one("BOOL", Json::Bool(*v)),
        AttributeValue::Null => one("NULL", Json::Bool(true)),
        AttributeValue::L(values) => one("L", Json::Array(values.iter().map(value_to_json).collect())),
        AttributeValue::M(map) => one("M", to_json(map)),
        AttributeValue::SS(values) => one("SS", Json::Array(values.iter().cloned().map(Json::String).collect())),
        AttributeValue::NS(values) => one("NS", Json::Array(values.iter().cloned().map(Json::String).collect())),
        AttributeValue::BS(values) => {
            one("BS", Json::Array(values.iter().map(|b| Json::String(BASE64.encode(b))).collect()))
        }
    }
}

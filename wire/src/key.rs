//! Storage keys: `hash(pk) ‖ pk ‖ sk` in an order-preserving encoding, so
//! that all items of one partition key sit together, sorted by sort key, and
//! a Query over a sort-key range is one B-tree range scan. Layout:
//! `docs/format/key.md`.
//!
//! - `hash(pk)`: xxh3-64 of the encoded partition key, 8 bytes big-endian.
//!   It spreads partition keys over partitions (hash ranges) and makes the
//!   first 8 bytes of keys nearly unique, which the B-tree's prefix search
//!   relies on.
//! - The partition key is self-delimiting (escaped strings and binaries,
//!   terminated numbers), so different partition keys never interleave.
//! - The sort key comes last; its encoding orders like DynamoDB orders
//!   values of its type (bytes for S and B, numerically for N).

use crate::item::AttributeValue;
use crate::number::{Decimal, NumberError};

/// DynamoDB's limit on a partition key value.
pub const PARTITION_KEY_BYTES_MAX: usize = 2048;
/// DynamoDB's limit on a sort key value.
pub const SORT_KEY_BYTES_MAX: usize = 1024;

const NUMBER_NEGATIVE: u8 = 0x01;
const NUMBER_ZERO: u8 = 0x02;
const NUMBER_POSITIVE: u8 = 0x03;
/// Exponents (−130 ..= 126) are stored biased, as two bytes.
const EXPONENT_BIAS: i32 = 0x8000;
/// First allocation of a storage key: the hash and a typical key or two.
const KEY_CAPACITY: usize = 64;

/// Why a key cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Keys are S, N or B.
    #[error("key attribute {name:?} must be of type S, N or B")]
    Type {
        /// The key attribute.
        name: String,
    },
    /// Too long, or empty.
    #[error("key attribute {name:?} has {len} bytes; allowed 1..={max}")]
    Size {
        /// The key attribute.
        name: String,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// An invalid number.
    #[error("key attribute {name:?}: {source}")]
    Number {
        /// The key attribute.
        name: String,
        /// Why.
        #[source]
        source: NumberError,
    },
}

/// The 64-bit hash of an encoded partition key (routes it to a partition).
#[must_use]
pub fn partition_hash(encoded_partition_key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(encoded_partition_key)
}

/// The partition hash a storage key (or partition prefix) starts with.
#[must_use]
pub fn hash_of(storage_key: &[u8]) -> u64 {
    u64::from_be_bytes(storage_key.get(..8).and_then(|b| b.try_into().ok()).unwrap_or([0; 8]))
}

/// Encodes a table key into a storage key.
pub fn encode_key(
    pk_name: &str,
    pk: &AttributeValue,
    sk: Option<(&str, &AttributeValue)>,
) -> Result<Vec<u8>, KeyError> {
    // The hash goes in front of the partition key's encoding: its place is
    // kept, and filled once the encoding is there. Typical keys fit the
    // first allocation; `escape_bytes` reserves for longer ones.
    let mut out = Vec::with_capacity(KEY_CAPACITY);
    out.extend_from_slice(&[0; 8]);
    encode_component(&mut out, pk_name, pk, PARTITION_KEY_BYTES_MAX)?;
    let hash = partition_hash(out.get(8..).unwrap_or_default()).to_be_bytes();
    if let Some(place) = out.get_mut(..8) {
        place.copy_from_slice(&hash);
    }
    if let Some((name, value)) = sk {
        encode_component(&mut out, name, value, SORT_KEY_BYTES_MAX)?;
    }
    Ok(out)
}

/// The storage-key prefix shared by every item with this partition key
/// (the start of a Query's range).
pub fn partition_prefix(pk_name: &str, pk: &AttributeValue) -> Result<Vec<u8>, KeyError> {
    encode_key(pk_name, pk, None)
}

/// The storage-key prefix of every item whose sort key (S or B) begins with
/// `sk_prefix`: `begins_with` in a Query is the range of keys starting with
/// this.
pub fn sort_key_prefix(pk_name: &str, pk: &AttributeValue, sk_prefix: &AttributeValue) -> Result<Vec<u8>, KeyError> {
    let mut out = encode_key(pk_name, pk, None)?;
    let bytes = match sk_prefix {
        AttributeValue::S(s) => s.as_bytes(),
        AttributeValue::B(b) => b.as_slice(),
        _ => return Err(KeyError::Type { name: "begins_with".to_owned() }),
    };
    for &b in bytes {
        out.push(b);
        if b == 0 {
            out.push(0xff);
        }
    }
    Ok(out)
}

/// The smallest byte string greater than every string starting with
/// `prefix`, or `None` when there is none (all bytes 0xFF).
#[must_use]
pub fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut out = prefix.to_vec();
    while let Some(last) = out.pop() {
        if last < 0xff {
            out.push(last + 1);
            return Some(out);
        }
    }
    None
}

/// Appends one self-delimiting, order-preserving key component.
fn encode_component(out: &mut Vec<u8>, name: &str, value: &AttributeValue, max: usize) -> Result<(), KeyError> {
    let size_error = |len| KeyError::Size { name: name.to_owned(), len, max };
    match value {
        AttributeValue::S(s) => {
            if s.is_empty() || s.len() > max {
                return Err(size_error(s.len()));
            }
            escape_bytes(out, s.as_bytes());
        }
        AttributeValue::B(b) => {
            if b.is_empty() || b.len() > max {
                return Err(size_error(b.len()));
            }
            escape_bytes(out, b);
        }
        AttributeValue::N(text) => {
            let decimal = Decimal::parse(text).map_err(|source| KeyError::Number { name: name.to_owned(), source })?;
            encode_number(out, &decimal);
        }
        _ => return Err(KeyError::Type { name: name.to_owned() }),
    }
    Ok(())
}

/// Bytes with 0x00 escaped as 0x00 0xFF, terminated by 0x00 0x00: ordering
/// of the encodings equals ordering of the bytes, and no encoding is a
/// prefix of another.
fn escape_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.reserve(bytes.len() + 2);
    let mut runs = bytes.split(|&b| b == 0);
    if let Some(first) = runs.next() {
        out.extend_from_slice(first);
    }
    for run in runs {
        out.extend_from_slice(&[0, 0xff]);
        out.extend_from_slice(run);
    }
    out.extend_from_slice(&[0, 0]);
}

/// Sign class, then the exponent and the digits (one byte each, 1..=10),
/// complemented for negative numbers so that larger magnitudes sort first;
/// a terminator that sorts below (positive) or above (negative) every digit
/// makes shorter digit strings order correctly.
fn encode_number(out: &mut Vec<u8>, d: &Decimal) {
    if d.is_zero() {
        out.push(NUMBER_ZERO);
        return;
    }
    let exponent = u16::try_from(d.exponent() + EXPONENT_BIAS).expect("exponent range is checked by Decimal");
    if d.is_negative() {
        out.push(NUMBER_NEGATIVE);
        out.extend_from_slice(&(!exponent).to_be_bytes());
        out.extend(d.digits().iter().map(|digit| 10 - digit));
        out.push(0xff);
    } else {
        out.push(NUMBER_POSITIVE);
        out.extend_from_slice(&exponent.to_be_bytes());
        out.extend(d.digits().iter().map(|digit| digit + 1));
        out.push(0x00);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(text: &str) -> AttributeValue {
        AttributeValue::N(text.to_owned())
    }

    fn s(text: &str) -> AttributeValue {
        AttributeValue::S(text.to_owned())
    }

    fn key(pk: &AttributeValue, sk: &AttributeValue) -> Vec<u8> {
        encode_key("pk", pk, Some(("sk", sk))).expect("valid key")
    }

    #[test]
    fn sort_keys_order_like_dynamodb_within_a_partition() {
        let pk = s("user#1");
        let numbers =
            ["-1e10", "-2.5", "-2.25", "-1", "-0.001", "0", "1e-130", "0.5", "1", "1.05", "1.5", "10", "1e125"];
        let encoded: Vec<Vec<u8>> = numbers.iter().map(|t| key(&pk, &n(t))).collect();
        for (pair, names) in encoded.windows(2).zip(numbers.windows(2)) {
            if let ([a, b], [na, nb]) = (pair, names) {
                assert!(a < b, "{na} must sort before {nb}");
            }
        }
        assert_eq!(key(&pk, &n("1.50")), key(&pk, &n("1.5")), "equal numbers give equal keys");
        let strings = ["a", "a\0", "a\0b", "ab", "b", "\u{e9}"];
        let encoded: Vec<Vec<u8>> = strings.iter().map(|t| key(&pk, &s(t))).collect();
        assert!(encoded.windows(2).all(|w| matches!(w, [a, b] if a < b)), "strings sort bytewise");
    }

    #[test]
    fn storage_keys_keep_their_byte_layout() {
        // docs/format: the partition key's hash (big-endian), its escaped
        // bytes and terminator, then the sort key's.
        let pk_bytes = [b'a', 0, 0xff, 0, 0xff, b'b', 0, 0];
        let mut expected = partition_hash(&pk_bytes).to_be_bytes().to_vec();
        expected.extend_from_slice(&pk_bytes);
        expected.extend_from_slice(&[0, 0xff, b'x', 0, 0xff, 0, 0]);
        assert_eq!(key(&s("a\0\0b"), &s("\0x\0")), expected);
        let number_key = encode_key("pk", &n("-12.5"), None).expect("valid");
        let digits = [10 - 1, 10 - 2, 10 - 5];
        let mut pk_bytes = vec![NUMBER_NEGATIVE];
        pk_bytes.extend_from_slice(&(!u16::try_from(2 + EXPONENT_BIAS).expect("bias")).to_be_bytes());
        pk_bytes.extend_from_slice(&digits);
        pk_bytes.push(0xff);
        assert_eq!(number_key.get(8..), Some(&pk_bytes[..]));
        assert_eq!(number_key.get(..8), Some(&partition_hash(&pk_bytes).to_be_bytes()[..]));
    }

    #[test]
    fn partitions_never_interleave_and_share_a_prefix() {
        let prefix = partition_prefix("pk", &s("a")).expect("valid");
        for sk in ["", "x", "zzzz"].iter().filter(|t| !t.is_empty()) {
            assert!(key(&s("a"), &s(sk)).starts_with(&prefix));
        }
        // "a" followed by sort key "b…" must not look like partition key "ab".
        let ab = partition_prefix("pk", &s("ab")).expect("valid");
        assert!(!key(&s("a"), &s("b")).starts_with(&ab));
        assert_ne!(partition_hash(b"a"), partition_hash(b"b"));
    }

    #[test]
    fn begins_with_ranges_cover_exactly_the_matching_sort_keys() {
        let prefix = sort_key_prefix("pk", &s("p"), &s("ab")).expect("valid");
        let end = prefix_successor(&prefix).expect("has a successor");
        for (sk, inside) in [("ab", true), ("abc", true), ("ab\0", true), ("aa", false), ("ac", false), ("a", false)] {
            let k = key(&s("p"), &s(sk));
            assert_eq!(k >= prefix && k < end, inside, "{sk:?}");
        }
        assert_eq!(prefix_successor(&[1, 0xff]), Some(vec![2]));
        assert_eq!(prefix_successor(&[0xff, 0xff]), None);
    }

    #[test]
    fn key_limits_and_types_are_enforced() {
        let long = "x".repeat(PARTITION_KEY_BYTES_MAX + 1);
        assert!(matches!(encode_key("pk", &s(&long), None), Err(KeyError::Size { len: 2049, max: 2048, .. })));
        let long_sk = "y".repeat(SORT_KEY_BYTES_MAX + 1);
        assert!(matches!(encode_key("pk", &s("a"), Some(("sk", &s(&long_sk)))), Err(KeyError::Size { .. })));
        assert!(matches!(encode_key("pk", &s(""), None), Err(KeyError::Size { len: 0, .. })));
        assert!(matches!(encode_key("pk", &AttributeValue::Bool(true), None), Err(KeyError::Type { .. })));
        assert!(matches!(encode_key("pk", &n("1e999"), None), Err(KeyError::Number { .. })));
    }
}

//! UpdateExpression: `SET`, `REMOVE`, `ADD`, `DELETE`, with DynamoDB's
//! rules: each clause at most once, no two actions on overlapping paths,
//! every operand evaluated against the item *before* the update.

use super::{ExprError, Operand, Parser, Path, PathElement, Placeholders, keyword, operand_value, resolve, tokenize};
use crate::fb;
use crate::item::{AttributeValue, Item};
use crate::number::Decimal;
use crate::verify::VerifyError;
use std::ops::Range;

/// The right-hand side of a `SET` action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetValue {
    /// A path, a value placeholder.
    Operand(Operand),
    /// `if_not_exists(path, value)`.
    IfNotExists(Path, Box<SetValue>),
    /// `list_append(a, b)`.
    ListAppend(Box<SetValue>, Box<SetValue>),
    /// `a + b`.
    Plus(Box<SetValue>, Box<SetValue>),
    /// `a - b`.
    Minus(Box<SetValue>, Box<SetValue>),
}

/// One action of an update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// `SET path = value`
    Set(Path, SetValue),
    /// `REMOVE path`
    Remove(Path),
    /// `ADD path value` (numbers and sets)
    Add(Path, AttributeValue),
    /// `DELETE path value` (sets)
    Delete(Path, AttributeValue),
}

/// A parsed UpdateExpression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    /// Actions in the order written.
    pub actions: Vec<Action>,
}

/// Parses an UpdateExpression.
pub fn parse_update(text: &str, placeholders: &mut Placeholders<'_>) -> Result<Update, ExprError> {
    let tokens = tokenize(text)?;
    let mut parser = Parser { tokens, pos: 0, placeholders, operators: 0, depth: 0 };
    let mut actions = Vec::new();
    let mut seen = Vec::new();
    while parser.peek().is_some() {
        let clause = match parser.next() {
            Some(super::Token::Ident(word)) => word.to_ascii_uppercase(),
            _ => return Err(parser.syntax("expected SET, REMOVE, ADD or DELETE")),
        };
        if seen.contains(&clause) {
            return Err(parser.syntax("each clause may appear only once"));
        }
        seen.push(clause.clone());
        loop {
            let path = parser.path()?;
            let action = match clause.as_str() {
                "SET" => {
                    parser.expect(&super::Token::Comparator("="), "expected '=' in SET")?;
                    Action::Set(path, set_value(&mut parser)?)
                }
                "REMOVE" => Action::Remove(path),
                "ADD" | "DELETE" => {
                    let value = match parser.operand()? {
                        Operand::Value(v) => v,
                        _ => return Err(parser.syntax("ADD and DELETE take a value placeholder")),
                    };
                    if clause == "ADD" { Action::Add(path, value) } else { Action::Delete(path, value) }
                }
                _ => return Err(parser.syntax("expected SET, REMOVE, ADD or DELETE")),
            };
            parser.count_operator()?;
            actions.push(action);
            if parser.peek() == Some(&super::Token::Comma) {
                parser.pos += 1;
            } else {
                break;
            }
        }
        if parser.peek().is_some() && !["SET", "REMOVE", "ADD", "DELETE"].iter().any(|k| keyword(parser.peek(), k)) {
            return Err(parser.syntax("unexpected input after an action"));
        }
    }
    if actions.is_empty() {
        return Err(parser.syntax("empty update expression"));
    }
    let paths: Vec<&Path> = actions
        .iter()
        .map(|a| match a {
            Action::Set(p, _) | Action::Remove(p) | Action::Add(p, _) | Action::Delete(p, _) => p,
        })
        .collect();
    for (i, a) in paths.iter().enumerate() {
        for b in paths.iter().skip(i + 1) {
            let n = a.0.len().min(b.0.len());
            if a.0.get(..n) == b.0.get(..n) {
                return Err(ExprError::Invalid("two document paths in the update overlap".into()));
            }
        }
    }
    Ok(Update { actions })
}

fn set_value(parser: &mut Parser<'_, '_>) -> Result<SetValue, ExprError> {
    let left = set_operand(parser)?;
    match parser.peek() {
        Some(super::Token::Arithmetic(op)) => {
            let op = *op;
            parser.pos += 1;
            parser.count_operator()?;
            let right = Box::new(set_operand(parser)?);
            Ok(if op == '+' { SetValue::Plus(Box::new(left), right) } else { SetValue::Minus(Box::new(left), right) })
        }
        _ => Ok(left),
    }
}

fn set_operand(parser: &mut Parser<'_, '_>) -> Result<SetValue, ExprError> {
    if let Some(super::Token::Ident(name)) = parser.peek().cloned()
        && parser.tokens.get(parser.pos + 1) == Some(&super::Token::Open)
        && (name == "if_not_exists" || name == "list_append")
    {
        parser.pos += 2;
        parser.count_operator()?;
        let value = if name == "if_not_exists" {
            let path = parser.path()?;
            parser.expect(&super::Token::Comma, "expected ','")?;
            SetValue::IfNotExists(path, Box::new(set_operand(parser)?))
        } else {
            let a = set_operand(parser)?;
            parser.expect(&super::Token::Comma, "expected ','")?;
            SetValue::ListAppend(Box::new(a), Box::new(set_operand(parser)?))
        };
        parser.expect(&super::Token::Close, "expected ')'")?;
        return Ok(value);
    }
    Ok(SetValue::Operand(parser.operand()?))
}

fn invalid(reason: &str) -> ExprError {
    ExprError::Invalid(reason.to_owned())
}

fn eval_set(value: &SetValue, item: &Item) -> Result<AttributeValue, ExprError> {
    match value {
        SetValue::Operand(o) => operand_value(item, o)
            .ok_or_else(|| invalid("the provided expression refers to an attribute that does not exist in the item")),
        SetValue::IfNotExists(path, default) => match resolve(item, path) {
            Some(v) => Ok(v.clone()),
            None => eval_set(default, item),
        },
        SetValue::ListAppend(a, b) => match (eval_set(a, item)?, eval_set(b, item)?) {
            (AttributeValue::L(mut x), AttributeValue::L(y)) => {
                x.extend(y);
                Ok(AttributeValue::L(x))
            }
            _ => Err(invalid("list_append takes two lists")),
        },
        SetValue::Plus(a, b) | SetValue::Minus(a, b) => {
            let (AttributeValue::N(x), AttributeValue::N(y)) = (eval_set(a, item)?, eval_set(b, item)?) else {
                return Err(invalid("+ and - take numbers"));
            };
            let x = Decimal::parse(&x).map_err(|e| invalid(&e.to_string()))?;
            let mut y = Decimal::parse(&y).map_err(|e| invalid(&e.to_string()))?;
            if matches!(value, SetValue::Minus(..)) {
                y = y.negated();
            }
            Ok(AttributeValue::N(x.add(&y).map_err(|e| invalid(&e.to_string()))?.to_canonical()))
        }
    }
}

/// Applies an update to `item` (an empty map when the item is new).
/// Operands are evaluated against the item as it was before the update.
pub fn apply(update: &Update, item: &Item) -> Result<Item, ExprError> {
    let mut out = item.clone();
    // Evaluate first, then write: every operand sees the old item.
    let mut writes = Vec::new();
    for action in &update.actions {
        match action {
            Action::Set(path, value) => writes.push((path, Some(eval_set(value, item)?))),
            Action::Remove(path) => writes.push((path, None)),
            Action::Add(path, value) => writes.push((path, Some(add(resolve(item, path), value)?))),
            Action::Delete(path, value) => match delete(resolve(item, path), value)? {
                Some(rest) => writes.push((path, Some(rest))),
                None => writes.push((path, None)),
            },
        }
    }
    // Removals of list elements go last, from the highest index down, so
    // that every index refers to the list as it was (a stable sort keeps
    // the other writes in order).
    writes.sort_by_key(|(path, value)| match (value, path.0.last()) {
        (None, Some(PathElement::Index(i))) => (1, std::cmp::Reverse(*i)),
        _ => (0, std::cmp::Reverse(0)),
    });
    for (path, value) in writes {
        write(&mut out, &path.0, value)?;
    }
    Ok(out)
}

fn add(current: Option<&AttributeValue>, value: &AttributeValue) -> Result<AttributeValue, ExprError> {
    let union = |mut a: Vec<String>, b: &[String]| {
        for v in b {
            if !a.contains(v) {
                a.push(v.clone());
            }
        }
        a
    };
    Ok(match (current, value) {
        (None, AttributeValue::N(_) | AttributeValue::SS(_) | AttributeValue::NS(_) | AttributeValue::BS(_)) => {
            value.clone()
        }
        (Some(AttributeValue::N(x)), AttributeValue::N(y)) => {
            let sum = Decimal::parse(x)
                .and_then(|x| Decimal::parse(y).and_then(|y| x.add(&y)))
                .map_err(|e| invalid(&e.to_string()))?;
            AttributeValue::N(sum.to_canonical())
        }
        (Some(AttributeValue::SS(a)), AttributeValue::SS(b)) => AttributeValue::SS(union(a.clone(), b)),
        (Some(AttributeValue::NS(a)), AttributeValue::NS(b)) => AttributeValue::NS(union(a.clone(), b)),
        (Some(AttributeValue::BS(a)), AttributeValue::BS(b)) => {
            let mut out = a.clone();
            out.extend(b.iter().filter(|v| !a.contains(v)).cloned());
            AttributeValue::BS(out)
        }
        _ => return Err(invalid("ADD takes a number or a set matching the attribute's type")),
    })
}

fn delete(current: Option<&AttributeValue>, value: &AttributeValue) -> Result<Option<AttributeValue>, ExprError> {
    let rest = match (current, value) {
        (None, AttributeValue::SS(_) | AttributeValue::NS(_) | AttributeValue::BS(_)) => return Ok(None),
        (Some(AttributeValue::SS(a)), AttributeValue::SS(b)) => {
            AttributeValue::SS(a.iter().filter(|v| !b.contains(v)).cloned().collect())
        }
        (Some(AttributeValue::NS(a)), AttributeValue::NS(b)) => AttributeValue::NS(
            a.iter()
                .filter(|v| {
                    !b.iter()
                        .any(|w| super::values_equal(&AttributeValue::N((*v).clone()), &AttributeValue::N(w.clone())))
                })
                .cloned()
                .collect(),
        ),
        (Some(AttributeValue::BS(a)), AttributeValue::BS(b)) => {
            AttributeValue::BS(a.iter().filter(|v| !b.contains(v)).cloned().collect())
        }
        _ => return Err(invalid("DELETE takes a set matching the attribute's type")),
    };
    let empty = match &rest {
        AttributeValue::SS(v) | AttributeValue::NS(v) => v.is_empty(),
        AttributeValue::BS(v) => v.is_empty(),
        _ => false,
    };
    Ok(if empty { None } else { Some(rest) })
}

/// Writes (or removes, with `None`) the value at `path`.
fn write(map: &mut Item, path: &[PathElement], value: Option<AttributeValue>) -> Result<(), ExprError> {
    let bad_path = || invalid("the document path provided in the update expression is invalid for update");
    let Some((PathElement::Name(first), rest)) = path.split_first() else { return Err(bad_path()) };
    if rest.is_empty() {
        match value {
            Some(v) => {
                map.insert(first.clone(), v);
            }
            None => {
                map.remove(first);
            }
        }
        return Ok(());
    }
    let Some(child) = map.get_mut(first) else {
        return if value.is_none() { Ok(()) } else { Err(bad_path()) };
    };
    write_value(child, rest, value)
}

fn write_value(
    target: &mut AttributeValue,
    path: &[PathElement],
    value: Option<AttributeValue>,
) -> Result<(), ExprError> {
    let bad_path = || invalid("the document path provided in the update expression is invalid for update");
    match (target, path.split_first()) {
        (AttributeValue::M(map), Some((PathElement::Name(_), _))) => write(map, path, value),
        (AttributeValue::L(list), Some((PathElement::Index(i), rest))) => {
            let i = *i as usize;
            if rest.is_empty() {
                match value {
                    Some(v) if i < list.len() => {
                        if let Some(slot) = list.get_mut(i) {
                            *slot = v;
                        }
                    }
                    Some(v) => list.push(v), // past the end: appended, as DynamoDB does
                    None if i < list.len() => {
                        list.remove(i);
                    }
                    None => {}
                }
                Ok(())
            } else {
                match list.get_mut(i) {
                    Some(child) => write_value(child, rest, value),
                    None if value.is_none() => Ok(()),
                    None => Err(bad_path()),
                }
            }
        }
        _ => Err(bad_path()),
    }
}

/// Applies `update` to a stored item's bytes without decoding the item, when
/// the shape allows: the item's attributes are all scalars (S, N, B, BOOL,
/// NULL), and every action is `SET name = :value` of a top-level attribute
/// the item has, with a string or binary value of the same type and the same
/// length in bytes (YCSB's updates, a fixed-width field). The bytes are
/// copied once and the values overwritten in the copy: the FlatBuffers
/// layout (offsets, lengths, the size DynamoDB counts) is unchanged.
///
/// Stored bytes are a client's encoding, and FlatBuffers lets objects share
/// bytes (two attributes pointing at one string, a vtable inside a string).
/// So every byte range that reading the item touches is collected (tables,
/// vtables, the vector, names, values), and a value is overwritten only when
/// its bytes lie in no range but its own: then the copy reads exactly as the
/// item [`apply`] would make. `Ok(None)`: another shape (or a shared layout);
/// the caller decodes, applies and encodes. Attributes named in `protected`
/// (the key) are never written here.
pub fn apply_in_place(update: &Update, stored: &[u8], protected: &[&str]) -> Result<Option<Vec<u8>>, VerifyError> {
    let item = crate::verify::item(stored)?;
    let attributes = item.attributes();
    // (attribute index, where its value's bytes lie in `stored`, new bytes)
    let mut writes: Vec<(usize, Range<usize>, &[u8])> = Vec::with_capacity(update.actions.len());
    for action in &update.actions {
        let Action::Set(Path(path), SetValue::Operand(Operand::Value(value))) = action else { return Ok(None) };
        let [PathElement::Name(name)] = path.as_slice() else { return Ok(None) };
        if protected.contains(&name.as_str()) {
            return Ok(None);
        }
        let Some((index, current)) = attributes.iter().enumerate().find(|(_, a)| a.name() == name) else {
            return Ok(None);
        };
        let (old, new): (&[u8], &[u8]) = match (value, scalar_bytes(current.value())) {
            (AttributeValue::S(new), Some((fb::Value::S, old))) => (old, new.as_bytes()),
            (AttributeValue::B(new), Some((fb::Value::B, old))) => (old, new.as_slice()),
            _ => return Ok(None),
        };
        if old.len() != new.len() {
            return Ok(None);
        }
        writes.push((index, span(stored, old), new));
    }
    // Every range a reader of the item touches (value bytes tagged with
    // their attribute), each checked against the writes as it is found.
    let overlaps = |a: &Range<usize>, b: &Range<usize>| a.start < b.end && b.start < a.end;
    let mut shared = false;
    let mut region = |owner: Option<usize>, region: Range<usize>| {
        shared |= writes.iter().any(|(index, bytes, _)| owner != Some(*index) && overlaps(bytes, &region));
    };
    region(None, 0..4); // the root offset
    table_regions(&item._tab, &[(fb::Item::VT_ATTRIBUTES, 4)], &mut region);
    let elements = span(stored, attributes.bytes());
    region(None, elements.start.saturating_sub(4)..elements.end);
    for (index, attribute) in attributes.iter().enumerate() {
        table_regions(&attribute._tab, &[(fb::Attribute::VT_NAME, 4), (fb::Attribute::VT_VALUE, 4)], &mut region);
        let name = span(stored, attribute.name().as_bytes());
        region(None, name.start.saturating_sub(4)..name.end + 1); // length, bytes, NUL
        let value = attribute.value();
        table_regions(
            &value._tab,
            &[(fb::AttributeValue::VT_VALUE_TYPE, 1), (fb::AttributeValue::VT_VALUE, 4)],
            &mut region,
        );
        let Some((kind, table, bytes)) = scalar_parts(value) else { return Ok(None) }; // lists, maps, sets
        let size = if kind == fb::Value::Bool { 1 } else { 4 };
        table_regions(&table, &[(fb::S::VT_VALUE, size)], &mut region);
        if matches!(kind, fb::Value::S | fb::Value::N | fb::Value::B) {
            // Length, bytes and, for strings, the NUL.
            let bytes = span(stored, bytes);
            let nul = usize::from(kind != fb::Value::B);
            region(Some(index), bytes.start.saturating_sub(4)..bytes.end + nul);
        }
    }
    if shared {
        return Ok(None);
    }
    let mut out = stored.to_vec();
    for (_, bytes, new) in writes {
        match out.get_mut(bytes) {
            Some(slot) => slot.copy_from_slice(new),
            None => return Ok(None),
        }
    }
    Ok(Some(out))
}

// The scalar tables' one field sits in the same vtable slot.
const _: () = assert!(
    fb::S::VT_VALUE == fb::N::VT_VALUE && fb::S::VT_VALUE == fb::B::VT_VALUE && fb::S::VT_VALUE == fb::Bool::VT_VALUE
);

/// Where `part` (borrowed from `whole`) lies in it.
fn span(whole: &[u8], part: &[u8]) -> Range<usize> {
    let start = part.as_ptr().addr().saturating_sub(whole.as_ptr().addr());
    start..start + part.len()
}

/// A verified table's ranges, handed to `region`: its offset to the vtable,
/// the vtable, and the given fields (vtable slot, size in bytes) that are
/// present.
fn table_regions(
    table: &flatbuffers::Table<'_>,
    fields: &[(flatbuffers::VOffsetT, usize)],
    region: &mut impl FnMut(Option<usize>, Range<usize>),
) {
    let loc = table.loc();
    region(None, loc..loc + 4);
    let vtable = table.vtable();
    region(None, span(table.buf(), vtable.as_bytes()));
    for &(slot, size) in fields {
        let offset = usize::from(vtable.get(slot));
        if offset > 0 {
            region(None, loc + offset..loc + offset + size);
        }
    }
}

/// A scalar value's type and bytes (BOOL as one byte, NULL as none).
fn scalar_bytes<'a>(value: fb::AttributeValue<'a>) -> Option<(fb::Value, &'a [u8])> {
    scalar_parts(value).map(|(kind, _, bytes)| (kind, bytes))
}

/// A scalar value's type, its table and its bytes (BOOL as one byte, NULL
/// as none); None for lists, maps and sets.
fn scalar_parts<'a>(value: fb::AttributeValue<'a>) -> Option<(fb::Value, flatbuffers::Table<'a>, &'a [u8])> {
    let kind = value.value_type();
    let (table, bytes): (flatbuffers::Table<'a>, &'a [u8]) = match kind {
        fb::Value::S => value.value_as_s().map(|s| (s._tab, s.value().as_bytes()))?,
        fb::Value::N => value.value_as_n().map(|n| (n._tab, n.value().as_bytes()))?,
        fb::Value::B => value.value_as_b().map(|b| (b._tab, b.value().bytes()))?,
        fb::Value::Bool => value.value_as_bool().map(|b| (b._tab, if b.value() { &[1u8][..] } else { &[0u8][..] }))?,
        fb::Value::Null => value.value_as_null().map(|n| (n._tab, &[][..]))?,
        _ => return None,
    };
    Some((kind, table, bytes))
}

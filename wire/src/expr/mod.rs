//! DynamoDB condition and projection expressions: parsing (with
//! `ExpressionAttributeNames`/`Values` placeholders) into an AST, and
//! evaluation against items.
//!
//! Semantics follow DynamoDB's documentation: comparisons are between values
//! of the same type (numbers numerically, strings and binaries bytewise); a
//! comparison involving a missing attribute or mixed types is false (except
//! `<>` across types, which is true); `size` is the length of a string or
//! binary, or the number of elements of a set, list or map. UpdateExpression
//! lives in `update.rs`. Not yet here: KeyConditionExpression (the serve
//! issue).

mod lexer;
mod update;

use std::cmp::Ordering;
use std::collections::{BTreeSet, HashMap};

use crate::item::{AttributeValue, Item};
use crate::number::Decimal;
pub use lexer::{EXPRESSION_BYTES_MAX, Token, tokenize};
pub use update::{
    Action, SetValue, Update, apply as apply_update, apply_in_place as apply_update_in_place, parse_update,
};

/// Most operators and functions in one expression (DynamoDB: 300).
pub const OPERATORS_MAX: usize = 300;
/// Most operands of `IN` (DynamoDB: 100).
pub const IN_OPERANDS_MAX: usize = 100;
/// Deepest nesting of parentheses and NOT accepted.
pub const NESTING_MAX: usize = 64;

/// An invalid expression (a ValidationException).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExprError {
    /// Longer than [`EXPRESSION_BYTES_MAX`].
    #[error("expression of {len} bytes exceeds the limit of {max} bytes")]
    TooLong {
        /// Length.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// Malformed.
    #[error("invalid expression at byte {at}: {reason}")]
    Syntax {
        /// Byte offset (or token index) where it went wrong.
        at: usize,
        /// What was wrong.
        reason: &'static str,
    },
    /// A placeholder without a definition.
    #[error("expression uses {0} but it is not defined")]
    Undefined(String),
    /// A definition the expression does not use.
    #[error("{0} is defined but not used in the expression")]
    Unused(String),
    /// A well-formed expression that cannot apply (types, paths).
    #[error("{0}")]
    Invalid(String),
    /// More operators than [`OPERATORS_MAX`], or too deeply nested.
    #[error("expression is too complex: {0}")]
    TooComplex(&'static str),
}

/// One step of a document path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathElement {
    /// A map key (or top-level attribute).
    Name(String),
    /// A list index.
    Index(u32),
}

/// A document path: `a.b[2].c`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Path(pub Vec<PathElement>);

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comparator {
    /// `=`
    Eq,
    /// `<>`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

/// A value in a condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operand {
    /// An attribute of the item.
    Path(Path),
    /// An expression attribute value.
    Value(AttributeValue),
    /// `size(path)`.
    Size(Path),
}

/// A parsed condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// `a <op> b`
    Compare(Operand, Comparator, Operand),
    /// `a BETWEEN lo AND hi`
    Between(Operand, Operand, Operand),
    /// `a IN (b, c, …)`
    In(Operand, Vec<Operand>),
    /// `x AND y`
    And(Box<Condition>, Box<Condition>),
    /// `x OR y`
    Or(Box<Condition>, Box<Condition>),
    /// `NOT x`
    Not(Box<Condition>),
    /// `attribute_exists(path)`
    Exists(Path),
    /// `attribute_not_exists(path)`
    NotExists(Path),
    /// `attribute_type(path, :type)`
    Type(Path, Operand),
    /// `begins_with(path, operand)`
    BeginsWith(Operand, Operand),
    /// `contains(path, operand)`
    Contains(Operand, Operand),
}

/// Placeholder definitions, and which of them an expression used.
#[derive(Debug, Default)]
pub struct Placeholders<'a> {
    names: HashMap<&'a str, &'a str>,
    values: HashMap<&'a str, &'a AttributeValue>,
    used_names: BTreeSet<String>,
    used_values: BTreeSet<String>,
}

impl<'a> Placeholders<'a> {
    /// Definitions as given by the client (`#n` → name, `:v` → value; keys
    /// with or without their sigil).
    #[must_use]
    pub fn new(names: &'a [(String, String)], values: &'a [(String, AttributeValue)]) -> Self {
        Self {
            names: names.iter().map(|(k, v)| (k.trim_start_matches('#'), v.as_str())).collect(),
            values: values.iter().map(|(k, v)| (k.trim_start_matches(':'), v)).collect(),
            used_names: BTreeSet::new(),
            used_values: BTreeSet::new(),
        }
    }

    /// Fails on definitions no expression used (DynamoDB rejects those).
    pub fn check_all_used(&self) -> Result<(), ExprError> {
        if let Some(unused) = self.names.keys().find(|k| !self.used_names.contains(**k)) {
            return Err(ExprError::Unused(format!("#{unused}")));
        }
        if let Some(unused) = self.values.keys().find(|k| !self.used_values.contains(**k)) {
            return Err(ExprError::Unused(format!(":{unused}")));
        }
        Ok(())
    }
}

struct Parser<'p, 'a> {
    tokens: Vec<Token>,
    pos: usize,
    placeholders: &'p mut Placeholders<'a>,
    operators: usize,
    depth: usize,
}

fn keyword(token: Option<&Token>, word: &str) -> bool {
    matches!(token, Some(Token::Ident(w)) if w.eq_ignore_ascii_case(word))
}

impl Parser<'_, '_> {
    fn syntax(&self, reason: &'static str) -> ExprError {
        ExprError::Syntax { at: self.pos, reason }
    }

    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn next(&mut self) -> Option<Token> {
        let token = self.tokens.get(self.pos).cloned();
        self.pos += 1;
        token
    }

    fn expect(&mut self, want: &Token, reason: &'static str) -> Result<(), ExprError> {
        if self.peek() == Some(want) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.syntax(reason))
        }
    }

    fn count_operator(&mut self) -> Result<(), ExprError> {
        self.operators += 1;
        if self.operators > OPERATORS_MAX { Err(ExprError::TooComplex("more than 300 operators")) } else { Ok(()) }
    }

    fn condition(&mut self) -> Result<Condition, ExprError> {
        self.depth += 1;
        if self.depth > NESTING_MAX {
            return Err(ExprError::TooComplex("nested too deeply"));
        }
        let mut left = self.and()?;
        while keyword(self.peek(), "OR") {
            self.pos += 1;
            self.count_operator()?;
            left = Condition::Or(Box::new(left), Box::new(self.and()?));
        }
        self.depth -= 1;
        Ok(left)
    }

    fn and(&mut self) -> Result<Condition, ExprError> {
        let mut left = self.not()?;
        while keyword(self.peek(), "AND") {
            self.pos += 1;
            self.count_operator()?;
            left = Condition::And(Box::new(left), Box::new(self.not()?));
        }
        Ok(left)
    }

    fn not(&mut self) -> Result<Condition, ExprError> {
        if keyword(self.peek(), "NOT") {
            self.pos += 1;
            self.count_operator()?;
            self.depth += 1;
            if self.depth > NESTING_MAX {
                return Err(ExprError::TooComplex("nested too deeply"));
            }
            let inner = self.not()?;
            self.depth -= 1;
            return Ok(Condition::Not(Box::new(inner)));
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<Condition, ExprError> {
        if self.peek() == Some(&Token::Open) {
            self.pos += 1;
            let inner = self.condition()?;
            self.expect(&Token::Close, "expected ')'")?;
            return Ok(inner);
        }
        if let Some(Token::Ident(name)) = self.peek().cloned()
            && self.tokens.get(self.pos + 1) == Some(&Token::Open)
            && name != "size"
        {
            return self.function(&name);
        }
        let left = self.operand()?;
        match self.next() {
            Some(Token::Comparator(op)) => {
                self.count_operator()?;
                let cmp = match op {
                    "=" => Comparator::Eq,
                    "<>" => Comparator::Ne,
                    "<" => Comparator::Lt,
                    "<=" => Comparator::Le,
                    ">" => Comparator::Gt,
                    _ => Comparator::Ge,
                };
                Ok(Condition::Compare(left, cmp, self.operand()?))
            }
            Some(Token::Ident(w)) if w.eq_ignore_ascii_case("BETWEEN") => {
                self.count_operator()?;
                let lo = self.operand()?;
                if !keyword(self.next().as_ref(), "AND") {
                    return Err(self.syntax("expected AND in BETWEEN"));
                }
                Ok(Condition::Between(left, lo, self.operand()?))
            }
            Some(Token::Ident(w)) if w.eq_ignore_ascii_case("IN") => {
                self.count_operator()?;
                self.expect(&Token::Open, "expected '(' after IN")?;
                let mut list = vec![self.operand()?];
                while self.peek() == Some(&Token::Comma) {
                    self.pos += 1;
                    list.push(self.operand()?);
                }
                self.expect(&Token::Close, "expected ')' after the IN list")?;
                if list.len() > IN_OPERANDS_MAX {
                    return Err(ExprError::TooComplex("more than 100 operands for IN"));
                }
                Ok(Condition::In(left, list))
            }
            _ => Err(self.syntax("expected a comparator, BETWEEN or IN")),
        }
    }

    fn function(&mut self, name: &str) -> Result<Condition, ExprError> {
        self.pos += 2; // name and '('
        self.count_operator()?;
        let condition = match name {
            "attribute_exists" => Condition::Exists(self.path()?),
            "attribute_not_exists" => Condition::NotExists(self.path()?),
            "attribute_type" => {
                let path = self.path()?;
                self.expect(&Token::Comma, "expected ','")?;
                Condition::Type(path, self.operand()?)
            }
            "begins_with" | "contains" => {
                let subject = self.operand()?;
                self.expect(&Token::Comma, "expected ','")?;
                let arg = self.operand()?;
                if name == "contains" { Condition::Contains(subject, arg) } else { Condition::BeginsWith(subject, arg) }
            }
            _ => return Err(self.syntax("unknown function")),
        };
        self.expect(&Token::Close, "expected ')' after the function arguments")?;
        Ok(condition)
    }

    fn operand(&mut self) -> Result<Operand, ExprError> {
        match self.peek().cloned() {
            Some(Token::ValuePlaceholder(v)) => {
                self.pos += 1;
                let value = self.placeholders.values.get(v.as_str()).copied().cloned();
                self.placeholders.used_values.insert(v.clone());
                value.map(Operand::Value).ok_or(ExprError::Undefined(format!(":{v}")))
            }
            Some(Token::Ident(f)) if f == "size" && self.tokens.get(self.pos + 1) == Some(&Token::Open) => {
                self.pos += 2;
                self.count_operator()?;
                let path = self.path()?;
                self.expect(&Token::Close, "expected ')' after size(")?;
                Ok(Operand::Size(path))
            }
            _ => Ok(Operand::Path(self.path()?)),
        }
    }

    fn path_name(&mut self) -> Result<String, ExprError> {
        match self.next() {
            Some(Token::Ident(name)) => Ok(name),
            Some(Token::NamePlaceholder(p)) => {
                let name = self.placeholders.names.get(p.as_str()).map(|s| (*s).to_owned());
                self.placeholders.used_names.insert(p.clone());
                name.ok_or(ExprError::Undefined(format!("#{p}")))
            }
            _ => Err(self.syntax("expected an attribute name")),
        }
    }

    fn path(&mut self) -> Result<Path, ExprError> {
        let mut elements = vec![PathElement::Name(self.path_name()?)];
        loop {
            match self.peek() {
                Some(Token::Dot) => {
                    self.pos += 1;
                    elements.push(PathElement::Name(self.path_name()?));
                }
                Some(Token::Index(i)) => {
                    elements.push(PathElement::Index(*i));
                    self.pos += 1;
                }
                _ => return Ok(Path(elements)),
            }
        }
    }
}

/// Parses a condition (ConditionExpression or FilterExpression).
pub fn parse_condition(text: &str, placeholders: &mut Placeholders<'_>) -> Result<Condition, ExprError> {
    let tokens = tokenize(text)?;
    let mut parser = Parser { tokens, pos: 0, placeholders, operators: 0, depth: 0 };
    let condition = parser.condition()?;
    if parser.pos != parser.tokens.len() {
        return Err(parser.syntax("unexpected trailing input"));
    }
    Ok(condition)
}

/// Parses a ProjectionExpression: comma-separated paths.
pub fn parse_projection(text: &str, placeholders: &mut Placeholders<'_>) -> Result<Vec<Path>, ExprError> {
    let tokens = tokenize(text)?;
    let mut parser = Parser { tokens, pos: 0, placeholders, operators: 0, depth: 0 };
    let mut paths = vec![parser.path()?];
    while parser.peek() == Some(&Token::Comma) {
        parser.pos += 1;
        paths.push(parser.path()?);
    }
    if parser.pos != parser.tokens.len() {
        return Err(parser.syntax("unexpected trailing input"));
    }
    Ok(paths)
}

/// The value at `path` in `item`.
#[must_use]
pub fn resolve<'i>(item: &'i Item, path: &Path) -> Option<&'i AttributeValue> {
    let mut elements = path.0.iter();
    let mut current = match elements.next()? {
        PathElement::Name(name) => item.get(name)?,
        PathElement::Index(_) => return None,
    };
    for element in elements {
        current = match (element, current) {
            (PathElement::Name(name), AttributeValue::M(map)) => map.get(name)?,
            (PathElement::Index(i), AttributeValue::L(list)) => list.get(*i as usize)?,
            _ => return None,
        };
    }
    Some(current)
}

fn operand_value(item: &Item, operand: &Operand) -> Option<AttributeValue> {
    match operand {
        Operand::Value(v) => Some(v.clone()),
        Operand::Path(p) => resolve(item, p).cloned(),
        Operand::Size(p) => {
            let size = match resolve(item, p)? {
                AttributeValue::S(s) => s.len(),
                AttributeValue::B(b) => b.len(),
                AttributeValue::SS(v) | AttributeValue::NS(v) => v.len(),
                AttributeValue::BS(v) => v.len(),
                AttributeValue::L(v) => v.len(),
                AttributeValue::M(m) => m.len(),
                _ => return None,
            };
            Some(AttributeValue::N(size.to_string()))
        }
    }
}

/// Orders two values of the same scalar type (N, S, B); `None` otherwise.
fn order(a: &AttributeValue, b: &AttributeValue) -> Option<Ordering> {
    match (a, b) {
        (AttributeValue::N(x), AttributeValue::N(y)) => Some(Decimal::parse(x).ok()?.cmp(&Decimal::parse(y).ok()?)),
        (AttributeValue::S(x), AttributeValue::S(y)) => Some(x.as_bytes().cmp(y.as_bytes())),
        (AttributeValue::B(x), AttributeValue::B(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

/// DynamoDB equality: numbers numerically, sets regardless of order.
#[must_use]
pub fn values_equal(a: &AttributeValue, b: &AttributeValue) -> bool {
    let numbers = |v: &[String]| v.iter().filter_map(|n| Decimal::parse(n).ok()).collect::<BTreeSet<_>>();
    match (a, b) {
        (AttributeValue::N(_), AttributeValue::N(_)) => order(a, b) == Some(Ordering::Equal),
        (AttributeValue::SS(x), AttributeValue::SS(y)) => {
            x.iter().collect::<BTreeSet<_>>() == y.iter().collect::<BTreeSet<_>>()
        }
        (AttributeValue::BS(x), AttributeValue::BS(y)) => {
            x.iter().collect::<BTreeSet<_>>() == y.iter().collect::<BTreeSet<_>>()
        }
        (AttributeValue::NS(x), AttributeValue::NS(y)) => numbers(x) == numbers(y),
        (AttributeValue::L(x), AttributeValue::L(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| values_equal(p, q))
        }
        (AttributeValue::M(x), AttributeValue::M(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| values_equal(v, w)))
        }
        _ => a == b,
    }
}

fn type_name(value: &AttributeValue) -> &'static str {
    match value {
        AttributeValue::S(_) => "S",
        AttributeValue::N(_) => "N",
        AttributeValue::B(_) => "B",
        AttributeValue::Bool(_) => "BOOL",
        AttributeValue::Null => "NULL",
        AttributeValue::L(_) => "L",
        AttributeValue::M(_) => "M",
        AttributeValue::SS(_) => "SS",
        AttributeValue::NS(_) => "NS",
        AttributeValue::BS(_) => "BS",
    }
}

/// Evaluates a condition against an item (an absent item is an empty one).
#[must_use]
pub fn evaluate(condition: &Condition, item: &Item) -> bool {
    match condition {
        Condition::And(a, b) => evaluate(a, item) && evaluate(b, item),
        Condition::Or(a, b) => evaluate(a, item) || evaluate(b, item),
        Condition::Not(a) => !evaluate(a, item),
        Condition::Exists(p) => resolve(item, p).is_some(),
        Condition::NotExists(p) => resolve(item, p).is_none(),
        Condition::Type(p, t) => match (resolve(item, p), operand_value(item, t)) {
            (Some(v), Some(AttributeValue::S(t))) => type_name(v) == t,
            _ => false,
        },
        Condition::Compare(a, cmp, b) => {
            let (Some(a), Some(b)) = (operand_value(item, a), operand_value(item, b)) else { return false };
            match cmp {
                Comparator::Eq => values_equal(&a, &b),
                Comparator::Ne => !values_equal(&a, &b),
                _ => order(&a, &b).is_some_and(|o| match cmp {
                    Comparator::Lt => o == Ordering::Less,
                    Comparator::Le => o != Ordering::Greater,
                    Comparator::Gt => o == Ordering::Greater,
                    _ => o != Ordering::Less,
                }),
            }
        }
        Condition::Between(x, lo, hi) => {
            let (Some(x), Some(lo), Some(hi)) =
                (operand_value(item, x), operand_value(item, lo), operand_value(item, hi))
            else {
                return false;
            };
            order(&lo, &x).is_some_and(|o| o != Ordering::Greater)
                && order(&x, &hi).is_some_and(|o| o != Ordering::Greater)
        }
        Condition::In(x, list) => {
            let Some(x) = operand_value(item, x) else { return false };
            list.iter().filter_map(|o| operand_value(item, o)).any(|v| values_equal(&x, &v))
        }
        Condition::BeginsWith(subject, prefix) => match (operand_value(item, subject), operand_value(item, prefix)) {
            (Some(AttributeValue::S(s)), Some(AttributeValue::S(p))) => s.starts_with(&p),
            (Some(AttributeValue::B(s)), Some(AttributeValue::B(p))) => s.starts_with(&p),
            _ => false,
        },
        Condition::Contains(subject, needle) => match (operand_value(item, subject), operand_value(item, needle)) {
            (Some(AttributeValue::S(s)), Some(AttributeValue::S(n))) => s.contains(&n),
            (Some(AttributeValue::SS(set)), Some(AttributeValue::S(n))) => set.contains(&n),
            (Some(AttributeValue::BS(set)), Some(AttributeValue::B(n))) => set.contains(&n),
            (Some(AttributeValue::NS(set)), Some(n @ AttributeValue::N(_))) => {
                set.iter().any(|m| values_equal(&AttributeValue::N(m.clone()), &n))
            }
            (Some(AttributeValue::L(list)), Some(n)) => list.iter().any(|v| values_equal(v, &n)),
            _ => false,
        },
    }
}

/// Keeps only the projected paths of an item (top-level names and nested
/// map paths; list elements keep their order).
#[must_use]
pub fn project(item: &Item, paths: &[Path]) -> Item {
    let mut out = Item::new();
    for path in paths {
        if let Some(value) = resolve(item, path) {
            insert_at(&mut out, &path.0, value.clone());
        }
    }
    out
}

fn insert_at(map: &mut Item, path: &[PathElement], value: AttributeValue) {
    let Some((PathElement::Name(first), rest)) = path.split_first() else { return };
    if rest.is_empty() {
        map.insert(first.clone(), value);
        return;
    }
    let slot = map.entry(first.clone()).or_insert_with(|| match rest.first() {
        Some(PathElement::Index(_)) => AttributeValue::L(Vec::new()),
        _ => AttributeValue::M(Item::new()),
    });
    match (slot, rest.first()) {
        (AttributeValue::M(inner), Some(PathElement::Name(_))) => insert_at(inner, rest, value),
        (AttributeValue::L(list), Some(PathElement::Index(_))) if rest.len() == 1 => list.push(value),
        _ => {}
    }
}

/// The sort-key part of a KeyConditionExpression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SortKeyCondition {
    /// `sk = v`, `sk < v`, `sk <= v`, `sk > v`, `sk >= v` (not `<>`).
    Compare(Comparator, AttributeValue),
    /// `sk BETWEEN lo AND hi`.
    Between(AttributeValue, AttributeValue),
    /// `begins_with(sk, prefix)` (S or B).
    BeginsWith(AttributeValue),
}

/// A parsed KeyConditionExpression: one partition key, optionally a
/// condition on the sort key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyCondition {
    /// The partition key value.
    pub partition_key: AttributeValue,
    /// The sort-key condition.
    pub sort_key: Option<SortKeyCondition>,
}

/// Parses a KeyConditionExpression for a table keyed by `pk_name` (and
/// `sk_name`): `pk = :v [AND <sort-key condition>]`, in either order.
pub fn parse_key_condition(
    text: &str,
    placeholders: &mut Placeholders<'_>,
    pk_name: &str,
    sk_name: Option<&str>,
) -> Result<KeyCondition, ExprError> {
    let invalid = |reason: &str| ExprError::Invalid(format!("invalid KeyConditionExpression: {reason}"));
    let is_key = |path: &Path, name: &str| matches!(path.0.as_slice(), [PathElement::Name(n)] if n == name);
    let condition = parse_condition(text, placeholders)?;
    let parts = match condition {
        Condition::And(a, b) => vec![*a, *b],
        single => vec![single],
    };
    let mut partition_key = None;
    let mut sort_key = None;
    for part in parts {
        match part {
            Condition::Compare(Operand::Path(p), Comparator::Eq, Operand::Value(v)) if is_key(&p, pk_name) => {
                if partition_key.replace(v).is_some() {
                    return Err(invalid("the partition key appears twice"));
                }
            }
            Condition::Compare(Operand::Path(p), cmp, Operand::Value(v))
                if sk_name.is_some_and(|sk| is_key(&p, sk)) && cmp != Comparator::Ne =>
            {
                if sort_key.replace(SortKeyCondition::Compare(cmp, v)).is_some() {
                    return Err(invalid("more than one sort key condition"));
                }
            }
            Condition::Between(Operand::Path(p), Operand::Value(lo), Operand::Value(hi))
                if sk_name.is_some_and(|sk| is_key(&p, sk)) =>
            {
                if sort_key.replace(SortKeyCondition::Between(lo, hi)).is_some() {
                    return Err(invalid("more than one sort key condition"));
                }
            }
            Condition::BeginsWith(Operand::Path(p), Operand::Value(prefix))
                if sk_name.is_some_and(|sk| is_key(&p, sk))
                    && matches!(prefix, AttributeValue::S(_) | AttributeValue::B(_)) =>
            {
                if sort_key.replace(SortKeyCondition::BeginsWith(prefix)).is_some() {
                    return Err(invalid("more than one sort key condition"));
                }
            }
            _ => {
                return Err(invalid(
                    "use `pk = :v` and optionally one of =, <, <=, >, >=, BETWEEN or begins_with on the sort key",
                ));
            }
        }
    }
    let partition_key = partition_key.ok_or_else(|| invalid("the partition key must be compared with ="))?;
    Ok(KeyCondition { partition_key, sort_key })
}

//! Tokens of DynamoDB expressions.

use super::ExprError;

/// Longest expression accepted (DynamoDB: 4 KB).
pub const EXPRESSION_BYTES_MAX: usize = 4096;

/// A token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Token {
    /// An attribute name or keyword (case kept; keywords compare
    /// case-insensitively).
    Ident(String),
    /// `#name` placeholder (without `#`).
    NamePlaceholder(String),
    /// `:value` placeholder (without `:`).
    ValuePlaceholder(String),
    /// A list index inside `[...]`.
    Index(u32),
    /// `=`, `<>`, `<`, `<=`, `>`, `>=`.
    Comparator(&'static str),
    /// `+` or `-`.
    Arithmetic(char),
    /// `(`.
    Open,
    /// `)`.
    Close,
    /// `,`.
    Comma,
    /// `.`.
    Dot,
}

/// Splits an expression into tokens.
pub fn tokenize(text: &str) -> Result<Vec<Token>, ExprError> {
    if text.len() > EXPRESSION_BYTES_MAX {
        return Err(ExprError::TooLong { len: text.len(), max: EXPRESSION_BYTES_MAX });
    }
    let bytes = text.as_bytes();
    let mut tokens = Vec::new();
    let mut i = 0;
    let word_end = |mut j: usize| {
        while bytes.get(j).is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'-') {
            j += 1;
        }
        j
    };
    while let Some(&b) = bytes.get(i) {
        let single = |t: Token| (t, 1);
        let (token, len) = match b {
            b' ' | b'\t' | b'\n' | b'\r' => {
                i += 1;
                continue;
            }
            b'(' => single(Token::Open),
            b')' => single(Token::Close),
            b',' => single(Token::Comma),
            b'.' => single(Token::Dot),
            b'+' => single(Token::Arithmetic('+')),
            b'-' => single(Token::Arithmetic('-')),
            b'=' => single(Token::Comparator("=")),
            b'<' => match bytes.get(i + 1) {
                Some(b'>') => (Token::Comparator("<>"), 2),
                Some(b'=') => (Token::Comparator("<="), 2),
                _ => single(Token::Comparator("<")),
            },
            b'>' => match bytes.get(i + 1) {
                Some(b'=') => (Token::Comparator(">="), 2),
                _ => single(Token::Comparator(">")),
            },
            b'[' => {
                let end = (i + 1..bytes.len())
                    .find(|&j| bytes.get(j) == Some(&b']'))
                    .ok_or(ExprError::Syntax { at: i, reason: "unclosed '['" })?;
                let index = text
                    .get(i + 1..end)
                    .and_then(|s| s.trim().parse::<u32>().ok())
                    .ok_or(ExprError::Syntax { at: i, reason: "list index must be a non-negative integer" })?;
                (Token::Index(index), end + 1 - i)
            }
            b'#' | b':' => {
                let end = word_end(i + 1);
                if end == i + 1 {
                    return Err(ExprError::Syntax { at: i, reason: "empty placeholder" });
                }
                let name = text.get(i + 1..end).unwrap_or("").to_owned();
                let token = if b == b'#' { Token::NamePlaceholder(name) } else { Token::ValuePlaceholder(name) };
                (token, end - i)
            }
            b if b.is_ascii_alphabetic() || b == b'_' => {
                let mut end = i + 1;
                while bytes.get(end).is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_') {
                    end += 1;
                }
                (Token::Ident(text.get(i..end).unwrap_or("").to_owned()), end - i)
            }
            _ => return Err(ExprError::Syntax { at: i, reason: "unexpected character" }),
        };
        tokens.push(token);
        i += len;
    }
    Ok(tokens)
}

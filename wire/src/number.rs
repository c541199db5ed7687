//! DynamoDB numbers: decimal strings with up to 38 significant digits and a
//! magnitude between 1E-130 and 9.9999999999999999999999999999999999999E+125
//! (DynamoDB's documented limits). Parsed into a normalised [`Decimal`] used
//! for validation, comparison and (later) order-preserving key encoding.

use std::cmp::Ordering;

/// Most significant digits.
pub const DIGITS_MAX: usize = 38;
/// Smallest positive magnitude is 1E-130.
pub const EXPONENT_MIN: i32 = -130;
/// Largest magnitude is below 1E+126.
pub const EXPONENT_MAX: i32 = 125;
/// Longest accepted number string (digits, sign, point, exponent, and
/// leading or trailing zeros).
pub const TEXT_MAX_BYTES: usize = 256;

/// Why a number string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NumberError {
    /// Not a decimal number.
    #[error("{0:?} is not a number")]
    Syntax(String),
    /// More than 38 significant digits.
    #[error("{0:?} has more than 38 significant digits")]
    Precision(String),
    /// Outside DynamoDB's range.
    #[error("{0:?} is outside the range 1E-130 ..= 9.99…E+125")]
    Range(String),
}

/// A normalised decimal: `(-1)^negative × 0.d1d2…dn × 10^exponent`, with no
/// leading or trailing zero digits; zero has no digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Decimal {
    negative: bool,
    /// Decimal digits 0..=9, first and last non-zero.
    digits: Vec<u8>,
    /// Exponent of the leading digit's position (scientific exponent + 1).
    exponent: i32,
}

impl Decimal {
    /// Parses and checks a DynamoDB number string.
    pub fn parse(text: &str) -> Result<Self, NumberError> {
        let syntax = || NumberError::Syntax(text.chars().take(64).collect());
        if text.len() > TEXT_MAX_BYTES || text.is_empty() {
            return Err(syntax());
        }
        let (negative, rest) = match text.as_bytes().first() {
            Some(b'-') => (true, text.get(1..).unwrap_or("")),
            Some(b'+') => (false, text.get(1..).unwrap_or("")),
            _ => (false, text),
        };
        let (mantissa, exp_part) = match rest.find(['e', 'E']) {
            Some(i) => (rest.get(..i).unwrap_or(""), Some(rest.get(i + 1..).unwrap_or(""))),
            None => (rest, None),
        };
        let (int_part, frac_part) = match mantissa.find('.') {
            Some(i) => (mantissa.get(..i).unwrap_or(""), mantissa.get(i + 1..).unwrap_or("")),
            None => (mantissa, ""),
        };
        let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if (int_part.is_empty() && frac_part.is_empty()) || !all_digits(int_part) || !all_digits(frac_part) {
            return Err(syntax());
        }
        let exp: i32 = match exp_part {
            Some(e) if !e.is_empty() && e.len() <= 6 => e.parse().map_err(|_| syntax())?,
            Some(_) => return Err(syntax()),
            None => 0,
        };
        let mut digits: Vec<u8> = int_part.bytes().chain(frac_part.bytes()).map(|b| b - b'0').collect();
        let int_len = i32::try_from(int_part.len()).map_err(|_| syntax())?;
        let leading = digits.iter().take_while(|&&d| d == 0).count();
        digits.drain(..leading);
        while digits.last() == Some(&0) {
            digits.pop();
        }
        if digits.is_empty() {
            return Ok(Self { negative: false, digits, exponent: 0 });
        }
        if digits.len() > DIGITS_MAX {
            return Err(NumberError::Precision(text.chars().take(64).collect()));
        }
        let exponent = int_len - i32::try_from(leading).map_err(|_| syntax())? + exp;
        // Scientific exponent of the value is exponent - 1.
        if exponent - 1 < EXPONENT_MIN || exponent - 1 > EXPONENT_MAX {
            return Err(NumberError::Range(text.chars().take(64).collect()));
        }
        Ok(Self { negative, digits, exponent })
    }

    /// Whether this is negative (zero is not).
    #[must_use]
    pub fn is_negative(&self) -> bool {
        self.negative
    }

    /// The significant digits (0..=9), without leading or trailing zeros.
    #[must_use]
    pub fn digits(&self) -> &[u8] {
        &self.digits
    }

    /// The exponent: the value is `0.d1d2… × 10^exponent`.
    #[must_use]
    pub fn exponent(&self) -> i32 {
        self.exponent
    }

    /// Whether this is zero.
    #[must_use]
    pub fn is_zero(&self) -> bool {
        self.digits.is_empty()
    }

    /// Canonical text: plain notation when short, scientific otherwise.
    #[must_use]
    pub fn to_canonical(&self) -> String {
        if self.digits.is_empty() {
            return "0".to_owned();
        }
        let digits: String = self.digits.iter().map(|d| char::from(b'0' + d)).collect();
        let sign = if self.negative { "-" } else { "" };
        let n = i32::try_from(self.digits.len()).unwrap_or(i32::MAX);
        if (0..=40).contains(&self.exponent) && self.exponent >= n {
            let zeros = "0".repeat(usize::try_from(self.exponent - n).unwrap_or(0));
            format!("{sign}{digits}{zeros}")
        } else if self.exponent > 0 && self.exponent < n {
            let (int, frac) = digits.split_at(usize::try_from(self.exponent).unwrap_or(0));
            format!("{sign}{int}.{frac}")
        } else if self.exponent <= 0 && self.exponent > -40 {
            format!("{sign}0.{}{digits}", "0".repeat(usize::try_from(-self.exponent).unwrap_or(0)))
        } else {
            let (first, rest) = digits.split_at(1);
            let dot = if rest.is_empty() { String::new() } else { format!(".{rest}") };
            format!("{sign}{first}{dot}E{}", self.exponent - 1)
        }
    }
}

impl Decimal {
    /// `self + other`, exactly; fails when the result needs more than 38
    /// significant digits or leaves DynamoDB's range.
    pub fn add(&self, other: &Self) -> Result<Self, NumberError> {
        if self.is_zero() {
            return Ok(other.clone());
        }
        if other.is_zero() {
            return Ok(self.clone());
        }
        // value = coefficient × 10^scale, with scale = exponent − digits.
        let scale = |d: &Self| d.exponent - i32::try_from(d.digits.len()).unwrap_or(i32::MAX);
        let low = scale(self).min(scale(other));
        let widen = |d: &Self| {
            let mut c = d.digits.clone();
            c.resize(d.digits.len() + usize::try_from(scale(d) - low).unwrap_or(0), 0);
            c
        };
        let (a, b) = (widen(self), widen(other));
        let (negative, magnitude) = if self.negative == other.negative {
            (self.negative, add_magnitudes(&a, &b))
        } else {
            match compare_magnitudes(&a, &b) {
                Ordering::Equal => return Ok(Self { negative: false, digits: Vec::new(), exponent: 0 }),
                Ordering::Greater => (self.negative, sub_magnitudes(&a, &b)),
                Ordering::Less => (other.negative, sub_magnitudes(&b, &a)),
            }
        };
        let mut digits = magnitude;
        let leading = digits.iter().take_while(|&&d| d == 0).count();
        digits.drain(..leading);
        let exponent = low + i32::try_from(digits.len()).unwrap_or(i32::MAX);
        while digits.last() == Some(&0) {
            digits.pop();
        }
        let result = Self { negative, digits, exponent };
        let text = || result.to_canonical();
        if result.digits.len() > DIGITS_MAX {
            return Err(NumberError::Precision(text()));
        }
        if result.exponent - 1 < EXPONENT_MIN || result.exponent - 1 > EXPONENT_MAX {
            return Err(NumberError::Range(text()));
        }
        Ok(result)
    }

    /// `-self`.
    #[must_use]
    pub fn negated(&self) -> Self {
        Self { negative: !self.negative && !self.is_zero(), digits: self.digits.clone(), exponent: self.exponent }
    }
}

/// Compares two digit strings of the same scale as integers.
fn compare_magnitudes(a: &[u8], b: &[u8]) -> Ordering {
    let (a, b) = (strip_leading_zeros(a), strip_leading_zeros(b));
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

fn strip_leading_zeros(x: &[u8]) -> &[u8] {
    x.iter().position(|&d| d != 0).map_or(&[][..], |i| x.get(i..).unwrap_or(&[]))
}

fn add_magnitudes(a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(a.len().max(b.len()) + 1);
    let (mut i, mut j, mut carry) = (a.len(), b.len(), 0u8);
    while i > 0 || j > 0 || carry > 0 {
        let x = if i > 0 { a.get(i - 1).copied().unwrap_or(0) } else { 0 };
        let y = if j > 0 { b.get(j - 1).copied().unwrap_or(0) } else { 0 };
        let sum = x + y + carry;
        out.push(sum % 10);
        carry = sum / 10;
        i = i.saturating_sub(1);
        j = j.saturating_sub(1);
    }
    out.reverse();
    out
}

/// `a − b` for `a ≥ b` (same scale).
fn sub_magnitudes(a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(a.len());
    let (mut i, mut j, mut borrow) = (a.len(), b.len(), 0i8);
    while i > 0 {
        let x = i8::try_from(a.get(i - 1).copied().unwrap_or(0)).unwrap_or(0);
        let y = if j > 0 { i8::try_from(b.get(j - 1).copied().unwrap_or(0)).unwrap_or(0) } else { 0 };
        let mut diff = x - y - borrow;
        borrow = 0;
        if diff < 0 {
            diff += 10;
            borrow = 1;
        }
        out.push(u8::try_from(diff).unwrap_or(0));
        i -= 1;
        j = j.saturating_sub(1);
    }
    out.reverse();
    out
}

impl Ord for Decimal {
    fn cmp(&self, other: &Self) -> Ordering {
        let sign = |d: &Self| {
            if d.digits.is_empty() {
                0
            } else if d.negative {
                -1
            } else {
                1
            }
        };
        match sign(self).cmp(&sign(other)) {
            Ordering::Equal => {}
            decided => return decided,
        }
        let magnitude = self.exponent.cmp(&other.exponent).then_with(|| self.digits.cmp(&other.digits));
        if self.negative { magnitude.reverse() } else { magnitude }
    }
}

impl PartialOrd for Decimal {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        Decimal::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn numbers_normalise_and_compare_numerically() {
        assert_eq!(d("1.50"), d("1.5"));
        assert_eq!(d("0015"), d("15"));
        assert_eq!(d("1.5e1"), d("15"));
        assert_eq!(d("-0"), d("0"));
        let ordered = ["-1e10", "-2.5", "-1", "-0.001", "0", "1e-130", "0.5", "1", "1.5", "10", "9.9999e125"];
        for pair in ordered.windows(2) {
            if let [a, b] = pair {
                assert!(d(a) < d(b), "{a} < {b}");
            }
        }
        assert_eq!(d("123.45").to_canonical(), "123.45");
        assert_eq!(d("-0.0012").to_canonical(), "-0.0012");
        assert_eq!(d("1200").to_canonical(), "1200");
        assert_eq!(d("1.5E100").to_canonical(), "1.5E100");
    }

    #[test]
    fn addition_is_exact() {
        let sum = |a: &str, b: &str| d(a).add(&d(b)).map(|x| x.to_canonical());
        assert_eq!(sum("1", "2"), Ok("3".to_owned()));
        assert_eq!(sum("0.1", "0.2"), Ok("0.3".to_owned()));
        assert_eq!(sum("99.5", "0.5"), Ok("100".to_owned()));
        assert_eq!(sum("1", "-1.5"), Ok("-0.5".to_owned()));
        assert_eq!(sum("-2", "-3.25"), Ok("-5.25".to_owned()));
        assert_eq!(sum("5", "-5"), Ok("0".to_owned()));
        assert_eq!(sum("1e20", "1"), Ok("100000000000000000001".to_owned()));
        assert_eq!(sum("0", "-7"), Ok("-7".to_owned()));
        assert!(matches!(sum("1e37", "1e-5"), Err(NumberError::Precision(_))), "43 digits");
        assert!(matches!(sum("9e125", "9e125"), Err(NumberError::Range(_))));
        assert_eq!(d("3").negated().add(&d("3")).map(|x| x.is_zero()), Ok(true));
    }

    #[test]
    fn numbers_outside_dynamodb_limits_are_refused() {
        assert!(Decimal::parse("12345678901234567890123456789012345678").is_ok());
        assert!(matches!(Decimal::parse("123456789012345678901234567890123456789"), Err(NumberError::Precision(_))));
        assert!(matches!(Decimal::parse("1E126"), Err(NumberError::Range(_))));
        assert!(matches!(Decimal::parse("1E-131"), Err(NumberError::Range(_))));
        for bad in ["", "-", ".", "1e", "1.2.3", "abc", "1e1000000", " 1", "0x10", "1_0"] {
            assert!(matches!(Decimal::parse(bad), Err(NumberError::Syntax(_))), "{bad:?}");
        }
    }
}

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

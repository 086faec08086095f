//! DynamoDB numbers: exact decimals with at most 38 significant digits and a
//! magnitude in [1E-130, 1E+126), or zero. A `Number` is always kept normalized
//! (no leading or trailing zeros, one representation of zero), so the derived
//! equality and hash are numeric equality ("1" == "1.00") and the canonical text,
//! the key encoding and the codec bytes are all functions of the value alone.
//!
//! Canonical text (what the service returns): plain decimal notation when the
//! scientific exponent (the power of ten of the first significant digit) is in
//! [-38, 38], otherwise `d[.ddd]E+x` / `d[.ddd]E-x`. So 1e38 prints as a 39-digit
//! integer and 1e-38 as `0.` plus 37 zeros and a 1, while 1e39 prints `1E+39`.
//!
//! Key encoding (`encode_key`), chosen so memcmp order equals numeric order:
//! - zero: `02`
//! - positive: `03`, exponent byte, digit pairs, `00`
//! - negative: `01`, then the positive body with every byte inverted (`!b`)
//!
//! The value is 0.d1d2..dn × 10^e with d1 ≠ 0 and dn ≠ 0; the exponent byte is
//! e + 129 (e ranges over exactly [-129, 126], so it fills 0..=255); digits are
//! packed two per byte as `10*hi + lo + 1` (1..=100, an odd count padded with a
//! 0 digit) and closed by a `00` terminator that sorts below every pair byte, so
//! a shorter digit string (a smaller value at equal exponent) sorts first.
//! Inverting the whole negative body reverses that order, and the inverted
//! terminator `FF` still sorts above every inverted pair byte. At most 22 bytes.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use super::{ModelError, abbreviate};

/// The most significant digits a number may carry (DynamoDB's limit).
pub const MAX_SIGNIFICANT_DIGITS: usize = 38;

/// Smallest allowed `e` in 0.d1.. × 10^e: 0.1 × 10^-129 = 1E-130.
const MIN_EXPONENT: i64 = -129;
/// Largest allowed `e`: 0.99.. × 10^126 stays below 1E+126.
const MAX_EXPONENT: i64 = 126;
/// Written exponents are clamped here while parsing: far outside the range but
/// nowhere near i64 overflow when digit counts are added to it.
const EXPONENT_CLAMP: i64 = 1_000_000_000_000;
/// Scientific exponents in this range print as plain decimals.
const PLAIN_RANGE: std::ops::RangeInclusive<i64> = -38..=38;

const TAG_NEGATIVE: u8 = 0x01;
const TAG_ZERO: u8 = 0x02;
const TAG_POSITIVE: u8 = 0x03;

/// An exact DynamoDB number; see the module documentation for the invariants.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Number {
    negative: bool,
    /// Decimal digits 0..=9, first and last non-zero; empty for zero.
    digits: Vec<u8>,
    /// Value is 0.d1d2..dn × 10^exponent; 0 for zero. Within [-129, 126].
    exponent: i64,
}

/// A decimal in normalized form but not yet checked against DynamoDB's limits
/// (the exact sum of two numbers may exceed them).
struct Normalized {
    negative: bool,
    digits: Vec<u8>,
    exponent: i64,
}

impl Normalized {
    /// Strips leading and trailing zeros from `raw` (value 0.raw × 10^point).
    fn new(negative: bool, raw: &[u8], point: i64) -> Self {
        let Some(first) = raw.iter().position(|&d| d != 0) else {
            return Self {
                negative: false,
                digits: Vec::new(),
                exponent: 0,
            };
        };
        // A non-zero digit exists, so `rposition` finds one too.
        let last = raw.iter().rposition(|&d| d != 0).unwrap_or(first);
        Self {
            negative,
            digits: raw[first..=last].to_vec(),
            exponent: point - first as i64,
        }
    }

    /// Applies DynamoDB's limits; `text` renders the offending value for errors.
    fn into_number(self, text: impl FnOnce(&Self) -> String) -> Result<Number, ModelError> {
        if !self.digits.is_empty() {
            if !(MIN_EXPONENT..=MAX_EXPONENT).contains(&self.exponent) {
                return Err(ModelError::NumberRange { text: text(&self) });
            }
            if self.digits.len() > MAX_SIGNIFICANT_DIGITS {
                return Err(ModelError::NumberPrecision {
                    digits: self.digits.len(),
                    text: text(&self),
                });
            }
        }
        Ok(Number {
            negative: self.negative,
            digits: self.digits,
            exponent: self.exponent,
        })
    }
}

impl Number {
    /// The number zero.
    pub fn zero() -> Self {
        Self {
            negative: false,
            digits: Vec::new(),
            exponent: 0,
        }
    }

    pub fn is_zero(&self) -> bool {
        self.digits.is_empty()
    }

    /// True for values below zero (zero itself is never negative).
    pub fn is_negative(&self) -> bool {
        self.negative
    }

    /// Significant digits after stripping leading and trailing zeros (0 for zero).
    pub fn significant_digits(&self) -> usize {
        self.digits.len()
    }

    /// Bytes this number counts for in DynamoDB's item size: one per two
    /// significant digits, plus one, plus one more for a negative value (the
    /// sign byte in DynamoDB's internal format). An approximation, as AWS says.
    pub fn stored_size(&self) -> usize {
        self.digits.len().div_ceil(2) + 1 + usize::from(self.negative)
    }

    /// The exact sum, as UpdateItem's ADD needs. Fails, naming the exact result,
    /// when it does not fit DynamoDB's 38 digits or magnitude range.
    pub fn checked_add(&self, other: &Number) -> Result<Number, ModelError> {
        if self.is_zero() {
            return Ok(other.clone());
        }
        if other.is_zero() {
            return Ok(self.clone());
        }
        // Align both on a common digit grid: index j has place value
        // 10^(top-1-j); one extra leading slot absorbs a carry.
        let top = self.exponent.max(other.exponent) + 1;
        let bottom = (self.exponent - self.digits.len() as i64)
            .min(other.exponent - other.digits.len() as i64);
        let width = (top - bottom) as usize;
        let a = self.aligned(top, width);
        let b = other.aligned(top, width);
        let (negative, magnitude) = if self.negative == other.negative {
            (self.negative, add_digits(&a, &b))
        } else {
            // Same-width big-endian digit vectors compare like their values.
            match a.cmp(&b) {
                Ordering::Equal => return Ok(Number::zero()),
                Ordering::Greater => (self.negative, sub_digits(&a, &b)),
                Ordering::Less => (other.negative, sub_digits(&b, &a)),
            }
        };
        Normalized::new(negative, &magnitude, top)
            .into_number(|n| format_decimal(n.negative, &n.digits, n.exponent))
    }

    /// Digits placed on a grid of `width` slots whose first slot is 10^(top-1).
    fn aligned(&self, top: i64, width: usize) -> Vec<u8> {
        let mut grid = vec![0; width];
        let start = (top - self.exponent) as usize;
        grid[start..start + self.digits.len()].copy_from_slice(&self.digits);
        grid
    }

    /// Order-preserving encoding; see the module documentation for the layout.
    pub fn encode_key(&self) -> Vec<u8> {
        if self.is_zero() {
            return vec![TAG_ZERO];
        }
        let mut out = Vec::with_capacity(3 + self.digits.len().div_ceil(2));
        out.push(if self.negative {
            TAG_NEGATIVE
        } else {
            TAG_POSITIVE
        });
        // In range by the type's invariant: 0..=255.
        out.push((self.exponent - MIN_EXPONENT) as u8);
        for pair in self.digits.chunks(2) {
            let hi = pair[0];
            let lo = pair.get(1).copied().unwrap_or(0);
            out.push(hi * 10 + lo + 1);
        }
        out.push(0);
        if self.negative {
            for byte in &mut out[1..] {
                *byte = !*byte;
            }
        }
        out
    }

    /// Inverse of [`Number::encode_key`]. Accepts only canonical encodings, so
    /// two different byte strings never decode to the same number (a storage key
    /// must identify exactly one item).
    pub fn decode_key(bytes: &[u8]) -> Result<Number, ModelError> {
        let corrupt = |why: &str| ModelError::Corrupt {
            reason: format!("number key encoding {}: {why}", hex(bytes)),
        };
        let (negative, body) = match bytes.split_first() {
            Some((&TAG_ZERO, [])) => return Ok(Number::zero()),
            Some((&TAG_POSITIVE, body)) => (false, body.to_vec()),
            Some((&TAG_NEGATIVE, body)) => (true, body.iter().map(|b| !b).collect()),
            _ => return Err(corrupt("unknown sign tag or stray bytes")),
        };
        let Some((&exponent_byte, rest)) = body.split_first() else {
            return Err(corrupt("missing exponent"));
        };
        let Some((&0, pairs)) = rest.split_last() else {
            return Err(corrupt("missing terminator"));
        };
        if pairs.is_empty() || pairs.len() > MAX_SIGNIFICANT_DIGITS.div_ceil(2) {
            return Err(corrupt("wrong digit count"));
        }
        let mut digits = Vec::with_capacity(pairs.len() * 2);
        for &pair in pairs {
            if !(1..=100).contains(&pair) {
                return Err(corrupt("digit pair out of range"));
            }
            digits.push((pair - 1) / 10);
            digits.push((pair - 1) % 10);
        }
        if digits.last() == Some(&0) {
            digits.pop(); // padding of an odd digit count
        }
        if digits.first() == Some(&0) || digits.last() == Some(&0) {
            return Err(corrupt("non-canonical leading or trailing zero"));
        }
        Ok(Number {
            negative,
            digits,
            exponent: i64::from(exponent_byte) + MIN_EXPONENT,
        })
    }
}

fn add_digits(a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut out = vec![0; a.len()];
    let mut carry = 0;
    for i in (0..a.len()).rev() {
        let sum = a[i] + b[i] + carry;
        out[i] = sum % 10;
        carry = sum / 10;
    }
    out // the caller's spare leading slot holds any final carry
}

/// `a - b` for same-width digit vectors with `a > b`.
fn sub_digits(a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut out = vec![0; a.len()];
    let mut borrow = 0;
    for i in (0..a.len()).rev() {
        let subtrahend = b[i] + borrow;
        if a[i] >= subtrahend {
            out[i] = a[i] - subtrahend;
            borrow = 0;
        } else {
            out[i] = a[i] + 10 - subtrahend;
            borrow = 1;
        }
    }
    out
}

/// Canonical text of a normalized decimal of any length (also used to show
/// an out-of-limits sum in an error).
fn format_decimal(negative: bool, digits: &[u8], exponent: i64) -> String {
    if digits.is_empty() {
        return "0".to_owned();
    }
    let mut out = String::with_capacity(digits.len() + 48);
    if negative {
        out.push('-');
    }
    let ch = |d: &u8| char::from(b'0' + d);
    let scientific = exponent - 1;
    if PLAIN_RANGE.contains(&scientific) {
        if exponent > 0 {
            let int_len = exponent as usize;
            out.extend(digits.iter().take(int_len).map(ch));
            out.extend(std::iter::repeat_n(
                '0',
                int_len.saturating_sub(digits.len()),
            ));
            if digits.len() > int_len {
                out.push('.');
                out.extend(digits[int_len..].iter().map(ch));
            }
        } else {
            out.push_str("0.");
            out.extend(std::iter::repeat_n('0', (-exponent) as usize));
            out.extend(digits.iter().map(ch));
        }
    } else {
        out.push(ch(&digits[0]));
        if digits.len() > 1 {
            out.push('.');
            out.extend(digits[1..].iter().map(ch));
        }
        out.push_str(&format!(
            "E{}{}",
            if scientific < 0 { '-' } else { '+' },
            scientific.abs()
        ));
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl FromStr for Number {
    type Err = ModelError;

    /// Parses `[+|-]digits[.digits][(e|E)[+|-]digits]`; at least one mantissa
    /// digit, no whitespace, no NaN or infinity (DynamoDB has neither).
    fn from_str(text: &str) -> Result<Self, ModelError> {
        let invalid = || ModelError::InvalidNumber {
            text: abbreviate(text),
        };
        let bytes = text.as_bytes();
        let (negative, mut rest) = match bytes.split_first() {
            Some((b'-', rest)) => (true, rest),
            Some((b'+', rest)) => (false, rest),
            _ => (false, bytes),
        };
        let mut digits = Vec::with_capacity(rest.len());
        let mut int_digits: i64 = 0;
        let mut seen_point = false;
        while let Some((&b, tail)) = rest.split_first() {
            match b {
                b'0'..=b'9' => {
                    digits.push(b - b'0');
                    if !seen_point {
                        int_digits += 1;
                    }
                }
                b'.' if !seen_point => seen_point = true,
                b'e' | b'E' => break,
                _ => return Err(invalid()),
            }
            rest = tail;
        }
        if digits.is_empty() {
            return Err(invalid());
        }
        let mut exponent: i64 = 0;
        if let Some((_, after_e)) = rest.split_first() {
            let (exponent_negative, exponent_digits) = match after_e.split_first() {
                Some((b'-', tail)) => (true, tail),
                Some((b'+', tail)) => (false, tail),
                _ => (false, after_e),
            };
            if exponent_digits.is_empty() {
                return Err(invalid());
            }
            for &b in exponent_digits {
                if !b.is_ascii_digit() {
                    return Err(invalid());
                }
                exponent = (exponent * 10 + i64::from(b - b'0')).min(EXPONENT_CLAMP);
            }
            if exponent_negative {
                exponent = -exponent;
            }
        }
        Normalized::new(negative, &digits, int_digits + exponent).into_number(|_| abbreviate(text))
    }
}

impl fmt::Display for Number {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_decimal(self.negative, &self.digits, self.exponent))
    }
}

impl fmt::Debug for Number {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Number({self})")
    }
}

impl Ord for Number {
    fn cmp(&self, other: &Self) -> Ordering {
        let class = |n: &Number| match (n.is_zero(), n.negative) {
            (true, _) => 1,
            (false, true) => 0,
            (false, false) => 2,
        };
        match class(self).cmp(&class(other)) {
            Ordering::Equal => {
                // Normalized digits: a larger exponent is a larger magnitude, and
                // at equal exponents the digit strings compare lexicographically
                // (a proper prefix is the smaller value).
                let magnitude = self
                    .exponent
                    .cmp(&other.exponent)
                    .then_with(|| self.digits.cmp(&other.digits));
                if self.negative {
                    magnitude.reverse()
                } else {
                    magnitude
                }
            }
            order => order,
        }
    }
}

impl PartialOrd for Number {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl From<i64> for Number {
    fn from(value: i64) -> Self {
        let digits: Vec<u8> = value
            .unsigned_abs()
            .to_string()
            .bytes()
            .map(|b| b - b'0')
            .collect();
        // At most 20 digits: always within DynamoDB's limits.
        let n = Normalized::new(value < 0, &digits, digits.len() as i64);
        Number {
            negative: n.negative,
            digits: n.digits,
            exponent: n.exponent,
        }
    }
}

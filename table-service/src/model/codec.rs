//! Deterministic binary codec for attribute maps (the non-key attributes, which
//! are encrypted as one blob, so equal items must give equal bytes).
//!
//! Layout (all lengths and counts are unsigned LEB128, minimal form, ≤ u32::MAX):
//! ```text
//! blob   = 01 map                       version byte, then the attributes
//! map    = count { len name value }*    names UTF-8, strictly ascending bytes
//! value  = 01 len utf8                  S
//!        | 02 len numkey                N  (Number::encode_key bytes)
//!        | 03 len bytes                 B
//!        | 04 (00|01)                   BOOL
//!        | 05                           NULL
//!        | 06 map                       M
//!        | 07 count value*              L
//!        | 08 count { len utf8 }*       SS, strictly ascending bytes
//!        | 09 count { len numkey }*     NS, strictly ascending bytes (= numeric)
//!        | 0a count { len bytes }*      BS, strictly ascending bytes
//! ```
//! The decoder accepts exactly the canonical form: it rejects trailing bytes,
//! unknown tags, bad UTF-8, non-minimal varints, duplicate or unordered names and
//! set members, non-canonical numbers and nesting deeper than [`MAX_DEPTH`], so
//! every blob it accepts re-encodes to the same bytes. It is bounded in recursion
//! and never trusts a count to pre-allocate. Empty sets and empty names decode
//! fine: the codec is a faithful serializer; `validate_item` is the policy.

use std::collections::BTreeSet;

use super::{AttributeValue, Item, MAX_DEPTH, ModelError, Number, Set, SetMember};

/// The first byte of every encoded blob.
pub const CODEC_VERSION: u8 = 1;

const TAG_S: u8 = 0x01;
const TAG_N: u8 = 0x02;
const TAG_B: u8 = 0x03;
const TAG_BOOL: u8 = 0x04;
const TAG_NULL: u8 = 0x05;
const TAG_M: u8 = 0x06;
const TAG_L: u8 = 0x07;
const TAG_SS: u8 = 0x08;
const TAG_NS: u8 = 0x09;
const TAG_BS: u8 = 0x0a;

/// Encodes attributes canonically. Meant for validated items (≤ 400 KiB, depth
/// ≤ 32): lengths above u32::MAX or deeper nesting would encode but not decode.
pub fn encode_attributes(attributes: &Item) -> Vec<u8> {
    let mut out = vec![CODEC_VERSION];
    put_map(attributes, &mut out);
    out
}

fn put_varint(mut n: u64, out: &mut Vec<u8>) {
    while n >= 0x80 {
        out.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn put_len(n: usize, out: &mut Vec<u8>) {
    put_varint(n as u64, out);
}

fn put_bytes(bytes: &[u8], out: &mut Vec<u8>) {
    put_len(bytes.len(), out);
    out.extend_from_slice(bytes);
}

fn put_map(map: &Item, out: &mut Vec<u8>) {
    put_len(map.len(), out);
    for (name, value) in map {
        put_bytes(name.as_bytes(), out);
        put_value(value, out);
    }
}

fn put_value(value: &AttributeValue, out: &mut Vec<u8>) {
    match value {
        AttributeValue::S(s) => {
            out.push(TAG_S);
            put_bytes(s.as_bytes(), out);
        }
        AttributeValue::N(n) => {
            out.push(TAG_N);
            put_bytes(&n.encode_key(), out);
        }
        AttributeValue::B(b) => {
            out.push(TAG_B);
            put_bytes(b, out);
        }
        AttributeValue::Bool(b) => out.extend_from_slice(&[TAG_BOOL, u8::from(*b)]),
        AttributeValue::Null => out.push(TAG_NULL),
        AttributeValue::M(map) => {
            out.push(TAG_M);
            put_map(map, out);
        }
        AttributeValue::L(list) => {
            out.push(TAG_L);
            put_len(list.len(), out);
            for item in list {
                put_value(item, out);
            }
        }
        AttributeValue::Ss(set) => put_set(TAG_SS, set, |s| s.as_bytes().to_vec(), out),
        AttributeValue::Ns(set) => put_set(TAG_NS, set, Number::encode_key, out),
        AttributeValue::Bs(set) => put_set(TAG_BS, set, Clone::clone, out),
    }
}

/// Set iteration order equals the byte order of the member encodings (UTF-8
/// order, numeric order through the order-preserving number encoding, byte
/// order), so members come out strictly ascending as the decoder demands.
fn put_set<T: SetMember>(tag: u8, set: &Set<T>, encode: impl Fn(&T) -> Vec<u8>, out: &mut Vec<u8>) {
    out.push(tag);
    put_len(set.as_btree_set().len(), out);
    for member in set.as_btree_set() {
        put_bytes(&encode(member), out);
    }
}

/// Decodes a blob produced by [`encode_attributes`]; any other input is an
/// error, never a panic.
pub fn decode_attributes(bytes: &[u8]) -> Result<Item, ModelError> {
    let mut reader = Reader { bytes, pos: 0 };
    let version = reader.byte()?;
    if version != CODEC_VERSION {
        return Err(reader.corrupt(format!(
            "unsupported codec version {version} (this build reads version {CODEC_VERSION})"
        )));
    }
    let map = reader.map(0)?;
    if reader.pos != bytes.len() {
        return Err(reader.corrupt(format!("{} trailing bytes", bytes.len() - reader.pos)));
    }
    Ok(map)
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn corrupt(&self, what: String) -> ModelError {
        ModelError::Corrupt {
            reason: format!("attribute blob at byte {}: {what}", self.pos),
        }
    }

    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn byte(&mut self) -> Result<u8, ModelError> {
        let Some(&b) = self.bytes.get(self.pos) else {
            return Err(self.corrupt("truncated".to_owned()));
        };
        self.pos += 1;
        Ok(b)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ModelError> {
        if n > self.remaining() {
            return Err(self.corrupt(format!("length {n} runs past the end")));
        }
        let slice = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(slice)
    }

    /// Minimal unsigned LEB128 up to u32::MAX (at most 5 bytes).
    fn varint(&mut self) -> Result<usize, ModelError> {
        let mut value: u64 = 0;
        for i in 0..5 {
            let b = self.byte()?;
            value |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                if b == 0 && i > 0 {
                    return Err(self.corrupt("non-minimal length".to_owned()));
                }
                return match u32::try_from(value) {
                    Ok(v) => Ok(v as usize),
                    Err(_) => Err(self.corrupt("length above u32::MAX".to_owned())),
                };
            }
        }
        Err(self.corrupt("length longer than 5 bytes".to_owned()))
    }

    /// A count of things that each take at least one byte: more than the bytes
    /// left cannot be valid, and checking early keeps loops short.
    fn count(&mut self) -> Result<usize, ModelError> {
        let n = self.varint()?;
        if n > self.remaining() {
            return Err(self.corrupt(format!("count {n} exceeds the bytes left")));
        }
        Ok(n)
    }

    fn length_prefixed(&mut self) -> Result<&'a [u8], ModelError> {
        let n = self.varint()?;
        self.take(n)
    }

    fn string(&mut self) -> Result<String, ModelError> {
        let start = self.pos;
        let raw = self.length_prefixed()?;
        match std::str::from_utf8(raw) {
            Ok(s) => Ok(s.to_owned()),
            Err(_) => {
                self.pos = start;
                Err(self.corrupt("string is not valid UTF-8".to_owned()))
            }
        }
    }

    fn number(&mut self) -> Result<Number, ModelError> {
        let raw = self.length_prefixed()?;
        Number::decode_key(raw)
    }

    /// `depth`: containers enclosing this map (0 for the top-level attributes).
    fn map(&mut self, depth: usize) -> Result<Item, ModelError> {
        let count = self.count()?;
        let mut map = Item::new();
        for _ in 0..count {
            let name = self.string()?;
            if let Some((last, _)) = map.last_key_value()
                && *last >= name
            {
                return Err(self.corrupt("attribute names duplicated or out of order".to_owned()));
            }
            let value = self.value(depth)?;
            map.insert(name, value);
        }
        Ok(map)
    }

    /// `depth`: containers enclosing this value.
    fn value(&mut self, depth: usize) -> Result<AttributeValue, ModelError> {
        let tag = self.byte()?;
        Ok(match tag {
            TAG_S => AttributeValue::S(self.string()?),
            TAG_N => AttributeValue::N(self.number()?),
            TAG_B => AttributeValue::B(self.length_prefixed()?.to_vec()),
            TAG_BOOL => match self.byte()? {
                0 => AttributeValue::Bool(false),
                1 => AttributeValue::Bool(true),
                other => return Err(self.corrupt(format!("boolean byte {other:#04x}"))),
            },
            TAG_NULL => AttributeValue::Null,
            TAG_M | TAG_L if depth + 1 > MAX_DEPTH => {
                return Err(self.corrupt(format!("nesting deeper than {MAX_DEPTH} levels")));
            }
            TAG_M => AttributeValue::M(self.map(depth + 1)?),
            TAG_L => {
                let count = self.count()?;
                let mut list = Vec::new();
                for _ in 0..count {
                    list.push(self.value(depth + 1)?);
                }
                AttributeValue::L(list)
            }
            TAG_SS => AttributeValue::Ss(self.set(Reader::string)?),
            TAG_NS => AttributeValue::Ns(self.set(Reader::number)?),
            TAG_BS => AttributeValue::Bs(self.set(|r| Ok(r.length_prefixed()?.to_vec()))?),
            other => {
                self.pos -= 1;
                return Err(self.corrupt(format!("unknown value tag {other:#04x}")));
            }
        })
    }

    /// Members must be strictly ascending in their encoded bytes, which is the
    /// canonical order for all three member types.
    fn set<T: SetMember>(
        &mut self,
        member: impl Fn(&mut Self) -> Result<T, ModelError>,
    ) -> Result<Set<T>, ModelError> {
        let count = self.count()?;
        let mut set = BTreeSet::new();
        let mut previous: Option<&[u8]> = None;
        for _ in 0..count {
            let start = self.pos;
            let value = member(self)?;
            let encoded = &self.bytes[start..self.pos];
            // Compare the member bytes after the length prefix: with the prefix
            // included, a shorter member would always sort first.
            let body = skip_varint(encoded);
            if previous.is_some_and(|p| p >= body) {
                return Err(self.corrupt("set members duplicated or out of order".to_owned()));
            }
            previous = Some(body);
            set.insert(value);
        }
        Ok(Set::from(set))
    }
}

/// The bytes after a (valid, already decoded) LEB128 prefix.
fn skip_varint(bytes: &[u8]) -> &[u8] {
    let prefix = bytes
        .iter()
        .position(|b| b & 0x80 == 0)
        .map_or(bytes.len(), |i| i + 1);
    &bytes[prefix..]
}

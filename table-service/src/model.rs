//! The item model of the table service: DynamoDB-style attribute values, their
//! validation and size accounting, the key schema that turns an item's key
//! attributes into storage-ordered bytes, and the deterministic binary codec for
//! the non-key attributes (the bytes that get encrypted). Everything here is pure
//! and synchronous so the storage and crypto layers can rely on one canonical
//! form: equal items always produce equal key bytes and equal attribute bytes.

use std::collections::BTreeMap;

mod codec;
mod key;
mod number;
mod value;

#[cfg(test)]
mod tests;

pub use codec::{CODEC_VERSION, decode_attributes, encode_attributes};
pub use key::{
    ItemKey, KeySchema, MAX_KEY_NAME_BYTES, MAX_PARTITION_KEY_BYTES, MAX_SORT_KEY_BYTES,
    ScalarType, join_item, split_item,
};
pub use number::{MAX_SIGNIFICANT_DIGITS, Number};
pub use value::{
    AttributeValue, BinarySet, MAX_ATTRIBUTE_NAME_BYTES, MAX_DEPTH, MAX_ITEM_BYTES, NumberSet, Set,
    SetMember, StringSet, check_name as check_attribute_name, item_size, validate_item,
};

/// An item (or a key map, or the non-key part of an item): attribute name to value.
/// A `BTreeMap` so iteration, and therefore encoding, is in name order.
pub type Item = BTreeMap<String, AttributeValue>;

/// Everything that can go wrong in the model. Messages follow DynamoDB's wording
/// where DynamoDB has one, and always say what the caller has to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    #[error(
        "Number {text:?} is not a valid number: write it as [+|-]digits[.digits][e[+|-]digits], e.g. 7.5, -0.001 or 1e10"
    )]
    InvalidNumber { text: String },

    #[error(
        "Number {text} has {digits} significant digits: at most 38 are supported, round it to 38 digits"
    )]
    NumberPrecision { text: String, digits: usize },

    #[error("Number {text} is out of range: magnitude must be below 1E+126 and at least 1E-130")]
    NumberRange { text: String },

    #[error(
        "One or more parameter values were invalid: Input collection contains duplicates: {member} appears more than once, list each set member once"
    )]
    DuplicateSetMember { member: String },

    #[error(
        "empty set is not allowed for attribute {path}: omit the attribute or give the set at least one member"
    )]
    EmptySet { path: String },

    #[error(
        "One or more parameter values were invalid: attribute name {name:?} is {len} bytes long: names must be 1 to 65535 bytes"
    )]
    AttributeNameLength { name: String, len: usize },

    #[error(
        "One or more parameter values were invalid: attribute {path} is nested more than 32 levels deep: flatten the document"
    )]
    NestingTooDeep { path: String },

    #[error(
        "Item size has exceeded the maximum allowed size: the item is {size} bytes, the limit is 409600 bytes (400 KiB); move large values elsewhere"
    )]
    ItemTooLarge { size: usize },

    #[error("One or more parameter values were invalid: Missing the key {name} in the item")]
    MissingKey { name: String },

    #[error(
        "One or more parameter values were invalid: Type mismatch for key {name} expected: {expected} actual: {actual}"
    )]
    KeyTypeMismatch {
        name: String,
        expected: ScalarType,
        actual: &'static str,
    },

    #[error(
        "One or more parameter values are not valid. The AttributeValue for a key attribute cannot contain an empty {kind} value. Key: {name}"
    )]
    EmptyKeyValue { name: String, kind: &'static str },

    #[error(
        "One or more parameter values were invalid: Size of {role} key {name} is {size} bytes, which exceeds the maximum size limit of {limit} bytes"
    )]
    KeyTooLarge {
        role: &'static str,
        name: String,
        size: usize,
        limit: usize,
    },

    #[error("The provided key element does not match the schema: {detail}")]
    KeySchemaMismatch { detail: String },

    #[error("invalid key schema: {reason}")]
    InvalidKeySchema { reason: String },

    #[error(
        "stored item data is corrupt: {reason}; the record cannot be read and must be restored from a backup"
    )]
    Corrupt { reason: String },
}

pub(crate) use lockbox_proto::status_message::abbreviate;

//! Canonical encoding of an encryption context, the exact bytes that are
//! authenticated as AAD.
//!
//! Pairs are sorted by key bytes and every field is length-prefixed, so two
//! different contexts can never encode alike: `{"a":"bc"}` and `{"ab":"c"}`
//! differ, which plain concatenation would not guarantee.

use std::collections::BTreeMap;

/// Most pairs one context may hold.
pub const MAX_PAIRS: usize = 64;
/// Most bytes of keys and values together.
pub const MAX_BYTES: usize = 8 * 1024;

/// An encryption context as requests carry it. `BTreeMap` orders keys by
/// their UTF-8 bytes, which is the canonical order.
pub type EncryptionContext = BTreeMap<String, String>;

/// Why a context was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContextError {
    #[error("encryption context has {0} pairs; at most {MAX_PAIRS} are allowed")]
    TooManyPairs(usize),
    #[error("encryption context is {0} bytes; at most {MAX_BYTES} are allowed")]
    TooLarge(usize),
    #[error("encryption context keys must not be empty")]
    EmptyKey,
    #[error(
        "encryption context keys {0:?} and {1:?} differ only by case, which policy conditions (case-insensitive, as in AWS) cannot tell apart; use one of them"
    )]
    KeysDifferOnlyByCase(String, String),
}

/// Checks the size limits of a context.
pub fn validate(context: &EncryptionContext) -> Result<(), ContextError> {
    if context.len() > MAX_PAIRS {
        return Err(ContextError::TooManyPairs(context.len()));
    }
    if context.keys().any(String::is_empty) {
        return Err(ContextError::EmptyKey);
    }
    let size: usize = context.iter().map(|(k, v)| k.len() + v.len()).sum();
    if size > MAX_BYTES {
        return Err(ContextError::TooLarge(size));
    }
    Ok(())
}

/// [`validate`], for a context a new ciphertext is bound to: also no two
/// keys that differ only by case. (A ciphertext made before this rule still
/// opens with its context.)
pub fn validate_new(context: &EncryptionContext) -> Result<(), ContextError> {
    validate(context)?;
    let mut seen: std::collections::HashMap<String, &String> =
        std::collections::HashMap::with_capacity(context.len());
    for key in context.keys() {
        if let Some(other) = seen.insert(key.to_lowercase(), key) {
            return Err(ContextError::KeysDifferOnlyByCase(
                other.clone(),
                key.clone(),
            ));
        }
    }
    Ok(())
}

/// `u32 count || (u32 len || key || u32 len || value)*`, big-endian lengths,
/// pairs in key-byte order.
pub fn canonical(context: &EncryptionContext) -> Vec<u8> {
    let size: usize = context.iter().map(|(k, v)| 8 + k.len() + v.len()).sum();
    let mut out = Vec::with_capacity(4 + size);
    out.extend_from_slice(&(context.len() as u32).to_be_bytes());
    for (k, v) in context {
        out.extend_from_slice(&(k.len() as u32).to_be_bytes());
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(&(v.len() as u32).to_be_bytes());
        out.extend_from_slice(v.as_bytes());
    }
    out
}

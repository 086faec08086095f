//! The stored record shape and the line hashing.
//!
//! The record's own `hash` is computed over exact bytes, not over a
//! re-serialization, so that verification does not depend on serde_json
//! producing byte-identical output forever: the writer hashes what it wrote,
//! the verifier hashes what it reads.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{AuditError, AuditEvent};

/// What precedes the hash value at the end of every line.
const HASH_KEY: &[u8] = b",\"hash\":\"";
/// What follows the hash value: closing quote and brace.
const HASH_END: &[u8] = b"\"}";
const HEX_LEN: usize = 64;
/// `,"hash":"<64 hex>"}`
const HASH_FIELD_LEN: usize = HASH_KEY.len() + HEX_LEN + HASH_END.len();

/// One stored record. Field order here *is* the on-disk key order, which is
/// why the event's fields are spelled out instead of flattened: adding a field
/// to [`AuditEvent`] then fails to compile in [`StoredRecord::new`] rather
/// than silently changing the format.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StoredRecord {
    pub(crate) sequence: u64,
    pub(crate) event_id: String,
    pub(crate) event_time: String,
    pub(crate) request_id: String,
    pub(crate) event_name: String,
    pub(crate) principal: Option<String>,
    pub(crate) via_service: Option<String>,
    pub(crate) source_address: Option<String>,
    pub(crate) key_id: Option<String>,
    pub(crate) key_version: Option<u32>,
    pub(crate) encryption_context: Option<BTreeMap<String, String>>,
    pub(crate) grant_id: Option<String>,
    pub(crate) decision: String,
    pub(crate) matched_statements: Vec<String>,
    pub(crate) error_code: Option<String>,
    pub(crate) error_message: Option<String>,
    pub(crate) resources: Vec<String>,
    /// Written only when the call had conditions, so records of calls
    /// without them are as before.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) conditions: Vec<super::AuditCondition>,
    /// Written only for ReEncrypt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) source: Option<super::AuditSource>,
    pub(crate) previous_hash: String,
    /// Never serialized by serde: [`encode_line`] appends it by hand after
    /// hashing the rest. Required when parsing.
    #[serde(skip_serializing)]
    pub(crate) hash: String,
}

impl StoredRecord {
    pub(crate) fn new(
        sequence: u64,
        event_id: String,
        event_time: String,
        event: AuditEvent,
        previous_hash: &[u8; 32],
    ) -> StoredRecord {
        let AuditEvent {
            request_id,
            event_name,
            principal,
            via_service,
            source_address,
            key_id,
            key_version,
            encryption_context,
            grant_id,
            decision,
            matched_statements,
            error_code,
            error_message,
            resources,
            conditions,
            source,
        } = event;
        StoredRecord {
            sequence,
            event_id,
            event_time,
            request_id,
            event_name,
            principal,
            via_service,
            source_address,
            key_id,
            key_version,
            encryption_context,
            grant_id,
            decision,
            matched_statements,
            error_code,
            error_message,
            resources,
            conditions,
            source,
            previous_hash: hash_hex(previous_hash).into_string(),
            hash: String::new(),
        }
    }

    /// The caller's part of the record.
    #[cfg(test)]
    pub(crate) fn event(&self) -> AuditEvent {
        AuditEvent {
            request_id: self.request_id.clone(),
            event_name: self.event_name.clone(),
            principal: self.principal.clone(),
            via_service: self.via_service.clone(),
            source_address: self.source_address.clone(),
            key_id: self.key_id.clone(),
            key_version: self.key_version,
            encryption_context: self.encryption_context.clone(),
            grant_id: self.grant_id.clone(),
            decision: self.decision.clone(),
            matched_statements: self.matched_statements.clone(),
            error_code: self.error_code.clone(),
            error_message: self.error_message.clone(),
            resources: self.resources.clone(),
            conditions: self.conditions.clone(),
            source: self.source.clone(),
        }
    }
}

/// Appends `record` as one complete line (hash field and `\n` included) to
/// `out` and returns its record hash. On error `out` is left as it was.
pub(crate) fn encode_line(
    record: &StoredRecord,
    out: &mut Vec<u8>,
) -> Result<[u8; 32], AuditError> {
    let start = out.len();
    if let Err(e) = serde_json::to_writer(&mut *out, record) {
        out.truncate(start);
        return Err(AuditError::Encode(e.to_string()));
    }
    // serde_json writes a struct as one compact object, so the text ends with
    // the object's closing brace, which the hash field now replaces.
    if out.last() != Some(&b'}') {
        out.truncate(start);
        return Err(AuditError::Encode(
            "record did not serialize as a JSON object".into(),
        ));
    }
    let body_hash = Sha256::digest(&out[start..]);
    out.pop();
    out.extend_from_slice(HASH_KEY);
    out.extend_from_slice(hash_hex(&body_hash.into()).as_bytes());
    out.extend_from_slice(HASH_END);
    let record_hash = line_hash(&out[start..]);
    out.push(b'\n');
    Ok(record_hash)
}

/// Lowercase hex of a hash, the only spelling records use. Writes into a
/// stack buffer: `hex::encode`'s per-character `String` building showed up
/// in profiles of the sealing path, which runs under the log's lock.
pub(crate) fn hash_hex(hash: &[u8; 32]) -> HashHex {
    let mut out = [0u8; HEX_LEN];
    // Cannot fail: the output is exactly twice the input.
    let _ = hex::encode_to_slice(hash, &mut out);
    HashHex(out)
}

/// [`hash_hex`]'s result.
pub(crate) struct HashHex([u8; HEX_LEN]);

impl HashHex {
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub(crate) fn as_str(&self) -> &str {
        // Only ASCII hex digits are ever written.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    pub(crate) fn into_string(self) -> String {
        self.as_str().to_owned()
    }
}

/// SHA-256 of a whole line (without its `\n`): what the next record's
/// `previous_hash` and checkpoints refer to.
pub(crate) fn line_hash(line: &[u8]) -> [u8; 32] {
    Sha256::digest(line).into()
}

/// Checks that `line` ends with its hash field and that the field holds the
/// SHA-256 of everything before it plus `}`. Compares the hex text itself, not
/// decoded bytes, so even a change of letter case in the field is caught here
/// rather than one record later.
pub(crate) fn check_own_hash(line: &[u8]) -> Result<(), &'static str> {
    // At least `{` must precede the field; anything shorter is not a record.
    let Some(split) = line.len().checked_sub(HASH_FIELD_LEN).filter(|s| *s >= 1) else {
        return Err("record does not end with its hash field");
    };
    let (body, field) = line.split_at(split);
    let Some(value) = field
        .strip_prefix(HASH_KEY)
        .and_then(|rest| rest.strip_suffix(HASH_END))
    else {
        return Err("record does not end with its hash field");
    };
    let mut hasher = Sha256::new();
    hasher.update(body);
    hasher.update(b"}");
    let expected = hash_hex(&hasher.finalize().into());
    if value == expected.as_bytes() {
        Ok(())
    } else {
        Err("hash does not match its contents")
    }
}

/// Parses 64 lowercase hex digits, the only spelling the writer produces.
pub(crate) fn parse_hash_hex(text: &str) -> Option<[u8; 32]> {
    if text.len() != HEX_LEN || !text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(text, &mut out).ok()?;
    Some(out)
}

/// RFC 3339 in UTC with exactly three fractional digits and a `Z`, so that
/// times sort as text and match CloudTrail's shape.
const RFC3339_MILLIS: &[time::format_description::BorrowedFormatItem<'static>] = time::macros::format_description!(
    "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
);

/// The current time for `event_time` and checkpoint `time`.
pub(crate) fn now_rfc3339() -> Result<String, AuditError> {
    rfc3339(time::OffsetDateTime::now_utc())
}

/// `at` as an `event_time` (UTC, milliseconds).
pub(crate) fn rfc3339(at: time::OffsetDateTime) -> Result<String, AuditError> {
    at.format(RFC3339_MILLIS)
        .map_err(|e| AuditError::Encode(format!("cannot format the current time: {e}")))
}

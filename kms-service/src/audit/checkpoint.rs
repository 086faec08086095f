//! Signed checkpoints: the writer's periodic, MAC-ed statement "record N
//! existed with this record hash". The hash chain alone cannot show that
//! records were cut off the end; a checkpoint naming a record the log no
//! longer has can, and without the key nobody can write one for a shortened
//! log.

use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use zeroize::Zeroizing;

use super::record::{now_rfc3339, parse_hash_hex};
use super::{AuditError, AuditSink, ChainHead};

type HmacSha256 = Hmac<Sha256>;

/// One line of the checkpoint file.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CheckpointLine {
    pub(crate) sequence: u64,
    pub(crate) record_hash: String,
    pub(crate) time: String,
    /// Written when the log was rotated after this record: the record ends
    /// a rotated segment, so the chain may be checked from the record after
    /// it once the segments before were removed. Left out when false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) rotated: bool,
    pub(crate) mac: String,
}

/// The MAC input is fixed-width (8 + 32 bytes, and one more byte, 1, for a
/// rotation checkpoint), so no two (sequence, hash, rotated) triples share
/// an encoding.
fn keyed_mac(
    key: &[u8; 32],
    sequence: u64,
    record_hash: &[u8; 32],
    rotated: bool,
) -> Result<HmacSha256, String> {
    // `new_from_slice` because `KeyInit::new` wants a block-sized (64-byte)
    // key array; HMAC accepts every key length, so the error is theoretical.
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(key)
        .map_err(|e| format!("cannot key HMAC-SHA256: {e}"))?;
    mac.update(&sequence.to_be_bytes());
    mac.update(record_hash);
    if rotated {
        mac.update(&[1]);
    }
    Ok(mac)
}

/// Hex MAC for a checkpoint of `sequence` with `record_hash`.
pub(crate) fn sign(
    key: &[u8; 32],
    sequence: u64,
    record_hash: &[u8; 32],
    rotated: bool,
) -> Result<String, String> {
    Ok(hex::encode(
        keyed_mac(key, sequence, record_hash, rotated)?
            .finalize()
            .into_bytes(),
    ))
}

/// A checkpoint line that parsed and (when a key was given) authenticated.
pub(crate) struct Checkpoint {
    pub(crate) sequence: u64,
    pub(crate) record_hash: [u8; 32],
    pub(crate) rotated: bool,
}

/// Parses one checkpoint line and, with a key, checks its MAC in constant
/// time. Errors are reasons for a [`super::VerifyFailure`].
pub(crate) fn parse_line(line: &[u8], key: Option<&[u8; 32]>) -> Result<Checkpoint, String> {
    let parsed: CheckpointLine =
        serde_json::from_slice(line).map_err(|e| format!("not a valid checkpoint: {e}"))?;
    if parsed.sequence == 0 {
        return Err("checkpoint names record 0, which cannot exist".into());
    }
    let record_hash = parse_hash_hex(&parsed.record_hash)
        .ok_or("checkpoint record_hash is not 64 lowercase hex digits")?;
    if let Some(key) = key {
        let tag = hex::decode(&parsed.mac).map_err(|_| "checkpoint mac is not hex")?;
        keyed_mac(key, parsed.sequence, &record_hash, parsed.rotated)?
            .verify_slice(&tag)
            .map_err(|_| "checkpoint MAC does not verify (wrong key or forged checkpoint)")?;
    }
    Ok(Checkpoint {
        sequence: parsed.sequence,
        record_hash,
        rotated: parsed.rotated,
    })
}

/// The writer thread's side: signs and appends checkpoints.
pub(crate) struct CheckpointWriter {
    sink: Box<dyn AuditSink>,
    key: Zeroizing<[u8; 32]>,
    every: u64,
    /// A durable record is checkpointed at most this long after it became
    /// durable; zero: by count and on close only.
    after: std::time::Duration,
    /// Highest sequence already checkpointed, so close does not repeat it.
    last: u64,
    /// `last`, for [`super::AuditLog::last_checkpoint`].
    published: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl CheckpointWriter {
    pub(crate) fn new(
        sink: Box<dyn AuditSink>,
        key: Zeroizing<[u8; 32]>,
        every: u64,
        after: std::time::Duration,
        last: u64,
    ) -> CheckpointWriter {
        CheckpointWriter {
            sink,
            key,
            every,
            after,
            last,
            published: std::sync::Arc::new(std::sync::atomic::AtomicU64::new(last)),
        }
    }

    /// The highest checkpointed sequence, as it moves.
    pub(crate) fn published(&self) -> std::sync::Arc<std::sync::atomic::AtomicU64> {
        self.published.clone()
    }

    /// Records between two checkpoints; 0 means only on close.
    pub(crate) fn every(&self) -> u64 {
        self.every
    }

    /// How long a durable record may go without a checkpoint; zero: no
    /// limit.
    pub(crate) fn after(&self) -> std::time::Duration {
        self.after
    }

    /// Whether a sync that moved the durable end of the chain from `before`
    /// to `after` crossed a multiple of `every`.
    pub(crate) fn due(every: u64, before: u64, after: u64) -> bool {
        every != 0 && after / every > before / every
    }

    /// Whether `head` is newer than the last checkpoint (for close).
    pub(crate) fn behind(&self, head: &ChainHead) -> bool {
        head.sequence > self.last
    }

    /// Appends and syncs a checkpoint for `head`, unless one at or after it
    /// was already written (checkpoints only move forward). Any failure is
    /// reported as unavailability because the caller poisons the log on it.
    pub(crate) fn write(&mut self, head: &ChainHead) -> Result<(), AuditError> {
        if head.sequence <= self.last {
            return Ok(());
        }
        self.append(head, false)
    }

    /// Appends and syncs the rotation checkpoint of `head`, the last record
    /// before a rotation, even if a plain one names it already.
    pub(crate) fn write_rotation(&mut self, head: &ChainHead) -> Result<(), AuditError> {
        if head.sequence < self.last {
            return Err(AuditError::Unavailable {
                reason: format!(
                    "cannot rotate after record {}: a checkpoint names the later record {}",
                    head.sequence, self.last
                ),
            });
        }
        self.append(head, true)
    }

    fn append(&mut self, head: &ChainHead, rotated: bool) -> Result<(), AuditError> {
        let line = CheckpointLine {
            sequence: head.sequence,
            record_hash: hex::encode(head.hash),
            time: now_rfc3339()?,
            rotated,
            mac: sign(&self.key, head.sequence, &head.hash, rotated).map_err(AuditError::Encode)?,
        };
        let mut bytes = serde_json::to_vec(&line).map_err(|e| AuditError::Encode(e.to_string()))?;
        bytes.push(b'\n');
        self.sink
            .append(&bytes)
            .and_then(|()| self.sink.sync())
            .map_err(|e| AuditError::Unavailable {
                reason: format!("checkpoint write failed: {e}"),
            })?;
        self.last = head.sequence;
        self.published
            .store(head.sequence, std::sync::atomic::Ordering::Release);
        Ok(())
    }
}

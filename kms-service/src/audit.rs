//! Tamper-evident audit log: one CloudTrail-shaped JSON record per KMS call,
//! hash-chained, group-committed to an append-only file, with HMAC-signed
//! checkpoints in a separate file, and failing closed.
//!
//! # Why it is shaped this way
//!
//! A key use that cannot be audited must not happen, so [`AuditLog::append`]
//! answers only once the record is durable (written and `fsync`ed), and the
//! first write or sync failure poisons the log: every later append fails with
//! [`AuditError::Unavailable`] until the service reopens it, and the service is
//! expected to refuse the key use on any `Err`. The converse does not hold: a
//! record whose append returned `Err` (or whose caller gave up waiting) may
//! still reach the log. Over-reporting an attempt is harmless; an unlogged
//! decrypt is not.
//!
//! Durability is paid for once per batch, not once per call (group commit):
//! each caller seals its record onto the in-memory tail of the chain (under
//! one lock, because each record's hash depends on the record before it);
//! a syncer thread takes everything sealed (up to `max_batch` records),
//! writes it with one `write`, syncs (`fdatasync`) and then answers every
//! caller that sync covers. Two syncers, each with its own file description,
//! let the records that arrive during a slow sync be written and synced
//! without waiting for it to end; writes stay in chain order, one at a
//! time. A record
//! is answered only after a sync that began after its bytes were written has
//! succeeded, and the first failure answers everyone still waiting with an
//! error.
//!
//! # Log file (JSON Lines, one record per line, `\n`-terminated)
//!
//! Every line is a JSON object whose keys are exactly, in this order:
//! `sequence` (u64, 1 for the first record, then +1 with no gaps),
//! `event_id` (random UUID v4), `event_time` (RFC 3339 UTC with milliseconds,
//! e.g. `2024-05-01T12:00:00.123Z`, taken when the record is sealed),
//! the [`AuditEvent`] fields in declaration order (`request_id`, `event_name`,
//! `principal`, `via_service`, `source_address`, `key_id`, `key_version`,
//! `encryption_context`, `grant_id`, `decision`, `matched_statements`,
//! `error_code`, `error_message`, `resources`; absent options are `null`),
//! then `conditions` only when the call had any (a list of objects with
//! `action`, `resource`, `decision` and `matched_statements`, in that
//! order), `previous_hash`, and last `hash`. The JSON is compact (no
//! spaces) and `encryption_context` keys are sorted. A record with
//! `conditions` cannot be read by a kms-service older than the field
//! (records are parsed strictly when the log is opened), so going back to
//! one needs a new log; `kms-service audit verify` of this version reads
//! both kinds.
//!
//! * `hash` is the lowercase hex SHA-256 of the record's JSON *without* the
//!   hash field: the line text up to but excluding `,"hash":"…"`, followed by
//!   the closing `}`. Editing any byte of record N therefore fails at record N.
//! * The *record hash* of a record is the SHA-256 of its whole line (all of its
//!   text, without the terminating `\n`, hash field included).
//! * `previous_hash` is the lowercase hex record hash of the previous record,
//!   and 64 zeros for sequence 1. Deleting, duplicating or reordering records
//!   is detected through `sequence` and `previous_hash` (except removing
//!   whole rotated segments, oldest first: see Rotation).
//!
//! Removing records from the end keeps a valid chain, which is what
//! checkpoints are for.
//!
//! # Rotation
//!
//! Once the log file has reached [`AuditConfig::rotate_bytes`], the next
//! write first writes a *rotation checkpoint* of the file's last record,
//! renames the file to `<stem>-<sequence of its first record, 20
//! digits>.<extension>` (`audit.jsonl` to `audit-00000000000000000001.jsonl`)
//! and starts a new file under the old name; the chain runs on across
//! them. A chain may start after record 1 only when its first record
//! follows a record a rotation checkpoint names (the oldest segments were
//! removed), and such a record must be the last of its file, so cutting
//! records off the start anywhere else fails. Once the rotation checkpoint
//! is written the file is moved aside or the log poisoned; a start that
//! finds the log's last record so checkpointed (a stop came between)
//! finishes the move.
//!
//! # Checkpoint file (JSON Lines)
//!
//! `{"sequence":N,"record_hash":"<hex record hash of record N>","time":"<RFC 3339>","mac":"<hex>"}`
//! where `mac` is HMAC-SHA256, under the checkpoint key, of the 8-byte
//! big-endian `sequence` followed by the 32 raw bytes of `record_hash`. A
//! rotation checkpoint has `"rotated":true` before `mac`, and its MAC input
//! ends in one more byte, 1 (a kms-service older than rotation cannot read
//! a checkpoint file that has one). One
//! is appended (and synced) after a sync makes the log durable across a
//! multiple of `checkpoint_every`, or once a durable record has gone
//! `checkpoint_after` without one (at the next sync, or when the log falls
//! idle), naming the last record that sync covered, and one on
//! [`AuditLog::close`]; nothing more is written, and no later record
//! answered, until it is. So only the newest few seconds of records rest on
//! the unkeyed chain alone. Checkpoints are written only after the
//! records they name are durable, so the log can never legitimately be
//! behind one; a log that ends before a checkpointed record has lost its
//! tail.
//!
//! # Recovery
//!
//! [`AuditLog::open`] verifies the log and the checkpoint file before
//! appending (not the rotated segments: of those it reads only the newest
//! one's last record, and only while the log has none). A trailing line
//! without its `\n` (a crash during a write, so never acknowledged) is cut
//! off; anything else that does not verify makes `open` refuse, because
//! appending to a broken chain would bury the damage. One process at a time
//! may write a given log.

mod checkpoint;
mod record;
mod segment;
mod sink;
mod verify;
mod writer;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

pub use sink::{AuditSink, AuditSyncer, FileSink};
pub use verify::{AuditFile, VerifyFailure, VerifyReport, verify};
pub use writer::{AuditLog, AuditStats, CheckpointSink};

/// Default number of records between two checkpoints.
pub const DEFAULT_CHECKPOINT_EVERY: u64 = 1000;
/// Default longest time a durable record goes without a checkpoint.
pub const DEFAULT_CHECKPOINT_AFTER: Duration = Duration::from_secs(5);
/// Default size past which the log is rotated (see
/// [`AuditConfig::rotate_bytes`]).
pub const DEFAULT_ROTATE_BYTES: u64 = 256 * 1024 * 1024;
/// Default largest number of records written with one sync.
pub const DEFAULT_MAX_BATCH: usize = 1024;
/// Largest accepted `max_batch`; it also bounds the records sealed but not
/// yet written (twice `max_batch`), so it is bounded to keep that memory
/// bounded.
pub const MAX_BATCH_LIMIT: usize = 65_536;
/// The most records kms-service ever leaves after its newest checkpoint:
/// a checkpoint falls due when a sync passes a multiple of
/// [`DEFAULT_CHECKPOINT_EVERY`], nothing more is appended until it is
/// written, the other syncer may have appended one batch meanwhile, and
/// a reopened log checkpoints an uncovered tail before appending. A
/// longer uncheckpointed tail (`audit verify` refuses it) means
/// checkpoints were taken out of their file, or records added after the
/// service wrote the log.
pub const MAX_UNCHECKPOINTED: u64 = DEFAULT_CHECKPOINT_EVERY + 2 * DEFAULT_MAX_BATCH as u64;
/// Default [`Batching::commit_delay`].
pub const DEFAULT_COMMIT_DELAY: Duration = Duration::from_micros(500);
/// Largest accepted [`Batching::commit_delay`].
#[cfg(not(test))]
pub const MAX_COMMIT_DELAY: Duration = Duration::from_millis(10);
/// Long enough in unit tests that a test can see a batch held back however
/// slow the machine.
#[cfg(test)]
pub const MAX_COMMIT_DELAY: Duration = Duration::from_millis(200);

/// How records are grouped into writes and syncs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batching {
    /// At most this many records per write and per sync;
    /// 1..=[`MAX_BATCH_LIMIT`].
    pub max_batch: usize,
    /// Under load (the previous sync took several records), the next sync
    /// starts no sooner than this after the previous one began, unless
    /// `max_batch` records are waiting: records arriving meanwhile share
    /// it. Each sync costs CPU time (on a virtual disk, exits to the
    /// hypervisor), so under load fewer, larger syncs leave more of it for
    /// the calls. Calls one at a time (batches of fewer than 4 records) are
    /// never held back; right after a batch of several, a call may wait out
    /// the rest of the delay. At most
    /// [`MAX_COMMIT_DELAY`]; zero syncs as soon as the previous sync ends.
    pub commit_delay: Duration,
}

impl Batching {
    /// `max_batch` records at most per sync, and no commit delay.
    pub const fn max_batch(max_batch: usize) -> Batching {
        Batching {
            max_batch,
            commit_delay: Duration::ZERO,
        }
    }

    /// The settings' own check: `Err` says which is out of range.
    pub fn check(&self) -> Result<(), AuditError> {
        if !(1..=MAX_BATCH_LIMIT).contains(&self.max_batch) {
            return Err(AuditError::Config(format!(
                "max_batch must be between 1 and {MAX_BATCH_LIMIT}, not {}",
                self.max_batch
            )));
        }
        if self.commit_delay > MAX_COMMIT_DELAY {
            return Err(AuditError::Config(format!(
                "the commit delay must be at most {} µs, not {} µs",
                MAX_COMMIT_DELAY.as_micros(),
                self.commit_delay.as_micros()
            )));
        }
        Ok(())
    }
}

impl Default for Batching {
    fn default() -> Batching {
        Batching {
            max_batch: DEFAULT_MAX_BATCH,
            commit_delay: DEFAULT_COMMIT_DELAY,
        }
    }
}

/// What a caller records about one call. Sealing adds the sequence, event
/// id, time and hashes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    pub request_id: String,
    /// API operation: "Decrypt", "CreateKey", "Authenticate"…
    pub event_name: String,
    /// End caller, e.g. "user/bob"; `None` when authentication failed (a
    /// user that may not forward a credential is named, having
    /// authenticated itself).
    pub principal: Option<String>,
    /// Forwarding service, e.g. "service/table-service"; also on a refused
    /// forwarding (a bad forwarded credential: `principal` is `None`; the
    /// service's own credential forwarded: both name the service).
    pub via_service: Option<String>,
    pub source_address: Option<String>,
    pub key_id: Option<String>,
    pub key_version: Option<u32>,
    pub encryption_context: Option<BTreeMap<String, String>>,
    pub grant_id: Option<String>,
    /// "Allow" | "Deny" | "Unauthenticated" | "Error".
    pub decision: String,
    pub matched_statements: Vec<String>,
    /// AWS-style reason, e.g. "AccessDeniedException".
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub resources: Vec<String>,
    /// Decisions the call needed besides its own, in order: what a service
    /// made the call conditional on (`x-authorize`), decided for the end
    /// caller before the call's own work, and the alias of an alias
    /// operation (`kms:CreateAlias` on `alias/…`). When one was refused, it
    /// is the last one and the call did nothing else. For `Authorize`:
    /// every question, as answered, in order (its own `decision` is "Allow"
    /// when all were allowed, "Partial" when some, else "Deny").
    pub conditions: Vec<AuditCondition>,
    /// ReEncrypt: the ciphertext's source key, version and context (the
    /// record's own `key_id`, `key_version` and `encryption_context` are
    /// the destination's).
    pub source: Option<AuditSource>,
}

/// The source side of a ReEncrypt.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSource {
    /// The key the ciphertext names (`None`: it could not be read).
    pub key_id: Option<String>,
    pub key_version: Option<u32>,
    pub encryption_context: BTreeMap<String, String>,
}

/// One condition of a call (an `x-authorize: <action> <resource>` pair, or
/// an alias operation's alias), as decided. The record's own `decision` and
/// `matched_statements` are the call's own (or, when a condition was
/// refused, that refusal's).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditCondition {
    pub action: String,
    pub resource: String,
    /// "Allow" | "Deny".
    pub decision: String,
    pub matched_statements: Vec<String>,
}

/// Where the log lives and how it is written.
pub struct AuditConfig {
    pub log_path: PathBuf,
    pub checkpoint_path: PathBuf,
    /// HMAC-SHA256 key for checkpoints.
    pub checkpoint_key: Zeroizing<[u8; 32]>,
    /// Write a checkpoint after every this many records (and on close);
    /// 0 means only on close.
    pub checkpoint_every: u64,
    /// Also write one once a durable record has gone this long without
    /// (under light load, and when the log falls idle); zero: by count and
    /// on close only.
    pub checkpoint_after: Duration,
    pub batching: Batching,
    /// Once the log has reached this many bytes, the next write first
    /// renames it to a rotated segment named by its first record's sequence
    /// (`audit.jsonl` to `audit-00000000000000000001.jsonl`), after
    /// checkpointing its last record, and starts a new log under the old
    /// name; the chain runs on across them. 0: never.
    pub rotate_bytes: u64,
}

impl AuditConfig {
    /// A configuration with the default checkpoint interval and batching.
    pub fn new(
        log_path: impl Into<PathBuf>,
        checkpoint_path: impl Into<PathBuf>,
        checkpoint_key: Zeroizing<[u8; 32]>,
    ) -> AuditConfig {
        AuditConfig {
            log_path: log_path.into(),
            checkpoint_path: checkpoint_path.into(),
            checkpoint_key,
            checkpoint_every: DEFAULT_CHECKPOINT_EVERY,
            checkpoint_after: DEFAULT_CHECKPOINT_AFTER,
            batching: Batching::default(),
            rotate_bytes: DEFAULT_ROTATE_BYTES,
        }
    }
}

// Hand-written so that printing a config can never print the key.
impl fmt::Debug for AuditConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditConfig")
            .field("log_path", &self.log_path)
            .field("checkpoint_path", &self.checkpoint_path)
            .field("checkpoint_key", &"<redacted>")
            .field("checkpoint_every", &self.checkpoint_every)
            .field("checkpoint_after", &self.checkpoint_after)
            .field("batching", &self.batching)
            .field("rotate_bytes", &self.rotate_bytes)
            .finish()
    }
}

/// The end of a chain: the last record's sequence and record hash (SHA-256 of
/// its whole line). A new log starts after [`ChainHead::GENESIS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChainHead {
    pub sequence: u64,
    pub hash: [u8; 32],
}

impl ChainHead {
    /// Before the first record: sequence 0, all-zero hash.
    pub const GENESIS: ChainHead = ChainHead {
        sequence: 0,
        hash: [0; 32],
    };
}

/// Everything that can go wrong with the audit log. Any of them means the
/// call being audited must be refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// Opening, reading or repairing a file failed.
    #[error("audit log I/O error: {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// An existing file does not verify; the service must not append to it.
    #[error("audit file {} does not verify: {failure}", path.display())]
    Corrupt {
        path: PathBuf,
        failure: VerifyFailure,
    },
    /// The configuration cannot work.
    #[error("invalid audit configuration: {0}")]
    Config(String),
    /// A write or sync failed (now or earlier): the log is poisoned until it
    /// is reopened.
    #[error("audit log unavailable: {reason}")]
    Unavailable { reason: String },
    /// [`AuditLog::close`] was called.
    #[error("audit log is closed")]
    Closed,
    /// This one record could not be encoded; nothing was written for it.
    #[error("audit record could not be encoded: {0}")]
    Encode(String),
}

//! Verification of a log and its checkpoints, used offline by auditors
//! ([`verify`]) and by [`super::AuditLog::open`] before it appends anything.
//!
//! Both files are streamed line by line; only the checkpoints (one per
//! `checkpoint_every` records) are held in memory, so verifying a large log
//! needs memory for one line at a time.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::ops::Bound;
use std::path::Path;

use super::ChainHead;
use super::checkpoint;
use super::record::{StoredRecord, check_own_hash, hash_hex, line_hash};

/// What a successful verification saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VerifyReport {
    /// Records checked (every line of the log).
    pub records: u64,
    /// Checkpoint lines checked (0 without a checkpoint file).
    pub checkpoints: u64,
    /// Sequence of the last record, 0 for an empty log.
    pub last_sequence: u64,
    /// The newest record a checkpoint names (0: none). Records after it
    /// rest on the hash chain alone.
    pub last_checkpointed: u64,
}

/// Which file a [`VerifyFailure`] points into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuditFile {
    Log,
    Checkpoints,
}

/// The first problem found. `line` is 1-based within `file` (0 when the file
/// could not be read at all). `sequence` is the record concerned: the one on
/// that line when the line is intact, otherwise the one that belonged there;
/// for a checkpoint, the record it names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyFailure {
    pub file: AuditFile,
    pub sequence: Option<u64>,
    pub line: usize,
    pub reason: String,
}

impl fmt::Display for VerifyFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.file, self.sequence, self.line) {
            (AuditFile::Log, _, 0) => write!(f, "audit log: {}", self.reason),
            (AuditFile::Checkpoints, _, 0) => write!(f, "checkpoint file: {}", self.reason),
            (AuditFile::Log, Some(seq), line) => {
                write!(f, "record {seq} (line {line}): {}", self.reason)
            }
            (AuditFile::Log, None, line) => write!(f, "line {line}: {}", self.reason),
            (AuditFile::Checkpoints, Some(seq), line) => {
                write!(f, "checkpoint line {line} (record {seq}): {}", self.reason)
            }
            (AuditFile::Checkpoints, None, line) => {
                write!(f, "checkpoint line {line}: {}", self.reason)
            }
        }
    }
}

impl std::error::Error for VerifyFailure {}

/// Verifies the log at `log_path`: every record's own hash (over its exact
/// text), that it parses as a record with exactly the known fields, sequences
/// 1, 2, 3… without gaps, and every `previous_hash` link. With a checkpoint
/// file it also checks that each checkpointed record is in the log with that
/// record hash (so a log cut short fails), and with a key each checkpoint's
/// MAC. Strict: an unterminated last line fails too (opening the log for
/// writing repairs that case).
pub fn verify(
    log_path: &Path,
    checkpoint_path: Option<&Path>,
    checkpoint_key: Option<&[u8; 32]>,
) -> Result<VerifyReport, VerifyFailure> {
    let checkpoints = match checkpoint_path {
        Some(path) => Some(open_reader(path, AuditFile::Checkpoints)?),
        None => None,
    };
    let log = open_reader(log_path, AuditFile::Log)?;
    let seen = inspect(Some(log), checkpoints, checkpoint_key, Tail::Reject)?;
    Ok(VerifyReport {
        records: seen.records,
        checkpoints: seen.checkpoints,
        last_sequence: seen.head.sequence,
        last_checkpointed: seen.last_checkpointed,
    })
}

fn open_reader(path: &Path, file: AuditFile) -> Result<BufReader<File>, VerifyFailure> {
    File::open(path)
        .map(BufReader::new)
        .map_err(|e| VerifyFailure {
            file,
            sequence: None,
            line: 0,
            reason: format!("cannot open {}: {e}", path.display()),
        })
}

/// What to do with a last line that has no `\n`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Tail {
    /// Fail: an auditor should hear about it.
    Reject,
    /// Ignore it and report where the complete lines end, so the opener can
    /// cut it off (it was never synced, so never acknowledged).
    Truncate,
}

/// Where a file's complete lines end.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct TailInfo {
    /// Byte length of the complete lines.
    pub(crate) complete_len: u64,
    /// Whether bytes follow them (an unterminated last line).
    pub(crate) partial: bool,
}

/// Everything [`inspect`] learned from both files.
#[derive(Debug)]
pub(crate) struct Inspection {
    pub(crate) head: ChainHead,
    pub(crate) records: u64,
    pub(crate) checkpoints: u64,
    pub(crate) last_checkpointed: u64,
    pub(crate) log_tail: TailInfo,
    pub(crate) checkpoint_tail: TailInfo,
}

/// Verifies a log and optionally its checkpoint file (a `None` reader is an
/// empty file).
pub(crate) fn inspect<L: BufRead, C: BufRead>(
    log: Option<L>,
    checkpoints: Option<C>,
    key: Option<&[u8; 32]>,
    tail: Tail,
) -> Result<Inspection, VerifyFailure> {
    let mut set = CheckpointSet::default();
    let checkpoint_tail = match checkpoints {
        Some(reader) => {
            let mut reader_state = CheckpointReader { set: &mut set, key };
            read_lines(reader, tail, &mut reader_state)?
        }
        None => TailInfo::default(),
    };
    let mut chain = ChainScanner {
        head: ChainHead::GENESIS,
        records: 0,
        checkpoints: &set,
    };
    let log_tail = match log {
        Some(reader) => read_lines(reader, tail, &mut chain)?,
        None => TailInfo::default(),
    };
    let (head, records) = (chain.head, chain.records);
    set.check_covered(head.sequence)?;
    Ok(Inspection {
        head,
        records,
        checkpoints: set.count,
        last_checkpointed: set.highest,
        log_tail,
        checkpoint_tail,
    })
}

/// Receives the lines of one file.
trait LineVisitor {
    fn line(&mut self, number: usize, line: &[u8]) -> Result<(), VerifyFailure>;
    /// The failure for an unterminated last line under [`Tail::Reject`], or
    /// for a read error on line `number`.
    fn failure(&self, number: usize, reason: String) -> VerifyFailure;
}

fn read_lines<R: BufRead>(
    mut reader: R,
    tail: Tail,
    visitor: &mut dyn LineVisitor,
) -> Result<TailInfo, VerifyFailure> {
    let mut buf = Vec::new();
    let mut number = 0usize;
    let mut complete_len = 0u64;
    loop {
        buf.clear();
        number += 1;
        let read = reader
            .read_until(b'\n', &mut buf)
            .map_err(|e| visitor.failure(number, format!("read error: {e}")))?;
        if read == 0 {
            return Ok(TailInfo {
                complete_len,
                partial: false,
            });
        }
        let Some(line) = buf.strip_suffix(b"\n") else {
            return match tail {
                Tail::Truncate => Ok(TailInfo {
                    complete_len,
                    partial: true,
                }),
                Tail::Reject => Err(visitor.failure(
                    number,
                    "last line is incomplete (no newline): a write that never finished".into(),
                )),
            };
        };
        visitor.line(number, line)?;
        complete_len += read as u64;
    }
}

/// A checkpoint as remembered while the log is scanned.
#[derive(Clone, Copy, Debug)]
struct Expected {
    line: usize,
    hash: [u8; 32],
}

#[derive(Debug, Default)]
struct CheckpointSet {
    by_sequence: BTreeMap<u64, Expected>,
    count: u64,
    highest: u64,
}

impl CheckpointSet {
    /// Fails if some checkpoint names a record after the log's last one.
    fn check_covered(&self, last_sequence: u64) -> Result<(), VerifyFailure> {
        let beyond = self
            .by_sequence
            .range((Bound::Excluded(last_sequence), Bound::Unbounded))
            .next_back();
        match beyond {
            None => Ok(()),
            Some((&sequence, expected)) => Err(VerifyFailure {
                file: AuditFile::Checkpoints,
                sequence: Some(sequence),
                line: expected.line,
                reason: format!(
                    "log ends at record {last_sequence} but checkpoint says record {sequence} existed (records were removed from the end)"
                ),
            }),
        }
    }
}

struct CheckpointReader<'a> {
    set: &'a mut CheckpointSet,
    key: Option<&'a [u8; 32]>,
}

impl LineVisitor for CheckpointReader<'_> {
    fn line(&mut self, number: usize, line: &[u8]) -> Result<(), VerifyFailure> {
        let cp = checkpoint::parse_line(line, self.key)
            .map_err(|reason| self.failure(number, reason))?;
        let expected = Expected {
            line: number,
            hash: cp.record_hash,
        };
        if let Some(earlier) = self.set.by_sequence.insert(cp.sequence, expected)
            && earlier.hash != cp.record_hash
        {
            return Err(VerifyFailure {
                file: AuditFile::Checkpoints,
                sequence: Some(cp.sequence),
                line: number,
                reason: format!(
                    "disagrees with checkpoint line {} about the hash of this record",
                    earlier.line
                ),
            });
        }
        self.set.count += 1;
        self.set.highest = self.set.highest.max(cp.sequence);
        Ok(())
    }

    fn failure(&self, number: usize, reason: String) -> VerifyFailure {
        VerifyFailure {
            file: AuditFile::Checkpoints,
            sequence: None,
            line: number,
            reason,
        }
    }
}

struct ChainScanner<'a> {
    head: ChainHead,
    records: u64,
    checkpoints: &'a CheckpointSet,
}

impl ChainScanner<'_> {
    /// The sequence that belongs on the next line. Saturating: a log that
    /// reached `u64::MAX` then fails on the sequence check instead of
    /// wrapping.
    fn expected(&self) -> u64 {
        self.head.sequence.saturating_add(1)
    }
}

impl LineVisitor for ChainScanner<'_> {
    fn line(&mut self, number: usize, line: &[u8]) -> Result<(), VerifyFailure> {
        let expected = self.expected();
        // Integrity first: until the line's own hash checks out, nothing on it
        // (including its sequence number) can be trusted, so failures name
        // the record that belongs here.
        check_own_hash(line).map_err(|reason| self.failure(number, reason.into()))?;
        let record: StoredRecord = serde_json::from_slice(line)
            .map_err(|e| self.failure(number, format!("not a valid audit record: {e}")))?;
        // serde rejects a duplicate `hash` key, so the parsed field is the
        // trailing one just checked; compared anyway so that can never drift.
        if !line.ends_with(format!("{}\"}}", record.hash).as_bytes()) {
            return Err(self.failure(number, "hash field is not the last field".into()));
        }
        let intact = |reason: String| VerifyFailure {
            file: AuditFile::Log,
            sequence: Some(record.sequence),
            line: number,
            reason,
        };
        if record.sequence != expected {
            return Err(intact(format!(
                "expected record {expected} here (records are missing, duplicated or out of order)"
            )));
        }
        if record.previous_hash != hash_hex(&self.head.hash).as_str() {
            return Err(intact(if self.head.sequence == 0 {
                "previous_hash of the first record is not 64 zeros".into()
            } else {
                format!(
                    "previous_hash does not match the hash of record {}",
                    self.head.sequence
                )
            }));
        }
        let hash = line_hash(line);
        if let Some(cp) = self.checkpoints.by_sequence.get(&record.sequence)
            && cp.hash != hash
        {
            return Err(intact(format!(
                "hash differs from the one signed in checkpoint line {}",
                cp.line
            )));
        }
        self.head = ChainHead {
            sequence: record.sequence,
            hash,
        };
        self.records += 1;
        Ok(())
    }

    fn failure(&self, number: usize, reason: String) -> VerifyFailure {
        VerifyFailure {
            file: AuditFile::Log,
            sequence: Some(self.expected()),
            line: number,
            reason,
        }
    }
}

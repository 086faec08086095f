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
use super::segment;

/// What a successful verification saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VerifyReport {
    /// Records checked (every line of the rotated segments and the log).
    pub records: u64,
    /// Sequence of the first record present, 0 for an empty log. Above 1
    /// when the oldest rotated segments were removed (their records are
    /// not verified; the first one present follows a checkpointed record).
    pub first_sequence: u64,
    /// Rotated segments read before the log, oldest first.
    pub segments: usize,
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
/// for a checkpoint, the record it names. `segment` names the rotated
/// segment of the log the problem is in (`None`: the log itself, or the
/// checkpoint file).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyFailure {
    pub file: AuditFile,
    pub segment: Option<String>,
    pub sequence: Option<u64>,
    pub line: usize,
    pub reason: String,
}

impl fmt::Display for VerifyFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(segment) = &self.segment {
            write!(f, "rotated segment {segment}: ")?;
        }
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

/// Verifies the log at `log_path`, after its rotated segments (the files
/// beside it named `<stem>-<first sequence>.<extension>`), oldest first, as
/// one chain: every record's own hash (over its exact text), that it parses
/// as a record with exactly the known fields, sequences 1, 2, 3… without
/// gaps, and every `previous_hash` link. The oldest segments may have been
/// removed: the first record present may then follow a checkpointed record
/// instead of starting at 1 (see [`VerifyReport::first_sequence`]). With a
/// checkpoint file it also checks that each checkpointed record from there
/// on is present with that record hash (so a log cut short fails), and with
/// a key each checkpoint's MAC. Strict: an unterminated last line fails too
/// (opening the log for writing repairs that case).
pub fn verify(
    log_path: &Path,
    checkpoint_path: Option<&Path>,
    checkpoint_key: Option<&[u8; 32]>,
) -> Result<VerifyReport, VerifyFailure> {
    let checkpoints = match checkpoint_path {
        Some(path) => Some(open_reader(path, AuditFile::Checkpoints)?),
        None => None,
    };
    let listed = segment::list(log_path).map_err(|e| VerifyFailure {
        file: AuditFile::Log,
        segment: None,
        sequence: None,
        line: 0,
        reason: format!(
            "cannot list the rotated segments beside {}: {e}",
            log_path.display()
        ),
    })?;
    let mut segments = Vec::with_capacity(listed.len());
    for (first, path) in &listed {
        let name = file_name(path);
        let reader = open_reader(path, AuditFile::Log).map_err(|mut failure| {
            failure.segment = Some(name.clone());
            failure
        })?;
        segments.push((name, *first, reader));
    }
    // Just after a rotation (before the first record after it), the log
    // may not exist yet.
    let log = match File::open(log_path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !segments.is_empty() => None,
        _ => Some(open_reader(log_path, AuditFile::Log)?),
    };
    let seen = inspect(
        segments,
        log,
        checkpoints,
        checkpoint_key,
        Tail::Reject,
        || Ok(None),
    )?;
    Ok(VerifyReport {
        records: seen.records,
        first_sequence: seen.first_sequence,
        segments: listed.len(),
        checkpoints: seen.checkpoints,
        last_sequence: seen.head.sequence,
        last_checkpointed: seen.last_checkpointed,
    })
}

/// The sequence and record hash of one record's line, after checking its
/// own hash and that it parses.
pub(crate) fn record_head(line: &[u8]) -> Result<ChainHead, String> {
    check_own_hash(line).map_err(String::from)?;
    let record: StoredRecord =
        serde_json::from_slice(line).map_err(|e| format!("not a valid audit record: {e}"))?;
    Ok(ChainHead {
        sequence: record.sequence,
        hash: line_hash(line),
    })
}

/// A path's file name, for messages.
pub(crate) fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

fn open_reader(path: &Path, file: AuditFile) -> Result<BufReader<File>, VerifyFailure> {
    File::open(path)
        .map(BufReader::new)
        .map_err(|e| VerifyFailure {
            file,
            segment: None,
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
    /// Records read, in the segments and the log.
    pub(crate) records: u64,
    /// The first record read (0: none).
    pub(crate) first_sequence: u64,
    /// The last record read has a rotation checkpoint: its file was to be
    /// moved aside (a stop came first).
    pub(crate) log_ends_segment: bool,
    pub(crate) checkpoints: u64,
    pub(crate) last_checkpointed: u64,
    pub(crate) log_tail: TailInfo,
    pub(crate) checkpoint_tail: TailInfo,
}

/// Verifies a log (after `segments`, its rotated segments to read first,
/// oldest first, each with its file name and the first sequence that name
/// gives) and optionally its checkpoint
/// file (a `None` reader is an empty file). `newest_segment` is for a log
/// opened for writing, whose segments are not read: called only when the
/// log itself has no records yet (it was just rotated), it gives the name
/// and last record of the newest rotated segment, where the chain goes on
/// from; that record must have a rotation checkpoint.
pub(crate) fn inspect<L: BufRead, C: BufRead>(
    segments: Vec<(String, u64, L)>,
    log: Option<L>,
    checkpoints: Option<C>,
    key: Option<&[u8; 32]>,
    tail: Tail,
    newest_segment: impl FnOnce() -> Result<Option<(String, ChainHead)>, VerifyFailure>,
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
        first: 0,
        ends_file: None,
        file_first: None,
        named_first: None,
        segment: None,
        checkpoints: &set,
    };
    for (name, first, reader) in segments {
        chain.ends_file = None;
        chain.named_first = Some(first);
        chain.segment = Some(name.clone());
        chain.file_first = Some(first);
        // A rotated segment was complete (synced) before it was renamed.
        read_lines(reader, Tail::Reject, &mut chain)?;
        if chain.file_first.is_some() {
            return Err(VerifyFailure {
                file: AuditFile::Log,
                segment: Some(name),
                sequence: Some(first),
                line: 0,
                reason: "the rotated segment has no records".into(),
            });
        }
    }
    chain.segment = None;
    chain.named_first = None;
    chain.ends_file = None;
    let log_tail = match log {
        Some(reader) => read_lines(reader, tail, &mut chain)?,
        None => TailInfo::default(),
    };
    if chain.records == 0
        && let Some((name, end)) = newest_segment()?
    {
        match set.by_sequence.get(&end.sequence) {
            Some(cp) if cp.hash == end.hash && cp.rotated => chain.head = end,
            _ => {
                return Err(VerifyFailure {
                    file: AuditFile::Log,
                    segment: Some(name),
                    sequence: Some(end.sequence),
                    line: 0,
                    reason: format!(
                        "the log is empty and its newest rotated segment ends at record {}, which no rotation checkpoint names with that hash (a rotation checkpoints the segment's last record first); to start a new log after losing this one and its checkpoints, move the rotated segments aside too",
                        end.sequence
                    ),
                });
            }
        }
    }
    let (head, records, first_sequence) = (chain.head, chain.records, chain.first);
    set.check_covered(head.sequence)?;
    let log_ends_segment = chain.ends_file.is_some();
    Ok(Inspection {
        head,
        records,
        first_sequence,
        log_ends_segment,
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
    /// A rotation checkpoint names this record (see
    /// [`checkpoint::CheckpointLine::rotated`]).
    rotated: bool,
}

#[derive(Debug, Default)]
struct CheckpointSet {
    by_sequence: BTreeMap<u64, Expected>,
    count: u64,
    highest: u64,
}

impl CheckpointSet {
    /// Whether any checkpoint is a rotation's: the log was rotated.
    fn any_rotated(&self) -> bool {
        self.by_sequence.values().any(|expected| expected.rotated)
    }

    /// The newest record a rotation checkpoint names, when a later
    /// checkpoint shows the rotation was finished: then it is the last of
    /// the newest rotated segment, and the log begins after it. (When the
    /// rotation checkpoint is the newest, a stop may have come between it
    /// and the file's move, leaving that record the log's own last.)
    fn last_rotated(&self) -> Option<u64> {
        self.by_sequence
            .iter()
            .rev()
            .find(|(_, expected)| expected.rotated)
            .map(|(&sequence, _)| sequence)
            .filter(|&sequence| sequence < self.highest)
    }

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
                segment: None,
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
        match self.set.by_sequence.entry(cp.sequence) {
            std::collections::btree_map::Entry::Vacant(entry) => {
                entry.insert(Expected {
                    line: number,
                    hash: cp.record_hash,
                    rotated: cp.rotated,
                });
            }
            std::collections::btree_map::Entry::Occupied(mut entry) => {
                let earlier = entry.get_mut();
                if earlier.hash != cp.record_hash {
                    return Err(VerifyFailure {
                        file: AuditFile::Checkpoints,
                        segment: None,
                        sequence: Some(cp.sequence),
                        line: number,
                        reason: format!(
                            "disagrees with checkpoint line {} about the hash of this record",
                            earlier.line
                        ),
                    });
                }
                earlier.rotated |= cp.rotated;
            }
        }
        self.set.count += 1;
        self.set.highest = self.set.highest.max(cp.sequence);
        Ok(())
    }

    fn failure(&self, number: usize, reason: String) -> VerifyFailure {
        VerifyFailure {
            file: AuditFile::Checkpoints,
            segment: None,
            sequence: None,
            line: number,
            reason,
        }
    }
}

struct ChainScanner<'a> {
    head: ChainHead,
    records: u64,
    /// The first record read (0: none yet).
    first: u64,
    /// The rotated segment being read (`None`: the log).
    segment: Option<String>,
    /// The first sequence the name of the segment being read gives, until
    /// its first record has been checked against it.
    file_first: Option<u64>,
    /// The last record read in this file has a rotation checkpoint, so it
    /// must be the file's last.
    ends_file: Option<u64>,
    /// The first sequence the name of the segment being read gives: where
    /// the chain is expected to start when earlier segments were removed.
    named_first: Option<u64>,
    checkpoints: &'a CheckpointSet,
}

impl ChainScanner<'_> {
    /// The sequence that belongs on the next line. Saturating: a log that
    /// reached `u64::MAX` then fails on the sequence check instead of
    /// wrapping.
    fn expected(&self) -> u64 {
        self.head.sequence.saturating_add(1)
    }

    /// The record that belongs on a line that cannot be read: the next one;
    /// at the start of a segment read first (the ones before it removed),
    /// the one its name gives; at the start of the active log read first
    /// (at start-up, or with every segment removed), the one after the
    /// newest finished rotation (see [`CheckpointSet::last_rotated`]), or,
    /// when a rotation may not have finished, none that can be named.
    fn belongs_here(&self) -> Option<u64> {
        if self.records == 0 && self.head == ChainHead::GENESIS {
            if let Some(first) = self.named_first {
                return Some(first);
            }
            if self.segment.is_none() && self.checkpoints.any_rotated() {
                return self
                    .checkpoints
                    .last_rotated()
                    .map(|last| last.saturating_add(1));
            }
        }
        Some(self.expected())
    }
}

impl LineVisitor for ChainScanner<'_> {
    fn line(&mut self, number: usize, line: &[u8]) -> Result<(), VerifyFailure> {
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
            segment: self.segment.clone(),
            sequence: Some(record.sequence),
            line: number,
            reason,
        };
        // A record with a rotation checkpoint ends its file.
        if let Some(end) = self.ends_file {
            return Err(intact(format!(
                "record {end} has a rotation checkpoint, so it ends its file, but record {} follows it in the same file",
                record.sequence
            )));
        }
        // A segment's name says which record it begins with.
        if let Some(first) = self.file_first.take()
            && record.sequence != first
        {
            return Err(intact(format!(
                "the segment's name says it begins with record {first}, but its first record is {}",
                record.sequence
            )));
        }
        // The oldest rotated segments may have been removed: the first
        // record present then goes on from the last record of a removed
        // segment, which its rotation checkpoint names.
        if self.records == 0
            && self.head == ChainHead::GENESIS
            && record.sequence > 1
            && let Some(cp) = self.checkpoints.by_sequence.get(&(record.sequence - 1))
            && cp.rotated
            && hash_hex(&cp.hash).as_str() == record.previous_hash
        {
            self.head = ChainHead {
                sequence: record.sequence - 1,
                hash: cp.hash,
            };
        }
        let expected = self.expected();
        if record.sequence != expected {
            return Err(intact(
                if self.records == 0 && self.head == ChainHead::GENESIS {
                    format!(
                        "the first record present is {}, and it neither is record 1 nor follows the end of a rotated segment (a record a rotation checkpoint names): records were removed from the start",
                        record.sequence
                    )
                } else {
                    format!(
                        "expected record {expected} here (records are missing, duplicated or out of order)"
                    )
                },
            ));
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
        let checkpoint = self.checkpoints.by_sequence.get(&record.sequence);
        if let Some(cp) = checkpoint
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
        if self.records == 0 {
            self.first = record.sequence;
        }
        self.records += 1;
        self.ends_file = checkpoint
            .is_some_and(|cp| cp.rotated)
            .then_some(record.sequence);
        Ok(())
    }

    fn failure(&self, number: usize, reason: String) -> VerifyFailure {
        VerifyFailure {
            file: AuditFile::Log,
            segment: self.segment.clone(),
            sequence: self.belongs_here(),
            line: number,
            reason,
        }
    }
}

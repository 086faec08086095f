//! The group-committing writer. Callers seal their own record into the
//! shared in-memory tail of the chain (sealing is a few microseconds, done
//! under one lock because each record's hash depends on the one before) and
//! await a oneshot; dedicated syncer threads write what is sealed and sync
//! it, then answer every caller that sync covers (group commit).
//!
//! Syncer threads rather than tokio tasks because every batch ends in a
//! blocking `fsync`, and because the log must keep the chain in order
//! regardless of which runtime (if any) the callers use. There are two, each
//! with its own file description. Under load, while a sync is quick, the
//! records that arrive during it wait for it and go together into the next
//! one (each sync costs CPU time); once it has run for [`OVERLAP_AFTER`],
//! the other syncer writes and syncs them beside it, so a slow disk flush
//! does not hold up everything behind it. A sync of only a few records
//! (light load, e.g. the two calls of one table-service GetItem) gets a
//! second one beside it at once. Under load, too, a sync starts no sooner
//! than the commit delay after the one before it began (unless a whole
//! batch is waiting), so the records of that interval share it (see
//! [`Batching::commit_delay`]). Writes are taken in chain order, one at a
//! time; syncs may overlap. A record is answered only after a sync that
//! began after its bytes were written has succeeded (a later sync answers
//! for the records before it too).
//!
//! The number of sealed but not yet written records is bounded (twice
//! `max_batch`), so a stalled disk pushes back on callers instead of growing
//! memory, and no write or sync takes on more than `max_batch` records.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, TryAcquireError, oneshot};
use zeroize::Zeroizing;

use super::checkpoint::CheckpointWriter;
use super::record::{StoredRecord, encode_line, rfc3339};
use super::segment;
use super::verify::{Tail, file_name, inspect, record_head};
use super::{
    AuditConfig, AuditError, AuditEvent, AuditFile, AuditSink, AuditSyncer, Batching, ChainHead,
    FileSink, VerifyFailure,
};

/// Checkpointing for [`AuditLog::with_sink`].
pub struct CheckpointSink {
    pub sink: Box<dyn AuditSink>,
    /// HMAC-SHA256 key for checkpoints.
    pub key: Zeroizing<[u8; 32]>,
    /// Checkpoint after every this many records (and on close); 0 means only
    /// on close.
    pub every: u64,
    /// And once a durable record has gone this long without one; zero: no
    /// such limit.
    pub after: Duration,
}

/// How many syncs may be in flight at once (one thread and one open file
/// description each).
pub(super) const SYNCERS: usize = 2;

/// How long a sync may run before another one starts beside it for the
/// records written meanwhile. Each sync costs CPU time (on a virtual disk,
/// several exits to the hypervisor), so under load, while syncs are quick,
/// the records that arrive during one wait for it and go together into the
/// next; only a sync slower than this (a busy disk) is overlapped.
#[cfg(not(test))]
const OVERLAP_AFTER: Duration = Duration::from_millis(1);
/// Long enough in unit tests that a test can see a second sync held back.
#[cfg(test)]
pub(super) const OVERLAP_AFTER: Duration = Duration::from_millis(200);

/// Syncs in flight covering fewer records than this (light load) get
/// another one beside them at once: waiting would cost latency and save
/// little.
pub(super) const OVERLAP_BELOW: usize = 4;

/// See [`AuditLog::stats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AuditStats {
    /// Records made durable since the log was opened.
    pub records_durable: u64,
    /// Batch syncs (`fdatasync` for a file) that succeeded.
    pub syncs: u64,
    /// Batches whose write was held back for the commit delay (under load).
    pub delayed: u64,
}

/// Handle to the audit log. Cheap to clone; all clones feed the same log.
/// When the last clone is dropped without [`AuditLog::close`], what was
/// sealed is still written, synced and checkpointed.
#[derive(Clone)]
pub struct AuditLog {
    shared: Arc<Shared>,
    _handles: Arc<LastHandle>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.shared.status.state.load(Ordering::Acquire) {
            OPEN => "open",
            POISONED => "poisoned",
            _ => "closed",
        };
        f.debug_struct("AuditLog").field("state", &state).finish()
    }
}

/// Dropped with the last [`AuditLog`] handle: closes the log without anyone
/// waiting for the outcome.
struct LastHandle(Arc<Shared>);

impl Drop for LastHandle {
    fn drop(&mut self) {
        self.0.begin_close(None);
    }
}

type Reply<T> = oneshot::Sender<Result<T, AuditError>>;

const OPEN: u8 = 0;
const POISONED: u8 = 1;
const CLOSED: u8 = 2;

/// State shared by the handles (to fail fast) and the syncers (to set it).
#[derive(Debug)]
struct Status {
    state: AtomicU8,
    poison_reason: OnceLock<String>,
}

impl Status {
    fn poison(&self, reason: &str) {
        // Reason first, so whoever sees POISONED also finds why.
        let _ = self.poison_reason.set(reason.to_owned());
        self.state.store(POISONED, Ordering::Release);
    }

    fn poisoned(&self) -> bool {
        self.state.load(Ordering::Acquire) == POISONED
    }

    fn unavailable(&self) -> AuditError {
        AuditError::Unavailable {
            reason: match self.poison_reason.get() {
                Some(reason) => format!("{reason}; the log refuses appends until it is reopened"),
                None => "the audit writer has stopped".into(),
            },
        }
    }

    /// The error for a caller who cannot be served now.
    fn refusal(&self) -> AuditError {
        match self.state.load(Ordering::Acquire) {
            CLOSED => AuditError::Closed,
            _ => self.unavailable(),
        }
    }

    /// What a close that finds the log already shut reports.
    fn close_outcome(&self) -> Result<(), AuditError> {
        match self.state.load(Ordering::Acquire) {
            CLOSED => Ok(()),
            _ => Err(self.unavailable()),
        }
    }
}

impl AuditLog {
    /// Opens (creating if needed) the log and checkpoint files named in
    /// `config`. Both are verified first, checkpoint MACs included: a
    /// trailing unterminated line (a crashed, never acknowledged write) is
    /// cut off, and anything else that does not verify is refused with
    /// [`AuditError::Corrupt`] naming the record, since the service must not
    /// append to a broken chain. Blocking: call it at startup or from
    /// `spawn_blocking`.
    pub fn open(config: AuditConfig) -> Result<AuditLog, AuditError> {
        let AuditConfig {
            log_path,
            checkpoint_path,
            checkpoint_key,
            checkpoint_every,
            checkpoint_after,
            batching,
            rotate_bytes,
        } = config;
        batching.check()?;
        if log_path == checkpoint_path {
            return Err(AuditError::Config(
                "the log and checkpoint paths must differ".into(),
            ));
        }
        let log = open_existing(&log_path)?;
        let checkpoints = open_existing(&checkpoint_path)?;
        // Both files are created together, before the first record: a log
        // with records and no checkpoint file lost it, and continuing would
        // start a fresh one under which a cut-short log passes.
        let has_records = std::fs::metadata(&log_path).is_ok_and(|m| m.len() > 0);
        if has_records && checkpoints.is_none() {
            return Err(AuditError::Config(format!(
                "the audit log {} has records but its checkpoint file {} is missing; restore the checkpoint file (moving the log aside to start a new one needs --audit-accept-new-log once the key store has seen a checkpoint)",
                log_path.display(),
                checkpoint_path.display()
            )));
        }
        // Only the newest rotated segment's last record is read: where the
        // chain goes on from if the log was rotated just before it stopped.
        let segments = segment::list(&log_path).map_err(|source| AuditError::Io {
            action: "list the rotated segments of",
            path: log_path.clone(),
            source,
        })?;
        let newest_segment = || match segments.last() {
            None => Ok(None),
            Some((_, path)) => newest_segment_end(path).map(Some),
        };
        let seen = inspect(
            Vec::new(),
            log,
            checkpoints,
            Some(&checkpoint_key),
            Tail::Truncate,
            newest_segment,
        )
        .map_err(|failure| AuditError::Corrupt {
            path: match (&failure.segment, failure.file) {
                (Some(segment), _) => log_path.with_file_name(segment),
                (None, AuditFile::Log) => log_path.clone(),
                (None, AuditFile::Checkpoints) => checkpoint_path.clone(),
            },
            failure,
        })?;
        // A segment named at or after the log's first record is not one of
        // its own (a new log beside an old chain's segments): the first
        // rotation would collide with it.
        if let Some((first, path)) = segments.last()
            && seen.records > 0
            && *first >= seen.first_sequence
        {
            return Err(AuditError::Config(format!(
                "the rotated segment {} begins at record {first}, not before the log's first record {}: it belongs to another chain; move it (and the segments of that chain) out of {}",
                path.display(),
                seen.first_sequence,
                log_path.parent().unwrap_or(Path::new(".")).display()
            )));
        }
        if seen.log_tail.partial {
            truncate(&log_path, seen.log_tail.complete_len)?;
        }
        if seen.checkpoint_tail.partial {
            truncate(&checkpoint_path, seen.checkpoint_tail.complete_len)?;
        }
        // What was read may not be on disk yet (a crash between a write
        // and its sync): made durable before anything relies on it, such
        // as the key store recording the newest checkpoint.
        for path in [&log_path, &checkpoint_path] {
            match std::fs::File::open(path).and_then(|f| f.sync_all()) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(AuditError::Io {
                        action: "sync",
                        path: path.clone(),
                        source: e,
                    });
                }
                _ => {}
            }
        }
        // The log's last record has a rotation checkpoint: the service
        // stopped between writing it and moving the file aside. The move is
        // finished now, since that checkpoint says the file ends there.
        let (first, size) = if seen.records > 0 && seen.log_ends_segment {
            super::sink::rotate_file(&log_path, seen.first_sequence).map_err(|source| {
                AuditError::Io {
                    action: "finish the interrupted rotation of",
                    path: log_path.clone(),
                    source,
                }
            })?;
            tracing::info!(
                first_sequence = seen.first_sequence,
                last_sequence = seen.head.sequence,
                "finished an audit log rotation a stop interrupted"
            );
            (seen.head.sequence.saturating_add(1), 0)
        } else if seen.records > 0 {
            (seen.first_sequence, seen.log_tail.complete_len)
        } else {
            (
                seen.head.sequence.saturating_add(1),
                seen.log_tail.complete_len,
            )
        };
        let sink = FileSink::open(&log_path)?;
        let checkpoint_sink = FileSink::open(&checkpoint_path)?;
        spawn(
            Some(checkpoint_path.clone()),
            Box::new(sink),
            Some(CheckpointWriter::new(
                Box::new(checkpoint_sink),
                checkpoint_key,
                checkpoint_every,
                checkpoint_after,
                seen.last_checkpointed,
            )),
            seen.head,
            batching,
            Rotation {
                bytes: rotate_bytes,
                first,
                size,
            },
        )
    }

    /// Starts a log over any sink, continuing after `resume` (use
    /// [`ChainHead::GENESIS`] for a new log). Nothing is read or verified:
    /// the caller vouches for `resume`. `batching` must pass
    /// [`Batching::check`].
    pub fn with_sink(
        sink: Box<dyn AuditSink>,
        checkpoints: Option<CheckpointSink>,
        resume: ChainHead,
        batching: Batching,
    ) -> Result<AuditLog, AuditError> {
        Self::with_rotating_sink(sink, checkpoints, resume, batching, 0)
    }

    /// [`AuditLog::with_sink`] with rotation: once `rotate_bytes` have been
    /// appended, the next write first asks the sink to rotate (see
    /// [`AuditSink::rotate`]); 0 never does.
    pub fn with_rotating_sink(
        sink: Box<dyn AuditSink>,
        checkpoints: Option<CheckpointSink>,
        resume: ChainHead,
        batching: Batching,
        rotate_bytes: u64,
    ) -> Result<AuditLog, AuditError> {
        batching.check()?;
        let checkpoints =
            checkpoints.map(|cp| CheckpointWriter::new(cp.sink, cp.key, cp.every, cp.after, 0));
        spawn(
            None,
            sink,
            checkpoints,
            resume,
            batching,
            Rotation {
                bytes: rotate_bytes,
                first: resume.sequence.saturating_add(1),
                size: 0,
            },
        )
    }

    /// Appends one record and returns its sequence number once it is durable
    /// (written and synced, together with whatever else was sealed). Any
    /// `Err` means the call being audited must be refused: after a write or
    /// sync failure every later append fails fast with
    /// [`AuditError::Unavailable`]. If this future is dropped after the event
    /// was sealed, the record may still be written.
    pub async fn append(&self, event: AuditEvent) -> Result<u64, AuditError> {
        let answer = self.enter(event).await?;
        answer
            .await
            .unwrap_or_else(|_| Err(self.shared.status.refusal()))
    }

    /// [`AuditLog::append`] for several records of one action, in order:
    /// each is sealed as soon as there is room, before any is waited for,
    /// so they are made durable together rather than a sync each. Returns
    /// the last record's sequence number (`None` for no events).
    pub async fn append_all(&self, events: Vec<AuditEvent>) -> Result<Option<u64>, AuditError> {
        let mut answers = Vec::with_capacity(events.len());
        for event in events {
            answers.push(self.enter(event).await?);
        }
        let mut last = None;
        for answer in answers {
            last = Some(
                answer
                    .await
                    .unwrap_or_else(|_| Err(self.shared.status.refusal()))?,
            );
        }
        Ok(last)
    }

    /// Waits for room for one more sealed, unwritten record, then seals
    /// `event`; returns the receiver of its outcome.
    async fn enter(
        &self,
        event: AuditEvent,
    ) -> Result<oneshot::Receiver<Result<u64, AuditError>>, AuditError> {
        let shared = &self.shared;
        if shared.status.state.load(Ordering::Acquire) != OPEN {
            return Err(shared.status.refusal());
        }
        // Room for one more sealed, unwritten record; given back when the
        // record is taken for writing.
        match shared.room.try_acquire() {
            Ok(permit) => permit.forget(),
            Err(TryAcquireError::NoPermits) => match shared.room.acquire().await {
                Ok(permit) => permit.forget(),
                Err(_) => return Err(shared.status.refusal()),
            },
            Err(TryAcquireError::Closed) => return Err(shared.status.refusal()),
        }
        shared.seal(event)
    }

    /// Why the log refuses appends, if it does: a failed write or sync
    /// (until it is reopened), or a close.
    pub fn fault(&self) -> Option<String> {
        match self.shared.status.state.load(Ordering::Acquire) {
            OPEN => None,
            CLOSED => Some("the audit log is closed".into()),
            _ => Some(self.shared.status.unavailable().to_string()),
        }
    }

    /// The sequence number of the newest checkpoint written (and synced),
    /// 0 when there is none. It only grows.
    pub fn last_checkpoint(&self) -> u64 {
        self.shared.checkpointed.load(Ordering::Acquire)
    }

    /// The record hash the checkpoint file gives record `sequence`: `None`
    /// when no checkpoint names it, or the log keeps no checkpoint file.
    /// The newest checkpoint is found at the file's end; an older one takes
    /// a read of the file (at start-up). Blocking.
    pub fn checkpointed_hash(&self, sequence: u64) -> Result<Option<[u8; 32]>, AuditError> {
        let Some(path) = &self.shared.checkpoint_path else {
            return Ok(None);
        };
        let io_err = |source| AuditError::Io {
            action: "read",
            path: path.clone(),
            source,
        };
        let named = |line: &[u8]| {
            super::checkpoint::parse_line(line, None)
                .ok()
                .filter(|c| c.sequence == sequence)
                .map(|c| c.record_hash)
        };
        if let Some(hash) = segment::last_line(path)
            .map_err(io_err)?
            .as_deref()
            .and_then(named)
        {
            return Ok(Some(hash));
        }
        let file = File::open(path).map_err(io_err)?;
        let mut found = None;
        for line in io::BufRead::split(BufReader::new(file), b'\n') {
            if let Some(hash) = named(&line.map_err(io_err)?) {
                found = Some(hash);
            }
        }
        Ok(found)
    }

    /// Counters of the durability pipeline since the log was opened: how
    /// many records were made durable, how many syncs it took (their ratio
    /// is the group-commit batch size) and how many batches the commit
    /// delay held back.
    pub fn stats(&self) -> AuditStats {
        let durable = self.shared.lock().durable;
        AuditStats {
            records_durable: durable - self.shared.opened_at,
            syncs: self.shared.syncs.load(Ordering::Relaxed),
            delayed: self.shared.delayed.load(Ordering::Relaxed),
        }
    }

    /// The newest sealed record's sequence number.
    #[cfg(test)]
    pub(super) fn sealed(&self) -> u64 {
        self.shared.lock().sealed.sequence
    }

    /// Lets everything already sealed become durable, writes a final
    /// checkpoint, syncs and stops the syncers; later appends fail with
    /// [`AuditError::Closed`]. Closing again is a no-op. Fails if the log was
    /// poisoned or the final checkpoint or sync fails.
    pub async fn close(&self) -> Result<(), AuditError> {
        let (reply, answer) = oneshot::channel();
        self.shared.begin_close(Some(reply));
        answer
            .await
            .unwrap_or_else(|_| self.shared.status.close_outcome())
    }
}

/// The name and last record of a rotated segment.
fn newest_segment_end(path: &Path) -> Result<(String, ChainHead), VerifyFailure> {
    let name = file_name(path);
    let failure = |reason: String| VerifyFailure {
        file: AuditFile::Log,
        segment: Some(name.clone()),
        sequence: None,
        line: 0,
        reason,
    };
    let line =
        segment::last_line(path).map_err(|e| failure(format!("cannot read its end: {e}")))?;
    let line = line.ok_or_else(|| failure("the rotated segment has no records".into()))?;
    let head = record_head(&line).map_err(|reason| failure(format!("last record: {reason}")))?;
    Ok((name, head))
}

/// The log's rotation: its size limit and where the current file stands.
struct Rotation {
    /// Rotate once the file has this many bytes; 0: never.
    bytes: u64,
    /// Sequence of the file's first record (of the next one, while empty).
    first: u64,
    /// Bytes in the file.
    size: u64,
}

/// A reader for `path`, or `None` when it does not exist yet (a new log).
fn open_existing(path: &Path) -> Result<Option<BufReader<File>>, AuditError> {
    match File::open(path) {
        Ok(file) => Ok(Some(BufReader::new(file))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(AuditError::Io {
            action: "read",
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Cuts an unterminated last line off `path` and makes the cut durable
/// before anything new is appended after it.
fn truncate(path: &Path, len: u64) -> Result<(), AuditError> {
    let io_err = |source| AuditError::Io {
        action: "truncate the unfinished last line of",
        path: path.to_path_buf(),
        source,
    };
    let file = OpenOptions::new().write(true).open(path).map_err(io_err)?;
    file.set_len(len).map_err(io_err)?;
    file.sync_all().map_err(io_err)
}

fn spawn(
    checkpoint_path: Option<PathBuf>,
    sink: Box<dyn AuditSink>,
    checkpoints: Option<CheckpointWriter>,
    head: ChainHead,
    batching: Batching,
    rotation: Rotation,
) -> Result<AuditLog, AuditError> {
    let Batching {
        max_batch,
        commit_delay,
    } = batching;
    let start_error = |action: &'static str| {
        move |source: io::Error| AuditError::Io {
            action,
            path: "audit log".into(),
            source,
        }
    };
    let mut syncers = (0..SYNCERS)
        .map(|_| sink.syncer())
        .collect::<io::Result<Vec<_>>>()
        .map_err(start_error("open a syncer for"))?;
    // A reopened log may end in records no checkpoint covers (a crash came
    // before their checkpoint): they are checkpointed now, before anything
    // is appended after them, so however often the service restarts the
    // log never holds more uncheckpointed records than
    // [`super::MAX_UNCHECKPOINTED`], the bound `audit verify` holds it to.
    // The file is synced first: a checkpoint must never name a record a
    // power loss could still take.
    let mut checkpoints = checkpoints;
    if let Some(cp) = checkpoints.as_mut()
        && cp.behind(&head)
    {
        if let Some(syncer) = syncers.first_mut() {
            syncer
                .sync()
                .map_err(start_error("sync the reopened end of"))?;
        }
        cp.write(&head)?;
    }
    let checkpointed = checkpoints
        .as_ref()
        .map_or_else(|| Arc::new(AtomicU64::new(0)), CheckpointWriter::published);
    let checkpoint_after = checkpoints
        .as_ref()
        .map(CheckpointWriter::after)
        .filter(|after| !after.is_zero());
    // A reopened log may end in records no checkpoint covers yet.
    let uncheckpointed_since = (checkpoint_after.is_some()
        && head.sequence > checkpointed.load(Ordering::Acquire))
    .then(Instant::now);
    let shared = Arc::new(Shared {
        checkpoint_path,
        checkpointed,
        status: Status {
            state: AtomicU8::new(OPEN),
            poison_reason: OnceLock::new(),
        },
        max_batch,
        commit_delay,
        checkpoint_every: checkpoints.as_ref().map_or(0, CheckpointWriter::every),
        checkpoint_after,
        rotate_bytes: rotation.bytes,
        room: Semaphore::new(max_batch.saturating_mul(2)),
        pending: Mutex::new(Pending {
            sealed: head,
            buf: Vec::new(),
            spare: Vec::new(),
            unwritten: VecDeque::new(),
            written: head,
            durable: head.sequence,
            waiters: VecDeque::new(),
            writing: false,
            in_flight: Vec::with_capacity(SYNCERS),
            idle: 0,
            checkpoint_next: None,
            checkpointing: None,
            closing: false,
            closers: Vec::new(),
            shutting: false,
            outcome: None,
            syncers: 0,
            time: TimeCache::default(),
            last_take: None,
            uncheckpointed_since,
            segment_first: rotation.first,
            segment_bytes: rotation.size,
            rotate_due: rotation.bytes > 0 && rotation.size >= rotation.bytes,
            generation: 0,
        }),
        work: Condvar::new(),
        sink: Mutex::new(sink),
        checkpoints: Mutex::new(checkpoints),
        opened_at: head.sequence,
        syncs: AtomicU64::new(0),
        delayed: AtomicU64::new(0),
    });
    for (i, syncer) in syncers.into_iter().enumerate() {
        let for_thread = Arc::clone(&shared);
        shared.lock().syncers += 1;
        let started = std::thread::Builder::new()
            .name(format!("audit-sync-{i}"))
            .spawn(move || sync_loop(&for_thread, i, syncer));
        if let Err(e) = started {
            shared.lock().syncers -= 1;
            shared.begin_close(None);
            return Err(start_error("start a syncer thread for")(e));
        }
    }
    Ok(AuditLog {
        _handles: Arc::new(LastHandle(Arc::clone(&shared))),
        shared,
    })
}

/// What the handles and the syncers share.
struct Shared {
    /// The checkpoint file, for a log opened from files.
    checkpoint_path: Option<PathBuf>,
    status: Status,
    max_batch: usize,
    /// See [`Batching::commit_delay`].
    commit_delay: Duration,
    /// Checkpoint after every this many records; 0: only on close.
    checkpoint_every: u64,
    /// A durable record is checkpointed at most this long after it became
    /// durable (`None`: no checkpoints, or no such limit).
    checkpoint_after: Option<Duration>,
    /// Rotate the log once it has this many bytes; 0: never.
    rotate_bytes: u64,
    /// Permits for sealed records that are not yet taken for writing.
    room: Semaphore,
    pending: Mutex<Pending>,
    /// Wakes idle syncers: something to write, or the log is closing.
    work: Condvar,
    /// Used by one thread at a time: the syncer holding `writing`, or the
    /// one shutting the log once nothing else is in flight.
    sink: Mutex<Box<dyn AuditSink>>,
    /// Used by one thread at a time: the syncer holding the checkpointing
    /// job, or the one shutting the log.
    checkpoints: Mutex<Option<CheckpointWriter>>,
    /// The durable sequence number when the log was opened.
    opened_at: u64,
    /// The newest checkpointed sequence (0: none, or no checkpoints).
    checkpointed: Arc<AtomicU64>,
    /// Successful batch syncs.
    syncs: AtomicU64,
    /// Batches held back by the commit delay.
    delayed: AtomicU64,
}

/// A syncer's batch from when it is taken until the syncer is done with it.
struct InFlight {
    /// Which syncer (each has at most one batch in flight).
    syncer: usize,
    took_at: Instant,
    records: usize,
}

/// A sealed record not yet written.
struct Unwritten {
    sequence: u64,
    hash: [u8; 32],
    /// Where its line ends in `Pending::buf`.
    end: usize,
    sealed_at: Instant,
}

/// The chain's in-memory tail and the durability pipeline. Sequence numbers
/// only grow along `durable <= written.sequence <= sealed.sequence`.
struct Pending {
    /// The last sealed record: the chain continues after it.
    sealed: ChainHead,
    /// The lines of the sealed records not yet taken for writing.
    buf: Vec<u8>,
    /// An empty buffer kept for reuse.
    spare: Vec<u8>,
    /// The records in `buf`, in order.
    unwritten: VecDeque<Unwritten>,
    /// The last record whose bytes have been appended (and all before it).
    written: ChainHead,
    /// The highest record a completed sync covered.
    durable: u64,
    /// Callers of sealed records, in sequence order, waiting for `durable`
    /// to reach their record (and for the checkpoint before it, if one is
    /// due).
    waiters: VecDeque<(u64, Reply<u64>)>,
    /// A syncer is appending: writes happen one at a time, in chain order.
    writing: bool,
    /// The syncers between taking records and finishing with them
    /// (writing, syncing, answering, checkpointing): which one, when it
    /// took its records, and how many.
    in_flight: Vec<InFlight>,
    /// Syncers waiting for work.
    idle: usize,
    /// The newest durable record a checkpoint is due for, not yet being
    /// written.
    checkpoint_next: Option<ChainHead>,
    /// The record whose checkpoint a syncer is writing (one at a time, in
    /// order).
    checkpointing: Option<u64>,
    /// A close was asked for (or every handle is gone).
    closing: bool,
    /// Callers of close waiting for the outcome.
    closers: Vec<Reply<()>>,
    /// A thread is shutting the log.
    shutting: bool,
    /// How the log was shut, once it was: `Ok`, or `Err` (poisoned).
    outcome: Option<Result<(), ()>>,
    /// Syncer threads still running.
    syncers: usize,
    time: TimeCache,
    /// When the newest batch was taken for writing, and how many records
    /// it had.
    last_take: Option<(Instant, usize)>,
    /// Since when durable records have gone without a checkpoint (kept only
    /// with `checkpoint_after`).
    uncheckpointed_since: Option<Instant>,
    /// Sequence of the first record of the current file (of the next
    /// record, while it is empty): the name it is rotated to.
    segment_first: u64,
    /// Bytes appended to the current file.
    segment_bytes: u64,
    /// The file has reached the rotation size: the next write rotates it
    /// first, once everything written is durable and no sync or checkpoint
    /// is in flight.
    rotate_due: bool,
    /// How many times the log was rotated: a syncer whose handle is older
    /// opens a new one before it writes.
    generation: u64,
}

impl Pending {
    /// Whether a syncer may take sealed records for writing now: nothing is
    /// appended while a due checkpoint is unwritten (as when one writer
    /// checkpointed between two batches), so a failing checkpoint stops the
    /// log right after the record it names.
    fn can_write(&self) -> bool {
        !self.writing
            && !self.unwritten.is_empty()
            && self.checkpointing.is_none()
            && self.checkpoint_next.is_none()
            && (!self.rotate_due
                || (self.in_flight.is_empty() && self.durable == self.written.sequence))
    }

    /// Whether nothing is in flight any more.
    fn quiescent(&self) -> bool {
        self.unwritten.is_empty()
            && self.in_flight.is_empty()
            && self.checkpointing.is_none()
            && self.checkpoint_next.is_none()
    }

    /// Takes the callers that may be answered now: those whose record is
    /// durable, except that no record after a due checkpoint is acknowledged
    /// before that checkpoint is written (so a failing checkpoint refuses
    /// them).
    fn answerable(&mut self) -> Vec<(u64, Reply<u64>)> {
        let barrier = self
            .checkpointing
            .or(self.checkpoint_next.map(|head| head.sequence))
            .unwrap_or(u64::MAX);
        let limit = self.durable.min(barrier);
        let done = self
            .waiters
            .iter()
            .take_while(|(sequence, _)| *sequence <= limit)
            .count();
        self.waiters.drain(..done).collect()
    }

    /// Takes up to `max_batch` sealed records for writing: their bytes and
    /// the last of them.
    fn take(&mut self, max_batch: usize) -> (Vec<u8>, usize, ChainHead) {
        let n = self.unwritten.len().min(max_batch);
        let last = &self.unwritten[n - 1];
        let head = ChainHead {
            sequence: last.sequence,
            hash: last.hash,
        };
        let bytes = if n == self.unwritten.len() {
            self.unwritten.clear();
            std::mem::replace(&mut self.buf, std::mem::take(&mut self.spare))
        } else {
            let cut = last.end;
            let rest = self.buf.split_off(cut);
            self.unwritten.drain(..n);
            for record in &mut self.unwritten {
                record.end -= cut;
            }
            std::mem::replace(&mut self.buf, rest)
        };
        (bytes, n, head)
    }
}

/// `event_time` of the current millisecond, formatted once.
#[derive(Default)]
struct TimeCache {
    millis: i128,
    text: String,
}

impl TimeCache {
    fn now(&mut self) -> Result<String, AuditError> {
        // One reading of the clock, so the text is of the millisecond it is
        // kept for.
        let now = time::OffsetDateTime::now_utc();
        let millis = now.unix_timestamp_nanos() / 1_000_000;
        if millis != self.millis || self.text.is_empty() {
            self.text = rfc3339(now)?;
            self.millis = millis;
        }
        Ok(self.text.clone())
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn sink(&self) -> MutexGuard<'_, Box<dyn AuditSink>> {
        self.sink.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn checkpoint_writer(&self) -> MutexGuard<'_, Option<CheckpointWriter>> {
        self.checkpoints.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Seals `event` after the current tail of the chain and returns where
    /// its answer will come. The caller holds one `room` permit, which this
    /// gives back if nothing is sealed.
    fn seal(
        &self,
        event: AuditEvent,
    ) -> Result<oneshot::Receiver<Result<u64, AuditError>>, AuditError> {
        let event_id = crate::crypto::random_uuid().to_string();
        let (reply, answer) = oneshot::channel();
        let mut pending = self.lock();
        if self.status.state.load(Ordering::Acquire) != OPEN {
            drop(pending);
            self.room.add_permits(1);
            return Err(self.status.refusal());
        }
        let sealed = (|| {
            let sequence = pending
                .sealed
                .sequence
                .checked_add(1)
                .ok_or_else(|| AuditError::Encode("sequence numbers are exhausted".into()))?;
            let time = pending.time.now()?;
            let record = StoredRecord::new(sequence, event_id, time, event, &pending.sealed.hash);
            // On error nothing of it is in the buffer and the chain did not
            // move, so only this caller is affected.
            let hash = encode_line(&record, &mut pending.buf)?;
            Ok((sequence, hash, record))
        })();
        let (sequence, hash, record) = match sealed {
            Ok(sealed) => sealed,
            Err(e) => {
                drop(pending);
                self.room.add_permits(1);
                return Err(e);
            }
        };
        pending.sealed = ChainHead { sequence, hash };
        let end = pending.buf.len();
        pending.unwritten.push_back(Unwritten {
            sequence,
            hash,
            end,
            sealed_at: Instant::now(),
        });
        pending.waiters.push_back((sequence, reply));
        self.unlock_and_wake(pending);
        drop(record);
        Ok(answer)
    }

    /// Lets go of the lock and, if there is something to write and a syncer
    /// idle, wakes one (after unlocking, so it does not wake into a held
    /// lock).
    fn unlock_and_wake(&self, pending: MutexGuard<'_, Pending>) {
        let wake = pending.idle > 0 && pending.can_write();
        // A syncer waiting out the commit delay is not idle; a whole
        // batch waiting ends the delay.
        let full = pending.unwritten.len() == self.max_batch;
        drop(pending);
        if full {
            self.work.notify_all();
        } else if wake {
            self.work.notify_one();
        }
    }

    /// Poisons the log and refuses every caller still waiting: after a
    /// failure nothing more is acknowledged, even a record some other sync
    /// might still cover (failing closed), and nothing sealed is written.
    fn poison(&self, reason: &str) {
        self.poison_locked(self.lock(), reason);
    }

    /// [`Shared::poison`] by the holder of the lock, before anyone else can
    /// take it: a syncer that found its write or sync failed must not let
    /// another one write after the failed batch, or answer for it, in
    /// between.
    fn poison_locked(&self, mut pending: MutexGuard<'_, Pending>, reason: &str) {
        self.status.poison(reason);
        pending.buf.clear();
        pending.unwritten.clear();
        let waiters = std::mem::take(&mut pending.waiters);
        drop(pending);
        // Callers waiting for room are refused too.
        self.room.close();
        self.work.notify_all();
        for (_, reply) in waiters {
            let _ = reply.send(Err(self.status.unavailable()));
        }
    }

    /// Refuses new appends and lets the syncers finish what is sealed, then
    /// shut the log; `closer` gets the outcome.
    fn begin_close(&self, closer: Option<Reply<()>>) {
        // Refuse new appends at once; those already sealed are still
        // written.
        let _ =
            self.status
                .state
                .compare_exchange(OPEN, CLOSED, Ordering::AcqRel, Ordering::Acquire);
        let mut pending = self.lock();
        if let Some(outcome) = pending.outcome {
            drop(pending);
            if let Some(closer) = closer {
                let _ = closer.send(match outcome {
                    Ok(()) => Ok(()),
                    Err(()) => Err(self.status.unavailable()),
                });
            }
            return;
        }
        pending.closing = true;
        pending.closers.extend(closer);
        let orphaned = pending.syncers == 0 && !pending.shutting;
        if orphaned {
            pending.shutting = true;
        }
        drop(pending);
        if orphaned {
            // No syncer thread is left to do it.
            self.shut();
        } else {
            self.work.notify_all();
        }
    }

    /// Final sync and checkpoint, then answers the closers. Called once, by
    /// a syncer when closing and nothing is in flight (or the log is
    /// poisoned). Refuses on a poisoned log: its file may end in a partial
    /// batch, which only a reopen sorts out.
    fn shut(&self) {
        let result = if self.status.poisoned() {
            Err(self.status.unavailable())
        } else {
            let head = self.lock().written;
            let result = self
                .sink()
                .sync()
                .map_err(|e| AuditError::Unavailable {
                    reason: format!("final audit log sync failed: {e}"),
                })
                .and_then(|()| match self.checkpoint_writer().as_mut() {
                    Some(cp) if cp.behind(&head) => cp.write(&head),
                    _ => Ok(()),
                });
            if let Err(e) = &result {
                self.poison(&reason_of(e));
            }
            result
        };
        let closers = {
            let mut pending = self.lock();
            pending.outcome = Some(result.as_ref().map(|_| ()).map_err(|_| ()));
            std::mem::take(&mut pending.closers)
        };
        self.room.close();
        self.work.notify_all();
        for closer in closers {
            let _ = closer.send(match &result {
                Ok(()) => Ok(()),
                Err(_) => Err(self.status.refusal()),
            });
        }
    }

    /// When an idle syncer should checkpoint the durable end of the chain:
    /// it has gone `checkpoint_after` without one and nothing else is in
    /// flight. `None` when nothing is waiting for a checkpoint.
    fn idle_checkpoint_at(&self, pending: &mut Pending) -> Option<Instant> {
        let after = self.checkpoint_after?;
        if self.status.poisoned()
            || pending.closing
            || pending.writing
            || !pending.in_flight.is_empty()
            || pending.checkpointing.is_some()
            || pending.checkpoint_next.is_some()
            || pending.written.sequence != pending.durable
        {
            return None;
        }
        if pending.durable <= self.checkpointed.load(Ordering::Acquire) {
            pending.uncheckpointed_since = None;
            return None;
        }
        pending.uncheckpointed_since.map(|since| since + after)
    }

    /// Writes the checkpoint of `head`, then any that fell due meanwhile,
    /// in order, answering the callers each one held back. Called by the
    /// syncer that took the checkpointing job (set `checkpointing` to
    /// `head`).
    fn write_checkpoints(&self, mut head: ChainHead) {
        loop {
            let written = self
                .checkpoint_writer()
                .as_mut()
                .map_or(Ok(()), |checkpoints| checkpoints.write(&head));
            if let Err(e) = written {
                // Without checkpoints truncation would go unnoticed.
                self.poison(&reason_of(&e));
            }
            let mut pending = self.lock();
            let next = pending
                .checkpoint_next
                .take()
                .filter(|_| !self.status.poisoned());
            pending.checkpointing = next.map(|next| next.sequence);
            let answerable = pending.answerable();
            self.unlock_and_wake(pending);
            for (sequence, reply) in answerable {
                let _ = reply.send(Ok(sequence));
            }
            match next {
                Some(next) => head = next,
                None => return,
            }
        }
    }

    /// Rotates the log before the next write: checkpoints `end`, its last
    /// record (so the chain can go on from it without reading the rotated
    /// file), then has the sink move the file aside, and replaces `syncer`
    /// with one of the new file. Called by the syncer holding `writing`
    /// when everything written is durable and nothing else is in flight.
    /// Returns the generation to sync, or `None` when the log was poisoned.
    ///
    /// A rotation checkpoint promises that its record ends its file (a
    /// chain may start after it once the file is removed), so once it is
    /// written the file must be moved aside or nothing more appended: a
    /// failure from there on poisons the log, and the next start finishes
    /// the move. Whatever can be checked is checked before it.
    fn rotate(&self, end: ChainHead, syncer: &mut Box<dyn AuditSyncer>) -> Option<u64> {
        let first = self.lock().segment_first;
        let can = self.sink().can_rotate(first);
        if let Err(e) = can {
            // Nothing done: appending goes on to the same file, and
            // rotation is tried again after as many bytes more.
            let mut pending = self.lock();
            pending.rotate_due = false;
            pending.segment_bytes = 0;
            let generation = pending.generation;
            drop(pending);
            tracing::warn!(error = %e, "the audit log cannot be rotated now; it goes on in the same file");
            return Some(generation);
        }
        let checkpointed = self
            .checkpoint_writer()
            .as_mut()
            .map_or(Ok(()), |cp| cp.write_rotation(&end));
        if let Err(e) = checkpointed {
            self.poison(&reason_of(&e));
            return None;
        }
        let rotated = {
            // One lock for both (a second while the first is held would
            // never be granted).
            let mut sink = self.sink();
            sink.rotate(first).and_then(|()| sink.syncer())
        };
        match rotated {
            Ok(new) => {
                *syncer = new;
                let mut pending = self.lock();
                pending.rotate_due = false;
                pending.generation += 1;
                pending.segment_first = end.sequence.saturating_add(1);
                pending.segment_bytes = 0;
                let generation = pending.generation;
                drop(pending);
                tracing::info!(
                    first_sequence = first,
                    last_sequence = end.sequence,
                    "audit log rotated"
                );
                Some(generation)
            }
            Err(e) => {
                self.poison(&format!("audit log rotation failed: {e}"));
                None
            }
        }
    }

    /// Writes `bytes` (records up to `head`), syncs, and answers the callers
    /// this sync made durable.
    fn write_and_sync(&self, syncer: &mut dyn AuditSyncer, bytes: &mut Vec<u8>, head: ChainHead) {
        let wrote = self.sink().append(bytes);
        let len = bytes.len() as u64;
        bytes.clear();
        let mut pending = self.lock();
        pending.writing = false;
        if pending.spare.capacity() < bytes.capacity() {
            std::mem::swap(&mut pending.spare, bytes);
        }
        if let Err(e) = wrote {
            // Part of the batch may be on disk; the chain in memory may no
            // longer match the file, so nothing more is written until a
            // reopen re-reads and re-verifies it.
            self.poison_locked(pending, &format!("audit log write failed: {e}"));
            return;
        }
        pending.written = head;
        pending.segment_bytes = pending.segment_bytes.saturating_add(len);
        if self.rotate_bytes > 0 && pending.segment_bytes >= self.rotate_bytes {
            pending.rotate_due = true;
        }
        // Another syncer can write what was sealed meanwhile while this one
        // syncs.
        self.unlock_and_wake(pending);
        // Began after the write returned, so it covers these records.
        let synced = syncer.sync();
        if synced.is_ok() {
            self.syncs.fetch_add(1, Ordering::Relaxed);
        }
        let mut pending = self.lock();
        match synced {
            Ok(()) if !self.status.poisoned() && head.sequence > pending.durable => {
                let before = pending.durable;
                pending.durable = head.sequence;
                let now = Instant::now();
                if self.checkpoint_after.is_some() && pending.uncheckpointed_since.is_none() {
                    pending.uncheckpointed_since = Some(now);
                }
                let overdue = self
                    .checkpoint_after
                    .zip(pending.uncheckpointed_since)
                    .is_some_and(|(after, since)| now.duration_since(since) >= after);
                // Records up to the checkpointed one are answered first:
                // they are durable whatever happens to the checkpoint.
                let answerable = pending.answerable();
                let mut checkpoint = false;
                if overdue || CheckpointWriter::due(self.checkpoint_every, before, head.sequence) {
                    // Covered once that checkpoint is written; a later sync
                    // starts the clock again.
                    pending.uncheckpointed_since = None;
                    if pending.checkpointing.is_none() {
                        // This syncer writes it.
                        pending.checkpointing = Some(head.sequence);
                        checkpoint = true;
                    } else {
                        // The syncer writing one goes on with this.
                        pending.checkpoint_next = Some(head);
                    }
                }
                drop(pending);
                for (sequence, reply) in answerable {
                    let _ = reply.send(Ok(sequence));
                }
                if checkpoint {
                    self.write_checkpoints(head);
                }
            }
            // A later sync already made these records durable, or the log
            // was poisoned meanwhile.
            Ok(()) => {}
            Err(e) => self.poison_locked(pending, &format!("audit log sync failed: {e}")),
        }
    }
}

/// One syncer thread: takes sealed records (in chain order, one writer at
/// a time), writes them, syncs, answers; and shuts the log when it is
/// closing and nothing is left in flight.
fn sync_loop(shared: &Shared, me: usize, mut syncer: Box<dyn AuditSyncer>) {
    let _guard = OnExit(shared);
    let mut pending = shared.lock();
    // This syncer's last wait was for the commit delay (not for a slow sync
    // to be overlapped, nor for work).
    let mut gathering = false;
    // The rotation generation of the file `syncer` syncs.
    let mut generation = 0;
    loop {
        let now = Instant::now();
        // While another sync of many records runs, whatever it does not
        // cover waits for it (its syncer takes it next), unless it turns
        // out slow.
        let in_flight: usize = pending.in_flight.iter().map(|f| f.records).sum();
        let overlap_at = pending
            .in_flight
            .iter()
            .map(|f| f.took_at)
            .min()
            .filter(|_| in_flight >= OVERLAP_BELOW)
            .map(|started| started + OVERLAP_AFTER)
            .filter(|&at| at > now);
        // Under load, the next batch gathers for the commit delay (counted
        // from when the previous one was taken) unless a whole batch is
        // waiting already.
        let gather_until = pending
            .last_take
            .filter(|&(_, records)| records >= OVERLAP_BELOW && !pending.closing)
            .map(|(took_at, _)| took_at + shared.commit_delay);
        let gather_at =
            gather_until.filter(|&at| at > now && pending.unwritten.len() < shared.max_batch);
        let held_until = overlap_at.max(gather_at);
        if !shared.status.poisoned() && pending.can_write() && held_until.is_none() {
            if generation != pending.generation {
                // The log was rotated since this syncer's handle was made.
                let current = pending.generation;
                drop(pending);
                let reopened = shared.sink().syncer();
                pending = shared.lock();
                match reopened {
                    Ok(new) => {
                        syncer = new;
                        generation = current;
                    }
                    Err(e) => {
                        shared.poison_locked(
                            pending,
                            &format!("cannot sync the new audit log after rotating it: {e}"),
                        );
                        pending = shared.lock();
                    }
                }
                continue;
            }
            // Taken at the end of a wait for the commit delay, and its
            // oldest record was sealed before the delay ran out: held back
            // by it.
            let held_back = gathering
                && pending
                    .unwritten
                    .front()
                    .is_some_and(|first| gather_until.is_some_and(|until| first.sealed_at < until));
            if held_back {
                shared.delayed.fetch_add(1, Ordering::Relaxed);
            }
            // The last record before this batch ends the file rotated
            // first.
            let rotate = pending.rotate_due.then_some(pending.written);
            let (mut bytes, n, head) = pending.take(shared.max_batch);
            pending.last_take = Some((now, n));
            pending.writing = true;
            pending.in_flight.push(InFlight {
                syncer: me,
                took_at: now,
                records: n,
            });
            drop(pending);
            shared.room.add_permits(n);
            if let Some(end) = rotate {
                match shared.rotate(end, &mut syncer) {
                    Some(current) => generation = current,
                    None => {
                        // Poisoned: the batch's callers were refused.
                        pending = shared.lock();
                        pending.writing = false;
                        pending.in_flight.retain(|f| f.syncer != me);
                        continue;
                    }
                }
            }
            shared.write_and_sync(syncer.as_mut(), &mut bytes, head);
            pending = shared.lock();
            pending.in_flight.retain(|f| f.syncer != me);
            continue;
        }
        if pending.outcome.is_some() || pending.shutting {
            return;
        }
        if pending.closing && (shared.status.poisoned() || pending.quiescent()) {
            pending.shutting = true;
            drop(pending);
            shared.shut();
            return;
        }
        gathering = gather_at.is_some() && gather_at >= overlap_at;
        match held_until {
            // Not counted idle, so sealing does not wake this thread: it
            // looks again when the running sync has become slow, or the
            // commit delay is over (or a whole batch is waiting).
            Some(at) if !shared.status.poisoned() => {
                pending = shared
                    .work
                    .wait_timeout(pending, at - now)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            _ => {
                // Idle: the newest durable records get their checkpoint
                // once they have gone `checkpoint_after` without one.
                let checkpoint_at = shared.idle_checkpoint_at(&mut pending);
                match checkpoint_at {
                    Some(at) if at <= now => {
                        let head = pending.written;
                        pending.checkpointing = Some(head.sequence);
                        pending.uncheckpointed_since = None;
                        drop(pending);
                        shared.write_checkpoints(head);
                        pending = shared.lock();
                        continue;
                    }
                    Some(at) => {
                        pending.idle += 1;
                        pending = shared
                            .work
                            .wait_timeout(pending, at - now)
                            .unwrap_or_else(|e| e.into_inner())
                            .0;
                        pending.idle -= 1;
                    }
                    None => {
                        pending.idle += 1;
                        pending = shared.work.wait(pending).unwrap_or_else(|e| e.into_inner());
                        pending.idle -= 1;
                    }
                }
            }
        }
    }
}

/// Counts a syncer thread out when it ends; if it unwinds, poisons the log
/// so callers are refused instead of waiting on a thread that is gone.
struct OnExit<'a>(&'a Shared);

impl Drop for OnExit<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.poison("an audit syncer thread panicked");
        }
        let mut pending = self.0.lock();
        pending.syncers -= 1;
        let orphaned = pending.syncers == 0 && !pending.shutting;
        if orphaned {
            pending.closing = true;
            pending.shutting = true;
        }
        drop(pending);
        if orphaned {
            // The last syncer is gone before the log was shut (it
            // panicked): nobody else will answer the closers.
            if !self.0.status.poisoned() {
                self.0.poison("the audit syncer threads have stopped");
            }
            self.0.shut();
        }
    }
}

/// The bare reason, so a poisoned log does not report "unavailable:
/// unavailable: …".
fn reason_of(error: &AuditError) -> String {
    match error {
        AuditError::Unavailable { reason } => reason.clone(),
        other => other.to_string(),
    }
}

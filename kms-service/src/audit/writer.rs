//! The group-committing writer: async callers queue events and await a
//! oneshot; one dedicated std thread seals, writes and syncs them in batches.
//!
//! A plain thread rather than a tokio task because every batch ends in a
//! blocking `fsync`, and because the writer must keep the chain in order
//! regardless of which runtime (if any) the callers use. The queue is bounded
//! so that a stalled disk pushes back on callers instead of growing memory.

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader};
use std::path::Path;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};

use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;
use zeroize::Zeroizing;

use super::checkpoint::CheckpointWriter;
use super::record::{StoredRecord, encode_line, now_rfc3339};
use super::verify::{Tail, inspect};
use super::{AuditConfig, AuditError, AuditEvent, AuditSink, ChainHead, FileSink, MAX_BATCH_LIMIT};

/// Checkpointing for [`AuditLog::with_sink`].
pub struct CheckpointSink {
    pub sink: Box<dyn AuditSink>,
    /// HMAC-SHA256 key for checkpoints.
    pub key: Zeroizing<[u8; 32]>,
    /// Checkpoint after every this many records (and on close); 0 means only
    /// on close.
    pub every: u64,
}

/// Handle to the audit log. Cheap to clone; all clones feed the same writer.
/// When the last clone is dropped without [`AuditLog::close`], the writer
/// still finishes what was queued and writes a final checkpoint.
#[derive(Clone)]
pub struct AuditLog {
    queue: mpsc::Sender<Command>,
    status: Arc<Status>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.status.state.load(Ordering::Acquire) {
            OPEN => "open",
            POISONED => "poisoned",
            _ => "closed",
        };
        f.debug_struct("AuditLog").field("state", &state).finish()
    }
}

type Reply<T> = oneshot::Sender<Result<T, AuditError>>;

enum Command {
    // Boxed: an event is several hundred bytes, a close is one pointer.
    Append(Box<AuditEvent>, Reply<u64>),
    Close(Reply<()>),
}

const OPEN: u8 = 0;
const POISONED: u8 = 1;
const CLOSED: u8 = 2;

/// State shared by the handles (to fail fast) and the writer (to set it).
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

    /// What a close that finds the writer already gone reports.
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
            max_batch,
        } = config;
        check_max_batch(max_batch)?;
        if log_path == checkpoint_path {
            return Err(AuditError::Config(
                "the log and checkpoint paths must differ".into(),
            ));
        }
        let log = open_existing(&log_path)?;
        let checkpoints = open_existing(&checkpoint_path)?;
        let seen = inspect(log, checkpoints, Some(&checkpoint_key), Tail::Truncate).map_err(
            |failure| AuditError::Corrupt {
                path: match failure.file {
                    super::AuditFile::Log => log_path.clone(),
                    super::AuditFile::Checkpoints => checkpoint_path.clone(),
                },
                failure,
            },
        )?;
        if seen.log_tail.partial {
            truncate(&log_path, seen.log_tail.complete_len)?;
        }
        if seen.checkpoint_tail.partial {
            truncate(&checkpoint_path, seen.checkpoint_tail.complete_len)?;
        }
        let sink = FileSink::open(&log_path)?;
        let checkpoint_sink = FileSink::open(&checkpoint_path)?;
        spawn(
            Box::new(sink),
            Some(CheckpointWriter::new(
                Box::new(checkpoint_sink),
                checkpoint_key,
                checkpoint_every,
                seen.last_checkpointed,
            )),
            seen.head,
            max_batch,
        )
    }

    /// Starts a log over any sink, continuing after `resume` (use
    /// [`ChainHead::GENESIS`] for a new log). Nothing is read or verified:
    /// the caller vouches for `resume`. `max_batch` must be
    /// 1..=[`MAX_BATCH_LIMIT`].
    pub fn with_sink(
        sink: Box<dyn AuditSink>,
        checkpoints: Option<CheckpointSink>,
        resume: ChainHead,
        max_batch: usize,
    ) -> Result<AuditLog, AuditError> {
        check_max_batch(max_batch)?;
        let checkpoints = checkpoints.map(|cp| CheckpointWriter::new(cp.sink, cp.key, cp.every, 0));
        spawn(sink, checkpoints, resume, max_batch)
    }

    /// Appends one record and returns its sequence number once it is durable
    /// (written and synced, together with whatever else was queued). Any
    /// `Err` means the call being audited must be refused: after a write or
    /// sync failure every later append fails fast with
    /// [`AuditError::Unavailable`]. If this future is dropped after the event
    /// was queued, the record may still be written.
    pub async fn append(&self, event: AuditEvent) -> Result<u64, AuditError> {
        if self.status.state.load(Ordering::Acquire) != OPEN {
            return Err(self.status.refusal());
        }
        let (reply, answer) = oneshot::channel();
        if self
            .queue
            .send(Command::Append(Box::new(event), reply))
            .await
            .is_err()
        {
            return Err(self.status.refusal());
        }
        answer.await.unwrap_or_else(|_| Err(self.status.refusal()))
    }

    /// Lets everything already queued finish, writes a final checkpoint,
    /// syncs and stops the writer; later appends fail with
    /// [`AuditError::Closed`]. Closing again is a no-op. Fails if the log was
    /// poisoned or the final checkpoint or sync fails.
    pub async fn close(&self) -> Result<(), AuditError> {
        // Refuse new appends at once; those already queued are still written.
        let _ =
            self.status
                .state
                .compare_exchange(OPEN, CLOSED, Ordering::AcqRel, Ordering::Acquire);
        let (reply, answer) = oneshot::channel();
        if self.queue.send(Command::Close(reply)).await.is_err() {
            return self.status.close_outcome();
        }
        answer.await.unwrap_or_else(|_| self.status.close_outcome())
    }
}

fn check_max_batch(max_batch: usize) -> Result<(), AuditError> {
    if (1..=MAX_BATCH_LIMIT).contains(&max_batch) {
        Ok(())
    } else {
        Err(AuditError::Config(format!(
            "max_batch must be between 1 and {MAX_BATCH_LIMIT}, not {max_batch}"
        )))
    }
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
    sink: Box<dyn AuditSink>,
    checkpoints: Option<CheckpointWriter>,
    head: ChainHead,
    max_batch: usize,
) -> Result<AuditLog, AuditError> {
    let status = Arc::new(Status {
        state: AtomicU8::new(OPEN),
        poison_reason: OnceLock::new(),
    });
    // Two batches' worth: one being written, one filling up meanwhile.
    let (queue, requests) = mpsc::channel(max_batch.saturating_mul(2));
    let writer = Writer {
        sink,
        checkpoints,
        head,
        max_batch,
        status: Arc::clone(&status),
        buf: Vec::new(),
    };
    std::thread::Builder::new()
        .name("audit-writer".into())
        .spawn(move || writer.run(requests))
        .map_err(|source| AuditError::Io {
            action: "start the writer thread for",
            path: "audit log".into(),
            source,
        })?;
    Ok(AuditLog { queue, status })
}

struct Writer {
    sink: Box<dyn AuditSink>,
    checkpoints: Option<CheckpointWriter>,
    /// Last durable record.
    head: ChainHead,
    max_batch: usize,
    status: Arc<Status>,
    /// Reused across batches to avoid reallocating.
    buf: Vec<u8>,
}

/// Poisons the log if the writer thread unwinds, so callers are refused
/// instead of waiting on a writer that is gone.
struct PoisonOnPanic(Arc<Status>);

impl Drop for PoisonOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.poison("the audit writer panicked");
        }
    }
}

impl Writer {
    fn run(mut self, mut requests: mpsc::Receiver<Command>) {
        let _guard = PoisonOnPanic(Arc::clone(&self.status));
        let mut commands = Vec::with_capacity(self.max_batch);
        loop {
            commands.clear();
            // Blocks for the first command, then takes whatever else is
            // already queued: that is the whole of group commit.
            if requests.blocking_recv_many(&mut commands, self.max_batch) == 0 {
                // Every handle was dropped without close: finish cleanly
                // anyway; nobody is left to hear about a failure.
                let _ = self.shutdown();
                return;
            }
            let mut batch = Vec::with_capacity(commands.len());
            let mut closes = Vec::new();
            for command in commands.drain(..) {
                match command {
                    // Anything queued behind a close lost the race with it.
                    Command::Append(_, reply) if !closes.is_empty() => {
                        let _ = reply.send(Err(AuditError::Closed));
                    }
                    Command::Append(event, reply) => batch.push((event, reply)),
                    Command::Close(reply) => closes.push(reply),
                }
            }
            self.commit(batch);
            if !closes.is_empty() {
                let outcome = self.shutdown();
                for reply in closes {
                    let _ = reply.send(match &outcome {
                        Ok(()) => Ok(()),
                        Err(_) => Err(self.status.refusal()),
                    });
                }
                requests.close();
                while let Ok(command) = requests.try_recv() {
                    match command {
                        Command::Append(_, reply) => {
                            let _ = reply.send(Err(self.status.refusal()));
                        }
                        Command::Close(reply) => {
                            let _ = reply.send(self.status.close_outcome());
                        }
                    }
                }
                return;
            }
        }
    }

    /// Seals, writes and syncs one batch, then answers its callers.
    fn commit(&mut self, batch: Vec<(Box<AuditEvent>, Reply<u64>)>) {
        if self.status.state.load(Ordering::Acquire) == POISONED {
            for (_, reply) in batch {
                let _ = reply.send(Err(self.status.unavailable()));
            }
            return;
        }
        self.buf.clear();
        let mut head = self.head;
        let mut sealed = Vec::with_capacity(batch.len());
        for (event, reply) in batch {
            match self.seal(&mut head, *event) {
                Ok(sequence) => sealed.push((sequence, reply)),
                // Nothing of it is in the buffer and the chain did not move,
                // so only this caller is affected.
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            }
        }
        if sealed.is_empty() {
            return;
        }
        let written = self.sink.append(&self.buf).and_then(|()| self.sink.sync());
        if let Err(e) = written {
            // Part of the batch may be on disk; the chain in memory may no
            // longer match the file, so nothing more is written until a
            // reopen re-reads and re-verifies it.
            self.status.poison(&format!("audit log write failed: {e}"));
            for (_, reply) in sealed {
                let _ = reply.send(Err(self.status.unavailable()));
            }
            return;
        }
        let before = self.head.sequence;
        self.head = head;
        for (sequence, reply) in sealed {
            let _ = reply.send(Ok(sequence));
        }
        // After answering: these records are durable whatever happens to the
        // checkpoint. A checkpoint failure still poisons the log, because
        // without checkpoints truncation would go unnoticed.
        if let Some(checkpoints) = &mut self.checkpoints
            && checkpoints.due(before, self.head.sequence)
            && let Err(e) = checkpoints.write(&self.head)
        {
            self.status.poison(&reason_of(&e));
        }
    }

    /// Serializes one record after `head` into the batch buffer and advances
    /// `head` to it.
    fn seal(&mut self, head: &mut ChainHead, event: AuditEvent) -> Result<u64, AuditError> {
        let sequence = head
            .sequence
            .checked_add(1)
            .ok_or_else(|| AuditError::Encode("sequence numbers are exhausted".into()))?;
        let record = StoredRecord::new(
            sequence,
            Uuid::new_v4().to_string(),
            now_rfc3339()?,
            event,
            &head.hash,
        );
        let hash = encode_line(&record, &mut self.buf)?;
        *head = ChainHead { sequence, hash };
        Ok(sequence)
    }

    /// Final checkpoint and sync. Refuses on a poisoned log: its file may end
    /// in a partial batch, which only a reopen sorts out.
    fn shutdown(&mut self) -> Result<(), AuditError> {
        if self.status.state.load(Ordering::Acquire) == POISONED {
            return Err(self.status.unavailable());
        }
        let result = self
            .sink
            .sync()
            .map_err(|e| AuditError::Unavailable {
                reason: format!("final audit log sync failed: {e}"),
            })
            .and_then(|()| match &mut self.checkpoints {
                Some(cp) if cp.behind(&self.head) => cp.write(&self.head),
                _ => Ok(()),
            });
        if let Err(e) = &result {
            self.status.poison(&reason_of(e));
        }
        result
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

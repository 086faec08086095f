//! Group commit: one thread owns the store's write path, drains every batch
//! queued since its last transaction, commits them together (one fsync) and
//! then answers each waiter.
//!
//! Batches are numbered in the order they are queued; callers queue while
//! holding the state lock, so commit order is apply order. A read that saw
//! state up to batch N waits for `durable >= N` before it answers, so nothing
//! is acknowledged on the strength of a change that could still be lost.
//! After a failed commit the committer is poisoned: memory may be ahead of
//! disk, so every later request fails until restart (fail closed).
//!
//! A batch queued with [`GroupCommitter::enqueue_held`] is not committed
//! until [`GroupCommitter::release`] lets it go, and batches behind it wait
//! with it: the service releases a call's changes only once the call's audit
//! record is durable, so no change is ever stored without its record. When
//! a record cannot be made durable, [`GroupCommitter::abandon`] poisons the
//! committer and the held batches are dropped, never committed.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};

use lockbox_proto::job_thread::JobThread;
use tokio::sync::watch;

use super::{Mutation, Store, StoreError};

type Job = (u64, Vec<Mutation>);

pub struct GroupCommitter {
    /// The commit thread, joined on drop so the store is closed (and its
    /// lock let go) by the time the committer is gone.
    queue: JobThread<Job>,
    enqueued: AtomicU64,
    /// Batches numbered but not yet sent to the commit thread.
    held: Mutex<Held>,
    durable: watch::Receiver<u64>,
    /// Shared with the commit thread, so that [`GroupCommitter::abandon`]
    /// can wake every waiter.
    durable_tx: Arc<watch::Sender<u64>>,
    poisoned: Arc<AtomicBool>,
    max_batch: usize,
}

#[derive(Default)]
struct Held {
    /// The number of the next batch to send to the commit thread.
    next: u64,
    /// Numbered batches not yet sent: whether each is released, and it.
    batches: BTreeMap<u64, (bool, Vec<Mutation>)>,
}

/// Largest number of mutations merged into one transaction.
pub const DEFAULT_MAX_BATCH: usize = 4096;

impl GroupCommitter {
    pub fn start(store: Arc<dyn Store>) -> Self {
        let (durable_tx, durable) = watch::channel(0u64);
        let durable_tx = Arc::new(durable_tx);
        let poisoned = Arc::new(AtomicBool::new(false));
        let (flag, sender) = (poisoned.clone(), durable_tx.clone());
        let queue = JobThread::spawn("kms-store-commit", move |jobs| {
            run(store, jobs, &sender, flag, DEFAULT_MAX_BATCH)
        })
        .expect("spawn store commit thread");
        GroupCommitter {
            queue,
            enqueued: AtomicU64::new(0),
            held: Mutex::new(Held {
                next: 1,
                batches: BTreeMap::new(),
            }),
            durable,
            durable_tx,
            poisoned,
            max_batch: DEFAULT_MAX_BATCH,
        }
    }

    /// Queues a batch to be committed as soon as the batches before it;
    /// returns its number. Call while holding the lock that orders state
    /// changes.
    pub fn enqueue(&self, batch: Vec<Mutation>) -> Result<u64, StoreError> {
        self.queue_batch(batch, true)
    }

    /// Queues a batch that is not committed (nor are any queued after it)
    /// until [`GroupCommitter::release`] is called with its number.
    pub fn enqueue_held(&self, batch: Vec<Mutation>) -> Result<u64, StoreError> {
        self.queue_batch(batch, false)
    }

    fn queue_batch(&self, batch: Vec<Mutation>, released: bool) -> Result<u64, StoreError> {
        self.check()?;
        debug_assert!(batch.len() <= self.max_batch);
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let seq = self.enqueued.fetch_add(1, Ordering::AcqRel) + 1;
        held.batches.insert(seq, (released, batch));
        self.send_released(&mut held)?;
        Ok(seq)
    }

    /// Lets held batch `seq` be committed (with every released one behind
    /// it). Nothing happens once the committer is poisoned.
    pub fn release(&self, seq: u64) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = held.batches.get_mut(&seq) {
            entry.0 = true;
        }
        // A closed commit thread has poisoned the committer already.
        let _ = self.send_released(&mut held);
    }

    /// Poisons the committer without committing the held batches: every
    /// later request fails until restart, as after a failed commit.
    pub fn abandon(&self) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        self.poisoned.store(true, Ordering::Release);
        held.batches.clear();
        // Wake every waiter so it sees the poison.
        self.durable_tx.send_modify(|_| {});
    }

    /// Sends the released batches at the head of the queue, in order.
    fn send_released(&self, held: &mut Held) -> Result<(), StoreError> {
        if self.poisoned.load(Ordering::Acquire) {
            held.batches.clear();
            return Err(StoreError::Poisoned);
        }
        while let Some(entry) = held.batches.first_entry() {
            if *entry.key() != held.next || !entry.get().0 {
                break;
            }
            let (seq, (_, batch)) = entry.remove_entry();
            held.next += 1;
            self.queue
                .send((seq, batch))
                .map_err(|_| StoreError::Poisoned)?;
        }
        Ok(())
    }

    /// Whether a failed commit (or an abandoned change) has stopped the
    /// committer: every later change fails until restart.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::Acquire)
    }

    /// The number of the newest queued batch.
    pub fn last_enqueued(&self) -> u64 {
        self.enqueued.load(Ordering::Acquire)
    }

    /// Waits until batch `seq` and all before it are durable.
    pub async fn wait_durable(&self, seq: u64) -> Result<(), StoreError> {
        if seq == 0 {
            return self.check();
        }
        let mut rx = self.durable.clone();
        loop {
            self.check()?;
            if *rx.borrow_and_update() >= seq {
                return Ok(());
            }
            if rx.changed().await.is_err() {
                return Err(StoreError::Poisoned);
            }
        }
    }

    fn check(&self) -> Result<(), StoreError> {
        if self.poisoned.load(Ordering::Acquire) {
            Err(StoreError::Poisoned)
        } else {
            Ok(())
        }
    }
}

fn run(
    store: Arc<dyn Store>,
    jobs: mpsc::Receiver<Job>,
    durable: &watch::Sender<u64>,
    poisoned: Arc<AtomicBool>,
    max_batch: usize,
) {
    while let Ok(first) = jobs.recv() {
        let mut last_seq = first.0;
        let mut batch = first.1;
        while batch.len() < max_batch {
            match jobs.try_recv() {
                Ok((seq, more)) => {
                    last_seq = seq;
                    batch.extend(more);
                }
                Err(_) => break,
            }
        }
        if let Err(error) = store.commit(&batch) {
            tracing::error!(%error, "store commit failed; refusing all further requests");
            poisoned.store(true, Ordering::Release);
            // Wake every waiter so it sees the poison.
            durable.send_modify(|_| {});
            // Nothing more is committed, but the store (and with it the
            // data directory's lock) is kept until the committer is
            // dropped: the process goes on, writing its audit log, and no
            // other may open the directory meanwhile.
            for _ in jobs.iter() {}
            return;
        }
        durable.send_replace(last_seq);
    }
}

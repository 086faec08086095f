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

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;

use lockbox_proto::job_thread::JobThread;
use tokio::sync::watch;

use super::{Mutation, Store, StoreError};

type Job = (u64, Vec<Mutation>);

pub struct GroupCommitter {
    /// The commit thread, joined on drop so the store is closed (and its
    /// lock let go) by the time the committer is gone.
    queue: JobThread<Job>,
    enqueued: AtomicU64,
    durable: watch::Receiver<u64>,
    poisoned: Arc<AtomicBool>,
    max_batch: usize,
}

/// Largest number of mutations merged into one transaction.
pub const DEFAULT_MAX_BATCH: usize = 4096;

impl GroupCommitter {
    pub fn start(store: Arc<dyn Store>) -> Self {
        let (durable_tx, durable) = watch::channel(0u64);
        let poisoned = Arc::new(AtomicBool::new(false));
        let flag = poisoned.clone();
        let queue = JobThread::spawn("kms-store-commit", move |jobs| {
            run(store, jobs, durable_tx, flag, DEFAULT_MAX_BATCH)
        })
        .expect("spawn store commit thread");
        GroupCommitter {
            queue,
            enqueued: AtomicU64::new(0),
            durable,
            poisoned,
            max_batch: DEFAULT_MAX_BATCH,
        }
    }

    /// Queues a batch; returns its number. Call while holding the lock that
    /// orders state changes.
    pub fn enqueue(&self, batch: Vec<Mutation>) -> Result<u64, StoreError> {
        if self.poisoned.load(Ordering::Acquire) {
            return Err(StoreError::Poisoned);
        }
        debug_assert!(batch.len() <= self.max_batch);
        let seq = self.enqueued.fetch_add(1, Ordering::AcqRel) + 1;
        self.queue
            .send((seq, batch))
            .map_err(|_| StoreError::Poisoned)?;
        Ok(seq)
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
    durable: watch::Sender<u64>,
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
            return;
        }
        durable.send_replace(last_seq);
    }
}

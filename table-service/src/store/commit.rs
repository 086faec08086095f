//! Group commit: one thread owns the write path, merges every batch queued
//! since its last transaction into one commit (one fsync), then answers each
//! waiter. After a failed commit every later write fails (fail closed).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;

use lockbox_proto::job_thread::JobThread;
use tokio::sync::oneshot;

use super::{Mutation, StoreError, TableStore};

type Job = (Vec<Mutation>, oneshot::Sender<Result<(), String>>);

pub struct GroupCommit {
    /// The commit thread, joined on drop so the store is closed (and its
    /// lock let go) by the time the committer is gone.
    queue: JobThread<Job>,
    poisoned: Arc<AtomicBool>,
}

const MAX_BATCH: usize = 4096;

impl GroupCommit {
    pub fn start(store: Arc<dyn TableStore>) -> Self {
        let poisoned = Arc::new(AtomicBool::new(false));
        let flag = poisoned.clone();
        let queue = JobThread::spawn("table-store-commit", move |jobs| run(store, jobs, flag))
            .expect("spawn store commit thread");
        GroupCommit { queue, poisoned }
    }

    /// Whether a failed commit has stopped the committer: every later
    /// write fails until restart.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::Acquire)
    }

    /// Commits `batch` together with whatever else is queued; returns once
    /// it is durable.
    pub async fn commit(&self, batch: Vec<Mutation>) -> Result<(), StoreError> {
        if self.poisoned.load(Ordering::Acquire) {
            return Err(StoreError::Poisoned);
        }
        let (tx, rx) = oneshot::channel();
        self.queue
            .send((batch, tx))
            .map_err(|_| StoreError::Poisoned)?;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(StoreError::Engine(e)),
            Err(_) => Err(StoreError::Poisoned),
        }
    }
}

fn run(store: Arc<dyn TableStore>, jobs: mpsc::Receiver<Job>, poisoned: Arc<AtomicBool>) {
    while let Ok(first) = jobs.recv() {
        let mut batch = first.0;
        let mut waiters = vec![first.1];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok((more, waiter)) => {
                    batch.extend(more);
                    waiters.push(waiter);
                }
                Err(_) => break,
            }
        }
        // Waiters get it back as `StoreError::Engine`: its message only,
        // so their error does not say "storage engine failed" twice.
        let result = store.commit(&batch).map_err(|e| match e {
            StoreError::Engine(message) => message,
            other => other.to_string(),
        });
        if let Err(error) = &result {
            tracing::error!(%error, "item store commit failed; refusing all further writes");
            poisoned.store(true, Ordering::Release);
        }
        for waiter in waiters {
            let _ = waiter.send(result.clone());
        }
        if result.is_err() {
            return;
        }
    }
}

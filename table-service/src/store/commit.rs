//! Group commit: one thread owns the write path, merges every batch queued
//! since its last transaction into one commit (one fsync), then answers each
//! waiter. After a failed commit every later write fails (fail closed).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;

use tokio::sync::oneshot;

use super::{Mutation, StoreError, TableStore};

type Job = (Vec<Mutation>, oneshot::Sender<Result<(), String>>);

pub struct GroupCommit {
    /// `None` only while being dropped.
    queue: Option<mpsc::Sender<Job>>,
    poisoned: Arc<AtomicBool>,
    /// The commit thread, joined on drop so the store is closed (and its
    /// lock let go) by the time the committer is gone.
    thread: Option<std::thread::JoinHandle<()>>,
}

const MAX_BATCH: usize = 4096;

impl GroupCommit {
    pub fn start(store: Arc<dyn TableStore>) -> Self {
        let (queue, jobs) = mpsc::channel::<Job>();
        let poisoned = Arc::new(AtomicBool::new(false));
        let flag = poisoned.clone();
        let thread = std::thread::Builder::new()
            .name("table-store-commit".into())
            .spawn(move || run(store, jobs, flag))
            .expect("spawn store commit thread");
        GroupCommit {
            queue: Some(queue),
            poisoned,
            thread: Some(thread),
        }
    }

    /// Commits `batch` together with whatever else is queued; returns once
    /// it is durable.
    pub async fn commit(&self, batch: Vec<Mutation>) -> Result<(), StoreError> {
        if self.poisoned.load(Ordering::Acquire) {
            return Err(StoreError::Poisoned);
        }
        let (tx, rx) = oneshot::channel();
        self.queue
            .as_ref()
            .ok_or(StoreError::Poisoned)?
            .send((batch, tx))
            .map_err(|_| StoreError::Poisoned)?;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(StoreError::Engine(e)),
            Err(_) => Err(StoreError::Poisoned),
        }
    }
}

impl Drop for GroupCommit {
    /// Lets the thread commit what is queued, then waits for it to end.
    fn drop(&mut self) {
        drop(self.queue.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
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
        let result = store.commit(&batch).map_err(|e| e.to_string());
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

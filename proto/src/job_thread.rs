//! A named thread fed through a channel (feature `service`): both services'
//! store commit threads. Dropping it closes the channel and waits for the
//! thread to finish what was queued, so whatever the thread holds (a
//! store, and with it the store's lock) is let go by the time the owner is
//! gone.

use std::sync::mpsc;
use std::thread::JoinHandle;

#[derive(Debug)]
pub struct JobThread<J> {
    /// `None` only while being dropped.
    queue: Option<mpsc::Sender<J>>,
    thread: Option<JoinHandle<()>>,
}

impl<J: Send + 'static> JobThread<J> {
    /// Starts `run` on a thread called `name`; it gets the jobs sent, and
    /// its receiver reports the channel closed once the owner is dropped.
    pub fn spawn(
        name: &str,
        run: impl FnOnce(mpsc::Receiver<J>) + Send + 'static,
    ) -> std::io::Result<Self> {
        let (queue, jobs) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || run(jobs))?;
        Ok(JobThread {
            queue: Some(queue),
            thread: Some(thread),
        })
    }

    /// Queues `job`; gives it back if the thread has ended.
    pub fn send(&self, job: J) -> Result<(), J> {
        match &self.queue {
            Some(queue) => queue.send(job).map_err(|e| e.0),
            None => Err(job),
        }
    }
}

impl<J> Drop for JobThread<J> {
    fn drop(&mut self) {
        drop(self.queue.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use super::*;

    #[test]
    fn dropping_waits_for_the_queued_jobs_and_what_the_thread_holds() {
        let done = Arc::new(Mutex::new(Vec::new()));
        let held = Arc::new(());
        let worker = {
            let (done, held) = (Arc::clone(&done), Arc::clone(&held));
            JobThread::spawn("test-jobs", move |jobs: mpsc::Receiver<u32>| {
                let _held = held;
                for job in jobs {
                    std::thread::sleep(Duration::from_millis(20));
                    done.lock().unwrap().push(job);
                }
            })
            .expect("spawn")
        };
        for job in 0..5 {
            worker.send(job).expect("queued");
        }
        drop(worker);
        assert_eq!(*done.lock().unwrap(), vec![0, 1, 2, 3, 4]);
        assert_eq!(
            Arc::strong_count(&held),
            1,
            "the thread let go of what it held"
        );
    }

    #[test]
    fn a_job_for_an_ended_thread_comes_back() {
        let worker =
            JobThread::spawn("test-ended", |_jobs: mpsc::Receiver<u32>| {}).expect("spawn");
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(worker.send(7), Err(7));
    }
}

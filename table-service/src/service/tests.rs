//! Service tests.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::spawn_bounded;

/// Counts the tasks running at once and the most ever seen.
#[derive(Default)]
struct Gauge {
    now: AtomicUsize,
    peak: AtomicUsize,
    finished: AtomicUsize,
}

impl Gauge {
    async fn hold(&self, pause: Duration) {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(pause).await;
        self.now.fetch_sub(1, Ordering::SeqCst);
        self.finished.fetch_add(1, Ordering::SeqCst);
    }
}

/// `count` tasks of uneven length (later ones finish first) that report
/// their index.
fn tasks(
    gauge: &Arc<Gauge>,
    count: usize,
) -> impl Iterator<Item = impl Future<Output = usize> + Send + 'static> {
    (0..count).map(move |i| {
        let gauge = gauge.clone();
        async move {
            gauge
                .hold(Duration::from_millis(2 + (count - i) as u64 % 7))
                .await;
            i
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounded_tasks_overlap_up_to_their_width_and_keep_their_order() {
    for (count, width, peak) in [(40, 8, 8), (40, 1, 1), (5, 100, 5), (0, 4, 0), (3, 0, 1)] {
        let gauge = Arc::new(Gauge::default());
        let out = spawn_bounded(width, tasks(&gauge, count)).await.unwrap();
        assert_eq!(
            out,
            (0..count).collect::<Vec<_>>(),
            "{count} tasks, width {width}"
        );
        assert_eq!(
            gauge.peak.load(Ordering::SeqCst),
            peak,
            "{count} tasks, width {width}: most at once"
        );
        assert_eq!(gauge.finished.load(Ordering::SeqCst), count);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_bounded_tasks_aborts_those_running_and_starts_no_more() {
    /// Counts the tasks whose future was dropped, finished or not.
    struct Dropped(Arc<AtomicUsize>);
    impl Drop for Dropped {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    let gauge = Arc::new(Gauge::default());
    let dropped = Arc::new(AtomicUsize::new(0));
    let created = Arc::new(AtomicUsize::new(0));
    let slow = (0..10).map(|_| {
        created.fetch_add(1, Ordering::SeqCst);
        let gauge = gauge.clone();
        let dropped = Dropped(dropped.clone());
        async move {
            let _dropped = dropped;
            gauge.hold(Duration::from_secs(3600)).await
        }
    });
    let run = spawn_bounded(4, slow);
    assert!(
        tokio::time::timeout(Duration::from_millis(100), run)
            .await
            .is_err()
    );
    // The four started tasks were aborted, and no other started.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(gauge.peak.load(Ordering::SeqCst), 4);
    assert_eq!(gauge.finished.load(Ordering::SeqCst), 0);
    let created = created.load(Ordering::SeqCst);
    assert!(created < 10, "{created} of 10 tasks made: the rest wait");
    assert_eq!(
        dropped.load(Ordering::SeqCst),
        created,
        "every task made was dropped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_bounded_task_is_reported_not_lost() {
    let tasks = (0..5).map(|i| async move {
        assert!(i != 3, "task {i} fails");
        i
    });
    let error = spawn_bounded(2, tasks).await.unwrap_err();
    assert!(error.is_panic());
}

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
        let out = spawn_bounded(width, tasks(&gauge, count), |_| false)
            .await
            .unwrap();
        assert_eq!(
            out,
            (0..count).map(Some).collect::<Vec<_>>(),
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
    let run = spawn_bounded(4, slow, |_| false);
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

/// Once an output says stop, no further task starts; those running end,
/// and the rest are `None`, in their places.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounded_tasks_stop_starting_after_a_stopping_output() {
    // Task 1 ends at once, saying stop; the others take 50 ms.
    let tasks = (0..20usize).map(|i| async move {
        if i != 1 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        i
    });
    let out = spawn_bounded(3, tasks, |&i| i == 1).await.unwrap();
    let mut expected: Vec<Option<usize>> = vec![Some(0), Some(1), Some(2)];
    expected.resize(20, None);
    assert_eq!(out, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_bounded_task_is_reported_not_lost() {
    let tasks = (0..5).map(|i| async move {
        assert!(i != 3, "task {i} fails");
        i
    });
    let error = spawn_bounded(2, tasks, |_| false).await.unwrap_err();
    assert!(error.is_panic());
}

/// A table whose key another UpdateTable switched (and whose re-wrap
/// already finished) since this one read it is not switched again from the
/// stale reading: its grants cover the key it read, not the key the table
/// has now, and a re-wrap without them would be refused for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_switch_from_a_stale_reading_of_the_table_is_refused() {
    use crate::model::{KeySchema, ScalarType};
    use crate::store::{Mutation, TableRecord, TableStore};

    let dir = tempfile::tempdir().unwrap();
    let store =
        crate::store::sqlite::SqliteTableStore::open(&dir.path().join("tables.db")).unwrap();
    let record = |key: &str| TableRecord {
        name: "orders".into(),
        table_id: "0f6c2d7e-3a1b-4c5d-8e9f-a0b1c2d3e4f5".into(),
        schema: KeySchema {
            partition: ("id".into(), ScalarType::S),
            sort: None,
        },
        kms_key_id: key.into(),
        service_managed: false,
        created: 1_717_171_717,
        rewrap: None,
    };
    // The table is under key B now; this UpdateTable read it under key A.
    store
        .commit(&[Mutation::PutTable(record("key-b"))])
        .unwrap();
    let kms = crate::kms::KmsClient::new(
        "http://127.0.0.1:9",
        zeroize::Zeroizing::new("Bearer lbx_unused".into()),
        Duration::from_millis(200),
        None,
    )
    .unwrap();
    let tables = super::Tables::open(
        Arc::new(store),
        kms,
        super::TablesConfig {
            data_key_cache: crate::cache::CacheConfig {
                ttl: Duration::ZERO,
                capacity: 0,
            },
            authz_cache: crate::cache::CacheConfig {
                ttl: Duration::ZERO,
                capacity: 0,
            },
            unwrap_concurrency: 1,
            max_response_bytes: 1 << 20,
        },
    )
    .unwrap();
    let stale = record("key-a");
    let switched = tables
        .switch_key(
            "orders",
            &stale,
            crate::kms::KeyInfo {
                key_id: "key-c".into(),
                state: "Enabled".into(),
                encrypts: true,
            },
            false,
            vec![],
        )
        .await;
    assert!(
        matches!(switched, Err(crate::error::TableError::ConcurrentChange(_))),
        "{:?}",
        switched.map(|v| v.record.kms_key_id)
    );
    assert_eq!(tables.table("orders").unwrap().kms_key_id, "key-b");
}

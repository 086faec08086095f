//! Store conformance suite: every case is written once against the
//! [`TableStore`] trait, over an [`Engine`] that hands out handles on one
//! durable storage location, and `engines!` at the bottom runs all cases for
//! every engine. Adding an engine (say PostgreSQL against a throwaway schema)
//! is one more line there plus its `Engine` impl.
//!
//! The state of a table is always checked through `check_items`, which looks
//! at it through `get_item`, `scan` and `count_items` at once.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound::{self, Excluded, Included, Unbounded};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};

use hex_literal::hex;

use super::sqlite::SqliteTableStore;
use super::*;
use crate::model::ScalarType;

// ------------------------------------------------------------- engines

/// One engine's storage location, empty when created.
trait Engine {
    /// A new handle on the location: dropping every handle and opening again
    /// must find everything that was committed.
    fn open(&self) -> Arc<dyn TableStore>;
}

struct Sqlite {
    dir: tempfile::TempDir,
}

impl Sqlite {
    fn new() -> Self {
        Sqlite {
            dir: tempfile::tempdir().expect("temporary directory"),
        }
    }
}

impl Engine for Sqlite {
    fn open(&self) -> Arc<dyn TableStore> {
        let path = self.dir.path().join("items.sqlite");
        Arc::new(SqliteTableStore::open(&path).expect("open sqlite store"))
    }
}

/// A store whose `commit` fails while `fail` is set (first announcing itself
/// on `entered` and, if a gate is installed, waiting for it to open); counts
/// commits that reached the inner store.
struct FailingStore {
    inner: Arc<dyn TableStore>,
    fail: AtomicBool,
    entered: tokio::sync::Notify,
    gate: Mutex<Option<mpsc::Receiver<()>>>,
    commits: AtomicUsize,
}

impl FailingStore {
    fn new(inner: Arc<dyn TableStore>) -> Arc<Self> {
        Arc::new(FailingStore {
            inner,
            fail: AtomicBool::new(false),
            entered: tokio::sync::Notify::new(),
            gate: Mutex::new(None),
            commits: AtomicUsize::new(0),
        })
    }
}

impl TableStore for FailingStore {
    fn load_tables(&self) -> Result<Vec<TableRecord>, StoreError> {
        self.inner.load_tables()
    }
    fn commit(&self, batch: &[Mutation]) -> Result<(), StoreError> {
        if self.fail.load(Ordering::SeqCst) {
            self.entered.notify_one();
            if let Some(gate) = self.gate.lock().expect("gate").as_ref() {
                gate.recv().expect("gate opened");
            }
            return Err(StoreError::Engine("disk on fire".into()));
        }
        self.commits.fetch_add(1, Ordering::SeqCst);
        self.inner.commit(batch)
    }
    fn get_item(&self, table_id: &str, key: &ItemKey) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get_item(table_id, key)
    }
    fn query(&self, query: &RangeQuery) -> Result<Vec<StoredItem>, StoreError> {
        self.inner.query(query)
    }
    fn scan(&self, query: &ScanQuery) -> Result<Vec<StoredItem>, StoreError> {
        self.inner.scan(query)
    }
    fn count_items(&self, table_id: &str) -> Result<u64, StoreError> {
        self.inner.count_items(table_id)
    }
    fn dropped_tables(&self) -> Result<Vec<String>, StoreError> {
        self.inner.dropped_tables()
    }
}

// ------------------------------------------------------------- helpers

const T1: &str = "0b8e4a52-0000-4000-8000-000000000001";
const T2: &str = "0b8e4a52-0000-4000-8000-000000000002";

/// A table's expected items: key and envelope.
type Contents = Vec<(ItemKey, Vec<u8>)>;

/// (lower, upper, expected sort keys in ascending order)
type BoundsCase<'a> = (Bound<&'a [u8]>, Bound<&'a [u8]>, &'a [&'a [u8]]);

fn table(name: &str, table_id: &str) -> TableRecord {
    TableRecord {
        name: name.to_owned(),
        table_id: table_id.to_owned(),
        schema: KeySchema {
            partition: ("pk".to_owned(), ScalarType::S),
            sort: Some(("sk".to_owned(), ScalarType::B)),
        },
        kms_key_id: "6f1d9c1e-2b43-4a8e-9d5c-0e7b2a4c8f10".to_owned(),
        service_managed: false,
        created: 1_717_171_717,
        rewrap: None,
    }
}

fn key(partition: &[u8], sort: &[u8]) -> ItemKey {
    ItemKey {
        partition: partition.to_vec(),
        sort: sort.to_vec(),
    }
}

/// A distinct envelope per (tag, key), so a mixed-up row is visible.
fn envelope(tag: &str, key: &ItemKey) -> Vec<u8> {
    format!(
        "{tag}:{}:{}",
        hex::encode(&key.partition),
        hex::encode(&key.sort)
    )
    .into_bytes()
}

fn put(table_id: &str, key: &ItemKey, envelope: &[u8]) -> Mutation {
    Mutation::PutItem {
        table_id: table_id.to_owned(),
        key: key.clone(),
        envelope: envelope.to_vec(),
    }
}

fn delete(table_id: &str, key: &ItemKey) -> Mutation {
    Mutation::DeleteItem {
        table_id: table_id.to_owned(),
        key: key.clone(),
    }
}

fn commit(store: &dyn TableStore, batch: &[Mutation]) {
    store
        .commit(batch)
        .unwrap_or_else(|e| panic!("commit {batch:?}: {e}"));
}

/// Items of `table_id` put with `envelope("v1", key)`, committed in one batch.
fn fill(store: &dyn TableStore, table_id: &str, keys: &[ItemKey]) -> Contents {
    let batch: Vec<Mutation> = keys
        .iter()
        .map(|k| put(table_id, k, &envelope("v1", k)))
        .collect();
    commit(store, &batch);
    keys.iter()
        .map(|k| (k.clone(), envelope("v1", k)))
        .collect()
}

fn scan_all(store: &dyn TableStore, table_id: &str) -> Vec<StoredItem> {
    store
        .scan(&ScanQuery {
            table_id: table_id.to_owned(),
            after: None,
            segment: None,
            limit: 1_000_000,
            max_bytes: usize::MAX,
        })
        .expect("scan")
}

fn keys_of(items: &[StoredItem]) -> Vec<ItemKey> {
    items.iter().map(|i| i.key.clone()).collect()
}

/// The state check: `table_id` holds exactly `expected`, as seen by
/// `get_item`, by a full `scan` (in (partition, sort) order) and by
/// `count_items`.
fn check_items(store: &dyn TableStore, table_id: &str, expected: &[(ItemKey, Vec<u8>)]) {
    let mut want: Vec<StoredItem> = expected
        .iter()
        .map(|(key, envelope)| StoredItem {
            key: key.clone(),
            envelope: envelope.clone(),
        })
        .collect();
    want.sort_by(|a, b| a.key.cmp(&b.key));
    for item in &want {
        assert_eq!(
            store.get_item(table_id, &item.key).expect("get_item"),
            Some(item.envelope.clone()),
            "get_item {:?} in {table_id}",
            item.key
        );
    }
    assert_eq!(scan_all(store, table_id), want, "scan of {table_id}");
    assert_eq!(
        store.count_items(table_id).expect("count_items"),
        want.len() as u64,
        "count_items of {table_id}"
    );
}

/// `load_tables` returns exactly `expected` (in any order).
fn check_tables(store: &dyn TableStore, expected: &[TableRecord]) {
    let mut got = store.load_tables().expect("load_tables");
    got.sort_by(|a, b| a.table_id.cmp(&b.table_id));
    let mut want = expected.to_vec();
    want.sort_by(|a, b| a.table_id.cmp(&b.table_id));
    assert_eq!(got, want);
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

// ------------------------------------------------------ tables

fn empty_store_loads_no_tables(engine: &dyn Engine) {
    let store = engine.open();
    check_tables(&*store, &[]);
    check_items(&*store, T1, &[]);
    assert_eq!(store.get_item(T1, &key(b"p", b"s")).unwrap(), None);
    let query = RangeQuery {
        table_id: T1.to_owned(),
        partition: b"p".to_vec(),
        lower: Unbounded,
        upper: Unbounded,
        descending: false,
        limit: 10,
        max_bytes: usize::MAX,
    };
    assert_eq!(store.query(&query).unwrap(), Vec::<StoredItem>::new());
}

fn put_table_round_trips_and_upserts(engine: &dyn Engine) {
    let store = engine.open();
    let plain = table("orders", T1);
    let mut rewrapping = table("users", T2);
    rewrapping.schema = KeySchema {
        partition: ("user".to_owned(), ScalarType::N),
        sort: None,
    };
    rewrapping.service_managed = true;
    rewrapping.rewrap = Some(Rewrap {
        target_key_id: "9a0e6f7b-1c2d-4e3f-8a9b-0c1d2e3f4a5b".to_owned(),
        items_done: 41,
        resume_after: Some((hex!("0380ff00").to_vec(), vec![])),
        source_key_id: "6f1d9c1e-2b43-4a8e-9d5c-0e7b2a4c8f10".to_owned(),
        grants: vec![
            (
                "6f1d9c1e-2b43-4a8e-9d5c-0e7b2a4c8f10".to_owned(),
                "g-1".to_owned(),
            ),
            (
                "9a0e6f7b-1c2d-4e3f-8a9b-0c1d2e3f4a5b".to_owned(),
                "g-2".to_owned(),
            ),
        ],
    });
    commit(&*store, &[Mutation::PutTable(plain.clone())]);
    commit(&*store, &[Mutation::PutTable(rewrapping.clone())]);
    check_tables(&*store, &[plain.clone(), rewrapping.clone()]);

    // Upserts by table id: the rewrap starts on one table and ends on the
    // other, and a rename replaces the old name.
    let mut started = plain.clone();
    started.rewrap = Some(Rewrap {
        target_key_id: "b1".to_owned(),
        items_done: 0,
        resume_after: None,
        source_key_id: String::new(),
        grants: vec![],
    });
    let mut finished = rewrapping.clone();
    finished.kms_key_id = "9a0e6f7b-1c2d-4e3f-8a9b-0c1d2e3f4a5b".to_owned();
    finished.service_managed = false;
    finished.rewrap = None;
    finished.name = "people".to_owned();
    commit(
        &*store,
        &[
            Mutation::PutTable(started.clone()),
            Mutation::PutTable(finished.clone()),
        ],
    );
    check_tables(&*store, &[started, finished]);
}

fn delete_table_removes_the_table_and_only_its_items(engine: &dyn Engine) {
    let store = engine.open();
    let keys = [key(b"a", b"1"), key(b"a", b"2"), key(b"b", b"")];
    commit(
        &*store,
        &[
            Mutation::PutTable(table("one", T1)),
            Mutation::PutTable(table("two", T2)),
        ],
    );
    fill(&*store, T1, &keys);
    let kept = fill(&*store, T2, &keys); // the same keys in another table
    commit(
        &*store,
        &[Mutation::DeleteTable {
            table_id: T1.to_owned(),
        }],
    );
    // The table is gone at once; its items go in purges of a few at a
    // time (nothing reads a table without its record).
    check_tables(&*store, &[table("two", T2)]);
    assert_eq!(store.count_items(T1).unwrap(), 0);
    assert_eq!(store.dropped_tables().unwrap(), [T1]);
    // What is left to purge outlives a restart.
    drop(store);
    let store = engine.open();
    assert_eq!(store.dropped_tables().unwrap(), [T1]);
    let purge = || Mutation::PurgeDropped {
        table_id: T1.to_owned(),
        limit: 2,
    };
    commit(&*store, &[purge()]);
    assert_eq!(scan_all(&*store, T1).len(), 1, "two of three purged");
    assert_eq!(store.dropped_tables().unwrap(), [T1]);
    commit(&*store, &[purge()]);
    assert_eq!(store.dropped_tables().unwrap(), Vec::<String>::new());
    check_items(&*store, T1, &[]);
    for k in &keys {
        assert_eq!(store.get_item(T1, k).unwrap(), None, "{k:?}");
    }
    check_items(&*store, T2, &kept);

    // Deleting an absent table is a no-op; the name is free again for a new id.
    let t3 = "0b8e4a52-0000-4000-8000-000000000003";
    commit(
        &*store,
        &[
            Mutation::DeleteTable {
                table_id: T1.to_owned(),
            },
            Mutation::PutTable(table("one", t3)),
        ],
    );
    check_tables(&*store, &[table("two", T2), table("one", t3)]);
    assert_eq!(store.dropped_tables().unwrap(), Vec::<String>::new());
    check_items(&*store, t3, &[]);
    check_items(&*store, T2, &kept);
}

// ------------------------------------------------------- items

fn items_put_get_upsert_and_delete(engine: &dyn Engine) {
    let store = engine.open();
    let a = key(b"a", b"1");
    let b = key(b"a", b"2");
    let c = key(b"c", b"");
    // Distinct keys although their concatenations are equal or prefixes.
    let split1 = key(b"ab", b"c");
    let split2 = key(b"a", b"bc");
    let nul = key(b"a", b"\0");
    let big = vec![0xa5; 500_000];
    let steps: Vec<(Vec<Mutation>, Contents)> = vec![
        (
            vec![put(T1, &a, b"a1"), put(T1, &b, b"b1")],
            vec![(a.clone(), b"a1".to_vec()), (b.clone(), b"b1".to_vec())],
        ),
        // Upsert replaces the envelope.
        (
            vec![put(T1, &a, b"a2")],
            vec![(a.clone(), b"a2".to_vec()), (b.clone(), b"b1".to_vec())],
        ),
        (vec![delete(T1, &b)], vec![(a.clone(), b"a2".to_vec())]),
        // Deleting an absent item is a no-op.
        (vec![delete(T1, &b)], vec![(a.clone(), b"a2".to_vec())]),
        // Mutations of one batch apply in order.
        (
            vec![put(T1, &c, b"c1"), delete(T1, &c)],
            vec![(a.clone(), b"a2".to_vec())],
        ),
        (
            vec![delete(T1, &c), put(T1, &c, b"c1"), put(T1, &c, b"c2")],
            vec![(a.clone(), b"a2".to_vec()), (c.clone(), b"c2".to_vec())],
        ),
        (
            vec![
                put(T1, &split1, b"s1"),
                put(T1, &split2, b"s2"),
                put(T1, &nul, b""),
                put(T1, &c, &big),
            ],
            vec![
                (a.clone(), b"a2".to_vec()),
                (c.clone(), big.clone()),
                (split1.clone(), b"s1".to_vec()),
                (split2.clone(), b"s2".to_vec()),
                (nul.clone(), b"".to_vec()),
            ],
        ),
    ];
    for (batch, expected) in &steps {
        commit(&*store, batch);
        check_items(&*store, T1, expected);
        check_items(&*store, T2, &[]);
    }
    assert_eq!(store.get_item(T1, &key(b"a", b"")).unwrap(), None);
    assert_eq!(store.get_item(T1, &key(b"a", b"3")).unwrap(), None);
}

/// Table names are unique in a store, so a PutTable under a taken name with
/// another id fails, and with it the whole batch.
fn a_failed_batch_applies_nothing(engine: &dyn Engine) {
    let store = engine.open();
    commit(&*store, &[Mutation::PutTable(table("one", T1))]);
    let before = fill(&*store, T1, &[key(b"a", b"1")]);
    let result = store.commit(&[
        put(T1, &key(b"a", b"1"), b"changed"),
        put(T1, &key(b"b", b"1"), b"new"),
        Mutation::PutTable(table("one", T2)),
    ]);
    assert!(result.is_err(), "duplicate table name accepted");
    check_tables(&*store, &[table("one", T1)]);
    check_items(&*store, T1, &before);
    // The store still takes writes.
    commit(&*store, &[put(T1, &key(b"b", b"1"), b"new")]);
    assert_eq!(
        store.get_item(T1, &key(b"b", b"1")).unwrap(),
        Some(b"new".to_vec())
    );
}

// ------------------------------------------------------- query

/// Sort keys of partition "p", in memcmp order: a proper prefix sorts first
/// and bytes compare unsigned (0x80 above 0x7f).
const SORTS: [&[u8]; 7] = [
    &hex!("01"),
    &hex!("0100"),
    &hex!("02"),
    &hex!("7f"),
    &hex!("80"),
    &hex!("ff"),
    &hex!("ffff"),
];

/// Partition "p" of T1 plus neighbours that must never show up in its query.
fn fill_query_fixture(store: &dyn TableStore) {
    let mut keys: Vec<ItemKey> = SORTS.iter().rev().map(|s| key(b"p", s)).collect();
    for neighbour in [&b"P"[..], b"p\0", b"pp", b"o", b"q", b""] {
        keys.extend(SORTS.iter().map(|s| key(neighbour, s)));
    }
    fill(store, T1, &keys);
    // The same partition in another table.
    fill(store, T2, &[key(b"p", &hex!("03")), key(b"p", &hex!("01"))]);
}

/// Queries partition "p" of T1 within (lower, upper): ascending must give
/// `expected`, descending its reverse, and every limit a prefix of either.
fn check_query(
    store: &dyn TableStore,
    lower: Bound<&[u8]>,
    upper: Bound<&[u8]>,
    expected: &[&[u8]],
) {
    let owned = |b: Bound<&[u8]>| b.map(<[u8]>::to_vec);
    for descending in [false, true] {
        let mut want: Vec<StoredItem> = expected
            .iter()
            .map(|s| {
                let k = key(b"p", s);
                StoredItem {
                    envelope: envelope("v1", &k),
                    key: k,
                }
            })
            .collect();
        if descending {
            want.reverse();
        }
        for limit in (0..=want.len() + 1).chain([1_000_000]) {
            let query = RangeQuery {
                table_id: T1.to_owned(),
                partition: b"p".to_vec(),
                lower: owned(lower),
                upper: owned(upper),
                descending,
                limit,
                max_bytes: usize::MAX,
            };
            let got = store.query(&query).expect("query");
            let want = &want[..limit.min(want.len())];
            assert_eq!(got, want, "{query:?}");
        }
    }
}

fn query_isolates_partitions_and_orders_by_sort_bytes(engine: &dyn Engine) {
    let store = engine.open();
    fill_query_fixture(&*store);
    check_query(&*store, Unbounded, Unbounded, &SORTS);
    // A partition that only has neighbours is empty.
    let query = RangeQuery {
        table_id: T2.to_owned(),
        partition: b"P".to_vec(),
        lower: Unbounded,
        upper: Unbounded,
        descending: false,
        limit: 100,
        max_bytes: usize::MAX,
    };
    assert_eq!(store.query(&query).unwrap(), Vec::<StoredItem>::new());
}

fn query_honours_every_bound_combination(engine: &dyn Engine) {
    let store = engine.open();
    fill_query_fixture(&*store);
    let x: &[u8] = &hex!("0100");
    let y: &[u8] = &hex!("ff");
    let cases: &[BoundsCase] = &[
        (Unbounded, Unbounded, &SORTS),
        (Included(x), Unbounded, &SORTS[1..]),
        (Excluded(x), Unbounded, &SORTS[2..]),
        (Unbounded, Included(y), &SORTS[..6]),
        (Unbounded, Excluded(y), &SORTS[..5]),
        (Included(x), Included(y), &SORTS[1..6]),
        (Included(x), Excluded(y), &SORTS[1..5]),
        (Excluded(x), Included(y), &SORTS[2..6]),
        (Excluded(x), Excluded(y), &SORTS[2..5]),
        // Bounds that are not stored keys.
        (Included(&hex!("0101")), Excluded(&hex!("fe")), &SORTS[2..5]),
        (Excluded(&hex!("00")), Included(&hex!("01")), &SORTS[..1]),
        (Included(b""), Unbounded, &SORTS),
        (Excluded(b""), Unbounded, &SORTS),
        (Unbounded, Excluded(b""), &[]),
        // Prefixes: 01 < 0100 < 02.
        (Excluded(&hex!("01")), Excluded(&hex!("02")), &SORTS[1..2]),
        (Unbounded, Excluded(&hex!("0100")), &SORTS[..1]),
        // Unsigned bytes: 7f < 80.
        (Unbounded, Included(&hex!("7f")), &SORTS[..4]),
        (Included(&hex!("80")), Unbounded, &SORTS[4..]),
        // Single points and empty ranges.
        (Included(&hex!("80")), Included(&hex!("80")), &SORTS[4..5]),
        (Included(&hex!("80")), Excluded(&hex!("80")), &[]),
        (Excluded(&hex!("80")), Included(&hex!("80")), &[]),
        (Included(&hex!("ff")), Included(&hex!("02")), &[]),
        (Excluded(&hex!("ffff")), Unbounded, &[]),
    ];
    for (lower, upper, expected) in cases {
        check_query(&*store, *lower, *upper, expected);
    }
}

// -------------------------------------------------------- scan

fn scan_orders_by_partition_then_sort(engine: &dyn Engine) {
    let store = engine.open();
    // Inserted shuffled. Tuple order, not concatenation order: (61, ff)
    // precedes (61 00, 00) although 61ff > 6100 00.
    let expected = [
        key(&hex!("00"), &hex!("ff")),
        key(&hex!("61"), &hex!("00")),
        key(&hex!("61"), &hex!("ff")),
        key(&hex!("6100"), &hex!("00")),
        key(&hex!("62"), &hex!("01")),
        key(&hex!("7f"), &hex!("02")),
        key(&hex!("80"), &hex!("01")),
        key(&hex!("ff"), &hex!("00")),
    ];
    let shuffled = [3, 7, 0, 5, 2, 6, 1, 4].map(|i| expected[i].clone());
    let items = fill(&*store, T1, &shuffled);
    fill(&*store, T2, &[key(&hex!("01"), &hex!("01"))]);
    assert_eq!(keys_of(&scan_all(&*store, T1)), expected);
    check_items(&*store, T1, &items);

    // `after` need not be a stored key, and nothing at or before it returns.
    let cases: &[(ItemKey, &[ItemKey])] = &[
        (key(&hex!("61"), &hex!("80")), &expected[2..]),
        (key(&hex!("61"), &hex!("ff")), &expected[3..]),
        (key(&hex!("61"), &hex!("ffff")), &expected[3..]),
        (key(&hex!("6100"), b""), &expected[3..]),
        (key(b"", b""), &expected),
        (key(&hex!("ff"), &hex!("00")), &[]),
    ];
    for (after, want) in cases {
        let got = store
            .scan(&ScanQuery {
                table_id: T1.to_owned(),
                after: Some(after.clone()),
                segment: None,
                limit: 100,
                max_bytes: usize::MAX,
            })
            .unwrap();
        assert_eq!(keys_of(&got), *want, "after {after:?}");
    }
}

/// Query and Scan stop reading once their items hold more than
/// `max_bytes` (key and envelope), the item that crosses it included, and
/// always return at least one item.
fn reads_stop_once_past_max_bytes(engine: &dyn Engine) {
    let store = engine.open();
    let keys: Vec<ItemKey> = (0u8..10).map(|i| key(b"p", &[i])).collect();
    fill(&*store, T1, &keys);
    let size = |i: &StoredItem| i.key.partition.len() + i.key.sort.len() + i.envelope.len();
    let all = scan_all(&*store, T1);
    assert_eq!(all.len(), 10);
    // How many of `items` a read capped at `max` returns.
    let expected = |items: &[StoredItem], max: usize| {
        let mut total = 0;
        items
            .iter()
            .position(|i| {
                total += size(i);
                total > max
            })
            .map_or(items.len(), |crossing| crossing + 1)
    };
    let mut descending = all.clone();
    descending.reverse();
    for max in [
        0,
        1,
        size(&all[0]),
        size(&all[0]) + 1,
        3 * size(&all[0]),
        usize::MAX,
    ] {
        let scanned = store
            .scan(&ScanQuery {
                table_id: T1.to_owned(),
                after: None,
                segment: None,
                limit: 100,
                max_bytes: max,
            })
            .unwrap();
        assert_eq!(scanned, all[..expected(&all, max)], "scan, max {max}");
        for (order, items) in [(false, &all), (true, &descending)] {
            let queried = store
                .query(&RangeQuery {
                    table_id: T1.to_owned(),
                    partition: b"p".to_vec(),
                    lower: Unbounded,
                    upper: Unbounded,
                    descending: order,
                    limit: 100,
                    max_bytes: max,
                })
                .unwrap();
            assert_eq!(
                queried,
                items[..expected(items, max)],
                "query, descending {order}, max {max}"
            );
        }
    }
    assert_eq!(expected(&all, 0), 1);
    assert_eq!(expected(&all, usize::MAX), 10);
}

/// 40 partitions with 1 to 4 items each.
fn fill_scan_fixture(store: &dyn TableStore) -> Vec<StoredItem> {
    let keys: Vec<ItemKey> = (0u8..40)
        .flat_map(|p| (0..=p % 4).map(move |s| key(&[b'p', p], &[s, 0xff - s])))
        .collect();
    fill(store, T1, &keys);
    fill(store, T2, &[key(&[b'p', 0], &[9])]);
    let all = scan_all(store, T1);
    assert_eq!(all.len(), keys.len());
    all
}

/// Pages through T1 (one segment or all) `limit` items at a time, resuming
/// after the last key of each page.
fn paginate(store: &dyn TableStore, segment: Option<(u32, u32)>, limit: usize) -> Vec<StoredItem> {
    let mut out: Vec<StoredItem> = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .scan(&ScanQuery {
                table_id: T1.to_owned(),
                after: after.clone(),
                segment,
                limit,
                max_bytes: usize::MAX,
            })
            .expect("scan page");
        assert!(page.len() <= limit, "page over limit {limit}");
        let Some(last) = page.last() else {
            return out;
        };
        after = Some(last.key.clone());
        out.extend(page);
        assert!(out.len() <= 1000, "pagination does not end");
    }
}

fn scan_pages_visit_every_item_once(engine: &dyn Engine) {
    let store = engine.open();
    let all = fill_scan_fixture(&*store);
    for limit in [1, 2, 3, 5, 7, 64, 1000] {
        assert_eq!(paginate(&*store, None, limit), all, "limit {limit}");
    }
    let first = store
        .scan(&ScanQuery {
            table_id: T1.to_owned(),
            after: None,
            segment: None,
            limit: 0,
            max_bytes: usize::MAX,
        })
        .unwrap();
    assert_eq!(first, Vec::<StoredItem>::new());
}

fn scan_segments_partition_the_table(engine: &dyn Engine) {
    let store = engine.open();
    let all = fill_scan_fixture(&*store);
    for total in [1u32, 2, 3, 7] {
        let mut union: Vec<StoredItem> = Vec::new();
        let mut segments_of: BTreeMap<Vec<u8>, BTreeSet<u32>> = BTreeMap::new();
        let mut non_empty = 0;
        for segment in 0..total {
            let items = paginate(&*store, Some((segment, total)), 3);
            let mut sorted = items.clone();
            sorted.sort_by_key(|item| (segment_hash(&item.key.partition), item.key.clone()));
            assert_eq!(items, sorted, "segment {segment}/{total} out of order");
            non_empty += usize::from(!items.is_empty());
            for item in &items {
                // Engines agree on the segment of a partition.
                assert_eq!(
                    segment_of(segment_hash(&item.key.partition), total),
                    segment,
                    "{:?} in segment {segment}/{total}",
                    item.key
                );
                segments_of
                    .entry(item.key.partition.clone())
                    .or_default()
                    .insert(segment);
            }
            union.extend(items);
        }
        // Disjoint, and together the whole table.
        union.sort_by(|a, b| a.key.cmp(&b.key));
        assert_eq!(union, all, "union of {total} segments");
        for (partition, segments) in &segments_of {
            assert_eq!(
                segments.len(),
                1,
                "partition {partition:?} split over {segments:?}"
            );
        }
        assert_eq!(segments_of.len(), 40);
        assert!(
            non_empty == total as usize,
            "{total} segments: {non_empty} hold items"
        );
    }
}

// -------------------------------------------------- persistence

fn committed_state_survives_reopening(engine: &dyn Engine) {
    let mut rewrapping = table("two", T2);
    rewrapping.rewrap = Some(Rewrap {
        target_key_id: "k2".to_owned(),
        items_done: 7,
        resume_after: Some((b"p".to_vec(), b"s".to_vec())),
        source_key_id: "k1".to_owned(),
        grants: vec![("k2".to_owned(), "grant".to_owned())],
    });
    let tables = [table("one", T1), rewrapping];
    let (items, after_reopen) = {
        let store = engine.open();
        commit(
            &*store,
            &[
                Mutation::PutTable(tables[0].clone()),
                Mutation::PutTable(tables[1].clone()),
            ],
        );
        let items = fill(&*store, T1, &[key(b"a", b"1"), key(b"b", b"")]);
        let gone = key(b"c", b"1");
        commit(&*store, &[put(T2, &gone, b"x")]);
        commit(&*store, &[delete(T2, &gone)]);
        (items, key(b"d", b"1"))
    };
    let store = engine.open();
    check_tables(&*store, &tables);
    check_items(&*store, T1, &items);
    check_items(&*store, T2, &[]);
    commit(&*store, &[put(T2, &after_reopen, b"y")]);
    drop(store);
    let store = engine.open();
    check_items(&*store, T1, &items);
    check_items(&*store, T2, &[(after_reopen, b"y".to_vec())]);
}

// ------------------------------------------------- group commit

fn group_commit_makes_concurrent_commits_durable(engine: &dyn Engine) {
    let keys: Vec<ItemKey> = (0..100u8).map(|i| key(&[b'g', i % 10], &[i])).collect();
    let expected: Contents = keys
        .iter()
        .map(|k| (k.clone(), envelope("gc", k)))
        .collect();
    let store = engine.open();
    let commits = Arc::new(GroupCommit::start(store.clone()));
    runtime().block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for k in keys.clone() {
            let commits = commits.clone();
            tasks.spawn(async move {
                let batch = vec![put(T1, &k, &envelope("gc", &k))];
                commits.commit(batch).await
            });
        }
        let mut done = 0;
        while let Some(joined) = tasks.join_next().await {
            joined.expect("task").expect("group commit");
            done += 1;
        }
        assert_eq!(done, 100);
    });
    // Visible as soon as acknowledged ...
    check_items(&*store, T1, &expected);
    drop(commits);
    drop(store);
    // ... and durable.
    check_items(&*engine.open(), T1, &expected);
}

fn group_commit_fails_every_waiter_and_then_stays_closed(engine: &dyn Engine) {
    let failing = FailingStore::new(engine.open());
    let commits = Arc::new(GroupCommit::start(failing.clone()));
    let before = key(b"ok", b"1");
    runtime().block_on(async {
        commits
            .commit(vec![put(T1, &before, b"ok")])
            .await
            .expect("healthy commit");
        assert!(!commits.is_poisoned());

        failing.fail.store(true, Ordering::SeqCst);
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..20u8 {
            let commits = commits.clone();
            tasks.spawn(async move {
                commits
                    .commit(vec![put(T1, &key(b"bad", &[i]), b"x")])
                    .await
            });
        }
        let mut engine_errors = 0;
        while let Some(joined) = tasks.join_next().await {
            match joined.expect("task") {
                Err(StoreError::Engine(message)) => {
                    assert_eq!(message, "disk on fire");
                    engine_errors += 1;
                }
                Err(StoreError::Poisoned) => {}
                other => panic!("a commit during the failure returned {other:?}"),
            }
        }
        assert!(engine_errors >= 1, "no waiter saw the engine error");
        assert!(commits.is_poisoned(), "health checks must see the failure");

        // Poisoned: even with a healthy engine again, writes are refused.
        failing.fail.store(false, Ordering::SeqCst);
        for i in 0..3u8 {
            let result = commits
                .commit(vec![put(T1, &key(b"late", &[i]), b"x")])
                .await;
            assert!(
                matches!(result, Err(StoreError::Poisoned)),
                "commit after failure returned {result:?}"
            );
        }
    });
    assert_eq!(failing.commits.load(Ordering::SeqCst), 1);
    check_items(&*failing.inner, T1, &[(before, b"ok".to_vec())]);
}

/// Writes queued behind the failing commit, which passed the poison check
/// before the failure, must fail too, although the engine is healthy again
/// by the time they would run.
fn group_commit_refuses_writes_queued_behind_a_failure(engine: &dyn Engine) {
    let failing = FailingStore::new(engine.open());
    let (open_gate, gate) = mpsc::sync_channel(1);
    *failing.gate.lock().unwrap() = Some(gate);
    failing.fail.store(true, Ordering::SeqCst);
    let commits = Arc::new(GroupCommit::start(failing.clone()));
    runtime().block_on(async {
        let first = {
            let commits = commits.clone();
            tokio::spawn(async move { commits.commit(vec![put(T1, &key(b"a", b"1"), b"x")]).await })
        };
        // The first batch is inside the store; queue more behind it.
        failing.entered.notified().await;
        let mut queued = tokio::task::JoinSet::new();
        for i in 0..5u8 {
            let commits = commits.clone();
            queued
                .spawn(async move { commits.commit(vec![put(T1, &key(b"q", &[i]), b"y")]).await });
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        failing.fail.store(false, Ordering::SeqCst);
        open_gate.send(()).expect("open the gate");

        let result = first.await.expect("task");
        assert!(
            matches!(&result, Err(StoreError::Engine(m)) if m.contains("disk on fire")),
            "the failing commit returned {result:?}"
        );
        while let Some(joined) = queued.join_next().await {
            let result = joined.expect("task");
            assert!(
                matches!(result, Err(StoreError::Poisoned)),
                "a write queued behind the failure returned {result:?}"
            );
        }
        let result = commits
            .commit(vec![put(T1, &key(b"late", b"1"), b"z")])
            .await;
        assert!(matches!(result, Err(StoreError::Poisoned)), "{result:?}");
    });
    assert_eq!(failing.commits.load(Ordering::SeqCst), 0);
    check_items(&*failing.inner, T1, &[]);
}

// ------------------------------------------------ engine-free

/// Segment `i` of `T` is one contiguous `T`-th of the hash space: every
/// hash is in exactly one segment, the one whose range holds it, and the
/// ranges tile 0..2³² in order.
#[test]
fn segments_tile_the_hash_space_in_order() {
    for total in [1u32, 2, 3, 7, 1000, 999_983, 1_000_000] {
        let picked: BTreeSet<u32> = [0, 1, total / 2, total.saturating_sub(2), total - 1]
            .into_iter()
            .filter(|&s| s < total)
            .collect();
        let mut previous: Option<(u32, u64)> = None;
        for segment in picked {
            let (first, end) = segment_hashes(segment, total);
            assert!(first < end, "{segment}/{total} is empty");
            if segment == 0 {
                assert_eq!(first, 0);
            }
            if segment == total - 1 {
                assert_eq!(end, 1 << 32);
            }
            if let Some((before, its_end)) = previous
                && before + 1 == segment
            {
                assert_eq!(
                    first, its_end,
                    "{segment}/{total} starts where {before} ends"
                );
            }
            previous = Some((segment, end));
            for hash in [first, first + (end - first) / 2, end - 1] {
                assert_eq!(segment_of(hash as u32, total), segment, "{hash}/{total}");
            }
            if first > 0 {
                assert_eq!(segment_of(first as u32 - 1, total), segment - 1);
            }
            if end < 1 << 32 {
                assert_eq!(segment_of(end as u32, total), segment + 1);
            }
        }
    }
    assert_eq!(segment_of(u32::MAX, 1_000_000), 999_999);
    assert_eq!(segment_of(0x8000_0000, 2), 1);
    assert_eq!(segment_of(0x7fff_ffff, 2), 0);
}

/// FORMAT: segment numbers derive from the first four bytes of SHA-256 of
/// the partition (big-endian). Engines may persist them (SQLite's `seg`
/// column), so changing this means recomputing every stored row.
#[test]
fn segment_hash_is_the_sha256_prefix() {
    let cases: [(&[u8], u32); 3] = [
        (b"", 0xe3b0_c442),
        (b"abc", 0xba78_16bf),
        (&hex!("00"), 0x6e34_0b9c),
    ];
    for (partition, expected) in cases {
        assert_eq!(segment_hash(partition), expected, "{partition:?}");
    }
}

// ------------------------------------------------------ the suite

macro_rules! engines {
    (cases: $cases:tt; $($engine:ident => $factory:expr),+ $(,)?) => {
        $(engines!(@engine $engine, $factory, $cases);)+
    };
    (@engine $engine:ident, $factory:expr, [$($case:ident),* $(,)?]) => {
        mod $engine {
            use super::*;
            $(
                #[test]
                fn $case() {
                    let engine = $factory;
                    super::$case(&engine);
                }
            )*
        }
    };
}

engines! {
    cases: [
        empty_store_loads_no_tables,
        put_table_round_trips_and_upserts,
        delete_table_removes_the_table_and_only_its_items,
        items_put_get_upsert_and_delete,
        a_failed_batch_applies_nothing,
        query_isolates_partitions_and_orders_by_sort_bytes,
        query_honours_every_bound_combination,
        scan_orders_by_partition_then_sort,
        scan_pages_visit_every_item_once,
        scan_segments_partition_the_table,
        reads_stop_once_past_max_bytes,
        committed_state_survives_reopening,
        group_commit_makes_concurrent_commits_durable,
        group_commit_fails_every_waiter_and_then_stays_closed,
        group_commit_refuses_writes_queued_behind_a_failure,
    ];
    sqlite => Sqlite::new(),
}

/// A re-wrap stored by an earlier version (with the field
/// `target_service_managed`, no longer kept: the table record says whether
/// its key is the service-managed one) still loads.
#[test]
fn a_rewrap_stored_with_the_retired_field_still_loads() {
    let stored = r#"{"target_key_id":"k2","target_service_managed":true,"items_done":7,"resume_after":null,"source_key_id":"k1","grants":[["k1","g-1"]]}"#;
    let rewrap: Rewrap = serde_json::from_str(stored).expect("loads");
    assert_eq!(
        rewrap,
        Rewrap {
            target_key_id: "k2".to_owned(),
            items_done: 7,
            resume_after: None,
            source_key_id: "k1".to_owned(),
            grants: vec![("k1".to_owned(), "g-1".to_owned())],
        }
    );
}

// ------------------------------------------------- SQLite read snapshots

/// SQLite readers keep their read transaction between reads while nothing
/// is committed; a read that begins after a commit returned must still see
/// it. Readers on several threads race a writer; each read must see at
/// least the last value whose commit had returned when the read began.
#[test]
fn sqlite_reads_see_every_commit_that_returned_before_them() {
    const WRITES: u64 = 400;
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = Arc::new(SqliteTableStore::open(&dir.path().join("items.sqlite")).expect("open"));
    let item = key(b"p", b"s");
    let acked = Arc::new(std::sync::atomic::AtomicU64::new(0));
    store
        .commit(&[put(T1, &item, &0u64.to_be_bytes())])
        .expect("first commit");
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let (store, acked, item) = (Arc::clone(&store), Arc::clone(&acked), item.clone());
            std::thread::spawn(move || {
                let mut reads = 0u64;
                loop {
                    let before = acked.load(Ordering::SeqCst);
                    let stored = store.get_item(T1, &item).expect("read").expect("present");
                    let seen = u64::from_be_bytes(stored.try_into().expect("eight bytes"));
                    assert!(
                        seen >= before,
                        "read {seen} after the commit of {before} had returned"
                    );
                    reads += 1;
                    if before == WRITES {
                        return reads;
                    }
                }
            })
        })
        .collect();
    for value in 1..=WRITES {
        store
            .commit(&[put(T1, &item, &value.to_be_bytes())])
            .expect("commit");
        acked.store(value, Ordering::SeqCst);
    }
    for reader in readers {
        assert!(reader.join().expect("reader thread") > 0);
    }
}

/// Kept read transactions must not hold back checkpoints: once a commit
/// returns, no idle reader is left on a snapshot from before it, so a
/// checkpoint that needs every reader gone (TRUNCATE, not waiting) goes
/// through.
#[test]
fn sqlite_idle_readers_hold_no_snapshot_after_a_commit() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("items.sqlite");
    let store = SqliteTableStore::open(&path).expect("open");
    let item = key(b"p", b"s");
    let checkpoint = || wal_truncate_busy(&path);
    for round in 0..3u8 {
        store.commit(&[put(T1, &item, &[round])]).expect("commit");
        // Every reader now keeps a snapshot of this commit...
        for _ in 0..8 {
            assert_eq!(store.get_item(T1, &item).expect("read"), Some(vec![round]));
        }
        assert_eq!(checkpoint(), 1, "readers keep their snapshot while idle");
        // ...until the next commit ends them.
        store
            .commit(&[put(T1, &key(b"other", b"s"), &[round])])
            .expect("commit");
        assert_eq!(checkpoint(), 0, "a reader still holds the WAL");
    }
}

/// Runs a TRUNCATE checkpoint of the SQLite database at `path` from a
/// connection of its own, without waiting: 1 if a reader still holds the
/// WAL, 0 if it was checkpointed and emptied.
pub(super) fn wal_truncate_busy(path: &std::path::Path) -> i64 {
    let other = rusqlite::Connection::open(path).expect("open a second connection");
    other
        .busy_timeout(std::time::Duration::ZERO)
        .expect("no wait");
    other
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
        .expect("checkpoint")
}

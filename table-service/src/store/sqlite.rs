//! The embedded engine: SQLite (bundled) in WAL mode with `synchronous=FULL`.
//! Items live in one table keyed by (table id, partition bytes, sort bytes);
//! SQLite compares BLOBs with memcmp, which is exactly the key order the
//! model's encodings are built for. Reads use a small pool of connections so
//! they do not wait behind the writer.
//!
//! A reader keeps its read transaction open after a read and uses it again
//! for the next one as long as nothing was committed since it began: the
//! snapshot is then the same as a new one would be, and beginning and ending
//! a WAL read transaction costs two lock changes on the shared-memory index
//! (`fcntl` system calls), which were most of a point read's cost. A
//! generation counter, odd while a commit is under way, tells readers when
//! a snapshot may be stale; around every commit the writer ends the
//! transactions of the readers that are idle, so that they do not hold
//! back checkpoints. This relies on the process being the database's only
//! writer, which the store lock ensures; a change made to the file from
//! outside is seen once the process commits something itself.

use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, TryLockError};

use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, params, params_from_iter};

use super::{
    Mutation, RangeQuery, ScanQuery, StoreError, StoredItem, TableRecord, TableStore, segment_hash,
    segment_hashes,
};
use crate::model::ItemKey;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS tables (table_id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    table_id TEXT NOT NULL,
    pk BLOB NOT NULL,
    sk BLOB NOT NULL,
    seg INTEGER NOT NULL,
    envelope BLOB NOT NULL,
    PRIMARY KEY (table_id, pk, sk)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS items_by_segment ON items (table_id, seg, pk, sk);
CREATE TABLE IF NOT EXISTS item_counts (table_id TEXT PRIMARY KEY, n INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dropped_tables (table_id TEXT PRIMARY KEY) WITHOUT ROWID;
";

const READERS: usize = 4;

pub struct SqliteTableStore {
    writer: Mutex<Connection>,
    readers: Vec<Mutex<Reader>>,
    next: AtomicUsize,
    /// Bumped before and after every commit: odd while one is under way.
    generation: AtomicU64,
    /// Keeps other processes off the database: read snapshots are reused
    /// on the strength of this process being its only writer.
    _lock: lockbox_proto::store_lock::StoreLock,
}

/// A read connection and, when it holds an open read transaction, the
/// generation it began in.
struct Reader {
    conn: Connection,
    snapshot: Option<u64>,
}

impl Reader {
    /// Ends the open read transaction, if any.
    fn end(&mut self) -> Result<(), StoreError> {
        self.snapshot = None;
        if self.conn.is_autocommit() {
            return Ok(());
        }
        let committed = self
            .conn
            .prepare_cached("COMMIT")
            .and_then(|mut stmt| stmt.execute([]));
        match committed {
            Ok(_) => Ok(()),
            // A read transaction has nothing to keep: whatever stopped the
            // COMMIT, do not leave it open (it would pin the WAL).
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                Err(engine(e))
            }
        }
    }

    /// Makes sure a read transaction is open that sees every commit
    /// finished before `generation` was read.
    fn begin(&mut self, generation: u64) -> Result<(), StoreError> {
        // An even generation that has not moved since the transaction
        // began: nothing was committed (or being committed) since.
        if generation.is_multiple_of(2)
            && self.snapshot == Some(generation)
            && !self.conn.is_autocommit()
        {
            return Ok(());
        }
        self.end()?;
        // Deferred: the snapshot is taken by the first read, after
        // `generation` was loaded.
        self.conn
            .prepare_cached("BEGIN")
            .and_then(|mut stmt| stmt.execute([]))
            .map_err(engine)?;
        self.snapshot = Some(generation);
        Ok(())
    }
}

fn engine(e: impl std::fmt::Display) -> StoreError {
    StoreError::Engine(e.to_string())
}

fn configure(conn: &Connection) -> Result<(), StoreError> {
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(engine)?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(engine)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(engine)?;
    Ok(())
}

impl SqliteTableStore {
    /// Refused while another process has it open.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let lock = lockbox_proto::store_lock::lock(path).map_err(StoreError::Engine)?;
        let mut writer = Connection::open(path).map_err(engine)?;
        configure(&writer)?;
        let indexing = writer
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE name = 'items')
                   AND NOT EXISTS (SELECT 1 FROM sqlite_master WHERE name = 'items_by_segment')",
                [],
                |r| r.get::<_, bool>(0),
            )
            .map_err(engine)?;
        if indexing {
            tracing::info!(
                "building the scan-segment index over the stored items (once, for a data directory of an earlier version)"
            );
        }
        writer.execute_batch(SCHEMA).map_err(engine)?;
        count_uncounted_tables(&mut writer)?;
        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            let conn = Connection::open(path).map_err(engine)?;
            configure(&conn)?;
            readers.push(Mutex::new(Reader {
                conn,
                snapshot: None,
            }));
        }
        Ok(SqliteTableStore {
            writer: Mutex::new(writer),
            readers,
            next: AtomicUsize::new(0),
            generation: AtomicU64::new(0),
            _lock: lock,
        })
    }

    fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        // The first idle reader from a rotating start; only when every one
        // is busy (long pages) does a read wait, for the one at the start.
        // Point reads run on the runtime's threads: they must not queue
        // behind a page while another reader is free.
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let n = self.readers.len();
        let idle = (0..n).find_map(|j| {
            let i = (start + j) % n;
            match self.readers[i].try_lock() {
                Ok(reader) => Some((i, Ok(reader))),
                Err(TryLockError::Poisoned(poisoned)) => Some((i, Err(poisoned))),
                Err(TryLockError::WouldBlock) => None,
            }
        });
        let (i, locked) = match idle {
            Some(found) => found,
            None => (start % n, self.readers[start % n].lock()),
        };
        let mut reader = match locked {
            Ok(reader) => reader,
            // A read panicked with this reader: end whatever it left open
            // (an open transaction would pin the WAL) and go on.
            Err(poisoned) => {
                let mut reader = poisoned.into_inner();
                let _ = reader.end();
                self.readers[i].clear_poison();
                reader
            }
        };
        reader.begin(self.generation.load(Ordering::SeqCst))?;
        let result = f(&reader.conn);
        if result.is_err() {
            // Start afresh next time rather than reason about what an error
            // left behind.
            let _ = reader.end();
        }
        result
    }

    /// Ends the read transactions of idle readers that began in another
    /// generation, so they do not hold back checkpoints; a reader busy
    /// meanwhile keeps its snapshot until its next read or the next commit.
    fn release_stale_snapshots(&self) {
        let generation = self.generation.load(Ordering::SeqCst);
        for reader in &self.readers {
            let mut reader = match reader.try_lock() {
                Ok(reader) => reader,
                Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
                Err(TryLockError::WouldBlock) => continue,
            };
            if reader.snapshot != Some(generation) {
                let _ = reader.end();
            }
        }
    }

    fn apply(conn: &mut Connection, batch: &[Mutation]) -> Result<(), StoreError> {
        // IMMEDIATE: the write lock from the start. The batch reads before it
        // writes (whether a table is counted, whether an item exists), and
        // a deferred transaction that began by reading could not be turned
        // into a write once its snapshot was no longer the newest (busy,
        // with no waiting).
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(engine)?;
        // Items added (or removed) per table, kept in `item_counts` in the
        // same transaction, so DescribeTable's count costs one lookup, not
        // a pass over the table.
        let mut added: std::collections::BTreeMap<&str, i64> = std::collections::BTreeMap::new();
        for m in batch {
            match m {
                Mutation::PutTable(t) => {
                    tx.execute(
                        "INSERT INTO tables (table_id, name, body) VALUES (?1, ?2, ?3)
                         ON CONFLICT (table_id) DO UPDATE SET name = excluded.name, body = excluded.body",
                        params![t.table_id, t.name, serde_json::to_string(t).map_err(engine)?],
                    )
                    .map_err(engine)?;
                    tx.execute(
                        "INSERT INTO item_counts (table_id, n) VALUES (?1, 0)
                         ON CONFLICT (table_id) DO NOTHING",
                        [&t.table_id],
                    )
                }
                Mutation::DeleteTable { table_id } => {
                    added.remove(table_id.as_str());
                    tx.execute("DELETE FROM item_counts WHERE table_id = ?1", [table_id])
                        .map_err(engine)?;
                    let deleted = tx
                        .execute("DELETE FROM tables WHERE table_id = ?1", [table_id])
                        .map_err(engine)?;
                    if deleted > 0 {
                        tx.execute(
                            "INSERT INTO dropped_tables (table_id) VALUES (?1)
                             ON CONFLICT (table_id) DO NOTHING",
                            [table_id],
                        )
                    } else {
                        Ok(0)
                    }
                }
                Mutation::PurgeDropped { table_id, limit } => {
                    let purged = tx
                        .prepare_cached(
                            "DELETE FROM items WHERE table_id = ?1 AND (pk, sk) IN
                               (SELECT pk, sk FROM items WHERE table_id = ?1 LIMIT ?2)",
                        )
                        .and_then(|mut stmt| stmt.execute(params![table_id, *limit as i64]))
                        .map_err(engine)?;
                    if purged < *limit {
                        tx.execute("DELETE FROM dropped_tables WHERE table_id = ?1", [table_id])
                    } else {
                        Ok(purged)
                    }
                }
                Mutation::PutItem {
                    table_id,
                    key,
                    envelope,
                } => {
                    if !added.contains_key(table_id.as_str()) {
                        ensure_counted(&tx, table_id)?;
                        added.insert(table_id, 0);
                    }
                    let replaced = tx
                        .prepare_cached(
                            "UPDATE items SET envelope = ?4 WHERE table_id = ?1 AND pk = ?2 AND sk = ?3",
                        )
                        .and_then(|mut stmt| {
                            stmt.execute(params![table_id, key.partition, key.sort, envelope])
                        })
                        .map_err(engine)?;
                    if replaced > 0 {
                        Ok(replaced)
                    } else {
                        *added.entry(table_id).or_default() += 1;
                        tx.prepare_cached(
                            "INSERT INTO items (table_id, pk, sk, seg, envelope) VALUES (?1, ?2, ?3, ?4, ?5)",
                        )
                        .and_then(|mut stmt| {
                            stmt.execute(params![
                                table_id,
                                key.partition,
                                key.sort,
                                segment_hash(&key.partition),
                                envelope
                            ])
                        })
                    }
                }
                Mutation::DeleteItem { table_id, key } => {
                    if !added.contains_key(table_id.as_str()) {
                        ensure_counted(&tx, table_id)?;
                        added.insert(table_id, 0);
                    }
                    let removed = tx
                        .prepare_cached(
                            "DELETE FROM items WHERE table_id = ?1 AND pk = ?2 AND sk = ?3",
                        )
                        .and_then(|mut stmt| stmt.execute(params![table_id, key.partition, key.sort]))
                        .map_err(engine)?;
                    *added.entry(table_id).or_default() -= removed as i64;
                    Ok(removed)
                }
            }
            .map_err(engine)?;
        }
        for (table_id, n) in added {
            if n != 0 {
                tx.prepare_cached("UPDATE item_counts SET n = n + ?2 WHERE table_id = ?1")
                    .and_then(|mut stmt| stmt.execute(params![table_id, n]))
                    .map_err(engine)?;
            }
        }
        tx.commit().map_err(engine)
    }
}

/// Reads rows until they are exhausted or hold more than `max_bytes`
/// (the row that crosses it included).
fn rows_to_items(
    rows: impl Iterator<Item = rusqlite::Result<(Vec<u8>, Vec<u8>, Vec<u8>)>>,
    max_bytes: usize,
) -> Result<Vec<StoredItem>, StoreError> {
    let mut items = Vec::new();
    let mut bytes = 0usize;
    for row in rows {
        let (partition, sort, envelope) = row.map_err(engine)?;
        bytes = bytes.saturating_add(partition.len() + sort.len() + envelope.len());
        items.push(StoredItem {
            key: ItemKey { partition, sort },
            envelope,
        });
        if bytes > max_bytes {
            break;
        }
    }
    Ok(items)
}

impl TableStore for SqliteTableStore {
    fn load_tables(&self) -> Result<Vec<TableRecord>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare("SELECT body FROM tables ORDER BY name")
                .map_err(engine)?;
            let rows = stmt
                .query_map([], |r| r.get::<_, String>(0))
                .map_err(engine)?;
            rows.map(|r| {
                let body = r.map_err(engine)?;
                serde_json::from_str(&body).map_err(|e| StoreError::Corrupt(format!("tables: {e}")))
            })
            .collect()
        })
    }

    fn commit(&self, batch: &[Mutation]) -> Result<(), StoreError> {
        let mut conn = self.writer.lock().map_err(|_| StoreError::Poisoned)?;
        // Odd from before anything of the batch can be seen until after all
        // of it can: no snapshot taken meanwhile is used again.
        self.generation.fetch_add(1, Ordering::SeqCst);
        // No idle reader holds the WAL when the write begins, so SQLite can
        // start it over from the beginning once it is checkpointed (as
        // without kept snapshots) instead of growing it.
        self.release_stale_snapshots();
        let result = Self::apply(&mut conn, batch);
        self.generation.fetch_add(1, Ordering::SeqCst);
        drop(conn);
        self.release_stale_snapshots();
        result
    }

    fn get_item(&self, table_id: &str, key: &ItemKey) -> Result<Option<Vec<u8>>, StoreError> {
        self.read(|conn| {
            conn.prepare_cached(
                "SELECT envelope FROM items WHERE table_id = ?1 AND pk = ?2 AND sk = ?3",
            )
            .map_err(engine)?
            .query_row(params![table_id, key.partition, key.sort], |r| r.get(0))
            .optional()
            .map_err(engine)
        })
    }

    fn query(&self, q: &RangeQuery) -> Result<Vec<StoredItem>, StoreError> {
        let mut sql =
            String::from("SELECT pk, sk, envelope FROM items WHERE table_id = ?1 AND pk = ?2");
        let mut args: Vec<Value> = vec![
            Value::Text(q.table_id.clone()),
            Value::Blob(q.partition.clone()),
        ];
        for (bound, inclusive, exclusive) in [(&q.lower, ">=", ">"), (&q.upper, "<=", "<")] {
            match bound {
                Bound::Included(v) => {
                    args.push(Value::Blob(v.clone()));
                    sql.push_str(&format!(" AND sk {inclusive} ?{}", args.len()));
                }
                Bound::Excluded(v) => {
                    args.push(Value::Blob(v.clone()));
                    sql.push_str(&format!(" AND sk {exclusive} ?{}", args.len()));
                }
                Bound::Unbounded => {}
            }
        }
        args.push(Value::Integer(q.limit as i64));
        sql.push_str(&format!(
            " ORDER BY sk {} LIMIT ?{}",
            if q.descending { "DESC" } else { "ASC" },
            args.len()
        ));
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(&sql).map_err(engine)?;
            let rows = stmt
                .query_map(params_from_iter(args.iter()), |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .map_err(engine)?;
            rows_to_items(rows, q.max_bytes)
        })
    }

    fn scan(&self, q: &ScanQuery) -> Result<Vec<StoredItem>, StoreError> {
        let (sql, args) = scan_sql(q);
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(&sql).map_err(engine)?;
            let rows = stmt
                .query_map(params_from_iter(args.iter()), |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .map_err(engine)?;
            rows_to_items(rows, q.max_bytes)
        })
    }

    fn dropped_tables(&self) -> Result<Vec<String>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare_cached("SELECT table_id FROM dropped_tables ORDER BY table_id")
                .map_err(engine)?;
            let rows = stmt.query_map([], |r| r.get(0)).map_err(engine)?;
            rows.collect::<Result<Vec<String>, _>>().map_err(engine)
        })
    }

    fn count_items(&self, table_id: &str) -> Result<u64, StoreError> {
        self.read(|conn| {
            conn.query_row(
                "SELECT n FROM item_counts WHERE table_id = ?1",
                [table_id],
                |r| r.get::<_, i64>(0),
            )
            .optional()
            .map(|n| n.unwrap_or(0).max(0) as u64)
            .map_err(engine)
        })
    }
}

/// Makes sure `table_id` has its entry in `item_counts` before a batch
/// changes its items: a table without one (items stored under no table
/// record) is counted first, once.
fn ensure_counted(tx: &rusqlite::Transaction<'_>, table_id: &str) -> Result<(), StoreError> {
    let counted = tx
        .prepare_cached("SELECT 1 FROM item_counts WHERE table_id = ?1")
        .and_then(|mut stmt| stmt.exists([table_id]))
        .map_err(engine)?;
    if !counted {
        tx.execute(
            "INSERT INTO item_counts (table_id, n)
             SELECT ?1, COUNT(*) FROM items WHERE table_id = ?1",
            [table_id],
        )
        .map_err(engine)?;
    }
    Ok(())
}

/// Counts, once, the items of every table that has no entry in
/// `item_counts` (tables of a database made before it was kept).
fn count_uncounted_tables(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(engine)?;
    tx.execute(
        "INSERT INTO item_counts (table_id, n)
         SELECT t.table_id, (SELECT COUNT(*) FROM items i WHERE i.table_id = t.table_id)
         FROM tables t WHERE t.table_id NOT IN (SELECT table_id FROM item_counts)",
        [],
    )
    .map_err(engine)?;
    tx.commit().map_err(engine)
}

/// The statement of a scan page and its arguments.
fn scan_sql(q: &ScanQuery) -> (String, Vec<Value>) {
    let mut sql = String::from("SELECT pk, sk, envelope FROM items WHERE table_id = ?1");
    let mut args: Vec<Value> = vec![Value::Text(q.table_id.clone())];
    match q.segment {
        None => {
            if let Some(after) = &q.after {
                args.push(Value::Blob(after.partition.clone()));
                args.push(Value::Blob(after.sort.clone()));
                sql.push_str(&format!(
                    " AND (pk, sk) > (?{}, ?{})",
                    args.len() - 1,
                    args.len()
                ));
            }
            sql.push_str(" ORDER BY pk, sk");
        }
        // One run of `items_by_segment`: the segment's hashes, in
        // (hash, partition, sort) order.
        Some((segment, total)) => {
            let (first, end) = segment_hashes(segment, total);
            // The start key (in this segment: the service checks) is the
            // lower bound on its own, so the index is entered at it; with
            // `seg >= first` beside it SQLite would enter at the segment's
            // start and step over every row of the pages before.
            match &q.after {
                Some(after) => {
                    args.push(Value::Integer(i64::from(segment_hash(&after.partition))));
                    args.push(Value::Blob(after.partition.clone()));
                    args.push(Value::Blob(after.sort.clone()));
                    sql.push_str(&format!(
                        " AND (seg, pk, sk) > (?{}, ?{}, ?{})",
                        args.len() - 2,
                        args.len() - 1,
                        args.len()
                    ));
                }
                None => {
                    args.push(Value::Integer(first as i64));
                    sql.push_str(&format!(" AND seg >= ?{}", args.len()));
                }
            }
            args.push(Value::Integer(end as i64));
            sql.push_str(&format!(" AND seg < ?{}", args.len()));
            sql.push_str(" ORDER BY seg, pk, sk");
        }
    }
    args.push(Value::Integer(q.limit as i64));
    sql.push_str(&format!(" LIMIT ?{}", args.len()));
    (sql, args)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::wal_truncate_busy;

    fn open_transactions(store: &SqliteTableStore) -> usize {
        store
            .readers
            .iter()
            .filter(|r| !r.lock().expect("reader").conn.is_autocommit())
            .count()
    }

    /// A page of one segment of a parallel scan reads only that segment:
    /// a range of `items_by_segment`, not the whole table filtered (which
    /// made each page of a sparse segment read every row, and a scan in T
    /// segments read the table T times).
    #[test]
    fn a_segment_page_searches_its_range_of_the_segment_index() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let store = SqliteTableStore::open(&dir.path().join("items.sqlite")).expect("open");
        let writer = store.writer.lock().expect("writer");
        let plan = |q: &ScanQuery| -> String {
            let (sql, args) = scan_sql(q);
            let mut stmt = writer
                .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
                .expect("plan");
            stmt.query_map(params_from_iter(args.iter()), |r| r.get::<_, String>(3))
                .expect("plan rows")
                .map(Result::unwrap)
                .collect::<Vec<_>>()
                .join("; ")
        };
        let after = ItemKey {
            partition: b"p".to_vec(),
            sort: Vec::new(),
        };
        // A later page enters the index at its start key, not at the
        // segment's start (which would step over every earlier page).
        for (after, range) in [
            (None, "(table_id=? AND seg>? AND seg<?)"),
            (
                Some(after),
                "(table_id=? AND (seg,pk,sk)>(?,?,?) AND seg<?)",
            ),
        ] {
            let segment = plan(&ScanQuery {
                table_id: "t".into(),
                after: after.clone(),
                segment: Some((3, 8)),
                limit: 10,
                max_bytes: usize::MAX,
            });
            assert!(
                segment.contains(&format!(
                    "SEARCH items USING INDEX items_by_segment {range}"
                )),
                "{segment}"
            );
            assert!(!segment.contains("TEMP B-TREE"), "{segment}");
            let whole = plan(&ScanQuery {
                table_id: "t".into(),
                after,
                segment: None,
                limit: 10,
                max_bytes: usize::MAX,
            });
            assert!(whole.contains("SEARCH items USING PRIMARY KEY"), "{whole}");
            assert!(!whole.contains("TEMP B-TREE"), "{whole}");
        }
    }

    fn item(table_id: &str, i: u32) -> Mutation {
        Mutation::PutItem {
            table_id: table_id.into(),
            key: ItemKey {
                partition: i.to_be_bytes().to_vec(),
                sort: Vec::new(),
            },
            envelope: vec![7; 16],
        }
    }

    /// DescribeTable's count is kept with the items, not counted from them:
    /// reading it is one lookup (the query plan touches `item_counts` only),
    /// it follows inserts, overwrites and deletes, survives a reopen, and a
    /// database made before it was kept is counted once, at open.
    #[test]
    fn item_counts_are_kept_not_counted() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("items.sqlite");
        {
            let store = SqliteTableStore::open(&path).expect("open");
            let mut batch: Vec<Mutation> = (0..100).map(|i| item("t1", i)).collect();
            batch.extend((0..7).map(|i| item("t2", i)));
            store.commit(&batch).expect("commit");
            // Overwrites change nothing; a delete of an absent item neither.
            store
                .commit(&[
                    item("t1", 5),
                    Mutation::DeleteItem {
                        table_id: "t1".into(),
                        key: ItemKey {
                            partition: 1000u32.to_be_bytes().to_vec(),
                            sort: Vec::new(),
                        },
                    },
                    Mutation::DeleteItem {
                        table_id: "t1".into(),
                        key: ItemKey {
                            partition: 6u32.to_be_bytes().to_vec(),
                            sort: Vec::new(),
                        },
                    },
                ])
                .expect("commit");
            assert_eq!(store.count_items("t1").unwrap(), 99);
            assert_eq!(store.count_items("t2").unwrap(), 7);
            assert_eq!(store.count_items("t3").unwrap(), 0);
            let writer = store.writer.lock().expect("writer");
            let plan: String = writer
                .query_row(
                    "EXPLAIN QUERY PLAN SELECT n FROM item_counts WHERE table_id = ?1",
                    ["t1"],
                    |r| r.get(3),
                )
                .expect("plan");
            assert!(plan.contains("item_counts"), "{plan}");
            // As a database made before counts were kept: none.
            writer.execute("DELETE FROM item_counts", []).unwrap();
            writer
                .execute(
                    "INSERT INTO tables (table_id, name, body) VALUES ('t1', 'one', '{}'), ('t2', 'two', '{}')",
                    [],
                )
                .unwrap();
        }
        let store = SqliteTableStore::open(&path).expect("reopen");
        assert_eq!(store.count_items("t1").unwrap(), 99);
        assert_eq!(store.count_items("t2").unwrap(), 7);
        store
            .commit(&[Mutation::DeleteTable {
                table_id: "t2".into(),
            }])
            .expect("commit");
        assert_eq!(store.count_items("t2").unwrap(), 0);
        store
            .commit(&[Mutation::PurgeDropped {
                table_id: "t2".into(),
                limit: 100,
            }])
            .expect("commit");
        assert!(store.dropped_tables().unwrap().is_empty());
        store.commit(&[item("t2", 1)]).expect("commit");
        assert_eq!(store.count_items("t2").unwrap(), 1);
    }

    /// A read takes an idle reader when there is one: a point read does not
    /// wait behind a reader busy with a long page (or a held one) while
    /// another is free.
    #[test]
    fn a_read_takes_an_idle_reader_rather_than_waiting_for_a_busy_one() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let store = std::sync::Arc::new(
            SqliteTableStore::open(&dir.path().join("items.sqlite")).expect("open"),
        );
        store.commit(&[item("t", 1)]).expect("commit");
        let key = ItemKey {
            partition: 1u32.to_be_bytes().to_vec(),
            sort: Vec::new(),
        };
        // Every reader but the last is busy.
        let held: Vec<_> = store.readers[..READERS - 1]
            .iter()
            .map(|r| r.lock().expect("reader"))
            .collect();
        let (done, finished) = std::sync::mpsc::channel();
        let reading = std::sync::Arc::clone(&store);
        std::thread::spawn(move || {
            for _ in 0..(4 * READERS) {
                let found = reading.get_item("t", &key).expect("get_item");
                assert!(found.is_some());
            }
            let _ = done.send(());
        });
        let result = finished.recv_timeout(std::time::Duration::from_secs(10));
        drop(held);
        assert!(result.is_ok(), "reads waited for busy readers");
    }

    /// The writer commits durably (WAL, `synchronous=FULL`: 2).
    #[test]
    fn the_writer_is_in_wal_mode_and_syncs_fully() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let store = SqliteTableStore::open(&dir.path().join("items.sqlite")).expect("open");
        let writer = store.writer.lock().expect("writer");
        let journal: String = writer
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .expect("journal_mode");
        let synchronous: i64 = writer
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .expect("synchronous");
        assert_eq!((journal.as_str(), synchronous), ("wal", 2));
    }

    /// A reader keeps its transaction after a read that succeeded, for the
    /// next one, and ends it after a read that failed.
    #[test]
    fn a_failed_read_ends_its_transaction() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let store = SqliteTableStore::open(&dir.path().join("items.sqlite")).expect("open");
        for _ in 0..READERS {
            store.load_tables().expect("read");
        }
        assert_eq!(open_transactions(&store), READERS);
        for _ in 0..READERS {
            let failed = store.read(|conn| -> Result<(), StoreError> {
                conn.query_row("SELECT COUNT(*) FROM items", [], |r| r.get::<_, i64>(0))
                    .map_err(engine)?;
                Err(StoreError::Corrupt("made up".into()))
            });
            assert!(failed.is_err());
        }
        assert_eq!(open_transactions(&store), 0);
    }

    /// A read that panics inside its transaction leaves no transaction
    /// open behind it (it would pin the WAL for good): the next use of that
    /// reader, or the next commit's sweep, ends it.
    #[test]
    fn a_panicked_read_leaves_no_transaction_open() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("items.sqlite");
        let store = SqliteTableStore::open(&path).expect("open");
        let key = ItemKey {
            partition: b"p".to_vec(),
            sort: Vec::new(),
        };
        let put = |n: u8| Mutation::PutItem {
            table_id: "t".into(),
            key: key.clone(),
            envelope: vec![n],
        };
        store.commit(&[put(1)]).expect("commit");
        for _ in 0..READERS {
            let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                store.read(|conn| -> Result<(), StoreError> {
                    conn.query_row("SELECT COUNT(*) FROM items", [], |r| r.get::<_, i64>(0))
                        .map_err(engine)?;
                    panic!("a read that fails half-way");
                })
            }));
            assert!(panicked.is_err());
        }
        store.commit(&[put(2)]).expect("commit");
        assert_eq!(
            wal_truncate_busy(&path),
            0,
            "a panicked read still holds the WAL"
        );
        for _ in 0..READERS {
            assert_eq!(store.get_item("t", &key).expect("read"), Some(vec![2]));
        }
    }
}

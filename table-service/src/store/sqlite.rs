//! The embedded engine: SQLite (bundled) in WAL mode with `synchronous=FULL`.
//! Items live in one table keyed by (table id, partition bytes, sort bytes);
//! SQLite compares BLOBs with memcmp, which is exactly the key order the
//! model's encodings are built for. Reads use a small pool of connections so
//! they do not wait behind the writer.

use std::ops::Bound;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, params, params_from_iter};

use super::{
    Mutation, RangeQuery, ScanQuery, StoreError, StoredItem, TableRecord, TableStore, segment_hash,
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
";

const READERS: usize = 4;

pub struct SqliteTableStore {
    writer: Mutex<Connection>,
    readers: Vec<Mutex<Connection>>,
    next: AtomicUsize,
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
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let writer = Connection::open(path).map_err(engine)?;
        configure(&writer)?;
        writer.execute_batch(SCHEMA).map_err(engine)?;
        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            let conn = Connection::open(path).map_err(engine)?;
            configure(&conn)?;
            readers.push(Mutex::new(conn));
        }
        Ok(SqliteTableStore {
            writer: Mutex::new(writer),
            readers,
            next: AtomicUsize::new(0),
        })
    }

    fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.readers.len();
        let conn = self.readers[i].lock().map_err(|_| StoreError::Poisoned)?;
        f(&conn)
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
        let tx = conn.transaction().map_err(engine)?;
        for m in batch {
            match m {
                Mutation::PutTable(t) => tx.execute(
                    "INSERT INTO tables (table_id, name, body) VALUES (?1, ?2, ?3)
                     ON CONFLICT (table_id) DO UPDATE SET name = excluded.name, body = excluded.body",
                    params![t.table_id, t.name, serde_json::to_string(t).map_err(engine)?],
                ),
                Mutation::DeleteTable { table_id } => {
                    tx.execute("DELETE FROM items WHERE table_id = ?1", [table_id])
                        .map_err(engine)?;
                    tx.execute("DELETE FROM tables WHERE table_id = ?1", [table_id])
                }
                Mutation::PutItem {
                    table_id,
                    key,
                    envelope,
                } => tx.execute(
                    "INSERT INTO items (table_id, pk, sk, seg, envelope) VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (table_id, pk, sk) DO UPDATE SET envelope = excluded.envelope",
                    params![table_id, key.partition, key.sort, segment_hash(&key.partition), envelope],
                ),
                Mutation::DeleteItem { table_id, key } => tx.execute(
                    "DELETE FROM items WHERE table_id = ?1 AND pk = ?2 AND sk = ?3",
                    params![table_id, key.partition, key.sort],
                ),
            }
            .map_err(engine)?;
        }
        tx.commit().map_err(engine)
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
        let mut sql = String::from("SELECT pk, sk, envelope FROM items WHERE table_id = ?1");
        let mut args: Vec<Value> = vec![Value::Text(q.table_id.clone())];
        if let Some(after) = &q.after {
            args.push(Value::Blob(after.partition.clone()));
            args.push(Value::Blob(after.sort.clone()));
            sql.push_str(&format!(
                " AND (pk, sk) > (?{}, ?{})",
                args.len() - 1,
                args.len()
            ));
        }
        if let Some((segment, total)) = q.segment {
            args.push(Value::Integer(i64::from(total)));
            args.push(Value::Integer(i64::from(segment)));
            sql.push_str(&format!(" AND seg % ?{} = ?{}", args.len() - 1, args.len()));
        }
        args.push(Value::Integer(q.limit as i64));
        sql.push_str(&format!(" ORDER BY pk, sk LIMIT ?{}", args.len()));
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

    fn count_items(&self, table_id: &str) -> Result<u64, StoreError> {
        self.read(|conn| {
            conn.query_row(
                "SELECT COUNT(*) FROM items WHERE table_id = ?1",
                [table_id],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n as u64)
            .map_err(engine)
        })
    }
}

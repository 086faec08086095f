//! The embedded engine: SQLite (bundled) in WAL mode with `synchronous=FULL`,
//! one database file under the data directory. Records are rows keyed by
//! their identifiers with a JSON body, except wrapped key material, which is
//! kept in a BLOB column.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, params};

use super::{Mutation, Snapshot, Store, StoreError};
use crate::keys::{KeyVersionRecord, VersionOrigin};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS keys (key_id TEXT PRIMARY KEY, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS key_versions (
    key_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    wrapped BLOB NOT NULL,
    created INTEGER NOT NULL,
    origin TEXT NOT NULL,
    PRIMARY KEY (key_id, version)
);
CREATE TABLE IF NOT EXISTS aliases (alias_name TEXT PRIMARY KEY, key_id TEXT NOT NULL, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS principals (principal TEXT PRIMARY KEY, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tokens (token_id TEXT PRIMARY KEY, principal TEXT NOT NULL, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS grants (grant_id TEXT PRIMARY KEY, key_id TEXT NOT NULL, body TEXT NOT NULL);
";

pub struct SqliteStore {
    conn: Mutex<Connection>,
    /// Keeps other processes off the database (none for in-memory ones).
    _lock: Option<lockbox_proto::store_lock::StoreLock>,
}

fn engine(e: impl std::fmt::Display) -> StoreError {
    StoreError::Engine(e.to_string())
}

fn json<T: serde::Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(engine)
}

fn origin_name(origin: VersionOrigin) -> &'static str {
    match origin {
        VersionOrigin::Created => "created",
        VersionOrigin::AutomaticRotation => "automatic",
        VersionOrigin::OnDemandRotation => "on-demand",
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`.
    /// Refused while another process has it open.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let lock = lockbox_proto::store_lock::lock(path).map_err(StoreError::Engine)?;
        let conn = Connection::open(path).map_err(engine)?;
        let mut store = Self::init(conn)?;
        store._lock = Some(lock);
        // What a destruction before a crash left in the WAL goes now.
        let truncated = {
            let conn = store.conn.lock().map_err(|_| StoreError::Poisoned)?;
            scrub_once(&conn)?;
            truncate_wal(&conn)
        };
        if let Err(e) = truncated {
            tracing::warn!(error = %e, "kms.db-wal could not be checkpointed at start");
        }
        Ok(store)
    }

    /// A private in-memory database, for tests.
    pub fn in_memory() -> Result<Self, StoreError> {
        Self::init(Connection::open_in_memory().map_err(engine)?)
    }

    fn init(conn: Connection) -> Result<Self, StoreError> {
        // WAL keeps readers off the writer's back; FULL makes every commit
        // durable before `commit` returns.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(engine)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(engine)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(engine)?;
        // Deleted rows (a destroyed key's wrapped versions) are overwritten
        // with zeros, not left in free space for a copy of the file to give
        // back; see `commit` for the WAL.
        conn.pragma_update(None, "secure_delete", "ON")
            .map_err(engine)?;
        conn.execute_batch(SCHEMA).map_err(engine)?;
        Ok(SqliteStore {
            conn: Mutex::new(conn),
            _lock: None,
        })
    }
}

fn load_bodies<T: serde::de::DeserializeOwned>(
    conn: &Connection,
    table: &str,
    order: &str,
) -> Result<Vec<T>, StoreError> {
    let mut stmt = conn
        .prepare(&format!("SELECT body FROM {table} ORDER BY {order}"))
        .map_err(engine)?;
    let rows = stmt
        .query_map([], |row| row.get::<_, String>(0))
        .map_err(engine)?;
    let mut out = Vec::new();
    for row in rows {
        let body = row.map_err(engine)?;
        out.push(
            serde_json::from_str(&body)
                .map_err(|e| StoreError::Corrupt(format!("{table}: {e}")))?,
        );
    }
    Ok(out)
}

impl Store for SqliteStore {
    fn load(&self) -> Result<Snapshot, StoreError> {
        let conn = self.conn.lock().map_err(|_| StoreError::Poisoned)?;
        let mut snapshot = Snapshot::default();
        {
            let mut stmt = conn
                .prepare("SELECT name, value FROM meta ORDER BY name")
                .map_err(engine)?;
            let rows = stmt
                .query_map([], |row| {
                    Ok((row.get::<_, String>(0)?, row.get::<_, Vec<u8>>(1)?))
                })
                .map_err(engine)?;
            for row in rows {
                let (name, value) = row.map_err(engine)?;
                snapshot.meta.insert(name, value);
            }
        }
        snapshot.keys = load_bodies(&conn, "keys", "key_id")?;
        {
            let mut stmt = conn
                .prepare(
                    "SELECT key_id, version, wrapped, created, origin FROM key_versions ORDER BY key_id, version",
                )
                .map_err(engine)?;
            let rows = stmt
                .query_map([], |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, u32>(1)?,
                        row.get::<_, Vec<u8>>(2)?,
                        row.get::<_, i64>(3)?,
                        row.get::<_, String>(4)?,
                    ))
                })
                .map_err(engine)?;
            for row in rows {
                let (key_id, version, wrapped, created, origin) = row.map_err(engine)?;
                let origin = match origin.as_str() {
                    "created" => VersionOrigin::Created,
                    "automatic" => VersionOrigin::AutomaticRotation,
                    "on-demand" => VersionOrigin::OnDemandRotation,
                    other => {
                        return Err(StoreError::Corrupt(format!(
                            "key_versions: unknown origin {other:?}"
                        )));
                    }
                };
                snapshot.versions.push(KeyVersionRecord {
                    key_id,
                    version,
                    wrapped,
                    created,
                    origin,
                });
            }
        }
        snapshot.aliases = load_bodies(&conn, "aliases", "alias_name")?;
        snapshot.principals = load_bodies(&conn, "principals", "principal")?;
        snapshot.tokens = load_bodies(&conn, "tokens", "token_id")?;
        snapshot.grants = load_bodies(&conn, "grants", "grant_id")?;
        Ok(snapshot)
    }

    fn commit(&self, batch: &[Mutation]) -> Result<(), StoreError> {
        let mut conn = self.conn.lock().map_err(|_| StoreError::Poisoned)?;
        let tx = conn.transaction().map_err(engine)?;
        for mutation in batch {
            match mutation {
                Mutation::PutMeta { name, value } => tx.execute(
                    "INSERT INTO meta (name, value) VALUES (?1, ?2)
                     ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                    params![name, value],
                ),
                Mutation::PutKey(key) => tx.execute(
                    "INSERT INTO keys (key_id, body) VALUES (?1, ?2)
                     ON CONFLICT (key_id) DO UPDATE SET body = excluded.body",
                    params![key.key_id, json(key)?],
                ),
                Mutation::DeleteKey { key_id } => {
                    for table in ["key_versions", "aliases", "grants", "keys"] {
                        tx.execute(&format!("DELETE FROM {table} WHERE key_id = ?1"), [key_id])
                            .map_err(engine)?;
                    }
                    Ok(0)
                }
                Mutation::PutKeyVersion(v) => tx.execute(
                    "INSERT INTO key_versions (key_id, version, wrapped, created, origin)
                     VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (key_id, version) DO UPDATE SET wrapped = excluded.wrapped,
                       created = excluded.created, origin = excluded.origin",
                    params![v.key_id, v.version, v.wrapped, v.created, origin_name(v.origin)],
                ),
                Mutation::PutAlias(alias) => tx.execute(
                    "INSERT INTO aliases (alias_name, key_id, body) VALUES (?1, ?2, ?3)
                     ON CONFLICT (alias_name) DO UPDATE SET key_id = excluded.key_id, body = excluded.body",
                    params![alias.alias_name, alias.key_id, json(alias)?],
                ),
                Mutation::DeleteAlias { alias_name } => {
                    tx.execute("DELETE FROM aliases WHERE alias_name = ?1", [alias_name])
                }
                Mutation::PutPrincipal(p) => tx.execute(
                    "INSERT INTO principals (principal, body) VALUES (?1, ?2)
                     ON CONFLICT (principal) DO UPDATE SET body = excluded.body",
                    params![p.principal, json(p)?],
                ),
                Mutation::DeletePrincipal { principal } => {
                    tx.execute("DELETE FROM tokens WHERE principal = ?1", [principal])
                        .map_err(engine)?;
                    tx.execute("DELETE FROM principals WHERE principal = ?1", [principal])
                }
                Mutation::PutToken(t) => tx.execute(
                    "INSERT INTO tokens (token_id, principal, body) VALUES (?1, ?2, ?3)
                     ON CONFLICT (token_id) DO UPDATE SET principal = excluded.principal, body = excluded.body",
                    params![t.token_id, t.principal, json(t)?],
                ),
                Mutation::DeleteToken { token_id } => {
                    tx.execute("DELETE FROM tokens WHERE token_id = ?1", [token_id])
                }
                Mutation::PutGrant(g) => tx.execute(
                    "INSERT INTO grants (grant_id, key_id, body) VALUES (?1, ?2, ?3)
                     ON CONFLICT (grant_id) DO UPDATE SET key_id = excluded.key_id, body = excluded.body",
                    params![g.grant_id, g.key_id, json(g)?],
                ),
                Mutation::DeleteGrant { grant_id } => {
                    tx.execute("DELETE FROM grants WHERE grant_id = ?1", [grant_id])
                }
            }
            .map_err(engine)?;
        }
        tx.commit().map_err(engine)?;
        if batch
            .iter()
            .any(|m| matches!(m, Mutation::DeleteKey { .. }))
        {
            // The WAL still holds the pages as they were before: copy the
            // zeroed ones into the database and empty the WAL, so no file
            // of the data directory holds a destroyed key's material.
            // Failing here loses nothing (the deletion is committed); the
            // next start, or the next destruction, tries again.
            if let Err(e) = truncate_wal(&conn) {
                tracing::warn!(error = %e, "a destroyed key's material may remain in kms.db-wal until the next checkpoint");
            }
        }
        Ok(())
    }
}

/// `user_version` of a key store whose free space holds no deleted rows.
const SCRUBBED: i64 = 1;

/// Rewrites, once, a key store made before `secure_delete` was on
/// (`user_version` below [`SCRUBBED`]): keys destroyed then left their
/// wrapped material in its free pages. VACUUM copies only live rows; the
/// store is small (keys, principals, grants), so this takes moments.
fn scrub_once(conn: &Connection) -> Result<(), StoreError> {
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(engine)?;
    if version >= SCRUBBED {
        return Ok(());
    }
    conn.execute_batch("VACUUM").map_err(engine)?;
    conn.pragma_update(None, "user_version", SCRUBBED)
        .map_err(engine)
}

/// Checkpoints every WAL frame into the database and truncates the WAL to
/// nothing. Only this store's one connection uses the file, so nothing can
/// hold the checkpoint back; if something did, it says so.
fn truncate_wal(conn: &Connection) -> Result<(), String> {
    let (busy, log, checkpointed): (i64, i64, i64) = conn
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?))
        })
        .map_err(|e| e.to_string())?;
    if busy != 0 {
        return Err(format!(
            "the checkpoint was held back ({checkpointed} of {log} WAL frames copied)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every commit is durable: WAL, `synchronous=FULL` (2).
    #[test]
    fn the_store_is_in_wal_mode_and_syncs_fully() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let store = SqliteStore::open(&dir.path().join("kms.db")).expect("open");
        let conn = store.conn.lock().expect("connection");
        let journal: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .expect("journal_mode");
        let synchronous: i64 = conn
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .expect("synchronous");
        assert_eq!((journal.as_str(), synchronous), ("wal", 2));
    }

    /// A key store written before `secure_delete` was on keeps a destroyed
    /// key's material in its free pages; the first open since scrubs it,
    /// once, and leaves the live rows as they were.
    #[test]
    fn a_store_made_before_secure_delete_is_scrubbed_once() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("kms.db");
        let gone = [0x5a_u8; 48];
        let kept = [0xa5_u8; 48];
        drop(SqliteStore::open(&path).expect("create"));
        {
            // As the earlier version left it.
            let conn = Connection::open(&path).unwrap();
            conn.pragma_update(None, "secure_delete", "OFF").unwrap();
            conn.pragma_update(None, "user_version", 0).unwrap();
            for (id, wrapped) in [("gone", &gone), ("kept", &kept)] {
                conn.execute(
                    "INSERT INTO key_versions (key_id, version, wrapped, created, origin) VALUES (?1, 1, ?2, 0, 'created')",
                    params![id, wrapped.as_slice()],
                )
                .unwrap();
            }
            conn.execute("DELETE FROM key_versions WHERE key_id = 'gone'", [])
                .unwrap();
            conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
                .unwrap();
        }
        let holds = |needle: &[u8]| {
            ["kms.db", "kms.db-wal"].iter().any(|name| {
                std::fs::read(dir.path().join(name))
                    .is_ok_and(|bytes| bytes.windows(needle.len()).any(|w| w == needle))
            })
        };
        assert!(holds(&gone), "the deleted row is still in the file");
        let store = SqliteStore::open(&path).expect("open");
        assert!(!holds(&gone), "scrubbed");
        assert!(holds(&kept));
        let versions = store.load().expect("load").versions;
        assert_eq!(versions.len(), 1);
        assert_eq!(versions[0].wrapped, kept);
        let version: i64 = store
            .conn
            .lock()
            .unwrap()
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCRUBBED);
    }
}

//! A consistent copy of a service's SQLite store, taken while the service
//! runs (`kms-service backup`, `table-service backup`): SQLite's
//! `VACUUM INTO` from a read-only connection, which sees one committed
//! state (write-ahead log included) and leaves the store and its writer
//! alone. The copy is owner-only (it holds what the store holds: wrapped
//! keys, key attributes in clear) and appears under its name only once
//! complete.

use std::path::{Path, PathBuf};

/// Copies `database` to `to`, which must not exist; returns the copy's
/// size in bytes. Errors say what to fix.
pub fn snapshot(database: &Path, to: &Path) -> Result<u64, String> {
    if !database.is_file() {
        return Err(format!(
            "there is no store at {}: check --data-dir",
            database.display()
        ));
    }
    if to.exists() {
        return Err(format!(
            "{} already exists: name a new file (a backup never overwrites one)",
            to.display()
        ));
    }
    let partial = partial_name(to);
    // Left by an interrupted earlier backup to the same name.
    let _ = std::fs::remove_file(&partial);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
        .open(&partial)
        .map_err(|e| format!("cannot create {}: {e}", partial.display()))?;
    let copied = (|| {
        let source = rusqlite::Connection::open_with_flags(
            database,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| format!("cannot open {} to read: {e}", database.display()))?;
        // Waits out a writer's brief exclusive moments instead of failing.
        source
            .busy_timeout(std::time::Duration::from_secs(10))
            .map_err(|e| e.to_string())?;
        let target = partial
            .to_str()
            .ok_or_else(|| format!("{} is not a UTF-8 path", partial.display()))?;
        source
            .execute("VACUUM INTO ?1", [target])
            .map_err(|e| format!("copying {}: {e}", database.display()))?;
        let file = std::fs::File::open(&partial).map_err(|e| e.to_string())?;
        file.sync_all()
            .map_err(|e| format!("syncing {}: {e}", partial.display()))?;
        Ok::<u64, String>(file.metadata().map_err(|e| e.to_string())?.len())
    })();
    let size = match copied {
        Ok(size) => size,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
    };
    // A link, not a rename: it fails rather than replace a file that
    // appeared under that name meanwhile.
    let named = std::fs::hard_link(&partial, to);
    let _ = std::fs::remove_file(&partial);
    named.map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => format!(
            "{} already exists: name a new file (a backup never overwrites one)",
            to.display()
        ),
        _ => format!("cannot name the copy {}: {e}", to.display()),
    })?;
    if let Some(dir) = to.parent().filter(|d| !d.as_os_str().is_empty())
        && let Ok(dir) = std::fs::File::open(dir)
    {
        let _ = dir.sync_all();
    }
    Ok(size)
}

fn partial_name(to: &Path) -> PathBuf {
    let mut name = to.as_os_str().to_os_string();
    name.push(".partial");
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(path: &Path) -> rusqlite::Connection {
        let db = rusqlite::Connection::open(path).unwrap();
        db.pragma_update(None, "journal_mode", "WAL").unwrap();
        db.execute_batch("CREATE TABLE t (n INTEGER); INSERT INTO t VALUES (1), (2);")
            .unwrap();
        db
    }

    #[test]
    fn the_copy_holds_what_is_committed_while_the_writer_keeps_the_store_open() {
        let dir = tempfile::tempdir().unwrap();
        let db = store(&dir.path().join("s.db"));
        db.execute("INSERT INTO t VALUES (3)", []).unwrap();
        let to = dir.path().join("copy.db");
        let size = snapshot(&dir.path().join("s.db"), &to).unwrap();
        assert_eq!(size, std::fs::metadata(&to).unwrap().len());
        let copy = rusqlite::Connection::open(&to).unwrap();
        let n: i64 = copy
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 3, "the write-ahead log's commits are in the copy");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&to).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        assert!(!partial_name(&to).exists());
        // The store still takes writes.
        db.execute("INSERT INTO t VALUES (4)", []).unwrap();
    }

    #[test]
    fn it_never_overwrites_and_names_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let _db = store(&dir.path().join("s.db"));
        let to = dir.path().join("copy.db");
        std::fs::write(&to, b"precious").unwrap();
        let refused = snapshot(&dir.path().join("s.db"), &to).unwrap_err();
        assert!(refused.contains("already exists"), "{refused}");
        assert_eq!(std::fs::read(&to).unwrap(), b"precious");
        let missing = snapshot(&dir.path().join("none.db"), &dir.path().join("x.db")).unwrap_err();
        assert!(missing.contains("there is no store"), "{missing}");
        assert!(!dir.path().join("x.db").exists());
    }
}

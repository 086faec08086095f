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
    // Absolute paths: SQLite would read a name beginning with `file:` as
    // a URI.
    let database =
        std::path::absolute(database).map_err(|e| format!("{}: {e}", database.display()))?;
    let to = std::path::absolute(to).map_err(|e| format!("{}: {e}", to.display()))?;
    let (database, to) = (database.as_path(), to.as_path());
    let partial = partial_name(to);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(&partial).map_err(|e| match e.kind() {
        // Another backup to the same name is running, or one was cut short.
        std::io::ErrorKind::AlreadyExists => format!(
            "{} exists: another backup to {} is running, or one was interrupted (then remove it)",
            partial.display(),
            to.display()
        ),
        _ => format!("cannot create {}: {e}", partial.display()),
    })?;
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
    // appeared under that name meanwhile. Where the file system has no
    // links, a rename after a last look.
    let named = match std::fs::hard_link(&partial, to) {
        Ok(()) => std::fs::remove_file(&partial).or(Ok(())),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(e),
        Err(_) if to.exists() => Err(std::io::ErrorKind::AlreadyExists.into()),
        Err(_) => std::fs::rename(&partial, to),
    };
    named.map_err(|e| {
        let _ = std::fs::remove_file(&partial);
        match e.kind() {
            std::io::ErrorKind::AlreadyExists => format!(
                "{} already exists: name a new file (a backup never overwrites one)",
                to.display()
            ),
            _ => format!("cannot name the copy {}: {e}", to.display()),
        }
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
    fn odd_names_are_file_names_and_a_left_partial_copy_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let _db = store(&dir.path().join("s.db"));
        // (Given relative, such a name would be a URI to SQLite; the copy
        // is always made under the absolute path.)
        let to = dir.path().join("file:b.db");
        let size = snapshot(&dir.path().join("s.db"), &to).unwrap();
        assert!(size > 0 && std::fs::metadata(&to).unwrap().len() == size);
        assert!(!dir.path().join("b.db.partial").exists());
        let other = dir.path().join("c.db");
        std::fs::write(partial_name(&other), b"").unwrap();
        let refused = snapshot(&dir.path().join("s.db"), &other).unwrap_err();
        assert!(
            refused.contains("interrupted (then remove it)"),
            "{refused}"
        );
        assert!(
            partial_name(&other).exists(),
            "a file it did not make is left alone"
        );
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

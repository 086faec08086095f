//! One process per store (feature `service`): an exclusive advisory lock on
//! `<database>.lock`, held for as long as the store is open. Both services
//! keep state beside their database (kms-service all of it, table-service
//! its table records, item locks and read snapshots), so a second process
//! on the same data directory would diverge from the first; it is refused
//! at start instead. The operating system lets go of the lock when the
//! process ends, however it ends.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Holds the lock until dropped.
#[derive(Debug)]
pub struct StoreLock {
    _file: File,
}

/// The lock file of `database`: beside the file it resolves to, so a
/// database reached through a symbolic link (to it, or to its directory)
/// has one lock.
pub fn lock_path(database: &Path) -> PathBuf {
    let resolved = database
        .canonicalize()
        .unwrap_or_else(|_| database.to_path_buf());
    let mut name = resolved.into_os_string();
    name.push(".lock");
    PathBuf::from(name)
}

/// Whether another process holds the lock of `database` right now (no
/// waiting).
pub fn is_held(database: &Path) -> bool {
    File::open(lock_path(database))
        .is_ok_and(|file| matches!(file.try_lock(), Err(TryLockError::WouldBlock)))
}

/// How long [`lock`] waits for a lock held elsewhere to be let go (a
/// restarted service whose previous process is still exiting).
pub const LOCK_WAIT: Duration = Duration::from_secs(3);

/// Takes the lock of `database`, waiting up to [`LOCK_WAIT`] for whoever
/// holds it, or says which lock is held.
pub fn lock(database: &Path) -> Result<StoreLock, String> {
    let path = lock_path(database);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("cannot open the lock file {}: {e}", path.display()))?;
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(StoreLock { _file: file }),
            Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(TryLockError::WouldBlock) => {
                return Err(format!(
                    "the store {} is in use by another process (it holds {}): stop that process, or give this one another data directory (--data-dir)",
                    database.display(),
                    path.display()
                ));
            }
            Err(TryLockError::Error(e)) => {
                return Err(format!("cannot lock {}: {e}", path.display()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_reached_through_a_symbolic_link_has_one_lock() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let real = dir.path().join("x.db");
        std::fs::write(&real, b"").expect("database file");
        let link = dir.path().join("y.db");
        std::os::unix::fs::symlink(&real, &link).expect("symlink");
        let _held = lock(&real).expect("lock");
        assert!(is_held(&link));
        assert_eq!(lock_path(&link), lock_path(&real));
    }

    #[test]
    fn a_second_lock_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let db = dir.path().join("x.db");
        let first = lock(&db).expect("first lock");
        let started = Instant::now();
        let refused = lock(&db).expect_err("second lock refused");
        assert!(started.elapsed() >= LOCK_WAIT, "gave up early");
        assert!(refused.contains("in use by another process"), "{refused}");
        assert!(refused.contains("x.db.lock"), "{refused}");
        assert!(is_held(&db));
        drop(first);
        assert!(!is_held(&db));
        let again = lock(&db).expect("free again");
        // A holder that lets go while the next one waits hands over.
        let waiter = std::thread::spawn(move || lock(&db).map(drop));
        std::thread::sleep(Duration::from_millis(200));
        drop(again);
        waiter.join().expect("waiter").expect("taken once let go");
    }
}

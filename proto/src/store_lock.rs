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

/// Creates `dir` and its missing parents, owner-only (mode 0700 on Unix).
/// A directory that already exists is left as it is; when group or others
/// may use it, the answer is a warning to log, naming the mode and the fix.
pub fn create_private_dir(dir: &Path) -> std::io::Result<Option<String>> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Ok(Some(format!(
                "directory {} has mode {mode:03o}: other users of this machine may read or list what it holds; `chmod 700 {}`",
                dir.display(),
                dir.display()
            )));
        }
    }
    Ok(None)
}

#[cfg(all(test, unix))]
mod private_dir_tests {
    use std::os::unix::fs::PermissionsExt;

    use super::create_private_dir;

    #[test]
    fn new_directories_are_owner_only_and_shared_ones_are_reported() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a/b");
        assert_eq!(create_private_dir(&dir).unwrap(), None);
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&root.path().join("a")), 0o700);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let warning = create_private_dir(&dir).unwrap().expect("a warning");
        assert!(
            warning.contains("mode 755") && warning.contains("chmod 700"),
            "{warning}"
        );
        assert_eq!(mode(&dir), 0o755, "an existing directory is left as it is");
    }
}

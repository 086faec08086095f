//! Where the writer's bytes go: a trait so tests can inject failures, and the
//! append-only file used in production.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::AuditError;

/// A destination for audit bytes. The writer thread owns it, so it needs to
/// be `Send` but not `Sync`.
pub trait AuditSink: Send + 'static {
    /// Appends all of `bytes` (whole lines) after everything appended before.
    fn append(&mut self, bytes: &[u8]) -> io::Result<()>;
    /// Makes everything appended so far durable (for a file: `sync_data`).
    /// An acknowledgement to a caller is only ever sent after this succeeds.
    fn sync(&mut self) -> io::Result<()>;
    /// An independent handle that makes this sink's bytes durable from
    /// another thread, while this sink goes on appending. The audit log
    /// syncs through such handles so that the next records are written while
    /// the previous ones are being synced.
    fn syncer(&self) -> io::Result<Box<dyn AuditSyncer>>;
    /// Whether [`AuditSink::rotate`] can be asked for now, to the segment
    /// whose first record is `first`; `Err` says why not (nothing is done,
    /// and the sink goes on appending where it is). A sink that cannot
    /// rotate (the default) says so.
    fn can_rotate(&self, first: u64) -> io::Result<()> {
        let _ = first;
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "this audit destination does not rotate",
        ))
    }
    /// Moves everything appended so far aside, as the rotated segment whose
    /// first record is `first`, and goes on appending to a new, empty
    /// destination. Called only after [`AuditSink::can_rotate`] said yes
    /// and the rotation checkpoint was written, when everything appended is
    /// durable; any `Err` poisons the log (the checkpoint says the file
    /// ends here, so nothing more may be appended to it). Syncers made
    /// before it keep syncing the old destination.
    fn rotate(&mut self, first: u64) -> io::Result<()> {
        Err(self
            .can_rotate(first)
            .err()
            .unwrap_or_else(|| io::Error::other("rotate is not implemented")))
    }
}

/// Makes a sink's bytes durable; see [`AuditSink::syncer`]. Several handles
/// of one sink may sync at the same time.
pub trait AuditSyncer: Send + 'static {
    /// Makes durable everything that was appended to the sink before this
    /// call began (whatever is appended meanwhile may or may not be
    /// included). An `Err` means that this cannot be promised.
    fn sync(&mut self) -> io::Result<()>;
}

/// An append-only file. New files are created with mode 0600 on unix, since
/// audit records name principals, keys and encryption contexts.
#[derive(Debug)]
pub struct FileSink {
    file: File,
    path: PathBuf,
}

impl FileSink {
    /// Opens `path` for appending, creating it if needed. A newly created file
    /// also has its directory synced so the file itself survives a crash.
    pub fn open(path: &Path) -> Result<FileSink, AuditError> {
        let io_err = |action: &'static str| {
            move |source: io::Error| AuditError::Io {
                action,
                path: path.to_path_buf(),
                source,
            }
        };
        let file = match options(true).open(path) {
            Ok(file) => {
                sync_parent_dir(path).map_err(io_err("sync the directory of"))?;
                file
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                options(false).open(path).map_err(io_err("open"))?
            }
            Err(e) => return Err(io_err("create")(e)),
        };
        Ok(FileSink {
            file,
            path: path.to_path_buf(),
        })
    }

    /// The file this sink appends to.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Renames the log at `path`, whose first record is `first`, to its
/// segment name and makes the rename durable (also used to finish a
/// rotation a stop interrupted).
pub(crate) fn rotate_file(path: &Path, first: u64) -> io::Result<()> {
    let to = free_segment_path(path, first)?;
    std::fs::rename(path, &to)?;
    sync_parent_dir(path)
}

/// The segment name of the log at `path` whose first record is `first`,
/// if no file has it (a segment is never overwritten).
fn free_segment_path(path: &Path, first: u64) -> io::Result<PathBuf> {
    let to = super::segment::segment_path(path, first);
    match to.try_exists()? {
        true => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} exists already", to.display()),
        )),
        false => Ok(to),
    }
}

fn options(create_new: bool) -> OpenOptions {
    let mut options = OpenOptions::new();
    options.append(true).create_new(create_new);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options
}

#[cfg(unix)]
fn sync_parent_dir(path: &Path) -> io::Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(parent)?.sync_all()
}

// Directories cannot be opened for syncing elsewhere; the file's own sync is
// the best available.
#[cfg(not(unix))]
fn sync_parent_dir(_path: &Path) -> io::Result<()> {
    Ok(())
}

impl AuditSink for FileSink {
    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all(bytes)
    }

    /// No file of the segment's name may exist (it is never overwritten:
    /// the service, under its store lock, is the directory's only writer).
    fn can_rotate(&self, first: u64) -> io::Result<()> {
        free_segment_path(&self.path, first).map(drop)
    }

    /// Renames the file to its segment name (`audit.jsonl` to
    /// `audit-<first, 20 digits>.jsonl`), syncs the directory, and creates a
    /// new file (mode 0600) under the old name, syncing the directory again.
    fn rotate(&mut self, first: u64) -> io::Result<()> {
        rotate_file(&self.path, first)?;
        let file = options(true).open(&self.path)?;
        sync_parent_dir(&self.path)?;
        self.file = file;
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Opens the file again rather than duplicating the descriptor: a
    /// writeback error is reported once per open file description, so
    /// syncers sharing one could see an error consumed by another's
    /// concurrent sync and wrongly report success. With its own description
    /// each syncer sees every error that happened since it was opened.
    ///
    /// The reopened file must be the one this sink writes to: if the path
    /// was renamed away or replaced since, syncing it would acknowledge
    /// records that are not durable, so that is an error.
    fn syncer(&self) -> io::Result<Box<dyn AuditSyncer>> {
        let file = OpenOptions::new().append(true).open(&self.path)?;
        if !same_file(&self.file, &file)? {
            return Err(io::Error::other(format!(
                "{} is no longer the file the audit log writes to (was it moved or replaced?)",
                self.path.display()
            )));
        }
        Ok(Box::new(FileSyncer { file }))
    }
}

#[cfg(unix)]
fn same_file(a: &File, b: &File) -> io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let (a, b) = (a.metadata()?, b.metadata()?);
    Ok(a.dev() == b.dev() && a.ino() == b.ino())
}

// No portable file identity elsewhere; the path is trusted.
#[cfg(not(unix))]
fn same_file(_a: &File, _b: &File) -> io::Result<bool> {
    Ok(true)
}

/// [`AuditSyncer`] of a [`FileSink`]: `fdatasync` on its own open file
/// description of the same file.
#[derive(Debug)]
struct FileSyncer {
    file: File,
}

impl AuditSyncer for FileSyncer {
    fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }
}

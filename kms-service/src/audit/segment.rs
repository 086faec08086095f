//! Rotated segments of a log: the files a log is renamed to when it grows
//! past its rotation size, named by the sequence of their first record so
//! that the names sort in chain order (`audit.jsonl` rotates to
//! `audit-00000000000000000001.jsonl`, `audit-00000000000000052718.jsonl`,
//! …). The chain runs on across them: the first record of each segment,
//! and of the active log after them, links to the last of the one before.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Digits of the sequence in a segment's name (a u64 has at most 20).
const DIGITS: usize = 20;

/// The name a log at `log_path` is rotated to when `first` is the sequence
/// of its first record.
pub(crate) fn segment_path(log_path: &Path, first: u64) -> PathBuf {
    let (stem, extension) = name_parts(log_path);
    let name = match extension {
        Some(ext) => format!("{stem}-{first:0DIGITS$}.{ext}"),
        None => format!("{stem}-{first:0DIGITS$}"),
    };
    log_path.with_file_name(name)
}

/// The log's file name split at its last dot (`audit.jsonl` → `audit`,
/// `jsonl`).
fn name_parts(log_path: &Path) -> (String, Option<String>) {
    let name = log_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => (stem.to_string(), Some(ext.to_string())),
        _ => (name, None),
    }
}

/// The rotated segments of the log at `log_path` that exist, oldest first:
/// each one's first sequence and path.
pub(crate) fn list(log_path: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let (stem, extension) = name_parts(log_path);
    let dir = match log_path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let prefix = format!("{stem}-");
    let suffix = extension.map(|ext| format!(".{ext}")).unwrap_or_default();
    let mut segments = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let digits = name
            .strip_prefix(&prefix)
            .and_then(|rest| rest.strip_suffix(suffix.as_str()));
        let Some(digits) = digits else { continue };
        if digits.len() != DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Ok(first) = digits.parse::<u64>() {
            segments.push((first, entry.path()));
        }
    }
    segments.sort();
    Ok(segments)
}

/// The last complete line of `path` (without its `\n`), or `None` when the
/// file has none. Reads backwards from the end, so only the tail of a large
/// segment is read.
pub(crate) fn last_line(path: &Path) -> io::Result<Option<Vec<u8>>> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    let mut window: u64 = 64 * 1024;
    loop {
        let start = len.saturating_sub(window);
        file.seek(SeekFrom::Start(start))?;
        let mut tail = Vec::new();
        file.read_to_end(&mut tail)?;
        // Complete lines only: drop whatever follows the last newline.
        let Some(end) = tail.iter().rposition(|&b| b == b'\n') else {
            if start == 0 {
                return Ok(None);
            }
            window = window.saturating_mul(2);
            continue;
        };
        match tail[..end].iter().rposition(|&b| b == b'\n') {
            Some(begin) => return Ok(Some(tail[begin + 1..end].to_vec())),
            None if start == 0 => return Ok(Some(tail[..end].to_vec())),
            None => window = window.saturating_mul(2),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_in_chain_order_and_are_found_again() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let log = dir.path().join("audit.jsonl");
        assert_eq!(
            segment_path(&log, 52_718),
            dir.path().join("audit-00000000000000052718.jsonl")
        );
        assert_eq!(
            segment_path(&dir.path().join("log"), 1),
            dir.path().join("log-00000000000000000001")
        );
        for first in [52_718u64, 1, 9_999] {
            std::fs::write(segment_path(&log, first), b"")?;
        }
        // Not segments of this log.
        for other in [
            "audit.jsonl",
            "audit.jsonl.checkpoints",
            "audit-1.jsonl",
            "audit-0000000000000000000x.jsonl",
            "other-00000000000000000001.jsonl",
            "audit-00000000000000000001.jsonl.tmp",
        ] {
            std::fs::write(dir.path().join(other), b"")?;
        }
        let found: Vec<u64> = list(&log)?.into_iter().map(|(first, _)| first).collect();
        assert_eq!(found, [1, 9_999, 52_718]);
        Ok(())
    }

    #[test]
    fn last_line_reads_the_last_complete_line_of_any_length() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("f");
        for (text, want) in [
            (b"".to_vec(), None),
            (b"partial".to_vec(), None),
            (b"one\n".to_vec(), Some(b"one".to_vec())),
            (b"one\ntwo\n".to_vec(), Some(b"two".to_vec())),
            (b"one\ntwo\npart".to_vec(), Some(b"two".to_vec())),
            (
                [b"a\n".as_slice(), &[b'x'; 200_000], b"\n"].concat(),
                Some(vec![b'x'; 200_000]),
            ),
            (
                [&[b'y'; 150_000][..], b"\n"].concat(),
                Some(vec![b'y'; 150_000]),
            ),
        ] {
            std::fs::write(&path, &text)?;
            assert_eq!(last_line(&path)?, want, "{} bytes", text.len());
        }
        Ok(())
    }
}

//! Unit tests for the audit log: format, chaining, group commit, tamper
//! detection, checkpoints, recovery on open, and failing closed.
//!
//! Tamper tests edit real files written by the real writer and then check
//! that [`verify`] (and [`AuditLog::open`]) point at the edited record, since
//! "it failed somewhere" is not good enough for an auditor.

use std::collections::BTreeMap;
use std::error::Error;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use sha2::{Digest, Sha256};
use tempfile::TempDir;
use zeroize::Zeroizing;

use super::record::StoredRecord;
use super::*;

type TestResult = Result<(), Box<dyn Error>>;

const KEY: [u8; 32] = [7; 32];
const OTHER_KEY: [u8; 32] = [8; 32];

/// The keys of a stored record, in the documented order.
const RECORD_KEYS: [&str; 21] = [
    "sequence",
    "event_id",
    "event_time",
    "request_id",
    "event_name",
    "principal",
    "via_service",
    "source_address",
    "key_id",
    "key_version",
    "encryption_context",
    "grant_id",
    "decision",
    "matched_statements",
    "error_code",
    "error_message",
    "resources",
    "conditions",
    "source",
    "previous_hash",
    "hash",
];

fn event(i: usize) -> AuditEvent {
    AuditEvent {
        request_id: format!("req-{i}"),
        event_name: "Decrypt".into(),
        principal: Some("user/bob".into()),
        via_service: Some("service/table-service".into()),
        source_address: Some("127.0.0.1".into()),
        key_id: Some("key-1".into()),
        key_version: Some(3),
        encryption_context: Some(BTreeMap::from([
            ("table".to_string(), "orders".to_string()),
            ("column".to_string(), format!("c{i}")),
        ])),
        grant_id: None,
        decision: "Allow".into(),
        matched_statements: vec!["allow-table-service".into()],
        error_code: None,
        error_message: None,
        resources: vec!["key/key-1".into()],
        // Both shapes: with conditions, and without (the field left out).
        conditions: match i % 2 {
            0 => vec![crate::audit::AuditCondition {
                action: "table:GetItem".into(),
                resource: "table/orders".into(),
                decision: "Allow".into(),
                matched_statements: vec!["TableReadOnlyAccess#0".into()],
            }],
            _ => vec![],
        },
        // Both shapes: with a source side (a ReEncrypt's), and without.
        source: i.is_multiple_of(2).then(|| crate::audit::AuditSource {
            key_id: Some("key-0".into()),
            key_version: Some(1),
            encryption_context: BTreeMap::from([("table".to_string(), "old".to_string())]),
        }),
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A temporary directory holding one log and its checkpoint file.
struct Fixture {
    _dir: TempDir,
    log: PathBuf,
    checkpoints: PathBuf,
}

impl Fixture {
    fn new() -> io::Result<Fixture> {
        let dir = tempfile::tempdir()?;
        Ok(Fixture {
            log: dir.path().join("audit.log"),
            checkpoints: dir.path().join("audit.checkpoints"),
            _dir: dir,
        })
    }

    fn config(&self, every: u64, key: [u8; 32]) -> AuditConfig {
        let mut config = AuditConfig::new(&self.log, &self.checkpoints, Zeroizing::new(key));
        config.checkpoint_every = every;
        // By count only, so tests see checkpoints exactly where they expect
        // them however slow the machine (see
        // `records_are_checkpointed_within_checkpoint_after`).
        config.checkpoint_after = Duration::ZERO;
        config
    }

    fn open(&self, every: u64) -> Result<AuditLog, AuditError> {
        AuditLog::open(self.config(every, KEY))
    }

    /// Writes `n` records one at a time (so every batch is one record and
    /// checkpoints land exactly on multiples of `every`), then closes.
    async fn write(&self, n: usize, every: u64) -> TestResult {
        let log = self.open(every)?;
        for i in 0..n {
            log.append(event(i)).await?;
        }
        log.close().await?;
        Ok(())
    }

    fn verify(&self) -> Result<VerifyReport, VerifyFailure> {
        verify(&self.log, Some(&self.checkpoints), Some(&KEY))
    }

    fn lines(&self) -> io::Result<Vec<String>> {
        read_lines(&self.log)
    }

    fn rewrite(&self, lines: &[String]) -> io::Result<()> {
        write_lines(&self.log, lines)
    }
}

fn read_lines(path: &Path) -> io::Result<Vec<String>> {
    Ok(std::fs::read_to_string(path)?
        .lines()
        .map(str::to_owned)
        .collect())
}

fn write_lines(path: &Path, lines: &[String]) -> io::Result<()> {
    let mut text = lines.join("\n");
    if !lines.is_empty() {
        text.push('\n');
    }
    std::fs::write(path, text)
}

fn checkpoint_lines(fx: &Fixture) -> Result<Vec<checkpoint::CheckpointLine>, Box<dyn Error>> {
    read_lines(&fx.checkpoints)?
        .iter()
        .map(|line| serde_json::from_str(line).map_err(Into::into))
        .collect()
}

/// What a test sink has seen; shared with the test after the sink moves into
/// the writer thread.
#[derive(Debug, Default)]
struct Counters {
    appends: AtomicUsize,
    syncs: AtomicUsize,
    max_lines_per_append: AtomicUsize,
    /// Bytes appended so far.
    appended: AtomicUsize,
    /// For each sync through a syncer, in the order they began: the bytes
    /// appended by then.
    sync_starts: std::sync::Mutex<Vec<usize>>,
    /// When each sync through a syncer began, in that order.
    sync_times: std::sync::Mutex<Vec<std::time::Instant>>,
    /// When each successful append began, in that order.
    append_times: std::sync::Mutex<Vec<std::time::Instant>>,
}

/// Holds syncs until the test lets them go: the n-th sync (1-based, counted
/// over all syncers) waits until `release(n)` or `release_all()`.
#[derive(Debug, Default)]
struct Gate {
    /// (released sync numbers, all released)
    released: std::sync::Mutex<(std::collections::BTreeSet<usize>, bool)>,
    moved: std::sync::Condvar,
}

impl Gate {
    fn release(&self, n: usize) {
        let mut released = self.released.lock().unwrap_or_else(|e| e.into_inner());
        released.0.insert(n);
        self.moved.notify_all();
    }

    fn release_all(&self) {
        let mut released = self.released.lock().unwrap_or_else(|e| e.into_inner());
        released.1 = true;
        self.moved.notify_all();
    }

    fn wait_for_turn(&self, n: usize) {
        let mut released = self.released.lock().unwrap_or_else(|e| e.into_inner());
        while !released.1 && !released.0.contains(&n) {
            released = self.moved.wait(released).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// Polls `done` every millisecond for up to 10 s.
async fn eventually(what: &str, done: impl Fn() -> bool) -> TestResult {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !done() {
        if std::time::Instant::now() > deadline {
            return Err(format!("timed out waiting until {what}").into());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(())
}

/// A file sink that counts calls, can be slowed down (to let a queue build
/// up), can hold its syncers' syncs at a gate, and can fail its n-th append
/// or sync (1-based) once.
struct TestSink {
    inner: FileSink,
    counters: Arc<Counters>,
    sync_delay: Duration,
    fail_append_on: Option<usize>,
    fail_sync_on: Option<usize>,
    gate: Option<Arc<Gate>>,
}

impl TestSink {
    fn new(path: &Path) -> Result<(TestSink, Arc<Counters>), AuditError> {
        let counters = Arc::new(Counters::default());
        let sink = TestSink {
            inner: FileSink::open(path)?,
            counters: Arc::clone(&counters),
            sync_delay: Duration::ZERO,
            fail_append_on: None,
            fail_sync_on: None,
            gate: None,
        };
        Ok((sink, counters))
    }
}

/// A new log over `sink` whose syncs wait at the returned gate until the
/// test lets them go.
fn gated(sink: TestSink) -> Result<(AuditLog, Arc<Gate>), AuditError> {
    gated_with(sink, Batching::max_batch(1024))
}

/// [`gated`] with other batching.
fn gated_with(mut sink: TestSink, batching: Batching) -> Result<(AuditLog, Arc<Gate>), AuditError> {
    let gate = Arc::new(Gate::default());
    sink.gate = Some(Arc::clone(&gate));
    let log = AuditLog::with_sink(Box::new(sink), None, ChainHead::GENESIS, batching)?;
    Ok((log, gate))
}

/// Appends `event(i)` from a task of its own, so the test can hold its sync.
fn spawn_append(log: &AuditLog, i: usize) -> tokio::task::JoinHandle<Result<u64, AuditError>> {
    let log = log.clone();
    tokio::spawn(async move { log.append(event(i)).await })
}

impl AuditSink for TestSink {
    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        let call = self.counters.appends.fetch_add(1, Ordering::SeqCst) + 1;
        if self.fail_append_on == Some(call) {
            return Err(io::Error::other("injected append failure"));
        }
        self.counters
            .append_times
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(std::time::Instant::now());
        let lines = bytes.iter().filter(|b| **b == b'\n').count();
        self.counters
            .max_lines_per_append
            .fetch_max(lines, Ordering::SeqCst);
        self.inner.append(bytes)?;
        self.counters
            .appended
            .fetch_add(bytes.len(), Ordering::SeqCst);
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        let call = self.counters.syncs.fetch_add(1, Ordering::SeqCst) + 1;
        std::thread::sleep(self.sync_delay);
        if self.fail_sync_on == Some(call) {
            return Err(io::Error::other("injected sync failure"));
        }
        self.inner.sync()
    }

    /// Syncs through the returned handles count, wait at the gate, sleep
    /// and fail like the sink's own (the n-th sync counted over all of
    /// them).
    fn syncer(&self) -> io::Result<Box<dyn AuditSyncer>> {
        Ok(Box::new(TestSyncer {
            inner: self.inner.syncer()?,
            counters: Arc::clone(&self.counters),
            sync_delay: self.sync_delay,
            fail_sync_on: self.fail_sync_on,
            gate: self.gate.clone(),
        }))
    }
}

struct TestSyncer {
    inner: Box<dyn AuditSyncer>,
    counters: Arc<Counters>,
    sync_delay: Duration,
    fail_sync_on: Option<usize>,
    gate: Option<Arc<Gate>>,
}

impl AuditSyncer for TestSyncer {
    fn sync(&mut self) -> io::Result<()> {
        let call = {
            let mut starts = self
                .counters
                .sync_starts
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            starts.push(self.counters.appended.load(Ordering::SeqCst));
            self.counters
                .sync_times
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(std::time::Instant::now());
            self.counters.syncs.fetch_add(1, Ordering::SeqCst) + 1
        };
        if let Some(gate) = &self.gate {
            gate.wait_for_turn(call);
        }
        std::thread::sleep(self.sync_delay);
        if self.fail_sync_on == Some(call) {
            return Err(io::Error::other("injected sync failure"));
        }
        self.inner.sync()
    }
}

/// Collects a JSON object's keys in the order they appear in the text.
struct KeysInOrder(Vec<String>);

impl<'de> serde::Deserialize<'de> for KeysInOrder {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = KeysInOrder;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<KeysInOrder, A::Error> {
                let mut keys = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    map.next_value::<IgnoredAny>()?;
                    keys.push(key);
                }
                Ok(KeysInOrder(keys))
            }
        }
        deserializer.deserialize_map(KeyVisitor)
    }
}

fn expect_failure<T: fmt::Debug>(
    result: Result<T, VerifyFailure>,
) -> Result<VerifyFailure, Box<dyn Error>> {
    match result {
        Ok(ok) => Err(format!("expected verification to fail, got {ok:?}").into()),
        Err(failure) => Ok(failure),
    }
}

fn expect_corrupt(
    result: Result<AuditLog, AuditError>,
) -> Result<(PathBuf, VerifyFailure), Box<dyn Error>> {
    match result {
        Err(AuditError::Corrupt { path, failure }) => Ok((path, failure)),
        Err(other) => Err(format!("expected Corrupt, got {other}").into()),
        Ok(_) => Err("expected open to refuse the log".into()),
    }
}

// ---------------------------------------------------------------- format --

#[tokio::test]
async fn appended_records_verify() -> TestResult {
    // (records, checkpoint_every)
    for (n, every) in [
        (0u64, 10u64),
        (1, 1000),
        (25, 10),
        (30, 10),
        (7, 1),
        (12, 0),
    ] {
        let fx = Fixture::new()?;
        fx.write(usize::try_from(n)?, every).await?;
        let report = fx.verify()?;
        let periodic = n.checked_div(every).unwrap_or(0);
        let on_close = u64::from(n > 0 && (every == 0 || n % every != 0));
        assert_eq!(
            report,
            VerifyReport {
                records: n,
                first_sequence: u64::from(n > 0),
                segments: 0,
                checkpoints: periodic + on_close,
                last_sequence: n,
                last_checkpointed: n,
            },
            "n={n} every={every}"
        );
        // The auditor's view without checkpoints agrees on the records.
        assert_eq!(verify(&fx.log, None, None)?.records, n);
    }
    Ok(())
}

#[tokio::test]
async fn stats_count_from_the_reopening() -> TestResult {
    let fx = Fixture::new()?;
    fx.write(5, 0).await?;
    let log = fx.open(0)?;
    assert_eq!(log.stats(), AuditStats::default());
    for i in 0..3 {
        log.append(event(i)).await?;
    }
    // One at a time: one sync each.
    assert_eq!(
        log.stats(),
        AuditStats {
            records_durable: 3,
            syncs: 3,
            delayed: 0,
        }
    );
    log.close().await?;
    Ok(())
}

#[tokio::test]
async fn records_have_exactly_the_documented_keys_in_order() -> TestResult {
    let fx = Fixture::new()?;
    let log = fx.open(1000)?;
    // A fully populated event and an empty one: `None` must not drop keys and
    // nothing else may appear; `conditions` appears only when there are any.
    log.append(event(0)).await?;
    log.append(AuditEvent::default()).await?;
    log.close().await?;
    let lines = fx.lines()?;
    assert_eq!(lines.len(), 2);
    let KeysInOrder(full) = serde_json::from_str(&lines[0])?;
    assert_eq!(full, RECORD_KEYS, "{}", lines[0]);
    let KeysInOrder(empty) = serde_json::from_str(&lines[1])?;
    let without: Vec<&str> = RECORD_KEYS
        .into_iter()
        .filter(|k| *k != "conditions" && *k != "source")
        .collect();
    assert_eq!(empty, without, "{}", lines[1]);
    #[derive(serde::Deserialize)]
    struct Conditions {
        conditions: Vec<KeysInOrder>,
    }
    let Conditions { conditions } = serde_json::from_str(&lines[0])?;
    assert_eq!(conditions.len(), 1);
    assert_eq!(
        conditions[0].0,
        ["action", "resource", "decision", "matched_statements"]
    );
    Ok(())
}

#[tokio::test]
async fn hashes_follow_the_documented_construction() -> TestResult {
    let fx = Fixture::new()?;
    fx.write(5, 1000).await?;
    let mut previous = "0".repeat(64);
    for line in fx.lines()? {
        let record: StoredRecord = serde_json::from_str(&line)?;
        // `hash` covers the text before `,"hash":"…"` plus `}`.
        let cut = line.rfind(",\"hash\":\"").ok_or("no hash field")?;
        let body = format!("{}}}", &line[..cut]);
        assert_eq!(record.hash, sha256_hex(body.as_bytes()));
        assert_eq!(
            line,
            format!("{},\"hash\":\"{}\"}}", &line[..cut], record.hash)
        );
        // `previous_hash` is the SHA-256 of the previous whole line.
        assert_eq!(record.previous_hash, previous);
        previous = sha256_hex(line.as_bytes());
    }
    Ok(())
}

#[tokio::test]
async fn event_time_and_event_id_have_the_documented_shapes() -> TestResult {
    let fx = Fixture::new()?;
    fx.write(3, 1000).await?;
    let mut ids = Vec::new();
    for line in fx.lines()? {
        let record: StoredRecord = serde_json::from_str(&line)?;
        // 2024-05-01T12:00:00.123Z
        let shape: String = record
            .event_time
            .chars()
            .map(|c| if c.is_ascii_digit() { 'd' } else { c })
            .collect();
        assert_eq!(shape, "dddd-dd-ddTdd:dd:dd.dddZ", "{}", record.event_time);
        let id = uuid::Uuid::parse_str(&record.event_id)?;
        assert_eq!(id.get_version_num(), 4);
        ids.push(id);
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3, "event ids must be unique");
    Ok(())
}

#[tokio::test]
async fn awkward_strings_round_trip_and_stay_on_one_line() -> TestResult {
    let awkward = [
        "line one\nline two",
        "carriage\rreturn",
        "quote \" and backslash \\",
        "unicode line separator \u{2028} and paragraph \u{2029}",
        "nul \u{0} bell \u{7}",
        ",\"hash\":\"0000000000000000000000000000000000000000000000000000000000000000\"}",
        "ünïcødé 🔑",
    ];
    let fx = Fixture::new()?;
    let log = fx.open(1000)?;
    let mut sent = Vec::new();
    for (i, text) in awkward.iter().enumerate() {
        let mut e = event(i);
        e.error_message = Some((*text).to_string());
        e.encryption_context = Some(BTreeMap::from([((*text).to_string(), (*text).to_string())]));
        e.decision = "Error".into();
        log.append(e.clone()).await?;
        sent.push(e);
    }
    log.close().await?;
    let lines = fx.lines()?;
    assert_eq!(lines.len(), awkward.len(), "every record must be one line");
    for (line, original) in lines.iter().zip(&sent) {
        let record: StoredRecord = serde_json::from_str(line)?;
        assert_eq!(&record.event(), original);
    }
    assert_eq!(fx.verify()?.records, 7);
    Ok(())
}

// --------------------------------------------------------- group commit --

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_share_syncs_and_stay_consecutive() -> TestResult {
    const N: usize = 200;
    let fx = Fixture::new()?;
    let (mut sink, counters) = TestSink::new(&fx.log)?;
    // A slow disk, so callers pile up behind the first sync.
    sink.sync_delay = Duration::from_millis(2);
    let checkpoints = CheckpointSink {
        sink: Box::new(FileSink::open(&fx.checkpoints)?),
        key: Zeroizing::new(KEY),
        every: 50,
        after: Duration::ZERO,
    };
    let log = AuditLog::with_sink(
        Box::new(sink),
        Some(checkpoints),
        ChainHead::GENESIS,
        Batching::max_batch(1024),
    )?;
    let tasks: Vec<_> = (0..N)
        .map(|i| {
            let log = log.clone();
            tokio::spawn(async move { log.append(event(i)).await })
        })
        .collect();
    let mut sequences = Vec::with_capacity(N);
    for task in tasks {
        sequences.push(task.await??);
    }
    // Every acknowledged record is counted, and the batch syncs with it.
    let stats = log.stats();
    assert_eq!(stats.records_durable, N as u64);
    assert!(
        (1..N as u64).contains(&stats.syncs),
        "{stats:?}: batch syncs out of range"
    );
    assert!(stats.syncs <= counters.syncs.load(Ordering::SeqCst) as u64);
    log.close().await?;
    sequences.sort_unstable();
    let expected: Vec<u64> = (1..=200).collect();
    assert_eq!(sequences, expected);
    let syncs = counters.syncs.load(Ordering::SeqCst);
    assert!(syncs < N, "{syncs} syncs for {N} records: no group commit");
    assert!(counters.max_lines_per_append.load(Ordering::SeqCst) > 1);
    let report = fx.verify()?;
    assert_eq!((report.records, report.last_sequence), (200, 200));
    assert!(report.checkpoints >= 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_never_exceed_max_batch() -> TestResult {
    const N: usize = 40;
    let fx = Fixture::new()?;
    let (mut sink, counters) = TestSink::new(&fx.log)?;
    sink.sync_delay = Duration::from_millis(2);
    let log = AuditLog::with_sink(
        Box::new(sink),
        None,
        ChainHead::GENESIS,
        Batching::max_batch(4),
    )?;
    let tasks: Vec<_> = (0..N)
        .map(|i| {
            let log = log.clone();
            tokio::spawn(async move { log.append(event(i)).await })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    log.close().await?;
    assert!(counters.max_lines_per_append.load(Ordering::SeqCst) <= 4);
    // One sync per batch of at most 4, plus the one on close.
    assert!(counters.syncs.load(Ordering::SeqCst) > N / 4);
    assert_eq!(verify(&fx.log, None, None)?.records, 40);
    Ok(())
}

// ------------------------------------------------------------ tampering --

/// Where in a line (without its `\n`) to flip a byte.
type Locate = fn(&str) -> Option<usize>;

fn after(line: &str, key: &str) -> Option<usize> {
    line.find(key).map(|at| at + key.len())
}

#[tokio::test]
async fn a_flipped_byte_is_detected_at_its_record() -> TestResult {
    let cases: [(usize, &str, Locate, u8); 11] = [
        (1, "first byte", |_| Some(0), 0x01),
        (
            4,
            "event_name value",
            |l| after(l, "\"event_name\":\""),
            0x01,
        ),
        (5, "sequence digit", |l| after(l, "\"sequence\":"), 0x01),
        (
            6,
            "previous_hash",
            |l| after(l, "\"previous_hash\":\"").map(|a| a + 10),
            0x01,
        ),
        (7, "hash value", |l| Some(l.len() - 5), 0x01),
        (
            8,
            "hash letter case",
            |l| {
                let start = l.rfind(",\"hash\":\"")? + 9;
                l[start..]
                    .find(|c: char| c.is_ascii_lowercase())
                    .map(|i| start + i)
            },
            0x20,
        ),
        (
            3,
            "key name",
            |l| after(l, "\"decision").map(|a| a - 2),
            0x01,
        ),
        (9, "invalid UTF-8", |l| after(l, "\"request_id\":\""), 0x80),
        (2, "closing brace", |l| Some(l.len() - 1), 0x01),
        (10, "last record", |l| after(l, "\"principal\":\""), 0x01),
        (5, "newline (joins two records)", |l| Some(l.len()), 0x01),
    ];
    for (k, what, locate, mask) in cases {
        let fx = Fixture::new()?;
        fx.write(10, 1000).await?;
        let mut bytes = std::fs::read(&fx.log)?;
        let lines = fx.lines()?;
        let line_start: usize = lines[..k - 1].iter().map(|l| l.len() + 1).sum();
        let offset = locate(&lines[k - 1]).ok_or(what)?;
        bytes[line_start + offset] ^= mask;
        std::fs::write(&fx.log, &bytes)?;

        let failure = expect_failure(fx.verify())?;
        assert_eq!(failure.file, AuditFile::Log, "{what}: {failure}");
        assert_eq!(failure.sequence, Some(k as u64), "{what}: {failure}");
        assert_eq!(failure.line, k, "{what}: {failure}");
        assert!(
            failure
                .to_string()
                .starts_with(&format!("record {k} (line {k}): ")),
            "{what}: {failure}"
        );
        // Same verdict without checkpoints: the chain alone catches edits.
        assert_eq!(
            expect_failure(verify(&fx.log, None, None))?.line,
            k,
            "{what}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_deleted_record_is_detected_where_it_was() -> TestResult {
    for deleted in [1usize, 5, 9] {
        let fx = Fixture::new()?;
        fx.write(10, 1000).await?;
        let mut lines = fx.lines()?;
        lines.remove(deleted - 1);
        fx.rewrite(&lines)?;
        let failure = expect_failure(fx.verify())?;
        assert_eq!(failure.line, deleted, "{failure}");
        assert_eq!(failure.sequence, Some(deleted as u64 + 1), "{failure}");
        let reason = if deleted == 1 {
            "the first record present is 2, and it neither is record 1 nor follows the end of a rotated segment".to_string()
        } else {
            format!("expected record {deleted} here")
        };
        assert!(failure.reason.contains(&reason), "{failure}");
    }
    Ok(())
}

#[tokio::test]
async fn reordered_duplicated_or_foreign_records_are_detected() -> TestResult {
    // Each case edits the 10 lines and names the first line that must fail.
    type Edit = fn(&mut Vec<String>, &[String]);
    let cases: [(&str, Edit, usize, &str); 4] = [
        ("swap 3 and 4", |l, _| l.swap(2, 3), 3, "expected record 3"),
        (
            "duplicate 6",
            |l, _| l.insert(6, l[5].clone()),
            7,
            "expected record 7",
        ),
        (
            "record from another log",
            |l, other| l[3] = other[3].clone(),
            4,
            "previous_hash does not match the hash of record 3",
        ),
        (
            "first record from another log",
            |l, other| l[0] = other[0].clone(),
            2,
            "previous_hash does not match the hash of record 1",
        ),
    ];
    let other = Fixture::new()?;
    other.write(10, 1000).await?;
    let other_lines = other.lines()?;
    for (what, edit, line, reason) in cases {
        let fx = Fixture::new()?;
        fx.write(10, 1000).await?;
        let mut lines = fx.lines()?;
        edit(&mut lines, &other_lines);
        fx.rewrite(&lines)?;
        let failure = expect_failure(verify(&fx.log, None, None))?;
        assert_eq!(failure.line, line, "{what}: {failure}");
        assert!(failure.reason.contains(reason), "{what}: {failure}");
    }
    Ok(())
}

#[tokio::test]
async fn an_injected_field_is_rejected_even_with_a_valid_hash() -> TestResult {
    let fx = Fixture::new()?;
    fx.write(3, 1000).await?;
    let mut lines = fx.lines()?;
    // Rebuild record 3 the way a forger who knows the format would: extra
    // field, own hash recomputed, link to record 2 kept.
    let cut = lines[2].rfind(",\"hash\":\"").ok_or("no hash field")?;
    let body = format!("{},\"approved_by\":\"mallory\"}}", &lines[2][..cut]);
    let hash = sha256_hex(body.as_bytes());
    lines[2] = format!("{},\"hash\":\"{hash}\"}}", &body[..body.len() - 1]);
    fx.rewrite(&lines)?;
    let failure = expect_failure(verify(&fx.log, None, None))?;
    assert_eq!((failure.sequence, failure.line), (Some(3), 3), "{failure}");
    assert!(failure.reason.contains("unknown field"), "{failure}");
    Ok(())
}

// ---------------------------------------------------------- checkpoints --

#[tokio::test]
async fn checkpoints_are_written_every_n_records_and_on_close() -> TestResult {
    let fx = Fixture::new()?;
    fx.write(25, 10).await?;
    let lines = fx.lines()?;
    let checkpoints = checkpoint_lines(&fx)?;
    let sequences: Vec<u64> = checkpoints.iter().map(|c| c.sequence).collect();
    assert_eq!(sequences, [10, 20, 25]);
    for cp in &checkpoints {
        let index = usize::try_from(cp.sequence)? - 1;
        assert_eq!(cp.record_hash, sha256_hex(lines[index].as_bytes()));
        // MAC over the 8-byte big-endian sequence then the raw record hash.
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&KEY)?;
        mac.update(&cp.sequence.to_be_bytes());
        mac.update(&hex::decode(&cp.record_hash)?);
        assert_eq!(cp.mac, hex::encode(mac.finalize().into_bytes()));
    }
    Ok(())
}

/// With `checkpoint_after`, durable records do not wait for the count:
/// an idle log checkpoints its newest record once that long has passed,
/// and a log written steadily gets checkpoints as it goes; close adds none
/// for what is already checkpointed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_are_checkpointed_within_checkpoint_after() -> TestResult {
    let fx = Fixture::new()?;
    let mut config = fx.config(1000, KEY);
    config.checkpoint_after = Duration::from_millis(50);
    let log = AuditLog::open(config)?;
    for i in 0..3 {
        log.append(event(i)).await?;
    }
    eventually("record 3 is checkpointed", || log.last_checkpoint() == 3).await?;
    let sequences = |fx: &Fixture| -> Result<Vec<u64>, Box<dyn Error>> {
        Ok(checkpoint_lines(fx)?.iter().map(|c| c.sequence).collect())
    };
    // (A slow sync of record 2 may have checkpointed it on the way.)
    assert_eq!(sequences(&fx)?.last(), Some(&3));
    // Written steadily for several intervals: checkpoints keep up.
    let started = std::time::Instant::now();
    let mut appended = 3;
    while started.elapsed() < Duration::from_millis(400) {
        log.append(event(appended)).await?;
        appended += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let appended = u64::try_from(appended)?;
    eventually("the last record is checkpointed", || {
        log.last_checkpoint() == appended
    })
    .await?;
    let during = sequences(&fx)?;
    assert!(during.len() >= 3, "checkpoints while written: {during:?}");
    assert!(during.windows(2).all(|w| w[0] < w[1]), "{during:?}");
    log.close().await?;
    assert_eq!(sequences(&fx)?, during, "close adds nothing");
    assert_eq!(fx.verify()?.last_sequence, appended);
    Ok(())
}

/// A reopened log that ends in records no checkpoint covers (its last
/// checkpoint lost in a crash, say) gets one as it opens, before anything
/// is appended: a restart never lets the uncheckpointed tail grow past
/// what `audit verify` accepts, however long `checkpoint_after` is.
#[tokio::test]
async fn a_reopened_log_checkpoints_its_uncovered_tail() -> TestResult {
    let fx = Fixture::new()?;
    fx.write(5, 1000).await?;
    std::fs::write(&fx.checkpoints, b"")?;
    let mut config = fx.config(1000, KEY);
    config.checkpoint_after = Duration::from_secs(3600);
    let log = AuditLog::open(config)?;
    assert_eq!(log.last_checkpoint(), 5, "checkpointed as it opened");
    log.close().await?;
    let sequences: Vec<u64> = checkpoint_lines(&fx)?.iter().map(|c| c.sequence).collect();
    assert_eq!(sequences, [5]);
    Ok(())
}

/// While a sync is always in flight (so no syncer is ever idle), the sync
/// that finds the durable records overdue checkpoints them: record 1 is
/// made durable, `checkpoint_after` passes while record 2's sync is held
/// and record 3's begins, and record 2's sync, once let go, writes the
/// checkpoint of record 2 while record 3's is still held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_log_checkpoints_at_the_sync_after_checkpoint_after() -> TestResult {
    const AFTER: Duration = Duration::from_millis(50);
    let fx = Fixture::new()?;
    let (mut sink, counters) = TestSink::new(&fx.log)?;
    let gate = Arc::new(Gate::default());
    sink.gate = Some(Arc::clone(&gate));
    let checkpoints = CheckpointSink {
        sink: Box::new(FileSink::open(&fx.checkpoints)?),
        key: Zeroizing::new(KEY),
        every: 1_000_000,
        after: AFTER,
    };
    let log = AuditLog::with_sink(
        Box::new(sink),
        Some(checkpoints),
        ChainHead::GENESIS,
        Batching::max_batch(1024),
    )?;
    let syncs = || counters.syncs.load(Ordering::SeqCst);
    let first = spawn_append(&log, 0);
    eventually("sync 1 began", || syncs() == 1).await?;
    let second = spawn_append(&log, 1);
    eventually("sync 2 began beside sync 1", || syncs() == 2).await?;
    gate.release(1);
    assert_eq!(first.await??, 1);
    tokio::time::sleep(AFTER + AFTER / 2).await;
    let third = spawn_append(&log, 2);
    eventually("sync 3 began", || syncs() == 3).await?;
    assert_eq!(log.last_checkpoint(), 0, "nothing checkpointed while busy");
    gate.release(2);
    assert_eq!(second.await??, 2);
    eventually("record 2 is checkpointed", || log.last_checkpoint() == 2).await?;
    assert!(!third.is_finished(), "sync 3 is still held");
    gate.release_all();
    assert_eq!(third.await??, 3);
    log.close().await?;
    let sequences: Vec<u64> = checkpoint_lines(&fx)?.iter().map(|c| c.sequence).collect();
    assert_eq!(sequences, [2, 3]);
    Ok(())
}

#[tokio::test]
async fn a_truncated_tail_is_caught_by_the_checkpoint() -> TestResult {
    let fx = Fixture::new()?;
    fx.write(50, 10).await?;
    let lines = fx.lines()?;
    fx.rewrite(&lines[..40])?;
    // The chain alone cannot tell: what is left is a valid prefix.
    assert_eq!(verify(&fx.log, None, None)?.records, 40);
    let failure = expect_failure(fx.verify())?;
    assert_eq!(failure.file, AuditFile::Checkpoints);
    assert_eq!(failure.sequence, Some(50));
    assert!(
        failure
            .reason
            .contains("log ends at record 40 but checkpoint says record 50 existed"),
        "{failure}"
    );
    // Without the key the checkpoint's claim is still checked.
    let keyless = expect_failure(verify(&fx.log, Some(&fx.checkpoints), None))?;
    assert_eq!(keyless, failure);
    Ok(())
}

#[tokio::test]
async fn the_wrong_checkpoint_key_fails() -> TestResult {
    let fx = Fixture::new()?;
    fx.write(20, 10).await?;
    let failure = expect_failure(verify(&fx.log, Some(&fx.checkpoints), Some(&OTHER_KEY)))?;
    assert_eq!((failure.file, failure.line), (AuditFile::Checkpoints, 1));
    assert!(failure.reason.contains("MAC does not verify"), "{failure}");
    Ok(())
}

#[tokio::test]
async fn forged_checkpoints_fail() -> TestResult {
    // Each case rewrites the checkpoint lines (seq 10, 20, 30) and names the
    // line that must fail.
    type Forge = fn(&mut Vec<String>) -> Result<(), Box<dyn Error>>;
    let cases: [(&str, Forge, usize); 4] = [
        (
            "flipped mac digit",
            |cps| {
                let at = cps[1].find("\"mac\":\"").ok_or("no mac")? + 7;
                let mut bytes = std::mem::take(&mut cps[1]).into_bytes();
                bytes[at] = if bytes[at] == b'0' { b'1' } else { b'0' };
                cps[1] = String::from_utf8(bytes)?;
                Ok(())
            },
            2,
        ),
        (
            "mac copied from another checkpoint",
            |cps| {
                let mut forged: checkpoint::CheckpointLine = serde_json::from_str(&cps[0])?;
                let donor: checkpoint::CheckpointLine = serde_json::from_str(&cps[2])?;
                forged.mac = donor.mac;
                cps[0] = serde_json::to_string(&forged)?;
                Ok(())
            },
            1,
        ),
        (
            "made-up later checkpoint",
            |cps| {
                let mut forged: checkpoint::CheckpointLine = serde_json::from_str(&cps[2])?;
                forged.sequence = 40;
                cps.push(serde_json::to_string(&forged)?);
                Ok(())
            },
            4,
        ),
        (
            "mac signed with another key",
            |cps| {
                let mut forged: checkpoint::CheckpointLine = serde_json::from_str(&cps[0])?;
                let hash = record::parse_hash_hex(&forged.record_hash).ok_or("bad hash")?;
                forged.mac = checkpoint::sign(&OTHER_KEY, forged.sequence, &hash, false)?;
                cps[0] = serde_json::to_string(&forged)?;
                Ok(())
            },
            1,
        ),
    ];
    for (what, forge, line) in cases {
        let fx = Fixture::new()?;
        fx.write(30, 10).await?;
        let mut cps = read_lines(&fx.checkpoints)?;
        forge(&mut cps)?;
        write_lines(&fx.checkpoints, &cps)?;
        let failure = expect_failure(fx.verify())?;
        assert_eq!(
            (failure.file, failure.line),
            (AuditFile::Checkpoints, line),
            "{what}: {failure}"
        );
        assert!(
            failure.reason.contains("MAC does not verify"),
            "{what}: {failure}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn checkpoint_hashes_are_checked_even_without_the_key() -> TestResult {
    let fx = Fixture::new()?;
    fx.write(30, 10).await?;
    let lines = fx.lines()?;
    let mut cps = read_lines(&fx.checkpoints)?;
    // Checkpoint 2 (record 20) now claims record 19's hash.
    let mut forged: checkpoint::CheckpointLine = serde_json::from_str(&cps[1])?;
    forged.record_hash = sha256_hex(lines[18].as_bytes());
    cps[1] = serde_json::to_string(&forged)?;
    write_lines(&fx.checkpoints, &cps)?;
    let failure = expect_failure(verify(&fx.log, Some(&fx.checkpoints), None))?;
    assert_eq!(
        failure.to_string(),
        "record 20 (line 20): hash differs from the one signed in checkpoint line 2"
    );
    Ok(())
}

// ------------------------------------------------------------- recovery --

#[tokio::test]
async fn reopening_continues_the_chain() -> TestResult {
    let fx = Fixture::new()?;
    fx.write(5, 1000).await?;
    let log = fx.open(1000)?;
    assert_eq!(log.append(event(5)).await?, 6);
    assert_eq!(log.append(event(6)).await?, 7);
    log.close().await?;
    // Reopening with nothing new must not add a duplicate checkpoint.
    fx.open(1000)?.close().await?;

    let lines = fx.lines()?;
    let sixth: StoredRecord = serde_json::from_str(&lines[5])?;
    assert_eq!(sixth.sequence, 6);
    assert_eq!(sixth.previous_hash, sha256_hex(lines[4].as_bytes()));
    let sequences: Vec<u64> = checkpoint_lines(&fx)?.iter().map(|c| c.sequence).collect();
    assert_eq!(sequences, [5, 7]);
    assert_eq!(
        fx.verify()?,
        VerifyReport {
            records: 7,
            first_sequence: 1,
            segments: 0,
            checkpoints: 2,
            last_sequence: 7,
            last_checkpointed: 7,
        }
    );
    Ok(())
}

#[tokio::test]
async fn a_partial_last_line_is_cut_off_on_open_and_the_chain_continues() -> TestResult {
    // Partial tails a crash could leave: part of a real record, one byte,
    // anything without a newline.
    let tails: [fn(&str) -> String; 3] = [
        |next| next[..next.len() / 2].to_string(),
        |_| "{".to_string(),
        |_| "not json at all".to_string(),
    ];
    for tail in tails {
        let fx = Fixture::new()?;
        fx.write(6, 1000).await?;
        let mut lines = fx.lines()?;
        let sixth = lines.pop().ok_or("no records")?;
        // Record 6 never became durable: remove it (and its close checkpoint)
        // and leave a piece of it behind.
        fx.rewrite(&lines)?;
        std::fs::write(&fx.checkpoints, "")?;
        let mut bytes = std::fs::read(&fx.log)?;
        bytes.extend_from_slice(tail(&sixth).as_bytes());
        std::fs::write(&fx.log, &bytes)?;
        let failure = expect_failure(fx.verify())?;
        assert_eq!((failure.sequence, failure.line), (Some(6), 6), "{failure}");
        assert!(failure.reason.contains("incomplete"), "{failure}");

        let log = fx.open(1000)?;
        assert_eq!(log.append(event(6)).await?, 6);
        log.close().await?;
        assert_eq!(fx.verify()?.last_sequence, 6);
        assert!(std::fs::read(&fx.log)?.ends_with(b"\"}\n"));
    }
    Ok(())
}

#[tokio::test]
async fn a_partial_checkpoint_line_is_cut_off_on_open() -> TestResult {
    let fx = Fixture::new()?;
    fx.write(10, 5).await?;
    let mut cps = std::fs::read(&fx.checkpoints)?;
    cps.extend_from_slice(b"{\"sequence\":1");
    std::fs::write(&fx.checkpoints, &cps)?;
    assert_eq!(expect_failure(fx.verify())?.file, AuditFile::Checkpoints);
    let log = fx.open(5)?;
    log.append(event(10)).await?;
    log.close().await?;
    assert_eq!(
        fx.verify()?,
        VerifyReport {
            records: 11,
            first_sequence: 1,
            segments: 0,
            checkpoints: 3,
            last_sequence: 11,
            last_checkpointed: 11,
        }
    );
    Ok(())
}

#[tokio::test]
async fn open_refuses_a_log_that_does_not_verify() -> TestResult {
    // (what, damage, file that must be named, record that must be named)
    type Damage = fn(&Fixture) -> io::Result<()>;
    let cases: [(&str, Damage, AuditFile, u64); 4] = [
        (
            "edited record 3",
            |fx| {
                let mut lines = fx.lines()?;
                lines[2] = lines[2].replace("Decrypt", "Encrypt");
                fx.rewrite(&lines)
            },
            AuditFile::Log,
            3,
        ),
        (
            "deleted record 7",
            |fx| {
                let mut lines = fx.lines()?;
                lines.remove(6);
                fx.rewrite(&lines)
            },
            AuditFile::Log,
            8,
        ),
        (
            "truncated tail",
            |fx| {
                let lines = fx.lines()?;
                fx.rewrite(&lines[..15])
            },
            AuditFile::Checkpoints,
            20,
        ),
        (
            "forged checkpoint",
            |fx| {
                let mut cps = read_lines(&fx.checkpoints)?;
                cps[0] = cps[0].replace("\"sequence\":10", "\"sequence\":9");
                write_lines(&fx.checkpoints, &cps)
            },
            AuditFile::Checkpoints,
            0,
        ),
    ];
    for (what, damage, file, sequence) in cases {
        let fx = Fixture::new()?;
        fx.write(20, 10).await?;
        damage(&fx)?;
        let before = (std::fs::read(&fx.log)?, std::fs::read(&fx.checkpoints)?);
        let (path, failure) = expect_corrupt(fx.open(10))?;
        let expected_path = match file {
            AuditFile::Log => &fx.log,
            AuditFile::Checkpoints => &fx.checkpoints,
        };
        assert_eq!(&path, expected_path, "{what}: {failure}");
        assert_eq!(failure.file, file, "{what}: {failure}");
        if sequence != 0 {
            assert_eq!(failure.sequence, Some(sequence), "{what}: {failure}");
        }
        // Refusing means not touching: both files are exactly as found.
        let after = (std::fs::read(&fx.log)?, std::fs::read(&fx.checkpoints)?);
        assert!(before == after, "{what}: open modified the files");
    }
    Ok(())
}

#[tokio::test]
async fn open_refuses_the_wrong_checkpoint_key() -> TestResult {
    let fx = Fixture::new()?;
    fx.write(10, 5).await?;
    let (path, failure) = expect_corrupt(AuditLog::open(fx.config(5, OTHER_KEY)))?;
    assert_eq!(path, fx.checkpoints);
    assert!(failure.reason.contains("MAC does not verify"), "{failure}");
    Ok(())
}

/// A log with records whose checkpoint file is gone is not continued under
/// a fresh checkpoint file (which would let a cut-short log pass): opening
/// it fails, naming both files; with the file back it opens. A new, empty
/// log needs none.
#[tokio::test]
async fn open_refuses_a_log_whose_checkpoint_file_is_missing() -> TestResult {
    let fx = Fixture::new()?;
    fx.write(10, 5).await?;
    let kept = std::fs::read(&fx.checkpoints)?;
    std::fs::remove_file(&fx.checkpoints)?;
    match fx.open(5) {
        Err(AuditError::Config(message)) => {
            assert!(message.contains("checkpoint file"), "{message}");
            assert!(
                message.contains(&fx.checkpoints.display().to_string()),
                "{message}"
            );
        }
        other => return Err(format!("expected a refusal, got {:?}", other.map(|_| ())).into()),
    }
    assert!(!fx.checkpoints.exists(), "nothing created on refusal");
    std::fs::write(&fx.checkpoints, kept)?;
    fx.open(5)?.close().await?;
    let fresh = Fixture::new()?;
    fresh.open(5)?.close().await?;
    Ok(())
}

// --------------------------------------------------------- fail closed --

#[tokio::test]
async fn a_failing_sink_poisons_the_log() -> TestResult {
    // (fail the n-th append, fail the n-th sync, appends that succeed first)
    let cases = [
        (Some(1), None, 0u64),
        (None, Some(1), 0),
        (Some(4), None, 3),
        (None, Some(4), 3),
    ];
    for (fail_append_on, fail_sync_on, ok_first) in cases {
        let case = format!("append={fail_append_on:?} sync={fail_sync_on:?}");
        let fx = Fixture::new()?;
        let (mut sink, counters) = TestSink::new(&fx.log)?;
        sink.fail_append_on = fail_append_on;
        sink.fail_sync_on = fail_sync_on;
        let log = AuditLog::with_sink(
            Box::new(sink),
            None,
            ChainHead::GENESIS,
            Batching::max_batch(16),
        )?;
        for i in 0..ok_first {
            assert_eq!(log.append(event(0)).await?, i + 1, "{case}");
        }
        let failed = log.append(event(0)).await;
        assert!(
            matches!(failed, Err(AuditError::Unavailable { .. })),
            "{case}: {failed:?}"
        );
        // The sink would work again now; the log must still refuse, and
        // without even trying the sink.
        let calls = counters.appends.load(Ordering::SeqCst);
        for _ in 0..3 {
            let later = log.append(event(0)).await;
            assert!(
                matches!(&later, Err(AuditError::Unavailable { reason }) if reason.contains("injected")),
                "{case}: {later:?}"
            );
        }
        assert_eq!(counters.appends.load(Ordering::SeqCst), calls, "{case}");
        assert!(
            matches!(log.close().await, Err(AuditError::Unavailable { .. })),
            "{case}"
        );
        // Whatever did become durable is still a valid chain.
        assert!(verify(&fx.log, None, None)?.records >= ok_first, "{case}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_waiter_of_a_failed_batch_gets_an_error() -> TestResult {
    let fx = Fixture::new()?;
    let (mut sink, counters) = TestSink::new(&fx.log)?;
    sink.sync_delay = Duration::from_millis(5);
    sink.fail_sync_on = Some(1);
    let (log, gate) = gated(sink)?;
    let append = |i: usize| spawn_append(&log, i);
    // The first sync fails while the records written after it wait for a
    // second, overlapping sync; that one succeeds only after the failure,
    // and must not get any of them acknowledged.
    let mut tasks = vec![append(0)];
    eventually("the first sync began", || {
        counters.syncs.load(Ordering::SeqCst) == 1
    })
    .await?;
    tasks.extend((1..50).map(append));
    eventually("a second sync began beside it", || {
        counters.syncs.load(Ordering::SeqCst) == 2
    })
    .await?;
    gate.release(1);
    eventually("the log is poisoned", || {
        format!("{log:?}").contains("poisoned")
    })
    .await?;
    gate.release_all();
    for task in tasks {
        let result = task.await?;
        assert!(
            matches!(result, Err(AuditError::Unavailable { .. })),
            "{result:?}"
        );
    }
    // No sync starts after the failure: only the two already in flight.
    let syncs = counters.syncs.load(Ordering::SeqCst);
    assert_eq!(syncs, 2, "{syncs} syncs");
    Ok(())
}

/// While a sync of few records is held, the next records get a sync beside
/// it at once; while one of at least `OVERLAP_BELOW` records is held, the
/// records sealed meanwhile are written only once it has run for
/// `OVERLAP_AFTER`, and are then made durable without waiting for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_of_many_records_is_overlapped_only_once_it_is_slow() -> TestResult {
    let fx = Fixture::new()?;
    let (sink, counters) = TestSink::new(&fx.log)?;
    let (log, gate) = gated(sink)?;
    let append = |i: usize| spawn_append(&log, i);
    let syncs = || counters.syncs.load(Ordering::SeqCst);
    let appends = || counters.appends.load(Ordering::SeqCst);
    // Sync 1 (one record) held: record 2 gets sync 2 beside it at once.
    let first = append(0);
    eventually("sync 1 began", || syncs() == 1).await?;
    let second = append(1);
    eventually("sync 2 began beside sync 1", || syncs() == 2).await?;
    // Both syncers held: six more records wait, sealed but unwritten.
    let many: Vec<_> = (2..8).map(append).collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        appends(),
        2,
        "nothing is written while both syncers are busy"
    );
    // Sync 1 ends; its syncer writes the six (beside sync 2, of one record)
    // and holds them in sync 3.
    gate.release(1);
    eventually("sync 3 began", || syncs() == 3).await?;
    assert_eq!(
        counters.max_lines_per_append.load(Ordering::SeqCst),
        6,
        "sync 3 covers the six records"
    );
    const { assert!(6 >= writer::OVERLAP_BELOW) };
    // Sync 2 ends; a ninth record is written only once sync 3 has run for
    // OVERLAP_AFTER, then synced while sync 3 is still held.
    gate.release(2);
    let ninth = append(8);
    eventually("sync 4 began", || syncs() == 4).await?;
    let sync_3_began = counters
        .sync_times
        .lock()
        .unwrap_or_else(|e| e.into_inner())[2];
    let ninth_written = counters
        .append_times
        .lock()
        .unwrap_or_else(|e| e.into_inner())[3];
    // OVERLAP_AFTER counts from when sync 3's records were taken, a moment
    // before the sync began; without the rule the ninth record would be
    // written within milliseconds.
    assert!(
        ninth_written.duration_since(sync_3_began) >= writer::OVERLAP_AFTER / 2,
        "the ninth record was written {:?} after sync 3 began",
        ninth_written.duration_since(sync_3_began)
    );
    // Sync 4 began after the six were written, so it answers for them too.
    gate.release(4);
    assert_eq!(ninth.await??, 9);
    let mut sequences = Vec::new();
    for task in many {
        sequences.push(task.await??);
    }
    sequences.sort_unstable();
    assert_eq!(sequences, (3..=8).collect::<Vec<u64>>());
    assert_eq!(first.await??, 1);
    assert_eq!(second.await??, 2);
    gate.release_all();
    log.close().await?;
    assert_eq!(verify(&fx.log, None, None)?.records, 9);
    Ok(())
}

/// A gated log (see [`gated_with`]) that has just taken a batch of six
/// records, so it is under load: records 1 and 2 went alone (each its own
/// sync, held), records 3–8 waited for them and were then written together.
struct UnderLoad {
    log: AuditLog,
    counters: Arc<Counters>,
    _gate: Arc<Gate>,
    first_eight: Vec<tokio::task::JoinHandle<Result<u64, AuditError>>>,
}

impl UnderLoad {
    async fn new(fx: &Fixture, max_batch: usize, delay: Duration) -> Result<Self, Box<dyn Error>> {
        let (sink, counters) = TestSink::new(&fx.log)?;
        let (log, gate) = gated_with(
            sink,
            Batching {
                max_batch,
                commit_delay: delay,
            },
        )?;
        let syncs = || counters.syncs.load(Ordering::SeqCst);
        let mut first_eight = vec![spawn_append(&log, 0)];
        eventually("sync 1 began", || syncs() == 1).await?;
        first_eight.push(spawn_append(&log, 1));
        eventually("sync 2 began beside sync 1", || syncs() == 2).await?;
        first_eight.extend((2..8).map(|i| spawn_append(&log, i)));
        eventually("all eight sealed", || log.sealed() == 8).await?;
        gate.release_all();
        eventually("the six were written", || {
            counters.appends.load(Ordering::SeqCst) == 3
        })
        .await?;
        assert_eq!(
            counters.max_lines_per_append.load(Ordering::SeqCst),
            6,
            "the six went in one batch"
        );
        Ok(UnderLoad {
            log,
            counters,
            _gate: gate,
            first_eight,
        })
    }

    /// Waits for the first eight records' answers.
    async fn answered(&mut self) -> TestResult {
        for task in self.first_eight.drain(..) {
            task.await??;
        }
        Ok(())
    }
}

/// Under load (the previous batch had several records) a record sealed
/// right after a batch was taken is written only once the commit delay has
/// passed since then, and the batch it goes into is counted as delayed;
/// alone, a record is written at once (see `stats_count_from_the_reopening`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_load_the_next_batch_gathers_for_the_commit_delay() -> TestResult {
    const DELAY: Duration = MAX_COMMIT_DELAY;
    let fx = Fixture::new()?;
    let mut loaded = UnderLoad::new(&fx, 1024, DELAY).await?;
    // A ninth record sealed right after the six were taken waits for the
    // delay to pass.
    assert_eq!(spawn_append(&loaded.log, 8).await??, 9);
    let times = loaded
        .counters
        .append_times
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    assert_eq!(times.len(), 4, "one write for the ninth record");
    let gap = times[3].duration_since(times[2]);
    // Without the delay the ninth record would be written as soon as the
    // six were synced, well within a millisecond or two.
    assert!(
        gap >= DELAY / 2,
        "the ninth record was written {gap:?} after the six"
    );
    loaded.answered().await?;
    assert_eq!(loaded.log.stats().delayed, 1);
    loaded.log.close().await?;
    assert_eq!(verify(&fx.log, None, None)?.records, 9);
    Ok(())
}

/// A whole batch waiting ends the commit delay at once: the syncers
/// waiting it out are woken, not left to sleep until it is over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_batch_is_not_held_for_the_commit_delay() -> TestResult {
    const DELAY: Duration = MAX_COMMIT_DELAY;
    const MAX_BATCH: usize = 8;
    let fx = Fixture::new()?;
    let mut loaded = UnderLoad::new(&fx, MAX_BATCH, DELAY).await?;
    // A whole batch arrives within the delay: written at once.
    let started = std::time::Instant::now();
    let batch: Vec<_> = (8..8 + MAX_BATCH)
        .map(|i| spawn_append(&loaded.log, i))
        .collect();
    for task in batch {
        task.await??;
    }
    let took = started.elapsed();
    assert!(
        took < DELAY / 2,
        "a full batch waited {took:?} (the delay is {DELAY:?})"
    );
    loaded.answered().await?;
    loaded.log.close().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_is_answered_only_after_a_sync_that_began_after_its_write() -> TestResult {
    let fx = Fixture::new()?;
    let (sink, counters) = TestSink::new(&fx.log)?;
    let (log, gate) = gated(sink)?;
    let append = |i: usize| spawn_append(&log, i);
    let first = append(0);
    eventually("the first sync began", || {
        counters.syncs.load(Ordering::SeqCst) == 1
    })
    .await?;
    // While that sync is held, the second record is written (the writes do
    // not wait for the sync) and a second sync begins for it.
    let second = append(1);
    eventually("the second record was written and its sync began", || {
        counters.appends.load(Ordering::SeqCst) == 2 && counters.syncs.load(Ordering::SeqCst) == 2
    })
    .await?;
    gate.release(1);
    assert_eq!(first.await??, 1);
    // The first sync began before the second record was written, so it
    // does not answer it.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!second.is_finished(), "answered before a sync covering it");
    gate.release(2);
    assert_eq!(second.await??, 2);
    // Each sync began after the bytes of the record it answered.
    let lines = fx.lines()?;
    let ends = [lines[0].len() + 1, lines[0].len() + lines[1].len() + 2];
    let starts = counters
        .sync_starts
        .lock()
        .map_err(|e| e.to_string())?
        .clone();
    assert_eq!(starts, ends.to_vec());
    log.close().await?;
    assert_eq!(verify(&fx.log, None, None)?.records, 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_sync_does_not_hold_up_records_a_later_sync_covers() -> TestResult {
    let fx = Fixture::new()?;
    let (sink, counters) = TestSink::new(&fx.log)?;
    let (log, gate) = gated(sink)?;
    let append = |i: usize| spawn_append(&log, i);
    let first = append(0);
    eventually("the first sync began", || {
        counters.syncs.load(Ordering::SeqCst) == 1
    })
    .await?;
    let second = append(1);
    eventually("the second sync began", || {
        counters.syncs.load(Ordering::SeqCst) == 2
    })
    .await?;
    // The second sync began after both records were written, so when it
    // ends both are durable, whatever the first, still held, does.
    gate.release(2);
    assert_eq!(first.await??, 1);
    assert_eq!(second.await??, 2);
    gate.release(1);
    log.close().await?;
    assert_eq!(verify(&fx.log, None, None)?.records, 2);
    Ok(())
}

#[tokio::test]
async fn a_failing_checkpoint_poisons_the_log_after_its_records_are_durable() -> TestResult {
    let fx = Fixture::new()?;
    let (mut checkpoint_sink, _) = TestSink::new(&fx.checkpoints)?;
    checkpoint_sink.fail_append_on = Some(1);
    let checkpoints = CheckpointSink {
        sink: Box::new(checkpoint_sink),
        key: Zeroizing::new(KEY),
        every: 2,
        after: Duration::ZERO,
    };
    let log = AuditLog::with_sink(
        Box::new(FileSink::open(&fx.log)?),
        Some(checkpoints),
        ChainHead::GENESIS,
        Batching::max_batch(16),
    )?;
    assert_eq!(log.append(event(0)).await?, 1);
    // Record 2 is durable when acknowledged; its checkpoint then fails.
    assert_eq!(log.append(event(1)).await?, 2);
    let refused = log.append(event(2)).await;
    assert!(
        matches!(&refused, Err(AuditError::Unavailable { reason }) if reason.contains("checkpoint")),
        "{refused:?}"
    );
    assert_eq!(verify(&fx.log, None, None)?.records, 2);
    Ok(())
}

#[tokio::test]
async fn close_refuses_later_appends_and_can_be_repeated() -> TestResult {
    let fx = Fixture::new()?;
    let log = fx.open(1000)?;
    let other_handle = log.clone();
    log.append(event(0)).await?;
    log.close().await?;
    assert!(matches!(
        other_handle.append(event(1)).await,
        Err(AuditError::Closed)
    ));
    other_handle.close().await?;
    assert_eq!(fx.verify()?.records, 1);
    assert_eq!(read_lines(&fx.checkpoints)?.len(), 1);
    Ok(())
}

// ------------------------------------------------------ edges and APIs --

#[tokio::test]
async fn with_sink_resumes_after_the_given_head() -> TestResult {
    let fx = Fixture::new()?;
    fx.write(3, 1000).await?;
    let lines = fx.lines()?;
    let resume = ChainHead {
        sequence: 3,
        hash: Sha256::digest(lines[2].as_bytes()).into(),
    };
    let log = AuditLog::with_sink(
        Box::new(FileSink::open(&fx.log)?),
        None,
        resume,
        Batching::max_batch(8),
    )?;
    assert_eq!(log.append(event(3)).await?, 4);
    log.close().await?;
    assert_eq!(verify(&fx.log, None, None)?.last_sequence, 4);
    Ok(())
}

#[test]
fn verify_reports_missing_and_empty_files() -> TestResult {
    let fx = Fixture::new()?;
    let missing = expect_failure(verify(&fx.log, None, None))?;
    assert_eq!((missing.file, missing.line), (AuditFile::Log, 0));
    assert!(
        missing.to_string().starts_with("audit log: cannot open"),
        "{missing}"
    );

    std::fs::write(&fx.log, "")?;
    let missing_cp = expect_failure(fx.verify())?;
    assert_eq!(missing_cp.file, AuditFile::Checkpoints);
    assert!(
        missing_cp
            .to_string()
            .starts_with("checkpoint file: cannot open"),
        "{missing_cp}"
    );

    std::fs::write(&fx.checkpoints, "")?;
    assert_eq!(
        fx.verify()?,
        VerifyReport {
            records: 0,
            first_sequence: 0,
            segments: 0,
            checkpoints: 0,
            last_sequence: 0,
            last_checkpointed: 0,
        }
    );
    Ok(())
}

#[test]
fn failures_display_the_record_and_line() {
    let failure = |file, sequence, line| VerifyFailure {
        file,
        segment: None,
        sequence,
        line,
        reason: "hash does not match its contents".into(),
    };
    let cases = [
        (
            failure(AuditFile::Log, Some(17), 17),
            "record 17 (line 17): hash does not match its contents",
        ),
        (
            failure(AuditFile::Log, None, 4),
            "line 4: hash does not match its contents",
        ),
        (
            failure(AuditFile::Checkpoints, Some(50), 5),
            "checkpoint line 5 (record 50): hash does not match its contents",
        ),
        (
            failure(AuditFile::Checkpoints, None, 2),
            "checkpoint line 2: hash does not match its contents",
        ),
        (
            failure(AuditFile::Log, None, 0),
            "audit log: hash does not match its contents",
        ),
        (
            VerifyFailure {
                segment: Some("audit-00000000000000000001.jsonl".into()),
                ..failure(AuditFile::Log, Some(3), 3)
            },
            "rotated segment audit-00000000000000000001.jsonl: record 3 (line 3): hash does not match its contents",
        ),
    ];
    for (failure, text) in cases {
        assert_eq!(failure.to_string(), text);
    }
}

#[test]
fn bad_configurations_are_refused() -> TestResult {
    let fx = Fixture::new()?;
    let same_paths = AuditConfig::new(&fx.log, &fx.log, Zeroizing::new(KEY));
    let mut cases = vec![("same paths", same_paths)];
    for max_batch in [0, MAX_BATCH_LIMIT + 1] {
        let mut config = fx.config(10, KEY);
        config.batching.max_batch = max_batch;
        cases.push(("max_batch", config));
    }
    let mut config = fx.config(10, KEY);
    config.batching.commit_delay = MAX_COMMIT_DELAY + Duration::from_micros(1);
    cases.push(("commit_delay", config));
    for (what, config) in cases {
        let debug = format!("{config:?}");
        assert!(
            debug.contains("<redacted>") && !debug.contains("[7, 7"),
            "{debug}"
        );
        assert!(
            matches!(AuditLog::open(config), Err(AuditError::Config(_))),
            "{what}"
        );
    }
    // Nothing was created for a refused configuration.
    assert!(!fx.log.exists() && !fx.checkpoints.exists());
    Ok(())
}

#[cfg(unix)]
#[tokio::test]
async fn new_files_are_private() -> TestResult {
    use std::os::unix::fs::PermissionsExt;
    let fx = Fixture::new()?;
    fx.write(1, 1000).await?;
    for path in [&fx.log, &fx.checkpoints] {
        let mode = std::fs::metadata(path)?.permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", path.display());
    }
    Ok(())
}

#[test]
fn hashes_are_spelled_in_lowercase_hex() {
    // SHA-256("abc"), FIPS 180-2 appendix B.1.
    let digest: [u8; 32] = Sha256::digest(b"abc").into();
    let spelled = record::hash_hex(&digest);
    assert_eq!(
        spelled.as_str(),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    assert_eq!(spelled.as_bytes(), spelled.as_str().as_bytes());
    assert_eq!(record::hash_hex(&[0xff; 32]).into_string(), "ff".repeat(32));
    assert_eq!(record::parse_hash_hex(spelled.as_str()), Some(digest));
}

#[test]
fn a_syncer_is_never_made_for_a_file_that_replaced_the_log() -> TestResult {
    let fx = Fixture::new()?;
    let mut sink = FileSink::open(&fx.log)?;
    sink.append(b"{}\n")?;
    // The same file: a syncer is made and syncs.
    sink.syncer()?.sync()?;
    // The log is moved away and another file takes its name: syncing that
    // one would not make the sink's bytes durable.
    let moved = fx.log.with_extension("moved");
    std::fs::rename(&fx.log, &moved)?;
    std::fs::write(&fx.log, b"")?;
    let refused = sink.syncer().map(drop);
    let message = refused.expect_err("a syncer of another file").to_string();
    assert!(message.contains("no longer the file"), "{message}");
    // Gone entirely: the open itself fails.
    std::fs::remove_file(&fx.log)?;
    assert!(sink.syncer().is_err());
    Ok(())
}

// -------------------------------------------------------------- rotation --

/// A rotated segment: its first sequence, path and lines.
type Segment = (u64, PathBuf, Vec<String>);

/// Rotates after about three records.
const SMALL_ROTATION: u64 = 2_000;

impl Fixture {
    fn open_rotating(&self, rotate_bytes: u64) -> Result<AuditLog, AuditError> {
        let mut config = self.config(1000, KEY);
        config.rotate_bytes = rotate_bytes;
        AuditLog::open(config)
    }

    /// Appends `event(from..to)` one at a time to a log rotating at
    /// `rotate_bytes`, then closes it.
    async fn write_rotating(&self, from: usize, to: usize, rotate_bytes: u64) -> TestResult {
        let log = self.open_rotating(rotate_bytes)?;
        for i in from..to {
            assert_eq!(log.append(event(i)).await?, i as u64 + 1);
        }
        log.close().await?;
        Ok(())
    }

    /// The rotated segments: first sequence, path and lines.
    fn segments(&self) -> Result<Vec<Segment>, Box<dyn Error>> {
        let mut found = Vec::new();
        for (first, path) in segment::list(&self.log)? {
            let lines = read_lines(&path)?;
            found.push((first, path, lines));
        }
        Ok(found)
    }
}

fn sequence_of(line: &str) -> Result<u64, Box<dyn Error>> {
    Ok(serde_json::from_str::<StoredRecord>(line)?.sequence)
}

#[tokio::test]
async fn a_rotated_log_verifies_as_one_chain_and_reopens_where_it_left_off() -> TestResult {
    let fx = Fixture::new()?;
    fx.write_rotating(0, 20, SMALL_ROTATION).await?;
    let segments = fx.segments()?;
    assert!(segments.len() >= 4, "{} segments", segments.len());
    let checkpointed: Vec<u64> = checkpoint_lines(&fx)?.iter().map(|c| c.sequence).collect();
    let mut next = 1;
    for (first, path, lines) in &segments {
        // Named by its first record; consecutive; about the rotation size
        // (the write that crossed it is the last one).
        assert_eq!(*first, next, "{}", path.display());
        assert_eq!(sequence_of(&lines[0])?, *first);
        let size = std::fs::metadata(path)?.len();
        assert!(
            (SMALL_ROTATION..SMALL_ROTATION * 2).contains(&size),
            "{size} bytes"
        );
        let last = sequence_of(&lines[lines.len() - 1])?;
        // Every segment's last record is checkpointed before it is moved.
        assert!(
            checkpointed.contains(&last),
            "{last} not in {checkpointed:?}"
        );
        next = last + 1;
    }
    let active = fx.lines()?;
    assert_eq!(sequence_of(&active[0])?, next);
    assert_eq!(
        fx.verify()?,
        VerifyReport {
            records: 20,
            first_sequence: 1,
            segments: segments.len(),
            checkpoints: u64::try_from(checkpointed.len())?,
            last_sequence: 20,
            last_checkpointed: 20,
        }
    );

    // Reopened, the log goes on from its own first record (the segments
    // are not read) and rotates on.
    fx.write_rotating(20, 30, SMALL_ROTATION).await?;
    let report = fx.verify()?;
    assert_eq!((report.records, report.last_sequence), (30, 30));
    assert!(report.segments > segments.len());
    // A log that no longer rotates (0) goes on in the same file.
    fx.write_rotating(30, 40, 0).await?;
    assert_eq!(fx.verify()?.segments, report.segments);
    assert_eq!(fx.verify()?.records, 40);
    Ok(())
}

#[tokio::test]
async fn removed_oldest_segments_leave_a_chain_that_verifies_from_a_checkpoint() -> TestResult {
    let fx = Fixture::new()?;
    fx.write_rotating(0, 20, SMALL_ROTATION).await?;
    let segments = fx.segments()?;
    std::fs::remove_file(&segments[0].1)?;
    std::fs::remove_file(&segments[1].1)?;
    let report = fx.verify()?;
    assert_eq!(report.first_sequence, segments[2].0);
    assert_eq!(report.records, 20 - (segments[2].0 - 1));
    assert_eq!(report.last_sequence, 20);
    // Without the checkpoints nothing vouches for where the chain starts.
    let failure = expect_failure(verify(&fx.log, None, None))?;
    assert_eq!(failure.segment, Some(segment_name(&segments[2].1)));
    assert!(
        failure
            .reason
            .contains("records were removed from the start"),
        "{failure}"
    );
    // The service goes on, since it reads only the newest file.
    fx.write_rotating(20, 22, SMALL_ROTATION).await?;
    assert_eq!(fx.verify()?.last_sequence, 22);
    Ok(())
}

/// A broken first line of the active log of a rotated chain is named as the
/// record that belongs there (the one after the newest rotated segment),
/// at start-up (which reads no segments) and by `audit verify` once every
/// segment is removed, never as record 1; by its line alone when the
/// rotation may not have finished.
#[tokio::test]
async fn a_broken_first_line_after_a_rotation_is_named_as_its_record() -> TestResult {
    let fx = Fixture::new()?;
    fx.write_rotating(0, 20, SMALL_ROTATION).await?;
    let segments = fx.segments()?;
    let mut active = fx.lines()?;
    let first = sequence_of(&active[0])?;
    assert!(first > 1, "the active log begins at {first}");
    active[0] = active[0].replacen("req-", "req_", 1);
    write_lines(&fx.log, &active)?;
    let (path, failure) = expect_corrupt(fx.open_rotating(SMALL_ROTATION))?;
    assert_eq!(path, fx.log);
    assert_eq!(
        (failure.sequence, failure.line),
        (Some(first), 1),
        "{failure}"
    );
    for (_, path, _) in &segments {
        std::fs::remove_file(path)?;
    }
    let failure = expect_failure(fx.verify())?;
    assert_eq!(
        (failure.sequence, failure.line),
        (Some(first), 1),
        "{failure}"
    );
    // When the newest checkpoint is a rotation's (a stop may have come
    // before the file was moved, leaving its record the log's own), the
    // line is named by its number alone.
    let checkpoints = read_lines(&fx.checkpoints)?;
    let last_rotation = checkpoint_lines(&fx)?
        .iter()
        .rposition(|c| c.rotated)
        .ok_or("no rotation checkpoint")?;
    write_lines(&fx.checkpoints, &checkpoints[..=last_rotation])?;
    let (_, failure) = expect_corrupt(fx.open_rotating(SMALL_ROTATION))?;
    assert_eq!((failure.sequence, failure.line), (None, 1), "{failure}");
    Ok(())
}

fn segment_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_missing_or_altered_segment_in_the_middle_is_named() -> TestResult {
    let fx = Fixture::new()?;
    fx.write_rotating(0, 20, SMALL_ROTATION).await?;
    let segments = fx.segments()?;
    let (first, path, lines) = &segments[2];

    // One byte of the second record of the third segment.
    let mut altered = lines.clone();
    altered[1] = altered[1].replacen("req-", "req_", 1);
    write_lines(path, &altered)?;
    let failure = expect_failure(fx.verify())?;
    assert_eq!(failure.segment, Some(segment_name(path)), "{failure}");
    assert_eq!(
        (failure.sequence, failure.line),
        (Some(first + 1), 2),
        "{failure}"
    );
    assert!(
        failure.to_string().starts_with("rotated segment audit-"),
        "{failure}"
    );
    write_lines(path, lines)?;
    fx.verify()?;

    // The whole segment gone: the next one does not follow.
    std::fs::remove_file(path)?;
    let failure = expect_failure(fx.verify())?;
    assert_eq!(
        failure.segment,
        Some(segment_name(&segments[3].1)),
        "{failure}"
    );
    assert_eq!(failure.line, 1, "{failure}");
    assert!(
        failure
            .reason
            .contains(&format!("expected record {first} here")),
        "{failure}"
    );
    Ok(())
}

impl Fixture {
    /// A log rotated once, as the service leaves it when it stops right
    /// after moving the log aside (before the first record after it): the
    /// segment, the checkpoints up to its last record (the rotation's
    /// among them), and no log. Returns the segment's last sequence.
    async fn rotated_then_stopped(&self) -> Result<u64, Box<dyn Error>> {
        self.write_rotating(0, 5, SMALL_ROTATION).await?;
        let segments = self.segments()?;
        let [(1, _, lines)] = segments.as_slice() else {
            return Err(format!("want one segment from 1, got {}", segments.len()).into());
        };
        let end = sequence_of(&lines[lines.len() - 1])?;
        std::fs::remove_file(&self.log)?;
        let kept: Vec<String> = read_lines(&self.checkpoints)?
            .into_iter()
            .filter(|line| {
                serde_json::from_str::<checkpoint::CheckpointLine>(line)
                    .is_ok_and(|cp| cp.sequence <= end)
            })
            .collect();
        write_lines(&self.checkpoints, &kept)?;
        Ok(end)
    }
}

#[tokio::test]
async fn a_log_rotated_just_before_a_stop_goes_on_from_its_newest_segment() -> TestResult {
    for empty_log_left in [false, true] {
        let fx = Fixture::new()?;
        let end = fx.rotated_then_stopped().await?;
        if empty_log_left {
            std::fs::write(&fx.log, b"")?;
        }
        let log = fx.open_rotating(SMALL_ROTATION)?;
        assert_eq!(log.append(event(9)).await?, end + 1);
        log.close().await?;
        let lines = fx.lines()?;
        let last = read_lines(&segment::segment_path(&fx.log, 1))?
            .pop()
            .ok_or("empty segment")?;
        let next: StoredRecord = serde_json::from_str(&lines[0])?;
        assert_eq!(next.previous_hash, sha256_hex(last.as_bytes()));
        assert_eq!(fx.verify()?.records, end + 1);
    }

    // Only a rotation checkpoint vouches for a segment's end: a plain one
    // (here the one written on close) does not.
    let fx = Fixture::new()?;
    fx.write(5, 1000).await?;
    std::fs::rename(&fx.log, segment::segment_path(&fx.log, 1))?;
    let (_, failure) = expect_corrupt(fx.open_rotating(SMALL_ROTATION))?;
    assert!(
        failure.reason.contains("no rotation checkpoint names"),
        "{failure}"
    );
    Ok(())
}

#[tokio::test]
async fn records_cut_from_the_start_at_a_plain_checkpoint_are_detected() -> TestResult {
    // Checkpoints every 5 records, no rotation: cutting records 1–5 leaves
    // a log that starts right after a checkpointed record, which only a
    // rotation may do.
    let fx = Fixture::new()?;
    fx.write(12, 5).await?;
    let lines = fx.lines()?;
    fx.rewrite(&lines[5..])?;
    let failure = expect_failure(fx.verify())?;
    assert_eq!((failure.sequence, failure.line), (Some(6), 1), "{failure}");
    assert!(
        failure
            .reason
            .contains("records were removed from the start"),
        "{failure}"
    );
    let (_, failure) = expect_corrupt(fx.open(5))?;
    assert!(
        failure
            .reason
            .contains("records were removed from the start"),
        "{failure}"
    );
    // The same cut at the front of the oldest remaining segment.
    let fx = Fixture::new()?;
    let log = fx.open_rotating(SMALL_ROTATION)?;
    for i in 0..20 {
        log.append(event(i)).await?;
    }
    log.close().await?;
    let segments = fx.segments()?;
    std::fs::remove_file(&segments[0].1)?;
    let (first, path, lines) = &segments[1];
    // Cut its first record: the next one follows no rotation checkpoint
    // (and the name no longer matches).
    write_lines(path, &lines[1..])?;
    let failure = expect_failure(fx.verify())?;
    assert_eq!(failure.segment, Some(segment_name(path)), "{failure}");
    assert!(
        failure.reason.contains(&format!(
            "the segment's name says it begins with record {first}"
        )),
        "{failure}"
    );
    Ok(())
}

#[tokio::test]
async fn an_emptied_log_is_refused_even_beside_its_segments() -> TestResult {
    let fx = Fixture::new()?;
    fx.write_rotating(0, 20, SMALL_ROTATION).await?;
    // The records after the newest segment are gone: the checkpoint of
    // record 20 (on close) says so.
    std::fs::write(&fx.log, b"")?;
    let (_, failure) = expect_corrupt(fx.open_rotating(SMALL_ROTATION))?;
    assert_eq!(failure.sequence, Some(20), "{failure}");
    assert!(
        failure.reason.contains("records were removed from the end"),
        "{failure}"
    );

    // The newest segment removed too, while the log is empty: the older
    // one does not end where the checkpoints say the chain went on to.
    let fx = Fixture::new()?;
    fx.write_rotating(0, 20, SMALL_ROTATION).await?;
    let segments = fx.segments()?;
    std::fs::remove_file(&fx.log)?;
    std::fs::remove_file(&segments[segments.len() - 1].1)?;
    let (_, failure) = expect_corrupt(fx.open_rotating(SMALL_ROTATION))?;
    assert!(
        failure.reason.contains("checkpoint says record 20 existed"),
        "{failure}"
    );

    // A newest segment whose last record no checkpoint names.
    let fx = Fixture::new()?;
    fx.write(5, 1000).await?;
    let moved = segment::segment_path(&fx.log, 1);
    std::fs::rename(&fx.log, &moved)?;
    let mut lines = read_lines(&moved)?;
    lines.pop();
    write_lines(&moved, &lines)?;
    let (path, failure) = expect_corrupt(fx.open_rotating(SMALL_ROTATION))?;
    assert_eq!(path, moved);
    assert_eq!(failure.sequence, Some(4), "{failure}");
    assert!(
        failure.reason.contains("no rotation checkpoint names"),
        "{failure}"
    );
    Ok(())
}

/// A sink whose rotation fails in the given way.
struct FailingRotation {
    inner: FileSink,
    lost: bool,
    rotations: Arc<AtomicUsize>,
}

impl AuditSink for FailingRotation {
    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.inner.append(bytes)
    }
    fn sync(&mut self) -> io::Result<()> {
        self.inner.sync()
    }
    fn syncer(&self) -> io::Result<Box<dyn AuditSyncer>> {
        self.inner.syncer()
    }
    fn can_rotate(&self, _first: u64) -> io::Result<()> {
        self.rotations.fetch_add(1, Ordering::SeqCst);
        match self.lost {
            // Fails only once the rotation checkpoint is written.
            true => Ok(()),
            false => Err(io::Error::other("injected: cannot rotate now")),
        }
    }
    fn rotate(&mut self, _first: u64) -> io::Result<()> {
        Err(io::Error::other("injected rotation failure"))
    }
}

#[tokio::test]
async fn a_failed_rotation_keeps_the_file_or_fails_closed() -> TestResult {
    for lost in [false, true] {
        let fx = Fixture::new()?;
        let rotations = Arc::new(AtomicUsize::new(0));
        let sink = FailingRotation {
            inner: FileSink::open(&fx.log)?,
            lost,
            rotations: Arc::clone(&rotations),
        };
        let log = AuditLog::with_rotating_sink(
            Box::new(sink),
            None,
            ChainHead::GENESIS,
            Batching::max_batch(1024),
            SMALL_ROTATION,
        )?;
        let mut results = Vec::new();
        for i in 0..10 {
            results.push(log.append(event(i)).await);
        }
        let tried = rotations.load(Ordering::SeqCst);
        if lost {
            // Refused from the first write that needed a new file on.
            assert_eq!(tried, 1);
            let refused = results
                .iter()
                .position(Result::is_err)
                .ok_or("none refused")?;
            assert!(refused >= 2, "refused from {refused}");
            assert!(results[refused..].iter().all(Result::is_err));
            let kept = fx.lines()?.len();
            assert_eq!(kept, refused, "the refused records are not in the file");
        } else {
            // Tried again after as many bytes more; nothing refused.
            assert!(tried >= 2, "{tried} rotations tried");
            assert!(results.iter().all(Result::is_ok));
            log.close().await?;
            assert_eq!(verify(&fx.log, None, None)?.records, 10);
        }
    }
    Ok(())
}

/// A file sink whose syncers refuse to sync once the file they were made
/// for has been rotated away, as a stale one would sync the wrong file.
struct GenerationSink {
    inner: FileSink,
    generation: Arc<AtomicUsize>,
}

struct GenerationSyncer {
    inner: Box<dyn AuditSyncer>,
    made_for: usize,
    generation: Arc<AtomicUsize>,
}

impl AuditSyncer for GenerationSyncer {
    fn sync(&mut self) -> io::Result<()> {
        if self.made_for != self.generation.load(Ordering::SeqCst) {
            return Err(io::Error::other("a syncer of a rotated-away file was used"));
        }
        self.inner.sync()
    }
}

impl AuditSink for GenerationSink {
    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.inner.append(bytes)
    }
    fn sync(&mut self) -> io::Result<()> {
        self.inner.sync()
    }
    fn syncer(&self) -> io::Result<Box<dyn AuditSyncer>> {
        Ok(Box::new(GenerationSyncer {
            inner: self.inner.syncer()?,
            made_for: self.generation.load(Ordering::SeqCst),
            generation: Arc::clone(&self.generation),
        }))
    }
    fn can_rotate(&self, first: u64) -> io::Result<()> {
        self.inner.can_rotate(first)
    }
    fn rotate(&mut self, first: u64) -> io::Result<()> {
        self.inner.rotate(first)?;
        self.generation.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_rotate_without_losing_or_reordering_a_record() -> TestResult {
    let fx = Fixture::new()?;
    let generation = Arc::new(AtomicUsize::new(0));
    let sink = GenerationSink {
        inner: FileSink::open(&fx.log)?,
        generation: Arc::clone(&generation),
    };
    let log = AuditLog::with_rotating_sink(
        Box::new(sink),
        None,
        ChainHead::GENESIS,
        Batching::max_batch(16),
        20_000,
    )?;
    let tasks: Vec<_> = (0..600).map(|i| spawn_append(&log, i)).collect();
    let mut sequences = Vec::new();
    for task in tasks {
        sequences.push(task.await??);
    }
    log.close().await?;
    sequences.sort_unstable();
    assert_eq!(sequences, (1..=600).collect::<Vec<u64>>());
    let report = verify(&fx.log, None, None)?;
    assert_eq!((report.records, report.last_sequence), (600, 600));
    assert!(report.segments >= 10, "{} segments", report.segments);
    assert_eq!(generation.load(Ordering::SeqCst), report.segments);
    Ok(())
}

#[tokio::test]
async fn a_segment_of_another_chain_beside_the_log_stops_the_start() -> TestResult {
    // A new log (from record 1) beside an old chain's segments: its first
    // rotation would collide with them, so the start is refused.
    let fx = Fixture::new()?;
    fx.write(3, 1000).await?;
    std::fs::copy(&fx.log, segment::segment_path(&fx.log, 1))?;
    match fx.open_rotating(SMALL_ROTATION) {
        Err(AuditError::Config(message)) => {
            assert!(message.contains("belongs to another chain"), "{message}");
        }
        Err(other) => return Err(format!("expected a configuration error, got {other}").into()),
        Ok(_) => return Err("a foreign segment was accepted".into()),
    }
    Ok(())
}

/// The rotation checkpoint cannot be written: the log is poisoned (fail
/// closed), the record that needed the rotation is refused, and the file
/// is left where it was, with every record acknowledged before.
#[tokio::test]
async fn a_failing_rotation_checkpoint_refuses_the_write_and_keeps_the_file() -> TestResult {
    let fx = Fixture::new()?;
    let (mut checkpoint_sink, _) = TestSink::new(&fx.checkpoints)?;
    // Every 1000 records: the first checkpoint is the rotation's.
    checkpoint_sink.fail_append_on = Some(1);
    let log = AuditLog::with_rotating_sink(
        Box::new(FileSink::open(&fx.log)?),
        Some(CheckpointSink {
            sink: Box::new(checkpoint_sink),
            key: Zeroizing::new(KEY),
            every: 1000,
            after: Duration::ZERO,
        }),
        ChainHead::GENESIS,
        Batching::max_batch(1024),
        SMALL_ROTATION,
    )?;
    let mut results = Vec::new();
    for i in 0..8 {
        results.push(log.append(event(i)).await);
    }
    let acknowledged = results.iter().take_while(|r| r.is_ok()).count();
    assert!(acknowledged >= 2, "{acknowledged} acknowledged");
    assert!(
        results[acknowledged..].iter().all(Result::is_err),
        "{results:?}"
    );
    assert!(log.fault().is_some(), "the log is poisoned");
    assert!(segment::list(&fx.log)?.is_empty(), "nothing was rotated");
    assert_eq!(fx.lines()?.len(), acknowledged);
    assert_eq!(verify(&fx.log, None, None)?.records, acknowledged as u64);
    Ok(())
}

/// A stop between writing the rotation checkpoint and moving the file
/// aside: the log's last record has a rotation checkpoint. The next start
/// finishes the move, and the chain goes on in a new file.
#[tokio::test]
async fn a_rotation_a_stop_interrupted_is_finished_at_the_next_start() -> TestResult {
    let fx = Fixture::new()?;
    let end = fx.rotated_then_stopped().await?;
    let moved = segment::segment_path(&fx.log, 1);
    std::fs::rename(&moved, &fx.log)?;
    assert!(segment::list(&fx.log)?.is_empty());
    let log = fx.open_rotating(SMALL_ROTATION)?;
    assert_eq!(
        read_lines(&moved)?.len() as u64,
        end,
        "moved aside at the start"
    );
    assert_eq!(log.append(event(9)).await?, end + 1);
    log.close().await?;
    assert_eq!(sequence_of(&fx.lines()?[0])?, end + 1);
    let report = fx.verify()?;
    assert_eq!((report.records, report.segments), (end + 1, 1));
    Ok(())
}

/// A rotation checkpoint names a record that ends its file: one followed
/// by more records in the same file (segments joined back together, or a
/// file cut short at a rotation point and spliced) fails, at verify and at
/// start-up.
#[tokio::test]
async fn a_rotation_checkpoint_in_the_middle_of_a_file_fails() -> TestResult {
    let fx = Fixture::new()?;
    fx.write_rotating(0, 8, SMALL_ROTATION).await?;
    let segments = fx.segments()?;
    let mut joined = Vec::new();
    for (_, path, lines) in &segments {
        joined.extend(lines.iter().cloned());
        std::fs::remove_file(path)?;
    }
    let end = sequence_of(&segments[0].2[segments[0].2.len() - 1])?;
    joined.extend(fx.lines()?);
    fx.rewrite(&joined)?;
    let failure = expect_failure(fx.verify())?;
    assert_eq!(failure.sequence, Some(end + 1), "{failure}");
    assert!(
        failure.reason.contains(&format!(
            "record {end} has a rotation checkpoint, so it ends its file"
        )),
        "{failure}"
    );
    let (_, failure) = expect_corrupt(fx.open_rotating(SMALL_ROTATION))?;
    assert!(failure.reason.contains("so it ends its file"), "{failure}");
    Ok(())
}

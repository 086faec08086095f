//! Throughput of Decrypt and GenerateDataKey over gRPC, beside a bare tonic
//! echo RPC measured in the same run on the same machine.
//!
//! Run with `cargo bench -p lockbox-tests --bench kms_throughput` (or
//! `deploy/bench.sh`). `BENCH_SECONDS` sets the measured time per run
//! (default 3; each run is preceded by a 0.5 s warm-up); `BENCH_CONCURRENCY`
//! (e.g. `64`, or `1,64`) runs only some of the concurrency levels;
//! `BENCH_ROUNDS` (default 3) sets how many times each level's workloads
//! are run in turn; `BENCH_WORKLOADS` (a comma-separated subset of `echo`,
//! `decrypt`, `generate-data-key`, `unsynced`) runs only some workloads,
//! for a profile of one (a ratio needs the echo); `BENCH_COMMIT_DELAY_US`
//! sets the real KMS's `--audit-commit-delay-us` (default 500).
//!
//! What is measured:
//!
//! * **echo**: a second in-process tonic server that serves only
//!   `grpc.health.v1.Health`; the client calls `Health/Check`, a bare unary
//!   RPC that does no work. It is the ceiling for "one unary RPC through
//!   tonic on this machine", so the KMS rows are reported as a ratio to it.
//! * **Decrypt** / **GenerateDataKey**: the real KMS ([`RunningServer`]) in a
//!   temporary directory: SQLite key store, and the audit log durable
//!   (every call is acknowledged only after its audit record is `fsync`ed,
//!   group-committed). One symmetric key; Decrypt opens a ciphertext of 32
//!   bytes made up front; GenerateDataKey asks for AES_256. Both carry the
//!   same small encryption context.
//!
//! * **Decrypt, audit unsynced (reference)**: a second KMS, the same service
//!   and server code over its own store, whose audit log is sealed (hash
//!   chain) and written exactly like the real one but never synced. It is
//!   not a product setting (the service has no such switch); it shows, in
//!   the same run, how much of the gap to echo is the `fdatasync` every
//!   call waits for. The report also gives this disk's `fdatasync` latency
//!   (measured before the runs) and, per KMS run, how many audit records
//!   shared each sync.
//!
//! For each concurrency level (1, 16, 64) the four workloads run one after
//! the other (echo, Decrypt, GenerateDataKey, the reference), and that
//! sequence is repeated `BENCH_ROUNDS` times. Each round's ratios are to the
//! echo of the same round, measured seconds before, so slow drift in a
//! shared, noisy machine hits both sides of a ratio alike; the report gives,
//! per row, the median over the rounds and the range of the ratios, so one
//! disturbed run neither makes nor breaks a row. Each run has `c`
//! client tasks issuing
//! requests back to back on one shared tonic `Channel` (one HTTP/2
//! connection, multiplexed), the same scheme for every workload; both
//! servers accept connections the same way (`serve_with_incoming_shutdown`
//! over `lockbox_proto::tcp::incoming`: TCP_NODELAY, small
//! messages coalesced into one write). Throughput counts the requests that completed
//! inside the measured window; latency is per request, client-observed.
//!
//! Client and servers share one multi-threaded tokio runtime in this process,
//! and so share the machine's cores (2 on the reference machine): the numbers
//! are for the whole loop (client + server), the same for echo and KMS, which
//! is why only the ratio to echo is meaningful across machines.
//!
//! Any failed request (or a wrong answer) aborts the benchmark with a message
//! and a non-zero exit code: a failure is never counted as throughput. The
//! 0.7× target at concurrency 64 is informative only and never fails the run.
//!
//! Under `cargo test --all-targets` (no `--bench` argument) it runs as a
//! quick smoke test with very short windows: that checks it works, not how
//! fast.

/// The services' own allocator (their binaries set it), so what is measured
/// in process is what they run with; the echo servers share it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod common;

use std::collections::HashMap;
use std::error::Error;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kms_service::audit::{AuditLog, AuditSink, AuditSyncer, Batching, ChainHead};
use kms_service::clock::SystemClock;
use kms_service::config::ServeConfig;
use kms_service::crypto::root_key::SoftwareRootKey;
use kms_service::identity::PrincipalKind;
use kms_service::server::{ADMIN_PRINCIPAL, RunningServer, serve_with_tls};
use kms_service::service::Kms;
use kms_service::store::sqlite::SqliteStore;
use lockbox_proto::kms::v1::key_management_service_client::KeyManagementServiceClient;
use lockbox_proto::kms::v1::{
    CreateKeyRequest, DataKeySpec, DecryptRequest, EncryptRequest, GenerateDataKeyRequest,
};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use common::{Spread, seconds};

type BoxError = Box<dyn Error + Send + Sync>;

const CONCURRENCY: [usize; 3] = [1, 16, 64];
const WORKLOADS: [Workload; 4] = [
    Workload::Echo,
    Workload::Decrypt,
    Workload::GenerateDataKey,
    Workload::DecryptUnsynced,
];
const TARGET_CONCURRENCY: usize = 64;
const TARGET_RATIO: f64 = 0.7;
const DEFAULT_SECONDS: f64 = 3.0;
const WARMUP: Duration = Duration::from_millis(500);
const PLAINTEXT_LEN: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Workload {
    Echo,
    Decrypt,
    GenerateDataKey,
    /// Decrypt on the reference server, whose audit log is written but
    /// never synced: not a product configuration, it shows what the
    /// durability of the audit log costs.
    DecryptUnsynced,
}

impl Workload {
    /// Its name in `BENCH_WORKLOADS`.
    fn key(self) -> &'static str {
        match self {
            Workload::Echo => "echo",
            Workload::Decrypt => "decrypt",
            Workload::GenerateDataKey => "generate-data-key",
            Workload::DecryptUnsynced => "unsynced",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Workload::Echo => "echo (Health/Check)",
            Workload::Decrypt => "Decrypt",
            Workload::GenerateDataKey => "GenerateDataKey",
            Workload::DecryptUnsynced => "Decrypt, audit unsynced (reference)",
        }
    }

    /// Calls to the real KMS, audited durably and held to the target.
    fn is_kms(self) -> bool {
        matches!(self, Workload::Decrypt | Workload::GenerateDataKey)
    }
}

/// A KMS server the benchmark calls, with its key and ciphertext.
struct KmsTarget {
    channel: Channel,
    /// `Bearer <admin token>` of this server.
    authorization: MetadataValue<Ascii>,
    key_id: String,
    ciphertext: Vec<u8>,
}

/// Everything the client tasks share.
struct Fixture {
    echo: Channel,
    /// The real KMS.
    kms: KmsTarget,
    /// The reference KMS (audit log not synced).
    reference: KmsTarget,
    context: HashMap<String, String>,
    plaintext: Vec<u8>,
}

impl KmsTarget {
    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request
            .metadata_mut()
            .insert("authorization", self.authorization.clone());
        request
    }
}

/// The client stubs of one task.
struct Clients {
    echo: HealthClient<Channel>,
    kms: KeyManagementServiceClient<Channel>,
    reference: KeyManagementServiceClient<Channel>,
}

/// One Decrypt on `target`, its answer checked.
async fn decrypt(
    fx: &Fixture,
    client: &mut KeyManagementServiceClient<Channel>,
    target: &KmsTarget,
) -> Result<(), tonic::Status> {
    let response = client
        .decrypt(target.request(DecryptRequest {
            ciphertext_blob: target.ciphertext.clone(),
            encryption_context: fx.context.clone(),
            ..Default::default()
        }))
        .await?
        .into_inner();
    if response.plaintext != fx.plaintext {
        return Err(tonic::Status::internal(
            "Decrypt returned the wrong plaintext",
        ));
    }
    Ok(())
}

/// One request of `workload`, its answer checked.
async fn call(fx: &Fixture, clients: &mut Clients, workload: Workload) -> Result<(), String> {
    let fail = |status: tonic::Status| {
        format!(
            "{} failed: {:?}: {}",
            workload.name(),
            status.code(),
            status.message()
        )
    };
    match workload {
        Workload::Echo => {
            // The admin token is sent to the echo too, so both carry the
            // same headers (the health service ignores it).
            let response = clients
                .echo
                .check(fx.kms.request(HealthCheckRequest {
                    service: String::new(),
                }))
                .await
                .map_err(fail)?
                .into_inner();
            if response.status != ServingStatus::Serving as i32 {
                return Err(format!("echo answered status {}", response.status));
            }
        }
        Workload::Decrypt => decrypt(fx, &mut clients.kms, &fx.kms).await.map_err(fail)?,
        Workload::DecryptUnsynced => decrypt(fx, &mut clients.reference, &fx.reference)
            .await
            .map_err(fail)?,
        Workload::GenerateDataKey => {
            let response = clients
                .kms
                .generate_data_key(fx.kms.request(GenerateDataKeyRequest {
                    key_id: fx.kms.key_id.clone(),
                    encryption_context: fx.context.clone(),
                    key_spec: DataKeySpec::Aes256 as i32,
                    ..Default::default()
                }))
                .await
                .map_err(fail)?
                .into_inner();
            if response.plaintext.len() != 32 || response.ciphertext_blob.is_empty() {
                return Err(format!(
                    "GenerateDataKey returned a {}-byte key and a {}-byte blob",
                    response.plaintext.len(),
                    response.ciphertext_blob.len()
                ));
            }
        }
    }
    Ok(())
}

/// The measured window of one run.
#[derive(Clone, Copy)]
struct Window {
    start: Instant,
    end: Instant,
}

/// What one client task saw.
struct TaskResult {
    /// Latencies of the requests that completed inside the window.
    latencies: Vec<Duration>,
    /// Every successful request, warm-up and tail included.
    succeeded: u64,
}

/// Issues requests back to back until the window ends. A request counts when
/// it completes inside the window (unbiased in steady state); requests in
/// flight at the end are still awaited and checked, but not counted.
async fn client_task(
    fx: Arc<Fixture>,
    workload: Workload,
    window: Window,
    abort: Arc<AtomicBool>,
) -> Result<TaskResult, String> {
    let mut clients = Clients {
        echo: HealthClient::new(fx.echo.clone()),
        kms: KeyManagementServiceClient::new(fx.kms.channel.clone()),
        reference: KeyManagementServiceClient::new(fx.reference.channel.clone()),
    };
    let mut latencies = Vec::with_capacity(4096);
    let mut succeeded = 0;
    loop {
        let start = Instant::now();
        if start >= window.end || abort.load(Ordering::Relaxed) {
            break;
        }
        if let Err(message) = call(&fx, &mut clients, workload).await {
            abort.store(true, Ordering::Relaxed);
            return Err(message);
        }
        let done = Instant::now();
        succeeded += 1;
        if done >= window.start && done <= window.end {
            latencies.push(done - start);
        }
    }
    Ok(TaskResult {
        latencies,
        succeeded,
    })
}

/// The outcome of one (workload, concurrency) run.
struct RunResult {
    workload: Workload,
    concurrency: usize,
    /// Which repetition of the concurrency level's workloads (from 0).
    round: usize,
    throughput: f64,
    p50: Duration,
    p99: Duration,
    /// Successful requests, warm-up and tail included.
    succeeded: u64,
    /// KMS runs: audit records made durable per batch sync during the run
    /// (warm-up and tail included): the group-commit batch size.
    records_per_sync: Option<f64>,
}

async fn run(
    fx: &Arc<Fixture>,
    workload: Workload,
    concurrency: usize,
    warmup: Duration,
    measure: Duration,
) -> Result<RunResult, String> {
    let start = Instant::now() + warmup;
    let window = Window {
        start,
        end: start + measure,
    };
    let abort = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| tokio::spawn(client_task(fx.clone(), workload, window, abort.clone())))
        .collect();
    let mut latencies = Vec::new();
    let mut succeeded = 0;
    let mut first_error = None;
    for task in tasks {
        match task.await {
            Ok(Ok(result)) => {
                latencies.extend(result.latencies);
                succeeded += result.succeeded;
            }
            Ok(Err(message)) => {
                first_error.get_or_insert(message);
            }
            Err(join) => {
                first_error.get_or_insert(format!("client task failed: {join}"));
            }
        }
    }
    if let Some(message) = first_error {
        return Err(format!(
            "{} at concurrency {concurrency}: {message}",
            workload.name()
        ));
    }
    if latencies.is_empty() {
        return Err(format!(
            "{} at concurrency {concurrency}: no request completed in the window",
            workload.name()
        ));
    }
    latencies.sort_unstable();
    Ok(RunResult {
        workload,
        concurrency,
        round: 0,
        throughput: latencies.len() as f64 / measure.as_secs_f64(),
        p50: quantile(&latencies, 0.50),
        p99: quantile(&latencies, 0.99),
        succeeded,
        records_per_sync: None,
    })
}

/// Nearest-rank quantile of sorted, non-empty samples.
fn quantile(sorted: &[Duration], q: f64) -> Duration {
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The bare tonic server: only `grpc.health.v1.Health`, accepting
/// connections exactly as the KMS server does.
async fn start_echo() -> Result<
    (
        SocketAddr,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    ),
    BoxError,
> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    let (_reporter, health) = tonic_health::server::health_reporter();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health)
            .serve_with_incoming_shutdown(lockbox_proto::tcp::incoming(listener), async {
                let _ = stopped.await;
            }),
    );
    Ok((addr, stop, task))
}

async fn connect(addr: SocketAddr) -> Result<Channel, BoxError> {
    Ok(Channel::from_shared(format!("http://{addr}"))?
        .connect()
        .await?)
}

/// Creates a key and the Decrypt ciphertext on one server as its
/// administrator.
async fn prepare_target(
    channel: Channel,
    token: &str,
    context: &HashMap<String, String>,
    plaintext: &[u8],
) -> Result<KmsTarget, BoxError> {
    let mut target = KmsTarget {
        channel: channel.clone(),
        authorization: format!("Bearer {}", token.trim()).parse()?,
        key_id: String::new(),
        ciphertext: Vec::new(),
    };
    let mut client = KeyManagementServiceClient::new(channel);
    let created = client
        .create_key(target.request(CreateKeyRequest {
            description: "kms_throughput benchmark".into(),
            ..Default::default()
        }))
        .await?
        .into_inner();
    target.key_id = created
        .key_metadata
        .ok_or("CreateKey returned no metadata")?
        .key_id;
    target.ciphertext = client
        .encrypt(target.request(EncryptRequest {
            key_id: target.key_id.clone(),
            plaintext: plaintext.to_vec(),
            encryption_context: context.clone(),
            ..Default::default()
        }))
        .await?
        .into_inner()
        .ciphertext_blob;
    Ok(target)
}

/// An audit sink that writes like the product's file sink but never syncs.
struct UnsyncedFile(std::fs::File);

struct NoSync;

impl AuditSyncer for NoSync {
    fn sync(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl AuditSink for UnsyncedFile {
    fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        std::io::Write::write_all(&mut self.0, bytes)
    }

    fn sync(&mut self) -> std::io::Result<()> {
        Ok(())
    }

    fn syncer(&self) -> std::io::Result<Box<dyn AuditSyncer>> {
        Ok(Box::new(NoSync))
    }
}

/// The reference KMS: the same service, store and server, with an audit
/// log that is sealed and written like the real one but never synced.
struct ReferenceKms {
    addr: SocketAddr,
    token: String,
    log_path: PathBuf,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), kms_service::server::StartError>>,
}

async fn start_reference(dir: &Path) -> Result<ReferenceKms, BoxError> {
    std::fs::create_dir_all(dir)?;
    let store = SqliteStore::open(&dir.join("kms.sqlite3"))?;
    let log_path = dir.join("audit.jsonl");
    let file = std::fs::OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(&log_path)?;
    let audit = AuditLog::with_sink(
        Box::new(UnsyncedFile(file)),
        None,
        ChainHead::GENESIS,
        Batching::default(),
    )?;
    let kms = Arc::new(Kms::open(
        Arc::new(store),
        Arc::new(SoftwareRootKey::generate()),
        audit,
        Arc::new(SystemClock),
    )?);
    let token = kms
        .bootstrap_principal(
            ADMIN_PRINCIPAL,
            PrincipalKind::User,
            &["AdministratorAccess"],
        )
        .await?
        .ok_or("the reference server bootstrapped no administrator")?;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    let config = ServeConfig::for_data_dir(dir.to_path_buf());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        serve_with_tls(&config, None, kms, listener, async {
            let _ = stopped.await;
        })
        .await
    });
    Ok(ReferenceKms {
        addr,
        token: token.token.to_string(),
        log_path,
        stop,
        task,
    })
}

struct Settings {
    warmup: Duration,
    measure: Duration,
    smoke: bool,
    /// The concurrency levels to run (`BENCH_CONCURRENCY=64`, say, for a
    /// profile of one level); all of [`CONCURRENCY`] by default.
    concurrency: Vec<usize>,
    /// How many times each level's workloads run in turn.
    rounds: usize,
    /// The workloads to run (`BENCH_WORKLOADS=decrypt`, say, for a
    /// profile of one); all of [`WORKLOADS`] by default. Ratios need the
    /// echo.
    workloads: Vec<Workload>,
}

fn settings() -> Result<Settings, BoxError> {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` does not.
    let smoke = !std::env::args().any(|arg| arg == "--bench");
    let seconds = match std::env::var("BENCH_SECONDS") {
        Ok(value) => {
            let seconds: f64 = value
                .trim()
                .parse()
                .map_err(|e| format!("BENCH_SECONDS={value:?}: {e}"))?;
            if !(seconds.is_finite() && seconds > 0.0 && seconds <= 3600.0) {
                return Err(format!("BENCH_SECONDS={value:?}: want 0 < seconds <= 3600").into());
            }
            Some(seconds)
        }
        Err(std::env::VarError::NotPresent) => None,
        Err(e) => return Err(format!("BENCH_SECONDS: {e}").into()),
    };
    let concurrency = common::concurrency_setting(&CONCURRENCY)?;
    // A smoke run checks that the benchmark works: one round is enough.
    let rounds = common::rounds_setting(smoke)?;
    let workloads = common::workloads_setting(&WORKLOADS, Workload::key)?;
    Ok(match (smoke, seconds) {
        (false, seconds) => Settings {
            warmup: WARMUP,
            measure: Duration::from_secs_f64(seconds.unwrap_or(DEFAULT_SECONDS)),
            smoke,
            concurrency,
            rounds,
            workloads,
        },
        (true, None) => Settings {
            warmup: Duration::from_millis(20),
            measure: Duration::from_millis(100),
            smoke,
            concurrency,
            rounds,
            workloads,
        },
        (true, Some(seconds)) => Settings {
            warmup: WARMUP,
            measure: Duration::from_secs_f64(seconds),
            smoke,
            concurrency,
            rounds,
            workloads,
        },
    })
}

fn count_lines(path: &Path) -> Result<u64, BoxError> {
    let data = std::fs::read(path)?;
    Ok(data.iter().filter(|&&b| b == b'\n').count() as u64)
}

/// Records in the audit log `path` (`…/audit.jsonl`) and in its rotated
/// segments beside it (`audit-<first sequence>.jsonl`): a long run fills
/// more than one file at the default rotation size.
fn count_records(path: &Path) -> Result<u64, BoxError> {
    let mut records = count_lines(path)?;
    let dir = path
        .parent()
        .ok_or("an audit log path without a directory")?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("audit-") && name.ends_with(".jsonl") {
            records += count_lines(&entry.path())?;
        }
    }
    Ok(records)
}

/// Latency of `fdatasync` after a small append, in a given directory.
struct FsyncBaseline {
    p50: Duration,
    p99: Duration,
    samples: usize,
}

/// Appends 1 KiB and syncs it, `samples` times, in a scratch file in `dir`
/// (removed afterwards): what one audit batch sync costs at least there.
fn fsync_baseline(dir: &Path, samples: usize) -> Result<FsyncBaseline, BoxError> {
    use std::io::Write;
    let path = dir.join("fsync-baseline.tmp");
    let mut file = std::fs::OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(&path)?;
    let line = [b'x'; 1024];
    let mut latencies = Vec::with_capacity(samples);
    for _ in 0..samples {
        file.write_all(&line)?;
        let start = Instant::now();
        file.sync_data()?;
        latencies.push(start.elapsed());
    }
    drop(file);
    std::fs::remove_file(&path)?;
    latencies.sort_unstable();
    Ok(FsyncBaseline {
        p50: quantile(&latencies, 0.50),
        p99: quantile(&latencies, 0.99),
        samples,
    })
}

fn print_report(
    settings: &Settings,
    data_dir: &Path,
    commit_delay_us: u64,
    fsync: &FsyncBaseline,
    results: &[RunResult],
) {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!();
    println!("## KMS throughput vs a bare tonic RPC");
    println!();
    if settings.smoke {
        println!("Smoke run (no `--bench` argument): windows too short to mean anything.");
        println!();
    }
    println!(
        "{cores} cores shared by client and servers (one process, one tokio runtime); \
         {:.1} s measured per run after {:.1} s warm-up; one HTTP/2 channel per run; \
         {} round(s) of every workload per concurrency level.",
        settings.measure.as_secs_f64(),
        settings.warmup.as_secs_f64(),
        settings.rounds
    );
    println!(
        "echo = `grpc.health.v1.Health/Check` on a bare in-process tonic server: \
         a unary RPC that does no work."
    );
    println!(
        "KMS = real server, SQLite store and durable (fsync, group-committed) audit log in {}.",
        data_dir.display()
    );
    println!();
    println!(
        "fdatasync after appending 1 KiB to a file in that directory, measured before \
         the runs: p50 {:.3} ms, p99 {:.3} ms ({} samples). Every KMS call waits for \
         one; \"records/sync\" is how many calls share each (group commit, audit \
         commit delay {commit_delay_us} µs).",
        ms(fsync.p50),
        ms(fsync.p99),
        fsync.samples
    );
    println!();
    println!(
        "Each row gives the median over the rounds (req/s, p50, p99, ratio); in brackets, \
         the lowest and highest of the rounds' ratios, each to that round's echo."
    );
    println!();
    println!("| workload | concurrency | req/s | p50 ms | p99 ms | ratio to echo | records/sync |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let rows = summarize(results);
    for row in &rows {
        println!(
            "| {} | {} | {:.0} | {:.3} | {:.3} | {} | {} |",
            row.workload.name(),
            row.concurrency,
            row.throughput,
            ms(row.p50),
            ms(row.p99),
            row.ratio.ratio_text(),
            row.records_per_sync
                .map_or_else(|| "–".to_owned(), |n| format!("{n:.1}")),
        );
    }
    println!();
    println!(
        "The reference row is the same service with an audit log that is sealed and \
         written but never synced (not a product setting): the gap between it and \
         Decrypt is what durable auditing costs on this disk."
    );
    println!();
    let verdicts: Vec<String> = rows
        .iter()
        .filter(|r| r.concurrency == TARGET_CONCURRENCY && r.workload.is_kms())
        .map(|r| {
            if r.ratio.median.is_nan() {
                return format!("{} not measured (no echo run)", r.workload.name());
            }
            let verdict = if r.ratio.median >= TARGET_RATIO {
                "PASS"
            } else {
                "BELOW"
            };
            format!("{} {:.2}× {verdict}", r.workload.name(), r.ratio.median)
        })
        .collect();
    println!(
        "Target at concurrency {TARGET_CONCURRENCY}: ≥ {TARGET_RATIO}× echo throughput \
         (informative only): {}",
        verdicts.join(", ")
    );
}

/// One workload at one concurrency level, over its rounds.
struct Row {
    workload: Workload,
    concurrency: usize,
    /// Medians over the rounds.
    throughput: f64,
    p50: Duration,
    p99: Duration,
    /// The median of the rounds' ratios to their echo, and their range.
    ratio: Spread,
    /// Mean over the rounds that synced.
    records_per_sync: Option<f64>,
}

/// The report's rows, in the order the workloads first ran.
fn summarize(results: &[RunResult]) -> Vec<Row> {
    common::groups(results, |r| (r.concurrency, r.workload))
        .into_iter()
        .map(|((concurrency, workload), runs)| {
            let syncs: Vec<f64> = runs.iter().filter_map(|r| r.records_per_sync).collect();
            Row {
                workload,
                concurrency,
                throughput: Spread::of(runs.iter().map(|r| r.throughput)).median,
                p50: seconds(Spread::of(runs.iter().map(|r| r.p50.as_secs_f64())).median),
                p99: seconds(Spread::of(runs.iter().map(|r| r.p99.as_secs_f64())).median),
                ratio: Spread::of(runs.iter().map(|r| ratio(results, r))),
                records_per_sync: (!syncs.is_empty())
                    .then(|| syncs.iter().sum::<f64>() / syncs.len() as f64),
            }
        })
        .collect()
}

/// `r`'s throughput over that of the echo of the same level and round.
fn ratio(results: &[RunResult], r: &RunResult) -> f64 {
    results
        .iter()
        .find(|e| {
            e.workload == Workload::Echo && e.concurrency == r.concurrency && e.round == r.round
        })
        .map_or(f64::NAN, |echo| r.throughput / echo.throughput)
}

async fn bench() -> Result<(), BoxError> {
    let settings = settings()?;
    let dir = tempfile::tempdir()?;
    let data_dir: PathBuf = dir.path().join("kms");

    let fsync = {
        let dir = dir.path().to_path_buf();
        let samples = if settings.smoke { 20 } else { 300 };
        tokio::task::spawn_blocking(move || fsync_baseline(&dir, samples)).await??
    };
    let (echo_addr, echo_stop, echo_task) = start_echo().await?;
    let mut config = ServeConfig::for_data_dir(data_dir.clone());
    if let Ok(us) = std::env::var("BENCH_COMMIT_DELAY_US") {
        config.storage.audit_commit_delay_us = us.parse().map_err(|_| {
            format!(
                "BENCH_COMMIT_DELAY_US={us:?}: give the audit commit delay in microseconds \
                 (0 to {}, as --audit-commit-delay-us)",
                kms_service::audit::MAX_COMMIT_DELAY.as_micros()
            )
        })?;
    }
    let commit_delay_us = config.storage.audit_commit_delay_us;
    let server = RunningServer::start(config).await?;
    let reference = start_reference(&dir.path().join("reference")).await?;
    let token_file = server
        .admin_token_file
        .clone()
        .ok_or("the new data directory bootstrapped no administrator")?;

    // Run, then stop the servers whatever happened.
    let outcome: Result<Vec<RunResult>, BoxError> = async {
        let context = HashMap::from([
            ("tenant".to_owned(), "bench-tenant".to_owned()),
            ("purpose".to_owned(), "throughput".to_owned()),
        ]);
        let plaintext: Vec<u8> = (0..PLAINTEXT_LEN as u8).collect();
        let token = std::fs::read_to_string(&token_file)?;
        let fx = Arc::new(Fixture {
            echo: connect(echo_addr).await?,
            kms: prepare_target(connect(server.addr).await?, &token, &context, &plaintext).await?,
            reference: prepare_target(
                connect(reference.addr).await?,
                &reference.token,
                &context,
                &plaintext,
            )
            .await?,
            context,
            plaintext,
        });
        let mut results = Vec::new();
        for concurrency in CONCURRENCY {
            if !settings.concurrency.contains(&concurrency) {
                continue;
            }
            for (round, workload) in (0..settings.rounds)
                .flat_map(|round| settings.workloads.iter().map(move |&w| (round, w)))
            {
                let before = server.kms.audit_log().stats();
                let mut result = run(
                    &fx,
                    workload,
                    concurrency,
                    settings.warmup,
                    settings.measure,
                )
                .await?;
                result.round = round;
                let after = server.kms.audit_log().stats();
                if workload.is_kms() && after.syncs > before.syncs {
                    result.records_per_sync = Some(
                        (after.records_durable - before.records_durable) as f64
                            / (after.syncs - before.syncs) as f64,
                    );
                }
                eprintln!(
                    "{:>20} c={concurrency:<3} round {} {:>8.0} req/s",
                    workload.name(),
                    round + 1,
                    result.throughput
                );
                results.push(result);
            }
        }
        Ok(results)
    }
    .await;

    let _ = echo_stop.send(());
    let echo_stopped = echo_task.await;
    let kms_stopped = server.stop().await;
    let _ = reference.stop.send(());
    let reference_stopped = reference.task.await;
    let results = outcome?;
    echo_stopped??;
    kms_stopped?;
    reference_stopped??;

    // Every successful KMS call must have left an audit record (a durable
    // one, for the real server).
    let calls = |to_reference: bool| -> u64 {
        results
            .iter()
            .filter(|r| {
                r.workload != Workload::Echo
                    && (r.workload == Workload::DecryptUnsynced) == to_reference
            })
            .map(|r| r.succeeded)
            .sum()
    };
    for (path, calls) in [
        (data_dir.join("audit").join("audit.jsonl"), calls(false)),
        (reference.log_path.clone(), calls(true)),
    ] {
        let records = count_records(&path)?;
        if records < calls {
            return Err(format!(
                "{} has {records} records for {calls} successful KMS calls",
                path.display()
            )
            .into());
        }
    }

    print_report(&settings, &data_dir, commit_delay_us, &fsync, &results);
    Ok(())
}

fn main() -> ExitCode {
    // Default worker count = available cores; the client tasks, both servers
    // and the audit writer thread all compete for them.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("kms_throughput: cannot start tokio: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(bench()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kms_throughput: benchmark aborted: {e}");
            ExitCode::FAILURE
        }
    }
}

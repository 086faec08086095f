//! Throughput of table-service (PutItem, GetItem with the data-key cache off
//! and on, Query and Scan pages of 100 items) over gRPC, beside a bare tonic
//! echo RPC (one hop) and a two-hop echo chain measured in the same run on the
//! same machine.
//!
//! Run with `cargo bench -p lockbox-tests --bench table_throughput` (or
//! `deploy/bench.sh`, which runs it after `kms_throughput`). `BENCH_SECONDS`
//! sets the measured time per run (default 2; each run is preceded by a
//! 0.3 s warm-up); `BENCH_ROUNDS` (default 3) how many times each
//! concurrency level's workloads are run in turn; `BENCH_CONCURRENCY` (e.g.
//! `64`) runs only some of the levels; `BENCH_WORKLOADS` (a comma-separated
//! subset of `echo1`, `echo2`, `put`, `get-cache-off`, `get-cache-on`,
//! `query`, `scan`) runs only some workloads, for a profile of one (a ratio
//! needs its echo).
//!
//! What is measured:
//!
//! * **echo 1-hop**: an in-process tonic server that serves only
//!   `grpc.health.v1.Health`; the client calls `Health/Check`, a bare unary
//!   RPC that does no work: client → echo.
//! * **echo 2-hop**: a second in-process tonic server, a proxy that
//!   implements `Health` itself and whose `Check` forwards the request
//!   (with its `authorization` header) to the 1-hop echo server through one
//!   shared tonic `Channel`, and returns its answer: client → proxy → echo,
//!   the same shape as client → table-service → kms-service. Its `Watch` is
//!   never called and answers `Unimplemented`.
//! * **table-service**: one real kms-service ([`KmsServer`]: SQLite key
//!   store, audit log durable, every call acknowledged only after its audit
//!   record is `fsync`ed, group-committed) and two real table-service
//!   instances ([`TableServer`]) on it, each with its own SQLite item store:
//!   - *cache off*: data-key cache and authorization cache disabled (TTL 0),
//!     so every request has kms-service decide its table action, and every
//!     item read is one kms `Decrypt` on behalf of the caller (a GetItem and
//!     a PutItem make one call, the Decrypt or GenerateDataKey conditional
//!     on the decision; a Query or Scan asks `Authorize`, then Decrypts);
//!   - *cache on*: data-key cache 60 s (the default) and authorization cache
//!     60 s, warmed before each run, so a GetItem needs no kms-service call.
//!
//!   One customer managed key; table `items` (partition key S `pk`, sort key
//!   N `sk`) on both instances, preloaded with 1000 items of ~200 bytes of
//!   attributes in 10 partitions of 100 (`q`, `p1` … `p9`); table `puts` on
//!   the cache-off instance takes the PutItem runs (a fresh key per put).
//!   - **PutItem** (cache off): one `GenerateDataKey` conditional on
//!     `table:PutItem` (`x-authorize`), then seal and store.
//!   - **GetItem** (cache off / cache on): one of the 1000 items, each
//!     client task walking through them; the answer is checked. Cache
//!     off, it is one `Decrypt` conditional on `table:GetItem`
//!     (`x-authorize`); cache on, no kms-service call.
//!   - **Query** (cache off): the whole 100-item partition `q` as one page
//!     (`limit` 100): `Authorize` + 100 `Decrypt`s, which table-service
//!     issues concurrently. 100 items, in sort-key order, are checked.
//!   - **Scan** (cache off): one page of 100 items (`limit` 100), the tasks
//!     cycling over the table's 10 pages (start keys found up front).
//!
//! For each concurrency level (1, 16, 64) the seven workloads run one after
//! the other, and that sequence is repeated `BENCH_ROUNDS` times. Each
//! round's ratios are to the echoes of the same round, measured seconds
//! before, so slow drift in a shared, noisy machine hits both sides of a
//! ratio alike; the report gives the median over the rounds, and the range
//! of the ratios, so one disturbed run neither makes nor breaks a row. Each
//! run has `c` client tasks issuing requests back to back on one shared tonic
//! `Channel` per server (one HTTP/2 connection, multiplexed), the same scheme
//! for every workload; all servers accept connections the same way
//! (`serve_with_incoming_shutdown` over `lockbox_proto::tcp::incoming`: TCP_NODELAY, small
//! messages coalesced into one write). A run warms
//! up for 0.3 s and until every client task has had an answer; its measured
//! window is `BENCH_SECONDS` long, extended if needed until it holds at least
//! max(c, 10) requests (a cache-off Query at concurrency 64 puts 6,400 kms
//! Decrypts in flight, and its rounds take longer than a short window).
//! Throughput counts the requests that completed inside the measured window;
//! latency is per request, client-observed. "kms calls/req" is the number of kms-service
//! audit records written during the run divided by the requests made (warm-up
//! and tail included): it shows what each request costs in kms round trips
//! (e.g. 0 for a cached GetItem, 101 for a cache-off Query of 100 items).
//!
//! Client and servers share one multi-threaded tokio runtime in this process,
//! and so share the machine's cores: the numbers are for the whole loop
//! (client + servers), the same for the echoes and the services, which is why
//! only the ratios to the echoes are meaningful across machines.
//!
//! Targets (informative only, never fail the run): GetItem with the cache off
//! ≥ 0.6× the two-hop echo; GetItem with the cache on ≥ 0.6× the one-hop
//! echo; Query/Scan unwrap their page's data keys in parallel. For the last,
//! the report compares, at concurrency 1, the latency of a Query of 100 items
//! with that of one cache-off GetItem, and, after the runs, reads kms-service's
//! audit log around 20 single requests: the spread of the `event_time`s of
//! one Query's 100 Decrypts against the gap between the Authorize and the
//! GenerateDataKey of a PutItem with a condition (one table-service →
//! kms-service round trip, which a one-after-another unwrapping would pay
//! 99 times; a plain PutItem or a cache-off GetItem makes one call,
//! conditional on its decision, so it shows none). The audit times do not
//! depend on the client ↔ table-service hop, whose latency can hide the
//! difference.
//!
//! Any failed request (or a wrong answer) aborts the benchmark with a message
//! and a non-zero exit code: a failure is never counted as throughput.
//!
//! Under `cargo test --all-targets` (no `--bench` argument) it runs as a
//! quick smoke test with very short windows, 200 items and concurrency 1 and
//! 4 only: that checks it works, not how fast.

/// The services' own allocator (their binaries set it), so what is measured
/// in process is what they run with; the echo servers share it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod common;

use std::collections::{HashMap, HashSet};
use std::error::Error;
use std::future::Future;
use std::io::{Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use kms_service::config::ServeConfig as KmsConfig;
use kms_service::server::RunningServer as KmsServer;
use lockbox_proto::kms::v1::CreateKeyRequest;
use lockbox_proto::kms::v1::key_management_service_client::KeyManagementServiceClient;
use lockbox_proto::table::v1 as pb;
use lockbox_proto::table::v1::table_service_client::TableServiceClient;
use table_service::config::ServeConfig as TableConfig;
use table_service::server::RunningServer as TableServer;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

use common::{Spread, seconds};

type BoxError = Box<dyn Error + Send + Sync>;
type Attributes = HashMap<String, pb::AttributeValue>;

const CONCURRENCY: [usize; 3] = [1, 16, 64];
/// Concurrency of a smoke run: a debug build cannot keep 6,400 Decrypts
/// within table-service's kms-service deadline.
const SMOKE_CONCURRENCY: [usize; 2] = [1, 4];
const WORKLOADS: [Workload; 7] = [
    Workload::Echo1,
    Workload::Echo2,
    Workload::PutItem,
    Workload::GetItemCacheOff,
    Workload::GetItemCacheOn,
    Workload::Query,
    Workload::Scan,
];
const TARGET_RATIO: f64 = 0.6;
/// Fewest requests a measured window holds (and at least one per task).
const MIN_SAMPLES: usize = 10;
/// The same in a smoke run.
const SMOKE_MIN_SAMPLES: usize = 2;
/// Single GetItem + Query pairs of the parallel-unwrapping probe.
const PROBES: usize = 20;
const SMOKE_PROBES: usize = 3;
const DEFAULT_SECONDS: f64 = 2.0;
const WARMUP: Duration = Duration::from_millis(300);
/// Items per partition, per Query page and per Scan page.
const PAGE: usize = 100;
/// Partitions of the `items` table (`q`, `p1`, …): 1000 items.
const PARTITIONS: usize = 10;
/// Partitions in a smoke run: 200 items.
const SMOKE_PARTITIONS: usize = 2;
/// The partition read by the Query workload.
const QUERY_PARTITION: &str = "q";
const ITEMS_TABLE: &str = "items";
const PUTS_TABLE: &str = "puts";
/// Length of the `payload` attribute; with the other attributes an item
/// holds about 200 bytes.
const PAYLOAD_LEN: usize = 160;
/// Client tasks used to preload items and warm the cache.
const SETUP_TASKS: usize = 32;
/// Data-key and authorization cache lifetime of the cache-on instance.
const CACHE_TTL_SECS: u64 = 60;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Workload {
    Echo1,
    Echo2,
    PutItem,
    GetItemCacheOff,
    GetItemCacheOn,
    Query,
    Scan,
}

impl Workload {
    /// Its name in `BENCH_WORKLOADS`.
    fn key(self) -> &'static str {
        match self {
            Workload::Echo1 => "echo1",
            Workload::Echo2 => "echo2",
            Workload::PutItem => "put",
            Workload::GetItemCacheOff => "get-cache-off",
            Workload::GetItemCacheOn => "get-cache-on",
            Workload::Query => "query",
            Workload::Scan => "scan",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Workload::Echo1 => "echo 1-hop (Health/Check)",
            Workload::Echo2 => "echo 2-hop (via proxy)",
            Workload::PutItem => "PutItem (cache off)",
            Workload::GetItemCacheOff => "GetItem cache off",
            Workload::GetItemCacheOn => "GetItem cache on",
            Workload::Query => "Query 100 items (cache off)",
            Workload::Scan => "Scan 100 items (cache off)",
        }
    }

    /// Items each successful request returns (for items/s).
    fn items(self) -> Option<usize> {
        match self {
            Workload::Query | Workload::Scan => Some(PAGE),
            _ => None,
        }
    }

    fn is_echo(self) -> bool {
        matches!(self, Workload::Echo1 | Workload::Echo2)
    }
}

/// The two-hop echo: a `Health` service whose `Check` forwards to the
/// one-hop echo server through one shared channel and returns its answer.
struct Proxy {
    upstream: Channel,
}

#[tonic::async_trait]
impl Health for Proxy {
    async fn check(
        &self,
        request: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<HealthCheckResponse>, tonic::Status> {
        let authorization = request.metadata().get("authorization").cloned();
        let mut forward = tonic::Request::new(request.into_inner());
        if let Some(value) = authorization {
            forward.metadata_mut().insert("authorization", value);
        }
        let answer = HealthClient::new(self.upstream.clone())
            .check(forward)
            .await?
            .into_inner();
        Ok(tonic::Response::new(answer))
    }

    /// Never called by the benchmark.
    type WatchStream = tokio_stream::Empty<Result<HealthCheckResponse, tonic::Status>>;

    async fn watch(
        &self,
        _request: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<Self::WatchStream>, tonic::Status> {
        Err(tonic::Status::unimplemented(
            "the benchmark proxy forwards Check only",
        ))
    }
}

/// Everything the client tasks share.
struct Fixture {
    echo: Channel,
    proxy: Channel,
    /// table-service with both caches off.
    cache_off: Channel,
    /// table-service with both caches on.
    cache_on: Channel,
    /// `Bearer <admin token>`; sent on echo requests too, so every request
    /// carries the same headers (the health services ignore it).
    authorization: MetadataValue<Ascii>,
    /// Items in the `items` table (`partitions × PAGE`).
    item_count: usize,
    /// `exclusive_start_key` of each full Scan page of `items` on the
    /// cache-off instance (the first is empty).
    scan_starts: Vec<Attributes>,
    /// Source of fresh PutItem keys.
    next_put: AtomicU64,
}

impl Fixture {
    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request
            .metadata_mut()
            .insert("authorization", self.authorization.clone());
        request
    }

    /// A PutItem of a fresh item into the puts table.
    fn new_put(&self, conditions: Vec<pb::Condition>) -> tonic::Request<pb::PutItemRequest> {
        let id = self.next_put.fetch_add(1, Ordering::Relaxed);
        self.request(pb::PutItemRequest {
            table_name: PUTS_TABLE.into(),
            item: item(&format!("put-{id}"), id),
            conditions,
            ..Default::default()
        })
    }
}

fn s(value: &str) -> pb::AttributeValue {
    pb::AttributeValue {
        value: Some(pb::attribute_value::Value::S(value.into())),
    }
}

fn n(value: &str) -> pb::AttributeValue {
    pb::AttributeValue {
        value: Some(pb::attribute_value::Value::N(value.into())),
    }
}

fn partition(index: usize) -> String {
    if index == 0 {
        QUERY_PARTITION.to_owned()
    } else {
        format!("p{index}")
    }
}

/// The key of item `index` of the `items` table.
fn item_key_of(index: usize) -> (String, u64) {
    (partition(index / PAGE), (index % PAGE) as u64)
}

fn key(pk: &str, sk: u64) -> Attributes {
    HashMap::from([
        ("pk".to_owned(), s(pk)),
        ("sk".to_owned(), n(&sk.to_string())),
    ])
}

/// Deterministic ~160-character payload of an item, checked on every read.
fn payload(pk: &str, sk: u64) -> String {
    let seed = format!("{pk}/{sk}:lorem-ipsum-dolor-sit-amet;");
    let mut text = seed.repeat(PAYLOAD_LEN / seed.len() + 1);
    text.truncate(PAYLOAD_LEN);
    text
}

/// An item of about 200 bytes of attributes.
fn item(pk: &str, sk: u64) -> Attributes {
    let mut item = key(pk, sk);
    item.insert("payload".into(), s(&payload(pk, sk)));
    item.insert("owner".into(), s("bench-tenant"));
    item.insert("amount".into(), n(&format!("{sk}.25")));
    item.insert(
        "active".into(),
        pb::AttributeValue {
            value: Some(pb::attribute_value::Value::Bool(sk.is_multiple_of(2))),
        },
    );
    item
}

fn string_of<'a>(item: &'a Attributes, name: &str) -> Option<&'a str> {
    match item.get(name)?.value.as_ref()? {
        pb::attribute_value::Value::S(v) | pb::attribute_value::Value::N(v) => Some(v),
        _ => None,
    }
}

/// Checks a returned item against what was stored; returns its key.
fn check_item(item: &Attributes) -> Result<(String, u64), String> {
    let pk = string_of(item, "pk").ok_or("an item came back without pk")?;
    let sk: u64 = string_of(item, "sk")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("item {pk} came back without a valid sk"))?;
    if item != &self::item(pk, sk) {
        return Err(format!(
            "item ({pk}, {sk}) came back with the wrong attributes"
        ));
    }
    Ok((pk.to_owned(), sk))
}

/// The client stubs and position of one task.
struct Clients {
    echo: HealthClient<Channel>,
    proxy: HealthClient<Channel>,
    cache_off: TableServiceClient<Channel>,
    cache_on: TableServiceClient<Channel>,
    /// Which item or page this task asks for next.
    cursor: usize,
}

impl Clients {
    fn new(fx: &Fixture, task: usize) -> Self {
        Clients {
            echo: HealthClient::new(fx.echo.clone()),
            proxy: HealthClient::new(fx.proxy.clone()),
            cache_off: TableServiceClient::new(fx.cache_off.clone()),
            cache_on: TableServiceClient::new(fx.cache_on.clone()),
            // Spread the tasks over the items.
            cursor: task.wrapping_mul(7919),
        }
    }

    fn next(&mut self, modulo: usize) -> usize {
        let position = self.cursor % modulo;
        self.cursor = self.cursor.wrapping_add(1);
        position
    }
}

/// One request of `workload`, its answer checked.
async fn call(fx: &Fixture, clients: &mut Clients, workload: Workload) -> Result<(), String> {
    let fail = |status: tonic::Status| {
        // Transport failures carry their cause as the source.
        let mut cause = String::new();
        let mut source = Error::source(&status);
        while let Some(e) = source {
            cause.push_str(&format!(": {e}"));
            source = e.source();
        }
        format!(
            "{} failed: {:?}: {}{cause}",
            workload.name(),
            status.code(),
            status.message()
        )
    };
    match workload {
        Workload::Echo1 | Workload::Echo2 => {
            let client = if workload == Workload::Echo1 {
                &mut clients.echo
            } else {
                &mut clients.proxy
            };
            let response = client
                .check(fx.request(HealthCheckRequest {
                    service: String::new(),
                }))
                .await
                .map_err(fail)?
                .into_inner();
            if response.status != ServingStatus::Serving as i32 {
                return Err(format!("echo answered status {}", response.status));
            }
        }
        Workload::PutItem => {
            clients
                .cache_off
                .put_item(fx.new_put(vec![]))
                .await
                .map_err(fail)?;
        }
        Workload::GetItemCacheOff | Workload::GetItemCacheOn => {
            let (pk, sk) = item_key_of(clients.next(fx.item_count));
            let client = if workload == Workload::GetItemCacheOff {
                &mut clients.cache_off
            } else {
                &mut clients.cache_on
            };
            get_item(fx, client, &pk, sk).await.map_err(|e| match e {
                Ok(status) => fail(status),
                Err(message) => message,
            })?;
        }
        Workload::Query => {
            let items = clients
                .cache_off
                .query(fx.request(pb::QueryRequest {
                    table_name: ITEMS_TABLE.into(),
                    partition_key_value: Some(s(QUERY_PARTITION)),
                    limit: PAGE as u32,
                    ..Default::default()
                }))
                .await
                .map_err(fail)?
                .into_inner()
                .items;
            if items.len() != PAGE {
                return Err(format!("Query returned {} items, not {PAGE}", items.len()));
            }
            for (expected, item) in items.iter().enumerate() {
                let (pk, sk) = check_item(&item.attributes)?;
                if pk != QUERY_PARTITION || sk != expected as u64 {
                    return Err(format!(
                        "Query returned ({pk}, {sk}) at position {expected}"
                    ));
                }
            }
        }
        Workload::Scan => {
            let start = &fx.scan_starts[clients.next(fx.scan_starts.len())];
            let items = clients
                .cache_off
                .scan(fx.request(pb::ScanRequest {
                    table_name: ITEMS_TABLE.into(),
                    limit: PAGE as u32,
                    exclusive_start_key: start.clone(),
                    ..Default::default()
                }))
                .await
                .map_err(fail)?
                .into_inner()
                .items;
            if items.len() != PAGE {
                return Err(format!("Scan returned {} items, not {PAGE}", items.len()));
            }
            for item in &items {
                check_item(&item.attributes)?;
            }
        }
    }
    Ok(())
}

/// GetItem of (pk, sk), checked: `Err(Ok(status))` when the call failed,
/// `Err(Err(message))` when it answered the wrong item.
async fn get_item(
    fx: &Fixture,
    client: &mut TableServiceClient<Channel>,
    pk: &str,
    sk: u64,
) -> Result<(), Result<tonic::Status, String>> {
    let got = client
        .get_item(fx.request(pb::GetItemRequest {
            table_name: ITEMS_TABLE.into(),
            key: key(pk, sk),
        }))
        .await
        .map_err(Ok)?
        .into_inner()
        .item;
    if got.is_empty() {
        return Err(Err(format!("GetItem found no item ({pk}, {sk})")));
    }
    let found = check_item(&got).map_err(Err)?;
    if found != (pk.to_owned(), sk) {
        return Err(Err(format!(
            "GetItem of ({pk}, {sk}) returned ({}, {})",
            found.0, found.1
        )));
    }
    Ok(())
}

/// When one run measures: shared by its client tasks.
///
/// The warm-up lasts `warmup` and until every task has completed one
/// request (a Query at concurrency 64 keeps kms-service busy with 6,400
/// Decrypts before its first answer). The measured window then lasts
/// `measure`, and longer if needed until `min_samples` requests completed
/// inside it, so that slow workloads are measured over whole rounds of
/// requests rather than over a burst or nothing.
struct RunClock {
    begin: Instant,
    warmup: Duration,
    measure: Duration,
    tasks: usize,
    min_samples: usize,
    /// Tasks that have completed a request.
    warmed: AtomicUsize,
    /// Start of the measured window, once every task has warmed up.
    start: OnceLock<Instant>,
    /// Requests completed in the measured window so far.
    counted: AtomicUsize,
    abort: AtomicBool,
}

impl RunClock {
    /// Whether a task should issue another request at `now`.
    fn go_on(&self, now: Instant) -> bool {
        if self.abort.load(Ordering::Relaxed) {
            return false;
        }
        match self.start.get() {
            None => true,
            Some(&start) => {
                now < start + self.measure
                    || self.counted.load(Ordering::Relaxed) < self.min_samples
            }
        }
    }

    /// Records that a task completed a request at `done`.
    fn completed(&self, done: Instant, first: bool) {
        if first && self.warmed.fetch_add(1, Ordering::AcqRel) + 1 == self.tasks {
            let _ = self.start.set(done.max(self.begin + self.warmup));
        }
        if self.start.get().is_some_and(|&start| done >= start) {
            self.counted.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// What one client task saw: (completion time, latency) of every
/// successful request, warm-up and tail included.
type TaskResult = Vec<(Instant, Duration)>;

/// Issues requests back to back until the run's clock says stop; requests in
/// flight at the end are still awaited and checked.
async fn client_task(
    fx: Arc<Fixture>,
    task: usize,
    workload: Workload,
    clock: Arc<RunClock>,
) -> Result<TaskResult, String> {
    let mut clients = Clients::new(&fx, task);
    let mut completions = Vec::with_capacity(4096);
    loop {
        let start = Instant::now();
        if !clock.go_on(start) {
            break;
        }
        if let Err(message) = call(&fx, &mut clients, workload).await {
            clock.abort.store(true, Ordering::Relaxed);
            return Err(message);
        }
        let done = Instant::now();
        clock.completed(done, completions.is_empty());
        completions.push((done, done - start));
    }
    Ok(completions)
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
    /// Length of the measured window.
    window: Duration,
    /// Requests completed inside it.
    samples: usize,
    /// kms-service audit records written during the run per successful
    /// request (warm-up and tail included).
    kms_calls_per_request: f64,
}

async fn run(
    fx: &Arc<Fixture>,
    audit: &mut AuditCounter,
    workload: Workload,
    concurrency: usize,
    warmup: Duration,
    measure: Duration,
    min_samples: usize,
) -> Result<RunResult, String> {
    audit
        .take()
        .map_err(|e| format!("reading the audit log: {e}"))?;
    let clock = Arc::new(RunClock {
        begin: Instant::now(),
        warmup,
        measure,
        tasks: concurrency,
        min_samples: concurrency.max(min_samples),
        warmed: AtomicUsize::new(0),
        start: OnceLock::new(),
        counted: AtomicUsize::new(0),
        abort: AtomicBool::new(false),
    });
    let tasks: Vec<_> = (0..concurrency)
        .map(|task| tokio::spawn(client_task(fx.clone(), task, workload, clock.clone())))
        .collect();
    let mut completions = Vec::new();
    let mut first_error = None;
    for task in tasks {
        match task.await {
            Ok(Ok(result)) => completions.extend(result),
            Ok(Err(message)) => {
                first_error.get_or_insert(message);
            }
            Err(join) => {
                first_error.get_or_insert(format!("client task failed: {join}"));
            }
        }
    }
    let context = |message: String| {
        format!(
            "{} at concurrency {concurrency}: {message}",
            workload.name()
        )
    };
    if let Some(message) = first_error {
        return Err(context(message));
    }
    // Every acknowledged kms-service call has its audit record on disk.
    let kms_calls = audit
        .take()
        .map_err(|e| context(format!("reading the audit log: {e}")))?;
    let succeeded = completions.len();
    let start = *clock
        .start
        .get()
        .ok_or_else(|| context("the warm-up never ended".into()))?;
    // The window: `measure` long, or up to the completion that brought it
    // to `min_samples` requests.
    completions.sort_unstable_by_key(|&(done, _)| done);
    let inside: Vec<_> = completions
        .iter()
        .filter(|&&(done, _)| done >= start)
        .collect();
    let end = inside
        .get(clock.min_samples.saturating_sub(1))
        .map_or(start + measure, |&&(done, _)| done.max(start + measure));
    let mut latencies: Vec<Duration> = inside
        .iter()
        .filter(|&&&(done, _)| done <= end)
        .map(|&&(_, latency)| latency)
        .collect();
    if latencies.is_empty() {
        return Err(context("no request completed in the window".into()));
    }
    latencies.sort_unstable();
    let window = end - start;
    Ok(RunResult {
        workload,
        concurrency,
        round: 0,
        throughput: latencies.len() as f64 / window.as_secs_f64(),
        p50: quantile(&latencies, 0.50),
        p99: quantile(&latencies, 0.99),
        window,
        samples: latencies.len(),
        kms_calls_per_request: kms_calls as f64 / succeeded.max(1) as f64,
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

/// Counts the records appended to kms-service's audit log since the last
/// look (one line per kms-service call).
struct AuditCounter {
    path: PathBuf,
    offset: u64,
    /// Rotated segments of the log already accounted for.
    segments: usize,
}

impl AuditCounter {
    /// The complete records appended since the last look; a partial line is
    /// left for the next one. Follows the log across rotations: a segment
    /// that appeared since the last look is the file read up to `offset`
    /// then (or one written whole since). Called between runs, when nothing
    /// is being written, so the log is not rotated while it reads.
    fn take_records(&mut self) -> Result<Vec<u8>, BoxError> {
        let mut segments = Vec::new();
        let dir = self
            .path
            .parent()
            .ok_or("an audit log path without a directory")?;
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("audit-") && name.ends_with(".jsonl") {
                segments.push(entry.path());
            }
        }
        // Named by their first sequence, zero-padded: in chain order.
        segments.sort();
        let mut data = Vec::new();
        for segment in segments.iter().skip(self.segments) {
            let mut file = std::fs::File::open(segment)?;
            file.seek(SeekFrom::Start(self.offset))?;
            file.read_to_end(&mut data)?;
            self.offset = 0;
        }
        self.segments = segments.len();
        let mut file = std::fs::File::open(&self.path)?;
        file.seek(SeekFrom::Start(self.offset))?;
        let start = data.len();
        file.read_to_end(&mut data)?;
        let complete = data.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        data.truncate(complete);
        self.offset += complete.saturating_sub(start) as u64;
        Ok(data)
    }

    /// How many records were appended since the last look.
    fn take(&mut self) -> Result<u64, BoxError> {
        Ok(self.take_records()?.iter().filter(|&&b| b == b'\n').count() as u64)
    }

    /// `(event_name, event_time in ms)` of the records appended since the
    /// last look.
    fn take_events(&mut self) -> Result<Vec<(String, i64)>, BoxError> {
        let data = self.take_records()?;
        let mut events = Vec::new();
        for line in data.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let record: serde_json::Value = serde_json::from_slice(line)?;
            let name = record["event_name"]
                .as_str()
                .ok_or("an audit record without event_name")?;
            let time = record["event_time"]
                .as_str()
                .ok_or("an audit record without event_time")?;
            let ms = rfc3339_ms(time).ok_or_else(|| format!("audit event_time {time:?}"))?;
            events.push((name.to_owned(), ms));
        }
        Ok(events)
    }
}

/// Milliseconds since 1970 of `YYYY-MM-DDTHH:MM:SS.mmmZ`.
fn rfc3339_ms(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    if b.len() != 24 || b[23] != b'Z' {
        return None;
    }
    let num = |range: std::ops::Range<usize>| text.get(range)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss, millis) = (num(11..13)?, num(14..16)?, num(17..19)?, num(20..23)?);
    // Days from civil (proleptic Gregorian), 1970-01-01 = 0.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((((days * 24 + hh) * 60 + mm) * 60 + ss) * 1000 + millis)
}

/// How a page's data keys were unwrapped, read off kms-service's audit log
/// (`event_time` is taken when a record is sealed, to the millisecond), from
/// single requests at concurrency 1 on the otherwise idle services.
struct UnwrapProbe {
    probes: usize,
    /// Mean time from a conditional PutItem's Authorize record to its
    /// GenerateDataKey record: one table-service → kms-service round trip
    /// (and a point read), as a sequential unwrapping would pay it per item.
    round_trip_ms: f64,
    /// Mean time from the first to the last Decrypt record of one cache-off
    /// Query of `PAGE` items.
    query_span_ms: f64,
}

async fn probe_unwrapping(
    fx: &Fixture,
    audit: &mut AuditCounter,
    probes: usize,
) -> Result<UnwrapProbe, BoxError> {
    let mut clients = Clients::new(fx, 0);
    let (mut round_trips, mut spans) = (0i64, 0i64);
    for _ in 0..probes {
        audit.take()?;
        // A PutItem with a condition asks `Authorize` before it reads the
        // item and asks for its data key.
        let absent = pb::Condition {
            kind: Some(pb::condition::Kind::AttributeNotExists("pk".into())),
        };
        clients
            .cache_off
            .put_item(fx.new_put(vec![absent]))
            .await
            .map_err(|status| format!("a conditional PutItem failed: {status}"))?;
        let events = audit.take_events()?;
        let time_of = |name: &str| {
            events
                .iter()
                .find(|(n, _)| n == name)
                .map(|&(_, t)| t)
                .ok_or_else(|| format!("a conditional PutItem left no {name} audit record"))
        };
        round_trips += time_of("GenerateDataKey")? - time_of("Authorize")?;

        call(fx, &mut clients, Workload::Query).await?;
        let decrypts: Vec<i64> = audit
            .take_events()?
            .into_iter()
            .filter(|(n, _)| n == "Decrypt")
            .map(|(_, t)| t)
            .collect();
        if decrypts.len() != PAGE {
            return Err(format!(
                "a cache-off Query of {PAGE} items left {} Decrypt audit records",
                decrypts.len()
            )
            .into());
        }
        let (first, last) = (decrypts.iter().min(), decrypts.iter().max());
        spans += last.zip(first).map_or(0, |(l, f)| l - f);
    }
    Ok(UnwrapProbe {
        probes,
        round_trip_ms: round_trips as f64 / probes as f64,
        query_span_ms: spans as f64 / probes as f64,
    })
}

/// A tonic server of this process.
struct Spawned {
    addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Spawned {
    async fn stop(self) -> Result<(), BoxError> {
        let _ = self.stop.send(());
        self.task.await??;
        Ok(())
    }
}

/// Serves `router` on an ephemeral port, accepting connections exactly as
/// the services do.
async fn spawn(router: tonic::transport::server::Router) -> Result<Spawned, BoxError> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(router.serve_with_incoming_shutdown(
        lockbox_proto::tcp::incoming(listener),
        async {
            let _ = stopped.await;
        },
    ));
    Ok(Spawned { addr, stop, task })
}

/// The bare tonic server: only `grpc.health.v1.Health`.
async fn start_echo() -> Result<Spawned, BoxError> {
    let (_reporter, health) = tonic_health::server::health_reporter();
    spawn(tonic::transport::Server::builder().add_service(health)).await
}

/// The proxy of the two-hop echo chain, forwarding to `echo`.
async fn start_proxy(echo: Channel) -> Result<Spawned, BoxError> {
    spawn(
        tonic::transport::Server::builder()
            .add_service(HealthServer::new(Proxy { upstream: echo })),
    )
    .await
}

async fn connect(addr: SocketAddr) -> Result<Channel, BoxError> {
    Ok(Channel::from_shared(format!("http://{addr}"))?
        .connect()
        .await?)
}

/// Runs `work(i)` for every `i` in `0..count`, `width` at a time.
async fn parallel<F, Fut>(count: usize, width: usize, work: F) -> Result<(), BoxError>
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let mut set = tokio::task::JoinSet::new();
    for first in 0..width.min(count) {
        let work = work.clone();
        set.spawn(async move {
            for i in (first..count).step_by(width) {
                work(i).await?;
            }
            Ok::<(), String>(())
        });
    }
    while let Some(joined) = set.join_next().await {
        joined??;
    }
    Ok(())
}

fn table_request(name: &str, key_id: &str) -> pb::CreateTableRequest {
    pb::CreateTableRequest {
        table_name: name.into(),
        key_schema: Some(pb::KeySchema {
            partition_key: Some(pb::KeyElement {
                name: "pk".into(),
                r#type: pb::ScalarType::S.into(),
            }),
            sort_key: Some(pb::KeyElement {
                name: "sk".into(),
                r#type: pb::ScalarType::N.into(),
            }),
        }),
        sse_specification: Some(pb::SseSpecification {
            kms_key_id: key_id.into(),
        }),
    }
}

/// Creates the key and the tables, preloads the items, finds the Scan pages.
async fn prepare(
    kms: Channel,
    echo: Channel,
    proxy: Channel,
    cache_off: Channel,
    cache_on: Channel,
    token_file: &Path,
    partitions: usize,
) -> Result<Arc<Fixture>, BoxError> {
    let token = std::fs::read_to_string(token_file)?;
    let authorization: MetadataValue<Ascii> = format!("Bearer {}", token.trim()).parse()?;
    let fx = Fixture {
        echo,
        proxy,
        cache_off,
        cache_on,
        authorization,
        item_count: partitions * PAGE,
        scan_starts: Vec::new(),
        next_put: AtomicU64::new(0),
    };
    let key_id = KeyManagementServiceClient::new(kms)
        .create_key(fx.request(CreateKeyRequest {
            description: "table_throughput benchmark".into(),
            ..Default::default()
        }))
        .await?
        .into_inner()
        .key_metadata
        .ok_or("CreateKey returned no metadata")?
        .key_id;
    let mut off = TableServiceClient::new(fx.cache_off.clone());
    let mut on = TableServiceClient::new(fx.cache_on.clone());
    off.create_table(fx.request(table_request(ITEMS_TABLE, &key_id)))
        .await?;
    off.create_table(fx.request(table_request(PUTS_TABLE, &key_id)))
        .await?;
    on.create_table(fx.request(table_request(ITEMS_TABLE, &key_id)))
        .await?;

    // Preload the same items on both instances.
    let fx = Arc::new(fx);
    for channel in [fx.cache_off.clone(), fx.cache_on.clone()] {
        let fx = fx.clone();
        parallel(fx.item_count, SETUP_TASKS, move |i| {
            let fx = fx.clone();
            let channel = channel.clone();
            async move {
                let (pk, sk) = item_key_of(i);
                TableServiceClient::new(channel)
                    .put_item(fx.request(pb::PutItemRequest {
                        table_name: ITEMS_TABLE.into(),
                        item: item(&pk, sk),
                        ..Default::default()
                    }))
                    .await
                    .map_err(|e| format!("preloading ({pk}, {sk}): {e}"))?;
                Ok(())
            }
        })
        .await?;
    }

    // The start key of every full Scan page of `items`.
    let mut scan_starts = Vec::new();
    let mut seen = HashSet::new();
    let mut start = Attributes::new();
    loop {
        let page = off
            .scan(fx.request(pb::ScanRequest {
                table_name: ITEMS_TABLE.into(),
                limit: PAGE as u32,
                exclusive_start_key: start.clone(),
                ..Default::default()
            }))
            .await?
            .into_inner();
        for item in &page.items {
            seen.insert(check_item(&item.attributes)?);
        }
        if page.items.len() == PAGE {
            scan_starts.push(start);
        }
        if page.last_evaluated_key.is_empty() {
            break;
        }
        start = page.last_evaluated_key;
    }
    if seen.len() != fx.item_count || scan_starts.len() != fx.item_count / PAGE {
        return Err(format!(
            "a Scan of {} items found {} items in {} full pages",
            fx.item_count,
            seen.len(),
            scan_starts.len()
        )
        .into());
    }
    let mut fx = Arc::into_inner(fx).ok_or("the fixture is still shared")?;
    fx.scan_starts = scan_starts;
    Ok(Arc::new(fx))
}

/// Reads every item once through the cache-on instance, so its data-key and
/// authorization caches hold them all.
async fn warm_cache(fx: &Arc<Fixture>) -> Result<(), BoxError> {
    let fx = fx.clone();
    parallel(fx.item_count, SETUP_TASKS, move |i| {
        let fx = fx.clone();
        async move {
            let (pk, sk) = item_key_of(i);
            let mut client = TableServiceClient::new(fx.cache_on.clone());
            get_item(&fx, &mut client, &pk, sk)
                .await
                .map_err(|e| match e {
                    Ok(status) => format!("warming the cache with ({pk}, {sk}): {status}"),
                    Err(message) => format!("warming the cache: {message}"),
                })
        }
    })
    .await
}

struct Settings {
    warmup: Duration,
    measure: Duration,
    smoke: bool,
    partitions: usize,
    concurrency: Vec<usize>,
    min_samples: usize,
    /// Single requests of the parallel-unwrapping probe.
    probes: usize,
    /// How many times each level's workloads run in turn.
    rounds: usize,
    /// The workloads to run (`BENCH_WORKLOADS=get-cache-off`, say, for a
    /// profile of one); all of [`WORKLOADS`] by default. Ratios need the
    /// echoes.
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
    let rounds = common::rounds_setting(smoke)?;
    let workloads = common::workloads_setting(&WORKLOADS, Workload::key)?;
    Ok(match (smoke, seconds) {
        (false, seconds) => Settings {
            warmup: WARMUP,
            measure: Duration::from_secs_f64(seconds.unwrap_or(DEFAULT_SECONDS)),
            smoke,
            partitions: PARTITIONS,
            concurrency: common::concurrency_setting(&CONCURRENCY)?,
            min_samples: MIN_SAMPLES,
            probes: PROBES,
            rounds,
            workloads: workloads.clone(),
        },
        (true, None) => Settings {
            warmup: Duration::from_millis(20),
            measure: Duration::from_millis(100),
            smoke,
            partitions: SMOKE_PARTITIONS,
            concurrency: common::concurrency_setting(&SMOKE_CONCURRENCY)?,
            min_samples: SMOKE_MIN_SAMPLES,
            probes: SMOKE_PROBES,
            rounds,
            workloads: workloads.clone(),
        },
        (true, Some(seconds)) => Settings {
            warmup: WARMUP,
            measure: Duration::from_secs_f64(seconds),
            smoke,
            partitions: SMOKE_PARTITIONS,
            concurrency: common::concurrency_setting(&SMOKE_CONCURRENCY)?,
            min_samples: SMOKE_MIN_SAMPLES,
            probes: SMOKE_PROBES,
            rounds,
            workloads: workloads.clone(),
        },
    })
}

/// `r`'s throughput over that of `reference` in the same level and round.
fn ratio(results: &[RunResult], r: &RunResult, reference: Workload) -> f64 {
    results
        .iter()
        .find(|e| e.workload == reference && e.concurrency == r.concurrency && e.round == r.round)
        .map_or(f64::NAN, |e| r.throughput / e.throughput)
}

/// One workload at one concurrency level, over its rounds: medians, and
/// the ratios' ranges.
struct Row {
    workload: Workload,
    concurrency: usize,
    throughput: f64,
    p50: Duration,
    p99: Duration,
    kms_calls_per_request: f64,
    echo1: Spread,
    echo2: Spread,
    /// Requests counted, over all rounds.
    samples: usize,
    /// The longest measured window of the rounds.
    window: Duration,
}

/// The report's rows, in the order the workloads first ran.
fn summarize(results: &[RunResult]) -> Vec<Row> {
    common::groups(results, |r| (r.concurrency, r.workload))
        .into_iter()
        .map(|((concurrency, workload), runs)| {
            let median = |value: &dyn Fn(&RunResult) -> f64| {
                Spread::of(runs.iter().map(|r| value(r))).median
            };
            Row {
                workload,
                concurrency,
                throughput: median(&|r| r.throughput),
                p50: seconds(median(&|r| r.p50.as_secs_f64())),
                p99: seconds(median(&|r| r.p99.as_secs_f64())),
                kms_calls_per_request: median(&|r| r.kms_calls_per_request),
                echo1: Spread::of(runs.iter().map(|r| ratio(results, r, Workload::Echo1))),
                echo2: Spread::of(runs.iter().map(|r| ratio(results, r, Workload::Echo2))),
                samples: runs.iter().map(|r| r.samples).sum(),
                window: runs.iter().map(|r| r.window).max().unwrap_or_default(),
            }
        })
        .collect()
}

fn find(rows: &[Row], workload: Workload, concurrency: usize) -> Option<&Row> {
    rows.iter()
        .find(|r| r.workload == workload && r.concurrency == concurrency)
}

fn print_report(
    settings: &Settings,
    item_count: usize,
    results: &[RunResult],
    probe: &UnwrapProbe,
) {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!();
    println!("## table-service throughput vs bare tonic RPCs");
    println!();
    if settings.smoke {
        println!("Smoke run (no `--bench` argument): windows too short to mean anything.");
        println!();
    }
    println!(
        "{cores} cores shared by client and servers (one process, one tokio runtime); \
         {:.1} s measured per run after a warm-up of {:.1} s and until every client task has \
         had an answer; windows are extended until they hold at least max(c, {}) \
         requests; one HTTP/2 channel per server and run; {} round(s) of every workload \
         per concurrency level.",
        settings.measure.as_secs_f64(),
        settings.warmup.as_secs_f64(),
        settings.min_samples,
        settings.rounds,
    );
    println!(
        "echo 1-hop = `grpc.health.v1.Health/Check` on a bare in-process tonic server \
         (client → echo); echo 2-hop = the same call through a tonic proxy that forwards it \
         over one shared channel (client → proxy → echo)."
    );
    println!(
        "table-service = two real instances on one real kms-service (SQLite stores, durable \
         fsync'ed group-committed audit log): cache off = data-key and authorization caches \
         disabled; cache on = both cached for {CACHE_TTL_SECS} s, warmed before the run. \
         {item_count} items of ~200 bytes; Query = one 100-item partition, Scan = one \
         100-item page."
    );
    println!(
        "kms calls/req = kms-service audit records written during the run ÷ requests \
         (every kms-service call is audited)."
    );
    println!(
        "Each row gives the median over the rounds (req/s, p50, p99, kms calls, ratios); in \
         brackets, the lowest and highest of the rounds' ratios, each to that round's echo; \
         requests = all counted, window s = the longest of the rounds."
    );
    let rows = summarize(results);
    println!();
    println!(
        "| workload | concurrency | req/s | items/s | p50 ms | p99 ms | kms calls/req \
         | ÷ echo 1-hop | ÷ echo 2-hop | requests | window s |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        let items = r.workload.items().map_or_else(
            || "–".to_owned(),
            |k| format!("{:.0}", r.throughput * k as f64),
        );
        let kms = if r.workload.is_echo() {
            "–".to_owned()
        } else {
            format!("{:.2}", r.kms_calls_per_request)
        };
        println!(
            "| {} | {} | {:.0} | {items} | {:.3} | {:.3} | {kms} | {} | {} | {} | {:.2} |",
            r.workload.name(),
            r.concurrency,
            r.throughput,
            ms(r.p50),
            ms(r.p99),
            r.echo1.ratio_text(),
            r.echo2.ratio_text(),
            r.samples,
            r.window.as_secs_f64(),
        );
    }
    println!();
    for (workload, reference, label) in [
        (Workload::GetItemCacheOff, Workload::Echo2, "two-hop"),
        (Workload::GetItemCacheOn, Workload::Echo1, "one-hop"),
    ] {
        let verdicts: Vec<String> = settings
            .concurrency
            .iter()
            .filter_map(|&c| find(&rows, workload, c))
            .map(|r| {
                let x = if reference == Workload::Echo1 {
                    r.echo1.median
                } else {
                    r.echo2.median
                };
                if x.is_nan() {
                    return format!("c={} not measured (no echo run)", r.concurrency);
                }
                let verdict = if x >= TARGET_RATIO { "PASS" } else { "BELOW" };
                format!("c={} {x:.2}× {verdict}", r.concurrency)
            })
            .collect();
        println!(
            "Target: {} ≥ {TARGET_RATIO}× the {label} echo throughput (informative only): {}",
            workload.name(),
            verdicts.join(", ")
        );
    }
    if let (Some(query), Some(get)) = (
        find(&rows, Workload::Query, 1),
        find(&rows, Workload::GetItemCacheOff, 1),
    ) {
        let times = query.p50.as_secs_f64() / get.p50.as_secs_f64();
        println!(
            "Query vs GetItem (concurrency 1, p50): a Query of {PAGE} items took {:.3} ms \
             = {times:.1}× one cache-off GetItem ({:.3} ms) = {:.3}× {PAGE} GetItems; it made \
             {:.0} kms calls against the GetItem's {:.0}.",
            ms(query.p50),
            ms(get.p50),
            times / PAGE as f64,
            query.kms_calls_per_request,
            get.kms_calls_per_request,
        );
    }
    // One after another, the Decrypts of a page would be one round trip
    // apart: their span would be (PAGE - 1) round trips.
    let sequential = (PAGE - 1) as f64 * probe.round_trip_ms;
    let verdict = if probe.query_span_ms * 4.0 <= sequential {
        "PARALLEL"
    } else {
        "NOT CLEARLY PARALLEL"
    };
    println!(
        "Parallel unwrapping (kms-service audit times, ms resolution, mean of {} single \
         requests at concurrency 1): the {PAGE} Decrypts of one Query were sealed within \
         {:.1} ms; one after another they would span ~{} × {:.2} ms (a conditional \
         PutItem's Authorize → GenerateDataKey round trip) = {sequential:.0} ms: {verdict} (informative only).",
        probe.probes,
        probe.query_span_ms,
        PAGE - 1,
        probe.round_trip_ms,
    );
}

async fn bench() -> Result<(), BoxError> {
    let settings = settings()?;
    let dir = tempfile::tempdir()?;
    let kms_dir: PathBuf = dir.path().join("kms");
    let service_token = kms_dir.join("table-service.token");

    let echo = start_echo().await?;
    let proxy = start_proxy(connect(echo.addr).await?).await?;
    let mut kms_config = KmsConfig::for_data_dir(kms_dir.clone());
    kms_config.storage.table_service_token_file = Some(service_token.clone());
    let kms = KmsServer::start(kms_config).await?;
    let token_file = kms
        .admin_token_file
        .clone()
        .ok_or("the new data directory bootstrapped no administrator")?;
    let table_config = |name: &str, cache_ttl: u64| {
        let mut config = TableConfig::for_data_dir(
            dir.path().join(name),
            format!("http://{}", kms.addr),
            service_token.clone(),
        );
        config.data_key_cache_ttl_secs = cache_ttl;
        config.authz_cache_ttl_secs = cache_ttl;
        config
    };
    let cache_off = TableServer::start(table_config("tables-cache-off", 0)).await?;
    let cache_on = TableServer::start(table_config("tables-cache-on", CACHE_TTL_SECS)).await?;

    // Run, then stop every server whatever happened.
    let outcome: Result<(usize, Vec<RunResult>, UnwrapProbe), BoxError> = async {
        let fx = prepare(
            connect(kms.addr).await?,
            connect(echo.addr).await?,
            connect(proxy.addr).await?,
            connect(cache_off.addr).await?,
            connect(cache_on.addr).await?,
            &token_file,
            settings.partitions,
        )
        .await?;
        let mut audit = AuditCounter {
            path: kms_dir.join("audit").join("audit.jsonl"),
            offset: 0,
            segments: 0,
        };
        let mut results = Vec::new();
        for &concurrency in &settings.concurrency {
            for (round, workload) in (0..settings.rounds)
                .flat_map(|round| settings.workloads.iter().map(move |&w| (round, w)))
            {
                if workload == Workload::GetItemCacheOn {
                    warm_cache(&fx).await?;
                }
                let mut result = run(
                    &fx,
                    &mut audit,
                    workload,
                    concurrency,
                    settings.warmup,
                    settings.measure,
                    settings.min_samples,
                )
                .await?;
                result.round = round;
                eprintln!(
                    "{:>28} c={concurrency:<3} round {} {:>8.0} req/s ({} requests in {:.2} s)",
                    workload.name(),
                    round + 1,
                    result.throughput,
                    result.samples,
                    result.window.as_secs_f64()
                );
                results.push(result);
            }
        }
        let probe = probe_unwrapping(&fx, &mut audit, settings.probes).await?;
        Ok((fx.item_count, results, probe))
    }
    .await;

    let cache_off_stopped = cache_off.stop().await;
    let cache_on_stopped = cache_on.stop().await;
    let proxy_stopped = proxy.stop().await;
    let echo_stopped = echo.stop().await;
    let kms_stopped = kms.stop().await;
    let (item_count, results, probe) = outcome?;
    cache_off_stopped?;
    cache_on_stopped?;
    proxy_stopped?;
    echo_stopped?;
    kms_stopped?;

    print_report(&settings, item_count, &results, &probe);
    Ok(())
}

fn main() -> ExitCode {
    // Default worker count = available cores; the client tasks, all servers
    // and the audit writer thread compete for them.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("table_throughput: cannot start tokio: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(bench()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("table_throughput: benchmark aborted: {e}");
            ExitCode::FAILURE
        }
    }
}

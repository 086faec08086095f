//! UpdateTable switches a table to another key: items are re-wrapped in the
//! background with ReEncrypt, resumably across a restart of table-service,
//! while reads and writes continue; afterwards the old key can be disabled
//! and every item still reads.

use std::collections::HashMap;

use base64::Engine;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kms_service::clock::{Clock, ManualClock, SystemClock};
use kms_service::config::ServeConfig as KmsConfig;
use kms_service::server::RunningServer as KmsServer;
use lockbox_proto::kms::v1 as kms;
use lockbox_proto::kms::v1::key_management_service_client::KeyManagementServiceClient;
use lockbox_proto::table::v1 as pb;
use lockbox_proto::table::v1::table_service_client::TableServiceClient;
use table_service::config::ServeConfig as TableConfig;
use table_service::server::RunningServer as TableServer;
use tonic::transport::Channel;
use tonic_types::StatusExt;

fn authed<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

fn reason(status: &tonic::Status) -> Option<String> {
    status.get_details_error_info().map(|i| i.reason)
}

fn s(v: &str) -> pb::AttributeValue {
    pb::AttributeValue {
        value: Some(pb::attribute_value::Value::S(v.into())),
    }
}

async fn channel(addr: std::net::SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// Creates table `name` (partition key `id`, a string) as `token`, under
/// `key` (a key id), or the service-managed key when `None`.
async fn create_table(
    tables: &mut TableServiceClient<Channel>,
    token: &str,
    name: &str,
    key: Option<&str>,
) {
    tables
        .create_table(authed(
            token,
            pb::CreateTableRequest {
                table_name: name.into(),
                key_schema: Some(pb::KeySchema {
                    partition_key: Some(pb::KeyElement {
                        name: "id".into(),
                        r#type: pb::ScalarType::S.into(),
                    }),
                    sort_key: None,
                }),
                sse_specification: key.map(|k| pb::SseSpecification {
                    kms_key_id: k.to_string(),
                }),
            },
        ))
        .await
        .unwrap();
}

/// kms-service (with table-service's principal) in `dir`; returns it and
/// the admin token.
async fn start_kms(dir: &std::path::Path) -> (KmsServer, String) {
    start_kms_with_clock(dir, Arc::new(SystemClock)).await
}

/// [`start_kms`] on `clock` (deletion windows pass when a test moves it).
async fn start_kms_with_clock(dir: &std::path::Path, clock: Arc<dyn Clock>) -> (KmsServer, String) {
    let mut kms_config = KmsConfig::for_data_dir(dir.join("kms"));
    kms_config.storage.table_service_token_file = Some(dir.join("kms/table-service.token"));
    let kms_server = KmsServer::start_with_clock(kms_config, clock)
        .await
        .unwrap();
    let admin = std::fs::read_to_string(dir.join("kms/admin.token"))
        .unwrap()
        .trim()
        .to_string();
    (kms_server, admin)
}

/// Both services in `dir` (table-service as [`table_config`]), clients of
/// each, and the admin token.
struct Started {
    kms_server: KmsServer,
    tables_server: TableServer,
    keys: KeyManagementServiceClient<Channel>,
    tables: TableServiceClient<Channel>,
    admin: String,
}

async fn start_both(dir: &std::path::Path) -> Started {
    let (kms_server, admin) = start_kms(dir).await;
    let tables_server = TableServer::start(table_config(dir, &kms_server))
        .await
        .unwrap();
    Started {
        keys: KeyManagementServiceClient::new(channel(kms_server.addr).await),
        tables: TableServiceClient::new(channel(tables_server.addr).await),
        kms_server,
        tables_server,
        admin,
    }
}

/// table-service's configuration in `dir`, on `kms`, data-key cache off.
fn table_config(dir: &std::path::Path, kms: &KmsServer) -> TableConfig {
    let mut c = TableConfig::for_data_dir(
        dir.join("tables"),
        format!("http://{}", kms.addr),
        dir.join("kms/table-service.token"),
    );
    c.data_key_cache_ttl_secs = 0;
    c
}

/// Enables or disables `key_id`, as `token`.
async fn set_enabled(
    keys: &mut KeyManagementServiceClient<Channel>,
    token: &str,
    key_id: &str,
    enabled: bool,
) {
    let key_id = key_id.to_string();
    if enabled {
        keys.enable_key(authed(token, kms::EnableKeyRequest { key_id }))
            .await
            .unwrap();
    } else {
        keys.disable_key(authed(token, kms::DisableKeyRequest { key_id }))
            .await
            .unwrap();
    }
}

/// UpdateTable of `table` to `key_id`, as `token`.
async fn switch_key(
    tables: &mut TableServiceClient<Channel>,
    token: &str,
    table: &str,
    key_id: &str,
) -> Result<tonic::Response<pb::UpdateTableResponse>, tonic::Status> {
    tables
        .update_table(authed(
            token,
            pb::UpdateTableRequest {
                table_name: table.into(),
                sse_specification: Some(pb::SseSpecification {
                    kms_key_id: key_id.into(),
                }),
            },
        ))
        .await
}

/// The grants on `key_id`, listed as `token`.
async fn grants_on(
    keys: &mut KeyManagementServiceClient<Channel>,
    token: &str,
    key_id: &str,
) -> Vec<kms::GrantListEntry> {
    keys.list_grants(authed(
        token,
        kms::ListGrantsRequest {
            key_id: key_id.to_string(),
            ..Default::default()
        },
    ))
    .await
    .unwrap()
    .into_inner()
    .grants
}

/// Creates a symmetric key as `token`; returns its id.
async fn create_key(keys: &mut KeyManagementServiceClient<Channel>, token: &str) -> String {
    keys.create_key(authed(token, kms::CreateKeyRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .key_metadata
        .unwrap()
        .key_id
}

const ITEMS: usize = 250;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_table_rewraps_every_item_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (kms_server, admin) = start_kms(dir.path()).await;
    let table_config = || table_config(dir.path(), &kms_server);
    let tables_server = TableServer::start(table_config()).await.unwrap();
    let mut keys = KeyManagementServiceClient::new(channel(kms_server.addr).await);
    let mut tables = TableServiceClient::new(channel(tables_server.addr).await);
    let old_key = create_key(&mut keys, &admin).await;
    let target = create_key(&mut keys, &admin).await;
    create_table(&mut tables, &admin, "orders", Some(&old_key)).await;
    for i in 0..ITEMS {
        tables
            .put_item(authed(
                &admin,
                put_request("orders", &format!("{i:04}"), &format!("value {i}")),
            ))
            .await
            .unwrap();
    }
    let updated = switch_key(&mut tables, &admin, "orders", &target)
        .await
        .unwrap()
        .into_inner()
        .table_description
        .unwrap();
    assert_eq!(updated.table_status, pb::TableStatus::Updating as i32);
    assert_eq!(updated.sse_description.unwrap().kms_key_id, target);
    // A second change while one runs is refused: a precondition (wait),
    // not "already exists".
    let again = switch_key(&mut tables, &admin, "orders", &old_key)
        .await
        .expect_err("refused");
    assert_eq!(again.code(), tonic::Code::FailedPrecondition, "{again:?}");
    assert_eq!(reason(&again).as_deref(), Some("ResourceInUseException"));

    // Restart table-service while the job runs; it resumes by itself.
    tables_server.stop().await.unwrap();
    let tables_server = TableServer::start(table_config()).await.unwrap();
    let mut tables = TableServiceClient::new(channel(tables_server.addr).await);
    // Reads and writes continue meanwhile.
    tables
        .put_item(authed(
            &admin,
            put_request("orders", "new", "written during the change"),
        ))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let done = loop {
        let t = tables
            .describe_table(authed(
                &admin,
                pb::DescribeTableRequest {
                    table_name: "orders".into(),
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .table
            .unwrap();
        if t.table_status == pb::TableStatus::Active as i32 {
            break t;
        }
        assert!(
            Instant::now() < deadline,
            "re-wrap did not finish: {:?}",
            t.rewrap_progress
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(done.rewrap_progress.is_none());

    // With the old key disabled every item still reads: all are under the new key.
    set_enabled(&mut keys, &admin, &old_key, false).await;
    let mut seen = 0;
    let mut start = HashMap::new();
    loop {
        let page = tables
            .scan(authed(
                &admin,
                pb::ScanRequest {
                    table_name: "orders".into(),
                    limit: 100,
                    exclusive_start_key: start,
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner();
        seen += page.items.len();
        if page.last_evaluated_key.is_empty() {
            break;
        }
        start = page.last_evaluated_key;
    }
    assert_eq!(seen, ITEMS + 1);
    // The grants that allowed the re-wrap are retired.
    let grants = grants_on(&mut keys, &admin, &target).await;
    assert!(grants.is_empty(), "{grants:?}");
    tables_server.stop().await.unwrap();
    kms_server.stop().await.unwrap();
}

async fn wait_active(
    tables: &mut TableServiceClient<Channel>,
    token: &str,
    name: &str,
) -> pb::TableDescription {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let t = tables
            .describe_table(authed(
                token,
                pb::DescribeTableRequest {
                    table_name: name.into(),
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .table
            .unwrap();
        if t.table_status == pb::TableStatus::Active as i32 {
            return t;
        }
        assert!(Instant::now() < deadline, "re-wrap did not finish");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn read_all(tables: &mut TableServiceClient<Channel>, token: &str, name: &str, n: usize) {
    for i in 0..n {
        let item = tables
            .get_item(authed(
                token,
                pb::GetItemRequest {
                    table_name: name.into(),
                    key: HashMap::from([("id".to_string(), s(&format!("{i:04}")))]),
                },
            ))
            .await
            .unwrap_or_else(|e| panic!("item {i}: {e}"))
            .into_inner()
            .item;
        assert_eq!(item.get("v"), Some(&s(&format!("value {i}"))));
    }
}

/// A PutItem of the item `id` with attribute `v` to `table`.
fn put_request(table: &str, id: &str, v: &str) -> pb::PutItemRequest {
    pb::PutItemRequest {
        table_name: table.into(),
        item: HashMap::from([("id".to_string(), s(id)), ("v".to_string(), s(v))]),
        ..Default::default()
    }
}

/// Writes items `0000`, `0001`, … (`v`: `value <i>`) to `name` in batches.
async fn put_many(tables: &mut TableServiceClient<Channel>, token: &str, name: &str, n: usize) {
    for start in (0..n).step_by(25) {
        let requests = (start..n.min(start + 25))
            .map(|i| pb::WriteRequest {
                request: Some(pb::write_request::Request::PutRequest(pb::Item {
                    attributes: HashMap::from([
                        ("id".to_string(), s(&format!("{i:04}"))),
                        ("v".to_string(), s(&format!("value {i}"))),
                    ]),
                })),
            })
            .collect();
        let unprocessed = tables
            .batch_write_item(authed(
                token,
                pb::BatchWriteItemRequest {
                    request_items: HashMap::from([(
                        name.to_string(),
                        pb::WriteRequests { requests },
                    )]),
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .unprocessed_items;
        assert!(unprocessed.is_empty());
    }
}

async fn describe(
    tables: &mut TableServiceClient<Channel>,
    token: &str,
    name: &str,
) -> pb::TableDescription {
    tables
        .describe_table(authed(
            token,
            pb::DescribeTableRequest {
                table_name: name.into(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .table
        .unwrap()
}

/// Both services, with table `name` of `n` items moving from `old_key`
/// to `target` while `old_key` is disabled: the re-wrap cannot move an
/// item until it is enabled (UpdateTable itself only creates a grant on it).
struct Stalled {
    kms_server: KmsServer,
    tables_server: TableServer,
    keys: KeyManagementServiceClient<Channel>,
    tables: TableServiceClient<Channel>,
    admin: String,
    old_key: String,
    target: String,
}

async fn stalled_key_change(
    dir: &std::path::Path,
    clock: Arc<dyn Clock>,
    name: &str,
    n: usize,
) -> Stalled {
    let (kms_server, admin) = start_kms_with_clock(dir, clock).await;
    let tables_server = TableServer::start(table_config(dir, &kms_server))
        .await
        .unwrap();
    let mut keys = KeyManagementServiceClient::new(channel(kms_server.addr).await);
    let mut tables = TableServiceClient::new(channel(tables_server.addr).await);
    let old_key = create_key(&mut keys, &admin).await;
    let target = create_key(&mut keys, &admin).await;
    create_table(&mut tables, &admin, name, Some(&old_key)).await;
    put_many(&mut tables, &admin, name, n).await;
    set_enabled(&mut keys, &admin, &old_key, false).await;
    switch_key(&mut tables, &admin, name, &target)
        .await
        .unwrap();
    Stalled {
        kms_server,
        tables_server,
        keys,
        tables,
        admin,
        old_key,
        target,
    }
}

/// A re-wrap that cannot go on says why: with the old key disabled,
/// DescribeTable keeps the table UPDATING with the failure (naming the key
/// and its state) in `last_error`, and UpdateTable points there; once the
/// key is enabled again the re-wrap goes on by itself, `last_error` is
/// empty as soon as a page succeeds, and the table becomes ACTIVE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_rewrap_shows_its_error_and_resumes_when_the_key_is_enabled() {
    const N: usize = 250;
    let dir = tempfile::tempdir().unwrap();
    let Stalled {
        kms_server,
        tables_server,
        mut keys,
        mut tables,
        admin,
        old_key,
        target,
    } = stalled_key_change(dir.path(), Arc::new(SystemClock), "stalled", N).await;

    let deadline = Instant::now() + Duration::from_secs(30);
    let progress = loop {
        let t = describe(&mut tables, &admin, "stalled").await;
        assert_eq!(t.table_status, pb::TableStatus::Updating as i32, "{t:?}");
        let progress = t
            .rewrap_progress
            .expect("an UPDATING table shows its progress");
        if !progress.last_error.is_empty() {
            break progress;
        }
        assert!(Instant::now() < deadline, "no error shown: {progress:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(progress.items_done, 0, "{progress:?}");
    assert_eq!(progress.items_total, N as u64, "{progress:?}");
    assert!(
        progress.last_error.starts_with("DisabledException: ")
            && progress.last_error.contains(&old_key)
            && progress.last_error.contains("disabled"),
        "{progress:?}"
    );
    // The error stays while the key stays disabled (the re-wrap retries).
    tokio::time::sleep(Duration::from_millis(700)).await;
    let still = describe(&mut tables, &admin, "stalled").await;
    let still = still.rewrap_progress.expect("still UPDATING");
    assert_eq!(still.items_done, 0, "{still:?}");
    assert!(still.last_error.contains(&old_key), "{still:?}");
    // UpdateTable refuses another change and says where to look.
    let refused = switch_key(&mut tables, &admin, "stalled", &old_key)
        .await
        .expect_err("a re-wrap is in progress");
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    for needle in ["DescribeTable", "last_error", "DisabledException", &old_key] {
        assert!(refused.message().contains(needle), "{needle}: {refused:?}");
    }

    set_enabled(&mut keys, &admin, &old_key, true).await;
    // Every look at the table from here on: once a page is done, no error
    // is shown; in the end the table is ACTIVE.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let t = describe(&mut tables, &admin, "stalled").await;
        if t.table_status == pb::TableStatus::Active as i32 {
            assert!(t.rewrap_progress.is_none(), "{t:?}");
            assert_eq!(t.sse_description.unwrap().kms_key_id, target);
            break;
        }
        let progress = t.rewrap_progress.expect("UPDATING shows its progress");
        if progress.items_done > 0 {
            assert_eq!(progress.last_error, "", "{progress:?}");
        }
        assert!(
            Instant::now() < deadline,
            "re-wrap did not finish: {progress:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Every item moved: they read with the old key disabled again.
    set_enabled(&mut keys, &admin, &old_key, false).await;
    read_all(&mut tables, &admin, "stalled", N).await;
    tables_server.stop().await.unwrap();
    kms_server.stop().await.unwrap();
}

/// The key a table is moving from is deleted before the re-wrap has moved
/// every item (it was disabled, so the re-wrap stood still; then its
/// deletion window passed). Reading an item not yet moved says that key no
/// longer exists, not that the item was altered; overwriting those items
/// puts them under the new key, and the key change then finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_left_under_a_deleted_old_key_say_so_and_overwriting_them_lets_the_change_finish() {
    const N: usize = 5;
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64,
    ));
    let Stalled {
        kms_server,
        tables_server,
        mut keys,
        mut tables,
        admin,
        old_key,
        target,
    } = stalled_key_change(dir.path(), clock.clone(), "moving", N).await;
    keys.schedule_key_deletion(authed(
        &admin,
        kms::ScheduleKeyDeletionRequest {
            key_id: old_key.clone(),
            pending_window_in_days: Some(7),
        },
    ))
    .await
    .unwrap();
    clock.advance(8 * 24 * 3600);
    let report = kms_server.kms.run_maintenance().await.unwrap();
    assert_eq!(report.destroyed, [old_key.as_str()]);

    let refused = tables
        .get_item(authed(
            &admin,
            pb::GetItemRequest {
                table_name: "moving".into(),
                key: HashMap::from([("id".to_string(), s("0000"))]),
            },
        ))
        .await
        .expect_err("its data key is under the deleted key");
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    assert_eq!(
        reason(&refused).as_deref(),
        Some("KMSInvalidStateException")
    );
    assert!(
        refused.message().contains(&format!(
            "key {old_key}, which table moving is moving its items from, no longer exists \
             (it was deleted); the items not yet moved, such as item id (S) \"0000\", cannot be decrypted"
        )),
        "{refused:?}"
    );

    put_many(&mut tables, &admin, "moving", N).await;
    let done = wait_active(&mut tables, &admin, "moving").await;
    assert_eq!(done.sse_description.unwrap().kms_key_id, target);
    read_all(&mut tables, &admin, "moving", N).await;
    tables_server.stop().await.unwrap();
    kms_server.stop().await.unwrap();
}

/// Two UpdateTable calls on one table at once: one switches the key; the
/// other is refused with ResourceInUseException as FAILED_PRECONDITION (it
/// saw the first one's re-wrap: wait) or ABORTED (both started before either
/// switched: retry), never ALREADY_EXISTS, and its grants are retired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_key_changes_refuse_the_loser_with_a_code_that_says_wait_or_retry() {
    let dir = tempfile::tempdir().unwrap();
    let Started {
        kms_server,
        tables_server,
        mut keys,
        mut tables,
        admin,
    } = start_both(dir.path()).await;
    let first = create_key(&mut keys, &admin).await;
    create_table(&mut tables, &admin, "contended", Some(&first)).await;
    // Enough items that a re-wrap takes pages, so the winner's re-wrap is
    // still running when the loser gets to its switch.
    put_many(&mut tables, &admin, "contended", 200).await;
    for round in 0..3 {
        let targets = [
            create_key(&mut keys, &admin).await,
            create_key(&mut keys, &admin).await,
        ];
        let change = |target: &String| {
            let mut tables = tables.clone();
            let request = authed(
                &admin,
                pb::UpdateTableRequest {
                    table_name: "contended".into(),
                    sse_specification: Some(pb::SseSpecification {
                        kms_key_id: target.clone(),
                    }),
                },
            );
            async move { tables.update_table(request).await }
        };
        let (a, b) = tokio::join!(change(&targets[0]), change(&targets[1]));
        let (loser_target, refused) = match (a, b) {
            (Ok(_), Err(e)) => (&targets[1], e),
            (Err(e), Ok(_)) => (&targets[0], e),
            other => panic!("round {round}: exactly one change should win: {other:?}"),
        };
        assert!(
            matches!(
                refused.code(),
                tonic::Code::FailedPrecondition | tonic::Code::Aborted
            ),
            "round {round}: {refused:?}"
        );
        assert_eq!(
            reason(&refused).as_deref(),
            Some("ResourceInUseException"),
            "round {round}: {refused:?}"
        );
        let says = if refused.code() == tonic::Code::Aborted {
            "retry"
        } else {
            "wait"
        };
        assert!(
            refused.message().contains(says),
            "round {round}: {refused:?}"
        );
        wait_active(&mut tables, &admin, "contended").await;
        let left = grants_on(&mut keys, &admin, loser_target).await;
        assert!(
            left.is_empty(),
            "round {round}: grants left behind: {left:?}"
        );
    }
    tables_server.stop().await.unwrap();
    kms_server.stop().await.unwrap();
}

/// A table moves from the service-managed key to a customer managed key and
/// back: the caller gives table-service re-wrap grants on the service-managed
/// key through table-service (its policy allows exactly that), while nobody
/// may create grants on it directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_table_moves_between_the_service_managed_key_and_a_customer_key() {
    const N: usize = 40;
    let dir = tempfile::tempdir().unwrap();
    let Started {
        kms_server,
        tables_server,
        mut keys,
        mut tables,
        admin,
    } = start_both(dir.path()).await;
    create_table(&mut tables, &admin, "managed", None).await;
    for i in 0..N {
        tables
            .put_item(authed(
                &admin,
                put_request("managed", &format!("{i:04}"), &format!("value {i}")),
            ))
            .await
            .unwrap();
    }

    // Nobody creates grants on the service-managed key directly, not even an
    // administrator.
    let direct = keys
        .create_grant(authed(
            &admin,
            kms::CreateGrantRequest {
                key_id: "alias/table-service".into(),
                grantee_principal: "user/admin".into(),
                operations: vec![kms::GrantOperation::Decrypt.into()],
                ..Default::default()
            },
        ))
        .await
        .expect_err("a direct grant on the service-managed key is refused");
    assert_eq!(direct.code(), tonic::Code::PermissionDenied, "{direct:?}");

    // An UpdateTable without sse_specification says what is missing.
    let missing = tables
        .update_table(authed(
            &admin,
            pb::UpdateTableRequest {
                table_name: "managed".into(),
                sse_specification: None,
            },
        ))
        .await
        .expect_err("refused");
    assert_eq!(missing.code(), tonic::Code::InvalidArgument);
    assert!(
        missing.message().contains("sse_specification"),
        "{missing:?}"
    );

    // Service-managed → customer managed key.
    let cmk = create_key(&mut keys, &admin).await;
    let updated = switch_key(&mut tables, &admin, "managed", &cmk)
        .await
        .unwrap()
        .into_inner()
        .table_description
        .unwrap();
    let sse = updated.sse_description.unwrap();
    assert_eq!(sse.kms_key_id, cmk);
    assert!(!sse.service_managed);
    wait_active(&mut tables, &admin, "managed").await;
    read_all(&mut tables, &admin, "managed", N).await;

    // An empty key id is refused rather than read as "the service-managed key".
    let empty = tables
        .update_table(authed(
            &admin,
            pb::UpdateTableRequest {
                table_name: "managed".into(),
                sse_specification: Some(pb::SseSpecification::default()),
            },
        ))
        .await
        .expect_err("refused");
    assert_eq!(empty.code(), tonic::Code::InvalidArgument);
    assert!(empty.message().contains("alias/table-service"), "{empty:?}");

    // A target key on which the caller may not create grants: refused, and
    // the grant already made on the current key is retired, not left behind.
    let closed_policy = r#"{"Version":"2012-10-17","Statement":[{"Sid":"AdminManagesOnly","Effect":"Allow","Principal":{"AWS":"user/admin"},"Action":["kms:DescribeKey","kms:GetKeyPolicy","kms:PutKeyPolicy","kms:ListGrants"],"Resource":"*"}]}"#;
    let closed = keys
        .create_key(authed(
            &admin,
            kms::CreateKeyRequest {
                policy: closed_policy.into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .key_metadata
        .unwrap()
        .key_id;
    let refused = switch_key(&mut tables, &admin, "managed", &closed)
        .await
        .expect_err("no CreateGrant on the target key");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    let left = grants_on(&mut keys, &admin, &cmk).await;
    assert!(left.is_empty(), "grants left behind: {left:?}");

    // Customer managed key → service-managed, named by its key id (not the
    // alias): DescribeTable still knows it is the service-managed key.
    // Afterwards the customer key can be disabled and every item still reads.
    let managed_id = keys
        .describe_key(authed(
            &admin,
            kms::DescribeKeyRequest {
                key_id: "alias/table-service".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .key_metadata
        .unwrap()
        .key_id;
    let back = switch_key(&mut tables, &admin, "managed", &managed_id)
        .await
        .unwrap()
        .into_inner()
        .table_description
        .unwrap();
    assert!(back.sse_description.unwrap().service_managed);
    let done = wait_active(&mut tables, &admin, "managed").await;
    assert!(done.sse_description.unwrap().service_managed);
    set_enabled(&mut keys, &admin, &cmk, false).await;
    read_all(&mut tables, &admin, "managed", N).await;
    tables_server.stop().await.unwrap();
    kms_server.stop().await.unwrap();
}

/// Writes that are in flight while UpdateTable switches the key either
/// finish before the switch (and the re-wrap, which starts after it, moves
/// them) or seal under the new key: after the change, with the old key
/// disabled, every acknowledged write reads. A write that sealed under the
/// old key but committed after the re-wrap had passed its place would stay
/// under the old key for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_racing_a_key_change_all_end_up_under_the_new_key() {
    let dir = tempfile::tempdir().unwrap();
    let Started {
        kms_server,
        tables_server,
        mut keys,
        mut tables,
        admin,
    } = start_both(dir.path()).await;
    let key_ids = [
        create_key(&mut keys, &admin).await,
        create_key(&mut keys, &admin).await,
    ];
    let (old_key, new_key) = (key_ids[0].clone(), key_ids[1].clone());
    let writer_token = admin.clone();
    let put = move |tables: &mut TableServiceClient<Channel>, id: String| {
        let mut tables = tables.clone();
        let admin = writer_token.clone();
        async move {
            tables
                .put_item(authed(
                    &admin,
                    put_request("race", &id, &format!("value of {id}")),
                ))
                .await
                .map(|_| id)
        }
    };
    create_table(&mut tables, &admin, "race", Some(&old_key)).await;
    // The re-wrap's first page ends at "zzzz": racing writes sort before it.
    put(&mut tables, "zzzz".into()).await.unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..8 {
        let (stop, put) = (stop.clone(), put.clone());
        let mut tables = tables.clone();
        writers.spawn(async move {
            let mut written = Vec::new();
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                written.push(put(&mut tables, format!("a-{w}-{n:05}")).await.unwrap());
                n += 1;
            }
            written
        });
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    switch_key(&mut tables, &admin, "race", &new_key)
        .await
        .unwrap();
    wait_active(&mut tables, &admin, "race").await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut written = vec!["zzzz".to_string()];
    while let Some(ids) = writers.join_next().await {
        written.extend(ids.unwrap());
    }
    assert!(written.len() > 20, "only {} writes", written.len());
    set_enabled(&mut keys, &admin, &old_key, false).await;
    let mut under_old_key = Vec::new();
    for id in &written {
        let read = tables
            .get_item(authed(
                &admin,
                pb::GetItemRequest {
                    table_name: "race".into(),
                    key: HashMap::from([("id".to_string(), s(id))]),
                },
            ))
            .await;
        match read {
            Ok(item) => assert_eq!(
                item.into_inner().item.get("v"),
                Some(&s(&format!("value of {id}")))
            ),
            Err(e) => under_old_key.push(format!("{id}: {}", e.message())),
        }
    }
    assert!(
        under_old_key.is_empty(),
        "{} of {} acknowledged writes unreadable once the old key is disabled: {:?}",
        under_old_key.len(),
        written.len(),
        &under_old_key[..under_old_key.len().min(3)]
    );
    tables_server.stop().await.unwrap();
    kms_server.stop().await.unwrap();
}

/// Creating and deleting tables, and writing, while a re-wrap runs its
/// pages: none of them waits on another for good (the re-wrap lets go of
/// the write lock before it records its progress, which DeleteTable and
/// key switches take in the other order).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_come_and_go_while_a_rewrap_runs() {
    let dir = tempfile::tempdir().unwrap();
    let Started {
        kms_server,
        tables_server,
        mut keys,
        mut tables,
        admin,
    } = start_both(dir.path()).await;
    let key_ids = [
        create_key(&mut keys, &admin).await,
        create_key(&mut keys, &admin).await,
    ];
    create_table(&mut tables, &admin, "big", Some(&key_ids[0])).await;
    for batch in 0..12 {
        let requests = (0..25)
            .map(|i| pb::WriteRequest {
                request: Some(pb::write_request::Request::PutRequest(pb::Item {
                    attributes: HashMap::from([
                        ("id".to_string(), s(&format!("{batch:02}-{i:02}"))),
                        ("v".to_string(), s("x")),
                    ]),
                })),
            })
            .collect();
        let unprocessed = tables
            .batch_write_item(authed(
                &admin,
                pb::BatchWriteItemRequest {
                    request_items: HashMap::from([(
                        "big".to_string(),
                        pb::WriteRequests { requests },
                    )]),
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .unprocessed_items;
        assert!(unprocessed.is_empty());
    }
    switch_key(&mut tables, &admin, "big", &key_ids[1])
        .await
        .unwrap();
    let bounded = Duration::from_secs(30);
    for i in 0..6 {
        let name = format!("short-lived-{i}");
        tokio::time::timeout(bounded, create_table(&mut tables, &admin, &name, None))
            .await
            .unwrap_or_else(|_| panic!("CreateTable {name} hangs"));
        tokio::time::timeout(
            bounded,
            tables.delete_table(authed(
                &admin,
                pb::DeleteTableRequest {
                    table_name: name.clone(),
                },
            )),
        )
        .await
        .unwrap_or_else(|_| panic!("DeleteTable {name} hangs"))
        .unwrap();
        tokio::time::timeout(
            bounded,
            tables.put_item(authed(
                &admin,
                put_request("big", &format!("during-{i}"), "y"),
            )),
        )
        .await
        .unwrap_or_else(|_| panic!("PutItem during the re-wrap hangs"))
        .unwrap();
    }
    tokio::time::timeout(bounded, wait_active(&mut tables, &admin, "big"))
        .await
        .expect("the re-wrap finishes");
    tables_server.stop().await.unwrap();
    kms_server.stop().await.unwrap();
}

/// CreateTable and UpdateTable take only an enabled encryption key the
/// caller can see: a disabled key (DisabledException), one pending deletion
/// (KMSInvalidStateException), an HMAC key, which cannot make data keys
/// (InvalidKeyUsageException), and an unknown one (NotFoundException) are
/// refused naming the key, as is switching to the key the table already
/// uses; nothing changes (no table, no grant, the table on its key).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_take_only_an_enabled_key_and_a_refusal_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let Started {
        kms_server,
        tables_server,
        mut keys,
        mut tables,
        admin,
    } = start_both(dir.path()).await;
    let current = create_key(&mut keys, &admin).await;
    let disabled = create_key(&mut keys, &admin).await;
    set_enabled(&mut keys, &admin, &disabled, false).await;
    let pending = create_key(&mut keys, &admin).await;
    keys.schedule_key_deletion(authed(
        &admin,
        kms::ScheduleKeyDeletionRequest {
            key_id: pending.clone(),
            pending_window_in_days: Some(7),
        },
    ))
    .await
    .unwrap();
    let unknown = "0f0e0d0c-0b0a-4908-8706-050403020100".to_string();
    // An HMAC key can neither make nor unwrap data keys; named by alias.
    let mac_key = keys
        .create_key(authed(
            &admin,
            kms::CreateKeyRequest {
                key_spec: kms::KeySpec::Hmac256.into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .key_metadata
        .unwrap()
        .key_id;
    keys.create_alias(authed(
        &admin,
        kms::CreateAliasRequest {
            alias_name: "alias/mac".into(),
            target_key_id: mac_key.clone(),
        },
    ))
    .await
    .unwrap();
    let mac_alias = "alias/mac".to_string();
    create_table(&mut tables, &admin, "kept", Some(&current)).await;

    let refusals = [
        (
            &disabled,
            tonic::Code::FailedPrecondition,
            "DisabledException",
            format!("key {disabled} is Disabled; a table needs an enabled key"),
        ),
        (
            &pending,
            tonic::Code::FailedPrecondition,
            "KMSInvalidStateException",
            format!("key {pending} is PendingDeletion; a table needs an enabled key"),
        ),
        (
            &mac_alias,
            tonic::Code::InvalidArgument,
            "InvalidKeyUsageException",
            format!(
                "key {mac_key} is not an encryption key (its usage is not ENCRYPT_DECRYPT), so it cannot protect a table's data keys; use a SYMMETRIC_DEFAULT key"
            ),
        ),
        (
            &unknown,
            tonic::Code::NotFound,
            "NotFoundException",
            unknown.clone(),
        ),
    ];
    for (key, code, expected_reason, needle) in &refusals {
        let created = tables
            .create_table(authed(
                &admin,
                pb::CreateTableRequest {
                    table_name: "refused".into(),
                    key_schema: Some(pb::KeySchema {
                        partition_key: Some(pb::KeyElement {
                            name: "id".into(),
                            r#type: pb::ScalarType::S.into(),
                        }),
                        sort_key: None,
                    }),
                    sse_specification: Some(pb::SseSpecification {
                        kms_key_id: key.to_string(),
                    }),
                },
            ))
            .await;
        let updated = switch_key(&mut tables, &admin, "kept", key).await;
        for (what, result) in [
            ("CreateTable", created.map(drop)),
            ("UpdateTable", updated.map(drop)),
        ] {
            let status = result.expect_err(what);
            assert_eq!(status.code(), *code, "{what} {key}: {status:?}");
            assert_eq!(
                reason(&status).as_deref(),
                Some(*expected_reason),
                "{what} {key}: {status:?}"
            );
            assert!(
                status.message().contains(needle.as_str()),
                "{what} {key}: {status:?}"
            );
        }
    }
    let same = switch_key(&mut tables, &admin, "kept", &current)
        .await
        .expect_err("the key it has");
    assert_eq!(same.code(), tonic::Code::InvalidArgument, "{same:?}");
    assert_eq!(reason(&same).as_deref(), Some("ValidationException"));
    assert!(
        same.message()
            .contains(&format!("table kept already uses key {current}")),
        "{same:?}"
    );

    // Nothing changed.
    let listed = tables
        .list_tables(authed(&admin, pb::ListTablesRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .table_names;
    assert_eq!(listed, ["kept"]);
    let kept = describe(&mut tables, &admin, "kept").await;
    assert_eq!(kept.table_status, pb::TableStatus::Active as i32);
    assert_eq!(kept.sse_description.unwrap().kms_key_id, current);
    for key in [&disabled, &pending, &mac_key] {
        let grants = grants_on(&mut keys, &admin, key).await;
        assert!(grants.is_empty(), "grants on {key}: {grants:?}");
    }
    tables_server.stop().await.unwrap();
    kms_server.stop().await.unwrap();
}

/// Items written while a key change is under way are sealed under the new
/// key already: the re-wrap leaves them as they are (no ReEncrypt, not
/// counted), and moves only the items written before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_written_during_a_key_change_are_not_rewrapped_again() {
    const OLD: usize = 120;
    const NEW: usize = 30;
    let dir = tempfile::tempdir().unwrap();
    let Stalled {
        kms_server,
        tables_server,
        mut keys,
        mut tables,
        admin,
        old_key,
        target,
    } = stalled_key_change(dir.path(), Arc::new(SystemClock), "moving", OLD).await;
    for i in 0..NEW {
        tables
            .put_item(authed(
                &admin,
                put_request(
                    "moving",
                    &format!("new-{i:04}"),
                    "written during the change",
                ),
            ))
            .await
            .unwrap();
    }
    set_enabled(&mut keys, &admin, &old_key, true).await;
    let t = wait_active(&mut tables, &admin, "moving").await;
    assert_eq!(t.sse_description.unwrap().kms_key_id, target);

    // Successful ReEncrypts (their context names the item) for every item
    // written before the change and none written during it. (A page that
    // failed part-way, as the key was enabled, re-wraps its items again.)
    let audit = std::fs::read_to_string(dir.path().join("kms/audit/audit.jsonl")).unwrap();
    let rewrapped: std::collections::BTreeSet<String> = audit
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .filter(|r| r["event_name"] == "ReEncrypt" && r["error_code"].is_null())
        .map(|r| {
            let b64 = r["encryption_context"]["partition_key"].as_str().unwrap();
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap();
            String::from_utf8(bytes).unwrap()
        })
        .collect();
    let before: std::collections::BTreeSet<String> = (0..OLD).map(|i| format!("{i:04}")).collect();
    assert_eq!(rewrapped, before, "items re-wrapped");
    // All of them read with the old key disabled.
    set_enabled(&mut keys, &admin, &old_key, false).await;
    read_all(&mut tables, &admin, "moving", OLD).await;
    tables_server.stop().await.unwrap();
    kms_server.stop().await.unwrap();
}

/// A front on kms-service that loses answers: CreateGrant number `lose`
/// (counting from 1) is carried out but answered as a reset connection
/// would be (UNAVAILABLE, no ErrorInfo), and the first `fail_retires`
/// RetireGrant calls never reach kms-service and are answered the same.
#[derive(Clone)]
struct LoseGrantAnswers<S> {
    inner: S,
    lose: usize,
    creates: Arc<std::sync::atomic::AtomicUsize>,
    fail_retires: Arc<std::sync::atomic::AtomicUsize>,
}

impl<S, B> tower::Service<http::Request<B>> for LoseGrantAnswers<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        use std::sync::atomic::Ordering::SeqCst;
        let lost = || tonic::Status::unavailable("connection reset").into_http();
        let path = request.uri().path();
        if path.ends_with("/RetireGrant")
            && self
                .fail_retires
                .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
                .is_ok()
        {
            return Box::pin(async move { Ok(lost()) });
        }
        if path.ends_with("/CreateGrant") && self.creates.fetch_add(1, SeqCst) + 1 == self.lose {
            let made = self.inner.call(request);
            return Box::pin(async move {
                made.await?;
                Ok(lost())
            });
        }
        Box::pin(self.inner.call(request))
    }
}

/// UpdateTable makes two grants (one per key). When kms-service makes one
/// but its answer is lost, UpdateTable fails as UNAVAILABLE and changes
/// nothing, and no grant is left behind: table-service asks again under
/// the same name (CreateGrant is idempotent) and retires what it gets,
/// with the grant it already had, retrying a retire kms-service could not
/// take.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_change_whose_grant_answer_was_lost_leaves_no_grant_behind() {
    for lose in [1, 2] {
        let dir = tempfile::tempdir().unwrap();
        let (kms_server, admin) = start_kms(dir.path()).await;
        let (kms_grpc, iam_grpc) = kms_service::grpc::services(kms_server.kms.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let front_addr = listener.local_addr().unwrap();
        let creates = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let fail_retires = Arc::new(std::sync::atomic::AtomicUsize::new(1));
        let (counted, failing) = (creates.clone(), fail_retires.clone());
        let front = tokio::spawn(
            tonic::transport::Server::builder()
                .layer(tower::layer::layer_fn(move |inner| LoseGrantAnswers {
                    inner,
                    lose,
                    creates: counted.clone(),
                    fail_retires: failing.clone(),
                }))
                .add_service(
                    kms::key_management_service_server::KeyManagementServiceServer::new(kms_grpc),
                )
                .add_service(
                    lockbox_proto::iam::v1::identity_service_server::IdentityServiceServer::new(
                        iam_grpc,
                    ),
                )
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        let mut config = table_config(dir.path(), &kms_server);
        config.kms_endpoint = format!("http://{front_addr}");
        let tables_server = TableServer::start(config).await.unwrap();
        let mut keys = KeyManagementServiceClient::new(channel(kms_server.addr).await);
        let mut tables = TableServiceClient::new(channel(tables_server.addr).await);
        let old_key = create_key(&mut keys, &admin).await;
        let new_key = create_key(&mut keys, &admin).await;
        create_table(&mut tables, &admin, "lost", Some(&old_key)).await;

        let status = switch_key(&mut tables, &admin, "lost", &new_key)
            .await
            .expect_err("the key change's grant answer was lost");
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        assert_eq!(reason(&status).as_deref(), Some("KMSUnavailableException"));
        let table = describe(&mut tables, &admin, "lost").await;
        assert_eq!(
            table.sse_description.as_ref().unwrap().kms_key_id,
            old_key,
            "the failed change moved the table"
        );
        assert!(table.rewrap_progress.is_none(), "{table:?}");

        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let mut left = Vec::new();
            for key in [&old_key, &new_key] {
                left.extend(grants_on(&mut keys, &admin, key).await);
            }
            if left.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "losing CreateGrant answer {lose} left grants behind: {left:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            fail_retires.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "no retire was refused, so none was retried"
        );
        tables_server.stop().await.unwrap();
        front.abort();
        kms_server.stop().await.unwrap();
    }
}

/// Replaces the stored envelope of item `id` of table `name` with one byte
/// that no envelope parses as (editing table-service's database under it),
/// then has table-service commit a write of its own, which ends its read
/// snapshots.
async fn alter_item(
    dir: &std::path::Path,
    tables: &mut TableServiceClient<Channel>,
    admin: &str,
    name: &str,
    id: &str,
) {
    let table_id = describe(tables, admin, name).await.table_id;
    let db = rusqlite::Connection::open(dir.join("tables/tables.db")).unwrap();
    db.busy_timeout(Duration::from_secs(10)).unwrap();
    let changed = db
        .execute(
            "UPDATE items SET envelope = x'00' WHERE table_id = ?1 AND pk = ?2",
            rusqlite::params![table_id, id.as_bytes().to_vec()],
        )
        .unwrap();
    assert_eq!(changed, 1);
    drop(db);
    tables
        .put_item(authed(admin, put_request(name, "unrelated", "x")))
        .await
        .unwrap();
}

/// Waits (at most 30 s) until table `name`'s re-wrap shows an
/// `ItemIntegrityException`; its progress then.
async fn held_by_an_altered_item(
    tables: &mut TableServiceClient<Channel>,
    admin: &str,
    name: &str,
) -> pb::RewrapProgress {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let progress = describe(tables, admin, name)
            .await
            .rewrap_progress
            .expect("still changing its key");
        if progress.last_error.starts_with("ItemIntegrityException") {
            return progress;
        }
        assert!(
            Instant::now() < deadline,
            "no integrity error: {progress:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A re-wrap stopped by an altered item says so in DescribeTable without
/// naming the item: DescribeTable's callers may not read items, and key
/// values are often personal data (the log names it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewrap_stopped_by_an_altered_item_does_not_show_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let Stalled {
        kms_server,
        tables_server,
        mut keys,
        mut tables,
        admin,
        old_key,
        ..
    } = stalled_key_change(dir.path(), Arc::new(SystemClock), "altered", 5).await;
    alter_item(dir.path(), &mut tables, &admin, "altered", "0002").await;
    set_enabled(&mut keys, &admin, &old_key, true).await;
    let error = held_by_an_altered_item(&mut tables, &admin, "altered")
        .await
        .last_error;
    assert_eq!(
        error,
        "ItemIntegrityException: item integrity check failed for table altered: a stored item was altered or moved; the table-service log names it"
    );
    tables_server.stop().await.unwrap();
    kms_server.stop().await.unwrap();
}

/// A re-wrap resumes from its saved progress after a restart rather than
/// starting over: held up by an altered item on its second page, it has
/// saved the first page (100 items done); restarted, it goes on failing at
/// the second page with 100 done, not 200 (a re-wrap started over would
/// count the first page's items again, as already under the new key).
/// Overwriting the altered item lets it finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewrap_resumes_after_a_restart_from_its_saved_page() {
    const N: usize = 250;
    let dir = tempfile::tempdir().unwrap();
    let Stalled {
        kms_server,
        tables_server,
        mut keys,
        mut tables,
        admin,
        old_key,
        target,
    } = stalled_key_change(dir.path(), Arc::new(SystemClock), "resumed", N).await;
    alter_item(dir.path(), &mut tables, &admin, "resumed", "0150").await;
    set_enabled(&mut keys, &admin, &old_key, true).await;
    // Held at the second page, the first one saved.
    let before = held_by_an_altered_item(&mut tables, &admin, "resumed").await;
    assert_eq!(before.items_done, 100, "{before:?}");
    tables_server.stop().await.unwrap();
    let tables_server = TableServer::start(table_config(dir.path(), &kms_server))
        .await
        .unwrap();
    let mut tables = TableServiceClient::new(channel(tables_server.addr).await);
    let after = held_by_an_altered_item(&mut tables, &admin, "resumed").await;
    // Failed again (more than once) at the same page.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after_retries = describe(&mut tables, &admin, "resumed")
        .await
        .rewrap_progress
        .unwrap();
    assert_eq!(
        (after.items_done, after_retries.items_done),
        (100, 100),
        "{after:?} {after_retries:?}"
    );
    // Mended by overwriting the altered item: the change finishes.
    tables
        .put_item(authed(&admin, put_request("resumed", "0150", "value 150")))
        .await
        .unwrap();
    let done = wait_active(&mut tables, &admin, "resumed").await;
    assert_eq!(done.sse_description.unwrap().kms_key_id, target);
    set_enabled(&mut keys, &admin, &old_key, false).await;
    read_all(&mut tables, &admin, "resumed", N).await;
    tables_server.stop().await.unwrap();
    kms_server.stop().await.unwrap();
}

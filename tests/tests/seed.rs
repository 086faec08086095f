//! The seed walk-through end to end, against both services started as real
//! servers: a table encrypted with a customer managed key, a user with full
//! table rights but no key permission refused with kms:Decrypt /
//! kms:GenerateDataKey, granted through the key policy, then reading and
//! writing; disabling the key refuses everyone; the audit log shows the
//! user's refused and allowed Decrypt via the table service.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use kms_service::clock::{Clock, ManualClock, SystemClock};
use kms_service::config::ServeConfig as KmsConfig;
use kms_service::server::RunningServer as KmsServer;
use lockbox_proto::iam::v1 as iam;
use lockbox_proto::iam::v1::identity_service_client::IdentityServiceClient;
use lockbox_proto::kms::v1 as kms;
use lockbox_proto::kms::v1::key_management_service_client::KeyManagementServiceClient;
use lockbox_proto::table::v1 as pb;
use lockbox_proto::table::v1::table_service_client::TableServiceClient;
use serde_json::json;
use table_service::config::ServeConfig as TableConfig;
use table_service::server::RunningServer as TableServer;
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt;

struct Stack {
    kms: KmsServer,
    tables: TableServer,
    admin: String,
    dir: tempfile::TempDir,
}

async fn start(data_key_cache_ttl: u64) -> Stack {
    start_with_caches(data_key_cache_ttl, 0).await
}

/// Both services, with these cache lifetimes (seconds) in table-service.
async fn start_with_caches(data_key_cache_ttl: u64, authz_cache_ttl: u64) -> Stack {
    start_with_clock(data_key_cache_ttl, authz_cache_ttl, Arc::new(SystemClock)).await
}

/// [`start_with_caches`], with kms-service on `clock` (deletion windows
/// pass when a test moves it).
async fn start_with_clock(
    data_key_cache_ttl: u64,
    authz_cache_ttl: u64,
    clock: Arc<dyn Clock>,
) -> Stack {
    let dir = tempfile::tempdir().unwrap();
    let mut kms_config = KmsConfig::for_data_dir(dir.path().join("kms"));
    let token_file = dir.path().join("kms/table-service.token");
    kms_config.storage.table_service_token_file = Some(token_file.clone());
    let kms = KmsServer::start_with_clock(kms_config, clock)
        .await
        .expect("kms-service starts");
    let mut table_config = TableConfig::for_data_dir(
        dir.path().join("tables"),
        format!("http://{}", kms.addr),
        token_file,
    );
    table_config.data_key_cache_ttl_secs = data_key_cache_ttl;
    table_config.authz_cache_ttl_secs = authz_cache_ttl;
    let tables = TableServer::start(table_config)
        .await
        .expect("table-service starts");
    let admin = std::fs::read_to_string(dir.path().join("kms/admin.token"))
        .unwrap()
        .trim()
        .to_string();
    Stack {
        kms,
        tables,
        admin,
        dir,
    }
}

/// kms-service in `dir` that also creates table-service's credential;
/// returns it, the administrator's token and the credential's file.
async fn kms_for_tables(dir: &std::path::Path) -> (KmsServer, String, std::path::PathBuf) {
    let mut kms_config = KmsConfig::for_data_dir(dir.join("kms"));
    let token_file = dir.join("kms/table-service.token");
    kms_config.storage.table_service_token_file = Some(token_file.clone());
    let kms = KmsServer::start(kms_config).await.unwrap();
    let admin = std::fs::read_to_string(dir.join("kms/admin.token"))
        .unwrap()
        .trim()
        .to_string();
    (kms, admin, token_file)
}

/// table-service in `dir` on the kms-service at `kms`, both caches off.
async fn tables_on(
    dir: &std::path::Path,
    kms: std::net::SocketAddr,
    token_file: std::path::PathBuf,
) -> TableServer {
    let mut table_config =
        TableConfig::for_data_dir(dir.join("tables"), format!("http://{kms}"), token_file);
    table_config.data_key_cache_ttl_secs = 0;
    table_config.authz_cache_ttl_secs = 0;
    TableServer::start(table_config).await.unwrap()
}

async fn channel(addr: std::net::SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

fn authed<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

fn s(v: &str) -> pb::AttributeValue {
    pb::AttributeValue {
        value: Some(pb::attribute_value::Value::S(v.into())),
    }
}

fn n(v: &str) -> pb::AttributeValue {
    pb::AttributeValue {
        value: Some(pb::attribute_value::Value::N(v.into())),
    }
}

fn item(pairs: &[(&str, pb::AttributeValue)]) -> HashMap<String, pb::AttributeValue> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

/// Creates a symmetric key and an empty table `name` (partition key `pk`, a
/// string) encrypted with it, as `admin`; returns the key id.
async fn keyed_table(
    keys: &mut KeyManagementServiceClient<Channel>,
    tables: &mut TableServiceClient<Channel>,
    admin: &str,
    name: &str,
) -> String {
    let key = keys
        .create_key(authed(admin, kms::CreateKeyRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .key_metadata
        .unwrap()
        .key_id;
    table_on(tables, admin, name, Some(&key)).await;
    key
}

/// Creates a symmetric key, a table `name` (partition key `pk`, a string)
/// encrypted with it, and the item `{pk: "a", secret: "x"}`, as `admin`;
/// returns the key id.
async fn encrypted_table(
    keys: &mut KeyManagementServiceClient<Channel>,
    tables: &mut TableServiceClient<Channel>,
    admin: &str,
    name: &str,
) -> String {
    let key = keyed_table(keys, tables, admin, name).await;
    tables
        .put_item(authed(
            admin,
            pb::PutItemRequest {
                table_name: name.into(),
                item: item(&[("pk", s("a")), ("secret", s("x"))]),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    key
}

/// Creates table `name` (partition key S `pk`) on the service-managed key,
/// as `admin`.
async fn managed_table(
    tables: &mut TableServiceClient<Channel>,
    admin: &str,
    name: &str,
) -> pb::TableDescription {
    table_on(tables, admin, name, None).await
}

/// Creates table `name` (partition key S `pk`) on `key`, or on the
/// service-managed key when `None`, as `admin`.
async fn table_on(
    tables: &mut TableServiceClient<Channel>,
    admin: &str,
    name: &str,
    key: Option<&str>,
) -> pb::TableDescription {
    tables
        .create_table(authed(
            admin,
            pb::CreateTableRequest {
                table_name: name.into(),
                key_schema: Some(pb::KeySchema {
                    partition_key: Some(pb::KeyElement {
                        name: "pk".into(),
                        r#type: pb::ScalarType::S.into(),
                    }),
                    sort_key: None,
                }),
                sse_specification: key.map(|key| pb::SseSpecification {
                    kms_key_id: key.to_string(),
                }),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .table_description
        .unwrap()
}

/// Creates user `name` with the managed `policy`, if any, as `admin`;
/// returns a new access token of theirs.
async fn user_token(
    iam_client: &mut IdentityServiceClient<Channel>,
    admin: &str,
    name: &str,
    policy: Option<&str>,
) -> String {
    principal_token(iam_client, admin, name, iam::PrincipalKind::User, policy).await
}

/// [`user_token`] for a principal of any kind.
async fn principal_token(
    iam_client: &mut IdentityServiceClient<Channel>,
    admin: &str,
    name: &str,
    kind: iam::PrincipalKind,
    policy: Option<&str>,
) -> String {
    iam_client
        .create_user(authed(
            admin,
            iam::CreateUserRequest {
                user_name: name.into(),
                kind: kind.into(),
            },
        ))
        .await
        .unwrap();
    if let Some(policy) = policy {
        iam_client
            .attach_user_policy(authed(
                admin,
                iam::AttachUserPolicyRequest {
                    user_name: name.into(),
                    policy_name: policy.into(),
                },
            ))
            .await
            .unwrap();
    }
    iam_client
        .create_access_token(authed(
            admin,
            iam::CreateAccessTokenRequest {
                user_name: name.into(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .token
}

#[track_caller]
fn check_status<T: std::fmt::Debug>(
    result: Result<T, tonic::Status>,
    code: Code,
    reason: &str,
    needle: &str,
) {
    let status = result.expect_err("expected an error");
    assert_eq!(status.code(), code, "{status:?}");
    assert_eq!(
        status.get_details_error_info().map(|i| i.reason).as_deref(),
        Some(reason),
        "{status:?}"
    );
    assert!(
        status.message().contains(needle),
        "{:?} lacks {needle:?}",
        status.message()
    );
}

const USER: &str = "nextwork-kms-user";

#[tokio::test]
async fn seed_walkthrough_end_to_end() {
    let stack = start(0).await;
    let kms_ch = channel(stack.kms.addr).await;
    let mut keys = KeyManagementServiceClient::new(kms_ch.clone());
    let mut iam_client = IdentityServiceClient::new(kms_ch);
    let mut tables = TableServiceClient::new(channel(stack.tables.addr).await);
    let admin = stack.admin.clone();

    // Admin creates a CMK and a table encrypted with it.
    let key = keys
        .create_key(authed(
            &admin,
            kms::CreateKeyRequest {
                description: "nextwork-kms-key".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .key_metadata
        .unwrap()
        .key_id;
    let created = tables
        .create_table(authed(
            &admin,
            pb::CreateTableRequest {
                table_name: "nextwork-kms-table".into(),
                key_schema: Some(pb::KeySchema {
                    partition_key: Some(pb::KeyElement {
                        name: "id".into(),
                        r#type: pb::ScalarType::S.into(),
                    }),
                    sort_key: Some(pb::KeyElement {
                        name: "seq".into(),
                        r#type: pb::ScalarType::N.into(),
                    }),
                }),
                sse_specification: Some(pb::SseSpecification {
                    kms_key_id: key.clone(),
                }),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .table_description
        .unwrap();
    assert_eq!(created.sse_description.unwrap().kms_key_id, key);

    // Admin puts and gets items.
    for i in 1..=3 {
        tables
            .put_item(authed(
                &admin,
                pb::PutItemRequest {
                    table_name: "nextwork-kms-table".into(),
                    item: item(&[
                        ("id", s("order")),
                        ("seq", n(&i.to_string())),
                        ("note", s(&format!("bikes {i}"))),
                    ]),
                    ..Default::default()
                },
            ))
            .await
            .unwrap();
    }
    let get = |token: &str| {
        authed(
            token,
            pb::GetItemRequest {
                table_name: "nextwork-kms-table".into(),
                key: item(&[("id", s("order")), ("seq", n("2"))]),
            },
        )
    };
    let got = tables
        .get_item(get(&admin))
        .await
        .unwrap()
        .into_inner()
        .item;
    assert_eq!(got.get("note"), Some(&s("bikes 2")));

    // A user with TableFullAccess only.
    let user = user_token(&mut iam_client, &admin, USER, Some("TableFullAccess")).await;

    let denied = format!(
        "User: user/{USER} is not authorized to perform: kms:Decrypt on resource: key/{key}"
    );
    check_status(
        tables.get_item(get(&user)).await,
        Code::PermissionDenied,
        "AccessDeniedException",
        &denied,
    );
    let query = |token: &str| {
        authed(
            token,
            pb::QueryRequest {
                table_name: "nextwork-kms-table".into(),
                partition_key_value: Some(s("order")),
                ..Default::default()
            },
        )
    };
    check_status(
        tables.query(query(&user)).await,
        Code::PermissionDenied,
        "AccessDeniedException",
        &denied,
    );
    let scan = |token: &str| {
        authed(
            token,
            pb::ScanRequest {
                table_name: "nextwork-kms-table".into(),
                ..Default::default()
            },
        )
    };
    check_status(
        tables.scan(scan(&user)).await,
        Code::PermissionDenied,
        "AccessDeniedException",
        &denied,
    );
    let put = |token: &str, i: &str| {
        authed(
            token,
            pb::PutItemRequest {
                table_name: "nextwork-kms-table".into(),
                item: item(&[("id", s("order")), ("seq", n(i)), ("note", s("from user"))]),
                ..Default::default()
            },
        )
    };
    check_status(
        tables.put_item(put(&user, "10")).await,
        Code::PermissionDenied,
        "AccessDeniedException",
        "kms:GenerateDataKey",
    );

    // Admin adds the user to the key policy with the seed's key-user actions.
    let policy = keys
        .get_key_policy(authed(
            &admin,
            kms::GetKeyPolicyRequest {
                key_id: key.clone(),
                policy_name: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .policy;
    let mut doc: serde_json::Value = serde_json::from_str(&policy).unwrap();
    doc["Statement"].as_array_mut().unwrap().push(serde_json::json!({
        "Sid": "AllowUseOfTheKey", "Effect": "Allow", "Principal": {"AWS": format!("user/{USER}")},
        "Action": ["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:DescribeKey"], "Resource": "*"
    }));
    keys.put_key_policy(authed(
        &admin,
        kms::PutKeyPolicyRequest {
            key_id: key.clone(),
            policy_name: "default".into(),
            policy: doc.to_string(),
        },
    ))
    .await
    .unwrap();

    // The user now reads and writes.
    assert_eq!(
        tables
            .get_item(get(&user))
            .await
            .unwrap()
            .into_inner()
            .item
            .get("note"),
        Some(&s("bikes 2"))
    );
    assert_eq!(
        tables
            .query(query(&user))
            .await
            .unwrap()
            .into_inner()
            .items
            .len(),
        3
    );
    assert_eq!(
        tables
            .scan(scan(&user))
            .await
            .unwrap()
            .into_inner()
            .items
            .len(),
        3
    );
    tables.put_item(put(&user, "10")).await.unwrap();

    // Disabling the key refuses everyone; re-enabling restores access.
    // DescribeTable shows the key's state as it goes.
    let key_state = |tables: &TableServiceClient<Channel>| {
        let mut tables = tables.clone();
        let admin = admin.clone();
        async move {
            let sse = tables
                .describe_table(authed(
                    &admin,
                    pb::DescribeTableRequest {
                        table_name: "nextwork-kms-table".into(),
                    },
                ))
                .await
                .unwrap()
                .into_inner()
                .table
                .unwrap()
                .sse_description
                .unwrap();
            (sse.kms_key_id, sse.key_state)
        }
    };
    assert_eq!(key_state(&tables).await, (key.clone(), "Enabled".into()));
    keys.disable_key(authed(
        &admin,
        kms::DisableKeyRequest {
            key_id: key.clone(),
        },
    ))
    .await
    .unwrap();
    assert_eq!(key_state(&tables).await, (key.clone(), "Disabled".into()));
    for token in [&admin, &user] {
        check_status(
            tables.get_item(get(token)).await,
            Code::FailedPrecondition,
            "DisabledException",
            &key,
        );
        check_status(
            tables.put_item(put(token, "11")).await,
            Code::FailedPrecondition,
            "DisabledException",
            &key,
        );
    }
    keys.enable_key(authed(
        &admin,
        kms::EnableKeyRequest {
            key_id: key.clone(),
        },
    ))
    .await
    .unwrap();
    assert_eq!(key_state(&tables).await, (key.clone(), "Enabled".into()));
    for token in [&user, &admin] {
        assert_eq!(
            tables
                .get_item(get(token))
                .await
                .unwrap()
                .into_inner()
                .item
                .get("note"),
            Some(&s("bikes 2"))
        );
    }
    tables.put_item(put(&user, "12")).await.unwrap();

    // The audit log holds the user's refused and allowed Decrypt via the table service.
    stack.tables.stop().await.unwrap();
    stack.kms.stop().await.unwrap();
    let log = stack.dir.path().join("kms/audit/audit.jsonl");
    let records: Vec<serde_json::Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let user_decrypts: Vec<(&str, &str)> = records
        .iter()
        .filter(|r| {
            r["event_name"] == "Decrypt" && r["principal"] == format!("user/{USER}").as_str()
        })
        .map(|r| {
            (
                r["decision"].as_str().unwrap(),
                r["via_service"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert!(
        user_decrypts.contains(&("Deny", "service/table-service")),
        "{user_decrypts:?}"
    );
    assert!(
        user_decrypts.contains(&("Allow", "service/table-service")),
        "{user_decrypts:?}"
    );
    kms_service::audit::verify(
        &log,
        Some(&stack.dir.path().join("kms/audit/audit.jsonl.checkpoints")),
        None,
    )
    .expect("audit log verifies");
}

#[tokio::test]
async fn service_managed_key_only_works_via_the_table_service() {
    let stack = start(0).await;
    let mut tables = TableServiceClient::new(channel(stack.tables.addr).await);
    let admin = stack.admin.clone();
    let created = managed_table(&mut tables, &admin, "managed").await;
    let sse = created.sse_description.unwrap();
    assert!(sse.service_managed);
    tables
        .put_item(authed(
            &admin,
            pb::PutItemRequest {
                table_name: "managed".into(),
                item: item(&[("pk", s("a")), ("v", n("1.50"))]),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    let got = tables
        .get_item(authed(
            &admin,
            pb::GetItemRequest {
                table_name: "managed".into(),
                key: item(&[("pk", s("a"))]),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .item;
    assert_eq!(got.get("v"), Some(&n("1.5")));
    // Directly, even the administrator cannot use the service-managed key.
    let mut keys = KeyManagementServiceClient::new(channel(stack.kms.addr).await);
    check_status(
        keys.generate_data_key(authed(
            &admin,
            kms::GenerateDataKeyRequest {
                key_id: "alias/table-service".into(),
                key_spec: kms::DataKeySpec::Aes256.into(),
                ..Default::default()
            },
        ))
        .await,
        Code::PermissionDenied,
        "AccessDeniedException",
        "kms:GenerateDataKey",
    );
    // A service principal of an application is a caller like a user: with
    // table rights it reads the item through table-service.
    let mut iam_client = IdentityServiceClient::new(channel(stack.kms.addr).await);
    let app = principal_token(
        &mut iam_client,
        &admin,
        "service/orders-app",
        iam::PrincipalKind::Service,
        Some("TableReadOnlyAccess"),
    )
    .await;
    let read = tables
        .get_item(authed(
            &app,
            pb::GetItemRequest {
                table_name: "managed".into(),
                key: item(&[("pk", s("a"))]),
            },
        ))
        .await
        .expect("a service principal reads through table-service")
        .into_inner()
        .item;
    assert_eq!(read.get("v"), Some(&n("1.5")));
    stack.tables.stop().await.unwrap();
    stack.kms.stop().await.unwrap();
}

#[tokio::test]
async fn data_key_cache_is_per_principal_and_expires() {
    let stack = start(1).await;
    let kms_ch = channel(stack.kms.addr).await;
    let mut keys = KeyManagementServiceClient::new(kms_ch.clone());
    let mut iam_client = IdentityServiceClient::new(kms_ch);
    let mut tables = TableServiceClient::new(channel(stack.tables.addr).await);
    let admin = stack.admin.clone();
    let key = encrypted_table(&mut keys, &mut tables, &admin, "cached").await;
    let bob = user_token(&mut iam_client, &admin, "bob", Some("TableFullAccess")).await;
    let get = |token: &str| {
        authed(
            token,
            pb::GetItemRequest {
                table_name: "cached".into(),
                key: item(&[("pk", s("a"))]),
            },
        )
    };
    // Admin's read fills admin's cache entry; it must not serve bob.
    assert!(tables.get_item(get(&admin)).await.is_ok());
    check_status(
        tables.get_item(get(&bob)).await,
        Code::PermissionDenied,
        "AccessDeniedException",
        "kms:Decrypt",
    );
    // After the key is disabled, the cached entry serves admin only until the TTL passes.
    keys.disable_key(authed(
        &admin,
        kms::DisableKeyRequest {
            key_id: key.clone(),
        },
    ))
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    check_status(
        tables.get_item(get(&admin)).await,
        Code::FailedPrecondition,
        "DisabledException",
        &key,
    );
    stack.tables.stop().await.unwrap();
    stack.kms.stop().await.unwrap();
}

/// With both caches on, a change of the key policy or of the caller's
/// identity policies takes effect within the caches' lifetime: until then a
/// cached read may still be served, after it the read is refused, naming
/// the permission that is now missing.
#[tokio::test]
async fn policy_changes_take_effect_within_the_cache_lifetime() {
    const TTL: Duration = Duration::from_secs(2);
    let stack = start_with_caches(TTL.as_secs(), TTL.as_secs()).await;
    let kms_ch = channel(stack.kms.addr).await;
    let mut keys = KeyManagementServiceClient::new(kms_ch.clone());
    let mut iam_client = IdentityServiceClient::new(kms_ch);
    let mut tables = TableServiceClient::new(channel(stack.tables.addr).await);
    let admin = stack.admin.clone();
    let key = encrypted_table(&mut keys, &mut tables, &admin, "cached").await;
    let dana = user_token(&mut iam_client, &admin, "dana", Some("TableReadOnlyAccess")).await;
    let policy_of = |with_dana: bool| {
        let mut statements = vec![json!({
            "Sid": "Admin", "Effect": "Allow", "Principal": {"AWS": "user/admin"},
            "Action": "kms:*", "Resource": "*"
        })];
        if with_dana {
            statements.push(json!({
                "Sid": "Dana", "Effect": "Allow", "Principal": {"AWS": "user/dana"},
                "Action": ["kms:Decrypt", "kms:DescribeKey"], "Resource": "*"
            }));
        }
        json!({"Version": "2012-10-17", "Statement": statements}).to_string()
    };
    let put_policy = |with_dana: bool| {
        authed(
            &admin,
            kms::PutKeyPolicyRequest {
                key_id: key.clone(),
                policy_name: "default".into(),
                policy: policy_of(with_dana),
            },
        )
    };
    let get = || {
        authed(
            &dana,
            pb::GetItemRequest {
                table_name: "cached".into(),
                key: item(&[("pk", s("a"))]),
            },
        )
    };
    // Refused (and the caller's caches empty) without the key permission.
    keys.put_key_policy(put_policy(false)).await.unwrap();
    check_status(
        tables.get_item(get()).await,
        Code::PermissionDenied,
        "AccessDeniedException",
        "kms:Decrypt",
    );
    // Allowed: the read fills dana's caches.
    keys.put_key_policy(put_policy(true)).await.unwrap();
    let filled = std::time::Instant::now();
    assert_eq!(
        tables
            .get_item(get())
            .await
            .unwrap()
            .into_inner()
            .item
            .get("secret"),
        Some(&s("x"))
    );
    // The key permission goes: served from the cache at most until it
    // expires, refused after.
    keys.put_key_policy(put_policy(false)).await.unwrap();
    let soon = tables.get_item(get()).await;
    if filled.elapsed() < TTL / 2 {
        assert!(soon.is_ok(), "a cached read within the lifetime: {soon:?}");
    }
    tokio::time::sleep(TTL + Duration::from_millis(300)).await;
    check_status(
        tables.get_item(get()).await,
        Code::PermissionDenied,
        "AccessDeniedException",
        "kms:Decrypt",
    );
    // The table permission goes the same way.
    keys.put_key_policy(put_policy(true)).await.unwrap();
    let filled = std::time::Instant::now();
    tables.get_item(get()).await.expect("allowed again");
    iam_client
        .detach_user_policy(authed(
            &admin,
            iam::DetachUserPolicyRequest {
                user_name: "dana".into(),
                policy_name: "TableReadOnlyAccess".into(),
            },
        ))
        .await
        .unwrap();
    let soon = tables.get_item(get()).await;
    if filled.elapsed() < TTL / 2 {
        assert!(soon.is_ok(), "a cached read within the lifetime: {soon:?}");
    }
    tokio::time::sleep(TTL + Duration::from_millis(300)).await;
    check_status(
        tables.get_item(get()).await,
        Code::PermissionDenied,
        "AccessDeniedException",
        "table:GetItem",
    );
    stack.tables.stop().await.unwrap();
    stack.kms.stop().await.unwrap();
}

/// A principal deleted and made again under its name is a new principal:
/// it is not served the data keys the old one had unwrapped, however long
/// the cache keeps them.
#[tokio::test]
async fn a_principal_made_again_under_a_deleted_name_inherits_no_cached_data_key() {
    let stack = start(60).await;
    let kms_ch = channel(stack.kms.addr).await;
    let mut keys = KeyManagementServiceClient::new(kms_ch.clone());
    let mut iam_client = IdentityServiceClient::new(kms_ch);
    let mut tables = TableServiceClient::new(channel(stack.tables.addr).await);
    let admin = stack.admin.clone();
    encrypted_table(&mut keys, &mut tables, &admin, "reborn").await;
    let get = |token: &str| {
        authed(
            token,
            pb::GetItemRequest {
                table_name: "reborn".into(),
                key: item(&[("pk", s("a"))]),
            },
        )
    };
    // The old alice may use every key (identity policy): her read is
    // cached.
    let old = user_token(
        &mut iam_client,
        &admin,
        "alice",
        Some("AdministratorAccess"),
    )
    .await;
    assert!(tables.get_item(get(&old)).await.is_ok());
    iam_client
        .delete_user(authed(
            &admin,
            iam::DeleteUserRequest {
                user_name: "alice".into(),
            },
        ))
        .await
        .unwrap();
    // The new alice may use the table, not the key.
    let new = user_token(&mut iam_client, &admin, "alice", Some("TableFullAccess")).await;
    check_status(
        tables.get_item(get(&new)).await,
        Code::PermissionDenied,
        "AccessDeniedException",
        "kms:Decrypt",
    );
    stack.tables.stop().await.unwrap();
    stack.kms.stop().await.unwrap();
}

/// A user named in the key policy (kms:Decrypt) but without the table
/// right, one with the table right but no key right, one with neither.
/// With the data-key cache off, table-service reads an existing item with
/// one kms-service call, a Decrypt made conditional on `table:GetItem`
/// (`x-authorize`), and asks for the decision alone only when there is no
/// key to unwrap; the answers must be those of the one-after-another path
/// (cache on): the table decision first, then the table and key checks,
/// then the unwrapping.
#[tokio::test]
async fn get_item_errors_are_the_same_whether_or_not_its_decision_is_folded_into_the_decrypt() {
    for ttl in [0, 60] {
        let stack = start(ttl).await;
        let kms_ch = channel(stack.kms.addr).await;
        let mut keys = KeyManagementServiceClient::new(kms_ch.clone());
        let mut iam_client = IdentityServiceClient::new(kms_ch);
        let mut tables = TableServiceClient::new(channel(stack.tables.addr).await);
        let admin = stack.admin.clone();
        let key = encrypted_table(&mut keys, &mut tables, &admin, "overlap").await;
        let mut tokens = HashMap::new();
        for (name, policy) in [
            ("carol", None),
            ("bob", Some("TableFullAccess")),
            ("dave", None),
        ] {
            let token = user_token(&mut iam_client, &admin, name, policy).await;
            tokens.insert(name, token);
        }
        // carol may use the key, not the table.
        let policy = keys
            .get_key_policy(authed(
                &admin,
                kms::GetKeyPolicyRequest {
                    key_id: key.clone(),
                    policy_name: String::new(),
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .policy;
        let mut doc: serde_json::Value = serde_json::from_str(&policy).unwrap();
        doc["Statement"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({
                "Sid": "CarolDecrypts", "Effect": "Allow", "Principal": {"AWS": "user/carol"},
                "Action": "kms:Decrypt", "Resource": "*"
            }));
        keys.put_key_policy(authed(
            &admin,
            kms::PutKeyPolicyRequest {
                key_id: key.clone(),
                policy_name: "default".into(),
                policy: doc.to_string(),
            },
        ))
        .await
        .unwrap();

        let get = |token: &str, table: &str, key: HashMap<String, pb::AttributeValue>| {
            authed(
                token,
                pb::GetItemRequest {
                    table_name: table.into(),
                    key,
                },
            )
        };
        let a = || item(&[("pk", s("a"))]);
        let table_denied = |user: &str, table: &str| {
            format!(
                "User: user/{user} is not authorized to perform: table:GetItem on resource: table/{table} because no identity-based policy allows the table:GetItem action"
            )
        };
        for user in ["carol", "dave"] {
            let token = &tokens[user];
            for (table, key) in [
                ("overlap", a()),
                ("overlap", item(&[("other", s("a"))])),
                ("overlap", item(&[("pk", s("missing"))])),
                ("nope", a()),
            ] {
                check_status(
                    tables.get_item(get(token, table, key)).await,
                    Code::PermissionDenied,
                    "AccessDeniedException",
                    &table_denied(user, table),
                );
            }
        }
        check_status(
            tables.get_item(get(&tokens["bob"], "overlap", a())).await,
            Code::PermissionDenied,
            "AccessDeniedException",
            &format!(
                "User: user/bob is not authorized to perform: kms:Decrypt on resource: key/{key}"
            ),
        );
        // Table and key checks come before the unwrapping: bob gets them
        // although the key would refuse him.
        check_status(
            tables.get_item(get(&tokens["bob"], "nope", a())).await,
            Code::NotFound,
            "ResourceNotFoundException",
            "Table: nope not found",
        );
        check_status(
            tables
                .get_item(get(&tokens["bob"], "overlap", item(&[("other", s("a"))])))
                .await,
            Code::InvalidArgument,
            "ValidationException",
            "pk",
        );
        let missing = tables
            .get_item(get(
                &tokens["bob"],
                "overlap",
                item(&[("pk", s("missing"))]),
            ))
            .await
            .unwrap()
            .into_inner()
            .item;
        assert!(missing.is_empty(), "ttl {ttl}: {missing:?}");
        let log = stack.dir.path().join("kms/audit/audit.jsonl");
        let before = std::fs::read_to_string(&log).unwrap().lines().count();
        let got = tables
            .get_item(get(&admin, "overlap", a()))
            .await
            .unwrap()
            .into_inner()
            .item;
        assert_eq!(got.get("secret"), Some(&s("x")), "ttl {ttl}");
        // Its records are durable before the answer.
        let records: Vec<serde_json::Value> = std::fs::read_to_string(&log)
            .unwrap()
            .lines()
            .skip(before)
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let calls: Vec<(&str, &serde_json::Value)> = records
            .iter()
            .map(|r| (r["event_name"].as_str().unwrap(), &r["resources"]))
            .collect();
        let key_resource = format!("key/{key}");
        if ttl == 0 {
            let both = serde_json::json!(["table/overlap", key_resource]);
            assert_eq!(calls, [("Decrypt", &both)], "ttl {ttl}");
        } else {
            let table = serde_json::json!(["table/overlap"]);
            let key = serde_json::json!([key_resource]);
            assert_eq!(
                calls,
                [("Authorize", &table), ("Decrypt", &key)],
                "ttl {ttl}"
            );
        }
        stack.tables.stop().await.unwrap();
        stack.kms.stop().await.unwrap();
    }
}

/// A principal that may generate data keys but not decrypt (a write-only
/// producer) can still make conditional writes whose conditions name only
/// key attributes, such as "create only if absent": whether the item exists
/// answers them, without unwrapping its data key. A condition on any other
/// attribute, or ALL_OLD, needs the item's plaintext and so kms:Decrypt.
#[tokio::test]
async fn a_writer_without_decrypt_can_create_only_if_absent() {
    let stack = start(0).await;
    let kms_ch = channel(stack.kms.addr).await;
    let mut keys = KeyManagementServiceClient::new(kms_ch.clone());
    let mut iam_client = IdentityServiceClient::new(kms_ch);
    let mut tables = TableServiceClient::new(channel(stack.tables.addr).await);
    let admin = stack.admin.clone();
    let key = encrypted_table(&mut keys, &mut tables, &admin, "ingest").await;
    let writer = user_token(&mut iam_client, &admin, "writer", Some("TableFullAccess")).await;
    let policy = r#"{"Version":"2012-10-17","Statement":[
      {"Sid":"Admin","Effect":"Allow","Principal":{"AWS":"user/admin"},"Action":"kms:*","Resource":"*"},
      {"Sid":"WriteOnly","Effect":"Allow","Principal":{"AWS":"user/writer"},"Action":"kms:GenerateDataKey","Resource":"*"}]}"#
        .to_string();
    keys.put_key_policy(authed(
        &admin,
        kms::PutKeyPolicyRequest {
            key_id: key.clone(),
            policy_name: "default".into(),
            policy,
        },
    ))
    .await
    .unwrap();
    let absent = |attribute: &str| pb::Condition {
        kind: Some(pb::condition::Kind::AttributeNotExists(attribute.into())),
    };
    let put = |pk: &str, conditions: Vec<pb::Condition>, return_values: pb::ReturnValues| {
        authed(
            &writer,
            pb::PutItemRequest {
                table_name: "ingest".into(),
                item: item(&[("pk", s(pk)), ("v", s("written"))]),
                conditions,
                return_values: return_values.into(),
            },
        )
    };
    tables
        .put_item(put("b", vec![absent("pk")], pb::ReturnValues::None))
        .await
        .expect("created: b was absent");
    check_status(
        tables
            .put_item(put("b", vec![absent("pk")], pb::ReturnValues::None))
            .await,
        Code::FailedPrecondition,
        "ConditionalCheckFailedException",
        "attribute_not_exists(pk)",
    );
    for (conditions, return_values) in [
        (vec![absent("v")], pb::ReturnValues::None),
        (vec![absent("pk")], pb::ReturnValues::AllOld),
    ] {
        check_status(
            tables.put_item(put("a", conditions, return_values)).await,
            Code::PermissionDenied,
            "AccessDeniedException",
            "kms:Decrypt",
        );
    }
    tables
        .delete_item(authed(
            &writer,
            pb::DeleteItemRequest {
                table_name: "ingest".into(),
                key: item(&[("pk", s("b"))]),
                conditions: vec![pb::Condition {
                    kind: Some(pb::condition::Kind::AttributeExists("pk".into())),
                }],
                ..Default::default()
            },
        ))
        .await
        .expect("deleted: b existed");
    // The admin still reads what the writer could not: "a" unchanged.
    let a = tables
        .get_item(authed(
            &admin,
            pb::GetItemRequest {
                table_name: "ingest".into(),
                key: item(&[("pk", s("a"))]),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .item;
    assert_eq!(a.get("secret"), Some(&s("x")));
    assert_eq!(a.get("v"), None);
}

/// table-service trusts a conditional call (a Decrypt or GenerateDataKey
/// that also decides `table:GetItem` or `table:PutItem`) only when
/// kms-service names the principal it decided for. A kms-service that
/// ignores `x-authorize` (one older than it) does not: in front of one,
/// simulated by dropping `x-authorize` from every call and `x-principal`
/// from every answer, a cache-off
/// GetItem and a plain PutItem are refused instead of going through with
/// nobody having checked the table permission, a refused caller learns
/// nothing about the item, and the calls that ask `Authorize` (a
/// conditional PutItem, a Query) still work.
#[tokio::test]
async fn a_kms_service_that_does_not_confirm_x_authorize_is_not_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let (kms, admin, token_file) = kms_for_tables(dir.path()).await;

    // The same service, behind a front that makes it one older than
    // x-authorize: the condition never reaches it, and no x-principal comes
    // back.
    let (kms_grpc, iam_grpc) = kms_service::grpc::services(kms.kms.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let front_addr = listener.local_addr().unwrap();
    let strip = tower::ServiceBuilder::new()
        .map_request(|mut request: http::Request<_>| {
            request.headers_mut().remove("x-authorize");
            request
        })
        .map_response(|mut response: http::Response<_>| {
            response.headers_mut().remove("x-principal");
            response
        });
    let front = tokio::spawn(
        tonic::transport::Server::builder()
            .layer(strip)
            .add_service(
                lockbox_proto::kms::v1::key_management_service_server::KeyManagementServiceServer::new(kms_grpc),
            )
            .add_service(
                lockbox_proto::iam::v1::identity_service_server::IdentityServiceServer::new(iam_grpc),
            )
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let tables_server = tables_on(dir.path(), front_addr, token_file).await;

    let kms_ch = channel(kms.addr).await;
    let mut keys = KeyManagementServiceClient::new(kms_ch.clone());
    let mut iam_client = IdentityServiceClient::new(kms_ch);
    let mallory = user_token(&mut iam_client, &admin, "mallory", None).await;
    let mut tables = TableServiceClient::new(channel(tables_server.addr).await);
    keyed_table(&mut keys, &mut tables, &admin, "front").await;
    let put = |conditions: Vec<pb::Condition>| {
        authed(
            &admin,
            pb::PutItemRequest {
                table_name: "front".into(),
                item: item(&[("pk", s("a")), ("v", s("1"))]),
                conditions,
                ..Default::default()
            },
        )
    };
    let internal = |result| {
        check_status(
            result,
            Code::Internal,
            "InternalServerError",
            "see the table-service log",
        )
    };
    internal(tables.put_item(put(vec![])).await.map(|_| ()));
    let absent = pb::Condition {
        kind: Some(pb::condition::Kind::AttributeNotExists("pk".into())),
    };
    tables.put_item(put(vec![absent])).await.unwrap();

    let get = |token: &str, pk: &str| {
        authed(
            token,
            pb::GetItemRequest {
                table_name: "front".into(),
                key: item(&[("pk", s(pk))]),
            },
        )
    };
    internal(tables.get_item(get(&admin, "a")).await.map(|_| ()));
    for pk in ["a", "missing"] {
        check_status(
            tables.get_item(get(&mallory, pk)).await,
            Code::PermissionDenied,
            "AccessDeniedException",
            "User: user/mallory is not authorized to perform: table:GetItem on resource: table/front",
        );
    }
    // The item is there, as a Query (Authorize, then Decrypts) shows.
    let found = tables
        .query(authed(
            &admin,
            pb::QueryRequest {
                table_name: "front".into(),
                partition_key_value: Some(s("a")),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .items;
    assert_eq!(found.len(), 1);
    tables_server.stop().await.unwrap();
    front.abort();
    let _ = front.await;
    kms.stop().await.unwrap();
}

/// A PutItem whose decision is not cached and that has no conditions asks
/// for its data key with one GenerateDataKey conditional on
/// `table:PutItem`: the answers are those of deciding first (the table
/// decision, then the table and item checks, then the key), and it leaves
/// one audit record naming both resources. With a condition, the decision
/// comes first on its own (conditions are checked only for a caller who may
/// write).
#[tokio::test]
async fn put_item_decides_the_table_action_with_its_data_key() {
    let stack = start(0).await;
    let kms_ch = channel(stack.kms.addr).await;
    let mut keys = KeyManagementServiceClient::new(kms_ch.clone());
    let mut iam_client = IdentityServiceClient::new(kms_ch);
    let mut tables = TableServiceClient::new(channel(stack.tables.addr).await);
    let admin = stack.admin.clone();
    let key = encrypted_table(&mut keys, &mut tables, &admin, "fold").await;
    // carol may use the key but only read the table; bob may write the
    // table but not use the key.
    let carol = user_token(
        &mut iam_client,
        &admin,
        "carol",
        Some("TableReadOnlyAccess"),
    )
    .await;
    let bob = user_token(&mut iam_client, &admin, "bob", Some("TableFullAccess")).await;
    let policy = r#"{"Version":"2012-10-17","Statement":[
      {"Sid":"Admin","Effect":"Allow","Principal":{"AWS":"user/admin"},"Action":"kms:*","Resource":"*"},
      {"Sid":"Carol","Effect":"Allow","Principal":{"AWS":"user/carol"},"Action":"kms:*","Resource":"*"}]}"#;
    keys.put_key_policy(authed(
        &admin,
        kms::PutKeyPolicyRequest {
            key_id: key.clone(),
            policy_name: "default".into(),
            policy: policy.into(),
        },
    ))
    .await
    .unwrap();
    let put = |token: &str, table: &str, pk: &str, conditions: Vec<pb::Condition>| {
        let key_attribute = if pk.is_empty() { "other" } else { "pk" };
        authed(
            token,
            pb::PutItemRequest {
                table_name: table.into(),
                item: item(&[(key_attribute, s(pk)), ("v", s("1"))]),
                conditions,
                return_values: pb::ReturnValues::None.into(),
            },
        )
    };
    let denied = |user: &str, action: &str, resource: &str| {
        format!("User: user/{user} is not authorized to perform: {action} on resource: {resource}")
    };
    for (table, pk) in [("fold", "b"), ("fold", ""), ("nope", "b")] {
        check_status(
            tables.put_item(put(&carol, table, pk, vec![])).await,
            Code::PermissionDenied,
            "AccessDeniedException",
            &denied("carol", "table:PutItem", &format!("table/{table}")),
        );
    }
    check_status(
        tables.put_item(put(&bob, "fold", "b", vec![])).await,
        Code::PermissionDenied,
        "AccessDeniedException",
        &denied("bob", "kms:GenerateDataKey", &format!("key/{key}")),
    );
    check_status(
        tables.put_item(put(&bob, "nope", "b", vec![])).await,
        Code::NotFound,
        "ResourceNotFoundException",
        "Table: nope not found",
    );
    check_status(
        tables.put_item(put(&bob, "fold", "", vec![])).await,
        Code::InvalidArgument,
        "ValidationException",
        "pk",
    );

    let log = stack.dir.path().join("kms/audit/audit.jsonl");
    let calls_of = async |request| {
        let before = std::fs::read_to_string(&log).unwrap().lines().count();
        let mut tables = TableServiceClient::new(channel(stack.tables.addr).await);
        tables.put_item(request).await.unwrap();
        std::fs::read_to_string(&log)
            .unwrap()
            .lines()
            .skip(before)
            .map(|l| {
                let r: serde_json::Value = serde_json::from_str(l).unwrap();
                (
                    r["event_name"].as_str().unwrap().to_string(),
                    r["resources"].clone(),
                )
            })
            .collect::<Vec<_>>()
    };
    let key_resource = format!("key/{key}");
    assert_eq!(
        calls_of(put(&admin, "fold", "b", vec![])).await,
        [(
            "GenerateDataKey".to_string(),
            serde_json::json!(["table/fold", key_resource])
        )]
    );
    let absent = pb::Condition {
        kind: Some(pb::condition::Kind::AttributeNotExists("pk".into())),
    };
    let authorize = ("Authorize".to_string(), serde_json::json!(["table/fold"]));
    let generate = (
        "GenerateDataKey".to_string(),
        serde_json::json!([key_resource]),
    );
    assert_eq!(
        calls_of(put(&admin, "fold", "c", vec![absent])).await,
        [authorize.clone(), generate.clone()]
    );
    // ALL_OLD reads the old item first: the decision comes before it, and
    // asks for table:GetItem besides table:PutItem, in the same call.
    let mut all_old = put(&admin, "fold", "c", vec![]);
    all_old.get_mut().return_values = pb::ReturnValues::AllOld.into();
    let decrypt = ("Decrypt".to_string(), serde_json::json!([key_resource]));
    assert_eq!(calls_of(all_old).await, [authorize, decrypt, generate]);
    let record: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(&log)
            .unwrap()
            .lines()
            .rev()
            .find(|l| l.contains("\"Authorize\""))
            .unwrap(),
    )
    .unwrap();
    let asked: Vec<_> = record["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["action"].clone(),
                c["resource"].clone(),
                c["decision"].clone(),
            )
        })
        .collect();
    assert_eq!(
        asked,
        [
            (json!("table:PutItem"), json!("table/fold"), json!("Allow")),
            (json!("table:GetItem"), json!("table/fold"), json!("Allow")),
        ]
    );
    // A caller who is not authenticated costs one call, not two.
    let before = std::fs::read_to_string(&log).unwrap().lines().count();
    check_status(
        tables
            .put_item(put("lbx_forged", "fold", "b", vec![]))
            .await,
        Code::Unauthenticated,
        "UnrecognizedClientException",
        "",
    );
    let after: Vec<serde_json::Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .skip(before)
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(after.len(), 1, "{after:#?}");
    assert_eq!(after[0]["event_name"], "GenerateDataKey");
    assert_eq!(after[0]["decision"], "Unauthenticated");
    stack.tables.stop().await.unwrap();
    stack.kms.stop().await.unwrap();
}

/// With the allow cache on and the data-key cache off, a GetItem whose
/// decision is not cached makes one conditional Decrypt, and its success
/// is remembered as an allow: the next GetItem is a plain Decrypt; the same
/// for a PutItem and its GenerateDataKey. A conditional Decrypt that fails
/// (the caller may read the table but not use the key) leaves no allow
/// behind.
#[tokio::test]
async fn a_conditional_call_that_succeeds_fills_the_allow_cache() {
    let stack = start_with_caches(0, 60).await;
    let kms_ch = channel(stack.kms.addr).await;
    let mut keys = KeyManagementServiceClient::new(kms_ch.clone());
    let mut iam_client = IdentityServiceClient::new(kms_ch);
    let mut tables = TableServiceClient::new(channel(stack.tables.addr).await);
    let admin = stack.admin.clone();
    let key = encrypted_table(&mut keys, &mut tables, &admin, "warm").await;
    let bob = user_token(&mut iam_client, &admin, "bob", Some("TableFullAccess")).await;
    let log = stack.dir.path().join("kms/audit/audit.jsonl");
    // The kms-service calls a request made: each as its name and the
    // actions of its conditions.
    let calls_during = async |request: std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<(), tonic::Status>> + '_>,
    >| {
        let before = std::fs::read_to_string(&log).unwrap().lines().count();
        let result = request.await;
        let calls: Vec<String> = std::fs::read_to_string(&log)
            .unwrap()
            .lines()
            .skip(before)
            .map(|l| {
                let r: serde_json::Value = serde_json::from_str(l).unwrap();
                let mut call = r["event_name"].as_str().unwrap().to_string();
                for c in r["conditions"].as_array().into_iter().flatten() {
                    call += &format!(" if {}", c["action"].as_str().unwrap());
                }
                call
            })
            .collect();
        (result, calls)
    };
    let get = |token: &str| {
        let mut tables = tables.clone();
        let request = authed(
            token,
            pb::GetItemRequest {
                table_name: "warm".into(),
                key: item(&[("pk", s("a"))]),
            },
        );
        Box::pin(async move { tables.get_item(request).await.map(|_| ()) })
            as std::pin::Pin<Box<dyn std::future::Future<Output = _>>>
    };
    // encrypted_table's PutItem made the admin's PutItem allow cached; a
    // second token of the admin's has its own entries.
    let admin2 = iam_client
        .create_access_token(authed(
            &admin,
            iam::CreateAccessTokenRequest {
                user_name: "admin".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .token;
    let put = || {
        let mut tables = tables.clone();
        let request = authed(
            &admin2,
            pb::PutItemRequest {
                table_name: "warm".into(),
                item: item(&[("pk", s("b")), ("v", s("1"))]),
                ..Default::default()
            },
        );
        Box::pin(async move { tables.put_item(request).await.map(|_| ()) })
            as std::pin::Pin<Box<dyn std::future::Future<Output = _>>>
    };

    let (first, calls) = calls_during(get(&admin)).await;
    first.unwrap();
    assert_eq!(calls, ["Decrypt if table:GetItem"]);
    let (second, calls) = calls_during(get(&admin)).await;
    second.unwrap();
    assert_eq!(calls, ["Decrypt"], "the allow was not cached");
    let (first, calls) = calls_during(put()).await;
    first.unwrap();
    assert_eq!(calls, ["GenerateDataKey if table:PutItem"]);
    let (second, calls) = calls_during(put()).await;
    second.unwrap();
    assert_eq!(calls, ["GenerateDataKey"], "the allow was not cached");

    for attempt in 0..2 {
        let (refused, calls) = calls_during(get(&bob)).await;
        check_status(
            refused,
            Code::PermissionDenied,
            "AccessDeniedException",
            &format!(
                "User: user/bob is not authorized to perform: kms:Decrypt on resource: key/{key}"
            ),
        );
        assert_eq!(calls, ["Decrypt if table:GetItem"], "attempt {attempt}");
    }
    stack.tables.stop().await.unwrap();
    stack.kms.stop().await.unwrap();
}

/// Once a table's key is deleted (ScheduleKeyDeletion, the window passed,
/// kms-service's maintenance destroyed it), kms-service answers Decrypt of
/// its items' data keys with InvalidCiphertextException, as for a foreign
/// blob. table-service does not call that an altered item: GetItem (one
/// conditional Decrypt), Scan (a page of unwraps) and UpdateItem (reading
/// the current item) say the key no longer exists, naming it and the
/// table. An item whose key exists but whose wrapped key was moved stays
/// an integrity error (`an_envelope_moved_to_another_item_or_table_is_refused`
/// in tables.rs).
#[tokio::test]
async fn items_of_a_deleted_key_say_the_key_is_gone_not_that_they_were_altered() {
    let clock = Arc::new(ManualClock::new(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64,
    ));
    let stack = start_with_clock(0, 0, clock.clone()).await;
    let mut keys = KeyManagementServiceClient::new(channel(stack.kms.addr).await);
    let mut tables = TableServiceClient::new(channel(stack.tables.addr).await);
    let admin = stack.admin.clone();
    let key = encrypted_table(&mut keys, &mut tables, &admin, "orphaned").await;
    let get = |tables: &TableServiceClient<Channel>| {
        let mut tables = tables.clone();
        let request = authed(
            &admin,
            pb::GetItemRequest {
                table_name: "orphaned".into(),
                key: item(&[("pk", s("a"))]),
            },
        );
        async move { tables.get_item(request).await }
    };
    get(&tables).await.expect("readable while the key exists");
    // DescribeTable shows the key's state as kms-service tells it.
    let key_state = |tables: &TableServiceClient<Channel>| {
        let mut tables = tables.clone();
        let request = authed(
            &admin,
            pb::DescribeTableRequest {
                table_name: "orphaned".into(),
            },
        );
        async move {
            let table = tables.describe_table(request).await.unwrap().into_inner();
            let table = table.table.unwrap();
            (table.sse_description.unwrap().key_state, table.item_count)
        }
    };
    assert_eq!(key_state(&tables).await, ("Enabled".into(), 1));

    keys.schedule_key_deletion(authed(
        &admin,
        kms::ScheduleKeyDeletionRequest {
            key_id: key.clone(),
            pending_window_in_days: Some(7),
        },
    ))
    .await
    .unwrap();
    // Pending deletion: kms-service says so itself.
    check_status(
        get(&tables).await,
        Code::FailedPrecondition,
        "KMSInvalidStateException",
        "pending deletion",
    );
    assert_eq!(key_state(&tables).await, ("PendingDeletion".into(), 1));
    clock.advance(8 * 24 * 3600);
    let report = stack.kms.kms.run_maintenance().await.unwrap();
    assert_eq!(report.destroyed, [key.as_str()]);
    assert_eq!(
        key_state(&tables).await,
        ("Unknown (NotFoundException)".into(), 1)
    );

    let gone = format!(
        "key {key} of table orphaned no longer exists (it was deleted); its items, such as item pk (S) \"a\", cannot be decrypted"
    );
    let got = get(&tables).await;
    assert!(
        !format!("{got:?}").contains("integrity"),
        "the item is intact: {got:?}"
    );
    check_status(
        got,
        Code::FailedPrecondition,
        "KMSInvalidStateException",
        &gone,
    );
    check_status(
        tables
            .scan(authed(
                &admin,
                pb::ScanRequest {
                    table_name: "orphaned".into(),
                    ..Default::default()
                },
            ))
            .await,
        Code::FailedPrecondition,
        "KMSInvalidStateException",
        &gone,
    );
    check_status(
        tables
            .update_item(authed(
                &admin,
                pb::UpdateItemRequest {
                    table_name: "orphaned".into(),
                    key: item(&[("pk", s("a"))]),
                    actions: vec![pb::UpdateAction {
                        action: Some(pb::update_action::Action::Set(pb::SetAction {
                            attribute: "secret".into(),
                            value: Some(s("y")),
                        })),
                    }],
                    ..Default::default()
                },
            ))
            .await,
        Code::FailedPrecondition,
        "KMSInvalidStateException",
        &gone,
    );
    stack.tables.stop().await.unwrap();
    stack.kms.stop().await.unwrap();
}

/// When kms-service refuses table-service's own credential (its token was
/// revoked), a caller's request is answered UNAVAILABLE, saying the service
/// is misconfigured, not that the caller's credential is bad.
#[tokio::test]
async fn a_revoked_service_token_is_not_blamed_on_the_caller() {
    let stack = start(0).await;
    let mut keys = KeyManagementServiceClient::new(channel(stack.kms.addr).await);
    let mut tables = TableServiceClient::new(channel(stack.tables.addr).await);
    let mut iam_client = IdentityServiceClient::new(channel(stack.kms.addr).await);
    encrypted_table(&mut keys, &mut tables, &stack.admin, "orders").await;
    let get = || {
        authed(
            &stack.admin,
            pb::GetItemRequest {
                table_name: "orders".into(),
                key: item(&[("pk", s("a"))]),
            },
        )
    };
    tables.get_item(get()).await.expect("served before");
    // A caller's own bad token is the caller's to fix.
    let bad_caller = || {
        authed(
            "lbx_not-a-token",
            pb::GetItemRequest {
                table_name: "orders".into(),
                key: item(&[("pk", s("a"))]),
            },
        )
    };
    check_status(
        tables.get_item(bad_caller()).await,
        Code::Unauthenticated,
        "UnrecognizedClientException",
        "the caller's credential (forwarded in x-on-behalf-of) is not a valid access token",
    );
    let service_tokens = iam_client
        .list_access_tokens(authed(
            &stack.admin,
            iam::ListAccessTokensRequest {
                user_name: "service/table-service".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .tokens;
    assert!(!service_tokens.is_empty());
    for token in service_tokens {
        iam_client
            .delete_access_token(authed(
                &stack.admin,
                iam::DeleteAccessTokenRequest {
                    user_name: "service/table-service".into(),
                    token_id: token.token_id,
                },
            ))
            .await
            .unwrap();
    }
    check_status(
        tables.get_item(get()).await,
        Code::Unavailable,
        "ServiceUnavailableException",
        "kms-service refused table-service's own credential (the service's own credential (authorization) has been revoked)",
    );
    // Whoever calls: the service cannot vouch for anyone now.
    check_status(
        tables.get_item(bad_caller()).await,
        Code::Unavailable,
        "ServiceUnavailableException",
        "table-service's own credential",
    );
}

/// An update that cannot succeed whatever the item holds is refused before
/// the item is read: a caller with table rights but no key rights is told
/// what is wrong with the request, not refused kms:Decrypt, and no data key
/// is unwrapped for it.
#[tokio::test]
async fn an_update_that_cannot_succeed_is_refused_before_any_key_use() {
    let stack = start(0).await;
    let mut keys = KeyManagementServiceClient::new(channel(stack.kms.addr).await);
    let mut tables = TableServiceClient::new(channel(stack.tables.addr).await);
    let mut iam_client = IdentityServiceClient::new(channel(stack.kms.addr).await);
    encrypted_table(&mut keys, &mut tables, &stack.admin, "orders").await;
    let writer = user_token(
        &mut iam_client,
        &stack.admin,
        "writer",
        Some("TableFullAccess"),
    )
    .await;
    let update = |action: pb::update_action::Action, conditions: Vec<pb::Condition>| {
        authed(
            &writer,
            pb::UpdateItemRequest {
                table_name: "orders".into(),
                key: item(&[("pk", s("a"))]),
                actions: vec![pb::UpdateAction {
                    action: Some(action),
                }],
                conditions,
                ..Default::default()
            },
        )
    };
    let audit = stack.dir.path().join("kms/audit/audit.jsonl");
    let decrypts = || {
        std::fs::read_to_string(&audit)
            .unwrap()
            .lines()
            .filter(|l| l.contains("\"event_name\":\"Decrypt\""))
            .count()
    };
    let before = decrypts();
    check_status(
        tables
            .update_item(update(
                pb::update_action::Action::Add(pb::SetAction {
                    attribute: "secret".into(),
                    value: Some(s("more")),
                }),
                vec![],
            ))
            .await,
        Code::InvalidArgument,
        "ValidationException",
        "ADD to secret: cannot add S; ADD works on numbers and sets",
    );
    check_status(
        tables
            .update_item(update(
                pb::update_action::Action::Set(pb::SetAction {
                    attribute: "pk".into(),
                    value: Some(s("b")),
                }),
                vec![pb::Condition {
                    kind: Some(pb::condition::Kind::AttributeExists("missing".into())),
                }],
            ))
            .await,
        Code::InvalidArgument,
        "ValidationException",
        "Cannot update attribute pk. This attribute is part of the key",
    );
    assert_eq!(
        decrypts(),
        before,
        "a data key was unwrapped for a bad request"
    );
    // A well-formed update still needs the key.
    check_status(
        tables
            .update_item(update(
                pb::update_action::Action::Set(pb::SetAction {
                    attribute: "secret".into(),
                    value: Some(s("y")),
                }),
                vec![],
            ))
            .await,
        Code::PermissionDenied,
        "AccessDeniedException",
        "kms:Decrypt",
    );
}

/// What a [`KmsFront`] does with the Decrypt calls through it.
#[derive(Clone, Copy)]
enum DecryptsAre {
    /// Answered as an unreachable kms-service would (UNAVAILABLE, no
    /// ErrorInfo).
    Down,
    /// Passed on, and answered only this long after kms-service answered.
    Slow(Duration),
}

/// A front on kms-service that counts the Authorize calls through it, and
/// the Decrypt calls in flight at once (the most seen), and treats Decrypts
/// as [`DecryptsAre`] says.
#[derive(Clone)]
struct KmsFront<S> {
    inner: S,
    decrypts: DecryptsAre,
    counts: Arc<FrontCounts>,
}

#[derive(Default)]
struct FrontCounts {
    authorizes: std::sync::atomic::AtomicUsize,
    decrypts_in_flight: std::sync::atomic::AtomicUsize,
    most_decrypts_in_flight: std::sync::atomic::AtomicUsize,
}

impl<S, B> tower::Service<http::Request<B>> for KmsFront<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send,
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
        let path = request.uri().path();
        if path.ends_with("/Authorize") {
            self.counts.authorizes.fetch_add(1, SeqCst);
        }
        if !path.ends_with("/Decrypt") {
            return Box::pin(self.inner.call(request));
        }
        match self.decrypts {
            DecryptsAre::Down => {
                Box::pin(async { Ok(tonic::Status::unavailable("connection refused").into_http()) })
            }
            DecryptsAre::Slow(delay) => {
                let counts = self.counts.clone();
                let now = counts.decrypts_in_flight.fetch_add(1, SeqCst) + 1;
                counts.most_decrypts_in_flight.fetch_max(now, SeqCst);
                let answer = self.inner.call(request);
                Box::pin(async move {
                    let answer = answer.await;
                    tokio::time::sleep(delay).await;
                    counts.decrypts_in_flight.fetch_sub(1, SeqCst);
                    answer
                })
            }
        }
    }
}

/// kms-service's services behind a [`KmsFront`] on a port of its own;
/// returns the front's address, its counts and its task.
async fn kms_front(
    kms: &KmsServer,
    decrypts: DecryptsAre,
) -> (
    std::net::SocketAddr,
    Arc<FrontCounts>,
    tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
) {
    let (kms_grpc, iam_grpc) = kms_service::grpc::services(kms.kms.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let front_addr = listener.local_addr().unwrap();
    let counts = Arc::new(FrontCounts::default());
    let shared = counts.clone();
    let front = tokio::spawn(
        tonic::transport::Server::builder()
            .layer(tower::layer::layer_fn(move |inner| KmsFront {
                inner,
                decrypts,
                counts: shared.clone(),
            }))
            .add_service(
                lockbox_proto::kms::v1::key_management_service_server::KeyManagementServiceServer::new(kms_grpc),
            )
            .add_service(
                lockbox_proto::iam::v1::identity_service_server::IdentityServiceServer::new(iam_grpc),
            )
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    (front_addr, counts, front)
}

/// When kms-service cannot be reached for a GetItem's conditional
/// Decrypt, the answer is UNAVAILABLE at once: no fallback Authorize is
/// tried (it could not be answered either), unlike a refusal that names no
/// principal.
#[tokio::test]
async fn an_unreachable_kms_service_is_not_asked_again_for_the_decision() {
    let dir = tempfile::tempdir().unwrap();
    let (kms, admin, token_file) = kms_for_tables(dir.path()).await;
    let (front_addr, counts, front) = kms_front(&kms, DecryptsAre::Down).await;
    let tables_server = tables_on(dir.path(), front_addr, token_file).await;
    let mut keys = KeyManagementServiceClient::new(channel(kms.addr).await);
    let mut tables = TableServiceClient::new(channel(tables_server.addr).await);
    encrypted_table(&mut keys, &mut tables, &admin, "down").await;

    let before = counts.authorizes.load(std::sync::atomic::Ordering::SeqCst);
    check_status(
        tables
            .get_item(authed(
                &admin,
                pb::GetItemRequest {
                    table_name: "down".into(),
                    key: item(&[("pk", s("a"))]),
                },
            ))
            .await,
        Code::Unavailable,
        "KMSUnavailableException",
        "",
    );
    assert_eq!(
        counts.authorizes.load(std::sync::atomic::Ordering::SeqCst),
        before,
        "an Authorize was tried after kms-service could not be reached"
    );
    tables_server.stop().await.unwrap();
    front.abort();
    kms.stop().await.unwrap();
}

/// Query, Scan and BatchGetItem unwrap their items' data keys at the same
/// time, not one kms-service round trip after another: behind a
/// kms-service whose Decrypts each take 100 ms longer, many are in flight
/// at once (caches off, so each item is one Decrypt).
#[tokio::test]
async fn a_page_unwraps_its_data_keys_in_parallel() {
    let dir = tempfile::tempdir().unwrap();
    let (kms, admin, token_file) = kms_for_tables(dir.path()).await;
    let (front_addr, counts, front) =
        kms_front(&kms, DecryptsAre::Slow(Duration::from_millis(100))).await;
    let tables_server = tables_on(dir.path(), front_addr, token_file).await;
    let mut keys = KeyManagementServiceClient::new(channel(kms.addr).await);
    let mut tables = TableServiceClient::new(channel(tables_server.addr).await);
    let key = keys
        .create_key(authed(&admin, kms::CreateKeyRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .key_metadata
        .unwrap()
        .key_id;
    tables
        .create_table(authed(
            &admin,
            pb::CreateTableRequest {
                table_name: "wide".into(),
                key_schema: Some(pb::KeySchema {
                    partition_key: Some(pb::KeyElement {
                        name: "pk".into(),
                        r#type: pb::ScalarType::S.into(),
                    }),
                    sort_key: Some(pb::KeyElement {
                        name: "n".into(),
                        r#type: pb::ScalarType::N.into(),
                    }),
                }),
                sse_specification: Some(pb::SseSpecification { kms_key_id: key }),
            },
        ))
        .await
        .unwrap();
    const ITEMS: usize = 20;
    for i in 0..ITEMS {
        tables
            .put_item(authed(
                &admin,
                pb::PutItemRequest {
                    table_name: "wide".into(),
                    item: item(&[("pk", s("p")), ("n", n(&i.to_string())), ("v", s("x"))]),
                    ..Default::default()
                },
            ))
            .await
            .unwrap();
    }
    let most = || {
        counts
            .most_decrypts_in_flight
            .swap(0, std::sync::atomic::Ordering::SeqCst)
    };
    most();
    let query = tables
        .query(authed(
            &admin,
            pb::QueryRequest {
                table_name: "wide".into(),
                partition_key_value: Some(s("p")),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(query.items.len(), ITEMS);
    let after_query = most();
    let scan = tables
        .scan(authed(
            &admin,
            pb::ScanRequest {
                table_name: "wide".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(scan.items.len(), ITEMS);
    let after_scan = most();
    let batch = tables
        .batch_get_item(authed(
            &admin,
            pb::BatchGetItemRequest {
                request_items: HashMap::from([(
                    "wide".to_string(),
                    pb::KeysAndAttributes {
                        keys: (0..ITEMS)
                            .map(|i| pb::Item {
                                attributes: item(&[("pk", s("p")), ("n", n(&i.to_string()))]),
                            })
                            .collect(),
                    },
                )]),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(batch.responses["wide"].items.len(), ITEMS);
    let after_batch = most();
    // One after another, there would never be more than one in flight.
    for (call, most) in [
        ("Query", after_query),
        ("Scan", after_scan),
        ("BatchGetItem", after_batch),
    ] {
        assert!(
            most >= ITEMS / 2,
            "{call}: at most {most} of {ITEMS} Decrypts were in flight at once"
        );
    }
    tables_server.stop().await.unwrap();
    front.abort();
    kms.stop().await.unwrap();
}

/// `item` with its attribute `n` set to the number `value`.
fn with_n(
    item: &HashMap<String, pb::AttributeValue>,
    value: &str,
) -> HashMap<String, pb::AttributeValue> {
    let mut item = item.clone();
    item.insert("n".into(), n(value));
    item
}

#[tokio::test]
async fn a_writer_without_get_item_reads_nothing_through_return_values_conditions_or_updates() {
    // The service-managed key lets any caller unwrap through table-service,
    // so on such a table `table:GetItem` is all that guards a read.
    let stack = start(60).await;
    let mut tables = TableServiceClient::new(channel(stack.tables.addr).await);
    let admin = stack.admin.clone();
    managed_table(&mut tables, &admin, "ledger").await;
    let secret = item(&[("pk", s("a")), ("secret", s("launch code")), ("n", n("7"))]);
    tables
        .put_item(authed(
            &admin,
            pb::PutItemRequest {
                table_name: "ledger".into(),
                item: secret.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    let mut iam_client = IdentityServiceClient::new(channel(stack.kms.addr).await);
    let writer = user_token(&mut iam_client, &admin, "writer", None).await;
    iam_client
        .put_user_policy(authed(
            &admin,
            iam::PutUserPolicyRequest {
                user_name: "writer".into(),
                policy_name: "WriteOnly".into(),
                policy_document: r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow",
                  "Action":["table:PutItem","table:UpdateItem","table:DeleteItem"],
                  "Resource":"table/ledger"}]}"#
                    .into(),
            },
        ))
        .await
        .unwrap();
    let key = item(&[("pk", s("a"))]);
    let update = |return_values: pb::ReturnValues, action: pb::update_action::Action| {
        authed(
            &writer,
            pb::UpdateItemRequest {
                table_name: "ledger".into(),
                key: key.clone(),
                actions: vec![pb::UpdateAction {
                    action: Some(action),
                }],
                return_values: return_values.into(),
                ..Default::default()
            },
        )
    };
    let remove_nothing = || pb::update_action::Action::Remove("absent".into());
    let add_one = || {
        pb::update_action::Action::Add(pb::SetAction {
            attribute: "n".into(),
            value: Some(n("1")),
        })
    };
    let refused = |rv: &str| {
        format!(
            "User: user/writer is not authorized to perform: table:GetItem on resource: table/ledger \
             because no identity-based policy allows the table:GetItem action \
             (return_values {rv} returns the item, which needs table:GetItem)"
        )
    };
    for (return_values, action, name) in [
        (pb::ReturnValues::AllOld, remove_nothing(), "ALL_OLD"),
        (pb::ReturnValues::AllNew, remove_nothing(), "ALL_NEW"),
        (pb::ReturnValues::UpdatedOld, add_one(), "UPDATED_OLD"),
        // The new value of a number after ADD tells the old one.
        (pb::ReturnValues::UpdatedNew, add_one(), "UPDATED_NEW"),
    ] {
        let answer = tables.update_item(update(return_values, action)).await;
        assert!(!format!("{answer:?}").contains("launch"), "{answer:?}");
        check_status(
            answer,
            Code::PermissionDenied,
            "AccessDeniedException",
            &refused(name),
        );
    }
    let put = |return_values: pb::ReturnValues| {
        authed(
            &writer,
            pb::PutItemRequest {
                table_name: "ledger".into(),
                item: item(&[("pk", s("a")), ("secret", s("overwritten"))]),
                return_values: return_values.into(),
                ..Default::default()
            },
        )
    };
    let delete = |return_values: pb::ReturnValues| {
        authed(
            &writer,
            pb::DeleteItemRequest {
                table_name: "ledger".into(),
                key: key.clone(),
                return_values: return_values.into(),
                ..Default::default()
            },
        )
    };
    let denied = |rv| (Code::PermissionDenied, "AccessDeniedException", refused(rv));
    // A return_values the operation does not offer is a bad request, for
    // a writer without table:GetItem too.
    let invalid = |operation: &str| {
        (
            Code::InvalidArgument,
            "ValidationException",
            format!("{operation} supports return_values NONE or ALL_OLD"),
        )
    };
    let refusals = [
        (
            tables
                .put_item(put(pb::ReturnValues::AllOld))
                .await
                .map(drop),
            denied("ALL_OLD"),
        ),
        (
            tables
                .delete_item(delete(pb::ReturnValues::AllOld))
                .await
                .map(drop),
            denied("ALL_OLD"),
        ),
        (
            tables
                .put_item(put(pb::ReturnValues::AllNew))
                .await
                .map(drop),
            invalid("PutItem"),
        ),
        (
            tables
                .delete_item(delete(pb::ReturnValues::UpdatedOld))
                .await
                .map(drop),
            invalid("DeleteItem"),
        ),
    ];
    for (answer, (code, reason, message)) in refusals {
        assert!(!format!("{answer:?}").contains("launch"), "{answer:?}");
        check_status(answer, code, reason, &message);
    }
    // Nothing was written by the refused calls.
    let get = |token: &str| {
        authed(
            token,
            pb::GetItemRequest {
                table_name: "ledger".into(),
                key: key.clone(),
            },
        )
    };
    assert_eq!(
        tables
            .get_item(get(&admin))
            .await
            .unwrap()
            .into_inner()
            .item,
        secret
    );
    // Nor through conditions: whether one on a value holds tells the value
    // (a guess at a time), so a condition on an attribute outside the key
    // needs table:GetItem too, whatever the guess.
    let begins = |prefix: &str| pb::Condition {
        kind: Some(pb::condition::Kind::Comparison(pb::Comparison {
            attribute: "secret".into(),
            operator: pb::ComparisonOperator::BeginsWith.into(),
            value: Some(s(prefix)),
            value2: None,
        })),
    };
    let exists = |attribute: &str| pb::Condition {
        kind: Some(pb::condition::Kind::AttributeExists(attribute.into())),
    };
    let reads = "User: user/writer is not authorized to perform: table:GetItem on resource: table/ledger \
         because no identity-based policy allows the table:GetItem action \
         (a condition on secret reads the item, which needs table:GetItem)";
    for guess in ["l", "x"] {
        let mut request = update(pb::ReturnValues::None, remove_nothing());
        request.get_mut().conditions = vec![begins(guess)];
        check_status(
            tables.update_item(request).await,
            Code::PermissionDenied,
            "AccessDeniedException",
            reads,
        );
        let mut request = put(pb::ReturnValues::None);
        request.get_mut().conditions = vec![exists("pk"), begins(guess)];
        check_status(
            tables.put_item(request).await,
            Code::PermissionDenied,
            "AccessDeniedException",
            reads,
        );
        let mut request = delete(pb::ReturnValues::None);
        request.get_mut().conditions = vec![begins(guess)];
        check_status(
            tables.delete_item(request).await,
            Code::PermissionDenied,
            "AccessDeniedException",
            reads,
        );
    }
    // A condition on the key only tells whether the item exists, which a
    // writer may learn by writing: it stays the writer's.
    let mut request = update(pb::ReturnValues::None, remove_nothing());
    request.get_mut().conditions = vec![exists("pk")];
    tables
        .update_item(request)
        .await
        .expect("a condition on the key alone");
    assert_eq!(
        tables
            .get_item(get(&admin))
            .await
            .unwrap()
            .into_inner()
            .item,
        secret
    );
    // Nor through ADD or DELETE: whether they succeed tells what is stored
    // (ADD 1E+50 to 7 fails for its 51 digits and would name the sum; a
    // DELETE from a string fails for its type), so they need table:GetItem
    // too, without return values.
    let add_huge = || {
        pb::update_action::Action::Add(pb::SetAction {
            attribute: "n".into(),
            value: Some(n("1E+50")),
        })
    };
    let delete_member = || {
        pb::update_action::Action::Delete(pb::SetAction {
            attribute: "secret".into(),
            value: Some(pb::AttributeValue {
                value: Some(pb::attribute_value::Value::Ss(pb::StringSet {
                    values: vec!["launch code".into()],
                })),
            }),
        })
    };
    for (action, needs) in [
        (add_huge(), "ADD to n reads the item"),
        (add_one(), "ADD to n reads the item"),
        (delete_member(), "DELETE from secret reads the item"),
    ] {
        let answer = tables
            .update_item(update(pb::ReturnValues::None, action))
            .await;
        assert!(!format!("{answer:?}").contains("launch"), "{answer:?}");
        assert!(!format!("{answer:?}").contains("0007"), "{answer:?}");
        check_status(
            answer,
            Code::PermissionDenied,
            "AccessDeniedException",
            &format!("({needs}, which needs table:GetItem)"),
        );
    }
    // Without return values a SET is the writer's to make, and answers
    // nothing; one that makes the item too large does not say how large
    // the stored part is.
    let set = |attribute: &str, value: pb::AttributeValue| {
        pb::update_action::Action::Set(pb::SetAction {
            attribute: attribute.into(),
            value: Some(value),
        })
    };
    let answer = tables
        .update_item(update(pb::ReturnValues::None, set("n", n("8"))))
        .await
        .expect("a write without return values")
        .into_inner();
    assert!(answer.attributes.is_empty());
    check_status(
        tables
            .update_item(update(
                pb::ReturnValues::None,
                set("big", s(&"b".repeat(409_590))),
            ))
            .await,
        Code::InvalidArgument,
        "ValidationException",
        "Item size has exceeded the maximum allowed size: the updated item would be larger than 409600 bytes (400 KiB)",
    );
    assert_eq!(
        tables
            .get_item(get(&admin))
            .await
            .unwrap()
            .into_inner()
            .item,
        with_n(&secret, "8")
    );
    // With table:GetItem as well, return values come back.
    iam_client
        .attach_user_policy(authed(
            &admin,
            iam::AttachUserPolicyRequest {
                user_name: "writer".into(),
                policy_name: "TableReadOnlyAccess".into(),
            },
        ))
        .await
        .unwrap();
    let old = tables
        .update_item(update(pb::ReturnValues::AllOld, remove_nothing()))
        .await
        .expect("a reader and writer gets the old item")
        .into_inner()
        .attributes;
    assert_eq!(old.get("secret"), Some(&s("launch code")));
    tables
        .update_item(update(pb::ReturnValues::None, add_one()))
        .await
        .expect("a reader and writer adds");
    assert_eq!(
        tables
            .get_item(get(&admin))
            .await
            .unwrap()
            .into_inner()
            .item,
        with_n(&secret, "9")
    );
    stack.tables.stop().await.unwrap();
    stack.kms.stop().await.unwrap();
}

//! UpdateTable switches a table to another key: items are re-wrapped in the
//! background with ReEncrypt, resumably across a restart of table-service,
//! while reads and writes continue; afterwards the old key can be disabled
//! and every item still reads.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use kms_service::config::ServeConfig as KmsConfig;
use kms_service::server::RunningServer as KmsServer;
use lockbox_proto::kms::v1 as kms;
use lockbox_proto::kms::v1::key_management_service_client::KeyManagementServiceClient;
use lockbox_proto::table::v1 as pb;
use lockbox_proto::table::v1::table_service_client::TableServiceClient;
use table_service::config::ServeConfig as TableConfig;
use table_service::server::RunningServer as TableServer;
use tonic::transport::Channel;

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

async fn channel(addr: std::net::SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

const ITEMS: usize = 250;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_table_rewraps_every_item_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut kms_config = KmsConfig::for_data_dir(dir.path().join("kms"));
    let token_file = dir.path().join("kms/table-service.token");
    kms_config.storage.table_service_token_file = Some(token_file.clone());
    let kms_server = KmsServer::start(kms_config).await.unwrap();
    let admin = std::fs::read_to_string(dir.path().join("kms/admin.token"))
        .unwrap()
        .trim()
        .to_string();
    let table_config = || {
        let mut c = TableConfig::for_data_dir(
            dir.path().join("tables"),
            format!("http://{}", kms_server.addr),
            token_file.clone(),
        );
        c.data_key_cache_ttl_secs = 0;
        c
    };
    let tables_server = TableServer::start(table_config()).await.unwrap();
    let mut keys = KeyManagementServiceClient::new(channel(kms_server.addr).await);
    let mut tables = TableServiceClient::new(channel(tables_server.addr).await);
    let new_key = |keys: &mut KeyManagementServiceClient<Channel>| {
        let mut keys = keys.clone();
        let admin = admin.clone();
        async move {
            keys.create_key(authed(&admin, kms::CreateKeyRequest::default()))
                .await
                .unwrap()
                .into_inner()
                .key_metadata
                .unwrap()
                .key_id
        }
    };
    let old_key = new_key(&mut keys).await;
    let target = new_key(&mut keys).await;
    tables
        .create_table(authed(
            &admin,
            pb::CreateTableRequest {
                table_name: "orders".into(),
                key_schema: Some(pb::KeySchema {
                    partition_key: Some(pb::KeyElement {
                        name: "id".into(),
                        r#type: pb::ScalarType::S.into(),
                    }),
                    sort_key: None,
                }),
                sse_specification: Some(pb::SseSpecification {
                    kms_key_id: old_key.clone(),
                }),
            },
        ))
        .await
        .unwrap();
    for i in 0..ITEMS {
        tables
            .put_item(authed(
                &admin,
                pb::PutItemRequest {
                    table_name: "orders".into(),
                    item: HashMap::from([
                        ("id".to_string(), s(&format!("{i:04}"))),
                        ("v".to_string(), s(&format!("value {i}"))),
                    ]),
                    ..Default::default()
                },
            ))
            .await
            .unwrap();
    }
    let updated = tables
        .update_table(authed(
            &admin,
            pb::UpdateTableRequest {
                table_name: "orders".into(),
                sse_specification: Some(pb::SseSpecification {
                    kms_key_id: target.clone(),
                }),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .table_description
        .unwrap();
    assert_eq!(updated.table_status, pb::TableStatus::Updating as i32);
    assert_eq!(updated.sse_description.unwrap().kms_key_id, target);
    // A second change while one runs is refused.
    let again = tables
        .update_table(authed(
            &admin,
            pb::UpdateTableRequest {
                table_name: "orders".into(),
                sse_specification: Some(pb::SseSpecification {
                    kms_key_id: old_key.clone(),
                }),
            },
        ))
        .await;
    assert_eq!(
        again.expect_err("refused").code(),
        tonic::Code::AlreadyExists
    );

    // Restart table-service while the job runs; it resumes by itself.
    tables_server.stop().await.unwrap();
    let tables_server = TableServer::start(table_config()).await.unwrap();
    let mut tables = TableServiceClient::new(channel(tables_server.addr).await);
    // Reads and writes continue meanwhile.
    tables
        .put_item(authed(
            &admin,
            pb::PutItemRequest {
                table_name: "orders".into(),
                item: HashMap::from([
                    ("id".to_string(), s("new")),
                    ("v".to_string(), s("written during the change")),
                ]),
                ..Default::default()
            },
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
    keys.disable_key(authed(
        &admin,
        kms::DisableKeyRequest {
            key_id: old_key.clone(),
        },
    ))
    .await
    .unwrap();
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
    let grants = keys
        .list_grants(authed(
            &admin,
            kms::ListGrantsRequest {
                key_id: target.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .grants;
    assert!(grants.is_empty(), "{grants:?}");
    tables_server.stop().await.unwrap();
    kms_server.stop().await.unwrap();
}

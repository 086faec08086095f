//! A data directory made by an earlier version keeps working: the policy of
//! the service-managed key (which nobody can change through the API) is
//! brought up to this version's at start-up, audited, and the log verifies.

use std::sync::Arc;

use kms_service::clock::SystemClock;
use kms_service::config::StorageConfig;
use kms_service::server;
use kms_service::service::service_managed_policy;
use kms_service::store::sqlite::SqliteStore;
use kms_service::store::{Mutation, Store};

/// The service-managed key policy before re-wrap grants were allowed.
const OLD_POLICY: &str = r#"{"Version":"2012-10-17","Statement":[
  {"Sid":"AllowReadViaIdentityPolicies","Effect":"Allow","Principal":{"AWS":"account"},"Action":["kms:Describe*","kms:Get*","kms:List*"],"Resource":"*"},
  {"Sid":"AllowUseOnlyViaService","Effect":"Allow","Principal":{"AWS":"*"},"Action":["kms:Encrypt","kms:Decrypt","kms:ReEncrypt*","kms:GenerateDataKey*","kms:DescribeKey"],"Resource":"*","Condition":{"StringEquals":{"kms:ViaService":"service/table-service"}}}]}"#;

fn managed_key_policy(storage: &StorageConfig) -> (String, String) {
    let store = SqliteStore::open(&storage.store_path()).unwrap();
    let snapshot = store.load().unwrap();
    let alias = snapshot
        .aliases
        .iter()
        .find(|a| a.alias_name == "alias/table-service")
        .expect("the service-managed key's alias");
    let key = snapshot
        .keys
        .iter()
        .find(|k| k.key_id == alias.key_id)
        .unwrap();
    (key.key_id.clone(), key.policy.clone())
}

#[tokio::test]
async fn an_old_service_managed_key_policy_is_brought_up_to_date() {
    let dir = tempfile::tempdir().unwrap();
    let storage = StorageConfig {
        config: None,
        data_dir: dir.path().join("kms"),
        root_key_file: None,
        admin_token_file: None,
        table_service_token_file: Some(dir.path().join("kms/table-service.token")),
        audit_dir: None,
    };
    let opened = server::open(&storage, Arc::new(SystemClock)).await.unwrap();
    opened.kms.audit_log().close().await.unwrap();
    drop(opened);
    let (key_id, policy) = managed_key_policy(&storage);
    assert_eq!(policy, service_managed_policy("service/table-service"));

    // As an earlier version left it.
    let store = SqliteStore::open(&storage.store_path()).unwrap();
    let mut record = store
        .load()
        .unwrap()
        .keys
        .into_iter()
        .find(|k| k.key_id == key_id)
        .unwrap();
    record.policy = OLD_POLICY.to_string();
    store.commit(&[Mutation::PutKey(record)]).unwrap();
    drop(store);
    assert_eq!(managed_key_policy(&storage).1, OLD_POLICY);

    let opened = server::open(&storage, Arc::new(SystemClock)).await.unwrap();
    opened.kms.audit_log().close().await.unwrap();
    drop(opened);
    assert_eq!(
        managed_key_policy(&storage).1,
        service_managed_policy("service/table-service")
    );
    let log = storage.audit_path().join("audit.jsonl");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.lines()
            .any(|l| l.contains("\"event_name\":\"PutKeyPolicy\"") && l.contains(&key_id)),
        "no PutKeyPolicy record for {key_id}"
    );
    let checkpoints = storage.audit_path().join("audit.jsonl.checkpoints");
    kms_service::audit::verify(&log, Some(&checkpoints), None).expect("the log verifies");
}

//! A data directory keeps working across versions and mishaps: the policy
//! of the service-managed key (which nobody can change through the API) is
//! brought up to this version's at start-up, audited, and the log verifies;
//! a missing table-service token file is issued anew.

use std::sync::Arc;

use kms_service::clock::SystemClock;
use kms_service::config::StorageConfig;
use kms_service::server;
use kms_service::service::{Credentials, service_managed_policy};
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
        root_key_env: None,
        pkcs11: kms_service::config::Pkcs11Config::none(),
        admin_token_file: None,
        admin_token_secret_file: None,
        table_service_token_file: Some(dir.path().join("kms/table-service.token")),
        audit_dir: None,
        audit_accept_new_log: false,
        audit_commit_delay_us: 500,
        audit_rotate_bytes: kms_service::audit::DEFAULT_ROTATE_BYTES,
        audit_auth_failures_per_minute:
            kms_service::service::throttle::DEFAULT_AUTH_FAILURES_PER_MINUTE,
        max_keys: kms_service::service::DEFAULT_MAX_KEYS,
        max_principals: kms_service::service::DEFAULT_MAX_PRINCIPALS,
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

fn storage_in(dir: &std::path::Path) -> StorageConfig {
    StorageConfig {
        config: None,
        data_dir: dir.join("kms"),
        root_key_file: None,
        root_key_env: None,
        pkcs11: kms_service::config::Pkcs11Config::none(),
        admin_token_file: None,
        admin_token_secret_file: None,
        table_service_token_file: Some(dir.join("kms/table-service.token")),
        audit_dir: None,
        audit_accept_new_log: false,
        audit_commit_delay_us: 500,
        audit_rotate_bytes: kms_service::audit::DEFAULT_ROTATE_BYTES,
        audit_auth_failures_per_minute:
            kms_service::service::throttle::DEFAULT_AUTH_FAILURES_PER_MINUTE,
        max_keys: kms_service::service::DEFAULT_MAX_KEYS,
        max_principals: kms_service::service::DEFAULT_MAX_PRINCIPALS,
    }
}

/// Opens `storage`, which must fail; returns the message.
async fn refused_start(storage: &StorageConfig) -> String {
    server::open(storage, Arc::new(SystemClock))
        .await
        .err()
        .expect("start-up refused")
        .to_string()
}

fn bearer(path: &std::path::Path) -> Credentials {
    let token = std::fs::read_to_string(path).unwrap();
    Credentials {
        authorization: Some(format!("Bearer {}", token.trim())),
        ..Credentials::default()
    }
}

/// The table-service principal exists but its token file is gone (a new
/// volume, a deleted file): start-up issues a new token into it, audited,
/// and leaves the older ones valid; at the token limit it refuses to start
/// and says what to do.
#[tokio::test]
async fn a_missing_table_service_token_file_is_issued_anew() {
    let dir = tempfile::tempdir().unwrap();
    let storage = storage_in(dir.path());
    let file = storage.table_service_token_file.clone().unwrap();
    let start = || async { server::open(&storage, Arc::new(SystemClock)).await };
    let opened = start().await.unwrap();
    let first = bearer(&file);
    opened.kms.audit_log().close().await.unwrap();
    drop(opened);

    std::fs::remove_file(&file).unwrap();
    let opened = start().await.unwrap();
    let second = bearer(&file);
    assert_ne!(first.authorization, second.authorization);
    for creds in [&first, &second] {
        let caller = opened.kms.get_caller_identity(creds).await.unwrap();
        assert_eq!(caller.principal, "service/table-service");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    opened.kms.audit_log().close().await.unwrap();
    drop(opened);
    // A token file that cannot be written costs no token: it is created
    // before the token is issued (its "directory" here is a file).
    let blocked = StorageConfig {
        table_service_token_file: Some(dir.path().join("not-a-dir/table-service.token")),
        ..storage_in(dir.path())
    };
    std::fs::write(dir.path().join("not-a-dir"), "").unwrap();
    for _ in 0..3 {
        let refused = refused_start(&blocked).await;
        assert!(refused.contains("not-a-dir"), "{refused}");
    }
    let opened = start().await.unwrap();
    // Up to the limit of 10 active tokens (none was spent above), then the
    // file goes again.
    let admin = bearer(&storage.admin_token_path());
    for _ in 0..8 {
        opened
            .kms
            .create_access_token(&admin, "service/table-service")
            .await
            .unwrap();
    }
    opened.kms.audit_log().close().await.unwrap();
    drop(opened);
    std::fs::remove_file(&file).unwrap();
    let message = refused_start(&storage).await;
    assert!(
        message.contains("already has 10 active tokens") && message.contains("DeleteAccessToken"),
        "{message}"
    );
    assert!(!file.exists());

    let log = storage.audit_path().join("audit.jsonl");
    let text = std::fs::read_to_string(&log).unwrap();
    let issued = text
        .lines()
        .filter(|l| {
            l.contains("\"event_name\":\"CreateAccessToken\"")
                && l.contains("\"principal\":\"service/kms-service\"")
        })
        .count();
    assert_eq!(issued, 1);
}

/// The bootstrap administrator is made on the first start only: one
/// deleted later (its token leaked; named administrators replace it) is not
/// brought back, with a new token, by a restart.
#[tokio::test]
async fn a_deleted_administrator_is_not_brought_back() {
    let dir = tempfile::tempdir().unwrap();
    let storage = storage_in(dir.path());
    let start = || async { server::open(&storage, Arc::new(SystemClock)).await };
    let opened = start().await.unwrap();
    assert!(opened.admin_token_file.is_some());
    let admin = bearer(&storage.admin_token_path());
    opened.kms.create_user(&admin, "ops", None).await.unwrap();
    opened
        .kms
        .attach_user_policy(&admin, "ops", "AdministratorAccess")
        .await
        .unwrap();
    let ops_token = opened.kms.create_access_token(&admin, "ops").await.unwrap();
    let ops = Credentials {
        authorization: Some(format!("Bearer {}", ops_token.token.as_str())),
        ..Credentials::default()
    };
    opened.kms.delete_user(&ops, "admin").await.unwrap();
    opened.kms.audit_log().close().await.unwrap();
    drop(opened);
    std::fs::remove_file(storage.admin_token_path()).unwrap();

    let opened = start().await.unwrap();
    assert_eq!(opened.admin_token_file, None);
    assert!(!storage.admin_token_path().exists());
    let gone = opened.kms.get_user(&ops, "admin").await.unwrap_err();
    assert_eq!(gone.reason(), "NotFoundException", "{gone}");
    let refused = opened.kms.get_caller_identity(&admin).await.unwrap_err();
    assert_eq!(refused.reason(), "UnrecognizedClientException", "{refused}");
}

/// A token file is written whole under mode 0600, even over an older file
/// of that name with looser permissions.
#[cfg(unix)]
#[tokio::test]
async fn a_token_file_replaces_an_older_file_and_its_permissions() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let storage = storage_in(dir.path());
    let admin_file = storage.admin_token_path();
    std::fs::create_dir_all(admin_file.parent().unwrap()).unwrap();
    std::fs::write(&admin_file, "stale, and readable by everyone\n").unwrap();
    std::fs::set_permissions(&admin_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let opened = server::open(&storage, Arc::new(SystemClock)).await.unwrap();
    let mode = std::fs::metadata(&admin_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let caller = opened
        .kms
        .get_caller_identity(&bearer(&admin_file))
        .await
        .unwrap();
    assert_eq!(caller.principal, "user/admin");
    let leftovers: Vec<_> = std::fs::read_dir(admin_file.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".new"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// The key store remembers the audit log's newest checkpoint (its record
/// and that record's hash), so a log that verifies on its own but ends
/// earlier (deleted with its checkpoint file, or put back from an older
/// copy), or that is another log altogether, is refused at start-up; only
/// `--audit-accept-new-log` goes on, recording the gap.
#[tokio::test]
async fn an_audit_log_cut_short_or_replaced_is_refused_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let storage = storage_in(dir.path());
    let audit = storage.audit_path();
    let (log, checkpoints) = (
        audit.join("audit.jsonl"),
        audit.join("audit.jsonl.checkpoints"),
    );
    // Open, make some records, stop as the service does.
    let session = |storage: StorageConfig| async move {
        let opened = server::open(&storage, Arc::new(SystemClock)).await?;
        let admin = bearer(&storage.admin_token_path());
        for _ in 0..3 {
            opened.kms.get_caller_identity(&admin).await.unwrap();
        }
        opened.kms.audit_log().close().await.unwrap();
        opened.kms.anchor_audit().await.unwrap();
        Ok::<_, server::StartError>(opened.kms.audit_log().last_checkpoint())
    };
    let first = session(storage.clone()).await.unwrap();
    assert!(first > 0);
    let old = (
        std::fs::read(&log).unwrap(),
        std::fs::read(&checkpoints).unwrap(),
    );
    let second = session(storage.clone()).await.unwrap();
    assert!(second > first);
    let newer = (
        std::fs::read(&log).unwrap(),
        std::fs::read(&checkpoints).unwrap(),
    );

    // Put back the older copy: it verifies, but ends before the store's
    // checkpoint.
    std::fs::write(&log, &old.0).unwrap();
    std::fs::write(&checkpoints, &old.1).unwrap();
    let refused = session(storage.clone()).await.unwrap_err().to_string();
    assert!(
        refused.contains(&format!(
            "the audit log's newest checkpoint is record {first}, but this key store saw a checkpoint of record {second}"
        )) && refused.contains("--audit-accept-new-log"),
        "{refused}"
    );
    // Deleted altogether: the same.
    std::fs::remove_file(&log).unwrap();
    std::fs::remove_file(&checkpoints).unwrap();
    let refused = session(storage.clone()).await.unwrap_err().to_string();
    assert!(
        refused.contains("record 0, but this key store saw a checkpoint of record"),
        "{refused}"
    );

    // Accepted on purpose: the new log says what was lost, and from then on
    // it is the one the store follows.
    let accepting = StorageConfig {
        audit_accept_new_log: true,
        audit_commit_delay_us: 500,
        audit_rotate_bytes: kms_service::audit::DEFAULT_ROTATE_BYTES,
        audit_auth_failures_per_minute:
            kms_service::service::throttle::DEFAULT_AUTH_FAILURES_PER_MINUTE,
        max_keys: kms_service::service::DEFAULT_MAX_KEYS,
        max_principals: kms_service::service::DEFAULT_MAX_PRINCIPALS,
        ..storage.clone()
    };
    session(accepting).await.unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    let firstline: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(firstline["event_name"], "AcceptAuditLog");
    assert_eq!(firstline["principal"], "service/kms-service");
    assert!(
        firstline["error_message"]
            .as_str()
            .unwrap()
            .contains(&format!(
                "the key store saw a checkpoint of record {second}"
            )),
        "{firstline}"
    );
    let latest = session(storage.clone()).await.unwrap();
    kms_service::audit::verify(&log, Some(&checkpoints), None).expect("the new log verifies");

    // The old log put back now: it verifies, and its checkpoints reach
    // past the new log's, but it is not the log the store follows (the new
    // one, and its record of the gap, would vanish without a trace).
    assert!(
        latest < second,
        "the old copy must reach past the new log's checkpoint ({latest} < {second}) for this to test more than its length"
    );
    std::fs::write(&log, &newer.0).unwrap();
    std::fs::write(&checkpoints, &newer.1).unwrap();
    let refused = session(storage.clone()).await.unwrap_err().to_string();
    assert!(
        (refused.contains(&format!(
            "the audit log has no checkpoint of record {latest}"
        )) || refused.contains(&format!(
            "the audit log's checkpoint of record {latest} names another record"
        ))) && refused.contains("this is another log")
            && refused.contains("--audit-accept-new-log"),
        "{refused}"
    );
}

/// A token file that cannot be written stops the first start before the
/// administrator is made, so fixing the place and starting again still
/// writes a working token (the administrator is made on the first start
/// only, so a token made first and lost would be lost for good).
#[tokio::test]
async fn an_unwritable_admin_token_file_costs_no_administrator() {
    let dir = tempfile::tempdir().unwrap();
    let storage = storage_in(dir.path());
    let admin_file = storage.admin_token_path();
    std::fs::create_dir_all(admin_file.join("in-the-way")).unwrap();
    let refused = refused_start(&storage).await;
    assert!(
        refused.contains("it is a directory (--admin-token-file / KMS_ADMIN_TOKEN_FILE)"),
        "{refused}"
    );
    std::fs::remove_dir_all(&admin_file).unwrap();
    let opened = server::open(&storage, Arc::new(SystemClock)).await.unwrap();
    assert_eq!(
        opened.admin_token_file.as_deref(),
        Some(admin_file.as_path())
    );
    let caller = opened
        .kms
        .get_caller_identity(&bearer(&admin_file))
        .await
        .unwrap();
    assert_eq!(caller.principal, "user/admin");
}

/// `serve` records the audit log's newest checkpoint when it stops (the
/// one its close writes), so a log deleted after a clean stop is refused.
#[tokio::test]
async fn serve_anchors_the_audit_log_when_it_stops() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = kms_service::config::ServeConfig::for_data_dir(dir.path().join("kms"));
    config.storage = storage_in(dir.path());
    let server = server::RunningServer::start(config).await.unwrap();
    let admin = bearer(&server.admin_token_file.clone().unwrap());
    server.kms.get_caller_identity(&admin).await.unwrap();
    server.stop().await.unwrap();
    let audit = storage_in(dir.path()).audit_path();
    std::fs::remove_file(audit.join("audit.jsonl")).unwrap();
    std::fs::remove_file(audit.join("audit.jsonl.checkpoints")).unwrap();
    let refused = refused_start(&storage_in(dir.path())).await;
    assert!(
        refused.contains("newest checkpoint is record 0"),
        "{refused}"
    );
}

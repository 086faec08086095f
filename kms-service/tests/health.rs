//! The health status follows the service: once its audit log cannot make a
//! record durable (so every call is refused until restart), `Health/Check`
//! answers NOT_SERVING, and `healthcheck` (what container health checks
//! run) fails.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kms_service::audit::{AuditLog, AuditSink, AuditSyncer, Batching, ChainHead};
use kms_service::clock::SystemClock;
use kms_service::config::ServeConfig;
use kms_service::crypto::root_key::SoftwareRootKey;
use kms_service::identity::PrincipalKind;
use kms_service::server::serve_with_tls;
use kms_service::service::Kms;
use kms_service::store::sqlite::SqliteStore;
use lockbox_proto::kms::v1::CreateKeyRequest;
use lockbox_proto::kms::v1::key_management_service_client::KeyManagementServiceClient;

/// An audit destination that takes records until `broken` is set, then
/// fails every sync (a full or failed disk).
struct Breakable(Arc<AtomicBool>);

impl AuditSyncer for Breakable {
    fn sync(&mut self) -> std::io::Result<()> {
        if self.0.load(Ordering::SeqCst) {
            Err(std::io::Error::other("no space left on device"))
        } else {
            Ok(())
        }
    }
}

impl AuditSink for Breakable {
    fn append(&mut self, _: &[u8]) -> std::io::Result<()> {
        Ok(())
    }

    fn sync(&mut self) -> std::io::Result<()> {
        AuditSyncer::sync(self)
    }

    fn syncer(&self) -> std::io::Result<Box<dyn AuditSyncer>> {
        Ok(Box::new(Breakable(self.0.clone())))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_not_serving_once_the_audit_log_fails() {
    let dir = tempfile::tempdir().unwrap();
    let broken = Arc::new(AtomicBool::new(false));
    let audit = AuditLog::with_sink(
        Box::new(Breakable(broken.clone())),
        None,
        ChainHead::GENESIS,
        Batching::default(),
    )
    .unwrap();
    let kms = Arc::new(
        Kms::open(
            Arc::new(SqliteStore::open(&dir.path().join("kms.db")).unwrap()),
            Arc::new(SoftwareRootKey::generate()),
            audit,
            Arc::new(SystemClock),
        )
        .unwrap(),
    );
    let token = kms
        .bootstrap_principal("user/admin", PrincipalKind::User, &["AdministratorAccess"])
        .await
        .unwrap()
        .expect("a fresh store bootstraps its administrator");
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let config = ServeConfig::for_data_dir(dir.path().to_path_buf());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        serve_with_tls(&config, None, kms, listener, async {
            let _ = stopped.await;
        })
        .await
    });
    let check = || lockbox_proto::transport::healthcheck(&url, None, Duration::from_secs(5));
    check().await.expect("serving at first");

    broken.store(true, Ordering::SeqCst);
    let mut client = KeyManagementServiceClient::connect(url.clone())
        .await
        .unwrap();
    let mut request = tonic::Request::new(CreateKeyRequest::default());
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", &*token.token).parse().unwrap(),
    );
    let refused = client.create_key(request).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");

    let deadline = Instant::now() + Duration::from_secs(10);
    let reported = loop {
        match check().await {
            Err(e) => break e,
            Ok(()) => {
                assert!(
                    Instant::now() < deadline,
                    "still SERVING 10 s after the audit log failed"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert!(reported.contains("NOT_SERVING"), "{reported}");
    let _ = stop.send(());
    // The log could not be closed cleanly: the server's end is a failure
    // (the binary exits 1), not a clean stop.
    let ended = server.await.unwrap().unwrap_err().to_string();
    assert!(ended.contains("closing the audit log failed"), "{ended}");
}

//! Start-up and serving of table-service: opens the item store, reads the
//! service credential, waits until kms-service answers (and accepts the
//! credential), serves `table.v1` plus reflection (v1 and v1alpha) and
//! health, over plaintext, TLS or mutual TLS, and shuts down cleanly.

pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lockbox_proto::table::v1::table_service_server::TableServiceServer;
use tokio::net::TcpListener;

use crate::config::ServeConfig;
use crate::error::TableError;
use crate::grpc::TableGrpc;
use crate::kms::KmsClient;
use crate::service::Tables;
use crate::store::sqlite::SqliteTableStore;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Table(#[from] TableError),
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error(transparent)]
    Tls(#[from] tls::TlsConfigError),
}

/// Opens the store and the kms-service client.
pub async fn open(config: &ServeConfig) -> Result<Arc<Tables>, StartError> {
    let kms = kms_client(config)?;
    open_with(config, kms).await
}

/// Reads the service token and makes the (lazily connecting) kms-service
/// client, with TLS when the endpoint is `https://`; every file is checked
/// here.
pub fn kms_client(config: &ServeConfig) -> Result<KmsClient, StartError> {
    let kms_tls = config.kms_tls()?;
    // Read into a buffer that is wiped when dropped, as is the trimmed copy
    // kept.
    let token = std::fs::read(&config.token_file)
        .map(zeroize::Zeroizing::new)
        .map_err(|e| {
        StartError::Config(format!(
            "cannot read the service token file {} (TABLE_TOKEN_FILE / --token-file): {e}; kms-service writes it when started with --table-service-token-file",
            config.token_file.display()
        ))
        })?;
    let token = zeroize::Zeroizing::new(
        std::str::from_utf8(&token)
            .map_err(|_| {
                StartError::Config(format!(
                    "the service token file {} (TABLE_TOKEN_FILE / --token-file) is not text",
                    config.token_file.display()
                ))
            })?
            .trim()
            .to_string(),
    );
    if token.is_empty() {
        return Err(StartError::Config(format!(
            "the service token file {} (TABLE_TOKEN_FILE / --token-file) is empty",
            config.token_file.display()
        )));
    }
    Ok(KmsClient::new(
        &config.kms_endpoint,
        token,
        Duration::from_millis(config.kms_timeout_ms),
        kms_tls,
    )?)
}

/// Opens the item store with a kms-service client. Off the runtime: the
/// store lock may wait for a previous holder, whose tasks this runtime may
/// still have to drop.
pub async fn open_with(config: &ServeConfig, kms: KmsClient) -> Result<Arc<Tables>, StartError> {
    let config = config.clone();
    tokio::task::spawn_blocking(move || {
        // Owner-only: the items' key attributes are stored in clear.
        let warning =
            lockbox_proto::store_lock::create_private_dir(&config.data_dir).map_err(|e| {
                StartError::Config(format!(
                    "cannot create data directory {} (TABLE_DATA_DIR / --data-dir): {e}",
                    config.data_dir.display()
                ))
            })?;
        if let Some(warning) = warning {
            tracing::warn!("{warning} (TABLE_DATA_DIR / --data-dir)");
        }
        let store = SqliteTableStore::open(&config.data_dir.join("tables.db"))
            .map_err(|e| StartError::Config(format!("cannot open the item store: {e}")))?;
        Ok(Tables::open(Arc::new(store), kms, config.tables_config())?)
    })
    .await
    .map_err(|e| StartError::Config(format!("opening the item store: {e}")))?
}

/// First delay between two start-up probes of kms-service; it doubles up
/// to [`KMS_WAIT_MAX_DELAY`].
pub const KMS_WAIT_FIRST_DELAY: Duration = Duration::from_millis(250);
pub const KMS_WAIT_MAX_DELAY: Duration = Duration::from_secs(5);

/// Waits until kms-service answers GetCallerIdentity for table-service's
/// own token, for at most `config.kms_wait_secs` (0: one probe). A
/// transport failure (refused, unresolvable, timed out) is retried with
/// back-off, logged at warn each time; a refused token, a server
/// certificate that does not verify, or any other answer ends the wait at
/// once. Returns table-service's principal.
pub async fn wait_for_kms(kms: &KmsClient, config: &ServeConfig) -> Result<String, StartError> {
    let url = kms.endpoint();
    let budget = Duration::from_secs(config.kms_wait_secs);
    let started = Instant::now();
    let mut delay = KMS_WAIT_FIRST_DELAY;
    let mut attempt = 1u32;
    loop {
        let cause = match kms.service_identity().await {
            Ok(principal) => {
                if attempt > 1 {
                    tracing::info!(kms = %url, attempt, "kms-service answered");
                }
                // The service-managed key's policy and the re-wrap grants
                // name this principal; another would fail every request.
                if principal != crate::service::SELF_PRINCIPAL {
                    return Err(StartError::Config(format!(
                        "the token in {} (--token-file / TABLE_TOKEN_FILE) is {principal}'s, but table-service must run as {}: use the token file kms-service writes with --table-service-token-file",
                        config.token_file.display(),
                        crate::service::SELF_PRINCIPAL
                    )));
                }
                return Ok(principal);
            }
            Err(status) => match classify_probe_failure(&status, config) {
                ProbeFailure::Fatal(message) => return Err(StartError::Config(message)),
                ProbeFailure::Transport(cause) => cause,
            },
        };
        let remaining = budget.saturating_sub(started.elapsed());
        if remaining.is_zero() {
            let hint = if url.starts_with("https://") {
                "; over https:// also check that kms-service accepts the client certificate (--kms-client-cert / TABLE_KMS_CLIENT_CERT, when it requires mutual TLS)"
            } else {
                ""
            };
            return Err(StartError::Config(format!(
                "kms-service at {url} did not answer within {} s (--kms-wait-secs / TABLE_KMS_WAIT_SECS) after {attempt} attempt(s); last error: {cause}{hint}",
                config.kms_wait_secs
            )));
        }
        let wait = delay.min(remaining);
        tracing::warn!(
            "waiting for kms-service at {url} (attempt {attempt}, retrying in {} ms): {cause}",
            wait.as_millis()
        );
        tokio::time::sleep(wait).await;
        delay = (delay * 2).min(KMS_WAIT_MAX_DELAY);
        attempt += 1;
    }
}

enum ProbeFailure {
    /// Not reached: worth retrying.
    Transport(String),
    /// Reached, or will never be: give up now with this message.
    Fatal(String),
}

/// The rustls error behind a transport failure, if any (tokio-rustls wraps
/// it in an `io::Error`, whose `source()` skips it).
fn rustls_error(status: &tonic::Status) -> Option<&rustls::Error> {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(status);
    while let Some(error) = next {
        if let Some(found) = error.downcast_ref::<rustls::Error>() {
            return Some(found);
        }
        if let Some(found) = error
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(found);
        }
        next = error.source();
    }
    None
}

fn classify_probe_failure(status: &tonic::Status, config: &ServeConfig) -> ProbeFailure {
    use rustls::AlertDescription as Alert;
    use tonic_types::StatusExt;

    let url = &config.kms_endpoint;
    let cause = tls::status_chain(status);
    match rustls_error(status) {
        Some(rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented) => {
            let ca = config
                .kms_ca_file
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            return ProbeFailure::Fatal(format!(
                "kms-service at {url} presented a certificate that does not verify against the CA file {ca} (--kms-ca-file / TABLE_KMS_CA_FILE), or not for the host of the URL: {cause}"
            ));
        }
        Some(rustls::Error::AlertReceived(
            Alert::BadCertificate
            | Alert::UnsupportedCertificate
            | Alert::CertificateRevoked
            | Alert::CertificateExpired
            | Alert::CertificateUnknown
            | Alert::UnknownCA
            | Alert::AccessDenied
            | Alert::CertificateRequired,
        )) => {
            return ProbeFailure::Fatal(format!(
                "kms-service at {url} refused table-service's client certificate (--kms-client-cert / TABLE_KMS_CLIENT_CERT; it requires one signed by its --tls-client-ca): {cause}"
            ));
        }
        Some(rustls::Error::InvalidMessage(_)) => {
            return ProbeFailure::Fatal(format!(
                "kms-service at {url} does not answer in TLS (if it serves plaintext, use an http:// endpoint): {cause}"
            ));
        }
        _ => {}
    }
    // kms-service attaches ErrorInfo to every answer it makes; a status
    // without it came from the transport.
    let from_kms = status.get_details_error_info().is_some();
    match status.code() {
        tonic::Code::Unavailable
        | tonic::Code::DeadlineExceeded
        | tonic::Code::Cancelled
        | tonic::Code::Unknown
            if !from_kms =>
        {
            ProbeFailure::Transport(cause)
        }
        code if !from_kms && code != tonic::Code::Unauthenticated => {
            let hint = if url.starts_with("http://") {
                " (if kms-service serves TLS, use an https:// endpoint and --kms-ca-file)"
            } else {
                ""
            };
            ProbeFailure::Fatal(format!(
                "kms-service at {url} did not answer as a gRPC server ({code:?}): {cause}{hint}"
            ))
        }
        tonic::Code::Unauthenticated => ProbeFailure::Fatal(format!(
            "kms-service at {url} refused table-service's token from {} (TABLE_TOKEN_FILE / --token-file): {}; use the token kms-service wrote with --table-service-token-file",
            config.token_file.display(),
            status.message()
        )),
        code => ProbeFailure::Fatal(format!(
            "kms-service at {url} answered table-service's GetCallerIdentity with {code:?}: {}",
            status.message()
        )),
    }
}

/// It lists only the services this port serves (the contract's descriptor
/// set holds the other service's too).
fn reflection() -> tonic_reflection::server::Builder<'static> {
    HEALTH_SERVICES
        .iter()
        .chain(&[
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        ])
        .fold(tonic_reflection::server::Builder::configure(), |b, name| {
            b.with_service_name(*name)
        })
        .register_encoded_file_descriptor_set(lockbox_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
}

/// Serves until `shutdown` completes; TLS as `config.tls` says.
pub async fn serve(
    config: &ServeConfig,
    tables: Arc<Tables>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let tls = config.tls.server_config()?;
    serve_with_tls(config, tls, tables, listener, shutdown).await
}

/// [`serve`] with a TLS configuration already loaded (see
/// [`crate::config::TlsConfig::server_config`]); `None` serves plaintext.
pub async fn serve_with_tls(
    config: &ServeConfig,
    tls: Option<tonic::transport::ServerTlsConfig>,
    tables: Arc<Tables>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let mut builder = lockbox_proto::transport::server_builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
    }
    let limit = config.max_message_bytes as usize;
    tables.resume_rewraps();
    tables.sweep_caches();
    tables.purge_dropped_tables();
    let v1 = reflection()
        .build_v1()
        .map_err(|e| StartError::Config(format!("reflection: {e}")))?;
    let v1alpha = reflection()
        .build_v1alpha()
        .map_err(|e| StartError::Config(format!("reflection: {e}")))?;
    // NOT_SERVING while a failed store commit makes every write fail until
    // restart, and from the moment shutdown begins. (kms-service being away
    // is not a fault of this process: calls answer UNAVAILABLE meanwhile
    // and it recovers by itself.)
    let (health_reporter, health) = tonic_health::server::health_reporter();
    let (shutdown, stop_watch) = {
        let tables = tables.clone();
        lockbox_proto::health::follow(
            health_reporter,
            HEALTH_SERVICES,
            move || tables.fault(),
            shutdown,
        )
        .await
    };
    let server = builder
        // Outermost, so every answer (an oversize refusal too) has the id.
        .layer(lockbox_proto::request_id::RequestIdLayer)
        .layer(crate::grpc::oversize_layer())
        .add_service(
            TableServiceServer::new(TableGrpc::new(tables.clone()))
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
        )
        .add_service(v1)
        .add_service(v1alpha)
        .add_service(health);
    let result = lockbox_proto::shutdown::bounded(
        |stop, closer| {
            server.serve_with_incoming_shutdown(
                // TCP_NODELAY, small messages coalesced into one write, and
                // closed by the drain deadline.
                lockbox_proto::tcp::closable(listener, closer),
                stop,
            )
        },
        shutdown,
        lockbox_proto::shutdown::DRAIN_DEADLINE,
    )
    .await
    // Connections left after the deadline were closed; the jobs still stop
    // and the store still closes.
    .unwrap_or(Ok(()));
    // (Also when the server ended without a shutdown: the task holds the
    // service.)
    stop_watch.abort();
    tables.stop_jobs().await;
    Ok(result?)
}

/// The services whose health is reported (besides the server's, "").
const HEALTH_SERVICES: &[&str] =
    &[<TableServiceServer<TableGrpc> as tonic::server::NamedService>::NAME];

/// Binds `addr`, with a message that names the address when it is taken.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            StartError::Config(format!(
                "cannot listen on {addr}: the address is already in use (is another table-service running? choose another with --listen / TABLE_LISTEN)"
            ))
        } else {
            StartError::Config(format!(
                "cannot listen on {addr} (--listen / TABLE_LISTEN): {e}"
            ))
        }
    })
}

/// A server running in this process (tests, benchmarks). It does not wait
/// for kms-service: the lazy channel connects on the first call.
pub struct RunningServer {
    pub addr: SocketAddr,
    /// Not a strong handle: the service goes when the server stops.
    tables: std::sync::Weak<Tables>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), StartError>>,
}

impl RunningServer {
    pub async fn start(config: ServeConfig) -> Result<RunningServer, StartError> {
        let tls = config.tls.server_config()?;
        let tables = open(&config).await?;
        let listener = bind(config.listen).await?;
        let addr = listener
            .local_addr()
            .map_err(|e| StartError::Config(format!("local address: {e}")))?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let handle = Arc::downgrade(&tables);
        let task = tokio::spawn(async move {
            serve_with_tls(&config, tls, tables, listener, async {
                let _ = rx.await;
            })
            .await
        });
        Ok(RunningServer {
            addr,
            tables: handle,
            shutdown: Some(tx),
            task,
        })
    }

    /// The service it serves, while it runs (for tests and embedding).
    pub fn tables(&self) -> Option<Arc<Tables>> {
        self.tables.upgrade()
    }

    pub async fn stop(mut self) -> Result<(), StartError> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.task.await {
            Ok(r) => r,
            Err(e) => Err(StartError::Config(format!("server task failed: {e}"))),
        }
    }
}

//! Start-up and serving of table-service: opens the item store, reads the
//! service credential, serves `table.v1` plus reflection (v1 and v1alpha)
//! and health, and shuts down cleanly.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

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
}

/// Opens the store and the kms-service client.
pub fn open(config: &ServeConfig) -> Result<Arc<Tables>, StartError> {
    std::fs::create_dir_all(&config.data_dir).map_err(|e| {
        StartError::Config(format!(
            "cannot create data directory {}: {e}",
            config.data_dir.display()
        ))
    })?;
    let token = std::fs::read_to_string(&config.token_file).map_err(|e| {
        StartError::Config(format!(
            "cannot read the service token file {} (TABLE_TOKEN_FILE / --token-file): {e}; kms-service writes it when started with --table-service-token-file",
            config.token_file.display()
        ))
    })?;
    let token = zeroize::Zeroizing::new(token.trim().to_string());
    if token.is_empty() {
        return Err(StartError::Config(format!(
            "service token file {} is empty",
            config.token_file.display()
        )));
    }
    let kms = KmsClient::new(
        &config.kms_endpoint,
        token,
        Duration::from_millis(config.kms_timeout_ms),
    )?;
    let store = SqliteTableStore::open(&config.data_dir.join("tables.db"))
        .map_err(|e| StartError::Config(format!("cannot open the item store: {e}")))?;
    Ok(Tables::open(Arc::new(store), kms, config.tables_config())?)
}

fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(lockbox_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
}

pub async fn serve(
    config: &ServeConfig,
    tables: Arc<Tables>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let limit = config.max_message_bytes as usize;
    tables.resume_rewraps();
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<TableServiceServer<TableGrpc>>()
        .await;
    let v1 = reflection()
        .build_v1()
        .map_err(|e| StartError::Config(format!("reflection: {e}")))?;
    let v1alpha = reflection()
        .build_v1alpha()
        .map_err(|e| StartError::Config(format!("reflection: {e}")))?;
    let result = tonic::transport::Server::builder()
        .add_service(
            TableServiceServer::new(TableGrpc::new(tables.clone()))
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
        )
        .add_service(v1)
        .add_service(v1alpha)
        .add_service(health)
        .serve_with_incoming_shutdown(
            // Without TCP_NODELAY small responses wait for the peer's delayed ACK.
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await;
    tables.stop_jobs();
    Ok(result?)
}

pub async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| StartError::Config(format!("cannot listen on {addr}: {e}")))
}

/// A server running in this process (tests, benchmarks).
pub struct RunningServer {
    pub addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), StartError>>,
}

impl RunningServer {
    pub async fn start(config: ServeConfig) -> Result<RunningServer, StartError> {
        let tables = open(&config)?;
        let listener = bind(config.listen).await?;
        let addr = listener
            .local_addr()
            .map_err(|e| StartError::Config(format!("local address: {e}")))?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            serve(&config, tables, listener, async {
                let _ = rx.await;
            })
            .await
        });
        Ok(RunningServer {
            addr,
            shutdown: Some(tx),
            task,
        })
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

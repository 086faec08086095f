//! The table-service binary: parses configuration, installs logging, and
//! hands over to the library.

use std::process::ExitCode;

use table_service::config::{Cli, Command, LogFormat, ServeConfig};
use table_service::server::{self, tls};

/// mimalloc: per-thread heaps. Under load glibc's allocator made the
/// service's threads wait on each other's arena locks (memory is often
/// freed on another thread than the one that allocated it); see
/// ARCHITECTURE.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    tls::install_crypto_provider();
    match lockbox_proto::config_file::parse::<Cli>().command {
        Command::Serve(config) => serve(*config).await,
        Command::Backup(backup) => {
            let store = backup.data_dir.join("tables.db");
            match lockbox_proto::backup::snapshot(&store, &backup.to) {
                Ok(size) => {
                    println!(
                        "copied the item store {} to {} ({size} bytes)",
                        store.display(),
                        backup.to.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("table-service backup: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Healthcheck(check) => {
            let client_tls = match check.client_tls() {
                Ok(client_tls) => client_tls,
                Err(e) => {
                    eprintln!("table-service healthcheck: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match tls::healthcheck(&check.addr, client_tls, tls::HEALTHCHECK_DEADLINE).await {
                Ok(()) => {
                    println!("SERVING");
                    ExitCode::SUCCESS
                }
                Err(reason) => {
                    let hint = if check.addr.starts_with("https://") && check.cert.is_none() {
                        " (if the server requires mutual TLS, give --cert and --key: TABLE_HEALTHCHECK_CERT / TABLE_HEALTHCHECK_KEY)"
                    } else {
                        ""
                    };
                    eprintln!("table-service healthcheck: {reason}{hint}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

async fn serve(config: ServeConfig) -> ExitCode {
    init_tracing(config.log_format);
    let shutdown = lockbox_proto::shutdown::Shutdown::listen("table-service");
    let result = async {
        // Every file and the port first, then the store, then kms-service.
        let server_tls = config.tls.server_config()?;
        let kms = server::kms_client(&config)?;
        let listener = server::bind(config.listen).await?;
        let tables = server::open_with(&config, kms.clone()).await?;
        let principal = tokio::select! {
            principal = server::wait_for_kms(&kms, &config) => principal?,
            () = shutdown.requested() => return Ok(()),
        };
        let transport = match (&server_tls, &config.tls.tls_client_ca) {
            (None, _) => "plaintext",
            (Some(_), None) => "TLS",
            (Some(_), Some(_)) => "mutual TLS",
        };
        if let Some(warning) =
            lockbox_proto::transport::plaintext_endpoint_warning(&config.kms_endpoint)
        {
            tracing::warn!("{warning}");
        }
        if let Some(warning) = lockbox_proto::transport::plaintext_warning(config.listen, server_tls.is_some(), "TABLE") {
            tracing::warn!("{warning}");
        }
        tracing::info!(listen = %config.listen, transport, kms = %config.kms_endpoint, %principal, "table-service ready");
        server::serve_with_tls(&config, server_tls, tables, listener, shutdown.requested()).await
    }
    .await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("table-service: {e}");
            ExitCode::FAILURE
        }
    }
}

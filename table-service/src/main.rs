//! The table-service binary: parses configuration, installs logging, and
//! hands over to the library.

use std::process::ExitCode;

use clap::Parser;
use table_service::config::{Cli, Command, LogFormat};
use table_service::server;

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

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = ctrl_c => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down: finishing in-flight requests");
}

#[tokio::main]
async fn main() -> ExitCode {
    let Command::Serve(config) = Cli::parse().command;
    init_tracing(config.log_format);
    let result = async {
        let tables = server::open(&config)?;
        let listener = server::bind(config.listen).await?;
        tracing::info!(listen = %config.listen, kms = %config.kms_endpoint, "table-service ready");
        server::serve(&config, tables, listener, shutdown_signal()).await
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

//! The typed configuration of table-service; every flag has a `TABLE_…`
//! environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use tonic::transport::{ClientTlsConfig, ServerTlsConfig};

use crate::cache::CacheConfig;
use crate::server::tls::{self, AddrSetting, FileSetting, TlsConfigError};
use crate::service::TablesConfig;

#[derive(Debug, Parser)]
#[command(
    name = "table-service",
    version,
    about = "Envelope-encrypted DynamoDB-style item store"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Runs the gRPC server (after checking that kms-service answers).
    Serve(Box<ServeConfig>),
    /// Calls grpc.health.v1.Health/Check on a running server; prints
    /// SERVING and exits 0, otherwise prints the reason and exits 1.
    Healthcheck(HealthcheckConfig),
    /// Copies the item store to a new file (owner-only), consistent even
    /// while table-service runs. Its items stay sealed under their data
    /// keys: reading them needs kms-service's keys.
    Backup(BackupConfig),
}

#[derive(Debug, Clone, Args)]
pub struct BackupConfig {
    /// TOML file of settings, as for `serve` (only `data-dir` is used).
    #[arg(long, env = "TABLE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Directory whose item store (`tables.db`) is copied.
    #[arg(long, env = "TABLE_DATA_DIR", default_value = "./data/table-service")]
    pub data_dir: PathBuf,
    /// The new file to write; an existing file is never overwritten.
    #[arg(long, value_name = "FILE")]
    pub to: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// TLS of table-service's own server (plaintext when no certificate is set).
#[derive(Debug, Clone, Default, Args)]
pub struct TlsConfig {
    /// PEM certificate (chain) the server presents; turns TLS on. Needs
    /// --tls-key.
    #[arg(long, env = "TABLE_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "TABLE_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificate(s): when set, clients must present a certificate
    /// signed by it (mutual TLS).
    #[arg(long, env = "TABLE_TLS_CLIENT_CA", value_name = "FILE")]
    pub tls_client_ca: Option<PathBuf>,
}

impl TlsConfig {
    /// The tonic server configuration, with every file read and checked;
    /// `None` for plaintext.
    pub fn server_config(&self) -> Result<Option<ServerTlsConfig>, TlsConfigError> {
        tls::server_config(
            FileSetting::new(self.tls_cert.as_ref(), "--tls-cert", "TABLE_TLS_CERT"),
            FileSetting::new(self.tls_key.as_ref(), "--tls-key", "TABLE_TLS_KEY"),
            FileSetting::new(
                self.tls_client_ca.as_ref(),
                "--tls-client-ca",
                "TABLE_TLS_CLIENT_CA",
            ),
        )
    }
}

/// Longest accepted cache lifetime: a day.
const MAX_CACHE_TTL_SECS: u64 = 86_400;
/// Most entries a cache may be given.
const MAX_CACHE_SIZE: u64 = 1_000_000;

/// A cache size, 0 to [`MAX_CACHE_SIZE`].
fn cache_size(value: &str) -> Result<usize, String> {
    let n: u64 = value
        .parse()
        .map_err(|e| format!("{value:?} is not a number of entries: {e}"))?;
    if n > MAX_CACHE_SIZE {
        return Err(format!("{n} is not in 0..={MAX_CACHE_SIZE}"));
    }
    usize::try_from(n).map_err(|e| e.to_string())
}

#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// Address to listen on.
    #[arg(long, env = "TABLE_LISTEN", default_value = "127.0.0.1:50052")]
    pub listen: SocketAddr,
    /// TOML file of settings: keys are the long flag names (`kms-endpoint =
    /// "https://kms:50051"`). Flags and environment variables win over it;
    /// unknown keys are refused.
    #[arg(long, env = "TABLE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Directory of the item store.
    #[arg(long, env = "TABLE_DATA_DIR", default_value = "./data/table-service")]
    pub data_dir: PathBuf,
    /// URL of kms-service: http://… for plaintext, https://… for TLS (the
    /// TLS name checked is the host of the URL).
    #[arg(
        long,
        env = "TABLE_KMS_ENDPOINT",
        default_value = "http://127.0.0.1:50051"
    )]
    pub kms_endpoint: String,
    /// File holding table-service's own access token (principal
    /// `service/table-service`), as kms-service wrote it.
    #[arg(
        long,
        env = "TABLE_TOKEN_FILE",
        default_value = "./data/kms-service/table-service.token"
    )]
    pub token_file: PathBuf,
    /// PEM CA certificate that signed kms-service's certificate; required
    /// when --kms-endpoint is https://.
    #[arg(long, env = "TABLE_KMS_CA_FILE", value_name = "FILE")]
    pub kms_ca_file: Option<PathBuf>,
    /// PEM client certificate presented to kms-service (mutual TLS).
    #[arg(long, env = "TABLE_KMS_CLIENT_CERT", value_name = "FILE")]
    pub kms_client_cert: Option<PathBuf>,
    /// PEM private key of --kms-client-cert.
    #[arg(long, env = "TABLE_KMS_CLIENT_KEY", value_name = "FILE")]
    pub kms_client_key: Option<PathBuf>,
    /// How long start-up waits for kms-service to answer, in seconds
    /// (retrying with back-off from 250 ms to 5 s); 0 probes once.
    #[arg(long, env = "TABLE_KMS_WAIT_SECS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(0..=86_400))]
    pub kms_wait_secs: u64,
    /// Deadline of each call to kms-service, in milliseconds.
    #[arg(long, env = "TABLE_KMS_TIMEOUT_MS", default_value_t = 5000,
          value_parser = clap::value_parser!(u64).range(50..=120_000))]
    pub kms_timeout_ms: u64,
    /// Most data keys one request (a Query, Scan or BatchGetItem page) has
    /// kms-service unwrap at the same time; the default unwraps a full
    /// BatchGetItem at once.
    #[arg(long, env = "TABLE_KMS_UNWRAP_CONCURRENCY", default_value_t = 100,
          value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub kms_unwrap_concurrency: u64,
    /// Lifetime of cached plaintext data keys (per principal), in seconds
    /// (at most a day); 0 disables.
    #[arg(long, env = "TABLE_DATA_KEY_CACHE_TTL", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(0..=MAX_CACHE_TTL_SECS))]
    pub data_key_cache_ttl_secs: u64,
    /// Most cached data keys; 0 disables.
    #[arg(long, env = "TABLE_DATA_KEY_CACHE_SIZE", default_value_t = 10_000,
          value_parser = cache_size)]
    pub data_key_cache_size: usize,
    /// Lifetime of cached allow decisions, in seconds (at most a day); 0
    /// disables.
    #[arg(long, env = "TABLE_AUTHZ_CACHE_TTL", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(0..=MAX_CACHE_TTL_SECS))]
    pub authz_cache_ttl_secs: u64,
    /// Most cached allow decisions; 0 disables.
    #[arg(long, env = "TABLE_AUTHZ_CACHE_SIZE", default_value_t = 10_000,
          value_parser = cache_size)]
    pub authz_cache_size: usize,
    /// Log format.
    #[arg(long, env = "TABLE_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Largest request message accepted, in bytes (an item is at most 400 KiB).
    #[arg(long, env = "TABLE_MAX_MESSAGE_BYTES", default_value_t = 16 * 1024 * 1024,
          value_parser = clap::value_parser!(u32).range(1024 * 1024..=64 * 1024 * 1024))]
    pub max_message_bytes: u32,
    #[command(flatten)]
    pub tls: TlsConfig,
}

impl ServeConfig {
    pub fn tables_config(&self) -> TablesConfig {
        TablesConfig {
            data_key_cache: CacheConfig {
                ttl: Duration::from_secs(self.data_key_cache_ttl_secs),
                capacity: self.data_key_cache_size,
            },
            authz_cache: CacheConfig {
                ttl: Duration::from_secs(self.authz_cache_ttl_secs),
                capacity: self.authz_cache_size,
            },
            unwrap_concurrency: usize::try_from(self.kms_unwrap_concurrency).unwrap_or(usize::MAX),
            max_response_bytes: self.max_message_bytes as usize,
        }
    }

    /// Defaults for tests and embedding.
    pub fn for_data_dir(data_dir: PathBuf, kms_endpoint: String, token_file: PathBuf) -> Self {
        ServeConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            config: None,
            data_dir,
            kms_endpoint,
            token_file,
            kms_timeout_ms: 5000,
            kms_unwrap_concurrency: 100,
            data_key_cache_ttl_secs: 60,
            data_key_cache_size: 10_000,
            authz_cache_ttl_secs: 5,
            authz_cache_size: 10_000,
            log_format: LogFormat::Text,
            max_message_bytes: 16 * 1024 * 1024,
            tls: TlsConfig::default(),
            kms_ca_file: None,
            kms_client_cert: None,
            kms_client_key: None,
            kms_wait_secs: 60,
        }
    }

    /// The client TLS configuration for kms-service: `None` for an
    /// `http://` endpoint.
    pub fn kms_tls(&self) -> Result<Option<ClientTlsConfig>, TlsConfigError> {
        tls::client_config(
            AddrSetting {
                value: &self.kms_endpoint,
                flag: "--kms-endpoint",
                env: "TABLE_KMS_ENDPOINT",
            },
            FileSetting::new(
                self.kms_ca_file.as_ref(),
                "--kms-ca-file",
                "TABLE_KMS_CA_FILE",
            ),
            FileSetting::new(
                self.kms_client_cert.as_ref(),
                "--kms-client-cert",
                "TABLE_KMS_CLIENT_CERT",
            ),
            FileSetting::new(
                self.kms_client_key.as_ref(),
                "--kms-client-key",
                "TABLE_KMS_CLIENT_KEY",
            ),
        )
    }
}

#[derive(Debug, Clone, Args)]
pub struct HealthcheckConfig {
    /// Address of the server: http://… for plaintext, https://… for TLS
    /// (the TLS name checked is the host of the address).
    #[arg(
        long,
        env = "TABLE_HEALTHCHECK_ADDR",
        default_value = "http://127.0.0.1:50052",
        value_name = "URL"
    )]
    pub addr: String,
    /// PEM CA certificate to verify the server with (required for https://).
    #[arg(long, env = "TABLE_HEALTHCHECK_CA_FILE", value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate, for a server that requires mutual TLS.
    #[arg(long, env = "TABLE_HEALTHCHECK_CERT", value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// PEM private key of --cert.
    #[arg(long, env = "TABLE_HEALTHCHECK_KEY", value_name = "FILE")]
    pub key: Option<PathBuf>,
}

impl HealthcheckConfig {
    pub fn client_tls(&self) -> Result<Option<ClientTlsConfig>, TlsConfigError> {
        tls::client_config(
            AddrSetting {
                value: &self.addr,
                flag: "--addr",
                env: "TABLE_HEALTHCHECK_ADDR",
            },
            FileSetting::new(
                self.ca_file.as_ref(),
                "--ca-file",
                "TABLE_HEALTHCHECK_CA_FILE",
            ),
            FileSetting::new(self.cert.as_ref(), "--cert", "TABLE_HEALTHCHECK_CERT"),
            FileSetting::new(self.key.as_ref(), "--key", "TABLE_HEALTHCHECK_KEY"),
        )
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::{Cli, Command};

    fn serve(args: &[&str]) -> Result<super::ServeConfig, clap::Error> {
        let cli = Cli::try_parse_from(["table-service", "serve"].iter().chain(args))?;
        match cli.command {
            Command::Serve(config) => Ok(*config),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn the_unwrap_bound_defaults_to_a_full_batch_and_refuses_what_is_out_of_range() {
        assert_eq!(serve(&[]).unwrap().tables_config().unwrap_concurrency, 100);
        let set = serve(&["--kms-unwrap-concurrency", "7"]).unwrap();
        assert_eq!(set.tables_config().unwrap_concurrency, 7);
        for bad in ["0", "1025", "many"] {
            let error = serve(&["--kms-unwrap-concurrency", bad])
                .unwrap_err()
                .to_string();
            assert!(error.contains("--kms-unwrap-concurrency"), "{bad}: {error}");
        }
    }
}

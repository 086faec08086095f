//! The typed configuration of table-service; every flag has a `TABLE_…`
//! environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::cache::CacheConfig;
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
    /// Runs the gRPC server.
    Serve(ServeConfig),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    #[arg(long, env = "TABLE_LISTEN", default_value = "127.0.0.1:50052")]
    pub listen: SocketAddr,
    /// Directory of the item store.
    #[arg(long, env = "TABLE_DATA_DIR", default_value = "./data/table-service")]
    pub data_dir: PathBuf,
    /// URL of kms-service.
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
    /// Deadline of each call to kms-service, in milliseconds.
    #[arg(long, env = "TABLE_KMS_TIMEOUT_MS", default_value_t = 5000,
          value_parser = clap::value_parser!(u64).range(50..=120_000))]
    pub kms_timeout_ms: u64,
    /// Lifetime of cached plaintext data keys (per principal), in seconds; 0 disables.
    #[arg(long, env = "TABLE_DATA_KEY_CACHE_TTL", default_value_t = 60)]
    pub data_key_cache_ttl_secs: u64,
    /// Most cached data keys.
    #[arg(long, env = "TABLE_DATA_KEY_CACHE_SIZE", default_value_t = 10_000)]
    pub data_key_cache_size: usize,
    /// Lifetime of cached allow decisions, in seconds; 0 disables.
    #[arg(long, env = "TABLE_AUTHZ_CACHE_TTL", default_value_t = 5)]
    pub authz_cache_ttl_secs: u64,
    /// Most cached allow decisions.
    #[arg(long, env = "TABLE_AUTHZ_CACHE_SIZE", default_value_t = 10_000)]
    pub authz_cache_size: usize,
    #[arg(long, env = "TABLE_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Largest request message accepted, in bytes (an item is at most 400 KiB).
    #[arg(long, env = "TABLE_MAX_MESSAGE_BYTES", default_value_t = 16 * 1024 * 1024,
          value_parser = clap::value_parser!(u32).range(1024 * 1024..=64 * 1024 * 1024))]
    pub max_message_bytes: u32,
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
        }
    }

    /// Defaults for tests and embedding.
    pub fn for_data_dir(data_dir: PathBuf, kms_endpoint: String, token_file: PathBuf) -> Self {
        ServeConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir,
            kms_endpoint,
            token_file,
            kms_timeout_ms: 5000,
            data_key_cache_ttl_secs: 60,
            data_key_cache_size: 10_000,
            authz_cache_ttl_secs: 5,
            authz_cache_size: 10_000,
            log_format: LogFormat::Text,
            max_message_bytes: 16 * 1024 * 1024,
        }
    }
}

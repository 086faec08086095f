//! The typed, validated configuration of kms-service. Every flag has an
//! environment variable (`KMS_…`), so containers configure it without a
//! command line.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "kms-service",
    version,
    about = "Self-hosted key management service"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Runs the gRPC server (creating the root key and the administrator on
    /// first start).
    Serve(ServeConfig),
    /// Prepares a data directory ahead of time: root key, store, administrator
    /// token; then exits.
    Init(StorageConfig),
    /// Audit log tools.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Creates a private CA and certificates for kms-service and
    /// table-service (ECDSA P-256, PEM; keys mode 0600). Does nothing when
    /// `<out-dir>/ca.crt` already exists.
    TlsInit(TlsInitConfig),
    /// Calls grpc.health.v1.Health/Check on a running server; prints
    /// SERVING and exits 0, otherwise prints the reason and exits 1.
    Healthcheck(HealthcheckConfig),
    /// Copies the key store to a new file (owner-only), consistent even
    /// while kms-service runs. Keep the root key with it: the copy holds
    /// the keys only wrapped by it.
    Backup(BackupConfig),
}

#[derive(Debug, Clone, Args)]
pub struct BackupConfig {
    /// TOML file of settings, as for `serve` (only `data-dir` is used).
    #[arg(long, env = "KMS_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Directory whose key store (`kms.db`) is copied.
    #[arg(long, env = "KMS_DATA_DIR", default_value = "./data/kms-service")]
    pub data_dir: PathBuf,
    /// The new file to write; an existing file is never overwritten.
    #[arg(long, value_name = "FILE")]
    pub to: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Checks the hash chain of an audit log and its signed checkpoints;
    /// reports the first bad record.
    Verify(VerifyConfig),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

const DEFAULT_COMMIT_DELAY_US: u64 = crate::audit::DEFAULT_COMMIT_DELAY.as_micros() as u64;
const MAX_COMMIT_DELAY_US: u64 = crate::audit::MAX_COMMIT_DELAY.as_micros() as u64;
/// Smallest audit rotation size other than 0 (never).
pub const MIN_AUDIT_ROTATE_BYTES: u64 = 64 * 1024;

/// `--audit-rotate-bytes`: 0, or at least [`MIN_AUDIT_ROTATE_BYTES`].
fn parse_rotate_bytes(value: &str) -> Result<u64, String> {
    let bytes: u64 = value
        .parse()
        .map_err(|e| format!("{value:?} is not a number of bytes: {e}"))?;
    if bytes != 0 && bytes < MIN_AUDIT_ROTATE_BYTES {
        return Err(format!(
            "{bytes} is too small: give 0 (never rotate) or at least {MIN_AUDIT_ROTATE_BYTES} bytes"
        ));
    }
    Ok(bytes)
}

/// The environment variable that may hold the root key itself.
pub const ROOT_KEY_VAR: &str = "KMS_ROOT_KEY";

/// The root key in [`ROOT_KEY_VAR`], if set. A value that is not UTF-8 is
/// kept as an empty one, which the root key's parser refuses, rather than
/// taken for unset (which could create a development root key).
pub fn root_key_from_env() -> Option<zeroize::Zeroizing<String>> {
    match std::env::var(ROOT_KEY_VAR) {
        Ok(value) => Some(zeroize::Zeroizing::new(value)),
        Err(std::env::VarError::NotUnicode(_)) => Some(zeroize::Zeroizing::new(String::new())),
        Err(std::env::VarError::NotPresent) => None,
    }
}

/// A root key on a PKCS#11 token (a hardware security module), instead of a
/// root key file.
#[derive(Debug, Clone, Args)]
pub struct Pkcs11Config {
    /// The PKCS#11 library of the token that holds the root key (e.g.
    /// `/usr/lib/softhsm/libsofthsm2.so`). Setting it keeps the root key on
    /// the token, where it never leaves: backing keys are wrapped and
    /// unwrapped there. On the first start of a new data directory the key
    /// is generated on the token (AES-256, sensitive, not extractable)
    /// unless one with its label is there. Exclusive with
    /// `--root-key-file` and `KMS_ROOT_KEY`.
    #[arg(
        long,
        env = "KMS_ROOT_KEY_PKCS11_MODULE",
        value_name = "LIBRARY",
        requires_all = ["root_key_pkcs11_token", "root_key_pkcs11_pin_file"],
        conflicts_with = "root_key_file"
    )]
    pub root_key_pkcs11_module: Option<PathBuf>,
    /// The label of the token that holds the root key.
    #[arg(
        long,
        env = "KMS_ROOT_KEY_PKCS11_TOKEN",
        value_name = "LABEL",
        requires = "root_key_pkcs11_module"
    )]
    pub root_key_pkcs11_token: Option<String>,
    /// A file holding the token's user PIN (surrounding white space is
    /// ignored; never a flag, which every user of the machine can see).
    #[arg(
        long,
        env = "KMS_ROOT_KEY_PKCS11_PIN_FILE",
        value_name = "FILE",
        requires = "root_key_pkcs11_module"
    )]
    pub root_key_pkcs11_pin_file: Option<PathBuf>,
    /// The label of the root key object on the token.
    #[arg(long, env = "KMS_ROOT_KEY_PKCS11_KEY", value_name = "LABEL",
          default_value = crate::crypto::pkcs11::DEFAULT_KEY_LABEL)]
    pub root_key_pkcs11_key: String,
    /// How long a call waits for the token, in milliseconds. A call the
    /// token has not answered by then fails as unavailable
    /// (`KeyUnavailableException`), and until the token answers it, calls
    /// that need the token fail at once; backing keys already unwrapped go
    /// on working.
    #[arg(long, env = "KMS_ROOT_KEY_PKCS11_TIMEOUT_MS", value_name = "MS",
          default_value_t = DEFAULT_PKCS11_TIMEOUT_MS,
          value_parser = clap::value_parser!(u64).range(10..=600_000))]
    pub root_key_pkcs11_timeout_ms: u64,
}

/// Default `--root-key-pkcs11-timeout-ms`.
pub const DEFAULT_PKCS11_TIMEOUT_MS: u64 = 5000;

impl Pkcs11Config {
    /// No token: the root key is a file or in the environment.
    pub fn none() -> Pkcs11Config {
        Pkcs11Config {
            root_key_pkcs11_module: None,
            root_key_pkcs11_token: None,
            root_key_pkcs11_pin_file: None,
            root_key_pkcs11_key: crate::crypto::pkcs11::DEFAULT_KEY_LABEL.to_string(),
            root_key_pkcs11_timeout_ms: DEFAULT_PKCS11_TIMEOUT_MS,
        }
    }
}

/// Where state lives and where secrets come from.
#[derive(Debug, Clone, Args)]
pub struct StorageConfig {
    /// TOML file of settings: keys are the long flag names (`data-dir =
    /// "/var/lib/lockbox/kms"`). Flags and environment variables win over
    /// it; unknown keys are refused. `serve` and `init` can share one file.
    #[arg(long, env = "KMS_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Directory for the key store, audit log and (by default) the root key.
    #[arg(long, env = "KMS_DATA_DIR", default_value = "./data/kms-service")]
    pub data_dir: PathBuf,
    /// Root key file (64 hex characters). Default: `<data-dir>/root.key`,
    /// created on first start. When set, the file must exist.
    #[arg(long, env = "KMS_ROOT_KEY_FILE")]
    pub root_key_file: Option<PathBuf>,
    /// The root key itself (64 hex characters), for deployments that pass
    /// secrets in the environment: from the variable `KMS_ROOT_KEY` only,
    /// never a flag or the settings file (a command line is visible to
    /// every user of the machine). Exclusive with `--root-key-file`.
    #[arg(skip = root_key_from_env())]
    pub root_key_env: Option<zeroize::Zeroizing<String>>,
    #[command(flatten)]
    pub pkcs11: Pkcs11Config,
    /// Where the bootstrap administrator's token is written on first start
    /// (mode 0600). Default: `<data-dir>/admin.token`.
    #[arg(long, env = "KMS_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// A file holding the bootstrap administrator's token, a secret the
    /// deployment provides (a Docker or Kubernetes secret): on first start
    /// the administrator gets this token instead of a new one, and no token
    /// file is written. 32–256 characters of A–Z a–z 0–9 and `-._~+/=`
    /// (e.g. `openssl rand -base64 32`). Read on first start only.
    #[arg(
        long,
        env = "KMS_ADMIN_TOKEN_SECRET_FILE",
        value_name = "FILE",
        conflicts_with = "admin_token_file"
    )]
    pub admin_token_secret_file: Option<PathBuf>,
    /// When set, the principal `service/table-service` and the
    /// service-managed key `alias/table-service` are created on first start,
    /// and the service's token is written to this file (mode 0600).
    #[arg(long, env = "KMS_TABLE_SERVICE_TOKEN_FILE")]
    pub table_service_token_file: Option<PathBuf>,
    /// Directory of the audit log. Default: `<data-dir>/audit`.
    #[arg(long, env = "KMS_AUDIT_DIR")]
    pub audit_dir: Option<PathBuf>,
    /// Start even though the audit log ends before the newest checkpoint the
    /// key store saw (the log was lost, cut short or replaced): the gap is
    /// the new log's next record. Only after restoring the log has failed.
    #[arg(long, env = "KMS_AUDIT_ACCEPT_NEW_LOG")]
    pub audit_accept_new_log: bool,
    /// Microseconds a sync of the audit log waits, under load only, after
    /// the one before it began, so that the records of that interval share
    /// it: fewer syncs, more CPU time for calls. 0 (a disk whose syncs cost
    /// nothing) syncs as soon as the previous sync ends.
    #[arg(long, env = "KMS_AUDIT_COMMIT_DELAY_US", default_value_t = DEFAULT_COMMIT_DELAY_US,
          value_parser = clap::value_parser!(u64).range(0..=MAX_COMMIT_DELAY_US))]
    pub audit_commit_delay_us: u64,
    /// Bytes after which the audit log is rotated: the file is renamed to
    /// `audit-<sequence of its first record, 20 digits>.jsonl` (after its
    /// last record is checkpointed) and a new `audit.jsonl` begins, the
    /// chain running on across them. Start-up reads only the newest file;
    /// `kms-service audit verify` reads them all. Rotated files may be
    /// shipped and removed, oldest first. 0: never rotate.
    #[arg(long, env = "KMS_AUDIT_ROTATE_BYTES", default_value_t = crate::audit::DEFAULT_ROTATE_BYTES,
          value_parser = parse_rotate_bytes)]
    pub audit_rotate_bytes: u64,
    /// Failed authentications recorded one by one per source address, a
    /// minute (in bursts of up to a tenth of that); past it they are
    /// answered the same way but counted, and one record per address gives
    /// the count within 5 s. Keeps a flood of bad tokens from filling the
    /// audit log and its disk. 0: every one gets its own record.
    #[arg(long, env = "KMS_AUDIT_AUTH_FAILURES_PER_MINUTE",
          default_value_t = crate::service::throttle::DEFAULT_AUTH_FAILURES_PER_MINUTE,
          value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    pub audit_auth_failures_per_minute: u32,
    /// Most keys that may exist at once (in any state until destroyed);
    /// CreateKey past it fails with LimitExceededException.
    #[arg(long, env = "KMS_MAX_KEYS", default_value_t = crate::service::DEFAULT_MAX_KEYS,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=10_000_000))]
    pub max_keys: usize,
    /// Most principals (users and services) that may exist at once;
    /// CreateUser past it fails with LimitExceededException.
    #[arg(long, env = "KMS_MAX_PRINCIPALS", default_value_t = crate::service::DEFAULT_MAX_PRINCIPALS,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_000_000))]
    pub max_principals: usize,
}

impl StorageConfig {
    pub fn root_key_path(&self) -> PathBuf {
        self.root_key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("root.key"))
    }

    pub fn admin_token_path(&self) -> PathBuf {
        self.admin_token_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("admin.token"))
    }

    pub fn audit_path(&self) -> PathBuf {
        self.audit_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("audit"))
    }

    pub fn store_path(&self) -> PathBuf {
        self.data_dir.join("kms.db")
    }
}

/// TLS of the server (plaintext when no certificate is set).
#[derive(Debug, Clone, Default, Args)]
pub struct TlsConfig {
    /// PEM certificate (chain) the server presents; turns TLS on. Needs
    /// --tls-key.
    #[arg(long, env = "KMS_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "KMS_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificate(s): when set, clients must present a certificate
    /// signed by it (mutual TLS).
    #[arg(long, env = "KMS_TLS_CLIENT_CA", value_name = "FILE")]
    pub tls_client_ca: Option<PathBuf>,
}

impl TlsConfig {
    /// The tonic server configuration, with every file read and checked;
    /// `None` for plaintext.
    pub fn server_config(
        &self,
    ) -> Result<Option<tonic::transport::ServerTlsConfig>, crate::tls::TlsConfigError> {
        use crate::tls::FileSetting;
        crate::tls::server_config(
            FileSetting::new(self.tls_cert.as_ref(), "--tls-cert", "KMS_TLS_CERT"),
            FileSetting::new(self.tls_key.as_ref(), "--tls-key", "KMS_TLS_KEY"),
            FileSetting::new(
                self.tls_client_ca.as_ref(),
                "--tls-client-ca",
                "KMS_TLS_CLIENT_CA",
            ),
        )
    }
}

#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// Address to listen on.
    #[arg(long, env = "KMS_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub storage: StorageConfig,
    /// Log format.
    #[arg(long, env = "KMS_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Largest request message accepted, in bytes.
    #[arg(long, env = "KMS_MAX_MESSAGE_BYTES", default_value_t = 256 * 1024,
          value_parser = clap::value_parser!(u32).range(16 * 1024..=16 * 1024 * 1024))]
    pub max_message_bytes: u32,
    /// Seconds between maintenance passes (automatic rotation, destruction
    /// of keys whose deletion window has passed).
    #[arg(long = "maintenance-interval", env = "KMS_MAINTENANCE_INTERVAL", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub maintenance_interval_secs: u64,
    #[command(flatten)]
    pub tls: TlsConfig,
}

impl ServeConfig {
    /// Defaults for a data directory, as tests and embedders use them.
    pub fn for_data_dir(data_dir: PathBuf) -> Self {
        ServeConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            storage: StorageConfig {
                config: None,
                data_dir,
                root_key_file: None,
                root_key_env: None,
                pkcs11: Pkcs11Config::none(),
                admin_token_file: None,
                admin_token_secret_file: None,
                table_service_token_file: None,
                audit_dir: None,
                audit_accept_new_log: false,
                audit_commit_delay_us: DEFAULT_COMMIT_DELAY_US,
                audit_rotate_bytes: crate::audit::DEFAULT_ROTATE_BYTES,
                audit_auth_failures_per_minute:
                    crate::service::throttle::DEFAULT_AUTH_FAILURES_PER_MINUTE,
                max_keys: crate::service::DEFAULT_MAX_KEYS,
                max_principals: crate::service::DEFAULT_MAX_PRINCIPALS,
            },
            log_format: LogFormat::Text,
            max_message_bytes: 256 * 1024,
            maintenance_interval_secs: 60,
            tls: TlsConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct VerifyConfig {
    /// The audit log (JSON Lines). Its rotated segments beside it
    /// (`audit-<first sequence>.jsonl` for `audit.jsonl`) are verified
    /// first, oldest first, as one chain with it.
    pub path: PathBuf,
    /// The checkpoint file. Default: the log path with `.checkpoints` appended.
    #[arg(long)]
    pub checkpoints: Option<PathBuf>,
    /// Root key file, to check checkpoint signatures (or the root key
    /// itself in `KMS_ROOT_KEY`). Without either only the hash chain and the
    /// checkpoints' record hashes are checked.
    #[arg(long, env = "KMS_ROOT_KEY_FILE")]
    pub root_key_file: Option<PathBuf>,
    /// The root key from `KMS_ROOT_KEY` (environment only).
    #[arg(skip = root_key_from_env())]
    pub root_key_env: Option<zeroize::Zeroizing<String>>,
    /// Or the root key on a PKCS#11 token.
    #[command(flatten)]
    pub pkcs11: Pkcs11Config,
}

#[derive(Debug, Clone, Args)]
pub struct TlsInitConfig {
    /// Directory to write ca.crt, ca.key, kms-service.crt/.key and
    /// table-service.crt/.key to (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out_dir: PathBuf,
    /// Another name (DNS name or IP address) the services are reached by;
    /// added to both certificates beside their service name, localhost and
    /// 127.0.0.1. Repeatable.
    #[arg(long = "host", value_name = "NAME")]
    pub hosts: Vec<String>,
    /// Write kms-service's certificate and key (and a copy of ca.crt) here
    /// instead of the out-dir, so that kms-service sees only its own key.
    #[arg(long, value_name = "DIR")]
    pub kms_out_dir: Option<PathBuf>,
    /// Write table-service's certificate and key (and a copy of ca.crt)
    /// here instead of the out-dir.
    #[arg(long, value_name = "DIR")]
    pub table_out_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct HealthcheckConfig {
    /// Address of the server: http://… for plaintext, https://… for TLS
    /// (the TLS name checked is the host of the address).
    #[arg(
        long,
        env = "KMS_HEALTHCHECK_ADDR",
        default_value = "http://127.0.0.1:50051",
        value_name = "URL"
    )]
    pub addr: String,
    /// PEM CA certificate to verify the server with (required for https://).
    #[arg(long, env = "KMS_HEALTHCHECK_CA_FILE", value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate, for a server that requires mutual TLS.
    #[arg(long, env = "KMS_HEALTHCHECK_CERT", value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// PEM private key of --cert.
    #[arg(long, env = "KMS_HEALTHCHECK_KEY", value_name = "FILE")]
    pub key: Option<PathBuf>,
}

impl HealthcheckConfig {
    pub fn client_tls(
        &self,
    ) -> Result<Option<tonic::transport::ClientTlsConfig>, crate::tls::TlsConfigError> {
        use crate::tls::{AddrSetting, FileSetting};
        crate::tls::client_config(
            AddrSetting {
                value: &self.addr,
                flag: "--addr",
                env: "KMS_HEALTHCHECK_ADDR",
            },
            FileSetting::new(
                self.ca_file.as_ref(),
                "--ca-file",
                "KMS_HEALTHCHECK_CA_FILE",
            ),
            FileSetting::new(self.cert.as_ref(), "--cert", "KMS_HEALTHCHECK_CERT"),
            FileSetting::new(self.key.as_ref(), "--key", "KMS_HEALTHCHECK_KEY"),
        )
    }
}

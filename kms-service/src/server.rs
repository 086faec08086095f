//! Start-up and serving: prepares the data directory (root key, store, audit
//! log, bootstrap administrator), then serves both gRPC services plus
//! reflection (v1 and v1alpha) and health on one port, and shuts down
//! cleanly: stop accepting, finish in-flight requests, close the audit log.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use lockbox_proto::iam::v1::identity_service_server::IdentityServiceServer;
use lockbox_proto::kms::v1::key_management_service_server::KeyManagementServiceServer;
use tokio::net::TcpListener;

use crate::audit::{AuditConfig, AuditLog};
use crate::clock::{Clock, SystemClock};
use crate::config::{ServeConfig, StorageConfig};
use crate::crypto::pkcs11::{Pkcs11RootKey, Pkcs11Settings};
use crate::crypto::root_key::{RootKey, SoftwareRootKey};
use crate::error::KmsError;
use crate::grpc;
use crate::identity::PrincipalKind;
use crate::service::Kms;
use crate::store::sqlite::SqliteStore;

/// The bootstrap administrator.
pub const ADMIN_PRINCIPAL: &str = "user/admin";
/// The table service's principal and the alias of its service-managed key.
pub const TABLE_SERVICE_PRINCIPAL: &str = "service/table-service";
pub const TABLE_SERVICE_KEY_ALIAS: &str = "alias/table-service";

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Kms(#[from] KmsError),
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsConfigError),
    /// The server stopped, but the audit log could not be closed cleanly.
    #[error("{0}")]
    Shutdown(String),
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> StartError {
    let context = context.into();
    move |source| StartError::Io { context, source }
}

/// The settings that name the places start-up writes, for its messages.
const DATA_DIR: &str = "--data-dir / KMS_DATA_DIR";
const AUDIT_DIR: &str = "--audit-dir / KMS_AUDIT_DIR";
const ADMIN_TOKEN_FILE: &str = "--admin-token-file / KMS_ADMIN_TOKEN_FILE";
const ADMIN_TOKEN_SECRET_FILE: &str = "--admin-token-secret-file / KMS_ADMIN_TOKEN_SECRET_FILE";
const SERVICE_TOKEN_FILE: &str = "--table-service-token-file / KMS_TABLE_SERVICE_TOKEN_FILE";

/// Creates `path` (owner-only) and its parents; an error names `setting`,
/// the flag and variable that chose the place. Returns the warning for an
/// existing directory others may use.
fn create_private_dir(path: &Path, setting: &str) -> Result<Option<String>, StartError> {
    lockbox_proto::store_lock::create_private_dir(path).map_err(io(format!(
        "cannot create directory {} ({setting})",
        path.display()
    )))
}

/// [`create_private_dir`] for a directory of state (the store, the audit
/// log): one others may use is worth a warning. (A token file's directory
/// may well be shared; the file itself is 0600.)
fn create_state_dir(path: &Path, setting: &str) -> Result<(), StartError> {
    if let Some(warning) = create_private_dir(path, setting)? {
        tracing::warn!("{warning} ({setting})");
    }
    Ok(())
}

/// A secret file being written.
struct PendingSecret {
    file: std::fs::File,
    /// The flag and variable that named the file, for error messages.
    setting: &'static str,
    /// The new file beside the final name that is renamed onto it; `None`
    /// when the secret is written into the file of that name itself.
    temporary: Option<std::path::PathBuf>,
}

impl PendingSecret {
    /// Gives up: nothing was written.
    fn discard(self) {
        if let Some(temporary) = self.temporary {
            let _ = std::fs::remove_file(temporary);
        }
    }
}

/// Opens where a secret will be written, before the secret is made, so
/// that a place that cannot be written fails first and costs nothing.
/// Preferably a new file (mode 0600) beside the final name, renamed onto
/// it, so the secret never lands in an older file with looser permissions;
/// where no file can be created there (a directory the service may not
/// write, a file mounted on its own), the file of that name itself, which
/// is then made 0600 before anything is written to it.
fn open_secret_file(path: &Path, setting: &'static str) -> Result<PendingSecret, StartError> {
    if path.is_dir() {
        return Err(StartError::Config(format!(
            "cannot write a token to {}: it is a directory ({setting})",
            path.display()
        )));
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_private_dir(parent, setting)?;
    }
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".new");
    let temporary = path.with_file_name(name);
    // Left by an interrupted earlier write.
    let _ = std::fs::remove_file(&temporary);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    if let Ok(file) = options.open(&temporary) {
        return Ok(PendingSecret {
            file,
            setting,
            temporary: Some(temporary),
        });
    }
    let mut options = std::fs::OpenOptions::new();
    // Emptied only once it is owner-only (`write_in_place`).
    options.write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let file = options
        .open(path)
        .map_err(io(format!("cannot write {} ({setting})", path.display())))?;
    Ok(PendingSecret {
        file,
        setting,
        temporary: None,
    })
}

/// Reads the administrator's token from the deployment's secret file
/// (`--admin-token-secret-file`): its content less surrounding whitespace,
/// checked, never logged.
fn read_chosen_token(path: &Path) -> Result<zeroize::Zeroizing<String>, StartError> {
    use std::io::Read;
    // Room for the longest token and some whitespace; a larger file is not
    // a token file.
    const MAX_FILE: u64 = 4096;
    let unreadable = || {
        io(format!(
            "cannot read the administrator's token from {} ({ADMIN_TOKEN_SECRET_FILE})",
            path.display()
        ))
    };
    let mut text = zeroize::Zeroizing::new(String::with_capacity(MAX_FILE as usize + 1));
    std::fs::File::open(path)
        .and_then(|file| file.take(MAX_FILE + 1).read_to_string(&mut text))
        .map_err(unreadable())?;
    if text.len() as u64 > MAX_FILE {
        return Err(StartError::Config(format!(
            "{} ({ADMIN_TOKEN_SECRET_FILE}) is over {MAX_FILE} bytes: it is not a token file",
            path.display()
        )));
    }
    let token = zeroize::Zeroizing::new(text.trim().to_string());
    crate::identity::check_chosen_token(&token).map_err(|why| {
        StartError::Config(format!(
            "{} ({ADMIN_TOKEN_SECRET_FILE}) does not hold a usable token: {why}",
            path.display()
        ))
    })?;
    Ok(token)
}

/// Writes the secret, makes it durable and, from a new file, moves it to
/// its name (or, when that cannot be done, writes the file of that name
/// itself).
fn fill_secret_file(path: &Path, pending: PendingSecret, secret: &str) -> Result<(), StartError> {
    let setting = pending.setting;
    let written = match pending.temporary {
        Some(temporary) => {
            let mut file = pending.file;
            let moved = write_secret(&mut file, secret)
                .and_then(|()| std::fs::rename(&temporary, path))
                .and_then(|()| sync_parent(path));
            let _ = std::fs::remove_file(&temporary);
            moved.or_else(|_| {
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(path)?;
                write_in_place(&mut file, secret)
            })
        }
        None => {
            let mut file = pending.file;
            write_in_place(&mut file, secret)
        }
    };
    written.map_err(io(format!("cannot write {} ({setting})", path.display())))
}

fn write_secret(file: &mut std::fs::File, secret: &str) -> std::io::Result<()> {
    use std::io::Write;
    file.write_all(secret.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()
}

/// Writes into an existing file: owner-only first, then emptied.
fn write_in_place(file: &mut std::fs::File, secret: &str) -> std::io::Result<()> {
    #[cfg(unix)]
    file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    file.set_len(0)?;
    write_secret(file, secret)
}

/// Makes a rename in `path`'s directory durable.
fn sync_parent(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::File::open(parent)?.sync_all()?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// Loads the root key, creating it only for a brand-new data directory:
/// generating a new key beside existing key material would orphan it.
fn root_key(storage: &StorageConfig) -> Result<SoftwareRootKey, StartError> {
    use crate::config::ROOT_KEY_VAR;
    if let Some(hex) = &storage.root_key_env {
        if storage.root_key_file.is_some() {
            return Err(StartError::Config(format!(
                "both {ROOT_KEY_VAR} and --root-key-file / KMS_ROOT_KEY_FILE are set: give the root key one way"
            )));
        }
        // Whether it is this data directory's key is checked when the
        // store is opened.
        return SoftwareRootKey::from_hex(
            hex,
            &format!("in the environment variable {ROOT_KEY_VAR}"),
        )
        .map_err(|e| StartError::Config(format!("cannot use the root key: {e}")));
    }
    let path = storage.root_key_path();
    let origin = if storage.root_key_file.is_some() {
        "set by --root-key-file / KMS_ROOT_KEY_FILE"
    } else {
        "the default <data-dir>/root.key; another can be set with --root-key-file / KMS_ROOT_KEY_FILE"
    };
    if path.exists() {
        return SoftwareRootKey::read_file(&path)
            .map_err(|e| StartError::Config(format!("cannot use the root key: {e} ({origin})")));
    }
    if storage.root_key_file.is_some() {
        return Err(StartError::Config(format!(
            "root key file {} does not exist (KMS_ROOT_KEY_FILE / --root-key-file)",
            path.display()
        )));
    }
    if storage.store_path().exists() {
        return Err(StartError::Config(format!(
            "the key store {} exists but its root key {} is missing; restore the root key file (or name where it is with --root-key-file / KMS_ROOT_KEY_FILE, or give the key in KMS_ROOT_KEY)",
            storage.store_path().display(),
            path.display()
        )));
    }
    let key = SoftwareRootKey::create_file(&path)
        .map_err(|e| StartError::Config(format!("cannot create the root key: {e} ({origin})")))?;
    tracing::info!(path = %path.display(), "created a new root key (development mode)");
    Ok(key)
}

/// Largest PIN file read, in bytes.
const MAX_PIN_FILE: u64 = 4096;

/// Opens the root key on the PKCS#11 token `config` names, if it names one;
/// with `create`, generates it there when the token has none. The answer
/// says whether it did.
pub fn pkcs11_root_key(
    config: &crate::config::Pkcs11Config,
    create: bool,
) -> Result<Option<(Pkcs11RootKey, bool)>, StartError> {
    use std::io::Read;
    let Some(module) = &config.root_key_pkcs11_module else {
        return Ok(None);
    };
    let (Some(token), Some(pin_file)) = (
        &config.root_key_pkcs11_token,
        &config.root_key_pkcs11_pin_file,
    ) else {
        return Err(StartError::Config(
            "--root-key-pkcs11-module needs --root-key-pkcs11-token and --root-key-pkcs11-pin-file"
                .into(),
        ));
    };
    const SETTING: &str = "--root-key-pkcs11-pin-file / KMS_ROOT_KEY_PKCS11_PIN_FILE";
    let mut text = zeroize::Zeroizing::new(String::new());
    std::fs::File::open(pin_file)
        .and_then(|file| file.take(MAX_PIN_FILE + 1).read_to_string(&mut text))
        .map_err(io(format!(
            "cannot read the token's PIN from {} ({SETTING})",
            pin_file.display()
        )))?;
    let pin = zeroize::Zeroizing::new(text.trim().to_string());
    if pin.is_empty() || text.len() as u64 > MAX_PIN_FILE {
        return Err(StartError::Config(format!(
            "{} ({SETTING}) does not hold a PIN: it is empty or over {MAX_PIN_FILE} bytes",
            pin_file.display()
        )));
    }
    let settings = Pkcs11Settings {
        module,
        token,
        pin,
        key_label: &config.root_key_pkcs11_key,
        timeout: std::time::Duration::from_millis(config.root_key_pkcs11_timeout_ms),
    };
    Pkcs11RootKey::open(&settings, create)
        .map(Some)
        .map_err(|e| {
            StartError::Config(format!("cannot use the root key on the PKCS#11 token: {e}"))
        })
}

/// An opened service, ready to serve.
pub struct Opened {
    pub kms: Arc<Kms>,
    /// Path of the administrator token file, when this start created it.
    pub admin_token_file: Option<std::path::PathBuf>,
    /// Path of the secret file whose token this start gave the
    /// administrator (`--admin-token-secret-file`), when it did.
    pub admin_token_secret_file: Option<std::path::PathBuf>,
    /// Path of the table-service token file, when this start wrote it.
    pub service_token_file: Option<std::path::PathBuf>,
}

/// Prepares the data directory and opens the service.
pub async fn open(storage: &StorageConfig, clock: Arc<dyn Clock>) -> Result<Opened, StartError> {
    // A root key named in the configuration is checked before the data
    // directory is touched; the development default may be created in it.
    let named: Option<Arc<dyn RootKey>> = if storage.pkcs11.root_key_pkcs11_module.is_some() {
        if storage.root_key_env.is_some() {
            return Err(StartError::Config(format!(
                "both {} and --root-key-pkcs11-module / KMS_ROOT_KEY_PKCS11_MODULE are set: give the root key one way",
                crate::config::ROOT_KEY_VAR
            )));
        }
        // Generated on the token only for a brand-new data directory.
        let store = storage.store_path();
        let create = !store.try_exists().map_err(io(format!(
            "cannot tell whether the key store {} exists ({DATA_DIR})",
            store.display()
        )))?;
        let (key, created) = pkcs11_root_key(&storage.pkcs11, create)?
            .ok_or_else(|| StartError::Config("no PKCS#11 library configured".into()))?;
        if created {
            tracing::info!(
                token = storage.pkcs11.root_key_pkcs11_token.as_deref().unwrap_or_default(),
                key = %storage.pkcs11.root_key_pkcs11_key,
                "generated a new root key on the PKCS#11 token"
            );
        }
        Some(Arc::new(key))
    } else if storage.root_key_file.is_some() || storage.root_key_env.is_some() {
        Some(Arc::new(root_key(storage)?))
    } else {
        None
    };
    create_state_dir(&storage.data_dir, DATA_DIR)?;
    let root: Arc<dyn RootKey> = match named {
        Some(key) => key,
        None => Arc::new(root_key(storage)?),
    };
    // Off the runtime: the store lock may wait for a previous holder, whose
    // tasks this runtime may still have to drop.
    let store_path = storage.store_path();
    let store = tokio::task::spawn_blocking(move || SqliteStore::open(&store_path))
        .await
        .map_err(|e| KmsError::Internal(format!("opening the store: {e}")))?
        .map_err(KmsError::from)?;
    let audit_dir = storage.audit_path();
    create_state_dir(&audit_dir, AUDIT_DIR)?;
    let mut audit_config = AuditConfig::new(
        audit_dir.join("audit.jsonl"),
        audit_dir.join("audit.jsonl.checkpoints"),
        root.derive(crate::AUDIT_CHECKPOINT_PURPOSE)
            .map_err(|e| StartError::Config(format!("cannot use the root key: {e}")))?,
    );
    audit_config.batching.commit_delay =
        std::time::Duration::from_micros(storage.audit_commit_delay_us);
    audit_config.rotate_bytes = storage.audit_rotate_bytes;
    let kms = Arc::new(
        Kms::open_then(Arc::new(store), root, clock, || {
            AuditLog::open(audit_config).map_err(|e| {
                StartError::Config(format!(
                    "cannot open the audit log in {} ({AUDIT_DIR}): {e}",
                    audit_dir.display()
                ))
            })
        })?
        .with_quotas(crate::service::Quotas {
            keys: storage.max_keys,
            principals: storage.max_principals,
        })
        .with_auth_failure_limit(storage.audit_auth_failures_per_minute),
    );
    kms.check_audit_anchor(storage.audit_accept_new_log).await?;
    kms.anchor_audit().await?;
    let mut admin_token_file = None;
    let mut admin_token_secret_file = None;
    let mut service_token_file = None;
    // Each token file is opened before its token is made: a token whose
    // file cannot be written would be lost, and the administrator's with
    // it for good (it is made on the first start only).
    if kms.has_no_principals()
        && let Some(path) = &storage.admin_token_secret_file
    {
        if storage.table_service_token_file.as_deref() == Some(path.as_path()) {
            return Err(StartError::Config(format!(
                "{} is named both as the administrator's secret token file ({ADMIN_TOKEN_SECRET_FILE}) \
                 and as table-service's token file ({SERVICE_TOKEN_FILE}), which kms-service writes: \
                 give them different files",
                path.display()
            )));
        }
        let secret = read_chosen_token(path)?;
        if kms
            .bootstrap_administrator_with(ADMIN_PRINCIPAL, &["AdministratorAccess"], secret)
            .await?
            .is_some()
        {
            tracing::info!(path = %path.display(), principal = ADMIN_PRINCIPAL, "bootstrap administrator created with the token in this secret file");
            admin_token_secret_file = Some(path.clone());
        }
    } else if kms.has_no_principals() {
        let path = storage.admin_token_path();
        let pending = open_secret_file(&path, ADMIN_TOKEN_FILE)?;
        match kms
            .bootstrap_administrator(ADMIN_PRINCIPAL, &["AdministratorAccess"])
            .await
        {
            Ok(Some(token)) => {
                fill_secret_file(&path, pending, &token.token)?;
                tracing::info!(path = %path.display(), principal = ADMIN_PRINCIPAL, "bootstrap administrator created; its token is in this file (mode 0600)");
                admin_token_file = Some(path);
            }
            Ok(None) => pending.discard(),
            Err(e) => {
                pending.discard();
                return Err(e.into());
            }
        }
    }
    if let Some(path) = &storage.table_service_token_file {
        if !kms.has_principal(TABLE_SERVICE_PRINCIPAL) {
            let pending = open_secret_file(path, SERVICE_TOKEN_FILE)?;
            match kms
                .bootstrap_principal(TABLE_SERVICE_PRINCIPAL, PrincipalKind::Service, &[])
                .await
            {
                Ok(Some(token)) => {
                    fill_secret_file(path, pending, &token.token)?;
                    tracing::info!(path = %path.display(), principal = TABLE_SERVICE_PRINCIPAL, "service principal created; its token is in this file (mode 0600)");
                    service_token_file = Some(path.clone());
                }
                Ok(None) => pending.discard(),
                Err(e) => {
                    pending.discard();
                    return Err(e.into());
                }
            }
        } else if !path
            .try_exists()
            .map_err(io(format!("cannot check {}", path.display())))?
        {
            // The principal exists but its credential file is gone (a new
            // volume, a deleted file): issue a new token rather than leave
            // table-service unable to start. The file is created first, so
            // a place that cannot be written costs no token.
            let pending = open_secret_file(path, SERVICE_TOKEN_FILE)?;
            let token = match kms.reissue_token(TABLE_SERVICE_PRINCIPAL).await {
                Ok(token) => token,
                Err(e) => {
                    pending.discard();
                    return Err(e.into());
                }
            };
            fill_secret_file(path, pending, &token.token)?;
            tracing::warn!(
                path = %path.display(),
                principal = TABLE_SERVICE_PRINCIPAL,
                token_id = %token.token_id,
                "the service token file was missing, so a new token was issued into it (mode 0600); the principal's older tokens stay valid: if the file was lost rather than deleted, delete them with DeleteAccessToken"
            );
            service_token_file = Some(path.clone());
        }
        if let Some(key_id) = kms
            .bootstrap_service_managed_key(TABLE_SERVICE_KEY_ALIAS, TABLE_SERVICE_PRINCIPAL)
            .await?
        {
            tracing::info!(%key_id, alias = TABLE_SERVICE_KEY_ALIAS, "service-managed key created");
        }
    }
    Ok(Opened {
        kms,
        admin_token_file,
        admin_token_secret_file,
        service_token_file,
    })
}

/// Serves on `listener` until `shutdown` completes, then drains and closes
/// the audit log. TLS as `config.tls` says.
pub async fn serve(
    config: &ServeConfig,
    kms: Arc<Kms>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let tls = config.tls.server_config()?;
    serve_with_tls(config, tls, kms, listener, shutdown).await
}

/// [`serve`] with a TLS configuration already loaded (see
/// [`crate::config::TlsConfig::server_config`]); `None` serves plaintext.
pub async fn serve_with_tls(
    config: &ServeConfig,
    tls: Option<tonic::transport::ServerTlsConfig>,
    kms: Arc<Kms>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let mut builder = lockbox_proto::transport::server_builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
    }
    let (kms_grpc, iam_grpc) = grpc::services(kms.clone());
    let limit = config.max_message_bytes as usize;
    kms.set_response_limit(limit);
    let reflection_v1 = reflection()
        .build_v1()
        .map_err(|e| StartError::Config(format!("reflection: {e}")))?;
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .map_err(|e| StartError::Config(format!("reflection: {e}")))?;
    // NOT_SERVING while a failed audit write or store commit makes every
    // call fail until restart, and from the moment shutdown begins.
    let (health_reporter, health) = tonic_health::server::health_reporter();
    let (shutdown, stop_watch) = {
        let kms = kms.clone();
        lockbox_proto::health::follow(
            health_reporter,
            HEALTH_SERVICES,
            move || kms.fault(),
            shutdown,
        )
        .await
    };

    let maintenance = {
        let kms = kms.clone();
        let every = Duration::from_secs(config.maintenance_interval_secs);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                match kms.run_maintenance().await {
                    Ok(report) if !report.rotated.is_empty() || !report.destroyed.is_empty() => {
                        tracing::info!(rotated = ?report.rotated, destroyed = ?report.destroyed, "maintenance");
                    }
                    Ok(_) => {}
                    Err(error) => tracing::error!(%error, "maintenance failed"),
                }
                if let Err(error) = kms.anchor_audit().await {
                    tracing::error!(%error, "recording the audit log's newest checkpoint failed");
                }
            }
        })
    };

    // Failed authentications counted past their rate get their records
    // within seconds.
    // Stopped by a message, not aborted, so a recording under way is
    // never cut short (its counts already taken).
    let (stop_counting, mut counting_stopped) = tokio::sync::oneshot::channel::<()>();
    let counted = {
        let kms = kms.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(COUNTED_FAILURES_EVERY);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = &mut counting_stopped => return,
                }
                if let Err(error) = kms.record_unrecorded_failures().await {
                    tracing::error!(%error, "recording counted authentication failures failed");
                }
            }
        })
    };

    let server = builder
        // Outermost, so every answer (an oversize refusal too) has the id.
        .layer(lockbox_proto::request_id::RequestIdLayer)
        .layer(grpc::oversize_layer(kms.clone()))
        .add_service(
            KeyManagementServiceServer::new(kms_grpc)
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
        )
        .add_service(
            IdentityServiceServer::new(iam_grpc)
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
        )
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
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
    // Connections left after the deadline were closed: the audit log and
    // the store still close below.
    .unwrap_or(Ok(()));
    // (Also when the server ended without a shutdown: the task holds the
    // service.)
    stop_watch.abort();
    maintenance.abort();
    let _ = stop_counting.send(());
    // Its handle on the service goes with it (and so, in time, the store).
    let _ = maintenance.await;
    let _ = counted.await;
    if let Err(error) = kms.record_unrecorded_failures().await {
        tracing::error!(%error, "recording counted authentication failures failed");
    }
    // A log that cannot be closed (it failed while serving, or its last
    // write or sync fails now) makes the exit a failure, so a supervisor or
    // a Compose dependency sees it.
    let closed = match kms.audit_log().close().await {
        Err(error) => Err(StartError::Shutdown(format!(
            "closing the audit log failed: {error}; records of calls that were refused may be missing, and `kms-service audit verify` checks the rest"
        ))),
        Ok(()) => {
            if let Err(error) = kms.anchor_audit().await {
                // The next start checks the log against an older anchor,
                // which still holds.
                tracing::error!(%error, "recording the audit log's newest checkpoint failed");
            }
            Ok(())
        }
    };
    if let (Err(_), Err(close)) = (&result, &closed) {
        // The server's error is the one returned; this one is not lost.
        tracing::error!("{close}");
    }
    result.map_err(StartError::from)?;
    closed
}

/// How often failed authentications counted past their rate are recorded.
const COUNTED_FAILURES_EVERY: Duration = Duration::from_secs(5);

/// The services whose health is reported (besides the server's, "").
const HEALTH_SERVICES: &[&str] = &[
    <KeyManagementServiceServer<grpc::KeyManagementGrpc> as tonic::server::NamedService>::NAME,
    <IdentityServiceServer<grpc::IdentityGrpc> as tonic::server::NamedService>::NAME,
];

/// Reflection over our contract plus the descriptors clients need to
/// render it: health, and `google.rpc` so grpcurl shows `ErrorInfo`.
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

/// Binds `addr`, with a message that names the address when it is taken.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            StartError::Config(format!(
                "cannot listen on {addr}: the address is already in use (is another kms-service running? choose another with --listen / KMS_LISTEN)"
            ))
        } else {
            StartError::Config(format!(
                "cannot listen on {addr} (--listen / KMS_LISTEN): {e}"
            ))
        }
    })
}

/// A server running in this process (tests, benchmarks, embedding).
pub struct RunningServer {
    pub addr: SocketAddr,
    pub kms: Arc<Kms>,
    pub admin_token_file: Option<std::path::PathBuf>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), StartError>>,
}

impl RunningServer {
    /// Opens the data directory and serves on `config.listen` (port 0 picks
    /// a free port).
    pub async fn start(config: ServeConfig) -> Result<RunningServer, StartError> {
        Self::start_with_clock(config, Arc::new(SystemClock)).await
    }

    pub async fn start_with_clock(
        config: ServeConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<RunningServer, StartError> {
        let tls = config.tls.server_config()?;
        let opened = open(&config.storage, clock).await?;
        let listener = bind(config.listen).await?;
        let addr = listener.local_addr().map_err(io("local address"))?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let kms = opened.kms.clone();
        let task = tokio::spawn(async move {
            serve_with_tls(&config, tls, kms, listener, async {
                let _ = rx.await;
            })
            .await
        });
        Ok(RunningServer {
            addr,
            kms: opened.kms,
            admin_token_file: opened.admin_token_file,
            shutdown: Some(tx),
            task,
        })
    }

    /// Stops accepting, waits for in-flight requests and closes the audit log.
    pub async fn stop(mut self) -> Result<(), StartError> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.task.await {
            Ok(result) => result,
            Err(e) => Err(StartError::Config(format!("server task failed: {e}"))),
        }
    }
}

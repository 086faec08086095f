//! The kms-service binary: parses configuration, installs logging, and hands
//! over to the library.

use std::process::ExitCode;
use std::sync::Arc;

use kms_service::config::{AuditCommand, Cli, Command, LogFormat};
use kms_service::crypto::root_key::{RootKey, SoftwareRootKey};
use kms_service::server;
use kms_service::tls::{self, InitOutcome};

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
    let cli = lockbox_proto::config_file::parse::<Cli>();
    tls::install_crypto_provider();
    match cli.command {
        Command::Serve(config) => {
            init_tracing(config.log_format);
            let shutdown = lockbox_proto::shutdown::Shutdown::listen("kms-service");
            let clock = Arc::new(kms_service::clock::SystemClock);
            let result = async {
                // Configuration and the port first: nothing in the data
                // directory is touched when either is wrong.
                let tls = config.tls.server_config()?;
                let listener = server::bind(config.listen).await?;
                // Opening is never cut short by a signal: on a first start
                // it makes the administrator and then writes its token, and
                // stopping between the two would lose the token for good.
                // It takes seconds at most (a log to verify, a lock to wait
                // for); a signal meanwhile stops the service as soon as it
                // is open, closing the audit log as any stop does.
                let opened = server::open(&config.storage, clock).await?;
                let transport = match (&tls, &config.tls.tls_client_ca) {
                    (None, _) => "plaintext",
                    (Some(_), None) => "TLS",
                    (Some(_), Some(_)) => "mutual TLS",
                };
                if let Some(warning) = lockbox_proto::transport::plaintext_warning(config.listen, tls.is_some(), "KMS") {
                    tracing::warn!("{warning}");
                }
                tracing::info!(listen = %config.listen, transport, data_dir = %config.storage.data_dir.display(), "kms-service ready");
                server::serve_with_tls(&config, tls, opened.kms, listener, shutdown.requested()).await
            }
            .await;
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("kms-service: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Init(storage) => {
            init_tracing(LogFormat::Text);
            let store = storage.store_path();
            if store.exists() && lockbox_proto::store_lock::is_held(&store) {
                // Another process (a running kms-service) holds it and must
                // stay its only user: nothing can be done here, which is
                // fine only if nothing asked for is missing.
                let missing = storage
                    .table_service_token_file
                    .as_ref()
                    .filter(|path| !path.exists());
                return match missing {
                    None => {
                        println!(
                            "data directory {} is in use by another process (a running kms-service): already initialised, nothing done",
                            storage.data_dir.display()
                        );
                        ExitCode::SUCCESS
                    }
                    Some(path) => {
                        eprintln!(
                            "kms-service init: data directory {} is in use by another process (a running kms-service), so the table-service credential {} (KMS_TABLE_SERVICE_TOKEN_FILE / --table-service-token-file) cannot be created; stop kms-service and run init again",
                            storage.data_dir.display(),
                            path.display()
                        );
                        ExitCode::FAILURE
                    }
                };
            }
            let clock = Arc::new(kms_service::clock::SystemClock);
            match server::open(&storage, clock).await {
                Ok(opened) => {
                    if let Err(e) = opened.kms.audit_log().close().await {
                        eprintln!(
                            "kms-service init: closing the audit log failed: {e}; check its disk and run `kms-service audit verify`"
                        );
                        return ExitCode::FAILURE;
                    }
                    if let Err(e) = opened.kms.anchor_audit().await {
                        eprintln!(
                            "kms-service init: recording the audit log's newest checkpoint in the key store failed: {e}"
                        );
                        return ExitCode::FAILURE;
                    }
                    if let Some(path) = &opened.admin_token_file {
                        println!("administrator token written to {}", path.display());
                    }
                    if let Some(path) = &opened.admin_token_secret_file {
                        println!("administrator created with the token in {}", path.display());
                    }
                    if let Some(path) = &opened.service_token_file {
                        println!("table-service token written to {}", path.display());
                    }
                    if opened.admin_token_file.is_none()
                        && opened.admin_token_secret_file.is_none()
                        && opened.service_token_file.is_none()
                    {
                        println!(
                            "data directory {} was already initialised",
                            storage.data_dir.display()
                        );
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("kms-service init: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::TlsInit(init) => match tls::init_split(
            &init.out_dir,
            init.kms_out_dir.as_deref(),
            init.table_out_dir.as_deref(),
            &init.hosts,
        ) {
            Ok(InitOutcome::AlreadyInitialised { ca_cert }) => {
                println!(
                    "{} already exists: nothing written (tls-init only creates a new CA; remove the files to start over)",
                    ca_cert.display()
                );
                ExitCode::SUCCESS
            }
            Ok(InitOutcome::Written(files)) => {
                for (path, what) in files {
                    println!("wrote {}: {what}", path.display());
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("kms-service tls-init: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Backup(backup) => {
            let store = backup.data_dir.join("kms.db");
            match lockbox_proto::backup::snapshot(&store, &backup.to) {
                Ok(size) => {
                    println!(
                        "copied the key store {} to {} ({size} bytes). Keep the root key with it (the copy holds keys only wrapped by it); the audit log is a separate file to keep",
                        store.display(),
                        backup.to.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("kms-service backup: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Healthcheck(check) => {
            let tls = match check.client_tls() {
                Ok(tls) => tls,
                Err(e) => {
                    eprintln!("kms-service healthcheck: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match kms_service::healthcheck::check(
                &check.addr,
                tls,
                kms_service::healthcheck::DEADLINE,
            )
            .await
            {
                Ok(()) => {
                    println!("SERVING");
                    ExitCode::SUCCESS
                }
                Err(reason) => {
                    let hint = if check.addr.starts_with("https://") && check.cert.is_none() {
                        " (if the server requires mutual TLS, give --cert and --key: KMS_HEALTHCHECK_CERT / KMS_HEALTHCHECK_KEY)"
                    } else {
                        ""
                    };
                    eprintln!("kms-service healthcheck: {reason}{hint}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Audit {
            command: AuditCommand::Verify(v),
        } => {
            let checkpoints = v.checkpoints.clone().unwrap_or_else(|| {
                let mut p = v.path.clone().into_os_string();
                p.push(".checkpoints");
                p.into()
            });
            let token = v.pkcs11.root_key_pkcs11_module.is_some();
            let root: Result<Option<Box<dyn RootKey>>, String> =
                match (&v.root_key_file, &v.root_key_env) {
                    (Some(_), Some(_)) | (None, Some(_)) if token => Err(
                        "both KMS_ROOT_KEY and --root-key-pkcs11-module / KMS_ROOT_KEY_PKCS11_MODULE are set: give the root key one way".into(),
                    ),
                    (Some(_), Some(_)) => Err(
                        "both KMS_ROOT_KEY and --root-key-file / KMS_ROOT_KEY_FILE are set: give the root key one way".into(),
                    ),
                    (Some(path), None) => SoftwareRootKey::read_file(path)
                        .map(|r| Some(Box::new(r) as Box<dyn RootKey>))
                        .map_err(|e| e.to_string()),
                    (None, Some(hex)) => {
                        SoftwareRootKey::from_hex(hex, "in the environment variable KMS_ROOT_KEY")
                            .map(|r| Some(Box::new(r) as Box<dyn RootKey>))
                            .map_err(|e| e.to_string())
                    }
                    // Never creates a key: verify only reads.
                    (None, None) => kms_service::server::pkcs11_root_key(&v.pkcs11, false)
                        .map(|r| r.map(|(r, _)| Box::new(r) as Box<dyn RootKey>))
                        .map_err(|e| e.to_string()),
                };
            let key = match root.and_then(|root| {
                root.map(|r| r.derive(kms_service::AUDIT_CHECKPOINT_PURPOSE))
                    .transpose()
                    .map_err(|e| e.to_string())
            }) {
                Ok(key) => key,
                Err(e) => {
                    eprintln!("kms-service audit verify: {e}");
                    return ExitCode::from(2);
                }
            };
            let checkpoint_path = checkpoints.exists().then_some(checkpoints.as_path());
            match kms_service::audit::verify(&v.path, checkpoint_path, key.as_deref()) {
                // Without its checkpoints, a log cut short after its last
                // record looks whole: that is not a pass.
                Ok(report) if checkpoint_path.is_none() && report.records > 0 => {
                    println!(
                        "FAILED: no checkpoint file at {}: the {} records chain correctly, but without their checkpoints a log cut short cannot be told from a whole one; give the checkpoint file with --checkpoints",
                        checkpoints.display(),
                        report.records
                    );
                    ExitCode::FAILURE
                }
                Ok(report)
                    if report.last_sequence.saturating_sub(
                        report
                            .last_checkpointed
                            .max(report.first_sequence.saturating_sub(1)),
                    ) > kms_service::audit::MAX_UNCHECKPOINTED =>
                {
                    let after = match report.last_checkpointed {
                        0 => "no checkpoint names any of them".to_string(),
                        last => format!("the last checkpoint names record {last}"),
                    };
                    println!(
                        "FAILED: the records chain correctly up to {}, but {after}: kms-service never leaves more than {} records without a checkpoint, so checkpoints were removed from {} or records added to the log after it was written; the records after the last checkpoint cannot be trusted",
                        report.last_sequence,
                        kms_service::audit::MAX_UNCHECKPOINTED,
                        checkpoints.display()
                    );
                    ExitCode::FAILURE
                }
                Ok(report) => {
                    let uncovered = report
                        .last_sequence
                        .saturating_sub(report.last_checkpointed);
                    let files = match report.segments {
                        0 => String::new(),
                        n => format!(" in {n} rotated segment(s) and the log"),
                    };
                    let removed = match report.first_sequence {
                        0 | 1 => String::new(),
                        first => format!(
                            "; records before {first} are not present (their rotated segments were removed): the chain is checked from record {first}, which follows checkpointed record {}",
                            first - 1
                        ),
                    };
                    println!(
                        "OK: {} records{files} (last sequence {}), {} checkpoints{}{}{removed}",
                        report.records,
                        report.last_sequence,
                        report.checkpoints,
                        if key.is_some() {
                            ", signatures checked"
                        } else {
                            ", signatures not checked (no root key given: --root-key-file, KMS_ROOT_KEY or --root-key-pkcs11-module)"
                        },
                        match (uncovered, report.last_checkpointed) {
                            (0, _) => String::new(),
                            (n, 0) => format!(
                                "; no checkpoint names any of the {n} record(s): they rest on the hash chain alone"
                            ),
                            (n, last) => format!(
                                "; the newest {n} record(s), after the last checkpoint (record {last}), rest on the hash chain alone"
                            ),
                        }
                    );
                    ExitCode::SUCCESS
                }
                Err(failure) => {
                    println!("FAILED: {failure}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

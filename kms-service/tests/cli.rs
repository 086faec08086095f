//! The kms-service binary's command line: bad configuration ends start-up
//! at once with a message naming the file or address and the flag and
//! variable to fix; `tls-init` makes a working private CA; `healthcheck`
//! answers for plaintext, TLS and mutual TLS.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lockbox_proto::iam::v1 as iam;
use lockbox_proto::iam::v1::identity_service_client::IdentityServiceClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

mod common;

use common::{assert_fails_with, free_port, run, stderr, stdout, terminate};

const BIN: &str = env!("CARGO_BIN_EXE_kms-service");

/// The binary with no `KMS_…` variable inherited from the test's own
/// environment.
fn kms() -> Command {
    let mut command = Command::new(BIN);
    for (name, _) in std::env::vars() {
        if name.starts_with("KMS_") {
            command.env_remove(name);
        }
    }
    command.env("RUST_LOG", "warn");
    command
}

/// `kms-service serve` on a free port with a new data directory in `dir`.
fn serve(dir: &Path) -> Command {
    let mut command = kms();
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.join("data"));
    command
}

fn tls_init(dir: &Path) -> PathBuf {
    let out = run(kms().args(["tls-init", "--out-dir"]).arg(dir));
    assert!(out.status.success(), "tls-init: {}", stderr(&out));
    dir.to_path_buf()
}

#[test]
fn missing_root_key_file_is_refused_naming_the_file_and_variable() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-root.key");
    let out = run(serve(dir.path()).arg("--root-key-file").arg(&missing));
    assert_fails_with(
        &out,
        &[
            &missing.display().to_string(),
            "does not exist",
            "KMS_ROOT_KEY_FILE",
        ],
    );
    let out = run(serve(dir.path()).env("KMS_ROOT_KEY_FILE", &missing));
    assert_fails_with(&out, &[&missing.display().to_string(), "KMS_ROOT_KEY_FILE"]);
    assert!(
        !dir.path().join("data").exists(),
        "the data directory was created although the root key is missing"
    );
}

/// A place start-up must create or write that it cannot is refused naming
/// the place and the flag and variable that chose it.
#[test]
fn unwritable_places_are_refused_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "in the way").unwrap();
    let under_file = file.join("sub");
    let data = dir.path().join("data");
    let cases: [(&str, std::path::PathBuf, &str); 4] = [
        (
            "--data-dir",
            under_file.clone(),
            "(--data-dir / KMS_DATA_DIR)",
        ),
        (
            "--audit-dir",
            under_file.clone(),
            "(--audit-dir / KMS_AUDIT_DIR)",
        ),
        (
            "--admin-token-file",
            under_file.join("admin.token"),
            "(--admin-token-file / KMS_ADMIN_TOKEN_FILE)",
        ),
        (
            "--table-service-token-file",
            under_file.join("table-service.token"),
            "(--table-service-token-file / KMS_TABLE_SERVICE_TOKEN_FILE)",
        ),
    ];
    for (flag, place, setting) in cases {
        let mut command = kms();
        command.args(["serve", "--listen", "127.0.0.1:0"]);
        if flag != "--data-dir" {
            command.arg("--data-dir").arg(&data);
        }
        let out = run(command.arg(flag).arg(&place));
        assert_fails_with(&out, &[&under_file.display().to_string(), setting]);
        let _ = std::fs::remove_dir_all(&data);
    }
    // A key store without its root key: the message says how to name one.
    let first = run(kms().arg("init").arg("--data-dir").arg(&data));
    assert!(first.status.success(), "init: {}", stderr(&first));
    std::fs::remove_file(data.join("root.key")).unwrap();
    let out = run(&mut serve(dir.path()));
    assert_fails_with(&out, &["is missing", "--root-key-file / KMS_ROOT_KEY_FILE"]);
}

#[test]
fn unreadable_or_malformed_root_key_file_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    // A directory cannot be read as a file (even by root, unlike mode 000).
    let unreadable = dir.path().join("root-key-dir");
    std::fs::create_dir(&unreadable).unwrap();
    let out = run(serve(dir.path()).arg("--root-key-file").arg(&unreadable));
    assert_fails_with(
        &out,
        &[&unreadable.display().to_string(), "KMS_ROOT_KEY_FILE"],
    );

    let malformed = dir.path().join("root.key");
    std::fs::write(&malformed, "not hex\n").unwrap();
    let out = run(serve(dir.path()).arg("--root-key-file").arg(&malformed));
    assert_fails_with(
        &out,
        &[
            &malformed.display().to_string(),
            "64 hexadecimal characters",
        ],
    );
}

#[test]
fn port_in_use_is_refused_naming_the_address_before_touching_the_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = run(kms()
        .args(["serve", "--listen", &addr, "--data-dir"])
        .arg(dir.path().join("data")));
    assert_fails_with(&out, &[&addr, "already in use", "KMS_LISTEN"]);
    assert!(
        !dir.path().join("data/root.key").exists(),
        "no root key may be created when the port is taken"
    );
}

#[test]
fn tls_certificate_without_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let certs = tls_init(&dir.path().join("tls"));
    let out = run(serve(dir.path())
        .arg("--tls-cert")
        .arg(certs.join("kms-service.crt")));
    assert_fails_with(
        &out,
        &["--tls-cert", "--tls-key", "KMS_TLS_KEY", "give both"],
    );
    let out = run(serve(dir.path()).env("KMS_TLS_KEY", certs.join("kms-service.key")));
    assert_fails_with(&out, &["KMS_TLS_KEY", "KMS_TLS_CERT", "give both"]);
}

#[test]
fn missing_tls_files_are_refused_naming_the_file_and_variable() {
    let dir = tempfile::tempdir().unwrap();
    let certs = tls_init(&dir.path().join("tls"));
    let missing = dir.path().join("missing.crt");
    let out = run(serve(dir.path())
        .env("KMS_TLS_CERT", &missing)
        .env("KMS_TLS_KEY", certs.join("kms-service.key")));
    assert_fails_with(
        &out,
        &[
            &missing.display().to_string(),
            "cannot read",
            "KMS_TLS_CERT",
        ],
    );

    let out = run(serve(dir.path())
        .arg("--tls-cert")
        .arg(certs.join("kms-service.crt"))
        .arg("--tls-key")
        .arg(dir.path().join("missing.key")));
    assert_fails_with(&out, &["missing.key", "--tls-key", "KMS_TLS_KEY"]);

    let out = run(serve(dir.path())
        .arg("--tls-cert")
        .arg(certs.join("kms-service.crt"))
        .arg("--tls-key")
        .arg(certs.join("kms-service.key"))
        .arg("--tls-client-ca")
        .arg(dir.path().join("missing-ca.crt")));
    assert_fails_with(&out, &["missing-ca.crt", "KMS_TLS_CLIENT_CA"]);
    assert!(!dir.path().join("data/root.key").exists());
}

#[test]
fn a_file_without_a_pem_certificate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let certs = tls_init(&dir.path().join("tls"));
    // The key file holds no certificate.
    let out = run(serve(dir.path())
        .arg("--tls-cert")
        .arg(certs.join("kms-service.key"))
        .arg("--tls-key")
        .arg(certs.join("kms-service.key")));
    assert_fails_with(
        &out,
        &["kms-service.key", "no PEM certificate", "KMS_TLS_CERT"],
    );
    // Nor does an empty CA file.
    std::fs::write(dir.path().join("empty-ca.crt"), "").unwrap();
    let out = run(serve(dir.path())
        .arg("--tls-cert")
        .arg(certs.join("kms-service.crt"))
        .arg("--tls-key")
        .arg(certs.join("kms-service.key"))
        .arg("--tls-client-ca")
        .arg(dir.path().join("empty-ca.crt")));
    assert_fails_with(
        &out,
        &["empty-ca.crt", "no PEM certificate", "KMS_TLS_CLIENT_CA"],
    );
    // And a certificate is no private key.
    let out = run(serve(dir.path())
        .arg("--tls-cert")
        .arg(certs.join("kms-service.crt"))
        .arg("--tls-key")
        .arg(certs.join("kms-service.crt")));
    assert_fails_with(&out, &["no PEM private key", "KMS_TLS_KEY"]);
}

#[test]
fn a_private_key_that_does_not_match_the_certificate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let one = tls_init(&dir.path().join("one"));
    let two = tls_init(&dir.path().join("two"));
    let out = run(serve(dir.path())
        .arg("--tls-cert")
        .arg(one.join("kms-service.crt"))
        .arg("--tls-key")
        .arg(two.join("kms-service.key")));
    assert_fails_with(
        &out,
        &[
            "does not match",
            &two.join("kms-service.key").display().to_string(),
            &one.join("kms-service.crt").display().to_string(),
        ],
    );
    assert!(!dir.path().join("data/root.key").exists());
}

#[test]
fn tls_init_writes_a_ca_and_two_leaf_pairs_once() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("tls");
    let out = run(kms().args(["tls-init", "--out-dir"]).arg(&out_dir).args([
        "--host",
        "kms.internal",
        "--host",
        "10.1.2.3",
    ]));
    assert!(out.status.success(), "{}", stderr(&out));
    let printed = stdout(&out);
    for name in [
        "ca.crt",
        "ca.key",
        "kms-service.crt",
        "kms-service.key",
        "table-service.crt",
        "table-service.key",
    ] {
        let path = out_dir.join(name);
        assert!(path.exists(), "{name} was not written");
        assert!(printed.contains(&path.display().to_string()), "{printed}");
        let text = std::fs::read_to_string(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            if name.ends_with(".key") {
                assert_eq!(mode, 0o600, "{name} must be private");
                assert!(text.contains("-----BEGIN PRIVATE KEY-----"), "{name}");
            } else {
                assert!(text.contains("-----BEGIN CERTIFICATE-----"), "{name}");
            }
        }
    }
    let ca_before = std::fs::read(out_dir.join("ca.crt")).unwrap();
    let again = run(kms().args(["tls-init", "--out-dir"]).arg(&out_dir));
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(
        stdout(&again).contains("already exists"),
        "{}",
        stdout(&again)
    );
    assert_eq!(std::fs::read(out_dir.join("ca.crt")).unwrap(), ca_before);
}

/// A kms-service binary serving until dropped.
struct Server {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(dir: &Path, extra: &[&std::ffi::OsStr]) -> Server {
    start_logging(dir, extra, "warn")
}

/// [`start`] with `RUST_LOG` set to `filter`; the log goes to `serve.log`
/// in `dir`.
fn start_logging(dir: &Path, extra: &[&std::ffi::OsStr], filter: &str) -> Server {
    let port = free_port();
    let child = kms()
        .env("RUST_LOG", filter)
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(dir.join("data"))
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("serve.log")).unwrap())
        .spawn()
        .expect("kms-service starts");
    Server {
        child,
        port,
        dir: dir.to_path_buf(),
    }
}

/// Runs `healthcheck` until it reports SERVING (at most 15 s).
fn wait_serving(server: &mut Server, args: &[&std::ffi::OsStr]) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            panic!(
                "kms-service exited with {status}: {}",
                std::fs::read_to_string(server.dir.join("serve.log")).unwrap_or_default()
            );
        }
        let out = run(kms().arg("healthcheck").args(args));
        if out.status.success() {
            assert_eq!(stdout(&out).trim(), "SERVING");
            return;
        }
        assert!(Instant::now() < deadline, "never healthy: {}", stderr(&out));
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A first start with `--log-format json` logs only JSON lines, one of
/// which names the administrator's token file (mode 0600); the token itself
/// appears in no log line.
#[test]
fn the_first_start_logs_json_naming_the_token_file_but_never_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start_logging(
        dir.path(),
        &["--log-format".as_ref(), "json".as_ref()],
        "info",
    );
    let addr = format!("http://127.0.0.1:{}", server.port);
    wait_serving(&mut server, &["--addr".as_ref(), addr.as_ref()]);
    let token_file = dir.path().join("data/admin.token");
    let token = std::fs::read_to_string(&token_file).unwrap();
    let token = token.trim();
    assert!(token.len() >= 20, "{token:?}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    drop(server);
    let log = std::fs::read_to_string(dir.path().join("serve.log")).unwrap();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l.to_string().contains(&*token_file.to_string_lossy())),
        "no line names {}: {log}",
        token_file.display()
    );
    assert!(!log.contains(token), "the token is in the log");
}

#[test]
fn healthcheck_over_plaintext_and_with_nothing_listening() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(dir.path(), &[]);
    let addr = format!("http://127.0.0.1:{}", server.port);
    wait_serving(&mut server, &["--addr".as_ref(), addr.as_ref()]);
    // The address from the environment.
    let out = run(kms().arg("healthcheck").env("KMS_HEALTHCHECK_ADDR", &addr));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "SERVING");
    drop(server);

    let closed = format!("http://127.0.0.1:{}", free_port());
    let out = run(kms().args(["healthcheck", "--addr", &closed]));
    assert_fails_with(&out, &[&closed]);
    assert!(!stdout(&out).contains("SERVING"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_serves_verified_clients_only() {
    let dir = tempfile::tempdir().unwrap();
    let certs = tls_init(&dir.path().join("tls"));
    let other = tls_init(&dir.path().join("other"));
    let file = |name: &str| certs.join(name).into_os_string();
    let mut server = start(
        dir.path(),
        &[
            "--tls-cert".as_ref(),
            &file("kms-service.crt"),
            "--tls-key".as_ref(),
            &file("kms-service.key"),
            "--tls-client-ca".as_ref(),
            &file("ca.crt"),
        ],
    );
    let https = format!("https://127.0.0.1:{}", server.port);
    let localhost = format!("https://localhost:{}", server.port);

    // CA and client certificate: SERVING (by IP address and by name).
    wait_serving(
        &mut server,
        &[
            "--addr".as_ref(),
            https.as_ref(),
            "--ca-file".as_ref(),
            &file("ca.crt"),
            "--cert".as_ref(),
            &file("table-service.crt"),
            "--key".as_ref(),
            &file("table-service.key"),
        ],
    );
    let out = run(kms()
        .arg("healthcheck")
        .env("KMS_HEALTHCHECK_ADDR", &localhost)
        .env("KMS_HEALTHCHECK_CA_FILE", file("ca.crt"))
        .env("KMS_HEALTHCHECK_CERT", file("kms-service.crt"))
        .env("KMS_HEALTHCHECK_KEY", file("kms-service.key")));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "SERVING");

    // No CA: refused before connecting, naming the setting.
    let out = run(kms().args(["healthcheck", "--addr", &https]));
    assert_fails_with(&out, &["--ca-file", "KMS_HEALTHCHECK_CA_FILE"]);

    // Another CA: the server's certificate does not verify.
    let out = run(kms()
        .args(["healthcheck", "--addr", &https, "--ca-file"])
        .arg(other.join("ca.crt"))
        .arg("--cert")
        .arg(file("table-service.crt"))
        .arg("--key")
        .arg(file("table-service.key")));
    assert_fails_with(&out, &["certificate"]);

    // Right CA but no client certificate: mutual TLS refuses.
    let out = run(kms()
        .args(["healthcheck", "--addr", &https, "--ca-file"])
        .arg(file("ca.crt")));
    assert_fails_with(&out, &["mutual TLS"]);

    // A client certificate from another CA: refused too.
    let out = run(kms()
        .args(["healthcheck", "--addr", &https, "--ca-file"])
        .arg(file("ca.crt"))
        .arg("--cert")
        .arg(other.join("table-service.crt"))
        .arg("--key")
        .arg(other.join("table-service.key")));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));

    // Plaintext to the TLS port: no answer.
    let out = run(kms().args([
        "healthcheck",
        "--addr",
        &format!("http://127.0.0.1:{}", server.port),
    ]));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));

    // A gRPC call through mutual TLS works.
    let admin = std::fs::read_to_string(dir.path().join("data/admin.token"))
        .unwrap()
        .trim()
        .to_string();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(
            std::fs::read(certs.join("ca.crt")).unwrap(),
        ))
        .identity(Identity::from_pem(
            std::fs::read(certs.join("table-service.crt")).unwrap(),
            std::fs::read(certs.join("table-service.key")).unwrap(),
        ));
    let channel = Channel::from_shared(localhost.clone())
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .expect("mutual TLS connection");
    let mut request = tonic::Request::new(iam::GetCallerIdentityRequest {});
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {admin}").parse().unwrap());
    let me = IdentityServiceClient::new(channel)
        .get_caller_identity(request)
        .await
        .expect("GetCallerIdentity over mutual TLS")
        .into_inner();
    assert_eq!(me.principal, "user/admin");
}

/// `audit verify` passes a whole log with its checkpoints, fails one whose
/// checkpoint file is missing (a cut-short log would look whole without
/// it), and still names the first bad record of a changed log either way.
#[tokio::test]
async fn audit_verify_needs_the_checkpoints_to_pass() {
    use kms_service::audit::{AuditConfig, AuditEvent, AuditLog};
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("audit.jsonl");
    let checkpoints = dir.path().join("audit.jsonl.checkpoints");
    let mut config = AuditConfig::new(&log_path, &checkpoints, zeroize::Zeroizing::new([7u8; 32]));
    // Checkpoints at records 2 and (on close) 3.
    config.checkpoint_every = 2;
    let log = AuditLog::open(config).unwrap();
    for i in 0..3 {
        log.append(AuditEvent {
            request_id: format!("r{i}"),
            event_name: "Decrypt".into(),
            decision: "Allow".into(),
            ..AuditEvent::default()
        })
        .await
        .unwrap();
    }
    log.close().await.unwrap();
    let verify = |path: &Path| run(kms().args(["audit", "verify"]).arg(path));
    let out = verify(&log_path);
    assert!(out.status.success(), "{}", stdout(&out));
    assert!(stdout(&out).contains("OK: 3 records"), "{}", stdout(&out));
    assert!(
        !stdout(&out).contains("hash chain alone"),
        "{}",
        stdout(&out)
    );

    // Records after the last checkpoint pass, and the report says how many
    // rest on the unkeyed chain alone.
    let whole = std::fs::read(&checkpoints).unwrap();
    let lines: Vec<&[u8]> = whole.split_inclusive(|&b| b == b'\n').collect();
    assert_eq!(lines.len(), 2, "checkpoints at records 2 and 3");
    std::fs::write(&checkpoints, lines[0]).unwrap();
    let out = verify(&log_path);
    assert!(out.status.success(), "{}", stdout(&out));
    assert!(
        stdout(&out).contains(
            "the newest 1 record(s), after the last checkpoint (record 2), rest on the hash chain alone"
        ),
        "{}",
        stdout(&out)
    );
    std::fs::write(&checkpoints, b"").unwrap();
    let out = verify(&log_path);
    assert!(out.status.success(), "{}", stdout(&out));
    assert!(
        stdout(&out).contains(
            "no checkpoint names any of the 3 record(s): they rest on the hash chain alone"
        ),
        "{}",
        stdout(&out)
    );
    std::fs::write(&checkpoints, &whole).unwrap();

    std::fs::rename(&checkpoints, dir.path().join("elsewhere")).unwrap();
    let out = verify(&log_path);
    assert!(!out.status.success());
    assert!(
        stdout(&out).contains("FAILED: no checkpoint file at")
            && stdout(&out).contains("--checkpoints"),
        "{}",
        stdout(&out)
    );
    let out = run(kms()
        .args(["audit", "verify"])
        .arg(&log_path)
        .arg("--checkpoints")
        .arg(dir.path().join("elsewhere")));
    assert!(out.status.success(), "{}", stdout(&out));

    let text = std::fs::read_to_string(&log_path).unwrap();
    std::fs::write(
        &log_path,
        text.replacen("\"Allow\"", "\"Allxw\"", 2)
            .replacen("\"Allxw\"", "\"Allow\"", 1),
    )
    .unwrap();
    let out = verify(&log_path);
    assert!(!out.status.success());
    assert!(
        stdout(&out).contains("FAILED: record 2"),
        "{}",
        stdout(&out)
    );
}

/// A log whose checkpoints were taken out of their file fails `audit
/// verify` once more records rest on the hash chain alone than kms-service
/// ever leaves so (`MAX_UNCHECKPOINTED`): whoever can rewrite the unkeyed
/// chain cannot pass off an altered tail by removing the checkpoints after
/// it, or by emptying the file. Fewer pass, as a crash may leave them.
#[tokio::test]
async fn audit_verify_refuses_a_tail_longer_than_the_service_leaves_uncheckpointed() {
    use kms_service::audit::{AuditConfig, AuditEvent, AuditLog, MAX_UNCHECKPOINTED};
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("audit.jsonl");
    let checkpoints = dir.path().join("audit.jsonl.checkpoints");
    let config = AuditConfig::new(&log_path, &checkpoints, zeroize::Zeroizing::new([7u8; 32]));
    let log = AuditLog::open(config).unwrap();
    let total = MAX_UNCHECKPOINTED + 52;
    for chunk in 0..total.div_ceil(100) {
        let events = (chunk * 100..((chunk + 1) * 100).min(total))
            .map(|i| AuditEvent {
                request_id: format!("r{i}"),
                event_name: "Decrypt".into(),
                decision: "Allow".into(),
                ..AuditEvent::default()
            })
            .collect();
        log.append_all(events).await.unwrap();
    }
    log.close().await.unwrap();
    let verify = || run(kms().args(["audit", "verify"]).arg(&log_path));
    let out = verify();
    assert!(out.status.success(), "{}", stdout(&out));
    assert!(
        stdout(&out).contains(&format!("OK: {total} records")),
        "{}",
        stdout(&out)
    );

    // Only the first checkpoint (record 1000) left: the 2100 records after
    // it are fewer than a crash may leave; they pass, reported.
    let whole = std::fs::read(&checkpoints).unwrap();
    let first = whole.split_inclusive(|&b| b == b'\n').next().unwrap();
    std::fs::write(&checkpoints, first).unwrap();
    let out = verify();
    assert!(out.status.success(), "{}", stdout(&out));
    assert!(
        stdout(&out).contains(&format!(
            "the newest {} record(s), after the last checkpoint (record 1000), rest on the hash chain alone",
            total - 1000
        )),
        "{}",
        stdout(&out)
    );

    // No checkpoint left, the file emptied: more than the service leaves.
    std::fs::write(&checkpoints, b"").unwrap();
    let out = verify();
    assert!(!out.status.success(), "{}", stdout(&out));
    assert!(
        stdout(&out).contains(&format!(
            "FAILED: the records chain correctly up to {total}, but no checkpoint names any of them: kms-service never leaves more than {MAX_UNCHECKPOINTED} records without a checkpoint"
        )),
        "{}",
        stdout(&out)
    );
}

/// `--config FILE` (or `KMS_CONFIG`): the file's settings apply below the
/// environment and the command line; `serve` and `init` share one file; a
/// misspelt key is refused naming the file and the key.
#[test]
fn a_settings_file_is_below_the_environment_and_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let taken: Vec<_> = (0..3)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let [a, b, c] = [0, 1, 2].map(|i| taken[i].local_addr().unwrap().to_string());
    let data = dir.path().join("data");
    let file = dir.path().join("kms.toml");
    std::fs::write(
        &file,
        format!("listen = \"{a}\"\ndata-dir = \"{}\"\n", data.display()),
    )
    .unwrap();

    let out = run(kms().arg("serve").arg("--config").arg(&file));
    assert_fails_with(&out, &[&a, "already in use"]);
    let out = run(kms().env("KMS_CONFIG", &file).arg("serve"));
    assert_fails_with(&out, &[&a, "already in use"]);
    let out = run(kms()
        .env("KMS_LISTEN", &b)
        .args(["serve", "--config"])
        .arg(&file));
    assert_fails_with(&out, &[&b, "already in use"]);
    let out = run(kms()
        .env("KMS_LISTEN", &b)
        .args(["serve", "--listen", &c, "--config"])
        .arg(&file));
    assert_fails_with(&out, &[&c, "already in use"]);

    // `init` takes the data directory from the same file (and skips
    // `listen`, which is serve's).
    let out = run(kms().args(["init", "--config"]).arg(&file));
    assert!(out.status.success(), "init: {}", stderr(&out));
    assert!(
        data.join("root.key").exists(),
        "init used the file's data-dir"
    );

    std::fs::write(&file, "listn = \"127.0.0.1:1\"\n").unwrap();
    let out = run(kms().args(["serve", "--config"]).arg(&file));
    assert_eq!(out.status.code(), Some(2), "stderr: {}", stderr(&out));
    let err = stderr(&out);
    let name = file.display().to_string();
    for fragment in [name.as_str(), "setting `listn`", "listen, data-dir"] {
        assert!(
            err.contains(fragment),
            "stderr does not mention {fragment:?}: {err}"
        );
    }
    std::fs::write(&file, "max-message-bytes = 1\n").unwrap();
    let out = run(kms().args(["serve", "--config"]).arg(&file));
    assert_eq!(out.status.code(), Some(2), "stderr: {}", stderr(&out));
    let err = stderr(&out);
    for fragment in [name.as_str(), "setting `max-message-bytes`", "1"] {
        assert!(
            err.contains(fragment),
            "stderr does not mention {fragment:?}: {err}"
        );
    }
}

/// `--audit-commit-delay-us` (or its variable) out of 0–10000 is refused
/// before anything is created, naming the flag and the range.
#[test]
fn an_audit_commit_delay_out_of_range_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let outs = [
        run(serve(dir.path()).args(["--audit-commit-delay-us", "10001"])),
        run(serve(dir.path()).env("KMS_AUDIT_COMMIT_DELAY_US", "20000")),
    ];
    for out in outs {
        assert_eq!(out.status.code(), Some(2), "stderr: {}", stderr(&out));
        let err = stderr(&out);
        for fragment in ["--audit-commit-delay-us", "0..=10000"] {
            assert!(
                err.contains(fragment),
                "stderr does not mention {fragment:?}: {err}"
            );
        }
    }
    assert!(!dir.path().join("data").exists());
}

/// A second kms-service on a data directory in use is refused (after a
/// short wait for the first to let go) instead of running beside it on a
/// copy of the state that would diverge; once the first is gone it starts.
#[test]
fn a_second_process_on_the_same_data_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = start(dir.path(), &[]);
    let addr = format!("http://127.0.0.1:{}", first.port);
    wait_serving(&mut first, &["--addr".as_ref(), addr.as_ref()]);
    let out = run(&mut serve(dir.path()));
    assert_fails_with(
        &out,
        &[
            "kms.db.lock",
            "in use by another process",
            "another data directory",
        ],
    );
    // `init` against the running service's directory changes nothing: fine
    // unless it was asked for something that is missing.
    let out = run(kms()
        .args(["init", "--data-dir"])
        .arg(dir.path().join("data")));
    assert!(out.status.success(), "init: {}", stderr(&out));
    assert!(
        stdout(&out).contains(
            "in use by another process (a running kms-service): already initialised, nothing done"
        ),
        "{}",
        stdout(&out)
    );
    let token = dir.path().join("table-service.token");
    let out = run(kms()
        .args(["init", "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--table-service-token-file")
        .arg(&token));
    assert_fails_with(
        &out,
        &[
            &token.display().to_string(),
            "stop kms-service and run init again",
        ],
    );
    assert!(!token.exists());
    drop(first);
    // Stopped, the same init writes the credential; again, and after the
    // file is lost, it is issued anew.
    let init_token = || {
        run(kms()
            .args(["init", "--data-dir"])
            .arg(dir.path().join("data"))
            .arg("--table-service-token-file")
            .arg(&token))
    };
    for _ in 0..2 {
        let out = init_token();
        assert!(out.status.success(), "init: {}", stderr(&out));
        assert!(
            stdout(&out).contains(&format!(
                "table-service token written to {}",
                token.display()
            )),
            "{}",
            stdout(&out)
        );
        assert!(token.exists());
        let out = init_token();
        assert!(
            stdout(&out).contains("was already initialised"),
            "{}",
            stdout(&out)
        );
        std::fs::remove_file(&token).unwrap();
    }
    let mut again = start(dir.path(), &[]);
    let addr = format!("http://127.0.0.1:{}", again.port);
    wait_serving(&mut again, &["--addr".as_ref(), addr.as_ref()]);
}

/// `--admin-token-secret-file`: on first start the administrator gets the
/// deployment's token (nothing is written), a bad one is refused naming the
/// setting and leaves no administrator, and later starts ignore the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_administrators_token_can_come_from_a_secret_file() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("admin-secret");
    let setting = "(--admin-token-secret-file / KMS_ADMIN_TOKEN_SECRET_FILE)";
    for (content, why) in [
        ("short", "the token has 5 characters; it must have 32–256"),
        (
            "a-token-with-a-space in-it-that-is-long-enough",
            "character 21 of the token is not allowed",
        ),
    ] {
        std::fs::write(&secret, content).unwrap();
        let out = run(kms()
            .args(["init", "--data-dir"])
            .arg(dir.path().join("data"))
            .arg("--admin-token-secret-file")
            .arg(&secret));
        assert_fails_with(&out, &[setting, why]);
        assert!(!stderr(&out).contains(content), "the token is never echoed");
    }
    let out = run(kms()
        .args(["init", "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--admin-token-secret-file")
        .arg(dir.path().join("missing")));
    assert_fails_with(&out, &["cannot read the administrator's token", setting]);
    std::fs::write(&secret, "x".repeat(5000)).unwrap();
    let out = run(kms()
        .args(["init", "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--admin-token-secret-file")
        .arg(&secret));
    assert_fails_with(&out, &[setting, "is over 4096 bytes"]);
    // The service token may not be written over the administrator's.
    std::fs::write(&secret, "s3cr3t-from-the-deployment-0123456789+/=").unwrap();
    let out = run(kms()
        .args(["init", "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--admin-token-secret-file")
        .arg(&secret)
        .arg("--table-service-token-file")
        .arg(&secret));
    assert_fails_with(&out, &[setting, "give them different files"]);
    // Both ways of getting the token at once: refused by the parser.
    let out = run(kms()
        .args(["init", "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--admin-token-secret-file")
        .arg(&secret)
        .arg("--admin-token-file")
        .arg(dir.path().join("admin.token")));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("cannot be used with"),
        "{}",
        stderr(&out)
    );

    let token = "s3cr3t-from-the-deployment-0123456789+/=";
    std::fs::write(&secret, format!("{token}\n")).unwrap();
    let out = run(kms()
        .args(["init", "--data-dir"])
        .arg(dir.path().join("data"))
        .env("KMS_ADMIN_TOKEN_SECRET_FILE", &secret));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("administrator created with the token in"),
        "{}",
        stdout(&out)
    );
    assert!(
        !dir.path().join("data/admin.token").exists(),
        "no token file is written"
    );

    // Later starts ignore the file: changing it changes nothing.
    std::fs::write(&secret, "another-token-that-is-long-enough-0123456789").unwrap();
    let mut server = start(
        dir.path(),
        &["--admin-token-secret-file".as_ref(), secret.as_os_str()],
    );
    let addr = format!("http://127.0.0.1:{}", server.port);
    wait_serving(&mut server, &["--addr".as_ref(), addr.as_ref()]);
    let mut client =
        IdentityServiceClient::new(Channel::from_shared(addr).unwrap().connect().await.unwrap());
    let whoami = |token: &str| {
        let mut request = tonic::Request::new(iam::GetCallerIdentityRequest {});
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        request
    };
    let me = client
        .get_caller_identity(whoami(token))
        .await
        .expect("the deployment's token is the administrator's")
        .into_inner();
    assert_eq!(me.principal, "user/admin");
    let refused = client
        .get_caller_identity(whoami("another-token-that-is-long-enough-0123456789"))
        .await
        .expect_err("a later file is not read");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
}

/// `deploy/config/kms-service.toml`: every setting it shows, active or
/// commented out, is a `serve` flag, and its active values are accepted
/// (start-up gets as far as the port, which the test holds).
#[test]
fn the_example_settings_file_is_valid() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/config/kms-service.toml");
    let text = std::fs::read_to_string(&example).unwrap();
    let help = stdout(&run(kms().args(["serve", "--help"])));
    let keys: Vec<&str> = text
        .lines()
        .filter_map(|line| line.trim_start_matches('#').trim().split_once(" = "))
        .map(|(key, _)| key.trim())
        .collect();
    assert!(keys.len() >= 14, "{keys:?}");
    // The other way round too: every serve flag but --config and --help
    // is shown, so the file is the complete list it says it is.
    let flags: Vec<&str> = help
        .lines()
        .filter_map(|line| {
            let option = line.trim_start();
            let option = option.split_once(", ").map_or(option, |(_, long)| long);
            let name = option.strip_prefix("--")?;
            Some(name.split([' ', '\n']).next().unwrap_or(name))
        })
        .filter(|flag| !["config", "help"].contains(flag))
        .collect();
    for flag in &flags {
        assert!(keys.contains(flag), "--{flag} is missing from {example:?}");
    }
    for key in keys {
        assert!(flags.contains(&key), "--{key} is not a serve flag");
    }
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = run(kms()
        .args(["serve", "--config"])
        .arg(&example)
        .args(["--listen", &addr, "--data-dir"])
        .arg(dir.path().join("data")));
    assert_fails_with(&out, &[&addr, "already in use"]);
}

/// `KMS_ROOT_KEY`: the root key from the environment, for deployments that
/// pass secrets there. Nothing is written for it; a key that is not this
/// data directory's, a malformed one, or one given besides
/// `--root-key-file` is refused without showing it.
#[test]
fn the_root_key_can_come_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let key = "0123456789abcdef".repeat(4);
    let init = |root_key: &str| {
        let mut command = kms();
        command
            .args(["init", "--data-dir"])
            .arg(&data)
            .env("KMS_ROOT_KEY", root_key);
        command
    };
    let out = run(&mut init(&key));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        !data.join("root.key").exists(),
        "no root key file is written"
    );
    assert!(data.join("admin.token").exists());
    let out = run(&mut init(&key));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("already initialised"),
        "{}",
        stdout(&out)
    );

    // `audit verify` checks the checkpoints' signatures with it.
    let verify = |root_key: &str| {
        let mut command = kms();
        command
            .args(["audit", "verify"])
            .arg(data.join("audit/audit.jsonl"))
            .env("KMS_ROOT_KEY", root_key);
        command
    };
    let out = run(&mut verify(&key));
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(
        stdout(&out).contains("signatures checked"),
        "{}",
        stdout(&out)
    );
    let other = "fedcba9876543210".repeat(4);
    let out = run(&mut verify(&other));
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(stdout(&out).contains("FAILED"), "{}", stdout(&out));

    // Malformed, on a new data directory: refused before it is created.
    let fresh = dir.path().join("fresh");
    let out = run(kms()
        .args(["init", "--data-dir"])
        .arg(&fresh)
        .env("KMS_ROOT_KEY", "0123"));
    assert_fails_with(&out, &["KMS_ROOT_KEY must be 64 hexadecimal characters"]);
    assert!(!fresh.exists(), "nothing is created for a refused key");

    let out = run(&mut init(&other));
    assert_fails_with(&out, &["the root key does not match this data directory"]);
    let out = run(&mut init("not-hex"));
    assert_fails_with(
        &out,
        &["root key in the environment variable KMS_ROOT_KEY must be 64 hexadecimal characters"],
    );
    let file = dir.path().join("root.key");
    std::fs::write(&file, &key).unwrap();
    let out = run(init(&key).arg("--root-key-file").arg(&file));
    assert_fails_with(&out, &["both KMS_ROOT_KEY and --root-key-file"]);
    for out in [run(&mut init(&other)), run(&mut init("not-hex"))] {
        assert!(!stderr(&out).contains(&other) && !stderr(&out).contains(&key));
    }
}

/// `kms-service backup` copies the key store while the service runs; with
/// the root key and the audit log, a new data directory made from the copy
/// serves the keys as they were at the backup: ciphertexts made before it
/// decrypt, a key created after it is not there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_while_serving_restores_the_keys() {
    use lockbox_proto::kms::v1 as pb;
    use lockbox_proto::kms::v1::key_management_service_client::KeyManagementServiceClient;
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(dir.path(), &[]);
    let addr = format!("http://127.0.0.1:{}", server.port);
    wait_serving(&mut server, &["--addr".as_ref(), addr.as_ref()]);
    let data = dir.path().join("data");
    let token = std::fs::read_to_string(data.join("admin.token")).unwrap();
    fn bearer<T>(token: &str, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {}", token.trim()).parse().unwrap(),
        );
        request
    }
    let connect = |addr: String| async move {
        KeyManagementServiceClient::new(
            Channel::from_shared(addr).unwrap().connect().await.unwrap(),
        )
    };
    let mut client = connect(addr.clone()).await;
    let key =
        |r: tonic::Response<pb::CreateKeyResponse>| r.into_inner().key_metadata.unwrap().key_id;
    let kept = key(client
        .create_key(bearer(&token, pb::CreateKeyRequest::default()))
        .await
        .unwrap());
    let blob = client
        .encrypt(bearer(
            &token,
            pb::EncryptRequest {
                key_id: kept.clone(),
                plaintext: b"before the backup".to_vec(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .ciphertext_blob;

    let copy = dir.path().join("kms-backup.db");
    let out = run(kms()
        .args(["backup", "--data-dir"])
        .arg(&data)
        .arg("--to")
        .arg(&copy));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("Keep the root key with it"),
        "{}",
        stdout(&out)
    );
    let again = run(kms()
        .args(["backup", "--data-dir"])
        .arg(&data)
        .arg("--to")
        .arg(&copy));
    assert_fails_with(&again, &["already exists", "never overwrites"]);
    // The data directory may come from the settings file `serve` uses.
    let settings = dir.path().join("kms.toml");
    std::fs::write(
        &settings,
        format!("data-dir = {:?}\n", data.to_str().unwrap()),
    )
    .unwrap();
    let from_file = dir.path().join("kms-backup-2.db");
    let out = run(kms()
        .args(["backup", "--config"])
        .arg(&settings)
        .arg("--to")
        .arg(&from_file));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(from_file.exists());
    let later = key(client
        .create_key(bearer(&token, pb::CreateKeyRequest::default()))
        .await
        .unwrap());
    drop(client);
    drop(server);

    // Restore: the copy as the store, beside the same root key and log.
    let restored = tempfile::tempdir().unwrap();
    let restored_data = restored.path().join("data");
    std::fs::create_dir_all(&restored_data).unwrap();
    std::fs::copy(&copy, restored_data.join("kms.db")).unwrap();
    std::fs::copy(data.join("root.key"), restored_data.join("root.key")).unwrap();
    std::fs::create_dir_all(restored_data.join("audit")).unwrap();
    for name in ["audit.jsonl", "audit.jsonl.checkpoints"] {
        std::fs::copy(
            data.join("audit").join(name),
            restored_data.join("audit").join(name),
        )
        .unwrap();
    }
    std::fs::copy(data.join("admin.token"), restored_data.join("admin.token")).unwrap();
    let mut server = start(restored.path(), &[]);
    let addr = format!("http://127.0.0.1:{}", server.port);
    wait_serving(&mut server, &["--addr".as_ref(), addr.as_ref()]);
    let mut client = connect(addr).await;
    let opened = client
        .decrypt(bearer(
            &token,
            pb::DecryptRequest {
                ciphertext_blob: blob,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(opened.plaintext, b"before the backup");
    assert_eq!(opened.key_id, kept);
    let gone = client
        .describe_key(bearer(
            &token,
            pb::DescribeKeyRequest {
                key_id: later,
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(gone.code(), tonic::Code::NotFound, "{gone:?}");
}

/// With `--audit-rotate-bytes`, the audit log is renamed to numbered
/// segments as it grows; a restart goes on from the newest file, and
/// `audit verify` checks segments and log as one chain, also once the
/// oldest segment was removed. A size below 64 KiB is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_rotates_and_verifies_across_its_segments() {
    use lockbox_proto::kms::v1 as pb;
    use lockbox_proto::kms::v1::key_management_service_client::KeyManagementServiceClient;
    let dir = tempfile::tempdir().unwrap();
    let out = run(serve(dir.path()).args(["--audit-rotate-bytes", "65535"]));
    assert_eq!(out.status.code(), Some(2), "stderr: {}", stderr(&out));
    assert!(stderr(&out).contains("at least 65536"), "{}", stderr(&out));

    let data = dir.path().join("data");
    let audit = data.join("audit");
    let segments = || {
        let mut names: Vec<String> = std::fs::read_dir(&audit)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("audit-") && n.ends_with(".jsonl"))
            .collect();
        names.sort();
        names
    };
    let verify = || {
        run(kms()
            .args(["audit", "verify"])
            .arg(audit.join("audit.jsonl"))
            .arg("--root-key-file")
            .arg(data.join("root.key")))
    };
    let rotate: [&std::ffi::OsStr; 2] = ["--audit-rotate-bytes".as_ref(), "65536".as_ref()];
    let mut calls = 0;
    for round in 0..2 {
        let mut server = start(dir.path(), &rotate);
        let addr = format!("http://127.0.0.1:{}", server.port);
        wait_serving(&mut server, &["--addr".as_ref(), addr.as_ref()]);
        let token = std::fs::read_to_string(data.join("admin.token")).unwrap();
        let mut client = KeyManagementServiceClient::new(
            Channel::from_shared(addr).unwrap().connect().await.unwrap(),
        );
        for _ in 0..150 {
            let mut request = tonic::Request::new(pb::ListKeysRequest::default());
            request.metadata_mut().insert(
                "authorization",
                format!("Bearer {}", token.trim()).parse().unwrap(),
            );
            client.list_keys(request).await.unwrap();
            calls += 1;
        }
        drop(server);
        let names = segments();
        assert!(names.len() > round, "round {round}: {names:?}");
        assert_eq!(names[0], "audit-00000000000000000001.jsonl");
        let out = verify();
        assert!(out.status.success(), "{}", stdout(&out));
        assert!(
            stdout(&out).contains(&format!(
                "in {} rotated segment(s) and the log",
                names.len()
            )),
            "{}",
            stdout(&out)
        );
    }
    assert!(calls >= 300);

    // Shipped and removed, oldest first: what is left still verifies, and
    // the report says where it starts.
    let names = segments();
    let second: u64 = names[1]["audit-".len()..names[1].len() - ".jsonl".len()]
        .parse()
        .unwrap();
    std::fs::remove_file(audit.join(&names[0])).unwrap();
    let out = verify();
    assert!(out.status.success(), "{}", stdout(&out));
    assert!(
        stdout(&out).contains(&format!("records before {second} are not present")),
        "{}",
        stdout(&out)
    );
    // A changed byte in a segment is named with the segment.
    let path = audit.join(&names[1]);
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replacen("\"ListKeys\"", "\"ListKeyz\"", 1)).unwrap();
    let out = verify();
    assert!(!out.status.success());
    assert!(
        stdout(&out).contains(&format!(
            "FAILED: rotated segment {}: record {second}",
            names[1]
        )),
        "{}",
        stdout(&out)
    );
}

/// Past `--audit-auth-failures-per-minute`, failed authentications from one
/// address are answered the same but only counted: the running service
/// records the count within seconds, and on stopping what is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_authentications_past_the_rate_are_recorded_as_a_count() {
    use lockbox_proto::kms::v1 as pb;
    use lockbox_proto::kms::v1::key_management_service_client::KeyManagementServiceClient;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("data").join("audit").join("audit.jsonl");
    let records = |event: &str| -> Vec<serde_json::Value> {
        std::fs::read_to_string(&log)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|r| r["event_name"] == event)
            .collect()
    };
    // One a minute: the first failure is recorded, the rest counted.
    let mut server = start(
        dir.path(),
        &["--audit-auth-failures-per-minute".as_ref(), "1".as_ref()],
    );
    let addr = format!("http://127.0.0.1:{}", server.port);
    wait_serving(&mut server, &["--addr".as_ref(), addr.as_ref()]);
    let mut client = KeyManagementServiceClient::new(
        Channel::from_shared(addr).unwrap().connect().await.unwrap(),
    );
    let bad = |n: usize| {
        let mut request = tonic::Request::new(pb::ListKeysRequest::default());
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer lbx_not-a-real-token-{n}").parse().unwrap(),
        );
        request
    };
    for n in 0..5 {
        let status = client.list_keys(bad(n)).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
    }
    // The calls counted so far, over every count record.
    let total = || -> u64 {
        records("UnauthenticatedCallsCounted")
            .iter()
            .map(|r| {
                assert_eq!(r["source_address"], "127.0.0.1");
                let message = r["error_message"].as_str().unwrap();
                let (n, rest) = message.split_once(" call(s) from 127.0.0.1 ").unwrap();
                assert!(rest.contains("failed authentication between"), "{message}");
                n.parse::<u64>().unwrap()
            })
            .sum()
    };
    // Within the 5 s of the recording interval (and a margin).
    let deadline = Instant::now() + Duration::from_secs(12);
    while total() < 4 {
        assert!(Instant::now() < deadline, "the count was not recorded");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(total(), 4);
    assert_eq!(records("ListKeys").len(), 1);

    // Counted since, recorded when the service stops (SIGTERM).
    for n in 0..3 {
        client.list_keys(bad(n)).await.unwrap_err();
    }
    drop(client);
    assert!(terminate(&mut server.child).success());
    assert_eq!(total(), 7);
    let out = run(kms()
        .args(["audit", "verify"])
        .arg(&log)
        .arg("--root-key-file")
        .arg(dir.path().join("data").join("root.key")));
    assert!(out.status.success(), "{}", stdout(&out));
}

/// Waits up to 10 s for `path` to exist.
fn appears(path: &Path) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if path.exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

/// A signal while a first start is opening the data directory never
/// leaves an administrator without its token file: opening is seen
/// through (the administrator is made, then its token written), then the
/// service stops as usual. SIGTERM is sent at moments around the one the
/// token file appears, on a new directory each time; after each stop, the
/// token file is there, or a second start (which finds no administrator)
/// writes it.
#[test]
fn a_signal_during_the_first_start_never_loses_the_administrators_token() {
    let quiet = |command: &mut Command| {
        command.stdout(Stdio::null()).stderr(Stdio::null());
    };
    // When the token file appears after a start, on this machine now.
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("data").join("admin.token");
    let mut command = serve(dir.path());
    quiet(&mut command);
    let started = Instant::now();
    let mut child = command.spawn().unwrap();
    assert!(appears(&token), "a first start wrote no token file");
    let written_after = started.elapsed();
    assert!(terminate(&mut child).success());
    for step in 0..16u32 {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("data").join("admin.token");
        let mut command = serve(dir.path());
        quiet(&mut command);
        let mut child = command.spawn().unwrap();
        // From 15 ms before the moment to about when it came last time.
        std::thread::sleep(
            written_after
                .saturating_sub(Duration::from_millis(15))
                .saturating_add(Duration::from_millis(u64::from(step))),
        );
        let stopped = terminate(&mut child);
        if token.exists() {
            assert!(stopped.success(), "step {step}: {stopped:?}");
            continue;
        }
        let mut command = serve(dir.path());
        quiet(&mut command);
        let mut again = command.spawn().unwrap();
        let written = appears(&token);
        terminate(&mut again);
        assert!(
            written,
            "step {step}: stopped by SIGTERM ({stopped:?}) without a token file, and a second start wrote none: the administrator was made without its token"
        );
    }
}

//! The table-service binary's start-up: bad configuration ends it at once
//! with a message naming the file or address and the flag and variable to
//! fix; it waits for a kms-service that is not up yet, gives up after
//! `--kms-wait-secs`, and stops at once on a refused token or a kms-service
//! certificate that does not verify; and it works end to end over mutual TLS
//! (kms-service runs in this process).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use kms_service::config::ServeConfig as KmsConfig;
use kms_service::server::RunningServer as KmsServer;
use lockbox_proto::table::v1 as pb;
use lockbox_proto::table::v1::table_service_client::TableServiceClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

const BIN: &str = env!("CARGO_BIN_EXE_table-service");

/// The binary with no `TABLE_…` variable inherited from the test's own
/// environment.
fn table() -> Command {
    let mut command = Command::new(BIN);
    for (name, _) in std::env::vars() {
        if name.starts_with("TABLE_") {
            command.env_remove(name);
        }
    }
    command.env("RUST_LOG", "warn");
    command
}

/// Runs to completion (at most 15 s); returns the output and how long it
/// took.
fn run(command: &mut Command) -> (Output, Duration) {
    let started = Instant::now();
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("table-service starts");
    let deadline = started + Duration::from_secs(15);
    loop {
        if child.try_wait().expect("wait").is_some() {
            let took = started.elapsed();
            return (child.wait_with_output().expect("output"), took);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "table-service did not exit within 15 s; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn assert_fails_with(out: &Output, fragments: &[&str]) {
    let err = stderr(out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "expected exit code 1; stdout: {}; stderr: {err}",
        stdout(out)
    );
    for fragment in fragments {
        assert!(
            err.contains(fragment),
            "stderr does not mention {fragment:?}: {err}"
        );
    }
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
}

/// `serve` with a token file that has content, a kms endpoint nobody
/// listens on and no waiting, all set through the environment so that a
/// test's flags override them.
fn serve(dir: &Path) -> Command {
    let token = dir.join("some.token");
    std::fs::write(&token, "not-checked-before-kms-answers\n").unwrap();
    let mut command = table();
    command
        .arg("serve")
        .env("TABLE_LISTEN", "127.0.0.1:0")
        .env("TABLE_KMS_WAIT_SECS", "0")
        .env("TABLE_DATA_DIR", dir.join("tables"))
        .env("TABLE_TOKEN_FILE", &token)
        .env("TABLE_KMS_ENDPOINT", format!("http://{}", free_addr()));
    command
}

/// `kms-service tls-init` into `dir`.
fn tls_init(dir: &Path) -> PathBuf {
    match kms_service::tls::init(dir, &[]).expect("tls-init") {
        kms_service::tls::InitOutcome::Written(_) => dir.to_path_buf(),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn missing_token_file_is_refused_naming_the_file_and_variable() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such.token");
    let (out, _) = run(serve(dir.path()).arg("--token-file").arg(&missing));
    assert_fails_with(&out, &[&missing.display().to_string(), "TABLE_TOKEN_FILE"]);
    // Set by the variable: a directory cannot be read as a token file.
    let (out, _) = run(table()
        .args(["serve", "--listen", "127.0.0.1:0", "--kms-wait-secs", "0"])
        .arg("--data-dir")
        .arg(dir.path().join("tables"))
        .env("TABLE_TOKEN_FILE", dir.path()));
    assert_fails_with(
        &out,
        &[&dir.path().display().to_string(), "TABLE_TOKEN_FILE"],
    );
}

/// Cache lifetimes over a day and sizes over a million entries are refused
/// at the command line (a lifetime far in the future would overflow the
/// clock), naming the setting and the range; the limits themselves pass.
#[test]
fn cache_settings_out_of_range_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for (flag, variable, too_big, range) in [
        (
            "--data-key-cache-ttl-secs",
            "TABLE_DATA_KEY_CACHE_TTL",
            "86401",
            "0..=86400",
        ),
        (
            "--authz-cache-ttl-secs",
            "TABLE_AUTHZ_CACHE_TTL",
            "18446744073709551615",
            "0..=86400",
        ),
        (
            "--data-key-cache-size",
            "TABLE_DATA_KEY_CACHE_SIZE",
            "1000001",
            "0..=1000000",
        ),
        (
            "--authz-cache-size",
            "TABLE_AUTHZ_CACHE_SIZE",
            "1000001",
            "0..=1000000",
        ),
    ] {
        for (out, _) in [
            run(serve(dir.path()).args([flag, too_big])),
            run(serve(dir.path()).env(variable, too_big)),
        ] {
            assert_eq!(out.status.code(), Some(2), "{flag}: {}", stderr(&out));
            let err = stderr(&out);
            assert!(err.contains(flag) && err.contains(range), "{flag}: {err}");
        }
    }
    assert!(!dir.path().join("tables").exists(), "nothing was created");
    // At the limits the settings are taken: start-up goes on until it
    // finds no kms-service (exit code 1, not a usage error).
    let (out, _) = run(serve(dir.path()).args([
        "--data-key-cache-ttl-secs",
        "86400",
        "--authz-cache-ttl-secs",
        "86400",
        "--data-key-cache-size",
        "1000000",
        "--authz-cache-size",
        "0",
    ]));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
}

#[test]
fn empty_token_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.token");
    std::fs::write(&empty, "\n").unwrap();
    let (out, _) = run(serve(dir.path()).arg("--token-file").arg(&empty));
    assert_fails_with(
        &out,
        &[&empty.display().to_string(), "is empty", "TABLE_TOKEN_FILE"],
    );
}

#[test]
fn port_in_use_is_refused_naming_the_address() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (out, _) = run(serve(dir.path()).args(["--listen", &addr]));
    assert_fails_with(&out, &[&addr, "already in use", "TABLE_LISTEN"]);
}

#[test]
fn server_tls_certificate_without_key_and_missing_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let certs = tls_init(&dir.path().join("tls"));
    let (out, _) = run(serve(dir.path())
        .arg("--tls-cert")
        .arg(certs.join("table-service.crt")));
    assert_fails_with(&out, &["--tls-cert", "TABLE_TLS_KEY", "give both"]);

    let missing = dir.path().join("missing.crt");
    let (out, _) = run(serve(dir.path())
        .env("TABLE_TLS_CERT", &missing)
        .env("TABLE_TLS_KEY", certs.join("table-service.key")));
    assert_fails_with(&out, &[&missing.display().to_string(), "TABLE_TLS_CERT"]);

    let (out, _) = run(serve(dir.path())
        .arg("--tls-cert")
        .arg(certs.join("table-service.crt"))
        .arg("--tls-key")
        .arg(certs.join("table-service.key"))
        .arg("--tls-client-ca")
        .arg(certs.join("table-service.key")));
    assert_fails_with(&out, &["no PEM certificate", "TABLE_TLS_CLIENT_CA"]);
}

#[test]
fn mismatched_certificate_and_key_are_refused_on_both_sides() {
    let dir = tempfile::tempdir().unwrap();
    let one = tls_init(&dir.path().join("one"));
    let two = tls_init(&dir.path().join("two"));
    let (out, _) = run(serve(dir.path())
        .arg("--tls-cert")
        .arg(one.join("table-service.crt"))
        .arg("--tls-key")
        .arg(two.join("table-service.key")));
    assert_fails_with(&out, &["does not match", "TABLE_TLS_KEY", "TABLE_TLS_CERT"]);

    let kms = format!("https://localhost:{}", free_addr().port());
    let (out, _) = run(serve(dir.path())
        .args(["--kms-endpoint", &kms])
        .arg("--kms-ca-file")
        .arg(one.join("ca.crt"))
        .arg("--kms-client-cert")
        .arg(one.join("table-service.crt"))
        .arg("--kms-client-key")
        .arg(two.join("table-service.key")));
    assert_fails_with(
        &out,
        &[
            "does not match",
            "TABLE_KMS_CLIENT_KEY",
            "TABLE_KMS_CLIENT_CERT",
        ],
    );
}

#[test]
fn kms_tls_settings_must_fit_the_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let certs = tls_init(&dir.path().join("tls"));
    let https = format!("https://localhost:{}", free_addr().port());
    // https:// needs a CA.
    let (out, _) = run(serve(dir.path()).args(["--kms-endpoint", &https]));
    assert_fails_with(
        &out,
        &["TABLE_KMS_ENDPOINT", "--kms-ca-file", "TABLE_KMS_CA_FILE"],
    );
    // A CA that cannot be read.
    let (out, _) = run(serve(dir.path())
        .args(["--kms-endpoint", &https])
        .env("TABLE_KMS_CA_FILE", dir.path().join("missing-ca.crt")));
    assert_fails_with(&out, &["missing-ca.crt", "TABLE_KMS_CA_FILE"]);
    // A client certificate without its key.
    let (out, _) = run(serve(dir.path())
        .args(["--kms-endpoint", &https])
        .arg("--kms-ca-file")
        .arg(certs.join("ca.crt"))
        .arg("--kms-client-cert")
        .arg(certs.join("table-service.crt")));
    assert_fails_with(
        &out,
        &["TABLE_KMS_CLIENT_CERT", "TABLE_KMS_CLIENT_KEY", "give both"],
    );
    // TLS files with a plaintext endpoint would silently not be used.
    let (out, _) = run(serve(dir.path())
        .arg("--kms-ca-file")
        .arg(certs.join("ca.crt")));
    assert_fails_with(&out, &["--kms-ca-file", "plaintext", "https://"]);
}

#[test]
fn gives_up_waiting_for_kms_after_kms_wait_secs() {
    let dir = tempfile::tempdir().unwrap();
    let kms = format!("http://{}", free_addr());
    let (out, took) = run(serve(dir.path())
        .args(["--kms-endpoint", &kms])
        .args(["--kms-wait-secs", "2"]));
    assert_fails_with(
        &out,
        &[
            &format!("waiting for kms-service at {kms} (attempt 1, retrying in 250 ms)"),
            "attempt 2, retrying in 500 ms",
            &format!("kms-service at {kms} did not answer within 2 s"),
            "TABLE_KMS_WAIT_SECS",
        ],
    );
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(8),
        "waited {took:?}"
    );
}

// ------------------------------------------------- with a kms-service running

/// table-service's binary, killed when dropped.
struct Binary {
    child: Child,
    log: PathBuf,
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Binary {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn spawn(command: &mut Command, log: PathBuf) -> Binary {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("table-service starts");
    Binary { child, log }
}

/// Waits (at most 15 s) until `healthcheck` with `args` reports SERVING.
async fn wait_serving(binary: &mut Binary, args: &[&std::ffi::OsStr]) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = binary.child.try_wait().unwrap() {
            panic!("table-service exited with {status}: {}", binary.log());
        }
        let (out, _) = run(table().arg("healthcheck").args(args));
        if out.status.success() {
            assert_eq!(stdout(&out).trim(), "SERVING");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "never healthy: {}; log: {}",
            stderr(&out),
            binary.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits (at most 15 s) for the binary to exit; returns its code and how
/// long that took from `started`.
async fn wait_exit(binary: &mut Binary, started: Instant) -> (Option<i32>, Duration) {
    loop {
        if let Some(status) = binary.child.try_wait().unwrap() {
            return (status.code(), started.elapsed());
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "table-service kept running: {}",
            binary.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn kms_config(dir: &Path, listen: SocketAddr) -> KmsConfig {
    let mut config = KmsConfig::for_data_dir(dir.join("kms"));
    config.listen = listen;
    config.storage.table_service_token_file = Some(dir.join("kms/table-service.token"));
    config
}

fn admin_token(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("kms/admin.token"))
        .unwrap()
        .trim()
        .to_string()
}

fn authed<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

fn s(x: &str) -> pb::AttributeValue {
    pb::AttributeValue {
        value: Some(pb::attribute_value::Value::S(x.into())),
    }
}

/// CreateTable, PutItem, GetItem: the item comes back, so kms-service
/// generated and unwrapped its data key through table-service's channel.
async fn round_trip(client: &mut TableServiceClient<Channel>, admin: &str) {
    client
        .create_table(authed(
            admin,
            pb::CreateTableRequest {
                table_name: "orders".into(),
                key_schema: Some(pb::KeySchema {
                    partition_key: Some(pb::KeyElement {
                        name: "id".into(),
                        r#type: pb::ScalarType::S.into(),
                    }),
                    sort_key: None,
                }),
                sse_specification: None,
            },
        ))
        .await
        .expect("CreateTable");
    client
        .put_item(authed(
            admin,
            pb::PutItemRequest {
                table_name: "orders".into(),
                item: HashMap::from([
                    ("id".to_string(), s("42")),
                    ("order".to_string(), s("3 bikes")),
                ]),
                ..Default::default()
            },
        ))
        .await
        .expect("PutItem");
    let item = client
        .get_item(authed(
            admin,
            pb::GetItemRequest {
                table_name: "orders".into(),
                key: HashMap::from([("id".to_string(), s("42"))]),
            },
        ))
        .await
        .expect("GetItem")
        .into_inner()
        .item;
    assert_eq!(item.get("order"), Some(&s("3 bikes")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn started_before_kms_it_waits_then_serves() {
    let dir = tempfile::tempdir().unwrap();
    let kms_addr = free_addr();
    // Create the data directory and the service token, then stop: the
    // token file is there, kms-service is not.
    KmsServer::start(kms_config(
        dir.path(),
        SocketAddr::from(([127, 0, 0, 1], 0)),
    ))
    .await
    .expect("kms-service starts")
    .stop()
    .await
    .expect("kms-service stops");
    let listen = free_addr();
    let mut binary = spawn(
        table()
            .args(["serve", "--listen", &listen.to_string()])
            .arg("--data-dir")
            .arg(dir.path().join("tables"))
            .arg("--token-file")
            .arg(dir.path().join("kms/table-service.token"))
            .args(["--kms-endpoint", &format!("http://{kms_addr}")])
            .args(["--kms-wait-secs", "20"])
            // No caches: every GetItem below asks kms-service.
            .args([
                "--data-key-cache-ttl-secs",
                "0",
                "--authz-cache-ttl-secs",
                "0",
            ]),
        dir.path().join("table-service.log"),
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        binary.child.try_wait().unwrap().is_none(),
        "table-service must wait for kms-service: {}",
        binary.log()
    );
    let kms = KmsServer::start(kms_config(dir.path(), kms_addr))
        .await
        .expect("kms-service starts on its port");
    let addr = format!("http://{listen}");
    wait_serving(&mut binary, &["--addr".as_ref(), addr.as_ref()]).await;
    let log = binary.log();
    assert!(
        log.contains(&format!(
            "waiting for kms-service at http://{kms_addr} (attempt 1, retrying in 250 ms)"
        )),
        "{log}"
    );
    let channel = Channel::from_shared(addr.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = TableServiceClient::new(channel);
    let admin = admin_token(dir.path());
    round_trip(&mut client, &admin).await;

    // Once serving, kms-service going away does not stop table-service,
    // and its channel reconnects when kms-service is back.
    kms.stop().await.unwrap();
    let get = || {
        authed(
            &admin,
            pb::GetItemRequest {
                table_name: "orders".into(),
                key: HashMap::from([("id".to_string(), s("42"))]),
            },
        )
    };
    let refused = client
        .get_item(get())
        .await
        .expect_err("no kms-service, no data key");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    wait_serving(&mut binary, &["--addr".as_ref(), addr.as_ref()]).await;
    let kms = KmsServer::start(kms_config(dir.path(), kms_addr))
        .await
        .expect("kms-service starts again on its port");
    let item = client
        .get_item(get())
        .await
        .expect("GetItem after kms-service is back");
    assert_eq!(item.into_inner().item.get("order"), Some(&s("3 bikes")));
    drop(binary);
    kms.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_ends_start_up_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let kms = KmsServer::start(kms_config(
        dir.path(),
        SocketAddr::from(([127, 0, 0, 1], 0)),
    ))
    .await
    .expect("kms-service starts");
    // Starts table-service with `token`; it must exit 1 within 5 s (no
    // waiting for kms-service); returns its log.
    let refused_with = async |token: &Path, log: &str| {
        let started = Instant::now();
        let mut binary = spawn(
            table()
                .args(["serve", "--listen", "127.0.0.1:0"])
                .arg("--data-dir")
                .arg(dir.path().join("tables"))
                .arg("--token-file")
                .arg(token)
                .args(["--kms-endpoint", &format!("http://{}", kms.addr)])
                .args(["--kms-wait-secs", "30"]),
            dir.path().join(log),
        );
        let (code, took) = wait_exit(&mut binary, started).await;
        let log = binary.log();
        assert_eq!(code, Some(1), "{log}");
        assert!(took < Duration::from_secs(5), "took {took:?}: {log}");
        assert!(!log.contains("waiting for kms-service"), "{log}");
        log
    };
    let wrong = dir.path().join("wrong.token");
    std::fs::write(&wrong, "lbx-not-a-real-token\n").unwrap();
    let log = refused_with(&wrong, "table-service.log").await;
    assert!(log.contains("refused table-service's token"), "{log}");
    assert!(log.contains(&wrong.display().to_string()), "{log}");
    assert!(log.contains("TABLE_TOKEN_FILE"), "{log}");

    // A valid token of another principal (the administrator's): refused
    // at once too, naming whose it is and what table-service must run as.
    let admin = dir.path().join("kms/admin.token");
    let log = refused_with(&admin, "table-service-admin.log").await;
    assert!(
        log.contains(&format!(
            "the token in {} (--token-file / TABLE_TOKEN_FILE) is user/admin's, but table-service must run as service/table-service",
            admin.display()
        )),
        "{log}"
    );
    kms.stop().await.unwrap();
}

fn tls_kms_config(dir: &Path, certs: &Path) -> KmsConfig {
    let mut config = kms_config(dir, SocketAddr::from(([127, 0, 0, 1], 0)));
    config.tls.tls_cert = Some(certs.join("kms-service.crt"));
    config.tls.tls_key = Some(certs.join("kms-service.key"));
    config.tls.tls_client_ca = Some(certs.join("ca.crt"));
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_kms_certificate_ends_start_up_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let certs = tls_init(&dir.path().join("tls"));
    let other = tls_init(&dir.path().join("other"));
    let kms = KmsServer::start(tls_kms_config(dir.path(), &certs))
        .await
        .expect("kms-service starts with mutual TLS");
    let started = Instant::now();
    let mut binary = spawn(
        table()
            .args(["serve", "--listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(dir.path().join("tables"))
            .arg("--token-file")
            .arg(dir.path().join("kms/table-service.token"))
            .args([
                "--kms-endpoint",
                &format!("https://localhost:{}", kms.addr.port()),
            ])
            .env("TABLE_KMS_CA_FILE", other.join("ca.crt"))
            .env("TABLE_KMS_CLIENT_CERT", certs.join("table-service.crt"))
            .env("TABLE_KMS_CLIENT_KEY", certs.join("table-service.key"))
            .args(["--kms-wait-secs", "30"]),
        dir.path().join("table-service.log"),
    );
    let (code, took) = wait_exit(&mut binary, started).await;
    let log = binary.log();
    assert_eq!(code, Some(1), "{log}");
    assert!(took < Duration::from_secs(5), "took {took:?}: {log}");
    assert!(log.contains("does not verify"), "{log}");
    assert!(
        log.contains(&other.join("ca.crt").display().to_string()),
        "{log}"
    );
    assert!(log.contains("TABLE_KMS_CA_FILE"), "{log}");
    kms.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let certs = tls_init(&dir.path().join("tls"));
    let kms = KmsServer::start(tls_kms_config(dir.path(), &certs))
        .await
        .expect("kms-service starts with mutual TLS");
    let listen = free_addr();
    let file = |name: &str| certs.join(name).into_os_string();
    let mut binary = spawn(
        table()
            .args(["serve", "--listen", &listen.to_string()])
            .arg("--data-dir")
            .arg(dir.path().join("tables"))
            .arg("--token-file")
            .arg(dir.path().join("kms/table-service.token"))
            .args([
                "--kms-endpoint",
                &format!("https://localhost:{}", kms.addr.port()),
            ])
            .arg("--kms-ca-file")
            .arg(file("ca.crt"))
            .arg("--kms-client-cert")
            .arg(file("table-service.crt"))
            .arg("--kms-client-key")
            .arg(file("table-service.key"))
            .env("TABLE_TLS_CERT", file("table-service.crt"))
            .env("TABLE_TLS_KEY", file("table-service.key"))
            .env("TABLE_TLS_CLIENT_CA", file("ca.crt"))
            .args(["--kms-wait-secs", "10"])
            .args(["--log-format", "json", "--max-message-bytes", "1048576"])
            // The events below count cache hits: both caches outlive the test.
            .args([
                "--data-key-cache-ttl-secs",
                "600",
                "--authz-cache-ttl-secs",
                "600",
            ])
            .env("RUST_LOG", "warn,table_event=info"),
        dir.path().join("table-service.log"),
    );
    let https = format!("https://127.0.0.1:{}", listen.port());
    wait_serving(
        &mut binary,
        &[
            "--addr".as_ref(),
            https.as_ref(),
            "--ca-file".as_ref(),
            &file("ca.crt"),
            "--cert".as_ref(),
            &file("kms-service.crt"),
            "--key".as_ref(),
            &file("kms-service.key"),
        ],
    )
    .await;

    // The same check from the environment, and without the CA or the
    // client certificate it fails.
    let (out, _) = run(table()
        .arg("healthcheck")
        .env("TABLE_HEALTHCHECK_ADDR", &https)
        .env("TABLE_HEALTHCHECK_CA_FILE", file("ca.crt"))
        .env("TABLE_HEALTHCHECK_CERT", file("table-service.crt"))
        .env("TABLE_HEALTHCHECK_KEY", file("table-service.key")));
    assert!(out.status.success(), "{}", stderr(&out));
    let (out, _) = run(table().args(["healthcheck", "--addr", &https]));
    assert_fails_with(&out, &["TABLE_HEALTHCHECK_CA_FILE"]);
    let (out, _) = run(table()
        .args(["healthcheck", "--addr", &https, "--ca-file"])
        .arg(file("ca.crt")));
    assert_fails_with(&out, &["mutual TLS"]);

    // A client over mutual TLS: table-service reaches kms-service over
    // mutual TLS for every data key.
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(
            std::fs::read(certs.join("ca.crt")).unwrap(),
        ))
        .identity(Identity::from_pem(
            std::fs::read(certs.join("kms-service.crt")).unwrap(),
            std::fs::read(certs.join("kms-service.key")).unwrap(),
        ));
    let channel = Channel::from_shared(format!("https://localhost:{}", listen.port()))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .expect("mutual TLS to table-service");
    let mut client = TableServiceClient::new(channel);
    let admin = admin_token(dir.path());
    round_trip(&mut client, &admin).await;
    // The same read again, answered from the caches; then a refusal.
    let get = |table: &str| {
        authed(
            &admin,
            pb::GetItemRequest {
                table_name: table.into(),
                key: HashMap::from([("id".to_string(), s("42"))]),
            },
        )
    };
    client
        .get_item(get("orders"))
        .await
        .expect("cached GetItem");
    let missing = client.get_item(get("no-such-table")).await;
    assert_eq!(
        missing.expect_err("no such table").code(),
        tonic::Code::NotFound
    );
    let mut huge = authed(
        &admin,
        pb::PutItemRequest {
            table_name: "orders".into(),
            item: HashMap::from([
                ("id".to_string(), s("43")),
                ("blob".to_string(), s(&"x".repeat(1100 * 1024))),
            ]),
            ..Default::default()
        },
    );
    huge.metadata_mut()
        .insert("x-request-id", "huge-1".parse().unwrap());
    let refused = client.put_item(huge).await.expect_err("over 1 MiB");
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );

    // One structured event per data-plane request, as JSON lines.
    let log = binary.log();
    let events: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| l["target"] == "table_event")
        .map(|l| l["fields"].clone())
        .collect();
    let summary: Vec<String> = events
        .iter()
        .map(|e| {
            format!(
                "{} {} {} {} kms_calls={} cache_hits={}",
                e["action"].as_str().unwrap_or("?"),
                e["principal"].as_str().unwrap_or("?"),
                e["table"].as_str().unwrap_or("?"),
                e["outcome"].as_str().unwrap_or("?"),
                e["kms_calls"],
                e["cache_hits"]
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            "CreateTable user/admin orders ok kms_calls=2 cache_hits=0",
            "PutItem user/admin orders ok kms_calls=1 cache_hits=0",
            "GetItem user/admin orders ok kms_calls=2 cache_hits=0",
            "GetItem user/admin orders ok kms_calls=0 cache_hits=2",
            "GetItem user/admin no-such-table ResourceNotFoundException kms_calls=1 cache_hits=0",
            "PutItem - - ValidationException kms_calls=0 cache_hits=0",
        ],
        "{log}"
    );
    assert!(
        events
            .iter()
            .all(|e| e["request_id"].as_str().is_some_and(|id| !id.is_empty()))
    );
    assert_eq!(events[5]["request_id"], "huge-1");
    // Each event's request id is that of the kms-service calls it made:
    // its kms audit records carry it, as many as its kms_calls.
    drop(binary);
    kms.stop().await.unwrap();
    let audit = std::fs::read_to_string(dir.path().join("kms/audit/audit.jsonl")).unwrap();
    let records: Vec<serde_json::Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for event in &events {
        let id = event["request_id"].as_str().unwrap();
        let made: Vec<&serde_json::Value> =
            records.iter().filter(|r| r["request_id"] == id).collect();
        assert_eq!(
            made.len() as u64,
            event["kms_calls"].as_u64().unwrap(),
            "kms records of {event}: {made:?}"
        );
        assert!(
            made.iter()
                .all(|r| r["via_service"] == "service/table-service"),
            "{made:?}"
        );
    }
}

/// `--config FILE` (or `TABLE_CONFIG`) sets what neither the command line
/// nor the environment does; a misspelt key is refused naming the file.
#[test]
fn a_settings_file_is_below_the_environment_and_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let from_file = dir.path().join("from-file.token");
    let from_flag = dir.path().join("from-flag.token");
    let file = dir.path().join("table.toml");
    std::fs::write(
        &file,
        format!(
            "listen = \"127.0.0.1:0\"\nkms_wait_secs = 0\ndata-dir = \"{}\"\ntoken-file = \"{}\"\n",
            dir.path().join("tables").display(),
            from_file.display()
        ),
    )
    .unwrap();
    let (out, _) = run(table().args(["serve", "--config"]).arg(&file));
    assert_fails_with(&out, &[&from_file.display().to_string()]);
    let (out, _) = run(table().env("TABLE_CONFIG", &file).arg("serve"));
    assert_fails_with(&out, &[&from_file.display().to_string()]);
    let (out, _) = run(table()
        .env("TABLE_CONFIG", &file)
        .args(["serve", "--token-file"])
        .arg(&from_flag));
    assert_fails_with(&out, &[&from_flag.display().to_string()]);

    std::fs::write(&file, "kms-endpoint = \"http://127.0.0.1:1\"\ncache = 5\n").unwrap();
    let (out, _) = run(table().args(["serve", "--config"]).arg(&file));
    assert_eq!(out.status.code(), Some(2), "stderr: {}", stderr(&out));
    let err = stderr(&out);
    let name = file.display().to_string();
    for fragment in [name.as_str(), "setting `cache`", "data-key-cache-ttl"] {
        assert!(
            err.contains(fragment),
            "stderr does not mention {fragment:?}: {err}"
        );
    }
}

/// `deploy/config/table-service.toml`: every setting it shows, active or
/// commented out, is a `serve` flag, and its active values are accepted
/// (start-up gets as far as the port, which the test holds).
#[test]
fn the_example_settings_file_is_valid() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/config/table-service.toml");
    let text = std::fs::read_to_string(&example).unwrap();
    let (help, _) = run(table().args(["serve", "--help"]));
    let help = stdout(&help);
    let keys: Vec<&str> = text
        .lines()
        .filter_map(|line| line.trim_start_matches('#').trim().split_once(" = "))
        .map(|(key, _)| key.trim())
        .collect();
    assert!(keys.len() >= 15, "{keys:?}");
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
    let (out, _) = run(serve(dir.path())
        .arg("--config")
        .arg(&example)
        .args(["--listen", &addr]));
    assert_fails_with(&out, &[&addr, "already in use"]);
}

/// `table-service backup` copies the item store (even while it is open)
/// to a new file, never over an existing one, and names a missing store.
#[test]
fn backup_copies_the_item_store_to_a_new_file() {
    use table_service::store::TableStore;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let store = table_service::store::sqlite::SqliteTableStore::open(&data.join("tables.db"))
        .expect("store opens");
    let key = table_service::model::ItemKey {
        partition: b"p".to_vec(),
        sort: Vec::new(),
    };
    store
        .commit(&[table_service::store::Mutation::PutItem {
            table_id: "t1".into(),
            key: key.clone(),
            envelope: b"sealed".to_vec(),
        }])
        .unwrap();
    let copy = dir.path().join("tables-backup.db");
    let (out, _) = run(table()
        .args(["backup", "--data-dir"])
        .arg(&data)
        .arg("--to")
        .arg(&copy));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("copied the item store"),
        "{}",
        stdout(&out)
    );
    drop(store);
    let reopened = table_service::store::sqlite::SqliteTableStore::open(&copy).expect("copy opens");
    assert_eq!(
        reopened.get_item("t1", &key).unwrap().as_deref(),
        Some(&b"sealed"[..])
    );
    let (again, _) = run(table()
        .args(["backup", "--data-dir"])
        .arg(&data)
        .arg("--to")
        .arg(&copy));
    assert_fails_with(&again, &["already exists"]);
    let (missing, _) = run(table()
        .args(["backup", "--data-dir"])
        .arg(dir.path().join("nowhere"))
        .arg("--to")
        .arg(dir.path().join("x.db")));
    assert_fails_with(&missing, &["there is no store", "--data-dir"]);
}

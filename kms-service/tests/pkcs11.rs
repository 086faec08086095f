//! The root key on a PKCS#11 token, against SoftHSM2: the service serves
//! with it and keeps no root key file, its keys survive a restart, `audit
//! verify` checks the checkpoints with it, start-up refuses a wrong PIN, an
//! unknown token, a token without the key and a key that is not this data
//! directory's; and the token root key itself wraps in the software root
//! key's format, refuses altered or mislabelled material, and derives the
//! SP 800-108 test vector.
//!
//! Needs SoftHSM2 (`apt-get install softhsm2`): its library is looked for in
//! the usual places or taken from `LOCKBOX_SOFTHSM2_MODULE`, and
//! `softhsm2-util` on `PATH`. Each test makes its own token directory.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lockbox_proto::kms::v1 as pb;
use lockbox_proto::kms::v1::key_management_service_client::KeyManagementServiceClient;
use tonic::transport::Channel;

mod common;

use common::{assert_fails_with, free_port, run, terminate};

const BIN: &str = env!("CARGO_BIN_EXE_kms-service");
const USER_PIN: &str = "4711-user";
const SO_PIN: &str = "0815-so";

/// SoftHSM2's PKCS#11 library.
fn softhsm_module() -> PathBuf {
    if let Ok(path) = std::env::var("LOCKBOX_SOFTHSM2_MODULE") {
        return PathBuf::from(path);
    }
    [
        "/usr/lib/softhsm/libsofthsm2.so",
        "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
        "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
        "/usr/local/lib/softhsm/libsofthsm2.so",
        "/opt/homebrew/lib/softhsm/libsofthsm2.so",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
    .expect(
        "SoftHSM2 is not installed: `apt-get install softhsm2` (or set LOCKBOX_SOFTHSM2_MODULE \
         to its libsofthsm2.so)",
    )
}

/// A SoftHSM2 configuration with its own token directory, holding one
/// initialized token.
struct Token {
    _dir: tempfile::TempDir,
    conf: PathBuf,
    pin_file: PathBuf,
    module: PathBuf,
}

fn token(label: &str) -> Token {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::create_dir(&tokens).unwrap();
    let conf = dir.path().join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens.display()
        ),
    )
    .unwrap();
    let out = Command::new("softhsm2-util")
        .env("SOFTHSM2_CONF", &conf)
        .args(["--init-token", "--free", "--label", label])
        .args(["--pin", USER_PIN, "--so-pin", SO_PIN])
        .output()
        .expect("softhsm2-util runs (apt-get install softhsm2)");
    assert!(
        out.status.success(),
        "softhsm2-util --init-token: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pin_file = dir.path().join("pin");
    std::fs::write(&pin_file, format!("{USER_PIN}\n")).unwrap();
    Token {
        _dir: dir,
        conf,
        pin_file,
        module: softhsm_module(),
    }
}

impl Token {
    /// The root-key flags for this token (label `lockbox`).
    fn flags(&self) -> Vec<std::ffi::OsString> {
        vec![
            "--root-key-pkcs11-module".into(),
            self.module.clone().into(),
            "--root-key-pkcs11-token".into(),
            "lockbox".into(),
            "--root-key-pkcs11-pin-file".into(),
            self.pin_file.clone().into(),
        ]
    }
}

/// The binary with no `KMS_…` variable inherited, and `token`'s SoftHSM2
/// configuration.
fn kms(token: &Token) -> Command {
    let mut command = Command::new(BIN);
    for (name, _) in std::env::vars() {
        if name.starts_with("KMS_") {
            command.env_remove(name);
        }
    }
    command
        .env("RUST_LOG", "warn")
        .env("SOFTHSM2_CONF", &token.conf);
    command
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A kms-service serving until dropped.
struct Server {
    child: Child,
    addr: String,
    log: PathBuf,
}

impl Server {
    /// Stops it as an operator would (SIGTERM): the audit log is closed
    /// with a checkpoint.
    fn stop(mut self) {
        let status = terminate(&mut self.child);
        assert!(
            status.success(),
            "{status}: {}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Serves `data` with `token`'s root key and waits until it answers.
fn start(token: &Token, data: &Path) -> Server {
    let port = free_port();
    let log = data.with_extension("log");
    let child = kms(token)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(data)
        .args(token.flags())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut server = Server {
        child,
        addr: format!("http://127.0.0.1:{port}"),
        log,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            panic!(
                "kms-service exited with {status}: {}",
                std::fs::read_to_string(&server.log).unwrap_or_default()
            );
        }
        let out = run(kms(token).args(["healthcheck", "--addr", &server.addr]));
        if out.status.success() {
            return server;
        }
        assert!(Instant::now() < deadline, "never healthy");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn authorized<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", token.trim()).parse().unwrap(),
    );
    request
}

async fn client(server: &Server) -> KeyManagementServiceClient<Channel> {
    KeyManagementServiceClient::new(
        Channel::from_shared(server.addr.clone())
            .unwrap()
            .connect()
            .await
            .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_root_key_serves_survives_a_restart_and_signs_the_checkpoints() {
    let token = token("lockbox");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = start(&token, &data);
    let admin = std::fs::read_to_string(data.join("admin.token")).unwrap();
    let mut api = client(&server).await;
    let key_id = api
        .create_key(authorized(&admin, pb::CreateKeyRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .key_metadata
        .unwrap()
        .key_id;
    let ciphertext = api
        .encrypt(authorized(
            &admin,
            pb::EncryptRequest {
                key_id: key_id.clone(),
                plaintext: b"kept on the token".to_vec(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .ciphertext_blob;
    // A rotation wraps a new backing key on the token.
    api.rotate_key_on_demand(authorized(
        &admin,
        pb::RotateKeyOnDemandRequest {
            key_id: key_id.clone(),
        },
    ))
    .await
    .unwrap();
    drop(api);
    server.stop();
    assert!(
        !data.join("root.key").exists(),
        "a root key file was written although the root key is on the token"
    );

    let server = start(&token, &data);
    let mut api = client(&server).await;
    let decrypted = api
        .decrypt(authorized(
            &admin,
            pb::DecryptRequest {
                ciphertext_blob: ciphertext.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(decrypted.plaintext, b"kept on the token");
    assert_eq!(decrypted.key_version, 1);
    let newer = api
        .encrypt(authorized(
            &admin,
            pb::EncryptRequest {
                key_id: key_id.clone(),
                plaintext: b"second version".to_vec(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(newer.key_version, 2);
    drop(api);
    server.stop();

    // The checkpoints are signed with a key the token derives: verify
    // checks them with the token, and a software key is not that key.
    let log = data.join("audit").join("audit.jsonl");
    let out = run(kms(&token)
        .args(["audit", "verify"])
        .arg(&log)
        .args(token.flags()));
    assert!(out.status.success(), "{}", text(&out.stdout));
    assert!(
        text(&out.stdout).contains("signatures checked"),
        "{}",
        text(&out.stdout)
    );
    let other = dir.path().join("other.key");
    std::fs::write(&other, "11".repeat(32)).unwrap();
    let out = run(kms(&token)
        .args(["audit", "verify"])
        .arg(&log)
        .arg("--root-key-file")
        .arg(&other));
    assert!(!out.status.success(), "{}", text(&out.stdout));
    assert!(
        text(&out.stdout).contains("MAC does not verify"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn start_up_refuses_a_wrong_pin_token_key_or_data_directory() {
    let token = token("lockbox");
    let dir = tempfile::tempdir().unwrap();
    let serve = |data: &Path, flags: &[std::ffi::OsString]| {
        run(kms(&token)
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data)
            .args(flags))
    };
    let with = |name: &str, value: &std::ffi::OsStr| {
        let mut flags = token.flags();
        let at = flags.iter().position(|f| f == name).unwrap();
        flags[at + 1] = value.to_os_string();
        flags
    };
    let fresh = dir.path().join("fresh");

    let wrong_pin = dir.path().join("wrong-pin");
    std::fs::write(&wrong_pin, "0000").unwrap();
    let out = serve(
        &fresh,
        &with("--root-key-pkcs11-pin-file", wrong_pin.as_os_str()),
    );
    assert_fails_with(&out, &["refused the PIN", "--root-key-pkcs11-pin-file"]);

    let empty_pin = dir.path().join("empty-pin");
    std::fs::write(&empty_pin, " \n").unwrap();
    let out = serve(
        &fresh,
        &with("--root-key-pkcs11-pin-file", empty_pin.as_os_str()),
    );
    assert_fails_with(
        &out,
        &["does not hold a PIN", "KMS_ROOT_KEY_PKCS11_PIN_FILE"],
    );

    let out = serve(&fresh, &with("--root-key-pkcs11-token", "nosuch".as_ref()));
    assert_fails_with(
        &out,
        &["no initialized token labelled \"nosuch\"", "\"lockbox\""],
    );

    let out = serve(
        &fresh,
        &with("--root-key-pkcs11-module", "/no/such/lib.so".as_ref()),
    );
    assert_fails_with(&out, &["cannot load the PKCS#11 library /no/such/lib.so"]);
    assert!(
        !fresh.exists(),
        "a refused start created the data directory"
    );

    // The module alone, or beside a root key file, is a usage error.
    let out = serve(&fresh, &token.flags()[..2]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let mut both = token.flags();
    both.extend(["--root-key-file".into(), dir.path().join("root.key").into()]);
    let out = serve(&fresh, &both);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("cannot be used with"));

    // A data directory made with a software root key: the token has no
    // key, and none is made for a directory that has keys already.
    let software = dir.path().join("software");
    let mut child = kms(&token)
        .args(["init", "--data-dir"])
        .arg(&software)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(child.wait().unwrap().success());
    let out = serve(&software, &token.flags());
    assert_fails_with(&out, &["holds no secret key labelled \"lockbox-root-key\""]);

    // The token's key (made for another directory) is not this one's.
    let server = start(&token, &fresh);
    drop(server);
    let out = serve(&software, &token.flags());
    assert_fails_with(&out, &["wrapped with a different root key"]);

    // The root key given twice.
    let out = run(kms(&token)
        .env("KMS_ROOT_KEY", "11".repeat(32))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("twice"))
        .args(token.flags()));
    assert_fails_with(&out, &["give the root key one way"]);
    let out = run(kms(&token)
        .env("KMS_ROOT_KEY", "11".repeat(32))
        .args(["audit", "verify"])
        .arg(fresh.join("audit").join("audit.jsonl"))
        .args(token.flags()));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("give the root key one way"));

    // `init` prepares a directory with a key of its own on the token, as
    // `serve` does.
    let prepared = dir.path().join("prepared");
    let mut flags = token.flags();
    flags.extend(["--root-key-pkcs11-key".into(), "prepared".into()]);
    let out = run(kms(&token)
        .args(["init", "--data-dir"])
        .arg(&prepared)
        .args(&flags));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(prepared.join("admin.token").exists());
    assert!(!prepared.join("root.key").exists());
    // (Not the token's other key.)
    let out = serve(&prepared, &token.flags());
    assert_fails_with(&out, &["wrapped with a different root key"]);

    // Another label on the same token is another key.
    let mut other_label = token.flags();
    other_label.extend(["--root-key-pkcs11-key".into(), "another".into()]);
    let out = serve(&fresh, &other_label);
    assert_fails_with(&out, &["holds no secret key labelled \"another\""]);
}

/// Set in the process this test re-runs itself in, with a token ready.
const INNER: &str = "LOCKBOX_PKCS11_INNER_TEST";

/// The token root key in process. SoftHSM2 finds its tokens through
/// `SOFTHSM2_CONF`, read when the library is initialized, so the test runs
/// itself again as a child with the variable set (a test may not change
/// its own environment).
#[test]
fn the_token_root_key_wraps_like_the_software_one_and_refuses_tampering() {
    if std::env::var_os(INNER).is_none() {
        let token = token("lockbox");
        let out = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "the_token_root_key_wraps_like_the_software_one_and_refuses_tampering",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env(INNER, &token.pin_file)
            .env("SOFTHSM2_CONF", &token.conf)
            .output()
            .unwrap();
        let stdout = text(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "stdout: {stdout}\nstderr: {}",
            text(&out.stderr)
        );
        assert!(stdout.contains("token checks done"), "{stdout}");
        return;
    }
    token_checks(&PathBuf::from(std::env::var_os(INNER).unwrap()));
    println!("token checks done");
}

/// A session of the test's own on the token, beside the root key's
/// (the same process: login state is shared), logged in with `pin` if given.
fn own_session(
    module: &Path,
    pin: Option<&str>,
) -> (cryptoki::context::Pkcs11, cryptoki::session::Session) {
    use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
    use cryptoki::error::{Error, RvError};
    use cryptoki::session::UserType;
    use cryptoki::types::AuthPin;
    let context = Pkcs11::new(module).unwrap();
    match context.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(Error::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => panic!("initialize: {e}"),
    }
    let slot = context.get_slots_with_initialized_token().unwrap()[0];
    let session = context.open_rw_session(slot).unwrap();
    if let Some(pin) = pin {
        match session.login(UserType::User, Some(&AuthPin::new(pin.into()))) {
            Ok(()) | Err(Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(e) => panic!("login: {e}"),
        }
    }
    (context, session)
}

fn token_checks(pin_file: &Path) {
    use cryptoki::object::{Attribute, KeyType, ObjectClass};
    use cryptoki::types::AuthPin;
    use kms_service::crypto::pkcs11::{Pkcs11RootKey, Pkcs11Settings};
    use kms_service::crypto::root_key::{RootKey, SoftwareRootKey, UnwrapError};

    let module = softhsm_module();
    let pin = std::fs::read_to_string(pin_file).unwrap();
    let settings = |label: &'static str| Pkcs11Settings {
        module: &module,
        token: "lockbox",
        pin: zeroize::Zeroizing::new(pin.trim().to_string()),
        key_label: label,
        timeout: std::time::Duration::from_secs(1),
    };

    // A key of known value, put on the token by hand (extractable, so the
    // test knows it): the token must wrap exactly as the software root key
    // with that value does, and derive the SP 800-108 vector.
    let known: Vec<u8> = (0u8..32).collect();
    {
        let (_context, session) = own_session(&module, Some(pin.trim()));
        session
            .create_object(&[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::Token(true),
                Attribute::Label(b"known".to_vec()),
                Attribute::Value(known.clone()),
                Attribute::Encrypt(true),
                Attribute::Decrypt(true),
                Attribute::Sign(true),
            ])
            .unwrap();
    }
    let (token_key, created) = Pkcs11RootKey::open(&settings("known"), false).unwrap();
    assert!(!created);
    let software = SoftwareRootKey::from_hex(&hex::encode(&known), "test").unwrap();

    let label = b"key/1234 v1";
    let material = [7u8; 32];
    let wrapped = token_key.wrap(label, &material).unwrap();
    assert_eq!(wrapped.len(), 12 + 32 + 16);
    assert_eq!(
        software.unwrap(label, &wrapped).unwrap().as_slice(),
        &material
    );
    let other = b"key/5678 v1";
    let by_software = software.wrap(other, &material).unwrap();
    assert_eq!(
        token_key.unwrap(other, &by_software).unwrap().as_slice(),
        &material
    );
    assert_ne!(
        token_key.wrap(label, &material).unwrap(),
        wrapped,
        "fresh IV"
    );

    // Altered anywhere, truncated, or under another label: refused.
    for at in [0, 11, 12, 30, wrapped.len() - 1] {
        let mut bad = wrapped.clone();
        bad[at] ^= 0x01;
        assert_eq!(
            token_key.unwrap(label, &bad).err(),
            Some(UnwrapError::Invalid),
            "byte {at}"
        );
    }
    assert_eq!(
        token_key.unwrap(label, &wrapped[..27]).err(),
        Some(UnwrapError::Invalid)
    );
    assert_eq!(
        token_key.unwrap(b"key/1234 v2", &wrapped).err(),
        Some(UnwrapError::Invalid)
    );
    // Unwrapped once on the token, then kept (refused ones are not).
    let cached = token_key.cached();
    assert_eq!(cached, 1, "only the software-wrapped material so far");
    token_key.unwrap(label, &wrapped).unwrap();
    assert_eq!(token_key.cached(), 2);
    token_key.unwrap(label, &wrapped).unwrap();
    assert_eq!(token_key.cached(), 2);
    // What is kept answers only for the same label and the same bytes.
    assert_eq!(
        token_key.unwrap(b"key/1234 v2", &wrapped).err(),
        Some(UnwrapError::Invalid)
    );
    let mut bad = wrapped.clone();
    bad[20] ^= 0x01;
    assert_eq!(
        token_key.unwrap(label, &bad).err(),
        Some(UnwrapError::Invalid)
    );
    // A destroyed key's material is dropped, and only its.
    token_key.forget(label);
    assert_eq!(token_key.cached(), 1);
    token_key.unwrap(label, &wrapped).unwrap();
    assert_eq!(token_key.cached(), 2);

    let derived = token_key.derive(b"lockbox test purpose").unwrap();
    assert_eq!(
        hex::encode(*derived),
        "8c249fe9b223f813376e0e4b1a2b7169a6485a6be6ba2ac73f6d06c0aa9104b7"
    );
    assert_ne!(*token_key.derive(b"another purpose").unwrap(), *derived);

    // The application is logged out of the token (as after a token
    // reset): the next call opens a new session, logs in again and works.
    {
        let (_context, session) = own_session(&module, None);
        session.logout().unwrap();
    }
    assert_eq!(
        *token_key.derive(b"lockbox test purpose").unwrap(),
        *derived
    );
    let again = token_key.wrap(label, &material).unwrap();
    assert_eq!(
        software.unwrap(label, &again).unwrap().as_slice(),
        &material
    );

    // The token stops answering (its thread held for 2.5 s; the timeout is
    // 1 s): the call waiting for it fails as unavailable once the timeout
    // passes, later ones that need the token fail at once, kept material
    // still answers, and once the token answers again, so do calls.
    let hold = std::time::Duration::from_millis(2500);
    let held_at = std::time::Instant::now();
    token_key.hold_token_thread(hold);
    let late = token_key.wrap(label, &material).unwrap_err();
    let waited = held_at.elapsed();
    assert!(late.0.contains("did not answer within 1000 ms"), "{late:?}");
    assert!(
        waited >= std::time::Duration::from_secs(1) && waited < hold,
        "waited {waited:?}"
    );
    let at_once = std::time::Instant::now();
    let fast = token_key.derive(b"p").unwrap_err();
    assert!(fast.0.contains("has not answered a call"), "{fast:?}");
    let uncached = software.wrap(b"key/9 v1", &[3u8; 32]).unwrap();
    assert!(
        matches!(
            token_key.unwrap(b"key/9 v1", &uncached),
            Err(UnwrapError::Unavailable(_))
        ),
        "an unanswered token is not a bad ciphertext"
    );
    assert!(
        at_once.elapsed() < std::time::Duration::from_millis(500),
        "calls while the token hangs fail at once, not after the timeout: {:?}",
        at_once.elapsed()
    );
    assert_eq!(
        token_key.unwrap(label, &wrapped).unwrap().as_slice(),
        &material
    );
    std::thread::sleep(
        hold.saturating_sub(held_at.elapsed()) + std::time::Duration::from_millis(100),
    );
    assert_eq!(
        *token_key.derive(b"lockbox test purpose").unwrap(),
        *derived
    );
    assert_eq!(
        token_key.unwrap(b"key/9 v1", &uncached).unwrap().as_slice(),
        &[3u8; 32]
    );

    // The PIN is changed and the application logged out: the reconnect is
    // refused, every call then fails as unavailable (not as a bad input),
    // and no further login is tried.
    const NEW_PIN: &str = "changed-pin";
    {
        let (_context, session) = own_session(&module, Some(pin.trim()));
        session
            .set_pin(
                &AuthPin::new(pin.trim().into()),
                &AuthPin::new(NEW_PIN.into()),
            )
            .unwrap();
        session.logout().unwrap();
    }
    let fresh = software.wrap(label, &[9u8; 32]).unwrap();
    let refused = token_key.unwrap(label, &fresh).err().expect("refused");
    assert!(
        matches!(&refused, UnwrapError::Unavailable(e) if e.0.contains("refused the PIN")),
        "{refused:?}"
    );
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let again = token_key.wrap(label, &material).unwrap_err();
    assert!(again.0.contains("no further login is tried"), "{again:?}");
    assert!(token_key.derive(b"p").is_err());
    // Kept material still answers.
    assert_eq!(
        token_key.unwrap(label, &wrapped).unwrap().as_slice(),
        &material
    );
    drop(token_key);
    let pin = NEW_PIN.to_string();
    let settings = |label: &'static str| Pkcs11Settings {
        module: &module,
        token: "lockbox",
        pin: zeroize::Zeroizing::new(pin.clone()),
        key_label: label,
        timeout: std::time::Duration::from_secs(1),
    };

    // A key the service generates: not extractable, and usable after a
    // reopen; the known key's wrapping means nothing to it.
    let (generated, created) = Pkcs11RootKey::open(&settings("made"), true).unwrap();
    assert!(created);
    let wrapped_by_generated = generated.wrap(label, &material).unwrap();
    let purpose = generated.derive(b"p").unwrap();
    assert_eq!(
        generated.unwrap(label, &wrapped).err(),
        Some(UnwrapError::Invalid)
    );
    drop(generated);
    let (reopened, created) = Pkcs11RootKey::open(&settings("made"), true).unwrap();
    assert!(!created, "a second key was generated");
    assert_eq!(
        reopened
            .unwrap(label, &wrapped_by_generated)
            .unwrap()
            .as_slice(),
        &material
    );
    assert_eq!(*reopened.derive(b"p").unwrap(), *purpose);
    {
        let (_context, session) = own_session(&module, Some(&pin));
        let found = session
            .find_objects(&[Attribute::Label(b"made".to_vec())])
            .unwrap();
        assert_eq!(found.len(), 1);
        let attributes = session
            .get_attributes(
                found[0],
                &[
                    cryptoki::object::AttributeType::Extractable,
                    cryptoki::object::AttributeType::Sensitive,
                ],
            )
            .unwrap();
        assert!(
            attributes.contains(&Attribute::Extractable(false)),
            "{attributes:?}"
        );
        assert!(
            attributes.contains(&Attribute::Sensitive(true)),
            "{attributes:?}"
        );
    }
}

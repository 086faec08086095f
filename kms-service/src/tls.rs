//! TLS and mutual TLS (rustls with the ring provider, the only crypto
//! provider in the build): loading and checking PEM files at start-up, the
//! server and client configurations handed to tonic, and `tls-init`, which
//! makes a private CA and the services' certificates with `rcgen`.
//!
//! Every problem with a file is reported naming the file and the flag and
//! environment variable that named it, before anything listens.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// Longest a TLS handshake may take before the connection is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A configuration error, as a complete sentence for the operator.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TlsConfigError(pub String);

fn err(message: String) -> TlsConfigError {
    TlsConfigError(message)
}

/// A setting that names a file, with the flag and the environment variable
/// that set (or would set) it, so messages say where to fix it.
#[derive(Debug, Clone, Copy)]
pub struct FileSetting<'a> {
    pub path: Option<&'a Path>,
    pub flag: &'static str,
    pub env: &'static str,
}

impl<'a> FileSetting<'a> {
    pub fn new(path: Option<&'a PathBuf>, flag: &'static str, env: &'static str) -> Self {
        FileSetting {
            path: path.map(PathBuf::as_path),
            flag,
            env,
        }
    }

    /// The file, when the setting is set.
    pub fn file(&self) -> Option<ConfigFile<'a>> {
        self.path.map(|path| ConfigFile {
            path,
            flag: self.flag,
            env: self.env,
        })
    }

    /// "`--flag` (`ENV`)", for messages.
    pub fn names(&self) -> String {
        format!("{} ({})", self.flag, self.env)
    }
}

/// A file that is set, with the names of its setting.
#[derive(Debug, Clone, Copy)]
pub struct ConfigFile<'a> {
    pub path: &'a Path,
    pub flag: &'static str,
    pub env: &'static str,
}

impl fmt::Display for ConfigFile<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (from {} / {})",
            self.path.display(),
            self.flag,
            self.env
        )
    }
}

/// A setting that holds an address, with its flag and variable.
#[derive(Debug, Clone, Copy)]
pub struct AddrSetting<'a> {
    pub value: &'a str,
    pub flag: &'static str,
    pub env: &'static str,
}

/// Makes ring the process-wide rustls provider (idempotent). tonic builds
/// its rustls configurations from the process default.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    install_crypto_provider();
    rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()))
}

fn read(file: ConfigFile<'_>, what: &str) -> Result<Vec<u8>, TlsConfigError> {
    std::fs::read(file.path).map_err(|e| err(format!("cannot read the {what} file {file}: {e}")))
}

/// Reads a PEM file holding at least one certificate; returns the PEM text
/// and the parsed certificates.
pub fn load_certificates(
    file: ConfigFile<'_>,
    what: &str,
) -> Result<(Vec<u8>, Vec<CertificateDer<'static>>), TlsConfigError> {
    let text = read(file, what)?;
    let certs = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(format!("the {what} file {file} is not valid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(err(format!(
            "the {what} file {file} contains no PEM certificate (expected a \"-----BEGIN CERTIFICATE-----\" block)"
        )));
    }
    Ok((text, certs))
}

/// Reads a PEM private key (PKCS#8, PKCS#1 or SEC1).
pub fn load_private_key(
    file: ConfigFile<'_>,
) -> Result<(zeroize::Zeroizing<Vec<u8>>, PrivateKeyDer<'static>), TlsConfigError> {
    let text = zeroize::Zeroizing::new(read(file, "private key")?);
    let key = PrivateKeyDer::from_pem_slice(&text).map_err(|e| match e {
        pem::Error::NoItemsFound => err(format!(
            "the private key file {file} contains no PEM private key (expected \"-----BEGIN PRIVATE KEY-----\", \"RSA PRIVATE KEY\" or \"EC PRIVATE KEY\")"
        )),
        e => err(format!("the private key file {file} is not valid PEM: {e}")),
    })?;
    Ok((text, key))
}

/// Loads a certificate chain and its private key and checks that the key
/// belongs to the first certificate (rustls `CertifiedKey::keys_match`, the
/// check `ServerConfig::with_single_cert` makes).
pub fn load_identity(
    cert: ConfigFile<'_>,
    key: ConfigFile<'_>,
) -> Result<Identity, TlsConfigError> {
    let (cert_pem, certs) = load_certificates(cert, "certificate")?;
    let (key_pem, key_der) = load_private_key(key)?;
    let signing_key = provider()
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| err(format!("the private key file {key} cannot be used: {e}")))?;
    let certified = rustls::sign::CertifiedKey::new(certs, signing_key);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            return Err(err(format!(
                "the private key {key} does not match the certificate {cert}: they are not a pair"
            )));
        }
        Err(e) => {
            return Err(err(format!(
                "the certificate file {cert} cannot be used with the private key {key}: {e}"
            )));
        }
    }
    Ok(Identity::from_pem(cert_pem, key_pem.as_slice()))
}

/// Loads CA certificates and checks that each can be a trust anchor.
pub fn load_ca(file: ConfigFile<'_>) -> Result<Certificate, TlsConfigError> {
    let (text, certs) = load_certificates(file, "CA certificate")?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs {
        roots.add(cert).map_err(|e| {
            err(format!(
                "the CA certificate file {file} cannot be used as a trust anchor: {e}"
            ))
        })?;
    }
    Ok(Certificate::from_pem(text))
}

fn both_or_neither(cert: FileSetting<'_>, key: FileSetting<'_>) -> Result<(), TlsConfigError> {
    match (cert.path, key.path) {
        (Some(c), None) => Err(err(format!(
            "{} is set ({}) but {} is not: a certificate needs its private key; give both",
            cert.names(),
            c.display(),
            key.names()
        ))),
        (None, Some(k)) => Err(err(format!(
            "{} is set ({}) but {} is not: a private key needs its certificate; give both",
            key.names(),
            k.display(),
            cert.names()
        ))),
        _ => Ok(()),
    }
}

/// The server side: `None` (plaintext) when no certificate is set. With
/// `client_ca`, clients must present a certificate signed by it (mutual
/// TLS).
pub fn server_config(
    cert: FileSetting<'_>,
    key: FileSetting<'_>,
    client_ca: FileSetting<'_>,
) -> Result<Option<ServerTlsConfig>, TlsConfigError> {
    both_or_neither(cert, key)?;
    let (Some(cert_file), Some(key_file)) = (cert.file(), key.file()) else {
        if let Some(ca) = client_ca.file() {
            return Err(err(format!(
                "{} is set ({}) but {} and {} are not: mutual TLS needs the server to use TLS",
                client_ca.names(),
                ca.path.display(),
                cert.names(),
                key.names()
            )));
        }
        return Ok(None);
    };
    let identity = load_identity(cert_file, key_file)?;
    let mut config = ServerTlsConfig::new()
        .identity(identity)
        .timeout(HANDSHAKE_TIMEOUT);
    if let Some(ca) = client_ca.file() {
        config = config.client_ca_root(load_ca(ca)?);
    }
    // Build the rustls configuration once now, as tonic will when serving,
    // so that whatever it finds is reported at start-up naming the files.
    tonic::transport::Server::builder()
        .tls_config(config.clone())
        .map_err(|e| {
            err(format!(
                "the TLS certificate {cert_file} and key {key_file} cannot be used: {}",
                error_chain(&e)
            ))
        })?;
    Ok(Some(config))
}

/// The client side of a connection to `endpoint`: `None` for `http://`;
/// for `https://` the CA is required, and a client certificate and key
/// (mutual TLS) are optional but go together. The TLS name checked is the
/// endpoint's host.
pub fn client_config(
    endpoint: AddrSetting<'_>,
    ca: FileSetting<'_>,
    cert: FileSetting<'_>,
    key: FileSetting<'_>,
) -> Result<Option<ClientTlsConfig>, TlsConfigError> {
    let url = endpoint.value;
    let names = format!("{} ({})", endpoint.flag, endpoint.env);
    let uri: tonic::codegen::http::Uri = url
        .parse()
        .map_err(|e| err(format!("{names} {url:?} is not a valid URL: {e}")))?;
    both_or_neither(cert, key)?;
    match uri.scheme_str() {
        Some("https") => {}
        Some("http") => {
            if let Some(setting) = [ca, cert, key].into_iter().find(|s| s.path.is_some()) {
                return Err(err(format!(
                    "{} is set but {names} is {url}, which is plaintext: use an https:// address for TLS, or unset {}",
                    setting.names(),
                    setting.flag
                )));
            }
            return Ok(None);
        }
        _ => {
            return Err(err(format!(
                "{names} {url:?} must start with http:// or https://"
            )));
        }
    }
    let Some(ca_file) = ca.file() else {
        return Err(err(format!(
            "{names} is {url}, which uses TLS, but no CA certificate is given to verify the server: set {}",
            ca.names()
        )));
    };
    let host = uri
        .host()
        .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
        .ok_or_else(|| err(format!("{names} {url:?} has no host")))?;
    let mut config = ClientTlsConfig::new()
        .domain_name(host)
        .ca_certificate(load_ca(ca_file)?)
        .timeout(HANDSHAKE_TIMEOUT);
    if let (Some(cert), Some(key)) = (cert.file(), key.file()) {
        config = config.identity(load_identity(cert, key)?);
    }
    install_crypto_provider();
    Ok(Some(config))
}

/// An error and its causes, joined with ": ", without repeating a cause
/// that its wrapper already printed.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let part = cause.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = cause.source();
    }
    text
}

/// A gRPC status's message and the causes behind it (a transport failure
/// keeps its cause, e.g. the TLS error, as the status's source).
pub fn status_chain(status: &tonic::Status) -> String {
    let mut text = if status.message().is_empty() {
        format!("{:?}", status.code())
    } else {
        status.message().to_string()
    };
    let mut source = std::error::Error::source(status);
    while let Some(cause) = source {
        let part = cause.to_string();
        // tonic's transport error says only "transport error".
        if part != "transport error" && !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = cause.source();
    }
    text
}

// ---------------------------------------------------------------------------
// tls-init

/// What `tls-init` did.
#[derive(Debug)]
pub enum InitOutcome {
    /// `ca.crt` already existed: nothing was written.
    AlreadyInitialised { ca_cert: PathBuf },
    /// The files written, in order, each with a description.
    Written(Vec<(PathBuf, &'static str)>),
}

const LEAF_VALIDITY_DAYS: i64 = 825;
const CA_VALIDITY_DAYS: i64 = 3650;

/// Creates a private CA (`ca.crt`, `ca.key`) and, signed by it,
/// `kms-service.crt`/`.key` and `table-service.crt`/`.key` in `out_dir`
/// (ECDSA P-256, PEM, keys mode 0600). Both leaf certificates carry the
/// serverAuth and clientAuth extended key usages, so each service can also
/// be the mutual-TLS client of the other (and of its own healthcheck).
/// Does nothing when `ca.crt` exists.
pub fn init(out_dir: &Path, hosts: &[String]) -> Result<InitOutcome, TlsConfigError> {
    init_split(out_dir, None, None, hosts)
}

/// As [`init`], but each service's certificate and key (with a copy of
/// `ca.crt`) go to a directory of their own when one is given, so that a
/// deployment can hand each service only its own key and keep the CA's key
/// where no service sees it. `out_dir` gets `ca.key` and `ca.crt` (written
/// last: its presence means everything was written).
pub fn init_split(
    out_dir: &Path,
    kms_dir: Option<&Path>,
    table_dir: Option<&Path>,
    hosts: &[String],
) -> Result<InitOutcome, TlsConfigError> {
    let ca_cert_path = out_dir.join("ca.crt");
    if ca_cert_path.exists() {
        return Ok(InitOutcome::AlreadyInitialised {
            ca_cert: ca_cert_path,
        });
    }
    for dir in [Some(out_dir), kms_dir, table_dir].into_iter().flatten() {
        std::fs::create_dir_all(dir).map_err(|e| {
            err(format!(
                "cannot create the directory {}: {e}",
                dir.display()
            ))
        })?;
    }
    let rc = |e: rcgen::Error| err(format!("cannot generate a certificate: {e}"));
    let now = time::OffsetDateTime::now_utc();
    let not_before = now - time::Duration::hours(1);

    let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(rc)?;
    let mut ca_params = rcgen::CertificateParams::default();
    ca_params.distinguished_name = rcgen::DistinguishedName::new();
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Lockbox private CA");
    ca_params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "Lockbox");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    ca_params.not_before = not_before;
    ca_params.not_after = now + time::Duration::days(CA_VALIDITY_DAYS);
    let ca_key_pem = ca_key.serialize_pem();
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).map_err(rc)?;

    let mut written = Vec::new();
    write_file(&out_dir.join("ca.key"), &ca_key_pem, true)?;
    written.push((
        out_dir.join("ca.key"),
        "private key of the CA (keep it offline)",
    ));
    let mut leaf_dirs = Vec::new();
    for (service, dir) in [("kms-service", kms_dir), ("table-service", table_dir)] {
        let dir = dir.unwrap_or(out_dir);
        let mut names = vec![
            service.to_string(),
            "localhost".to_string(),
            "127.0.0.1".to_string(),
        ];
        for host in hosts {
            if !names.contains(host) {
                names.push(host.clone());
            }
        }
        let mut params = rcgen::CertificateParams::new(names)
            .map_err(|e| err(format!("invalid --host name: {e}")))?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, service);
        params.is_ca = rcgen::IsCa::ExplicitNoCa;
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before = not_before;
        params.not_after = now + time::Duration::days(LEAF_VALIDITY_DAYS);
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(rc)?;
        let cert = params.signed_by(&key, &*ca).map_err(rc)?;
        let cert_path = dir.join(format!("{service}.crt"));
        let key_path = dir.join(format!("{service}.key"));
        if dir != out_dir {
            leaf_dirs.push(dir.to_path_buf());
        }
        write_file(&key_path, &key.serialize_pem(), true)?;
        write_file(&cert_path, &cert.pem(), false)?;
        written.push((cert_path, "certificate (serverAuth, clientAuth)"));
        written.push((key_path, "private key"));
    }
    for dir in leaf_dirs {
        let copy = dir.join("ca.crt");
        write_file(&copy, &ca.pem(), false)?;
        written.push((copy, "CA certificate (copy)"));
    }
    // ca.crt last: its presence means everything was written.
    write_file(&ca_cert_path, &ca.pem(), false)?;
    written.insert(0, (ca_cert_path, "CA certificate (give it to clients)"));
    Ok(InitOutcome::Written(written))
}

fn write_file(path: &Path, contents: &str, secret: bool) -> Result<(), TlsConfigError> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    }
    let fail = |e: std::io::Error| err(format!("cannot write {}: {e}", path.display()));
    let mut file = options.open(path).map_err(fail)?;
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(fail)?;
    }
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &Path) -> ConfigFile<'_> {
        ConfigFile {
            path,
            flag: "--tls-cert",
            env: "KMS_TLS_CERT",
        }
    }

    #[test]
    fn init_writes_a_ca_and_leaf_certificates_that_load_and_pair() {
        let dir = tempfile::tempdir().unwrap();
        let InitOutcome::Written(files) = init(dir.path(), &["kms.example".into()]).unwrap() else {
            panic!("expected files to be written");
        };
        assert_eq!(files.len(), 6);
        for service in ["kms-service", "table-service"] {
            let cert = dir.path().join(format!("{service}.crt"));
            let key = dir.path().join(format!("{service}.key"));
            load_identity(file(&cert), file(&key)).unwrap();
        }
        load_ca(file(&dir.path().join("ca.crt"))).unwrap();
        assert!(matches!(
            init(dir.path(), &[]).unwrap(),
            InitOutcome::AlreadyInitialised { .. }
        ));
    }

    #[test]
    fn init_split_gives_each_service_only_its_own_key() {
        let root = tempfile::tempdir().unwrap();
        let (ca, kms, table) = (
            root.path().join("ca"),
            root.path().join("kms"),
            root.path().join("table"),
        );
        init_split(&ca, Some(&kms), Some(&table), &[]).unwrap();
        let names = |dir: &Path| {
            let mut names: Vec<String> = std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            names.sort();
            names
        };
        assert_eq!(names(&ca), ["ca.crt", "ca.key"]);
        assert_eq!(
            names(&kms),
            ["ca.crt", "kms-service.crt", "kms-service.key"]
        );
        assert_eq!(
            names(&table),
            ["ca.crt", "table-service.crt", "table-service.key"]
        );
        for (dir, service) in [(&kms, "kms-service"), (&table, "table-service")] {
            load_identity(
                file(&dir.join(format!("{service}.crt"))),
                file(&dir.join(format!("{service}.key"))),
            )
            .unwrap();
            assert_eq!(
                std::fs::read(dir.join("ca.crt")).unwrap(),
                std::fs::read(ca.join("ca.crt")).unwrap()
            );
        }
    }

    #[test]
    fn a_key_from_another_pair_is_refused_as_a_mismatch() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        init(a.path(), &[]).unwrap();
        init(b.path(), &[]).unwrap();
        let cert = a.path().join("kms-service.crt");
        let key = b.path().join("kms-service.key");
        let e = load_identity(file(&cert), file(&key)).unwrap_err();
        assert!(e.0.contains("does not match"), "{e}");
    }

    #[test]
    fn a_key_file_given_as_certificate_has_no_certificate() {
        let a = tempfile::tempdir().unwrap();
        init(a.path(), &[]).unwrap();
        let key = a.path().join("kms-service.key");
        let e = load_certificates(file(&key), "certificate").unwrap_err();
        assert!(e.0.contains("no PEM certificate"), "{e}");
    }
}

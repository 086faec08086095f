//! Transport plumbing shared by the services and their clients: TLS and
//! mutual TLS with rustls (ring provider, the only crypto provider in the
//! build), loading and checking PEM files at start-up, the server and client
//! configurations handed to tonic, error chains for messages, and the
//! `healthcheck` call.
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

/// Most HTTP/2 streams (calls in progress) one client connection may have
/// open at once on either server. tonic leaves this unlimited unless set
/// (hyper's own default is 200); beyond it a client queues its calls on its
/// own side, as HTTP/2 clients do, so one connection cannot hold an
/// unbounded number of requests in the server, and a client that fans out
/// (table-service unwrapping a page of data keys for many callers at once)
/// opens at most this many streams that a burst of cancellations could
/// reset together.
pub const MAX_CONCURRENT_STREAMS: u32 = 512;

/// Most streams a client may reset before the server has taken them up,
/// at one time, before the server closes the connection (GOAWAY
/// `ENHANCE_YOUR_CALM`, h2's guard against reset floods; its default is
/// 20). A service fanning out for its callers cancels that many at once
/// when a caller goes away (table-service dropping a page's unwraps), and
/// under load they are reset before the server takes them up: with h2's
/// default, that closed the connection under every other call on it. As
/// many as a connection may have streams still bounds what a reset flood
/// can hold.
pub const MAX_PENDING_ACCEPT_RESETS: usize = MAX_CONCURRENT_STREAMS as usize;

/// How often a server pings an HTTP/2 connection, and how long it waits
/// for the answer before it closes the connection: a client gone without
/// closing (a crashed host, a network black hole) stops holding its
/// streams and buffers within a minute instead of until the kernel gives up.
pub const SERVER_KEEPALIVE: (Duration, Duration) =
    (Duration::from_secs(30), Duration::from_secs(10));

/// A tonic server builder with the limits both services share.
pub fn server_builder() -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .http2_max_pending_accept_reset_streams(Some(MAX_PENDING_ACCEPT_RESETS))
        .http2_keepalive_interval(Some(SERVER_KEEPALIVE.0))
        .http2_keepalive_timeout(Some(SERVER_KEEPALIVE.1))
}

/// The warning to log when a server is about to serve plaintext on an
/// address other machines can reach (plaintext is for development on
/// loopback): tokens, keys and item plaintext would cross the network
/// unencrypted. `None` for TLS, or a loopback address.
pub fn plaintext_warning(
    listen: std::net::SocketAddr,
    tls: bool,
    env_prefix: &str,
) -> Option<String> {
    if tls || listen.ip().to_canonical().is_loopback() {
        return None;
    }
    Some(format!(
        "serving plaintext on {listen}, which is not a loopback address: access tokens, \
         plaintext and data keys cross the network unencrypted; set --tls-cert and --tls-key \
         ({env_prefix}_TLS_CERT, {env_prefix}_TLS_KEY), or listen on 127.0.0.1 for development"
    ))
}

/// The warning to log when table-service is to reach kms-service over
/// plaintext (`http://`) at an address other than loopback: every caller's
/// forwarded token and every data key would cross the network unencrypted.
pub fn plaintext_endpoint_warning(endpoint: &str) -> Option<String> {
    let uri: tonic::codegen::http::Uri = endpoint.parse().ok()?;
    if uri.scheme_str() != Some("http") {
        return None;
    }
    let host = uri.host()?.trim_start_matches('[').trim_end_matches(']');
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.to_canonical().is_loopback());
    (!loopback).then(|| {
        format!(
            "reaching kms-service at {endpoint} over plaintext: callers' forwarded tokens and \
             their data keys cross the network unencrypted; use an https:// --kms-endpoint \
             with --kms-ca-file (TABLE_KMS_ENDPOINT, TABLE_KMS_CA_FILE), or loopback for development"
        )
    })
}

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
// healthcheck

/// The whole health check (connect, handshake, call) must finish within this.
pub const HEALTHCHECK_DEADLINE: Duration = Duration::from_secs(3);

/// Calls `grpc.health.v1.Health/Check` (service `""`) at `addr` within
/// `deadline`; `Ok` only for `SERVING`, otherwise the reason.
pub async fn healthcheck(
    addr: &str,
    tls: Option<ClientTlsConfig>,
    deadline: Duration,
) -> Result<(), String> {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    let mut endpoint = tonic::transport::Endpoint::from_shared(addr.to_string())
        .map_err(|e| format!("{addr:?} is not a valid URL: {e}"))?
        .connect_timeout(deadline)
        .timeout(deadline);
    if let Some(tls) = tls {
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| format!("TLS configuration: {}", error_chain(&e)))?;
    }
    let call = async {
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| format!("cannot connect to {addr}: {}", error_chain(&e)))?;
        let mut request = tonic::Request::new(HealthCheckRequest {
            service: String::new(),
        });
        request.set_timeout(deadline);
        HealthClient::new(channel)
            .check(request)
            .await
            .map(|r| r.into_inner().status)
            .map_err(|s| {
                format!(
                    "Health/Check at {addr} failed ({:?}): {}",
                    s.code(),
                    status_chain(&s)
                )
            })
    };
    let status = tokio::time::timeout(deadline, call)
        .await
        .map_err(|_| format!("no answer from {addr} within {} ms", deadline.as_millis()))??;
    match ServingStatus::try_from(status) {
        Ok(ServingStatus::Serving) => Ok(()),
        Ok(other) => Err(format!("{addr} reports {}", other.as_str_name())),
        Err(_) => Err(format!("{addr} reports unknown status {status}")),
    }
}

#[cfg(test)]
mod tests {
    use super::plaintext_warning;

    #[test]
    fn plaintext_off_loopback_is_warned_about_naming_the_fix() {
        let warning = plaintext_warning("0.0.0.0:50051".parse().unwrap(), false, "KMS")
            .expect("all interfaces, plaintext");
        assert!(warning.contains("0.0.0.0:50051"), "{warning}");
        assert!(
            warning.contains("--tls-cert and --tls-key (KMS_TLS_CERT, KMS_TLS_KEY)"),
            "{warning}"
        );
        assert!(plaintext_warning("10.1.2.3:1".parse().unwrap(), false, "TABLE").is_some());
        assert!(plaintext_warning("[::]:1".parse().unwrap(), false, "TABLE").is_some());
        for quiet in ["127.0.0.1:50051", "[::1]:50051"] {
            assert_eq!(
                plaintext_warning(quiet.parse().unwrap(), false, "KMS"),
                None,
                "{quiet}"
            );
        }
        assert_eq!(
            plaintext_warning("0.0.0.0:1".parse().unwrap(), true, "KMS"),
            None,
            "TLS"
        );
        assert_eq!(
            plaintext_warning("[::ffff:127.0.0.1]:1".parse().unwrap(), false, "KMS"),
            None
        );
    }

    #[test]
    fn a_plaintext_kms_endpoint_off_loopback_is_warned_about() {
        use super::plaintext_endpoint_warning as warn;
        let warning = warn("http://kms.internal:50051").expect("a remote plaintext endpoint");
        assert!(warning.contains("http://kms.internal:50051"), "{warning}");
        assert!(warning.contains("TABLE_KMS_CA_FILE"), "{warning}");
        assert!(warn("http://10.0.0.7:50051").is_some());
        for quiet in [
            "http://127.0.0.1:50051",
            "http://localhost:50051",
            "http://[::1]:50051",
            "https://kms.internal:50051",
        ] {
            assert_eq!(warn(quiet), None, "{quiet}");
        }
    }
}

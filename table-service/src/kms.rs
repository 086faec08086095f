//! The client side of kms-service as table-service uses it. Every call
//! carries table-service's own credential in `authorization` and the end
//! caller's in `x-on-behalf-of`, so kms-service decides for the end caller
//! (with `kms:ViaService = service/table-service`) and audits both.
//! **Invariant:** table-service never unwraps a data key on its own behalf:
//! every method that can return key material takes the caller it acts for.
//! The only calls it makes as itself are ReEncrypt (no plaintext leaves
//! kms-service) under grants an end caller created for a key change, and
//! retiring those grants.

use std::collections::HashMap;
use std::time::Duration;

use lockbox_proto::iam::v1 as iam;
use lockbox_proto::iam::v1::identity_service_client::IdentityServiceClient;
use lockbox_proto::kms::v1 as pb;
use lockbox_proto::kms::v1::key_management_service_client::KeyManagementServiceClient;
use lockbox_proto::metadata::{AUTHORIZE, FORWARDED_FOR, ON_BEHALF_OF, PRINCIPAL, REQUEST_ID};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic_types::StatusExt;
use zeroize::Zeroizing;

use crate::error::TableError;

/// The end caller of a request, as table-service received it.
#[derive(Clone)]
pub struct CallerCredential {
    /// The caller's `authorization` value (`Bearer …`), forwarded verbatim.
    pub authorization: Zeroizing<String>,
    pub request_id: String,
    /// The address the caller's call came from, if known.
    pub address: Option<std::net::IpAddr>,
}

impl std::fmt::Debug for CallerCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallerCredential")
            .field("request_id", &self.request_id)
            .finish_non_exhaustive()
    }
}

/// One answer of `Authorize`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub allowed: bool,
    pub message: String,
}

/// A fresh data key.
pub struct DataKey {
    pub plaintext: Zeroizing<Vec<u8>>,
    pub wrapped: Vec<u8>,
}

/// What table-service needs to know about a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    pub key_id: String,
    pub state: String,
    /// An encryption key (`SYMMETRIC_DEFAULT`), which can make and unwrap
    /// data keys; an HMAC key cannot.
    pub encrypts: bool,
}

#[derive(Clone)]
pub struct KmsClient {
    endpoint: String,
    kms: KeyManagementServiceClient<Channel>,
    iam: IdentityServiceClient<Channel>,
    service_token: std::sync::Arc<Zeroizing<String>>,
    timeout: Duration,
}

/// HTTP/2 keepalive of the connection to kms-service: a ping every 10 s
/// (also while idle), the connection replaced when one goes 5 s unanswered.
pub const KEEPALIVE: (Duration, Duration) = (Duration::from_secs(10), Duration::from_secs(5));

impl KmsClient {
    /// Connects lazily: the first call dials, and a kms-service that is down
    /// only fails the calls made while it is down (the channel dials again
    /// on the next call). `tls` is required for an `https://` endpoint
    /// (see `ServeConfig::kms_tls`).
    pub fn new(
        endpoint: &str,
        service_token: Zeroizing<String>,
        timeout: Duration,
        tls: Option<ClientTlsConfig>,
    ) -> Result<Self, TableError> {
        Self::with_keepalive(endpoint, service_token, timeout, tls, KEEPALIVE)
    }

    /// [`KmsClient::new`] with HTTP/2 keepalive pings every
    /// `keepalive.0`, the connection given up after `keepalive.1` without
    /// an answer.
    pub fn with_keepalive(
        endpoint: &str,
        service_token: Zeroizing<String>,
        timeout: Duration,
        tls: Option<ClientTlsConfig>,
        keepalive: (Duration, Duration),
    ) -> Result<Self, TableError> {
        let mut builder = Endpoint::from_shared(endpoint.to_string())
            .map_err(|e| {
                TableError::validation(format!("kms endpoint {endpoint:?} is not a valid URL: {e}"))
            })?
            .connect_timeout(timeout)
            .timeout(timeout)
            .tcp_nodelay(true)
            // A connection that went silent (a network black hole, a
            // kms-service gone without closing it) is given up and
            // replaced within seconds, instead of every call timing out
            // on it until the kernel gives up (many minutes).
            .http2_keep_alive_interval(keepalive.0)
            .keep_alive_timeout(keepalive.1)
            .keep_alive_while_idle(true);
        if let Some(tls) = tls {
            builder = builder.tls_config(tls).map_err(|e| {
                TableError::validation(format!("TLS for kms endpoint {endpoint:?}: {e}"))
            })?;
        }
        let channel = builder.connect_lazy();
        Ok(KmsClient {
            endpoint: endpoint.to_string(),
            kms: KeyManagementServiceClient::new(channel.clone()),
            iam: IdentityServiceClient::new(channel),
            service_token: std::sync::Arc::new(service_token),
            timeout,
        })
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// GetCallerIdentity as table-service itself: proves at start-up that
    /// kms-service is reachable (over TLS when configured) and accepts the
    /// service token. Returns the principal, or the raw status so the caller
    /// can tell a transport failure from an answer.
    pub async fn service_identity(&self) -> Result<String, tonic::Status> {
        let request = self
            .service_request(iam::GetCallerIdentityRequest {})
            .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
        Ok(self
            .iam
            .clone()
            .get_caller_identity(request)
            .await?
            .into_inner()
            .principal)
    }

    fn request<T>(
        &self,
        caller: &CallerCredential,
        message: T,
    ) -> Result<tonic::Request<T>, TableError> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(self.timeout);
        let meta = request.metadata_mut();
        let bad = |_| TableError::Internal("credential is not valid metadata".into());
        meta.insert(
            "authorization",
            format!("Bearer {}", self.service_token.as_str())
                .parse()
                .map_err(bad)?,
        );
        meta.insert(
            ON_BEHALF_OF,
            caller
                .authorization
                .as_str()
                .parse()
                .map_err(|_| TableError::Kms {
                    code: tonic::Code::Unauthenticated,
                    reason: "IncompleteSignatureException".into(),
                    message: "malformed credential: expected \"Bearer <token>\", sent once, with a token of 1 to 256 visible ASCII characters".into(),
                })?,
        );
        if let Ok(id) = caller.request_id.parse() {
            meta.insert(REQUEST_ID, id);
        }
        if let Some(Ok(address)) = caller.address.map(|a| a.to_string().parse()) {
            meta.insert(FORWARDED_FOR, address);
        }
        Ok(request)
    }

    /// A request made by table-service alone, with no end caller: only for
    /// ReEncrypt under grants the end caller created, which never returns
    /// plaintext, and for retiring those grants.
    fn service_request<T>(&self, message: T) -> Result<tonic::Request<T>, TableError> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(self.timeout);
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {}", self.service_token.as_str())
                .parse()
                .map_err(|_| {
                    TableError::Internal("service credential is not valid metadata".into())
                })?,
        );
        Ok(request)
    }

    /// [`KmsClient::error`] of a call table-service makes as itself: a
    /// refused credential can only be its own.
    fn own_error(&self, status: tonic::Status) -> TableError {
        if status.code() == tonic::Code::Unauthenticated {
            return self.own_credential_refused(&status);
        }
        self.error(status)
    }

    fn own_credential_refused(&self, status: &tonic::Status) -> TableError {
        tracing::error!(
            kms = %self.endpoint,
            message = status.message(),
            "kms-service refused table-service's own credential"
        );
        TableError::Unavailable(format!(
            "kms-service refused table-service's own credential ({}); the operator must give table-service a valid token (--token-file / TABLE_TOKEN_FILE) and restart it",
            status.message()
        ))
    }

    fn error(&self, status: tonic::Status) -> TableError {
        match status.code() {
            // kms-service always attaches ErrorInfo; a status without it
            // came from the transport (connection refused, reset, timeout).
            tonic::Code::Unavailable
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Cancelled
            | tonic::Code::Unknown
                if status.get_details_error_info().is_none() =>
            {
                TableError::KmsUnavailable {
                    endpoint: self.endpoint.clone(),
                    // With its causes ("transport error: …: connection
                    // reset"), so a refused connection, a reset and a
                    // closed one can be told apart.
                    detail: lockbox_proto::transport::status_chain(&status),
                }
            }
            // table-service's own credential was refused (revoked,
            // deleted): the service is misconfigured, not its caller, whose
            // request may be fine.
            tonic::Code::Unauthenticated
                if status.get_details_error_info().is_some_and(|i| {
                    i.metadata.get("credential").is_some_and(|c| c == "service")
                }) =>
            {
                self.own_credential_refused(&status)
            }
            code => TableError::Kms {
                code,
                reason: status
                    .get_details_error_info()
                    .map(|i| i.reason)
                    .unwrap_or_else(|| "KMSInternalException".into()),
                message: status.message().to_string(),
            },
        }
    }

    /// Asks whether the caller may do each (action, resource); returns the
    /// caller's principal and the answers in order.
    pub async fn authorize(
        &self,
        caller: &CallerCredential,
        questions: &[(String, String)],
    ) -> Result<(String, Vec<Answer>), TableError> {
        let request = self.request(
            caller,
            iam::AuthorizeRequest {
                questions: questions
                    .iter()
                    .map(|(action, resource)| iam::AuthorizationQuestion {
                        action: action.clone(),
                        resource: resource.clone(),
                    })
                    .collect(),
            },
        )?;
        let reply = self
            .iam
            .clone()
            .authorize(request)
            .await
            .map_err(|s| self.error(s))?
            .into_inner();
        let answers = reply
            .answers
            .into_iter()
            .map(|a| Answer {
                allowed: a.decision == i32::from(iam::Decision::Allow),
                message: a.message,
            })
            .collect();
        Ok((reply.principal, answers))
    }

    pub async fn describe_key(
        &self,
        caller: &CallerCredential,
        key_id: &str,
    ) -> Result<KeyInfo, TableError> {
        let request = self.request(
            caller,
            pb::DescribeKeyRequest {
                key_id: key_id.to_string(),
                grant_tokens: vec![],
            },
        )?;
        let meta = self
            .kms
            .clone()
            .describe_key(request)
            .await
            .map_err(|s| self.error(s))?
            .into_inner()
            .key_metadata
            .ok_or_else(|| TableError::Internal("DescribeKey returned no metadata".into()))?;
        let state = pb::KeyState::try_from(meta.key_state)
            .map(|s| match s {
                pb::KeyState::Enabled => "Enabled",
                pb::KeyState::Disabled => "Disabled",
                pb::KeyState::PendingDeletion => "PendingDeletion",
                pb::KeyState::Unspecified => "Unknown",
            })
            .unwrap_or("Unknown");
        Ok(KeyInfo {
            key_id: meta.key_id,
            state: state.to_string(),
            encrypts: meta.key_usage == pb::KeyUsage::EncryptDecrypt as i32,
        })
    }

    /// Creates, on behalf of the caller, a grant for `grantee` on `key_id`
    /// limited to contexts containing `subset`; returns the grant id.
    /// `name` must be unique to this grant's purpose: kms-service answers a
    /// CreateGrant repeated with the same name and parameters with the
    /// grant it made (idempotency), so two purposes sharing a name would
    /// share, and retire, one grant.
    pub async fn create_grant(
        &self,
        caller: &CallerCredential,
        key_id: &str,
        grantee: &str,
        operations: &[pb::GrantOperation],
        subset: HashMap<String, String>,
        name: &str,
    ) -> Result<String, TableError> {
        let request = self.request(
            caller,
            pb::CreateGrantRequest {
                key_id: key_id.to_string(),
                grantee_principal: grantee.to_string(),
                retiring_principal: grantee.to_string(),
                operations: operations.iter().map(|o| i32::from(*o)).collect(),
                constraints: Some(pb::GrantConstraints {
                    encryption_context_equals: HashMap::new(),
                    encryption_context_subset: subset,
                }),
                name: name.to_string(),
                grant_tokens: vec![],
            },
        )?;
        Ok(self
            .kms
            .clone()
            .create_grant(request)
            .await
            .map_err(|s| self.error(s))?
            .into_inner()
            .grant_id)
    }

    /// Re-wraps a data key under `destination_key_id` as table-service
    /// itself, relying on grants; the plaintext never leaves kms-service.
    pub async fn re_encrypt_under_grant(
        &self,
        wrapped: &[u8],
        context: HashMap<String, String>,
        destination_key_id: &str,
    ) -> Result<Vec<u8>, TableError> {
        let request = self.service_request(pb::ReEncryptRequest {
            ciphertext_blob: wrapped.to_vec(),
            source_encryption_context: context.clone(),
            source_key_id: String::new(),
            destination_key_id: destination_key_id.to_string(),
            destination_encryption_context: context,
            grant_tokens: vec![],
        })?;
        Ok(self
            .kms
            .clone()
            .re_encrypt(request)
            .await
            .map_err(|s| self.own_error(s))?
            .into_inner()
            .ciphertext_blob)
    }

    /// Retires a grant table-service is the retiring principal of.
    pub async fn retire_grant(&self, key_id: &str, grant_id: &str) -> Result<(), TableError> {
        let request = self.service_request(pb::RetireGrantRequest {
            grant_token: String::new(),
            key_id: key_id.to_string(),
            grant_id: grant_id.to_string(),
        })?;
        self.kms
            .clone()
            .retire_grant(request)
            .await
            .map_err(|s| self.own_error(s))?;
        Ok(())
    }

    pub async fn generate_data_key(
        &self,
        caller: &CallerCredential,
        key_id: &str,
        context: HashMap<String, String>,
    ) -> Result<DataKey, TableError> {
        let request = self.request(caller, data_key_request(key_id, context))?;
        let reply = self
            .kms
            .clone()
            .generate_data_key(request)
            .await
            .map_err(|s| self.error(s))?
            .into_inner();
        Ok(data_key(reply))
    }

    /// [`KmsClient::decrypt`] made conditional on the caller also being
    /// allowed `action` on `resource` (see [`KmsClient::conditional`]).
    pub async fn decrypt_authorized(
        &self,
        caller: &CallerCredential,
        required: (&str, &str),
        wrapped: &[u8],
        context: HashMap<String, String>,
    ) -> Conditional<Zeroizing<Vec<u8>>> {
        let message = decrypt_request("", wrapped, context);
        self.conditional(
            caller,
            required,
            "Decrypt",
            message,
            |mut kms, request| async move { kms.decrypt(request).await },
        )
        .await
        .map(|(principal, reply)| (principal, Zeroizing::new(reply.plaintext)))
    }

    /// [`KmsClient::generate_data_key`] made conditional on the caller also
    /// being allowed `action` on `resource` (see [`KmsClient::conditional`]).
    pub async fn generate_data_key_authorized(
        &self,
        caller: &CallerCredential,
        required: (&str, &str),
        key_id: &str,
        context: HashMap<String, String>,
    ) -> Conditional<DataKey> {
        let message = data_key_request(key_id, context);
        self.conditional(
            caller,
            required,
            "GenerateDataKey",
            message,
            |mut kms, request| async move { kms.generate_data_key(request).await },
        )
        .await
        .map(|(principal, reply)| (principal, data_key(reply)))
    }

    /// Makes the call `send` sends with `message` on behalf of the caller,
    /// conditional on the caller also being allowed `action` on `resource`
    /// (`x-authorize`), so kms-service decides both in one call: a refusal
    /// of either is the error. A kms-service that does not confirm the
    /// principal on success did not decide `action`, so its answer is
    /// refused rather than trusted.
    async fn conditional<T, R, F>(
        &self,
        caller: &CallerCredential,
        (action, resource): (&str, &str),
        operation: &str,
        message: T,
        send: impl FnOnce(KeyManagementServiceClient<Channel>, tonic::Request<T>) -> F,
    ) -> Conditional<R>
    where
        F: std::future::Future<Output = Result<tonic::Response<R>, tonic::Status>>,
    {
        let request = self.request(caller, message).and_then(|mut request| {
            let value = format!("{action} {resource}").parse().map_err(|_| {
                TableError::Internal(format!("{action} {resource} is not valid metadata"))
            })?;
            request.metadata_mut().insert(AUTHORIZE, value);
            Ok(request)
        });
        let request = request.map_err(|e| (None, e))?;
        match send(self.kms.clone(), request).await {
            Ok(response) => match principal(response.metadata()) {
                Some(principal) => Ok((principal, response.into_inner())),
                None => Err((
                    None,
                    TableError::Internal(format!(
                        "kms-service at {} answered a {operation} conditional on {action} \
                         without naming the principal it decided for; it may predate \
                         x-authorize",
                        self.endpoint
                    )),
                )),
            },
            Err(status) => Err((principal(status.metadata()), self.error(status))),
        }
    }

    pub async fn decrypt(
        &self,
        caller: &CallerCredential,
        key_id: &str,
        wrapped: &[u8],
        context: HashMap<String, String>,
    ) -> Result<Zeroizing<Vec<u8>>, TableError> {
        let request = self.request(caller, decrypt_request(key_id, wrapped, context))?;
        let reply = self
            .kms
            .clone()
            .decrypt(request)
            .await
            .map_err(|s| self.error(s))?
            .into_inner();
        Ok(Zeroizing::new(reply.plaintext))
    }
}

/// The answer to a call made conditional with `x-authorize`: the principal
/// kms-service decided for and the result, or the error with that
/// principal when kms-service named one (it does once the caller is
/// authenticated).
pub type Conditional<R> = Result<(String, R), (Option<String>, TableError)>;

/// The key id a kms-service ciphertext blob names in its clear header
/// (format 1: a version byte, then the 16 bytes of the key's UUID), as
/// kms-service spells key ids. Only a hint, for work that may be skipped
/// (a re-wrap of a data key already under its target key): kms-service
/// checks the whole blob, and who may use its key, whenever it is used.
pub fn blob_key_id(blob: &[u8]) -> Option<String> {
    const FORMAT: u8 = 1;
    let id = blob.get(1..17).filter(|_| blob.first() == Some(&FORMAT))?;
    let hex = hex::encode(id);
    Some(format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    ))
}

fn decrypt_request(
    key_id: &str,
    wrapped: &[u8],
    context: HashMap<String, String>,
) -> pb::DecryptRequest {
    pb::DecryptRequest {
        ciphertext_blob: wrapped.to_vec(),
        encryption_context: context,
        key_id: key_id.to_string(),
        grant_tokens: vec![],
    }
}

/// A request for one AES-256 data key.
fn data_key_request(key_id: &str, context: HashMap<String, String>) -> pb::GenerateDataKeyRequest {
    pb::GenerateDataKeyRequest {
        key_id: key_id.to_string(),
        encryption_context: context,
        key_spec: pb::DataKeySpec::Aes256.into(),
        ..Default::default()
    }
}

fn data_key(reply: pb::GenerateDataKeyResponse) -> DataKey {
    DataKey {
        plaintext: Zeroizing::new(reply.plaintext),
        wrapped: reply.ciphertext_blob,
    }
}

/// The principal kms-service names in `x-principal` on a call made on
/// behalf of someone.
fn principal(meta: &tonic::metadata::MetadataMap) -> Option<String> {
    meta.get(PRINCIPAL)
        .and_then(|v| v.to_str().ok())
        .filter(|p| !p.is_empty())
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use zeroize::Zeroizing;

    use super::KmsClient;
    use crate::error::TableError;

    /// An error with a cause, like hyper's around an io::Error.
    #[derive(Debug)]
    struct Wrapper(std::io::Error);

    impl std::fmt::Display for Wrapper {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("connection error")
        }
    }

    impl std::error::Error for Wrapper {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[tokio::test]
    async fn transport_failures_name_their_causes() {
        let client = KmsClient::new(
            "http://127.0.0.1:1",
            Zeroizing::new("token".into()),
            Duration::from_secs(1),
            None,
        )
        .expect("a valid endpoint");
        let mut status = tonic::Status::unavailable("transport error");
        status.set_source(std::sync::Arc::new(Wrapper(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "connection reset by peer",
        ))));
        match client.error(status) {
            TableError::KmsUnavailable { endpoint, detail } => {
                assert_eq!(endpoint, "http://127.0.0.1:1");
                assert_eq!(
                    detail,
                    "transport error: connection error: connection reset by peer"
                );
            }
            other => panic!("not KmsUnavailable: {other:?}"),
        }
    }

    #[test]
    fn a_blobs_key_id_is_read_from_its_clear_header() {
        let mut blob = vec![1u8];
        blob.extend(0u8..16);
        blob.extend([0xee; 60]);
        assert_eq!(
            super::blob_key_id(&blob).as_deref(),
            Some("00010203-0405-0607-0809-0a0b0c0d0e0f")
        );
        // Another format, or too short to hold a key id: no hint.
        blob[0] = 2;
        assert_eq!(super::blob_key_id(&blob), None);
        assert_eq!(super::blob_key_id(&[1u8; 16]), None);
        assert_eq!(super::blob_key_id(&[]), None);
    }
}

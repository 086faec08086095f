//! The one error type of kms-service's domain layer. Each variant is a fact
//! about what went wrong and whose fault it is; `grpc/status.rs` is the only
//! place that turns it into a gRPC status with an AWS-style reason.

/// Why authentication failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No `authorization` metadata.
    Missing,
    /// Not of the form `Bearer <token>`.
    Malformed,
    /// No such token.
    Unknown,
    /// The token was deleted.
    Revoked,
}

/// Whose credential failed authentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialOf {
    /// The caller's own `authorization`, on a direct call.
    Caller,
    /// A service's own `authorization`, on a call it makes on behalf of
    /// someone: the service is misconfigured, not its caller.
    Service,
    /// The end caller's, forwarded by a service in `x-on-behalf-of`.
    Forwarded,
}

impl CredentialOf {
    /// As named in `ErrorInfo.metadata["credential"]`.
    pub fn name(self) -> &'static str {
        match self {
            CredentialOf::Caller => "caller",
            CredentialOf::Service => "service",
            CredentialOf::Forwarded => "forwarded",
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KmsError {
    /// The caller (or the caller a service forwards) could not be identified.
    #[error("{message}")]
    Unauthenticated {
        failure: AuthFailure,
        of: CredentialOf,
        message: String,
    },
    /// Policy evaluation did not allow the request.
    #[error("{0}")]
    AccessDenied(String),
    /// A key, alias, principal, grant or policy does not exist.
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    /// The key is disabled.
    #[error("key {key_id} is disabled")]
    Disabled { key_id: String },
    /// The key's state does not permit the operation.
    #[error("{0}")]
    InvalidState(String),
    /// Tampered, truncated, foreign or wrong-context ciphertext. Opaque by
    /// design: the caller learns nothing about which check failed.
    #[error("the ciphertext is invalid, was altered, or does not match the encryption context")]
    InvalidCiphertext,
    /// `Decrypt` named a key that is not the blob's key.
    #[error("{0}")]
    IncorrectKey(String),
    /// The key's usage does not allow the operation (e.g. Encrypt with an HMAC key).
    #[error("{0}")]
    InvalidKeyUsage(String),
    /// `VerifyMac` found that the MAC does not match.
    #[error("the MAC does not match the message and key")]
    InvalidMac,
    #[error("{0}")]
    InvalidGrantToken(String),
    #[error("{0}")]
    InvalidGrantId(String),
    #[error("{0}")]
    MalformedPolicy(String),
    #[error("{0}")]
    UnsupportedOperation(String),
    #[error("{0}")]
    LimitExceeded(String),
    /// A tag key or value that is not allowed.
    #[error("{0}")]
    Tag(String),
    /// A list call's `marker` that no such call could have returned.
    #[error("{0}")]
    InvalidMarker(String),
    /// Bad input.
    #[error("{0}")]
    Validation(String),
    /// The audit log or the store cannot make a record durable; the request
    /// is refused (fail closed).
    #[error("{0}")]
    Unavailable(String),
    /// The root key (a hardware token) cannot be used just now: nothing
    /// was done; the call may be retried.
    #[error("{0}")]
    KeyUnavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl KmsError {
    /// The AWS-style exception name, carried as `ErrorInfo.reason` and in
    /// audit records.
    pub fn reason(&self) -> &'static str {
        match self {
            KmsError::Unauthenticated { failure, .. } => match failure {
                AuthFailure::Missing => "MissingAuthenticationTokenException",
                AuthFailure::Malformed => "IncompleteSignatureException",
                AuthFailure::Unknown | AuthFailure::Revoked => "UnrecognizedClientException",
            },
            KmsError::AccessDenied(_) => "AccessDeniedException",
            KmsError::NotFound(_) => "NotFoundException",
            KmsError::AlreadyExists(_) => "AlreadyExistsException",
            KmsError::Disabled { .. } => "DisabledException",
            KmsError::InvalidState(_) => "KMSInvalidStateException",
            KmsError::InvalidCiphertext => "InvalidCiphertextException",
            KmsError::IncorrectKey(_) => "IncorrectKeyException",
            KmsError::InvalidKeyUsage(_) => "InvalidKeyUsageException",
            KmsError::InvalidMac => "KMSInvalidMacException",
            KmsError::InvalidGrantToken(_) => "InvalidGrantTokenException",
            KmsError::InvalidGrantId(_) => "InvalidGrantIdException",
            KmsError::MalformedPolicy(_) => "MalformedPolicyDocumentException",
            KmsError::UnsupportedOperation(_) => "UnsupportedOperationException",
            KmsError::LimitExceeded(_) => "LimitExceededException",
            KmsError::Tag(_) => "TagException",
            KmsError::InvalidMarker(_) => "InvalidMarkerException",
            KmsError::Validation(_) => "ValidationException",
            KmsError::Unavailable(_) => "KMSUnavailableException",
            KmsError::KeyUnavailable(_) => "KeyUnavailableException",
            KmsError::Internal(_) => "KMSInternalException",
        }
    }

    pub fn validation(message: impl Into<String>) -> Self {
        KmsError::Validation(message.into())
    }
}

impl From<crate::crypto::root_key::RootKeyUnavailable> for KmsError {
    fn from(e: crate::crypto::root_key::RootKeyUnavailable) -> Self {
        // The detail (the token's own error) is for the log; the caller
        // learns that the call may be retried.
        tracing::error!(error = %e, "the root key could not be used");
        KmsError::KeyUnavailable(
            "the root key's hardware token cannot be used just now; nothing was done, retry later"
                .into(),
        )
    }
}

impl From<crate::store::StoreError> for KmsError {
    fn from(e: crate::store::StoreError) -> Self {
        KmsError::Unavailable(format!("key store unavailable: {e}"))
    }
}

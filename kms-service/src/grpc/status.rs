//! The one mapping from domain errors to gRPC statuses. Every status carries
//! a `google.rpc.ErrorInfo` whose `reason` is the AWS-style exception name,
//! so clients branch on it instead of parsing messages.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::error::KmsError;

/// `ErrorInfo.domain` of every error this service returns.
pub const ERROR_DOMAIN: &str = "kms.lockbox.dev";

pub fn to_status(error: &KmsError) -> Status {
    let code = match error {
        KmsError::Unauthenticated { .. } => Code::Unauthenticated,
        KmsError::AccessDenied(_) => Code::PermissionDenied,
        KmsError::NotFound(_) => Code::NotFound,
        KmsError::AlreadyExists(_) => Code::AlreadyExists,
        KmsError::Disabled { .. }
        | KmsError::InvalidState(_)
        | KmsError::UnsupportedOperation(_) => Code::FailedPrecondition,
        KmsError::InvalidCiphertext
        | KmsError::IncorrectKey(_)
        | KmsError::InvalidKeyUsage(_)
        | KmsError::InvalidMac
        | KmsError::InvalidGrantToken(_)
        | KmsError::InvalidGrantId(_)
        | KmsError::MalformedPolicy(_)
        | KmsError::Tag(_)
        | KmsError::InvalidMarker(_)
        | KmsError::Validation(_) => Code::InvalidArgument,
        KmsError::LimitExceeded(_) => Code::ResourceExhausted,
        KmsError::Unavailable(_) | KmsError::KeyUnavailable(_) => Code::Unavailable,
        KmsError::Internal(_) => Code::Internal,
    };
    let message = match error {
        // Internal details go to the log, not to the caller.
        KmsError::Internal(detail) => {
            tracing::error!(%detail, "internal error");
            "internal error; see the kms-service log".to_string()
        }
        other => other.to_string(),
    };
    let mut metadata = std::collections::HashMap::new();
    if let KmsError::Unauthenticated { of, .. } = error {
        // So a service can tell its own misconfiguration from its caller's
        // bad credential.
        metadata.insert("credential".to_string(), of.name().to_string());
    }
    Status::with_error_details(
        code,
        lockbox_proto::status_message::bounded(message),
        ErrorDetails::with_error_info(error.reason(), ERROR_DOMAIN, metadata),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{AuthFailure, CredentialOf};

    fn unauthenticated(failure: AuthFailure, of: CredentialOf) -> KmsError {
        KmsError::Unauthenticated {
            failure,
            of,
            message: "no".into(),
        }
    }

    /// Every error kind: its gRPC code, its reason in `ErrorInfo` (domain
    /// `kms.lockbox.dev`), its message (internal details withheld), and whose
    /// credential failed for Unauthenticated.
    #[test]
    fn every_error_maps_to_its_code_reason_and_message() {
        let s = |text: &str| text.to_string();
        let cases: Vec<(KmsError, Code, &str)> = vec![
            (
                unauthenticated(AuthFailure::Missing, CredentialOf::Caller),
                Code::Unauthenticated,
                "MissingAuthenticationTokenException",
            ),
            (
                unauthenticated(AuthFailure::Malformed, CredentialOf::Caller),
                Code::Unauthenticated,
                "IncompleteSignatureException",
            ),
            (
                unauthenticated(AuthFailure::Unknown, CredentialOf::Service),
                Code::Unauthenticated,
                "UnrecognizedClientException",
            ),
            (
                unauthenticated(AuthFailure::Revoked, CredentialOf::Forwarded),
                Code::Unauthenticated,
                "UnrecognizedClientException",
            ),
            (
                KmsError::AccessDenied(s("m")),
                Code::PermissionDenied,
                "AccessDeniedException",
            ),
            (
                KmsError::NotFound(s("m")),
                Code::NotFound,
                "NotFoundException",
            ),
            (
                KmsError::AlreadyExists(s("m")),
                Code::AlreadyExists,
                "AlreadyExistsException",
            ),
            (
                KmsError::Disabled { key_id: s("k") },
                Code::FailedPrecondition,
                "DisabledException",
            ),
            (
                KmsError::InvalidState(s("m")),
                Code::FailedPrecondition,
                "KMSInvalidStateException",
            ),
            (
                KmsError::UnsupportedOperation(s("m")),
                Code::FailedPrecondition,
                "UnsupportedOperationException",
            ),
            (
                KmsError::InvalidCiphertext,
                Code::InvalidArgument,
                "InvalidCiphertextException",
            ),
            (
                KmsError::IncorrectKey(s("m")),
                Code::InvalidArgument,
                "IncorrectKeyException",
            ),
            (
                KmsError::InvalidKeyUsage(s("m")),
                Code::InvalidArgument,
                "InvalidKeyUsageException",
            ),
            (
                KmsError::InvalidMac,
                Code::InvalidArgument,
                "KMSInvalidMacException",
            ),
            (
                KmsError::InvalidGrantToken(s("m")),
                Code::InvalidArgument,
                "InvalidGrantTokenException",
            ),
            (
                KmsError::InvalidGrantId(s("m")),
                Code::InvalidArgument,
                "InvalidGrantIdException",
            ),
            (
                KmsError::MalformedPolicy(s("m")),
                Code::InvalidArgument,
                "MalformedPolicyDocumentException",
            ),
            (
                KmsError::Validation(s("m")),
                Code::InvalidArgument,
                "ValidationException",
            ),
            (
                KmsError::LimitExceeded(s("m")),
                Code::ResourceExhausted,
                "LimitExceededException",
            ),
            (KmsError::Tag(s("m")), Code::InvalidArgument, "TagException"),
            (
                KmsError::InvalidMarker(s("m")),
                Code::InvalidArgument,
                "InvalidMarkerException",
            ),
            (
                KmsError::Unavailable(s("m")),
                Code::Unavailable,
                "KMSUnavailableException",
            ),
            (
                KmsError::KeyUnavailable(s("m")),
                Code::Unavailable,
                "KeyUnavailableException",
            ),
            (
                KmsError::Internal(s("secret detail")),
                Code::Internal,
                "KMSInternalException",
            ),
        ];
        for (error, code, reason) in cases {
            let status = to_status(&error);
            assert_eq!(status.code(), code, "{error:?}");
            let info = status.get_details_error_info().expect("ErrorInfo");
            assert_eq!(info.reason, reason, "{error:?}");
            assert_eq!(info.domain, ERROR_DOMAIN);
            match &error {
                KmsError::Internal(_) => {
                    assert_eq!(status.message(), "internal error; see the kms-service log");
                }
                other => assert_eq!(status.message(), other.to_string()),
            }
            let credential = info.metadata.get("credential").map(String::as_str);
            match &error {
                KmsError::Unauthenticated { of, .. } => assert_eq!(credential, Some(of.name())),
                _ => assert_eq!(credential, None, "{error:?}"),
            }
            lockbox_proto::errors_doc::assert_documented(
                include_str!("../../../README.md"),
                reason,
                code,
            );
        }
    }
}

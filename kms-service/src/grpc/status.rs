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
        | KmsError::Validation(_) => Code::InvalidArgument,
        KmsError::LimitExceeded(_) => Code::ResourceExhausted,
        KmsError::Unavailable(_) => Code::Unavailable,
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
        message,
        ErrorDetails::with_error_info(error.reason(), ERROR_DOMAIN, metadata),
    )
}

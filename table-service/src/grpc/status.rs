//! The one mapping from table-service errors to gRPC statuses, with
//! `google.rpc.ErrorInfo` carrying the AWS-style reason. Errors that came
//! from kms-service keep their code, reason and message.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::error::TableError;

pub const ERROR_DOMAIN: &str = "table.lockbox.dev";

pub fn to_status(error: &TableError) -> Status {
    let code = match error {
        TableError::Kms { code, .. } => *code,
        TableError::KmsUnavailable { .. } | TableError::Unavailable(_) => Code::Unavailable,
        TableError::ResourceNotFound(_) => Code::NotFound,
        TableError::ResourceInUse(_) => Code::AlreadyExists,
        TableError::Validation(_) => Code::InvalidArgument,
        TableError::ConditionalCheckFailed(_) => Code::FailedPrecondition,
        TableError::ItemIntegrity { .. } => Code::DataLoss,
        TableError::Internal(_) => Code::Internal,
    };
    let message = match error {
        TableError::Internal(detail) => {
            tracing::error!(%detail, "internal error");
            "internal error; see the table-service log".to_string()
        }
        other => other.to_string(),
    };
    Status::with_error_details(
        code,
        message,
        ErrorDetails::with_error_info(
            error.reason(),
            ERROR_DOMAIN,
            std::collections::HashMap::new(),
        ),
    )
}

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
        TableError::TableExists(_) => Code::AlreadyExists,
        // Wait, then call again: not "already exists".
        TableError::ResourceInUse(_) => Code::FailedPrecondition,
        // Lost a race: retry at once.
        TableError::ConcurrentChange(_) => Code::Aborted,
        TableError::Validation(_) => Code::InvalidArgument,
        TableError::ResponseTooLarge(_) => Code::ResourceExhausted,
        TableError::ConditionalCheckFailed(_) => Code::FailedPrecondition,
        TableError::ItemIntegrity { .. } => Code::DataLoss,
        TableError::KeyDeleted(_) => Code::FailedPrecondition,
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
        lockbox_proto::status_message::bounded(message),
        ErrorDetails::with_error_info(
            error.reason(),
            ERROR_DOMAIN,
            std::collections::HashMap::new(),
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_in_use_errors_keep_their_reason_and_say_what_to_do_with_their_code() {
        for (error, code) in [
            (
                TableError::TableExists("Table already exists: t".into()),
                Code::AlreadyExists,
            ),
            (
                TableError::ResourceInUse("table t is already changing its key".into()),
                Code::FailedPrecondition,
            ),
            (
                TableError::ConcurrentChange("table t changed; retry".into()),
                Code::Aborted,
            ),
        ] {
            let status = to_status(&error);
            assert_eq!(status.code(), code, "{error:?}");
            assert_eq!(
                status.get_details_error_info().map(|i| i.reason).as_deref(),
                Some("ResourceInUseException"),
                "{error:?}"
            );
            assert_eq!(status.message(), error.to_string());
        }
    }

    /// Every reason table-service answers with of its own is in the
    /// README's Errors table, with its code.
    #[test]
    fn every_reason_is_documented_with_its_code() {
        let s = |text: &str| text.to_string();
        for error in [
            TableError::KmsUnavailable {
                endpoint: s("http://kms"),
                detail: s("timeout"),
            },
            TableError::ResourceNotFound(s("t")),
            TableError::TableExists(s("t")),
            TableError::ResourceInUse(s("t")),
            TableError::ConcurrentChange(s("t")),
            TableError::Validation(s("v")),
            TableError::ResponseTooLarge(s("v")),
            TableError::ConditionalCheckFailed(s("c")),
            TableError::ItemIntegrity {
                table: s("t"),
                key: s("id (S) \"a\""),
            },
            TableError::KeyDeleted(s("k")),
            TableError::Unavailable(s("u")),
            TableError::Internal(s("i")),
        ] {
            let status = to_status(&error);
            let reason = status.get_details_error_info().expect("ErrorInfo").reason;
            lockbox_proto::errors_doc::assert_documented(
                include_str!("../../../README.md"),
                &reason,
                status.code(),
            );
        }
    }
}

//! The gRPC face of table-service. **Architecture invariant:** this is the
//! only module that touches protobuf types. It also writes the structured
//! event of every data-plane request (principal, action, table, outcome,
//! kms-service calls, cache hits).

mod convert;
mod status;
mod table;

pub use status::to_status;
pub use table::TableGrpc;

use crate::error::TableError;
use crate::kms::CallerCredential;

/// Answers a request tonic refuses before any handler runs as any other
/// bad input, with `ErrorInfo` (`ValidationException`): one over the
/// message-size limit (`--max-message-bytes`) `RESOURCE_EXHAUSTED` and a
/// message naming the setting, one whose message cannot be decoded
/// `INVALID_ARGUMENT`. Nothing reaches kms-service or the store.
pub fn oversize_layer() -> lockbox_proto::oversize::OversizeLayer {
    lockbox_proto::oversize::OversizeLayer::new(std::sync::Arc::new(|refused| {
        Box::pin(async move {
            // The request's structured event, as every data-plane request
            // has; the table is unknown (the message was not read).
            let request_id = refused
                .metadata
                .get(lockbox_proto::metadata::REQUEST_ID)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-");
            tracing::info!(
                target: "table_event",
                request_id, principal = "-", action = %refused.method, table = "-",
                outcome = "ValidationException", kms_calls = 0u32, cache_hits = 0u32,
                detail = %refused.detail,
            );
            match refused.problem {
                lockbox_proto::oversize::Problem::TooLarge => {
                    let base = to_status(&TableError::Validation(format!(
                        "the request message is too large ({}); table-service takes messages up to \
                         --max-message-bytes (TABLE_MAX_MESSAGE_BYTES), and an item at most 400 KiB",
                        refused.detail
                    )));
                    tonic::Status::with_details(
                        tonic::Code::ResourceExhausted,
                        base.message(),
                        base.details().to_vec().into(),
                    )
                }
                lockbox_proto::oversize::Problem::Malformed => {
                    to_status(&TableError::Validation(refused.malformed_message()))
                }
            }
        })
    }))
}

/// The caller's credential, forwarded to kms-service; refused here only when
/// it is missing altogether, or sent twice (which one would count?).
fn caller<T>(request: &tonic::Request<T>) -> Result<CallerCredential, TableError> {
    let meta = request.metadata();
    if meta.get_all("authorization").iter().nth(1).is_some() {
        return Err(TableError::Kms {
            code: tonic::Code::Unauthenticated,
            reason: "IncompleteSignatureException".into(),
            message:
                "malformed credential: send one \"authorization: Bearer <token>\", not several"
                    .into(),
        });
    }
    let authorization = meta
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .ok_or_else(|| TableError::Kms {
            code: tonic::Code::Unauthenticated,
            reason: "MissingAuthenticationTokenException".into(),
            message: "missing credential: send metadata \"authorization: Bearer <token>\"".into(),
        })?;
    let request_id = meta
        .get(lockbox_proto::metadata::REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|id| !id.is_empty() && id.len() <= 128)
        .map_or_else(
            || lockbox_proto::random::random_uuid().to_string(),
            str::to_string,
        );
    Ok(CallerCredential {
        authorization: zeroize::Zeroizing::new(authorization.to_string()),
        request_id,
        address: request.remote_addr().map(|a| a.ip()),
    })
}

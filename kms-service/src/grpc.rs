//! The gRPC face of kms-service. **Architecture invariant:** this is the only
//! module that touches protobuf types; it converts requests into domain calls
//! on [`Kms`](crate::service::Kms) and domain results back, and maps every
//! error to a status in exactly one function (`status.rs`).

mod convert;
mod iam;
mod kms;
mod status;

use std::sync::Arc;

pub use iam::IdentityGrpc;
pub use kms::KeyManagementGrpc;
pub use status::to_status;

use crate::service::{Credentials, Kms};

pub use lockbox_proto::metadata::{AUTHORIZE, ON_BEHALF_OF, PRINCIPAL, REQUEST_ID};

/// Both gRPC services over one shared [`Kms`].
pub fn services(kms: Arc<Kms>) -> (KeyManagementGrpc, IdentityGrpc) {
    (KeyManagementGrpc::new(kms.clone()), IdentityGrpc::new(kms))
}

/// Answers a request tonic refuses before any handler runs as any other
/// bad input, authenticated and audited: one over the message-size limit
/// (`--max-message-bytes`) `RESOURCE_EXHAUSTED` with
/// `LimitExceededException`, one whose message cannot be decoded
/// `INVALID_ARGUMENT` with `ValidationException`.
pub fn oversize_layer(kms: Arc<Kms>) -> lockbox_proto::oversize::OversizeLayer {
    lockbox_proto::oversize::OversizeLayer::new(Arc::new(move |refused| {
        let kms = kms.clone();
        Box::pin(async move {
            let creds = credentials_from(&refused.metadata, refused.remote_addr);
            let error = match refused.problem {
                lockbox_proto::oversize::Problem::TooLarge => {
                    crate::error::KmsError::LimitExceeded(format!(
                        "the request message is too large ({}); kms-service takes messages up to \
                         --max-message-bytes (KMS_MAX_MESSAGE_BYTES)",
                        refused.detail
                    ))
                }
                lockbox_proto::oversize::Problem::Malformed => {
                    crate::error::KmsError::validation(refused.malformed_message())
                }
            };
            let refused: Result<(), _> = kms.refuse(&creds, &refused.method, error).await;
            // With `x-principal`, as every answer to a forwarded call.
            match answer(&creds, refused) {
                Ok(_) => tonic::Status::internal("a request tonic refused was not refused"),
                Err(status) => status,
            }
        })
    }))
}

/// What the transport knows about a request, before anything is checked.
fn credentials<T>(request: &tonic::Request<T>) -> Credentials {
    credentials_from(request.metadata(), request.remote_addr())
}

fn credentials_from(
    meta: &tonic::metadata::MetadataMap,
    remote_addr: Option<std::net::SocketAddr>,
) -> Credentials {
    let text = |name: &str| {
        meta.get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    // A credential sent twice, or not as visible ASCII, is kept as an
    // empty string, which authentication refuses as malformed, never
    // dropped: a dropped `x-on-behalf-of` would have the call decided for
    // the service itself.
    let credential = |name: &str| {
        let mut values = meta.get_all(name).iter();
        let first = values.next()?;
        if values.next().is_some() {
            return Some(String::new());
        }
        Some(first.to_str().unwrap_or_default().to_string())
    };
    Credentials {
        authorization: credential("authorization"),
        on_behalf_of: credential(ON_BEHALF_OF),
        request_id: text(REQUEST_ID)
            .filter(|id| !id.is_empty() && id.len() <= 128)
            .unwrap_or_else(|| crate::crypto::random_uuid().to_string()),
        source_address: remote_addr.map(|a| a.to_string()),
        forwarded_for: text(lockbox_proto::metadata::FORWARDED_FOR),
        // A value that is not visible ASCII is kept as an empty string,
        // which `x-authorize` parsing refuses, rather than dropped.
        required: meta
            .get_all(AUTHORIZE)
            .iter()
            .map(|v| v.to_str().unwrap_or_default().to_string())
            .collect(),
        principal: std::sync::OnceLock::new(),
    }
}

/// The answer to a call: the result as a response or a status, with the
/// principal it was decided for in `x-principal` when a service made it on
/// behalf of someone. An answer larger than the server sends is refused as
/// `LimitExceededException` naming the setting.
fn reply<T: prost::Message>(
    kms: &crate::service::Kms,
    creds: &Credentials,
    result: Result<T, crate::error::KmsError>,
) -> Result<tonic::Response<T>, tonic::Status> {
    let most = kms.response_limit();
    let result = result.and_then(|message| {
        let size = message.encoded_len();
        if size > most {
            return Err(crate::error::KmsError::LimitExceeded(format!(
                "the answer would be {size} bytes, more than the {most} kms-service sends \
                 (--max-message-bytes / KMS_MAX_MESSAGE_BYTES): raise that setting"
            )));
        }
        Ok(message)
    });
    answer(creds, result)
}

/// [`reply`] without the size check, for answers that are only a status.
fn answer<T>(
    creds: &Credentials,
    result: Result<T, crate::error::KmsError>,
) -> Result<tonic::Response<T>, tonic::Status> {
    let principal = creds
        .on_behalf_of
        .as_ref()
        .and(creds.principal.get())
        .and_then(|p| p.parse::<tonic::metadata::MetadataValue<_>>().ok());
    match result {
        Ok(message) => {
            let mut response = tonic::Response::new(message);
            if let Some(p) = principal {
                response.metadata_mut().insert(PRINCIPAL, p);
            }
            Ok(response)
        }
        Err(e) => {
            let mut status = to_status(&e);
            if let Some(p) = principal {
                status.metadata_mut().insert(PRINCIPAL, p);
            }
            Err(status)
        }
    }
}

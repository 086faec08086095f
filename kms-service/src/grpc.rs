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

/// Metadata a service sets to act for an end caller.
pub const ON_BEHALF_OF: &str = "x-on-behalf-of";
/// Request id metadata, propagated from callers and echoed in audit records.
pub const REQUEST_ID: &str = "x-request-id";

/// Both gRPC services over one shared [`Kms`].
pub fn services(kms: Arc<Kms>) -> (KeyManagementGrpc, IdentityGrpc) {
    (KeyManagementGrpc::new(kms.clone()), IdentityGrpc::new(kms))
}

/// What the transport knows about a request, before anything is checked.
fn credentials<T>(request: &tonic::Request<T>) -> Credentials {
    let meta = request.metadata();
    let text = |name: &str| {
        meta.get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    Credentials {
        authorization: text("authorization"),
        on_behalf_of: text(ON_BEHALF_OF),
        request_id: text(REQUEST_ID)
            .filter(|id| !id.is_empty() && id.len() <= 128)
            .unwrap_or_else(|| crate::crypto::random_uuid().to_string()),
        source_address: request.remote_addr().map(|a| a.to_string()),
    }
}

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

/// The caller's credential, forwarded to kms-service; refused here only when
/// it is missing altogether.
fn caller<T>(request: &tonic::Request<T>) -> Result<CallerCredential, TableError> {
    let meta = request.metadata();
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
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|id| !id.is_empty() && id.len() <= 128)
        .map_or_else(|| random_request_id().to_string(), str::to_string);
    Ok(CallerCredential {
        authorization: zeroize::Zeroizing::new(authorization.to_string()),
        request_id,
    })
}

/// A random (version 4) UUID for a request that brought no id. The random
/// bytes come from the operating system's CSPRNG in blocks kept per thread,
/// rather than with one system call per request; an id is not a secret.
fn random_request_id() -> uuid::Uuid {
    use std::cell::RefCell;
    const IDS: usize = 64;
    thread_local! {
        static POOL: RefCell<([u8; 16 * IDS], usize)> = const { RefCell::new(([0; 16 * IDS], IDS)) };
    }
    POOL.with(|pool| {
        let (bytes, used) = &mut *pool.borrow_mut();
        if *used == IDS {
            if getrandom::fill(bytes).is_err() {
                return uuid::Uuid::new_v4();
            }
            *used = 0;
        }
        let mut id = [0u8; 16];
        id.copy_from_slice(&bytes[16 * *used..16 * (*used + 1)]);
        *used += 1;
        uuid::Builder::from_random_bytes(id).into_uuid()
    })
}

//! The gRPC contract of the product: generated message types, clients and
//! servers for `kms.v1`, `iam.v1` and `table.v1`, and the encoded descriptor set that the
//! services publish through server reflection.
//!
//! The `.proto` files beside this crate are the source of truth; clients in
//! other languages are generated from them (see the README). `transport` holds the TLS and health-check plumbing the
//! services and Rust clients share.

#[allow(clippy::all, missing_docs)]
pub mod kms {
    pub mod v1 {
        tonic::include_proto!("kms.v1");
    }
}

#[allow(clippy::all, missing_docs)]
pub mod iam {
    pub mod v1 {
        tonic::include_proto!("iam.v1");
    }
}

#[allow(clippy::all, missing_docs)]
pub mod table {
    pub mod v1 {
        tonic::include_proto!("table.v1");
    }
}

pub mod codec;
pub mod status_message;
pub mod tcp;
pub mod transport;

/// gRPC metadata names the services and their clients share.
pub mod metadata {
    /// Set by a service to act for an end caller: the caller's own
    /// `authorization` value (`Bearer <token>`).
    pub const ON_BEHALF_OF: &str = "x-on-behalf-of";
    /// Request id, propagated from callers and echoed in audit records.
    pub const REQUEST_ID: &str = "x-request-id";
    /// Set by a service (with [`ON_BEHALF_OF`]) to make a call conditional
    /// on the end caller also being allowed `<action> <resource>`; once
    /// per pair.
    pub const AUTHORIZE: &str = "x-authorize";
    /// Answer metadata of kms-service on a call made on behalf of someone:
    /// the principal it was decided for, on success and on error alike.
    pub const PRINCIPAL: &str = "x-principal";
    /// Set by a service (with [`ON_BEHALF_OF`]): the IP address the end
    /// caller's call came from. kms-service counts failed authentications
    /// of forwarded credentials by it, not by the service's own address.
    pub const FORWARDED_FOR: &str = "x-forwarded-for";
}

#[cfg(feature = "service")]
pub mod backup;
#[cfg(feature = "service")]
pub mod config_file;
#[cfg(feature = "service")]
#[doc(hidden)]
pub mod errors_doc;
#[cfg(feature = "service")]
pub mod health;
#[cfg(feature = "service")]
pub mod job_thread;
#[cfg(feature = "service")]
pub mod oversize;
#[cfg(feature = "service")]
pub mod random;
#[cfg(feature = "service")]
pub mod request_id;
#[cfg(feature = "service")]
pub mod shutdown;
#[cfg(feature = "service")]
pub mod store_lock;

/// Encoded `FileDescriptorSet` of every proto in this crate, for reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/lockbox_descriptor.bin"));

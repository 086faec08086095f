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

pub mod transport;

#[cfg(feature = "service")]
pub mod config_file;
#[cfg(feature = "service")]
pub mod job_thread;
#[cfg(feature = "service")]
pub mod random;
#[cfg(feature = "service")]
pub mod store_lock;

/// Encoded `FileDescriptorSet` of every proto in this crate, for reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/lockbox_descriptor.bin"));

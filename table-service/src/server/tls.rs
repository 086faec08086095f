//! TLS for table-service, shared with kms-service through
//! `lockbox_proto::transport`.

pub use lockbox_proto::transport::*;

//! kms-service: the key management service of the product. It holds customer
//! master keys, principals, policies and grants, performs every
//! cryptographic operation with a CMK, decides every access and audits every
//! call. See `ARCHITECTURE.md` for the map of this crate.

pub mod audit;
pub mod clock;
pub mod config;
pub mod crypto;
pub mod error;
pub mod grants;
pub mod grpc;
pub mod healthcheck;
pub mod identity;
pub mod keys;
pub mod policy;
pub mod server;
pub mod service;
pub mod state;
pub mod store;
pub mod tls;

/// HKDF purpose of the key that signs audit checkpoints (derived from the
/// root key, so `audit verify` can check signatures given the root key).
pub const AUDIT_CHECKPOINT_PURPOSE: &[u8] = b"lockbox kms v1 audit-checkpoint";

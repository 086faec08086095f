//! table-service: a DynamoDB-style item store. Every table is bound to a
//! customer master key in kms-service; every item is sealed with its own data
//! key, which kms-service generates and later unwraps on behalf of the
//! caller, so the key policy decides who reads plaintext.

pub mod cache;
pub mod config;
pub mod envelope;
pub mod error;
pub mod expression;
pub mod grpc;
pub mod kms;
pub mod model;
pub mod server;
pub mod service;
pub mod store;

//! `healthcheck`: one `grpc.health.v1.Health/Check` call (service `""`),
//! for container health checks in images without curl or grpcurl.

pub use lockbox_proto::transport::{HEALTHCHECK_DEADLINE as DEADLINE, healthcheck as check};

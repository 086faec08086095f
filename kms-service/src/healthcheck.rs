//! `healthcheck`: one `grpc.health.v1.Health/Check` call (service `""`),
//! for container health checks in images without curl or grpcurl.

use std::time::Duration;

use tonic::transport::{ClientTlsConfig, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::tls::{error_chain, status_chain};

/// The whole check (connect, handshake, call) must finish within this.
pub const DEADLINE: Duration = Duration::from_secs(3);

/// Calls `Health/Check` at `addr` within `deadline`; `Ok` only for
/// `SERVING`, otherwise the reason.
pub async fn check(
    addr: &str,
    tls: Option<ClientTlsConfig>,
    deadline: Duration,
) -> Result<(), String> {
    let mut endpoint = Endpoint::from_shared(addr.to_string())
        .map_err(|e| format!("{addr:?} is not a valid URL: {e}"))?
        .connect_timeout(deadline)
        .timeout(deadline);
    if let Some(tls) = tls {
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| format!("TLS configuration: {}", error_chain(&e)))?;
    }
    let call = async {
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| format!("cannot connect to {addr}: {}", error_chain(&e)))?;
        let mut request = tonic::Request::new(HealthCheckRequest {
            service: String::new(),
        });
        request.set_timeout(deadline);
        HealthClient::new(channel)
            .check(request)
            .await
            .map(|r| r.into_inner().status)
            .map_err(|s| {
                format!(
                    "Health/Check at {addr} failed ({:?}): {}",
                    s.code(),
                    status_chain(&s)
                )
            })
    };
    let status = tokio::time::timeout(deadline, call)
        .await
        .map_err(|_| format!("no answer from {addr} within {} ms", deadline.as_millis()))??;
    match ServingStatus::try_from(status) {
        Ok(ServingStatus::Serving) => Ok(()),
        Ok(other) => Err(format!("{addr} reports {}", other.as_str_name())),
        Err(_) => Err(format!("{addr} reports unknown status {status}")),
    }
}

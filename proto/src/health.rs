//! A `grpc.health.v1` status that follows the service's state: NOT_SERVING
//! while the service refuses calls until it is restarted (a store or audit
//! log that failed to make something durable) and once it is shutting down,
//! so a load balancer or an orchestrator's probe stops sending it traffic
//! and can restart it, instead of reading SERVING from a process that
//! answers every call UNAVAILABLE.

use std::time::Duration;

use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// How often [`watch`] asks the service.
pub const WATCH_EVERY: Duration = Duration::from_secs(1);

/// Sets `status` for the server as a whole (the empty service name, which
/// `healthcheck` asks about) and for each of `services`.
pub async fn set_all(reporter: &HealthReporter, services: &[&'static str], status: ServingStatus) {
    reporter.set_service_status("", status).await;
    for service in services {
        reporter.set_service_status(*service, status).await;
    }
}

/// Spawns a task that asks `fault` every [`WATCH_EVERY`] why the service
/// cannot serve: NOT_SERVING (and an error in the log, once per fault)
/// while it gives a reason, SERVING again once it gives none. Abort the
/// task when the server stops.
pub fn watch(
    reporter: HealthReporter,
    services: &'static [&'static str],
    fault: impl Fn() -> Option<String> + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    watch_every(reporter, services, WATCH_EVERY, fault)
}

/// The health of a server from start to shutdown: SERVING now (for the
/// server and each of `services`), then as [`watch`] finds `fault`, and
/// NOT_SERVING from the moment `shutdown` completes, all through
/// `reporter`. Returns the shutdown future to give the server in place of
/// `shutdown`, and the handle that stops the watch (abort it when the
/// server has ended, however it ended: the watch holds what `fault` uses).
pub async fn follow(
    reporter: HealthReporter,
    services: &'static [&'static str],
    fault: impl Fn() -> Option<String> + Send + 'static,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> (
    impl std::future::Future<Output = ()> + Send + 'static,
    tokio::task::AbortHandle,
) {
    set_all(&reporter, services, ServingStatus::Serving).await;
    let watching = watch(reporter.clone(), services, fault);
    let stop = watching.abort_handle();
    let shutdown = async move {
        shutdown.await;
        watching.abort();
        set_all(&reporter, services, ServingStatus::NotServing).await;
    };
    (shutdown, stop)
}

fn watch_every(
    reporter: HealthReporter,
    services: &'static [&'static str],
    every: Duration,
    fault: impl Fn() -> Option<String> + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut reported: Option<String> = None;
        loop {
            tick.tick().await;
            let now = fault();
            if now == reported {
                continue;
            }
            match &now {
                Some(reason) => {
                    tracing::error!(%reason, "health: NOT_SERVING until the fault is cleared (a restart)");
                    set_all(&reporter, services, ServingStatus::NotServing).await;
                }
                None => {
                    tracing::info!("health: SERVING again");
                    set_all(&reporter, services, ServingStatus::Serving).await;
                }
            }
            reported = now;
        }
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_server::Health;

    use super::*;

    async fn status(service: &impl Health, name: &str) -> Result<ServingStatus, tonic::Status> {
        let answer = service
            .check(tonic::Request::new(HealthCheckRequest {
                service: name.into(),
            }))
            .await?
            .into_inner();
        Ok(match answer.status {
            1 => ServingStatus::Serving,
            2 => ServingStatus::NotServing,
            _ => ServingStatus::Unknown,
        })
    }

    const EVERY: Duration = Duration::from_millis(20);

    /// NOT_SERVING once shutdown begins, while the server still drains and
    /// answers health checks.
    #[tokio::test]
    async fn a_followed_server_is_not_serving_once_shutdown_begins() {
        let reporter = HealthReporter::new();
        let service = tonic_health::server::HealthService::from_health_reporter(reporter.clone());
        let (begin, began) = tokio::sync::oneshot::channel::<()>();
        let (shutdown, stop) = follow(reporter, &["a.A"], || None, async {
            let _ = began.await;
        })
        .await;
        assert_eq!(
            status(&service, "a.A").await.unwrap(),
            ServingStatus::Serving
        );
        let shutting = tokio::spawn(shutdown);
        tokio::time::sleep(EVERY * 5).await;
        assert_eq!(status(&service, "").await.unwrap(), ServingStatus::Serving);
        begin.send(()).unwrap();
        shutting.await.unwrap();
        for name in ["", "a.A"] {
            assert_eq!(
                status(&service, name).await.unwrap(),
                ServingStatus::NotServing,
                "{name:?}"
            );
        }
        stop.abort();
    }

    #[tokio::test]
    async fn the_status_follows_the_fault() {
        let reporter = HealthReporter::new();
        let service = tonic_health::server::HealthService::from_health_reporter(reporter.clone());
        set_all(&reporter, &["a.A"], ServingStatus::Serving).await;
        let broken = Arc::new(AtomicBool::new(false));
        let task = {
            let broken = broken.clone();
            watch_every(reporter, &["a.A"], EVERY, move || {
                broken
                    .load(Ordering::SeqCst)
                    .then(|| "the disk is full".to_string())
            })
        };
        tokio::time::sleep(EVERY * 5).await;
        assert_eq!(status(&service, "").await.unwrap(), ServingStatus::Serving);
        broken.store(true, Ordering::SeqCst);
        tokio::time::sleep(EVERY * 5).await;
        for name in ["", "a.A"] {
            assert_eq!(
                status(&service, name).await.unwrap(),
                ServingStatus::NotServing,
                "{name:?}"
            );
        }
        broken.store(false, Ordering::SeqCst);
        tokio::time::sleep(EVERY * 5).await;
        assert_eq!(
            status(&service, "a.A").await.unwrap(),
            ServingStatus::Serving
        );
        task.abort();
    }
}

//! Graceful shutdown with a bound: the first SIGINT or SIGTERM stops
//! accepting and lets the calls in flight finish; a connection still open
//! [`DRAIN_DEADLINE`] later (a client that never finishes its request, a
//! peer gone silent) is closed, so the service still closes its stores and
//! audit log rather than wait for SIGKILL; a second signal exits at once.

use std::future::Future;
use std::time::Duration;

/// How long in-flight calls get after shutdown begins. Below the Compose
/// deployment's `stop_grace_period` (20 s), so the stores and the audit log
/// are closed before a SIGKILL could come.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

/// Exit code after a second signal (128 + SIGINT, as shells report it).
pub const FORCED_EXIT: i32 = 130;

/// Completes at the first SIGINT (Ctrl-C) or SIGTERM; from then on, another
/// one exits the process at once with [`FORCED_EXIT`]. (What was
/// acknowledged is durable already; what a forced exit cuts short is what
/// `kill -9` would.)
pub async fn signal(service: &'static str) {
    next_signal().await;
    tracing::info!(
        "shutting down: finishing in-flight requests (at most {} s; a second signal exits at once)",
        DRAIN_DEADLINE.as_secs()
    );
    tokio::spawn(async move {
        next_signal().await;
        tracing::warn!("second signal: {service} exits without finishing in-flight requests");
        std::process::exit(FORCED_EXIT);
    });
}

async fn next_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let term = async {
            match term.as_mut() {
                Some(t) => {
                    t.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            () = term => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Runs `serving` (a server that stops once `shutdown` completes) to the
/// end, but no longer than `deadline` after `shutdown` completed: then it
/// is dropped, which closes its connections, and `None` says so.
pub async fn bounded<T>(
    serving: impl FnOnce(std::pin::Pin<Box<dyn Future<Output = ()> + Send>>) -> T,
    shutdown: impl Future<Output = ()> + Send + 'static,
    deadline: Duration,
) -> Option<T::Output>
where
    T: Future,
{
    let (began, began_rx) = tokio::sync::oneshot::channel::<()>();
    let signal = Box::pin(async move {
        shutdown.await;
        let _ = began.send(());
    });
    let serving = serving(signal);
    let expired = async {
        match began_rx.await {
            Ok(()) => tokio::time::sleep(deadline).await,
            // The server ended before shutdown began.
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        output = serving => Some(output),
        () = expired => {
            tracing::warn!(
                "connections still open {} s after shutdown began; closing them",
                deadline.as_secs_f32()
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    #[tokio::test]
    async fn a_server_that_stops_in_time_finishes() {
        let out = bounded(
            |stop| async move {
                stop.await;
                "stopped"
            },
            async {},
            Duration::from_secs(60),
        )
        .await;
        assert_eq!(out, Some("stopped"));
    }

    #[tokio::test]
    async fn a_server_that_never_stops_is_dropped_after_the_deadline() {
        let started = Instant::now();
        let out = bounded(
            |stop| async move {
                stop.await;
                // A connection that never closes.
                std::future::pending::<()>().await;
            },
            tokio::time::sleep(Duration::from_millis(50)),
            Duration::from_millis(100),
        )
        .await;
        assert_eq!(out, None);
        assert!(started.elapsed() >= Duration::from_millis(150));
    }

    #[tokio::test]
    async fn no_deadline_runs_before_shutdown_begins() {
        let out = tokio::time::timeout(
            Duration::from_millis(300),
            bounded(
                |_stop| std::future::pending::<()>(),
                std::future::pending::<()>(),
                Duration::from_millis(10),
            ),
        )
        .await;
        assert!(out.is_err(), "a server not asked to stop keeps serving");
    }
}

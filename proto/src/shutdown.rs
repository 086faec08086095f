//! Graceful shutdown with a bound: the first SIGINT or SIGTERM stops
//! accepting and lets the calls in flight finish; a connection still open
//! [`DRAIN_DEADLINE`] later (a client that never finishes its request, a
//! peer gone silent) is closed, so the service still closes its stores and
//! audit log rather than wait for SIGKILL; a second signal exits at once.

use std::future::Future;
use std::time::Duration;

/// How long in-flight calls get after shutdown begins. With
/// [`CLOSE_GRACE`] and table-service's wait for writes whose callers went
/// away, below the Compose deployment's `stop_grace_period` (30 s), so the
/// stores and the audit log are closed before a SIGKILL could come.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

/// Exit code after a second signal (128 + SIGINT, as shells report it).
pub const FORCED_EXIT: i32 = 130;

/// The shutdown signals of a service, listened to from the moment
/// [`Shutdown::listen`] is called (so none is missed however late a server
/// starts to wait for them): the first SIGINT (Ctrl-C) or SIGTERM asks
/// for shutdown; another one exits the process at once with
/// [`FORCED_EXIT`]. (What was acknowledged is durable already; what a
/// forced exit cuts short is what `kill -9` would.)
#[derive(Clone)]
pub struct Shutdown(tokio::sync::watch::Receiver<bool>);

impl Shutdown {
    /// Starts listening. Call it first thing, inside the runtime.
    pub fn listen(service: &'static str) -> Shutdown {
        Self::listen_then(service, || std::process::exit(FORCED_EXIT))
    }

    /// [`Shutdown::listen`], calling `second` at the second signal.
    pub fn listen_then(service: &'static str, second: impl FnOnce() + Send + 'static) -> Shutdown {
        let (asked, requested) = tokio::sync::watch::channel(false);
        let mut signals = Signals::install();
        tokio::spawn(async move {
            signals.next().await;
            tracing::info!(
                "shutting down: finishing in-flight requests (at most {} s; a second signal exits at once)",
                DRAIN_DEADLINE.as_secs()
            );
            let _ = asked.send(true);
            signals.next().await;
            tracing::warn!("second signal: {service} exits without finishing in-flight requests");
            second();
        });
        Shutdown(requested)
    }

    /// Completes once shutdown is asked for (at once if it was already).
    pub fn requested(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut requested = self.0.clone();
        async move {
            if requested.wait_for(|asked| *asked).await.is_err() {
                // The listener is gone (the runtime is ending): never.
                std::future::pending::<()>().await;
            }
        }
    }
}

/// SIGINT and SIGTERM streams, made once, so a signal between two waits
/// is still seen.
struct Signals {
    #[cfg(unix)]
    interrupt: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    terminate: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn install() -> Signals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let make = |kind: SignalKind, name: &str| {
                signal(kind)
                    .map_err(|e| tracing::warn!(error = %e, "cannot listen for {name}"))
                    .ok()
            };
            Signals {
                interrupt: make(SignalKind::interrupt(), "SIGINT"),
                terminate: make(SignalKind::terminate(), "SIGTERM"),
            }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    async fn next(&mut self) {
        #[cfg(unix)]
        {
            async fn one(signal: &mut Option<tokio::signal::unix::Signal>) {
                match signal {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending().await,
                }
            }
            tokio::select! {
                () = one(&mut self.interrupt) => {}
                () = one(&mut self.terminate) => {}
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// How long, after the drain deadline closed the connections left, the
/// server gets to notice and end.
pub const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Runs a server to the end, but no longer than `deadline` after `shutdown`
/// completed. `serving` gets the future that tells the server to stop
/// (for `serve_with_incoming_shutdown`) and a token that ends every
/// connection once cancelled (for [`crate::tcp::closable`]). When the
/// deadline passes, the token is cancelled, so the connections still open
/// fail and close (their tasks let go of what they hold), and the server
/// then ends; `None` says it did not end even then.
pub async fn bounded<T>(
    serving: impl FnOnce(
        std::pin::Pin<Box<dyn Future<Output = ()> + Send>>,
        tokio_util::sync::CancellationToken,
    ) -> T,
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
    let closer = tokio_util::sync::CancellationToken::new();
    let mut serving = std::pin::pin!(serving(signal, closer.clone()));
    let expired = async {
        match began_rx.await {
            Ok(()) => tokio::time::sleep(deadline).await,
            // The server ended before shutdown began.
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        output = &mut serving => return Some(output),
        () = expired => {}
    }
    tracing::warn!(
        "connections still open {} s after shutdown began; closing them",
        deadline.as_secs_f32()
    );
    closer.cancel();
    match tokio::time::timeout(CLOSE_GRACE, &mut serving).await {
        Ok(output) => Some(output),
        Err(_) => {
            tracing::warn!("the server did not end once its connections were closed; leaving it");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    /// Signals sent to this test's own process (nextest runs each test in
    /// a process of its own; the handlers stay installed either way).
    #[cfg(unix)]
    #[tokio::test]
    async fn the_first_signal_asks_for_shutdown_and_a_second_forces_it() {
        let forced = std::sync::Arc::new(tokio::sync::Notify::new());
        let shutdown = {
            let forced = forced.clone();
            Shutdown::listen_then("test", move || forced.notify_one())
        };
        let requested = shutdown.requested();
        let kill = || {
            let status = std::process::Command::new("sh")
                .args(["-c", &format!("kill -s TERM {}", std::process::id())])
                .status()
                .expect("kill runs");
            assert!(status.success());
        };
        // Sent before anyone waits: still seen. (`kill` of the shell.)
        kill();
        tokio::time::timeout(Duration::from_secs(5), requested)
            .await
            .expect("shutdown asked for");
        tokio::time::timeout(Duration::from_secs(1), shutdown.requested())
            .await
            .expect("a late waiter sees it at once");
        kill();
        tokio::time::timeout(Duration::from_secs(5), forced.notified())
            .await
            .expect("the second signal forces the exit");
    }

    #[tokio::test]
    async fn a_server_that_stops_in_time_finishes() {
        let out = bounded(
            |stop, _| async move {
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
            |stop, closer| async move {
                stop.await;
                // A connection that closes only when it is closed.
                closer.cancelled().await;
            },
            tokio::time::sleep(Duration::from_millis(50)),
            Duration::from_millis(100),
        )
        .await;
        // Closed at the deadline, the server ends.
        assert_eq!(out, Some(()));
        assert!(started.elapsed() >= Duration::from_millis(150));
    }

    #[tokio::test]
    async fn a_server_that_ignores_the_close_is_left() {
        let out = bounded(
            |stop, _| async move {
                stop.await;
                std::future::pending::<()>().await;
            },
            async {},
            Duration::from_millis(10),
        )
        .await;
        assert_eq!(out, None);
    }

    #[tokio::test]
    async fn no_deadline_runs_before_shutdown_begins() {
        let out = tokio::time::timeout(
            Duration::from_millis(300),
            bounded(
                |_stop, _| std::future::pending::<()>(),
                std::future::pending::<()>(),
                Duration::from_millis(10),
            ),
        )
        .await;
        assert!(out.is_err(), "a server not asked to stop keeps serving");
    }
}

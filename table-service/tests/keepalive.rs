//! table-service's connection to kms-service is kept alive with HTTP/2
//! pings: when it goes silent (a network black hole: packets dropped, the
//! connection never closed), the channel gives it up and connects anew, so
//! calls work again within seconds instead of timing out on the dead
//! connection until the kernel gives up.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kms_service::config::ServeConfig;
use kms_service::server::RunningServer;
use table_service::kms::KmsClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use zeroize::Zeroizing;

/// A TCP proxy whose connections made before [`Proxy::black_hole`] stop
/// carrying bytes (both ways) while staying open; later ones work.
struct Proxy {
    addr: std::net::SocketAddr,
    generation: Arc<AtomicU64>,
}

impl Proxy {
    async fn start(upstream: std::net::SocketAddr) -> Proxy {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let generation = Arc::new(AtomicU64::new(0));
        let current = generation.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let server = TcpStream::connect(upstream).await.unwrap();
                let born = current.load(Ordering::SeqCst);
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pipe(cr, sw, current.clone(), born));
                tokio::spawn(pipe(sr, cw, current.clone(), born));
            }
        });
        Proxy { addr, generation }
    }

    fn black_hole(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    generation: Arc<AtomicU64>,
    born: u64,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if generation.load(Ordering::SeqCst) != born {
            // Dropped on the floor; both sockets stay open (the halves
            // are held by the pending future).
            std::future::pending::<()>().await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_gone_silent_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let kms = RunningServer::start(ServeConfig::for_data_dir(dir.path().join("kms")))
        .await
        .unwrap();
    let token = std::fs::read_to_string(kms.admin_token_file.as_ref().unwrap()).unwrap();
    let proxy = Proxy::start(kms.addr).await;
    let client = KmsClient::with_keepalive(
        &format!("http://{}", proxy.addr),
        Zeroizing::new(token.trim().to_string()),
        Duration::from_millis(500),
        None,
        (Duration::from_millis(200), Duration::from_millis(300)),
    )
    .unwrap();
    // The first call dials (and may meet a busy machine): retried.
    let ready = Instant::now() + Duration::from_secs(10);
    loop {
        match client.service_identity().await {
            Ok(principal) => break assert_eq!(principal, "user/admin"),
            Err(status) => assert!(Instant::now() < ready, "{status:?}"),
        }
    }

    proxy.black_hole();
    // Calls on the silent connection time out; once a ping goes
    // unanswered, the channel connects anew through the proxy.
    let silent = Instant::now();
    let deadline = silent + Duration::from_secs(10);
    let mut failed = 0;
    loop {
        match client.service_identity().await {
            Ok(principal) => {
                assert_eq!(principal, "user/admin");
                break;
            }
            Err(status) => {
                failed += 1;
                assert!(
                    Instant::now() < deadline,
                    "still failing 10 s after the connection went silent: {status:?}"
                );
            }
        }
    }
    assert!(failed >= 1, "the black hole never held a call up");
    eprintln!(
        "calls work again {:?} after the connection went silent",
        silent.elapsed()
    );
    // The silent connection is still open at kms-service: its shutdown
    // closes it once the drain deadline has passed, instead of waiting.
    let service = kms.kms.clone();
    let stopping = Instant::now();
    kms.stop().await.unwrap();
    let took = stopping.elapsed();
    assert!(
        took < lockbox_proto::shutdown::DRAIN_DEADLINE + Duration::from_secs(5),
        "kms-service took {took:?} to stop"
    );
    // ... and the connection's task, closed, let go of the service (and so
    // of its store).
    let released = Instant::now() + Duration::from_secs(2);
    while Arc::strong_count(&service) > 1 {
        assert!(
            Instant::now() < released,
            "{} handles on the service remain after the server stopped",
            Arc::strong_count(&service) - 1
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

//! TCP connections for the services' HTTP/2 traffic that let h2 coalesce
//! small messages into one write.
//!
//! h2 sends a DATA frame whose payload is over 256 bytes by chaining it
//! behind its write buffer (no copy), when the connection can write
//! vectored. A chained frame must be written before any further frame is
//! encoded, so every such message costs a `writev` of its own: a round of
//! 64 answers of 300 bytes is 64 system calls, and 64 TCP segments for the
//! peer to wake up for. When the connection says it cannot write vectored,
//! h2 copies payloads of up to 1 KiB into its 16 KiB buffer instead and
//! writes the whole round at once. Copying a few hundred bytes costs far
//! less than a system call, so [`CoalescingTcp`] says exactly that; larger
//! payloads are still chained, so bulk data is not copied.
//!
//! The price: a payload over 1 KiB, still chained, takes two writes (the
//! buffer, then the payload) instead of one `writev`. Under TLS this stream
//! changes nothing: rustls's stream above it says it writes vectored.
//!
//! [`incoming`] serves connections this way, with TCP_NODELAY.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::transport::server::{Connected, TcpConnectInfo, TcpIncoming};

/// A TCP stream that does not write vectored (see the module docs).
pub struct CoalescingTcp(TcpStream, Option<Pin<Box<WaitForCancellationFutureOwned>>>);

impl std::fmt::Debug for CoalescingTcp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("CoalescingTcp").field(&self.0).finish()
    }
}

impl CoalescingTcp {
    /// Once the connection's token is cancelled (a shutdown's drain
    /// deadline passed), every read and write fails, which ends the
    /// connection; polling the token also wakes a read waiting for bytes.
    fn closed(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        let closer = self.1.as_mut()?;
        closer.as_mut().poll(cx).is_ready().then(|| {
            io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the server is shutting down and its drain deadline has passed",
            )
        })
    }
}

impl AsyncRead for CoalescingTcp {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(e) = self.closed(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for CoalescingTcp {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Some(e) = self.closed(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(e) = self.closed(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    // `is_write_vectored` keeps its default, false: that is the point.
}

impl Connected for CoalescingTcp {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.0.connect_info()
    }
}

/// The connections a server accepts on `listener`, with TCP_NODELAY (without
/// it, small answers wait for the peer's delayed ACK), as [`CoalescingTcp`].
pub fn incoming(listener: TcpListener) -> impl Stream<Item = io::Result<CoalescingTcp>> {
    TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .map(|accepted| accepted.map(|tcp| CoalescingTcp(tcp, None)))
}

/// [`incoming`], whose connections all end (their reads and writes fail)
/// once `closer` is cancelled: how a shutdown closes the connections left
/// when its drain deadline passes (see [`crate::shutdown::bounded`]).
pub fn closable(
    listener: TcpListener,
    closer: CancellationToken,
) -> impl Stream<Item = io::Result<CoalescingTcp>> {
    TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .map(move |accepted| {
            // A token of its own per connection (a child of `closer`): its
            // polls lock nothing other connections use.
            accepted.map(|tcp| {
                CoalescingTcp(tcp, Some(Box::pin(closer.child_token().cancelled_owned())))
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client connected to a loopback listener, and the server side of
    /// that connection as `accept` serves it.
    async fn connected<S>(accept: impl FnOnce(TcpListener) -> S) -> (TcpStream, CoalescingTcp)
    where
        S: Stream<Item = io::Result<CoalescingTcp>>,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let mut accepted = Box::pin(accept(listener));
        let client = TcpStream::connect(addr).await.expect("connect");
        let server_side = accepted
            .next()
            .await
            .expect("a connection")
            .expect("accepted");
        (client, server_side)
    }

    #[tokio::test]
    async fn accepted_connections_are_unvectored_nodelay_and_know_their_peer() {
        let (client, server_side) = connected(incoming).await;
        let addr = client.peer_addr().expect("address");
        // Vectored writes would let h2 chain every message over 256 bytes
        // into a write of its own.
        assert!(!server_side.is_write_vectored());
        assert!(server_side.0.nodelay().expect("nodelay"));
        let info = server_side.connect_info();
        assert_eq!(
            info.remote_addr,
            Some(client.local_addr().expect("client address"))
        );
        assert_eq!(info.local_addr, Some(addr));
    }

    #[tokio::test]
    async fn a_closed_connection_fails_even_a_waiting_read() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let closer = CancellationToken::new();
        let (mut client, mut server_side) =
            connected(|listener| closable(listener, closer.clone())).await;
        client.write_all(b"x").await.unwrap();
        let mut one = [0u8; 1];
        server_side
            .read_exact(&mut one)
            .await
            .expect("open: bytes pass");
        // The client sends nothing more: the read waits until the close.
        let waiting = tokio::spawn(async move {
            let mut buf = [0u8; 8];
            (server_side.read(&mut buf).await, server_side)
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        closer.cancel();
        let (read, mut server_side) =
            tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
                .await
                .expect("the waiting read ends")
                .unwrap();
        assert_eq!(read.unwrap_err().kind(), io::ErrorKind::ConnectionAborted);
        assert!(server_side.write_all(b"late").await.is_err());
    }

    #[tokio::test]
    async fn bytes_pass_both_ways_unchanged() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut client, mut server_side) = connected(incoming).await;
        let message: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
        client.write_all(&message).await.expect("client write");
        let mut got = vec![0; message.len()];
        server_side.read_exact(&mut got).await.expect("server read");
        assert_eq!(got, message);
        server_side
            .write_all(b"answer")
            .await
            .expect("server write");
        server_side.flush().await.expect("flush");
        server_side.shutdown().await.expect("shutdown");
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.expect("client read");
        assert_eq!(answer, b"answer");
    }
}

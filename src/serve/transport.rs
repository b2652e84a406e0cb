//! How the gRPC listeners hand connections to tonic: with TCP_NODELAY, and with vectored writes
//! turned off so that h2 batches small answers into one write.
//!
//! Both fix a cost the benchmark found (bench/NOTES.md, findings 1 and 9):
//!
//! * tonic applies its own `tcp_nodelay` only to listeners it binds, and without it Nagle's
//!   algorithm holds small Check answers back by tens of milliseconds.
//! * h2 copies a DATA frame into its write buffer only when the payload is under 256 bytes on a
//!   connection that writes vectored (1 KiB otherwise); a larger one is "chained" and ends the
//!   batch, so every frame after it waits for a write of its own. An OK `CheckResponse` with a
//!   preview token and an upstream is about 300 bytes: over a vectored socket every answer
//!   cost its own `writev`. Told the socket does not write vectored, h2 copies answers of up to
//!   1 KiB and one write carries every answer that is ready.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::{Stream, TryStreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tonic::transport::server::{Connected, TcpConnectInfo, TcpIncoming};

/// The connections of a bound listener, for `serve_with_incoming*` (see the module docs).
pub fn incoming(listener: TcpListener) -> impl Stream<Item = io::Result<Unvectored>> {
    TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .map_ok(Unvectored)
}

/// A TCP connection that reports `is_write_vectored() == false` (see the module docs); reads and
/// writes go straight to the socket.
#[derive(Debug)]
pub struct Unvectored(TcpStream);

impl AsyncRead for Unvectored {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Unvectored {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        // Callers that check `is_write_vectored` (h2 does) never get here with more than one
        // buffer worth writing; others still get a correct, if partial, write.
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        false
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl Connected for Unvectored {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.0.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn connections_are_unvectored_nodelay_and_pass_bytes_both_ways() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut connections = Box::pin(incoming(listener));
        let mut client = TcpStream::connect(addr).await.unwrap();
        let mut server = connections.next().await.unwrap().unwrap();
        assert!(!server.is_write_vectored());
        assert!(server.0.nodelay().unwrap());
        assert_eq!(
            server.connect_info().remote_addr(),
            client.local_addr().ok()
        );

        client.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
        server.write_all(b"pong").await.unwrap();
        server.shutdown().await.unwrap();
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.unwrap();
        assert_eq!(answer, b"pong");
    }
}

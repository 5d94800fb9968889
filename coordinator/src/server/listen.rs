//! Listeners of the coordinator's ports: bound with `SO_REUSEADDR`, and their connections
//! accepted with `TCP_NODELAY`, at most so many at once ([`capped`]).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A listener on `addr` with `SO_REUSEADDR`, so that a restarted coordinator can take its port
/// back at once (connections of the killed one may still be in TIME_WAIT).
pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// The connections `listener` accepts, each with `TCP_NODELAY` set. tonic sets it only on
/// listeners it binds itself; without it a reply's trailers, written after its body, wait for
/// the client's delayed ACK (about 40 ms on Linux) and every unary call takes that long.
pub fn no_delay(
    listener: TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> + Send + 'static {
    use tokio_stream::StreamExt;
    tokio_stream::wrappers::TcpListenerStream::new(listener).map(|accepted| {
        let stream = accepted?;
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set on an accepted connection");
        }
        Ok(stream)
    })
}

/// An accepted connection that holds one of its port's connection slots until it closes.
#[derive(Debug)]
pub struct Capped {
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
}

impl AsyncRead for Capped {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Capped {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

impl tonic::transport::server::Connected for Capped {
    type ConnectInfo = <TcpStream as tonic::transport::server::Connected>::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

/// The connections `listener` accepts ([`no_delay`]), at most `max` open at once: one more is
/// closed as soon as it is accepted (and logged), so that a client that opens connections
/// without end cannot take the port from the others, nor its memory.
pub fn capped(
    listener: TcpListener,
    max: usize,
) -> impl tokio_stream::Stream<Item = std::io::Result<Capped>> + Send + 'static {
    use tokio_stream::StreamExt;
    let slots = Arc::new(Semaphore::new(max));
    no_delay(listener).filter_map(move |accepted| match accepted {
        Err(e) => Some(Err(e)),
        Ok(stream) => match slots.clone().try_acquire_owned() {
            Ok(slot) => Some(Ok(Capped { stream, _slot: slot })),
            Err(_) => {
                tracing::warn!(
                    peer = ?stream.peer_addr().ok(),
                    max,
                    "a connection over the port's limit was closed"
                );
                None
            }
        },
    })
}

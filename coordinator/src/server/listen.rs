//! Listeners of the coordinator's ports: bound with `SO_REUSEADDR`, and their connections
//! accepted with `TCP_NODELAY`.

use tokio::net::TcpListener;

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

//! One TCP connect to a backend, bounded by the pool's `connect_timeout`.

use std::net::SocketAddr;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::Interest;
use tokio::net::TcpStream;

use crate::Reason;

pub(super) async fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, Reason> {
    match tokio::time::timeout(timeout, connect_nonblocking(addr)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) => Err(Reason::from_connect_io(&e)),
        Err(_) => Err(Reason::Timeout),
    }
}

/// A non-blocking connect whose outcome is read from the readiness flags: a
/// failed connect reports error or hang-up readiness, so the pending socket
/// error is fetched (getsockopt SO_ERROR) only on failure, not on every success.
async fn connect_nonblocking(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking().cloexec(),
        Some(Protocol::TCP),
    )?;
    // Small writes leave at once; we relay, we don't coalesce.
    socket.set_tcp_nodelay(true)?;
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INPROGRESS.raw_os_error()) => {}
        Err(e) => return Err(e),
    }
    let stream = TcpStream::from_std(std::net::TcpStream::from(socket))?;
    let ready = stream.ready(Interest::WRITABLE | Interest::ERROR).await?;
    if ready.is_error() || ready.is_write_closed() {
        return Err(match stream.take_error()? {
            Some(e) => e,
            None => std::io::ErrorKind::ConnectionReset.into(),
        });
    }
    Ok(stream)
}

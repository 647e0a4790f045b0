//! One TCP connect to a backend, bounded by the pool's `connect_timeout`.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::Sleep;

use crate::Reason;

pin_project! {
    /// A non-blocking connect and its deadline, as one small future: it waits
    /// for the socket to become writable, which it does when the connect
    /// completes or fails.
    pub(super) struct Connect {
        stream: Option<io::Result<TcpStream>>,
        #[pin]
        deadline: Sleep,
    }
}

/// Starts a connect to `addr` that fails with `Timeout` after `timeout`.
pub(super) fn connect(addr: SocketAddr, timeout: Duration) -> Connect {
    Connect {
        stream: Some(start(addr)),
        deadline: tokio::time::sleep(timeout),
    }
}

/// Creates the socket and starts connecting, without waiting.
fn start(addr: SocketAddr) -> io::Result<TcpStream> {
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
    TcpStream::from_std(std::net::TcpStream::from(socket))
}

impl Future for Connect {
    type Output = Result<TcpStream, Reason>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let stream = match this.stream {
            Some(Ok(stream)) => stream,
            Some(Err(e)) => return Poll::Ready(Err(Reason::from_connect_io(e))),
            None => return Poll::Ready(Err(Reason::ConnectOther)),
        };
        match stream.poll_write_ready(cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => return Poll::Ready(Err(Reason::from_connect_io(&e))),
            Poll::Pending => {
                ready!(this.deadline.poll(cx));
                return Poll::Ready(Err(Reason::Timeout));
            }
        }
        // Writable: connected, or failed. A failed connect also raised error
        // readiness, so the pending socket error is fetched (getsockopt
        // SO_ERROR) only then, not on every success.
        let failed = stream.try_io(Interest::ERROR, || Ok(())).is_ok();
        let result = match this.stream.take() {
            Some(Ok(stream)) if !failed => Ok(stream),
            Some(Ok(stream)) => Err(match stream.take_error() {
                Ok(Some(e)) | Err(e) => Reason::from_connect_io(&e),
                Ok(None) => Reason::Reset,
            }),
            _ => Err(Reason::ConnectOther),
        };
        Poll::Ready(result)
    }
}

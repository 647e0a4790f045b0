//! Listeners: binding sockets and the accept loop.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use arc_swap::ArcSwap;
use ipnet::IpNet;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use weir_wire::tls::ClientHello;

use crate::pool::Pool;
use crate::stats::{ListenerStats, RejectReason, RouteStats};

/// Pending connections the kernel may queue per socket (capped by somaxconn).
const BACKLOG: i32 = 4096;

/// A route as the data plane sees it.
#[derive(Debug)]
pub struct Route {
    pub name: String,
    pub matcher: weir_config::Match,
    pub send_proxy_protocol: weir_config::ProxyVersion,
    /// TLS to the backend (`backend_tls`).
    pub(crate) backend_tls: Option<BackendTls>,
    pub pool: Arc<Pool>,
    pub stats: Arc<RouteStats>,
}

/// A route's TLS client towards its backends, built once at start.
#[derive(Clone)]
pub(crate) struct BackendTls {
    pub(crate) connector: tokio_rustls::TlsConnector,
    /// SNI and verified name; `None`: the backend's IP.
    pub(crate) sni: Option<rustls::pki_types::ServerName<'static>>,
}

impl std::fmt::Debug for BackendTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendTls")
            .field("sni", &self.sni)
            .finish_non_exhaustive()
    }
}

impl Route {
    /// Source, SNI and ALPN conditions, all of which must hold. `hello` is the
    /// client's ClientHello, or `None` when it sent none (not TLS) or none was
    /// needed.
    pub(crate) fn matches(&self, ip: IpAddr, hello: Option<&ClientHello<'_>>) -> bool {
        // IPv4 clients on a dual-stack socket show up as ::ffff:a.b.c.d.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let m = &self.matcher;
        if !m.source.is_empty() && !m.source.iter().any(|net: &IpNet| net.contains(&ip)) {
            return false;
        }
        if !m.needs_client_hello() {
            return true;
        }
        let Some(hello) = hello else {
            return false;
        };
        let sni_ok =
            m.sni.is_empty() || hello.sni.as_deref().is_some_and(|name| m.sni_matches(name));
        let alpn_ok = m.alpn.is_empty() || m.alpn.iter().any(|a| hello.alpn.contains(a.as_bytes()));
        sni_ok && alpn_ok
    }
}

/// A listener: its settings, routes, counters and the tokens that stop it.
#[derive(Debug)]
pub struct Listener {
    pub name: String,
    pub max_connections: u32,
    pub idle_timeout: Duration,
    pub shutdown_timeout: Duration,
    pub handshake_timeout: Duration,
    pub routes: Vec<Route>,
    /// Some route matches on SNI or ALPN: peek at the ClientHello first.
    pub(crate) needs_hello: bool,
    /// Accepting the PROXY protocol, from these sources.
    pub(crate) proxy_accept: Option<weir_config::ProxyAccept>,
    pub stats: Arc<ListenerStats>,
    pub(crate) zero_copy: bool,
    pub(crate) access_log: bool,
    /// Cancelled when the listener's connections must be closed (end of the
    /// shutdown grace period).
    pub(crate) kill: CancellationToken,
}

impl Listener {
    pub(crate) fn route_for(&self, ip: IpAddr, hello: Option<&ClientHello<'_>>) -> Option<&Route> {
        self.routes.iter().find(|r| r.matches(ip, hello))
    }
}

/// Creates a listening socket with SO_REUSEADDR and SO_REUSEPORT (so several
/// processes can share a port during an upgrade) and IPV6_V6ONLY on IPv6
/// (so `[::]:P` and `0.0.0.0:P` can both be bound).
pub fn bind(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    // Accepted sockets inherit TCP_NODELAY from the listening socket on Linux,
    // which saves one setsockopt per connection.
    socket.set_tcp_nodelay(true)?;
    socket.set_nonblocking(true)?;
    socket.set_cloexec(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// Accepts until `stop` is cancelled, spawning one task per connection on
/// `tracker`. Each connection gets the listener in `slot` when it arrives (a
/// reload stores a new one there) and keeps it for its whole life.
pub(crate) async fn accept_loop(
    slot: Arc<ArcSwap<Listener>>,
    socket: TcpListener,
    stop: CancellationToken,
    closed: CancellationToken,
    tracker: TaskTracker,
) {
    // Tells whoever stopped us that the socket is closed (on every return).
    let _closed = closed.drop_guard();
    // One waiter for the whole loop, not one registration per accepted connection.
    let stopped = stop.cancelled();
    tokio::pin!(stopped);
    loop {
        let accepted = tokio::select! {
            biased;
            () = &mut stopped => break,
            r = socket.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                if is_resource_exhaustion(&e) {
                    // Out of descriptors or memory: accepting again at once would
                    // spin; pending clients wait in the backlog meanwhile.
                    tracing::warn!(listener = %slot.load().name, error = %e, "accept failed; pausing 50ms");
                    tokio::select! {
                        () = &mut stopped => break,
                        () = tokio::time::sleep(Duration::from_millis(50)) => {}
                    }
                }
                continue;
            }
        };
        admit(slot.load_full(), stream, peer, &tracker);
    }
    // Connections the kernel has completed but nobody accepted yet would be
    // reset when the socket closes: take them first. This narrows the gap of
    // a zero-downtime upgrade to the instant of close (which the kernel closes
    // too with net.ipv4.tcp_migrate_req = 1).
    let Ok(socket) = socket.into_std() else {
        return;
    };
    let listener = slot.load_full();
    while let Ok((stream, peer)) = socket.accept() {
        let stream = stream
            .set_nonblocking(true)
            .and_then(|()| tokio::net::TcpStream::from_std(stream));
        if let Ok(stream) = stream {
            admit(Arc::clone(&listener), stream, peer, &tracker);
        }
    }
}

/// Counts an accepted connection and starts handling it, or refuses it when
/// the listener is at `max_connections`.
fn admit(
    listener: Arc<Listener>,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    tracker: &TaskTracker,
) {
    let stats = &listener.stats;
    crate::stats::count(&stats.connections_total, 1);
    let active = stats.connections_active.fetch_add(1, Relaxed);
    if active >= i64::from(listener.max_connections) {
        stats.connections_active.fetch_sub(1, Relaxed);
        stats.reject(RejectReason::MaxConnections);
        reject_now(stream);
        crate::conn::log_rejected(&listener, peer, RejectReason::MaxConnections);
        return;
    }
    tracker.spawn(crate::conn::handle(listener, stream, peer));
}

/// Closes a refused connection at once with a reset, so the client learns
/// immediately and no FIN_WAIT/TIME_WAIT state is left behind on our side.
fn reject_now(stream: tokio::net::TcpStream) {
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}

fn is_resource_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc_errno) if libc_errno == rustix::io::Errno::MFILE.raw_os_error()
            || libc_errno == rustix::io::Errno::NFILE.raw_os_error()
            || libc_errno == rustix::io::Errno::NOBUFS.raw_os_error()
            || libc_errno == rustix::io::Errno::NOMEM.raw_os_error()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_sockets_inherit_nodelay() {
        let listener = bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let _client = std::net::TcpStream::connect(addr).expect("connect");
        listener.set_nonblocking(false).expect("blocking");
        let (accepted, _) = listener.accept().expect("accept");
        assert!(accepted.nodelay().expect("nodelay"));
    }
}

//! The life of one accepted connection: route, pick a backend, connect (retrying
//! other backends on failure), relay, and write one access-log line.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::Instant;
use weir_balance::Request;
use weir_config::{HashKey, ProxyVersion};

use crate::hello;
use crate::listener::{Listener, Route};
use crate::pool::{Eviction, Pool};
use crate::proxy_in;
use crate::relay::{self, End};
use crate::stats::{self, ActiveGuard, ConnectError, RejectReason};

/// How a connection ended, for the access log: either a relay end or a rejection.
#[derive(Debug, Clone, Copy)]
enum Termination {
    Relay(End),
    Rejected(RejectReason),
    /// Every connect attempt failed; the last error.
    ConnectFailed(ConnectError),
}

impl Termination {
    fn as_str(self) -> &'static str {
        match self {
            Self::Relay(e) => e.as_str(),
            Self::Rejected(r) => r.as_str(),
            Self::ConnectFailed(_) => "connect_failed",
        }
    }
}

/// Handles one accepted client connection. The accept loop has already counted it
/// as active on the listener; `_slot` gives that back when this returns.
pub(crate) async fn handle(listener: Arc<Listener>, client: TcpStream, socket_peer: SocketAddr) {
    let _slot = ActiveGuard(&listener.stats.connections_active);
    let start = Instant::now();
    // TCP_NODELAY is inherited from the listening socket (see `listener::bind`).
    // A trusted source's PROXY header says who the client is; from here on that
    // address stands everywhere (routing, maglev key, logs, the header sent on).
    let mut untrusted = false;
    let (peer, destination) = match &listener.proxy_accept {
        Some(accept) if accept.is_trusted(socket_peer.ip()) => {
            match proxy_in::read(&client, listener.handshake_timeout).await {
                Ok(Some((src, dst))) => (src, Some(dst)),
                Ok(None) => (socket_peer, None),
                Err(failed) => {
                    let reason = match failed {
                        proxy_in::Failed::Timeout => RejectReason::HandshakeTimeout,
                        proxy_in::Failed::Invalid | proxy_in::Failed::Closed => {
                            RejectReason::ProxyProtocol
                        }
                    };
                    listener.stats.reject(reason);
                    log_rejected(&listener, socket_peer, reason);
                    return;
                }
            }
        }
        Some(_) => {
            untrusted = true;
            (socket_peer, None)
        }
        None => (socket_peer, None),
    };
    let routed = if listener.needs_hello {
        match hello::route(&listener, &client, peer.ip()).await {
            Ok(r) => r,
            Err(hello::Failed::Timeout) => {
                listener.stats.reject(RejectReason::HandshakeTimeout);
                log_rejected(&listener, peer, RejectReason::HandshakeTimeout);
                return;
            }
            // The client went away before its ClientHello was complete.
            Err(hello::Failed::Closed) => None,
        }
    } else {
        listener.route_for(peer.ip(), None)
    };
    let Some(route) = routed else {
        listener.stats.reject(RejectReason::NoRoute);
        log_rejected(&listener, peer, RejectReason::NoRoute);
        return;
    };
    stats::count(&route.stats.connections_total, 1);
    let pool = &route.pool;
    let preamble = Preamble {
        client: &client,
        peer,
        destination,
        proxy: route.send_proxy_protocol,
        tls: route.backend_tls.as_ref(),
    };
    let (backend_index, backend) = match connect(pool, &preamble).await {
        Ok(ok) => ok,
        Err(term) => {
            if let Termination::Rejected(r) = term {
                listener.stats.reject(r);
            }
            route.stats.connection_duration.observe(start.elapsed());
            log(&listener, Some(route), peer, None, 0, 0, start, term);
            return;
        }
    };
    let b = &pool.backends[backend_index];
    stats::count(&b.stats.connections_total, 1);
    // Counted active from the moment it was picked (see `connect`).
    let _backend_active = ActiveGuard(&b.stats.connections_active);
    let evict = b.eviction_token();
    let settings = relay::Settings {
        idle_timeout: listener.idle_timeout,
        zero_copy: listener.zero_copy,
        refuse_proxy_header: untrusted,
    };
    let mut outcome = match backend {
        Upstream::Plain(backend) => {
            relay::relay(
                &client,
                &backend,
                &b.stats,
                settings,
                &listener.kill,
                &evict,
            )
            .await
        }
        Upstream::Tls(backend) => {
            relay::relay_stream(client, *backend, &b.stats, settings, &listener.kill, &evict).await
        }
    };
    if outcome.end == End::ProxyHeader {
        listener.stats.reject(RejectReason::ProxyProtocol);
    }
    if outcome.end == End::Evicted {
        outcome.end = match b.eviction() {
            Eviction::BackendDown => End::BackendDown,
            Eviction::DrainTimeout => End::DrainTimeout,
        };
    }
    route.stats.connection_duration.observe(start.elapsed());
    log(
        &listener,
        Some(route),
        peer,
        Some(b),
        outcome.sent,
        outcome.received,
        start,
        Termination::Relay(outcome.end),
    );
}

/// Picks a backend and connects, trying up to `retries` other backends when a
/// connect fails. On success the picked backend's active gauge has been
/// incremented (so concurrent picks by `least_conn` see it at once).
/// What `connect` established: a plain TCP connection or TLS over it.
enum Upstream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// Everything sent before the relay starts: the PROXY header (in clear) and the
/// TLS handshake. Both are part of establishing the connection, so a failure
/// moves on to another backend like a refused connect.
struct Preamble<'a> {
    client: &'a TcpStream,
    peer: SocketAddr,
    destination: Option<SocketAddr>,
    proxy: ProxyVersion,
    tls: Option<&'a crate::listener::BackendTls>,
}

async fn establish(
    addr: SocketAddr,
    timeout: std::time::Duration,
    pre: &Preamble<'_>,
) -> Result<Upstream, ConnectError> {
    let tcp = connect_one(addr, timeout).await?;
    if pre.proxy != ProxyVersion::Off {
        send_proxy_header(pre.client, &tcp, pre.peer, pre.destination, pre.proxy)
            .await
            .map_err(|e| ConnectError::from_io(&e))?;
    }
    let Some(tls) = pre.tls else {
        return Ok(Upstream::Plain(tcp));
    };
    let name = tls
        .sni
        .clone()
        .unwrap_or(rustls::pki_types::ServerName::IpAddress(addr.ip().into()));
    match tokio::time::timeout(timeout, tls.connector.connect(name, tcp)).await {
        Ok(Ok(stream)) => Ok(Upstream::Tls(Box::new(stream))),
        Ok(Err(e)) => {
            tracing::debug!(%addr, error = %e, "TLS handshake with the backend failed");
            Err(ConnectError::Tls)
        }
        Err(_) => Err(ConnectError::Tls),
    }
}

async fn connect(pool: &Arc<Pool>, pre: &Preamble<'_>) -> Result<(usize, Upstream), Termination> {
    let peer = pre.peer;
    let picker = pool.picker();
    let key = match picker.policy() {
        weir_balance::Policy::Maglev => affinity_key(pool.hash_key, peer),
        _ => 0,
    };
    // Allocates only once a connect has failed.
    let mut tried: Vec<usize> = Vec::new();
    let mut last_err = None;
    for _ in 0..=pool.retries {
        // Scoped so the type-erased (non-Sync) closure is not held across an await.
        let picked = {
            let load = |i: usize| pool.backends.get(i).map_or(u32::MAX, |b| b.stats.load());
            let req = Request {
                key,
                random: fastrand::u64(..),
                load: &load,
            };
            picker.pick(&req, &tried)
        };
        let Some(i) = picked else {
            break;
        };
        let Some(b) = pool.backends.get(i) else {
            break;
        };
        b.stats.connections_active.fetch_add(1, Relaxed);
        let began = Instant::now();
        match establish(b.address, pool.connect_timeout, pre).await {
            Ok(stream) => {
                b.stats.connect_duration.observe(began.elapsed());
                return Ok((i, stream));
            }
            Err(kind) => {
                b.stats.connections_active.fetch_sub(1, Relaxed);
                b.stats.connect_error(kind);
                pool.on_connect_failure(i, kind);
                tracing::debug!(pool = %pool.name, backend = %b.name, error = kind.as_str(), "connect failed");
                last_err = Some(kind);
                tried.push(i);
            }
        }
    }
    Err(match last_err {
        Some(kind) => Termination::ConnectFailed(kind),
        None => Termination::Rejected(RejectReason::NoBackend),
    })
}

async fn connect_one(
    addr: SocketAddr,
    timeout: std::time::Duration,
) -> Result<TcpStream, ConnectError> {
    match tokio::time::timeout(timeout, connect_nonblocking(addr)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) => Err(ConnectError::from_io(&e)),
        Err(_) => Err(ConnectError::Timeout),
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

/// Writes a PROXY protocol header (v1 text or v2 binary) to the backend: the
/// client's address as source, the address it connected to as destination
/// (both as a received PROXY header said, when there was one).
async fn send_proxy_header(
    client: &TcpStream,
    backend: &TcpStream,
    peer: SocketAddr,
    destination: Option<SocketAddr>,
    version: ProxyVersion,
) -> std::io::Result<()> {
    let local = match destination {
        Some(d) => d,
        None => client.local_addr()?,
    };
    // At most 16 + 36 bytes (v2, IPv6) or 104 bytes (v1): one small allocation.
    let mut header = Vec::with_capacity(108);
    match version {
        ProxyVersion::V1 => weir_wire::proxy::encode_v1(peer, local, &mut header),
        ProxyVersion::V2 => weir_wire::proxy::encode_v2(
            weir_wire::proxy::Command::Proxy,
            weir_wire::proxy::Transport::Stream,
            Some((peer, local)),
            &[],
            &mut header,
        )
        .map_err(|e| std::io::Error::other(e.to_string()))?,
        ProxyVersion::Off => return Ok(()),
    }
    let mut rest = &header[..];
    while !rest.is_empty() {
        match backend.try_write(rest) {
            Ok(n) => rest = &rest[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => backend.writable().await?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The maglev key of a client: its IP, or its IP and port.
fn affinity_key(kind: HashKey, peer: SocketAddr) -> u64 {
    let mut bytes = [0u8; 18];
    let len = match peer.ip() {
        IpAddr::V4(ip) => {
            bytes[..4].copy_from_slice(&ip.octets());
            4
        }
        IpAddr::V6(ip) => {
            bytes[..16].copy_from_slice(&ip.octets());
            16
        }
    };
    let len = match kind {
        HashKey::SourceIp => len,
        HashKey::SourceAddr => {
            bytes[len..len + 2].copy_from_slice(&peer.port().to_be_bytes());
            len + 2
        }
    };
    weir_balance::hash_bytes(&bytes[..len])
}

/// The access-log line of a connection refused before routing.
pub(crate) fn log_rejected(listener: &Listener, client: SocketAddr, reason: RejectReason) {
    log(
        listener,
        None,
        client,
        None,
        0,
        0,
        Instant::now(),
        Termination::Rejected(reason),
    );
}

#[allow(clippy::too_many_arguments)]
fn log(
    listener: &Listener,
    route: Option<&Route>,
    client: SocketAddr,
    backend: Option<&crate::pool::Backend>,
    sent: u64,
    received: u64,
    start: Instant,
    term: Termination,
) {
    if !listener.access_log {
        return;
    }
    let backend_name = backend.map_or("-", |b| b.name.as_str());
    let error = match term {
        Termination::ConnectFailed(e) => e.as_str(),
        _ => "-",
    };
    tracing::info!(
        target: "weir::access",
        listener = %listener.name,
        route = route.map_or("-", |r| r.name.as_str()),
        client = %client,
        backend = backend_name,
        bytes_to_backend = sent,
        bytes_to_client = received,
        // Microsecond precision is plenty and keeps the field short.
        duration_ms = start.elapsed().as_micros() as f64 / 1000.0,
        reason = term.as_str(),
        error,
    );
}

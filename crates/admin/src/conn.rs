//! Admin connections, bounded so that no number of them can take what the
//! data plane needs: at most `admin.max_connections` open per endpoint, and
//! `admin.max_connections_per_client` of them from one client, so that one
//! client cannot take every place from a readiness probe (the rest are
//! refused at once, with a reset), a client that sends nothing
//! within `admin.handshake_timeout` or goes quiet for `admin.idle_timeout` is
//! closed, and the accept loop pauses instead of spinning when the process
//! is out of file descriptors.
//!
//! Both endpoints (HTTP and gRPC) accept through [`accept_loop`] and speak
//! over [`Guarded`], a TCP stream that carries its connection slot and its
//! timers.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use weir_telemetry::{Kind, LogBudget, Verdict, Writer};

/// The bounds of one admin endpoint.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: u32,
    pub max_connections_per_client: u32,
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
    /// The bytes the client must send within `handshake_timeout`: the first
    /// one for HTTP (hyper times the request header), the whole HTTP/2
    /// preface for gRPC, whose server times nothing before it.
    pub handshake_bytes: usize,
}

impl Limits {
    pub fn from_config(admin: &weir_config::Admin) -> Limits {
        Limits {
            max_connections: admin.max_connections,
            max_connections_per_client: admin.max_connections_per_client,
            handshake_timeout: admin.handshake_timeout,
            idle_timeout: admin.idle_timeout,
            handshake_bytes: 1,
        }
    }
}

/// Why weir closed an admin connection: the `reason` label of
/// `weir_admin_connections_rejected_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// The endpoint already had `max_connections` open.
    MaxConnections,
    /// The client already had `max_connections_per_client` open.
    MaxConnectionsPerClient,
    /// Nothing came within `handshake_timeout`.
    HandshakeTimeout,
    /// No byte moved either way for `idle_timeout`.
    IdleTimeout,
}

impl Closed {
    pub const ALL: [Closed; 4] = [
        Closed::MaxConnections,
        Closed::MaxConnectionsPerClient,
        Closed::HandshakeTimeout,
        Closed::IdleTimeout,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Closed::MaxConnections => "max_connections",
            Closed::MaxConnectionsPerClient => "max_connections_per_client",
            Closed::HandshakeTimeout => "handshake_timeout",
            Closed::IdleTimeout => "idle_timeout",
        }
    }
}

/// The counters of one admin endpoint.
#[derive(Debug)]
pub struct EndpointStats {
    name: &'static str,
    active: AtomicI64,
    closed: [AtomicU64; Closed::ALL.len()],
    /// Thins the warnings of a full endpoint or a failing accept.
    warnings: LogBudget,
}

impl EndpointStats {
    pub fn new(name: &'static str) -> EndpointStats {
        EndpointStats {
            name,
            active: AtomicI64::new(0),
            closed: Default::default(),
            warnings: LogBudget::new(1),
        }
    }

    /// Admin connections open now.
    pub fn active(&self) -> i64 {
        self.active.load(Relaxed)
    }

    /// Connections weir closed for `why`.
    pub fn closed(&self, why: Closed) -> u64 {
        self.closed[why as usize].load(Relaxed)
    }

    pub(crate) fn close(&self, why: Closed) {
        self.closed[why as usize].fetch_add(1, Relaxed);
    }
}

/// The counters of both admin endpoints, for `/metrics`.
#[derive(Debug)]
pub struct AdminStats {
    pub http: Arc<EndpointStats>,
    pub grpc: Arc<EndpointStats>,
}

impl Default for AdminStats {
    fn default() -> Self {
        AdminStats {
            http: Arc::new(EndpointStats::new("http")),
            grpc: Arc::new(EndpointStats::new("grpc")),
        }
    }
}

impl AdminStats {
    pub fn write(&self, w: &mut Writer) {
        let endpoints = [&self.http, &self.grpc];
        w.family(
            "weir_admin_connections_active",
            Kind::Gauge,
            "Connections open to an admin endpoint.",
        );
        for e in endpoints {
            w.sample(
                "weir_admin_connections_active",
                &[("endpoint", e.name)],
                e.active(),
            );
        }
        w.family(
            "weir_admin_connections_rejected",
            Kind::Counter,
            "Admin connections weir refused or closed, by reason: max_connections and max_connections_per_client (refused at once), handshake_timeout, idle_timeout.",
        );
        for e in endpoints {
            for why in Closed::ALL {
                w.sample(
                    "weir_admin_connections_rejected_total",
                    &[("endpoint", e.name), ("reason", why.as_str())],
                    e.closed(why),
                );
            }
        }
    }
}

/// Accepts on `listener` until `stop`, handing each connection that fits
/// under the caps to `serve`. A connection over a cap is closed at once
/// with a reset and counted. Out of descriptors, the loop pauses instead of
/// retrying at once (the clients wait in the backlog meanwhile).
pub async fn accept_loop(
    listener: TcpListener,
    limits: Limits,
    stats: Arc<EndpointStats>,
    stop: CancellationToken,
    mut serve: impl FnMut(Guarded, SocketAddr),
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections as usize));
    let clients = Arc::new(Clients::default());
    loop {
        let accepted = tokio::select! {
            biased;
            () = stop.cancelled() => return,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                if let Some(pause) = weir_core::accept_pause(&e) {
                    if let Verdict::Write { suppressed } = stats.warnings.check() {
                        tracing::warn!(endpoint = stats.name, error = %e, suppressed, "admin accept failed; pausing");
                    }
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(pause) => {}
                    }
                }
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            refuse(
                stream,
                peer,
                Closed::MaxConnections,
                limits.max_connections,
                &stats,
            );
            continue;
        };
        let Some(client) = Clients::enter(&clients, peer.ip(), limits.max_connections_per_client)
        else {
            refuse(
                stream,
                peer,
                Closed::MaxConnectionsPerClient,
                limits.max_connections_per_client,
                &stats,
            );
            continue;
        };
        serve(
            Guarded::new(stream, slot, client, limits, Arc::clone(&stats)),
            peer,
        );
    }
}

/// Closes a connection over a cap with a reset (the client learns at once
/// and no state is left behind), and counts it.
fn refuse(stream: TcpStream, peer: SocketAddr, why: Closed, cap: u32, stats: &EndpointStats) {
    stats.close(why);
    if let Verdict::Write { suppressed } = stats.warnings.check() {
        tracing::warn!(endpoint = stats.name, %peer, reason = why.as_str(), cap, suppressed, "admin connection refused");
    }
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}

/// The connections open to one endpoint by client: an IPv4 address, or an
/// IPv6 /64 (what one host is given, so it cannot step around the cap by
/// changing addresses). An entry lives while its client has a connection
/// open, so there are never more than `max_connections` of them.
#[derive(Debug, Default)]
pub(crate) struct Clients {
    open: Mutex<HashMap<IpAddr, u32>>,
}

impl Clients {
    /// Takes a place for a connection from `ip`; `None` when it already
    /// has `cap` open.
    pub(crate) fn enter(this: &Arc<Clients>, ip: IpAddr, cap: u32) -> Option<ClientPlace> {
        let key = client_key(ip);
        let mut open = this.open.lock().unwrap_or_else(PoisonError::into_inner);
        let n = open.entry(key).or_insert(0);
        if *n >= cap {
            return None;
        }
        *n += 1;
        Some(ClientPlace {
            clients: Arc::clone(this),
            key,
        })
    }
}

/// The key a client is counted under.
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & !u128::from(u64::MAX))),
        },
    }
}

/// A connection's place among its client's; given back when dropped.
#[derive(Debug)]
pub(crate) struct ClientPlace {
    clients: Arc<Clients>,
    key: IpAddr,
}

impl Drop for ClientPlace {
    fn drop(&mut self) {
        let mut open = self
            .clients
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// An admin connection: the TCP stream, its slot under the endpoint's cap
/// (given back when it is dropped), and its deadlines. A read fails with
/// `TimedOut` once the client has sent nothing within `handshake_timeout`,
/// or once no byte moved either way for `idle_timeout`.
#[derive(Debug)]
pub struct Guarded {
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
    _client: ClientPlace,
    stats: Arc<EndpointStats>,
    limits: Limits,
    /// Fires at the deadline; re-armed when it fires early.
    timer: Pin<Box<Sleep>>,
    last_activity: Instant,
    /// Bytes of the handshake (`Limits::handshake_bytes`) yet to come, and
    /// when they must have come by (from the accept, however they drip).
    handshake_left: usize,
    handshake_by: Instant,
}

impl Guarded {
    fn new(
        stream: TcpStream,
        slot: OwnedSemaphorePermit,
        client: ClientPlace,
        limits: Limits,
        stats: Arc<EndpointStats>,
    ) -> Guarded {
        stats.active.fetch_add(1, Relaxed);
        Guarded {
            stream,
            _slot: slot,
            _client: client,
            stats,
            limits,
            timer: Box::pin(tokio::time::sleep(limits.handshake_timeout)),
            last_activity: Instant::now(),
            handshake_left: limits.handshake_bytes.max(1),
            handshake_by: Instant::now() + limits.handshake_timeout,
        }
    }

    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.stream.peer_addr()
    }

    /// Polls the deadline: an error once it has passed.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        while self.timer.as_mut().poll(cx).is_ready() {
            let (why, deadline) = if self.handshake_left > 0 {
                (Closed::HandshakeTimeout, self.handshake_by)
            } else {
                (
                    Closed::IdleTimeout,
                    self.last_activity + self.limits.idle_timeout,
                )
            };
            if Instant::now() >= deadline {
                self.stats.close(why);
                return Err(io::Error::new(io::ErrorKind::TimedOut, why.as_str()));
            }
            self.timer.as_mut().reset(deadline);
        }
        Ok(())
    }

    fn moved(&mut self) {
        self.last_activity = Instant::now();
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        self.stats.active.fetch_sub(1, Relaxed);
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let got = buf.filled().len() - before;
                if got > 0 {
                    if this.handshake_left > 0 {
                        this.handshake_left = this.handshake_left.saturating_sub(got);
                        if this.handshake_left == 0 {
                            // The handshake is in: the idle timeout applies.
                            this.timer
                                .as_mut()
                                .reset(Instant::now() + this.limits.idle_timeout);
                        }
                    }
                    this.moved();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match this.poll_deadline(cx) {
                Ok(()) => Poll::Pending,
                Err(e) => Poll::Ready(Err(e)),
            },
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        match Pin::new(&mut this.stream).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    this.moved();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            // A client that stops reading is idle too.
            Poll::Pending => match this.poll_deadline(cx) {
                Ok(()) => Poll::Pending,
                Err(e) => Poll::Ready(Err(e)),
            },
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for Guarded {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_is_an_ipv4_address_or_an_ipv6_64() {
        let key = |s: &str| client_key(s.parse().expect("an address"));
        assert_eq!(key("10.0.0.1"), key("10.0.0.1"));
        assert_ne!(key("10.0.0.1"), key("10.0.0.2"));
        assert_eq!(key("::ffff:10.0.0.1"), key("10.0.0.1"));
        assert_eq!(key("2001:db8:1:2::1"), key("2001:db8:1:2:ffff::9"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
    }

    #[test]
    fn a_client_holds_at_most_its_cap_and_gets_places_back() {
        let clients = Arc::new(Clients::default());
        let a: IpAddr = "10.0.0.1".parse().expect("an address");
        let b: IpAddr = "10.0.0.2".parse().expect("an address");
        let held: Vec<_> = (0..3)
            .map(|_| Clients::enter(&clients, a, 3).expect("a place"))
            .collect();
        assert!(Clients::enter(&clients, a, 3).is_none(), "a fourth");
        let other = Clients::enter(&clients, b, 3).expect("another client's place");
        drop(held);
        drop(other);
        assert!(
            clients.open.lock().expect("lock").is_empty(),
            "no entry left"
        );
        assert!(Clients::enter(&clients, a, 3).is_some(), "room again");
    }
}

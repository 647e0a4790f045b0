//! Admin connections, bounded so that no number of them can take what the
//! data plane needs: at most `admin.max_connections` open per endpoint (the
//! rest are refused at once, with a reset), a client that sends nothing
//! within `admin.handshake_timeout` or goes quiet for `admin.idle_timeout` is
//! closed, and the accept loop pauses instead of spinning when the process
//! is out of file descriptors.
//!
//! Both endpoints (HTTP and gRPC) accept through [`accept_loop`] and speak
//! over [`Guarded`], a TCP stream that carries its connection slot and its
//! timers.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
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
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
}

impl Limits {
    pub fn from_config(admin: &weir_config::Admin) -> Limits {
        Limits {
            max_connections: admin.max_connections,
            handshake_timeout: admin.handshake_timeout,
            idle_timeout: admin.idle_timeout,
        }
    }
}

/// Why weir closed an admin connection: the `reason` label of
/// `weir_admin_connections_rejected_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// The endpoint already had `max_connections` open.
    MaxConnections,
    /// Nothing came within `handshake_timeout`.
    HandshakeTimeout,
    /// No byte moved either way for `idle_timeout`.
    IdleTimeout,
}

impl Closed {
    pub const ALL: [Closed; 3] = [
        Closed::MaxConnections,
        Closed::HandshakeTimeout,
        Closed::IdleTimeout,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Closed::MaxConnections => "max_connections",
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
            "Admin connections weir refused or closed, by reason: max_connections (refused at once), handshake_timeout, idle_timeout.",
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
/// under the cap to `serve`. A connection over the cap is closed at once
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
            stats.close(Closed::MaxConnections);
            if let Verdict::Write { suppressed } = stats.warnings.check() {
                tracing::warn!(endpoint = stats.name, %peer, max_connections = limits.max_connections, suppressed, "admin endpoint full; connection refused");
            }
            // A reset: the client learns at once and no state is left behind.
            let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
            drop(stream);
            continue;
        };
        serve(Guarded::new(stream, slot, limits, Arc::clone(&stats)), peer);
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
    stats: Arc<EndpointStats>,
    limits: Limits,
    /// Fires at the deadline; re-armed when it fires early.
    timer: Pin<Box<Sleep>>,
    last_activity: Instant,
    /// No byte has come from the client yet.
    handshaking: bool,
}

impl Guarded {
    fn new(
        stream: TcpStream,
        slot: OwnedSemaphorePermit,
        limits: Limits,
        stats: Arc<EndpointStats>,
    ) -> Guarded {
        stats.active.fetch_add(1, Relaxed);
        Guarded {
            stream,
            _slot: slot,
            stats,
            limits,
            timer: Box::pin(tokio::time::sleep(limits.handshake_timeout)),
            last_activity: Instant::now(),
            handshaking: true,
        }
    }

    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.stream.peer_addr()
    }

    /// Polls the deadline: an error once it has passed.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        while self.timer.as_mut().poll(cx).is_ready() {
            let (why, deadline) = if self.handshaking {
                (
                    Closed::HandshakeTimeout,
                    self.last_activity + self.limits.handshake_timeout,
                )
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
                if buf.filled().len() > before {
                    if this.handshaking {
                        // From the first byte on, the idle timeout applies.
                        this.handshaking = false;
                        this.timer
                            .as_mut()
                            .reset(Instant::now() + this.limits.idle_timeout);
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

//! Connections to a route's backends, kept for reuse.
//!
//! HTTP/1.1: each backend has a list of idle connections, last in first out
//! (the warmest first). A request takes one (or opens one), and gives it back
//! when its response has been read to the end; a connection idle for
//! `timeouts.upstream_keepalive` is closed, so weir lets go of it before a
//! backend's own keep-alive timeout would close it under a request (the race
//! behind most "502 on a kept-alive connection" reports). HTTP/2 and h2c: a
//! connection carries up to `H2_STREAMS` requests at once, or as many as the
//! backend's SETTINGS allow if fewer, and another is opened past that; one
//! is kept while idle, the others close after `upstream_keepalive` without a
//! request.
//!
//! The flow-control windows of an HTTP/2 backend connection are sized so
//! that no request waits for another's: a response its client does not read
//! holds at most its stream's window (`H2_STREAM_WINDOW`) of the
//! connection's, which is that times the requests it carries. With the
//! usual small connection window, a few clients that download and read
//! nothing would stall every request to the backend.
//!
//! Each backend's list sits behind its own short lock (a push or a pop);
//! nothing here is shared across backends.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::client::conn::{TrySendError, http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;
use weir_config::HttpProtocol;
use weir_core::Reason;
use weir_core::pool::{BackendStats, UpstreamEvent};
use weir_core::sync::lock;

use crate::body::RequestBody;

/// Idle HTTP/1.1 connections kept per backend at most; more are closed.
const MAX_IDLE: usize = 256;
/// How long a connection given back a moment ago may take to be ready for
/// its next request before it is given up on.
const READY_WAIT: Duration = Duration::from_millis(100);
/// Requests one HTTP/2 backend connection carries at once; past that,
/// another is opened (most servers allow 100 or more streams).
const H2_STREAMS: usize = 100;
/// Streams a shared HTTP/2 connection may refuse before no request is sent
/// on it any more (see `Conns::other_h2`).
const H2_REFUSALS: u32 = 4;
/// The window of one request's response on an HTTP/2 backend connection:
/// what a response its client does not read holds in weir's memory (a
/// client's 256 streams: 64 MiB until `timeouts.send`), and what one
/// response can have in flight (2 Gbit/s over a 1 ms round trip, 10 Gbit/s
/// under 0.2 ms).
const H2_STREAM_WINDOW: u32 = 256 << 10;
/// The window of the connection: room for each of its requests' windows.
const H2_CONN_WINDOW: u32 = H2_STREAM_WINDOW * H2_STREAMS as u32;

pub(crate) type Request = http::Request<RequestBody>;
pub(crate) type Response = http::Response<Incoming>;

/// How to open a connection to the backends of one pool.
#[derive(Clone)]
pub(crate) struct Dialer {
    pub(crate) protocol: HttpProtocol,
    pub(crate) connect_timeout: Duration,
    /// `timeouts.upstream_ping`: HTTP/2 keep-alive, off when `None`.
    pub(crate) ping: Option<Duration>,
    /// TLS to the backend: the connector (offering the protocol's ALPN) and
    /// the name to send and verify (`None`: the backend's IP).
    pub(crate) tls: Option<(tokio_rustls::TlsConnector, Option<ServerName<'static>>)>,
}

impl std::fmt::Debug for Dialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dialer")
            .field("protocol", &self.protocol)
            .field("connect_timeout", &self.connect_timeout)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// The kept connections of one backend.
#[derive(Debug)]
pub(crate) struct Conns {
    pub(crate) address: SocketAddr,
    protocol: HttpProtocol,
    stats: Arc<BackendStats>,
    /// `upstream_keepalive`, in nanoseconds: a reload that keeps these
    /// connections sets its own when it is switched to.
    keepalive: AtomicU64,
    /// A sweeper looks after these connections already.
    swept: AtomicBool,
    idle: Mutex<Vec<Idle>>,
    /// The shared HTTP/2 connections, oldest first.
    h2: tokio::sync::Mutex<Vec<H2Conn>>,
    /// Requests opening a shared HTTP/2 connection now (without the lock,
    /// each for itself and those that wait for room on it), and requests
    /// waiting for one of those; `h2_opened` wakes the latter when an open
    /// ends, however it ends.
    h2_opening: AtomicUsize,
    h2_awaiting: AtomicUsize,
    h2_opened: Notify,
    /// Failed opens of the shared HTTP/2 connection so far, and why the last
    /// one failed: the requests that waited for an open that failed fail
    /// with it, rather than each opening in turn (each up to
    /// `connect_timeout`, one after the other, behind the lock).
    h2_failures: AtomicU64,
    h2_why: Mutex<Reason>,
    /// The shared HTTP/2 connections opened so far: the number of the
    /// newest in `h2` (changed under its lock).
    h2_opens: AtomicU64,
}

/// One shared HTTP/2 connection.
#[derive(Debug)]
struct H2Conn {
    sender: http2::SendRequest<RequestBody>,
    /// Which it is (see `Conns::h2_opens`).
    number: u64,
    /// Its requests whose response has not ended.
    streams: Arc<AtomicUsize>,
    /// The streams the backend allows at once, as its connection's task
    /// last saw.
    allowed: Arc<AtomicUsize>,
    /// When a request last took it.
    used: Instant,
    /// Streams it refused (`REFUSED_STREAM`): see [`Conns::other_h2`].
    refused: u32,
}

impl H2Conn {
    /// The requests it carries at most: `H2_STREAMS`, or fewer when the
    /// backend allows fewer streams at once (its SETTINGS; 100 until they
    /// come). Past that another connection is opened rather than the
    /// request queued behind the others on this one. A backend that allows
    /// none for a while (shedding load) gets no new connections for it:
    /// its requests wait on this one for streams, as they would on any.
    fn room(&self) -> usize {
        match self.allowed.load(Relaxed) {
            0 => H2_STREAMS,
            n => n.min(H2_STREAMS),
        }
    }
}

/// One of the requests a count holds (opening a shared HTTP/2 connection,
/// or waiting for one), until it goes however it goes; an opener's going
/// wakes those that wait for it.
struct Counted<'a> {
    count: &'a AtomicUsize,
    ends: Option<&'a Notify>,
}

impl<'a> Counted<'a> {
    fn up(count: &'a AtomicUsize, ends: Option<&'a Notify>) -> Counted<'a> {
        count.fetch_add(1, SeqCst);
        Counted { count, ends }
    }
}

impl Drop for Counted<'_> {
    /// Counted down before the wake-up: a request that reads the count
    /// after registering for the wake-up sees one or gets the other.
    fn drop(&mut self) {
        self.count.fetch_sub(1, SeqCst);
        if let Some(ends) = self.ends {
            ends.notify_waiters();
        }
    }
}

/// A request's place on a shared HTTP/2 connection, given back when its
/// lease goes, however it goes.
#[derive(Debug)]
struct Stream(Arc<AtomicUsize>);

impl Drop for Stream {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

#[derive(Debug)]
struct Idle {
    sender: http1::SendRequest<RequestBody>,
    since: Instant,
}

impl Drop for Conns {
    /// A reload that does not keep these connections (the route went, or
    /// the backend's address, protocol or TLS changed) closes the idle ones:
    /// the backend's gauge, which outlives them, no longer counts them.
    fn drop(&mut self) {
        let idle = match self.idle.get_mut() {
            Ok(idle) => idle.len(),
            Err(poisoned) => poisoned.into_inner().len(),
        };
        self.stats
            .upstream_idle
            .fetch_sub(i64::try_from(idle).unwrap_or(0), Relaxed);
    }
}

impl Conns {
    pub(crate) fn new(
        address: SocketAddr,
        protocol: HttpProtocol,
        stats: Arc<BackendStats>,
        keepalive: Duration,
    ) -> Arc<Conns> {
        Arc::new(Conns {
            address,
            protocol,
            stats,
            keepalive: AtomicU64::new(nanos(keepalive)),
            swept: AtomicBool::new(false),
            idle: Mutex::new(Vec::new()),
            h2: tokio::sync::Mutex::new(Vec::new()),
            h2_opening: AtomicUsize::new(0),
            h2_awaiting: AtomicUsize::new(0),
            h2_opened: Notify::new(),
            h2_failures: AtomicU64::new(0),
            h2_why: Mutex::new(Reason::BackendError),
            h2_opens: AtomicU64::new(0),
        })
    }

    /// Whether these connections can serve a backend at `address` speaking
    /// `protocol` (a reload keeps them then).
    pub(crate) fn fits(&self, address: SocketAddr, protocol: HttpProtocol) -> bool {
        self.address == address && self.protocol == protocol
    }

    /// How long an idle connection is kept.
    pub(crate) fn keepalive(&self) -> Duration {
        Duration::from_nanos(self.keepalive.load(Relaxed))
    }

    /// The `upstream_keepalive` of the configuration now running.
    pub(crate) fn set_keepalive(&self, keepalive: Duration) {
        self.keepalive.store(nanos(keepalive), Relaxed);
    }

    fn idle(&self) -> MutexGuard<'_, Vec<Idle>> {
        lock(&self.idle)
    }

    /// A connection for one request: a kept one when there is one, else a
    /// new one. A failure is a connect reason (`Refused`, `Timeout`, `Tls`...).
    /// `now` is the caller's clock reading, to tell how long an idle
    /// connection rested.
    pub(crate) async fn checkout(
        self: &Arc<Self>,
        dialer: &Dialer,
        now: Instant,
    ) -> Result<Lease, Unopened> {
        match self.protocol {
            HttpProtocol::Http1 => {
                if let Some((sender, rested)) = self.reuse_h1(now).await {
                    return Ok(self.lease(Sender::H1(sender), true, rested));
                }
            }
            HttpProtocol::H2 | HttpProtocol::H2c => {
                return self.shared_h2(dialer, None, None).await;
            }
        }
        // Boxed, as opening (TCP, TLS, the handshake) is the rare path and
        // by far the largest state: unboxed, every request's future would
        // carry it, and be copied with it.
        Box::pin(self.fresh(dialer, None)).await
    }

    /// A shared HTTP/2 connection that is open and has room for a request,
    /// else a new one. Requests that find every connection full wait for
    /// those being opened while these will have room for them beside their
    /// openers' own (so a burst on a cold backend shares one new
    /// connection, and fails with it when it cannot be opened and no other
    /// open is under way for them); past that
    /// each opens another, at the same time as the others (a backend that
    /// allows few streams at once needs many connections, and one slow
    /// connect holds up only its own request). Connection number `not`
    /// failed a request: it takes no more.
    ///
    /// When the open fails while open connections are only full (a backend
    /// that refuses more connections), the request goes on the least busy
    /// of them instead, where the backend's own stream limit queues it: as
    /// with a single connection, not a failure held against the backend.
    async fn shared_h2(
        self: &Arc<Self>,
        dialer: &Dialer,
        not: Option<u64>,
        avoid: Option<u64>,
    ) -> Result<Lease, Unopened> {
        let failures = self.h2_failures.load(Relaxed);
        loop {
            let mut shared = self.h2.lock().await;
            shared.retain(|c| !c.sender.is_closed() && Some(c.number) != not);
            if let Some(conn) = shared
                .iter_mut()
                .find(|c| c.streams.load(Relaxed) < c.room() && Some(c.number) != avoid)
            {
                return Ok(self.take_h2(conn));
            }
            // Registered before the counts are read: an open that ends
            // after (under the lock, or cancelled, outside it) wakes it.
            let opened = self.h2_opened.notified();
            // The room a new connection brings: what the backend allowed
            // on the newest, or weir's most before it says.
            let room = shared.last().map_or(H2_STREAMS, H2Conn::room);
            let coming = self
                .h2_opening
                .load(SeqCst)
                .saturating_mul(room.saturating_sub(1));
            if coming > self.h2_awaiting.load(SeqCst) {
                let _waiting = Counted::up(&self.h2_awaiting, None);
                drop(shared);
                opened.await;
                continue;
            }
            drop(opened);
            let why = if self.h2_failures.load(Relaxed) != failures {
                // An open failed while this request waited, and none it
                // could wait for is left: its opener counts the failure.
                Unopened {
                    reason: *lock(&self.h2_why),
                    shared: true,
                }
            } else {
                let opening = Counted::up(&self.h2_opening, Some(&self.h2_opened));
                drop(shared);
                let opened = Box::pin(self.open_h2(dialer)).await;
                shared = self.h2.lock().await;
                // Woken once the connection is in the list.
                let opened =
                    opened.map(|(sender, allowed)| self.add_h2(&mut shared, sender, allowed));
                drop(opening);
                match opened {
                    Ok(lease) => return Ok(lease),
                    Err(reason) => Unopened::from(reason),
                }
            };
            return match shared.iter_mut().min_by_key(|c| c.streams.load(Relaxed)) {
                Some(conn) => Ok(self.take_h2(conn)),
                None => Err(why),
            };
        }
    }

    /// A lease of a place on `conn`, an open shared HTTP/2 connection.
    fn take_h2(self: &Arc<Self>, conn: &mut H2Conn) -> Lease {
        conn.streams.fetch_add(1, Relaxed);
        conn.used = crate::clock::now();
        let stream = Stream(Arc::clone(&conn.streams));
        let sender = Sender::H2(conn.sender.clone(), stream);
        self.stats.upstream_event(UpstreamEvent::Reused);
        let mut lease = self.lease(sender, true, Duration::ZERO);
        lease.h2_number = conn.number;
        lease
    }

    /// A new connection, for a request that `failed` could not carry (the
    /// keep-alive race, a GOAWAY). For HTTP/2, a new shared one, unless
    /// another request opened one since `failed` was taken: the requests
    /// a GOAWAY sends back then share one new connection, rather than each
    /// opening its own in turn.
    pub(crate) async fn fresh(
        self: &Arc<Self>,
        dialer: &Dialer,
        failed: Option<&Lease>,
    ) -> Result<Lease, Unopened> {
        match self.protocol {
            HttpProtocol::Http1 => {
                let io = dial(self.address, dialer).await?;
                let (sender, conn) = http1::Builder::new()
                    .handshake(TokioIo::new(io))
                    .await
                    .map_err(|_| Reason::Protocol)?;
                self.stats.upstream_event(UpstreamEvent::Created);
                let stats = Arc::clone(&self.stats);
                tokio::spawn(async move {
                    let _ = conn.await;
                    stats.upstream_event(UpstreamEvent::Closed);
                });
                Ok(self.lease(Sender::H1(sender), false, Duration::ZERO))
            }
            HttpProtocol::H2 | HttpProtocol::H2c => {
                self.shared_h2(dialer, failed.map(|l| l.h2_number), None)
                    .await
            }
        }
    }

    /// Another shared HTTP/2 connection than `refused`'s, which refused a
    /// stream: one with room, else a new one. The refusing one goes on
    /// serving (a refusal at its stream limit costs no new connection),
    /// until it has refused [`H2_REFUSALS`] streams: a backend whose count
    /// of a connection's streams differs from weir's refuses every new one
    /// there, and serves on another.
    pub(crate) async fn other_h2(
        self: &Arc<Self>,
        dialer: &Dialer,
        refused: &Lease,
    ) -> Result<Lease, Unopened> {
        let number = refused.h2_number;
        let retire = {
            let mut shared = self.h2.lock().await;
            shared
                .iter_mut()
                .find(|c| c.number == number)
                .is_some_and(|c| {
                    c.refused += 1;
                    c.refused >= H2_REFUSALS
                })
        };
        if retire {
            self.shared_h2(dialer, Some(number), None).await
        } else {
            self.shared_h2(dialer, None, Some(number)).await
        }
    }

    /// A new HTTP/1.1 connection that may be upgraded (a WebSocket): once
    /// switched it is the relay's and never goes back to the idle list; a
    /// backend that answers anything else leaves it a plain HTTP/1.1
    /// connection, kept like any other.
    pub(crate) async fn fresh_upgradeable(
        self: &Arc<Self>,
        dialer: &Dialer,
    ) -> Result<Lease, Unopened> {
        let io = dial(self.address, dialer).await?;
        // Counted closed when the socket is: after the relay, if switched.
        let io = Closing {
            io,
            stats: Arc::clone(&self.stats),
        };
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(io))
            .await
            .map_err(|_| Reason::Protocol)?;
        self.stats.upstream_event(UpstreamEvent::Created);
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        Ok(self.lease(Sender::H1(sender), false, Duration::ZERO))
    }

    /// Opens a shared HTTP/2 connection: its sender, and the streams the
    /// backend allows at once as its connection's task sees them.
    async fn open_h2(
        self: &Arc<Self>,
        dialer: &Dialer,
    ) -> Result<(http2::SendRequest<RequestBody>, Arc<AtomicUsize>), Reason> {
        let opened = match dial(self.address, dialer).await {
            // A backend that went silent (its host lost, the connection's
            // state dropped by a firewall on the way) would leave every
            // request on the shared connection waiting for its response
            // timeout, until TCP gives up minutes later: with
            // `upstream_ping`, a PING after that much silence, unanswered
            // as long again, closes it, and the next request opens a new
            // one. Off by default: gRPC servers close a connection pinged
            // more often than every five minutes without data.
            Ok(io) => http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .initial_stream_window_size(H2_STREAM_WINDOW)
                .initial_connection_window_size(H2_CONN_WINDOW)
                .keep_alive_interval(dialer.ping)
                .keep_alive_timeout(dialer.ping.unwrap_or(Duration::from_secs(20)))
                .keep_alive_while_idle(true)
                .handshake(TokioIo::new(io))
                .await
                .map_err(|e| h2_handshake_failed(&e)),
            Err(why) => Err(why),
        };
        let (sender, conn) = match opened {
            Ok(opened) => opened,
            Err(why) => {
                *lock(&self.h2_why) = why;
                self.h2_failures.fetch_add(1, Relaxed);
                return Err(why);
            }
        };
        self.stats.upstream_event(UpstreamEvent::Created);
        self.stats.upstream_active.fetch_add(1, Relaxed);
        let stats = Arc::clone(&self.stats);
        let allowed = Arc::new(AtomicUsize::new(H2_STREAMS));
        let seen = Arc::clone(&allowed);
        let mut conn = conn;
        tokio::spawn(async move {
            // The backend's limit changes only with its SETTINGS; hyper
            // shows it on the connection, whose task runs as requests are
            // handed over.
            let _ = std::future::poll_fn(|cx| {
                let polled = Pin::new(&mut conn).poll(cx);
                seen.store(conn.current_max_send_streams(), Relaxed);
                polled
            })
            .await;
            stats.upstream_active.fetch_sub(1, Relaxed);
            stats.upstream_event(UpstreamEvent::Closed);
        });
        Ok((sender, allowed))
    }

    /// Puts a connection [`Conns::open_h2`] opened in `shared`, with a
    /// lease of its first stream for the request that opened it.
    fn add_h2(
        self: &Arc<Self>,
        shared: &mut Vec<H2Conn>,
        sender: http2::SendRequest<RequestBody>,
        allowed: Arc<AtomicUsize>,
    ) -> Lease {
        let number = self.h2_opens.fetch_add(1, Relaxed) + 1;
        let streams = Arc::new(AtomicUsize::new(1));
        let stream = Stream(Arc::clone(&streams));
        shared.push(H2Conn {
            sender: sender.clone(),
            number,
            streams,
            allowed,
            used: crate::clock::now(),
            refused: 0,
        });
        let mut lease = self.lease(Sender::H2(sender, stream), false, Duration::ZERO);
        lease.h2_number = number;
        lease
    }

    fn lease(self: &Arc<Self>, sender: Sender, reused: bool, rested: Duration) -> Lease {
        if let Sender::H1(_) = sender {
            self.stats.upstream_active.fetch_add(1, Relaxed);
        }
        Lease {
            conns: Arc::clone(self),
            sender: Some(sender),
            reused,
            rested,
            h2_number: 0,
        }
    }

    /// The warmest idle HTTP/1.1 connection that is still open and ready,
    /// and how long it rested.
    async fn reuse_h1(&self, now: Instant) -> Option<(http1::SendRequest<RequestBody>, Duration)> {
        loop {
            let idle = self.idle().pop()?;
            self.stats.upstream_idle.fetch_sub(1, Relaxed);
            let rested = now.saturating_duration_since(idle.since);
            if rested >= self.keepalive() || idle.sender.is_closed() {
                continue;
            }
            let mut sender = idle.sender;
            if !sender.is_ready() {
                // Given back a moment ago: its connection may not have
                // taken in the end of the last response yet.
                match tokio::time::timeout(READY_WAIT, sender.ready()).await {
                    Ok(Ok(())) => {}
                    _ => continue,
                }
            }
            self.stats.upstream_event(UpstreamEvent::Reused);
            return Some((sender, rested));
        }
    }

    /// Closes the idle connections past `upstream_keepalive`, HTTP/1.1 and
    /// HTTP/2 ones alike (a backend closes its side past its own idle
    /// timeout, and a GOAWAY then may meet a request); lets closed HTTP/2
    /// ones go.
    pub(crate) fn sweep(&self) {
        let mut idle = self.idle();
        let before = idle.len();
        let keepalive = self.keepalive();
        idle.retain(|i| i.since.elapsed() < keepalive && !i.sender.is_closed());
        let closed = before - idle.len();
        drop(idle);
        self.stats
            .upstream_idle
            .fetch_sub(i64::try_from(closed).unwrap_or(0), Relaxed);
        if let Ok(mut h2) = self.h2.try_lock() {
            // Dropping the last sender of an idle connection closes it.
            h2.retain(|c| {
                !c.sender.is_closed()
                    && (c.streams.load(Relaxed) > 0 || c.used.elapsed() < keepalive)
            });
        }
    }
}

enum Sender {
    H1(http1::SendRequest<RequestBody>),
    /// The stream is held for its `Drop`, which gives its place back.
    H2(http2::SendRequest<RequestBody>, #[allow(dead_code)] Stream),
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Sender::H1(_) => "Sender::H1",
            Sender::H2(..) => "Sender::H2",
        })
    }
}

/// A connection lent to one request until its response has been read.
#[derive(Debug)]
pub(crate) struct Lease {
    conns: Arc<Conns>,
    sender: Option<Sender>,
    /// The connection carried a request before (the keep-alive race applies).
    pub(crate) reused: bool,
    /// How long it had rested unused before this request took it.
    pub(crate) rested: Duration,
    /// Which shared HTTP/2 connection it is (see `Conns::h2_opens`).
    h2_number: u64,
}

/// Why no connection could be had for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Unopened {
    pub(crate) reason: Reason,
    /// The failure of a shared HTTP/2 open this request waited for: its
    /// opener counts it, so that one failed connect counts once, not once
    /// per request that waited (passive health and outlier detection
    /// would take a burst on a cold backend for many failures).
    pub(crate) shared: bool,
}

impl From<Reason> for Unopened {
    fn from(reason: Reason) -> Unopened {
        Unopened {
            reason,
            shared: false,
        }
    }
}

/// Why a request did not get a response.
#[derive(Debug)]
pub(crate) enum SendError {
    /// Nothing of it was written: it can go out on another connection.
    NotSent(Box<Request>),
    /// Written (at least in part), then the connection failed.
    Failed(hyper::Error),
}

impl From<TrySendError<Request>> for SendError {
    fn from(mut e: TrySendError<Request>) -> SendError {
        match e.take_message() {
            Some(req) => SendError::NotSent(Box::new(req)),
            None => SendError::Failed(e.into_error()),
        }
    }
}

impl Lease {
    /// Sends `req`. When it fails before any of it was written, the error
    /// gives the request back, so it can go out on another connection.
    pub(crate) async fn send(&mut self, req: Box<Request>) -> Result<Response, SendError> {
        match self.sender.as_mut() {
            Some(Sender::H1(s)) => s.try_send_request(*req).await.map_err(SendError::from),
            Some(Sender::H2(s, _)) => s.try_send_request(*req).await.map_err(SendError::from),
            None => Err(SendError::NotSent(req)),
        }
    }

    /// Whether it is an HTTP/1.1 connection, which carries one request at
    /// a time.
    pub(crate) fn is_h1(&self) -> bool {
        matches!(self.sender, Some(Sender::H1(_)))
    }

    /// The response has been read (`reusable`), or not: an HTTP/1.1
    /// connection goes back to the idle list only in the first case.
    pub(crate) fn release(mut self, reusable: bool) {
        let Some(sender) = self.sender.take() else {
            return;
        };
        let Sender::H1(sender) = sender else {
            return;
        };
        self.conns.stats.upstream_active.fetch_sub(1, Relaxed);
        if !reusable || sender.is_closed() {
            return;
        }
        let mut idle = self.conns.idle();
        if idle.len() >= MAX_IDLE {
            return;
        }
        idle.push(Idle {
            sender,
            since: crate::clock::now(),
        });
        drop(idle);
        self.conns.stats.upstream_idle.fetch_add(1, Relaxed);
    }
}

/// A backend connection switched to a WebSocket relay: counted active
/// until the relay ends.
#[derive(Debug)]
pub(crate) struct Relaying {
    stats: Arc<BackendStats>,
    /// Holds the lease's count of the connection as active.
    counted: bool,
}

impl Lease {
    /// The connection goes to the relay its response switched to: still
    /// active, never idle again.
    pub(crate) fn into_relay(mut self) -> Relaying {
        Relaying {
            stats: Arc::clone(&self.conns.stats),
            // Only an HTTP/1.1 lease counted it (see `lease`).
            counted: matches!(self.sender.take(), Some(Sender::H1(_))),
        }
    }
}

impl Drop for Relaying {
    fn drop(&mut self) {
        if self.counted {
            self.stats.upstream_active.fetch_sub(1, Relaxed);
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(Sender::H1(_)) = self.sender.take() {
            self.conns.stats.upstream_active.fetch_sub(1, Relaxed);
        }
    }
}

/// Why an HTTP/2 handshake failed. It writes the connection's preface,
/// the first bytes weir sends: a backend that reset or closed the
/// connection by then failed a connect like any other (counted, and the
/// request tried elsewhere), not the protocol. (hyper gives h2's I/O
/// errors as its own I/O errors, with the `io::Error` as their source.)
fn h2_handshake_failed(e: &hyper::Error) -> Reason {
    let io = std::error::Error::source(e).and_then(|s| s.downcast_ref::<std::io::Error>());
    match io {
        Some(io) if io.kind() == std::io::ErrorKind::BrokenPipe => Reason::Reset,
        Some(io) => Reason::from_connect_io(io),
        None => Reason::Protocol,
    }
}

/// Opens a connection to `addr`: TCP, then TLS when the route says so.
async fn dial(addr: SocketAddr, dialer: &Dialer) -> Result<Io, Reason> {
    let tcp = weir_core::upstream::connect_tcp(addr, dialer.connect_timeout).await?;
    let Some((connector, sni)) = &dialer.tls else {
        return Ok(Io::Plain(tcp));
    };
    let tls = weir_core::upstream::tls_handshake(
        connector,
        sni.as_ref(),
        addr,
        tcp,
        dialer.connect_timeout,
    )
    .await?;
    if dialer.protocol == HttpProtocol::H2 && tls.get_ref().1.alpn_protocol() != Some(b"h2") {
        tracing::debug!(%addr, "the backend did not agree to HTTP/2 (ALPN h2)");
        return Err(Reason::Tls);
    }
    Ok(Io::Tls(Box::new(tls)))
}

/// A backend connection: TCP, or TLS over it.
enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => crate::io::poll_write_few(Pin::new(s), cx, bufs),
            Io::Tls(s) => crate::io::poll_write_few(Pin::new(s.as_mut()), cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A connection that may be switched to a WebSocket, counted closed when
/// its socket is dropped: by hyper when it ends as HTTP, by the relay when
/// it was switched.
struct Closing {
    io: Io,
    stats: Arc<BackendStats>,
}

impl Drop for Closing {
    fn drop(&mut self) {
        self.stats.upstream_event(UpstreamEvent::Closed);
    }
}

impl AsyncRead for Closing {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Closing {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Sweeps `conns` until they are gone, every quarter of the shortest
/// `upstream_keepalive` among them (100 ms to 1 s), read again at each turn:
/// a reload that keeps them may lower it, and the idle connections past the
/// new value then close within a second. Connections a sweeper
/// looks after already are left to it, so that reloads do not pile up
/// sweepers over the same connections.
pub(crate) fn spawn_sweeper(conns: &[Arc<Conns>]) -> bool {
    let conns: Vec<Weak<Conns>> = conns
        .iter()
        .filter(|c| !c.swept.swap(true, Relaxed))
        .map(Arc::downgrade)
        .collect();
    if conns.is_empty() {
        return false;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return false;
    };
    runtime.spawn(async move {
        loop {
            let shortest = conns
                .iter()
                .filter_map(|c| c.upgrade().map(|c| c.keepalive()))
                .min();
            let Some(shortest) = shortest else { return };
            tokio::time::sleep((shortest / 4).clamp(SWEEP_FLOOR, SWEEP_CEILING)).await;
            for c in &conns {
                if let Some(c) = c.upgrade() {
                    c.sweep();
                }
            }
        }
    });
    true
}

/// The shortest and the longest time between two sweeps of the same
/// connections.
const SWEEP_FLOOR: Duration = Duration::from_millis(100);
const SWEEP_CEILING: Duration = Duration::from_secs(1);

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conns(keepalive: Duration) -> Arc<Conns> {
        Conns::new(
            "127.0.0.1:1".parse().expect("addr"),
            HttpProtocol::Http1,
            Arc::default(),
            keepalive,
        )
    }

    /// A backend gone before the HTTP/2 preface is written (here the other
    /// end of the stream, dropped) failed a connect, reset: not the protocol.
    #[tokio::test]
    async fn a_handshake_whose_preface_cannot_be_written_is_a_reset() {
        let (ours, theirs) = tokio::io::duplex(64);
        drop(theirs);
        let Err(e) = http2::Builder::new(TokioExecutor::new())
            .handshake::<_, RequestBody>(TokioIo::new(ours))
            .await
        else {
            panic!("a handshake with nobody");
        };
        assert_eq!(h2_handshake_failed(&e), Reason::Reset, "{e:?}");
    }

    /// Every reload activates its routes: connections it keeps have a
    /// sweeper already and get no other one, however many reloads there are.
    #[tokio::test]
    async fn kept_connections_get_one_sweeper_and_follow_the_new_keepalive() {
        let (kept, new) = (
            conns(Duration::from_secs(60)),
            conns(Duration::from_secs(4)),
        );
        assert!(spawn_sweeper(std::slice::from_ref(&kept)));
        assert!(!spawn_sweeper(std::slice::from_ref(&kept)));
        assert!(spawn_sweeper(&[Arc::clone(&kept), Arc::clone(&new)]));
        assert!(!spawn_sweeper(&[Arc::clone(&kept), Arc::clone(&new)]));
        kept.set_keepalive(Duration::from_secs(4));
        assert_eq!(kept.keepalive(), Duration::from_secs(4));
    }

    /// A loopback listener whose accept queue holds one connection.
    fn backlog_of_one() -> (socket2::Socket, SocketAddr) {
        let full = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        full.bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .expect("bind");
        full.listen(0).expect("listen");
        let addr = full
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .expect("addr");
        (full, addr)
    }

    /// Fills the accept queue of `addr`, a listener that accepts no more:
    /// a connect to it then waits out its timeout. Held while it must.
    fn fill_queue(addr: SocketAddr) -> Vec<std::net::TcpStream> {
        (0..4)
            .filter_map(|_| {
                std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).ok()
            })
            .collect()
    }

    /// A real h2c server (hyper's) answering `200` with no body, allowing
    /// `streams` at once on each connection.
    async fn h2c_server(streams: u32) -> SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let answer = hyper::service::service_fn(|_req: http::Request<Incoming>| async {
                    Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Empty::<
                        bytes::Bytes,
                    >::new(
                    )))
                });
                tokio::spawn(
                    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .max_concurrent_streams(streams)
                        .serve_connection(TokioIo::new(s), answer),
                );
            }
        });
        addr
    }

    /// Connections to an h2c backend at `addr`, and how to open them.
    fn h2c(addr: SocketAddr, connect_timeout: Duration) -> (Arc<Conns>, Dialer) {
        let conns = Conns::new(
            addr,
            HttpProtocol::H2c,
            Arc::default(),
            Duration::from_secs(4),
        );
        let dialer = Dialer {
            protocol: HttpProtocol::H2c,
            connect_timeout,
            ping: None,
            tls: None,
        };
        (conns, dialer)
    }

    /// The requests a shared HTTP/2 connection sends back (a GOAWAY) each
    /// ask for a new one: the first opens it, the others share it; one
    /// that then fails on the new one gets another. Against a real h2c
    /// server (hyper's).
    #[tokio::test]
    async fn requests_sent_back_by_one_http2_connection_share_one_new_one() {
        use hyper::service::service_fn;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        let accepted = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                counted.fetch_add(1, Relaxed);
                let answer = service_fn(|_req: http::Request<Incoming>| async {
                    Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Empty::<
                        bytes::Bytes,
                    >::new(
                    )))
                });
                tokio::spawn(
                    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(s), answer),
                );
            }
        });
        let (conns, dialer) = h2c(addr, Duration::from_secs(5));
        let now = Instant::now();
        let a = conns.checkout(&dialer, now).await.expect("opens");
        let b = conns.checkout(&dialer, now).await.expect("shares");
        assert!(b.reused);
        let a2 = conns.fresh(&dialer, Some(&a)).await.expect("a new one");
        assert!(!a2.reused);
        let b2 = conns
            .fresh(&dialer, Some(&b))
            .await
            .expect("the same new one");
        assert!(b2.reused);
        let c = conns.fresh(&dialer, Some(&b2)).await.expect("another");
        assert!(!c.reused);
        let end = Instant::now() + Duration::from_secs(5);
        while accepted.load(Relaxed) < 3 && Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Three opened, none more.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(accepted.load(Relaxed), 3);
    }

    /// Past 100 requests on a connection another is opened; when the
    /// backend refuses it, the request goes on the least busy open one
    /// rather than failing. Against a real h2c server (hyper's) that takes
    /// one connection and then stops listening.
    #[tokio::test]
    async fn a_full_http2_connection_takes_more_when_another_cannot_be_opened() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        tokio::spawn(async move {
            let Ok((s, _)) = l.accept().await else { return };
            drop(l);
            let answer = hyper::service::service_fn(|_req: http::Request<Incoming>| async {
                Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Empty::<
                    bytes::Bytes,
                >::new()))
            });
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(s), answer)
                .await;
        });
        let (conns, dialer) = h2c(addr, Duration::from_secs(5));
        let now = Instant::now();
        let mut leases = Vec::new();
        for _ in 0..H2_STREAMS {
            leases.push(conns.checkout(&dialer, now).await.expect("room"));
        }
        let past = conns.checkout(&dialer, now).await;
        assert_eq!(conns.h2_failures.load(Relaxed), 1, "another was tried");
        assert_eq!(past.map(|l| l.h2_number).ok(), Some(1), "the first took it");
        drop(leases);
        assert_eq!(conns.h2.lock().await[0].streams.load(Relaxed), 0);
    }

    /// A backend that allows fewer streams at once than weir would put on
    /// a connection gets another connection past its limit, rather than
    /// requests queued on the first. Against a real h2c server (hyper's)
    /// that allows two.
    #[tokio::test]
    async fn an_http2_backends_stream_limit_opens_another_connection() {
        let addr = h2c_server(2).await;
        let (conns, dialer) = h2c(addr, Duration::from_secs(5));
        let now = Instant::now();
        let mut a = conns.checkout(&dialer, now).await.expect("opens");
        // The connection's task reads the backend's SETTINGS as it hands
        // a request over, after the first (sent with the preface).
        let get = || {
            let mut req = Request::new(crate::body::RequestBody::empty());
            *req.uri_mut() = http::Uri::from_static("http://backend/");
            Box::new(req)
        };
        for _ in 0..2 {
            let answer = a.send(get()).await.expect("an answer");
            assert_eq!(answer.status(), 200);
        }
        assert_eq!(conns.h2.lock().await[0].room(), 2);
        let b = conns.checkout(&dialer, now).await.expect("shares");
        assert_eq!((b.reused, b.h2_number), (true, 1));
        let c = conns.checkout(&dialer, now).await.expect("another");
        assert_eq!((c.reused, c.h2_number), (false, 2));
        assert_eq!(conns.h2_opens.load(Relaxed), 2);
        drop((a, b, c));
    }

    /// A backend that allows no stream for a while (shedding load) gets no
    /// connection per request: its requests share the open connection and
    /// wait there. Against a real h2c server (hyper's) that allows none.
    #[tokio::test]
    async fn a_backend_allowing_no_stream_gets_no_connection_per_request() {
        let addr = h2c_server(0).await;
        let (conns, dialer) = h2c(addr, Duration::from_secs(5));
        let now = Instant::now();
        let mut a = conns.checkout(&dialer, now).await.expect("opens");
        // Its SETTINGS are read as a request is handed over; the request
        // itself gets no stream.
        let end = Instant::now() + Duration::from_secs(5);
        while conns.h2.lock().await[0].allowed.load(Relaxed) != 0 {
            assert!(Instant::now() < end, "the backend's SETTINGS never read");
            let mut req = Request::new(crate::body::RequestBody::empty());
            *req.uri_mut() = http::Uri::from_static("http://backend/");
            let sent = tokio::time::timeout(Duration::from_millis(20), a.send(Box::new(req)));
            // Refused (sent before the SETTINGS came), or waiting.
            let got = sent.await.map(|r| r.map(|a| a.status()));
            assert!(
                !matches!(got, Ok(Ok(_))),
                "answered without a stream: {got:?}"
            );
        }
        let leases: Vec<_> = {
            let mut v = Vec::new();
            for _ in 0..3 {
                v.push(conns.checkout(&dialer, now).await.expect("shares"));
            }
            v
        };
        assert!(leases.iter().all(|l| l.reused && l.h2_number == 1));
        assert_eq!(conns.h2_opens.load(Relaxed), 1);
        drop((a, leases));
    }

    /// Requests that each need a new connection (the backend allows one
    /// stream at once) open theirs at the same time, not one after the
    /// other behind a lock: two connects that hang until `connect_timeout`
    /// end together, both tried. Against a real h2c server (hyper's) that
    /// takes one connection, then leaves the others in its full accept
    /// queue.
    #[tokio::test]
    async fn requests_needing_new_http2_connections_open_them_at_once() {
        let (full, addr) = backlog_of_one();
        full.set_nonblocking(true).expect("nonblocking");
        let l = tokio::net::TcpListener::from_std(full.into()).expect("listener");
        tokio::spawn(async move {
            let Ok((s, _)) = l.accept().await else { return };
            let answer = hyper::service::service_fn(|_req: http::Request<Incoming>| async {
                Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Empty::<
                    bytes::Bytes,
                >::new()))
            });
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .max_concurrent_streams(1)
                .serve_connection(TokioIo::new(s), answer)
                .await;
            // Kept, not accepting: later connects wait in its queue.
            drop(l);
        });
        let timeout = Duration::from_secs(1);
        let (conns, dialer) = h2c(addr, timeout);
        let now = Instant::now();
        let mut a = conns.checkout(&dialer, now).await.expect("opens");
        // The backend's SETTINGS are read as requests are handed over.
        for _ in 0..2 {
            let mut req = Request::new(crate::body::RequestBody::empty());
            *req.uri_mut() = http::Uri::from_static("http://backend/");
            let answer = a.send(Box::new(req)).await.expect("an answer");
            assert_eq!(answer.status(), 200);
        }
        assert_eq!(conns.h2.lock().await[0].room(), 1);
        let _queued = fill_queue(addr);
        let began = Instant::now();
        let (b, c) = tokio::join!(conns.checkout(&dialer, now), conns.checkout(&dialer, now));
        let took = began.elapsed();
        assert_eq!(conns.h2_failures.load(Relaxed), 2, "both tried");
        // One after the other they would take twice the timeout.
        assert!(took < timeout * 18 / 10, "{took:?}");
        // Neither could open one: both go on the open connection.
        assert_eq!(b.map(|l| l.h2_number).ok(), Some(1));
        assert_eq!(c.map(|l| l.h2_number).ok(), Some(1));
        drop(a);
    }

    /// A request waiting for the connection another opens is not left
    /// waiting when that other is dropped mid-open (its client left): it
    /// opens one itself. The backend: a listener whose accept queue is
    /// full, so that a connect waits out `connect_timeout`.
    #[tokio::test]
    async fn a_request_waiting_on_an_open_given_up_opens_its_own() {
        let (_full, addr) = backlog_of_one();
        let _queued = fill_queue(addr);
        let (conns, dialer) = h2c(addr, Duration::from_millis(500));
        let dialer = Arc::new(dialer);
        let now = Instant::now();
        let first = tokio::spawn({
            let (conns, dialer) = (Arc::clone(&conns), Arc::clone(&dialer));
            async move { conns.checkout(&dialer, now).await.map(|l| l.h2_number) }
        });
        tokio::time::timeout(Duration::from_secs(5), async {
            while conns.h2_opening.load(SeqCst) == 0 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the first opening");
        let second = tokio::spawn({
            let (conns, dialer) = (Arc::clone(&conns), Arc::clone(&dialer));
            async move { conns.checkout(&dialer, now).await.map(|l| l.h2_number) }
        });
        tokio::time::timeout(Duration::from_secs(5), async {
            while conns.h2_awaiting.load(SeqCst) == 0 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the second waiting");
        first.abort();
        let got = tokio::time::timeout(Duration::from_secs(5), second)
            .await
            .expect("not left waiting")
            .expect("join");
        assert_eq!(got, Err(Unopened::from(Reason::Timeout)), "it tried itself");
        assert_eq!(conns.h2_opening.load(SeqCst), 0);
        assert_eq!(conns.h2_awaiting.load(SeqCst), 0);
    }

    /// Retries that wait for the new shared HTTP/2 connection one of them
    /// opens fail with it when it cannot be opened, rather than each trying
    /// in turn. The backend: a listener whose accept queue is full, so that
    /// a connect waits out `connect_timeout`.
    #[tokio::test]
    async fn retries_waiting_for_a_failed_http2_open_fail_with_it() {
        let (_full, addr) = backlog_of_one();
        let _queued = fill_queue(addr);
        let (conns, dialer) = h2c(addr, Duration::from_millis(300));
        let (a, b) = tokio::join!(conns.fresh(&dialer, None), conns.fresh(&dialer, None));
        // One of them opened, and counts the failure; the other shared it.
        let (a, b) = (a.expect_err("no connection"), b.expect_err("no connection"));
        assert_eq!((a.reason, b.reason), (Reason::Timeout, Reason::Timeout));
        assert!(a.shared != b.shared, "{a:?} {b:?}");
        assert_eq!(conns.h2_failures.load(Relaxed), 1, "one open tried");
    }
}

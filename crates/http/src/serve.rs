//! Serving HTTP on one client connection: HTTP/2 when the client opens with
//! the HTTP/2 preface (h2c, prior knowledge), HTTP/1.1 otherwise. The
//! connection ends when the client closes it, when it has been idle (no
//! request in flight) for `timeouts.idle`, gracefully when the listener
//! drains (shutdown, a reload removed it) or the route was removed (HTTP/2
//! sends GOAWAY, HTTP/1.1 closes after the response in flight), and at once
//! when the listener's connections are killed.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::time::Instant;
use weir_config::HttpTimeouts;
use weir_core::Reason;
use weir_core::client::Client;
use weir_core::l7::TlsEnd;
use weir_core::listener::Listener;
use weir_core::live::{Live, LiveGuard};
use weir_core::sync::lock;

use crate::io::{Counted, HeaderDeadline};
use crate::proxy::{self, Cx};
use crate::route::{RouteState, Slot};

/// The HTTP/2 connection preface a client opens with.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// What h2 takes of a response for its client before the client has room
/// for it (hyper's default is about 400 KiB). A client that grants every
/// window and then reads nothing leaves this much per stream queued in weir,
/// each piece keeping the backend's read buffer it came in, until
/// `timeouts.send`: measured at about 230 KiB a stream, 60 MiB for 256,
/// where the default let whole answers wait (over 1 MiB each). Two full
/// DATA frames; smaller cost more CPU per byte of a large download.
const STREAM_SEND_BUFFER: usize = 32 << 10;
/// What an HTTP/2 client may send of one request's body before weir reads
/// it, and of all its requests' bodies together. A body weir does not read
/// (the request waits in a queue, or for a connection, or its backend takes
/// no more) holds its stream's share, not the connection's whole window:
/// with the two equal (hyper's default, 1 MiB), one such upload stopped
/// every other upload on the connection. The connection's is what one
/// client connection can hold of weir's memory in unread uploads.
const CLIENT_STREAM_WINDOW: u32 = 256 << 10;
const CLIENT_CONN_WINDOW: u32 = 2 << 20;
/// While a request is in flight, how often the idle timer looks again.
const IDLE_RECHECK: Duration = Duration::from_secs(1);

/// [`ConnState::cut`]'s values.
const NOT_CUT: u8 = 0;
const CUT_IDLE: u8 = 1;
const CUT_SHUTDOWN: u8 = 2;
const CUT_OPERATOR: u8 = 3;
const CUT_FLOOD: u8 = 4;

/// Requests a client may cancel early on one connection before the share
/// of them is looked at; past it, a connection on which the client
/// cancelled at least half of the requests that went toward a backend is
/// closed. Each cancelled request has cost a backend pick, maybe a connect
/// and a request the backend began, and one cancelled mid-answer the
/// backend connection that carried it: a client that opens streams and
/// resets them at once (CVE-2023-44487) would otherwise make weir do that
/// without end while never holding more than `max_concurrent_streams` open.
/// Browsers cancel a few (a page left, a search typed on); not most of
/// hundreds. Requests weir answers itself (a 404, a 421, a refusal) are not
/// counted on either side, so that cheap ones cannot dilute the share.
const MAX_ABANDONED: u64 = 100;

/// A request is cancelled early when the client cancels it within this
/// time of its start, before its answer ended: a flood's requests are
/// cancelled at once, a client's long calls (a watch, a stream, a call past
/// its own deadline) end as the client decides. An answer weir has taken
/// whole from the backend has ended, even if part of it still waits for the
/// client: its backend's work is done and its connection kept.
const EARLY: Duration = Duration::from_secs(1);

/// A gRPC call the client cancels as the deadline it gave (`grpc-timeout`)
/// runs out is the client's timeout, not a flood, when that deadline is at
/// least this: a client with sub-second deadlines through a backend's
/// slowdown cancels most of its calls. A client that claims a deadline must
/// wait for it, so it never cancels faster than one that waits for its
/// answers (`max_concurrent_streams` calls per deadline).
const MIN_DEADLINE: Duration = Duration::from_millis(50);

/// Whether a request the client cancelled after `took` was cancelled early
/// (see [`EARLY`]); `deadline` is the time the client gave the call.
fn cancelled_early(took: Duration, deadline: Option<Duration>) -> bool {
    // Within a tenth of the deadline: the client counts it from its send.
    took < EARLY && !deadline.is_some_and(|d| d >= MIN_DEADLINE && took >= d - d / 10)
}

/// What the requests of one connection share with the connection.
#[derive(Debug)]
pub(crate) struct ConnState {
    in_flight: AtomicUsize,
    began: Instant,
    /// When the last request ended, in microseconds since `began`.
    last_end: AtomicU64,
    /// The request-header deadline passed.
    header_timeout: AtomicBool,
    served: AtomicU64,
    /// `served` + 1 when the first byte of the next request came (HTTP/1.1):
    /// its header is under way while `served` has not moved on.
    header_begun: AtomicU64,
    /// Responses holding a piece of their body that the client has not
    /// taken yet, and how many pieces it took: see `drive`.
    waiting: AtomicUsize,
    taken: AtomicU64,
    /// Why weir closed the connection, if it did (see [`ConnState::cut`]):
    /// what its unfinished requests end with.
    cut: AtomicU8,
    /// What the connection runs after hyper has handed it over (a WebSocket
    /// relay).
    after: Mutex<After>,
    /// The body count of the requests that have no body: always zero.
    pub(crate) no_body: Arc<crate::exchange::BodyCount>,
    /// Requests the client cancelled early (see [`EARLY`]).
    abandoned: AtomicU64,
    /// Requests weir answered itself, without a backend.
    local: AtomicU64,
    /// A request with a body came: its close may leave some of it unread.
    bodies: AtomicBool,
}

/// Work left for a connection's task (a WebSocket relay).
#[derive(Default)]
struct After(Option<Pin<Box<dyn Future<Output = ()> + Send>>>);

impl std::fmt::Debug for After {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "After(relay)"
        } else {
            "After(none)"
        })
    }
}

impl ConnState {
    /// The state of a connection accepted at `began` (its idle time, and
    /// the first request's deadline, count from then).
    pub(crate) fn new(began: Instant) -> ConnState {
        ConnState {
            in_flight: AtomicUsize::new(0),
            began,
            last_end: AtomicU64::new(0),
            header_timeout: AtomicBool::new(false),
            served: AtomicU64::new(0),
            header_begun: AtomicU64::new(0),
            waiting: AtomicUsize::new(0),
            taken: AtomicU64::new(0),
            cut: AtomicU8::new(NOT_CUT),
            after: Mutex::default(),
            no_body: Arc::default(),
            abandoned: AtomicU64::new(0),
            local: AtomicU64::new(0),
            bodies: AtomicBool::new(false),
        }
    }

    /// A request with a body arrived on the connection.
    pub(crate) fn carried_body(&self) {
        if !self.bodies.load(Relaxed) {
            self.bodies.store(true, Relaxed);
        }
    }

    /// Whether the connection's close is a lingering one (see
    /// `io::HeaderDeadline`): a request of it had a body, which an early
    /// answer (a `413`, a refusal) may have left unread.
    pub(crate) fn lingers(&self) -> bool {
        self.bodies.load(Relaxed)
    }

    /// A request the client cancelled before its answer ended, after `took`;
    /// `deadline` is the time a gRPC client gave the call.
    pub(crate) fn cancelled(&self, took: Duration, deadline: Option<Duration>) {
        if cancelled_early(took, deadline) {
            self.abandoned.fetch_add(1, Relaxed);
        }
    }

    /// A request weir answered itself, without a backend.
    pub(crate) fn answered_locally(&self) {
        self.local.fetch_add(1, Relaxed);
    }

    /// Requests that went toward a backend: given one, or cancelled on
    /// their way.
    fn outgoing(&self) -> u64 {
        self.served().saturating_sub(self.local.load(Relaxed))
    }

    /// Whether the client cancels so many of its requests early that the
    /// connection is a flood (see [`MAX_ABANDONED`]).
    fn flooding(&self) -> bool {
        let abandoned = self.abandoned.load(Relaxed);
        abandoned > MAX_ABANDONED && abandoned.saturating_mul(2) >= self.outgoing()
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Relaxed)
    }

    /// Requests begun on this connection so far.
    pub(crate) fn served(&self) -> u64 {
        self.served.load(Relaxed)
    }

    /// The first byte of the next request's header came.
    pub(crate) fn header_begun(&self) {
        self.header_begun.store(self.served() + 1, Relaxed);
    }

    /// A request's header is under way: the connection is not idle, and
    /// the header's own timeout bounds it.
    fn header_arriving(&self) -> bool {
        self.header_begun.load(Relaxed) == self.served() + 1
    }

    pub(crate) fn request_started(&self) {
        self.in_flight.fetch_add(1, Relaxed);
        self.served.fetch_add(1, Relaxed);
    }

    pub(crate) fn request_ended(&self, now: Instant) {
        self.last_end.store(self.micros(now), Relaxed);
        self.in_flight.fetch_sub(1, Relaxed);
    }

    fn micros(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.began).as_micros()).unwrap_or(u64::MAX)
    }

    /// A response body handed hyper a piece for the client.
    pub(crate) fn holding(&self) {
        self.waiting.fetch_add(1, Relaxed);
    }

    /// hyper asked a body that held a piece for more: the client took it
    /// (or there is room for it now).
    pub(crate) fn taken(&self) {
        self.taken.fetch_add(1, Relaxed);
        self.waiting.fetch_sub(1, Relaxed);
    }

    /// A body that held a piece ended without handing on more.
    pub(crate) fn let_go(&self) {
        self.waiting.fetch_sub(1, Relaxed);
    }

    /// Whether a response waits for the client to take a piece, and how
    /// many pieces the client took so far. hyper asks a body for more only
    /// when the client has room for it (TCP's send buffer, HTTP/2's
    /// flow-control window), so the count stops while the client reads
    /// nothing, whatever the backend does.
    fn progress(&self) -> (bool, u64) {
        (self.waiting.load(Relaxed) > 0, self.taken.load(Relaxed))
    }

    /// Pieces of responses the client took so far, over all its requests.
    pub(crate) fn taken_so_far(&self) -> u64 {
        self.taken.load(Relaxed)
    }

    /// Notes that weir closes the connection for `why`: `IdleTimeout`
    /// (`timeouts.send`), `Shutdown` or `Operator`. The first reason stays.
    fn cut(&self, why: Reason) {
        let code = match why {
            Reason::IdleTimeout => CUT_IDLE,
            Reason::Operator => CUT_OPERATOR,
            Reason::ClientError => CUT_FLOOD,
            _ => CUT_SHUTDOWN,
        };
        let _ = self.cut.compare_exchange(NOT_CUT, code, Relaxed, Relaxed);
    }

    /// Why weir closed the connection, if it did: the reason its requests
    /// without an answer, or with an answer cut short, end with (rather
    /// than `client_closed`).
    pub(crate) fn cut_reason(&self) -> Option<Reason> {
        match self.cut.load(Relaxed) {
            NOT_CUT => None,
            CUT_IDLE => Some(Reason::IdleTimeout),
            CUT_OPERATOR => Some(Reason::Operator),
            CUT_FLOOD => Some(Reason::ClientError),
            _ => Some(Reason::Shutdown),
        }
    }

    /// Runs `work` on this connection's task once hyper is done with it.
    pub(crate) fn then_run(&self, work: Pin<Box<dyn Future<Output = ()> + Send>>) {
        lock(&self.after).0 = Some(work);
    }

    pub(crate) fn header_timed_out(&self) {
        self.header_timeout.store(true, Relaxed);
    }

    /// When the connection became idle: its start or its last request's end.
    fn idle_since(&self) -> Instant {
        self.began + Duration::from_micros(self.last_end.load(Relaxed))
    }
}

/// Serves a connection a listener of the snapshot of `state` accepted: its
/// TLS and first timeouts are that snapshot's, even in the moment of a
/// reload between the new sockets accepting and the slot taking `state`.
pub(crate) async fn serve(
    slot: Arc<Slot>,
    state: Arc<RouteState>,
    listener: Arc<Listener>,
    route: usize,
    client: Client,
) {
    let deadline = client.handshake_deadline(listener.handshake_timeout);
    let Client {
        stream,
        peer,
        destination,
        accepted_at,
        live,
        alpn_held,
        ..
    } = client;
    let tls = state.tls.as_ref().map(|t| Arc::clone(&t.config));
    let request_header = state.timeouts.request_header;
    let server = if state.server_vars {
        destination.or_else(|| stream.local_addr().ok())
    } else {
        None
    };
    let Some(tls) = tls else {
        let opens = opens_with_preface(&stream, request_header);
        let http2 = match unless_closed(live.as_deref(), opens).await {
            Ok(Ok(h2)) => h2,
            Ok(Err(reason)) => {
                end(&listener, route, peer, accepted_at, Some(reason));
                return;
            }
            Err(why) => {
                closed(&listener, route, peer, accepted_at, (0, 0), why);
                return;
            }
        };
        let on = On {
            slot,
            state,
            listener,
            route,
            peer,
            server,
            accepted_at,
            proto: "http",
            live,
            tls: None,
        };
        return on.serve(stream, http2).await;
    };
    // The handshake is timed from its first bytes (already there when the
    // listener peeked at the ClientHello), not from a silent client's
    // accept; waiting for them draws on the same deadline (on a socket
    // error, the handshake below fails and says so).
    let first_bytes = tokio::time::timeout_at(deadline, stream.readable());
    match unless_closed(live.as_deref(), first_bytes).await {
        Err(why) => {
            closed(&listener, route, peer, accepted_at, (0, 0), why);
            return;
        }
        Ok(Err(_)) => {
            // Counted before the socket closes, which the client sees.
            handshake_timed_out(&listener, route, peer, accepted_at, Duration::ZERO);
            return;
        }
        Ok(Ok(_)) => {}
    }
    let began = Instant::now();
    let accept = tokio_rustls::TlsAcceptor::from(tls).accept(stream);
    // Held here, so that a handshake that runs out of time is counted
    // before its socket closes.
    tokio::pin!(accept);
    // What is left of the budget the PROXY header and ClientHello drew on.
    let handshake = tokio::time::timeout_at(deadline, accept.as_mut());
    let stream = match unless_closed(live.as_deref(), handshake).await {
        Err(why) => {
            closed(&listener, route, peer, accepted_at, (0, 0), why);
            return;
        }
        Ok(Ok(Ok(stream))) => stream,
        Ok(Ok(Err(e))) => {
            let how = tls_failure(&e);
            tracing::debug!(listener = %listener.name, client = %peer, error = %e, "TLS handshake failed");
            listener.stats.tls_handshake(how, began.elapsed());
            end(&listener, route, peer, accepted_at, None);
            // A client gone before it finished (a TCP health check, a port
            // scan) is counted, not logged: it would crowd out the lines of
            // refusals.
            if how != TlsEnd::ClientClosed {
                let r = listener.routes.get(route);
                listener.log_failed_handshake(r, peer, accepted_at.elapsed(), how.as_str());
            }
            return;
        }
        Ok(Err(_)) => {
            handshake_timed_out(&listener, route, peer, accepted_at, began.elapsed());
            return;
        }
    };
    listener.stats.tls_handshake(TlsEnd::Ok, began.elapsed());
    let tls_conn = stream.get_ref().1;
    let http2 = tls_conn.alpn_protocol() == Some(b"h2");
    // Only a listener with other routes can misdirect a request.
    let tls = (listener.routes.len() > 1).then(|| {
        Box::new(crate::proxy::TlsName {
            // As routes are matched: without a trailing dot.
            sni: tls_conn
                .server_name()
                .map(|n| n.strip_suffix('.').unwrap_or(n).to_ascii_lowercase()),
            alpn: tls_conn.alpn_protocol().map(<[u8]>::to_vec),
            alpn_held,
        })
    });
    let on = On {
        slot,
        state,
        listener,
        route,
        peer,
        server,
        accepted_at,
        proto: "https",
        live,
        tls,
    };
    // Boxed: a TLS connection's state is large, and clear-text connections
    // should not carry it.
    on.serve(Box::new(stream), http2).await;
}

/// A TLS handshake that did not end within the listener's budget.
fn handshake_timed_out(
    listener: &Listener,
    route: usize,
    peer: std::net::SocketAddr,
    accepted_at: Instant,
    took: Duration,
) {
    listener.stats.tls_handshake(TlsEnd::Timeout, took);
    end(
        listener,
        route,
        peer,
        accepted_at,
        Some(Reason::HandshakeTimeout),
    );
}

/// How a failed TLS handshake ended.
fn tls_failure(e: &std::io::Error) -> TlsEnd {
    use std::io::ErrorKind::*;
    if let Some(tls) = e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
        return match tls {
            rustls::Error::NoCertificatesPresented | rustls::Error::InvalidCertificate(_) => {
                TlsEnd::ClientCertificate
            }
            _ => TlsEnd::Protocol,
        };
    }
    match e.kind() {
        UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe => TlsEnd::ClientClosed,
        _ => TlsEnd::Protocol,
    }
}

/// A client connection, past TLS when there is TLS.
struct On {
    slot: Arc<Slot>,
    state: Arc<RouteState>,
    listener: Arc<Listener>,
    route: usize,
    peer: std::net::SocketAddr,
    server: Option<std::net::SocketAddr>,
    accepted_at: Instant,
    proto: &'static str,
    /// Its entry among the listener's live connections.
    live: Option<LiveGuard>,
    tls: Option<Box<crate::proxy::TlsName>>,
}

impl On {
    async fn serve<S>(self, stream: S, http2: bool)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let On {
            slot,
            state,
            listener,
            route,
            peer,
            server,
            accepted_at,
            proto,
            live,
            tls,
        } = self;
        // The route was retired while the connection was being set up (a
        // reload removed it, or changed how its clients are checked): not
        // served under terms it was not checked by, nor drained after a
        // first request.
        if slot.retired.is_cancelled() {
            closed(
                &listener,
                route,
                peer,
                accepted_at,
                (0, 0),
                Reason::Shutdown,
            );
            return;
        }
        let timeouts = state.timeouts;
        let max_header = state.max_header_bytes;
        let max_streams = state.max_concurrent_streams;
        drop(state);
        let conn = Arc::new(ConnState::new(accepted_at));
        let cx = Arc::new(Cx {
            slot: Arc::clone(&slot),
            listener: Arc::clone(&listener),
            route,
            client: peer,
            server,
            client_value: crate::headers::client_value(peer.ip()),
            conn: Arc::clone(&conn),
            proto,
            version: if http2 { "HTTP/2" } else { "HTTP/1.1" },
            live: live.as_ref().map(LiveGuard::entry),
            tls,
        });
        let outcome = if http2 {
            // The streams run in this task, not one task each.
            let streams = crate::streams::Streams::new(timeouts.send, Some(Arc::clone(&conn)));
            let mut builder = http2::Builder::new(streams.clone());
            builder
                .timer(TokioTimer::new())
                .max_header_list_size(max_header)
                .max_concurrent_streams(max_streams)
                .initial_stream_window_size(CLIENT_STREAM_WINDOW)
                .initial_connection_window_size(CLIENT_CONN_WINDOW)
                .max_send_buf_size(STREAM_SEND_BUFFER);
            // Responses that are ready together leave in one write.
            let hold = Arc::new(crate::gather::Hold::default());
            let io = crate::gather::Gather::new(counted(stream, live.as_ref()), Arc::clone(&hold));
            // The executor boxes each stream with its request future: not
            // boxed again here (one allocation per request fewer).
            let service =
                hyper::service::service_fn(move |req| proxy::handle(Arc::clone(&cx), req));
            let c = builder.serve_connection(TokioIo::new(io), service);
            drive(
                crate::streams::Run::new(c, &streams, hold),
                &conn,
                &listener,
                &slot,
                live.as_deref(),
                timeouts,
                |run| {
                    run.get_mut().conn().graceful_shutdown();
                },
            )
            .await
        } else {
            let io = HeaderDeadline::new(
                counted(stream, live.as_ref()),
                Arc::clone(&conn),
                timeouts.request_header,
            );
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                // `HeaderDeadline` bounds the header and `drive` the rest
                // between requests; hyper's own header timer would also cut
                // kept-alive connections at 30 s whatever `timeouts.idle` says.
                .header_read_timeout(None)
                .keep_alive(true)
                // The request header must fit: a larger one is answered 431.
                .max_buf_size(usize::try_from(max_header).unwrap_or(usize::MAX).max(8192));
            let c = builder
                .serve_connection(
                    TokioIo::new(io),
                    hyper::service::service_fn(move |req| proxy::handle(Arc::clone(&cx), req)),
                )
                .with_upgrades();
            drive(c, &conn, &listener, &slot, live.as_deref(), timeouts, |c| {
                c.graceful_shutdown();
            })
            .await
        };
        if conn.cut_reason() == Some(Reason::ClientError)
            && let Some(r) = listener.routes.get(route)
        {
            r.stats.http_reset_floods.fetch_add(1, Relaxed);
            if let weir_telemetry::Verdict::Write { suppressed } = r.stats.reset_flood_lines.check()
            {
                tracing::warn!(
                    listener = %listener.name,
                    route = %r.name,
                    client = %peer,
                    abandoned = conn.abandoned.load(Relaxed),
                    requests = conn.outgoing(),
                    suppressed,
                    "a client cancelled most of its requests at once (HTTP/2 rapid reset); its connection is closed"
                );
            }
        }
        let after = lock(&conn.after).0.take();
        if let Some(relay) = after {
            relay.await;
        }
        if let Some(live) = live
            .as_deref()
            .filter(|l| l.closed_by() == Some(Reason::Operator))
        {
            // Closed by an operator: the connection's end says so.
            let bytes = (live.sent(), live.received());
            closed(&listener, route, peer, accepted_at, bytes, Reason::Operator);
            return;
        }
        let reason = match outcome {
            _ if conn.header_timeout.load(Relaxed) => Some(Reason::HeaderTimeout),
            Ok(()) => None,
            // hyper answered these itself and closed: the connection is
            // counted refused, with its access-log line, as a slow header.
            Err(e) if e.is_parse_too_large() => {
                count_refusal(&listener, route, 431);
                Some(Reason::HeaderTooLarge)
            }
            Err(e) if e.is_parse() => {
                count_refusal(&listener, route, 400);
                Some(Reason::BadRequest)
            }
            Err(_) => None,
        };
        end(&listener, route, peer, accepted_at, reason);
    }
}

/// Counts an answer hyper gave on its own (a header it could not parse).
fn count_refusal(listener: &Listener, route: usize, status: u16) {
    if let Some(r) = listener.routes.get(route) {
        r.stats.http_refused(status);
    }
}

/// The end of a connection: its lifetime on the route, and when it served
/// nothing because the client was too slow or sent nothing, a refusal.
fn end(
    listener: &Listener,
    route: usize,
    peer: std::net::SocketAddr,
    accepted_at: Instant,
    refused: Option<Reason>,
) {
    let took = accepted_at.elapsed();
    let r = listener.routes.get(route);
    if let Some(r) = r {
        r.stats.connection_duration.observe(took);
    }
    if let Some(reason) = refused {
        listener.refuse_on(r, peer, took, reason);
    }
}

/// `work`, unless the connection is closed first (by an operator, or at the
/// end of its listener's `shutdown_timeout`): then why.
async fn unless_closed<T>(live: Option<&Live>, work: impl Future<Output = T>) -> Result<T, Reason> {
    tokio::select! {
        biased;
        r = work => Ok(r),
        why = weir_core::live::closed(live) => Err(why),
    }
}

/// The end of a connection closed for `why` (an operator, a shutdown)
/// after `bytes` went each way: its lifetime on the route and its line.
fn closed(
    listener: &Listener,
    route: usize,
    peer: std::net::SocketAddr,
    accepted_at: Instant,
    bytes: (u64, u64),
    why: Reason,
) {
    let took = accepted_at.elapsed();
    let r = listener.routes.get(route);
    if let Some(r) = r {
        r.stats.connection_duration.observe(took);
    }
    listener.log_end(r, peer, bytes, took, why);
}

/// Waits for the client's first bytes: true when they are the HTTP/2
/// preface. Fails with `HeaderTimeout` when nothing decisive came in time,
/// `ClientClosed` when the client left.
async fn opens_with_preface(stream: &TcpStream, within: Duration) -> Result<bool, Reason> {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; H2_PREFACE.len()];
    let mut seen = 0;
    loop {
        // Any byte more decides or extends the prefix (an HTTP/1.0 request
        // may be shorter than the preface). Peeked bytes already seen clear
        // the socket's readiness: a client that sent `P` and stalls costs a
        // wait for its next segment, not a poll every few milliseconds.
        let want = seen + 1;
        match tokio::time::timeout_at(
            deadline,
            weir_core::peek_more(stream, &mut buf, &mut seen, want),
        )
        .await
        {
            Err(_) => return Err(Reason::HeaderTimeout),
            Ok(Err(why)) => return Err(why),
            Ok(Ok(())) => {}
        }
        if !H2_PREFACE.starts_with(&buf[..seen]) {
            return Ok(false);
        }
        if seen == H2_PREFACE.len() {
            return Ok(true);
        }
    }
}

/// The client's stream, counted in its live entry when it has one.
fn counted<S>(stream: S, live: Option<&LiveGuard>) -> Counted<S> {
    Counted::new(stream, live.map(LiveGuard::entry))
}

/// Runs a hyper connection until it ends, shutting it down gracefully when
/// idle or drained, and dropping it when the listener's connections are
/// killed, its client takes nothing of a response for `timeouts.send`, or
/// it still carries something the listener's `shutdown_timeout` after it
/// was told to close (its route removed, counted from the removal; its
/// listener drained, from when this connection saw it).
async fn drive<C, E>(
    conn: C,
    state: &ConnState,
    listener: &Listener,
    slot: &Slot,
    live: Option<&Live>,
    timeouts: HttpTimeouts,
    graceful: impl Fn(std::pin::Pin<&mut C>),
) -> Result<(), E>
where
    C: Future<Output = Result<(), E>>,
{
    let idle = timeouts.idle;
    tokio::pin!(conn);
    let mut drain = std::pin::pin!(listener.drain.cancelled());
    let mut retired = std::pin::pin!(slot.retired.cancelled());
    let mut kill = std::pin::pin!(listener.kill.cancelled());
    // The first request's head must come within `request_header` of the
    // connection's start, as an HTTP/1.1 one must (`HeaderDeadline`, which
    // has set the flag by then): an HTTP/2 client that says nothing, or
    // stalls inside its first HEADERS, is not held for `idle` and `send`.
    let first_by = state.began + timeouts.request_header;
    let mut idle_timer = std::pin::pin!(tokio::time::sleep_until(
        (state.idle_since() + idle).min(first_by)
    ));
    let mut watcher = weir_core::cancel::Watcher::new();
    let mut draining = false;
    // While requests are in flight the timer looks every `recheck` (for a
    // stalled client); else it waits for the idle deadline.
    let recheck = idle.min(IDLE_RECHECK).min(timeouts.send);
    let mut rechecking = false;
    // Since when a response has waited for the client with nothing taken,
    // as seen at the timer's looks; and the count of pieces taken then.
    let mut stalled: Option<Instant> = None;
    let mut taken = 0;
    // When the graceful close began: bounded by `timeouts.send` once nothing
    // is in flight.
    let mut drained_at: Option<Instant> = None;
    // When a connection told to close (its listener or route removed, or
    // shutdown) is closed whatever it still carries: the listener's
    // `shutdown_timeout` after it was told. A stream that lasts for hours,
    // or a client that ignores the GOAWAY's PING and keeps opening streams,
    // would otherwise keep a removed route's rules and pools in use.
    let mut stop_at: Option<Instant> = None;
    std::future::poll_fn(|cx| {
        // The requests served in this poll share one clock reading.
        let _turn = crate::clock::turn();
        // The connection first: it is what wakes this task almost always.
        if let Poll::Ready(r) = conn.as_mut().poll(cx) {
            return Poll::Ready(r);
        }
        if state.flooding() {
            state.cut(Reason::ClientError);
            return Poll::Ready(Ok(()));
        }
        if let Some(live) = live
            && let Poll::Ready(why) = live.poll_closed(cx)
        {
            state.cut(why);
            return Poll::Ready(Ok(()));
        }
        if !rechecking && state.in_flight() > 0 {
            // Busy again after a rest: the idle deadline may be far off
            // (the stop, if there is one, may come first).
            rechecking = true;
            let next = crate::clock::now() + recheck;
            idle_timer
                .as_mut()
                .reset(stop_at.map_or(next, |s| next.min(s)));
        }
        // Draining too: hyper's graceful end waits for the responses in
        // flight, and a client that takes none must not hold them for ever.
        while idle_timer.as_mut().poll(cx).is_ready() {
            let now = crate::clock::now();
            if stop_at.is_some_and(|t| t <= now) {
                state.cut(Reason::Shutdown);
                return Poll::Ready(Ok(()));
            }
            // The timer never sleeps past the stop.
            let until = |t: Instant| stop_at.map_or(t, |s| t.min(s));
            if state.served() == 0 && first_by <= now {
                state.header_timed_out();
                return Poll::Ready(Ok(()));
            }
            let idle_at = state.idle_since() + idle;
            if state.in_flight() == 0
                && drained_at.is_some_and(|d| now.saturating_duration_since(d) >= timeouts.send)
            {
                // Nothing left to wait for but the close itself: a client
                // that reads nothing keeps the GOAWAY (or the last answers)
                // from being written, for as long as TCP lets it.
                state.cut(Reason::IdleTimeout);
                return Poll::Ready(Ok(()));
            }
            // A request's header under way is no rest (nginx and HAProxy
            // also stop the keep-alive timer at its first byte): closing
            // now would drop it unanswered.
            let arriving = state.header_arriving();
            if state.in_flight() == 0 && idle_at <= now && !arriving {
                if !draining {
                    graceful(conn.as_mut());
                    draining = true;
                    drained_at = Some(now);
                    // hyper starts its graceful end when next polled.
                    cx.waker().wake_by_ref();
                }
                idle_timer.as_mut().reset(until(now + recheck));
            } else if state.in_flight() > 0 {
                let (waiting, now_taken) = state.progress();
                if !waiting || now_taken != taken {
                    stalled = None;
                    taken = now_taken;
                } else if now.saturating_duration_since(*stalled.get_or_insert(now))
                    >= timeouts.send
                {
                    // The client reads nothing: its responses would hold
                    // their backends' connections and slots for ever.
                    state.cut(Reason::IdleTimeout);
                    return Poll::Ready(Ok(()));
                }
                // Not idle while a request is in flight (a stream may last
                // hours): looked at again a little later.
                idle_timer.as_mut().reset(until(now + recheck));
            } else if arriving && idle_at <= now {
                idle_timer.as_mut().reset(until(now + recheck));
            } else {
                rechecking = false;
                stalled = None;
                // Draining: the close's deadline comes before the idle one.
                let next = match drained_at {
                    Some(d) => idle_at.min(d + timeouts.send),
                    None => idle_at,
                };
                idle_timer.as_mut().reset(until(next));
            }
        }
        // The shared signals: polled (and their locks taken) only when one
        // of them fired.
        let stop = watcher.poll(cx, |cx| {
            if kill.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Stop::Now);
            }
            if drain.as_mut().poll(cx).is_ready() || retired.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Stop::Gracefully);
            }
            Poll::Pending
        });
        match stop {
            Poll::Ready(Stop::Now) => {
                state.cut(Reason::Shutdown);
                return Poll::Ready(Ok(()));
            }
            Poll::Ready(Stop::Gracefully) => {
                let now = crate::clock::now();
                let stop = *stop_at.get_or_insert_with(|| slot.stop_at(listener.shutdown_timeout));
                idle_timer.as_mut().reset((now + recheck).min(stop));
                if !draining {
                    graceful(conn.as_mut());
                    draining = true;
                    drained_at = Some(now);
                    // hyper starts its graceful end when next polled.
                    cx.waker().wake_by_ref();
                }
            }
            _ => {}
        }
        Poll::Pending
    })
    .await
}

enum Stop {
    Now,
    Gracefully,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_cancelled_at_its_deadline_is_not_cancelled_early() {
        let ms = Duration::from_millis;
        assert!(cancelled_early(ms(2), None));
        assert!(!cancelled_early(ms(1000), None));
        // Cancelled as its 200 ms ran out (within a tenth), or later.
        assert!(!cancelled_early(ms(185), Some(ms(200))));
        assert!(!cancelled_early(ms(400), Some(ms(200))));
        // Long before its deadline, or a deadline too short to bound a flood.
        assert!(cancelled_early(ms(20), Some(ms(200))));
        assert!(cancelled_early(ms(175), Some(ms(200))));
        assert!(cancelled_early(ms(10), Some(ms(10))));
        assert!(cancelled_early(Duration::ZERO, Some(Duration::ZERO)));
    }

    /// The thread's voluntary context switches so far: each time it slept.
    fn sleeps() -> u64 {
        std::fs::read_to_string("/proc/thread-self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
                    .and_then(|n| n.trim().parse().ok())
            })
            .unwrap_or(0)
    }

    /// A client that sends a prefix of the HTTP/2 preface and stalls is
    /// waited for, not polled: the thread sleeps a few times over the
    /// header timeout, not every few milliseconds. The decision itself
    /// follows the bytes: the preface, another request, or too little.
    #[test]
    fn a_stalled_prefix_of_the_preface_is_waited_for_not_polled() {
        use std::io::Write;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let addr = l.local_addr().expect("addr");
            let decide = |sent: &'static [u8]| {
                let l = &l;
                async move {
                    let mut client = std::net::TcpStream::connect(addr).expect("connect");
                    client.write_all(sent).expect("write");
                    let (server, _) = l.accept().await.expect("accept");
                    let before = sleeps();
                    let r = opens_with_preface(&server, Duration::from_millis(400)).await;
                    (r, sleeps() - before)
                }
            };
            let (r, slept) = decide(b"P").await;
            assert_eq!(r, Err(Reason::HeaderTimeout));
            assert!(slept < 20, "slept {slept} times in 400 ms");
            assert_eq!(decide(H2_PREFACE).await.0, Ok(true));
            assert_eq!(decide(b"GET / HTTP/1.0\r\n\r\n").await.0, Ok(false));
        });
    }
}

//! The bodies weir streams: a client's request body on its way to the
//! backend (counted, and cut at `max_body_bytes`), and a response body on
//! its way to the client (weir's own short answer, or the backend's,
//! counted, cut when the backend goes quiet for `upstream_idle`, and ending
//! the exchange and giving its connection back to the pool at its end).
//! Frames pass through as they come: nothing is buffered whole.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};
use weir_core::Reason;

use crate::exchange::{BodyCount, COMPLETED, Exchange};
use crate::upstream::Lease;

/// The error of a body weir cut or that failed.
#[derive(Debug)]
pub(crate) struct BodyError(pub(crate) Reason);

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0.as_str())
    }
}

impl std::error::Error for BodyError {}

/// A client's request body, as sent to the backend.
#[derive(Debug)]
pub(crate) struct RequestBody {
    inner: Option<Incoming>,
    /// Bytes so far, and whether they went over `limit`.
    count: Arc<BodyCount>,
    limit: Option<u64>,
    /// Runs while the client sends nothing: past `idle_for`
    /// (`timeouts.request_body`) the upload is cut, unless the answer moved
    /// meanwhile (the call is not idle). Armed at the first wait, moved on
    /// by every piece.
    idle: Option<Pin<Box<Sleep>>>,
    idle_for: Duration,
    /// The route's identity headers (see `RouteState::identity`), when it
    /// has any: its trailers lose them too.
    identity: Option<Arc<[http::HeaderName]>>,
}

impl RequestBody {
    pub(crate) fn new(
        inner: Incoming,
        count: Arc<BodyCount>,
        limit: Option<u64>,
        idle_for: Duration,
        identity: Option<Arc<[http::HeaderName]>>,
    ) -> RequestBody {
        // A body announced but not yet begun is being uploaded too: a client
        // that sends none of it must not have the backend blamed.
        count.uploading.store(!inner.is_end_stream(), Relaxed);
        RequestBody {
            inner: Some(inner),
            count,
            limit,
            idle: None,
            idle_for,
            identity,
        }
    }

    /// A body with nothing in it (a copy of a bodiless request, for a retry).
    pub(crate) fn empty() -> RequestBody {
        RequestBody {
            inner: None,
            count: Arc::default(),
            limit: None,
            idle: None,
            idle_for: Duration::ZERO,
            identity: None,
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        if this.count.is_cut() {
            this.inner = None;
            this.count.uploading.store(false, Relaxed);
            return Poll::Ready(Some(Err(BodyError(Reason::ClientClosed))));
        }
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(mut frame))) => {
                // Trailers come last: the upload is over, whatever a
                // chunked body's end-of-stream says.
                let identity = this.identity.as_deref().unwrap_or_default();
                let trailers = frame
                    .trailers_mut()
                    .map(|t| crate::headers::clean_request_trailers(t, identity));
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    let total = this.count.bytes.fetch_add(n, Relaxed) + n;
                    if this.limit.is_some_and(|l| total > l) {
                        this.count.over.store(true, Relaxed);
                        this.inner = None;
                        return Poll::Ready(Some(Err(BodyError(Reason::BodyTooLarge))));
                    }
                }
                let more =
                    trailers.is_none() && this.inner.as_ref().is_some_and(|i| !i.is_end_stream());
                this.count.uploading.store(more, Relaxed);
                this.count.awaiting_client.store(false, Relaxed);
                let now = crate::clock::now();
                this.count
                    .moved_at
                    .store(crate::clock::micros(now), Relaxed);
                if let Some(idle) = &mut this.idle {
                    idle.as_mut().reset(now + this.idle_for);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(_))) => {
                this.count.uploading.store(false, Relaxed);
                this.count.client_failed.store(true, Relaxed);
                this.inner = None;
                Poll::Ready(Some(Err(BodyError(Reason::ClientError))))
            }
            Poll::Ready(None) => {
                this.count.uploading.store(false, Relaxed);
                Poll::Ready(None)
            }
            Poll::Pending => {
                this.count.awaiting_client.store(true, Relaxed);
                this.count.wait(cx.waker());
                // Cut between the look above and the registration.
                if this.count.is_cut() {
                    this.inner = None;
                    this.count.uploading.store(false, Relaxed);
                    return Poll::Ready(Some(Err(BodyError(Reason::ClientClosed))));
                }
                // A client that trickles its body (or stops) would hold the
                // backend's connection, past the pool's count once the
                // response is over, and its own for good.
                let idle_for = this.idle_for;
                let timer = this
                    .idle
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle_for)));
                loop {
                    if timer.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    // The answer went on meanwhile: silent for as long
                    // after its last piece.
                    let answered = crate::clock::from_micros(this.count.answered_at.load(Relaxed));
                    match answered.map(|a| a + idle_for) {
                        Some(next) if next > timer.deadline() => timer.as_mut().reset(next),
                        _ => break,
                    }
                }
                this.count.uploading.store(false, Relaxed);
                this.count.stalled.store(true, Relaxed);
                this.inner = None;
                Poll::Ready(Some(Err(BodyError(Reason::IdleTimeout))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

/// A response body on its way to the client.
#[derive(Debug)]
pub(crate) struct ResponseBody {
    source: Source,
    exchange: Option<Box<Exchange>>,
}

#[derive(Debug)]
enum Source {
    /// weir's own answer, and whether it holds a piece the client has not
    /// taken (counted in the client connection's `ConnState`, as the
    /// backend's `holding` below): an HTTP/2 client that gives it no window
    /// would otherwise keep its request in flight, and the connection open,
    /// with no timer running.
    Full(Option<Bytes>, bool),
    /// The backend's.
    Upstream {
        inner: Incoming,
        /// Armed the first time the body makes the client wait: a response
        /// that arrives whole never touches the timer.
        idle: Option<Pin<Box<Sleep>>>,
        idle_for: Duration,
        /// `timeouts.request`: the body must have ended by then.
        until: Option<Instant>,
        /// The connection it came on, given back to the pool at the end.
        lease: Option<Lease>,
        /// The head or the last piece went to hyper, which has not asked for
        /// more yet (counted in the client connection's `ConnState`): with
        /// the client reading nothing, it never will.
        holding: bool,
        /// A gRPC call from an HTTP/2 client: a failure of the body ends it
        /// with trailers carrying a `grpc-status`, not a reset the client
        /// would read as INTERNAL.
        grpc: bool,
        /// The backend's next eviction (`drain_timeout`, `close_on_down`),
        /// which cuts a stream that outlasts it; watched, as `idle`, from
        /// the first time the body makes the client wait.
        evicted: Option<crate::exchange::Evicted>,
    },
}

impl ResponseBody {
    /// weir's own answer, which ends `exchange` when sent.
    pub(crate) fn full(bytes: Bytes, exchange: Option<Box<Exchange>>) -> ResponseBody {
        // An answer to HEAD has no content (RFC 9110 §9.3.2): hyper leaves it
        // out for HTTP/1.1, but would send it to an HTTP/2 client as data,
        // which h2 clients refuse as a protocol error.
        let head = exchange
            .as_ref()
            .is_some_and(|x| x.method == http::Method::HEAD);
        let bytes = (!bytes.is_empty() && !head).then_some(bytes);
        let holding = bytes.is_some() && exchange.is_some();
        if holding && let Some(x) = &exchange {
            x.conn.holding();
            crate::streams::note_holding();
        }
        ResponseBody {
            source: Source::Full(bytes, holding),
            exchange,
        }
    }

    /// The backend's response body, its head on its way to the client.
    pub(crate) fn upstream(
        inner: Incoming,
        idle_for: Duration,
        until: Option<Instant>,
        lease: Lease,
        exchange: Box<Exchange>,
        grpc: bool,
    ) -> ResponseBody {
        exchange.conn.holding();
        ResponseBody {
            source: Source::Upstream {
                inner,
                idle: None,
                idle_for,
                until,
                lease: Some(lease),
                holding: true,
                grpc,
                evicted: None,
            },
            exchange: Some(exchange),
        }
    }

    fn end(&mut self, reason: &'static str) {
        if reason != COMPLETED
            && let Some(x) = &self.exchange
        {
            x.body.cut();
        }
        if let Source::Full(_, holding) = &mut self.source
            && std::mem::take(holding)
            && let Some(x) = &self.exchange
        {
            x.conn.let_go();
        }
        if let Source::Upstream { lease, holding, .. } = &mut self.source {
            if let Some(lease) = lease.take() {
                // A backend that answered before the whole request body came
                // (a 401, a redirect) still has the rest of it to take: its
                // connection is busy until then, and must not wait in the
                // idle list, where each request would try it in vain.
                let uploading = self
                    .exchange
                    .as_ref()
                    .is_some_and(|x| x.body.uploading.load(Relaxed));
                lease.release(reason == COMPLETED && !uploading);
            }
            if std::mem::take(holding)
                && let Some(x) = &self.exchange
            {
                x.conn.let_go();
            }
        }
        if let Some(mut x) = self.exchange.take() {
            // weir's own answers carry their reason already.
            if x.reason == COMPLETED {
                x.reason = reason;
            }
            x.finish();
        }
    }

    fn sent(&mut self, n: usize) {
        if let Some(x) = self.exchange.as_mut() {
            x.bytes_out += n as u64;
            if x.body.uploading.load(Relaxed) {
                let now = crate::clock::micros(crate::clock::now());
                x.body.answered_at.store(now, Relaxed);
            }
        }
    }
}

/// When a silent backend's body is cut: after `idle_for` of silence, and
/// not past the request's own deadline.
fn wake_at(idle_for: Duration, until: Option<Instant>) -> Instant {
    let idle = crate::clock::now() + idle_for;
    until.map_or(idle, |u| idle.min(u))
}

impl ResponseBody {
    /// Whether every byte of a body of known length has come, its end not
    /// yet seen: an HTTP/2 backend may send its last data and its
    /// END_STREAM in separate frames (Go servers do, for a body of more than
    /// 4 KiB), and hyper stops polling a body for an HTTP/1.1 client once
    /// the length it announced is written.
    fn all_of_it_came(&self) -> bool {
        matches!(&self.source, Source::Upstream { inner, .. } if inner.size_hint().exact() == Some(0))
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        if self.exchange.is_none() {
            return;
        }
        // hyper need not poll a body to its end once it has every byte (a
        // known length, a HEAD answer). Dropped before that, the client went
        // away (or hyper gave up on it, or weir on a client that read
        // nothing for `timeouts.send`), and the backend's connection cannot
        // be reused mid-body.
        if self.is_end_stream() || self.all_of_it_came() {
            self.end(COMPLETED);
        } else {
            let why = if crate::streams::cutting() {
                Reason::IdleTimeout
            } else {
                self.exchange
                    .as_ref()
                    .and_then(|x| x.conn.cut_reason())
                    .unwrap_or(Reason::ClientClosed)
            };
            self.end(why.as_str());
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        let mut polled = match &mut this.source {
            Source::Full(bytes, holding) => {
                let conn = this.exchange.as_ref().map(|x| &x.conn);
                if std::mem::take(holding)
                    && let Some(conn) = conn
                {
                    conn.taken();
                    crate::streams::note_taken();
                }
                match bytes.take() {
                    Some(b) => {
                        // Handed on: held until hyper asks for the end,
                        // which it does once the client has room for it.
                        if let Some(conn) = conn {
                            *holding = true;
                            conn.holding();
                            crate::streams::note_holding();
                        }
                        Poll::Ready(Some(Ok(Frame::data(b))))
                    }
                    None => Poll::Ready(None),
                }
            }
            Source::Upstream {
                inner,
                idle,
                idle_for,
                until,
                holding,
                evicted,
                ..
            } => {
                let conn = this.exchange.as_ref().map(|x| &x.conn);
                if std::mem::take(holding)
                    && let Some(conn) = conn
                {
                    conn.taken();
                    crate::streams::note_taken();
                }
                match Pin::new(inner).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Some(idle) = idle {
                            idle.as_mut().reset(wake_at(*idle_for, *until));
                        }
                        if let Some(conn) = conn {
                            *holding = true;
                            conn.holding();
                            crate::streams::note_holding();
                        }
                        Poll::Ready(Some(Ok(frame)))
                    }
                    Poll::Ready(Some(Err(_))) => {
                        // A backend's stream reset because weir ended the
                        // upload is the upload's doing, not the backend's.
                        let reason = match this.exchange.as_ref().map(|x| &x.body) {
                            Some(b) if b.stalled.load(Relaxed) => Reason::IdleTimeout,
                            Some(b) if b.over.load(Relaxed) => Reason::BodyTooLarge,
                            Some(b) if b.ended_by_client() => Reason::ClientError,
                            _ => Reason::BackendError,
                        };
                        Poll::Ready(Some(Err(BodyError(reason))))
                    }
                    Poll::Ready(None) => Poll::Ready(None),
                    Poll::Pending => {
                        let timer = idle.get_or_insert_with(|| {
                            Box::pin(tokio::time::sleep_until(wake_at(*idle_for, *until)))
                        });
                        if evicted.is_none() {
                            *evicted = this.exchange.as_ref().and_then(|x| x.evicted());
                        }
                        match timer.as_mut().poll(cx) {
                            // The request's own deadline, or the backend's silence.
                            Poll::Ready(()) => Poll::Ready(Some(Err(BodyError(
                                if until.is_some_and(|u| timer.deadline() >= u) {
                                    Reason::UpstreamTimeout
                                } else {
                                    Reason::IdleTimeout
                                },
                            )))),
                            // The backend left service and its drain ran out.
                            Poll::Pending => {
                                match evicted.as_mut().map(|e| e.0.as_mut().poll(cx)) {
                                    Some(Poll::Ready(why)) => {
                                        Poll::Ready(Some(Err(BodyError(why))))
                                    }
                                    _ => Poll::Pending,
                                }
                            }
                        }
                    }
                }
            }
        };
        match &mut polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len();
                    this.sent(n);
                } else if let Some(trailers) = frame.trailers_mut() {
                    crate::headers::clean_trailers(trailers);
                    // Trailers come last, and the servers poll no further:
                    // the response is whole (a chunked HTTP/1.1 body does
                    // not say it ended before it is polled again).
                    this.end(COMPLETED);
                }
            }
            Poll::Ready(Some(Err(e))) => {
                let reason = e.0;
                let client = (this.exchange.as_ref()).is_some_and(|x| x.body.ended_by_client());
                this.end(reason.as_str());
                if matches!(this.source, Source::Upstream { grpc: true, .. }) {
                    // The backend's part is over: the client gets the status.
                    this.source = Source::Full(None, false);
                    return Poll::Ready(Some(Ok(Frame::trailers(crate::errors::grpc_trailers(
                        reason, client,
                    )))));
                }
            }
            Poll::Ready(None) => this.end(COMPLETED),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.source {
            Source::Full(bytes, _) => bytes.is_none(),
            Source::Upstream { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.source {
            Source::Full(bytes, _) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            Source::Upstream { inner, .. } => inner.size_hint(),
        }
    }
}

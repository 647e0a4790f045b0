//! One request and its response as the logs and counters see them: filled
//! in as the request goes through the proxy, finished once when the
//! response's body has ended (or the client left), and then counted on the
//! route and the backend and written as one access-log line.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use http::{HeaderValue, Method, Uri};
use tokio::time::Instant;
use weir_core::listener::Listener;
use weir_core::pool::Pool;
use weir_telemetry::{HttpAccessRecord, count};

use crate::serve::ConnState;
use crate::trace::span::{Kind, Recording};

/// The access-log `reason` of a request that got its whole response.
pub(crate) const COMPLETED: &str = "completed";

/// What a request's body tells the rest of the exchange.
#[derive(Debug, Default)]
pub(crate) struct BodyCount {
    /// Request body bytes, counted as they stream.
    pub(crate) bytes: AtomicU64,
    /// The body went over `max_body_bytes` (the answer is then 413).
    pub(crate) over: AtomicBool,
    /// Reading the body from the client failed (it left mid-upload, or
    /// broke the framing).
    pub(crate) client_failed: AtomicBool,
    /// The request has a body and not all of it came yet: the client is
    /// still uploading (or has not begun).
    pub(crate) uploading: AtomicBool,
    /// The client sent nothing of its body for `timeouts.request_body`.
    pub(crate) stalled: AtomicBool,
    /// The body was last asked for a piece the client had not sent yet:
    /// weir waits on the client, not on a backend that stopped taking it.
    pub(crate) awaiting_client: AtomicBool,
    /// When the backend was last handed a piece of the body
    /// ([`crate::clock::micros`]; 0: never): an upload that moves is not
    /// a backend slow to answer.
    pub(crate) moved_at: AtomicU64,
    /// When a piece of the answer last went to the client while the body
    /// was still coming (as `moved_at`): a call that streams its answer
    /// is not idle while its client has nothing to send (a gRPC stream).
    pub(crate) answered_at: AtomicU64,
    /// The response ended short (weir cut it, or its client went): what is
    /// left of the body must not reach the backend, nor its end look like
    /// the client's (a streaming call would take a cut upload for whole).
    cut: AtomicBool,
    /// The body's task, waiting for the client, to wake when cut.
    waiting: futures_util::task::AtomicWaker,
}

impl BodyCount {
    /// Ends what is left of the body: its next poll fails, so the backend's
    /// stream is reset (HTTP/2) or its connection closed, not ended.
    pub(crate) fn cut(&self) {
        if self.uploading.load(Relaxed) {
            self.cut.store(true, Relaxed);
            self.waiting.wake();
        }
    }

    pub(crate) fn is_cut(&self) -> bool {
        self.cut.load(Relaxed)
    }

    /// The body waits for the client with `waker`.
    pub(crate) fn wait(&self, waker: &std::task::Waker) {
        self.waiting.register(waker);
    }

    /// The client's body, not the backend, ended the request: over the
    /// limit, or the client failed while sending it.
    pub(crate) fn ended_by_client(&self) -> bool {
        self.over.load(Relaxed) || self.client_failed.load(Relaxed) || self.stalled.load(Relaxed)
    }
}

/// See [`Exchange::evicted`].
pub(crate) struct Evicted(
    pub(crate) std::pin::Pin<Box<dyn std::future::Future<Output = weir_core::Reason> + Send>>,
);

impl std::fmt::Debug for Evicted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Evicted")
    }
}

/// The record of one request. Its fields are shared, not copied, from the
/// request (`Uri` and `HeaderValue` clones are reference counts), so a
/// request pays no allocation for its log line.
#[derive(Debug)]
pub(crate) struct Exchange {
    pub(crate) listener: Arc<Listener>,
    pub(crate) route: usize,
    pub(crate) conn: Arc<ConnState>,
    pub(crate) client: SocketAddr,
    pub(crate) rule: Option<Arc<str>>,
    /// The policy that refused the request.
    pub(crate) policy: Option<Arc<str>>,
    /// The W3C trace id, with `[tracing]`.
    pub(crate) trace_id: Option<[u8; 16]>,
    /// The spans of a sampled request, with `[tracing.otlp]`.
    pub(crate) recording: Option<Box<Recording>>,
    pub(crate) method: Method,
    pub(crate) uri: Uri,
    /// The `Host` header, when the URI has no authority (HTTP/1.1).
    pub(crate) host: Option<HeaderValue>,
    pub(crate) version: &'static str,
    pub(crate) user_agent: Option<HeaderValue>,
    pub(crate) request_id: Option<HeaderValue>,
    pub(crate) started: Instant,
    /// Whether its line is written (`[log] access_log` when it came).
    pub(crate) access_log: bool,
    /// The time a gRPC client gave the call (`grpc-timeout`).
    pub(crate) deadline: Option<Duration>,
    pub(crate) body: Arc<BodyCount>,
    pub(crate) bytes_out: u64,
    pub(crate) status: u16,
    pub(crate) upstream: Option<Duration>,
    /// The backend that answered, or the last one tried (named in the log).
    pub(crate) backend: Option<(Arc<Pool>, usize)>,
    /// Whether [`Exchange::backend`] holds its slot and counts the request
    /// in flight; one that failed gives both back while another is sought.
    holding: bool,
    /// The backend's evictions when it was picked: a request that lasts
    /// (a stream, a WebSocket) ends at the next ([`Exchange::evicted`]).
    evictions_at: u64,
    /// The backend of the pool the request's sticky cookie names.
    pub(crate) sticky: Option<u32>,
    pub(crate) reason: &'static str,
    finished: bool,
}

impl Exchange {
    /// The record of `req`, which has just arrived.
    pub(crate) fn start<B: http_body::Body>(
        listener: Arc<Listener>,
        route: usize,
        conn: Arc<ConnState>,
        client: SocketAddr,
        req: &http::Request<B>,
        version: &'static str,
    ) -> Exchange {
        // A request without a body never counts a byte: it shares the
        // connection's zero count instead of allocating one.
        let body = if req.body().is_end_stream() {
            Arc::clone(&conn.no_body)
        } else {
            conn.carried_body();
            Arc::default()
        };
        conn.request_started();
        let access_log = listener.access_log;
        Exchange {
            listener,
            route,
            conn,
            client,
            rule: None,
            policy: None,
            trace_id: None,
            recording: None,
            method: req.method().clone(),
            uri: req.uri().clone(),
            host: None,
            version,
            user_agent: None,
            request_id: None,
            started: crate::clock::now(),
            access_log,
            deadline: None,
            body,
            bytes_out: 0,
            status: 0,
            upstream: None,
            backend: None,
            holding: false,
            evictions_at: 0,
            sticky: None,
            reason: COMPLETED,
            finished: false,
        }
    }

    /// Marks the backend `i` of `pool` as serving this request: counted in
    /// flight (the load `least_conn` sees) until the exchange finishes, when
    /// the slot [`Pool::acquire`] took for it is given back.
    pub(crate) fn set_backend(&mut self, pool: &Arc<Pool>, i: usize) {
        self.let_go();
        if let Some(b) = pool.backends.get(i) {
            b.stats.http_requests_active.fetch_add(1, Relaxed);
            self.backend = Some((Arc::clone(pool), i));
            self.holding = true;
            self.evictions_at = b.evictions_so_far();
        }
    }

    /// Resolves when the backend serving the request closes its
    /// connections (`drain_timeout` after it left service, `close_on_down`),
    /// with the reason: what a stream or a WebSocket to it waits for beside
    /// its own end. `None` without a backend.
    pub(crate) fn evicted(&self) -> Option<Evicted> {
        let (pool, i) = self.backend.clone()?;
        let watch = pool.backends.get(i)?.watch_evictions(self.evictions_at);
        Some(Evicted(Box::pin(async move {
            match pool.backends.get(i) {
                Some(b) => b.evicted(&watch).await,
                None => std::future::pending().await,
            }
        })))
    }

    /// The backend no longer serves this request (it failed, or its answer
    /// was put aside for a retry): its in-flight count and slot are given
    /// back, so that a request waiting for another backend does not hold
    /// them. It stays named for the log until another is set.
    pub(crate) fn let_go(&mut self) {
        if !std::mem::take(&mut self.holding) {
            return;
        }
        if let Some((p, old)) = &self.backend {
            if let Some(b) = p.backends.get(*old) {
                b.stats.http_requests_active.fetch_sub(1, Relaxed);
            }
            p.release(*old);
        }
    }

    /// Counts and logs the exchange; later calls do nothing.
    pub(crate) fn finish(&mut self) {
        if self.finished {
            return;
        }
        self.finished = true;
        let recording = self.recording.take();
        let now = crate::clock::now();
        self.conn.request_ended(now);
        let took = now.saturating_duration_since(self.started);
        self.let_go();
        let route = self.listener.routes.get(self.route);
        if self.status == 0 {
            // No answer was sent: the client left while the request was on
            // its way, or weir closed the connection (shutdown, an
            // operator, `timeouts.send`).
            if self.reason == COMPLETED {
                let cut = self.conn.cut_reason();
                self.reason = cut.unwrap_or(weir_core::Reason::ClientClosed).as_str();
            }
        } else if let Some(route) = route {
            route.stats.http_request(self.status, took);
        }
        // What a flood is judged on: weir's own answers given without a
        // backend count on neither side.
        if self.backend.is_none() && self.status != 0 {
            self.conn.answered_locally();
        } else if self.reason == weir_core::Reason::ClientClosed.as_str() {
            self.conn.cancelled(took, self.deadline);
        }
        let backend = self.backend.as_ref().and_then(|(p, i)| p.backends.get(*i));
        if let Some(b) = backend.filter(|_| self.upstream.is_some()) {
            // The bodies relayed to and from a backend that answered: an l7
            // backend's share of what its `sent`/`received` bytes count (an
            // l4 one's are the relay's). weir's own answer after a failed
            // try is not the backend's.
            count(&b.stats.sent_bytes, self.body.bytes.load(Relaxed));
            count(&b.stats.received_bytes, self.bytes_out);
        }
        if let Some(r) = recording {
            self.export_spans(&r, route.map(|r| r.name.as_str()), backend, took);
        }
        if !self.access_log {
            return;
        }
        let trace = self
            .trace_id
            .as_ref()
            .map(weir_wire::traceparent::trace_id_hex);
        let host = self
            .uri
            .authority()
            .map(|a| std::borrow::Cow::Borrowed(a.as_str()))
            .or_else(|| text(&self.host));
        let (request_id, user_agent) = (text(&self.request_id), text(&self.user_agent));
        HttpAccessRecord {
            listener: &self.listener.name,
            route: route.map_or("-", |r| r.name.as_str()),
            rule: self.rule.as_deref(),
            policy: self.policy.as_deref(),
            trace_id: trace.as_ref().and_then(|t| std::str::from_utf8(t).ok()),
            client: self.client,
            method: self.method.as_str(),
            host: host.as_deref(),
            path: self.uri.path_and_query().map_or("/", |p| p.as_str()),
            version: self.version,
            status: self.status,
            bytes_in: self.body.bytes.load(Relaxed),
            bytes_out: self.bytes_out,
            duration: took,
            upstream: self.upstream,
            backend: backend.map(|b| b.name.as_str()),
            request_id: request_id.as_deref(),
            user_agent: user_agent.as_deref(),
            reason: self.reason,
        }
        .emit();
    }
}

impl Exchange {
    /// The request's span and its upstream call's, ending now.
    fn export_spans(
        &self,
        r: &Recording,
        route: Option<&str>,
        backend: Option<&weir_core::pool::Backend>,
        took: Duration,
    ) {
        let end = r
            .start
            .saturating_add(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX));
        // OpenTelemetry's names for methods: a method of a client's own
        // making is `_OTHER`, so that it cannot name a span per request.
        let method = if known_method(&self.method) {
            self.method.as_str()
        } else {
            "_OTHER"
        };
        if let Some(start) = r.upstream_start {
            let pool = self.backend.as_ref().map_or("-", |(p, _)| p.name.as_str());
            let mut s = r.span(Kind::Client, format!("{method} {pool}"), start, end);
            s.str("http.request.method", method);
            s.str("weir.pool", pool);
            if let Some(b) = backend {
                s.str("weir.backend", b.name.as_str());
                s.str("server.address", b.address.ip().to_string());
                s.int("server.port", b.address.port());
            }
            s.int("weir.attempts", r.attempts);
            match r.upstream_status {
                Some(status) => {
                    s.int("http.response.status_code", status);
                    s.error = status >= 400;
                }
                None => {
                    s.str("error.type", self.reason);
                    s.error = true;
                }
            }
            r.exporter.submit(s);
        }
        let route = route.unwrap_or("-");
        let mut s = r.span(Kind::Server, format!("{method} {route}"), r.start, end);
        s.str("http.request.method", method);
        if method == "_OTHER" {
            s.str("http.request.method_original", self.method.as_str());
        }
        s.str(
            "url.path",
            self.uri.path_and_query().map_or("/", |p| p.path()),
        );
        if let Some(q) = self.uri.query() {
            s.str("url.query", crate::trace::span::scrubbed_query(q));
        }
        // The host the client asked for, and its port when it named one,
        // apart (OpenTelemetry's `server.address` is a host).
        let asked = self.uri.authority().cloned().or_else(|| {
            self.host
                .as_ref()
                .and_then(|h| http::uri::Authority::try_from(h.as_bytes()).ok())
        });
        if let Some(a) = asked {
            let host = a.host();
            let host = host
                .strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .unwrap_or(host);
            s.str("server.address", host.to_owned());
            if let Some(port) = a.port_u16() {
                s.int("server.port", port);
            }
        }
        s.str("client.address", self.client.ip().to_string());
        s.int("client.port", self.client.port());
        // `1.1`, `2`: the version without the protocol's name.
        s.str(
            "network.protocol.version",
            self.version.strip_prefix("HTTP/").unwrap_or(self.version),
        );
        if let Some(ua) = text(&self.user_agent) {
            s.str("user_agent.original", &*ua);
        }
        if self.status != 0 {
            s.int("http.response.status_code", self.status);
        }
        s.str("weir.listener", self.listener.name.as_str());
        s.str("weir.route", route);
        if let Some(rule) = &self.rule {
            s.str("weir.rule", &**rule);
        }
        if let Some(policy) = &self.policy {
            s.str("weir.policy", &**policy);
        }
        if let Some(b) = backend {
            s.str("weir.backend", b.name.as_str());
        }
        s.str("weir.reason", self.reason);
        if let Some(id) = text(&self.request_id) {
            s.str("weir.request_id", &*id);
        }
        s.int(
            "http.request.body.size",
            i64::try_from(self.body.bytes.load(Relaxed)).unwrap_or(i64::MAX),
        );
        s.int(
            "http.response.body.size",
            i64::try_from(self.bytes_out).unwrap_or(i64::MAX),
        );
        s.error = self.status == 0 || self.status >= 500;
        r.exporter.submit(s);
    }
}

/// A header value as log text, when it is text.
/// A header's value as text for the log and spans: as it is when it is
/// UTF-8 (most are ASCII), else with each byte that is not written `\xHH`
/// (a client must not hide its `User-Agent` behind one such byte: the log
/// said `-`, no header).
fn text(v: &Option<HeaderValue>) -> Option<std::borrow::Cow<'_, str>> {
    v.as_ref().map(|v| lossless(v.as_bytes()))
}

fn lossless(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    if let Ok(s) = std::str::from_utf8(bytes) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(bytes.len() + 8);
    for chunk in bytes.utf8_chunks() {
        out.push_str(chunk.valid());
        for b in chunk.invalid() {
            let _ = std::fmt::Write::write_fmt(&mut out, format_args!("\\x{b:02x}"));
        }
    }
    std::borrow::Cow::Owned(out)
}

impl Drop for Exchange {
    fn drop(&mut self) {
        self.finish();
    }
}

/// A method of RFC 9110 or PATCH, the ones OpenTelemetry names.
fn known_method(m: &http::Method) -> bool {
    matches!(
        m.as_str(),
        "GET" | "HEAD" | "POST" | "PUT" | "DELETE" | "CONNECT" | "OPTIONS" | "TRACE" | "PATCH"
    )
}

/// What the variables of an operator's header values stand for: the
/// exchange's facts, and its connection's.
pub(crate) struct Facts<'a> {
    pub(crate) x: &'a Exchange,
    pub(crate) cx: &'a crate::proxy::Cx,
}

impl crate::headers::Vars for Facts<'_> {
    fn write(&self, var: weir_wire::template::Var, out: &mut Vec<u8>) {
        use std::io::Write as _;
        use weir_wire::template::Var;
        let x = self.x;
        match var {
            Var::ClientIp => {
                // As `X-Forwarded-For` has it: IPv4 also when it came as
                // `::ffff:a.b.c.d` (a dual-stack socket, a PROXY header).
                let _ = write!(out, "{}", x.client.ip().to_canonical());
            }
            Var::ClientPort => {
                let _ = write!(out, "{}", x.client.port());
            }
            Var::ServerIp => {
                if let Some(s) = self.cx.server {
                    let _ = write!(out, "{}", s.ip().to_canonical());
                }
            }
            Var::ServerPort => {
                if let Some(s) = self.cx.server {
                    let _ = write!(out, "{}", s.port());
                }
            }
            Var::RequestId => out.extend_from_slice(bytes_of(&x.request_id)),
            Var::Host => match x.uri.authority() {
                Some(a) => out.extend_from_slice(a.as_str().as_bytes()),
                None => out.extend_from_slice(bytes_of(&x.host)),
            },
            Var::Scheme => out.extend_from_slice(self.cx.proto.as_bytes()),
            Var::Method => out.extend_from_slice(x.method.as_str().as_bytes()),
            Var::Protocol => out.extend_from_slice(x.version.as_bytes()),
            Var::Listener => out.extend_from_slice(x.listener.name.as_bytes()),
            Var::Route => {
                if let Some(r) = x.listener.routes.get(x.route) {
                    out.extend_from_slice(r.name.as_bytes());
                }
            }
            Var::Rule => out.extend_from_slice(x.rule.as_deref().unwrap_or("").as_bytes()),
            Var::Backend => {
                if let Some(b) = x.backend.as_ref().and_then(|(p, i)| p.backends.get(*i)) {
                    out.extend_from_slice(b.name.as_bytes());
                }
            }
        }
    }
}

fn bytes_of(v: &Option<HeaderValue>) -> &[u8] {
    v.as_ref().map_or(&[], HeaderValue::as_bytes)
}

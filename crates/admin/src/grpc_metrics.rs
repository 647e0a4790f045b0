//! The standard gRPC server metrics of the control API (the go-grpc-prometheus
//! families), recorded by a tower layer over the tonic router, and the count of
//! calls refused for their bearer token.
//!
//! Series exist only for a fixed table of known methods plus one `unknown`
//! bucket, so paths a client makes up cannot grow the label set.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll, ready};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tonic::metadata::MetadataMap;
use tower::{Layer, Service};
use weir_telemetry::{Format, Histogram, HistogramSnapshot, Kind, Writer};

use crate::auth::{self, AuthError};
use crate::listing::Holding;

/// How a method streams: the `grpc_type` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GrpcType {
    Unary,
    ClientStream,
    ServerStream,
    BidiStream,
}

impl GrpcType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unary => "unary",
            Self::ClientStream => "client_stream",
            Self::ServerStream => "server_stream",
            Self::BidiStream => "bidi_stream",
        }
    }

    fn client_streams(self) -> bool {
        matches!(self, Self::ClientStream | Self::BidiStream)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Known {
    service: &'static str,
    method: &'static str,
    kind: GrpcType,
}

const fn known(service: &'static str, method: &'static str, kind: GrpcType) -> Known {
    Known {
        service,
        method,
        kind,
    }
}

const ADMIN: &str = crate::pb::v1::admin_server::SERVICE_NAME;
const REFLECTION_V1: &str = "grpc.reflection.v1.ServerReflection";
const REFLECTION_V1ALPHA: &str = "grpc.reflection.v1alpha.ServerReflection";
const HEALTH: &str = "grpc.health.v1.Health";

/// The methods that get their own series: the control API, reflection and the
/// standard health service.
const KNOWN: &[Known] = &[
    known(ADMIN, "Status", GrpcType::Unary),
    known(ADMIN, "ListListeners", GrpcType::Unary),
    known(ADMIN, "ListRoutes", GrpcType::Unary),
    known(ADMIN, "ListPools", GrpcType::Unary),
    known(ADMIN, "ListBackends", GrpcType::Unary),
    known(ADMIN, "SetBackendAdmin", GrpcType::Unary),
    known(ADMIN, "SetBackendWeight", GrpcType::Unary),
    known(ADMIN, "BackendHistory", GrpcType::Unary),
    known(ADMIN, "PoolHistory", GrpcType::Unary),
    known(ADMIN, "Reload", GrpcType::Unary),
    known(ADMIN, "Watch", GrpcType::ServerStream),
    known(ADMIN, "ListFirewallRules", GrpcType::Unary),
    known(ADMIN, "AddFirewallRule", GrpcType::Unary),
    known(ADMIN, "RemoveFirewallRule", GrpcType::Unary),
    known(ADMIN, "SetListenerMaxConnections", GrpcType::Unary),
    known(ADMIN, "AddBackend", GrpcType::Unary),
    known(ADMIN, "RemoveBackend", GrpcType::Unary),
    known(ADMIN, "Explain", GrpcType::Unary),
    known(ADMIN, "ListConnections", GrpcType::Unary),
    known(ADMIN, "CloseConnections", GrpcType::Unary),
    known(REFLECTION_V1, "ServerReflectionInfo", GrpcType::BidiStream),
    known(
        REFLECTION_V1ALPHA,
        "ServerReflectionInfo",
        GrpcType::BidiStream,
    ),
    known(HEALTH, "Check", GrpcType::Unary),
    known(HEALTH, "Watch", GrpcType::ServerStream),
];

/// Every other path.
const UNKNOWN: Known = known("unknown", "unknown", GrpcType::Unary);

/// `grpc_code` values indexed by code number, spelled as go-grpc-prometheus
/// prints them (Go's `codes.Code.String()`).
const CODES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];
const OK: usize = 0;
const CANCELED: usize = 1;
const UNKNOWN_CODE: usize = 2;

/// Bucket bounds (seconds) of `grpc_server_handling_seconds`: the Prometheus
/// client's defaults, which go-grpc-prometheus uses too.
pub const HANDLING_SECONDS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Debug)]
struct MethodStats {
    started: AtomicU64,
    handled: [AtomicU64; CODES.len()],
    msg_received: AtomicU64,
    msg_sent: AtomicU64,
    handling: Histogram,
}

impl Default for MethodStats {
    fn default() -> Self {
        MethodStats {
            started: AtomicU64::new(0),
            handled: Default::default(),
            msg_received: AtomicU64::new(0),
            msg_sent: AtomicU64::new(0),
            handling: Histogram::new(HANDLING_SECONDS),
        }
    }
}

/// Counters of the gRPC server, shared (in an `Arc`) by [`GrpcMetricsLayer`],
/// the service implementation (token refusals) and the `/metrics` exporter.
/// The histograms are weir-telemetry's, so like the data plane's they record
/// only with its `metrics` feature.
#[derive(Debug)]
pub struct GrpcStats {
    /// One per [`KNOWN`] method, then the unknown bucket.
    methods: Box<[MethodStats]>,
    auth_failures: [AtomicU64; AuthError::ALL.len()],
}

impl Default for GrpcStats {
    fn default() -> Self {
        GrpcStats {
            methods: (0..=KNOWN.len()).map(|_| MethodStats::default()).collect(),
            auth_failures: Default::default(),
        }
    }
}

impl GrpcStats {
    pub fn new() -> GrpcStats {
        GrpcStats::default()
    }

    /// The slot of a request path (`/package.Service/Method`).
    fn index(path: &str) -> usize {
        path.strip_prefix('/')
            .and_then(|p| p.split_once('/'))
            .and_then(|(service, method)| {
                KNOWN
                    .iter()
                    .position(|k| k.service == service && k.method == method)
            })
            .unwrap_or(KNOWN.len())
    }

    fn known(i: usize) -> Known {
        KNOWN.get(i).copied().unwrap_or(UNKNOWN)
    }

    fn method(&self, i: usize) -> &MethodStats {
        // `index` returns at most the unknown bucket, the last slot.
        let last = self.methods.len() - 1;
        &self.methods[i.min(last)]
    }

    /// [`auth::check`] that counts a refusal and turns it into the
    /// `Unauthenticated` status to return.
    pub fn authorize(
        &self,
        metadata: &MetadataMap,
        expected: Option<&str>,
    ) -> Result<(), tonic::Status> {
        auth::check(metadata, expected).map_err(|e| {
            self.auth_failed(e);
            tonic::Status::from(e)
        })
    }

    pub fn auth_failed(&self, reason: AuthError) {
        self.auth_failures[reason as usize].fetch_add(1, Relaxed);
    }

    pub fn auth_failures(&self, reason: AuthError) -> u64 {
        self.auth_failures[reason as usize].load(Relaxed)
    }

    /// RPCs started on `path` (an unknown path reads the unknown bucket).
    pub fn started(&self, path: &str) -> u64 {
        self.method(Self::index(path)).started.load(Relaxed)
    }

    pub fn handled(&self, path: &str, code: tonic::Code) -> u64 {
        let m = self.method(Self::index(path));
        m.handled.get(code as usize).map_or(0, |c| c.load(Relaxed))
    }

    pub fn msg_received(&self, path: &str) -> u64 {
        self.method(Self::index(path)).msg_received.load(Relaxed)
    }

    pub fn msg_sent(&self, path: &str) -> u64 {
        self.method(Self::index(path)).msg_sent.load(Relaxed)
    }

    pub fn handling_seconds(&self, path: &str) -> HistogramSnapshot {
        self.method(Self::index(path)).handling.snapshot()
    }

    /// Appends the gRPC families to a scrape body in `format`, without the
    /// OpenMetrics `# EOF` line: [`crate::metrics::render_with`] places
    /// them before it.
    pub fn render(&self, out: &mut String, format: Format) {
        let mut w = Writer::new(format);
        self.write(&mut w);
        out.push_str(&w.into_part());
    }

    /// Writes the gRPC families into a scrape.
    pub fn write(&self, w: &mut Writer) {
        // A method's series appear once it has been called.
        let called: Vec<(Known, &MethodStats)> = self
            .methods
            .iter()
            .enumerate()
            .filter(|(_, m)| m.started.load(Relaxed) > 0)
            .map(|(i, m)| (Self::known(i), m))
            .collect();
        let labels = |k: &Known| {
            [
                ("grpc_type", k.kind.as_str()),
                ("grpc_service", k.service),
                ("grpc_method", k.method),
            ]
        };

        w.family(
            "grpc_server_started",
            Kind::Counter,
            "Total number of RPCs started on the server.",
        );
        for (k, m) in &called {
            w.sample(
                "grpc_server_started_total",
                &labels(k),
                m.started.load(Relaxed),
            );
        }
        w.family(
            "grpc_server_handled",
            Kind::Counter,
            "Total number of RPCs completed on the server, regardless of success or failure.",
        );
        for (k, m) in &called {
            for (code, name) in CODES.iter().enumerate() {
                let n = m.handled[code].load(Relaxed);
                // OK always, other codes once seen.
                if n > 0 || code == OK {
                    let [t, s, me] = labels(k);
                    w.sample(
                        "grpc_server_handled_total",
                        &[t, s, me, ("grpc_code", name)],
                        n,
                    );
                }
            }
        }
        w.family(
            "grpc_server_msg_received",
            Kind::Counter,
            "Total number of RPC stream messages received on the server.",
        );
        for (k, m) in &called {
            w.sample(
                "grpc_server_msg_received_total",
                &labels(k),
                m.msg_received.load(Relaxed),
            );
        }
        w.family(
            "grpc_server_msg_sent",
            Kind::Counter,
            "Total number of gRPC stream messages sent by the server.",
        );
        for (k, m) in &called {
            w.sample(
                "grpc_server_msg_sent_total",
                &labels(k),
                m.msg_sent.load(Relaxed),
            );
        }
        w.family(
            "grpc_server_handling_seconds",
            Kind::Histogram,
            "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server.",
        );
        for (k, m) in &called {
            w.histogram(
                "grpc_server_handling_seconds",
                &labels(k),
                &m.handling.snapshot(),
            );
        }
        w.family(
            "weir_admin_auth_failures",
            Kind::Counter,
            "Control API calls refused for their bearer token, by reason.",
        );
        for reason in AuthError::ALL {
            w.sample(
                "weir_admin_auth_failures_total",
                &[("reason", reason.as_str())],
                self.auth_failures(reason),
            );
        }
    }
}

/// Records [`GrpcStats`] for every call through the wrapped service (the
/// tonic router): `tonic::transport::Server::builder().layer(...)`.
#[derive(Debug, Clone)]
pub struct GrpcMetricsLayer {
    stats: Arc<GrpcStats>,
}

impl GrpcMetricsLayer {
    pub fn new(stats: Arc<GrpcStats>) -> GrpcMetricsLayer {
        GrpcMetricsLayer { stats }
    }
}

impl<S> Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;

    fn layer(&self, inner: S) -> GrpcMetrics<S> {
        GrpcMetrics {
            inner,
            stats: Arc::clone(&self.stats),
        }
    }
}

/// The service of [`GrpcMetricsLayer`].
#[derive(Debug, Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
    stats: Arc<GrpcStats>,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for GrpcMetrics<S>
where
    S: Service<http::Request<RequestBody<ReqBody>>, Response = http::Response<ResBody>>,
    ResBody: Body<Data = Bytes> + Unpin,
{
    type Response = http::Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let method = GrpcStats::index(req.uri().path());
        let m = self.stats.method(method);
        m.started.fetch_add(1, Relaxed);
        // Unary and server-streaming calls carry exactly one request message;
        // streamed requests are counted as their messages arrive.
        let received = if GrpcStats::known(method).kind.client_streams() {
            Some(Received {
                messages: MessageCounter::default(),
                stats: Arc::clone(&self.stats),
                method,
            })
        } else {
            m.msg_received.fetch_add(1, Relaxed);
            None
        };
        let call = Call {
            stats: Arc::clone(&self.stats),
            method,
            start: Instant::now(),
            done: false,
        };
        let req = req.map(|inner| RequestBody { inner, received });
        ResponseFuture {
            inner: Box::pin(self.inner.call(req)),
            call: Some(call),
        }
    }
}

/// One RPC in flight; counts as `Canceled` if dropped before its status is known.
#[derive(Debug)]
struct Call {
    stats: Arc<GrpcStats>,
    method: usize,
    start: Instant,
    done: bool,
}

impl Call {
    fn sent(&self, messages: u64) {
        if messages > 0 {
            let m = self.stats.method(self.method);
            m.msg_sent.fetch_add(messages, Relaxed);
        }
    }

    /// Records the outcome once; later calls do nothing.
    fn finish(&mut self, code: usize) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let m = self.stats.method(self.method);
        if let Some(c) = m.handled.get(code) {
            c.fetch_add(1, Relaxed);
        }
        m.handling.observe(self.start.elapsed());
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.finish(CANCELED);
    }
}

/// The future of [`GrpcMetrics`].
#[derive(Debug)]
pub struct ResponseFuture<F> {
    inner: Pin<Box<F>>,
    call: Option<Call>,
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
    B: Body<Data = Bytes> + Unpin,
{
    type Output = Result<http::Response<ResponseBody<B>>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let result = ready!(self.inner.as_mut().poll(cx));
        let mut call = self.call.take();
        match result {
            Ok(response) => {
                let (mut parts, inner) = response.into_parts();
                let held = parts.extensions.remove::<crate::listing::Held>();
                if let (Some(code), Some(call)) = (status_of_head(&parts), call.as_mut()) {
                    // Trailers-only: the status came with the headers.
                    call.finish(code);
                }
                Poll::Ready(Ok(http::Response::from_parts(
                    parts,
                    ResponseBody {
                        inner: Holding::new(inner, held),
                        call,
                        sent: MessageCounter::default(),
                    },
                )))
            }
            Err(e) => {
                if let Some(call) = call.as_mut() {
                    call.finish(UNKNOWN_CODE);
                }
                Poll::Ready(Err(e))
            }
        }
    }
}

/// The status a response head carries: `grpc-status` of a trailers-only
/// response, or a non-200 HTTP status mapped as gRPC clients map it.
fn status_of_head(parts: &http::response::Parts) -> Option<usize> {
    if let Some(v) = parts.headers.get("grpc-status") {
        return Some(parse_code(v.as_bytes()));
    }
    let code = match parts.status {
        http::StatusCode::OK => return None,
        http::StatusCode::BAD_REQUEST => 13,
        http::StatusCode::UNAUTHORIZED => 16,
        http::StatusCode::FORBIDDEN => 7,
        http::StatusCode::NOT_FOUND => 12,
        http::StatusCode::TOO_MANY_REQUESTS
        | http::StatusCode::BAD_GATEWAY
        | http::StatusCode::SERVICE_UNAVAILABLE
        | http::StatusCode::GATEWAY_TIMEOUT => 14,
        _ => UNKNOWN_CODE,
    };
    Some(code)
}

/// A `grpc-status` value; anything but a known code number is `Unknown`.
fn parse_code(v: &[u8]) -> usize {
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        .filter(|&c| c < CODES.len())
        .unwrap_or(UNKNOWN_CODE)
}

/// The response body of [`GrpcMetrics`]: counts the messages it carries and
/// takes the status from its trailers.
#[derive(Debug)]
pub struct ResponseBody<B: Body> {
    /// Holds what the answer holds until it is sent (a listing's places).
    inner: Holding<B>,
    /// `None` only if the future was polled after it completed.
    call: Option<Call>,
    sent: MessageCounter,
}

impl<B: Body<Data = Bytes> + Unpin> Body for ResponseBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        if let Some(call) = this.call.as_mut() {
            match &frame {
                Some(Ok(f)) => {
                    if let Some(data) = f.data_ref() {
                        call.sent(this.sent.count(data));
                    } else if let Some(trailers) = f.trailers_ref() {
                        let code = trailers
                            .get("grpc-status")
                            .map_or(UNKNOWN_CODE, |v| parse_code(v.as_bytes()));
                        call.finish(code);
                    }
                }
                // An error, or the end without a status.
                Some(Err(_)) | None => call.finish(UNKNOWN_CODE),
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B: Body> Drop for ResponseBody<B> {
    fn drop(&mut self) {
        // A body that had already ended without a status may never have been
        // polled to its end: that is no cancellation.
        if let Some(call) = self.call.as_mut()
            && self.inner.ended()
        {
            call.finish(UNKNOWN_CODE);
        }
    }
}

/// The request body as [`GrpcMetrics`] hands it on: counts the messages of
/// streamed requests.
#[derive(Debug)]
pub struct RequestBody<B> {
    inner: B,
    received: Option<Received>,
}

#[derive(Debug)]
struct Received {
    messages: MessageCounter,
    stats: Arc<GrpcStats>,
    method: usize,
}

impl<B: Body<Data = Bytes> + Unpin> Body for RequestBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        if let (Some(Ok(f)), Some(r)) = (&frame, this.received.as_mut())
            && let Some(data) = f.data_ref()
        {
            let n = r.messages.count(data);
            if n > 0 {
                let m = r.stats.method(r.method);
                m.msg_received.fetch_add(n, Relaxed);
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Follows the gRPC length-prefixed framing (1 flag byte, 4 length bytes,
/// then the message) across body chunks, which may hold several messages or
/// part of one.
#[derive(Debug, Default)]
struct MessageCounter {
    /// Prefix bytes read of the current message; 0 between messages.
    prefix: u8,
    len: u32,
    /// Message bytes still to skip.
    remaining: usize,
}

impl MessageCounter {
    /// Feeds the next chunk; returns how many messages begin in it.
    fn count(&mut self, mut data: &[u8]) -> u64 {
        let mut started = 0;
        while !data.is_empty() {
            if self.remaining > 0 {
                let n = self.remaining.min(data.len());
                self.remaining -= n;
                data = &data[n..];
                continue;
            }
            let Some((&b, rest)) = data.split_first() else {
                break;
            };
            data = rest;
            if self.prefix == 0 {
                started += 1;
            } else {
                self.len = self.len << 8 | u32::from(b);
            }
            self.prefix += 1;
            if self.prefix == 5 {
                self.remaining = usize::try_from(self.len).unwrap_or(usize::MAX);
                self.prefix = 0;
                self.len = 0;
            }
        }
        started
    }
}

#[cfg(test)]
mod tests;

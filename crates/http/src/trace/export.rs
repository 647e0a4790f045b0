//! Span export over OTLP (`[tracing.otlp]`): requests hand finished spans to
//! a bounded queue and go on; one task takes them in batches of up to
//! `batch_size`, at least every `interval`, and sends each batch to the
//! collector over gRPC or HTTP (protobuf), within `timeout`. A full queue
//! drops the span and a failed export drops its batch, both counted
//! (`weir_tracing_spans_dropped_total`): a slow or absent collector costs
//! spans, never request time. Nothing is retried.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Status, span, status};
use prost::Message;
use tokio::sync::{mpsc, oneshot};
use weir_config::{Otlp, OtlpProtocol};
use weir_telemetry::{Kind as Metric, Writer};

use super::span::{Kind, Span, Value};

/// How an export call ended: the `result` of `weir_tracing_exports_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    Error,
    Timeout,
}

/// The exporter's counters, kept across reloads (and exporters).
#[derive(Debug, Default)]
pub(crate) struct ExportStats {
    exported: AtomicU64,
    /// By reason: the queue was full, the batch's export failed, the
    /// collector rejected them.
    dropped: [AtomicU64; 3],
    /// By outcome: ok, error, timeout.
    exports: [AtomicU64; 3],
}

/// How often an idle gRPC connection to the collector is pinged.
const KEEP_ALIVE: Duration = Duration::from_secs(30);
const DROP_REASONS: [&str; 3] = ["queue_full", "export_failed", "rejected"];
const QUEUE_FULL: usize = 0;
const EXPORT_FAILED: usize = 1;
const REJECTED: usize = 2;

/// Sends spans to one collector.
#[derive(Debug)]
pub(crate) struct Exporter {
    pub(crate) cfg: Otlp,
    spans: mpsc::Sender<Span>,
    flushes: mpsc::Sender<oneshot::Sender<()>>,
    stats: Arc<ExportStats>,
    /// Spans the export task took from the queue and has not exported yet
    /// (its batch, and a batch on its way).
    held: Arc<AtomicUsize>,
}

impl Exporter {
    /// Starts the export task of `cfg` (on the current runtime); it ends
    /// when the last `Exporter` handle is dropped, after sending what it
    /// holds.
    pub(crate) fn start(cfg: &Otlp, stats: Arc<ExportStats>) -> Arc<Exporter> {
        let queue = usize::try_from(cfg.queue_size).unwrap_or(usize::MAX).max(1);
        let (spans, rx) = mpsc::channel(queue);
        let (flushes, flush_rx) = mpsc::channel(4);
        let held = Arc::new(AtomicUsize::new(0));
        let task = Task {
            held: Arc::clone(&held),
            client: Client::new(cfg),
            service: cfg.service_name.clone(),
            timeout: cfg.timeout,
            batch_size: usize::try_from(cfg.batch_size).unwrap_or(512).max(1),
            stats: Arc::clone(&stats),
        };
        tokio::spawn(task.run(rx, flush_rx, cfg.interval));
        Arc::new(Exporter {
            cfg: cfg.clone(),
            spans,
            flushes,
            stats,
            held,
        })
    }

    /// Queues `span`, or drops it when the queue is full.
    pub(crate) fn submit(&self, span: Span) {
        if self.spans.try_send(span).is_err() {
            self.stats.dropped[QUEUE_FULL].fetch_add(1, Relaxed);
        }
    }

    /// Sends what is queued now; returns when it was sent (or failed), or
    /// after `timeout` and a second.
    pub(crate) async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.flushes.send(done).await.is_err() {
            return;
        }
        let _ = tokio::time::timeout(self.cfg.timeout + Duration::from_secs(1), wait).await;
    }

    /// Spans waiting for export: in the queue, and taken by the export
    /// task but not sent yet.
    pub(crate) fn queued(&self) -> usize {
        self.spans.max_capacity() - self.spans.capacity() + self.held.load(Relaxed)
    }
}

/// Writes the `weir_tracing_*` families; `retired` spans still wait in
/// exporters a reload replaced.
pub(crate) fn render(exporter: &Exporter, retired: usize, w: &mut Writer) {
    let s = &exporter.stats;
    w.family(
        "weir_tracing_spans_exported",
        Metric::Counter,
        "Spans the OTLP collector accepted.",
    );
    w.sample(
        "weir_tracing_spans_exported_total",
        &[],
        s.exported.load(Relaxed),
    );
    w.family(
        "weir_tracing_spans_dropped",
        Metric::Counter,
        "Spans not exported, by reason (queue_full, export_failed, rejected).",
    );
    for (i, reason) in DROP_REASONS.iter().enumerate() {
        w.sample(
            "weir_tracing_spans_dropped_total",
            &[("reason", reason)],
            s.dropped[i].load(Relaxed),
        );
    }
    w.family(
        "weir_tracing_exports",
        Metric::Counter,
        "OTLP export calls by result (ok, error, timeout).",
    );
    for (i, result) in ["ok", "error", "timeout"].iter().enumerate() {
        w.sample(
            "weir_tracing_exports_total",
            &[("result", result)],
            s.exports[i].load(Relaxed),
        );
    }
    w.family(
        "weir_tracing_queue_spans",
        Metric::Gauge,
        "Spans waiting for export.",
    );
    w.sample("weir_tracing_queue_spans", &[], exporter.queued() + retired);
}

/// The export task's side.
struct Task {
    client: Client,
    service: String,
    timeout: Duration,
    batch_size: usize,
    stats: Arc<ExportStats>,
    held: Arc<AtomicUsize>,
}

impl Task {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Span>,
        mut flushes: mpsc::Receiver<oneshot::Sender<()>>,
        interval: Duration,
    ) {
        let mut batch: Vec<Span> = Vec::with_capacity(self.batch_size);
        // The first tick one interval from now: `interval` would fire at
        // once, and send the first spans early if they are already queued
        // when this task first runs.
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.held.store(batch.len(), Relaxed);
            // The batch is sent as it fills, so room is left here.
            let room = self.batch_size - batch.len();
            tokio::select! {
                n = rx.recv_many(&mut batch, room) => {
                    if n == 0 {
                        // Every handle is gone: send the rest and end.
                        self.send(&mut batch).await;
                        return;
                    }
                    if batch.len() >= self.batch_size {
                        self.send(&mut batch).await;
                    }
                }
                _ = tick.tick() => self.send(&mut batch).await,
                Some(done) = flushes.recv() => {
                    while let Ok(span) = rx.try_recv() {
                        batch.push(span);
                        if batch.len() >= self.batch_size {
                            self.send(&mut batch).await;
                        }
                    }
                    self.send(&mut batch).await;
                    let _ = done.send(());
                }
            }
        }
    }

    /// Exports `batch` and empties it.
    async fn send(&mut self, batch: &mut Vec<Span>) {
        if batch.is_empty() {
            return;
        }
        let request = encode(&self.service, batch);
        let n = batch.len() as u64;
        batch.clear();
        // Still waiting for export while the call is on its way.
        self.held
            .store(usize::try_from(n).unwrap_or(usize::MAX), Relaxed);
        let outcome = match tokio::time::timeout(self.timeout, self.client.export(request)).await {
            Err(_) => Outcome::Timeout,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "OTLP export failed");
                Outcome::Error
            }
            Ok(Ok(rejected)) => {
                let rejected = rejected.min(n);
                self.stats.dropped[REJECTED].fetch_add(rejected, Relaxed);
                self.stats.exported.fetch_add(n - rejected, Relaxed);
                Outcome::Ok
            }
        };
        if outcome != Outcome::Ok {
            // A connection that failed or hung is not used again.
            self.client.reset();
            self.stats.dropped[EXPORT_FAILED].fetch_add(n, Relaxed);
        }
        self.stats.exports[outcome as usize].fetch_add(1, Relaxed);
        self.held.store(0, Relaxed);
    }
}

/// The collector's end of the wire. Its host is looked up by
/// `resolve::Name` (one lookup at a time, a stuck one given up), not once
/// per connect: a hung name service would hold a thread per export.
enum Client {
    Grpc {
        client: TraceServiceClient<tonic::transport::Channel>,
        /// Boxed: an endpoint is large, and kept only to connect again.
        endpoint: Box<tonic::transport::Endpoint>,
        dial: Dial,
    },
    Http {
        dial: Dial,
        path: String,
        authority: String,
        sender: Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>>,
    },
    /// The endpoint could not be made a channel (reported at start).
    Broken(String),
}

/// Connects to the collector: the gRPC channel's connector, and the HTTP
/// client's.
#[derive(Clone)]
struct Dial {
    reach: Arc<crate::resolve::Reach>,
    timeout: Duration,
}

impl tower::Service<http::Uri> for Dial {
    type Response = hyper_util::rt::TokioIo<tokio::net::TcpStream>;
    type Error = std::io::Error;
    type Future = futures_util::future::BoxFuture<'static, std::io::Result<Self::Response>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> Self::Future {
        let Dial { reach, timeout } = self.clone();
        Box::pin(async move {
            let stream = reach.connect(timeout).await?;
            Ok(hyper_util::rt::TokioIo::new(stream))
        })
    }
}

impl Client {
    fn new(cfg: &Otlp) -> Client {
        let authority = if cfg.host.contains(':') {
            format!("[{}]:{}", cfg.host, cfg.port)
        } else {
            format!("{}:{}", cfg.host, cfg.port)
        };
        let dial = Dial {
            reach: Arc::new(crate::resolve::Reach::new(crate::resolve::Name::new(
                &cfg.host, cfg.port,
            ))),
            timeout: cfg.timeout,
        };
        match cfg.protocol {
            OtlpProtocol::Grpc => {
                match tonic::transport::Endpoint::from_shared(format!("http://{authority}")) {
                    Ok(e) => {
                        // Pings find a connection the collector's host lost
                        // without a word (no FIN, no RST).
                        let endpoint = e
                            .connect_timeout(cfg.timeout)
                            .http2_keep_alive_interval(KEEP_ALIVE)
                            .keep_alive_timeout(cfg.timeout)
                            .keep_alive_while_idle(true);
                        Client::Grpc {
                            client: TraceServiceClient::new(
                                endpoint.connect_with_connector_lazy(dial.clone()),
                            ),
                            endpoint: Box::new(endpoint),
                            dial,
                        }
                    }
                    Err(e) => Client::Broken(e.to_string()),
                }
            }
            OtlpProtocol::Http => Client::Http {
                dial,
                path: cfg.path.clone(),
                authority,
                sender: None,
            },
        }
    }

    /// Forgets a connection that failed or hung: the next export opens
    /// another.
    fn reset(&mut self) {
        match self {
            Client::Http { sender, .. } => *sender = None,
            Client::Grpc {
                client,
                endpoint,
                dial,
            } => {
                *client =
                    TraceServiceClient::new(endpoint.connect_with_connector_lazy(dial.clone()));
            }
            Client::Broken(_) => {}
        }
    }

    /// Sends one request; `Ok` with the spans the collector rejected.
    async fn export(&mut self, request: ExportTraceServiceRequest) -> Result<u64, String> {
        let response = match self {
            Client::Broken(e) => return Err(e.clone()),
            Client::Grpc { client, .. } => client
                .export(request)
                .await
                .map_err(|s| format!("{}: {}", s.code(), s.message()))?
                .into_inner(),
            Client::Http {
                dial,
                path,
                authority,
                sender,
            } => {
                let body = Bytes::from(request.encode_to_vec());
                let make = || {
                    http::Request::post(path.as_str())
                        .header(http::header::HOST, authority.as_str())
                        .header(http::header::CONTENT_TYPE, "application/x-protobuf")
                        .body(Full::new(body.clone()))
                        .map_err(|e| e.to_string())
                };
                let mut answered = None;
                if let Some(mut s) = sender.take().filter(|s| !s.is_closed()) {
                    match try_send(&mut s, make()?).await {
                        Ok(r) => {
                            answered = Some(r);
                            *sender = Some(s);
                        }
                        // The collector closed the kept connection meanwhile
                        // and the request went nowhere: a new one below.
                        Err(Some(_unsent)) => {}
                        Err(None) => return Err("the collector's connection failed".into()),
                    }
                }
                let response = match answered {
                    Some(r) => r,
                    None => {
                        let mut s = connect(dial).await?;
                        let r = try_send(&mut s, make()?)
                            .await
                            .map_err(|_| "the collector's connection failed".to_owned())?;
                        *sender = Some(s);
                        r
                    }
                };
                let status = response.status();
                let body = Limited::new(response.into_body(), 64 * 1024)
                    .collect()
                    .await
                    .map_err(|e| e.to_string())?
                    .to_bytes();
                if !status.is_success() {
                    return Err(format!("collector answered {status}"));
                }
                // An empty or non-protobuf body: all accepted.
                ExportTraceServiceResponse::decode(body).unwrap_or_default()
            }
        };
        Ok(response
            .partial_success
            .map_or(0, |p| u64::try_from(p.rejected_spans).unwrap_or(0)))
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// Sends `req`; the request back when it was not sent.
async fn try_send(
    s: &mut Sender,
    req: http::Request<Full<Bytes>>,
) -> Result<http::Response<hyper::body::Incoming>, Option<http::Request<Full<Bytes>>>> {
    if s.ready().await.is_err() {
        return Err(Some(req));
    }
    s.try_send_request(req)
        .await
        .map_err(|mut e| e.take_message())
}

async fn connect(
    dial: &Dial,
) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, String> {
    let stream = dial
        .reach
        .connect(dial.timeout)
        .await
        .map_err(|e| e.to_string())?;
    let (sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// The OTLP request carrying `spans` for `service`.
pub(crate) fn encode(service: &str, spans: &[Span]) -> ExportTraceServiceRequest {
    let resource = Resource {
        attributes: vec![
            kv("service.name", &Value::Str(service.to_owned())),
            kv(
                "service.version",
                &Value::Str(env!("CARGO_PKG_VERSION").into()),
            ),
        ],
        ..Default::default()
    };
    let scope = InstrumentationScope {
        name: "weir".to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        ..Default::default()
    };
    let spans = spans
        .iter()
        .map(|s| opentelemetry_proto::tonic::trace::v1::Span {
            trace_id: s.trace_id.to_vec(),
            span_id: s.span_id.to_vec(),
            parent_span_id: s.parent.map(|p| p.to_vec()).unwrap_or_default(),
            flags: u32::from(s.flags),
            name: s.name.clone(),
            kind: match s.kind {
                Kind::Server => span::SpanKind::Server,
                Kind::Client => span::SpanKind::Client,
            } as i32,
            start_time_unix_nano: s.start,
            end_time_unix_nano: s.end,
            attributes: s.attributes.iter().map(|(k, v)| kv(k, v)).collect(),
            status: Some(Status {
                message: String::new(),
                code: if s.error {
                    status::StatusCode::Error
                } else {
                    status::StatusCode::Unset
                } as i32,
            }),
            ..Default::default()
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(resource),
            scope_spans: vec![ScopeSpans {
                scope: Some(scope),
                spans,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

fn kv(key: &str, value: &Value) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(match value {
                Value::Str(s) => any_value::Value::StringValue(s.clone()),
                Value::Int(i) => any_value::Value::IntValue(*i),
            }),
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(name: &str) -> Span {
        Span {
            trace_id: [1; 16],
            span_id: [2; 8],
            parent: Some([3; 8]),
            flags: 1,
            kind: Kind::Client,
            name: name.to_owned(),
            start: 10,
            end: 20,
            error: true,
            attributes: vec![
                ("weir.route", Value::Str("app".into())),
                ("http.response.status_code", Value::Int(502)),
            ],
        }
    }

    #[test]
    fn spans_encode_as_otlp() {
        let r = encode("edge", &[span("GET upstream")]);
        let bytes = r.encode_to_vec();
        let back = ExportTraceServiceRequest::decode(bytes.as_slice()).expect("decodes");
        let rs = &back.resource_spans[0];
        let service = &rs.resource.as_ref().expect("resource").attributes[0];
        assert_eq!(service.key, "service.name");
        let s = &rs.scope_spans[0].spans[0];
        assert_eq!(s.trace_id, vec![1; 16]);
        assert_eq!(s.parent_span_id, vec![3; 8]);
        assert_eq!(s.kind, span::SpanKind::Client as i32);
        assert_eq!((s.start_time_unix_nano, s.end_time_unix_nano), (10, 20));
        assert_eq!(
            s.status.as_ref().map(|s| s.code),
            Some(status::StatusCode::Error as i32)
        );
        assert_eq!(s.attributes.len(), 2);
    }

    /// OTLP over HTTP to `port` on loopback, exported every hour.
    fn hourly(port: u16, batch_size: u32, queue_size: u32) -> Otlp {
        Otlp {
            endpoint: format!("http://127.0.0.1:{port}"),
            host: "127.0.0.1".into(),
            port,
            path: "/v1/traces".into(),
            protocol: OtlpProtocol::Http,
            service_name: "weir".into(),
            timeout: Duration::from_millis(200),
            interval: Duration::from_secs(3600),
            batch_size,
            queue_size,
        }
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_without_waiting() {
        // Nothing listens on the collector's port: exports fail, and the
        // queue of one span takes one; the others are dropped at once.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let cfg = hourly(port, 1, 1);
        let stats = Arc::new(ExportStats::default());
        let e = Exporter::start(&cfg, Arc::clone(&stats));
        for _ in 0..5 {
            e.submit(span("s"));
        }
        assert!(stats.dropped[QUEUE_FULL].load(Relaxed) >= 3);
        e.flush().await;
        let failed = stats.dropped[EXPORT_FAILED].load(Relaxed);
        assert!(failed >= 1, "the export to a closed port failed: {failed}");
        assert_eq!(
            failed + stats.dropped[QUEUE_FULL].load(Relaxed),
            5,
            "every span is accounted for"
        );
        assert_eq!(stats.exported.load(Relaxed), 0);
    }

    #[tokio::test]
    async fn spans_queued_before_the_task_runs_wait_for_the_interval() {
        // A collector that only counts connections: none may come before
        // the hour is up, though the spans are queued before each
        // exporter's task first runs (when a first tick that fired at once
        // would have sent them).
        let collector = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        collector.set_nonblocking(true).expect("nonblocking");
        let port = collector.local_addr().expect("addr").port();
        let cfg = hourly(port, 10, 10);
        let stats = Arc::new(ExportStats::default());
        let exporters: Vec<_> = (0..8)
            .map(|_| {
                let e = Exporter::start(&cfg, Arc::clone(&stats));
                e.submit(span("a"));
                e.submit(span("b"));
                e
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            matches!(collector.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "nothing is sent before the interval"
        );
        assert_eq!(stats.exported.load(Relaxed), 0);
        drop(exporters);
    }
}

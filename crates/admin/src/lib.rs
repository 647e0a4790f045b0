//! The admin endpoints of weir. HTTP (`[admin] http`): Prometheus metrics
//! (`/metrics`, see [`metrics`]), liveness (`/healthz`) and readiness
//! (`/readyz`) for orchestrators and load-balancer health checks. gRPC
//! (`[admin] grpc`): the control API ([`grpc`]). Both are bound before the
//! data plane starts, so a taken port fails the start, and both are bounded
//! ([`conn`]): a cap on open connections, a handshake and an idle timeout, an
//! accept loop that pauses when the process is out of descriptors.

pub mod auth;
pub mod conn;
pub mod grpc;
pub mod grpc_metrics;
pub mod metrics;
pub mod pb;
mod process;
pub mod reflection;

pub use reflection::reflection_service;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use hyper::service::Service as _;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use weir_core::Server;

use crate::conn::{AdminStats, Closed, Limits};

/// What the admin endpoints count about themselves: the gRPC calls and the
/// connections of both endpoints.
#[derive(Debug, Default)]
pub struct Stats {
    pub grpc: Arc<grpc_metrics::GrpcStats>,
    pub conns: AdminStats,
}

/// A bound, not yet serving, admin listener.
#[derive(Debug)]
pub struct AdminListener {
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
}

impl AdminListener {
    /// Binds the admin address. Call inside a tokio runtime.
    pub async fn bind(addr: SocketAddr) -> std::io::Result<AdminListener> {
        // SO_REUSEPORT, like the listeners: a second weir can start beside a
        // draining one.
        let listener = tokio::net::TcpListener::from_std(weir_core::bind(addr)?)?;
        let addr = listener.local_addr()?;
        Ok(AdminListener { listener, addr })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves HTTP/1.1 within `limits` until `stop` is cancelled; then lets
    /// the requests in flight finish.
    pub async fn serve(
        self,
        server: Arc<Server>,
        build: metrics::BuildInfo,
        stats: Arc<Stats>,
        limits: Limits,
        stop: CancellationToken,
    ) {
        let app = router(Arc::new(AppState {
            server,
            build,
            stats: Arc::clone(&stats),
        }));
        let connections = TaskTracker::new();
        let endpoint = Arc::clone(&stats.conns.http);
        conn::accept_loop(
            self.listener,
            limits,
            Arc::clone(&endpoint),
            stop.clone(),
            |io, _| {
                let app = TowerToHyperService::new(app.clone());
                // Whether a request came, to name a header timeout: before the
                // first request it is a handshake timeout, later the kept-alive
                // connection went idle.
                let served = Arc::new(AtomicBool::new(false));
                let service = {
                    let served = Arc::clone(&served);
                    hyper::service::service_fn(move |request| {
                        served.store(true, Relaxed);
                        app.call(request)
                    })
                };
                let endpoint = Arc::clone(&endpoint);
                let stop = stop.clone();
                connections.spawn(async move {
                    let mut http = hyper::server::conn::http1::Builder::new();
                    // The whole header of each request within the handshake
                    // timeout, not only its first byte; hyper also applies it to
                    // the wait for the next request on a kept-alive connection,
                    // as HAProxy applies `timeout http-request` when no
                    // `timeout http-keep-alive` is set.
                    http.timer(TokioTimer::new())
                        .header_read_timeout(limits.handshake_timeout);
                    let conn = http.serve_connection(TokioIo::new(io), service);
                    tokio::pin!(conn);
                    let ended = tokio::select! {
                        r = conn.as_mut() => r,
                        () = stop.cancelled() => {
                            conn.as_mut().graceful_shutdown();
                            conn.await
                        }
                    };
                    if ended.as_ref().is_err_and(hyper::Error::is_timeout) {
                        endpoint.close(if served.load(Relaxed) {
                            Closed::IdleTimeout
                        } else {
                            Closed::HandshakeTimeout
                        });
                    }
                });
            },
        )
        .await;
        connections.close();
        connections.wait().await;
    }
}

#[derive(Debug)]
struct AppState {
    server: Arc<Server>,
    build: metrics::BuildInfo,
    stats: Arc<Stats>,
}

fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

async fn metrics_handler(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> impl IntoResponse {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = metrics::Format::from_accept(accept);
    let body = metrics::render_with(&state.server, &state.build, Some(&state.stats), format);
    ([(header::CONTENT_TYPE, format.content_type())], body)
}

/// 200 while the data plane accepts traffic; 503 once shutdown has begun, so a
/// load balancer in front stops sending new connections before the listeners close.
async fn readyz(State(state): State<Arc<AppState>>) -> (StatusCode, &'static str) {
    if state.server.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
    }
}

//! The admin HTTP endpoint of weir (`[admin] http`): Prometheus metrics
//! (`/metrics`, see [`metrics`]), liveness (`/healthz`) and readiness (`/readyz`)
//! for orchestrators and load-balancer health checks. It is bound before the data
//! plane starts so a taken port fails the start, and it stops with the process.

pub mod auth;
pub mod grpc;
pub mod grpc_metrics;
pub mod metrics;
pub mod pb;
mod process;
pub mod reflection;

pub use reflection::reflection_service;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio_util::sync::CancellationToken;
use weir_core::Server;

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

    /// Serves until `stop` is cancelled.
    pub async fn serve(
        self,
        server: Arc<Server>,
        build: metrics::BuildInfo,
        grpc: Arc<grpc_metrics::GrpcStats>,
        stop: CancellationToken,
    ) -> std::io::Result<()> {
        let app = router(Arc::new(AppState {
            server,
            build,
            grpc,
        }));
        axum::serve(self.listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await
    }
}

#[derive(Debug)]
struct AppState {
    server: Arc<Server>,
    build: metrics::BuildInfo,
    grpc: Arc<grpc_metrics::GrpcStats>,
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
    let body = metrics::render_with_grpc(&state.server, &state.build, Some(&state.grpc), format);
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

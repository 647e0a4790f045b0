//! `GET /metrics`: the families of every part of weir, each written by the
//! part that owns the counters (the data plane, the gRPC control API, this
//! process), as Prometheus text (0.0.4) or, when the scraper asks for it in
//! `Accept`, OpenMetrics 1.0. There is no registry.
//!
//! Series are keyed by entity names (listener, route, pool, backend), never by
//! configuration generation, so an entity that survives a reload keeps its series.

use weir_core::Server;
use weir_telemetry::{Kind, Writer};

pub use weir_telemetry::Format;

use crate::grpc_metrics::GrpcStats;

/// Version and source revision, for `weir_build_info`.
#[derive(Debug, Clone)]
pub struct BuildInfo {
    pub version: String,
    pub revision: String,
}

/// Renders every metric of `server`.
pub fn render(server: &Server, build: &BuildInfo, format: Format) -> String {
    render_with_grpc(server, build, None, format)
}

/// Renders every metric of `server`, and the gRPC control API's families when
/// it is served.
pub fn render_with_grpc(
    server: &Server,
    build: &BuildInfo,
    grpc: Option<&GrpcStats>,
    format: Format,
) -> String {
    let mut w = Writer::new(format);
    server.render_metrics(&mut w);
    w.family(
        "weir_build_info",
        Kind::Gauge,
        "Always 1; the labels say which weir this is.",
    );
    w.sample(
        "weir_build_info",
        &[("version", &build.version), ("revision", &build.revision)],
        1,
    );
    crate::process::write(&mut w);
    if let Some(grpc) = grpc {
        grpc.write(&mut w);
    }
    w.finish()
}

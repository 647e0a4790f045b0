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

use crate::Stats;

/// Version and source revision, for `weir_build_info`.
#[derive(Debug, Clone)]
pub struct BuildInfo {
    pub version: String,
    pub revision: String,
}

/// Renders every metric of `server`.
pub fn render(server: &Server, build: &BuildInfo, format: Format) -> String {
    render_with(server, build, None, format)
}

/// Renders every metric of `server`, and the admin endpoints' own families
/// (gRPC calls, admin connections) when they are served.
pub fn render_with(
    server: &Server,
    build: &BuildInfo,
    admin: Option<&Stats>,
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
    if let Some(admin) = admin {
        admin.conns.write(&mut w);
        admin.grpc.write(&mut w);
        admin.events.write(&mut w);
    }
    w.finish()
}

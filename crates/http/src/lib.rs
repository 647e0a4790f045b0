//! Layer 7 for weir: the handler of routes with `mode = "l7"`. The runtime
//! (`weir-core`) accepts, reads the PROXY header and routes a connection as
//! for any other; this crate then serves HTTP on it with hyper and proxies
//! each request:
//!
//! ```text
//! serve      HTTP/1.1 or HTTP/2 (h2c prior knowledge) on the client's
//!            connection; request-header, idle and drain handling
//!   -> proxy   per request: limits, the first matching rule (rules), the
//!              forwarding headers (headers), a backend of the rule's pool
//!   -> upstream  a pooled connection to that backend (HTTP/1.1 keep-alive,
//!                or one multiplexed HTTP/2 connection), a retry when the
//!                request did not reach it
//!   -> body    the response streamed back; at its end the counters and one
//!              access-log line (exchange)
//! ```
//!
//! weir's own answers (no rule, no backend, a timeout...) come from
//! [`errors`], as plain text or, to gRPC clients, as a gRPC status. HTTP
//! framing is hyper's; what is written here is what is ours: rules, header
//! rules, error mapping, the connection pool's policy.

mod auth;
mod body;
mod clock;
pub mod errors;
mod exchange;
mod gather;
pub mod headers;
mod io;
mod policy;
mod proxy;
mod route;
pub mod rules;
mod serve;
mod streams;
mod tls;
mod trace;
mod upgrade;
mod upstream;

use std::sync::{Arc, Mutex};

use weir_core::l7::{HttpHandler, HttpLayer, RouteBuild};

use crate::trace::export::{ExportStats, Exporter};

/// Builds the handlers of l7 routes: pass it to the server in
/// [`weir_core::Options::http`]. It owns the span exporter of
/// `[tracing.otlp]`, shared by every route and replaced when a reload
/// changes its settings.
#[derive(Debug, Default)]
pub struct Layer {
    exporter: Mutex<Option<Arc<Exporter>>>,
    export_stats: Arc<ExportStats>,
}

impl Layer {
    pub fn new() -> Layer {
        Layer::default()
    }

    /// Sends the spans waiting for export, bounded by the exporter's
    /// `timeout`: for the end of a graceful shutdown.
    pub async fn flush(&self) {
        let exporter = self.current();
        if let Some(e) = exporter {
            e.flush().await;
        }
    }

    fn current(&self) -> Option<Arc<Exporter>> {
        self.exporter
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The exporter `tracing` asks for: the running one when its settings
    /// did not change.
    fn exporter(&self, tracing: Option<&weir_config::Tracing>) -> Option<Arc<Exporter>> {
        let want = tracing.and_then(|t| t.otlp.as_ref());
        let mut current = self
            .exporter
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(cfg) = want else {
            *current = None;
            return None;
        };
        if let Some(e) = current.as_ref().filter(|e| &e.cfg == cfg) {
            return Some(Arc::clone(e));
        }
        let e = Exporter::start(cfg, Arc::clone(&self.export_stats));
        *current = Some(Arc::clone(&e));
        Some(e)
    }
}

impl HttpLayer for Layer {
    fn build(&self, b: RouteBuild<'_>) -> Result<Arc<dyn HttpHandler>, String> {
        let exporter = self.exporter(b.config.tracing.as_ref());
        route::Handler::build(&b, exporter).map(|h| Arc::new(h) as Arc<dyn HttpHandler>)
    }

    fn render(&self, w: &mut weir_telemetry::Writer) {
        if let Some(e) = self.current() {
            crate::trace::export::render(&e, w);
        }
    }
}

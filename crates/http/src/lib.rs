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
mod explain;
mod gather;
pub mod headers;
mod io;
mod policy;
mod proxy;
mod redirect;
mod resolve;
mod rewrite;
mod route;
pub mod rules;
mod serve;
mod sticky;
mod streams;
mod tls;
mod trace;
mod upgrade;
mod upstream;

use std::sync::{Arc, Mutex};

use weir_core::l7::{HttpHandler, HttpLayer, RouteBuild};
use weir_core::sync::lock;

use crate::trace::export::{ExportStats, Exporter};

/// Builds the handlers of l7 routes: pass it to the server in
/// [`weir_core::Options::http`]. It owns the span exporter of
/// `[tracing.otlp]`, shared by every route and replaced when a reload
/// changes its settings — once the reload that changed them has committed.
#[derive(Debug, Default)]
pub struct Layer {
    /// The exporter of the running config: what `/metrics` shows and a
    /// graceful stop flushes.
    exporter: Mutex<Option<Arc<Exporter>>>,
    /// The exporter a build in progress gave its routes, when the settings
    /// changed: it becomes the running one only when that build commits, so
    /// a reload that fails later leaves the running one in place.
    pending: Mutex<Option<Arc<Exporter>>>,
    /// Exporters a reload replaced while the old config's handlers still
    /// held them (requests on its connections): their spans count on
    /// `/metrics` and a graceful stop sends them too. Each is let go once
    /// only this list holds it.
    retired: Mutex<Vec<Arc<Exporter>>>,
    export_stats: Arc<ExportStats>,
}

impl Layer {
    pub fn new() -> Layer {
        Layer::default()
    }

    /// Loads every certificate and key the `l7` routes of `config` terminate
    /// TLS with, as a start or a reload would (each key must fit its
    /// certificate, `client_ca` must hold usable CAs): `weir check` fails on
    /// what would fail the reload. The error names the route's key path.
    pub fn check_files(config: &weir_config::Config) -> Result<(), String> {
        for (li, l) in config.listeners.iter().enumerate() {
            for (ri, r) in l.routes.iter().enumerate() {
                if let weir_config::RouteMode::L7(http) = &r.mode
                    && let Some(server_tls) = &http.tls
                {
                    tls::Terminator::load(server_tls, None)
                        .map_err(|e| format!("listeners[{li}].routes[{ri}].tls: {e}"))?;
                }
            }
        }
        Ok(())
    }

    /// Sends the spans waiting for export, bounded by each exporter's
    /// `timeout`: for the end of a graceful shutdown.
    pub async fn flush(&self) {
        let retired = lock(&self.retired).clone();
        for e in self.current().into_iter().chain(retired) {
            e.flush().await;
        }
    }

    fn current(&self) -> Option<Arc<Exporter>> {
        lock(&self.exporter).clone()
    }

    /// The exporter `tracing` asks for: the running one when its settings
    /// did not change, else one started for the build in progress.
    fn exporter(&self, tracing: Option<&weir_config::Tracing>) -> Option<Arc<Exporter>> {
        let cfg = tracing.and_then(|t| t.otlp.as_ref())?;
        if let Some(e) = lock(&self.exporter).as_ref().filter(|e| &e.cfg == cfg) {
            return Some(Arc::clone(e));
        }
        let mut pending = lock(&self.pending);
        if let Some(e) = pending.as_ref().filter(|e| &e.cfg == cfg) {
            return Some(Arc::clone(e));
        }
        let e = Exporter::start(cfg, Arc::clone(&self.export_stats));
        *pending = Some(Arc::clone(&e));
        Some(e)
    }
}

impl HttpLayer for Layer {
    fn build(&self, b: RouteBuild<'_>) -> Result<Arc<dyn HttpHandler>, String> {
        let exporter = self.exporter(b.config.tracing.as_ref());
        route::Handler::build(&b, exporter).map(|h| Arc::new(h) as Arc<dyn HttpHandler>)
    }

    fn commit(&self, config: &weir_config::Config) {
        let pending = lock(&self.pending).take();
        let want = config.tracing.as_ref().and_then(|t| t.otlp.as_ref());
        let mut running = lock(&self.exporter);
        let before = match want {
            None => running.take(),
            Some(cfg) if running.as_ref().is_some_and(|e| &e.cfg == cfg) => None,
            // The one the build started; none when no l7 route asked for it
            // (a config with only l4 routes exports nothing).
            Some(cfg) => std::mem::replace(&mut *running, pending.filter(|e| &e.cfg == cfg)),
        };
        drop(running);
        let mut retired = lock(&self.retired);
        retired.extend(before);
        // One held only here serves no handler any more: dropped, it sends
        // what it holds and ends.
        retired.retain(|e| Arc::strong_count(e) > 1);
    }

    fn render(&self, w: &mut weir_telemetry::Writer) {
        let retired: usize = {
            let mut retired = lock(&self.retired);
            // Let go of those no handler holds any more (see `commit`).
            retired.retain(|e| Arc::strong_count(e) > 1);
            retired.iter().map(|e| e.queued()).sum()
        };
        if let Some(e) = self.current() {
            crate::trace::export::render(&e, retired, w);
        }
    }
}

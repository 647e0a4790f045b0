//! The server's own families (reloads, generation) and the rendering of the
//! whole data plane: each part writes its families from one snapshot, so a
//! reload cannot mix two configs in one scrape.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use weir_telemetry::{Kind, Writer};

use super::Server;

/// Reload counters.
#[derive(Debug, Default)]
pub struct ReloadStats {
    pub succeeded: AtomicU64,
    pub failed: AtomicU64,
    /// True while the last attempt failed.
    pub last_failed: AtomicBool,
}

impl Server {
    /// Writes every family of the data plane: listeners and routes, pools and
    /// backends (with their health checks), reloads.
    pub fn render_metrics(&self, w: &mut Writer) {
        let snapshot = self.snapshot();
        crate::listener::render(&snapshot.listeners, w);
        crate::pool::metrics::render(&snapshot.pools, w);
        self.discovery.render(w);
        if let Some(http) = &self.http {
            http.render(w);
        }
        if let Some(log) = &self.log {
            w.family(
                "weir_log_dropped_lines",
                Kind::Counter,
                "Log lines dropped because the standard output did not take them as fast as they came (8 MiB of lines waited).",
            );
            w.sample("weir_log_dropped_lines_total", &[], log.dropped());
        }
        w.family(
            "weir_config_reloads",
            Kind::Counter,
            "Configuration reloads by result.",
        );
        for (result, n) in [
            ("success", self.reloads.succeeded.load(Relaxed)),
            ("failure", self.reloads.failed.load(Relaxed)),
        ] {
            w.sample("weir_config_reloads_total", &[("result", result)], n);
        }
        w.family(
            "weir_config_last_reload_successful",
            Kind::Gauge,
            "1 when the last configuration load or reload succeeded.",
        );
        w.sample(
            "weir_config_last_reload_successful",
            &[],
            u64::from(!self.reloads.last_failed.load(Relaxed)),
        );
        w.family(
            "weir_config_generation",
            Kind::Gauge,
            "Generation of the running configuration (1 = the one loaded at start).",
        );
        w.sample("weir_config_generation", &[], snapshot.generation);
    }
}

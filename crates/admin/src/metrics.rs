//! `GET /metrics`: every counter, gauge and histogram of the running server, read
//! from the entities that own them (no registry), written as Prometheus text
//! (0.0.4) or, when the scraper asks for it in `Accept`, OpenMetrics 1.0.
//!
//! Series are keyed by entity names (listener, route, pool, backend), never by
//! configuration generation, so an entity that survives a reload keeps its series.

use std::fmt::{Display, Write as _};

use weir_core::Server;
use weir_core::health::state::Health;
use weir_core::stats::{CheckReason, ConnectError, HistogramSnapshot, RejectReason, StateLabel};

use crate::grpc_metrics::GrpcStats;

/// What the scraper gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Prometheus,
    OpenMetrics,
}

impl Format {
    /// OpenMetrics when `Accept` names it, else the Prometheus text format.
    pub fn from_accept(accept: Option<&str>) -> Format {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Prometheus,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// Version and source revision, for `weir_build_info`.
#[derive(Debug, Clone)]
pub struct BuildInfo {
    pub version: String,
    pub revision: String,
}

#[derive(Clone, Copy)]
pub(crate) enum Kind {
    Counter,
    Gauge,
    Histogram,
}

pub(crate) struct Writer {
    pub(crate) out: String,
    pub(crate) format: Format,
}

impl Writer {
    /// Starts a family. `name` is the family name; counters get `_total` on their
    /// samples (and, in the Prometheus format, on the family name too).
    pub(crate) fn family(&mut self, name: &str, kind: Kind, help: &str) {
        let (type_name, suffix) = match kind {
            Kind::Counter => ("counter", "_total"),
            Kind::Gauge => ("gauge", ""),
            Kind::Histogram => ("histogram", ""),
        };
        match self.format {
            Format::Prometheus => {
                let _ = writeln!(self.out, "# HELP {name}{suffix} {help}");
                let _ = writeln!(self.out, "# TYPE {name}{suffix} {type_name}");
            }
            Format::OpenMetrics => {
                let _ = writeln!(self.out, "# TYPE {name} {type_name}");
                let _ = writeln!(self.out, "# HELP {name} {help}");
            }
        }
    }

    pub(crate) fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                self.out.push_str(k);
                self.out.push_str("=\"");
                escape_into(&mut self.out, v);
                self.out.push('"');
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }

    pub(crate) fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &HistogramSnapshot) {
        let bucket = format!("{name}_bucket");
        let bounds: Vec<String> = h.buckets.iter().map(|(b, _)| format!("{b:?}")).collect();
        for ((_, count), le) in h.buckets.iter().zip(&bounds) {
            let mut with_le: Vec<(&str, &str)> = labels.to_vec();
            with_le.push(("le", le));
            self.sample(&bucket, &with_le, count);
        }
        let mut with_le: Vec<(&str, &str)> = labels.to_vec();
        with_le.push(("le", "+Inf"));
        self.sample(&bucket, &with_le, h.count);
        self.sample(&format!("{name}_sum"), labels, h.sum_seconds);
        self.sample(&format!("{name}_count"), labels, h.count);
    }

    fn finish(mut self) -> String {
        if self.format == Format::OpenMetrics {
            self.out.push_str("# EOF\n");
        }
        self.out
    }
}

fn escape_into(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
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
    use std::sync::atomic::Ordering::Relaxed;
    let mut w = Writer {
        out: String::with_capacity(16 * 1024),
        format,
    };
    // One snapshot for the whole scrape, so a reload cannot mix two configs.
    let snapshot = server.snapshot();
    let listeners = &snapshot.listeners;
    let pools = &snapshot.pools;

    w.family(
        "weir_listener_connections",
        Kind::Counter,
        "Connections accepted by the listener, including those then rejected.",
    );
    for l in listeners {
        w.sample(
            "weir_listener_connections_total",
            &[("listener", &l.name)],
            l.stats.connections_total.load(Relaxed),
        );
    }
    w.family(
        "weir_listener_connections_active",
        Kind::Gauge,
        "Connections open on the listener, counted against max_connections.",
    );
    for l in listeners {
        w.sample(
            "weir_listener_connections_active",
            &[("listener", &l.name)],
            l.stats.connections_active.load(Relaxed),
        );
    }
    w.family(
        "weir_listener_connections_rejected",
        Kind::Counter,
        "Connections closed before reaching a backend, by reason.",
    );
    for l in listeners {
        for r in RejectReason::ALL {
            w.sample(
                "weir_listener_connections_rejected_total",
                &[("listener", &l.name), ("reason", r.as_str())],
                l.stats.rejected(r),
            );
        }
    }
    w.family(
        "weir_listener_max_connections",
        Kind::Gauge,
        "The listener's max_connections.",
    );
    for l in listeners {
        w.sample(
            "weir_listener_max_connections",
            &[("listener", &l.name)],
            l.max_connections,
        );
    }

    w.family(
        "weir_route_connections",
        Kind::Counter,
        "Connections that matched the route.",
    );
    for l in listeners {
        for r in &l.routes {
            w.sample(
                "weir_route_connections_total",
                &[("listener", &l.name), ("route", &r.name)],
                r.stats.connections_total.load(Relaxed),
            );
        }
    }
    w.family(
        "weir_connection_duration_seconds",
        Kind::Histogram,
        "Lifetime of routed connections, from accept to close.",
    );
    for l in listeners {
        for r in &l.routes {
            w.histogram(
                "weir_connection_duration_seconds",
                &[("listener", &l.name), ("route", &r.name)],
                &r.stats.connection_duration.snapshot(),
            );
        }
    }

    let backends = || {
        pools
            .iter()
            .flat_map(|p| p.backends.iter().map(move |b| (p, b)))
    };
    w.family(
        "weir_backend_connections",
        Kind::Counter,
        "Connections relayed to the backend.",
    );
    for (p, b) in backends() {
        w.sample(
            "weir_backend_connections_total",
            &[("pool", &p.name), ("backend", &b.name)],
            b.stats.connections_total.load(Relaxed),
        );
    }
    w.family(
        "weir_backend_connections_active",
        Kind::Gauge,
        "Connections open to the backend.",
    );
    for (p, b) in backends() {
        w.sample(
            "weir_backend_connections_active",
            &[("pool", &p.name), ("backend", &b.name)],
            b.stats.connections_active.load(Relaxed),
        );
    }
    w.family(
        "weir_backend_connect_duration_seconds",
        Kind::Histogram,
        "Time to establish a connection to the backend (successful connects).",
    );
    for (p, b) in backends() {
        w.histogram(
            "weir_backend_connect_duration_seconds",
            &[("pool", &p.name), ("backend", &b.name)],
            &b.stats.connect_duration.snapshot(),
        );
    }
    w.family(
        "weir_backend_connect_errors",
        Kind::Counter,
        "Failed connects to the backend, by reason.",
    );
    for (p, b) in backends() {
        for e in ConnectError::ALL {
            w.sample(
                "weir_backend_connect_errors_total",
                &[
                    ("pool", &p.name),
                    ("backend", &b.name),
                    ("reason", e.as_str()),
                ],
                b.stats.connect_errors(e),
            );
        }
    }
    w.family(
        "weir_backend_sent_bytes",
        Kind::Counter,
        "Bytes sent to the backend (from clients).",
    );
    for (p, b) in backends() {
        w.sample(
            "weir_backend_sent_bytes_total",
            &[("pool", &p.name), ("backend", &b.name)],
            b.stats.sent_bytes.load(Relaxed),
        );
    }
    w.family(
        "weir_backend_received_bytes",
        Kind::Counter,
        "Bytes received from the backend (to clients).",
    );
    for (p, b) in backends() {
        w.sample(
            "weir_backend_received_bytes_total",
            &[("pool", &p.name), ("backend", &b.name)],
            b.stats.received_bytes.load(Relaxed),
        );
    }
    w.family(
        "weir_backend_healthy",
        Kind::Gauge,
        "1 when the backend is up by its rise/fall decision, else 0.",
    );
    for (p, b) in backends() {
        w.sample(
            "weir_backend_healthy",
            &[("pool", &p.name), ("backend", &b.name)],
            u8::from(b.health() == Health::Up),
        );
    }
    w.family(
        "weir_backend_state",
        Kind::Gauge,
        "The backend's state: 1 on the current one (admin drain/disabled first, then health).",
    );
    for (p, b) in backends() {
        let current = b.state_label();
        for s in StateLabel::ALL {
            w.sample(
                "weir_backend_state",
                &[
                    ("pool", &p.name),
                    ("backend", &b.name),
                    ("state", s.as_str()),
                ],
                u8::from(s == current),
            );
        }
    }
    w.family(
        "weir_backend_weight",
        Kind::Gauge,
        "The configured weight, or the operator's override.",
    );
    for (p, b) in backends() {
        w.sample(
            "weir_backend_weight",
            &[("pool", &p.name), ("backend", &b.name)],
            b.current_weight(),
        );
    }
    w.family(
        "weir_backend_effective_weight",
        Kind::Gauge,
        "The weight the balancer uses now: the weight while serving, else 0.",
    );
    for (p, b) in backends() {
        w.sample(
            "weir_backend_effective_weight",
            &[("pool", &p.name), ("backend", &b.name)],
            b.effective_weight(),
        );
    }
    w.family(
        "weir_backend_transitions",
        Kind::Counter,
        "State changes of the backend; a from/to pair appears once it has happened.",
    );
    for (p, b) in backends() {
        for from in StateLabel::ALL {
            for to in StateLabel::ALL {
                let n = b.stats.transitions(from, to);
                if n > 0 {
                    w.sample(
                        "weir_backend_transitions_total",
                        &[
                            ("pool", &p.name),
                            ("backend", &b.name),
                            ("from", from.as_str()),
                            ("to", to.as_str()),
                        ],
                        n,
                    );
                }
            }
        }
    }
    let probed = || backends().filter(|(_, b)| b.probe_address.is_some());
    w.family("weir_health_checks", Kind::Counter, "Health probes by result and reason; the success series always exists, failure reasons appear once seen.");
    for (p, b) in probed() {
        let kind = p.health.check.kind();
        for passed in [true, false] {
            for r in CheckReason::ALL {
                let n = b.stats.checks(passed, r);
                if n > 0 || (passed && r == CheckReason::Ok) {
                    w.sample(
                        "weir_health_checks_total",
                        &[
                            ("pool", &p.name),
                            ("backend", &b.name),
                            ("type", kind),
                            ("result", if passed { "success" } else { "failure" }),
                            ("reason", r.as_str()),
                        ],
                        n,
                    );
                }
            }
        }
    }
    w.family(
        "weir_health_check_duration_seconds",
        Kind::Histogram,
        "Duration of health probes.",
    );
    for (p, b) in probed() {
        w.histogram(
            "weir_health_check_duration_seconds",
            &[
                ("pool", &p.name),
                ("backend", &b.name),
                ("type", p.health.check.kind()),
            ],
            &b.stats.check_duration.snapshot(),
        );
    }

    w.family(
        "weir_pool_active_tier",
        Kind::Gauge,
        "The tier serving new connections; -1 when no backend serves.",
    );
    for p in pools {
        w.sample(
            "weir_pool_active_tier",
            &[("pool", &p.name)],
            p.active_tier().map_or(-1, i64::from),
        );
    }
    w.family(
        "weir_pool_backends",
        Kind::Gauge,
        "Backends of the pool by state.",
    );
    for p in pools {
        let mut counts = [0u32; StateLabel::ALL.len()];
        for b in &p.backends {
            counts[b.state_label() as usize] += 1;
        }
        for s in StateLabel::ALL {
            w.sample(
                "weir_pool_backends",
                &[("pool", &p.name), ("state", s.as_str())],
                counts[s as usize],
            );
        }
    }

    w.family(
        "weir_config_reloads",
        Kind::Counter,
        "Configuration reloads by result.",
    );
    let reloads = &server.reloads;
    for (result, n) in [
        ("success", reloads.succeeded.load(Relaxed)),
        ("failure", reloads.failed.load(Relaxed)),
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
        u64::from(!reloads.last_failed.load(Relaxed)),
    );
    w.family(
        "weir_config_generation",
        Kind::Gauge,
        "Generation of the running configuration (1 = the one loaded at start).",
    );
    w.sample("weir_config_generation", &[], snapshot.generation);
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

    crate::process::write(&mut |name, kind, help, value| {
        let kind = if kind == "counter" {
            Kind::Counter
        } else {
            Kind::Gauge
        };
        let family = name.strip_suffix("_total").unwrap_or(name);
        w.family(family, kind, help);
        w.sample(name, &[], value);
    });
    if let Some(grpc) = grpc {
        grpc.write(&mut w);
    }
    w.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        let mut s = String::new();
        escape_into(&mut s, "a\"b\\c\nd");
        assert_eq!(s, "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn formats_differ_in_type_lines_and_eof() {
        for (format, type_line, eof) in [
            (Format::Prometheus, "# TYPE x_total counter", false),
            (Format::OpenMetrics, "# TYPE x counter", true),
        ] {
            let mut w = Writer {
                out: String::new(),
                format,
            };
            w.family("x", Kind::Counter, "help");
            w.sample("x_total", &[("a", "b")], 3);
            let out = w.finish();
            assert!(out.contains(type_line), "{out}");
            assert!(out.contains("x_total{a=\"b\"} 3\n"), "{out}");
            assert_eq!(out.ends_with("# EOF\n"), eof);
        }
        assert_eq!(
            Format::from_accept(Some("application/openmetrics-text; version=1.0.0")),
            Format::OpenMetrics
        );
        assert_eq!(Format::from_accept(Some("text/plain")), Format::Prometheus);
        assert_eq!(Format::from_accept(None), Format::Prometheus);
    }
}

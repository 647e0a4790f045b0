//! The families of pools and their backends: connections, bytes, connect
//! latency and errors, health and state, weights, transitions, health checks,
//! the active tier.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use weir_telemetry::{Kind, Writer};

use super::{Backend, Pool, QueueResult, StateLabel, UpstreamEvent};
use crate::Reason;
use crate::health::Health;
use crate::listener::STATUS_CLASSES;

pub(crate) fn render(pools: &[Arc<Pool>], w: &mut Writer) {
    let backends = || {
        pools
            .iter()
            .flat_map(|p| p.backends.iter().map(move |b| (&**p, b)))
    };
    connections(w, backends());
    http(w, backends().filter(|(p, _)| p.serves_http));
    udp(w, backends().filter(|(p, _)| p.serves_udp));
    outliers(w, backends().filter(|(p, _)| p.outlier.is_some()));
    state(w, backends());
    checks(w, backends().filter(|(_, b)| b.probe_address.is_some()));
    tiers(w, pools);
    if pools.iter().any(|p| p.limited()) {
        limits(w, pools.iter().filter(|p| p.limited()));
    }
    if pools.iter().any(|p| p.retry_budget.is_some()) {
        retry_budgets(w, pools.iter().filter(|p| p.retry_budget.is_some()));
    }
}

/// Retries in flight and those the budget refused, for the pools with one.
fn retry_budgets<'a>(w: &mut Writer, pools: impl Iterator<Item = &'a Arc<Pool>> + Clone) {
    w.family(
        "weir_pool_retries_active",
        Kind::Gauge,
        "Requests and connections trying another backend now (pools with retry_budget).",
    );
    for p in pools.clone() {
        w.sample(
            "weir_pool_retries_active",
            &[("pool", &p.name)],
            p.retrying.active(),
        );
    }
    w.family(
        "weir_pool_retry_budget_exhausted",
        Kind::Counter,
        "Retries not made because the pool's retry_budget was spent.",
    );
    for p in pools {
        w.sample(
            "weir_pool_retry_budget_exhausted_total",
            &[("pool", &p.name)],
            p.retrying.refused(),
        );
    }
}

/// Connection limits and the queue, for the pools with limits.
fn limits<'a>(w: &mut Writer, pools: impl Iterator<Item = &'a Arc<Pool>> + Clone) {
    w.family(
        "weir_backend_max_connections",
        Kind::Gauge,
        "The backend's connection limit now (ramped during slow start); 0: none.",
    );
    for p in pools.clone() {
        for b in &p.backends {
            w.sample(
                "weir_backend_max_connections",
                &[("pool", &p.name), ("backend", &b.name)],
                b.connection_limit(),
            );
        }
    }
    w.family(
        "weir_pool_queue_depth",
        Kind::Gauge,
        "Connections and requests waiting for a backend with room.",
    );
    for p in pools.clone() {
        w.sample(
            "weir_pool_queue_depth",
            &[("pool", &p.name)],
            p.queue.depth(),
        );
    }
    w.family(
        "weir_backend_queue_depth",
        Kind::Gauge,
        "Requests waiting for the backend by name (a sticky cookie), at its limit.",
    );
    for p in pools.clone() {
        for b in &p.backends {
            w.sample(
                "weir_backend_queue_depth",
                &[("pool", &p.name), ("backend", &b.name)],
                b.waiting_by_name(),
            );
        }
    }
    w.family(
        "weir_pool_queue",
        Kind::Counter,
        "Connections and requests that found every backend full, by what became of them.",
    );
    for p in pools.clone() {
        for r in QueueResult::ALL {
            w.sample(
                "weir_pool_queue_total",
                &[("pool", &p.name), ("result", r.as_str())],
                p.queue.results(r),
            );
        }
    }
    w.family(
        "weir_pool_queue_wait_seconds",
        Kind::Histogram,
        "Time waited in the queue by those that got a backend.",
    );
    for p in pools {
        w.histogram(
            "weir_pool_queue_wait_seconds",
            &[("pool", &p.name)],
            &p.queue.wait.snapshot(),
        );
    }
}

/// Datagrams, for the pools of UDP listeners.
fn udp<'a>(w: &mut Writer, backends: impl Iterator<Item = (&'a Pool, &'a Backend)> + Clone) {
    w.family(
        "weir_backend_udp_datagrams",
        Kind::Counter,
        "Datagrams relayed to the backend and from it (UDP listeners).",
    );
    for (p, b) in backends {
        for (i, direction) in crate::udp::DIRECTIONS.iter().enumerate() {
            w.sample(
                "weir_backend_udp_datagrams_total",
                &[
                    ("pool", p.name.as_str()),
                    ("backend", b.name.as_str()),
                    ("direction", direction),
                ],
                b.stats.udp_datagrams[i].load(Relaxed),
            );
        }
    }
}

/// Outlier detection, for the pools that have it.
fn outliers<'a>(w: &mut Writer, backends: impl Iterator<Item = (&'a Pool, &'a Backend)> + Clone) {
    w.family(
        "weir_backend_ejections",
        Kind::Counter,
        "Times outlier detection ejected the backend.",
    );
    for (p, b) in backends.clone() {
        w.sample(
            "weir_backend_ejections_total",
            &[("pool", &p.name), ("backend", &b.name)],
            b.stats.ejections.load(Relaxed),
        );
    }
    w.family(
        "weir_backend_ejected",
        Kind::Gauge,
        "1 while outlier detection keeps the backend out, else 0.",
    );
    for (p, b) in backends {
        w.sample(
            "weir_backend_ejected",
            &[("pool", &p.name), ("backend", &b.name)],
            u8::from(b.outlier.ejected.load(Relaxed)),
        );
    }
}

/// The HTTP families, for the pools l7 routes send to.
fn http<'a>(w: &mut Writer, backends: impl Iterator<Item = (&'a Pool, &'a Backend)> + Clone) {
    let id =
        |p: &'a Pool, b: &'a Backend| [("pool", p.name.as_str()), ("backend", b.name.as_str())];
    w.family(
        "weir_backend_http_requests",
        Kind::Counter,
        "HTTP responses the backend sent, by status class.",
    );
    for (p, b) in backends.clone() {
        for (i, code) in STATUS_CLASSES.iter().enumerate() {
            let [pool, backend] = id(p, b);
            w.sample(
                "weir_backend_http_requests_total",
                &[pool, backend, ("code", code)],
                b.stats.http_responses[i].load(Relaxed),
            );
        }
    }
    w.family(
        "weir_backend_http_retried",
        Kind::Counter,
        "Answers of the backend put aside to try the request on another backend (retry_on_status).",
    );
    for (p, b) in backends.clone() {
        w.sample(
            "weir_backend_http_retried_total",
            &id(p, b),
            b.stats.http_retried.load(Relaxed),
        );
    }
    w.family(
        "weir_backend_http_replayed",
        Kind::Counter,
        "Requests sent to the backend again, unprocessed the first time: closed (a kept-alive \
         connection closed as the request went out), refused_stream, goaway.",
    );
    for (p, b) in backends.clone() {
        for (i, reason) in super::stats::REPLAY_REASONS.iter().enumerate() {
            let [pool, backend] = id(p, b);
            w.sample(
                "weir_backend_http_replayed_total",
                &[pool, backend, ("reason", reason)],
                b.stats.http_replayed[i].load(Relaxed),
            );
        }
    }
    if backends.clone().any(|(p, _)| p.sticky) {
        w.family(
            "weir_backend_sticky",
            Kind::Counter,
            "Requests whose sticky cookie named the backend: kept on it, or moved to another \
             (it was not serving, or full).",
        );
        for (p, b) in backends.clone().filter(|(p, _)| p.sticky) {
            for (i, result) in ["kept", "moved"].into_iter().enumerate() {
                let [pool, backend] = id(p, b);
                w.sample(
                    "weir_backend_sticky_total",
                    &[pool, backend, ("result", result)],
                    b.stats.sticky[i].load(Relaxed),
                );
            }
        }
    }
    w.family(
        "weir_backend_http_requests_active",
        Kind::Gauge,
        "HTTP requests in flight to the backend (the load least_conn counts).",
    );
    for (p, b) in backends.clone() {
        w.sample(
            "weir_backend_http_requests_active",
            &id(p, b),
            b.stats.http_requests_active.load(Relaxed),
        );
    }
    w.family(
        "weir_backend_http_response_duration_seconds",
        Kind::Histogram,
        "Time from a request sent to the backend to its response header.",
    );
    for (p, b) in backends.clone() {
        w.histogram(
            "weir_backend_http_response_duration_seconds",
            &id(p, b),
            &b.stats.http_response_duration.snapshot(),
        );
    }
    // Not `weir_http_upstream_connections`: OpenMetrics would take it for
    // the family of the counter below.
    w.family(
        "weir_http_upstream_connections_open",
        Kind::Gauge,
        "Pooled HTTP connections to the backend, by state (idle, active).",
    );
    for (p, b) in backends.clone() {
        for (state, n) in [
            ("idle", &b.stats.upstream_idle),
            ("active", &b.stats.upstream_active),
        ] {
            let [pool, backend] = id(p, b);
            w.sample(
                "weir_http_upstream_connections_open",
                &[pool, backend, ("state", state)],
                n.load(Relaxed),
            );
        }
    }
    w.family(
        "weir_http_upstream_connections",
        Kind::Counter,
        "Pooled HTTP connections to the backend created, reused and closed.",
    );
    for (p, b) in backends {
        for e in UpstreamEvent::ALL {
            let [pool, backend] = id(p, b);
            w.sample(
                "weir_http_upstream_connections_total",
                &[pool, backend, ("event", e.as_str())],
                b.stats.upstream_events(e),
            );
        }
    }
}

fn connections<'a>(
    w: &mut Writer,
    backends: impl Iterator<Item = (&'a Pool, &'a Backend)> + Clone,
) {
    let id =
        |p: &'a Pool, b: &'a Backend| [("pool", p.name.as_str()), ("backend", b.name.as_str())];
    w.family(
        "weir_backend_connections",
        Kind::Counter,
        "Connections relayed to the backend.",
    );
    for (p, b) in backends.clone() {
        w.sample(
            "weir_backend_connections_total",
            &id(p, b),
            b.stats.connections_total.load(Relaxed),
        );
    }
    w.family(
        "weir_backend_connections_active",
        Kind::Gauge,
        "Connections open to the backend.",
    );
    for (p, b) in backends.clone() {
        w.sample(
            "weir_backend_connections_active",
            &id(p, b),
            b.stats.connections_active.load(Relaxed),
        );
    }
    w.family(
        "weir_backend_connect_duration_seconds",
        Kind::Histogram,
        "Time to establish a connection to the backend (successful connects).",
    );
    for (p, b) in backends.clone() {
        w.histogram(
            "weir_backend_connect_duration_seconds",
            &id(p, b),
            &b.stats.connect_duration.snapshot(),
        );
    }
    w.family(
        "weir_backend_connect_errors",
        Kind::Counter,
        "Failed connects to the backend, by reason.",
    );
    for (p, b) in backends.clone() {
        for r in Reason::CONNECT_ERRORS {
            let [pool, backend] = id(p, b);
            w.sample(
                "weir_backend_connect_errors_total",
                &[pool, backend, ("reason", r.as_str())],
                b.stats.connect_errors(r),
            );
        }
    }
    w.family(
        "weir_backend_sent_bytes",
        Kind::Counter,
        "Bytes sent to the backend (from clients).",
    );
    for (p, b) in backends.clone() {
        w.sample(
            "weir_backend_sent_bytes_total",
            &id(p, b),
            b.stats.sent_bytes.load(Relaxed),
        );
    }
    w.family(
        "weir_backend_received_bytes",
        Kind::Counter,
        "Bytes received from the backend (to clients).",
    );
    for (p, b) in backends {
        w.sample(
            "weir_backend_received_bytes_total",
            &id(p, b),
            b.stats.received_bytes.load(Relaxed),
        );
    }
}

fn state<'a>(w: &mut Writer, backends: impl Iterator<Item = (&'a Pool, &'a Backend)> + Clone) {
    let id =
        |p: &'a Pool, b: &'a Backend| [("pool", p.name.as_str()), ("backend", b.name.as_str())];
    w.family(
        "weir_backend_healthy",
        Kind::Gauge,
        "1 when the backend is up by its rise/fall decision, else 0.",
    );
    for (p, b) in backends.clone() {
        w.sample(
            "weir_backend_healthy",
            &id(p, b),
            u8::from(b.health() == Health::Up),
        );
    }
    w.family(
        "weir_backend_state",
        Kind::Gauge,
        "The backend's state: 1 on the current one (admin drain/disabled first, then health).",
    );
    for (p, b) in backends.clone() {
        let current = b.state_label();
        let [pool, backend] = id(p, b);
        for s in StateLabel::ALL {
            w.sample(
                "weir_backend_state",
                &[pool, backend, ("state", s.as_str())],
                u8::from(s == current),
            );
        }
    }
    w.family(
        "weir_backend_weight",
        Kind::Gauge,
        "The configured weight, or the operator's override.",
    );
    for (p, b) in backends.clone() {
        w.sample("weir_backend_weight", &id(p, b), b.current_weight());
    }
    w.family(
        "weir_backend_effective_weight",
        Kind::Gauge,
        "The weight the balancer uses now: the weight while serving, else 0.",
    );
    for (p, b) in backends.clone() {
        w.sample(
            "weir_backend_effective_weight",
            &id(p, b),
            b.effective_weight(),
        );
    }
    w.family(
        "weir_backend_transitions",
        Kind::Counter,
        "State changes of the backend; a from/to pair appears once it has happened.",
    );
    for (p, b) in backends {
        let [pool, backend] = id(p, b);
        for from in StateLabel::ALL {
            for to in StateLabel::ALL {
                let n = b.stats.transitions(from, to);
                if n > 0 {
                    w.sample(
                        "weir_backend_transitions_total",
                        &[pool, backend, ("from", from.as_str()), ("to", to.as_str())],
                        n,
                    );
                }
            }
        }
    }
}

fn checks<'a>(w: &mut Writer, probed: impl Iterator<Item = (&'a Pool, &'a Backend)> + Clone) {
    w.family(
        "weir_health_checks",
        Kind::Counter,
        "Health probes by result and reason; the success series always exists, failure reasons appear once seen.",
    );
    for (p, b) in probed.clone() {
        let id = [
            ("pool", p.name.as_str()),
            ("backend", b.name.as_str()),
            ("type", p.health.check.kind()),
        ];
        let [pool, backend, kind] = id;
        w.sample(
            "weir_health_checks_total",
            &[pool, backend, kind, ("result", "success"), ("reason", "ok")],
            b.stats.checks_passed(),
        );
        let standby = b.stats.checks_standby();
        if standby > 0 {
            w.sample(
                "weir_health_checks_total",
                &[
                    pool,
                    backend,
                    kind,
                    ("result", "standby"),
                    ("reason", "standby"),
                ],
                standby,
            );
        }
        let skipped = b.stats.checks_skipped();
        if skipped > 0 {
            w.sample(
                "weir_health_checks_total",
                &[
                    pool,
                    backend,
                    kind,
                    ("result", "skipped"),
                    ("reason", Reason::LocalResources.as_str()),
                ],
                skipped,
            );
        }
        for r in Reason::PROBE_FAILURES {
            let n = b.stats.checks_failed(r);
            if n > 0 {
                w.sample(
                    "weir_health_checks_total",
                    &[
                        pool,
                        backend,
                        kind,
                        ("result", "failure"),
                        ("reason", r.probe_label()),
                    ],
                    n,
                );
            }
        }
    }
    w.family(
        "weir_health_check_duration_seconds",
        Kind::Histogram,
        "Duration of health probes.",
    );
    for (p, b) in probed {
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
}

fn tiers(w: &mut Writer, pools: &[Arc<Pool>]) {
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
}

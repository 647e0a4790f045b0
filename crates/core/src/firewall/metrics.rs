//! The firewall's families in `/metrics`.

use std::sync::Arc;

use weir_telemetry::{Kind, Writer};

use super::{Block, ClientTable};
use crate::listener::Listener;

/// The per-client tables' counters: name, help, value.
type TableCounter = (&'static str, &'static str, fn(&ClientTable) -> u64);

const TABLE_COUNTERS: [TableCounter; 2] = [
    (
        "weir_firewall_evicted_clients",
        "Clients whose per-client state was dropped to make room in a full table (their limits start again).",
        ClientTable::evicted,
    ),
    (
        "weir_firewall_untracked_connections",
        "Connections let in without per-client limits: the table was full of clients with connections open.",
        ClientTable::untracked,
    ),
];

pub(crate) fn render(listeners: &[Arc<Listener>], w: &mut Writer) {
    w.family(
        "weir_firewall_blocked",
        Kind::Counter,
        "Connections (and, for request_rate, HTTP requests) the firewall refused, by rule: banned, deny_list, not_allowed, country, rate_limit, concurrency, request_rate.",
    );
    for l in listeners {
        for b in Block::ALL {
            w.sample(
                "weir_firewall_blocked_total",
                &[("listener", &l.name), ("reason", b.as_str())],
                l.stats.firewall_blocked(b),
            );
        }
    }
    let tables = || {
        listeners
            .iter()
            .filter_map(|l| Some((&l.name, l.firewall.clients()?)))
    };
    w.family(
        "weir_firewall_tracked_clients",
        Kind::Gauge,
        "Clients (addresses or networks) the per-client limits keep state for; at most per_client.max_tracked.",
    );
    for (name, t) in tables() {
        w.sample(
            "weir_firewall_tracked_clients",
            &[("listener", name)],
            t.tracked(),
        );
    }
    for (family, help, value) in TABLE_COUNTERS {
        w.family(family, Kind::Counter, help);
        let series = format!("{family}_total");
        for (name, t) in tables() {
            w.sample(&series, &[("listener", name)], value(t));
        }
    }
}

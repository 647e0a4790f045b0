//! A UDP listener's counters (`weir_udp_*`).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

use weir_telemetry::{Histogram, Kind, Writer, count};

/// Why a datagram was not relayed: the `reason` of `weir_udp_dropped_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drop {
    /// It would have started a flow beyond `max_flows`.
    MaxFlows,
    /// No route of the listener takes its source.
    NoRoute,
    /// The route's pool has no backend that can serve.
    NoBackend,
    /// The firewall refused its source (deny lists, rate limits).
    Firewall,
    /// With the PROXY header it would exceed the largest datagram.
    TooLarge,
    /// The kernel did not take it (a full buffer, an unreachable backend),
    /// or a new flow's socket could not be made for another reason.
    SendError,
    /// A trusted sender's datagram without a valid PROXY v2 header, or
    /// anyone else's with one.
    ProxyProtocol,
    /// No socket could be made for a new flow: weir is out of descriptors,
    /// memory or local ports.
    LocalResources,
}

impl Drop {
    pub const ALL: [Drop; 8] = [
        Drop::MaxFlows,
        Drop::NoRoute,
        Drop::NoBackend,
        Drop::Firewall,
        Drop::TooLarge,
        Drop::SendError,
        Drop::ProxyProtocol,
        Drop::LocalResources,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Drop::MaxFlows => "max_flows",
            Drop::NoRoute => "no_route",
            Drop::NoBackend => "no_backend",
            Drop::Firewall => "firewall",
            Drop::TooLarge => "too_large",
            Drop::SendError => "send_error",
            Drop::ProxyProtocol => "proxy_protocol",
            Drop::LocalResources => "local_resources",
        }
    }
}

/// Direction of a datagram: the `direction` of `weir_udp_datagrams_total`.
pub(crate) const TO_BACKEND: usize = 0;
pub(crate) const TO_CLIENT: usize = 1;
pub const DIRECTIONS: [&str; 2] = ["to_backend", "to_client"];

/// Bucket bounds (seconds) of flow lifetimes: a DNS exchange to a long
/// stream of syslog or game traffic.
pub const FLOW_SECONDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 3600.0,
];

/// Counters of a UDP listener, kept across reloads with the listener's.
#[derive(Debug)]
pub struct UdpStats {
    pub flows_active: AtomicI64,
    pub flows_total: AtomicU64,
    /// By direction: to the backends, to the clients.
    pub datagrams: [AtomicU64; 2],
    pub bytes: [AtomicU64; 2],
    dropped: [AtomicU64; Drop::ALL.len()],
    pub flow_duration: Histogram,
}

impl Default for UdpStats {
    fn default() -> Self {
        UdpStats {
            flows_active: AtomicI64::new(0),
            flows_total: AtomicU64::new(0),
            datagrams: Default::default(),
            bytes: Default::default(),
            dropped: Default::default(),
            flow_duration: Histogram::new(FLOW_SECONDS),
        }
    }
}

impl UdpStats {
    pub(crate) fn drop(&self, why: Drop) {
        self.drop_many(why, 1);
    }

    /// `n` datagrams dropped for `why`: a coalesced batch counts each.
    pub(crate) fn drop_many(&self, why: Drop, n: u64) {
        count(&self.dropped[why as usize], n);
    }

    /// Datagrams dropped for `why`.
    pub fn dropped(&self, why: Drop) -> u64 {
        self.dropped[why as usize].load(Relaxed)
    }

    pub(crate) fn relayed(&self, direction: usize, bytes: usize) {
        if let (Some(d), Some(b)) = (self.datagrams.get(direction), self.bytes.get(direction)) {
            count(d, 1);
            count(b, bytes as u64);
        }
    }
}

/// The `weir_udp_*` families of the UDP listeners.
pub(crate) fn render(listeners: &[std::sync::Arc<crate::listener::Listener>], w: &mut Writer) {
    let udp = || listeners.iter().filter(|l| l.udp.is_some());
    w.family(
        "weir_udp_flows_active",
        Kind::Gauge,
        "UDP flows open (counted against max_flows).",
    );
    for l in udp() {
        w.sample(
            "weir_udp_flows_active",
            &[("listener", &l.name)],
            l.stats.udp.flows_active.load(Relaxed),
        );
    }
    w.family("weir_udp_flows", Kind::Counter, "UDP flows started.");
    for l in udp() {
        w.sample(
            "weir_udp_flows_total",
            &[("listener", &l.name)],
            l.stats.udp.flows_total.load(Relaxed),
        );
    }
    w.family(
        "weir_udp_max_flows",
        Kind::Gauge,
        "The listener's max_flows.",
    );
    for l in udp() {
        w.sample(
            "weir_udp_max_flows",
            &[("listener", &l.name)],
            l.udp.map_or(0, |u| u.max_flows),
        );
    }
    w.family(
        "weir_udp_datagrams",
        Kind::Counter,
        "Datagrams relayed, by direction (to_backend, to_client).",
    );
    for l in udp() {
        for (i, direction) in DIRECTIONS.iter().enumerate() {
            w.sample(
                "weir_udp_datagrams_total",
                &[("listener", &l.name), ("direction", direction)],
                l.stats.udp.datagrams[i].load(Relaxed),
            );
        }
    }
    w.family(
        "weir_udp_bytes",
        Kind::Counter,
        "Payload bytes relayed, by direction (to_backend, to_client).",
    );
    for l in udp() {
        for (i, direction) in DIRECTIONS.iter().enumerate() {
            w.sample(
                "weir_udp_bytes_total",
                &[("listener", &l.name), ("direction", direction)],
                l.stats.udp.bytes[i].load(Relaxed),
            );
        }
    }
    w.family(
        "weir_udp_dropped",
        Kind::Counter,
        "Datagrams from clients or backends not relayed, by reason.",
    );
    for l in udp() {
        for why in Drop::ALL {
            w.sample(
                "weir_udp_dropped_total",
                &[("listener", &l.name), ("reason", why.as_str())],
                l.stats.udp.dropped(why),
            );
        }
    }
    w.family(
        "weir_udp_flow_duration_seconds",
        Kind::Histogram,
        "Lifetime of UDP flows, from the first datagram to the end.",
    );
    for l in udp() {
        w.histogram(
            "weir_udp_flow_duration_seconds",
            &[("listener", &l.name)],
            &l.stats.udp.flow_duration.snapshot(),
        );
    }
}

//! Counters and gauges of the data plane. They are plain atomics owned by the entity
//! they describe (listener, route, backend) and shared through `Arc`, so the
//! per-connection path does relaxed atomic adds only and an exporter reads them
//! without locks. There is no global registry.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Adds to a counter that only feeds metrics; compiled out without the
/// `metrics` feature.
#[inline(always)]
pub(crate) fn count(counter: &AtomicU64, n: u64) {
    if cfg!(feature = "metrics") {
        counter.fetch_add(n, Relaxed);
    }
}

/// Why a connection was refused before it reached a backend. Each is a label value
/// of `weir_listener_connections_rejected_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    MaxConnections,
    NoRoute,
    NoBackend,
    /// No complete PROXY header or TLS ClientHello within `handshake_timeout`.
    HandshakeTimeout,
    /// A trusted source sent no valid PROXY header, or an untrusted one sent one.
    ProxyProtocol,
}

impl RejectReason {
    pub const ALL: [RejectReason; 5] = [
        Self::MaxConnections,
        Self::NoRoute,
        Self::NoBackend,
        Self::HandshakeTimeout,
        Self::ProxyProtocol,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::MaxConnections => "max_connections",
            Self::NoRoute => "no_route",
            Self::NoBackend => "no_backend",
            Self::HandshakeTimeout => "handshake_timeout",
            Self::ProxyProtocol => "proxy_protocol",
        }
    }
}

/// Why a connect to a backend failed; label of `weir_backend_connect_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnectError {
    Timeout,
    Refused,
    Reset,
    /// The TLS handshake with the backend failed (`backend_tls`).
    Tls,
    Other,
}

impl ConnectError {
    pub const ALL: [ConnectError; 5] = [
        Self::Timeout,
        Self::Refused,
        Self::Reset,
        Self::Tls,
        Self::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Refused => "refused",
            Self::Reset => "reset",
            Self::Tls => "tls",
            Self::Other => "other",
        }
    }

    pub(crate) fn from_io(err: &std::io::Error) -> Self {
        use std::io::ErrorKind::*;
        match err.kind() {
            ConnectionRefused => Self::Refused,
            ConnectionReset | ConnectionAborted => Self::Reset,
            TimedOut => Self::Timeout,
            _ => Self::Other,
        }
    }
}

/// Per-listener counters.
#[derive(Debug, Default)]
pub struct ListenerStats {
    /// Connections accepted (including those then rejected).
    pub connections_total: AtomicU64,
    /// Connections currently open and counted against `max_connections`.
    pub connections_active: AtomicI64,
    rejected: [AtomicU64; RejectReason::ALL.len()],
}

impl ListenerStats {
    pub fn rejected(&self, reason: RejectReason) -> u64 {
        self.rejected[reason as usize].load(Relaxed)
    }

    pub(crate) fn reject(&self, reason: RejectReason) {
        count(&self.rejected[reason as usize], 1);
    }
}

/// Per-route counters.
#[derive(Debug)]
pub struct RouteStats {
    pub connections_total: AtomicU64,
    /// From accept to close, of the connections this route took.
    pub connection_duration: Histogram,
}

impl Default for RouteStats {
    fn default() -> Self {
        RouteStats {
            connections_total: AtomicU64::new(0),
            connection_duration: Histogram::new(CONNECTION_SECONDS),
        }
    }
}

/// The state of a backend as metrics show it: admin state first, then health.
/// Label of `weir_backend_state{state}` and `weir_backend_transitions_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StateLabel {
    Unknown,
    Up,
    Down,
    Drain,
    Disabled,
}

impl StateLabel {
    pub const ALL: [StateLabel; 5] = [
        Self::Unknown,
        Self::Up,
        Self::Down,
        Self::Drain,
        Self::Disabled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Up => "up",
            Self::Down => "down",
            Self::Drain => "drain",
            Self::Disabled => "disabled",
        }
    }
}

/// What a health probe found: the bounded `reason` label of
/// `weir_health_checks_total` (the free-text reason goes to the history).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CheckReason {
    /// Passed.
    Ok,
    Timeout,
    Refused,
    Reset,
    /// Another connect error.
    Connect,
    Tls,
    /// HTTP status not in `expect_status`.
    Status,
    /// Body without `expect_body`.
    Body,
    /// An answer that is not valid HTTP / HTTP/2 / gRPC, or a broken connection.
    Protocol,
    /// gRPC answered, but not SERVING.
    NotServing,
    /// gRPC answered with an error status.
    GrpcStatus,
}

impl CheckReason {
    pub const ALL: [CheckReason; 11] = [
        Self::Ok,
        Self::Timeout,
        Self::Refused,
        Self::Reset,
        Self::Connect,
        Self::Tls,
        Self::Status,
        Self::Body,
        Self::Protocol,
        Self::NotServing,
        Self::GrpcStatus,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Timeout => "timeout",
            Self::Refused => "refused",
            Self::Reset => "reset",
            Self::Connect => "connect_error",
            Self::Tls => "tls",
            Self::Status => "status",
            Self::Body => "body",
            Self::Protocol => "protocol",
            Self::NotServing => "not_serving",
            Self::GrpcStatus => "grpc_status",
        }
    }
}

/// Per-backend counters. `connections_active` also feeds `least_conn` and `random`.
#[derive(Debug)]
pub struct BackendStats {
    pub connections_total: AtomicU64,
    pub connections_active: AtomicI64,
    /// Bytes sent to the backend (client -> backend).
    pub sent_bytes: AtomicU64,
    /// Bytes received from the backend (backend -> client).
    pub received_bytes: AtomicU64,
    /// Successful connects only.
    pub connect_duration: Histogram,
    pub check_duration: Histogram,
    connect_errors: [AtomicU64; ConnectError::ALL.len()],
    /// [passed?][reason]
    checks: [[AtomicU64; CheckReason::ALL.len()]; 2],
    /// [from][to]
    transitions: [[AtomicU64; StateLabel::ALL.len()]; StateLabel::ALL.len()],
}

impl Default for BackendStats {
    fn default() -> Self {
        BackendStats {
            connections_total: AtomicU64::new(0),
            connections_active: AtomicI64::new(0),
            sent_bytes: AtomicU64::new(0),
            received_bytes: AtomicU64::new(0),
            connect_duration: Histogram::new(LATENCY_SECONDS),
            check_duration: Histogram::new(LATENCY_SECONDS),
            connect_errors: Default::default(),
            checks: Default::default(),
            transitions: Default::default(),
        }
    }
}

impl BackendStats {
    pub fn connect_errors(&self, kind: ConnectError) -> u64 {
        self.connect_errors[kind as usize].load(Relaxed)
    }

    pub(crate) fn connect_error(&self, kind: ConnectError) {
        count(&self.connect_errors[kind as usize], 1);
    }

    /// Health checks that passed (`true`) or failed, by reason.
    pub fn checks(&self, passed: bool, reason: CheckReason) -> u64 {
        self.checks[usize::from(passed)][reason as usize].load(Relaxed)
    }

    pub(crate) fn check(&self, passed: bool, reason: CheckReason, took: Duration) {
        count(&self.checks[usize::from(passed)][reason as usize], 1);
        self.check_duration.observe(took);
    }

    pub fn transitions(&self, from: StateLabel, to: StateLabel) -> u64 {
        self.transitions[from as usize][to as usize].load(Relaxed)
    }

    pub(crate) fn transition(&self, from: StateLabel, to: StateLabel) {
        count(&self.transitions[from as usize][to as usize], 1);
    }

    /// Active connections as the balancer sees them (never negative).
    pub(crate) fn load(&self) -> u32 {
        u32::try_from(self.connections_active.load(Relaxed).max(0)).unwrap_or(u32::MAX)
    }
}

/// Decrements an active-connections gauge when dropped, so every exit path of a
/// connection task (including cancellation) gives the slot back.
#[derive(Debug)]
pub(crate) struct ActiveGuard<'a>(pub(crate) &'a AtomicI64);

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// Bucket bounds (seconds) of connection lifetimes: from a quick request to an
/// hour-long database session.
pub const CONNECTION_SECONDS: &[f64] = &[
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];
/// Bucket bounds (seconds) of connect and probe latencies.
pub const LATENCY_SECONDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// A histogram with fixed bucket bounds: one atomic per bucket, so recording is
/// one search in a short slice and two relaxed adds.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Non-cumulative counts; the last one is the +Inf bucket.
    buckets: Box<[AtomicU64]>,
    sum_nanos: AtomicU64,
}

/// A read of a [`Histogram`], with cumulative bucket counts as Prometheus wants.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// (upper bound, cumulative count); the +Inf bucket is `count`.
    pub buckets: Vec<(f64, u64)>,
    pub count: u64,
    pub sum_seconds: f64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        if !cfg!(feature = "metrics") {
            return;
        }
        let secs = d.as_secs_f64();
        let i = self.bounds.partition_point(|&b| b < secs);
        if let Some(bucket) = self.buckets.get(i) {
            bucket.fetch_add(1, Relaxed);
        }
        self.sum_nanos
            .fetch_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX), Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut total = 0;
        let mut buckets = Vec::with_capacity(self.bounds.len());
        for (i, &bound) in self.bounds.iter().enumerate() {
            total += self.buckets[i].load(Relaxed);
            buckets.push((bound, total));
        }
        total += self.buckets[self.bounds.len()].load(Relaxed);
        HistogramSnapshot {
            buckets,
            count: total,
            sum_seconds: self.sum_nanos.load(Relaxed) as f64 / 1e9,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_le() {
        let h = Histogram::new(&[0.001, 0.01, 0.1]);
        for ms in [0.5, 1.0, 5.0, 10.0, 50.0, 500.0] {
            h.observe(Duration::from_secs_f64(ms / 1000.0));
        }
        let s = h.snapshot();
        // A value equal to a bound counts in that bucket (le = "less or equal").
        assert_eq!(s.buckets, vec![(0.001, 2), (0.01, 4), (0.1, 5)]);
        assert_eq!(s.count, 6);
        assert!((s.sum_seconds - 0.5665).abs() < 1e-9, "{}", s.sum_seconds);
    }
}

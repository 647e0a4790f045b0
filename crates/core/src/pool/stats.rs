//! A backend's counters: plain atomics shared through `Arc` by every
//! generation of the backend, so the per-connection path does relaxed adds
//! only and `/metrics` reads them without a lock.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use weir_telemetry::{Histogram, count};

use crate::Reason;
use crate::health::Report;

/// Why a request went to the same backend again, unanswered the first
/// time: a kept-alive connection it was sent on closed as it went out
/// (`closed`), an HTTP/2 backend refused its stream (`refused_stream`) or
/// sent a GOAWAY it was past (`goaway`).
pub(super) const REPLAY_REASONS: [&str; 3] = ["closed", "refused_stream", "goaway"];

/// An index into [`REPLAY_REASONS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replay {
    Closed,
    RefusedStream,
    GoAway,
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
    /// Answering as its check's `standby` says: healthy, not eligible.
    Standby,
}

impl StateLabel {
    pub const ALL: [StateLabel; 6] = [
        Self::Unknown,
        Self::Up,
        Self::Down,
        Self::Drain,
        Self::Disabled,
        Self::Standby,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Up => "up",
            Self::Down => "down",
            Self::Drain => "drain",
            Self::Disabled => "disabled",
            Self::Standby => "standby",
        }
    }
}

/// Bucket bounds (seconds) of connect and probe latencies.
pub const LATENCY_SECONDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Per-backend counters. `connections_active` also feeds `least_conn` and `random`.
#[derive(Debug)]
pub struct BackendStats {
    pub connections_total: AtomicU64,
    pub connections_active: AtomicI64,
    /// Times outlier detection ejected the backend.
    pub ejections: AtomicU64,
    /// Bytes sent to the backend (client -> backend).
    pub sent_bytes: AtomicU64,
    /// Bytes received from the backend (backend -> client).
    pub received_bytes: AtomicU64,
    /// Successful connects only.
    pub connect_duration: Histogram,
    pub check_duration: Histogram,
    connect_errors: [AtomicU64; Reason::COUNT],
    checks_passed: AtomicU64,
    /// Probes answered as the check's `standby` says.
    checks_standby: AtomicU64,
    checks_failed: [AtomicU64; Reason::COUNT],
    /// Probes that could not run because weir was out of descriptors.
    checks_skipped: AtomicU64,
    /// [from][to]
    transitions: [[AtomicU64; StateLabel::ALL.len()]; StateLabel::ALL.len()],
    /// HTTP requests in flight to the backend (l7 routes): part of the
    /// balancer's load, so `least_conn` counts requests.
    pub http_requests_active: AtomicI64,
    /// HTTP responses from the backend, by status class (see
    /// [`crate::listener::STATUS_CLASSES`]).
    pub http_responses: [AtomicU64; 5],
    /// From a request sent to the backend to its response header.
    pub http_response_duration: Histogram,
    /// Answers put aside for another backend's (`retry_on_status`).
    pub http_retried: AtomicU64,
    /// Requests sent to the backend again, by [`REPLAY_REASONS`].
    pub http_replayed: [AtomicU64; 3],
    /// Requests whose sticky cookie named the backend: sent to it, and sent
    /// elsewhere (it could not take them).
    pub sticky: [AtomicU64; 2],
    /// Pooled HTTP connections to the backend, idle and in use.
    pub upstream_idle: AtomicI64,
    pub upstream_active: AtomicI64,
    /// Pooled HTTP connections created, reused and closed.
    pub upstream_events: [AtomicU64; 3],
    /// Datagrams relayed (UDP listeners): to the backend, from it.
    pub udp_datagrams: [AtomicU64; 2],
}

/// The `event` label of `weir_http_upstream_connections_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamEvent {
    Created,
    Reused,
    Closed,
}

impl UpstreamEvent {
    pub const ALL: [UpstreamEvent; 3] = [Self::Created, Self::Reused, Self::Closed];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Reused => "reused",
            Self::Closed => "closed",
        }
    }
}

impl Default for BackendStats {
    fn default() -> Self {
        BackendStats {
            connections_total: AtomicU64::new(0),
            connections_active: AtomicI64::new(0),
            ejections: AtomicU64::new(0),
            sent_bytes: AtomicU64::new(0),
            received_bytes: AtomicU64::new(0),
            connect_duration: Histogram::new(LATENCY_SECONDS),
            check_duration: Histogram::new(LATENCY_SECONDS),
            connect_errors: std::array::from_fn(|_| AtomicU64::new(0)),
            checks_passed: AtomicU64::new(0),
            checks_failed: std::array::from_fn(|_| AtomicU64::new(0)),
            checks_skipped: AtomicU64::new(0),
            checks_standby: AtomicU64::new(0),
            transitions: Default::default(),
            http_requests_active: AtomicI64::new(0),
            http_responses: Default::default(),
            http_response_duration: Histogram::new(crate::listener::REQUEST_SECONDS),
            http_retried: AtomicU64::new(0),
            http_replayed: Default::default(),
            sticky: Default::default(),
            upstream_idle: AtomicI64::new(0),
            upstream_active: AtomicI64::new(0),
            upstream_events: Default::default(),
            udp_datagrams: Default::default(),
        }
    }
}

impl BackendStats {
    /// Failed connects of client connections for `reason`.
    pub fn connect_errors(&self, reason: Reason) -> u64 {
        self.connect_errors[reason as usize].load(Relaxed)
    }

    pub fn connect_error(&self, reason: Reason) {
        count(&self.connect_errors[reason as usize], 1);
    }

    /// Health checks that passed.
    pub fn checks_passed(&self) -> u64 {
        self.checks_passed.load(Relaxed)
    }

    /// Health checks that failed for `reason`.
    pub fn checks_failed(&self, reason: Reason) -> u64 {
        self.checks_failed[reason as usize].load(Relaxed)
    }

    /// Health checks that failed, for any reason.
    pub fn checks_failed_total(&self) -> u64 {
        self.checks_failed.iter().map(|c| c.load(Relaxed)).sum()
    }

    /// Probes answered as the check's `standby` says.
    pub fn checks_standby(&self) -> u64 {
        self.checks_standby.load(Relaxed)
    }

    /// Probes that weir could not run for want of descriptors or memory.
    pub fn checks_skipped(&self) -> u64 {
        self.checks_skipped.load(Relaxed)
    }

    pub(crate) fn check(&self, report: &Report, took: Duration) {
        match report.failure {
            None if report.standby => count(&self.checks_standby, 1),
            None => count(&self.checks_passed, 1),
            Some(Reason::LocalResources) => count(&self.checks_skipped, 1),
            Some(r) => count(&self.checks_failed[r as usize], 1),
        }
        self.check_duration.observe(took);
    }

    pub fn transitions(&self, from: StateLabel, to: StateLabel) -> u64 {
        self.transitions[from as usize][to as usize].load(Relaxed)
    }

    pub(crate) fn transition(&self, from: StateLabel, to: StateLabel) {
        count(&self.transitions[from as usize][to as usize], 1);
    }

    /// Counts a pooled HTTP connection's `event`.
    pub fn upstream_event(&self, event: UpstreamEvent) {
        count(&self.upstream_events[event as usize], 1);
    }

    /// Pooled HTTP connections for `event` so far.
    pub fn upstream_events(&self, event: UpstreamEvent) -> u64 {
        self.upstream_events[event as usize].load(Relaxed)
    }

    /// Counts a response with `status` whose header came `took` after the
    /// request was sent.
    pub fn http_response(&self, status: u16, took: Duration) {
        count(
            &self.http_responses[crate::listener::status_class(status)],
            1,
        );
        self.http_response_duration.observe(took);
    }

    /// Active connections and HTTP requests in flight, as the balancer sees
    /// them (never negative).
    pub(crate) fn load(&self) -> u32 {
        let n = self.connections_active.load(Relaxed) + self.http_requests_active.load(Relaxed);
        u32::try_from(n.max(0)).unwrap_or(u32::MAX)
    }
}

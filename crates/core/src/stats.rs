//! Counters and gauges of the data plane. They are plain atomics owned by the entity
//! they describe (listener, route, backend) and shared through `Arc`, so the
//! per-connection path does relaxed atomic adds only and an exporter reads them
//! without locks. There is no global registry.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

/// Why a connection was refused before it reached a backend. Each is a label value
/// of `weir_listener_connections_rejected_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    MaxConnections,
    NoRoute,
    NoBackend,
}

impl RejectReason {
    pub const ALL: [RejectReason; 3] = [Self::MaxConnections, Self::NoRoute, Self::NoBackend];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::MaxConnections => "max_connections",
            Self::NoRoute => "no_route",
            Self::NoBackend => "no_backend",
        }
    }
}

/// Why a connect to a backend failed; label of `weir_backend_connect_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnectError {
    Timeout,
    Refused,
    Reset,
    Other,
}

impl ConnectError {
    pub const ALL: [ConnectError; 4] = [Self::Timeout, Self::Refused, Self::Reset, Self::Other];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Refused => "refused",
            Self::Reset => "reset",
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
        self.rejected[reason as usize].fetch_add(1, Relaxed);
    }
}

/// Per-route counters.
#[derive(Debug, Default)]
pub struct RouteStats {
    pub connections_total: AtomicU64,
}

/// Per-backend counters. `connections_active` also feeds `least_conn` and `random`.
#[derive(Debug, Default)]
pub struct BackendStats {
    pub connections_total: AtomicU64,
    pub connections_active: AtomicI64,
    /// Bytes sent to the backend (client -> backend).
    pub sent_bytes: AtomicU64,
    /// Bytes received from the backend (backend -> client).
    pub received_bytes: AtomicU64,
    connect_errors: [AtomicU64; ConnectError::ALL.len()],
}

impl BackendStats {
    pub fn connect_errors(&self, kind: ConnectError) -> u64 {
        self.connect_errors[kind as usize].load(Relaxed)
    }

    pub(crate) fn connect_error(&self, kind: ConnectError) {
        self.connect_errors[kind as usize].fetch_add(1, Relaxed);
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

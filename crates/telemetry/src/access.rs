//! The access log: one line per connection (and, with layer 7, per request),
//! with fixed fields, written through `tracing` under the target `weir::access`
//! so that a log filter can keep it on whatever the level.

use std::net::SocketAddr;
use std::time::Duration;

/// One access-log line. Absent names are written as `-`.
#[derive(Debug, Clone, Copy)]
pub struct AccessRecord<'a> {
    pub listener: &'a str,
    pub route: Option<&'a str>,
    pub client: SocketAddr,
    pub backend: Option<&'a str>,
    pub bytes_to_backend: u64,
    pub bytes_to_client: u64,
    pub duration: Duration,
    /// How it ended (a stable snake_case word).
    pub reason: &'a str,
    /// The detail of `reason` when it has one (the last connect error).
    pub error: Option<&'a str>,
}

impl AccessRecord<'_> {
    /// Writes the line at level INFO, target `weir::access`.
    pub fn emit(&self) {
        tracing::info!(
            target: "weir::access",
            listener = %self.listener,
            route = self.route.unwrap_or("-"),
            client = %self.client,
            backend = self.backend.unwrap_or("-"),
            bytes_to_backend = self.bytes_to_backend,
            bytes_to_client = self.bytes_to_client,
            // Microsecond precision is plenty and keeps the field short.
            duration_ms = self.duration.as_micros() as f64 / 1000.0,
            reason = self.reason,
            error = self.error.unwrap_or("-"),
        );
    }
}

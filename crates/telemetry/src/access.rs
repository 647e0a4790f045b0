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
    /// The backends a failed connection tried, each with its error:
    /// `"pg-a:refused pg-b:timeout"`.
    pub tried: Option<&'a str>,
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
            tried = self.tried.unwrap_or("-"),
        );
    }
}

/// One access-log line of an HTTP request (l7 routes). Absent values are
/// written as `-`.
#[derive(Debug, Clone, Copy)]
pub struct HttpAccessRecord<'a> {
    pub listener: &'a str,
    pub route: &'a str,
    /// The HTTP rule that took the request.
    pub rule: Option<&'a str>,
    /// The request policy that refused it.
    pub policy: Option<&'a str>,
    /// The W3C trace id (32 hex digits), with tracing on.
    pub trace_id: Option<&'a str>,
    pub client: SocketAddr,
    pub method: &'a str,
    pub host: Option<&'a str>,
    pub path: &'a str,
    /// `HTTP/1.1`, `HTTP/2`.
    pub version: &'a str,
    pub status: u16,
    /// Body bytes received from the client.
    pub bytes_in: u64,
    /// Body bytes sent to the client.
    pub bytes_out: u64,
    /// From the request's header to the end of its response.
    pub duration: Duration,
    /// From the request sent to the backend's response header.
    pub upstream: Option<Duration>,
    pub backend: Option<&'a str>,
    pub request_id: Option<&'a str>,
    pub user_agent: Option<&'a str>,
    /// How it ended (a stable snake_case word).
    pub reason: &'a str,
}

impl HttpAccessRecord<'_> {
    /// Writes the line at level INFO, target `weir::access`.
    pub fn emit(&self) {
        tracing::info!(
            target: "weir::access",
            listener = %self.listener,
            route = self.route,
            rule = self.rule.unwrap_or("-"),
            policy = self.policy.unwrap_or("-"),
            client = %self.client,
            method = self.method,
            host = self.host.unwrap_or("-"),
            path = self.path,
            version = self.version,
            status = self.status,
            bytes_in = self.bytes_in,
            bytes_out = self.bytes_out,
            duration_ms = self.duration.as_micros() as f64 / 1000.0,
            // A number (absent without an answer): JSON pipelines type the
            // field by its values.
            upstream_ms = self.upstream.map(|d| d.as_micros() as f64 / 1000.0),
            backend = self.backend.unwrap_or("-"),
            request_id = self.request_id.unwrap_or("-"),
            trace_id = self.trace_id.unwrap_or("-"),
            user_agent = self.user_agent.unwrap_or("-"),
            reason = self.reason,
        );
    }
}

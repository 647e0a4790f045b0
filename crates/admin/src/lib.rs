//! The admin endpoints of weir. HTTP (`[admin] http`, see [`http`]):
//! Prometheus metrics (`/metrics`, see [`metrics`]), liveness (`/healthz`) and
//! readiness (`/readyz`), the JSON API under `/api/v1/` with its live event
//! stream, and the status page at `/`. gRPC (`[admin] grpc`): the control API
//! ([`grpc`]), which the JSON API mirrors call for call. Both are bound before
//! the data plane starts, so a taken port fails the start, and both are
//! bounded ([`conn`]): a cap on open connections, in all and per client, a
//! handshake and an idle timeout, an accept loop that pauses when the
//! process is out of descriptors; and the connection listings both answer
//! share one budget ([`listing`]).

pub mod auth;
pub mod conn;
pub mod grpc;
pub mod grpc_metrics;
pub mod http;
pub mod listing;
pub mod metrics;
pub mod pb;
mod process;
pub mod reflection;

pub use http::{AdminListener, Handle};
pub use reflection::reflection_service;

use std::sync::Arc;

/// What the admin endpoints count about themselves: the gRPC calls, the
/// connections of both endpoints and the event streams of the JSON API;
/// and what they share: the places for connection listings.
#[derive(Debug, Default)]
pub struct Stats {
    pub grpc: Arc<grpc_metrics::GrpcStats>,
    pub conns: conn::AdminStats,
    pub events: http::EventStats,
    pub listings: listing::Budget,
}

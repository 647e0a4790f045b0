//! The weir runtime: it turns a validated [`weir_config::Config`] into bound
//! listeners, routes and pools, and runs the life of every connection: accept,
//! listener limit, route match by source, backend pick with retries on connect
//! failure, a two-way relay (splice(2) or a pooled buffer, half-close aware, with
//! an idle timeout), one access-log line, and graceful shutdown. Active and
//! passive health checks ([`health`]) decide which backends serve; a pool's
//! balancer is rebuilt and swapped atomically on every change ([`pool`]).
//!
//! Counters live beside the entity they describe ([`stats`]); the per-connection
//! path does relaxed atomic adds and takes no lock shared across connections.

mod conn;
pub mod events;
pub mod health;
mod hello;
pub mod listener;
mod peek;
pub mod pool;
mod proxy_in;
pub mod relay;
pub mod server;
pub mod stats;
mod store;
mod tls;

pub use server::{
    ControlError, LastReload, Options, ReloadError, Reloaded, Server, Snapshot, StartError,
};
pub use store::millis;

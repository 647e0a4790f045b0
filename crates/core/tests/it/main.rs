//! The integration tests of weir-core, in one binary: real sockets on loopback.

mod common;
mod health;
mod live;
mod proxy;
mod proxy_in;
mod queue;
mod reload;
mod tls;

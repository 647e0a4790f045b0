//! Tests of the `weir` binary, in one test binary: the command line, signals,
//! the demo, real peers (nginx, curl), and observability with the real
//! Prometheus tools.

mod cli;
mod control;
mod deploy;
mod observability;
mod proxy_protocol;
mod tls_passthrough;
mod upgrade;

//! Tests of the `weir` binary, in one test binary: the command line, signals,
//! the demo, real peers (nginx, curl), observability with the real
//! Prometheus tools, and weir out of resources under `prlimit`.

mod backends;
mod cli;
mod connections;
mod control;
mod deploy;
mod discovery;
mod exhaustion;
mod explain;
mod firewall;
mod fleet;
mod http;
mod http_auth;
mod http_outlier;
mod http_policy;
mod http_queue;
mod http_streams;
mod http_trace;
mod observability;
mod package;
mod proxy_protocol;
mod status_page;
mod systemd;
mod tls_passthrough;
mod udp;
mod upgrade;

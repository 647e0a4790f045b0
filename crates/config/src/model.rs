//! The validated, typed configuration. The data plane only ever sees these types;
//! they are built from the raw serde types by [`crate::load_str`] (or
//! [`crate::load_str_with`], [`crate::load_file`]) and carry no `Option`s for
//! things that have defaults.

use std::net::SocketAddr;
use std::time::Duration;

use ipnet::IpNet;

/// A whole, validated configuration file.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub admin: Admin,
    pub runtime: Runtime,
    pub log: Log,
    pub listeners: Vec<Listener>,
    pub pools: Vec<Pool>,
}

/// `[admin]`: the admin HTTP endpoint (`/healthz`, `/readyz`, ...). `None` = off.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Admin {
    pub http: Option<SocketAddr>,
}

/// `[runtime]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Runtime {
    /// Worker threads; 0 means one per CPU this process may run on.
    pub worker_threads: usize,
    /// Relay bytes with splice(2) through a pipe instead of a user-space copy.
    pub zero_copy: bool,
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Log {
    pub format: LogFormat,
    /// A `tracing` filter directive such as `info` or `weir=debug,info`; checked.
    pub level: String,
    pub access_log: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// `[[listeners]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Listener {
    pub name: String,
    pub bind: Vec<SocketAddr>,
    pub protocol: Protocol,
    pub max_connections: u32,
    pub idle_timeout: Duration,
    pub shutdown_timeout: Duration,
    /// In order; at most one route without a match (the catch-all), and it is last.
    pub routes: Vec<Route>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
}

/// `[[listeners.routes]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub name: String,
    pub matcher: Match,
    /// Name of the pool this route sends to.
    pub pool: String,
    /// Index of that pool in [`Config::pools`].
    pub pool_index: usize,
}

/// `match = { source = [...] }`. An empty list matches everything.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Match {
    pub source: Vec<IpNet>,
}

impl Match {
    /// True when this match has no conditions (a catch-all route).
    pub fn is_catch_all(&self) -> bool {
        self.source.is_empty()
    }
}

/// `[[pools]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Pool {
    pub name: String,
    pub balance: Balance,
    pub hash_key: HashKey,
    pub connect_timeout: Duration,
    /// Other backends tried when a connect fails.
    pub retries: u32,
    pub health: Health,
    pub backends: Vec<Backend>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    RoundRobin,
    LeastConn,
    Random,
    First,
    Maglev,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashKey {
    SourceIp,
    SourceAddr,
}

/// `[pools.health]`. Only `type = "none"` exists so far.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Health {
    #[default]
    None,
}

/// `[[pools.backends]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Backend {
    /// Unique within the pool; defaults to `address` as written.
    pub name: String,
    /// `address` exactly as written in the file (may be a host name).
    pub address_spec: String,
    /// The resolved address (the first one the resolver returned).
    pub address: SocketAddr,
    /// 0..=1000; 0 is never picked.
    pub weight: u32,
    /// Lower tiers serve first.
    pub tier: u32,
}

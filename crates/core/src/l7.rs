//! The seam where layer 7 plugs in. Routes with `mode = "l7"` are served by
//! a handler that another crate builds (`weir-http`), so the runtime stays
//! free of HTTP: the frontend accepts, reads the PROXY header, peeks and
//! routes as for any connection, then hands the client to the route's
//! [`HttpHandler`]. The handler picks backends from the runtime's pools,
//! connects through [`upstream`](crate::upstream) and counts into the
//! runtime's route and backend counters, which render with the rest.
//!
//! A handler is built for every snapshot. Connections keep the handler they
//! started with; [`HttpHandler::activate`] tells the handlers of a snapshot
//! that it now runs (so kept connections can follow the new rules), and
//! [`HttpHandler::retire`] tells the handler of a route that a reload removed
//! it (so its connections can drain).

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use weir_config::{Config, HttpRoute};

use crate::client::Client;
use crate::listener::Listener;
use crate::pool::Pool;

/// Builds the handlers of l7 routes; one per server, kept for its reloads.
pub trait HttpLayer: Send + Sync + fmt::Debug {
    /// Builds the handler of an l7 route for a new snapshot. Fails with a
    /// message (a certificate that does not load, say), which fails the start
    /// or the reload as a whole.
    fn build(&self, route: RouteBuild<'_>) -> Result<Arc<dyn HttpHandler>, String>;

    /// Told that the snapshot built from `config` now runs (after every
    /// `build` of a start or reload that succeeded; never after one that
    /// failed): what the layer keeps for the whole process follows it.
    fn commit(&self, _config: &Config) {}

    /// Writes the layer's own families (the span exporter's) to `/metrics`.
    fn render(&self, _w: &mut weir_telemetry::Writer) {}
}

/// What an l7 route's handler is built from.
#[derive(Debug)]
pub struct RouteBuild<'a> {
    pub config: &'a Config,
    /// Key path of the route, for error messages: `listeners[0].routes[1]`.
    pub path: String,
    pub listener: &'a str,
    pub route: &'a weir_config::Route,
    pub http: &'a HttpRoute,
    /// The pools of the new snapshot, indexed like `config.pools`.
    pub pools: &'a [Arc<Pool>],
    /// The TLS client of the route's `backend_tls`, loaded.
    pub backend_tls: Option<Arc<rustls::ClientConfig>>,
    /// The handler of the route of this name in the running snapshot.
    pub before: Option<&'a Arc<dyn HttpHandler>>,
    /// False when only backends changed (DNS, `weir backend add`): the
    /// route's files (certificates, keys, CAs) are taken from `before` as
    /// they were read, not read again.
    pub read_files: bool,
}

/// The future that serves one connection.
pub type Serving = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Serves the connections of one l7 route of one snapshot.
pub trait HttpHandler: Send + Sync + fmt::Debug {
    /// Serves one client connection routed here; `route` indexes
    /// `listener.routes`.
    fn serve(self: Arc<Self>, listener: Arc<Listener>, route: usize, client: Client) -> Serving;

    /// The snapshot holding this handler now runs, in `listener`.
    fn activate(&self, listener: &Listener);

    /// A reload removed this route (or changed it to layer 4), or its
    /// successor does not carry its connections on.
    fn retire(&self);

    /// Whether the connections of `older`, the route's handler in the
    /// snapshot before this one, go on under this one.
    fn carries_on(&self, _older: &dyn HttpHandler) -> bool {
        true
    }

    /// For the builder of the next snapshot, to take over what survives.
    fn as_any(&self) -> &dyn Any;

    /// The certificates the route terminates TLS with.
    /// The route's forward authentication, when it has one (`weir_auth_*`).
    fn auth(&self) -> Option<AuthSnapshot> {
        None
    }

    /// Requests each request policy of the route refused so far, by policy
    /// name (`weir_http_policy_blocked_total`).
    fn policy_blocks(&self) -> Vec<(Arc<str>, u64)> {
        Vec::new()
    }

    fn certificates(&self) -> Vec<Certificate> {
        Vec::new()
    }

    /// Which rule of the route would take `q`, and why each rule before it
    /// does not (`weir explain` with a request). Reads only: no policy or
    /// backend counts anything.
    fn explain(&self, _q: &HttpQuestion<'_>) -> Option<RulesExplained> {
        None
    }
}

/// A request as `weir explain` describes it.
#[derive(Debug, Clone, Copy)]
pub struct HttpQuestion<'a> {
    pub method: &'a str,
    /// As the client would send it (`Host` or `:authority`).
    pub host: Option<&'a str>,
    /// The request target's path, with its query if any, as sent.
    pub path: &'a str,
    /// (name, value) pairs.
    pub headers: &'a [(String, String)],
    pub client: std::net::IpAddr,
}

/// What an l7 route does with an [`HttpQuestion`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RulesExplained {
    /// Every rule in order, with its verdict.
    pub rules: Vec<crate::server::RouteVerdict>,
    /// The rule that takes the request; `None`: answered 404.
    pub rule: Option<String>,
    /// The pool the request goes to; `None`: it goes to none (a redirect,
    /// a refusal, no rule).
    pub pool: Option<String>,
    /// What happens to the request before (or instead of) a backend: the
    /// path it is matched with, a policy that refuses it, a redirect, an
    /// authentication service asked.
    pub notes: Vec<String>,
    /// Refused before any rule is read (a malformed method, host, framing
    /// or path: 400, 413), which comes before a misdirected host's 421.
    pub refused: bool,
}

/// What a route's forward authentication did so far.
#[derive(Debug, Clone)]
pub struct AuthSnapshot {
    /// Calls to the service by result (`allowed`, `denied`, `error`,
    /// `timeout`).
    pub results: Vec<(&'static str, u64)>,
    pub cache_hits: u64,
    pub cache_misses: u64,
    /// 0 closed, 1 open, 2 half-open.
    pub breaker: u8,
    pub duration: weir_telemetry::HistogramSnapshot,
}

/// A certificate a route serves, as `/metrics` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certificate {
    /// The certificate file as the config names it.
    pub file: String,
    /// Its `notAfter`, in seconds since the Unix epoch.
    pub not_after: i64,
}

/// How a TLS handshake with a client ended: the `result` and `reason` of
/// `weir_tls_handshakes_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsEnd {
    /// Completed.
    Ok,
    /// Not complete within the listener's `handshake_timeout`.
    Timeout,
    /// The client closed or reset the connection during the handshake.
    ClientClosed,
    /// Not TLS, or TLS weir would not speak (no common version or cipher,
    /// an alert from the client).
    Protocol,
    /// The client's certificate was missing or did not verify (`client_ca`).
    ClientCertificate,
}

impl TlsEnd {
    pub const ALL: [TlsEnd; 5] = [
        Self::Ok,
        Self::Timeout,
        Self::ClientClosed,
        Self::Protocol,
        Self::ClientCertificate,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Timeout => "timeout",
            Self::ClientClosed => "client_closed",
            Self::Protocol => "protocol",
            Self::ClientCertificate => "client_certificate",
        }
    }

    /// `success` or `failure`.
    pub fn result(self) -> &'static str {
        if self == Self::Ok {
            "success"
        } else {
            "failure"
        }
    }
}

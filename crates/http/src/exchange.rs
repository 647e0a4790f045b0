//! One request and its response as the logs and counters see them: filled
//! in as the request goes through the proxy, finished once when the
//! response's body has ended (or the client left), and then counted on the
//! route and the backend and written as one access-log line.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use http::Method;
use tokio::time::Instant;
use weir_core::listener::Listener;
use weir_core::pool::Pool;
use weir_telemetry::HttpAccessRecord;

use crate::serve::ConnState;

/// The access-log `reason` of a request that got its whole response.
pub(crate) const COMPLETED: &str = "completed";

#[derive(Debug)]
pub(crate) struct Exchange {
    pub(crate) listener: Arc<Listener>,
    pub(crate) route: usize,
    pub(crate) conn: Arc<ConnState>,
    pub(crate) client: SocketAddr,
    pub(crate) rule: Option<String>,
    pub(crate) method: Method,
    pub(crate) host: Option<String>,
    pub(crate) path: String,
    pub(crate) version: &'static str,
    pub(crate) user_agent: Option<String>,
    pub(crate) request_id: Option<String>,
    pub(crate) started: Instant,
    /// Request body bytes, counted by the request body as it streams.
    pub(crate) bytes_in: Arc<AtomicU64>,
    pub(crate) bytes_out: u64,
    pub(crate) status: u16,
    pub(crate) upstream: Option<Duration>,
    /// The backend that answered (its request is counted in flight).
    pub(crate) backend: Option<(Arc<Pool>, usize)>,
    pub(crate) reason: &'static str,
    finished: bool,
}

impl Exchange {
    pub(crate) fn start(
        listener: Arc<Listener>,
        route: usize,
        conn: Arc<ConnState>,
        client: SocketAddr,
        method: Method,
        path: String,
        version: &'static str,
    ) -> Exchange {
        conn.request_started();
        Exchange {
            listener,
            route,
            conn,
            client,
            rule: None,
            method,
            host: None,
            path,
            version,
            user_agent: None,
            request_id: None,
            started: Instant::now(),
            bytes_in: Arc::default(),
            bytes_out: 0,
            status: 0,
            upstream: None,
            backend: None,
            reason: COMPLETED,
            finished: false,
        }
    }

    /// Marks the backend `i` of `pool` as serving this request: counted in
    /// flight (the load `least_conn` sees) until the exchange finishes.
    pub(crate) fn set_backend(&mut self, pool: &Arc<Pool>, i: usize) {
        if let Some((p, old)) = self.backend.take()
            && let Some(b) = p.backends.get(old)
        {
            b.stats.http_requests_active.fetch_sub(1, Relaxed);
        }
        if let Some(b) = pool.backends.get(i) {
            b.stats.http_requests_active.fetch_add(1, Relaxed);
            self.backend = Some((Arc::clone(pool), i));
        }
    }

    /// Counts and logs the exchange; later calls do nothing.
    pub(crate) fn finish(&mut self) {
        if self.finished {
            return;
        }
        self.finished = true;
        self.conn.request_ended();
        let took = self.started.elapsed();
        let route = self.listener.routes.get(self.route);
        if self.status == 0 {
            // No answer was sent: the client left while the request was on
            // its way.
            if self.reason == COMPLETED {
                self.reason = weir_core::Reason::ClientClosed.as_str();
            }
        } else if let Some(route) = route {
            route.stats.http_request(self.status, took);
        }
        let backend = self.backend.as_ref().and_then(|(p, i)| p.backends.get(*i));
        if let Some(b) = backend {
            b.stats.http_requests_active.fetch_sub(1, Relaxed);
        }
        if !self.listener.access_log {
            return;
        }
        HttpAccessRecord {
            listener: &self.listener.name,
            route: route.map_or("-", |r| r.name.as_str()),
            rule: self.rule.as_deref(),
            client: self.client,
            method: self.method.as_str(),
            host: self.host.as_deref(),
            path: &self.path,
            version: self.version,
            status: self.status,
            bytes_in: self.bytes_in.load(Relaxed),
            bytes_out: self.bytes_out,
            duration: took,
            upstream: self.upstream,
            backend: backend.map(|b| b.name.as_str()),
            request_id: self.request_id.as_deref(),
            user_agent: self.user_agent.as_deref(),
            reason: self.reason,
        }
        .emit();
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        self.finish();
    }
}

//! The layer-4 handler: a routed client connection is relayed, byte for byte,
//! to a backend of the route's pool, and ends with one access-log line.

mod relay;

use weir_telemetry::{ActiveGuard, count};

use crate::Reason;
use crate::client::Client;
use crate::listener::{Listener, Route};
use crate::pool::Backend;
use crate::upstream::{self, Stream, Upstream};

/// Serves `client` on `route`, whose mode is layer 4 through `upstream`.
///
/// Everything here takes the client by reference, and is written as blocks
/// rather than `async fn`s: both keep a connection's task small (see
/// `frontend::handle`).
#[allow(clippy::manual_async_fn)] // an `async fn` would store its arguments twice
pub(crate) fn serve<'a>(
    listener: &'a Listener,
    route: &'a Route,
    upstream: &'a Upstream,
    client: &'a mut Client,
) -> impl Future<Output = ()> + Send + 'a {
    async move {
        // Kept small (a task holds it across the connect): microseconds
        // since accept, saturating at 71 minutes.
        let routed = micros(client.accepted_at.elapsed());
        // An operator may close it while it waits for a backend, and so may
        // the end of its listener's `shutdown_timeout`.
        let connected = tokio::select! {
            biased;
            r = upstream::connect(upstream, client) => r,
            why = crate::live::closed(client.live.as_deref()) => {
                let took = client.accepted_at.elapsed();
                route.stats.connection_duration.observe(took);
                listener.log(Some(route), client.peer, None, (0, 0), took, why);
                return;
            }
        };
        match connected {
            Ok((i, backend, evictions)) => {
                let connected = micros(client.accepted_at.elapsed()).saturating_sub(routed);
                route
                    .stats
                    .connect_duration
                    .observe(std::time::Duration::from_micros(connected.into()));
                let _slot = crate::pool::SlotGuard {
                    pool: &upstream.pool,
                    index: i,
                };
                let b = &upstream.pool.backends[i];
                if let Some(live) = &client.live {
                    live.set_backend(i);
                }
                relayed(listener, route, b, client, backend, evictions).await;
            }
            Err(failed) => {
                let took = client.accepted_at.elapsed();
                route.stats.connection_duration.observe(took);
                let reason = failed.reason;
                route.stats.connection_failed(reason);
                let tried = failed.describe(&upstream.pool);
                if Reason::REJECTIONS.contains(&reason) {
                    // No backend, or weir out of descriptors: a refusal.
                    listener.refuse_tried(Some(route), client.peer, took, reason, tried.as_deref());
                } else {
                    listener.log_tried(
                        Some(route),
                        client.peer,
                        None,
                        (0, 0),
                        took,
                        reason,
                        tried.as_deref(),
                    );
                }
            }
        }
    }
}

fn micros(d: std::time::Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

/// Relays a connection established to backend `b`, and logs its end. Not an
/// `async fn`, whose arguments would be stored twice (see `frontend::handle`).
#[allow(clippy::manual_async_fn)] // an `async fn` would store its arguments twice
fn relayed<'a>(
    listener: &'a Listener,
    route: &'a Route,
    b: &'a Backend,
    client: &'a mut Client,
    mut backend: Stream,
    since: u64,
) -> impl Future<Output = ()> + Send + 'a {
    async move {
        count(&b.stats.connections_total, 1);
        // Counted active from the moment it was picked (see `upstream::connect`).
        let _backend_active = ActiveGuard::adopt(&b.stats.connections_active);
        // Always there: the frontend enters every l4 connection.
        let Some(live) = client.live.as_deref() else {
            return;
        };
        // From the pick: an eviction while the connection was being set
        // up (TCP, PROXY header, TLS) counts too.
        let token = b.eviction_token();
        let evict = relay::Evict {
            token: &token,
            count: b.evictions(),
            since,
        };
        let settings = relay::Settings {
            idle_timeout: listener.idle_timeout,
            zero_copy: listener.zero_copy,
            refuse_proxy_header: client.refuse_proxy_header,
        };
        let outcome = match &mut backend {
            // Unconstrained: waiting for readiness takes no part in tokio's
            // cooperative budget here, as with `readable()`, so a bulk
            // transfer is not made to yield every 128 chunks (measured: ~8%
            // of 8-stream throughput). A direction still stops at the first
            // read that would block.
            Stream::Plain(backend) => {
                tokio::task::unconstrained(relay::relay(
                    &client.stream,
                    backend,
                    &b.stats,
                    settings,
                    evict,
                    live,
                ))
                .await
            }
            Stream::Tls(backend) => {
                // Boxed: the TLS relay's state is large, and only TLS
                // connections should carry it.
                Box::pin(relay::relay_stream(
                    &mut client.stream,
                    backend.as_mut(),
                    &b.stats,
                    settings,
                    evict,
                    live,
                ))
                .await
            }
        };
        let reason = match outcome.end {
            relay::End::Done(r) => r,
            relay::End::Evicted => b.eviction().reason(),
        };
        if reason == Reason::ProxyProtocol {
            listener.stats.reject(reason);
        }
        let took = client.accepted_at.elapsed();
        route.stats.connection_duration.observe(took);
        listener.log(
            Some(route),
            client.peer,
            Some(&b.name),
            (outcome.sent, outcome.received),
            took,
            reason,
        );
    }
}

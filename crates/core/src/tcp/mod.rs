//! The layer-4 handler: a routed client connection is relayed, byte for byte,
//! to a backend of the route's pool, and ends with one access-log line.

mod relay;

use weir_telemetry::{ActiveGuard, count};

use crate::Reason;
use crate::client::Client;
use crate::listener::{Listener, Route};
use crate::pool::Eviction;
use crate::upstream::{self, Stream, Upstream};

/// Serves `client` on `route`, whose mode is layer 4 through `upstream`.
pub(crate) async fn serve(listener: &Listener, route: &Route, upstream: &Upstream, client: Client) {
    let pool = &upstream.pool;
    let (backend_index, backend) = match upstream::connect(upstream, &client).await {
        Ok(ok) => ok,
        Err(reason) => {
            if reason == Reason::NoBackend {
                listener.stats.reject(reason);
            }
            let took = client.accepted_at.elapsed();
            route.stats.connection_duration.observe(took);
            listener.log(Some(route), client.peer, None, (0, 0), took, reason);
            return;
        }
    };
    let b = &pool.backends[backend_index];
    count(&b.stats.connections_total, 1);
    // Counted active from the moment it was picked (see `upstream::connect`).
    let _backend_active = ActiveGuard::adopt(&b.stats.connections_active);
    let evict = b.eviction_token();
    let settings = relay::Settings {
        idle_timeout: listener.idle_timeout,
        zero_copy: listener.zero_copy,
        refuse_proxy_header: client.refuse_proxy_header,
    };
    let (peer, accepted_at) = (client.peer, client.accepted_at);
    let outcome = match backend {
        Stream::Plain(backend) => {
            relay::relay(
                &client.stream,
                &backend,
                &b.stats,
                settings,
                &listener.kill,
                &evict,
            )
            .await
        }
        Stream::Tls(backend) => {
            // Boxed: the TLS relay's state is large, and only TLS
            // connections should carry it.
            Box::pin(relay::relay_stream(
                client.stream,
                *backend,
                &b.stats,
                settings,
                &listener.kill,
                &evict,
            ))
            .await
        }
    };
    let reason = match outcome.end {
        relay::End::Done(r) => r,
        relay::End::Evicted => match b.eviction() {
            Eviction::BackendDown => Reason::BackendDown,
            Eviction::DrainTimeout => Reason::DrainTimeout,
        },
    };
    if reason == Reason::ProxyProtocol {
        listener.stats.reject(reason);
    }
    let took = accepted_at.elapsed();
    route.stats.connection_duration.observe(took);
    listener.log(
        Some(route),
        peer,
        Some(&b.name),
        (outcome.sent, outcome.received),
        took,
        reason,
    );
}

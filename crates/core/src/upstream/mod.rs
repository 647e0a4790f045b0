//! Reaching a route's backends: pick one from the pool, connect within
//! `connect_timeout`, send the PROXY header, complete the TLS handshake
//! (`backend_tls`); when any of that fails, try another backend, as many
//! times as the pool's `retries` allow and while backends are left.
//! Connect outcomes feed the pool's passive health.

mod connect;
mod proxy_out;
pub(crate) mod tls;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;
use weir_config::{HashKey, ProxyVersion};

use crate::Reason;
use crate::client::Client;

/// Loads the files of every route's `backend_tls` (CA bundle, client
/// certificate and key) and of every health check over TLS, as a start or a
/// reload would: `weir check` fails on what would fail the reload. The
/// error names the key path.
pub fn check_files(config: &weir_config::Config) -> Result<(), String> {
    for (li, l) in config.listeners.iter().enumerate() {
        for (ri, r) in l.routes.iter().enumerate() {
            if let Some(t) = &r.backend_tls {
                tls::backend_config(t)
                    .map_err(|e| format!("listeners[{li}].routes[{ri}].backend_tls: {e}"))?;
            }
        }
    }
    for (pi, p) in config.pools.iter().enumerate() {
        let (probe_tls, alpn): (_, &[&[u8]]) = match &p.health.check {
            weir_config::Check::Http(h) => (h.tls.as_ref(), &[b"http/1.1"]),
            weir_config::Check::Grpc(g) => (g.tls.as_ref(), &[b"h2"]),
            _ => (None, &[]),
        };
        if let Some(t) = probe_tls {
            tls::client_config(t, alpn).map_err(|e| format!("pools[{pi}].health: {e}"))?;
        }
    }
    Ok(())
}
use crate::pool::Pool;

/// How a route reaches its backends.
#[derive(Debug)]
pub struct Upstream {
    pub pool: Arc<Pool>,
    /// PROXY protocol header sent before any data.
    pub send_proxy_protocol: ProxyVersion,
    /// TLS to the backend (`backend_tls`).
    pub(crate) tls: Option<BackendTls>,
}

/// A route's TLS client towards its backends, built once per config.
#[derive(Clone)]
pub(crate) struct BackendTls {
    pub(crate) connector: tokio_rustls::TlsConnector,
    /// SNI and verified name; `None`: the backend's IP.
    pub(crate) sni: Option<rustls::pki_types::ServerName<'static>>,
}

impl std::fmt::Debug for BackendTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendTls")
            .field("sni", &self.sni)
            .finish_non_exhaustive()
    }
}

/// An established connection to a backend: plain TCP, or TLS over it.
pub(crate) enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// Picks a backend and connects, trying other backends when a connect fails
/// (a failure that allows it, within the retry budget). On success returns
/// the backend's index, whose active gauge has been incremented (so that
/// concurrent picks by `least_conn` see it at once). On failure returns
/// `NoBackend` when nothing could be picked, else the last connect error.
/// Why no backend took a connection: the last error, and each backend tried
/// with its own (empty when none could be picked).
#[derive(Debug)]
pub(crate) struct Failed {
    pub(crate) reason: Reason,
    pub(crate) tried: Vec<(usize, Reason)>,
}

impl Failed {
    /// `"name:reason name:reason"` for the access log; `None` when nothing
    /// was tried.
    pub(crate) fn describe(&self, pool: &crate::pool::Pool) -> Option<String> {
        if self.tried.is_empty() {
            return None;
        }
        let parts: Vec<String> = self
            .tried
            .iter()
            .filter_map(|&(i, r)| {
                pool.backends
                    .get(i)
                    .map(|b| format!("{}:{}", b.name, r.as_str()))
            })
            .collect();
        Some(parts.join(" "))
    }
}

/// Picks a backend and connects to it, moving on within `retries`: the
/// backend's index, the stream, and the backend's evictions when it was
/// picked (a connection still being set up when the backend is evicted,
/// under `close_on_down` or at `drain_timeout`, is closed with the rest).
pub(crate) async fn connect(
    up: &Upstream,
    client: &Client,
) -> Result<(usize, Stream, u64), Failed> {
    let pool = &up.pool;
    let key = match pool.policy() {
        weir_balance::Policy::Maglev => affinity_key(pool.hash_key, client.peer, client.sni_key),
        _ => 0,
    };
    // Allocate only once a connect has failed.
    let mut tried: Vec<usize> = Vec::new();
    let mut errors: Vec<(usize, Reason)> = Vec::new();
    let mut last_err = None;
    let mut leave = None;
    for attempt in 0..=pool.retries {
        // Another backend is tried within the pool's retry budget.
        if attempt > 0 && pool.has_other(&tried) && !pool.may_retry(&mut leave) {
            break;
        }
        // With a slot taken: the caller gives it back when the connection
        // ends ([`crate::pool::SlotGuard`]).
        let i = match pool.acquire(key, &tried, None).await {
            Ok(i) => i,
            Err(Reason::NoBackend) => break,
            Err(reason) => {
                last_err = Some(reason);
                break;
            }
        };
        let Some(b) = pool.backends.get(i) else {
            pool.release(i);
            break;
        };
        b.stats.connections_active.fetch_add(1, Relaxed);
        let evictions = b.evictions_so_far();
        let mut held = Held {
            pool,
            index: i,
            armed: true,
        };
        let began = Instant::now();
        match establish(b.address, pool.connect_timeout, up, client).await {
            Ok(stream) => {
                held.armed = false;
                b.stats.connect_duration.observe(began.elapsed());
                pool.on_connect_success(i);
                return Ok((i, stream, evictions));
            }
            Err(reason) => {
                drop(held);
                b.stats.connect_error(reason);
                if reason == Reason::LocalResources {
                    pool.local_shortage(&b.name, "connect", "cannot create a socket");
                }
                pool.on_connect_failure(i, reason);
                tracing::debug!(pool = %pool.name, backend = %b.name, error = reason.as_str(), "connect failed");
                last_err = Some(reason);
                errors.push((i, reason));
                if !reason.retry() {
                    break;
                }
                tried.push(i);
            }
        }
    }
    Err(Failed {
        reason: last_err.unwrap_or(Reason::NoBackend),
        tried: errors,
    })
}

/// The slot and the active count a connect in progress holds: given back if
/// the connect fails, or if the connection is closed (an operator, shutdown)
/// before it is done.
struct Held<'a> {
    pool: &'a Arc<Pool>,
    index: usize,
    armed: bool,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if self.armed {
            if let Some(b) = self.pool.backends.get(self.index) {
                b.stats.connections_active.fetch_sub(1, Relaxed);
            }
            self.pool.release(self.index);
        }
    }
}

/// Connects to one backend and sends what goes before the client's bytes:
/// the PROXY header (in clear) and the TLS handshake. Both are part of
/// establishing the connection, so a failure moves on to another backend
/// like a refused connect.
async fn establish(
    addr: SocketAddr,
    timeout: Duration,
    up: &Upstream,
    client: &Client,
) -> Result<Stream, Reason> {
    let tcp = connect::connect(addr, timeout).await?;
    if up.send_proxy_protocol != ProxyVersion::Off {
        proxy_out::send(&tcp, client, up.send_proxy_protocol)
            .await
            .map_err(|e| Reason::from_connect_io(&e))?;
    }
    let Some(tls) = &up.tls else {
        return Ok(Stream::Plain(tcp));
    };
    let name = tls
        .sni
        .clone()
        .unwrap_or(rustls::pki_types::ServerName::IpAddress(addr.ip().into()));
    // Boxed: a TLS client's state is large, and only TLS backends should make
    // every connection's task carry it.
    let handshake = Box::pin(tokio::time::timeout(
        timeout,
        tls.connector.connect(name, tcp),
    ));
    match handshake.await {
        Ok(Ok(stream)) => Ok(Stream::Tls(Box::new(stream))),
        Ok(Err(e)) => {
            tracing::debug!(%addr, error = %e, "TLS handshake with the backend failed");
            Err(Reason::Tls)
        }
        Err(_) => Err(Reason::Tls),
    }
}

/// Connects to `addr` (TCP_NODELAY set), failing with `Timeout` after
/// `timeout`; an error is a connect reason (`Refused`, `LocalResources`...).
pub async fn connect_tcp(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, Reason> {
    connect::connect(addr, timeout).await
}

/// Completes a TLS handshake with the backend at `addr` over `tcp` within
/// `timeout`, sending `sni` (or, without one, verifying the backend's IP).
/// Fails with `Tls`.
pub async fn tls_handshake(
    connector: &tokio_rustls::TlsConnector,
    sni: Option<&rustls::pki_types::ServerName<'static>>,
    addr: SocketAddr,
    tcp: TcpStream,
    timeout: Duration,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, Reason> {
    let name = sni
        .cloned()
        .unwrap_or(rustls::pki_types::ServerName::IpAddress(addr.ip().into()));
    match tokio::time::timeout(timeout, connector.connect(name, tcp)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) => {
            tracing::debug!(%addr, error = %e, "TLS handshake with the backend failed");
            Err(Reason::Tls)
        }
        Err(_) => Err(Reason::Tls),
    }
}

/// The maglev key of a client: its IP, or its IP and port.
/// The maglev key of a server name: its hash, case folded (names are
/// case-insensitive), so `API.example` and `api.example` go to one backend.
pub fn sni_key(name: &str) -> u64 {
    let mut lower = [0u8; 256];
    let bytes = name.as_bytes();
    match lower.get_mut(..bytes.len()) {
        Some(buf) => {
            for (d, s) in buf.iter_mut().zip(bytes) {
                *d = s.to_ascii_lowercase();
            }
            weir_balance::hash_bytes(buf)
        }
        None => weir_balance::hash_bytes(name.to_ascii_lowercase().as_bytes()),
    }
}

/// `sni` is the hash of the ClientHello's server name (`hash_key = "sni"`);
/// without one the key is the source IP. An IPv4 client seen through an
/// IPv6 socket (`::ffff:192.0.2.1`) has the key of its IPv4 address, so
/// listeners on `[::]` and `0.0.0.0` send it to the same backend.
pub fn affinity_key(kind: HashKey, peer: SocketAddr, sni: Option<u64>) -> u64 {
    if let (HashKey::Sni, Some(key)) = (kind, sni) {
        return key;
    }
    let mut bytes = [0u8; 18];
    let len = match peer.ip().to_canonical() {
        IpAddr::V4(ip) => {
            bytes[..4].copy_from_slice(&ip.octets());
            4
        }
        IpAddr::V6(ip) => {
            bytes[..16].copy_from_slice(&ip.octets());
            16
        }
    };
    let len = match kind {
        HashKey::SourceIp | HashKey::Sni => len,
        HashKey::SourceAddr => {
            bytes[len..len + 2].copy_from_slice(&peer.port().to_be_bytes());
            len + 2
        }
    };
    weir_balance::hash_bytes(&bytes[..len])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv4_client_has_one_key_through_either_family() {
        let v4: SocketAddr = "192.0.2.1:5000".parse().expect("address");
        let mapped: SocketAddr = "[::ffff:192.0.2.1]:5000".parse().expect("address");
        let other: SocketAddr = "[2001:db8::1]:5000".parse().expect("address");
        for kind in [HashKey::SourceIp, HashKey::SourceAddr, HashKey::Sni] {
            assert_eq!(
                affinity_key(kind, v4, None),
                affinity_key(kind, mapped, None)
            );
            assert_ne!(
                affinity_key(kind, v4, None),
                affinity_key(kind, other, None)
            );
        }
        let later: SocketAddr = "192.0.2.1:5001".parse().expect("address");
        assert_eq!(
            affinity_key(HashKey::SourceIp, v4, None),
            affinity_key(HashKey::SourceIp, later, None)
        );
        assert_ne!(
            affinity_key(HashKey::SourceAddr, v4, None),
            affinity_key(HashKey::SourceAddr, later, None)
        );
    }
}

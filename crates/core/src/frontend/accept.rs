//! Listening sockets and their accept loops: bind with SO_REUSEPORT, accept,
//! count the connection against the listener's `max_connections`, and start
//! its task.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use arc_swap::ArcSwap;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use weir_telemetry::{Verdict, count};

use crate::Reason;
use crate::client::Client;
use crate::listener::Listener;

/// Pending connections the kernel may queue per socket (capped by somaxconn).
const BACKLOG: i32 = 4096;

/// Creates a listening socket with SO_REUSEADDR and SO_REUSEPORT (so several
/// processes can share a port during an upgrade) and IPV6_V6ONLY on IPv6
/// (so `[::]:P` and `0.0.0.0:P` can both be bound).
pub fn bind(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = bind_only(addr)?;
    listen(&socket)?;
    Ok(socket)
}

/// [`bind`] without listening yet (see [`listen`]): a listener's socket.
pub fn bind_only(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    // Accepted sockets inherit TCP_NODELAY from the listening socket on Linux,
    // which saves one setsockopt per connection.
    socket.set_tcp_nodelay(true)?;
    socket.set_nonblocking(true)?;
    socket.set_cloexec(true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Makes a socket [`bind`] made listen, when it is about to be accepted on.
/// Not before: the kernel shares a port's new connections among the sockets
/// that listen on it, and during an upgrade a new process's socket listening
/// through its first probe round would hold its share of them unanswered.
/// A socket systemd passed listens already, with the socket unit's backlog.
pub fn listen(socket: &std::net::TcpListener) -> io::Result<()> {
    let socket = socket2::SockRef::from(socket);
    if socket.is_listener()? {
        return Ok(());
    }
    socket.listen(BACKLOG)
}

/// True when a socket of another process already listens on `addr`. A bind
/// without SO_REUSEPORT fails on a port someone listens on, where weir's own
/// bind (with SO_REUSEPORT) could succeed beside another weir and split the
/// traffic between the two without a word. Port 0 is never in use.
pub fn in_use(addr: SocketAddr) -> bool {
    if addr.port() == 0 {
        return false;
    }
    let Ok(socket) = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
    else {
        return false;
    };
    // SO_REUSEADDR: a port with connections only in TIME_WAIT is free.
    let _ = socket.set_reuse_address(true);
    if addr.is_ipv6() {
        let _ = socket.set_only_v6(true);
    }
    matches!(socket.bind(&addr.into()), Err(e) if e.kind() == io::ErrorKind::AddrInUse)
}

/// Accepts until `stop` is cancelled, spawning one task per connection on
/// `tracker`. Each connection gets the listener in `slot` when it arrives (a
/// reload stores a new one there) and keeps it for its whole life.
pub(crate) async fn accept_loop(
    slot: Arc<ArcSwap<Listener>>,
    socket: TcpListener,
    stop: CancellationToken,
    closed: CancellationToken,
    tracker: TaskTracker,
) {
    // Tells whoever stopped us that the socket is closed (on every return).
    let _closed = closed.drop_guard();
    // One waiter for the whole loop, not one registration per accepted connection.
    let stopped = stop.cancelled();
    tokio::pin!(stopped);
    loop {
        let accepted = tokio::select! {
            biased;
            () = &mut stopped => break,
            r = socket.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                if let Some(pause) = accept_pause(&e) {
                    // Out of descriptors or memory: accepting again at once would
                    // spin; pending clients wait in the backlog meanwhile.
                    let listener = slot.load();
                    if let Verdict::Write { suppressed } = listener.stats.refusal_lines.check() {
                        tracing::warn!(listener = %listener.name, error = %e, suppressed, "accept failed; pausing 50ms");
                    }
                    tokio::select! {
                        () = &mut stopped => break,
                        () = tokio::time::sleep(pause) => {}
                    }
                }
                continue;
            }
        };
        admit(slot.load_full(), stream, peer, &tracker);
    }
    // Connections the kernel has completed but nobody accepted yet would be
    // reset when the socket closes: take them first. This narrows the gap of
    // a zero-downtime upgrade to the instant of close (which the kernel closes
    // too with net.ipv4.tcp_migrate_req = 1).
    let Ok(socket) = socket.into_std() else {
        return;
    };
    let listener = slot.load_full();
    // At most what the backlog held: clients that keep arriving as fast as
    // this loop takes them (a flood at the stop) must not hold it, and the
    // socket, open for good.
    let backlog = usize::try_from(BACKLOG).unwrap_or(4096);
    for (stream, peer) in std::iter::from_fn(|| socket.accept().ok()).take(backlog) {
        let stream = stream
            .set_nonblocking(true)
            .and_then(|()| tokio::net::TcpStream::from_std(stream));
        if let Ok(stream) = stream {
            admit(Arc::clone(&listener), stream, peer, &tracker);
        }
    }
}

/// Counts an accepted connection and starts handling it, or refuses it when
/// the listener is at `max_connections`.
fn admit(
    listener: Arc<Listener>,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    tracker: &TaskTracker,
) {
    let stats = &listener.stats;
    count(&stats.connections_total, 1);
    // The firewall first: a refused source costs no slot and no task.
    let mut slot = None;
    if listener.filters_at_accept(peer.ip()) {
        match listener.firewall.admit(peer.ip()) {
            Ok(s) => slot = s,
            Err(block) => {
                // Counted before the reset: a client that saw it can read
                // the count.
                listener.refuse_blocked(peer, Duration::ZERO, block);
                reject_now(stream);
                return;
            }
        }
    }
    let active = stats.connections_active.fetch_add(1, Relaxed);
    if active >= i64::from(listener.max_connections()) {
        stats.connections_active.fetch_sub(1, Relaxed);
        listener.refuse_on(None, peer, Duration::ZERO, Reason::MaxConnections);
        reject_now(stream);
        return;
    }
    let mut client = Client::accepted(stream, peer);
    client.slot = slot;
    tracker.spawn(super::handle(listener, client));
}

/// Closes a refused connection at once with a reset, so the client learns
/// immediately and no FIN_WAIT/TIME_WAIT state is left behind on our side.
fn reject_now(stream: tokio::net::TcpStream) {
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}

/// How long an accept loop pauses after `e`: a while when the process is out
/// of descriptors or memory (accepting again at once would spin until some
/// are freed, while the pending clients wait in the backlog), else not at all
/// (a client that gave up before its connection was accepted).
pub fn accept_pause(e: &io::Error) -> Option<Duration> {
    crate::reason::local_resources(e).then_some(Duration::from_millis(50))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listening_port_is_in_use_and_a_closed_one_is_not() {
        let listener = bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let addr = listener.local_addr().expect("local addr");
        assert!(in_use(addr));
        // Even though weir's own bind would share it.
        assert!(bind(addr).is_ok());
        drop(listener);
        assert!(!in_use(addr));
        assert!(!in_use("127.0.0.1:0".parse().expect("addr")));
    }

    #[test]
    fn accepted_sockets_inherit_nodelay() {
        let listener = bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let _client = std::net::TcpStream::connect(addr).expect("connect");
        listener.set_nonblocking(false).expect("blocking");
        let (accepted, _) = listener.accept().expect("accept");
        assert!(accepted.nodelay().expect("nodelay"));
    }
}

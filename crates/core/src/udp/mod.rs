//! UDP listeners (`protocol = "udp"`): datagrams relayed per flow.
//!
//! One task per bound socket receives in batches (`recvmmsg`, and GRO where
//! the kernel coalesces, through `quinn-udp`) and keeps that socket's flow
//! table: a flow per client address and port, with its own socket connected
//! to the backend picked for it. A datagram of a known flow is sent on at
//! once; the first of a new one passes the firewall, `max_flows`, the route
//! and the balancer. Each flow has a task that relays the backend's replies
//! to the client, from the address the client wrote to (`IP_PKTINFO`, so a
//! wildcard bind answers from the right address), and ends the flow after
//! `idle_timeout` of silence either way, once every datagram got its
//! `responses` replies, when the
//! backend goes down with `close_on_down`, or at shutdown. No task and no
//! allocation per datagram.

mod flow;
mod stats;

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use quinn_udp::{RecvMeta, UdpSockRef, UdpSocketState};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub(crate) use stats::render;
pub use stats::{DIRECTIONS, Drop, FLOW_SECONDS, UdpStats};

use crate::listener::Listener;

/// The largest UDP payload (IPv4: 65,535 - 8 - 20), and the receive buffer
/// of one datagram. With GRO one buffer may hold several datagrams of one
/// client, `stride` bytes apart.
pub(crate) const MAX_DATAGRAM: usize = 65_507;
const BUFFER: usize = 65_536;
/// Datagrams taken per receive call.
const BATCH: usize = 32;

/// Binds a UDP listening socket: SO_REUSEADDR and SO_REUSEPORT (as for TCP,
/// so an upgrade can share the port), IPV6_V6ONLY on IPv6, non-blocking.
pub fn bind(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.set_cloexec(true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// True when a UDP socket of another process is bound to `addr` (see
/// [`crate::frontend::in_use`]).
pub fn in_use(addr: SocketAddr) -> bool {
    if addr.port() == 0 {
        return false;
    }
    let Ok(socket) = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
    else {
        return false;
    };
    if addr.is_ipv6() {
        let _ = socket.set_only_v6(true);
    }
    matches!(socket.bind(&addr.into()), Err(e) if e.kind() == io::ErrorKind::AddrInUse)
}

/// A bound UDP socket made ready to serve: the batch and control-message
/// state `quinn-udp` keeps for it. Its flows hold it (their replies leave
/// from it); once nothing reads it any more (a stop, or a reload that no
/// longer listens on its address) they drain, and end at the listener's
/// `shutdown_timeout` at the latest, which closes it.
#[derive(Debug)]
pub(crate) struct Endpoint {
    pub(crate) socket: UdpSocket,
    pub(crate) state: UdpSocketState,
    /// Nothing reads the socket any more: its flows drain.
    pub(crate) retired: CancellationToken,
    /// The drain's time is up: its flows end.
    pub(crate) gone: CancellationToken,
}

impl Endpoint {
    pub(crate) fn new(std_socket: std::net::UdpSocket) -> io::Result<Endpoint> {
        let state = UdpSocketState::new(UdpSockRef::from(&std_socket))?;
        // quinn-udp forbids fragmentation (QUIC probes its path MTU); a
        // proxy relays datagrams of any size, which the network may have to
        // fragment.
        flow::allow_fragments(&std_socket)?;
        Ok(Endpoint {
            socket: UdpSocket::from_std(std_socket)?,
            state,
            retired: CancellationToken::new(),
            gone: CancellationToken::new(),
        })
    }
}

/// Receives on `endpoint` until `stop`, for the listener in `slot` (a
/// reload stores a new one there; a flow keeps the one it started with).
pub(crate) async fn serve(
    slot: Arc<ArcSwap<Listener>>,
    endpoint: Arc<Endpoint>,
    stop: CancellationToken,
    closed: CancellationToken,
    tracker: TaskTracker,
) {
    let _closed = closed.drop_guard();
    let mut memory = vec![0u8; BUFFER * BATCH];
    let mut bufs: Vec<IoSliceMut<'_>> = memory.chunks_mut(BUFFER).map(IoSliceMut::new).collect();
    let mut meta = [RecvMeta::default(); BATCH];
    let mut table = flow::Table::new(Arc::clone(&endpoint), tracker);
    let stopped = stop.cancelled();
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            biased;
            () = &mut stopped => break,
            Some(ended) = table.next_ended() => {
                table.forget(ended);
                continue;
            }
            r = endpoint.socket.readable() => {
                if r.is_err() {
                    break;
                }
            }
        }
        let received = endpoint.socket.try_io(Interest::READABLE, || {
            endpoint
                .state
                .recv(UdpSockRef::from(&endpoint.socket), &mut bufs, &mut meta)
        });
        let n = match received {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => {
                // An ICMP error for an earlier send, or a shortage: the
                // socket itself goes on.
                tracing::debug!(error = %e, "UDP receive failed");
                continue;
            }
        };
        let listener = table.batch(&slot);
        for (buf, m) in bufs.iter().zip(&meta).take(n) {
            let data = buf.get(..m.len).unwrap_or_default();
            if m.stride == 0 || m.stride >= m.len {
                table.datagram(&listener, m.addr, m.dst_ip, data);
            } else {
                // GRO: several datagrams of one client, `stride` apart.
                table.coalesced(&listener, m.addr, m.dst_ip, data, m.stride);
            }
        }
    }
    // Its flows still hold the socket for their replies; they drain, and
    // end at the listener's shutdown_timeout at the latest.
    endpoint.retired.cancel();
    let gone = endpoint.gone.clone();
    let grace = slot.load().shutdown_timeout;
    // Not on the tracker: a stop waits for the flows, not for this timer.
    tokio::spawn(async move {
        tokio::time::sleep(grace).await;
        gone.cancel();
    });
}

//! A socket's flow table and the task of each flow.
//!
//! The table belongs to the socket's receive task alone, so the datagram
//! path takes no lock: a flow's task marks it ended and tells the receive
//! task, which forgets it (closing its backend socket) at once, or replaces
//! it at its client's next datagram if that comes first. Sends are plain
//! non-blocking syscalls: a
//! datagram the kernel does not take at once is dropped and counted, as a
//! router would.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use quinn_udp::{Transmit, UdpSockRef, UdpSocketState};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::WaitForCancellationFuture;
use tokio_util::task::TaskTracker;
use weir_config::ProxyVersion;
use weir_telemetry::{ActiveGuard, count};

use super::stats::{Drop, TO_BACKEND, TO_CLIENT};
use super::{BUFFER, Endpoint, MAX_DATAGRAM};
use crate::Reason;
use crate::cancel::Watcher;
use crate::firewall::ClientSlot;
use crate::listener::{Listener, Mode};
use crate::live::{ConnState, Live, LiveGuard};
use crate::pool::Pool;

thread_local! {
    /// Where a flow's task reads its backend's replies: one buffer per
    /// worker thread, not one per flow (read and sent without a pause), room
    /// for a batch and one more of the largest datagrams.
    static REPLY: RefCell<Vec<u8>> = RefCell::new(vec![0; 2 * BUFFER]);
}

/// Batches of replies a flow relays before it lets its thread's other tasks
/// run: a backend that floods it cannot keep the thread for itself.
const REPLY_BATCHES: usize = 64;

/// At shutdown, a flow ends after this much silence (or its `idle_timeout`
/// if shorter).
const DRAIN_QUIET_MS: u64 = 1_000;

/// Milliseconds since the first call: a flow's clock of last activity.
fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// The bit of [`Shared::requests`] that says the flow ended.
const ENDED: u64 = 1 << 63;

/// What the receive task and a flow's task share.
#[derive(Debug)]
struct Shared {
    /// [`now_ms`] at the last datagram, either way.
    last: AtomicU64,
    /// Datagrams sent to the backend (with `responses`, the flow ends once
    /// it relayed `responses` replies for each, as nginx counts), and
    /// [`ENDED`]. One word, so that the receive task's count and the flow
    /// task's end are ordered: a datagram counted before the end keeps the
    /// flow going; one counted after it sees the end and starts a new flow.
    requests: AtomicU64,
    /// Its entry among the listener's live connections: payload bytes to
    /// the backend and to the client, and an operator's close.
    live: Arc<Live>,
    /// Cancelled when a runtime `deny` covers the flow's source: the flow
    /// ends (reason `firewall`).
    banned: tokio_util::sync::CancellationToken,
}

impl Shared {
    fn touch(&self) {
        self.last.store(now_ms(), Relaxed);
    }
}

/// A flow's key in its table: (sender, client, the address the sender
/// wrote to). A client that writes to two addresses of a wildcard listener
/// from one socket has two flows, each answering from the address it wrote
/// to.
type Key = (SocketAddr, SocketAddr, Option<IpAddr>);

/// Sent by a flow's task when it ends, so that the table forgets the flow
/// (and closes its backend socket) at once, not after a sweep: with a new
/// source port per query, as DNS clients do, ended flows would otherwise
/// hold a socket each until then.
#[derive(Debug)]
pub(super) struct Ended {
    key: Key,
    shared: Arc<Shared>,
}

/// Whether a flow's coalesced datagrams go to the backend in one send.
#[derive(Debug)]
enum Gso {
    /// Not tried yet.
    Untried,
    On(Box<UdpSocketState>),
    /// The kernel cannot: one by one.
    Off,
}

/// A flow, as its socket's receive task keeps it.
#[derive(Debug)]
pub(super) struct Flow {
    /// The runtime rules' deny generation its source was last checked at.
    checked: u64,
    upstream: Arc<UdpSocket>,
    gso: Gso,
    shared: Arc<Shared>,
    /// The PROXY v2 header put before each datagram to the backend.
    header: Option<Box<[u8]>>,
    pool: Arc<Pool>,
    backend: usize,
}

/// The flows of one listening socket, by client address and port.
#[derive(Debug)]
pub(super) struct Table {
    opener: Opener,
    /// By (sender, client): the same unless a trusted sender's PROXY header
    /// named the client.
    flows: HashMap<Key, Flow>,
    /// A datagram with its PROXY header in front.
    scratch: Vec<u8>,
    /// Where flows' tasks say they ended.
    ended: mpsc::UnboundedReceiver<Ended>,
    /// The firewall's generation as the batch of datagrams being handled
    /// began, read before its listener was: see [`Table::batch`].
    generation: u64,
}

impl Table {
    /// The listener for a batch of datagrams, with the firewall's generation
    /// read before it: a reload stores its listener, then moves the
    /// generation, so a batch that saw the new generation sees the new
    /// lists, and one that did not looks again at the next batch. (Read
    /// per datagram, a change landing mid-batch would be marked seen while
    /// the batch still checked the old lists.)
    pub(super) fn batch(&mut self, slot: &arc_swap::ArcSwap<Listener>) -> Arc<Listener> {
        self.generation = slot.load().firewall.runtime().deny_generation();
        slot.load_full()
    }

    pub(super) fn new(endpoint: Arc<Endpoint>, tracker: TaskTracker) -> Table {
        let (tx, ended) = mpsc::unbounded_channel();
        Table {
            opener: Opener {
                endpoint,
                tracker,
                ended: tx,
            },
            flows: HashMap::new(),
            generation: 0,
            scratch: Vec::new(),
            ended,
        }
    }

    /// The next flow that ended; never `None` (the table holds a sender).
    pub(super) async fn next_ended(&mut self) -> Option<Ended> {
        self.ended.recv().await
    }

    /// Forgets `ended` and any other flow that ended since, unless a new
    /// flow of the same client took its place already.
    pub(super) fn forget(&mut self, ended: Ended) {
        let mut next = Some(ended);
        while let Some(e) = next {
            if self
                .flows
                .get(&e.key)
                .is_some_and(|f| Arc::ptr_eq(&f.shared, &e.shared))
            {
                self.flows.remove(&e.key);
            }
            next = self.ended.try_recv().ok();
        }
    }

    /// Relays a datagram from `peer`, sent to `dst_ip`, starting its flow
    /// when it has none. A trusted sender's datagram starts with a PROXY v2
    /// header that names the client; anyone else's must not.
    pub(super) fn datagram(
        &mut self,
        listener: &Arc<Listener>,
        peer: SocketAddr,
        dst_ip: Option<IpAddr>,
        data: &[u8],
    ) {
        let stats = &listener.stats.udp;
        let (client, data) = match proxied(listener, peer, data) {
            Ok(x) => x,
            Err(why) => {
                stats.drop(why);
                return;
            }
        };
        let Some(flow) = live_flow(
            &mut self.flows,
            &self.opener,
            (listener, self.generation),
            (peer, client, dst_ip),
            1,
        ) else {
            return;
        };
        flow.shared.touch();
        let payload = match &flow.header {
            None => data,
            Some(header) => {
                if header.len() + data.len() > MAX_DATAGRAM {
                    stats.drop(Drop::TooLarge);
                    flow.shared.requests.fetch_sub(1, SeqCst);
                    return;
                }
                self.scratch.clear();
                self.scratch.extend_from_slice(header);
                self.scratch.extend_from_slice(data);
                &self.scratch
            }
        };
        match socket2::SockRef::from(&*flow.upstream).send(payload) {
            Ok(_) => {
                stats.relayed(TO_BACKEND, data.len());
                flow.shared.live.sent.fetch_add(data.len() as u64, Relaxed);
                if let Some(b) = flow.pool.backends.get(flow.backend) {
                    count(&b.stats.sent_bytes, data.len() as u64);
                    count(&b.stats.udp_datagrams[TO_BACKEND], 1);
                }
            }
            Err(e) => {
                stats.drop(Drop::SendError);
                // No reply is to be waited for.
                flow.shared.requests.fetch_sub(1, SeqCst);
                if e.kind() == io::ErrorKind::ConnectionRefused {
                    // The backend's ICMP port unreachable, for an earlier
                    // datagram: nothing listens there.
                    flow.pool.on_connect_failure(flow.backend, Reason::Refused);
                }
            }
        }
    }

    /// Relays the datagrams of one client that GRO coalesced into `data`,
    /// `stride` bytes apart: with one GSO send when the flow puts no header
    /// before them and the kernel takes it, else one by one.
    pub(super) fn coalesced(
        &mut self,
        listener: &Arc<Listener>,
        peer: SocketAddr,
        dst_ip: Option<IpAddr>,
        data: &[u8],
        stride: usize,
    ) {
        let stride = stride.max(1);
        // A trusted sender's datagrams each carry their own PROXY header.
        let batched = listener.proxy_accept.is_none()
            && data.len() > stride
            && self.segmented(listener, peer, dst_ip, data, stride);
        if !batched {
            for datagram in data.chunks(stride) {
                self.datagram(listener, peer, dst_ip, datagram);
            }
        }
    }

    /// [`Table::coalesced`] in one GSO send: false when it was not sent
    /// that way (nothing counted), true when it was sent or dropped.
    fn segmented(
        &mut self,
        listener: &Arc<Listener>,
        peer: SocketAddr,
        dst_ip: Option<IpAddr>,
        data: &[u8],
        stride: usize,
    ) -> bool {
        let segments = data.len().div_ceil(stride) as u64;
        let Some(flow) = live_flow(
            &mut self.flows,
            &self.opener,
            (listener, self.generation),
            (peer, peer, dst_ip),
            segments,
        ) else {
            // No flow could be opened: counted as a drop.
            return true;
        };
        let sent = flow.header.is_none()
            && !matches!(flow.gso, Gso::Off)
            && flow.send_segments(data, stride);
        if !sent {
            // Not segmented by the kernel (no GSO, or segments over the
            // path's MTU): one by one, now and for the rest of the flow.
            if flow.header.is_none() {
                flow.gso = Gso::Off;
            }
            flow.shared.requests.fetch_sub(segments, SeqCst);
            return false;
        }
        flow.shared.touch();
        let stats = &listener.stats.udp;
        for datagram in data.chunks(stride) {
            stats.relayed(TO_BACKEND, datagram.len());
        }
        flow.shared.live.sent.fetch_add(data.len() as u64, Relaxed);
        if let Some(b) = flow.pool.backends.get(flow.backend) {
            count(&b.stats.udp_datagrams[TO_BACKEND], segments);
            count(&b.stats.sent_bytes, data.len() as u64);
        }
        true
    }
}

/// What opens flows: the listening socket replies go out of, and where
/// the flows' tasks run.
#[derive(Debug)]
struct Opener {
    endpoint: Arc<Endpoint>,
    tracker: TaskTracker,
    ended: mpsc::UnboundedSender<Ended>,
}

impl Opener {
    /// A new flow for `client`: `max_flows`, the firewall, the route, a
    /// backend and a socket connected to it; its task started.
    fn open(
        &self,
        listener: &Arc<Listener>,
        checked: u64,
        (peer, client, dst_ip): Key,
        datagrams: u64,
    ) -> Result<Flow, Drop> {
        let stats = &listener.stats.udp;
        let max = listener.udp.map_or(0, |u| u.max_flows);
        // Counted first, so that two sockets of a listener cannot both take
        // the last place; given back by the flow's task, or below. Before
        // the firewall: a datagram dropped for `max_flows` must not take a
        // rate token or a place in the per-client table.
        if stats.flows_active.fetch_add(1, Relaxed) >= i64::from(max) {
            stats.flows_active.fetch_sub(1, Relaxed);
            return Err(Drop::MaxFlows);
        }
        // `checked` was read before the listener was: a change in between
        // is looked at again at the flow's next datagram.
        let slot = match listener.firewall.admit(client.ip()) {
            Ok(slot) => slot,
            Err(block) => {
                stats.flows_active.fetch_sub(1, Relaxed);
                listener.stats.blocked_many(block, datagrams);
                return Err(Drop::Firewall);
            }
        };
        self.start(listener, peer, client, dst_ip, slot)
            .map(|flow| Flow { checked, ..flow })
            .inspect_err(|_| {
                stats.flows_active.fetch_sub(1, Relaxed);
            })
    }

    /// [`Table::open`] past the limits: the route, a backend, a socket.
    fn start(
        &self,
        listener: &Arc<Listener>,
        peer: SocketAddr,
        client: SocketAddr,
        dst_ip: Option<IpAddr>,
        slot: Option<ClientSlot>,
    ) -> Result<Flow, Drop> {
        let ip = client.ip();
        let stats = &listener.stats.udp;
        let (index, route) = listener
            .routes
            .iter()
            .enumerate()
            .find(|(_, r)| r.matches(ip, None))
            .ok_or(Drop::NoRoute)?;
        let Mode::L4(up) = &route.mode else {
            return Err(Drop::NoRoute);
        };
        let pool = &up.pool;
        let key = match pool.policy() {
            weir_config::Policy::Maglev => {
                crate::upstream::affinity_key(pool.hash_key, client, None)
            }
            _ => 0,
        };
        let i = pool.pick(key, &[]).ok_or(Drop::NoBackend)?;
        let b = pool.backends.get(i).ok_or(Drop::NoBackend)?;
        // Taken with the pick, not when the flow's task first runs: an
        // eviction in between (the backend going down) would otherwise have
        // replaced the token already, unseen by the flow.
        let evict = b.eviction_token();
        let upstream = connected(b.address).map_err(|e| {
            if crate::reason::local_resources(&e) {
                pool.local_shortage(&b.name, "udp", "cannot create a socket");
                Drop::LocalResources
            } else {
                Drop::SendError
            }
        })?;
        let local = self
            .endpoint
            .socket
            .local_addr()
            .map_err(|_| Drop::SendError)?;
        let header = match up.send_proxy_protocol {
            ProxyVersion::V2 => {
                let dst = SocketAddr::new(dst_ip.unwrap_or(local.ip()), local.port());
                let mut out = Vec::new();
                weir_wire::proxy::encode_v2(
                    weir_wire::proxy::Command::Proxy,
                    weir_wire::proxy::Transport::Datagram,
                    Some((client, dst)),
                    &[],
                    &mut out,
                )
                .map_err(|_| Drop::SendError)?;
                Some(out.into_boxed_slice())
            }
            ProxyVersion::Off | ProxyVersion::V1 => None,
        };
        count(&stats.flows_total, 1);
        count(&route.stats.connections_total, 1);
        count(&b.stats.connections_total, 1);
        b.stats.connections_active.fetch_add(1, Relaxed);
        let live = listener
            .stats
            .live
            .enter(listener, index, client, ConnState::Udp);
        live.name_backend(i);
        let shared = Arc::new(Shared {
            last: AtomicU64::new(now_ms()),
            requests: AtomicU64::new(0),
            live: live.entry(),
            banned: tokio_util::sync::CancellationToken::new(),
        });
        let upstream = Arc::new(upstream);
        let task = Task {
            listener: Arc::clone(listener),
            route: index,
            pool: Arc::clone(pool),
            backend: i,
            upstream: Arc::clone(&upstream),
            endpoint: Arc::clone(&self.endpoint),
            shared: Arc::clone(&shared),
            peer,
            client,
            dst_ip,
            started: Instant::now(),
            _slot: slot,
            live,
            ended: self.ended.clone(),
            evict,
        };
        self.tracker.spawn(task.run());
        Ok(Flow {
            checked: 0,
            upstream,
            gso: Gso::Untried,
            shared,
            header,
            pool: Arc::clone(pool),
            backend: i,
        })
    }
}

/// The live flow of (`peer`, `client`), opened when there is none (a
/// drop counted when it cannot be), with `count` more datagrams to
/// answer.
fn live_flow<'t>(
    flows: &'t mut HashMap<Key, Flow>,
    opener: &Opener,
    (listener, generation): (&Arc<Listener>, u64),
    key: Key,
    count: u64,
) -> Option<&'t mut Flow> {
    let (peer, client, dst_ip) = key;
    // A runtime deny added since the flow was let in, a runtime allow
    // removed, or a reload's lists that refuse its source end it at its
    // source's next datagram: one load per datagram, the lookup only after
    // such a change.
    if let Some(f) = flows.get_mut(&key)
        && f.checked != generation
    {
        f.checked = generation;
        if let Some(block) = listener.firewall.listed(client.ip()) {
            f.shared.banned.cancel();
            flows.remove(&key);
            listener.stats.blocked_many(block, count);
            listener.stats.udp.drop_many(Drop::Firewall, count);
            return None;
        }
    }
    // Counted in the word that says whether the flow ended: either these
    // datagrams are counted before the task's end (which then waits for
    // their replies) or the end is seen here, and a new flow takes them.
    // See `Task::done`.
    let live = flows
        .get(&key)
        .is_some_and(|f| f.shared.requests.fetch_add(count, SeqCst) & ENDED == 0);
    if !live {
        match opener.open(listener, generation, (peer, client, dst_ip), count) {
            Ok(flow) => {
                flow.shared.requests.fetch_add(count, SeqCst);
                flows.insert(key, flow);
            }
            Err(why) => {
                listener.stats.udp.drop_many(why, count);
                return None;
            }
        }
    }
    flows.get_mut(&key)
}

impl Flow {
    /// Sends `data` to the backend as datagrams of `stride` bytes (the last
    /// may be shorter) in one GSO send; false when the kernel would not.
    fn send_segments(&mut self, data: &[u8], stride: usize) -> bool {
        if matches!(self.gso, Gso::Untried) {
            let state = UdpSocketState::new(UdpSockRef::from(&*self.upstream)).ok();
            // quinn-udp forbids fragmentation: allowed again, as for the
            // listening sockets. It also turns on GRO, which would hand the
            // flow's plain reads several replies as one: off again.
            let state = state.filter(|st| {
                st.max_gso_segments() > 1
                    && allow_fragments(&self.upstream).is_ok()
                    && nix::sys::socket::setsockopt(
                        &*self.upstream,
                        nix::sys::socket::sockopt::UdpGroSegment,
                        &false,
                    )
                    .is_ok()
            });
            self.gso = state.map_or(Gso::Off, |st| Gso::On(Box::new(st)));
        }
        let Gso::On(state) = &self.gso else {
            return false;
        };
        let Ok(destination) = self.upstream.peer_addr() else {
            return false;
        };
        if data.len().div_ceil(stride) > state.max_gso_segments() {
            return false;
        }
        let transmit = Transmit {
            destination,
            ecn: None,
            contents: data,
            segment_size: Some(stride),
            src_ip: None,
        };
        state
            .try_send(UdpSockRef::from(&*self.upstream), &transmit)
            .is_ok()
    }
}

/// Whether a backend socket's error is a path MTU update, which a connected
/// UDP socket reports as `EMSGSIZE`.
fn path_mtu(e: &io::Error) -> bool {
    e.raw_os_error() == Some(nix::libc::EMSGSIZE)
}

/// Clears the don't-fragment flag `quinn-udp` sets on a socket.
pub(super) fn allow_fragments(socket: &impl std::os::fd::AsFd) -> io::Result<()> {
    use rustix::net::sockopt;
    match sockopt::socket_domain(socket)? {
        rustix::net::AddressFamily::INET6 => {
            sockopt::set_ipv6_mtu_discover(socket, sockopt::Ipv6PathMtuDiscovery::DONT)?;
            // Linux refuses a datagram over the path MTU before it looks at
            // the discovery mode when this is set (`EMSGSIZE`).
            nix::sys::socket::setsockopt(socket, nix::sys::socket::sockopt::Ipv6DontFrag, &false)
                .map_err(io::Error::from)?;
        }
        _ => sockopt::set_ip_mtu_discover(socket, sockopt::Ipv4PathMtuDiscovery::DONT)?,
    }
    Ok(())
}

/// The client of a datagram from `peer`, and its payload: from a trusted
/// sender (`proxy_protocol`), the source its PROXY v2 header names (a LOCAL
/// header: the sender itself); a datagram from a trusted sender without a
/// valid v2 header, or one from anyone else that starts with a PROXY
/// signature (a spoof), is dropped.
fn proxied<'d>(
    listener: &Listener,
    peer: SocketAddr,
    data: &'d [u8],
) -> Result<(SocketAddr, &'d [u8]), Drop> {
    use weir_wire::proxy::{Detect, ProxyParse, Version, detect, parse};
    let Some(accept) = &listener.proxy_accept else {
        return Ok((peer, data));
    };
    if !accept.is_trusted(peer.ip()) {
        return match detect(data) {
            // A whole datagram shorter than a signature (empty, or `P`)
            // carries no header.
            Detect::NotProxy | Detect::NeedMore => Ok((peer, data)),
            Detect::V1 | Detect::V2 => Err(Drop::ProxyProtocol),
        };
    }
    match parse(data) {
        Ok(ProxyParse::Complete {
            header,
            consumed_len,
        }) if header.version == Version::V2 => {
            let client = header.addresses.map_or(peer, |(src, _)| src);
            let payload = data.get(consumed_len..).ok_or(Drop::ProxyProtocol)?;
            Ok((client, payload))
        }
        _ => Err(Drop::ProxyProtocol),
    }
}

/// A non-blocking UDP socket on an ephemeral port, connected to `backend`
/// (so the kernel filters out datagrams from anyone else).
fn connected(backend: SocketAddr) -> io::Result<UdpSocket> {
    let socket = Socket::new(
        Domain::for_address(backend),
        Type::DGRAM,
        Some(Protocol::UDP),
    )?;
    socket.set_nonblocking(true)?;
    socket.set_cloexec(true)?;
    let any = if backend.is_ipv4() {
        SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0)
    } else {
        SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), 0)
    };
    socket.bind(&any.into())?;
    socket.connect(&backend.into())?;
    UdpSocket::from_std(socket.into())
}

/// What ends or changes a flow besides its traffic.
#[derive(Debug, PartialEq)]
enum Signal {
    Kill,
    /// Closed by an operator (`weir connections close`), or by the
    /// listener's end.
    Closed(Reason),
    Drain,
    Evict,
    /// A runtime `deny` covers the source.
    Ban,
}

/// The shared signals a flow's task waits on.
struct Waits<'p, 'a> {
    kill: Pin<&'p mut WaitForCancellationFuture<'a>>,
    /// The flow's live entry (none in unit tests).
    closed: Option<&'a Live>,
    gone: Pin<&'p mut WaitForCancellationFuture<'a>>,
    drain: Pin<&'p mut WaitForCancellationFuture<'a>>,
    retired: Pin<&'p mut WaitForCancellationFuture<'a>>,
    evicted: Pin<&'p mut WaitForCancellationFuture<'a>>,
    banned: Pin<&'p mut WaitForCancellationFuture<'a>>,
}

impl Waits<'_, '_> {
    /// The signal to act on, the one that ends the flow soonest first. A
    /// drain is acted on once (`draining`), and the [`Watcher`] looks at the
    /// waits again only when one of them fires anew: an eviction that fired
    /// with the drain, before the task looked, must win over it, or it would
    /// never be seen.
    fn poll(&mut self, cx: &mut Context<'_>, draining: bool) -> Poll<Signal> {
        if self.kill.as_mut().poll(cx).is_ready() || self.gone.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Signal::Kill);
        }
        if let Some(Poll::Ready(why)) = self.closed.map(|l| l.poll_closed(cx)) {
            return Poll::Ready(Signal::Closed(why));
        }
        if self.banned.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Signal::Ban);
        }
        if self.evicted.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Signal::Evict);
        }
        if !draining
            && (self.drain.as_mut().poll(cx).is_ready()
                || self.retired.as_mut().poll(cx).is_ready())
        {
            return Poll::Ready(Signal::Drain);
        }
        Poll::Pending
    }
}

/// A flow's task: replies to the client, and the flow's end.
struct Task {
    listener: Arc<Listener>,
    route: usize,
    pool: Arc<Pool>,
    backend: usize,
    upstream: Arc<UdpSocket>,
    endpoint: Arc<Endpoint>,
    shared: Arc<Shared>,
    /// Where replies go: the client, or the trusted sender that spoke for it.
    peer: SocketAddr,
    /// Who the flow is for (the access log's client).
    client: SocketAddr,
    dst_ip: Option<IpAddr>,
    started: Instant,
    /// Held for the flow's life when `per_client.concurrent` counts it.
    _slot: Option<ClientSlot>,
    /// Its place among the listener's live connections, left at its end.
    live: LiveGuard,
    /// Told of the flow's end.
    ended: mpsc::UnboundedSender<Ended>,
    /// Cancelled by the backend's next eviction after the pick.
    evict: Arc<tokio_util::sync::CancellationToken>,
}

/// Marks the flow ended and tells the table, however the task ends.
struct EndNotice<'t>(&'t Task);

impl std::ops::Drop for EndNotice<'_> {
    fn drop(&mut self) {
        let t = self.0;
        t.shared.requests.fetch_or(ENDED, SeqCst);
        // The table is gone only when its receive task ended: nothing to
        // forget then.
        let _ = t.ended.send(Ended {
            key: (t.peer, t.client, t.dst_ip),
            shared: Arc::clone(&t.shared),
        });
    }
}

impl Task {
    async fn run(self) {
        let _end = EndNotice(&self);
        let Some(b) = self.pool.backends.get(self.backend) else {
            return;
        };
        // Both counted when the flow was opened.
        let _flow_active = ActiveGuard::adopt(&self.listener.stats.udp.flows_active);
        let _backend_active = ActiveGuard::adopt(&b.stats.connections_active);
        let evict = Arc::clone(&self.evict);
        let idle = self.listener.idle_timeout;
        let mut idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
        let limit = self.listener.udp.and_then(|u| u.responses);
        let mut replies = 0u64;
        let mut draining = false;
        // Made once for the flow's life, not per reply: the listener's and
        // the backend's tokens are shared by all their flows, so they are
        // looked at (their locks taken) only when one fired; the idle timer
        // is moved only when it runs out.
        let mut waits = Waits {
            kill: pin!(self.listener.kill.cancelled()),
            closed: Some(&self.live),
            gone: pin!(self.endpoint.gone.cancelled()),
            drain: pin!(self.listener.drain.cancelled()),
            retired: pin!(self.endpoint.retired.cancelled()),
            evicted: pin!(evict.cancelled()),
            banned: pin!(self.shared.banned.cancelled()),
        };
        let mut watcher = Watcher::new();
        let mut timer = pin!(tokio::time::sleep(idle));
        let reason = loop {
            let signal = std::future::poll_fn(|cx| watcher.poll(cx, |cx| waits.poll(cx, draining)));
            tokio::select! {
                s = signal => match s {
                    Signal::Kill => break Reason::Shutdown,
                    Signal::Closed(why) => break why,
                    // Shutting down (or the listener removed, or its socket
                    // no longer read): answers still on their way get a
                    // moment, then the flow ends.
                    Signal::Drain => {
                        draining = true;
                        idle_ms = idle_ms.min(DRAIN_QUIET_MS);
                        timer.as_mut().reset(self.quiet_until(idle_ms));
                        continue;
                    }
                    Signal::Ban => break Reason::Firewall,
                    Signal::Evict => break b.eviction().reason(),
                },
                () = timer.as_mut() => {
                    let quiet = now_ms().saturating_sub(self.shared.last.load(Relaxed));
                    if quiet >= idle_ms {
                        // Ended by the shutdown's wait, not by the
                        // listener's own `idle_timeout`.
                        break if draining {
                            Reason::Shutdown
                        } else {
                            Reason::IdleTimeout
                        };
                    }
                    timer.as_mut().reset(self.quiet_until(idle_ms));
                    continue;
                }
                // An error too: the backend's ICMP unreachable comes as one.
                r = self.upstream.ready(Interest::READABLE | Interest::ERROR) => match r {
                    Err(_) => break Reason::BackendError,
                    Ok(ready) if ready.is_error() => {
                        if let Some(end) = self.error() {
                            break end;
                        }
                    }
                    Ok(_) => {}
                }
            }
            if let Some(end) = self.replies(b, &mut replies, limit) {
                break end;
            }
        };
        self.shared.requests.fetch_or(ENDED, SeqCst);
        let took = self.started.elapsed();
        let stats = &self.listener.stats.udp;
        stats.flow_duration.observe(took);
        let route = self.listener.routes.get(self.route);
        if let Some(r) = route {
            r.stats.connection_duration.observe(took);
        }
        self.listener.log(
            route,
            self.client,
            Some(&b.name),
            (self.shared.live.sent(), self.shared.live.received()),
            took,
            reason,
        );
    }

    /// When the flow will have been quiet for `idle_ms`, counted from its
    /// last datagram either way.
    fn quiet_until(&self, idle_ms: u64) -> Instant {
        let quiet = now_ms().saturating_sub(self.shared.last.load(Relaxed));
        Instant::now() + Duration::from_millis(idle_ms.saturating_sub(quiet))
    }

    /// True when `replies` answer every datagram sent (`limit` each), and
    /// the flow is then marked ended, in one step with the count it looked
    /// at: a datagram the receive task counted meanwhile makes the step
    /// fail and is waited for; one counted after sees the end.
    fn done(&self, replies: u64, limit: u64) -> bool {
        let s = &self.shared;
        let mut now = s.requests.load(SeqCst);
        loop {
            if now & ENDED != 0 {
                return true;
            }
            if replies < limit.saturating_mul(now) {
                return false;
            }
            match s
                .requests
                .compare_exchange_weak(now, now | ENDED, SeqCst, SeqCst)
            {
                Ok(_) => return true,
                Err(actual) => now = actual,
            }
        }
    }

    /// The error the backend's socket holds, taken: the flow's end.
    fn error(&self) -> Option<Reason> {
        match self.upstream.take_error() {
            Ok(Some(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {
                // Nothing listens at the backend's port (ICMP unreachable):
                // passive health hears of it, and the client's next
                // datagram starts a flow that may go elsewhere.
                self.pool.on_connect_failure(self.backend, Reason::Refused);
                Some(Reason::Refused)
            }
            Ok(Some(e)) if !path_mtu(&e) => Some(Reason::BackendError),
            Err(_) => Some(Reason::BackendError),
            // `Some`: a path MTU update (ICMP "fragmentation needed" or
            // "packet too big"), not the backend's failure: the kernel
            // fragments the next ones to fit.
            Ok(Some(_) | None) => {
                // Gone already: forget the readiness, or it fires again.
                let _ = self.upstream.try_io(Interest::ERROR, || {
                    Err::<(), _>(io::ErrorKind::WouldBlock.into())
                });
                None
            }
        }
    }

    /// Sends the client every reply waiting; the flow's end when one came
    /// of it.
    fn replies(
        &self,
        b: &crate::pool::Backend,
        replies: &mut u64,
        limit: Option<u32>,
    ) -> Option<Reason> {
        let max_segments = self.endpoint.state.max_gso_segments().max(1);
        REPLY.with_borrow_mut(|buf| {
            for _ in 0..REPLY_BATCHES {
                let first = match self.upstream.try_recv(buf) {
                    Ok(n) => n,
                    Err(e) => return self.recv_failed(&e),
                };
                // Replies waiting behind it of the same size (the last of a
                // batch may be shorter) go out with it in one GSO send.
                let (mut len, mut segments, mut odd) = (first, 1, None);
                let mut ended = None;
                // The buffer holds two of the largest datagrams, so a read
                // past the batch is never cut short; the batch stays within
                // one datagram's size, as GSO needs.
                while first > 0 && segments < max_segments && len + first <= MAX_DATAGRAM {
                    let Some(rest) = buf.get_mut(len..) else {
                        break;
                    };
                    match self.upstream.try_recv(rest) {
                        Ok(m) if m == first => {
                            len += m;
                            segments += 1;
                        }
                        Ok(m) if m > 0 && m < first => {
                            len += m;
                            segments += 1;
                            break;
                        }
                        // Longer, or empty (a GSO send drops an empty
                        // segment): sent on its own, after the batch.
                        Ok(m) => {
                            odd = Some(m);
                            break;
                        }
                        Err(e) => {
                            if e.kind() != io::ErrorKind::WouldBlock {
                                ended = self.recv_failed(&e);
                            }
                            break;
                        }
                    }
                }
                self.send_replies(b, buf.get(..len).unwrap_or_default(), first, segments);
                if let Some(m) = odd {
                    self.send_replies(b, buf.get(len..len + m).unwrap_or_default(), m, 1);
                    segments += 1;
                }
                *replies = replies.saturating_add(u64::try_from(segments).unwrap_or(u64::MAX));
                if let Some(limit) = limit
                    && self.done(*replies, u64::from(limit))
                {
                    return Some(Reason::Responses);
                }
                if ended.is_some() {
                    return ended;
                }
            }
            // More may be waiting: the socket stays readable, and the flow's
            // loop comes back for them through tokio's budget, which lets
            // the thread's other tasks run in between.
            None
        })
    }

    /// What a failed read of the backend's socket means: nothing (no more
    /// replies now), or the flow's end.
    fn recv_failed(&self, e: &io::Error) -> Option<Reason> {
        match e.kind() {
            io::ErrorKind::WouldBlock => None,
            _ if path_mtu(e) => None,
            io::ErrorKind::ConnectionRefused => {
                // As in `error`.
                self.pool.on_connect_failure(self.backend, Reason::Refused);
                Some(Reason::Refused)
            }
            _ => Some(Reason::BackendError),
        }
    }

    /// Sends the client `segments` replies of `size` bytes each (the last
    /// may be shorter) held in `data`: one GSO send for several.
    fn send_replies(&self, b: &crate::pool::Backend, data: &[u8], size: usize, segments: usize) {
        let stats = &self.listener.stats.udp;
        let transmit = Transmit {
            destination: self.peer,
            ecn: None,
            contents: data,
            segment_size: (segments > 1).then_some(size),
            src_ip: self.dst_ip,
        };
        let sent = self
            .endpoint
            .state
            .try_send(UdpSockRef::from(&self.endpoint.socket), &transmit);
        if sent.is_err() {
            if segments > 1 {
                // The kernel would not segment them: one by one.
                for datagram in data.chunks(size.max(1)) {
                    self.send_replies(b, datagram, datagram.len(), 1);
                }
            } else {
                stats.drop(Drop::SendError);
            }
            return;
        }
        // An answer: the backend is there (passive health).
        self.pool.on_connect_success(self.backend);
        self.shared.touch();
        // An empty reply is a datagram too (`chunks` yields none for it).
        let sent = if data.is_empty() {
            1
        } else {
            data.len().div_ceil(size.max(1))
        };
        for i in 0..sent {
            let len = data.len().saturating_sub(i * size).min(size);
            stats.relayed(TO_CLIENT, len);
        }
        count(&b.stats.udp_datagrams[TO_CLIENT], sent as u64);
        self.shared
            .live
            .received
            .fetch_add(data.len() as u64, Relaxed);
        count(&b.stats.received_bytes, data.len() as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_util::sync::CancellationToken;

    /// The tokens of one flow's waits, and what the task would act on next,
    /// through a [`Watcher`] as the task looks.
    struct Flow {
        tokens: [CancellationToken; 6],
    }

    impl Flow {
        fn new() -> Flow {
            Flow {
                tokens: std::array::from_fn(|_| CancellationToken::new()),
            }
        }

        /// The signals the task acts on, in order, polling as its loop does
        /// until nothing more is ready.
        fn acted_on(&self) -> Vec<Signal> {
            let [kill, gone, drain, retired, evicted, banned] = &self.tokens;
            let mut waits = Waits {
                kill: pin!(kill.cancelled()),
                closed: None,
                gone: pin!(gone.cancelled()),
                drain: pin!(drain.cancelled()),
                retired: pin!(retired.cancelled()),
                evicted: pin!(evicted.cancelled()),
                banned: pin!(banned.cancelled()),
            };
            let mut watcher = Watcher::new();
            let mut cx = Context::from_waker(std::task::Waker::noop());
            let mut draining = false;
            let mut seen = Vec::new();
            while let Poll::Ready(s) = watcher.poll(&mut cx, |cx| waits.poll(cx, draining)) {
                let end = s != Signal::Drain;
                draining = true;
                seen.push(s);
                if end {
                    break;
                }
            }
            seen
        }
    }

    #[test]
    fn an_eviction_that_fired_with_a_drain_ends_the_flow() {
        let flow = Flow::new();
        flow.tokens[2].cancel();
        flow.tokens[4].cancel();
        assert_eq!(flow.acted_on(), [Signal::Evict]);
        let flow = Flow::new();
        flow.tokens[3].cancel();
        flow.tokens[4].cancel();
        assert_eq!(flow.acted_on(), [Signal::Evict]);
    }

    #[test]
    fn a_ban_ends_the_flow_after_a_kill_and_before_an_eviction() {
        let flow = Flow::new();
        flow.tokens[5].cancel();
        assert_eq!(flow.acted_on(), [Signal::Ban]);
        flow.tokens[4].cancel();
        assert_eq!(flow.acted_on(), [Signal::Ban]);
        flow.tokens[0].cancel();
        assert_eq!(flow.acted_on(), [Signal::Kill]);
    }

    #[test]
    fn a_drain_alone_is_acted_on_once_and_a_kill_wins_over_everything() {
        let flow = Flow::new();
        flow.tokens[2].cancel();
        assert_eq!(flow.acted_on(), [Signal::Drain]);
        let flow = Flow::new();
        for t in &flow.tokens {
            t.cancel();
        }
        assert_eq!(flow.acted_on(), [Signal::Kill]);
    }
}

//! Moving bytes between the client and the backend, both ways, until both sides are
//! done, one side fails, the connection is idle for too long, or shutdown cuts it.
//!
//! Each direction is a pump that waits for readiness and only then borrows a
//! buffer or a pipe (for splice(2)) from a small per-thread pool, and gives it
//! back as soon as the chunk is written. An idle connection therefore holds no
//! user-space buffer and no pipe: only its two sockets. In zero-copy mode a
//! direction moves small messages through the buffer and switches to splice once
//! a read fills the buffer (a bulk transfer), where avoiding the copy pays.
//!
//! Half-close: when one side sends EOF, the other side's write half is shut down
//! and the opposite direction keeps flowing until it ends too.

use std::cell::RefCell;
use std::io;
use std::net::Shutdown;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use rustix::pipe::{PipeFlags, SpliceFlags};
use socket2::SockRef;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, Interest};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use weir_telemetry::count;

use crate::Reason;
use crate::pool::BackendStats;

/// Size of one pooled copy buffer. A read that fills it marks a bulk transfer,
/// which switches the direction to splice in zero-copy mode.
const COPY_CHUNK: usize = 16 * 1024;
/// The most one splice moves at a time: the default pipe capacity.
const SPLICE_CHUNK: usize = 64 * 1024;
/// Buffers or pipes kept per thread for reuse; beyond that they are freed.
const POOL_CAP: usize = 128;

/// How a relay ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    Done(Reason),
    /// weir closed the backend's connections; the backend says why.
    Evicted,
}

/// Totals of one relay, for the access log.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Outcome {
    pub(crate) end: End,
    /// Bytes from the client to the backend.
    pub(crate) sent: u64,
    /// Bytes from the backend to the client.
    pub(crate) received: u64,
}

/// Progress shared by the two pumps of one connection: byte totals and the time of
/// the last activity (milliseconds since `start`), read by the idle timer.
#[derive(Debug)]
struct Progress {
    start: Instant,
    last_ms: AtomicU64,
    sent: AtomicU64,
    received: AtomicU64,
    /// Directions that have reached EOF (0, 1 or 2).
    eofs: AtomicU8,
}

impl Progress {
    fn new() -> Progress {
        Progress {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
            eofs: AtomicU8::new(0),
        }
    }

    /// Counts `n` bytes moved in one direction and marks activity.
    fn moved(&self, total: &AtomicU64, backend_total: &AtomicU64, n: usize) {
        let n = n as u64;
        total.fetch_add(n, Relaxed);
        count(backend_total, n);
        self.touch();
    }

    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Relaxed);
    }

    fn last_activity(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Relaxed))
    }
}

/// One direction of a connection.
struct Pump<'a> {
    from: &'a TcpStream,
    to: &'a TcpStream,
    /// The reason if reading `from` fails.
    from_error: Reason,
    /// The reason if writing `to` fails.
    to_error: Reason,
    progress: &'a Progress,
    total: &'a AtomicU64,
    backend_total: &'a AtomicU64,
    /// Refuse a PROXY protocol header at the start of this direction.
    guard_proxy: bool,
}

/// How one connection is relayed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    pub(crate) idle_timeout: Duration,
    pub(crate) zero_copy: bool,
    /// The client may not start with a PROXY header (an untrusted source on a
    /// listener that accepts the protocol).
    pub(crate) refuse_proxy_header: bool,
}

/// Relays until the connection ends and says how: `kill` closes it for
/// shutdown, `evict` for its backend (down with close_on_down, drain timeout).
pub(crate) async fn relay(
    client: &TcpStream,
    backend: &TcpStream,
    backend_stats: &BackendStats,
    settings: Settings,
    kill: &CancellationToken,
    evict: &CancellationToken,
) -> Outcome {
    let Settings {
        idle_timeout,
        zero_copy,
        refuse_proxy_header,
    } = settings;
    let progress = Progress::new();
    let up = Pump {
        from: client,
        to: backend,
        from_error: Reason::ClientError,
        to_error: Reason::BackendError,
        progress: &progress,
        total: &progress.sent,
        backend_total: &backend_stats.sent_bytes,
        guard_proxy: refuse_proxy_header,
    };
    let down = Pump {
        from: backend,
        to: client,
        from_error: Reason::BackendError,
        to_error: Reason::ClientError,
        progress: &progress,
        total: &progress.received,
        backend_total: &backend_stats.received_bytes,
        guard_proxy: false,
    };
    let up = up.run(zero_copy);
    let down = down.run(zero_copy);
    let end = drive(up, down, &progress, idle_timeout, kill, evict).await;
    Outcome {
        end,
        sent: progress.sent.load(Relaxed),
        received: progress.received.load(Relaxed),
    }
}

/// Relays between the client and a backend spoken to through a stream that
/// handles its own bytes (TLS, `backend_tls`). rustls keeps its own buffers per
/// connection, so this path reads into a pooled buffer it holds while waiting.
pub(crate) async fn relay_stream<B>(
    client: TcpStream,
    backend: B,
    backend_stats: &BackendStats,
    settings: Settings,
    kill: &CancellationToken,
    evict: &CancellationToken,
) -> Outcome
where
    B: AsyncRead + AsyncWrite + Unpin,
{
    let progress = Progress::new();
    let (mut client_read, mut client_write) = client.into_split();
    let (mut backend_read, mut backend_write) = tokio::io::split(backend);
    let up = stream_pump(
        &mut client_read,
        &mut backend_write,
        (Reason::ClientError, Reason::BackendError),
        &progress,
        (&progress.sent, &backend_stats.sent_bytes),
        settings.refuse_proxy_header,
    );
    let down = stream_pump(
        &mut backend_read,
        &mut client_write,
        (Reason::BackendError, Reason::ClientError),
        &progress,
        (&progress.received, &backend_stats.received_bytes),
        false,
    );
    let end = drive(up, down, &progress, settings.idle_timeout, kill, evict).await;
    Outcome {
        end,
        sent: progress.sent.load(Relaxed),
        received: progress.received.load(Relaxed),
    }
}

/// One direction over async streams: read, check, count, write, until EOF
/// (then shut down the other side's write half) or an error (the failed side).
async fn stream_pump<R, W>(
    from: &mut R,
    to: &mut W,
    (from_error, to_error): (Reason, Reason),
    progress: &Progress,
    (total, backend_total): (&AtomicU64, &AtomicU64),
    guard_proxy: bool,
) -> Result<(), Reason>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut guard = guard_proxy.then(ProxyGuard::default);
    loop {
        let mut buf = PooledBuf::take();
        let n = from.read(buf.as_mut()).await.map_err(|_| from_error)?;
        if n == 0 {
            if progress.eofs.fetch_add(1, Relaxed) == 0 {
                let _ = to.shutdown().await;
            }
            return Ok(());
        }
        if let Some(g) = &mut guard {
            match g.feed(&buf.as_mut()[..n]) {
                Some(true) => return Err(Reason::ProxyProtocol),
                Some(false) => guard = None,
                None => {}
            }
        }
        progress.moved(total, backend_total, n);
        to.write_all(&buf.as_mut()[..n])
            .await
            .map_err(|_| to_error)?;
        to.flush().await.map_err(|_| to_error)?;
    }
}

/// Runs both directions until the connection ends, with the idle timer and the
/// shutdown and eviction tokens; says how it ended.
async fn drive<U, D>(
    up: U,
    down: D,
    progress: &Progress,
    idle_timeout: Duration,
    kill: &CancellationToken,
    evict: &CancellationToken,
) -> End
where
    U: std::future::Future<Output = Result<(), Reason>>,
    D: std::future::Future<Output = Result<(), Reason>>,
{
    tokio::pin!(up, down);
    let idle = tokio::time::sleep(idle_timeout);
    let killed = kill.cancelled();
    let evicted = evict.cancelled();
    tokio::pin!(idle, killed, evicted);
    let mut up_done = false;
    let mut down_done = false;
    loop {
        tokio::select! {
            // Fixed order: no random draw per poll.
            biased;
            () = &mut killed => break End::Done(Reason::Shutdown),
            () = &mut evicted => break End::Evicted,
            r = &mut up, if !up_done => match r {
                Ok(()) if down_done => break End::Done(Reason::BackendClosed),
                Ok(()) => up_done = true,
                Err(reason) => break End::Done(reason),
            },
            r = &mut down, if !down_done => match r {
                Ok(()) if up_done => break End::Done(Reason::ClientClosed),
                Ok(()) => down_done = true,
                Err(reason) => break End::Done(reason),
            },
            () = &mut idle => {
                let deadline = progress.last_activity() + idle_timeout;
                if Instant::now() >= deadline {
                    break End::Done(Reason::IdleTimeout);
                }
                idle.as_mut().reset(deadline);
            }
        }
    }
}

/// Watches the first bytes of a direction for a PROXY protocol signature,
/// across as many reads as it takes to decide (at most 12 bytes).
#[derive(Debug, Default)]
struct ProxyGuard {
    prefix: [u8; 12],
    len: usize,
}

impl ProxyGuard {
    /// `Some(true)`: a PROXY header starts here; `Some(false)`: it cannot any
    /// more; `None`: undecided yet.
    fn feed(&mut self, bytes: &[u8]) -> Option<bool> {
        let take = (self.prefix.len() - self.len).min(bytes.len());
        self.prefix[self.len..self.len + take].copy_from_slice(&bytes[..take]);
        self.len += take;
        match weir_wire::proxy::detect(&self.prefix[..self.len]) {
            weir_wire::proxy::Detect::V1 | weir_wire::proxy::Detect::V2 => Some(true),
            weir_wire::proxy::Detect::NotProxy => Some(false),
            weir_wire::proxy::Detect::NeedMore => None,
        }
    }
}

/// What one read-and-forward step did.
enum Step {
    /// Moved this many bytes.
    Moved(usize),
    /// The source sent EOF.
    Eof,
    /// Nothing to read after all (spurious readiness).
    Again,
    /// No pipe could be had (out of descriptors): use the buffer.
    NoPipe,
}

impl Pump<'_> {
    /// Runs until EOF from `from` (then shuts down `to`'s write half), or fails with
    /// the side whose socket failed.
    ///
    /// With `zero_copy`, a direction starts with buffered copies (cheaper for the
    /// small messages of request/response protocols) and switches to splice(2)
    /// once one read fills the whole buffer, i.e. for bulk transfers.
    async fn run(self, zero_copy: bool) -> Result<(), Reason> {
        let mut splicing = false;
        // The first chunk always goes through the buffer (splicing starts only
        // after a full one), so the guard sees the first bytes.
        let mut guard = self.guard_proxy.then(ProxyGuard::default);
        loop {
            self.from.readable().await.map_err(|_| self.from_error)?;
            let step = if splicing {
                self.splice_once().await?
            } else {
                self.copy_once(&mut guard).await?
            };
            match step {
                // Once a direction splices it keeps splicing: it is a bulk one.
                Step::Moved(n) => splicing |= zero_copy && n == COPY_CHUNK,
                Step::Eof => return self.eof(),
                Step::Again => {}
                Step::NoPipe => splicing = false,
            }
        }
    }

    fn moved(&self, n: usize) {
        self.progress.moved(self.total, self.backend_total, n);
    }

    fn eof(&self) -> Result<(), Reason> {
        // When the other direction has already ended, both sockets are about to be
        // closed, and close() sends the FIN: no separate shutdown needed.
        if self.progress.eofs.fetch_add(1, Relaxed) == 0 {
            // The peer may already be gone; the other direction will notice.
            let _ = SockRef::from(self.to).shutdown(Shutdown::Write);
        }
        Ok(())
    }

    /// One read into a pooled buffer and the write of what it got.
    async fn copy_once(&self, guard: &mut Option<ProxyGuard>) -> Result<Step, Reason> {
        let mut buf = PooledBuf::take();
        let dst = buf.as_mut();
        let n = match read_draining(self.from, COPY_CHUNK, || {
            rustix::io::read(self.from, dst).map_err(io::Error::from)
        }) {
            Ok(0) => return Ok(Step::Eof),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Step::Again),
            Err(_) => return Err(self.from_error),
        };
        if let Some(g) = guard {
            match g.feed(&buf.as_mut()[..n]) {
                Some(true) => return Err(Reason::ProxyProtocol),
                Some(false) => *guard = None,
                None => {}
            }
        }
        self.moved(n);
        let mut chunk = &buf.as_mut()[..n];
        while !chunk.is_empty() {
            match self.to.try_write(chunk) {
                Ok(m) => chunk = &chunk[m..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.to.writable().await.map_err(|_| self.to_error)?;
                }
                Err(_) => return Err(self.to_error),
            }
        }
        Ok(Step::Moved(n))
    }

    /// One splice from the source socket into a pooled pipe and out of it into
    /// the destination socket.
    async fn splice_once(&self) -> Result<Step, Reason> {
        let flags = SpliceFlags::MOVE | SpliceFlags::NONBLOCK;
        let Ok(pipe) = Pipe::take() else {
            return Ok(Step::NoPipe);
        };
        // Not `read_draining`: a pipe's capacity counts page slots, not bytes, so a
        // short splice does not prove the socket is drained. Only EAGAIN does.
        let n = match self.from.try_io(Interest::READABLE, || {
            rustix::pipe::splice(self.from, None, &pipe.write, None, SPLICE_CHUNK, flags)
                .map_err(io::Error::from)
        }) {
            Ok(0) => {
                pipe.give_back();
                return Ok(Step::Eof);
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                pipe.give_back();
                return Ok(Step::Again);
            }
            Err(_) => return Err(self.from_error),
        };
        self.moved(n);
        let mut left = n;
        while left > 0 {
            match self.to.try_io(Interest::WRITABLE, || {
                rustix::pipe::splice(&pipe.read, None, self.to, None, left, flags)
                    .map_err(io::Error::from)
            }) {
                Ok(m) => left -= m.min(left),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.to.writable().await.map_err(|_| self.to_error)?;
                }
                // The pipe still holds bytes: it is dropped, not reused.
                Err(_) => return Err(self.to_error),
            }
        }
        pipe.give_back();
        Ok(Step::Moved(n))
    }
}

/// Reads once from `from` through `op` (a read(2) of at most `max` bytes), and
/// when fewer than `max` bytes came the socket is taken as drained: its readiness
/// is cleared right away. That saves the extra read that would otherwise only
/// return EAGAIN, one syscall per chunk. Sound because a TCP read copies
/// everything queued up to the buffer's length, so a short read left the queue
/// empty; and with tokio's edge-triggered readiness, bytes arriving after the
/// read raise a new event (a readiness tick newer than ours is never cleared).
fn read_draining(
    from: &TcpStream,
    max: usize,
    op: impl FnOnce() -> io::Result<usize>,
) -> io::Result<usize> {
    let mut short = None;
    let r = from.try_io(Interest::READABLE, || match op() {
        Ok(n) if n > 0 && n < max => {
            short = Some(n);
            Err(io::ErrorKind::WouldBlock.into())
        }
        other => other,
    });
    match short {
        Some(n) => Ok(n),
        None => r,
    }
}

thread_local! {
    static BUFFERS: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
    static PIPES: RefCell<Vec<Pipe>> = const { RefCell::new(Vec::new()) };
}

/// A copy buffer borrowed from the current thread's pool; returned on drop (to the
/// pool of whichever thread drops it).
struct PooledBuf(Option<Box<[u8]>>);

impl PooledBuf {
    fn take() -> Self {
        let buf = BUFFERS
            .with(|b| b.borrow_mut().pop())
            .unwrap_or_else(|| vec![0u8; COPY_CHUNK].into_boxed_slice());
        PooledBuf(Some(buf))
    }

    fn as_mut(&mut self) -> &mut [u8] {
        self.0.as_deref_mut().unwrap_or_default()
    }
}

impl Drop for PooledBuf {
    fn drop(&mut self) {
        if let Some(buf) = self.0.take() {
            BUFFERS.with(|b| {
                let mut b = b.borrow_mut();
                if b.len() < POOL_CAP {
                    b.push(buf);
                }
            });
        }
    }
}

/// An empty pipe used as the in-kernel buffer of splice(2).
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    fn take() -> io::Result<Pipe> {
        if let Some(p) = PIPES.with(|p| p.borrow_mut().pop()) {
            return Ok(p);
        }
        let (read, write) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
        Ok(Pipe { read, write })
    }

    /// Returns an empty pipe to this thread's pool. Only call when every byte
    /// spliced in has been spliced out.
    fn give_back(self) {
        PIPES.with(|p| {
            let mut p = p.borrow_mut();
            if p.len() < POOL_CAP {
                p.push(self);
            }
        });
    }
}

impl std::fmt::Debug for Pipe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipe")
            .field("read", &self.read.as_fd())
            .field("write", &self.write.as_fd())
            .finish()
    }
}

//! The relay over two sockets: each direction is a [`Pump`], a state machine
//! polled by hand, so that an idle connection's task holds only the pumps'
//! few fields, the idle timer and the eviction wait.

use std::io;
use std::net::Shutdown;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use rustix::pipe::SpliceFlags;
use socket2::SockRef;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::Sleep;
use tokio_util::sync::WaitForCancellationFuture;
use weir_telemetry::count;

use super::buffers::{COPY_CHUNK, Pipe, PooledBuf};
use super::guard::ProxyGuard;
use super::{End, EndState, Evict, Outcome, Progress, Settings};
use crate::Reason;
use crate::live::Live;
use crate::pool::BackendStats;

/// The most one splice moves at a time: the default pipe capacity.
const SPLICE_CHUNK: usize = 64 * 1024;
/// The most one direction moves in one poll of the relay: the relay runs
/// outside tokio's cooperative budget (see `tcp`), so without it a bulk
/// transfer whose reads never wait would keep its worker thread (probes,
/// accepts, `/metrics` and every other connection on it) for as long as
/// it lasts. Some milliseconds of copying; then the task yields its turn.
const MOVED_PER_POLL: usize = 8 << 20;

/// One direction of a connection.
struct Pump<'a> {
    from: &'a TcpStream,
    to: &'a TcpStream,
    /// The backend's byte counter for this direction.
    backend_total: &'a AtomicU64,
    /// Bytes moved in this direction: the connection's live count.
    total: &'a AtomicU64,
    /// The reason if reading `from` fails.
    from_error: Reason,
    /// The reason if writing `to` fails.
    to_error: Reason,
    /// Watching the first bytes for a PROXY protocol header to refuse.
    guard: Option<ProxyGuard>,
    zero_copy: bool,
    /// A bulk direction: moves through splice(2) (zero-copy mode only).
    splicing: bool,
    /// Bytes read but not yet all written: the pump waits for `to`.
    pending: Pending,
}

/// What a pump holds while `to` is not writable.
enum Pending {
    Nothing,
    /// `buf[at..len]` is still to be written (a chunk is at most 16 KiB).
    Buf {
        buf: PooledBuf,
        at: u32,
        len: u32,
    },
    /// `left` bytes in the pipe are still to be spliced out (at most 64 KiB).
    Pipe {
        pipe: Pipe,
        left: u32,
    },
}

pin_project! {
    /// The relay of one connection over two sockets, as one future whose
    /// state is laid out here rather than by the compiler: the two pumps,
    /// the idle timer and the eviction wait, nothing else.
    pub(crate) struct Relay<'a> {
        up: Pump<'a>,
        down: Pump<'a>,
        progress: Progress<'a>,
        state: EndState,
        live: &'a Live,
        evict: Evict<'a>,
        #[pin]
        evicted: WaitForCancellationFuture<'a>,
        #[pin]
        idle: Sleep,
    }
}

/// Relays until the connection ends and says how: `live` closed (by an
/// operator, or for shutdown), `evict` for its backend (down with
/// close_on_down, drain timeout).
pub(crate) fn relay<'a>(
    client: &'a TcpStream,
    backend: &'a TcpStream,
    backend_stats: &'a BackendStats,
    settings: Settings,
    evict: Evict<'a>,
    live: &'a Live,
) -> Relay<'a> {
    let pump = |from, to, (backend_total, total), (from_error, to_error), refuse: bool| Pump {
        from,
        to,
        backend_total,
        total,
        from_error,
        to_error,
        guard: refuse.then(ProxyGuard::default),
        zero_copy: settings.zero_copy,
        splicing: false,
        pending: Pending::Nothing,
    };
    Relay {
        up: pump(
            client,
            backend,
            (&backend_stats.sent_bytes, &live.sent),
            (Reason::ClientError, Reason::BackendError),
            settings.refuse_proxy_header,
        ),
        down: pump(
            backend,
            client,
            (&backend_stats.received_bytes, &live.received),
            (Reason::BackendError, Reason::ClientError),
            false,
        ),
        progress: Progress::new(live.started()),
        state: EndState::new(settings.idle_timeout),
        live,
        evict,
        evicted: evict.token.cancelled(),
        idle: tokio::time::sleep(settings.idle_timeout),
    }
}

impl Future for Relay<'_> {
    type Output = Outcome;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        let this = self.project();
        let (up, down, progress) = (this.up, this.down, &*this.progress);
        let end = if let Poll::Ready(why) = this.live.poll_closed(cx) {
            End::Done(why)
        } else {
            ready!(this.state.poll(
                cx,
                (&*this.evict, this.evicted),
                this.idle,
                progress,
                |cx| up.poll(cx, progress),
                |cx| down.poll(cx, progress),
            ))
        };
        Poll::Ready(Outcome {
            end,
            sent: up.total.load(Relaxed),
            received: down.total.load(Relaxed),
        })
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
    /// Moves bytes until EOF from `from` (then shuts down `to`'s write half), or
    /// fails with the reason of the socket that failed.
    ///
    /// With `zero_copy`, a direction starts with buffered copies (cheaper for the
    /// small messages of request/response protocols) and switches to splice(2)
    /// once one read fills the whole buffer, i.e. for bulk transfers. The first
    /// chunk always goes through the buffer, so the PROXY guard sees it.
    fn poll(&mut self, cx: &mut Context<'_>, progress: &Progress<'_>) -> Poll<Result<(), Reason>> {
        let mut moved = 0;
        loop {
            if moved >= MOVED_PER_POLL {
                // Woken once the runtime has looked for I/O again (tokio's
                // `yield_now` defers the wake-up until then): a plain
                // wake-up would be run again before the other connections'
                // readiness is even read.
                let _ = std::pin::pin!(tokio::task::yield_now()).poll(cx);
                return Poll::Pending;
            }
            ready!(self.poll_flush(cx))?;
            ready!(self.from.poll_read_ready(cx)).map_err(|_| self.from_error)?;
            let step = if self.splicing {
                self.splice_in(progress)?
            } else {
                self.copy_in(progress)?
            };
            match step {
                // Once a direction splices it keeps splicing: it is a bulk one.
                Step::Moved(n) => {
                    moved += n;
                    self.splicing |= self.zero_copy && n == COPY_CHUNK;
                }
                Step::Eof => return Poll::Ready(self.eof(progress)),
                Step::Again => {}
                Step::NoPipe => self.splicing = false,
            }
        }
    }

    fn moved(&mut self, n: usize, progress: &Progress<'_>) {
        let n = n as u64;
        // Only this connection writes it: a load and a store, no locked add.
        self.total
            .store(self.total.load(Relaxed).wrapping_add(n), Relaxed);
        count(self.backend_total, n);
        progress.touch();
    }

    fn eof(&self, progress: &Progress<'_>) -> Result<(), Reason> {
        // When the other direction has already ended, both sockets are about to be
        // closed, and close() sends the FIN: no separate shutdown needed.
        if progress.first_eof() {
            // The peer may already be gone; the other direction will notice.
            let _ = SockRef::from(self.to).shutdown(Shutdown::Write);
        }
        Ok(())
    }

    /// Writes what is pending; ready once nothing is.
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Reason>> {
        let (to, to_error) = (self.to, self.to_error);
        loop {
            let done = match &mut self.pending {
                Pending::Nothing => return Poll::Ready(Ok(())),
                Pending::Buf { buf, at, len } => {
                    let rest = buf.as_mut().get(*at as usize..*len as usize);
                    match to.try_write(rest.unwrap_or_default()) {
                        // A socket that takes nothing of a non-empty write is broken.
                        Ok(0) => return Poll::Ready(Err(to_error)),
                        Ok(m) => {
                            *at = at.saturating_add(u32::try_from(m).unwrap_or(u32::MAX));
                            *at >= *len
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            ready!(to.poll_write_ready(cx)).map_err(|_| to_error)?;
                            false
                        }
                        Err(_) => return Poll::Ready(Err(to_error)),
                    }
                }
                Pending::Pipe { pipe, left } => {
                    let flags = SpliceFlags::MOVE | SpliceFlags::NONBLOCK;
                    match to.try_io(Interest::WRITABLE, || {
                        rustix::pipe::splice(&pipe.read, None, to, None, *left as usize, flags)
                            .map_err(io::Error::from)
                    }) {
                        Ok(m) => {
                            *left -= u32::try_from(m).unwrap_or(u32::MAX).min(*left);
                            *left == 0
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            ready!(to.poll_write_ready(cx)).map_err(|_| to_error)?;
                            false
                        }
                        // The pipe still holds bytes: it is dropped, not reused.
                        Err(_) => return Poll::Ready(Err(to_error)),
                    }
                }
            };
            // Done: the buffer goes back to its pool on drop, the pipe here.
            if done
                && let Pending::Pipe { pipe, .. } =
                    std::mem::replace(&mut self.pending, Pending::Nothing)
            {
                pipe.give_back();
            }
        }
    }

    /// One read into a pooled buffer, which becomes pending for the write.
    fn copy_in(&mut self, progress: &Progress<'_>) -> Result<Step, Reason> {
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
        if let Some(g) = &mut self.guard {
            match g.feed(buf.as_mut().get(..n).unwrap_or_default()) {
                Some(true) => return Err(Reason::ProxyProtocol),
                Some(false) => self.guard = None,
                None => {}
            }
        }
        self.moved(n, progress);
        // n <= COPY_CHUNK
        self.pending = Pending::Buf {
            buf,
            at: 0,
            len: n as u32,
        };
        Ok(Step::Moved(n))
    }

    /// One splice from the source socket into a pooled pipe, which becomes
    /// pending for the splice out.
    fn splice_in(&mut self, progress: &Progress<'_>) -> Result<Step, Reason> {
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
        self.moved(n, progress);
        // n <= SPLICE_CHUNK
        self.pending = Pending::Pipe {
            pipe,
            left: n as u32,
        };
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

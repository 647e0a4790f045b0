//! Moving bytes between the client and the backend, both ways, until both sides are
//! done, one side fails, the connection is idle for too long, or shutdown cuts it.
//!
//! Over two sockets ([`socket`]) each direction is a small state machine polled
//! by hand: it waits for readiness and only then borrows a buffer or a pipe
//! (for splice(2)) from a per-thread pool ([`buffers`]), and gives it back as
//! soon as the chunk is written. An idle connection therefore holds no
//! user-space buffer and no pipe, and its task holds only a few hundred bytes
//! of state. In zero-copy mode a direction moves small messages through the
//! buffer and switches to splice once a read fills the buffer (a bulk
//! transfer), where avoiding the copy pays. A backend spoken to over TLS is
//! relayed through async streams instead ([`stream`]).
//!
//! Half-close: when one side sends EOF, the other side's write half is shut down
//! and the opposite direction keeps flowing until it ends too.

mod buffers;
mod guard;
mod socket;
mod stream;

pub(crate) use socket::relay;
pub(crate) use stream::relay_stream;

use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering::Acquire, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use crate::Reason;

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

/// How one connection is relayed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    pub(crate) idle_timeout: Duration,
    pub(crate) zero_copy: bool,
    /// The client may not start with a PROXY header (an untrusted source on a
    /// listener that accepts the protocol).
    pub(crate) refuse_proxy_header: bool,
}

/// What the two directions of one connection share: the time of the last
/// activity (milliseconds since `start`, the connection's own start kept in
/// its live entry), read by the idle timer, and how many directions have
/// reached EOF.
#[derive(Debug)]
struct Progress<'a> {
    start: &'a Instant,
    last_ms: AtomicU64,
    /// Directions that have reached EOF (0, 1 or 2).
    eofs: AtomicU8,
}

impl<'a> Progress<'a> {
    fn new(start: &'a Instant) -> Progress<'a> {
        let p = Progress {
            start,
            last_ms: AtomicU64::new(0),
            eofs: AtomicU8::new(0),
        };
        // The relay starts now: idleness counts from here.
        p.touch();
        p
    }

    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Relaxed);
    }

    fn last_activity(&self) -> Instant {
        *self.start + Duration::from_millis(self.last_ms.load(Relaxed))
    }

    /// Counts one direction's EOF; true for the first of the two.
    fn first_eof(&self) -> bool {
        self.eofs.fetch_add(1, Relaxed) == 0
    }
}

/// A backend's evictions as one connection watches them (see
/// [`EndState::poll`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Evict<'a> {
    /// What the backend's next eviction cancels.
    pub(crate) token: &'a CancellationToken,
    /// The backend's count of evictions, and what it was when the
    /// connection started.
    pub(crate) count: &'a AtomicU64,
    pub(crate) since: u64,
}

impl Evict<'_> {
    fn happened(&self) -> bool {
        self.count.load(Acquire) != self.since
    }
}

/// Whether each direction has reached EOF, and the idle timeout: what a
/// relay's end is decided from, besides its timers and tokens.
#[derive(Debug)]
struct EndState {
    idle_timeout: Duration,
    up_done: bool,
    down_done: bool,
    /// The eviction wait was polled once, and so registered this task.
    evict_registered: bool,
}

impl EndState {
    fn new(idle_timeout: Duration) -> Self {
        EndState {
            idle_timeout,
            up_done: false,
            down_done: false,
            evict_registered: false,
        }
    }

    /// One poll of a whole relay, in a fixed order: eviction, the two
    /// directions, idleness (the caller looked at the connection's close).
    /// `up` and `down` are each ready with their direction's end: `Ok` at
    /// EOF, else the failure.
    ///
    /// The eviction token is shared by every connection to the backend,
    /// and a poll of its wait, or a look at it, takes a lock they all
    /// share. The wait is polled once, which registers this task to be
    /// woken when it fires; after that the backend's count of evictions
    /// (one atomic load) tells. A relay is polled by its connection's task
    /// only, so the waker registered is the one to wake.
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        (evict, evicted): (&Evict<'_>, Pin<&mut WaitForCancellationFuture<'_>>),
        mut idle: Pin<&mut Sleep>,
        progress: &Progress<'_>,
        up: impl FnOnce(&mut Context<'_>) -> Poll<Result<(), Reason>>,
        down: impl FnOnce(&mut Context<'_>) -> Poll<Result<(), Reason>>,
    ) -> Poll<End> {
        if !self.evict_registered {
            self.evict_registered = true;
            if evicted.poll(cx).is_ready() {
                return Poll::Ready(End::Evicted);
            }
        }
        if evict.happened() {
            return Poll::Ready(End::Evicted);
        }
        if !self.up_done
            && let Poll::Ready(r) = up(cx)
        {
            match r {
                Ok(()) if self.down_done => return Poll::Ready(End::Done(Reason::BackendClosed)),
                Ok(()) => self.up_done = true,
                Err(reason) => return Poll::Ready(End::Done(reason)),
            }
        }
        if !self.down_done
            && let Poll::Ready(r) = down(cx)
        {
            match r {
                Ok(()) if self.up_done => return Poll::Ready(End::Done(Reason::ClientClosed)),
                Ok(()) => self.down_done = true,
                Err(reason) => return Poll::Ready(End::Done(reason)),
            }
        }
        // The timer fires at most once per idle_timeout: activity only moves
        // a timestamp, and the deadline is checked (and pushed) when it fires.
        while idle.as_mut().poll(cx).is_ready() {
            let deadline = progress.last_activity() + self.idle_timeout;
            if Instant::now() >= deadline {
                return Poll::Ready(End::Done(Reason::IdleTimeout));
            }
            idle.as_mut().reset(deadline);
        }
        Poll::Pending
    }
}

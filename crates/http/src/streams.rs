//! The streams of one HTTP/2 client connection, run by the connection's own
//! task.
//!
//! hyper hands every HTTP/2 stream to an executor. Given a task each, a
//! response wakes the stream's task, which queues it and wakes the
//! connection's task, which writes it: two task switches per request, and
//! the responses that arrive together leave as their tasks happen to run,
//! in pieces. Here the executor only collects the streams; the connection's
//! task polls the ready ones first and the connection after, with the
//! connection's flushes held (see [`crate::gather`]), then lets the
//! connection write once: what the streams queue in one turn leaves in one
//! write, and no task is spawned per request. The streams of a connection then share its thread, as they
//! share its socket. When the connection ends, the streams left are dropped
//! with it: nothing could reach the client any more.
//!
//! A stream whose response holds a piece the client gives no room for
//! (HTTP/2 flow control) for `timeouts.send`, while the client takes other
//! streams' pieces, is dropped, which resets it and lets go of its backend:
//! a client that reads one stream and starves the others would otherwise
//! keep their backends' connections for good, since the connection as a
//! whole still moves. A client that takes nothing at all is the
//! connection's business (`serve::drive` closes it after `send`).

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::time::{Instant, Sleep};
use weir_core::sync::lock;

use crate::gather::Hold;
use crate::serve::ConnState;

thread_local! {
    /// What the response body of the stream being polled did during the
    /// poll: [`HOLDING`] and [`MOVED`] bits.
    static NOTE: Cell<u8> = const { Cell::new(0) };
    /// A stream is being dropped for a client that gave it no room for
    /// `timeouts.send`: what its response ends with.
    static CUTTING: Cell<bool> = const { Cell::new(false) };
    /// The pieces the client of the connection whose streams are being
    /// polled took so far (see [`Run::turn`]).
    static CONN_TAKEN: Cell<u64> = const { Cell::new(0) };
}

/// The body handed a piece on and waits to be asked for more.
const HOLDING: u8 = 1;
/// The body was asked for more: the client took a piece.
const MOVED: u8 = 2;

/// A response body handed a piece on (see [`Watched`]).
pub(crate) fn note_holding() {
    NOTE.with(|n| n.set(n.get() | HOLDING));
}

/// A response body that held a piece was asked for more (and counted it in
/// its connection's state, which [`CONN_TAKEN`] follows within a turn).
pub(crate) fn note_taken() {
    NOTE.with(|n| n.set((n.get() & !HOLDING) | MOVED));
    CONN_TAKEN.with(|t| t.set(t.get().wrapping_add(1)));
}

/// True while a stream is dropped for a client that gave it no room.
pub(crate) fn cutting() -> bool {
    CUTTING.with(Cell::get)
}

/// Passes of streams then connection in one poll, while the connection
/// keeps opening streams; then the task yields.
const PASSES: usize = 4;

/// A stream's work, as hyper hands it over.
type Stream = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The executor given to hyper: it keeps the streams for [`Run`].
/// One reference count: hyper clones the executor for each stream.
#[derive(Clone)]
pub(crate) struct Streams(Arc<Shared>);

struct Shared {
    opened: Mutex<Vec<Stream>>,
    /// `timeouts.send`: how long a stream's response may wait for room.
    send: Duration,
    /// The connection's state: what its client took so far.
    conn: Option<Arc<ConnState>>,
}

impl Streams {
    pub(crate) fn new(send: Duration, conn: Option<Arc<ConnState>>) -> Streams {
        Streams(Arc::new(Shared {
            opened: Mutex::default(),
            send,
            conn,
        }))
    }
}

impl std::fmt::Debug for Streams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Streams").finish_non_exhaustive()
    }
}

impl<F: Future<Output = ()> + Send + 'static> hyper::rt::Executor<F> for Streams {
    fn execute(&self, stream: F) {
        let watched = Watched {
            inner: Some(stream),
            since: None,
            taken_then: 0,
            timer: None,
            send: self.0.send,
        };
        lock(&self.0.opened).push(Box::pin(watched));
    }
}

pin_project_lite::pin_project! {
    /// A stream, dropped when its response has held a piece without the
    /// client giving room for it for `send`.
    struct Watched<F> {
        #[pin]
        inner: Option<F>,
        // Since when the response holds a piece the client has not taken.
        since: Option<Instant>,
        // What the connection's client had taken then.
        taken_then: u64,
        timer: Option<Pin<Box<Sleep>>>,
        send: Duration,
    }
}

impl<F: Future<Output = ()>> Future for Watched<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        let Some(inner) = this.inner.as_mut().as_pin_mut() else {
            return Poll::Ready(());
        };
        NOTE.with(|n| n.set(0));
        if inner.poll(cx).is_ready() {
            return Poll::Ready(());
        }
        let note = NOTE.with(|n| n.replace(0));
        if note & MOVED != 0 {
            *this.since = None;
        }
        if note & HOLDING != 0 && this.since.is_none() {
            let now = crate::clock::now();
            *this.since = Some(now);
            *this.taken_then = CONN_TAKEN.with(Cell::get);
            let at = now + *this.send;
            match this.timer {
                Some(t) => t.as_mut().reset(at),
                None => *this.timer = Some(Box::pin(tokio::time::sleep_until(at))),
            }
        }
        let Some(since) = *this.since else {
            return Poll::Pending;
        };
        let Some(timer) = this.timer else {
            return Poll::Pending;
        };
        if timer.as_mut().poll(cx).is_pending() || since.elapsed() < *this.send {
            return Poll::Pending;
        }
        let taken_now = CONN_TAKEN.with(Cell::get);
        if taken_now == *this.taken_then {
            // The client took nothing of any stream meanwhile: the
            // connection's own check closes it; looked at again later.
            *this.since = Some(crate::clock::now());
            timer.as_mut().reset(crate::clock::now() + *this.send);
            let _ = timer.as_mut().poll(cx);
            return Poll::Pending;
        }
        // The client gave this response no room for `send`: the stream
        // goes (reset), and with it the request's hold on its backend.
        CUTTING.with(|c| c.set(true));
        this.inner.set(None);
        CUTTING.with(|c| c.set(false));
        Poll::Ready(())
    }
}

/// A connection and its streams, as one future.
pub(crate) struct Run<C> {
    conn: Pin<Box<C>>,
    /// The client connection's state, when there is one.
    state: Option<Arc<ConnState>>,
    opened: Arc<Shared>,
    /// Swapped with `opened` to take its streams without reallocating.
    spare: Vec<Stream>,
    running: FuturesUnordered<Stream>,
    /// The connection's flushes, held during a turn.
    hold: Arc<Hold>,
}

impl<C> Run<C> {
    /// `hold` is the one the connection's [`crate::gather::Gather`] heeds.
    pub(crate) fn new(conn: C, streams: &Streams, hold: Arc<Hold>) -> Run<C> {
        Run {
            conn: Box::pin(conn),
            state: streams.0.conn.clone(),
            opened: Arc::clone(&streams.0),
            spare: Vec::new(),
            running: FuturesUnordered::new(),
            hold,
        }
    }

    pub(crate) fn conn(&mut self) -> Pin<&mut C> {
        self.conn.as_mut()
    }

    /// Takes the streams opened since last time; false when there were none.
    fn adopt(&mut self) -> bool {
        {
            let mut opened = lock(&self.opened.opened);
            if opened.is_empty() {
                return false;
            }
            std::mem::swap(&mut *opened, &mut self.spare);
        }
        for s in self.spare.drain(..) {
            self.running.push(s);
        }
        true
    }
}

// The connection is boxed: nothing of `Run` is pinned in place.
impl<C> Unpin for Run<C> {}

impl<C> std::fmt::Debug for Run<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Run")
            .field("streams", &self.running.len())
            .finish_non_exhaustive()
    }
}

impl<C: Future> Future for Run<C> {
    type Output = C::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<C::Output> {
        let this = &mut *self;
        this.hold.start();
        let turn = this.turn(cx);
        let asked = this.hold.end();
        if turn.is_ready() {
            return turn;
        }
        if asked {
            // The writes of the whole turn, at once.
            if let Poll::Ready(out) = this.conn.as_mut().poll(cx) {
                return Poll::Ready(out);
            }
            if this.adopt() {
                cx.waker().wake_by_ref();
            }
        }
        Poll::Pending
    }
}

impl<C: Future> Run<C> {
    /// The ready streams, then the connection; again while the connection
    /// opens streams, a few times at most.
    fn turn(&mut self, cx: &mut Context<'_>) -> Poll<C::Output> {
        for _ in 0..PASSES {
            // The streams first: what they queue leaves with the
            // connection's write.
            if let Some(state) = &self.state {
                CONN_TAKEN.with(|t| t.set(state.taken_so_far()));
            }
            while let Poll::Ready(Some(())) = self.running.poll_next_unpin(cx) {}
            if let Poll::Ready(out) = self.conn.as_mut().poll(cx) {
                return Poll::Ready(out);
            }
            // Streams the connection just opened start at once: their
            // requests go out in this turn.
            if !self.adopt() {
                return Poll::Pending;
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gather::Gather;
    use hyper::rt::Executor;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use std::task::Wake;
    use tokio::io::AsyncWrite;

    /// A waker that counts its wake-ups.
    #[derive(Default)]
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, SeqCst);
        }
    }

    /// A stream that takes two polls and counts its ends (run or dropped).
    struct Step {
        polls: usize,
        ended: Arc<AtomicUsize>,
    }

    impl Future for Step {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.polls += 1;
            if self.polls < 2 {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            Poll::Ready(())
        }
    }

    impl Drop for Step {
        fn drop(&mut self) {
            self.ended.fetch_add(1, SeqCst);
        }
    }

    /// A connection that opens `opens` streams on each of its first polls,
    /// then stays pending until `done`.
    struct Conn {
        exec: Streams,
        opens: usize,
        rounds: usize,
        polls: usize,
        ended: Arc<AtomicUsize>,
        done: bool,
    }

    impl Future for Conn {
        type Output = &'static str;
        fn poll(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<&'static str> {
            self.polls += 1;
            if self.done {
                return Poll::Ready("closed");
            }
            if self.polls <= self.rounds {
                for _ in 0..self.opens {
                    let ended = Arc::clone(&self.ended);
                    self.exec.execute(Step { polls: 0, ended });
                }
            }
            Poll::Pending
        }
    }

    fn conn(opens: usize, rounds: usize) -> (Run<Conn>, Arc<AtomicUsize>) {
        let exec = Streams::new(Duration::from_secs(60), None);
        let ended = Arc::new(AtomicUsize::new(0));
        let c = Conn {
            exec: exec.clone(),
            opens,
            rounds,
            polls: 0,
            ended: Arc::clone(&ended),
            done: false,
        };
        (Run::new(c, &exec, Arc::default()), ended)
    }

    #[test]
    fn streams_run_in_the_connections_task() {
        let (mut run, ended) = conn(3, 1);
        let count = Arc::new(Count::default());
        let waker = std::task::Waker::from(Arc::clone(&count));
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut run).poll(&mut cx).is_pending());
        // Opened by the connection's poll, polled once in the same turn.
        assert_eq!(run.running.len(), 3);
        assert_eq!(ended.load(SeqCst), 0);
        assert!(
            count.0.load(SeqCst) > 0,
            "a stream asked to be polled again"
        );
        assert!(Pin::new(&mut run).poll(&mut cx).is_pending());
        assert_eq!(ended.load(SeqCst), 3);
        assert!(run.running.is_empty());
    }

    #[test]
    fn a_connection_that_keeps_opening_streams_yields() {
        let (mut run, _) = conn(1, usize::MAX);
        let count = Arc::new(Count::default());
        let waker = std::task::Waker::from(Arc::clone(&count));
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut run).poll(&mut cx).is_pending());
        assert_eq!(run.conn.polls, PASSES);
        assert!(count.0.load(SeqCst) > 0, "woken to go on");
    }

    #[test]
    fn the_streams_left_end_with_the_connection() {
        let (mut run, ended) = conn(2, 1);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(Pin::new(&mut run).poll(&mut cx).is_pending());
        run.conn().done = true;
        assert_eq!(Pin::new(&mut run).poll(&mut cx), Poll::Ready("closed"));
        drop(run);
        assert_eq!(ended.load(SeqCst), 2);
    }

    /// Counts the writes that reach the socket.
    #[derive(Default)]
    struct Socket {
        writes: usize,
        bytes: usize,
    }

    impl AsyncWrite for Socket {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            self.writes += 1;
            self.bytes += buf.len();
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// A connection that writes and flushes a frame on each of its first
    /// `frames` polls, as h2 does for each response.
    struct Writer {
        io: Gather<Socket>,
        frames: usize,
    }

    impl Future for Writer {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            let this = &mut *self;
            if this.frames > 0 {
                this.frames -= 1;
                assert!(Pin::new(&mut this.io).poll_write(cx, b"frame").is_ready());
            }
            assert!(Pin::new(&mut this.io).poll_flush(cx).is_ready());
            Poll::Pending
        }
    }

    #[test]
    fn a_turns_flushes_make_one_write() {
        let exec = Streams::new(Duration::from_secs(60), None);
        let hold = Arc::new(Hold::default());
        let w = Writer {
            io: Gather::new(Socket::default(), Arc::clone(&hold)),
            frames: 3,
        };
        let mut run = Run::new(w, &exec, hold);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(Pin::new(&mut run).poll(&mut cx).is_pending());
        // One frame in the turn, one in the pass that writes: one write.
        let socket =
            |run: &Run<Writer>| (run.conn.io.get_ref().writes, run.conn.io.get_ref().bytes);
        assert_eq!(socket(&run), (1, 10));
        assert!(Pin::new(&mut run).poll(&mut cx).is_pending());
        assert_eq!(socket(&run), (2, 15));
        // Nothing written in a turn: no pass to write.
        assert!(Pin::new(&mut run).poll(&mut cx).is_pending());
        assert_eq!(socket(&run), (2, 15));
    }
}

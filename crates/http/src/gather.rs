//! The writes of one HTTP/2 client connection, gathered.
//!
//! The h2 crate flushes as soon as a DATA frame of more than a few hundred
//! bytes is queued: each response would cost a write of its own, though the
//! connection carries many streams at once. Here writes are copied into one
//! buffer, and while the connection's task holds the flushes (see
//! [`Hold`]), a flush only notes that bytes wait: the task writes them once,
//! at the end of its turn, so the responses of one turn leave together. A
//! large write with nothing gathered before it goes straight through, and
//! what is gathered is bounded.

use std::cell::RefCell;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Gathered bytes past which a write is written out first.
const LIMIT: usize = 64 * 1024;
/// A write at least this large, with nothing gathered, is not copied.
const DIRECT: usize = 16 * 1024;
/// Capacity of a pooled buffer. Once everything is written the buffer goes
/// back to its thread's pool (one that grew larger is freed): an idle
/// connection holds none, and a busy one does not grow one afresh each turn.
const KEEP: usize = 16 * 1024;
/// Buffers a thread keeps for reuse.
const POOLED: usize = 64;

thread_local! {
    static POOL: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// An empty buffer of `KEEP` bytes, from this thread's pool if it has one.
fn pooled() -> Vec<u8> {
    POOL.with_borrow_mut(Vec::pop)
        .unwrap_or_else(|| Vec::with_capacity(KEEP))
}

/// Gives an empty buffer back to this thread's pool, or frees it.
fn give_back(mut buf: Vec<u8>) {
    if buf.capacity() != KEEP {
        return;
    }
    buf.clear();
    POOL.with_borrow_mut(|pool| {
        if pool.len() < POOLED {
            pool.push(buf);
        }
    });
}

/// Flushes held by the connection's task while it runs the streams and the
/// connection; shared by the task and its [`Gather`].
#[derive(Debug, Default)]
pub(crate) struct Hold {
    on: AtomicBool,
    /// A flush was asked for while held.
    asked: AtomicBool,
}

impl Hold {
    /// From now, flushes wait.
    pub(crate) fn start(&self) {
        self.on.store(true, Relaxed);
    }

    /// Flushes go ahead again; true when one was asked for meanwhile (the
    /// connection is to be polled once more, to write).
    pub(crate) fn end(&self) -> bool {
        self.on.store(false, Relaxed);
        self.asked.swap(false, Relaxed)
    }
}

#[derive(Debug)]
pub(crate) struct Gather<S> {
    inner: S,
    buf: Vec<u8>,
    /// How much of `buf` is written already.
    start: usize,
    hold: Arc<Hold>,
}

impl<S> Gather<S> {
    pub(crate) fn new(inner: S, hold: Arc<Hold>) -> Gather<S> {
        Gather {
            inner,
            buf: Vec::new(),
            start: 0,
            hold,
        }
    }

    /// The stream written to.
    #[cfg(test)]
    pub(crate) fn get_ref(&self) -> &S {
        &self.inner
    }

    fn gathered(&self) -> usize {
        self.buf.len() - self.start
    }
}

impl<S: AsyncWrite + Unpin> Gather<S> {
    /// Writes out what is gathered.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.start < self.buf.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.buf[self.start..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.start += n;
        }
        self.start = 0;
        give_back(std::mem::take(&mut self.buf));
        Poll::Ready(Ok(()))
    }

    /// Makes room for `len` more bytes: `Ready(true)` when they are to be
    /// gathered, `Ready(false)` when they go straight through.
    fn poll_room(&mut self, cx: &mut Context<'_>, len: usize) -> Poll<io::Result<bool>> {
        if self.gathered() + len > LIMIT {
            ready!(self.poll_drain(cx))?;
        }
        let gather = self.gathered() > 0 || len < DIRECT;
        if gather && self.buf.capacity() == 0 {
            self.buf = pooled();
        }
        Poll::Ready(Ok(gather))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Gather<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Gather<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if !ready!(this.poll_room(cx, buf.len()))? {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        }
        this.buf.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let len = bufs.iter().map(|b| b.len()).sum();
        if !ready!(this.poll_room(cx, len))? {
            return Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        }
        for b in bufs {
            this.buf.extend_from_slice(b);
        }
        Poll::Ready(Ok(len))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.gathered() > 0 {
            if this.hold.on.load(Relaxed) {
                this.hold.asked.store(true, Relaxed);
                return Poll::Ready(Ok(()));
            }
            ready!(this.poll_drain(cx))?;
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A writer that takes at most `step` bytes per call and counts calls.
    struct Slow {
        out: Vec<u8>,
        step: usize,
        writes: usize,
    }

    impl AsyncWrite for Slow {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let n = buf.len().min(self.step);
            self.out.extend_from_slice(&buf[..n]);
            self.writes += 1;
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn slow(step: usize) -> Gather<Slow> {
        Gather::new(
            Slow {
                out: Vec::new(),
                step,
                writes: 0,
            },
            Arc::default(),
        )
    }

    #[tokio::test]
    async fn small_writes_leave_together_at_the_flush() -> io::Result<()> {
        let mut g = slow(usize::MAX);
        for i in 0..10u8 {
            g.write_all(&[i; 100]).await?;
        }
        let v = [IoSlice::new(b"head"), IoSlice::new(b"tail")];
        assert_eq!(g.write_vectored(&v).await?, 8);
        assert_eq!(g.inner.writes, 0);
        g.flush().await?;
        assert_eq!(g.inner.writes, 1);
        assert_eq!(g.inner.out.len(), 1008);
        assert_eq!(&g.inner.out[1000..], b"headtail");
        assert_eq!(g.gathered(), 0);
        Ok(())
    }

    #[tokio::test]
    async fn held_flushes_wait_for_the_end_of_the_hold() -> io::Result<()> {
        let mut g = slow(7);
        let hold = Arc::clone(&g.hold);
        hold.start();
        g.write_all(b"0123456789").await?;
        g.flush().await?;
        g.write_all(b"abcdefghij").await?;
        g.flush().await?;
        assert_eq!(g.inner.writes, 0, "held: nothing written");
        assert!(hold.end(), "a flush was asked for");
        assert!(!hold.end(), "asked once, answered once");
        // Written at the next flush, even by a writer that takes 7 bytes at
        // a time.
        g.flush().await?;
        assert_eq!(g.inner.out, b"0123456789abcdefghij");
        assert_eq!(g.inner.writes, 3);
        // Nothing gathered, nothing asked.
        hold.start();
        g.flush().await?;
        assert!(!hold.end());
        Ok(())
    }

    #[tokio::test]
    async fn a_held_buffer_is_written_once_it_is_full() -> io::Result<()> {
        let mut g = slow(usize::MAX);
        g.hold.start();
        for _ in 0..LIMIT / 1000 + 1 {
            g.write_all(&[5; 1000]).await?;
            g.flush().await?;
        }
        assert_eq!(g.inner.writes, 1, "bounded even while held");
        assert!(g.gathered() <= LIMIT);
        Ok(())
    }

    #[tokio::test]
    async fn a_buffer_is_lent_while_bytes_wait_and_reused() -> io::Result<()> {
        let mut g = slow(usize::MAX);
        assert_eq!(g.buf.capacity(), 0, "nothing held before a write");
        g.write_all(b"frame").await?;
        assert_eq!(g.buf.capacity(), KEEP);
        let lent = g.buf.as_ptr();
        g.flush().await?;
        assert_eq!(g.buf.capacity(), 0, "given back once written");
        g.write_all(b"frame").await?;
        assert_eq!(g.buf.as_ptr(), lent, "the pooled buffer again");
        g.flush().await?;
        Ok(())
    }

    #[tokio::test]
    async fn a_large_write_goes_through_and_gathered_bytes_stay_bounded() -> io::Result<()> {
        let mut g = slow(usize::MAX);
        g.write_all(&vec![1; DIRECT]).await?;
        assert_eq!((g.inner.writes, g.gathered()), (1, 0));
        g.write_all(b"x").await?;
        assert_eq!(g.gathered(), 1);
        // A large write after gathered bytes keeps the order.
        g.write_all(&vec![2; DIRECT]).await?;
        for _ in 0..10 {
            g.write_all(&vec![3; 10_000]).await?;
            assert!(g.gathered() <= LIMIT);
        }
        g.shutdown().await?;
        let out = &g.inner.out;
        assert_eq!(out.len(), 2 * DIRECT + 1 + 100_000);
        assert_eq!(out[DIRECT], b'x');
        assert!(out[DIRECT + 1..2 * DIRECT + 1].iter().all(|&b| b == 2));
        assert!(out[2 * DIRECT + 1..].iter().all(|&b| b == 3));
        assert_eq!(g.buf.capacity(), 0, "a large buffer is freed once written");
        Ok(())
    }
}

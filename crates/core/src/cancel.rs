//! Waiting on shared cancellation tokens without taking their locks on every
//! wake-up.
//!
//! A listener's `kill` and `drain` tokens and a route's `retired` token are
//! each shared by every connection they cover, and one poll of a token's
//! `cancelled()` future takes two locks that every such connection shares
//! (the token's own and its list of waiters), for a signal that comes once in
//! a listener's life. A connection's task is woken for its traffic many times
//! a request: a [`Watcher`] polls the waits once, with a waker of its own that
//! notes when one of them fires, and after that polls them again only then.
//! Every other poll costs two atomic operations.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use atomic_waker::AtomicWaker;

/// The waits of one task on shared tokens (see the module documentation).
#[derive(Debug)]
pub struct Watcher {
    flag: Arc<Flag>,
    /// Wakes `flag`: the waker the waits are registered with.
    waker: Waker,
    /// The waits were polled (and registered) once.
    armed: bool,
}

#[derive(Debug, Default)]
struct Flag {
    /// One of the waits woke since they were last polled.
    fired: AtomicBool,
    /// The task to wake then.
    task: AtomicWaker,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl Default for Watcher {
    fn default() -> Watcher {
        Watcher::new()
    }
}

impl Watcher {
    pub fn new() -> Watcher {
        let flag = Arc::new(Flag::default());
        Watcher {
            waker: Waker::from(Arc::clone(&flag)),
            flag,
            armed: false,
        }
    }

    /// Polls the waits with `poll_waits` when they must be: the first time,
    /// and after one of them woke. Otherwise `Pending`: nothing they wait
    /// for has happened. `poll_waits` must poll the same waits each time.
    pub fn poll<T>(
        &mut self,
        cx: &mut Context<'_>,
        poll_waits: impl FnOnce(&mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        // Registered before the look: a wait firing from here on wakes the
        // task again.
        self.flag.task.register(cx.waker());
        if self.armed && !self.flag.fired.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        self.armed = true;
        poll_waits(&mut Context::from_waker(&self.waker))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::pin;
    use std::sync::atomic::AtomicUsize;
    use tokio_util::sync::CancellationToken;

    /// A waker that counts its wake-ups.
    #[derive(Default)]
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn the_waits_are_polled_once_then_only_when_one_fires() {
        let (a, b) = (CancellationToken::new(), CancellationToken::new());
        let mut wait_a = pin!(a.cancelled());
        let mut wait_b = pin!(b.cancelled());
        let count = Arc::new(Count::default());
        let waker = Waker::from(Arc::clone(&count));
        let mut cx = Context::from_waker(&waker);
        let mut watcher = Watcher::new();
        let polls = AtomicUsize::new(0);
        let mut poll = |w: &mut Watcher, cx: &mut Context<'_>| {
            w.poll(cx, |cx| {
                polls.fetch_add(1, Ordering::SeqCst);
                if wait_a.as_mut().poll(cx).is_ready() {
                    return Poll::Ready("a");
                }
                if wait_b.as_mut().poll(cx).is_ready() {
                    return Poll::Ready("b");
                }
                Poll::Pending
            })
        };
        for _ in 0..5 {
            assert!(poll(&mut watcher, &mut cx).is_pending());
        }
        assert_eq!(polls.load(Ordering::SeqCst), 1, "polled once, then not");
        b.cancel();
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "the task is woken");
        assert_eq!(poll(&mut watcher, &mut cx), Poll::Ready("b"));
        assert_eq!(polls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_task_polled_with_another_waker_is_the_one_woken() {
        let token = CancellationToken::new();
        let mut wait = pin!(token.cancelled());
        let mut watcher = Watcher::new();
        let first = Arc::new(Count::default());
        let second = Arc::new(Count::default());
        let (w1, w2) = (
            Waker::from(Arc::clone(&first)),
            Waker::from(Arc::clone(&second)),
        );
        let pending = watcher.poll(&mut Context::from_waker(&w1), |cx| wait.as_mut().poll(cx));
        assert!(pending.is_pending());
        let pending = watcher.poll(&mut Context::from_waker(&w2), |cx| wait.as_mut().poll(cx));
        assert!(pending.is_pending());
        token.cancel();
        assert_eq!(first.0.load(Ordering::SeqCst), 0);
        assert_eq!(second.0.load(Ordering::SeqCst), 1);
        let ready = watcher.poll(&mut Context::from_waker(&w2), |cx| wait.as_mut().poll(cx));
        assert!(ready.is_ready());
    }

    #[test]
    fn a_token_cancelled_before_the_first_poll_is_seen_at_once() {
        let token = CancellationToken::new();
        token.cancel();
        let mut wait = pin!(token.cancelled());
        let mut watcher = Watcher::new();
        let waker = Waker::noop();
        let r = watcher.poll(&mut Context::from_waker(waker), |cx| wait.as_mut().poll(cx));
        assert!(r.is_ready());
    }
}

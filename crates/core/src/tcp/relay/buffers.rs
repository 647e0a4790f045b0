//! The per-thread pools of copy buffers and splice pipes. A direction borrows
//! one only while a chunk is in flight, so an idle connection holds neither.

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsFd, OwnedFd};

use rustix::pipe::PipeFlags;

/// Size of one pooled copy buffer. A read that fills it marks a bulk transfer,
/// which switches the direction to splice in zero-copy mode.
pub(super) const COPY_CHUNK: usize = 16 * 1024;
/// Buffers kept per thread for reuse; beyond that they are freed.
const POOL_CAP: usize = 128;
/// Pipes kept per thread: each holds two descriptors, which count against
/// the process's limit (see `crate::fds`).
const PIPE_POOL_CAP: usize = crate::fds::PIPES_PER_THREAD;

thread_local! {
    static BUFFERS: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
    static PIPES: RefCell<Vec<Pipe>> = const { RefCell::new(Vec::new()) };
}

/// A copy buffer borrowed from the current thread's pool; returned on drop (to the
/// pool of whichever thread drops it).
pub(super) struct PooledBuf(Option<Box<[u8]>>);

impl PooledBuf {
    pub(super) fn take() -> Self {
        let buf = BUFFERS
            .with(|b| b.borrow_mut().pop())
            .unwrap_or_else(|| vec![0u8; COPY_CHUNK].into_boxed_slice());
        PooledBuf(Some(buf))
    }

    pub(super) fn as_mut(&mut self) -> &mut [u8] {
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
pub(super) struct Pipe {
    pub(super) read: OwnedFd,
    pub(super) write: OwnedFd,
}

impl Pipe {
    pub(super) fn take() -> io::Result<Pipe> {
        if let Some(p) = PIPES.with(|p| p.borrow_mut().pop()) {
            return Ok(p);
        }
        let (read, write) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
        Ok(Pipe { read, write })
    }

    /// Returns an empty pipe to this thread's pool. Only call when every byte
    /// spliced in has been spliced out.
    pub(super) fn give_back(self) {
        PIPES.with(|p| {
            let mut p = p.borrow_mut();
            if p.len() < PIPE_POOL_CAP {
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

//! Log lines leave the thread that logs them through a bounded queue to a
//! thread of their own, which writes them out. A reader that stalls
//! (journald behind, a pipe nobody reads) then costs weir lines, dropped and
//! counted, never a worker thread blocked in `write(2)`: with the standard
//! output written directly, the first worker to block held its lock and
//! every other one waited behind it, requests, probes and the admin
//! endpoint alike.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// What a queue holds at most, in bytes of lines waiting.
pub const QUEUE_BYTES: usize = 8 << 20;

/// The writer takes up to this much of what waits in one write.
const BATCH_BYTES: usize = 64 << 10;

/// The queue's counters, for `/metrics`.
#[derive(Debug, Default)]
pub struct LogStats {
    queued: AtomicUsize,
    dropped: AtomicU64,
}

impl LogStats {
    /// Lines dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Relaxed)
    }

    /// Bytes waiting to be written.
    pub fn queued(&self) -> usize {
        self.queued.load(Relaxed)
    }
}

/// The sending side: cheap to share, never blocks.
#[derive(Debug)]
pub struct LogQueue {
    tx: mpsc::Sender<Vec<u8>>,
    stats: Arc<LogStats>,
    cap: usize,
}

impl LogQueue {
    /// Starts the thread that writes what the queue takes to `out`, holding
    /// at most `cap` bytes of lines meanwhile. `dropped` is called by that
    /// thread, at most once a second, with how many lines were dropped since
    /// it last was, once it writes again (to say so in the log).
    pub fn start(
        out: impl Write + Send + 'static,
        cap: usize,
        dropped: impl Fn(u64) + Send + 'static,
    ) -> std::io::Result<LogQueue> {
        let (tx, rx) = mpsc::channel::<Vec<u8>>();
        let stats = Arc::new(LogStats::default());
        let shared = Arc::clone(&stats);
        std::thread::Builder::new()
            .name("weir-log".to_owned())
            .spawn(move || write_out(&rx, out, &shared, &dropped))?;
        Ok(LogQueue { tx, stats, cap })
    }

    /// Queues one line (or several, as the caller wrote them at once); drops
    /// it when the queue is full.
    pub fn push(&self, line: &[u8]) {
        let len = line.len();
        let before = self.stats.queued.fetch_add(len, Relaxed);
        if before.saturating_add(len) > self.cap || self.tx.send(line.to_vec()).is_err() {
            self.stats.queued.fetch_sub(len, Relaxed);
            self.stats.dropped.fetch_add(1, Relaxed);
        }
    }

    pub fn stats(&self) -> &Arc<LogStats> {
        &self.stats
    }

    /// Waits until what was queued so far is written, at most `within`
    /// (a reader that stalls must not hold the exit).
    pub fn flush(&self, within: Duration) {
        let end = Instant::now() + within;
        while self.stats.queued() > 0 && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

fn write_out(
    rx: &mpsc::Receiver<Vec<u8>>,
    mut out: impl Write,
    stats: &LogStats,
    dropped: &dyn Fn(u64),
) {
    let mut said = 0;
    let mut said_at: Option<Instant> = None;
    while let Ok(mut batch) = rx.recv() {
        while batch.len() < BATCH_BYTES {
            match rx.try_recv() {
                Ok(more) => batch.extend_from_slice(&more),
                Err(_) => break,
            }
        }
        // An error (a closed output) loses these lines, as a blocked write
        // would have: nothing else is to be done with them.
        let _ = out.write_all(&batch).and_then(|()| out.flush());
        stats.queued.fetch_sub(batch.len(), Relaxed);
        let lost = stats.dropped.load(Relaxed);
        if lost > said && said_at.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            dropped(lost - said);
            said = lost;
            said_at = Some(Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Condvar, Mutex};

    /// Whether the gate is open, and what went through.
    type Taken = Mutex<(bool, Vec<u8>)>;

    /// An output that takes nothing until opened, then keeps what it gets.
    #[derive(Clone, Default)]
    struct Gate(Arc<(Taken, Condvar)>);

    impl Write for Gate {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let (m, c) = &*self.0;
            let mut g = m.lock().expect("gate");
            while !g.0 {
                g = c.wait(g).expect("gate");
            }
            g.1.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Gate {
        fn open(&self) {
            let (m, c) = &*self.0;
            m.lock().expect("gate").0 = true;
            c.notify_all();
        }
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.0.lock().expect("gate").1).into_owned()
        }
    }

    /// A stalled output fills the queue, after which lines are dropped and
    /// counted without waiting; once it takes again, what was queued is
    /// written in order and the drop is reported.
    #[test]
    fn a_stalled_output_drops_lines_without_blocking() {
        let gate = Gate::default();
        let reported = Arc::new(AtomicU64::new(0));
        let r = Arc::clone(&reported);
        let q = LogQueue::start(gate.clone(), 100, move |n| {
            r.fetch_add(n, Relaxed);
        })
        .expect("start");
        let began = Instant::now();
        // The writer takes the first line and stalls in its write; then
        // 100 bytes queue, and the rest are dropped.
        for i in 0..50 {
            q.push(format!("line {i:02}\n").as_bytes());
        }
        assert!(began.elapsed() < Duration::from_secs(5), "push waited");
        let dropped = q.stats().dropped();
        assert!((30..=40).contains(&dropped), "{dropped} dropped");
        gate.open();
        q.flush(Duration::from_secs(10));
        assert_eq!(q.stats().queued(), 0);
        let text = gate.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len() as u64 + dropped, 50, "{text}");
        assert_eq!(lines[0], "line 00");
        let mut sorted = lines.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, lines, "in order");
        // The report comes with the next write.
        q.push(b"after\n");
        q.flush(Duration::from_secs(10));
        assert_eq!(reported.load(Relaxed), dropped);
        assert!(gate.text().ends_with("after\n"));
    }
}

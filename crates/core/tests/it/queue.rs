//! Per-backend `max_connections` with the pool's queue: waiters served in
//! order as slots free, `queue_full` and `queue_timeout` refusals, full
//! backends passed over while another has room.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use weir_core::Reason;
use weir_core::health::AdminState;
use weir_core::pool::QueueResult;

use crate::common::{addr, named_backend, start, wait_until, within};

/// Echoes every connection after recording the first byte it carries, so
/// the test sees in which order connections reached the backend.
async fn recording_echo() -> (SocketAddr, Arc<Mutex<Vec<u8>>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let a = l.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let log = Arc::clone(&log);
            tokio::spawn(async move {
                let mut b = [0u8; 1];
                if s.read_exact(&mut b).await.is_ok() {
                    log.lock().expect("log").push(b[0]);
                    let _ = s.write_all(&b).await;
                    let mut sink = tokio::io::sink();
                    let _ = tokio::io::copy(&mut s, &mut sink).await;
                }
            });
        }
    });
    (a, seen)
}

/// A backend that writes its name and keeps the connection until the
/// client closes it.
async fn holding_backend(name: &'static str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let a = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let _ = s.write_all(name.as_bytes()).await;
                let mut sink = tokio::io::sink();
                let _ = tokio::io::copy(&mut s, &mut sink).await;
            });
        }
    });
    a
}

fn metrics(server: &weir_core::Server) -> String {
    let mut w = weir_telemetry::Writer::new(weir_telemetry::Format::Prometheus);
    server.render_metrics(&mut w);
    w.finish()
}

/// Sends `tag` and reads its echo.
async fn echoed(s: &mut TcpStream, tag: u8) {
    s.write_all(&[tag]).await.expect("write");
    let mut b = [0u8; 1];
    within("echo", s.read_exact(&mut b)).await.expect("echo");
    assert_eq!(b[0], tag);
}

/// A listener in front of pool `p` of one recording echo backend `a` with
/// `max_connections`, and the pool's `max_queue` and `queue_timeout`.
async fn one_limited_backend(
    max_queue: u32,
    queue_timeout: &str,
    max_connections: u32,
) -> (
    Arc<weir_core::Server>,
    SocketAddr,
    Arc<weir_core::pool::Pool>,
    Arc<std::sync::Mutex<Vec<u8>>>,
) {
    let (backend, seen) = recording_echo().await;
    let toml = format!(
        "[[listeners]]\nname = \"l\"\nbind = [\"127.0.0.1:0\"]\n[[listeners.routes]]\nname = \"r\"\npool = \"p\"\n\
         [[pools]]\nname = \"p\"\nmax_queue = {max_queue}\nqueue_timeout = \"{queue_timeout}\"\n\
         [[pools.backends]]\nname = \"a\"\naddress = \"{backend}\"\nmax_connections = {max_connections}\n"
    );
    let server = start(&toml).await;
    let front = addr(&server, "l");
    let pool = server.pool("p").expect("p");
    (server, front, pool, seen)
}

/// Reads until the connection ends: weir closed it.
async fn closed(mut s: TcpStream) {
    let mut rest = Vec::new();
    let _ = within("close", s.read_to_end(&mut rest)).await;
    assert!(rest.is_empty(), "got {rest:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_backend_queues_connections_and_serves_them_in_order() {
    let (server, front, pool, seen) = one_limited_backend(3, "10s", 2).await;

    // Two connections take the two slots.
    let mut held = Vec::new();
    for tag in [b'h', b'i'] {
        let mut s = TcpStream::connect(front).await.expect("connect");
        echoed(&mut s, tag).await;
        held.push(s);
    }
    // Three more wait, in the order they came.
    let mut waiting = Vec::new();
    for tag in [b'1', b'2', b'3'] {
        let mut s = TcpStream::connect(front).await.expect("connect");
        s.write_all(&[tag]).await.expect("write");
        waiting.push(s);
        let depth = waiting.len();
        wait_until("queued", || pool.queue.depth() == depth).await;
    }
    assert_eq!(seen.lock().expect("seen").as_slice(), b"hi");
    // The queue is full: the next one is refused at once.
    closed(TcpStream::connect(front).await.expect("connect")).await;
    assert_eq!(pool.queue.results(QueueResult::Full), 1);

    // Each slot that frees goes to the first waiter.
    for (n, s) in held.drain(..).enumerate() {
        drop(s);
        wait_until("served", || seen.lock().expect("seen").len() == 3 + n).await;
    }
    wait_until("all served", || {
        server
            .pool("p")
            .is_some_and(|p| p.backends[0].slots_in_use() == 2 && p.queue.depth() == 1)
    })
    .await;
    drop(waiting.remove(0));
    wait_until("the last one", || seen.lock().expect("seen").len() == 5).await;
    assert_eq!(seen.lock().expect("seen").as_slice(), b"hi123");
    for mut s in waiting {
        let mut b = [0u8; 1];
        within("echo", s.read_exact(&mut b)).await.expect("echo");
    }
    assert_eq!(pool.queue.results(QueueResult::Served), 3);
    assert_eq!(pool.queue.depth(), 0);
    let text = metrics(&server);
    for line in [
        "weir_pool_queue_total{pool=\"p\",result=\"served\"} 3",
        "weir_pool_queue_total{pool=\"p\",result=\"full\"} 1",
        "weir_pool_queue_depth{pool=\"p\"} 0",
        "weir_backend_max_connections{pool=\"p\",backend=\"a\"} 2",
        "weir_pool_queue_wait_seconds_count{pool=\"p\"} 3",
        "weir_listener_connections_rejected_total{listener=\"l\",reason=\"queue_full\"} 1",
    ] {
        assert!(text.contains(line), "no {line:?} in\n{text}");
    }
}

/// `max_queue = 0`: no waiting; a connection that finds the backend full
/// is refused at once with `queue_full`, not after `queue_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_queue_zero_refuses_at_once() {
    let (_server, front, pool, seen) = one_limited_backend(0, "30s", 1).await;
    let mut held = TcpStream::connect(front).await.expect("connect");
    echoed(&mut held, b'h').await;
    let began = std::time::Instant::now();
    closed(TcpStream::connect(front).await.expect("connect")).await;
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "refused only after {:?}",
        began.elapsed()
    );
    assert_eq!(pool.queue.results(QueueResult::Full), 1);
    assert_eq!(pool.queue.depth(), 0);
    assert_eq!(seen.lock().expect("seen").as_slice(), b"h");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_gives_up_after_queue_timeout() {
    let (backend, seen) = recording_echo().await;
    let toml = one_slot(backend, "300ms");
    let server = start(&toml).await;
    let front = addr(&server, "l");
    let pool = server.pool("p").expect("p");
    let mut held = TcpStream::connect(front).await.expect("connect");
    echoed(&mut held, b'h').await;
    let began = std::time::Instant::now();
    let mut late = TcpStream::connect(front).await.expect("connect");
    late.write_all(b"x").await.expect("write");
    closed(late).await;
    assert!(
        began.elapsed() >= Duration::from_millis(300),
        "closed before queue_timeout"
    );
    assert_eq!(pool.queue.results(QueueResult::Timeout), 1);
    assert_eq!(pool.queue.depth(), 0);
    assert_eq!(seen.lock().expect("seen").as_slice(), b"h");
    let text = metrics(&server);
    let line =
        "weir_listener_connections_rejected_total{listener=\"l\",reason=\"queue_timeout\"} 1";
    assert!(text.contains(line), "no {line:?} in\n{text}");
    // The slot frees: the next one is served at once.
    drop(held);
    wait_until("slot free", || pool.backends[0].slots_in_use() == 0).await;
    let mut s = TcpStream::connect(front).await.expect("connect");
    echoed(&mut s, b'n').await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balancing_passes_over_a_full_backend_while_another_has_room() {
    let a = holding_backend("a").await;
    let b = named_backend("b").await;
    let toml = format!(
        "[[listeners]]\nname = \"l\"\nbind = [\"127.0.0.1:0\"]\n[[listeners.routes]]\nname = \"r\"\npool = \"p\"\n\
         [[pools]]\nname = \"p\"\nbalance = \"first\"\n\
         [[pools.backends]]\nname = \"a\"\naddress = \"{a}\"\nmax_connections = 1\n\
         [[pools.backends]]\nname = \"b\"\naddress = \"{b}\"\n"
    );
    let server = start(&toml).await;
    let front = addr(&server, "l");
    let pool = server.pool("p").expect("p");
    let mut held = TcpStream::connect(front).await.expect("connect");
    let mut name = [0u8; 1];
    within("a", held.read_exact(&mut name)).await.expect("read");
    assert_eq!(&name, b"a");
    // a is full: `first` goes on to b, and nobody waits.
    for _ in 0..5 {
        assert_eq!(
            within("fetch", crate::common::fetch(front, None)).await,
            "b"
        );
    }
    assert_eq!(pool.queue.depth(), 0);
    assert_eq!(pool.queue.results(QueueResult::Full), 0);
    // `weir explain` says why a is passed over.
    let client: SocketAddr = "127.0.0.1:40000".parse().expect("addr");
    let why = server
        .explain("l", client, None, None, None)
        .expect("explain");
    let verdicts: Vec<(&str, bool, &str)> = why.pools[0]
        .backends
        .iter()
        .map(|b| (b.name.as_str(), b.eligible, b.why.as_str()))
        .collect();
    assert_eq!(
        verdicts,
        [
            (
                "a",
                false,
                "full: 1 of 1 connections in use (max_connections)"
            ),
            ("b", true, "serving, weight 1"),
        ]
    );
    drop(held);
    wait_until("a has room", || pool.backends[0].slots_in_use() == 0).await;
    let mut again = TcpStream::connect(front).await.expect("connect");
    within("a again", again.read_exact(&mut name))
        .await
        .expect("read");
    assert_eq!(&name, b"a");
}

/// A waiter handed a slot that goes before it uses it (its connection
/// closed between the hand-over and its next poll) passes the slot on to
/// the next waiter at once, not at the next release or its timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_granted_to_a_waiter_that_went_passes_to_the_next() {
    let backend = named_backend("a").await;
    let toml = one_slot(backend, "30s");
    let server = start(&toml).await;
    let pool = server.pool("p").expect("p");
    let held = pool.acquire(1, &[], None).await.expect("the free slot");

    // The first waiter queues (one poll) and is then left unpolled.
    let mut first = Box::pin(pool.acquire(2, &[], None));
    assert!(
        tokio::time::timeout(Duration::ZERO, &mut first)
            .await
            .is_err(),
        "the backend is full"
    );
    let second = tokio::spawn({
        let pool = Arc::clone(&pool);
        async move { pool.acquire(3, &[], None).await }
    });
    wait_until("both queued", || pool.queue.depth() == 2).await;

    // The slot frees and goes to the first waiter, which goes unserved.
    pool.release(held);
    wait_until("handed over", || pool.queue.depth() == 1).await;
    drop(first);
    let served = within("the second waiter", second).await.expect("joined");
    assert_eq!(served, Ok(0));
    assert_eq!(pool.backends[0].slots_in_use(), 1);
    pool.release(0);
    assert_eq!(pool.backends[0].slots_in_use(), 0);
}

/// CPU time this process has used (user and system), from /proc.
fn cpu_used() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("stat");
    // After the command's parenthesis: state is field 3, utime 14, stime 15.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    Duration::from_millis(ticks * 10)
}

/// A connection that a backend refused waits in the queue for another
/// backend without being offered the one that refused it again and again
/// (which spun a core for its whole wait), and is served when a slot frees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_waits_without_being_offered_the_backend_that_failed_it() {
    let b = holding_backend("b").await;
    let dead = crate::common::refused_addr();
    let toml = format!(
        "[[listeners]]\nname = \"l\"\nbind = [\"127.0.0.1:0\"]\n[[listeners.routes]]\nname = \"r\"\npool = \"p\"\n\
         [[pools]]\nname = \"p\"\nbalance = \"first\"\nqueue_timeout = \"5s\"\n\
         [[pools.backends]]\nname = \"b\"\naddress = \"{b}\"\nmax_connections = 1\n\
         [[pools.backends]]\nname = \"dead\"\naddress = \"{dead}\"\nmax_connections = 1\n"
    );
    let server = start(&toml).await;
    let front = addr(&server, "l");
    let pool = server.pool("p").expect("p");
    let mut held = TcpStream::connect(front).await.expect("connect");
    let mut name = [0u8; 1];
    within("b", held.read_exact(&mut name)).await.expect("read");
    assert_eq!(&name, b"b");
    // b is full: the next connection goes to dead, is refused there, and
    // waits for b.
    let mut waiting = TcpStream::connect(front).await.expect("connect");
    wait_until("a waiter", || pool.queue.depth() == 1).await;
    let before = cpu_used();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let spent = cpu_used() - before;
    assert!(
        spent < Duration::from_millis(300),
        "{spent:?} of CPU in a second of waiting"
    );
    assert_eq!(pool.queue.depth(), 1, "still waiting");
    drop(held);
    within("served by b", waiting.read_exact(&mut name))
        .await
        .expect("read");
    assert_eq!(&name, b"b");
    assert_eq!(pool.queue.results(QueueResult::Served), 1);
}

/// A request's own deadline ends its wait in the queue before the pool's
/// `queue_timeout` does, and its place is given up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_in_the_queue_ends_at_the_callers_deadline() {
    let backend = named_backend("a").await;
    let toml = one_slot(backend, "30s");
    let server = start(&toml).await;
    let pool = server.pool("p").expect("p");
    let held = pool.acquire(1, &[], None).await.expect("the free slot");
    let began = tokio::time::Instant::now();
    let until = began + Duration::from_millis(300);
    let waited = within("the deadline", pool.acquire(2, &[], Some(until))).await;
    assert_eq!(waited, Err(Reason::QueueTimeout));
    assert!(began.elapsed() >= Duration::from_millis(300));
    assert_eq!(pool.queue.depth(), 0, "the place is given up");
    pool.release(held);
    assert_eq!(pool.backends[0].slots_in_use(), 0);
}

/// A listener in front of pool `p`, whose one backend `a` takes one
/// connection at a time; waiters give up after `queue_timeout`.
fn one_slot(backend: SocketAddr, queue_timeout: &str) -> String {
    format!(
        "[[listeners]]\nname = \"l\"\nbind = [\"127.0.0.1:0\"]\n[[listeners.routes]]\nname = \"r\"\npool = \"p\"\n\
         [[pools]]\nname = \"p\"\nqueue_timeout = \"{queue_timeout}\"\nmax_connections_per_backend = 1\n\
         [[pools.backends]]\nname = \"a\"\naddress = \"{backend}\"\n"
    )
}

/// A listener in front of pool `p`, whose backends `a` and `b` each take
/// one connection at a time; waiters give up after `queue_timeout`, and
/// `more` adds keys of `p`'s own (each line ending with a newline).
pub(crate) fn two_slots(a: SocketAddr, b: SocketAddr, queue_timeout: &str, more: &str) -> String {
    format!(
        "[[listeners]]\nname = \"l\"\nbind = [\"127.0.0.1:0\"]\n[[listeners.routes]]\nname = \"r\"\npool = \"p\"\n\
         [[pools]]\nname = \"p\"\nqueue_timeout = \"{queue_timeout}\"\nmax_connections_per_backend = 1\n{more}\
         [[pools.backends]]\nname = \"a\"\naddress = \"{a}\"\n\
         [[pools.backends]]\nname = \"b\"\naddress = \"{b}\"\n"
    )
}

/// A client waiting by name (a sticky cookie) for a full backend waits in
/// that backend's own line: a slot that frees there goes to whichever of
/// its line's head and the pool queue's head came first; a place given up
/// leaves the line; a wait that finds the queue full lets the pool place
/// the client instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_waiting_by_name_is_served_in_its_backends_line() {
    let (a, b) = (named_backend("a").await, named_backend("b").await);
    let toml = two_slots(a, b, "30s", "max_queue = 3\n");
    let server = start(&toml).await;
    let pool = server.pool("p").expect("p");
    // Both full.
    assert!(pool.take(0) && pool.take(1));
    assert!(!pool.take(0), "no room");
    let depth = |n: usize| {
        let pool = Arc::clone(&pool);
        move || pool.queue.depth() == n
    };
    let first = tokio::spawn({
        let pool = Arc::clone(&pool);
        async move { pool.acquire(1, &[], None).await }
    });
    wait_until("the pool's waiter", depth(1)).await;
    let named = tokio::spawn({
        let pool = Arc::clone(&pool);
        async move { pool.wait_for(0, None).await }
    });
    wait_until("the waiter for a", depth(2)).await;
    // The pool's waiter came first: a's free slot is its.
    pool.release(0);
    assert_eq!(
        within("the pool's waiter", first).await.expect("join"),
        Ok(0)
    );
    assert!(!named.is_finished());
    // Now the one waiting for a came first.
    let second = tokio::spawn({
        let pool = Arc::clone(&pool);
        async move { pool.acquire(2, &[], None).await }
    });
    wait_until("the second pool waiter", depth(2)).await;
    pool.release(0);
    assert_eq!(
        within("the waiter for a", named).await.expect("join"),
        Ok(Some(0))
    );
    assert!(!second.is_finished());
    // b's slot is nobody's by name: the pool's waiter takes it.
    pool.release(1);
    assert_eq!(within("the second", second).await.expect("join"), Ok(1));
    // A place given up leaves the line.
    let gone = tokio::spawn({
        let pool = Arc::clone(&pool);
        async move { pool.wait_for(0, None).await }
    });
    wait_until("another waiter for a", depth(1)).await;
    gone.abort();
    wait_until("the place given up", depth(0)).await;
    // A line that finds the queue full leaves the client to the pool.
    let waiters: Vec<_> = (0..3)
        .map(|k| {
            let pool = Arc::clone(&pool);
            tokio::spawn(async move { pool.acquire(10 + k, &[], None).await })
        })
        .collect();
    wait_until("a full queue", depth(3)).await;
    assert_eq!(pool.queue.results(QueueResult::Moved), 0);
    assert_eq!(pool.wait_for(0, None).await, Ok(None));
    assert_eq!(pool.queue.results(QueueResult::Moved), 1);
    for w in waiters {
        w.abort();
    }
    wait_until("the queue emptied", depth(0)).await;
    // A line let go (its backend disabled while the client waits) moves
    // its client, and the time it waited there is observed.
    let observed = pool.queue.wait.snapshot();
    let moved = tokio::spawn({
        let pool = Arc::clone(&pool);
        async move { pool.wait_for(0, None).await }
    });
    wait_until("a waiter for a", depth(1)).await;
    let waiting = std::time::Instant::now();
    wait_until("a wait of some length", || {
        waiting.elapsed() >= Duration::from_millis(50)
    })
    .await;
    assert!(pool.set_admin("a", AdminState::Disabled));
    assert_eq!(
        within("the moved waiter", moved).await.expect("join"),
        Ok(None)
    );
    assert_eq!(pool.queue.results(QueueResult::Moved), 2);
    let now = pool.queue.wait.snapshot();
    assert_eq!(now.count, observed.count + 1, "the moved wait is observed");
    assert!(now.sum_seconds - observed.sum_seconds >= 0.05);
}

/// Waiters of the pool's queue whose every backend stops serving while
/// they wait are answered `no_backend` at once, as a newcomer is, rather
/// than after `queue_timeout`; the wait counts in no result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_go_at_once_when_no_backend_serves_any_more() {
    let (a, b) = (named_backend("a").await, named_backend("b").await);
    let toml = two_slots(a, b, "60s", "");
    let server = start(&toml).await;
    let pool = server.pool("p").expect("p");
    assert!(pool.take(0) && pool.take(1));
    let waiters: Vec<_> = (0..2)
        .map(|k| {
            let pool = Arc::clone(&pool);
            tokio::spawn(async move { pool.acquire(k, &[], None).await })
        })
        .collect();
    wait_until("two waiters", || pool.queue.depth() == 2).await;
    // One backend left: they wait on.
    assert!(pool.set_admin("a", AdminState::Disabled));
    assert_eq!(pool.queue.depth(), 2);
    assert!(waiters.iter().all(|w| !w.is_finished()));
    // None left: they go, well before the minute of `queue_timeout`.
    assert!(pool.set_admin("b", AdminState::Drain));
    for w in waiters {
        let got = within("a waiter let go", w).await.expect("join");
        assert_eq!(got, Err(Reason::NoBackend));
    }
    assert_eq!(pool.queue.depth(), 0);
    for r in QueueResult::ALL {
        assert_eq!(pool.queue.results(r), 0, "{}", r.as_str());
    }
}

/// A retry waiting in the queue for a backend other than the one that
/// failed it is refused `no_backend` at once when no other serves any more,
/// rather than after `queue_timeout`; the waiters that may still take a
/// backend wait on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_with_no_backend_left_to_take_goes_at_once() {
    let (a, b) = (named_backend("a").await, named_backend("b").await);
    let toml = two_slots(a, b, "60s", "");
    let server = start(&toml).await;
    let pool = server.pool("p").expect("p");
    assert!(pool.take(0) && pool.take(1));
    // Failed by a, waiting for b; and one that may take either.
    let retry = tokio::spawn({
        let pool = Arc::clone(&pool);
        async move { pool.acquire(1, &[0], None).await }
    });
    wait_until("the retry waits", || pool.queue.depth() == 1).await;
    let other = tokio::spawn({
        let pool = Arc::clone(&pool);
        async move { pool.acquire(2, &[], None).await }
    });
    wait_until("both wait", || pool.queue.depth() == 2).await;
    assert!(pool.set_admin("b", AdminState::Disabled));
    let got = within("the retry let go", retry).await.expect("join");
    assert_eq!(got, Err(Reason::NoBackend));
    assert_eq!(pool.queue.depth(), 1, "the other waits on for a");
    pool.release(0);
    assert_eq!(within("the other", other).await.expect("join"), Ok(0));
}

/// A waiter of the pool's queue that came after a line's head does not take
/// that line's backend, also when the queue's first waiter is passed over
/// (a retry that may not go back to the backend that failed it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_keeps_its_turn_behind_a_passed_over_waiter() {
    let (a, b) = (named_backend("a").await, named_backend("b").await);
    let toml = two_slots(a, b, "30s", "");
    let server = start(&toml).await;
    let pool = server.pool("p").expect("p");
    assert!(pool.take(0) && pool.take(1));
    let depth = |n: usize| {
        let pool = Arc::clone(&pool);
        move || pool.queue.depth() == n
    };
    // A retry that a refused: it may take b only.
    let retry = tokio::spawn({
        let pool = Arc::clone(&pool);
        async move { pool.acquire(1, &[0], None).await }
    });
    wait_until("the retry waiting", depth(1)).await;
    let named = tokio::spawn({
        let pool = Arc::clone(&pool);
        async move { pool.wait_for(0, None).await }
    });
    wait_until("the waiter for a", depth(2)).await;
    let later = tokio::spawn({
        let pool = Arc::clone(&pool);
        async move { pool.acquire(2, &[], None).await }
    });
    wait_until("a later waiter", depth(3)).await;
    // a frees: the retry may not take it, the line's head came before the
    // later waiter.
    pool.release(0);
    assert_eq!(
        within("the waiter for a", named).await.expect("join"),
        Ok(Some(0))
    );
    assert!(!retry.is_finished() && !later.is_finished());
    // b frees: the retry's, first in the queue.
    pool.release(1);
    assert_eq!(within("the retry", retry).await.expect("join"), Ok(1));
    assert!(!later.is_finished());
    later.abort();
    wait_until("the queue emptied", depth(0)).await;
}

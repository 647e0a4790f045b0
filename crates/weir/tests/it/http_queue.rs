//! l7 requests and backend connection limits: a request beyond the limit
//! waits in the pool's queue and is served when the one before it is done;
//! a full queue answers 503 `queue_full` (gRPC: UNAVAILABLE), a wait past
//! `queue_timeout` 503 `queue_timeout`. And a pool's `retry_budget`, for l7
//! requests and l4 connections.

use std::sync::atomic::Ordering::SeqCst;
use std::time::{Duration, Instant};

use crate::cli::{DEADLINE, free_port};
use crate::http::{curl, metric, raw_backend, start};

/// Waits until `cond` holds, failing the test past the deadline.
fn wait(what: &str, cond: &dyn Fn() -> bool) {
    let end = Instant::now() + DEADLINE;
    while !cond() {
        assert!(Instant::now() < end, "{what}: not within {DEADLINE:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn requests_beyond_the_limit_wait_their_turn() {
    // The first answer takes long enough for the second request to queue
    // and two more to be refused, even on a loaded machine.
    let slow = raw_backend(None, Duration::from_secs(2));
    let (front, admin) = (free_port(), free_port());
    let (_weir, _out) = start(
        "http-queue",
        &format!(
            "[admin]\nhttp = \"{admin}\"\n\
             [[listeners]]\nname = \"web\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"app\"\nmode = \"l7\"\n\
             [[listeners.routes.http]]\nname = \"all\"\npool = \"slow\"\n\
             [[pools]]\nname = \"slow\"\nmax_connections_per_backend = 1\nmax_queue = 1\n\
             queue_timeout = \"10s\"\n\
             [[pools.backends]]\nname = \"s\"\naddress = \"{}\"\n",
            slow.addr
        ),
    );
    let url = format!("http://{front}/");
    let depth = || metric(admin, "weir_pool_queue_depth{pool=\"slow\"}");

    let first = {
        let url = url.clone();
        std::thread::spawn(move || curl(&[], &url))
    };
    wait("the first request at the backend", &|| {
        slow.requests.load(SeqCst) == 1
    });
    let second = {
        let url = url.clone();
        std::thread::spawn(move || curl(&[], &url))
    };
    wait("the second request queued", &|| depth() == 1.0);
    // The backend has one request at a time.
    assert_eq!(slow.requests.load(SeqCst), 1);
    // The queue holds one: a third is refused at once.
    let (status, body, _) = curl(&[], &url);
    assert_eq!(
        (status, body.as_str()),
        (
            503,
            "weir: every backend is at its connection limit and the queue is full (queue_full)"
        )
    );
    let (status, body, _) = curl(&["-H", "content-type: application/grpc", "-i"], &url);
    assert_eq!(status, 200);
    assert!(body.contains("grpc-status: 14"), "{body}");

    for h in [first, second] {
        let (status, body, _) = h.join().expect("curl");
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(slow.requests.load(SeqCst), 2);
    assert_eq!(
        metric(
            admin,
            "weir_pool_queue_total{pool=\"slow\",result=\"served\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            admin,
            "weir_pool_queue_total{pool=\"slow\",result=\"full\"}"
        ),
        2.0
    );
    assert_eq!(
        metric(
            admin,
            "weir_backend_max_connections{pool=\"slow\",backend=\"s\"}"
        ),
        1.0
    );
}

#[test]
fn a_request_waits_no_longer_than_queue_timeout() {
    let slow = raw_backend(None, Duration::from_millis(1500));
    let front = free_port();
    let (_weir, _out) = start(
        "http-queue-timeout",
        &format!(
            "[[listeners]]\nname = \"web\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"app\"\nmode = \"l7\"\n\
             [[listeners.routes.http]]\nname = \"all\"\npool = \"slow\"\n\
             [[pools]]\nname = \"slow\"\nqueue_timeout = \"200ms\"\n\
             [[pools.backends]]\nname = \"s\"\naddress = \"{}\"\nmax_connections = 1\n",
            slow.addr
        ),
    );
    let url = format!("http://{front}/");
    let first = {
        let url = url.clone();
        std::thread::spawn(move || curl(&[], &url))
    };
    let end = Instant::now() + DEADLINE;
    while slow.requests.load(SeqCst) == 0 {
        assert!(Instant::now() < end, "the first request never arrived");
        std::thread::sleep(Duration::from_millis(5));
    }
    let (status, body, _) = curl(&[], &url);
    assert_eq!(
        (status, body.as_str()),
        (503, "weir: no backend had room in time (queue_timeout)")
    );
    assert_eq!(first.join().expect("curl").0, 200);
    assert_eq!(slow.requests.load(SeqCst), 1);
}

/// A request whose connect failed and that waits in the queue for another
/// backend holds nothing of the one that failed: a request after it may
/// still try that one (and does, with room there).
#[test]
fn a_request_waiting_after_a_failed_connect_holds_no_slot_there() {
    let slow = raw_backend(None, Duration::from_secs(2));
    let (front, admin, closed) = (free_port(), free_port(), free_port());
    let (_weir, _out) = start(
        "http-queue-refused",
        &format!(
            "[admin]\nhttp = \"{admin}\"\n\
             [[listeners]]\nname = \"web\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"app\"\nmode = \"l7\"\n\
             [[listeners.routes.http]]\nname = \"all\"\npool = \"p\"\n\
             [[pools]]\nname = \"p\"\nmax_connections_per_backend = 1\nretries = 1\n\
             queue_timeout = \"10s\"\n\
             [[pools.backends]]\nname = \"slow\"\naddress = \"{}\"\n\
             [[pools.backends]]\nname = \"closed\"\naddress = \"{closed}\"\n",
            slow.addr
        ),
    );
    let url = format!("http://{front}/");
    let gauge = |name: &str, backend: &str| {
        metric(
            admin,
            &format!("{name}{{pool=\"p\",backend=\"{backend}\"}}"),
        )
    };
    let refused = || {
        metric(
            admin,
            "weir_backend_connect_errors_total{pool=\"p\",backend=\"closed\",reason=\"refused\"}",
        )
    };
    let depth = || metric(admin, "weir_pool_queue_depth{pool=\"p\"}");
    let spawn = || {
        let url = url.clone();
        std::thread::spawn(move || curl(&[], &url))
    };
    // The first request ends up at the slow backend (the closed one may
    // refuse it first).
    let first = spawn();
    wait("the first request at the backend", &|| {
        slow.requests.load(SeqCst) == 1
    });
    let before = refused();
    // The second finds the slow one full, is refused by the closed one and
    // waits for the slow one.
    let second = spawn();
    wait("the second request queued", &|| depth() == 1.0);
    assert_eq!(refused(), before + 1.0);
    assert_eq!(
        gauge("weir_backend_http_requests_active", "closed"),
        0.0,
        "the waiting request still counts at the backend that refused it"
    );
    assert_eq!(gauge("weir_backend_http_requests_active", "slow"), 1.0);
    // The closed backend has room: a third request tries it too.
    let third = spawn();
    wait("the third request queued", &|| depth() == 2.0);
    assert_eq!(refused(), before + 2.0);
    for h in [first, second, third] {
        let (status, body, _) = h.join().expect("curl");
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(slow.requests.load(SeqCst), 3);
    assert_eq!(gauge("weir_backend_http_requests_active", "closed"), 0.0);
    assert_eq!(gauge("weir_backend_http_requests_active", "slow"), 0.0);
}

/// A pool's `retry_budget` bounds the requests trying another backend at
/// once: with room for one, a second request whose connect fails while the
/// first one's retry is in flight gets the connect's 502 at once; once the
/// first is answered, retries go on.
#[test]
fn a_retry_budget_bounds_the_retries_in_flight() {
    let slow = raw_backend(None, Duration::from_secs(2));
    let (front, admin, closed) = (free_port(), free_port(), free_port());
    let (_weir, _out) = start(
        "http-retry-budget",
        &format!(
            "[admin]\nhttp = \"{admin}\"\n\
             [[listeners]]\nname = \"web\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"app\"\nmode = \"l7\"\n\
             [[listeners.routes.http]]\nname = \"all\"\npool = \"p\"\n\
             [[pools]]\nname = \"p\"\nbalance = \"first\"\n\
             retry_budget = {{ percent = 0, min_concurrent = 1 }}\n\
             [[pools.backends]]\nname = \"closed\"\naddress = \"{closed}\"\n\
             [[pools.backends]]\nname = \"slow\"\naddress = \"{}\"\n",
            slow.addr
        ),
    );
    let url = format!("http://{front}/");
    let pool = |name: &str| metric(admin, &format!("{name}{{pool=\"p\"}}"));
    let first = {
        let url = url.clone();
        std::thread::spawn(move || curl(&[], &url))
    };
    wait("the first request retried at the slow backend", &|| {
        slow.requests.load(SeqCst) == 1
    });
    assert_eq!(pool("weir_pool_retries_active"), 1.0);
    let (status, body, _) = curl(&[], &url);
    assert_eq!(
        (status, body.as_str()),
        (502, "weir: the backend failed (refused)")
    );
    assert_eq!(pool("weir_pool_retry_budget_exhausted_total"), 1.0);
    assert_eq!(slow.requests.load(SeqCst), 1);
    assert_eq!(first.join().expect("curl").0, 200);
    assert_eq!(pool("weir_pool_retries_active"), 0.0);
    // The budget is free again: the next request retries.
    assert_eq!(curl(&[], &url).0, 200);
    assert_eq!(slow.requests.load(SeqCst), 2);
    assert_eq!(pool("weir_pool_retry_budget_exhausted_total"), 1.0);
    crate::http::assert_documented(admin);
}

/// The retry budget of an l4 pool: while one client's retry is connecting
/// (to a backend that does not answer), another client whose connect was
/// refused is closed at once rather than retried.
#[test]
fn a_retry_budget_closes_l4_clients_past_it() {
    let (_unanswering, silent) = crate::cli::unanswering_backend();
    let (front, admin, closed) = (free_port(), free_port(), free_port());
    let (_weir, out) = start(
        "l4-retry-budget",
        &format!(
            "[admin]\nhttp = \"{admin}\"\n[log]\nformat = \"json\"\n\
             [[listeners]]\nname = \"db\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"all\"\npool = \"p\"\n\
             [[pools]]\nname = \"p\"\nbalance = \"first\"\nconnect_timeout = \"20s\"\n\
             retry_budget = {{ percent = 0, min_concurrent = 1 }}\n\
             [[pools.backends]]\nname = \"closed\"\naddress = \"{closed}\"\n\
             [[pools.backends]]\nname = \"silent\"\naddress = \"{silent}\"\n"
        ),
    );
    let pool = |name: &str| metric(admin, &format!("{name}{{pool=\"p\"}}"));
    // The first client: refused by the first backend, then connecting to
    // the silent one, for as long as the test lasts.
    let _first = std::net::TcpStream::connect(front).expect("connect");
    wait("the first client retrying", &|| {
        pool("weir_pool_retries_active") == 1.0
    });
    let mut second = std::net::TcpStream::connect(front).expect("connect");
    second
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let started = Instant::now();
    let mut buf = [0u8; 1];
    // Closed by weir (an end of stream or a reset), well before 5 s.
    let read = std::io::Read::read(&mut second, &mut buf);
    assert!(
        matches!(read, Ok(0))
            || read
                .as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "{read:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(pool("weir_pool_retry_budget_exhausted_total"), 1.0);
    let line = crate::cli::wait_line(&out, "connect_failed");
    assert!(
        line.contains("\"listener\":\"db\"") && line.contains("refused"),
        "{line}"
    );
    assert_eq!(pool("weir_pool_retries_active"), 1.0);
}

//! l7 requests and backend connection limits: a request beyond the limit
//! waits in the pool's queue and is served when the one before it is done;
//! a full queue answers 503 `queue_full` (gRPC: UNAVAILABLE), a wait past
//! `queue_timeout` 503 `queue_timeout`. And a pool's `retry_budget`, for l7
//! requests and l4 connections.

use std::sync::atomic::Ordering::SeqCst;
use std::time::{Duration, Instant};

use crate::cli::{DEADLINE, free_port};
use crate::http::{curl, metric, raw_backend, start, wait};

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

/// A client whose sticky cookie names a backend at its connection limit
/// waits in that backend's own line and is served there, keeping its
/// cookie, while clients without one go to the backend with room at once;
/// a client waiting for a backend that is disabled meanwhile is placed by
/// the pool at once, with a new cookie.
#[test]
fn a_sticky_client_waits_for_its_full_backend() {
    let (home, other) = (
        raw_backend(None, Duration::from_millis(1500)),
        raw_backend(None, Duration::ZERO),
    );
    // Pool `q`'s home answers well after its waiter's curl gives up.
    let (q_home, q_other) = (
        raw_backend(None, Duration::from_secs(12)),
        raw_backend(None, Duration::ZERO),
    );
    let (front, admin, grpc) = (free_port(), free_port(), free_port());
    let (_weir, _out) = start(
        "http-queue-sticky",
        &format!(
            "[admin]\nhttp = \"{admin}\"\ngrpc = \"{grpc}\"\n\
             [[listeners]]\nname = \"web\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"app\"\nmode = \"l7\"\n\
             [[listeners.routes.http]]\nname = \"q\"\npool = \"q\"\n\
             match = {{ path_prefix = \"/q\" }}\n\
             [[listeners.routes.http]]\nname = \"all\"\npool = \"p\"\n\
             [[pools]]\nname = \"p\"\nmax_connections_per_backend = 1\n\
             queue_timeout = \"10s\"\nsticky = {{ cookie = \"srv\" }}\n\
             [[pools.backends]]\nname = \"home\"\naddress = \"{}\"\n\
             [[pools.backends]]\nname = \"other\"\naddress = \"{}\"\n\
             [[pools]]\nname = \"q\"\nmax_connections_per_backend = 1\n\
             queue_timeout = \"10s\"\nsticky = {{ cookie = \"srv\" }}\n\
             [[pools.backends]]\nname = \"q-home\"\naddress = \"{}\"\n\
             [[pools.backends]]\nname = \"q-other\"\naddress = \"{}\"\n",
            home.addr, other.addr, q_home.addr, q_other.addr
        ),
    );
    let cookie = |name: &str| {
        let token = weir_wire::cookie::token(weir_balance::hash_bytes(name.as_bytes()));
        format!("Cookie: srv={}", String::from_utf8_lossy(&token))
    };
    let depth = |pool: &str| metric(admin, &format!("weir_pool_queue_depth{{pool=\"{pool}\"}}"));
    let spawn = |args: Vec<String>, path: &str| {
        let url = format!("http://{front}{path}");
        std::thread::spawn(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            curl(&args, &url)
        })
    };
    let sets_cookie = |text: &str| {
        let head = text.split("\r\n\r\n").next().unwrap_or("");
        head.lines()
            .any(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
    };
    let with = |c: &str| vec!["-i".to_owned(), "-H".to_owned(), c.to_owned()];

    let first = spawn(with(&cookie("home")), "/");
    wait("the first request at its backend", &|| {
        home.requests.load(SeqCst) == 1
    });
    let second = spawn(with(&cookie("home")), "/");
    wait("the second request waiting for its backend", &|| {
        depth("p") == 1.0
    });
    // A new client is not held up by it: the other backend has room.
    let (status, text, _) = curl(&["-i"], &format!("http://{front}/"));
    assert_eq!(status, 200, "{text}");
    assert_eq!(other.requests.load(SeqCst), 1);
    assert_eq!(home.requests.load(SeqCst), 1);
    assert_eq!(depth("p"), 1.0, "the sticky client stopped waiting");
    assert_eq!(
        metric(
            admin,
            "weir_backend_queue_depth{pool=\"p\",backend=\"home\"}"
        ),
        1.0
    );
    // The API and the CLI show the backend's line.
    let answer = crate::cli::http_get(admin, "/api/v1/pools/p/backends");
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    let v: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {answer}"));
    let line = |name: &str| {
        v["backends"]
            .as_array()
            .and_then(|l| l.iter().find(|b| b["name"] == name))
            .map(|b| (b["queue_depth"].as_u64(), b["active_requests"].as_u64()))
    };
    assert_eq!(line("home"), Some((Some(1), Some(1))), "{v}");
    assert_eq!(line("other"), Some((Some(0), Some(0))), "{v}");
    let (code, table, err) =
        crate::control::text(&crate::control::ctl(grpc, None, &["backends", "p"]));
    assert_eq!(code, 0, "{err}");
    let row = table
        .lines()
        .find(|l| l.contains(" home "))
        .unwrap_or_default();
    assert!(row.contains(" 1/1 +1 queued "), "{table}");
    crate::http::assert_documented(admin);
    for h in [first, second] {
        let (status, text, _) = h.join().expect("curl");
        assert_eq!(status, 200, "{text}");
        assert!(!sets_cookie(&text), "moved: {text}");
    }
    assert_eq!(home.requests.load(SeqCst), 2);
    assert_eq!(other.requests.load(SeqCst), 1);
    let series = |name: &str| {
        metric(
            admin,
            &format!("weir_backend_sticky_total{{pool=\"p\",backend=\"home\",result=\"{name}\"}}"),
        )
    };
    assert_eq!((series("kept"), series("moved")), (2.0, 0.0));
    assert_eq!(
        metric(admin, "weir_pool_queue_total{pool=\"p\",result=\"served\"}"),
        1.0
    );

    // Its backend disabled while it waits: placed by the pool at once,
    // long before the request ahead of it is done.
    let mut held = with(&cookie("q-home"));
    held.extend(["--max-time".to_owned(), "2".to_owned()]);
    let held = spawn(held, "/q");
    wait("the first request at its backend", &|| {
        q_home.requests.load(SeqCst) == 1
    });
    let mut waiting = with(&cookie("q-home"));
    waiting.extend(["--max-time".to_owned(), "6".to_owned()]);
    let waiting = spawn(waiting, "/q");
    wait("the second request waiting for its backend", &|| {
        depth("q") == 1.0
    });
    let (code, _, err) = crate::control::text(&crate::control::ctl(
        grpc,
        None,
        &["backend", "disable", "q", "q-home"],
    ));
    assert_eq!(code, 0, "{err}");
    let (status, text, _) = waiting.join().expect("curl");
    assert_eq!(status, 200, "{text}");
    assert!(sets_cookie(&text), "kept its cookie: {text}");
    assert_eq!(q_other.requests.load(SeqCst), 1);
    assert_eq!(depth("q"), 0.0);
    assert_eq!(
        metric(admin, "weir_pool_queue_total{pool=\"q\",result=\"moved\"}"),
        1.0
    );
    // The one at the disabled backend is cut by its own client.
    let _ = held.join();
}

/// A sticky client whose wait for its backend ends without it (the backend
/// disabled) and that then waits in the pool's queue waits no longer in
/// all than the pool's `queue_timeout`.
#[test]
fn a_moved_sticky_client_waits_one_queue_timeout_in_all() {
    let (home, other) = (
        raw_backend(None, Duration::from_secs(12)),
        raw_backend(None, Duration::from_secs(12)),
    );
    let (front, grpc) = (free_port(), free_port());
    let (_weir, _out) = start(
        "http-queue-sticky-timeout",
        &format!(
            "[admin]\ngrpc = \"{grpc}\"\n\
             [[listeners]]\nname = \"web\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"app\"\nmode = \"l7\"\n\
             [[listeners.routes.http]]\nname = \"all\"\npool = \"p\"\n\
             [[pools]]\nname = \"p\"\nmax_connections_per_backend = 1\n\
             queue_timeout = \"3s\"\nsticky = {{ cookie = \"srv\" }}\n\
             [[pools.backends]]\nname = \"home\"\naddress = \"{}\"\n\
             [[pools.backends]]\nname = \"other\"\naddress = \"{}\"\n",
            home.addr, other.addr
        ),
    );
    let token = weir_wire::cookie::token(weir_balance::hash_bytes(b"home"));
    let cookie = format!("Cookie: srv={}", String::from_utf8_lossy(&token));
    let url = format!("http://{front}/");
    let hold = |args: Vec<String>| {
        let url = url.clone();
        std::thread::spawn(move || {
            let mut all: Vec<&str> = vec!["--max-time", "10"];
            all.extend(args.iter().map(String::as_str));
            curl(&all, &url)
        })
    };
    // Both backends busy: one with the cookie's client, one with another.
    let _first = hold(vec!["-H".to_owned(), cookie.clone()]);
    wait("the cookie's client at its backend", &|| {
        home.requests.load(SeqCst) == 1
    });
    let _second = hold(Vec::new());
    wait("another client at the other backend", &|| {
        other.requests.load(SeqCst) == 1
    });
    let began = Instant::now();
    let waiting = hold(vec!["-H".to_owned(), cookie]);
    // Well into its wait, its backend is disabled: it goes to the pool's
    // queue, whose wait ends with the one it began.
    std::thread::sleep(Duration::from_millis(1500));
    let (code, _, err) = crate::control::text(&crate::control::ctl(
        grpc,
        None,
        &["backend", "disable", "p", "home"],
    ));
    assert_eq!(code, 0, "{err}");
    let (status, body, _) = waiting.join().expect("curl");
    let waited = began.elapsed();
    assert_eq!(
        (status, body.as_str()),
        (503, "weir: no backend had room in time (queue_timeout)")
    );
    assert!(
        waited < Duration::from_millis(4200),
        "waited {waited:?} for a queue_timeout of 3 s"
    );
}

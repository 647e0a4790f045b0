//! Real-socket tests of the data plane: a weir `Server` on 127.0.0.1 in front of
//! small backends written here. Every wait has a deadline.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weir_core::Reason;
use weir_core::health::{Cause, Health};

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_gives_each_window_exactly_its_weights() {
    let a = named_backend("a").await;
    let b = named_backend("b").await;
    let c = named_backend("c").await;
    let server = start(&pool_toml(
        "round_robin",
        &[("a", a, 3), ("b", b, 2), ("c", c, 1)],
    ))
    .await;
    let front = addr(&server, "l");
    let mut seq = Vec::new();
    for _ in 0..30 {
        seq.push(within("fetch", fetch(front, None)).await);
    }
    // Every window of sum(weights) = 6 consecutive connections holds exactly 3 a, 2 b, 1 c.
    for window in seq.windows(6) {
        let count = |n: &str| window.iter().filter(|s| *s == n).count();
        assert_eq!(
            (count("a"), count("b"), count("c")),
            (3, 2, 1),
            "window {window:?} of {seq:?}"
        );
    }
    // Smooth: never three picks of the same backend in a row with weights 3:2:1.
    assert!(
        seq.windows(3).all(|w| !(w[0] == w[1] && w[1] == w[2])),
        "{seq:?}"
    );
    let p = server.pool("p").expect("pool");
    let total = |n: &str| {
        p.backend(n)
            .expect("backend")
            .stats
            .connections_total
            .load(Ordering::Relaxed)
    };
    assert_eq!((total("a"), total("b"), total("c")), (15, 10, 5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weight_zero_is_never_picked() {
    let a = named_backend("a").await;
    let z = named_backend("zero").await;
    let b = named_backend("b").await;
    for policy in ["round_robin", "least_conn", "random", "first", "maglev"] {
        let server = start(&pool_toml(
            policy,
            &[("zero", z, 0), ("a", a, 1), ("b", b, 2)],
        ))
        .await;
        let front = addr(&server, "l");
        let mut counts: HashMap<String, usize> = HashMap::new();
        for i in 0..30u8 {
            let src = IpAddr::V4(Ipv4Addr::new(127, 0, 1, i + 1));
            *counts
                .entry(within("fetch", fetch(front, Some(src))).await)
                .or_default() += 1;
        }
        assert_eq!(counts.get("zero"), None, "{policy}: {counts:?}");
        if policy == "round_robin" {
            assert_eq!((counts["a"], counts["b"]), (10, 20), "{counts:?}");
        }
        if policy == "first" {
            assert_eq!(counts["a"], 30, "{counts:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failures_retry_other_backends_under_every_policy() {
    let live = named_backend("live").await;
    for policy in ["round_robin", "least_conn", "random", "first", "maglev"] {
        let dead1 = refused_addr();
        let dead2 = refused_addr();
        // `first` would always pick dead1 first; every other policy picks the dead
        // ones for most clients. The default retries (every other backend)
        // reach the live one.
        let server = start(&pool_toml(
            policy,
            &[("dead1", dead1, 1), ("dead2", dead2, 1), ("live", live, 1)],
        ))
        .await;
        let front = addr(&server, "l");
        for i in 0..20u8 {
            let src = IpAddr::V4(Ipv4Addr::new(127, 0, 2, i + 1));
            assert_eq!(
                within("fetch", fetch(front, Some(src))).await,
                "live",
                "{policy}"
            );
        }
        let p = server.pool("p").expect("pool");
        let refused: u64 = ["dead1", "dead2"]
            .iter()
            .map(|n| {
                p.backend(n)
                    .expect("b")
                    .stats
                    .connect_errors(Reason::Refused)
            })
            .sum();
        assert!(refused > 0, "{policy}: the dead backends were never tried");
        assert_eq!(
            p.backend("live")
                .expect("b")
                .stats
                .connections_total
                .load(Ordering::Relaxed),
            20
        );
    }
}

/// The README's promise, tried as a new user would: `first`, three refusing
/// backends before a live one, no health section. Every client reaches the
/// live backend; passive health takes the dead ones down after `fall` (3)
/// failed connects, so later clients go straight to it; after
/// `passive_timeout` a dead one is tried again, and one more failure takes it
/// down again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_never_sees_a_dead_backend_while_another_is_up() {
    let live = named_backend("live").await;
    let dead = [refused_addr(), refused_addr(), refused_addr()];
    let mut toml = pool_toml(
        "first",
        &[
            ("d1", dead[0], 1),
            ("d2", dead[1], 1),
            ("d3", dead[2], 1),
            ("live", live, 1),
        ],
    );
    // Long enough that no dead backend is on trial again before the checks
    // of its first fall below, even on a loaded machine.
    toml.push_str("[pools.health]\ntype = \"none\"\npassive_timeout = \"2s\"\n");
    let server = start(&toml).await;
    let front = addr(&server, "l");
    let p = server.pool("p").expect("pool");
    let refused = |name: &str| {
        p.backend(name)
            .expect("b")
            .stats
            .connect_errors(Reason::Refused)
    };
    for _ in 0..3 {
        assert_eq!(within("fetch", fetch(front, None)).await, "live");
    }
    for d in ["d1", "d2", "d3"] {
        assert_eq!(refused(d), 3, "{d}");
        let v = p.view(d).expect("view");
        assert_eq!(v.health, Health::Down, "{d}");
        assert_eq!(
            v.history.last().map(|t| t.cause.clone()),
            Some(Cause::Passive("connect refused".into()))
        );
    }
    // Down: skipped without a connect.
    assert_eq!(within("fetch", fetch(front, None)).await, "live");
    assert_eq!(refused("d1"), 3);
    // After passive_timeout: on trial, tried once more, down again.
    wait_until("d1 on trial", || {
        p.view("d1").is_some_and(|v| v.health == Health::Unknown)
    })
    .await;
    assert_eq!(within("fetch", fetch(front, None)).await, "live");
    assert_eq!(refused("d1"), 4);
    assert_eq!(p.view("d1").map(|v| v.health), Some(Health::Down));
    let l = server.listener("l").expect("l");
    assert_eq!(l.stats.rejected(Reason::NoBackend), 0);
}

/// A backend passive health took down comes back with its first successful
/// connect after `passive_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passive_down_backend_returns_when_it_answers_again() {
    let spare = refused_addr();
    let mut toml = pool_toml("first", &[("a", spare, 1)]);
    // Long enough that the backend is still down, not on trial again, when
    // the assertion below looks, on a loaded machine too.
    toml.push_str("[pools.health]\ntype = \"none\"\nfall = 1\npassive_timeout = \"1s\"\n");
    let server = start(&toml).await;
    let front = addr(&server, "l");
    assert_eq!(within("fetch", fetch(front, None)).await, "");
    let p = server.pool("p").expect("pool");
    assert_eq!(p.view("a").map(|v| v.health), Some(Health::Down));
    // The backend starts answering on its address.
    let l = tokio::net::TcpListener::bind(spare).await.expect("rebind");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let _ = s.write_all(b"back").await;
        }
    });
    wait_until("on trial", || {
        p.view("a").is_some_and(|v| v.health == Health::Unknown)
    })
    .await;
    assert_eq!(within("fetch", fetch(front, None)).await, "back");
    assert_eq!(p.view("a").map(|v| v.health), Some(Health::Up));
    assert_eq!(p.active_tier(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_timeout_moves_on_to_another_backend() {
    // A listener with a full accept queue drops further SYNs: connects to it time out.
    let black = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let hole = black.local_addr().expect("addr");
    let sock = socket2::Socket::from(black);
    sock.listen(0).expect("listen");
    let mut fillers = Vec::new();
    for _ in 0..4 {
        let s =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("s");
        s.set_nonblocking(true).expect("nb");
        let _ = s.connect(&hole.into());
        fillers.push(s);
    }
    let live = named_backend("live").await;
    let mut toml = pool_toml("first", &[("hole", hole, 1), ("live", live, 1)]);
    toml = toml.replace("connect_timeout = \"500ms\"", "connect_timeout = \"200ms\"");
    let server = start(&toml).await;
    let front = addr(&server, "l");
    assert_eq!(within("fetch", fetch(front, None)).await, "live");
    let p = server.pool("p").expect("pool");
    assert_eq!(
        p.backend("hole")
            .expect("b")
            .stats
            .connect_errors(Reason::Timeout),
        1
    );
    drop(sock);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_maglev_instances_agree_on_every_client() {
    let names = ["m0", "m1", "m2", "m3", "m4"];
    let mut backends = Vec::new();
    for n in names {
        backends.push((n, named_backend(n).await, 1));
    }
    let a = start(&pool_toml("maglev", &backends)).await;
    // The second instance lists the backends in another order: the table depends
    // on the set, not on the order of the file.
    backends.reverse();
    let b = start(&pool_toml("maglev", &backends)).await;
    let (fa, fb) = (addr(&a, "l"), addr(&b, "l"));
    let mut seen: HashMap<String, usize> = HashMap::new();
    for i in 0..200u32 {
        let src = IpAddr::V4(Ipv4Addr::new(
            127,
            10 + (i / 250) as u8,
            (i % 7) as u8,
            (i % 250 + 1) as u8,
        ));
        let via_a = within("fetch a", fetch(fa, Some(src))).await;
        let via_b = within("fetch b", fetch(fb, Some(src))).await;
        assert_eq!(via_a, via_b, "client {src}");
        // The same client again lands on the same backend (affinity).
        assert_eq!(
            within("fetch a again", fetch(fa, Some(src))).await,
            via_a,
            "client {src}"
        );
        *seen.entry(via_a).or_default() += 1;
    }
    assert_eq!(
        seen.len(),
        names.len(),
        "every backend gets clients: {seen:?}"
    );
}

async fn half_close_round_trip(zero_copy: bool) {
    let echo = echo_backend().await;
    let mut toml = pool_toml("round_robin", &[("echo", echo, 1)]);
    toml.insert_str(0, &format!("[runtime]\nzero_copy = {zero_copy}\n"));
    let server = start(&toml).await;
    let stream = within("connect", TcpStream::connect(addr(&server, "l")))
        .await
        .expect("connect");
    let payload: Vec<u8> = (0..1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let (mut r, mut w) = stream.into_split();
    let to_send = payload.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&to_send).await.expect("write");
        // Half-close: the backend sees EOF, echoes the rest, then closes its side.
        w.shutdown().await.expect("shutdown");
        w
    });
    let mut back = Vec::new();
    within("read to EOF", r.read_to_end(&mut back))
        .await
        .expect("read");
    let _w = within("writer", writer).await.expect("writer");
    assert_eq!(back.len(), payload.len());
    assert!(back == payload, "echoed bytes differ");
    let b = server
        .pool("p")
        .expect("p")
        .backend("echo")
        .expect("b")
        .stats
        .clone();
    wait_until("byte counters", || {
        b.received_bytes.load(Ordering::Relaxed) == payload.len() as u64
    })
    .await;
    assert_eq!(b.sent_bytes.load(Ordering::Relaxed), payload.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_with_one_mebibyte_echoed_zero_copy() {
    half_close_round_trip(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_with_one_mebibyte_echoed_buffered() {
    half_close_round_trip(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_after_idle_timeout() {
    let (silent, _) = silent_backend().await;
    let toml = pool_toml("round_robin", &[("s", silent, 1)]).replace(
        "bind = [\"127.0.0.1:0\"]",
        "bind = [\"127.0.0.1:0\"]\nidle_timeout = \"1s\"",
    );
    let server = start(&toml).await;
    let mut s = TcpStream::connect(addr(&server, "l"))
        .await
        .expect("connect");
    // Activity pushes the deadline out: keep writing for longer than the timeout.
    let begin = tokio::time::Instant::now();
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        s.write_all(b"x").await.expect("still open while active");
    }
    let mut buf = [0u8; 1];
    let n = within("idle close", s.read(&mut buf)).await.unwrap_or(0);
    assert_eq!(n, 0, "closed, not data");
    assert!(
        begin.elapsed() >= Duration::from_millis(1200 + 900),
        "closed too early: {:?}",
        begin.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_closes_the_excess_at_once() {
    let (silent, accepted) = silent_backend().await;
    let toml = pool_toml("round_robin", &[("s", silent, 1)]).replace(
        "bind = [\"127.0.0.1:0\"]",
        "bind = [\"127.0.0.1:0\"]\nmax_connections = 2",
    );
    let server = start(&toml).await;
    let front = addr(&server, "l");
    let c1 = TcpStream::connect(front).await.expect("c1");
    let _c2 = TcpStream::connect(front).await.expect("c2");
    wait_until("two relayed", || accepted.load(Ordering::SeqCst) == 2).await;
    // Closed at once with a reset: the connect itself may already see it, or the
    // first read does. Never relayed.
    if let Ok(mut c3) = TcpStream::connect(front).await {
        let mut buf = [0u8; 1];
        let r = within("excess closed", c3.read(&mut buf)).await;
        assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    }
    wait_until("rejection counted", || {
        server
            .listener("l")
            .is_some_and(|l| l.stats.rejected(Reason::MaxConnections) == 1)
    })
    .await;
    let l = server.listener("l").expect("listener");
    assert_eq!(l.stats.rejected(Reason::MaxConnections), 1);
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    // A freed slot is usable again.
    drop(c1);
    wait_until("slot freed", || {
        l.stats.connections_active.load(Ordering::Relaxed) == 1
    })
    .await;
    let _c4 = TcpStream::connect(front).await.expect("c4");
    wait_until("c4 relayed", || accepted.load(Ordering::SeqCst) == 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_lets_an_inflight_connection_finish() {
    let echo = echo_backend().await;
    let server = start(&pool_toml("round_robin", &[("echo", echo, 1)])).await;
    let front = addr(&server, "l");
    let mut s = TcpStream::connect(front).await.expect("connect");
    s.write_all(b"before").await.expect("write");
    let mut buf = [0u8; 6];
    within("echo", s.read_exact(&mut buf)).await.expect("read");
    server.shutdown();
    assert!(!server.is_ready());
    // New connections are refused once the accept loop has closed its socket.
    within("listener closed", async {
        while TcpStream::connect(front).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    // The in-flight connection still works, then ends normally.
    s.write_all(b"after!").await.expect("write");
    within("echo after", s.read_exact(&mut buf))
        .await
        .expect("read");
    assert_eq!(&buf, b"after!");
    s.shutdown().await.expect("shutdown");
    let mut rest = Vec::new();
    within("eof", s.read_to_end(&mut rest)).await.expect("read");
    within("server drained", server.wait()).await;
    assert_eq!(server.active_connections(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_timeout_closes_remaining_connections() {
    let (silent, accepted) = silent_backend().await;
    let toml = pool_toml("round_robin", &[("s", silent, 1)]).replace(
        "bind = [\"127.0.0.1:0\"]",
        "bind = [\"127.0.0.1:0\"]\nshutdown_timeout = \"300ms\"",
    );
    let server = start(&toml).await;
    let mut s = TcpStream::connect(addr(&server, "l"))
        .await
        .expect("connect");
    wait_until("relayed", || accepted.load(Ordering::SeqCst) == 1).await;
    let begin = tokio::time::Instant::now();
    server.shutdown();
    let mut buf = [0u8; 1];
    let n = within("closed by shutdown", s.read(&mut buf))
        .await
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(
        begin.elapsed() >= Duration::from_millis(250),
        "{:?}",
        begin.elapsed()
    );
    within("server drained", server.wait()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listens_on_ipv4_and_ipv6_at_once() {
    let a = named_backend("a").await;
    let toml = pool_toml("round_robin", &[("a", a, 1)]).replace(
        "bind = [\"127.0.0.1:0\"]",
        "bind = [\"127.0.0.1:0\", \"[::1]:0\"]",
    );
    let server = start(&toml).await;
    let addrs = server.local_addrs("l");
    assert_eq!(addrs.len(), 2);
    assert!(addrs[1].is_ipv6());
    for a in addrs {
        let mut s = within("connect", TcpStream::connect(a))
            .await
            .expect("connect");
        let mut out = String::new();
        within("read", s.read_to_string(&mut out))
            .await
            .expect("read");
        assert_eq!(out, "a", "via {a}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_match_by_source_and_unmatched_clients_are_rejected() {
    let inside = named_backend("inside").await;
    let toml = format!(
        "[[listeners]]\nname = \"l\"\nbind = [\"127.0.0.1:0\"]\n\
         [[listeners.routes]]\nname = \"lab\"\nmatch = {{ source = [\"127.0.3.0/24\"] }}\npool = \"p\"\n\
         [[pools]]\nname = \"p\"\n[[pools.backends]]\nname = \"inside\"\naddress = \"{inside}\"\n"
    );
    let server = start(&toml).await;
    let front = addr(&server, "l");
    let ok = within(
        "matched",
        fetch(front, Some(IpAddr::V4(Ipv4Addr::new(127, 0, 3, 9)))),
    )
    .await;
    assert_eq!(ok, "inside");
    let refused = within(
        "unmatched",
        fetch(front, Some(IpAddr::V4(Ipv4Addr::new(127, 0, 4, 9)))),
    )
    .await;
    assert_eq!(refused, "");
    let l = server.listener("l").expect("l");
    assert_eq!(l.stats.rejected(Reason::NoRoute), 1);
    assert_eq!(
        l.routes[0].stats.connections_total.load(Ordering::Relaxed),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_conn_prefers_the_less_loaded_backend() {
    let (busy, busy_accepted) = silent_backend().await;
    let idle = named_backend("idle").await;
    let server = start(&pool_toml(
        "least_conn",
        &[("busy", busy, 1), ("idle", idle, 1)],
    ))
    .await;
    let front = addr(&server, "l");
    let p = server.pool("p").expect("pool");
    let active = |n: &str| {
        p.backend(n)
            .expect("b")
            .stats
            .connections_active
            .load(Ordering::Relaxed)
    };
    // Open connections until one is held by `busy`; those that reach `idle` are
    // read to the end and closed.
    let mut held = None;
    for _ in 0..10 {
        let mut s = TcpStream::connect(front).await.expect("connect");
        let mut out = String::new();
        match tokio::time::timeout(Duration::from_secs(2), s.read_to_string(&mut out)).await {
            Err(_) => {
                held = Some(s);
                break;
            }
            Ok(_) => assert_eq!(out, "idle"),
        }
    }
    assert!(
        held.is_some() && busy_accepted.load(Ordering::SeqCst) == 1,
        "busy never picked"
    );
    // Now `busy` has one open connection and `idle` none: least_conn sends every
    // new connection to `idle`.
    for _ in 0..10 {
        wait_until("idle has no connection", || active("idle") == 0).await;
        assert_eq!(within("fetch", fetch(front, None)).await, "idle");
    }
    assert_eq!(active("busy"), 1);
}

/// A backend that parses the PROXY header weir sends and answers
/// "<version> <source address>".
async fn proxy_header_backend() -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let a = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 256];
                let answer = loop {
                    match weir_wire::proxy::parse(&buf) {
                        Ok(weir_wire::proxy::ProxyParse::Complete { header, .. }) => {
                            let src = header
                                .addresses
                                .map(|(src, _)| src.to_string())
                                .unwrap_or_default();
                            break format!("{:?} {src}", header.version);
                        }
                        Ok(weir_wire::proxy::ProxyParse::Incomplete { .. }) => {}
                        Err(e) => break format!("error {e}"),
                    }
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => break "closed".to_owned(),
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                };
                let _ = s.write_all(answer.as_bytes()).await;
            });
        }
    });
    a
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_send_the_proxy_protocol_version_they_name() {
    let backend = proxy_header_backend().await;
    let toml = format!(
        "[[listeners]]\nname = \"l\"\nbind = [\"127.0.0.1:0\"]\n\
         [[listeners.routes]]\nname = \"v1\"\nmatch = {{ source = [\"127.0.5.1\"] }}\npool = \"p\"\nsend_proxy_protocol = \"v1\"\n\
         [[listeners.routes]]\nname = \"v2\"\nmatch = {{ source = [\"127.0.5.2\"] }}\npool = \"p\"\nsend_proxy_protocol = \"v2\"\n\
         [[listeners.routes]]\nname = \"off\"\npool = \"p\"\n\
         [[pools]]\nname = \"p\"\n[[pools.backends]]\naddress = \"{backend}\"\n"
    );
    let server = start(&toml).await;
    let front = addr(&server, "l");
    let v1 = within(
        "v1",
        fetch(front, Some(IpAddr::V4(Ipv4Addr::new(127, 0, 5, 1)))),
    )
    .await;
    assert!(v1.starts_with("V1 127.0.5.1:"), "{v1}");
    let v2 = within(
        "v2",
        fetch(front, Some(IpAddr::V4(Ipv4Addr::new(127, 0, 5, 2)))),
    )
    .await;
    assert!(v2.starts_with("V2 127.0.5.2:"), "{v2}");
    // Without a header the backend sees no PROXY signature, and says so.
    let mut s = TcpStream::connect(front).await.expect("connect");
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").await.expect("write");
    let mut out = String::new();
    within("off", s.read_to_string(&mut out))
        .await
        .expect("read");
    assert!(out.starts_with("error"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_names_are_resolved_when_the_server_starts() {
    // Whatever `localhost` resolves to first is where the backend listens.
    let ip = tokio::net::lookup_host("localhost:0")
        .await
        .expect("localhost resolves")
        .next()
        .expect("an address")
        .ip();
    let l = tokio::net::TcpListener::bind((ip, 0)).await.expect("bind");
    let port = l.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let _ = s.write_all(b"by name").await;
        }
    });
    let toml = pool_toml(
        "round_robin",
        &[("n", "127.0.0.1:1".parse().expect("addr"), 1)],
    )
    .replace("127.0.0.1:1", &format!("localhost:{port}"));
    let server = start(&toml).await;
    let p = server.pool("p").expect("p");
    assert_eq!(p.backends[0].address, std::net::SocketAddr::new(ip, port));
    assert_eq!(
        within("fetch", fetch(addr(&server, "l"), None)).await,
        "by name"
    );

    let bad = toml.replace(&format!("localhost:{port}"), "nowhere.invalid:5432");
    let config = weir_config::load_str(&bad).expect("a name is valid config");
    let err = within("start", weir_core::Server::start(&config))
        .await
        .expect_err("an unknown name fails the start");
    assert!(
        err.to_string()
            .starts_with("pools[0].backends[0].address: cannot resolve \"nowhere.invalid:5432\""),
        "{err}"
    );
}

/// A listener's socket listens only once the server switches to it, after
/// its first probe round: before, a connect is refused at once rather than
/// left in a backlog no one accepts from (during an upgrade the kernel would
/// give the new process its share of new connections, which would wait out
/// the round).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_listens_only_once_it_serves() {
    let (silent, _) = silent_backend().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let toml = format!(
        "[[listeners]]\nname = \"l\"\nbind = \"127.0.0.1:{port}\"\n\
         [[listeners.routes]]\nname = \"r\"\npool = \"p\"\n\
         [[pools]]\nname = \"p\"\n[pools.health]\ntype = \"http\"\ntimeout = \"1500ms\"\n\
         [[pools.backends]]\nname = \"s\"\naddress = \"{silent}\"\n"
    );
    let starting = tokio::spawn(async move { start(&toml).await });
    // Within the first probe round (which waits out the silent backend).
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!starting.is_finished(), "the first round was to take 1.5 s");
    let early = TcpStream::connect(("127.0.0.1", port)).await;
    assert!(
        early
            .as_ref()
            .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused),
        "{early:?}"
    );
    let server = within("start", starting).await.expect("started");
    TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("listening once it serves");
    server.shutdown();
}

//! Health checking end to end: real probes against small HTTP servers whose
//! answers the tests flip, and real traffic following the decisions.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use weir_core::health::{AdminState, Cause, Change, Health};
use weir_core::{Reason, Server};

use crate::common::*;

/// An HTTP server that answers every request with the current status and body,
/// and counts the requests (probes) it got.
#[derive(Clone)]
struct HealthServer {
    addr: SocketAddr,
    status: Arc<AtomicU16>,
    body: Arc<Mutex<String>>,
    requests: Arc<AtomicUsize>,
    connections: Arc<AtomicUsize>,
    /// Answer several requests per connection (HTTP/1.1 keep-alive); when it is
    /// `Some(n)`, close each connection after `n` requests.
    keep_alive: Option<usize>,
}

impl HealthServer {
    async fn start(status: u16, body: &str) -> HealthServer {
        Self::start_with(status, body, None).await
    }

    /// The same, over TLS.
    async fn start_tls(status: u16, body: &str, tls: TlsAcceptor) -> HealthServer {
        Self::start_with(status, body, Some(tls)).await
    }

    /// The same, keeping connections open for `per_connection` requests each.
    async fn start_keep_alive(status: u16, per_connection: usize) -> HealthServer {
        Self::start_full(status, "", None, Some(per_connection)).await
    }

    async fn start_with(status: u16, body: &str, tls: Option<TlsAcceptor>) -> HealthServer {
        Self::start_full(status, body, tls, None).await
    }

    async fn start_full(
        status: u16,
        body: &str,
        tls: Option<TlsAcceptor>,
        keep_alive: Option<usize>,
    ) -> HealthServer {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let hs = HealthServer {
            addr: l.local_addr().expect("addr"),
            status: Arc::new(AtomicU16::new(status)),
            body: Arc::new(Mutex::new(body.to_owned())),
            requests: Arc::new(AtomicUsize::new(0)),
            connections: Arc::new(AtomicUsize::new(0)),
            keep_alive,
        };
        let me = hs.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                me.connections.fetch_add(1, Ordering::SeqCst);
                let me = me.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tls {
                        None => me.answer(s).await,
                        Some(acceptor) => {
                            if let Ok(s) = acceptor.accept(s).await {
                                me.answer(s).await;
                            }
                        }
                    }
                });
            }
        });
        hs
    }

    async fn answer<S: AsyncRead + AsyncWrite + Unpin>(&self, mut s: S) {
        let mut answered = 0;
        let mut req = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            req.clear();
            self.requests.fetch_add(1, Ordering::SeqCst);
            answered += 1;
            let body = self.body.lock().expect("lock").clone();
            let status = self.status.load(Ordering::SeqCst);
            let last = self.keep_alive.is_none_or(|n| answered >= n);
            let connection = if self.keep_alive.is_some() {
                "keep-alive"
            } else {
                "close"
            };
            let resp = format!(
                "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: {connection}\r\n\r\n{body}",
                body.len()
            );
            if s.write_all(resp.as_bytes()).await.is_err() || last {
                let _ = s.shutdown().await;
                return;
            }
        }
    }

    fn port(&self) -> u16 {
        self.addr.port()
    }

    fn set(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }
}

/// A listener `l` with one catch-all route to pool `p`, whose health section and
/// backends are given as TOML.
fn health_toml(pool_extra: &str, health: &str, backends: &str) -> String {
    format!(
        "[[listeners]]\nname = \"l\"\nbind = [\"127.0.0.1:0\"]\n[[listeners.routes]]\nname = \"r\"\npool = \"p\"\n\
         [[pools]]\nname = \"p\"\nconnect_timeout = \"500ms\"\n{pool_extra}\n[pools.health]\n{health}\n{backends}"
    )
}

fn backend_toml(name: &str, addr: SocketAddr, extra: &str) -> String {
    format!("[[pools.backends]]\nname = \"{name}\"\naddress = \"{addr}\"\n{extra}\n")
}

const FAST: &str = "type = \"http\"\npath = \"/primary\"\nexpect_status = \"200\"\n\
                    interval = \"200ms\"\nfast_interval = \"100ms\"\ntimeout = \"300ms\"\nrise = 1\nfall = 2";

/// Reads until EOF or error; true when the connection was closed.
async fn closed(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 16];
    matches!(s.read(&mut buf).await, Ok(0) | Err(_))
}

async fn echo_once(s: &mut TcpStream) {
    s.write_all(b"ping").await.expect("write");
    let mut buf = [0u8; 4];
    within("echo", s.read_exact(&mut buf)).await.expect("echo");
    assert_eq!(&buf, b"ping");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patroni_failover_is_followed_within_fall_and_rise_intervals() {
    let a = named_backend("a").await;
    let b = named_backend("b").await;
    let ha = HealthServer::start(200, "{\"role\":\"master\"}").await;
    let hb = HealthServer::start(503, "{\"role\":\"replica\"}").await;
    let backends = backend_toml("a", a, &format!("check_port = {}", ha.port()))
        + &backend_toml("b", b, &format!("check_port = {}", hb.port()));
    let server = start(&health_toml(
        "balance = \"first\"\nclose_on_down = true",
        FAST,
        &backends,
    ))
    .await;
    let front = addr(&server, "l");
    assert_eq!(within("fetch", fetch(front, None)).await, "a");

    // The leader moves from a to b.
    let flipped = tokio::time::Instant::now();
    ha.set(503);
    hb.set(200);
    within("traffic follows the leader", async {
        while fetch(front, None).await != "b" {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    // fall (2) x interval + rise (1) x interval = 600 ms at most, some
    // 300-400 ms here; the bound leaves a loaded machine its slack and is
    // still half of one default interval's fall (2 x 2 s).
    let took = flipped.elapsed();
    assert!(took < Duration::from_millis(2000), "took {took:?}");
    let p = server.pool("p").expect("pool");
    let va = p.view("a").expect("a");
    assert_eq!((va.health, va.serving), (Health::Down, false));
    let last = va.history.last().expect("a transition");
    assert_eq!(
        last.change,
        Change::Health {
            from: Health::Up,
            to: Health::Down
        }
    );
    assert_eq!(last.cause, Cause::Probe("http status 503".into()));
    assert_eq!(p.view("b").expect("b").health, Health::Up);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_expect_status_form_and_expect_body() {
    let traffic = named_backend("t").await;
    let cases: [(&str, u16, &str, Option<&str>, Health); 12] = [
        ("200", 200, "", None, Health::Up),
        ("200", 204, "", None, Health::Down),
        ("2xx", 204, "", None, Health::Up),
        ("2xx", 301, "", None, Health::Down),
        ("200-299", 299, "", None, Health::Up),
        ("200-299", 300, "", None, Health::Down),
        ("200,204", 204, "", None, Health::Up),
        ("200,204", 202, "", None, Health::Down),
        ("200, 3xx, 404-410", 405, "", None, Health::Up),
        ("200, 3xx, 404-410", 500, "", None, Health::Down),
        ("200", 200, "state: running", Some("running"), Health::Up),
        ("200", 200, "state: stopped", Some("running"), Health::Down),
    ];
    for (expect, status, body, expect_body, want) in cases {
        let hs = HealthServer::start(status, body).await;
        let mut health = format!(
            "type = \"http\"\nexpect_status = \"{expect}\"\ninterval = \"1h\"\ntimeout = \"1s\""
        );
        if let Some(b) = expect_body {
            health.push_str(&format!("\nexpect_body = \"{b}\""));
        }
        let backends = backend_toml("t", traffic, &format!("check_port = {}", hs.port()));
        let server = start(&health_toml("", &health, &backends)).await;
        let view = server.pool("p").expect("p").view("t").expect("t");
        assert_eq!(
            view.health, want,
            "expect_status {expect:?}, status {status}, body {body:?}"
        );
        let probe = view.last_probe.expect("probed during start");
        assert_eq!(probe.ok, want == Health::Up);
        if expect_body.is_some() && want == Health::Down {
            assert!(
                probe.reason.contains("body does not contain \"running\""),
                "{}",
                probe.reason
            );
        } else {
            assert!(
                probe.reason.contains(&format!("http status {status}")),
                "{}",
                probe.reason
            );
        }
        server.shutdown();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_checks_and_probe_reasons() {
    let live = named_backend("live").await;
    let dead = refused_addr();
    let backends = backend_toml("live", live, "") + &backend_toml("dead", dead, "");
    let server = start(&health_toml(
        "",
        "type = \"tcp\"\ninterval = \"1h\"\ntimeout = \"1s\"",
        &backends,
    ))
    .await;
    let p = server.pool("p").expect("p");
    assert_eq!(p.view("live").expect("live").health, Health::Up);
    let d = p.view("dead").expect("dead");
    assert_eq!(d.health, Health::Down);
    assert_eq!(d.last_probe.expect("probe").reason, "connect refused");
    for _ in 0..5 {
        assert_eq!(
            within("fetch", fetch(addr(&server, "l"), None)).await,
            "live"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_never_sends_a_connection_to_a_backend_known_down() {
    let good = named_backend("good").await;
    let bad = named_backend("bad").await;
    let hg = HealthServer::start(200, "").await;
    let hb = HealthServer::start(503, "").await;
    // `bad` is listed first: round robin would give it the first connection.
    let backends = backend_toml("bad", bad, &format!("check_port = {}", hb.port()))
        + &backend_toml("good", good, &format!("check_port = {}", hg.port()));
    let server = start(&health_toml(
        "",
        "type = \"http\"\ninterval = \"1h\"",
        &backends,
    ))
    .await;
    let front = addr(&server, "l");
    for _ in 0..10 {
        assert_eq!(within("fetch", fetch(front, None)).await, "good");
    }
    let l = server.listener("l").expect("l");
    assert_eq!(l.stats.rejected(Reason::NoBackend), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_serving_backend_closes_the_connection_at_once() {
    let a = named_backend("a").await;
    let h = HealthServer::start(503, "").await;
    let backends = backend_toml("a", a, &format!("check_port = {}", h.port()));
    let server = start(&health_toml(
        "",
        "type = \"http\"\ninterval = \"1h\"",
        &backends,
    ))
    .await;
    assert_eq!(
        within("rejected", fetch(addr(&server, "l"), None)).await,
        ""
    );
    let l = server.listener("l").expect("l");
    assert_eq!(l.stats.rejected(Reason::NoBackend), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_connects_take_a_backend_out_until_probes_bring_it_back() {
    let live = named_backend("live").await;
    // The probe port answers, the traffic port refuses: only passive health can tell.
    let h = HealthServer::start(200, "").await;
    let dead = refused_addr();
    // `live` is a static backend (never probed), `dead` is probed on its check port.
    let backends = backend_toml("dead", dead, &format!("check_port = {}", h.port()))
        + &backend_toml("live", live, "health = false");
    let health = "type = \"http\"\ninterval = \"1h\"\nrise = 1\nfall = 2";
    let server = start(&health_toml("balance = \"first\"", health, &backends)).await;
    let front = addr(&server, "l");
    for _ in 0..10 {
        assert_eq!(within("fetch", fetch(front, None)).await, "live");
    }
    let p = server.pool("p").expect("p");
    // Exactly `fall` failed connects, then it is out of rotation.
    assert_eq!(
        p.backend("dead")
            .expect("dead")
            .stats
            .connect_errors(Reason::Refused),
        2
    );
    let v = p.view("dead").expect("dead");
    assert_eq!(v.health, Health::Down);
    assert_eq!(
        v.history.last().map(|t| t.cause.clone()),
        Some(Cause::Passive("connect refused".into()))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tier_failover_and_failback_drain_the_standby() {
    let primary = named_backend("primary").await;
    let standby = echo_backend().await;
    let hp = HealthServer::start(200, "").await;
    let hs = HealthServer::start(200, "").await;
    let backends = backend_toml(
        "primary",
        primary,
        &format!("check_port = {}\ntier = 0", hp.port()),
    ) + &backend_toml(
        "standby",
        standby,
        &format!("check_port = {}\ntier = 1", hs.port()),
    );
    let server = start(&health_toml("drain_timeout = \"2s\"", FAST, &backends)).await;
    let front = addr(&server, "l");
    let p = server.pool("p").expect("p");
    assert_eq!(p.active_tier(), Some(0));
    assert_eq!(within("fetch", fetch(front, None)).await, "primary");

    hp.set(503);
    wait_until("failover to tier 1", || p.active_tier() == Some(1)).await;
    let mut held = TcpStream::connect(front).await.expect("connect");
    echo_once(&mut held).await;

    hp.set(200);
    wait_until("failback to tier 0", || p.active_tier() == Some(0)).await;
    assert_eq!(within("fetch", fetch(front, None)).await, "primary");
    // The standby's connection keeps working while it drains...
    echo_once(&mut held).await;
    // ...and is closed when drain_timeout runs out, timed from the
    // failback (when the pool recorded it, not when the wait saw it).
    assert!(within("drained", closed(&mut held)).await);
    let failback = p.tier_history().last().expect("the failback").at;
    let since = std::time::SystemTime::now()
        .duration_since(failback)
        .unwrap_or_default();
    assert!(since >= Duration::from_millis(1900), "{since:?}");
    let tiers: Vec<_> = p
        .tier_history()
        .into_iter()
        .map(|t| (t.from, t.to))
        .collect();
    assert_eq!(
        tiers,
        [(None, Some(0)), (Some(0), Some(1)), (Some(1), Some(0))]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_on_down_closes_established_connections() {
    for close_on_down in [true, false] {
        let echo = echo_backend().await;
        let h = HealthServer::start(200, "").await;
        let backends = backend_toml("e", echo, &format!("check_port = {}", h.port()));
        // A drain far longer than the test with close_on_down: what closes
        // the connection is the backend going down.
        let drain = if close_on_down { "1h" } else { "300ms" };
        let server = start(&health_toml(
            &format!("close_on_down = {close_on_down}\ndrain_timeout = \"{drain}\""),
            FAST,
            &backends,
        ))
        .await;
        let mut conn = TcpStream::connect(addr(&server, "l"))
            .await
            .expect("connect");
        echo_once(&mut conn).await;
        let p = server.pool("p").expect("p");
        if close_on_down {
            // Already draining when it goes down: closed at once all the same.
            assert!(p.set_admin("e", AdminState::Drain));
            echo_once(&mut conn).await;
        }
        h.set(503);
        wait_until("marked down", || {
            p.view("e").is_some_and(|v| v.health == Health::Down)
        })
        .await;
        if close_on_down {
            assert!(within("closed", closed(&mut conn)).await);
        } else {
            // Without close_on_down an established connection is left alone.
            echo_once(&mut conn).await;
            tokio::time::sleep(Duration::from_millis(600)).await;
            echo_once(&mut conn).await;
            // Disabled while down: its connections drain like any disabled
            // backend's, closed after drain_timeout.
            assert!(p.set_admin("e", AdminState::Disabled));
            assert!(within("closed", closed(&mut conn)).await);
        }
        server.shutdown();
    }
}

/// A pool of `a` (an echo backend, picked first) and `b`, without checks,
/// with `drain_timeout`; a connection to `a` open and echoed once.
async fn one_held_on_a(
    drain_timeout: &str,
) -> (
    Arc<Server>,
    SocketAddr,
    Arc<weir_core::pool::Pool>,
    TcpStream,
) {
    let a = echo_backend().await;
    let b = named_backend("b").await;
    let backends = backend_toml("a", a, "") + &backend_toml("b", b, "");
    let toml = health_toml(
        &format!("balance = \"first\"\ndrain_timeout = \"{drain_timeout}\""),
        "type = \"none\"",
        &backends,
    );
    let server = start(&toml).await;
    let front = addr(&server, "l");
    let p = server.pool("p").expect("p");
    let mut held = TcpStream::connect(front).await.expect("connect");
    echo_once(&mut held).await;
    (server, front, p, held)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_drain_stops_new_connections_and_closes_after_drain_timeout() {
    let (_server, front, p, mut held) = one_held_on_a("2s").await;

    assert!(p.set_admin("a", AdminState::Drain));
    assert_eq!(within("fetch", fetch(front, None)).await, "b");
    echo_once(&mut held).await;
    assert!(within("drained", closed(&mut held)).await);
    let v = p.view("a").expect("a");
    assert_eq!(
        (v.admin, v.serving, v.effective_weight),
        (AdminState::Drain, false, 0)
    );
    assert_eq!(
        v.history.last().map(|t| t.cause.clone()),
        Some(Cause::Operator)
    );

    assert!(p.set_admin("a", AdminState::Enabled));
    let mut again = TcpStream::connect(front).await.expect("connect");
    echo_once(&mut again).await;
    assert!(!p.set_admin("nope", AdminState::Drain));
}

/// A drain taken back before its `drain_timeout` ends leaves the backend's
/// connections open: the drain's close is for a backend still drained.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_taken_back_in_time_closes_nothing() {
    // The drain is long enough to be taken back in time on a loaded
    // machine too.
    let (_server, _front, p, mut held) = one_held_on_a("2s").await;
    assert!(p.set_admin("a", AdminState::Drain));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(p.set_admin("a", AdminState::Enabled));
    // Well past the drain's end: still open, still relayed.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    echo_once(&mut held).await;
}

/// A disabled backend takes no new connections, its open ones are closed
/// when `drain_timeout` runs out, and no probe reaches its health endpoint
/// while it is disabled. Enabled again, its health is unknown rather than
/// what the last probe before the disable said: it does not serve, and the
/// next probe decides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_backend_is_not_probed_and_comes_back_with_unknown_health() {
    let a = echo_backend().await;
    let b = named_backend("b").await;
    let ha = HealthServer::start(200, "").await;
    let hb = HealthServer::start(200, "").await;
    let backends = backend_toml("a", a, &format!("check_port = {}", ha.port()))
        + &backend_toml("b", b, &format!("check_port = {}", hb.port()));
    let server = start(&health_toml(
        "balance = \"first\"\ndrain_timeout = \"1s\"",
        FAST,
        &backends,
    ))
    .await;
    let front = addr(&server, "l");
    let p = server.pool("p").expect("p");
    assert_eq!(p.view("a").expect("a").health, Health::Up);
    let mut held = TcpStream::connect(front).await.expect("connect");
    echo_once(&mut held).await;

    let disabled = tokio::time::Instant::now();
    assert!(p.set_admin("a", AdminState::Disabled));
    let probed_then = ha.requests.load(Ordering::SeqCst);
    let clock_then = hb.requests.load(Ordering::SeqCst);
    let v = p.view("a").expect("a");
    assert_eq!(
        (v.admin, v.serving, v.effective_weight),
        (AdminState::Disabled, false, 0)
    );
    for _ in 0..3 {
        assert_eq!(within("fetch", fetch(front, None)).await, "b");
    }
    assert!(within("closed", closed(&mut held)).await);
    assert!(
        disabled.elapsed() >= Duration::from_secs(1),
        "closed before drain_timeout: {:?}",
        disabled.elapsed()
    );

    // `b`'s probes, which go on, measure the time: a probe already on its
    // way when `a` was disabled may still arrive, none after it.
    wait_until("five probes of b", || {
        hb.requests.load(Ordering::SeqCst) >= clock_then + 5
    })
    .await;
    let probed = ha.requests.load(Ordering::SeqCst);
    assert!(
        probed <= probed_then + 1,
        "{probed} probes of a, {probed_then} when it was disabled"
    );
    wait_until("five more probes of b", || {
        hb.requests.load(Ordering::SeqCst) >= clock_then + 10
    })
    .await;
    assert_eq!(
        ha.requests.load(Ordering::SeqCst),
        probed,
        "a disabled backend is not probed"
    );
    assert_eq!(p.view("a").expect("a").admin, AdminState::Disabled);

    // Its health endpoint now fails, which no probe has seen: the `up` from
    // before the disable must not count once it is enabled.
    ha.set(503);
    assert!(p.set_admin("a", AdminState::Enabled));
    let v = p.view("a").expect("a");
    assert!(
        matches!(v.health, Health::Unknown | Health::Down),
        "{:?}",
        v.health
    );
    assert!(!v.serving, "{v:?}");
    assert_eq!(within("fetch", fetch(front, None)).await, "b");
    wait_until("the next probe decides", || {
        p.view("a").is_some_and(|v| v.health == Health::Down)
    })
    .await;
    let v = p.view("a").expect("a");
    let last = v.history.last().expect("a transition");
    assert_eq!(
        last.change,
        Change::Health {
            from: Health::Unknown,
            to: Health::Down
        },
        "{:?}",
        v.history
    );
    assert!(matches!(last.cause, Cause::Probe(_)), "{:?}", last.cause);
    assert!(ha.requests.load(Ordering::SeqCst) > probed);

    // A passing probe brings it back.
    ha.set(200);
    wait_until("serving again", || p.view("a").is_some_and(|v| v.serving)).await;
    let mut again = TcpStream::connect(front).await.expect("connect");
    echo_once(&mut again).await;
}

/// A backend whose weight an operator sets to 0 takes no new connections,
/// its open ones are closed when `drain_timeout` runs out, as with a drain,
/// and its health checks go on; cleared, the configured weight serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weight_zero_stops_new_connections_and_closes_after_drain_timeout() {
    let a = echo_backend().await;
    let b = named_backend("b").await;
    let ha = HealthServer::start(200, "").await;
    let hb = HealthServer::start(200, "").await;
    let backends = backend_toml("a", a, &format!("check_port = {}", ha.port()))
        + &backend_toml("b", b, &format!("check_port = {}", hb.port()));
    let server = start(&health_toml(
        "balance = \"first\"\ndrain_timeout = \"1s\"",
        FAST,
        &backends,
    ))
    .await;
    let front = addr(&server, "l");
    let p = server.pool("p").expect("p");
    let mut held = TcpStream::connect(front).await.expect("connect");
    echo_once(&mut held).await;

    let zeroed = tokio::time::Instant::now();
    assert!(p.set_weight("a", Some(0)));
    let probed_then = ha.requests.load(Ordering::SeqCst);
    let v = p.view("a").expect("a");
    assert_eq!(
        (
            v.admin,
            v.health,
            v.weight_override,
            v.serving,
            v.effective_weight
        ),
        (AdminState::Enabled, Health::Up, Some(0), false, 0)
    );
    for _ in 0..3 {
        assert_eq!(within("fetch", fetch(front, None)).await, "b");
    }
    assert!(within("closed", closed(&mut held)).await);
    assert!(
        zeroed.elapsed() >= Duration::from_secs(1),
        "closed before drain_timeout: {:?}",
        zeroed.elapsed()
    );
    assert_eq!(
        v.history
            .last()
            .map(|t| (t.change.clone(), t.cause.clone())),
        Some((
            Change::Weight {
                from: None,
                to: Some(0)
            },
            Cause::Operator
        ))
    );
    wait_until("probes of a go on", || {
        ha.requests.load(Ordering::SeqCst) >= probed_then + 2
    })
    .await;
    assert_eq!(p.view("a").expect("a").health, Health::Up);

    assert!(p.set_weight("a", None));
    let v = p.view("a").expect("a");
    assert_eq!((v.serving, v.effective_weight), (true, 1));
    let mut again = TcpStream::connect(front).await.expect("connect");
    echo_once(&mut again).await;
}

/// Weight 0 drains a backend that passive health has on trial too (down
/// after a failed connect, tried again after `passive_timeout`): its open
/// connections are closed once `drain_timeout` runs out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weight_zero_drains_a_backend_on_trial() {
    // An echo backend whose listener the test can close, leaving the
    // connections it accepted running.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let a = listener.local_addr().expect("addr");
    let accepting = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let toml = pool_toml("first", &[("a", a, 1)]).replace(
        "connect_timeout = \"500ms\"\n",
        "connect_timeout = \"500ms\"\ndrain_timeout = \"1s\"\n\
         [pools.health]\ntype = \"none\"\nfall = 1\npassive_timeout = \"200ms\"\n",
    );
    let server = start(&toml).await;
    let front = addr(&server, "l");
    let p = server.pool("p").expect("p");
    let mut held = TcpStream::connect(front).await.expect("connect");
    echo_once(&mut held).await;

    // The listener goes: the next connect fails, and the backend is down,
    // then on trial.
    accepting.abort();
    let _ = accepting.await;
    assert_eq!(within("fetch", fetch(front, None)).await, "");
    wait_until("on trial", || {
        p.view("a")
            .is_some_and(|v| v.health == Health::Unknown && v.serving)
    })
    .await;
    echo_once(&mut held).await;

    let zeroed = tokio::time::Instant::now();
    assert!(p.set_weight("a", Some(0)));
    assert!(within("closed", closed(&mut held)).await);
    assert!(
        zeroed.elapsed() >= Duration::from_secs(1),
        "closed before drain_timeout: {:?}",
        zeroed.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_probe_per_distinct_backend_however_many_pools_list_it() {
    let t = named_backend("t").await;
    let h = HealthServer::start(200, "").await;
    let toml = format!(
        "[[listeners]]\nname = \"l\"\nbind = [\"127.0.0.1:0\"]\n[[listeners.routes]]\nname = \"r\"\npool = \"p1\"\n\
         [[pools]]\nname = \"p1\"\n[pools.health]\ntype = \"http\"\ninterval = \"1h\"\n\
         [[pools.backends]]\nname = \"t\"\naddress = \"{t}\"\ncheck_port = {port}\n\
         [[pools]]\nname = \"p2\"\n[pools.health]\ntype = \"http\"\ninterval = \"1h\"\n\
         [[pools.backends]]\nname = \"t\"\naddress = \"{t}\"\ncheck_port = {port}\n",
        port = h.port()
    );
    let server = start(&toml).await;
    assert_eq!(
        h.requests.load(Ordering::SeqCst),
        1,
        "one probe for both pools"
    );
    for p in ["p1", "p2"] {
        assert_eq!(
            server.pool(p).expect("pool").view("t").expect("t").health,
            Health::Up
        );
    }
}

/// A reload probes at once only what no probe has answered for: a backend
/// it adds, or one whose check changed. The others keep their schedule (a
/// fleet whose DNS answer changes every few seconds is not probed whole at
/// each change), and a backend it removes is probed no more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_probes_at_once_only_what_no_probe_answered() {
    let a = HealthServer::start(200, "").await;
    let b = HealthServer::start(200, "").await;
    let named = |a_name: &str, interval: &str, path: &str, with_b: bool| {
        let health =
            format!("type = \"http\"\npath = \"{path}\"\ninterval = \"{interval}\"\nrise = 1");
        let mut backends = backend_toml(a_name, a.addr, "");
        if with_b {
            backends += &backend_toml("b", b.addr, "");
        }
        let toml = health_toml("", &health, &backends);
        weir_config::load_str(&toml).unwrap_or_else(|e| panic!("config:\n{e}\n{toml}"))
    };
    let config = |interval: &str, path: &str, with_b: bool| named("a", interval, path, with_b);
    let server = within("start", Server::start(&config("1h", "/", false)))
        .await
        .expect("server starts");
    let probes = || {
        (
            a.requests.load(Ordering::SeqCst),
            b.requests.load(Ordering::SeqCst),
        )
    };
    assert_eq!(probes(), (1, 0));

    within("reload", server.apply(config("1h", "/", true)))
        .await
        .expect("adds b");
    assert_eq!(probes(), (1, 1), "b probed at once, a not again");
    let view = |name: &str| server.pool("p").and_then(|p| p.view(name)).expect(name);
    assert_eq!(
        view("b").health,
        Health::Up,
        "b serves once the reload returns"
    );
    within("reload", server.apply(config("1h", "/", true)))
        .await
        .expect("the same");
    assert_eq!(probes(), (1, 1), "nothing changed, nothing probed");

    // Another check: what the probes said no longer applies.
    within("reload", server.apply(config("1h", "/ready", true)))
        .await
        .expect("another path");
    assert_eq!(probes(), (2, 2));

    // A kept target probes for the pools that serve now: the backend at
    // a's address, renamed, is new to them and probed at once by a's task,
    // then on its interval; b, removed, is probed no more.
    within("reload", server.apply(config("100ms", "/ready", true)))
        .await
        .expect("another interval");
    let (a_now, b_now) = probes();
    assert!(a_now >= 3 && b_now >= 3, "{:?}", probes());
    within(
        "reload",
        server.apply(named("a2", "100ms", "/ready", false)),
    )
    .await
    .expect("renames a, removes b");
    let b_then = probes().1;
    // New to the pool: probed before the reload returned, by a's task.
    assert_eq!(view("a2").health, Health::Up);
    a.set(503);
    wait_until("a2 is down", || view("a2").health == Health::Down).await;
    let a_then = probes().0;
    wait_until("a probed twice more", || probes().0 >= a_then + 2).await;
    assert!(
        probes().1 <= b_then + 1,
        "b is probed no more: {:?}",
        probes()
    );
    server.shutdown();
}

/// A reload that keeps a probe target keeps its probe connection: HTTP
/// probes go on over the one connection the server keeps open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_the_probe_connection_of_a_kept_target() {
    let h = HealthServer::start_keep_alive(200, 1000).await;
    let toml = health_toml(
        "",
        "type = \"http\"\ninterval = \"100ms\"\nrise = 1",
        &backend_toml("a", h.addr, ""),
    );
    let config = weir_config::load_str(&toml).unwrap_or_else(|e| panic!("config:\n{e}\n{toml}"));
    let server = within("start", Server::start(&config))
        .await
        .expect("server starts");
    let requests = || h.requests.load(Ordering::SeqCst);
    wait_until("two probes", || requests() >= 2).await;
    within("reload", server.apply(config.clone()))
        .await
        .expect("the same");
    let before = requests();
    wait_until("two probes more", || requests() >= before + 2).await;
    assert_eq!(h.connections.load(Ordering::SeqCst), 1);
    server.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weight_override_changes_the_distribution() {
    let a = named_backend("a").await;
    let b = named_backend("b").await;
    let backends = backend_toml("a", a, "") + &backend_toml("b", b, "");
    let server = start(&health_toml("", "type = \"none\"", &backends)).await;
    let front = addr(&server, "l");
    let p = server.pool("p").expect("p");
    assert!(p.set_weight("a", Some(3)));
    let mut got = Vec::new();
    for _ in 0..8 {
        got.push(within("fetch", fetch(front, None)).await);
    }
    assert_eq!(got.iter().filter(|s| *s == "a").count(), 6, "{got:?}");
    assert!(p.set_weight("a", None));
    assert_eq!(p.view("a").expect("a").effective_weight, 1);
}

/// A test CA and a server certificate it signed for `localhost` and 127.0.0.1.
pub(crate) struct Pki {
    pub(crate) ca_file: std::path::PathBuf,
    pub(crate) acceptor: TlsAcceptor,
    pub(crate) ca_der: rustls::pki_types::CertificateDer<'static>,
    pub(crate) leaf: (Vec<rustls::pki_types::CertificateDer<'static>>, Vec<u8>),
    pub(crate) dir: std::path::PathBuf,
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Pki {
    /// A client certificate signed by this CA, written as PEM files (cert, key).
    pub(crate) fn client_cert(&self, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec![name.to_string()])
            .expect("params")
            .signed_by(&key, &self.issuer)
            .expect("client cert");
        let (c, k) = (
            self.dir.join(format!("{name}.crt")),
            self.dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, cert.pem()).expect("write cert");
        std::fs::write(&k, key.serialize_pem()).expect("write key");
        (c, k)
    }
}

pub(crate) fn pki(tag: &str) -> Pki {
    pki_with_alpn(tag, &[])
}

pub(crate) fn pki_with_alpn(tag: &str, alpn: &[&[u8]]) -> Pki {
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("weir test CA {tag}"));
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).expect("ca");
    let leaf_key = rcgen::KeyPair::generate().expect("key");
    let leaf_params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .expect("params");
    let leaf = leaf_params.signed_by(&leaf_key, &ca).expect("leaf");
    let dir = std::env::temp_dir().join(format!("weir-core-tls-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).expect("write ca");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
        )
        .expect("server config");
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Pki {
        ca_file,
        acceptor: TlsAcceptor::from(Arc::new(config)),
        ca_der: ca.der().clone(),
        leaf: (vec![leaf.der().clone()], leaf_key.serialize_der()),
        dir,
        issuer: ca,
    }
}

async fn probe_once(health: &str, check_port: u16) -> (Health, String) {
    let traffic = named_backend("t").await;
    let backends = backend_toml("t", traffic, &format!("check_port = {check_port}"));
    let server = start(&health_toml("", health, &backends)).await;
    let v = server.pool("p").expect("p").view("t").expect("t");
    server.shutdown();
    (v.health, v.last_probe.map(|p| p.reason).unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_checks_with_skip_verify_and_with_a_ca() {
    let good = pki("good");
    let other = pki("other");
    let hs = HealthServer::start_tls(200, "ok", good.acceptor.clone()).await;
    let base = "type = \"http\"\nhttps = true\ninterval = \"1h\"";
    let ca = |p: &Pki| format!("{base}\nca = \"{}\"", p.ca_file.display());

    let (h, why) = probe_once(&format!("{base}\ntls_skip_verify = true"), hs.port()).await;
    assert_eq!((h, why.as_str()), (Health::Up, "http status 200"));
    let (h, why) = probe_once(&ca(&good), hs.port()).await;
    assert_eq!((h, why.as_str()), (Health::Up, "http status 200"));
    // A CA that did not sign the server's certificate.
    let (h, why) = probe_once(&ca(&other), hs.port()).await;
    assert_eq!(h, Health::Down);
    assert!(
        why.starts_with("tls: ") && why.contains("UnknownIssuer"),
        "{why}"
    );
    // The right CA but a name the certificate is not for.
    let (h, why) = probe_once(
        &format!("{}\ntls_server_name = \"db.example\"", ca(&good)),
        hs.port(),
    )
    .await;
    assert_eq!(h, Health::Down);
    assert!(why.contains("not valid for name \"db.example\""), "{why}");
    // Plain HTTP against a TLS port fails clearly.
    let (h, _) = probe_once("type = \"http\"\ninterval = \"1h\"", hs.port()).await;
    assert_eq!(h, Health::Down);
}

async fn grpc_health_server() -> (SocketAddr, tonic_health::server::HealthReporter) {
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("app", tonic_health::ServingStatus::Serving)
        .await;
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let a = l.local_addr().expect("addr");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l)),
    );
    (a, reporter)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_checks_against_a_real_grpc_health_server() {
    let (g, reporter) = grpc_health_server().await;
    let base = "type = \"grpc\"\ninterval = \"1h\"";
    let (h, why) = probe_once(&format!("{base}\nservice = \"app\""), g.port()).await;
    assert_eq!((h, why.as_str()), (Health::Up, "grpc SERVING"));
    let (h, why) = probe_once(base, g.port()).await;
    assert_eq!(
        (h, why.as_str()),
        (Health::Up, "grpc SERVING"),
        "the server as a whole"
    );
    let (h, why) = probe_once(&format!("{base}\nservice = \"nope\""), g.port()).await;
    assert_eq!(h, Health::Down);
    assert!(why.starts_with("grpc-status 5 (NOT_FOUND)"), "{why}");

    // A service that stops serving is followed.
    let traffic = named_backend("t").await;
    let health = "type = \"grpc\"\nservice = \"app\"\ninterval = \"100ms\"\nfast_interval = \"50ms\"\nrise = 1\nfall = 1";
    let backends = backend_toml("t", traffic, &format!("check_port = {}", g.port()));
    let server = start(&health_toml("", health, &backends)).await;
    let p = server.pool("p").expect("p");
    assert_eq!(p.view("t").expect("t").health, Health::Up);
    reporter
        .set_service_status("app", tonic_health::ServingStatus::NotServing)
        .await;
    wait_until("not serving", || {
        p.view("t").is_some_and(|v| v.health == Health::Down)
    })
    .await;
    assert_eq!(
        p.view("t")
            .and_then(|v| v.history.last().map(|t| t.cause.clone())),
        Some(Cause::Probe("grpc NOT_SERVING".into()))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_probes_reuse_their_connection_and_survive_a_server_closing_it() {
    let traffic = named_backend("t").await;
    // Keeps each connection for 3 requests, then closes it.
    let h = HealthServer::start_keep_alive(200, 3).await;
    let health =
        "type = \"http\"\ninterval = \"50ms\"\nfast_interval = \"50ms\"\nrise = 1\nfall = 1";
    let backends = backend_toml("t", traffic, &format!("check_port = {}", h.port()));
    let server = start(&health_toml("", health, &backends)).await;
    let p = server.pool("p").expect("p");
    wait_until("nine probes", || h.requests.load(Ordering::SeqCst) >= 9).await;
    // Three requests per connection: the probe reused each connection until the
    // server closed it, and a closed kept connection was never a failure.
    let (requests, connections) = (
        h.requests.load(Ordering::SeqCst),
        h.connections.load(Ordering::SeqCst),
    );
    assert!(
        connections <= requests.div_ceil(3) + 1,
        "{requests} requests over {connections} connections"
    );
    let v = p.view("t").expect("t");
    assert_eq!(v.health, Health::Up);
    assert!(
        v.history.iter().all(|t| t.change
            != Change::Health {
                from: Health::Up,
                to: Health::Down
            }),
        "{:?}",
        v.history
    );
}

/// A server that answers a probe and keeps the connection, then says
/// "408 Request Timeout" unasked a moment later (as servers do at their idle
/// timeout) and holds the connection open: the next probe must not take that
/// stale answer for the backend's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_answer_on_a_kept_probe_connection_is_not_a_failure() {
    let traffic = named_backend("t").await;
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let check = l.local_addr().expect("addr");
    let requests = Arc::new(AtomicUsize::new(0));
    let counted = requests.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let counted = counted.clone();
            tokio::spawn(async move {
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                counted.fetch_add(1, Ordering::SeqCst);
                let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
                if s.write_all(ok).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                let stale = b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
                let _ = s.write_all(stale).await;
                // Held open, unread: only the bytes tell the connection is done.
                tokio::time::sleep(Duration::from_secs(5)).await;
            });
        }
    });
    let health =
        "type = \"http\"\ninterval = \"200ms\"\nfast_interval = \"200ms\"\nrise = 1\nfall = 1";
    let backends = backend_toml("t", traffic, &format!("check_port = {}", check.port()));
    let server = start(&health_toml("", health, &backends)).await;
    let p = server.pool("p").expect("p");
    wait_until("four probes", || requests.load(Ordering::SeqCst) >= 4).await;
    let v = p.view("t").expect("t");
    assert_eq!(v.health, Health::Up, "{:?}", v.history);
    assert!(
        v.history.iter().all(|t| !matches!(
            t.change,
            Change::Health {
                to: Health::Down,
                ..
            }
        )),
        "{:?}",
        v.history
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_checks_over_tls() {
    let (g, _reporter) = grpc_health_server().await;
    // A TLS terminator offering ALPN h2 in front of the real gRPC server.
    let good = pki_with_alpn("grpc", &[b"h2"]);
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let front = l.local_addr().expect("addr");
    let acceptor = good.acceptor.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(s).await else {
                    return;
                };
                let Ok(mut upstream) = TcpStream::connect(g).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut upstream).await;
            });
        }
    });
    let base = "type = \"grpc\"\nservice = \"app\"\nhttps = true\ninterval = \"1h\"";
    let (h, why) = probe_once(
        &format!("{base}\nca = \"{}\"", good.ca_file.display()),
        front.port(),
    )
    .await;
    assert_eq!((h, why.as_str()), (Health::Up, "grpc SERVING"));
    let (h, why) = probe_once(&format!("{base}\ntls_skip_verify = true"), front.port()).await;
    assert_eq!((h, why.as_str()), (Health::Up, "grpc SERVING"));
    let other = pki("grpc-other");
    let (h, why) = probe_once(
        &format!("{base}\nca = \"{}\"", other.ca_file.display()),
        front.port(),
    )
    .await;
    assert_eq!(h, Health::Down);
    assert!(why.starts_with("tls: "), "{why}");
}

/// The gRPC probe's `:authority` is `tls_server_name`, with the port, when
/// one is set: a server with virtual hosts answers for its name, not for
/// the address. Without one, the address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_check_over_tls_asks_for_the_server_name() {
    let pki = pki_with_alpn("grpc-authority", &[b"h2"]);
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let front = l.local_addr().expect("addr");
    let (tx, mut seen) = tokio::sync::mpsc::unbounded_channel::<String>();
    let acceptor = pki.acceptor.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(s).await else {
                    return;
                };
                let Ok(mut conn) = h2::server::handshake(tls).await else {
                    return;
                };
                while let Some(Ok((req, mut respond))) = conn.accept().await {
                    let authority = req.uri().authority().map(ToString::to_string);
                    let _ = tx.send(authority.unwrap_or_default());
                    let head = http::Response::builder()
                        .header("content-type", "application/grpc")
                        .body(())
                        .expect("head");
                    let Ok(mut send) = respond.send_response(head, false) else {
                        continue;
                    };
                    // One message: field 1 (status) = 1 (SERVING).
                    let message = bytes::Bytes::from_static(&[0, 0, 0, 0, 2, 0x08, 0x01]);
                    let _ = send.send_data(message, false);
                    let mut trailers = http::HeaderMap::new();
                    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                    let _ = send.send_trailers(trailers);
                }
            });
        }
    });
    let base = "type = \"grpc\"\nhttps = true\ntls_skip_verify = true\ninterval = \"1h\"";
    let (h, why) = probe_once(base, front.port()).await;
    assert_eq!((h, why.as_str()), (Health::Up, "grpc SERVING"));
    assert_eq!(seen.recv().await, Some(front.to_string()));
    let named = format!("{base}\ntls_server_name = \"grpc.example\"");
    let (h, why) = probe_once(&named, front.port()).await;
    assert_eq!((h, why.as_str()), (Health::Up, "grpc SERVING"));
    let want = format!("grpc.example:{}", front.port());
    assert_eq!(seen.recv().await, Some(want));
}

/// A backend that writes its name on `addr`, until `stop` is cancelled (its
/// port then refuses connections).
async fn stoppable_backend(
    name: &'static str,
    addr: SocketAddr,
) -> tokio_util::sync::CancellationToken {
    let stop = tokio_util::sync::CancellationToken::new();
    let l = tokio::net::TcpListener::bind(addr).await.expect("bind");
    let token = stop.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = token.cancelled() => return,
                a = l.accept() => {
                    let Ok((mut s, _)) = a else { return };
                    tokio::spawn(async move {
                        let _ = tokio::io::AsyncWriteExt::write_all(&mut s, name.as_bytes()).await;
                    });
                }
            }
        }
    });
    stop
}

/// Failed connects count against a probed backend in a row: one refusal
/// now and then among good connects never adds up to `fall` (they did: only
/// a passing probe started the count over, and with probes an hour apart
/// three refusals in an hour took the backend down).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_among_good_connects_do_not_take_a_probed_backend_down() {
    let a = named_backend("a").await;
    let b_addr = refused_addr();
    let mut b = stoppable_backend("b", b_addr).await;
    let toml = pool_toml("round_robin", &[("a", a, 10), ("b", b_addr, 10)]).replace(
        "connect_timeout = \"500ms\"\n",
        "connect_timeout = \"500ms\"\n\
         [pools.health]\ntype = \"tcp\"\ninterval = \"1h\"\ntimeout = \"1s\"\nrise = 1\nfall = 3\n",
    );
    let server = start(&toml).await;
    let front = addr(&server, "l");
    let health = || server.pool("p").and_then(|p| p.view("b")).map(|v| v.health);
    assert_eq!(health(), Some(weir_core::health::Health::Up));
    for round in 0..4 {
        // b refuses for a moment: a client or two meet it, and go to a.
        b.cancel();
        wait_until("b refuses", || {
            std::net::TcpStream::connect(b_addr).is_err()
        })
        .await;
        for _ in 0..2 {
            assert_eq!(within("fetch", fetch(front, None)).await, "a");
        }
        // Back: good connects to it in between.
        b = stoppable_backend("b", b_addr).await;
        let mut served_b = 0;
        for _ in 0..6 {
            if within("fetch", fetch(front, None)).await == "b" {
                served_b += 1;
            }
        }
        assert!(served_b > 0, "round {round}: b served no client");
        assert_eq!(
            health(),
            Some(weir_core::health::Health::Up),
            "round {round}"
        );
    }
}

/// With passive health only, a backend that comes back (tried again by
/// traffic after `passive_timeout`) ramps up over `slow_start` too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_back_on_passive_health_ramps_up_over_slow_start() {
    let a = named_backend("a").await;
    let b_addr = refused_addr();
    let toml = pool_toml("round_robin", &[("a", a, 10), ("b", b_addr, 10)]).replace(
        "connect_timeout = \"500ms\"\n",
        "connect_timeout = \"500ms\"\nslow_start = \"8s\"\n\
         [pools.health]\ntype = \"none\"\nfall = 1\npassive_timeout = \"2s\"\n",
    );
    // (passive_timeout: b must still be down, not on trial again, when the
    // wait below looks, on a loaded machine too.)
    let server = start(&toml).await;
    let front = addr(&server, "l");
    let view = || server.pool("p").and_then(|p| p.view("b"));
    // Refused connects to b (each client goes on to a) take it down.
    for _ in 0..4 {
        assert_eq!(within("fetch", fetch(front, None)).await, "a");
    }
    wait_until("b down", || {
        view().is_some_and(|v| v.health == weir_core::health::Health::Down)
    })
    .await;
    let _b = stoppable_backend("b", b_addr).await;
    wait_until("b on trial", || view().is_some_and(|v| v.serving)).await;
    let first = view().map(|v| v.effective_weight).expect("b");
    assert!(first <= 3, "right after coming back: weight {first}");
}

/// `slow_start`: a backend that comes back ramps its weight from a small
/// share to full over `slow_start`; at the start nothing ramps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_comes_back_ramps_up_over_slow_start() {
    let a = named_backend("a").await;
    let b_addr = refused_addr();
    let mut b = stoppable_backend("b", b_addr).await;
    let toml = pool_toml("round_robin", &[("a", a, 10), ("b", b_addr, 10)]).replace(
        "connect_timeout = \"500ms\"\n",
        "connect_timeout = \"500ms\"\nslow_start = \"8s\"\nmax_connections_per_backend = 100\n\
         [pools.health]\ntype = \"tcp\"\ninterval = \"50ms\"\ntimeout = \"1s\"\nrise = 1\nfall = 1\n",
    );
    let server = start(&toml).await;
    let front = addr(&server, "l");
    let pool = server.pool("p").expect("p");
    let weight = |p: &weir_core::pool::Pool| p.view("b").map(|v| v.effective_weight);
    // At start: full weight and limit at once.
    assert_eq!(weight(&pool), Some(10));
    assert_eq!(pool.backend("b").map(|b| b.connection_limit()), Some(100));

    b.cancel();
    wait_until("b down", || {
        server
            .pool("p")
            .and_then(|p| p.view("b"))
            .is_some_and(|v| v.health == weir_core::health::Health::Down)
    })
    .await;
    b = stoppable_backend("b", b_addr).await;
    wait_until("b up", || {
        server
            .pool("p")
            .and_then(|p| p.view("b"))
            .is_some_and(|v| v.serving)
    })
    .await;
    let back = std::time::Instant::now();
    let first = weight(&server.pool("p").expect("p")).expect("b");
    assert!(first <= 3, "right after coming back: weight {first}");
    // Its connection limit ramps with it, from the pool's rebuild that
    // follows the health change (the view shows the change a moment
    // before; the balancer sends it nothing until that rebuild either).
    let limit = |p: &weir_core::pool::Pool| p.backend("b").map(|b| b.connection_limit());
    wait_until("b's limit ramped", || {
        server
            .pool("p")
            .and_then(|p| limit(&p))
            .is_some_and(|l| l < 100)
    })
    .await;
    let first_limit = limit(&server.pool("p").expect("p")).expect("b");
    assert!(
        (1..=25).contains(&first_limit),
        "right after coming back: limit {first_limit}"
    );
    // Its share of new connections is small at first (in the first 3 s of
    // slow_start's 8, under 30%: its weight reaches 3.75 of 10 then)...
    let (mut to_b, mut fetched) = (0, 0);
    while fetched < 100 && back.elapsed() < Duration::from_secs(3) {
        fetched += 1;
        if within("fetch", fetch(front, None)).await == "b" {
            to_b += 1;
        }
    }
    assert!(
        fetched >= 20 && to_b * 10 < fetched * 3,
        "{to_b} of {fetched} in {:?}",
        back.elapsed()
    );
    // ...and full once slow_start has passed.
    tokio::time::sleep(Duration::from_millis(8800).saturating_sub(back.elapsed())).await;
    wait_until("b at full weight", || {
        server
            .pool("p")
            .and_then(|p| p.view("b"))
            .is_some_and(|v| v.effective_weight == 10)
    })
    .await;
    // The limit follows at the ramp's last step.
    wait_until("b at its full limit", || {
        limit(&server.pool("p").expect("p")) == Some(100)
    })
    .await;
    let mut to_b = 0;
    for _ in 0..100 {
        if within("fetch", fetch(front, None)).await == "b" {
            to_b += 1;
        }
    }
    assert!((40..=60).contains(&to_b), "{to_b} of 100 at full weight");
    // Re-enabled by an operator: it ramps again.
    server
        .set_admin("p", "b", AdminState::Disabled)
        .await
        .expect("disable");
    server
        .set_admin("p", "b", AdminState::Enabled)
        .await
        .expect("enable");
    wait_until("b serving again", || {
        server
            .pool("p")
            .and_then(|p| p.view("b"))
            .is_some_and(|v| v.serving)
    })
    .await;
    let again = weight(&server.pool("p").expect("p")).expect("b");
    assert!(
        again <= 3,
        "right after being enabled again: weight {again}"
    );
    b.cancel();
}

/// What a Patroni-like REST API says about its node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Primary,
    Replica,
    /// Postgres stopped, and Patroni still answers `/primary` with 200 for
    /// a moment (what made old primaries flap during a switchover).
    StoppedButAnswering,
}

/// Patroni's `/primary` and `/replica`: 200 when the node is that, else
/// 503, with a JSON body naming its state and role.
async fn patroni_like(role: Arc<std::sync::Mutex<Role>>) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let a = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let role = Arc::clone(&role);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 2048];
                let mut n = 0;
                while !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf[n..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(m) => n += m,
                    }
                    if n == buf.len() {
                        return;
                    }
                }
                let asked = String::from_utf8_lossy(&buf[..n]).into_owned();
                let now = *role.lock().expect("role");
                let (state, node) = match now {
                    Role::Primary => ("running", "master"),
                    Role::Replica => ("running", "replica"),
                    Role::StoppedButAnswering => ("stopped", "master"),
                };
                let wants_primary = asked.starts_with("GET /primary ");
                let ok = match now {
                    Role::Primary | Role::StoppedButAnswering => wants_primary,
                    Role::Replica => !wants_primary,
                };
                let body = format!("{{\"state\": \"{state}\", \"role\": \"{node}\"}}");
                let answer = format!(
                    "HTTP/1.1 {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    if ok {
                        "200 OK"
                    } else {
                        "503 Service Unavailable"
                    },
                    body.len()
                );
                let _ = s.write_all(answer.as_bytes()).await;
            });
        }
    });
    a
}

/// The Patroni checks: several expectations at once (status and a JSON
/// field), a replica marked `standby` instead of down in a pool of
/// primaries, and a pool of replicas with the primary as fallback written
/// with per-backend checks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patroni_primaries_replicas_and_standby() {
    let roles = [
        Arc::new(std::sync::Mutex::new(Role::Primary)),
        Arc::new(std::sync::Mutex::new(Role::Replica)),
    ];
    let a = named_backend("a").await;
    let b = named_backend("b").await;
    let api_a = patroni_like(Arc::clone(&roles[0])).await;
    let api_b = patroni_like(Arc::clone(&roles[1])).await;
    let check = "[pools.health]\ntype = \"http\"\ninterval = \"50ms\"\nfast_interval = \"50ms\"\n\
                 timeout = \"500ms\"\nrise = 1\nfall = 1\npath = \"/primary\"\n\
                 expect_status = \"200\"\nexpect_json = { state = \"running\" }\n\
                 standby = { status = \"503\", json = { state = \"running\" } }\n";
    let backend = |name: &str, addr: SocketAddr, api: SocketAddr, tier: u32, path: &str| {
        format!(
            "[[pools.backends]]\nname = \"{name}\"\naddress = \"{addr}\"\ncheck_port = {}\ntier = {tier}\n\
             check = {{ path = \"{path}\" }}\n",
            api.port()
        )
    };
    let toml = format!(
        "[[listeners]]\nname = \"rw\"\nbind = [\"127.0.0.1:0\"]\n\
         [[listeners.routes]]\nname = \"r\"\npool = \"primary\"\n\
         [[listeners]]\nname = \"ro\"\nbind = [\"127.0.0.1:0\"]\n\
         [[listeners.routes]]\nname = \"r\"\npool = \"replicas\"\n\
         [[pools]]\nname = \"primary\"\nconnect_timeout = \"500ms\"\n{check}{}{}\
         [[pools]]\nname = \"replicas\"\nconnect_timeout = \"500ms\"\n{check}{}{}{}{}",
        backend("a", a, api_a, 0, "/primary"),
        backend("b", b, api_b, 0, "/primary"),
        backend("a-replica", a, api_a, 0, "/replica"),
        backend("b-replica", b, api_b, 0, "/replica"),
        backend("a-primary", a, api_a, 1, "/primary"),
        backend("b-primary", b, api_b, 1, "/primary"),
    );
    let server = start(&toml).await;
    let (rw, ro) = (addr(&server, "rw"), addr(&server, "ro"));
    let health = |pool: &str, b: &str| server.pool(pool).and_then(|p| p.view(b)).map(|v| v.health);
    // The replica is standby in the pool of primaries, not down.
    assert_eq!(health("primary", "a"), Some(Health::Up));
    assert_eq!(health("primary", "b"), Some(Health::Standby));
    assert_eq!(within("rw", fetch(rw, None)).await, "a");
    // Replicas first: b's /replica passes, a's is standby.
    assert_eq!(health("replicas", "b-replica"), Some(Health::Up));
    assert_eq!(health("replicas", "a-replica"), Some(Health::Standby));
    assert_eq!(within("ro", fetch(ro, None)).await, "b");
    let mut w = weir_telemetry::Writer::new(weir_telemetry::Format::Prometheus);
    server.render_metrics(&mut w);
    let text = w.finish();
    for line in [
        "weir_backend_state{pool=\"primary\",backend=\"b\",state=\"standby\"} 1",
        "weir_backend_state{pool=\"primary\",backend=\"b\",state=\"down\"} 0",
        "weir_pool_backends{pool=\"primary\",state=\"standby\"} 1",
    ] {
        assert!(text.contains(line), "no {line:?} in\n{text}");
    }
    assert!(
        text.contains("weir_health_checks_total{pool=\"primary\",backend=\"b\",type=\"http\",result=\"standby\",reason=\"standby\"}"),
        "{text}"
    );

    // The primary's postgres stops while Patroni still answers 200: the
    // JSON field takes it down at once, it does not flap.
    *roles[0].lock().expect("role") = Role::StoppedButAnswering;
    wait_until("a down", || health("primary", "a") == Some(Health::Down)).await;
    let reason = server
        .pool("primary")
        .and_then(|p| p.view("a"))
        .and_then(|v| v.last_probe)
        .map(|p| p.reason)
        .unwrap_or_default();
    assert_eq!(
        reason,
        "http status 200, json state is \"stopped\", expected \"running\""
    );
    // b is promoted; a comes back as a replica: standby, not up.
    *roles[1].lock().expect("role") = Role::Primary;
    *roles[0].lock().expect("role") = Role::Replica;
    wait_until("b up", || health("primary", "b") == Some(Health::Up)).await;
    wait_until("a standby", || {
        health("primary", "a") == Some(Health::Standby)
    })
    .await;
    assert_eq!(within("rw", fetch(rw, None)).await, "b");
    // With b the primary, the replica pool reads from a (once b's own
    // replica check has seen the promotion too: the two probe on their own
    // timers).
    wait_until("a-replica up, b-replica standby", || {
        health("replicas", "a-replica") == Some(Health::Up)
            && health("replicas", "b-replica") == Some(Health::Standby)
    })
    .await;
    assert_eq!(within("ro", fetch(ro, None)).await, "a");
    // No replica left: the primary of the fallback tier serves reads.
    *roles[0].lock().expect("role") = Role::StoppedButAnswering;
    wait_until("no replica", || {
        health("replicas", "a-replica") != Some(Health::Up)
            && server.pool("replicas").and_then(|p| p.active_tier()) == Some(1)
    })
    .await;
    assert_eq!(within("ro", fetch(ro, None)).await, "b");
}

/// A connection still being set up when its backend's drain runs out is
/// closed with the others, not relayed to it for good: the eviction count
/// is taken when the backend is picked. The backend's accept queue is full,
/// so weir's connect waits for its SYN to be sent again (about 1 s) while
/// the backend is disabled and its 100 ms drain ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_set_up_during_an_eviction_is_closed_with_it() {
    let full =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    full.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .expect("bind");
    full.listen(0).expect("listen");
    let backend = full
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .expect("addr");
    let queued: Vec<_> = (0..4)
        .filter_map(|_| {
            std::net::TcpStream::connect_timeout(&backend, Duration::from_millis(100)).ok()
        })
        .collect();
    let server = start(&format!(
        "[[listeners]]\nname = \"l\"\nbind = [\"127.0.0.1:0\"]\n\
         [[listeners.routes]]\nname = \"r\"\npool = \"p\"\n\
         [[pools]]\nname = \"p\"\nconnect_timeout = \"5s\"\ndrain_timeout = \"100ms\"\n\
         [pools.health]\ntype = \"none\"\n{}",
        backend_toml("e", backend, "")
    ))
    .await;
    let mut conn = TcpStream::connect(addr(&server, "l"))
        .await
        .expect("connect");
    let p = server.pool("p").expect("p");
    wait_until("picked", || {
        p.view("e").is_some_and(|v| v.active_connections == 1)
    })
    .await;
    assert!(p.set_admin("e", AdminState::Disabled));
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The drain is over: the queue empties, and weir's connect gets in.
    drop(queued);
    let listener: std::net::TcpListener = full.into();
    listener.set_nonblocking(true).expect("nonblocking");
    let listener = TcpListener::from_std(listener).expect("listener");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    assert!(within("closed", closed(&mut conn)).await);
    server.shutdown();
}

/// A backend an operator enables again starts undecided and is probed at
/// once, not at its next turn: with an `interval` of an hour it served
/// again only an hour later. Drained from disabled, the same (its probes
/// go on while it drains).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_enabled_again_is_probed_at_once() {
    let a = echo_backend().await;
    let ha = HealthServer::start(200, "").await;
    let server = start(&health_toml(
        "",
        "type = \"http\"\npath = \"/\"\ninterval = \"1h\"\nfast_interval = \"1h\"\nrise = 3",
        &backend_toml("a", a, &format!("check_port = {}", ha.port())),
    ))
    .await;
    let p = server.pool("p").expect("p");
    assert_eq!(p.view("a").expect("a").health, Health::Up);
    for back in [AdminState::Drain, AdminState::Enabled] {
        let before = ha.requests.load(Ordering::SeqCst);
        within("disable", server.set_admin("p", "a", AdminState::Disabled))
            .await
            .expect("disabled");
        within("back", server.set_admin("p", "a", back))
            .await
            .expect("set");
        wait_until("a probe decides", || {
            p.view("a").is_some_and(|v| v.health == Health::Up)
        })
        .await;
        assert_eq!(ha.requests.load(Ordering::SeqCst), before + 1, "{back:?}");
    }
    assert!(p.view("a").expect("a").serving);
}

/// An HTTP health endpoint that keeps the first bytes of every connection
/// (up to the end of the request's head) and answers 200.
async fn recording_endpoint() -> (SocketAddr, Arc<Mutex<Vec<Vec<u8>>>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let a = l.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let kept = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let kept = Arc::clone(&kept);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut piece = [0u8; 1024];
                // A v2 header holds CRLF CRLF itself: the head ends after
                // the request line.
                let head_ended = |b: &[u8]| {
                    b.windows(4)
                        .position(|w| w == b"GET ")
                        .is_some_and(|at| b[at..].windows(4).any(|w| w == b"\r\n\r\n"))
                };
                while !head_ended(&buf) && buf.len() < 4096 {
                    match s.read(&mut piece).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&piece[..n]),
                    }
                }
                kept.lock().expect("lock").push(buf);
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .await;
            });
        }
    });
    (a, seen)
}

/// The probes of a pool whose routes send a PROXY header start with one
/// too, of the version of the first route in the file that sends one (here
/// after a route that sends none); a backend probed on a `check_port` gets
/// none there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_send_the_first_sending_routes_proxy_header_to_the_traffic_port_only() {
    for (first, second, expected) in [
        ("v1", "v2", &b"PROXY UNKNOWN\r\nGET "[..]),
        ("v2", "v1", &b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00GET "[..]),
    ] {
        let (traffic, at_traffic) = recording_endpoint().await;
        let (other, _) = recording_endpoint().await;
        let (check, at_check) = recording_endpoint().await;
        let toml = format!(
            "[[listeners]]\nname = \"a\"\nbind = [\"127.0.0.1:0\"]\n\
             [[listeners.routes]]\nname = \"plain\"\npool = \"p\"\n\
             [[listeners]]\nname = \"b\"\nbind = [\"127.0.0.1:0\"]\n\
             [[listeners.routes]]\nname = \"first\"\nmatch = {{ source = [\"127.0.0.9\"] }}\npool = \"p\"\nsend_proxy_protocol = \"{first}\"\n\
             [[listeners.routes]]\nname = \"second\"\npool = \"p\"\nsend_proxy_protocol = \"{second}\"\n\
             [[pools]]\nname = \"p\"\n[pools.health]\ntype = \"http\"\npath = \"/\"\n\
             [[pools.backends]]\nname = \"t\"\naddress = \"{traffic}\"\n\
             [[pools.backends]]\nname = \"c\"\naddress = \"{other}\"\ncheck_port = {}\n",
            check.port()
        );
        let server = start(&toml).await;
        let pool = server.pool("p").expect("p");
        assert_eq!(pool.view("t").map(|v| v.health), Some(Health::Up));
        assert_eq!(pool.view("c").map(|v| v.health), Some(Health::Up));
        let traffic_probe = at_traffic.lock().expect("lock")[0].clone();
        assert!(
            traffic_probe.starts_with(expected),
            "{first} then {second}: {:?}",
            String::from_utf8_lossy(&traffic_probe)
        );
        let check_probe = at_check.lock().expect("lock")[0].clone();
        assert!(
            check_probe.starts_with(b"GET / HTTP/1.1\r\n"),
            "{:?}",
            String::from_utf8_lossy(&check_probe)
        );
        server.shutdown();
    }
}

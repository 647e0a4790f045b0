//! UDP listeners with real peers: dnsmasq (Debian) as the DNS backend and
//! dig as the client, through a specific and a wildcard address (the answer
//! comes from the address asked), large EDNS answers, many clients at once
//! and a backend that stops; flows that end by `responses` and by
//! `idle_timeout`, `max_flows`, and PROXY v2 headers on datagrams read by a
//! receiver of the test's own.

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::cli::{DEADLINE, Running, free_port, test_dir, wait_line, which};
use crate::http::{metric, start};

/// A loopback port free for UDP (and TCP) on 127.0.0.1.
fn free_udp_port() -> u16 {
    loop {
        let port = free_port().port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok()
            && UdpSocket::bind(("0.0.0.0", port)).is_ok()
        {
            return port;
        }
    }
}

/// dnsmasq on 127.0.0.1:`port` answering from a hosts file: `a.test`,
/// `b.test`, and `many.test` with 240 addresses (a 3,878-byte answer, sent
/// over UDP up to EDNS 4096).
fn dnsmasq(dir: &Path, port: u16) -> Running {
    let mut hosts = String::from("10.0.0.1 a.test\n10.0.0.2 b.test\n");
    for i in 0..240 {
        hosts.push_str(&format!("10.1.{}.{} many.test\n", i / 200, i % 200 + 1));
    }
    let file = dir.join(format!("hosts-{port}"));
    std::fs::write(&file, hosts).expect("hosts");
    let running = crate::discovery::spawn_dnsmasq(
        dir,
        port,
        &[
            "--edns-packet-max=4096".to_owned(),
            format!("--addn-hosts={}", file.display()),
        ],
    );
    // Ready when it answers.
    let end = Instant::now() + DEADLINE;
    while dig(SocketAddr::from(([127, 0, 0, 1], port)), "a.test", &[]) != "10.0.0.1" {
        assert!(Instant::now() < end, "dnsmasq on {port} never answered");
        std::thread::sleep(Duration::from_millis(50));
    }
    running
}

/// `dig +short` for `name` at `server`: the answer, trimmed (empty when
/// none came).
fn dig(server: SocketAddr, name: &str, extra: &[&str]) -> String {
    let out = Command::new(which("dig").expect("dig (bind9-dnsutils)"))
        .arg(format!("@{}", server.ip()))
        .args([
            "-p",
            &server.port().to_string(),
            name,
            "+short",
            "+timeout=1",
            "+tries=1",
        ])
        .args(extra)
        .output()
        .expect("dig");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn config(admin: SocketAddr, binds: &str, listener: &str, route: &str, pool: &str) -> String {
    format!(
        "[admin]\nhttp = \"{admin}\"\n[log]\nformat = \"json\"\n\
         [[listeners]]\nname = \"dns\"\nbind = [{binds}]\nprotocol = \"udp\"\n{listener}\n\
         [[listeners.routes]]\nname = \"all\"\npool = \"dns\"\n{route}\n\
         [[pools]]\nname = \"dns\"\n{pool}\n"
    )
}

#[test]
fn dns_through_weir_to_dnsmasq() {
    let dir = test_dir("udp-dns");
    let backend_port = free_udp_port();
    let _dnsmasq = dnsmasq(&dir, backend_port);
    let (admin, port, any) = (free_port(), free_udp_port(), free_udp_port());
    let (_weir, out) = start(
        "udp-dns",
        &config(
            admin,
            &format!("\"127.0.0.1:{port}\", \"0.0.0.0:{any}\""),
            "responses = 1",
            "",
            &format!(
                "[[pools.backends]]\nname = \"dnsmasq\"\naddress = \"127.0.0.1:{backend_port}\""
            ),
        ),
    );
    let specific = SocketAddr::from(([127, 0, 0, 1], port));
    assert_eq!(dig(specific, "a.test", &[]), "10.0.0.1");
    // Through the wildcard socket: dig takes the answer only from the
    // address it asked, 127.0.0.2.
    let wildcard = SocketAddr::from(([127, 0, 0, 2], any));
    assert_eq!(dig(wildcard, "b.test", &[]), "10.0.0.2");
    // A 3,878-byte answer, whole.
    let many = dig(specific, "many.test", &["+bufsize=4096", "+ignore"]);
    assert_eq!(many.lines().count(), 240, "{many}");
    let line = wait_line(&out, "\"bytes_to_client\":3878");
    assert!(line.contains("\"reason\":\"responses\""), "{line}");
    assert!(line.contains("\"backend\":\"dnsmasq\""), "{line}");

    // Twenty clients at once, each its own flow.
    let clients: Vec<_> = (0..20)
        .map(|i| {
            let name = if i % 2 == 0 { "a.test" } else { "b.test" };
            let child = Command::new(which("dig").expect("dig"))
                .args([
                    "@127.0.0.1",
                    "-p",
                    &port.to_string(),
                    name,
                    "+short",
                    "+timeout=2",
                ])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("dig");
            (name, child)
        })
        .collect();
    for (name, child) in clients {
        let out = child.wait_with_output().expect("dig");
        let want = if name == "a.test" {
            "10.0.0.1"
        } else {
            "10.0.0.2"
        };
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), want);
    }
    assert!(metric(admin, "weir_udp_flows_total{listener=\"dns\"}") >= 23.0);
    let to_client = "weir_udp_datagrams_total{listener=\"dns\",direction=\"to_client\"}";
    assert!(metric(admin, to_client) >= 23.0);
    // Every flow ended with its answer.
    let end = Instant::now() + DEADLINE;
    while metric(admin, "weir_udp_flows_active{listener=\"dns\"}") != 0.0 {
        assert!(Instant::now() < end, "flows end with their answer");
        std::thread::sleep(Duration::from_millis(20));
    }
    crate::http::assert_documented(admin);
}

/// On a wildcard address, a client that writes to two addresses of the host
/// from one socket gets each answer from the address it wrote to (each is
/// a flow of its own), as a connected client socket needs.
#[test]
fn answers_come_from_the_address_each_datagram_went_to() {
    let (backend, _) = echo_on("127.0.0.1:0");
    let (admin, any) = (free_port(), free_udp_port());
    let (_weir, _out) = start(
        "udp-two-addresses",
        &config(
            admin,
            &format!("\"0.0.0.0:{any}\""),
            "",
            "",
            &format!("[[pools.backends]]\naddress = \"{backend}\""),
        ),
    );
    let client = UdpSocket::bind("127.0.0.1:0").expect("client");
    client.set_read_timeout(Some(DEADLINE)).expect("timeout");
    let mut buf = [0u8; 64];
    for (to, payload) in [
        ([127, 0, 0, 2], b"a"),
        ([127, 0, 0, 3], b"b"),
        ([127, 0, 0, 2], b"c"),
    ] {
        let to = SocketAddr::from((to, any));
        client.send_to(payload, to).expect("send");
        let (n, from) = client.recv_from(&mut buf).expect("an answer");
        assert_eq!((&buf[..n], from), (&payload[..], to));
    }
    assert_eq!(metric(admin, "weir_udp_flows_total{listener=\"dns\"}"), 2.0);
}

/// Two DNS backends; one stops. Its port answers with ICMP unreachable, the
/// flow ends (`refused`), passive health takes the backend out after three,
/// and every query is answered within its retries.
#[test]
fn a_stopped_dns_backend_is_left() {
    let dir = test_dir("udp-failover");
    let (p1, p2) = (free_udp_port(), free_udp_port());
    let first = dnsmasq(&dir, p1);
    let _second = dnsmasq(&dir, p2);
    let (admin, port) = (free_port(), free_udp_port());
    let (_weir, _out) = start(
        "udp-failover",
        &config(
            admin,
            &format!("\"127.0.0.1:{port}\""),
            "responses = 1",
            "",
            &format!(
                "[[pools.backends]]\nname = \"one\"\naddress = \"127.0.0.1:{p1}\"\n\
                 [[pools.backends]]\nname = \"two\"\naddress = \"127.0.0.1:{p2}\""
            ),
        ),
    );
    let front = SocketAddr::from(([127, 0, 0, 1], port));
    for _ in 0..4 {
        assert_eq!(dig(front, "a.test", &[]), "10.0.0.1");
    }
    drop(first);
    for _ in 0..10 {
        // dig says on stdout too when a try went unanswered.
        let answer = dig(front, "a.test", &["+tries=4"]);
        assert_eq!(answer.lines().last(), Some("10.0.0.1"), "{answer}");
    }
    assert_eq!(
        metric(
            admin,
            "weir_backend_state{pool=\"dns\",backend=\"one\",state=\"down\"}"
        ),
        1.0
    );
}

/// A UDP echo server on a thread; with `proxy`, each datagram must start
/// with a PROXY v2 header (DGRAM), whose source is sent back before the
/// payload.
fn echo(proxy: bool) -> (SocketAddr, mpsc::Receiver<SocketAddr>) {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let addr = s.local_addr().expect("addr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 70_000];
        while let Ok((n, from)) = s.recv_from(&mut buf) {
            let data = &buf[..n];
            let reply: Vec<u8> = if proxy {
                let Ok(weir_wire::proxy::ProxyParse::Complete {
                    header,
                    consumed_len: used,
                }) = weir_wire::proxy::parse(data)
                else {
                    continue;
                };
                if header.transport != weir_wire::proxy::Transport::Datagram {
                    continue;
                }
                let Some((src, _)) = header.addresses else {
                    continue;
                };
                let _ = tx.send(src);
                let mut r = format!("{src} ").into_bytes();
                r.extend_from_slice(&data[used..]);
                r
            } else {
                data.to_vec()
            };
            let _ = s.send_to(&reply, from);
        }
    });
    (addr, rx)
}

/// weir with one UDP listener on 127.0.0.1 (`listener`: its extra keys) in
/// front of `backend`: (weir, its output, admin, the listener's port).
fn udp_weir(
    tag: &str,
    listener: &str,
    backend: &str,
) -> (Running, mpsc::Receiver<String>, SocketAddr, u16) {
    let (admin, port) = (free_port(), free_udp_port());
    let (weir, out) = start(
        tag,
        &config(
            admin,
            &format!("\"127.0.0.1:{port}\""),
            listener,
            "",
            &format!("[[pools.backends]]\naddress = \"{backend}\""),
        ),
    );
    (weir, out, admin, port)
}

/// Runs `script` with python3 (the tests' GSO and raw-socket peers): what it
/// printed, trimmed; a script that fails fails the test with its stderr.
fn python(script: &str) -> String {
    let out = Command::new("python3")
        .args(["-c", script])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// An echo server on `bind`, which also tells whom each datagram came from.
fn echo_on(bind: &str) -> (SocketAddr, mpsc::Receiver<SocketAddr>) {
    let s = UdpSocket::bind(bind).expect("bind");
    let addr = s.local_addr().expect("addr");
    let (tx, peers) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 70_000];
        while let Ok((n, from)) = s.recv_from(&mut buf) {
            let _ = tx.send(from);
            let _ = s.send_to(&buf[..n], from);
        }
    });
    (addr, peers)
}

/// Sends `payload` from `client` to `to`: the answer, waited for up to
/// `DEADLINE`.
fn ask(client: &UdpSocket, to: SocketAddr, payload: &[u8]) -> Option<Vec<u8>> {
    ask_within(client, to, payload, DEADLINE)
}

/// [`ask`] for a datagram that must go unanswered: half a second for the
/// answer that should not come, rather than `DEADLINE` each time.
fn ask_unanswered(client: &UdpSocket, to: SocketAddr, payload: &[u8]) -> Option<Vec<u8>> {
    ask_within(client, to, payload, Duration::from_millis(500))
}

fn ask_within(
    client: &UdpSocket,
    to: SocketAddr,
    payload: &[u8],
    wait: Duration,
) -> Option<Vec<u8>> {
    client.send_to(payload, to).expect("send");
    client.set_read_timeout(Some(wait)).expect("timeout");
    let mut buf = vec![0u8; 70_000];
    client.recv(&mut buf).ok().map(|n| buf[..n].to_vec())
}

#[test]
fn flows_end_when_idle_and_max_flows_refuses_more() {
    let (backend, _) = echo(false);
    let (admin, port) = (free_port(), free_udp_port());
    let (_weir, out) = start(
        "udp-flows",
        &config(
            admin,
            &format!("\"127.0.0.1:{port}\""),
            "idle_timeout = \"5s\"\nmax_flows = 2",
            "",
            &format!("[[pools.backends]]\naddress = \"{backend}\""),
        ),
    );
    let front = SocketAddr::from(([127, 0, 0, 1], port));
    let a = UdpSocket::bind("127.0.0.1:0").expect("a");
    let b = UdpSocket::bind("127.0.0.1:0").expect("b");
    let c = UdpSocket::bind("127.0.0.1:0").expect("c");
    // A datagram of the largest size, and several on one flow.
    let big = vec![7u8; 65_507];
    assert_eq!(ask(&a, front, &big).map(|r| r.len()), Some(65_507));
    assert_eq!(ask(&a, front, b"again").as_deref(), Some(&b"again"[..]));
    assert_eq!(ask(&b, front, b"b").as_deref(), Some(&b"b"[..]));
    assert_eq!(
        metric(admin, "weir_udp_flows_active{listener=\"dns\"}"),
        2.0
    );
    assert_eq!(
        ask_unanswered(&c, front, b"c"),
        None,
        "a third flow is over max_flows"
    );
    assert_eq!(
        metric(
            admin,
            "weir_udp_dropped_total{listener=\"dns\",reason=\"max_flows\"}"
        ),
        1.0
    );
    // Silent for idle_timeout: both end, and c gets a flow.
    let line = wait_line(&out, "\"bytes_to_backend\":65512");
    assert!(line.contains("\"reason\":\"idle_timeout\""), "{line}");
    let end = Instant::now() + DEADLINE;
    while metric(admin, "weir_udp_flows_active{listener=\"dns\"}") != 0.0 {
        assert!(Instant::now() < end, "idle flows end");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The two flows' traffic: 65,507 + 5 bytes from a, 1 from b, each
    // echoed; three datagrams each way, all to the one backend.
    assert_eq!(metric(admin, "weir_udp_max_flows{listener=\"dns\"}"), 2.0);
    for direction in ["to_backend", "to_client"] {
        assert_eq!(
            metric(
                admin,
                &format!("weir_udp_bytes_total{{listener=\"dns\",direction=\"{direction}\"}}")
            ),
            65_513.0,
            "{direction}"
        );
        assert_eq!(
            metric(
                admin,
                &format!(
                    "weir_backend_udp_datagrams_total{{pool=\"dns\",backend=\"{backend}\",direction=\"{direction}\"}}"
                )
            ),
            3.0,
            "{direction}"
        );
    }
    // Both ended, each after at least its idle_timeout of 5 s.
    assert_eq!(
        metric(
            admin,
            "weir_udp_flow_duration_seconds_count{listener=\"dns\"}"
        ),
        2.0
    );
    let lived = metric(
        admin,
        "weir_udp_flow_duration_seconds_sum{listener=\"dns\"}",
    );
    assert!(
        (9.9..DEADLINE.as_secs_f64() * 2.0).contains(&lived),
        "{lived}"
    );
    assert_eq!(ask(&c, front, b"c").as_deref(), Some(&b"c"[..]));
    assert_eq!(metric(admin, "weir_udp_flows_total{listener=\"dns\"}"), 3.0);
}

/// On SIGTERM a flow ends after a second of quiet (shorter here than its
/// `idle_timeout`), or when `shutdown_timeout` runs out if that comes first.
#[test]
fn flows_end_after_a_quiet_moment_or_at_the_shutdown_timeout() {
    // Either way the end is the shutdown's: after a second of silence, or
    // at `shutdown_timeout`; not the listener's hour of `idle_timeout`.
    for grace in ["10s", "300ms"] {
        let (backend, _) = echo(false);
        let (admin, port) = (free_port(), free_udp_port());
        let (weir, out) = start(
            "udp-stop",
            &config(
                admin,
                &format!("\"127.0.0.1:{port}\""),
                &format!("idle_timeout = \"1h\"\nshutdown_timeout = \"{grace}\""),
                "",
                &format!("[[pools.backends]]\naddress = \"{backend}\""),
            ),
        );
        let front = SocketAddr::from(([127, 0, 0, 1], port));
        let client = UdpSocket::bind("127.0.0.1:0").expect("client");
        assert_eq!(ask(&client, front, b"x").as_deref(), Some(&b"x"[..]));
        let stopped = Instant::now();
        crate::cli::signal(&weir.0, rustix::process::Signal::TERM);
        let line = wait_line(&out, "\"bytes_to_backend\":1,");
        assert!(line.contains("\"reason\":\"shutdown\""), "{line}");
        assert!(
            stopped.elapsed() < Duration::from_secs(5),
            "ended {:?} after SIGTERM",
            stopped.elapsed()
        );
    }
}

#[test]
fn proxy_v2_headers_go_before_every_datagram() {
    let (backend, sources) = echo(true);
    let (admin, port) = (free_port(), free_udp_port());
    let (_weir, _out) = start(
        "udp-proxy",
        &config(
            admin,
            &format!("\"127.0.0.1:{port}\""),
            "",
            "send_proxy_protocol = \"v2\"",
            &format!("[[pools.backends]]\naddress = \"{backend}\""),
        ),
    );
    let front = SocketAddr::from(([127, 0, 0, 1], port));
    let client = UdpSocket::bind("127.0.0.1:0").expect("client");
    let me = client.local_addr().expect("addr");
    for payload in [&b"one"[..], b"two"] {
        let reply = ask(&client, front, payload).expect("an answer");
        let mut want = format!("{me} ").into_bytes();
        want.extend_from_slice(payload);
        assert_eq!(reply, want);
    }
    assert_eq!(sources.try_iter().collect::<Vec<_>>(), vec![me, me]);
    // With its header, the largest datagram would not fit.
    assert_eq!(ask_unanswered(&client, front, &vec![1u8; 65_507]), None);
    assert_eq!(
        metric(
            admin,
            "weir_udp_dropped_total{listener=\"dns\",reason=\"too_large\"}"
        ),
        1.0
    );
}

/// The firewall judges each new flow's source; a refused one is counted
/// with its rule, and nothing reaches the backend.
#[test]
fn the_firewall_refuses_a_flow_by_its_source() {
    let (backend, _) = echo(false);
    let (admin, port) = (free_port(), free_udp_port());
    let (_weir, _out) = start(
        "udp-firewall",
        &config(
            admin,
            &format!("\"127.0.0.1:{port}\""),
            "firewall = { deny = [\"127.0.0.2\"] }",
            "",
            &format!("[[pools.backends]]\naddress = \"{backend}\""),
        ),
    );
    let front = SocketAddr::from(([127, 0, 0, 1], port));
    let denied = UdpSocket::bind("127.0.0.2:0").expect("bind 127.0.0.2");
    assert_eq!(ask_unanswered(&denied, front, b"x"), None);
    let allowed = UdpSocket::bind("127.0.0.1:0").expect("bind");
    assert_eq!(ask(&allowed, front, b"y").as_deref(), Some(&b"y"[..]));
    assert_eq!(
        metric(
            admin,
            "weir_udp_dropped_total{listener=\"dns\",reason=\"firewall\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            admin,
            "weir_firewall_blocked_total{listener=\"dns\",reason=\"deny_list\"}"
        ),
        1.0
    );
    assert_eq!(metric(admin, "weir_udp_flows_total{listener=\"dns\"}"), 1.0);
    // Three datagrams of a denied source sent in one GSO call (handed to
    // weir as one GRO buffer) are three refused datagrams.
    let script = format!(
        "import socket\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         s.bind(('127.0.0.2', 0))\n\
         s.setsockopt(17, 103, 100)\n\
         s.sendto(b'z' * 300, ('127.0.0.1', {port}))\n"
    );
    python(&script);
    let series = "weir_udp_dropped_total{listener=\"dns\",reason=\"firewall\"}";
    let end = Instant::now() + DEADLINE;
    while metric(admin, series) < 4.0 {
        assert!(Instant::now() < end, "the batch was not counted");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(metric(admin, series), 4.0);
    assert_eq!(
        metric(
            admin,
            "weir_firewall_blocked_total{listener=\"dns\",reason=\"deny_list\"}"
        ),
        4.0
    );
}

/// weir with one UDP listener (`idle_timeout` 1h) in front of an echo
/// backend named `echo`, its admin on HTTP and gRPC: (weir, its output,
/// admin, gRPC, the listener's address).
fn echo_listener(
    tag: &str,
) -> (
    Running,
    mpsc::Receiver<String>,
    SocketAddr,
    SocketAddr,
    SocketAddr,
) {
    let (backend, _) = echo(false);
    let (admin, grpc, port) = (free_port(), free_port(), free_udp_port());
    let cfg = config(
        admin,
        &format!("\"127.0.0.1:{port}\""),
        "idle_timeout = \"1h\"",
        "",
        &format!("[[pools.backends]]\nname = \"echo\"\naddress = \"{backend}\""),
    )
    .replace("[admin]\n", &format!("[admin]\ngrpc = \"{grpc}\"\n"));
    let (weir, out) = start(tag, &cfg);
    (
        weir,
        out,
        admin,
        grpc,
        SocketAddr::from(([127, 0, 0, 1], port)),
    )
}

/// A runtime `deny` ends its source's open flows at the source's next
/// datagram, which is dropped (reason `firewall` in the log, `banned` in
/// the firewall's counter); another source's flow goes on.
#[test]
fn a_runtime_deny_ends_the_sources_open_flows() {
    let (_weir, out, admin, grpc, front) = echo_listener("udp-ban");
    let banned = UdpSocket::bind("127.0.0.3:0").expect("bind 127.0.0.3");
    let other = UdpSocket::bind("127.0.0.1:0").expect("bind");
    assert_eq!(ask(&banned, front, b"a").as_deref(), Some(&b"a"[..]));
    assert_eq!(ask(&other, front, b"b").as_deref(), Some(&b"b"[..]));
    let active = || metric(admin, "weir_udp_flows_active{listener=\"dns\"}");
    assert_eq!(active(), 2.0);
    let (code, _, err) = crate::control::text(&crate::control::ctl(
        grpc,
        None,
        &["firewall", "deny", "127.0.0.3", "--reason", "abuse"],
    ));
    assert_eq!(code, 0, "{err}");
    assert_eq!(ask_unanswered(&banned, front, b"c"), None);
    let line = wait_line(&out, "\"reason\":\"firewall\"");
    assert!(line.contains("127.0.0.3"), "{line}");
    assert_eq!(ask(&other, front, b"d").as_deref(), Some(&b"d"[..]));
    let end = Instant::now() + DEADLINE;
    while active() != 1.0 {
        assert!(Instant::now() < end, "the banned flow stays active");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Its datagrams from now on are refused as a new flow would be.
    assert_eq!(ask_unanswered(&banned, front, b"e"), None);
    // A UDP listener takes no connections: a connection limit is refused
    // (it was accepted, shown, and changed nothing).
    let (code, _, err) = crate::control::text(&crate::control::ctl(
        grpc,
        None,
        &["listener", "max-connections", "dns", "1"],
    ));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("max_flows"), "{err}");
    assert_eq!(
        metric(
            admin,
            "weir_firewall_blocked_total{listener=\"dns\",reason=\"banned\"}"
        ),
        2.0
    );
    assert_eq!(
        metric(
            admin,
            "weir_udp_dropped_total{listener=\"dns\",reason=\"firewall\"}"
        ),
        2.0
    );
}

/// UDP flows are live connections: `weir connections` lists each with its
/// backend and bytes, and `weir connections close` ends the one matched
/// (reason `operator`); its client's next datagram starts a new flow.
#[test]
fn udp_flows_are_listed_and_closed_as_connections() {
    use crate::control::{ctl, json, text};
    let (_weir, out, admin, grpc, front) = echo_listener("udp-connections");
    let closed = UdpSocket::bind("127.0.0.4:0").expect("bind 127.0.0.4");
    let other = UdpSocket::bind("127.0.0.1:0").expect("bind");
    assert_eq!(ask(&closed, front, b"abc").as_deref(), Some(&b"abc"[..]));
    assert_eq!(ask(&other, front, b"d").as_deref(), Some(&b"d"[..]));
    let list = |args: &[&str]| {
        let mut all = vec!["connections", "-o", "json"];
        all.extend_from_slice(args);
        json(&ctl(grpc, None, &all))
    };
    let v = list(&["--client", "127.0.0.4"]);
    let conns = v["connections"].as_array().cloned().unwrap_or_default();
    assert_eq!(conns.len(), 1, "{v}");
    let c = &conns[0];
    let client = closed.local_addr().expect("addr").to_string();
    assert_eq!(
        (&c["listener"], &c["route"], &c["pool"], &c["backend"]),
        (&"dns".into(), &"all".into(), &"dns".into(), &"echo".into()),
        "{v}"
    );
    assert_eq!(
        (&c["client"], &c["state"]),
        (&client.as_str().into(), &"udp".into()),
        "{v}"
    );
    assert_eq!(
        (&c["sent_bytes"], &c["received_bytes"]),
        (&3.into(), &3.into()),
        "{v}"
    );
    let first = c["id"].clone();
    assert_eq!(
        list(&["--backend", "echo"])["connections"]
            .as_array()
            .map(Vec::len),
        Some(2)
    );
    // Closed: the flow ends at once, logged with the operator's reason.
    let (code, said, err) = text(&ctl(
        grpc,
        None,
        &["connections", "close", "--client", "127.0.0.4"],
    ));
    assert_eq!(code, 0, "{err}");
    assert_eq!(said, "closed 1 connection(s)\n");
    let line = wait_line(&out, "\"reason\":\"operator\"");
    assert!(line.contains(&client), "{line}");
    let active = || metric(admin, "weir_udp_flows_active{listener=\"dns\"}");
    let end = Instant::now() + DEADLINE;
    while active() != 1.0 {
        assert!(Instant::now() < end, "the closed flow stays active");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The other flow goes on; the closed client's next datagram is a new flow.
    assert_eq!(ask(&other, front, b"e").as_deref(), Some(&b"e"[..]));
    assert_eq!(ask(&closed, front, b"f").as_deref(), Some(&b"f"[..]));
    let v = list(&["--client", "127.0.0.4"]);
    assert_eq!(v["connections"].as_array().map(Vec::len), Some(1), "{v}");
    assert_ne!(v["connections"][0]["id"], first, "{v}");
    assert_eq!(v["connections"][0]["sent_bytes"], 1, "{v}");
}

/// `dns` health checks against dnsmasq: both backends up; one stopped is
/// taken out by its probes (not by a client's query), and every query
/// afterwards is answered at the first try. A `udp` check passes on an
/// echo and fails on an answer without the expected bytes.
#[test]
fn dns_and_udp_health_checks() {
    let dir = test_dir("udp-health");
    let (p1, p2) = (free_udp_port(), free_udp_port());
    let first = dnsmasq(&dir, p1);
    let _second = dnsmasq(&dir, p2);
    let (admin, port) = (free_port(), free_udp_port());
    let (_weir, _out) = start(
        "udp-health",
        &config(
            admin,
            &format!("\"127.0.0.1:{port}\""),
            "responses = 1",
            "",
            &format!(
                "[pools.health]\ntype = \"dns\"\nquery = \"a.test.\"\nexpect_rcode = \"NOERROR\"\n\
                 interval = \"200ms\"\nfast_interval = \"100ms\"\ntimeout = \"300ms\"\nrise = 1\nfall = 2\n\
                 [[pools.backends]]\nname = \"one\"\naddress = \"127.0.0.1:{p1}\"\n\
                 [[pools.backends]]\nname = \"two\"\naddress = \"127.0.0.1:{p2}\""
            ),
        ),
    );
    let up = |b: &str| {
        metric(
            admin,
            &format!("weir_backend_state{{pool=\"dns\",backend=\"{b}\",state=\"up\"}}"),
        )
    };
    assert_eq!((up("one"), up("two")), (1.0, 1.0));
    let passed = "weir_health_checks_total{pool=\"dns\",backend=\"one\",type=\"dns\",result=\"success\",reason=\"ok\"}";
    assert!(metric(admin, passed) >= 1.0);
    drop(first);
    let end = Instant::now() + DEADLINE;
    while up("one") != 0.0 {
        assert!(
            Instant::now() < end,
            "the probes take the stopped backend out"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let front = SocketAddr::from(([127, 0, 0, 1], port));
    for _ in 0..6 {
        assert_eq!(dig(front, "a.test", &[]), "10.0.0.1");
    }

    // A udp check: an echo passes with the expected bytes; a server that
    // answers something else fails with `body`.
    let (echoing, _) = echo(false);
    let other = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let other_addr = other.local_addr().expect("addr");
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((_, from)) = other.recv_from(&mut buf) {
            let _ = other.send_to(b"nope", from);
        }
    });
    let (admin, port) = (free_port(), free_udp_port());
    let (_weir, _out) = start(
        "udp-check",
        &config(
            admin,
            &format!("\"127.0.0.1:{port}\""),
            "",
            "",
            &format!(
                "[pools.health]\ntype = \"udp\"\nsend = \"ping\"\nexpect = \"ping\"\n\
                 interval = \"200ms\"\ntimeout = \"300ms\"\n\
                 [[pools.backends]]\nname = \"echo\"\naddress = \"{echoing}\"\n\
                 [[pools.backends]]\nname = \"other\"\naddress = \"{other_addr}\""
            ),
        ),
    );
    let state = |b: &str, s: &str| {
        metric(
            admin,
            &format!("weir_backend_state{{pool=\"dns\",backend=\"{b}\",state=\"{s}\"}}"),
        )
    };
    assert_eq!(state("echo", "up"), 1.0);
    assert_eq!(state("other", "down"), 1.0);
    assert!(
        metric(
            admin,
            "weir_health_checks_total{pool=\"dns\",backend=\"other\",type=\"udp\",result=\"failure\",reason=\"body\"}"
        ) >= 1.0
    );
}

/// With `close_on_down`, a flow open to a backend its checks take down ends
/// at once (reason `backend_down`), without waiting for `idle_timeout`.
#[test]
fn close_on_down_ends_the_open_flows() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let backend = s.local_addr().expect("addr");
    let answering = Arc::new(AtomicBool::new(true));
    let on = Arc::clone(&answering);
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = s.recv_from(&mut buf) {
            if on.load(Relaxed) {
                let _ = s.send_to(&buf[..n], from);
            }
        }
    });
    let (admin, port) = (free_port(), free_udp_port());
    let (_weir, out) = start(
        "udp-down",
        &config(
            admin,
            &format!("\"127.0.0.1:{port}\""),
            "idle_timeout = \"1h\"",
            "",
            &format!(
                "close_on_down = true\n\
                 [pools.health]\ntype = \"udp\"\nsend = \"health\"\n\
                 interval = \"200ms\"\nfast_interval = \"100ms\"\ntimeout = \"200ms\"\nfall = 2\n\
                 [[pools.backends]]\nname = \"b\"\naddress = \"{backend}\""
            ),
        ),
    );
    let front = SocketAddr::from(([127, 0, 0, 1], port));
    let client = UdpSocket::bind("127.0.0.1:0").expect("client");
    assert_eq!(
        ask(&client, front, b"hello").as_deref(),
        Some(&b"hello"[..])
    );
    assert_eq!(
        metric(admin, "weir_udp_flows_active{listener=\"dns\"}"),
        1.0
    );
    answering.store(false, Relaxed);
    let line = wait_line(&out, "\"reason\":\"backend_down\"");
    assert!(line.contains("\"bytes_to_client\":5"), "{line}");
    // The flow leaves the gauge a moment after its line.
    let end = Instant::now() + DEADLINE;
    while metric(admin, "weir_udp_flows_active{listener=\"dns\"}") != 0.0 {
        assert!(Instant::now() < end, "the ended flow stays active");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `responses` counts per datagram, as nginx's `proxy_responses`: a client
/// with three queries outstanding on one flow gets three answers, and the
/// flow ends with the last of them.
#[test]
fn responses_count_per_datagram_sent() {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let backend = s.local_addr().expect("addr");
    // Answers the datagrams once it holds all three (or after 2 s of
    // silence), so that several are outstanding at once.
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        s.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let mut held: Vec<(Vec<u8>, SocketAddr)> = Vec::new();
        loop {
            let silent = match s.recv_from(&mut buf) {
                Ok((n, from)) => {
                    held.push((buf[..n].to_vec(), from));
                    false
                }
                Err(_) => true,
            };
            if silent || held.len() == 3 {
                for (d, from) in held.drain(..) {
                    let _ = s.send_to(&d, from);
                }
            }
        }
    });
    let (admin, port) = (free_port(), free_udp_port());
    let (_weir, out) = start(
        "udp-responses",
        &config(
            admin,
            &format!("\"127.0.0.1:{port}\""),
            "responses = 1",
            "",
            &format!("[[pools.backends]]\naddress = \"{backend}\""),
        ),
    );
    let front = SocketAddr::from(([127, 0, 0, 1], port));
    let client = UdpSocket::bind("127.0.0.1:0").expect("client");
    client.set_read_timeout(Some(DEADLINE)).expect("timeout");
    for q in [&b"q1"[..], b"q2", b"q3"] {
        client.send_to(q, front).expect("send");
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    for _ in 0..3 {
        let n = client.recv(&mut buf).expect("an answer for each query");
        got.push(buf[..n].to_vec());
    }
    got.sort();
    assert_eq!(got, vec![b"q1".to_vec(), b"q2".to_vec(), b"q3".to_vec()]);
    let line = wait_line(&out, "\"reason\":\"responses\"");
    assert!(
        line.contains("\"bytes_to_client\":6"),
        "one flow, three answers: {line}"
    );
    assert_eq!(metric(admin, "weir_udp_flows_total{listener=\"dns\"}"), 1.0);
}

/// A flow closes its backend socket as it ends: clients that ask each query
/// from a new port, as DNS resolvers do, do not leave weir holding a socket
/// per query (ended flows' sockets used to stay open until a sweep every
/// 5 s, which at a high query rate could use up the open-files limit).
#[test]
fn ended_flows_give_back_their_sockets_at_once() {
    let (backend, _) = echo(false);
    let (admin, port) = (free_port(), free_udp_port());
    let (weir, _out) = start(
        "udp-ended",
        &config(
            admin,
            &format!("\"127.0.0.1:{port}\""),
            "responses = 1",
            "",
            &format!("[[pools.backends]]\naddress = \"{backend}\""),
        ),
    );
    let front = SocketAddr::from(([127, 0, 0, 1], port));
    let fds = || {
        std::fs::read_dir(format!("/proc/{}/fd", weir.0.id()))
            .expect("weir's descriptors")
            .count()
    };
    let at_rest = fds();
    let mut most = at_rest;
    for i in 0..1_000 {
        // A new source port, so a new flow, for each query.
        let client = UdpSocket::bind("127.0.0.1:0").expect("client");
        let q = format!("q{i}");
        assert_eq!(
            ask(&client, front, q.as_bytes()).as_deref(),
            Some(q.as_bytes())
        );
        if i % 50 == 49 {
            most = most.max(fds());
        }
    }
    assert!(
        most <= at_rest + 50,
        "{most} descriptors open during 1,000 one-query flows, {at_rest} at rest"
    );
    assert_eq!(
        metric(admin, "weir_udp_flows_total{listener=\"dns\"}"),
        1_000.0
    );
}

/// PROXY v2 over UDP from a trusted sender: each datagram's header names
/// the client, who stands for it everywhere (here: in the header weir sends
/// on); replies go back to the sender. A trusted sender's datagram without
/// a header, and an untrusted one's with a header, are dropped; an untrusted
/// one's too short to hold a signature is relayed.
#[test]
fn proxy_v2_from_trusted_senders() {
    use weir_wire::proxy::{Command, Transport, encode_v2};
    let (backend, sources) = echo(true);
    let (admin, port) = (free_port(), free_udp_port());
    let (_weir, out) = start(
        "udp-proxy-in",
        &config(
            admin,
            &format!("\"127.0.0.1:{port}\""),
            "proxy_protocol = { accept = true, trusted = [\"127.0.0.1\"] }\nidle_timeout = \"300ms\"",
            "send_proxy_protocol = \"v2\"",
            &format!("[[pools.backends]]\naddress = \"{backend}\""),
        ),
    );
    let front = SocketAddr::from(([127, 0, 0, 1], port));
    let real: SocketAddr = "203.0.113.7:4242".parse().expect("addr");
    let with_header = |payload: &[u8]| {
        let mut d = Vec::new();
        encode_v2(
            Command::Proxy,
            Transport::Datagram,
            Some((real, front)),
            &[],
            &mut d,
        )
        .expect("header");
        d.extend_from_slice(payload);
        d
    };
    let trusted = UdpSocket::bind("127.0.0.1:0").expect("trusted");
    let reply = ask(&trusted, front, &with_header(b"hi")).expect("an answer");
    assert_eq!(reply, b"203.0.113.7:4242 hi".to_vec());
    assert_eq!(sources.try_iter().collect::<Vec<_>>(), vec![real]);
    let line = wait_line(&out, "\"client\":\"203.0.113.7:4242\"");
    assert!(line.contains("\"listener\":\"dns\""), "{line}");

    assert_eq!(ask_unanswered(&trusted, front, b"no header"), None);
    let untrusted = UdpSocket::bind("127.0.0.2:0").expect("untrusted");
    assert_eq!(
        ask_unanswered(&untrusted, front, &with_header(b"spoof")),
        None
    );
    let me = untrusted.local_addr().expect("addr");
    let reply = ask(&untrusted, front, b"plain").expect("served as itself");
    assert_eq!(reply, format!("{me} plain").into_bytes());
    // Too short to be a header, though it starts like one: a datagram.
    let reply = ask(&untrusted, front, b"P").expect("a short datagram is served");
    assert_eq!(reply, format!("{me} P").into_bytes());
    assert_eq!(
        metric(
            admin,
            "weir_udp_dropped_total{listener=\"dns\",reason=\"proxy_protocol\"}"
        ),
        2.0
    );
}

/// A UDP echo server that puts `tag` before each answer.
fn tagged(tag: &'static str) -> SocketAddr {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let addr = s.local_addr().expect("addr");
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = s.recv_from(&mut buf) {
            let mut r = tag.as_bytes().to_vec();
            r.extend_from_slice(&buf[..n]);
            let _ = s.send_to(&r, from);
        }
    });
    addr
}

/// A reload keeps the flows of the routes and backends that stay (the
/// client keeps its backend although the new pool would pick another), and
/// a listener the reload removes stops receiving at once.
#[test]
fn a_reload_keeps_flows_and_closes_removed_listeners() {
    let (one, two) = (tagged("one:"), tagged("two:"));
    let (admin, port, gone) = (free_port(), free_udp_port(), free_udp_port());
    let text = |backends: &str, extra: &str| {
        format!(
            "[admin]\nhttp = \"{admin}\"\n[log]\nformat = \"json\"\n\
             [[listeners]]\nname = \"dns\"\nbind = \"127.0.0.1:{port}\"\nprotocol = \"udp\"\n\
             [[listeners.routes]]\nname = \"all\"\npool = \"p\"\n{extra}\n\
             [[pools]]\nname = \"p\"\nbalance = \"first\"\n{backends}\n"
        )
    };
    let other = format!(
        "[[listeners]]\nname = \"other\"\nbind = \"127.0.0.1:{gone}\"\nprotocol = \"udp\"\n\
         [[listeners.routes]]\nname = \"all\"\npool = \"p\""
    );
    let file = crate::cli::temp_config(
        "udp-reload",
        &text(
            &format!("[[pools.backends]]\nname = \"one\"\naddress = \"{one}\""),
            &other,
        ),
    );
    let (weir, out) = crate::cli::run_weir(&file);
    let front = SocketAddr::from(([127, 0, 0, 1], port));
    let removed = SocketAddr::from(([127, 0, 0, 1], gone));
    let client = UdpSocket::bind("127.0.0.1:0").expect("client");
    assert_eq!(ask(&client, front, b"a").as_deref(), Some(&b"one:a"[..]));
    let elsewhere = UdpSocket::bind("127.0.0.1:0").expect("client");
    assert_eq!(
        ask(&elsewhere, removed, b"b").as_deref(),
        Some(&b"one:b"[..])
    );
    let denied = UdpSocket::bind("127.0.0.3:0").expect("client on 127.0.0.3");
    assert_eq!(ask(&denied, front, b"x").as_deref(), Some(&b"one:x"[..]));

    // `two` comes first now; `other` goes; 127.0.0.3 is denied, and its
    // open flow ends at its next datagram (it kept its flow, the backend
    // hearing it for as long as it talked).
    std::fs::write(
        &file,
        format!(
            "[firewall]\ndeny = [\"127.0.0.3\"]\n{}",
            text(
                &format!(
                    "[[pools.backends]]\nname = \"two\"\naddress = \"{two}\"\n\
                     [[pools.backends]]\nname = \"one\"\naddress = \"{one}\""
                ),
                "",
            )
        ),
    )
    .expect("rewrite");
    crate::cli::signal(&weir.0, rustix::process::Signal::HUP);
    wait_line(&out, "config reloaded");
    assert_eq!(ask_unanswered(&denied, front, b"y"), None);
    let line = wait_line(&out, "\"reason\":\"firewall\"");
    assert!(line.contains("127.0.0.3"), "{line}");
    assert_eq!(ask(&client, front, b"c").as_deref(), Some(&b"one:c"[..]));
    let newcomer = UdpSocket::bind("127.0.0.1:0").expect("client");
    assert_eq!(ask(&newcomer, front, b"d").as_deref(), Some(&b"two:d"[..]));
    assert_eq!(
        ask_unanswered(&elsewhere, removed, b"e"),
        None,
        "no longer listening"
    );
    assert_eq!(metric(admin, "weir_udp_flows_total{listener=\"dns\"}"), 3.0);
    assert_eq!(
        metric(
            admin,
            "weir_firewall_blocked_total{listener=\"dns\",reason=\"deny_list\"}"
        ),
        1.0
    );
}

/// Datagrams a client sent in one GSO call (and the kernel may hand weir as
/// one GRO buffer) reach the backend as the datagrams they were, in order,
/// and each gets its answer.
#[test]
fn coalesced_datagrams_stay_datagrams() {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let backend = s.local_addr().expect("addr");
    let (tx, seen) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 70_000];
        while let Ok((n, from)) = s.recv_from(&mut buf) {
            let _ = tx.send(buf[..n].to_vec());
            let _ = s.send_to(&buf[..1], from);
        }
    });
    let (admin, port) = (free_port(), free_udp_port());
    let (_weir, _out) = start(
        "udp-gso",
        &config(
            admin,
            &format!("\"127.0.0.1:{port}\""),
            "responses = 1",
            "",
            &format!("[[pools.backends]]\naddress = \"{backend}\""),
        ),
    );
    // Python's socket module sets UDP_SEGMENT (103) for a GSO send.
    let script = format!(
        "import socket\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         s.setsockopt(17, 103, 1000)\n\
         s.settimeout(3)\n\
         s.sendto(b'a' * 1000 + b'b' * 1000 + b'c' * 500, ('127.0.0.1', {port}))\n\
         print(''.join(sorted(s.recv(64).decode() for _ in range(3))))\n"
    );
    assert_eq!(python(&script), "abc");
    let got: Vec<Vec<u8>> = seen.try_iter().collect();
    assert_eq!(
        got,
        vec![vec![b'a'; 1000], vec![b'b'; 1000], vec![b'c'; 500]]
    );
    assert_eq!(
        metric(
            admin,
            "weir_udp_datagrams_total{listener=\"dns\",direction=\"to_backend\"}"
        ),
        3.0
    );
}

/// Once a client's coalesced datagrams went to the backend in one GSO send,
/// the backend's replies still reach the client as the datagrams they were,
/// also when the backend sends them in one GSO call of its own (QUIC
/// servers do).
#[test]
fn replies_sent_in_one_gso_call_stay_datagrams() {
    let dir = test_dir("udp-gro-replies");
    let ready = dir.join("ready");
    let backend_script = format!(
        "import socket\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         s.bind(('127.0.0.1', 0))\n\
         open('{ready}', 'w').write(str(s.getsockname()[1]))\n\
         s.settimeout(30)\n\
         seen = 0\n\
         while True:\n\
         \x20   data, peer = s.recvfrom(70000)\n\
         \x20   seen += 1\n\
         \x20   if seen % 3 == 0:\n\
         \x20       s.setsockopt(17, 103, 500)\n\
         \x20       s.sendto(b'x' * 500 + b'y' * 500 + b'z' * 500, peer)\n",
        ready = ready.display()
    );
    let _backend = Running::new(
        Command::new("python3")
            .args(["-c", &backend_script])
            .spawn()
            .expect("python3"),
    );
    let end = Instant::now() + DEADLINE;
    let backend_port = loop {
        if let Some(port) = std::fs::read_to_string(&ready)
            .ok()
            .and_then(|p| p.trim().parse::<u16>().ok())
        {
            break port;
        }
        assert!(Instant::now() < end, "the backend never started");
        std::thread::sleep(Duration::from_millis(20));
    };
    let (_weir, _, admin, port) =
        udp_weir("udp-gro-replies", "", &format!("127.0.0.1:{backend_port}"));
    // Twice: the first batch sets the flow's GSO up, the second goes
    // through it.
    let script = format!(
        "import socket\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         s.settimeout(3)\n\
         got = []\n\
         for _ in range(2):\n\
         \x20   s.setsockopt(17, 103, 1000)\n\
         \x20   s.sendto(b'a' * 3000, ('127.0.0.1', {port}))\n\
         \x20   s.setsockopt(17, 103, 0)\n\
         \x20   for _ in range(3):\n\
         \x20       r = s.recv(70000)\n\
         \x20       got.append('%s%d' % (chr(r[0]), len(r)))\n\
         print(' '.join(got))\n"
    );
    assert_eq!(python(&script), "x500 y500 z500 x500 y500 z500");
    assert_eq!(
        metric(
            admin,
            "weir_udp_datagrams_total{listener=\"dns\",direction=\"to_backend\"}"
        ),
        6.0
    );
}

/// An ICMP "fragmentation needed" for a flow's backend is a path MTU update,
/// not the backend's failure: the flow goes on, on the same socket (the
/// backend sees the same source port), rather than ending as
/// `backend_error` and starting again elsewhere.
#[test]
fn a_path_mtu_update_does_not_end_a_flow() {
    let (backend, peers) = echo_on("127.0.0.77:0");
    let (_weir, out, admin, port) =
        udp_weir("udp-pmtu", "idle_timeout = \"1h\"", &backend.to_string());
    let front = SocketAddr::from(([127, 0, 0, 1], port));
    let client = UdpSocket::bind("127.0.0.1:0").expect("client");
    assert_eq!(ask(&client, front, b"a").as_deref(), Some(&b"a"[..]));
    let first = peers.recv_timeout(DEADLINE).expect("the backend's peer");
    // An ICMP type 3 code 4 (next-hop MTU 60,000) quoting a datagram of
    // the flow's socket to the backend, as a router on the way would send.
    let script = format!(
        "import socket, struct\n\
         def csum(b):\n\
         \x20   if len(b) % 2: b += b'\\0'\n\
         \x20   t = sum(struct.unpack('!%dH' % (len(b) // 2), b))\n\
         \x20   while t >> 16: t = (t & 0xffff) + (t >> 16)\n\
         \x20   return ~t & 0xffff\n\
         ip = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 1428, 0, 0x4000, 64, 17, 0,\n\
         \x20   socket.inet_aton('{src_ip}'), socket.inet_aton('{dst_ip}'))\n\
         ip = ip[:10] + struct.pack('!H', csum(ip)) + ip[12:]\n\
         quoted = ip + struct.pack('!HHHH', {src_port}, {dst_port}, 1408, 0)\n\
         icmp = struct.pack('!BBHHH', 3, 4, 0, 0, 60000) + quoted\n\
         icmp = icmp[:2] + struct.pack('!H', csum(icmp)) + icmp[4:]\n\
         r = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)\n\
         r.sendto(icmp, ('{src_ip}', 0))\n",
        src_ip = first.ip(),
        src_port = first.port(),
        dst_ip = backend.ip(),
        dst_port = backend.port(),
    );
    python(&script);
    // The flow would end at once; a second is plenty to see that it does not.
    let end = Instant::now() + Duration::from_secs(1);
    while Instant::now() < end {
        assert_eq!(
            metric(admin, "weir_udp_flows_active{listener=\"dns\"}"),
            1.0,
            "the flow ended: {:?}",
            out.try_iter().collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(ask(&client, front, b"b").as_deref(), Some(&b"b"[..]));
    let second = peers.recv_timeout(DEADLINE).expect("the backend's peer");
    assert_eq!(first, second, "the flow started again on another socket");
    assert_eq!(metric(admin, "weir_udp_flows_total{listener=\"dns\"}"), 1.0);
}

/// An IPv6 client gets answers of any size: over the path MTU the kernel
/// fragments them (on `[::1]`, whose MTU is 65,536, from 65,489 bytes).
#[test]
fn an_ipv6_client_gets_answers_of_any_size() {
    let (backend, _) = echo_on("[::1]:0");
    let admin = free_port();
    let port = {
        let probe = UdpSocket::bind("[::1]:0").expect("bind [::1]");
        probe.local_addr().expect("addr").port()
    };
    let (_weir, _out) = start(
        "udp-ipv6-big",
        &config(
            admin,
            &format!("\"[::1]:{port}\""),
            "",
            "",
            &format!("[[pools.backends]]\naddress = \"{backend}\""),
        ),
    );
    let front: SocketAddr = format!("[::1]:{port}").parse().expect("address");
    let client = UdpSocket::bind("[::1]:0").expect("client");
    for size in [1_000, 65_488, 65_489, 65_507] {
        let payload = vec![9u8; size];
        assert_eq!(
            ask(&client, front, &payload).map(|r| r.len()),
            Some(size),
            "an answer of {size} bytes"
        );
    }
    assert_eq!(
        metric(
            admin,
            "weir_udp_dropped_total{listener=\"dns\",reason=\"send_error\"}"
        ),
        0.0
    );
}

/// Replies a backend sends back to back reach the client as the datagrams
/// they were, whether or not weir sends them on in one GSO send: three of
/// one size, a shorter last one, then a longer one and an empty one.
#[test]
fn back_to_back_replies_stay_datagrams() {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let backend = s.local_addr().expect("addr");
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((_, from)) = s.recv_from(&mut buf) {
            for reply in [
                vec![b'a'; 1200],
                vec![b'b'; 1200],
                vec![b'c'; 1200],
                vec![b'd'; 300],
                vec![b'e'; 1500],
                vec![],
            ] {
                let _ = s.send_to(&reply, from);
            }
        }
    });
    let (admin, port) = (free_port(), free_udp_port());
    let (_weir, _out) = start(
        "udp-replies",
        &config(
            admin,
            &format!("\"127.0.0.1:{port}\""),
            "",
            "",
            &format!("[[pools.backends]]\naddress = \"{backend}\""),
        ),
    );
    let front = SocketAddr::from(([127, 0, 0, 1], port));
    let client = UdpSocket::bind("127.0.0.1:0").expect("client");
    client
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    client.send_to(b"go", front).expect("send");
    let mut got = Vec::new();
    let mut buf = vec![0u8; 4096];
    for _ in 0..6 {
        let n = client.recv(&mut buf).expect("a reply");
        got.push((if n > 0 { buf[0] } else { 0 }, n));
    }
    assert_eq!(
        got,
        vec![
            (b'a', 1200),
            (b'b', 1200),
            (b'c', 1200),
            (b'd', 300),
            (b'e', 1500),
            (0, 0)
        ]
    );
    // Counted once sent: the client may read the last one a moment before.
    let series = "weir_udp_datagrams_total{listener=\"dns\",direction=\"to_client\"}";
    let end = Instant::now() + DEADLINE;
    while metric(admin, series) < 6.0 {
        assert!(Instant::now() < end, "to_client stays below 6");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(metric(admin, series), 6.0);
}

/// A reload that moves a UDP listener's address: the flows on the old
/// socket, which nothing reads any more, drain and end by the listener's
/// `shutdown_timeout` although their backend keeps sending, and the old
/// port is free again.
#[test]
fn flows_on_an_address_a_reload_left_end_and_free_it() {
    // A backend that, once asked, sends to its asker every 100 ms.
    let chatty = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let backend = chatty.local_addr().expect("addr");
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        let Ok((_, from)) = chatty.recv_from(&mut buf) else {
            return;
        };
        let end = Instant::now() + DEADLINE;
        while Instant::now() < end {
            let _ = chatty.send_to(b"tick", from);
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let (admin, old, new) = (free_port(), free_udp_port(), free_udp_port());
    let text = |port: u16| {
        config(
            admin,
            &format!("\"127.0.0.1:{port}\""),
            "idle_timeout = \"1h\"\nshutdown_timeout = \"1s\"",
            "",
            &format!("[[pools.backends]]\naddress = \"{backend}\""),
        )
    };
    let file = crate::cli::temp_config("udp-moved", &text(old));
    let (weir, out) = crate::cli::run_weir(&file);
    let client = UdpSocket::bind("127.0.0.1:0").expect("client");
    client.set_read_timeout(Some(DEADLINE)).expect("timeout");
    client.send_to(b"hi", ("127.0.0.1", old)).expect("send");
    let mut buf = [0u8; 64];
    let (n, _) = client.recv_from(&mut buf).expect("a tick");
    assert_eq!(&buf[..n], b"tick");

    std::fs::write(&file, text(new)).expect("rewrite");
    crate::cli::signal(&weir.0, rustix::process::Signal::HUP);
    wait_line(&out, "config reloaded");
    let end = Instant::now() + DEADLINE;
    while UdpSocket::bind(("127.0.0.1", old)).is_err() {
        assert!(Instant::now() < end, "the old address is still bound");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        metric(admin, "weir_udp_flows_active{listener=\"dns\"}"),
        0.0
    );
}

/// A datagram dropped because `max_flows` flows are open takes nothing of
/// its client's firewall budget: once there is room, the client gets its
/// flow, not a rate limit earned by the datagrams weir could not take.
#[test]
fn max_flows_is_looked_at_before_the_firewall() {
    let (backend, _) = echo(false);
    let (admin, port) = (free_port(), free_udp_port());
    let (_weir, _out) = start(
        "udp-max-flows-first",
        &config(
            admin,
            &format!("\"127.0.0.1:{port}\""),
            "idle_timeout = \"5s\"\nmax_flows = 1\n\
             firewall = { per_client = { rate = 1, burst = 1 } }",
            "",
            &format!("[[pools.backends]]\naddress = \"{backend}\""),
        ),
    );
    let front = SocketAddr::from(([127, 0, 0, 1], port));
    let a = UdpSocket::bind("127.0.0.1:0").expect("a");
    let b = UdpSocket::bind("127.0.0.2:0").expect("b");
    assert_eq!(ask(&a, front, b"a").as_deref(), Some(&b"a"[..]));
    for _ in 0..3 {
        assert_eq!(ask_unanswered(&b, front, b"b"), None, "over max_flows");
    }
    let dropped = |reason: &str| {
        metric(
            admin,
            &format!("weir_udp_dropped_total{{listener=\"dns\",reason=\"{reason}\"}}"),
        )
    };
    assert_eq!((dropped("max_flows"), dropped("firewall")), (3.0, 0.0));
    assert_eq!(
        metric(
            admin,
            "weir_firewall_blocked_total{listener=\"dns\",reason=\"rate_limit\"}"
        ),
        0.0
    );
}

/// Each flow holds a local port. In a namespace whose range has 50 ports,
/// flows that take them all leave the next client's datagram dropped as
/// `local_resources` (with a warning), not `send_error`, and the UDP probe
/// that finds no port to bind is skipped: the backend stays up (it went
/// down, the probe's failure held against it).
#[test]
fn flows_that_take_every_local_port_are_weirs_shortage_not_the_backends() {
    let ns = crate::upgrade::Netns::new();
    let status = Command::new("nsenter")
        .arg(format!("--net={}", ns.path.display()))
        .args(["sysctl", "-qw", "net.ipv4.ip_local_port_range=40000 40049"])
        .status()
        .expect("nsenter");
    assert!(status.success(), "cannot narrow the port range: {status}");
    crate::upgrade::enter(&ns.path);
    let (backend, _) = echo(false);
    let admin = free_port();
    // Outside the namespace's range, so the listener takes none of it.
    let port = 30_999;
    let (_weir, out) = start(
        "udp-ports",
        &config(
            admin,
            &format!("\"127.0.0.1:{port}\""),
            "idle_timeout = \"1h\"",
            "",
            &format!(
                "[pools.health]\ntype = \"udp\"\nsend = \"ping\"\nexpect = \"ping\"\n\
                 interval = \"100ms\"\nfast_interval = \"100ms\"\ntimeout = \"300ms\"\nrise = 1\nfall = 1\n\
                 [[pools.backends]]\nname = \"echo\"\naddress = \"{backend}\""
            ),
        ),
    );
    let front = SocketAddr::from(([127, 0, 0, 1], port));
    // Clients on ports outside the range; each starts a flow until none
    // is left.
    let clients: Vec<UdpSocket> = (0..60)
        .map(|i| UdpSocket::bind(("127.0.0.1", 31_000 + i)).expect("client"))
        .collect();
    for c in &clients {
        c.send_to(b"x", front).expect("send");
    }
    let dropped = |reason: &str| {
        metric(
            admin,
            &format!("weir_udp_dropped_total{{listener=\"dns\",reason=\"{reason}\"}}"),
        )
    };
    let end = Instant::now() + DEADLINE;
    while dropped("local_resources") < 1.0 {
        assert!(Instant::now() < end, "no datagram met the port shortage");
        std::thread::sleep(Duration::from_millis(20));
    }
    wait_line(&out, "local ports");
    // Several probe rounds with no port to bind.
    let skipped = "weir_health_checks_total{pool=\"dns\",backend=\"echo\",type=\"udp\",result=\"skipped\",reason=\"local_resources\"}";
    let end = Instant::now() + DEADLINE;
    // The series appears with the first skipped probe.
    let skips = || {
        crate::cli::http_get(admin, "/metrics")
            .lines()
            .find_map(|l| l.strip_prefix(skipped)?.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    while skips() < 3.0 {
        assert!(Instant::now() < end, "no probe was skipped");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(dropped("send_error"), 0.0);
    assert_eq!(
        metric(
            admin,
            "weir_backend_state{pool=\"dns\",backend=\"echo\",state=\"up\"}"
        ),
        1.0
    );
}

/// systemd's own tool binds a UDP socket and passes it named, as a socket
/// unit's `ListenDatagram=` does: weir serves on it (the datagram that made
/// the tool start weir waits in the socket and is answered), a reload that
/// keeps the listener serves on the same socket, and one that removes the
/// listener stops reading it.
#[test]
fn a_udp_socket_systemd_passes_is_served_across_reloads() {
    let activate = which("systemd-socket-activate")
        .expect("systemd-socket-activate is not installed: scripts/test.sh installs `systemd`");
    let (one, two) = (tagged("one:"), tagged("two:"));
    let front = SocketAddr::from(([127, 0, 0, 1], free_udp_port()));
    let text = |listener: bool, backend: SocketAddr| {
        let listener = if listener {
            format!(
                "[[listeners]]\nname = \"dns\"\nbind = \"{front}\"\nprotocol = \"udp\"\n\
                 [[listeners.routes]]\nname = \"all\"\npool = \"p\"\n"
            )
        } else {
            String::new()
        };
        format!(
            "[log]\nformat = \"json\"\n{listener}\
             [[pools]]\nname = \"p\"\n[[pools.backends]]\nname = \"b\"\naddress = \"{backend}\"\n"
        )
    };
    let file = crate::cli::temp_config("udp-activate", &text(true, one));
    let mut child = Command::new(activate)
        .args(["--datagram", "--listen"])
        .arg(front.to_string())
        .arg("--fdname=dns")
        .arg(env!("CARGO_BIN_EXE_weir"))
        .args(["run", "--config"])
        .arg(&file)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let out = crate::cli::lines(&mut child);
    // The tool says when it has bound the socket (a datagram before would
    // find the port closed).
    let said = {
        use std::io::BufRead;
        let stderr = child.stderr.take().expect("piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(line);
            }
        });
        rx
    };
    let weir = Running::new(child);
    wait_line(&said, &format!("Listening on {front}"));
    let client = UdpSocket::bind("127.0.0.1:0").expect("client");
    assert_eq!(ask(&client, front, b"a").as_deref(), Some(&b"one:a"[..]));
    wait_line(&out, "socket passed by systemd");

    std::fs::write(&file, text(true, two)).expect("rewrite");
    crate::cli::signal(&weir.0, rustix::process::Signal::HUP);
    wait_line(&out, "config reloaded");
    let newcomer = UdpSocket::bind("127.0.0.1:0").expect("client");
    assert_eq!(ask(&newcomer, front, b"b").as_deref(), Some(&b"two:b"[..]));

    std::fs::write(&file, text(false, two)).expect("rewrite");
    crate::cli::signal(&weir.0, rustix::process::Signal::HUP);
    wait_line(&out, "config reloaded");
    let late = UdpSocket::bind("127.0.0.1:0").expect("client");
    assert_eq!(ask_unanswered(&late, front, b"c"), None);
}

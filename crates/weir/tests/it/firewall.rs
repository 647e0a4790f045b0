//! The firewall with real sockets from many loopback source addresses (the
//! whole 127.0.0.0/8 reaches a listener on 127.0.0.1): deny and allow lists,
//! inline and from files re-read on reload; per-client rate and concurrency
//! limits exact to the count; the PROXY header's address is the one judged;
//! refused clients get a reset and never reach the backend; a flood of
//! distinct sources keeps the per-client table at its size; HTTP requests
//! over the rate get 429.

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use socket2::{Domain, Socket, Type};

use crate::cli::{DEADLINE, free_port, http_get, signal, test_dir, wait_line};
use crate::http::start;

/// An echo backend that counts the connections it accepted.
struct Counting {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
}

fn counting_backend() -> Counting {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let n = Arc::clone(&accepted);
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { break };
            n.fetch_add(1, Relaxed);
            std::thread::spawn(move || {
                let mut buf = [0u8; 1024];
                while let Ok(k) = s.read(&mut buf) {
                    if k == 0 || s.write_all(&buf[..k]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    Counting { addr, accepted }
}

/// A connection to `front` from the loopback address `source`. A refused
/// client may meet the reset already while its connect completes.
fn try_connect_from(source: Ipv4Addr, front: SocketAddr) -> Result<TcpStream, ErrorKind> {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    s.bind(&SocketAddr::V4(SocketAddrV4::new(source, 0)).into())
        .expect("bind the source");
    s.connect_timeout(&front.into(), DEADLINE)
        .map_err(|e| reset(e.kind()))?;
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(DEADLINE)).expect("timeout");
    Ok(s)
}

fn connect_from(source: Ipv4Addr, front: SocketAddr) -> TcpStream {
    try_connect_from(source, front).expect("connect")
}

/// What happens to one client from `source`: `Ok` with the echo, or the
/// error its connect, write or read met (a reset for a refused client).
fn ping_from(source: Ipv4Addr, front: SocketAddr) -> Result<(), ErrorKind> {
    ping(&mut try_connect_from(source, front)?)
}

fn ping(s: &mut TcpStream) -> Result<(), ErrorKind> {
    // A refused client may see the reset already on this write.
    s.write_all(b"ping").map_err(|e| reset(e.kind()))?;
    let mut buf = [0u8; 4];
    match s.read(&mut buf) {
        Ok(4) if &buf == b"ping" => Ok(()),
        Ok(0) => Err(ErrorKind::UnexpectedEof),
        Ok(_) => Err(ErrorKind::InvalidData),
        Err(e) => Err(reset(e.kind())),
    }
}

/// The ways a reset shows, depending on when it meets the client: on a
/// connect, a write (broken pipe once the reset is in) or a read.
fn reset(kind: ErrorKind) -> ErrorKind {
    match kind {
        ErrorKind::BrokenPipe | ErrorKind::ConnectionAborted => ErrorKind::ConnectionReset,
        other => other,
    }
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().expect("ip")
}

fn metric(admin: SocketAddr, series: &str) -> f64 {
    crate::http::metric(admin, series)
}

fn config(admin: SocketAddr, front: SocketAddr, backend: SocketAddr, firewall: &str) -> String {
    format!(
        "[admin]\nhttp = \"{admin}\"\n[log]\nformat = \"json\"\n{firewall}\n\
         [[listeners]]\nname = \"l\"\nbind = \"{front}\"\n\
         [[listeners.routes]]\nname = \"r\"\npool = \"p\"\n\
         [[pools]]\nname = \"p\"\n[[pools.backends]]\naddress = \"{backend}\"\n"
    )
}

/// Deny wins over allow; an allow list refuses everyone else; a list file
/// (comments, blank lines) is read at start and again on reload. Refused
/// clients get a reset, are counted by rule and logged, and the backend
/// never sees them.
#[test]
fn deny_and_allow_lists_inline_and_from_files() {
    let dir = test_dir("firewall-lists");
    let deny_file = dir.join("deny.txt");
    std::fs::write(
        &deny_file,
        "# bad neighbours\n127.0.1.0/24  # a whole net\n\n",
    )
    .expect("write");
    let backend = counting_backend();
    let (admin, front) = (free_port(), free_port());
    let firewall = format!(
        "[firewall]\ndeny = [\"127.0.0.66\"]\ndeny_files = [\"{}\"]\nallow = [\"127.0.0.0/16\"]\n",
        deny_file.display()
    );
    let (weir, out) = start(
        "firewall-lists",
        &config(admin, front, backend.addr, &firewall),
    );

    assert_eq!(ping_from(ip("127.0.0.1"), front), Ok(()));
    assert_eq!(ping_from(ip("127.0.0.7"), front), Ok(()));
    assert_eq!(
        ping_from(ip("127.0.0.66"), front),
        Err(ErrorKind::ConnectionReset)
    );
    assert_eq!(
        ping_from(ip("127.0.1.9"), front),
        Err(ErrorKind::ConnectionReset)
    );
    // Allowed by nobody: outside 127.0.0.0/16.
    assert_eq!(
        ping_from(ip("127.1.0.1"), front),
        Err(ErrorKind::ConnectionReset)
    );
    assert_eq!(backend.accepted.load(Relaxed), 2);
    let blocked = |reason: &str| {
        metric(
            admin,
            &format!("weir_firewall_blocked_total{{listener=\"l\",reason=\"{reason}\"}}"),
        )
    };
    assert_eq!(blocked("deny_list"), 2.0);
    assert_eq!(blocked("not_allowed"), 1.0);
    assert_eq!(
        metric(
            admin,
            "weir_listener_connections_rejected_total{listener=\"l\",reason=\"firewall\"}"
        ),
        3.0
    );
    let line = wait_line(&out, "\"error\":\"not_allowed\"");
    assert!(line.contains("\"reason\":\"firewall\""), "{line}");
    assert!(line.contains("127.1.0.1"), "{line}");

    // The file changes; a reload reads it again.
    std::fs::write(&deny_file, "127.0.0.7\n").expect("rewrite");
    signal(&weir.0, rustix::process::Signal::HUP);
    wait_line(&out, "config reloaded");
    assert_eq!(
        ping_from(ip("127.0.0.7"), front),
        Err(ErrorKind::ConnectionReset)
    );
    assert_eq!(ping_from(ip("127.0.1.9"), front), Ok(()));
    // A bad line fails the reload, naming the file and the line; the lists
    // in force stay.
    std::fs::write(&deny_file, "127.0.0.7\nnot-an-address\n").expect("break");
    signal(&weir.0, rustix::process::Signal::HUP);
    let line = wait_line(&out, "reload failed");
    assert!(line.contains("deny.txt:2"), "{line}");
    assert!(line.contains("firewall.deny_files[0]"), "{line}");
    assert_eq!(
        ping_from(ip("127.0.0.7"), front),
        Err(ErrorKind::ConnectionReset)
    );
    assert_eq!(ping_from(ip("127.0.0.1"), front), Ok(()));
}

/// `allow_files` given with an empty file make an allow list of no one:
/// every source is refused (`not_allowed`) and the backend sees none of
/// them. An address written into the file lets that source in after a
/// reload, and only it.
#[test]
fn an_empty_allow_file_lets_nobody_in() {
    let dir = test_dir("firewall-empty-allow");
    let allow_file = dir.join("allow.txt");
    std::fs::write(&allow_file, "").expect("write");
    let backend = counting_backend();
    let (admin, front) = (free_port(), free_port());
    let firewall = format!("[firewall]\nallow_files = [\"{}\"]\n", allow_file.display());
    let (weir, out) = start(
        "firewall-empty-allow",
        &config(admin, front, backend.addr, &firewall),
    );

    for source in ["127.0.0.1", "127.0.0.8", "127.0.5.5"] {
        assert_eq!(
            ping_from(ip(source), front),
            Err(ErrorKind::ConnectionReset),
            "{source}"
        );
    }
    assert_eq!(backend.accepted.load(Relaxed), 0);
    assert_eq!(
        metric(
            admin,
            "weir_firewall_blocked_total{listener=\"l\",reason=\"not_allowed\"}"
        ),
        3.0
    );
    assert_eq!(
        metric(
            admin,
            "weir_listener_connections_rejected_total{listener=\"l\",reason=\"firewall\"}"
        ),
        3.0
    );
    let line = wait_line(&out, "\"error\":\"not_allowed\"");
    assert!(line.contains("\"reason\":\"firewall\""), "{line}");

    std::fs::write(&allow_file, "127.0.0.8\n").expect("rewrite");
    signal(&weir.0, rustix::process::Signal::HUP);
    wait_line(&out, "config reloaded");
    assert_eq!(ping_from(ip("127.0.0.8"), front), Ok(()));
    assert_eq!(
        ping_from(ip("127.0.0.1"), front),
        Err(ErrorKind::ConnectionReset)
    );
    assert_eq!(backend.accepted.load(Relaxed), 1);
    assert_eq!(
        metric(
            admin,
            "weir_firewall_blocked_total{listener=\"l\",reason=\"not_allowed\"}"
        ),
        4.0
    );
}

/// `per_client`: new connections per second with a burst, and open
/// connections, per address, exact to the count; a listener's own table
/// adds to the global one.
#[test]
fn per_client_rate_and_concurrency_are_exact() {
    let backend = counting_backend();
    let (admin, front, other) = (free_port(), free_port(), free_port());
    // `l` limits open connections; `m` its rate, with room for more open
    // connections than the rate part makes, so that closes weir has not seen
    // yet cannot be counted against it.
    let (_weir, _out) = start(
        "firewall-limits",
        &format!(
            "[admin]\nhttp = \"{admin}\"\n[log]\naccess_log = false\n\
             [firewall]\nper_client = {{ rate = 1, burst = 5 }}\n\
             [[listeners]]\nname = \"l\"\nbind = \"{front}\"\n\
             firewall = {{ per_client = {{ concurrent = 3 }} }}\n\
             [[listeners.routes]]\nname = \"r\"\npool = \"p\"\n\
             [[listeners]]\nname = \"m\"\nbind = \"{other}\"\n\
             firewall = {{ per_client = {{ concurrent = 100 }} }}\n\
             [[listeners.routes]]\nname = \"r\"\npool = \"p\"\n\
             [[pools]]\nname = \"p\"\n[[pools.backends]]\naddress = \"{}\"\n",
            backend.addr
        ),
    );
    // Concurrency: three open from one address, the fourth refused, served
    // again once one closes. Another address is not affected.
    let a = ip("127.0.3.1");
    let mut held: Vec<TcpStream> = (0..3).map(|_| connect_from(a, front)).collect();
    for s in &mut held {
        assert_eq!(ping(s), Ok(()));
    }
    assert_eq!(ping_from(a, front), Err(ErrorKind::ConnectionReset));
    assert_eq!(ping_from(ip("127.0.3.2"), front), Ok(()));
    held.pop();
    // The close reaches weir asynchronously.
    let deadline = std::time::Instant::now() + DEADLINE;
    let again = loop {
        if let Ok(mut s) = try_connect_from(a, front)
            && ping(&mut s).is_ok()
        {
            break s;
        }
        assert!(std::time::Instant::now() < deadline, "never let in again");
        std::thread::sleep(Duration::from_millis(20));
    };
    drop((held, again));

    // Rate: a burst of five, then one a second: of eight quick connections
    // five pass and three are refused. The global rate reaches `m` though
    // `m` has a table of its own. Exact when the eight take less than the
    // second a token takes to come back; a slower round (a loaded machine)
    // is done again from a fresh address.
    let mut refused = 0;
    for round in 0..3u8 {
        let b = Ipv4Addr::new(127, 0, 4, 1 + round);
        let began = std::time::Instant::now();
        let results: Vec<_> = (0..8).map(|_| ping_from(b, other)).collect();
        let passed = results.iter().filter(|r| r.is_ok()).count();
        refused += results.len() - passed;
        if began.elapsed() < Duration::from_millis(900) {
            assert_eq!(passed, 5, "{results:?}");
            break;
        }
        assert!(round < 2, "three rounds of eight took a second each");
    }
    let blocked = |listener: &str, reason: &str| {
        metric(
            admin,
            &format!("weir_firewall_blocked_total{{listener=\"{listener}\",reason=\"{reason}\"}}"),
        )
    };
    assert_eq!(blocked("m", "rate_limit"), refused as f64);
    assert_eq!(blocked("m", "concurrency"), 0.0);
    assert!(blocked("l", "concurrency") >= 1.0);
    assert_eq!(blocked("l", "rate_limit"), 0.0);
    for listener in ["l", "m"] {
        assert_eq!(
            metric(
                admin,
                &format!(
                    "weir_listener_connections_rejected_total{{listener=\"{listener}\",reason=\"rate_limit\"}}"
                ),
            ),
            blocked(listener, "rate_limit") + blocked(listener, "concurrency"),
            "{listener}"
        );
    }
}

/// Behind a trusted PROXY sender, the client the header names is the one
/// judged, not the sender.
#[test]
fn the_proxy_headers_client_is_the_one_judged() {
    let backend = counting_backend();
    let (admin, front) = (free_port(), free_port());
    let (_weir, _out) = start(
        "firewall-proxy",
        &format!(
            "[admin]\nhttp = \"{admin}\"\n[log]\naccess_log = false\n\
             [firewall]\ndeny = [\"203.0.113.9\"]\n\
             [[listeners]]\nname = \"l\"\nbind = \"{front}\"\n\
             proxy_protocol = {{ accept = true, trusted = [\"127.0.0.1\"] }}\n\
             [[listeners.routes]]\nname = \"r\"\npool = \"p\"\n\
             [[pools]]\nname = \"p\"\n[[pools.backends]]\naddress = \"{}\"\n",
            backend.addr
        ),
    );
    let through = |client: &str| {
        let mut s = connect_from(ip("127.0.0.1"), front);
        write!(s, "PROXY TCP4 {client} 192.0.2.1 40000 443\r\n").expect("header");
        ping(&mut s)
    };
    assert_eq!(through("203.0.113.9"), Err(ErrorKind::ConnectionReset));
    assert_eq!(through("203.0.113.10"), Ok(()));
    assert_eq!(backend.accepted.load(Relaxed), 1);
}

/// Many distinct sources, each a new client: the per-client table stays at
/// `max_tracked`, the oldest idle clients make room (counted), and weir's
/// memory does not follow the number of sources.
#[test]
fn a_flood_of_distinct_sources_keeps_the_table_bounded() {
    let backend = counting_backend();
    let (admin, front) = (free_port(), free_port());
    let (weir, _out) = start(
        "firewall-flood",
        &format!(
            "[admin]\nhttp = \"{admin}\"\n[log]\naccess_log = false\n\
             [firewall]\nper_client = {{ rate = 1, burst = 1000, concurrent = 10, max_tracked = 64 }}\n\
             [[listeners]]\nname = \"l\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"r\"\npool = \"p\"\n\
             [[pools]]\nname = \"p\"\n[[pools.backends]]\naddress = \"{}\"\n",
            backend.addr
        ),
    );
    let rss = || crate::cli::rss_kib(weir.0.id());
    // Warm up: the first connections grow weir's heap for reasons of their own.
    for i in 0..200u32 {
        let _ = ping_from(Ipv4Addr::from(0x7f05_0000 + i), front);
    }
    let before = rss();
    let sources = 4_000u32;
    let flood = std::time::Instant::now();
    for i in 0..sources {
        assert_eq!(ping_from(Ipv4Addr::from(0x7f06_0000 + i), front), Ok(()));
    }
    // Read before the metrics are scraped: rendering them takes memory the
    // allocator may keep.
    let grown = rss().saturating_sub(before);
    let per_source = flood.elapsed() / sources;
    let tracked = metric(admin, "weir_firewall_tracked_clients{listener=\"l\"}");
    assert!(tracked <= 64.0, "{tracked} clients tracked");
    // A client whose bucket has not refilled yet (a second at `rate = 1`)
    // is a loss when it makes room, and counted. A client makes room about
    // 64 sources after its own (one per shard): within its second, so most
    // of the flood is counted, when a source takes less than 5 ms; a
    // loaded machine may take longer, and then fewer are.
    let evicted = metric(admin, "weir_firewall_evicted_clients_total{listener=\"l\"}");
    let expected = if per_source < std::time::Duration::from_millis(5) {
        f64::from(sources) / 2.0
    } else {
        1.0
    };
    assert!(
        evicted >= expected,
        "{evicted} evicted at {per_source:?} per source"
    );
    // 4,000 entries would take ~400 KB; what is left is allocator noise.
    assert!(grown < 2_048, "weir grew {grown} kB over {sources} sources");
    assert_eq!(backend.accepted.load(Relaxed), 200 + sources as usize);
}

/// `per_client.requests`: HTTP requests over the rate are answered 429 with
/// the reason, on the same connection, and counted. The limit a reload
/// sets (or removes) holds for the requests of a connection it carries on
/// (they kept the limit of the listener they were accepted by).
#[test]
fn http_requests_over_the_rate_get_429() {
    let backend = crate::http::raw_backend(None, Duration::ZERO);
    let (admin, front) = (free_port(), free_port());
    let config = |firewall: &str| {
        format!(
            "[admin]\nhttp = \"{admin}\"\n[log]\naccess_log = false\n\
             {firewall}\
             [[listeners]]\nname = \"web\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"app\"\nmode = \"l7\"\n\
             [[listeners.routes.http]]\nname = \"all\"\npool = \"p\"\n\
             [[pools]]\nname = \"p\"\n[[pools.backends]]\naddress = \"{}\"\n",
            backend.addr
        )
    };
    let limited = |burst: u32| {
        format!("[firewall]\nper_client = {{ requests = 1, requests_burst = {burst} }}\n")
    };
    let file = crate::cli::temp_config("firewall-requests", &config(&limited(3)));
    let (weir, out) = crate::cli::run_weir(&file);
    let mut s = TcpStream::connect(front).expect("connect");
    s.set_read_timeout(Some(DEADLINE)).expect("timeout");
    for i in 1..=3 {
        let body = crate::http::keepalive_get(&mut s, "/").expect("served");
        assert!(body.contains(&format!("req={i}")), "{body}");
    }
    let body = crate::http::keepalive_get(&mut s, "/").expect("answered");
    assert_eq!(
        body,
        "weir: this client sends too many requests (rate_limit)\n"
    );
    assert_eq!(backend.requests.load(Relaxed), 3);
    assert_eq!(
        metric(
            admin,
            "weir_firewall_blocked_total{listener=\"web\",reason=\"request_rate\"}"
        ),
        1.0
    );
    let scrape = http_get(admin, "/metrics");
    assert!(
        scrape.contains("weir_http_requests_total{listener=\"web\",route=\"app\",code=\"4xx\"} 1"),
        "{scrape}"
    );

    // A reload removes the limit: the same connection is served again.
    std::fs::write(&file, config("")).expect("write");
    signal(&weir.0, rustix::process::Signal::HUP);
    wait_line(&out, "config reloaded");
    for _ in 0..3 {
        let body = crate::http::keepalive_get(&mut s, "/").expect("served");
        assert!(body.contains("req="), "{body}");
    }
    // Another brings a tighter one: it holds on the same connection.
    std::fs::write(&file, config(&limited(1))).expect("write");
    signal(&weir.0, rustix::process::Signal::HUP);
    wait_line(&out, "config reloaded");
    let body = crate::http::keepalive_get(&mut s, "/").expect("served");
    assert!(body.contains("req="), "{body}");
    let body = crate::http::keepalive_get(&mut s, "/").expect("answered");
    assert!(body.contains("(rate_limit)"), "{body}");
}

/// The operator's rules at runtime: `weir firewall deny` bans a source on
/// every listener at once, `--for` ends a ban by itself, `allow` lets a
/// source past the configured lists, `remove` undoes; `weir watch` shows
/// each change; rules survive a restart (the ended ones do not); and
/// `weir listener max-connections` changes a limit until cleared.
#[test]
fn runtime_rules_ban_expire_survive_a_restart_and_show_in_watch() {
    use crate::control::{ctl, json, text};
    let dir = test_dir("firewall-runtime");
    let db = dir.join("state.db");
    let backend = counting_backend();
    let (admin, grpc, front) = (free_port(), free_port(), free_port());
    let file = crate::cli::temp_config(
        "firewall-runtime",
        &format!(
            "[admin]\nhttp = \"{admin}\"\ngrpc = \"{grpc}\"\n[state]\npath = {:?}\n\
             [log]\naccess_log = false\n\
             [firewall]\ndeny = [\"127.0.9.0/24\"]\n\
             [[listeners]]\nname = \"l\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"r\"\npool = \"p\"\n\
             [[pools]]\nname = \"p\"\n[[pools.backends]]\naddress = \"{}\"\n",
            db.display().to_string(),
            backend.addr
        ),
    );
    let (mut first, _out) = crate::cli::run_weir(&file);
    let mut watch = crate::cli::weir()
        .args(["watch", "-o", "json"])
        .env("WEIR_ADMIN", grpc.to_string())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("weir watch");
    let events = crate::cli::lines(&mut watch);
    let watch = crate::cli::Running::new(watch);
    // The watch is subscribed once it shows a reload.
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        assert_eq!(text(&ctl(grpc, None, &["reload"])).0, 0);
        if events
            .recv_timeout(Duration::from_millis(300))
            .is_ok_and(|l| l.contains("\"type\":\"reload\""))
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "watch never started");
    }
    let banned = ip("127.0.7.1");
    assert_eq!(ping_from(banned, front), Ok(()));
    let (code, out, err) = text(&ctl(
        grpc,
        None,
        &["firewall", "deny", "127.0.7.1", "--reason", "scanner"],
    ));
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("127.0.7.1/32") && out.contains("scanner"),
        "{out}"
    );
    assert_eq!(ping_from(banned, front), Err(ErrorKind::ConnectionReset));
    assert_eq!(
        metric(
            admin,
            "weir_firewall_blocked_total{listener=\"l\",reason=\"banned\"}"
        ),
        1.0
    );

    // A timed ban of a network ends by itself.
    let (code, _, err) = text(&ctl(
        grpc,
        None,
        &["firewall", "deny", "127.0.8.0/24", "--for", "1s"],
    ));
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        ping_from(ip("127.0.8.200"), front),
        Err(ErrorKind::ConnectionReset)
    );
    let deadline = std::time::Instant::now() + DEADLINE;
    while ping_from(ip("127.0.8.200"), front).is_err() {
        assert!(std::time::Instant::now() < deadline, "the ban never ended");
        std::thread::sleep(Duration::from_millis(50));
    }
    // And leaves the state file then, not at the next start: a banning loop
    // of timed rules does not grow the file without end.
    let ended = "SELECT count(*) FROM firewall_rule WHERE network = '127.0.8.0/24'";
    while crate::control::query(&db, ended) != "(0,)\n" {
        assert!(
            std::time::Instant::now() < deadline,
            "the ended rule stays in the file"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // An exception to the configured deny list.
    assert_eq!(
        ping_from(ip("127.0.9.5"), front),
        Err(ErrorKind::ConnectionReset)
    );
    let (code, _, err) = text(&ctl(grpc, None, &["firewall", "allow", "127.0.9.5"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(ping_from(ip("127.0.9.5"), front), Ok(()));
    assert_eq!(
        ping_from(ip("127.0.9.6"), front),
        Err(ErrorKind::ConnectionReset)
    );

    let rules = json(&ctl(grpc, None, &["firewall", "list", "-o", "json"]));
    let nets: Vec<&str> = rules
        .as_array()
        .expect("rules")
        .iter()
        .filter_map(|r| r["network"].as_str())
        .collect();
    assert_eq!(nets, ["127.0.7.1/32", "127.0.9.5/32"], "{rules}");
    // Watch saw every change, the end of the timed ban included.
    for want in [
        "\"change\":\"added\"",
        "\"network\":\"127.0.8.0/24\"",
        "\"change\":\"ended\"",
    ] {
        wait_line(&events, want);
    }
    drop(watch);

    // Bad input is refused with a clear message.
    let (code, _, err) = text(&ctl(grpc, None, &["firewall", "deny", "not-an-ip"]));
    assert_eq!(code, 1);
    assert!(err.contains("is not an IP address or CIDR"), "{err}");
    let (code, _, err) = text(&ctl(grpc, None, &["firewall", "remove", "192.0.2.1"]));
    assert_eq!(code, 1);
    assert!(err.contains("no firewall rule for 192.0.2.1/32"), "{err}");

    // max_connections at runtime.
    let (code, out, err) = text(&ctl(grpc, None, &["listener", "max-connections", "l", "1"]));
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("max_connections 1 (configured 10000)"),
        "{out}"
    );
    let mut one = connect_from(ip("127.0.0.1"), front);
    assert_eq!(ping(&mut one), Ok(()));
    assert_eq!(
        ping_from(ip("127.0.0.2"), front),
        Err(ErrorKind::ConnectionReset)
    );
    let (code, _, err) = text(&ctl(
        grpc,
        None,
        &["listener", "max-connections", "l", "--clear"],
    ));
    assert_eq!(code, 0, "{err}");
    assert_eq!(ping_from(ip("127.0.0.2"), front), Ok(()));
    drop(one);

    // A restart applies the saved rules again.
    signal(&first.0, rustix::process::Signal::TERM);
    assert_eq!(crate::cli::wait_exit(&mut first.0).code(), Some(0));
    // Meanwhile an automated banning loop filled the file up to the limit
    // of rules (the two above and 99,998 more).
    let fill = format!(
        "import sqlite3\nc = sqlite3.connect({:?})\n\
         c.executemany(\"INSERT INTO firewall_rule VALUES (?, 'deny', NULL, '', 0)\", \
         (('10.%d.%d.%d/32' % (i >> 16, (i >> 8) & 255, i & 255),) for i in range(99998)))\n\
         c.commit()\n",
        db.display().to_string()
    );
    let filled = std::process::Command::new("python3")
        .args(["-c", &fill])
        .output()
        .expect("python3");
    assert!(filled.status.success(), "{filled:?}");
    let (_second, _out) = crate::cli::run_weir(&file);
    assert_eq!(ping_from(banned, front), Err(ErrorKind::ConnectionReset));
    assert_eq!(ping_from(ip("127.0.9.5"), front), Ok(()));
    // No rule beyond the limit, a clear refusal; a rule replaced is fine.
    let (code, _, err) = text(&ctl(grpc, None, &["firewall", "deny", "192.0.2.9"]));
    assert_eq!(code, 1);
    assert!(err.contains("100000 firewall rules already"), "{err}");
    let (code, _, err) = text(&ctl(
        grpc,
        None,
        &["firewall", "deny", "10.0.0.1", "--reason", "again"],
    ));
    assert_eq!(code, 0, "{err}");
    // A reason is a line, not a document.
    let long = "x".repeat(2000);
    let (code, _, err) = text(&ctl(
        grpc,
        None,
        &["firewall", "deny", "10.0.0.2", "--reason", &long],
    ));
    assert_eq!(code, 1);
    assert!(err.contains("at most 1024 bytes, not 2000"), "{err}");
    let (code, _, err) = text(&ctl(grpc, None, &["firewall", "remove", "127.0.7.1"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(ping_from(banned, front), Ok(()));
}

/// Writes a MaxMind-format country database with `mmdb-writer` (PyPI): each
/// (network, field, code) gives the network `{field: {iso_code: code}}`.
fn country_db(path: &std::path::Path, networks: &[(&str, &str, &str)]) {
    let inserts: String = networks
        .iter()
        .map(|(net, field, code)| {
            format!("w.insert_network(IPSet(['{net}']), {{'{field}': {{'iso_code': '{code}'}}}})\n")
        })
        .collect();
    let script = format!(
        "from mmdb_writer import MMDBWriter\nfrom netaddr import IPSet\n\
         w = MMDBWriter(ip_version=6, database_type='GeoLite2-Country', languages=['en'], \
         description='weir test', ipv4_compatible=True)\n{inserts}\
         w.to_db_file({:?})\n",
        path.display().to_string()
    );
    let out = std::process::Command::new("python3")
        .args(["-c", &script])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "mmdb-writer: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `countries`: the country a MaxMind-format database gives the client
/// (`country`, else `registered_country`; `--` for none) is denied, or must
/// be allowed; the database is read again on reload, and a missing or
/// broken one fails the reload and keeps the rules in force. A runtime
/// `allow` lets a source of a denied country in (and a runtime rule typed
/// in the IPv4-mapped form is the same rule).
#[test]
fn country_rules_from_a_maxmind_database() {
    use crate::control::{ctl, text};
    let dir = test_dir("firewall-geo");
    let db = dir.join("country.mmdb");
    country_db(
        &db,
        &[
            ("127.0.20.0/24", "country", "NL"),
            ("127.0.21.0/24", "country", "XX"),
            ("127.0.22.0/24", "registered_country", "DE"),
        ],
    );
    let backend = counting_backend();
    let (admin, grpc, front, only) = (free_port(), free_port(), free_port(), free_port());
    let (weir, out) = start(
        "firewall-geo",
        &format!(
            "[admin]\nhttp = \"{admin}\"\ngrpc = \"{grpc}\"\n[log]\nformat = \"json\"\n\
             [firewall]\ncountries = {{ database = {:?}, deny = [\"xx\"] }}\n\
             [[listeners]]\nname = \"l\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"r\"\npool = \"p\"\n\
             [[listeners]]\nname = \"nl\"\nbind = \"{only}\"\n\
             firewall = {{ countries = {{ database = {:?}, allow = [\"NL\"] }} }}\n\
             [[listeners.routes]]\nname = \"r\"\npool = \"p\"\n\
             [[pools]]\nname = \"p\"\n[[pools.backends]]\naddress = \"{}\"\n",
            db.display().to_string(),
            db.display().to_string(),
            backend.addr
        ),
    );
    assert_eq!(ping_from(ip("127.0.20.1"), front), Ok(()));
    assert_eq!(
        ping_from(ip("127.0.21.1"), front),
        Err(ErrorKind::ConnectionReset)
    );
    assert_eq!(ping_from(ip("127.0.22.1"), front), Ok(()));
    assert_eq!(ping_from(ip("127.0.30.1"), front), Ok(()));
    // Only NL: registered DE and no country at all are refused.
    assert_eq!(ping_from(ip("127.0.20.1"), only), Ok(()));
    assert_eq!(
        ping_from(ip("127.0.22.1"), only),
        Err(ErrorKind::ConnectionReset)
    );
    assert_eq!(
        ping_from(ip("127.0.30.1"), only),
        Err(ErrorKind::ConnectionReset)
    );
    assert_eq!(
        metric(
            admin,
            "weir_firewall_blocked_total{listener=\"l\",reason=\"country\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            admin,
            "weir_firewall_blocked_total{listener=\"nl\",reason=\"country\"}"
        ),
        2.0
    );
    assert_eq!(backend.accepted.load(Relaxed), 4);

    // A new database under the same name: read again on reload.
    country_db(&db, &[("127.0.20.0/24", "country", "XX")]);
    signal(&weir.0, rustix::process::Signal::HUP);
    wait_line(&out, "config reloaded");
    assert_eq!(
        ping_from(ip("127.0.20.1"), front),
        Err(ErrorKind::ConnectionReset)
    );
    assert_eq!(ping_from(ip("127.0.21.1"), front), Ok(()));
    // An operator's exception for one address of a denied country; the
    // mapped form names the same rule.
    let (code, _, err) = text(&ctl(grpc, None, &["firewall", "deny", "127.0.20.1"]));
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = text(&ctl(
        grpc,
        None,
        &["firewall", "allow", "::ffff:127.0.20.1"],
    ));
    assert_eq!(code, 0, "{err}");
    let (code, list, err) = text(&ctl(grpc, None, &["firewall", "list"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(list.matches("127.0.20.1/32").count(), 1, "{list}");
    assert!(!list.contains("ffff"), "{list}");
    assert_eq!(ping_from(ip("127.0.20.1"), front), Ok(()));
    let (code, _, err) = text(&ctl(grpc, None, &["firewall", "remove", "127.0.20.1"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        ping_from(ip("127.0.20.1"), front),
        Err(ErrorKind::ConnectionReset)
    );

    // Broken, then missing: the reload fails, naming the key and the
    // reason, and the rules in force stay.
    std::fs::write(&db, b"not a database").expect("break");
    signal(&weir.0, rustix::process::Signal::HUP);
    let line = wait_line(&out, "reload failed");
    assert!(line.contains("firewall.countries.database"), "{line}");
    assert!(line.contains("not a MaxMind-format database"), "{line}");
    std::fs::remove_file(&db).expect("remove");
    signal(&weir.0, rustix::process::Signal::HUP);
    let line = wait_line(&out, "reload failed");
    assert!(line.contains("cannot read"), "{line}");
    assert_eq!(
        ping_from(ip("127.0.20.1"), front),
        Err(ErrorKind::ConnectionReset)
    );
    assert_eq!(ping_from(ip("127.0.21.1"), front), Ok(()));
}

/// `weir listener max-connections` stays in force across a reload, even one
/// that changes the configured limit; `--clear` then brings the limit the
/// reload configured, and a restart the configured one (the setting is not
/// kept in the state file).
#[test]
fn a_runtime_max_connections_survives_a_reload_until_cleared_or_a_restart() {
    use crate::control::{ctl, text};
    let dir = test_dir("max-connections-reload");
    let backend = counting_backend();
    let (admin, grpc, front) = (free_port(), free_port(), free_port());
    let with_limit = |max: u32| {
        format!(
            "[admin]\nhttp = \"{admin}\"\ngrpc = \"{grpc}\"\n[state]\npath = {:?}\n\
             [log]\naccess_log = false\n\
             [[listeners]]\nname = \"l\"\nbind = \"{front}\"\nmax_connections = {max}\n\
             [[listeners.routes]]\nname = \"r\"\npool = \"p\"\n\
             [[pools]]\nname = \"p\"\n[[pools.backends]]\naddress = \"{}\"\n",
            dir.join("state.db").display().to_string(),
            backend.addr
        )
    };
    let file = crate::cli::temp_config("max-connections-reload", &with_limit(2));
    let (mut running, _out) = crate::cli::run_weir(&file);
    let in_force = || metric(admin, "weir_listener_max_connections{listener=\"l\"}");
    assert_eq!(in_force(), 2.0);

    let (code, out, err) = text(&ctl(grpc, None, &["listener", "max-connections", "l", "1"]));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("max_connections 1 (configured 2)"), "{out}");
    let mut held = vec![connect_from(ip("127.0.0.1"), front)];
    assert_eq!(ping(&mut held[0]), Ok(()));
    assert_eq!(
        ping_from(ip("127.0.0.2"), front),
        Err(ErrorKind::ConnectionReset)
    );

    // The reload raises the configured limit to 3: the runtime 1 stays.
    std::fs::write(&*file, with_limit(3)).expect("rewrite");
    let (code, _, err) = text(&ctl(grpc, None, &["reload"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(in_force(), 1.0);
    assert_eq!(
        ping_from(ip("127.0.0.2"), front),
        Err(ErrorKind::ConnectionReset)
    );
    assert_eq!(ping(&mut held[0]), Ok(()), "the open connection goes on");

    // Cleared: the limit the reload configured, exact to the count.
    let (code, out, err) = text(&ctl(
        grpc,
        None,
        &["listener", "max-connections", "l", "--clear"],
    ));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("max_connections 3 (configured 3)"), "{out}");
    assert_eq!(in_force(), 3.0);
    for last in 2..=3 {
        let mut s = connect_from(Ipv4Addr::new(127, 0, 0, last), front);
        assert_eq!(ping(&mut s), Ok(()), "connection from 127.0.0.{last}");
        held.push(s);
    }
    assert_eq!(
        ping_from(ip("127.0.0.4"), front),
        Err(ErrorKind::ConnectionReset)
    );

    // Set again, then a restart: the configured limit, state file or not.
    let (code, _, err) = text(&ctl(grpc, None, &["listener", "max-connections", "l", "1"]));
    assert_eq!(code, 0, "{err}");
    drop(held);
    signal(&running.0, rustix::process::Signal::TERM);
    assert_eq!(crate::cli::wait_exit(&mut running.0).code(), Some(0));
    let (_second, _out) = crate::cli::run_weir(&file);
    assert_eq!(in_force(), 3.0);
}

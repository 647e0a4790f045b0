//! Backends from DNS with a real DNS server: dnsmasq (Debian) serves SRV and
//! A records that the test changes while weir runs (dnsmasq restarted on the
//! same port with other records): added, removed, reweighted and
//! re-prioritised backends, TTLs respected, the server down, an empty
//! answer. What weir did is read from its JSON API and metrics.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::cli::{
    DEADLINE, Running, echo_backend, free_port, http_get, run_weir, signal, start_weir,
    temp_config, test_dir, wait_line, which,
};
use crate::http::{metric, start};

/// dnsmasq on 127.0.0.1:`port` with nothing but `args` to answer from (no
/// upstream, no /etc/hosts), in the foreground, stopped when dropped.
pub(crate) fn spawn_dnsmasq(dir: &Path, port: u16, args: &[String]) -> Running {
    let bin = which("dnsmasq")
        .expect("dnsmasq is not installed: run scripts/test.sh, which installs dnsmasq-base");
    Running::new(
        Command::new(bin)
            .args([
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                "--listen-address=127.0.0.1",
                "--user=root",
                "--log-facility=-",
            ])
            .arg(format!("--port={port}"))
            .arg(format!(
                "--pid-file={}",
                dir.join(format!("dnsmasq-{port}.pid")).display()
            ))
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("dnsmasq"),
    )
}

/// dnsmasq answering alone for `test.` (a name it has no records for is
/// NXDOMAIN) with `records` (options such as `--srv-host=...`), every answer
/// with TTL `ttl`.
pub(crate) fn dnsmasq(dir: &Path, port: u16, ttl: u32, records: &[String]) -> Running {
    let mut args = vec!["--local=/test/".to_owned(), format!("--local-ttl={ttl}")];
    args.extend_from_slice(records);
    let running = spawn_dnsmasq(dir, port, &args);
    // Ready when its port takes TCP connections (it serves DNS over TCP too).
    let end = Instant::now() + DEADLINE;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < end, "dnsmasq on {port} never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
    running
}

/// Stops dnsmasq and waits until its port is free again.
fn stop(dns: Running, port: u16) {
    drop(dns);
    let end = Instant::now() + DEADLINE;
    while TcpListener::bind(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < end, "dnsmasq on {port} never let go");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn srv(name: &str, target: &str, port: u16, priority: u16, weight: u16) -> String {
    format!("--srv-host={name},{target},{port},{priority},{weight}")
}

/// The pool's backends as (name, tier, weight, effective weight, health).
fn backends(admin: SocketAddr, pool: &str) -> Vec<(String, u64, u64, u64, String)> {
    let answer = http_get(admin, &format!("/api/v1/pools/{pool}/backends"));
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    let v: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {answer}"));
    v["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .map(|b| {
            (
                b["name"].as_str().unwrap_or_default().to_owned(),
                b["tier"].as_u64().unwrap_or(u64::MAX),
                b["weight"].as_u64().unwrap_or(u64::MAX),
                b["effective_weight"].as_u64().unwrap_or(u64::MAX),
                b["health"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// Waits until `check` holds for the pool's backends.
fn wait_backends(
    admin: SocketAddr,
    what: &str,
    check: impl Fn(&[(String, u64, u64, u64, String)]) -> bool,
) -> Vec<(String, u64, u64, u64, String)> {
    let end = Instant::now() + DEADLINE;
    loop {
        let now = backends(admin, "db");
        if check(&now) {
            return now;
        }
        assert!(Instant::now() < end, "{what}: backends are {now:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn find(
    list: &[(String, u64, u64, u64, String)],
    addr: SocketAddr,
) -> Option<&(String, u64, u64, u64, String)> {
    list.iter().find(|b| b.0 == addr.to_string())
}

/// Waits until `count` has grown by two and at least `at_least` has passed.
fn wait_growth(what: &str, count: impl Fn() -> f64, at_least: Duration) {
    let (before, since) = (count(), Instant::now());
    let end = since + DEADLINE;
    while count() < before + 2.0 || since.elapsed() < at_least {
        assert!(Instant::now() < end, "no {what} counted");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The admin state of backend `b` of pool `db`.
fn admin_of(admin: SocketAddr, b: SocketAddr) -> String {
    let answer = http_get(admin, &format!("/api/v1/pools/db/backends/{b}"));
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    v["admin"].as_str().unwrap_or_default().to_owned()
}

/// dnsmasq options: `app.test` at 127.0.0.1, and SRV records `name` for it
/// at each of `ports`.
fn app_records(name: &str, ports: &[u16]) -> Vec<String> {
    let mut r = vec!["--host-record=app.test,127.0.0.1".to_owned()];
    r.extend(ports.iter().map(|p| srv(name, "app.test", *p, 0, 1)));
    r
}

#[test]
fn srv_records_become_backends_and_follow_every_change_in_dns() {
    let dir = test_dir("discovery-srv");
    let dns_port = free_port().port();
    let (b1, b2, b3) = (echo_backend(), echo_backend(), echo_backend());
    let name = "_pg._tcp.db.test";
    let host = "--host-record=pg.test,127.0.0.1".to_owned();
    let dns = dnsmasq(
        &dir,
        dns_port,
        1,
        &[
            host.clone(),
            srv(name, "pg.test", b1.port(), 0, 10),
            srv(name, "pg.test", b2.port(), 0, 20),
        ],
    );
    let (admin, front, grpc) = (free_port(), free_port(), free_port());
    let (_weir, _out) = start(
        "discovery-srv",
        &format!(
            "[admin]\nhttp = \"{admin}\"\ngrpc = \"{grpc}\"\n\
             [[listeners]]\nname = \"front\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"r\"\npool = \"db\"\n\
             [[pools]]\nname = \"db\"\ndrain_timeout = \"1s\"\n\
             discover = {{ srv = \"{name}\", resolver = \"127.0.0.1:{dns_port}\", \
             min_interval = \"200ms\", max_interval = \"2s\", timeout = \"500ms\", hold = \"2s\" }}\n\
             [pools.health]\ntype = \"tcp\"\ninterval = \"200ms\"\ntimeout = \"200ms\"\n"
        ),
    );
    // At start: both records, as tier and weight, probed and up.
    let now = wait_backends(admin, "start", |l| {
        l.len() == 2 && l.iter().all(|b| b.4 == "up")
    });
    assert_eq!(find(&now, b1).map(|b| (b.1, b.2)), Some((0, 10)), "{now:?}");
    assert_eq!(find(&now, b2).map(|b| (b.1, b.2)), Some((0, 20)), "{now:?}");
    // Traffic goes through.
    let mut c = TcpStream::connect(front).expect("connect");
    c.set_read_timeout(Some(DEADLINE)).expect("timeout");
    std::io::Write::write_all(&mut c, b"ping").expect("write");
    let mut buf = [0u8; 4];
    std::io::Read::read_exact(&mut c, &mut buf).expect("echo");
    drop(c);
    assert_eq!(metric(admin, "weir_discovery_records{pool=\"db\"}"), 2.0);
    let answered = metric(
        admin,
        "weir_discovery_last_success_timestamp_seconds{pool=\"db\"}",
    );
    let unix_now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    assert!(
        answered > unix_now - 30.0 && answered <= unix_now + 1.0,
        "last answer at {answered}, now {unix_now}"
    );

    // `weir watch` follows what discovery does to the pool.
    let mut watch = crate::cli::weir()
        .args(["watch", "--pool", "db", "--admin", &grpc.to_string()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("weir watch");
    let watched = crate::cli::lines(&mut watch);
    // It says so on stderr once its stream is open.
    let mut said = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(watch.stderr.take().expect("stderr")),
        &mut said,
    )
    .expect("watch's first line");
    assert!(said.starts_with("watching pool db"), "{said}");
    let _watch = Running::new(watch);

    // b1 leaves, b2's weight drops to 0, alone in its priority (so it
    // weighs like any: RFC 2782's "no weighting to do"), b3 arrives in
    // tier 1.
    stop(dns, dns_port);
    let dns = dnsmasq(
        &dir,
        dns_port,
        1,
        &[
            host.clone(),
            srv(name, "pg.test", b2.port(), 2, 0),
            srv(name, "pg.test", b3.port(), 1, 5),
        ],
    );
    let now = wait_backends(admin, "b3 added", |l| {
        find(l, b3).is_some_and(|b| b.4 == "up") && find(l, b2).is_some_and(|b| b.1 == 2)
    });
    assert_eq!(find(&now, b3).map(|b| (b.1, b.2)), Some((1, 5)), "{now:?}");
    // b2's record moved to priority 2: the backend moved to tier 2.
    assert_eq!(find(&now, b2).map(|b| (b.1, b.2)), Some((2, 1)), "{now:?}");
    // b1 drains at weight 0, then leaves the pool (drain_timeout 1s).
    if let Some(b) = find(&now, b1) {
        assert_eq!(
            b.3, 0,
            "a leaving backend takes no new connections: {now:?}"
        );
    }
    let history = http_get(admin, &format!("/api/v1/pools/db/backends/{b3}/history"));
    assert!(
        history.contains("\"kind\":\"discovery\"")
            && history.contains("\"to\":\"tier 1 weight 5\""),
        "{history}"
    );
    assert!(
        history.contains("discovery: SRV _pg._tcp.db.test"),
        "{history}"
    );
    let line = crate::cli::wait_line(&watched, &format!("backend db/{b3}  discovery"));
    assert!(
        line.contains("tier 1 weight 5") && line.contains("(discovery: SRV _pg._tcp.db.test"),
        "{line}"
    );
    wait_backends(admin, "b1 removed", |l| {
        find(l, b1).is_none() && l.len() == 2
    });
    // Gone from the metrics too.
    let scrape = http_get(admin, "/metrics");
    assert!(
        !scrape.contains(&format!("backend=\"{b1}\"")),
        "b1's series are still there"
    );
    assert!(scrape.contains(&format!("backend=\"{b3}\"")));

    // The SRV records stay, but their target's address lookup fails (the
    // name is sent to a server that refuses it): the target keeps its last
    // addresses, so the pool keeps its backends past the hold; with no
    // target answered, each question counts as failed, not as `ok` (which
    // would keep `last_success` fresh and the alert on it quiet).
    stop(dns, dns_port);
    let refusing_port = free_port().port();
    let refusing = spawn_dnsmasq(&dir, refusing_port, &[]);
    let dns = dnsmasq(
        &dir,
        dns_port,
        1,
        &[
            format!("--server=/pg.test/127.0.0.1#{refusing_port}"),
            srv(name, "pg.test", b2.port(), 2, 0),
            srv(name, "pg.test", b3.port(), 1, 5),
        ],
    );
    let counted = |admin, result: &str| {
        metric(
            admin,
            &format!("weir_discovery_resolutions_total{{pool=\"db\",result=\"{result}\"}}"),
        )
    };
    // Once the records of the old server's last answer have expired.
    wait_growth(
        "refused target lookups",
        || counted(admin, "server_failure"),
        Duration::ZERO,
    );
    let answered = counted(admin, "ok");
    wait_growth(
        "refused target lookups",
        || counted(admin, "server_failure"),
        Duration::from_millis(3500),
    );
    assert_eq!(
        counted(admin, "ok"),
        answered,
        "a failed question counted ok"
    );
    let now = backends(admin, "db");
    assert!(
        find(&now, b2).is_some() && find(&now, b3).is_some(),
        "a failed target lookup emptied the pool: {now:?}"
    );
    drop(refusing);

    // The DNS server goes away: nothing changes, the failures are counted,
    // and the last good answer's time stays.
    stop(dns, dns_port);
    let last_good = metric(
        admin,
        "weir_discovery_last_success_timestamp_seconds{pool=\"db\"}",
    );
    let failures = |admin| {
        ["timeout", "error", "server_failure"]
            .iter()
            .map(|r| {
                metric(
                    admin,
                    &format!("weir_discovery_resolutions_total{{pool=\"db\",result=\"{r}\"}}"),
                )
            })
            .sum::<f64>()
    };
    wait_growth("failed resolutions", || failures(admin), Duration::ZERO);
    let now = backends(admin, "db");
    assert!(
        find(&now, b2).is_some() && find(&now, b3).is_some(),
        "{now:?}"
    );
    assert_eq!(
        metric(
            admin,
            "weir_discovery_last_success_timestamp_seconds{pool=\"db\"}"
        ),
        last_good
    );

    // Back, with no records at all (NXDOMAIN): the set is kept for the
    // hold (2s), then drained and removed.
    let dns = dnsmasq(&dir, dns_port, 1, &[host]);
    let empty_at = Instant::now();
    let end = Instant::now() + DEADLINE;
    while metric(
        admin,
        "weir_discovery_resolutions_total{pool=\"db\",result=\"empty\"}",
    ) < 1.0
    {
        assert!(Instant::now() < end, "no empty answer counted");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(backends(admin, "db").len(), 2, "emptied before the hold");
    wait_backends(admin, "emptied after the hold", |l| l.is_empty());
    assert!(empty_at.elapsed() >= Duration::from_secs(2));
    assert_eq!(metric(admin, "weir_discovery_records{pool=\"db\"}"), 0.0);
    drop(dns);
}

/// Targets whose address lookups go unanswered (their server is silent)
/// neither hold up nor sink the rest of the answer: the targets are asked at
/// the same time, the silent ones are given up before the resolution's own
/// end, and the target that answered becomes a backend. Asked one after
/// another, the silent ones took the whole resolution past its bound.
#[test]
fn silent_srv_targets_do_not_hold_up_the_others() {
    let dir = test_dir("discovery-silent");
    let dns_port = free_port().port();
    // A DNS server that takes queries and never answers.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let silent_port = silent.local_addr().expect("addr").port();
    let name = "_pg._tcp.db.test";
    let b1 = TcpListener::bind("127.0.0.1:0").expect("bind");
    let b1_addr = b1.local_addr().expect("addr");
    std::thread::spawn(move || for _ in b1.incoming() {});
    let mut records = vec![
        format!("--server=/slow.test/127.0.0.1#{silent_port}"),
        "--host-record=pg.test,127.0.0.1".to_owned(),
        srv(name, "pg.test", b1_addr.port(), 0, 1),
    ];
    for i in 0..4 {
        records.push(srv(name, &format!("s{i}.slow.test"), 5432, 0, 1));
    }
    let _dns = dnsmasq(&dir, dns_port, 1, &records);
    let admin = free_port();
    let (_weir, out) = start(
        "discovery-silent",
        &format!(
            "[admin]\nhttp = \"{admin}\"\n\
             [[listeners]]\nname = \"front\"\nbind = \"127.0.0.1:0\"\n\
             [[listeners.routes]]\nname = \"r\"\npool = \"db\"\n\
             [[pools]]\nname = \"db\"\n\
             discover = {{ srv = \"{name}\", resolver = \"127.0.0.1:{dns_port}\", \
             timeout = \"300ms\", min_interval = \"100ms\" }}\n\
             [pools.health]\ntype = \"tcp\"\ninterval = \"200ms\"\n"
        ),
    );
    let now = wait_backends(admin, "the answering target", |l| {
        find(l, b1_addr).is_some()
    });
    assert_eq!(now.len(), 1, "{now:?}");
    assert!(
        metric(
            admin,
            "weir_discovery_resolutions_total{pool=\"db\",result=\"ok\"}"
        ) >= 1.0
    );
    let line = wait_line(&out, "SRV targets' addresses could not be resolved");
    assert!(
        line.contains("count=4") && line.contains("s0.slow.test"),
        "{line}"
    );
    drop(silent);
}

#[test]
fn a_records_at_a_port_refresh_as_their_ttl_says() {
    let dir = test_dir("discovery-a");
    let dns_port = free_port().port();
    // Two addresses, one port: backends on 127.0.0.21 and 127.0.0.22.
    let port = free_port().port();
    let listen = |ip: [u8; 4]| {
        let l = TcpListener::bind(SocketAddr::from((ip, port))).expect("bind");
        std::thread::spawn(move || for _ in l.incoming() {});
    };
    listen([127, 0, 0, 21]);
    listen([127, 0, 0, 22]);
    // And an AAAA record, on ::1.
    let l6 = TcpListener::bind(SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)))
        .expect("bind ::1");
    std::thread::spawn(move || for _ in l6.incoming() {});
    let records = |ips: &[&str]| -> Vec<String> {
        ips.iter()
            .map(|ip| format!("--host-record=api.test,{ip}"))
            .collect()
    };
    let dns = dnsmasq(
        &dir,
        dns_port,
        3,
        &records(&["127.0.0.21", "127.0.0.22", "::1"]),
    );
    let (admin, fixed) = (free_port(), echo_backend());
    let (_weir, _out) = start(
        "discovery-a",
        &format!(
            "[admin]\nhttp = \"{admin}\"\n\
             [[listeners]]\nname = \"front\"\nbind = \"127.0.0.1:0\"\n\
             [[listeners.routes]]\nname = \"r\"\npool = \"db\"\n\
             [[pools]]\nname = \"db\"\ndrain_timeout = \"500ms\"\n\
             discover = {{ name = \"api.test\", port = {port}, weight = 7, \
             resolver = \"127.0.0.1:{dns_port}\", min_interval = \"100ms\", max_interval = \"10s\" }}\n\
             [pools.health]\ntype = \"tcp\"\ninterval = \"200ms\"\n\
             [[pools.backends]]\nname = \"static\"\naddress = \"{fixed}\"\n"
        ),
    );
    let a21: SocketAddr = format!("127.0.0.21:{port}").parse().expect("addr");
    let a22: SocketAddr = format!("127.0.0.22:{port}").parse().expect("addr");
    let a6: SocketAddr = format!("[::1]:{port}").parse().expect("addr");
    // The static backend and the three discovered ones (A and AAAA), side by side.
    let now = wait_backends(admin, "start", |l| l.len() == 4);
    assert!(
        find(&now, a6).is_some(),
        "no backend from the AAAA record: {now:?}"
    );
    assert!(now.iter().any(|b| b.0 == "static" && b.2 == 1), "{now:?}");
    assert!(
        now.iter().filter(|b| b.0 != "static").all(|b| b.2 == 7),
        "{now:?}"
    );
    // A TTL of 3s: in 2.5s weir asks at most twice, not every 100ms.
    let asked = metric(
        admin,
        "weir_discovery_resolutions_total{pool=\"db\",result=\"ok\"}",
    );
    std::thread::sleep(Duration::from_millis(2500));
    let more = metric(
        admin,
        "weir_discovery_resolutions_total{pool=\"db\",result=\"ok\"}",
    ) - asked;
    assert!(more <= 2.0, "{more} resolutions in 2.5s with a 3s TTL");
    // Two addresses go; within a TTL and the drain they leave the pool.
    stop(dns, dns_port);
    let _dns = dnsmasq(&dir, dns_port, 3, &records(&["127.0.0.21"]));
    let now = wait_backends(admin, "127.0.0.22 and ::1 removed", |l| l.len() == 2);
    assert!(
        find(&now, a21).is_some() && find(&now, a22).is_none() && find(&now, a6).is_none(),
        "{now:?}"
    );
    assert!(
        now.iter().any(|b| b.0 == "static"),
        "the static one stays: {now:?}"
    );
}

#[test]
fn a_drained_discovered_backend_stays_drained_across_a_restart() {
    let dir = test_dir("discovery-state");
    let dns_port = free_port().port();
    let (b1, b2) = (echo_backend(), echo_backend());
    let name = "_app._tcp.state.test";
    let _dns = dnsmasq(
        &dir,
        dns_port,
        30,
        &[
            "--host-record=app.test,127.0.0.1".to_owned(),
            srv(name, "app.test", b1.port(), 0, 1),
            srv(name, "app.test", b2.port(), 0, 1),
        ],
    );
    let admin = free_port();
    let config = format!(
        "[admin]\nhttp = \"{admin}\"\n[state]\npath = {:?}\n\
         [[listeners]]\nname = \"front\"\nbind = \"127.0.0.1:0\"\n\
         [[listeners.routes]]\nname = \"r\"\npool = \"db\"\n\
         [[pools]]\nname = \"db\"\n\
         discover = {{ srv = \"{name}\", resolver = \"127.0.0.1:{dns_port}\" }}\n",
        dir.join("state.db").display().to_string()
    );
    {
        let (_weir, _out) = start("discovery-state", &config);
        let drained =
            crate::cli::http_post(admin, &format!("/api/v1/pools/db/backends/{b1}/drain"));
        assert!(drained.starts_with("HTTP/1.1 200"), "{drained}");
        assert_eq!(admin_of(admin, b1), "drain");
    }
    // A new process finds the same addresses in DNS and their saved state.
    let (_weir, _out) = start("discovery-state", &config);
    assert_eq!(admin_of(admin, b1), "drain");
    assert_eq!(admin_of(admin, b2), "enabled");
}

/// A discovered address that DNS no longer gives when weir starts again
/// is forgotten from the state file once DNS has answered, and not before
/// (DNS silent at the start says nothing about it): its saved state does
/// not wait for the address to come back, and the file does not keep
/// every address a rolling deploy ever had.
#[test]
fn an_address_gone_from_dns_across_a_restart_is_forgotten_once_dns_answers() {
    let dir = test_dir("discovery-forget");
    let dns_port = free_port().port();
    let (b1, b2) = (echo_backend(), echo_backend());
    let name = "_app._tcp.forget.test";
    let dns = dnsmasq(
        &dir,
        dns_port,
        1,
        &app_records(name, &[b1.port(), b2.port()]),
    );
    let (admin, grpc) = (free_port(), free_port());
    let config = format!(
        "[admin]\nhttp = \"{admin}\"\ngrpc = \"{grpc}\"\n[state]\npath = {:?}\n\
         [[listeners]]\nname = \"front\"\nbind = \"127.0.0.1:0\"\n\
         [[listeners.routes]]\nname = \"r\"\npool = \"db\"\n\
         [[pools]]\nname = \"db\"\n\
         discover = {{ srv = \"{name}\", resolver = \"127.0.0.1:{dns_port}\", min_interval = \"200ms\" }}\n",
        dir.join("state.db").display().to_string()
    );
    let orphaned = || -> Vec<String> {
        let status =
            crate::control::json(&crate::control::ctl(grpc, None, &["status", "-o", "json"]));
        status["orphaned_state"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|o| o["backend"].as_str().map(str::to_owned))
            .collect()
    };
    {
        let (_weir, _out) = start("discovery-forget", &config);
        wait_backends(admin, "both discovered", |l| {
            find(l, b1).is_some() && find(l, b2).is_some()
        });
        let disabled =
            crate::cli::http_post(admin, &format!("/api/v1/pools/db/backends/{b1}/disable"));
        assert!(disabled.starts_with("HTTP/1.1 200"), "{disabled}");
    }
    // DNS silent at the start: b1's disable is kept, applied to nothing.
    stop(dns, dns_port);
    let dns = {
        let (mut weir, out) = start("discovery-forget", &config);
        assert!(orphaned().contains(&b1.to_string()), "{:?}", orphaned());
        // DNS answers without b1: forgotten.
        let dns = dnsmasq(&dir, dns_port, 1, &app_records(name, &[b2.port()]));
        let line = wait_line(&out, "forgetting the saved state");
        assert!(
            line.contains(&b1.to_string()) && line.contains("DNS no longer gives it"),
            "{line}"
        );
        assert!(!orphaned().contains(&b1.to_string()), "{:?}", orphaned());
        // Stopped, not killed: the state file's writer is done first.
        signal(&weir.0, rustix::process::Signal::TERM);
        assert!(crate::cli::wait_exit(&mut weir.0).success());
        dns
    };
    // Back in DNS, b1 starts afresh, not disabled.
    stop(dns, dns_port);
    let _dns = dnsmasq(
        &dir,
        dns_port,
        1,
        &app_records(name, &[b1.port(), b2.port()]),
    );
    let (_weir, _out) = start("discovery-forget", &config);
    wait_backends(admin, "both discovered again", |l| {
        find(l, b1).is_some() && find(l, b2).is_some()
    });
    assert_eq!(admin_of(admin, b1), "enabled");
}

/// A backend of the config file that DNS also lists keeps its saved state
/// when DNS drops the address: an operator's disable survives the drain
/// and removal of the discovered copy, and a restart.
#[test]
fn dns_dropping_a_static_backends_address_keeps_its_saved_state() {
    let dir = test_dir("discovery-static-state");
    let dns_port = free_port().port();
    let (b1, b2) = (echo_backend(), echo_backend());
    let name = "_app._tcp.static.test";
    let dns = dnsmasq(
        &dir,
        dns_port,
        1,
        &app_records(name, &[b1.port(), b2.port()]),
    );
    let admin = free_port();
    // b1 is also in the file, unnamed: named by its address, as DNS names it.
    let config = format!(
        "[admin]\nhttp = \"{admin}\"\n[state]\npath = {:?}\n\
         [[listeners]]\nname = \"front\"\nbind = \"127.0.0.1:0\"\n\
         [[listeners.routes]]\nname = \"r\"\npool = \"db\"\n\
         [[pools]]\nname = \"db\"\ndrain_timeout = \"200ms\"\n\
         discover = {{ srv = \"{name}\", resolver = \"127.0.0.1:{dns_port}\", min_interval = \"200ms\" }}\n\
         [[pools.backends]]\naddress = \"{b1}\"\n",
        dir.join("state.db").display().to_string()
    );
    let _dns = {
        let (_weir, out) = start("discovery-static-state", &config);
        wait_backends(admin, "b2 discovered", |l| find(l, b2).is_some());
        let disabled =
            crate::cli::http_post(admin, &format!("/api/v1/pools/db/backends/{b1}/disable"));
        assert!(disabled.starts_with("HTTP/1.1 200"), "{disabled}");
        assert_eq!(admin_of(admin, b1), "disabled");
        // DNS drops b1: its discovered copy drains, then leaves.
        stop(dns, dns_port);
        let dns = dnsmasq(&dir, dns_port, 1, &app_records(name, &[b2.port()]));
        let line = wait_line(&out, "discovery changed the pool's backends");
        assert!(!line.contains(&b1.to_string()), "{line}");
        // Until the discovered set has b1 removed: no line names it, and the
        // backend of the file stays, disabled.
        let end = Instant::now() + Duration::from_secs(2);
        while Instant::now() < end {
            if let Ok(l) = out.recv_timeout(Duration::from_millis(100)) {
                assert!(!l.contains(&b1.to_string()), "{l}");
            }
        }
        assert_eq!(admin_of(admin, b1), "disabled");
        dns
    };
    // A new process reads the operator's disable from the state file.
    let (_weir, _out) = start("discovery-static-state", &config);
    wait_backends(admin, "b2 discovered again", |l| find(l, b2).is_some());
    assert_eq!(admin_of(admin, b1), "disabled");
    assert_eq!(admin_of(admin, b2), "enabled");
}

/// Without `resolver`, discovery asks the system's servers
/// (`/etc/resolv.conf`). weir runs in a network and a mount namespace of its
/// own, where a resolv.conf naming a dnsmasq on 127.0.0.1:53 is mounted over
/// the system's.
#[test]
fn the_system_resolver_is_the_default() {
    use crate::upgrade::{Netns, enter};
    let dir = test_dir("discovery-system");
    let ns = Netns::new();
    let resolv = dir.join("resolv.conf");
    std::fs::write(&resolv, "nameserver 127.0.0.1\nsearch search.test\n").expect("resolv.conf");
    let dnsmasq_bin = which("dnsmasq").expect("dnsmasq (scripts/test.sh installs dnsmasq-base)");
    let _dns = Running::new(
        Command::new("nsenter")
            .arg(format!("--net={}", ns.path.display()))
            .arg(dnsmasq_bin)
            .args([
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                "--listen-address=127.0.0.1",
                "--port=53",
                "--user=root",
                "--local=/test/",
                "--host-record=api.test,127.0.0.31",
                // What the search domain would make of a name DNS does not
                // have: never asked.
                "--host-record=gone.test.search.test,127.0.0.99",
            ])
            .arg(format!(
                "--pid-file={}",
                dir.join("dnsmasq-system.pid").display()
            ))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("dnsmasq"),
    );
    let admin: SocketAddr = "127.0.0.1:7590".parse().expect("addr");
    let config = crate::cli::temp_config(
        "discovery-system",
        &format!(
            "[admin]\nhttp = \"{admin}\"\n\
             [[listeners]]\nname = \"front\"\nbind = \"127.0.0.1:7500\"\n\
             [[listeners.routes]]\nname = \"r\"\npool = \"db\"\n\
             [[pools]]\nname = \"db\"\n\
             discover = {{ name = \"api.test\", port = 8080, min_interval = \"100ms\" }}\n\
             [[pools]]\nname = \"gone\"\n\
             discover = {{ name = \"gone.test\", port = 8080, min_interval = \"100ms\" }}\n"
        ),
    );
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", ns.path.display()))
        .args(["unshare", "--mount", "sh", "-c"])
        .arg("mount --bind \"$0\" /etc/resolv.conf && exec \"$1\" run --config \"$2\"")
        .arg(&resolv)
        .arg(crate::cli::weir().get_program())
        .arg(&config);
    let (_weir, _out) = crate::cli::start_weir(cmd);
    // The admin API answers inside the namespace: ask from a thread there.
    let path = ns.path.clone();
    let found = std::thread::spawn(move || {
        enter(&path);
        let end = Instant::now() + DEADLINE;
        loop {
            let answer = http_get(admin, "/api/v1/pools/db/backends");
            if answer.contains("\"127.0.0.31:8080\"") {
                return answer;
            }
            assert!(Instant::now() < end, "never discovered: {answer}");
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .join()
    .expect("asker");
    assert!(found.contains("\"origin\":\"discovery\""), "{found}");
    // The name DNS does not have is no such name (resolv.conf's search
    // domain is not tried): no backend at the longer name's address.
    let path = ns.path;
    let (empty, gone) = std::thread::spawn(move || {
        enter(&path);
        let series = "weir_discovery_resolutions_total{pool=\"gone\",result=\"empty\"}";
        let end = Instant::now() + DEADLINE;
        while metric(admin, series) < 1.0 {
            assert!(Instant::now() < end, "gone.test was never answered empty");
            std::thread::sleep(Duration::from_millis(50));
        }
        let ok = metric(
            admin,
            "weir_discovery_resolutions_total{pool=\"gone\",result=\"ok\"}",
        );
        (ok, http_get(admin, "/api/v1/pools/gone/backends"))
    })
    .join()
    .expect("asker");
    assert_eq!(empty, 0.0, "{gone}");
    assert!(!gone.contains("127.0.0.99"), "{gone}");
}

/// A pool whose question no resolver can be made for (no `resolver`, and
/// a system configuration without a nameserver) fails the start, and a
/// reload to it fails, naming the pool; the running pool keeps asking its
/// own server. weir runs in a mount namespace of its own, where an empty
/// resolv.conf is mounted over the system's.
#[test]
fn a_question_no_resolver_can_be_made_for_fails_the_start_and_the_reload() {
    let dir = test_dir("discovery-no-resolver");
    let resolv = dir.join("resolv.conf");
    std::fs::write(&resolv, "# no nameserver\n").expect("resolv.conf");
    let dns_port = free_port().port();
    let _dns = dnsmasq(
        &dir,
        dns_port,
        1,
        &["--host-record=api.test,127.0.0.32".to_owned()],
    );
    let admin = free_port();
    let text = |resolver: &str| {
        format!(
            "[admin]\nhttp = \"{admin}\"\n\
             [[listeners]]\nname = \"front\"\nbind = \"127.0.0.1:0\"\n\
             [[listeners.routes]]\nname = \"r\"\npool = \"db\"\n\
             [[pools]]\nname = \"db\"\n\
             discover = {{ name = \"api.test\", port = 8080, min_interval = \"100ms\"{resolver} }}\n"
        )
    };
    let file = temp_config("discovery-no-resolver", &text(""));
    let weir_in_namespace = || {
        let mut cmd = Command::new("unshare");
        cmd.args(["--mount", "sh", "-c"])
            .arg("mount --bind \"$0\" /etc/resolv.conf && exec \"$1\" run --config \"$2\"")
            .arg(&resolv)
            .arg(crate::cli::weir().get_program())
            .arg(&*file);
        cmd
    };
    let mut failed = weir_in_namespace()
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("weir");
    let status = crate::cli::wait_exit(&mut failed);
    let mut said = String::new();
    for pipe in [
        failed
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read>),
        failed
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read>),
    ]
    .into_iter()
    .flatten()
    {
        let mut pipe = pipe;
        std::io::Read::read_to_string(&mut pipe, &mut said).expect("read");
    }
    assert!(!status.success(), "{said}");
    assert!(
        said.contains("pools[0] (db).discover: discovery cannot run"),
        "{said}"
    );

    std::fs::write(
        &*file,
        text(&format!(", resolver = \"127.0.0.1:{dns_port}\"")),
    )
    .expect("write");
    let (weir, out) = crate::cli::start_weir(weir_in_namespace());
    wait_backends(admin, "start", |l| {
        l.iter().any(|b| b.0 == "127.0.0.32:8080")
    });
    std::fs::write(&*file, text("")).expect("write config");
    signal(&weir.0, rustix::process::Signal::HUP);
    let line = wait_line(&out, "reload failed");
    assert!(line.contains("pools[0] (db).discover"), "{line}");
    // The pool still asks its own server.
    assert!(
        backends(admin, "db")
            .iter()
            .any(|b| b.0 == "127.0.0.32:8080")
    );
}

/// A reload that fails changes nothing in discovery either: the failed
/// config asked the same records at another pace (which restarts a pool's
/// refresh) and bound a port that is taken; the pool still follows DNS.
#[test]
fn a_failed_reload_leaves_discovery_running() {
    let dir = test_dir("discovery-failed-reload");
    let dns_port = free_port().port();
    let port = free_port().port();
    for ip in [[127, 0, 0, 23], [127, 0, 0, 24]] {
        let l = TcpListener::bind(SocketAddr::from((ip, port))).expect("bind");
        std::thread::spawn(move || for _ in l.incoming() {});
    }
    let records = |ips: &[&str]| -> Vec<String> {
        ips.iter()
            .map(|ip| format!("--host-record=api.test,{ip}"))
            .collect()
    };
    let dns = dnsmasq(&dir, dns_port, 1, &records(&["127.0.0.23"]));
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let admin = free_port();
    let text = |min_interval: &str, extra: &str| {
        format!(
            "[admin]\nhttp = \"{admin}\"\n\
             [[listeners]]\nname = \"front\"\nbind = \"127.0.0.1:0\"\n\
             [[listeners.routes]]\nname = \"r\"\npool = \"db\"\n{extra}\
             [[pools]]\nname = \"db\"\ndrain_timeout = \"100ms\"\n\
             discover = {{ name = \"api.test\", port = {port}, \
             resolver = \"127.0.0.1:{dns_port}\", min_interval = \"{min_interval}\", max_interval = \"1s\" }}\n\
             [pools.health]\ntype = \"tcp\"\ninterval = \"200ms\"\n"
        )
    };
    let file = temp_config("discovery-failed-reload", &text("100ms", ""));
    let (weir, out) = run_weir(&file);
    let a23 = format!("127.0.0.23:{port}");
    let a24 = format!("127.0.0.24:{port}");
    wait_backends(admin, "start", |l| l.len() == 1 && l[0].0 == a23);

    let busy = format!(
        "[[listeners]]\nname = \"busy\"\nbind = \"{}\"\n\
         [[listeners.routes]]\nname = \"r\"\npool = \"db\"\n",
        taken.local_addr().expect("addr")
    );
    std::fs::write(&*file, text("200ms", &busy)).expect("write config");
    signal(&weir.0, rustix::process::Signal::HUP);
    wait_line(&out, "reload failed");

    stop(dns, dns_port);
    let _dns = dnsmasq(&dir, dns_port, 1, &records(&["127.0.0.23", "127.0.0.24"]));
    let now = wait_backends(admin, "the new record after the failed reload", |l| {
        l.len() == 2
    });
    assert!(now.iter().any(|b| b.0 == a24), "{now:?}");
}

/// A reload that only changes how a pool asks (its timeout here) restarts
/// its refresh; an SRV target whose lookup then fails keeps the addresses
/// it had, as it did before the reload, instead of draining them.
#[test]
fn an_srv_target_failing_across_a_restarted_refresh_keeps_its_backends() {
    let dir = test_dir("discovery-restart-keeps");
    let dns_port = free_port().port();
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let silent_port = silent.local_addr().expect("addr").port();
    let name = "_pg._tcp.db.test";
    let (b1, b2) = (echo_backend(), echo_backend());
    let records = |flaky: &str| {
        vec![
            "--host-record=pg.test,127.0.0.1".to_owned(),
            flaky.to_owned(),
            srv(name, "pg.test", b1.port(), 0, 1),
            srv(name, "flaky.test", b2.port(), 0, 1),
        ]
    };
    let dns = dnsmasq(
        &dir,
        dns_port,
        1,
        &records("--host-record=flaky.test,127.0.0.1"),
    );
    let admin = free_port();
    let text = |timeout: &str| {
        format!(
            "[admin]\nhttp = \"{admin}\"\n\
             [[listeners]]\nname = \"front\"\nbind = \"127.0.0.1:0\"\n\
             [[listeners.routes]]\nname = \"r\"\npool = \"db\"\n\
             [[pools]]\nname = \"db\"\ndrain_timeout = \"100ms\"\n\
             discover = {{ srv = \"{name}\", resolver = \"127.0.0.1:{dns_port}\", \
             timeout = \"{timeout}\", min_interval = \"100ms\", max_interval = \"1s\" }}\n"
        )
    };
    let file = temp_config("discovery-restart-keeps", &text("300ms"));
    let (weir, out) = run_weir(&file);
    wait_backends(admin, "both targets", |l| {
        l.len() == 2 && l.iter().all(|b| b.3 == 1)
    });
    // flaky.test's lookups now go unanswered: its address is kept.
    stop(dns, dns_port);
    let _dns = dnsmasq(
        &dir,
        dns_port,
        1,
        &records(&format!("--server=/flaky.test/127.0.0.1#{silent_port}")),
    );
    wait_line(&out, "SRV targets' addresses could not be resolved");
    std::fs::write(&*file, text("250ms")).expect("write config");
    signal(&weir.0, rustix::process::Signal::HUP);
    wait_line(&out, "config reloaded generation=2");
    // Refreshes of the restarted task, each with flaky.test unanswered.
    let asked = || {
        metric(
            admin,
            "weir_discovery_resolutions_total{pool=\"db\",result=\"ok\"}",
        )
    };
    wait_growth(
        "refreshes after the reload",
        asked,
        Duration::from_millis(600),
    );
    let now = backends(admin, "db");
    let flaky = find(&now, b2).unwrap_or_else(|| panic!("{now:?}"));
    assert_eq!(flaky.3, 1, "still serving, not drained: {now:?}");
    assert_eq!(now.len(), 2, "{now:?}");
    drop(silent);
}

/// A reload that makes a pool ask DNS another question keeps the set it
/// found until the new question's answer replaces it: a name with no
/// records yet (or a typo) empties nothing at once; once it answers, the
/// addresses it does not list drain and leave, each change in their
/// history.
#[test]
fn a_changed_question_keeps_the_set_until_its_answer_replaces_it() {
    let dir = test_dir("discovery-new-question");
    let dns_port = free_port().port();
    let port = free_port().port();
    for ip in [[127, 0, 0, 23], [127, 0, 0, 24]] {
        let l = TcpListener::bind(SocketAddr::from((ip, port))).expect("bind");
        std::thread::spawn(move || for _ in l.incoming() {});
    }
    let dns = dnsmasq(
        &dir,
        dns_port,
        1,
        &["--host-record=api.test,127.0.0.23".to_owned()],
    );
    let admin = free_port();
    let text = |name: &str| {
        format!(
            "[admin]\nhttp = \"{admin}\"\n\
             [[listeners]]\nname = \"front\"\nbind = \"127.0.0.1:0\"\n\
             [[listeners.routes]]\nname = \"r\"\npool = \"db\"\n\
             [[pools]]\nname = \"db\"\ndrain_timeout = \"300ms\"\n\
             discover = {{ name = \"{name}\", port = {port}, \
             resolver = \"127.0.0.1:{dns_port}\", min_interval = \"100ms\", max_interval = \"1s\" }}\n\
             [pools.health]\ntype = \"tcp\"\ninterval = \"200ms\"\n"
        )
    };
    let file = temp_config("discovery-new-question", &text("api.test"));
    let (weir, out) = run_weir(&file);
    let a23 = format!("127.0.0.23:{port}");
    let a24 = format!("127.0.0.24:{port}");
    wait_backends(admin, "start", |l| l.len() == 1 && l[0].0 == a23);

    // web.test has no records yet: the reload keeps what api.test found.
    std::fs::write(&*file, text("web.test")).expect("write config");
    signal(&weir.0, rustix::process::Signal::HUP);
    wait_line(&out, "config reloaded");
    let now = backends(admin, "db");
    assert!(
        now.len() == 1 && now[0].0 == a23 && now[0].3 == 1,
        "the set serves on: {now:?}"
    );
    assert_eq!(metric(admin, "weir_discovery_records{pool=\"db\"}"), 1.0);

    // It answers: api.test's address drains, then leaves.
    stop(dns, dns_port);
    let _dns = dnsmasq(
        &dir,
        dns_port,
        1,
        &[
            "--host-record=api.test,127.0.0.23".to_owned(),
            "--host-record=web.test,127.0.0.24".to_owned(),
        ],
    );
    let line = wait_line(&out, "discovery changed the pool's backends");
    assert!(
        line.contains(&format!("{a23}: present -> draining")) && line.contains(&a24),
        "{line}"
    );
    wait_backends(admin, "web.test's answer alone", |l| {
        l.len() == 1 && l[0].0 == a24
    });
}

/// A DNS change applies at once although the pool's static backend's name
/// no longer resolves: names are looked up at start and at reloads only, so
/// the rebuild keeps the address the start resolved, and does not fail on
/// it. weir runs in a mount namespace of its own, with the test's hosts
/// file as /etc/hosts.
#[test]
fn a_dns_change_keeps_the_static_backends_resolved_address() {
    let dir = test_dir("discovery-static-name");
    let dns_port = free_port().port();
    let port = free_port().port();
    for ip in [[127, 0, 0, 25], [127, 0, 0, 26], [127, 0, 0, 27]] {
        let l = TcpListener::bind(SocketAddr::from((ip, port))).expect("bind");
        std::thread::spawn(move || for _ in l.incoming() {});
    }
    let hosts = dir.join("hosts");
    std::fs::write(&hosts, "127.0.0.27 static.test\n").expect("hosts");
    let records = |ips: &[&str]| -> Vec<String> {
        ips.iter()
            .map(|ip| format!("--host-record=api.test,{ip}"))
            .collect()
    };
    let dns = dnsmasq(&dir, dns_port, 1, &records(&["127.0.0.25"]));
    let admin = free_port();
    let file = temp_config(
        "discovery-static-name",
        &format!(
            "[admin]\nhttp = \"{admin}\"\n\
             [[listeners]]\nname = \"front\"\nbind = \"127.0.0.1:0\"\n\
             [[listeners.routes]]\nname = \"r\"\npool = \"db\"\n\
             [[pools]]\nname = \"db\"\n\
             discover = {{ name = \"api.test\", port = {port}, \
             resolver = \"127.0.0.1:{dns_port}\", min_interval = \"100ms\", max_interval = \"1s\" }}\n\
             [pools.health]\ntype = \"tcp\"\ninterval = \"200ms\"\n\
             [[pools.backends]]\nname = \"static\"\naddress = \"static.test:{port}\"\n"
        ),
    );
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "sh", "-c"])
        .arg("mount --bind \"$0\" /etc/hosts && exec \"$1\" run --config \"$2\"")
        .arg(&hosts)
        .arg(crate::cli::weir().get_program())
        .arg(&*file);
    let (_weir, _out) = start_weir(cmd);
    let a25 = format!("127.0.0.25:{port}");
    let a26 = format!("127.0.0.26:{port}");
    let a27 = format!("127.0.0.27:{port}");
    wait_backends(admin, "start", |l| {
        l.len() == 2 && l.iter().any(|b| b.0 == "static") && l.iter().any(|b| b.0 == a25)
    });

    // The static backend's name goes (written in place: the mount stays),
    // and DNS gives a second address.
    std::fs::write(&hosts, "").expect("hosts");
    stop(dns, dns_port);
    let _dns = dnsmasq(&dir, dns_port, 1, &records(&["127.0.0.25", "127.0.0.26"]));
    wait_backends(admin, "the new record", |l| {
        l.len() == 3 && l.iter().any(|b| b.0 == a26)
    });
    // The static backend keeps the address the start resolved, and serves.
    let answer = http_get(admin, "/api/v1/pools/db/backends");
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(body).expect("json");
    let fixed = v["backends"]
        .as_array()
        .and_then(|all| all.iter().find(|b| b["name"] == "static"))
        .cloned()
        .expect("the static backend");
    assert_eq!(fixed["address"], a27.as_str(), "{fixed}");
    assert_eq!(fixed["health"], "up", "{fixed}");
}

/// A reload resolves backend host names again. weir runs in a mount
/// namespace of its own, with the test's hosts file as /etc/hosts (and a
/// resolv.conf naming a local server, so a name the file lacks fails at
/// once). The file moves the backend's name to another address: after a
/// reload, new connections go there. The name goes: the reload fails,
/// naming the backend's key path, and the last address goes on serving.
#[test]
fn a_reload_resolves_backend_names_again() {
    let dir = test_dir("resolve-reload");
    let port = free_port().port();
    // Two backends on one port, each saying who it is and closing.
    for (ip, word) in [([127, 0, 0, 28], "first"), ([127, 0, 0, 29], "second")] {
        let l = TcpListener::bind(SocketAddr::from((ip, port))).expect("bind");
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { break };
                let _ = std::io::Write::write_all(&mut s, word.as_bytes());
            }
        });
    }
    let hosts = dir.join("hosts");
    std::fs::write(&hosts, "127.0.0.28 backend-a.test\n").expect("hosts");
    let resolv = dir.join("resolv.conf");
    std::fs::write(
        &resolv,
        "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n",
    )
    .expect("resolv.conf");
    let (front, admin) = (free_port(), free_port());
    let file = temp_config(
        "resolve-reload",
        &format!(
            "[admin]\nhttp = \"{admin}\"\n[log]\nformat = \"json\"\naccess_log = false\n\
             [[listeners]]\nname = \"front\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"r\"\npool = \"p\"\n\
             [[pools]]\nname = \"p\"\n\
             [[pools.backends]]\nname = \"a\"\naddress = \"backend-a.test:{port}\"\n"
        ),
    );
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "sh", "-c"])
        .arg(
            "mount --bind \"$0\" /etc/hosts && mount --bind \"$1\" /etc/resolv.conf && \
             exec \"$2\" run --config \"$3\"",
        )
        .arg(&hosts)
        .arg(&resolv)
        .arg(crate::cli::weir().get_program())
        .arg(&*file);
    let (weir, out) = start_weir(cmd);
    let who = || {
        let mut c = TcpStream::connect(front).expect("connect");
        c.set_read_timeout(Some(DEADLINE)).expect("timeout");
        let mut answer = String::new();
        std::io::Read::read_to_string(&mut c, &mut answer).expect("the backend's answer");
        answer
    };
    assert_eq!(who(), "first");

    // The name moves (the file written in place: the mount stays); the
    // config file is unchanged.
    std::fs::write(&hosts, "127.0.0.29 backend-a.test\n").expect("hosts");
    signal(&weir.0, rustix::process::Signal::HUP);
    let line = wait_line(&out, "config reloaded");
    assert!(line.contains("\"generation\":2"), "{line}");
    for _ in 0..3 {
        assert_eq!(who(), "second");
    }

    // The name goes: the reload fails and changes nothing.
    std::fs::write(&hosts, "127.0.0.29 backend-b.test\n").expect("hosts");
    signal(&weir.0, rustix::process::Signal::HUP);
    let line = wait_line(&out, "reload failed");
    assert!(
        line.contains(&format!(
            "pools[0].backends[0].address: cannot resolve \\\"backend-a.test:{port}\\\""
        )),
        "{line}"
    );
    for _ in 0..3 {
        assert_eq!(who(), "second");
    }
    assert_eq!(metric(admin, "weir_config_generation"), 2.0);
    assert_eq!(metric(admin, "weir_config_last_reload_successful"), 0.0);
}

/// With DNS unreachable at start, the pools that discover ask their first
/// question side by side: eight pools whose questions each wait out three
/// 400 ms timeouts hold the start up for about that long, not eight times
/// as long (nearly 10 s).
#[test]
fn first_questions_of_many_pools_do_not_add_up() {
    // A DNS server that takes every question and answers none.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let dns = silent.local_addr().expect("addr");
    let front = free_port();
    let mut text = format!(
        "[[listeners]]\nname = \"l\"\nbind = \"{front}\"\n\
         [[listeners.routes]]\nname = \"r\"\npool = \"p0\"\n"
    );
    for i in 0..8 {
        text.push_str(&format!(
            "[[pools]]\nname = \"p{i}\"\n\
             discover = {{ name = \"db{i}.test\", port = 5432, resolver = \"{dns}\", timeout = \"400ms\" }}\n"
        ));
    }
    let file = temp_config("discovery-firsts", &text);
    let began = Instant::now();
    let (_weir, _out) = run_weir(&file);
    let took = began.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "the start took {took:?}: the first questions were asked one after another"
    );
    drop(silent);
}

//! `/metrics` after known traffic: every number must be exact. A weir server and
//! its admin endpoint run on loopback; the test scrapes over HTTP and parses it.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;
use weir_admin::AdminListener;
use weir_admin::metrics::BuildInfo;
use weir_core::Server;

const DEADLINE: Duration = Duration::from_secs(10);

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: no result within {DEADLINE:?}"))
}

/// A weir server from `toml` and its admin endpoint, both on loopback.
async fn start_with_admin(toml: &str, version: &str, revision: &str) -> (Arc<Server>, SocketAddr) {
    let config = weir_config::load_str(toml).expect("config");
    let server = within("start", Server::start(&config))
        .await
        .expect("start");
    let admin = AdminListener::bind("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("admin");
    let admin_addr = admin.local_addr();
    let build = BuildInfo {
        version: version.into(),
        revision: revision.into(),
    };
    tokio::spawn(admin.serve(
        weir_admin::Handle::running(Arc::clone(&server)),
        build,
        Arc::default(),
        weir_admin::conn::Limits::from_config(&config.admin),
        config.admin.clone(),
        CancellationToken::new(),
    ));
    (server, admin_addr)
}

/// Reads 4 bytes, answers "hello" and closes.
async fn backend() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let a = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4];
                if s.read_exact(&mut buf).await.is_ok() {
                    let _ = s.write_all(b"hello").await;
                }
            });
        }
    });
    a
}

fn refused() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
}

async fn exchange(to: SocketAddr, from: Ipv4Addr) -> String {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::new(IpAddr::V4(from), 0))
        .expect("bind");
    let mut s = socket.connect(to).await.expect("connect");
    let _ = s.write_all(b"ping").await;
    let mut out = String::new();
    let _ = s.read_to_string(&mut out).await;
    out
}

async fn scrape(admin: SocketAddr, accept: &str) -> (String, String) {
    let mut s = TcpStream::connect(admin).await.expect("connect admin");
    let req = format!(
        "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.expect("read");
    let (head, body) = raw.split_once("\r\n\r\n").expect("http response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let content_type = head
        .lines()
        .find_map(|l| l.strip_prefix("content-type: "))
        .unwrap_or_default()
        .to_owned();
    (content_type, body.to_owned())
}

/// `name{labels}` -> value, labels as written.
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}

fn get(m: &HashMap<String, f64>, key: &str) -> f64 {
    *m.get(key).unwrap_or_else(|| panic!("no series {key}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_equal_what_happened() {
    let live = backend().await;
    let dead = refused();
    let toml = format!(
        "[[listeners]]\nname = \"l\"\nbind = [\"127.0.0.1:0\"]\nmax_connections = 50\n\
         [[listeners.routes]]\nname = \"r\"\nmatch = {{ source = [\"127.0.0.2/32\"] }}\npool = \"p\"\n\
         [[listeners.routes]]\nname = \"f\"\nmatch = {{ source = [\"127.0.0.3/32\"] }}\npool = \"x\"\n\
         [[pools]]\nname = \"x\"\n[[pools.backends]]\nname = \"gone\"\naddress = \"{dead}\"\n\
         [[pools]]\nname = \"p\"\nbalance = \"first\"\n\
         [[pools.backends]]\nname = \"dead\"\naddress = \"{dead}\"\n\
         [[pools.backends]]\nname = \"live\"\naddress = \"{live}\"\nweight = 3\n\
         [[pools]]\nname = \"h\"\n[pools.health]\ntype = \"tcp\"\ninterval = \"1h\"\n\
         [[pools.backends]]\nname = \"up\"\naddress = \"{live}\"\n\
         [[pools.backends]]\nname = \"down\"\naddress = \"{dead}\"\n"
    );
    let (server, admin_addr) = start_with_admin(&toml, "9.9.9", "abc").await;
    let front = server.local_addrs("l")[0];

    // Four routed connections: the first three try `dead` first (refused),
    // then `live`; after three failed connects (fall = 3) passive health has
    // taken `dead` down, and the fourth goes straight to `live`.
    for _ in 0..4 {
        assert_eq!(
            within("exchange", exchange(front, Ipv4Addr::new(127, 0, 0, 2))).await,
            "hello"
        );
    }
    // One client no route matches.
    assert_eq!(
        within("no route", exchange(front, Ipv4Addr::new(127, 0, 0, 1))).await,
        ""
    );
    // One whose only backend refuses: it never reaches one.
    assert_eq!(
        within("failed", exchange(front, Ipv4Addr::new(127, 0, 0, 3))).await,
        ""
    );
    let l = server.listener("l").expect("l");
    within("connections ended", async {
        while l
            .stats
            .connections_active
            .load(std::sync::atomic::Ordering::Relaxed)
            != 0
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;

    let (ct, text) = scrape(admin_addr, "*/*").await;
    assert_eq!(ct, "text/plain; version=0.0.4; charset=utf-8");
    let m = samples(&text);
    let expect = [
        ("weir_listener_connections_total{listener=\"l\"}", 6.0),
        ("weir_listener_connections_active{listener=\"l\"}", 0.0),
        (
            "weir_listener_connections_rejected_total{listener=\"l\",reason=\"no_route\"}",
            1.0,
        ),
        (
            "weir_listener_connections_rejected_total{listener=\"l\",reason=\"max_connections\"}",
            0.0,
        ),
        (
            "weir_listener_connections_rejected_total{listener=\"l\",reason=\"no_backend\"}",
            0.0,
        ),
        ("weir_listener_max_connections{listener=\"l\"}", 50.0),
        (
            "weir_route_connections_total{listener=\"l\",route=\"r\"}",
            4.0,
        ),
        (
            "weir_connection_duration_seconds_count{listener=\"l\",route=\"r\"}",
            4.0,
        ),
        // Every connection of `r` reached a backend, the one of `f` none.
        (
            "weir_route_connect_duration_seconds_count{listener=\"l\",route=\"r\"}",
            4.0,
        ),
        (
            "weir_route_connect_duration_seconds_count{listener=\"l\",route=\"f\"}",
            0.0,
        ),
        (
            "weir_route_connections_failed_total{listener=\"l\",route=\"r\",reason=\"refused\"}",
            0.0,
        ),
        (
            "weir_route_connections_failed_total{listener=\"l\",route=\"f\",reason=\"refused\"}",
            1.0,
        ),
        (
            "weir_route_connections_failed_total{listener=\"l\",route=\"f\",reason=\"no_backend\"}",
            0.0,
        ),
        (
            "weir_connection_duration_seconds_bucket{listener=\"l\",route=\"r\",le=\"+Inf\"}",
            4.0,
        ),
        (
            "weir_backend_connections_total{pool=\"p\",backend=\"live\"}",
            4.0,
        ),
        (
            "weir_backend_connections_total{pool=\"p\",backend=\"dead\"}",
            0.0,
        ),
        (
            "weir_backend_connections_active{pool=\"p\",backend=\"live\"}",
            0.0,
        ),
        (
            "weir_backend_connect_duration_seconds_count{pool=\"p\",backend=\"live\"}",
            4.0,
        ),
        (
            "weir_backend_connect_errors_total{pool=\"p\",backend=\"dead\",reason=\"refused\"}",
            3.0,
        ),
        ("weir_backend_healthy{pool=\"p\",backend=\"dead\"}", 0.0),
        (
            "weir_backend_transitions_total{pool=\"p\",backend=\"dead\",from=\"up\",to=\"down\"}",
            1.0,
        ),
        (
            "weir_backend_connect_errors_total{pool=\"p\",backend=\"dead\",reason=\"timeout\"}",
            0.0,
        ),
        (
            "weir_backend_sent_bytes_total{pool=\"p\",backend=\"live\"}",
            16.0,
        ),
        (
            "weir_backend_received_bytes_total{pool=\"p\",backend=\"live\"}",
            20.0,
        ),
        ("weir_backend_weight{pool=\"p\",backend=\"live\"}", 3.0),
        (
            "weir_backend_effective_weight{pool=\"p\",backend=\"live\"}",
            3.0,
        ),
        ("weir_backend_healthy{pool=\"h\",backend=\"up\"}", 1.0),
        ("weir_backend_healthy{pool=\"h\",backend=\"down\"}", 0.0),
        (
            "weir_backend_state{pool=\"h\",backend=\"down\",state=\"down\"}",
            1.0,
        ),
        (
            "weir_backend_state{pool=\"h\",backend=\"down\",state=\"up\"}",
            0.0,
        ),
        (
            "weir_backend_transitions_total{pool=\"h\",backend=\"up\",from=\"unknown\",to=\"up\"}",
            1.0,
        ),
        (
            "weir_backend_transitions_total{pool=\"h\",backend=\"down\",from=\"unknown\",to=\"down\"}",
            1.0,
        ),
        (
            "weir_health_checks_total{pool=\"h\",backend=\"up\",type=\"tcp\",result=\"success\",reason=\"ok\"}",
            1.0,
        ),
        (
            "weir_health_checks_total{pool=\"h\",backend=\"down\",type=\"tcp\",result=\"success\",reason=\"ok\"}",
            0.0,
        ),
        (
            "weir_health_checks_total{pool=\"h\",backend=\"down\",type=\"tcp\",result=\"failure\",reason=\"refused\"}",
            1.0,
        ),
        (
            "weir_health_check_duration_seconds_count{pool=\"h\",backend=\"down\",type=\"tcp\"}",
            1.0,
        ),
        ("weir_pool_active_tier{pool=\"h\"}", 0.0),
        ("weir_pool_backends{pool=\"h\",state=\"up\"}", 1.0),
        ("weir_pool_backends{pool=\"h\",state=\"down\"}", 1.0),
        ("weir_config_generation", 1.0),
        ("weir_build_info{version=\"9.9.9\",revision=\"abc\"}", 1.0),
    ];
    for (key, want) in expect {
        assert_eq!(get(&m, key), want, "{key}");
    }
    assert_eq!(
        get(
            &m,
            "weir_backend_effective_weight{pool=\"h\",backend=\"up\"}"
        ),
        1.0
    );
    assert!(
        get(
            &m,
            "weir_backend_connect_duration_seconds_sum{pool=\"p\",backend=\"live\"}"
        ) > 0.0
    );
    assert!(get(&m, "process_open_fds") > 0.0);
    assert!(get(&m, "process_resident_memory_bytes") > 0.0);
    // Series of never-seen transitions or failure reasons are not invented.
    assert!(!text.contains("pool=\"h\",backend=\"up\",from=\"up\",to=\"down\""));
    assert!(
        !m.keys()
            .any(|k| k.contains("backend=\"up\"") && k.contains("result=\"failure\""))
    );

    let (ct, om) = scrape(admin_addr, "application/openmetrics-text; version=1.0.0").await;
    assert_eq!(
        ct,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert!(om.ends_with("# EOF\n"));
    assert!(om.contains("# TYPE weir_listener_connections counter\n"));
    assert_eq!(
        samples(&om).get("weir_listener_connections_total{listener=\"l\"}"),
        Some(&6.0)
    );
}

/// The healthy gauge follows the rise/fall decision, not the last probe: with
/// fall = 3, a backend whose probes have started failing stays healthy (1) until
/// the third failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_follows_rise_and_fall_not_the_last_probe() {
    let probe_port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let probe_addr = probe_port.local_addr().expect("addr");
    let toml = format!(
        "[[pools]]\nname = \"h\"\n[pools.health]\ntype = \"tcp\"\ninterval = \"1s\"\nfast_interval = \"1s\"\nfall = 3\n\
         [[pools.backends]]\nname = \"b\"\naddress = \"{probe_addr}\"\n"
    );
    let (_server, admin_addr) = start_with_admin(&toml, "0", "0").await;
    let healthy = "weir_backend_healthy{pool=\"h\",backend=\"b\"}";
    let failures = "weir_health_checks_total{pool=\"h\",backend=\"b\",type=\"tcp\",result=\"failure\",reason=\"refused\"}";
    let m = samples(&scrape(admin_addr, "*/*").await.1);
    assert_eq!(get(&m, healthy), 1.0);

    // The probe port goes away: probes are refused from now on. (Probes a
    // second apart leave some 2 s to scrape between the first failure and
    // the third, on a loaded machine too.)
    drop(probe_port);
    let mut seen_one_or_two = false;
    within("three failures", async {
        loop {
            let m = samples(&scrape(admin_addr, "*/*").await.1);
            let failed = m.get(failures).copied().unwrap_or(0.0);
            if (1.0..3.0).contains(&failed) {
                // The last probe failed, the decision has not changed yet.
                assert_eq!(get(&m, healthy), 1.0, "after {failed} failures");
                seen_one_or_two = true;
            }
            if failed >= 3.0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        seen_one_or_two,
        "never scraped between the first and the third failure"
    );
    // Right after the third failure the decision flips.
    within("down", async {
        while get(&samples(&scrape(admin_addr, "*/*").await.1), healthy) != 0.0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

//! Live connections: 2,000 idle ones listed with their client, route,
//! backend, bytes and state while traffic goes on, and closed by a filter
//! while the others are untouched. (10,000, and the CLI, are tested with the
//! binary, where weir has a descriptor limit of its own.)

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use weir_core::live::{ConnFilter, ConnState};

use crate::common::{addr, echo_backend, start, wait_until, within};

async fn connect_from(ip: Ipv4Addr, to: SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().expect("socket");
    s.bind(SocketAddr::new(IpAddr::V4(ip), 0)).expect("bind");
    s.connect(to).await.expect("connect")
}

async fn round_trip(s: &mut TcpStream, byte: u8) {
    s.write_all(&[byte]).await.expect("write");
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await.expect("echo");
    assert_eq!(b[0], byte);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_listed_and_some_closed() {
    // Four descriptors each in this process: the client's, weir's two, the
    // backend's.
    let n: usize = 2_000;
    let backend = echo_backend().await;
    let toml = format!(
        "[[listeners]]\nname = \"l\"\nbind = [\"127.0.0.1:0\"]\nmax_connections = 20000\n\
         [[listeners.routes]]\nname = \"r\"\npool = \"p\"\n\
         [[pools]]\nname = \"p\"\n[[pools.backends]]\nname = \"echo\"\naddress = \"{backend}\"\n"
    );
    let server = start(&toml).await;
    let front = addr(&server, "l");
    let (a, b) = (Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 3));
    let mut clients = Vec::with_capacity(n);
    for i in 0..n {
        let ip = if i % 10 == 0 { b } else { a };
        clients.push(connect_from(ip, front).await);
    }
    // One byte each way on every tenth, so that bytes show.
    for (i, s) in clients.iter_mut().enumerate() {
        if i % 10 == 0 {
            within("echo", round_trip(s, b'x')).await;
        }
    }
    let listener = server.listener("l").expect("l");
    wait_until("every connection relaying", || {
        let all = server
            .connections(&ConnFilter::default(), usize::MAX)
            .expect("list")
            .views();
        all.len() == n && all.iter().all(|c| c.state == ConnState::Relaying)
    })
    .await;

    // Traffic goes on while listings run.
    let mut probe = connect_from(Ipv4Addr::new(127, 0, 0, 4), front).await;
    // Connected is not yet accepted: weir lists it once it has its route.
    wait_until("the probe listed", || {
        server
            .connections(&ConnFilter::default(), usize::MAX)
            .expect("list")
            .views()
            .len()
            == n + 1
    })
    .await;
    let stop = tokio_util::sync::CancellationToken::new();
    let traffic = tokio::spawn({
        let stop = stop.clone();
        async move {
            let (mut trips, mut slowest) = (0u32, Duration::ZERO);
            while !stop.is_cancelled() {
                let t = Instant::now();
                within("probe", round_trip(&mut probe, b'p')).await;
                slowest = slowest.max(t.elapsed());
                trips += 1;
            }
            (trips, slowest, probe)
        }
    });
    let mut took = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let all = server
            .connections(&ConnFilter::default(), usize::MAX)
            .expect("list")
            .views();
        took.push(t.elapsed());
        assert_eq!(all.len(), n + 1);
        tokio::task::yield_now().await;
    }
    stop.cancel();
    let (trips, slowest, probe) = traffic.await.expect("traffic");
    eprintln!(
        "listing {} connections took {:?}; meanwhile {trips} round trips, the slowest {slowest:?}",
        n + 1,
        took
    );
    assert!(trips > 0, "no traffic while listing");

    let all = server
        .connections(&ConnFilter::default(), usize::MAX)
        .expect("list")
        .views();
    let c = all
        .iter()
        .find(|c| c.client.ip() == IpAddr::V4(b))
        .expect("one from b");
    assert_eq!(
        (
            c.listener.as_str(),
            c.route.as_str(),
            c.pool.as_deref(),
            c.backend.as_deref(),
            c.state,
            c.sent,
            c.received
        ),
        ("l", "r", Some("p"), Some("echo"), ConnState::Relaying, 1, 1)
    );
    let by_client = ConnFilter {
        client: Some(ConnFilter::parse_client("127.0.0.3/32").expect("cidr")),
        ..ConnFilter::default()
    };
    let from_b = server
        .connections(&by_client, usize::MAX)
        .expect("list")
        .views();
    assert_eq!(from_b.len(), n / 10);
    assert!(from_b.iter().all(|c| c.sent == 1));
    let by_backend = ConnFilter {
        pool: Some("p".into()),
        backend: Some("echo".into()),
        ..ConnFilter::default()
    };
    assert_eq!(
        server
            .connections(&by_backend, usize::MAX)
            .expect("list")
            .views()
            .len(),
        n + 1
    );
    let nobody = ConnFilter {
        backend: Some("other".into()),
        ..ConnFilter::default()
    };
    assert!(
        server
            .connections(&nobody, usize::MAX)
            .expect("list")
            .views()
            .is_empty()
    );
    let unknown = ConnFilter {
        pool: Some("nope".into()),
        ..ConnFilter::default()
    };
    assert!(server.connections(&unknown, usize::MAX).is_err());
    // A limit shows the first by id and counts them all.
    let first = server.connections(&ConnFilter::default(), 7).expect("list");
    assert_eq!(first.total(), n + 1);
    let ids: Vec<u64> = first.views().iter().map(|c| c.id).collect();
    assert_eq!(ids, all.iter().take(7).map(|c| c.id).collect::<Vec<_>>());
    assert_eq!(
        server
            .connections(&by_client, 0)
            .map(|p| (p.len(), p.total()))
            .expect("list"),
        (0, n / 10)
    );
    assert!(server.close_connections(&ConnFilter::default()).is_err());

    // Close the ones from b: they end, the others still echo.
    assert_eq!(server.close_connections(&by_client).expect("close"), n / 10);
    for (i, s) in clients.iter_mut().enumerate() {
        if i % 10 == 0 {
            let mut rest = Vec::new();
            let _ = within("closed", s.read_to_end(&mut rest)).await;
            assert!(rest.is_empty());
        }
    }
    wait_until("the closed ones leave the registry", || {
        listener.stats.live.len() == n + 1 - n / 10
    })
    .await;
    within("still echoing", round_trip(&mut clients[1], b'y')).await;
    let one = server
        .connections(&ConnFilter::default(), usize::MAX)
        .expect("list")
        .views()[0]
        .id;
    let by_id = ConnFilter {
        id: Some(one),
        ..ConnFilter::default()
    };
    assert_eq!(server.close_connections(&by_id).expect("close"), 1);
    drop((clients, probe));
    wait_until("all gone", || listener.stats.live.is_empty()).await;
}

/// The connections of a listener a reload removed are listed and closed by
/// an operator while they drain through its `shutdown_timeout`, whichever
/// generation of the listener accepted them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_listeners_draining_connections_can_be_listed_and_closed() {
    let backend = echo_backend().await;
    let pools = format!(
        "[[pools]]\nname = \"p\"\n[[pools.backends]]\nname = \"echo\"\naddress = \"{backend}\"\n"
    );
    let with_old = format!(
        "[[listeners]]\nname = \"old\"\nbind = [\"127.0.0.1:0\"]\nshutdown_timeout = \"1h\"\n\
         [[listeners.routes]]\nname = \"r\"\npool = \"p\"\n\
         [[listeners]]\nname = \"new\"\nbind = [\"127.0.0.1:0\"]\n\
         [[listeners.routes]]\nname = \"r\"\npool = \"p\"\n{pools}"
    );
    let server = start(&with_old).await;
    let mut held = connect_from(Ipv4Addr::new(127, 0, 0, 5), addr(&server, "old")).await;
    within("echo", round_trip(&mut held, b'x')).await;
    // A reload that changes nothing still builds the listener anew: the
    // connection holds the generation before the one the removal retires.
    let same = weir_config::load_str(&with_old).expect("config");
    within("reload", server.apply(same))
        .await
        .expect("reloaded");
    let without = with_old.replace(
        "[[listeners]]\nname = \"old\"\nbind = [\"127.0.0.1:0\"]\nshutdown_timeout = \"1h\"\n\
         [[listeners.routes]]\nname = \"r\"\npool = \"p\"\n",
        "",
    );
    let config = weir_config::load_str(&without).expect("config");
    within("reload", server.apply(config))
        .await
        .expect("reloaded");
    assert!(server.listener("old").is_none());
    within("still relayed", round_trip(&mut held, b'y')).await;
    let old = ConnFilter {
        listener: Some("old".into()),
        ..ConnFilter::default()
    };
    let listed = server.connections(&old, 10).expect("listed").views();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(server.close_connections(&old).expect("closed"), 1);
    let mut b = [0u8; 1];
    assert!(matches!(
        within("closed", held.read(&mut b)).await,
        Ok(0) | Err(_)
    ));
    // Once its last connection is gone, the removed listener is no more.
    wait_until("forgotten", || server.connections(&old, 10).is_err()).await;
}

/// An IPv4 client that comes as `::ffff:a.b.c.d` (a dual-stack proxy's
/// PROXY header, a dual-stack socket) is listed, and found by a client
/// filter, as `a.b.c.d`, also with the filter typed in the mapped form: as
/// the firewall and routes see it, so that `weir connections close
/// --client` after `weir firewall deny` finds its connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mapped_ipv4_client_is_listed_and_found_as_ipv4() {
    let backend = echo_backend().await;
    let toml = format!(
        "[[listeners]]\nname = \"l\"\nbind = [\"127.0.0.1:0\"]\n\
         proxy_protocol = {{ accept = true, trusted = [\"127.0.0.1\"] }}\n\
         [[listeners.routes]]\nname = \"r\"\npool = \"p\"\n\
         [[pools]]\nname = \"p\"\n[[pools.backends]]\nname = \"echo\"\naddress = \"{backend}\"\n"
    );
    let server = start(&toml).await;
    let front = addr(&server, "l");
    let mut s = TcpStream::connect(front).await.expect("connect");
    s.write_all(b"PROXY TCP6 ::ffff:198.51.100.7 ::ffff:10.0.0.1 5000 443\r\n")
        .await
        .expect("header");
    within("echo", round_trip(&mut s, b'x')).await;
    let by = |text: &str| ConnFilter {
        client: Some(ConnFilter::parse_client(text).expect("client")),
        ..ConnFilter::default()
    };
    let listed = server
        .connections(&by("198.51.100.7"), usize::MAX)
        .expect("list")
        .views();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(
        listed[0].client,
        "198.51.100.7:5000".parse::<SocketAddr>().expect("addr")
    );
    for text in [
        "198.51.100.0/24",
        "::ffff:198.51.100.7",
        "::ffff:198.51.100.0/120",
    ] {
        let n = server
            .connections(&by(text), usize::MAX)
            .expect("list")
            .views()
            .len();
        assert_eq!(n, 1, "{text}");
    }
    assert_eq!(
        server
            .close_connections(&by("198.51.100.7"))
            .expect("close"),
        1
    );
    let mut b = [0u8; 1];
    let end = within("closed", s.read(&mut b)).await;
    assert!(matches!(end, Ok(0) | Err(_)), "{end:?}");
}

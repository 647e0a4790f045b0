//! Accepting the PROXY protocol: trusted sources must send a header, whose
//! address then stands for the client; untrusted sources are served by their
//! socket address and refused when they send a header.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket};
use weir_core::Reason;

use crate::common::*;

/// Reads to EOF and answers "<name>:<what arrived, lossy>".
async fn telling_backend(name: &'static str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let a = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut got = Vec::new();
                let _ = s.read_to_end(&mut got).await;
                let _ = s
                    .write_all(format!("{name}:{}", String::from_utf8_lossy(&got)).as_bytes())
                    .await;
            });
        }
    });
    a
}

/// From `from`, sends `bytes`, half-closes, and reads the answer.
async fn exchange(front: SocketAddr, from: Ipv4Addr, bytes: &[u8]) -> String {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::new(IpAddr::V4(from), 0))
        .expect("bind");
    let mut s = socket.connect(front).await.expect("connect");
    let _ = s.write_all(bytes).await;
    let _ = s.shutdown().await;
    let mut out = String::new();
    let _ = s.read_to_string(&mut out).await;
    out
}

fn accept_toml(inner: SocketAddr, outer: SocketAddr) -> String {
    format!(
        "[[listeners]]\nname = \"l\"\nbind = [\"127.0.0.1:0\"]\nhandshake_timeout = \"500ms\"\n\
         proxy_protocol = {{ accept = true, trusted = [\"127.0.6.0/24\"] }}\n\
         [[listeners.routes]]\nname = \"inner\"\nmatch = {{ source = [\"10.1.2.0/24\"] }}\npool = \"inner\"\n\
         [[listeners.routes]]\nname = \"outer\"\npool = \"outer\"\n\
         [[pools]]\nname = \"inner\"\n[[pools.backends]]\naddress = \"{inner}\"\n\
         [[pools]]\nname = \"outer\"\n[[pools.backends]]\naddress = \"{outer}\"\n"
    )
}

fn v2(src: &str, dst: &str) -> Vec<u8> {
    let mut out = Vec::new();
    weir_wire::proxy::encode_v2(
        weir_wire::proxy::Command::Proxy,
        weir_wire::proxy::Transport::Stream,
        Some((src.parse().expect("src"), dst.parse().expect("dst"))),
        &[],
        &mut out,
    )
    .expect("encode");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_header_is_consumed_and_its_address_routes() {
    let inner = telling_backend("inner").await;
    let outer = telling_backend("outer").await;
    let server = start(&accept_toml(inner, outer)).await;
    let front = addr(&server, "l");
    let trusted = Ipv4Addr::new(127, 0, 6, 1);

    // v1 from a trusted source: the header is consumed, its 10.1.2.3 picks `inner`.
    let got = within(
        "v1",
        exchange(
            front,
            trusted,
            b"PROXY TCP4 10.1.2.3 192.0.2.1 5555 443\r\nping",
        ),
    )
    .await;
    assert_eq!(got, "inner:ping");
    // v2, in the same segment as the payload.
    let mut bytes = v2("10.1.2.9:6000", "192.0.2.1:443");
    bytes.extend_from_slice(b"pong");
    assert_eq!(
        within("v2", exchange(front, trusted, &bytes)).await,
        "inner:pong"
    );
    // Another address in the header: another route.
    let got = within(
        "outer",
        exchange(
            front,
            trusted,
            b"PROXY TCP4 198.51.100.7 192.0.2.1 5555 443\r\nx",
        ),
    )
    .await;
    assert_eq!(got, "outer:x");
    // LOCAL (the sender's own health check): the socket address stands.
    let mut local = Vec::new();
    weir_wire::proxy::encode_v2(
        weir_wire::proxy::Command::Local,
        weir_wire::proxy::Transport::Unspec,
        None,
        &[],
        &mut local,
    )
    .expect("encode");
    local.extend_from_slice(b"hc");
    assert_eq!(
        within("local", exchange(front, trusted, &local)).await,
        "outer:hc"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_sources_must_send_a_valid_header() {
    let inner = telling_backend("inner").await;
    let outer = telling_backend("outer").await;
    let server = start(&accept_toml(inner, outer)).await;
    let front = addr(&server, "l");
    let l = server.listener("l").expect("l");
    let trusted = Ipv4Addr::new(127, 0, 6, 2);
    assert_eq!(
        within("plain", exchange(front, trusted, b"GET / HTTP/1.0\r\n\r\n")).await,
        ""
    );
    assert_eq!(
        within(
            "bad v1",
            exchange(front, trusted, b"PROXY TCP4 1.2.3 4.5.6.7 1 2\r\n")
        )
        .await,
        ""
    );
    wait_until("counted", || l.stats.rejected(Reason::ProxyProtocol) == 2).await;
    // Silent: handshake_timeout.
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::new(IpAddr::V4(trusted), 0))
        .expect("bind");
    let mut s = socket.connect(front).await.expect("connect");
    let mut buf = [0u8; 1];
    assert!(matches!(
        within("timeout", s.read(&mut buf)).await,
        Ok(0) | Err(_)
    ));
    assert_eq!(l.stats.rejected(Reason::HandshakeTimeout), 1);
    // Connects and closes without a byte (a TCP health check from a trusted
    // source): nothing refused, as on a listener without PROXY headers.
    let accepted = l
        .stats
        .connections_total
        .load(std::sync::atomic::Ordering::Relaxed);
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::new(IpAddr::V4(trusted), 0))
        .expect("bind");
    drop(socket.connect(front).await.expect("connect"));
    wait_until("accepted", || {
        l.stats
            .connections_total
            .load(std::sync::atomic::Ordering::Relaxed)
            > accepted
    })
    .await;
    // Its end is seen within a poll of the peek; give it that.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(l.stats.rejected(Reason::ProxyProtocol), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_sources_are_served_by_address_and_may_not_send_a_header() {
    let inner = telling_backend("inner").await;
    let outer = telling_backend("outer").await;
    let server = start(&accept_toml(inner, outer)).await;
    let front = addr(&server, "l");
    let l = server.listener("l").expect("l");
    let stranger = Ipv4Addr::new(127, 0, 7, 1);
    // Plain traffic: served, by its own address (the catch-all).
    assert_eq!(
        within("plain", exchange(front, stranger, b"hello")).await,
        "outer:hello"
    );
    // A spoofed header, whole or trickled byte by byte: closed, never relayed.
    assert_eq!(
        within(
            "spoof",
            exchange(
                front,
                stranger,
                b"PROXY TCP4 10.1.2.3 192.0.2.1 5555 443\r\nping"
            )
        )
        .await,
        ""
    );
    let spoof = v2("10.1.2.3:1", "192.0.2.1:443");
    assert_eq!(
        within("spoof v2", exchange(front, stranger, &spoof)).await,
        ""
    );
    wait_until("counted", || l.stats.rejected(Reason::ProxyProtocol) == 2).await;
}

//! `weir connections`: 10,000 idle connections (6,000 relayed at l4, 4,000
//! kept-alive HTTP ones) listed with their client, route, backend, bytes and
//! state, narrowed by conditions, and some closed by the client's network,
//! which the access log says was an operator's doing.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};

use crate::cli::{DEADLINE, free_port, run_weir, temp_config, wait_line};
use crate::control::{ctl, json, text};
use crate::http::keepalive_get;

/// A connection from `ip`.
pub(crate) fn connect_from(ip: Ipv4Addr, to: SocketAddr) -> TcpStream {
    let s =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    s.bind(&SocketAddr::new(IpAddr::V4(ip), 0).into())
        .expect("bind");
    s.connect(&to.into()).expect("connect");
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(DEADLINE)).expect("timeout");
    // A request goes out in several writes: no waiting for their ACKs.
    s.set_nodelay(true).expect("nodelay");
    s
}

/// An echo backend on a runtime of its own, for thousands of connections.
fn echo_backend(rt: &tokio::runtime::Runtime) -> SocketAddr {
    let l = listener(rt);
    let a = l.local_addr().expect("addr");
    rt.spawn(async move {
        while let Ok((s, _)) = accept(&l).await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.into_split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    a
}

/// A loopback listener with the deepest accept queue this machine allows:
/// with the default (1024), a burst of thousands of connections through
/// weir overflows it, the kernel drops SYNs, and a connect that loses two of
/// them outlasts weir's `connect_timeout` (2 s), which then cuts the client.
fn listener(rt: &tokio::runtime::Runtime) -> tokio::net::TcpListener {
    let s =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    s.bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, 0)).into())
        .expect("bind");
    s.listen(4096).expect("listen");
    s.set_nonblocking(true).expect("nonblocking");
    let _guard = rt.enter();
    tokio::net::TcpListener::from_std(s.into()).expect("listener")
}

/// The next connection of `l`, past the errors a busy accept can meet
/// (a connection reset while queued, descriptors short for a moment).
async fn accept(
    l: &tokio::net::TcpListener,
) -> std::io::Result<(tokio::net::TcpStream, SocketAddr)> {
    // Errors for as long as DEADLINE from the first one end the loop.
    let mut since = None;
    loop {
        match l.accept().await {
            Ok(c) => return Ok(c),
            Err(e) => {
                let first = *since.get_or_insert_with(tokio::time::Instant::now);
                if first.elapsed() > DEADLINE {
                    return Err(e);
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}

/// An HTTP/1.1 backend answering every request `200 ok` in one write, on
/// kept-alive connections.
fn http_backend(rt: &tokio::runtime::Runtime) -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = listener(rt);
    let a = l.local_addr().expect("addr");
    rt.spawn(async move {
        while let Ok((mut s, _)) = accept(&l).await {
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n";
                        if s.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    a
}

#[test]
fn ten_thousand_idle_connections_are_listed_and_closed_by_the_cli() {
    const L4: usize = 6_000;
    const L7: usize = 4_000;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let echo = echo_backend(&rt);
    let app = http_backend(&rt);
    let (grpc, tcp, web) = (free_port(), free_port(), free_port());
    let file = temp_config(
        "connections",
        &format!(
            "[admin]\ngrpc = \"{grpc}\"\n[log]\nformat = \"json\"\n\
             [[listeners]]\nname = \"tcp\"\nbind = \"{tcp}\"\nmax_connections = 20000\n\
             [[listeners.routes]]\nname = \"relay\"\npool = \"echo\"\n\
             [[listeners]]\nname = \"web\"\nbind = \"{web}\"\nmax_connections = 20000\n\
             [[listeners.routes]]\nname = \"app\"\nmode = \"l7\"\n\
             [[listeners.routes.http]]\nname = \"all\"\npool = \"app\"\n\
             [[pools]]\nname = \"echo\"\n[[pools.backends]]\nname = \"e\"\naddress = \"{echo}\"\n\
             [[pools]]\nname = \"app\"\n[[pools.backends]]\nname = \"a\"\naddress = \"{}\"\n",
            app
        ),
    );
    // Two descriptors per l4 connection and one per l7 one: within the
    // limit of 20,000 this machine gives a process.
    let (_weir, out) = run_weir(&file);
    let (a, b) = (Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 3));
    let mut relayed: Vec<TcpStream> = (0..L4)
        .map(|i| connect_from(if i % 6 == 0 { b } else { a }, tcp))
        .collect();
    // Bytes on every sixth: one each way.
    for (i, s) in relayed.iter_mut().enumerate().step_by(6) {
        let mut one = [0u8; 1];
        if let Err(e) = s.write_all(b"x").and_then(|()| s.read_exact(&mut one)) {
            let ends: Vec<String> = out
                .try_iter()
                .filter(|l| l.contains("\"reason\""))
                .take(5)
                .collect();
            panic!("no echo on connection {i}: {e}; weir logged {ends:#?}");
        }
    }
    // Each asks at once: a connection must send its first request within
    // timeouts.request_header.
    let _kept: Vec<TcpStream> = (0..L7)
        .map(|_| {
            let mut s = connect_from(a, web);
            keepalive_get(&mut s, "/").expect("an answer");
            s
        })
        .collect();

    let all = json(&ctl(grpc, None, &["connections", "-o", "json"]));
    assert_eq!(all["total"], L4 + L7, "total");
    let list = all["connections"].as_array().expect("connections");
    assert_eq!(list.len(), L4 + L7);
    // An ID names one connection, whatever its listener.
    let ids: std::collections::HashSet<u64> =
        list.iter().filter_map(|c| c["id"].as_u64()).collect();
    assert_eq!(ids.len(), L4 + L7, "IDs shared between listeners");
    let relaying = list
        .iter()
        .filter(|c| c["state"] == "relaying" && c["backend"] == "e" && c["pool"] == "echo")
        .count();
    let http = list
        .iter()
        .filter(|c| c["state"] == "http" && c["listener"] == "web" && c["route"] == "app")
        .count();
    assert_eq!((relaying, http), (L4, L7));
    assert!(
        list.iter()
            .filter(|c| c["listener"] == "web")
            .all(|c| c["sent_bytes"].as_u64() > Some(0) && c["received_bytes"].as_u64() > Some(0)),
        "an l7 connection counts its bytes"
    );

    let from_b = json(&ctl(
        grpc,
        None,
        &[
            "connections",
            "--client",
            "127.0.0.3",
            "--limit",
            "5",
            "-o",
            "json",
        ],
    ));
    assert_eq!(from_b["total"], L4 / 6);
    let shown = from_b["connections"].as_array().expect("connections");
    assert_eq!(shown.len(), 5);
    assert!(
        shown.iter().all(|c| c["client"]
            .as_str()
            .is_some_and(|s| s.starts_with("127.0.0.3:"))
            && c["sent_bytes"] == 1
            && c["received_bytes"] == 1),
        "{from_b}"
    );
    let (code, table, _) = text(&ctl(
        grpc,
        None,
        &["connections", "--listener", "web", "--limit", "2"],
    ));
    assert_eq!(code, 0);
    assert!(
        table.starts_with("ID") && table.contains("STATE") && table.contains("2 of 4000 shown"),
        "{table}"
    );
    let (code, _, err) = text(&ctl(grpc, None, &["connections", "close"]));
    assert_ne!(code, 0);
    assert!(err.contains("say which connections"), "{err}");
    let (code, _, err) = text(&ctl(grpc, None, &["connections", "--pool", "nope"]));
    assert_ne!(code, 0);
    assert!(err.contains("no pool \"nope\""), "{err}");

    // Conditions written before `close` narrow it as well: on a listener
    // that has none of them, nothing is closed; one given twice with two
    // values is refused.
    let (code, _, err) = text(&ctl(
        grpc,
        None,
        &[
            "connections",
            "--listener",
            "nope",
            "close",
            "--client",
            "127.0.0.3/32",
        ],
    ));
    assert_ne!(code, 0);
    assert!(err.contains("no listener \"nope\""), "{err}");
    let (code, _, err) = text(&ctl(
        grpc,
        None,
        &[
            "connections",
            "--client",
            "127.0.0.4/32",
            "close",
            "--client",
            "127.0.0.3/32",
        ],
    ));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--client is given twice"), "{err}");
    let closed = json(&ctl(
        grpc,
        None,
        &[
            "connections",
            "close",
            "--client",
            "127.0.0.3/32",
            "-o",
            "json",
        ],
    ));
    assert_eq!(closed["closed"], L4 / 6);
    for s in relayed.iter_mut().step_by(6) {
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        assert!(rest.is_empty(), "{rest:?}");
    }
    let line = wait_line(&out, "\"reason\":\"operator\"");
    assert!(line.contains("\"client\":\"127.0.0.3:"), "{line}");
    assert!(line.contains("\"backend\":\"e\""), "{line}");
    // The others are untouched.
    relayed[1].write_all(b"y").expect("write");
    let mut one = [0u8; 1];
    relayed[1].read_exact(&mut one).expect("still relayed");
    let left = json(&ctl(
        grpc,
        None,
        &["connections", "--limit", "1", "-o", "json"],
    ));
    assert_eq!(left["total"], L4 + L7 - L4 / 6);

    // An l7 connection closed by its ID alone.
    let web_one = json(&ctl(
        grpc,
        None,
        &[
            "connections",
            "--listener",
            "web",
            "--limit",
            "1",
            "-o",
            "json",
        ],
    ));
    let id = web_one["connections"][0]["id"].to_string();
    let closed = json(&ctl(
        grpc,
        None,
        &["connections", "close", "--id", &id, "-o", "json"],
    ));
    assert_eq!(closed["closed"], 1);
    // Its line says so too.
    loop {
        let line = wait_line(&out, "\"reason\":\"operator\"");
        if line.contains("\"listener\":\"web\"") {
            assert!(line.contains("\"route\":\"app\""), "{line}");
            break;
        }
    }
    drop(rt);
}

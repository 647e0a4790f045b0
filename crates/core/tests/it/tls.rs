//! Routing on the TLS ClientHello without terminating TLS: real ClientHellos
//! made by rustls, sent through weir in pieces, must reach the right backend
//! byte for byte.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use weir_core::Reason;

use crate::common::*;

/// The bytes a rustls client sends first, for `sni` and `alpn`.
fn client_hello(sni: &str, alpn: &[&[u8]]) -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let name = rustls::pki_types::ServerName::try_from(sni.to_owned()).expect("name");
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).expect("client");
    let mut out = Vec::new();
    conn.write_tls(&mut out).expect("hello");
    out
}

/// A backend that reads until the client's write side closes and answers
/// "name:<number of bytes>:<checksum>", so the test sees exactly what arrived.
async fn counting_backend(name: &'static str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let a = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut got = Vec::new();
                let _ = s.read_to_end(&mut got).await;
                let _ = s
                    .write_all(format!("{name}:{}:{}", got.len(), checksum(&got)).as_bytes())
                    .await;
            });
        }
    });
    a
}

fn checksum(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf29ce484222325u64, |h, &x| {
        (h ^ u64::from(x)).wrapping_mul(0x100000001b3)
    })
}

/// Sends `bytes` in `pieces` writes with pauses (so they arrive as separate
/// segments), half-closes, and returns the backend's answer.
async fn send(front: SocketAddr, bytes: &[u8], pieces: usize) -> String {
    let mut s = TcpStream::connect(front).await.expect("connect");
    let _ = s.set_nodelay(true);
    let step = bytes.len().div_ceil(pieces.max(1));
    for chunk in bytes.chunks(step.max(1)) {
        s.write_all(chunk).await.expect("write");
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    s.shutdown().await.expect("half-close");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out).await;
    out
}

/// A listener with `routes` and a pool per backend. Its `handshake_timeout`
/// (3 s) is far beyond what a hello sent in pauses takes on a loaded machine.
fn sni_toml(backends: &[(&str, SocketAddr)], routes: &str) -> String {
    let mut t = format!(
        "[[listeners]]\nname = \"l\"\nbind = [\"127.0.0.1:0\"]\nhandshake_timeout = \"3s\"\n{routes}"
    );
    for (name, addr) in backends {
        t.push_str(&format!(
            "[[pools]]\nname = \"{name}\"\n[[pools.backends]]\naddress = \"{addr}\"\n"
        ));
    }
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_and_alpn_routes_receive_the_hello_byte_for_byte() {
    let a = counting_backend("a").await;
    let b = counting_backend("b").await;
    let pg = counting_backend("pg").await;
    let other = counting_backend("other").await;
    let routes = "[[listeners.routes]]\nname = \"pg\"\nmatch = { sni = [\"db.example.com\"], alpn = [\"postgresql\"] }\npool = \"pg\"\n\
                  [[listeners.routes]]\nname = \"a\"\nmatch = { sni = [\"a.example.com\"] }\npool = \"a\"\n\
                  [[listeners.routes]]\nname = \"b\"\nmatch = { sni = [\"*.b.example.com\", \"B.example.org\"] }\npool = \"b\"\n\
                  [[listeners.routes]]\nname = \"rest\"\npool = \"other\"\n";
    let server = start(&sni_toml(
        &[("a", a), ("b", b), ("pg", pg), ("other", other)],
        routes,
    ))
    .await;
    let front = addr(&server, "l");
    let cases: [(&str, &[&[u8]], &str); 8] = [
        ("a.example.com", &[], "a"),
        ("A.Example.COM", &[b"h2"], "a"),
        ("x.b.example.com", &[], "b"),
        ("b.example.org", &[], "b"),
        // A wildcard covers one label only.
        ("b.example.com", &[], "other"),
        ("y.x.b.example.com", &[], "other"),
        ("db.example.com", &[b"postgresql"], "pg"),
        // SNI and ALPN must both hold.
        ("db.example.com", &[b"h2"], "other"),
    ];
    for (sni, alpn, want) in cases {
        let hello = client_hello(sni, alpn);
        assert!(hello.len() > 200, "a real ClientHello");
        for pieces in [1, 3, 17] {
            let got = within("send", send(front, &hello, pieces)).await;
            assert_eq!(
                got,
                format!("{want}:{}:{}", hello.len(), checksum(&hello)),
                "sni {sni}, alpn {alpn:?}, {pieces} pieces"
            );
        }
    }
}

/// `hash_key = "sni"`: every connection for one server name reaches one
/// backend (whatever its case), names spread over the backends, and a
/// client without SNI still gets through (by source IP).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maglev_by_sni_sends_each_name_to_one_backend() {
    let names = ["b1", "b2", "b3"];
    let mut toml = "[[listeners]]\nname = \"l\"\nbind = [\"127.0.0.1:0\"]\n\
                    [[listeners.routes]]\nname = \"all\"\npool = \"p\"\n\
                    [[pools]]\nname = \"p\"\nbalance = \"maglev\"\nhash_key = \"sni\"\n"
        .to_owned();
    for n in names {
        let a = counting_backend(n).await;
        toml.push_str(&format!(
            "[[pools.backends]]\nname = \"{n}\"\naddress = \"{a}\"\n"
        ));
    }
    let server = start(&toml).await;
    let front = addr(&server, "l");
    let backend = |answer: String| answer.split(':').next().unwrap_or_default().to_owned();
    let mut used = std::collections::BTreeSet::new();
    for i in 0..24 {
        let name = format!("tenant{i}.example.com");
        let first = backend(within("send", send(front, &client_hello(&name, &[]), 1)).await);
        for again in [name.clone(), name.to_uppercase()] {
            let got = backend(within("send", send(front, &client_hello(&again, &[]), 1)).await);
            assert_eq!(got, first, "{again} went elsewhere");
        }
        used.insert(first);
    }
    assert_eq!(used.len(), 3, "24 names over 3 backends: {used:?}");
    // Plain TCP, no hello: by source IP.
    let got = within("send", send(front, b"not tls at all", 1)).await;
    assert!(names.contains(&backend(got.clone()).as_str()), "{got}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_tcp_is_recognised_at_once_and_matches_only_routes_without_sni() {
    let tls = counting_backend("tls").await;
    let plain = counting_backend("plain").await;
    let routes = "[[listeners.routes]]\nname = \"tls\"\nmatch = { sni = [\"a.example.com\"] }\npool = \"tls\"\n\
                  [[listeners.routes]]\nname = \"plain\"\npool = \"plain\"\n";
    let server = start(&sni_toml(&[("tls", tls), ("plain", plain)], routes)).await;
    let front = addr(&server, "l");
    let began = tokio::time::Instant::now();
    let request = b"GET / HTTP/1.0\r\n\r\n";
    let got = within("plain", send(front, request, 1)).await;
    assert_eq!(
        got,
        format!("plain:{}:{}", request.len(), checksum(request))
    );
    // Decided from the first bytes, not by waiting for handshake_timeout (3 s).
    assert!(
        began.elapsed() < Duration::from_secs(2),
        "{:?}",
        began.elapsed()
    );
}

/// TLS that the peek cannot read as a ClientHello (malformed, or larger
/// than 16 KiB) matches no route, not even the catch-all: a more lenient TLS
/// stack behind it could read a server name the `sni` routes never saw.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_client_hello_matches_no_route() {
    let tls = counting_backend("tls").await;
    let plain = counting_backend("plain").await;
    let routes = "[[listeners.routes]]\nname = \"tls\"\nmatch = { sni = [\"a.example.com\"] }\npool = \"tls\"\n\
                  [[listeners.routes]]\nname = \"plain\"\npool = \"plain\"\n";
    let server = start(&sni_toml(&[("tls", tls), ("plain", plain)], routes)).await;
    let front = addr(&server, "l");
    let l = server.listener("l").expect("l");
    // A handshake record holding a ClientHello too short to be one.
    let malformed = [
        0x16, 0x03, 0x01, 0x00, 0x06, 0x01, 0x00, 0x00, 0x02, 0x03, 0x03,
    ];
    // A ClientHello that announces 20,000 bytes.
    let mut large = vec![0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0x00, 0x4e, 0x20];
    large.resize(5 + 0x4000, 0x00);
    for (what, bytes) in [("malformed", &malformed[..]), ("too large", &large[..])] {
        let got = within(what, send(front, bytes, 1)).await;
        assert_eq!(got, "", "{what}");
    }
    wait_until("refused", || l.stats.rejected(Reason::NoRoute) == 2).await;
    // A readable one still goes where its name says, and plain bytes to the
    // catch-all.
    let hello = client_hello("a.example.com", &[]);
    let got = within("hello", send(front, &hello, 1)).await;
    assert!(got.starts_with("tls:"), "{got}");
    let got = within("plain", send(front, b"hello", 1)).await;
    assert!(got.starts_with("plain:"), "{got}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_or_unmatched_client_is_rejected_with_its_reason() {
    let a = counting_backend("a").await;
    let routes =
        "[[listeners.routes]]\nname = \"a\"\nmatch = { sni = [\"a.example.com\"] }\npool = \"a\"\n";
    let toml = sni_toml(&[("a", a)], routes).replace(
        "handshake_timeout = \"3s\"",
        "handshake_timeout = \"400ms\"",
    );
    let server = start(&toml).await;
    let front = addr(&server, "l");
    let l = server.listener("l").expect("l");

    // Sends nothing: closed after handshake_timeout.
    let began = tokio::time::Instant::now();
    let mut silent = TcpStream::connect(front).await.expect("connect");
    let mut buf = [0u8; 1];
    let r = within("timeout close", silent.read(&mut buf)).await;
    assert!(matches!(r, Ok(0) | Err(_)));
    assert!(
        began.elapsed() >= Duration::from_millis(350),
        "{:?}",
        began.elapsed()
    );
    assert_eq!(l.stats.rejected(Reason::HandshakeTimeout), 1);

    // Another name: no route.
    let got = within(
        "other sni",
        send(front, &client_hello("z.example.com", &[]), 1),
    )
    .await;
    assert_eq!(got, "");
    // Plain bytes: no route either (the only route needs an SNI).
    let got = within("plain", send(front, b"hello", 1)).await;
    assert_eq!(got, "");
    wait_until("counted", || l.stats.rejected(Reason::NoRoute) == 2).await;

    // Connects and closes with nothing sent (a TCP health check, a port
    // scan): not refused for want of a route, nor counted as refused at all.
    let all = |l: &weir_core::listener::Listener| {
        Reason::REJECTIONS
            .iter()
            .map(|r| l.stats.rejected(*r))
            .sum::<u64>()
    };
    let before = all(&l);
    let accepted = l
        .stats
        .connections_total
        .load(std::sync::atomic::Ordering::Relaxed);
    drop(TcpStream::connect(front).await.expect("connect"));
    wait_until("accepted and gone", || {
        l.stats
            .connections_total
            .load(std::sync::atomic::Ordering::Relaxed)
            == accepted + 1
            && l.stats
                .connections_active
                .load(std::sync::atomic::Ordering::Relaxed)
                == 0
    })
    .await;
    assert_eq!(all(&l), before, "a client that said nothing was refused");
}

/// A TLS echo server with the test CA's certificate for localhost/127.0.0.1;
/// with `client_ca`, it demands a client certificate signed by that CA.
async fn tls_echo_backend(pki: &crate::health::Pki, client_ca: bool) -> SocketAddr {
    let acceptor = if client_ca {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(pki.ca_der.clone()).expect("root");
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::clone(&provider),
        )
        .build()
        .expect("verifier");
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                pki.leaf.0.clone(),
                rustls::pki_types::PrivateKeyDer::Pkcs8(pki.leaf.1.clone().into()),
            )
            .expect("config");
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    } else {
        pki.acceptor.clone()
    };
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let a = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(s).await else {
                    return;
                };
                let (mut r, mut w) = tokio::io::split(tls);
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    a
}

fn backend_tls_toml(backend: SocketAddr, tls: &str) -> String {
    format!(
        "[[listeners]]\nname = \"l\"\nbind = [\"127.0.0.1:0\"]\n\
         [[listeners.routes]]\nname = \"r\"\npool = \"p\"\nbackend_tls = {{ {tls} }}\n\
         [[pools]]\nname = \"p\"\nretries = 0\n[[pools.backends]]\nname = \"b\"\naddress = \"{backend}\"\n"
    )
}

/// Plain bytes in, TLS to the backend, the echo back; "" when weir closed.
async fn echo_through(front: SocketAddr) -> String {
    send(front, b"plain in, tls out", 1).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_tls_verifies_and_relays_both_ways() {
    let pki = crate::health::pki("btls");
    let backend = tls_echo_backend(&pki, false).await;
    let ca = pki.ca_file.display().to_string();
    for tls in [
        format!("ca = \"{ca}\", sni = \"localhost\""),
        // No sni: the backend's IP is verified (the certificate names 127.0.0.1).
        format!("ca = \"{ca}\""),
        "verify = false".to_string(),
    ] {
        let server = start(&backend_tls_toml(backend, &tls)).await;
        let got = within("echo", echo_through(addr(&server, "l"))).await;
        assert_eq!(got, "plain in, tls out", "{tls}");
        server.shutdown();
    }
    // A CA that did not sign the backend's certificate: a tls connect error.
    let other = crate::health::pki("btls-other");
    let server = start(&backend_tls_toml(
        backend,
        &format!("ca = \"{}\"", other.ca_file.display()),
    ))
    .await;
    assert_eq!(
        within("refused", echo_through(addr(&server, "l"))).await,
        ""
    );
    let p = server.pool("p").expect("p");
    let b = p.backend("b").expect("b");
    assert_eq!(b.stats.connect_errors(weir_core::Reason::Tls), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_tls_presents_a_client_certificate() {
    let pki = crate::health::pki("btls-client");
    let backend = tls_echo_backend(&pki, true).await;
    let (cert, key) = pki.client_cert("weir-client");
    let ca = pki.ca_file.display();
    let with = format!(
        "ca = \"{ca}\", cert = \"{}\", key = \"{}\"",
        cert.display(),
        key.display()
    );
    let server = start(&backend_tls_toml(backend, &with)).await;
    assert_eq!(
        within("with cert", echo_through(addr(&server, "l"))).await,
        "plain in, tls out"
    );
    server.shutdown();
    let server = start(&backend_tls_toml(backend, &format!("ca = \"{ca}\""))).await;
    assert_eq!(
        within("without cert", echo_through(addr(&server, "l"))).await,
        ""
    );
}

/// A TLS backend that ends its side without close_notify (a TCP FIN alone,
/// as many servers do after their last answer) has ended, not failed: the
/// client gets a FIN, and what it still sends reaches the backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_backend_ending_without_close_notify_is_half_closed() {
    let pki = crate::health::pki("btls-eof");
    let acceptor = pki.acceptor.clone();
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let backend = l.local_addr().expect("addr");
    let (tx, rx) = tokio::sync::oneshot::channel::<Vec<u8>>();
    tokio::spawn(async move {
        let (s, _) = l.accept().await.expect("accept");
        let mut tls = acceptor.accept(s).await.expect("handshake");
        tls.write_all(b"bye").await.expect("write");
        tls.flush().await.expect("flush");
        // The FIN on the raw socket: no close_notify.
        socket2::SockRef::from(tls.get_ref().0)
            .shutdown(std::net::Shutdown::Write)
            .expect("shutdown");
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        while let Ok(n @ 1..) = tls.read(&mut buf).await {
            got.extend_from_slice(&buf[..n]);
        }
        let _ = tx.send(got);
    });
    let server = start(&backend_tls_toml(backend, "verify = false")).await;
    let mut client = TcpStream::connect(addr(&server, "l"))
        .await
        .expect("connect");
    let mut answer = Vec::new();
    within("the answer and a FIN", client.read_to_end(&mut answer))
        .await
        .expect("read");
    assert_eq!(answer, b"bye");
    client.write_all(b"late upload").await.expect("write");
    client.shutdown().await.expect("shutdown");
    let got = within("the upload at the backend", rx).await.expect("sent");
    assert_eq!(got, b"late upload");
}

/// A client that says nothing (its server speaks first: SMTP, MySQL, FTP)
/// on a listener that routes by SNI goes, once `handshake_timeout` has
/// passed, to a route that needs no ClientHello, as HAProxy's
/// inspect-delay does; without such a route it is refused as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_goes_to_the_route_that_needs_no_hello() {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let banner = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let _ = s.write_all(b"220 ready\r\n").await;
                let mut rest = Vec::new();
                let _ = s.read_to_end(&mut rest).await;
            });
        }
    });
    let listener = |catch_all: bool| {
        let tail = if catch_all {
            "[[listeners.routes]]\nname = \"mail\"\npool = \"banner\"\n"
        } else {
            ""
        };
        format!(
            "[[listeners]]\nname = \"l\"\nbind = [\"127.0.0.1:0\"]\nhandshake_timeout = \"300ms\"\n\
             [[listeners.routes]]\nname = \"tls\"\nmatch = {{ sni = [\"app.example\"] }}\npool = \"banner\"\n\
             {tail}\
             [[pools]]\nname = \"banner\"\n[[pools.backends]]\nname = \"b\"\naddress = \"{banner}\"\n"
        )
    };
    let server = start(&listener(true)).await;
    let mut client = TcpStream::connect(addr(&server, "l"))
        .await
        .expect("connect");
    let mut line = [0u8; 11];
    within("the banner", client.read_exact(&mut line))
        .await
        .expect("read");
    assert_eq!(&line, b"220 ready\r\n");
    server.shutdown();

    let server = start(&listener(false)).await;
    let mut client = TcpStream::connect(addr(&server, "l"))
        .await
        .expect("connect");
    let mut rest = Vec::new();
    let _ = within("refused", client.read_to_end(&mut rest)).await;
    assert!(rest.is_empty(), "{rest:?}");
}

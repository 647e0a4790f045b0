//! Listings against a running server, over both admin endpoints: an answer
//! a reader does not take holds its places, the next listing that does not
//! fit is refused on either endpoint, and the places come back once the
//! answer is read.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use weir_core::firewall::Action;

use super::Budget;
use crate::grpc::ControlService;
use crate::metrics::BuildInfo;
use crate::pb::v1::admin_client::AdminClient;
use crate::pb::v1::{ConnectionFilter, ListFirewallRulesRequest};

const DEADLINE: Duration = Duration::from_secs(10);

async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within {DEADLINE:?}"))
}

async fn until(what: &str, mut ok: impl FnMut() -> bool) {
    within(what, async {
        while !ok() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

/// A backend that takes connections and keeps them, saying nothing.
async fn silent_backend() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let a = l.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut kept = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            kept.push(s);
        }
    });
    a
}

/// `GET path` on the JSON API: the status line and the body.
async fn get(admin: SocketAddr, path: &str) -> (String, String) {
    let mut s = TcpStream::connect(admin).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    s.write_all(request.as_bytes()).await.expect("write");
    let mut raw = String::new();
    within("an answer", s.read_to_string(&mut raw))
        .await
        .expect("read");
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP answer");
    (
        head.lines().next().unwrap_or_default().to_owned(),
        body.to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unread_listing_holds_its_places_on_both_endpoints() {
    let backend = silent_backend().await;
    // Long names, so that an answer outgrows a piece with few connections.
    let long = |c: char| std::iter::repeat_n(c, 60).collect::<String>();
    let (l, r, p, b) = (long('l'), long('r'), long('p'), long('b'));
    let config = weir_config::load_str(&format!(
        "[[listeners]]\nname = \"{l}\"\nbind = \"127.0.0.1:0\"\n[[listeners.routes]]\n\
         name = \"{r}\"\npool = \"{p}\"\n[[pools]]\nname = \"{p}\"\n[[pools.backends]]\n\
         name = \"{b}\"\naddress = \"{backend}\"\n"
    ))
    .expect("config");
    let server = within("start", weir_core::Server::start(&config))
        .await
        .expect("start");
    let front = server.local_addrs(&l)[0];
    let stats = Arc::new(crate::Stats {
        listings: Budget::new(20),
        ..crate::Stats::default()
    });
    let budget = stats.listings.clone();
    let limits = crate::conn::Limits::from_config(&config.admin);
    let stop = CancellationToken::new();
    let build = BuildInfo {
        version: "test".into(),
        revision: "test".into(),
    };
    let http = crate::AdminListener::bind("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("bind");
    let http_addr = http.local_addr();
    tokio::spawn(http.serve(
        crate::Handle::running(Arc::clone(&server)),
        build.clone(),
        Arc::clone(&stats),
        limits,
        weir_config::Admin::default(),
        stop.clone(),
    ));
    let grpc = crate::grpc::bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
    let grpc_addr = grpc.local_addr().expect("addr");
    let service = ControlService::new(Arc::clone(&server), build, &stats, stop.clone());
    tokio::spawn(crate::grpc::serve(
        grpc,
        service,
        Arc::clone(&stats.conns.grpc),
        limits,
    ));

    // A hundred connections, each kept open by the backend: an answer
    // listing them all is some 28 KB.
    let mut clients = Vec::new();
    for _ in 0..100 {
        clients.push(TcpStream::connect(front).await.expect("connect"));
    }
    until("a hundred live connections", || {
        server
            .connections(&weir_core::live::ConnFilter::default(), 0)
            .is_ok_and(|p| p.total() == 100)
    })
    .await;

    // A reader that lets through 1 KiB of an answer and takes no more.
    let tcp = TcpStream::connect(grpc_addr).await.expect("connect");
    let (mut h2, conn) = within(
        "handshake",
        h2::client::Builder::new()
            .initial_window_size(1024)
            .handshake::<_, bytes::Bytes>(tcp),
    )
    .await
    .expect("handshake");
    tokio::spawn(conn);
    let request = http::Request::post(format!(
        "http://{grpc_addr}/weir.admin.v1.Admin/ListConnections"
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(())
    .expect("request");
    let (answer, mut send) = h2.send_request(request, false).expect("send");
    // An empty `ConnectionFilter`: every connection.
    send.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]), true)
        .expect("send the message");
    let answer = within("the answer's head", answer)
        .await
        .expect("an answer");
    assert_eq!(answer.status(), 200);
    let mut unread = answer.into_body();
    // A hundred listed, twenty places: all of them held.
    until("the answer holds every place", || budget.available() == 0).await;

    let mut client = AdminClient::connect(format!("http://{grpc_addr}"))
        .await
        .expect("connect");
    let refused = client
        .list_connections(ConnectionFilter {
            limit: 5,
            ..ConnectionFilter::default()
        })
        .await
        .expect_err("no place for five");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused}");
    assert!(
        refused.message().contains("the most at once is 20"),
        "{}",
        refused.message()
    );
    let (status, body) = get(http_addr, "/api/v1/connections?limit=5").await;
    assert_eq!(status, "HTTP/1.1 429 Too Many Requests", "{body}");
    assert!(body.contains("resource_exhausted"), "{body}");
    // Firewall rules are listed from the same budget: up to 100,000 of
    // them with long reasons make an answer of 100 MB.
    server
        .add_firewall_rule("192.0.2.1", Action::Deny, None, "a scanner")
        .await
        .expect("a rule");
    let refused = client
        .list_firewall_rules(ListFirewallRulesRequest {})
        .await
        .expect_err("no place for a rule");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused}");
    let (status, body) = get(http_addr, "/api/v1/firewall/rules").await;
    assert_eq!(status, "HTTP/1.1 429 Too Many Requests", "{body}");

    // Read to its end, the answer gives its places back.
    let mut read = 0;
    while let Some(data) = within("the rest", unread.data()).await {
        let data = data.expect("data");
        read += data.len();
        unread
            .flow_control()
            .release_capacity(data.len())
            .expect("release");
    }
    assert!(read > 20_000, "{read} bytes");
    until("the places come back", || budget.available() == 20).await;
    let listed = client
        .list_connections(ConnectionFilter {
            limit: 5,
            ..ConnectionFilter::default()
        })
        .await
        .expect("five of them")
        .into_inner();
    assert_eq!((listed.connections.len(), listed.total), (5, 100));
    let (status, body) = get(http_addr, "/api/v1/connections").await;
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    assert_eq!(body.matches("\"id\"").count(), 100, "{body}");
    until("the JSON answer gives its places back", || {
        budget.available() == 20
    })
    .await;
    let rules = client
        .list_firewall_rules(ListFirewallRulesRequest {})
        .await
        .expect("the rules")
        .into_inner();
    assert_eq!(rules.rules.len(), 1);
    let (status, body) = get(http_addr, "/api/v1/firewall/rules").await;
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    assert!(body.contains("a scanner"), "{body}");
    until("the rules give their places back", || {
        budget.available() == 20
    })
    .await;
    stop.cancel();
    drop(clients);
}

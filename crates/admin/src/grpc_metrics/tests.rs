use std::net::SocketAddr;
use std::time::Duration;

use tokio_stream::{Stream, StreamExt as _};
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};

use super::*;
use crate::pb::v1 as pb;
use crate::pb::v1::admin_client::AdminClient;
use crate::pb::v1::admin_server::{Admin, AdminServer};
use crate::reflection::{reflection_service, reflection_service_v1alpha};

const DEADLINE: Duration = Duration::from_secs(10);
const TOKEN: &str = "s3cret";

async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: no result within {DEADLINE:?}"))
}

fn path(method: &str) -> String {
    format!("/{ADMIN}/{method}")
}

/// Answers Status, streams three events from Watch (one, then nothing more,
/// when the pool is "forever"), checks the token on SetBackendAdmin and refuses the
/// rest as unimplemented.
struct Fake {
    stats: Arc<GrpcStats>,
}

type Events = Pin<Box<dyn Stream<Item = Result<pb::Event, Status>> + Send>>;

fn unimplemented<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented("not in this fake"))
}

#[tonic::async_trait]
impl Admin for Fake {
    async fn status(
        &self,
        _: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        Ok(Response::new(pb::StatusResponse {
            version: "test".into(),
            ready: true,
            ..Default::default()
        }))
    }

    async fn list_listeners(
        &self,
        _: Request<pb::ListListenersRequest>,
    ) -> Result<Response<pb::ListListenersResponse>, Status> {
        unimplemented()
    }

    async fn list_routes(
        &self,
        _: Request<pb::ListRoutesRequest>,
    ) -> Result<Response<pb::ListRoutesResponse>, Status> {
        unimplemented()
    }

    async fn list_pools(
        &self,
        _: Request<pb::ListPoolsRequest>,
    ) -> Result<Response<pb::ListPoolsResponse>, Status> {
        unimplemented()
    }

    async fn list_backends(
        &self,
        _: Request<pb::ListBackendsRequest>,
    ) -> Result<Response<pb::ListBackendsResponse>, Status> {
        unimplemented()
    }

    async fn set_backend_admin(
        &self,
        req: Request<pb::SetBackendAdminRequest>,
    ) -> Result<Response<pb::Backend>, Status> {
        self.stats.authorize(req.metadata(), Some(TOKEN))?;
        unimplemented()
    }

    async fn set_backend_weight(
        &self,
        _: Request<pb::SetBackendWeightRequest>,
    ) -> Result<Response<pb::Backend>, Status> {
        unimplemented()
    }

    async fn backend_history(
        &self,
        _: Request<pb::BackendHistoryRequest>,
    ) -> Result<Response<pb::BackendHistoryResponse>, Status> {
        unimplemented()
    }

    async fn pool_history(
        &self,
        _: Request<pb::PoolHistoryRequest>,
    ) -> Result<Response<pb::PoolHistoryResponse>, Status> {
        unimplemented()
    }

    async fn reload(
        &self,
        _: Request<pb::ReloadRequest>,
    ) -> Result<Response<pb::ReloadResponse>, Status> {
        unimplemented()
    }

    async fn list_firewall_rules(
        &self,
        _: Request<pb::ListFirewallRulesRequest>,
    ) -> Result<Response<pb::ListFirewallRulesResponse>, Status> {
        unimplemented()
    }

    async fn add_firewall_rule(
        &self,
        _: Request<pb::AddFirewallRuleRequest>,
    ) -> Result<Response<pb::FirewallRule>, Status> {
        unimplemented()
    }

    async fn remove_firewall_rule(
        &self,
        _: Request<pb::RemoveFirewallRuleRequest>,
    ) -> Result<Response<pb::FirewallRule>, Status> {
        unimplemented()
    }

    async fn set_listener_max_connections(
        &self,
        _: Request<pb::SetListenerMaxConnectionsRequest>,
    ) -> Result<Response<pb::Listener>, Status> {
        unimplemented()
    }

    async fn add_backend(
        &self,
        _: Request<pb::AddBackendRequest>,
    ) -> Result<Response<pb::Backend>, Status> {
        unimplemented()
    }

    async fn remove_backend(
        &self,
        _: Request<pb::RemoveBackendRequest>,
    ) -> Result<Response<pb::Backend>, Status> {
        unimplemented()
    }

    async fn explain(
        &self,
        _: Request<pb::ExplainRequest>,
    ) -> Result<Response<pb::ExplainResponse>, Status> {
        unimplemented()
    }

    async fn list_connections(
        &self,
        _: Request<pb::ConnectionFilter>,
    ) -> Result<Response<pb::ListConnectionsResponse>, Status> {
        unimplemented()
    }

    async fn close_connections(
        &self,
        _: Request<pb::ConnectionFilter>,
    ) -> Result<Response<pb::CloseConnectionsResponse>, Status> {
        unimplemented()
    }

    type WatchStream = Events;

    async fn watch(&self, req: Request<pb::WatchRequest>) -> Result<Response<Events>, Status> {
        let events = tokio_stream::iter((0..3).map(|i| {
            Ok(pb::Event {
                at_ms: i,
                kind: None,
            })
        }));
        let stream: Events = if req.get_ref().pool == "forever" {
            Box::pin(events.take(1).chain(tokio_stream::pending()))
        } else {
            Box::pin(events)
        };
        Ok(Response::new(stream))
    }
}

/// A server with the fake, reflection and the metrics layer on loopback.
async fn start() -> (Arc<GrpcStats>, Channel) {
    let stats = Arc::new(GrpcStats::new());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr: SocketAddr = listener.local_addr().expect("addr");
    let router = tonic::transport::Server::builder()
        .layer(GrpcMetricsLayer::new(Arc::clone(&stats)))
        .add_service(AdminServer::new(Fake {
            stats: Arc::clone(&stats),
        }))
        .add_service(reflection_service().expect("reflection v1"))
        .add_service(reflection_service_v1alpha().expect("reflection v1alpha"));
    tokio::spawn(router.serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)));
    let channel = within(
        "connect",
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("endpoint")
            .connect(),
    )
    .await
    .expect("connect");
    (stats, channel)
}

#[tokio::test]
async fn counts_calls_by_method_and_code() {
    let (stats, channel) = start().await;
    let mut client = AdminClient::new(channel.clone());

    let status = within("status", client.status(pb::StatusRequest {}))
        .await
        .expect("status");
    assert_eq!(status.into_inner().version, "test");

    let err = within("list pools", client.list_pools(pb::ListPoolsRequest {}))
        .await
        .expect_err("unimplemented");
    assert_eq!(err.code(), Code::Unimplemented);

    let mut events = within("watch", client.watch(pb::WatchRequest::default()))
        .await
        .expect("watch")
        .into_inner();
    let mut n = 0;
    while let Some(e) = within("event", events.message()).await.expect("event") {
        assert_eq!(e.at_ms, n);
        n += 1;
    }
    assert_eq!(n, 3);

    let mut forever = within(
        "watch forever",
        client.watch(pb::WatchRequest {
            pool: "forever".into(),
        }),
    )
    .await
    .expect("watch")
    .into_inner();
    let first = within("first event", forever.message())
        .await
        .expect("event");
    assert!(first.is_some());
    // Cancels the call: the client resets the stream.
    drop(forever);
    within("cancellation seen", async {
        while stats.handled(&path("Watch"), Code::Cancelled) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;

    for token in [None, Some("wrong"), Some(TOKEN)] {
        let mut req = Request::new(pb::SetBackendAdminRequest::default());
        if let Some(t) = token {
            let value = format!("Bearer {t}").parse().expect("metadata value");
            req.metadata_mut().insert("authorization", value);
        }
        let err = within("set admin", client.set_backend_admin(req))
            .await
            .expect_err("refused");
        let want = if token == Some(TOKEN) {
            Code::Unimplemented
        } else {
            Code::Unauthenticated
        };
        assert_eq!(err.code(), want, "{token:?}");
    }

    // A path no service has: counted, but under the one unknown bucket.
    let mut grpc = tonic::client::Grpc::new(channel);
    within("ready", grpc.ready()).await.expect("ready");
    let err = within(
        "unknown",
        grpc.unary(
            Request::new(pb::StatusRequest {}),
            http::uri::PathAndQuery::from_static("/made.up.Service/Whatever"),
            tonic_prost::ProstCodec::<pb::StatusRequest, pb::StatusResponse>::default(),
        ),
    )
    .await
    .expect_err("no such method");
    assert_eq!(err.code(), Code::Unimplemented);

    let status = path("Status");
    assert_eq!(stats.started(&status), 1);
    assert_eq!(stats.handled(&status, Code::Ok), 1);
    assert_eq!(stats.msg_received(&status), 1);
    assert_eq!(stats.msg_sent(&status), 1);
    assert_eq!(stats.handling_seconds(&status).count, 1);

    let pools = path("ListPools");
    assert_eq!(stats.started(&pools), 1);
    assert_eq!(stats.handled(&pools, Code::Unimplemented), 1);
    assert_eq!(stats.handled(&pools, Code::Ok), 0);
    assert_eq!(stats.msg_received(&pools), 1);
    assert_eq!(stats.msg_sent(&pools), 0);
    assert_eq!(stats.handling_seconds(&pools).count, 1);

    let watch = path("Watch");
    assert_eq!(stats.started(&watch), 2);
    assert_eq!(stats.handled(&watch, Code::Ok), 1);
    assert_eq!(stats.handled(&watch, Code::Cancelled), 1);
    assert_eq!(stats.msg_received(&watch), 2);
    // Three from the finished stream, one from the cancelled one.
    assert_eq!(stats.msg_sent(&watch), 4);
    assert_eq!(stats.handling_seconds(&watch).count, 2);

    let set = path("SetBackendAdmin");
    assert_eq!(stats.started(&set), 3);
    assert_eq!(stats.handled(&set, Code::Unauthenticated), 2);
    assert_eq!(stats.handled(&set, Code::Unimplemented), 1);
    assert_eq!(stats.auth_failures(AuthError::Missing), 1);
    assert_eq!(stats.auth_failures(AuthError::Wrong), 1);

    let unknown = "/made.up.Service/Whatever";
    assert_eq!(stats.started(unknown), 1);
    assert_eq!(stats.started("/another/path"), 1, "one shared bucket");
    assert_eq!(stats.handled(unknown, Code::Unimplemented), 1);

    let mut text = String::new();
    stats.render(&mut text, Format::Prometheus);
    for line in [
        "# TYPE grpc_server_started_total counter",
        "grpc_server_started_total{grpc_type=\"unary\",grpc_service=\"weir.admin.v1.Admin\",grpc_method=\"Status\"} 1",
        "grpc_server_handled_total{grpc_type=\"unary\",grpc_service=\"weir.admin.v1.Admin\",grpc_method=\"Status\",grpc_code=\"OK\"} 1",
        "grpc_server_handled_total{grpc_type=\"unary\",grpc_service=\"weir.admin.v1.Admin\",grpc_method=\"ListPools\",grpc_code=\"OK\"} 0",
        "grpc_server_handled_total{grpc_type=\"unary\",grpc_service=\"weir.admin.v1.Admin\",grpc_method=\"ListPools\",grpc_code=\"Unimplemented\"} 1",
        "grpc_server_handled_total{grpc_type=\"server_stream\",grpc_service=\"weir.admin.v1.Admin\",grpc_method=\"Watch\",grpc_code=\"Canceled\"} 1",
        "grpc_server_handled_total{grpc_type=\"unary\",grpc_service=\"weir.admin.v1.Admin\",grpc_method=\"SetBackendAdmin\",grpc_code=\"Unauthenticated\"} 2",
        "grpc_server_handled_total{grpc_type=\"unary\",grpc_service=\"unknown\",grpc_method=\"unknown\",grpc_code=\"Unimplemented\"} 1",
        "grpc_server_msg_received_total{grpc_type=\"server_stream\",grpc_service=\"weir.admin.v1.Admin\",grpc_method=\"Watch\"} 2",
        "grpc_server_handling_seconds_bucket{grpc_type=\"unary\",grpc_service=\"weir.admin.v1.Admin\",grpc_method=\"Status\",le=\"+Inf\"} 1",
        "grpc_server_handling_seconds_count{grpc_type=\"server_stream\",grpc_service=\"weir.admin.v1.Admin\",grpc_method=\"Watch\"} 2",
        "weir_admin_auth_failures_total{reason=\"missing_token\"} 1",
        "weir_admin_auth_failures_total{reason=\"wrong_token\"} 1",
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
    }
    assert!(!text.contains("made.up"), "{text}");
    // Methods never called have no series.
    assert!(!text.contains("\"Reload\""), "{text}");

    let mut open = String::new();
    stats.render(&mut open, Format::OpenMetrics);
    assert!(
        open.contains("# TYPE grpc_server_started counter\n"),
        "{open}"
    );
    assert!(open.contains("# TYPE grpc_server_handling_seconds histogram\n"));
    assert!(!open.contains("# EOF"), "the exporter ends the scrape");
}

#[tokio::test]
async fn reflection_lists_the_admin_service() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let (stats, channel) = start().await;
    let mut client = ServerReflectionClient::new(channel);
    let requests = [
        MessageRequest::ListServices(String::new()),
        MessageRequest::FileContainingSymbol("weir.admin.v1.Admin".into()),
    ]
    .map(|m| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(m),
    });
    let mut responses = within(
        "reflection",
        client.server_reflection_info(tokio_stream::iter(requests)),
    )
    .await
    .expect("reflection")
    .into_inner();

    let mut services = Vec::new();
    let mut files = 0;
    while let Some(r) = within("response", responses.message())
        .await
        .expect("response")
    {
        match r.message_response {
            Some(MessageResponse::ListServicesResponse(l)) => {
                services.extend(l.service.into_iter().map(|s| s.name));
            }
            Some(MessageResponse::FileDescriptorResponse(f)) => {
                files += f.file_descriptor_proto.len();
            }
            other => panic!("unexpected response {other:?}"),
        }
    }
    assert!(
        services.iter().any(|s| s == "weir.admin.v1.Admin"),
        "{services:?}"
    );
    assert!(services.iter().any(|s| s == REFLECTION_V1), "{services:?}");
    assert_eq!(files, 1);

    let info = format!("/{REFLECTION_V1}/ServerReflectionInfo");
    assert_eq!(stats.started(&info), 1);
    assert_eq!(stats.msg_received(&info), 2);
    assert_eq!(stats.msg_sent(&info), 2);
    assert_eq!(stats.handled(&info, Code::Ok), 1);
}

#[test]
fn paths_map_to_known_methods_or_the_unknown_bucket() {
    let unknown = KNOWN.len();
    assert_eq!(GrpcStats::index("/weir.admin.v1.Admin/Status"), 0);
    assert_eq!(
        GrpcStats::known(GrpcStats::index("/weir.admin.v1.Admin/Watch")).kind,
        GrpcType::ServerStream
    );
    for p in [
        "",
        "/",
        "//",
        "/weir.admin.v1.Admin",
        "/weir.admin.v1.Admin/",
        "/weir.admin.v1.Admin/status",
        "/weir.admin.v1.Admin/Status/extra",
        "weir.admin.v1.Admin/Status",
        "/x/y",
    ] {
        assert_eq!(GrpcStats::index(p), unknown, "{p:?}");
    }
    assert_eq!(GrpcStats::known(unknown), UNKNOWN);
}

/// The table agrees with the .proto: every RPC is known, with its streaming.
#[test]
fn known_methods_match_the_proto() {
    let fds = protox::compile(
        ["weir/admin/v1/admin.proto"],
        [std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("proto")],
    )
    .expect("compile admin.proto");
    let mut rpcs = 0;
    for file in &fds.file {
        for service in &file.service {
            for m in &service.method {
                let p = format!("/{}.{}/{}", file.package(), service.name(), m.name());
                let kind = match (m.client_streaming(), m.server_streaming()) {
                    (false, false) => GrpcType::Unary,
                    (false, true) => GrpcType::ServerStream,
                    (true, false) => GrpcType::ClientStream,
                    (true, true) => GrpcType::BidiStream,
                };
                let i = GrpcStats::index(&p);
                assert!(i < KNOWN.len(), "{p} is not in the table");
                assert_eq!(GrpcStats::known(i).kind, kind, "{p}");
                rpcs += 1;
            }
        }
    }
    let in_table = KNOWN.iter().filter(|k| k.service == ADMIN).count();
    assert_eq!(rpcs, in_table, "the table has RPCs the .proto lacks");
}

#[test]
fn messages_are_counted_across_and_within_chunks() {
    fn msg(len: u32) -> Vec<u8> {
        let mut v = vec![0];
        v.extend_from_slice(&len.to_be_bytes());
        v.extend(std::iter::repeat_n(7, len as usize));
        v
    }
    // Two in one chunk, one of them empty.
    let mut c = MessageCounter::default();
    assert_eq!(c.count(&[msg(3), msg(0)].concat()), 2);
    // One split inside its prefix and inside its body.
    let big = msg(300);
    let mut c = MessageCounter::default();
    assert_eq!(c.count(&big[..2]), 1);
    assert_eq!(c.count(&big[2..100]), 0);
    assert_eq!(c.count(&big[100..]), 0);
    assert_eq!(c.count(&msg(1)), 1);
    // Byte by byte.
    let mut c = MessageCounter::default();
    let total: u64 = [msg(2), msg(0), msg(5)]
        .concat()
        .iter()
        .map(|b| c.count(std::slice::from_ref(b)))
        .sum();
    assert_eq!(total, 3);
}

#[test]
fn status_codes_from_headers_and_trailers() {
    assert_eq!(parse_code(b"0"), OK);
    assert_eq!(CODES[parse_code(b"16")], "Unauthenticated");
    assert_eq!(CODES[parse_code(b"1")], "Canceled");
    for bad in [&b"17"[..], b"-1", b"", b"ok", b"\xff"] {
        assert_eq!(parse_code(bad), UNKNOWN_CODE, "{bad:?}");
    }
    // The names follow tonic's numbering.
    assert_eq!(Code::Unimplemented as usize, 12);
    assert_eq!(Code::Unauthenticated as usize, CODES.len() - 1);

    let head = |status: u16, grpc: Option<&str>| {
        let mut b = http::Response::builder().status(status);
        if let Some(g) = grpc {
            b = b.header("grpc-status", g);
        }
        b.body(()).expect("response").into_parts().0
    };
    assert_eq!(status_of_head(&head(200, None)), None);
    assert_eq!(status_of_head(&head(200, Some("5"))), Some(5));
    assert_eq!(status_of_head(&head(503, None)), Some(14));
    assert_eq!(status_of_head(&head(418, None)), Some(UNKNOWN_CODE));
}

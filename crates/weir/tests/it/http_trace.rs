//! W3C Trace Context through weir (`[tracing]`): a client's trace is
//! continued with weir's own span id in the one `traceparent` sent upstream
//! (its `tracestate` kept); no, several or an invalid `traceparent` start a
//! new trace; the sampled flag follows the configuration; the trace id is in
//! the access log. Without `[tracing]` the headers pass untouched. With
//! `[tracing.otlp]` the spans of sampled requests reach a real OTLP receiver
//! (opentelemetry-proto's, over gRPC and over HTTP) with their parent/child
//! links, and a collector that is gone costs spans, never requests.

use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use crate::cli::{DEADLINE, Running, free_port, lines, wait_line};
use crate::http::{metric, start, wait_connectable};
use crate::http_auth::{header, headers_backend, read_head};

/// A backend answering with the trace headers it received, one per line.
fn trace_backend() -> SocketAddr {
    headers_backend(&["traceparent", "tracestate"])
}

fn get(front: SocketAddr, headers: &str) -> String {
    crate::http::raw_get(front, "/", headers).2
}

fn config(front: SocketAddr, backend: SocketAddr, tracing: &str) -> String {
    format!(
        "[log]\nformat = \"json\"\n{tracing}\n\
         [[listeners]]\nname = \"web\"\nbind = \"{front}\"\n\
         [[listeners.routes]]\nname = \"app\"\nmode = \"l7\"\n\
         [[listeners.routes.http]]\nname = \"all\"\npool = \"p\"\n\
         [[pools]]\nname = \"p\"\n[[pools.backends]]\naddress = \"{backend}\"\n"
    )
}

const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[test]
fn a_trace_is_continued_with_weirs_span_or_started() {
    let backend = trace_backend();
    let front = free_port();
    let (_weir, out) = start(
        "trace",
        &config(
            front,
            backend,
            "[tracing]\nsample_ratio = 0.0\ntrust_client_sampling = true\n",
        ),
    );
    let body = get(
        front,
        &format!("traceparent: {PARENT}\r\ntracestate: vendor=abc\r\n"),
    );
    let lines: Vec<&str> = body.lines().collect();
    assert_eq!(lines.len(), 2, "one traceparent and the tracestate: {body}");
    let sent = lines
        .iter()
        .find_map(|l| l.strip_prefix("traceparent="))
        .expect("traceparent");
    assert!(
        sent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{sent}"
    );
    assert!(
        !sent.contains("00f067aa0ba902b7"),
        "weir's span replaces the parent's"
    );
    assert!(
        sent.ends_with("-01"),
        "the client's sampled flag is kept: {sent}"
    );
    assert!(lines.contains(&"tracestate=vendor=abc"), "{body}");
    let line = wait_line(&out, "\"trace_id\":\"4bf92f3577b34da6a3ce929d0e0e4736\"");
    assert!(line.contains("\"status\":200"), "{line}");

    // No, two or a broken traceparent: a new trace, no tracestate, and
    // sample_ratio = 0 leaves it unsampled.
    for headers in [
        String::new(),
        format!("traceparent: {PARENT}\r\ntraceparent: {PARENT}\r\ntracestate: x=1\r\n"),
        "traceparent: 00-nope\r\ntracestate: x=1\r\n".to_owned(),
    ] {
        let body = get(front, &headers);
        let lines: Vec<&str> = body.lines().collect();
        assert_eq!(lines.len(), 1, "{headers:?} -> {body}");
        let sent = lines[0].strip_prefix("traceparent=").expect("traceparent");
        assert_eq!(sent.len(), 55, "{sent}");
        assert!(!sent.contains("4bf92f3577b34da6a3ce929d0e0e4736"), "{sent}");
        assert!(sent.ends_with("-00"), "{sent}");
    }
}

#[test]
fn without_tracing_the_headers_pass_untouched() {
    let backend = trace_backend();
    let front = free_port();
    let (_weir, _out) = start("no-trace", &config(front, backend, ""));
    let body = get(front, &format!("traceparent: {PARENT}\r\n"));
    assert_eq!(body, format!("traceparent={PARENT}\n"));
    assert_eq!(get(front, ""), "");
}

/// An OTLP receiver (`peers.py otlp-grpc|otlp-http`) on `port`, and the
/// spans it received, one JSON object each.
fn collector(kind: &str, port: u16) -> (Running, mpsc::Receiver<String>) {
    let mut child = Command::new("python3")
        .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/peers.py"))
        .args([kind, &port.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 (run scripts/test.sh, which installs opentelemetry-proto)");
    let out = lines(&mut child);
    let running = Running::new(child);
    wait_connectable(SocketAddr::from(([127, 0, 0, 1], port)));
    (running, out)
}

/// Spans of trace `trace_id` from `spans` until there are `n`.
fn spans_of(spans: &mpsc::Receiver<String>, trace_id: &str, n: usize) -> Vec<serde_json::Value> {
    let end = Instant::now() + DEADLINE;
    let mut got = Vec::new();
    while got.len() < n {
        let left = end.saturating_duration_since(Instant::now());
        let line = spans
            .recv_timeout(left)
            .unwrap_or_else(|e| panic!("{} of {n} spans of {trace_id}: {e}", got.len()));
        let span: serde_json::Value = serde_json::from_str(&line).expect("a JSON span");
        if span["trace_id"] == trace_id {
            got.push(span);
        }
    }
    got
}

fn by_name<'s>(spans: &'s [serde_json::Value], name: &str) -> &'s serde_json::Value {
    spans
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no span {name:?} in {spans:?}"))
}

/// The parent span id a `traceparent` names.
fn parent_of(traceparent: &str) -> &str {
    traceparent.split('-').nth(2).unwrap_or("")
}

/// An authentication service that allows everything and keeps the
/// `traceparent` of each call.
fn tracing_auth() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let kept = Arc::clone(&seen);
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { break };
            let kept = Arc::clone(&kept);
            std::thread::spawn(move || {
                let mut reader = BufReader::new(s.try_clone().expect("clone"));
                let mut out = s;
                while let Some((_, headers)) = read_head(&mut reader) {
                    let t = header(&headers, "traceparent").unwrap_or("-").to_owned();
                    kept.lock().expect("seen").push(t);
                    if out
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    (addr, seen)
}

/// A request with forward auth, through weir to a backend, gives three
/// spans over OTLP/gRPC: the request (child of the client's span), the auth
/// call and the upstream call (children of the request), whose ids are the
/// parents in the `traceparent` each call carried.
#[test]
fn spans_reach_an_otlp_grpc_collector_with_their_links() {
    let backend = trace_backend();
    let (auth, auth_seen) = tracing_auth();
    let (admin, front, grpc) = (free_port(), free_port(), free_port());
    let (_collector, spans) = collector("otlp-grpc", grpc.port());
    let (_weir, _out) = start(
        "otlp-grpc",
        &format!(
            "[admin]\nhttp = \"{admin}\"\n[log]\naccess_log = false\n\
             [tracing]\nsample_ratio = 1.0\n\
             [tracing.otlp]\nendpoint = \"http://{grpc}\"\nservice_name = \"edge\"\ninterval = \"100ms\"\n\
             [[listeners]]\nname = \"web\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"app\"\nmode = \"l7\"\n\
             auth = {{ url = \"http://{auth}/check\", headers = [\"authorization\"] }}\n\
             [[listeners.routes.http]]\nname = \"all\"\npool = \"p\"\n\
             [[pools]]\nname = \"p\"\n[[pools.backends]]\nname = \"b1\"\naddress = \"{backend}\"\n"
        ),
    );
    let body = get(front, &format!("traceparent: {PARENT}\r\n"));
    let upstream_parent = parent_of(body.trim().strip_prefix("traceparent=").expect("sent"));
    let got = spans_of(&spans, "4bf92f3577b34da6a3ce929d0e0e4736", 3);
    let request = by_name(&got, "GET app");
    let upstream = by_name(&got, "GET p");
    let auth_call = by_name(&got, "auth");

    assert_eq!(request["service"], "edge");
    assert_eq!(request["scope"], "weir");
    assert_eq!(request["kind"], 2, "a server span");
    assert_eq!(request["parent"], "00f067aa0ba902b7", "the client's span");
    let a = &request["attributes"];
    assert_eq!(a["weir.route"], "app");
    assert_eq!(a["weir.rule"], "all");
    assert_eq!(a["weir.backend"], "b1");
    assert_eq!(a["weir.reason"], "completed");
    assert_eq!(a["http.request.method"], "GET");
    assert_eq!(a["http.response.status_code"], 200);
    // OpenTelemetry's forms: a host apart from its port, a version number.
    assert_eq!(a["server.address"], "app.example.com");
    assert_eq!(
        a["server.port"],
        serde_json::Value::Null,
        "the client named none"
    );
    assert_eq!(a["network.protocol.version"], "1.1");
    assert_eq!(request["status"], 0, "unset: no error");

    assert_eq!(upstream["kind"], 3, "a client span");
    assert_eq!(upstream["parent"], request["span_id"]);
    assert_eq!(upstream["span_id"], upstream_parent, "the backend's parent");
    assert_eq!(upstream["attributes"]["weir.pool"], "p");
    assert_eq!(upstream["attributes"]["http.response.status_code"], 200);
    assert_eq!(
        upstream["attributes"]["server.port"],
        i64::from(backend.port())
    );

    assert_eq!(auth_call["kind"], 3);
    assert_eq!(auth_call["parent"], request["span_id"]);
    assert_eq!(auth_call["attributes"]["weir.auth.result"], "allowed");
    let auth_got = auth_seen.lock().expect("seen").clone();
    assert_eq!(auth_got.len(), 1, "{auth_got:?}");
    assert!(auth_got[0].starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
    assert_eq!(parent_of(&auth_got[0]), auth_call["span_id"]);

    // The request's span holds its calls.
    let (start, end) = (&request["start"], &request["end"]);
    for call in [upstream, auth_call] {
        assert!(
            call["start"].as_u64() >= start.as_u64(),
            "{call} in {request}"
        );
        assert!(call["end"].as_u64() <= end.as_u64(), "{call} in {request}");
    }

    // No traceparent: a new trace whose root is weir's span; the auth
    // decision is cached now, so no auth call and no auth span.
    let body = get(front, "");
    let sent = body.trim().strip_prefix("traceparent=").expect("sent");
    let trace_id = sent.split('-').nth(1).expect("trace id").to_owned();
    let got = spans_of(&spans, &trace_id, 2);
    let root = by_name(&got, "GET app");
    assert_eq!(root["parent"], "", "a root span");
    assert_eq!(by_name(&got, "GET p")["parent"], root["span_id"]);
    assert_eq!(auth_seen.lock().expect("seen").len(), 1, "cached");

    let end = Instant::now() + DEADLINE;
    while metric(admin, "weir_tracing_spans_exported_total") < 5.0 {
        assert!(Instant::now() < end, "the exported spans are counted");
        std::thread::sleep(Duration::from_millis(50));
    }
    // All five exported: none waits any more.
    assert_eq!(metric(admin, "weir_tracing_queue_spans"), 0.0);
    assert_eq!(
        metric(
            admin,
            "weir_tracing_spans_dropped_total{reason=\"queue_full\"}"
        ),
        0.0
    );
    crate::http::assert_documented(admin);
}

/// OTLP/HTTP: only sampled requests are exported (here: the client's flag
/// decides, `sample_ratio = 0`); when the collector is gone, requests are
/// served as before and the spans lost are counted.
#[test]
fn otlp_http_exports_sampled_requests_and_counts_what_a_dead_collector_loses() {
    let backend = trace_backend();
    let (admin, front, receiver) = (free_port(), free_port(), free_port());
    let (collector_process, spans) = collector("otlp-http", receiver.port());
    let (_weir, _out) = start(
        "otlp-http",
        &format!(
            "[admin]\nhttp = \"{admin}\"\n[log]\naccess_log = false\n\
             [tracing]\nsample_ratio = 0.0\ntrust_client_sampling = true\n\
             [tracing.otlp]\nendpoint = \"http://{receiver}\"\nprotocol = \"http\"\n\
             interval = \"100ms\"\ntimeout = \"500ms\"\n\
             [[listeners]]\nname = \"web\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"app\"\nmode = \"l7\"\n\
             [[listeners.routes.http]]\nname = \"all\"\npool = \"p\"\n\
             [[pools]]\nname = \"p\"\n[[pools.backends]]\naddress = \"{backend}\"\n"
        ),
    );
    let unsampled = "00-11111111111111111111111111111111-00f067aa0ba902b7-00";
    get(front, &format!("traceparent: {unsampled}\r\n"));
    get(front, &format!("traceparent: {PARENT}\r\n"));
    let got = spans_of(&spans, "4bf92f3577b34da6a3ce929d0e0e4736", 2);
    assert_eq!(by_name(&got, "GET app")["service"], "weir");
    // A method of the client's making names no span: `_OTHER`, the method
    // kept as an attribute.
    let other = "00-22222222222222222222222222222222-00f067aa0ba902b7-01";
    let mut s = TcpStream::connect(front).expect("connect");
    s.set_read_timeout(Some(DEADLINE)).expect("timeout");
    write!(
        s,
        "PURGE / HTTP/1.1\r\nHost: app.example.com\r\ntraceparent: {other}\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut answer = String::new();
    let _ = std::io::Read::read_to_string(&mut s, &mut answer);
    let got = spans_of(&spans, "22222222222222222222222222222222", 2);
    let purge = by_name(&got, "_OTHER app");
    assert_eq!(purge["attributes"]["http.request.method"], "_OTHER");
    assert_eq!(purge["attributes"]["http.request.method_original"], "PURGE");
    // The unsampled request ended first: had it been exported, its spans
    // would have come in the same batch or an earlier one.
    while let Ok(line) = spans.try_recv() {
        assert!(!line.contains("11111111111111111111111111111111"), "{line}");
    }

    // The receiver printed the spans before it answered: wait for the
    // answer, so that the export is not cut short by the stop below.
    let end = Instant::now() + DEADLINE;
    while metric(admin, "weir_tracing_exports_total{result=\"ok\"}") < 1.0 {
        assert!(Instant::now() < end, "the export completes");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        metric(admin, "weir_tracing_exports_total{result=\"error\"}"),
        0.0,
        "a collector that closes after each answer is no error"
    );
    drop(collector_process);
    let end = Instant::now() + DEADLINE;
    let lost = "weir_tracing_spans_dropped_total{reason=\"export_failed\"}";
    let mut n = 0;
    while metric(admin, lost) == 0.0 {
        assert!(Instant::now() < end, "the lost spans are counted");
        let body = get(front, &format!("traceparent: {PARENT}\r\n"));
        assert!(body.starts_with("traceparent=00-4bf92f"), "served: {body}");
        n += 1;
    }
    assert!(n >= 1);
    assert!(metric(admin, "weir_tracing_exports_total{result=\"error\"}") >= 1.0);
    assert!(metric(admin, "weir_tracing_spans_exported_total") >= 2.0);
}

/// A gRPC collector that takes the connection and then says nothing (its
/// host lost, a proxy stuck): each export times out, and the next one is
/// sent on a new connection rather than on the one that hung.
#[test]
fn an_export_that_hung_is_not_sent_on_the_same_grpc_connection_again() {
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    let backend = trace_backend();
    let (admin, front) = (free_port(), free_port());
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let receiver = silent.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in silent.incoming().map_while(Result::ok) {
            count.fetch_add(1, SeqCst);
            held.push(s);
        }
    });
    let (_weir, _out) = start(
        "otlp-silent",
        &format!(
            "[admin]\nhttp = \"{admin}\"\n[log]\naccess_log = false\n\
             [tracing]\nsample_ratio = 1.0\n\
             [tracing.otlp]\nendpoint = \"http://{receiver}\"\n\
             interval = \"100ms\"\ntimeout = \"300ms\"\n\
             [[listeners]]\nname = \"web\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"app\"\nmode = \"l7\"\n\
             [[listeners.routes.http]]\nname = \"all\"\npool = \"p\"\n\
             [[pools]]\nname = \"p\"\n[[pools.backends]]\naddress = \"{backend}\"\n"
        ),
    );
    let end = Instant::now() + DEADLINE;
    while metric(admin, "weir_tracing_exports_total{result=\"timeout\"}") < 2.0 {
        assert!(Instant::now() < end, "the exports time out");
        get(front, "");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        accepted.load(SeqCst) >= 2,
        "every export went on the connection that hung"
    );
}

/// Spans still queued when weir stops are sent before it exits (here the
/// batch would otherwise wait an hour).
#[test]
fn a_graceful_stop_sends_the_queued_spans() {
    let backend = trace_backend();
    let (front, grpc, admin) = (free_port(), free_port(), free_port());
    let (_collector, spans) = collector("otlp-grpc", grpc.port());
    let (mut weir, _out) = start(
        "otlp-stop",
        &format!(
            "[admin]\nhttp = \"{admin}\"\n[log]\naccess_log = false\n\
             [tracing]\n[tracing.otlp]\nendpoint = \"http://{grpc}\"\ninterval = \"1h\"\n\
             [[listeners]]\nname = \"web\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"app\"\nmode = \"l7\"\n\
             [[listeners.routes.http]]\nname = \"all\"\npool = \"p\"\n\
             [[pools]]\nname = \"p\"\n[[pools.backends]]\naddress = \"{backend}\"\n"
        ),
    );
    get(front, &format!("traceparent: {PARENT}\r\n"));
    assert!(
        spans.recv_timeout(Duration::from_millis(300)).is_err(),
        "nothing is sent before the interval"
    );
    // The request's two spans wait for export, and the gauge says so.
    let end = std::time::Instant::now() + crate::cli::DEADLINE;
    while crate::http::metric(admin, "weir_tracing_queue_spans") != 2.0 {
        assert!(
            std::time::Instant::now() < end,
            "the waiting spans are not counted"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    crate::cli::signal(&weir.0, rustix::process::Signal::TERM);
    assert!(crate::cli::wait_exit(&mut weir.0).success());
    let got = spans_of(&spans, "4bf92f3577b34da6a3ce929d0e0e4736", 2);
    assert_eq!(by_name(&got, "GET app")["parent"], "00f067aa0ba902b7");
}

/// A reload that changes `[tracing.otlp]` (here the collector, its
/// protocol and the service name) starts a new exporter: the spans of the
/// requests after it reach the new collector under the new name, none the
/// old one, and the counters carry on.
#[test]
fn a_reload_that_changes_otlp_exports_to_the_new_collector() {
    let backend = trace_backend();
    let (admin, front, old, new) = (free_port(), free_port(), free_port(), free_port());
    let (_old_collector, old_spans) = collector("otlp-grpc", old.port());
    let (_new_collector, new_spans) = collector("otlp-http", new.port());
    let text = |otlp: &str| {
        config(
            front,
            backend,
            &format!(
                "[admin]\nhttp = \"{admin}\"\n\
                 [tracing]\nsample_ratio = 1.0\n\
                 [tracing.otlp]\n{otlp}interval = \"100ms\"\n"
            ),
        )
    };
    let file = crate::cli::temp_config(
        "otlp-reload",
        &text(&format!(
            "endpoint = \"http://{old}\"\nservice_name = \"before\"\n"
        )),
    );
    let (weir, out) = crate::cli::run_weir(&file);
    get(front, &format!("traceparent: {PARENT}\r\n"));
    let got = spans_of(&old_spans, "4bf92f3577b34da6a3ce929d0e0e4736", 2);
    assert_eq!(by_name(&got, "GET app")["service"], "before");
    let exported = || metric(admin, "weir_tracing_spans_exported_total");
    let end = Instant::now() + DEADLINE;
    while exported() < 2.0 {
        assert!(Instant::now() < end, "the first two spans are counted");
        std::thread::sleep(Duration::from_millis(20));
    }

    std::fs::write(
        &*file,
        text(&format!(
            "endpoint = \"http://{new}\"\nprotocol = \"http\"\nservice_name = \"after\"\n"
        )),
    )
    .expect("rewrite");
    crate::cli::signal(&weir.0, rustix::process::Signal::HUP);
    wait_line(&out, "config reloaded");
    let later = "00-22222222222222222222222222222222-00f067aa0ba902b7-01";
    get(front, &format!("traceparent: {later}\r\n"));
    let got = spans_of(&new_spans, "22222222222222222222222222222222", 2);
    assert_eq!(by_name(&got, "GET app")["service"], "after");
    // Counted on top of the first exporter's.
    let end = Instant::now() + DEADLINE;
    while exported() < 4.0 {
        assert!(
            Instant::now() < end,
            "the counter did not carry on: {}",
            exported()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    while let Ok(line) = old_spans.try_recv() {
        assert!(!line.contains("22222222222222222222222222222222"), "{line}");
    }
}

/// A reload that would change `[tracing.otlp]` but fails afterwards (here a
/// new listener's address is taken) leaves the running exporter in charge:
/// its queued spans are still counted on `/metrics` and a graceful stop
/// sends them to the collector the running config names, none to the one
/// the failed reload named.
#[test]
fn a_failed_reload_keeps_the_running_exporter() {
    let backend = trace_backend();
    let (admin, front, old, new) = (free_port(), free_port(), free_port(), free_port());
    let (_old_collector, old_spans) = collector("otlp-grpc", old.port());
    let (_new_collector, new_spans) = collector("otlp-grpc", new.port());
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = taken.local_addr().expect("addr");
    let text = |collector: SocketAddr, extra: &str| {
        format!(
            "{}{extra}",
            config(
                front,
                backend,
                &format!(
                    "[admin]\nhttp = \"{admin}\"\n\
                     [tracing]\n[tracing.otlp]\nendpoint = \"http://{collector}\"\ninterval = \"1h\"\n"
                ),
            )
        )
    };
    let file = crate::cli::temp_config("otlp-failed-reload", &text(old, ""));
    let (mut weir, out) = crate::cli::run_weir(&file);
    get(front, &format!("traceparent: {PARENT}\r\n"));
    let queued = || metric(admin, "weir_tracing_queue_spans");
    let end = Instant::now() + DEADLINE;
    while queued() != 2.0 {
        assert!(Instant::now() < end, "the waiting spans are not counted");
        std::thread::sleep(Duration::from_millis(20));
    }

    std::fs::write(
        &*file,
        text(
            new,
            &format!(
                "[[listeners]]\nname = \"more\"\nbind = \"{taken}\"\n\
                 [[listeners.routes]]\nname = \"r\"\npool = \"p\"\n"
            ),
        ),
    )
    .expect("rewrite");
    crate::cli::signal(&weir.0, rustix::process::Signal::HUP);
    let line = wait_line(&out, "reload failed");
    assert!(line.contains(&taken.to_string()), "{line}");
    assert_eq!(
        queued(),
        2.0,
        "the running exporter's queue is the one shown"
    );

    crate::cli::signal(&weir.0, rustix::process::Signal::TERM);
    assert!(crate::cli::wait_exit(&mut weir.0).success());
    let got = spans_of(&old_spans, "4bf92f3577b34da6a3ce929d0e0e4736", 2);
    assert_eq!(by_name(&got, "GET app")["parent"], "00f067aa0ba902b7");
    assert!(
        new_spans.recv_timeout(Duration::from_millis(300)).is_err(),
        "the failed reload's collector got spans"
    );
}

/// Spans still waiting in the exporter a reload replaced (the old config's
/// connection is still open) count on `/metrics`, and a graceful stop sends
/// them to the collector they were meant for.
#[test]
fn a_graceful_stop_sends_the_spans_of_a_replaced_exporter() {
    let backend = trace_backend();
    let (admin, front, old, new) = (free_port(), free_port(), free_port(), free_port());
    let (_old_collector, old_spans) = collector("otlp-grpc", old.port());
    let (_new_collector, _new_spans) = collector("otlp-grpc", new.port());
    let text = |collector: SocketAddr| {
        config(
            front,
            backend,
            &format!(
                "[admin]\nhttp = \"{admin}\"\n\
                 [tracing]\nsample_ratio = 1.0\n\
                 [tracing.otlp]\nendpoint = \"http://{collector}\"\ninterval = \"1h\"\n"
            ),
        )
    };
    let file = crate::cli::temp_config("otlp-retired", &text(old));
    let (mut weir, out) = crate::cli::run_weir(&file);
    // A kept-alive connection: its handler, and the exporter it holds,
    // outlive the reload.
    let mut kept = std::net::TcpStream::connect(front).expect("connect");
    kept.set_read_timeout(Some(DEADLINE)).expect("timeout");
    crate::http::keepalive_get(&mut kept, "/").expect("an answer");
    let queued = || metric(admin, "weir_tracing_queue_spans");
    let end = Instant::now() + DEADLINE;
    // The request's two spans (the server's, the backend call's).
    while queued() != 2.0 {
        assert!(Instant::now() < end, "the waiting spans are not counted");
        std::thread::sleep(Duration::from_millis(20));
    }

    std::fs::write(&*file, text(new)).expect("rewrite");
    crate::cli::signal(&weir.0, rustix::process::Signal::HUP);
    wait_line(&out, "config reloaded");
    assert_eq!(queued(), 2.0, "the replaced exporter's spans are shown");

    crate::cli::signal(&weir.0, rustix::process::Signal::TERM);
    assert!(crate::cli::wait_exit(&mut weir.0).success());
    // The request's two spans: the server's and the backend call's.
    let got: Vec<String> = (0..2)
        .map(|_| {
            old_spans
                .recv_timeout(DEADLINE)
                .expect("the old collector got the spans at the stop")
        })
        .collect();
    assert!(
        got.iter().any(|l| l.contains("\"name\": \"GET app\"")),
        "{got:?}"
    );
    drop(kept);
}

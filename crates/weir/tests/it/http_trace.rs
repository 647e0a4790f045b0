//! W3C Trace Context through weir (`[tracing]`): a client's trace is
//! continued with weir's own span id in the one `traceparent` sent upstream
//! (its `tracestate` kept); no, several or an invalid `traceparent` start a
//! new trace; the sampled flag follows the configuration; the trace id is in
//! the access log. Without `[tracing]` the headers pass untouched.

use std::net::SocketAddr;

use crate::cli::{free_port, wait_line};
use crate::http::start;
use crate::http_auth::headers_backend;

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

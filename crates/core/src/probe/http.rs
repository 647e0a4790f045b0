//! The HTTP/1.1 probe: one request (the check's method, headers and body) on
//! a connection that may be kept for the next probe; the answer is parsed by
//! `weir_wire::http1`, redirects to the same server are followed when the
//! check says so, and the last answer is held against `expect_status` and
//! `expect_body`.

use bytes::BufMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use weir_config::{HttpCheck, JsonField, JsonValue};
use weir_wire::http1::{Response, parse_response_at_eof, parse_response_to};

use crate::Reason;
use crate::health::Report;

/// The most read from a probe's connection at once.
const READ_CHUNK: usize = 4096;

/// What an HTTP probe found, and whether its connection can serve the next one.
pub(super) struct Outcome {
    pub(super) report: Report,
    /// The connection is in a clean state and the server keeps it open.
    pub(super) reusable: bool,
    /// Failed at the transport level (write, read, closed early).
    pub(super) io_failure: bool,
}

impl Outcome {
    fn io(text: String) -> Outcome {
        Outcome {
            report: Report::protocol(text),
            reusable: false,
            io_failure: true,
        }
    }
}

/// The request a check sends to `path`, built once per probe target (and
/// per redirect followed).
pub(super) fn request(check: &HttpCheck, host: &str, path: &str, method: &str) -> Vec<u8> {
    let mut r = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: weir-health-check\r\nAccept: */*\r\n"
    );
    for (name, value) in &check.headers {
        r.push_str(name);
        r.push_str(": ");
        r.push_str(value);
        r.push_str("\r\n");
    }
    let body = if method == "GET" || method == "HEAD" {
        check.body.as_deref().filter(|b| !b.is_empty())
    } else {
        Some(check.body.as_deref().unwrap_or_default())
    };
    if let Some(body) = body {
        r.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    } else {
        r.push_str("\r\n");
    }
    r.into_bytes()
}

/// The path a redirect's `Location` leads to on the probed server: a path,
/// a reference relative to `base` (the path just asked for; RFC 9110
/// §10.2.2, resolved as RFC 3986 §5.2 says), or an absolute URL whose
/// authority is `host`; `None` for another server.
fn same_server(location: &str, host: &str, base: &str) -> Option<String> {
    // A fragment is the client's own; it is never sent.
    let location = location.split('#').next().unwrap_or_default();
    let absolute = location
        .strip_prefix("http://")
        .or_else(|| location.strip_prefix("https://"))
        .or_else(|| location.strip_prefix("//"));
    if let Some(rest) = absolute {
        let (authority, path) = rest.find('/').map_or((rest, "/"), |i| rest.split_at(i));
        return authority
            .eq_ignore_ascii_case(host)
            .then(|| path.to_owned());
    }
    if location.starts_with('/') {
        return Some(location.to_owned());
    }
    // Another scheme (`ftp:`, `mailto:`) is another server; a colon after
    // a slash or `?` is part of a path or query.
    let scheme_end = location.find([':', '/', '?']);
    if scheme_end.is_some_and(|i| location.as_bytes()[i] == b':') {
        return None;
    }
    let base = base.split('?').next().unwrap_or("/");
    Some(if location.is_empty() {
        base.to_owned()
    } else if let Some(query) = location.strip_prefix('?') {
        format!("{base}?{query}")
    } else {
        let (path, query) = location
            .find('?')
            .map_or((location, ""), |i| location.split_at(i));
        let dir = base.rfind('/').map_or("/", |i| &base[..=i]);
        let mut joined = without_dots(&format!("{dir}{path}"));
        joined.push_str(query);
        joined
    })
}

/// A path with its `.` and `..` segments resolved (RFC 3986 §5.2.4), never
/// above the root.
fn without_dots(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    for (i, seg) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        match *seg {
            "." => {
                if last {
                    out.push("");
                }
            }
            ".." => {
                out.pop();
                if last {
                    out.push("");
                }
            }
            other => out.push(other),
        }
    }
    format!("/{}", out.join("/"))
}

/// Sends `request`, follows redirects to the same server as the check
/// allows, and judges the last answer.
pub(super) async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    request: &[u8],
    check: &HttpCheck,
    host: &str,
) -> Outcome {
    // Borrowed: a 303 turns it into GET, for the redirected request only.
    let mut method = check.method.as_str();
    let mut next: Option<Vec<u8>> = None;
    let mut hops = 0;
    // The path asked for, which a relative `Location` is read against.
    let mut at = check.path.clone();
    loop {
        let sent = next.as_deref().unwrap_or(request);
        let (response, closed) = match one(stream, sent, check, method == "HEAD").await {
            Ok(r) => r,
            Err(outcome) => return outcome,
        };
        let reusable = response.keep_alive && !closed;
        let redirect = matches!(response.status, 301 | 302 | 303 | 307 | 308);
        if redirect && hops < check.follow_redirects {
            let Some(location) = response.location.as_deref() else {
                return judged(&response, reusable, check);
            };
            let Some(path) = same_server(location, host, &at) else {
                return failed(
                    Reason::Status,
                    format!(
                        "http status {}, redirected to another server: {}",
                        response.status,
                        short(location)
                    ),
                );
            };
            if !reusable {
                return failed(
                    Reason::Status,
                    format!(
                        "http status {}, redirected to {}, but the server closed the connection",
                        response.status,
                        short(&path)
                    ),
                );
            }
            if response.status == 303 {
                method = "GET";
            }
            hops += 1;
            next = Some(self::request(check, host, &path, method));
            at = path;
            continue;
        }
        return judged(&response, reusable, check);
    }
}

/// One request and its answer; `closed` when the server closed after it.
async fn one<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    request: &[u8],
    check: &HttpCheck,
    head_request: bool,
) -> Result<(Response, bool), Outcome> {
    if let Err(e) = stream.write_all(request).await {
        return Err(Outcome::io(format!(
            "http: cannot send the request: {}",
            io_text(&e)
        )));
    }
    let mut buf = Vec::with_capacity(1024);
    loop {
        match parse_response_to(&buf, head_request) {
            Ok(Some(r)) => return Ok((r, false)),
            Ok(None) => {}
            Err(e) => return Err(Outcome::io(format!("http: invalid response: {e}"))),
        }
        if buf.len() >= check.max_response {
            // The backend answered, too much: its failure, not the link's.
            return Err(failed(
                Reason::Body,
                format!(
                    "http: response larger than max_response ({} bytes)",
                    check.max_response
                ),
            ));
        }
        // Read straight into `buf`: a buffer on the stack would live in
        // the probe's future, which every probe task keeps for its
        // lifetime (thousands of them), and be zeroed for every read.
        let want = READ_CHUNK.min(check.max_response - buf.len());
        buf.reserve(want);
        match stream.read_buf(&mut (&mut buf).limit(want)).await {
            Ok(0) if buf.is_empty() => {
                return Err(Outcome::io(
                    "http: connection closed without a response".into(),
                ));
            }
            Ok(0) => {
                return match parse_response_at_eof(&buf) {
                    Ok(r) => Ok((r, true)),
                    Err(e) => Err(Outcome::io(format!("http: invalid response: {e}"))),
                };
            }
            Ok(_) => {}
            Err(e) => return Err(Outcome::io(format!("http: {}", io_text(&e)))),
        }
    }
}

fn failed(reason: Reason, text: String) -> Outcome {
    Outcome {
        report: Report::failed(reason, text),
        reusable: false,
        io_failure: false,
    }
}

/// The last answer against the check's expectations: it passes when the
/// status, every `expect_body` text and every `expect_json` field hold;
/// else it is a standby answer when the check's `standby` conditions all
/// hold; else it fails, saying the first expectation it missed.
fn judged(response: &Response, reusable: bool, check: &HttpCheck) -> Outcome {
    // Parsed once, only when some condition reads it.
    let wants_json =
        !check.expect_json.is_empty() || check.standby.as_ref().is_some_and(|s| !s.json.is_empty());
    let json = wants_json.then(|| serde_json::from_slice::<serde_json::Value>(&response.body).ok());
    let json = json.flatten();
    let first_miss = missed(
        response,
        json.as_ref(),
        Some(&check.expect_status),
        &check.expect_body,
        &check.expect_json,
    );
    let report = match first_miss {
        None => Report::passed(format!("http status {}", response.status)),
        Some((reason, why)) => match &check.standby {
            Some(s)
                if missed(response, json.as_ref(), s.status.as_ref(), &s.body, &s.json)
                    .is_none() =>
            {
                Report::standby(format!("http status {}, standby ({why})", response.status))
            }
            _ => Report::failed(reason, why),
        },
    };
    Outcome {
        report,
        reusable,
        io_failure: false,
    }
}

/// The first of these conditions the answer misses, with its reason and
/// what was seen; `None` when all hold.
fn missed(
    response: &Response,
    json: Option<&serde_json::Value>,
    status: Option<&weir_config::StatusMatch>,
    body: &[String],
    fields: &[JsonField],
) -> Option<(Reason, String)> {
    let code = response.status;
    if status.is_some_and(|s| !s.matches(code)) {
        return Some((Reason::Status, format!("http status {code}")));
    }
    if let Some(needle) = body
        .iter()
        .find(|n| !contains(&response.body, n.as_bytes()))
    {
        return Some((
            Reason::Body,
            format!("http status {code}, body does not contain {needle:?}"),
        ));
    }
    if fields.is_empty() {
        return None;
    }
    let Some(json) = json else {
        return Some((
            Reason::Body,
            format!("http status {code}, body is not JSON"),
        ));
    };
    fields.iter().find_map(|f| {
        let found = f.path.iter().try_fold(json, |v, name| v.get(name.as_str()));
        let holds = found.is_some_and(|v| json_equals(v, &f.value));
        (!holds).then(|| {
            let seen = found.map_or_else(|| "absent".to_owned(), |v| short(&v.to_string()));
            (
                Reason::Body,
                format!(
                    "http status {code}, json {} is {seen}, expected {}",
                    f.path.join("."),
                    f.value
                ),
            )
        })
    })
}

fn json_equals(v: &serde_json::Value, want: &JsonValue) -> bool {
    match want {
        JsonValue::Str(s) => v.as_str() == Some(s.as_str()),
        JsonValue::Int(n) => v.as_i64() == Some(*n),
        JsonValue::Bool(b) => v.as_bool() == Some(*b),
    }
}

/// At most 64 characters of what a field held, for the history.
/// `s` cut to 64 characters: text a backend chose goes into reasons, logs
/// and the history, so it must stay small.
pub(super) fn short(s: &str) -> String {
    match s.char_indices().nth(64) {
        Some((at, _)) => format!("{}...", &s[..at]),
        None => s.to_owned(),
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

fn io_text(e: &std::io::Error) -> String {
    use std::io::ErrorKind::*;
    match e.kind() {
        ConnectionReset => "connection reset".into(),
        BrokenPipe => "connection closed".into(),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check() -> HttpCheck {
        HttpCheck {
            path: "/health".into(),
            host: None,
            expect_status: weir_config::StatusMatch {
                ranges: vec![(200, 299)],
            },
            expect_body: Vec::new(),
            expect_json: Vec::new(),
            standby: None,
            method: "GET".into(),
            headers: vec![("X-Probe".into(), "weir".into())],
            body: None,
            max_response: 1024,
            follow_redirects: 0,
            tls: None,
        }
    }

    fn answer(status: u16, body: &str) -> Response {
        let text = format!(
            "HTTP/1.1 {status} X\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        parse_response_at_eof(text.as_bytes()).expect("an answer")
    }

    fn field(path: &str, value: JsonValue) -> JsonField {
        JsonField {
            path: path.split('.').map(str::to_owned).collect(),
            value,
        }
    }

    /// Patroni's `/primary`: the status, the JSON state, and a running
    /// replica's 503 as standby.
    #[test]
    fn expectations_all_hold_or_the_answer_is_standby_or_a_failure() {
        let c = HttpCheck {
            expect_status: weir_config::StatusMatch {
                ranges: vec![(200, 200)],
            },
            expect_body: vec!["role".into()],
            expect_json: vec![
                field("state", JsonValue::Str("running".into())),
                field("xlog.received", JsonValue::Int(5)),
                field("paused", JsonValue::Bool(false)),
            ],
            standby: Some(Box::new(weir_config::Standby {
                status: Some(weir_config::StatusMatch {
                    ranges: vec![(503, 503)],
                }),
                body: Vec::new(),
                json: vec![field("state", JsonValue::Str("running".into()))],
            })),
            ..check()
        };
        let judge = |status: u16, body: &str| judged(&answer(status, body), true, &c).report;
        let primary =
            r#"{"state": "running", "role": "master", "xlog": {"received": 5}, "paused": false}"#;
        assert!(judge(200, primary).ok());
        let stopped =
            r#"{"state": "stopped", "role": "master", "xlog": {"received": 5}, "paused": false}"#;
        let r = judge(200, stopped);
        assert_eq!(r.failure, Some(Reason::Body));
        assert_eq!(
            r.text,
            "http status 200, json state is \"stopped\", expected \"running\""
        );
        let r = judge(200, r#"{"state": "running", "role": "m", "paused": false}"#);
        assert_eq!(
            r.text,
            "http status 200, json xlog.received is absent, expected 5"
        );
        let r = judge(
            200,
            r#"{"state": "running", "role": "m", "xlog": {"received": 5}, "paused": "no"}"#,
        );
        assert_eq!(
            r.text,
            "http status 200, json paused is \"no\", expected false"
        );
        let r = judge(200, "role: not json");
        assert_eq!(r.text, "http status 200, body is not JSON");
        let r = judge(200, r#"{"state": "running"}"#);
        assert_eq!(r.text, "http status 200, body does not contain \"role\"");
        // A running replica: standby, saying what it missed.
        let r = judge(503, r#"{"state": "running", "role": "replica"}"#);
        assert_eq!(r.verdict(), crate::health::Verdict::Standby);
        assert_eq!(r.text, "http status 503, standby (http status 503)");
        // A replica whose postgres stopped: down.
        let r = judge(503, r#"{"state": "stopped", "role": "replica"}"#);
        assert_eq!(r.failure, Some(Reason::Status));
        assert_eq!(judge(500, "{}").failure, Some(Reason::Status));
    }

    #[test]
    fn requests_carry_the_method_headers_and_body() {
        let c = check();
        assert_eq!(
            request(&c, "db:80", "/health", "GET"),
            b"GET /health HTTP/1.1\r\nHost: db:80\r\nUser-Agent: weir-health-check\r\nAccept: */*\r\nX-Probe: weir\r\n\r\n"
        );
        let c = HttpCheck {
            body: Some("{\"q\":1}".into()),
            ..check()
        };
        let r = String::from_utf8(request(&c, "db", "/x", "POST")).expect("ascii");
        assert!(r.starts_with("POST /x HTTP/1.1\r\n"), "{r}");
        assert!(r.ends_with("Content-Length: 7\r\n\r\n{\"q\":1}"), "{r}");
        // A POST without a body still says how long it is.
        let r = String::from_utf8(request(&check(), "db", "/x", "POST")).expect("ascii");
        assert!(r.ends_with("Content-Length: 0\r\n\r\n"), "{r}");
    }

    #[test]
    fn redirects_are_followed_only_to_the_same_server() {
        let at = |location: &str| same_server(location, "db:80", "/health/live?v=1");
        assert_eq!(at("/next").as_deref(), Some("/next"));
        assert_eq!(at("http://DB:80/ready?x=1").as_deref(), Some("/ready?x=1"));
        assert_eq!(at("https://db:80").as_deref(), Some("/"));
        assert_eq!(at("//db:80/ready").as_deref(), Some("/ready"));
        assert_eq!(at("http://other:80/ready"), None);
        assert_eq!(at("//other/ready"), None);
        assert_eq!(at("ftp://db:80/ready"), None);
        assert_eq!(at("mailto:ops@example.com"), None);
        // Relative references, read against the path asked for.
        assert_eq!(at("ready").as_deref(), Some("/health/ready"));
        assert_eq!(at("ready?full=1").as_deref(), Some("/health/ready?full=1"));
        assert_eq!(at("./ready").as_deref(), Some("/health/ready"));
        assert_eq!(at("../ready").as_deref(), Some("/ready"));
        assert_eq!(at("../../../ready").as_deref(), Some("/ready"));
        assert_eq!(at("sub/").as_deref(), Some("/health/sub/"));
        assert_eq!(at("..").as_deref(), Some("/"));
        assert_eq!(at("?v=2").as_deref(), Some("/health/live?v=2"));
        assert_eq!(at("a:b/c"), None, "a scheme");
        assert_eq!(at("a/b:c").as_deref(), Some("/health/a/b:c"));
        assert_eq!(at("ready#top").as_deref(), Some("/health/ready"));
        assert_eq!(at("/next?x#top").as_deref(), Some("/next?x"));
    }

    async fn run(check: &HttpCheck, answers: &[&[u8]]) -> (Report, Vec<String>) {
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        let answers: Vec<Vec<u8>> = answers.iter().map(|a| a.to_vec()).collect();
        let seen = tokio::spawn(async move {
            let mut requests = Vec::new();
            for a in answers {
                let mut buf = vec![0u8; 4096];
                let n = server.read(&mut buf).await.expect("read");
                requests.push(String::from_utf8_lossy(&buf[..n]).into_owned());
                server.write_all(&a).await.expect("write");
            }
            requests
        });
        let req = request(check, "db:80", &check.path, &check.method);
        let outcome = exchange(&mut client, &req, check, "db:80").await;
        drop(client);
        (outcome.report, seen.await.expect("server"))
    }

    #[tokio::test]
    async fn a_redirect_is_followed_on_the_same_connection() {
        let c = HttpCheck {
            follow_redirects: 1,
            ..check()
        };
        let (report, seen) = run(
            &c,
            &[
                b"HTTP/1.1 302 Found\r\nLocation: /ready\r\nContent-Length: 0\r\n\r\n",
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            ],
        )
        .await;
        assert!(report.ok(), "{report:?}");
        assert!(seen[1].starts_with("GET /ready HTTP/1.1\r\n"), "{seen:?}");
        // Without following, the redirect itself is judged.
        let (report, _) = run(
            &check(),
            &[b"HTTP/1.1 302 Found\r\nLocation: /ready\r\nContent-Length: 0\r\n\r\n"],
        )
        .await;
        assert_eq!(report.text, "http status 302");
    }

    /// Early Hints or a `100 Continue` before the answer: the answer is
    /// judged, not them (a backend that sends hints was down for good).
    #[tokio::test]
    async fn interim_answers_before_the_answer_are_passed_over() {
        let (report, _) = run(
            &check(),
            &[b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n\
                HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"],
        )
        .await;
        assert!(report.ok(), "{report:?}");
    }

    /// The backend's `Location` is its text: cut short in the reason, which
    /// goes to the history, the journal and the state file.
    #[tokio::test]
    async fn a_long_location_is_cut_in_the_reason() {
        let c = HttpCheck {
            follow_redirects: 1,
            max_response: 64 * 1024,
            ..check()
        };
        let answer = format!(
            "HTTP/1.1 302 Found\r\nLocation: http://elsewhere.example/{}\r\nContent-Length: 0\r\n\r\n",
            "a".repeat(20_000)
        );
        let (report, _) = run(&c, &[answer.as_bytes()]).await;
        assert!(!report.ok());
        assert!(report.text.len() < 200, "{} bytes", report.text.len());
        assert!(
            report.text.starts_with(
                "http status 302, redirected to another server: http://elsewhere.example/aaa"
            ),
            "{}",
            report.text
        );
    }

    #[tokio::test]
    async fn a_larger_answer_than_max_response_fails() {
        let big = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: 2000\r\n\r\n{}",
            "x".repeat(2000)
        );
        let (report, _) = run(&check(), &[big.as_bytes()]).await;
        assert!(!report.ok());
        assert!(
            report
                .text
                .contains("larger than max_response (1024 bytes)"),
            "{report:?}"
        );
    }

    #[tokio::test]
    async fn a_head_answer_has_no_body_to_wait_for() {
        let c = HttpCheck {
            method: "HEAD".into(),
            ..check()
        };
        let (report, seen) = run(&c, &[b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n"]).await;
        assert!(report.ok(), "{report:?}");
        assert!(seen[0].starts_with("HEAD /health HTTP/1.1\r\n"));
    }

    /// A probe task keeps its probe's future for as long as it runs, and
    /// there may be thousands: what a probe holds across its awaits stays
    /// small (no buffer on the stack), the rare big states (a TLS handshake,
    /// gRPC's HTTP/2 connection) boxed. It was 8 KiB, most of it gRPC's.
    #[test]
    fn a_probe_future_stays_small() {
        let addr: std::net::SocketAddr = "127.0.0.1:1".parse().expect("an address");
        let mut prober = crate::probe::Prober::new(
            crate::probe::Probe::Http(check()),
            addr,
            weir_config::ProxyVersion::Off,
        )
        .expect("a prober");
        let probe = prober.run(addr, std::time::Duration::from_secs(1));
        let size = std::mem::size_of_val(&probe);
        assert!(size <= 2048, "a probe's future takes {size} bytes");
    }
}

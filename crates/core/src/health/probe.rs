//! One probe of one backend: a TCP connect or an HTTP/1.1 GET. Every probe is
//! bounded by the check's `timeout` as a whole, and says in a few words what it
//! saw; that text becomes the cause of a transition.

use std::net::SocketAddr;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use weir_config::{GrpcCheck, HttpCheck, ProbeTls};

use super::grpc;
use crate::stats::CheckReason;
use crate::tls;

/// Most bytes of an HTTP response read by a probe (status, headers and body).
const MAX_RESPONSE: usize = 64 * 1024;

/// What to probe.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Probe {
    Tcp,
    Http(HttpCheck),
    Grpc(GrpcCheck),
}

/// A probe ready to run against one address: its TLS connector is built once,
/// and an HTTP probe keeps its connection open between probes when the server
/// allows it (as Envoy does by default), so a probe costs one request instead of
/// a connect, a request and a close.
pub(crate) struct Prober {
    probe: Probe,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    conn: Option<Conn>,
    /// The HTTP request, built once.
    request: Vec<u8>,
}

/// A probe connection kept for the next probe.
enum Conn {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl std::fmt::Debug for Prober {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prober")
            .field("probe", &self.probe)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Prober {
    pub(crate) fn new(probe: Probe, addr: SocketAddr) -> Result<Prober, String> {
        let tls_of = |t: &ProbeTls, host: Option<&str>, alpn: &[&[u8]]| -> Result<_, String> {
            let config = tls::client_config(t, alpn)?;
            Ok((
                TlsConnector::from(config),
                tls::server_name(t, host, addr.ip()),
            ))
        };
        let tls = match &probe {
            Probe::Tcp => None,
            Probe::Http(h) => h
                .tls
                .as_ref()
                .map(|t| tls_of(t, h.host.as_deref(), &[b"http/1.1"]))
                .transpose()?,
            Probe::Grpc(g) => g
                .tls
                .as_ref()
                .map(|t| tls_of(t, None, &[b"h2"]))
                .transpose()?,
        };
        let request = match &probe {
            Probe::Http(check) => {
                let host = check.host.clone().unwrap_or_else(|| addr.to_string());
                format!(
                    "GET {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: weir-health-check\r\nAccept: */*\r\n\r\n",
                    check.path
                )
                .into_bytes()
            }
            _ => Vec::new(),
        };
        Ok(Prober {
            probe,
            tls,
            conn: None,
            request,
        })
    }

    /// Runs one probe, bounded by `timeout` as a whole. A probe cut by the
    /// timeout drops its connection.
    pub(crate) async fn run(&mut self, addr: SocketAddr, timeout: Duration) -> Report {
        match tokio::time::timeout(timeout, self.run_inner(addr)).await {
            Ok(report) => report,
            Err(_) => Report::failed(
                CheckReason::Timeout,
                format!("timeout after {}", humanize(timeout)),
            ),
        }
    }

    async fn run_inner(&mut self, addr: SocketAddr) -> Report {
        let Prober {
            probe,
            tls,
            conn,
            request,
        } = self;
        match probe {
            Probe::Tcp => match connect(addr).await {
                Ok(_) => Report::ok("connect ok"),
                Err(report) => report,
            },
            Probe::Http(check) => {
                if let Some(mut c) = conn.take() {
                    let outcome = http_on(&mut c, request, check).await;
                    // A kept connection the server has closed meanwhile is not a
                    // failure of the backend: try again on a fresh one.
                    if !outcome.io_failure {
                        if outcome.reusable {
                            *conn = Some(c);
                        }
                        return outcome.report;
                    }
                }
                let mut c = match open(addr, tls.as_ref()).await {
                    Ok(c) => c,
                    Err(report) => return report,
                };
                let outcome = http_on(&mut c, request, check).await;
                if outcome.reusable {
                    *conn = Some(c);
                }
                outcome.report
            }
            Probe::Grpc(check) => match open(addr, tls.as_ref()).await {
                Ok(Conn::Plain(s)) => {
                    grpc::check(s, &addr.to_string(), false, &check.service).await
                }
                Ok(Conn::Tls(s)) => grpc::check(*s, &addr.to_string(), true, &check.service).await,
                Err(report) => report,
            },
        }
    }
}

/// Connects, with the socket options every probe connection gets.
async fn connect(addr: SocketAddr) -> Result<TcpStream, Report> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| connect_failure(&e))?;
    let _ = stream.set_nodelay(true);
    // Close probe connections with a reset, as HAProxy does: no FIN exchange and
    // no TIME_WAIT on either side, which matters at thousands of probes a second.
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    Ok(stream)
}

/// Connects and, when the check uses TLS, completes the handshake.
async fn open(
    addr: SocketAddr,
    tls: Option<&(TlsConnector, ServerName<'static>)>,
) -> Result<Conn, Report> {
    let stream = connect(addr).await?;
    match tls {
        None => Ok(Conn::Plain(stream)),
        Some((connector, name)) => match connector.connect(name.clone(), stream).await {
            Ok(s) => Ok(Conn::Tls(Box::new(s))),
            Err(e) => Err(Report::failed(CheckReason::Tls, format!("tls: {e}"))),
        },
    }
}

async fn http_on(conn: &mut Conn, request: &[u8], check: &HttpCheck) -> HttpOutcome {
    match conn {
        Conn::Plain(s) => http(s, request, check).await,
        Conn::Tls(s) => http(s.as_mut(), request, check).await,
    }
}

/// The result of one probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Report {
    pub(crate) ok: bool,
    /// What it saw, in words (kept in the transition history).
    pub(crate) reason: String,
    /// The same, as a bounded metrics label.
    pub(crate) kind: CheckReason,
}

impl Report {
    pub(crate) fn ok(reason: impl Into<String>) -> Report {
        Report {
            ok: true,
            reason: reason.into(),
            kind: CheckReason::Ok,
        }
    }

    /// A failure of the protocol spoken (invalid or broken answer).
    pub(crate) fn fail(reason: impl Into<String>) -> Report {
        Report::failed(CheckReason::Protocol, reason)
    }

    pub(crate) fn failed(kind: CheckReason, reason: impl Into<String>) -> Report {
        Report {
            ok: false,
            reason: reason.into(),
            kind,
        }
    }
}

/// What an HTTP probe found, and whether its connection can serve the next one.
struct HttpOutcome {
    report: Report,
    /// The connection is in a clean state and the server keeps it open.
    reusable: bool,
    /// Failed at the transport level (write, read, closed early).
    io_failure: bool,
}

impl HttpOutcome {
    fn io(reason: String) -> HttpOutcome {
        HttpOutcome {
            report: Report::fail(reason),
            reusable: false,
            io_failure: true,
        }
    }
}

async fn http<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    request: &[u8],
    check: &HttpCheck,
) -> HttpOutcome {
    if let Err(e) = stream.write_all(request).await {
        return HttpOutcome::io(format!("http: cannot send the request: {}", io_reason(&e)));
    }
    let mut buf = Vec::with_capacity(1024);
    let mut closed = false;
    let response = loop {
        match parse_response(&buf) {
            Ok(Some(r)) => break r,
            Ok(None) => {}
            Err(e) => return HttpOutcome::io(format!("http: invalid response: {e}")),
        }
        if buf.len() >= MAX_RESPONSE {
            return HttpOutcome::io(format!("http: response larger than {MAX_RESPONSE} bytes"));
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) if buf.is_empty() => {
                return HttpOutcome::io("http: connection closed without a response".into());
            }
            Ok(0) => {
                closed = true;
                match parse_response_at_eof(&buf) {
                    Ok(r) => break r,
                    Err(e) => return HttpOutcome::io(format!("http: invalid response: {e}")),
                }
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return HttpOutcome::io(format!("http: {}", io_reason(&e))),
        }
    };
    let reusable = response.keep_alive && !closed;
    let report = if !check.expect_status.matches(response.status) {
        Report::failed(
            CheckReason::Status,
            format!("http status {}", response.status),
        )
    } else if let Some(needle) = &check.expect_body
        && !contains(&response.body, needle.as_bytes())
    {
        Report::failed(
            CheckReason::Body,
            format!(
                "http status {}, body does not contain {needle:?}",
                response.status
            ),
        )
    } else {
        Report::ok(format!("http status {}", response.status))
    };
    HttpOutcome {
        report,
        reusable,
        io_failure: false,
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

fn connect_failure(e: &std::io::Error) -> Report {
    use std::io::ErrorKind::*;
    match e.kind() {
        ConnectionRefused => Report::failed(CheckReason::Refused, "connect refused"),
        ConnectionReset => Report::failed(CheckReason::Reset, "connect reset"),
        TimedOut => Report::failed(CheckReason::Timeout, "connect timeout"),
        _ => Report::failed(CheckReason::Connect, format!("connect failed: {e}")),
    }
}

fn io_reason(e: &std::io::Error) -> String {
    use std::io::ErrorKind::*;
    match e.kind() {
        ConnectionReset => "connection reset".into(),
        BrokenPipe => "connection closed".into(),
        _ => e.to_string(),
    }
}

fn humanize(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// A parsed HTTP response: status and (decoded) body.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) body: Vec<u8>,
    /// HTTP/1.1 without `Connection: close`, with a delimited body.
    pub(crate) keep_alive: bool,
}

enum Framing {
    Length(usize),
    Chunked,
    UntilClose,
}

/// Parses a response from the bytes received so far: `Ok(None)` = need more.
/// Pure, so it is tested on byte strings.
pub(crate) fn parse_response(buf: &[u8]) -> Result<Option<Response>, String> {
    let Some(head) = head(buf)? else {
        return Ok(None);
    };
    let body = &buf[head.body_at..];
    let body = match head.framing {
        Framing::Length(n) if body.len() >= n => body[..n].to_vec(),
        Framing::Length(_) | Framing::UntilClose => return Ok(None),
        Framing::Chunked => match dechunk(body)? {
            Some(b) => b,
            None => return Ok(None),
        },
    };
    Ok(Some(head.response(body)))
}

/// Parses a response when the server has closed the connection.
pub(crate) fn parse_response_at_eof(buf: &[u8]) -> Result<Response, String> {
    let Some(head) = head(buf)? else {
        return Err(if buf.is_empty() {
            "connection closed without a response".into()
        } else {
            "connection closed in the middle of the headers".into()
        });
    };
    let body = &buf[head.body_at..];
    let body = match head.framing {
        Framing::UntilClose => body.to_vec(),
        Framing::Length(n) if body.len() >= n => body[..n].to_vec(),
        Framing::Length(_) => return Err("body shorter than Content-Length".into()),
        Framing::Chunked => dechunk(body)?.ok_or("truncated chunked body")?,
    };
    Ok(head.response(body))
}

struct Head {
    status: u16,
    framing: Framing,
    body_at: usize,
    keep_alive: bool,
}

impl Head {
    fn response(&self, body: Vec<u8>) -> Response {
        Response {
            status: self.status,
            body,
            keep_alive: self.keep_alive && !matches!(self.framing, Framing::UntilClose),
        }
    }
}

fn head(buf: &[u8]) -> Result<Option<Head>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    let body_at = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let status = resp.code.ok_or("no status code")?;
    // HTTP/1.1 keeps the connection unless told otherwise; HTTP/1.0 closes.
    let mut keep_alive = resp.version == Some(1);
    let mut framing = Framing::UntilClose;
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            let v = String::from_utf8_lossy(h.value);
            if v.to_ascii_lowercase().contains("chunked") {
                framing = Framing::Chunked;
            }
        } else if h.name.eq_ignore_ascii_case("content-length")
            && !matches!(framing, Framing::Chunked)
        {
            let n = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or("invalid Content-Length")?;
            framing = Framing::Length(n);
        } else if h.name.eq_ignore_ascii_case("connection")
            && String::from_utf8_lossy(h.value)
                .to_ascii_lowercase()
                .contains("close")
        {
            keep_alive = false;
        }
    }
    // Responses that never have a body.
    if status == 204 || status == 304 || (100..200).contains(&status) {
        framing = Framing::Length(0);
    }
    Ok(Some(Head {
        status,
        framing,
        body_at,
        keep_alive,
    }))
}

/// Decodes a chunked body; `Ok(None)` = incomplete. Trailers are ignored.
fn dechunk(mut buf: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = buf.windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let line = std::str::from_utf8(&buf[..eol]).map_err(|_| "invalid chunk size")?;
        let size_text = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| "invalid chunk size")?;
        buf = &buf[eol + 2..];
        if size == 0 {
            return Ok(Some(out));
        }
        if buf.len() < size + 2 {
            return Ok(None);
        }
        out.extend_from_slice(&buf[..size]);
        buf = &buf[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_body() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nrunning").expect("ok");
        assert_eq!(
            r,
            Some(Response {
                status: 200,
                body: b"running".to_vec(),
                keep_alive: true,
            })
        );
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nrun"),
            Ok(None)
        );
        assert_eq!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Le"), Ok(None));
    }

    #[test]
    fn chunked_body() {
        let raw = b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nrepl\r\n3;x=y\r\nica\r\n0\r\n\r\n";
        let r = parse_response(raw).expect("ok").expect("complete");
        assert_eq!((r.status, r.body.as_slice()), (503, &b"replica"[..]));
        assert_eq!(parse_response(&raw[..raw.len() - 6]), Ok(None));
        assert!(
            parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n").is_err()
        );
    }

    #[test]
    fn body_until_close() {
        let raw = b"HTTP/1.0 200 OK\r\n\r\nhello";
        assert_eq!(parse_response(raw), Ok(None));
        assert_eq!(
            parse_response_at_eof(raw),
            Ok(Response {
                status: 200,
                body: b"hello".to_vec(),
                keep_alive: false,
            })
        );
    }

    #[test]
    fn errors_are_described() {
        assert!(parse_response(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
        assert!(parse_response_at_eof(b"").is_err());
        assert!(
            parse_response_at_eof(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort").is_err()
        );
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n").is_err());
    }

    #[test]
    fn keep_alive_follows_version_and_connection_header() {
        let ka = |raw: &[u8]| {
            parse_response(raw)
                .expect("ok")
                .expect("complete")
                .keep_alive
        };
        assert!(ka(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"));
        assert!(!ka(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
        ));
        assert!(!ka(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"));
    }

    #[test]
    fn no_body_statuses() {
        let r = parse_response(b"HTTP/1.1 204 No Content\r\n\r\n").expect("ok");
        assert_eq!(
            r,
            Some(Response {
                status: 204,
                body: vec![],
                keep_alive: true,
            })
        );
    }
}

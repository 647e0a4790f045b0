//! The HTTP/1.1 probe: one GET on a connection that may be kept for the next
//! probe; the answer is parsed by `weir_wire::http1` and held against the
//! check's `expect_status` and `expect_body`.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use weir_config::HttpCheck;
use weir_wire::http1::{parse_response, parse_response_at_eof};

use crate::Reason;
use crate::health::Report;

/// Most bytes of an HTTP response read by a probe (status, headers and body).
const MAX_RESPONSE: usize = 64 * 1024;

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

/// The request a check sends, built once per probe target.
pub(super) fn request(check: &HttpCheck, default_host: &str) -> Vec<u8> {
    let host = check.host.as_deref().unwrap_or(default_host);
    format!(
        "GET {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: weir-health-check\r\nAccept: */*\r\n\r\n",
        check.path
    )
    .into_bytes()
}

/// Sends `request` and judges the answer.
pub(super) async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    request: &[u8],
    check: &HttpCheck,
) -> Outcome {
    if let Err(e) = stream.write_all(request).await {
        return Outcome::io(format!("http: cannot send the request: {}", io_text(&e)));
    }
    let mut buf = Vec::with_capacity(1024);
    let mut closed = false;
    let response = loop {
        match parse_response(&buf) {
            Ok(Some(r)) => break r,
            Ok(None) => {}
            Err(e) => return Outcome::io(format!("http: invalid response: {e}")),
        }
        if buf.len() >= MAX_RESPONSE {
            return Outcome::io(format!("http: response larger than {MAX_RESPONSE} bytes"));
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) if buf.is_empty() => {
                return Outcome::io("http: connection closed without a response".into());
            }
            Ok(0) => {
                closed = true;
                match parse_response_at_eof(&buf) {
                    Ok(r) => break r,
                    Err(e) => return Outcome::io(format!("http: invalid response: {e}")),
                }
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Outcome::io(format!("http: {}", io_text(&e))),
        }
    };
    let reusable = response.keep_alive && !closed;
    let report = if !check.expect_status.matches(response.status) {
        Report::failed(Reason::Status, format!("http status {}", response.status))
    } else if let Some(needle) = &check.expect_body
        && !contains(&response.body, needle.as_bytes())
    {
        Report::failed(
            Reason::Body,
            format!(
                "http status {}, body does not contain {needle:?}",
                response.status
            ),
        )
    } else {
        Report::passed(format!("http status {}", response.status))
    };
    Outcome {
        report,
        reusable,
        io_failure: false,
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

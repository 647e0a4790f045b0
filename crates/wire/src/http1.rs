//! An HTTP/1.x response as a health probe reads it: status, whether the
//! connection stays open, and the body (de-chunked), from the bytes received
//! so far. The status line and headers are parsed by `httparse`; framing
//! (Content-Length, chunked, until close) is ours.
//!
//! The input is a backend's answer, so it is hostile: sizes are checked
//! before any arithmetic, the body is a copy bounded by the input's length,
//! and nothing can panic.

/// Most header lines read.
const MAX_HEADERS: usize = 64;

/// A complete response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// The body, de-chunked (trailers dropped).
    pub body: Vec<u8>,
    /// HTTP/1.1 without `Connection: close`, with a delimited body: the
    /// connection can carry the next request.
    pub keep_alive: bool,
    /// The first `Location` header, when it is visible ASCII.
    pub location: Option<String>,
}

/// Why the bytes are not a valid response (no continuation can make them one).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResponseError {
    #[error("{0}")]
    Head(String),
    #[error("no status code")]
    NoStatus,
    #[error("invalid Content-Length")]
    ContentLength,
    #[error("invalid chunk size")]
    ChunkSize,
    #[error("invalid chunk end")]
    ChunkEnd,
    #[error("connection closed without a response")]
    ClosedEmpty,
    #[error("connection closed in the middle of the headers")]
    ClosedInHead,
    #[error("body shorter than Content-Length")]
    ShortBody,
    #[error("truncated chunked body")]
    TruncatedChunks,
}

enum Framing {
    Length(usize),
    Chunked,
    UntilClose,
}

struct Head {
    status: u16,
    framing: Framing,
    body_at: usize,
    keep_alive: bool,
    location: Option<String>,
}

impl Head {
    fn response(self, body: Vec<u8>) -> Response {
        Response {
            status: self.status,
            body,
            keep_alive: self.keep_alive && !matches!(self.framing, Framing::UntilClose),
            location: self.location,
        }
    }
}

/// Parses a response from the bytes received so far; `Ok(None)` means a
/// valid prefix: read more and call again with the whole buffer.
pub fn parse_response(buf: &[u8]) -> Result<Option<Response>, ResponseError> {
    parse_response_to(buf, false)
}

/// [`parse_response`] for the answer to a request that was a HEAD (when
/// `head_request`): such an answer never has a body, whatever its headers
/// say about one.
pub fn parse_response_to(
    buf: &[u8],
    head_request: bool,
) -> Result<Option<Response>, ResponseError> {
    let Some(mut head) = head(buf)? else {
        return Ok(None);
    };
    if head_request {
        head.framing = Framing::Length(0);
    }
    let body = buf.get(head.body_at..).unwrap_or_default();
    let body = match head.framing {
        Framing::Length(n) => match body.get(..n) {
            Some(b) => b.to_vec(),
            None => return Ok(None),
        },
        Framing::UntilClose => return Ok(None),
        Framing::Chunked => match dechunk(body)? {
            Some(b) => b,
            None => return Ok(None),
        },
    };
    Ok(Some(head.response(body)))
}

/// Parses a response once the server has closed the connection: a body
/// without framing ends here, and anything incomplete is an error.
pub fn parse_response_at_eof(buf: &[u8]) -> Result<Response, ResponseError> {
    let Some(head) = head(buf)? else {
        return Err(if buf.is_empty() {
            ResponseError::ClosedEmpty
        } else {
            ResponseError::ClosedInHead
        });
    };
    let body = buf.get(head.body_at..).unwrap_or_default();
    let body = match head.framing {
        Framing::UntilClose => body.to_vec(),
        Framing::Length(n) => body.get(..n).ok_or(ResponseError::ShortBody)?.to_vec(),
        Framing::Chunked => dechunk(body)?.ok_or(ResponseError::TruncatedChunks)?,
    };
    Ok(head.response(body))
}

/// The final response's head. Interim ones (1xx but `101`: `100 Continue`,
/// `103 Early Hints`) come before it and are passed over, as RFC 9110
/// §15.2 asks of every client.
fn head(buf: &[u8]) -> Result<Option<Head>, ResponseError> {
    let mut start = 0;
    loop {
        let rest = buf.get(start..).unwrap_or_default();
        match one_head(rest)? {
            Some(h) if (100..200).contains(&h.status) && h.status != 101 => start += h.body_at,
            Some(mut h) => {
                h.body_at += start;
                return Ok(Some(h));
            }
            None => return Ok(None),
        }
    }
}

fn one_head(buf: &[u8]) -> Result<Option<Head>, ResponseError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let body_at = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(ResponseError::Head(e.to_string())),
    };
    let status = resp.code.ok_or(ResponseError::NoStatus)?;
    // HTTP/1.1 keeps the connection unless told otherwise; HTTP/1.0 closes.
    let mut keep_alive = resp.version == Some(1);
    let mut framing = Framing::UntilClose;
    let mut location = None;
    for h in resp.headers.iter() {
        if location.is_none()
            && h.name.eq_ignore_ascii_case("location")
            && !h.value.is_empty()
            && h.value.iter().all(|c| c.is_ascii_graphic())
        {
            location = std::str::from_utf8(h.value).ok().map(str::to_owned);
        }
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            if contains_token(h.value, b"chunked") {
                framing = Framing::Chunked;
            }
        } else if h.name.eq_ignore_ascii_case("content-length")
            && !matches!(framing, Framing::Chunked)
        {
            let n = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or(ResponseError::ContentLength)?;
            framing = Framing::Length(n);
        } else if h.name.eq_ignore_ascii_case("connection") && contains_token(h.value, b"close") {
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
        location,
    }))
}

/// Case-insensitive substring test on a header value.
fn contains_token(value: &[u8], token: &[u8]) -> bool {
    value
        .windows(token.len())
        .any(|w| w.eq_ignore_ascii_case(token))
}

/// Decodes a chunked body; `Ok(None)` = incomplete. Trailers are skipped.
fn dechunk(mut buf: &[u8]) -> Result<Option<Vec<u8>>, ResponseError> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = buf.windows(2).position(|w| w == b"\r\n") else {
            // A size line longer than any valid one will never end well.
            if buf.len() > 1024 {
                return Err(ResponseError::ChunkSize);
            }
            return Ok(None);
        };
        let line = buf.get(..eol).unwrap_or_default();
        let size_text = line.split(|&b| b == b';').next().unwrap_or_default();
        let size = std::str::from_utf8(size_text)
            .ok()
            .map(str::trim)
            .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_hexdigit()))
            .and_then(|t| usize::from_str_radix(t, 16).ok())
            .ok_or(ResponseError::ChunkSize)?;
        buf = buf.get(eol + 2..).unwrap_or_default();
        if size == 0 {
            // Trailers, if any, end with an empty line; the message is whole
            // only then, so a kept connection starts clean.
            if buf.starts_with(b"\r\n") || buf.windows(4).any(|w| w == b"\r\n\r\n") {
                return Ok(Some(out));
            }
            return Ok(None);
        }
        // `size` comes from the backend: no arithmetic on it that can wrap.
        if buf.len() < size || buf.len() - size < 2 {
            return Ok(None);
        }
        let (data, rest) = buf.split_at(size);
        if rest.get(..2) != Some(b"\r\n") {
            return Err(ResponseError::ChunkEnd);
        }
        out.extend_from_slice(data);
        buf = rest.get(2..).unwrap_or_default();
    }
}

#[cfg(test)]
mod tests;

//! The gRPC health probe: one `grpc.health.v1.Health/Check` call over HTTP/2
//! (h2c with prior knowledge, or TLS with ALPN h2), healthy when the answer is
//! SERVING. The two tiny protobuf messages are encoded and decoded here by hand:
//! `HealthCheckRequest { string service = 1; }` and
//! `HealthCheckResponse { ServingStatus status = 1; }`.

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::Reason;
use crate::health::Report;

const PATH: &str = "/grpc.health.v1.Health/Check";
/// Largest response message a probe accepts.
const MAX_MESSAGE: usize = 4096;
/// Largest response header (or trailer) block a probe accepts; h2's default
/// is 16 MiB.
const MAX_HEADERS: u32 = 16 * 1024;

/// Runs the check over an established connection.
pub(crate) async fn check<S>(io: S, authority: &str, tls: bool, service: &str) -> Report
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let handshake = h2::client::Builder::new()
        .max_header_list_size(MAX_HEADERS)
        .handshake(io);
    let (client, connection) = match handshake.await {
        Ok(x) => x,
        Err(e) => return Report::protocol(format!("grpc: http/2 handshake failed: {e}")),
    };
    let call = call(client, authority, tls, service);
    tokio::pin!(call, connection);
    // The connection task must be polled while the call runs; when the call is
    // done, dropping both closes the connection.
    tokio::select! {
        report = &mut call => report,
        r = &mut connection => match r {
            Err(e) => Report::protocol(format!("grpc: connection failed: {e}")),
            Ok(()) => call.await,
        },
    }
}

async fn call(
    client: h2::client::SendRequest<Bytes>,
    authority: &str,
    tls: bool,
    service: &str,
) -> Report {
    let mut client = match client.ready().await {
        Ok(c) => c,
        Err(e) => return Report::protocol(format!("grpc: {e}")),
    };
    let scheme = if tls { "https" } else { "http" };
    let request = match http::Request::post(format!("{scheme}://{authority}{PATH}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("user-agent", "weir-health-check")
        .body(())
    {
        Ok(r) => r,
        Err(e) => return Report::protocol(format!("grpc: cannot build the request: {e}")),
    };
    let (response, mut body) = match client.send_request(request, false) {
        Ok(x) => x,
        Err(e) => return Report::protocol(format!("grpc: {e}")),
    };
    if let Err(e) = body.send_data(Bytes::from(encode_request(service)), true) {
        return Report::protocol(format!("grpc: {e}"));
    }
    let response = match response.await {
        Ok(r) => r,
        Err(e) => return Report::protocol(format!("grpc: {e}")),
    };
    if response.status() != http::StatusCode::OK {
        return Report::protocol(format!("grpc: http status {}", response.status().as_u16()));
    }
    // A "trailers-only" answer carries grpc-status in the headers.
    if let Some(status) = grpc_status(response.headers())
        && status != 0
    {
        return Report::failed(Reason::GrpcStatus, grpc_error(status, response.headers()));
    }
    let mut stream = response.into_body();
    let mut message = Vec::new();
    while let Some(chunk) = stream.data().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => return Report::protocol(format!("grpc: {e}")),
        };
        let _ = stream.flow_control().release_capacity(chunk.len());
        message.extend_from_slice(&chunk);
        if message.len() > MAX_MESSAGE {
            return Report::protocol("grpc: response too large");
        }
    }
    match stream.trailers().await {
        Ok(Some(trailers)) => match grpc_status(&trailers) {
            Some(0) => {}
            Some(status) => {
                return Report::failed(Reason::GrpcStatus, grpc_error(status, &trailers));
            }
            None => return Report::protocol("grpc: no grpc-status"),
        },
        Ok(None) => return Report::protocol("grpc: no grpc-status"),
        Err(e) => return Report::protocol(format!("grpc: {e}")),
    }
    match decode_response(&message) {
        Ok(1) => Report::passed("grpc SERVING"),
        Ok(status) => Report::failed(
            Reason::NotServing,
            format!("grpc {}", serving_status_name(status)),
        ),
        Err(e) => Report::protocol(format!("grpc: invalid response: {e}")),
    }
}

fn grpc_status(headers: &http::HeaderMap) -> Option<u32> {
    headers
        .get("grpc-status")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn grpc_error(status: u32, headers: &http::HeaderMap) -> String {
    let name = match status {
        1 => "CANCELLED",
        2 => "UNKNOWN",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        7 => "PERMISSION_DENIED",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        16 => "UNAUTHENTICATED",
        _ => "error",
    };
    match headers.get("grpc-message").and_then(|m| m.to_str().ok()) {
        Some(m) if !m.is_empty() => {
            format!("grpc-status {status} ({name}): {}", super::http::short(m))
        }
        _ => format!("grpc-status {status} ({name})"),
    }
}

fn serving_status_name(status: u64) -> &'static str {
    match status {
        0 => "UNKNOWN",
        1 => "SERVING",
        2 => "NOT_SERVING",
        3 => "SERVICE_UNKNOWN",
        _ => "unknown status",
    }
}

/// A length-prefixed gRPC message holding `HealthCheckRequest { service }`.
pub(crate) fn encode_request(service: &str) -> Vec<u8> {
    let mut msg = Vec::with_capacity(service.len() + 3);
    if !service.is_empty() {
        msg.push(0x0a); // field 1, length-delimited
        put_varint(&mut msg, service.len() as u64);
        msg.extend_from_slice(service.as_bytes());
    }
    let mut out = Vec::with_capacity(5 + msg.len());
    out.push(0); // not compressed
    out.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    out.extend_from_slice(&msg);
    out
}

/// The `status` of a length-prefixed `HealthCheckResponse` (0 when absent, as
/// protobuf defaults say).
pub(crate) fn decode_response(buf: &[u8]) -> Result<u64, &'static str> {
    let [compressed, l0, l1, l2, l3, rest @ ..] = buf else {
        return Err("truncated message");
    };
    if *compressed != 0 {
        return Err("compressed message");
    }
    let len = u32::from_be_bytes([*l0, *l1, *l2, *l3]) as usize;
    let mut msg = rest.get(..len).ok_or("truncated message")?;
    let mut status = 0;
    while !msg.is_empty() {
        let key = take_varint(&mut msg)?;
        match (key >> 3, key & 7) {
            (1, 0) => status = take_varint(&mut msg)?,
            (_, 0) => {
                take_varint(&mut msg)?;
            }
            (_, 1) => msg = msg.get(8..).ok_or("truncated field")?,
            (_, 2) => {
                let n = usize::try_from(take_varint(&mut msg)?).map_err(|_| "bad length")?;
                msg = msg.get(n..).ok_or("truncated field")?;
            }
            (_, 5) => msg = msg.get(4..).ok_or("truncated field")?,
            _ => return Err("unsupported wire type"),
        }
    }
    Ok(status)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn take_varint(buf: &mut &[u8]) -> Result<u64, &'static str> {
    let mut v = 0u64;
    for (i, &b) in buf.iter().enumerate().take(10) {
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            *buf = &buf[i + 1..];
            return Ok(v);
        }
    }
    Err("bad varint")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A backend's `grpc-message` goes into the probe's reason, the
    /// history and the logs: a long one is cut.
    #[test]
    fn a_long_grpc_message_is_cut() {
        let mut h = http::HeaderMap::new();
        h.insert(
            "grpc-message",
            http::HeaderValue::from_str(&"x".repeat(10_000)).expect("value"),
        );
        let reason = grpc_error(14, &h);
        assert!(
            reason.starts_with("grpc-status 14 (UNAVAILABLE): xxx"),
            "{reason}"
        );
        assert!(reason.len() < 120, "{} bytes", reason.len());
        h.insert("grpc-message", http::HeaderValue::from_static("draining"));
        assert_eq!(grpc_error(14, &h), "grpc-status 14 (UNAVAILABLE): draining");
    }

    #[test]
    fn request_encoding() {
        assert_eq!(encode_request(""), [0, 0, 0, 0, 0]);
        assert_eq!(
            encode_request("app"),
            [0, 0, 0, 0, 5, 0x0a, 3, b'a', b'p', b'p']
        );
    }

    #[test]
    fn response_decoding() {
        assert_eq!(decode_response(&[0, 0, 0, 0, 2, 0x08, 1]), Ok(1));
        assert_eq!(decode_response(&[0, 0, 0, 0, 2, 0x08, 2]), Ok(2));
        // An empty message is status 0 (UNKNOWN); unknown fields are skipped.
        assert_eq!(decode_response(&[0, 0, 0, 0, 0]), Ok(0));
        assert_eq!(
            decode_response(&[0, 0, 0, 0, 6, 0x12, 2, b'x', b'y', 0x08, 1]),
            Ok(1)
        );
        assert!(decode_response(&[0, 0, 0, 0, 3, 0x08]).is_err());
        assert!(decode_response(&[1, 0, 0, 0, 0]).is_err());
        assert!(decode_response(&[0, 0]).is_err());
        assert!(decode_response(&[0, 0, 0, 0, 2, 0x08, 0x80]).is_err());
    }

    #[test]
    fn varints_round_trip() {
        for v in [0u64, 1, 127, 128, 300, u64::from(u32::MAX), u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            let mut slice = &out[..];
            assert_eq!(take_varint(&mut slice), Ok(v));
            assert!(slice.is_empty());
        }
    }
}

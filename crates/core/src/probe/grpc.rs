//! The gRPC health probe: one `grpc.health.v1.Health/Check` call over HTTP/2
//! (h2c with prior knowledge, or TLS with ALPN h2), healthy when the answer is
//! SERVING. The two tiny protobuf messages are encoded and decoded by
//! [`weir_wire::grpc_health`].

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};

use weir_wire::grpc_health::{decode_response, encode_request};

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
}

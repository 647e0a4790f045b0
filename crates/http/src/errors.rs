//! weir's own answers, when a request cannot be proxied: the status its
//! [`Reason`] maps to (503 no backend, 502 a backend's failure, 504 a
//! backend's timeout, 404 no rule, 429 a client over its request rate, 413,
//! 431, 400, 408) with a one-line
//! plain-text body naming the reason, so a person reading `curl` output and
//! an operator reading the access log see the same word. A gRPC client
//! (`content-type: application/grpc...`) gets what gRPC clients understand
//! instead: HTTP 200 with `grpc-status` and `grpc-message` and no body.

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{HeaderMap, Response, StatusCode};
use weir_core::Reason;

/// The status weir answers for `reason` (502 for a reason that has none).
pub fn status(reason: Reason) -> StatusCode {
    reason
        .http_status()
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::BAD_GATEWAY)
}

/// The gRPC status code for an HTTP status weir answered: UNAVAILABLE for
/// 502 and 503, DEADLINE_EXCEEDED for 504, UNIMPLEMENTED for 404,
/// RESOURCE_EXHAUSTED for 413, 429 and 431, PERMISSION_DENIED for 403,
/// INTERNAL for 400.
pub fn grpc_code(status: StatusCode) -> u8 {
    match status.as_u16() {
        502 | 503 | 408 => 14,
        504 => 4,
        404 => 12,
        413 | 431 | 429 => 8,
        403 => 7,
        400 => 13,
        _ => 2,
    }
}

/// True when the request is a gRPC call over HTTP/2 trailers, not gRPC-web
/// (whose status travels inside the body).
pub fn is_native_grpc(headers: &HeaderMap) -> bool {
    is_grpc(headers)
        && !headers
            .get(CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc-web"))
}

/// True when the request is a gRPC call.
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The one line weir's answer says.
pub fn text(reason: Reason) -> String {
    let what = match reason {
        Reason::NoRule => "no rule of this route matches the request",
        Reason::Misdirected => "this connection's TLS name does not lead to the request's host",
        Reason::NoBackend => "no backend is available",
        Reason::QueueFull => "every backend is at its connection limit and the queue is full",
        Reason::QueueTimeout => "no backend had room in time",
        Reason::UpstreamTimeout => "the backend did not answer in time",
        Reason::Timeout => "the backend could not be reached in time",
        Reason::HeaderTimeout => "the request header did not arrive in time",
        Reason::HeaderTooLarge => "the request header is too large",
        Reason::BodyTooLarge => "the request body is too large",
        Reason::BadRequest => "the request is malformed or ambiguous",
        Reason::ClientError => "the request body broke off or is malformed",
        Reason::IdleTimeout => "the request body did not arrive in time",
        Reason::LocalResources => "weir is out of resources",
        Reason::Shutdown => "weir is shutting down",
        Reason::RateLimit => "this client sends too many requests",
        Reason::Firewall => "the firewall refuses this client",
        Reason::Policy => "a policy of this route refuses the request",
        Reason::AuthUnavailable => "the authentication service is unavailable",
        Reason::AuthBusy => "the authentication service has too many calls under way",
        _ => "the backend failed",
    };
    format!("weir: {what} ({})\n", reason.as_str())
}

/// The answer to a request that ends with `reason`: its parts, to which the
/// caller adds the body.
pub fn parts(reason: Reason, grpc: bool) -> (http::response::Parts, Bytes) {
    let status = status(reason);
    let text = text(reason);
    if grpc {
        let mut r = Response::new(());
        r.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        r.headers_mut().insert(
            "grpc-status",
            HeaderValue::from(u16::from(grpc_code(status))),
        );
        if let Some(v) = grpc_message(&text) {
            r.headers_mut().insert("grpc-message", v);
        }
        let (parts, ()) = r.into_parts();
        return (parts, Bytes::new());
    }
    let mut r = Response::new(());
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    let (parts, ()) = r.into_parts();
    (parts, Bytes::from(text))
}

/// The trailers that end a gRPC response weir had to cut (the backend
/// failed or went quiet mid-stream, or the client's side of the call was
/// cut: `client`): the status `reason` maps to, as the call's end.
pub fn grpc_trailers(reason: Reason, client: bool) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        "grpc-status",
        HeaderValue::from(u16::from(grpc_code(status(reason)))),
    );
    let text = match reason {
        // Inside a response, not the client's body being waited for.
        Reason::IdleTimeout if !client => {
            format!(
                "weir: the backend's response went quiet for too long ({})",
                reason.as_str()
            )
        }
        _ => text(reason),
    };
    if let Some(v) = grpc_message(&text) {
        h.insert("grpc-message", v);
    }
    h
}

/// `text` as a `grpc-message`, which is percent-encoded; weir's texts are
/// plain ASCII, spaces aside.
fn grpc_message(text: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(&text.trim_end().replace(' ', "%20")).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_failure_gets_its_status() {
        assert_eq!(status(Reason::NoBackend), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(status(Reason::Refused), StatusCode::BAD_GATEWAY);
        assert_eq!(status(Reason::BackendError), StatusCode::BAD_GATEWAY);
        assert_eq!(status(Reason::UpstreamTimeout), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(status(Reason::NoRule), StatusCode::NOT_FOUND);
        assert_eq!(status(Reason::BodyTooLarge), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(
            status(Reason::HeaderTooLarge),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        );
        assert_eq!(status(Reason::BadRequest), StatusCode::BAD_REQUEST);
        assert_eq!(
            text(Reason::NoBackend),
            "weir: no backend is available (no_backend)\n"
        );
    }

    #[test]
    fn grpc_clients_get_a_grpc_status() {
        let (p, body) = parts(Reason::NoBackend, true);
        assert_eq!(p.status, StatusCode::OK);
        assert_eq!(p.headers["grpc-status"], "14");
        assert!(body.is_empty());
        let (p, _) = parts(Reason::UpstreamTimeout, true);
        assert_eq!(p.headers["grpc-status"], "4");
        assert_eq!(grpc_code(StatusCode::BAD_GATEWAY), 14);
        let t = grpc_trailers(Reason::BackendError, false);
        assert_eq!(t["grpc-status"], "14");
        assert_eq!(
            t["grpc-message"],
            "weir:%20the%20backend%20failed%20(backend_error)"
        );
        let mut h = HeaderMap::new();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/grpc+proto"),
        );
        assert!(is_native_grpc(&h));
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/grpc-web+proto"),
        );
        assert!(is_grpc(&h) && !is_native_grpc(&h));
        // A body cut at `timeouts.request`: the call ran out of time.
        assert_eq!(
            grpc_trailers(Reason::UpstreamTimeout, false)["grpc-status"],
            "4"
        );
        // A client silent mid-call for `request_body`: its side, said so.
        let t = grpc_trailers(Reason::IdleTimeout, true);
        assert!(
            t["grpc-message"]
                .to_str()
                .is_ok_and(|m| m.contains("request%20body")),
            "{t:?}"
        );
        let t = grpc_trailers(Reason::IdleTimeout, false);
        assert_eq!(t["grpc-status"], "14");
        assert!(
            t["grpc-message"]
                .to_str()
                .is_ok_and(|m| m.contains("went%20quiet")),
            "{t:?}"
        );
    }
}

//! What every admin HTTP answer carries so that a browser cannot be turned
//! against it: no framing, no type sniffing, scripts and styles from the
//! endpoint itself only, no caching of live state; the check that refuses
//! a change sent by another site's page (a token may not be configured on a
//! loopback address, and a browser would send such a request); and the
//! check that the request was addressed to this machine by an IP address,
//! `localhost` or a name the operator listed in `admin.hosts`, not by any
//! other name (DNS rebinding: another site's name pointed at the endpoint's
//! address makes its page same-origin with the endpoint, token or not, and
//! reads need no token).

use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::Response;

/// Scripts, styles and fetches from this endpoint only; no plugins, no
/// forms elsewhere, never in a frame.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                   img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
                   form-action 'none'; frame-ancestors 'none'";

pub(super) async fn headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    for (name, value) in [
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    h.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("same-origin"),
    );
    response
}

/// Whether a request comes from another site's page: its `Origin` (which
/// browsers send with every POST) names another host than the one it was
/// sent to, or the browser says so in `Sec-Fetch-Site`. Clients that are
/// not browsers send neither and pass.
pub(super) fn cross_site(headers: &HeaderMap) -> bool {
    if headers
        .get("sec-fetch-site")
        .is_some_and(|v| v.as_bytes() == b"cross-site" || v.as_bytes() == b"same-site")
    {
        return true;
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return false;
    };
    let host = headers.get(header::HOST).map(HeaderValue::as_bytes);
    // "null" (a sandboxed or file page) or an origin whose host:port is not
    // the Host the request was sent to.
    let authority = origin
        .as_bytes()
        .strip_prefix(b"http://")
        .or_else(|| origin.as_bytes().strip_prefix(b"https://"));
    match (authority, host) {
        (Some(a), Some(h)) => !a.eq_ignore_ascii_case(h),
        _ => true,
    }
}

/// What a request's `Host` names.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Addressed {
    /// An IP address or `localhost` (`*.localhost` too, which browsers
    /// never ask DNS for), or no `Host` at all (HTTP/1.0).
    Directly,
    /// A name any DNS server could answer for, lower-case, without port
    /// or trailing dot: another site's name made to point here would make
    /// its page same-origin with the endpoint.
    ByName(String),
    /// Not a host at all.
    Malformed,
}

/// How the request addresses the endpoint in its `Host`.
pub(super) fn addressed(headers: &HeaderMap) -> Addressed {
    let Some(host) = headers.get(header::HOST) else {
        return Addressed::Directly;
    };
    let Ok(host) = host.to_str() else {
        return Addressed::Malformed;
    };
    if let Some(v6) = host.strip_prefix('[') {
        return match v6.split_once(']') {
            Some((ip, _)) if ip.parse::<std::net::Ipv6Addr>().is_ok() => Addressed::Directly,
            _ => Addressed::Malformed,
        };
    }
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        Some(_) => return Addressed::Malformed,
        None => host,
    };
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    if name.parse::<std::net::Ipv4Addr>().is_ok()
        || name == "localhost"
        || name.ends_with(".localhost")
    {
        Addressed::Directly
    } else if name.is_empty() {
        Addressed::Malformed
    } else {
        Addressed::ByName(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_addresses_and_localhost_are_direct() {
        let of = |host: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(header::HOST, HeaderValue::from_static(host));
            addressed(&h)
        };
        for host in [
            "127.0.0.1:9900",
            "127.0.0.1",
            "[::1]:9900",
            "[::1]",
            "localhost:9900",
            "LocalHost",
            "localhost.:9900",
            "weir.localhost:9900",
            "10.1.2.3:9900",
        ] {
            assert_eq!(of(host), Addressed::Directly, "{host}");
        }
        for (host, name) in [
            ("evil.example:9900", "evil.example"),
            ("Evil.Example.", "evil.example"),
            ("localhost.evil.example:9900", "localhost.evil.example"),
            ("127.0.0.1.nip.io:9900", "127.0.0.1.nip.io"),
        ] {
            assert_eq!(of(host), Addressed::ByName(name.into()), "{host}");
        }
        for host in ["[::1:9900", "[evil]:9900", "127.0.0.1:99x", "", ":9900"] {
            assert_eq!(of(host), Addressed::Malformed, "{host}");
        }
        assert_eq!(
            addressed(&HeaderMap::new()),
            Addressed::Directly,
            "HTTP/1.0"
        );
    }

    fn with(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn same_origin_and_non_browser_clients_pass() {
        assert!(!cross_site(&with(&[("host", "127.0.0.1:9900")])));
        assert!(!cross_site(&with(&[
            ("host", "127.0.0.1:9900"),
            ("origin", "http://127.0.0.1:9900"),
            ("sec-fetch-site", "same-origin"),
        ])));
        assert!(!cross_site(&with(&[
            ("host", "LB.example:9900"),
            ("origin", "https://lb.example:9900"),
        ])));
    }

    #[test]
    fn other_sites_are_refused() {
        for h in [
            with(&[
                ("host", "127.0.0.1:9900"),
                ("origin", "http://evil.example"),
            ]),
            with(&[
                ("host", "127.0.0.1:9900"),
                ("origin", "http://127.0.0.1:9901"),
            ]),
            with(&[("host", "127.0.0.1:9900"), ("origin", "null")]),
            with(&[("origin", "http://127.0.0.1:9900")]),
            with(&[("host", "127.0.0.1:9900"), ("sec-fetch-site", "cross-site")]),
            with(&[("host", "127.0.0.1:9900"), ("sec-fetch-site", "same-site")]),
        ] {
            assert!(cross_site(&h), "{h:?}");
        }
    }
}

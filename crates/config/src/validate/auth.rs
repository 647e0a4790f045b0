//! `auth = { url, ... }` of an l7 route or rule: forward authentication.

use std::time::Duration;

use super::Checker;
use super::http::FRAMING_HEADERS;
use crate::model::{Auth, AuthFailure};
use crate::raw::RawAuth;

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
const DEFAULT_ALLOWED_TTL: Duration = Duration::from_secs(60);
const DEFAULT_DENIED_TTL: Duration = Duration::from_secs(5);
const DEFAULT_CACHE_SIZE: u32 = 10_000;
const DEFAULT_BREAKER_FAILURES: u32 = 5;
const DEFAULT_BREAKER_OPEN: Duration = Duration::from_secs(30);
/// Calls (and connections) to one service under way at once: a flood of
/// new questions waits for these instead of opening connections without
/// end and timing the service out, which would open the breaker and, with
/// `failure = "allow"`, let everyone through.
const DEFAULT_MAX_CALLS: u32 = 256;

impl Checker {
    pub(super) fn auth(&mut self, path: &str, raw: &RawAuth) -> Auth {
        let (host, port, target) = match split_url(&raw.url) {
            Some(parts) => parts,
            None => {
                self.push(
                    format!("{path}.url"),
                    format!(
                        "{:?} is not an http:// URL with a host (e.g. \
                         \"http://127.0.0.1:9000/check\")",
                        raw.url
                    ),
                );
                (String::new(), 0, String::new())
            }
        };
        let header_list = |cx: &mut Checker, key: &str, list: &[String]| -> Vec<String> {
            list.iter()
                .enumerate()
                .map(|(i, h)| {
                    let lower = h.to_ascii_lowercase();
                    if h.is_empty() || !h.bytes().all(super::http::is_tchar) {
                        cx.push(
                            format!("{path}.{key}[{i}]"),
                            format!("{h:?} is not a header name"),
                        );
                    } else if FRAMING_HEADERS.contains(&lower.as_str())
                        || lower == "host"
                        || lower == "expect"
                    {
                        // Copied into the upstream request or the question,
                        // such a header would decide its framing, its
                        // connection or its target, not say who the client is.
                        cx.push(
                            format!("{path}.{key}[{i}]"),
                            format!(
                                "{h:?} is weir's to set (framing, connection or host); \
                                 name another header"
                            ),
                        );
                    }
                    lower
                })
                .collect()
        };
        let headers = header_list(self, "headers", &raw.headers);
        let copy_headers = header_list(self, "copy_headers", &raw.copy_headers);
        let timeout = self.timeout(
            &format!("{path}.timeout"),
            raw.timeout.as_deref(),
            DEFAULT_TIMEOUT,
        );
        let failure = self.choice(
            &format!("{path}.failure"),
            raw.failure.clone(),
            AuthFailure::Deny,
            &[("deny", AuthFailure::Deny), ("allow", AuthFailure::Allow)],
        );
        // Zero is allowed here: decisions of that kind are not cached (an
        // allow cached, a refusal asked again every time).
        let ttl = |cx: &mut Checker, key: &str, v: Option<&String>, d| {
            if v.is_some_and(|v| humantime::parse_duration(v).is_ok_and(|d| d.is_zero())) {
                return std::time::Duration::ZERO;
            }
            cx.timeout_opt(&format!("{path}.{key}"), v.map(String::as_str))
                .unwrap_or(d)
        };
        let allowed_ttl = ttl(
            self,
            "allowed_ttl",
            raw.allowed_ttl.as_ref(),
            DEFAULT_ALLOWED_TTL,
        );
        let denied_ttl = ttl(
            self,
            "denied_ttl",
            raw.denied_ttl.as_ref(),
            DEFAULT_DENIED_TTL,
        );
        let breaker_open = self.timeout(
            &format!("{path}.breaker_open"),
            raw.breaker_open.as_deref(),
            DEFAULT_BREAKER_OPEN,
        );
        Auth {
            url: raw.url.clone(),
            host,
            port,
            path: target,
            timeout,
            headers,
            copy_headers,
            failure,
            allowed_ttl,
            denied_ttl,
            cache_size: self.int(
                &format!("{path}.cache_size"),
                raw.cache_size,
                DEFAULT_CACHE_SIZE,
                0,
                Some(10_000_000),
            ),
            breaker_failures: self.int(
                &format!("{path}.breaker_failures"),
                raw.breaker_failures,
                DEFAULT_BREAKER_FAILURES,
                0,
                Some(1_000_000),
            ),
            breaker_open,
            max_calls: self.int(
                &format!("{path}.max_calls"),
                raw.max_calls,
                DEFAULT_MAX_CALLS,
                1,
                Some(100_000),
            ),
        }
    }
}

/// `http://host[:port][/path]` -> (host, port, path). IPv6 in brackets.
pub(super) fn split_url(url: &str) -> Option<(String, u16, String)> {
    let rest = url.strip_prefix("http://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    // What the request is sent with must be a target the HTTP library
    // takes (`<`, `>`, a backtick are not), or every call would fail.
    if path.bytes().any(|b| !b.is_ascii_graphic() || b == b'#')
        || path.parse::<http::uri::PathAndQuery>().is_err()
    {
        return None;
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (ip, after) = v6.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if after.is_empty() => 80,
            None => return None,
        };
        (ip.to_owned(), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), p.parse().ok()?),
            None => (authority.to_owned(), 80),
        }
    };
    let valid_host =
        host.parse::<std::net::IpAddr>().is_ok() || weir_wire::name::is_dns_name(host.as_bytes());
    (valid_host && port != 0).then(|| (host, port, path.to_owned()))
}

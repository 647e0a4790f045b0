//! Request policies of an l7 route and its rules: the route's first, then
//! the matched rule's, in order; the first that refuses answers the request
//! (403 by default) and counts it. Pure but for that counter: the request's
//! method, host, normalised path, headers and client address in, a verdict
//! out.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use weir_config::{HttpPolicy, PolicyCheck, PolicyMatch};

/// A policy, ready to check.
#[derive(Debug)]
pub(crate) struct Policy {
    pub(crate) name: Arc<str>,
    check: PolicyCheck,
    methods: Vec<Method>,
    pub(crate) status: StatusCode,
    pub(crate) body: Bytes,
    /// Requests refused; kept by name across reloads.
    pub(crate) blocked: Arc<AtomicU64>,
}

/// What a policy looks at.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Request<'a> {
    pub(crate) method: &'a Method,
    /// As `rules::normalize_host` gives it.
    pub(crate) host: Option<&'a str>,
    /// Normalised (`weir_wire::path`), without the query.
    pub(crate) path: &'a str,
    pub(crate) headers: &'a HeaderMap,
    pub(crate) client: IpAddr,
}

impl Policy {
    /// From its config; `blocked` is the counter it keeps (a reload hands
    /// the previous one on).
    pub(crate) fn new(p: &HttpPolicy, blocked: Arc<AtomicU64>) -> Policy {
        let methods = match &p.check {
            PolicyCheck::Deny(m) | PolicyCheck::Allow(m) => m
                .methods
                .iter()
                .filter_map(|s| Method::from_bytes(s.as_bytes()).ok())
                .collect(),
            _ => Vec::new(),
        };
        let body = match &p.body {
            Some(b) => Bytes::from(b.clone()),
            None => Bytes::from(format!("weir: refused by policy {:?} (policy)\n", p.name)),
        };
        Policy {
            name: Arc::from(p.name.as_str()),
            check: p.check.clone(),
            methods,
            status: StatusCode::from_u16(p.status).unwrap_or(StatusCode::FORBIDDEN),
            body,
            blocked,
        }
    }

    /// True when this policy refuses `r`.
    pub(crate) fn refuses(&self, r: &Request<'_>) -> bool {
        match &self.check {
            // Every value, by its bytes: a second `User-Agent`, or a byte
            // outside ASCII, must not slip a client past the list.
            PolicyCheck::BlockUserAgent { contains, pattern } => {
                r.headers.get_all(http::header::USER_AGENT).iter().any(|v| {
                    let ua = v.as_bytes();
                    contains.iter().any(|c| contains_ignore_case(ua, c))
                        || pattern
                            .as_ref()
                            .is_some_and(|p| p.0.is_match(&String::from_utf8_lossy(ua)))
                })
            }
            PolicyCheck::RequireHeader {
                name,
                value,
                pattern,
            } => {
                let values: Vec<&str> = r
                    .headers
                    .get_all(name.as_str())
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .collect();
                if values.is_empty() {
                    return true;
                }
                let fits = |v: &str| {
                    value.as_ref().is_none_or(|want| v == want)
                        && pattern.as_ref().is_none_or(|p| p.0.is_match(v))
                };
                !values.iter().any(|v| fits(v))
            }
            PolicyCheck::Deny(m) => self.holds(m, r, true),
            PolicyCheck::Allow(m) => !self.holds(m, r, false),
        }
    }

    /// Every condition of `m` holds for `r`. `loose_paths`: prefixes compared
    /// without case (for deny, so that no case variant slips past).
    fn holds(&self, m: &PolicyMatch, r: &Request<'_>, loose_paths: bool) -> bool {
        if !self.methods.is_empty() && !self.methods.contains(r.method) {
            return false;
        }
        if !m.path_prefix.is_empty()
            && !m.path_prefix.iter().any(|p| {
                if loose_paths {
                    r.path
                        .get(..p.len())
                        .is_some_and(|head| head.eq_ignore_ascii_case(p))
                } else {
                    r.path.starts_with(p.as_str())
                }
            })
        {
            return false;
        }
        if let Some(re) = &m.path_regex
            && !re.0.is_match(r.path)
        {
            return false;
        }
        if !m.host.is_empty() {
            let Some(host) = r.host else {
                return false;
            };
            if !m.host.iter().any(|p| weir_wire::name::sni_matches(p, host)) {
                return false;
            }
        }
        if !m.source.is_empty() {
            let ip = r.client.to_canonical();
            if !m.source.iter().any(|n| n.contains(&ip)) {
                return false;
            }
        }
        true
    }
}

/// The first of `policies` that refuses `r`, counted.
pub(crate) fn first_refusal<'p>(
    policies: impl IntoIterator<Item = &'p Policy>,
    r: &Request<'_>,
) -> Option<&'p Policy> {
    let p = policies.into_iter().find(|p| p.refuses(r))?;
    p.blocked.fetch_add(1, Relaxed);
    Some(p)
}

fn contains_ignore_case(haystack: &[u8], lower_needle: &str) -> bool {
    let (h, n) = (haystack, lower_needle.as_bytes());
    n.is_empty()
        || h.windows(n.len())
            .any(|w| w.iter().zip(n).all(|(a, b)| a.to_ascii_lowercase() == *b))
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;
    use weir_config::Pattern;

    use super::*;

    fn policy(check: PolicyCheck) -> Policy {
        Policy::new(
            &HttpPolicy {
                name: "p".into(),
                check,
                status: 403,
                body: None,
            },
            Arc::default(),
        )
    }

    fn req<'a>(path: &'a str, headers: &'a HeaderMap, method: &'a Method) -> Request<'a> {
        Request {
            method,
            host: Some("app.example.com"),
            path,
            headers,
            client: "192.0.2.7".parse().expect("ip"),
        }
    }

    #[test]
    fn user_agents_by_substring_without_case_and_by_pattern() {
        let p = policy(PolicyCheck::BlockUserAgent {
            contains: vec!["curl".into()],
            pattern: Some(Pattern(regex::Regex::new("^python-requests/").expect("re"))),
        });
        let mut h = HeaderMap::new();
        let get = Method::GET;
        assert!(!p.refuses(&req("/", &h, &get)), "no user agent passes");
        for (ua, refused) in [
            ("curl/8.5.0", true),
            ("Mozilla/5.0 CURL", true),
            ("python-requests/2.31", true),
            ("my-python-requests/2", false),
            ("Mozilla/5.0", false),
        ] {
            h.insert(http::header::USER_AGENT, HeaderValue::from_static(ua));
            assert_eq!(p.refuses(&req("/", &h, &get)), refused, "{ua}");
        }
        // A second value, or a byte outside ASCII, does not hide the first.
        h.insert(
            http::header::USER_AGENT,
            HeaderValue::from_static("Mozilla"),
        );
        h.append(http::header::USER_AGENT, HeaderValue::from_static("curl/8"));
        assert!(p.refuses(&req("/", &h, &get)));
        for ua in [&b"curl/8 \xe9"[..], b"python-requests/2 \xff"] {
            h.insert(
                http::header::USER_AGENT,
                HeaderValue::from_bytes(ua).expect("obs-text is a valid value"),
            );
            assert!(p.refuses(&req("/", &h, &get)), "{ua:?}");
        }
    }

    #[test]
    fn required_headers() {
        let p = policy(PolicyCheck::RequireHeader {
            name: "x-api-key".into(),
            value: None,
            pattern: Some(Pattern(regex::Regex::new("^[0-9a-f]{8}$").expect("re"))),
        });
        let mut h = HeaderMap::new();
        let get = Method::GET;
        assert!(p.refuses(&req("/", &h, &get)));
        h.insert("x-api-key", HeaderValue::from_static("nope"));
        assert!(p.refuses(&req("/", &h, &get)));
        h.append("x-api-key", HeaderValue::from_static("0badf00d"));
        assert!(
            !p.refuses(&req("/", &h, &get)),
            "one fitting value is enough"
        );
    }

    #[test]
    fn deny_paths_without_case_and_allow_with_every_condition() {
        let deny = policy(PolicyCheck::Deny(PolicyMatch {
            path_prefix: vec!["/admin".into()],
            ..Default::default()
        }));
        let h = HeaderMap::new();
        let get = Method::GET;
        for path in ["/admin", "/ADMIN/x", "/Admin"] {
            assert!(deny.refuses(&req(path, &h, &get)), "{path}");
        }
        assert!(!deny.refuses(&req("/public", &h, &get)));
        assert!(!deny.refuses(&req("/adm", &h, &get)));
        let allow = policy(PolicyCheck::Allow(PolicyMatch {
            methods: vec!["GET".into(), "HEAD".into()],
            source: vec!["192.0.2.0/24".parse().expect("net")],
            ..Default::default()
        }));
        assert!(!allow.refuses(&req("/", &h, &get)));
        assert!(allow.refuses(&req("/", &h, &Method::POST)));
        let mut other = req("/", &h, &get);
        other.client = "198.51.100.1".parse().expect("ip");
        assert!(allow.refuses(&other));
        let hosts = policy(PolicyCheck::Deny(PolicyMatch {
            host: vec!["*.example.com".into()],
            methods: vec!["DELETE".into()],
            ..Default::default()
        }));
        assert!(hosts.refuses(&req("/", &h, &Method::DELETE)));
        assert!(!hosts.refuses(&req("/", &h, &get)));
    }

    #[test]
    fn the_first_refusal_is_counted() {
        let a = policy(PolicyCheck::Deny(PolicyMatch {
            path_prefix: vec!["/a".into()],
            ..Default::default()
        }));
        let b = policy(PolicyCheck::Deny(PolicyMatch {
            path_prefix: vec!["/".into()],
            ..Default::default()
        }));
        let h = HeaderMap::new();
        let get = Method::GET;
        let list = [a, b];
        let first = first_refusal(&list, &req("/a", &h, &get)).expect("refused");
        assert!(std::ptr::eq(first, &list[0]));
        assert_eq!(list[0].blocked.load(Relaxed), 1);
        assert_eq!(list[1].blocked.load(Relaxed), 0);
    }
}

//! The HTTP settings of an l7 route: its rules (`[[listeners.routes.http]]`),
//! forwarding headers, timeouts and size limits.

use std::collections::HashMap;

use super::Checker;
use crate::model::{
    EncodedSlashes, Forwarded, HttpMatch, HttpRoute, HttpRule, HttpTimeouts, Redirect, ServerTls,
};
use crate::raw::{RawHttpMatch, RawRedirect, RawRoute, RawServerTls};

/// A request header larger than this is answered 431 (HAProxy's default
/// buffer is 16 KiB, nginx allows 4 × 8 KiB).
const DEFAULT_MAX_HEADER_BYTES: u32 = 32 * 1024;
/// hyper's smallest read buffer: a header limit below it cannot be kept.
const MIN_HEADER_BYTES: i64 = 8 * 1024;
const MAX_HEADER_BYTES: i64 = 1024 * 1024;
/// Requests one HTTP/2 client connection may have under way at once
/// (HAProxy 100, nginx 128): room for browsers and gRPC clients that
/// multiplex, while a connection's memory stays bounded by it.
const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 256;
const MAX_CONCURRENT_STREAMS: i64 = 1000;

impl Checker {
    pub(super) fn http_route(
        &mut self,
        path: &str,
        raw: &RawRoute,
        pools: &HashMap<String, usize>,
    ) -> HttpRoute {
        if raw.http.is_empty() {
            self.push(
                format!("{path}.http"),
                "an l7 route needs at least one rule ([[listeners.routes.http]] with name and \
                 pool; a rule without match takes every request)",
            );
        }
        let mut policy_names = HashMap::new();
        let policies = self.policies(
            &format!("{path}.policies"),
            raw.policies.as_ref(),
            &mut policy_names,
        );
        let count = raw.http.len();
        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut rules = Vec::with_capacity(count);
        for (i, r) in raw.http.iter().enumerate() {
            let rule_path = format!("{path}.http[{i}]");
            self.name(&format!("{rule_path}.name"), &r.name);
            if let Some(first) = names.get(r.name.as_str()) {
                self.push(
                    format!("{rule_path}.name"),
                    format!(
                        "duplicate rule name {:?} in this route (also http[{first}])",
                        r.name
                    ),
                );
            } else {
                names.insert(&r.name, i);
            }
            let matcher = match &r.matcher {
                Some(m) => self.http_match(&format!("{rule_path}.match"), m),
                None => HttpMatch::default(),
            };
            if matcher.is_catch_all() && i + 1 != count {
                self.push(
                    rule_path.clone(),
                    format!(
                        "rule {:?} has no match conditions, so it takes every request and must \
                         be the last rule; the rules after it would never be used",
                        r.name
                    ),
                );
            }
            let pool_index = r
                .pool
                .as_ref()
                .map(|p| self.pool_ref(&format!("{rule_path}.pool"), p, pools));
            let redirect = r.redirect.as_ref().map(|d| {
                let moves_path = r.strip_prefix.is_some() || r.add_prefix.is_some();
                self.redirect(&format!("{rule_path}.redirect"), d, moves_path)
            });
            match (&r.pool, &r.redirect) {
                (None, None) => self.push(
                    format!("{rule_path}.pool"),
                    "required: the pool this rule's requests go to (or a `redirect`)",
                ),
                (Some(_), Some(_)) => self.push(
                    format!("{rule_path}.redirect"),
                    "a rule either sends its requests to a `pool` or redirects them; remove one",
                ),
                _ => {}
            }
            if r.redirect.is_some() {
                // A redirect forwards nothing: what would only change or
                // vet a forwarded request has nothing to act on.
                for (key, given) in [
                    ("auth", r.auth.is_some()),
                    ("request_headers", r.request_headers.is_some()),
                    (
                        "response_headers",
                        r.response_headers
                            .as_ref()
                            .is_some_and(|h| h.always != Some(true)),
                    ),
                ] {
                    if given {
                        self.push(
                            format!("{rule_path}.{key}"),
                            if key == "response_headers" {
                                "a redirect rule forwards nothing to a backend: remove it, \
                                 or give it `always = true` for the redirect itself"
                            } else {
                                "a redirect rule forwards nothing to a backend: remove it"
                            },
                        );
                    }
                }
            }
            let policies = self.policies(
                &format!("{rule_path}.policies"),
                r.policies.as_ref(),
                &mut policy_names,
            );
            let auth = r
                .auth
                .as_ref()
                .map(|a| self.auth(&format!("{rule_path}.auth"), a));
            let (request_headers, response_headers) = self.header_rules_of(
                &rule_path,
                r.request_headers.as_ref(),
                r.response_headers.as_ref(),
            );
            rules.push(HttpRule {
                name: r.name.clone(),
                matcher,
                pool: r.pool.clone(),
                pool_index,
                redirect,
                strip_prefix: self
                    .path_prefix(&format!("{rule_path}.strip_prefix"), &r.strip_prefix),
                add_prefix: self.path_prefix(&format!("{rule_path}.add_prefix"), &r.add_prefix),
                policies,
                auth,
                request_headers,
                response_headers,
            });
        }

        let forwarded = raw
            .forwarded
            .as_ref()
            .map(|f| Forwarded {
                trusted: self.sources(&format!("{path}.forwarded.trusted"), &f.trusted),
                rfc7239: f.rfc7239.unwrap_or(false),
            })
            .unwrap_or_default();

        let d = HttpTimeouts::default();
        let t = raw.timeouts.as_ref();
        let upstream_ping = match t.and_then(|t| t.upstream_ping.as_deref()) {
            None | Some("off") => d.upstream_ping,
            Some(v) => self.timeout_opt(&format!("{path}.timeouts.upstream_ping"), Some(v)),
        };
        let request = match t.and_then(|t| t.request.as_deref()) {
            None | Some("off") => d.request,
            Some(v) => self.timeout_opt(&format!("{path}.timeouts.request"), Some(v)),
        };
        let mut timeout = |key: &str, value: Option<&String>, default| {
            self.timeout(
                &format!("{path}.timeouts.{key}"),
                value.map(String::as_str),
                default,
            )
        };
        let timeouts = HttpTimeouts {
            request_header: timeout(
                "request_header",
                t.and_then(|t| t.request_header.as_ref()),
                d.request_header,
            ),
            idle: timeout("idle", t.and_then(|t| t.idle.as_ref()), d.idle),
            upstream_response: timeout(
                "upstream_response",
                t.and_then(|t| t.upstream_response.as_ref()),
                d.upstream_response,
            ),
            upstream_idle: timeout(
                "upstream_idle",
                t.and_then(|t| t.upstream_idle.as_ref()),
                d.upstream_idle,
            ),
            request,
            request_body: timeout(
                "request_body",
                t.and_then(|t| t.request_body.as_ref()),
                d.request_body,
            ),
            upstream_keepalive: timeout(
                "upstream_keepalive",
                t.and_then(|t| t.upstream_keepalive.as_ref()),
                d.upstream_keepalive,
            ),
            upstream_ping,
            websocket_idle: timeout(
                "websocket_idle",
                t.and_then(|t| t.websocket_idle.as_ref()),
                d.websocket_idle,
            ),
            send: timeout("send", t.and_then(|t| t.send.as_ref()), d.send),
        };

        let tls = raw
            .tls
            .as_ref()
            .map(|t| self.server_tls(&format!("{path}.tls"), t));
        let max_header_bytes = self.int(
            &format!("{path}.max_header_bytes"),
            raw.max_header_bytes,
            DEFAULT_MAX_HEADER_BYTES,
            MIN_HEADER_BYTES,
            Some(MAX_HEADER_BYTES),
        );
        let max_concurrent_streams = self.int(
            &format!("{path}.max_concurrent_streams"),
            raw.max_concurrent_streams,
            DEFAULT_MAX_CONCURRENT_STREAMS,
            1,
            Some(MAX_CONCURRENT_STREAMS),
        );
        let max_body_bytes = raw.max_body_bytes.and_then(|v| {
            let v: u64 = self.int(&format!("{path}.max_body_bytes"), Some(v), 0, 0, None);
            (v > 0).then_some(v)
        });
        let encoded_slashes = self.choice(
            &format!("{path}.encoded_slashes"),
            raw.encoded_slashes.clone(),
            EncodedSlashes::Reject,
            &[
                ("reject", EncodedSlashes::Reject),
                ("keep", EncodedSlashes::Keep),
            ],
        );
        let (request_headers, response_headers) = self.header_rules_of(
            path,
            raw.request_headers.as_ref(),
            raw.response_headers.as_ref(),
        );
        let route = HttpRoute {
            request_headers,
            response_headers,
            tls,
            rules,
            forwarded,
            timeouts,
            max_header_bytes,
            max_concurrent_streams,
            max_body_bytes,
            encoded_slashes,
            policies,
            auth: raw
                .auth
                .as_ref()
                .map(|a| self.auth(&format!("{path}.auth"), a)),
        };
        self.copied_headers_not_set(path, &route);
        route
    }

    /// The headers the authentication services' answers fill (the
    /// `copy_headers` of every `auth` of the route: weir drops them from
    /// every request on it) carry only what a service gave: a
    /// `request_headers` value for one would be dropped without a word, so
    /// the load says so.
    fn copied_headers_not_set(&mut self, path: &str, route: &HttpRoute) {
        let copied: Vec<&String> = route
            .auth
            .iter()
            .chain(route.rules.iter().filter_map(|r| r.auth.as_ref()))
            .flat_map(|a| &a.copy_headers)
            .collect();
        if copied.is_empty() {
            return;
        }
        let mut clashes = Vec::new();
        let mut check = |rules: &crate::model::HeaderRules, at: String| {
            let named = rules.set.iter().map(|(n, _)| ("set", n));
            for (op, n) in named.chain(rules.add.iter().map(|(n, _)| ("add", n))) {
                if copied.contains(&n) {
                    clashes.push(format!("{at}.request_headers.{op}.{n}"));
                }
            }
        };
        check(&route.request_headers, path.to_owned());
        for (i, rule) in route.rules.iter().enumerate() {
            check(&rule.request_headers, format!("{path}.http[{i}]"));
        }
        for key in clashes {
            self.push(
                key,
                "an authentication service's answer fills this header (`copy_headers` of \
                 an `auth` of this route), replacing any other value: name another header",
            );
        }
    }

    /// `tls`: its files are read now, so that a wrong path fails the load;
    /// whether a key fits its certificate is checked when the route is built.
    fn server_tls(&mut self, path: &str, raw: &RawServerTls) -> ServerTls {
        if raw.certificates.is_empty() {
            self.push(
                format!("{path}.certificates"),
                "at least one is needed: [{ cert = \"site.pem\", key = \"site.key\" }] (the \
                 first is the default, for clients whose SNI no certificate names)",
            );
        }
        let certificates = raw
            .certificates
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let at = format!("{path}.certificates[{i}]");
                let cert = self.pem_file(
                    &format!("{at}.cert"),
                    &c.cert,
                    "CERTIFICATE",
                    "holds no PEM certificate (no \"-----BEGIN CERTIFICATE-----\" line); `cert` \
                     takes the certificate chain, the server's own certificate first",
                );
                let key = self.pem_file(
                    &format!("{at}.key"),
                    &c.key,
                    "PRIVATE KEY",
                    "holds no PEM private key",
                );
                (cert, key)
            })
            .collect();
        let client_ca = raw
            .client_ca
            .as_deref()
            .map(|ca| self.ca_file(&format!("{path}.client_ca"), ca));
        ServerTls {
            certificates,
            client_ca,
        }
    }

    /// `strip_prefix` or `add_prefix` of a rule: a path in the normal form
    /// weir gives every request's path, so that it means what it says.
    fn path_prefix(&mut self, path: &str, raw: &Option<String>) -> Option<String> {
        let p = raw.as_ref()?;
        self.normal_path(path, p);
        Some(p.clone())
    }

    /// Checks that `p`, a path or path prefix a request's path is compared
    /// with, is in the normal form every request's path is given first
    /// (`weir_wire::path`): one in another form would never match.
    pub(super) fn normal_path(&mut self, key: &str, p: &str) {
        if p.starts_with('/')
            && p.len() <= 1024
            && !p.contains(['?', '#'])
            && p.bytes().all(|b| b.is_ascii_graphic())
            && weir_wire::path::normalize(p, weir_wire::path::Slashes::Reject).is_ok_and(|n| n == p)
        {
            return;
        }
        // Raw UTF-8 and spaces are what a client may send too: the hint
        // names the form they take once normalised.
        let normal = p
            .starts_with('/')
            .then(|| p.replace(' ', "%20"))
            .and_then(|q| {
                weir_wire::path::normalize(&q, weir_wire::path::Slashes::Reject)
                    .ok()
                    .map(|n| n.into_owned())
            })
            .filter(|n| n.len() <= 1024 && !n.contains(['?', '#']));
        let hint = match normal {
            Some(n) => format!(" (write {n:?})"),
            None => String::new(),
        };
        self.push(
            key,
            format!(
                "{p:?} is not a path in normal form{hint}: every request's path is \
                 normalised before it is compared, so this would never match. A path in \
                 normal form starts with `/`, has no `?`, `#`, `//`, `.` or `..` segments \
                 or encoded slashes, and encodes in upper case only what must be (at most \
                 1024 bytes)"
            ),
        );
    }

    /// `redirect = { scheme, host, port, status }` of a rule; `moves_path`:
    /// the rule's `strip_prefix` or `add_prefix` change the URL's path.
    fn redirect(&mut self, path: &str, raw: &RawRedirect, moves_path: bool) -> Redirect {
        let scheme = raw.scheme.as_ref().and_then(|s| match s.as_str() {
            "http" | "https" => Some(s.clone()),
            _ => {
                self.push(
                    format!("{path}.scheme"),
                    format!("{s:?}: expected \"http\" or \"https\""),
                );
                None
            }
        });
        let host = raw.host.as_ref().map(|h| {
            let lower = h.to_ascii_lowercase();
            let bracketed = lower
                .strip_prefix('[')
                .and_then(|v| v.strip_suffix(']'))
                .is_some_and(|v| v.parse::<std::net::Ipv6Addr>().is_ok());
            let valid = bracketed
                || lower.parse::<std::net::Ipv4Addr>().is_ok()
                || weir_wire::name::is_dns_name(lower.as_bytes());
            if !valid {
                self.push(
                    format!("{path}.host"),
                    format!(
                        "{h:?} is not a host name or an address (an IPv6 address in \
                         brackets), without a port"
                    ),
                );
            }
            lower
        });
        let port = raw
            .port
            .map(|p| self.int(&format!("{path}.port"), Some(p), 1u16, 1, Some(65535)));
        if raw.scheme.is_none() && raw.host.is_none() && raw.port.is_none() && !moves_path {
            self.push(
                path,
                "give at least one of `scheme`, `host` and `port` (or the rule's \
                 `strip_prefix` or `add_prefix`): a redirect to the request's own URL \
                 would send the client back here",
            );
        }
        let status = self.int(
            &format!("{path}.status"),
            raw.status,
            301u16,
            301,
            Some(308),
        );
        if raw.status.is_some() && ![301, 302, 303, 307, 308].contains(&status) {
            self.push(
                format!("{path}.status"),
                format!("{status} is not a redirect: expected 301, 302, 303, 307 or 308"),
            );
        }
        Redirect {
            scheme,
            host,
            port,
            status,
        }
    }

    pub(super) fn http_match(&mut self, path: &str, raw: &RawHttpMatch) -> HttpMatch {
        let host = raw
            .host
            .iter()
            .enumerate()
            .map(|(i, h)| {
                weir_wire::name::sni_pattern(h).unwrap_or_else(|| {
                    self.push(
                        format!("{path}.host[{i}]"),
                        format!(
                            "{h:?} is not a host name: write a DNS name (\"api.example.com\") \
                             or a wildcard of one label (\"*.example.com\"), without a port"
                        ),
                    );
                    String::new()
                })
            })
            .collect();
        let exact = raw
            .path
            .iter()
            .enumerate()
            .map(|(i, p)| {
                self.normal_path(&format!("{path}.path[{i}]"), p);
                p.clone()
            })
            .collect();
        let path_regex = raw
            .path_regex
            .as_ref()
            .and_then(|r| self.pattern(&format!("{path}.path_regex"), r));
        let source = self.sources(&format!("{path}.source"), &raw.source);
        let query = raw
            .query
            .iter()
            .map(|(name, value)| {
                if name.is_empty() || name.chars().chain(value.chars()).any(char::is_control) {
                    self.push(
                        format!("{path}.query.{name}"),
                        "a query parameter here is a non-empty name and a value without \
                         control characters, as they read decoded (`a b`, not `a+b` or `a%20b`)",
                    );
                }
                (name.clone(), value.clone())
            })
            .collect();
        let path_prefix = raw.path_prefix.as_ref().map(|p| {
            self.normal_path(&format!("{path}.path_prefix"), p);
            p.clone()
        });
        let methods = raw
            .methods
            .iter()
            .enumerate()
            .map(|(i, m)| {
                if m.is_empty() || !m.bytes().all(is_tchar) {
                    self.push(
                        format!("{path}.methods[{i}]"),
                        format!("{m:?} is not a method name (e.g. \"GET\", \"POST\")"),
                    );
                } else if m.bytes().any(|b| b.is_ascii_lowercase()) {
                    // Methods are case-sensitive: "get" never matches a GET.
                    self.push(
                        format!("{path}.methods[{i}]"),
                        format!(
                            "{m:?}: methods are case-sensitive and standard ones are upper-case \
                             (did you mean {:?}?)",
                            m.to_ascii_uppercase()
                        ),
                    );
                }
                m.clone()
            })
            .collect();
        let headers = raw
            .headers
            .iter()
            .map(|(name, value)| {
                if name.is_empty() || !name.bytes().all(is_tchar) {
                    self.push(
                        format!("{path}.headers"),
                        format!("{name:?} is not a header name"),
                    );
                }
                if !value
                    .bytes()
                    .all(|b| b == b' ' || b == b'\t' || b.is_ascii_graphic())
                {
                    self.push(
                        format!("{path}.headers.{name}"),
                        "a header value here holds printable ASCII characters, spaces and tabs",
                    );
                } else if value.starts_with([' ', '\t']) || value.ends_with([' ', '\t']) {
                    // HTTP/1.1 parsers trim them and HTTP/2 forbids them.
                    self.push(
                        format!("{path}.headers.{name}"),
                        format!(
                            "{value:?} would never match: a received header value has no \
                             spaces or tabs at its ends (write {:?})",
                            value.trim_matches([' ', '\t'])
                        ),
                    );
                }
                if name.eq_ignore_ascii_case("host") {
                    // HTTP/2 carries it as `:authority`, not as a header.
                    self.push(
                        format!("{path}.headers.{name}"),
                        "match the request's host with `host`, which reads `Host` and HTTP/2's \
                         `:authority` alike (a `host` header condition would miss HTTP/2 clients)",
                    );
                }
                (name.to_ascii_lowercase(), value.clone())
            })
            .collect();
        HttpMatch {
            host,
            path: exact,
            path_prefix,
            path_regex,
            methods,
            headers,
            source,
            query,
        }
    }
}

/// A character of an HTTP token (RFC 9110 §5.6.2): method and header names.
/// Headers of a message's framing and connection: hyper and weir set them,
/// so no operator rule or forward-auth copy may name them.
pub(super) const FRAMING_HEADERS: [&str; 8] = [
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "upgrade",
    "trailer",
];

pub(super) fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

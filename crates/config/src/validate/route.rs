//! `[[listeners.routes]]`: match conditions, the pool, and how to reach it
//! (PROXY protocol out, TLS to the backend).

use std::collections::HashMap;

use ipnet::IpNet;

use super::values::{check_server_name, parse_source};
use super::{Checker, PLACEHOLDER_ADDR};
use crate::model::{BackendTls, L4Route, Match, ProxyVersion, Route, RouteMode};
use crate::raw::{RawBackendTls, RawRoute};

#[derive(Clone, Copy)]
enum Mode {
    L4,
    L7,
}

const PROXY_VERSIONS: &[(&str, ProxyVersion)] = &[
    ("off", ProxyVersion::Off),
    ("v1", ProxyVersion::V1),
    ("v2", ProxyVersion::V2),
];

impl Checker {
    pub(super) fn route(
        &mut self,
        path: &str,
        mut raw: RawRoute,
        pools: &HashMap<String, usize>,
    ) -> Route {
        self.name(&format!("{path}.name"), &raw.name);
        let matcher = raw.matcher.take().unwrap_or_default();
        let sni = matcher
            .sni
            .iter()
            .enumerate()
            .map(|(i, s)| {
                parse_sni(s).unwrap_or_else(|msg| {
                    self.push(format!("{path}.match.sni[{i}]"), msg);
                    String::new()
                })
            })
            .collect();
        let alpn = matcher
            .alpn
            .iter()
            .enumerate()
            .map(|(i, a)| {
                if a.is_empty() || a.len() > 255 || !a.bytes().all(|b| b.is_ascii_graphic()) {
                    self.push(
                        format!("{path}.match.alpn[{i}]"),
                        format!("{a:?} is not an ALPN protocol name (1 to 255 printable ASCII characters, e.g. \"h2\", \"postgresql\")"),
                    );
                }
                a.clone()
            })
            .collect();
        let source = matcher
            .source
            .iter()
            .enumerate()
            .map(|(i, s)| {
                parse_source(s).unwrap_or_else(|msg| {
                    self.push(format!("{path}.match.source[{i}]"), msg);
                    IpNet::from(PLACEHOLDER_ADDR.ip())
                })
            })
            .collect();
        let backend_tls = raw
            .backend_tls
            .take()
            .map(|t| self.backend_tls(&format!("{path}.backend_tls"), t));
        let mode = self.choice(
            &format!("{path}.mode"),
            raw.mode.take(),
            Mode::L4,
            &[("l4", Mode::L4), ("l7", Mode::L7)],
        );
        let mode = match mode {
            Mode::L4 => {
                for (key, given) in [
                    ("tls", raw.tls.is_some()),
                    ("http", !raw.http.is_empty()),
                    ("forwarded", raw.forwarded.is_some()),
                    ("timeouts", raw.timeouts.is_some()),
                    ("max_header_bytes", raw.max_header_bytes.is_some()),
                    (
                        "max_concurrent_streams",
                        raw.max_concurrent_streams.is_some(),
                    ),
                    ("max_body_bytes", raw.max_body_bytes.is_some()),
                    ("encoded_slashes", raw.encoded_slashes.is_some()),
                    ("policies", raw.policies.is_some()),
                    ("auth", raw.auth.is_some()),
                    ("request_headers", raw.request_headers.is_some()),
                    ("response_headers", raw.response_headers.is_some()),
                ] {
                    if given {
                        self.push(
                            format!("{path}.{key}"),
                            "only for HTTP routes: add mode = \"l7\" to this route, or remove it",
                        );
                    }
                }
                let (pool, pool_index) = match raw.pool.take() {
                    Some(pool) => {
                        let index = self.pool_ref(&format!("{path}.pool"), &pool, pools);
                        (pool, index)
                    }
                    None => {
                        self.push(
                            format!("{path}.pool"),
                            "required key is missing in this table (the pool an l4 route sends to)",
                        );
                        (String::new(), 0)
                    }
                };
                let send_proxy_protocol = self.choice(
                    &format!("{path}.send_proxy_protocol"),
                    raw.send_proxy_protocol.take(),
                    ProxyVersion::Off,
                    PROXY_VERSIONS,
                );
                RouteMode::L4(L4Route {
                    pool,
                    pool_index,
                    send_proxy_protocol,
                })
            }
            Mode::L7 => {
                if raw.pool.is_some() {
                    self.push(
                        format!("{path}.pool"),
                        "an l7 route sends each request by its rules: move the pool into a \
                         rule ([[listeners.routes.http]] with name and pool; a rule without \
                         match takes every request)",
                    );
                }
                if raw.send_proxy_protocol.is_some() {
                    self.push(
                        format!("{path}.send_proxy_protocol"),
                        "not with mode = \"l7\": a pooled connection carries the requests of \
                         many clients; weir sends the client's address in X-Forwarded-For",
                    );
                }
                if raw.tls.is_none() && (!matcher.sni.is_empty() || !matcher.alpn.is_empty()) {
                    self.push(
                        format!("{path}.match"),
                        "an l7 route without tls reads HTTP in clear text, so it cannot match on \
                         sni or alpn: give it tls.certificates to terminate TLS, or route TLS \
                         by SNI to an l4 route",
                    );
                }
                RouteMode::L7(Box::new(self.http_route(path, &raw, pools)))
            }
        };
        Route {
            name: raw.name,
            backend_tls,
            matcher: Match { source, sni, alpn },
            mode,
        }
    }

    /// The pool named `pool`, by index; a problem at `path` when none is.
    pub(super) fn pool_ref(
        &mut self,
        path: &str,
        pool: &str,
        pools: &HashMap<String, usize>,
    ) -> usize {
        match pools.get(pool) {
            Some(&i) => i,
            None => {
                let hint = crate::suggest::closest(pool, pools.keys().map(String::as_str))
                    .map(|near| format!(" (did you mean {near:?}?)"))
                    .unwrap_or_default();
                self.push(path, format!("unknown pool {pool:?}{hint}"));
                0
            }
        }
    }

    /// `backend_tls`: its files are read now, so a wrong path fails the load.
    fn backend_tls(&mut self, path: &str, raw: RawBackendTls) -> BackendTls {
        let verify = raw.verify.unwrap_or(true);
        if !verify && raw.ca.is_some() {
            self.push(
                format!("{path}.verify"),
                "contradicts `ca`: with verify = false any certificate is accepted, so the CA \
                 would never be used; keep one of them",
            );
        }
        let ca = raw
            .ca
            .as_deref()
            .map(|ca| self.ca_file(&format!("{path}.ca"), ca));
        if let Some(name) = &raw.sni
            && let Err(msg) = check_server_name(name)
        {
            self.push(format!("{path}.sni"), msg);
        }
        let client_cert = match (raw.cert, raw.key) {
            (Some(cert), Some(key)) => {
                let cert = self.pem_file(
                    &format!("{path}.cert"),
                    &cert,
                    "CERTIFICATE",
                    "is not a PEM certificate chain",
                );
                let key = self.pem_file(
                    &format!("{path}.key"),
                    &key,
                    "PRIVATE KEY",
                    "is not a PEM private key",
                );
                Some((cert, key))
            }
            (Some(_), None) => {
                self.push(
                    format!("{path}.key"),
                    "required with `cert` (the client certificate's private key)",
                );
                None
            }
            (None, Some(_)) => {
                self.push(
                    format!("{path}.cert"),
                    "required with `key` (the client certificate chain)",
                );
                None
            }
            (None, None) => None,
        };
        BackendTls {
            sni: raw.sni,
            verify,
            ca,
            client_cert,
        }
    }
}

/// A `match.sni` entry: a DNS name or `*.` followed by one, lower-cased.
fn parse_sni(s: &str) -> Result<String, String> {
    // RFC 6066 §3: a client names no IP address in SNI (and one that does is
    // read as sending none), so such a pattern could never match.
    if s.parse::<std::net::IpAddr>().is_ok() {
        return Err(format!(
            "{s:?} is an IP address, which a client never sends as SNI (RFC 6066): a client \
             that connects by address sends no name, and only a route without `sni` takes it"
        ));
    }
    weir_wire::name::sni_pattern(s).ok_or_else(|| {
        format!(
            "{s:?} is not a server name: write a DNS name (\"db.example.com\") or a wildcard \
             of one label (\"*.example.com\")"
        )
    })
}

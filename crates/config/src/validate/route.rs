//! `[[listeners.routes]]`: match conditions, the pool, and how to reach it
//! (PROXY protocol out, TLS to the backend).

use std::collections::HashMap;

use ipnet::IpNet;

use super::values::{check_server_name, parse_source};
use super::{Checker, PLACEHOLDER_ADDR};
use crate::model::{BackendTls, Match, ProxyVersion, Route};
use crate::raw::{RawBackendTls, RawRoute};

const PROXY_VERSIONS: &[(&str, ProxyVersion)] = &[
    ("off", ProxyVersion::Off),
    ("v1", ProxyVersion::V1),
    ("v2", ProxyVersion::V2),
];

impl Checker {
    pub(super) fn route(
        &mut self,
        path: &str,
        raw: RawRoute,
        pools: &HashMap<String, usize>,
    ) -> Route {
        self.name(&format!("{path}.name"), &raw.name);
        let matcher = raw.matcher.unwrap_or_default();
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
        let pool_index = match pools.get(&raw.pool) {
            Some(&i) => i,
            None => {
                self.push(
                    format!("{path}.pool"),
                    format!("unknown pool {:?}", raw.pool),
                );
                0
            }
        };
        let send_proxy_protocol = self.choice(
            &format!("{path}.send_proxy_protocol"),
            raw.send_proxy_protocol,
            ProxyVersion::Off,
            PROXY_VERSIONS,
        );
        let backend_tls = raw
            .backend_tls
            .map(|t| self.backend_tls(&format!("{path}.backend_tls"), t));
        Route {
            name: raw.name,
            send_proxy_protocol,
            backend_tls,
            matcher: Match { source, sni, alpn },
            pool: raw.pool,
            pool_index,
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
    weir_wire::name::sni_pattern(s).ok_or_else(|| {
        format!(
            "{s:?} is not a server name: write a DNS name (\"db.example.com\") or a wildcard \
             of one label (\"*.example.com\")"
        )
    })
}

//! `[admin]`: the admin endpoints' addresses and the token that guards changes.

use std::path::{Path, PathBuf};

use super::Checker;
use super::files::relative_hint;
use crate::model::{Admin, Token};
use crate::raw::RawAdmin;

impl Checker {
    pub(super) fn admin(&mut self, raw: RawAdmin) -> Admin {
        // An address that does not parse has its own problem; any that
        // parses is judged below, the unspecified 0.0.0.0:0 included.
        let parsed = |s: &Option<String>| {
            s.as_deref()
                .is_some_and(|s| s.parse::<std::net::SocketAddr>().is_ok())
        };
        let (http_parsed, grpc_parsed) = (parsed(&raw.http), parsed(&raw.grpc));
        let http = raw.http.map(|s| self.bind_addr("admin.http", &s));
        let grpc = raw.grpc.map(|s| self.bind_addr("admin.grpc", &s));
        let insecure = raw.insecure.unwrap_or(false);
        let token_file = raw.token_file.map(PathBuf::from);
        let token = token_file
            .as_ref()
            .and_then(|f| self.token("admin.token_file", f));
        if token_file.is_none() && !insecure {
            // Anyone who can reach a non-loopback admin port could drain every
            // backend: that needs a token, or an explicit opt-out.
            for (path, addr, parsed) in [
                ("admin.http", http, http_parsed),
                ("admin.grpc", grpc, grpc_parsed),
            ] {
                if let Some(addr) = addr.filter(|a| parsed && !a.ip().is_loopback()) {
                    self.push(
                        path,
                        format!(
                            "{addr} is not a loopback address: set admin.token_file so that \
                             changes need a token, or write `insecure = true` in [admin]"
                        ),
                    );
                }
            }
        }
        let default = Admin::default();
        let max_connections = self.int(
            "admin.max_connections",
            raw.max_connections,
            default.max_connections,
            1,
            Some(100_000),
        );
        // One client alone never takes every connection: the rest stay for
        // the others (a readiness probe, a scrape) by default.
        let max_connections_per_client = match raw.max_connections_per_client {
            None => (max_connections / 2).max(1),
            Some(n) => {
                let n = self.int(
                    "admin.max_connections_per_client",
                    Some(n),
                    1,
                    1,
                    Some(100_000),
                );
                if n > max_connections {
                    self.push(
                        "admin.max_connections_per_client",
                        format!(
                            "{n} is more than admin.max_connections ({max_connections}); \
                             one client can hold at most every connection"
                        ),
                    );
                }
                n
            }
        };
        let hosts = raw
            .hosts
            .unwrap_or_default()
            .iter()
            .enumerate()
            .filter_map(|(i, name)| {
                let pattern = weir_wire::name::sni_pattern(name.strip_suffix('.').unwrap_or(name));
                if pattern.is_none() {
                    self.push(
                        format!("admin.hosts[{i}]"),
                        format!(
                            "{name:?} is not a host name: write a DNS name (\"lb1.example.com\") \
                             or a wildcard of one label (\"*.example.com\"); IP addresses and \
                             localhost are always answered"
                        ),
                    );
                }
                pattern
            })
            .collect();
        let handshake_timeout = self.timeout(
            "admin.handshake_timeout",
            raw.handshake_timeout.as_deref(),
            default.handshake_timeout,
        );
        let idle_timeout = self.timeout(
            "admin.idle_timeout",
            raw.idle_timeout.as_deref(),
            default.idle_timeout,
        );
        Admin {
            http,
            grpc,
            token,
            token_file,
            insecure,
            max_connections,
            max_connections_per_client,
            hosts,
            handshake_timeout,
            idle_timeout,
        }
    }

    /// The token file holds one secret; surrounding whitespace (a trailing
    /// newline) is not part of it.
    fn token(&mut self, path: &str, file: &Path) -> Option<Token> {
        match std::fs::read_to_string(file) {
            Ok(text) => {
                let secret = text.trim();
                if secret.is_empty() {
                    self.push(path, format!("{:?} is empty", file.display().to_string()));
                    None
                } else if secret.len() < 16 {
                    self.push(
                        path,
                        format!(
                            "the token in {:?} is {} characters long; use at least 16 \
                             (e.g. `openssl rand -hex 32`)",
                            file.display().to_string(),
                            secret.len()
                        ),
                    );
                    None
                } else {
                    Some(Token::new(secret.to_owned()))
                }
            }
            Err(e) => {
                let hint = relative_hint(file);
                self.push(
                    path,
                    format!("cannot read {:?}: {e}{hint}", file.display().to_string()),
                );
                None
            }
        }
    }
}

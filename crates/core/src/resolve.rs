//! Backend host names: a backend's `address` may be `host:port`; the config
//! keeps it as a name, and the runtime resolves it when it builds a snapshot
//! (at start and at every reload), taking the first address the system
//! resolver returns.

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use weir_config::{BackendAddress, Config, ConfigError, Problem};

/// How long all the names of one config may take to resolve.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Resolved backend addresses, by (pool, backend).
#[derive(Debug, Default, Clone)]
pub struct Resolved(HashMap<(String, String), SocketAddr>);

impl Resolved {
    pub fn get(&self, pool: &str, backend: &str) -> Option<SocketAddr> {
        self.0.get(&(pool.to_owned(), backend.to_owned())).copied()
    }
}

/// Resolves every backend of `config` (IP addresses are taken as they are;
/// each distinct name is looked up once). A name that does not resolve is a
/// problem at its key path, as a config error would be.
pub async fn backends(config: &Config) -> Result<Resolved, ConfigError> {
    backends_knowing(config, &|_, _| None).await
}

/// [`backends`], taking the address `known` gives for a backend (by pool
/// and name) instead of looking its name up again: a snapshot rebuilt for
/// a runtime or discovered backend keeps what the last start or reload
/// resolved, as the names are resolved only then.
pub(crate) async fn backends_knowing(
    config: &Config,
    known: &(dyn Fn(&str, &str) -> Option<SocketAddr> + Sync),
) -> Result<Resolved, ConfigError> {
    let mut names: Vec<String> = Vec::new();
    for p in &config.pools {
        for b in &p.backends {
            if let BackendAddress::Name { .. } = &b.address
                && known(&p.name, &b.name).is_none()
            {
                let spec = b.address.to_string();
                if !names.contains(&spec) {
                    names.push(spec);
                }
            }
        }
    }
    let looked_up: HashMap<String, Result<SocketAddr, String>> = if names.is_empty() {
        HashMap::new()
    } else {
        // getaddrinfo blocks: keep it off the runtime's workers.
        let lookup = tokio::task::spawn_blocking(move || {
            names
                .into_iter()
                .map(|n| {
                    let r = lookup(&n);
                    (n, r)
                })
                .collect()
        });
        match tokio::time::timeout(TIMEOUT, lookup).await {
            Ok(Ok(m)) => m,
            Ok(Err(e)) => return Err(one("backend names could not be resolved", e)),
            Err(_) => {
                return Err(one(
                    "backend names",
                    format!("not resolved within {TIMEOUT:?}; is the resolver reachable?"),
                ));
            }
        }
    };
    let mut out = HashMap::new();
    let mut problems = Vec::new();
    for (pi, p) in config.pools.iter().enumerate() {
        for (bi, b) in p.backends.iter().enumerate() {
            let addr = match (&b.address, known(&p.name, &b.name)) {
                (BackendAddress::Ip(a), _) => Ok(*a),
                (_, Some(a)) => Ok(a),
                (name, None) => looked_up
                    .get(&name.to_string())
                    .cloned()
                    .unwrap_or_else(|| Err("not looked up".to_owned())),
            };
            match addr {
                Ok(a) => {
                    out.insert((p.name.clone(), b.name.clone()), a);
                }
                Err(e) => problems.push(Problem::new(
                    format!("pools[{pi}].backends[{bi}].address"),
                    format!("cannot resolve \"{}\": {e}", b.address),
                )),
            }
        }
    }
    if problems.is_empty() {
        Ok(Resolved(out))
    } else {
        Err(ConfigError::new(problems))
    }
}

fn lookup(spec: &str) -> Result<SocketAddr, String> {
    spec.to_socket_addrs()
        .map_err(|e| e.to_string())?
        .next()
        .ok_or_else(|| "the name has no addresses".to_owned())
}

fn one(path: &str, message: impl std::fmt::Display) -> ConfigError {
    ConfigError::new(vec![Problem::new(path, message.to_string())])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A name whose address is known (what the last start or reload
    /// resolved) is not looked up again: a snapshot rebuilt for a DNS
    /// change elsewhere neither moves the backend nor fails on its name.
    #[tokio::test]
    async fn a_known_address_is_taken_without_a_lookup() {
        let config = weir_config::load_str(
            "[[pools]]\nname = \"p\"\n[[pools.backends]]\nname = \"db\"\n\
             address = \"nowhere.invalid:5432\"\n",
        )
        .expect("config");
        assert!(
            backends(&config).await.is_err(),
            "the name does not resolve"
        );
        let kept: SocketAddr = "192.0.2.7:5432".parse().expect("address");
        let known = |pool: &str, backend: &str| (pool, backend) == ("p", "db");
        let resolved = backends_knowing(&config, &|p, b| known(p, b).then_some(kept))
            .await
            .expect("known");
        assert_eq!(resolved.get("p", "db"), Some(kept));
    }
}

//! A pool as the data plane sees it: its backends with their counters and the
//! balancer built from them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use weir_balance::{Member, Picker, Policy};
use weir_config as config;

use crate::stats::BackendStats;

/// One backend of a pool.
#[derive(Debug)]
pub struct Backend {
    pub name: String,
    pub address: SocketAddr,
    pub weight: u32,
    pub tier: u32,
    pub stats: Arc<BackendStats>,
}

/// A pool: backends plus how to pick among them.
#[derive(Debug)]
pub struct Pool {
    pub name: String,
    pub connect_timeout: Duration,
    pub retries: u32,
    pub hash_key: config::HashKey,
    pub backends: Vec<Backend>,
    pub(crate) picker: Picker,
}

impl Pool {
    pub(crate) fn build(cfg: &config::Pool) -> Pool {
        let backends: Vec<Backend> = cfg
            .backends
            .iter()
            .map(|b| Backend {
                name: b.name.clone(),
                address: b.address,
                weight: b.weight,
                tier: b.tier,
                stats: Arc::default(),
            })
            .collect();
        let members: Vec<Member<'_>> = backends
            .iter()
            .enumerate()
            .map(|(index, b)| Member {
                index,
                name: &b.name,
                weight: b.weight,
                tier: b.tier,
            })
            .collect();
        let policy = match cfg.balance {
            config::Balance::RoundRobin => Policy::RoundRobin,
            config::Balance::LeastConn => Policy::LeastConn,
            config::Balance::Random => Policy::Random,
            config::Balance::First => Policy::First,
            config::Balance::Maglev => Policy::Maglev,
        };
        let picker = Picker::new(policy, &members);
        Pool {
            name: cfg.name.clone(),
            connect_timeout: cfg.connect_timeout,
            retries: cfg.retries,
            hash_key: cfg.hash_key,
            backends,
            picker,
        }
    }

    /// The tier currently serving, if any backend can serve.
    pub fn active_tier(&self) -> Option<u32> {
        self.picker.active_tier()
    }

    pub fn backend(&self, name: &str) -> Option<&Backend> {
        self.backends.iter().find(|b| b.name == name)
    }
}

//! Operator actions on the firewall and the listeners' limits: runtime
//! firewall rules (saved to the state file first, applied to every listener
//! at once, announced to watchers, ended by themselves when timed) and
//! `max_connections` set at runtime.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ipnet::IpNet;

use super::{ControlError, Server};
use crate::events::RuleChange;
use crate::firewall::{Action, Rule};

/// The longest a timed rule may last: past it, use a rule without an end.
const MAX_FOR: Duration = Duration::from_secs(10 * 366 * 86_400);

/// Runtime firewall rules at most: each change rebuilds the whole set and
/// every listing copies it, so an automated banning loop gone wrong meets a
/// clear refusal rather than a slower and slower weir.
pub(super) const MAX_RULES: usize = 100_000;

/// A rule's `reason` at most, in bytes: it is kept, saved and sent with every
/// listing and event.
pub(super) const MAX_REASON: usize = 1024;

impl Server {
    /// The runtime firewall rules, oldest first.
    pub fn firewall_rules(&self) -> Vec<Rule> {
        self.firewall_rules.list()
    }

    /// Adds a rule for `network` (an address or a CIDR), for every listener,
    /// replacing the one for the same network. Saved to the state file first;
    /// when that fails nothing changes.
    pub async fn add_firewall_rule(
        &self,
        network: &str,
        action: Action,
        lasts: Option<Duration>,
        reason: &str,
    ) -> Result<Rule, ControlError> {
        let net = parse_network(network)?;
        if reason.len() > MAX_REASON {
            return Err(ControlError::Reason(reason.len()));
        }
        let now = SystemTime::now();
        let rule = Rule {
            net,
            action,
            until: lasts.map(|d| now + d.min(MAX_FOR)),
            reason: reason.to_owned(),
            added: now,
        };
        let _one = self.change_lock().await?;
        let (rules, replaced) = self.firewall_rules.count(net);
        if rules >= MAX_RULES && !replaced {
            return Err(ControlError::TooManyRules);
        }
        if let Some(persist) = &self.persistence {
            persist
                .put_rule(&rule)
                .await
                .map_err(|e| ControlError::State(e.to_string()))?;
        }
        self.firewall_rules.add(rule.clone());
        self.firewall_changed.notify_one();
        tracing::info!(network = %rule.net, action = action.as_str(), until = ?rule.until, reason, "firewall rule added");
        self.journal.firewall(RuleChange::Added, &rule);
        Ok(rule)
    }

    /// Removes the rule for `network`; the removed rule.
    pub async fn remove_firewall_rule(&self, network: &str) -> Result<Rule, ControlError> {
        let net = parse_network(network)?;
        let _one = self.change_lock().await?;
        if !self.firewall_rules.list().iter().any(|r| r.net == net) {
            return Err(ControlError::NoRule(net.to_string()));
        }
        if let Some(persist) = &self.persistence {
            persist
                .delete_rule(net)
                .await
                .map_err(|e| ControlError::State(e.to_string()))?;
        }
        let removed = self
            .firewall_rules
            .remove(net)
            .ok_or_else(|| ControlError::NoRule(net.to_string()))?;
        tracing::info!(network = %net, action = removed.action.as_str(), "firewall rule removed");
        self.journal.firewall(RuleChange::Removed, &removed);
        Ok(removed)
    }

    /// Sets a listener's `max_connections` (`None`: back to the configured
    /// one) until a restart. Connections open beyond a lowered limit stay.
    pub async fn set_max_connections(
        &self,
        listener: &str,
        max: Option<u32>,
    ) -> Result<Arc<crate::listener::Listener>, ControlError> {
        let _one = self.change_lock().await?;
        let l = self
            .listener(listener)
            .ok_or_else(|| ControlError::NoListener(listener.to_owned()))?;
        if l.udp.is_some() {
            return Err(ControlError::UdpListener(listener.to_owned()));
        }
        l.stats
            .max_connections_set
            .store(max.unwrap_or(0), std::sync::atomic::Ordering::Relaxed);
        tracing::info!(
            listener,
            max_connections = l.max_connections(),
            "max_connections set"
        );
        Ok(l)
    }

    /// Ends timed rules when their time comes, until shutdown, and deletes
    /// them from the state file (a start deletes those that ended while
    /// weir was stopped).
    pub(super) fn spawn_rule_expiry(&self) {
        let persist = self.persistence.clone();
        let rules = Arc::clone(&self.firewall_rules);
        let changed = Arc::clone(&self.firewall_changed);
        let journal = Arc::clone(&self.journal);
        let stop = self.stop_accepting.clone();
        tokio::spawn(async move {
            loop {
                let wait = rules.next_end().map(|at| {
                    at.duration_since(SystemTime::now())
                        .unwrap_or(Duration::ZERO)
                });
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = changed.notified() => {}
                    () = sleep_or_forever(wait) => {}
                }
                let ended = rules.expire(SystemTime::now());
                for rule in &ended {
                    tracing::info!(network = %rule.net, action = rule.action.as_str(), "firewall rule ended");
                    journal.firewall(RuleChange::Ended, rule);
                }
                // Only rows whose time has passed: a rule added again for the
                // network meanwhile ends later and stays.
                if let Some(persist) = persist.as_ref().filter(|_| !ended.is_empty())
                    && let Err(e) = persist.delete_ended_rules().await
                {
                    tracing::warn!(error = %e, "ended firewall rules stay in the state file until the next start");
                }
            }
        });
    }
}

async fn sleep_or_forever(wait: Option<Duration>) {
    match wait {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

/// An IP address or CIDR an operator typed; an IPv4-mapped one
/// (`::ffff:a.b.c.d`) as the IPv4 network it stands for, which is how
/// clients are matched (and one rule per network).
pub(crate) fn parse_network(s: &str) -> Result<IpNet, ControlError> {
    let s = s.trim();
    s.parse::<IpNet>()
        .map(|n| n.trunc())
        .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
        .map(weir_config::ipv4_if_mapped)
        .map_err(|_| ControlError::Network(s.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mapped_network_is_the_ipv4_one_it_stands_for() {
        let net = |s: &str| parse_network(s).expect(s);
        assert_eq!(net("::ffff:203.0.113.5"), net("203.0.113.5"));
        assert_eq!(net("::ffff:203.0.113.5").to_string(), "203.0.113.5/32");
        assert_eq!(net("::ffff:10.1.2.3/104").to_string(), "10.0.0.0/8");
        assert_eq!(net(" 2001:db8::1/32 ").to_string(), "2001:db8::/32");
        assert_eq!(net("::1").to_string(), "::1/128");
        assert!(parse_network("::ffff:10.0.0.0/300").is_err());
        assert!(parse_network("example.com").is_err());
    }
}

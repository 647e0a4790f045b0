//! Rules an operator adds at runtime (`weir firewall deny|allow`), for every
//! listener, on top of the configured lists: a runtime `deny` refuses the
//! source (reason `banned`) before anything else; a runtime `allow` lets it
//! past the configured lists (not past the per-client limits). A rule may
//! carry an end (`--for 1h`); the server removes it then.
//!
//! Reads are lock-free (one `ArcSwap` load per connection); changes rebuild
//! the compiled sets under a mutex, which only operator actions take.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use ipnet::IpNet;

use super::AddrSet;
use crate::sync::lock;

/// What a runtime rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Deny,
    Allow,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Deny => "deny",
            Action::Allow => "allow",
        }
    }

    pub fn parse(s: &str) -> Option<Action> {
        match s {
            "deny" => Some(Action::Deny),
            "allow" => Some(Action::Allow),
            _ => None,
        }
    }
}

/// One runtime rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The address or network (a bare address is a /32 or /128).
    pub net: IpNet,
    pub action: Action,
    /// When it ends by itself; `None`: when removed.
    pub until: Option<SystemTime>,
    /// Why, in the operator's words.
    pub reason: String,
    pub added: SystemTime,
}

#[derive(Debug, Default)]
struct Compiled {
    deny: AddrSet,
    allow: AddrSet,
}

/// The runtime rules of a server.
#[derive(Debug, Default)]
pub struct RuntimeRules {
    rules: Mutex<Vec<Rule>>,
    compiled: ArcSwap<Compiled>,
    /// Moves whenever a source let in may be refused now: a `deny` rule
    /// added, an `allow` rule removed or ended, a reload's new lists. What
    /// is open (UDP flows) is looked at again when it moved.
    denied: AtomicU64,
}

impl RuntimeRules {
    pub fn new(rules: Vec<Rule>) -> Arc<RuntimeRules> {
        let r = RuntimeRules::default();
        {
            let mut list = r.lock();
            *list = rules;
            r.compile(&list);
        }
        Arc::new(r)
    }

    /// What a runtime rule says of `ip`: a deny wins over an allow.
    pub fn check(&self, ip: IpAddr) -> Option<Action> {
        let c = self.compiled.load();
        if c.deny.contains(ip) {
            Some(Action::Deny)
        } else if c.allow.contains(ip) {
            Some(Action::Allow)
        } else {
            None
        }
    }

    /// Adds `rule`, replacing a rule for the same network; the replaced one.
    pub fn add(&self, rule: Rule) -> Option<Rule> {
        let mut list = self.lock();
        let old = list
            .iter()
            .position(|r| r.net == rule.net)
            .map(|i| list.remove(i));
        let deny = rule.action == Action::Deny;
        list.push(rule);
        self.compile(&list);
        if deny {
            // After the compile: whoever sees the new count sees the rule.
            self.denied.fetch_add(1, Ordering::Release);
        }
        old
    }

    /// When it moved since a flow was let in, its source is to be checked
    /// again (see `denied`).
    pub fn deny_generation(&self) -> u64 {
        self.denied.load(Ordering::Acquire)
    }

    /// Says that the configured lists changed (a reload switched to new
    /// ones), after the listeners that carry them are in place.
    pub fn lists_changed(&self) {
        self.denied.fetch_add(1, Ordering::Release);
    }

    /// Removes the rule for `net`; the removed one.
    pub fn remove(&self, net: IpNet) -> Option<Rule> {
        let mut list = self.lock();
        let i = list.iter().position(|r| r.net == net)?;
        let old = list.remove(i);
        self.compile(&list);
        if old.action == Action::Allow {
            self.denied.fetch_add(1, Ordering::Release);
        }
        Some(old)
    }

    /// How many rules there are, and whether one is for `net`.
    pub fn count(&self, net: IpNet) -> (usize, bool) {
        let list = self.lock();
        (list.len(), list.iter().any(|r| r.net == net))
    }

    /// Every rule, oldest first.
    pub fn list(&self) -> Vec<Rule> {
        self.lock().clone()
    }

    /// Removes and returns the rules that ended by `now`.
    pub fn expire(&self, now: SystemTime) -> Vec<Rule> {
        let mut list = self.lock();
        let (ended, kept): (Vec<Rule>, Vec<Rule>) = list
            .drain(..)
            .partition(|r| r.until.is_some_and(|u| u <= now));
        *list = kept;
        if !ended.is_empty() {
            self.compile(&list);
            if ended.iter().any(|r| r.action == Action::Allow) {
                self.denied.fetch_add(1, Ordering::Release);
            }
        }
        ended
    }

    /// When the next rule ends.
    pub fn next_end(&self) -> Option<SystemTime> {
        self.lock().iter().filter_map(|r| r.until).min()
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Rule>> {
        lock(&self.rules)
    }

    fn compile(&self, list: &[Rule]) {
        let of = |a: Action| {
            AddrSet::new(
                list.iter()
                    .filter(|r| r.action == a)
                    .map(|r| &r.net)
                    .collect::<Vec<_>>(),
            )
        };
        self.compiled.store(Arc::new(Compiled {
            deny: of(Action::Deny),
            allow: of(Action::Allow),
        }));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn rule(net: &str, action: Action, until: Option<SystemTime>) -> Rule {
        Rule {
            net: net.parse().expect("net"),
            action,
            until,
            reason: String::new(),
            added: SystemTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn deny_wins_and_rules_replace_and_expire() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let r = RuntimeRules::new(vec![rule("10.0.0.0/8", Action::Allow, None)]);
        let ip = "10.1.2.3".parse().expect("ip");
        assert_eq!(r.check(ip), Some(Action::Allow));
        r.add(rule("10.1.2.3/32", Action::Deny, Some(t0)));
        assert_eq!(r.check(ip), Some(Action::Deny));
        assert_eq!(r.next_end(), Some(t0));
        assert!(r.expire(t0 - Duration::from_secs(1)).is_empty());
        let ended = r.expire(t0);
        assert_eq!(ended.len(), 1);
        assert_eq!(r.check(ip), Some(Action::Allow));
        // Same network again: replaced, not doubled.
        let old = r.add(rule("10.0.0.0/8", Action::Deny, None));
        assert_eq!(old.map(|o| o.action), Some(Action::Allow));
        assert_eq!(r.list().len(), 1);
        assert_eq!(r.check(ip), Some(Action::Deny));
        assert!(r.remove("10.0.0.0/8".parse().expect("net")).is_some());
        assert_eq!(r.check(ip), None);
        assert!(r.remove("10.0.0.0/8".parse().expect("net")).is_none());
    }

    #[test]
    fn the_generation_moves_when_a_source_may_be_refused_now() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let r = RuntimeRules::new(Vec::new());
        let g0 = r.deny_generation();
        r.add(rule("10.0.0.0/8", Action::Allow, None));
        assert_eq!(r.deny_generation(), g0, "an allow refuses no one");
        r.remove("10.0.0.0/8".parse().expect("net"));
        let g1 = r.deny_generation();
        assert!(g1 > g0, "the allow's sources meet the lists again");
        r.add(rule("10.0.0.0/8", Action::Allow, Some(t0)));
        r.expire(t0);
        let g2 = r.deny_generation();
        assert!(g2 > g1, "an allow that ended");
        r.add(rule("10.1.0.0/16", Action::Deny, None));
        let g3 = r.deny_generation();
        assert!(g3 > g2);
        r.lists_changed();
        assert!(r.deny_generation() > g3);
    }
}

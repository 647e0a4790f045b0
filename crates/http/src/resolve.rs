//! The addresses of a host named in the configuration (an auth service's
//! `url`), looked up by the system resolver at most once at a time and kept
//! for a while.
//!
//! The system resolver blocks a thread per lookup, and a call that times out
//! does not end its lookup: with a slow name service, looking up on every
//! new connection would leave a blocked thread behind per call, up to
//! tokio's blocking pool, which file reads and other lookups share. Here one
//! lookup runs at a time, in a task of its own that outlives the calls
//! waiting for it; its answer serves every call for [`KEEP`], and a failed
//! lookup keeps the last good addresses (looked up again after [`RETRY`]).

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt, Shared};
use tokio::time::Instant;
use weir_core::sync::lock;

/// How long a lookup's addresses serve.
pub(crate) const KEEP: Duration = Duration::from_secs(30);
/// How soon a failed lookup is tried again.
pub(crate) const RETRY: Duration = Duration::from_secs(1);

/// The addresses found (or none), and until when they serve.
type Found = (Result<Arc<[SocketAddr]>, ()>, Instant);

/// A lookup: the host and port to the addresses the system gives.
pub(crate) type LookupFn = fn(String, u16) -> BoxFuture<'static, std::io::Result<Vec<SocketAddr>>>;

/// One configured host and port.
pub(crate) struct Name {
    host: String,
    port: u16,
    /// The host is an address: nothing to look up.
    literal: Option<SocketAddr>,
    lookup: LookupFn,
    /// The last lookup, finished or under way.
    last: Mutex<Option<Shared<BoxFuture<'static, Found>>>>,
}

impl std::fmt::Debug for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Name({}:{})", self.host, self.port)
    }
}

fn system(host: String, port: u16) -> BoxFuture<'static, std::io::Result<Vec<SocketAddr>>> {
    async move {
        Ok(tokio::net::lookup_host((host.as_str(), port))
            .await?
            .collect())
    }
    .boxed()
}

impl Name {
    /// `host` as written in a URL: an IPv6 address without its brackets.
    pub(crate) fn new(host: &str, port: u16) -> Name {
        Name::with_lookup(host, port, system)
    }

    pub(crate) fn with_lookup(host: &str, port: u16, lookup: LookupFn) -> Name {
        Name {
            host: host.to_owned(),
            port,
            literal: host.parse::<IpAddr>().ok().map(|ip| (ip, port).into()),
            lookup,
            last: Mutex::new(None),
        }
    }

    /// The addresses to connect to, in the order the resolver gave them.
    /// Waits for a lookup under way (another call's, or one started here);
    /// the caller bounds the wait.
    pub(crate) async fn addresses(&self) -> Result<Arc<[SocketAddr]>, ()> {
        if let Some(a) = self.literal {
            return Ok(Arc::from([a]));
        }
        let pending = {
            let mut last = lock(&self.last);
            let now = Instant::now();
            match last.as_ref() {
                // Under way: shared.
                Some(l) if l.peek().is_none() => l.clone(),
                Some(l) if l.peek().is_some_and(|(_, until)| *until > now) => {
                    return l.peek().map_or(Err(()), |(found, _)| found.clone());
                }
                _ => {
                    let previous = last
                        .as_ref()
                        .and_then(|l| l.peek())
                        .and_then(|(found, _)| found.clone().ok());
                    let started = self.start(previous);
                    *last = Some(started.clone());
                    started
                }
            }
        };
        pending.await.0
    }

    /// A lookup in a task of its own (a call that gives up waiting does not
    /// end it). `previous` serves on if it fails.
    fn start(&self, previous: Option<Arc<[SocketAddr]>>) -> Shared<BoxFuture<'static, Found>> {
        let task = tokio::spawn((self.lookup)(self.host.clone(), self.port));
        async move {
            let found = match task.await {
                Ok(Ok(a)) if !a.is_empty() => Some(Arc::from(a)),
                _ => None,
            };
            match (found, previous) {
                (Some(a), _) => (Ok(a), Instant::now() + KEEP),
                (None, Some(p)) => (Ok(p), Instant::now() + RETRY),
                (None, None) => (Err(()), Instant::now() + RETRY),
            }
        }
        .boxed()
        .shared()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

    use super::*;

    static LOOKUPS: AtomicUsize = AtomicUsize::new(0);
    static FAILING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

    /// Takes a second; answers 192.0.2.<lookups so far> unless failing.
    fn slow(_: String, port: u16) -> BoxFuture<'static, std::io::Result<Vec<SocketAddr>>> {
        async move {
            let n = LOOKUPS.fetch_add(1, Relaxed) + 1;
            tokio::time::sleep(Duration::from_secs(1)).await;
            if FAILING.load(Relaxed) {
                return Err(std::io::Error::other("no answer"));
            }
            let ip = std::net::Ipv4Addr::new(192, 0, 2, u8::try_from(n).unwrap_or(255));
            Ok(vec![(ip, port).into()])
        }
        .boxed()
    }

    fn first(a: &Result<Arc<[SocketAddr]>, ()>) -> String {
        a.as_ref().map_or("none".into(), |a| a[0].to_string())
    }

    /// Calls that come while a lookup is under way share it, even when the
    /// one that started it gave up; its answer serves for `KEEP`; a failed
    /// lookup keeps the last addresses and is tried again after `RETRY`.
    #[tokio::test(start_paused = true)]
    async fn one_lookup_at_a_time_serves_every_call() {
        let name = Arc::new(Name::with_lookup("auth.example", 9000, slow));
        // The first caller gives up; the lookup goes on.
        let gave_up = tokio::time::timeout(Duration::from_millis(100), name.addresses()).await;
        assert!(gave_up.is_err());
        let calls: Vec<_> = (0..50)
            .map(|_| {
                let name = Arc::clone(&name);
                tokio::spawn(async move { name.addresses().await })
            })
            .collect();
        for c in calls {
            assert_eq!(first(&c.await.expect("call")), "192.0.2.1:9000");
        }
        assert_eq!(LOOKUPS.load(Relaxed), 1);
        // Kept: no lookup within `KEEP`.
        tokio::time::advance(KEEP - Duration::from_secs(2)).await;
        assert_eq!(first(&name.addresses().await), "192.0.2.1:9000");
        assert_eq!(LOOKUPS.load(Relaxed), 1);
        // Past it, looked up again.
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(first(&name.addresses().await), "192.0.2.2:9000");
        assert_eq!(LOOKUPS.load(Relaxed), 2);
        // The name service fails: the last addresses serve on.
        FAILING.store(true, Relaxed);
        tokio::time::advance(KEEP).await;
        assert_eq!(first(&name.addresses().await), "192.0.2.2:9000");
        assert_eq!(LOOKUPS.load(Relaxed), 3);
        // ... and it is asked again only after `RETRY`.
        assert_eq!(first(&name.addresses().await), "192.0.2.2:9000");
        assert_eq!(LOOKUPS.load(Relaxed), 3);
        tokio::time::advance(RETRY).await;
        FAILING.store(false, Relaxed);
        assert_eq!(first(&name.addresses().await), "192.0.2.4:9000");
        // An address needs no lookup.
        let literal = Name::with_lookup("::1", 80, slow);
        assert_eq!(first(&literal.addresses().await), "[::1]:80");
        assert_eq!(LOOKUPS.load(Relaxed), 4);
    }

    /// A name nothing answers for fails (after the system's lookup).
    #[tokio::test]
    async fn a_name_that_does_not_resolve_fails() {
        let name = Name::new("no-such-host.invalid", 80);
        assert!(name.addresses().await.is_err());
        assert_eq!(
            first(&Name::new("127.0.0.1", 8080).addresses().await),
            "127.0.0.1:8080"
        );
    }
}

//! The addresses of a host named in the configuration (an auth service's
//! `url`, an OTLP collector), looked up by the system resolver at most once
//! at a time and kept for a while, and connections to them ([`Reach`]).
//!
//! The system resolver blocks a thread per lookup, and a call that times out
//! does not end its lookup: with a slow name service, looking up on every
//! new connection would leave a blocked thread behind per call, up to
//! tokio's blocking pool, which file reads and other lookups share. Here one
//! lookup runs at a time, in a task of its own that outlives the calls
//! waiting for it; its answer serves every call for [`KEEP`]. Past that, the
//! addresses serve on while the next lookup runs, and when it fails (looked
//! up again after [`RETRY`]): a lookup is waited for only until one has
//! found addresses.
//!
//! A lookup that has not ended after [`STUCK`] (a hung name-service module)
//! is given up: it counts as failed, and the next starts after [`RETRY`]
//! while the stuck one keeps its thread. At most [`MAX_RUNNING`] lookups of
//! one name run at once, so a name service that never answers holds that
//! many threads, not one more every few seconds; an answer that comes late
//! is still taken.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;
use weir_core::sync::lock;

/// How long a lookup's addresses serve before the next lookup.
pub(crate) const KEEP: Duration = Duration::from_secs(30);
/// How soon a failed lookup is tried again.
pub(crate) const RETRY: Duration = Duration::from_secs(1);
/// How long a lookup runs before it is given up (glibc's resolver gives up
/// on DNS within 10 s with its defaults; a hung module never does).
pub(crate) const STUCK: Duration = Duration::from_secs(15);
/// Lookups of one name under way at once, given-up ones included.
pub(crate) const MAX_RUNNING: usize = 3;

/// A lookup: the host and port to the addresses the system gives.
pub(crate) type LookupFn =
    Arc<dyn Fn(String, u16) -> BoxFuture<'static, std::io::Result<Vec<SocketAddr>>> + Send + Sync>;

/// One configured host and port.
pub(crate) struct Name {
    host: String,
    port: u16,
    /// The host is an address: nothing to look up.
    literal: Option<SocketAddr>,
    lookup: LookupFn,
    state: Arc<Mutex<State>>,
    /// Told when a lookup ends.
    done: Arc<Notify>,
}

#[derive(Default)]
struct State {
    /// The last addresses found.
    good: Option<Arc<[SocketAddr]>>,
    /// Until when the last lookup's outcome stands (no new lookup before).
    until: Option<Instant>,
    /// A lookup is under way and not given up.
    looking: bool,
    /// Which lookup is the current one: a given-up lookup's late end
    /// leaves the one after it alone.
    generation: u64,
    /// Lookups whose task has not ended, given-up ones included.
    running: usize,
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

/// The least time a connect to one address is given before the next is
/// tried.
const MIN_CONNECT: Duration = Duration::from_millis(100);

/// A host to connect to: its [`Name`], and the address the last connect
/// reached, where the next one starts.
#[derive(Debug)]
pub(crate) struct Reach {
    pub(crate) name: Name,
    reached: AtomicUsize,
}

impl Reach {
    pub(crate) fn new(name: Name) -> Reach {
        Reach {
            name,
            reached: AtomicUsize::new(0),
        }
    }

    /// A TCP connection to one of the host's addresses, tried in turn from
    /// the one the last connect reached, each for its share of `budget` (at
    /// least [`MIN_CONNECT`]): an address that drops connects (a dead
    /// instance, a black-holed IPv6 route) does not take the whole budget.
    pub(crate) async fn connect(&self, budget: Duration) -> std::io::Result<TcpStream> {
        let addresses =
            self.name.addresses().await.map_err(|()| {
                std::io::Error::other(format!("{} has no address", self.name.host))
            })?;
        let n = addresses.len();
        let each = (budget / u32::try_from(n).unwrap_or(u32::MAX)).max(MIN_CONNECT);
        let start = self.reached.load(Relaxed);
        let mut last = std::io::Error::other("no address to connect to");
        for i in (0..n).map(|k| (start + k) % n) {
            let Some(addr) = addresses.get(i) else {
                continue;
            };
            match tokio::time::timeout(each, TcpStream::connect(addr)).await {
                Ok(Ok(t)) => {
                    self.reached.store(i, Relaxed);
                    let _ = t.set_nodelay(true);
                    return Ok(t);
                }
                Ok(Err(e)) => last = e,
                Err(_) => {
                    last = std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("connect to {addr} timed out"),
                    )
                }
            }
        }
        Err(last)
    }

    /// The address the last connect reached, as an index into the host's.
    #[cfg(test)]
    pub(crate) fn reached(&self) -> usize {
        self.reached.load(Relaxed)
    }
}

impl Name {
    /// `host` as written in a URL: an IPv6 address without its brackets.
    pub(crate) fn new(host: &str, port: u16) -> Name {
        Name::with_lookup(host, port, Arc::new(system))
    }

    pub(crate) fn with_lookup(host: &str, port: u16, lookup: LookupFn) -> Name {
        Name {
            host: host.to_owned(),
            port,
            literal: host.parse::<IpAddr>().ok().map(|ip| (ip, port).into()),
            lookup,
            state: Arc::default(),
            done: Arc::new(Notify::new()),
        }
    }

    /// The addresses to connect to, in the order the resolver gave them:
    /// the last ones found, starting a lookup when they are older than
    /// [`KEEP`]. Only when none were ever found does it wait for a lookup
    /// (the caller bounds the wait); a failed one is an error.
    pub(crate) async fn addresses(&self) -> Result<Arc<[SocketAddr]>, ()> {
        if let Some(a) = self.literal {
            return Ok(Arc::from([a]));
        }
        loop {
            // Registered before the state is read: a lookup that ends in
            // between still wakes this call.
            let ended = self.done.notified();
            {
                let mut st = lock(&self.state);
                let settled = st.until.is_some_and(|u| u > Instant::now());
                if !settled && !st.looking && st.running < MAX_RUNNING {
                    self.start(&mut st);
                }
                match &st.good {
                    Some(good) => return Ok(Arc::clone(good)),
                    // Failed, or too many stuck to start another.
                    None if settled || !st.looking => return Err(()),
                    None => {}
                }
            }
            ended.await;
        }
    }

    /// A lookup in a task of its own: a call that gives up waiting does not
    /// end it, and no other starts until it ends or is given up.
    fn start(&self, st: &mut State) {
        st.looking = true;
        st.generation += 1;
        st.running += 1;
        let generation = st.generation;
        let lookup = (self.lookup)(self.host.clone(), self.port);
        let running = Running(Arc::clone(&self.state));
        let (state, done) = (Arc::clone(&self.state), Arc::clone(&self.done));
        let host = self.host.clone();
        tokio::spawn(async move {
            let mut lookup = std::pin::pin!(lookup);
            let found = match tokio::time::timeout(STUCK, &mut lookup).await {
                Ok(found) => found,
                Err(_) => {
                    {
                        let mut st = lock(&state);
                        if st.generation == generation {
                            st.looking = false;
                            st.until = Some(Instant::now() + RETRY);
                        }
                    }
                    tracing::warn!(host = %host, "name lookup not ended after {STUCK:?}: given up");
                    done.notify_waiters();
                    lookup.await
                }
            };
            // Before the state is read again: a call woken below may start
            // the next lookup.
            drop(running);
            {
                let mut st = lock(&state);
                let now = Instant::now();
                let current = st.generation == generation;
                match found {
                    // Found, even late: the newest addresses known.
                    Ok(a) if !a.is_empty() => {
                        st.good = Some(Arc::from(a));
                        st.until = Some(now + KEEP);
                    }
                    // The last addresses found, if any, serve on.
                    _ if current => st.until = Some(now + RETRY),
                    _ => {}
                }
                if current {
                    st.looking = false;
                }
            }
            done.notify_waiters();
        });
    }
}

/// One lookup's task, counted in [`State::running`] until it ends or the
/// runtime drops it.
struct Running(Arc<Mutex<State>>);

impl Drop for Running {
    fn drop(&mut self) {
        let mut st = lock(&self.0);
        st.running = st.running.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};

    use super::*;

    /// A name service that takes a second to answer: its lookups so far,
    /// and whether it fails.
    #[derive(Clone, Default)]
    struct Slow {
        lookups: Arc<AtomicUsize>,
        failing: Arc<AtomicBool>,
    }

    impl Slow {
        /// Answers 192.0.2.<lookups so far> unless failing.
        fn lookup(&self) -> LookupFn {
            let s = self.clone();
            Arc::new(move |_, port| {
                let s = s.clone();
                async move {
                    let n = s.lookups.fetch_add(1, Relaxed) + 1;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    if s.failing.load(Relaxed) {
                        return Err(std::io::Error::other("no answer"));
                    }
                    let ip = std::net::Ipv4Addr::new(192, 0, 2, u8::try_from(n).unwrap_or(255));
                    Ok(vec![(ip, port).into()])
                }
                .boxed()
            })
        }
    }

    /// Takes a second to find nothing.
    fn nothing() -> LookupFn {
        Arc::new(|_, _| {
            async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                Ok(Vec::new())
            }
            .boxed()
        })
    }

    fn first(a: &Result<Arc<[SocketAddr]>, ()>) -> String {
        a.as_ref().map_or("none".into(), |a| a[0].to_string())
    }

    async fn lookup_ends() {
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }

    /// Calls that come while the first lookup is under way share it, even
    /// when the one that started it gave up; its answer serves for `KEEP`,
    /// then on while the next lookup runs, and when that one fails (tried
    /// again after `RETRY`).
    #[tokio::test(start_paused = true)]
    async fn one_lookup_at_a_time_serves_every_call() {
        let dns = Slow::default();
        let name = Arc::new(Name::with_lookup("auth.example", 9000, dns.lookup()));
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
        assert_eq!(dns.lookups.load(Relaxed), 1);
        // Kept: no lookup within `KEEP`.
        tokio::time::advance(KEEP - Duration::from_secs(2)).await;
        assert_eq!(first(&name.addresses().await), "192.0.2.1:9000");
        assert_eq!(dns.lookups.load(Relaxed), 1);
        // Past it, looked up again, the old addresses serving meanwhile.
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(first(&name.addresses().await), "192.0.2.1:9000");
        assert_eq!(first(&name.addresses().await), "192.0.2.1:9000");
        lookup_ends().await;
        assert_eq!(dns.lookups.load(Relaxed), 2);
        assert_eq!(first(&name.addresses().await), "192.0.2.2:9000");
        // The name service fails: the last addresses serve on ...
        dns.failing.store(true, Relaxed);
        tokio::time::advance(KEEP).await;
        assert_eq!(first(&name.addresses().await), "192.0.2.2:9000");
        lookup_ends().await;
        assert_eq!(first(&name.addresses().await), "192.0.2.2:9000");
        assert_eq!(dns.lookups.load(Relaxed), 3);
        // ... and it is asked again only after `RETRY`.
        tokio::time::advance(RETRY).await;
        dns.failing.store(false, Relaxed);
        assert_eq!(first(&name.addresses().await), "192.0.2.2:9000");
        lookup_ends().await;
        assert_eq!(first(&name.addresses().await), "192.0.2.4:9000");
        assert_eq!(dns.lookups.load(Relaxed), 4);
        // An address needs no lookup.
        let literal = Name::with_lookup("::1", 80, dns.lookup());
        assert_eq!(first(&literal.addresses().await), "[::1]:80");
        assert_eq!(dns.lookups.load(Relaxed), 4);
    }

    /// A name service whose lookups hang, while `hang` says so, until
    /// `release` lets them answer 192.0.2.<lookups so far>.
    #[derive(Clone)]
    struct Hung {
        lookups: Arc<AtomicUsize>,
        hang: Arc<AtomicBool>,
        release: Arc<tokio::sync::Semaphore>,
    }

    impl Hung {
        fn new() -> Hung {
            Hung {
                lookups: Arc::default(),
                hang: Arc::default(),
                release: Arc::new(tokio::sync::Semaphore::new(0)),
            }
        }

        fn lookup(&self) -> LookupFn {
            let s = self.clone();
            Arc::new(move |_, port| {
                let s = s.clone();
                async move {
                    let n = s.lookups.fetch_add(1, Relaxed) + 1;
                    if s.hang.load(Relaxed) {
                        s.release.acquire().await.expect("open").forget();
                    }
                    let ip = std::net::Ipv4Addr::new(192, 0, 2, u8::try_from(n).unwrap_or(255));
                    Ok(vec![(ip, port).into()])
                }
                .boxed()
            })
        }
    }

    /// Lets the tasks woken by the last `advance` run.
    async fn settle() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    /// A lookup that never ends is given up after `STUCK` and the next
    /// starts `RETRY` later, the last addresses serving meanwhile; once
    /// `MAX_RUNNING` lookups hang, no more start, however long it lasts. A
    /// late answer is taken, and lookups start again.
    #[tokio::test(start_paused = true)]
    async fn a_hung_lookup_is_given_up_and_hung_ones_are_bounded() {
        let dns = Hung::new();
        let lookups = || dns.lookups.load(Relaxed);
        let name = Name::with_lookup("auth.example", 9000, dns.lookup());
        assert_eq!(first(&name.addresses().await), "192.0.2.1:9000");
        dns.hang.store(true, Relaxed);
        tokio::time::advance(KEEP).await;
        assert_eq!(first(&name.addresses().await), "192.0.2.1:9000");
        settle().await;
        assert_eq!(lookups(), 2);
        // Not given up before `STUCK`: no other lookup starts.
        tokio::time::advance(STUCK - Duration::from_secs(1)).await;
        settle().await;
        assert_eq!(first(&name.addresses().await), "192.0.2.1:9000");
        assert_eq!(lookups(), 2);
        // Given up, then tried again after `RETRY`, twice more.
        for n in 3..=4 {
            tokio::time::advance(Duration::from_secs(1)).await;
            settle().await;
            assert_eq!(first(&name.addresses().await), "192.0.2.1:9000");
            assert_eq!(lookups(), n - 1, "none before RETRY");
            tokio::time::advance(RETRY).await;
            assert_eq!(first(&name.addresses().await), "192.0.2.1:9000");
            settle().await;
            assert_eq!(lookups(), n);
            tokio::time::advance(STUCK - Duration::from_secs(1)).await;
            settle().await;
        }
        // Three hang: no fourth, ever.
        for _ in 0..100 {
            tokio::time::advance(STUCK + RETRY).await;
            settle().await;
            assert_eq!(first(&name.addresses().await), "192.0.2.1:9000");
        }
        assert_eq!(lookups(), MAX_RUNNING + 1);
        // They answer at last: taken, and the next lookup starts on time.
        dns.hang.store(false, Relaxed);
        dns.release.add_permits(MAX_RUNNING);
        settle().await;
        let late = first(&name.addresses().await);
        assert!(
            ["192.0.2.2:9000", "192.0.2.3:9000", "192.0.2.4:9000"].contains(&late.as_str()),
            "{late}"
        );
        tokio::time::advance(KEEP).await;
        name.addresses().await.expect("addresses");
        settle().await;
        assert_eq!(first(&name.addresses().await), "192.0.2.5:9000");
    }

    /// A name never found while its lookups hang: each call waits at most
    /// `STUCK` and fails, and once `MAX_RUNNING` hang, calls fail at once.
    #[tokio::test(start_paused = true)]
    async fn calls_for_a_name_whose_lookups_hang_fail() {
        let dns = Hung::new();
        dns.hang.store(true, Relaxed);
        let name = Name::with_lookup("auth.example", 9000, dns.lookup());
        for n in 1..=MAX_RUNNING {
            let began = Instant::now();
            assert!(name.addresses().await.is_err());
            assert_eq!(began.elapsed(), STUCK);
            assert_eq!(dns.lookups.load(Relaxed), n);
            tokio::time::advance(RETRY).await;
        }
        let began = Instant::now();
        assert!(name.addresses().await.is_err());
        assert_eq!(began.elapsed(), Duration::ZERO);
        assert_eq!(dns.lookups.load(Relaxed), MAX_RUNNING);
    }

    /// A name that was never found fails once its lookup ends, and again
    /// without a lookup until `RETRY` has passed.
    #[tokio::test(start_paused = true)]
    async fn a_name_never_found_fails() {
        let name = Name::with_lookup("nowhere.example", 80, nothing());
        let began = Instant::now();
        assert!(name.addresses().await.is_err());
        assert_eq!(began.elapsed(), Duration::from_secs(1));
        assert!(name.addresses().await.is_err());
        assert_eq!(began.elapsed(), Duration::from_secs(1), "no second lookup");
        tokio::time::advance(RETRY).await;
        assert!(name.addresses().await.is_err());
        assert_eq!(began.elapsed(), Duration::from_secs(3));
    }
}

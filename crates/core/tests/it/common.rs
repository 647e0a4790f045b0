//! Helpers shared by the integration tests: weir servers built from TOML, small
//! backends on 127.0.0.1, and waits with deadlines.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket};
use weir_core::Server;

pub(crate) const DEADLINE: Duration = Duration::from_secs(10);

/// A test's scratch directory, emptied of what an earlier process with the
/// same PID left and removed when the test ends, however it ends.
pub(crate) struct Scratch(PathBuf);

impl Scratch {
    pub(crate) fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("weir-core-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        Scratch(dir)
    }
}

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub(crate) async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    match tokio::time::timeout(DEADLINE, f).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: no result within {DEADLINE:?}"),
    }
}

pub(crate) async fn start(toml: &str) -> Arc<Server> {
    let config = weir_config::load_str(toml).unwrap_or_else(|e| panic!("config:\n{e}\n{toml}"));
    within("start", Server::start(&config))
        .await
        .expect("server starts")
}

pub(crate) fn addr(server: &Server, listener: &str) -> SocketAddr {
    server.local_addrs(listener)[0]
}

/// A backend that writes its name to every connection and closes it.
pub(crate) async fn named_backend(name: &'static str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let a = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let _ = s.write_all(name.as_bytes()).await;
            });
        }
    });
    a
}

/// A backend that echoes until EOF, then shuts down its write half.
pub(crate) async fn echo_backend() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let a = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.into_split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    a
}

/// A backend that never writes: it reads and discards until EOF, then closes.
/// Counts the connections it accepted.
pub(crate) async fn silent_backend() -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let a = l.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut sink = tokio::io::sink();
                let _ = tokio::io::copy(&mut s, &mut sink).await;
            });
        }
    });
    (a, accepted)
}

/// An address where nothing listens: connects to it are refused.
pub(crate) fn refused_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

/// Connects (optionally from a given loopback source) and reads to EOF.
pub(crate) async fn fetch(to: SocketAddr, from: Option<IpAddr>) -> String {
    let socket = TcpSocket::new_v4().expect("socket");
    if let Some(ip) = from {
        socket.bind(SocketAddr::new(ip, 0)).expect("bind source");
    }
    let mut s = socket.connect(to).await.expect("connect");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    out
}

pub(crate) async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    within(what, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

pub(crate) fn pool_toml(balance: &str, backends: &[(&str, SocketAddr, u32)]) -> String {
    let mut t = format!(
        "[[listeners]]\nname = \"l\"\nbind = [\"127.0.0.1:0\"]\n[[listeners.routes]]\nname = \"r\"\npool = \"p\"\n\
         [[pools]]\nname = \"p\"\nbalance = \"{balance}\"\nconnect_timeout = \"500ms\"\n"
    );
    for (name, a, w) in backends {
        t.push_str(&format!(
            "[[pools.backends]]\nname = \"{name}\"\naddress = \"{a}\"\nweight = {w}\n"
        ));
    }
    t
}

//! `weir demo`: three small HTTP backends on loopback, a weir listener in front of
//! them (smooth weighted round robin, weights 2:1:1), and the admin endpoint. The
//! proxy config is ordinary TOML run through the same loader as `weir run`.

use std::fmt::Write as _;
use std::net::SocketAddr;

use anyhow::{Context, Result};
use axum::Router;
use axum::routing::get;

const BACKENDS: [(&str, u32); 3] = [("demo-a", 2), ("demo-b", 1), ("demo-c", 1)];

pub(crate) fn run(listen: SocketAddr, admin: SocketAddr, grpc: SocketAddr) -> Result<()> {
    let runtime = crate::build_runtime(0)?;
    runtime.block_on(async move {
        let mut backend_addrs = Vec::new();
        for (name, _) in BACKENDS {
            backend_addrs.push(start_backend(name).await?);
        }
        let toml = demo_config(listen, admin, grpc, &backend_addrs);
        let config = weir_config::load_str(&toml)
            .map_err(|e| anyhow::anyhow!("demo configuration is invalid:\n{e}"))?;
        crate::init_logging(&config.log)?;
        crate::serve(config, None, |server, admin_addr| {
            // With port 0 the kernel chose: show the address actually bound.
            let listen = server.local_addrs("web").first().copied().unwrap_or(listen);
            let mut out = String::new();
            let _ = writeln!(out, "\nweir demo is running. The configuration it runs:\n\n{toml}");
            let _ = writeln!(out, "Proxy: http://{listen}/");
            let _ = writeln!(out, "Try:");
            let _ = writeln!(out, "  curl -s http://{listen}/            # answered by demo-a, demo-b, demo-c in turn (2:1:1)");
            let _ = writeln!(out, "  for i in $(seq 8); do curl -s http://{listen}/; done");
            if let Some(a) = admin_addr {
                let _ = writeln!(out, "  curl -s http://{a}/healthz        # liveness");
                let _ = writeln!(out, "  curl -s http://{a}/readyz         # readiness");
                let _ = writeln!(out, "  curl -s http://{a}/metrics        # Prometheus metrics");
            }
            let _ = writeln!(out, "Steer it (from another terminal):");
            let _ = writeln!(out, "  weir status --admin {grpc}");
            let _ = writeln!(out, "  weir backends --admin {grpc}");
            let _ = writeln!(out, "  weir backend drain demo demo-a --admin {grpc}    # then curl again: no more demo-a");
            let _ = writeln!(out, "  weir backend history demo demo-a --admin {grpc}");
            let _ = writeln!(out, "  weir watch --admin {grpc}");
            let _ = writeln!(out, "(with `cargo run --release --` in place of `weir` from the source tree)");
            let _ = writeln!(out, "\nEach proxied connection writes one access-log line below. Ctrl-C stops.\n");
            #[allow(clippy::print_stdout)]
            {
                print!("{out}");
            }
        })
        .await
        .with_context(|| format!("is {listen}, {admin} or {grpc} already in use? choose others with --listen / --admin / --grpc"))
    })
}

fn demo_config(
    listen: SocketAddr,
    admin: SocketAddr,
    grpc: SocketAddr,
    backends: &[SocketAddr],
) -> String {
    let mut t = format!(
        "[admin]\nhttp = \"{admin}\"\ngrpc = \"{grpc}\"\n\n[runtime]\nworker_threads = 1\n\n\
         [[listeners]]\nname = \"web\"\nbind = [\"{listen}\"]\nidle_timeout = \"30s\"\nshutdown_timeout = \"2s\"\n\n\
         [[listeners.routes]]\nname = \"all\"\npool = \"demo\"\n\n\
         [[pools]]\nname = \"demo\"\nbalance = \"round_robin\"\nconnect_timeout = \"1s\"\n"
    );
    for ((name, weight), addr) in BACKENDS.iter().zip(backends) {
        let _ = write!(
            t,
            "\n[[pools.backends]]\nname = \"{name}\"\naddress = \"{addr}\"\nweight = {weight}\n"
        );
    }
    t
}

/// A demo backend: answers every request with its own name.
async fn start_backend(name: &'static str) -> Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot start a demo backend")?;
    let addr = listener.local_addr()?;
    let app = Router::new().fallback(get(move || async move {
        format!("hello from {name} ({addr})\n")
    }));
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(backend = name, error = %e, "demo backend failed");
        }
    });
    Ok(addr)
}

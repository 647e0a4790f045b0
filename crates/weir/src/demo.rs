//! `weir demo`: three small HTTP backends on loopback, a weir listener in front of
//! them (smooth weighted round robin, weights 2:1:1, HTTP health checks), and the
//! admin endpoints. Each backend's health endpoint can be made to fail and
//! recover, so a failover can be watched as it happens. The proxy config is
//! ordinary TOML run through the same loader as `weir run`.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use axum::Router;
use axum::http::StatusCode;
use axum::routing::{get, post};

const BACKENDS: [(&str, u32); 3] = [("demo-a", 2), ("demo-b", 1), ("demo-c", 1)];

/// What `weir demo` is told on its command line.
#[derive(Debug)]
pub(crate) struct Demo {
    pub(crate) listen: SocketAddr,
    pub(crate) admin: SocketAddr,
    pub(crate) grpc: SocketAddr,
    pub(crate) show_config: bool,
}

pub(crate) fn run(demo: &Demo) -> Result<()> {
    let runtime = crate::build_runtime(weir_config::cpus())?;
    runtime.block_on(async move {
        let mut backends = Vec::new();
        for (name, _) in BACKENDS {
            backends.push(start_backend(name).await?);
        }
        let toml = demo_config(demo, &backends);
        let config = weir_config::load_str(&toml)
            .map_err(|e| anyhow::anyhow!("demo configuration is invalid:\n{e}"))?;
        let log = crate::init_logging(&config.log)?;
        let takeover = crate::Takeover::Refuse {
            hint: "Stop it, or choose other addresses with --listen, --admin and --grpc",
        };
        let served = crate::serve(
            config,
            None,
            takeover,
            weir_core::Inherited::default(),
            Some(Arc::clone(log.stats())),
            |server, admin| {
                // With port 0 the kernel chose: show the addresses actually bound.
                let listen = server
                    .local_addrs("web")
                    .first()
                    .copied()
                    .unwrap_or(demo.listen);
                let grpc = admin.grpc.unwrap_or(demo.grpc);
                let text = instructions(demo, &toml, (listen, admin.http, grpc), &backends);
                #[allow(clippy::print_stdout)]
                {
                    print!("{text}");
                }
            },
        )
        .await;
        log.flush(crate::LOG_FLUSH);
        served
    })
}

/// What the demo prints once it serves.
fn instructions(
    demo: &Demo,
    toml: &str,
    (listen, admin, grpc): (SocketAddr, Option<SocketAddr>, SocketAddr),
    backends: &[SocketAddr],
) -> String {
    let mut out = String::new();
    if demo.show_config {
        let _ = writeln!(out, "\nThe configuration it runs:\n\n{toml}");
    }
    let _ = writeln!(out, "\nweir demo is running.\n\nProxy: http://{listen}/");
    let _ = writeln!(out, "Try:");
    let _ = writeln!(
        out,
        "  curl -s http://{listen}/            # answered by demo-a, demo-b, demo-c in turn (2:1:1)"
    );
    let _ = writeln!(
        out,
        "  for i in $(seq 8); do curl -s http://{listen}/; done"
    );
    if let Some(a) = admin {
        let _ = writeln!(
            out,
            "  curl -s http://{a}/metrics        # Prometheus metrics"
        );
        let _ = writeln!(out, "  curl -s http://{a}/readyz         # readiness");
        let _ = writeln!(out, "  curl -s http://{a}/api/v1/pools   # the JSON API");
        let _ = writeln!(
            out,
            "\nStatus page (live; drain, enable, disable and re-weight backends): http://{a}/"
        );
    }
    let _ = writeln!(
        out,
        "\nSee and steer it from another terminal (`weir` is `cargo run --release --` in the source tree):"
    );
    let _ = writeln!(
        out,
        "  weir watch --admin {grpc}         # every change as it happens"
    );
    let _ = writeln!(
        out,
        "  weir backends --admin {grpc}      # health, state, weights, connections"
    );
    let _ = writeln!(out, "  weir status --admin {grpc}");
    if let Some(b) = backends.get(1) {
        let _ = writeln!(
            out,
            "\nWatch a failover: make demo-b's health check fail, then recover:"
        );
        let _ = writeln!(
            out,
            "  curl -s -X POST http://{b}/fail      # demo-b goes down after 2 failed probes; curl the proxy: no more demo-b"
        );
        let _ = writeln!(
            out,
            "  curl -s -X POST http://{b}/recover   # demo-b comes back after 2 passing probes"
        );
        let _ = writeln!(
            out,
            "  weir backend history demo demo-b --admin {grpc}   # what happened, and why"
        );
    }
    let _ = writeln!(out, "\nDrain a backend (no new connections), then undo it:");
    let _ = writeln!(out, "  weir backend drain demo demo-a --admin {grpc}");
    let _ = writeln!(out, "  weir backend enable demo demo-a --admin {grpc}");
    if !demo.show_config {
        let _ = writeln!(
            out,
            "\n(`weir demo --show-config` prints the configuration it runs.)"
        );
    }
    let _ = writeln!(
        out,
        "\nEach proxied connection writes one access-log line below. Ctrl-C stops.\n"
    );
    out
}

fn demo_config(demo: &Demo, backends: &[SocketAddr]) -> String {
    let (listen, admin, grpc) = (demo.listen, demo.admin, demo.grpc);
    let mut t = format!(
        "[admin]\nhttp = \"{admin}\"\ngrpc = \"{grpc}\"\n\n[runtime]\nworker_threads = 1\n\n\
         [[listeners]]\nname = \"web\"\nbind = [\"{listen}\"]\nidle_timeout = \"30s\"\nshutdown_timeout = \"2s\"\n\n\
         [[listeners.routes]]\nname = \"all\"\npool = \"demo\"\n\n\
         [[pools]]\nname = \"demo\"\nbalance = \"round_robin\"\nconnect_timeout = \"1s\"\n\n\
         [pools.health]\ntype = \"http\"\npath = \"/healthz\"\ninterval = \"1s\"\ntimeout = \"500ms\"\nrise = 2\nfall = 2\n"
    );
    for ((name, weight), addr) in BACKENDS.iter().zip(backends) {
        let _ = write!(
            t,
            "\n[[pools.backends]]\nname = \"{name}\"\naddress = \"{addr}\"\nweight = {weight}\n"
        );
    }
    t
}

/// A demo backend: answers every request with its own name, and its health
/// check at `/healthz` with 200, or 503 after `POST /fail` until `POST /recover`.
async fn start_backend(name: &'static str) -> Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot start a demo backend")?;
    let addr = listener.local_addr()?;
    let failing = Arc::new(AtomicBool::new(false));
    let (fail, recover, health) = (
        Arc::clone(&failing),
        Arc::clone(&failing),
        Arc::clone(&failing),
    );
    let app = Router::new()
        .route(
            "/healthz",
            get(move || async move {
                if health.load(Ordering::Relaxed) {
                    (StatusCode::SERVICE_UNAVAILABLE, "failing\n")
                } else {
                    (StatusCode::OK, "ok\n")
                }
            }),
        )
        .route(
            "/fail",
            post(move || async move {
                fail.store(true, Ordering::Relaxed);
                format!("{name}: health check now fails\n")
            }),
        )
        .route(
            "/recover",
            post(move || async move {
                recover.store(false, Ordering::Relaxed);
                format!("{name}: health check passes again\n")
            }),
        )
        .fallback(get(move || async move {
            format!("hello from {name} ({addr})\n")
        }));
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(backend = name, error = %e, "demo backend failed");
        }
    });
    Ok(addr)
}

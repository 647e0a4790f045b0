//! What the firewall costs a connection: a lookup in a 100,000-entry list,
//! and a new client in a full per-client table under a flood of distinct
//! sources. Run with `cargo bench -p weir-core --bench firewall`; prints
//! nanoseconds per operation (median of 5 runs) and the memory it holds.

#![allow(clippy::print_stdout)] // a benchmark prints its figures

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use weir_config::PerClient;
use weir_core::firewall::{AddrSet, ClientTable};

const ENTRIES: usize = 100_000;
const LOOKUPS: usize = 2_000_000;

fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn median(mut runs: Vec<Duration>) -> Duration {
    runs.sort();
    runs[runs.len() / 2]
}

fn per_op(d: Duration, ops: usize) -> f64 {
    d.as_nanos() as f64 / ops as f64
}

fn main() {
    let mut rng = fastrand::Rng::with_seed(42);
    // A blocklist as they come: mostly single IPv4 hosts, some /24s, some
    // IPv6 /64s and hosts.
    let nets: Vec<IpNet> = (0..ENTRIES)
        .map(|i| match i % 10 {
            0..=6 => IpNet::new(IpAddr::V4(Ipv4Addr::from(rng.u32(..))), 32),
            7 => IpNet::new(IpAddr::V4(Ipv4Addr::from(rng.u32(..))), 24),
            8 => IpNet::new(IpAddr::V6(Ipv6Addr::from(rng.u128(..))), 64),
            _ => IpNet::new(IpAddr::V6(Ipv6Addr::from(rng.u128(..))), 128),
        })
        .map(|n| n.expect("prefix").trunc())
        .collect();
    let began = Instant::now();
    let set = AddrSet::new(&nets);
    let built = began.elapsed();
    let (v4, v6) = set.ranges();
    let bytes = v4 * 8 + v6 * 32;
    println!(
        "list of {ENTRIES} entries: built in {:.1} ms, {v4} IPv4 + {v6} IPv6 ranges, {:.2} MB",
        built.as_secs_f64() * 1e3,
        bytes as f64 / 1e6
    );

    // Lookups: half from the list (hits), half random (mostly misses).
    let probes: Vec<IpAddr> = (0..4096)
        .map(|i| match (i % 2, nets[rng.usize(..ENTRIES)]) {
            (0, IpNet::V4(n)) => IpAddr::V4(n.network()),
            (0, IpNet::V6(n)) => IpAddr::V6(n.network()),
            _ if i % 4 == 1 => IpAddr::V4(Ipv4Addr::from(rng.u32(..))),
            _ => IpAddr::V6(Ipv6Addr::from(rng.u128(..))),
        })
        .collect();
    let runs = (0..5)
        .map(|_| {
            let t = Instant::now();
            let mut hits = 0usize;
            for i in 0..LOOKUPS {
                hits += usize::from(set.contains(black_box(probes[i & 4095])));
            }
            black_box(hits);
            t.elapsed()
        })
        .collect();
    println!(
        "lookup in the list: {:.0} ns",
        per_op(median(runs), LOOKUPS)
    );

    // A flood of distinct sources through a full table of 100,000 clients.
    let limits = PerClient {
        rate: Some(20),
        burst: 40,
        concurrent: Some(100),
        requests: None,
        requests_burst: 1,
        ipv4_prefix: 32,
        ipv6_prefix: 64,
        max_tracked: 100_000,
    };
    let rss_before = rss_kb();
    let table = ClientTable::new(&limits);
    let now = Instant::now();
    for i in 0..100_000u32 {
        let _ = table.connect(IpAddr::V4(Ipv4Addr::from(i)), &limits, now);
    }
    println!(
        "per-client table of {} clients: {} bytes per client (VmRSS growth)",
        table.tracked(),
        (rss_kb().saturating_sub(rss_before)) * 1024 / table.tracked().max(1) as u64
    );
    let flood = 1_000_000u32;
    let runs = (0..5u32)
        .map(|r| {
            let t = Instant::now();
            for i in 0..flood {
                let ip = IpAddr::V4(Ipv4Addr::from(0x0100_0000 + r * flood + i));
                let _ = black_box(table.connect(ip, &limits, now));
            }
            t.elapsed()
        })
        .collect();
    println!(
        "new client in a full table of {} (evicting the oldest): {:.0} ns; {} evicted",
        table.tracked(),
        per_op(median(runs), flood as usize),
        table.evicted()
    );
    // A known client, the common case.
    let runs = (0..5)
        .map(|_| {
            let t = Instant::now();
            for i in 0..LOOKUPS {
                let ip = IpAddr::V4(Ipv4Addr::from(0x0100_0000 + 4 * flood + (i as u32 & 1023)));
                let _ = black_box(table.connect(ip, &limits, now));
            }
            t.elapsed()
        })
        .collect();
    println!("known client: {:.0} ns", per_op(median(runs), LOOKUPS));
}

//! How many file descriptors a configuration may need at its busiest, so that
//! weir can say at start when its limit (`RLIMIT_NOFILE`, `LimitNOFILE`,
//! `ulimit -n`) is too low for what it was told to carry.

use weir_config::Config;

/// Pipes kept per worker thread for splice(2) (two descriptors each); see
/// `tcp::relay::buffers`.
pub(crate) const PIPES_PER_THREAD: usize = 32;

/// Descriptors of the process itself: stdio, the epoll instance and its
/// wakers, the state file and its journal, the resolver, signals.
const BASE: u64 = 64;

/// The descriptors `config` may hold at once with `workers` worker threads:
///
/// - per client connection, 2 (the client's socket and the backend's), and
///   with `zero_copy = true` up to 4 more (a pipe per direction while a bulk
///   chunk waits for its destination), up to each listener's `max_connections`;
/// - per UDP flow, 1 (its socket towards the backend), up to `max_flows`;
/// - one per listening socket;
/// - per admin endpoint, one per connection up to `admin.max_connections`,
///   and its listening socket;
/// - one per probe in flight (at most one per probed backend);
/// - the pipes a worker thread keeps for reuse (zero-copy only);
/// - a fixed 64 for the process itself.
pub fn needed(config: &Config, workers: usize) -> u64 {
    // Zero-copy: each direction may hold a pipe (two descriptors) while
    // its chunk waits for a full destination.
    let per_connection: u64 = if config.runtime.zero_copy { 6 } else { 2 };
    let connections: u64 = config
        .listeners
        .iter()
        .map(|l| {
            let open = match l.udp {
                // A flow holds one socket: its own towards the backend.
                Some(udp) => u64::from(udp.max_flows),
                None => u64::from(l.max_connections) * per_connection,
            };
            open + l.bind.len() as u64
        })
        .sum();
    let admin_endpoints =
        u64::from(config.admin.http.is_some()) + u64::from(config.admin.grpc.is_some());
    let admin = admin_endpoints * (u64::from(config.admin.max_connections) + 1);
    let probed: u64 = config
        .pools
        .iter()
        .filter(|p| !matches!(p.health.check, weir_config::Check::None))
        .map(|p| p.backends.iter().filter(|b| b.health).count() as u64)
        .sum();
    let pipes = if config.runtime.zero_copy {
        2 * (PIPES_PER_THREAD * workers.max(1)) as u64
    } else {
        0
    };
    connections + admin + probed + pipes + BASE
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str, zero_copy: bool) -> Config {
        weir_config::load_str(&format!(
            "[admin]\nhttp = \"127.0.0.1:9900\"\nmax_connections = 10\n\
             [runtime]\nzero_copy = {zero_copy}\n{extra}\n\
             [[listeners]]\nname = \"l\"\nbind = [\"127.0.0.1:7000\", \"[::1]:7000\"]\nmax_connections = 1000\n\
             [[listeners.routes]]\nname = \"r\"\npool = \"p\"\n\
             [[pools]]\nname = \"p\"\n[pools.health]\ntype = \"tcp\"\n\
             [[pools.backends]]\naddress = \"127.0.0.1:9000\"\n\
             [[pools.backends]]\naddress = \"127.0.0.1:9001\"\nhealth = false\n"
        ))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn two_per_connection_six_with_zero_copy() {
        // 2 x 1000 + 2 binds + (10 + 1) admin + 1 probe + 64.
        assert_eq!(needed(&config("", false), 2), 2000 + 2 + 11 + 1 + 64);
        // 6 x 1000 + 2 + 11 + 1 + 2 x 32 pipes x 2 threads + 64.
        assert_eq!(needed(&config("", true), 2), 6000 + 2 + 11 + 1 + 128 + 64);
    }
}

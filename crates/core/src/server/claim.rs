//! An address this process serves, claimed against other weirs.
//!
//! Listening sockets use SO_REUSEPORT (an upgrade binds beside the running
//! process) and listen only after the first probe round, so a second weir
//! started meanwhile finds the port free by any test the kernel offers and
//! binds beside the first: the two would split the traffic silently. Each
//! address served is therefore also claimed by name in the abstract Unix
//! socket namespace (`weir:tcp:127.0.0.1:80`), which belongs to the network
//! namespace like the ports do and is released by the kernel when the
//! holder closes it or dies. A start (or reload) that cannot claim an
//! address it binds fails; one taking over (`weir run --upgrade`) serves
//! beside the holder and claims the address once the holder lets it go.

use std::io;
use std::net::SocketAddr;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// How often a process taking over asks for an address its predecessor
/// still holds.
const RETRY: Duration = Duration::from_millis(250);

/// The claim of one address, held while it is open.
#[derive(Debug)]
pub(super) struct Claim {
    _socket: UnixDatagram,
}

/// The abstract socket name of `addr` (a listener's TCP or UDP address).
pub(super) fn name(addr: SocketAddr, udp: bool) -> String {
    let protocol = if udp { "udp" } else { "tcp" };
    format!("weir:{protocol}:{addr}")
}

/// Claims `addr`: `Ok(None)` when another process holds it.
pub(super) fn claim(addr: SocketAddr, udp: bool) -> io::Result<Option<Claim>> {
    let name = std::os::unix::net::SocketAddr::from_abstract_name(name(addr, udp))?;
    match UnixDatagram::bind_addr(&name) {
        Ok(socket) => Ok(Some(Claim { _socket: socket })),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => Ok(None),
        Err(e) => Err(e),
    }
}

/// Holds `claim` until `stop` (the socket stops accepting); without one
/// (taking over from the process that holds it), claims the address as soon
/// as that process lets it go.
pub(super) async fn hold(
    addr: SocketAddr,
    udp: bool,
    claim: Option<Claim>,
    stop: CancellationToken,
) {
    let _claim = match claim {
        Some(c) => c,
        None => loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(RETRY) => {}
            }
            match self::claim(addr, udp) {
                Ok(Some(c)) => {
                    tracing::debug!(%addr, "the address is claimed: the previous process let it go");
                    break c;
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(%addr, error = %e, "cannot claim the address");
                    return;
                }
            }
        },
    };
    stop.cancelled().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("addr")
    }

    /// An address of this test process alone (the names are shared by
    /// every process of the network namespace), which no weir serves.
    fn ours(n: u16) -> SocketAddr {
        let pid = std::process::id().to_be_bytes();
        SocketAddr::from(([127, 254, pid[2], pid[3]], n))
    }

    #[test]
    fn an_address_is_claimed_once_until_let_go() {
        // A port no other test of this process claims.
        let a = ours(1);
        let first = claim(a, false).expect("claim").expect("free");
        assert!(claim(a, false).expect("claim").is_none(), "held");
        // UDP and TCP on one address, and another address, are apart.
        let udp = claim(a, true).expect("claim").expect("udp is apart");
        let other = claim(ours(2), false).expect("claim").expect("apart");
        drop(first);
        assert!(claim(a, false).expect("claim").is_some(), "let go");
        drop((udp, other));
    }

    #[tokio::test]
    async fn one_taking_over_claims_once_the_holder_lets_go() {
        let a = ours(3);
        let holder = claim(a, false).expect("claim").expect("free");
        let stop = CancellationToken::new();
        let task = tokio::spawn(hold(a, false, None, stop.clone()));
        tokio::time::sleep(RETRY * 2).await;
        assert!(claim(a, false).expect("claim").is_none());
        drop(holder);
        // Within a few retries the waiting one holds it.
        let end = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            tokio::time::sleep(RETRY).await;
            match claim(a, false).expect("claim") {
                None => break,
                // Free for a moment: let it go again for the waiting one.
                Some(c) => drop(c),
            }
            assert!(tokio::time::Instant::now() < end, "never claimed");
        }
        stop.cancel();
        task.await.expect("ends");
        assert!(claim(a, false).expect("claim").is_some(), "let go at stop");
    }

    #[test]
    fn names_say_protocol_and_address() {
        assert_eq!(name(addr("127.0.0.1:80"), false), "weir:tcp:127.0.0.1:80");
        assert_eq!(name(addr("[::]:53"), true), "weir:udp:[::]:53");
    }
}

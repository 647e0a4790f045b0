//! The probes of datagram services: a DNS query (`type = "dns"`) and a
//! datagram with its expected answer (`type = "udp"`), each over a socket
//! connected to the backend, so an ICMP port unreachable comes back as
//! `refused`. The whole probe is bounded by the check's `timeout` (see
//! `Prober::run`); an answer that is not to this probe (another id, another
//! sender) is ignored while the time lasts.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::net::UdpSocket;
use weir_config::{DnsCheck, UdpCheck};
use weir_wire::dns;

use crate::Reason;
use crate::health::Report;

/// The largest answer read: a DNS answer over UDP with EDNS, or any datagram.
const ANSWER: usize = 65_536;

async fn socket(addr: SocketAddr) -> Result<UdpSocket, Report> {
    let any = if addr.is_ipv4() {
        SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0)
    } else {
        SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), 0)
    };
    let s = UdpSocket::bind(any).await.map_err(|e| failure(&e))?;
    s.connect(addr).await.map_err(|e| failure(&e))?;
    Ok(s)
}

fn failure(e: &io::Error) -> Report {
    match Reason::from_connect_io(e) {
        Reason::Refused => Report::failed(Reason::Refused, "port unreachable"),
        other => Report::failed(other, format!("udp: {e}")),
    }
}

/// A `dns` probe: a recursive query for `check.name`, passed when the
/// answer has the expected response code.
pub(super) async fn dns(addr: SocketAddr, check: &DnsCheck) -> Report {
    let id = fastrand::u16(..);
    let query = match dns::query(id, &check.name, check.qtype) {
        Ok(q) => q,
        Err(e) => return Report::failed(Reason::Protocol, e.to_string()),
    };
    let s = match socket(addr).await {
        Ok(s) => s,
        Err(report) => return report,
    };
    if let Err(e) = s.send(&query).await {
        return failure(&e);
    }
    let mut buf = vec![0u8; ANSWER];
    loop {
        let n = match s.recv(&mut buf).await {
            Ok(n) => n,
            Err(e) => return failure(&e),
        };
        let bytes = buf.get(..n).unwrap_or_default();
        match dns::answer(bytes, id, &check.name, check.qtype) {
            Ok(a) if a.rcode == check.rcode => {
                return Report::passed(format!(
                    "{} ({} records)",
                    dns::rcode_name(a.rcode),
                    a.records
                ));
            }
            Ok(a) => {
                return Report::failed(
                    Reason::Status,
                    format!(
                        "rcode {}, expected {}",
                        dns::rcode_name(a.rcode),
                        dns::rcode_name(check.rcode)
                    ),
                );
            }
            // A late answer to an earlier probe, or a stray datagram.
            Err(dns::DnsError::OtherId { .. }) => {}
            Err(e) => return Report::failed(Reason::Protocol, e.to_string()),
        }
    }
}

/// A `udp` probe: `check.send`, passed by an answer containing
/// `check.expect` (any answer without it).
pub(super) async fn udp(addr: SocketAddr, check: &UdpCheck) -> Report {
    let s = match socket(addr).await {
        Ok(s) => s,
        Err(report) => return report,
    };
    if let Err(e) = s.send(&check.send).await {
        return failure(&e);
    }
    let mut buf = vec![0u8; ANSWER];
    let n = match s.recv(&mut buf).await {
        Ok(n) => n,
        Err(e) => return failure(&e),
    };
    let answer = buf.get(..n).unwrap_or_default();
    match &check.expect {
        Some(want) if !contains(answer, want) => Report::failed(
            Reason::Body,
            format!("the answer ({n} bytes) does not contain the expected bytes"),
        ),
        _ => Report::passed(format!("answered ({n} bytes)")),
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

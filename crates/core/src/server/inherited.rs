//! Listening sockets weir did not bind itself: those systemd passes to a
//! socket-activated service (`LISTEN_FDS`, named by `FileDescriptorName=`).
//! A listener whose name is one of theirs serves on them instead of binding
//! its `bind` addresses, which must be the sockets' own. The sockets stay
//! open in the supervisor between two weir processes, so a restart queues new
//! connections rather than refusing them.
//!
//! Reading the environment is the binary's business (it must happen before
//! any thread starts); this is what the server does with the sockets.

use std::io;
use std::net::SocketAddr;

/// A passed socket: a TCP listening socket or a UDP socket.
#[derive(Debug)]
pub enum PassedSocket {
    Tcp(std::net::TcpListener),
    Udp(std::net::UdpSocket),
}

/// One passed socket with its name and address.
#[derive(Debug)]
struct Passed {
    name: String,
    local: SocketAddr,
    socket: PassedSocket,
}

/// Every passed socket, kept for the process's life: a reload that keeps (or
/// brings back) a listener serves on the same sockets again.
#[derive(Debug, Default)]
pub struct Inherited(Vec<Passed>);

impl Inherited {
    /// Takes `sockets` (name, socket), made non-blocking as weir's own are.
    pub fn new(sockets: Vec<(String, PassedSocket)>) -> io::Result<Inherited> {
        let mut passed = Vec::with_capacity(sockets.len());
        for (name, socket) in sockets {
            let local = match &socket {
                PassedSocket::Tcp(s) => {
                    s.set_nonblocking(true)?;
                    // Accepted sockets inherit it, as from weir's own bind.
                    socket2::SockRef::from(s).set_tcp_nodelay(true)?;
                    s.local_addr()?
                }
                PassedSocket::Udp(s) => {
                    s.set_nonblocking(true)?;
                    s.local_addr()?
                }
            };
            passed.push(Passed {
                name,
                local,
                socket,
            });
        }
        Ok(Inherited(passed))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// (name, address, udp) of every passed socket, for logs and checks.
    pub fn sockets(&self) -> impl Iterator<Item = (&str, SocketAddr, bool)> {
        self.0.iter().map(|p| {
            (
                p.name.as_str(),
                p.local,
                matches!(p.socket, PassedSocket::Udp(_)),
            )
        })
    }

    /// True when a passed socket serves `listener`: weir does not bind its
    /// addresses itself.
    pub fn serves(&self, listener: &str) -> bool {
        self.0.iter().any(|p| p.name == listener)
    }

    /// Refuses names no listener of `config` has: a typo in
    /// `FileDescriptorName=`, or the socket unit's default name.
    pub fn check_names(&self, config: &weir_config::Config) -> Result<(), super::StartError> {
        let mut names: Vec<String> = self
            .0
            .iter()
            .map(|p| p.name.as_str())
            .filter(|n| !config.listeners.iter().any(|l| l.name == *n))
            .map(|n| format!("{n:?}"))
            .collect();
        names.dedup();
        if names.is_empty() {
            Ok(())
        } else {
            Err(super::StartError::UnknownSockets(names.join(", ")))
        }
    }

    /// A copy of the socket passed for `listener` at `addr`, or why there is
    /// none: every bind address of a listener served by passed sockets must be
    /// one of them, and every one of them a bind address.
    pub(super) fn take(
        &self,
        listener: &weir_config::Listener,
        addr: SocketAddr,
    ) -> Result<super::sockets::Unstarted, String> {
        let udp = listener.udp.is_some();
        let mine = || self.0.iter().filter(|p| p.name == listener.name);
        let list = |udp_too: bool| {
            mine()
                .map(|p| match (&p.socket, udp_too) {
                    (PassedSocket::Udp(_), true) => format!("{} (udp)", p.local),
                    _ => p.local.to_string(),
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        let found = mine().find(|p| p.local == addr);
        let copy = match found.map(|p| &p.socket) {
            Some(PassedSocket::Tcp(s)) if !udp => s.try_clone().map(super::sockets::Unstarted::Tcp),
            Some(PassedSocket::Udp(s)) if udp => s.try_clone().map(super::sockets::Unstarted::Udp),
            Some(_) => {
                return Err(format!(
                    "systemd passed a {} socket on {addr}, and this is a {} listener",
                    if udp { "TCP" } else { "UDP" },
                    if udp { "UDP" } else { "TCP" },
                ));
            }
            None => {
                return Err(format!(
                    "systemd passed sockets named {:?} on {}, none on {addr}: list the same \
                     addresses in `bind` as in the socket unit",
                    listener.name,
                    list(true)
                ));
            }
        };
        copy.map_err(|e| format!("cannot use the socket systemd passed on {addr}: {e}"))
    }

    /// The passed sockets of `listener` that none of its bind addresses names.
    pub(super) fn left_over(&self, listener: &weir_config::Listener) -> Vec<SocketAddr> {
        self.0
            .iter()
            .filter(|p| p.name == listener.name && !listener.bind.contains(&p.local))
            .map(|p| p.local)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener(bind: &str, udp: bool) -> weir_config::Listener {
        let protocol = if udp { "protocol = \"udp\"\n" } else { "" };
        let cfg = weir_config::load_str(&format!(
            "[[listeners]]\nname = \"web\"\n{protocol}bind = {bind}\n[[listeners.routes]]\n\
             name = \"r\"\npool = \"p\"\n[[pools]]\nname = \"p\"\n[[pools.backends]]\n\
             address = \"127.0.0.1:9\"\n"
        ))
        .expect("config");
        cfg.listeners[0].clone()
    }

    #[test]
    fn passed_sockets_must_be_the_bind_addresses() {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let (t, u) = (tcp.local_addr().expect("a"), udp.local_addr().expect("a"));
        let passed = Inherited::new(vec![
            ("web".into(), PassedSocket::Tcp(tcp)),
            ("dns".into(), PassedSocket::Udp(udp)),
        ])
        .expect("passed");
        assert!(passed.serves("web") && passed.serves("dns") && !passed.serves("x"));

        let web = listener(&format!("[\"{t}\"]"), false);
        assert!(matches!(
            passed.take(&web, t),
            Ok(super::super::sockets::Unstarted::Tcp(_))
        ));
        // Taken again (a reload keeping or bringing back the listener).
        assert!(passed.take(&web, t).is_ok());
        assert!(passed.left_over(&web).is_empty());

        let other: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        let wider = listener(&format!("[\"{t}\", \"{other}\"]"), false);
        let err = passed
            .take(&wider, other)
            .map(drop)
            .expect_err("no socket there");
        assert!(
            err.contains(&format!("none on {other}")) && err.contains(&t.to_string()),
            "{err}"
        );

        let moved = listener(&format!("[\"{other}\"]"), false);
        assert_eq!(passed.left_over(&moved), vec![t]);

        // A UDP listener named like a TCP socket.
        let mut dns = listener(&format!("[\"{u}\"]"), true);
        // Named "web", it has none of web's sockets.
        assert!(passed.take(&dns, u).is_err());
        dns.name = "dns".into();
        assert!(matches!(
            passed.take(&dns, u),
            Ok(super::super::sockets::Unstarted::Udp(_))
        ));
        let mut wrong = listener(&format!("[\"{t}\"]"), true);
        wrong.name = "web".into();
        let err = passed.take(&wrong, t).map(drop).expect_err("kinds differ");
        assert!(
            err.contains("passed a TCP socket") && err.contains("UDP listener"),
            "{err}"
        );

        let cfg = weir_config::load_str(&format!(
            "[[listeners]]\nname = \"web\"\nbind = \"{t}\"\n[[listeners.routes]]\n\
             name = \"r\"\npool = \"p\"\n[[pools]]\nname = \"p\"\n[[pools.backends]]\n\
             address = \"127.0.0.1:9\"\n"
        ))
        .expect("config");
        let err = passed.check_names(&cfg).expect_err("dns has no listener");
        assert!(err.to_string().contains("named \"dns\""), "{err}");
    }
}

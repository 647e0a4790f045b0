//! The systemd notification protocol (`sd_notify`), for `Type=notify`
//! units: `READY=1` once the first probe round is done and the listeners
//! accept, `RELOADING=1` with `MONOTONIC_USEC` while a reload runs,
//! `STOPPING=1` when shutdown begins, `STATUS=` lines saying what weir is
//! doing, and `WATCHDOG=1` at half the `WatchdogSec` the unit asks for.
//!
//! Each message is one datagram to the socket `NOTIFY_SOCKET` names (a
//! path, or an abstract name written `@name`). Without the variable every
//! call does nothing, so weir run by hand or by another supervisor is not
//! affected. A message that cannot be sent is logged once and dropped:
//! notifications never stop weir.

use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

/// Where `NOTIFY_SOCKET` points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Address {
    Path(std::path::PathBuf),
    /// `@name`: a Linux abstract socket.
    Abstract(Vec<u8>),
}

/// The address in `NOTIFY_SOCKET`, or why it is not one.
pub(crate) fn parse_address(value: &str) -> Result<Address, String> {
    if let Some(name) = value.strip_prefix('@') {
        if name.is_empty() {
            return Err("an abstract name after @ is missing".to_owned());
        }
        return Ok(Address::Abstract(name.as_bytes().to_vec()));
    }
    if value.starts_with('/') {
        return Ok(Address::Path(value.into()));
    }
    Err(format!(
        "{value:?} is neither an absolute path nor an @abstract name"
    ))
}

/// How often to ping the watchdog: half of `WATCHDOG_USEC`, when it is set
/// for this process (`WATCHDOG_PID` absent or ours).
pub(crate) fn watchdog_interval(usec: Option<&str>, pid: Option<&str>) -> Option<Duration> {
    if let Some(pid) = pid
        && pid.trim().parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    let usec: u64 = usec?.trim().parse().ok().filter(|&u| u > 0)?;
    Some(Duration::from_micros(usec / 2).max(Duration::from_millis(10)))
}

/// The datagram of a reload that starts now: `RELOADING=1` and the
/// monotonic clock in microseconds, as `Type=notify-reload` requires.
pub(crate) fn reloading_message(monotonic_usec: u64) -> String {
    format!("RELOADING=1\nMONOTONIC_USEC={monotonic_usec}\nSTATUS=reloading the configuration")
}

/// `STATUS=` text: one line, at most 200 bytes (systemd shows it as is).
pub(crate) fn status(text: &str) -> String {
    let line: String = text.chars().filter(|c| *c != '\n').collect();
    let mut end = line.len().min(200);
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!("STATUS={}", &line[..end])
}

/// Sends notifications to systemd, when it asked for them.
#[derive(Debug)]
pub(crate) struct Notifier {
    target: Option<(UnixDatagram, Address)>,
    warned: AtomicBool,
    /// Set once another process is the service's main process.
    silent: AtomicBool,
    /// Set once weir stops: what it says then stays the unit's status.
    /// Held while a status is sent, so that none goes after `STOPPING=1`.
    stopping: Mutex<bool>,
}

impl Notifier {
    /// From `NOTIFY_SOCKET`; a disabled notifier without it (or when it is
    /// not usable, which is logged).
    pub(crate) fn from_env() -> Notifier {
        let target = std::env::var("NOTIFY_SOCKET").ok().and_then(|value| {
            let address = parse_address(&value)
                .map_err(|e| tracing::warn!(error = %e, "NOTIFY_SOCKET ignored"))
                .ok()?;
            let socket = UnixDatagram::unbound()
                .map_err(|e| tracing::warn!(error = %e, "NOTIFY_SOCKET ignored: no socket"))
                .ok()?;
            Some((socket, address))
        });
        Notifier {
            target,
            warned: AtomicBool::new(false),
            silent: AtomicBool::new(false),
            stopping: Mutex::new(false),
        }
    }

    pub(crate) fn enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Sends one message (lines of `KEY=value`).
    pub(crate) fn send(&self, message: &str) {
        let Some((socket, address)) = &self.target else {
            return;
        };
        if self.silent.load(Relaxed) {
            return;
        }
        let sent = match address {
            Address::Path(p) => socket.send_to(message.as_bytes(), p),
            Address::Abstract(name) => {
                use std::os::linux::net::SocketAddrExt;
                std::os::unix::net::SocketAddr::from_abstract_name(name)
                    .and_then(|a| socket.send_to_addr(message.as_bytes(), &a))
            }
        };
        if let Err(e) = sent
            && !self.warned.swap(true, Relaxed)
        {
            tracing::warn!(error = %e, "cannot notify systemd (NOTIFY_SOCKET); going on without");
        }
    }

    /// Sends nothing more, watchdog pings included: a successor speaks for
    /// the service now.
    pub(crate) fn silence(&self) {
        self.silent.store(true, Relaxed);
    }

    /// `READY=1` with `what` as the status (at start, and at the end of a
    /// reload systemd asked for); nothing once weir stops (systemd took
    /// `STOPPING=1` for the end of the reload too).
    pub(crate) fn ready(&self, what: &str) {
        self.unless_stopping(&format!("READY=1\n{}", status(what)));
    }

    /// The status alone, unless weir is stopping.
    pub(crate) fn status(&self, what: &str) {
        self.unless_stopping(&status(what));
    }

    fn unless_stopping(&self, message: &str) {
        let stopping = self.stopping.lock().unwrap_or_else(PoisonError::into_inner);
        if !*stopping {
            self.send(message);
        }
    }

    pub(crate) fn reloading(&self) {
        let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
        let usec = u64::try_from(now.tv_sec).unwrap_or(0) * 1_000_000
            + u64::try_from(now.tv_nsec).unwrap_or(0) / 1_000;
        self.send(&reloading_message(usec));
    }

    pub(crate) fn stopping(&self, what: &str) {
        let mut stopping = self.stopping.lock().unwrap_or_else(PoisonError::into_inner);
        *stopping = true;
        self.send(&format!("STOPPING=1\n{}", status(what)));
    }

    /// Pings the watchdog at `every` while the runtime runs: a wedged
    /// runtime stops the pings, and systemd restarts weir.
    pub(crate) fn spawn_watchdog(self: &std::sync::Arc<Self>, every: Duration) {
        let me = std::sync::Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                me.send("WATCHDOG=1");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_paths_or_abstract_names() {
        assert_eq!(
            parse_address("/run/systemd/notify"),
            Ok(Address::Path("/run/systemd/notify".into()))
        );
        assert_eq!(
            parse_address("@weir/notify"),
            Ok(Address::Abstract(b"weir/notify".to_vec()))
        );
        assert!(parse_address("@").is_err());
        assert!(parse_address("relative/path").is_err());
        assert!(parse_address("").is_err());
    }

    #[test]
    fn the_watchdog_is_ours_only_when_the_pid_says_so() {
        let me = std::process::id().to_string();
        assert_eq!(
            watchdog_interval(Some("2000000"), None),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            watchdog_interval(Some("2000000"), Some(&me)),
            Some(Duration::from_secs(1))
        );
        assert_eq!(watchdog_interval(Some("2000000"), Some("1")), None);
        assert_eq!(watchdog_interval(None, None), None);
        assert_eq!(watchdog_interval(Some("0"), None), None);
        assert_eq!(watchdog_interval(Some("soon"), None), None);
        assert_eq!(
            watchdog_interval(Some("1"), None),
            Some(Duration::from_millis(10))
        );
    }

    #[test]
    fn messages_are_what_systemd_reads() {
        assert_eq!(
            reloading_message(12_345),
            "RELOADING=1\nMONOTONIC_USEC=12345\nSTATUS=reloading the configuration"
        );
        assert_eq!(status("two\nlines"), "STATUS=twolines");
        let long = "é".repeat(150);
        let s = status(&long);
        assert!(s.len() <= 207 && s.starts_with("STATUS=é"), "{s}");
    }
}

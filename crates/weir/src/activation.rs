//! Socket activation: the listening sockets systemd passes to a service
//! (`LISTEN_PID`, `LISTEN_FDS` from descriptor 3 on, `LISTEN_FDNAMES`), taken
//! once at start, before any thread runs, and handed to the server, which
//! matches them to listeners by name (see `weir_core::Inherited`).

use anyhow::{Context, Result, bail};
use weir_core::{Inherited, PassedSocket};

/// The sockets passed to this process, if any. Variables meant for another
/// process (`LISTEN_PID` not ours, or missing) are left alone.
pub(crate) fn from_env() -> Result<Inherited> {
    let pid = std::env::var("LISTEN_PID").ok();
    if pid.as_deref() != Some(std::process::id().to_string().as_str()) {
        return Ok(Inherited::default());
    }
    let fdnames = std::env::var("LISTEN_FDNAMES").ok();
    // Takes the descriptors and unsets LISTEN_PID and LISTEN_FDS, so nothing
    // weir starts believes they are its own.
    let mut fds = listenfd::ListenFd::from_env();
    let names = names(fdnames.as_deref(), fds.len()).map_err(anyhow::Error::msg)?;
    let mut sockets = Vec::with_capacity(names.len());
    for (i, name) in names.into_iter().enumerate() {
        let socket = match fds.take_tcp_listener(i) {
            Ok(Some(s)) => PassedSocket::Tcp(s),
            Ok(None) => continue,
            Err(_) => match fds.take_udp_socket(i) {
                Ok(Some(s)) => PassedSocket::Udp(s),
                Ok(None) => continue,
                Err(_) => bail!(
                    "socket {} passed by systemd ({name:?}) is neither a TCP nor a UDP socket \
                     (descriptor {})",
                    i + 1,
                    i + 3
                ),
            },
        };
        sockets.push((name, socket));
    }
    Inherited::new(sockets).context("cannot use the sockets systemd passed")
}

/// The name of each of `count` passed sockets, from `LISTEN_FDNAMES` (names
/// separated by colons). systemd calls an unnamed one `unknown`.
pub(crate) fn names(value: Option<&str>, count: usize) -> Result<Vec<String>, String> {
    let Some(value) = value else {
        return Ok(vec!["unknown".to_owned(); count]);
    };
    let names: Vec<String> = if count == 0 {
        Vec::new()
    } else {
        value.split(':').map(str::to_owned).collect()
    };
    if names.len() != count {
        return Err(format!(
            "LISTEN_FDNAMES names {} socket(s), LISTEN_FDS says {count}",
            names.len()
        ));
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::names;

    #[test]
    fn names_follow_listen_fdnames() {
        assert_eq!(
            names(Some("web:dns"), 2),
            Ok(vec!["web".into(), "dns".into()])
        );
        assert_eq!(names(Some("web"), 1), Ok(vec!["web".into()]));
        assert_eq!(names(None, 2), Ok(vec!["unknown".into(), "unknown".into()]));
        assert_eq!(names(Some(""), 0), Ok(vec![]));
        // Two sockets of one listener carry one name twice.
        assert_eq!(
            names(Some("web:web"), 2),
            Ok(vec!["web".into(), "web".into()])
        );
        assert!(
            names(Some("web"), 2)
                .expect_err("one name, two sockets")
                .contains("names 1 socket(s)")
        );
        assert!(names(Some("a:b:c"), 2).is_err());
    }
}

//! Binary upgrade in place, for a weir run by systemd (`weir.service`): on
//! SIGUSR2 weir starts the program file it was started from (by then the new
//! version) as `weir run --upgrade` with the same configuration. The new
//! process binds beside the old one (SO_REUSEPORT), runs its first probe
//! round, tells systemd it is the service's main process (`MAINPID=`, which
//! needs `NotifyAccess=all`) and ready, then sends its predecessor SIGTERM:
//! the old process stops accepting and lets its connections finish within
//! `shutdown_timeout`, without telling systemd the service stops. If the new
//! process fails to start, the old one logs why and goes on serving.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

/// Names the process a successor takes over from.
const FROM: &str = "WEIR_HANDOVER_FROM";

/// The predecessor this process was started to replace: the PID in
/// `WEIR_HANDOVER_FROM`, when it is our parent's (a stale variable from an
/// unrelated ancestor is ignored).
pub(crate) fn predecessor() -> Option<rustix::process::Pid> {
    let pid: i32 = std::env::var(FROM).ok()?.parse().ok()?;
    let parent = rustix::process::getppid()?;
    (parent.as_raw_nonzero().get() == pid).then_some(parent)
}

/// The program to start: the path weir was started by (`/usr/bin/weir`
/// under systemd), which a package upgrade has replaced; else the running
/// executable.
fn program(argv0: Option<OsString>) -> std::io::Result<PathBuf> {
    if let Some(p) = argv0.map(PathBuf::from)
        && p.is_absolute()
    {
        return Ok(p);
    }
    let exe = std::env::current_exe()?;
    // The file of a running program that was replaced reads "... (deleted)".
    let text = exe.to_string_lossy();
    Ok(match text.strip_suffix(" (deleted)") {
        Some(path) => PathBuf::from(path),
        None => exe,
    })
}

/// Starts the successor: `weir run --upgrade --config <config>`, told our
/// PID. Its watchdog pings are its own (`WATCHDOG_PID` names us).
pub(crate) fn start_successor(config: &Path) -> std::io::Result<Child> {
    let program = program(std::env::args_os().next())?;
    tracing::info!(program = %program.display(), "SIGUSR2: starting the new version to hand over to");
    Command::new(program)
        .args(["run", "--upgrade", "--config"])
        .arg(config)
        .env(FROM, std::process::id().to_string())
        .env_remove("WATCHDOG_PID")
        .spawn()
}

/// The message that makes this process the service's main process.
pub(crate) fn main_pid_message(status: &str) -> String {
    format!(
        "MAINPID={}\nREADY=1\n{}",
        std::process::id(),
        crate::notify::status(status)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_successor_is_the_file_weir_was_started_from() {
        assert_eq!(
            program(Some("/usr/bin/weir".into())).expect("path"),
            PathBuf::from("/usr/bin/weir")
        );
        // A relative or missing argv[0]: the running executable.
        let exe = std::env::current_exe().expect("exe");
        assert_eq!(program(Some("weir".into())).expect("path"), exe);
        assert_eq!(program(None).expect("path"), exe);
    }

    #[test]
    fn the_message_names_this_process() {
        let m = main_pid_message("serving");
        assert!(m.starts_with(&format!("MAINPID={}\nREADY=1\n", std::process::id())));
        assert!(m.ends_with("STATUS=serving"));
    }
}

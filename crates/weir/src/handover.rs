//! Binary upgrade in place, for a weir run by systemd (`weir.service`): on
//! SIGUSR2 weir starts the program file it was started from (by then the new
//! version) as `weir run --upgrade` with the same configuration. The new
//! process binds beside the old one (SO_REUSEPORT), runs its first probe
//! round, tells systemd it is the service's main process (`MAINPID=`, which
//! needs `NotifyAccess=all`) and ready, then sends its predecessor SIGUSR1:
//! the old process stops accepting and lets its connections finish within
//! `shutdown_timeout`, silent towards systemd from then on. If the new
//! process fails to start, or has not taken over within [`TAKEOVER_DEADLINE`],
//! the old one logs why, stops it, and goes on serving; a SIGTERM to the old
//! one while the new one starts is a stop of the service, and stops both.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::SeqCst};
use std::time::Duration;

use crate::notify::{self, Notifier};

/// How long a new version may take to serve before it is stopped and the
/// running one goes on, unless `WEIR_UPGRADE_TIMEOUT` says otherwise: its
/// first probe round is bounded by the checks' timeouts, far below this.
pub(crate) const TAKEOVER_DEADLINE: Duration = Duration::from_secs(120);

/// Names the deadline of a hand-over, as a duration ("90s", "5m").
const TIMEOUT_VAR: &str = "WEIR_UPGRADE_TIMEOUT";

/// `d` in seconds, rounded up: what a shell script can compare.
fn whole_seconds(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// The deadline `WEIR_UPGRADE_TIMEOUT` sets: [`TAKEOVER_DEADLINE`] when it
/// is unset, an error naming the variable when it is not a duration above
/// zero (at most a day: a hung new version would hold changes that long).
fn takeover_deadline(value: Option<&str>) -> Result<Duration, String> {
    let Some(value) = value else {
        return Ok(TAKEOVER_DEADLINE);
    };
    match humantime::parse_duration(value.trim()) {
        Ok(d) if d.is_zero() => Err(format!("{TIMEOUT_VAR}={value:?}: must be greater than 0")),
        Ok(d) if d > Duration::from_secs(86_400) => {
            Err(format!("{TIMEOUT_VAR}={value:?}: longer than a day"))
        }
        Ok(d) => Ok(d),
        Err(e) => Err(format!(
            "{TIMEOUT_VAR}={value:?} is not a duration ({e}); write it like \"90s\" or \"5m\""
        )),
    }
}

/// The new version SIGUSR2 started, while it starts.
#[derive(Debug, Default)]
pub(crate) struct Successor {
    /// Its PID while it runs and has not taken over; 0: none.
    pid: AtomicU32,
    handed_over: AtomicBool,
    /// This process stopped it (a stop of the service, or too slow).
    stopped: AtomicBool,
    /// Its fate is decided: it took over, or this process stops it. The
    /// first to set this decides, so a take-over and the deadline's stop
    /// arriving together cannot both happen (both processes would stop).
    decided: AtomicBool,
}

impl Successor {
    /// Starts the new version, unless one is starting already. Until it
    /// takes over or is gone, `server` refuses operator changes: the new
    /// version read the state file at its start.
    pub(crate) async fn start(
        self: &Arc<Self>,
        config: &Path,
        notifier: &Arc<Notifier>,
        server: &Arc<weir_core::Server>,
    ) {
        if self.pid.load(SeqCst) != 0 {
            tracing::warn!("SIGUSR2 ignored: a new version is already starting");
            return;
        }
        let deadline = takeover_deadline(std::env::var(TIMEOUT_VAR).ok().as_deref())
            .unwrap_or_else(|e| {
                tracing::warn!("{e}; waiting {TAKEOVER_DEADLINE:?} for the new version");
                TAKEOVER_DEADLINE
            });
        server.successor_starting().await;
        self.decided.store(false, SeqCst);
        // A stop of an earlier attempt's new version says nothing of this
        // one: its exit must be reported.
        self.stopped.store(false, SeqCst);
        let mut child = match start_successor(config) {
            Ok(child) => child,
            Err(e) => {
                server.successor_gone();
                tracing::error!(error = %e, "SIGUSR2: cannot start the new version; this process goes on serving");
                return;
            }
        };
        let pid = child.id();
        self.pid.store(pid, SeqCst);
        // The package's script waits as long as this says, and a margin.
        notifier.send(&notify::status(&format!(
            "upgrading (the new version, pid {pid}, has {} s to take over)",
            whole_seconds(deadline)
        )));
        // A thread of its own, not the runtime's: this process exits while
        // the successor lives on.
        let (me, notifier_for_waiter) = (Arc::clone(self), Arc::clone(notifier));
        let server = Arc::clone(server);
        let waiter = std::thread::Builder::new()
            .name("successor".into())
            .spawn(move || {
                let status = child.wait();
                let _ = me.pid.compare_exchange(pid, 0, SeqCst, SeqCst);
                if me.handed_over.load(SeqCst) {
                    return;
                }
                server.successor_gone();
                if me.stopped.load(SeqCst) {
                    return;
                }
                let why = match status {
                    Ok(s) => s.to_string(),
                    Err(e) => e.to_string(),
                };
                tracing::error!(status = %why, "the new version exited; this process goes on serving");
                // The PID makes each attempt's status its own: the
                // package's script tells a new failure from an old one.
                notifier_for_waiter.send(&notify::status(&format!(
                    "upgrade failed (the new version, pid {pid}, exited: {why}); the previous version serves"
                )));
            });
        if let Err(e) = waiter {
            tracing::warn!(error = %e, "cannot watch the new version's process");
        }
        let (me, notifier) = (Arc::clone(self), Arc::clone(notifier));
        tokio::spawn(async move {
            tokio::time::sleep(deadline).await;
            if me.pid.load(SeqCst) == pid && !me.decided.swap(true, SeqCst) {
                me.stopped.store(true, SeqCst);
                tracing::error!(
                    pid,
                    "the new version did not take over within {deadline:?}; stopping it, this process goes on serving"
                );
                terminate(pid);
                notifier.send(&notify::status(&format!(
                    "upgrade failed (the new version, pid {pid}, did not take over within {deadline:?}); the previous version serves"
                )));
            }
        });
    }

    /// The successor says it serves (SIGUSR1): true when one was starting,
    /// which has now taken over.
    pub(crate) fn take_over(&self) -> bool {
        if self.pid.load(SeqCst) == 0 || self.decided.swap(true, SeqCst) {
            // None starting, or being stopped already.
            return false;
        }
        self.handed_over.store(true, SeqCst);
        true
    }

    /// Whether a new version is starting (started, not taken over, not
    /// gone).
    pub(crate) fn starting(&self) -> bool {
        self.pid.load(SeqCst) != 0 && !self.handed_over.load(SeqCst)
    }

    pub(crate) fn handed_over(&self) -> bool {
        self.handed_over.load(SeqCst)
    }

    /// This process stops while a new version starts: stop that one too.
    pub(crate) fn cancel(&self) {
        if self.decided.swap(true, SeqCst) && !self.stopped.load(SeqCst) {
            // It took over meanwhile: it is the service now.
            return;
        }
        let pid = self.pid.swap(0, SeqCst);
        if pid != 0 {
            self.stopped.store(true, SeqCst);
            tracing::warn!(pid, "stopping while a new version starts: stopping it too");
            terminate(pid);
        }
    }
}

fn terminate(pid: u32) {
    if let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
}

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
fn start_successor(config: &Path) -> std::io::Result<Child> {
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
    fn the_status_gives_the_deadline_in_whole_seconds_rounded_up() {
        assert_eq!(whole_seconds(Duration::from_secs(120)), 120);
        assert_eq!(whole_seconds(Duration::from_millis(1500)), 2);
        assert_eq!(whole_seconds(Duration::from_nanos(1)), 1);
    }

    #[test]
    fn the_deadline_is_two_minutes_or_what_the_variable_says() {
        assert_eq!(takeover_deadline(None), Ok(Duration::from_secs(120)));
        assert_eq!(takeover_deadline(Some("90s")), Ok(Duration::from_secs(90)));
        assert_eq!(
            takeover_deadline(Some(" 5m ")),
            Ok(Duration::from_secs(300))
        );
        assert_eq!(
            takeover_deadline(Some("1d")),
            Ok(Duration::from_secs(86_400))
        );
        for bad in ["0s", "", "5", "soon", "2d", "99999999999999999999s"] {
            let e = takeover_deadline(Some(bad)).expect_err(bad);
            assert!(
                e.starts_with(&format!("WEIR_UPGRADE_TIMEOUT={bad:?}")),
                "{e}"
            );
        }
    }

    #[test]
    fn the_message_names_this_process() {
        let m = main_pid_message("serving");
        assert!(m.starts_with(&format!("MAINPID={}\nREADY=1\n", std::process::id())));
        assert!(m.ends_with("STATUS=serving"));
    }
}

//! The Debian package, built by scripts/package-deb.sh (cargo-deb) from this
//! build's binary, installed with `dpkg -i` on the test machine, checked, run
//! as the system user it creates, then removed and purged.

use std::path::Path;
use std::process::{Command, Output};

use crate::cli::{free_port, repo_root, temp_config, wait_connectable};

fn sh(what: &str, cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// What `cmd` printed, when it succeeded.
fn stdout(what: &str, cmd: &mut Command) -> String {
    String::from_utf8_lossy(&sh(what, cmd).stdout).into_owned()
}

fn dpkg(args: &[&str]) -> Output {
    sh(
        &format!("dpkg {}", args.join(" ")),
        Command::new("dpkg").args(args),
    )
}

fn exists(path: &str) -> bool {
    Path::new(path).exists()
}

#[test]
fn the_debian_package_installs_serves_and_goes_away() {
    let root = repo_root();
    let out_dir = std::env::temp_dir().join(format!("weir-deb-{}", std::process::id()));
    sh(
        "scripts/package-deb.sh --dev",
        Command::new(root.join("scripts/package-deb.sh"))
            .args(["--dev", "--output"])
            .arg(&out_dir),
    );
    let deb = std::fs::read_dir(&out_dir)
        .expect("output dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .expect("a .deb");
    let deb = deb.to_str().expect("utf-8 path");

    let info = String::from_utf8_lossy(&dpkg(&["-I", deb]).stdout).into_owned();
    assert!(info.contains("Package: weir"), "{info}");
    assert!(
        info.contains("Depends:") && info.contains("adduser"),
        "{info}"
    );
    assert!(info.contains("conffiles"), "{info}");

    dpkg(&["-i", deb]);
    // Whatever happens below, the package goes away again.
    struct Purge;
    impl Drop for Purge {
        fn drop(&mut self) {
            let _ = Command::new("dpkg").args(["-P", "weir"]).output();
        }
    }
    let _purge = Purge;

    for file in [
        "/usr/bin/weir",
        "/etc/weir/weir.toml",
        "/lib/systemd/system/weir.service",
        "/usr/lib/weir/upgrade-running",
        "/usr/share/weir/prometheus/alerts.yml",
        "/usr/share/weir/prometheus/slo.yml",
        "/usr/share/weir/grafana/weir-dashboard.json",
        "/usr/share/weir/systemd/weir-web.socket",
        "/usr/share/man/man1/weir.1.gz",
        "/usr/share/man/man1/weir-run.1.gz",
        "/usr/share/man/man1/weir-backend-drain.1.gz",
        "/usr/share/bash-completion/completions/weir",
        "/usr/share/zsh/vendor-completions/_weir",
        "/usr/share/fish/vendor_completions.d/weir.fish",
        "/usr/share/doc/weir/examples/minimal.toml",
        "/usr/share/doc/weir/examples/blocklist.txt",
    ] {
        assert!(exists(file), "the package did not install {file}");
    }
    let conffiles = stdout(
        "dpkg-query conffiles",
        Command::new("dpkg-query").args(["-W", "-f=${Conffiles}", "weir"]),
    );
    assert!(conffiles.contains("/etc/weir/weir.toml"), "{conffiles}");

    // Enabled as Debian's helpers do it (whether or not systemd runs here).
    let wants = "/etc/systemd/system/multi-user.target.wants/weir.service";
    assert!(
        std::fs::read_link(wants).is_ok_and(|t| t == Path::new("/lib/systemd/system/weir.service")),
        "{wants} does not enable the unit"
    );

    // The system user and its state directory.
    let user = stdout(
        "getent passwd weir",
        Command::new("getent").args(["passwd", "weir"]),
    );
    assert!(user.contains(":/var/lib/weir:"), "{user}");
    assert!(
        user.trim_end().ends_with("nologin") || user.trim_end().ends_with("/bin/false"),
        "{user}"
    );
    let state = stdout(
        "stat /var/lib/weir",
        Command::new("stat").args(["-c", "%U:%G %a", "/var/lib/weir"]),
    );
    assert_eq!(state.trim(), "weir:weir 750");

    let version = stdout(
        "weir --version",
        Command::new("/usr/bin/weir").arg("--version"),
    );
    assert_eq!(
        version.trim(),
        format!("weir {}", env!("CARGO_PKG_VERSION"))
    );
    // The unit's own checks, as the unit's user: the default config passes.
    sh(
        "weir check as weir",
        Command::new("setpriv")
            .args(["--reuid=weir", "--regid=weir", "--init-groups"])
            .args(["/usr/bin/weir", "check", "--config", "/etc/weir/weir.toml"]),
    );
    let bash = std::fs::read_to_string("/usr/share/bash-completion/completions/weir")
        .expect("bash completion");
    assert!(bash.contains("complete -F _weir") && bash.contains("drain"));
    let page = sh(
        "man weir-backend-drain",
        Command::new("man").args(["-P", "cat", "weir-backend-drain"]),
    );
    assert!(String::from_utf8_lossy(&page.stdout).contains("drain_timeout"));

    // The installed binary runs as weir with the default config's state file
    // (admin ports moved to free ones) and writes its state directory.
    let (http, grpc) = (free_port(), free_port());
    let config = std::fs::read_to_string("/etc/weir/weir.toml")
        .expect("config")
        .replace("127.0.0.1:9900", &http.to_string())
        .replace("127.0.0.1:9901", &grpc.to_string());
    let file = temp_config("package", &config);
    let dir = file.parent().expect("dir");
    sh("chmod", Command::new("chmod").arg("755").arg(dir));
    sh("chmod", Command::new("chmod").arg("644").arg(&file));
    let child = Command::new("setpriv")
        .args(["--reuid=weir", "--regid=weir", "--init-groups"])
        .args(["/usr/bin/weir", "run", "--config"])
        .arg(&file)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("run weir");
    let running = crate::cli::Running::new(child);
    wait_connectable(http);
    // Ready once its start is done (503 "starting" until then).
    let end = std::time::Instant::now() + crate::cli::DEADLINE;
    loop {
        let status = crate::cli::http_get(http, "/readyz");
        if status.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(std::time::Instant::now() < end, "never ready: {status}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    drop(running);
    let db = stdout(
        "stat state file",
        Command::new("stat").args(["-c", "%U", "/var/lib/weir/weir-state.db"]),
    );
    assert_eq!(db.trim(), "weir");

    // Installed again over itself (an upgrade to the same version): the
    // postinst's upgrade branch runs and keeps what the first one set.
    dpkg(&["-i", deb]);
    assert_eq!(
        stdout(
            "stat config",
            Command::new("stat").args(["-c", "%U:%G %a", "/etc/weir/weir.toml"])
        )
        .trim(),
        "root:weir 640"
    );
    assert!(std::fs::read_link(wants).is_ok(), "still enabled");
    let mode = || {
        stdout(
            "stat config",
            Command::new("stat").args(["-c", "%U:%G %a", "/etc/weir/weir.toml"]),
        )
        .trim()
        .to_owned()
    };
    // As dpkg leaves an unmodified conffile it replaced with a new version
    // (root:root 0644): the upgrade's postinst gives it back to weir alone.
    stdout(
        "chown",
        Command::new("chown").args(["root:root", "/etc/weir/weir.toml"]),
    );
    stdout(
        "chmod",
        Command::new("chmod").args(["644", "/etc/weir/weir.toml"]),
    );
    dpkg(&["-i", deb]);
    assert_eq!(mode(), "root:weir 640");
    // A mode an administrator chose stays.
    stdout(
        "chmod",
        Command::new("chmod").args(["600", "/etc/weir/weir.toml"]),
    );
    dpkg(&["-i", deb]);
    assert_eq!(mode(), "root:weir 600");

    // Removed: the program goes, the configuration stays; purged: both go.
    dpkg(&["-r", "weir"]);
    assert!(!exists("/usr/bin/weir") && !exists("/usr/share/weir"));
    assert!(exists("/etc/weir/weir.toml"), "remove kept no conffile");
    // Masked while only the configuration is left.
    assert!(
        std::fs::read_link("/etc/systemd/system/weir.service")
            .is_ok_and(|t| t == Path::new("/dev/null")),
        "the removed unit is not masked"
    );
    dpkg(&["-P", "weir"]);
    assert!(!exists("/etc/weir/weir.toml") && !exists("/var/lib/weir"));
    // Purged: neither enabled nor masked.
    assert!(
        std::fs::symlink_metadata(wants).is_err(),
        "{wants} left behind"
    );
    assert!(
        std::fs::symlink_metadata("/etc/systemd/system/weir.service").is_err(),
        "the mask left behind"
    );
    let _ = std::fs::remove_dir_all(&out_dir);
}

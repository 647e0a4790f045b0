//! SNI routing without terminating TLS, with real peers: two nginx TLS servers
//! with their own certificates (made by the openssl CLI) behind one weir
//! listener; curl (`--resolve`, verifying the certificate) and `openssl
//! s_client -servername` as clients.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::cli::{
    free_port, run_weir, start_nginx, temp_config, test_dir, wait_connectable, which,
};

fn make_cert(dir: &Path, name: &str) {
    let openssl = which("openssl").expect("openssl is not installed");
    let out = Command::new(openssl)
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
        ])
        .args([
            "-subj",
            &format!("/CN={name}"),
            "-addext",
            &format!("subjectAltName=DNS:{name}"),
        ])
        .arg("-keyout")
        .arg(dir.join(format!("{name}.key")))
        .arg("-out")
        .arg(dir.join(format!("{name}.crt")))
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl req: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn curl_and_openssl_reach_the_backend_their_sni_names() {
    let dir = test_dir("sni");
    let names = ["a.example.com", "b.example.com"];
    for n in names {
        make_cert(&dir, n);
    }
    let ports: Vec<SocketAddr> = names.iter().map(|_| free_port()).collect();
    let d = dir.display();
    let mut servers = String::new();
    for (n, p) in names.iter().zip(&ports) {
        servers.push_str(&format!(
            "  server {{ listen {p} ssl; ssl_certificate {d}/{n}.crt; ssl_certificate_key {d}/{n}.key;\n\
                 location / {{ return 200 \"backend {n}\\n\"; }} }}\n"
        ));
    }
    let _nginx = start_nginx(&dir, &servers);
    for p in &ports {
        wait_connectable(*p);
    }
    let front = free_port();
    let file = temp_config(
        "sni",
        &format!(
            "[log]\naccess_log = false\n\
             [[listeners]]\nname = \"tls\"\nbind = [\"{front}\"]\n\
             [[listeners.routes]]\nname = \"a\"\nmatch = {{ sni = [\"a.example.com\"] }}\npool = \"a\"\n\
             [[listeners.routes]]\nname = \"b\"\nmatch = {{ sni = [\"*.example.com\"] }}\npool = \"b\"\n\
             [[pools]]\nname = \"a\"\n[[pools.backends]]\naddress = \"{}\"\n\
             [[pools]]\nname = \"b\"\n[[pools.backends]]\naddress = \"{}\"\n",
            ports[0], ports[1]
        ),
    );
    let (_weir, _out) = run_weir(&file);

    // curl verifies each backend's own certificate: TLS went through untouched.
    let curl = which("curl").expect("curl is not installed");
    for n in names {
        let out = Command::new(&curl)
            .args(["-sS", "--fail", "--max-time", "10"])
            .arg("--resolve")
            .arg(format!("{n}:{}:127.0.0.1", front.port()))
            .arg("--cacert")
            .arg(dir.join(format!("{n}.crt")))
            .arg(format!("https://{n}:{}/", front.port()))
            .output()
            .expect("curl");
        assert!(
            out.status.success(),
            "curl {n}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            format!("backend {n}")
        );
    }

    // openssl s_client sees the certificate of the backend its SNI names.
    let openssl = which("openssl").expect("openssl");
    let out = Command::new(openssl)
        .args([
            "s_client",
            "-connect",
            &front.to_string(),
            "-servername",
            "b.example.com",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("openssl s_client");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("CN = b.example.com") || text.contains("CN=b.example.com"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

//! The ClientHello peek against hellos captured from real clients (curl and
//! openssl with OpenSSL, gnutls-cli with GnuTLS, Python's ssl module, headless
//! Chromium with BoringSSL; see `scripts/capture-hellos.sh`), so the parser is
//! not only checked against a builder that shares its assumptions. Each one is
//! read whole, then on every prefix, as a peek over any split of the stream
//! would see it.

use std::path::{Path, PathBuf};

use weir_wire::client_hello::{Peek, peek};

/// The name every capture was made for.
const SNI: &str = "hello.test";

fn captures() -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hellos");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "bin"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            (name, bytes)
        })
        .collect()
}

/// What each client offers for ALPN (the capture script asks for these).
fn expected_alpn(file: &str) -> &'static [&'static [u8]] {
    match file {
        "curl-openssl.bin" | "gnutls-cli.bin" | "python-ssl.bin" | "chromium.bin" => {
            &[b"h2", b"http/1.1"]
        }
        "openssl-s_client.bin" => &[b"postgresql", b"h2"],
        _ => &[],
    }
}

#[test]
fn every_capture_is_a_complete_hello_with_its_name_and_alpn() {
    let all = captures();
    let names: Vec<&str> = all.iter().map(|(n, _)| n.as_str()).collect();
    for want in [
        "curl-openssl.bin",
        "openssl-s_client.bin",
        "gnutls-cli.bin",
        "python-ssl.bin",
        "chromium.bin",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    for (name, bytes) in &all {
        let hello = match peek(bytes) {
            Ok(Peek::Complete(hello)) => hello,
            other => panic!("{name}: {other:?}"),
        };
        assert_eq!(hello.sni.as_deref(), Some(SNI), "{name}");
        assert_eq!(
            hello.wire_len,
            bytes.len(),
            "{name}: one hello, nothing after it"
        );
        let offered: Vec<&[u8]> = hello.alpn.iter().collect();
        assert_eq!(offered, expected_alpn(name), "{name}");
        // Every client here offers TLS 1.3.
        assert_eq!(hello.max_version, 0x0304, "{name}");
    }
}

#[test]
fn every_prefix_of_every_capture_asks_for_more() {
    for (name, bytes) in captures() {
        for end in 0..bytes.len() {
            match peek(&bytes[..end]) {
                Ok(Peek::Incomplete { needed }) => {
                    if let Some(n) = needed {
                        assert!(
                            end + n.get() <= bytes.len(),
                            "{name}: prefix {end} asks for {n} more"
                        );
                    }
                }
                other => panic!("{name}: prefix of {end} bytes gave {other:?}"),
            }
        }
    }
}

#[test]
fn the_largest_hello_spans_several_segments() {
    // Chromium offers a post-quantum key share: its hello is larger than one
    // 1500-byte packet, so a peek sees it arrive in pieces.
    let (_, chromium) = captures()
        .into_iter()
        .find(|(n, _)| n == "chromium.bin")
        .expect("chromium.bin");
    assert!(chromium.len() > 1500, "{} bytes", chromium.len());
}

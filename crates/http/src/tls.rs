//! TLS termination for l7 routes with `tls`: the certificates loaded (and
//! checked: each key must fit its certificate) when a snapshot is built, so
//! a broken file fails the start or the reload and changes nothing; the
//! certificate for a handshake chosen by the client's SNI (an exact name of
//! a certificate's SANs, then a wildcard SAN of the parent domain, then the
//! first certificate, the default; among those for one name, the first
//! whose key signs with a scheme the client offers); TLS 1.2 and 1.3, ALPN `h2`,
//! `http/1.1` and `http/1.0`, optional client certificates verified against `client_ca`.
//! rustls parses the ClientHello once and hands it to the resolver here.
//!
//! Session tickets and the session cache outlive a reload that keeps the
//! route's `client_ca` as it was, so returning clients still resume; under
//! another `client_ca` (or none) they start anew, as a session carries the
//! client certificate it was made with.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use weir_config::ServerTls;
use weir_core::l7::Certificate;

/// Session tickets and the session cache let returning clients resume
/// without a full handshake.
const SESSION_CACHE: usize = 10_240;

/// What terminates TLS on one route.
#[derive(Debug)]
pub(crate) struct Terminator {
    pub(crate) config: Arc<ServerConfig>,
    pub(crate) certificates: Vec<Certificate>,
    /// The certificates of `client_ca` as read: whom client certificates
    /// must come from (`None`: no client certificate is asked for).
    client_roots: Option<Vec<CertificateDer<'static>>>,
}

impl Terminator {
    /// Loads the certificates of `tls`; an error names the file and why.
    /// `before`: the route's terminator until now, whose sessions go on
    /// when the client certificates are checked as before.
    pub(crate) fn load(tls: &ServerTls, before: Option<&Terminator>) -> Result<Terminator, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut resolver = SniResolver::default();
        let mut certificates = Vec::with_capacity(tls.certificates.len());
        for (cert_path, key_path) in &tls.certificates {
            let (key, names, not_after) = load_pair(cert_path, key_path, &provider)?;
            let key = Arc::new(key);
            resolver.add(&key, &names);
            certificates.push(Certificate {
                file: cert_path.display().to_string(),
                not_after,
            });
        }
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| format!("tls: {e}"))?;
        let client_roots = match &tls.client_ca {
            None => None,
            Some(ca) => Some(read_certs(ca)?),
        };
        let builder = match tls.client_ca.as_ref().zip(client_roots.as_ref()) {
            None => builder.with_no_client_auth(),
            Some((ca, certs)) => {
                let mut roots = RootCertStore::empty();
                for cert in certs.iter().cloned() {
                    roots
                        .add(cert)
                        .map_err(|e| format!("client_ca {}: {e}", ca.display()))?;
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    Arc::clone(&provider),
                )
                .build()
                .map_err(|e| format!("client_ca {}: {e}", ca.display()))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_cert_resolver(Arc::new(resolver));
        // In order of preference; `http/1.0` last, for the clients that offer
        // it alone (without it rustls refuses them: no protocol in common).
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec(), b"http/1.0".to_vec()];
        match before.filter(|b| b.client_roots == client_roots) {
            Some(b) => {
                config.session_storage = Arc::clone(&b.config.session_storage);
                config.ticketer = Arc::clone(&b.config.ticketer);
            }
            None => {
                config.session_storage =
                    rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE);
                config.ticketer = rustls::crypto::ring::Ticketer::new()
                    .map_err(|e| format!("tls tickets: {e}"))?;
            }
        }
        Ok(Terminator {
            config: Arc::new(config),
            certificates,
            client_roots,
        })
    }

    /// Whether both check client certificates alike: a connection set up
    /// under one may go on under the other.
    pub(crate) fn same_clients(&self, other: &Terminator) -> bool {
        self.client_roots == other.client_roots
    }
}

/// A certificate chain and its key, the DNS names the certificate is for,
/// and when the chain stops working: the earliest `notAfter` (Unix seconds)
/// of the certificate and the intermediates given with it, as an expiring
/// intermediate fails clients as surely as an expiring certificate.
fn load_pair(
    cert_path: &Path,
    key_path: &Path,
    provider: &CryptoProvider,
) -> Result<(CertifiedKey, Vec<String>, i64), String> {
    let chain = read_certs(cert_path)?;
    let Some(leaf) = chain.first() else {
        return Err(format!(
            "cert {}: no certificate in it",
            cert_path.display()
        ));
    };
    let (names, leaf_not_after) =
        describe(leaf).map_err(|e| format!("cert {}: {e}", cert_path.display()))?;
    // An intermediate this parser cannot read is left to the clients to judge.
    let not_after = chain
        .iter()
        .skip(1)
        .filter_map(|c| x509_parser::parse_x509_certificate(c.as_ref()).ok())
        .map(|(_, c)| c.validity().not_after.timestamp())
        .fold(leaf_not_after, i64::min);
    let key = PrivateKeyDer::from_pem_file(key_path)
        .map_err(|e| format!("key {}: {e}", key_path.display()))?;
    let certified = CertifiedKey::from_der(chain, key, provider).map_err(|e| {
        format!(
            "key {} does not fit cert {}: {e}",
            key_path.display(),
            cert_path.display()
        )
    })?;
    Ok((certified, names, not_after))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate in it", path.display()));
    }
    Ok(certs)
}

/// The lower-case DNS names of a certificate's subject alternative names,
/// and its `notAfter`.
fn describe(leaf: &CertificateDer<'_>) -> Result<(Vec<String>, i64), String> {
    let ee = webpki::EndEntityCert::try_from(leaf).map_err(|e| format!("{e:?}"))?;
    let names = ee.valid_dns_names().map(str::to_ascii_lowercase).collect();
    let (_, parsed) =
        x509_parser::parse_x509_certificate(leaf.as_ref()).map_err(|e| e.to_string())?;
    Ok((names, parsed.validity().not_after.timestamp()))
}

/// Picks a certificate by the ClientHello's server name and, among
/// certificates for the same name (an RSA and an ECDSA one), by what the
/// client can verify.
#[derive(Debug, Default)]
struct SniResolver {
    exact: HashMap<String, Vec<Arc<CertifiedKey>>>,
    /// `*.example.com` is kept under `example.com`.
    wildcard: HashMap<String, Vec<Arc<CertifiedKey>>>,
    default: Option<Arc<CertifiedKey>>,
}

impl SniResolver {
    /// Adds a certificate for `names`; the first one added is the default.
    /// Certificates sharing a name are tried in the order they were added.
    fn add(&mut self, key: &Arc<CertifiedKey>, names: &[String]) {
        if self.default.is_none() {
            self.default = Some(Arc::clone(key));
        }
        for name in names {
            let table = match name.strip_prefix("*.") {
                Some(parent) => self.wildcard.entry(parent.to_owned()),
                None => self.exact.entry(name.clone()),
            };
            let list = table.or_default();
            if !list.iter().any(|k| Arc::ptr_eq(k, key)) {
                list.push(Arc::clone(key));
            }
        }
    }

    /// The certificate for `server_name`: the first of that name whose key
    /// signs with one of `schemes` (the client's), else the first of that
    /// name (the handshake then fails as it would have).
    fn pick(
        &self,
        server_name: Option<&str>,
        schemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        let fitting = |list: &Vec<Arc<CertifiedKey>>| {
            let fits = |k: &&Arc<CertifiedKey>| k.key.choose_scheme(schemes).is_some();
            // One certificate: nothing to choose (and no signer to make).
            match list.as_slice() {
                [one] => Some(Arc::clone(one)),
                _ => list.iter().find(fits).or(list.first()).cloned(),
            }
        };
        if let Some(name) = server_name {
            // As the route was picked: one trailing dot (the DNS root) is
            // not part of the name.
            let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
            if let Some(list) = self.exact.get(&name) {
                return fitting(list);
            }
            if let Some((_, parent)) = name.split_once('.')
                && let Some(list) = self.wildcard.get(parent)
            {
                return fitting(list);
            }
        }
        self.default.clone()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.pick(hello.server_name(), hello.signature_schemes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(tag: u8) -> Arc<CertifiedKey> {
        // Only identity matters here: a chain holding one marker byte.
        let provider = rustls::crypto::ring::default_provider();
        let kp = rcgen::KeyPair::generate().expect("key");
        let der = PrivateKeyDer::try_from(kp.serialize_der()).expect("der");
        let signer = provider.key_provider.load_private_key(der).expect("signer");
        Arc::new(CertifiedKey::new(
            vec![CertificateDer::from(vec![tag])],
            signer,
        ))
    }

    /// A certificate for `names` and its key, written as PEM files.
    fn pem_pair(dir: &Path, tag: &str, names: &[&str]) -> (std::path::PathBuf, std::path::PathBuf) {
        let names: Vec<String> = names.iter().map(|s| (*s).to_owned()).collect();
        let cert = rcgen::generate_simple_self_signed(names).expect("cert");
        let (c, k) = (
            dir.join(format!("{tag}.crt")),
            dir.join(format!("{tag}.key")),
        );
        std::fs::write(&c, cert.cert.pem()).expect("write cert");
        std::fs::write(&k, cert.signing_key.serialize_pem()).expect("write key");
        (c, k)
    }

    #[test]
    fn certificates_load_with_their_names_and_expiry_and_a_wrong_key_is_named() {
        let dir = std::env::temp_dir().join(format!("weir-http-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let a = pem_pair(&dir, "a", &["a.example.com", "*.a.example.com"]);
        let b = pem_pair(&dir, "b", &["b.example.com"]);
        let t = Terminator::load(
            &ServerTls {
                certificates: vec![a.clone(), b.clone()],
                client_ca: None,
            },
            None,
        )
        .expect("load");
        assert_eq!(t.certificates.len(), 2);
        assert_eq!(t.certificates[0].file, a.0.display().to_string());
        // rcgen's default validity ends in 4096.
        assert!(
            t.certificates[0].not_after > 4_000_000_000,
            "{:?}",
            t.certificates
        );
        assert_eq!(
            t.config.alpn_protocols,
            [b"h2".to_vec(), b"http/1.1".to_vec(), b"http/1.0".to_vec()]
        );

        let crossed = Terminator::load(
            &ServerTls {
                certificates: vec![(a.0.clone(), b.1.clone())],
                client_ca: None,
            },
            None,
        )
        .expect_err("a key that does not fit");
        assert!(crossed.contains("does not fit"), "{crossed}");
        assert!(crossed.contains(&b.1.display().to_string()), "{crossed}");
        // A chain whose intermediate ends first: the chain ends with it.
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.not_after = rcgen::date_time_ymd(2030, 1, 1);
        let ca = rcgen::CertifiedIssuer::self_signed(
            ca_params,
            rcgen::KeyPair::generate().expect("ca key"),
        )
        .expect("ca cert");
        let leaf_key = rcgen::KeyPair::generate().expect("leaf key");
        let leaf = rcgen::CertificateParams::new(vec!["c.example.com".to_owned()])
            .expect("leaf")
            .signed_by(&leaf_key, &ca)
            .expect("leaf cert");
        let (c_crt, c_key) = (dir.join("c.crt"), dir.join("c.key"));
        std::fs::write(&c_crt, format!("{}{}", leaf.pem(), ca.pem())).expect("chain");
        std::fs::write(&c_key, leaf_key.serialize_pem()).expect("key");
        let chained = Terminator::load(
            &ServerTls {
                certificates: vec![(c_crt, c_key)],
                client_ca: None,
            },
            None,
        )
        .expect("a chain");
        // 2030-01-01T00:00:00Z
        assert_eq!(chained.certificates[0].not_after, 1_893_456_000);

        let missing = Terminator::load(
            &ServerTls {
                certificates: vec![(dir.join("nope.crt"), a.1)],
                client_ca: None,
            },
            None,
        )
        .expect_err("a missing file");
        assert!(missing.contains("nope.crt"), "{missing}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    impl SniResolver {
        /// [`SniResolver::pick`] for a client that verifies any key.
        fn pick_any(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
            use rustls::SignatureScheme::*;
            self.pick(
                server_name,
                &[ECDSA_NISTP256_SHA256, ED25519, RSA_PSS_SHA256],
            )
        }
    }

    fn key_for(tag: u8, alg: &'static rcgen::SignatureAlgorithm) -> Arc<CertifiedKey> {
        let provider = rustls::crypto::ring::default_provider();
        let kp = rcgen::KeyPair::generate_for(alg).expect("key");
        let der = PrivateKeyDer::try_from(kp.serialize_der()).expect("der");
        let signer = provider.key_provider.load_private_key(der).expect("signer");
        Arc::new(CertifiedKey::new(
            vec![CertificateDer::from(vec![tag])],
            signer,
        ))
    }

    #[test]
    fn certificates_of_one_name_are_picked_by_what_the_client_verifies() {
        use rustls::SignatureScheme::*;
        let (ecdsa, ed) = (
            key_for(1, &rcgen::PKCS_ECDSA_P256_SHA256),
            key_for(2, &rcgen::PKCS_ED25519),
        );
        let mut r = SniResolver::default();
        r.add(&ecdsa, &["a.example.com".into(), "*.example.com".into()]);
        r.add(&ed, &["a.example.com".into(), "*.example.com".into()]);
        let tag = |k: Option<Arc<CertifiedKey>>| k.map(|k| k.cert[0].as_ref()[0]);
        for name in ["a.example.com", "x.example.com"] {
            assert_eq!(tag(r.pick(Some(name), &[ED25519])), Some(2), "{name}");
            assert_eq!(
                tag(r.pick(Some(name), &[ECDSA_NISTP256_SHA256, ED25519])),
                Some(1)
            );
            // Neither fits: the first, and the handshake fails as before.
            assert_eq!(tag(r.pick(Some(name), &[RSA_PSS_SHA256])), Some(1));
        }
    }

    #[test]
    fn sni_picks_exact_then_wildcard_then_the_default() {
        let (a, b, c) = (key(1), key(2), key(3));
        let mut r = SniResolver::default();
        r.add(&a, &["a.example.com".into()]);
        r.add(&b, &["*.example.com".into(), "b.example.org".into()]);
        r.add(&c, &["a.example.com".into()]);
        let tag = |k: Option<Arc<CertifiedKey>>| k.map(|k| k.cert[0].as_ref()[0]);
        assert_eq!(tag(r.pick_any(Some("A.Example.com"))), Some(1));
        assert_eq!(tag(r.pick_any(Some("x.example.com"))), Some(2));
        assert_eq!(tag(r.pick_any(Some("b.example.org"))), Some(2));
        // A wildcard covers one label only.
        assert_eq!(tag(r.pick_any(Some("x.y.example.com"))), Some(1));
        assert_eq!(tag(r.pick_any(Some("example.com"))), Some(1));
        assert_eq!(tag(r.pick_any(None)), Some(1));
        // One trailing dot (the DNS root), as routes are matched.
        assert_eq!(tag(r.pick_any(Some("b.example.org."))), Some(2));
        assert_eq!(tag(r.pick_any(Some("x.example.com."))), Some(2));
    }

    #[test]
    fn sessions_go_on_while_clients_are_checked_as_before() {
        let dir = std::env::temp_dir().join(format!("weir-http-tls-s-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let a = pem_pair(&dir, "a", &["a.example.com"]);
        let ca = pem_pair(&dir, "ca", &["ca.example.com"]);
        let plain = |client_ca: Option<&Path>| ServerTls {
            certificates: vec![a.clone()],
            client_ca: client_ca.map(Path::to_path_buf),
        };
        let same = |x: &Terminator, y: &Terminator| {
            std::ptr::addr_eq(
                Arc::as_ptr(&x.config.ticketer),
                Arc::as_ptr(&y.config.ticketer),
            ) && std::ptr::addr_eq(
                Arc::as_ptr(&x.config.session_storage),
                Arc::as_ptr(&y.config.session_storage),
            )
        };
        let first = Terminator::load(&plain(None), None).expect("load");
        let again = Terminator::load(&plain(None), Some(&first)).expect("load");
        assert!(same(&first, &again) && first.same_clients(&again));
        let asking = Terminator::load(&plain(Some(&ca.0)), Some(&again)).expect("load");
        assert!(!same(&again, &asking) && !again.same_clients(&asking));
        // Another CA under the same file name: new terms too.
        let other = pem_pair(&dir, "ca", &["other-ca.example.com"]);
        let moved = Terminator::load(&plain(Some(&other.0)), Some(&asking)).expect("load");
        assert!(!same(&asking, &moved) && !asking.same_clients(&moved));
        let _ = std::fs::remove_dir_all(&dir);
    }
}

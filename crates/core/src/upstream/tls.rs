//! TLS client configurations, for probes (`https = true`) and for backends
//! (`backend_tls`): built once at start (so a bad file fails the start, not a
//! connection), verifying against the given CA bundle, the system roots, or —
//! with verification off — nothing but the handshake signatures; optionally
//! presenting a client certificate.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use weir_config::ProbeTls;

/// Builds the client configuration of a check; `alpn` lists the protocols to offer.
pub(crate) fn client_config(tls: &ProbeTls, alpn: &[&[u8]]) -> Result<Arc<ClientConfig>, String> {
    config(!tls.skip_verify, tls.ca.as_deref(), None, alpn)
}

/// The client configuration of a route's `backend_tls`.
pub(crate) fn backend_config(tls: &weir_config::BackendTls) -> Result<Arc<ClientConfig>, String> {
    let client = tls
        .client_cert
        .as_ref()
        .map(|(c, k)| (c.as_path(), k.as_path()));
    config(tls.verify, tls.ca.as_deref(), client, &[])
}

fn config(
    verify: bool,
    ca: Option<&Path>,
    client: Option<(&Path, &Path)>,
    alpn: &[&[u8]],
) -> Result<Arc<ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?;
    let builder = if verify {
        builder.with_root_certificates(roots(ca)?)
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(SkipVerify(
                provider.signature_verification_algorithms,
            )))
    };
    let mut config = match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("cert {}: {e}", cert.display()))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| format!("key {}: {e}", key.display()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("client certificate: {e}"))?
        }
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

fn roots(ca: Option<&Path>) -> Result<Arc<RootCertStore>, String> {
    let mut store = RootCertStore::empty();
    match ca {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("ca {}: {e}", path.display()))?;
            for cert in certs {
                let cert = cert.map_err(|e| format!("ca {}: {e}", path.display()))?;
                store
                    .add(cert)
                    .map_err(|e| format!("ca {}: {e}", path.display()))?;
            }
            if store.is_empty() {
                return Err(format!("ca {}: no certificate found", path.display()));
            }
        }
        None => return system_roots(),
    }
    Ok(Arc::new(store))
}

/// The system's CA certificates, read at most once a minute: every probe
/// target of a rebuild (each reload, DNS change or `weir backend add`) has its
/// own client configuration, and reading the system bundle for each of a
/// thousand targets took seconds and as many copies of it.
fn system_roots() -> Result<Arc<RootCertStore>, String> {
    static READ: std::sync::Mutex<Option<(Instant, Arc<RootCertStore>)>> =
        std::sync::Mutex::new(None);
    let mut read = crate::sync::lock(&READ);
    if let Some((at, roots)) = &*read
        && at.elapsed() < Duration::from_secs(60)
    {
        return Ok(Arc::clone(roots));
    }
    let mut store = RootCertStore::empty();
    let (added, _) =
        store.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    if added == 0 {
        return Err("no system CA certificates found; set `ca` or `tls_skip_verify`".into());
    }
    let roots = Arc::new(store);
    *read = Some((Instant::now(), Arc::clone(&roots)));
    Ok(roots)
}

/// The name to send as SNI and to verify: `tls_server_name`, else the Host
/// header without its port, else the probed IP.
pub(crate) fn server_name(
    tls: &ProbeTls,
    host: Option<&str>,
    ip: std::net::IpAddr,
) -> ServerName<'static> {
    let from_host = host.map(|h| {
        let name = match h.rsplit_once(':') {
            // "name:port" or "[v6]:port"; a bare IPv6 address has more colons.
            Some((name, port))
                if port.bytes().all(|b| b.is_ascii_digit()) && !name.contains(':') =>
            {
                name
            }
            Some((name, port))
                if port.bytes().all(|b| b.is_ascii_digit()) && name.ends_with(']') =>
            {
                name
            }
            _ => h,
        };
        name.trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned()
    });
    tls.server_name
        .clone()
        .or(from_host)
        .and_then(|n| ServerName::try_from(n).ok())
        .unwrap_or(ServerName::IpAddress(ip.into()))
}

/// `tls_skip_verify`: any certificate is accepted, but the handshake signatures
/// are still checked so the session itself is sound.
#[derive(Debug)]
struct SkipVerify(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for SkipVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two configurations that verify against the system roots share one
    /// read of them (a machine without any fails both alike).
    #[test]
    fn the_system_roots_are_read_once_for_many_configurations() {
        match (roots(None), roots(None)) {
            (Ok(a), Ok(b)) => assert!(Arc::ptr_eq(&a, &b)),
            (Err(a), Err(b)) => assert_eq!(a, b),
            (a, b) => panic!("{a:?} then {b:?}"),
        }
    }

    #[test]
    fn server_name_prefers_explicit_then_host_then_ip() {
        let ip: std::net::IpAddr = "127.0.0.1".parse().expect("ip");
        let none = ProbeTls::default();
        assert_eq!(
            server_name(&none, None, ip),
            ServerName::IpAddress(ip.into())
        );
        assert_eq!(
            server_name(&none, Some("db.internal:8008"), ip),
            ServerName::try_from("db.internal").expect("name")
        );
        assert_eq!(
            server_name(&none, Some("db.internal"), ip),
            ServerName::try_from("db.internal").expect("name")
        );
        let explicit = ProbeTls {
            server_name: Some("api.example.com".into()),
            ..ProbeTls::default()
        };
        assert_eq!(
            server_name(&explicit, Some("db.internal"), ip),
            ServerName::try_from("api.example.com").expect("name")
        );
    }
}

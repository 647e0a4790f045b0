//! Active health probes: one probe of one backend is a TCP connect, an HTTP/1.1
//! GET ([`http`]) or a gRPC health check ([`grpc`]), each optionally over TLS,
//! or a DNS query or a datagram and its answer ([`datagram`]).
//! Every probe is bounded by the check's `timeout` as a whole and says in a few
//! words what it saw; that text becomes the cause of a transition.
//! [`schedule`] runs them and hands each result to the pools.

mod datagram;
mod grpc;
mod http;
pub(crate) mod schedule;

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Waker};
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use weir_config::{DnsCheck, GrpcCheck, HttpCheck, ProbeTls, UdpCheck};

use crate::Reason;
use crate::health::Report;
use crate::upstream::tls;

/// What to probe.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Probe {
    Tcp,
    Http(HttpCheck),
    Grpc(GrpcCheck),
    Dns(DnsCheck),
    Udp(UdpCheck),
}

/// A probe ready to run against one address: its TLS connector is built once,
/// and an HTTP probe keeps its connection open between probes when the server
/// allows it (as Envoy does by default), so a probe costs one request instead of
/// a connect, a request and a close.
pub(crate) struct Prober {
    probe: Probe,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    conn: Option<Conn>,
    /// The HTTP request, built once.
    request: Vec<u8>,
    /// The host the HTTP request names (the check's, else the address).
    host: String,
    /// What a TCP probe connection starts with: a PROXY header of the
    /// `LOCAL` kind (the spec's for a proxy's own checks), or nothing.
    proxy: Vec<u8>,
}

/// A probe connection kept for the next probe.
enum Conn {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl std::fmt::Debug for Prober {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prober")
            .field("probe", &self.probe)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Prober {
    /// Takes `old`'s kept connection when neither speaks TLS: a reload that
    /// keeps a probe target keeps its connection. (A TLS one is opened
    /// anew, with the certificates the reload read.)
    pub(crate) fn adopt_connection(&mut self, old: Prober) {
        if self.tls.is_none()
            && old.tls.is_none()
            && self.probe == old.probe
            && self.proxy == old.proxy
        {
            self.conn = old.conn;
        }
    }

    pub(crate) fn new(
        probe: Probe,
        addr: SocketAddr,
        proxy: weir_config::ProxyVersion,
    ) -> Result<Prober, String> {
        let mut header = Vec::new();
        match proxy {
            weir_config::ProxyVersion::Off => {}
            weir_config::ProxyVersion::V1 => weir_wire::proxy::encode_v1_unknown(&mut header),
            weir_config::ProxyVersion::V2 => weir_wire::proxy::encode_v2(
                weir_wire::proxy::Command::Local,
                weir_wire::proxy::Transport::Unspec,
                None,
                &[],
                &mut header,
            )
            .map_err(|e| format!("PROXY header: {e}"))?,
        }
        let tls_of = |t: &ProbeTls, host: Option<&str>, alpn: &[&[u8]]| -> Result<_, String> {
            let config = tls::client_config(t, alpn)?;
            Ok((
                TlsConnector::from(config),
                tls::server_name(t, host, addr.ip()),
            ))
        };
        let tls = match &probe {
            Probe::Tcp | Probe::Dns(_) | Probe::Udp(_) => None,
            Probe::Http(h) => h
                .tls
                .as_ref()
                .map(|t| tls_of(t, h.host.as_deref(), &[b"http/1.1"]))
                .transpose()?,
            Probe::Grpc(g) => g
                .tls
                .as_ref()
                .map(|t| tls_of(t, None, &[b"h2"]))
                .transpose()?,
        };
        let (request, host) = match &probe {
            Probe::Http(check) => {
                let host = check.host.clone().unwrap_or_else(|| addr.to_string());
                (
                    http::request(check, &host, &check.path, &check.method),
                    host,
                )
            }
            _ => (Vec::new(), String::new()),
        };
        Ok(Prober {
            probe,
            tls,
            conn: None,
            request,
            host,
            proxy: header,
        })
    }

    /// Runs one probe, bounded by `timeout` as a whole. A probe cut by the
    /// timeout drops its connection.
    pub(crate) async fn run(&mut self, addr: SocketAddr, timeout: Duration) -> Report {
        match tokio::time::timeout(timeout, self.run_inner(addr)).await {
            Ok(report) => report,
            Err(_) => Report::failed(
                Reason::Timeout,
                format!("timeout after {}", humanize(timeout)),
            ),
        }
    }

    async fn run_inner(&mut self, addr: SocketAddr) -> Report {
        let Prober {
            probe,
            tls,
            conn,
            request,
            host,
            proxy,
        } = self;
        match probe {
            // A connect says enough: no header needed before the close.
            Probe::Tcp => match connect(addr).await {
                Ok(_) => Report::passed("connect ok"),
                Err(report) => report,
            },
            Probe::Http(check) => {
                if let Some(mut c) = conn.take().and_then(|mut c| (!c.has_news()).then_some(c)) {
                    let outcome = http_on(&mut c, request, check, host).await;
                    // A kept connection the server has closed meanwhile is not a
                    // failure of the backend: try again on a fresh one.
                    if !outcome.io_failure {
                        if outcome.reusable {
                            *conn = Some(c);
                        }
                        return outcome.report;
                    }
                }
                let mut c = match Box::pin(open(addr, proxy, tls.as_ref())).await {
                    Ok(c) => c,
                    Err(report) => return report,
                };
                let outcome = http_on(&mut c, request, check, host).await;
                if outcome.reusable {
                    *conn = Some(c);
                }
                outcome.report
            }
            Probe::Dns(check) => datagram::dns(addr, check).await,
            Probe::Udp(check) => datagram::udp(addr, check).await,
            Probe::Grpc(check) => {
                // The name the server is asked for by TLS is the one it is
                // asked for by HTTP/2: a server with virtual hosts answers
                // for it, not for the address.
                let authority = match check.tls.as_ref().and_then(|t| t.server_name.as_deref()) {
                    Some(name) if name.parse::<std::net::IpAddr>().is_err() => {
                        format!("{name}:{}", addr.port())
                    }
                    _ => addr.to_string(),
                };
                match Box::pin(open(addr, proxy, tls.as_ref())).await {
                    Ok(Conn::Plain(s)) => {
                        Box::pin(grpc::check(s, &authority, false, &check.service)).await
                    }
                    Ok(Conn::Tls(s)) => {
                        Box::pin(grpc::check(*s, &authority, true, &check.service)).await
                    }
                    Err(report) => report,
                }
            }
        }
    }
}

/// Connects, with the socket options every probe connection gets.
async fn connect(addr: SocketAddr) -> Result<TcpStream, Report> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| connect_failure(&e))?;
    let _ = stream.set_nodelay(true);
    // Close probe connections with a reset, as HAProxy does: no FIN exchange and
    // no TIME_WAIT on either side, which matters at thousands of probes a second.
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    Ok(stream)
}

/// Connects, sends `proxy` (a PROXY header, or nothing) and, when the check
/// uses TLS, completes the handshake.
async fn open(
    addr: SocketAddr,
    proxy: &[u8],
    tls: Option<&(TlsConnector, ServerName<'static>)>,
) -> Result<Conn, Report> {
    let mut stream = connect(addr).await?;
    if !proxy.is_empty() {
        use tokio::io::AsyncWriteExt as _;
        stream
            .write_all(proxy)
            .await
            .map_err(|e| connect_failure(&e))?;
    }
    match tls {
        None => Ok(Conn::Plain(stream)),
        Some((connector, name)) => match connector.connect(name.clone(), stream).await {
            Ok(s) => Ok(Conn::Tls(Box::new(s))),
            Err(e) => Err(Report::failed(Reason::Tls, format!("tls: {e}"))),
        },
    }
}

impl Conn {
    /// Whether a kept connection has something to say before it was asked:
    /// bytes (a server's unsolicited 408 at its idle timeout), the end of the
    /// stream, or an error. Any of it makes the connection unfit for the next
    /// probe, which would read the stale answer as the backend's; checked
    /// without waiting.
    fn has_news(&mut self) -> bool {
        let mut byte = [0u8; 1];
        let mut buf = ReadBuf::new(&mut byte);
        let mut cx = Context::from_waker(Waker::noop());
        let polled = match self {
            Conn::Plain(s) => Pin::new(s).poll_read(&mut cx, &mut buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(&mut cx, &mut buf),
        };
        polled.is_ready()
    }
}

async fn http_on(conn: &mut Conn, request: &[u8], check: &HttpCheck, host: &str) -> http::Outcome {
    match conn {
        Conn::Plain(s) => http::exchange(s, request, check, host).await,
        Conn::Tls(s) => http::exchange(s.as_mut(), request, check, host).await,
    }
}

fn connect_failure(e: &std::io::Error) -> Report {
    match Reason::from_connect_io(e) {
        Reason::Refused => Report::failed(Reason::Refused, "connect refused"),
        Reason::Reset => Report::failed(Reason::Reset, "connect reset"),
        Reason::Timeout => Report::failed(Reason::Timeout, "connect timeout"),
        other => Report::failed(other, format!("connect failed: {e}")),
    }
}

fn humanize(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

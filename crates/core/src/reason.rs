//! Why a connection ended, a connect failed or a probe did not pass: one
//! vocabulary for the whole data plane. Each [`Reason`] has a stable
//! snake_case name (the `reason` label of the metrics and the `reason` or
//! `error` field of the access log), a [`Side`] that says whose doing it was,
//! whether another backend may be tried, and the HTTP status a layer-7 client
//! gets for it.

/// Whose doing a [`Reason`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// The client: it closed, failed, sent something invalid or nothing in time.
    Client,
    /// A backend: it refused, reset, timed out, answered wrongly, or is down.
    Backend,
    /// weir itself: a limit, a timeout of its own, an operator's decision,
    /// shutdown. Never held against a backend's health.
    Internal,
}

/// Why something stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    // How a relayed connection ended.
    /// Normal end: both directions reached EOF, the client's first.
    ClientClosed,
    /// Normal end: both directions reached EOF, the backend's first.
    BackendClosed,
    /// Reading from or writing to the client failed (reset, broken pipe).
    ClientError,
    /// Reading from or writing to the backend failed.
    BackendError,
    /// No byte moved in either direction for `idle_timeout`.
    IdleTimeout,
    /// The listener's `shutdown_timeout` ran out.
    Shutdown,
    /// An operator closed the connection (`weir connections close`).
    Operator,
    /// The backend went down and its pool has `close_on_down`.
    BackendDown,
    /// The backend was drained, disabled or demoted, and `drain_timeout` ran out.
    DrainTimeout,

    // Refused before reaching a backend.
    /// The listener was at `max_connections`.
    MaxConnections,
    /// No route matched the connection.
    NoRoute,
    /// The route's pool had no backend to pick.
    NoBackend,
    /// No complete PROXY header or TLS ClientHello within `handshake_timeout`.
    HandshakeTimeout,
    /// A trusted source sent no valid PROXY header, or an untrusted one sent one.
    ProxyProtocol,
    /// The firewall's lists refused the source (`deny`, `allow`).
    Firewall,
    /// The source is over a `per_client` limit.
    RateLimit,
    /// Every serving backend was at its `max_connections` and the pool's
    /// queue held `max_queue` already.
    QueueFull,
    /// Waited `queue_timeout` in the pool's queue for a backend with room.
    QueueTimeout,

    // A connect (or probe) to a backend failed.
    /// No answer within the connect or probe timeout.
    Timeout,
    /// The backend refused the connection.
    Refused,
    /// The backend reset the connection.
    Reset,
    /// The TLS handshake with the backend failed.
    Tls,
    /// Another connect error.
    ConnectOther,

    // A probe reached the backend, which answered wrongly.
    /// HTTP status not in `expect_status`.
    Status,
    /// Body without `expect_body`.
    Body,
    /// An answer that is not valid HTTP, HTTP/2 or gRPC, or a connection
    /// broken mid-answer.
    Protocol,
    /// gRPC answered, but not SERVING.
    NotServing,
    /// gRPC answered with an error status.
    GrpcStatus,

    // HTTP requests (l7 routes).
    /// No HTTP rule of the route matched the request.
    NoRule,
    /// An HTTP request over TLS whose host leads to another route than the
    /// one its connection's SNI reached (domain fronting, or a connection a
    /// browser reuses for another name its certificate covers).
    Misdirected,
    /// The backend's response header did not come within
    /// `timeouts.upstream_response`.
    UpstreamTimeout,
    /// A request's header did not arrive in full within
    /// `timeouts.request_header`.
    HeaderTimeout,
    /// A request's header was larger than `max_header_bytes`.
    HeaderTooLarge,
    /// A request's body was larger than `max_body_bytes`.
    BodyTooLarge,
    /// A request that is not valid HTTP, or ambiguous (smuggling).
    BadRequest,
    /// A request policy of the route refused the request.
    Policy,
    /// The authentication service refused the request (its answer went to
    /// the client).
    AuthDenied,
    /// The authentication service failed, was too slow, or its breaker was
    /// open, and `failure = "deny"`.
    AuthUnavailable,
    /// The authentication service had `max_calls` calls under way for all
    /// of `timeout`: refused without a call, whatever `failure` says.
    AuthBusy,
    /// A UDP flow got the replies its listener's `responses` allows (a DNS
    /// answer): its normal end.
    Responses,

    // weir's own trouble.
    /// weir could not create a socket or a pipe: out of file descriptors
    /// (EMFILE, ENFILE), socket buffers (ENOBUFS), memory (ENOMEM) or local
    /// ports (EADDRNOTAVAIL). Never held against a backend.
    LocalResources,
}

impl Reason {
    /// How many reasons there are: counters indexed by reason have this size.
    pub const COUNT: usize = Reason::LocalResources as usize + 1;

    /// `weir_listener_connections_rejected_total{reason}`.
    pub const REJECTIONS: [Reason; 13] = [
        Reason::MaxConnections,
        Reason::NoRoute,
        Reason::NoBackend,
        Reason::QueueFull,
        Reason::QueueTimeout,
        Reason::HandshakeTimeout,
        Reason::ProxyProtocol,
        Reason::Firewall,
        Reason::RateLimit,
        Reason::LocalResources,
        Reason::HeaderTimeout,
        Reason::HeaderTooLarge,
        Reason::BadRequest,
    ];

    /// `weir_route_connections_failed_total{reason}`: why an l4 connection
    /// routed to a pool never reached a backend (its retries spent).
    pub const ROUTE_FAILURES: [Reason; 9] = [
        Reason::NoBackend,
        Reason::QueueFull,
        Reason::QueueTimeout,
        Reason::Timeout,
        Reason::Refused,
        Reason::Reset,
        Reason::Tls,
        Reason::ConnectOther,
        Reason::LocalResources,
    ];

    /// `weir_backend_connect_errors_total{reason}`.
    pub const CONNECT_ERRORS: [Reason; 6] = [
        Reason::Timeout,
        Reason::Refused,
        Reason::Reset,
        Reason::Tls,
        Reason::ConnectOther,
        Reason::LocalResources,
    ];

    /// Failed `weir_health_checks_total{result="failure",reason}`.
    pub const PROBE_FAILURES: [Reason; 10] = [
        Reason::Timeout,
        Reason::Refused,
        Reason::Reset,
        Reason::ConnectOther,
        Reason::Tls,
        Reason::Status,
        Reason::Body,
        Reason::Protocol,
        Reason::NotServing,
        Reason::GrpcStatus,
    ];

    /// The stable name: a metric label value and an access-log word.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClientClosed => "client_closed",
            Self::BackendClosed => "backend_closed",
            Self::ClientError => "client_error",
            Self::BackendError => "backend_error",
            Self::IdleTimeout => "idle_timeout",
            Self::Shutdown => "shutdown",
            Self::Operator => "operator",
            Self::BackendDown => "backend_down",
            Self::DrainTimeout => "drain_timeout",
            Self::MaxConnections => "max_connections",
            Self::NoRoute => "no_route",
            Self::NoBackend => "no_backend",
            Self::HandshakeTimeout => "handshake_timeout",
            Self::ProxyProtocol => "proxy_protocol",
            Self::Firewall => "firewall",
            Self::RateLimit => "rate_limit",
            Self::QueueFull => "queue_full",
            Self::QueueTimeout => "queue_timeout",
            Self::Timeout => "timeout",
            Self::Refused => "refused",
            Self::Reset => "reset",
            Self::Tls => "tls",
            Self::ConnectOther => "other",
            Self::Status => "status",
            Self::Body => "body",
            Self::Protocol => "protocol",
            Self::NotServing => "not_serving",
            Self::GrpcStatus => "grpc_status",
            Self::NoRule => "no_rule",
            Self::Misdirected => "misdirected",
            Self::UpstreamTimeout => "upstream_timeout",
            Self::HeaderTimeout => "header_timeout",
            Self::HeaderTooLarge => "header_too_large",
            Self::BodyTooLarge => "body_too_large",
            Self::BadRequest => "bad_request",
            Self::Policy => "policy",
            Self::AuthDenied => "auth_denied",
            Self::AuthUnavailable => "auth_unavailable",
            Self::AuthBusy => "auth_busy",
            Self::Responses => "responses",
            Self::LocalResources => "local_resources",
        }
    }

    /// The `reason` label of a failed health check: as [`Reason::as_str`],
    /// except that another connect error reads `connect_error`.
    pub fn probe_label(self) -> &'static str {
        match self {
            Self::ConnectOther => "connect_error",
            r => r.as_str(),
        }
    }

    pub fn side(self) -> Side {
        match self {
            Self::ClientClosed
            | Self::ClientError
            | Self::NoRoute
            | Self::HandshakeTimeout
            | Self::ProxyProtocol
            | Self::Firewall
            | Self::RateLimit
            | Self::NoRule
            | Self::Misdirected
            | Self::HeaderTimeout
            | Self::HeaderTooLarge
            | Self::BodyTooLarge
            | Self::BadRequest
            | Self::Policy
            | Self::AuthDenied => Side::Client,
            Self::BackendClosed
            | Self::BackendError
            | Self::BackendDown
            | Self::NoBackend
            | Self::Timeout
            | Self::Refused
            | Self::Reset
            | Self::Tls
            | Self::ConnectOther
            | Self::Status
            | Self::Body
            | Self::Protocol
            | Self::NotServing
            | Self::GrpcStatus
            | Self::UpstreamTimeout => Side::Backend,
            Self::IdleTimeout
            | Self::Shutdown
            | Self::Operator
            | Self::DrainTimeout
            | Self::MaxConnections
            | Self::QueueFull
            | Self::QueueTimeout
            | Self::AuthUnavailable
            | Self::AuthBusy
            | Self::Responses
            | Self::LocalResources => Side::Internal,
        }
    }

    /// True for a backend's failure to accept a connection: nothing of the
    /// client's reached it, so another backend may be tried. (Not weir's own
    /// shortage: another backend would meet it too.)
    pub fn retry(self) -> bool {
        matches!(
            self,
            Self::Timeout | Self::Refused | Self::Reset | Self::Tls | Self::ConnectOther
        )
    }

    /// The status a layer-7 client gets when its request ends this way
    /// before a response: 504 for a backend slow to answer, 503 when no
    /// backend can serve, 502 for any other backend failure (a connect that
    /// timed out too: nothing was sent, and a gRPC client may try again),
    /// 400 or 408 for the client's own faults; `None` where no response can
    /// be sent.
    pub fn http_status(self) -> Option<u16> {
        match self {
            Self::UpstreamTimeout => Some(504),
            Self::NoBackend
            | Self::MaxConnections
            | Self::QueueFull
            | Self::QueueTimeout
            | Self::BackendDown
            | Self::Shutdown
            | Self::AuthUnavailable
            | Self::AuthBusy
            | Self::LocalResources => Some(503),
            Self::NoRoute | Self::NoRule => Some(404),
            Self::Misdirected => Some(421),
            Self::HandshakeTimeout | Self::IdleTimeout | Self::HeaderTimeout => Some(408),
            // `ClientError`: the client broke its request's body (its
            // framing, or it left while sending it).
            Self::ProxyProtocol | Self::BadRequest | Self::ClientError => Some(400),
            Self::Firewall | Self::Policy => Some(403),
            Self::AuthDenied => Some(401),
            Self::RateLimit => Some(429),
            Self::HeaderTooLarge => Some(431),
            Self::BodyTooLarge => Some(413),
            Self::Timeout
            | Self::Refused
            | Self::Reset
            | Self::Tls
            | Self::ConnectOther
            | Self::BackendClosed
            | Self::BackendError
            | Self::DrainTimeout
            | Self::Status
            | Self::Body
            | Self::Protocol
            | Self::NotServing
            | Self::GrpcStatus => Some(502),
            Self::ClientClosed | Self::Responses | Self::Operator => None,
        }
    }

    /// The reason of a failed connect or I/O call to a backend.
    pub fn from_connect_io(err: &std::io::Error) -> Reason {
        use std::io::ErrorKind::*;
        if local_resources(err) {
            return Self::LocalResources;
        }
        match err.kind() {
            ConnectionRefused => Self::Refused,
            ConnectionReset | ConnectionAborted => Self::Reset,
            TimedOut => Self::Timeout,
            _ => Self::ConnectOther,
        }
    }
}

/// True when `err` says this process ran out of something it needs for a
/// socket: file descriptors (EMFILE, ENFILE), socket buffers (ENOBUFS),
/// memory (ENOMEM), or a local address to connect from (EADDRNOTAVAIL: every
/// ephemeral port to that backend in use, many in TIME_WAIT, or a source
/// address this host does not have; EADDRINUSE: no ephemeral port left to
/// bind a UDP flow's or probe's socket to). Such a failure is weir's, not a peer's:
/// held against the backend, it would take healthy backends down one after
/// the other. An accept loop that meets it must pause rather than retry at
/// once.
pub fn local_resources(err: &std::io::Error) -> bool {
    use rustix::io::Errno;
    err.raw_os_error().is_some_and(|code| {
        [
            Errno::MFILE,
            Errno::NFILE,
            Errno::NOBUFS,
            Errno::NOMEM,
            Errno::ADDRNOTAVAIL,
            Errno::ADDRINUSE,
        ]
        .iter()
        .any(|e| e.raw_os_error() == code)
    })
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Reason; Reason::COUNT] = [
        Reason::ClientClosed,
        Reason::BackendClosed,
        Reason::ClientError,
        Reason::BackendError,
        Reason::IdleTimeout,
        Reason::Shutdown,
        Reason::Operator,
        Reason::BackendDown,
        Reason::DrainTimeout,
        Reason::MaxConnections,
        Reason::NoRoute,
        Reason::NoBackend,
        Reason::HandshakeTimeout,
        Reason::ProxyProtocol,
        Reason::Firewall,
        Reason::RateLimit,
        Reason::QueueFull,
        Reason::QueueTimeout,
        Reason::Timeout,
        Reason::Refused,
        Reason::Reset,
        Reason::Tls,
        Reason::ConnectOther,
        Reason::Status,
        Reason::Body,
        Reason::Protocol,
        Reason::NotServing,
        Reason::GrpcStatus,
        Reason::NoRule,
        Reason::Misdirected,
        Reason::UpstreamTimeout,
        Reason::HeaderTimeout,
        Reason::HeaderTooLarge,
        Reason::BodyTooLarge,
        Reason::BadRequest,
        Reason::Policy,
        Reason::AuthDenied,
        Reason::AuthUnavailable,
        Reason::AuthBusy,
        Reason::Responses,
        Reason::LocalResources,
    ];

    #[test]
    fn names_are_unique_snake_case() {
        for (i, r) in ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "{r:?} is out of order");
            let name = r.as_str();
            assert!(name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
            assert!(ALL[..i].iter().all(|o| o.as_str() != name), "{name} twice");
        }
    }

    #[test]
    fn only_a_backends_connect_failures_allow_another_backend() {
        for r in ALL {
            assert_eq!(
                r.retry(),
                Reason::CONNECT_ERRORS.contains(&r) && r.side() == Side::Backend,
                "{r:?}"
            );
        }
        assert!(!Reason::LocalResources.retry());
    }

    #[test]
    fn running_out_of_descriptors_is_weirs_own() {
        use rustix::io::Errno;
        for errno in [
            Errno::MFILE,
            Errno::NFILE,
            Errno::NOBUFS,
            Errno::NOMEM,
            Errno::ADDRNOTAVAIL,
            Errno::ADDRINUSE,
        ] {
            let e = std::io::Error::from_raw_os_error(errno.raw_os_error());
            assert!(local_resources(&e), "{errno:?}");
            assert_eq!(Reason::from_connect_io(&e), Reason::LocalResources);
        }
        assert_eq!(Reason::LocalResources.side(), Side::Internal);
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(!local_resources(&refused));
        assert_eq!(Reason::from_connect_io(&refused), Reason::Refused);
    }

    #[test]
    fn http_statuses_follow_the_side() {
        // A connect that timed out sent nothing: a failure, not a slow answer.
        assert_eq!(Reason::Timeout.http_status(), Some(502));
        assert_eq!(Reason::UpstreamTimeout.http_status(), Some(504));
        assert_eq!(Reason::NoBackend.http_status(), Some(503));
        assert_eq!(Reason::Refused.http_status(), Some(502));
        assert_eq!(Reason::ClientClosed.http_status(), None);
        assert_eq!(Reason::ClientError.http_status(), Some(400));
        for r in ALL {
            if r.side() == Side::Backend && r != Reason::NoBackend && r != Reason::BackendDown {
                assert!(
                    matches!(r.http_status(), Some(502 | 504)),
                    "{r:?} is the backend's fault"
                );
            }
        }
    }

    #[test]
    fn probe_labels_keep_connect_error() {
        assert_eq!(Reason::ConnectOther.probe_label(), "connect_error");
        assert_eq!(Reason::ConnectOther.as_str(), "other");
        assert_eq!(Reason::Refused.probe_label(), "refused");
    }
}

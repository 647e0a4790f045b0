//! weir-wire: the byte-level protocols weir reads and writes around a connection:
//! the PROXY protocol v1/v2 ([`proxy`]), a read-only peek at a TLS ClientHello for
//! SNI and ALPN ([`client_hello`]), an HTTP/1 response as a health probe reads it
//! ([`http1`]), the rules for host names ([`name`]), the normal form of an
//! HTTP request's path ([`path`]), a parameter of its query ([`query`]), the W3C `traceparent` header
//! ([`traceparent`]), a gRPC call's `grpc-timeout` ([`grpc_timeout`]), the messages of a gRPC
//! health check ([`grpc_health`]), an operator's header value with variables
//! ([`template`]), one cookie of a `Cookie` header and a sticky cookie's
//! token ([`cookie`]), and a DNS health check's query and answer ([`dns`],
//! encoded and decoded by hickory-proto).
//!
//! Everything here is pure: `&[u8]` in, values out. No tokio, no sockets, no clocks,
//! no global state, so every parser can be unit-tested, property-tested and fuzzed
//! (targets live in the top-level `fuzz/` directory). No input can make a parser
//! panic, and input never drives an unbounded allocation.
//!
//! # Result convention
//!
//! Parsers are stateless: the caller's buffer *is* the state. Each parser takes all
//! the bytes received so far and returns `Result<Outcome, Error>`:
//!
//! - `Ok(Complete ..)`: a value, plus how many bytes of the input it covered.
//! - `Ok(Incomplete { needed })`: the bytes so far are a valid prefix; read more and
//!   call again with the whole buffer. `needed` is a lower bound on how many more bytes
//!   are required (`None` when the format cannot tell, e.g. a v1 line without CRLF).
//! - `Err(e)`: no continuation of these bytes can ever be valid; stop reading and
//!   reject. Errors are reported as early as the bytes allow.
//!
//! The TLS peek has one more outcome, `NotTls`, for a stream that is simply not TLS:
//! that is a routing fact, not a malformed input. The HTTP/1 response parser says
//! "incomplete" with `Ok(None)`.

pub mod client_hello;
pub mod cookie;
pub mod dns;
pub mod grpc_health;
pub mod grpc_timeout;
pub mod http1;
pub mod name;
pub mod path;
pub mod proxy;
pub mod query;
pub mod template;
pub mod traceparent;

mod crc32c;

//! weir's configuration, read in two stages. Stage one deserializes the TOML
//! file into raw serde types that mirror it key for key and reject unknown
//! keys; stage two validates those into the typed model re-exported here
//! ([`Config`] and friends): defaults filled in, durations, addresses, CIDRs and
//! HTTP status lists parsed, backend host names resolved, health-check CA files
//! read, keys that belong to another health-check type refused, cross-references
//! (routes to pools) and uniqueness checked. Every mistake is reported as a [`Problem`] that names
//! its key path (`pools[1].backends[0].weight: ...`), and stage two reports all
//! of them at once. The data plane only ever sees the model, never serde types.

mod diff;
mod error;
mod model;
mod raw;
mod validate;

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;

pub use diff::{Diff, diff};
pub use error::{ConfigError, Problem};
pub use model::*;

/// Parses and validates a configuration, resolving backend host names with
/// the system resolver.
pub fn load_str(text: &str) -> Result<Config, ConfigError> {
    load_str_with(text, &system_resolve)
}

/// Like [`load_str`], but backend `host:port` addresses are resolved by
/// `resolve` (literal `ip:port` addresses never reach it). Lets tests and
/// tools run without DNS.
pub fn load_str_with(
    text: &str,
    resolve: &dyn Fn(&str) -> Result<SocketAddr, String>,
) -> Result<Config, ConfigError> {
    let raw = parse(text)?;
    validate::validate(raw, resolve)
}

/// Reads `path` and loads it with [`load_str`]. A file that cannot be read
/// is a [`ConfigError`] whose problem path is the file name.
pub fn load_file(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::one(path.display().to_string(), format!("cannot read: {e}")))?;
    load_str(&text)
}

fn system_resolve(spec: &str) -> Result<SocketAddr, String> {
    spec.to_socket_addrs()
        .map_err(|e| e.to_string())?
        .next()
        .ok_or_else(|| "the name has no addresses".to_owned())
}

/// Stage one. Stops at the first error: past a syntax or type error there is
/// no reliable structure left to check.
fn parse(text: &str) -> Result<raw::RawConfig, ConfigError> {
    let de = toml::Deserializer::parse(text).map_err(|e| {
        let path = match e.span() {
            Some(span) => {
                let (line, column) = error::line_col(text, span.start);
                format!("line {line}, column {column}")
            }
            None => "TOML".to_owned(),
        };
        ConfigError::one(path, format!("TOML syntax error: {}", e.message()))
    })?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let mut path = key_path(e.path());
        let mut message = e.inner().message().to_owned();
        let mut at = "";
        // serde reports a missing key at its table; name the key itself.
        if let Some(key) = message
            .strip_prefix("missing field `")
            .and_then(|rest| rest.strip_suffix('`'))
        {
            path = if e.path().iter().len() == 0 {
                key.to_owned()
            } else {
                format!("{path}.{key}")
            };
            message = "required key is missing".to_owned();
            at = "in the table at ";
        } else if let Some(rest) = message.strip_prefix("unknown field ") {
            // TOML calls them keys.
            message = format!("unknown key {rest}");
        }
        if let Some(span) = e.inner().span() {
            let (line, column) = error::line_col(text, span.start);
            message.push_str(&format!(" ({at}line {line}, column {column})"));
        }
        ConfigError::one(path, message)
    })
}

/// `listeners[0].routes[1].pool`; the root is shown as `(top level)`.
fn key_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for segment in path {
        match segment {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Enum { variant } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(variant);
            }
            Segment::Unknown => out.push_str(".?"),
        }
    }
    if out.is_empty() {
        out.push_str("(top level)");
    }
    out
}

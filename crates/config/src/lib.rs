//! weir's configuration, read in two stages. Stage one deserializes the TOML
//! file into raw serde types that mirror it key for key and reject unknown
//! keys; stage two validates those into the typed model re-exported here
//! ([`Config`] and friends): defaults filled in, durations, addresses, CIDRs and
//! HTTP status lists parsed, health-check CA files read, keys that belong to
//! another health-check type refused, cross-references (routes to pools) and
//! uniqueness checked. Backend host names stay names: the runtime resolves
//! them. Every mistake is reported as a [`Problem`] that names
//! its key path (`pools[1].backends[0].weight: ...`), and stage two reports all
//! of them at once. The data plane only ever sees the model, never serde types.

mod diff;
mod error;
mod locate;
mod model;
mod raw;
mod suggest;
mod validate;

use std::path::Path;

pub use diff::{Diff, diff, need_restart};
pub use error::{ConfigError, Problem};
pub use model::*;
pub use validate::{bind_meeting, ipv4_if_mapped, name_problem};

/// Parses and validates a configuration. Every problem carries the line and
/// column of its key when the key is in the text.
pub fn load_str(text: &str) -> Result<Config, ConfigError> {
    let raw = parse(text)?;
    validate::validate(raw).map_err(|mut e| {
        for p in &mut e.problems {
            p.line = locate::locate(text, &p.path);
        }
        e
    })
}

/// Reads `path` and loads it with [`load_str`]; errors name the file. A file
/// that cannot be read is a [`ConfigError`] whose problem path is the file
/// name.
pub fn load_file(path: &Path) -> Result<Config, ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::one(file.clone(), format!("cannot read: {e}")))?;
    load_str(&text).map_err(|mut e| {
        e.file = Some(file);
        e
    })
}

/// Stage one. Stops at the first error: past a syntax or type error there is
/// no reliable structure left to check.
fn parse(text: &str) -> Result<raw::RawConfig, ConfigError> {
    let (tree, errors) = toml::de::DeTable::parse_recoverable(text);
    if let Some(e) = errors.into_iter().next() {
        return Err(syntax_error(text, &e));
    }
    let de = toml::de::Deserializer::from(tree);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let mut path = key_path(e.path());
        let mut message = e.inner().message().to_owned();
        let mut line = e.inner().span().map(|s| error::line_col(text, s.start));
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
            message = "required key is missing in this table".to_owned();
        } else if let Some(rest) = message.strip_prefix("unknown field ") {
            message = unknown_key(rest);
        }
        if line.is_none() {
            line = locate::locate(text, &path);
        }
        ConfigError::new(vec![Problem {
            path,
            message,
            line,
        }])
    })
}

/// A TOML syntax error, at the key it is in when there is one. A duplicate
/// key names itself and where it was first set.
fn syntax_error(text: &str, e: &toml::de::Error) -> ConfigError {
    let start = e.span().map(|s| s.start);
    let line = start.map(|at| error::line_col(text, at));
    let at = start.and_then(|at| locate::path_at(text, at));
    let (path, message) = match e.span() {
        Some(span) if e.message().starts_with("duplicate key") => {
            let key = text.get(span).unwrap_or_default().trim().trim_matches('"');
            // The table the duplicate is in: the last key before it is a
            // sibling, or the table's own header.
            let parent = match &at {
                Some((path, true)) => path.clone(),
                Some((path, false)) => path
                    .rsplit_once('.')
                    .map_or_else(String::new, |(parent, _)| parent.to_owned()),
                None => String::new(),
            };
            let path = if parent.is_empty() {
                key.to_owned()
            } else {
                format!("{parent}.{key}")
            };
            let first = locate::locate(text, &path)
                .filter(|&l| Some(l) != line)
                .map(|(l, _)| format!(" (first set on line {l})"))
                .unwrap_or_default();
            (
                path,
                format!("duplicate key `{key}`: a key may be set only once in a table{first}"),
            )
        }
        _ => (
            at.map_or_else(|| "TOML".to_owned(), |(path, _)| path),
            format!("TOML syntax error: {}", e.message().trim_end()),
        ),
    };
    ConfigError::new(vec![Problem {
        path,
        message,
        line,
    }])
}

/// serde's "`wieght`, expected one of `address`, `name`, ..." as ours, with
/// the likely key when one is close.
fn unknown_key(rest: &str) -> String {
    let Some((key, expected)) = rest.split_once(", expected ") else {
        return format!("unknown key {rest}");
    };
    let candidates: Vec<&str> = expected
        .trim_start_matches("one of ")
        .split(", ")
        .map(|k| k.trim_matches('`'))
        .collect();
    let word = key.trim_matches('`');
    match suggest::closest(word, candidates.iter().copied()) {
        Some(near) => format!("unknown key {key} (did you mean `{near}`?); expected {expected}"),
        None => format!("unknown key {key}; expected {expected}"),
    }
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

//! `[log]`: format, level filter, access log.

use super::Checker;
use crate::model::{Log, LogFormat};
use crate::raw::RawLog;

const DEFAULT_LOG_LEVEL: &str = "info";
/// Refusal lines per second and listener: enough to see what is refused,
/// too few to turn a flood into a log flood.
const DEFAULT_REFUSALS_PER_SECOND: u32 = 100;
const LOG_FORMATS: &[(&str, LogFormat)] = &[("text", LogFormat::Text), ("json", LogFormat::Json)];

impl Checker {
    pub(super) fn log(&mut self, raw: RawLog) -> Log {
        let format = self.choice("log.format", raw.format, LogFormat::Text, LOG_FORMATS);
        let level = raw.level.unwrap_or_else(|| DEFAULT_LOG_LEVEL.to_owned());
        if level.trim().is_empty() {
            self.push("log.level", "must not be empty (e.g. \"info\")");
        } else if let Err(e) = tracing_subscriber::EnvFilter::try_new(&level) {
            self.push(
                "log.level",
                format!("{level:?} is not a valid log filter: {e}"),
            );
        } else if let Some(word) = bare_non_level(&level) {
            // EnvFilter reads a bare word as a target name, so a misspelt level
            // would silently turn logging off; refuse it instead.
            self.push(
                "log.level",
                format!(
                    "{word:?} is not a level (trace, debug, info, warn, error, off); \
                     to set the level of one module write \"{word}=debug\""
                ),
            );
        }
        Log {
            format,
            level,
            access_log: raw.access_log.unwrap_or(true),
            refusals_per_second: self.int(
                "log.refusals_per_second",
                raw.refusals_per_second,
                DEFAULT_REFUSALS_PER_SECOND,
                0,
                Some(1_000_000),
            ),
        }
    }
}

/// The first comma-separated directive of a log filter that is a bare word but not
/// a level name, if any.
fn bare_non_level(filter: &str) -> Option<&str> {
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    filter.split(',').map(str::trim).find(|d| {
        !d.is_empty()
            && !d.contains(['=', '[', ':'])
            && !LEVELS.iter().any(|l| l.eq_ignore_ascii_case(d))
    })
}
